//! The SMTP client against scripted server bytes: what the `Session`
//! contract promises (no command between the 220 to STARTTLS and the
//! handshake; closed means closed and drained) and that no secret reaches
//! `Debug`.

use std::time::Instant;

use bytes::Bytes;
use postamt_smtp::{
    ClientConfig, ClientEvent, ClientSession, ClientUsageError, Envelope, ForwardPath, Mechanism,
    ReversePath,
};
use postamt_wire::Session;

fn envelope() -> Envelope {
    Envelope::new(ReversePath::Mailbox("anna@kolleg.de".parse().unwrap()))
        .to(ForwardPath::Mailbox("bob@kolleg.de".parse().unwrap()))
}

fn take(c: &mut ClientSession) -> Vec<u8> {
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    out
}

/// A client that has said EHLO and seen `ehlo` (a whole 250 reply).
fn ready(ehlo: &[u8]) -> (ClientSession, Instant) {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    c.receive(now, b"220 mx.kolleg.de ESMTP\r\n");
    assert_eq!(take(&mut c), b"EHLO client.example\r\n");
    c.receive(now, ehlo);
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    (c, now)
}

#[test]
fn nothing_goes_out_between_the_starttls_reply_and_the_handshake() {
    let (mut c, now) =
        ready(b"250-mx.kolleg.de\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    c.starttls().unwrap();
    assert_eq!(take(&mut c), b"STARTTLS\r\n");
    // Before the 220 too: nothing may be pipelined behind STARTTLS.
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    // The 220, and plaintext a man in the middle appended to it.
    c.receive(now, b"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n");
    assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(
        c.send_message(envelope(), Bytes::from_static(b"hi\r\n")),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(
        c.authenticate(Mechanism::Plain, "anna", "geheim"),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(c.starttls(), Err(ClientUsageError::Busy));
    assert_eq!(
        c.start_message(envelope(), None),
        Err(ClientUsageError::Busy)
    );
    c.receive(now, b"221 injected too\r\n");
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
    assert_eq!(take(&mut c), b"EHLO client.example\r\n");
    c.receive(now, b"250-mx.kolleg.de\r\n250 AUTH PLAIN LOGIN\r\n");
    let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
        panic!()
    };
    assert!(!caps.starttls && caps.auth == ["PLAIN", "LOGIN"]);
    assert_eq!(c.starttls(), Err(ClientUsageError::NotOffered));
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
    let new = || ClientSession::new(ClientConfig::new("client.example"), now);
    let greeting = Peer::Says(b"220 mx ESMTP\r\n");
    let ehlo = Peer::Says(b"250-mx\r\n250 PIPELINING\r\n");

    // After QUIT and its 221.
    let (events, wire) = drive(
        new(),
        now,
        &[greeting, ehlo, Peer::Says(b"221 bye\r\n")],
        |c| c.quit().unwrap(),
    );
    assert!(matches!(
        events.as_slice(),
        [ClientEvent::Ready(_), ClientEvent::Closed(None)]
    ));
    assert_eq!(wire, b"EHLO client.example\r\nQUIT\r\n");

    // After QUIT, the server closing instead of saying 221 is no error.
    let (events, _) = drive(
        new(),
        now,
        &[Peer::Says(b"220 mx\r\n250 mx\r\n"), Peer::Closes],
        |c| c.quit().unwrap(),
    );
    assert_eq!(events.last(), Some(&ClientEvent::Closed(None)));

    // A refused greeting, the connection lost, a silent server.
    let (events, _) = drive(new(), now, &[Peer::Says(b"554 no\r\n")], |_| {});
    assert!(matches!(
        events.as_slice(),
        [ClientEvent::Closed(Some(postamt_smtp::ClientError::Refused(r)))] if r.code() == 554
    ));
    let (events, _) = drive(
        new(),
        now,
        &[Peer::Says(b"220 mx\r\n250 mx\r\n"), Peer::Closes],
        |c| {
            c.send_message(envelope(), Bytes::from_static(b"hi\r\n"))
                .unwrap()
        },
    );
    let [
        ClientEvent::Ready(_),
        ClientEvent::Done(report),
        ClientEvent::Closed(Some(e)),
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(*e, postamt_smtp::ClientError::ConnectionClosed);
    assert_eq!(report.outcome, Err(postamt_smtp::Failure::ConnectionLost));
    let (events, _) = drive(
        new(),
        now,
        &[Peer::Says(b"220 mx\r\n"), Peer::Silent],
        |_| {},
    );
    assert_eq!(
        events,
        [ClientEvent::Closed(Some(
            postamt_smtp::ClientError::Timeout
        ))]
    );
}

/// What must never show in `Debug`: the password, its base64, and PLAIN's
/// base64 blob (or a good part of it).
fn assert_no_secret(debug: &str, password: &str) {
    let b64 = postamt_wire::sasl::encode_base64(password.as_bytes());
    let plain = postamt_wire::sasl::encode_plain(None, "bob", password);
    for needle in ["topSecret", "dG9wU2VjcmV0", &b64, &plain, &plain[..16]] {
        assert!(!debug.contains(needle), "{needle} in {debug}");
    }
}

/// Runs one login with `password` against `replies` (one server reply per
/// step, fed byte by byte), printing the session after every call and every
/// byte; returns what the client sent.
fn login_in_debug(mechanism: Mechanism, password: &str, replies: &[&[u8]]) -> Vec<u8> {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    let mut wire = Vec::new();
    let check = |c: &ClientSession| assert_no_secret(&format!("{c:?} {c:#?}"), password);
    for byte in b"220 mx\r\n250-mx\r\n250 AUTH PLAIN LOGIN\r\n" {
        c.receive(now, &[*byte]);
        check(&c);
    }
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    c.poll_transmit(&mut wire);
    c.authenticate(mechanism, "bob", password).unwrap();
    check(&c);
    for reply in replies {
        for byte in *reply {
            c.receive(now, &[*byte]);
            check(&c);
        }
        while let Some(e) = c.poll_event() {
            assert_no_secret(&format!("{e:?}"), password);
            assert_eq!(e, ClientEvent::Authenticated);
            check(&c);
        }
        c.poll_transmit(&mut wire);
        check(&c);
    }
    c.quit().unwrap();
    check(&c);
    c.receive(now, b"221 bye\r\n");
    check(&c);
    assert_eq!(c.poll_event(), Some(ClientEvent::Closed(None)));
    check(&c);
    wire
}

#[test]
fn no_secret_in_debug_through_every_auth_kind() {
    let long = format!("topSecret{}", "y".repeat(400));
    let b64 = |s: &str| postamt_wire::sasl::encode_base64(s.as_bytes());
    let plain = |p: &str| postamt_wire::sasl::encode_plain(None, "bob", p);

    let wire = login_in_debug(Mechanism::Plain, "topSecret", &[b"235 2.7.0 ok\r\n"]);
    assert!(
        String::from_utf8(wire)
            .unwrap()
            .ends_with(&format!("AUTH PLAIN {}\r\n", plain("topSecret")))
    );

    let wire = login_in_debug(Mechanism::Plain, &long, &[b"334 \r\n", b"235 ok\r\n"]);
    assert!(
        String::from_utf8(wire)
            .unwrap()
            .ends_with(&format!("AUTH PLAIN\r\n{}\r\n", plain(&long)))
    );

    let wire = login_in_debug(
        Mechanism::Login,
        "topSecret",
        &[
            b"334 VXNlcm5hbWU6\r\n",
            b"334 UGFzc3dvcmQ6\r\n",
            b"235 ok\r\n",
        ],
    );
    assert!(String::from_utf8(wire).unwrap().ends_with(&format!(
        "AUTH LOGIN\r\n{}\r\n{}\r\n",
        b64("bob"),
        b64("topSecret")
    )));
}

#[test]
fn errors_are_errors_and_peer_trouble_is_no_usage_error() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_error::<postamt_smtp::Failure>();
    is_error::<postamt_smtp::ClientError>();
    is_error::<ClientUsageError>();
    assert_eq!(
        postamt_smtp::Failure::ConnectionLost.to_string(),
        "the connection was lost before the transaction completed"
    );
    assert_eq!(
        postamt_smtp::Failure::TooBig {
            size: 11,
            limit: 10
        }
        .to_string(),
        "message of 11 octets exceeds the server's limit of 10"
    );

    // A reply nobody asked for is that, not a made-up parse error.
    let (mut c, now) = ready(b"250 mx\r\n");
    c.receive(now, b"250 surprise\r\n");
    let Some(ClientEvent::Closed(Some(postamt_smtp::ClientError::Unsolicited(r)))) = c.poll_event()
    else {
        panic!()
    };
    assert_eq!(r.code(), 250);

    // The server closes while the caller streams: the caller's next calls
    // are moot, not mistakes.
    let (mut c, now) = ready(b"250 mx\r\n");
    c.start_message(envelope(), None).unwrap();
    assert_eq!(take(&mut c), b"MAIL FROM:<anna@kolleg.de>\r\n");
    c.receive(now, b"250 ok\r\n");
    assert_eq!(take(&mut c), b"RCPT TO:<bob@kolleg.de>\r\n");
    c.receive(now, b"250 ok\r\n");
    assert_eq!(take(&mut c), b"DATA\r\n");
    c.receive(now, b"354 go\r\n");
    assert_eq!(c.poll_event(), Some(ClientEvent::SendMessage));
    c.message_chunk(b"Subject: x\r\n").unwrap();
    c.receive_eof(now);
    assert!(!c.wants_message_bytes());
    assert_eq!(c.message_chunk(b"more\r\n"), Ok(()));
    assert_eq!(c.end_message(), Ok(()));
    assert_eq!(c.quit(), Ok(()));
    assert_eq!(c.send_message(envelope(), Bytes::from_static(b"x")), Ok(()));
    assert_eq!(c.tls_established(), Ok(()));
    // The chunk given before the end is still handed over; the moot calls
    // after it added nothing.
    assert_eq!(take(&mut c), b"Subject: x\r\n");
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        matches!(
            events.as_slice(),
            [ClientEvent::Done(r), ClientEvent::Closed(Some(postamt_smtp::ClientError::ConnectionClosed))]
                if r.outcome == Err(postamt_smtp::Failure::ConnectionLost)
        ),
        "{events:?}"
    );
    assert!(c.is_closed());

    // A second QUIT is the caller's own mistake.
    let (mut c, _) = ready(b"250 mx\r\n");
    c.quit().unwrap();
    assert_eq!(c.quit(), Err(ClientUsageError::Quitting));
    assert_eq!(
        c.start_message(envelope(), None),
        Err(ClientUsageError::Quitting)
    );
}

#[test]
fn binarymime_goes_as_given_and_only_by_bdat() {
    let binary = || {
        let mut e = envelope();
        e.params.body = Some(postamt_smtp::Body::BinaryMime);
        e
    };
    let (mut c, _) = ready(b"250-mx\r\n250 CHUNKING\r\n");
    assert_eq!(
        c.send_message(binary(), &b"\x00\n\r"[..]),
        Err(ClientUsageError::NotOffered)
    );
    let (mut c, now) = ready(b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 BINARYMIME\r\n");
    c.send_message(binary(), &b"\x00bare\n\r"[..]).unwrap();
    assert_eq!(
        take(&mut c),
        b"MAIL FROM:<anna@kolleg.de> BODY=BINARYMIME\r\nRCPT TO:<bob@kolleg.de>\r\nBDAT 7 LAST\r\n\x00bare\n\r"
    );
    c.receive(now, b"250 ok\r\n250 ok\r\n250 stored\r\n");
    assert!(matches!(c.poll_event(), Some(ClientEvent::Done(r)) if r.outcome.is_ok()));

    // Not binary: streamed through BDAT, repaired, each size what went.
    let mut config = ClientConfig::new("client.example");
    config.prefer_chunking = true;
    let mut c = ClientSession::new(config, now);
    c.receive(
        now,
        b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
    );
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    take(&mut c);
    c.start_message(envelope(), None).unwrap();
    assert_eq!(c.poll_event(), Some(ClientEvent::SendMessage));
    c.message_chunk(b"a\nb\r").unwrap();
    c.message_chunk(b"\nc").unwrap();
    c.end_message().unwrap();
    assert_eq!(
        take(&mut c),
        b"MAIL FROM:<anna@kolleg.de>\r\nRCPT TO:<bob@kolleg.de>\r\nBDAT 5\r\na\r\nb\rBDAT 2\r\n\ncBDAT 2 LAST\r\n\r\n"
    );
}

#[test]
fn implicit_tls_is_tls_from_the_start() {
    let now = Instant::now();
    let mut config = ClientConfig::new("client.example");
    config.implicit_tls = true;
    let mut c = ClientSession::new(config, now);
    assert!(c.is_tls());
    c.receive(now, b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(caps)) if caps.starttls));
    assert_eq!(c.starttls(), Err(ClientUsageError::NotOffered));
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    assert_eq!(take(&mut c), b"EHLO client.example\r\n");
}

#[test]
fn injected_plaintext_is_dropped_however_split() {
    let input: &[u8] = b"220 2.0.0 go ahead\r\n250-mx\r\n250 AUTH PLAIN\r\n";
    for cut in 0..=input.len() {
        for cut2 in cut..=input.len() {
            let (mut c, now) = ready(b"250-mx\r\n250 STARTTLS\r\n");
            c.starttls().unwrap();
            assert_eq!(take(&mut c), b"STARTTLS\r\n");
            for piece in [&input[..cut], &input[cut..cut2], &input[cut2..]] {
                c.receive(now, piece);
            }
            assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
            assert_eq!(c.poll_event(), None);
            c.tls_established().unwrap();
            assert_eq!(take(&mut c), b"EHLO client.example\r\n");
            c.receive(now, b"250 mx\r\n");
            let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
                panic!("cut {cut} {cut2}")
            };
            assert!(caps.auth.is_empty());
        }
    }
}

/// One session, three transactions, as a forwarder reusing a connection
/// runs them: a delivered one, a refused one (the session says RSET on
/// its own), and one more after it; each starts right after the last
/// one's report (with PIPELINING the next MAIL follows the RSET unanswered).
/// Every reply is split at every point: the same wire, the same reports.
#[test]
fn several_transactions_follow_one_another_on_one_session_however_split() {
    for pipelining in [false, true] {
        let ehlo: &[u8] = if pipelining {
            b"250-mx.kolleg.de\r\n250 PIPELINING\r\n"
        } else {
            b"250 mx.kolleg.de\r\n"
        };
        // A real server's replies, one per command, in order; with
        // PIPELINING the refused transaction's DATA went out too.
        let mut replies: Vec<&[u8]> = vec![
            b"250 2.1.0 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"354 go\r\n",
            b"250 2.0.0 one\r\n",
            b"250 2.1.0 ok\r\n",
            b"550-5.1.1 no such\r\n550 5.1.1 user\r\n",
        ];
        if pipelining {
            replies.push(b"554 5.5.1 no valid recipients\r\n");
        }
        replies.extend([
            &b"250 2.0.0 reset\r\n"[..],
            b"250 2.1.0 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"354 go\r\n",
            b"250 2.0.0 three\r\n",
        ]);
        let longest = replies.iter().map(|r| r.len()).max().unwrap();
        let mut first: Option<(Vec<u8>, Vec<String>)> = None;
        for cut in 0..=longest {
            let (mut c, now) = ready(ehlo);
            let mut sent = 1;
            c.send_message(envelope(), Bytes::from_static(b"Subject: 1\r\n\r\none\r\n"))
                .unwrap();
            let mut wire = take(&mut c);
            let mut reports = Vec::new();
            for reply in &replies {
                let at = cut.min(reply.len());
                for piece in [&reply[..at], &reply[at..]] {
                    c.receive(now, piece);
                    while let Some(e) = c.poll_event() {
                        let ClientEvent::Done(report) = e else {
                            panic!("{e:?}")
                        };
                        reports.push(format!(
                            "{:?} accepted {} refused {}",
                            report.outcome.as_ref().map(|r| r.code()),
                            report.accepted.len(),
                            report.refused.len()
                        ));
                        if sent < 3 {
                            sent += 1;
                            let text = format!("Subject: {sent}\r\n\r\nmore\r\n");
                            c.send_message(envelope(), text.into_bytes()).unwrap();
                        }
                    }
                    wire.extend(take(&mut c));
                }
            }
            assert_eq!(c.poll_timeout(), None, "nothing awaited at the end");
            assert!(!c.is_closed());
            match &first {
                None => first = Some((wire, reports)),
                Some((w, r)) => {
                    assert_eq!(&wire, w, "cut at {cut}");
                    assert_eq!(&reports, r, "cut at {cut}");
                }
            }
        }
        let (wire, reports) = first.unwrap();
        let envelope = "MAIL FROM:<anna@kolleg.de>\r\nRCPT TO:<bob@kolleg.de>\r\n";
        let middle = if pipelining {
            "DATA\r\nRSET\r\n"
        } else {
            "RSET\r\n"
        };
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            format!(
                "{envelope}DATA\r\nSubject: 1\r\n\r\none\r\n.\r\n\
                 {envelope}{middle}\
                 {envelope}DATA\r\nSubject: 3\r\n\r\nmore\r\n.\r\n"
            ),
            "pipelining {pipelining}"
        );
        assert_eq!(
            reports,
            [
                "Ok(250) accepted 1 refused 0",
                "Err(NoRecipients) accepted 0 refused 1",
                "Ok(250) accepted 1 refused 0",
            ],
            "pipelining {pipelining}"
        );
    }
}
