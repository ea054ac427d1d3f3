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
//! - a closed session takes no more input and says nothing more.
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

struct Run {
    output: Vec<u8>,
    events: Vec<String>,
    closed: bool,
}

fn run(decisions: &[u8], pieces: &mut dyn Iterator<Item = &[u8]>) -> Run {
    let now = Instant::now();
    let mut config = ServerConfig::new();
    config.extensions.stls = decisions.first().is_some_and(|b| b & 1 == 1);
    config.login_without_tls = decisions.first().is_none_or(|b| b & 2 == 0);
    config.limits.max_buffered_input = 4096;
    config.limits.output_high_water = HIGH_WATER;
    config.limits.max_errors = 50;
    let timestamp = "<7.8@fuzz>".parse().expect("valid timestamp");
    let mut s = ServerSession::with_apop(config, now, timestamp);
    let mut run = Run {
        output: Vec::new(),
        events: Vec::new(),
        closed: false,
    };
    let mut answered = 0usize;
    let mut streaming: Option<(&[u8], usize)> = None;
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
            match event {
                Event::Login { .. } | Event::Apop { .. } | Event::Auth { .. } => match choice % 4 {
                    0 => s.reject_login().unwrap(),
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
                Event::Retrieve { message, .. } => {
                    if choice % 5 == 0 {
                        s.message_unavailable().unwrap();
                    } else {
                        streaming = Some((MESSAGES[message.index()], 0));
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
            let (text, offset) = streaming.expect("wants bytes only while a message is open");
            if offset == text.len() {
                s.message_end().unwrap();
                streaming = None;
            } else {
                let n = 3.min(text.len() - offset);
                match s.message_chunk(&text[offset..offset + n]).unwrap() {
                    MessageFlow::Continue => streaming = Some((text, offset + n)),
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
});
