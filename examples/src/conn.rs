//! One connection: a socket (plain or TLS), a sans-IO session, and the loop
//! that moves bytes between them with deadlines taken from the session.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

use postamt_wire::Session;

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

    /// Runs the TLS handshake on the plain socket.
    fn start_tls(self, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let Self::Plain(tcp) = self else {
            return Err(io::Error::other("TLS is already active"));
        };
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self::Tls(Box::new(tls)))
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

/// Drives `session` over `tcp` until it closes, the peer leaves, or the
/// server stops. `app` drains the session's events after every input.
pub(crate) fn drive<S: Session>(
    tcp: TcpStream,
    mut session: S,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: &AtomicBool,
    trace: &mut Trace,
    mut app: impl FnMut(&mut S, &mut Trace) -> Next,
) -> io::Result<()> {
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let mut stream = Stream::Plain(tcp);
    let mut input = vec![0; READ_SIZE];
    let mut output = Vec::with_capacity(4096);
    let mut stopping_since: Option<Instant> = None;
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
        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert(now);
            if now.duration_since(since) >= STOP_GRACE {
                trace.note("server stopping: connection closed");
                break;
            }
        }
        match next {
            Next::Again => {
                next = app(&mut session, trace);
                continue;
            }
            Next::StartTls => {
                let config = tls
                    .clone()
                    .ok_or_else(|| io::Error::other("STARTTLS without a TLS configuration"))?;
                stream = stream.start_tls(config)?;
                if let Err(e) = session.tls_established() {
                    trace.error(&e.to_string());
                }
                trace.note("TLS handshake complete");
                next = app(&mut session, trace);
                continue;
            }
            Next::Continue => {}
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
            Ok(n) => {
                trace.client(&input[..n]);
                session.receive(Instant::now(), &input[..n]);
            }
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
