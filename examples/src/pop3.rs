//! The POP3 side of the toy server: logins against the directory, the
//! maildrop from the store, messages streamed, deletions committed at QUIT,
//! as a handler on the event loop. Store work that may wait on a disk or a
//! network (opening the maildrop, reading a message, committing deletions)
//! runs on the worker pool, and the session waits for it; a store in
//! memory is asked on the loop.

use std::io::Read;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use postamt_pop3::Session as _;
use postamt_pop3::{Event, MessageFlow, Response, ResponseCode, ServerSession, verify_apop};
use postamt_store::{MailboxName, Maildrop, StoreError};

use crate::evloop::{Ask, Client, Handler, Reading, Then, offload};
use crate::server::{Shared, Slot};
use crate::smtp::FAILED_LOGIN_DELAY;
use crate::trace::{Protocol, Trace};

/// Bytes of a message read from the store at a time.
const CHUNK: usize = 64 * 1024;

/// A message being sent: its stream from the store and the buffer it is
/// read into (`None` while a read is out on the pool).
type Stream = Option<(Box<dyn Read + Send>, Vec<u8>)>;

/// One POP3 connection as the event loop drives it.
pub(crate) struct Pop3Conn {
    session: ServerSession,
    shared: Arc<Shared>,
    trace: Trace,
    /// The open maildrop (its lock held).
    maildrop: Option<Box<dyn Maildrop>>,
    /// The message being sent, if any.
    reading: Option<Stream>,
    /// Counted in the connection limits while it lives.
    _slot: Slot,
}

/// What a login found: the user's mailbox (when the password was right)
/// and the maildrop opened for it, or why the directory could not say.
type Found = Result<Option<(MailboxName, Result<Box<dyn Maildrop>, StoreError>)>, StoreError>;

impl Pop3Conn {
    pub(crate) fn new(client: Client, id: u64, shared: &Arc<Shared>, slot: Slot) -> Self {
        let trace = Trace::new(id, Protocol::Pop3, shared.trace.clone());
        trace.note(&client.connected());
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let timestamp = postamt_pop3::apop_timestamp(
            std::process::id(),
            clock + u128::from(id),
            &shared.hostname,
        );
        Self {
            session: ServerSession::with_apop(Arc::clone(&shared.pop3), Instant::now(), timestamp),
            shared: Arc::clone(shared),
            trace,
            maildrop: None,
            reading: None,
            _slot: slot,
        }
    }

    fn decided(&self, result: Result<(), postamt_pop3::UsageError>) {
        if let Err(e) = result {
            self.trace
                .error(&format!("session refused a decision: {e}"));
        }
    }

    fn handle(&mut self, event: Event) -> Option<Ask<Then<Self>>> {
        let blocks = self.shared.store.blocks();
        let shared = Arc::clone(&self.shared);
        match event {
            Event::Login { user, password } => {
                let user_name = user.clone();
                let verify = move |shared: &Shared| {
                    shared
                        .directory
                        .check_password(&user, password.expose().as_bytes())
                };
                self.login(user_name, verify)
            }
            Event::Apop {
                user,
                digest,
                timestamp,
            } => self.login(user.clone(), move |shared: &Shared| {
                Ok(shared
                    .directory
                    .apop_secret(&user)
                    .filter(|s| {
                        verify_apop(
                            &timestamp,
                            &String::from_utf8_lossy(s.secret()),
                            digest.expose(),
                        )
                    })
                    .map(|s| s.mailbox().clone()))
            }),
            Event::Auth { credentials, .. } => {
                self.login(credentials.username.clone(), move |shared: &Shared| {
                    let password = credentials.password.expose().as_bytes();
                    shared
                        .directory
                        .check_password(&credentials.username, password)
                })
            }
            Event::Retrieve { message, .. } => {
                let Some(maildrop) = self.maildrop.take() else {
                    let refused = self.session.message_unavailable();
                    self.decided(refused);
                    return None;
                };
                let index = message.index();
                offload(
                    self,
                    &shared,
                    blocks,
                    move |_: &Shared| {
                        let opened = maildrop.read_message(index);
                        (maildrop, opened)
                    },
                    move |c: &mut Self, (maildrop, opened)| {
                        c.maildrop = Some(maildrop);
                        match opened {
                            Ok(reader) => {
                                c.reading = Some(Some((reader, vec![0; CHUNK])));
                                c.stream()
                            }
                            Err(e) => {
                                c.trace
                                    .error(&format!("cannot read message {}: {e}", message.get()));
                                let refused = c.session.message_unavailable();
                                c.decided(refused);
                                None
                            }
                        }
                    },
                )
            }
            Event::Commit { deletions } => {
                let indices: Vec<usize> = deletions.iter().map(|d| d.message.index()).collect();
                let maildrop = self.maildrop.take();
                offload(
                    self,
                    &shared,
                    blocks,
                    move |_: &Shared| {
                        let committed = match maildrop {
                            Some(maildrop) => maildrop.commit_deletions(&indices),
                            None => Ok(()),
                        };
                        (committed, indices.len())
                    },
                    |c: &mut Self, (committed, deleted)| {
                        let decided = match committed {
                            Ok(()) => {
                                c.trace.note(&format!("{deleted} message(s) deleted"));
                                c.session.commit_done()
                            }
                            Err(e) => {
                                c.trace.error(&format!("deletions not committed: {e}"));
                                c.session.commit_failed()
                            }
                        };
                        c.decided(decided);
                        None
                    },
                )
            }
            Event::StartTls => Some(Ask::StartTls),
            _ => None,
        }
    }

    /// Checks a login with `verify` (which gives the user's mailbox when the
    /// credentials are right), then opens the maildrop. A failure is
    /// answered after a pause that holds only this session.
    fn login(
        &mut self,
        user: String,
        verify: impl FnOnce(&Shared) -> Result<Option<MailboxName>, StoreError> + Send + 'static,
    ) -> Option<Ask<Then<Self>>> {
        let shared = Arc::clone(&self.shared);
        let blocks = shared.directory.blocks() || shared.store.blocks();
        offload(
            self,
            &shared,
            blocks,
            move |shared: &Shared| -> Found {
                let mailbox = verify(shared)?;
                Ok(mailbox.map(|mailbox| {
                    let opened = shared.store.open_maildrop(&mailbox);
                    (mailbox, opened)
                }))
            },
            move |c: &mut Self, found| c.logged_in(&user, found),
        )
    }

    fn logged_in(&mut self, user: &str, found: Found) -> Option<Ask<Then<Self>>> {
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.trace
                    .error(&format!("cannot check the login of {user}: {e}"));
                let refused = self.session.reject_login_with(Response::err_with(
                    ResponseCode::SysTemp,
                    "Cannot check the password now, try later",
                ));
                self.decided(refused);
                return None;
            }
        };
        let Some((mailbox, opened)) = found else {
            return Some(Ask::Pause(
                FAILED_LOGIN_DELAY,
                Then::new(|c: &mut Self| {
                    let rejected = c.session.reject_login();
                    c.decided(rejected);
                    None
                }),
            ));
        };
        let decided = match opened {
            Ok(maildrop) => self.open(user, &mailbox, maildrop),
            Err(StoreError::Locked(_)) => self.session.maildrop_locked(),
            Err(e) => {
                self.trace
                    .error(&format!("cannot open the maildrop of {user}: {e}"));
                self.session.reject_login_with(Response::err_with(
                    ResponseCode::SysTemp,
                    "Maildrop not available, try later",
                ))
            }
        };
        self.decided(decided);
        None
    }

    /// Lists the opened maildrop to the session.
    fn open(
        &mut self,
        user: &str,
        mailbox: &MailboxName,
        maildrop: Box<dyn Maildrop>,
    ) -> Result<(), postamt_pop3::UsageError> {
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
                self.trace
                    .error(&format!("cannot list {}: {e}", m.uid.as_str()));
                return self.session.reject_login_with(Response::err_with(
                    ResponseCode::SysTemp,
                    "Maildrop cannot be listed",
                ));
            }
        }
        self.trace
            .note(&format!("{user} logged in to {}", mailbox.as_str()));
        self.maildrop = Some(maildrop);
        self.session.accept_login(listing)
    }

    /// Feeds the message being sent to the session while it wants bytes,
    /// a piece at a time, each when the client has taken the last: read
    /// here from a store in memory, on the pool from one that blocks.
    fn stream(&mut self) -> Option<Ask<Then<Self>>> {
        loop {
            let (reader, buf) = self.reading.as_mut().and_then(Option::take)?;
            let shared = Arc::clone(&self.shared);
            let blocks = shared.store.blocks();
            let ask = offload(
                self,
                &shared,
                blocks,
                move |_: &Shared| {
                    let (mut reader, mut buf) = (reader, buf);
                    let read = loop {
                        match reader.read(&mut buf) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            read => break read,
                        }
                    };
                    (reader, buf, read)
                },
                |c: &mut Self, (reader, buf, read)| c.send_piece(reader, buf, read),
            );
            // Read here, and the session wants more at once: go on.
            if ask.is_some() || !self.reading.as_ref().is_some_and(Option::is_some) {
                return ask;
            }
        }
    }

    /// Gives the session the piece `read` put in `buf` (none: its end).
    /// Asks to be called when the output is written, unless the session
    /// wants more at once from a store that does not block.
    fn send_piece(
        &mut self,
        reader: Box<dyn Read + Send>,
        buf: Vec<u8>,
        read: std::io::Result<usize>,
    ) -> Option<Ask<Then<Self>>> {
        // Pipelined commands' events come next.
        self.reading = None;
        match read {
            Ok(0) => {
                if let Err(e) = self.session.message_end() {
                    self.trace.error(&format!("{e}"));
                }
            }
            Ok(n) => {
                if let Ok(MessageFlow::Continue) = self.session.message_chunk(&buf[..n]) {
                    self.reading = Some(Some((reader, buf)));
                    if !self.session.wants_message_bytes() || self.shared.store.blocks() {
                        return Some(Ask::WhenDrained);
                    }
                }
            }
            Err(e) => {
                self.trace.error(&format!("reading a message failed: {e}"));
                let _ = self.session.message_unavailable();
            }
        }
        None
    }
}

impl Handler for Pop3Conn {
    type Session = ServerSession;
    type Done = Then<Self>;

    fn session(&mut self) -> &mut ServerSession {
        &mut self.session
    }

    fn on_events(&mut self) -> Option<Ask<Then<Self>>> {
        if self.reading.is_some() {
            if let Some(ask) = self.stream() {
                return Some(ask);
            }
            if self.reading.is_some() {
                return None;
            }
        }
        while let Some(event) = self.session.poll_event() {
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
        Reading::Line {
            secret: self.session.expects_sasl_response(),
        }
    }

    fn trace(&mut self) -> Option<&mut Trace> {
        Some(&mut self.trace)
    }
}
