//! Sans-IO mail forwarding: what an MTA decides when it passes mail on.
//!
//! Which host a recipient's mail goes to ([`Routes`], [`resolve_mx`]),
//! which recipients travel together, when to try again, what a reply means
//! for each recipient, and when the sender gets a delivery status notice
//! and what it says ([`Notice`]). A [`Relay`] is a plain value like the
//! protocol sessions: it owns no socket, resolves no name, reads no clock,
//! draws no random number. The caller (a runner with sockets, a resolver,
//! TLS, and a client session per connection) moves the data and passes
//! time in.
//!
//! Times are [`SystemTime`](std::time::SystemTime), not `Instant`: a
//! queue is written down and read back after a restart, and an `Instant`
//! means nothing in another process.
//!
//! # Driving contract
//!
//! 1. **In: messages.** When a message is durably in the caller's queue,
//!    [`Relay::enqueue`] it (after a restart: every queued message, with
//!    the recipient states the store kept). [`QueuedMessage::to_record`]
//!    writes that state down as text and [`QueuedMessage::from_record`]
//!    reads it back ([`record`] has the format).
//! 2. **Out: actions.** Call [`Relay::poll_action`]`(now)` until it returns
//!    `None`, after every input. In this order it returns:
//!    - [`Action::Notify`]: a notice for the original sender; compose it
//!      with [`Notice::compose`] (hand in the message, or its headers when
//!      [`Notice::returns`] says so) and queue it as a message from `<>`;
//!    - [`Action::Save`] / [`Action::Remove`]: write the message's new
//!      state ([`Relay::message`]) or drop it from the queue. A notice
//!      comes before the save that caused it, so a crash repeats a notice,
//!      never loses one;
//!    - [`Action::Resolve`]: look up the domain's MX records (and A/AAAA
//!      when there are none) and answer with [`Relay::resolved`], with a
//!      random seed for shuffling equal preferences;
//!    - [`Action::Deliver`]: run one SMTP transaction at the delivery's
//!      host, at most [`RelayConfig::concurrency`] at once. It carries every
//!      due recipient of that message whose first host is this one.
//! 3. **In: results.** When the client session is ready (greeting and
//!    EHLO done), ask [`Relay::envelope`] for the envelope to send; `None`
//!    means this host must not get the message (it greets with our own
//!    name: a loop; or it lacks SMTPUTF8 the message needs), the delivery
//!    is already decided, say QUIT. When the transaction is over (or could
//!    not happen), report with [`Relay::handle`]: [`Outcome::Done`] with
//!    the client session's [`Report`](postamt_smtp::Report), or
//!    [`Outcome::HostFailed`] (no connection, a 4xx or 5xx greeting, TLS
//!    failed: the same delivery comes back as [`Action::Deliver`] with the
//!    next host; after the last one every recipient is deferred), or
//!    [`Outcome::Timeout`] / [`Outcome::ConnectionLost`] mid-transaction.
//! 4. **Time.** [`Relay::poll_timeout`] says when something next becomes
//!    due; at that time, poll again. [`Relay::flush`] makes every deferred
//!    recipient due now.
//!
//! Per recipient: 2xx delivered, 5xx failed, anything else deferred by
//! the schedule ([`RelayConfig::retry_after`], doubling up to
//! [`RelayConfig::retry_max`]), and failed with its last reply when
//! [`RelayConfig::queue_lifetime`] is over. A recipient in flight is not
//! written down as such: after a crash it is due again, so at most that
//! one attempt repeats (RFC 5321 §6.1).
//!
//! Notices follow RFC 3461: none for `NOTIFY=NEVER`; none to a message
//! from `<>` (when one fails, the postmaster gets a
//! [`NoticeKind::DoubleBounce`] instead); failures by default; a delay notice once for `NOTIFY=DELAY` after
//! [`RelayConfig::delay_warning`]; a "relayed" notice for
//! `NOTIFY=SUCCESS` when the next hop offers no DSN (when it does, NOTIFY,
//! ORCPT, RET and ENVID go on to it and it reports).
//!
//! For the receiving side, [`HopCounter`] counts a message's `Received:`
//! fields so the server can refuse a looping message with
//! [`too_many_hops`].
//!
//! # Example
//!
//! One message to two hosts; one recipient gets 250, the other 550; the
//! sender's notice quotes the 550.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use postamt_relay::{Action, MessageId, Outcome, QueuedMessage, QueuedRecipient, Relay,
//!     RelayConfig, Routes};
//! use postamt_smtp::{Capabilities, ForwardPath, Reply, Report};
//!
//! let routes = Routes::new()
//!     .local_domain("kolleg.de")
//!     .static_route("schule.example", "127.0.0.2:2525".parse().unwrap())
//!     .static_route("other.example", "127.0.0.3:2525".parse().unwrap());
//! let mut relay = Relay::new(RelayConfig::new("mx.kolleg.de"), routes);
//! let arrived = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
//! let message = b"From: anna@kolleg.de\r\nSubject: Hausaufgaben\r\n\r\nHallo\r\n";
//! relay
//!     .enqueue(
//!         QueuedMessage::new(MessageId::new("q1"), "anna@kolleg.de".parse().unwrap(),
//!             arrived, message.len() as u64)
//!             .with_recipient(QueuedRecipient::new("carl@schule.example".parse().unwrap()))
//!             .with_recipient(QueuedRecipient::new("dora@other.example".parse().unwrap())),
//!     )
//!     .unwrap();
//!
//! // Two hosts, so two transactions.
//! let now = arrived;
//! let mut deliveries = Vec::new();
//! while let Some(action) = relay.poll_action(now) {
//!     let Action::Deliver(d) = action else { panic!("{action:?}") };
//!     deliveries.push(d);
//! }
//! assert_eq!(deliveries.len(), 2);
//! assert_eq!(deliveries[0].host().to_string(), "127.0.0.2:2525");
//!
//! // What the runner's client sessions would learn and report.
//! let parse = |wire: &str| Reply::parse(wire.as_bytes()).unwrap().unwrap().0;
//! let caps = Capabilities::from_ehlo(&parse("250 mx.example\r\n"));
//! let mut actions = Vec::new();
//! for (d, rcpt, rcpt_reply) in [
//!     (&deliveries[0], "carl@schule.example", "250 2.1.5 OK\r\n"),
//!     (&deliveries[1], "dora@other.example", "550 5.1.1 No such user here\r\n"),
//! ] {
//!     let envelope = relay.envelope(now, d.id(), &caps).unwrap().unwrap();
//!     assert_eq!(envelope.recipients[0].0.to_string(), format!("<{rcpt}>"));
//!     let path: ForwardPath<'static> = rcpt.parse().unwrap();
//!     let rcpt_reply = parse(rcpt_reply);
//!     let report = if rcpt_reply.is_positive() {
//!         Report { accepted: vec![(path, rcpt_reply)], refused: vec![],
//!                  outcome: Ok(parse("250 2.0.0 queued\r\n")) }
//!     } else {
//!         Report { accepted: vec![], refused: vec![(path, rcpt_reply)],
//!                  outcome: Err(postamt_smtp::Failure::NoRecipients) }
//!     };
//!     relay.handle(now, d.id(), Outcome::Done(report)).unwrap();
//!     // Drained after every input, as the contract says.
//!     actions.extend(std::iter::from_fn(|| relay.poll_action(now)));
//! }
//!
//! // carl's delivery is saved; then a notice for anna about dora, and the
//! // message leaves the queue.
//! let [Action::Save(_), Action::Notify(notice), Action::Remove(_)] = &actions[..] else {
//!     panic!("{actions:?}")
//! };
//! assert_eq!(notice.recipient().to_string(), "anna@kolleg.de");
//! let bytes = notice.compose(message);
//! let text = String::from_utf8(bytes).unwrap();
//! assert!(text.contains("Content-Type: multipart/report; report-type=\"delivery-status\""));
//! assert!(text.contains("Final-Recipient: rfc822; dora@other.example\r\n"));
//! assert!(text.contains("Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; 127.0.0.3\r\n"));
//! assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user here\r\n"));
//! assert!(text.contains("Subject: Hausaufgaben\r\n\r\nHallo\r\n"));
//! assert!(!text.contains("carl@"));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
pub mod hops;
pub mod notice;
pub mod queue;
pub mod record;
mod relay;
mod rng;
pub mod route;

pub use config::RelayConfig;
pub use hops::{HopCounter, MAX_HOPS, count_received, too_many_hops};
pub use notice::{DsnAction, Notice, NoticeKind, NoticeRecipient};
pub use queue::{MessageId, QueuedMessage, QueuedRecipient, RecipientState};
pub use record::RecordError;
pub use relay::{Action, Delivery, DeliveryId, HostFailure, Outcome, Relay, RelayError};
pub use route::{MxAnswer, MxRecord, NextHop, Route, Routes, resolve_mx};
