//! The driving contract: usage errors, time, bounded memory, backpressure while
//! streaming a large message, secrets kept out of `Debug`.

use std::time::{Duration, Instant};

use postamt_pop3::{
    Decision, Event, Maildrop, MessageFlow, MultilineDecoder, Response, ServerConfig,
    ServerSession, Session, UniqueId, UsageError,
};
use postamt_wire::Decoded;
use postamt_wire::sasl::Mechanism;

fn take(session: &mut ServerSession) -> String {
    let mut out = Vec::new();
    while session.poll_transmit(&mut out) > 0 {}
    String::from_utf8_lossy(&out).into_owned()
}

fn bob_maildrop(sizes: &[u64]) -> Maildrop {
    let mut maildrop = Maildrop::new();
    for (i, size) in sizes.iter().enumerate() {
        maildrop
            .push(*size, UniqueId::new(format!("uid-{i}")).unwrap())
            .unwrap();
    }
    maildrop
}

/// A session logged in as bob with messages of the given sizes.
fn logged_in(config: ServerConfig, now: Instant, sizes: &[u64]) -> ServerSession {
    let mut s = ServerSession::new(config, now);
    s.receive(now, b"USER bob\r\nPASS topSecret\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Login { .. })));
    s.accept_login(bob_maildrop(sizes)).unwrap();
    take(&mut s);
    s
}

#[test]
fn decisions_without_a_pending_one_are_usage_errors() {
    let now = Instant::now();
    let mut s = ServerSession::new(plaintext(), now);
    assert_eq!(
        s.accept_login(Maildrop::new()),
        Err(UsageError::NoDecisionPending)
    );
    assert_eq!(s.reject_login(), Err(UsageError::NoDecisionPending));
    assert_eq!(s.message_chunk(b"x"), Err(UsageError::NoDecisionPending));
    assert_eq!(s.message_end(), Err(UsageError::NoDecisionPending));
    assert_eq!(s.commit_done(), Err(UsageError::NoDecisionPending));
    assert_eq!(s.tls_established(), Err(UsageError::NoDecisionPending));
    s.receive(now, b"USER bob\r\nPASS x\r\n");
    // The event has not been taken yet: nothing is pending for the caller.
    assert_eq!(s.reject_login(), Err(UsageError::NoDecisionPending));
    let event = s.poll_event().unwrap();
    assert!(matches!(event, Event::Login { .. }));
    assert_eq!(
        s.commit_done(),
        Err(UsageError::OtherDecisionPending(Decision::Login))
    );
    assert_eq!(
        s.message_end(),
        Err(UsageError::OtherDecisionPending(Decision::Login))
    );
    assert_eq!(
        s.reject_login_with(Response::ok("no")),
        Err(UsageError::NotAnError)
    );
    s.reject_login().unwrap();
    assert_eq!(s.reject_login(), Err(UsageError::NoDecisionPending));
    take(&mut s);
    s.receive(now, b"USER bob\r\nPASS y\r\n");
    take(&mut s);
    assert!(matches!(s.poll_event(), Some(Event::Login { .. })));
    s.receive_eof(now);
    assert!(s.is_closed());
    // The peer is gone: the answer is moot, not a mistake, and writes nothing.
    assert_eq!(s.accept_login(Maildrop::new()), Ok(()));
    assert_eq!(s.reject_login(), Ok(()));
    assert_eq!(take(&mut s), "");
    // No handshake was ever due: still the caller's mistake.
    assert_eq!(s.tls_established(), Err(UsageError::NoDecisionPending));
}

#[test]
fn a_handshake_the_peer_left_during_is_not_a_mistake() {
    let now = Instant::now();
    let mut config = plaintext();
    config.extensions.stls = true;
    let mut s = ServerSession::new(config, now);
    s.receive(now, b"STLS\r\n");
    assert_eq!(s.poll_event(), Some(Event::StartTls));
    s.receive_eof(now);
    assert_eq!(
        take(&mut s),
        "+OK POP3 server ready\r\n+OK Begin TLS negotiation\r\n"
    );
    assert!(s.is_closed());
    assert_eq!(s.tls_established(), Ok(()));
    assert_eq!(take(&mut s), "");
}

#[test]
fn a_loop_on_is_closed_sees_every_byte_and_event() {
    let now = Instant::now();
    let mut s = ServerSession::new(plaintext(), now);
    s.receive(now, b"USER bob\r\nPASS topSecret\r\nDELE 1\r\nQUIT\r\n");
    let mut out = Vec::new();
    let mut events = Vec::new();
    while !s.is_closed() {
        while let Some(event) = s.poll_event() {
            match &event {
                Event::Login { .. } => s.accept_login(bob_maildrop(&[5])).unwrap(),
                Event::Commit { .. } => s.commit_done().unwrap(),
                other => panic!("unexpected {other:?}"),
            }
            events.push(event);
        }
        s.poll_transmit(&mut out);
    }
    assert_eq!(events.len(), 2);
    assert!(matches!(events[1], Event::Commit { .. }));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "+OK POP3 server ready\r\n+OK Now send your password with PASS\r\n\
         +OK Logged in, 1 message (5 octets)\r\n+OK Message deleted\r\n+OK Goodbye\r\n"
    );
}

#[test]
fn plaintext_logins_wait_for_tls_by_default() {
    let now = Instant::now();
    let mut config = ServerConfig::new();
    config.extensions.stls = true;
    config.extensions.sasl = vec![Mechanism::Plain, Mechanism::Login];
    let mut s = ServerSession::with_apop(config, now, "<1.2@h>".parse().unwrap());
    s.receive(
        now,
        b"CAPA\r\nUSER bob\r\nPASS x\r\nAUTH PLAIN\r\nAUTH LOGIN\r\nAPOP bob c4c9334bac560ecc979e58001b3e22fb\r\n",
    );
    assert!(matches!(s.poll_event(), Some(Event::Apop { .. })));
    s.reject_login().unwrap();
    assert_eq!(
        take(&mut s),
        "+OK POP3 server ready <1.2@h>\r\n\
         +OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
         PIPELINING\r\nSTLS\r\nUTF8 USER\r\n.\r\n\
         -ERR Use STLS first\r\n-ERR Use STLS first\r\n-ERR Use STLS first\r\n-ERR Use STLS first\r\n\
         -ERR [AUTH] Invalid user name or password\r\n"
    );
    s.receive(now, b"STLS\r\n");
    assert_eq!(s.poll_event(), Some(Event::StartTls));
    s.tls_established().unwrap();
    s.receive(now, b"CAPA\r\nUSER bob\r\nPASS x\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Login { .. })));
    assert_eq!(
        take(&mut s),
        "+OK Begin TLS negotiation\r\n\
         +OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
         PIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\nUTF8 USER\r\n.\r\n\
         +OK Now send your password with PASS\r\n"
    );
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let now = Instant::now();
    let mut s = ServerSession::new(plaintext(), now);
    s.receive(now, b"USER bob\r\nPASS topSecret\r\n");
    let login = format!("{:?}", s.poll_event().unwrap());
    assert!(
        login.contains("bob") && !login.contains("topSecret"),
        "{login}"
    );
    s.reject_login().unwrap();
    s.receive(now, b"AUTH PLAIN AGJvYgB0b3BTZWNyZXQ=\r\n");
    let auth = format!("{:?}", s.poll_event().unwrap());
    assert!(
        auth.contains("bob") && !auth.contains("topSecret"),
        "{auth}"
    );
    s.reject_login().unwrap();
    let mut s = ServerSession::with_apop(plaintext(), now, "<1.2@h>".parse().unwrap());
    s.receive(now, b"APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n");
    let apop = format!("{:?}", s.poll_event().unwrap());
    assert!(!apop.contains("c4c9334b"), "{apop}");
    assert!(!format!("{s:?}").contains("topSecret"));
}

#[test]
fn inactivity_closes_silently_and_the_timer_waits_for_decisions() {
    let t0 = Instant::now();
    let ten = Duration::from_secs(600);
    let mut s = ServerSession::new(plaintext(), t0);
    take(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + ten));
    s.handle_timeout(t0 + Duration::from_secs(599));
    assert!(!s.is_closed());
    let t1 = t0 + Duration::from_secs(300);
    s.receive(t1, b"USER bob\r\nPASS topSecret\r\n");
    assert_eq!(s.poll_timeout(), None, "the application holds a decision");
    s.handle_timeout(t1 + ten * 3);
    assert!(!s.is_closed());
    let _ = s.poll_event();
    s.accept_login(bob_maildrop(&[10])).unwrap();
    // The decision took its time: the timer restarts at the next call.
    assert_eq!(s.poll_timeout(), Some(t1));
    let t2 = t1 + ten * 3;
    s.handle_timeout(t2);
    assert!(!s.is_closed());
    assert_eq!(s.poll_timeout(), Some(t2 + ten));
    take(&mut s);
    s.handle_timeout(t2 + ten);
    assert!(s.is_closed());
    assert_eq!(take(&mut s), "", "autologout sends nothing (RFC 1939 §3)");
    assert_eq!(s.poll_event(), None, "and commits nothing");
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn pipelined_input_behind_a_decision_is_capped() {
    let now = Instant::now();
    let mut config = plaintext();
    config.limits.max_buffered_input = 20_000;
    let mut s = ServerSession::new(config, now);
    s.receive(now, b"USER bob\r\nPASS topSecret\r\n");
    let flood = b"NOOP\r\n".repeat(10_000);
    s.receive(now, &flood[..19_000]);
    assert!(!s.is_closed());
    assert!(s.buffered_input() <= 20_000);
    s.receive(now, &flood[19_000..]);
    assert!(s.buffered_input() <= 20_000);
    assert!(
        take(&mut s)
            .ends_with("-ERR Too much input without reading responses, closing connection\r\n")
    );
    // Closed, but not drained: the login event is still to be taken.
    assert!(!s.is_closed());
    assert!(matches!(s.poll_event(), Some(Event::Login { .. })));
    assert!(s.is_closed());
    // Answering it now is moot: no error, no output.
    assert_eq!(s.accept_login(Maildrop::new()), Ok(()));
    assert_eq!(take(&mut s), "");
}

#[test]
fn a_flood_of_commands_waits_for_the_output_to_drain() {
    let now = Instant::now();
    let mut config = plaintext();
    config.limits.output_high_water = 4096;
    let mut s = logged_in(config, now, &[1; 500]);
    // Each LIST answers with about 4 KiB; 30 of them would be 120 KiB.
    let flood = b"LIST\r\n".repeat(30);
    s.receive(now, &flood);
    assert!(s.buffered_output() < 4096 + 5000, "{}", s.buffered_output());
    let mut lists = 0;
    let mut out = Vec::new();
    while s.poll_transmit(&mut out) > 0 {
        lists += String::from_utf8_lossy(&out)
            .matches("+OK 500 messages")
            .count();
        out.clear();
        assert!(s.buffered_output() < 4096 + 5000);
    }
    assert_eq!(lists, 30);
}

#[test]
fn a_large_message_streams_through_bounded_memory() {
    let now = Instant::now();
    let mut config = plaintext();
    config.limits.output_high_water = 64 * 1024;
    let mut message = Vec::new();
    let mut i = 0u32;
    while message.len() < 10 * 1024 * 1024 {
        if i.is_multiple_of(7) {
            message.extend_from_slice(b".");
        }
        message.extend_from_slice(format!("line {i} ").as_bytes());
        message.extend_from_slice(b"\xff\xfe of the message text\r\n");
        i += 1;
    }
    let mut s = logged_in(config, now, &[message.len() as u64]);
    s.receive(now, b"RETR 1\r\nQUIT\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Retrieve { .. })));
    let mut decoder = MultilineDecoder::new();
    let mut decoded = Vec::new();
    let mut head = Vec::new();
    let mut offset = 0;
    let mut chunk = 1;
    let mut out = Vec::new();
    let mut ended = false;
    loop {
        while s.wants_message_bytes() {
            if offset == message.len() {
                s.message_end().unwrap();
                ended = true;
                break;
            }
            // Chunk sizes from 1 to about 100 KiB: boundaries fall everywhere.
            chunk = (chunk * 7 + 3) % 100_003 + 1;
            let n = chunk.min(message.len() - offset);
            assert_eq!(
                s.message_chunk(&message[offset..offset + n]),
                Ok(MessageFlow::Continue)
            );
            offset += n;
        }
        assert!(s.buffered_output() <= 64 * 1024 + 100_004 * 2);
        out.clear();
        if s.poll_transmit(&mut out) == 0 {
            break;
        }
        let mut body: &[u8] = &out;
        if head.is_empty() {
            let end = body.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            head = body[..end].to_vec();
            body = &body[end..];
        }
        if !decoder.is_done()
            && let Decoded::Complete { consumed } = decoder.decode(body, &mut decoded)
        {
            assert_eq!(&body[consumed..], b"");
        }
        if ended && decoder.is_done() {
            break;
        }
    }
    assert_eq!(
        String::from_utf8(head).unwrap(),
        format!("+OK {} octets\r\n", message.len())
    );
    assert!(decoder.is_done());
    assert!(decoded == message, "decoded text differs");
    assert!(matches!(s.poll_event(), Some(Event::Commit { .. })));
}

#[test]
fn top_finishes_by_itself() {
    let now = Instant::now();
    let mut s = logged_in(plaintext(), now, &[30]);
    s.receive(now, b"TOP 1 1\r\nNOOP\r\n");
    assert!(matches!(
        s.poll_event(),
        Some(Event::Retrieve { top: Some(1), .. })
    ));
    assert_eq!(
        s.message_chunk(b"A: b\r\n\r\none\r"),
        Ok(MessageFlow::Finished)
    );
    assert!(!s.wants_message_bytes());
    assert_eq!(
        s.message_chunk(b"\ntwo\r\n"),
        Err(UsageError::NoDecisionPending)
    );
    assert_eq!(s.message_end(), Err(UsageError::NoDecisionPending));
    assert_eq!(
        take(&mut s),
        "+OK Top of message follows\r\nA: b\r\n\r\none\r\n.\r\n+OK\r\n"
    );
}

#[test]
fn a_client_leaving_mid_message_makes_the_rest_moot() {
    let now = Instant::now();
    let mut s = logged_in(plaintext(), now, &[30]);
    s.receive(now, b"RETR 1\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Retrieve { .. })));
    assert_eq!(
        s.message_chunk(b"Subject: x\r\n"),
        Ok(MessageFlow::Continue)
    );
    s.receive_eof(now);
    assert!(!s.wants_message_bytes());
    assert_eq!(s.message_chunk(b"more\r\n"), Ok(MessageFlow::Finished));
    assert_eq!(s.message_end(), Ok(()));
    assert_eq!(s.message_unavailable(), Ok(()));
    assert_eq!(take(&mut s), "+OK 30 octets\r\nSubject: x\r\n");
    assert!(s.is_closed());
}

#[test]
fn a_message_that_fails_midway_closes_the_session() {
    let now = Instant::now();
    let mut s = logged_in(plaintext(), now, &[30]);
    s.receive(now, b"RETR 1\r\n");
    let _ = s.poll_event();
    assert_eq!(
        s.message_chunk(b"Subject: x\r\n"),
        Ok(MessageFlow::Continue)
    );
    s.message_unavailable().unwrap();
    assert!(!s.is_closed(), "closed, but its output is not taken yet");
    let out = take(&mut s);
    assert_eq!(out, "+OK 30 octets\r\nSubject: x\r\n", "never a false end");
    assert!(s.is_closed());
}

#[test]
fn stls_discards_everything_until_the_handshake() {
    let now = Instant::now();
    let mut config = plaintext();
    config.extensions.stls = true;
    let mut s = ServerSession::new(config, now);
    s.receive(now, b"STLS\r\nUSER evil\r\n");
    s.receive(now, b"PASS evil\r\n");
    assert_eq!(s.poll_event(), Some(Event::StartTls));
    assert_eq!(s.buffered_input(), 0);
    assert!(!s.is_tls());
    s.tls_established().unwrap();
    assert!(s.is_tls());
    s.receive(now, b"STAT\r\n");
    assert_eq!(
        take(&mut s),
        "+OK POP3 server ready\r\n+OK Begin TLS negotiation\r\n-ERR Log in first with USER and PASS\r\n"
    );
}

#[test]
fn poll_transmit_appends_to_a_non_empty_buffer() {
    let now = Instant::now();
    let mut s = ServerSession::new(plaintext(), now);
    let mut out = b"before|".to_vec();
    assert_eq!(s.poll_transmit(&mut out), 23);
    assert_eq!(out, b"before|+OK POP3 server ready\r\n");
    assert_eq!(s.poll_transmit(&mut out), 0);
}

#[test]
fn sessions_and_events_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<ServerSession>();
    assert_send_sync::<Event>();
    assert_send_sync::<UsageError>();
}

/// The default configuration with USER/PASS and AUTH PLAIN allowed before
/// TLS, as on a classroom network.
fn plaintext() -> ServerConfig {
    let mut config = ServerConfig::new();
    config.login_without_tls = true;
    config
}
