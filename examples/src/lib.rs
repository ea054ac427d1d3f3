//! The toy server: SMTP and POP3 from the postamt crates on non-blocking
//! `std::net` sockets, every connection on a few event-loop threads. The binary is `toy-server`
//! (`cargo run --release --example toy-server -- --help`); this library is
//! what it and the integration tests start.
#![forbid(unsafe_code)]

pub mod classroom;
pub mod client;
#[cfg(unix)]
pub mod control;
pub mod domains;
mod evloop;
mod forward;
mod pop3;
mod server;
mod smtp;
pub mod tls;
mod trace;
pub mod web;

pub use forward::{Forwarding, RelayTls};
pub use server::{BindError, DEFAULT_MAX_CONNECTIONS, DEFAULT_STORE_THREADS, Options, Server};
pub use smtp::POSTMASTER_MAILBOX;
pub use web::Web;
