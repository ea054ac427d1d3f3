//! A blocking socket for the client examples: plain TCP, upgraded to TLS
//! after STARTTLS/STLS (or at once, for implicit TLS), and the one loop step
//! that moves bytes for any [`Session`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postamt_wire::Session;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

/// A client's connection to a server.
#[derive(Debug)]
pub enum ClientStream {
    /// Before TLS.
    Plain(TcpStream),
    /// After the handshake.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl ClientStream {
    /// Connects with a timeout.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Self> {
        use std::net::ToSocketAddrs;
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    s.set_write_timeout(Some(timeout))?;
                    return Ok(Self::Plain(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The host part of `HOST:PORT`, the name a certificate is checked against.
    pub fn host_of(addr: &str) -> &str {
        addr.rsplit_once(':').map_or(addr, |(host, _)| host)
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }

    /// Runs the TLS handshake, checking the certificate against `server_name`.
    pub fn start_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<Self> {
        let Self::Plain(tcp) = self else {
            return Err(io::Error::other("TLS is already active"));
        };
        let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        tls.sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self::Tls(Box::new(tls)))
    }

    /// Whether the server has said nothing since the last reply, not even
    /// closed the connection: an idle connection fit to carry another
    /// transaction. Anything waiting (a 421, a TLS alert, the end of the
    /// stream) or a socket error means it is not.
    pub fn is_quiet(&mut self) -> bool {
        if let Self::Tls(s) = self {
            // Records rustls read already but did not yet decrypt.
            match s.conn.process_new_packets() {
                Ok(st) if st.plaintext_bytes_to_read() == 0 && !st.peer_has_closed() => {}
                _ => return false,
            }
        }
        let tcp = self.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0; 1];
        let quiet = matches!(tcp.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        tcp.set_nonblocking(false).is_ok() && quiet
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self {
            Self::Plain(s) => s.write_all(bytes),
            Self::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    /// Reads what arrives before `deadline`: `Ok(None)` when it passed,
    /// `Ok(Some(0))` when the server closed.
    pub fn read_until(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<Option<usize>> {
        let wait = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        self.tcp().set_read_timeout(wait)?;
        let result = match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        };
        match result {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }
}

/// One turn of a client's loop, as the [`Session`] docs drive a session:
/// writes what it has to send, then (unless it is closed) waits for the
/// server until its next deadline and hands over the bytes, the end of the
/// stream or the time. Call it while `!session.is_closed()`, after taking
/// the session's events.
pub fn exchange<S: Session>(
    stream: &mut ClientStream,
    session: &mut S,
    out: &mut Vec<u8>,
    buf: &mut [u8],
) -> io::Result<()> {
    flush(stream, session, out)?;
    if session.is_closed() {
        return Ok(());
    }
    match stream.read_until(buf, session.poll_timeout())? {
        None => session.handle_timeout(Instant::now()),
        Some(0) => session.receive_eof(Instant::now()),
        Some(n) => session.receive(Instant::now(), &buf[..n]),
    }
    Ok(())
}

/// Writes what the session has to send now (before a TLS handshake, the
/// last plaintext bytes).
pub fn flush<S: Session>(
    stream: &mut ClientStream,
    session: &mut S,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    session.poll_transmit(out);
    stream.send(out)
}
