//! The SMTP side of the toy server: what the application decides for each
//! event of a `postamt_smtp::ServerSession`, as a handler on the event
//! loop. Store work that may wait on a disk or a network (the room check
//! at RCPT, writing and committing a message) runs on the worker pool, and
//! the session waits for it; a store in memory is asked on the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use postamt_relay::{HopCounter, MessageId, QueuedMessage, QueuedRecipient, too_many_hops};
use postamt_smtp::{
    Event, ForwardPath, Hello, InputMode, MailParameters, Mailbox, Reply, ReversePath,
    ServerSession, Session,
};
use postamt_store::{Delivery, MailboxName, SpoolWriter, StoreError};

use crate::evloop::{Ask, Client, Handler, Reading, Then, offload};
use crate::server::{Shared, Slot};
use crate::trace::{Protocol, Trace};

/// Where mail to `<Postmaster>` goes when no user has that address.
pub const POSTMASTER_MAILBOX: &str = "postmaster";
/// Pause after a failed AUTH, against password guessing.
pub(crate) const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

/// Message text gathered before it goes to a store that blocks, so that
/// each trip to the worker pool carries a fair amount.
const WRITE_BATCH: usize = 256 * 1024;

/// One SMTP connection as the event loop drives it.
pub(crate) struct SmtpConn {
    session: ServerSession,
    shared: Arc<Shared>,
    trace: Trace,
    tx: Transaction,
    /// Counted in the connection limits while it lives.
    _slot: Slot,
}

struct Transaction {
    helo: String,
    /// The client: the connection's peer, the client a balancer's PROXY
    /// header named, or the one a trusted proxy's XCLIENT named.
    peer: SocketAddr,
    /// Who the peer was before XCLIENT (what `ADDR=[UNAVAILABLE]` returns to).
    connection_peer: SocketAddr,
    /// The client's host name, as XCLIENT `NAME=` gave it.
    client_name: Option<String>,
    from: String,
    recipients: Vec<MailboxName>,
    /// The MAIL `SIZE=` the client declared (0: none), asked of each RCPT's mailbox.
    size: u64,
    /// The sender and MAIL parameters, for the queue.
    reverse_path: ReversePath<'static>,
    params: MailParameters<'static>,
    /// Accepted recipients in other domains: they go to the queue.
    foreign: Vec<QueuedRecipient>,
    hops: HopCounter,
    failed: bool,
    /// The reply for a delivery the store refused for room (else 451).
    refusal: Option<Reply>,
    /// Where the message goes; moved to the pool and back for store work
    /// (`None` while it is out there).
    copies: Option<Copies>,
    /// Message text not yet written to the copies (a store that blocks).
    pending: Vec<u8>,
}

/// The copies of one message: the local delivery and the queue entry,
/// begun with the first octets written to them.
#[derive(Default)]
struct Copies {
    /// The local mailboxes (none: no local copy) and what goes before the
    /// message in their copy.
    recipients: Vec<MailboxName>,
    local_head: String,
    /// Whether the queue gets a copy, and what goes before the message in it.
    queued: bool,
    queue_head: String,
    begun: bool,
    delivery: Option<Box<dyn Delivery>>,
    spool: Option<Box<dyn SpoolWriter>>,
    spooled: u64,
}

/// What the queue entry of a message records besides its octets.
struct Envelope {
    reverse_path: ReversePath<'static>,
    params: MailParameters<'static>,
    foreign: Vec<QueuedRecipient>,
}

/// A store operation that failed, and what it was.
struct Failed(&'static str, StoreError);

impl Copies {
    /// Begins the copies on first use, then writes `bytes` to each. On
    /// failure both copies are dropped (which aborts them).
    fn write(&mut self, shared: &Shared, bytes: &[u8]) -> Result<(), Failed> {
        let result = self.try_write(shared, bytes);
        if result.is_err() {
            self.delivery = None;
            self.spool = None;
        }
        result
    }

    fn try_write(&mut self, shared: &Shared, bytes: &[u8]) -> Result<(), Failed> {
        if !self.begun {
            self.begun = true;
            if !self.recipients.is_empty() {
                let mut delivery = shared
                    .store
                    .begin_delivery(&self.recipients)
                    .map_err(|e| Failed("cannot begin delivery", e))?;
                delivery
                    .write_chunk(self.local_head.as_bytes())
                    .map_err(|e| Failed("writing the trace header failed", e))?;
                self.delivery = Some(delivery);
            }
            if self.queued {
                let mut spool = shared
                    .forwarding
                    .spool
                    .begin()
                    .map_err(|e| Failed("cannot begin a queue entry", e))?;
                spool
                    .write_chunk(self.queue_head.as_bytes())
                    .map_err(|e| Failed("writing to the queue failed", e))?;
                self.spooled = self.queue_head.len() as u64;
                self.spool = Some(spool);
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(delivery) = self.delivery.as_mut() {
            delivery
                .write_chunk(bytes)
                .map_err(|e| Failed("delivery failed while writing", e))?;
        }
        if let Some(spool) = self.spool.as_mut() {
            spool
                .write_chunk(bytes)
                .map_err(|e| Failed("writing to the queue failed", e))?;
            self.spooled += bytes.len() as u64;
        }
        Ok(())
    }
}

impl SmtpConn {
    pub(crate) fn new(client: Client, id: u64, shared: &Arc<Shared>, slot: Slot) -> Self {
        let trace = Trace::new(id, Protocol::Smtp, shared.trace.clone());
        trace.note(&client.connected());
        let peer = client.addr;
        let mut session = ServerSession::new(Arc::clone(&shared.smtp), Instant::now());
        let ip = client.peer.ip().to_canonical();
        session.allow_xclient(shared.xclient_from.iter().any(|net| net.contains(&ip)));
        Self {
            session,
            shared: Arc::clone(shared),
            trace,
            tx: Transaction {
                helo: String::new(),
                peer,
                connection_peer: peer,
                client_name: None,
                from: String::new(),
                recipients: Vec::new(),
                size: 0,
                reverse_path: ReversePath::Null,
                params: MailParameters::default(),
                foreign: Vec::new(),
                hops: HopCounter::new(),
                failed: false,
                refusal: None,
                copies: None,
                pending: Vec::new(),
            },
            _slot: slot,
        }
    }

    /// Whether the copies of a message may wait on a disk or a network.
    fn copies_block(&self) -> bool {
        self.shared.store.blocks() || self.shared.forwarding.spool.blocks()
    }

    /// Logs what the session refused to take (decisions are answered when
    /// due, so this is a bug if it shows).
    fn decided(&self, result: Result<(), postamt_smtp::UsageError>) {
        if let Err(e) = result {
            self.trace
                .error(&format!("session refused a decision: {e}"));
        }
    }

    fn handle(&mut self, event: Event) -> Option<Ask<Then<Self>>> {
        match event {
            Event::Hello { domain, .. } => {
                self.tx.helo = domain.to_string();
                None
            }
            Event::Xclient(x) => {
                // A trusted proxy names the client it speaks for: Received:,
                // the relay decision and the trace use that one from now on.
                let tx = &mut self.tx;
                if let Some(addr) = &x.addr {
                    let port = x
                        .port
                        .as_ref()
                        .and_then(|p| p.known().copied())
                        .unwrap_or(0);
                    tx.peer = match addr.known() {
                        Some(ip) => SocketAddr::new(*ip, port),
                        None => tx.connection_peer,
                    };
                }
                if let Some(name) = &x.name {
                    tx.client_name = name.known().map(ToString::to_string);
                }
                if let Some(helo) = &x.helo {
                    tx.helo = helo.known().cloned().unwrap_or_default();
                }
                let login = x
                    .login_name()
                    .map(|user| format!(", logged in as {user}"))
                    .unwrap_or_default();
                self.trace.note(&format!(
                    "XCLIENT: speaking for {}{}{login}",
                    tx.peer,
                    tx.client_name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ));
                None
            }
            Event::Auth { credentials, .. } => {
                let blocks = self.shared.directory.blocks();
                let shared = Arc::clone(&self.shared);
                offload(
                    self,
                    &shared,
                    blocks,
                    move |shared: &Shared| {
                        let password = credentials.password.expose().as_bytes();
                        shared
                            .directory
                            .check_password(&credentials.username, password)
                            .map(|found| found.map(|_| credentials.username.clone()))
                    },
                    |c: &mut Self, user| match user {
                        Ok(Some(user)) => {
                            c.trace.note(&format!("authenticated as {user}"));
                            let accepted = c.session.accept();
                            c.decided(accepted);
                            None
                        }
                        Err(e) => {
                            c.trace.error(&format!("cannot check a login: {e}"));
                            let refused = c.session.reject(Reply::auth_unavailable());
                            c.decided(refused);
                            None
                        }
                        Ok(None) => Some(Ask::Pause(
                            FAILED_LOGIN_DELAY,
                            Then::new(|c: &mut Self| {
                                let rejected = c.session.reject(Reply::auth_failed());
                                c.decided(rejected);
                                None
                            }),
                        )),
                    },
                )
            }
            Event::Mail { from, params } => {
                let tx = &mut self.tx;
                tx.from = from.to_string();
                tx.recipients.clear();
                tx.foreign.clear();
                tx.size = params.size.unwrap_or(0);
                tx.reverse_path = from;
                tx.params = params;
                let accepted = self.session.accept();
                self.decided(accepted);
                None
            }
            Event::Rcpt { to, params } => {
                let may_relay = self.session.is_authenticated()
                    || self.shared.forwarding.trusts(self.tx.peer.ip());
                let size = self.tx.size;
                let blocks = self.shared.directory.blocks() || self.shared.store.blocks();
                let shared = Arc::clone(&self.shared);
                offload(
                    self,
                    &shared,
                    blocks,
                    move |shared: &Shared| match recipient_mailbox(&to, may_relay, shared) {
                        Ok(Dest::Local(mailbox)) => {
                            let room = shared.store.check_room(&mailbox, size);
                            (Ok(Dest::Local(mailbox)), room.err(), params)
                        }
                        other => (other, None, params),
                    },
                    |c: &mut Self, (dest, short, params)| {
                        let decided = match (dest, short) {
                            (Ok(Dest::Foreign(mailbox)), _) => {
                                c.trace.note(&format!("{mailbox} goes to the queue"));
                                c.tx.foreign
                                    .push(QueuedRecipient::from_rcpt(mailbox, &params));
                                c.session.accept()
                            }
                            (Ok(Dest::Local(mailbox)), None) => {
                                c.tx.recipients.push(mailbox);
                                c.session.accept()
                            }
                            (Ok(Dest::Local(_)), Some(e)) => {
                                let reply = match no_room(&e) {
                                    Some(reply) => {
                                        c.trace.note(&format!("recipient refused: {e}"));
                                        reply
                                    }
                                    None => {
                                        c.trace
                                            .error(&format!("cannot ask the store for room: {e}"));
                                        Reply::local_error()
                                    }
                                };
                                c.session.reject(reply)
                            }
                            (Err(reply), _) => c.session.reject(reply),
                        };
                        c.decided(decided);
                        None
                    },
                )
            }
            Event::MessageStart => {
                let received = received_header(&self.tx, &self.session, &self.shared);
                let tx = &mut self.tx;
                tx.failed = false;
                tx.refusal = None;
                tx.hops = HopCounter::new();
                tx.pending.clear();
                tx.copies = Some(Copies {
                    recipients: std::mem::take(&mut tx.recipients),
                    local_head: format!("Return-Path: {}\r\n{received}", tx.from),
                    queued: !tx.foreign.is_empty(),
                    // The queued copy gets no Return-Path: the last server adds it.
                    queue_head: received,
                    ..Copies::default()
                });
                None
            }
            Event::MessageData(bytes) => {
                self.tx.hops.feed(&bytes);
                if self.tx.failed {
                    // The rest of the message is read and discarded.
                    return None;
                }
                if !self.copies_block() {
                    let shared = Arc::clone(&self.shared);
                    if let Some(copies) = self.tx.copies.as_mut()
                        && let Err(Failed(what, e)) = copies.write(&shared, &bytes)
                    {
                        self.tx.fail(what, &e, &self.trace);
                    }
                    return None;
                }
                self.tx.pending.extend_from_slice(&bytes);
                if self.tx.pending.len() < WRITE_BATCH {
                    return None;
                }
                let batch = std::mem::take(&mut self.tx.pending);
                let copies = self.tx.copies.take();
                let shared = Arc::clone(&self.shared);
                offload(
                    self,
                    &shared,
                    true,
                    move |shared: &Shared| {
                        let mut copies = copies.unwrap_or_default();
                        let written = copies.write(shared, &batch);
                        (copies, written)
                    },
                    |c: &mut Self, (copies, written)| {
                        c.tx.copies = Some(copies);
                        if let Err(Failed(what, e)) = written {
                            c.tx.fail(what, &e, &c.trace);
                        }
                        None
                    },
                )
            }
            Event::MessageEnd => self.message_end(),
            Event::MessageAborted(_) | Event::Reset => {
                self.tx.copies = None;
                self.tx.pending = Vec::new();
                self.tx.recipients.clear();
                self.tx.foreign.clear();
                None
            }
            _ => None,
        }
    }

    /// The message is complete: make it durable everywhere it goes, then
    /// answer (250 only once it is).
    fn message_end(&mut self) -> Option<Ask<Then<Self>>> {
        let tx = &mut self.tx;
        tx.recipients.clear();
        let foreign = std::mem::take(&mut tx.foreign);
        let refused = if tx.hops.too_many() {
            Some((
                format!("{} Received: headers, a loop", tx.hops.count()),
                Some(too_many_hops()),
            ))
        } else if tx.failed {
            // The delivery failed earlier and was dropped; that was logged.
            Some(("the delivery failed earlier".to_string(), tx.refusal.take()))
        } else {
            None
        };
        if let Some(refused) = refused {
            tx.copies = None;
            tx.pending = Vec::new();
            self.answer(Err(refused));
            return None;
        }
        let batch = std::mem::take(&mut tx.pending);
        let copies = tx.copies.take().unwrap_or_default();
        let envelope = Envelope {
            reverse_path: tx.reverse_path.clone(),
            params: tx.params.clone(),
            foreign,
        };
        let blocks = self.copies_block();
        let shared = Arc::clone(&self.shared);
        offload(
            self,
            &shared,
            blocks,
            move |shared: &Shared| {
                let mut copies = copies;
                match copies.write(shared, &batch) {
                    Ok(()) => commit(copies, envelope, shared),
                    Err(Failed(what, e)) => {
                        let reply = no_room(&e);
                        Err((format!("{what}: {e}"), reply))
                    }
                }
            },
            |c: &mut Self, stored| {
                if let Ok(Some(msg)) = &stored {
                    c.shared.forwarder.queued(msg.clone());
                }
                c.answer(stored.map(|_| ()));
                None
            },
        )
    }

    /// Answers the end of a message: stored, or why not.
    fn answer(&mut self, stored: Result<(), (String, Option<Reply>)>) {
        let decided = match stored {
            Ok(()) => {
                self.trace.note("message stored");
                self.session.accept()
            }
            Err((e, Some(reply))) => {
                self.trace
                    .note(&format!("message from {} refused: {e}", self.tx.from));
                self.session.reject(reply)
            }
            Err((e, None)) => {
                self.trace
                    .error(&format!("message from {} not stored: {e}", self.tx.from));
                self.session.reject(Reply::local_error())
            }
        };
        self.decided(decided);
    }
}

impl Handler for SmtpConn {
    type Session = ServerSession;
    type Done = Then<Self>;

    fn session(&mut self) -> &mut ServerSession {
        &mut self.session
    }

    fn on_events(&mut self) -> Option<Ask<Then<Self>>> {
        while let Some(event) = self.session.poll_event() {
            if let Event::StartTls = event {
                return Some(Ask::StartTls);
            }
            if let Some(ask) = self.handle(event) {
                return Some(ask);
            }
        }
        None
    }

    fn finish(&mut self, done: Then<Self>) -> Option<Ask<Then<Self>>> {
        done.run(self)
    }

    fn reading(&mut self) -> Reading {
        match self.session.input_mode() {
            InputMode::SaslResponse => Reading::Line { secret: true },
            InputMode::Data => Reading::Text,
            InputMode::Chunk { remaining } => Reading::Chunk { left: remaining },
            _ => Reading::Line { secret: false },
        }
    }

    fn trace(&mut self) -> Option<&mut Trace> {
        Some(&mut self.trace)
    }
}

impl Transaction {
    /// Marks the delivery failed: for room, with the reply the message gets
    /// at its end; otherwise as an error, which gets 451. What it held is
    /// dropped, which releases it at once.
    fn fail(&mut self, what: &str, e: &StoreError, trace: &Trace) {
        self.failed = true;
        self.copies = None;
        self.pending = Vec::new();
        self.refusal = no_room(e);
        if self.refusal.is_some() {
            trace.note(&format!("{what}: {e}"));
        } else {
            trace.error(&format!("{what}: {e}"));
        }
    }
}

/// The reply for a store that has no room, `None` for any other error.
fn no_room(e: &StoreError) -> Option<Reply> {
    match e {
        StoreError::QuotaExceeded { .. } => Some(Reply::mailbox_full()),
        StoreError::StorageFull { .. } => Some(Reply::storage_full()),
        _ => None,
    }
}

/// Makes the message durable everywhere it goes: first the queue entry
/// (message and record together), then the local delivery. The 250 goes
/// out only when both are. When the local delivery fails the queue entry
/// is taken back before the relay has seen it, so the client's retry
/// sends it to nobody twice. Gives back the queued message for the relay.
fn commit(
    copies: Copies,
    envelope: Envelope,
    shared: &Shared,
) -> Result<Option<QueuedMessage>, (String, Option<Reply>)> {
    let mut queued = None;
    if let Some(spool) = copies.spool {
        let id = spool.id().clone();
        let msg = QueuedMessage::new(
            MessageId::new(id.as_str()),
            envelope.reverse_path,
            SystemTime::now(),
            copies.spooled,
        )
        .with_mail_parameters(&envelope.params);
        let msg = envelope
            .foreign
            .into_iter()
            .fold(msg, QueuedMessage::with_recipient);
        if let Err(e) = spool.commit(&crate::forward::record(&msg)) {
            return Err((format!("the queue did not take it: {e}"), no_room(&e)));
        }
        queued = Some((id, msg));
    }
    if let Some(delivery) = copies.delivery
        && let Err(e) = delivery.commit()
    {
        if let Some((id, _)) = &queued
            && let Err(undo) = shared.forwarding.spool.remove(id)
        {
            // Kept queued: the client's retry may bring its recipients a
            // second copy, but nothing is lost.
            eprintln!("cannot take {id} back from the queue: {undo}");
        }
        let reply = no_room(&e);
        return Err((e.to_string(), reply));
    }
    Ok(queued.map(|(_, msg)| msg))
}

/// Where an accepted recipient's mail goes.
enum Dest {
    /// A mailbox here.
    Local(MailboxName),
    /// Another domain's: the queue.
    Foreign(Mailbox<'static>),
}

/// Where mail for `to` goes, or the reply refusing it.
fn recipient_mailbox(
    to: &ForwardPath<'static>,
    may_relay: bool,
    shared: &Shared,
) -> Result<Dest, Reply> {
    let postmaster = || {
        MailboxName::new(POSTMASTER_MAILBOX)
            .map(Dest::Local)
            .map_err(|_| Reply::local_error())
    };
    let Some(mailbox) = to.mailbox() else {
        return postmaster();
    };
    // A directory that cannot answer now gets a "try again later", never
    // a permanent refusal that would bounce the mail.
    let unavailable = |e: StoreError| {
        eprintln!("cannot look up <{mailbox}>: {e}");
        Reply::local_error()
    };
    if shared
        .directory
        .check_local_domain(mailbox.domain())
        .map_err(unavailable)?
    {
        if let Some(local) = shared
            .directory
            .lookup(mailbox.as_str())
            .map_err(unavailable)?
        {
            return Ok(Dest::Local(local));
        }
        if mailbox.local_part().eq_ignore_ascii_case("postmaster") {
            return postmaster();
        }
        return Err(Reply::unknown_user());
    }
    if may_relay {
        return Ok(Dest::Foreign(mailbox.clone().into_owned()));
    }
    Err(Reply::relay_denied())
}

/// `Received:` (RFC 5321 §4.4), with the RFC 3848 protocol; a local
/// delivery puts `Return-Path:` before it.
fn received_header(tx: &Transaction, session: &ServerSession, shared: &Shared) -> String {
    let mut with = String::from(if session.hello() == Some(Hello::Helo) {
        "SMTP"
    } else {
        "ESMTP"
    });
    if session.is_tls() {
        with.push('S');
    }
    if session.is_authenticated() {
        with.push('A');
    }
    let date = httpdate::fmt_http_date(SystemTime::now()).replace("GMT", "+0000");
    format!(
        "Received: from {} ({}[{}])\r\n\tby {} (postamt) with {with};\r\n\t{date}\r\n",
        tx.helo,
        tx.client_name
            .as_deref()
            .map(|name| format!("{name} "))
            .unwrap_or_default(),
        tx.peer.ip(),
        shared.smtp.hostname,
    )
}
