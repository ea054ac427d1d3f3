//! The SMTP client session fed arbitrary server bytes.
//!
//! Invariants: no panic; with an application that only listens, the events
//! and the bytes the client sends are the same whether the server's bytes
//! arrive whole or one at a time (when the application acts, what the server
//! would send depends on when, so only the other invariants hold); output stays
//! bounded; the session ends with exactly one `Closed`; the password never
//! shows in the session's `Debug`, in clear or in base64.
#![no_main]

use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postamt_smtp::{ClientConfig, ClientEvent, ClientSession, Envelope, ForwardPath, Mechanism, ReversePath};
use postamt_wire::Session;

fn run(input: &[u8], bytewise: bool, act: bool) -> (Vec<String>, Vec<u8>) {
    let now = Instant::now();
    let mut config = ClientConfig::new("client.example");
    config.prefer_chunking = input.first().is_some_and(|b| b & 1 == 1);
    let mut session = ClientSession::new(config, now);
    let mut events = Vec::new();
    let mut sent = Vec::new();
    let mut started = 0;
    let pieces: Vec<&[u8]> = if bytewise { input.chunks(1).collect() } else { vec![input] };
    for piece in pieces {
        session.receive(now, piece);
        while let Some(event) = session.poll_event() {
            match &event {
                ClientEvent::Ready(caps) if act && started < 3 => {
                    started += 1;
                    if started == 2 && caps.offers_auth(Mechanism::Login) {
                        let _ = session.authenticate(Mechanism::Login, "anna", "geheim");
                    } else {
                        let envelope = Envelope::new(ReversePath::Mailbox("a@b.example".parse().unwrap()))
                            .to(ForwardPath::Mailbox("c@d.example".parse().unwrap()))
                            .to(ForwardPath::Postmaster);
                        let _ = session.send_message(envelope, Bytes::from_static(b"Subject: x\r\n\r\n.body\r\n"));
                    }
                }
                ClientEvent::StartTls => {
                    let _ = session.tls_established();
                }
                _ => {}
            }
            events.push(format!("{event:?}"));
        }
        session.poll_transmit(&mut sent);
        let _ = session.poll_timeout();
        let debug = format!("{session:?}");
        assert!(!debug.contains("geheim") && !debug.contains("Z2VoZWlt"), "a secret in Debug");
    }
    session.receive_eof(now);
    while let Some(event) = session.poll_event() {
        events.push(format!("{event:?}"));
    }
    session.poll_transmit(&mut sent);
    assert!(session.is_closed(), "the session must close at end of stream");
    (events, sent)
}

fuzz_target!(|input: &[u8]| {
    let whole = run(input, false, false);
    let bytewise = run(input, true, false);
    assert_eq!(whole, bytewise, "the split changed what the client did");
    for (events, sent) in [whole, run(input, true, true)] {
        assert!(sent.len() <= 64 * 1024 + 8 * input.len(), "unbounded output");
        let closed = events.iter().filter(|e| e.starts_with("Closed")).count();
        assert_eq!(closed, 1, "exactly one Closed event: {events:?}");
    }
});
