//! Where the line ends are in a block of text, found 32 bytes at a time with
//! safe SIMD (`wide` picks AVX2, SSE2, NEON or plain code by target).
//!
//! The dot-stuffing codecs cross long runs of ordinary lines with these masks:
//! a block whose every CR is followed by LF, every LF preceded by CR and no line
//! opening with `.` needs no work at all, so it is passed over with a few bit
//! operations instead of one search per line. Dots are looked up only where a
//! line starts, which is cheaper than a third mask.

use wide::u8x32;

/// Bytes in one block.
pub(crate) const BLOCK: usize = 64;

/// One bit per byte of a block, bit `i` for byte `i`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marks {
    pub(crate) cr: u64,
    pub(crate) lf: u64,
}

impl Marks {
    /// Marks the CRs and LFs of the first [`BLOCK`] bytes of `input`, or
    /// returns `None` when it is shorter.
    #[inline(always)]
    pub(crate) fn of(input: &[u8]) -> Option<Self> {
        let block: &[u8; BLOCK] = input.get(..BLOCK)?.try_into().ok()?;
        let (cr_byte, lf_byte) = (u8x32::splat(b'\r'), u8x32::splat(b'\n'));
        let mut marks = Self { cr: 0, lf: 0 };
        // Two lanes of 32: one AVX2 register each where the build enables
        // it, two SSE2 registers otherwise.
        for k in 0..BLOCK / 32 {
            let mut lane = [0u8; 32];
            lane.copy_from_slice(&block[32 * k..32 * k + 32]);
            let v = u8x32::from(lane);
            let shift = 32 * k;
            marks.cr |= u64::from(v.simd_eq(cr_byte).to_bitmask()) << shift;
            marks.lf |= u64::from(v.simd_eq(lf_byte).to_bitmask()) << shift;
        }
        Some(marks)
    }

    /// How many LFs. Most blocks of ordinary text hold one or two, and the
    /// count of ones is slow on CPUs without a popcount instruction.
    #[inline(always)]
    pub(crate) fn line_ends(&self) -> u64 {
        let mut n = 0;
        let mut lf = self.lf;
        while lf != 0 {
            n += 1;
            lf &= lf - 1;
        }
        n
    }

    /// Every LF in the block follows a CR and every CR but one in the last
    /// byte is followed by LF; `cr_before` is 1 when the byte before the
    /// block was a CR (then the block must open with its LF).
    #[inline(always)]
    pub(crate) fn crlf_only(&self, cr_before: u64) -> bool {
        self.lf == self.cr << 1 | cr_before
    }

    /// Some line that begins inside the block opens with `.`; `lf_before`
    /// is 1 when the block itself begins a line (that byte is counted too).
    #[inline(always)]
    pub(crate) fn dot_at_line_start(&self, block: &[u8], lf_before: u64) -> bool {
        let mut starts = self.lf << 1 | lf_before;
        while starts != 0 {
            if block[starts.trailing_zeros() as usize] == b'.' {
                return true;
            }
            starts &= starts - 1;
        }
        false
    }

    /// The last byte is a CR (its LF, if any, is in the next block).
    #[inline(always)]
    pub(crate) fn ends_in_cr(&self) -> bool {
        self.cr >> 63 != 0
    }

    /// The last byte is an LF: the next block begins a line.
    #[inline(always)]
    pub(crate) fn ends_in_lf(&self) -> bool {
        self.lf >> 63 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_match_a_plain_scan() {
        let mut block = [b'a'; BLOCK];
        for (i, b) in block.iter_mut().enumerate() {
            *b = match i % 7 {
                0 => b'\r',
                3 => b'\n',
                5 => b'.',
                _ => b'x',
            };
        }
        let m = Marks::of(&block).unwrap();
        for (i, &b) in block.iter().enumerate() {
            assert_eq!(m.cr >> i & 1 == 1, b == b'\r', "cr {i}");
            assert_eq!(m.lf >> i & 1 == 1, b == b'\n', "lf {i}");
        }
    }

    #[test]
    fn pairs_and_line_starts() {
        let mut block = *b"abc\r\ndef\r\n.x\r\n0123456789012345678901234567890123456789012345678\r";
        assert_eq!(block.len(), BLOCK);
        let m = Marks::of(&block).unwrap();
        assert!(m.crlf_only(0));
        assert!(m.dot_at_line_start(&block, 0));
        assert!(m.ends_in_cr());
        assert!(!m.ends_in_lf());
        block[10] = b'y';
        block[4] = b'z';
        let m = Marks::of(&block).unwrap();
        assert!(!m.crlf_only(0));
        assert!(!m.dot_at_line_start(&block, 0));
        block[0] = b'.';
        assert!(!m.dot_at_line_start(&block, 0));
        assert!(m.dot_at_line_start(&block, 1));
    }
}
