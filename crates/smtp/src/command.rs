//! SMTP commands (RFC 5321 §4.1 and the ESMTP extensions): types, parser, renderer.
//!
//! [`Command::parse`] takes one complete line without its CRLF, as the line
//! framer hands it over, and borrows from it. Verbs and parameter keywords are
//! case-insensitive. Every command renders back to the strict wire form with
//! [`Command::render`].

use std::borrow::Cow;

use crate::address::{self, ADDR_TYPE, Domain, ForwardPath, KEYWORD, ReversePath, VALUE, XCHAR};
use crate::error::CommandError;
use crate::reply::push_decimal;
use crate::xclient::Xclient;

/// The body type a client declares with `BODY=` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `7BIT`: plain ASCII lines.
    SevenBit,
    /// `8BITMIME`: octets above 127 in lines of text.
    EightBitMime,
    /// `BINARYMIME`: arbitrary octets; only BDAT can carry it.
    BinaryMime,
}

impl Body {
    fn as_str(self) -> &'static str {
        match self {
            Self::SevenBit => "7BIT",
            Self::EightBitMime => "8BITMIME",
            Self::BinaryMime => "BINARYMIME",
        }
    }
}

/// How much of a message a delivery status notification returns (RFC 3461 `RET=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only the headers.
    Headers,
}

/// When the client wants a delivery status notification (RFC 3461 `NOTIFY=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `NEVER`.
    Never,
    /// A combination of `SUCCESS`, `FAILURE` and `DELAY` (at least one).
    On {
        /// Notify on delivery.
        success: bool,
        /// Notify on failure.
        failure: bool,
        /// Notify on delay.
        delay: bool,
    },
}

/// The original recipient of RFC 3461 `ORCPT=addr-type;xtext`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginalRecipient<'a> {
    /// The address type, such as `rfc822` or `utf-8`.
    pub addr_type: Cow<'a, str>,
    /// The address, still xtext-encoded as on the wire ([`decode_xtext`]).
    pub address: Cow<'a, str>,
}

/// An ESMTP parameter this crate does not interpret, exposed as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Parameter<'a> {
    /// The keyword as sent (compare case-insensitively).
    pub keyword: Cow<'a, str>,
    /// The value after `=`, if any.
    pub value: Option<Cow<'a, str>>,
}

/// The parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MailParameters<'a> {
    /// `SIZE=`: the declared message size in octets (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `AUTH=`: the authenticated submitter, xtext-encoded, or `<>` (RFC 4954 §5).
    pub auth: Option<Cow<'a, str>>,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-encoded (RFC 3461).
    pub envid: Option<Cow<'a, str>>,
    /// Any other parameter, in the order sent.
    pub other: Vec<Parameter<'a>>,
}

/// The parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RcptParameters<'a> {
    /// `NOTIFY=` (RFC 3461).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461).
    pub orcpt: Option<OriginalRecipient<'a>>,
    /// Any other parameter, in the order sent.
    pub other: Vec<Parameter<'a>>,
}

/// A command from client to server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `HELO domain`.
    Helo(Domain<'a>),
    /// `EHLO domain`.
    Ehlo(Domain<'a>),
    /// `LHLO domain` (LMTP, RFC 2033).
    Lhlo(Domain<'a>),
    /// `MAIL FROM:<path> [parameters]`.
    Mail {
        /// The sender.
        from: ReversePath<'a>,
        /// The ESMTP parameters.
        params: MailParameters<'a>,
    },
    /// `RCPT TO:<path> [parameters]`.
    Rcpt {
        /// The recipient.
        to: ForwardPath<'a>,
        /// The ESMTP parameters.
        params: RcptParameters<'a>,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of message data that follow the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop(Option<&'a str>),
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(&'a str),
    /// `EXPN string`.
    Expn(&'a str),
    /// `HELP [string]`.
    Help(Option<&'a str>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism name as sent.
        mechanism: &'a str,
        /// The base64 initial response (`=` for an empty one).
        initial: Option<&'a str>,
    },
    /// `XCLIENT attribute=value ...` (Postfix): a trusted proxy names the
    /// real client.
    Xclient(Xclient),
}

/// A four-letter verb in lower case, as the dispatch in [`Command::parse`] reads it.
const fn verb_code(name: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*name)
}

const MAIL: u32 = verb_code(b"mail");
const RCPT: u32 = verb_code(b"rcpt");
const RSET: u32 = verb_code(b"rset");
const DATA: u32 = verb_code(b"data");
const QUIT: u32 = verb_code(b"quit");
const NOOP: u32 = verb_code(b"noop");
const EHLO: u32 = verb_code(b"ehlo");
const EXPN: u32 = verb_code(b"expn");
const HELO: u32 = verb_code(b"helo");
const HELP: u32 = verb_code(b"help");
const LHLO: u32 = verb_code(b"lhlo");
const VRFY: u32 = verb_code(b"vrfy");
const AUTH: u32 = verb_code(b"auth");
const BDAT: u32 = verb_code(b"bdat");
const STARTTLS: u64 = u64::from_le_bytes(*b"starttls");

impl<'a> Command<'a> {
    /// Parses one command line (without its CRLF).
    pub fn parse(line: &'a [u8]) -> Result<Self, CommandError> {
        // The verb is everything up to the first space; all verbs are letters,
        // so OR-ing 0x20 into each byte folds case without false matches.
        // A known verb is ASCII, so the line is UTF-8 exactly when the
        // arguments are: those are checked once, and every part below is
        // sliced from a `str`. Verbs without arguments need no check when
        // the rest is spaces.
        if let Some(&[a, b, c, d]) = line.first_chunk::<4>()
            && line.get(4).is_none_or(|&b| b == b' ')
        {
            let raw = &line[4..];
            let args = || utf8(raw);
            return match u32::from_le_bytes([a, b, c, d]) | 0x2020_2020 {
                MAIL => parse_mail(args()?),
                RCPT => parse_rcpt(args()?),
                RSET => no_args(raw, Self::Rset),
                DATA => no_args(raw, Self::Data),
                QUIT => no_args(raw, Self::Quit),
                NOOP => Ok(Self::Noop(optional_text(args()?)?)),
                EHLO => Ok(Self::Ehlo(hello_domain(args()?)?)),
                EXPN => Ok(Self::Expn(required_text(args()?)?)),
                HELO => Ok(Self::Helo(hello_domain(args()?)?)),
                HELP => Ok(Self::Help(optional_text(args()?)?)),
                LHLO => Ok(Self::Lhlo(hello_domain(args()?)?)),
                VRFY => Ok(Self::Vrfy(required_text(args()?)?)),
                AUTH => parse_auth(args()?),
                BDAT => parse_bdat(args()?),
                _ => unknown(line),
            };
        }
        if let Some(verb) = line.first_chunk::<7>()
            && is_word(verb, b"XCLIENT")
            && line.get(7).is_none_or(|&b| b == b' ')
        {
            return Xclient::parse(utf8(&line[7..])?).map(Self::Xclient);
        }
        if let Some(verb) = line.first_chunk::<8>()
            && u64::from_le_bytes(*verb) | 0x2020_2020_2020_2020 == STARTTLS
            && line.get(8).is_none_or(|&b| b == b' ')
        {
            return no_args(&line[8..], Self::StartTls);
        }
        unknown(line)
    }

    /// The command verb in upper case.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Helo(_) => "HELO",
            Self::Ehlo(_) => "EHLO",
            Self::Lhlo(_) => "LHLO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop(_) => "NOOP",
            Self::Quit => "QUIT",
            Self::Vrfy(_) => "VRFY",
            Self::Expn(_) => "EXPN",
            Self::Help(_) => "HELP",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
            Self::Xclient(_) => "XCLIENT",
        }
    }

    /// Appends the command in strict wire form, CRLF included.
    pub fn render(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.verb().as_bytes());
        let mut arg = |s: &str| {
            out.push(b' ');
            out.extend_from_slice(s.as_bytes());
        };
        match self {
            Self::Helo(d) | Self::Ehlo(d) | Self::Lhlo(d) => arg(d.as_str()),
            Self::Vrfy(s) | Self::Expn(s) => arg(s),
            Self::Noop(s) | Self::Help(s) => {
                if let Some(s) = s {
                    arg(s);
                }
            }
            Self::Auth { mechanism, initial } => {
                arg(mechanism);
                if let Some(i) = initial {
                    arg(i);
                }
            }
            Self::Mail { from, params } => {
                out.extend_from_slice(b" FROM:");
                render_path(out, from.mailbox().map(|m| m.as_str()), "<>");
                params.render(out);
            }
            Self::Rcpt { to, params } => {
                out.extend_from_slice(b" TO:");
                render_path(out, to.mailbox().map(|m| m.as_str()), "<Postmaster>");
                params.render(out);
            }
            Self::Bdat { size, last } => {
                out.push(b' ');
                push_decimal(out, *size);
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Self::Xclient(x) => x.render(out),
            Self::Data | Self::Rset | Self::Quit | Self::StartTls => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn render_path(out: &mut Vec<u8>, mailbox: Option<&str>, otherwise: &str) {
    match mailbox {
        Some(m) => {
            out.push(b'<');
            out.extend_from_slice(m.as_bytes());
            out.push(b'>');
        }
        None => out.extend_from_slice(otherwise.as_bytes()),
    }
}

fn render_param(out: &mut Vec<u8>, keyword: &str, value: Option<&str>) {
    out.push(b' ');
    out.extend_from_slice(keyword.as_bytes());
    if let Some(v) = value {
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
}

impl MailParameters<'_> {
    /// A copy that owns its text.
    pub fn into_owned(self) -> MailParameters<'static> {
        MailParameters {
            size: self.size,
            body: self.body,
            smtputf8: self.smtputf8,
            auth: self.auth.map(owned),
            ret: self.ret,
            envid: self.envid.map(owned),
            other: self.other.into_iter().map(Parameter::into_owned).collect(),
        }
    }

    fn render(&self, out: &mut Vec<u8>) {
        if let Some(size) = self.size {
            out.extend_from_slice(b" SIZE=");
            push_decimal(out, size);
        }
        if let Some(body) = self.body {
            render_param(out, "BODY", Some(body.as_str()));
        }
        if self.smtputf8 {
            render_param(out, "SMTPUTF8", None);
        }
        if let Some(auth) = &self.auth {
            render_param(out, "AUTH", Some(auth));
        }
        if let Some(ret) = self.ret {
            render_param(
                out,
                "RET",
                Some(if ret == Ret::Full { "FULL" } else { "HDRS" }),
            );
        }
        if let Some(envid) = &self.envid {
            render_param(out, "ENVID", Some(envid));
        }
        for p in &self.other {
            render_param(out, &p.keyword, p.value.as_deref());
        }
    }
}

impl RcptParameters<'_> {
    /// A copy that owns its text.
    pub fn into_owned(self) -> RcptParameters<'static> {
        RcptParameters {
            notify: self.notify,
            orcpt: self.orcpt.map(|o| OriginalRecipient {
                addr_type: owned(o.addr_type),
                address: owned(o.address),
            }),
            other: self.other.into_iter().map(Parameter::into_owned).collect(),
        }
    }

    fn render(&self, out: &mut Vec<u8>) {
        match self.notify {
            None => {}
            Some(Notify::Never) => render_param(out, "NOTIFY", Some("NEVER")),
            Some(Notify::On {
                success,
                failure,
                delay,
            }) => {
                out.extend_from_slice(b" NOTIFY=");
                let mut first = true;
                for (on, name) in [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")] {
                    if on {
                        if !first {
                            out.push(b',');
                        }
                        out.extend_from_slice(name.as_bytes());
                        first = false;
                    }
                }
            }
        }
        if let Some(o) = &self.orcpt {
            out.extend_from_slice(b" ORCPT=");
            out.extend_from_slice(o.addr_type.as_bytes());
            out.push(b';');
            out.extend_from_slice(o.address.as_bytes());
        }
        for p in &self.other {
            render_param(out, &p.keyword, p.value.as_deref());
        }
    }
}

impl Parameter<'_> {
    /// A copy that owns its text.
    pub fn into_owned(self) -> Parameter<'static> {
        Parameter {
            keyword: owned(self.keyword),
            value: self.value.map(owned),
        }
    }
}

fn owned(c: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(c.into_owned())
}

/// Decodes xtext (RFC 3461 §4): `+XX` stands for the octet with hex value XX.
/// Returns `None` for malformed xtext or a result that is not UTF-8.
pub fn decode_xtext(xtext: &str) -> Option<String> {
    let bytes = xtext.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = xtext.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes text as xtext: `+`, `=`, and octets outside 33..=126 become `+XX`.
pub fn encode_xtext(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

pub(crate) fn is_xtext(s: &[u8]) -> bool {
    xtext_len(s) == s.len()
}

/// The length of the xtext (RFC 3461 §4) at the start of `s`.
fn xtext_len(s: &[u8]) -> usize {
    let hex = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let mut i = 0;
    loop {
        i += address::run_len(&s[i..], XCHAR);
        if s.get(i) == Some(&b'+') && hex(s.get(i + 1)) && hex(s.get(i + 2)) {
            i += 3;
        } else {
            return i;
        }
    }
}

/// The line after a known verb as text: the one UTF-8 check of the line.
#[inline]
fn utf8(args: &[u8]) -> Result<&str, CommandError> {
    std::str::from_utf8(args).map_err(|_| CommandError::InvalidCharacters)
}

/// A line with no known verb: invalid UTF-8 is reported before the verb.
#[cold]
fn unknown<T>(line: &[u8]) -> Result<T, CommandError> {
    utf8(line)?;
    Err(CommandError::UnknownCommand)
}

/// A verb without arguments: only spaces may follow (then the line is
/// ASCII and needs no UTF-8 check).
fn no_args<'a>(args: &[u8], command: Command<'a>) -> Result<Command<'a>, CommandError> {
    if args.iter().all(|&b| b == b' ') {
        Ok(command)
    } else {
        utf8(args)?;
        Err(CommandError::UnexpectedArguments)
    }
}

fn trim_spaces(s: &str) -> &str {
    let bytes = s.as_bytes();
    let start = leading_spaces(bytes);
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// How many spaces `bytes` starts with.
#[inline]
fn leading_spaces(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len())
}

fn text(s: &str) -> Result<&str, CommandError> {
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(CommandError::InvalidCharacters);
    }
    Ok(s)
}

fn optional_text(args: &str) -> Result<Option<&str>, CommandError> {
    let t = trim_spaces(args);
    if t.is_empty() {
        Ok(None)
    } else {
        text(t).map(Some)
    }
}

fn required_text(args: &str) -> Result<&str, CommandError> {
    optional_text(args)?.ok_or(CommandError::BadArguments)
}

fn hello_domain(args: &str) -> Result<Domain<'_>, CommandError> {
    let t = trim_spaces(args);
    if t.is_empty() {
        return Err(CommandError::BadArguments);
    }
    Domain::parse_str(t)
}

/// Strips `" FROM:"` or `" TO:"` (`word` in any case, then `:`) and the
/// spaces people type after it.
fn after_keyword<'a, const N: usize>(args: &'a str, word: &[u8; N]) -> Option<&'a str> {
    let rest = args.strip_prefix(' ')?;
    let bytes = rest.as_bytes();
    if bytes.get(N) != Some(&b':') || !is_word(&bytes[..N], word) {
        return None;
    }
    let rest = &rest[N + 1..];
    Some(&rest[leading_spaces(rest.as_bytes())..])
}

/// A cursor over `*(SP esmtp-param)`: [`Params::keyword`] reads the next
/// keyword, then [`Params::value`] (or a parser for one parameter's value
/// grammar, such as [`Params::orcpt`]) reads its value; each byte is looked
/// at once.
struct Params<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Params<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    /// The next keyword, and whether `=` (then a value) follows it.
    #[inline(always)]
    fn keyword(&mut self) -> Result<Option<(&'a str, bool)>, CommandError> {
        let bytes = self.text.as_bytes();
        let spaces = leading_spaces(&bytes[self.at..]);
        if spaces == 0 && self.at < bytes.len() {
            return Err(CommandError::BadArguments);
        }
        self.at += spaces;
        let Some(&first) = bytes.get(self.at) else {
            return Ok(None);
        };
        if !first.is_ascii_alphanumeric() {
            return Err(CommandError::BadArguments);
        }
        let start = self.at;
        self.at += 1 + address::short_run_len(&bytes[self.at + 1..], KEYWORD);
        let keyword = &self.text[start..self.at];
        match bytes.get(self.at) {
            None | Some(b' ') => Ok(Some((keyword, false))),
            Some(b'=') => {
                self.at += 1;
                Ok(Some((keyword, true)))
            }
            Some(_) => Err(CommandError::BadArguments),
        }
    }

    /// The esmtp-value after the keyword's `=`, if it has one.
    #[inline(always)]
    fn value(&mut self, has_value: bool) -> Result<Option<&'a str>, CommandError> {
        if !has_value {
            return Ok(None);
        }
        let start = self.at;
        self.at += address::run_len(&self.text.as_bytes()[start..], VALUE);
        self.end_value(start).map(Some)
    }

    /// The value read since `start`: not empty, and ending the parameter.
    #[inline(always)]
    fn end_value(&self, start: usize) -> Result<&'a str, CommandError> {
        let bytes = self.text.as_bytes();
        if self.at == start || bytes.get(self.at).is_some_and(|&b| b != b' ') {
            return Err(CommandError::BadParameter);
        }
        Ok(&self.text[start..self.at])
    }

    /// The value of `ORCPT=addr-type;xtext` (RFC 3461 §4.2), checked while
    /// it is read: the same as [`Params::value`] followed by the check, since
    /// every byte it takes is an esmtp-value byte.
    #[inline(always)]
    fn orcpt(&mut self, has_value: bool) -> Result<OriginalRecipient<'a>, CommandError> {
        if !has_value {
            return Err(CommandError::BadParameter);
        }
        let bytes = self.text.as_bytes();
        let start = self.at;
        // addr-type is atext, which holds no `;`: the first `;` ends it.
        let type_end = start + address::short_run_len(&bytes[start..], ADDR_TYPE);
        if type_end == start || bytes.get(type_end) != Some(&b';') {
            return Err(CommandError::BadParameter);
        }
        self.at = type_end + 1;
        self.at += xtext_len(&bytes[self.at..]);
        let address = self.end_value(type_end + 1)?;
        Ok(OriginalRecipient {
            addr_type: Cow::Borrowed(&self.text[start..type_end]),
            address: Cow::Borrowed(address),
        })
    }
}

/// A run of ASCII digits (at most 20) as a `u64`; `None` if anything else
/// or if it does not fit.
fn decimal(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    v.bytes().try_fold(0u64, |n, b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Whether `s` is `word` (upper-case letters and digits, at most 16) in any
/// case, compared as two words rather than byte by byte.
#[inline(always)]
fn is_word<const N: usize>(s: &[u8], word: &[u8; N]) -> bool {
    let Ok(s) = <[u8; N]>::try_from(s) else {
        return false;
    };
    let (mut text, mut want, mut fold) = ([0u8; 16], [0u8; 16], [0u8; 16]);
    text[..N].copy_from_slice(&s);
    want[..N].copy_from_slice(word);
    for (f, w) in fold.iter_mut().zip(word) {
        if w.is_ascii_alphabetic() {
            *f = 0x20;
        }
    }
    let fold = u128::from_le_bytes(fold);
    u128::from_le_bytes(text) | fold == u128::from_le_bytes(want) | fold
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::BadParameter);
    }
    *slot = Some(value);
    Ok(())
}

fn parse_mail(args: &str) -> Result<Command<'_>, CommandError> {
    let rest = after_keyword(args, b"FROM").ok_or(CommandError::BadArguments)?;
    let (rest, from) = address::reverse_path(rest).map_err(|_| CommandError::BadSender)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::BadSender);
    }
    let mut params = MailParameters::default();
    let mut smtputf8 = None;
    let mut cursor = Params::new(rest);
    while let Some((keyword, has_value)) = cursor.keyword()? {
        let value = cursor.value(has_value)?;
        if is_word(keyword.as_bytes(), b"SIZE") {
            let v = value.ok_or(CommandError::BadParameter)?;
            set_once(
                &mut params.size,
                decimal(v).ok_or(CommandError::BadParameter)?,
            )
        } else if is_word(keyword.as_bytes(), b"BODY") {
            let v = value.ok_or(CommandError::BadParameter)?;
            let body = if is_word(v.as_bytes(), b"7BIT") {
                Body::SevenBit
            } else if is_word(v.as_bytes(), b"8BITMIME") {
                Body::EightBitMime
            } else if is_word(v.as_bytes(), b"BINARYMIME") {
                Body::BinaryMime
            } else {
                return Err(CommandError::BadParameter);
            };
            set_once(&mut params.body, body)
        } else if is_word(keyword.as_bytes(), b"SMTPUTF8") {
            if value.is_some() {
                return Err(CommandError::BadParameter);
            }
            set_once(&mut smtputf8, ())
        } else if is_word(keyword.as_bytes(), b"AUTH") {
            let v = value.ok_or(CommandError::BadParameter)?;
            if v != "<>" && !is_xtext(v.as_bytes()) {
                return Err(CommandError::BadParameter);
            }
            set_once(&mut params.auth, Cow::Borrowed(v))
        } else if is_word(keyword.as_bytes(), b"RET") {
            let v = value.ok_or(CommandError::BadParameter)?;
            let ret = if is_word(v.as_bytes(), b"FULL") {
                Ret::Full
            } else if is_word(v.as_bytes(), b"HDRS") {
                Ret::Headers
            } else {
                return Err(CommandError::BadParameter);
            };
            set_once(&mut params.ret, ret)
        } else if is_word(keyword.as_bytes(), b"ENVID") {
            let v = value.ok_or(CommandError::BadParameter)?;
            if v.len() > 100 || !is_xtext(v.as_bytes()) {
                return Err(CommandError::BadParameter);
            }
            set_once(&mut params.envid, Cow::Borrowed(v))
        } else {
            params.other.push(Parameter {
                keyword: Cow::Borrowed(keyword),
                value: value.map(Cow::Borrowed),
            });
            Ok(())
        }?;
    }
    params.smtputf8 = smtputf8.is_some();
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str) -> Result<Command<'_>, CommandError> {
    let rest = after_keyword(args, b"TO").ok_or(CommandError::BadArguments)?;
    let (rest, to) = address::forward_path(rest).map_err(|_| CommandError::BadRecipient)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::BadRecipient);
    }
    let mut params = RcptParameters::default();
    let mut cursor = Params::new(rest);
    while let Some((keyword, has_value)) = cursor.keyword()? {
        if is_word(keyword.as_bytes(), b"NOTIFY") {
            let v = cursor.value(has_value)?.ok_or(CommandError::BadParameter)?;
            set_once(&mut params.notify, parse_notify(v)?)
        } else if is_word(keyword.as_bytes(), b"ORCPT") {
            let orcpt = cursor.orcpt(has_value)?;
            set_once(&mut params.orcpt, orcpt)
        } else {
            let value = cursor.value(has_value)?;
            params.other.push(Parameter {
                keyword: Cow::Borrowed(keyword),
                value: value.map(Cow::Borrowed),
            });
            Ok(())
        }?;
    }
    Ok(Command::Rcpt { to, params })
}

fn parse_notify(v: &str) -> Result<Notify, CommandError> {
    if is_word(v.as_bytes(), b"NEVER") {
        return Ok(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for item in v.as_bytes().split(|&b| b == b',') {
        let flag = if is_word(item, b"SUCCESS") {
            &mut success
        } else if is_word(item, b"FAILURE") {
            &mut failure
        } else if is_word(item, b"DELAY") {
            &mut delay
        } else {
            return Err(CommandError::BadParameter);
        };
        if *flag {
            return Err(CommandError::BadParameter);
        }
        *flag = true;
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

fn parse_auth(args: &str) -> Result<Command<'_>, CommandError> {
    let t = trim_spaces(args);
    if !args.starts_with(' ') || t.is_empty() {
        return Err(CommandError::BadArguments);
    }
    let (mechanism, initial) = match t.split_once(' ') {
        Some((m, i)) => (m, Some(trim_spaces(i))),
        None => (t, None),
    };
    let mech_ok = mechanism.len() <= 20
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mech_ok {
        return Err(CommandError::BadArguments);
    }
    if let Some(i) = initial {
        let b64 = i == "="
            || i.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if !b64 {
            return Err(CommandError::BadArguments);
        }
    }
    Ok(Command::Auth { mechanism, initial })
}

fn parse_bdat(args: &str) -> Result<Command<'_>, CommandError> {
    let t = trim_spaces(args);
    if !args.starts_with(' ') || t.is_empty() {
        return Err(CommandError::BadArguments);
    }
    let (size, last) = match t.split_once(' ') {
        Some((s, l)) => (s, Some(trim_spaces(l))),
        None => (t, None),
    };
    let size = decimal(size).ok_or(CommandError::BadArguments)?;
    let last = match last {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::BadArguments),
    };
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command<'_>, CommandError> {
        Command::parse(s.as_bytes())
    }

    fn round_trip(s: &str) -> String {
        let mut out = Vec::new();
        parse(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .render(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse("noop"), Ok(Command::Noop(None)));
        assert_eq!(parse("QuIt"), Ok(Command::Quit));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
        assert_eq!(parse("DATA  "), Ok(Command::Data));
        assert_eq!(parse("DATA x"), Err(CommandError::UnexpectedArguments));
        assert_eq!(parse("FOO"), Err(CommandError::UnknownCommand));
        assert_eq!(parse(""), Err(CommandError::UnknownCommand));
        assert_eq!(parse("MAILX FROM:<>"), Err(CommandError::UnknownCommand));
    }

    #[test]
    fn hello() {
        assert_eq!(round_trip("helo server"), "HELO server\r\n");
        assert_eq!(round_trip("EHLO [127.0.0.1]"), "EHLO [127.0.0.1]\r\n");
        assert_eq!(round_trip("LHLO mx.example"), "LHLO mx.example\r\n");
        assert_eq!(parse("EHLO"), Err(CommandError::BadArguments));
        assert_eq!(parse("EHLO bad_host"), Err(CommandError::BadDomain));
    }

    #[test]
    fn mail_forms() {
        assert_eq!(
            round_trip("MAIL FROM:<a@b.example>"),
            "MAIL FROM:<a@b.example>\r\n"
        );
        assert_eq!(
            round_trip("mail from: bar@example.org"),
            "MAIL FROM:<bar@example.org>\r\n"
        );
        assert_eq!(round_trip("MAIL FROM:<>"), "MAIL FROM:<>\r\n");
        assert_eq!(
            round_trip(
                "MAIL FROM:<a@b> size=1000 body=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<> X-FOO XY=z"
            ),
            "MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME SMTPUTF8 AUTH=<> RET=HDRS ENVID=QQ+2B1 X-FOO XY=z\r\n"
        );
        assert_eq!(parse("MAIL FROM:<a@b>SIZE=1"), Err(CommandError::BadSender));
        assert_eq!(parse("MAIL FROM:"), Err(CommandError::BadSender));
        assert_eq!(parse("MAIL TO:<a@b>"), Err(CommandError::BadArguments));
        assert_eq!(
            parse("MAIL FROM:<a@b> SIZE=x"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b> SIZE=1 SIZE=2"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b> SIZE=99999999999999999999"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b> BODY=9BIT"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b> SMTPUTF8=yes"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b> ENVID=a=b"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(parse("MAIL FROM:<a@b> =x"), Err(CommandError::BadArguments));
    }

    #[test]
    fn rcpt_forms() {
        assert_eq!(
            round_trip("RCPT TO: foo@example.com"),
            "RCPT TO:<foo@example.com>\r\n"
        );
        assert_eq!(
            round_trip("rcpt to:<postmaster>"),
            "RCPT TO:<Postmaster>\r\n"
        );
        assert_eq!(
            round_trip("RCPT TO:<a@b> NOTIFY=failure,delay ORCPT=rfc822;a+40b"),
            "RCPT TO:<a@b> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+40b\r\n"
        );
        assert_eq!(
            round_trip("RCPT TO:<a@b> NOTIFY=NEVER"),
            "RCPT TO:<a@b> NOTIFY=NEVER\r\n"
        );
        assert_eq!(
            parse("RCPT TO:<a@b> NOTIFY=NEVER,DELAY"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("RCPT TO:<a@b> NOTIFY=DELAY,DELAY"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(
            parse("RCPT TO:<a@b> ORCPT=rfc822"),
            Err(CommandError::BadParameter)
        );
        assert_eq!(parse("RCPT TO:<>"), Err(CommandError::BadRecipient));
        assert_eq!(parse("RCPT TO:<a@@b>"), Err(CommandError::BadRecipient));
        let Ok(Command::Rcpt { params, .. }) = parse("RCPT TO:<a@b> SIZE=10") else {
            panic!()
        };
        assert_eq!(params.other[0].keyword, "SIZE");
    }

    #[test]
    fn other_commands() {
        assert_eq!(round_trip("BDAT 100 last"), "BDAT 100 LAST\r\n");
        assert_eq!(round_trip("BDAT 0"), "BDAT 0\r\n");
        assert_eq!(parse("BDAT"), Err(CommandError::BadArguments));
        assert_eq!(parse("BDAT -1"), Err(CommandError::BadArguments));
        assert_eq!(parse("BDAT 1 FIRST"), Err(CommandError::BadArguments));
        assert_eq!(
            parse("BDAT 99999999999999999999"),
            Err(CommandError::BadArguments)
        );
        assert_eq!(
            round_trip("AUTH plain AGJvYgB0b3BTZWNyZXQ="),
            "AUTH plain AGJvYgB0b3BTZWNyZXQ=\r\n"
        );
        assert_eq!(round_trip("AUTH LOGIN"), "AUTH LOGIN\r\n");
        assert_eq!(parse("AUTH"), Err(CommandError::BadArguments));
        assert_eq!(parse("AUTH PLAIN a!b"), Err(CommandError::BadArguments));
        assert_eq!(round_trip("VRFY Bob Smith"), "VRFY Bob Smith\r\n");
        assert_eq!(parse("VRFY"), Err(CommandError::BadArguments));
        assert_eq!(round_trip("HELP mail"), "HELP mail\r\n");
        assert_eq!(round_trip("NOOP hello there"), "NOOP hello there\r\n");
        assert_eq!(parse("NOOP \x01"), Err(CommandError::InvalidCharacters));
        assert_eq!(round_trip("expn staff"), "EXPN staff\r\n");
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext("a+2Bb+3D"), Some("a+b=".to_string()));
        assert_eq!(decode_xtext("a+2"), None);
        assert_eq!(decode_xtext("a+2b"), None);
        assert_eq!(encode_xtext("a+b= c"), "a+2Bb+3D+20c");
    }
}
