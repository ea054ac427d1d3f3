use memchr::memchr2;

use crate::scan::{BLOCK, Marks};

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
    /// Octets of the current line so far, its line end not counted.
    line_len: usize,
    long_line: bool,
    /// A violation was reported by `decode_checked`.
    stopped: bool,
    /// Lines ended so far.
    lines: u64,
    /// Whether the text is dot-stuffed and ends at `CRLF . CRLF` (off for a
    /// [`LineChecker`], whose text is counted out, as BDAT's is).
    dots: bool,
    /// Whether whole blocks may be passed over (off only to test against
    /// the byte-by-byte path).
    blocks: bool,
}

/// The first rule a message broke, found by [`DotDecoder::decode_checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A CR or LF outside a CRLF pair, under [`BareLineEndings::Reject`].
    BareLineEnding,
    /// A line longer than the decoder's limit.
    LineTooLong,
}

/// What [`DotDecoder::decode_checked`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Checked {
    /// No rule was broken in this input.
    Decoded(Decoded),
    /// A rule was broken: `consumed` bytes were read, up to and including the
    /// byte that settled it, and the output holds what decoded before that.
    /// The position does not depend on how the input was split. Read the
    /// rest of the message with [`DotDecoder::skip`].
    Violation {
        /// Bytes of the input read.
        consumed: usize,
        /// Which rule.
        kind: Violation,
    },
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
            stopped: false,
            lines: 0,
            dots: true,
            blocks: true,
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

    /// How many lines have ended so far: a server restarts its timer on each,
    /// so a client trickling one byte at a time is still cut off.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Whether the end marker has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, appending message bytes to `out`. Broken rules only
    /// set the flags; see [`DotDecoder::decode_checked`] to stop at them.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        match self.run::<_, false>(input, out) {
            Checked::Decoded(d) => d,
            // Without stopping, `run` reports no violation.
            Checked::Violation { .. } => Decoded::Incomplete,
        }
    }

    /// Decodes `input` like [`DotDecoder::decode`], but stops at the first
    /// byte that breaks a rule (a bare CR or LF under
    /// [`BareLineEndings::Reject`], a line over the limit), so a server can
    /// refuse the message at the same point however its bytes arrive.
    /// Reported once; afterwards it decodes as `decode` does.
    pub fn decode_checked(&mut self, input: &[u8], out: &mut Vec<u8>) -> Checked {
        self.run::<_, true>(input, out)
    }

    /// Reads past `input` looking only for the end, for a message already refused.
    pub fn skip(&mut self, input: &[u8]) -> Decoded {
        match self.run::<_, false>(input, &mut Nowhere) {
            Checked::Decoded(d) => d,
            Checked::Violation { .. } => Decoded::Incomplete,
        }
    }

    /// Counts `n` content bytes that start at input index `from`. Returns the
    /// index just past the byte that made the line too long, when one did.
    #[inline]
    fn count(&mut self, from: usize, n: usize) -> Option<usize> {
        // Content of `max_line - 1` octets plus CRLF is one too many.
        let limit = self.max_line.max(2) - 1;
        let before = self.line_len;
        self.line_len += n;
        if before < limit && self.line_len >= limit {
            self.long_line = true;
            Some(from + (limit - before))
        } else {
            None
        }
    }

    fn run<S: Sink, const STOP: bool>(&mut self, input: &[u8], out: &mut S) -> Checked {
        let stop = STOP && !self.stopped;
        // Lines inside a block are too short to break the limit.
        let fast = self.blocks && self.max_line.max(2) - 1 > BLOCK;
        let len = input.len();
        let mut i = 0;
        // Start of the bytes that are to be copied out but have not been yet.
        let mut run = 0;
        macro_rules! violation {
            ($past:expr, $kind:expr) => {{
                let past = $past;
                out.put(&input[run..past]);
                self.stopped = true;
                return Checked::Violation {
                    consumed: past,
                    kind: $kind,
                };
            }};
        }
        while i < len {
            match self.state {
                State::LineStart => {
                    if self.dots && input[i] == b'.' {
                        out.put(&input[run..i]);
                        i += 1;
                        run = i;
                        self.state = State::Dot;
                        if self.count(i - 1, 1).is_some() && stop {
                            violation!(i, Violation::LineTooLong);
                        }
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
                        return Checked::Decoded(Decoded::Complete { consumed: i + 1 });
                    }
                    // "." CR x: the dot stays dropped, the held-back CR was bare.
                    out.put(b"\r");
                    self.state = State::Text;
                    if self.bare_cr(input, out, &mut run, i) && stop {
                        violation!(i, Violation::BareLineEnding);
                    }
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        i += 1;
                        self.lines += 1;
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        self.state = State::Text;
                        if self.bare_cr(input, out, &mut run, i) && stop {
                            violation!(i, Violation::BareLineEnding);
                        }
                    }
                }
                State::Text => {
                    if fast {
                        i = self.blocks(input, i);
                        if self.state != State::Text {
                            continue;
                        }
                    }
                    let rest = &input[i..];
                    match memchr2(b'\r', b'\n', rest) {
                        None => {
                            if let Some(past) = self.count(i, rest.len())
                                && stop
                            {
                                self.line_len = self.max_line.max(2) - 1;
                                violation!(past, Violation::LineTooLong);
                            }
                            i = len;
                        }
                        Some(off) => {
                            let at = i + off;
                            if let Some(past) = self.count(i, off)
                                && stop
                            {
                                self.line_len = self.max_line.max(2) - 1;
                                violation!(past, Violation::LineTooLong);
                            }
                            if input[at] == b'\r' {
                                i = at + 1;
                                match input.get(i) {
                                    Some(b'\n') => {
                                        i += 1;
                                        self.lines += 1;
                                        self.line_len = 0;
                                        self.state = State::LineStart;
                                    }
                                    Some(_) => {
                                        if self.bare_cr(input, out, &mut run, i) && stop {
                                            violation!(i, Violation::BareLineEnding);
                                        }
                                    }
                                    None => self.state = State::Cr,
                                }
                            } else {
                                // LF without CR.
                                self.bare_seen = true;
                                i = at + 1;
                                match self.policy {
                                    BareLineEndings::Reject => {
                                        let _ = self.count(at, 1);
                                        if stop {
                                            violation!(i, Violation::BareLineEnding);
                                        }
                                    }
                                    BareLineEndings::Normalize => {
                                        out.put(&input[run..at]);
                                        out.put(b"\r\n");
                                        run = i;
                                        self.line_len = 0;
                                    }
                                }
                            }
                        }
                    }
                }
                State::Done => return Checked::Decoded(Decoded::Complete { consumed: 0 }),
            }
        }
        out.put(&input[run..len]);
        Checked::Decoded(Decoded::Incomplete)
    }

    /// Passes over whole blocks of plain CRLF lines from `i` (in a line, the
    /// byte before not a CR) and returns where the careful path must go on:
    /// at a block it cannot vouch for or at the tail of the input, in state
    /// `Text`, `LineStart` (the block before ended with LF) or `Cr` (it
    /// ended with CR).
    #[inline(always)]
    fn blocks(&mut self, input: &[u8], mut i: usize) -> usize {
        let limit = self.max_line.max(2) - 1;
        // Where the current line's content began, as a position that may lie
        // before this input (hence wrapping): its length at `p` is
        // `p - begin`.
        let mut begin = i.wrapping_sub(self.line_len);
        // The last byte of the block before was a CR / an LF.
        let mut cr_before = 0u64;
        let mut lf_before = 0u64;
        while let Some(m) = Marks::of(&input[i..]) {
            if !m.crlf_only(cr_before) || (self.dots && m.dot_at_line_start(&input[i..], lf_before))
            {
                break;
            }
            let cr_after = m.cr >> 63;
            if m.lf == 0 {
                // The line goes on through the block (its last CR is no content).
                let end = i + BLOCK - cr_after as usize;
                if end.wrapping_sub(begin) >= limit {
                    break;
                }
            } else {
                // The first LF ends the line; the CR before it may be the last
                // byte of the block before, so `end` may be `i - 1`.
                let end = (i + m.lf.trailing_zeros() as usize).wrapping_sub(1);
                if end.wrapping_sub(begin) >= limit {
                    break;
                }
                begin = i + BLOCK - m.lf.leading_zeros() as usize;
                self.lines += m.line_ends();
            }
            cr_before = cr_after;
            lf_before = m.lf >> 63;
            i += BLOCK;
        }
        self.line_len = (i - cr_before as usize).wrapping_sub(begin);
        self.state = if cr_before != 0 {
            State::Cr
        } else if lf_before != 0 {
            State::LineStart
        } else {
            State::Text
        };
        i
    }

    /// The CR just before `at` (already output, or pending in `input[run..at]`)
    /// is not followed by LF. Returns whether that breaks the policy.
    #[inline]
    fn bare_cr<S: Sink>(&mut self, input: &[u8], out: &mut S, run: &mut usize, at: usize) -> bool {
        self.bare_seen = true;
        match self.policy {
            BareLineEndings::Reject => {
                let _ = self.count(at, 1);
                true
            }
            BareLineEndings::Normalize => {
                out.put(&input[*run..at]);
                out.put(b"\n");
                *run = at;
                self.line_len = 0;
                false
            }
        }
    }
}

/// The rules of message text without the dot-stuffing: for text whose length
/// is counted out instead of ended by a marker (SMTP `BDAT`, RFC 3030).
///
/// It is the [`DotDecoder`] machinery with the dots switched off, so the
/// same bytes break the same rule at the same octet as under `DATA`: a bare
/// CR or LF is refused or turned into CRLF ([`BareLineEndings`]), and a line
/// longer than the limit is reported. A `.` is an ordinary octet and nothing
/// ends the text; say where it ends with [`LineChecker::finish`].
#[derive(Debug, Clone)]
pub struct LineChecker {
    decoder: DotDecoder,
}

impl LineChecker {
    /// A checker at the start of a text; `max_line` as for [`DotDecoder::new`].
    pub fn new(policy: BareLineEndings, max_line: usize) -> Self {
        let mut decoder = DotDecoder::new(policy, max_line);
        decoder.dots = false;
        Self { decoder }
    }

    /// Checks `input`, appending the text to `out` (line ends repaired under
    /// [`BareLineEndings::Normalize`]). Gives [`Checked::Violation`] at the
    /// first broken rule, as [`DotDecoder::decode_checked`] does, and
    /// otherwise `Checked::Decoded(Decoded::Incomplete)`: the end is the
    /// caller's to know. After a violation, stop feeding the text.
    pub fn check(&mut self, input: &[u8], out: &mut Vec<u8>) -> Checked {
        self.decoder.decode_checked(input, out)
    }

    /// The text ended. A CR that closed it was bare (no LF can follow): under
    /// [`BareLineEndings::Reject`] that is the violation returned, under
    /// `Normalize` its LF is appended to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Option<Violation> {
        let d = &mut self.decoder;
        if d.state != State::Cr {
            return None;
        }
        d.state = State::Text;
        d.bare_seen = true;
        match d.policy {
            BareLineEndings::Normalize => {
                out.push(b'\n');
                None
            }
            BareLineEndings::Reject if !d.stopped => {
                d.stopped = true;
                Some(Violation::BareLineEnding)
            }
            BareLineEndings::Reject => None,
        }
    }

    /// How many lines have ended so far (see [`DotDecoder::lines`]).
    pub fn lines(&self) -> u64 {
        self.decoder.lines()
    }

    /// Whether a bare CR or LF has been seen (whatever the policy did with it).
    pub fn saw_bare_line_ending(&self) -> bool {
        self.decoder.saw_bare_line_ending()
    }
}

/// Streaming encoder that makes any bytes safe to send as dot-stuffed text.
///
/// Every line that starts with `.` gets a second one, every bare CR or bare LF
/// becomes CRLF, and [`DotEncoder::finish`] closes the text with `.CRLF`
/// (adding a CRLF first if the text did not end with one). The output always
/// decodes back to the input with its line ends made CRLF by the rule of
/// [`crlf`](crate::crlf), so [`crlf_size`](crate::crlf_size) of the input is
/// the size of the decoded text.
#[derive(Debug, Clone)]
pub struct DotEncoder {
    at_line_start: bool,
    after_cr: bool,
    /// Whether whole blocks may be passed over (off only in tests).
    blocks: bool,
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
            blocks: true,
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
            if self.blocks && self.plain_blocks(input, &mut i) {
                continue;
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

    /// Passes over whole blocks from `i` (inside a line, not just after a
    /// CR) that need no stuffing and no line-end repair. Returns true when
    /// it stopped at the start of a line.
    #[inline(always)]
    fn plain_blocks(&mut self, input: &[u8], i: &mut usize) -> bool {
        while let Some(m) = Marks::of(&input[*i..]) {
            if !m.crlf_only(0) || m.ends_in_cr() || m.dot_at_line_start(&input[*i..], 0) {
                break;
            }
            *i += BLOCK;
            if m.ends_in_lf() {
                self.at_line_start = true;
                return true;
            }
        }
        false
    }

    /// Ends the text: completes the last line and appends the `.CRLF` marker.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.after_cr {
            out.push(b'\n');
        } else if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self {
            blocks: self.blocks,
            ..Self::new()
        };
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

    #[test]
    fn decode_checked_stops_at_the_breaking_byte() {
        // Input, line limit, output before the stop, stop position, rule.
        type Case = (&'static [u8], usize, &'static [u8], usize, Violation);
        let cases: [Case; 5] = [
            (
                b"ab\ncd\r\n.\r\n",
                1000,
                b"ab\n",
                3,
                Violation::BareLineEnding,
            ),
            (
                b"ab\rcd\r\n.\r\n",
                1000,
                b"ab\r",
                3,
                Violation::BareLineEnding,
            ),
            (
                b"x\r\n.\rz\r\n.\r\n",
                1000,
                b"x\r\n\r",
                5,
                Violation::BareLineEnding,
            ),
            // max_line 6: four octets and CRLF fit, five do not.
            (
                b"abcd\r\nabcdef\r\n.\r\n",
                6,
                b"abcd\r\nabcde",
                11,
                Violation::LineTooLong,
            ),
            // The bare LF is the fifth octet too: the bare line end is reported.
            (
                b"abcd\n\r\n.\r\n",
                6,
                b"abcd\n",
                5,
                Violation::BareLineEnding,
            ),
        ];
        for (input, max_line, output, at, kind) in cases {
            for step in 1..=input.len() {
                let mut d = DotDecoder::new(BareLineEndings::Reject, max_line);
                let mut out = Vec::new();
                let mut offset = 0;
                let mut found = None;
                for chunk in input.chunks(step) {
                    match d.decode_checked(chunk, &mut out) {
                        Checked::Violation { consumed, kind } => {
                            found = Some((offset + consumed, kind));
                            break;
                        }
                        Checked::Decoded(Decoded::Incomplete) => offset += chunk.len(),
                        Checked::Decoded(Decoded::Complete { .. }) => break,
                    }
                }
                assert_eq!(found, Some((at, kind)), "{input:?} step {step}");
                assert_eq!(out, output, "{input:?} step {step}");
            }
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

    mod blocks {
        //! The block path against the byte-by-byte path on long, mixed input.
        use super::*;
        use proptest::prelude::*;

        fn pieces() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                8 => (0usize..150).prop_map(|n| vec![b'a'; n]),
                3 => proptest::sample::select(vec![63usize, 64, 65, 66, 98, 99, 100, 998, 999, 1000])
                    .prop_map(|n| vec![b'b'; n]),
                8 => Just(b"\r\n".to_vec()),
                2 => Just(b".".to_vec()),
                2 => Just(b"\r\n.".to_vec()),
                1 => Just(b"\n".to_vec()),
                1 => Just(b"\r".to_vec()),
                1 => Just(b"\r\n..\r\n".to_vec()),
                1 => (900usize..1100).prop_map(|n| vec![b'x'; n]),
                1 => Just(b"\r\n.\r\n".to_vec()),
            ];
            proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
        }

        fn cuts(len: usize, points: &[usize]) -> Vec<(usize, usize)> {
            let mut at: Vec<usize> = points.iter().map(|p| p % (len + 1)).collect();
            at.push(0);
            at.push(len);
            at.sort_unstable();
            at.dedup();
            at.windows(2).map(|w| (w[0], w[1])).collect()
        }

        /// Everything a caller can see of a decode: output, where it stopped
        /// and why, and the decoder's flags and line count at the end.
        type Seen = (Vec<u8>, Vec<String>, bool, bool, u64, bool);

        fn run_checked(mut d: DotDecoder, input: &[u8], points: &[usize]) -> Seen {
            let mut out = Vec::new();
            let mut seen = Vec::new();
            for (a, b) in cuts(input.len(), points) {
                let mut at = a;
                while at < b {
                    match d.decode_checked(&input[at..b], &mut out) {
                        Checked::Violation { consumed, kind } => {
                            seen.push(format!("{kind:?} at {}", at + consumed));
                            at += consumed;
                            while at < b {
                                match d.skip(&input[at..b]) {
                                    Decoded::Complete { consumed } => {
                                        seen.push(format!("end at {}", at + consumed));
                                        return finish(d, out, seen);
                                    }
                                    Decoded::Incomplete => at = b,
                                }
                            }
                        }
                        Checked::Decoded(Decoded::Complete { consumed }) => {
                            seen.push(format!("end at {}", at + consumed));
                            return finish(d, out, seen);
                        }
                        Checked::Decoded(Decoded::Incomplete) => at = b,
                    }
                }
            }
            finish(d, out, seen)
        }

        fn finish(d: DotDecoder, out: Vec<u8>, seen: Vec<String>) -> Seen {
            let (bare, long, lines, done) = (
                d.saw_bare_line_ending(),
                d.saw_long_line(),
                d.lines(),
                d.is_done(),
            );
            (out, seen, bare, long, lines, done)
        }

        fn run_plain(mut d: DotDecoder, input: &[u8], points: &[usize]) -> Seen {
            let mut out = Vec::new();
            let mut seen = Vec::new();
            for (a, b) in cuts(input.len(), points) {
                if let Decoded::Complete { consumed } = d.decode(&input[a..b], &mut out) {
                    seen.push(format!("end at {}", a + consumed));
                    break;
                }
            }
            finish(d, out, seen)
        }

        fn decoder(policy: BareLineEndings, max_line: usize, blocks: bool) -> DotDecoder {
            let mut d = DotDecoder::new(policy, max_line);
            d.blocks = blocks;
            d
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn decoder_blocks_agree_with_bytes(
                input in pieces(),
                points in proptest::collection::vec(any::<usize>(), 0..6),
                normalize in any::<bool>(),
                max_line in prop_oneof![Just(1000usize), Just(100), Just(66), Just(usize::MAX)],
            ) {
                let policy = if normalize { BareLineEndings::Normalize } else { BareLineEndings::Reject };
                prop_assert_eq!(
                    run_checked(decoder(policy, max_line, true), &input, &points),
                    run_checked(decoder(policy, max_line, false), &input, &points)
                );
                prop_assert_eq!(
                    run_plain(decoder(policy, max_line, true), &input, &points),
                    run_plain(decoder(policy, max_line, false), &input, &points)
                );
            }

            #[test]
            fn encoder_blocks_agree_with_bytes(
                input in pieces(),
                points in proptest::collection::vec(any::<usize>(), 0..6),
            ) {
                let mut outs = Vec::new();
                for blocks in [true, false] {
                    let mut e = DotEncoder::new();
                    e.blocks = blocks;
                    let mut out = Vec::new();
                    for (a, b) in cuts(input.len(), &points) {
                        e.encode(&input[a..b], &mut out);
                    }
                    let at_start = e.at_line_start();
                    e.finish(&mut out);
                    outs.push((out, at_start));
                }
                prop_assert_eq!(&outs[0], &outs[1]);
            }
        }
    }

    /// Runs a checker over `input` cut into `step`-sized pieces, then ends
    /// the text: the output and where a rule broke (absolute position).
    fn line_check(
        policy: BareLineEndings,
        max_line: usize,
        input: &[u8],
        step: usize,
    ) -> (Vec<u8>, Option<(usize, Violation)>) {
        let mut c = LineChecker::new(policy, max_line);
        let mut out = Vec::new();
        let mut at = 0;
        for piece in input.chunks(step.max(1)) {
            match c.check(piece, &mut out) {
                Checked::Decoded(Decoded::Incomplete) => at += piece.len(),
                Checked::Decoded(Decoded::Complete { .. }) => panic!("a checked text never ends"),
                Checked::Violation { consumed, kind } => return (out, Some((at + consumed, kind))),
            }
        }
        let end = c.finish(&mut out).map(|kind| (input.len(), kind));
        (out, end)
    }

    fn line_check_all_splits(
        policy: BareLineEndings,
        max_line: usize,
        input: &[u8],
        expected: (&[u8], Option<(usize, Violation)>),
    ) {
        for step in 1..=input.len().max(1) {
            let (out, stop) = line_check(policy, max_line, input, step);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected.0),
                "step {step}"
            );
            assert_eq!(stop, expected.1, "step {step}");
        }
    }

    #[test]
    fn line_checker_passes_dots_and_crlf_text_untouched() {
        let text = b".\r\n..x\r\n.\r\nlast line without end";
        line_check_all_splits(BareLineEndings::Reject, 1000, text, (text, None));
    }

    #[test]
    fn line_checker_refuses_bare_line_ends_where_data_does() {
        use BareLineEndings::Reject;
        let bare_lf = Some((3, Violation::BareLineEnding));
        line_check_all_splits(Reject, 1000, b"ab\ncd\r\n", (b"ab\n", bare_lf));
        let bare_cr = Some((3, Violation::BareLineEnding));
        line_check_all_splits(Reject, 1000, b"ab\rcd\r\n", (b"ab\r", bare_cr));
        // A CR that ends the text is bare too: no LF can follow it.
        let last_cr = Some((3, Violation::BareLineEnding));
        line_check_all_splits(Reject, 1000, b"ab\r", (b"ab\r", last_cr));
    }

    #[test]
    fn line_checker_normalizes_bare_line_ends() {
        use BareLineEndings::Normalize;
        line_check_all_splits(
            Normalize,
            1000,
            b"a\nb\rc\r\n.\n\r",
            (b"a\r\nb\r\nc\r\n.\r\n\r\n", None),
        );
    }

    #[test]
    fn line_checker_finds_the_long_line_at_the_same_octet() {
        // Limit 6, CRLF included: 4 octets of content fit, the 5th breaks it
        // (and is the last octet handed out, as under DATA).
        let input = b"abcd\r\nabcdefgh\r\n";
        let stop = Some((11, Violation::LineTooLong));
        line_check_all_splits(BareLineEndings::Reject, 6, input, (b"abcd\r\nabcde", stop));
        // The same lines through the DATA decoder break at the same octet.
        let mut d = DotDecoder::new(BareLineEndings::Reject, 6);
        let mut out = Vec::new();
        assert_eq!(
            d.decode_checked(input, &mut out),
            Checked::Violation {
                consumed: 11,
                kind: Violation::LineTooLong
            }
        );
        assert_eq!(out, b"abcd\r\nabcde");
    }
}
