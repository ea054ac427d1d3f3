//! What the client is told up front.

#[cfg(doc)]
use super::ClientSession;
use std::time::Duration;

/// What a client needs to know up front.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The name the client gives in EHLO/HELO.
    pub hostname: String,
    /// The connection is TLS from its first byte (SMTP submission on port
    /// 465, RFC 8314 §3.3): STARTTLS is not offered to the caller. Default
    /// false.
    pub implicit_tls: bool,
    /// Send messages with BDAT when the server offers CHUNKING (RFC 3030).
    /// Line ends are repaired exactly as for DATA (only `BODY=BINARYMIME`
    /// goes as given, and always by BDAT), so the server gets the same text
    /// either way.
    pub prefer_chunking: bool,
    /// Timeouts of RFC 5321 §4.5.3.2.
    pub timeouts: ClientTimeouts,
    /// Longest reply the client keeps while it arrives: 64 KiB. A server
    /// sending more in one reply is treated as broken.
    pub max_reply: usize,
    /// Output kept before the caller writes it, after which
    /// [`ClientSession::wants_message_bytes`] says no: 256 KiB.
    pub output_high_water: usize,
}

impl ClientConfig {
    /// A configuration with the RFC's timeouts.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            implicit_tls: false,
            prefer_chunking: false,
            timeouts: ClientTimeouts::default(),
            max_reply: 64 * 1024,
            output_high_water: 256 * 1024,
        }
    }
}

/// How long the client waits for each reply (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTimeouts {
    /// The 220 greeting: 5 minutes.
    pub greeting: Duration,
    /// Replies to EHLO, MAIL, RCPT and other commands: 5 minutes.
    pub command: Duration,
    /// The 354 after DATA: 2 minutes.
    pub data_start: Duration,
    /// The reply after the final dot or the last BDAT: 10 minutes.
    pub data_end: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            greeting: Duration::from_secs(5 * 60),
            command: Duration::from_secs(5 * 60),
            data_start: Duration::from_secs(2 * 60),
            data_end: Duration::from_secs(10 * 60),
        }
    }
}
