use memchr::{memchr, memchr2};

/// Cuts a byte stream into lines that end in CRLF, and nothing else.
///
/// The framer does not own a buffer: the caller keeps the unconsumed input and
/// hands it to [`LineFramer::next`] again when more bytes arrive. The framer
/// remembers how far it already looked, so a line trickling in byte by byte is
/// scanned once, not once per byte.
///
/// A line longer than the limit is never buffered: the framer tells the caller to
/// drop its bytes as they arrive ([`Frame::Discarded`]) and reports
/// [`Frame::TooLong`] once its CRLF has gone by, so the reply to it comes in order
/// and the stream stays in step.
#[derive(Debug, Clone)]
pub struct LineFramer {
    limit: usize,
    scanned: usize,
    overlong: bool,
    prev_cr: bool,
}

/// What [`LineFramer::next`] found at the front of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Frame<'a> {
    /// No complete line yet; nothing was consumed. Call again with more bytes.
    Incomplete,
    /// A complete line.
    Line {
        /// The line without its CRLF.
        line: &'a [u8],
        /// Bytes to remove from the front of the input (the line and its CRLF).
        consumed: usize,
        /// The line holds a CR or LF that is not part of a CRLF pair. Such a line
        /// must be refused, never split or repaired.
        bare: bool,
    },
    /// Bytes of an over-long line that the caller must drop now. More follow.
    Discarded {
        /// Bytes to remove from the front of the input.
        consumed: usize,
    },
    /// The CRLF that ends an over-long line has been seen; the line is gone.
    TooLong {
        /// Bytes to remove from the front of the input.
        consumed: usize,
    },
}

impl LineFramer {
    /// A framer for lines of at most `limit` octets, CRLF included
    /// (RFC 5321 §4.5.3.1.4 counts it: 512 for SMTP commands).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(2),
            scanned: 0,
            overlong: false,
            prev_cr: false,
        }
    }

    /// The line limit, CRLF included.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the limit for the next line (an AUTH exchange allows longer lines).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(2);
    }

    /// Forgets any partial line, for when the caller drops its buffered input.
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.overlong = false;
        self.prev_cr = false;
    }

    /// Looks for the next line at the front of `input`.
    ///
    /// `input` must start where the previous call's `consumed` bytes ended, and
    /// must still hold any bytes an `Incomplete` result left in place.
    pub fn next<'a>(&mut self, input: &'a [u8]) -> Frame<'a> {
        if self.overlong {
            return self.skip_overlong(input);
        }
        let window = &input[..input.len().min(self.limit)];
        let mut from = self.scanned.min(window.len());
        while let Some(off) = memchr(b'\n', &window[from..]) {
            let lf = from + off;
            if lf > 0 && window[lf - 1] == b'\r' {
                self.scanned = 0;
                let line = &input[..lf - 1];
                return Frame::Line {
                    line,
                    consumed: lf + 1,
                    bare: memchr2(b'\r', b'\n', line).is_some(),
                };
            }
            from = lf + 1;
        }
        if input.len() >= self.limit {
            self.scanned = 0;
            self.overlong = true;
            self.prev_cr = window[window.len() - 1] == b'\r';
            return Frame::Discarded {
                consumed: window.len(),
            };
        }
        self.scanned = input.len();
        Frame::Incomplete
    }

    fn skip_overlong<'a>(&mut self, input: &'a [u8]) -> Frame<'a> {
        if input.is_empty() {
            return Frame::Incomplete;
        }
        let mut from = 0;
        while let Some(off) = memchr(b'\n', &input[from..]) {
            let lf = from + off;
            let after_cr = if lf == 0 {
                self.prev_cr
            } else {
                input[lf - 1] == b'\r'
            };
            if after_cr {
                self.overlong = false;
                self.prev_cr = false;
                return Frame::TooLong { consumed: lf + 1 };
            }
            from = lf + 1;
        }
        self.prev_cr = input[input.len() - 1] == b'\r';
        Frame::Discarded {
            consumed: input.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, keeping unconsumed bytes the way
    /// a session does, and describes every frame as a string.
    fn frames(limit: usize, input: &[u8], step: usize) -> Vec<String> {
        let mut framer = LineFramer::new(limit);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match framer.next(&buf) {
                    Frame::Incomplete => break,
                    Frame::Line {
                        line,
                        consumed,
                        bare,
                    } => {
                        out.push(format!(
                            "line {:?}{}",
                            String::from_utf8_lossy(line),
                            if bare { " bare" } else { "" }
                        ));
                        buf.drain(..consumed);
                    }
                    Frame::Discarded { consumed } => {
                        assert!(consumed > 0);
                        buf.drain(..consumed);
                    }
                    Frame::TooLong { consumed } => {
                        out.push("too long".to_string());
                        buf.drain(..consumed);
                    }
                }
            }
            assert!(buf.len() <= limit, "buffered {} > limit", buf.len());
        }
        out
    }

    fn all_splits(limit: usize, input: &[u8], expected: &[&str]) {
        for step in 1..=input.len() {
            assert_eq!(frames(limit, input, step), expected, "step {step}");
        }
    }

    #[test]
    fn crlf_lines() {
        all_splits(
            512,
            b"HELO a\r\nNOOP\r\n\r\nQUIT\r\npartial",
            &[
                "line \"HELO a\"",
                "line \"NOOP\"",
                "line \"\"",
                "line \"QUIT\"",
            ],
        );
    }

    #[test]
    fn bare_lf_and_cr_never_end_a_line() {
        all_splits(
            512,
            b"NOOP\nNOOP\r\nA\rB\r\n\n\r\n",
            &[
                "line \"NOOP\\nNOOP\" bare",
                "line \"A\\rB\" bare",
                "line \"\\n\" bare",
            ],
        );
    }

    #[test]
    fn limit_counts_the_crlf() {
        // 8 octets with CRLF fit a limit of 8; 9 do not.
        all_splits(8, b"123456\r\n", &["line \"123456\""]);
        all_splits(8, b"1234567\r\nOK\r\n", &["too long", "line \"OK\""]);
    }

    #[test]
    fn overlong_line_is_skipped_not_buffered() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\x0a\r\nNOOP\r\n");
        all_splits(16, &input, &["too long", "line \"\"", "line \"NOOP\""]);
        // CR LF split across the discard boundary.
        let mut input = vec![b'y'; 20];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        all_splits(16, &input, &["too long", "line \"QUIT\""]);
        // A bare LF inside an over-long line does not end it.
        let mut input = vec![b'z'; 20];
        input.extend_from_slice(b"\nzz\r\nQUIT\r\n");
        all_splits(16, &input, &["too long", "line \"QUIT\""]);
    }
}
