//! One connection: a socket (plain or TLS), a sans-IO session, and the loop
//! that moves bytes between them with deadlines taken from the session.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

use postamt_wire::{Reads, Session, TelnetFilter};

use crate::server::Shared;
use crate::trace::Trace;

/// Longest wait in one read, so a connection notices a server shutdown.
const POLL: Duration = Duration::from_millis(250);
/// How long a client may take to accept our output before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from the socket at a time; the session bounds what it keeps.
const READ_SIZE: usize = 16 * 1024;
/// How long a connection may run on after the server was asked to stop.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);

/// The socket, before or after STARTTLS/STLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }

    /// Runs the TLS handshake on the plain socket, for `timeout` at most in
    /// all: per-read timeouts alone let a client that sends one byte now and
    /// then hold the connection for days. `None` when the server was stopped
    /// and its grace ran out first.
    fn start_tls(
        self,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
        stopping: &mut Stopping<'_>,
    ) -> io::Result<Option<Self>> {
        let deadline = Instant::now() + timeout;
        let Self::Plain(tcp) = self else {
            return Err(io::Error::other("TLS is already active"));
        };
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not finished within {timeout:?}"),
                ));
            }
            if stopping.expired(now) {
                return Ok(None);
            }
            // Short reads and writes, so the deadline and a stop are seen.
            let wait = deadline
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), POLL);
            tls.sock.set_read_timeout(Some(wait))?;
            tls.sock.set_write_timeout(Some(wait))?;
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        tls.sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Some(Self::Tls(Box::new(tls))))
    }
}

/// Whether the server was asked to stop, and since when: connections get
/// [`STOP_GRACE`] from the moment they first see it.
struct Stopping<'a> {
    flag: &'a AtomicBool,
    since: Option<Instant>,
}

impl Stopping<'_> {
    /// Whether the server is stopping and this connection's grace is over.
    fn expired(&mut self, now: Instant) -> bool {
        if !self.flag.load(Ordering::Relaxed) {
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= STOP_GRACE
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// What the application part of a connection asks of the loop.
pub(crate) enum Next {
    Continue,
    /// Write out the output, then call the application again before reading
    /// (a message is being streamed to the client).
    Again,
    /// The session answered STARTTLS/STLS: run the handshake now.
    StartTls,
}

/// Length of the first segment of `input` to hand the session while
/// tracing: up to and including the first LF, or all of it.
fn segment(input: &[u8]) -> usize {
    input
        .iter()
        .position(|&b| b == b'\n')
        .map_or(input.len(), |lf| lf + 1)
}

/// What a session reads next, as the driver needs to know it: typed lines
/// (and whether the next one is a secret SASL response), message text up to
/// its end marker (DATA), or the octets left of a BDAT chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reading {
    Line { secret: bool },
    Text,
    Chunk { left: u64 },
}

/// Longest typed line the telnet filter holds for editing; longer ones pass
/// as they come (the session refuses them). Above every session line limit,
/// AUTH's 12 KiB included.
const TYPED_LINE: usize = 16 * 1024;

/// Drives `session` over `tcp` until it closes, the peer leaves, or the
/// server stops. `app` drains the session's events after every input;
/// `reading` tells what the session reads next.
///
/// With tracing or the telnet filter on, the session gets its input one
/// line at a time and is asked before each line what it expects: whether
/// the line is a SASL response (so the trace masks it however the client
/// split or pipelined its bytes), and whether it is a command line (which
/// the telnet filter may edit) or message text (which it passes as is, and
/// a BDAT chunk exactly). Decisions are answered within `app`, so none is
/// pending between lines; what arrives while a message is being streamed
/// (`Next::Again`) waits here. With both off (`--strict-input`, no trace)
/// each read goes to the session whole.
pub(crate) fn drive<S: Session>(
    tcp: TcpStream,
    mut session: S,
    shared: &Shared,
    stop: &AtomicBool,
    trace: &mut Trace,
    reading: fn(&S) -> Reading,
    mut app: impl FnMut(&mut S, &mut Trace) -> Next,
) -> io::Result<()> {
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let mut stream = Stream::Plain(tcp);
    let mut input = vec![0; READ_SIZE];
    let mut output = Vec::with_capacity(4096);
    let mut stopping = Stopping {
        flag: stop,
        since: None,
    };
    // Input read while tracing or filtering, not yet handed to the session.
    let mut held: Vec<u8> = Vec::new();
    let mut held_pos = 0;
    let new_filter = || (!shared.strict_input).then(|| TelnetFilter::new(TYPED_LINE));
    let mut filter = new_filter();
    let mut typed = Vec::new();
    let mut telnet_replies = Vec::new();
    let mut next = Next::Continue;
    loop {
        output.clear();
        session.poll_transmit(&mut output);
        if !output.is_empty() {
            trace.server(&output);
            stream.write_all(&output)?;
            stream.flush()?;
        }
        if session.is_closed() {
            break;
        }
        let now = Instant::now();
        if stopping.expired(now) {
            trace.note("server stopping: connection closed");
            break;
        }
        match next {
            Next::Again => {
                next = app(&mut session, trace);
                continue;
            }
            Next::StartTls => {
                let config = shared
                    .tls
                    .clone()
                    .ok_or_else(|| io::Error::other("STARTTLS without a TLS configuration"))?;
                if held_pos < held.len() {
                    // Sent in plaintext after STARTTLS, before the handshake:
                    // the session drops it unread (RFC 3207 §5, RFC 2595 §4).
                    let rest = &held[held_pos..];
                    trace.note(&format!(
                        "{} bytes sent before the TLS handshake, discarded",
                        rest.len()
                    ));
                    session.receive(now, rest);
                    held.clear();
                    held_pos = 0;
                }
                // A line half typed before the handshake goes with it.
                filter = new_filter();
                match stream.start_tls(config, shared.tls_handshake_timeout, &mut stopping) {
                    Ok(Some(tls)) => stream = tls,
                    Ok(None) => {
                        trace.note("server stopping: TLS handshake abandoned");
                        return Ok(());
                    }
                    Err(e) => {
                        let e = io::Error::new(e.kind(), format!("TLS handshake failed: {e}"));
                        trace.note(&e.to_string());
                        return Err(e);
                    }
                }
                if let Err(e) = session.tls_established() {
                    trace.error(&e.to_string());
                }
                trace.note("TLS handshake complete");
                next = app(&mut session, trace);
                continue;
            }
            Next::Continue => {}
        }
        if held_pos < held.len() {
            let rest = &held[held_pos..];
            // Message text goes on line by line only where a line after its
            // end could be a secret to mask (tracing) or typed (a telnet
            // client); otherwise in one piece, as fast as without a filter.
            let by_line = trace.enabled() || filter.as_ref().is_some_and(TelnetFilter::is_telnet);
            let (secret, reads, piece) = match reading(&session) {
                Reading::Line { secret } => (secret, Reads::Lines, rest),
                Reading::Text if by_line => (false, Reads::Message, &rest[..segment(rest)]),
                Reading::Text => (false, Reads::Message, rest),
                Reading::Chunk { left } => {
                    let n = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    (false, Reads::Message, &rest[..n])
                }
            };
            let line = match filter.as_mut() {
                Some(f) => {
                    typed.clear();
                    held_pos += f.push(piece, reads, &mut typed);
                    if f.poll_reply(&mut telnet_replies) > 0 {
                        stream.write_all(&telnet_replies)?;
                        telnet_replies.clear();
                    }
                    &typed[..]
                }
                None => {
                    let n = match reads {
                        Reads::Lines => segment(piece),
                        _ => piece.len(),
                    };
                    held_pos += n;
                    &rest[..n]
                }
            };
            if !line.is_empty() {
                trace.client(line, secret);
                session.receive(now, line);
            }
            if held_pos == held.len() {
                held.clear();
                held_pos = 0;
            }
            next = app(&mut session, trace);
            continue;
        }
        let wait = session
            .poll_timeout()
            .map_or(POLL, |deadline| deadline.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), POLL);
        stream.tcp().set_read_timeout(Some(wait))?;
        match stream.read(&mut input) {
            Ok(0) => {
                trace.note("client closed the connection");
                session.receive_eof(Instant::now());
                app(&mut session, trace);
                break;
            }
            // What the filter would not change goes to the session in one
            // piece, as without a filter: a mail client's reads, nearly always.
            Ok(n)
                if !trace.enabled()
                    && held.is_empty()
                    && filter
                        .as_ref()
                        .is_some_and(|f| f.passes_unchanged(&input[..n])) =>
            {
                session.receive(Instant::now(), &input[..n]);
            }
            Ok(n) if trace.enabled() || filter.is_some() => {
                held.extend_from_slice(&input[..n]);
                continue;
            }
            Ok(n) => session.receive(Instant::now(), &input[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                session.handle_timeout(Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                session.receive_eof(Instant::now());
                app(&mut session, trace);
                return Err(e);
            }
        }
        next = app(&mut session, trace);
    }
    let _ = stream.flush();
    let _ = stream.tcp().shutdown(Shutdown::Both);
    Ok(())
}
