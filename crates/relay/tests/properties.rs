//! Whatever the peers and DNS answer, in whatever order results come back:
//! the concurrency bound holds, no recipient is in two deliveries, the
//! relay never asks to be polled for nothing, every message leaves the
//! queue by the end of its lifetime, and notices go only where they may.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use postamt_relay::{
    Action, Delivery, HostFailure, MessageId, MxAnswer, MxRecord, NoticeKind, Outcome,
    QueuedMessage, QueuedRecipient, Relay, RelayConfig, Routes,
};
use postamt_smtp::{Failure, ForwardPath, Notify, Report};
use proptest::prelude::*;
use support::*;

const DOMAINS: [&str; 6] = [
    "a.example",
    "b.example",
    "c.example",
    "dns1.example",
    "dns2.example",
    "dns3.example",
];

#[derive(Debug, Clone)]
struct Msg {
    null_sender: bool,
    rcpts: Vec<(usize, u8, Option<u8>)>,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        prop::collection::vec((0..DOMAINS.len(), 0u8..4, prop::option::of(0u8..8)), 1..5),
    )
        .prop_map(|(null_sender, rcpts)| Msg { null_sender, rcpts })
}

fn notify(bits: u8) -> Notify {
    if bits == 0 {
        Notify::Never
    } else {
        Notify::On {
            success: bits & 1 != 0,
            failure: bits & 2 != 0,
            delay: bits & 4 != 0,
        }
    }
}

fn answer(choice: u8) -> MxAnswer {
    match choice % 5 {
        0 => MxAnswer::Records(vec![
            MxRecord::new(10, "mx1.example"),
            MxRecord::new(10, "mx2.example"),
        ]),
        1 => MxAnswer::NoMx { has_address: true },
        2 => MxAnswer::TryAgain("SERVFAIL".into()),
        3 => MxAnswer::Records(vec![MxRecord::new(0, ".")]),
        _ => MxAnswer::NoSuchDomain,
    }
}

fn outcome(d: &Delivery, choice: u8, codes: &[u8]) -> Outcome {
    let code = |i: usize| match codes.get(i).copied().unwrap_or(0) % 3 {
        0 => "250 2.1.5 ok",
        1 => "451 4.3.0 later",
        _ => "550 5.1.1 unknown",
    };
    let paths: Vec<ForwardPath<'static>> = d
        .recipients()
        .iter()
        .map(|m| ForwardPath::Mailbox(m.clone()))
        .collect();
    let answered: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), reply(code(i))))
        .collect();
    match choice % 7 {
        0 => Outcome::HostFailed(HostFailure::Unreachable("refused".into())),
        1 => Outcome::HostFailed(HostFailure::Refused(reply("421 4.3.2 busy"))),
        2 => Outcome::ConnectionLost {
            answered: answered[..answered.len() / 2].to_vec(),
        },
        3 => Outcome::Timeout { answered },
        4 => Outcome::Done(Report {
            accepted: vec![],
            refused: vec![],
            outcome: Err(Failure::Sender(reply(if codes.first() == Some(&0) {
                "451 no"
            } else {
                "553 no"
            }))),
        }),
        _ => {
            let (accepted, refused) = answered.into_iter().partition(|(_, r)| r.is_positive());
            Outcome::Done(Report {
                accepted,
                refused,
                outcome: Ok(reply("250 2.0.0 queued")),
            })
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn the_relay_keeps_its_promises(
        msgs in prop::collection::vec(msg(), 1..6),
        concurrency in 1usize..4,
        answers in prop::collection::vec(any::<u8>(), 1..16),
        results in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 4), any::<u16>()), 1..64),
    ) {
        let mut config = RelayConfig::new("mx.kolleg.de");
        config.concurrency = concurrency;
        config.retry_after = Duration::from_secs(1);
        config.retry_max = Duration::from_secs(2);
        config.queue_lifetime = Duration::from_secs(10);
        config.delay_warning = Duration::from_secs(3);
        let routes = Routes::new()
            .local_domain("kolleg.de")
            .static_route("a.example", "10.0.0.1".parse().unwrap())
            .static_route("b.example", "10.0.0.1".parse().unwrap())
            .static_route("c.example", "10.0.0.2".parse().unwrap());
        let mut relay = Relay::new(config, routes);
        let mut wants: HashMap<(MessageId, String), Option<Notify>> = HashMap::new();
        let mut null: HashSet<MessageId> = HashSet::new();
        for (n, m) in msgs.iter().enumerate() {
            let id = MessageId::new(format!("m{n}"));
            let from = if m.null_sender { "<>" } else { "anna@kolleg.de" };
            let mut q = QueuedMessage::new(id.clone(), from.parse().unwrap(), t(0), 100);
            for (k, (domain, user, bits)) in m.rcpts.iter().enumerate() {
                let mb = mailbox(&format!("u{user}k{k}@{}", DOMAINS[*domain]));
                let mut r = QueuedRecipient::new(mb.clone());
                if let Some(bits) = bits {
                    r = r.with_notify(notify(*bits));
                }
                wants.insert((id.clone(), mb.to_string()), bits.map(notify));
                q = q.with_recipient(r);
            }
            if m.null_sender {
                null.insert(id.clone());
            }
            relay.enqueue(q).unwrap();
        }

        let mut now = 0u64;
        let mut running: Vec<Delivery> = Vec::new();
        let mut removed: HashSet<MessageId> = HashSet::new();
        let mut failed_told: HashSet<(MessageId, String)> = HashSet::new();
        let mut delay_told: HashSet<(MessageId, String)> = HashSet::new();
        let mut step = 0usize;
        let mut lookups: Vec<String> = Vec::new();
        for _round in 0..10_000 {
            while let Some(action) = relay.poll_action(t(now)) {
                match action {
                    Action::Resolve(domain) => {
                        // Some answers come at once, some later (an asynchronous resolver).
                        if answers[step % answers.len()] & 0x80 == 0 {
                            relay.resolved(&domain, &answer(answers[step % answers.len()]), step as u64);
                        } else {
                            lookups.push(domain);
                        }
                        step += 1;
                    }
                    Action::Deliver(d) => {
                        // A delivery coming back with the next host replaces itself.
                        running.retain(|r| r.id() != d.id());
                        for other in &running {
                            if other.message() == d.message() {
                                for m in d.recipients() {
                                    prop_assert!(!other.recipients().contains(m), "{m} twice in flight");
                                }
                            }
                        }
                        running.push(d);
                        prop_assert!(relay.in_flight() <= concurrency);
                    }
                    Action::Notify(n) => {
                        // A message from <> never gets a notice; when it
                        // fails, the postmaster does.
                        let to = if null.contains(n.message()) {
                            prop_assert_eq!(n.kind(), NoticeKind::DoubleBounce);
                            "postmaster@mx.kolleg.de"
                        } else {
                            "anna@kolleg.de"
                        };
                        prop_assert_eq!(n.recipient().to_string(), to);
                        for r in n.recipients() {
                            let key = (n.message().clone(), r.final_recipient().to_string());
                            let w = wants[&key];
                            match n.kind() {
                                NoticeKind::Failure | NoticeKind::DoubleBounce => {
                                    let told = !matches!(w, Some(Notify::Never) | Some(Notify::On { failure: false, .. }));
                                    prop_assert!(told, "{:?}", w);
                                    prop_assert!(failed_told.insert(key), "failure told twice");
                                }
                                NoticeKind::Delay => {
                                    let asked = matches!(w, Some(Notify::On { delay: true, .. }));
                                    prop_assert!(asked, "{:?}", w);
                                    prop_assert!(delay_told.insert(key), "delay told twice");
                                }
                                NoticeKind::Success => {
                                    let asked = matches!(w, Some(Notify::On { success: true, .. }));
                                    prop_assert!(asked, "{:?}", w);
                                }
                                _ => prop_assert!(false),
                            }
                        }
                        // Composing never fails and always parses.
                        let bytes = n.compose(b"Subject: x\r\n\r\nbody\r\n");
                        prop_assert!(mail_parser::MessageParser::default().parse(&bytes).is_some());
                    }
                    Action::Save(id) => prop_assert!(relay.message(&id).is_some()),
                    Action::Remove(id) => {
                        prop_assert!(relay.message(&id).is_none());
                        prop_assert!(removed.insert(id), "removed twice");
                    }
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            if !lookups.is_empty() && (running.is_empty() || step.is_multiple_of(2)) {
                let domain = lookups.remove(0);
                relay.resolved(&domain, &answer(answers[step % answers.len()]), step as u64);
                step += 1;
                continue;
            }
            if running.is_empty() {
                match relay.poll_timeout() {
                    None => break,
                    Some(next) => {
                        let next = next.duration_since(t(0)).unwrap().as_secs();
                        prop_assert!(next > now, "poll_timeout {next} not after {now}");
                        now = next;
                    }
                }
                continue;
            }
            // Finish one running delivery, chosen by the test data.
            let (choice, codes, pick) = &results[step % results.len()];
            step += 1;
            let d = running.remove(*pick as usize % running.len());
            if choice % 11 == 10 {
                let _ = relay.envelope(t(now), d.id(), &caps("MX.KOLLEG.DE", &[])).unwrap();
            } else {
                relay.handle(t(now), d.id(), outcome(&d, *choice, codes)).unwrap();
            }
        }
        prop_assert_eq!(relay.messages().count(), 0, "left in the queue at {}", now);
        prop_assert_eq!(removed.len(), msgs.len());
        prop_assert!(now <= 10, "everything is over by the end of the lifetime: {}", now);
    }
}
