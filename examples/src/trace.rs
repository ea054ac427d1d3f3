//! The live `C:`/`S:` transcript a teacher shows on the projector, with
//! passwords and SASL payloads masked.
//!
//! Lines go through a bounded queue to a writer thread of their own, so a
//! terminal that stops reading (paused, or a pipe nobody drains) never holds
//! up a session: when the queue is full, lines are dropped and counted, and
//! the count is printed once the writer catches up.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Trace lines that may wait for the terminal before new ones are dropped.
const QUEUE_LINES: usize = 4096;

/// The one writer of trace lines, started with the first trace.
struct Sink {
    lines: SyncSender<String>,
    dropped: &'static AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let (lines, queue) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || {
                for line in queue {
                    let mut out = std::io::stdout().lock();
                    let dropped = DROPPED.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(out, "... {dropped} trace lines dropped");
                    }
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            });
        if let Err(e) = spawned {
            eprintln!("cannot start the trace writer: {e}");
        }
        Sink {
            lines,
            dropped: &DROPPED,
        }
    })
}

/// Queues one line for the terminal without ever waiting for it.
fn emit(line: String) {
    let sink = sink();
    match sink.lines.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Which protocol's secrets to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Smtp,
    Pop3,
}

/// Longest line kept whole in the transcript.
const MAX_LINE: usize = 1000;

#[derive(Debug)]
pub(crate) struct Trace {
    id: u64,
    protocol: Protocol,
    enabled: bool,
    client: Vec<u8>,
    server: Vec<u8>,
    /// The server asked for a SASL response: the next client line is secret.
    secret_next: bool,
}

impl Trace {
    pub(crate) fn new(id: u64, protocol: Protocol, enabled: bool) -> Self {
        Self {
            id,
            protocol,
            enabled,
            client: Vec::new(),
            server: Vec::new(),
            secret_next: false,
        }
    }

    fn tag(&self) -> String {
        let p = match self.protocol {
            Protocol::Smtp => "smtp",
            Protocol::Pop3 => "pop3",
        };
        format!("[{p} #{}]", self.id)
    }

    /// Something about the connection that is not protocol text.
    pub(crate) fn note(&self, text: &str) {
        if self.enabled {
            emit(format!("{} -- {text}", self.tag()));
        }
    }

    /// A failure worth a log line, printed whether tracing is on or not.
    pub(crate) fn error(&self, text: &str) {
        eprintln!("{} error: {text}", self.tag());
    }

    pub(crate) fn client(&mut self, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        for line in split_lines(&mut self.client, bytes) {
            let shown = if std::mem::take(&mut self.secret_next) {
                "****".to_string()
            } else {
                mask(self.protocol, &line)
            };
            emit(format!("{} C: {shown}", self.tag()));
        }
    }

    pub(crate) fn server(&mut self, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        for line in split_lines(&mut self.server, bytes) {
            self.secret_next = match self.protocol {
                Protocol::Smtp => line.starts_with("334"),
                Protocol::Pop3 => line.starts_with("+ ") || line == "+",
            };
            emit(format!("{} S: {line}", self.tag()));
        }
    }
}

/// Appends `bytes` to `partial` and returns the complete lines, without CRLF.
fn split_lines(partial: &mut Vec<u8>, bytes: &[u8]) -> Vec<String> {
    partial.extend_from_slice(bytes);
    let mut lines = Vec::new();
    while let Some(lf) = partial.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = partial.drain(..=lf).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(printable(&line));
    }
    if partial.len() > MAX_LINE {
        lines.push(format!("{} [...]", printable(&partial[..MAX_LINE])));
        partial.clear();
    }
    lines
}

/// The line as a terminal can show it without being steered by it: control
/// characters (C0, C1), Unicode format characters (bidi overrides and
/// isolates, zero-width marks) and line or paragraph separators are written
/// as `\u{..}` escapes, bytes that are not UTF-8 as `\x..`.
fn printable(line: &[u8]) -> String {
    let mut shown = String::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            let steering = matches!(
                c.general_category(),
                GeneralCategory::Control
                    | GeneralCategory::Format
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            );
            if c == '\t' || !steering {
                shown.push(c);
            } else {
                let _ = write!(shown, "\\u{{{:x}}}", u32::from(c));
            }
        }
        for b in chunk.invalid() {
            let _ = write!(shown, "\\x{b:02x}");
        }
    }
    shown
}

/// Hides what follows a command that carries a secret.
fn mask(protocol: Protocol, line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let verb = words[0].to_ascii_uppercase();
    let keep = match (protocol, verb.as_str()) {
        (Protocol::Smtp, "AUTH") | (Protocol::Pop3, "AUTH" | "APOP") => 2,
        (Protocol::Pop3, "PASS") => 1,
        _ => return line.to_string(),
    };
    if words.len() <= keep {
        return line.to_string();
    }
    format!("{} ****", words[..keep].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask(Protocol::Pop3, "PASS topSecret"), "PASS ****");
        assert_eq!(mask(Protocol::Pop3, "pass top secret"), "pass ****");
        assert_eq!(
            mask(Protocol::Pop3, "APOP bob c4c9334bac560ecc979e58001b3e22fb"),
            "APOP bob ****"
        );
        assert_eq!(
            mask(Protocol::Smtp, "AUTH PLAIN AGFubmEAZ2VoZWlt"),
            "AUTH PLAIN ****"
        );
        assert_eq!(mask(Protocol::Smtp, "AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(mask(Protocol::Smtp, "PASS x"), "PASS x");
        assert_eq!(mask(Protocol::Pop3, "USER bob"), "USER bob");
    }

    #[test]
    fn steering_characters_are_escaped() {
        assert_eq!(printable(b"HELO a\x1b[2Jb"), "HELO a\\u{1b}[2Jb");
        assert_eq!(printable("x\u{9b}y".as_bytes()), "x\\u{9b}y");
        assert_eq!(printable("evil\u{202e}txt".as_bytes()), "evil\\u{202e}txt");
        assert_eq!(
            printable("a\u{2028}b\u{2029}c".as_bytes()),
            "a\\u{2028}b\\u{2029}c"
        );
        assert_eq!(
            printable("zero\u{200b}width\u{2066}".as_bytes()),
            "zero\\u{200b}width\\u{2066}"
        );
        assert_eq!(printable(b"raw \xff\xfe"), "raw \\xff\\xfe");
        assert_eq!(printable("Grüße\tok".as_bytes()), "Grüße\tok");
    }

    #[test]
    fn lines_are_split_across_reads() {
        let mut partial = Vec::new();
        assert!(split_lines(&mut partial, b"HEL").is_empty());
        assert_eq!(
            split_lines(&mut partial, b"O a\r\nNOOP\r\nQ"),
            ["HELO a", "NOOP"]
        );
        assert_eq!(partial, b"Q");
    }
}
