//! Our POP3 client session wired to our POP3 server session in memory: a
//! two-sided pair whose bytes travel in random pieces both ways (seeded, so a
//! failure can be replayed), with the scripted application of `support`
//! answering the server's decisions.

mod support;

use std::mem;
use std::time::Instant;

use postamt_pop3::{
    ClientConfig, ClientError, ClientEvent, ClientSession, ClientUsageError, MessageNumber,
    Request, ResponseCode, Session, Status,
};
use postamt_wire::sasl::Mechanism;
use support::{App, MESSAGE_2, Rng, Setup, Split};

const SEEDS: [u64; 6] = [1, 2, 3, 42, 1234, 98765];

fn n(v: u32) -> MessageNumber {
    MessageNumber::new(v).unwrap()
}

/// The client and the server application, with the bytes in flight.
struct Pair {
    client: ClientSession,
    app: App,
    rng: Rng,
    now: Instant,
    /// Largest piece delivered at once, either way.
    max_piece: usize,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    /// Everything the client sent, for exact comparisons.
    client_wire: Vec<u8>,
}

impl Pair {
    fn new(setup: Setup, seed: u64, max_piece: usize) -> Self {
        let now = Instant::now();
        let app = App::new(setup, Split::Random(seed), 256 * 1024, now);
        Self {
            client: ClientSession::new(ClientConfig::default(), now),
            app,
            rng: Rng::new(seed ^ 0x5EED),
            now,
            max_piece,
            to_server: Vec::new(),
            to_client: Vec::new(),
            client_wire: Vec::new(),
        }
    }

    /// Moves bytes both ways in random pieces until nothing moves; returns
    /// the client's events.
    fn drive(&mut self) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        loop {
            self.app.pump();
            self.to_client.append(&mut self.app.output);
            let before = self.to_server.len();
            self.client.poll_transmit(&mut self.to_server);
            self.client_wire
                .extend_from_slice(&self.to_server[before..]);
            events.extend(std::iter::from_fn(|| self.client.poll_event()));
            if self.to_client.is_empty() && self.to_server.is_empty() {
                return events;
            }
            if !self.to_client.is_empty() {
                let piece = 1 + self.rng.below(self.to_client.len().min(self.max_piece));
                let rest = self.to_client.split_off(piece);
                let bytes = mem::replace(&mut self.to_client, rest);
                self.client.receive(self.now, &bytes);
            }
            if !self.to_server.is_empty() {
                let piece = 1 + self.rng.below(self.to_server.len().min(self.max_piece));
                let rest = self.to_server.split_off(piece);
                let bytes = mem::replace(&mut self.to_server, rest);
                self.app.session.receive(self.now, &bytes);
            }
        }
    }

    /// Greeting and CAPA: the capabilities the client saw.
    fn start(&mut self) -> postamt_pop3::Capabilities {
        match self.drive().as_slice() {
            [ClientEvent::Ready(caps)] => caps.clone(),
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    fn login(&mut self) {
        self.start();
        self.client.login_user("bob", "topSecret").unwrap();
        assert_eq!(self.drive(), [ClientEvent::LoggedIn]);
    }
}

/// The message text of `events` (between MessageStart and MessageEnd),
/// checking that the pieces are well bracketed.
fn messages(events: &[ClientEvent]) -> Vec<(MessageNumber, Vec<u8>)> {
    let mut out: Vec<(MessageNumber, Vec<u8>)> = Vec::new();
    let mut open = false;
    for event in events {
        match event {
            ClientEvent::MessageStart(m) => {
                assert!(!open);
                open = true;
                out.push((*m, Vec::new()));
            }
            ClientEvent::MessageData(bytes) => {
                assert!(open);
                out.last_mut().unwrap().1.extend_from_slice(bytes);
            }
            ClientEvent::MessageEnd => {
                assert!(open);
                open = false;
            }
            _ => assert!(!open, "{event:?} inside a message"),
        }
    }
    assert!(!open);
    out
}

/// Events other than message text.
fn outcomes(events: Vec<ClientEvent>) -> Vec<ClientEvent> {
    events
        .into_iter()
        .filter(|e| !matches!(e, ClientEvent::MessageData(_)))
        .collect()
}

#[test]
fn handout_flow() {
    for seed in SEEDS {
        let mut pair = Pair::new(Setup::default(), seed, 17);
        // Message 1 is the one that needs stuffing.
        pair.app.users[0].messages.swap(0, 1);
        let caps = pair.start();
        assert!(caps.capa && caps.user && caps.pipelining && caps.top && caps.uidl);
        assert!(caps.resp_codes && caps.auth_resp_code && caps.utf8 && !caps.stls);
        assert_eq!(caps.sasl, ["PLAIN"]);
        assert_eq!(pair.client.apop_timestamp(), None);

        pair.client.login_user("bob", "topSecret").unwrap();
        assert_eq!(pair.drive(), [ClientEvent::LoggedIn]);
        assert!(pair.client.is_logged_in());
        pair.client.stat().unwrap();
        assert_eq!(
            pair.drive(),
            [ClientEvent::Stat {
                count: 2,
                octets: 320
            }]
        );
        pair.client.list(None).unwrap();
        assert_eq!(
            pair.drive(),
            [ClientEvent::List(vec![(n(1), 200), (n(2), 120)])]
        );
        pair.client.retr(n(1)).unwrap();
        let events = pair.drive();
        assert_eq!(messages(&events), [(n(1), MESSAGE_2.to_vec())]);
        assert_eq!(
            outcomes(events),
            [ClientEvent::MessageStart(n(1)), ClientEvent::MessageEnd]
        );
        pair.client.dele(n(1)).unwrap();
        assert_eq!(pair.drive(), [ClientEvent::Deleted(n(1))]);
        pair.client.quit().unwrap();
        assert_eq!(pair.drive(), [ClientEvent::Closed(None)]);
        assert!(pair.client.is_closed());
        assert!(pair.app.session.is_closed());
        assert_eq!(
            pair.app.events,
            ["login bob", "retrieve 1", "commit [1]"],
            "seed {seed}"
        );
        assert_eq!(
            String::from_utf8(pair.client_wire).unwrap(),
            "CAPA\r\nUSER bob\r\nPASS topSecret\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n"
        );
    }
}

#[test]
fn apop_login() {
    for seed in SEEDS {
        let setup = Setup {
            apop: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
            ..Setup::default()
        };
        let mut pair = Pair::new(setup, seed, 9);
        pair.start();
        assert_eq!(
            pair.client.apop_timestamp(),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        pair.client.login_apop("bob", "wrong").unwrap();
        let events = pair.drive();
        let [ClientEvent::Error { command, response }] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(*command, Request::Apop);
        assert_eq!(response.code(), Some(&ResponseCode::Auth));
        pair.client.login_apop("bob", "topSecret").unwrap();
        assert_eq!(pair.drive(), [ClientEvent::LoggedIn]);
        pair.client.quit().unwrap();
        assert_eq!(pair.drive(), [ClientEvent::Closed(None)]);
        let digest = postamt_pop3::apop_digest("<1896.697170952@dbc.mtview.ca.us>", "topSecret");
        let wire = String::from_utf8(pair.client_wire).unwrap();
        assert!(
            wire.ends_with(&format!("APOP bob {digest}\r\nQUIT\r\n")),
            "{wire}"
        );
        assert!(!wire.contains("topSecret"));
        assert_eq!(
            pair.app.events,
            [
                "apop bob <1896.697170952@dbc.mtview.ca.us>",
                "apop bob <1896.697170952@dbc.mtview.ca.us>",
                "commit []"
            ]
        );
    }
}

#[test]
fn auth_plain_with_initial_response() {
    for seed in SEEDS {
        let mut pair = Pair::new(Setup::default(), seed, 13);
        pair.start();
        pair.client
            .authenticate(Mechanism::Plain, "bob", "topSecret")
            .unwrap();
        assert_eq!(pair.drive(), [ClientEvent::LoggedIn]);
        assert_eq!(pair.app.events, ["auth PLAIN bob"]);
        assert_eq!(
            String::from_utf8(pair.client_wire.clone()).unwrap(),
            "CAPA\r\nAUTH PLAIN AGJvYgB0b3BTZWNyZXQ=\r\n"
        );
        pair.client.stat().unwrap();
        assert_eq!(
            pair.drive(),
            [ClientEvent::Stat {
                count: 2,
                octets: 320
            }]
        );
    }
}

#[test]
fn wrong_password_then_right_one() {
    for seed in SEEDS {
        let mut pair = Pair::new(Setup::default(), seed, 11);
        pair.start();
        pair.client.login_user("bob", "wrong").unwrap();
        let events = pair.drive();
        let [ClientEvent::Error { command, response }] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(*command, Request::Pass);
        assert_eq!(response.status(), Status::Err);
        assert_eq!(response.code(), Some(&ResponseCode::Auth));
        assert_eq!(response.text(), "Invalid user name or password");
        assert!(!pair.client.is_logged_in());
        assert_eq!(pair.client.stat(), Err(ClientUsageError::NotLoggedIn));
        pair.client.login_user("bob", "topSecret").unwrap();
        assert_eq!(pair.drive(), [ClientEvent::LoggedIn]);
    }
}

#[test]
fn maildrop_in_use() {
    for seed in SEEDS {
        let mut pair = Pair::new(Setup::default(), seed, 7);
        pair.start();
        pair.client.login_user("carol", "carolpw").unwrap();
        let events = pair.drive();
        let [ClientEvent::Error { command, response }] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(*command, Request::Pass);
        assert_eq!(response.code(), Some(&ResponseCode::InUse));
        assert_eq!(response.text(), "Maildrop is locked by another session");
        pair.client.quit().unwrap();
        assert_eq!(pair.drive(), [ClientEvent::Closed(None)]);
        assert_eq!(pair.app.events, ["login carol"]);
    }
}

#[test]
fn system_errors_carry_their_codes() {
    for seed in SEEDS {
        let setup = Setup {
            store_down: true,
            ..Setup::default()
        };
        let mut pair = Pair::new(setup, seed, 7);
        pair.start();
        pair.client.login_user("bob", "topSecret").unwrap();
        let events = pair.drive();
        let [ClientEvent::Error { response, .. }] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(response.code(), Some(&ResponseCode::SysTemp));

        let setup = Setup {
            commit_fails: true,
            ..Setup::default()
        };
        let mut pair = Pair::new(setup, seed, 7);
        pair.login();
        pair.client.dele(n(1)).unwrap();
        pair.client.quit().unwrap();
        let events = pair.drive();
        let [
            ClientEvent::Deleted(_),
            ClientEvent::Error { command, response },
            ClientEvent::Closed(None),
        ] = events.as_slice()
        else {
            panic!("{events:?}")
        };
        assert_eq!(*command, Request::Quit);
        assert_eq!(response.code(), Some(&ResponseCode::SysTemp));
    }
}

#[test]
fn pipelined_commands_go_out_in_one_write() {
    for seed in SEEDS {
        let mut pair = Pair::new(Setup::default(), seed, 23);
        pair.login();
        let c = &mut pair.client;
        c.stat().unwrap();
        c.list(None).unwrap();
        c.list(Some(n(2))).unwrap();
        c.uidl(None).unwrap();
        c.retr(n(2)).unwrap();
        c.retr(n(7)).unwrap();
        c.top(n(1), 1).unwrap();
        c.dele(n(2)).unwrap();
        c.dele(n(2)).unwrap();
        c.noop().unwrap();
        c.rset().unwrap();
        c.dele(n(1)).unwrap();
        c.quit().unwrap();
        assert_eq!(c.outstanding(), 13);
        let mut write = Vec::new();
        c.poll_transmit(&mut write);
        assert_eq!(
            String::from_utf8(write.clone()).unwrap(),
            "STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nRETR 2\r\nRETR 7\r\nTOP 1 1\r\nDELE 2\r\n\
             DELE 2\r\nNOOP\r\nRSET\r\nDELE 1\r\nQUIT\r\n"
        );
        pair.to_server = write;
        let events = pair.drive();
        assert_eq!(
            messages(&events),
            [
                (n(2), MESSAGE_2.to_vec()),
                (
                    n(1),
                    b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: Lunch\r\n\r\nHi Bob,\r\n"
                        .to_vec()
                )
            ]
        );
        let outcomes = outcomes(events);
        let error = |outcome: &ClientEvent| match outcome {
            ClientEvent::Error { command, response } => (*command, response.text().to_string()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            outcomes[..6],
            [
                ClientEvent::Stat {
                    count: 2,
                    octets: 320
                },
                ClientEvent::List(vec![(n(1), 120), (n(2), 200)]),
                ClientEvent::List(vec![(n(2), 200)]),
                ClientEvent::Uidl(vec![
                    (n(1), "QhdPYR:00WBw1Ph7x7".to_string()),
                    (n(2), "QhdPYR:00WBw1Ph7x8".to_string())
                ]),
                ClientEvent::MessageStart(n(2)),
                ClientEvent::MessageEnd,
            ]
        );
        assert_eq!(
            error(&outcomes[6]),
            (Request::Retr, "No such message".into())
        );
        assert_eq!(
            outcomes[7..10],
            [
                ClientEvent::MessageStart(n(1)),
                ClientEvent::MessageEnd,
                ClientEvent::Deleted(n(2)),
            ]
        );
        assert_eq!(
            error(&outcomes[10]),
            (Request::Dele, "Message already deleted".into())
        );
        assert_eq!(
            outcomes[11..],
            [
                ClientEvent::Noop,
                ClientEvent::Reset,
                ClientEvent::Deleted(n(1)),
                ClientEvent::Closed(None)
            ]
        );
        assert_eq!(
            pair.app.events,
            ["login bob", "retrieve 2", "top 1 1", "commit [1]"]
        );
    }
}

#[test]
fn top_and_uidl_of_one_message() {
    for seed in SEEDS {
        let mut pair = Pair::new(Setup::default(), seed, 5);
        pair.login();
        pair.client.top(n(2), 0).unwrap();
        let events = pair.drive();
        assert_eq!(
            messages(&events),
            [(
                n(2),
                b"From: carol@example.org\r\nTo: bob@example.org\r\nSubject: Dots\r\n\r\n".to_vec()
            )]
        );
        pair.client.top(n(2), 3).unwrap();
        let events = pair.drive();
        assert_eq!(
            messages(&events),
            [(
                n(2),
                b"From: carol@example.org\r\nTo: bob@example.org\r\nSubject: Dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n".to_vec()
            )]
        );
        pair.client.uidl(Some(n(2))).unwrap();
        assert_eq!(
            pair.drive(),
            [ClientEvent::Uidl(vec![(n(2), "QhdPYR:00WBw1Ph7x8".into())])]
        );
        pair.client.uidl(Some(n(3))).unwrap();
        let events = pair.drive();
        assert!(
            matches!(&events[..], [ClientEvent::Error { command: Request::Uidl, response }] if response.text() == "No such message"),
            "{events:?}"
        );
    }
}

#[test]
fn stls_discards_plaintext_and_asks_capa_again() {
    for seed in SEEDS {
        let setup = Setup {
            stls: true,
            ..Setup::default()
        };
        let mut pair = Pair::new(setup, seed, 19);
        let caps = pair.start();
        assert!(caps.stls);
        assert_eq!(
            pair.client.login_user("bob", "topSecret\r\n"),
            Err(ClientUsageError::InvalidArgument)
        );
        pair.client.stls().unwrap();
        assert_eq!(pair.client.stls(), Err(ClientUsageError::Busy));
        pair.client.poll_transmit(&mut pair.to_server);
        pair.client_wire.extend_from_slice(b"STLS\r\n");
        // A man in the middle appends a response after the +OK in plaintext.
        pair.app.session.receive(pair.now, b"STLS\r\n");
        pair.to_server.clear();
        pair.app.pump();
        let mut from_server = mem::take(&mut pair.app.output);
        from_server.extend_from_slice(b"+OK injected\r\n");
        pair.client.receive(pair.now, &from_server);
        assert_eq!(pair.client.poll_event(), Some(ClientEvent::StartTls));
        assert_eq!(pair.client.poll_event(), None);
        assert_eq!(pair.app.events, ["starttls"]);
        // The handshake, on both sides.
        pair.app.session.tls_established().unwrap();
        pair.client.tls_established().unwrap();
        assert!(pair.client.is_tls());
        let events = pair.drive();
        let [ClientEvent::Ready(caps)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(!caps.stls && caps.user);
        assert_eq!(pair.client.stls(), Err(ClientUsageError::NotOffered));
        pair.client.login_user("bob", "topSecret").unwrap();
        assert_eq!(pair.drive(), [ClientEvent::LoggedIn]);
        assert_eq!(
            String::from_utf8(pair.client_wire).unwrap(),
            "CAPA\r\nSTLS\r\nCAPA\r\nUSER bob\r\nPASS topSecret\r\n"
        );
    }
}

#[test]
fn five_mib_message_streams_in_chunks() {
    // 5 MiB of lines, a tenth of them starting with a dot.
    let mut message = Vec::with_capacity(5 << 20);
    let mut line = 0u32;
    while message.len() < (5 << 20) - 100 {
        if line.is_multiple_of(10) {
            message.push(b'.');
        }
        message.extend_from_slice(format!("line {line} of a long message").as_bytes());
        message.extend_from_slice(b"\r\n");
        line += 1;
    }
    while message.len() < 5 << 20 {
        message.extend_from_slice(b"x\r\n");
    }
    message.truncate(5 << 20);
    if !message.ends_with(b"\r\n") {
        let len = message.len();
        message[len - 2..].copy_from_slice(b"\r\n");
    }
    assert_eq!(message.len(), 5 << 20);
    let message: &'static [u8] = Box::leak(message.into_boxed_slice());
    for seed in [7, 8] {
        let mut pair = Pair::new(Setup::default(), seed, 64 * 1024);
        pair.app.users[0].messages.push((message, "big-one"));
        pair.login();
        pair.client.list(Some(n(3))).unwrap();
        assert_eq!(pair.drive(), [ClientEvent::List(vec![(n(3), 5 << 20)])]);
        pair.client.retr(n(3)).unwrap();
        let events = pair.drive();
        let chunks: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::MessageData(b) => Some(b.len()),
                _ => None,
            })
            .collect();
        assert!(chunks.len() > 80, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|&c| c <= 64 * 1024));
        let got = messages(&events);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, n(3));
        assert!(got[0].1 == message, "the message differs");
    }
}

#[test]
fn server_closing_mid_message_is_reported() {
    let mut pair = Pair::new(Setup::default(), 3, 31);
    pair.login();
    pair.client.retr(n(2)).unwrap();
    let mut out = Vec::new();
    pair.client.poll_transmit(&mut out);
    pair.app.session.receive(pair.now, &out);
    pair.app.pump();
    let from_server = mem::take(&mut pair.app.output);
    pair.client
        .receive(pair.now, &from_server[..from_server.len() - 10]);
    pair.client.receive_eof(pair.now);
    let events: Vec<_> = std::iter::from_fn(|| pair.client.poll_event()).collect();
    assert_eq!(events.first(), Some(&ClientEvent::MessageStart(n(2))));
    assert!(!events.contains(&ClientEvent::MessageEnd));
    assert_eq!(
        events.last(),
        Some(&ClientEvent::Closed(Some(ClientError::ConnectionClosed)))
    );
}
