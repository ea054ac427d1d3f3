//! The relay driven through its public API with simulated time: planning,
//! results, the retry schedule, which notices go out.

mod support;

use std::time::Duration;

use postamt_relay::{
    Action, Delivery, DsnAction, HostFailure, MessageId, MxAnswer, MxRecord, NextHop, NoticeKind,
    Outcome, QueuedRecipient, RecipientState, Relay, RelayConfig, RelayError, Routes,
};
use postamt_smtp::command::OriginalRecipient;
use postamt_smtp::{Failure, Notify, Report, Ret};
use support::*;

fn hop(s: &str) -> NextHop {
    s.parse().unwrap()
}

/// kolleg.de is ours; schule.example and also.example go to one host,
/// other.example to another; the rest by DNS.
fn routes() -> Routes {
    Routes::new()
        .local_domain("kolleg.de")
        .static_route("schule.example", hop("127.0.0.2:2525"))
        .static_route("also.example", hop("127.0.0.2:2525"))
        .static_route("other.example", hop("127.0.0.3:2525"))
}

fn relay() -> Relay {
    Relay::new(RelayConfig::new("mx.kolleg.de"), routes())
}

fn deliveries(actions: Vec<Action>) -> Vec<Delivery> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Deliver(d) => d,
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect()
}

fn state(relay: &Relay, id: &str, rcpt: usize) -> RecipientState {
    relay.message(&MessageId::new(id)).unwrap().recipients()[rcpt]
        .state()
        .clone()
}

#[test]
fn one_transaction_per_first_host() {
    let mut relay = relay();
    relay
        .enqueue(message(
            "m1",
            "anna@kolleg.de",
            &[
                "carl@schule.example",
                "dora@other.example",
                "emil@also.example",
                "fritz@schule.example",
            ],
        ))
        .unwrap();
    let ds = deliveries(drain(&mut relay, t(0)));
    assert_eq!(ds.len(), 2, "exactly two transactions");
    assert_eq!(ds[0].host(), &hop("127.0.0.2:2525"));
    let names = |d: &Delivery| {
        d.recipients()
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&ds[0]),
        [
            "carl@schule.example",
            "emil@also.example",
            "fritz@schule.example"
        ]
    );
    assert_eq!(ds[1].host(), &hop("127.0.0.3:2525"));
    assert_eq!(names(&ds[1]), ["dora@other.example"]);
    assert_eq!(ds[0].message(), &MessageId::new("m1"));
    assert_eq!(ds[0].from().to_string(), "<anna@kolleg.de>");
    assert_eq!(relay.in_flight(), 2);
    // Nothing is due while both run.
    assert_eq!(relay.poll_timeout(), None);
    assert!(drain(&mut relay, t(10)).is_empty());

    let envelope = relay
        .envelope(
            t(1),
            ds[0].id(),
            &caps("mx.schule.example", &["PIPELINING"]),
        )
        .unwrap()
        .unwrap();
    assert_eq!(envelope.recipients.len(), 3);
    relay
        .handle(
            t(2),
            ds[0].id(),
            Outcome::Done(report(
                &[
                    ("carl@schule.example", "250 2.1.5 OK"),
                    ("emil@also.example", "250 2.1.5 OK"),
                    ("fritz@schule.example", "250 2.1.5 OK"),
                ],
                "250 2.0.0 queued as 7",
            )),
        )
        .unwrap();
    assert_eq!(
        drain(&mut relay, t(2)),
        [Action::Save(MessageId::new("m1"))]
    );
    assert_eq!(
        state(&relay, "m1", 0),
        RecipientState::Delivered {
            reply: reply("250 2.0.0 queued as 7")
        }
    );
    relay
        .handle(
            t(3),
            ds[1].id(),
            Outcome::Done(report(&[("dora@other.example", "250 ok")], "250 ok")),
        )
        .unwrap();
    assert_eq!(
        drain(&mut relay, t(3)),
        [Action::Remove(MessageId::new("m1"))]
    );
    assert!(relay.message(&MessageId::new("m1")).is_none());
    assert_eq!(relay.poll_timeout(), None);
    // A finished delivery is not known any more.
    assert_eq!(
        relay.handle(t(4), ds[1].id(), Outcome::NoSmtpUtf8),
        Err(RelayError::UnknownDelivery(ds[1].id()))
    );
}

#[test]
fn the_concurrency_bound_holds() {
    let mut config = RelayConfig::new("mx.kolleg.de");
    config.concurrency = 1;
    let mut relay = Relay::new(config, routes());
    relay
        .enqueue(message("a", "anna@kolleg.de", &["carl@schule.example"]))
        .unwrap();
    relay
        .enqueue(message("b", "anna@kolleg.de", &["dora@other.example"]))
        .unwrap();
    let first = deliveries(drain(&mut relay, t(0)));
    assert_eq!(first.len(), 1);
    assert_eq!(
        relay.poll_timeout(),
        None,
        "the slot is taken: wait for the result"
    );
    relay
        .handle(
            t(1),
            first[0].id(),
            Outcome::Done(report(&[("carl@schule.example", "250 ok")], "250 ok")),
        )
        .unwrap();
    let actions = drain(&mut relay, t(1));
    assert_eq!(actions.len(), 2);
    assert_eq!(actions[0], Action::Remove(MessageId::new("a")));
    let Action::Deliver(second) = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(second.message(), &MessageId::new("b"));
}

#[test]
fn dns_answers_come_from_the_caller() {
    let mut relay = relay();
    relay
        .enqueue(message(
            "m",
            "anna@kolleg.de",
            &["x@dns.example", "y@DNS.example"],
        ))
        .unwrap();
    relay
        .enqueue(message("n", "anna@kolleg.de", &["z@dns.example"]))
        .unwrap();
    assert_eq!(
        relay.poll_action(t(0)),
        Some(Action::Resolve("dns.example".into()))
    );
    // Waiting for the answer: nothing to do, nothing due.
    assert_eq!(relay.poll_action(t(0)), None);
    assert_eq!(relay.poll_timeout(), None);
    let answer = MxAnswer::Records(vec![
        MxRecord::new(20, "backup.dns.example."),
        MxRecord::new(10, "mx1.dns.example."),
    ]);
    relay.resolved("dns.example", &answer, 7);
    let ds = deliveries(drain(&mut relay, t(0)));
    assert_eq!(ds.len(), 2, "one per message, the answer serves both");
    assert_eq!(
        ds[0].hosts(),
        [hop("mx1.dns.example"), hop("backup.dns.example")]
    );
    assert_eq!(ds[0].recipients().len(), 2);

    // The first host cannot be reached: the same delivery, the next host.
    relay
        .handle(
            t(1),
            ds[0].id(),
            Outcome::HostFailed(HostFailure::Unreachable("connection refused".into())),
        )
        .unwrap();
    let again = deliveries(drain(&mut relay, t(1)));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id(), ds[0].id());
    assert_eq!(again[0].host(), &hop("backup.dns.example"));
    // It greets with 421 too: every recipient deferred with that reply.
    relay
        .handle(
            t(2),
            ds[0].id(),
            Outcome::HostFailed(HostFailure::Refused(reply("421 4.3.2 busy"))),
        )
        .unwrap();
    assert_eq!(drain(&mut relay, t(2)), [Action::Save(MessageId::new("m"))]);
    let deferred = RecipientState::Deferred {
        attempts: 1,
        next_attempt: t(2 + 5 * MIN),
        last_reply: reply("421 4.3.2 busy"),
    };
    assert_eq!(state(&relay, "m", 0), deferred);
    assert_eq!(state(&relay, "m", 1), deferred);
    relay
        .handle(
            t(3),
            ds[1].id(),
            Outcome::Done(report(&[("z@dns.example", "250 ok")], "250 ok")),
        )
        .unwrap();
    assert_eq!(
        drain(&mut relay, t(3)),
        [Action::Remove(MessageId::new("n"))]
    );
    assert_eq!(relay.poll_timeout(), Some(t(2 + 5 * MIN)));
    // The retry asks DNS again: answers are not kept between attempts.
    assert_eq!(
        relay.poll_action(t(2 + 5 * MIN)),
        Some(Action::Resolve("dns.example".into()))
    );
}

#[test]
fn domains_sharing_an_mx_host_travel_together() {
    let mut relay = relay();
    relay
        .enqueue(message(
            "m",
            "anna@kolleg.de",
            &["x@one.example", "z@schule.example", "y@two.example"],
        ))
        .unwrap();
    // The runner asks DNS without waiting, and polls meanwhile.
    assert_eq!(
        relay.poll_action(t(0)),
        Some(Action::Resolve("one.example".into()))
    );
    assert_eq!(
        relay.poll_action(t(0)),
        Some(Action::Resolve("two.example".into()))
    );
    assert_eq!(
        relay.poll_action(t(0)),
        None,
        "the message waits for its answers"
    );
    assert_eq!(relay.poll_timeout(), None);
    let shared = MxAnswer::Records(vec![MxRecord::new(10, "mx.shared.example")]);
    relay.resolved("one.example", &shared, 0);
    assert_eq!(relay.poll_action(t(0)), None);
    assert_eq!(relay.poll_timeout(), None);
    relay.resolved("two.example", &shared, 0);
    let ds = deliveries(drain(&mut relay, t(0)));
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0].host(), &hop("mx.shared.example"));
    assert_eq!(
        ds[0].recipients(),
        [mailbox("x@one.example"), mailbox("y@two.example")]
    );
    assert_eq!(ds[1].host(), &hop("127.0.0.2:2525"));
    assert_eq!(ds[1].recipients(), [mailbox("z@schule.example")]);
}

#[test]
fn dns_failures() {
    let mut relay = relay();
    relay
        .enqueue(message(
            "m",
            "anna@kolleg.de",
            &["a@nomail.example", "b@flaky.example"],
        ))
        .unwrap();
    assert_eq!(
        relay.poll_action(t(0)),
        Some(Action::Resolve("nomail.example".into()))
    );
    relay.resolved(
        "nomail.example",
        &MxAnswer::Records(vec![MxRecord::new(0, ".")]),
        0,
    );
    assert_eq!(
        relay.poll_action(t(0)),
        Some(Action::Resolve("flaky.example".into()))
    );
    relay.resolved("flaky.example", &MxAnswer::TryAgain("SERVFAIL".into()), 0);
    let actions = drain(&mut relay, t(0));
    let [Action::Notify(notice), Action::Save(_)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(notice.kind(), NoticeKind::Failure);
    assert_eq!(notice.recipient().to_string(), "anna@kolleg.de");
    let r = &notice.recipients()[0];
    assert_eq!(r.final_recipient().to_string(), "a@nomail.example");
    assert_eq!(r.status().to_string(), "5.1.10");
    assert_eq!(r.reply().unwrap().code(), 556);
    assert_eq!(r.remote_mta(), None);
    assert!(matches!(
        state(&relay, "m", 1),
        RecipientState::Deferred { attempts: 1, .. }
    ));
    assert_eq!(relay.poll_timeout(), Some(t(5 * MIN)));
}

#[test]
fn mixed_replies_in_one_transaction() {
    let mut relay = relay();
    relay
        .enqueue(message(
            "m",
            "anna@kolleg.de",
            &[
                "carl@schule.example",
                "nobody@schule.example",
                "busy@schule.example",
            ],
        ))
        .unwrap();
    let d = deliveries(drain(&mut relay, t(0))).remove(0);
    relay
        .handle(
            t(1),
            d.id(),
            Outcome::Done(report(
                &[
                    ("carl@schule.example", "250 2.1.5 OK"),
                    ("nobody@schule.example", "550 5.1.1 No such user here"),
                    ("busy@schule.example", "452 4.2.2 Mailbox full"),
                ],
                "250 2.0.0 OK",
            )),
        )
        .unwrap();
    let actions = drain(&mut relay, t(1));
    let [Action::Notify(notice), Action::Save(_)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(notice.recipients().len(), 1);
    let r = &notice.recipients()[0];
    assert_eq!(r.final_recipient().to_string(), "nobody@schule.example");
    assert_eq!(r.action(), DsnAction::Failed);
    assert_eq!(r.reply().unwrap(), &reply("550 5.1.1 No such user here"));
    assert_eq!(r.remote_mta(), Some("127.0.0.2"));
    assert!(matches!(
        state(&relay, "m", 0),
        RecipientState::Delivered { .. }
    ));
    assert!(matches!(
        state(&relay, "m", 1),
        RecipientState::Failed { .. }
    ));
    assert!(matches!(
        state(&relay, "m", 2),
        RecipientState::Deferred { attempts: 1, .. }
    ));
    // Only the deferred one goes at the retry.
    let retry = deliveries(drain(&mut relay, t(1 + 5 * MIN)));
    assert_eq!(retry[0].recipients(), [mailbox("busy@schule.example")]);
}

#[test]
fn whole_transaction_failures() {
    let cases: Vec<(Report, Option<&str>)> = vec![
        (
            Report {
                accepted: vec![],
                refused: vec![],
                outcome: Err(Failure::Sender(reply("553 5.7.1 Sender rejected"))),
            },
            Some("553 5.7.1 Sender rejected"),
        ),
        (
            Report {
                accepted: vec![(path("carl@schule.example"), reply("250 ok"))],
                refused: vec![],
                outcome: Err(Failure::Message(reply("554 5.7.1 Spam"))),
            },
            Some("554 5.7.1 Spam"),
        ),
        (
            Report {
                accepted: vec![],
                refused: vec![],
                outcome: Err(Failure::TooBig {
                    size: 300,
                    limit: 100,
                }),
            },
            Some("552 5.3.4 Message size exceeds the next hop's limit of 100 octets"),
        ),
        (
            Report {
                accepted: vec![(path("carl@schule.example"), reply("250 ok"))],
                refused: vec![],
                outcome: Err(Failure::Data(reply("451 4.3.0 try later"))),
            },
            None,
        ),
        (
            Report {
                accepted: vec![(path("carl@schule.example"), reply("250 ok"))],
                refused: vec![],
                outcome: Err(Failure::ConnectionLost),
            },
            None,
        ),
    ];
    for (report, failed) in cases {
        let mut relay = relay();
        relay
            .enqueue(message("m", "anna@kolleg.de", &["carl@schule.example"]))
            .unwrap();
        let d = deliveries(drain(&mut relay, t(0))).remove(0);
        relay
            .handle(t(1), d.id(), Outcome::Done(report.clone()))
            .unwrap();
        let actions = drain(&mut relay, t(1));
        match failed {
            Some(line) => {
                let [Action::Notify(n), Action::Remove(_)] = &actions[..] else {
                    panic!("{actions:?}")
                };
                assert_eq!(
                    n.recipients()[0].reply().unwrap(),
                    &reply(line),
                    "{report:?}"
                );
            }
            None => {
                assert_eq!(actions, [Action::Save(MessageId::new("m"))], "{report:?}");
                assert_eq!(state(&relay, "m", 0).attempts(), 1);
            }
        }
    }
}

#[test]
fn interrupted_transactions_defer_the_unanswered() {
    for lost in [true, false] {
        let mut relay = relay();
        relay
            .enqueue(message(
                "m",
                "anna@kolleg.de",
                &["a@schule.example", "b@schule.example", "c@schule.example"],
            ))
            .unwrap();
        let d = deliveries(drain(&mut relay, t(0))).remove(0);
        let answered = vec![
            (path("a@schule.example"), reply("250 2.1.5 ok")),
            (path("b@schule.example"), reply("550 5.1.1 unknown")),
        ];
        let outcome = if lost {
            Outcome::ConnectionLost { answered }
        } else {
            Outcome::Timeout { answered }
        };
        relay.handle(t(1), d.id(), outcome).unwrap();
        let actions = drain(&mut relay, t(1));
        assert_eq!(actions.len(), 2, "{actions:?}");
        let RecipientState::Deferred { last_reply, .. } = state(&relay, "m", 0) else {
            panic!()
        };
        assert_eq!(last_reply.enhanced().unwrap().to_string(), "4.4.2");
        assert!(last_reply.text().contains("127.0.0.2"), "{last_reply}");
        assert!(matches!(
            state(&relay, "m", 1),
            RecipientState::Failed { .. }
        ));
        assert!(matches!(
            state(&relay, "m", 2),
            RecipientState::Deferred { .. }
        ));
    }
}

#[test]
fn a_peer_with_our_name_is_a_loop() {
    let mut relay = relay();
    relay
        .enqueue(message("m", "anna@kolleg.de", &["carl@schule.example"]))
        .unwrap();
    let d = deliveries(drain(&mut relay, t(0))).remove(0);
    let envelope = relay
        .envelope(t(1), d.id(), &caps("MX.Kolleg.DE", &[]))
        .unwrap();
    assert_eq!(envelope, None);
    let actions = drain(&mut relay, t(1));
    let [Action::Notify(n), Action::Remove(_)] = &actions[..] else {
        panic!("{actions:?}")
    };
    let reply = n.recipients()[0].reply().unwrap();
    assert_eq!(reply.code(), 554);
    assert_eq!(reply.enhanced().unwrap().to_string(), "5.4.6");
    assert_eq!(
        reply.text(),
        "Mail loops back to myself: 127.0.0.2 greets as MX.Kolleg.DE"
    );
}

#[test]
fn smtputf8_is_needed_of_the_next_hop() {
    let mut relay = relay();
    relay
        .enqueue(message("m", "anna@kolleg.de", &["jörg@schule.example"]).with_smtputf8(true))
        .unwrap();
    let d = deliveries(drain(&mut relay, t(0))).remove(0);
    assert_eq!(
        relay
            .envelope(t(1), d.id(), &caps("mx.schule.example", &["8BITMIME"]))
            .unwrap(),
        None
    );
    let actions = drain(&mut relay, t(1));
    let [Action::Notify(n), Action::Remove(_)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(n.recipients()[0].status().to_string(), "5.6.7");
    assert!(n.needs_smtputf8());

    // With SMTPUTF8 offered, the envelope asks for it.
    let mut relay = self::relay();
    relay
        .enqueue(message("m", "anna@kolleg.de", &["jörg@schule.example"]).with_smtputf8(true))
        .unwrap();
    let d = deliveries(drain(&mut relay, t(0))).remove(0);
    let envelope = relay
        .envelope(t(1), d.id(), &caps("mx.schule.example", &["SMTPUTF8"]))
        .unwrap()
        .unwrap();
    assert!(envelope.params.smtputf8);
}

fn dsn_message() -> postamt_relay::QueuedMessage {
    message("m", "anna@kolleg.de", &[])
        .with_envid("QQ+2B1")
        .with_ret(Ret::Headers)
        .with_eight_bit(true)
        .with_recipient(
            QueuedRecipient::new(mailbox("carl@schule.example"))
                .with_notify(Notify::On {
                    success: true,
                    failure: true,
                    delay: false,
                })
                .with_orcpt(OriginalRecipient {
                    addr_type: "rfc822".into(),
                    address: "carl+2Balias@schule.example".into(),
                }),
        )
}

#[test]
fn dsn_parameters_go_on_when_offered() {
    let mut relay = relay();
    relay.enqueue(dsn_message()).unwrap();
    let d = deliveries(drain(&mut relay, t(0))).remove(0);
    let envelope = relay
        .envelope(
            t(1),
            d.id(),
            &caps("mx.schule.example", &["DSN", "8BITMIME"]),
        )
        .unwrap()
        .unwrap();
    let mut wire = Vec::new();
    postamt_smtp::Command::Mail {
        from: envelope.from.clone(),
        params: envelope.params.clone(),
    }
    .render(&mut wire);
    postamt_smtp::Command::Rcpt {
        to: envelope.recipients[0].0.clone(),
        params: envelope.recipients[0].1.clone(),
    }
    .render(&mut wire);
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        "MAIL FROM:<anna@kolleg.de> BODY=8BITMIME RET=HDRS ENVID=QQ+2B1\r\n\
         RCPT TO:<carl@schule.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;carl+2Balias@schule.example\r\n"
    );
    relay
        .handle(
            t(2),
            d.id(),
            Outcome::Done(report(&[("carl@schule.example", "250 ok")], "250 ok")),
        )
        .unwrap();
    // The next hop reports success itself: nothing from us.
    assert_eq!(
        drain(&mut relay, t(2)),
        [Action::Remove(MessageId::new("m"))]
    );
}

#[test]
fn success_is_reported_when_the_next_hop_has_no_dsn() {
    let mut relay = relay();
    relay.enqueue(dsn_message()).unwrap();
    let d = deliveries(drain(&mut relay, t(0))).remove(0);
    let envelope = relay
        .envelope(t(1), d.id(), &caps("mx.schule.example", &[]))
        .unwrap()
        .unwrap();
    let mut wire = Vec::new();
    postamt_smtp::Command::Mail {
        from: envelope.from.clone(),
        params: envelope.params.clone(),
    }
    .render(&mut wire);
    // No DSN, no 8BITMIME offered: neither goes on.
    assert_eq!(wire, b"MAIL FROM:<anna@kolleg.de>\r\n");
    assert_eq!(envelope.recipients[0].1, Default::default());
    relay
        .handle(
            t(2),
            d.id(),
            Outcome::Done(report(
                &[("carl@schule.example", "250 ok")],
                "250 2.0.0 done",
            )),
        )
        .unwrap();
    let actions = drain(&mut relay, t(2));
    let [Action::Notify(n), Action::Remove(_)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(n.kind(), NoticeKind::Success);
    assert_eq!(n.recipients()[0].action(), DsnAction::Relayed);
    assert_eq!(n.recipients()[0].status().to_string(), "2.0.0");
}

#[test]
fn no_notice_for_never_nor_for_bounces() {
    for (from, notify, postmaster) in [
        ("anna@kolleg.de", Some(Notify::Never), false),
        ("<>", None, true),
        (
            "<>",
            Some(Notify::On {
                success: true,
                failure: true,
                delay: true,
            }),
            true,
        ),
    ] {
        let mut recipient = QueuedRecipient::new(mailbox("carl@schule.example"));
        if let Some(n) = notify {
            recipient = recipient.with_notify(n);
        }
        let mut relay = relay();
        relay
            .enqueue(message("m", from, &[]).with_recipient(recipient))
            .unwrap();
        let d = deliveries(drain(&mut relay, t(0))).remove(0);
        relay
            .handle(
                t(1),
                d.id(),
                Outcome::Done(report(&[("carl@schule.example", "550 5.1.1 no")], "250 ok")),
            )
            .unwrap();
        let actions = drain(&mut relay, t(1));
        if !postmaster {
            assert_eq!(
                actions,
                [Action::Remove(MessageId::new("m"))],
                "{from} {notify:?}"
            );
            continue;
        }
        // A failed message from <> is never answered: the postmaster gets
        // it (a double bounce), with the failed notice attached.
        let [Action::Notify(n), Action::Remove(_)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(n.kind(), NoticeKind::DoubleBounce);
        assert_eq!(n.recipient().to_string(), "postmaster@mx.kolleg.de");
        assert_eq!(n.returns(), Ret::Full);
        let text =
            String::from_utf8(n.compose(b"Subject: Undelivered Mail\r\n\r\nreport\r\n")).unwrap();
        assert!(
            text.contains("Subject: Undeliverable Mail Delivery Notice\r\n"),
            "{text}"
        );
        assert!(text.contains("To: <postmaster@mx.kolleg.de>\r\n"), "{text}");
        assert!(text.contains("Final-Recipient: rfc822; carl@schule.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"), "{text}");
        assert!(
            text.contains("Subject: Undelivered Mail\r\n\r\nreport\r\n"),
            "{text}"
        );
    }
}

/// Answers 451 to every attempt; returns each attempt's time and the
/// actions after it.
fn fail_always(relay: &mut Relay, until: u64) -> Vec<(u64, Vec<Action>)> {
    let mut log = Vec::new();
    let mut now = 0;
    while now <= until {
        let mut ds = Vec::new();
        for a in drain(relay, t(now)) {
            match a {
                Action::Deliver(d) => ds.push(d),
                other => panic!("{other:?}"),
            }
        }
        if ds.is_empty() {
            break;
        }
        for d in ds {
            let rcpts: Vec<(String, &str)> = d
                .recipients()
                .iter()
                .map(|m| (m.to_string(), "451 4.3.0 not now"))
                .collect();
            let rcpts: Vec<(&str, &str)> = rcpts.iter().map(|(a, b)| (a.as_str(), *b)).collect();
            relay
                .handle(t(now), d.id(), Outcome::Done(report(&rcpts, "250 ok")))
                .unwrap();
        }
        log.push((now, drain(relay, t(now))));
        let Some(next) = relay.poll_timeout() else {
            break;
        };
        now = next.duration_since(t(0)).unwrap().as_secs();
    }
    log
}

#[test]
fn the_retry_schedule_doubles_then_gives_up() {
    let mut relay = relay();
    relay
        .enqueue(message("m", "anna@kolleg.de", &["carl@schule.example"]))
        .unwrap();
    let log = fail_always(&mut relay, 6 * DAY);
    let times: Vec<u64> = log.iter().map(|(at, _)| *at).collect();
    assert_eq!(
        &times[..7],
        [
            0,
            5 * MIN,
            15 * MIN,
            35 * MIN,
            75 * MIN,
            135 * MIN,
            195 * MIN
        ]
    );
    assert!(times.windows(2).skip(5).all(|w| w[1] - w[0] <= HOUR));
    assert_eq!(
        *times.last().unwrap(),
        5 * DAY,
        "the last attempt is at the end of the lifetime"
    );
    let (_, last) = log.last().unwrap();
    let [Action::Notify(n), Action::Remove(_)] = &last[..] else {
        panic!("{last:?}")
    };
    assert_eq!(n.kind(), NoticeKind::Failure);
    assert_eq!(n.recipients()[0].action(), DsnAction::Failed);
    assert_eq!(n.recipients()[0].status().to_string(), "4.3.0");
    assert_eq!(
        n.recipients()[0].reply().unwrap(),
        &reply("451 4.3.0 not now")
    );
    // Every other attempt only saved the state.
    assert!(
        log[..log.len() - 1]
            .iter()
            .all(|(_, a)| a == &[Action::Save(MessageId::new("m"))])
    );
}

#[test]
fn a_short_schedule_as_the_tests_of_the_server_use() {
    let mut config = RelayConfig::new("mx.kolleg.de");
    config.retry_after = Duration::from_secs(1);
    config.retry_max = Duration::from_secs(2);
    config.queue_lifetime = Duration::from_secs(6);
    let mut relay = Relay::new(config, routes());
    relay
        .enqueue(message("m", "anna@kolleg.de", &["carl@schule.example"]))
        .unwrap();
    let times: Vec<u64> = fail_always(&mut relay, 60)
        .iter()
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(times, [0, 1, 3, 5, 6]);
    assert!(relay.message(&MessageId::new("m")).is_none());
}

#[test]
fn a_delay_notice_goes_once_after_four_hours() {
    let mut relay = relay();
    relay
        .enqueue(message("m", "anna@kolleg.de", &[]).with_recipient(
            QueuedRecipient::new(mailbox("carl@schule.example")).with_notify(Notify::On {
                success: false,
                failure: true,
                delay: true,
            }),
        ))
        .unwrap();
    let log = fail_always(&mut relay, 6 * DAY);
    let notices: Vec<(u64, NoticeKind)> = log
        .iter()
        .flat_map(|(at, actions)| {
            actions.iter().filter_map(move |a| match a {
                Action::Notify(n) => Some((*at, n.kind())),
                _ => None,
            })
        })
        .collect();
    let first_after_4h = log
        .iter()
        .map(|(at, _)| *at)
        .find(|&at| at >= 4 * HOUR)
        .unwrap();
    assert_eq!(
        notices,
        [
            (first_after_4h, NoticeKind::Delay),
            (5 * DAY, NoticeKind::Failure)
        ]
    );
}

#[test]
fn a_restored_queue_goes_on_where_it_stopped() {
    let mut relay = relay();
    let msg = message("m", "anna@kolleg.de", &[])
        .with_recipient(
            QueuedRecipient::new(mailbox("done@schule.example")).with_state(
                RecipientState::Delivered {
                    reply: reply("250 ok"),
                },
            ),
        )
        .with_recipient(
            QueuedRecipient::new(mailbox("later@schule.example")).with_state(
                RecipientState::Deferred {
                    attempts: 3,
                    next_attempt: t(HOUR),
                    last_reply: reply("451 later"),
                },
            ),
        );
    relay.enqueue(msg.clone()).unwrap();
    assert_eq!(
        relay.enqueue(msg),
        Err(RelayError::Duplicate(MessageId::new("m")))
    );
    assert_eq!(relay.poll_timeout(), Some(t(HOUR)));
    assert!(drain(&mut relay, t(HOUR - 1)).is_empty());
    let d = deliveries(drain(&mut relay, t(HOUR))).remove(0);
    assert_eq!(d.recipients(), [mailbox("later@schule.example")]);
    relay
        .handle(
            t(HOUR),
            d.id(),
            Outcome::Done(report(&[("later@schule.example", "451 again")], "250 ok")),
        )
        .unwrap();
    drain(&mut relay, t(HOUR));
    // The fourth failure waits 40 minutes; a flush makes it due now.
    assert_eq!(state(&relay, "m", 1).attempts(), 4);
    assert_eq!(relay.poll_timeout(), Some(t(HOUR + 40 * MIN)));
    assert_eq!(
        relay.flush(t(HOUR + 1)),
        1,
        "one deferred recipient, the delivered one untouched"
    );
    assert_eq!(deliveries(drain(&mut relay, t(HOUR + 1))).len(), 1);
}

#[test]
fn what_the_relay_refuses_to_queue() {
    let mut relay = relay();
    assert_eq!(
        relay.enqueue(message("m", "anna@kolleg.de", &["bob@Kolleg.DE"])),
        Err(RelayError::Local(mailbox("bob@Kolleg.DE")))
    );
    assert_eq!(
        relay.enqueue(message("m", "anna@kolleg.de", &[])),
        Err(RelayError::NoRecipients(MessageId::new("m")))
    );
    assert_eq!(relay.messages().count(), 0);
}
