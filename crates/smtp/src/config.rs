//! What a server session offers and allows. Every limit has a name, a safe
//! default and the place it comes from.

use std::borrow::Cow;
use std::time::Duration;

use postamt_wire::BareLineEndings;
use postamt_wire::sasl::Mechanism;

/// Whether the session speaks SMTP or LMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// SMTP (RFC 5321): HELO/EHLO, one reply after the message.
    #[default]
    Smtp,
    /// LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the
    /// message, each decided by the application.
    Lmtp,
}

/// The service extensions a server advertises in its EHLO reply and honours.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// PIPELINING (RFC 2920). The session always answers pipelined commands in
    /// order; this only controls the advertisement.
    pub pipelining: bool,
    /// SIZE (RFC 1870), advertising [`Limits::max_message_size`].
    pub size: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531): UTF-8 addresses with the `SMTPUTF8` parameter.
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034). Enhanced codes are sent only to clients
    /// that greeted with EHLO or LHLO.
    pub enhanced_status_codes: bool,
    /// CHUNKING (RFC 3030): the BDAT command.
    pub chunking: bool,
    /// BINARYMIME (RFC 3030); needs `chunking`.
    pub binary_mime: bool,
    /// DSN (RFC 3461): `RET`, `ENVID`, `NOTIFY`, `ORCPT`.
    pub dsn: bool,
    /// STARTTLS (RFC 3207). Set it when the caller can run a TLS handshake.
    pub starttls: bool,
    /// SASL mechanisms for AUTH (RFC 4954); empty disables AUTH. Before TLS
    /// is active they are offered only under
    /// [`ServerConfig::login_without_tls`].
    pub auth: Vec<Mechanism>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            pipelining: true,
            size: true,
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            chunking: true,
            binary_mime: false,
            dsn: true,
            starttls: false,
            auth: vec![Mechanism::Plain, Mechanism::Login],
        }
    }
}

/// Bounds on what one session accepts and keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest message in octets, after dot-unstuffing. 10 MiB, a common
    /// provider limit; RFC 5321 §4.5.3.1.7 asks for at least 64 KiB.
    pub max_message_size: u64,
    /// Recipients per transaction; RFC 5321 §4.5.3.1.8 requires at least 100.
    pub max_recipients: usize,
    /// Longest command line, CRLF included: 512 (RFC 5321 §4.5.3.1.4).
    pub max_command_line: usize,
    /// Longest line of message text, CRLF included: 1000 (RFC 5321 §4.5.3.1.6).
    pub max_text_line: usize,
    /// Longest line of an AUTH exchange: 12288 (RFC 4954 §4).
    pub max_auth_line: usize,
    /// Protocol errors before the session answers 421 and closes; 20, as
    /// Postfix's `smtpd_hard_error_limit`.
    pub max_errors: u32,
    /// Failed AUTH attempts (refused credentials) before the session
    /// answers 421 and closes: 3, so a connection cannot be used to guess
    /// passwords at length. Each failure also counts as an error.
    pub max_auth_failures: u32,
    /// Input kept while the application holds a decision (pipelined commands):
    /// 64 KiB. A client whose input held back this way grows past it over
    /// further reads, before the application answers, is cut off with 421.
    pub max_buffered_input: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1000,
            max_auth_line: 12288,
            max_errors: 20,
            max_auth_failures: 3,
            max_buffered_input: 64 * 1024,
        }
    }
}

/// How long the server waits for the client. Each timer restarts per record
/// (a command line, a message line, 1 KiB of a BDAT chunk), never per byte,
/// so a client trickling bytes is still cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTimeouts {
    /// How long to wait for the next command: 5 minutes, the server timeout
    /// of RFC 5321 §4.5.3.2.7.
    pub command: Duration,
    /// How long to wait for more message text (DATA or a BDAT chunk): 3
    /// minutes, the data block timeout of RFC 5321 §4.5.3.2.5.
    pub data: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            command: Duration::from_secs(5 * 60),
            data: Duration::from_secs(3 * 60),
        }
    }
}

/// The texts of the replies the session sends by itself. The defaults read
/// well when a person types SMTP into telnet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplyTexts {
    /// 220 greeting, after the host name.
    pub greeting: Cow<'static, str>,
    /// 250 reply to HELO and first line of EHLO, after the host name and
    /// before the client's name.
    pub hello: Cow<'static, str>,
    /// 250 after an accepted MAIL FROM.
    pub sender_ok: Cow<'static, str>,
    /// 250 after an accepted RCPT TO.
    pub recipient_ok: Cow<'static, str>,
    /// 354 after DATA.
    pub data_start: Cow<'static, str>,
    /// 250 once the message is stored.
    pub message_accepted: Cow<'static, str>,
    /// 250 to RSET and NOOP.
    pub ok: Cow<'static, str>,
    /// 221 to QUIT, after the host name.
    pub quit: Cow<'static, str>,
    /// 252 to VRFY (RFC 5321 §3.5.3: do not confirm addresses).
    pub vrfy: Cow<'static, str>,
    /// 235 after a successful AUTH.
    pub auth_ok: Cow<'static, str>,
    /// 214 lines answering HELP.
    pub help: Vec<Cow<'static, str>>,
}

impl Default for ReplyTexts {
    fn default() -> Self {
        Self {
            greeting: "ESMTP postamt ready".into(),
            hello: "Hello".into(),
            sender_ok: "Sender OK".into(),
            recipient_ok: "Recipient OK".into(),
            data_start: "End data with <CR><LF>.<CR><LF>".into(),
            message_accepted: "Message accepted for delivery".into(),
            ok: "OK".into(),
            quit: "See you later".into(),
            vrfy: "Cannot VRFY user, but will accept message and attempt delivery".into(),
            auth_ok: "Authentication successful".into(),
            help: vec![
                "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
                    .into(),
                "A mail: HELO name, MAIL FROM:<you@example.org>, RCPT TO:<them@example.org>,"
                    .into(),
                "DATA, the message, a line with only \".\", then QUIT.".into(),
            ],
        }
    }
}

/// Everything a [`ServerSession`](crate::ServerSession) needs to know up front.
///
/// Build one with [`ServerConfig::new`] and change the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The name the server gives in its greeting and replies.
    pub hostname: String,
    /// SMTP or LMTP.
    pub protocol: Protocol,
    /// What is advertised and honoured.
    pub extensions: Extensions,
    /// Bounds on input and output.
    pub limits: Limits,
    /// How long to wait for the client.
    pub timeouts: ServerTimeouts,
    /// The connection is encrypted from its first byte (implicit TLS on port
    /// 465, RFC 8314 §3.3): STARTTLS is not offered, and logins are.
    pub implicit_tls: bool,
    /// Whether AUTH PLAIN and LOGIN, which carry the password in the clear,
    /// are offered and allowed before TLS is active. False by default, the
    /// safe choice (RFC 4954 §4 recommends refusing them, with 538 5.7.11);
    /// set it only for a server without TLS that people may log in to anyway.
    pub login_without_tls: bool,
    /// Whether SASL PLAIN may name an authorization identity other than the
    /// user who logs in (acting for someone else, RFC 4616 §2). False by
    /// default: such a login is refused with 535 5.7.8 without an event, as
    /// the session cannot know who may act for whom. When true, the
    /// application sees `credentials.authzid` and must check it itself.
    pub allow_authzid: bool,
    /// What to do with a bare CR or LF in a message: refuse it (the default)
    /// or turn it into CRLF.
    pub bare_line_endings: BareLineEndings,
    /// Pass MAIL and RCPT parameters the session does not know to the
    /// application instead of answering 555.
    pub allow_unknown_parameters: bool,
    /// Reply texts.
    pub texts: ReplyTexts,
}

impl ServerConfig {
    /// An SMTP server configuration with safe defaults.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            protocol: Protocol::Smtp,
            extensions: Extensions::default(),
            limits: Limits::default(),
            timeouts: ServerTimeouts::default(),
            implicit_tls: false,
            login_without_tls: false,
            allow_authzid: false,
            bare_line_endings: BareLineEndings::Reject,
            allow_unknown_parameters: false,
            texts: ReplyTexts::default(),
        }
    }

    /// An LMTP server configuration (RFC 2033) with safe defaults.
    pub fn lmtp(hostname: impl Into<String>) -> Self {
        let mut config = Self::new(hostname);
        config.protocol = Protocol::Lmtp;
        config.texts.greeting = "LMTP postamt ready".into();
        config
    }
}
