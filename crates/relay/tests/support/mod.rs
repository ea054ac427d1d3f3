//! Shared helpers: simulated wall-clock time, addresses, replies, reports.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postamt_relay::{Action, MessageId, QueuedMessage, QueuedRecipient, Relay};
use postamt_smtp::{Capabilities, ForwardPath, Mailbox, Reply, Report};

/// A fixed start, Tue, 14 Nov 2023 22:13:20 +0000, plus `secs`.
pub fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

pub const MIN: u64 = 60;
pub const HOUR: u64 = 3600;
pub const DAY: u64 = 24 * HOUR;

pub fn mailbox(s: &str) -> Mailbox<'static> {
    s.parse().unwrap()
}

pub fn path(s: &str) -> ForwardPath<'static> {
    ForwardPath::Mailbox(mailbox(s))
}

/// Parses one reply line such as `550 5.1.1 No such user`.
pub fn reply(line: &str) -> Reply {
    let wire = format!("{line}\r\n");
    Reply::parse(wire.as_bytes()).unwrap().unwrap().0
}

/// A message from `from` to `rcpts`, arrived at t(0).
pub fn message(id: &str, from: &str, rcpts: &[&str]) -> QueuedMessage {
    let mut msg = QueuedMessage::new(MessageId::new(id), from.parse().unwrap(), t(0), 300);
    for r in rcpts {
        msg = msg.with_recipient(QueuedRecipient::new(mailbox(r)));
    }
    msg
}

/// What a server's EHLO reply offers, parsed as the client session does.
pub fn caps(name: &str, keywords: &[&str]) -> Capabilities {
    let mut wire = String::new();
    let lines: Vec<String> = std::iter::once(format!("{name} Hello"))
        .chain(keywords.iter().map(|k| k.to_string()))
        .collect();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        wire.push_str(&format!("250{sep}{l}\r\n"));
    }
    Capabilities::from_ehlo(&Reply::parse(wire.as_bytes()).unwrap().unwrap().0)
}

/// A finished transaction: RCPT replies per recipient, then the final reply.
pub fn report(rcpts: &[(&str, &str)], last: &str) -> Report {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (r, line) in rcpts {
        let rep = reply(line);
        if rep.is_positive() {
            accepted.push((path(r), rep));
        } else {
            refused.push((path(r), rep));
        }
    }
    Report {
        accepted,
        refused,
        outcome: Ok(reply(last)),
    }
}

/// Every action at `now`.
pub fn drain(relay: &mut Relay, now: SystemTime) -> Vec<Action> {
    std::iter::from_fn(|| relay.poll_action(now)).collect()
}
