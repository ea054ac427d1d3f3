//! Names that are checked once, when built: mailbox names and POP3 unique ids.

use std::fmt;
use std::str::FromStr;

use crate::StoreError;

/// The longest mailbox name accepted, in bytes: a file name on common file
/// systems (`NAME_MAX`) is at most 255 bytes.
pub const MAX_MAILBOX_NAME_LEN: usize = 255;

/// The name of a local mailbox, safe to use as one path component.
///
/// Built only through [`MailboxName::new`], which refuses anything that could
/// escape the store's root or hide from a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxName(String);

impl MailboxName {
    /// Checks `name` and wraps it.
    ///
    /// Refused, with [`StoreError::InvalidMailboxName`]: the empty name, names
    /// longer than [`MAX_MAILBOX_NAME_LEN`] bytes, a leading dot, `..`
    /// anywhere, `/`, `\`, NUL and any other control character.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        match invalid_reason(&name) {
            None => Ok(Self(name)),
            Some(reason) => Err(StoreError::InvalidMailboxName { name, reason }),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_MAILBOX_NAME_LEN {
        Some("longer than 255 bytes")
    } else if name.starts_with('.') {
        Some("starts with a dot")
    } else if name.contains("..") {
        Some("contains \"..\"")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MailboxName {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for MailboxName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The longest unique id POP3 allows (RFC 1939, UIDL).
pub const MAX_UID_LEN: usize = 70;

/// A message's unique id, valid as a POP3 UIDL: 1 to 70 characters from
/// `0x21` to `0x7E`, the same for the same message in every session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(String);

impl Uid {
    /// Wraps `uid` if it is a valid POP3 unique id, else `None`.
    pub fn new(uid: &str) -> Option<Self> {
        let valid = (1..=MAX_UID_LEN).contains(&uid.len())
            && uid.bytes().all(|b| (0x21..=0x7e).contains(&b));
        valid.then(|| Self(uid.to_owned()))
    }

    /// A unique id derived from a stored name: the name itself when it is
    /// valid, otherwise `h` followed by a 128-bit hash of it in hex (stable
    /// across runs and releases, unlike `std`'s hasher).
    pub fn from_name(name: &str) -> Self {
        Self::new(name).unwrap_or_else(|| Self::hashed(name))
    }

    /// Always the hashed form of `name`, used when names collide.
    pub(crate) fn hashed(name: &str) -> Self {
        Self(format!(
            "h{:016x}{:016x}",
            fnv1a(name.as_bytes(), FNV_OFFSET),
            fnv1a(name.as_bytes(), FNV_OFFSET_2)
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
// A second, independent starting point so the two halves differ.
const FNV_OFFSET_2: u64 = 0x6c62_272e_07bb_0142;

fn fnv1a(bytes: &[u8], offset: u64) -> u64 {
    bytes.iter().fold(offset, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["anna", "anna@kolleg.de", "bob.smith", "a-b_c+d", "ä"] {
            assert_eq!(MailboxName::new(name).unwrap().as_str(), name);
        }
        assert!(MailboxName::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn refuses_names_that_are_not_one_safe_path_component() {
        let cases = [
            ("", "empty"),
            (".", "starts with a dot"),
            ("..", "starts with a dot"),
            (".hidden", "starts with a dot"),
            ("a..b", "contains \"..\""),
            ("a/b", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("a\0b", "contains NUL"),
            ("a\nb", "contains a control character"),
            ("a\u{7f}", "contains a control character"),
            ("a\u{85}", "contains a control character"),
        ];
        for (name, expected) in cases {
            match MailboxName::new(name) {
                Err(StoreError::InvalidMailboxName { name: got, reason }) => {
                    assert_eq!(got, name);
                    assert_eq!(reason, expected, "{name:?}");
                }
                other => panic!("{name:?} gave {other:?}"),
            }
        }
        assert!(MailboxName::new("x".repeat(256)).is_err());
    }

    #[test]
    fn uid_keeps_valid_names_and_hashes_the_rest() {
        assert_eq!(
            Uid::from_name("1700000000.M1P2Q3.host").as_str(),
            "1700000000.M1P2Q3.host"
        );
        let long = "x".repeat(71);
        for bad in ["", "with space", "tab\t", "ümlaut", long.as_str()] {
            let uid = Uid::from_name(bad);
            assert!(
                Uid::new(uid.as_str()).is_some(),
                "{uid} derived from {bad:?}"
            );
            assert_eq!(uid.as_str().len(), 33);
            assert_eq!(uid, Uid::from_name(bad), "stable");
        }
        assert_ne!(Uid::from_name("a b"), Uid::from_name("a c"));
        assert!(Uid::new(&"x".repeat(70)).is_some());
        assert!(Uid::new("\u{7f}").is_none());
    }
}
