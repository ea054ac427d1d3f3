//! Sans-IO SMTP (RFC 5321) and LMTP (RFC 2033), server and client.
//!
//! Commands and replies as types with parsers and renderers, a
//! [`ServerSession`] that turns a client's bytes into events for the
//! application and replies, and a [`ClientSession`] that sends mail and
//! reports each recipient's fate. Nothing here touches a socket, a thread or
//! a clock: the caller moves bytes and passes the time in, so the same
//! sessions run on `std::net`, on an async runtime, or in a test.
//!
//! Both keep the one driving contract of [`Session`] (from `postamt-wire`,
//! re-exported here with [`bytes`], whose `Bytes` carry message data): bring
//! the trait into scope to drive them. [`ServerSession`] and
//! [`ClientSession`] describe their own events and decisions.
//!
//! # Both sides, wired together in memory
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Instant;
//! use postamt_smtp::{
//!     ClientConfig, ClientEvent, ClientSession, Envelope, Event, ServerConfig, ServerSession,
//!     Session,
//! };
//!
//! let now = Instant::now();
//! let mut server = ServerSession::new(ServerConfig::new("mx.example"), now);
//! let mut client = ClientSession::new(ClientConfig::new("client.example"), now);
//! let (mut stored, mut report, mut wire) = (Vec::new(), None, Vec::new());
//! while !client.is_closed() {
//!     // What the server said reaches the client...
//!     wire.clear();
//!     server.poll_transmit(&mut wire);
//!     client.receive(now, &wire);
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             ClientEvent::Ready(_) => {
//!                 let envelope = Envelope::new("<anna@example.org>".parse()?)
//!                     .to("<bob@mx.example>".parse()?);
//!                 client.send_message(envelope, "Subject: Hi\r\n\r\nHello Bob\r\n")?;
//!             }
//!             ClientEvent::Done(r) => {
//!                 report = Some(r);
//!                 client.quit()?;
//!             }
//!             _ => {}
//!         }
//!     }
//!     // ...and what the client said reaches the server.
//!     wire.clear();
//!     client.poll_transmit(&mut wire);
//!     server.receive(now, &wire);
//!     while let Some(event) = server.poll_event() {
//!         match event {
//!             Event::Mail { .. } | Event::Rcpt { .. } => server.accept()?,
//!             Event::MessageData(bytes) => stored.extend_from_slice(&bytes),
//!             // Say 250 only once the message is stored durably.
//!             Event::MessageEnd => server.accept()?,
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(stored, b"Subject: Hi\r\n\r\nHello Bob\r\n");
//! let report = report.expect("the transaction ended");
//! assert_eq!(report.accepted.len(), 1);
//! assert_eq!(report.outcome.map(|reply| reply.code()), Ok(250));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
mod client;
pub mod command;
mod config;
pub mod error;
pub mod reply;
mod server;

pub use address::{Domain, ForwardPath, Mailbox, ReversePath};
pub use bytes;
pub use client::{
    Capabilities, ClientConfig, ClientError, ClientEvent, ClientSession, ClientTimeouts,
    ClientUsageError, Envelope, Failure, Report,
};
pub use command::{Body, Command, MailParameters, Notify, RcptParameters, Ret};
pub use config::{Extensions, Limits, Protocol, ReplyTexts, ServerConfig, ServerTimeouts};
pub use error::{AddressError, AddressKind, CommandError, ReplyError, UsageError};
pub use postamt_wire::BareLineEndings;
pub use postamt_wire::Session;
pub use postamt_wire::sasl::{Credentials, Mechanism};
pub use reply::{EnhancedCode, Reply};
pub use server::{AbortReason, Decision, Event, Hello, InputMode, ServerSession};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
