//! Serving messages with CRLF line ends, whatever the stored file uses.
//!
//! POP3 counts and sends octets with CRLF line ends. Files written by other
//! tools often use bare LF; these helpers turn each bare LF into CRLF while
//! streaming, and count the size the result will have.

use std::io::{self, Read};

/// Counts the size of a byte stream as it will be served with CRLF line ends,
/// fed in chunks of any size.
#[derive(Debug, Default, Clone)]
pub(crate) struct CrlfCounter {
    raw: u64,
    crlf: u64,
    prev_cr: bool,
}

impl CrlfCounter {
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.raw += chunk.len() as u64;
        self.crlf += chunk.len() as u64;
        for &b in chunk {
            if b == b'\n' && !self.prev_cr {
                self.crlf += 1;
            }
            self.prev_cr = b == b'\r';
        }
    }

    /// Octets as stored.
    pub(crate) fn raw_size(&self) -> u64 {
        self.raw
    }

    /// Octets with every bare LF counted as CRLF.
    pub(crate) fn crlf_size(&self) -> u64 {
        self.crlf
    }
}

/// The size of `bytes` served with CRLF line ends.
pub(crate) fn crlf_size(bytes: &[u8]) -> u64 {
    let mut counter = CrlfCounter::default();
    counter.update(bytes);
    counter.crlf_size()
}

/// Counts the CRLF size of everything `reader` yields.
pub(crate) fn crlf_size_of(mut reader: impl Read) -> io::Result<u64> {
    let mut counter = CrlfCounter::default();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(counter.crlf_size()),
            Ok(n) => counter.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A reader that passes bytes through, turning each bare LF into CRLF.
///
/// A lone CR is passed as it is: it is not a line end we can repair safely.
#[derive(Debug)]
pub(crate) struct CrlfReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    prev_cr: bool,
    /// A CR was emitted at the end of the last read; its LF is still owed.
    owe_lf: bool,
}

impl<R: Read> CrlfReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self::with_capacity(inner, 16 * 1024)
    }

    fn with_capacity(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            pos: 0,
            len: 0,
            prev_cr: false,
            owe_lf: false,
        }
    }
}

impl<R: Read> Read for CrlfReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        if self.owe_lf {
            out[0] = b'\n';
            n = 1;
            self.owe_lf = false;
        }
        while n < out.len() {
            if self.pos == self.len {
                if n > 0 {
                    break;
                }
                self.len = self.inner.read(&mut self.buf)?;
                self.pos = 0;
                if self.len == 0 {
                    break;
                }
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if b == b'\n' && !self.prev_cr {
                out[n] = b'\r';
                n += 1;
                if n == out.len() {
                    self.owe_lf = true;
                    self.prev_cr = false;
                    break;
                }
            }
            out[n] = b;
            n += 1;
            self.prev_cr = b == b'\r';
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0u8;
        for &b in bytes {
            if b == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            prev = b;
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
    fn converts_bare_lf_and_keeps_crlf() {
        let mut reader = CrlfReader::new(&b"a\nb\r\nc\r\rd\n\n"[..]);
        assert_eq!(read_in_steps(&mut reader, 100), b"a\r\nb\r\nc\r\rd\r\n\r\n");
        assert_eq!(crlf_size(b"a\nb\r\nc\r\rd\n\n"), 14);
    }

    #[test]
    fn one_byte_reads_split_the_inserted_cr_from_its_lf() {
        let mut reader = CrlfReader::with_capacity(&b"\n\nx"[..], 1);
        assert_eq!(read_in_steps(&mut reader, 1), b"\r\n\r\nx");
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
            let mut counter = CrlfCounter::default();
            for chunk in bytes.chunks(step) {
                counter.update(chunk);
            }
            prop_assert_eq!(counter.crlf_size(), expected.len() as u64);
            prop_assert_eq!(counter.raw_size(), bytes.len() as u64);
        }
    }
}
