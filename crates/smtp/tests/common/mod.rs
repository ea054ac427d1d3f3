//! A scripted application and transcript runner for the server session tests.
//!
//! A transcript is a text file of lines:
//!
//! - `# ...` comments and blank lines are ignored;
//! - `!config key[=value]` sets up the session (before the first `C` line);
//! - `C: text` is a client line (CRLF appended); `C~ text` is raw client bytes
//!   with `\r`, `\n`, `\\` and `\xNN` escapes and nothing appended;
//! - `S: text` is a line the server must send (CRLF appended);
//! - `E: text` is an event the application must see, in order;
//! - `!wait N` advances the clock N seconds and calls `handle_timeout`;
//! - `!eof` reports the end of the connection;
//! - `!tls-handshake` marks where the TLS handshake after STARTTLS completes
//!   (the harness calls `tls_established`). Client bytes fed between the
//!   `StartTls` event and this line reach the session, which must discard
//!   them unanswered (plaintext injection, RFC 3207 §5).
//!
//! Client bytes between directives form one stretch; each test runs the
//! stretches whole, byte by byte, and at several seeded random splits, and
//! all runs must give exactly the expected output bytes and events.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use postamt_smtp::{
    BareLineEndings, Command, Decision, Event, ForwardPath, Reply, ServerConfig, ServerSession,
    Session,
};

pub enum Step {
    Send(Vec<u8>),
    Wait(u64),
    Eof,
    Handshake,
}

pub struct Transcript {
    pub config: ServerConfig,
    pub steps: Vec<Step>,
    pub expected_output: Vec<u8>,
    pub expected_events: Vec<String>,
}

pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

pub fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

pub fn parse(text: &str) -> Transcript {
    let mut config = ServerConfig::new("mx.kolleg.de");
    let mut steps = Vec::new();
    let mut expected_output = Vec::new();
    let mut expected_events = Vec::new();
    let mut pending = Vec::new();
    let flush = |pending: &mut Vec<u8>, steps: &mut Vec<Step>| {
        if !pending.is_empty() {
            steps.push(Step::Send(std::mem::take(pending)));
        }
    };
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("C: ") {
            pending.extend_from_slice(rest.as_bytes());
            pending.extend_from_slice(b"\r\n");
        } else if line == "C:" {
            pending.extend_from_slice(b"\r\n");
        } else if let Some(rest) = line.strip_prefix("C~ ") {
            pending.extend_from_slice(&unescape(rest));
        } else if let Some(rest) = line.strip_prefix("S: ") {
            expected_output.extend_from_slice(rest.as_bytes());
            expected_output.extend_from_slice(b"\r\n");
        } else if let Some(rest) = line.strip_prefix("E: ") {
            expected_events.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("!config ") {
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            let num = || {
                value
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("line {n}: number expected"))
            };
            match key {
                "lmtp" => {
                    let old = config.clone();
                    config = ServerConfig::lmtp(old.hostname);
                    config.extensions = old.extensions;
                    config.limits = old.limits;
                }
                "starttls" => config.extensions.starttls = true,
                "tls" => config.implicit_tls = true,
                "login_without_tls" => config.login_without_tls = true,
                "no_auth" => config.extensions.auth.clear(),
                "no_chunking" => config.extensions.chunking = false,
                "no_dsn" => config.extensions.dsn = false,
                "no_enhanced" => config.extensions.enhanced_status_codes = false,
                "binary_mime" => config.extensions.binary_mime = true,
                "normalize" => config.bare_line_endings = BareLineEndings::Normalize,
                "allow_unknown" => config.allow_unknown_parameters = true,
                "max_recipients" => config.limits.max_recipients = num() as usize,
                "max_message_size" => config.limits.max_message_size = num(),
                "max_errors" => config.limits.max_errors = num() as u32,
                "max_command_line" => config.limits.max_command_line = num() as usize,
                "max_text_line" => config.limits.max_text_line = num() as usize,
                "max_buffered_input" => config.limits.max_buffered_input = num() as usize,
                other => panic!("line {n}: unknown config {other}"),
            }
        } else if let Some(rest) = line.strip_prefix("!wait ") {
            flush(&mut pending, &mut steps);
            steps.push(Step::Wait(rest.parse().unwrap()));
        } else if line == "!eof" {
            flush(&mut pending, &mut steps);
            steps.push(Step::Eof);
        } else if line == "!tls-handshake" {
            flush(&mut pending, &mut steps);
            steps.push(Step::Handshake);
        } else {
            panic!("line {n}: cannot read {line:?}");
        }
    }
    flush(&mut pending, &mut steps);
    Transcript {
        config,
        steps,
        expected_output,
        expected_events,
    }
}

/// The scripted application: answers decisions from the addresses and data.
#[derive(Default)]
pub struct App {
    pub events: Vec<String>,
    data: Vec<u8>,
    recipients: Vec<String>,
    /// Set when a StartTls event arrived, until `!tls-handshake`.
    pub handshake_due: bool,
}

impl App {
    pub fn drain(&mut self, session: &mut ServerSession) {
        while let Some(event) = session.poll_event() {
            self.handle(session, event);
        }
    }

    fn handle(&mut self, session: &mut ServerSession, event: Event) {
        match event {
            Event::Hello { kind, domain } => self.events.push(format!("hello {kind:?} {domain}")),
            Event::StartTls => {
                self.events.push("starttls".into());
                self.handshake_due = true;
            }
            Event::Auth {
                mechanism,
                credentials,
            } => {
                self.events
                    .push(format!("auth {} {}", mechanism, credentials.username));
                assert_eq!(session.pending_decision(), Some(Decision::Auth));
                if credentials.username == "anna" && credentials.password.expose() == "geheim" {
                    session.accept().unwrap();
                } else {
                    session.reject(Reply::auth_failed()).unwrap();
                }
            }
            Event::Mail { from, params } => {
                let mut line = Vec::new();
                Command::Mail {
                    from: from.clone(),
                    params,
                }
                .render(&mut line);
                let line = String::from_utf8(line).unwrap();
                self.events.push(format!(
                    "mail {}",
                    line.trim_end().trim_start_matches("MAIL FROM:")
                ));
                assert_eq!(session.pending_decision(), Some(Decision::Sender));
                self.recipients.clear();
                if from.mailbox().is_some_and(|m| m.local_part() == "blocked") {
                    session
                        .reject(Reply::new(550, "5.7.1".parse().ok(), "Sender blocked"))
                        .unwrap();
                } else {
                    session.accept().unwrap();
                }
            }
            Event::Rcpt { to, params } => {
                let mut line = Vec::new();
                Command::Rcpt {
                    to: to.clone(),
                    params,
                }
                .render(&mut line);
                let line = String::from_utf8(line).unwrap();
                self.events.push(format!(
                    "rcpt {}",
                    line.trim_end().trim_start_matches("RCPT TO:")
                ));
                assert_eq!(session.pending_decision(), Some(Decision::Recipient));
                let reply = match &to {
                    ForwardPath::Postmaster => None,
                    ForwardPath::Mailbox(m) if m.domain() == "elsewhere.example" => {
                        Some(Reply::relay_denied())
                    }
                    ForwardPath::Mailbox(m) if m.local_part() == "nobody" => {
                        Some(Reply::unknown_user())
                    }
                    ForwardPath::Mailbox(_) => None,
                };
                match reply {
                    Some(r) => session.reject(r).unwrap(),
                    None => {
                        self.recipients.push(to.to_string());
                        session.accept().unwrap();
                    }
                }
            }
            Event::MessageStart => {
                self.data.clear();
                self.events.push("message-start".into());
            }
            Event::MessageData(bytes) => self.data.extend_from_slice(&bytes),
            Event::MessageEnd => {
                self.events.push(format!("data \"{}\"", escape(&self.data)));
                self.events.push("message-end".into());
                let lmtp = session.config().protocol == postamt_smtp::Protocol::Lmtp;
                let count = if lmtp { self.recipients.len() } else { 1 };
                for i in 0..count {
                    assert_eq!(
                        session.pending_decision(),
                        Some(Decision::Message { recipient: i })
                    );
                    let temp_fail = memchr::memmem::find(&self.data, b"X-Fail: temp").is_some();
                    let full = lmtp && self.recipients[i].starts_with("<full@");
                    if temp_fail {
                        session.reject(Reply::local_error()).unwrap();
                    } else if full {
                        session
                            .reject(Reply::new(452, "4.2.2".parse().ok(), "Mailbox full"))
                            .unwrap();
                    } else {
                        session.accept().unwrap();
                    }
                }
                self.data.clear();
            }
            Event::MessageAborted(reason) => {
                // What arrived before the abort is the same however the input
                // was split: the octets before the byte that broke a rule.
                self.events.push(format!("data \"{}\"", escape(&self.data)));
                self.events.push(format!("aborted {reason:?}"));
                self.data.clear();
            }
            Event::Reset => self.events.push("reset".into()),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// How to cut each stretch of client bytes.
#[derive(Clone, Copy, Debug)]
pub enum Split {
    Whole,
    Bytewise,
    Random(u64),
}

fn cuts(len: usize, split: Split) -> Vec<usize> {
    match split {
        Split::Whole => vec![len],
        Split::Bytewise => (1..=len).collect(),
        Split::Random(seed) => {
            let mut state = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut points = Vec::new();
            let mut at = 0;
            while at < len {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let step = 1 + (state >> 33) as usize % 23;
                at = (at + step).min(len);
                points.push(at);
            }
            points
        }
    }
}

pub struct Outcome {
    pub output: Vec<u8>,
    pub events: Vec<String>,
    pub closed: bool,
}

pub fn run(t: &Transcript, split: Split) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    let mut session = ServerSession::new(t.config.clone(), now);
    let mut app = App::default();
    let mut output = Vec::new();
    for step in &t.steps {
        match step {
            Step::Send(bytes) => {
                let mut from = 0;
                for to in cuts(bytes.len(), split) {
                    session.receive(now, &bytes[from..to]);
                    app.drain(&mut session);
                    session.poll_transmit(&mut output);
                    from = to;
                }
            }
            Step::Wait(secs) => {
                now += Duration::from_secs(*secs);
                session.handle_timeout(now);
            }
            Step::Eof => session.receive_eof(now),
            Step::Handshake => {
                assert!(app.handshake_due, "!tls-handshake without a StartTls event");
                app.handshake_due = false;
                session.tls_established().unwrap();
            }
        }
        app.drain(&mut session);
        session.poll_transmit(&mut output);
    }
    Outcome {
        output,
        events: app.events,
        closed: session.is_closed(),
    }
}

pub fn check_file(name: &str) {
    let path = format!("{}/tests/transcripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let t = parse(&text);
    let mut splits = vec![Split::Whole, Split::Bytewise];
    splits.extend((1..=8).map(Split::Random));
    for split in splits {
        let got = run(&t, split);
        assert_eq!(
            String::from_utf8_lossy(&got.output),
            String::from_utf8_lossy(&t.expected_output),
            "{name}: output differs ({split:?})"
        );
        assert_eq!(
            got.events, t.expected_events,
            "{name}: events differ ({split:?})"
        );
    }
}
