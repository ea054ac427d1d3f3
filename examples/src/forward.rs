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
use std::mem;
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
    /// A connection whose transaction ended cleanly waits this long for
    /// the next message to the same host and port (Postfix's
    /// `smtp_connection_cache_time_limit`): 2 s; zero: a new connection
    /// for every delivery. Idle connections count against `concurrency`.
    pub reuse_idle: Duration,
    /// TLS to next hops; [`RelayTls::May`] by default.
    pub tls: RelayTls,
    /// With [`RelayTls::Require`]: the PEM file of the certificate
    /// authorities to trust; `None`: the system's (`SSL_CERT_FILE`, else
    /// Debian's `/etc/ssl/certs/ca-certificates.crt`).
    pub tls_roots: Option<PathBuf>,
    /// Where queued messages wait.
    pub spool: Arc<dyn Spool>,
    /// For a queue several servers share (in PostgreSQL): how often to
    /// claim what nobody passes on, the messages of a server that died among
    /// them (`Spool::claim`). `None` (the default): the queue is this
    /// server's alone and is read once, at start.
    pub claim_every: Option<Duration>,
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
            reuse_idle: Duration::from_secs(2),
            tls: RelayTls::May,
            tls_roots: None,
            spool: Arc::new(postamt_store::MemorySpool::new()),
            claim_every: None,
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
            .field("reuse_idle", &self.reuse_idle)
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
    /// Idle connections to next hops.
    pool: Arc<Pool>,
    /// A shared queue is claimed from this often (see [`Forwarding`]).
    claim_every: Option<Duration>,
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
        pool: Pool::start(f.reuse_idle, workers),
        claim_every: f.claim_every,
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
                    let busy = &ctx.pool.busy;
                    busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let outcome = deliver(&ctx, &delivery, &input);
                    busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
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
    let mut next_claim = ctx.claim_every.map(|every| Instant::now() + every);
    loop {
        if let (Some(at), Some(every)) = (next_claim, ctx.claim_every)
            && Instant::now() >= at
        {
            restore(&mut relay, ctx);
            next_claim = Some(Instant::now() + every);
        }
        let now = SystemTime::now();
        while let Some(action) = relay.poll_action(now) {
            perform(&mut relay, action, ctx, input, jobs, &writers);
        }
        let mut wait = relay
            .poll_timeout()
            .map_or(Duration::from_secs(3600), |due| {
                due.duration_since(SystemTime::now()).unwrap_or_default()
            });
        if let Some(at) = next_claim {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let next = match inbox.recv_timeout(wait) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = SystemTime::now();
        match next {
            // Claimed from a shared queue already (it was committed before
            // the relay heard of it): the first copy stands.
            Input::Queued(msg) if relay.message(msg.id()).is_some() => {}
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
            // Idle connections get their QUIT.
            Input::Stop => {
                ctx.pool.stop();
                writers.finish();
                // On a shared queue, what this server held is the others'
                // at once, not only when its claims run out.
                for msg in relay.messages() {
                    if let Err(e) =
                        SpoolId::new(msg.id().as_str()).and_then(|id| ctx.spool.release(&id))
                    {
                        eprintln!("forwarder: cannot hand {} on: {e}", msg.id());
                    }
                }
                return;
            }
        }
    }
}

/// Queues what the spool kept from before a restart, with each
/// recipient's state as last saved: delivered ones are not sent again. On
/// a shared queue, called again every little while: what this server
/// claims then (what nobody passes on) joins the rest; what it has
/// already is left alone.
fn restore(relay: &mut Relay, ctx: &Context) {
    let entries = match ctx.spool.claim(usize::MAX) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("forwarder: cannot read the queue: {e}");
            return;
        }
    };
    for entry in entries {
        let id = MessageId::new(entry.id.as_str());
        if relay.message(&id).is_some() {
            continue;
        }
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

/// A greeted connection to a next hop, between transactions.
struct Conn {
    /// The next hop as routed (name lowercased) and its port.
    key: (String, u16),
    stream: ClientStream,
    session: ClientSession,
    trace: Trace,
    /// Since when it is open (for the reuse time limit).
    opened: Instant,
    /// Since when it waits in the pool (for the idle time limit).
    idle_since: Instant,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Conn {
    fn key(ctx: &Context, hop: &NextHop) -> (String, u16) {
        (
            hop.host().to_ascii_lowercase(),
            hop.port().unwrap_or(ctx.relay_port),
        )
    }

    /// Drives the session until it awaits no reply (the RSET the session
    /// sends after a failed transaction), so nothing the server says
    /// later is mistaken for news; whether it is fit for another
    /// transaction. Call it only after a transaction's report.
    fn settle(&mut self) -> bool {
        let Self {
            stream,
            session,
            trace,
            out,
            buf,
            ..
        } = self;
        loop {
            while let Some(event) = session.poll_event() {
                if let ClientEvent::Closed(_) = event {
                    return false;
                }
            }
            if session.is_closed() {
                return false;
            }
            if session.poll_timeout().is_none() {
                return flush(stream, session, out, trace).is_ok();
            }
            if exchange(stream, session, false, out, buf, trace).is_err() {
                return false;
            }
        }
    }
}

/// Connections kept open after a clean transaction (Postfix's
/// `smtp_connection_cache_on_demand`): the next delivery to the same host
/// and port says MAIL FROM on the same session instead of connecting,
/// greeting, saying EHLO and STARTTLS again. Idle connections count
/// against the delivery concurrency: idle ones plus those of running
/// deliveries never exceed it, so a delivery that must connect afresh
/// first closes the longest idle one. A reaper thread says QUIT to those
/// idle past their time, and to all at stop.
struct Pool {
    state: Mutex<PoolState>,
    wake: std::sync::Condvar,
    /// How long a connection may wait for its next transaction; zero: no reuse.
    idle_for: Duration,
    /// A connection open longer is not kept (Postfix's
    /// `smtp_connection_reuse_time_limit`).
    max_age: Duration,
    /// Open connections at most: the delivery concurrency.
    limit: usize,
    /// Deliveries running (each holds at most one connection).
    busy: std::sync::atomic::AtomicUsize,
    reaper: Mutex<Option<thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct PoolState {
    /// Longest idle first.
    idle: std::collections::VecDeque<Conn>,
    /// Taken out to be closed by the reaper.
    closing: Vec<Conn>,
    stopped: bool,
}

impl Pool {
    /// QUIT and its 221 may take this long when closing idle connections.
    const QUIT_WAIT: Duration = Duration::from_secs(2);
    const MAX_AGE: Duration = Duration::from_secs(300);

    fn start(idle_for: Duration, limit: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            state: Mutex::new(PoolState::default()),
            wake: std::sync::Condvar::new(),
            idle_for,
            max_age: Self::MAX_AGE,
            limit: limit.max(1),
            busy: std::sync::atomic::AtomicUsize::new(0),
            reaper: Mutex::new(None),
        });
        if !idle_for.is_zero() {
            let reaper = Arc::clone(&pool);
            match thread::Builder::new()
                .name("idle-reaper".into())
                .spawn(move || reaper.reap())
            {
                Ok(t) => *pool.reaper.lock().unwrap_or_else(PoisonError::into_inner) = Some(t),
                Err(e) => eprintln!("forwarder: no connection reuse ({e})"),
            }
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enabled(&self) -> bool {
        !self.idle_for.is_zero()
            && self
                .reaper
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    /// The most recently used idle connection to `key` whose server has
    /// said nothing meanwhile; one it closed (or that has news) is dropped.
    fn take(&self, key: &(String, u16)) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut st = self.lock();
                let i = st.idle.iter().rposition(|c| &c.key == key)?;
                st.idle.remove(i)?
            };
            if conn.stream.is_quiet() {
                return Some(conn);
            }
            conn.trace
                .note("the next hop closed the idle connection (or spoke): dropped");
        }
    }

    /// Keeps `conn` for the next delivery to its host, or closes it.
    fn put(&self, mut conn: Conn, require_tls: bool) {
        let fit = self.enabled()
            && conn.opened.elapsed() < self.max_age
            && (!require_tls || conn.session.is_tls());
        let mut st = self.lock();
        if !fit || st.stopped {
            drop(st);
            return close(vec![conn]);
        }
        conn.idle_since = Instant::now();
        conn.trace.note("idle, kept for the next message");
        st.idle.push_back(conn);
        // This delivery, still counted as running, holds none now.
        self.evict(&mut st, 1);
        drop(st);
        self.wake.notify_one();
    }

    /// Before a new connection: makes room for it under the limit.
    fn make_room(&self) {
        let mut st = self.lock();
        if self.evict(&mut st, 0) {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Moves the longest idle connections to `closing` while idle ones and
    /// running deliveries (but `free` of them, which hold none) together
    /// exceed the limit.
    fn evict(&self, st: &mut PoolState, free: usize) -> bool {
        let busy = self
            .busy
            .load(std::sync::atomic::Ordering::SeqCst)
            .saturating_sub(free);
        let mut any = false;
        while !st.idle.is_empty() && st.idle.len() + busy > self.limit {
            if let Some(conn) = st.idle.pop_front() {
                st.closing.push(conn);
                any = true;
            }
        }
        any
    }

    /// The reaper: QUIT to what is due, until stop.
    fn reap(&self) {
        loop {
            let (due, stopped) = {
                let mut st = self.lock();
                loop {
                    let now = Instant::now();
                    let mut due = mem::take(&mut st.closing);
                    if st.stopped {
                        due.extend(st.idle.drain(..));
                    } else {
                        while st
                            .idle
                            .front()
                            .is_some_and(|c| c.idle_since + self.idle_for <= now)
                        {
                            due.extend(st.idle.pop_front());
                        }
                    }
                    if !due.is_empty() || st.stopped {
                        break (due, st.stopped);
                    }
                    // Oldest first by idle time: the front is due first.
                    let wait = st.idle.front().map_or(Duration::from_secs(3600), |c| {
                        (c.idle_since + self.idle_for).saturating_duration_since(now)
                    });
                    st = self
                        .wake
                        .wait_timeout(st, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            };
            close(due);
            if stopped {
                return;
            }
        }
    }

    /// Closes every idle connection with QUIT; later ones are closed at once.
    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
        let reaper = self
            .reaper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = reaper {
            let _ = t.join();
        }
    }
}

/// Says QUIT on every connection, then waits (at most
/// [`Pool::QUIT_WAIT`] in all) for their 221s.
fn close(mut conns: Vec<Conn>) {
    for c in &mut conns {
        if c.session.quit().is_err()
            || flush(&mut c.stream, &mut c.session, &mut c.out, &mut c.trace).is_err()
        {
            c.trace.note("closed");
        }
    }
    let deadline = Instant::now() + Pool::QUIT_WAIT;
    for mut c in conns {
        while !c.session.is_closed() && Instant::now() < deadline {
            while c.session.poll_event().is_some() {}
            if c.session.is_closed() {
                break;
            }
            let Conn {
                stream,
                session,
                trace,
                out,
                buf,
                ..
            } = &mut c;
            if flush(stream, session, out, trace).is_err() {
                break;
            }
            let wait = session.poll_timeout().map_or(deadline, |t| t.min(deadline));
            match stream.read_until(buf, Some(wait)) {
                Ok(Some(0)) => session.receive_eof(Instant::now()),
                Ok(Some(n)) => {
                    trace.server(&buf[..n]);
                    session.receive(Instant::now(), &buf[..n]);
                }
                Ok(None) => session.handle_timeout(Instant::now()),
                Err(_) => break,
            }
        }
        c.trace.note("closed");
    }
}

/// Runs one delivery: `None` when the relay already knows its end. An
/// idle connection to the host is used first; one that turns out dead
/// before any recipient was answered (closed, reset, 421) gets the
/// delivery retried once on a new connection: no text went, so nothing
/// can arrive twice. A next hop whose STARTTLS fails gets the message in
/// plaintext on a new connection, as Postfix does for opportunistic TLS:
/// else a host with a broken TLS set-up would never get mail.
fn deliver(ctx: &Context, delivery: &Delivery, input: &Sender<Input>) -> Option<Outcome> {
    if let Some(conn) = ctx.pool.take(&Conn::key(ctx, delivery.host())) {
        match transaction(ctx, delivery, input, conn, true) {
            Run::Ended(outcome) => return outcome,
            Run::Stale => {}
        }
    }
    match attempt(ctx, delivery, input, ctx.tls.is_some()) {
        Some(Outcome::HostFailed(HostFailure::Tls(_))) if !ctx.require_tls => {
            attempt(ctx, delivery, input, false)
        }
        outcome => outcome,
    }
}

/// How a transaction on a connection ended.
enum Run {
    /// As the relay must hear (`None`: it knows already).
    Ended(Option<Outcome>),
    /// A reused connection was dead before the server answered anything
    /// of this transaction, and before the message's end went out.
    Stale,
}

/// One new connection for a delivery; `tls`: try STARTTLS when offered.
fn attempt(
    ctx: &Context,
    delivery: &Delivery,
    input: &Sender<Input>,
    tls: bool,
) -> Option<Outcome> {
    let id = ctx
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let trace = Trace::new(id, Protocol::SmtpOut, ctx.trace.clone());
    let hop = delivery.host();
    trace.note(&format!(
        "delivery {} of {} to {hop} for {} recipient(s)",
        delivery.id(),
        delivery.message(),
        delivery.recipients().len()
    ));
    ctx.pool.make_room();
    let stream = match connect(ctx, hop) {
        Ok((stream, addr)) => {
            trace.note(&format!("connected to {addr}"));
            stream
        }
        Err(e) => {
            trace.note(&format!("cannot connect: {e}"));
            return Some(Outcome::HostFailed(HostFailure::Unreachable(e)));
        }
    };
    match greet(ctx, hop, stream, trace, tls) {
        Ok(conn) => match transaction(ctx, delivery, input, conn, false) {
            Run::Ended(outcome) => outcome,
            // Only for reused connections.
            Run::Stale => Some(Outcome::ConnectionLost {
                answered: Vec::new(),
            }),
        },
        Err(outcome) => Some(outcome),
    }
}

/// Greeting, EHLO and STARTTLS on a new connection, up to where the
/// session is ready for a transaction; else what the host failure means.
fn greet(
    ctx: &Context,
    hop: &NextHop,
    mut stream: ClientStream,
    mut trace: Trace,
    tls: bool,
) -> Result<Conn, Outcome> {
    let unreachable = |e: String| Outcome::HostFailed(HostFailure::Unreachable(e));
    let opened = Instant::now();
    let mut session = ClientSession::new(ClientConfig::new(ctx.hostname.clone()), opened);
    let mut tls_tried = false;
    let mut out = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
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
                        if session.quit().is_ok() {
                            let _ = flush(&mut stream, &mut session, &mut out, &mut trace);
                        }
                        return Err(Outcome::HostFailed(HostFailure::Tls(why)));
                    }
                    return Ok(Conn {
                        key: Conn::key(ctx, hop),
                        stream,
                        session,
                        trace,
                        opened,
                        idle_since: opened,
                        out,
                        buf,
                    });
                }
                ClientEvent::StartTls => {
                    let flushed = crate::client::flush(&mut stream, &mut session, &mut out);
                    trace.client(&out, false);
                    let upgraded = match (flushed, ctx.tls.clone()) {
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
                            return Err(Outcome::HostFailed(HostFailure::Tls(e)));
                        }
                    }
                }
                ClientEvent::Closed(e) => {
                    trace.note("closed");
                    return Err(match e {
                        Some(ClientError::Refused(reply)) => {
                            Outcome::HostFailed(HostFailure::Refused(reply))
                        }
                        Some(ClientError::Timeout) => Outcome::HostFailed(HostFailure::Timeout),
                        Some(e) => unreachable(e.to_string()),
                        None => unreachable("the session ended".into()),
                    });
                }
                _ => {}
            }
        }
        if let Err(e) = exchange(
            &mut stream,
            &mut session,
            false,
            &mut out,
            &mut buf,
            &mut trace,
        ) {
            trace.note(&format!("connection failed: {e}"));
            return Err(unreachable(e.to_string()));
        }
    }
}

/// One transaction on a greeted connection (`reused`: it carried one
/// before); a connection that ends it clean goes back to the pool.
fn transaction(
    ctx: &Context,
    delivery: &Delivery,
    input: &Sender<Input>,
    mut conn: Conn,
    reused: bool,
) -> Run {
    if reused {
        conn.trace.note(&format!(
            "delivery {} of {} to {} for {} recipient(s), on this connection again",
            delivery.id(),
            delivery.message(),
            delivery.host(),
            delivery.recipients().len()
        ));
    }
    let caps = conn.session.capabilities().cloned().unwrap_or_default();
    let (tx, rx) = mpsc::channel();
    let _ = input.send(Input::Envelope(
        delivery.id(),
        delivery.message().clone(),
        caps,
        tx,
    ));
    let Some((envelope, size)) = rx.recv().ok().flatten() else {
        // The relay decided without a transaction (a loop, no SMTPUTF8).
        close(vec![conn]);
        return Run::Ended(None);
    };
    let mut body = match open_body(ctx, delivery) {
        Ok(reader) => Some(reader),
        Err(e) => {
            conn.trace
                .error(&format!("cannot read the queued message: {e}"));
            ctx.pool.put(conn, ctx.require_tls);
            return Run::Ended(Some(Outcome::ConnectionLost {
                answered: Vec::new(),
            }));
        }
    };
    if let Err(e) = conn.session.start_message(envelope, Some(size)) {
        // Nothing went out and no reply is awaited: waiting for one would
        // block for good. Deferred; the connection stays usable.
        conn.trace
            .error(&format!("cannot start the transaction: {e}"));
        ctx.pool.put(conn, ctx.require_tls);
        return Run::Ended(Some(Outcome::ConnectionLost {
            answered: Vec::new(),
        }));
    }
    // Once the message's end is handed over, a failure is never retried:
    // the server may have taken it.
    let mut ended = false;
    let mut broken = false;
    let mut chunk = vec![0; 64 * 1024];
    let report = loop {
        let mut report = None;
        while let Some(event) = conn.session.poll_event() {
            if let ClientEvent::Done(r) = event {
                report = Some(r);
            }
        }
        if let Some(report) = report {
            break Some(report);
        }
        if broken || conn.session.is_closed() {
            break None;
        }
        if let Some(reader) = body.as_mut() {
            while conn.session.wants_message_bytes() {
                match reader.read(&mut chunk) {
                    Ok(0) => {
                        ended = true;
                        let _ = conn.session.end_message();
                        body = None;
                        break;
                    }
                    Ok(n) => {
                        let _ = conn.session.message_chunk(&chunk[..n]);
                    }
                    Err(e) => {
                        // The end never goes out: the server drops the text.
                        conn.trace
                            .error(&format!("reading the queued message failed: {e}"));
                        return Run::Ended(Some(Outcome::ConnectionLost {
                            answered: Vec::new(),
                        }));
                    }
                }
            }
        }
        let Conn {
            stream,
            session,
            trace,
            out,
            buf,
            ..
        } = &mut conn;
        if let Err(e) = exchange(stream, session, body.is_some(), out, buf, trace) {
            trace.note(&format!("connection failed: {e}"));
            // The session reports the transaction as a lost connection.
            session.receive_eof(Instant::now());
            broken = true;
        }
    };
    let Some(report) = report else {
        conn.trace.note("closed");
        return Run::Ended(Some(Outcome::ConnectionLost {
            answered: Vec::new(),
        }));
    };
    let dead = match &report.outcome {
        Err(Failure::ConnectionLost) => true,
        Err(Failure::Message(r) | Failure::Sender(r)) => r.code() == 421,
        _ => false,
    };
    if reused && dead && !ended && report.accepted.is_empty() && report.refused.is_empty() {
        conn.trace
            .note("the idle connection was dead: the delivery goes on a new one");
        return Run::Stale;
    }
    let outcome = match report.outcome {
        Err(Failure::ConnectionLost) => {
            let mut answered = report.accepted;
            answered.extend(report.refused);
            Outcome::ConnectionLost { answered }
        }
        _ => Outcome::Done(report),
    };
    if !broken && conn.settle() {
        ctx.pool.put(conn, ctx.require_tls);
    } else {
        conn.trace.note("closed");
    }
    Run::Ended(Some(outcome))
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
