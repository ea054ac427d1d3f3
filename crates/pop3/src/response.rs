//! Server responses: `+OK` and `-ERR` status lines with optional RFC 2449
//! response codes, `+ ` SASL continuations, and multi-line responses with their
//! byte-stuffing codec.
//!
//! A multi-line response is a `+OK` line followed by dot-stuffed text and a line
//! holding only `.` (RFC 1939 §3). The stuffing itself is written once, in
//! [`postamt_wire`]: [`MultilineEncoder`] and [`MultilineDecoder`] are its
//! encoder and decoder under the names a POP3 user looks for.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use memchr::memchr;
use postamt_wire::{BareLineEndings, Decoded, DotDecoder};

use crate::error::ResponseError;

/// The streaming stuffing encoder for multi-line responses (any bytes in,
/// stuffed and terminated text out). See [`postamt_wire::DotEncoder`].
pub use postamt_wire::DotEncoder as MultilineEncoder;

/// Longest response line, CRLF included: 512 octets (RFC 2449 §4).
pub const MAX_RESPONSE_LINE: usize = 512;

/// The status indicator that opens a response line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// `+OK`: the command succeeded.
    Ok,
    /// `-ERR`: the command failed.
    Err,
    /// `+ `: a SASL continuation carrying a base64 challenge (RFC 5034 §4).
    Continuation,
}

/// An extended response code (RFC 2449 §8), sent in brackets after the status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResponseCode {
    /// `[IN-USE]`: the maildrop is locked by another session (RFC 2449 §8.1.1).
    InUse,
    /// `[LOGIN-DELAY]`: logging in again this soon is refused (RFC 2449 §8.1.2).
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary system problem (RFC 3206 §4).
    SysTemp,
    /// `[SYS/PERM]`: a permanent system problem (RFC 3206 §4).
    SysPerm,
    /// `[AUTH]`: the credentials were refused (RFC 3206 §5).
    Auth,
    /// `[UTF8]`: the command needs UTF-8 mode (RFC 6856 §2).
    Utf8,
    /// Any other code, as the levels joined by `/` (without the brackets).
    Other(String),
}

impl ResponseCode {
    /// Builds a code from its text (without brackets): one or more levels of
    /// printable ASCII other than `/` and `]`, joined by `/` (RFC 2449 §8).
    /// Known codes are recognised whatever their case.
    pub fn new(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.split('/').all(|level| {
                !level.is_empty()
                    && level
                        .bytes()
                        .all(|b| matches!(b, 0x21..=0x2E | 0x30..=0x5C | 0x5E..=0x7E))
            });
        if !valid {
            return None;
        }
        Some(Self::known(text).unwrap_or_else(|| Self::Other(text.to_owned())))
    }

    fn known(text: &str) -> Option<Self> {
        const KNOWN: [(&str, ResponseCode); 6] = [
            ("IN-USE", ResponseCode::InUse),
            ("LOGIN-DELAY", ResponseCode::LoginDelay),
            ("SYS/TEMP", ResponseCode::SysTemp),
            ("SYS/PERM", ResponseCode::SysPerm),
            ("AUTH", ResponseCode::Auth),
            ("UTF8", ResponseCode::Utf8),
        ];
        KNOWN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, code)| code.clone())
    }

    /// The code's text, without brackets.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InUse => "IN-USE",
            Self::LoginDelay => "LOGIN-DELAY",
            Self::SysTemp => "SYS/TEMP",
            Self::SysPerm => "SYS/PERM",
            Self::Auth => "AUTH",
            Self::Utf8 => "UTF8",
            Self::Other(text) => text,
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.as_str())
    }
}

/// One response line: status, optional response code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: Status,
    code: Option<ResponseCode>,
    text: Cow<'static, str>,
}

impl Response {
    /// A `+OK` response.
    pub fn ok(text: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::Ok, None, text)
    }

    /// A `-ERR` response.
    pub fn err(text: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::Err, None, text)
    }

    /// A `-ERR` response with a response code.
    pub fn err_with(code: ResponseCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::Err, Some(code), text)
    }

    /// A `+ ` SASL continuation carrying a base64 challenge.
    pub fn continuation(challenge: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Status::Continuation, None, challenge)
    }

    /// Any response. CR and LF in `text` are replaced by spaces so the line
    /// stays one line; a continuation carries no code.
    pub fn new(
        status: Status,
        code: Option<ResponseCode>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        let mut text = text.into();
        if text.contains(['\r', '\n']) {
            text = Cow::Owned(text.replace(['\r', '\n'], " "));
        }
        let code = if status == Status::Continuation {
            None
        } else {
            code
        };
        Self { status, code, text }
    }

    /// The status indicator.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the status is `+OK`.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// The response code, if any.
    pub fn code(&self) -> Option<&ResponseCode> {
        self.code.as_ref()
    }

    /// The text after the status and code.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The APOP timestamp a greeting carries (`<...>`, RFC 1939 §7), if any:
    /// what a client hands to [`apop_digest`](crate::apop_digest).
    pub fn apop_timestamp(&self) -> Option<&str> {
        if self.status != Status::Ok {
            return None;
        }
        let start = self.text.find('<')?;
        let end = start + self.text[start..].find('>')?;
        let timestamp = &self.text[start..=end];
        (timestamp.len() > 2 && !timestamp[1..].contains(['<', ' '])).then_some(timestamp)
    }

    /// Appends the line, CRLF included, to `out`.
    pub fn render(&self, out: &mut Vec<u8>) {
        write_line(
            out,
            self.status,
            self.code.as_ref(),
            &[self.text.as_bytes()],
        );
    }

    /// Parses one response line from the front of `input`.
    ///
    /// `Ok(None)` means the line is not complete yet (no CRLF within the first
    /// [`MAX_RESPONSE_LINE`] octets); `Ok(Some((response, consumed)))` gives the
    /// line and its length with CRLF.
    pub fn parse(input: &[u8]) -> Result<Option<(Self, usize)>, ResponseError> {
        let window = &input[..input.len().min(MAX_RESPONSE_LINE)];
        let Some(lf) = memchr(b'\n', window) else {
            if input.len() >= MAX_RESPONSE_LINE {
                return Err(ResponseError::TooLong);
            }
            return Ok(None);
        };
        if lf == 0 || window[lf - 1] != b'\r' {
            return Err(ResponseError::BareLineEnding);
        }
        let line = &window[..lf - 1];
        if memchr(b'\r', line).is_some() {
            return Err(ResponseError::BareLineEnding);
        }
        Self::parse_line(line).map(|r| Some((r, lf + 1)))
    }

    /// Parses a response line given without its CRLF.
    pub fn parse_line(line: &[u8]) -> Result<Self, ResponseError> {
        let line = std::str::from_utf8(line).map_err(|_| ResponseError::NotUtf8)?;
        if line.contains(['\r', '\n']) {
            return Err(ResponseError::BareLineEnding);
        }
        let (status, rest) = if let Some(rest) = strip_prefix_ci(line, "+OK") {
            (Status::Ok, rest)
        } else if let Some(rest) = strip_prefix_ci(line, "-ERR") {
            (Status::Err, rest)
        } else if let Some(rest) = line.strip_prefix("+ ") {
            return Ok(Self::continuation(rest.to_owned()));
        } else if line == "+" {
            return Ok(Self::continuation(""));
        } else {
            return Err(ResponseError::BadStatus);
        };
        let rest = match rest.strip_prefix(' ') {
            Some(rest) => rest,
            None if rest.is_empty() => rest,
            None => return Err(ResponseError::BadStatus),
        };
        let (code, text) = split_code(rest);
        Ok(Self {
            status,
            code,
            text: Cow::Owned(text.to_owned()),
        })
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.render(&mut out);
        out.truncate(out.len() - 2);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

fn strip_prefix_ci<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &line[prefix.len()..])
}

/// Splits `[CODE] text` into its code and text; a bracket that does not open a
/// valid code is text.
fn split_code(rest: &str) -> (Option<ResponseCode>, &str) {
    if let Some(inner) = rest.strip_prefix('[')
        && let Some(end) = inner.find(']')
        && let Some(code) = ResponseCode::new(&inner[..end])
    {
        let after = &inner[end + 1..];
        if after.is_empty() {
            return (Some(code), "");
        }
        if let Some(text) = after.strip_prefix(' ') {
            return (Some(code), text);
        }
    }
    (None, rest)
}

/// Writes a status line from parts, so the session need not build a
/// [`Response`] for every reply.
pub(crate) fn write_line(
    out: &mut Vec<u8>,
    status: Status,
    code: Option<&ResponseCode>,
    parts: &[&[u8]],
) {
    out.extend_from_slice(match status {
        Status::Ok => b"+OK",
        Status::Err => b"-ERR",
        Status::Continuation => b"+",
    });
    if let Some(code) = code {
        out.extend_from_slice(b" [");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b']');
    }
    let empty = parts.iter().all(|p| p.is_empty());
    if !empty || status == Status::Continuation {
        out.push(b' ');
        for part in parts {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole multi-line response: the status line and, after `+OK`, the text
/// without its stuffing and without the terminating `.` line.
///
/// [`MultiLine::parse`] looks at the whole buffer each time it is called, which
/// suits short responses (LIST, UIDL, CAPA). Message text (RETR, TOP) is best
/// decoded as it arrives with a [`MultilineDecoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiLine {
    /// The status line.
    pub head: Response,
    /// The text, each line ending in CRLF; empty after `-ERR`.
    pub body: Bytes,
}

impl MultiLine {
    /// A `+OK` response followed by `body`.
    pub fn new(head: Response, body: impl Into<Bytes>) -> Self {
        Self {
            head,
            body: body.into(),
        }
    }

    /// Appends the status line and, after `+OK`, the stuffed body and the
    /// terminating `.` line. Bare CR or LF in the body are sent as CRLF.
    pub fn render(&self, out: &mut Vec<u8>) {
        self.head.render(out);
        if self.head.is_ok() {
            let mut encoder = MultilineEncoder::new();
            encoder.encode(&self.body, out);
            encoder.finish(out);
        }
    }

    /// The body's lines, without their CRLF.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let body: &[u8] = &self.body;
        let body = body.strip_suffix(b"\r\n").unwrap_or(body);
        let mut rest = (!self.body.is_empty()).then_some(body);
        std::iter::from_fn(move || {
            let current = rest?;
            match memchr::memmem::find(current, b"\r\n") {
                Some(at) => {
                    rest = Some(&current[at + 2..]);
                    Some(&current[..at])
                }
                None => {
                    rest = None;
                    Some(current)
                }
            }
        })
    }

    /// Parses a multi-line response from the front of `input`: `Ok(None)` until
    /// it is complete. A `-ERR` response is one line.
    pub fn parse(input: &[u8]) -> Result<Option<(Self, usize)>, ResponseError> {
        let Some((head, used)) = Response::parse(input)? else {
            return Ok(None);
        };
        if !head.is_ok() {
            return Ok(Some((Self::new(head, Bytes::new()), used)));
        }
        let mut decoder = MultilineDecoder::new();
        let mut body = Vec::new();
        match decoder.decode(&input[used..], &mut body) {
            Decoded::Incomplete => Ok(None),
            Decoded::Complete { consumed } => Ok(Some((Self::new(head, body), used + consumed))),
        }
    }
}

/// Streaming decoder for the text of a multi-line response, for clients.
///
/// Feed it the bytes after the `+OK` line in pieces of any size; it appends the
/// unstuffed text and reports [`Decoded::Complete`] at the `.` line, with how
/// many bytes of the last piece belonged to the response. Bytes are passed on as
/// they are: a bare CR or LF never ends anything and is kept (see
/// [`MultilineDecoder::saw_bare_line_ending`]).
#[derive(Debug, Clone)]
pub struct MultilineDecoder {
    inner: DotDecoder,
}

impl Default for MultilineDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MultilineDecoder {
    /// A decoder at the start of the text (just after the `+OK` line).
    pub fn new() -> Self {
        Self {
            inner: DotDecoder::new(BareLineEndings::Reject, usize::MAX),
        }
    }

    /// Decodes `input`, appending text to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        self.inner.decode(input, out)
    }

    /// Whether the terminating `.` line has been seen.
    pub fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    /// Whether the text held a CR or LF outside a CRLF pair.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.inner.saw_bare_line_ending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Response) -> String {
        let mut out = Vec::new();
        r.render(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_rfc_examples() {
        assert_eq!(render(&Response::ok("2 320")), "+OK 2 320\r\n");
        assert_eq!(render(&Response::ok("")), "+OK\r\n");
        assert_eq!(
            render(&Response::err_with(
                ResponseCode::InUse,
                "Do you have another POP session running?"
            )),
            "-ERR [IN-USE] Do you have another POP session running?\r\n"
        );
        assert_eq!(render(&Response::continuation("")), "+ \r\n");
        assert_eq!(
            render(&Response::err_with(ResponseCode::SysTemp, "")),
            "-ERR [SYS/TEMP]\r\n"
        );
        assert_eq!(render(&Response::ok("a\r\nb")), "+OK a  b\r\n");
    }

    #[test]
    fn parses_lines() {
        let (r, used) = Response::parse(b"-ERR [SYS/PERM] gone\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(used, 22);
        assert_eq!(r.status(), Status::Err);
        assert_eq!(r.code(), Some(&ResponseCode::SysPerm));
        assert_eq!(r.text(), "gone");
        assert_eq!(Response::parse(b"+ebc\r\n"), Err(ResponseError::BadStatus));
        assert_eq!(Response::parse(b"+OK partial"), Ok(None));
        assert_eq!(
            Response::parse(b"+OK bare\n"),
            Err(ResponseError::BareLineEnding)
        );
        assert_eq!(Response::parse(b"OK\r\n"), Err(ResponseError::BadStatus));
        assert_eq!(Response::parse(b"+OKAY\r\n"), Err(ResponseError::BadStatus));
        assert_eq!(Response::parse(&[b'x'; 600]), Err(ResponseError::TooLong));
        let (r, _) = Response::parse(b"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), Status::Continuation);
        assert_eq!(r.text(), "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+");
        // A bracket that is not a code is text.
        let (r, _) = Response::parse(b"+ok [not a code\r\n").unwrap().unwrap();
        assert_eq!((r.code(), r.text()), (None, "[not a code"));
        let (r, _) = Response::parse(b"-ERR [x-custom/Sub]\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.code(), Some(&ResponseCode::Other("x-custom/Sub".into())));
    }

    #[test]
    fn greeting_timestamp() {
        let (greeting, _) =
            Response::parse(b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            greeting.apop_timestamp(),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(Response::ok("ready").apop_timestamp(), None);
        assert_eq!(Response::ok("a <> b").apop_timestamp(), None);
        assert_eq!(Response::ok("a <x y> b").apop_timestamp(), None);
        assert_eq!(Response::err("<1.2@h>").apop_timestamp(), None);
    }

    #[test]
    fn codes() {
        assert_eq!(ResponseCode::new("in-use"), Some(ResponseCode::InUse));
        assert_eq!(ResponseCode::new(""), None);
        assert_eq!(ResponseCode::new("A//B"), None);
        assert_eq!(ResponseCode::new("A]"), None);
        assert_eq!(ResponseCode::new("A B"), None);
        assert_eq!(ResponseCode::SysTemp.to_string(), "[SYS/TEMP]");
    }

    #[test]
    fn multiline_round_trip() {
        let m = MultiLine::new(Response::ok("2 messages"), &b"1 120\r\n.hidden\r\n"[..]);
        let mut out = Vec::new();
        m.render(&mut out);
        assert_eq!(out, b"+OK 2 messages\r\n1 120\r\n..hidden\r\n.\r\n");
        for cut in 0..out.len() {
            assert_eq!(MultiLine::parse(&out[..cut]), Ok(None), "cut {cut}");
        }
        out.extend_from_slice(b"+OK next\r\n");
        let (parsed, used) = MultiLine::parse(&out).unwrap().unwrap();
        assert_eq!(parsed, m);
        assert_eq!(used, out.len() - 10);
        assert_eq!(
            parsed.lines().collect::<Vec<_>>(),
            [&b"1 120"[..], b".hidden"]
        );
        let empty = MultiLine::new(Response::ok(""), Bytes::new());
        assert_eq!(empty.lines().count(), 0);
        let (err, used) = MultiLine::parse(b"-ERR no\r\n").unwrap().unwrap();
        assert_eq!(
            (err.head.status(), err.body.len(), used),
            (Status::Err, 0, 9)
        );
    }
}
