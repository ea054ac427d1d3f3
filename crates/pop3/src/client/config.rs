//! What the client is told up front.

use std::time::Duration;

#[cfg(doc)]
use super::ClientError;

/// What a client needs to know up front. Every limit has a safe default.
///
/// Start from [`ClientConfig::new`] (or `default`, the same) and change the
/// public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The connection is TLS from its first byte (POP3S on port 995,
    /// RFC 8314 §3.3): STLS is not offered to the caller. Default false.
    pub implicit_tls: bool,
    /// How long the client waits for the server.
    pub timeouts: ClientTimeouts,
    /// Longest status line, CRLF included: 1024 octets, twice the 512 of
    /// RFC 2449 §4, for servers with long greetings. A longer line ends the
    /// session with [`ClientError::LineTooLong`] instead of being buffered.
    pub max_response_line: usize,
    /// Longest multi-line listing (CAPA, LIST, UIDL) kept while it arrives,
    /// unstuffed: 4 MiB, room for about 150 000 UIDL lines. A server sending
    /// more ends the session with [`ClientError::ListingTooLong`]. Message
    /// text (RETR, TOP) is never kept: it is handed on as it arrives.
    pub max_listing: usize,
}

impl ClientConfig {
    /// The safe defaults, in plaintext (STLS when the server offers it).
    pub fn new() -> Self {
        Self {
            implicit_tls: false,
            timeouts: ClientTimeouts::default(),
            max_response_line: 1024,
            max_listing: 4 * 1024 * 1024,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// How long the client waits for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTimeouts {
    /// For each response, and between the pieces of a multi-line one: 10
    /// minutes, the server's own inactivity timer (RFC 1939 §3), so a
    /// server that is merely slow is not given up on before it would give
    /// up itself.
    pub response: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            response: Duration::from_secs(10 * 60),
        }
    }
}
