//! The forwarder: the std::net runner of `postamt_relay::Relay`.
//!
//! One thread owns the `Relay` and drives it with `SystemTime::now()`; it
//! performs the actions: MX lookups (hickory-resolver, on a thread per
//! lookup), deliveries (a bounded pool of threads, each running our own
//! `ClientSession` over TCP, STARTTLS when offered), notices (into the
//! sender's mailbox when the sender is local, else spooled from `<>`; a
//! double bounce into the postmaster mailbox), and the spool's updates and
//! removals (on a few writer threads, so no fsync holds up the relay).
//! Everything comes back to the relay thread over one channel, so the
//! `Relay` value needs no lock. `toy-server queue flush` reaches it through
//! the control socket (`control.rs`).

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use ipnet::IpNet;
use postamt_relay::{
    Action, Delivery, DeliveryId, HostFailure, MessageId, MxAnswer, MxRecord, NextHop, Notice,
    NoticeKind, Outcome, QueuedMessage, QueuedRecipient, Relay, RelayConfig, Routes,
};
use postamt_smtp::{
    Capabilities, ClientConfig, ClientError, ClientEvent, ClientSession, Envelope, Failure,
    ReversePath, Session,
};
use postamt_store::{Directory, MailStore, MailboxName, Spool, SpoolId};

use crate::client::ClientStream;
use crate::smtp::POSTMASTER_MAILBOX;
use crate::trace::{Protocol, Sink, Trace};

/// How the server passes mail on. The defaults relay nothing for anyone
/// but authenticated clients, route by DNS, and keep the queue in memory.
#[derive(Clone)]
pub struct Forwarding {
    /// Client networks that may relay without logging in (Postfix's
    /// `mynetworks`); empty by default.
    pub relay_from: Vec<IpNet>,
    /// `DOMAIN` goes to `HOST[:PORT]`, before any smart host or DNS.
    pub routes: Vec<(String, NextHop)>,
    /// Everything foreign that has no static route goes here (Postfix's
    /// `relayhost`); `None`: by DNS.
    pub relay_host: Option<NextHop>,
    /// A DNS server to ask instead of the system's (`/etc/resolv.conf`).
    pub dns: Option<SocketAddr>,
    /// The port for hosts without one (found by DNS): 25.
    pub relay_port: u16,
    /// Our own domains: never queued, a route to them is a loop.
    pub local_domains: Vec<String>,
    /// First retry; doubling up to `retry_max`; given up after
    /// `queue_lifetime`; deliveries at once. Defaults from `RelayConfig`.
    pub retry_after: Duration,
    /// See `retry_after`.
    pub retry_max: Duration,
    /// See `retry_after`.
    pub queue_lifetime: Duration,
    /// See `retry_after`.
    pub concurrency: usize,
    /// A recipient with `NOTIFY=DELAY` still queued this long after
    /// arrival gets its sender one delay notice: 4 h (`RelayConfig`).
    pub delay_warning: Duration,
    /// Connecting to a next hop may take this long: 30 s.
    pub connect_timeout: Duration,
    /// TLS to next hops; [`RelayTls::May`] by default.
    pub tls: RelayTls,
    /// With [`RelayTls::Require`]: the PEM file of the certificate
    /// authorities to trust; `None`: the system's (`SSL_CERT_FILE`, else
    /// Debian's `/etc/ssl/certs/ca-certificates.crt`).
    pub tls_roots: Option<PathBuf>,
    /// Where queued messages wait.
    pub spool: Arc<dyn Spool>,
    /// A Unix socket the running server listens on for `flush` (what
    /// `toy-server queue flush` sends): in the queue folder, so the admin
    /// command finds the server that owns the queue. `None`: no socket.
    pub control: Option<PathBuf>,
}

/// How deliveries to next hops use TLS (Postfix's `smtp_tls_security_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayTls {
    /// Plaintext only.
    Off,
    /// STARTTLS when offered, certificate not checked (RFC 7435: MX hosts
    /// rarely have one for their names); a failed handshake is retried in
    /// plaintext.
    May,
    /// STARTTLS always, the certificate verified against trusted roots for
    /// the next hop's name; a host without it is deferred, never sent to
    /// in plaintext.
    Require,
}

impl Forwarding {
    /// The defaults above, with the queue in memory.
    pub fn new() -> Self {
        let relay = RelayConfig::new("localhost");
        Self {
            relay_from: Vec::new(),
            routes: Vec::new(),
            relay_host: None,
            dns: None,
            relay_port: 25,
            local_domains: Vec::new(),
            retry_after: relay.retry_after,
            retry_max: relay.retry_max,
            queue_lifetime: relay.queue_lifetime,
            concurrency: relay.concurrency,
            delay_warning: relay.delay_warning,
            connect_timeout: Duration::from_secs(30),
            tls: RelayTls::May,
            tls_roots: None,
            spool: Arc::new(postamt_store::MemorySpool::new()),
            control: None,
        }
    }

    /// Whether a client at `ip` may relay without logging in.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_from.iter().any(|net| net.contains(&ip))
    }
}

impl Default for Forwarding {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("relay_from", &self.relay_from)
            .field("routes", &self.routes)
            .field("relay_host", &self.relay_host)
            .field("dns", &self.dns)
            .field("relay_port", &self.relay_port)
            .field("retry_after", &self.retry_after)
            .field("retry_max", &self.retry_max)
            .field("queue_lifetime", &self.queue_lifetime)
            .field("concurrency", &self.concurrency)
            .field("delay_warning", &self.delay_warning)
            .field("tls", &self.tls)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// The record kept with a spooled message: the one place that says how a
/// queue entry is written down.
pub(crate) fn record(msg: &QueuedMessage) -> Vec<u8> {
    msg.to_record()
}

/// What comes to the relay thread.
enum Input {
    /// A message is durably spooled; queue it.
    Queued(QueuedMessage),
    Resolved(String, MxAnswer),
    /// A delivery thread is at Ready and asks for the envelope.
    /// The answer carries the message's size for SIZE= (the relay knows
    /// it; asking the spool would list the whole queue).
    Envelope(
        DeliveryId,
        MessageId,
        Capabilities,
        Sender<Option<(Envelope, u64)>>,
    ),
    Done(DeliveryId, Outcome),
    /// Make every deferred recipient due now; answer how many there were.
    Flush(Sender<usize>),
    Stop,
}

/// The handle the SMTP side and the server hold.
#[derive(Clone)]
pub(crate) struct Forwarder {
    input: Sender<Input>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarder")
    }
}

impl Forwarder {
    /// Hands a spooled, committed message to the relay.
    pub(crate) fn queued(&self, msg: QueuedMessage) {
        let _ = self.input.send(Input::Queued(msg));
    }

    /// Makes every deferred recipient due now; how many there were, or
    /// `None` when the relay thread is gone.
    pub(crate) fn flush(&self) -> Option<usize> {
        let (tx, rx) = mpsc::channel();
        self.input.send(Input::Flush(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    pub(crate) fn stop(&self) {
        let _ = self.input.send(Input::Stop);
    }
}

/// What the relay thread and the delivery threads share.
struct Context {
    hostname: String,
    spool: Arc<dyn Spool>,
    store: Arc<dyn MailStore>,
    directory: Arc<dyn Directory>,
    /// Set up at the first lookup: most servers never need one.
    dns: OnceLock<Result<Dns, String>>,
    dns_server: Option<SocketAddr>,
    relay_port: u16,
    connect_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS or nothing: no plaintext to a host without it.
    require_tls: bool,
    trace: Option<Sink>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Context {
    fn dns(&self) -> Result<&Dns, String> {
        self.dns
            .get_or_init(|| {
                let dns = Dns::new(self.dns_server);
                if let Err(e) = &dns {
                    eprintln!("forwarder: {e}; mail routed by DNS stays queued");
                }
                dns
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// A resolver and the small runtime it runs on.
struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl Dns {
    fn new(server: Option<SocketAddr>) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dns")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the DNS runtime: {e}"))?;
        let resolver = runtime.block_on(async {
            let builder = match server {
                Some(addr) => {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(vec![ns]),
                        TokioRuntimeProvider::default(),
                    )
                }
                None => TokioResolver::builder_tokio()
                    .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
            };
            builder
                .build()
                .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
        })?;
        Ok(Self { runtime, resolver })
    }

    /// The domain's MX records, or whether it has an address instead.
    fn mx(&self, domain: &str) -> MxAnswer {
        let name = format!("{}.", domain.trim_end_matches('.'));
        self.runtime.block_on(async {
            match self.resolver.mx_lookup(name.as_str()).await {
                Ok(lookup) => {
                    let records: Vec<MxRecord> = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::MX(mx) => {
                                Some(MxRecord::new(mx.preference, mx.exchange.to_ascii()))
                            }
                            _ => None,
                        })
                        .collect();
                    if records.is_empty() {
                        MxAnswer::NoMx {
                            has_address: self.has_address(&name).await,
                        }
                    } else {
                        MxAnswer::Records(records)
                    }
                }
                Err(NetError::Dns(DnsError::NoRecordsFound(none)))
                    if none.response_code == ResponseCode::NXDomain =>
                {
                    MxAnswer::NoSuchDomain
                }
                Err(NetError::Dns(DnsError::NoRecordsFound(_))) => MxAnswer::NoMx {
                    has_address: self.has_address(&name).await,
                },
                Err(e) => MxAnswer::TryAgain(e.to_string()),
            }
        })
    }

    async fn has_address(&self, name: &str) -> bool {
        self.resolver
            .lookup_ip(name)
            .await
            .is_ok_and(|ips| ips.iter().next().is_some())
    }

    /// The addresses of a host name.
    fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = format!("{}.", host.trim_end_matches('.'));
        self.runtime.block_on(async {
            match self.resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => Ok(ips.iter().collect()),
                Err(e) => Err(format!("no address for {host}: {e}")),
            }
        })
    }
}

/// Everything the forwarder needs from the server.
pub(crate) struct Start {
    pub(crate) hostname: String,
    pub(crate) forwarding: Forwarding,
    pub(crate) store: Arc<dyn MailStore>,
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) trace: Option<Sink>,
    pub(crate) next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts the relay thread and the delivery pool; queues what the spool
/// holds already.
pub(crate) fn start(start: Start) -> (Forwarder, thread::JoinHandle<()>) {
    let Start {
        hostname,
        forwarding: f,
        store,
        directory,
        trace,
        next_id,
    } = start;
    let mut routes = Routes::new();
    for domain in &f.local_domains {
        routes = routes.local_domain(domain);
    }
    for (domain, hop) in &f.routes {
        routes = routes.static_route(domain, hop.clone());
    }
    if let Some(hop) = &f.relay_host {
        routes = routes.smart_host(hop.clone());
    }
    let mut config = RelayConfig::new(hostname.clone());
    config.retry_after = f.retry_after;
    config.retry_max = f.retry_max;
    config.queue_lifetime = f.queue_lifetime;
    config.concurrency = f.concurrency.max(1);
    config.delay_warning = f.delay_warning;
    let workers = config.concurrency;
    let relay = Relay::new(config, routes);
    let tls = match f.tls {
        RelayTls::Off => None,
        RelayTls::May => crate::tls::client_insecure()
            .map_err(|e| eprintln!("forwarder: no STARTTLS to next hops: {e}"))
            .ok(),
        RelayTls::Require => {
            let roots = f.tls_roots.clone().unwrap_or_else(system_roots);
            crate::tls::client_trusting(&roots)
                .map_err(|e| {
                    eprintln!("forwarder: TLS is required and cannot be set up ({e}): mail to other servers stays queued");
                })
                .ok()
        }
    };
    let ctx = Arc::new(Context {
        hostname,
        spool: f.spool,
        store,
        directory,
        dns: OnceLock::new(),
        dns_server: f.dns,
        relay_port: f.relay_port,
        connect_timeout: f.connect_timeout,
        tls,
        require_tls: f.tls == RelayTls::Require,
        trace,
        next_id,
    });
    let (input, inbox) = mpsc::channel();
    let (jobs, job_queue) = mpsc::channel::<Delivery>();
    let job_queue = Arc::new(Mutex::new(job_queue));
    for n in 0..workers {
        let (ctx, queue, input) = (Arc::clone(&ctx), Arc::clone(&job_queue), input.clone());
        let spawned = thread::Builder::new()
            .name(format!("deliver-{n}"))
            .spawn(move || {
                loop {
                    let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(delivery) = job else { break };
                    let id = delivery.id();
                    let outcome = deliver(&ctx, &delivery, &input);
                    if let Some(outcome) = outcome {
                        let _ = input.send(Input::Done(id, outcome));
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("forwarder: cannot start a delivery thread: {e}");
        }
    }
    let forwarder = Forwarder {
        input: input.clone(),
    };
    // Lives as long as the relay thread, which drops it when it stops.
    // A Unix socket: elsewhere there is no `queue flush`.
    #[cfg(not(unix))]
    let control: Option<()> = None;
    #[cfg(unix)]
    let control = f.control.as_deref().and_then(|path| {
        crate::control::Control::serve(path, forwarder.clone())
            .map_err(|e| {
                eprintln!(
                    "forwarder: no control socket ({e}): `queue flush` cannot reach this server"
                );
            })
            .ok()
    });
    let handle = {
        let (ctx, input) = (Arc::clone(&ctx), input.clone());
        thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let _control = control;
                run(relay, &ctx, &inbox, &input, &jobs);
            })
            .expect("the relay thread starts")
    };
    (forwarder, handle)
}

/// The relay thread: restore the queue, then act and wait, until Stop.
fn run(
    mut relay: Relay,
    ctx: &Arc<Context>,
    inbox: &Receiver<Input>,
    input: &Sender<Input>,
    jobs: &Sender<Delivery>,
) {
    restore(&mut relay, ctx);
    let writers = Writers::start(&ctx.spool);
    loop {
        let now = SystemTime::now();
        while let Some(action) = relay.poll_action(now) {
            perform(&mut relay, action, ctx, input, jobs, &writers);
        }
        let wait = relay
            .poll_timeout()
            .map_or(Duration::from_secs(3600), |due| {
                due.duration_since(SystemTime::now()).unwrap_or_default()
            });
        let next = match inbox.recv_timeout(wait) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = SystemTime::now();
        match next {
            Input::Queued(msg) => {
                if let Err(e) = relay.enqueue(msg) {
                    eprintln!("forwarder: cannot queue a message: {e}");
                }
            }
            Input::Resolved(domain, answer) => relay.resolved(&domain, &answer, seed()),
            Input::Envelope(id, message, caps, answer) => {
                let envelope = relay.envelope(now, id, &caps).unwrap_or_else(|e| {
                    eprintln!("forwarder: {e}");
                    None
                });
                let _ = answer.send(envelope.map(|envelope| {
                    let size = relay.message(&message).map_or(0, QueuedMessage::size);
                    (envelope, size)
                }));
            }
            Input::Done(id, outcome) => {
                if let Err(e) = relay.handle(now, id, outcome) {
                    eprintln!("forwarder: {e}");
                }
            }
            Input::Flush(answer) => {
                let _ = answer.send(relay.flush(now));
            }
            // Every state change handed out is written before we return.
            Input::Stop => return writers.finish(),
        }
    }
}

/// Queues what the spool kept from before a restart, with each
/// recipient's state as last saved: delivered ones are not sent again.
fn restore(relay: &mut Relay, ctx: &Context) {
    let entries = match ctx.spool.list() {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("forwarder: cannot read the queue: {e}");
            return;
        }
    };
    for entry in entries {
        let id = MessageId::new(entry.id.as_str());
        match QueuedMessage::from_record(id, &entry.record) {
            Ok(msg) => {
                if let Err(e) = relay.enqueue(msg) {
                    eprintln!("forwarder: cannot queue {} again: {e}", entry.id);
                }
            }
            // Left where it is for a person to look at, never dropped.
            Err(e) => eprintln!("forwarder: the record of {} cannot be read: {e}", entry.id),
        }
    }
}

/// The system's certificate authorities, as OpenSSL finds them.
fn system_roots() -> PathBuf {
    std::env::var_os("SSL_CERT_FILE").map_or_else(
        || PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        PathBuf::from,
    )
}

/// Randomness for shuffling equal MX preferences.
fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(SystemTime::now())
}

/// A write to the spool, done off the relay thread.
enum SpoolWrite {
    Save(MessageId, Vec<u8>),
    Remove(MessageId),
}

/// Threads that write the queue's state changes, so the relay thread never
/// waits for an fsync (one at a time, it capped forwarding at the disk's
/// fsyncs per second; several at once share folder fsyncs in the spool, and
/// with the server's commits). A message's
/// writes always go to the same thread, in order: the spool allows one
/// change of an id at a time. A result written late is what a crash
/// repeats, as for a delivery still in flight (RFC 5321 §6.1's
/// duplicate, never a loss): the message stays queued until its removal
/// is durable.
struct Writers {
    queues: Vec<Sender<SpoolWrite>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    const THREADS: u64 = 4;

    fn start(spool: &Arc<dyn Spool>) -> Self {
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for n in 0..Self::THREADS {
            let (tx, rx) = mpsc::channel::<SpoolWrite>();
            let spool = Arc::clone(spool);
            let spawned = thread::Builder::new()
                .name(format!("queue-writer-{n}"))
                .spawn(move || {
                    for write in rx {
                        match write {
                            SpoolWrite::Save(id, record) => {
                                if let Err(e) = SpoolId::new(id.as_str())
                                    .and_then(|s| spool.update(&s, &record))
                                {
                                    eprintln!("forwarder: cannot save the state of {id}: {e}");
                                }
                            }
                            SpoolWrite::Remove(id) => {
                                if let Err(e) =
                                    SpoolId::new(id.as_str()).and_then(|s| spool.remove(&s))
                                {
                                    eprintln!("forwarder: cannot remove {id} from the queue: {e}");
                                }
                            }
                        }
                    }
                });
            match spawned {
                Ok(t) => {
                    queues.push(tx);
                    threads.push(t);
                }
                Err(e) => eprintln!("forwarder: cannot start a queue writer: {e}"),
            }
        }
        Self { queues, threads }
    }

    fn send(&self, id: &MessageId, write: SpoolWrite) {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        if self.queues.is_empty() {
            return eprintln!("forwarder: no queue writer for {id}");
        }
        let n = BuildHasherDefault::<DefaultHasher>::default().hash_one(id) as usize
            % self.queues.len();
        let _ = self.queues[n].send(write);
    }

    /// Waits until everything sent is written.
    fn finish(self) {
        drop(self.queues);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn perform(
    relay: &mut Relay,
    action: Action,
    ctx: &Arc<Context>,
    input: &Sender<Input>,
    jobs: &Sender<Delivery>,
    writers: &Writers,
) {
    match action {
        Action::Notify(notice) => notify(relay, &notice, ctx),
        Action::Save(id) => {
            if let Some(msg) = relay.message(&id) {
                let record = record(msg);
                writers.send(&id.clone(), SpoolWrite::Save(id, record));
            }
        }
        Action::Remove(id) => writers.send(&id.clone(), SpoolWrite::Remove(id)),
        Action::Resolve(domain) => {
            let (ctx, input) = (Arc::clone(ctx), input.clone());
            thread::spawn(move || {
                let answer = match ctx.dns() {
                    Ok(dns) => dns.mx(&domain),
                    Err(e) => MxAnswer::TryAgain(e.clone()),
                };
                let _ = input.send(Input::Resolved(domain, answer));
            });
        }
        Action::Deliver(delivery) => {
            let _ = jobs.send(delivery);
        }
        _ => {}
    }
}

/// Sends a notice: straight into a local sender's mailbox, else queued
/// from `<>` like any other message.
fn notify(relay: &mut Relay, notice: &Notice, ctx: &Context) {
    let mut original = Vec::new();
    let read = SpoolId::new(notice.message().as_str())
        .and_then(|id| ctx.spool.read(&id))
        .map_err(|e| e.to_string())
        .and_then(|mut r| r.read_to_end(&mut original).map_err(|e| e.to_string()));
    if let Err(e) = read {
        eprintln!(
            "forwarder: cannot read {} for its notice: {e}",
            notice.message()
        );
    }
    let text = notice.compose(&original);
    let to = notice.recipient();
    // A double bounce is never queued: it could fail again, and again.
    let postmaster = notice.kind() == NoticeKind::DoubleBounce;
    if postmaster || ctx.directory.is_local_domain(to.domain()) {
        let mailbox = ctx
            .directory
            .resolve(to.as_str())
            .filter(|_| !postmaster)
            .or_else(|| MailboxName::new(POSTMASTER_MAILBOX).ok());
        let Some(mailbox) = mailbox else { return };
        let date = httpdate::fmt_http_date(SystemTime::now()).replace("GMT", "+0000");
        let header = format!(
            "Return-Path: <>\r\nReceived: by {} (postamt) id {};\r\n\t{date}\r\n",
            ctx.hostname,
            notice.message()
        );
        let stored = ctx.store.begin_delivery(&[mailbox]).and_then(|mut d| {
            d.write_chunk(header.as_bytes())?;
            d.write_chunk(&text)?;
            d.commit()
        });
        if let Err(e) = stored {
            eprintln!("forwarder: cannot deliver the notice for {to}: {e}");
        }
        return;
    }
    let spooled = ctx.spool.begin().and_then(|mut w| {
        let id = MessageId::new(w.id().as_str());
        let msg = QueuedMessage::new(id, ReversePath::Null, SystemTime::now(), text.len() as u64)
            .with_smtputf8(notice.needs_smtputf8())
            .with_recipient(QueuedRecipient::new(to.clone()));
        w.write_chunk(&text)?;
        w.commit(&record(&msg))?;
        Ok(msg)
    });
    match spooled {
        Ok(msg) => {
            if let Err(e) = relay.enqueue(msg) {
                eprintln!("forwarder: cannot queue the notice for {to}: {e}");
            }
        }
        Err(e) => eprintln!("forwarder: cannot spool the notice for {to}: {e}"),
    }
}

/// Where the delivery thread stands, for what a failure means.
#[derive(PartialEq)]
enum Stage {
    /// Before the envelope: the host could not be used.
    Greeting,
    /// The envelope went out.
    Transaction,
    /// The relay decided without us (no envelope), or the report is in.
    Decided,
}

/// Runs one delivery: `None` when the relay already knows its end. A
/// next hop whose STARTTLS fails gets the message in plaintext on a new
/// connection, as Postfix does for opportunistic TLS: else a host with a
/// broken TLS set-up would never get mail.
fn deliver(ctx: &Context, delivery: &Delivery, input: &Sender<Input>) -> Option<Outcome> {
    match attempt(ctx, delivery, input, ctx.tls.is_some()) {
        Some(Outcome::HostFailed(HostFailure::Tls(_))) if !ctx.require_tls => {
            attempt(ctx, delivery, input, false)
        }
        outcome => outcome,
    }
}

/// One connection for a delivery; `tls`: try STARTTLS when offered.
fn attempt(
    ctx: &Context,
    delivery: &Delivery,
    input: &Sender<Input>,
    tls: bool,
) -> Option<Outcome> {
    let id = ctx
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut trace = Trace::new(id, Protocol::SmtpOut, ctx.trace.clone());
    let hop = delivery.host();
    trace.note(&format!(
        "delivery {} of {} to {hop} for {} recipient(s)",
        delivery.id(),
        delivery.message(),
        delivery.recipients().len()
    ));
    let mut stream = match connect(ctx, hop) {
        Ok((stream, addr)) => {
            trace.note(&format!("connected to {addr}"));
            stream
        }
        Err(e) => {
            trace.note(&format!("cannot connect: {e}"));
            return Some(Outcome::HostFailed(HostFailure::Unreachable(e)));
        }
    };
    let mut session = ClientSession::new(ClientConfig::new(ctx.hostname.clone()), Instant::now());
    let mut stage = Stage::Greeting;
    let mut outcome: Option<Outcome> = None;
    let mut body: Option<Box<dyn Read + Send>> = None;
    let mut tls_tried = false;
    let mut out = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    let mut chunk = vec![0; 64 * 1024];
    let failed = |stage: &Stage, e: String| match stage {
        Stage::Greeting => Some(Outcome::HostFailed(HostFailure::Unreachable(e))),
        Stage::Transaction => Some(Outcome::ConnectionLost {
            answered: Vec::new(),
        }),
        Stage::Decided => None,
    };
    while !session.is_closed() {
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Ready(caps) => {
                    if caps.starttls && !session.is_tls() && !tls_tried && tls {
                        tls_tried = true;
                        if session.starttls().is_ok() {
                            continue;
                        }
                    }
                    if ctx.require_tls && !session.is_tls() {
                        let why = match (&ctx.tls, caps.starttls) {
                            (None, _) => "TLS is required and not set up here".to_string(),
                            (Some(_), false) => format!("{hop} does not offer STARTTLS"),
                            (Some(_), true) => format!("STARTTLS with {hop} did not start"),
                        };
                        trace.note(&format!("TLS required: {why}"));
                        outcome = Some(Outcome::HostFailed(HostFailure::Tls(why)));
                        stage = Stage::Decided;
                        let _ = session.quit();
                        continue;
                    }
                    let (tx, rx) = mpsc::channel();
                    let _ = input.send(Input::Envelope(
                        delivery.id(),
                        delivery.message().clone(),
                        caps,
                        tx,
                    ));
                    match rx.recv().ok().flatten() {
                        Some((envelope, size)) => {
                            let size = Some(size);
                            match open_body(ctx, delivery) {
                                Ok(reader) => body = Some(reader),
                                Err(e) => {
                                    trace.error(&format!("cannot read the queued message: {e}"));
                                    stage = Stage::Transaction;
                                    outcome = Some(Outcome::ConnectionLost {
                                        answered: Vec::new(),
                                    });
                                    let _ = session.quit();
                                    continue;
                                }
                            }
                            stage = Stage::Transaction;
                            if let Err(e) = session.start_message(envelope, size) {
                                trace.error(&format!("cannot start the transaction: {e}"));
                            }
                        }
                        None => {
                            stage = Stage::Decided;
                            let _ = session.quit();
                        }
                    }
                }
                ClientEvent::StartTls => {
                    let flushed = crate::client::flush(&mut stream, &mut session, &mut out);
                    trace.client(&out, false);
                    let config = ctx.tls.clone();
                    let upgraded = match (flushed, config) {
                        (Ok(()), Some(config)) => stream
                            .start_tls(config, &tls_name(hop.host()))
                            .map_err(|e| e.to_string()),
                        (Err(e), _) => Err(e.to_string()),
                        (_, None) => Err("no TLS settings".into()),
                    };
                    match upgraded {
                        Ok(s) => {
                            stream = s;
                            trace.note("TLS established");
                            let _ = session.tls_established();
                        }
                        Err(e) => {
                            trace.note(&format!("TLS failed: {e}"));
                            return Some(Outcome::HostFailed(HostFailure::Tls(e)));
                        }
                    }
                }
                ClientEvent::Done(report) => {
                    stage = Stage::Decided;
                    body = None;
                    outcome = Some(match report.outcome {
                        Err(Failure::ConnectionLost) => {
                            let mut answered = report.accepted;
                            answered.extend(report.refused);
                            Outcome::ConnectionLost { answered }
                        }
                        _ => Outcome::Done(report),
                    });
                    let _ = session.quit();
                }
                ClientEvent::Closed(Some(e)) if outcome.is_none() => {
                    outcome = match (&stage, e) {
                        (Stage::Greeting, ClientError::Refused(reply)) => {
                            Some(Outcome::HostFailed(HostFailure::Refused(reply)))
                        }
                        (Stage::Greeting, ClientError::Timeout) => {
                            Some(Outcome::HostFailed(HostFailure::Timeout))
                        }
                        (Stage::Transaction, ClientError::Timeout) => Some(Outcome::Timeout {
                            answered: Vec::new(),
                        }),
                        (stage, e) => failed(stage, e.to_string()),
                    };
                }
                _ => {}
            }
        }
        if let Some(reader) = body.as_mut() {
            while session.wants_message_bytes() {
                match reader.read(&mut chunk) {
                    Ok(0) => {
                        let _ = session.end_message();
                        body = None;
                        break;
                    }
                    Ok(n) => {
                        let _ = session.message_chunk(&chunk[..n]);
                    }
                    Err(e) => {
                        trace.error(&format!("reading the queued message failed: {e}"));
                        return Some(Outcome::ConnectionLost {
                            answered: Vec::new(),
                        });
                    }
                }
            }
        }
        let sending = body.is_some();
        if let Err(e) = exchange(
            &mut stream,
            &mut session,
            sending,
            &mut out,
            &mut buf,
            &mut trace,
        ) {
            trace.note(&format!("connection failed: {e}"));
            return outcome.or_else(|| failed(&stage, e.to_string()));
        }
    }
    trace.note("closed");
    outcome.or_else(|| failed(&stage, "the session ended".into()))
}

/// `client::exchange` with the bytes shown in the trace. While `sending` a
/// body, it waits for the server only when the session takes no more of
/// it now: once written out, the rest goes on at once.
fn exchange(
    stream: &mut ClientStream,
    session: &mut ClientSession,
    sending: bool,
    out: &mut Vec<u8>,
    buf: &mut [u8],
    trace: &mut Trace,
) -> io::Result<()> {
    flush(stream, session, out, trace)?;
    if session.is_closed() || (sending && session.wants_message_bytes()) {
        return Ok(());
    }
    match stream.read_until(buf, session.poll_timeout())? {
        None => session.handle_timeout(Instant::now()),
        Some(0) => session.receive_eof(Instant::now()),
        Some(n) => {
            trace.server(&buf[..n]);
            session.receive(Instant::now(), &buf[..n]);
        }
    }
    Ok(())
}

/// Writes what the session has to send, shown in the trace (a large
/// write, the message text, only by its length).
fn flush(
    stream: &mut ClientStream,
    session: &mut ClientSession,
    out: &mut Vec<u8>,
    trace: &mut Trace,
) -> io::Result<()> {
    crate::client::flush(stream, session, out)?;
    if trace.enabled() {
        if out.len() < 1000 {
            trace.client(out, false);
        } else {
            trace.note(&format!("... {} octets sent", out.len()));
        }
    }
    Ok(())
}

fn open_body(
    ctx: &Context,
    delivery: &Delivery,
) -> Result<Box<dyn Read + Send>, postamt_store::StoreError> {
    ctx.spool.read(&SpoolId::new(delivery.message().as_str())?)
}

/// The name a certificate would be checked against: the host, or for an
/// address literal, the address.
fn tls_name(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("IPv6:")
        .to_string()
}

/// Connects to the first address of `hop` that answers.
fn connect(ctx: &Context, hop: &NextHop) -> Result<(ClientStream, SocketAddr), String> {
    let port = hop.port().unwrap_or(ctx.relay_port);
    let host = tls_name(hop.host());
    let ips = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => ctx.dns()?.addresses(&host)?,
    };
    let mut last = format!("{host}: no address");
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match TcpStream::connect_timeout(&addr, ctx.connect_timeout) {
            Ok(tcp) => {
                let _ = tcp.set_write_timeout(Some(Duration::from_secs(5 * 60)));
                let _ = tcp.set_nodelay(true);
                return Ok((ClientStream::Plain(tcp), addr));
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}
