//! Sans-IO SMTP (RFC 5321) and LMTP (RFC 2033).
//!
//! Commands and replies as types with parsers and renderers, and a
//! [`ServerSession`] state machine that turns bytes from a client into events
//! for the application and bytes to send back. Nothing here touches a socket,
//! a thread or a clock: the caller moves bytes and passes the time in, so the
//! same session runs on `std::net`, on an async runtime, or in a test.
//!
//! Both sessions, [`ServerSession`] and [`ClientSession`], keep the one
//! driving contract of [`Session`] (from `postamt-wire`, re-exported here
//! with [`bytes`], whose `Bytes` carry message data): bring the trait into
//! scope to drive them. See [`ServerSession`] for the server's steps and a
//! complete example.
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
pub use server::{AbortReason, Decision, Event, Hello, ServerSession};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
