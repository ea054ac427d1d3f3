//! The CRLF normaliser over arbitrary bytes and arbitrary splits: the same
//! output however split, only CRLF line ends, and stuffing its output equals
//! what the dot encoder makes of the input (BDAT and DATA deliver alike).

use postamt_wire::{CrlfNormalizer, DotEncoder};
use proptest::prelude::*;

fn dot(input: &[u8]) -> Vec<u8> {
    let mut e = DotEncoder::new();
    let mut out = Vec::new();
    e.encode(input, &mut out);
    e.finish(&mut out);
    out
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b'.'),
            Just(b'a'),
            any::<u8>()
        ],
        0..300,
    )
}

proptest! {
    #[test]
    fn split_anywhere_same_output(input in text(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = CrlfNormalizer::normalize(&input);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        let mut n = CrlfNormalizer::new();
        let mut out = Vec::new();
        let mut from = 0;
        for p in points.into_iter().chain([input.len()]) {
            n.push(&input[from..p], &mut out);
            from = p;
        }
        n.finish(&mut out);
        prop_assert_eq!(&out, &whole);
    }

    #[test]
    fn only_crlf_and_same_as_data(input in text()) {
        let out = CrlfNormalizer::normalize(&input);
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                prop_assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                prop_assert!(i > 0 && out[i - 1] == b'\r');
            }
        }
        prop_assert!(out.is_empty() || out.ends_with(b"\r\n"));
        prop_assert_eq!(dot(&out), dot(&input));
        prop_assert!(CrlfNormalizer::is_normalized(&out));
        prop_assert_eq!(CrlfNormalizer::is_normalized(&input), out == input);
        prop_assert_eq!(CrlfNormalizer::normalize(&out), out);
    }
}
