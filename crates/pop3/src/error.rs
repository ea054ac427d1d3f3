//! Errors: the peer's (each knows the response it becomes) and the caller's.

use thiserror::Error;

use crate::response::Response;

/// Why a command line could not be parsed. Each variant knows its `-ERR`
/// response ([`CommandError::response`]), so a server never invents one ad hoc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The keyword is not a POP3 command.
    #[error("unknown command")]
    UnknownCommand,
    /// The line holds bytes that are not allowed in a command (controls,
    /// invalid UTF-8).
    #[error("invalid characters in command")]
    InvalidCharacters,
    /// The command needs an argument that is missing.
    #[error("missing argument")]
    MissingArgument,
    /// The command got more arguments than it takes.
    #[error("too many arguments")]
    TooManyArguments,
    /// An argument is not what the command expects (a malformed APOP digest,
    /// two spaces in a row, a trailing space).
    #[error("invalid argument")]
    InvalidArgument,
    /// An argument is longer than 40 octets (RFC 2449 §4).
    #[error("argument longer than 40 octets")]
    ArgumentTooLong,
    /// The command line is longer than 255 octets with its CRLF (RFC 2449 §4).
    #[error("command line longer than 255 octets")]
    LineTooLong,
    /// A message number is 0; messages are numbered from 1 (RFC 1939 §5).
    #[error("message numbers start at 1")]
    MessageNumberZero,
    /// A number does not fit in 32 bits.
    #[error("number too large")]
    NumberTooLarge,
    /// A message number or line count is not a decimal number.
    #[error("not a number")]
    NotANumber,
}

impl CommandError {
    /// The `-ERR` response a server sends for this error.
    pub fn response(self) -> Response {
        Response::err(self.text())
    }

    /// The text of the `-ERR` response.
    pub fn text(self) -> &'static str {
        match self {
            Self::UnknownCommand => "Unknown command",
            Self::InvalidCharacters => "Invalid characters in command",
            Self::MissingArgument => "Missing argument",
            Self::TooManyArguments => "Too many arguments",
            Self::InvalidArgument => "Invalid argument",
            Self::ArgumentTooLong => "Argument longer than 40 octets",
            Self::LineTooLong => "Command line too long",
            Self::MessageNumberZero => "Message numbers start at 1",
            Self::NumberTooLarge => "Number too large",
            Self::NotANumber => "Not a number",
        }
    }
}

/// Why a server response line could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The line starts with neither `+OK`, `-ERR` nor `+ `.
    #[error("response without +OK, -ERR or + status")]
    BadStatus,
    /// A response code is malformed (RFC 2449 §8 `resp-code`).
    #[error("malformed response code")]
    BadCode,
    /// The line holds a bare CR or LF.
    #[error("response line with a bare CR or LF")]
    BareLineEnding,
    /// The text is not UTF-8.
    #[error("response text is not UTF-8")]
    NotUtf8,
    /// The line is longer than the limit given to the parser.
    #[error("response line too long")]
    TooLong,
}

/// A decision the server session waits for, named in
/// [`UsageError::OtherDecisionPending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// A login (USER/PASS, APOP, AUTH): `accept_login` or a rejection.
    Login,
    /// A message to stream (RETR, TOP): `message_chunk`, `message_end` or
    /// `message_unavailable`.
    Message,
    /// The deletions after QUIT: `commit_done` or `commit_failed`.
    Commit,
    /// The TLS handshake after STLS: `tls_established`.
    Tls,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Login => "login",
            Self::Message => "message",
            Self::Commit => "commit",
            Self::Tls => "tls handshake",
        })
    }
}

/// The caller used the session in a way the contract does not allow; the peer
/// did nothing wrong and nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A decision method was called while no decision is pending.
    #[error("no decision is pending")]
    NoDecisionPending,
    /// A decision method was called while a different decision is pending.
    #[error("a different decision is pending: {0}")]
    OtherDecisionPending(Decision),
    /// The maildrop holds more messages than a message number can count.
    #[error("too many messages")]
    TooManyMessages,
    /// A response given to reject something is not `-ERR`.
    #[error("a rejection must be an -ERR response")]
    NotAnError,
    /// A message chunk came after the session said the message is complete,
    /// or the message was ended before it was started.
    #[error("message streaming is not in a state to take this call")]
    MessageState,
}

/// A unique id that is not 1 to 70 characters in 0x21..=0x7E (RFC 1939 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid unique id: RFC 1939 allows 1 to 70 characters in 0x21..=0x7E")]
pub struct InvalidUniqueId;

/// An APOP timestamp that is not `<`, printable ASCII without `<` or `>`,
/// `>` (RFC 1939 §7), or is longer than 200 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid APOP timestamp: must be <...> of printable ASCII, at most 200 characters")]
pub struct InvalidApopTimestamp;
