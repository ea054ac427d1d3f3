//! Transcript tests for postamt sessions, one harness and one language for
//! every protocol crate.
//!
//! A transcript is a text file of lines:
//!
//! - `# ...` comments and blank lines are ignored;
//! - `!config key[=value]` sets the session up (before the first action); what
//!   the keys mean is up to the crate's [`Application`];
//! - `C: text` is a line the client sends (CRLF appended); `C~ text` is client
//!   bytes with nothing appended;
//! - `S: text` is a line the server must send (CRLF appended);
//! - `E: text` is an event the application must see, as the crate's
//!   [`Application`] describes it;
//! - `!wait N` advances the clock N seconds and calls `handle_timeout`;
//! - `!eof` says the client closed its side;
//! - `!tls-handshake` says the TLS handshake the session asked for is done
//!   (`tls_established`);
//! - `= closed` or `= open`, the last line, is how the session must end.
//!
//! In `C:`, `C~` and `S:` text, `\r`, `\n`, `\\` and `\xHH` are escapes and
//! `{c*N}` stands for the character `c` repeated `N` times.
//!
//! Consecutive client lines form one stretch. The session's start, each
//! stretch, each wait, end of stream and handshake is an *action*; the `S:`
//! and `E:` lines after an action are what that action must produce, and the
//! harness checks them after each action, not only in total. Each run feeds
//! the stretches whole, byte by byte or at seeded random splits; every run
//! must give exactly the transcript's bytes, events and end state.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use postamt_wire::Session;

/// One `!config` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key, before `=`.
    pub key: String,
    /// What follows `=`, or empty.
    pub value: String,
    /// Its line number, for error messages.
    pub line: usize,
}

impl Setting {
    /// The value as a number; panics naming the line when it is not one.
    pub fn number<T: std::str::FromStr>(&self) -> T {
        self.value.parse().unwrap_or_else(|_| {
            panic!(
                "line {}: !config {} needs a number, not {:?}",
                self.line, self.key, self.value
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Act {
    Start,
    Send(Vec<u8>),
    Wait(u64),
    Eof,
    Handshake,
}

#[derive(Debug, Clone)]
struct Action {
    act: Act,
    line: usize,
    output: Vec<u8>,
    events: Vec<String>,
}

/// A parsed transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// The file name, for messages.
    pub name: String,
    /// The `!config` lines, in order.
    pub settings: Vec<Setting>,
    actions: Vec<Action>,
    closed: bool,
}

impl Transcript {
    /// Parses transcript text; panics with the line number on anything it
    /// cannot read, so a broken transcript fails loudly.
    pub fn parse(name: &str, text: &str) -> Self {
        let mut settings = Vec::new();
        let mut actions = vec![Action {
            act: Act::Start,
            line: 0,
            output: Vec::new(),
            events: Vec::new(),
        }];
        let mut end = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(
                end.is_none(),
                "{name} line {n}: nothing may follow `= closed`/`= open`"
            );
            let act = |a| Action {
                act: a,
                line: n,
                output: Vec::new(),
                events: Vec::new(),
            };
            let last = actions
                .last_mut()
                .expect("the start action is always there");
            if let Some(rest) = tagged(line, "C:") {
                let mut bytes = unescape(name, n, rest);
                bytes.extend_from_slice(b"\r\n");
                client(&mut actions, n, bytes);
            } else if let Some(rest) = tagged(line, "C~") {
                let bytes = unescape(name, n, rest);
                client(&mut actions, n, bytes);
            } else if let Some(rest) = tagged(line, "S:") {
                last.output.extend_from_slice(&unescape(name, n, rest));
                last.output.extend_from_slice(b"\r\n");
            } else if let Some(rest) = tagged(line, "E:") {
                last.events.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("!config ") {
                assert!(
                    actions.len() == 1 && actions[0].output.is_empty(),
                    "{name} line {n}: !config belongs before the first S: or C: line"
                );
                let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
                settings.push(Setting {
                    key: key.trim().to_string(),
                    value: value.trim().to_string(),
                    line: n,
                });
            } else if let Some(secs) = line.strip_prefix("!wait ") {
                let secs = secs
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} line {n}: !wait needs seconds"));
                actions.push(act(Act::Wait(secs)));
            } else if line == "!eof" {
                actions.push(act(Act::Eof));
            } else if line == "!tls-handshake" {
                actions.push(act(Act::Handshake));
            } else if line == "= closed" || line == "= open" {
                end = Some(line == "= closed");
            } else {
                panic!("{name} line {n}: cannot read {line:?}");
            }
        }
        let closed =
            end.unwrap_or_else(|| panic!("{name}: the last line must be `= closed` or `= open`"));
        Self {
            name: name.to_string(),
            settings,
            actions,
            closed,
        }
    }

    /// Reads and parses `dir/name`.
    pub fn load(dir: impl AsRef<Path>, name: &str) -> Self {
        let path = dir.as_ref().join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self::parse(name, &text)
    }

    /// The value of `!config key`, if set (the last one wins).
    pub fn setting(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().rev().find(|s| s.key == key)
    }
}

fn tagged<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(tag)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(' ')
    }
}

/// Client bytes join the stretch before them, or start a new one.
fn client(actions: &mut Vec<Action>, n: usize, bytes: Vec<u8>) {
    if let Some(Action {
        act: Act::Send(stretch),
        output,
        events,
        ..
    }) = actions.last_mut()
        && output.is_empty()
        && events.is_empty()
    {
        stretch.extend_from_slice(&bytes);
        return;
    }
    actions.push(Action {
        act: Act::Send(bytes),
        line: n,
        output: Vec::new(),
        events: Vec::new(),
    });
}

/// Decodes the `\r`, `\n`, `\\`, `\xHH` and `{c*N}` escapes.
pub fn unescape(name: &str, n: usize, text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() => {
                match b[i + 1] {
                    b'r' => out.push(b'\r'),
                    b'n' => out.push(b'\n'),
                    b'\\' => out.push(b'\\'),
                    b'x' => {
                        let byte = text
                            .get(i + 2..i + 4)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .unwrap_or_else(|| panic!("{name} line {n}: bad \\x escape"));
                        out.push(byte);
                        i += 2;
                    }
                    other => panic!("{name} line {n}: unknown escape \\{}", other as char),
                }
                i += 2;
            }
            b'{' if b.get(i + 2) == Some(&b'*') => {
                let end = text[i..]
                    .find('}')
                    .map(|e| e + i)
                    .unwrap_or_else(|| panic!("{name} line {n}: unclosed {{c*N}}"));
                let count: usize = text[i + 3..end]
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} line {n}: bad count in {{c*N}}"));
                out.extend(std::iter::repeat_n(b[i + 1], count));
                i = end + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Shows bytes as a transcript would write them: printable ASCII as is,
/// `\r`, `\n`, `\\` and `\xHH` for the rest.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &c in bytes {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(c)),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s
}

/// How a run cuts each stretch of client bytes (and whatever else the
/// application chooses to cut, such as message chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Each stretch in one piece.
    Whole,
    /// One byte at a time.
    Bytewise,
    /// Pieces of 1 to 24 bytes from a seeded generator.
    Random(u64),
}

impl Split {
    /// Whole, byte by byte, and `random` seeded random splits.
    pub fn all(random: u64) -> Vec<Self> {
        let mut splits = vec![Self::Whole, Self::Bytewise];
        splits.extend((1..=random).map(Self::Random));
        splits
    }

    /// A generator for this split (seeded by the split's seed, or 1).
    pub fn rng(self) -> Rng {
        Rng::new(match self {
            Self::Random(seed) => seed,
            _ => 1,
        })
    }

    /// The size of the next piece of `remaining` bytes.
    pub fn piece(self, rng: &mut Rng, remaining: usize) -> usize {
        match self {
            Self::Whole => remaining,
            Self::Bytewise => remaining.min(1),
            Self::Random(_) => (1 + rng.below(24)).min(remaining),
        }
    }
}

/// A small deterministic generator (xorshift), so a failing run replays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// The application side of a transcript test: builds the session from the
/// transcript's settings, owns it, and answers its events.
pub trait Application: Sized {
    /// The session under test.
    type Session: Session;

    /// Builds the application and its session from `transcript.settings`.
    fn start(transcript: &Transcript, split: Split, now: Instant) -> Self;

    /// The session under test.
    fn session(&mut self) -> &mut Self::Session;

    /// Handles one event: answers decisions and pushes the `E:` lines it
    /// stands for onto `log`.
    fn event(&mut self, event: <Self::Session as Session>::Event, log: &mut Vec<String>);

    /// Work that no event asks for (a POP3 server streaming a message).
    /// Returns whether it did anything.
    fn idle(&mut self) -> bool {
        false
    }

    /// Checks the session's invariants after every drain (bounded buffers).
    fn check(&mut self) {}

    /// Called before each action after the start: an application that
    /// answers a decision late (after the peer has gone, say) answers it in
    /// the next [`idle`](Application::idle) after this.
    fn next_action(&mut self) {}
}

/// What one run produced, action by action.
struct Run {
    output: Vec<u8>,
    events: Vec<String>,
}

/// Polls events and output until neither gives anything.
fn drain<A: Application>(app: &mut A, run: &mut Run) {
    for _ in 0..1_000_000 {
        let mut moved = false;
        while let Some(event) = app.session().poll_event() {
            moved = true;
            app.event(event, &mut run.events);
        }
        moved |= app.idle();
        let before = run.output.len();
        let n = app.session().poll_transmit(&mut run.output);
        assert_eq!(
            n,
            run.output.len() - before,
            "poll_transmit must return what it appended"
        );
        app.check();
        if n == 0 && !moved {
            return;
        }
    }
    panic!("the session never stopped producing output or events");
}

/// Runs `transcript` with `split`; returns a description of the first
/// difference, if any.
pub fn run<A: Application>(transcript: &Transcript, split: Split) -> Result<(), String> {
    let start = Instant::now();
    let mut now = start;
    let mut app = A::start(transcript, split, now);
    let mut rng = split.rng();
    for action in &transcript.actions {
        let mut got = Run {
            output: Vec::new(),
            events: Vec::new(),
        };
        if action.act != Act::Start {
            app.next_action();
        }
        match &action.act {
            Act::Start => {}
            Act::Send(bytes) => {
                let mut at = 0;
                while at < bytes.len() {
                    let n = split.piece(&mut rng, bytes.len() - at);
                    app.session().receive(now, &bytes[at..at + n]);
                    at += n;
                    drain(&mut app, &mut got);
                }
            }
            Act::Wait(secs) => {
                now += Duration::from_secs(*secs);
                app.session().handle_timeout(now);
            }
            Act::Eof => app.session().receive_eof(now),
            Act::Handshake => {
                if let Err(e) = app.session().tls_established() {
                    return Err(format!(
                        "line {}: tls_established refused: {e}",
                        action.line
                    ));
                }
            }
        }
        drain(&mut app, &mut got);
        let what = match action.act {
            Act::Start => "the start".to_string(),
            _ => format!("the action on line {}", action.line),
        };
        if got.output != action.output {
            return Err(format!(
                "output after {what} differs\n--- expected\n{}--- got\n{}",
                lines(&action.output),
                lines(&got.output)
            ));
        }
        if got.events != action.events {
            return Err(format!(
                "events after {what} differ\n--- expected\n{}\n--- got\n{}",
                event_lines(&action.events),
                event_lines(&got.events)
            ));
        }
    }
    let closed = app.session().is_closed();
    if closed != transcript.closed {
        let state = |c| if c { "closed" } else { "open" };
        return Err(format!(
            "the session ended {} instead of {}",
            state(closed),
            state(transcript.closed)
        ));
    }
    Ok(())
}

/// Runs `transcript` with every split in `splits`; panics on the first
/// difference, naming the transcript, the split and the action.
pub fn check<A: Application>(transcript: &Transcript, splits: &[Split]) {
    for &split in splits {
        if let Err(e) = run::<A>(transcript, split) {
            panic!("{} ({split:?}): {e}", transcript.name);
        }
    }
}

/// The `.txt` files of `dir`, sorted.
pub fn files(dir: impl AsRef<Path>) -> Vec<String> {
    let dir = dir.as_ref();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    names
}

fn lines(bytes: &[u8]) -> String {
    let mut s = String::new();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        let _ = writeln!(s, "S: {}", escape(text));
    }
    s
}

fn event_lines(events: &[String]) -> String {
    events.iter().map(|e| format!("E: {e}\n")).collect()
}

#[cfg(test)]
mod tests;
