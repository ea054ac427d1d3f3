//! The toy server against hostile clients (issue 16), over real sockets:
//! passwords never reach `--trace` however the client splits its bytes, a
//! TLS handshake has an overall deadline, one address cannot take every
//! connection slot, a stalled trace reader never holds up a greeting, and
//! the trace escapes characters that steer a terminal. Each test asserts
//! what a client sees (exact replies, closed or not) and the trace's text.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use postamt_examples::{Options, Server};
use postamt_store::{MemoryStore, StaticDirectory};

mod peers;

const HOST: &str = "mail.kolleg.de";
/// Longest wait for any single reply or trace line; far above what any
/// step needs.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// A trace that the test reads.

/// The trace's output, split into lines as the writer thread delivers them.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<(Vec<u8>, Vec<String>)>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (partial, lines) = &mut *guard;
        partial.extend_from_slice(buf);
        while let Some(lf) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=lf).collect();
            lines.push(String::from_utf8_lossy(&line[..lf]).into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Waits until `done` holds for the lines so far; returns them.
    fn lines_when(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                if done(&guard.1) {
                    return guard.1.clone();
                }
            }
            assert!(Instant::now() < deadline, "the trace never got there");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a line ending with `last`, then takes every line up to it.
    fn take_through(&self, last: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(i) = guard.1.iter().position(|l| l.ends_with(last)) {
                    return guard.1.drain(..=i).collect();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no trace line ending with {last:?}; have {:?}",
                self.0.lock().unwrap().1
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn options(capture: &Capture) -> Options {
    Options {
        hostname: HOST.to_string(),
        trace: true,
        trace_output: Some(Box::new(capture.clone())),
        ..Options::new(
            Arc::new(MemoryStore::new()),
            Arc::new(StaticDirectory::demo()),
        )
    }
}

fn traced_server() -> (Server, Capture) {
    let capture = Capture::default();
    let server = Server::start(options(&capture)).expect("server starts");
    (server, capture)
}

// ---------------------------------------------------------------------------
// Talking to the server.

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Reads lines until one starts with `prefix`; returns them all.
fn read_until(reader: &mut BufReader<TcpStream>, prefix: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a line");
        assert!(!line.is_empty(), "closed before {prefix:?}; got {seen:?}");
        seen.push_str(&line);
        if line.starts_with(prefix) {
            return seen;
        }
    }
}

/// Whether the server has closed the connection: EOF (or a reset) within
/// `within`, with nothing more sent.
fn closed_within(tcp: &TcpStream, within: Duration) -> bool {
    tcp.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0; 1];
    match (&*tcp).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// One conversation: read the greeting, send `prelude` and read up to a
/// line starting with `wait`, then send the body `script` made from the
/// greeting, whole or split in two writes at `split`, and read until the
/// server closes (the body ends with QUIT). Returns the client's address
/// and what it received after the prelude.
fn converse(
    addr: SocketAddr,
    prelude: &[u8],
    wait: &str,
    script: &dyn Fn(&str) -> Vec<u8>,
    split: Option<usize>,
) -> (SocketAddr, String) {
    let tcp = connect(addr);
    let local = tcp.local_addr().unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut writer = tcp;
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    if !prelude.is_empty() {
        writer.write_all(prelude).unwrap();
        read_until(&mut reader, wait);
    }
    let body = script(&greeting);
    match split {
        None => writer.write_all(&body).unwrap(),
        Some(at) => {
            writer.write_all(&body[..at]).unwrap();
            // Long enough for the server to read the first part alone.
            thread::sleep(Duration::from_millis(1));
            writer.write_all(&body[at..]).unwrap();
        }
    }
    let mut rest = String::new();
    reader.read_to_string(&mut rest).expect("read to the close");
    (local, rest)
}

/// The trace of the conversation from `local`, which ended with `last`:
/// its lines without the connection tag, the connection note and the
/// greeting (POP3's holds a fresh APOP timestamp each time).
fn trace_of(capture: &Capture, local: SocketAddr, last: &str) -> Vec<String> {
    session_lines(&capture.take_through(last), local)
}

/// The lines of the connection from `local` among `lines`, as [`trace_of`].
fn session_lines(lines: &[String], local: SocketAddr) -> Vec<String> {
    let note = format!(" -- connection from {local}");
    let first = lines
        .iter()
        .position(|l| l.ends_with(&note))
        .unwrap_or_else(|| panic!("no connection note for {local} in {lines:?}"));
    let tag = lines[first][..lines[first].len() - note.len()].to_string() + " ";
    let mut own: Vec<String> = lines[first + 1..]
        .iter()
        .filter_map(|l| l.strip_prefix(&tag).map(str::to_string))
        .collect();
    assert!(own[0].starts_with("S: "), "the greeting first: {own:?}");
    own.remove(0);
    own
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `script` whole and then split at every byte, connecting afresh each
/// time. Every run must get the same replies and leave the same trace; no
/// trace line may hold any of `secrets`. Returns the replies and the trace.
fn every_split(
    addr: SocketAddr,
    capture: &Capture,
    prelude: &[u8],
    wait: &str,
    script: &dyn Fn(&str) -> Vec<u8>,
    last: &str,
    secrets: &[String],
) -> (String, Vec<String>) {
    let check = |trace: &[String], how: &str| {
        for line in trace {
            for secret in secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "{how}: the trace line {line:?} shows the secret {secret:?}"
                );
            }
        }
    };
    let (local, replies) = converse(addr, prelude, wait, script, None);
    let trace = trace_of(capture, local, last);
    check(&trace, "sent whole");
    let len = script("").len();
    for at in 1..len {
        let (local, got) = converse(addr, prelude, wait, script, Some(at));
        let split_trace = trace_of(capture, local, last);
        let how = format!("split at byte {at}");
        check(&split_trace, &how);
        assert_eq!(got, replies, "{how}: the replies differ");
        assert_eq!(split_trace, trace, "{how}: the trace differs");
    }
    (replies, trace)
}

/// The forms of a password that must never show: plain and base64.
fn forms(password: &str) -> Vec<String> {
    vec![password.to_string(), base64(password.as_bytes())]
}

/// Every 8-character piece of `blob`: none may show, not even a part.
fn pieces(blob: &str) -> Vec<String> {
    blob.as_bytes()
        .windows(8)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// Where the AUTH command is in an SMTP trace (after EHLO and its reply).
fn from_auth(trace: &[String]) -> usize {
    let at = trace.iter().position(|l| l.starts_with("C: AUTH"));
    at.unwrap_or_else(|| panic!("no AUTH in {trace:?}"))
}

const EHLO: &[u8] = b"EHLO client.example\r\n";
const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
const SMTP_BYE: &str = "221 2.0.0 mail.kolleg.de See you later\r\n";

// ---------------------------------------------------------------------------
// Point 1: passwords never in the trace.

#[test]
fn smtp_auth_login_pipelined_in_one_write_is_masked_at_every_split() {
    let (server, capture) = traced_server();
    let user = base64(b"anna@kolleg.de");
    let pass = base64(b"geheim");
    let script = |_: &str| format!("AUTH LOGIN\r\n{user}\r\n{pass}\r\nQUIT\r\n").into_bytes();
    let mut secrets = forms("geheim");
    secrets.push(user.clone());
    let (replies, trace) = every_split(
        server.smtp_addr(),
        &capture,
        EHLO,
        "250 ",
        &script,
        "S: 221 2.0.0 mail.kolleg.de See you later",
        &secrets,
    );
    assert_eq!(
        replies,
        format!("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n{AUTH_OK}{SMTP_BYE}")
    );
    assert_eq!(
        trace[from_auth(&trace)..],
        [
            "C: AUTH LOGIN",
            "S: 334 VXNlcm5hbWU6",
            "C: ****",
            "S: 334 UGFzc3dvcmQ6",
            "C: ****",
            "-- authenticated as anna@kolleg.de",
            "S: 235 2.7.0 Authentication successful",
            "C: QUIT",
            "S: 221 2.0.0 mail.kolleg.de See you later",
        ]
    );
    server.stop();
}

#[test]
fn smtp_auth_login_password_right_after_the_user_line_is_masked() {
    let (server, capture) = traced_server();
    let user = base64(b"anna@kolleg.de");
    let pass = base64(b"geheim");
    // The client waits for the first 334 only, then sends both answers.
    let prelude = [EHLO, b"AUTH LOGIN\r\n"].concat();
    let script = |_: &str| format!("{user}\r\n{pass}\r\nQUIT\r\n").into_bytes();
    let (replies, trace) = every_split(
        server.smtp_addr(),
        &capture,
        &prelude,
        "334 ",
        &script,
        "S: 221 2.0.0 mail.kolleg.de See you later",
        &forms("geheim"),
    );
    assert_eq!(replies, format!("334 UGFzc3dvcmQ6\r\n{AUTH_OK}{SMTP_BYE}"));
    assert_eq!(
        trace[from_auth(&trace)..],
        [
            "C: AUTH LOGIN",
            "S: 334 VXNlcm5hbWU6",
            "C: ****",
            "S: 334 UGFzc3dvcmQ6",
            "C: ****",
            "-- authenticated as anna@kolleg.de",
            "S: 235 2.7.0 Authentication successful",
            "C: QUIT",
            "S: 221 2.0.0 mail.kolleg.de See you later",
        ]
    );
    server.stop();
}

#[test]
fn smtp_auth_plain_without_initial_response_is_masked_at_every_split() {
    let (server, capture) = traced_server();
    let blob = base64(b"\0anna@kolleg.de\0geheim");
    let script = |_: &str| format!("AUTH PLAIN\r\n{blob}\r\nQUIT\r\n").into_bytes();
    let mut secrets = forms("geheim");
    secrets.extend(pieces(&blob));
    let (replies, trace) = every_split(
        server.smtp_addr(),
        &capture,
        EHLO,
        "250 ",
        &script,
        "S: 221 2.0.0 mail.kolleg.de See you later",
        &secrets,
    );
    assert_eq!(replies, format!("334 \r\n{AUTH_OK}{SMTP_BYE}"));
    assert_eq!(
        trace[from_auth(&trace)..],
        [
            "C: AUTH PLAIN",
            "S: 334 ",
            "C: ****",
            "-- authenticated as anna@kolleg.de",
            "S: 235 2.7.0 Authentication successful",
            "C: QUIT",
            "S: 221 2.0.0 mail.kolleg.de See you later",
        ]
    );
    server.stop();
}

#[test]
fn smtp_over_long_auth_plain_line_shows_no_part_of_its_tail() {
    let (server, capture) = traced_server();
    // Longer than the trace keeps whole (1000) and than a command line may
    // be (512): the password sits at the far end.
    let mut plain = vec![b'x'; 780];
    plain.extend_from_slice(b"\0anna@kolleg.de\0geheim");
    let blob = base64(&plain);
    assert!(blob.len() > 1000);
    let script = |_: &str| format!("AUTH PLAIN {blob}\r\nQUIT\r\n").into_bytes();
    let mut secrets = forms("geheim");
    secrets.extend(pieces(&blob));
    let (replies, trace) = every_split(
        server.smtp_addr(),
        &capture,
        EHLO,
        "250 ",
        &script,
        "S: 221 2.0.0 mail.kolleg.de See you later",
        &secrets,
    );
    assert_eq!(replies, format!("500 5.5.2 Line too long\r\n{SMTP_BYE}"));
    assert_eq!(
        trace[from_auth(&trace)..],
        [
            "C: AUTH PLAIN ****",
            "S: 500 5.5.2 Line too long",
            "C: QUIT",
            "S: 221 2.0.0 mail.kolleg.de See you later",
        ]
    );
    server.stop();
}

const POP3_BYE: &str = "S: +OK Goodbye";
const POP3_IN: &str = "+OK Logged in, 0 messages (0 octets)\r\n";
/// The trace of a POP3 login as bob, after its last line, to the end.
const POP3_TAIL: [&str; 5] = [
    "-- bob logged in to bob@kolleg.de",
    "S: +OK Logged in, 0 messages (0 octets)",
    "C: QUIT",
    "-- 0 message(s) deleted",
    POP3_BYE,
];

#[test]
fn pop3_auth_plain_without_initial_response_is_masked_at_every_split() {
    let (server, capture) = traced_server();
    let blob = base64(b"\0bob\0topSecret");
    let script = |_: &str| format!("AUTH PLAIN\r\n{blob}\r\nQUIT\r\n").into_bytes();
    let mut secrets = forms("topSecret");
    secrets.extend(pieces(&blob));
    let (replies, trace) = every_split(
        server.pop3_addr(),
        &capture,
        b"",
        "",
        &script,
        POP3_BYE,
        &secrets,
    );
    assert_eq!(replies, format!("+ \r\n{POP3_IN}+OK Goodbye\r\n"));
    assert_eq!(trace[..3], ["C: AUTH PLAIN", "S: + ", "C: ****"]);
    assert_eq!(trace[3..], POP3_TAIL);
    server.stop();
}

#[test]
fn pop3_user_pass_is_masked_at_every_split() {
    let (server, capture) = traced_server();
    let script = |_: &str| b"USER bob\r\nPASS topSecret\r\nQUIT\r\n".to_vec();
    let (replies, trace) = every_split(
        server.pop3_addr(),
        &capture,
        b"",
        "",
        &script,
        POP3_BYE,
        &forms("topSecret"),
    );
    assert_eq!(
        replies,
        format!("+OK Now send your password with PASS\r\n{POP3_IN}+OK Goodbye\r\n")
    );
    assert_eq!(
        trace[..3],
        [
            "C: USER bob",
            "S: +OK Now send your password with PASS",
            "C: PASS ****"
        ]
    );
    assert_eq!(trace[3..], POP3_TAIL);
    server.stop();
}

#[test]
fn pop3_apop_digest_is_masked_at_every_split() {
    let (server, capture) = traced_server();
    let script = |greeting: &str| {
        // The timestamp is the greeting's last word, `<...>`.
        let stamp = greeting.trim_end().rsplit(' ').next().unwrap_or("");
        let digest = postamt_pop3::apop_digest(stamp, "topSecret");
        format!("APOP bob {digest}\r\nQUIT\r\n").into_bytes()
    };
    let (replies, trace) = every_split(
        server.pop3_addr(),
        &capture,
        b"",
        "",
        &script,
        POP3_BYE,
        &forms("topSecret"),
    );
    assert_eq!(replies, format!("{POP3_IN}+OK Goodbye\r\n"));
    assert_eq!(trace[0], "C: APOP bob ****");
    assert_eq!(trace[1..], POP3_TAIL);
    // Every run's trace is this one, so no digest showed either.
    server.stop();
}

// ---------------------------------------------------------------------------
// Point 2: the TLS handshake has an overall deadline, and a stop ends it.

fn tls_server(handshake: Duration) -> (Server, Capture) {
    let capture = Capture::default();
    let server = Server::start(Options {
        tls: Some(postamt_examples::tls::self_signed(HOST).unwrap()),
        tls_handshake_timeout: handshake,
        ..options(&capture)
    })
    .expect("server starts");
    (server, capture)
}

/// Asks for TLS (EHLO and STARTTLS, or STLS) and sends the 5-byte header
/// of a 16 KiB handshake record, which the server waits to complete.
fn stalled_handshake(addr: SocketAddr, smtp: bool) -> TcpStream {
    let tcp = connect(addr);
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut writer = tcp.try_clone().unwrap();
    if smtp {
        read_until(&mut reader, "220 ");
        writer.write_all(EHLO).unwrap();
        read_until(&mut reader, "250 ");
        writer.write_all(b"STARTTLS\r\n").unwrap();
        assert_eq!(
            read_until(&mut reader, ""),
            "220 2.0.0 Ready to start TLS\r\n"
        );
    } else {
        read_until(&mut reader, "+OK ");
        writer.write_all(b"STLS\r\n").unwrap();
        assert_eq!(read_until(&mut reader, ""), "+OK Begin TLS negotiation\r\n");
    }
    writer.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).unwrap();
    tcp
}

#[test]
fn tls_handshake_trickling_a_byte_every_300_ms_is_cut_off_at_its_deadline() {
    let (server, capture) = tls_server(Duration::from_secs(2));
    for (addr, smtp) in [(server.smtp_addr(), true), (server.pop3_addr(), false)] {
        let tcp = stalled_handshake(addr, smtp);
        let local = tcp.local_addr().unwrap();
        let started = Instant::now();
        // A byte every 300 ms: every read is well inside any per-read
        // timeout, so only the overall deadline ends this.
        let closed = loop {
            if (&tcp).write_all(&[0]).is_err() || closed_within(&tcp, Duration::from_millis(300)) {
                break true;
            }
            if started.elapsed() > WAIT {
                break false;
            }
        };
        assert!(closed, "still handshaking after {WAIT:?} (smtp: {smtp})");
        let trace = trace_of(
            &capture,
            local,
            "-- TLS handshake failed: not finished within 2s",
        );
        assert_eq!(
            trace.last().unwrap(),
            "-- TLS handshake failed: not finished within 2s"
        );
    }
    server.stop();
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded_and_its_secrets_not_traced() {
    let (server, capture) = tls_server(Duration::from_secs(2));
    let blob = base64(b"\0anna@kolleg.de\0geheim");
    for (addr, ask, ready) in [
        (
            server.smtp_addr(),
            "STARTTLS",
            "220 2.0.0 Ready to start TLS\r\n",
        ),
        (server.pop3_addr(), "STLS", "+OK Begin TLS negotiation\r\n"),
    ] {
        // The injection RFC 3207 §5 warns of, carrying a SASL exchange.
        let injected = format!("AUTH PLAIN\r\n{blob}\r\n");
        let prelude: &[u8] = if ask == "STARTTLS" { EHLO } else { b"" };
        let script = |_: &str| format!("{ask}\r\n{injected}").into_bytes();
        let tcp = connect(addr);
        let local = tcp.local_addr().unwrap();
        let mut reader = BufReader::new(tcp.try_clone().unwrap());
        read_until(&mut reader, "");
        if !prelude.is_empty() {
            (&tcp).write_all(prelude).unwrap();
            read_until(&mut reader, "250 ");
        }
        (&tcp).write_all(&script("")).unwrap();
        assert_eq!(read_until(&mut reader, ""), ready);
        // Nothing answers the injected lines; the client gives up.
        assert!(!closed_within(&tcp, Duration::from_millis(300)));
        drop((reader, tcp));
        let discarded = format!(
            "-- {} bytes sent before the TLS handshake, discarded",
            injected.len()
        );
        let trace = trace_of(&capture, local, &discarded);
        assert_eq!(
            trace[trace.len() - 3..],
            [
                format!("C: {ask}"),
                format!("S: {}", ready.trim_end()),
                discarded
            ]
        );
        let lines = capture.lines_when(|l| l.iter().any(|l| l.contains("TLS handshake failed")));
        for line in &lines {
            assert!(!line.contains(&blob) && !line.contains("geheim"), "{line}");
        }
    }
    server.stop();
}

#[test]
fn server_stop_ends_a_tls_handshake_in_progress_within_the_grace() {
    // The deadline is far off: only the stop can end these handshakes.
    let (server, capture) = tls_server(Duration::from_secs(300));
    let smtp = stalled_handshake(server.smtp_addr(), true);
    let pop3 = stalled_handshake(server.pop3_addr(), false);
    assert_eq!(server.active_connections(), 2);
    let asked = Instant::now();
    server.stop();
    // The stop grace is 3 s, and stop() waits a second longer at most for
    // the connections to end (a slow machine gets one more). They must have
    // ended, not outlasted the wait: both are closed once it returns.
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    const ABANDONED: &str = "-- server stopping: TLS handshake abandoned";
    let lines = capture.lines_when(|l| l.iter().filter(|l| l.ends_with(ABANDONED)).count() == 2);
    for (tcp, last) in [
        (&smtp, "S: 220 2.0.0 Ready to start TLS"),
        (&pop3, "S: +OK Begin TLS negotiation"),
    ] {
        assert!(
            closed_within(tcp, Duration::from_secs(1)),
            "still open after the stop"
        );
        let trace = session_lines(&lines, tcp.local_addr().unwrap());
        assert_eq!(trace[trace.len() - 2..], [last, ABANDONED]);
    }
}

// ---------------------------------------------------------------------------
// Point 3: one address cannot take every slot.

/// A connection from `source` (a loopback address other than 127.0.0.1 is
/// another client to the server).
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let source: std::net::IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&addr.into()).expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp
}

/// The first line the server sends, read byte by byte (nothing more).
fn first_line(tcp: &TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0; 1];
    while line.last() != Some(&b'\n') {
        match (&*tcp).read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn a_client_address_over_its_limit_is_turned_away_and_others_are_served() {
    let server = Server::start(Options {
        hostname: HOST.to_string(),
        max_connections_per_client: 3,
        ..Options::new(
            Arc::new(MemoryStore::new()),
            Arc::new(StaticDirectory::demo()),
        )
    })
    .expect("server starts");
    let cases = [
        (
            server.smtp_addr(),
            "220 mail.kolleg.de ESMTP postamt ready\r\n",
            "421 mail.kolleg.de Too many connections from your address, try again later\r\n",
        ),
        (
            server.pop3_addr(),
            "+OK POP3 server ready",
            "-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n",
        ),
    ];
    // The SMTP connections stay open while POP3 is tried: the limit is
    // per protocol.
    let mut kept = Vec::new();
    for (addr, greeting, refusal) in cases {
        let mut held: Vec<TcpStream> = (0..3)
            .map(|_| {
                let c = connect_from("127.0.0.1", addr);
                assert!(first_line(&c).starts_with(greeting), "within the limit");
                c
            })
            .collect();
        let fourth = connect_from("127.0.0.1", addr);
        assert_eq!(first_line(&fourth), refusal);
        assert!(closed_within(&fourth, WAIT), "closed after the refusal");
        // Another address is another client.
        let other = connect_from("127.0.0.2", addr);
        assert!(first_line(&other).starts_with(greeting), "127.0.0.2 served");
        // One leaves: the next from 127.0.0.1 is served once the server
        // has seen it go.
        drop(held.pop());
        let deadline = Instant::now() + WAIT;
        let next = loop {
            let c = connect_from("127.0.0.1", addr);
            let line = first_line(&c);
            if line.starts_with(greeting) {
                break c;
            }
            assert_eq!(line, refusal);
            assert!(Instant::now() < deadline, "no slot freed after a close");
            thread::sleep(Duration::from_millis(20));
        };
        held.push(next);
        held.push(other);
        kept.push(held);
    }
    drop(kept);
    server.stop();
}

// ---------------------------------------------------------------------------
// Point 10: characters that steer a terminal are shown escaped.

#[test]
fn trace_shows_bidi_override_and_line_separator_escaped() {
    let (server, capture) = traced_server();
    let script = |_: &str| "HELO x\r\nNOOP evil\u{202e}txt\u{2028}next\r\nQUIT\r\n".into();
    let (local, replies) = converse(server.smtp_addr(), b"", "", &script, None);
    assert!(
        replies.ends_with("221 mail.kolleg.de See you later\r\n"),
        "{replies}"
    );
    let lines = capture.take_through("S: 221 mail.kolleg.de See you later");
    let trace = session_lines(&lines, local);
    assert_eq!(
        trace,
        [
            "C: HELO x",
            "S: 250 mail.kolleg.de Hello x",
            "C: NOOP evil\\u{202e}txt\\u{2028}next",
            "S: 250 OK",
            "C: QUIT",
            "S: 221 mail.kolleg.de See you later",
        ]
    );
    for line in &lines {
        assert!(!line.contains(['\u{202e}', '\u{2028}']), "raw in {line:?}");
    }
    server.stop();
}

// ---------------------------------------------------------------------------
// Point 8: a trace nobody reads never holds up a session.

/// Where cargo put the example `name`: next to this test's `deps/` folder.
fn example(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

/// The toy server process, killed when the test ends however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_trace_nobody_reads_drops_and_counts_lines_and_every_greeting_comes() {
    use std::process::{Command, Stdio};
    let Some(binary) = example("toy-server") else {
        peers::missing(
            "the toy-server example",
            "run `cargo test --workspace`, which builds it",
        );
        return;
    };
    // Two spare ports (they differ: the counter moves on) for the server.
    let ports: Vec<String> = (0..2).map(|_| peers::spare_port().to_string()).collect();
    let mut server = Running(
        Command::new(binary)
            .args(["--trace", "--memory", "--smtp-port", &ports[0]])
            .args(["--pop3-port", &ports[1]])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the toy server starts"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();

    // Nobody reads its stdout while 30 clients in a row each pipeline 1000
    // NOOPs: 2004 trace lines each, far more than the pipe (64 KiB) and the
    // trace queue (4096 lines) hold.
    const CLIENTS: usize = 30;
    const NOOPS: usize = 1000;
    let script = format!("{}QUIT\r\n", "NOOP\r\n".repeat(NOOPS));
    let started = Instant::now();
    let mut served = 0;
    while served < CLIENTS {
        let Ok(tcp) = TcpStream::connect(addr) else {
            // Not listening yet.
            assert!(started.elapsed() < WAIT, "the toy server never listened");
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        // Each greeting within WAIT: a blocked trace would hold it forever.
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(tcp.try_clone().unwrap());
        assert_eq!(
            read_until(&mut reader, "220 "),
            "220 mail.kolleg.de ESMTP postamt ready\r\n",
            "client {served}"
        );
        (&tcp).write_all(script.as_bytes()).unwrap();
        let replies = read_until(&mut reader, "221 ");
        assert_eq!(replies.matches("250 OK\r\n").count(), NOOPS);
        served += 1;
    }

    // Now read: every trace line was either shown or counted as dropped.
    let stdout = server.0.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let expected = CLIENTS * (2 * NOOPS + 4);
    let (mut shown, mut dropped, mut reports) = (0, 0, 0);
    let deadline = Instant::now() + WAIT;
    while shown + dropped < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = seen.recv_timeout(left) else {
            panic!("{shown} lines shown and {dropped} dropped of {expected}");
        };
        if line.starts_with("[smtp #") {
            shown += 1;
        } else if let Some(n) = line
            .strip_prefix("... ")
            .and_then(|rest| rest.strip_suffix(" trace lines dropped"))
        {
            dropped += n.parse::<usize>().expect("a count");
            reports += 1;
        }
    }
    assert_eq!(shown + dropped, expected);
    // With a 64 KiB pipe and a 4096-line queue, 60120 lines of about 30
    // octets cannot all have waited: some were dropped, and said so.
    assert!(dropped > 0 && reports > 0, "{shown} shown, none dropped");
}
