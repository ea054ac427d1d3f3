//! Streaming a message out for RETR and TOP: the `+OK` line, the stuffed
//! text, and for TOP where to stop.

use std::io::Write as _;

use memchr::memchr2;
use postamt_wire::DotEncoder;

use crate::response::{Status, write_line};

/// TOP's view of the message: where the header ends and how many body lines
/// are still wanted. Line ends are counted as the encoder makes them: CRLF,
/// bare CR and bare LF each end one line.
#[derive(Debug, Clone)]
pub(super) struct TopCounter {
    in_header: bool,
    remaining: u32,
    line_has_text: bool,
    after_cr: bool,
}

impl TopCounter {
    pub(super) fn new(lines: u32) -> Self {
        Self {
            in_header: true,
            remaining: lines,
            line_has_text: false,
            after_cr: false,
        }
    }

    /// How much of `chunk` to send: `Some(cut)` when the wanted lines end at
    /// `cut`, `None` when all of it is wanted.
    pub(super) fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            }
        }
        while let Some(off) = memchr2(b'\r', b'\n', &chunk[i..]) {
            let at = i + off;
            let text = self.line_has_text || off > 0;
            let mut next = at + 1;
            if chunk[at] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.in_header {
                if !text {
                    self.in_header = false;
                    if self.remaining == 0 {
                        return Some(at + 1);
                    }
                }
            } else {
                self.remaining -= 1;
                if self.remaining == 0 {
                    return Some(at + 1);
                }
            }
            self.line_has_text = false;
            i = next;
        }
        if i < chunk.len() {
            self.line_has_text = true;
        }
        None
    }
}

#[derive(Debug)]
pub(super) struct Streaming {
    pub(super) encoder: DotEncoder,
    pub(super) started: bool,
    pub(super) size: u64,
    pub(super) top: Option<TopCounter>,
}

pub(super) fn write_message_head(out: &mut Vec<u8>, top_text: &str, streaming: &Streaming) {
    if streaming.top.is_some() {
        write_line(out, Status::Ok, None, &[top_text.as_bytes()]);
    } else {
        let mut text = Vec::with_capacity(32);
        let _ = write!(text, "{} octets", streaming.size);
        write_line(out, Status::Ok, None, &[&text]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(lines: u32, message: &[u8], step: usize) -> Vec<u8> {
        let mut counter = TopCounter::new(lines);
        let mut encoder = DotEncoder::new();
        let mut out = Vec::new();
        for chunk in message.chunks(step.max(1)) {
            if let Some(cut) = counter.scan(chunk) {
                encoder.encode(&chunk[..cut], &mut out);
                encoder.finish(&mut out);
                return out;
            }
            encoder.encode(chunk, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    #[test]
    fn top_counts_lines_however_split() {
        let message = b"Subject: a\r\nFrom: b\r\n\r\none\r\n.two\r\nthree\r\n";
        let cases: [(u32, &[u8]); 4] = [
            (0, b"Subject: a\r\nFrom: b\r\n\r\n.\r\n"),
            (1, b"Subject: a\r\nFrom: b\r\n\r\none\r\n.\r\n"),
            (2, b"Subject: a\r\nFrom: b\r\n\r\none\r\n..two\r\n.\r\n"),
            (
                10,
                b"Subject: a\r\nFrom: b\r\n\r\none\r\n..two\r\nthree\r\n.\r\n",
            ),
        ];
        for (lines, expected) in cases {
            for step in 1..=message.len() {
                assert_eq!(
                    String::from_utf8_lossy(&top(lines, message, step)),
                    String::from_utf8_lossy(expected),
                    "lines {lines} step {step}"
                );
            }
        }
    }

    #[test]
    fn top_with_bare_line_ends_and_no_body() {
        for step in 1..=12 {
            assert_eq!(
                top(1, b"H: x\n\nb1\rb2\n", step),
                b"H: x\r\n\r\nb1\r\n.\r\n"
            );
            assert_eq!(top(0, b"H: x\r\nH: y", step), b"H: x\r\nH: y\r\n.\r\n");
            assert_eq!(top(0, b"\r\nbody", step), b"\r\n.\r\n");
        }
    }
}
