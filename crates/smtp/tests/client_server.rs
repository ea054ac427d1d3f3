//! Our client session against our server session, in memory, with the bytes
//! cut at random places in both directions.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use postamt_smtp::{
    ClientConfig, ClientError, ClientEvent, ClientSession, Envelope, Failure, ForwardPath, Mailbox,
    Mechanism, ReversePath, ServerConfig, ServerSession, Session,
};

fn mailbox(s: &str) -> Mailbox<'static> {
    s.parse().unwrap()
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    let mut e = Envelope::new(ReversePath::Mailbox(mailbox(from)));
    for t in to {
        e = e.to(ForwardPath::Mailbox(mailbox(t)));
    }
    e
}

struct Pair {
    client: ClientSession,
    server: ServerSession,
    app: common::App,
    seed: u64,
    now: Instant,
    /// Everything the server received, for checks on what went over the wire.
    wire: Vec<u8>,
}

impl Pair {
    fn new(server: ServerConfig, client: ClientConfig, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            client: ClientSession::new(client, now),
            server: ServerSession::new(server, now),
            app: common::App::default(),
            seed,
            now,
            wire: Vec::new(),
        }
    }

    fn cut(&mut self, len: usize) -> usize {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if self.seed >> 62 == 0 {
            len
        } else {
            1 + (self.seed >> 33) as usize % len.max(1)
        }
    }

    /// Moves bytes both ways until both sides are quiet; returns client events.
    fn run(&mut self) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        loop {
            let mut c2s = Vec::new();
            self.client.poll_transmit(&mut c2s);
            let mut s2c = Vec::new();
            self.app.drain(&mut self.server);
            self.server.poll_transmit(&mut s2c);
            if c2s.is_empty() && s2c.is_empty() {
                while let Some(e) = self.client.poll_event() {
                    events.push(e);
                }
                return events;
            }
            self.wire.extend_from_slice(&c2s);
            let mut rest = &c2s[..];
            while !rest.is_empty() {
                let n = self.cut(rest.len()).min(rest.len());
                self.server.receive(self.now, &rest[..n]);
                self.app.drain(&mut self.server);
                rest = &rest[n..];
            }
            let mut rest = &s2c[..];
            while !rest.is_empty() {
                let n = self.cut(rest.len()).min(rest.len());
                self.client.receive(self.now, &rest[..n]);
                rest = &rest[n..];
            }
            while let Some(e) = self.client.poll_event() {
                events.push(e);
            }
        }
    }

    fn ready(&mut self) -> postamt_smtp::Capabilities {
        match self.run().as_slice() {
            [ClientEvent::Ready(caps)] => caps.clone(),
            other => panic!("expected Ready, got {other:?}"),
        }
    }
}

fn server_config() -> ServerConfig {
    let mut c = ServerConfig::new("mx.kolleg.de");
    c.login_without_tls = true;
    c
}

fn for_seeds(f: impl Fn(u64)) {
    for seed in 0..24 {
        f(seed);
    }
}

#[test]
fn pipelined_transaction_with_a_refused_recipient() {
    for_seeds(|seed| {
        let mut p = Pair::new(server_config(), ClientConfig::new("client.example"), seed);
        let caps = p.ready();
        assert!(caps.pipelining && caps.chunking && caps.size == Some(10 * 1024 * 1024));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
        let message = Bytes::from_static(b"Subject: hi\n\n.dot line\nlast line without end");
        p.client
            .send_message(
                envelope("anna@kolleg.de", &["bob@kolleg.de", "nobody@kolleg.de"]),
                message,
            )
            .unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(report.accepted.len(), 1);
        assert_eq!(report.accepted[0].0.to_string(), "<bob@kolleg.de>");
        assert_eq!(report.refused[0].1.code(), 550);
        assert_eq!(report.outcome.as_ref().unwrap().code(), 250);
        // The server got CRLF lines, the dot line unstuffed, a final CRLF added.
        let data = p
            .app
            .events
            .iter()
            .find(|e| e.starts_with("data "))
            .unwrap();
        assert_eq!(
            data,
            r#"data "Subject: hi\r\n\r\n.dot line\r\nlast line without end\r\n""#
        );
        // MAIL, both RCPTs and DATA went out in one write, SIZE declared
        // (the octets after line-end repair: 44 given, 49 sent).
        let wire = String::from_utf8_lossy(&p.wire);
        assert!(
            wire.contains("MAIL FROM:<anna@kolleg.de> SIZE=49\r\nRCPT TO:<bob@kolleg.de>\r\nRCPT TO:<nobody@kolleg.de>\r\nDATA\r\n"),
            "{wire}"
        );
        p.client.quit().unwrap();
        assert_eq!(p.run(), [ClientEvent::Closed(None)]);
        assert!(p.client.is_closed() && p.server.is_closed());
    });
}

#[test]
fn without_pipelining_commands_go_one_by_one() {
    for_seeds(|seed| {
        let mut server = server_config();
        server.extensions.pipelining = false;
        let mut p = Pair::new(server, ClientConfig::new("client.example"), seed);
        assert!(!p.ready().pipelining);
        p.client
            .send_message(
                envelope("anna@kolleg.de", &["bob@kolleg.de"]),
                Bytes::from_static(b"hello\r\n"),
            )
            .unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(report.outcome.is_ok());
    });
}

#[test]
fn chunking_and_streamed_messages() {
    for_seeds(|seed| {
        let mut client = ClientConfig::new("client.example");
        client.prefer_chunking = true;
        let mut p = Pair::new(server_config(), client, seed);
        p.ready();
        p.client
            .start_message(envelope("anna@kolleg.de", &["bob@kolleg.de"]), None)
            .unwrap();
        assert_eq!(p.run(), [ClientEvent::SendMessage]);
        assert!(p.client.wants_message_bytes());
        for piece in [
            &b"Subject: chunks\r\n\r\n"[..],
            b".not stuffed in BDAT\r\n",
            b"end\r\n",
        ] {
            p.client.message_chunk(piece).unwrap();
        }
        p.client.end_message().unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(report.outcome.is_ok(), "{report:?}");
        let wire = String::from_utf8_lossy(&p.wire);
        assert!(
            wire.contains("BDAT 19\r\nSubject: chunks\r\n\r\nBDAT 22\r\n.not"),
            "{wire}"
        );
        assert!(wire.ends_with("BDAT 0 LAST\r\n"), "{wire}");
        let data = p
            .app
            .events
            .iter()
            .find(|e| e.starts_with("data "))
            .unwrap();
        assert_eq!(
            data,
            r#"data "Subject: chunks\r\n\r\n.not stuffed in BDAT\r\nend\r\n""#
        );

        // Streamed over DATA: dots stuffed on the way.
        let mut p = Pair::new(server_config(), ClientConfig::new("client.example"), seed);
        p.ready();
        p.client
            .start_message(envelope("anna@kolleg.de", &["bob@kolleg.de"]), Some(12))
            .unwrap();
        assert_eq!(p.run(), [ClientEvent::SendMessage]);
        p.client.message_chunk(b"a\r\n.").unwrap();
        p.client.message_chunk(b"b\r\n.\r").unwrap();
        p.client.end_message().unwrap();
        assert!(p.client.message_chunk(b"late").is_err());
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(report.outcome.is_ok());
        let data = p
            .app
            .events
            .iter()
            .find(|e| e.starts_with("data "))
            .unwrap();
        assert_eq!(data, r#"data "a\r\n.b\r\n.\r\n""#);
    });
}

#[test]
fn refusals_and_the_next_transaction() {
    for_seeds(|seed| {
        let mut p = Pair::new(server_config(), ClientConfig::new("client.example"), seed);
        p.ready();
        // The sender is refused: nothing is delivered.
        p.client
            .send_message(
                envelope("blocked@spam.example", &["bob@kolleg.de"]),
                Bytes::from_static(b"x\r\n"),
            )
            .unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(matches!(&report.outcome, Err(Failure::Sender(r)) if r.code() == 550));
        // Every recipient is refused.
        p.client
            .send_message(
                envelope(
                    "anna@kolleg.de",
                    &["nobody@kolleg.de", "x@elsewhere.example"],
                ),
                Bytes::from_static(b"x\r\n"),
            )
            .unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(report.outcome, Err(Failure::NoRecipients));
        assert_eq!(report.refused.len(), 2);
        // The message itself is refused by the store.
        p.client
            .send_message(
                envelope("anna@kolleg.de", &["bob@kolleg.de"]),
                Bytes::from_static(b"X-Fail: temp\r\n"),
            )
            .unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(matches!(&report.outcome, Err(Failure::Message(r)) if r.code() == 451));
        // And the session still delivers afterwards.
        p.client
            .send_message(
                envelope("anna@kolleg.de", &["bob@kolleg.de"]),
                Bytes::from_static(b"fine\r\n"),
            )
            .unwrap();
        let events = p.run();
        let [ClientEvent::Done(report)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(report.outcome.is_ok(), "{report:?}");
        let messages = p.app.events.iter().filter(|e| *e == "message-end").count();
        assert_eq!(messages, 2, "{:?}", p.app.events);
    });
}

#[test]
fn oversize_messages_are_not_sent() {
    let mut server = server_config();
    server.limits.max_message_size = 100;
    let mut p = Pair::new(server, ClientConfig::new("client.example"), 7);
    assert_eq!(p.ready().size, Some(100));
    let before = p.wire.len();
    p.client
        .send_message(
            envelope("anna@kolleg.de", &["bob@kolleg.de"]),
            [vec![b'x'; 99], b"\r\n".to_vec()].concat(),
        )
        .unwrap();
    let events = p.run();
    let [ClientEvent::Done(report)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(
        report.outcome,
        Err(Failure::TooBig {
            size: 101,
            limit: 100
        })
    );
    assert_eq!(p.wire.len(), before, "nothing was sent");
}

#[test]
fn auth_plain_and_login() {
    for_seeds(|seed| {
        for mechanism in [Mechanism::Plain, Mechanism::Login] {
            let mut p = Pair::new(server_config(), ClientConfig::new("client.example"), seed);
            p.ready();
            p.client.authenticate(mechanism, "anna", "wrong").unwrap();
            let events = p.run();
            assert!(
                matches!(events.as_slice(), [ClientEvent::AuthFailed(r)] if r.code() == 535),
                "{events:?}"
            );
            p.client.authenticate(mechanism, "anna", "geheim").unwrap();
            assert_eq!(p.run(), [ClientEvent::Authenticated]);
            assert!(p.server.is_authenticated());
        }
    });
}

#[test]
fn starttls_then_ehlo_again() {
    for_seeds(|seed| {
        let mut server = ServerConfig::new("mx.kolleg.de");
        server.extensions.starttls = true;
        let mut p = Pair::new(server, ClientConfig::new("client.example"), seed);
        let caps = p.ready();
        assert!(caps.starttls && caps.auth.is_empty());
        assert_eq!(
            p.client.authenticate(Mechanism::Plain, "a", "b"),
            Err(postamt_smtp::ClientUsageError::NotOffered)
        );
        p.client.starttls().unwrap();
        assert_eq!(p.run(), [ClientEvent::StartTls]);
        // Both sides would run the handshake here.
        p.client.tls_established().unwrap();
        p.server.tls_established().unwrap();
        let caps = p.ready();
        assert!(!caps.starttls);
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
        assert!(p.server.is_tls());
    });
}

#[test]
fn helo_fallback_and_greeting_refusal() {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    c.receive(now, b"220 old.example SMTP\r\n");
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert_eq!(out, b"EHLO client.example\r\n");
    c.receive(now, b"502 5.5.1 What?\r\n");
    out.clear();
    c.poll_transmit(&mut out);
    assert_eq!(out, b"HELO client.example\r\n");
    c.receive(now, b"250 old.example\r\n");
    let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
        panic!()
    };
    assert!(!caps.extended && !caps.pipelining);

    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    c.receive(now, b"554 5.7.1 go away\r\n");
    let Some(ClientEvent::Closed(Some(ClientError::Refused(r)))) = c.poll_event() else {
        panic!()
    };
    assert_eq!(r.code(), 554);
}

#[test]
fn timeouts_and_lost_connections() {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(300)));
    c.handle_timeout(now + Duration::from_secs(299));
    assert!(!c.is_closed());
    c.handle_timeout(now + Duration::from_secs(300));
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Closed(Some(ClientError::Timeout)))
    );

    // A connection lost mid-transaction reports the transaction as failed.
    let mut p = Pair::new(server_config(), ClientConfig::new("client.example"), 3);
    p.ready();
    p.client
        .start_message(envelope("anna@kolleg.de", &["bob@kolleg.de"]), None)
        .unwrap();
    assert_eq!(p.run(), [ClientEvent::SendMessage]);
    p.client.receive_eof(p.now);
    let events: Vec<_> = std::iter::from_fn(|| p.client.poll_event()).collect();
    assert!(
        matches!(events.as_slice(), [ClientEvent::Done(r), ClientEvent::Closed(Some(ClientError::ConnectionClosed))] if r.outcome.is_err()),
        "{events:?}"
    );
}

#[test]
fn a_421_ends_the_session() {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    c.receive(now, b"220 x\r\n250 x\r\n");
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    c.receive(now, b"421 4.3.2 shutting down\r\n");
    let Some(ClientEvent::Closed(Some(ClientError::Refused(r)))) = c.poll_event() else {
        panic!()
    };
    assert_eq!(r.code(), 421);
}

#[test]
fn plaintext_after_the_starttls_reply_is_discarded() {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    c.receive(now, b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(caps)) if caps.starttls));
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert_eq!(out, b"EHLO client.example\r\n");
    out.clear();
    c.starttls().unwrap();
    c.poll_transmit(&mut out);
    assert_eq!(out, b"STARTTLS\r\n");
    // A man in the middle appends a reply to the 220; it must not count.
    c.receive(now, b"220 2.0.0 go ahead\r\n250-mx\r\n250 AUTH PLAIN\r\n");
    assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
    assert_eq!(c.poll_event(), None);
    c.receive(now, b"250 more injected\r\n");
    assert_eq!(c.poll_event(), None);
    c.tls_established().unwrap();
    out.clear();
    c.poll_transmit(&mut out);
    assert_eq!(out, b"EHLO client.example\r\n");
    c.receive(now, b"250-mx\r\n250 8BITMIME\r\n");
    let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
        panic!()
    };
    assert!(caps.eight_bit_mime && caps.auth.is_empty() && !caps.starttls);
}

/// What the server delivered last, as the scripted application wrote it.
fn delivered(p: &Pair) -> String {
    p.app
        .events
        .iter()
        .rev()
        .find(|e| e.starts_with("data "))
        .cloned()
        .unwrap_or_default()
}

/// Checks that every BDAT on `wire` announced exactly the octets that
/// followed it; returns the octets of the message.
fn bdat_payload(wire: &[u8]) -> Vec<u8> {
    let mut at = memchr::memmem::find(wire, b"BDAT ").expect("a BDAT");
    let mut payload = Vec::new();
    loop {
        let end = at + memchr::memmem::find(&wire[at..], b"\r\n").unwrap();
        let line = std::str::from_utf8(&wire[at..end]).unwrap();
        let mut words = line.split(' ').skip(1);
        let size: usize = words.next().unwrap().parse().unwrap();
        let last = words.next() == Some("LAST");
        payload.extend_from_slice(&wire[end + 2..end + 2 + size]);
        at = end + 2 + size;
        if last {
            // What follows is a command again (or nothing).
            let rest = &wire[at..];
            assert!(rest.is_empty() || rest.starts_with(b"QUIT") || rest.starts_with(b"MAIL"));
            return payload;
        }
        assert!(
            wire[at..].starts_with(b"BDAT "),
            "a BDAT chunk ran over its size"
        );
    }
}

#[test]
fn data_and_bdat_deliver_the_same_text() {
    let messages: [&[u8]; 7] = [
        b"Subject: lf\n\nbare LF\nlines\n",
        b"Subject: cr\r\n\r\nbare CR\rhere\r",
        b"Subject: end\r\n\r\n.dot\r\n..two\r\nno final CRLF",
        b"mixed\r\r\n\n\r.\n.\r\n\n",
        b"\r",
        b"x",
        b"Subject: fine\r\n\r\nalready CRLF\r\n.\r\n",
    ];
    for_seeds(|seed| {
        for message in messages {
            let want = postamt_wire::CrlfNormalizer::normalize(message);
            let mut seen = Vec::new();
            for (chunking, streamed) in [(false, false), (false, true), (true, false), (true, true)]
            {
                let mut client = ClientConfig::new("client.example");
                client.prefer_chunking = chunking;
                let mut p = Pair::new(server_config(), client, seed);
                p.ready();
                let env = envelope("anna@kolleg.de", &["bob@kolleg.de"]);
                if streamed {
                    p.client.start_message(env, None).unwrap();
                    assert_eq!(p.run(), [ClientEvent::SendMessage]);
                    let mut rest = message;
                    while !rest.is_empty() {
                        let n = p.cut(rest.len()).min(rest.len());
                        p.client.message_chunk(&rest[..n]).unwrap();
                        rest = &rest[n..];
                    }
                    p.client.end_message().unwrap();
                } else {
                    p.client.send_message(env, message).unwrap();
                }
                let events = p.run();
                let [ClientEvent::Done(report)] = events.as_slice() else {
                    panic!("{events:?}")
                };
                assert!(report.outcome.is_ok(), "{report:?}");
                if chunking {
                    assert_eq!(bdat_payload(&p.wire), want, "seed {seed} {message:?}");
                } else {
                    assert!(!p.wire.windows(5).any(|w| w == b"BDAT "));
                }
                seen.push(delivered(&p));
            }
            assert!(seen.iter().all(|d| *d == seen[0]), "seed {seed}: {seen:?}");
            assert_eq!(
                seen[0],
                format!("data {:?}", String::from_utf8_lossy(&want)),
                "seed {seed}"
            );
        }
    });
}
