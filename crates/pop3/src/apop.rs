//! APOP (RFC 1939 §7): the greeting's timestamp and the digest over it,
//! shared by the server (which checks digests) and the client (which
//! computes them).

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use crate::error::InvalidApopTimestamp;

/// The lowercase hex MD5 digest of `timestamp` followed by `secret`, as APOP
/// computes it (RFC 1939 §7). The example there:
///
/// ```
/// # use postamt_pop3::apop_digest;
/// assert_eq!(
///     apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"),
///     "c4c9334bac560ecc979e58001b3e22fb"
/// );
/// ```
pub fn apop_digest(timestamp: impl AsRef<str>, secret: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_ref().as_bytes());
    md5.update(secret.as_bytes());
    let digest = md5.finalize();
    let mut hex = String::with_capacity(32);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    hex
}

/// Whether `digest` (as the client sent it, either case) is the APOP digest of
/// `timestamp` and `secret`. The comparison takes the same time wherever the
/// digests differ.
pub fn verify_apop(timestamp: impl AsRef<str>, secret: &str, digest: &str) -> bool {
    let expected = apop_digest(timestamp, secret);
    if digest.len() != expected.len() {
        return false;
    }
    expected
        .bytes()
        .zip(digest.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
        == 0
}

/// Builds an APOP greeting timestamp `<pid.clock@host>` (RFC 1939 §7) from
/// values the caller chooses: the session reads no clock. Use a value that
/// never repeats, such as a process id and a counter or the time in
/// nanoseconds. Characters of `host` a timestamp cannot hold (controls,
/// spaces, `<`, `>`, non-ASCII) become `_`, and a long host is cut so the
/// timestamp stays within [`ApopTimestamp::MAX_LEN`].
pub fn apop_timestamp(pid: u32, clock: u128, host: &str) -> ApopTimestamp {
    let mut text = format!("<{pid}.{clock}@");
    let room = ApopTimestamp::MAX_LEN - 1 - text.len();
    text.extend(host.chars().take(room).map(|c| {
        if c.is_ascii_graphic() && c != '<' && c != '>' {
            c
        } else {
            '_'
        }
    }));
    text.push('>');
    ApopTimestamp(text.into_boxed_str())
}

/// The timestamp of an APOP greeting (RFC 1939 §7): `<`, printable ASCII
/// without `<` or `>`, `>`, at most [`ApopTimestamp::MAX_LEN`] characters.
/// Checked once when built, so a greeting never carries a malformed one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApopTimestamp(Box<str>);

impl ApopTimestamp {
    /// The longest timestamp accepted: 200 characters, which leaves the
    /// greeting well inside the 512 octets of a response line (RFC 2449 §4).
    pub const MAX_LEN: usize = 200;

    /// Checks `text` and wraps it.
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidApopTimestamp> {
        let text: String = text.into();
        let valid = text.len() >= 3
            && text.len() <= Self::MAX_LEN
            && text.starts_with('<')
            && text.ends_with('>')
            && text.bytes().all(|b| b.is_ascii_graphic())
            && !text[1..text.len() - 1].contains(['<', '>']);
        if valid {
            Ok(Self(text.into_boxed_str()))
        } else {
            Err(InvalidApopTimestamp)
        }
    }

    /// The timestamp, brackets included, as digests are computed over it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApopTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ApopTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ApopTimestamp {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ApopTimestamp {
    type Err = InvalidApopTimestamp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ApopTimestamp {
    type Error = InvalidApopTimestamp;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for ApopTimestamp {
    type Error = InvalidApopTimestamp;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl PartialEq<str> for ApopTimestamp {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for ApopTimestamp {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apop_rfc_example() {
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        assert_eq!(
            apop_digest(ts, "tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
        assert!(verify_apop(
            ts,
            "tanstaaf",
            "C4C9334BAC560ECC979E58001B3E22FB"
        ));
        assert!(!verify_apop(
            ts,
            "tanstaaf",
            "c4c9334bac560ecc979e58001b3e22fa"
        ));
        assert!(!verify_apop(
            ts,
            "other",
            "c4c9334bac560ecc979e58001b3e22fb"
        ));
        assert!(!verify_apop(ts, "tanstaaf", "c4c9"));
        assert_eq!(apop_timestamp(1896, 697170952, "dbc.mtview.ca.us"), ts);
    }

    #[test]
    fn apop_timestamps_are_checked_when_built() {
        assert!(ApopTimestamp::new("<1.2@h>").is_ok());
        for bad in ["no brackets", "<a b>", "<>x", "<", "<a<b>", "<\u{e9}>", ""] {
            assert_eq!(
                bad.parse::<ApopTimestamp>(),
                Err(InvalidApopTimestamp),
                "{bad}"
            );
        }
        assert_eq!(
            apop_timestamp(1, 2, "h\u{f6}st <x>\r\n"),
            "<1.2@h_st__x___>"
        );
        let long = apop_timestamp(u32::MAX, u128::MAX, &"h".repeat(500));
        assert_eq!(long.as_str().len(), ApopTimestamp::MAX_LEN);
        assert!(ApopTimestamp::new(long.as_str()).is_ok());
    }
}
