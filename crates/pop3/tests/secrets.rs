//! `Debug` never shows a secret: the session is printed after every single
//! byte of USER/PASS, APOP and AUTH PLAIN (with and without an initial
//! response) and AUTH LOGIN, and after every event and decision.

use std::time::Instant;

use postamt_pop3::{Event, Maildrop, Mechanism, ServerConfig, ServerSession, Session, apop_digest};

const PASSWORD: &str = "topSecret";
/// `topSecret` in base64, as AUTH LOGIN sends it.
const PASSWORD_BASE64: &str = "dG9wU2VjcmV0";
/// `\0bob\0topSecret` in base64, as AUTH PLAIN sends it.
const PLAIN_BLOB: &str = "AGJvYgB0b3BTZWNyZXQ=";
const TIMESTAMP: &str = "<1896.697170952@dbc.mtview.ca.us>";

fn forbidden() -> Vec<String> {
    vec![
        PASSWORD.to_string(),
        PASSWORD_BASE64.to_string(),
        PLAIN_BLOB.to_string(),
        apop_digest(TIMESTAMP, PASSWORD),
    ]
}

fn check(what: &str, text: &str) {
    for secret in forbidden() {
        assert!(!text.contains(&secret), "{what} shows {secret:?}: {text}");
    }
}

#[test]
fn no_secret_in_debug_after_any_byte_or_decision() {
    let now = Instant::now();
    let mut config = ServerConfig::new();
    config.login_without_tls = true;
    config.extensions.sasl = vec![Mechanism::Plain, Mechanism::Login];
    // Four refusals before the login that works: above the default limit.
    config.limits.max_auth_failures = 5;
    let mut s = ServerSession::with_apop(config, now, TIMESTAMP.parse().unwrap());
    let digest = apop_digest(TIMESTAMP, PASSWORD);
    let script = format!(
        "USER bob\r\nPASS {PASSWORD}\r\n\
         APOP bob {digest}\r\n\
         AUTH PLAIN {PLAIN_BLOB}\r\n\
         AUTH PLAIN\r\n{PLAIN_BLOB}\r\n\
         AUTH LOGIN\r\nYm9i\r\n{PASSWORD_BASE64}\r\n\
         QUIT\r\n"
    );
    let mut logins = Vec::new();
    let mut output = Vec::new();
    for &byte in script.as_bytes() {
        s.receive(now, &[byte]);
        check("session after a byte", &format!("{s:?}"));
        while let Some(event) = s.poll_event() {
            check("event", &format!("{event:?}"));
            check("session with the event taken", &format!("{s:?}"));
            match event {
                Event::Login { user, password } => {
                    assert_eq!(
                        (user.as_str(), password.expose().as_str()),
                        ("bob", PASSWORD)
                    );
                    logins.push("user");
                    s.reject_login().unwrap();
                }
                Event::Apop { digest: d, .. } => {
                    assert_eq!(d.expose(), &digest);
                    logins.push("apop");
                    s.reject_login().unwrap();
                }
                Event::Auth {
                    mechanism,
                    credentials,
                } => {
                    assert_eq!(credentials.password.expose(), PASSWORD);
                    logins.push(mechanism.as_str());
                    if mechanism == Mechanism::Login {
                        s.accept_login(Maildrop::new()).unwrap();
                    } else {
                        s.reject_login().unwrap();
                    }
                }
                Event::Commit { deletions } => {
                    assert!(deletions.is_empty());
                    s.commit_done().unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
            check("session after the decision", &format!("{s:?}"));
        }
        s.poll_transmit(&mut output);
        check("session after output", &format!("{s:?}"));
    }
    assert_eq!(logins, ["user", "apop", "PLAIN", "PLAIN", "LOGIN"]);
    assert!(s.is_closed());
    let output = String::from_utf8(output).unwrap();
    check("output", &output);
    assert!(output.ends_with("+OK Logged in, 0 messages (0 octets)\r\n+OK Goodbye\r\n"));
}
