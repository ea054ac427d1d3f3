//! The POP3 client against scripted server bytes: what the `Session`
//! contract promises (no command between the `+OK` to STLS and the
//! handshake; closed means closed and drained) and that no secret reaches
//! `Debug`.

use std::time::Instant;

use postamt_pop3::{ClientConfig, ClientEvent, ClientSession, ClientUsageError, MessageNumber};
use postamt_wire::sasl::Mechanism;

fn take(c: &mut ClientSession) -> Vec<u8> {
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    out
}

/// A client that has read the greeting and `capa` (a whole CAPA response).
fn ready(capa: &[u8]) -> (ClientSession, Instant) {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::default(), now);
    c.receive(now, b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n");
    assert_eq!(take(&mut c), b"CAPA\r\n");
    c.receive(now, capa);
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    (c, now)
}

#[test]
fn nothing_goes_out_between_the_stls_reply_and_the_handshake() {
    let (mut c, now) = ready(b"+OK\r\nUSER\r\nSTLS\r\nSASL PLAIN\r\nPIPELINING\r\n.\r\n");
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    c.stls().unwrap();
    assert_eq!(take(&mut c), b"STLS\r\n");
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    // The +OK, and plaintext a man in the middle appended to it.
    c.receive(now, b"+OK begin TLS\r\n+OK injected\r\n");
    assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(c.login_user("bob", "topSecret"), Err(ClientUsageError::Busy));
    assert_eq!(c.login_apop("bob", "topSecret"), Err(ClientUsageError::Busy));
    assert_eq!(
        c.authenticate(Mechanism::Plain, "bob", "topSecret"),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(c.stls(), Err(ClientUsageError::Busy));
    assert_eq!(c.stat(), Err(ClientUsageError::Busy));
    assert_eq!(
        c.retr(MessageNumber::new(1).unwrap()),
        Err(ClientUsageError::Busy)
    );
    c.receive(now, b"+OK more injected\r\n");
    assert_eq!(c.poll_event(), None);
    assert!(take(&mut c).is_empty());
    assert!(!c.is_closed());
    assert_eq!(c.poll_timeout(), None, "the handshake is the caller's to time");

    c.tls_established().unwrap();
    assert!(c.is_tls());
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    assert_eq!(take(&mut c), b"CAPA\r\n");
    c.receive(now, b"+OK\r\nUSER\r\n.\r\n");
    let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
        panic!()
    };
    assert!(caps.user && !caps.stls && !caps.pipelining);
    assert_eq!(c.stls(), Err(ClientUsageError::NotOffered));
    c.quit().unwrap();
    assert_eq!(take(&mut c), b"QUIT\r\n");
}
