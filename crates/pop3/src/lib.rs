//! Sans-IO POP3 (RFC 1939) with CAPA and response codes (RFC 2449), STLS
//! (RFC 2595), SASL AUTH (RFC 5034) and UTF8 (RFC 6856).
//!
//! - [`command`]: the client's commands, a nom parser for one line and the
//!   renderer.
//! - [`response`]: `+OK` / `-ERR` lines with response codes, multi-line
//!   responses and their streaming codec ([`MultilineEncoder`],
//!   [`MultilineDecoder`]).
//! - [`ServerSession`]: the server's state machine. It owns no socket, reads no
//!   clock and blocks on nothing. It is driven through [`Session`], the
//!   contract every postamt session keeps; its own doc comment says what is
//!   POP3's (the decisions, streaming a message).
//! - [`ClientSession`]: the client's state machine, driven the same way: it
//!   reads the greeting and CAPA, logs in (USER/PASS, APOP, AUTH PLAIN), runs
//!   STLS, and pipelines maildrop commands, streaming message text out.
//! - APOP ([`apop_digest`], [`verify_apop`], [`ApopTimestamp`]) for both
//!   sides, and the validated values a server hands in ([`UniqueId`],
//!   [`ApopTimestamp`]).
//!
//! The server is safe by default: without TLS (STLS, or
//! [`ServerConfig::implicit_tls`] on port 995) it neither offers nor accepts
//! logins that carry a password in the clear (USER/PASS, AUTH PLAIN and
//! LOGIN) unless [`ServerConfig::login_without_tls`] says so. APOP is always
//! allowed where it is offered.
//!
//! # A whole session over in-memory bytes
//!
//! ```
//! use std::time::Instant;
//! use postamt_pop3::{Event, Maildrop, MessageFlow, ServerConfig, ServerSession, Session};
//!
//! let now = Instant::now();
//! let message: &[u8] = b"Subject: hi\r\n\r\n.a line with a dot\r\nbye\r\n";
//! // USER/PASS in the clear, as on a classroom network; the default waits
//! // for TLS (STLS, or `implicit_tls` on port 995).
//! let mut config = ServerConfig::new();
//! config.login_without_tls = true;
//! let mut session = ServerSession::new(config, now);
//! let mut wire = Vec::new();
//!
//! // The client pipelines its whole session; the session answers in order.
//! session.receive(now, b"USER bob\r\nPASS topSecret\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n");
//! loop {
//!     while let Some(event) = session.poll_event() {
//!         match event {
//!             Event::Login { user, password } => {
//!                 if user == "bob" && password.expose() == "topSecret" {
//!                     let mut maildrop = Maildrop::new();
//!                     maildrop.push(message.len() as u64, "msg-1".parse().unwrap()).unwrap();
//!                     session.accept_login(maildrop).unwrap();
//!                 } else {
//!                     session.reject_login().unwrap();
//!                 }
//!             }
//!             Event::Retrieve { message: n, .. } => {
//!                 assert_eq!(n.get(), 1);
//!                 // Chunks of any size; here 7 bytes at a time.
//!                 for chunk in message.chunks(7) {
//!                     assert!(session.wants_message_bytes());
//!                     assert_eq!(session.message_chunk(chunk).unwrap(), MessageFlow::Continue);
//!                 }
//!                 session.message_end().unwrap();
//!             }
//!             Event::Commit { deletions } => {
//!                 assert_eq!(deletions[0].unique_id, "msg-1");
//!                 session.commit_done().unwrap();
//!             }
//!             other => panic!("unexpected {other:?}"),
//!         }
//!     }
//!     if session.poll_transmit(&mut wire) == 0 {
//!         break;
//!     }
//! }
//! assert!(session.is_closed());
//! assert_eq!(
//!     String::from_utf8(wire).unwrap(),
//!     "+OK POP3 server ready\r\n\
//!      +OK Now send your password with PASS\r\n\
//!      +OK Logged in, 1 message (40 octets)\r\n\
//!      +OK 1 40\r\n\
//!      +OK 40 octets\r\n\
//!      Subject: hi\r\n\r\n..a line with a dot\r\nbye\r\n.\r\n\
//!      +OK Message deleted\r\n\
//!      +OK Goodbye\r\n"
//! );
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod apop;
mod client;
pub mod command;
mod config;
pub mod error;
pub mod response;
mod server;

pub use apop::{ApopTimestamp, apop_digest, apop_timestamp, verify_apop};
pub use bytes;
pub use client::{
    Capabilities, ClientConfig, ClientError, ClientEvent, ClientSession, ClientTimeouts,
    ClientUsageError, Request,
};
pub use command::{Command, MessageNumber};
pub use config::{Extensions, Limits, ServerConfig, ServerTimeouts, Texts};
pub use error::{
    CommandError, Decision, InvalidApopTimestamp, InvalidUniqueId, ResponseError, UsageError,
};
pub use postamt_wire::sasl::{Credentials, Mechanism};
pub use postamt_wire::{Decoded, Secret, Session};
pub use response::{MultiLine, MultilineDecoder, MultilineEncoder, Response, ResponseCode, Status};
pub use server::{Deletion, Event, Maildrop, MessageFlow, ServerSession, UniqueId};
