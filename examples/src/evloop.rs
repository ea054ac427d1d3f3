//! Many connections on a few threads: non-blocking `std::net` sockets under
//! a readiness poller (mio), every session's deadline in one timer
//! structure, and a bounded pool of worker threads for work that waits on
//! the disk, whose results go back to the loop that asked for them.
//!
//! Each loop thread owns its connections outright (no locks on the way from
//! a socket to its session); the listener is registered with every loop and
//! whichever wakes first accepts. A session whose application waits for the
//! pool reads no further input until the result is back: its bytes stay in
//! the kernel, which pushes back on the client, while every other session on
//! the loop goes on. Output is bounded: a client that sends commands but
//! does not read the replies is cut off once [`OUTPUT_LIMIT`] octets wait
//! for it, instead of the server holding them without end.
//!
//! TLS (STARTTLS/STLS) runs on the loop too: rustls is handed the
//! session's replies only while its own output is drained, so the bound on
//! output holds encrypted as in the clear, and a handshake has its own
//! deadline in the same timer structure.
//!
//! The telnet filter and the trace sit between socket and session as in
//! [`crate::conn`]: with either on, input goes to the session a line at a
//! time, each after asking what the session reads next.
//!
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use postamt_wire::proxy::{Decoded, ProxyHeader};
use postamt_wire::{Reads, Session, TelnetFilter};
use rustls::ServerConnection;

use crate::trace::Trace;

/// How long connections may run on after the server was asked to stop.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);

/// What a session reads next, as the loop needs to know it: typed lines
/// (and whether the next one is a secret SASL response), message text up to
/// its end marker (DATA), or the octets left of a BDAT chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reading {
    Line { secret: bool },
    Text,
    Chunk { left: u64 },
}

/// Octets of replies that may wait for a client before it is cut off.
pub(crate) const OUTPUT_LIMIT: usize = 256 * 1024;
/// Octets read from one socket at a time.
const READ_SIZE: usize = 16 * 1024;
/// Reads for one connection before the loop turns to the others (it comes
/// back to this one after them).
const READS_PER_TURN: usize = 4;
const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// Every session's next deadline, earliest first; one per key at most.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    queue: BTreeSet<(Instant, usize)>,
    at: HashMap<usize, Instant>,
}

impl Timers {
    /// Sets (or with `None` clears) the deadline of `key`.
    pub(crate) fn set(&mut self, key: usize, when: Option<Instant>) {
        if self.at.get(&key).copied() == when {
            return;
        }
        if let Some(old) = self.at.remove(&key) {
            self.queue.remove(&(old, key));
        }
        if let Some(when) = when {
            self.queue.insert((when, key));
            self.at.insert(key, when);
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|&(when, _)| when)
    }

    /// Takes one key whose deadline is at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(when, key) = self.queue.first()?;
        if when > now {
            return None;
        }
        self.queue.pop_first();
        self.at.remove(&key);
        Some(key)
    }

    /// How many keys have a deadline.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}

/// A job for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads behind a bounded queue.
#[derive(Debug)]
pub(crate) struct Pool {
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// `threads` workers (at least one) taking jobs from a queue of `queue`.
    pub(crate) fn new(threads: usize, queue: usize) -> Self {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads.max(1))
            .map(|n| {
                let rx = Arc::clone(&rx);
                thread::Builder::new()
                    .name(format!("store-{n}"))
                    .spawn(move || {
                        loop {
                            // The lock is held only while waiting for a job.
                            let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => break,
                            }
                        }
                    })
                    .expect("cannot start a store worker thread")
            })
            .collect();
        Self {
            jobs: Some(jobs),
            workers,
        }
    }

    /// Queues `job`, or gives it back when the queue is full (the caller
    /// keeps it and tries again: the loop must never wait here).
    pub(crate) fn try_submit(&self, job: Job) -> Result<(), Job> {
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(job);
        };
        jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job,
        })
    }
}

impl Drop for Pool {
    /// Runs what is queued, then ends the workers.
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Work that must run off the loop (it waits on the disk); its result goes
/// back to the connection's [`Handler::finish`].
pub(crate) type Work<D> = Box<dyn FnOnce() -> D + Send>;

/// What an application asks of the loop after the session's events.
pub(crate) enum Ask<D> {
    /// Run this on the pool; the session waits for its result.
    Work(Work<D>),
    /// The session answered STARTTLS/STLS: once that reply is out, run the
    /// TLS handshake, then call `tls_established`.
    StartTls,
    /// Call `on_events` again once the output is written, reading nothing
    /// meanwhile: a message is being sent in pieces, each only when the
    /// client has taken the last, so it never waits in memory whole.
    WhenDrained,
    /// After this long, hand this to [`Handler::finish`], reading nothing
    /// meanwhile (the pause before a failed login is refused): a timer, so
    /// the loop goes on.
    Pause(Duration, D),
}

/// The application side of one connection, as a loop drives it.
pub(crate) trait Handler: Send + 'static {
    /// The protocol session.
    type Session: Session;
    /// What store work hands back.
    type Done: Send + 'static;
    /// The session.
    fn session(&mut self) -> &mut Self::Session;
    /// Drains the session's events, answering what it can at once. Work
    /// asked for runs on the pool; until its result is given to
    /// [`Handler::finish`], the session gets no input.
    fn on_events(&mut self) -> Option<Ask<Self::Done>>;
    /// The result of the work `on_events` asked for: answer the decision,
    /// and say what the loop should do next (as `on_events` does; `None`
    /// gives `on_events` its turn).
    fn finish(&mut self, done: Self::Done) -> Option<Ask<Self::Done>>;
    /// What the session reads next, for the telnet filter and the trace.
    fn reading(&mut self) -> Reading {
        Reading::Line { secret: false }
    }
    /// This connection's trace, when tracing is on.
    fn trace(&mut self) -> Option<&mut Trace> {
        None
    }
}

/// What store work hands back to a handler that takes its results as
/// closures: the rest of the work, run on the loop with the handler.
pub(crate) struct Then<H>(Box<Rest<H>>);

/// The rest of some work: run with the handler, it says what comes next.
type Rest<H> = dyn FnOnce(&mut H) -> Option<Ask<Then<H>>> + Send;

impl<H> Then<H> {
    /// The rest of some work, to run on the loop.
    pub(crate) fn new(rest: impl FnOnce(&mut H) -> Option<Ask<Self>> + Send + 'static) -> Self {
        Self(Box::new(rest))
    }

    /// Runs the rest of the work.
    pub(crate) fn run(self, handler: &mut H) -> Option<Ask<Self>> {
        (self.0)(handler)
    }
}

/// Runs `job` with `context` and then `then` with its result: both at once
/// when the job does not block (`blocks` false, a store in memory), else
/// the job on the pool and `then` back on the loop when it is done.
pub(crate) fn offload<H, C, T>(
    handler: &mut H,
    context: &Arc<C>,
    blocks: bool,
    job: impl FnOnce(&C) -> T + Send + 'static,
    then: impl FnOnce(&mut H, T) -> Option<Ask<Then<H>>> + Send + 'static,
) -> Option<Ask<Then<H>>>
where
    H: 'static,
    C: Send + Sync + ?Sized + 'static,
    T: Send + 'static,
{
    if !blocks {
        let result = job(context);
        return then(handler, result);
    }
    let context = Arc::clone(context);
    Some(Ask::Work(Box::new(move || {
        let result = job(&context);
        Then(Box::new(move |h: &mut H| then(h, result)))
    })))
}

/// What to do with a new connection.
pub(crate) enum Admit<H> {
    /// Serve it with this handler.
    Serve(H),
    /// Send these octets (a refusal) and close it.
    Refuse(Vec<u8>),
}

/// Makes the handler for a new connection from its peer's address.
pub(crate) type Admitter<H> = Arc<dyn Fn(Client) -> Admit<H> + Send + Sync>;

/// Who a new connection is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Client {
    /// The client: the peer, or the one a trusted balancer's PROXY header
    /// names.
    pub(crate) addr: SocketAddr,
    /// The other end of the TCP connection (the balancer, if any).
    pub(crate) peer: SocketAddr,
}

impl Client {
    /// The trace's first line: who connected (and through which balancer).
    pub(crate) fn connected(&self) -> String {
        if self.addr == self.peer {
            format!("connection from {}", self.addr)
        } else {
            format!("connection from {} via {}", self.addr, self.peer)
        }
    }
}

/// How long a trusted balancer may take to send its PROXY header (it sends
/// it at once, before anything of the client's).
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection from a trusted balancer whose PROXY header has not yet
/// arrived whole.
struct Preamble {
    stream: TcpStream,
    peer: SocketAddr,
    received: Vec<u8>,
}

/// How the loops run.
#[derive(Clone, Debug)]
pub(crate) struct LoopConfig {
    /// Loop threads (about one per core).
    pub(crate) threads: usize,
    /// How long connections may run on after [`Loops::stop`].
    pub(crate) stop_grace: Duration,
    /// TLS for STARTTLS/STLS; a session that asks for it without is closed.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a TLS handshake may take in all.
    pub(crate) tls_handshake_timeout: Duration,
    /// Take the client's bytes exactly as sent: no telnet filter.
    pub(crate) strict_input: bool,
    /// Balancers whose connections begin with a PROXY protocol header
    /// naming the client (v1 or v2); nobody else may send one.
    pub(crate) proxy_from: Vec<IpNet>,
}

/// Running loops on one listener; [`Loops::stop`] ends them.
#[derive(Debug)]
pub(crate) struct Loops {
    #[cfg_attr(not(test), allow(dead_code))]
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Loops {
    /// Starts `config.threads` loops that all watch `listener`, with store
    /// work on `pool` (where there is no `SO_REUSEPORT`, and in tests).
    pub(crate) fn start<H: Handler>(
        listener: std::net::TcpListener,
        config: &LoopConfig,
        pool: Arc<Pool>,
        admit: Admitter<H>,
    ) -> io::Result<Self> {
        let listeners = (0..config.threads.max(1))
            .map(|_| listener.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        Self::start_each(listeners, config, pool, admit)
    }

    /// Starts one loop for each of `listeners` (sockets bound to one
    /// address with `SO_REUSEPORT`, between which the kernel spreads the
    /// new connections, so that one arrival wakes one loop).
    pub(crate) fn start_each<H: Handler>(
        listeners: Vec<std::net::TcpListener>,
        config: &LoopConfig,
        pool: Arc<Pool>,
        admit: Admitter<H>,
    ) -> io::Result<Self> {
        let first = listeners
            .first()
            .ok_or_else(|| io::Error::other("no listener to serve"))?;
        let addr = first.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut wakers = Vec::new();
        let mut threads = Vec::new();
        for (n, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let mut listener = TcpListener::from_std(listener);
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)?;
            let mut lp = Loop {
                poll,
                listener: Some(listener),
                conns: HashMap::new(),
                preambles: HashMap::new(),
                proxy_from: config.proxy_from.clone(),
                next_key: 0,
                timers: Timers::default(),
                done: Arc::default(),
                waker: Arc::clone(&waker),
                pool: Arc::clone(&pool),
                backlog: VecDeque::new(),
                again: VecDeque::new(),
                admit: Arc::clone(&admit),
                stop: Arc::clone(&stop),
                grace: config.stop_grace,
                tls: config
                    .tls
                    .clone()
                    .map(|t| (t, config.tls_handshake_timeout)),
                strict_input: config.strict_input,
                retry_accept: false,
                buf: vec![0; READ_SIZE],
            };
            wakers.push(waker);
            threads.push(
                thread::Builder::new()
                    .name(format!("loop-{n}"))
                    .spawn(move || lp.run())?,
            );
        }
        Ok(Self {
            addr,
            stop,
            wakers,
            threads,
        })
    }

    /// Where the listener is.
    #[cfg(test)]
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; connections get the grace, then are closed.
    #[cfg(test)]
    pub(crate) fn stop(self) {
        self.begin_stop();
        self.join();
    }

    /// Stops accepting and starts the connections' grace, without waiting
    /// (so that several sets of loops stop together).
    pub(crate) fn begin_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Waits for the loops to end after [`Loops::begin_stop`].
    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One connection on a loop.
struct Conn<H: Handler> {
    stream: TcpStream,
    handler: H,
    /// Output not yet written, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Store work is out for this connection: read nothing.
    waiting: bool,
    /// Work asked for in this turn, for the loop to send to the pool.
    work: Option<Work<H::Done>>,
    /// STARTTLS was answered: read nothing until the reply is out, then
    /// hand the socket to TLS.
    starttls: bool,
    tls: Option<Box<ServerConnection>>,
    /// The TLS handshake must be done by then.
    handshake_until: Option<Instant>,
    /// close_notify has been queued.
    tls_closing: bool,
    /// The application wants its turn when the output is written.
    when_drained: bool,
    /// The application wants its turn then.
    paused_until: Option<Instant>,
    /// What the application gets when the pause is over.
    after_pause: Option<H::Done>,
    /// Input read but not yet given to the session (trace or filter on).
    held: Vec<u8>,
    held_pos: usize,
    filter: Option<TelnetFilter>,
    /// Scratch for what the filter makes of a piece of input.
    typed: Vec<u8>,
    eof: bool,
}

/// Results of store work, with their connections' keys, for the loop.
type Finished<D> = Arc<Mutex<Vec<(usize, D)>>>;

/// One loop thread's state.
struct Loop<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: HashMap<usize, Conn<H>>,
    /// Balancers' connections waiting for their PROXY header.
    preambles: HashMap<usize, Preamble>,
    proxy_from: Vec<IpNet>,
    next_key: usize,
    timers: Timers,
    /// Results of store work, with their connections' keys.
    done: Finished<H::Done>,
    waker: Arc<Waker>,
    pool: Arc<Pool>,
    /// Jobs the pool's queue had no room for yet, oldest first.
    backlog: VecDeque<Job>,
    /// Connections that stopped reading for fairness, to serve again.
    again: VecDeque<usize>,
    admit: Admitter<H>,
    stop: Arc<AtomicBool>,
    grace: Duration,
    tls: Option<(Arc<rustls::ServerConfig>, Duration)>,
    strict_input: bool,
    /// Accepting failed (out of descriptors, say) with connections still
    /// queued: readiness is edge-triggered, so no event will say so again.
    retry_accept: bool,
    buf: Vec<u8>,
}

/// What a connection's turn ended with.
enum Turn {
    /// Waits for readiness, a timer or its store work.
    Idle,
    /// Has more input to read: come back after the others.
    More,
    /// Closed (it ended, the peer left or failed, or it did not read).
    Closed,
}

impl<H: Handler> Loop<H> {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut stopping_since: Option<Instant> = None;
        loop {
            if stopping_since.is_none() && self.stop.load(Ordering::SeqCst) {
                stopping_since = Some(Instant::now());
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
            }
            if let Some(since) = stopping_since
                && ((self.conns.is_empty() && self.preambles.is_empty())
                    || since.elapsed() >= self.grace)
            {
                break;
            }
            let now = Instant::now();
            let mut wait = self.timers.next().map(|t| t.saturating_duration_since(now));
            if !self.again.is_empty() || !self.backlog.is_empty() {
                // Backlogged jobs are retried soon; more input at once.
                wait = Some(if self.again.is_empty() {
                    Duration::from_millis(1)
                } else {
                    Duration::ZERO
                });
            }
            if self.retry_accept {
                wait = Some(wait.map_or(Duration::from_millis(10), |w| {
                    w.min(Duration::from_millis(10))
                }));
            }
            if stopping_since.is_some() {
                wait = Some(wait.map_or(Duration::from_millis(50), |w| {
                    w.min(Duration::from_millis(50))
                }));
            }
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("event loop: poll failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) if self.preambles.contains_key(&key) => self.read_preamble(key),
                    // Room to write where nothing waits to be written (as
                    // right after the connection was registered): no turn.
                    Token(key)
                        if !event.is_readable()
                            && !event.is_error()
                            && !event.is_write_closed()
                            && self.conns.get(&key).is_some_and(|c| !wants_room(c)) => {}
                    Token(key) => self.serve(key),
                }
            }
            if std::mem::take(&mut self.retry_accept) {
                self.accept();
            }
            self.finish_work();
            self.submit_backlog();
            for _ in 0..self.again.len() {
                if let Some(key) = self.again.pop_front() {
                    self.serve(key);
                }
            }
            let now = Instant::now();
            while let Some(key) = self.timers.pop_due(now) {
                if let Some(p) = self.preambles.get(&key) {
                    eprintln!(
                        "{}: no PROXY protocol header within {PROXY_HEADER_TIMEOUT:?}: closed",
                        p.peer
                    );
                    self.close_preamble(key);
                    continue;
                }
                let Some(c) = self.conns.get_mut(&key) else {
                    continue;
                };
                if c.handshake_until.is_some_and(|until| until <= now) {
                    // Per-read timeouts alone would let a client that sends
                    // a byte now and then hold the connection for days.
                    if let (Some(trace), Some((_, timeout))) = (c.handler.trace(), &self.tls) {
                        trace.note(&format!(
                            "TLS handshake failed: not finished within {timeout:?}"
                        ));
                    }
                    self.close(key);
                    continue;
                }
                if c.paused_until.take().is_none() {
                    c.handler.session().handle_timeout(now);
                } else if let Some(done) = c.after_pause.take() {
                    let ask = c.handler.finish(done);
                    take_ask(c, ask);
                }
                self.serve(key);
            }
        }
        for (_, p) in self.preambles.drain() {
            let _ = p.stream.shutdown(Shutdown::Both);
        }
        for (_, mut c) in self.conns.drain() {
            let note = if c.handshake_until.is_some() {
                "server stopping: TLS handshake abandoned"
            } else {
                "server stopping: connection closed"
            };
            if let Some(trace) = c.handler.trace() {
                trace.note(note);
            }
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: tried again shortly.
                    eprintln!("accept failed: {e}");
                    self.retry_accept = true;
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let key = self.next_key;
            self.next_key += 1;
            if self
                .proxy_from
                .iter()
                .any(|net| net.contains(&peer.ip().to_canonical()))
            {
                // A balancer's connection: who the client is comes first.
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut stream, Token(key), Interest::READABLE)
                {
                    eprintln!("{peer}: cannot watch the connection: {e}");
                    continue;
                }
                self.preambles.insert(
                    key,
                    Preamble {
                        stream,
                        peer,
                        received: Vec::new(),
                    },
                );
                self.timers
                    .set(key, Some(Instant::now() + PROXY_HEADER_TIMEOUT));
                self.read_preamble(key);
                continue;
            }
            self.admit(key, stream, Client { addr: peer, peer }, &[], false);
        }
    }

    /// Reads a balancer's PROXY header; once it is whole, the connection
    /// is admitted as the client it names, with what followed the header
    /// as its first input. A malformed header, or none in time, closes it.
    fn read_preamble(&mut self, key: usize) {
        let Some(p) = self.preambles.get_mut(&key) else {
            return;
        };
        loop {
            match p.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => p.received.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            match ProxyHeader::decode(&p.received) {
                Decoded::Incomplete => continue,
                Decoded::Complete { header, consumed } => {
                    let Some(p) = self.preambles.remove(&key) else {
                        return;
                    };
                    self.timers.set(key, None);
                    let client = Client {
                        addr: header.source().unwrap_or(p.peer),
                        peer: p.peer,
                    };
                    self.admit(key, p.stream, client, &p.received[consumed..], true);
                    return;
                }
                Decoded::Malformed(e) => {
                    eprintln!("{}: no PROXY protocol header ({e}): closed", p.peer);
                    break;
                }
            }
        }
        self.close_preamble(key);
    }

    fn close_preamble(&mut self, key: usize) {
        if let Some(mut p) = self.preambles.remove(&key) {
            let _ = self.poll.registry().deregister(&mut p.stream);
            let _ = p.stream.shutdown(Shutdown::Both);
        }
        self.timers.set(key, None);
    }

    /// Serves a new connection from `client` or turns it away, as the
    /// admitter says; `input` is what it sent already, `registered` whether
    /// the poller watches it yet.
    fn admit(
        &mut self,
        key: usize,
        mut stream: TcpStream,
        client: Client,
        input: &[u8],
        registered: bool,
    ) {
        let handler = match (self.admit)(client) {
            Admit::Refuse(bytes) => {
                // A fresh socket's buffer takes a one-line refusal whole.
                if registered {
                    let _ = self.poll.registry().deregister(&mut stream);
                }
                let _ = stream.write(&bytes);
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Admit::Serve(handler) => handler,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        let watched = if registered {
            self.poll
                .registry()
                .reregister(&mut stream, Token(key), interest)
        } else {
            self.poll
                .registry()
                .register(&mut stream, Token(key), interest)
        };
        if let Err(e) = watched {
            eprintln!("{}: cannot watch the connection: {e}", client.peer);
            return;
        }
        self.conns.insert(
            key,
            Conn {
                stream,
                handler,
                out: Vec::new(),
                sent: 0,
                waiting: false,
                work: None,
                starttls: false,
                tls: None,
                handshake_until: None,
                tls_closing: false,
                when_drained: false,
                paused_until: None,
                after_pause: None,
                held: Vec::new(),
                held_pos: 0,
                filter: (!self.strict_input).then(new_filter),
                typed: Vec::new(),
                eof: false,
            },
        );
        if !input.is_empty()
            && let Some(c) = self.conns.get_mut(&key)
        {
            take_input(c, input);
        }
        self.serve(key);
    }

    /// Gives one connection its turn: output, then input while there is
    /// some and no store work is out, then its next deadline.
    fn serve(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let turn = turn(c, &mut self.buf, self.tls.as_ref());
        let work = c.work.take();
        let deadline = match (c.handshake_until, c.paused_until) {
            (Some(until), _) | (None, Some(until)) => Some(until),
            (None, None) if c.waiting => None,
            (None, None) => c.handler.session().poll_timeout(),
        };
        match turn {
            Turn::Closed => {
                self.close(key);
                return;
            }
            Turn::More => self.again.push_back(key),
            Turn::Idle => {}
        }
        if let Some(work) = work {
            self.send_work(key, work);
        }
        self.timers.set(key, deadline);
    }

    fn send_work(&mut self, key: usize, work: Work<H::Done>) {
        let done = Arc::clone(&self.done);
        let waker = Arc::clone(&self.waker);
        let job: Job = Box::new(move || {
            let result = work();
            done.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((key, result));
            let _ = waker.wake();
        });
        if self.backlog.is_empty() {
            if let Err(job) = self.pool.try_submit(job) {
                self.backlog.push_back(job);
            }
        } else {
            self.backlog.push_back(job);
        }
    }

    fn submit_backlog(&mut self) {
        while let Some(job) = self.backlog.pop_front() {
            if let Err(job) = self.pool.try_submit(job) {
                self.backlog.push_front(job);
                return;
            }
        }
    }

    /// Hands finished store work to its connections and serves them again.
    fn finish_work(&mut self) {
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(PoisonError::into_inner));
        for (key, result) in done {
            // A connection closed meanwhile (the server stopping) drops it.
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.waiting = false;
            let ask = c.handler.finish(result);
            take_ask(c, ask);
            self.serve(key);
        }
    }

    /// Drops the connection: closing its socket ends it and takes it out
    /// of the poller.
    fn close(&mut self, key: usize) {
        self.conns.remove(&key);
        self.timers.set(key, None);
    }
}

/// Writes what the session has to say, as far as the socket takes it;
/// switches to TLS once the reply to STARTTLS is out; gives an application
/// that streams its next turn while the socket keeps taking it.
fn turn_output<H: Handler>(
    c: &mut Conn<H>,
    tls: Option<&(Arc<rustls::ServerConfig>, Duration)>,
) -> Turn {
    for _ in 0..READS_PER_TURN * 4 {
        match write_out(c, tls) {
            Turn::Idle if c.when_drained && c.sent == c.out.len() => {
                c.when_drained = false;
                events(c);
            }
            turn => return turn,
        }
    }
    if c.when_drained && c.sent == c.out.len() {
        // Drained and wanting more, but others come first.
        Turn::More
    } else {
        Turn::Idle
    }
}

/// One round of [`turn_output`].
fn write_out<H: Handler>(
    c: &mut Conn<H>,
    tls: Option<&(Arc<rustls::ServerConfig>, Duration)>,
) -> Turn {
    if c.sent == c.out.len() {
        c.out.clear();
        c.sent = 0;
    }
    let before = c.out.len();
    c.handler.session().poll_transmit(&mut c.out);
    if c.out.len() > before
        && let Some(trace) = c.handler.trace()
    {
        trace.server(&c.out[before..]);
    }
    if c.out.len() - c.sent > OUTPUT_LIMIT {
        // It sends but does not read: holding more would have no end.
        return Turn::Closed;
    }
    let written = match c.tls.as_mut() {
        None => write_plain(&mut c.stream, &c.out, &mut c.sent),
        Some(conn) => write_tls(conn, &mut c.stream, &c.out, &mut c.sent).and_then(|()| {
            if c.sent == c.out.len() && !c.tls_closing && c.handler.session().is_closed() {
                // The session's last words are with rustls: say goodbye.
                conn.send_close_notify();
                c.tls_closing = true;
                write_tls(conn, &mut c.stream, &c.out, &mut c.sent)?;
            }
            Ok(())
        }),
    };
    if written.is_err() {
        return Turn::Closed;
    }
    let drained = c.sent == c.out.len() && c.tls.as_ref().is_none_or(|t| !t.wants_write());
    if c.starttls && drained {
        let Some((config, timeout)) = tls else {
            return Turn::Closed;
        };
        match ServerConnection::new(Arc::clone(config)) {
            Ok(conn) => c.tls = Some(Box::new(conn)),
            Err(_) => return Turn::Closed,
        }
        if c.held_pos < c.held.len() {
            // Sent in plaintext after STARTTLS, before the handshake: the
            // session drops it unread (RFC 3207 §5, RFC 2595 §4).
            let rest = &c.held[c.held_pos..];
            if let Some(trace) = c.handler.trace() {
                trace.note(&format!(
                    "{} bytes sent before the TLS handshake, discarded",
                    rest.len()
                ));
            }
            c.handler.session().receive(Instant::now(), rest);
            c.held.clear();
            c.held_pos = 0;
        }
        // A line half typed before the handshake goes with it.
        if c.filter.is_some() {
            c.filter = Some(new_filter());
        }
        c.starttls = false;
        c.handshake_until = Some(Instant::now() + *timeout);
    }
    if drained && c.handler.session().is_closed() {
        return Turn::Closed;
    }
    Turn::Idle
}

/// Writes `out[*sent..]` to the socket until it would block.
fn write_plain(stream: &mut TcpStream, out: &[u8], sent: &mut usize) -> io::Result<()> {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encrypts and writes `out[*sent..]`: plaintext goes to rustls only while
/// its records are all written, so what waits stays in `out`, under the
/// output bound.
fn write_tls(
    conn: &mut ServerConnection,
    stream: &mut TcpStream,
    out: &[u8],
    sent: &mut usize,
) -> io::Result<()> {
    loop {
        if *sent < out.len() && !conn.wants_write() && !conn.is_handshaking() {
            *sent += conn.writer().write(&out[*sent..])?;
        }
        if !conn.wants_write() {
            return Ok(());
        }
        match conn.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads what the client sent, decrypted once TLS is on; `Ok(0)` at its
/// end. Completes the TLS handshake on the way and tells the session.
fn read_input<H: Handler>(c: &mut Conn<H>, buf: &mut [u8]) -> io::Result<usize> {
    let Some(conn) = c.tls.as_mut() else {
        return c.stream.read(buf);
    };
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Closed without close_notify: the end all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if conn.read_tls(&mut c.stream)? == 0 {
            return Ok(0);
        }
        if let Err(e) = conn.process_new_packets() {
            // The alert rustls queued goes out if the socket takes it.
            let _ = conn.write_tls(&mut c.stream);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if c.handshake_until.is_some() && !conn.is_handshaking() {
            c.handshake_until = None;
            // Only a session that asked for TLS gets here: cannot fail.
            let _ = c.handler.session().tls_established();
            if let Some(trace) = c.handler.trace() {
                trace.note("TLS handshake complete");
            }
        }
        // Handshake replies go out now; application data waits its turn.
        write_tls(conn, &mut c.stream, &[], &mut 0)?;
    }
}

/// Whether the connection has a use for room to write: output waiting, an
/// application that wants its turn when the output is out, or TLS (whose
/// own records may wait).
fn wants_room<H: Handler>(c: &Conn<H>) -> bool {
    c.sent < c.out.len() || c.when_drained || c.starttls || c.tls.is_some()
}

/// Whether the session may not take input now.
fn blocked<H: Handler>(c: &Conn<H>) -> bool {
    c.waiting || c.starttls || c.when_drained || c.paused_until.is_some()
}

/// Longest typed line the telnet filter holds for editing (as in
/// [`crate::conn`]): above every session line limit, AUTH's 12 KiB included.
const TYPED_LINE: usize = 16 * 1024;

fn new_filter() -> TelnetFilter {
    TelnetFilter::new(TYPED_LINE)
}

/// Length of the first segment of `input`: up to and including the first
/// LF, or all of it.
fn segment(input: &[u8]) -> usize {
    input
        .iter()
        .position(|&b| b == b'\n')
        .map_or(input.len(), |lf| lf + 1)
}

/// Gives what was read to the session: whole when neither the trace nor the
/// filter would change it (a mail client's reads, nearly always), else held
/// to go a line at a time.
fn take_input<H: Handler>(c: &mut Conn<H>, input: &[u8]) {
    let tracing = c.handler.trace().is_some_and(|t| t.enabled());
    let plain = c.filter.as_ref().is_none_or(|f| f.passes_unchanged(input));
    if !tracing && c.held.is_empty() && plain {
        c.handler.session().receive(Instant::now(), input);
    } else {
        c.held.extend_from_slice(input);
        feed(c);
    }
}

/// Hands the session the next piece of held input: a line (which the
/// filter may edit, and the trace masks when it is a SASL response), or
/// message text, line by line only where a line after its end could be a
/// secret or typed.
fn feed<H: Handler>(c: &mut Conn<H>) {
    let tracing = c.handler.trace().is_some_and(|t| t.enabled());
    let rest = &c.held[c.held_pos..];
    let by_line = tracing || c.filter.as_ref().is_some_and(TelnetFilter::is_telnet);
    let (secret, reads, piece) = match c.handler.reading() {
        Reading::Line { secret } => (secret, Reads::Lines, rest),
        Reading::Text if by_line => (false, Reads::Message, &rest[..segment(rest)]),
        Reading::Text => (false, Reads::Message, rest),
        Reading::Chunk { left } => {
            let n = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
            (false, Reads::Message, &rest[..n])
        }
    };
    let taken = match c.filter.as_mut() {
        Some(f) => {
            c.typed.clear();
            let n = f.push(piece, reads, &mut c.typed);
            // Refusals of telnet options go out with the session's replies,
            // under the same bound.
            f.poll_reply(&mut c.out);
            n
        }
        None => {
            let n = match reads {
                Reads::Lines => segment(piece),
                _ => piece.len(),
            };
            c.typed.clear();
            c.typed.extend_from_slice(&piece[..n]);
            n
        }
    };
    c.held_pos += taken;
    if !c.typed.is_empty() {
        if let Some(trace) = c.handler.trace() {
            trace.client(&c.typed, secret);
        }
        c.handler.session().receive(Instant::now(), &c.typed);
    }
    if c.held_pos == c.held.len() {
        c.held.clear();
        c.held_pos = 0;
    }
}

/// Lets the application see the session's events; work it asks for is
/// kept for the loop, and the session reads nothing until it is done.
fn events<H: Handler>(c: &mut Conn<H>) {
    if c.waiting || c.starttls || c.when_drained || c.paused_until.is_some() {
        return;
    }
    let ask = c.handler.on_events();
    take_ask(c, ask);
}

/// Does what the application asked after its events or its work's result.
fn take_ask<H: Handler>(c: &mut Conn<H>, ask: Option<Ask<H::Done>>) {
    match ask {
        Some(Ask::Work(work)) => {
            c.work = Some(work);
            c.waiting = true;
        }
        Some(Ask::StartTls) => c.starttls = true,
        Some(Ask::WhenDrained) => c.when_drained = true,
        Some(Ask::Pause(pause, done)) => {
            c.paused_until = Some(Instant::now() + pause);
            c.after_pause = Some(done);
        }
        None => {}
    }
}

/// Output, then reads (each followed by the application and output again)
/// until the socket is drained, work is out, or the turn is used up.
fn turn<H: Handler>(
    c: &mut Conn<H>,
    buf: &mut [u8],
    tls: Option<&(Arc<rustls::ServerConfig>, Duration)>,
) -> Turn {
    events(c);
    match turn_output(c, tls) {
        Turn::Idle => {}
        turn => return turn,
    }
    for _ in 0..READS_PER_TURN {
        if blocked(c) {
            return Turn::Idle;
        }
        if c.held_pos < c.held.len() {
            feed(c);
            events(c);
            match turn_output(c, tls) {
                Turn::Idle => {}
                turn => return turn,
            }
            continue;
        }
        if c.eof {
            // The peer is gone and nothing is pending: the session said
            // all it had to say.
            return if c.sent == c.out.len() {
                Turn::Closed
            } else {
                Turn::Idle
            };
        }
        match read_input(c, buf) {
            Ok(0) => {
                c.eof = true;
                let handshaking = c.handshake_until.is_some();
                if let Some(trace) = c.handler.trace() {
                    trace.note(if handshaking {
                        "TLS handshake failed: the client closed the connection"
                    } else {
                        "client closed the connection"
                    });
                }
                c.handler.session().receive_eof(Instant::now());
            }
            Ok(n) => take_input(c, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Idle,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(trace) = c.handler.trace() {
                    if c.handshake_until.is_some() {
                        trace.note(&format!("TLS handshake failed: {e}"));
                    } else {
                        trace.note(&format!("connection failed: {e}"));
                    }
                }
                // What the application holds for a transaction goes.
                c.handler.session().receive_eof(Instant::now());
                events(c);
                return Turn::Closed;
            }
        }
        events(c);
        match turn_output(c, tls) {
            Turn::Idle => {}
            turn => return turn,
        }
    }
    Turn::More
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream as StdStream;

    use postamt_smtp::{Event, Reply, ServerConfig, ServerSession};

    use super::*;

    /// A timer per key, earliest first, replaced and cleared.
    #[test]
    fn timers_keep_one_deadline_per_key_in_order() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timers = Timers::default();
        timers.set(1, Some(at(30)));
        timers.set(2, Some(at(10)));
        timers.set(3, Some(at(20)));
        timers.set(2, Some(at(40))); // replaced: now the latest
        timers.set(3, None); // cleared
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.next(), Some(at(30)));
        assert_eq!(timers.pop_due(at(29)), None);
        assert_eq!(timers.pop_due(at(35)), Some(1));
        assert_eq!(timers.pop_due(at(35)), None);
        assert_eq!(timers.pop_due(at(40)), Some(2));
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.next(), None);
    }

    /// A full queue gives the job back instead of blocking the caller, and
    /// every queued job runs.
    #[test]
    fn pool_gives_a_job_back_when_its_queue_is_full() {
        let pool = Pool::new(1, 1);
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let (ran_tx, ran_rx) = mpsc::channel::<u32>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let ran = ran_tx.clone();
        assert!(
            pool.try_submit(Box::new(move || {
                started_tx.send(()).unwrap();
                hold_rx.recv().unwrap();
                ran.send(1).unwrap();
            }))
            .is_ok()
        );
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let ran = ran_tx.clone();
        assert!(
            pool.try_submit(Box::new(move || ran.send(2).unwrap()))
                .is_ok()
        );
        let ran = ran_tx.clone();
        let back = pool.try_submit(Box::new(move || ran.send(3).unwrap()));
        assert!(
            back.is_err(),
            "a third job fits a queue of one with one worker busy"
        );
        drop(back);
        hold_tx.send(()).unwrap();
        drop(pool);
        drop(ran_tx);
        assert_eq!(ran_rx.iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    /// SMTP that accepts everyone; a message's delivery is store work that
    /// takes `SLOW` when one recipient is `slow@kolleg.de`.
    struct Catcher {
        session: ServerSession,
        slow: bool,
        trace: Option<Trace>,
    }

    /// What the catcher's store work or pause comes back with.
    enum Done {
        /// The message is stored (after this long).
        Stored,
        /// The pause after a login is over: refuse it.
        LoginRefused,
    }

    const SLOW: Duration = Duration::from_secs(1);

    impl Handler for Catcher {
        type Session = ServerSession;
        type Done = Done;

        fn session(&mut self) -> &mut ServerSession {
            &mut self.session
        }

        fn on_events(&mut self) -> Option<Ask<Done>> {
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Mail { .. } => {
                        self.slow = false;
                        self.session.accept().unwrap();
                    }
                    Event::Rcpt { to, .. } => {
                        self.slow |= to.to_string() == "<slow@kolleg.de>";
                        self.session.accept().unwrap();
                    }
                    Event::Auth { .. } => return Some(Ask::Pause(SLOW, Done::LoginRefused)),
                    Event::MessageEnd => {
                        let wait = if self.slow { SLOW } else { Duration::ZERO };
                        return Some(Ask::Work(Box::new(move || {
                            thread::sleep(wait);
                            Done::Stored
                        })));
                    }
                    Event::StartTls => return Some(Ask::StartTls),
                    _ => {}
                }
            }
            None
        }

        fn finish(&mut self, done: Done) -> Option<Ask<Done>> {
            match done {
                Done::Stored => self.session.accept().unwrap(),
                Done::LoginRefused => self.session.reject(Reply::auth_failed()).unwrap(),
            }
            None
        }

        fn reading(&mut self) -> Reading {
            match self.session.input_mode() {
                postamt_smtp::InputMode::SaslResponse => Reading::Line { secret: true },
                postamt_smtp::InputMode::Data => Reading::Text,
                postamt_smtp::InputMode::Chunk { remaining } => Reading::Chunk { left: remaining },
                _ => Reading::Line { secret: false },
            }
        }

        fn trace(&mut self) -> Option<&mut Trace> {
            self.trace.as_mut()
        }
    }

    fn catcher(threads: usize) -> Loops {
        catcher_with(threads, ServerConfig::new("mail.kolleg.de"))
    }

    fn catcher_with(threads: usize, config: ServerConfig) -> Loops {
        start(threads, config, None, Duration::from_secs(10))
    }

    fn start(
        threads: usize,
        config: ServerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        tls_handshake_timeout: Duration,
    ) -> Loops {
        start_traced(threads, config, tls, tls_handshake_timeout, None)
    }

    fn start_traced(
        threads: usize,
        mut config: ServerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        tls_handshake_timeout: Duration,
        trace: Option<crate::trace::Sink>,
    ) -> Loops {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.extensions.starttls = tls.is_some();
        let config = Arc::new(config);
        let admit: Admitter<Catcher> = Arc::new(move |_| {
            Admit::Serve(Catcher {
                session: ServerSession::new(Arc::clone(&config), Instant::now()),
                slow: false,
                trace: trace
                    .clone()
                    .map(|sink| Trace::new(1, crate::trace::Protocol::Smtp, Some(sink))),
            })
        });
        let config = LoopConfig {
            threads,
            stop_grace: Duration::from_secs(1),
            tls,
            tls_handshake_timeout,
            strict_input: false,
            proxy_from: Vec::new(),
        };
        Loops::start(listener, &config, Arc::new(Pool::new(2, 16)), admit).unwrap()
    }

    struct Client {
        reader: BufReader<StdStream>,
        writer: StdStream,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Self {
            let s = StdStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Self {
                writer: s.try_clone().unwrap(),
                reader: BufReader::new(s),
            }
        }

        /// One reply, all its lines.
        fn reply(&mut self) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).unwrap();
                assert!(line.ends_with("\r\n"), "cut reply {all}{line:?}");
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        }

        fn send(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).unwrap();
        }

        fn say(&mut self, text: &str) -> String {
            self.send(text);
            self.reply()
        }

        /// A whole transaction to `to`, up to the message's end.
        fn message(&mut self, to: &str) {
            assert_eq!(
                self.say("MAIL FROM:<anna@kolleg.de>\r\n"),
                "250 2.1.0 Sender OK\r\n"
            );
            assert_eq!(
                self.say(&format!("RCPT TO:<{to}>\r\n")),
                "250 2.1.5 Recipient OK\r\n"
            );
            assert!(self.say("DATA\r\n").starts_with("354 "));
            self.send("Subject: hi\r\n\r\nhello\r\n.\r\n");
        }
    }

    /// One delivery waits a second for its store while another session on
    /// the same loop thread runs a whole transaction; the waiting session
    /// reads nothing meanwhile (its pipelined NOOP is answered after the
    /// 250, in order).
    #[test]
    fn a_slow_store_holds_only_its_own_session() {
        let loops = catcher(1);
        let mut slow = Client::connect(loops.addr());
        assert!(slow.reply().starts_with("220 mail.kolleg.de "));
        assert!(
            slow.say("EHLO a.example\r\n")
                .starts_with("250-mail.kolleg.de")
        );
        slow.message("slow@kolleg.de");
        slow.send("NOOP\r\n");
        let asked = Instant::now();

        let mut quick = Client::connect(loops.addr());
        assert!(quick.reply().starts_with("220 mail.kolleg.de "));
        assert!(
            quick
                .say("EHLO b.example\r\n")
                .starts_with("250-mail.kolleg.de")
        );
        quick.message("quick@kolleg.de");
        assert_eq!(quick.reply(), "250 2.0.0 Message accepted for delivery\r\n");
        assert_eq!(
            quick.say("QUIT\r\n"),
            "221 2.0.0 mail.kolleg.de See you later\r\n"
        );
        let quick_done = asked.elapsed();
        assert!(quick_done < SLOW, "the other session took {quick_done:?}");

        assert_eq!(slow.reply(), "250 2.0.0 Message accepted for delivery\r\n");
        assert!(asked.elapsed() >= SLOW, "the slow store was not waited for");
        assert_eq!(slow.reply(), "250 2.0.0 OK\r\n"); // the NOOP
        assert_eq!(
            slow.say("QUIT\r\n"),
            "221 2.0.0 mail.kolleg.de See you later\r\n"
        );
        loops.stop();
    }

    /// 2,000 connections held open; a new client is still greeted and
    /// served.
    #[test]
    fn many_held_connections_and_a_new_client_is_served() {
        let loops = catcher(2);
        let mut held = Vec::new();
        for _ in 0..2000 {
            let s = StdStream::connect(loops.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            held.push(s);
        }
        for s in &mut held {
            let mut greeting = [0u8; 4];
            s.read_exact(&mut greeting).unwrap();
            assert_eq!(&greeting, b"220 ");
        }
        let mut new = Client::connect(loops.addr());
        assert!(new.reply().starts_with("220 mail.kolleg.de "));
        assert!(
            new.say("EHLO c.example\r\n")
                .starts_with("250-mail.kolleg.de")
        );
        new.message("bob@kolleg.de");
        assert_eq!(new.reply(), "250 2.0.0 Message accepted for delivery\r\n");
        assert_eq!(
            new.say("QUIT\r\n"),
            "221 2.0.0 mail.kolleg.de See you later\r\n"
        );
        drop(held);
        loops.stop();
    }

    /// A client that pipelines commands and never reads the replies is cut
    /// off once OUTPUT_LIMIT octets of them wait, not buffered without end.
    #[test]
    fn a_client_that_does_not_read_is_cut_off() {
        let loops = catcher(1);
        let s = StdStream::connect(loops.addr()).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = &s;
        let batch = "NOOP\r\n".repeat(10_000);
        let mut written = 0usize;
        let cut = loop {
            match w.write_all(batch.as_bytes()) {
                Ok(()) => written += batch.len(),
                Err(e) => break e,
            }
            // Kernel buffers on both sides take a few MiB; far beyond that
            // the server holds the replies itself.
            assert!(
                written < 256 << 20,
                "still not cut off after {written} octets"
            );
        };
        assert!(
            matches!(
                cut.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{cut}"
        );
        // The loop still serves others.
        let mut other = Client::connect(loops.addr());
        assert!(other.reply().starts_with("220 mail.kolleg.de "));
        assert_eq!(
            other.say("QUIT\r\n"),
            "221 mail.kolleg.de See you later\r\n"
        );
        loops.stop();
    }

    /// Each session's own deadline from the one timer structure: two idle
    /// clients, connected at different times, are each told 421 and closed
    /// at their own deadline, while a client that keeps talking stays.
    #[test]
    fn idle_sessions_time_out_each_at_its_own_deadline() {
        let mut config = ServerConfig::new("mail.kolleg.de");
        config.timeouts.command = Duration::from_millis(400);
        let loops = catcher_with(1, config);
        let start = Instant::now();
        let mut first = Client::connect(loops.addr());
        assert!(first.reply().starts_with("220 mail.kolleg.de "));
        thread::sleep(Duration::from_millis(200));
        let mut second = Client::connect(loops.addr());
        assert!(second.reply().starts_with("220 mail.kolleg.de "));
        let mut busy = Client::connect(loops.addr());
        assert!(busy.reply().starts_with("220 mail.kolleg.de "));
        for _ in 0..6 {
            thread::sleep(Duration::from_millis(150));
            assert_eq!(busy.say("NOOP\r\n"), "250 OK\r\n");
        }
        let timed_out = |c: &mut Client| {
            let reply = c.reply();
            let mut rest = String::new();
            assert_eq!(
                c.reader.read_line(&mut rest).unwrap(),
                0,
                "not closed: {rest:?}"
            );
            reply
        };
        let reply = timed_out(&mut first);
        assert_eq!(reply, "421 mail.kolleg.de Timeout, closing connection\r\n");
        let reply = timed_out(&mut second);
        assert_eq!(reply, "421 mail.kolleg.de Timeout, closing connection\r\n");
        assert!(start.elapsed() >= Duration::from_millis(600));
        assert_eq!(busy.say("NOOP\r\n"), "250 OK\r\n");
        loops.stop();
    }

    /// stop() accepts no more connections and closes those left after the
    /// grace.
    #[test]
    fn stop_closes_what_is_left_after_the_grace() {
        let loops = catcher(2);
        let addr = loops.addr();
        let mut open = Client::connect(addr);
        assert!(open.reply().starts_with("220 mail.kolleg.de "));
        let started = Instant::now();
        loops.stop();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "stopped after {took:?}, before the grace"
        );
        assert!(took < Duration::from_secs(3), "stopped after {took:?}");
        let mut rest = String::new();
        assert_eq!(open.reader.read_line(&mut rest).unwrap(), 0, "{rest:?}");
        assert!(
            StdStream::connect(addr).is_err(),
            "still accepting after stop"
        );
    }

    /// A connection the admitter turns away hears its refusal and is closed.
    #[test]
    fn a_refused_connection_hears_why_and_is_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admit: Admitter<Catcher> = Arc::new(|_| {
            Admit::Refuse(b"421 mail.kolleg.de Too many connections, try again later\r\n".to_vec())
        });
        let config = LoopConfig {
            threads: 1,
            stop_grace: Duration::from_secs(1),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(1),
            strict_input: false,
            proxy_from: Vec::new(),
        };
        let loops = Loops::start(listener, &config, Arc::new(Pool::new(1, 1)), admit).unwrap();
        let mut c = Client::connect(loops.addr());
        assert_eq!(
            c.reply(),
            "421 mail.kolleg.de Too many connections, try again later\r\n"
        );
        let mut rest = String::new();
        assert_eq!(c.reader.read_line(&mut rest).unwrap(), 0, "{rest:?}");
        loops.stop();
    }

    /// STARTTLS on the loop: the handshake, then a whole transaction over
    /// TLS, and QUIT ends it with close_notify.
    #[test]
    fn starttls_runs_on_the_loop() {
        let tls = crate::tls::self_signed("mail.kolleg.de").unwrap();
        let loops = start(
            1,
            ServerConfig::new("mail.kolleg.de"),
            Some(tls),
            Duration::from_secs(10),
        );
        let mut c = Client::connect(loops.addr());
        assert!(c.reply().starts_with("220 mail.kolleg.de "));
        let ehlo = c.say("EHLO a.example\r\n");
        assert!(ehlo.contains("250 STARTTLS\r\n"), "{ehlo}");
        assert_eq!(c.say("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
        let name = rustls::pki_types::ServerName::try_from("mail.kolleg.de").unwrap();
        let client =
            rustls::ClientConnection::new(crate::tls::client_insecure().unwrap(), name).unwrap();
        let tcp = c.writer.try_clone().unwrap();
        let mut tls = BufReader::new(rustls::StreamOwned::new(client, tcp));
        let mut say = |text: &str| {
            tls.get_mut().write_all(text.as_bytes()).unwrap();
            let mut all = String::new();
            loop {
                let mut line = String::new();
                tls.read_line(&mut line).unwrap();
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        };
        let ehlo = say("EHLO a.example\r\n");
        assert!(ehlo.starts_with("250-mail.kolleg.de"), "{ehlo}");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        assert_eq!(
            say("MAIL FROM:<anna@kolleg.de>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            say("RCPT TO:<bob@kolleg.de>\r\n"),
            "250 2.1.5 Recipient OK\r\n"
        );
        assert!(say("DATA\r\n").starts_with("354 "));
        assert_eq!(
            say("Subject: hi\r\n\r\nhello\r\n.\r\n"),
            "250 2.0.0 Message accepted for delivery\r\n"
        );
        assert_eq!(
            say("QUIT\r\n"),
            "221 2.0.0 mail.kolleg.de See you later\r\n"
        );
        let mut rest = String::new();
        assert_eq!(tls.read_line(&mut rest).unwrap(), 0, "{rest:?}");
        loops.stop();
    }

    /// A client that answers STARTTLS's 220 with nothing is closed at the
    /// handshake deadline, though the session's own timeout is far off.
    #[test]
    fn a_stalled_tls_handshake_is_cut_off_at_its_deadline() {
        let tls = crate::tls::self_signed("mail.kolleg.de").unwrap();
        let loops = start(
            1,
            ServerConfig::new("mail.kolleg.de"),
            Some(tls),
            Duration::from_millis(300),
        );
        let mut c = Client::connect(loops.addr());
        assert!(c.reply().starts_with("220 mail.kolleg.de "));
        assert!(c.say("EHLO a.example\r\n").starts_with("250-"));
        assert_eq!(c.say("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
        let asked = Instant::now();
        let mut rest = String::new();
        assert_eq!(c.reader.read_line(&mut rest).unwrap(), 0, "{rest:?}");
        let took = asked.elapsed();
        assert!(took >= Duration::from_millis(300), "closed after {took:?}");
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
        loops.stop();
    }

    /// POP3 that lists one big message and sends it in pieces, each when
    /// the client has taken the last.
    struct Streamer {
        session: postamt_pop3::ServerSession,
        left: usize,
    }

    const LINE: &[u8] = b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
    /// Sixteen times the output bound: sent whole, it would be cut off.
    const BIG: usize = 16 * OUTPUT_LIMIT;

    impl Handler for Streamer {
        type Session = postamt_pop3::ServerSession;
        type Done = ();

        fn session(&mut self) -> &mut postamt_pop3::ServerSession {
            &mut self.session
        }

        fn on_events(&mut self) -> Option<Ask<()>> {
            if self.left > 0 {
                let piece = LINE.repeat(256);
                let n = piece.len().min(self.left);
                let flow = self.session.message_chunk(&piece[..n]).unwrap();
                assert_eq!(flow, postamt_pop3::MessageFlow::Continue);
                self.left -= n;
                if self.left > 0 {
                    return Some(Ask::WhenDrained);
                }
                self.session.message_end().unwrap();
            }
            while let Some(event) = self.session.poll_event() {
                match event {
                    postamt_pop3::Event::Login { .. } => {
                        let mut drop = postamt_pop3::Maildrop::new();
                        let uid = postamt_pop3::UniqueId::new("big").unwrap();
                        drop.push(BIG as u64, uid).unwrap();
                        self.session.accept_login(drop).unwrap();
                    }
                    postamt_pop3::Event::Retrieve { .. } => {
                        self.left = BIG;
                        return Some(Ask::WhenDrained);
                    }
                    postamt_pop3::Event::Commit { .. } => self.session.commit_done().unwrap(),
                    _ => {}
                }
            }
            None
        }

        fn finish(&mut self, (): ()) -> Option<Ask<()>> {
            None
        }
    }

    /// A message sixteen times the output bound goes to a client that
    /// takes its time: whole and exact, never more than a piece waiting.
    #[test]
    fn a_big_message_is_streamed_as_the_client_reads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pop3 = postamt_pop3::ServerConfig::default();
        pop3.login_without_tls = true;
        let pop3 = Arc::new(pop3);
        let admit: Admitter<Streamer> = Arc::new(move |_| {
            Admit::Serve(Streamer {
                session: postamt_pop3::ServerSession::new(Arc::clone(&pop3), Instant::now()),
                left: 0,
            })
        });
        let config = LoopConfig {
            threads: 1,
            stop_grace: Duration::from_secs(1),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(1),
            strict_input: false,
            proxy_from: Vec::new(),
        };
        let loops = Loops::start(listener, &config, Arc::new(Pool::new(1, 1)), admit).unwrap();
        let mut c = Client::connect(loops.addr());
        let line = |c: &mut Client| {
            let mut l = String::new();
            c.reader.read_line(&mut l).unwrap();
            l
        };
        assert!(line(&mut c).starts_with("+OK"));
        c.send("USER bob\r\nPASS secret\r\n");
        assert!(line(&mut c).starts_with("+OK"));
        assert!(line(&mut c).starts_with("+OK"));
        c.send("RETR 1\r\nQUIT\r\n");
        // The client is slow: everything the server has not sent by now
        // waits with the server.
        thread::sleep(Duration::from_millis(500));
        assert!(line(&mut c).starts_with("+OK"));
        let mut lines = 0;
        loop {
            let l = line(&mut c);
            if l == ".\r\n" {
                break;
            }
            assert_eq!(l.as_bytes(), LINE, "line {lines}");
            lines += 1;
        }
        assert_eq!(lines * LINE.len(), BIG);
        assert!(line(&mut c).starts_with("+OK"));
        assert_eq!(line(&mut c), "");
        loops.stop();
    }

    /// The pause after a failed login is a timer: the failing session hears
    /// 535 after it, pipelined input after that, while another session on
    /// the same loop thread is served meanwhile.
    #[test]
    fn a_failed_login_pauses_only_its_own_session() {
        let mut config = ServerConfig::new("mail.kolleg.de");
        config.login_without_tls = true;
        let loops = catcher_with(1, config);
        let mut guesser = Client::connect(loops.addr());
        assert!(guesser.reply().starts_with("220 mail.kolleg.de "));
        let ehlo = guesser.say("EHLO a.example\r\n");
        assert!(ehlo.contains("AUTH PLAIN"), "{ehlo}");
        // PLAIN: "", "bob", "guess".
        guesser.send("AUTH PLAIN AGJvYgBndWVzcw==\r\nNOOP\r\n");
        let asked = Instant::now();

        let mut other = Client::connect(loops.addr());
        assert!(other.reply().starts_with("220 mail.kolleg.de "));
        assert!(
            other
                .say("EHLO b.example\r\n")
                .starts_with("250-mail.kolleg.de")
        );
        other.message("bob@kolleg.de");
        assert_eq!(other.reply(), "250 2.0.0 Message accepted for delivery\r\n");
        let other_done = asked.elapsed();
        assert!(other_done < SLOW, "the other session took {other_done:?}");

        assert_eq!(
            guesser.reply(),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert!(
            asked.elapsed() >= SLOW,
            "answered after {:?}",
            asked.elapsed()
        );
        assert_eq!(guesser.reply(), "250 2.0.0 OK\r\n");
        loops.stop();
    }

    /// A telnet client on the loop: its option offers are refused, its
    /// Backspace edits the line the session reads, and the dialogue holds
    /// however its bytes are split (every split of the typed bytes in two).
    #[test]
    fn a_telnet_client_is_filtered_on_the_loop() {
        let loops = catcher(1);
        // IAC WILL NAWS, then "EHLX", Backspace, "O a.example".
        let typed: &[u8] = b"\xff\xfb\x1fEHLX\x08O a.example\r\n";
        for split in 1..typed.len() {
            let mut c = Client::connect(loops.addr());
            assert!(c.reply().starts_with("220 mail.kolleg.de "));
            c.writer.write_all(&typed[..split]).unwrap();
            thread::sleep(Duration::from_millis(2));
            c.writer.write_all(&typed[split..]).unwrap();
            // IAC DONT NAWS comes first, then the reply to the edited line.
            let mut refusal = [0u8; 3];
            c.reader.read_exact(&mut refusal).unwrap();
            assert_eq!(refusal, [0xff, 0xfe, 0x1f], "split at {split}");
            let ehlo = c.reply();
            assert!(
                ehlo.starts_with("250-mail.kolleg.de Hello a.example\r\n"),
                "split at {split}: {ehlo}"
            );
            assert_eq!(
                c.say("QUIT\r\n"),
                "221 2.0.0 mail.kolleg.de See you later\r\n"
            );
        }
        loops.stop();
    }

    /// What the trace's terminal writer wrote.
    #[derive(Clone, Default)]
    struct Shown(Arc<Mutex<Vec<u8>>>);

    impl Write for Shown {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// With the trace on, input goes a line at a time: a SASL response
    /// pipelined with the next command is masked, the command is not, and
    /// the server's lines are shown.
    #[test]
    fn the_trace_masks_a_pipelined_sasl_response_on_the_loop() {
        let shown = Shown::default();
        let sink = crate::trace::Sink::start(Some(Box::new(shown.clone())), None);
        let mut config = ServerConfig::new("mail.kolleg.de");
        config.login_without_tls = true;
        let loops = start_traced(1, config, None, Duration::from_secs(10), Some(sink));
        let mut c = Client::connect(loops.addr());
        assert!(c.reply().starts_with("220 mail.kolleg.de "));
        assert!(
            c.say("EHLO a.example\r\n")
                .starts_with("250-mail.kolleg.de")
        );
        assert_eq!(c.say("AUTH PLAIN\r\n"), "334 \r\n");
        c.send("AGJvYgBndWVzcw==\r\nQUIT\r\n");
        assert_eq!(
            c.reply(),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert_eq!(c.reply(), "221 2.0.0 mail.kolleg.de See you later\r\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = String::from_utf8_lossy(&shown.0.lock().unwrap()).into_owned();
            if text.contains("See you later") || Instant::now() > deadline {
                break text;
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert!(text.contains("EHLO a.example"), "{text}");
        assert!(
            text.contains("250-mail.kolleg.de Hello a.example"),
            "{text}"
        );
        assert!(text.contains("****"), "{text}");
        assert!(!text.contains("AGJvYgBndWVzcw=="), "{text}");
        assert!(text.contains("QUIT"), "{text}");
        assert!(
            text.contains("221 2.0.0 mail.kolleg.de See you later"),
            "{text}"
        );
        loops.stop();
    }
}
