//! What comes out of the client session: events and errors.

use std::fmt;

use bytes::Bytes;

use crate::command::MessageNumber;
use crate::error::ResponseError;
use crate::response::Response;

use super::Capabilities;
#[cfg(doc)]
use super::ClientConfig;

/// What the application must know, in the order of the commands.
///
/// Each command the caller queues yields exactly one outcome: its typed
/// result, or [`ClientEvent::Error`] with the server's `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server greeted and answered CAPA (or refused it): login and STLS
    /// may start. Comes again after STLS, with what the server offers over
    /// TLS.
    Ready(Capabilities),
    /// The server said `+OK` to STLS: run the TLS handshake, then call
    /// [`tls_established`](postamt_wire::Session::tls_established). Until
    /// then no command goes out, and whatever the server sends after its
    /// `+OK` in plaintext is discarded (RFC 2595 §4).
    StartTls,
    /// The login (USER/PASS, APOP or AUTH) succeeded: the maildrop is open.
    LoggedIn,
    /// STAT's answer.
    Stat {
        /// Messages in the maildrop, not counting those marked as deleted.
        count: u32,
        /// Their total size in octets.
        octets: u64,
    },
    /// LIST's answer: message numbers and sizes in octets (one entry for
    /// `LIST n`).
    List(Vec<(MessageNumber, u64)>),
    /// UIDL's answer: message numbers and unique ids (one entry for
    /// `UIDL n`).
    Uidl(Vec<(MessageNumber, String)>),
    /// RETR or TOP was accepted: the message's text follows as
    /// [`ClientEvent::MessageData`], then [`ClientEvent::MessageEnd`].
    MessageStart(MessageNumber),
    /// A piece of the message, unstuffed, exactly as the server holds it
    /// (CRLF line ends). Pieces split anywhere, as the bytes arrived.
    MessageData(Bytes),
    /// The message is complete. Without it (the connection ended first),
    /// the pieces so far are not the whole message.
    MessageEnd,
    /// DELE succeeded: the message is marked, and goes at QUIT.
    Deleted(MessageNumber),
    /// RSET succeeded: no message is marked any more.
    Reset,
    /// NOOP succeeded.
    Noop,
    /// The server said `-ERR` (its response code, if any, is in
    /// [`Response::code`]: `[IN-USE]`, `[AUTH]`, `[SYS/TEMP]`, ...). A login
    /// that fails leaves the session ready for another; a refused STLS
    /// leaves it in plaintext, ready. After `-ERR` to QUIT the deletions were
    /// not committed; [`ClientEvent::Closed`] follows.
    Error {
        /// What the server refused.
        command: Request,
        /// The server's response.
        response: Response,
    },
    /// The session ended: after QUIT's response, or for the reason given.
    Closed(Option<ClientError>),
}

/// Why a session ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server's greeting was `-ERR`.
    #[error("server refused: {0}")]
    Refused(Response),
    /// The server sent a line that is not a POP3 response.
    #[error("malformed response: {0}")]
    Malformed(ResponseError),
    /// A `+OK` line or a listing line does not say what the command asks for
    /// (STAT without two numbers, a LIST line without a size, ...).
    #[error("unexpected response to {0}")]
    Unexpected(Request),
    /// The server sent a response nobody asked for.
    #[error("unsolicited response: {0}")]
    Unsolicited(Response),
    /// A status line was longer than [`ClientConfig::max_response_line`].
    #[error("response line too long")]
    LineTooLong,
    /// A listing was longer than [`ClientConfig::max_listing`].
    #[error("listing too long")]
    ListingTooLong,
    /// No response within [`ClientTimeouts::response`](super::ClientTimeouts::response).
    #[error("timeout waiting for the server")]
    Timeout,
    /// The server closed the connection before QUIT's response.
    #[error("connection closed by the server")]
    ConnectionClosed,
}

/// The caller asked for something the session cannot do now; nothing was
/// sent. Never caused by the server: after the session ended, requests
/// return `Ok(())` instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientUsageError {
    /// The session is not ready for this now: before
    /// [`ClientEvent::Ready`], during a login or STLS (a TLS handshake due
    /// included), or (for login and STLS) while other commands are
    /// outstanding.
    #[error("the session is not ready for that now")]
    Busy,
    /// A maildrop command before [`ClientEvent::LoggedIn`].
    #[error("not logged in")]
    NotLoggedIn,
    /// A login command or STLS after [`ClientEvent::LoggedIn`].
    #[error("already logged in")]
    AlreadyLoggedIn,
    /// The server does not offer this (STLS, USER, a SASL mechanism), or TLS
    /// is already active.
    #[error("the server does not offer this")]
    NotOffered,
    /// APOP needs a timestamp in the greeting, and there was none.
    #[error("the greeting carries no APOP timestamp")]
    NoApopTimestamp,
    /// An argument would break the command line: a user name that is empty
    /// or has a space or control character, a password that is empty or has
    /// CR, LF or NUL, a line longer than 255 octets (RFC 2449 §4); for AUTH
    /// PLAIN an empty name or password or a NUL (RFC 4616 §2).
    #[error("invalid argument")]
    InvalidArgument,
    /// The mechanism is not one this client runs (PLAIN only).
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    /// [`tls_established`](postamt_wire::Session::tls_established) without a
    /// [`ClientEvent::StartTls`] waiting for it.
    #[error("no TLS handshake is due")]
    NoHandshakeDue,
    /// QUIT was asked for already: nothing more can be asked.
    #[error("QUIT was already asked for")]
    Quitting,
}

/// What a server's response answered: its greeting, or one of the client's
/// commands. Displayed as the command's keyword (`PASS`, `RETR`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// The greeting, which answers the connection.
    Greeting,
    /// `CAPA` (RFC 2449).
    Capa,
    /// `STLS` (RFC 2595).
    Stls,
    /// `USER`.
    User,
    /// `PASS`.
    Pass,
    /// `APOP`.
    Apop,
    /// `AUTH` (RFC 5034), including its exchange.
    Auth,
    /// `STAT`.
    Stat,
    /// `LIST`.
    List,
    /// `UIDL`.
    Uidl,
    /// `RETR`.
    Retr,
    /// `TOP`.
    Top,
    /// `DELE`.
    Dele,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
}

impl Request {
    /// The command's keyword, or `greeting`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Capa => "CAPA",
            Self::Stls => "STLS",
            Self::User => "USER",
            Self::Pass => "PASS",
            Self::Apop => "APOP",
            Self::Auth => "AUTH",
            Self::Stat => "STAT",
            Self::List => "LIST",
            Self::Uidl => "UIDL",
            Self::Retr => "RETR",
            Self::Top => "TOP",
            Self::Dele => "DELE",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
