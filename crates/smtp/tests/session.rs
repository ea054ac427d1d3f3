//! The driving contract of `ServerSession`, beyond what transcripts show:
//! decisions hold input back, the 250 waits for the store, limits hold.

use std::time::{Duration, Instant};

use postamt_smtp::{
    AbortReason, Decision, EnhancedCode, Event, Reply, ServerConfig, ServerSession, Session,
    UsageError,
};

fn output(session: &mut ServerSession) -> String {
    let mut out = Vec::new();
    session.poll_transmit(&mut out);
    String::from_utf8(out).unwrap()
}

fn events(session: &mut ServerSession) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn greeted() -> (ServerSession, Instant) {
    let now = Instant::now();
    let mut s = ServerSession::new(ServerConfig::new("mx.example"), now);
    s.receive(now, b"EHLO c.example\r\n");
    events(&mut s);
    output(&mut s);
    (s, now)
}

#[test]
fn a_pending_decision_holds_pipelined_commands_and_replies_stay_in_order() {
    let (mut s, now) = greeted();
    s.receive(
        now,
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n",
    );
    let ev = events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Mail { .. }]), "{ev:?}");
    assert_eq!(s.pending_decision(), Some(Decision::Sender));
    assert_eq!(output(&mut s), "");
    assert_eq!(
        s.poll_timeout(),
        None,
        "no timer while the application decides"
    );
    s.accept().unwrap();
    let ev = events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Rcpt { .. }]), "{ev:?}");
    assert_eq!(output(&mut s), "250 2.1.0 Sender OK\r\n");
    s.reject(Reply::new(450, Some("4.2.1".parse().unwrap()), "Try later"))
        .unwrap();
    assert_eq!(output(&mut s), "450 4.2.1 Try later\r\n250 2.0.0 OK\r\n");
    assert_eq!(s.pending_decision(), None);
}

#[test]
fn the_250_after_data_waits_for_the_store() {
    let (mut s, now) = greeted();
    s.receive(now, b"MAIL FROM:<a@b.example>\r\n");
    events(&mut s);
    s.accept().unwrap();
    s.receive(now, b"RCPT TO:<c@d.example>\r\n");
    events(&mut s);
    s.accept().unwrap();
    s.receive(now, b"DATA\r\n");
    events(&mut s);
    s.receive(now, b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let ev = events(&mut s);
    assert_eq!(
        ev,
        [
            Event::MessageData(bytes::Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n")),
            Event::MessageEnd
        ]
    );
    assert_eq!(
        output(&mut s),
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert!(!s.is_closed(), "QUIT must wait behind the pending message");
    s.accept_with(Reply::new(
        250,
        Some(EnhancedCode::OK),
        "Ok: queued as 4F2A",
    ))
    .unwrap();
    assert_eq!(
        output(&mut s),
        "250 2.0.0 Ok: queued as 4F2A\r\n221 2.0.0 mx.example See you later\r\n"
    );
    assert!(s.is_closed());
}

#[test]
fn decision_methods_check_their_use() {
    let (mut s, now) = greeted();
    assert_eq!(s.accept(), Err(UsageError::NoDecisionPending));
    s.receive(now, b"MAIL FROM:<a@b.example>\r\n");
    events(&mut s);
    assert_eq!(
        s.accept_with(Reply::unknown_user()),
        Err(UsageError::WrongReplyClass(550))
    );
    assert_eq!(
        s.reject(Reply::new(250, None, "fine")),
        Err(UsageError::WrongReplyClass(250))
    );
    assert_eq!(
        s.pending_decision(),
        Some(Decision::Sender),
        "a refused call changes nothing"
    );
    s.accept().unwrap();
    output(&mut s);
    s.receive(now, b"RCPT TO:<c@d.example>\r\n");
    assert!(matches!(events(&mut s).as_slice(), [Event::Rcpt { .. }]));
    s.receive_eof(now);
    assert_eq!(events(&mut s), [Event::Reset]);
    assert_eq!(
        s.pending_decision(),
        None,
        "the peer left: nothing to decide"
    );
    // After the peer left the answer is moot: taken, and nothing is written.
    assert_eq!(s.accept(), Ok(()));
    assert_eq!(s.reject(Reply::auth_failed()), Ok(()));
    assert_eq!(output(&mut s), "");
}

#[test]
fn input_piling_up_behind_a_decision_is_bounded() {
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.limits.max_buffered_input = 1024;
    let mut s = ServerSession::new(config, now);
    s.receive(now, b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n");
    output(&mut s);
    events(&mut s);
    // The application sits on the decision while the client floods.
    for _ in 0..100 {
        s.receive(now, b"NOOP\r\n");
    }
    assert!(!s.is_closed());
    for _ in 0..100 {
        s.receive(now, b"NOOP\r\n");
    }
    assert!(!s.is_closed(), "closed, but the 421 is not taken yet");
    assert_eq!(
        output(&mut s),
        "421 4.7.0 mx.example Too much pipelined input, closing connection\r\n"
    );
    assert_eq!(s.accept(), Ok(()), "the session closed: the answer is moot");
    assert_eq!(output(&mut s), "");
}

#[test]
fn a_partial_command_line_is_never_buffered_past_the_limit() {
    let (mut s, now) = greeted();
    for _ in 0..10_000 {
        s.receive(
            now,
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        );
    }
    assert_eq!(output(&mut s), "");
    s.receive(now, b"\r\nNOOP\r\n");
    assert_eq!(
        output(&mut s),
        "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    );
}

#[test]
fn a_slow_client_is_cut_off_at_the_data_deadline() {
    let (mut s, mut now) = greeted();
    s.receive(now, b"MAIL FROM:<a@b.example>\r\n");
    events(&mut s);
    s.accept().unwrap();
    s.receive(now, b"RCPT TO:<c@d.example>\r\n");
    events(&mut s);
    s.accept().unwrap();
    s.receive(now, b"DATA\r\n");
    events(&mut s);
    output(&mut s);
    // A line a minute keeps the data deadline (3 minutes) moving...
    for _ in 0..10 {
        now += Duration::from_secs(60);
        s.handle_timeout(now);
        s.receive(now, b"line\r\n");
    }
    assert!(!s.is_closed());
    let line_end = now;
    assert_eq!(s.poll_timeout(), Some(line_end + Duration::from_secs(180)));
    // ...single bytes do not: the timer runs per line (a per-record deadline).
    for _ in 0..2 {
        now += Duration::from_secs(60);
        s.handle_timeout(now);
        s.receive(now, b"x");
    }
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, line_end + Duration::from_secs(180));
    // Calling early changes nothing; reaching the deadline closes the session.
    s.handle_timeout(deadline - Duration::from_secs(1));
    assert!(!s.is_closed());
    s.handle_timeout(deadline);
    assert_eq!(
        events(&mut s).last(),
        Some(&Event::MessageAborted(AbortReason::Timeout))
    );
    assert_eq!(
        output(&mut s),
        "421 4.4.2 mx.example Timeout, closing connection\r\n"
    );
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_command_trickling_in_is_cut_off_at_the_command_deadline() {
    let (mut s, mut now) = greeted();
    let start = now;
    for &b in b"NOOP" {
        now += Duration::from_secs(100);
        s.handle_timeout(now);
        s.receive(now, &[b]);
    }
    // 400 s for four bytes: past the 5-minute command timeout, counted from
    // the last complete command.
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(
        output(&mut s),
        "421 4.4.2 mx.example Timeout, closing connection\r\n"
    );
    assert!(s.is_closed());
    assert!(now - start > Duration::from_secs(300));
}

#[test]
fn a_refused_session_says_421_and_closes() {
    let now = Instant::now();
    let mut s = ServerSession::new_refused(
        ServerConfig::new("mx.example"),
        now,
        "Too many connections, try later",
    );
    assert!(!s.is_closed(), "the 421 is still to be sent");
    assert_eq!(
        output(&mut s),
        "421 mx.example Too many connections, try later\r\n"
    );
    assert!(s.is_closed());
    s.receive(now, b"EHLO c.example\r\n");
    assert_eq!(output(&mut s), "");
}

#[test]
fn expects_sasl_response_marks_secret_lines() {
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.login_without_tls = true;
    let mut s = ServerSession::new(config, now);
    s.receive(now, b"EHLO c.example\r\nAUTH LOGIN\r\n");
    assert!(s.expects_sasl_response());
    s.receive(now, b"YW5uYQ==\r\n");
    assert!(s.expects_sasl_response());
    s.receive(now, b"Z2VoZWlt\r\n");
    assert!(!s.expects_sasl_response());
    let auth = events(&mut s).pop().unwrap();
    let Event::Auth { credentials, .. } = auth else {
        panic!("{auth:?}")
    };
    assert!(
        !format!("{credentials:?}").contains("geheim"),
        "password in Debug output"
    );
    s.reject(Reply::auth_failed()).unwrap();
    assert!(output(&mut s).ends_with("535 5.7.8 Authentication credentials invalid\r\n"));
    assert!(!s.is_authenticated());
}

/// Found by fuzzing: which rule a message broke, and so the reply, must not
/// depend on where the input was cut.
#[test]
fn the_first_broken_rule_decides_the_reply_however_split() {
    let mut input = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1001));
    let cut = input.len();
    input.extend_from_slice(b"\nmore\r\n.\r\nNOOP\r\n");
    let run = |pieces: &[&[u8]]| {
        let (mut s, now) = greeted();
        let mut data = Vec::new();
        let mut aborted = None;
        for piece in pieces {
            s.receive(now, piece);
            while let Some(e) = s.poll_event() {
                match e {
                    Event::Mail { .. } | Event::Rcpt { .. } => s.accept().unwrap(),
                    Event::MessageData(b) => data.extend_from_slice(&b),
                    Event::MessageAborted(r) => aborted = Some(r),
                    _ => {}
                }
            }
        }
        (output(&mut s), data, aborted)
    };
    let whole = run(&[&input]);
    assert_eq!(whole, run(&[&input[..cut], &input[cut..]]));
    assert_eq!(whole.2, Some(AbortReason::LineTooLong));
    assert_eq!(
        whole.1.len(),
        999,
        "the octets before the one that made the line too long"
    );
    assert!(whole.0.ends_with(
        "554 5.6.0 Message refused: a line is longer than 1000 octets\r\n250 2.0.0 OK\r\n"
    ));
}

#[test]
fn one_large_read_behind_a_decision_is_kept_and_processed() {
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.limits.max_buffered_input = 1024;
    let mut s = ServerSession::new(config, now);
    // One read holds the whole pipeline, a 200 KiB BDAT chunk included: that
    // is the caller's read size, not input that piled up while waiting.
    let mut read = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 204800 LAST\r\n".to_vec();
    // 2048 lines of 100 octets: text lines under the limit, as under DATA.
    for _ in 0..2048 {
        read.extend(std::iter::repeat_n(b'z', 98));
        read.extend_from_slice(b"\r\n");
    }
    read.extend_from_slice(b"QUIT\r\n");
    s.receive(now, &read);
    assert!(!s.is_closed());
    let mut stored = 0;
    loop {
        let Some(e) = s.poll_event() else { break };
        match e {
            Event::Mail { .. } | Event::Rcpt { .. } | Event::MessageEnd => s.accept().unwrap(),
            Event::MessageData(b) => stored += b.len(),
            _ => {}
        }
    }
    assert_eq!(stored, 204_800);
    let out = output(&mut s);
    assert!(
        out.ends_with(
            "250 2.0.0 Message accepted for delivery\r\n221 2.0.0 mx.example See you later\r\n"
        ),
        "{out}"
    );
}

/// RFC 3207 §5: between the 220 to STARTTLS and the end of the handshake the
/// session obeys nothing, so plaintext injected there has no effect.
#[test]
fn starttls_waits_for_the_handshake_and_discards_what_came_before() {
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.extensions.starttls = true;
    let mut s = ServerSession::new(config, now);
    assert_eq!(s.tls_established(), Err(UsageError::NoHandshakeDue));
    s.receive(now, b"EHLO c.example\r\nSTARTTLS\r\nEHLO x\r\n");
    assert_eq!(
        events(&mut s),
        [
            Event::Hello {
                kind: postamt_smtp::Hello::Ehlo,
                domain: "c.example".parse().unwrap()
            },
            Event::StartTls
        ]
    );
    assert!(output(&mut s).ends_with("250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"));
    // Fed before the caller says the handshake is done: no reply, no event.
    s.receive(now, b"EHLO x\r\nAUTH PLAIN AGFubmEAZ2VoZWlt\r\n");
    s.receive(now, b"NOOP\r\n");
    assert_eq!(events(&mut s), []);
    assert_eq!(output(&mut s), "");
    assert!(!s.is_tls());
    assert_eq!(
        s.poll_timeout(),
        None,
        "the handshake is the caller's to time"
    );
    s.tls_established().unwrap();
    assert!(s.is_tls());
    assert_eq!(s.hello(), None, "back in the just-greeted state");
    assert!(!s.is_authenticated());
    assert_eq!(s.tls_established(), Err(UsageError::NoHandshakeDue));
    s.receive(now, b"EHLO c.example\r\n");
    let out = output(&mut s);
    assert!(out.ends_with("250 AUTH PLAIN LOGIN\r\n"), "{out}");
    assert!(!out.contains("STARTTLS"), "{out}");
}

/// `is_closed` means closed and drained: a loop on it sees every event and
/// every byte, the last ones included.
#[test]
fn a_loop_on_is_closed_loses_nothing() {
    let (mut s, now) = greeted();
    s.receive(now, b"MAIL FROM:<a@b.example>\r\n");
    events(&mut s);
    s.accept().unwrap();
    s.receive(now, b"QUIT\r\n");
    let mut seen = Vec::new();
    let mut out = Vec::new();
    while !s.is_closed() {
        while let Some(e) = s.poll_event() {
            seen.push(e);
        }
        s.poll_transmit(&mut out);
    }
    assert_eq!(seen, [Event::Reset]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "250 2.1.0 Sender OK\r\n221 2.0.0 mx.example See you later\r\n"
    );
    assert_eq!(s.poll_transmit(&mut Vec::new()), 0);
}

/// HELP is a command, not an extension: the EHLO reply ends with whatever
/// keyword comes last, and with none it is the greeting line alone.
#[test]
fn the_ehlo_reply_ends_with_its_last_keyword() {
    let now = Instant::now();
    let ehlo = |config: ServerConfig| {
        let mut s = ServerSession::new(config, now);
        output(&mut s);
        s.receive(now, b"EHLO c.example\r\n");
        output(&mut s)
    };
    let mut config = ServerConfig::new("mx.example");
    let ext = &mut config.extensions;
    ext.pipelining = false;
    ext.size = false;
    ext.eight_bit_mime = false;
    ext.smtputf8 = false;
    ext.enhanced_status_codes = false;
    ext.chunking = false;
    ext.dsn = false;
    assert_eq!(ehlo(config.clone()), "250 mx.example Hello c.example\r\n");
    config.extensions.pipelining = true;
    assert_eq!(
        ehlo(config.clone()),
        "250-mx.example Hello c.example\r\n250 PIPELINING\r\n"
    );
    config.login_without_tls = true;
    assert_eq!(
        ehlo(config),
        "250-mx.example Hello c.example\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"
    );
}

/// Secrets never reach `Debug`: the session is printed after every single
/// byte of three AUTH exchanges (PLAIN with an initial response, PLAIN after
/// a 334, LOGIN user then password), pipelined and not, and neither the
/// password nor any base64 form of it may show, as text or as a byte list.
#[test]
fn debug_output_never_shows_the_password() {
    let secrets: Vec<String> = ["geheim", "Z2VoZWlt", "AGFubmEAZ2VoZWlt"]
        .iter()
        .flat_map(|s| {
            let bytes = format!("{:?}", s.as_bytes());
            [s.to_string(), bytes.trim_matches(['[', ']']).to_string()]
        })
        .collect();
    let exchanges: [&[u8]; 4] = [
        b"EHLO c.example\r\nAUTH PLAIN AGFubmEAZ2VoZWlt\r\nQUIT\r\n",
        b"EHLO c.example\r\nAUTH PLAIN\r\nAGFubmEAZ2VoZWlt\r\nQUIT\r\n",
        b"EHLO c.example\r\nAUTH LOGIN\r\nYW5uYQ==\r\nZ2VoZWlt\r\nQUIT\r\n",
        // Refused, so the second try waits in the buffer behind the decision.
        b"EHLO c.example\r\nAUTH PLAIN AGFubmEAZ2VoZWlt\r\nAUTH PLAIN AGFubmEAZ2VoZWlt\r\nQUIT\r\n",
    ];
    for (n, input) in exchanges.iter().enumerate() {
        let now = Instant::now();
        let mut config = ServerConfig::new("mx.example");
        config.login_without_tls = true;
        let mut s = ServerSession::new(config, now);
        let mut auths = 0;
        let check = |s: &ServerSession, at: usize| {
            let shown = format!("{s:?}");
            for secret in &secrets {
                assert!(
                    !shown.contains(secret.as_str()),
                    "exchange {n}, byte {at}: {secret:?} in {shown}"
                );
            }
        };
        for (at, byte) in input.iter().enumerate() {
            s.receive(now, std::slice::from_ref(byte));
            check(&s, at);
            // The credentials wait in the queued event: print it there too.
            let mut pending = Vec::new();
            while let Some(e) = s.poll_event() {
                check(&s, at);
                pending.push(e);
            }
            for e in pending {
                let shown = format!("{e:?}");
                assert!(!shown.contains("geheim"), "{shown}");
                if let Event::Auth { credentials, .. } = e {
                    assert_eq!(credentials.password.expose(), "geheim");
                    auths += 1;
                    if n == 3 && auths == 1 {
                        // Let the pipelined second try pile up first.
                        check(&s, at);
                        s.reject(Reply::auth_failed()).unwrap();
                    } else {
                        s.accept().unwrap();
                    }
                }
                check(&s, at);
            }
        }
        assert_eq!(auths, if n == 3 { 2 } else { 1 }, "exchange {n}");
        // All at once: what follows the first AUTH waits in the buffer.
        let mut whole = ServerSession::new(s.config().clone(), now);
        whole.receive(now, input);
        check(&whole, input.len());
        let out = output(&mut s);
        assert!(
            out.ends_with("221 2.0.0 mx.example See you later\r\n"),
            "{out}"
        );
    }
}

#[test]
fn input_mode_says_what_is_read_next() {
    use postamt_smtp::InputMode;
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.kolleg.de");
    config.login_without_tls = true;
    let mut s = ServerSession::new(config, now);
    assert_eq!(s.input_mode(), InputMode::Command);
    s.receive(now, b"EHLO c\r\nAUTH PLAIN\r\n");
    assert_eq!(s.input_mode(), InputMode::SaslResponse);
    s.receive(now, b"*\r\nMAIL FROM:<a@b.example>\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Hello { .. })));
    assert!(matches!(s.poll_event(), Some(Event::Mail { .. })));
    s.accept().unwrap();
    s.receive(now, b"RCPT TO:<c@d.example>\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Rcpt { .. })));
    s.accept().unwrap();
    s.receive(now, b"BDAT 10\r\nSubj");
    assert_eq!(s.input_mode(), InputMode::Chunk { remaining: 6 });
    s.receive(now, b"ect:\r\n");
    assert_eq!(s.input_mode(), InputMode::Command);
    s.receive(now, b"RSET\r\nMAIL FROM:<a@b.example>\r\n");
    while s
        .poll_event()
        .is_some_and(|e| !matches!(e, Event::Mail { .. }))
    {}
    s.accept().unwrap();
    s.receive(now, b"RCPT TO:<c@d.example>\r\n");
    while s
        .poll_event()
        .is_some_and(|e| !matches!(e, Event::Rcpt { .. }))
    {}
    s.accept().unwrap();
    s.receive(now, b"DATA\r\n");
    assert_eq!(s.input_mode(), InputMode::Data);
    s.receive(now, b"Hi\r\n.\r\n");
    assert_eq!(s.input_mode(), InputMode::Command);
}

#[test]
fn xclient_reports_typed_attributes_and_keeps_tls_and_trust() {
    use postamt_smtp::{ClientProtocol, Xclient, XclientValue};
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.implicit_tls = true;
    let mut s = ServerSession::new(config, now);
    assert!(!s.is_xclient_allowed());
    s.allow_xclient(true);
    assert!(s.is_xclient_allowed());
    output(&mut s);
    s.receive(
        now,
        b"XCLIENT ADDR=IPV6:2001:db8::7 PORT=4242 PROTO=smtp LOGIN=anna HELO=c+20d\r\nEHLO c.example\r\n",
    );
    let ev = events(&mut s);
    let [Event::Xclient(x), Event::Hello { .. }] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(
        x.addr,
        Some(XclientValue::Known("2001:db8::7".parse().unwrap()))
    );
    assert_eq!(x.port, Some(XclientValue::Known(4242)));
    assert_eq!(x.proto, Some(XclientValue::Known(ClientProtocol::Smtp)));
    assert_eq!(
        x.helo
            .as_ref()
            .and_then(XclientValue::known)
            .map(String::as_str),
        Some("c d")
    );
    assert_eq!(x.login_name(), Some("anna"));
    assert_eq!((x.name.clone(), x.destaddr, x.destport), (None, None, None));
    assert!(s.is_authenticated() && s.is_tls() && s.is_xclient_allowed());
    assert_eq!(s.pending_decision(), None);
    let out = output(&mut s);
    assert!(
        out.starts_with("220 mx.example ESMTP postamt ready\r\n250-mx.example"),
        "{out}"
    );
    // Authenticated by LOGIN=: AUTH is no longer offered.
    assert!(!out.contains("AUTH"), "{out}");
    assert!(out.ends_with("250 XCLIENT NAME ADDR PROTO HELO LOGIN PORT DESTADDR DESTPORT\r\n"));

    // The client-side renderer writes what the session reads back.
    let mut sent = Xclient::new();
    sent.name = Some(XclientValue::Known("client.example".parse().unwrap()));
    sent.login = Some(XclientValue::Unavailable);
    let mut line = Vec::new();
    postamt_smtp::Command::Xclient(sent.clone()).render(&mut line);
    assert_eq!(line, b"XCLIENT NAME=client.example LOGIN=[UNAVAILABLE]\r\n");
    s.receive(now, &line);
    assert_eq!(events(&mut s), [Event::Xclient(sent)]);
    assert!(!s.is_authenticated());
    assert_eq!(output(&mut s), "220 mx.example ESMTP postamt ready\r\n");
}
