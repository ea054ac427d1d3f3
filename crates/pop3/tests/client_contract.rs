//! The POP3 client against scripted server bytes: what the `Session`
//! contract promises (no command between the `+OK` to STLS and the
//! handshake; closed means closed and drained) and that no secret reaches
//! `Debug`.

use std::time::Instant;

use postamt_pop3::{ClientConfig, ClientEvent, ClientSession, ClientUsageError, MessageNumber};
use postamt_wire::Session;
use postamt_wire::sasl::Mechanism;

fn take(c: &mut ClientSession) -> Vec<u8> {
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    out
}

/// A client that has read the greeting and `capa` (a whole CAPA response).
fn ready(capa: &[u8]) -> (ClientSession, Instant) {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::default(), now);
    c.receive(now, b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n");
    assert_eq!(take(&mut c), b"CAPA\r\n");
    c.receive(now, capa);
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    (c, now)
}

#[test]
fn nothing_goes_out_between_the_stls_reply_and_the_handshake() {
    let (mut c, now) = ready(b"+OK\r\nUSER\r\nSTLS\r\nSASL PLAIN\r\nPIPELINING\r\n.\r\n");
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    c.stls().unwrap();
    assert_eq!(take(&mut c), b"STLS\r\n");
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    // The +OK, and plaintext a man in the middle appended to it.
    c.receive(now, b"+OK begin TLS\r\n+OK injected\r\n");
    assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(
        c.login_user("bob", "topSecret"),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(
        c.login_apop("bob", "topSecret"),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(
        c.authenticate(Mechanism::Plain, "bob", "topSecret"),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(c.stls(), Err(ClientUsageError::Busy));
    assert_eq!(c.stat(), Err(ClientUsageError::Busy));
    assert_eq!(
        c.retr(MessageNumber::new(1).unwrap()),
        Err(ClientUsageError::Busy)
    );
    c.receive(now, b"+OK more injected\r\n");
    assert_eq!(c.poll_event(), None);
    assert!(take(&mut c).is_empty());
    assert!(!c.is_closed());
    assert_eq!(
        c.poll_timeout(),
        None,
        "the handshake is the caller's to time"
    );

    c.tls_established().unwrap();
    assert!(c.is_tls());
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    assert_eq!(take(&mut c), b"CAPA\r\n");
    c.receive(now, b"+OK\r\nUSER\r\n.\r\n");
    let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
        panic!()
    };
    assert!(caps.user && !caps.stls && !caps.pipelining);
    assert_eq!(c.stls(), Err(ClientUsageError::NotOffered));
    c.quit().unwrap();
    assert_eq!(take(&mut c), b"QUIT\r\n");
}

/// What the server does next in [`drive`].
enum Peer {
    Says(&'static [u8]),
    Closes,
    Silent,
}

/// A driver written as the `Session` docs say, `while !is_closed()`: it
/// answers each `Ready` with `on_ready`, and feeds the script one step per
/// round (time runs on ten minutes when the server stays silent).
fn drive(
    mut c: ClientSession,
    mut now: Instant,
    script: &[Peer],
    mut on_ready: impl FnMut(&mut ClientSession),
) -> (Vec<ClientEvent>, Vec<u8>) {
    let mut events = Vec::new();
    let mut wire = Vec::new();
    let mut script = script.iter();
    let mut rounds = 0;
    while !c.is_closed() {
        rounds += 1;
        assert!(rounds < 100, "the loop does not end: {events:?}");
        while let Some(e) = c.poll_event() {
            if matches!(e, ClientEvent::Ready(_)) {
                on_ready(&mut c);
            }
            events.push(e);
        }
        let n = c.poll_transmit(&mut wire);
        assert_eq!(c.poll_transmit(&mut Vec::new()), 0);
        if n > 0 || c.is_closed() {
            continue;
        }
        match script.next() {
            Some(Peer::Says(bytes)) => c.receive(now, bytes),
            Some(Peer::Closes) => c.receive_eof(now),
            Some(Peer::Silent) | None => {
                now += std::time::Duration::from_secs(600);
                c.handle_timeout(now);
            }
        }
    }
    assert_eq!(c.poll_event(), None);
    (events, wire)
}

#[test]
fn a_loop_on_is_closed_sees_the_last_event() {
    let now = Instant::now();
    let new = || ClientSession::new(ClientConfig::new(), now);
    let greeting = Peer::Says(b"+OK hi\r\n");
    let capa = Peer::Says(b"+OK\r\nUSER\r\n.\r\n");

    // After QUIT and its +OK.
    let (events, wire) = drive(
        new(),
        now,
        &[greeting, capa, Peer::Says(b"+OK bye\r\n")],
        |c| c.quit().unwrap(),
    );
    assert!(matches!(
        events.as_slice(),
        [ClientEvent::Ready(_), ClientEvent::Closed(None)]
    ));
    assert_eq!(wire, b"CAPA\r\nQUIT\r\n");

    // After QUIT, -ERR (nothing committed): the error, then Closed.
    let (events, _) = drive(
        new(),
        now,
        &[
            Peer::Says(b"+OK hi\r\n-ERR\r\n"),
            Peer::Says(b"-ERR [SYS/TEMP] disk\r\n"),
        ],
        |c| c.quit().unwrap(),
    );
    assert!(
        matches!(
            events.as_slice(),
            [
                ClientEvent::Ready(_),
                ClientEvent::Error { .. },
                ClientEvent::Closed(None)
            ]
        ),
        "{events:?}"
    );

    // A refused greeting, the connection lost, a silent server.
    let (events, _) = drive(new(), now, &[Peer::Says(b"-ERR go away\r\n")], |_| {});
    assert!(matches!(
        events.as_slice(),
        [ClientEvent::Closed(Some(
            postamt_pop3::ClientError::Refused(_)
        ))]
    ));
    let (events, _) = drive(
        new(),
        now,
        &[Peer::Says(b"+OK hi\r\n-ERR\r\n"), Peer::Closes],
        |c| c.login_user("bob", "pw").unwrap(),
    );
    assert_eq!(
        events.last(),
        Some(&ClientEvent::Closed(Some(
            postamt_pop3::ClientError::ConnectionClosed
        )))
    );
    let (events, _) = drive(
        new(),
        now,
        &[Peer::Says(b"+OK hi\r\n"), Peer::Silent],
        |_| {},
    );
    assert_eq!(
        events,
        [ClientEvent::Closed(Some(
            postamt_pop3::ClientError::Timeout
        ))]
    );
}

/// What must never show in `Debug`: the password, its base64, PLAIN's
/// base64 blob (or a good part of it), and the APOP digest.
fn assert_no_secret(debug: &str, password: &str, digest: Option<&str>) {
    let b64 = postamt_wire::sasl::encode_base64(password.as_bytes());
    let plain = postamt_wire::sasl::encode_plain(None, "bob", password);
    for needle in ["topSecret", "dG9wU2VjcmV0", &b64, &plain, &plain[..16]] {
        assert!(!debug.contains(needle), "{needle} in {debug}");
    }
    if let Some(digest) = digest {
        assert!(!debug.contains(digest), "the APOP digest in {debug}");
        assert!(!debug.contains(&digest[..12]), "the APOP digest in {debug}");
    }
}

/// The APOP digest the client sends for `topSecret` and this greeting's
/// timestamp (RFC 1939 §7 gives it).
const DIGEST: &str = "69fe7119f1e6ad616f7b8184e002d99b";
/// RFC 1939 §7's own example: `tanstaaf` for this timestamp.
const RFC_DIGEST: &str = "c4c9334bac560ecc979e58001b3e22fb";

/// Runs one login with `password` against `replies` (one server response
/// per step, fed byte by byte), printing the session after every call and
/// every byte; returns what the client sent.
fn login_in_debug(
    login: impl FnOnce(&mut ClientSession) -> Result<(), ClientUsageError>,
    password: &str,
    digest: &str,
    replies: &[&[u8]],
) -> Vec<u8> {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new(), now);
    let mut wire = Vec::new();
    let check = |c: &ClientSession| {
        assert_no_secret(&format!("{c:?} {c:#?}"), password, Some(digest));
    };
    for byte in
        b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
    {
        c.receive(now, &[*byte]);
        check(&c);
    }
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    c.poll_transmit(&mut wire);
    login(&mut c).unwrap();
    check(&c);
    for reply in replies {
        for byte in *reply {
            c.receive(now, &[*byte]);
            check(&c);
        }
        while let Some(e) = c.poll_event() {
            assert_no_secret(&format!("{e:?}"), password, Some(digest));
            assert_eq!(e, ClientEvent::LoggedIn);
            check(&c);
        }
        c.poll_transmit(&mut wire);
        check(&c);
    }
    c.stat().unwrap();
    c.quit().unwrap();
    check(&c);
    c.poll_transmit(&mut wire);
    c.receive(now, b"+OK 0 0\r\n");
    c.poll_transmit(&mut wire);
    c.receive(now, b"+OK bye\r\n");
    check(&c);
    assert!(matches!(c.poll_event(), Some(ClientEvent::Stat { .. })));
    assert_eq!(c.poll_event(), Some(ClientEvent::Closed(None)));
    check(&c);
    wire
}

#[test]
fn no_secret_in_debug_through_every_login_kind() {
    let long = format!("topSecret{}", "y".repeat(300));
    let plain = |p: &str| postamt_wire::sasl::encode_plain(None, "bob", p);

    let wire = login_in_debug(
        |c| c.login_user("bob", "topSecret"),
        "topSecret",
        DIGEST,
        &[b"+OK\r\n", b"+OK\r\n"],
    );
    assert_eq!(
        wire,
        b"CAPA\r\nUSER bob\r\nPASS topSecret\r\nSTAT\r\nQUIT\r\n"
    );

    // RFC 1939's example secret, whose digest is in the RFC.
    let wire = login_in_debug(
        |c| c.login_apop("mrose", "tanstaaf"),
        "tanstaaf",
        RFC_DIGEST,
        &[b"+OK\r\n"],
    );
    assert_eq!(
        wire,
        format!("CAPA\r\nAPOP mrose {RFC_DIGEST}\r\nSTAT\r\nQUIT\r\n").as_bytes()
    );
    let wire = login_in_debug(
        |c| c.login_apop("bob", "topSecret"),
        "topSecret",
        DIGEST,
        &[b"+OK\r\n"],
    );
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        format!("CAPA\r\nAPOP bob {DIGEST}\r\nSTAT\r\nQUIT\r\n")
    );

    let wire = login_in_debug(
        |c| c.authenticate(Mechanism::Plain, "bob", "topSecret"),
        "topSecret",
        DIGEST,
        &[b"+OK\r\n"],
    );
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        format!(
            "CAPA\r\nAUTH PLAIN {}\r\nSTAT\r\nQUIT\r\n",
            plain("topSecret")
        )
    );
    let wire = login_in_debug(
        |c| c.authenticate(Mechanism::Plain, "bob", &long),
        &long,
        DIGEST,
        &[b"+ \r\n", b"+OK\r\n"],
    );
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        format!("CAPA\r\nAUTH PLAIN\r\n{}\r\nSTAT\r\nQUIT\r\n", plain(&long))
    );
}

#[test]
fn errors_are_errors_and_peer_trouble_is_no_usage_error() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_error::<postamt_pop3::ClientError>();
    is_error::<ClientUsageError>();
    assert_eq!(
        postamt_pop3::ClientError::Unexpected(postamt_pop3::Request::Stat).to_string(),
        "unexpected response to STAT"
    );

    // The server closes with commands queued: the caller's next calls are
    // moot, not mistakes.
    let (mut c, now) = ready(b"+OK\r\nUSER\r\n.\r\n");
    c.login_user("bob", "pw").unwrap();
    c.receive(now, b"+OK\r\n");
    c.receive_eof(now);
    assert_eq!(c.login_user("bob", "pw"), Ok(()));
    assert_eq!(c.stat(), Ok(()));
    assert_eq!(c.quit(), Ok(()));
    assert_eq!(c.tls_established(), Ok(()));
    // What was said before the end is still handed over (the bytes sent do
    // not depend on how the input was split); the moot calls added nothing.
    let mut wire = Vec::new();
    c.poll_transmit(&mut wire);
    assert_eq!(String::from_utf8_lossy(&wire), "USER bob\r\nPASS pw\r\n");
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Closed(Some(
            postamt_pop3::ClientError::ConnectionClosed
        )))
    );
    assert!(c.is_closed());

    // A command after QUIT is the caller's own mistake.
    let (mut c, _) = ready(b"+OK\r\nUSER\r\n.\r\n");
    c.quit().unwrap();
    assert_eq!(c.quit(), Err(ClientUsageError::Quitting));
    assert_eq!(c.login_user("bob", "pw"), Err(ClientUsageError::Quitting));
}

#[test]
fn implicit_tls_is_tls_from_the_start() {
    let now = Instant::now();
    let mut config = ClientConfig::new();
    config.implicit_tls = true;
    let mut c = ClientSession::new(config, now);
    assert!(c.is_tls());
    c.receive(now, b"+OK hi\r\n+OK\r\nSTLS\r\nUSER\r\n.\r\n");
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(caps)) if caps.stls));
    assert_eq!(c.stls(), Err(ClientUsageError::NotOffered));
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    assert_eq!(take(&mut c), b"CAPA\r\n");
}

#[test]
fn injected_plaintext_is_dropped_however_split() {
    let input: &[u8] = b"+OK begin TLS\r\n+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n";
    for cut in 0..=input.len() {
        for cut2 in cut..=input.len() {
            let (mut c, now) = ready(b"+OK\r\nSTLS\r\n.\r\n");
            c.stls().unwrap();
            assert_eq!(take(&mut c), b"STLS\r\n");
            for piece in [&input[..cut], &input[cut..cut2], &input[cut2..]] {
                c.receive(now, piece);
            }
            assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
            assert_eq!(c.poll_event(), None);
            c.tls_established().unwrap();
            assert_eq!(take(&mut c), b"CAPA\r\n");
            c.receive(now, b"+OK\r\nUSER\r\n.\r\n");
            let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
                panic!("cut {cut} {cut2}")
            };
            assert!(caps.sasl.is_empty() && caps.user);
        }
    }
}

#[test]
fn login_arguments_are_checked_before_anything_goes_out() {
    let (mut c, _) = ready(b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n");
    let refused =
        |r: Result<(), ClientUsageError>| assert_eq!(r, Err(ClientUsageError::InvalidArgument));
    refused(c.login_user("", "x"));
    refused(c.login_user("bob smith", "x"));
    refused(c.login_user("bob\t", "x"));
    refused(c.login_user(&"u".repeat(249), "x"));
    refused(c.login_user("bob", ""));
    refused(c.login_user("bob", "x\0y"));
    refused(c.login_user("bob", &"p".repeat(249)));
    // `APOP name digest` CRLF: 255 octets with a 215-octet name.
    refused(c.login_apop(&"u".repeat(216), "secret"));
    refused(c.login_apop("bob smith", "secret"));
    refused(c.authenticate(Mechanism::Plain, "", "x"));
    refused(c.authenticate(Mechanism::Plain, "bob", ""));
    refused(c.authenticate(Mechanism::Plain, "bob\0anna", "x"));
    assert!(take(&mut c).is_empty());
    c.login_apop(&"u".repeat(215), "secret").unwrap();
    let line = take(&mut c);
    assert_eq!(line.len(), 255);
    assert!(line.starts_with(b"APOP uuu") && line.ends_with(b"\r\n"));
}
