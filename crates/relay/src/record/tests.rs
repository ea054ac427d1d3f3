use super::*;
use proptest::prelude::*;

fn at(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// The record of the module documentation.
const EXAMPLE: &str = "postamt-queue 1
from <anna@kolleg.de>
arrival 1700000000.250000000
size 1234
envid \"QQ+2B1\"
ret HDRS
smtputf8 no
eight-bit yes
rcpt carl@schule.example
notify FAILURE,DELAY
orcpt \"rfc822\" \"carl+40schule.example\"
delay-notified yes
state deferred 2 1700000600.000000000
reply 451 4.7.1
text \"Greylisted, \\\"try\\\" again\"
text \"in 5 minutes\"
rcpt dora@other.example
delay-notified no
state pending
end
";

fn example() -> QueuedMessage {
    QueuedMessage::new(
        MessageId::new("1700000000.250000_42_1"),
        "<anna@kolleg.de>".parse().unwrap(),
        at(1_700_000_000, 250_000_000),
        1234,
    )
    .with_envid("QQ+2B1")
    .with_ret(Ret::Headers)
    .with_eight_bit(true)
    .with_recipient(
        QueuedRecipient::new("carl@schule.example".parse().unwrap())
            .with_notify(Notify::On {
                success: false,
                failure: true,
                delay: true,
            })
            .with_orcpt(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "carl+40schule.example".into(),
            })
            .with_delay_notified(true)
            .with_state(RecipientState::Deferred {
                attempts: 2,
                next_attempt: at(1_700_000_600, 0),
                last_reply: Reply::multiline(
                    451,
                    EnhancedCode::new(4, 7, 1),
                    vec!["Greylisted, \"try\" again".into(), "in 5 minutes".into()],
                ),
            }),
    )
    .with_recipient(QueuedRecipient::new("dora@other.example".parse().unwrap()))
}

fn read(record: &[u8]) -> Result<QueuedMessage, RecordError> {
    QueuedMessage::from_record(MessageId::new("x"), record)
}

#[test]
fn the_documented_record_exactly() {
    let message = example();
    assert_eq!(String::from_utf8(message.to_record()).unwrap(), EXAMPLE);
    let back = QueuedMessage::from_record(message.id().clone(), EXAMPLE.as_bytes()).unwrap();
    assert_eq!(back, message);
}

#[test]
fn final_states_null_sender_and_escapes_exactly() {
    let message = QueuedMessage::new(MessageId::new("n"), ReversePath::Null, at(5, 7), 0)
        .with_ret(Ret::Full)
        .with_smtputf8(true)
        .with_recipient(
            QueuedRecipient::new("jörg@bücher.example".parse().unwrap())
                .with_notify(Notify::Never)
                .with_state(RecipientState::Delivered {
                    reply: Reply::new(250, None, "ok \\ tab\there \u{7f} ünïcode"),
                }),
        )
        .with_recipient(
            QueuedRecipient::new("\"a b\"@c.example".parse().unwrap())
                .with_notify(Notify::On {
                    success: false,
                    failure: false,
                    delay: false,
                })
                .with_state(RecipientState::Failed {
                    reply: Reply::new(550, Some(EnhancedCode::UNKNOWN_USER), ""),
                }),
        );
    let expected = "postamt-queue 1
from <>
arrival 5.000000007
size 0
ret FULL
smtputf8 yes
eight-bit no
rcpt jörg@bücher.example
notify NEVER
delay-notified no
state delivered
reply 250
text \"ok \\\\ tab\\u{9}here \\u{7f} ünïcode\"
rcpt \"a b\"@c.example
notify
delay-notified no
state failed
reply 550 5.1.1
text \"\"
end
";
    assert_eq!(String::from_utf8(message.to_record()).unwrap(), expected);
    assert_eq!(
        QueuedMessage::from_record(MessageId::new("n"), expected.as_bytes()).unwrap(),
        message
    );
}

#[test]
fn times_before_the_epoch() {
    let before = SystemTime::UNIX_EPOCH - Duration::new(3, 5);
    let message = QueuedMessage::new(MessageId::new("t"), ReversePath::Null, before, 1);
    let record = String::from_utf8(message.to_record()).unwrap();
    assert!(record.contains("\narrival -3.000000005\n"), "{record}");
    assert_eq!(read(record.as_bytes()).unwrap().arrival(), before);
}

#[test]
fn every_cut_of_a_record_is_refused() {
    let bytes = EXAMPLE.as_bytes();
    for len in 0..bytes.len() {
        let err = read(&bytes[..len]).expect_err(&format!("cut at {len}"));
        assert!(err.line() >= 1, "{err}");
    }
}

#[track_caller]
fn refused(record: &str, line: usize, reason: &str) {
    let err = read(record.as_bytes()).expect_err(record);
    assert_eq!(
        (err.line(), err.reason()),
        (line, reason),
        "{record}\n-> {err}"
    );
    assert_eq!(
        err.to_string(),
        format!("queue record, line {line}: {reason}")
    );
}

#[test]
fn garbled_records_say_where() {
    let edit = |from: &str, to: &str| {
        assert!(EXAMPLE.contains(from), "{from}");
        EXAMPLE.replacen(from, to, 1)
    };
    refused("", 1, "the record is empty");
    refused(
        "postamt-queue 2\n",
        1,
        "expected `postamt-queue 1`, found \"postamt-queue 2\" (not a queue record, or another version)",
    );
    refused(
        "postamt-queue 1\n",
        2,
        "the record is cut short (no `end` line)",
    );
    refused(
        &EXAMPLE[..EXAMPLE.len() - 4],
        20,
        "the record is cut short (no `end` line)",
    );
    refused(
        &EXAMPLE[..EXAMPLE.len() - 1],
        20,
        "the record is cut short (no line end after the last line)",
    );
    refused(&format!("{EXAMPLE}rcpt x@y\n"), 21, "text after `end`");
    refused(
        &edit("arrival 1700000000.250000000", "arrival 1700000000.25"),
        3,
        "\"1700000000.25\" is not a time (SECONDS.NANOSECONDS, 9 digits after the dot)",
    );
    refused(
        &edit("size 1234", "size +1234"),
        4,
        "`size` is not a number",
    );
    refused(
        &edit("size 1234\n", ""),
        4,
        "expected `size`, found `envid`",
    );
    refused(
        &edit("from <anna@kolleg.de>", "from <anna@>"),
        2,
        "`from`: invalid address \"<anna@>\": expected local-part@domain, <local-part@domain> or <>",
    );
    refused(
        &edit("ret HDRS", "ret NONE"),
        6,
        "`ret` must be FULL or HDRS, not \"NONE\"",
    );
    refused(
        &edit("smtputf8 no", "smtputf8 maybe"),
        7,
        "expected yes or no, found \"maybe\"",
    );
    refused(
        &edit("notify FAILURE,DELAY", "notify FAILURE,FAILURE"),
        10,
        "`notify`: FAILURE twice",
    );
    refused(
        &edit("orcpt \"rfc822\" \"carl", "orcpt \"rfc822\"\"carl"),
        11,
        "`orcpt` needs a type and an address, each quoted",
    );
    refused(
        &edit("state deferred 2 ", "state deferred x "),
        13,
        "attempts \"x\" is not a number",
    );
    refused(
        &edit("state pending", "state lost"),
        19,
        "`state` must be pending, deferred ATTEMPTS TIME, delivered or failed, not \"lost\"",
    );
    refused(
        &edit("reply 451 4.7.1", "reply 651 4.7.1"),
        14,
        "reply code \"651\" is not within 200..=599",
    );
    refused(
        &edit("reply 451 4.7.1", "reply 451 4.7"),
        14,
        "\"4.7\" is not an enhanced status code",
    );
    refused(
        &edit("reply 451 4.7.1\n", ""),
        14,
        "expected `reply`, found `text`",
    );
    refused(
        &edit(
            "state deferred 2 1700000600.000000000\nreply 451 4.7.1\ntext \"Greylisted, \\\"try\\\" again\"\ntext \"in 5 minutes\"\n",
            "state delivered\nreply 250\n",
        ),
        14,
        "a reply needs at least one `text` line",
    );
    refused(
        &edit("text \"in 5 minutes\"", "text \"in 5 minutes"),
        16,
        "the quoted string is not closed",
    );
    refused(
        &edit("text \"in 5 minutes\"", "text \"in\\u{d}\\u{a}250 forged\""),
        16,
        "a reply line cannot hold CR or LF",
    );
    refused(
        &edit("text \"in 5 minutes\"", "text \"in \\q\""),
        16,
        "unknown escape `\\q`",
    );
    refused(
        &edit("text \"in 5 minutes\"", "text \"\\u{110000}\""),
        16,
        "`\\u{110000}` is not a character",
    );
    refused(
        &edit("text \"in 5 minutes\"", "text \"in\" 5"),
        16,
        "text after the closing quote: \" 5\"",
    );
    refused(
        &edit("text \"in 5 minutes\"", "text \"in\t5\""),
        16,
        "a control character ('\\t') not written as `\\u{..}`",
    );
    refused(
        &edit("rcpt dora@other.example", "rcpt carl@schule.example"),
        19,
        "recipient carl@schule.example is listed twice",
    );
    refused(
        &edit("eight-bit yes\n", "eight-bit yes\r\n"),
        8,
        "a CR in the line",
    );
    let mut bytes = EXAMPLE.as_bytes().to_vec();
    let at = EXAMPLE.find("Greylisted").unwrap();
    bytes[at] = 0xff;
    let err = read(&bytes).unwrap_err();
    assert_eq!((err.line(), err.reason()), (15, "not UTF-8"));
}

fn mailbox() -> impl Strategy<Value = Mailbox<'static>> {
    (
        prop::sample::select(vec![
            "carl",
            "dora.b",
            "x+tag",
            "\"a b\"",
            "jörg",
            "POSTMASTER",
        ]),
        prop::sample::select(vec![
            "schule.example",
            "bücher.example",
            "[192.0.2.1]",
            "a.b.c",
        ]),
    )
        .prop_map(|(local, domain)| format!("{local}@{domain}").parse().unwrap())
}

fn time() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        8 => (0u64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| at(s, n)),
        1 => (0u64..1_000_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| SystemTime::UNIX_EPOCH - Duration::new(s, n)),
        1 => Just(SystemTime::UNIX_EPOCH),
    ]
}

/// Any text a reply line may hold: anything but CR and LF, long lines too.
fn reply_line() -> impl Strategy<Value = Cow<'static, str>> {
    prop_oneof![
        "[^\r\n]{0,40}",
        "[ a-zäöü€\"\\\\]{0,20}",
        "[^\r\n]{200,1200}",
    ]
    .prop_map(Cow::Owned)
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        200u16..=599,
        prop::option::of((
            prop::sample::select(vec![2u8, 4, 5]),
            0u16..=999,
            0u16..=999,
        )),
        prop::collection::vec(reply_line(), 1..4),
    )
        .prop_map(|(code, enhanced, lines)| {
            let enhanced = enhanced.and_then(|(c, s, d)| EnhancedCode::new(c, s, d));
            Reply::multiline(code, enhanced, lines)
        })
}

fn state() -> impl Strategy<Value = RecipientState> {
    prop_oneof![
        Just(RecipientState::Pending),
        (any::<u32>(), time(), reply()).prop_map(|(attempts, next_attempt, last_reply)| {
            RecipientState::Deferred {
                attempts,
                next_attempt,
                last_reply,
            }
        }),
        reply().prop_map(|reply| RecipientState::Delivered { reply }),
        reply().prop_map(|reply| RecipientState::Failed { reply }),
    ]
}

fn notify() -> impl Strategy<Value = Option<Notify>> {
    prop_oneof![
        Just(None),
        Just(Some(Notify::Never)),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(success, failure, delay)| {
            Some(Notify::On {
                success,
                failure,
                delay,
            })
        }),
    ]
}

fn recipient() -> impl Strategy<Value = QueuedRecipient> {
    (
        mailbox(),
        notify(),
        prop::option::of(("[a-z0-9-]{1,10}", "[^\r\n]{0,30}")),
        state(),
        any::<bool>(),
    )
        .prop_map(|(mailbox, notify, orcpt, state, notified)| {
            let mut r = QueuedRecipient::new(mailbox)
                .with_state(state)
                .with_delay_notified(notified);
            if let Some(notify) = notify {
                r = r.with_notify(notify);
            }
            if let Some((addr_type, address)) = orcpt {
                r = r.with_orcpt(OriginalRecipient {
                    addr_type: addr_type.into(),
                    address: address.into(),
                });
            }
            r
        })
}

fn message() -> impl Strategy<Value = QueuedMessage> {
    (
        prop::option::of(mailbox()),
        time(),
        any::<u64>(),
        prop::option::of("[^\r\n]{0,30}"),
        prop::option::of(prop::sample::select(vec![Ret::Full, Ret::Headers])),
        any::<(bool, bool)>(),
        prop::collection::vec(recipient(), 0..5),
    )
        .prop_map(|(from, arrival, size, envid, ret, (utf8, eight), rcpts)| {
            let from = from.map_or(ReversePath::Null, ReversePath::Mailbox);
            let mut m = QueuedMessage::new(MessageId::new("p1"), from, arrival, size)
                .with_smtputf8(utf8)
                .with_eight_bit(eight);
            if let Some(envid) = envid {
                m = m.with_envid(envid);
            }
            if let Some(ret) = ret {
                m = m.with_ret(ret);
            }
            rcpts.into_iter().fold(m, QueuedMessage::with_recipient)
        })
}

proptest! {
    #[test]
    fn records_round_trip(message in message()) {
        let record = message.to_record();
        let text = std::str::from_utf8(&record).unwrap();
        // One field per line, nothing a terminal would act on.
        prop_assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{}", text);
        let back = QueuedMessage::from_record(message.id().clone(), &record);
        prop_assert_eq!(back, Ok(message));
    }

    #[test]
    fn damaged_records_are_refused_or_read_never_a_panic(
        message in message(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut record = message.to_record();
        for (index, byte) in damage {
            let i = index.index(record.len());
            record[i] = byte;
        }
        if let Ok(read) = QueuedMessage::from_record(message.id().clone(), &record) {
            // Whatever was read writes down as what was read.
            let again = QueuedMessage::from_record(message.id().clone(), &read.to_record());
            prop_assert_eq!(again, Ok(read));
        }
    }
}

/// The record carries what a relay needs after a restart: the deferred
/// recipient comes back at its retry time, the delivered one never.
#[test]
fn a_relay_restarted_from_records_goes_on_where_it_stopped() {
    use crate::{Action, HostFailure, Outcome, Relay, RelayConfig, Routes};
    use postamt_smtp::{ForwardPath, Report};

    let routes = || {
        Routes::new()
            .static_route("schule.example", "127.0.0.2:2525".parse().unwrap())
            .static_route("other.example", "127.0.0.3:2525".parse().unwrap())
    };
    let now = at(1_700_000_000, 0);
    let id = MessageId::new("1700000000.000000_42_1");
    let mut relay = Relay::new(RelayConfig::new("mx.kolleg.de"), routes());
    relay
        .enqueue(
            QueuedMessage::new(id.clone(), "<anna@kolleg.de>".parse().unwrap(), now, 10)
                .with_recipient(QueuedRecipient::new("carl@schule.example".parse().unwrap()))
                .with_recipient(QueuedRecipient::new("dora@other.example".parse().unwrap())),
        )
        .unwrap();
    let deliveries: Vec<_> = std::iter::from_fn(|| relay.poll_action(now))
        .map(|a| match a {
            Action::Deliver(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(deliveries.len(), 2);
    relay
        .handle(
            now,
            deliveries[0].id(),
            Outcome::HostFailed(HostFailure::Unreachable("connection refused".into())),
        )
        .unwrap();
    let ok = Reply::new(250, Some(EnhancedCode::OK), "queued");
    let dora: ForwardPath<'static> = "dora@other.example".parse().unwrap();
    let report = Report {
        accepted: vec![(dora, ok.clone())],
        refused: vec![],
        outcome: Ok(ok),
    };
    relay
        .handle(now, deliveries[1].id(), Outcome::Done(report))
        .unwrap();
    while relay.poll_action(now).is_some() {}

    let record = relay.message(&id).unwrap().to_record();
    let text = String::from_utf8(record.clone()).unwrap();
    assert!(text.contains("rcpt carl@schule.example\ndelay-notified no\nstate deferred 1 "));
    assert!(text.contains("rcpt dora@other.example\ndelay-notified no\nstate delivered\nreply 250 2.0.0\ntext \"queued\"\n"));

    let mut restarted = Relay::new(RelayConfig::new("mx.kolleg.de"), routes());
    let back = QueuedMessage::from_record(id.clone(), &record).unwrap();
    assert_eq!(&back, relay.message(&id).unwrap());
    restarted.enqueue(back).unwrap();
    assert!(
        restarted.poll_action(now).is_none(),
        "carl waits for his retry"
    );
    let retry = restarted.poll_timeout().unwrap();
    assert!(retry > now);
    let Some(Action::Deliver(d)) = restarted.poll_action(retry) else {
        panic!("carl is due at {retry:?}")
    };
    assert_eq!(
        d.recipients(),
        ["carl@schule.example".parse::<Mailbox<'static>>().unwrap()]
    );
    assert_eq!(d.host().to_string(), "127.0.0.2:2525");
}
