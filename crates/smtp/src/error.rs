//! Errors: the peer's (each knows the reply it becomes) and the caller's.

use thiserror::Error;

use crate::reply::{EnhancedCode, Reply};

/// Why a command line could not be parsed. Each variant knows its reply
/// ([`CommandError::reply`]), so a server never invents one ad hoc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The verb is not an SMTP command.
    #[error("command unrecognized")]
    UnknownCommand,
    /// The command line is not valid UTF-8 or holds control characters.
    #[error("invalid characters in command")]
    InvalidCharacters,
    /// The arguments do not fit the command's grammar.
    #[error("syntax error in arguments")]
    BadArguments,
    /// The command takes no arguments but got some.
    #[error("command takes no arguments")]
    UnexpectedArguments,
    /// The reverse-path of MAIL is malformed.
    #[error("bad sender address syntax")]
    BadSender,
    /// The forward-path of RCPT is malformed.
    #[error("bad recipient address syntax")]
    BadRecipient,
    /// A known ESMTP parameter has a malformed value, or appears twice.
    #[error("invalid parameter value")]
    BadParameter,
    /// The HELO/EHLO/LHLO argument is not a domain or address literal.
    #[error("invalid domain")]
    BadDomain,
    /// An XCLIENT attribute that is unknown, given twice, or whose value
    /// is not valid xtext or not of the attribute's kind.
    #[error("bad XCLIENT attribute")]
    BadXclient,
}

impl CommandError {
    /// The reply a server sends for this error (RFC 5321 §4.2.4, RFC 3463).
    pub fn reply(self) -> Reply {
        let (code, enhanced, text) = self.parts();
        Reply::new(code, Some(enhanced), text)
    }

    /// Code, enhanced code and text, for writing the reply without building it.
    pub(crate) fn parts(self) -> (u16, EnhancedCode, &'static str) {
        match self {
            Self::UnknownCommand => (500, EnhancedCode::INVALID_COMMAND, "Command unrecognized"),
            Self::InvalidCharacters => (
                500,
                EnhancedCode::SYNTAX_ERROR,
                "Invalid characters in command",
            ),
            Self::BadArguments => (
                501,
                EnhancedCode::INVALID_ARGUMENTS,
                "Syntax error in arguments",
            ),
            Self::UnexpectedArguments => (
                501,
                EnhancedCode::INVALID_ARGUMENTS,
                "This command takes no arguments",
            ),
            Self::BadSender => (
                501,
                EnhancedCode::BAD_SENDER_SYNTAX,
                "Bad sender address syntax",
            ),
            Self::BadRecipient => (
                501,
                EnhancedCode::BAD_RECIPIENT_SYNTAX,
                "Bad recipient address syntax",
            ),
            Self::BadParameter => (
                501,
                EnhancedCode::INVALID_ARGUMENTS,
                "Invalid parameter value",
            ),
            Self::BadDomain => (501, EnhancedCode::INVALID_ARGUMENTS, "Invalid domain name"),
            Self::BadXclient => (
                501,
                EnhancedCode::INVALID_ARGUMENTS,
                "Bad XCLIENT attribute or value",
            ),
        }
    }
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line did not start with a code in 200..=599.
    #[error("reply line without a valid three-digit code")]
    BadCode,
    /// The lines of one reply carry different codes.
    #[error("multi-line reply with different codes")]
    MixedCodes,
    /// The code is followed by something other than space, `-` or CRLF.
    #[error("reply code followed by an invalid separator")]
    BadSeparator,
    /// A line ended in a bare LF.
    #[error("reply line not terminated by CRLF")]
    BareLineEnding,
    /// The text is not UTF-8.
    #[error("reply text is not UTF-8")]
    NotUtf8,
    /// A string was not an enhanced status code.
    #[error("invalid enhanced status code")]
    BadEnhancedCode,
}

/// Which kind of address a string failed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressKind {
    /// A [`Domain`](crate::Domain): a name or an address literal.
    Domain,
    /// A [`Mailbox`](crate::Mailbox): `local-part@domain`.
    Mailbox,
    /// A [`ReversePath`](crate::ReversePath): a mailbox or `<>`.
    ReversePath,
    /// A [`ForwardPath`](crate::ForwardPath): a mailbox or `<Postmaster>`.
    ForwardPath,
}

impl AddressKind {
    fn what(self) -> &'static str {
        match self {
            Self::Domain => "domain",
            Self::Mailbox | Self::ReversePath | Self::ForwardPath => "address",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Self::Domain => "a domain name or an address literal such as [192.0.2.1]",
            Self::Mailbox => "local-part@domain",
            Self::ReversePath => "local-part@domain, <local-part@domain> or <>",
            Self::ForwardPath => "local-part@domain, <local-part@domain> or <Postmaster>",
        }
    }
}

/// A string given to `parse` (`FromStr`) was not the address it should be.
/// Its message says so and shows the input: `invalid address "foo@":
/// expected local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {} {input:?}: expected {}", kind.what(), kind.expected())]
pub struct AddressError {
    kind: AddressKind,
    input: String,
}

impl AddressError {
    pub(crate) fn new(kind: AddressKind, input: &str) -> Self {
        Self {
            kind,
            input: input.to_owned(),
        }
    }

    /// Which kind of address was expected.
    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    /// The string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

/// The caller used the session in a way the contract does not allow; the peer
/// did nothing wrong and nothing was sent. A decision made after the session
/// closed is not one of these: the answer is moot, so it is taken and
/// nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A decision method was called while no decision is pending.
    #[error("no decision is pending")]
    NoDecisionPending,
    /// `accept_with` got a reply that is not 2yz, or `reject` one that is not 4yz/5yz.
    #[error("reply code {0} does not fit this decision")]
    WrongReplyClass(u16),
    /// `tls_established` was called while no TLS handshake was due (no
    /// STARTTLS was answered, or the handshake was already reported).
    #[error("no TLS handshake is due")]
    NoHandshakeDue,
}
