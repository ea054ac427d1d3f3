//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::error::ReplyError;

/// An enhanced status code such as `5.1.1` (RFC 3463): class, subject, detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedCode {
    /// Builds a code; `class` is 2, 4 or 5 and the other parts are at most 999.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Self {
            class,
            subject,
            detail,
        })
    }

    /// Builds a code the caller knows is valid (used for the constants below).
    const fn known(class: u8, subject: u16, detail: u16) -> Self {
        match Self::new(class, subject, detail) {
            Some(c) => c,
            None => panic!("invalid enhanced status code"),
        }
    }

    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub const fn class(self) -> u8 {
        self.class
    }

    /// The subject (second) part.
    pub const fn subject(self) -> u16 {
        self.subject
    }

    /// The detail (third) part.
    pub const fn detail(self) -> u16 {
        self.detail
    }

    /// Writes the code as `c.s.d` without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.push(b'0' + self.class);
        out.push(b'.');
        push_decimal(out, u64::from(self.subject));
        out.push(b'.');
        push_decimal(out, u64::from(self.detail));
    }

    /// Parses `c.s.d` at the start of `text`; returns the code and its length.
    fn parse_prefix(text: &[u8]) -> Option<(Self, usize)> {
        let class = *text.first()?;
        if text.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, n1) = parse_number(&text[2..])?;
        let at = 2 + n1;
        if text.get(at) != Some(&b'.') {
            return None;
        }
        let (detail, n2) = parse_number(&text[at + 1..])?;
        let end = at + 1 + n2;
        let code = Self::new(class.wrapping_sub(b'0'), subject, detail)?;
        Some((code, end))
    }
}

fn parse_number(text: &[u8]) -> Option<(u16, usize)> {
    let digits = text
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u16, |v, b| v * 10 + u16::from(b - b'0'));
    Some((value, digits))
}

/// Appends the decimal digits of `n` without allocating.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = ReplyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Self::parse_prefix(s.as_bytes()) {
            Some((code, len)) if len == s.len() => Ok(code),
            _ => Err(ReplyError::BadEnhancedCode),
        }
    }
}

/// The enhanced codes this crate uses, named for what they mean (RFC 3463 §3).
#[allow(missing_docs)]
impl EnhancedCode {
    pub const OK: Self = Self::known(2, 0, 0);
    pub const SENDER_OK: Self = Self::known(2, 1, 0);
    pub const RECIPIENT_OK: Self = Self::known(2, 1, 5);
    pub const CANNOT_VERIFY: Self = Self::known(2, 5, 0);
    pub const AUTH_OK: Self = Self::known(2, 7, 0);
    pub const OTHER_TEMPORARY: Self = Self::known(4, 0, 0);
    pub const MAILBOX_FULL: Self = Self::known(4, 2, 2);
    pub const SYSTEM_TEMPORARY: Self = Self::known(4, 3, 0);
    pub const SYSTEM_STORAGE: Self = Self::known(4, 3, 1);
    pub const TIMEOUT: Self = Self::known(4, 4, 2);
    pub const TOO_MANY_RECIPIENTS: Self = Self::known(4, 5, 3);
    pub const TEMPORARY_SECURITY: Self = Self::known(4, 7, 0);
    pub const UNKNOWN_USER: Self = Self::known(5, 1, 1);
    pub const BAD_RECIPIENT_SYNTAX: Self = Self::known(5, 1, 3);
    pub const BAD_SENDER_SYNTAX: Self = Self::known(5, 1, 7);
    pub const MESSAGE_TOO_BIG: Self = Self::known(5, 3, 4);
    pub const INVALID_COMMAND: Self = Self::known(5, 5, 1);
    pub const SYNTAX_ERROR: Self = Self::known(5, 5, 2);
    pub const INVALID_ARGUMENTS: Self = Self::known(5, 5, 4);
    pub const AUTH_LINE_TOO_LONG: Self = Self::known(5, 5, 6);
    pub const MEDIA_ERROR: Self = Self::known(5, 6, 0);
    pub const NON_ASCII_ADDRESS: Self = Self::known(5, 6, 7);
    pub const SECURITY: Self = Self::known(5, 7, 0);
    pub const RELAY_DENIED: Self = Self::known(5, 7, 1);
    pub const BAD_CREDENTIALS: Self = Self::known(5, 7, 8);
    pub const ENCRYPTION_REQUIRED: Self = Self::known(5, 7, 11);
}

/// A reply: a three-digit code, an optional enhanced status code and one or
/// more lines of text.
///
/// The text is one `Cow<'static, str>`, its lines joined by `\n` (a reply
/// line can hold neither CR nor LF), so a constant reply costs no allocation
/// and a parsed one costs one, however many lines it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A one-line reply.
    ///
    /// # Panics
    /// If `code` is not within 200..=599, or the text holds CR or LF: reply
    /// codes and texts are chosen by the program, never by the peer, so a
    /// wrong one is a bug to find at once (a line break would let a text
    /// forge further replies).
    pub fn new(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        let text = text.into();
        assert!(
            (200..=599).contains(&code),
            "reply code {code} out of range"
        );
        assert!(
            !text.contains(['\r', '\n']),
            "reply text must not contain CR or LF"
        );
        Self {
            code,
            enhanced,
            text,
        }
    }

    /// A reply of several lines; an empty list renders as one empty line.
    ///
    /// # Panics
    /// As [`Reply::new`].
    pub fn multiline(
        code: u16,
        enhanced: Option<EnhancedCode>,
        lines: Vec<Cow<'static, str>>,
    ) -> Self {
        assert!(
            lines.iter().all(|l| !l.contains(['\r', '\n'])),
            "reply text must not contain CR or LF"
        );
        assert!(
            (200..=599).contains(&code),
            "reply code {code} out of range"
        );
        let text = match <[Cow<'static, str>; 1]>::try_from(lines) {
            Ok([one]) => one,
            Err(lines) => Cow::Owned(lines.join("\n")),
        };
        Self {
            code,
            enhanced,
            text,
        }
    }

    /// `535 5.7.8`: the answer to wrong credentials (RFC 4954 §6).
    pub fn auth_failed() -> Self {
        Self::new(
            535,
            Some(EnhancedCode::BAD_CREDENTIALS),
            "Authentication credentials invalid",
        )
    }

    /// `454 4.7.0`: the credentials could not be checked now (the user
    /// directory is unavailable); the client may try again later (RFC 4954
    /// §6, "Temporary authentication failure").
    pub fn auth_unavailable() -> Self {
        Self::new(
            454,
            Some(EnhancedCode::TEMPORARY_SECURITY),
            "Temporary authentication failure",
        )
    }

    /// `550 5.1.1`: no such local mailbox.
    pub fn unknown_user() -> Self {
        Self::new(550, Some(EnhancedCode::UNKNOWN_USER), "No such user here")
    }

    /// `550 5.7.1`: the server does not relay to that domain.
    pub fn relay_denied() -> Self {
        Self::new(550, Some(EnhancedCode::RELAY_DENIED), "Relaying denied")
    }

    /// `452 4.2.2`: the recipient's mailbox has no room (RFC 3463 X.2.2).
    /// Temporary: the client keeps the message and tries again later.
    pub fn mailbox_full() -> Self {
        Self::new(452, Some(EnhancedCode::MAILBOX_FULL), "Mailbox full")
    }

    /// `452 4.3.1`: the server as a whole has no room to store the message
    /// (RFC 5321 §4.2.2, RFC 3463 X.3.1).
    pub fn storage_full() -> Self {
        Self::new(
            452,
            Some(EnhancedCode::SYSTEM_STORAGE),
            "Insufficient system storage",
        )
    }

    /// `451 4.3.0`: a local failure (the store could not take the message).
    pub fn local_error() -> Self {
        Self::new(
            451,
            Some(EnhancedCode::SYSTEM_TEMPORARY),
            "Local error in processing; try again later",
        )
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines, without code or enhanced code.
    pub fn lines(&self) -> std::str::Split<'_, char> {
        self.text.split('\n')
    }

    /// All the text, lines joined by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 2yz: the command was accepted.
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2
    }

    /// 3yz: the server waits for more (354 after DATA, 334 in AUTH).
    pub fn is_intermediate(&self) -> bool {
        self.code / 100 == 3
    }

    /// 4yz: failed for now; the client may try again later.
    pub fn is_transient(&self) -> bool {
        self.code / 100 == 4
    }

    /// 5yz: failed; the client must not repeat the same command.
    pub fn is_permanent(&self) -> bool {
        self.code / 100 == 5
    }

    /// Writes the reply in wire form, with the enhanced code when it has one.
    pub fn render(&self, out: &mut Vec<u8>) {
        self.render_with(out, true);
    }

    /// Writes the reply, with its enhanced code only if `enhanced` is true
    /// (a server sends them only to clients that said EHLO, RFC 2034 §3).
    pub fn render_with(&self, out: &mut Vec<u8>, enhanced: bool) {
        let enhanced = if enhanced { self.enhanced } else { None };
        let mut lines = self.lines().peekable();
        while let Some(line) = lines.next() {
            write_line(out, self.code, lines.peek().is_none(), enhanced, line);
        }
    }

    /// Parses one complete reply from the front of `input`.
    ///
    /// Returns `Ok(None)` when the reply is not complete yet, and the reply with
    /// the number of bytes it took otherwise. An enhanced code is recognised
    /// when the first line starts with one whose class matches the reply code;
    /// it is then removed from every line that repeats it.
    pub fn parse(input: &[u8]) -> Result<Option<(Self, usize)>, ReplyError> {
        let mut pos = 0;
        let mut code = None;
        let mut enhanced: Option<(EnhancedCode, usize)> = None;
        let mut text = String::new();
        loop {
            let rest = &input[pos..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                return Ok(None);
            };
            if lf == 0 || rest[lf - 1] != b'\r' {
                return Err(ReplyError::BareLineEnding);
            }
            let line = &rest[..lf - 1];
            pos += lf + 1;
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError::BadCode);
            }
            let this_code = line[..3]
                .iter()
                .fold(0u16, |v, b| v * 10 + u16::from(b - b'0'));
            if !(200..=599).contains(&this_code) {
                return Err(ReplyError::BadCode);
            }
            let first = code.is_none();
            match code {
                None => code = Some(this_code),
                Some(c) if c != this_code => return Err(ReplyError::MixedCodes),
                Some(_) => {}
            }
            let (last, line_text) = match line.get(3) {
                None => (true, &line[3..]),
                Some(b' ') => (true, &line[4..]),
                Some(b'-') => (false, &line[4..]),
                Some(_) => return Err(ReplyError::BadSeparator),
            };
            let mut line_text = line_text;
            if first && let Some((e, len)) = EnhancedCode::parse_prefix(line_text) {
                let ends = line_text.len() == len || line_text[len] == b' ';
                if ends && u16::from(e.class) == this_code / 100 {
                    enhanced = Some((e, len));
                }
            }
            if let Some((e, len)) = enhanced {
                // Strip the code from every line that repeats it.
                if line_text.len() >= len
                    && (line_text.len() == len || line_text[len] == b' ')
                    && EnhancedCode::parse_prefix(&line_text[..len]).map(|p| p.0) == Some(e)
                {
                    line_text = &line_text[len..];
                    line_text = line_text.strip_prefix(b" ").unwrap_or(line_text);
                }
            }
            let line_text = std::str::from_utf8(line_text).map_err(|_| ReplyError::NotUtf8)?;
            if !first {
                text.push('\n');
            } else {
                // One allocation for every line of a typical reply.
                text.reserve(input.len().min(4096));
            }
            text.push_str(line_text);
            if last {
                let reply = Self {
                    code: this_code,
                    enhanced: enhanced.map(|e| e.0),
                    text: Cow::Owned(text),
                };
                return Ok(Some((reply, pos)));
            }
        }
    }
}

impl fmt::Display for Reply {
    /// The reply as one line of text, for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        for line in self.lines() {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

/// Writes one reply line; used for replies that are never built as values.
pub(crate) fn write_line(
    out: &mut Vec<u8>,
    code: u16,
    last: bool,
    enhanced: Option<EnhancedCode>,
    text: &str,
) {
    push_decimal(out, u64::from(code));
    out.push(if last { b' ' } else { b'-' });
    if let Some(e) = enhanced {
        e.write_to(out);
        if !text.is_empty() {
            out.push(b' ');
        }
    }
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Reply) -> String {
        let mut out = Vec::new();
        r.render(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_single_and_multi_line() {
        let r = Reply::new(550, Some(EnhancedCode::UNKNOWN_USER), "No such user here");
        assert_eq!(render(&r), "550 5.1.1 No such user here\r\n");
        let r = Reply::multiline(
            250,
            None,
            vec!["mx.example".into(), "PIPELINING".into(), "SIZE 100".into()],
        );
        assert_eq!(
            render(&r),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
        let r = Reply::new(354, None, "");
        assert_eq!(render(&r), "354 \r\n");
        let mut out = Vec::new();
        Reply::new(250, Some(EnhancedCode::OK), "OK").render_with(&mut out, false);
        assert_eq!(out, b"250 OK\r\n");
    }

    #[test]
    fn parses_multiline_with_enhanced_codes() {
        let input = b"550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\nNEXT";
        let (r, used) = Reply::parse(input).unwrap().unwrap();
        assert_eq!(used, input.len() - 4);
        assert_eq!(r.code(), 550);
        assert_eq!(r.enhanced(), Some(EnhancedCode::UNKNOWN_USER));
        assert_eq!(r.lines().collect::<Vec<_>>(), ["first", "second", "third"]);
    }

    #[test]
    fn parse_incomplete_and_errors() {
        assert_eq!(Reply::parse(b"250-a\r\n250 b"), Ok(None));
        assert_eq!(Reply::parse(b""), Ok(None));
        assert_eq!(Reply::parse(b"250 ok\n"), Err(ReplyError::BareLineEnding));
        assert_eq!(Reply::parse(b"25x ok\r\n"), Err(ReplyError::BadCode));
        assert_eq!(
            Reply::parse(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::MixedCodes)
        );
        assert_eq!(Reply::parse(b"250_a\r\n"), Err(ReplyError::BadSeparator));
        assert_eq!(Reply::parse(b"600 a\r\n"), Err(ReplyError::BadCode));
    }

    #[test]
    fn enhanced_code_class_must_match() {
        let (r, _) = Reply::parse(b"250 5.1.1 odd\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced(), None);
        assert_eq!(r.lines().collect::<Vec<_>>(), ["5.1.1 odd"]);
        let (r, _) = Reply::parse(b"220 2.0.0\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced(), Some(EnhancedCode::OK));
        assert_eq!(r.lines().collect::<Vec<_>>(), [""]);
        assert_eq!("4.4.2".parse(), Ok(EnhancedCode::TIMEOUT));
        assert!("4.4".parse::<EnhancedCode>().is_err());
        assert!("3.0.0".parse::<EnhancedCode>().is_err());
        assert!("2.1000.0".parse::<EnhancedCode>().is_err());
    }
}
