//! SASL PLAIN (RFC 4616) and LOGIN exchanges, for servers and clients.
//!
//! A server runs one [`Exchange`] per `AUTH` command: it sends the challenge each
//! [`Step::Challenge`] carries (already base64, ready for `334 ` in SMTP or `+ `
//! in POP3) and feeds each client line back to [`Exchange::respond`] until the
//! exchange yields [`Step::Done`] with the credentials to check.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{SaslError, Secret};

/// A SASL mechanism this crate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mechanism {
    /// RFC 4616: one message, `authzid NUL authcid NUL passwd`.
    Plain,
    /// The LOGIN mechanism: user name, then password, each prompted.
    Login,
}

impl Mechanism {
    /// The name as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not a mechanism this crate implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMechanism;

impl fmt::Display for UnknownMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown SASL mechanism")
    }
}

impl std::error::Error for UnknownMechanism {}

impl FromStr for Mechanism {
    type Err = UnknownMechanism;

    /// Case-insensitive, as SASL mechanism names are.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("PLAIN") {
            Ok(Self::Plain)
        } else if s.eq_ignore_ascii_case("LOGIN") {
            Ok(Self::Login)
        } else {
            Err(UnknownMechanism)
        }
    }
}

/// What a client proved it knows: who it is and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as, when the client asked for one other than its own.
    pub authzid: Option<String>,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Secret<String>,
}

/// The next thing a server must do in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send this base64 challenge and wait for the client's next line.
    Challenge(&'static str),
    /// The exchange is complete: check these credentials.
    Done(Credentials),
    /// The exchange failed (the client cancelled, or sent something malformed).
    Failed(SaslError),
}

#[derive(Clone, PartialEq, Eq)]
enum State {
    AwaitPlain,
    AwaitUser,
    AwaitPassword(String),
    Finished,
}

/// One server-side SASL exchange.
#[derive(Clone)]
pub struct Exchange {
    state: State,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::AwaitPlain => "await-plain",
            State::AwaitUser => "await-user",
            State::AwaitPassword(_) => "await-password",
            State::Finished => "finished",
        };
        f.debug_struct("Exchange").field("state", &state).finish()
    }
}

/// The LOGIN prompt `Username:` in base64.
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
/// The LOGIN prompt `Password:` in base64.
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

impl Exchange {
    /// Starts an exchange. `initial` is the initial response from the command
    /// line, still in base64 (`=` stands for an empty one, RFC 4954 §4).
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> (Self, Step) {
        let mut exchange = Self {
            state: match mechanism {
                Mechanism::Plain => State::AwaitPlain,
                Mechanism::Login => State::AwaitUser,
            },
        };
        let step = match initial {
            Some(line) => exchange.respond(line),
            None => match mechanism {
                Mechanism::Plain => Step::Challenge(""),
                Mechanism::Login => Step::Challenge(LOGIN_USER_PROMPT),
            },
        };
        (exchange, step)
    }

    /// Whether the exchange has ended (done or failed).
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Feeds one client line (without CRLF).
    pub fn respond(&mut self, line: &[u8]) -> Step {
        let state = std::mem::replace(&mut self.state, State::Finished);
        if line == b"*" {
            return Step::Failed(SaslError::Cancelled);
        }
        let decoded = match decode_base64(line) {
            Ok(d) => d,
            Err(e) => return Step::Failed(e),
        };
        match state {
            State::AwaitPlain => match decode_plain(&decoded) {
                Ok(c) => Step::Done(c),
                Err(e) => Step::Failed(e),
            },
            State::AwaitUser => match String::from_utf8(decoded) {
                Ok(user) if !user.is_empty() => {
                    self.state = State::AwaitPassword(user);
                    Step::Challenge(LOGIN_PASSWORD_PROMPT)
                }
                Ok(_) => Step::Failed(SaslError::Empty),
                Err(_) => Step::Failed(SaslError::NotUtf8),
            },
            State::AwaitPassword(username) => match String::from_utf8(decoded) {
                Ok(password) => Step::Done(Credentials {
                    authzid: None,
                    username,
                    password: Secret::new(password),
                }),
                Err(_) => Step::Failed(SaslError::NotUtf8),
            },
            State::Finished => Step::Failed(SaslError::MalformedPlain),
        }
    }
}

/// Decodes a base64 line; `=` alone is the empty response (RFC 4954 §4).
pub fn decode_base64(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    if line == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Base64)
}

/// Encodes bytes as base64 for a SASL line; the empty response becomes `=`.
pub fn encode_base64(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "=".to_string();
    }
    STANDARD.encode(bytes)
}

/// Splits a decoded PLAIN message into its three fields.
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedPlain);
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| SaslError::NotUtf8)
    };
    let username = text(username)?;
    let password = text(password)?;
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Empty);
    }
    let authzid = text(authzid)?;
    Ok(Credentials {
        authzid: (!authzid.is_empty()).then_some(authzid),
        username,
        password: Secret::new(password),
    })
}

/// Builds the base64 PLAIN response a client sends.
pub fn encode_plain(authzid: Option<&str>, username: &str, password: &str) -> String {
    let mut message = Vec::with_capacity(username.len() + password.len() + 2);
    message.extend_from_slice(authzid.unwrap_or("").as_bytes());
    message.push(0);
    message.extend_from_slice(username.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    STANDARD.encode(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(step: Step) -> Credentials {
        match step {
            Step::Done(c) => c,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn plain_with_initial_response() {
        // RFC 4616 §4 example: authcid "tim", password "tanstaaftanstaaf".
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm"));
        let c = done(step);
        assert_eq!(c.authzid, None);
        assert_eq!(c.username, "tim");
        assert_eq!(c.password.expose(), "tanstaaftanstaaf");
    }

    #[test]
    fn plain_without_initial_response_and_authzid() {
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(step, Step::Challenge(""));
        let line = encode_plain(Some("Ursel"), "Kurt", "xipj3plmq");
        let c = done(ex.respond(line.as_bytes()));
        assert_eq!(c.authzid.as_deref(), Some("Ursel"));
        assert_eq!(c.username, "Kurt");
        assert!(ex.is_finished());
    }

    #[test]
    fn login_prompts_twice() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, None);
        assert_eq!(step, Step::Challenge(LOGIN_USER_PROMPT));
        assert_eq!(
            ex.respond(b"YW5uYQ=="),
            Step::Challenge(LOGIN_PASSWORD_PROMPT)
        );
        let c = done(ex.respond(b"Z2VoZWlt"));
        assert_eq!(
            (c.username.as_str(), c.password.expose().as_str()),
            ("anna", "geheim")
        );
    }

    #[test]
    fn login_with_initial_user() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(b"YW5uYQ=="));
        assert_eq!(step, Step::Challenge(LOGIN_PASSWORD_PROMPT));
        assert_eq!(done(ex.respond(b"Z2VoZWlt")).username, "anna");
    }

    #[test]
    fn failures() {
        let (mut ex, _) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(ex.respond(b"*"), Step::Failed(SaslError::Cancelled));
        let (mut ex, _) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(ex.respond(b"not base64!"), Step::Failed(SaslError::Base64));
        let (mut ex, _) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(ex.respond(b"YWJj"), Step::Failed(SaslError::MalformedPlain));
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"="));
        assert_eq!(step, Step::Failed(SaslError::MalformedPlain));
        let (_, step) = Exchange::start(
            Mechanism::Plain,
            Some(encode_plain(None, "", "x").as_bytes()),
        );
        assert_eq!(step, Step::Failed(SaslError::Empty));
        assert_eq!("login".parse(), Ok(Mechanism::Login));
        assert_eq!("CRAM-MD5".parse::<Mechanism>(), Err(UnknownMechanism));
    }
}
