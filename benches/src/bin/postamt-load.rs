//! `postamt-load`: drives an SMTP and/or POP3 server over loopback with N
//! concurrent clients, each a postamt client session on a blocking socket,
//! for a bounded count and time, and reports throughput, latency
//! percentiles and errors.
//!
//! ```text
//! cargo run --release -p postamt-benches --bin postamt-load -- \
//!     --smtp 127.0.0.1:2525 --pop3 127.0.0.1:1100 --concurrency 8 --count 2000
//! ```
//!
//! SMTP: each client keeps one connection and runs transactions (MAIL, RCPT,
//! DATA with a `--message-size` message) back to back; the latency is one
//! transaction, from MAIL to the reply after the final dot. POP3: each
//! session is connect, login, STAT, RETR 1, QUIT, and that whole session is
//! the latency. With both, the SMTP run comes first and fills the maildrops
//! the POP3 run reads. A POP3 maildrop is locked to one session at a time,
//! so give one `--login` per client (a users file for the server) or count
//! `[IN-USE]` refusals among the errors.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::Parser;
use postamt_pop3::MessageNumber;
use postamt_smtp::{Envelope, ForwardPath, Mailbox, ReversePath};
use postamt_wire::Session;

/// Load-test a mail server on this machine: SMTP transactions and POP3
/// sessions from concurrent clients, with messages/s, p50/p99 latency and
/// errors.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// SMTP server, HOST:PORT (loopback only).
    #[arg(long)]
    smtp: Option<String>,
    /// POP3 server, HOST:PORT (loopback only).
    #[arg(long)]
    pop3: Option<String>,
    /// Sender address for SMTP.
    #[arg(long, default_value = "anna@kolleg.de")]
    from: String,
    /// Recipient for SMTP; repeat it to spread clients over mailboxes
    /// (client i sends to the i-th, round robin).
    #[arg(long = "to", default_values_t = ["bob@kolleg.de".to_string()])]
    to: Vec<String>,
    /// POP3 login as USER:PASSWORD; repeat it, client i uses the i-th.
    #[arg(long = "login", default_values_t = ["bob:topSecret".to_string()])]
    logins: Vec<String>,
    /// Concurrent clients per protocol.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// Transactions (SMTP) and sessions (POP3) per protocol, at most.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Seconds per protocol, at most.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Size in octets of each message sent over SMTP.
    #[arg(long, default_value_t = 10 * 1024)]
    message_size: usize,
    /// Seconds to wait for any one reply before counting an error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Give each SMTP message its own first header `X-Postamt-Load:
    /// CLIENT.N` and write `CLIENT.N UNIX-SECONDS` (when its 250 came) to
    /// FILE for each accepted one: to measure how long a relay takes to
    /// pass a message on (benches/e2e.sh forward).
    #[arg(long, value_name = "FILE")]
    stamps: Option<std::path::PathBuf>,
}

/// What one protocol's run measured.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    bytes: u64,
    errors: u64,
    first_errors: Vec<String>,
    /// With `--stamps`: each accepted message's id and when its 250 came.
    stamps: Vec<(String, SystemTime)>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < 3 {
            self.first_errors.push(what);
        }
    }

    fn merge(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.stamps.extend(other.stamps);
        for e in other.first_errors {
            if self.first_errors.len() < 3 {
                self.first_errors.push(e);
            }
        }
    }

    fn report(mut self, name: &str, unit: &str, clients: u64, elapsed: Duration) {
        self.latencies.sort_unstable();
        let done = self.latencies.len();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let pct = |p: f64| -> f64 {
            if done == 0 {
                return 0.0;
            }
            let i = ((done as f64 * p).ceil() as usize).clamp(1, done) - 1;
            self.latencies[i].as_secs_f64() * 1e3
        };
        println!(
            "{name}: {done} {unit} in {secs:.2} s by {clients} clients: {:.1} messages/s, {:.1} MB/s; \
             latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; errors {}",
            done as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            pct(0.50),
            pct(0.99),
            pct(1.0),
            self.errors,
        );
        for e in &self.first_errors {
            println!("  {name} error: {e}");
        }
    }
}

/// Hands out the next unit of work until the count or the time is used up.
struct Budget {
    next: AtomicU64,
    count: u64,
    until: Instant,
}

impl Budget {
    fn take(&self) -> bool {
        Instant::now() < self.until && self.next.fetch_add(1, Ordering::Relaxed) < self.count
    }
}

/// A loopback address, or why not.
fn loopback(target: &str) -> Result<SocketAddr, String> {
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{target}: postamt-load only drives servers on this machine (loopback)"
        ));
    }
    Ok(addr)
}

/// A blocking socket with the buffers a session driver needs.
struct Wire {
    tcp: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Wire {
    fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(timeout))?;
        Ok(Self {
            tcp,
            out: Vec::with_capacity(64 * 1024),
            buf: vec![0; 64 * 1024],
            timeout,
        })
    }

    /// Reads what arrives before `deadline` (or the wire's own timeout):
    /// `Ok(None)` when it passed, `Ok(Some(0))` at end of stream.
    fn read(&mut self, deadline: Option<Instant>) -> io::Result<Option<usize>> {
        let now = Instant::now();
        let wait = deadline
            .map_or(self.timeout, |d| d.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), self.timeout);
        self.tcp.set_read_timeout(Some(wait))?;
        match self.tcp.read(&mut self.buf) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// SMTP

struct Smtp {
    wire: Wire,
    session: postamt_smtp::ClientSession,
}

impl Smtp {
    fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let wire = Wire::connect(addr, timeout).map_err(|e| format!("connect: {e}"))?;
        let session = postamt_smtp::ClientSession::new(
            postamt_smtp::ClientConfig::new("postamt-load"),
            Instant::now(),
        );
        let mut c = Self { wire, session };
        match c.next_event()? {
            postamt_smtp::ClientEvent::Ready(_) => Ok(c),
            other => Err(format!("greeting: {other:?}")),
        }
    }

    /// Moves bytes until the session has an event.
    fn next_event(&mut self) -> Result<postamt_smtp::ClientEvent, String> {
        loop {
            if let Some(event) = self.session.poll_event() {
                return Ok(event);
            }
            self.wire.out.clear();
            self.session.poll_transmit(&mut self.wire.out);
            self.wire
                .tcp
                .write_all(&self.wire.out)
                .map_err(|e| format!("write: {e}"))?;
            match self.wire.read(self.session.poll_timeout()) {
                Ok(None) => self.session.handle_timeout(Instant::now()),
                Ok(Some(0)) => self.session.receive_eof(Instant::now()),
                Ok(Some(n)) => self.session.receive(Instant::now(), &self.wire.buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// One transaction; the octets sent when the server took it.
    fn transaction(&mut self, envelope: Envelope, message: &Bytes) -> Result<u64, String> {
        self.session
            .send_message(envelope, message.clone())
            .map_err(|e| e.to_string())?;
        loop {
            match self.next_event()? {
                postamt_smtp::ClientEvent::Done(report) => {
                    return match (&report.outcome, report.refused.first()) {
                        (Ok(_), None) => Ok(message.len() as u64),
                        (Ok(_), Some((to, reply))) => Err(format!("{to} refused: {reply}")),
                        (Err(failure), _) => Err(format!("{failure:?}")),
                    };
                }
                postamt_smtp::ClientEvent::Closed(why) => {
                    return Err(format!("connection closed: {why:?}"));
                }
                _ => {}
            }
        }
    }

    fn quit(mut self) {
        if self.session.quit().is_ok() {
            while let Ok(event) = self.next_event() {
                if matches!(event, postamt_smtp::ClientEvent::Closed(_)) {
                    break;
                }
            }
        }
    }
}

fn smtp_client(
    addr: SocketAddr,
    envelope: &Envelope,
    message: &Bytes,
    budget: &Budget,
    timeout: Duration,
    stamp: Option<u64>,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Smtp> = None;
    let mut sent = 0u64;
    while budget.take() {
        // With stamps, a header names this message (a copy per message).
        let (id, stamped);
        let message = match stamp {
            Some(client) => {
                sent += 1;
                id = format!("{client}.{sent}");
                let mut m = format!("X-Postamt-Load: {id}\r\n").into_bytes();
                m.extend_from_slice(message);
                stamped = Bytes::from(m);
                &stamped
            }
            None => {
                id = String::new();
                message
            }
        };
        let started = Instant::now();
        let c = match conn.take() {
            Some(c) => c,
            None => match Smtp::connect(addr, timeout) {
                Ok(c) => c,
                Err(e) => {
                    tally.error(e);
                    continue;
                }
            },
        };
        let mut c = c;
        match c.transaction(envelope.clone(), message) {
            Ok(octets) => {
                tally.latencies.push(started.elapsed());
                tally.bytes += octets;
                if stamp.is_some() {
                    tally.stamps.push((id, SystemTime::now()));
                }
                conn = Some(c);
            }
            Err(e) => {
                // The session may be unusable: start afresh.
                tally.error(e);
            }
        }
    }
    if let Some(c) = conn {
        c.quit();
    }
    tally
}

/// A message of `size` octets: a few headers and numbered 72-octet lines.
fn make_message(from: &str, size: usize) -> Bytes {
    let mut m =
        format!("From: <{from}>\r\nSubject: postamt-load\r\nMessage-Id: <load@postamt>\r\n\r\n")
            .into_bytes();
    let mut n = 0u64;
    while m.len() < size {
        let line = format!("{n:08} {}\r\n", "x".repeat(62));
        let room = size - m.len();
        if room < line.len() {
            // The last line, shortened to fit (a lone octet becomes a line end).
            m.extend(std::iter::repeat_n(b'x', room.saturating_sub(2)));
            m.extend_from_slice(b"\r\n");
            break;
        }
        m.extend_from_slice(line.as_bytes());
        n += 1;
    }
    Bytes::from(m)
}

fn run_smtp(addr: SocketAddr, args: &Args) -> Result<(), String> {
    let from: Mailbox<'static> = args
        .from
        .parse()
        .map_err(|_| format!("--from: not an address: {}", args.from))?;
    let mut envelopes = Vec::new();
    for to in &args.to {
        let to: Mailbox<'static> = to
            .parse()
            .map_err(|_| format!("--to: not an address: {to}"))?;
        envelopes
            .push(Envelope::new(ReversePath::Mailbox(from.clone())).to(ForwardPath::Mailbox(to)));
    }
    let message = make_message(&args.from, args.message_size);
    let timeout = Duration::from_secs_f64(args.timeout);
    let budget = Arc::new(Budget {
        next: AtomicU64::new(0),
        count: args.count,
        until: Instant::now() + Duration::from_secs_f64(args.duration),
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let envelope = envelopes[i as usize % envelopes.len()].clone();
            let (message, budget) = (message.clone(), Arc::clone(&budget));
            let stamp = args.stamps.is_some().then_some(i);
            thread::spawn(move || smtp_client(addr, &envelope, &message, &budget, timeout, stamp))
        })
        .collect();
    let mut total = Tally::default();
    for c in clients {
        total.merge(c.join().map_err(|_| "an SMTP client panicked")?);
    }
    if let Some(path) = &args.stamps {
        let mut out = String::new();
        for (id, at) in &total.stamps {
            let at = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            out.push_str(&format!("{id} {}.{:09}\n", at.as_secs(), at.subsec_nanos()));
        }
        std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    total.report("smtp", "transactions", args.concurrency, started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// POP3

/// One POP3 session: connect, login, STAT, RETR 1, QUIT. The octets of the
/// message retrieved.
fn pop3_session(
    addr: SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<u64, String> {
    use postamt_pop3::ClientEvent as E;
    let mut wire = Wire::connect(addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let mut session =
        postamt_pop3::ClientSession::new(postamt_pop3::ClientConfig::default(), Instant::now());
    let mut octets = 0u64;
    let mut ended = false;
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                E::Ready(_) => session
                    .login_user(user, password)
                    .map_err(|e| format!("login: {e}"))?,
                E::LoggedIn => {
                    // Pipelined: the session sends them as the server allows.
                    let first = MessageNumber::new(1).ok_or("message number 1")?;
                    session.stat().map_err(|e| e.to_string())?;
                    session.retr(first).map_err(|e| e.to_string())?;
                    session.quit().map_err(|e| e.to_string())?;
                }
                E::Stat { count: 0, .. } => return Err("the maildrop is empty".to_string()),
                E::MessageData(bytes) => octets += bytes.len() as u64,
                E::MessageEnd => ended = true,
                E::Error { command, response } => return Err(format!("{command}: {response}")),
                E::Closed(None) if ended => return Ok(octets),
                E::Closed(None) => return Err("closed before the message ended".to_string()),
                E::Closed(Some(e)) => return Err(format!("{e}")),
                _ => {}
            }
        }
        wire.out.clear();
        session.poll_transmit(&mut wire.out);
        wire.tcp
            .write_all(&wire.out)
            .map_err(|e| format!("write: {e}"))?;
        match wire.read(session.poll_timeout()) {
            Ok(None) => session.handle_timeout(Instant::now()),
            Ok(Some(0)) => session.receive_eof(Instant::now()),
            Ok(Some(n)) => session.receive(Instant::now(), &wire.buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn run_pop3(addr: SocketAddr, args: &Args) -> Result<(), String> {
    let mut logins = Vec::new();
    for l in &args.logins {
        let (user, password) = l
            .split_once(':')
            .ok_or_else(|| format!("--login wants USER:PASSWORD, not {l}"))?;
        logins.push((user.to_string(), password.to_string()));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let budget = Arc::new(Budget {
        next: AtomicU64::new(0),
        count: args.count,
        until: Instant::now() + Duration::from_secs_f64(args.duration),
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let (user, password) = logins[i as usize % logins.len()].clone();
            let budget = Arc::clone(&budget);
            thread::spawn(move || {
                let mut tally = Tally::default();
                while budget.take() {
                    let t0 = Instant::now();
                    match pop3_session(addr, &user, &password, timeout) {
                        Ok(octets) => {
                            tally.latencies.push(t0.elapsed());
                            tally.bytes += octets;
                        }
                        Err(e) => tally.error(e),
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for c in clients {
        total.merge(c.join().map_err(|_| "a POP3 client panicked")?);
    }
    total.report("pop3", "sessions", args.concurrency, started.elapsed());
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    if args.smtp.is_none() && args.pop3.is_none() {
        return Err("nothing to do: give --smtp HOST:PORT and/or --pop3 HOST:PORT".to_string());
    }
    if !(args.duration > 0.0 && args.timeout > 0.0) {
        return Err("--duration and --timeout must be positive".to_string());
    }
    let smtp = args.smtp.as_deref().map(loopback).transpose()?;
    let pop3 = args.pop3.as_deref().map(loopback).transpose()?;
    if let Some(addr) = smtp {
        run_smtp(addr, args)?;
    }
    if let Some(addr) = pop3 {
        run_pop3(addr, args)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postamt-load: {e}");
            ExitCode::from(2)
        }
    }
}
