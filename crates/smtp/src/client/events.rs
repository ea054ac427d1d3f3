//! What goes in (the envelope) and what comes out (events, reports,
//! errors) of the client session.

use crate::address::{ForwardPath, ReversePath};
use crate::command::{MailParameters, RcptParameters};
use crate::error::ReplyError;
use crate::reply::Reply;

use super::Capabilities;
#[cfg(doc)]
use super::{ClientConfig, ClientSession};

/// Sender, recipients and parameters of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path (`<>` for bounces).
    pub from: ReversePath<'static>,
    /// MAIL parameters. SIZE is filled in by the client when the message
    /// length is known and the server offers SIZE.
    pub params: MailParameters<'static>,
    /// The recipients, each with its RCPT parameters.
    pub recipients: Vec<(ForwardPath<'static>, RcptParameters<'static>)>,
}

impl Envelope {
    /// An envelope from `from` with no recipients yet.
    pub fn new(from: ReversePath<'static>) -> Self {
        Self {
            from,
            params: MailParameters::default(),
            recipients: Vec::new(),
        }
    }

    /// Adds a recipient.
    pub fn to(mut self, recipient: ForwardPath<'static>) -> Self {
        self.recipients.push((recipient, RcptParameters::default()));
        self
    }
}

/// Why a transaction did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The server refused the sender.
    #[error("sender refused: {0}")]
    Sender(Reply),
    /// Every recipient was refused (see the report's `refused`).
    #[error("every recipient was refused")]
    NoRecipients,
    /// The server refused DATA or a BDAT chunk.
    #[error("message data refused: {0}")]
    Data(Reply),
    /// The server refused the message after it was sent.
    #[error("message refused: {0}")]
    Message(Reply),
    /// The message is larger than the server's SIZE; nothing was sent.
    #[error("message of {size} octets exceeds the server's limit of {limit}")]
    TooBig {
        /// The message size in octets.
        size: u64,
        /// The server's limit.
        limit: u64,
    },
    /// The session ended before the server's final reply (the
    /// [`ClientEvent::Closed`] that follows says why). If the whole message
    /// had gone out, the server may have kept it: RFC 5321 §6.1 leaves such a
    /// message to be sent again, possibly twice.
    #[error("the connection was lost before the transaction completed")]
    ConnectionLost,
}

/// The outcome of one transaction, recipient by recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Recipients the server accepted, with its replies.
    pub accepted: Vec<(ForwardPath<'static>, Reply)>,
    /// Recipients the server refused, with its replies.
    pub refused: Vec<(ForwardPath<'static>, Reply)>,
    /// The final reply, or why there was none worth having.
    pub outcome: Result<Reply, Failure>,
}

/// What the application must know, in protocol order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server greeted and answered EHLO (or HELO): transactions, AUTH and
    /// STARTTLS may start. Comes again after STARTTLS.
    Ready(Capabilities),
    /// The server said 220 to STARTTLS: run the TLS handshake, then call
    /// [`tls_established`](postamt_wire::Session::tls_established). Until
    /// then no command goes out, and whatever the server sends after its 220
    /// in plaintext is discarded (RFC 3207 §4.2).
    StartTls,
    /// AUTH succeeded.
    Authenticated,
    /// AUTH failed with this reply.
    AuthFailed(Reply),
    /// [`ClientSession::start_message`] was accepted by the server (354, or
    /// BDAT in use): feed the message while
    /// [`ClientSession::wants_message_bytes`] is true, then call
    /// [`ClientSession::end_message`].
    SendMessage,
    /// A transaction ended.
    Done(Report),
    /// The session ended: after QUIT, or for the reason given.
    Closed(Option<ClientError>),
}

/// Why a session ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the connection or a command the session needs.
    #[error("server refused: {0}")]
    Refused(Reply),
    /// The server sent something that is not an SMTP reply.
    #[error("malformed reply: {0}")]
    Malformed(ReplyError),
    /// A reply was longer than [`ClientConfig::max_reply`].
    #[error("reply too long")]
    ReplyTooLong,
    /// No reply within the RFC's time.
    #[error("timeout waiting for the server")]
    Timeout,
    /// The server closed the connection.
    #[error("connection closed by the server")]
    ConnectionClosed,
    /// The server sent a reply nobody asked for (other than 421, which is
    /// [`Refused`](Self::Refused)).
    #[error("unsolicited reply: {0}")]
    Unsolicited(Reply),
}

/// The caller asked for something the session cannot do now; nothing was
/// sent. Never caused by the server: after the session ended, requests
/// return `Ok(())` instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientUsageError {
    /// The session is busy: not [`ClientEvent::Ready`] yet, a transaction or
    /// an exchange is running, or a TLS handshake is due.
    #[error("the session is not ready for that now")]
    Busy,
    /// The server does not offer what was asked (STARTTLS, an AUTH mechanism).
    #[error("the server does not offer this")]
    NotOffered,
    /// No message is being sent.
    #[error("no message is being sent")]
    NoMessage,
    /// The envelope has no recipients.
    #[error("the envelope has no recipients")]
    NoRecipients,
    /// [`tls_established`](postamt_wire::Session::tls_established) without a
    /// [`ClientEvent::StartTls`] waiting for it.
    #[error("no TLS handshake is due")]
    NoHandshakeDue,
    /// QUIT was asked for already: nothing more can be asked.
    #[error("QUIT was already asked for")]
    Quitting,
}
