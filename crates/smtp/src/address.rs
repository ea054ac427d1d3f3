//! Addresses as RFC 5321 §4.1.2 writes them, extended by RFC 6531 (SMTPUTF8).
//!
//! Each type is checked once when built and borrows from the command line when
//! parsed from one; `into_owned` makes a `'static` copy for events.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{tag, tag_no_case};
use nom::combinator::opt;

use crate::error::{AddressError, AddressKind, CommandError};

/// RFC 5321 §4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2.
const MAX_DOMAIN: usize = 255;

/// A domain name or an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`):
/// what may follow the `@` of a mailbox, and what HELO and EHLO name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain<'a>(Cow<'a, str>);

impl<'a> Domain<'a> {
    /// The domain as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is an address literal in brackets rather than a name.
    pub fn is_address_literal(&self) -> bool {
        self.0.starts_with('[')
    }

    /// A copy that owns its text.
    pub fn into_owned(self) -> Domain<'static> {
        Domain(Cow::Owned(self.0.into_owned()))
    }

    /// Parses a whole string as a domain or address literal.
    pub(crate) fn parse_str(input: &'a str) -> Result<Self, CommandError> {
        match domain_or_literal(input) {
            Ok(("", d)) => Ok(d),
            _ => Err(CommandError::BadDomain),
        }
    }
}

impl fmt::Display for Domain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain<'static> {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse_str(s)
            .map(Domain::into_owned)
            .map_err(|_| AddressError::new(AddressKind::Domain, s))
    }
}

/// A mailbox, `local-part@domain`, with the local part as written (a quoted
/// local part keeps its quotes, so the text is what goes back on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox<'a> {
    text: Cow<'a, str>,
    at: usize,
}

impl<'a> Mailbox<'a> {
    /// The whole mailbox, `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part as written, quotes included.
    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// Whether the domain is an address literal.
    pub fn has_address_literal(&self) -> bool {
        self.domain().starts_with('[')
    }

    /// Whether the mailbox is plain ASCII; otherwise it needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.text.is_ascii()
    }

    /// A copy that owns its text.
    pub fn into_owned(self) -> Mailbox<'static> {
        Mailbox {
            text: Cow::Owned(self.text.into_owned()),
            at: self.at,
        }
    }
}

impl fmt::Display for Mailbox<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Mailbox<'static> {
    type Err = AddressError;

    /// Parses `local@domain` (no angle brackets).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match mailbox(s) {
            Ok(("", m)) => Ok(m.into_owned()),
            _ => Err(AddressError::new(AddressKind::Mailbox, s)),
        }
    }
}

/// The sender of MAIL FROM: a mailbox, or `<>` for bounces (RFC 5321 §4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath<'a> {
    /// `<>`: a notification that must not itself be answered.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox<'a>),
}

impl ReversePath<'_> {
    /// A copy that owns its text.
    pub fn into_owned(self) -> ReversePath<'static> {
        match self {
            Self::Null => ReversePath::Null,
            Self::Mailbox(m) => ReversePath::Mailbox(m.into_owned()),
        }
    }

    /// The mailbox, unless this is the null path.
    pub fn mailbox(&self) -> Option<&Mailbox<'_>> {
        match self {
            Self::Null => None,
            Self::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath<'_> {
    /// The path in angle brackets, as it goes on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("<>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

impl FromStr for ReversePath<'static> {
    type Err = AddressError;

    /// Parses `<>`, `<local@domain>` or a bare `local@domain`, as MAIL FROM:
    /// takes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match reverse_path(s) {
            Ok(("", p)) => Ok(p.into_owned()),
            _ => Err(AddressError::new(AddressKind::ReversePath, s)),
        }
    }
}

/// The recipient of RCPT TO: a mailbox, or the bare `<Postmaster>` every
/// server must accept (RFC 5321 §4.5.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath<'a> {
    /// `<Postmaster>` without a domain: this server's postmaster.
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox<'a>),
}

impl ForwardPath<'_> {
    /// A copy that owns its text.
    pub fn into_owned(self) -> ForwardPath<'static> {
        match self {
            Self::Postmaster => ForwardPath::Postmaster,
            Self::Mailbox(m) => ForwardPath::Mailbox(m.into_owned()),
        }
    }

    /// The mailbox, unless this is the bare postmaster.
    pub fn mailbox(&self) -> Option<&Mailbox<'_>> {
        match self {
            Self::Postmaster => None,
            Self::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ForwardPath<'_> {
    /// The path in angle brackets, as it goes on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster => f.write_str("<Postmaster>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

impl FromStr for ForwardPath<'static> {
    type Err = AddressError;

    /// Parses `<Postmaster>`, `<local@domain>` or a bare `local@domain`, as
    /// RCPT TO: takes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match forward_path(s) {
            Ok(("", p)) => Ok(p.into_owned()),
            _ => Err(AddressError::new(AddressKind::ForwardPath, s)),
        }
    }
}

/// Whether `s` holds characters that steer how text is shown rather than
/// being text: C0 and C1 controls, the explicit directional formatting
/// characters of UAX #9 (ALM, LRM, RLM, LRE..RLO, LRI..PDI), zero-width and
/// invisible format characters, and the Unicode line and paragraph
/// separators. A name holding one could reorder or break the lines of a log.
pub(crate) fn has_steering_chars(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control()
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200b}'..='\u{200f}'
                    | '\u{2028}'..='\u{202e}'
                    | '\u{2060}'..='\u{2069}'
                    | '\u{feff}'
            )
    })
}

/// Byte classes for the address grammar, looked up once per byte.
const ATEXT: u8 = 1;
const DOMAIN: u8 = 2;
/// esmtp-value: any CHAR but `=`, SP and controls, or UTF-8 (RFC 6531).
pub(crate) const VALUE: u8 = 4;
/// xchar of xtext (RFC 3461 §4) other than `+`.
pub(crate) const XCHAR: u8 = 8;
/// The letters, digits and hyphens of an esmtp-keyword after its first character.
pub(crate) const KEYWORD: u8 = 16;
/// The addr-type of RFC 3461 `ORCPT=`: atext that is also an esmtp-value byte.
pub(crate) const ADDR_TYPE: u8 = 32;

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let special = matches!(
            c,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        );
        // Any non-ASCII byte: UTF-8 under SMTPUTF8 (RFC 6531); the line was
        // checked to be UTF-8 before parsing.
        let high = c >= 0x80;
        if alnum || special || high {
            table[b] |= ATEXT;
        }
        if alnum || high || c == b'-' {
            table[b] |= DOMAIN;
        }
        if alnum || c == b'-' {
            table[b] |= KEYWORD;
        }
        if (c >= 33 && c != b'=' && c != 127) || high {
            table[b] |= VALUE;
            if c != b'+' {
                table[b] |= XCHAR;
            }
        }
        if table[b] & ATEXT != 0 && table[b] & VALUE != 0 {
            table[b] |= ADDR_TYPE;
        }
        b += 1;
    }
    table
}

pub(crate) static CLASS: [u8; 256] = classes();

type Parsed<'a, T> = IResult<&'a str, T>;

fn fail(input: &str) -> nom::Err<nom::error::Error<&str>> {
    nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify))
}

/// Splits `input` after `n` bytes, which end at a character boundary.
#[inline]
fn split(input: &str, n: usize) -> Parsed<'_, &str> {
    match (input.get(..n), input.get(n..)) {
        (Some(taken), Some(rest)) => Ok((rest, taken)),
        _ => Err(fail(input)),
    }
}

/// Dot-string: atoms separated by single dots, in one pass.
fn dot_string(input: &str) -> Parsed<'_, &str> {
    let bytes = input.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        i += atext_len(&bytes[i..]);
        if i == start {
            return Err(fail(input));
        }
        if bytes.get(i) != Some(&b'.') {
            return split(input, i);
        }
        i += 1;
    }
}

/// The length of the run of bytes of class `class` at the start of `bytes`.
#[inline(always)]
pub(crate) fn run_len(bytes: &[u8], class: u8) -> usize {
    // Eight bytes at a time while the whole chunk is in the class (long
    // values and xtext), then byte by byte.
    let (chunks, _) = bytes.as_chunks::<8>();
    let mut i = 0;
    for chunk in chunks {
        if chunk.iter().fold(class, |all, &b| all & CLASS[b as usize]) == 0 {
            break;
        }
        i += 8;
    }
    i + short_run_len(&bytes[i..], class)
}

/// [`run_len`] for runs that are mostly short (labels, atoms): byte by
/// byte, four bytes per loop round.
#[inline(always)]
pub(crate) fn short_run_len(bytes: &[u8], class: u8) -> usize {
    let stop = |b: u8| CLASS[b as usize] & class == 0;
    let (quads, tail) = bytes.as_chunks::<4>();
    let mut i = 0;
    for &[a, b, c, d] in quads {
        if stop(a) {
            return i;
        }
        if stop(b) {
            return i + 1;
        }
        if stop(c) {
            return i + 2;
        }
        if stop(d) {
            return i + 3;
        }
        i += 4;
    }
    i + tail.iter().position(|&b| stop(b)).unwrap_or(tail.len())
}

/// The length of the RFC 5322 atext (plus any non-ASCII byte, RFC 6531) at
/// the start of `bytes`.
#[inline(always)]
fn atext_len(bytes: &[u8]) -> usize {
    short_run_len(bytes, ATEXT)
}

/// Quoted-string (RFC 5321): qtextSMTP or backslash pairs, in double quotes.
fn quoted_string(input: &str) -> Parsed<'_, &str> {
    let bytes = input.as_bytes();
    if bytes.first() != Some(&b'"') {
        return Err(fail(input));
    }
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return split(input, i + 1),
            b'\\' => match bytes.get(i + 1) {
                Some(&c) if (32..=126).contains(&c) => i += 2,
                _ => return Err(fail(input)),
            },
            c if (32..=126).contains(&c) || c >= 0x80 => i += 1,
            _ => return Err(fail(input)),
        }
    }
    Err(fail(input))
}

/// Domain: sub-domains of letters, digits and inner hyphens, joined by dots,
/// checked in one pass.
fn domain_name(input: &str) -> Parsed<'_, &str> {
    let bytes = input.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        i += short_run_len(&bytes[i..], DOMAIN);
        let label = &bytes[start..i];
        match (label.first(), label.last()) {
            (Some(&first), Some(&last)) if first != b'-' && last != b'-' && label.len() <= 63 => {}
            _ => return Err(fail(input)),
        }
        if bytes.get(i) != Some(&b'.') {
            break;
        }
        i += 1;
    }
    if i > MAX_DOMAIN {
        return Err(fail(input));
    }
    split(input, i)
}

/// address-literal: `[` IPv4 / `IPv6:` IPv6 / tag `:` dcontent `]`.
fn address_literal(input: &str) -> Parsed<'_, &str> {
    let (rest, _) = tag("[")(input)?;
    let end = rest.find(']').ok_or_else(|| fail(input))?;
    let inner = &rest[..end];
    let valid = if inner
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("IPv6:"))
    {
        inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
    } else if let Some((tag, content)) = inner.split_once(':') {
        !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !tag.ends_with('-')
            && !content.is_empty()
            && content
                .bytes()
                .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
    } else {
        inner.parse::<std::net::Ipv4Addr>().is_ok()
    };
    if !valid {
        return Err(fail(input));
    }
    split(input, end + 2)
}

fn domain_or_literal(input: &str) -> Parsed<'_, Domain<'_>> {
    let (rest, d) = if input.starts_with('[') {
        address_literal(input)?
    } else {
        domain_name(input)?
    };
    Ok((rest, Domain(Cow::Borrowed(d))))
}

/// Mailbox = Local-part "@" ( Domain / address-literal ).
pub(crate) fn mailbox(input: &str) -> Parsed<'_, Mailbox<'_>> {
    let (rest, local) = if input.starts_with('"') {
        quoted_string(input)?
    } else {
        dot_string(input)?
    };
    if local.len() > MAX_LOCAL_PART {
        return Err(fail(input));
    }
    let (rest, _) = tag("@")(rest)?;
    let (rest, _) = domain_or_literal(rest)?;
    let (_, text) = split(input, input.len() - rest.len())?;
    Ok((
        rest,
        Mailbox {
            text: Cow::Borrowed(text),
            at: local.len(),
        },
    ))
}

/// A-d-l ":" (a source route, accepted and ignored as RFC 5321 §4.1.2 allows).
fn source_route(input: &str) -> Parsed<'_, ()> {
    let mut rest = input;
    loop {
        let (r, _) = tag("@")(rest)?;
        let (r, _) = domain_or_literal(r)?;
        match r.as_bytes().first() {
            Some(b',') => rest = &r[1..],
            Some(b':') => return Ok((&r[1..], ())),
            _ => return Err(fail(input)),
        }
    }
}

/// Path = "<" [ A-d-l ":" ] Mailbox ">", or a bare mailbox as people type it
/// in telnet (`MAIL FROM: bar@example.org`), which Postfix accepts too.
fn path(input: &str) -> Parsed<'_, Mailbox<'_>> {
    if let Some(rest) = input.strip_prefix('<') {
        let (rest, _) = opt(source_route).parse(rest)?;
        let (rest, m) = mailbox(rest)?;
        let (rest, _) = tag(">")(rest)?;
        Ok((rest, m))
    } else {
        mailbox(input)
    }
}

/// The argument of MAIL FROM: (after the colon and any spaces).
pub(crate) fn reverse_path(input: &str) -> Parsed<'_, ReversePath<'_>> {
    if let Some(rest) = input.strip_prefix("<>") {
        return Ok((rest, ReversePath::Null));
    }
    let (rest, m) = path(input)?;
    Ok((rest, ReversePath::Mailbox(m)))
}

/// The argument of RCPT TO: (after the colon and any spaces).
pub(crate) fn forward_path(input: &str) -> Parsed<'_, ForwardPath<'_>> {
    // Checked byte-wise before nom's tag: most recipients are not this one.
    if input
        .as_bytes()
        .get(1)
        .is_some_and(|b| b.eq_ignore_ascii_case(&b'p'))
        && let Ok((rest, _)) = tag_no_case::<_, _, nom::error::Error<&str>>("<postmaster>")(input)
    {
        return Ok((rest, ForwardPath::Postmaster));
    }
    let (rest, m) = path(input)?;
    Ok((rest, ForwardPath::Mailbox(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_characters_are_found() {
        assert!(!has_steering_chars("mail.kolleg.de"));
        assert!(!has_steering_chars("bücher.example"));
        for c in [
            '\u{1b}', '\u{9b}', '\u{61c}', '\u{200e}', '\u{202e}', '\u{2028}', '\u{2066}',
            '\u{feff}',
        ] {
            assert!(has_steering_chars(&format!("a{c}b")), "{:x}", u32::from(c));
        }
    }

    fn mb(s: &str) -> Option<(String, String)> {
        s.parse::<Mailbox>()
            .ok()
            .map(|m| (m.local_part().to_string(), m.domain().to_string()))
    }

    #[test]
    fn mailboxes() {
        assert_eq!(
            mb("bob@kolleg.de"),
            Some(("bob".into(), "kolleg.de".into()))
        );
        assert_eq!(
            mb("a.b+c@x-y.example"),
            Some(("a.b+c".into(), "x-y.example".into()))
        );
        assert_eq!(mb("\"john doe\"@example.org").unwrap().0, "\"john doe\"");
        assert_eq!(mb("\"a\\\"b\"@x").unwrap().0, "\"a\\\"b\"");
        assert_eq!(mb("u@[192.0.2.1]").unwrap().1, "[192.0.2.1]");
        assert_eq!(mb("u@[IPv6:2001:db8::1]").unwrap().1, "[IPv6:2001:db8::1]");
        assert_eq!(mb("u@[x-tag:stuff]").unwrap().1, "[x-tag:stuff]");
        assert_eq!(mb("jörg@bücher.example").unwrap().0, "jörg");
        for bad in [
            "",
            "a",
            "@x",
            "a@",
            ".a@x",
            "a.@x",
            "a..b@x",
            "a@-x",
            "a@x-",
            "a@x..y",
            "a b@x",
            "a@[300.1.1.1]",
            "a@[IPv6:zz]",
            "a@[1.2.3.4",
            "\"a@x",
            "a@x.",
            "a@.x",
        ] {
            assert_eq!(mb(bad), None, "{bad:?}");
        }
        let long_local = format!("{}@x", "a".repeat(65));
        assert_eq!(mb(&long_local), None);
        let ok_local = format!("{}@x", "a".repeat(64));
        assert!(mb(&ok_local).is_some());
    }

    #[test]
    fn paths() {
        let (rest, p) = reverse_path("<> SIZE=1").unwrap();
        assert_eq!((p, rest), (ReversePath::Null, " SIZE=1"));
        let (_, p) = reverse_path("<@a.example,@b.example:u@c.example>").unwrap();
        assert_eq!(p.to_string(), "<u@c.example>");
        let (_, p) = reverse_path("bar@example.org").unwrap();
        assert_eq!(p.to_string(), "<bar@example.org>");
        let (_, p) = forward_path("<POSTMASTER>").unwrap();
        assert_eq!(p, ForwardPath::Postmaster);
        let (_, p) = forward_path("<postmaster@x.example>").unwrap();
        assert_eq!(p.to_string(), "<postmaster@x.example>");
        assert!(reverse_path("<u@x").is_err());
        assert!(forward_path("<>").is_err());
    }

    #[test]
    fn domains() {
        assert!("mail.kolleg.de".parse::<Domain>().is_ok());
        assert!(
            "[127.0.0.1]"
                .parse::<Domain>()
                .unwrap()
                .is_address_literal()
        );
        assert!("server".parse::<Domain>().is_ok());
        assert!("bad_name".parse::<Domain>().is_err());
        assert!(format!("{}.x", "a".repeat(260)).parse::<Domain>().is_err());
    }

    #[test]
    fn paths_parse_from_strings_and_errors_show_the_input() {
        assert_eq!("<>".parse::<ReversePath>(), Ok(ReversePath::Null));
        let p: ReversePath = "<anna@kolleg.de>".parse().unwrap();
        assert_eq!(p.to_string(), "<anna@kolleg.de>");
        let p: ReversePath = "anna@kolleg.de".parse().unwrap();
        assert_eq!(p.to_string(), "<anna@kolleg.de>");
        assert_eq!(
            "<postmaster>".parse::<ForwardPath>(),
            Ok(ForwardPath::Postmaster)
        );
        let p: ForwardPath = "<bob@kolleg.de>".parse().unwrap();
        assert_eq!(p.mailbox().map(Mailbox::domain), Some("kolleg.de"));
        let e = "foo@".parse::<ReversePath>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid address "foo@": expected local-part@domain, <local-part@domain> or <>"#
        );
        assert_eq!((e.kind(), e.input()), (AddressKind::ReversePath, "foo@"));
        let e = "<bob@kolleg.de> x".parse::<ForwardPath>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with(r#"invalid address "<bob@kolleg.de> x": "#)
        );
        let e = "foo@".parse::<Mailbox>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid address "foo@": expected local-part@domain"#
        );
        let e = "a..b".parse::<Domain>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with(r#"invalid domain "a..b": expected "#)
        );
    }
}
