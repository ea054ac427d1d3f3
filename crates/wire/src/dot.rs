use memchr::memchr2;

/// What to do with a CR or LF that is not part of a CRLF pair inside a message.
///
/// Either way such a byte never ends the message: only `CRLF . CRLF` does. That
/// closes the "SMTP smuggling" hole, where two servers disagree on where a
/// message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BareLineEndings {
    /// Keep the bytes as they are and remember that one was seen, so the
    /// message can be refused once it has been read to its end.
    #[default]
    Reject,
    /// Turn each bare CR or bare LF into CRLF.
    Normalize,
}

/// Where a [`DotDecoder`] stands after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decoded {
    /// All input was consumed and the end marker has not been seen yet.
    Incomplete,
    /// The end marker was found; `consumed` input bytes (marker included) belong
    /// to the message and the rest is the next command.
    Complete {
        /// Bytes of the input that belonged to the message.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line that follows a real CRLF.
    LineStart,
    /// A `.` opened the line; it is dropped whatever follows.
    Dot,
    /// `.` and CR opened the line; LF next would end the message.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    Cr,
    /// The end marker has been seen.
    Done,
}

/// Where decoded bytes go: a buffer, or nowhere when the message is being
/// skipped after it was refused.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Nowhere;

impl Sink for Nowhere {
    #[inline]
    fn put(&mut self, _: &[u8]) {}
}

/// Streaming decoder for dot-stuffed message text (RFC 5321 §4.5.2, RFC 1939 §3).
///
/// Removes the leading `.` of every line that starts with one and stops at
/// `CRLF . CRLF` (the leading CRLF may be the one that ended the command, as the
/// decoder starts at the beginning of a line). The final CRLF of the message is
/// kept; the terminating `.CRLF` is not output. The state survives between calls,
/// so input may be split anywhere with the same result, and nothing is ever
/// re-scanned.
///
/// The decoder also watches two things the caller may want to refuse: bare CR or
/// LF ([`BareLineEndings`]) and lines longer than a limit.
#[derive(Debug, Clone)]
pub struct DotDecoder {
    state: State,
    policy: BareLineEndings,
    bare_seen: bool,
    max_line: usize,
    line_len: usize,
    long_line: bool,
}

impl DotDecoder {
    /// A decoder positioned at the start of a message.
    ///
    /// `max_line` is the longest line, CRLF included, that does not set
    /// [`DotDecoder::saw_long_line`] (1000 for SMTP, RFC 5321 §4.5.3.1.6).
    pub fn new(policy: BareLineEndings, max_line: usize) -> Self {
        Self {
            state: State::LineStart,
            policy,
            bare_seen: false,
            max_line,
            line_len: 0,
            long_line: false,
        }
    }

    /// Whether a bare CR or LF has been seen (whatever the policy did with it).
    pub fn saw_bare_line_ending(&self) -> bool {
        self.bare_seen
    }

    /// Whether a line longer than the limit has been seen.
    pub fn saw_long_line(&self) -> bool {
        self.long_line
    }

    /// Whether the end marker has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, appending message bytes to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        self.run(input, out)
    }

    /// Reads past `input` looking only for the end, for a message already refused.
    pub fn skip(&mut self, input: &[u8]) -> Decoded {
        self.run(input, &mut Nowhere)
    }

    /// A line ended; `total` is its length with its line ending.
    #[inline]
    fn end_line(&mut self, total: usize) {
        if total > self.max_line {
            self.long_line = true;
        }
        self.line_len = 0;
    }

    fn run<S: Sink>(&mut self, input: &[u8], out: &mut S) -> Decoded {
        let len = input.len();
        let mut i = 0;
        // Start of the bytes that are to be copied out but have not been yet.
        let mut run = 0;
        while i < len {
            match self.state {
                State::LineStart => {
                    if input[i] == b'.' {
                        out.put(&input[run..i]);
                        i += 1;
                        run = i;
                        self.line_len = 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        run = i;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return Decoded::Complete { consumed: i + 1 };
                    }
                    // "." CR x: the dot stays dropped, the held-back CR was bare.
                    out.put(b"\r");
                    self.line_len += 1;
                    self.state = State::Text;
                    self.bare_cr(input, out, &mut run, i);
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        i += 1;
                        self.end_line(self.line_len + 1);
                        self.state = State::LineStart;
                    } else {
                        self.state = State::Text;
                        self.bare_cr(input, out, &mut run, i);
                    }
                }
                State::Text => {
                    let rest = &input[i..];
                    match memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.line_len += rest.len();
                            i = len;
                        }
                        Some(off) => {
                            let at = i + off;
                            self.line_len += off;
                            if input[at] == b'\r' {
                                self.line_len += 1;
                                i = at + 1;
                                match input.get(i) {
                                    Some(b'\n') => {
                                        i += 1;
                                        self.end_line(self.line_len + 1);
                                        self.state = State::LineStart;
                                    }
                                    Some(_) => self.bare_cr(input, out, &mut run, i),
                                    None => self.state = State::Cr,
                                }
                            } else {
                                // LF without CR.
                                self.bare_seen = true;
                                match self.policy {
                                    BareLineEndings::Reject => self.line_len += 1,
                                    BareLineEndings::Normalize => {
                                        out.put(&input[run..at]);
                                        out.put(b"\r\n");
                                        run = at + 1;
                                        self.end_line(self.line_len + 2);
                                    }
                                }
                                i = at + 1;
                            }
                        }
                    }
                }
                State::Done => return Decoded::Complete { consumed: 0 },
            }
        }
        if self.line_len > self.max_line {
            self.long_line = true;
        }
        out.put(&input[run..len]);
        Decoded::Incomplete
    }

    /// The CR just before `at` (already output, or pending in `input[run..at]`)
    /// is not followed by LF.
    #[inline]
    fn bare_cr<S: Sink>(&mut self, input: &[u8], out: &mut S, run: &mut usize, at: usize) {
        self.bare_seen = true;
        if self.policy == BareLineEndings::Normalize {
            out.put(&input[*run..at]);
            out.put(b"\n");
            *run = at;
            self.end_line(self.line_len + 1);
        }
    }
}

/// Streaming encoder that makes any bytes safe to send as dot-stuffed text.
///
/// Every line that starts with `.` gets a second one, every bare CR or bare LF
/// becomes CRLF, and [`DotEncoder::finish`] closes the text with `.CRLF`
/// (adding a CRLF first if the text did not end with one). The output always
/// decodes back to the input with its line ends made CRLF.
#[derive(Debug, Clone)]
pub struct DotEncoder {
    at_line_start: bool,
    after_cr: bool,
}

impl Default for DotEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DotEncoder {
    /// An encoder positioned at the start of a message.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            after_cr: false,
        }
    }

    /// Whether the bytes so far ended a line (the next byte starts one).
    pub fn at_line_start(&self) -> bool {
        self.at_line_start && !self.after_cr
    }

    /// Encodes `input`, appending the stuffed bytes to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let len = input.len();
        let mut i = 0;
        let mut run = 0;
        if self.after_cr && len > 0 {
            self.after_cr = false;
            self.at_line_start = true;
            if input[0] == b'\n' {
                out.push(b'\n');
                i = 1;
                run = 1;
            } else {
                out.push(b'\n');
            }
        }
        while i < len {
            if self.at_line_start {
                self.at_line_start = false;
                if input[i] == b'.' {
                    out.extend_from_slice(&input[run..i]);
                    out.push(b'.');
                    run = i;
                }
            }
            match memchr2(b'\r', b'\n', &input[i..]) {
                None => break,
                Some(off) => {
                    let at = i + off;
                    if input[at] == b'\r' {
                        match input.get(at + 1) {
                            Some(b'\n') => i = at + 2,
                            Some(_) => {
                                out.extend_from_slice(&input[run..=at]);
                                out.push(b'\n');
                                run = at + 1;
                                i = at + 1;
                            }
                            None => {
                                self.after_cr = true;
                                break;
                            }
                        }
                    } else {
                        out.extend_from_slice(&input[run..at]);
                        out.extend_from_slice(b"\r\n");
                        run = at + 1;
                        i = at + 1;
                    }
                    self.at_line_start = true;
                }
            }
        }
        out.extend_from_slice(&input[run..len]);
    }

    /// Ends the text: completes the last line and appends the `.CRLF` marker.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.after_cr {
            out.push(b'\n');
        } else if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(policy: BareLineEndings, input: &[u8], step: usize) -> (Vec<u8>, usize, bool) {
        let mut d = DotDecoder::new(policy, 1000);
        let mut out = Vec::new();
        let mut offset = 0;
        for chunk in input.chunks(step.max(1)) {
            match d.decode(chunk, &mut out) {
                Decoded::Incomplete => offset += chunk.len(),
                Decoded::Complete { consumed } => {
                    return (out, offset + consumed, d.saw_bare_line_ending());
                }
            }
        }
        panic!("no end found in {input:?}");
    }

    fn check(policy: BareLineEndings, input: &[u8], body: &[u8], consumed: usize, bare: bool) {
        for step in 1..=input.len() {
            let (out, c, b) = decode_split(policy, input, step);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(body),
                "step {step}"
            );
            assert_eq!(c, consumed, "step {step}");
            assert_eq!(b, bare, "step {step}");
        }
    }

    #[test]
    fn empty_message() {
        check(BareLineEndings::Reject, b".\r\nQUIT\r\n", b"", 3, false);
    }

    #[test]
    fn unstuffs_and_keeps_final_crlf() {
        let input = b"Subject: hi\r\n\r\n..leading dot\r\n.x\r\n...\r\nlast\r\n.\r\nNOOP\r\n";
        let body = b"Subject: hi\r\n\r\n.leading dot\r\nx\r\n..\r\nlast\r\n";
        check(BareLineEndings::Reject, input, body, input.len() - 6, false);
    }

    #[test]
    fn smuggling_probes_never_end_the_message() {
        for probe in [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n"] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(probe);
            input.extend_from_slice(b"MAIL FROM:<x@y>\r\n.\r\n");
            let end = input.len();
            input.extend_from_slice(b"QUIT\r\n");
            for step in 1..=input.len() {
                let (out, consumed, bare) = decode_split(BareLineEndings::Reject, &input, step);
                assert_eq!(consumed, end, "probe {probe:?} step {step}");
                assert!(bare, "probe {probe:?}");
                assert!(out.ends_with(b"MAIL FROM:<x@y>\r\n"), "probe {probe:?}");
            }
        }
    }

    #[test]
    fn normalize_turns_bare_endings_into_crlf() {
        check(
            BareLineEndings::Normalize,
            b"a\nb\rc\r\n.\n.d\r\n.\r\n",
            b"a\r\nb\r\nc\r\n\r\n.d\r\n",
            16,
            true,
        );
        check(
            BareLineEndings::Normalize,
            b".\rx\r\n.\r\n",
            b"\r\nx\r\n",
            8,
            true,
        );
    }

    #[test]
    fn long_lines_are_noticed() {
        let mut input = vec![b'x'; 998];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut d = DotDecoder::new(BareLineEndings::Reject, 1000);
        let mut out = Vec::new();
        assert_eq!(
            d.decode(&input, &mut out),
            Decoded::Complete { consumed: 1003 }
        );
        assert!(!d.saw_long_line());
        let mut input = vec![b'x'; 999];
        input.extend_from_slice(b"\r\n.\r\n");
        for step in [1, 7, 500, 1004] {
            let mut d = DotDecoder::new(BareLineEndings::Reject, 1000);
            for chunk in input.chunks(step) {
                let _ = d.skip(chunk);
            }
            assert!(d.is_done());
            assert!(d.saw_long_line(), "step {step}");
        }
    }

    fn encode_split(input: &[u8], step: usize) -> Vec<u8> {
        let mut e = DotEncoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            e.encode(chunk, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn encoder_stuffs_and_terminates() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".\r\n..x\n.", b"..\r\n...x\r\n..\r\n.\r\n"),
            (b"a\rb\n\r", b"a\r\nb\r\n\r\n.\r\n"),
            (b"\r\n\r\n", b"\r\n\r\n.\r\n"),
        ];
        for (input, expected) in cases {
            for step in 1..=input.len().max(1) {
                assert_eq!(
                    String::from_utf8_lossy(&encode_split(input, step)),
                    String::from_utf8_lossy(expected),
                    "input {input:?} step {step}"
                );
            }
        }
    }
}
