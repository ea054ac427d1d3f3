//! What the application sees ([`Event`]) and hands in ([`Maildrop`]).

use std::fmt;
use std::str::FromStr;

use postamt_wire::Secret;
use postamt_wire::sasl::{Credentials, Mechanism};

use crate::apop::ApopTimestamp;
use crate::command::MessageNumber;
use crate::error::{InvalidUniqueId, UsageError};
#[cfg(doc)]
use crate::{ServerSession, apop_digest, verify_apop};

/// A message's unique id as UIDL lists it: 1 to 70 characters in
/// 0x21..=0x7E (RFC 1939 §7). Checked once when built.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UniqueId(Box<str>);

impl UniqueId {
    /// The longest unique id RFC 1939 §7 allows.
    pub const MAX_LEN: usize = 70;

    /// Checks `text` and wraps it.
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidUniqueId> {
        let text: String = text.into();
        if text.is_empty()
            || text.len() > Self::MAX_LEN
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(InvalidUniqueId);
        }
        Ok(Self(text.into_boxed_str()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UniqueId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for UniqueId {
    type Err = InvalidUniqueId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for UniqueId {
    type Error = InvalidUniqueId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for UniqueId {
    type Error = InvalidUniqueId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl PartialEq<str> for UniqueId {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for UniqueId {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// The messages of a maildrop as the application lists them at login: each
/// one's size in octets and unique id. Message numbers follow the order of
/// [`Maildrop::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maildrop {
    pub(super) messages: Vec<Listed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    pub(super) size: u64,
    pub(super) uid: UniqueId,
}

impl Maildrop {
    /// An empty maildrop.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next message: its size in octets as RETR will send it,
    /// before stuffing (the stored bytes' size by the rule of
    /// [`postamt_wire::crlf`], which [`postamt_wire::crlf_size`] counts and
    /// `postamt-store` lists), and its unique id. Returns its message
    /// number.
    pub fn push(&mut self, size: u64, unique_id: UniqueId) -> Result<MessageNumber, UsageError> {
        let number =
            MessageNumber::from_index(self.messages.len()).ok_or(UsageError::TooManyMessages)?;
        self.messages.push(Listed {
            size,
            uid: unique_id,
        });
        Ok(number)
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A message marked for deletion, for the application to remove when it
/// commits (RFC 1939 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Its message number in this session.
    pub message: MessageNumber,
    /// Its unique id as listed at login.
    pub unique_id: UniqueId,
}

/// What the application must know or decide, in protocol order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// USER and PASS: check the password. Answer with
    /// [`ServerSession::accept_login`], [`ServerSession::reject_login`] or
    /// [`ServerSession::maildrop_locked`].
    Login {
        /// The user name from USER.
        user: String,
        /// The password from PASS.
        password: Secret<String>,
    },
    /// APOP: compare the digest with [`verify_apop`] (or [`apop_digest`]) over
    /// `timestamp` and the user's secret. Answered like [`Event::Login`].
    Apop {
        /// The user name.
        user: String,
        /// The digest as the client sent it.
        digest: Secret<String>,
        /// The timestamp of this session's greeting.
        timestamp: ApopTimestamp,
    },
    /// AUTH: a SASL exchange ended with these credentials. Answered like
    /// [`Event::Login`].
    Auth {
        /// The mechanism that was used.
        mechanism: Mechanism,
        /// Who the client says it is, its password, and whom it acts for.
        /// An `authzid` other than the user arrives only when
        /// [`ServerConfig::allow_authzid`](crate::ServerConfig::allow_authzid)
        /// is set; the application then decides whether the user may act
        /// for it.
        credentials: Credentials,
    },
    /// RETR or TOP: stream the message with [`ServerSession::message_chunk`]
    /// while [`ServerSession::wants_message_bytes`] says so, then call
    /// [`ServerSession::message_end`]; or [`ServerSession::message_unavailable`].
    Retrieve {
        /// The message.
        message: MessageNumber,
        /// Its unique id as listed at login.
        unique_id: UniqueId,
        /// Its size as listed at login.
        size: u64,
        /// For TOP, how many body lines to send after the header. The session
        /// stops taking bytes once it has them.
        top: Option<u32>,
    },
    /// QUIT in the TRANSACTION state: remove these messages (possibly none),
    /// release the maildrop, then call [`ServerSession::commit_done`] or
    /// [`ServerSession::commit_failed`].
    Commit {
        /// The messages marked as deleted, in message-number order.
        deletions: Vec<Deletion>,
    },
    /// STLS was accepted: write out what `poll_transmit` gives, run the TLS
    /// handshake, then call [`Session::tls_established`](crate::Session::tls_established). Bytes received
    /// before that are discarded (RFC 2595 §4).
    StartTls,
}

/// What [`ServerSession::message_chunk`] says about the rest of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum MessageFlow {
    /// Keep going while [`ServerSession::wants_message_bytes`] is true, and
    /// end with [`ServerSession::message_end`].
    Continue,
    /// TOP has all the lines it asked for and the response is complete: stop
    /// reading the message and do not call `message_end`.
    Finished,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_are_checked_when_built() {
        assert_eq!(UniqueId::new("ok").unwrap(), "ok");
        assert_eq!("".parse::<UniqueId>(), Err(InvalidUniqueId));
        assert_eq!(UniqueId::try_from("a b"), Err(InvalidUniqueId));
        assert_eq!(UniqueId::new("x".repeat(71)), Err(InvalidUniqueId));
        assert!(UniqueId::new("x".repeat(70)).is_ok());
        assert_eq!(UniqueId::new("\u{e9}"), Err(InvalidUniqueId));
        let mut m = Maildrop::new();
        assert_eq!(
            m.push(1, UniqueId::new("ok").unwrap()),
            Ok(MessageNumber::new(1).unwrap())
        );
        assert_eq!(m.len(), 1);
    }
}
