//! The server session: RFC 1939's AUTHORIZATION, TRANSACTION and UPDATE states
//! as a sans-IO state machine. See [`ServerSession`] for the driving contract.
//!
//! - this file: the session value, its decisions and the [`Session`] impl;
//! - `input`: framing of the client's bytes into command and SASL lines;
//! - `commands`: what each command does and answers;
//! - `message`: streaming a message out for RETR and TOP;
//! - `events`: what the application sees and hands in.

mod commands;
mod events;
mod input;
mod message;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use postamt_wire::sasl::{Exchange, Mechanism};
use postamt_wire::{LineFramer, Session};

use crate::apop::ApopTimestamp;
use crate::config::ServerConfig;
use crate::error::{Decision, UsageError};
use crate::response::{Response, ResponseCode, Status, write_line};

use commands::{OpenMaildrop, write_count};
pub use events::{Deletion, Event, Maildrop, MessageFlow, UniqueId};
use message::{Streaming, write_message_head};

#[derive(Debug)]
enum Phase {
    /// AUTHORIZATION, with the name given by USER if any.
    Authorization { user: Option<String> },
    /// TRANSACTION, with the maildrop.
    Transaction,
    /// UPDATE: QUIT was received, the commit is pending.
    Update,
}

/// A POP3 server session (RFC 1939, with CAPA, RESP-CODES, PIPELINING, TOP,
/// UIDL, USER, SASL, STLS and UTF8), as a plain value that performs no I/O.
///
/// # Driving it
///
/// The session is driven through [`Session`], the contract all postamt
/// sessions share (its docs give the loop); bring the trait into scope with
/// `use postamt_pop3::Session`. What is POP3's own:
///
/// 1. [`ServerSession::new`] (or [`ServerSession::with_apop`]) writes the
///    greeting.
/// 2. [`Session::receive`] takes the client's bytes in any split;
///    [`Session::receive_eof`] says the client left. Nothing is deleted
///    unless QUIT already asked for the commit, which then still completes.
/// 3. [`Session::poll_event`] gives [`Event`]s; answer each decision with
///    its method: logins with [`accept_login`](Self::accept_login) (handing
///    over the [`Maildrop`] listing), [`reject_login`](Self::reject_login),
///    [`reject_login_with`](Self::reject_login_with) or
///    [`maildrop_locked`](Self::maildrop_locked); messages with
///    [`message_chunk`](Self::message_chunk) and
///    [`message_end`](Self::message_end) or
///    [`message_unavailable`](Self::message_unavailable); the commit after
///    QUIT with [`commit_done`](Self::commit_done) or
///    [`commit_failed`](Self::commit_failed); STLS with
///    [`Session::tls_established`] once the handshake is done. Until a
///    decision is answered, no further input is processed: pipelined
///    commands wait and responses stay in order.
/// 4. A decision answered before its event was taken, or when another (or
///    none) is open, is a [`UsageError`]. A decision answered after the
///    session closed (the client left, or too many errors) is not: it
///    returns `Ok` and writes nothing, since the answer is moot.
/// 5. [`Session::poll_transmit`] appends the output. Draining it can let
///    the session go on with buffered commands, so poll events again after
///    it, until neither gives anything.
/// 6. [`Session::poll_timeout`] and [`Session::handle_timeout`] carry the
///    inactivity timer (RFC 1939 §3, [`ServerTimeouts::inactivity`]); it
///    stops while the application holds a decision.
/// 7. [`Session::is_closed`] turns true once the session has ended and its
///    events and output are all taken: close the connection then. If it
///    ended without an [`Event::Commit`], nothing is to be deleted: just
///    release the maildrop.
///
/// STAT, LIST, UIDL, DELE, RSET, NOOP, CAPA and the errors are answered by the
/// session alone. Logins that send a password in the clear wait for TLS
/// unless [`ServerConfig::login_without_tls`] allows them. After
/// [`Limits::max_auth_failures`] refused logins the session closes behind
/// the last `-ERR [AUTH]`; SASL PLAIN acting for another identity is refused
/// by the session itself unless [`ServerConfig::allow_authzid`] is set.
///
/// # Streaming a message
///
/// After [`Event::Retrieve`], feed the message in chunks of any size (a chunk
/// may end anywhere, even between CR and LF) while
/// [`wants_message_bytes`](Self::wants_message_bytes) is true; it turns false
/// while the output holds more than [`Limits::output_high_water`] octets, so a
/// message of any size flows through bounded memory. Bytes are stuffed as they
/// come, line ends made CRLF by the rule of [`postamt_wire::crlf`] (list
/// sizes by the same rule: [`postamt_wire::crlf_size`]); the terminating `.`
/// line is added by [`message_end`](Self::message_end). For TOP the session
/// stops by itself ([`MessageFlow::Finished`]).
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
///     if session.poll_transmit(&mut out) == 0 && session.is_closed() { break }
///     socket.write_all(&out)?;
///     // ... then read, receive, or handle_timeout as the Session docs show
/// }
/// ```
///
/// [`Limits::output_high_water`]: crate::Limits::output_high_water
/// [`ServerTimeouts::inactivity`]: crate::ServerTimeouts::inactivity
/// [`ServerConfig::login_without_tls`]: crate::ServerConfig::login_without_tls
/// [`ServerConfig::allow_authzid`]: crate::ServerConfig::allow_authzid
/// [`Limits::max_auth_failures`]: crate::Limits::max_auth_failures
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
    auth_failures: u32,
    discard_input: bool,
    deadline: Instant,
    last_now: Instant,
    rearm: bool,
    peer_closed: bool,
    closed: bool,
}

impl fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Input and output are shown as sizes only: they hold PASS lines and
        // AUTH payloads. Events and the SASL exchange redact their secrets.
        f.debug_struct("ServerSession")
            .field("phase", &self.phase)
            .field("pending", &self.pending)
            .field("events", &self.events)
            .field("sasl", &self.sasl)
            .field("apop_timestamp", &self.apop_timestamp)
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
    /// must be unique to this session (see [`apop_timestamp`](crate::apop_timestamp)).
    pub fn with_apop(
        config: impl Into<Arc<ServerConfig>>,
        now: Instant,
        timestamp: ApopTimestamp,
    ) -> Self {
        Self::start(config.into(), now, Some(timestamp))
    }

    fn start(
        config: Arc<ServerConfig>,
        now: Instant,
        apop_timestamp: Option<ApopTimestamp>,
    ) -> Self {
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
            auth_failures: 0,
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

    /// Whether the next input line is a SASL response (base64 credentials
    /// after `AUTH` without an initial response), which a transcript or log
    /// must mask. It changes only when a whole line has been processed.
    pub fn expects_sasl_response(&self) -> bool {
        self.sasl.is_some() && !self.closed
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
    /// before calling this. When refusals reach
    /// [`Limits::max_auth_failures`], the session closes after this response.
    ///
    /// [`Limits::max_auth_failures`]: crate::Limits::max_auth_failures
    pub fn reject_login(&mut self) -> Result<(), UsageError> {
        if !self.check_decision(Decision::Login)? {
            return Ok(());
        }
        self.pending = None;
        self.credentials_refused();
        if !self.closed {
            self.end_decision();
        }
        Ok(())
    }

    /// Refuses the login with `-ERR [IN-USE]`: the maildrop is locked by
    /// another session (RFC 2449 §8.1.1). It counts as an error, not as a
    /// refused login: the credentials were right.
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
    /// `-ERR [LOGIN-DELAY]`. It must be an `-ERR`. It counts as an error,
    /// not as a refused login, since it says nothing about the credentials;
    /// for wrong ones use [`reject_login`](Self::reject_login).
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
    /// Once the session has closed (the client left mid-message) this writes
    /// nothing and returns [`MessageFlow::Finished`]: stop reading.
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

    /// Wrong credentials (from the application, or a PLAIN authzid the
    /// session refuses itself): `-ERR [AUTH]`, and one try fewer before the
    /// session hangs up on a password guesser; otherwise an error like any.
    fn credentials_refused(&mut self) {
        let config = Arc::clone(&self.config);
        let text = &config.texts.auth_failed;
        self.line(Status::Err, Some(&ResponseCode::Auth), &[text.as_bytes()]);
        self.phase = Phase::Authorization { user: None };
        self.auth_failures += 1;
        if self.auth_failures >= config.limits.max_auth_failures {
            self.close();
        } else {
            self.count_error();
        }
    }

    /// A login refused for another reason than its credentials.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expects_sasl_response_only_between_challenge_and_response() {
        let now = Instant::now();
        let config = ServerConfig {
            login_without_tls: true,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(config, now);
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        assert!(!s.expects_sasl_response());
        // A partial line changes nothing; the whole AUTH line does.
        s.receive(now, b"AUTH PLA");
        assert!(!s.expects_sasl_response());
        s.receive(now, b"IN\r\n");
        out.clear();
        s.poll_transmit(&mut out);
        assert_eq!(out, b"+ \r\n");
        assert!(s.expects_sasl_response());
        // The response line (base64 of "\0bob\0topSecret") is taken.
        s.receive(now, b"AGJvYgB0b3BTZWNyZXQ=\r\n");
        assert!(!s.expects_sasl_response());
        assert!(matches!(s.poll_event(), Some(Event::Auth { .. })));
        s.reject_login().unwrap();
        // USER/PASS is not SASL; a cancelled exchange ends it.
        s.receive(now, b"USER bob\r\n");
        assert!(!s.expects_sasl_response());
        s.receive(now, b"AUTH PLAIN\r\n");
        assert!(s.expects_sasl_response());
        s.receive(now, b"*\r\n");
        assert!(!s.expects_sasl_response());
    }
}
