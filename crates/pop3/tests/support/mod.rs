//! A scripted application around a POP3 `ServerSession`, answering
//! decisions from a fixture, and its place in the shared transcript harness
//! (`postamt-transcript`). Transcripts set it up with `!config` keys (see
//! [`Setup`]) and describe events as [`App::handle`] logs them. Unlike the
//! library, the fixture allows plaintext logins before TLS unless
//! `!config no-plaintext-login` says otherwise, since most transcripts play
//! the classroom telnet session.
#![allow(dead_code, unreachable_pub)]

use std::time::Instant;

use postamt_pop3::{
    Event, Maildrop, MessageFlow, Response, ResponseCode, ServerConfig, ServerSession, Session,
    verify_apop,
};
use postamt_transcript::{Application, Transcript};
pub use postamt_transcript::{Rng, Split};
use postamt_wire::sasl::Mechanism;

/// 120 octets.
pub const MESSAGE_1: &[u8] = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: Lunch\r\n\r\nHi Bob,\r\nlunch at noon? The usual place.\r\nBest, Alice!\r\n";
/// 200 octets, with lines that need stuffing.
pub const MESSAGE_2: &[u8] = b"From: carol@example.org\r\nTo: bob@example.org\r\nSubject: Dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nThe line above is a lone dot.\r\nSee you on Monday, then.\r\nCarol, who likes dots quite a lot.... (truly!!!!)\r\n";
/// Not UTF-8, and no CRLF at the end.
pub const MESSAGE_3: &[u8] = b"Subject: raw\r\n\r\n\xff\xfe binary \x80\r\n.no final line end";
/// Line ends as stores keep them from other tools: bare CR, bare LF, CR CR
/// LF, and a final line without its end; a dot after a bare CR and after a
/// bare LF starts a line.
pub const LINE_ENDS: [&[u8]; 4] = [
    b"Subject: bare CR\r\rone\rtwo\r.three\r",
    b"Subject: bare LF\n\none\n.two\n",
    b"Subject: CR CR LF\r\r\n\r\r\nbody\r\r\n",
    b"Subject: no end\r\n\r\nlast line",
];

/// The size a message is listed at: as RETR sends it, before stuffing.
pub fn listed_size(content: &[u8]) -> u64 {
    postamt_wire::crlf_size(content)
}

/// One user of the fixture.
pub struct User {
    pub name: &'static str,
    pub password: &'static str,
    pub locked: bool,
    pub messages: Vec<(&'static [u8], &'static str)>,
}

pub fn users() -> Vec<User> {
    vec![
        User {
            name: "bob",
            password: "topSecret",
            locked: false,
            messages: vec![
                (MESSAGE_1, "QhdPYR:00WBw1Ph7x7"),
                (MESSAGE_2, "QhdPYR:00WBw1Ph7x8"),
            ],
        },
        User {
            name: "mrose",
            password: "tanstaaf",
            locked: false,
            messages: vec![(MESSAGE_3, "raw-1")],
        },
        User {
            name: "erin",
            password: "erinpw",
            locked: false,
            messages: vec![
                (LINE_ENDS[0], "cr-1"),
                (LINE_ENDS[1], "lf-2"),
                (LINE_ENDS[2], "crcrlf-3"),
                (LINE_ENDS[3], "noend-4"),
            ],
        },
        User {
            name: "carol",
            password: "carolpw",
            locked: true,
            messages: vec![],
        },
    ]
}

/// Set-up from `!config` lines.
#[derive(Clone, Default)]
pub struct Setup {
    /// `!config apop=<timestamp>`
    pub apop: Option<String>,
    /// `!config stls`
    pub stls: bool,
    /// `!config tls`: the connection is already encrypted.
    pub tls: bool,
    /// `!config no-plaintext-login`: the library's default
    /// (`ServerConfig::login_without_tls` false). Without it the harness
    /// allows USER/PASS and AUTH PLAIN/LOGIN before TLS, since most
    /// transcripts play the classroom telnet session.
    pub no_plaintext_login: bool,
    /// `!config commit-fails`
    pub commit_fails: bool,
    /// `!config sasl=PLAIN LOGIN`
    pub sasl: Option<Vec<Mechanism>>,
    /// `!config max-errors=N`
    pub max_errors: Option<u32>,
    /// `!config max-auth-failures=N`
    pub max_auth_failures: Option<u32>,
    /// `!config allow-authzid`: SASL PLAIN may act for another user; the
    /// fixture then opens that user's maildrop with the authenticated
    /// user's password (every user may act for every other).
    pub allow_authzid: bool,
    /// `!config store-down`: logins get -ERR [SYS/TEMP].
    pub store_down: bool,
    /// `!config hold-commit`: the commit after QUIT is answered only after
    /// the transcript's next action (say, the end of the stream).
    pub hold_commit: bool,
    /// `!config unreadable=N`: message N cannot be read.
    pub unreadable: Option<u32>,
}

impl Setup {
    /// The set-up a transcript's `!config` lines ask for.
    pub fn from_transcript(t: &Transcript) -> Self {
        let mut setup = Self::default();
        for c in &t.settings {
            match c.key.as_str() {
                "apop" => setup.apop = Some(c.value.clone()),
                "stls" => setup.stls = true,
                "tls" => setup.tls = true,
                "no-plaintext-login" => setup.no_plaintext_login = true,
                "commit-fails" => setup.commit_fails = true,
                "hold-commit" => setup.hold_commit = true,
                "store-down" => setup.store_down = true,
                "unreadable" => setup.unreadable = Some(c.number()),
                "sasl" => {
                    setup.sasl = Some(
                        c.value
                            .split_whitespace()
                            .map(|w| w.parse().unwrap())
                            .collect(),
                    );
                }
                "max-errors" => setup.max_errors = Some(c.number()),
                "max-auth-failures" => setup.max_auth_failures = Some(c.number()),
                "allow-authzid" => setup.allow_authzid = true,
                // Set by the runner, not by transcripts: see transcripts.rs.
                "high-water" => {}
                other => panic!("{} line {}: unknown !config {other}", t.name, c.line),
            }
        }
        setup
    }
}

/// A commit the fixture holds back (`hold-commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    None,
    Held,
    /// The next action has come: answer now.
    Due,
}

/// The application: answers decisions from the fixture and records events.
pub struct App {
    pub setup: Setup,
    pub users: Vec<User>,
    pub session: ServerSession,
    pub output: Vec<u8>,
    pub events: Vec<String>,
    pub max_buffered_input: usize,
    pub max_buffered_output: usize,
    current_user: Option<usize>,
    streaming: Option<(&'static [u8], usize)>,
    commit: Commit,
    split: Split,
    rng: Rng,
}

impl App {
    pub fn new(setup: Setup, split: Split, high_water: usize, now: Instant) -> Self {
        let mut config = ServerConfig::default();
        config.extensions.stls = setup.stls;
        config.implicit_tls = setup.tls;
        config.login_without_tls = !setup.no_plaintext_login;
        if let Some(sasl) = &setup.sasl {
            config.extensions.sasl = sasl.clone();
        }
        if let Some(n) = setup.max_errors {
            config.limits.max_errors = n;
        }
        if let Some(n) = setup.max_auth_failures {
            config.limits.max_auth_failures = n;
        }
        config.allow_authzid = setup.allow_authzid;
        config.limits.output_high_water = high_water;
        let session = match &setup.apop {
            Some(ts) => ServerSession::with_apop(config, now, ts.parse().unwrap()),
            None => ServerSession::new(config, now),
        };
        Self {
            setup,
            users: users(),
            session,
            output: Vec::new(),
            events: Vec::new(),
            max_buffered_input: 0,
            max_buffered_output: 0,
            current_user: None,
            streaming: None,
            commit: Commit::None,
            split,
            rng: split.rng(),
        }
    }

    fn maildrop(&self, user: usize) -> Maildrop {
        let mut maildrop = Maildrop::new();
        for (content, uid) in &self.users[user].messages {
            maildrop
                .push(listed_size(content), uid.parse().unwrap())
                .unwrap();
        }
        maildrop
    }

    fn login(&mut self, user: &str, check: impl Fn(&User) -> bool) {
        self.login_for(user, user, check);
    }

    /// `user` proves who it is with `check`; the maildrop opened is `target`'s.
    fn login_for(&mut self, user: &str, target: &str, check: impl Fn(&User) -> bool) {
        if self.setup.store_down {
            let refusal =
                Response::err_with(ResponseCode::SysTemp, "Mail store unavailable, try later");
            self.session.reject_login_with(refusal).unwrap();
            return;
        }
        let proven = self.users.iter().any(|u| u.name == user && check(u));
        match self
            .users
            .iter()
            .position(|u| u.name == target)
            .filter(|_| proven)
        {
            Some(i) if self.users[i].locked => self.session.maildrop_locked().unwrap(),
            Some(i) => {
                self.current_user = Some(i);
                let maildrop = self.maildrop(i);
                self.session.accept_login(maildrop).unwrap();
            }
            None => self.session.reject_login().unwrap(),
        }
    }

    /// Describes an event as a transcript `A:` line and answers it.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Login { user, password } => {
                self.events.push(format!("login {user}"));
                let password = password.expose().clone();
                self.login(&user, |u| u.password == password);
            }
            Event::Apop {
                user,
                digest,
                timestamp,
            } => {
                self.events.push(format!("apop {user} {timestamp}"));
                let digest = digest.expose().clone();
                self.login(&user, |u| verify_apop(&timestamp, u.password, &digest));
            }
            Event::Auth {
                mechanism,
                credentials,
            } => {
                let user = credentials.username;
                let target = match credentials.authzid {
                    Some(authzid) => {
                        self.events
                            .push(format!("auth {mechanism} {user} for {authzid}"));
                        authzid
                    }
                    None => {
                        self.events.push(format!("auth {mechanism} {user}"));
                        user.clone()
                    }
                };
                let password = credentials.password.expose().clone();
                self.login_for(&user, &target, |u| u.password == password);
            }
            Event::Retrieve {
                message, top, size, ..
            } => {
                match top {
                    Some(n) => self.events.push(format!("top {message} {n}")),
                    None => self.events.push(format!("retrieve {message}")),
                }
                if self.setup.unreadable == Some(message.get()) {
                    self.session.message_unavailable().unwrap();
                    return;
                }
                let user = self.current_user.expect("retrieve before login");
                let content = self.users[user].messages[message.index()].0;
                assert_eq!(size, listed_size(content));
                self.streaming = Some((content, 0));
            }
            Event::Commit { deletions } => {
                let list: Vec<String> = deletions.iter().map(|d| d.message.to_string()).collect();
                self.events.push(format!("commit [{}]", list.join(",")));
                if self.setup.hold_commit {
                    self.commit = Commit::Held;
                } else {
                    self.commit();
                }
            }
            Event::StartTls => self.events.push("starttls".to_string()),
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn commit(&mut self) {
        self.commit = Commit::None;
        if self.setup.commit_fails {
            self.session.commit_failed().unwrap();
        } else {
            self.session.commit_done().unwrap();
        }
    }

    /// Feeds the message being retrieved while the session wants bytes, in
    /// pieces as the split says; returns whether it fed anything.
    fn stream(&mut self) -> bool {
        let mut fed = false;
        while self.session.wants_message_bytes() {
            fed = true;
            let (content, offset) = self.streaming.expect("wants bytes without a message");
            if offset == content.len() {
                self.streaming = None;
                self.session.message_end().unwrap();
                continue;
            }
            let n = self.split.piece(&mut self.rng, content.len() - offset);
            match self
                .session
                .message_chunk(&content[offset..offset + n])
                .unwrap()
            {
                MessageFlow::Continue => self.streaming = Some((content, offset + n)),
                MessageFlow::Finished => self.streaming = None,
            }
        }
        fed
    }

    /// Answers events, streams messages and collects output until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(event) = self.session.poll_event() {
                progress = true;
                self.handle(event);
            }
            progress |= self.stream();
            self.max_buffered_input = self.max_buffered_input.max(self.session.buffered_input());
            self.max_buffered_output = self.max_buffered_output.max(self.session.buffered_output());
            let mut buf = Vec::new();
            let n = self.session.poll_transmit(&mut buf);
            assert_eq!(n, buf.len());
            self.output.extend_from_slice(&buf);
            if n == 0 && !progress {
                break;
            }
        }
    }

    /// Feeds `bytes` in pieces as the split says, pumping after each.
    pub fn feed(&mut self, now: Instant, bytes: &[u8]) {
        let mut offset = 0;
        while offset < bytes.len() {
            let n = self.split.piece(&mut self.rng, bytes.len() - offset);
            self.session.receive(now, &bytes[offset..offset + n]);
            offset += n;
            self.pump();
        }
    }
}

impl Application for App {
    type Session = ServerSession;

    fn start(t: &Transcript, split: Split, now: Instant) -> Self {
        let high_water = t.setting("high-water").map_or(256 * 1024, |s| s.number());
        Self::new(Setup::from_transcript(t), split, high_water, now)
    }

    fn session(&mut self) -> &mut ServerSession {
        &mut self.session
    }

    fn event(&mut self, event: Event, log: &mut Vec<String>) {
        self.handle(event);
        log.append(&mut self.events);
    }

    fn idle(&mut self) -> bool {
        if self.commit == Commit::Due {
            self.commit();
            return true;
        }
        self.stream()
    }

    fn next_action(&mut self) {
        if self.commit == Commit::Held {
            self.commit = Commit::Due;
        }
    }

    fn check(&mut self) {
        let held = self.session.buffered_input();
        assert!(
            held <= 64 * 1024,
            "the session holds {held} octets of input"
        );
    }
}
