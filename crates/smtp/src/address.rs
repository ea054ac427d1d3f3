//! Addresses as RFC 5321 §4.1.2 writes them, extended by RFC 6531 (SMTPUTF8).
//!
//! Each type is checked once when built and borrows from the command line when
//! parsed from one; `into_owned` makes a `'static` copy for events.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{tag, tag_no_case, take_while1};
use nom::combinator::opt;

use crate::error::CommandError;

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
    pub(crate) fn parse_bytes(input: &'a [u8]) -> Result<Self, CommandError> {
        match domain_or_literal(input) {
            Ok((b"", d)) => Ok(d),
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
    type Err = CommandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse_bytes(s.as_bytes()).map(Domain::into_owned)
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
    type Err = CommandError;

    /// Parses `local@domain` (no angle brackets).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match mailbox(s.as_bytes()) {
            Ok((b"", m)) => Ok(m.into_owned()),
            _ => Err(CommandError::BadArguments),
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

/// RFC 5322 atext, plus any non-ASCII byte (RFC 6531; UTF-8 is checked once the
/// whole mailbox is known).
#[inline]
pub(crate) fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

#[inline]
fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b >= 0x80
}

/// Dot-string: atoms separated by single dots.
fn dot_string(input: &[u8]) -> IResult<&[u8], &[u8]> {
    let (rest, s) = take_while1(|b| is_atext(b) || b == b'.')(input)?;
    if s[0] == b'.' || s[s.len() - 1] == b'.' || memchr::memmem::find(s, b"..").is_some() {
        return Err(fail(input));
    }
    Ok((rest, s))
}

/// Quoted-string (RFC 5321): qtextSMTP or backslash pairs, in double quotes.
fn quoted_string(input: &[u8]) -> IResult<&[u8], &[u8]> {
    if input.first() != Some(&b'"') {
        return Err(fail(input));
    }
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            b'"' => return Ok((&input[i + 1..], &input[..=i])),
            b'\\' => match input.get(i + 1) {
                Some(&c) if (32..=126).contains(&c) => i += 2,
                _ => return Err(fail(input)),
            },
            c if (32..=126).contains(&c) || c >= 0x80 => i += 1,
            _ => return Err(fail(input)),
        }
    }
    Err(fail(input))
}

/// Domain: sub-domains of letters, digits and inner hyphens, joined by dots.
fn domain_name(input: &[u8]) -> IResult<&[u8], &[u8]> {
    let (rest, d) = take_while1(is_domain_byte)(input)?;
    if d.len() > MAX_DOMAIN {
        return Err(fail(input));
    }
    for label in d.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return Err(fail(input));
        }
    }
    Ok((rest, d))
}

/// address-literal: `[` IPv4 / `IPv6:` IPv6 / tag `:` dcontent `]`.
fn address_literal(input: &[u8]) -> IResult<&[u8], &[u8]> {
    let (rest, _) = tag(&b"["[..])(input)?;
    let end = memchr::memchr(b']', rest).ok_or_else(|| fail(input))?;
    let inner = std::str::from_utf8(&rest[..end]).map_err(|_| fail(input))?;
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
    Ok((&rest[end + 1..], &input[..end + 2]))
}

fn domain_or_literal(input: &[u8]) -> IResult<&[u8], Domain<'_>> {
    let (rest, d) = if input.first() == Some(&b'[') {
        address_literal(input)?
    } else {
        domain_name(input)?
    };
    let d = std::str::from_utf8(d).map_err(|_| fail(input))?;
    Ok((rest, Domain(Cow::Borrowed(d))))
}

/// Mailbox = Local-part "@" ( Domain / address-literal ).
pub(crate) fn mailbox(input: &[u8]) -> IResult<&[u8], Mailbox<'_>> {
    let (rest, local) = if input.first() == Some(&b'"') {
        quoted_string(input)?
    } else {
        dot_string(input)?
    };
    if local.len() > MAX_LOCAL_PART {
        return Err(fail(input));
    }
    let (rest, _) = tag(&b"@"[..])(rest)?;
    let (rest, _) = domain_or_literal(rest)?;
    let len = input.len() - rest.len();
    let text = std::str::from_utf8(&input[..len]).map_err(|_| fail(input))?;
    Ok((
        rest,
        Mailbox {
            text: Cow::Borrowed(text),
            at: local.len(),
        },
    ))
}

/// A-d-l ":" (a source route, accepted and ignored as RFC 5321 §4.1.2 allows).
fn source_route(input: &[u8]) -> IResult<&[u8], ()> {
    let mut rest = input;
    loop {
        let (r, _) = tag(&b"@"[..])(rest)?;
        let (r, _) = domain_or_literal(r)?;
        match r.first() {
            Some(b',') => rest = &r[1..],
            Some(b':') => return Ok((&r[1..], ())),
            _ => return Err(fail(input)),
        }
    }
}

/// Path = "<" [ A-d-l ":" ] Mailbox ">", or a bare mailbox as people type it
/// in telnet (`MAIL FROM: bar@example.org`), which Postfix accepts too.
fn path(input: &[u8]) -> IResult<&[u8], Mailbox<'_>> {
    if input.first() == Some(&b'<') {
        let rest = &input[1..];
        let (rest, _) = opt(source_route).parse(rest)?;
        let (rest, m) = mailbox(rest)?;
        let (rest, _) = tag(&b">"[..])(rest)?;
        Ok((rest, m))
    } else {
        mailbox(input)
    }
}

/// The argument of MAIL FROM: (after the colon and any spaces).
pub(crate) fn reverse_path(input: &[u8]) -> IResult<&[u8], ReversePath<'_>> {
    if let Some(rest) = input.strip_prefix(b"<>") {
        return Ok((rest, ReversePath::Null));
    }
    let (rest, m) = path(input)?;
    Ok((rest, ReversePath::Mailbox(m)))
}

/// The argument of RCPT TO: (after the colon and any spaces).
pub(crate) fn forward_path(input: &[u8]) -> IResult<&[u8], ForwardPath<'_>> {
    if let Ok((rest, _)) =
        tag_no_case::<_, _, nom::error::Error<&[u8]>>(&b"<postmaster>"[..])(input)
    {
        return Ok((rest, ForwardPath::Postmaster));
    }
    let (rest, m) = path(input)?;
    Ok((rest, ForwardPath::Mailbox(m)))
}

pub(crate) fn fail(input: &[u8]) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (rest, p) = reverse_path(b"<> SIZE=1").unwrap();
        assert_eq!((p, rest), (ReversePath::Null, &b" SIZE=1"[..]));
        let (_, p) = reverse_path(b"<@a.example,@b.example:u@c.example>").unwrap();
        assert_eq!(p.to_string(), "<u@c.example>");
        let (_, p) = reverse_path(b"bar@example.org").unwrap();
        assert_eq!(p.to_string(), "<bar@example.org>");
        let (_, p) = forward_path(b"<POSTMASTER>").unwrap();
        assert_eq!(p, ForwardPath::Postmaster);
        let (_, p) = forward_path(b"<postmaster@x.example>").unwrap();
        assert_eq!(p.to_string(), "<postmaster@x.example>");
        assert!(reverse_path(b"<u@x").is_err());
        assert!(forward_path(b"<>").is_err());
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
}
