//! Loop protection on incoming mail: a message that passed too many
//! servers is caught in a loop (RFC 5321 §6.3).

use postamt_smtp::{EnhancedCode, Reply};

/// More `Received:` fields than this and the message is refused: Postfix's
/// `hopcount_limit` (RFC 5321 §6.3 asks for at least 100 as a limit on a
/// loop's damage; 50 is what deployed servers use).
pub const MAX_HOPS: usize = 50;

/// Counts the `Received:` fields of a message head as it streams in, in
/// any split; stops at the empty line that ends the header section, so
/// a body quoting headers does not count. Memory is a few bytes.
#[derive(Debug, Clone, Default)]
pub struct HopCounter {
    count: usize,
    done: bool,
    /// Bytes of the current line so far (saturating).
    line: usize,
    /// The current line so far is exactly a CR.
    cr_only: bool,
    /// What the current line is known to be, once known.
    verdict: Option<bool>,
    /// How much of `received` matched, then whitespace before the colon.
    matched: usize,
}

const NAME: &[u8] = b"received";

impl HopCounter {
    /// A counter at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            if b == b'\n' {
                if self.line == 0 || self.cr_only {
                    self.done = true;
                }
                self.line = 0;
                self.cr_only = false;
                self.verdict = None;
                self.matched = 0;
                continue;
            }
            self.cr_only = self.line == 0 && b == b'\r';
            self.line = self.line.saturating_add(1);
            if self.verdict.is_some() {
                continue;
            }
            let at = self.matched;
            if at < NAME.len() {
                if b.to_ascii_lowercase() == NAME[at] {
                    self.matched += 1;
                } else {
                    self.verdict = Some(false);
                }
            } else if b == b':' {
                self.verdict = Some(true);
                self.count += 1;
            } else if !matches!(b, b' ' | b'\t') || self.line > 32 {
                // Obsolete syntax allows blanks before the colon (RFC 5322 §4.5).
                self.verdict = Some(false);
            }
        }
    }

    /// `Received:` fields seen so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the header section has ended (the count is final).
    pub fn head_done(&self) -> bool {
        self.done
    }

    /// Whether the message has passed more than [`MAX_HOPS`] servers.
    pub fn too_many(&self) -> bool {
        self.count > MAX_HOPS
    }
}

/// The `Received:` fields in `message` (its header section; the body is
/// not looked at).
pub fn count_received(message: &[u8]) -> usize {
    let mut counter = HopCounter::new();
    counter.feed(message);
    counter.count()
}

/// `554 5.4.6 Too many hops`: the server's answer to a message with more
/// than [`MAX_HOPS`] `Received:` fields (RFC 5321 §6.3, RFC 3463 X.4.6
/// "routing loop detected").
pub fn too_many_hops() -> Reply {
    Reply::new(
        554,
        EnhancedCode::new(5, 4, 6),
        "Too many hops: routing loop detected",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(received: usize) -> Vec<u8> {
        let mut m = Vec::new();
        for i in 0..received {
            m.extend_from_slice(
                format!(
                    "Received: from h{i}.example\r\n\tby h{}.example; x\r\n",
                    i + 1
                )
                .as_bytes(),
            );
        }
        m.extend_from_slice(
            b"Subject: Received: not this\r\nX-Received: nor this\r\nReceivedX: nor\r\n",
        );
        m.extend_from_slice(b"received : obsolete, but a field\r\nRECEIVED:upper\r\n");
        m.extend_from_slice(b"\r\nReceived: in the body, not counted\r\n");
        m
    }

    #[test]
    fn counts_fields_of_the_head_only() {
        assert_eq!(count_received(&head(0)), 2);
        assert_eq!(count_received(&head(49)), 51);
        assert_eq!(
            count_received(b"Received: a\n\nReceived: b\n"),
            1,
            "bare LF ends lines too"
        );
        assert_eq!(count_received(b""), 0);
        assert_eq!(count_received(b"\r\nReceived: x\r\n"), 0, "empty head");
    }

    #[test]
    fn any_split_gives_the_same_count() {
        let message = head(7);
        for split in 0..message.len() {
            let mut c = HopCounter::new();
            c.feed(&message[..split]);
            c.feed(&message[split..]);
            assert_eq!(c.count(), 9, "split at {split}");
            assert!(c.head_done());
        }
        let mut c = HopCounter::new();
        for b in &message {
            c.feed(std::slice::from_ref(b));
        }
        assert_eq!(c.count(), 9);
    }

    #[test]
    fn over_fifty_is_refused() {
        let mut c = HopCounter::new();
        c.feed(&head(48));
        assert_eq!(c.count(), 50);
        assert!(!c.too_many());
        let mut c = HopCounter::new();
        c.feed(&head(49));
        assert!(c.too_many());
        assert_eq!(
            too_many_hops().to_string(),
            "554 5.4.6 Too many hops: routing loop detected"
        );
    }
}
