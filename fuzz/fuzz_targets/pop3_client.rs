//! The POP3 client session fed arbitrary server bytes.
//!
//! Invariants: no panic; with an application that only listens, whole and
//! byte-by-byte input give the same events and sent bytes; with one that
//! logs in and fetches, output stays bounded, message data never exceeds the
//! input, the session ends with exactly one `Closed`, and the password
//! never shows in the session's `Debug`.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use postamt_pop3::{ClientConfig, ClientEvent, ClientSession, MessageNumber};
use postamt_wire::Session;

fn run(input: &[u8], bytewise: bool, act: bool) -> (Vec<String>, Vec<u8>, usize) {
    let now = Instant::now();
    let mut session = ClientSession::new(ClientConfig::default(), now);
    let mut events = Vec::new();
    let mut sent = Vec::new();
    let mut data = 0;
    let pieces: Vec<&[u8]> = if bytewise { input.chunks(1).collect() } else { vec![input] };
    for piece in pieces {
        session.receive(now, piece);
        while let Some(event) = session.poll_event() {
            match &event {
                ClientEvent::Ready(_) if act => {
                    let _ = session.login_user("bob", "topSecret");
                }
                ClientEvent::LoggedIn if act => {
                    let _ = session.stat();
                    let one = MessageNumber::new(1).expect("1 is a message number");
                    let _ = session.retr(one);
                    let _ = session.top(one, 2);
                    let _ = session.dele(one);
                    let _ = session.quit();
                }
                ClientEvent::StartTls => {
                    let _ = session.tls_established();
                }
                ClientEvent::MessageData(bytes) => data += bytes.len(),
                _ => {}
            }
            events.push(format!("{event:?}"));
        }
        session.poll_transmit(&mut sent);
        let _ = session.poll_timeout();
        assert!(!format!("{session:?}").contains("topSecret"), "a secret in Debug");
    }
    session.receive_eof(now);
    while let Some(event) = session.poll_event() {
        events.push(format!("{event:?}"));
    }
    session.poll_transmit(&mut sent);
    assert!(session.is_closed(), "the session must close at end of stream");
    (events, sent, data)
}

fuzz_target!(|input: &[u8]| {
    let whole = run(input, false, false);
    assert_eq!(whole, run(input, true, false), "the split changed what the client did");
    for (events, sent, data) in [whole, run(input, true, true)] {
        assert!(sent.len() <= 4096 + 8 * input.len(), "unbounded output");
        assert!(data <= input.len(), "more message data than input");
        let closed = events.iter().filter(|e| e.starts_with("Closed")).count();
        assert_eq!(closed, 1, "exactly one Closed event: {events:?}");
    }
});
