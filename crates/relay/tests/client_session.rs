//! The relay with our own SMTP client session, as the runner will use
//! them: the envelope the relay gives goes through `ClientSession`, the
//! server's bytes are scripted, the session's report goes back to the
//! relay. No sockets.

mod support;

use std::time::Instant;

use postamt_relay::{
    Action, Delivery, MessageId, Outcome, QueuedMessage, QueuedRecipient, RecipientState, Relay,
    RelayConfig, Routes,
};
use postamt_smtp::command::OriginalRecipient;
use postamt_smtp::{ClientConfig, ClientEvent, ClientSession, Notify, Session};
use support::*;

const BODY: &[u8] = b"From: anna@kolleg.de\r\nSubject: hi\r\n\r\nHallo\r\n";

fn relay_with_one_message() -> (Relay, Delivery) {
    let mut relay = Relay::new(
        RelayConfig::new("mx.kolleg.de"),
        Routes::new().static_route("schule.example", "127.0.0.2:2525".parse().unwrap()),
    );
    relay
        .enqueue(
            QueuedMessage::new(
                MessageId::new("q1"),
                "anna@kolleg.de".parse().unwrap(),
                t(0),
                46,
            )
            .with_envid("E1")
            .with_recipient(
                QueuedRecipient::new(mailbox("carl@schule.example"))
                    .with_notify(Notify::On {
                        success: false,
                        failure: true,
                        delay: false,
                    })
                    .with_orcpt(OriginalRecipient {
                        addr_type: "rfc822".into(),
                        address: "carl@schule.example".into(),
                    }),
            )
            .with_recipient(QueuedRecipient::new(mailbox("nobody@schule.example")))
            .with_recipient(QueuedRecipient::new(mailbox("full@schule.example"))),
        )
        .unwrap();
    let Some(Action::Deliver(d)) = relay.poll_action(t(0)) else {
        panic!()
    };
    (relay, d)
}

/// Greets, answers EHLO, and returns the client with the relay's envelope
/// handed to it, and what the client wrote for the transaction.
fn start(relay: &mut Relay, d: &Delivery, at: Instant) -> (ClientSession, Vec<u8>) {
    let mut client = ClientSession::new(ClientConfig::new("mx.kolleg.de"), at);
    let mut out = Vec::new();
    client.receive(at, b"220 mx.schule.example ESMTP\r\n");
    client.poll_transmit(&mut out);
    assert_eq!(out, b"EHLO mx.kolleg.de\r\n");
    client.receive(
        at,
        b"250-mx.schule.example hello\r\n250-PIPELINING\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n",
    );
    let Some(ClientEvent::Ready(caps)) = client.poll_event() else {
        panic!()
    };
    let envelope = relay.envelope(t(1), d.id(), &caps).unwrap().unwrap();
    client.send_message(envelope, BODY).unwrap();
    out.clear();
    client.poll_transmit(&mut out);
    (client, out)
}

#[test]
fn a_whole_transaction_through_the_client_session() {
    let (mut relay, d) = relay_with_one_message();
    let at = Instant::now();
    let (mut client, out) = start(&mut relay, &d, at);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "MAIL FROM:<anna@kolleg.de> ENVID=E1\r\n\
         RCPT TO:<carl@schule.example> NOTIFY=FAILURE ORCPT=rfc822;carl@schule.example\r\n\
         RCPT TO:<nobody@schule.example>\r\n\
         RCPT TO:<full@schule.example>\r\n\
         DATA\r\n"
    );
    client.receive(
        at,
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n452 4.2.2 mailbox full\r\n354 go\r\n",
    );
    let mut out = Vec::new();
    client.poll_transmit(&mut out);
    assert!(out.ends_with(b"Hallo\r\n.\r\n"));
    client.receive(at, b"250 2.0.0 queued as 9\r\n");
    let Some(ClientEvent::Done(report)) = client.poll_event() else {
        panic!()
    };
    relay.handle(t(2), d.id(), Outcome::Done(report)).unwrap();

    let msg = relay.message(&MessageId::new("q1")).unwrap();
    assert_eq!(
        msg.recipients()[0].state(),
        &RecipientState::Delivered {
            reply: reply("250 2.0.0 queued as 9")
        }
    );
    assert_eq!(
        msg.recipients()[1].state(),
        &RecipientState::Failed {
            reply: reply("550 5.1.1 no such user")
        }
    );
    assert!(matches!(
        msg.recipients()[2].state(),
        RecipientState::Deferred { attempts: 1, last_reply, .. } if last_reply == &reply("452 4.2.2 mailbox full")
    ));
    let actions = drain(&mut relay, t(2));
    let [Action::Notify(n), Action::Save(_)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(n.recipients().len(), 1);
    assert_eq!(
        n.recipients()[0].final_recipient(),
        &mailbox("nobody@schule.example")
    );
}

#[test]
fn a_connection_lost_mid_transaction() {
    let (mut relay, d) = relay_with_one_message();
    let at = Instant::now();
    let (mut client, _) = start(&mut relay, &d, at);
    // MAIL and the first two RCPTs are answered, then the line goes dead.
    client.receive(
        at,
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n",
    );
    client.receive_eof(at);
    let Some(ClientEvent::Done(report)) = client.poll_event() else {
        panic!()
    };
    relay.handle(t(2), d.id(), Outcome::Done(report)).unwrap();
    let msg = relay.message(&MessageId::new("q1")).unwrap();
    let states: Vec<&RecipientState> = msg.recipients().iter().map(|r| r.state()).collect();
    // Accepted but never sent: deferred. Refused: failed. Unanswered: deferred.
    assert!(
        matches!(states[0], RecipientState::Deferred { .. }),
        "{states:?}"
    );
    assert!(
        matches!(states[1], RecipientState::Failed { .. }),
        "{states:?}"
    );
    assert!(
        matches!(states[2], RecipientState::Deferred { .. }),
        "{states:?}"
    );
    // At the retry, the two deferred travel together again.
    drain(&mut relay, t(2));
    let retry = drain(&mut relay, t(2 + 5 * MIN));
    let [Action::Deliver(again)] = &retry[..] else {
        panic!("{retry:?}")
    };
    assert_eq!(
        again.recipients(),
        [
            mailbox("carl@schule.example"),
            mailbox("full@schule.example")
        ]
    );
}
