//! The POP3 side of the toy server: logins against the directory, the
//! maildrop from the store, messages streamed, deletions committed at QUIT.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use postamt_pop3::Session as _;
use postamt_pop3::{Event, MessageFlow, Response, ResponseCode, ServerSession, verify_apop};
use postamt_store::{MailboxName, Maildrop, StoreError};

use crate::conn::{Next, Reading, drive};
use crate::server::Shared;
use crate::smtp::FAILED_LOGIN_DELAY;
use crate::trace::{Protocol, Trace};

/// Bytes of a message read from the store at a time.
const CHUNK: usize = 64 * 1024;

/// The open maildrop (its lock held) and the message being sent, if any.
#[derive(Default)]
struct State {
    maildrop: Option<Box<dyn Maildrop>>,
    reading: Option<Box<dyn Read + Send>>,
}

pub(crate) fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut trace = Trace::new(id, Protocol::Pop3, shared.trace.clone());
    trace.note(&format!("connection from {peer}"));
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let timestamp =
        postamt_pop3::apop_timestamp(std::process::id(), clock + u128::from(id), &shared.hostname);
    let session = ServerSession::with_apop(Arc::clone(&shared.pop3), Instant::now(), timestamp);
    let mut state = State::default();
    drive(
        tcp,
        session,
        shared,
        stop,
        &mut trace,
        |session: &ServerSession| Reading::Line {
            secret: session.expects_sasl_response(),
        },
        |session, trace| step(session, &mut state, shared, trace),
    )
}

fn step(session: &mut ServerSession, state: &mut State, shared: &Shared, trace: &Trace) -> Next {
    if state.reading.is_some() {
        return stream_message(session, state, trace);
    }
    while let Some(event) = session.poll_event() {
        let decided = match event {
            Event::Login { user, password } => {
                let mailbox = shared
                    .directory
                    .verify_password(&user, password.expose().as_bytes());
                login(session, state, shared, trace, &user, mailbox)
            }
            Event::Apop {
                user,
                digest,
                timestamp,
            } => {
                let mailbox = shared
                    .directory
                    .apop_secret(&user)
                    .filter(|s| {
                        verify_apop(
                            &timestamp,
                            &String::from_utf8_lossy(s.secret()),
                            digest.expose(),
                        )
                    })
                    .map(|s| s.mailbox().clone());
                login(session, state, shared, trace, &user, mailbox)
            }
            Event::Auth { credentials, .. } => {
                let password = credentials.password.expose().as_bytes();
                let mailbox = shared
                    .directory
                    .verify_password(&credentials.username, password);
                login(
                    session,
                    state,
                    shared,
                    trace,
                    &credentials.username,
                    mailbox,
                )
            }
            Event::Retrieve { message, .. } => {
                let opened = state
                    .maildrop
                    .as_ref()
                    .map(|m| m.read_message(message.index()));
                match opened {
                    Some(Ok(reader)) => {
                        state.reading = Some(reader);
                        return stream_message(session, state, trace);
                    }
                    Some(Err(e)) => {
                        trace.error(&format!("cannot read message {}: {e}", message.get()));
                        session.message_unavailable()
                    }
                    None => session.message_unavailable(),
                }
            }
            Event::Commit { deletions } => {
                let indices: Vec<usize> = deletions.iter().map(|d| d.message.index()).collect();
                let committed = match state.maildrop.take() {
                    Some(maildrop) => maildrop.commit_deletions(&indices),
                    None => Ok(()),
                };
                match committed {
                    Ok(()) => {
                        trace.note(&format!("{} message(s) deleted", indices.len()));
                        session.commit_done()
                    }
                    Err(e) => {
                        trace.error(&format!("deletions not committed: {e}"));
                        session.commit_failed()
                    }
                }
            }
            Event::StartTls => return Next::StartTls,
            _ => Ok(()),
        };
        if let Err(e) = decided {
            trace.error(&format!("session refused a decision: {e}"));
        }
    }
    Next::Continue
}

fn login(
    session: &mut ServerSession,
    state: &mut State,
    shared: &Shared,
    trace: &Trace,
    user: &str,
    mailbox: Option<MailboxName>,
) -> Result<(), postamt_pop3::UsageError> {
    let Some(mailbox) = mailbox else {
        std::thread::sleep(FAILED_LOGIN_DELAY);
        return session.reject_login();
    };
    match shared.store.open_maildrop(&mailbox) {
        Ok(maildrop) => {
            let mut listing = postamt_pop3::Maildrop::new();
            for m in maildrop.messages() {
                // The store's ids are valid UIDLs already; the check is cheap.
                let pushed = m
                    .uid
                    .as_str()
                    .parse()
                    .map_err(|e: postamt_pop3::InvalidUniqueId| e.to_string())
                    .and_then(|uid| listing.push(m.size, uid).map_err(|e| e.to_string()));
                if let Err(e) = pushed {
                    trace.error(&format!("cannot list {}: {e}", m.uid.as_str()));
                    return session.reject_login_with(Response::err_with(
                        ResponseCode::SysTemp,
                        "Maildrop cannot be listed",
                    ));
                }
            }
            trace.note(&format!("{user} logged in to {}", mailbox.as_str()));
            state.maildrop = Some(maildrop);
            session.accept_login(listing)
        }
        Err(StoreError::Locked(_)) => session.maildrop_locked(),
        Err(e) => {
            trace.error(&format!("cannot open the maildrop of {user}: {e}"));
            session.reject_login_with(Response::err_with(
                ResponseCode::SysTemp,
                "Maildrop not available, try later",
            ))
        }
    }
}

/// Feeds the message to the session while it wants bytes.
fn stream_message(session: &mut ServerSession, state: &mut State, trace: &Trace) -> Next {
    let Some(reader) = state.reading.as_mut() else {
        return Next::Continue;
    };
    let mut chunk = vec![0; CHUNK];
    while session.wants_message_bytes() {
        match reader.read(&mut chunk) {
            Ok(0) => {
                state.reading = None;
                if let Err(e) = session.message_end() {
                    trace.error(&format!("{e}"));
                }
                return Next::Again;
            }
            Ok(n) => match session.message_chunk(&chunk[..n]) {
                Ok(MessageFlow::Continue) => {}
                Ok(MessageFlow::Finished) | Err(_) => {
                    state.reading = None;
                    return Next::Again;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                trace.error(&format!("reading a message failed: {e}"));
                state.reading = None;
                let _ = session.message_unavailable();
                return Next::Again;
            }
        }
    }
    Next::Again
}
