//! A scripted application around a `ServerSession`, answering decisions from a
//! fixture, and a reader for transcript files.
//!
//! Transcript lines:
//! - `C: text`  the client sends `text` and CRLF; `C~ text` sends it without CRLF.
//! - `S: text`  the server sends `text` and CRLF.
//! - `A: text`  the application sees this event (see [`App::describe`]).
//! - `T: handshake`  the TLS handshake completes here (after STLS).
//! - `E: eof`  the client closes its side.
//! - `= closed` / `= open`  how the session ends.
//! - `! directive`  set-up (see [`Setup`]); `#` starts a comment. Unlike
//!   the library, the harness allows plaintext logins before TLS unless
//!   `! no-plaintext-login` says otherwise.
//!
//! In `C:` and `S:` text, `\r`, `\n`, `\\` and `\xHH` are escapes, and
//! `{c*N}` stands for the character `c` repeated `N` times.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use postamt_pop3::{
    Event, Maildrop, MessageFlow, Response, ResponseCode, ServerConfig, ServerSession, Session,
    verify_apop,
};
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

/// Set-up from `!` directives.
#[derive(Clone, Default)]
pub struct Setup {
    /// `! apop <timestamp>`
    pub apop: Option<String>,
    /// `! stls`
    pub stls: bool,
    /// `! tls`: the connection is already encrypted.
    pub tls: bool,
    /// `! no-plaintext-login`: the library's default
    /// (`ServerConfig::login_without_tls` false). Without it the harness
    /// allows USER/PASS and AUTH PLAIN/LOGIN before TLS, since most
    /// transcripts play the classroom telnet session.
    pub no_plaintext_login: bool,
    /// `! commit-fails`
    pub commit_fails: bool,
    /// `! sasl PLAIN LOGIN`
    pub sasl: Option<Vec<Mechanism>>,
    /// `! max-errors N`
    pub max_errors: Option<u32>,
    /// `! store-down`: logins get -ERR [SYS/TEMP].
    pub store_down: bool,
    /// `! unreadable N`: message N cannot be read.
    pub unreadable: Option<u32>,
}

pub enum Step {
    Bytes(Vec<u8>),
    Handshake,
    Eof,
}

pub struct Transcript {
    pub setup: Setup,
    pub steps: Vec<Step>,
    pub expected_output: Vec<u8>,
    pub expected_events: Vec<String>,
    pub expect_closed: Option<bool>,
}

pub fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => {
                match bytes[i + 1] {
                    b'r' => out.push(b'\r'),
                    b'n' => out.push(b'\n'),
                    b'\\' => out.push(b'\\'),
                    b'x' => {
                        let hex = &text[i + 2..i + 4];
                        out.push(u8::from_str_radix(hex, 16).expect("bad \\x escape"));
                        i += 2;
                    }
                    other => panic!("unknown escape \\{}", other as char),
                }
                i += 2;
            }
            b'{' if bytes.get(i + 2) == Some(&b'*') => {
                let end = text[i..].find('}').expect("unclosed {c*N}") + i;
                let c = bytes[i + 1];
                let n: usize = text[i + 3..end].parse().expect("bad count");
                out.extend(std::iter::repeat_n(c, n));
                i = end + 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

pub fn parse_transcript(text: &str) -> Transcript {
    let mut t = Transcript {
        setup: Setup::default(),
        steps: Vec::new(),
        expected_output: Vec::new(),
        expected_events: Vec::new(),
        expect_closed: None,
    };
    let push_bytes = |steps: &mut Vec<Step>, bytes: Vec<u8>| match steps.last_mut() {
        Some(Step::Bytes(b)) => b.extend_from_slice(&bytes),
        _ => steps.push(Step::Bytes(bytes)),
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_at(2.min(line.len()));
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match tag {
            "C:" => {
                let mut bytes = unescape(rest);
                bytes.extend_from_slice(b"\r\n");
                push_bytes(&mut t.steps, bytes);
            }
            "C~" => push_bytes(&mut t.steps, unescape(rest)),
            "S:" => {
                t.expected_output.extend_from_slice(&unescape(rest));
                t.expected_output.extend_from_slice(b"\r\n");
            }
            "A:" => t.expected_events.push(rest.to_string()),
            "T:" => t.steps.push(Step::Handshake),
            "E:" => t.steps.push(Step::Eof),
            "= " | "=" => t.expect_closed = Some(line == "= closed"),
            "! " | "!" => {
                let mut words = line[1..].split_whitespace();
                match words.next() {
                    Some("apop") => t.setup.apop = words.next().map(str::to_string),
                    Some("stls") => t.setup.stls = true,
                    Some("tls") => t.setup.tls = true,
                    Some("no-plaintext-login") => t.setup.no_plaintext_login = true,
                    Some("commit-fails") => t.setup.commit_fails = true,
                    Some("store-down") => t.setup.store_down = true,
                    Some("unreadable") => {
                        t.setup.unreadable = words.next().map(|n| n.parse().unwrap())
                    }
                    Some("sasl") => {
                        t.setup.sasl = Some(words.map(|w| w.parse().unwrap()).collect());
                    }
                    Some("max-errors") => {
                        t.setup.max_errors = words.next().map(|n| n.parse().unwrap())
                    }
                    other => panic!("line {}: unknown directive {other:?}", number + 1),
                }
            }
            _ => panic!("line {}: cannot read {line:?}", number + 1),
        }
    }
    t
}

/// How the driver cuts the client's bytes and the message chunks.
#[derive(Clone, Debug)]
pub enum Split {
    Whole,
    Bytewise,
    Random(u64),
}

/// A small deterministic generator (xorshift), so failures can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

impl Split {
    fn piece(&self, rng: &mut Rng, remaining: usize) -> usize {
        match self {
            Self::Whole => remaining,
            Self::Bytewise => 1,
            Self::Random(_) => 1 + rng.below(remaining.min(24)),
        }
    }
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
        config.limits.output_high_water = high_water;
        let session = match &setup.apop {
            Some(ts) => ServerSession::with_apop(config, now, ts.parse().unwrap()),
            None => ServerSession::new(config, now),
        };
        let seed = match split {
            Split::Random(seed) => seed,
            _ => 1,
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
            split,
            rng: Rng::new(seed),
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
        if self.setup.store_down {
            let refusal =
                Response::err_with(ResponseCode::SysTemp, "Mail store unavailable, try later");
            self.session.reject_login_with(refusal).unwrap();
            return;
        }
        match self.users.iter().position(|u| u.name == user && check(u)) {
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
                self.events
                    .push(format!("auth {mechanism} {}", credentials.username));
                let password = credentials.password.expose().clone();
                self.login(&credentials.username, |u| u.password == password);
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
                if self.setup.commit_fails {
                    self.session.commit_failed().unwrap();
                } else {
                    self.session.commit_done().unwrap();
                }
            }
            Event::StartTls => self.events.push("starttls".to_string()),
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Answers events, streams messages and collects output until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(event) = self.session.poll_event() {
                progress = true;
                self.handle(event);
            }
            while self.session.wants_message_bytes() {
                progress = true;
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

/// Runs a transcript with one split and high-water mark; returns the app.
pub fn run(t: &Transcript, split: Split, high_water: usize) -> App {
    let now = Instant::now();
    let mut app = App::new(t.setup.clone(), split, high_water, now);
    app.pump();
    for (i, step) in t.steps.iter().enumerate() {
        let now = now + Duration::from_secs(i as u64);
        match step {
            Step::Bytes(bytes) => app.feed(now, bytes),
            Step::Handshake => {
                app.session.tls_established().unwrap();
                app.pump();
            }
            Step::Eof => {
                app.session.receive_eof(now);
                app.pump();
            }
        }
    }
    app
}
