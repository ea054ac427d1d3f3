//! The PROXY protocol decoder as a server drives it: bytes arriving in any
//! split, the header's answer the same, the rest handed on untouched; and
//! encode then decode is identity.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use postamt_wire::proxy::{Decoded, MAX_HEADER_LEN, Ssl, V2_SIGNATURE};
use postamt_wire::{ProxyError, ProxyHeader};
use proptest::prelude::*;

/// What a server sees: the header's answer and the bytes it hands on.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Header(ProxyHeader, Vec<u8>),
    Malformed(ProxyError),
    /// The input ended before an answer.
    Waiting,
}

/// Feeds `input` in reads that end at `cuts`, as a server keeping its
/// received bytes would, until the decoder answers.
fn drive(input: &[u8], cuts: &[usize]) -> Outcome {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    let mut received = Vec::new();
    let mut from = 0;
    for to in points {
        received.extend_from_slice(&input[from..to]);
        from = to;
        assert!(received.len() <= input.len());
        match ProxyHeader::decode(&received) {
            Decoded::Incomplete => {
                assert!(
                    received.len() < MAX_HEADER_LEN,
                    "incomplete past the longest header"
                );
            }
            Decoded::Complete { header, consumed } => {
                assert!(consumed <= received.len() && consumed <= MAX_HEADER_LEN);
                let mut rest = received[consumed..].to_vec();
                rest.extend_from_slice(&input[from..]);
                return Outcome::Header(header, rest);
            }
            Decoded::Malformed(e) => return Outcome::Malformed(e),
        }
    }
    Outcome::Waiting
}

fn byte_by_byte(input: &[u8]) -> Outcome {
    let cuts: Vec<usize> = (0..input.len()).collect();
    drive(input, &cuts)
}

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 = (any::<[u8; 4]>(), any::<[u8; 4]>())
        .prop_map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b))));
    let v6 = (any::<[u8; 16]>(), any::<[u8; 16]>())
        .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b))));
    (prop_oneof![v4, v6], any::<u16>(), any::<u16>())
        .prop_map(|((a, b), p, q)| (SocketAddr::new(a, p), SocketAddr::new(b, q)))
}

fn header() -> impl Strategy<Value = ProxyHeader> {
    (
        prop::option::of(socket_pair()),
        prop::option::of("[a-z0-9.-]{0,40}"),
        prop::option::of((any::<u8>(), any::<u32>(), prop::option::of("TLSv1\\.[0-3]"))),
    )
        .prop_map(|(addresses, authority, ssl)| {
            let mut h = match addresses {
                Some((s, d)) => ProxyHeader::new(s, d),
                None => ProxyHeader::local(),
            };
            h.authority = authority;
            h.ssl = ssl.map(|(client, verify, version)| {
                let mut ssl = Ssl::new(client, verify);
                ssl.version = version;
                ssl
            });
            h
        })
}

/// Bytes that look like the start of a header often enough to go deep.
fn near_headers() -> impl Strategy<Value = Vec<u8>> {
    let v1 = prop::collection::vec(
        prop_oneof![
            Just(b' '),
            Just(b'\r'),
            Just(b'\n'),
            Just(b'.'),
            Just(b':'),
            b'0'..=b'9',
            any::<u8>(),
        ],
        0..120,
    )
    .prop_map(|tail| {
        let mut v = b"PROXY TCP4 ".to_vec();
        v.extend(tail);
        v
    });
    let v2 = (
        any::<u8>(),
        any::<u8>(),
        0u16..300,
        prop::collection::vec(any::<u8>(), 0..320),
    )
        .prop_map(|(command, family, len, body)| {
            let mut v = V2_SIGNATURE.to_vec();
            v.extend_from_slice(&[0x20 | (command & 0x11), family]);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend(body);
            v
        });
    prop_oneof![v1, v2, prop::collection::vec(any::<u8>(), 0..64)]
}

proptest! {
    #[test]
    fn v2_encode_then_decode_is_identity(
        h in header(),
        session in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut wire = Vec::new();
        h.encode_v2(&mut wire).unwrap();
        let header_len = wire.len();
        wire.extend_from_slice(&session);
        prop_assert_eq!(
            ProxyHeader::decode(&wire),
            Decoded::Complete { header: h.clone(), consumed: header_len }
        );
        let expected = Outcome::Header(h, session);
        prop_assert_eq!(&drive(&wire, &cuts), &expected);
        prop_assert_eq!(&byte_by_byte(&wire), &expected);
    }

    #[test]
    fn v1_encode_then_decode_is_identity(
        addresses in prop::option::of(socket_pair()),
        session in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let h = match addresses {
            Some((s, d)) => ProxyHeader::new(s, d),
            None => ProxyHeader::local(),
        };
        let mut wire = Vec::new();
        h.encode_v1(&mut wire);
        prop_assert!(wire.len() <= 107);
        wire.extend_from_slice(&session);
        let expected = Outcome::Header(h, session);
        prop_assert_eq!(&drive(&wire, &cuts), &expected);
        prop_assert_eq!(&byte_by_byte(&wire), &expected);
    }

    #[test]
    fn any_bytes_give_the_same_answer_in_any_split(
        input in near_headers(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = drive(&input, &[]);
        prop_assert_eq!(&drive(&input, &cuts), &whole);
        prop_assert_eq!(&byte_by_byte(&input), &whole);
        // What was accepted writes back to bytes that read the same.
        if let Outcome::Header(h, _) = &whole {
            let mut wire = Vec::new();
            h.encode_v2(&mut wire).unwrap();
            prop_assert_eq!(
                ProxyHeader::decode(&wire),
                Decoded::Complete { header: h.clone(), consumed: wire.len() }
            );
        }
    }
}

#[test]
fn the_longest_header_is_read_whole_and_no_more() {
    let mut wire = V2_SIGNATURE.to_vec();
    wire.extend_from_slice(&[0x21, 0x00, 0xff, 0xff]);
    wire.extend(std::iter::repeat_n([0xe0, 0, 0], 0xffff / 3).flatten());
    assert_eq!(wire.len(), MAX_HEADER_LEN);
    assert_eq!(
        ProxyHeader::decode(&wire[..MAX_HEADER_LEN - 1]),
        Decoded::Incomplete
    );
    wire.extend_from_slice(b"QUIT\r\n");
    assert_eq!(
        drive(&wire, &[1, 15, 16, 40000]),
        Outcome::Header(ProxyHeader::local(), b"QUIT\r\n".to_vec())
    );
}
