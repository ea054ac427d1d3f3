//! The SMTP client session fed arbitrary server bytes.
//!
//! The first input byte is a set of flags for the acting application and
//! the configuration; the rest is what the server sends:
//!
//! - bit 0: prefer BDAT (`prefer_chunking`) when the server offers CHUNKING;
//! - bit 1: ask for STARTTLS at the first `Ready` that offers it, and call
//!   `tls_established` at once when `StartTls` comes;
//! - bit 2: authenticate at the first `Ready` (after TLS, with bit 1) that
//!   offers the mechanism; bit 3 picks LOGIN over PLAIN;
//! - bit 4: stream the message (`start_message`, chunks, `end_message`)
//!   instead of handing it over whole;
//! - bit 5: send a second message after the first transaction;
//! - bit 6: QUIT after the last transaction.
//!
//! Invariants: no panic; with an application that only listens, the events
//! are the same whether the server's bytes arrive whole or one at a time, and
//! so are the bytes the client sends (what it had queued when it gave up is
//! still handed over); when the application acts, what the server would send depends on when, so only
//! the other invariants hold; output stays bounded; the session ends with
//! exactly one `Closed`; the password never shows in the session's `Debug`
//! or an event's, in clear or in base64 (unless the server's bytes hold it:
//! replies are shown).
#![no_main]

use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postamt_smtp::{ClientConfig, ClientEvent, ClientSession, Envelope, ForwardPath, Mechanism, ReversePath};
use postamt_wire::Session;

const USER: &str = "anna";
const PASSWORD: &str = "geheim";
/// `geheim` in base64, as AUTH LOGIN sends it, and `\0anna\0geheim`, as
/// AUTH PLAIN does.
const SECRETS: [&str; 3] = [PASSWORD, "Z2VoZWlt", "AGFubmEAZ2VoZWlt"];
/// Bare line ends, a line opening with a dot, no final line end: the client
/// repairs them for DATA and BDAT alike.
const MESSAGE: &[u8] = b"Subject: x\n\n.body\r\nline\rend";

struct Flags(u8);

impl Flags {
    fn bit(&self, n: u8) -> bool {
        self.0 & (1 << n) != 0
    }
}

/// What the acting application has done so far.
#[derive(Default)]
struct Acting {
    tls_asked: bool,
    auth_asked: bool,
    messages: u8,
    /// Offset into MESSAGE while streaming it.
    streaming: Option<usize>,
}

fn envelope() -> Envelope {
    Envelope::new(ReversePath::Mailbox("a@b.example".parse().unwrap()))
        .to(ForwardPath::Mailbox("c@d.example".parse().unwrap()))
        .to(ForwardPath::Postmaster)
}

impl Acting {
    /// The next transaction, if one is due.
    fn send(&mut self, flags: &Flags, session: &mut ClientSession) {
        if self.messages >= 1 + u8::from(flags.bit(5)) {
            if flags.bit(6) {
                let _ = session.quit();
            }
            return;
        }
        self.messages += 1;
        if flags.bit(4) {
            let size = postamt_wire::crlf_size(MESSAGE);
            if session.start_message(envelope(), Some(size)).is_ok() {
                self.streaming = Some(0);
            }
        } else {
            let _ = session.send_message(envelope(), Bytes::from_static(MESSAGE));
        }
    }

    fn on_event(&mut self, flags: &Flags, session: &mut ClientSession, event: &ClientEvent) {
        match event {
            ClientEvent::Ready(caps) => {
                let mechanism = if flags.bit(3) { Mechanism::Login } else { Mechanism::Plain };
                if flags.bit(1) && !self.tls_asked && caps.starttls {
                    self.tls_asked = true;
                    let _ = session.starttls();
                } else if flags.bit(2) && !self.auth_asked && caps.offers_auth(mechanism) {
                    self.auth_asked = true;
                    let _ = session.authenticate(mechanism, USER, PASSWORD);
                } else {
                    self.send(flags, session);
                }
            }
            ClientEvent::StartTls => {
                let _ = session.tls_established();
            }
            ClientEvent::Authenticated | ClientEvent::AuthFailed(_) | ClientEvent::Done(_) => {
                self.send(flags, session);
            }
            _ => {}
        }
    }

    /// Feeds the streamed message while the session takes it.
    fn stream(&mut self, session: &mut ClientSession) {
        while let Some(offset) = self.streaming {
            if !session.wants_message_bytes() {
                return;
            }
            if offset == MESSAGE.len() {
                self.streaming = None;
                session.end_message().unwrap();
            } else {
                let n = 7.min(MESSAGE.len() - offset);
                session.message_chunk(&MESSAGE[offset..offset + n]).unwrap();
                self.streaming = Some(offset + n);
            }
        }
    }
}

/// The secrets the server did not send itself (its replies are shown).
fn hidden(server: &[u8]) -> Vec<&'static str> {
    SECRETS
        .into_iter()
        .filter(|s| !server.windows(s.len()).any(|w| w == s.as_bytes()))
        .collect()
}

fn check_secrets(hidden: &[&str], what: &str, text: &str) {
    for secret in hidden {
        assert!(!text.contains(secret), "a secret in {what}: {text}");
    }
}

struct Run {
    events: Vec<String>,
    sent: Vec<u8>,
    /// The session ended before the end of the stream.
    gave_up: bool,
}

fn run(flags: u8, server: &[u8], bytewise: bool, act: bool) -> Run {
    let flags = Flags(flags);
    let now = Instant::now();
    let mut config = ClientConfig::new("client.example");
    config.prefer_chunking = flags.bit(0);
    let mut session = ClientSession::new(config, now);
    let mut acting = Acting::default();
    let hidden = hidden(server);
    let mut events = Vec::new();
    let mut sent = Vec::new();
    let pieces: Vec<&[u8]> = if bytewise { server.chunks(1).collect() } else { vec![server] };
    for piece in pieces {
        session.receive(now, piece);
        loop {
            while let Some(event) = session.poll_event() {
                if act {
                    acting.on_event(&flags, &mut session, &event);
                } else if event == ClientEvent::StartTls {
                    let _ = session.tls_established();
                }
                let text = format!("{event:?}");
                check_secrets(&hidden, "an event", &text);
                events.push(text);
            }
            acting.stream(&mut session);
            if session.poll_transmit(&mut sent) == 0 {
                break;
            }
        }
        let _ = session.poll_timeout();
        if act {
            // Only an acting application hands the session a password.
            check_secrets(&hidden, "Debug", &format!("{session:?}"));
        }
    }
    let gave_up = events.iter().any(|e| e.starts_with("Closed"));
    session.receive_eof(now);
    while let Some(event) = session.poll_event() {
        events.push(format!("{event:?}"));
    }
    session.poll_transmit(&mut sent);
    assert!(session.is_closed(), "the session must close at end of stream");
    Run { events, sent, gave_up }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, server)) = input.split_first() else {
        return;
    };
    let whole = run(flags, server, false, false);
    let bytewise = run(flags, server, true, false);
    assert_eq!(whole.events, bytewise.events, "the split changed what the client saw");
    assert_eq!(whole.gave_up, bytewise.gave_up);
    assert_eq!(whole.sent, bytewise.sent, "the split changed what the client sent");
    for r in [whole, run(flags, server, false, true), run(flags, server, true, true)] {
        assert!(r.sent.len() <= 64 * 1024 + 8 * server.len(), "unbounded output");
        let closed = r.events.iter().filter(|e| e.starts_with("Closed")).count();
        assert_eq!(closed, 1, "exactly one Closed event: {:?}", r.events);
    }
});
