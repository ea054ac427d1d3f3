//! Line-end repair without dot-stuffing, for text sent in counted chunks
//! (SMTP BDAT) that must arrive exactly as the same text sent by DATA.

use memchr::memchr2;

/// Streaming encoder that makes every line end CRLF, by the rule
/// [`DotEncoder`](crate::DotEncoder) uses, and stuffs no dots.
///
/// A bare CR or a bare LF becomes CRLF; [`finish`](Self::finish) completes
/// a last line that has no CRLF. Stuffing the output with a `DotEncoder`
/// gives exactly what the `DotEncoder` makes of the input, so a message sent
/// with BDAT (this encoder) arrives as it does with DATA. Nothing is held
/// back: every call writes all it can, so the length of what it appended is
/// what a BDAT chunk announces.
#[derive(Debug, Clone, Default)]
pub struct CrlfNormalizer {
    /// Something was written and it did not end with a complete CRLF.
    in_line: bool,
    /// The last byte written was a CR whose LF is not decided yet.
    after_cr: bool,
}

impl CrlfNormalizer {
    /// A normaliser at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Normalises `input`, appending to `out`; returns how many bytes it
    /// appended.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let mut rest = input;
        if self.after_cr && !rest.is_empty() {
            // The CR already went out; its LF goes now, the peer's or ours.
            self.after_cr = false;
            self.in_line = false;
            out.push(b'\n');
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(at) = memchr2(b'\r', b'\n', rest) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"\r");
            self.in_line = false;
            if rest[at] == b'\n' {
                out.push(b'\n');
                rest = &rest[at + 1..];
                continue;
            }
            match rest.get(at + 1) {
                Some(b'\n') => {
                    out.push(b'\n');
                    rest = &rest[at + 2..];
                }
                Some(_) => {
                    out.push(b'\n');
                    rest = &rest[at + 1..];
                }
                None => {
                    self.after_cr = true;
                    rest = &[];
                }
            }
        }
        if !rest.is_empty() {
            out.extend_from_slice(rest);
            self.in_line = true;
        }
        out.len() - start
    }

    /// Ends the text: completes its last line with what it lacks (LF after
    /// a final CR, CRLF after other bytes; nothing after CRLF or for an
    /// empty text). Returns how many bytes it appended; the normaliser is
    /// then ready for a new text.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> usize {
        let tail: &[u8] = if self.after_cr {
            b"\n"
        } else if self.in_line {
            b"\r\n"
        } else {
            b""
        };
        out.extend_from_slice(tail);
        *self = Self::new();
        tail.len()
    }

    /// Whether `input` is already what [`normalize`](Self::normalize) would
    /// make of it (every line end CRLF, the last line ended, or empty), so a
    /// caller can keep it without a copy.
    pub fn is_normalized(input: &[u8]) -> bool {
        let mut rest = input;
        while let Some(at) = memchr2(b'\r', b'\n', rest) {
            if rest[at] == b'\n' || rest.get(at + 1) != Some(&b'\n') {
                return false;
            }
            rest = &rest[at + 2..];
        }
        rest.is_empty()
    }

    /// Normalises a whole text at once, final line end included.
    pub fn normalize(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 2);
        let mut n = Self::new();
        n.encode(input, &mut out);
        n.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DotEncoder;

    fn split(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut n = CrlfNormalizer::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts {
            let c = c.clamp(from, input.len());
            let added = n.encode(&input[from..c], &mut out);
            assert!(added >= c - from);
            from = c;
        }
        n.encode(&input[from..], &mut out);
        n.finish(&mut out);
        out
    }

    fn dot(input: &[u8]) -> Vec<u8> {
        let mut e = DotEncoder::new();
        let mut out = Vec::new();
        e.encode(input, &mut out);
        e.finish(&mut out);
        out
    }

    const CASES: &[(&[u8], &[u8])] = &[
        (b"", b""),
        (b"a", b"a\r\n"),
        (b"a\r\n", b"a\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"\r\r\n\n\r", b"\r\n\r\n\r\n\r\n"),
        (b"\n", b"\r\n"),
        (b"\r", b"\r\n"),
        (b".x\n..\r\n.", b".x\r\n..\r\n.\r\n"),
    ];

    #[test]
    fn line_ends_become_crlf_and_dots_stay() {
        for (input, want) in CASES {
            assert_eq!(CrlfNormalizer::normalize(input), *want, "{input:?}");
        }
    }

    #[test]
    fn every_split_gives_the_same_bytes() {
        for (input, want) in CASES {
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    assert_eq!(split(input, &[a, b]), *want, "{input:?} at {a},{b}");
                }
            }
            let bytewise: Vec<usize> = (0..=input.len()).collect();
            assert_eq!(split(input, &bytewise), *want);
        }
    }

    #[test]
    fn stuffing_the_output_is_what_the_dot_encoder_makes_of_the_input() {
        // Every string over a small alphabet up to five bytes long.
        let alphabet = [b'\r', b'\n', b'.', b'x'];
        let mut input = Vec::new();
        for len in 0..=5u32 {
            for mut code in 0..4usize.pow(len) {
                input.clear();
                for _ in 0..len {
                    input.push(alphabet[code % 4]);
                    code /= 4;
                }
                assert_eq!(
                    dot(&CrlfNormalizer::normalize(&input)),
                    dot(&input),
                    "{input:?}"
                );
            }
        }
    }

    #[test]
    fn knows_normal_text() {
        for (input, want) in CASES {
            assert_eq!(
                CrlfNormalizer::is_normalized(input),
                input == want,
                "{input:?}"
            );
            assert!(CrlfNormalizer::is_normalized(want));
        }
    }

    #[test]
    fn counts_what_it_appends() {
        let mut n = CrlfNormalizer::new();
        let mut out = b"BDAT ".to_vec();
        assert_eq!(n.encode(b"a\nb\r", &mut out), 5);
        assert_eq!(n.encode(b"\nc", &mut out), 2);
        assert_eq!(n.finish(&mut out), 2);
        assert_eq!(out, b"BDAT a\r\nb\r\nc\r\n");
    }
}
