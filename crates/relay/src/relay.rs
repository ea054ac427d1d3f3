//! The relay: which deliveries are due, and what each result means.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::SystemTime;

use postamt_smtp::{
    Capabilities, EnhancedCode, Envelope, Failure, ForwardPath, Mailbox, Reply, Report, ReversePath,
};

use crate::config::RelayConfig;
use crate::notice::{DsnAction, Notice, NoticeKind, NoticeRecipient};
use crate::queue::{MessageId, QueuedMessage, RecipientState};
use crate::route::{MxAnswer, NextHop, Route, Routes, loops_back_reply, resolve_mx};

/// Names one delivery from [`Action::Deliver`] until its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId(u64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// One SMTP transaction to run: this message to these recipients, at
/// [`host`](Self::host). All of a message's due recipients whose first host
/// is the same travel together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    id: DeliveryId,
    message: MessageId,
    hosts: Vec<NextHop>,
    index: usize,
    from: ReversePath<'static>,
    recipients: Vec<Mailbox<'static>>,
}

impl Delivery {
    /// Its id, for [`Relay::envelope`] and [`Relay::handle`].
    pub fn id(&self) -> DeliveryId {
        self.id
    }

    /// The queued message whose body to send.
    pub fn message(&self) -> &MessageId {
        &self.message
    }

    /// Where to connect for this try.
    pub fn host(&self) -> &NextHop {
        &self.hosts[self.index]
    }

    /// The whole list, in the order they are tried.
    pub fn hosts(&self) -> &[NextHop] {
        &self.hosts
    }

    /// The sender.
    pub fn from(&self) -> &ReversePath<'static> {
        &self.from
    }

    /// The recipients this transaction carries.
    pub fn recipients(&self) -> &[Mailbox<'static>] {
        &self.recipients
    }
}

/// What the caller must do next, from [`Relay::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Action {
    /// Send this notice to its recipient (enqueue it as a message from
    /// `<>`). Comes before the [`Save`](Self::Save) of the state that
    /// caused it, so a crash in between repeats a notice, never loses one.
    Notify(Notice),
    /// This message's state changed: write it down
    /// ([`Relay::message`]) before acting on anything later.
    Save(MessageId),
    /// Every recipient of this message is delivered or failed: remove it
    /// from the queue (the relay has forgotten it).
    Remove(MessageId),
    /// Look up the MX records of this domain (and its A/AAAA when there is
    /// none), then call [`Relay::resolved`].
    Resolve(String),
    /// Connect to the delivery's host and run the transaction: on the
    /// greeting and EHLO, ask [`Relay::envelope`]; at the end, report with
    /// [`Relay::handle`]. The same delivery comes again with the next host
    /// when one could not be used.
    Deliver(Delivery),
}

/// Why a host of the list could not be used; the next one is tried.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostFailure {
    /// No connection (refused, no route, no address for the name); the
    /// text says how, for the notice.
    Unreachable(String),
    /// No greeting or EHLO answer in time.
    Timeout,
    /// The greeting or the EHLO reply was not positive (4xx, or a 554
    /// "no service here"); the next host may do better (RFC 5321 §3.1,
    /// Postfix's `smtp_skip_5xx_greeting`).
    Refused(Reply),
    /// TLS was required and could not be set up.
    Tls(String),
}

/// What happened to a [`Delivery`], for [`Relay::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// This host could not be used; try the next.
    HostFailed(HostFailure),
    /// The transaction ran: the client session's report.
    Done(Report),
    /// The server stopped answering mid-transaction; the RCPT replies that
    /// came are given, everyone else is deferred.
    Timeout {
        /// RCPT replies received before the silence.
        answered: Vec<(ForwardPath<'static>, Reply)>,
    },
    /// The connection broke mid-transaction, as [`Timeout`](Self::Timeout).
    ConnectionLost {
        /// RCPT replies received before the break.
        answered: Vec<(ForwardPath<'static>, Reply)>,
    },
    /// The peer greets with our own name: the route leads back here.
    LoopsBack {
        /// The name it gave.
        peer: String,
    },
    /// The message needs SMTPUTF8 and the host does not offer it.
    NoSmtpUtf8,
}

/// A mistake of the caller's; the relay's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No delivery with this id is running (finished, or never handed out).
    #[error("no delivery {0} is running")]
    UnknownDelivery(DeliveryId),
    /// A message with this id is queued already.
    #[error("message {0} is queued already")]
    Duplicate(MessageId),
    /// The message has no recipient.
    #[error("message {0} has no recipients")]
    NoRecipients(MessageId),
    /// A recipient is in one of our own domains: deliver it here.
    #[error("{0} is local, not relayed")]
    Local(Mailbox<'static>),
}

#[derive(Debug)]
struct Entry {
    msg: QueuedMessage,
    /// Per recipient: part of a running delivery (never written down; a
    /// crash makes the recipient due again, RFC 5321 §6.1's duplicate).
    busy: Vec<bool>,
    /// Per recipient: its route, decided once (the table never changes),
    /// so the scans after every input do not decide it again.
    routes: Vec<Route>,
}

#[derive(Debug)]
enum Lookup {
    Asked,
    Answered(Result<Vec<NextHop>, Reply>),
}

#[derive(Debug)]
struct Flight {
    delivery: Delivery,
    /// Recipient indexes into the message, in delivery order.
    indexes: Vec<usize>,
    /// The host offers DSN: NOTIFY went on with the message.
    dsn: bool,
}

/// The forwarding decisions as a plain value; see the crate docs for how
/// to drive it.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    routes: Routes,
    messages: BTreeMap<MessageId, Entry>,
    flights: BTreeMap<DeliveryId, Flight>,
    next_delivery: u64,
    dns: HashMap<String, Lookup>,
    out: VecDeque<Action>,
    notices: u64,
}

/// What one scan of a message found to do.
#[derive(Default)]
struct Scan {
    /// Recipients decided without a peer (a route that cannot work).
    decisions: Vec<Decision>,
    /// Due recipients by first host, with that host list.
    groups: Vec<(Vec<NextHop>, Vec<usize>)>,
    /// A domain whose MX answer is needed first.
    ask: Option<String>,
    /// A due recipient waits for an MX answer: hold the message's
    /// deliveries, as its host may be one of theirs and they travel together.
    waiting: bool,
}

/// A recipient decided without a peer.
enum Decision {
    Fail(usize, Reply),
    Defer(usize, Reply),
}

impl Relay {
    /// An empty queue.
    pub fn new(config: RelayConfig, routes: Routes) -> Self {
        Self {
            config,
            routes,
            messages: BTreeMap::new(),
            flights: BTreeMap::new(),
            next_delivery: 0,
            dns: HashMap::new(),
            out: VecDeque::new(),
            notices: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The routing table.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Takes a message the caller has written to its queue: a new one, or
    /// one read back after a restart (with its recipients' states).
    /// Finished recipients are kept as they are; a message with no open
    /// recipient is accepted and removed at the next poll.
    pub fn enqueue(&mut self, msg: QueuedMessage) -> Result<(), RelayError> {
        if self.messages.contains_key(msg.id()) {
            return Err(RelayError::Duplicate(msg.id().clone()));
        }
        if msg.recipients().is_empty() {
            return Err(RelayError::NoRecipients(msg.id().clone()));
        }
        if let Some(r) = msg
            .recipients()
            .iter()
            .find(|r| !r.state().is_final() && self.routes.is_local(r.mailbox().domain()))
        {
            return Err(RelayError::Local(r.mailbox().clone()));
        }
        let busy = vec![false; msg.recipients().len()];
        let routes = msg
            .recipients()
            .iter()
            .map(|r| self.routes.route(r.mailbox().domain()))
            .collect();
        self.messages
            .insert(msg.id().clone(), Entry { msg, busy, routes });
        Ok(())
    }

    /// A queued message and its recipients' states.
    pub fn message(&self, id: &MessageId) -> Option<&QueuedMessage> {
        self.messages.get(id).map(|e| &e.msg)
    }

    /// Every queued message, by id (what `queue` listings show).
    pub fn messages(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.messages.values().map(|e| &e.msg)
    }

    /// Deliveries handed out and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Makes every deferred recipient due at `now` ("queue flush") and
    /// says how many there were. The schedule is not written down: a crash
    /// just keeps the old one.
    pub fn flush(&mut self, now: SystemTime) -> usize {
        let mut due = 0;
        for entry in self.messages.values_mut() {
            for i in 0..entry.msg.recipients().len() {
                if let RecipientState::Deferred {
                    attempts,
                    last_reply,
                    ..
                } = entry.msg.recipients()[i].state().clone()
                {
                    due += 1;
                    entry
                        .msg
                        .recipient_mut(i)
                        .set_state(RecipientState::Deferred {
                            attempts,
                            next_attempt: now,
                            last_reply,
                        });
                }
            }
        }
        due
    }

    /// The caller's DNS answer for a domain from [`Action::Resolve`]. Equal
    /// MX preferences are shuffled with `seed` (the caller's randomness).
    /// The answer serves the recipients due now; the next retry asks again.
    pub fn resolved(&mut self, domain: &str, answer: &MxAnswer, seed: u64) {
        let hosts = resolve_mx(domain, answer, &self.config.hostname, seed);
        self.dns
            .insert(domain.to_ascii_lowercase(), Lookup::Answered(hosts));
    }

    /// The next thing to do at `now`, or `None` until a result comes in
    /// or [`poll_timeout`](Self::poll_timeout) passes. Call until `None`
    /// after every input.
    pub fn poll_action(&mut self, now: SystemTime) -> Option<Action> {
        if let Some(action) = self.out.pop_front() {
            return Some(action);
        }
        // Find the first message with something to do without copying or
        // changing anything; then act on that one.
        let slots = self.flights.len() < self.config.concurrency;
        let mut used = HashSet::new();
        let mut found = None;
        for (id, entry) in &self.messages {
            if entry.msg.is_done() && !entry.busy.contains(&true) {
                found = Some((id.clone(), None));
                break;
            }
            let scan = self.scan(entry, now, slots, &mut used);
            if scan.ask.is_some()
                || !scan.decisions.is_empty()
                || (!scan.waiting && !scan.groups.is_empty())
            {
                found = Some((id.clone(), Some(scan)));
                break;
            }
        }
        let Some((id, scan)) = found else {
            self.dns
                .retain(|domain, lookup| matches!(lookup, Lookup::Asked) || used.contains(domain));
            return None;
        };
        let Some(Scan {
            decisions,
            groups,
            ask,
            ..
        }) = scan
        else {
            self.messages.remove(&id);
            return Some(Action::Remove(id));
        };
        if let Some(domain) = ask {
            self.dns.insert(domain.clone(), Lookup::Asked);
            return Some(Action::Resolve(domain));
        }
        if !decisions.is_empty() {
            let mut changed = Changes::default();
            for decision in decisions {
                match decision {
                    Decision::Fail(i, reply) => {
                        self.fail(&id, i, reply, None, &mut changed);
                    }
                    Decision::Defer(i, reply) => {
                        self.defer(&id, i, reply, None, now, &mut changed);
                    }
                }
            }
            self.finish_changes(&id, changed, now);
            return self.out.pop_front();
        }
        let (hosts, indexes) = groups.into_iter().next()?;
        Some(Action::Deliver(self.start(&id, hosts, indexes)))
    }

    /// When something next becomes due: a deferred recipient's retry, or a
    /// time already past (`UNIX_EPOCH` at the earliest) when work waits:
    /// poll now. `None` while nothing
    /// is queued, or while every delivery slot is taken (a result frees
    /// one) and nothing else waits.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        if !self.out.is_empty() {
            return Some(SystemTime::UNIX_EPOCH);
        }
        let slots = self.flights.len() < self.config.concurrency;
        let mut next: Option<SystemTime> = None;
        for entry in self.messages.values() {
            if entry.msg.is_done() && !entry.busy.contains(&true) {
                return Some(SystemTime::UNIX_EPOCH);
            }
            // A message waiting for an MX answer waits whole (see `scan`).
            let held = entry.msg.recipients().iter().enumerate().any(|(i, r)| {
                !entry.busy[i]
                    && !r.state().is_final()
                    && matches!(
                        &entry.routes[i],
                        Route::Dns(d) if matches!(self.dns.get(d), Some(Lookup::Asked))
                    )
            });
            for (i, r) in entry.msg.recipients().iter().enumerate() {
                let Some(due) = r.state().due() else { continue };
                if entry.busy[i] {
                    continue;
                }
                // Work that needs a slot waits for a result while none is
                // free; a domain being looked up waits for the answer.
                let actionable = match &entry.routes[i] {
                    Route::Local => true,
                    Route::Hosts(_) => slots && !held,
                    Route::Dns(domain) => match self.dns.get(domain) {
                        None | Some(Lookup::Answered(Err(_))) => true,
                        Some(Lookup::Asked) => false,
                        Some(Lookup::Answered(Ok(_))) => slots && !held,
                    },
                };
                if actionable {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        next
    }

    /// Called when the host has greeted and answered EHLO: the envelope to
    /// send, or `None` when this host must not get the message (it greets
    /// with our own name, or lacks SMTPUTF8 the message needs); then the
    /// delivery is finished as [`handle`](Self::handle) would finish it:
    /// send QUIT.
    pub fn envelope(
        &mut self,
        now: SystemTime,
        id: DeliveryId,
        caps: &Capabilities,
    ) -> Result<Option<Envelope>, RelayError> {
        let flight = self
            .flights
            .get(&id)
            .ok_or(RelayError::UnknownDelivery(id))?;
        let msg = &self.messages[&flight.delivery.message].msg;
        if caps.domain.eq_ignore_ascii_case(&self.config.hostname) {
            let peer = caps.domain.clone();
            self.handle(now, id, Outcome::LoopsBack { peer })?;
            return Ok(None);
        }
        if msg.needs_smtputf8() && !caps.smtputf8 {
            self.handle(now, id, Outcome::NoSmtpUtf8)?;
            return Ok(None);
        }
        let mut envelope = Envelope::new(msg.reverse_path().clone());
        envelope.params = msg.mail_parameters(caps.dsn);
        if !caps.eight_bit_mime {
            // RFC 6152 §3: no BODY= to a server that does not know it; the
            // bytes go as they are, as Postfix sends them.
            envelope.params.body = None;
        }
        for &i in &flight.indexes {
            let r = &msg.recipients()[i];
            let params = if caps.dsn {
                r.rcpt_parameters()
            } else {
                Default::default()
            };
            envelope
                .recipients
                .push((ForwardPath::Mailbox(r.mailbox().clone()), params));
        }
        if let Some(flight) = self.flights.get_mut(&id) {
            flight.dsn = caps.dsn;
        }
        Ok(Some(envelope))
    }

    /// What happened to a delivery. A host that could not be used gives
    /// the delivery again with the next host ([`Action::Deliver`]); any
    /// other outcome ends it and decides each recipient: 2xx delivered,
    /// 5xx failed, the rest deferred by the retry schedule (failed when
    /// the queue lifetime is over).
    pub fn handle(
        &mut self,
        now: SystemTime,
        id: DeliveryId,
        outcome: Outcome,
    ) -> Result<(), RelayError> {
        let mut flight = self
            .flights
            .remove(&id)
            .ok_or(RelayError::UnknownDelivery(id))?;
        let host = flight.delivery.host().host().to_owned();
        // Each recipient's reply, and whether the peer said it.
        let replies: Vec<(Reply, bool)> = match outcome {
            Outcome::HostFailed(failure) => {
                if flight.delivery.index + 1 < flight.delivery.hosts.len() {
                    flight.delivery.index += 1;
                    let delivery = flight.delivery.clone();
                    self.flights.insert(id, flight);
                    self.out.push_front(Action::Deliver(delivery));
                    return Ok(());
                }
                let peer = matches!(failure, HostFailure::Refused(_));
                let reply = host_failure_reply(&host, failure);
                vec![(reply, peer); flight.indexes.len()]
            }
            Outcome::Done(report) => flight
                .delivery
                .recipients
                .iter()
                .map(|m| report_reply(&report, m))
                .collect(),
            Outcome::Timeout { answered } => {
                let lost = Reply::new(
                    451,
                    EnhancedCode::new(4, 4, 2),
                    format!("Timed out waiting for {host} during the transaction"),
                );
                interrupted(&flight.delivery.recipients, &answered, lost)
            }
            Outcome::ConnectionLost { answered } => {
                let lost = Reply::new(
                    451,
                    EnhancedCode::new(4, 4, 2),
                    format!("Lost connection with {host} during the transaction"),
                );
                interrupted(&flight.delivery.recipients, &answered, lost)
            }
            Outcome::LoopsBack { peer } => {
                let peer: String = peer.chars().filter(|c| !c.is_control()).collect();
                let reply = Reply::new(
                    554,
                    EnhancedCode::new(5, 4, 6),
                    format!("Mail loops back to myself: {host} greets as {peer}"),
                );
                vec![(reply, false); flight.indexes.len()]
            }
            Outcome::NoSmtpUtf8 => {
                let reply = Reply::new(
                    554,
                    Some(EnhancedCode::NON_ASCII_ADDRESS),
                    format!("The message needs SMTPUTF8, which {host} does not offer"),
                );
                vec![(reply, false); flight.indexes.len()]
            }
        };
        let message = flight.delivery.message.clone();
        let mut changed = Changes::default();
        for (&i, (reply, peer)) in flight.indexes.iter().zip(replies) {
            self.messages.get_mut(&message).expect("queued").busy[i] = false;
            let remote = Some((host.clone(), peer));
            if reply.is_positive() {
                self.deliver(&message, i, reply, remote, flight.dsn, &mut changed);
            } else if reply.is_permanent() {
                self.fail(&message, i, reply, remote, &mut changed);
            } else {
                self.defer(&message, i, reply, remote, now, &mut changed);
            }
        }
        self.finish_changes(&message, changed, now);
        Ok(())
    }

    /// Looks at one message's open recipients: what to decide without a
    /// peer, which hosts to go to, and a domain whose MX is needed first.
    /// With no free delivery slot (`slots` false) no host groups are
    /// made: they could not start.
    fn scan(
        &self,
        entry: &Entry,
        now: SystemTime,
        slots: bool,
        used: &mut HashSet<String>,
    ) -> Scan {
        let mut decisions = Vec::new();
        let mut groups: Vec<(Vec<NextHop>, Vec<usize>)> = Vec::new();
        let mut waiting = false;
        for (i, r) in entry.msg.recipients().iter().enumerate() {
            match r.state().due() {
                Some(due) if due <= now && !entry.busy[i] => {}
                _ => continue,
            }
            let hosts = match &entry.routes[i] {
                Route::Local => Err(loops_back_reply(r.mailbox().domain())),
                Route::Hosts(hosts) => Ok(hosts),
                Route::Dns(domain) => match self.dns.get(domain) {
                    None => {
                        return Scan {
                            ask: Some(domain.clone()),
                            ..Scan::default()
                        };
                    }
                    Some(Lookup::Asked) => {
                        waiting = true;
                        continue;
                    }
                    Some(Lookup::Answered(answer)) => {
                        if !used.contains(domain) {
                            used.insert(domain.clone());
                        }
                        answer.as_ref().map_err(Clone::clone)
                    }
                },
            };
            match hosts {
                Err(reply) if reply.is_permanent() => decisions.push(Decision::Fail(i, reply)),
                Err(reply) => decisions.push(Decision::Defer(i, reply)),
                Ok(_) if !slots => {}
                Ok(hosts) => match groups.iter_mut().find(|(h, _)| h[0] == hosts[0]) {
                    Some((_, indexes)) => indexes.push(i),
                    None => groups.push((hosts.clone(), vec![i])),
                },
            }
        }
        Scan {
            decisions,
            groups,
            ask: None,
            waiting,
        }
    }

    fn start(&mut self, id: &MessageId, hosts: Vec<NextHop>, indexes: Vec<usize>) -> Delivery {
        let entry = self.messages.get_mut(id).expect("queued");
        for &i in &indexes {
            entry.busy[i] = true;
        }
        self.next_delivery += 1;
        let delivery = Delivery {
            id: DeliveryId(self.next_delivery),
            message: id.clone(),
            hosts,
            index: 0,
            from: entry.msg.reverse_path().clone(),
            recipients: indexes
                .iter()
                .map(|&i| entry.msg.recipients()[i].mailbox().clone())
                .collect(),
        };
        self.flights.insert(
            delivery.id,
            Flight {
                delivery: delivery.clone(),
                indexes,
                dsn: false,
            },
        );
        delivery
    }

    fn deliver(
        &mut self,
        id: &MessageId,
        i: usize,
        reply: Reply,
        remote: Option<(String, bool)>,
        dsn: bool,
        changed: &mut Changes,
    ) {
        let r = self
            .messages
            .get_mut(id)
            .expect("queued")
            .msg
            .recipient_mut(i);
        r.set_state(RecipientState::Delivered {
            reply: reply.clone(),
        });
        changed.any = true;
        if r.wants().0 && !dsn {
            changed.success.push(NoticeRecipient::new(
                r,
                DsnAction::Relayed,
                Some(reply),
                remote,
                None,
            ));
        }
    }

    fn fail(
        &mut self,
        id: &MessageId,
        i: usize,
        reply: Reply,
        remote: Option<(String, bool)>,
        changed: &mut Changes,
    ) {
        let r = self
            .messages
            .get_mut(id)
            .expect("queued")
            .msg
            .recipient_mut(i);
        r.set_state(RecipientState::Failed {
            reply: reply.clone(),
        });
        changed.any = true;
        if r.wants().1 {
            changed.failure.push(NoticeRecipient::new(
                r,
                DsnAction::Failed,
                Some(reply),
                remote,
                None,
            ));
        }
    }

    fn defer(
        &mut self,
        id: &MessageId,
        i: usize,
        reply: Reply,
        remote: Option<(String, bool)>,
        now: SystemTime,
        changed: &mut Changes,
    ) {
        let entry = self.messages.get_mut(id).expect("queued");
        let arrival = entry.msg.arrival();
        let expiry = arrival + self.config.queue_lifetime;
        if now >= expiry {
            return self.fail(id, i, reply, remote, changed);
        }
        let r = entry.msg.recipient_mut(i);
        let attempts = r.state().attempts().saturating_add(1);
        let next_attempt = (now + self.config.backoff(attempts)).min(expiry);
        r.set_state(RecipientState::Deferred {
            attempts,
            next_attempt,
            last_reply: reply.clone(),
        });
        changed.any = true;
        if r.wants().2 && !r.delay_notified() && now >= arrival + self.config.delay_warning {
            r.set_delay_notified();
            changed.delay.push(NoticeRecipient::new(
                r,
                DsnAction::Delayed,
                Some(reply),
                remote,
                Some(expiry),
            ));
        }
    }

    /// Queues the notices a batch of changes earned, then the save.
    fn finish_changes(&mut self, id: &MessageId, changed: Changes, now: SystemTime) {
        if !changed.any {
            return;
        }
        let entry = &self.messages[id];
        // A message from `<>` is never answered (RFC 3461 §6.2); when it
        // fails, the postmaster hears of it instead: a double bounce.
        let batches = match entry.msg.reverse_path() {
            ReversePath::Mailbox(sender) => vec![
                (NoticeKind::Failure, sender.clone(), changed.failure),
                (NoticeKind::Delay, sender.clone(), changed.delay),
                (NoticeKind::Success, sender.clone(), changed.success),
            ],
            ReversePath::Null => format!("postmaster@{}", self.config.hostname)
                .parse::<Mailbox<'_>>()
                .map(|postmaster| {
                    vec![(
                        NoticeKind::DoubleBounce,
                        postmaster.into_owned(),
                        changed.failure,
                    )]
                })
                .unwrap_or_default(),
        };
        for (kind, to, recipients) in batches {
            if recipients.is_empty() {
                continue;
            }
            self.notices += 1;
            let notice = Notice::new(
                kind,
                &entry.msg,
                to,
                &self.config,
                recipients,
                now,
                self.notices,
            );
            self.out.push_back(Action::Notify(notice));
        }
        if entry.msg.is_done() && !entry.busy.contains(&true) {
            self.messages.remove(id);
            self.out.push_back(Action::Remove(id.clone()));
        } else {
            self.out.push_back(Action::Save(id.clone()));
        }
    }
}

/// What one batch of decisions changed, and whom to tell.
#[derive(Default)]
struct Changes {
    any: bool,
    failure: Vec<NoticeRecipient>,
    delay: Vec<NoticeRecipient>,
    success: Vec<NoticeRecipient>,
}

/// The reply a host failure leaves with each recipient: the peer's own
/// when it said something, else one that says what went wrong.
fn host_failure_reply(host: &str, failure: HostFailure) -> Reply {
    let clean = |s: String| -> String { s.chars().filter(|c| !c.is_control()).collect() };
    match failure {
        HostFailure::Refused(reply) => reply,
        HostFailure::Unreachable(why) => Reply::new(
            451,
            EnhancedCode::new(4, 4, 1),
            format!("Connect to {host} failed: {}", clean(why)),
        ),
        HostFailure::Timeout => Reply::new(
            451,
            EnhancedCode::new(4, 4, 1),
            format!("No greeting from {host} in time"),
        ),
        HostFailure::Tls(why) => Reply::new(
            451,
            EnhancedCode::new(4, 7, 5),
            format!("TLS with {host} failed: {}", clean(why)),
        ),
    }
}

/// The reply that decides `rcpt` from a finished transaction's report,
/// and whether the peer said it.
fn report_reply(report: &Report, rcpt: &Mailbox<'static>) -> (Reply, bool) {
    let is = |p: &ForwardPath<'static>| p.mailbox() == Some(rcpt);
    if let Some((_, reply)) = report.refused.iter().find(|(p, _)| is(p)) {
        return (reply.clone(), true);
    }
    let accepted = report.accepted.iter().any(|(p, _)| is(p));
    match &report.outcome {
        Err(Failure::Sender(reply)) => (reply.clone(), true),
        Err(Failure::TooBig { limit, .. }) => (
            Reply::new(
                552,
                Some(EnhancedCode::MESSAGE_TOO_BIG),
                format!("Message size exceeds the next hop's limit of {limit} octets"),
            ),
            false,
        ),
        _ if !accepted => (
            Reply::new(
                451,
                EnhancedCode::new(4, 4, 2),
                "No reply for this recipient",
            ),
            false,
        ),
        Ok(reply) | Err(Failure::Data(reply) | Failure::Message(reply)) => (reply.clone(), true),
        Err(_) => (
            Reply::new(
                451,
                EnhancedCode::new(4, 4, 2),
                "Connection lost before the end of the transaction",
            ),
            false,
        ),
    }
}

/// Recipients of an interrupted transaction: a refusal stands, the rest
/// wait for the next attempt with `lost`.
fn interrupted(
    recipients: &[Mailbox<'static>],
    answered: &[(ForwardPath<'static>, Reply)],
    lost: Reply,
) -> Vec<(Reply, bool)> {
    recipients
        .iter()
        .map(|m| {
            match answered
                .iter()
                .find(|(p, _)| p.mailbox() == Some(m))
                .map(|(_, r)| r)
            {
                Some(r) if !r.is_positive() => (r.clone(), true),
                _ => (lost.clone(), false),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(wire: &str) -> Reply {
        Reply::parse(format!("{wire}\r\n").as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    fn mb(s: &str) -> Mailbox<'static> {
        s.parse().unwrap()
    }

    #[test]
    fn host_failures_say_what_went_wrong() {
        let cases = [
            (
                HostFailure::Unreachable("Connection refused\r\n".into()),
                "451 4.4.1 Connect to mx.example failed: Connection refused",
            ),
            (
                HostFailure::Timeout,
                "451 4.4.1 No greeting from mx.example in time",
            ),
            (
                HostFailure::Tls("bad certificate".into()),
                "451 4.7.5 TLS with mx.example failed: bad certificate",
            ),
            (
                HostFailure::Refused(reply("554 5.7.1 No SMTP service here")),
                "554 5.7.1 No SMTP service here",
            ),
        ];
        for (failure, want) in cases {
            assert_eq!(host_failure_reply("mx.example", failure).to_string(), want);
        }
    }

    #[test]
    fn a_report_decides_each_recipient() {
        let a = mb("a@x.example");
        let b = mb("b@x.example");
        let c = mb("c@x.example");
        let report = Report {
            accepted: vec![(ForwardPath::Mailbox(a.clone()), reply("250 ok"))],
            refused: vec![(ForwardPath::Mailbox(b.clone()), reply("550 5.1.1 no"))],
            outcome: Ok(reply("250 2.0.0 queued")),
        };
        assert_eq!(report_reply(&report, &a), (reply("250 2.0.0 queued"), true));
        assert_eq!(report_reply(&report, &b), (reply("550 5.1.1 no"), true));
        // Not in the report at all: no reply, so not delivered.
        let (r, peer) = report_reply(&report, &c);
        assert!(r.is_transient() && !peer, "{r}");
    }
}
