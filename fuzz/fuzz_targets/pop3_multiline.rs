//! The multi-line response codec on arbitrary bytes.
//!
//! Checks: decoding all at once, byte by byte and at a split chosen by the
//! input gives the same text and the same end; stuffing the input and decoding
//! it gives the input back with its line ends made CRLF, ending exactly at the
//! terminating line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postamt_pop3::response::MultilineEncoder;
use postamt_pop3::{Decoded, MultilineDecoder};

fn decode(pieces: &mut dyn Iterator<Item = &[u8]>) -> (Vec<u8>, Option<usize>) {
    let mut decoder = MultilineDecoder::new();
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        match decoder.decode(piece, &mut out) {
            Decoded::Incomplete => offset += piece.len(),
            Decoded::Complete { consumed } => return (out, Some(offset + consumed)),
        }
    }
    (out, None)
}

fn normalized(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = decode(&mut std::iter::once(data));
    let bytewise = decode(&mut data.chunks(1));
    assert_eq!(whole, bytewise);
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let (a, b) = data.split_at(cut);
    assert_eq!(whole, decode(&mut [a, b].into_iter()));
    if let (_, Some(end)) = whole {
        assert!(data[..end].ends_with(b".\r\n"));
    }

    let mut encoder = MultilineEncoder::new();
    let mut wire = Vec::new();
    encoder.encode(a, &mut wire);
    encoder.encode(b, &mut wire);
    encoder.finish(&mut wire);
    let (text, end) = decode(&mut wire.chunks(7));
    assert_eq!(end, Some(wire.len()));
    assert_eq!(text, normalized(data));
});
