//! What the application is told and what it decides.

use bytes::Bytes;
use postamt_wire::Violation;
use postamt_wire::sasl::{Credentials, Mechanism};

use crate::address::{Domain, ForwardPath, ReversePath};
use crate::command::{MailParameters, RcptParameters};
use crate::xclient::Xclient;

/// How the client greeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hello {
    /// `HELO`: plain SMTP, no extensions.
    Helo,
    /// `EHLO`: extended SMTP.
    Ehlo,
    /// `LHLO`: LMTP.
    Lhlo,
}

/// Why a message in progress was dropped. The session has already answered
/// the client (or will, once the message's end has been read); the application
/// throws away what it received of the message and the transaction's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// The message grew past [`Limits::max_message_size`](crate::Limits).
    TooBig,
    /// A bare CR or LF was found and the policy is to refuse such messages.
    BareLineEnding,
    /// A line was longer than [`Limits::max_text_line`](crate::Limits).
    LineTooLong,
    /// The client reset the transaction between BDAT chunks.
    Reset,
    /// The client went silent past the data timeout.
    Timeout,
    /// The connection closed before the message ended.
    ConnectionClosed,
    /// The session was closed for too much buffered input or too many errors.
    SessionClosed,
}

impl From<Violation> for AbortReason {
    fn from(kind: Violation) -> Self {
        match kind {
            Violation::LineTooLong => Self::LineTooLong,
            _ => Self::BareLineEnding,
        }
    }
}

/// What the application must know or decide, in protocol order.
///
/// The events marked "decision" leave the session waiting: answer them with
/// [`ServerSession::accept`](crate::ServerSession::accept), [`ServerSession::accept_with`](crate::ServerSession::accept_with) or
/// [`ServerSession::reject`](crate::ServerSession::reject). No further input is processed until then.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The client greeted (HELO, EHLO or LHLO). Any transaction was reset.
    Hello {
        /// Which greeting.
        kind: Hello,
        /// The name the client gave.
        domain: Domain<'static>,
    },
    /// The session answered STARTTLS with 220: run the TLS handshake on the
    /// connection now, then call `tls_established` and feed the decrypted
    /// bytes. Until then the session reads no input: plaintext that arrived
    /// after the command is discarded (it could be injected), and afterwards
    /// the session waits for a new EHLO as RFC 3207 §4.2 requires.
    StartTls,
    /// Decision: check these credentials. Accept to answer 235; reject with
    /// 535 5.7.8 ([`Reply::auth_failed`](crate::Reply::auth_failed)) to refuse.
    Auth {
        /// The mechanism the client used.
        mechanism: Mechanism,
        /// What the client sent.
        credentials: Credentials,
    },
    /// Decision: a new transaction from this sender.
    Mail {
        /// The sender.
        from: ReversePath<'static>,
        /// Its parameters, already checked against what the session offers.
        params: MailParameters<'static>,
    },
    /// Decision: one more recipient.
    Rcpt {
        /// The recipient.
        to: ForwardPath<'static>,
        /// Its parameters.
        params: RcptParameters<'static>,
    },
    /// The message text begins (after 354, or with the first BDAT chunk).
    MessageStart,
    /// The next piece of the message, dot-stuffing removed.
    MessageData(Bytes),
    /// Decision: the message is complete. Accept only once it is stored
    /// durably. In LMTP, decide once per accepted recipient, in order.
    MessageEnd,
    /// The message was dropped; see [`AbortReason`]. The transaction is over.
    MessageAborted(AbortReason),
    /// The transaction was abandoned (RSET, a new HELO/EHLO, STARTTLS, QUIT,
    /// or the end of the connection) before a message was complete.
    Reset,
    /// A trusted proxy named the real client with XCLIENT
    /// ([`ServerSession::allow_xclient`](crate::ServerSession::allow_xclient)):
    /// from now on use its attributes, where sent, for `Received:`, relay
    /// decisions and logs, in place of the connection's. The session has
    /// answered with a new 220 greeting and starts over, waiting for EHLO;
    /// it is authenticated exactly when `LOGIN` named a user
    /// ([`Xclient::login_name`]).
    Xclient(Xclient),
}

/// The decision the session is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The credentials of an [`Event::Auth`].
    Auth,
    /// The sender of an [`Event::Mail`].
    Sender,
    /// The recipient of an [`Event::Rcpt`].
    Recipient,
    /// Delivery of the message after [`Event::MessageEnd`]; `recipient` is
    /// the 0-based index among accepted recipients (always 0 in SMTP).
    Message {
        /// Which accepted recipient this decision is for (LMTP).
        recipient: usize,
    },
}
