//! The DATA codecs of postamt-wire.
//!
//! - `DotDecoder`: arbitrary bytes fed at arbitrary splits give the same
//!   output, consumed count and flags as fed whole; `skip` agrees with
//!   `decode` on where the message ends; a complete message's output has no
//!   bare CR or LF under `Normalize` (nor under `Reject` unless flagged).
//! - `DotEncoder` then `DotDecoder`: arbitrary bytes, encoded at arbitrary
//!   splits, decode back to the input with its line ends made CRLF, ending
//!   exactly at the encoder's end marker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postamt_wire::{BareLineEndings, Decoded, DotDecoder, DotEncoder};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    output: Vec<u8>,
    /// Input bytes that belonged to the message, if its end was found.
    consumed: Option<usize>,
    bare: bool,
    long: bool,
    done: bool,
}

fn decode(policy: BareLineEndings, max_line: usize, input: &[u8], splits: &[usize]) -> Outcome {
    let mut decoder = DotDecoder::new(policy, max_line);
    let mut output = Vec::new();
    let mut offset = 0;
    let mut consumed = None;
    for chunk in chunks(input, splits) {
        match decoder.decode(chunk, &mut output) {
            Decoded::Incomplete => offset += chunk.len(),
            Decoded::Complete { consumed: c } => {
                assert!(c <= chunk.len(), "consumed {c} of a {}-byte chunk", chunk.len());
                consumed = Some(offset + c);
                break;
            }
        }
    }
    Outcome {
        output,
        consumed,
        bare: decoder.saw_bare_line_ending(),
        long: decoder.saw_long_line(),
        done: decoder.is_done(),
    }
}

fn skip(policy: BareLineEndings, max_line: usize, input: &[u8], splits: &[usize]) -> Outcome {
    let mut decoder = DotDecoder::new(policy, max_line);
    let mut offset = 0;
    let mut consumed = None;
    for chunk in chunks(input, splits) {
        match decoder.skip(chunk) {
            Decoded::Incomplete => offset += chunk.len(),
            Decoded::Complete { consumed: c } => {
                consumed = Some(offset + c);
                break;
            }
        }
    }
    Outcome {
        output: Vec::new(),
        consumed,
        bare: decoder.saw_bare_line_ending(),
        long: decoder.saw_long_line(),
        done: decoder.is_done(),
    }
}

/// Cuts `input` into pieces whose sizes cycle through `splits` (whole if empty).
fn chunks<'a>(input: &'a [u8], splits: &[usize]) -> Vec<&'a [u8]> {
    if splits.is_empty() {
        return vec![input];
    }
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = splits[i % splits.len()].min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// Every CR is followed by LF and every LF preceded by CR.
fn only_crlf(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

/// The input with every bare CR, bare LF made CRLF and the last line closed.
fn normalized(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 2);
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&nsplits, rest)) = rest.split_first() else {
        return;
    };
    let nsplits = usize::from(nsplits % 16).min(rest.len());
    let (split_bytes, input) = rest.split_at(nsplits);
    let splits: Vec<usize> = split_bytes.iter().map(|&b| usize::from(b) + 1).collect();
    let policy = if flags & 1 == 0 {
        BareLineEndings::Reject
    } else {
        BareLineEndings::Normalize
    };
    // Small limits so that the long-line flag is exercised too.
    let max_line = 2 + usize::from(flags >> 1) * 8;

    let whole = decode(policy, max_line, input, &[]);
    let split = decode(policy, max_line, input, &splits);
    assert_eq!(whole, split, "split {splits:?} changes the outcome");
    let bytewise = decode(policy, max_line, input, &[1]);
    assert_eq!(whole, bytewise, "byte-by-byte changes the outcome");
    let skipped = skip(policy, max_line, input, &splits);
    assert_eq!(
        (whole.consumed, whole.bare, whole.long, whole.done),
        (skipped.consumed, skipped.bare, skipped.long, skipped.done),
        "skip disagrees with decode"
    );
    assert_eq!(whole.done, whole.consumed.is_some());
    if let Some(consumed) = whole.consumed {
        assert!(consumed >= 3 && consumed <= input.len());
        assert!(input[..consumed].ends_with(b".\r\n"));
        match policy {
            BareLineEndings::Reject => assert!(whole.output.len() + 3 <= consumed),
            _ => assert!(whole.output.len() <= 2 * consumed),
        }
        assert!(whole.output.is_empty() || whole.output.ends_with(b"\r\n"));
        if policy == BareLineEndings::Normalize || !whole.bare {
            assert!(
                only_crlf(&whole.output),
                "bare line ending in complete output {:?}",
                String::from_utf8_lossy(&whole.output)
            );
        }
    } else {
        assert!(whole.output.len() <= input.len() * 2);
    }

    // Encoder, at the same splits, then decoder.
    let mut encoder = DotEncoder::new();
    let mut encoded = Vec::new();
    for chunk in chunks(input, &splits) {
        encoder.encode(chunk, &mut encoded);
    }
    encoder.finish(&mut encoded);
    let mut whole_encoder = DotEncoder::new();
    let mut encoded_whole = Vec::new();
    whole_encoder.encode(input, &mut encoded_whole);
    whole_encoder.finish(&mut encoded_whole);
    assert_eq!(encoded, encoded_whole, "encoder output depends on the split");
    let decoded = decode(BareLineEndings::Reject, usize::MAX, &encoded, &splits);
    assert_eq!(
        decoded.consumed,
        Some(encoded.len()),
        "encoded text does not end at its marker: {:?}",
        String::from_utf8_lossy(&encoded)
    );
    assert!(!decoded.bare, "encoder let a bare line ending through");
    assert_eq!(
        String::from_utf8_lossy(&decoded.output),
        String::from_utf8_lossy(&normalized(input)),
        "round trip through the codecs"
    );
    assert_eq!(decoded.output, normalized(input));
});
