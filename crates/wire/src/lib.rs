//! What SMTP and POP3 share on the wire, written once.
//!
//! - [`LineFramer`] cuts a byte stream into CRLF-terminated lines under a length
//!   limit, reporting lines that carry a bare CR or LF, and skipping over-long lines
//!   without buffering them.
//! - [`DotDecoder`] and [`DotEncoder`] are the streaming dot-stuffing codecs used by
//!   SMTP `DATA` and POP3 multi-line responses. The decoder ends only at
//!   `CRLF . CRLF`, however the input is split. [`LineChecker`] keeps the same
//!   rules (bare CR/LF, line length) for text that is not dot-stuffed (BDAT).
//! - [`crlf`] writes down the one rule for line ends of message text on the
//!   wire (the encoder's), with [`CrlfSize`] to count by it and
//!   [`CrlfNormalizer`] to rewrite by it (the POP3 store, SMTP BDAT).
//! - [`Secret`] keeps credentials out of `Debug` output.
//! - [`Session`] is the driving contract all four protocol sessions keep.
//! - [`TelnetFilter`] turns what a person types into a telnet client (option
//!   negotiation, Backspace) into what a session expects, and leaves a mail
//!   client's bytes alone.
//! - [`sasl`] decodes SASL PLAIN and LOGIN exchanges (RFC 4616, the LOGIN draft)
//!   for servers and encodes them for clients.
//! - [`proxy`] reads and writes the PROXY protocol header (v1 and v2) that a
//!   TCP load balancer puts before the first byte of SMTP or POP3, so a
//!   server behind it learns the client's real address ([`ProxyHeader`]).
//!
//! Nothing here performs I/O: every type is fed bytes and writes bytes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod crlf;
mod dot;
mod error;
mod line;
pub mod proxy;
pub mod sasl;
mod scan;
mod secret;
mod session;
mod telnet;

pub use crlf::{CrlfNormalizer, CrlfSize, crlf_size};
pub use dot::{BareLineEndings, Checked, Decoded, DotDecoder, DotEncoder, LineChecker, Violation};
pub use error::SaslError;
pub use line::{Frame, LineFramer};
pub use proxy::{ProxyError, ProxyHeader};
pub use secret::Secret;
pub use session::Session;
pub use telnet::{Reads, TelnetFilter};
