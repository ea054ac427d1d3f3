//! The SMTP side of the toy server: what the application decides for each
//! event of a `postamt_smtp::ServerSession`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use postamt_smtp::{Event, ForwardPath, Hello, InputMode, Reply, ServerSession, Session};
use postamt_store::{Delivery, MailboxName, StoreError};

use crate::conn::{Next, Reading, drive};
use crate::server::Shared;
use crate::trace::{Protocol, Trace};

/// Where mail for other domains from authenticated clients is kept: this
/// server does not relay, and nothing it accepted may be lost.
pub const OUTBOUND_MAILBOX: &str = "outbound";
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
            tx.size = params.size.unwrap_or(0);
            session.accept()
        }
        Event::Rcpt { to, .. } => {
            match recipient_mailbox(&to, session.is_authenticated(), shared) {
                Ok(mailbox) => match shared.store.check_room(&mailbox, tx.size) {
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
            tx.delivery = match shared.store.begin_delivery(&tx.recipients) {
                Ok(mut delivery) => {
                    let header = trace_header(tx, session, shared);
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
            Ok(())
        }
        Event::MessageData(bytes) => {
            if let Some(delivery) = tx.delivery.as_mut()
                && let Err(e) = delivery.write_chunk(&bytes)
            {
                // Dropping the delivery releases what it held at once; the
                // rest of the message is read and discarded.
                tx.delivery = None;
                tx.fail("delivery failed while writing", &e, trace);
            }
            Ok(())
        }
        Event::MessageEnd => {
            tx.recipients.clear();
            let stored = match tx.delivery.take() {
                Some(delivery) if !tx.failed => delivery.commit().map_err(|e| {
                    let reply = no_room(&e);
                    (e.to_string(), reply)
                }),
                // The delivery failed earlier and was dropped; that was logged.
                _ => Err(("the delivery failed earlier".to_string(), tx.refusal.take())),
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
            tx.recipients.clear();
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

/// Where mail for `to` goes, or the reply refusing it.
fn recipient_mailbox(
    to: &ForwardPath<'_>,
    authenticated: bool,
    shared: &Shared,
) -> Result<MailboxName, Reply> {
    let postmaster = || MailboxName::new(POSTMASTER_MAILBOX).map_err(|_| Reply::local_error());
    let Some(mailbox) = to.mailbox() else {
        return postmaster();
    };
    if shared.directory.is_local_domain(mailbox.domain()) {
        if let Some(local) = shared.directory.resolve(mailbox.as_str()) {
            return Ok(local);
        }
        if mailbox.local_part().eq_ignore_ascii_case("postmaster") {
            return postmaster();
        }
        return Err(Reply::unknown_user());
    }
    if authenticated {
        return MailboxName::new(OUTBOUND_MAILBOX).map_err(|_| Reply::local_error());
    }
    Err(Reply::relay_denied())
}

/// `Return-Path:` and `Received:` (RFC 5321 §4.4), with the RFC 3848 protocol.
fn trace_header(tx: &Transaction, session: &ServerSession, shared: &Shared) -> String {
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
        "Return-Path: {}\r\nReceived: from {} ([{}])\r\n\tby {} (postamt) with {with};\r\n\t{date}\r\n",
        tx.from,
        tx.helo,
        tx.peer.ip(),
        shared.smtp.hostname,
    )
}
