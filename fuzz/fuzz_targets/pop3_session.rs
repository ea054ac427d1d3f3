//! A POP3 `ServerSession` fed arbitrary client bytes, with an application
//! that answers each decision as the input's first bytes say.
//!
//! Checks:
//! - all at once, at a split chosen by the input and byte by byte give the
//!   same output bytes, the same events and the same end state;
//! - buffered input never exceeds the configured bound, buffered output never
//!   exceeds the high-water mark by more than one response;
//! - every response line starts with `+OK`, `-ERR` or `+ ` and the output
//!   ends with CRLF;
//! - a closed session takes no more input and says nothing more;
//! - every RETR answered whole sends, between its `+OK` line and the
//!   terminating dot and after unstuffing, exactly the octets the maildrop
//!   listed, with CRLF line ends only and the message's other bytes unchanged;
//! - the application refuses at most `max_auth_failures` logins, and the
//!   last of them closes the session; without `allow_authzid` no AUTH event
//!   names an authorization identity other than its user.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use postamt_pop3::{Event, Maildrop, MessageFlow, ServerConfig, ServerSession, Session};

const MESSAGES: [&[u8]; 3] = [
    b"Subject: a\r\n\r\n.dot\r\nbody\r\n",
    b"no header end\r\n.\r\n..\r",
    b"\xff\xfe\n.\rlast",
];
const INPUT_CAP: usize = 12288;
const HIGH_WATER: usize = 2048;
/// `max_auth_failures` by bits 3 and 4 of the first byte: the default first.
const AUTH_FAILURES: [u32; 4] = [3, 1, 2, 5];

/// A RETR whose response starts at `start` in the output.
struct Retr {
    start: usize,
    size: u64,
    message: usize,
    /// `message_end` was called: the response is whole.
    ended: bool,
}

struct Run {
    output: Vec<u8>,
    events: Vec<String>,
    closed: bool,
    retrs: Vec<Retr>,
}

fn run(decisions: &[u8], pieces: &mut dyn Iterator<Item = &[u8]>) -> Run {
    let now = Instant::now();
    let d0 = decisions.first().copied().unwrap_or(0);
    let mut config = ServerConfig::new();
    config.extensions.stls = d0 & 1 == 1;
    config.login_without_tls = d0 & 2 == 0;
    config.allow_authzid = d0 & 4 != 0;
    config.limits.max_auth_failures = AUTH_FAILURES[usize::from((d0 >> 3) & 3)];
    config.limits.max_buffered_input = 4096;
    config.limits.output_high_water = HIGH_WATER;
    config.limits.max_errors = 50;
    let allow_authzid = config.allow_authzid;
    let max_refusals = config.limits.max_auth_failures;
    let timestamp = "<7.8@fuzz>".parse().expect("valid timestamp");
    let mut s = ServerSession::with_apop(config, now, timestamp);
    let mut run = Run {
        output: Vec::new(),
        events: Vec::new(),
        closed: false,
        retrs: Vec::new(),
    };
    let mut answered = 0usize;
    let mut refused = 0u32;
    // The text being sent, how far, and which RETR it answers (None: TOP).
    let mut streaming: Option<(&[u8], usize, Option<usize>)> = None;
    let mut pump = |s: &mut ServerSession, run: &mut Run| loop {
        let mut progress = false;
        while let Some(event) = s.poll_event() {
            progress = true;
            run.events.push(format!("{event:?}"));
            let choice = decisions
                .get(1 + answered % decisions.len().max(1))
                .copied()
                .unwrap_or(0);
            answered += 1;
            if let Event::Auth { credentials, .. } = &event {
                let other = credentials
                    .authzid
                    .as_ref()
                    .is_some_and(|z| *z != credentials.username);
                assert!(allow_authzid || !other, "an authzid for another user got through");
            }
            match event {
                Event::Login { .. } | Event::Apop { .. } | Event::Auth { .. } => match choice % 4 {
                    0 => {
                        s.reject_login().unwrap();
                        refused += 1;
                        assert!(refused <= max_refusals, "more refused logins than the limit");
                        if refused == max_refusals {
                            assert!(s.poll_event().is_none(), "an event after the last refused login");
                            let mut last = Vec::new();
                            s.poll_transmit(&mut last);
                            assert!(last.ends_with(b"-ERR [AUTH] Invalid user name or password\r\n"));
                            run.output.extend_from_slice(&last);
                            assert!(s.is_closed(), "open after the last refused login");
                        }
                    }
                    1 => s.maildrop_locked().unwrap(),
                    _ => {
                        let mut m = Maildrop::new();
                        for (i, text) in MESSAGES.iter().enumerate() {
                            let uid = format!("u{i}").parse().expect("valid uid");
                            m.push(postamt_wire::crlf_size(text), uid).unwrap();
                        }
                        s.accept_login(m).unwrap();
                    }
                },
                Event::Retrieve { message, top, size, .. } => {
                    if choice % 5 == 0 {
                        s.message_unavailable().unwrap();
                    } else {
                        let retr = top.is_none().then(|| {
                            // Nothing goes out between the event and the
                            // message's +OK line: it starts here.
                            run.retrs.push(Retr {
                                start: run.output.len() + s.buffered_output(),
                                size,
                                message: message.index(),
                                ended: false,
                            });
                            run.retrs.len() - 1
                        });
                        streaming = Some((MESSAGES[message.index()], 0, retr));
                    }
                }
                Event::Commit { .. } => {
                    if choice % 3 == 0 {
                        s.commit_failed().unwrap();
                    } else {
                        s.commit_done().unwrap();
                    }
                }
                // The handshake never comes: whether later bytes would precede
                // it depends on timing, not on the byte stream.
                Event::StartTls => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
        while s.wants_message_bytes() {
            progress = true;
            let (text, offset, retr) = streaming.expect("wants bytes only while a message is open");
            if offset == text.len() {
                if let Some(i) = retr {
                    run.retrs[i].ended = true;
                }
                s.message_end().unwrap();
                streaming = None;
            } else {
                let n = (1 + answered % 5).min(text.len() - offset);
                match s.message_chunk(&text[offset..offset + n]).unwrap() {
                    MessageFlow::Continue => streaming = Some((text, offset + n, retr)),
                    MessageFlow::Finished => streaming = None,
                }
            }
        }
        assert!(s.buffered_input() <= INPUT_CAP);
        assert!(
            s.buffered_output() <= HIGH_WATER + 512,
            "{}",
            s.buffered_output()
        );
        let mut buf = Vec::new();
        let n = s.poll_transmit(&mut buf);
        run.output.extend_from_slice(&buf);
        if n == 0 && !progress {
            break;
        }
    };
    pump(&mut s, &mut run);
    for piece in pieces {
        let closed = s.is_closed();
        s.receive(now, piece);
        pump(&mut s, &mut run);
        if closed {
            assert_eq!(s.poll_transmit(&mut Vec::new()), 0);
        }
    }
    run.closed = s.is_closed();
    run
}

/// Checks the response of a whole RETR in `output` from `r.start`.
fn check_retr(output: &[u8], r: &Retr) {
    let rest = &output[r.start..];
    let head_end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a RETR response has its +OK line")
        + 2;
    assert!(rest.starts_with(b"+OK "), "RETR answered without +OK");
    let mut body = Vec::new();
    let mut at = head_end;
    loop {
        let len = rest[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a whole RETR ends with its dot line")
            + 2;
        let line = &rest[at..at + len];
        at += len;
        if line == b".\r\n" {
            break;
        }
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    assert_eq!(body.len() as u64, r.size, "RETR sent another size than listed");
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR in RETR"),
            b'\n' => assert!(i > 0 && body[i - 1] == b'\r', "bare LF in RETR"),
            _ => {}
        }
    }
    let text = |t: &[u8]| -> Vec<u8> { t.iter().copied().filter(|b| !matches!(b, b'\r' | b'\n')).collect() };
    assert_eq!(text(&body), text(MESSAGES[r.message]), "RETR changed the message");
}

fuzz_target!(|data: &[u8]| {
    let (decisions, input) = data.split_at(data.len().min(4));
    let whole = run(decisions, &mut std::iter::once(input));
    let cut = decisions
        .get(2)
        .map_or(0, |b| usize::from(*b) % (input.len() + 1));
    let (a, b) = input.split_at(cut);
    let split = run(decisions, &mut [a, b].into_iter());
    let bytewise = run(decisions, &mut input.chunks(1));
    for other in [&split, &bytewise] {
        assert_eq!(whole.output, other.output);
        assert_eq!(whole.events, other.events);
        assert_eq!(whole.closed, other.closed);
    }
    assert!(whole.output.ends_with(b"\r\n"));
    assert!(whole.output.starts_with(b"+OK "));
    for r in whole.retrs.iter().filter(|r| r.ended) {
        check_retr(&whole.output, r);
    }
});
