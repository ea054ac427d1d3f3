//! The SMTP side of the toy server: what the application decides for each
//! event of a `postamt_smtp::ServerSession`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use postamt_relay::{HopCounter, MessageId, QueuedMessage, QueuedRecipient, too_many_hops};
use postamt_smtp::{
    Event, ForwardPath, Hello, InputMode, MailParameters, Mailbox, Reply, ReversePath,
    ServerSession, Session,
};
use postamt_store::{Delivery, MailboxName, SpoolWriter, StoreError};

use crate::conn::{Next, Reading, drive};
use crate::server::Shared;
use crate::trace::{Protocol, Trace};

/// Where mail to `<Postmaster>` goes when no user has that address.
pub const POSTMASTER_MAILBOX: &str = "postmaster";
/// Pause after a failed AUTH, against password guessing.
pub(crate) const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

struct Transaction {
    helo: String,
    peer: SocketAddr,
    from: String,
    recipients: Vec<MailboxName>,
    /// The MAIL `SIZE=` the client declared (0: none), asked of each RCPT's mailbox.
    size: u64,
    delivery: Option<Box<dyn Delivery>>,
    /// The sender and MAIL parameters, for the queue.
    reverse_path: ReversePath<'static>,
    params: MailParameters<'static>,
    /// Accepted recipients in other domains: they go to the queue.
    foreign: Vec<QueuedRecipient>,
    /// The queue entry being written, and its octets so far.
    spool: Option<Box<dyn SpoolWriter>>,
    spooled: u64,
    hops: HopCounter,
    failed: bool,
    /// The reply for a delivery the store refused for room (else 451).
    refusal: Option<Reply>,
}

pub(crate) fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut trace = Trace::new(id, Protocol::Smtp, shared.trace.clone());
    trace.note(&format!("connection from {peer}"));
    let session = ServerSession::new(Arc::clone(&shared.smtp), Instant::now());
    let mut tx = Transaction {
        helo: String::new(),
        peer,
        from: String::new(),
        recipients: Vec::new(),
        size: 0,
        delivery: None,
        reverse_path: ReversePath::Null,
        params: MailParameters::default(),
        foreign: Vec::new(),
        spool: None,
        spooled: 0,
        hops: HopCounter::new(),
        failed: false,
        refusal: None,
    };
    drive(
        tcp,
        session,
        shared,
        stop,
        &mut trace,
        reading,
        |session, trace| {
            let mut next = Next::Continue;
            while let Some(event) = session.poll_event() {
                if let Event::StartTls = event {
                    next = Next::StartTls;
                } else {
                    handle(session, event, &mut tx, shared, trace);
                }
            }
            next
        },
    )
}

/// What the SMTP session reads next, for the driver.
fn reading(session: &ServerSession) -> Reading {
    match session.input_mode() {
        InputMode::SaslResponse => Reading::Line { secret: true },
        InputMode::Data => Reading::Text,
        InputMode::Chunk { remaining } => Reading::Chunk { left: remaining },
        _ => Reading::Line { secret: false },
    }
}

fn handle(
    session: &mut ServerSession,
    event: Event,
    tx: &mut Transaction,
    shared: &Shared,
    trace: &Trace,
) {
    // Decisions are answered at once, so these calls cannot fail.
    let decided = match event {
        Event::Hello { domain, .. } => {
            tx.helo = domain.to_string();
            Ok(())
        }
        Event::Auth { credentials, .. } => {
            let password = credentials.password.expose().as_bytes();
            if shared
                .directory
                .verify_password(&credentials.username, password)
                .is_some()
            {
                trace.note(&format!("authenticated as {}", credentials.username));
                session.accept()
            } else {
                std::thread::sleep(FAILED_LOGIN_DELAY);
                session.reject(Reply::auth_failed())
            }
        }
        Event::Mail { from, params } => {
            tx.from = from.to_string();
            tx.recipients.clear();
            tx.foreign.clear();
            tx.size = params.size.unwrap_or(0);
            tx.reverse_path = from;
            tx.params = params;
            session.accept()
        }
        Event::Rcpt { to, params } => {
            let may_relay = session.is_authenticated() || shared.forwarding.trusts(tx.peer.ip());
            match recipient_mailbox(&to, may_relay, shared) {
                Ok(Dest::Foreign(mailbox)) => {
                    trace.note(&format!("{mailbox} goes to the queue"));
                    tx.foreign
                        .push(QueuedRecipient::from_rcpt(mailbox, &params));
                    session.accept()
                }
                Ok(Dest::Local(mailbox)) => match shared.store.check_room(&mailbox, tx.size) {
                    Ok(()) => {
                        tx.recipients.push(mailbox);
                        session.accept()
                    }
                    Err(e) => {
                        let reply = match no_room(&e) {
                            Some(reply) => {
                                trace.note(&format!("recipient refused: {e}"));
                                reply
                            }
                            None => {
                                trace.error(&format!("cannot ask the store for room: {e}"));
                                Reply::local_error()
                            }
                        };
                        session.reject(reply)
                    }
                },
                Err(reply) => session.reject(reply),
            }
        }
        Event::MessageStart => {
            tx.failed = false;
            tx.refusal = None;
            tx.hops = HopCounter::new();
            tx.spooled = 0;
            let received = received_header(tx, session, shared);
            if !tx.recipients.is_empty() {
                tx.delivery = match shared.store.begin_delivery(&tx.recipients) {
                    Ok(mut delivery) => {
                        let header = format!("Return-Path: {}\r\n{received}", tx.from);
                        match delivery.write_chunk(header.as_bytes()) {
                            Ok(()) => Some(delivery),
                            Err(e) => {
                                tx.fail("writing the trace header failed", &e, trace);
                                None
                            }
                        }
                    }
                    Err(e) => {
                        tx.fail("cannot begin delivery", &e, trace);
                        None
                    }
                };
            }
            if !tx.foreign.is_empty() && !tx.failed {
                // The queued copy gets no Return-Path: the last server adds it.
                tx.spool = match shared.forwarding.spool.begin() {
                    Ok(mut spool) => match spool.write_chunk(received.as_bytes()) {
                        Ok(()) => {
                            tx.spooled = received.len() as u64;
                            Some(spool)
                        }
                        Err(e) => {
                            tx.fail("writing to the queue failed", &e, trace);
                            None
                        }
                    },
                    Err(e) => {
                        tx.fail("cannot begin a queue entry", &e, trace);
                        None
                    }
                };
            }
            Ok(())
        }
        Event::MessageData(bytes) => {
            tx.hops.feed(&bytes);
            if let Some(delivery) = tx.delivery.as_mut()
                && let Err(e) = delivery.write_chunk(&bytes)
            {
                // Dropping the delivery releases what it held at once; the
                // rest of the message is read and discarded.
                tx.delivery = None;
                tx.spool = None;
                tx.fail("delivery failed while writing", &e, trace);
            }
            if let Some(spool) = tx.spool.as_mut() {
                match spool.write_chunk(&bytes) {
                    Ok(()) => tx.spooled += bytes.len() as u64,
                    Err(e) => {
                        tx.delivery = None;
                        tx.spool = None;
                        tx.fail("writing to the queue failed", &e, trace);
                    }
                }
            }
            Ok(())
        }
        Event::MessageEnd => {
            tx.recipients.clear();
            let foreign = std::mem::take(&mut tx.foreign);
            let stored = if tx.hops.too_many() {
                tx.delivery = None;
                tx.spool = None;
                Err((
                    format!("{} Received: headers, a loop", tx.hops.count()),
                    Some(too_many_hops()),
                ))
            } else if tx.failed {
                // The delivery failed earlier and was dropped; that was logged.
                tx.delivery = None;
                tx.spool = None;
                Err(("the delivery failed earlier".to_string(), tx.refusal.take()))
            } else {
                commit(tx, foreign, shared)
            };
            match stored {
                Ok(()) => {
                    trace.note("message stored");
                    session.accept()
                }
                Err((e, Some(reply))) => {
                    trace.note(&format!("message from {} refused: {e}", tx.from));
                    session.reject(reply)
                }
                Err((e, None)) => {
                    trace.error(&format!("message from {} not stored: {e}", tx.from));
                    session.reject(Reply::local_error())
                }
            }
        }
        Event::MessageAborted(_) | Event::Reset => {
            tx.delivery = None;
            tx.spool = None;
            tx.recipients.clear();
            tx.foreign.clear();
            Ok(())
        }
        _ => Ok(()),
    };
    if let Err(e) = decided {
        trace.error(&format!("session refused a decision: {e}"));
    }
}

impl Transaction {
    /// Marks the delivery failed: for room, with the reply the message gets
    /// at its end; otherwise as an error, which gets 451.
    fn fail(&mut self, what: &str, e: &StoreError, trace: &Trace) {
        self.failed = true;
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
/// sends it to nobody twice.
fn commit(
    tx: &mut Transaction,
    foreign: Vec<QueuedRecipient>,
    shared: &Shared,
) -> Result<(), (String, Option<Reply>)> {
    let mut queued = None;
    if let Some(spool) = tx.spool.take() {
        let id = spool.id().clone();
        let mut msg = QueuedMessage::new(
            MessageId::new(id.as_str()),
            tx.reverse_path.clone(),
            SystemTime::now(),
            tx.spooled,
        )
        .with_mail_parameters(&tx.params);
        for r in foreign {
            msg = msg.with_recipient(r);
        }
        if let Err(e) = spool.commit(&crate::forward::record(&msg)) {
            tx.delivery = None;
            return Err((format!("the queue did not take it: {e}"), no_room(&e)));
        }
        queued = Some((id, msg));
    }
    if let Some(delivery) = tx.delivery.take()
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
    if let Some((_, msg)) = queued {
        shared.forwarder.queued(msg);
    }
    Ok(())
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
    if shared.directory.is_local_domain(mailbox.domain()) {
        if let Some(local) = shared.directory.resolve(mailbox.as_str()) {
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
        "Received: from {} ([{}])\r\n\tby {} (postamt) with {with};\r\n\t{date}\r\n",
        tx.helo,
        tx.peer.ip(),
        shared.smtp.hostname,
    )
}
