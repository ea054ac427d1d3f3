//! Every notice is parsed back with mail-parser and its fields checked.

mod support;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use postamt_relay::{
    Action, MessageId, Notice, NoticeKind, Outcome, QueuedMessage, QueuedRecipient, Relay,
    RelayConfig, Routes,
};
use postamt_smtp::command::OriginalRecipient;
use postamt_smtp::{Notify, Ret};
use support::*;

const ORIGINAL: &[u8] =
    b"Received: from pc.kolleg.de by mx.kolleg.de; Tue, 14 Nov 2023 22:13:20 +0000\r\n\
From: Anna <anna@kolleg.de>\r\n\
To: carl@schule.example, nobody@schule.example\r\n\
Subject: Hausaufgaben\r\n\
Message-ID: <hw1@kolleg.de>\r\n\
\r\n\
Hallo Carl,\r\nanbei die Aufgaben.\r\n";

fn relay() -> Relay {
    Relay::new(
        RelayConfig::new("mx.kolleg.de"),
        Routes::new().static_route("schule.example", "127.0.0.2:2525".parse().unwrap()),
    )
}

/// One message, two recipients, one 250 and one 550: the failure notice.
fn failure_notice(msg: QueuedMessage) -> Notice {
    let mut relay = relay();
    relay.enqueue(msg).unwrap();
    let Some(Action::Deliver(d)) = relay.poll_action(t(0)) else {
        panic!()
    };
    relay
        .handle(
            t(90),
            d.id(),
            Outcome::Done(report(
                &[
                    ("carl@schule.example", "250 2.1.5 OK"),
                    (
                        "nobody@schule.example",
                        "550 5.1.1 <nobody@schule.example>: No such user here",
                    ),
                ],
                "250 2.0.0 queued",
            )),
        )
        .unwrap();
    match relay.poll_action(t(90)) {
        Some(Action::Notify(n)) => n,
        other => panic!("{other:?}"),
    }
}

fn two_recipients() -> QueuedMessage {
    QueuedMessage::new(
        MessageId::new("q1"),
        "anna@kolleg.de".parse().unwrap(),
        t(0),
        ORIGINAL.len() as u64,
    )
    .with_envid("hw+2B1")
    .with_recipient(QueuedRecipient::new(mailbox("carl@schule.example")))
    .with_recipient(
        QueuedRecipient::new(mailbox("nobody@schule.example")).with_orcpt(OriginalRecipient {
            addr_type: "rfc822".into(),
            address: "Nobody+2Bx@schule.example".into(),
        }),
    )
}

/// The fields of a delivery-status body: the per-message group, then one
/// group per recipient, each as (name, value) with folding undone.
fn status_groups(body: &str) -> Vec<Vec<(String, String)>> {
    let unfolded = body.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .split("\r\n\r\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            g.split("\r\n")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_string(), v.trim().to_string())
                })
                .collect()
        })
        .collect()
}

fn get<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn part_text(part: &mail_parser::MessagePart<'_>) -> String {
    match &part.body {
        PartType::Text(t) => t.to_string(),
        PartType::Binary(b) | PartType::InlineBinary(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn parse(bytes: &[u8]) -> mail_parser::Message<'_> {
    assert!(
        !bytes.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "CRLF only"
    );
    MessageParser::default().parse(bytes).expect("a message")
}

#[test]
fn a_failure_notice_quotes_the_peer() {
    let notice = failure_notice(two_recipients());
    assert_eq!(notice.kind(), NoticeKind::Failure);
    assert_eq!(notice.recipient().to_string(), "anna@kolleg.de");
    assert_eq!(notice.returns(), Ret::Full);
    let bytes = notice.compose(ORIGINAL);
    let dsn = parse(&bytes);
    assert_eq!(dsn.subject(), Some("Undelivered Mail Returned to Sender"));
    let from = dsn.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("MAILER-DAEMON@mx.kolleg.de"));
    assert_eq!(from.name(), Some("Mail Delivery System"));
    assert_eq!(
        dsn.to().unwrap().first().unwrap().address(),
        Some("anna@kolleg.de")
    );
    assert_eq!(dsn.date().unwrap().to_timestamp(), 1_700_000_090);
    assert_eq!(dsn.message_id(), Some("q1.dsn1.1700000090@mx.kolleg.de"));
    assert_eq!(
        dsn.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let ct = dsn.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

    let PartType::Multipart(parts) = &dsn.root_part().body else {
        panic!()
    };
    assert_eq!(parts.len(), 3);
    let [text, status, returned] = [0, 1, 2].map(|i| &dsn.parts[parts[i] as usize]);

    assert_eq!(text.content_type().unwrap().ctype(), "text");
    let readable = part_text(text);
    assert!(
        readable.contains("This is the mail system at host mx.kolleg.de."),
        "{readable}"
    );
    assert!(
        readable.contains(
            "<nobody@schule.example>: host 127.0.0.2 said:\r\n    550 5.1.1 <nobody@schule.example>: No such user here"
        ),
        "{readable}"
    );
    assert!(
        !readable.contains("carl@"),
        "the delivered recipient is not reported"
    );

    let ct = status.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("message", Some("delivery-status"))
    );
    let groups = status_groups(&part_text(status));
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(get(&groups[0], "Reporting-MTA"), Some("dns; mx.kolleg.de"));
    assert_eq!(get(&groups[0], "Original-Envelope-Id"), Some("hw+1"));
    assert_eq!(
        get(&groups[0], "Arrival-Date"),
        Some("Tue, 14 Nov 2023 22:13:20 +0000")
    );
    let r = &groups[1];
    assert_eq!(
        get(r, "Final-Recipient"),
        Some("rfc822; nobody@schule.example")
    );
    assert_eq!(
        get(r, "Original-Recipient"),
        Some("rfc822; Nobody+x@schule.example")
    );
    assert_eq!(get(r, "Action"), Some("failed"));
    assert_eq!(get(r, "Status"), Some("5.1.1"));
    assert_eq!(get(r, "Remote-MTA"), Some("dns; 127.0.0.2"));
    assert_eq!(
        get(r, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <nobody@schule.example>: No such user here")
    );
    assert_eq!(
        get(r, "Last-Attempt-Date"),
        Some("Tue, 14 Nov 2023 22:14:50 +0000")
    );

    let ct = returned.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("message", Some("rfc822")));
    let PartType::Message(original) = &returned.body else {
        panic!("{:?}", returned.body)
    };
    assert_eq!(original.subject(), Some("Hausaufgaben"));
    assert_eq!(original.raw_message(), ORIGINAL, "returned byte for byte");
}

#[test]
fn ret_hdrs_returns_the_headers_only() {
    let notice = failure_notice(two_recipients().with_ret(Ret::Headers));
    assert_eq!(notice.returns(), Ret::Headers);
    let bytes = notice.compose(ORIGINAL);
    let dsn = parse(&bytes);
    let PartType::Multipart(parts) = &dsn.root_part().body else {
        panic!()
    };
    let returned = &dsn.parts[parts[2] as usize];
    let ct = returned.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("rfc822-headers")));
    let head = part_text(returned);
    assert!(head.starts_with("Received: from pc.kolleg.de"), "{head}");
    assert!(head.contains("Subject: Hausaufgaben\r\n"));
    assert!(!head.contains("Hallo"), "{head}");
}

#[test]
fn a_large_message_returns_its_headers_only() {
    let mut big = two_recipients();
    big = QueuedMessage::new(
        big.id().clone(),
        big.reverse_path().clone(),
        big.arrival(),
        50_001,
    )
    .with_recipient(big.recipients()[0].clone())
    .with_recipient(big.recipients()[1].clone());
    assert_eq!(failure_notice(big).returns(), Ret::Headers);
}

#[test]
fn the_boundary_never_occurs_in_the_returned_message() {
    let mut original = ORIGINAL.to_vec();
    original.extend_from_slice(b"--postamt-q1-1\r\n--postamt-q1-1-1--\r\n");
    let bytes = failure_notice(two_recipients()).compose(&original);
    let dsn = parse(&bytes);
    let boundary = dsn
        .content_type()
        .unwrap()
        .attribute("boundary")
        .unwrap()
        .to_string();
    assert_eq!(boundary, "postamt-q1-1-2");
    let PartType::Multipart(parts) = &dsn.root_part().body else {
        panic!()
    };
    assert_eq!(parts.len(), 3);
    let PartType::Message(returned) = &dsn.parts[parts[2] as usize].body else {
        panic!()
    };
    assert_eq!(returned.raw_message(), &original[..]);
}

/// 451 at every attempt for a recipient that asked for DELAY notices.
fn delay_notice() -> Notice {
    let mut relay = relay();
    relay
        .enqueue(
            QueuedMessage::new(
                MessageId::new("q2"),
                "anna@kolleg.de".parse().unwrap(),
                t(0),
                10,
            )
            .with_recipient(
                QueuedRecipient::new(mailbox("carl@schule.example")).with_notify(Notify::On {
                    success: false,
                    failure: true,
                    delay: true,
                }),
            ),
        )
        .unwrap();
    let mut now = 0;
    loop {
        let mut notice = None;
        while let Some(action) = relay.poll_action(t(now)) {
            match action {
                Action::Deliver(d) => relay
                    .handle(
                        t(now),
                        d.id(),
                        Outcome::Done(report(
                            &[("carl@schule.example", "451 4.2.1 try later")],
                            "250 ok",
                        )),
                    )
                    .unwrap(),
                Action::Notify(n) => notice = Some(n),
                Action::Save(_) => {}
                other => panic!("{other:?}"),
            }
        }
        if let Some(n) = notice {
            return n;
        }
        now = relay
            .poll_timeout()
            .unwrap()
            .duration_since(t(0))
            .unwrap()
            .as_secs();
    }
}

#[test]
fn a_delay_notice_says_until_when() {
    let notice = delay_notice();
    assert_eq!(notice.kind(), NoticeKind::Delay);
    assert_eq!(notice.returns(), Ret::Headers);
    let bytes = notice.compose(ORIGINAL);
    let dsn = parse(&bytes);
    assert_eq!(dsn.subject(), Some("Delayed Mail (still being retried)"));
    let PartType::Multipart(parts) = &dsn.root_part().body else {
        panic!()
    };
    let groups = status_groups(&part_text(&dsn.parts[parts[1] as usize]));
    let r = &groups[1];
    assert_eq!(get(r, "Action"), Some("delayed"));
    assert_eq!(get(r, "Status"), Some("4.2.1"));
    assert_eq!(get(r, "Diagnostic-Code"), Some("smtp; 451 4.2.1 try later"));
    assert_eq!(
        get(r, "Will-Retry-Until"),
        Some("Sun, 19 Nov 2023 22:13:20 +0000")
    );
    assert!(part_text(&dsn.parts[parts[0] as usize]).contains("still being tried"));
}

#[test]
fn a_success_notice_says_relayed() {
    let mut relay = relay();
    relay
        .enqueue(
            QueuedMessage::new(
                MessageId::new("q3"),
                "anna@kolleg.de".parse().unwrap(),
                t(0),
                10,
            )
            .with_recipient(
                QueuedRecipient::new(mailbox("carl@schule.example")).with_notify(Notify::On {
                    success: true,
                    failure: false,
                    delay: false,
                }),
            ),
        )
        .unwrap();
    let Some(Action::Deliver(d)) = relay.poll_action(t(0)) else {
        panic!()
    };
    relay
        .envelope(t(1), d.id(), &caps("mx.schule.example", &[]))
        .unwrap()
        .unwrap();
    relay
        .handle(
            t(2),
            d.id(),
            Outcome::Done(report(
                &[("carl@schule.example", "250 ok")],
                "250 2.0.0 Ok: queued",
            )),
        )
        .unwrap();
    let Some(Action::Notify(notice)) = relay.poll_action(t(2)) else {
        panic!()
    };
    let bytes = notice.compose(ORIGINAL);
    let dsn = parse(&bytes);
    assert_eq!(dsn.subject(), Some("Successful Mail Delivery Report"));
    let PartType::Multipart(parts) = &dsn.root_part().body else {
        panic!()
    };
    let groups = status_groups(&part_text(&dsn.parts[parts[1] as usize]));
    assert_eq!(get(&groups[1], "Action"), Some("relayed"));
    assert_eq!(get(&groups[1], "Status"), Some("2.0.0"));
    assert_eq!(
        get(&groups[1], "Diagnostic-Code"),
        Some("smtp; 250 2.0.0 Ok: queued")
    );
    assert_eq!(
        dsn.parts[parts[2] as usize]
            .content_type()
            .unwrap()
            .subtype(),
        Some("rfc822-headers")
    );
}

#[test]
fn an_smtputf8_message_gets_a_global_notice() {
    let msg = QueuedMessage::new(
        MessageId::new("q4"),
        "anna@kolleg.de".parse().unwrap(),
        t(0),
        10,
    )
    .with_smtputf8(true)
    .with_recipient(QueuedRecipient::new(mailbox("jörg@schule.example")));
    let mut relay = relay();
    relay.enqueue(msg).unwrap();
    let Some(Action::Deliver(d)) = relay.poll_action(t(0)) else {
        panic!()
    };
    assert_eq!(
        relay
            .envelope(t(1), d.id(), &caps("mx.schule.example", &[]))
            .unwrap(),
        None
    );
    let Some(Action::Notify(notice)) = relay.poll_action(t(1)) else {
        panic!()
    };
    assert!(notice.needs_smtputf8());
    let original =
        "From: anna@kolleg.de\r\nTo: jörg@schule.example\r\nSubject: Grüße\r\n\r\nHallo Jörg\r\n";
    let bytes = notice.compose(original.as_bytes());
    let dsn = parse(&bytes);
    let PartType::Multipart(parts) = &dsn.root_part().body else {
        panic!()
    };
    let status = &dsn.parts[parts[1] as usize];
    assert_eq!(
        status.content_type().unwrap().subtype(),
        Some("global-delivery-status")
    );
    let groups = status_groups(&part_text(status));
    assert_eq!(
        get(&groups[1], "Final-Recipient"),
        Some("utf-8; jörg@schule.example")
    );
    assert_eq!(get(&groups[1], "Status"), Some("5.6.7"));
    assert_eq!(
        get(&groups[1], "Diagnostic-Code")
            .unwrap()
            .split_once(';')
            .unwrap()
            .0,
        "X-Postamt"
    );
    let returned = &dsn.parts[parts[2] as usize];
    assert_eq!(returned.content_type().unwrap().subtype(), Some("global"));
    let PartType::Message(inner) = &returned.body else {
        panic!("{:?}", returned.body)
    };
    assert_eq!(inner.subject(), Some("Grüße"));
}
