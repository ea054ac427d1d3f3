//! Serving messages with the line ends they are sent with, whatever the
//! stored bytes use.
//!
//! POP3 lists and sends octets with CRLF line ends. The rule that turns
//! stored bytes into those (bare CR and bare LF become CRLF, a missing final
//! line end is added) is written once, in [`postamt_wire::crlf`], and is the
//! one the wire's `DotEncoder` applies. The stores count sizes with it
//! ([`CrlfSize`]) and serve messages rewritten by it ([`CrlfReader`]), so a
//! message listed at N octets is read back as exactly N octets, and the
//! encoder sends those unchanged before stuffing.

use std::io::{self, Read};

use postamt_wire::CrlfNormalizer;
pub(crate) use postamt_wire::{CrlfSize, crlf_size};

/// Counts the served size of everything `reader` yields.
pub(crate) fn crlf_size_of(mut reader: impl Read) -> io::Result<u64> {
    let mut counter = CrlfSize::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(counter.size()),
            Ok(n) => counter.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A reader that serves the bytes of `inner` rewritten by the rule: exactly
/// [`crlf_size`] octets of them.
#[derive(Debug)]
pub(crate) struct CrlfReader<R> {
    inner: R,
    buf: Box<[u8]>,
    normalizer: CrlfNormalizer,
    /// Rewritten bytes not yet handed out, from `pos`.
    pending: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl<R: Read> CrlfReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self::with_capacity(inner, 16 * 1024)
    }

    fn with_capacity(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            normalizer: CrlfNormalizer::new(),
            pending: Vec::with_capacity(capacity.max(1) + 2),
            pos: 0,
            ended: false,
        }
    }
}

impl<R: Read> Read for CrlfReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.pending.len() {
            if self.ended {
                return Ok(0);
            }
            self.pending.clear();
            self.pos = 0;
            let n = loop {
                match self.inner.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if n == 0 {
                self.ended = true;
                self.normalizer.finish(&mut self.pending);
            } else {
                self.normalizer.push(&self.buf[..n], &mut self.pending);
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rule, spelled out byte by byte, to check the streaming code.
    fn reference(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if i == 0 || bytes[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
                b'\r' if bytes.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn read_in_steps(reader: &mut impl Read, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn bare_cr_bare_lf_and_the_missing_final_line_end() {
        let mut reader = CrlfReader::new(&b"a\nb\r\nc\r\rd\n\nno end"[..]);
        assert_eq!(
            read_in_steps(&mut reader, 100),
            b"a\r\nb\r\nc\r\n\r\nd\r\n\r\nno end\r\n"
        );
        assert_eq!(crlf_size(b"a\nb\r\nc\r\rd\n\nno end"), 24);
        assert_eq!(read_in_steps(&mut CrlfReader::new(&b""[..]), 1), b"");
    }

    #[test]
    fn one_byte_reads_split_the_inserted_cr_from_its_lf() {
        let mut reader = CrlfReader::with_capacity(&b"\n\nx\r"[..], 1);
        assert_eq!(read_in_steps(&mut reader, 1), b"\r\n\r\nx\r\n");
    }

    proptest! {
        #[test]
        fn matches_reference_for_any_bytes_and_buffer_sizes(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300),
            inner_cap in 1usize..20,
            step in 1usize..20,
        ) {
            let expected = reference(&bytes);
            let mut reader = CrlfReader::with_capacity(&bytes[..], inner_cap);
            prop_assert_eq!(read_in_steps(&mut reader, step), expected.clone());
            prop_assert_eq!(crlf_size(&bytes), expected.len() as u64);
            prop_assert_eq!(crlf_size_of(&bytes[..]).unwrap(), expected.len() as u64);
            let mut counter = CrlfSize::new();
            for chunk in bytes.chunks(step) {
                counter.update(chunk);
            }
            prop_assert_eq!(counter.size(), expected.len() as u64);
            prop_assert_eq!(counter.raw(), bytes.len() as u64);
        }
    }
}
