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
//! # Behind a proxy: XCLIENT
//!
//! A proxy or filter in front of the server names the real client with
//! Postfix's XCLIENT. The session obeys it only from a connection the
//! application trusts ([`ServerSession::allow_xclient`], a decision about the
//! peer's address, like Postfix's `smtpd_authorized_xclient_hosts`); it then
//! reports the attributes as [`Event::Xclient`] ([`Xclient`]) and greets
//! anew. A TCP load balancer's PROXY protocol header comes before SMTP
//! starts and is read with `postamt_wire::proxy`.
//!
//! ```
//! use std::time::Instant;
//! use postamt_smtp::{Event, ServerConfig, ServerSession, Session};
//!
//! let now = Instant::now();
//! let mut session = ServerSession::new(ServerConfig::new("mx.example"), now);
//! session.allow_xclient(true); // this peer is our proxy
//! session.receive(now, b"XCLIENT ADDR=192.0.2.7 NAME=client.example LOGIN=anna\r\n");
//! let Some(Event::Xclient(client)) = session.poll_event() else { panic!() };
//! assert_eq!(client.addr.and_then(|a| a.known().copied()), "192.0.2.7".parse().ok());
//! assert!(session.is_authenticated());
//! let mut out = Vec::new();
//! session.poll_transmit(&mut out);
//! assert!(out.ends_with(b"\r\n220 mx.example ESMTP postamt ready\r\n"));
//! ```
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
mod xclient;

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
pub use xclient::{ClientProtocol, XCLIENT_ATTRIBUTES, Xclient, XclientValue};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
