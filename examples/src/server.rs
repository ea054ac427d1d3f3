//! The listeners: every connection on a few event-loop threads (one per
//! core) with store work on a bounded pool, connection caps, a clean stop.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use postamt_store::{Directory, MailStore};

use crate::evloop::{Admit, Admitter, Client, Handler, LoopConfig, Loops, Pool, STOP_GRACE};
use crate::forward::{Forwarder, Forwarding};
use crate::pop3::Pop3Conn;
use crate::smtp::SmtpConn;
use crate::trace::Sink;
use crate::web::{self, Hub, Web};

/// What the server needs to run.
pub struct Options {
    /// Address to listen on (127.0.0.1, or 0.0.0.0 for a classroom).
    pub listen: IpAddr,
    /// SMTP port (0 picks a free one).
    pub smtp_port: u16,
    /// POP3 port (0 picks a free one).
    pub pop3_port: u16,
    /// Name in greetings and `Received:` headers.
    pub hostname: String,
    /// Where mail is kept.
    pub store: Arc<dyn MailStore>,
    /// Who the users are.
    pub directory: Arc<dyn Directory>,
    /// TLS for STARTTLS and STLS; `None` means neither is offered.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Print each session's dialogue.
    pub trace: bool,
    /// Where the trace goes; `None` is standard output.
    pub trace_output: Option<Box<dyn Write + Send>>,
    /// How long a TLS handshake after STARTTLS/STLS may take in all
    /// (Postfix's `smtpd_starttls_timeout`: 300 s).
    pub tls_handshake_timeout: Duration,
    /// Connections per protocol from one client address beyond which new
    /// ones from it are turned away (Postfix's
    /// `smtpd_client_connection_count_limit`: 50); 0 for no such limit.
    pub max_connections_per_client: usize,
    /// Take the client's bytes exactly as sent. Off by default: a telnet
    /// filter in front of each session refuses telnet option negotiation
    /// and applies Backspace/DEL to typed command lines, so a class can type
    /// from any telnet client; a mail client's bytes pass unchanged.
    pub strict_input: bool,
    /// Connections per protocol beyond which new ones are turned away
    /// (each holds a socket and a session of a few KiB; no thread).
    pub max_connections: usize,
    /// Event-loop threads per protocol; 0 for one per core.
    pub loop_threads: usize,
    /// Worker threads for store work that waits on a disk or a network
    /// (fsync, directory scans), shared by both protocols: as many
    /// deliveries can wait on their fsync at once.
    pub store_threads: usize,
    /// Load balancers whose connections begin with a PROXY protocol header
    /// (v1 or v2) naming the real client, for both protocols; a connection
    /// from anywhere else is never read for one. Empty: none.
    pub proxy_from: Vec<IpNet>,
    /// SMTP clients trusted to name the real client with XCLIENT (a proxy
    /// such as Postfix's postscreen or nginx); empty: nobody.
    pub xclient_from: Vec<IpNet>,
    /// Passing mail on: who may relay, routes, retries, the queue.
    pub forwarding: Forwarding,
    /// The teacher's page; `None`: no page.
    pub web: Option<Web>,
}

/// The default cap on connections per protocol: ten thousand idle clients
/// take a few tens of MiB on the event loops. Above the usual limit of
/// 1,024 open files, which the server raises as far as it may.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The default number of store worker threads.
pub const DEFAULT_STORE_THREADS: usize = 32;

impl Options {
    /// Loopback, free ports, `mail.kolleg.de`, no TLS, no trace, and the
    /// default limits; change what differs with struct update syntax:
    /// `Options { smtp_port: 2525, ..Options::new(store, directory) }`.
    pub fn new(store: Arc<dyn MailStore>, directory: Arc<dyn Directory>) -> Self {
        Self {
            listen: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            smtp_port: 0,
            pop3_port: 0,
            hostname: "mail.kolleg.de".to_string(),
            store,
            directory,
            tls: None,
            trace: false,
            trace_output: None,
            tls_handshake_timeout: Duration::from_secs(300),
            max_connections_per_client: 50,
            strict_input: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            loop_threads: 0,
            store_threads: DEFAULT_STORE_THREADS,
            proxy_from: Vec::new(),
            xclient_from: Vec::new(),
            forwarding: Forwarding::new(),
            web: None,
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) smtp: Arc<postamt_smtp::ServerConfig>,
    pub(crate) pop3: Arc<postamt_pop3::ServerConfig>,
    pub(crate) store: Arc<dyn MailStore>,
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) hostname: String,
    pub(crate) trace: Option<Sink>,
    pub(crate) tls_handshake_timeout: Duration,
    pub(crate) max_connections_per_client: usize,
    pub(crate) strict_input: bool,
    pub(crate) max_connections: usize,
    pub(crate) forwarding: Forwarding,
    pub(crate) forwarder: Forwarder,
    pub(crate) xclient_from: Vec<IpNet>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("smtp_port", &self.smtp_port)
            .field("pop3_port", &self.pop3_port)
            .field("hostname", &self.hostname)
            .field("tls", &self.tls.is_some())
            .field("trace", &self.trace)
            .field("trace_output", &self.trace_output.is_some())
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("strict_input", &self.strict_input)
            .field("max_connections", &self.max_connections)
            .field("loop_threads", &self.loop_threads)
            .field("store_threads", &self.store_threads)
            .field("proxy_from", &self.proxy_from)
            .field("xclient_from", &self.xclient_from)
            .field("forwarding", &self.forwarding)
            .field("web", &self.web)
            .finish_non_exhaustive()
    }
}

/// A running server; dropping it does not stop it, [`Server::stop`] does.
#[derive(Debug)]
pub struct Server {
    smtp_addr: SocketAddr,
    pop3_addr: SocketAddr,
    active: Arc<AtomicUsize>,
    loops: Vec<Loops>,
    pool: Arc<Pool>,
    forwarder: Forwarder,
    relay: JoinHandle<()>,
    web: Option<web::Running>,
}

/// Binding failed; the message says why and what to do.
#[derive(Debug)]
pub struct BindError {
    /// What went wrong, for a person.
    pub message: String,
    /// The underlying error.
    pub source: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Connections the kernel may hold for us before we accept them. The
/// standard library's 128 overflows when a few hundred clients connect at
/// once (their SYNs are dropped and retried a second later); the kernel
/// caps this at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket as `TcpListener::bind` makes one (address reuse on
/// Unix), with a deeper backlog; with `shared`, one of a group bound to
/// the same address (`SO_REUSEPORT`, Linux).
fn listen(addr: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if shared {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = shared;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// `count` listening sockets on one address, one per loop thread, so that
/// the kernel hands each new connection to one loop (without, every loop
/// wakes for it and all but one find nothing to accept). The address is
/// first bound alone, so that a port another server holds is refused as
/// without the group (two servers of one user could otherwise share it).
/// Elsewhere than Linux: one socket, which every loop watches.
fn bind_each(
    ip: IpAddr,
    port: u16,
    count: usize,
    what: &str,
    flag: &str,
) -> Result<Vec<TcpListener>, BindError> {
    let alone = bind(ip, port, what, flag)?;
    if !cfg!(target_os = "linux") || count <= 1 {
        return Ok(vec![alone]);
    }
    let addr = alone.local_addr().map_err(|source| BindError {
        message: format!("cannot read the listening address: {source}"),
        source,
    })?;
    drop(alone);
    (0..count)
        .map(|_| {
            listen(addr, true)
                .map_err(|source| bind_error(addr.ip(), addr.port(), what, flag, source))
        })
        .collect()
}

fn bind(ip: IpAddr, port: u16, what: &str, flag: &str) -> Result<TcpListener, BindError> {
    listen(SocketAddr::new(ip, port), false)
        .map_err(|source| bind_error(ip, port, what, flag, source))
}

fn bind_error(ip: IpAddr, port: u16, what: &str, flag: &str, source: io::Error) -> BindError {
    let hint = match source.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "ports below 1024 need root or the capability CAP_NET_BIND_SERVICE \
             (sudo setcap cap_net_bind_service=+ep on the binary); or pick a port \
             above 1024 with {flag}"
        ),
        io::ErrorKind::AddrInUse => format!(
            "another program already listens there (maybe another mail server, \
             or this one still running); stop it or choose another port with {flag}"
        ),
        io::ErrorKind::AddrNotAvailable => {
            "this machine has no such address; use 127.0.0.1 or 0.0.0.0 with --listen".to_string()
        }
        _ => "check the address and port".to_string(),
    };
    BindError {
        message: format!("cannot listen for {what} on {ip}:{port}: {source}\n  {hint}"),
        source,
    }
}

impl Server {
    /// Binds both ports and starts accepting connections.
    pub fn start(options: Options) -> Result<Self, BindError> {
        Self::start_with_configs(options, None, None)
    }

    /// [`Server::start`] with the protocol sessions' configurations given
    /// (limits, timeouts, texts) instead of the crates' defaults. The host
    /// name, STARTTLS/STLS and the AUTH-without-TLS rule still come from
    /// `options`, on top of what is given here.
    pub fn start_with_configs(
        options: Options,
        smtp: Option<postamt_smtp::ServerConfig>,
        pop3: Option<postamt_pop3::ServerConfig>,
    ) -> Result<Self, BindError> {
        let threads = match options.loop_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let smtp_listeners = bind_each(
            options.listen,
            options.smtp_port,
            threads,
            "SMTP",
            "--smtp-port",
        )?;
        let pop3_listeners = bind_each(
            options.listen,
            options.pop3_port,
            threads,
            "POP3",
            "--pop3-port",
        )?;
        let local = |l: &[TcpListener]| {
            let l = &l[0];
            l.local_addr().map_err(|source| BindError {
                message: format!("cannot read the listening address: {source}"),
                source,
            })
        };
        let smtp_addr = local(&smtp_listeners)?;
        let pop3_addr = local(&pop3_listeners)?;

        let tls = options.tls.is_some();
        let mut smtp =
            smtp.unwrap_or_else(|| postamt_smtp::ServerConfig::new(options.hostname.clone()));
        smtp.hostname.clone_from(&options.hostname);
        smtp.extensions.starttls = tls;
        // Without TLS, AUTH runs in the clear, as POP3's USER/PASS does: this
        // is a classroom server. With TLS it waits for STARTTLS.
        smtp.login_without_tls = !tls;
        let mut pop3 = pop3.unwrap_or_default();
        pop3.extensions.stls = tls;
        pop3.login_without_tls = !tls;
        let hub = options.web.is_some().then(|| Arc::new(Hub::new()));
        let web = match options.web {
            Some(page) => {
                let listen = page.listen;
                let spool = Arc::clone(&options.forwarding.spool);
                let hub = hub.clone().expect("made for the page");
                Some(
                    web::start(page, spool, hub).map_err(|(hint, source)| BindError {
                        message: format!(
                            "cannot serve the teacher's page on {listen}: {source}\n  {hint}"
                        ),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let terminal = options.trace.then(|| {
            options
                .trace_output
                .unwrap_or_else(|| Box::new(io::stdout()))
        });
        // The page shows the trace's lines, so it traces even when the
        // terminal does not.
        let trace = (terminal.is_some() || hub.is_some()).then(|| Sink::start(terminal, hub));
        let next_id = Arc::new(AtomicU64::new(1));
        let (forwarder, relay) = crate::forward::start(crate::forward::Start {
            hostname: options.hostname.clone(),
            forwarding: options.forwarding.clone(),
            store: Arc::clone(&options.store),
            directory: Arc::clone(&options.directory),
            trace: trace.clone(),
            next_id: Arc::clone(&next_id),
        });
        let shared = Arc::new(Shared {
            smtp: Arc::new(smtp),
            pop3: Arc::new(pop3),
            store: options.store,
            directory: options.directory,
            tls: options.tls,
            hostname: options.hostname,
            trace,
            tls_handshake_timeout: options.tls_handshake_timeout,
            max_connections_per_client: options.max_connections_per_client,
            strict_input: options.strict_input,
            max_connections: options.max_connections,
            forwarding: options.forwarding,
            forwarder: forwarder.clone(),
            xclient_from: options.xclient_from,
            next_id,
        });
        raise_open_files(options.max_connections);
        let config = LoopConfig {
            threads,
            stop_grace: STOP_GRACE,
            tls: shared.tls.clone(),
            tls_handshake_timeout: shared.tls_handshake_timeout,
            strict_input: shared.strict_input,
            proxy_from: options.proxy_from,
        };
        let pool = Arc::new(Pool::new(options.store_threads, options.store_threads * 64));
        let active = Arc::new(AtomicUsize::new(0));
        let smtp_loops = start_loops(
            smtp_listeners,
            &config,
            &pool,
            admitter(Kind::Smtp, &shared, &active, SmtpConn::new),
        )?;
        let pop3_loops = start_loops(
            pop3_listeners,
            &config,
            &pool,
            admitter(Kind::Pop3, &shared, &active, Pop3Conn::new),
        )?;
        Ok(Self {
            smtp_addr,
            pop3_addr,
            active,
            loops: vec![smtp_loops, pop3_loops],
            pool,
            forwarder,
            relay,
            web,
        })
    }

    /// Where the teacher's page is served, when it is.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(web::Running::addr)
    }

    /// Where SMTP listens.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// Where POP3 listens.
    pub fn pop3_addr(&self) -> SocketAddr {
        self.pop3_addr
    }

    /// Makes every deferred recipient in the queue due now (`queue flush`);
    /// how many there were (`None`: the forwarder has stopped).
    pub fn flush_queue(&self) -> Option<usize> {
        self.forwarder.flush()
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, lets sessions finish for a few seconds, then returns.
    pub fn stop(self) {
        for l in &self.loops {
            l.begin_stop();
        }
        for l in self.loops {
            l.join();
        }
        // Store work still queued runs to its end (a message being
        // committed is committed); nobody hears of it any more.
        drop(self.pool);
        // Deliveries in flight are cut off; their recipients stay queued.
        self.forwarder.stop();
        let _ = self.relay.join();
        if let Some(web) = self.web {
            web.stop();
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Smtp,
    Pop3,
}

/// Decrements a count when a connection ends, however it ends.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Raises the soft limit of open files towards what `max_connections` per
/// protocol need (the hard limit caps it; only root may go beyond), and
/// says so when the limit stays short of them.
fn raise_open_files(max_connections: usize) {
    #[cfg(unix)]
    {
        let want = (max_connections as u64)
            .saturating_mul(2)
            .saturating_add(256);
        match rlimit::increase_nofile_limit(want) {
            Ok(got) if got < (max_connections as u64).saturating_add(256) => eprintln!(
                "note: at most {got} open files (the system's limit), fewer than \
                 {max_connections} connections per protocol need; raise it with ulimit -n"
            ),
            Ok(_) => {}
            Err(e) => eprintln!("note: cannot raise the limit of open files: {e}"),
        }
    }
}

fn start_loops<H: Handler>(
    listeners: Vec<TcpListener>,
    config: &LoopConfig,
    pool: &Arc<Pool>,
    admit: Admitter<H>,
) -> Result<Loops, BindError> {
    let started = match <[TcpListener; 1]>::try_from(listeners) {
        // One listener for all (not Linux): every loop watches it.
        Ok([one]) => Loops::start(one, config, Arc::clone(pool), admit),
        Err(each) => Loops::start_each(each, config, Arc::clone(pool), admit),
    };
    started.map_err(|source| BindError {
        message: format!("cannot start the event loops: {source}"),
        source,
    })
}

/// Counts a connection in the caps while it lives: its handler holds it.
pub(crate) type Slot = Box<dyn Send>;

/// Decides for each new connection of one protocol: served by a new
/// handler (made by `new`), or turned away when the protocol's cap or its
/// address's share is reached. The handler holds the counts' guards, so
/// they drop with it.
fn admitter<H: Handler>(
    kind: Kind,
    shared: &Arc<Shared>,
    active: &Arc<AtomicUsize>,
    new: fn(Client, u64, &Arc<Shared>, Slot) -> H,
) -> Admitter<H> {
    let open = Arc::new(AtomicUsize::new(0));
    let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let (shared, active) = (Arc::clone(shared), Arc::clone(active));
    Arc::new(move |client: Client| {
        let peer = client.addr;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if open.load(Ordering::SeqCst) >= shared.max_connections {
            eprintln!(
                "#{id} {peer}: turned away, {} connections open",
                shared.max_connections
            );
            return Admit::Refuse(refusal(kind, &shared, "Too many connections"));
        }
        let Some(slot) =
            ClientSlot::take(&per_client, peer.ip(), shared.max_connections_per_client)
        else {
            eprintln!(
                "#{id} {peer}: turned away, {} connections from {} open",
                shared.max_connections_per_client,
                peer.ip()
            );
            return Admit::Refuse(refusal(
                kind,
                &shared,
                "Too many connections from your address",
            ));
        };
        open.fetch_add(1, Ordering::SeqCst);
        active.fetch_add(1, Ordering::SeqCst);
        let guards = (Active(Arc::clone(&open)), Active(Arc::clone(&active)), slot);
        Admit::Serve(new(client, id, &shared, Box::new(guards)))
    })
}

/// One connection counted against its client address's limit; dropping it
/// frees the slot.
struct ClientSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ClientSlot {
    /// A slot for `ip`, or `None` when it has `limit` connections open
    /// already (a `limit` of 0 means no limit).
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, limit: usize) -> Option<Self> {
        // An IPv4 client on an IPv6 socket is the same client.
        let ip = ip.to_canonical();
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let open = map.entry(ip).or_insert(0);
        if limit > 0 && *open >= limit {
            return None;
        }
        *open += 1;
        Some(Self {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What a connection that is turned away (`why`: over the cap, or too
/// many from its address) hears before it is closed: SMTP's 421 greeting
/// (without an enhanced code, which only follows EHLO), POP3's
/// `-ERR [SYS/TEMP]`.
fn refusal(kind: Kind, shared: &Shared, why: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        Kind::Smtp => {
            let mut s = postamt_smtp::ServerSession::new_refused(
                Arc::clone(&shared.smtp),
                Instant::now(),
                &format!("{why}, try again later"),
            );
            postamt_smtp::Session::poll_transmit(&mut s, &mut out);
        }
        Kind::Pop3 => {
            postamt_pop3::Response::err_with(
                postamt_pop3::ResponseCode::SysTemp,
                format!("{why}, try again later"),
            )
            .render(&mut out);
        }
    }
    out
}
