//! The server session: RFC 1939's AUTHORIZATION, TRANSACTION and UPDATE states
//! as a sans-IO state machine. See [`ServerSession`] for the driving contract.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use memchr::memchr2;
use postamt_wire::sasl::{Credentials, Exchange, Mechanism, Step};
use postamt_wire::{DotEncoder, Frame, LineFramer, SaslError, Secret, Session};

use crate::command::{Command, MessageNumber};
use crate::config::ServerConfig;
use crate::apop::ApopTimestamp;
use crate::error::{CommandError, Decision, InvalidUniqueId, UsageError};
use crate::response::{Response, ResponseCode, Status, write_line};

/// A message's unique id as UIDL lists it: 1 to 70 characters in
/// 0x21..=0x7E (RFC 1939 §7). Checked once when built.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UniqueId(Box<str>);

impl UniqueId {
    /// The longest unique id RFC 1939 §7 allows.
    pub const MAX_LEN: usize = 70;

    /// Checks `text` and wraps it.
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidUniqueId> {
        let text: String = text.into();
        if text.is_empty() || text.len() > Self::MAX_LEN || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(InvalidUniqueId);
        }
        Ok(Self(text.into_boxed_str()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UniqueId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for UniqueId {
    type Err = InvalidUniqueId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for UniqueId {
    type Error = InvalidUniqueId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for UniqueId {
    type Error = InvalidUniqueId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl PartialEq<str> for UniqueId {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for UniqueId {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// The messages of a maildrop as the application lists them at login: each
/// one's size in octets and unique id. Message numbers follow the order of
/// [`Maildrop::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maildrop {
    messages: Vec<Listed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    size: u64,
    uid: UniqueId,
}

impl Maildrop {
    /// An empty maildrop.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next message: its size in octets (as it will be sent, with
    /// CRLF line ends, before stuffing) and its unique id. Returns its
    /// message number.
    pub fn push(&mut self, size: u64, unique_id: UniqueId) -> Result<MessageNumber, UsageError> {
        let number =
            MessageNumber::from_index(self.messages.len()).ok_or(UsageError::TooManyMessages)?;
        self.messages.push(Listed {
            size,
            uid: unique_id,
        });
        Ok(number)
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A message marked for deletion, for the application to remove when it
/// commits (RFC 1939 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Its message number in this session.
    pub message: MessageNumber,
    /// Its unique id as listed at login.
    pub unique_id: UniqueId,
}

/// What the application must know or decide, in protocol order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// USER and PASS: check the password. Answer with
    /// [`ServerSession::accept_login`], [`ServerSession::reject_login`] or
    /// [`ServerSession::maildrop_locked`].
    Login {
        /// The user name from USER.
        user: String,
        /// The password from PASS.
        password: Secret<String>,
    },
    /// APOP: compare the digest with [`verify_apop`] (or [`apop_digest`]) over
    /// `timestamp` and the user's secret. Answered like [`Event::Login`].
    Apop {
        /// The user name.
        user: String,
        /// The digest as the client sent it.
        digest: Secret<String>,
        /// The timestamp of this session's greeting.
        timestamp: ApopTimestamp,
    },
    /// AUTH: a SASL exchange ended with these credentials. Answered like
    /// [`Event::Login`].
    Auth {
        /// The mechanism that was used.
        mechanism: Mechanism,
        /// Who the client says it is, its password, and whom it acts for.
        credentials: Credentials,
    },
    /// RETR or TOP: stream the message with [`ServerSession::message_chunk`]
    /// while [`ServerSession::wants_message_bytes`] says so, then call
    /// [`ServerSession::message_end`]; or [`ServerSession::message_unavailable`].
    Retrieve {
        /// The message.
        message: MessageNumber,
        /// Its unique id as listed at login.
        unique_id: UniqueId,
        /// Its size as listed at login.
        size: u64,
        /// For TOP, how many body lines to send after the header. The session
        /// stops taking bytes once it has them.
        top: Option<u32>,
    },
    /// QUIT in the TRANSACTION state: remove these messages (possibly none),
    /// release the maildrop, then call [`ServerSession::commit_done`] or
    /// [`ServerSession::commit_failed`].
    Commit {
        /// The messages marked as deleted, in message-number order.
        deletions: Vec<Deletion>,
    },
    /// STLS was accepted: write out what `poll_transmit` gives, run the TLS
    /// handshake, then call [`ServerSession::tls_established`]. Bytes received
    /// before that are discarded (RFC 2595 §4).
    StartTls,
}

/// What [`ServerSession::message_chunk`] says about the rest of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum MessageFlow {
    /// Keep going while [`ServerSession::wants_message_bytes`] is true, and
    /// end with [`ServerSession::message_end`].
    Continue,
    /// TOP has all the lines it asked for and the response is complete: stop
    /// reading the message and do not call `message_end`.
    Finished,
}


#[derive(Debug)]
enum Phase {
    /// AUTHORIZATION, with the name given by USER if any.
    Authorization { user: Option<String> },
    /// TRANSACTION, with the maildrop.
    Transaction,
    /// UPDATE: QUIT was received, the commit is pending.
    Update,
}

#[derive(Debug)]
struct OpenMaildrop {
    messages: Vec<Listed>,
    deleted: Vec<bool>,
    live: usize,
    live_octets: u64,
}

impl OpenMaildrop {
    fn new(maildrop: Maildrop) -> Self {
        let live_octets = maildrop.messages.iter().map(|m| m.size).sum();
        Self {
            deleted: vec![false; maildrop.messages.len()],
            live: maildrop.messages.len(),
            live_octets,
            messages: maildrop.messages,
        }
    }

    /// The listed message `n`, or the `-ERR` text for why not.
    fn get(&self, n: MessageNumber) -> Result<&Listed, Lookup> {
        match self.messages.get(n.index()) {
            None => Err(Lookup::NoSuchMessage),
            Some(_) if self.deleted[n.index()] => Err(Lookup::Deleted),
            Some(m) => Ok(m),
        }
    }

    fn live_messages(&self) -> impl Iterator<Item = (usize, &Listed)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }
}

enum Lookup {
    NoSuchMessage,
    Deleted,
}

/// TOP's view of the message: where the header ends and how many body lines
/// are still wanted. Line ends are counted as the encoder makes them: CRLF,
/// bare CR and bare LF each end one line.
#[derive(Debug, Clone)]
struct TopCounter {
    in_header: bool,
    remaining: u32,
    line_has_text: bool,
    after_cr: bool,
}

impl TopCounter {
    fn new(lines: u32) -> Self {
        Self {
            in_header: true,
            remaining: lines,
            line_has_text: false,
            after_cr: false,
        }
    }

    /// How much of `chunk` to send: `Some(cut)` when the wanted lines end at
    /// `cut`, `None` when all of it is wanted.
    fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            }
        }
        while let Some(off) = memchr2(b'\r', b'\n', &chunk[i..]) {
            let at = i + off;
            let text = self.line_has_text || off > 0;
            let mut next = at + 1;
            if chunk[at] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.in_header {
                if !text {
                    self.in_header = false;
                    if self.remaining == 0 {
                        return Some(at + 1);
                    }
                }
            } else {
                self.remaining -= 1;
                if self.remaining == 0 {
                    return Some(at + 1);
                }
            }
            self.line_has_text = false;
            i = next;
        }
        if i < chunk.len() {
            self.line_has_text = true;
        }
        None
    }
}

#[derive(Debug)]
struct Streaming {
    encoder: DotEncoder,
    started: bool,
    size: u64,
    top: Option<TopCounter>,
}

/// A POP3 server session (RFC 1939, with CAPA, RESP-CODES, PIPELINING, TOP,
/// UIDL, USER, SASL, STLS and UTF8), as a plain value that performs no I/O.
///
/// # Driving it
///
/// 1. [`ServerSession::new`] (or [`ServerSession::with_apop`]) writes the
///    greeting.
/// 2. Hand it the bytes that arrive with [`receive`](Self::receive), in any
///    split, and the end of the stream with [`receive_eof`](Self::receive_eof).
/// 3. Take [`Event`]s with [`poll_event`](Self::poll_event) and answer each
///    decision with its method: logins with
///    [`accept_login`](Self::accept_login) (handing over the [`Maildrop`]
///    listing), [`reject_login`](Self::reject_login) or
///    [`maildrop_locked`](Self::maildrop_locked); messages with
///    [`message_chunk`](Self::message_chunk) and
///    [`message_end`](Self::message_end); the commit after QUIT with
///    [`commit_done`](Self::commit_done) or
///    [`commit_failed`](Self::commit_failed); STLS with
///    [`tls_established`](Self::tls_established). Until a decision is
///    answered, no further input is processed: pipelined commands wait and
///    responses stay in order. A decision can only be answered once its event
///    has been taken; answering none is a [`UsageError`].
/// 4. Write out what [`poll_transmit`](Self::poll_transmit) appends. Draining
///    the output can let the session go on with buffered commands, so poll
///    events again after it, until it appends nothing.
/// 5. Time: wait until [`poll_timeout`](Self::poll_timeout) and call
///    [`handle_timeout`](Self::handle_timeout) (calling it early is harmless).
///    The inactivity timer stops while the application holds a decision.
/// 6. Drop the connection once [`is_closed`](Self::is_closed) is true and the
///    output is written. If it closed without a [`Event::Commit`], nothing is
///    to be deleted: just release the maildrop.
///
/// STAT, LIST, UIDL, DELE, RSET, NOOP, CAPA and the errors are answered by the
/// session alone.
///
/// # Streaming a message
///
/// After [`Event::Retrieve`], feed the message in chunks of any size (a chunk
/// may end anywhere, even between CR and LF) while
/// [`wants_message_bytes`](Self::wants_message_bytes) is true; it turns false
/// while the output holds more than [`Limits::output_high_water`] octets, so a
/// message of any size flows through bounded memory. Bytes are stuffed as they
/// come; the terminating `.` line is added by [`message_end`](Self::message_end).
/// For TOP the session stops by itself ([`MessageFlow::Finished`]).
///
/// ```text
/// loop {
///     while let Some(event) = session.poll_event() { /* answer, or open the message */ }
///     while session.wants_message_bytes() {
///         match reader.read(&mut buf)? {
///             0 => session.message_end()?,
///             n => if session.message_chunk(&buf[..n])? == MessageFlow::Finished { break },
///         }
///     }
///     out.clear();
///     if session.poll_transmit(&mut out) == 0 { break }
///     socket.write_all(&out)?;
/// }
/// ```
///
/// [`Limits::output_high_water`]: crate::Limits::output_high_water
pub struct ServerSession {
    config: Arc<ServerConfig>,
    input: Vec<u8>,
    framer: LineFramer,
    out: Vec<u8>,
    events: VecDeque<Event>,
    phase: Phase,
    pending: Option<Decision>,
    maildrop: Option<OpenMaildrop>,
    streaming: Option<Streaming>,
    sasl: Option<(Mechanism, Exchange)>,
    apop_timestamp: Option<ApopTimestamp>,
    tls: bool,
    utf8: bool,
    errors: u32,
    discard_input: bool,
    deadline: Instant,
    last_now: Instant,
    rearm: bool,
    peer_closed: bool,
    closed: bool,
}

impl fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSession")
            .field("phase", &self.phase)
            .field("pending", &self.pending)
            .field("buffered_input", &self.input.len())
            .field("buffered_output", &self.out.len())
            .field("tls", &self.tls)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    /// A session that has written its greeting, without APOP.
    pub fn new(config: impl Into<Arc<ServerConfig>>, now: Instant) -> Self {
        Self::start(config.into(), now, None)
    }

    /// A session offering APOP, whose greeting carries `timestamp`, which
    /// must be unique to this session (see [`apop_timestamp`]).
    pub fn with_apop(
        config: impl Into<Arc<ServerConfig>>,
        now: Instant,
        timestamp: ApopTimestamp,
    ) -> Self {
        Self::start(config.into(), now, Some(timestamp))
    }

    fn start(config: Arc<ServerConfig>, now: Instant, apop_timestamp: Option<ApopTimestamp>) -> Self {
        let mut session = Self {
            framer: LineFramer::new(config.limits.max_command_line),
            input: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            phase: Phase::Authorization { user: None },
            pending: None,
            maildrop: None,
            streaming: None,
            sasl: None,
            tls: config.implicit_tls,
            utf8: false,
            errors: 0,
            discard_input: false,
            deadline: now + config.timeouts.inactivity,
            last_now: now,
            rearm: false,
            peer_closed: false,
            closed: false,
            apop_timestamp,
            config,
        };
        let config = Arc::clone(&session.config);
        let greeting = &config.texts.greeting;
        match &session.apop_timestamp {
            Some(ts) => {
                let ts = ts.clone();
                session.line(
                    Status::Ok,
                    None,
                    &[greeting.as_bytes(), b" ", ts.as_str().as_bytes()],
                );
            }
            None => session.line(Status::Ok, None, &[greeting.as_bytes()]),
        }
        session
    }

    /// Whether the client is logged in (TRANSACTION state).
    pub fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Transaction | Phase::Update)
    }

    /// Whether the client enabled UTF-8 mode with the UTF8 command (RFC 6856):
    /// messages may then be sent without downgrading.
    pub fn utf8_enabled(&self) -> bool {
        self.utf8
    }

    /// Whether TLS is active (from the configuration, or after STLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Bytes of input held unprocessed; at most
    /// `max(max_buffered_input, max_auth_line, max_command_line)`.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// Bytes of output not yet taken by [`poll_transmit`](Self::poll_transmit).
    pub fn buffered_output(&self) -> usize {
        self.out.len()
    }

    /// Whether the session wants more bytes of the message being retrieved:
    /// a message is pending, its event has been taken, TOP does not have all
    /// its lines yet, and the output is below the high-water mark.
    pub fn wants_message_bytes(&self) -> bool {
        self.decision_open(Decision::Message)
            && self.streaming.is_some()
            && self.out.len() < self.config.limits.output_high_water
    }

    // ----- decisions -----

    /// Accepts the login: the client enters the TRANSACTION state with this
    /// maildrop, whose lock the application now holds.
    pub fn accept_login(&mut self, maildrop: Maildrop) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Login)? {
            return Ok(());
        }
        let open = OpenMaildrop::new(maildrop);
        let mut text = Vec::with_capacity(64);
        text.extend_from_slice(self.config.texts.logged_in.as_bytes());
        text.extend_from_slice(b", ");
        write_count(&mut text, open.live, open.live_octets);
        self.line(Status::Ok, None, &[&text]);
        self.maildrop = Some(open);
        self.phase = Phase::Transaction;
        self.end_decision();
        Ok(())
    }

    /// Refuses the login with `-ERR [AUTH]`, the same answer for an unknown
    /// user as for a wrong password. To slow down guessing, wait a while
    /// before calling this.
    pub fn reject_login(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Login)? {
            return Ok(());
        }
        let config = Arc::clone(&self.config);
        let text = &config.texts.auth_failed;
        self.line(Status::Err, Some(&ResponseCode::Auth), &[text.as_bytes()]);
        self.login_failed();
        Ok(())
    }

    /// Refuses the login with `-ERR [IN-USE]`: the maildrop is locked by
    /// another session (RFC 2449 §8.1.1).
    pub fn maildrop_locked(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Login)? {
            return Ok(());
        }
        let config = Arc::clone(&self.config);
        let text = &config.texts.in_use;
        self.line(Status::Err, Some(&ResponseCode::InUse), &[text.as_bytes()]);
        self.login_failed();
        Ok(())
    }

    /// Refuses the login with a response of the application's choosing, such
    /// as `-ERR [SYS/TEMP]` when the store is unavailable or
    /// `-ERR [LOGIN-DELAY]`. It must be an `-ERR`.
    pub fn reject_login_with(&mut self, response: Response) -> Result<(), UsageError> {
        if response.status() != Status::Err {
            return Err(UsageError::NotAnError);
        }
        if !self.check_decision(Decision::Login)? {
            return Ok(());
        }
        response.render(&mut self.out);
        self.login_failed();
        Ok(())
    }

    /// The next bytes of the message being retrieved, in any split. The
    /// `+OK` line goes out before the first of them.
    ///
    /// The bytes are stuffed into the output at once, so the output grows by
    /// about the chunk's size: read in moderate chunks (say 64 KiB) and only
    /// while [`wants_message_bytes`](Self::wants_message_bytes) is true, and
    /// the session's memory stays near [`Limits::output_high_water`].
    ///
    /// [`Limits::output_high_water`]: crate::Limits::output_high_water
    pub fn message_chunk(&mut self, chunk: &[u8]) -> Result<MessageFlow, UsageError> {
        if !self.check_decision(Decision::Message)? {
            return Ok(MessageFlow::Finished);
        }
        let Some(streaming) = self.streaming.as_mut() else {
            return Err(UsageError::MessageState);
        };
        if !streaming.started {
            streaming.started = true;
            write_message_head(&mut self.out, &self.config.texts.top, streaming);
        }
        match streaming.top.as_mut() {
            None => streaming.encoder.encode(chunk, &mut self.out),
            Some(top) => {
                if let Some(cut) = top.scan(chunk) {
                    streaming.encoder.encode(&chunk[..cut], &mut self.out);
                    streaming.encoder.finish(&mut self.out);
                    self.streaming = None;
                    self.end_decision();
                    return Ok(MessageFlow::Finished);
                }
                streaming.encoder.encode(chunk, &mut self.out);
            }
        }
        Ok(MessageFlow::Continue)
    }

    /// The message has no more bytes: the session completes its last line if
    /// needed and sends the terminating `.` line.
    pub fn message_end(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Message)? {
            return Ok(());
        }
        let Some(mut streaming) = self.streaming.take() else {
            return Err(UsageError::MessageState);
        };
        if !streaming.started {
            write_message_head(&mut self.out, &self.config.texts.top, &streaming);
        }
        streaming.encoder.finish(&mut self.out);
        self.end_decision();
        Ok(())
    }

    /// The message cannot be read. Before any chunk this answers
    /// `-ERR [SYS/TEMP]` and the session goes on; after some chunks the
    /// response cannot be taken back, so the session closes without ending it
    /// (the client sees a truncated response, never a wrong one).
    pub fn message_unavailable(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Message)? {
            return Ok(());
        }
        let Some(streaming) = self.streaming.take() else {
            return Err(UsageError::MessageState);
        };
        if streaming.started {
            self.pending = None;
            self.close();
            return Ok(());
        }
        let config = Arc::clone(&self.config);
        let text = &config.texts.message_unavailable;
        self.line(
            Status::Err,
            Some(&ResponseCode::SysTemp),
            &[text.as_bytes()],
        );
        self.end_decision();
        Ok(())
    }

    /// The deletions are committed and the maildrop released: `+OK`, and the
    /// session closes.
    pub fn commit_done(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Commit)? {
            return Ok(());
        }
        self.pending = None;
        let config = Arc::clone(&self.config);
        let text = &config.texts.quit;
        self.line(Status::Ok, None, &[text.as_bytes()]);
        self.close();
        Ok(())
    }

    /// The deletions could not be committed: `-ERR [SYS/TEMP]`, and the
    /// session closes (RFC 1939 §6).
    pub fn commit_failed(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Commit)? {
            return Ok(());
        }
        self.pending = None;
        let config = Arc::clone(&self.config);
        let text = &config.texts.commit_failed;
        self.line(
            Status::Err,
            Some(&ResponseCode::SysTemp),
            &[text.as_bytes()],
        );
        self.close();
        Ok(())
    }

    // ----- internals -----

    fn input_cap(&self) -> usize {
        let limits = &self.config.limits;
        limits
            .max_buffered_input
            .max(limits.max_auth_line)
            .max(limits.max_command_line)
    }

    /// Whether `decision` is pending and its event has been taken.
    fn decision_open(&self, decision: Decision) -> bool {
        self.pending == Some(decision) && self.events.is_empty() && !self.closed
    }

    /// Whether `decision` may be answered now: `Ok(false)` once the session
    /// has closed (the answer is moot and nothing is written), a usage error
    /// when another decision, or none, is open.
    fn check_decision(&self, decision: Decision) -> Result<bool, UsageError> {
        if self.closed {
            return Ok(false);
        }
        match self.pending {
            _ if !self.events.is_empty() => Err(UsageError::NoDecisionPending),
            None => Err(UsageError::NoDecisionPending),
            Some(d) if d == decision => Ok(true),
            Some(d) => Err(UsageError::OtherDecisionPending(d)),
        }
    }

    /// The pending decision is answered: the timer restarts at the next
    /// `handle_timeout`, and buffered commands go on.
    fn end_decision(&mut self) {
        self.pending = None;
        self.rearm = true;
        if self.peer_closed {
            self.close();
            return;
        }
        self.advance();
    }

    fn login_failed(&mut self) {
        self.phase = Phase::Authorization { user: None };
        self.pending = None;
        self.count_error();
        if !self.closed {
            self.end_decision();
        }
    }

    fn decide(&mut self, decision: Decision, event: Event) {
        self.pending = Some(decision);
        self.events.push_back(event);
    }

    fn close(&mut self) {
        self.closed = true;
        self.input = Vec::new();
        self.sasl = None;
        self.streaming = None;
    }

    fn line(&mut self, status: Status, code: Option<&ResponseCode>, parts: &[&[u8]]) {
        write_line(&mut self.out, status, code, parts);
    }

    fn ok(&mut self, text: &str) {
        write_line(&mut self.out, Status::Ok, None, &[text.as_bytes()]);
    }

    fn err(&mut self, text: &str) {
        write_line(&mut self.out, Status::Err, None, &[text.as_bytes()]);
    }

    /// Answers a peer error with its text and counts it; too many close the
    /// session.
    fn peer_error(&mut self, text: &str) {
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            let config = Arc::clone(&self.config);
            let text = &config.texts.too_many_errors;
            self.err(text);
            self.close();
        } else {
            self.err(text);
        }
    }

    fn count_error(&mut self) {
        if self.closed {
            return;
        }
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            let config = Arc::clone(&self.config);
            let text = &config.texts.too_many_errors;
            self.err(text);
            self.close();
        }
    }

    /// A whole command line arrived: the inactivity timer starts again.
    fn command_received(&mut self) {
        self.deadline = self.last_now + self.config.timeouts.inactivity;
        self.rearm = false;
    }

    /// Processes buffered lines while no decision is pending and the output
    /// has room.
    fn advance(&mut self) {
        let mut input = std::mem::take(&mut self.input);
        let mut pos = 0;
        while !self.closed
            && self.pending.is_none()
            && self.out.len() < self.config.limits.output_high_water
        {
            match self.framer.next(&input[pos..]) {
                Frame::Incomplete => break,
                Frame::Discarded { consumed } => pos += consumed,
                Frame::TooLong { consumed } => {
                    pos += consumed;
                    self.command_received();
                    if self.sasl.take().is_some() {
                        self.framer.set_limit(self.config.limits.max_command_line);
                    }
                    self.peer_error(CommandError::LineTooLong.text());
                }
                Frame::Line {
                    line,
                    consumed,
                    bare,
                } => {
                    pos += consumed;
                    self.command_received();
                    self.handle_line(line, bare);
                    if self.discard_input {
                        self.discard_input = false;
                        pos = input.len();
                        self.framer.reset();
                    }
                }
            }
        }
        if self.closed {
            return;
        }
        input.drain(..pos);
        self.input = input;
    }

    fn handle_line(&mut self, line: &[u8], bare: bool) {
        if let Some((mechanism, mut exchange)) = self.sasl.take() {
            self.framer.set_limit(self.config.limits.max_command_line);
            let step = if bare {
                Step::Failed(SaslError::Base64)
            } else {
                exchange.respond(line)
            };
            self.sasl_step(mechanism, exchange, step);
            return;
        }
        if bare {
            self.peer_error(CommandError::InvalidCharacters.text());
            return;
        }
        match Command::parse(line) {
            Ok(command) => self.handle_command(command),
            Err(e) => self.peer_error(e.text()),
        }
    }

    fn handle_command(&mut self, command: Command<'_>) {
        let config = Arc::clone(&self.config);
        let texts = &config.texts;
        let caps = &config.extensions;
        let login_allowed = self.tls || config.login_without_tls;
        let authorization = matches!(self.phase, Phase::Authorization { .. });
        match command {
            Command::Capa => self.capa(),
            Command::Quit => {
                if authorization {
                    self.ok(&texts.quit);
                    self.close();
                } else {
                    self.phase = Phase::Update;
                    let deletions = self.maildrop.as_ref().map_or_else(Vec::new, |d| {
                        d.messages
                            .iter()
                            .zip(&d.deleted)
                            .enumerate()
                            .filter(|(_, (_, deleted))| **deleted)
                            .filter_map(|(i, (m, _))| {
                                Some(Deletion {
                                    message: MessageNumber::from_index(i)?,
                                    unique_id: m.uid.clone(),
                                })
                            })
                            .collect()
                    });
                    self.decide(Decision::Commit, Event::Commit { deletions });
                }
            }
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth { .. }
            | Command::Stls
            | Command::Utf8
                if !authorization =>
            {
                match command {
                    Command::Stls | Command::Utf8 => self.peer_error(&texts.wrong_state),
                    _ => self.peer_error(&texts.already_logged_in),
                }
            }
            Command::User(name) => {
                if !caps.user {
                    self.peer_error(&texts.not_offered);
                } else if !login_allowed {
                    self.peer_error(&texts.tls_required);
                } else if !caps.utf8 && !name.is_ascii() {
                    self.peer_error(CommandError::InvalidCharacters.text());
                } else {
                    self.phase = Phase::Authorization {
                        user: Some(name.to_owned()),
                    };
                    self.ok(&texts.user_ok);
                }
            }
            Command::Pass(password) => {
                let user = match &mut self.phase {
                    Phase::Authorization { user } => user.take(),
                    _ => None,
                };
                match user {
                    None if !caps.user => self.peer_error(&texts.not_offered),
                    _ if !login_allowed => self.peer_error(&texts.tls_required),
                    None => self.peer_error(&texts.need_user),
                    Some(_) if !caps.utf8 && !password.expose().is_ascii() => {
                        self.peer_error(CommandError::InvalidCharacters.text());
                    }
                    Some(user) => self.decide(
                        Decision::Login,
                        Event::Login {
                            user,
                            password: Secret::new(password.expose().to_string()),
                        },
                    ),
                }
            }
            Command::Apop { name, digest } => match &self.apop_timestamp {
                None => self.peer_error(&texts.not_offered),
                Some(_) if !caps.utf8 && !name.is_ascii() => {
                    self.peer_error(CommandError::InvalidCharacters.text());
                }
                Some(timestamp) => {
                    let timestamp = timestamp.clone();
                    self.phase = Phase::Authorization { user: None };
                    self.decide(
                        Decision::Login,
                        Event::Apop {
                            user: name.to_owned(),
                            digest: Secret::new(digest.expose().to_string()),
                            timestamp,
                        },
                    );
                }
            },
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                let offered = mechanism
                    .parse::<Mechanism>()
                    .ok()
                    .filter(|m| caps.sasl.contains(m));
                match offered {
                    _ if caps.sasl.is_empty() => self.peer_error(&texts.not_offered),
                    None => self.peer_error(&texts.unsupported_mechanism),
                    Some(_) if !login_allowed => self.peer_error(&texts.tls_required),
                    Some(mechanism) => {
                        self.phase = Phase::Authorization { user: None };
                        let initial = initial_response.as_ref().map(|r| r.expose().as_bytes());
                        let (exchange, step) = Exchange::start(mechanism, initial);
                        self.sasl_step(mechanism, exchange, step);
                    }
                }
            }
            Command::Stls => {
                if !caps.stls || self.tls {
                    self.peer_error(&texts.not_offered);
                } else {
                    self.ok(&texts.stls);
                    self.phase = Phase::Authorization { user: None };
                    self.discard_input = true;
                    self.decide(Decision::Tls, Event::StartTls);
                }
            }
            Command::Utf8 => {
                if caps.utf8 {
                    self.utf8 = true;
                    self.ok(&texts.utf8);
                } else {
                    self.peer_error(&texts.not_offered);
                }
            }
            _ if authorization => self.peer_error(&texts.not_logged_in),
            Command::Noop => self.ok(&texts.noop),
            Command::Stat => {
                let (live, octets) = self
                    .maildrop
                    .as_ref()
                    .map_or((0, 0), |d| (d.live, d.live_octets));
                let mut text = Vec::with_capacity(24);
                let _ = write!(text, "{live} {octets}");
                self.line(Status::Ok, None, &[&text]);
            }
            Command::List(None) => self.listing(false),
            Command::Uidl(None) => self.listing(true),
            Command::List(Some(n)) | Command::Uidl(Some(n)) => {
                let uidl = matches!(command, Command::Uidl(_));
                if let Some(m) = self.lookup(n) {
                    let mut text = Vec::with_capacity(80);
                    if uidl {
                        let _ = write!(text, "{n} {}", m.uid);
                    } else {
                        let _ = write!(text, "{n} {}", m.size);
                    }
                    self.line(Status::Ok, None, &[&text]);
                }
            }
            Command::Dele(n) => {
                if self.lookup(n).is_some()
                    && let Some(maildrop) = self.maildrop.as_mut()
                {
                    maildrop.deleted[n.index()] = true;
                    maildrop.live -= 1;
                    maildrop.live_octets -= maildrop.messages[n.index()].size;
                    self.ok(&texts.deleted);
                }
            }
            Command::Rset => {
                if let Some(maildrop) = self.maildrop.as_mut() {
                    maildrop.deleted.iter_mut().for_each(|d| *d = false);
                    maildrop.live = maildrop.messages.len();
                    maildrop.live_octets = maildrop.messages.iter().map(|m| m.size).sum();
                }
                let (live, octets) = self
                    .maildrop
                    .as_ref()
                    .map_or((0, 0), |d| (d.live, d.live_octets));
                let mut text = Vec::with_capacity(64);
                text.extend_from_slice(texts.maildrop.as_bytes());
                text.push(b' ');
                write_count(&mut text, live, octets);
                self.line(Status::Ok, None, &[&text]);
            }
            Command::Retr(n) => self.retrieve(n, None),
            Command::Top { message, lines } => self.retrieve(message, Some(lines)),
        }
    }

    /// The listed message `n` if it exists and is not deleted; otherwise the
    /// `-ERR` is written.
    fn lookup(&mut self, n: MessageNumber) -> Option<&Listed> {
        let found = match self.maildrop.as_ref() {
            None => Err(Lookup::NoSuchMessage),
            Some(maildrop) => maildrop.get(n).map(|_| ()),
        };
        match found {
            Ok(()) => self.maildrop.as_ref().map(|d| &d.messages[n.index()]),
            Err(Lookup::NoSuchMessage) => {
                let config = Arc::clone(&self.config);
                let text = &config.texts.no_such_message;
                self.err(text);
                None
            }
            Err(Lookup::Deleted) => {
                let config = Arc::clone(&self.config);
                let text = &config.texts.already_deleted;
                self.err(text);
                None
            }
        }
    }

    fn retrieve(&mut self, n: MessageNumber, top: Option<u32>) {
        let Some(m) = self.lookup(n) else {
            return;
        };
        let (size, unique_id) = (m.size, m.uid.clone());
        self.streaming = Some(Streaming {
            encoder: DotEncoder::new(),
            started: false,
            size,
            top: top.map(TopCounter::new),
        });
        self.decide(
            Decision::Message,
            Event::Retrieve {
                message: n,
                unique_id,
                size,
                top,
            },
        );
    }

    fn listing(&mut self, uidl: bool) {
        let Some(maildrop) = self.maildrop.as_ref() else {
            return;
        };
        let out = &mut self.out;
        if uidl {
            write_line(out, Status::Ok, None, &[self.config.texts.uidl.as_bytes()]);
        } else {
            let mut text = Vec::with_capacity(48);
            write_count(&mut text, maildrop.live, maildrop.live_octets);
            write_line(out, Status::Ok, None, &[&text]);
        }
        for (i, m) in maildrop.live_messages() {
            if uidl {
                let _ = write!(out, "{} {}\r\n", i + 1, m.uid);
            } else {
                let _ = write!(out, "{} {}\r\n", i + 1, m.size);
            }
        }
        out.extend_from_slice(b".\r\n");
    }

    fn capa(&mut self) {
        let config = Arc::clone(&self.config);
        let caps = &config.extensions;
        let login_allowed = self.tls || config.login_without_tls;
        let out = &mut self.out;
        write_line(out, Status::Ok, None, &[config.texts.capa.as_bytes()]);
        out.extend_from_slice(b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        if caps.user && login_allowed {
            out.extend_from_slice(b"USER\r\n");
        }
        if !caps.sasl.is_empty() && login_allowed {
            out.extend_from_slice(b"SASL");
            for m in &caps.sasl {
                out.push(b' ');
                out.extend_from_slice(m.as_str().as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        if caps.stls && !self.tls {
            out.extend_from_slice(b"STLS\r\n");
        }
        if caps.utf8 {
            out.extend_from_slice(b"UTF8 USER\r\n");
        }
        if let Some(implementation) = &caps.implementation {
            out.extend_from_slice(b"IMPLEMENTATION ");
            out.extend_from_slice(implementation.replace(['\r', '\n'], " ").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }

    fn sasl_step(&mut self, mechanism: Mechanism, exchange: Exchange, step: Step) {
        match step {
            Step::Challenge(challenge) => {
                self.line(Status::Continuation, None, &[challenge.as_bytes()]);
                self.framer.set_limit(self.config.limits.max_auth_line);
                self.sasl = Some((mechanism, exchange));
            }
            Step::Done(credentials) => {
                let ascii =
                    credentials.username.is_ascii() && credentials.password.expose().is_ascii();
                if !ascii && !self.config.extensions.utf8 {
                    self.peer_error(CommandError::InvalidCharacters.text());
                    return;
                }
                self.decide(
                    Decision::Login,
                    Event::Auth {
                        mechanism,
                        credentials,
                    },
                );
            }
            Step::Failed(SaslError::Cancelled) => {
                let config = Arc::clone(&self.config);
                let text = &config.texts.auth_cancelled;
                self.peer_error(text);
            }
            Step::Failed(_) => {
                let config = Arc::clone(&self.config);
                let text = &config.texts.auth_malformed;
                self.peer_error(text);
            }
        }
    }
}

impl Session for ServerSession {
    type Event = Event;
    type UsageError = UsageError;

    /// Hands the session bytes that arrived from the client.
    fn receive(&mut self, now: Instant, mut data: &[u8]) {
        if self.closed || data.is_empty() {
            return;
        }
        // The autologout timer restarts with each complete command (RFC 1939
        // §3), not with each byte: a client trickling bytes is still cut off.
        self.last_now = now;
        let cap = self.input_cap();
        while !data.is_empty() && !self.closed {
            if self.pending == Some(Decision::Tls) {
                // Plaintext after STLS and before the handshake: discarded.
                return;
            }
            let room = cap.saturating_sub(self.input.len());
            if room == 0 {
                let config = Arc::clone(&self.config);
                let text = &config.texts.too_much_input;
                self.line(Status::Err, None, &[text.as_bytes()]);
                self.close();
                return;
            }
            let take = room.min(data.len());
            self.input.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.advance();
        }
    }

    /// The client closed its side. Nothing is deleted unless QUIT already
    /// asked for the commit, which then still completes.
    fn receive_eof(&mut self, now: Instant) {
        self.last_now = now;
        self.peer_closed = true;
        if self.pending != Some(Decision::Commit) {
            self.close();
        }
    }

    /// The next event, if any.
    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the bytes to send to `buf` and returns how many. Draining the
    /// output may let the session answer more buffered commands (and raise
    /// events): call [`poll_event`](Self::poll_event) and this again until it
    /// returns 0.
    ///
    /// When `buf` is empty the session hands over its own buffer instead of
    /// copying it (and keeps `buf`'s allocation for its next output).
    fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.out);
        } else {
            buf.extend_from_slice(&self.out);
            self.out.clear();
        }
        self.advance();
        n
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called,
    /// if at all. `None` while the application holds a decision or the
    /// session is closed.
    fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.pending.is_some() {
            None
        } else if self.rearm {
            Some(self.last_now)
        } else {
            Some(self.deadline)
        }
    }

    /// Tells the session the time. When the inactivity timer has expired the
    /// session closes without a response and without deleting anything (RFC
    /// 1939 §3). Safe to call at any time.
    fn handle_timeout(&mut self, now: Instant) {
        if self.closed || self.pending.is_some() {
            return;
        }
        self.last_now = now;
        if self.rearm {
            self.rearm = false;
            self.deadline = now + self.config.timeouts.inactivity;
        } else if now >= self.deadline {
            self.close();
        }
    }

    /// The session has ended and its events and output have all been taken.
    fn is_closed(&self) -> bool {
        self.closed && self.events.is_empty() && self.out.is_empty()
    }

    /// The TLS handshake after STLS succeeded: the session forgets what the
    /// client said before (RFC 2595 §4) and waits for commands over TLS.
    fn tls_established(&mut self) -> Result<(), UsageError> {
        if self.closed {
            // The peer left during the handshake: nothing to go on with.
            return match self.pending {
                Some(Decision::Tls) => Ok(()),
                _ => Err(UsageError::NoDecisionPending),
            };
        }
        self.check_decision(Decision::Tls)?;
        self.tls = true;
        self.utf8 = false;
        self.phase = Phase::Authorization { user: None };
        self.input.clear();
        self.framer.reset();
        self.end_decision();
        Ok(())
    }

}

/// `N message(s) (M octets)`.
fn write_count(out: &mut Vec<u8>, messages: usize, octets: u64) {
    let plural = if messages == 1 { "" } else { "s" };
    let _ = write!(out, "{messages} message{plural} ({octets} octets)");
}

fn write_message_head(out: &mut Vec<u8>, top_text: &str, streaming: &Streaming) {
    if streaming.top.is_some() {
        write_line(out, Status::Ok, None, &[top_text.as_bytes()]);
    } else {
        let mut text = Vec::with_capacity(32);
        let _ = write!(text, "{} octets", streaming.size);
        write_line(out, Status::Ok, None, &[&text]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(lines: u32, message: &[u8], step: usize) -> Vec<u8> {
        let mut counter = TopCounter::new(lines);
        let mut encoder = DotEncoder::new();
        let mut out = Vec::new();
        for chunk in message.chunks(step.max(1)) {
            if let Some(cut) = counter.scan(chunk) {
                encoder.encode(&chunk[..cut], &mut out);
                encoder.finish(&mut out);
                return out;
            }
            encoder.encode(chunk, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    #[test]
    fn top_counts_lines_however_split() {
        let message = b"Subject: a\r\nFrom: b\r\n\r\none\r\n.two\r\nthree\r\n";
        let cases: [(u32, &[u8]); 4] = [
            (0, b"Subject: a\r\nFrom: b\r\n\r\n.\r\n"),
            (1, b"Subject: a\r\nFrom: b\r\n\r\none\r\n.\r\n"),
            (2, b"Subject: a\r\nFrom: b\r\n\r\none\r\n..two\r\n.\r\n"),
            (
                10,
                b"Subject: a\r\nFrom: b\r\n\r\none\r\n..two\r\nthree\r\n.\r\n",
            ),
        ];
        for (lines, expected) in cases {
            for step in 1..=message.len() {
                assert_eq!(
                    String::from_utf8_lossy(&top(lines, message, step)),
                    String::from_utf8_lossy(expected),
                    "lines {lines} step {step}"
                );
            }
        }
    }

    #[test]
    fn top_with_bare_line_ends_and_no_body() {
        for step in 1..=12 {
            assert_eq!(
                top(1, b"H: x\n\nb1\rb2\n", step),
                b"H: x\r\n\r\nb1\r\n.\r\n"
            );
            assert_eq!(top(0, b"H: x\r\nH: y", step), b"H: x\r\nH: y\r\n.\r\n");
            assert_eq!(top(0, b"\r\nbody", step), b"\r\n.\r\n");
        }
    }

    #[test]
    fn unique_ids_are_checked_when_built() {
        assert_eq!(UniqueId::new("ok").unwrap(), "ok");
        assert_eq!("".parse::<UniqueId>(), Err(InvalidUniqueId));
        assert_eq!(UniqueId::try_from("a b"), Err(InvalidUniqueId));
        assert_eq!(UniqueId::new("x".repeat(71)), Err(InvalidUniqueId));
        assert!(UniqueId::new("x".repeat(70)).is_ok());
        assert_eq!(UniqueId::new("\u{e9}"), Err(InvalidUniqueId));
        let mut m = Maildrop::new();
        assert_eq!(
            m.push(1, UniqueId::new("ok").unwrap()),
            Ok(MessageNumber::new(1).unwrap())
        );
        assert_eq!(m.len(), 1);
    }
}
