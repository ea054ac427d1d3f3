//! The live `C:`/`S:` transcript a teacher shows on the projector, with
//! passwords and SASL payloads masked: commands that carry a secret by their
//! verb (`PASS`, `APOP`, `AUTH` with an initial response), SASL responses by
//! the session's own state, asked before each line, never by guessing from
//! the server's `334` or `+`, which may come after the client's bytes.
//!
//! Lines go through a bounded queue to a writer thread of their own, so a
//! terminal that stops reading (paused, or a pipe nobody drains) never holds
//! up a session: when the queue is full, lines are dropped and counted, and
//! the count is printed once the writer catches up (or after a short
//! quiet spell).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::web::Hub;

/// Trace lines that may wait for the terminal before new ones are dropped.
const QUEUE_LINES: usize = 4096;
/// How soon a count of dropped lines is printed when no further line comes.
const DROPPED_REPORT: Duration = Duration::from_millis(200);

/// Where a server's trace lines go: the terminal (a bounded queue drained
/// by a writer thread of its own, which ends when the last connection has
/// let go) and the teacher's page, each when on. Both get the same lines,
/// masked and escaped once, here.
#[derive(Clone, Debug)]
pub(crate) struct Sink {
    terminal: Option<Terminal>,
    web: Option<Arc<Hub>>,
}

#[derive(Clone, Debug)]
struct Terminal {
    lines: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

/// What a trace line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Said {
    /// The client's bytes (`C:`).
    Client,
    /// The server's bytes (`S:`).
    Server,
    /// About the connection (`--`).
    Note,
    /// A failure (printed on standard error as well, traced or not).
    Error,
    /// The connection is over (the page marks it; the terminal shows nothing).
    Closed,
}

impl Sink {
    /// Starts the terminal writer thread when `terminal` is given; `web`
    /// is the teacher's page.
    pub(crate) fn start(terminal: Option<Box<dyn Write + Send>>, web: Option<Arc<Hub>>) -> Self {
        Self {
            terminal: terminal.map(Terminal::start),
            web,
        }
    }

    /// Hands one line to the terminal and the page without ever waiting
    /// for either.
    fn emit(&self, id: u64, protocol: Protocol, said: Said, text: &str) {
        if let Some(web) = &self.web {
            web.line(id, protocol.name(), said, text);
        }
        let Some(terminal) = &self.terminal else {
            return;
        };
        let tag = format!("[{} #{id}]", protocol.name());
        let line = match said {
            Said::Client => format!("{tag} C: {text}"),
            Said::Server => format!("{tag} S: {text}"),
            Said::Note => format!("{tag} -- {text}"),
            Said::Error | Said::Closed => return,
        };
        match terminal.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                terminal.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Terminal {
    fn start(mut out: Box<dyn Write + Send>) -> Self {
        let (lines, queue) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        let report = move |out: &mut dyn Write| {
            let n = counted.swap(0, Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "... {n} trace lines dropped");
                let _ = out.flush();
            }
        };
        let spawned = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || {
                loop {
                    match queue.recv_timeout(DROPPED_REPORT) {
                        Ok(line) => {
                            report(&mut out);
                            let _ = writeln!(out, "{line}");
                            let _ = out.flush();
                        }
                        // Lines were dropped and none came since: say so now,
                        // not only when the next one comes.
                        Err(RecvTimeoutError::Timeout) => report(&mut out),
                        Err(RecvTimeoutError::Disconnected) => {
                            report(&mut out);
                            break;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("cannot start the trace writer: {e}");
        }
        Self { lines, dropped }
    }
}

/// Which protocol's secrets to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Smtp,
    Pop3,
    /// Our own client session to a next hop (the forwarder).
    SmtpOut,
}

impl Protocol {
    /// The name in trace tags and on the page.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Pop3 => "pop3",
            Self::SmtpOut => "smtp-out",
        }
    }
}

/// Longest line kept whole in the transcript.
const MAX_LINE: usize = 1000;

/// One direction's line being assembled.
#[derive(Debug, Default)]
struct Line {
    partial: Vec<u8>,
    /// Some bytes of the current line have been seen.
    started: bool,
    /// The current line is a SASL response: shown as `****`, whole.
    secret: bool,
    /// The current line was longer than [`MAX_LINE`] and has been shown
    /// cut; the rest of it, up to its LF, is not shown.
    cut: bool,
}

impl Line {
    /// Takes `bytes`; calls `show` with each complete (or cut) line, without
    /// CRLF, and whether it is secret. `secret` says whether a line that
    /// starts in `bytes` is a SASL response.
    fn take(&mut self, mut bytes: &[u8], secret: bool, mut show: impl FnMut(&[u8], bool)) {
        while !bytes.is_empty() {
            if !self.started {
                self.started = true;
                self.secret = secret;
            }
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(lf) => (&bytes[..lf], Some(lf + 1)),
                None => (bytes, None),
            };
            if !self.cut {
                self.partial.extend_from_slice(part);
                if self.partial.len() > MAX_LINE {
                    self.partial.truncate(MAX_LINE);
                    self.partial.extend_from_slice(b" [...]");
                    show(&self.partial, self.secret);
                    self.partial.clear();
                    self.cut = true;
                }
            }
            let Some(used) = ended else { return };
            if !self.cut {
                if self.partial.last() == Some(&b'\r') {
                    self.partial.pop();
                }
                show(&self.partial, self.secret);
            }
            self.partial.clear();
            self.started = false;
            self.cut = false;
            bytes = &bytes[used..];
        }
    }
}

#[derive(Debug)]
pub(crate) struct Trace {
    id: u64,
    protocol: Protocol,
    /// `None`: tracing is off.
    sink: Option<Sink>,
    client: Line,
    server: Line,
}

impl Trace {
    pub(crate) fn new(id: u64, protocol: Protocol, sink: Option<Sink>) -> Self {
        Self {
            id,
            protocol,
            sink,
            client: Line::default(),
            server: Line::default(),
        }
    }

    /// Whether lines are shown at all.
    pub(crate) fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Something about the connection that is not protocol text.
    pub(crate) fn note(&self, text: &str) {
        if let Some(sink) = &self.sink {
            sink.emit(self.id, self.protocol, Said::Note, text);
        }
    }

    /// A failure worth a log line, printed whether tracing is on or not.
    pub(crate) fn error(&self, text: &str) {
        eprintln!("[{} #{}] error: {text}", self.protocol.name(), self.id);
        if let Some(sink) = &self.sink {
            sink.emit(
                self.id,
                self.protocol,
                Said::Error,
                &printable(text.as_bytes()),
            );
        }
    }

    /// Bytes from the client. `sasl` is the session's answer, asked before
    /// these bytes were handed to it, to whether its next line is a SASL
    /// response; it decides for a line that starts here, so the driver
    /// passes at most one line start per call.
    pub(crate) fn client(&mut self, bytes: &[u8], sasl: bool) {
        let Some(sink) = &self.sink else { return };
        let (id, protocol) = (self.id, self.protocol);
        self.client.take(bytes, sasl, |line, secret| {
            let shown = if secret {
                "****".to_string()
            } else {
                mask(protocol, &printable(line))
            };
            sink.emit(id, protocol, Said::Client, &shown);
        });
    }

    pub(crate) fn server(&mut self, bytes: &[u8]) {
        let Some(sink) = &self.sink else { return };
        let (id, protocol) = (self.id, self.protocol);
        self.server.take(bytes, false, |line, _| {
            sink.emit(id, protocol, Said::Server, &printable(line));
        });
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            sink.emit(self.id, self.protocol, Said::Closed, "");
        }
    }
}

/// The line as a terminal can show it without being steered by it: control
/// characters (C0, C1), Unicode format characters (bidi overrides and
/// isolates, zero-width marks) and line or paragraph separators are written
/// as `\u{..}` escapes, bytes that are not UTF-8 as `\x..`.
pub(crate) fn printable(line: &[u8]) -> String {
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
        (Protocol::Smtp | Protocol::SmtpOut, "AUTH") | (Protocol::Pop3, "AUTH" | "APOP") => 2,
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

    fn lines(chunks: &[(&[u8], bool)]) -> Vec<(String, bool)> {
        let mut line = Line::default();
        let mut seen = Vec::new();
        for (bytes, sasl) in chunks {
            line.take(bytes, *sasl, |l, secret| {
                seen.push((String::from_utf8_lossy(l).into_owned(), secret));
            });
        }
        seen
    }

    #[test]
    fn lines_are_split_across_reads() {
        assert_eq!(
            lines(&[(b"HEL", false), (b"O a\r\nNOOP\r\nQ", false)]),
            [("HELO a".to_string(), false), ("NOOP".to_string(), false)]
        );
    }

    #[test]
    fn the_secret_decision_is_taken_where_a_line_starts() {
        // Told "secret" while the line runs on: the line stays as it began.
        assert_eq!(
            lines(&[
                (b"AUTH LO", false),
                (b"GIN\r\n", true),
                (b"x", true),
                (b"y\n", false)
            ]),
            [("AUTH LOGIN".to_string(), false), ("xy".to_string(), true)]
        );
    }

    #[test]
    fn an_over_long_line_is_cut_once_and_its_tail_never_shown() {
        let long = vec![b'a'; MAX_LINE + 500];
        let seen = lines(&[
            (&long[..700], true),
            (&long[700..], false),
            (b"\r\nNOOP\r\n", false),
        ]);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, format!("{} [...]", "a".repeat(MAX_LINE)));
        assert!(seen[0].1, "the whole long line keeps its first decision");
        assert_eq!(seen[1], ("NOOP".to_string(), false));
    }
}
