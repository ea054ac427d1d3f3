//! The SMTP client against scripted server bytes: what the `Session`
//! contract promises (no command between the 220 to STARTTLS and the
//! handshake; closed means closed and drained) and that no secret reaches
//! `Debug`.

use std::time::Instant;

use bytes::Bytes;
use postamt_smtp::{
    ClientConfig, ClientEvent, ClientSession, ClientUsageError, Envelope, ForwardPath, Mechanism,
    ReversePath,
};

fn envelope() -> Envelope {
    Envelope::new(ReversePath::Mailbox("anna@kolleg.de".parse().unwrap()))
        .to(ForwardPath::Mailbox("bob@kolleg.de".parse().unwrap()))
}

fn take(c: &mut ClientSession) -> Vec<u8> {
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    out
}

/// A client that has said EHLO and seen `ehlo` (a whole 250 reply).
fn ready(ehlo: &[u8]) -> (ClientSession, Instant) {
    let now = Instant::now();
    let mut c = ClientSession::new(ClientConfig::new("client.example"), now);
    c.receive(now, b"220 mx.kolleg.de ESMTP\r\n");
    assert_eq!(take(&mut c), b"EHLO client.example\r\n");
    c.receive(now, ehlo);
    assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
    (c, now)
}

#[test]
fn nothing_goes_out_between_the_starttls_reply_and_the_handshake() {
    let (mut c, now) = ready(b"250-mx.kolleg.de\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    c.starttls().unwrap();
    assert_eq!(take(&mut c), b"STARTTLS\r\n");
    // Before the 220 too: nothing may be pipelined behind STARTTLS.
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    // The 220, and plaintext a man in the middle appended to it.
    c.receive(now, b"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n");
    assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.quit(), Err(ClientUsageError::Busy));
    assert_eq!(
        c.send_message(envelope(), Bytes::from_static(b"hi\r\n")),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(
        c.authenticate(Mechanism::Plain, "anna", "geheim"),
        Err(ClientUsageError::Busy)
    );
    assert_eq!(c.starttls(), Err(ClientUsageError::Busy));
    assert_eq!(c.start_message(envelope(), None), Err(ClientUsageError::Busy));
    c.receive(now, b"221 injected too\r\n");
    assert_eq!(c.poll_event(), None);
    assert!(take(&mut c).is_empty());
    assert!(!c.is_closed());
    assert_eq!(c.poll_timeout(), None, "the handshake is the caller's to time");

    c.tls_established().unwrap();
    assert!(c.is_tls());
    assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
    assert_eq!(take(&mut c), b"EHLO client.example\r\n");
    c.receive(now, b"250-mx.kolleg.de\r\n250 AUTH PLAIN LOGIN\r\n");
    let Some(ClientEvent::Ready(caps)) = c.poll_event() else {
        panic!()
    };
    assert!(!caps.starttls && caps.auth == ["PLAIN", "LOGIN"]);
    assert_eq!(c.starttls(), Err(ClientUsageError::NotOffered));
    c.quit().unwrap();
    assert_eq!(take(&mut c), b"QUIT\r\n");
}
