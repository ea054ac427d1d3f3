//! `ProxyHeader::decode` (PROXY protocol v1 and v2) on arbitrary bytes.
//!
//! Checks:
//! - no panic, and no answer needs more than `MAX_HEADER_LEN` octets;
//! - every prefix of the input is `Incomplete` up to some length and gives
//!   the whole input's answer from there on: a server feeding the bytes as
//!   they arrive, in any split, sees the same header and consumed count (or
//!   the same error);
//! - a decoded header encodes (v2, and v1 when it carries no v2-only
//!   information) to bytes that decode to the same header, taking exactly
//!   those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postamt_wire::ProxyHeader;
use postamt_wire::proxy::{Decoded, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let whole = ProxyHeader::decode(data);
    let mut decided_at = None;
    for n in 0..data.len() {
        let answer = ProxyHeader::decode(&data[..n]);
        match (&answer, decided_at) {
            (Decoded::Incomplete, None) => {
                assert!(n < MAX_HEADER_LEN, "incomplete after {n} octets");
            }
            (Decoded::Incomplete, Some(at)) => {
                panic!("incomplete at {n} octets after an answer at {at}")
            }
            _ => {
                assert_eq!(answer, whole, "prefix of {n} octets");
                decided_at.get_or_insert(n);
            }
        }
    }
    let Decoded::Complete { header, consumed } = whole else {
        return;
    };
    assert!(consumed <= data.len() && consumed <= MAX_HEADER_LEN);
    let mut wire = Vec::new();
    header.encode_v2(&mut wire).expect("a decoded header fits a v2 header");
    assert_eq!(
        ProxyHeader::decode(&wire),
        Decoded::Complete {
            header: header.clone(),
            consumed: wire.len()
        }
    );
    if header.authority.is_none() && header.ssl.is_none() {
        let mut wire = Vec::new();
        header.encode_v1(&mut wire);
        assert!(wire.len() <= postamt_wire::proxy::V1_MAX_LEN);
        assert_eq!(
            ProxyHeader::decode(&wire),
            Decoded::Complete {
                header,
                consumed: wire.len()
            }
        );
    }
});
