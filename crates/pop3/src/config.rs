//! What a server session offers and allows. Every limit has a name, a safe
//! default and the place it comes from.

use std::borrow::Cow;
use std::time::Duration;

use postamt_wire::sasl::Mechanism;

/// Bounds on what one session accepts and keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest command line, CRLF included: 255 octets (RFC 2449 §4). A longer
    /// line is answered `-ERR` without being buffered.
    pub max_command_line: usize,
    /// Longest line of an AUTH exchange, CRLF included. RFC 5034 leaves it to
    /// the mechanism; 12288 octets, the figure RFC 4954 §4 sets for SMTP AUTH.
    pub max_auth_line: usize,
    /// Input kept while the application holds a decision or the client does
    /// not read its responses (pipelined commands): 64 KiB. A client that sends
    /// more is answered `-ERR` and cut off.
    pub max_buffered_input: usize,
    /// Output the session holds before it stops asking for message bytes and
    /// stops answering further commands, until the caller drains it with
    /// `poll_transmit`: 256 KiB, a few socket buffers.
    pub output_high_water: usize,
    /// Protocol errors before the session answers `-ERR` and closes: 20, as
    /// Postfix's `smtpd_hard_error_limit` does for SMTP.
    pub max_errors: u32,
    /// Refused logins (wrong credentials to PASS, APOP or AUTH) before the
    /// session closes after the last `-ERR [AUTH]`: 3, so one connection
    /// cannot be used to guess passwords at length (Dovecot and Postfix
    /// hang up too). Each one also counts toward [`max_errors`]. Refusals
    /// that say nothing about the password (`-ERR [IN-USE]`, the
    /// application's own `-ERR`) do not count here.
    ///
    /// [`max_errors`]: Self::max_errors
    pub max_auth_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_command_line: crate::command::MAX_COMMAND_LINE,
            max_auth_line: 12288,
            max_buffered_input: 64 * 1024,
            output_high_water: 256 * 1024,
            max_errors: 20,
            max_auth_failures: 3,
        }
    }
}

/// How long the session waits for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTimeouts {
    /// The inactivity autologout timer: 10 minutes, the minimum RFC 1939 §3
    /// allows. It restarts with each complete command and stops while the
    /// application holds a decision. When it expires the session closes
    /// without a response and deletes nothing.
    pub inactivity: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            inactivity: Duration::from_secs(10 * 60),
        }
    }
}

/// The extensions a server advertises in its CAPA response and honours.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// USER and PASS (RFC 1939 §7, `USER` in CAPA).
    pub user: bool,
    /// SASL mechanisms for AUTH (RFC 5034); empty disables AUTH.
    pub sasl: Vec<Mechanism>,
    /// STLS (RFC 2595 §4). Set it when the caller can run a TLS handshake.
    pub stls: bool,
    /// UTF8 (RFC 6856 §2), advertised as `UTF8 USER`: user names and passwords
    /// may be UTF-8.
    pub utf8: bool,
    /// The `IMPLEMENTATION` capability (RFC 2449 §6.9), if any.
    pub implementation: Option<Cow<'static, str>>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            user: true,
            sasl: vec![Mechanism::Plain],
            stls: false,
            utf8: true,
            implementation: None,
        }
    }
}

/// The texts of the responses the session sends. The defaults read well when a
/// person types POP3 into telnet. Counts and sizes the protocol fixes (STAT,
/// LIST, RETR) are formatted by the session around these texts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Texts {
    /// `+OK` greeting, before the APOP timestamp.
    pub greeting: Cow<'static, str>,
    /// `+OK` after USER.
    pub user_ok: Cow<'static, str>,
    /// `+OK` after a login, before `, N messages (M octets)`.
    pub logged_in: Cow<'static, str>,
    /// `-ERR [AUTH]` after refused credentials; the same for an unknown user
    /// and a wrong password.
    pub auth_failed: Cow<'static, str>,
    /// `-ERR [IN-USE]` when the maildrop is locked by another session.
    pub in_use: Cow<'static, str>,
    /// `-ERR` to PASS without USER.
    pub need_user: Cow<'static, str>,
    /// `-ERR` to a TRANSACTION command before login.
    pub not_logged_in: Cow<'static, str>,
    /// `-ERR` to a login command after login.
    pub already_logged_in: Cow<'static, str>,
    /// `-ERR` to a command not offered (AUTH, STLS, USER disabled, ...).
    pub not_offered: Cow<'static, str>,
    /// `-ERR` to a plaintext login (USER, PASS, AUTH PLAIN or LOGIN) on a
    /// connection without TLS when [`ServerConfig::login_without_tls`] is off.
    pub tls_required: Cow<'static, str>,
    /// `-ERR` for a message number beyond the maildrop.
    pub no_such_message: Cow<'static, str>,
    /// `-ERR` for a message marked as deleted.
    pub already_deleted: Cow<'static, str>,
    /// `+OK` to RSET, before `N messages (M octets)`.
    pub maildrop: Cow<'static, str>,
    /// `+OK` after DELE.
    pub deleted: Cow<'static, str>,
    /// `+OK` before the text of TOP.
    pub top: Cow<'static, str>,
    /// `+OK` before the UIDL listing.
    pub uidl: Cow<'static, str>,
    /// `+OK` before the CAPA listing.
    pub capa: Cow<'static, str>,
    /// `+OK` to NOOP.
    pub noop: Cow<'static, str>,
    /// `+OK` to QUIT.
    pub quit: Cow<'static, str>,
    /// `-ERR [SYS/TEMP]` when the deletions could not be committed.
    pub commit_failed: Cow<'static, str>,
    /// `-ERR [SYS/TEMP]` when the application cannot read a message.
    pub message_unavailable: Cow<'static, str>,
    /// `+OK` to STLS.
    pub stls: Cow<'static, str>,
    /// `+OK` to UTF8.
    pub utf8: Cow<'static, str>,
    /// `-ERR` when the client cancels an AUTH exchange with `*`.
    pub auth_cancelled: Cow<'static, str>,
    /// `-ERR` when a SASL response is malformed.
    pub auth_malformed: Cow<'static, str>,
    /// `-ERR` to AUTH with a mechanism not offered.
    pub unsupported_mechanism: Cow<'static, str>,
    /// `-ERR` to a command valid only in another state.
    pub wrong_state: Cow<'static, str>,
    /// `-ERR` before closing after too many errors.
    pub too_many_errors: Cow<'static, str>,
    /// `-ERR` before closing when the client sent more than
    /// [`Limits::max_buffered_input`] without reading.
    pub too_much_input: Cow<'static, str>,
}

impl Default for Texts {
    fn default() -> Self {
        Self {
            greeting: "POP3 server ready".into(),
            user_ok: "Now send your password with PASS".into(),
            logged_in: "Logged in".into(),
            auth_failed: "Invalid user name or password".into(),
            in_use: "Maildrop is locked by another session".into(),
            need_user: "Send USER first".into(),
            not_logged_in: "Log in first with USER and PASS".into(),
            already_logged_in: "Already logged in".into(),
            not_offered: "Command not offered here".into(),
            tls_required: "Use STLS first".into(),
            no_such_message: "No such message".into(),
            already_deleted: "Message already deleted".into(),
            maildrop: "Maildrop has".into(),
            deleted: "Message deleted".into(),
            top: "Top of message follows".into(),
            uidl: "Unique-ID listing follows".into(),
            capa: "Capability list follows".into(),
            noop: "".into(),
            quit: "Goodbye".into(),
            commit_failed: "Some deleted messages not removed".into(),
            message_unavailable: "Message cannot be read right now".into(),
            stls: "Begin TLS negotiation".into(),
            utf8: "UTF8 enabled".into(),
            auth_cancelled: "Authentication cancelled".into(),
            auth_malformed: "Malformed authentication response".into(),
            unsupported_mechanism: "Unsupported authentication mechanism".into(),
            wrong_state: "Command not valid in this state".into(),
            too_many_errors: "Too many errors, closing connection".into(),
            too_much_input: "Too much input without reading responses, closing connection".into(),
        }
    }
}

/// Everything a [`ServerSession`](crate::ServerSession) needs to know up front.
///
/// Start from [`ServerConfig::new`] and change the public fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// What is advertised and honoured.
    pub extensions: Extensions,
    /// Whether the connection is encrypted from its first byte (POP3S on port
    /// 995, RFC 8314 §3.3): STLS is then not offered and logins are allowed.
    /// Default false.
    pub implicit_tls: bool,
    /// Whether logins that carry the password in the clear (USER/PASS, AUTH
    /// PLAIN and LOGIN) are allowed before TLS is active. Default **false**,
    /// as RFC 2595 §2.4 and RFC 8314 advise: such logins are then refused
    /// with [`Texts::tls_required`] and not advertised in CAPA. APOP sends no
    /// password and is not affected. Turn it on for a server typed at by
    /// hand over telnet, on a network you trust.
    pub login_without_tls: bool,
    /// Whether SASL PLAIN may name an authorization identity other than the
    /// user who logs in (acting for someone else, RFC 4616 §2). False by
    /// default: such a login is refused with [`Texts::auth_failed`] without
    /// an event, and counts as a refused login, as the session cannot know
    /// who may act for whom. When true, the application sees
    /// `credentials.authzid` and must check it itself.
    pub allow_authzid: bool,
    /// Bounds on input and output.
    pub limits: Limits,
    /// How long the session waits.
    pub timeouts: ServerTimeouts,
    /// Response texts.
    pub texts: Texts,
}

impl ServerConfig {
    /// The defaults: USER, SASL PLAIN, UTF8, no STLS, no plaintext login
    /// before TLS.
    pub fn new() -> Self {
        Self::default()
    }
}
