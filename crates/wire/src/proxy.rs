//! The PROXY protocol, versions 1 and 2 (HAProxy's `proxy-protocol.txt`): the
//! header a TCP load balancer puts in front of a connection to say who the
//! client really is.
//!
//! A server behind such a balancer reads the header before the first byte of
//! SMTP or POP3: [`ProxyHeader::decode`] looks at the bytes received so far
//! and says [`Decoded::Incomplete`] (read more, keep them all),
//! [`Decoded::Complete`] (the header, and how many octets it took: the rest
//! belongs to the protocol session) or [`Decoded::Malformed`] (close the
//! connection without a word; the peer is not the balancer, or not working).
//!
//! ```
//! use postamt_wire::proxy::{Decoded, ProxyHeader};
//!
//! let mut received = Vec::new();
//! for read in [&b"PROXY TCP4 192.0.2.7 198.51.100.1 5"[..], b"6324 25\r\nEHLO a\r\n"] {
//!     received.extend_from_slice(read);
//!     match ProxyHeader::decode(&received) {
//!         Decoded::Incomplete => continue,
//!         Decoded::Complete { header, consumed } => {
//!             assert_eq!(header.source(), Some("192.0.2.7:56324".parse().unwrap()));
//!             // The session starts with what followed the header.
//!             assert_eq!(&received[consumed..], b"EHLO a\r\n");
//!         }
//!         Decoded::Malformed(error) => panic!("{error}"),
//!     }
//! }
//! ```
//!
//! The decoder keeps no state: it is handed the whole of what arrived, in any
//! split, and gives the same answer for the same bytes. It decides from the
//! first octets whether a header starts at all (the v2 signature or
//! `PROXY `), and needs at most [`MAX_HEADER_LEN`] octets for any answer.
//! Only accept the header from the balancer's own addresses: anyone else
//! could claim to be anyone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The longest version 1 header, CRLF included (the spec's 107 octets).
pub const V1_MAX_LEN: usize = 107;

/// The twelve octets that open a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest header of either version: a version 2 header with a 16-bit
/// length of 65535. No answer of [`ProxyHeader::decode`] needs more input.
pub const MAX_HEADER_LEN: usize = 16 + 0xffff;

const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// Version 2 type values (`PP2_TYPE_*`, `PP2_SUBTYPE_*`).
const TLV_AUTHORITY: u8 = 0x02;
const TLV_SSL: u8 = 0x20;
const SUBTLV_SSL_VERSION: u8 = 0x21;

/// What the balancer says about a connection.
///
/// Without addresses ([`ProxyHeader::local`]: a v2 `LOCAL` command, as in a
/// balancer's health check, a v1 `UNKNOWN`, or a family the server cannot
/// use such as `UNSPEC`, UNIX sockets or UDP), the connection's own
/// addresses apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProxyHeader {
    addresses: Option<(SocketAddr, SocketAddr)>,
    /// The host name the client asked for (v2 `PP2_TYPE_AUTHORITY`, the TLS
    /// SNI as the balancer saw it). Version 1 cannot carry it.
    pub authority: Option<String>,
    /// The TLS the balancer terminated (v2 `PP2_TYPE_SSL`). Version 1
    /// cannot carry it.
    pub ssl: Option<Ssl>,
}

/// The `PP2_TYPE_SSL` information: how the client reached the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ssl {
    /// The `PP2_CLIENT_*` bits: [`Ssl::CLIENT_SSL`], [`Ssl::CLIENT_CERT_CONN`],
    /// [`Ssl::CLIENT_CERT_SESS`].
    pub client: u8,
    /// Zero when the client presented a certificate and it was verified.
    pub verify: u32,
    /// The TLS version, such as `TLSv1.3` (`PP2_SUBTYPE_SSL_VERSION`).
    pub version: Option<String>,
}

impl Ssl {
    /// `PP2_CLIENT_SSL`: the client connected over TLS.
    pub const CLIENT_SSL: u8 = 0x01;
    /// `PP2_CLIENT_CERT_CONN`: it presented a certificate on this connection.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// `PP2_CLIENT_CERT_SESS`: it presented one in this TLS session.
    pub const CLIENT_CERT_SESS: u8 = 0x04;

    /// TLS information with these client bits and verify result.
    pub fn new(client: u8, verify: u32) -> Self {
        Self {
            client,
            verify,
            version: None,
        }
    }

    /// Whether the client spoke TLS to the balancer.
    pub fn is_tls(&self) -> bool {
        self.client & Self::CLIENT_SSL != 0
    }
}

/// What [`ProxyHeader::decode`] found at the front of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Decoded {
    /// A header may be coming but has not arrived whole: call again with
    /// the same bytes and more.
    Incomplete,
    /// A whole header.
    Complete {
        /// What it says.
        header: ProxyHeader,
        /// Its length: the octets after it belong to the protocol session.
        consumed: usize,
    },
    /// Not a header, or a broken one: close the connection.
    Malformed(ProxyError),
}

/// Why the front of a connection is not a PROXY protocol header, or why one
/// cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The first octets are neither the v2 signature nor `PROXY `.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// No CRLF within the 107 octets a v1 header may have.
    #[error("PROXY v1 header longer than 107 octets")]
    V1TooLong,
    /// A v1 line with a bare CR or LF, a wrong number of fields, or other
    /// than single spaces between them.
    #[error("malformed PROXY v1 header")]
    V1Syntax,
    /// A v1 protocol other than `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("PROXY v1 header with an unknown protocol")]
    V1Protocol,
    /// A v1 address that is not one of the protocol's family.
    #[error("PROXY v1 header with an invalid address")]
    V1Address,
    /// A v1 port that is not a decimal number 0-65535 without a sign or
    /// leading zero.
    #[error("PROXY v1 header with an invalid port")]
    V1Port,
    /// A v2 version other than 2 (the high four bits of octet 13).
    #[error("PROXY v2 header with version {0}")]
    V2Version(u8),
    /// A v2 command other than `LOCAL` (0) or `PROXY` (1).
    #[error("PROXY v2 header with unknown command {0}")]
    V2Command(u8),
    /// A v2 address family or transport that does not exist (octet 14).
    #[error("PROXY v2 header with unknown family and transport {0:#04x}")]
    V2Family(u8),
    /// A v2 length too short for the family's addresses.
    #[error("PROXY v2 header too short for its addresses")]
    V2Addresses,
    /// A v2 TLV that runs past the header, or a truncated one at its end.
    #[error("PROXY v2 header with a truncated TLV")]
    V2Tlv,
    /// A v2 TLV this decoder reads (authority, SSL) with an invalid value,
    /// or given twice.
    #[error("PROXY v2 header with an invalid TLV of type {0:#04x}")]
    V2TlvValue(u8),
    /// The header to write would be longer than a v2 length can say.
    #[error("PROXY v2 header would exceed 65535 octets after its first 16")]
    TooLong,
}

impl ProxyHeader {
    /// A header without addresses: the connection's own apply.
    pub fn local() -> Self {
        Self::default()
    }

    /// A header for a TCP connection from `source` to `destination`. When one
    /// is IPv4 and the other IPv6, the IPv4 one is given as IPv4-mapped IPv6,
    /// as a header carries one family.
    pub fn new(source: SocketAddr, destination: SocketAddr) -> Self {
        let mapped = |a: SocketAddr| match a.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        let addresses = if source.is_ipv4() == destination.is_ipv4() {
            (source, destination)
        } else {
            (mapped(source), mapped(destination))
        };
        Self {
            addresses: Some(addresses),
            ..Self::default()
        }
    }

    /// Where the client connected from, if the header says.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|(s, _)| s)
    }

    /// Where the client connected to (the balancer's address), if the
    /// header says.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.addresses.map(|(_, d)| d)
    }

    /// Looks for a header at the front of `input`, everything received on
    /// the connection so far.
    ///
    /// Malformed as soon as the first octets cannot start a header;
    /// otherwise incomplete until the header is whole (at most
    /// [`MAX_HEADER_LEN`] octets). The same bytes give the same answer
    /// however they arrived, and a longer input never changes an answer
    /// other than `Incomplete`.
    pub fn decode(input: &[u8]) -> Decoded {
        let Some(&first) = input.first() else {
            return Decoded::Incomplete;
        };
        let (prefix, v2): (&[u8], bool) = if first == V2_SIGNATURE[0] {
            (&V2_SIGNATURE, true)
        } else {
            (V1_PREFIX, false)
        };
        let n = input.len().min(prefix.len());
        if input[..n] != prefix[..n] {
            return Decoded::Malformed(ProxyError::NotProxy);
        }
        if n < prefix.len() {
            return Decoded::Incomplete;
        }
        let result = if v2 {
            decode_v2(input)
        } else {
            decode_v1(input)
        };
        match result {
            Ok(Some((header, consumed))) => Decoded::Complete { header, consumed },
            Ok(None) => Decoded::Incomplete,
            Err(e) => Decoded::Malformed(e),
        }
    }

    /// Appends the header in version 1 form: `PROXY TCP4|TCP6 ...` or, without
    /// addresses, `PROXY UNKNOWN`. The authority and SSL information do not
    /// exist in version 1 and are left out.
    pub fn encode_v1(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        match self.addresses {
            None => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
            Some((s, d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                // Writing to a Vec cannot fail.
                let _ = write!(
                    out,
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                );
            }
        }
    }

    /// Appends the header in version 2 form: `PROXY` over TCP with the
    /// addresses, or `LOCAL` without them (`PROXY` with family `UNSPEC` when
    /// there are TLVs to carry), then the authority and SSL TLVs.
    /// [`ProxyError::TooLong`] (and nothing appended) when they do not fit.
    pub fn encode_v2(&self, out: &mut Vec<u8>) -> Result<(), ProxyError> {
        let mut body = Vec::new();
        let family = match self.addresses {
            None => 0x00,
            Some((s, d)) => {
                match (s.ip(), d.ip()) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        body.extend_from_slice(&a.octets());
                        body.extend_from_slice(&b.octets());
                    }
                    (a, b) => {
                        body.extend_from_slice(&v6(a).octets());
                        body.extend_from_slice(&v6(b).octets());
                    }
                }
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
                if s.is_ipv4() && d.is_ipv4() {
                    0x11
                } else {
                    0x21
                }
            }
        };
        if let Some(authority) = &self.authority {
            push_tlv(&mut body, TLV_AUTHORITY, authority.as_bytes())?;
        }
        if let Some(ssl) = &self.ssl {
            let mut value = vec![ssl.client];
            value.extend_from_slice(&ssl.verify.to_be_bytes());
            if let Some(version) = &ssl.version {
                push_tlv(&mut value, SUBTLV_SSL_VERSION, version.as_bytes())?;
            }
            push_tlv(&mut body, TLV_SSL, &value)?;
        }
        let len = u16::try_from(body.len()).map_err(|_| ProxyError::TooLong)?;
        let command = if self.addresses.is_none() && body.is_empty() {
            0x20 // version 2, LOCAL
        } else {
            0x21 // version 2, PROXY
        };
        out.extend_from_slice(&V2_SIGNATURE);
        out.extend_from_slice(&[command, family]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(())
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), ProxyError> {
    let len = u16::try_from(value.len()).map_err(|_| ProxyError::TooLong)?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

type Found = Result<Option<(ProxyHeader, usize)>, ProxyError>;

/// Version 1: `input` starts with `PROXY `.
fn decode_v1(input: &[u8]) -> Found {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        if input.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(None);
    };
    // The first LF ends the line; it must be the LF of a CRLF.
    if window[lf - 1] != b'\r' {
        return Err(ProxyError::V1Syntax);
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    if line.contains(&b'\r') {
        return Err(ProxyError::V1Syntax);
    }
    let header = parse_v1_fields(line)?;
    Ok(Some((header, lf + 1)))
}

fn parse_v1_fields(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    let v4 = match proto {
        // The spec: whatever follows UNKNOWN is ignored.
        b"UNKNOWN" => return Ok(ProxyHeader::local()),
        b"TCP4" => true,
        b"TCP6" => false,
        _ => return Err(ProxyError::V1Protocol),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Syntax);
    };
    let address = |field: &[u8]| -> Result<IpAddr, ProxyError> {
        let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1Address)?;
        // Rust's parsers are strict: no leading zeros in IPv4, no zone ids.
        if v4 {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        }
        .map_err(|_| ProxyError::V1Address)
    };
    let (src, dst) = (address(src)?, address(dst)?);
    let (sport, dport) = (port(sport)?, port(dport)?);
    Ok(ProxyHeader {
        addresses: Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport))),
        ..ProxyHeader::default()
    })
}

/// A decimal port: 1-5 digits, no sign, no leading zero (but `0` itself).
fn port(field: &[u8]) -> Result<u16, ProxyError> {
    let digits = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits || (field.len() > 1 && field[0] == b'0') {
        return Err(ProxyError::V1Port);
    }
    let n = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| ProxyError::V1Port)
}

/// Version 2: `input` starts with the signature.
fn decode_v2(input: &[u8]) -> Found {
    let Some(fixed) = input.first_chunk::<16>() else {
        return Ok(None);
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::V2Version(version));
    }
    let family = fixed[13];
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let local = match command {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2Command(command)),
    };
    // LOCAL: "the receiver must ... discard the protocol block including
    // the family which is ignored".
    let address_len = if local {
        0
    } else {
        if family & 0x0f > 2 {
            return Err(ProxyError::V2Family(family));
        }
        let needed = match family >> 4 {
            0 => 0,   // UNSPEC
            1 => 12,  // INET: two IPv4 addresses, two ports
            2 => 36,  // INET6
            3 => 216, // UNIX: two 108-octet paths
            _ => return Err(ProxyError::V2Family(family)),
        };
        if len < needed {
            return Err(ProxyError::V2Addresses);
        }
        needed
    };
    let total = 16 + len;
    let Some(block) = input.get(16..total) else {
        return Ok(None);
    };
    if local {
        return Ok(Some((ProxyHeader::local(), total)));
    }
    let (addresses, tlvs) = block.split_at(address_len);
    let mut header = ProxyHeader::local();
    let port_at = |i: usize| u16::from_be_bytes([addresses[i], addresses[i + 1]]);
    match family {
        // TCP over IPv4 and IPv6; UDP and UNIX sockets say nothing a TCP
        // server can use as the client's address.
        0x11 => {
            let ip = |i: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addresses[i],
                    addresses[i + 1],
                    addresses[i + 2],
                    addresses[i + 3],
                ))
            };
            header.addresses = Some((
                SocketAddr::new(ip(0), port_at(8)),
                SocketAddr::new(ip(4), port_at(10)),
            ));
        }
        0x21 => {
            let ip = |i: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&addresses[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            header.addresses = Some((
                SocketAddr::new(ip(0), port_at(32)),
                SocketAddr::new(ip(16), port_at(34)),
            ));
        }
        _ => {}
    }
    for (kind, value) in Tlvs(tlvs) {
        let value = value?;
        match kind {
            TLV_AUTHORITY => {
                let text = std::str::from_utf8(value)
                    .ok()
                    .filter(|_| header.authority.is_none())
                    .ok_or(ProxyError::V2TlvValue(kind))?;
                header.authority = Some(text.to_owned());
            }
            TLV_SSL => {
                if header.ssl.is_some() {
                    return Err(ProxyError::V2TlvValue(kind));
                }
                header.ssl = Some(parse_ssl(value)?);
            }
            _ => {}
        }
    }
    Ok(Some((header, total)))
}

fn parse_ssl(value: &[u8]) -> Result<Ssl, ProxyError> {
    let bad = ProxyError::V2TlvValue(TLV_SSL);
    let (&[client, a, b, c, d], subs) = value.split_first_chunk::<5>().ok_or(bad)?;
    let mut ssl = Ssl::new(client, u32::from_be_bytes([a, b, c, d]));
    for (kind, sub) in Tlvs(subs) {
        let sub = sub.map_err(|_| bad)?;
        if kind == SUBTLV_SSL_VERSION {
            let text = std::str::from_utf8(sub)
                .ok()
                .filter(|_| ssl.version.is_none())
                .ok_or(bad)?;
            ssl.version = Some(text.to_owned());
        }
    }
    Ok(ssl)
}

/// The TLVs of a block: type, 16-bit length, value; a TLV that does not fit
/// is an error and ends the walk.
struct Tlvs<'a>(&'a [u8]);

impl<'a> Iterator for Tlvs<'a> {
    type Item = (u8, Result<&'a [u8], ProxyError>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0;
        let &kind = rest.first()?;
        let value = rest
            .get(1..3)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
            .and_then(|len| rest.get(3..3 + len));
        match value {
            Some(value) => {
                self.0 = &rest[3 + value.len()..];
                Some((kind, Ok(value)))
            }
            None => {
                self.0 = &[];
                Some((kind, Err(ProxyError::V2Tlv)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(input: &[u8]) -> (ProxyHeader, usize) {
        match ProxyHeader::decode(input) {
            Decoded::Complete { header, consumed } => (header, consumed),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn malformed(input: &[u8]) -> ProxyError {
        match ProxyHeader::decode(input) {
            Decoded::Malformed(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    /// Every prefix shorter than the answer's decisive length is
    /// incomplete; every longer one gives the same answer.
    fn every_prefix(input: &[u8]) -> Decoded {
        let whole = ProxyHeader::decode(input);
        let mut decided = None;
        for n in 0..=input.len() {
            let d = ProxyHeader::decode(&input[..n]);
            match (&d, decided) {
                (Decoded::Incomplete, None) => {}
                (Decoded::Incomplete, Some(at)) => {
                    panic!("incomplete at {n} after an answer at {at}")
                }
                (_, None) => {
                    assert_eq!(d, whole, "prefix {n}");
                    decided = Some(n);
                }
                (_, Some(_)) => assert_eq!(d, whole, "prefix {n}"),
            }
        }
        whole
    }

    #[test]
    fn v1_spec_examples() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = complete(line);
        assert_eq!(h.source(), Some(addr("192.168.0.1:56324")));
        assert_eq!(h.destination(), Some(addr("192.168.0.11:443")));
        assert_eq!(&line[n..], b"GET / HTTP/1.1\r\n");
        assert!(matches!(every_prefix(line), Decoded::Complete { .. }));

        let widest4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(complete(widest4).1, 56);
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let widest6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(widest6.len(), 104);
        let (h, n) = complete(widest6.as_bytes());
        assert_eq!((h.source().map(|s| s.port()), n), (Some(65535), 104));

        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (ProxyHeader::local(), 15));
        let unknown = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        assert_eq!(complete(unknown.as_bytes()).1, V1_MAX_LEN);
    }

    #[test]
    fn v1_strict_fields() {
        let bad: &[(&[u8], ProxyError)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ProxyError::V1Syntax),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
                ProxyError::V1Syntax,
            ),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", ProxyError::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", ProxyError::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", ProxyError::V1Syntax),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1Protocol,
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1Protocol,
            ),
            (b"PROXY \r\n", ProxyError::V1Protocol),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", ProxyError::V1Address),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ProxyError::V1Address),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1Address,
            ),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
                ProxyError::V1Address,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", ProxyError::V1Port),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", ProxyError::V1Port),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
                ProxyError::V1Port,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", ProxyError::V1Port),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n", ProxyError::V1Port),
        ];
        for (input, error) in bad {
            assert_eq!(
                malformed(input),
                *error,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(every_prefix(input), Decoded::Malformed(*error));
        }
        let (h, _) = complete(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n");
        assert_eq!(h.source(), Some(addr("1.2.3.4:0")));
    }

    #[test]
    fn v1_too_long_is_decided_at_107_octets() {
        let mut input = b"PROXY UNKNOWN ".to_vec();
        input.resize(V1_MAX_LEN - 1, b'x');
        assert_eq!(ProxyHeader::decode(&input), Decoded::Incomplete);
        input.push(b'\r');
        assert_eq!(malformed(&input), ProxyError::V1TooLong);
        input.push(b'\n');
        assert_eq!(malformed(&input), ProxyError::V1TooLong);
    }

    #[test]
    fn the_first_octets_decide() {
        assert_eq!(ProxyHeader::decode(b""), Decoded::Incomplete);
        assert_eq!(ProxyHeader::decode(b"PROX"), Decoded::Incomplete);
        assert_eq!(malformed(b"E"), ProxyError::NotProxy);
        assert_eq!(malformed(b"PROXX"), ProxyError::NotProxy);
        assert_eq!(malformed(b"PROXY\r\n"), ProxyError::NotProxy);
        assert_eq!(malformed(b"EHLO client.example\r\n"), ProxyError::NotProxy);
        assert_eq!(
            ProxyHeader::decode(b"\r\n\r\n\0\r\nQUI"),
            Decoded::Incomplete
        );
        assert_eq!(malformed(b"\r\n\r\n\0\r\nQUIX"), ProxyError::NotProxy);
        assert_eq!(malformed(b"\r\nQUIT\r\n"), ProxyError::NotProxy);
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[command, family]);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v2_addresses() {
        let mut input = v2(
            0x21,
            0x11,
            &[192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0, 25],
        );
        input.extend_from_slice(b"EHLO a\r\n");
        let (h, n) = complete(&input);
        assert_eq!(h.source(), Some(addr("192.0.2.7:56324")));
        assert_eq!(h.destination(), Some(addr("198.51.100.1:25")));
        assert_eq!(n, 28);
        assert!(matches!(every_prefix(&input), Decoded::Complete { .. }));

        let mut body = [0u8; 36];
        body[15] = 1; // ::1
        body[16] = 0x20;
        body[17] = 0x01;
        body[18] = 0x0d;
        body[19] = 0xb8; // 2001:db8::
        body[32..].copy_from_slice(&[0x12, 0x34, 0, 110]);
        let (h, n) = complete(&v2(0x21, 0x21, &body));
        assert_eq!(h.source(), Some(addr("[::1]:4660")));
        assert_eq!(h.destination(), Some(addr("[2001:db8::]:110")));
        assert_eq!(n, 52);
    }

    #[test]
    fn v2_without_usable_addresses() {
        // LOCAL skips whatever it carries, family included.
        assert_eq!(
            complete(&v2(0x20, 0xff, b"junk")),
            (ProxyHeader::local(), 20)
        );
        // UNSPEC, UDP and UNIX give no address.
        assert_eq!(complete(&v2(0x21, 0x00, b"")).0, ProxyHeader::local());
        assert_eq!(complete(&v2(0x21, 0x12, &[1; 12])).0, ProxyHeader::local());
        assert_eq!(complete(&v2(0x21, 0x10, &[1; 12])).0, ProxyHeader::local());
        assert_eq!(complete(&v2(0x21, 0x31, &[0; 216])).0, ProxyHeader::local());
    }

    #[test]
    fn v2_errors_are_decided_from_the_fixed_part() {
        let cases: &[(u8, u8, &[u8], ProxyError)] = &[
            (0x11, 0x11, &[0; 12], ProxyError::V2Version(1)),
            (0x22, 0x11, &[0; 12], ProxyError::V2Command(2)),
            (0x21, 0x41, &[0; 12], ProxyError::V2Family(0x41)),
            (0x21, 0x13, &[0; 12], ProxyError::V2Family(0x13)),
            (0x21, 0x11, &[0; 11], ProxyError::V2Addresses),
            (0x21, 0x21, &[0; 12], ProxyError::V2Addresses),
            (0x21, 0x31, &[0; 36], ProxyError::V2Addresses),
        ];
        for &(command, family, body, error) in cases {
            let input = v2(command, family, body);
            assert_eq!(malformed(&input[..16]), error);
            assert_eq!(every_prefix(&input), Decoded::Malformed(error));
        }
    }

    #[test]
    fn v2_tlvs() {
        let mut body = vec![127, 0, 0, 1, 127, 0, 0, 2, 0, 1, 0, 2];
        body.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]); // NOOP
        body.extend_from_slice(&[0x02, 0, 11]);
        body.extend_from_slice(b"mx.example.");
        body.extend_from_slice(&[0x20, 0, 15, 0x07, 0, 0, 0, 0]);
        body.extend_from_slice(&[0x21, 0, 7]);
        body.extend_from_slice(b"TLSv1.3");
        body.extend_from_slice(&[0xe0, 0, 0]); // custom, empty
        let input = v2(0x21, 0x11, &body);
        let (h, _) = complete(&input);
        assert_eq!(h.authority.as_deref(), Some("mx.example."));
        let ssl = h.ssl.as_ref().unwrap();
        assert!(ssl.is_tls());
        assert_eq!((ssl.client, ssl.verify), (7, 0));
        assert_eq!(ssl.version.as_deref(), Some("TLSv1.3"));
        assert!(matches!(every_prefix(&input), Decoded::Complete { .. }));

        let addrs = &body[..12];
        let with = |tlv: &[u8]| v2(0x21, 0x11, &[addrs, tlv].concat());
        assert_eq!(malformed(&with(&[0x04, 0, 4, 0])), ProxyError::V2Tlv);
        assert_eq!(malformed(&with(&[0x04, 0])), ProxyError::V2Tlv);
        assert_eq!(
            malformed(&with(&[0x02, 0, 1, 0xff])),
            ProxyError::V2TlvValue(2)
        );
        assert_eq!(
            malformed(&with(&[0x02, 0, 1, b'a', 0x02, 0, 1, b'b'])),
            ProxyError::V2TlvValue(2)
        );
        assert_eq!(
            malformed(&with(&[0x20, 0, 4, 1, 0, 0, 0])),
            ProxyError::V2TlvValue(0x20)
        );
        assert_eq!(
            malformed(&with(&[0x20, 0, 7, 1, 0, 0, 0, 0, 0x21, 0])),
            ProxyError::V2TlvValue(0x20)
        );
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let mut tls = ProxyHeader::new(addr("192.0.2.7:56324"), addr("198.51.100.1:465"));
        tls.authority = Some("mail.example".into());
        let mut ssl = Ssl::new(Ssl::CLIENT_SSL, 0);
        ssl.version = Some("TLSv1.3".into());
        tls.ssl = Some(ssl);
        let mut unspec = ProxyHeader::local();
        unspec.authority = Some("mail.example".into());
        let headers = [
            ProxyHeader::new(addr("192.0.2.7:56324"), addr("198.51.100.1:25")),
            ProxyHeader::new(addr("[2001:db8::7]:1"), addr("[::1]:0")),
            ProxyHeader::local(),
            tls.clone(),
            unspec,
        ];
        for h in headers {
            let mut wire = Vec::new();
            h.encode_v2(&mut wire).unwrap();
            assert_eq!(complete(&wire), (h.clone(), wire.len()));
            if h.authority.is_none() {
                let mut wire = Vec::new();
                h.encode_v1(&mut wire);
                assert_eq!(complete(&wire), (h.clone(), wire.len()));
            }
        }
        let mut wire = Vec::new();
        ProxyHeader::local().encode_v2(&mut wire).unwrap();
        assert_eq!(wire[12..], [0x20, 0x00, 0, 0]);
        let mut wire = Vec::new();
        tls.encode_v1(&mut wire);
        assert_eq!(wire, b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 465\r\n");
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let h = ProxyHeader::new(addr("192.0.2.7:1"), addr("[2001:db8::1]:25"));
        assert_eq!(h.source(), Some(addr("[::ffff:192.0.2.7]:1")));
        let mut wire = Vec::new();
        h.encode_v1(&mut wire);
        assert_eq!(wire, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 25\r\n");
        assert_eq!(complete(&wire).0, h);
    }

    #[test]
    fn encoding_refuses_what_a_length_cannot_say() {
        let mut h = ProxyHeader::local();
        h.authority = Some("a".repeat(0xffff));
        let mut wire = Vec::new();
        assert_eq!(h.encode_v2(&mut wire), Err(ProxyError::TooLong));
        assert!(wire.is_empty());
        h.authority = Some("a".repeat(0xffff - 3));
        h.encode_v2(&mut wire).unwrap();
        assert_eq!(wire.len(), MAX_HEADER_LEN);
        assert_eq!(complete(&wire).1, MAX_HEADER_LEN);
    }
}
