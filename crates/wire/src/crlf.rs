//! The one rule for the line ends of message text on the wire.
//!
//! Text sent dot-stuffed (POP3 RETR and TOP, SMTP DATA from a client) goes
//! out with CRLF line ends, whatever the stored bytes use:
//!
//! - CRLF stays CRLF;
//! - a bare CR (one not followed by LF, also at the very end) becomes CRLF;
//! - a bare LF (one not preceded by CR) becomes CRLF, so CR CR LF is a bare
//!   CR and then CRLF: two line ends;
//! - text that is not empty and does not end with a line end gets CRLF;
//!   empty text stays empty.
//!
//! [`DotEncoder`](crate::DotEncoder) applies exactly this rule before it
//! stuffs. [`CrlfSize`] counts the octets the rule gives, so a POP3 server
//! lists a message at the size RETR then sends, and [`CrlfNormalizer`]
//! rewrites text by it, for stores that serve their messages ready to send.

use memchr::memchr2;

/// Counts the octets of text after [the rule](self), fed in chunks of any
/// size.
#[derive(Debug, Clone, Default)]
pub struct CrlfSize {
    raw: u64,
    added: u64,
    /// The last byte seen was a CR whose partner is not known yet.
    after_cr: bool,
    last: Option<u8>,
}

impl CrlfSize {
    /// A counter that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts the next bytes of the text.
    pub fn update(&mut self, chunk: &[u8]) {
        let Some(&last) = chunk.last() else {
            return;
        };
        self.raw += chunk.len() as u64;
        self.last = Some(last);
        let mut i = 0;
        if self.after_cr {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            } else {
                self.added += 1;
            }
        }
        while let Some(off) = memchr2(b'\r', b'\n', &chunk[i..]) {
            let at = i + off;
            i = at + 1;
            if chunk[at] == b'\n' {
                self.added += 1;
                continue;
            }
            match chunk.get(i) {
                Some(b'\n') => i += 1,
                Some(_) => self.added += 1,
                None => self.after_cr = true,
            }
        }
    }

    /// Octets as fed.
    pub fn raw(&self) -> u64 {
        self.raw
    }

    /// Octets after the rule, as if the text ended here.
    pub fn size(&self) -> u64 {
        let tail = match self.last {
            _ if self.after_cr => 1,
            None | Some(b'\n') => 0,
            Some(_) => 2,
        };
        self.raw + self.added + tail
    }
}

/// The size of `text` after [the rule](self).
pub fn crlf_size(text: &[u8]) -> u64 {
    let mut size = CrlfSize::new();
    size.update(text);
    size.size()
}

/// Rewrites text by [the rule](self), fed in chunks of any size.
#[derive(Debug, Clone)]
pub struct CrlfNormalizer {
    after_cr: bool,
    at_line_start: bool,
}

impl Default for CrlfNormalizer {
    fn default() -> Self {
        Self::new()
    }
}

impl CrlfNormalizer {
    /// A normalizer at the start of a text.
    pub fn new() -> Self {
        Self {
            after_cr: false,
            at_line_start: true,
        }
    }

    /// Appends the next bytes of the text to `out`, line ends made CRLF. A
    /// CR at the end of `chunk` is written; its LF follows with the next
    /// byte or with [`finish`](Self::finish).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = chunk.last() else {
            return;
        };
        let mut i = 0;
        let mut run = 0;
        if self.after_cr {
            self.after_cr = false;
            out.push(b'\n');
            if chunk[0] == b'\n' {
                i = 1;
                run = 1;
            }
        }
        while let Some(off) = memchr2(b'\r', b'\n', &chunk[i..]) {
            let at = i + off;
            i = at + 1;
            if chunk[at] == b'\n' {
                out.extend_from_slice(&chunk[run..at]);
                out.extend_from_slice(b"\r\n");
                run = i;
                continue;
            }
            match chunk.get(i) {
                Some(b'\n') => i += 1,
                Some(_) => {
                    out.extend_from_slice(&chunk[run..i]);
                    out.push(b'\n');
                    run = i;
                }
                None => self.after_cr = true,
            }
        }
        out.extend_from_slice(&chunk[run..]);
        self.at_line_start = last == b'\n';
    }

    /// The text has ended: completes its last line if needed. The
    /// normalizer is then ready for a new text.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.after_cr {
            out.push(b'\n');
        } else if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        *self = Self::new();
    }

    /// Whether `text` is already what [`normalize`](Self::normalize) makes
    /// of it (every line end CRLF and the last line ended, or empty), so a
    /// caller can keep it without a copy.
    pub fn is_normalized(text: &[u8]) -> bool {
        let mut rest = text;
        while let Some(at) = memchr2(b'\r', b'\n', rest) {
            if rest[at] == b'\n' || rest.get(at + 1) != Some(&b'\n') {
                return false;
            }
            rest = &rest[at + 2..];
        }
        rest.is_empty()
    }

    /// Rewrites a whole text at once, the end of its last line included.
    pub fn normalize(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 2);
        let mut n = Self::new();
        n.push(text, &mut out);
        n.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(text: &[u8], step: usize) -> Vec<u8> {
        let mut n = CrlfNormalizer::new();
        let mut out = Vec::new();
        for chunk in text.chunks(step.max(1)) {
            n.push(chunk, &mut out);
        }
        n.finish(&mut out);
        out
    }

    #[test]
    fn normalized_text_is_recognised() {
        for text in [&b""[..], b"a\r\n", b"a\r\nb\r\n\r\n"] {
            assert!(CrlfNormalizer::is_normalized(text), "{text:?}");
            assert_eq!(CrlfNormalizer::normalize(text), text);
        }
        for text in [&b"a"[..], b"a\n", b"a\r", b"a\rb\r\n", b"a\r\nb"] {
            assert!(!CrlfNormalizer::is_normalized(text), "{text:?}");
            assert!(CrlfNormalizer::is_normalized(&CrlfNormalizer::normalize(
                text
            )));
        }
    }

    #[test]
    fn the_rule_by_example() {
        let cases: [(&[u8], &[u8]); 10] = [
            (b"", b""),
            (b"a\r\n", b"a\r\n"),
            (b"a\rb\r\n", b"a\r\nb\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),
            (b"no end", b"no end\r\n"),
            (b"ends in cr\r", b"ends in cr\r\n"),
            (b"\n\r", b"\r\n\r\n"),
            (b"\r\n\r\n", b"\r\n\r\n"),
            (b"a\n\rb", b"a\r\n\r\nb\r\n"),
        ];
        for (text, expected) in cases {
            for step in 1..=text.len().max(1) {
                assert_eq!(normalize(text, step), expected, "{text:?} step {step}");
                let mut size = CrlfSize::new();
                text.chunks(step).for_each(|c| size.update(c));
                assert_eq!(size.size(), expected.len() as u64, "{text:?} step {step}");
                assert_eq!(size.raw(), text.len() as u64);
            }
            assert_eq!(crlf_size(text), expected.len() as u64);
        }
    }
}
