//! The server side of an SMTP or LMTP session, as a state machine without I/O.

use std::collections::VecDeque;
use std::mem;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use postamt_wire::sasl::{Credentials, Exchange, Mechanism, Step};
use postamt_wire::{
    Checked, Decoded, DotDecoder, Frame, LineChecker, LineFramer, SaslError, Session, Violation,
};

use crate::address::{Domain, ForwardPath, ReversePath};
use crate::command::{Body, Command, MailParameters, RcptParameters};
use crate::config::{Protocol, ServerConfig};
use crate::error::UsageError;
use crate::reply::{EnhancedCode, Reply, push_decimal};

/// How the client greeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hello {
    /// `HELO`: plain SMTP, no extensions.
    Helo,
    /// `EHLO`: extended SMTP.
    Ehlo,
    /// `LHLO`: LMTP.
    Lhlo,
}

/// Why a message in progress was dropped. The session has already answered
/// the client (or will, once the message's end has been read); the application
/// throws away what it received of the message and the transaction's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// The message grew past [`Limits::max_message_size`](crate::Limits).
    TooBig,
    /// A bare CR or LF was found and the policy is to refuse such messages.
    BareLineEnding,
    /// A line was longer than [`Limits::max_text_line`](crate::Limits).
    LineTooLong,
    /// The client reset the transaction between BDAT chunks.
    Reset,
    /// The client went silent past the data timeout.
    Timeout,
    /// The connection closed before the message ended.
    ConnectionClosed,
    /// The session was closed for too much buffered input or too many errors.
    SessionClosed,
}

impl From<Violation> for AbortReason {
    fn from(kind: Violation) -> Self {
        match kind {
            Violation::LineTooLong => Self::LineTooLong,
            _ => Self::BareLineEnding,
        }
    }
}

/// What the application must know or decide, in protocol order.
///
/// The events marked "decision" leave the session waiting: answer them with
/// [`ServerSession::accept`], [`ServerSession::accept_with`] or
/// [`ServerSession::reject`]. No further input is processed until then.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The client greeted (HELO, EHLO or LHLO). Any transaction was reset.
    Hello {
        /// Which greeting.
        kind: Hello,
        /// The name the client gave.
        domain: Domain<'static>,
    },
    /// The session answered STARTTLS with 220: run the TLS handshake on the
    /// connection now, then call `tls_established` and feed the decrypted
    /// bytes. Until then the session reads no input: plaintext that arrived
    /// after the command is discarded (it could be injected), and afterwards
    /// the session waits for a new EHLO as RFC 3207 §4.2 requires.
    StartTls,
    /// Decision: check these credentials. Accept to answer 235; reject with
    /// 535 5.7.8 ([`Reply::auth_failed`]) to refuse.
    Auth {
        /// The mechanism the client used.
        mechanism: Mechanism,
        /// What the client sent.
        credentials: Credentials,
    },
    /// Decision: a new transaction from this sender.
    Mail {
        /// The sender.
        from: ReversePath<'static>,
        /// Its parameters, already checked against what the session offers.
        params: MailParameters<'static>,
    },
    /// Decision: one more recipient.
    Rcpt {
        /// The recipient.
        to: ForwardPath<'static>,
        /// Its parameters.
        params: RcptParameters<'static>,
    },
    /// The message text begins (after 354, or with the first BDAT chunk).
    MessageStart,
    /// The next piece of the message, dot-stuffing removed.
    MessageData(Bytes),
    /// Decision: the message is complete. Accept only once it is stored
    /// durably. In LMTP, decide once per accepted recipient, in order.
    MessageEnd,
    /// The message was dropped; see [`AbortReason`]. The transaction is over.
    MessageAborted(AbortReason),
    /// The transaction was abandoned (RSET, a new HELO/EHLO, STARTTLS, QUIT,
    /// or the end of the connection) before a message was complete.
    Reset,
}

/// The decision the session is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The credentials of an [`Event::Auth`].
    Auth,
    /// The sender of an [`Event::Mail`].
    Sender,
    /// The recipient of an [`Event::Rcpt`].
    Recipient,
    /// Delivery of the message after [`Event::MessageEnd`]; `recipient` is
    /// the 0-based index among accepted recipients (always 0 in SMTP).
    Message {
        /// Which accepted recipient this decision is for (LMTP).
        recipient: usize,
    },
}

#[derive(Debug)]
enum Pending {
    Auth,
    Sender { body: Option<Body>, smtputf8: bool },
    Recipient,
    Message { next: usize, total: usize },
}

#[derive(Debug)]
enum Input {
    Command,
    Auth(Exchange, Mechanism),
    Data(DotDecoder),
    Bdat {
        remaining: u64,
        size: u64,
        last: bool,
    },
    /// Octets of a BDAT chunk that was refused.
    Skip {
        remaining: u64,
    },
}

/// Where a mail transaction stands (RFC 5321 §3.3).
#[derive(Debug, Default)]
enum Phase {
    /// No sender accepted yet.
    #[default]
    Idle,
    /// MAIL was accepted; recipients are being given.
    Envelope,
    /// The text after DATA is being read.
    Data,
    /// BDAT chunks are being read (RFC 3030); no RCPT or DATA any more.
    Chunks {
        /// The text rules DATA keeps, unless the body is BINARYMIME.
        checker: Option<LineChecker>,
    },
    /// The whole message arrived; the application decides on its delivery.
    Delivering,
}

#[derive(Debug, Default)]
struct Transaction {
    phase: Phase,
    body: Option<Body>,
    smtputf8: bool,
    accepted: usize,
    attempted: usize,
    size: u64,
    aborted: Option<AbortReason>,
}

impl Transaction {
    /// MAIL was accepted and the transaction has not ended.
    fn is_open(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    /// A message is being received (DATA, or BDAT chunks).
    fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Data | Phase::Chunks { .. })
    }

    fn chunked(&self) -> bool {
        matches!(self.phase, Phase::Chunks { .. })
    }
}

/// One server-side SMTP or LMTP session, driven by the caller.
///
/// # Driving it
///
/// The session owns no socket and reads no clock. For each connection:
///
/// 1. Create it with [`ServerSession::new`]; the greeting is already queued.
/// 2. Hand it whatever bytes arrive with [`ServerSession::receive`], in any
///    split, and [`ServerSession::receive_eof`] when the peer closes.
/// 3. Drain [`ServerSession::poll_event`] after each call. Answer decision
///    events (sender, recipient, credentials, finished message) with
///    [`ServerSession::accept`], [`ServerSession::accept_with`] or
///    [`ServerSession::reject`]; answering may process pipelined input that
///    waited, so drain events again afterwards.
/// 4. Write what [`ServerSession::poll_transmit`] appends to your buffer.
/// 5. Wait for input no longer than [`ServerSession::poll_timeout`], then call
///    [`ServerSession::handle_timeout`] (calling it early is harmless).
/// 6. Once [`ServerSession::is_closed`] is true and the output is written,
///    close the connection.
///
/// The same input, however split, gives the same events and the same output.
/// Replies the protocol fixes (syntax errors, sequence errors, 354, 221, 421)
/// are sent without asking. The 250 after a message is sent only when the
/// application accepts it, which it must do only once the message is durable.
///
/// # Example
///
/// ```
/// use std::time::Instant;
/// use postamt_smtp::{Event, ServerConfig, ServerSession, Session};
///
/// let now = Instant::now();
/// let mut session = ServerSession::new(ServerConfig::new("mx.example"), now);
/// session.receive(now, b"HELO client.example\r\nMAIL FROM:<anna@example.org>\r\n");
/// let mut stored = Vec::new();
/// let mut input: &[&[u8]] = &[b"RCPT TO:<bob@mx.example>\r\n", b"DATA\r\n", b"Hi Bob\r\n.\r\n", b"QUIT\r\n"];
/// loop {
///     while let Some(event) = session.poll_event() {
///         match event {
///             Event::Mail { .. } | Event::Rcpt { .. } => session.accept().unwrap(),
///             Event::MessageData(bytes) => stored.extend_from_slice(&bytes),
///             Event::MessageEnd => session.accept().unwrap(), // stored durably: say 250
///             _ => {}
///         }
///     }
///     let Some((next, rest)) = input.split_first() else { break };
///     session.receive(now, next);
///     input = rest;
/// }
/// let mut out = Vec::new();
/// session.poll_transmit(&mut out);
/// assert_eq!(stored, b"Hi Bob\r\n");
/// assert_eq!(
///     String::from_utf8(out).unwrap(),
///     "220 mx.example ESMTP postamt ready\r\n\
///      250 mx.example Hello client.example\r\n\
///      250 Sender OK\r\n\
///      250 Recipient OK\r\n\
///      354 End data with <CR><LF>.<CR><LF>\r\n\
///      250 Message accepted for delivery\r\n\
///      221 mx.example See you later\r\n"
/// );
/// assert!(session.is_closed());
/// ```
#[derive(Debug)]
pub struct ServerSession {
    config: Arc<ServerConfig>,
    framer: LineFramer,
    input: Input,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    data: Vec<u8>,
    events: VecDeque<Event>,
    pending: Option<Pending>,
    hello: Option<Hello>,
    tls: bool,
    /// STARTTLS was answered and the caller has not yet said the handshake
    /// is done: no input is processed until it does.
    handshake_due: bool,
    authenticated: bool,
    tx: Transaction,
    errors: u32,
    closed: bool,
    now: Instant,
    deadline: Option<Instant>,
    /// A whole record (command line, message line, 1 KiB of BDAT data)
    /// arrived since the timer last started.
    progress: bool,
    /// BDAT octets since the timer last started.
    chunk_progress: u64,
}

/// Writes one single-line reply from parts, with the enhanced code only when
/// `enhanced` (the client said EHLO or LHLO), without joining the parts first.
fn say(out: &mut Vec<u8>, enhanced: bool, code: u16, ec: Option<EnhancedCode>, parts: &[&str]) {
    push_decimal(out, u64::from(code));
    out.push(b' ');
    if let (true, Some(ec)) = (enhanced, ec) {
        ec.write_to(out);
        if parts.iter().any(|p| !p.is_empty()) {
            out.push(b' ');
        }
    }
    for p in parts {
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Formats `n` in a stack buffer.
fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

impl ServerSession {
    /// Starts a session and queues the 220 greeting.
    pub fn new(config: impl Into<Arc<ServerConfig>>, now: Instant) -> Self {
        let config = config.into();
        let mut session = Self {
            framer: LineFramer::new(config.limits.max_command_line),
            input: Input::Command,
            buf: Vec::new(),
            pos: 0,
            out: Vec::with_capacity(512),
            data: Vec::new(),
            events: VecDeque::new(),
            pending: None,
            hello: None,
            tls: config.implicit_tls,
            handshake_due: false,
            authenticated: false,
            tx: Transaction::default(),
            errors: 0,
            closed: false,
            now,
            deadline: Some(now + config.timeouts.command),
            progress: false,
            chunk_progress: 0,
            config,
        };
        let c = &session.config;
        say(
            &mut session.out,
            false,
            220,
            None,
            &[&c.hostname, " ", &c.texts.greeting],
        );
        session
    }

    /// Starts a session that tells the client to go away (421), for a server
    /// at its connection limit. The session is closed once the reply is out.
    pub fn new_refused(config: impl Into<Arc<ServerConfig>>, now: Instant, text: &str) -> Self {
        let mut session = Self::new(config, now);
        session.out.clear();
        let host = session.config.hostname.clone();
        say(&mut session.out, false, 421, None, &[&host, " ", text]);
        session.closed = true;
        session.deadline = None;
        session
    }

    /// The configuration this session runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// How the client greeted, if it has.
    pub fn hello(&self) -> Option<Hello> {
        self.hello
    }

    /// Whether STARTTLS has run on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the client authenticated with AUTH.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the next input line is a SASL response (base64 credentials),
    /// which a transcript or log must mask.
    pub fn expects_sasl_response(&self) -> bool {
        matches!(self.input, Input::Auth(..))
    }

    /// The decision the session waits for, if any.
    pub fn pending_decision(&self) -> Option<Decision> {
        Some(match self.pending.as_ref()? {
            Pending::Auth => Decision::Auth,
            Pending::Sender { .. } => Decision::Sender,
            Pending::Recipient => Decision::Recipient,
            Pending::Message { next, .. } => Decision::Message { recipient: *next },
        })
    }

    /// Accepts the pending decision with the session's own positive reply.
    pub fn accept(&mut self) -> Result<(), UsageError> {
        self.decide(None, true)
    }

    /// Accepts the pending decision with the application's own 2yz reply
    /// (say, `250 2.0.0 Ok: queued as 4F2A`).
    pub fn accept_with(&mut self, reply: Reply) -> Result<(), UsageError> {
        if !reply.is_positive() {
            return Err(UsageError::WrongReplyClass(reply.code()));
        }
        self.decide(Some(reply), true)
    }

    /// Refuses the pending decision with a 4yz or 5yz reply.
    pub fn reject(&mut self, reply: Reply) -> Result<(), UsageError> {
        if !reply.is_transient() && !reply.is_permanent() {
            return Err(UsageError::WrongReplyClass(reply.code()));
        }
        self.decide(Some(reply), false)
    }

    fn decide(&mut self, reply: Option<Reply>, accepted: bool) -> Result<(), UsageError> {
        // After the session closed the answer is moot: taken, nothing written.
        if self.closed {
            return Ok(());
        }
        let pending = self.pending.take().ok_or(UsageError::NoDecisionPending)?;
        let enhanced = self.enhanced();
        let c = Arc::clone(&self.config);
        let out = &mut self.out;
        let own =
            |out: &mut Vec<u8>, code, ec, text: &str| say(out, enhanced, code, Some(ec), &[text]);
        match &reply {
            Some(r) => r.render_with(out, enhanced),
            None => match pending {
                Pending::Auth => own(out, 235, EnhancedCode::AUTH_OK, &c.texts.auth_ok),
                Pending::Sender { .. } => {
                    own(out, 250, EnhancedCode::SENDER_OK, &c.texts.sender_ok)
                }
                Pending::Recipient => {
                    own(out, 250, EnhancedCode::RECIPIENT_OK, &c.texts.recipient_ok)
                }
                Pending::Message { .. } => {
                    own(out, 250, EnhancedCode::OK, &c.texts.message_accepted)
                }
            },
        }
        match pending {
            Pending::Auth => self.authenticated = accepted,
            Pending::Sender { body, smtputf8 } => {
                if accepted {
                    self.tx = Transaction {
                        phase: Phase::Envelope,
                        body,
                        smtputf8,
                        ..Transaction::default()
                    };
                }
            }
            Pending::Recipient => {
                if accepted {
                    self.tx.accepted += 1;
                }
            }
            Pending::Message { next, total } => {
                if next + 1 < total {
                    self.pending = Some(Pending::Message {
                        next: next + 1,
                        total,
                    });
                } else {
                    self.tx = Transaction::default();
                }
            }
        }
        if self.pending.is_none() {
            self.deadline = Some(self.now + self.config.timeouts.command);
            self.resume();
        }
        Ok(())
    }

    /// Processes input that waited in the buffer.
    fn resume(&mut self) {
        if self.pos >= self.buf.len() || self.closed {
            return;
        }
        let buf = mem::take(&mut self.buf);
        let used = self.process(&buf[self.pos..]);
        self.buf = buf;
        self.pos += used;
        if self.closed {
            self.buf.clear();
            self.pos = 0;
        }
    }

    fn check_buffered(&mut self) {
        if !self.closed && self.buf.len() - self.pos > self.config.limits.max_buffered_input {
            self.pending = None;
            self.shut_down(
                AbortReason::SessionClosed,
                EnhancedCode::TEMPORARY_SECURITY,
                "Too much pipelined input",
            );
        }
    }

    fn touch(&mut self) {
        let timeouts = &self.config.timeouts;
        let timeout = match self.input {
            Input::Data(_) | Input::Bdat { .. } | Input::Skip { .. } => timeouts.data,
            _ => timeouts.command,
        };
        self.deadline = Some(self.now + timeout);
    }

    /// Counts BDAT octets towards the per-record timer.
    fn chunk_read(&mut self, n: usize, done: bool) {
        self.chunk_progress += n as u64;
        if done || self.chunk_progress >= BDAT_RECORD {
            self.chunk_progress = 0;
            self.progress = true;
        }
    }

    /// Hangs up by the session's own choice (RFC 5321 §3.8): drops the
    /// transaction, says `421 <host> <why>, closing connection`, closes.
    fn shut_down(&mut self, reason: AbortReason, ec: EnhancedCode, why: &str) {
        self.abandon(reason);
        let enhanced = self.enhanced();
        say(
            &mut self.out,
            enhanced,
            421,
            Some(ec),
            &[&self.config.hostname, " ", why, ", closing connection"],
        );
        self.close();
    }

    fn close(&mut self) {
        self.closed = true;
        self.deadline = None;
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// Ends the transaction because the connection is going away.
    fn abandon(&mut self, reason: AbortReason) {
        if self.tx.in_message() && self.tx.aborted.is_none() {
            self.events.push_back(Event::MessageAborted(reason));
        } else if self.tx.is_open() && !self.tx.in_message() {
            self.events.push_back(Event::Reset);
        }
        self.tx = Transaction::default();
    }

    fn enhanced(&self) -> bool {
        self.config.extensions.enhanced_status_codes
            && matches!(self.hello, Some(Hello::Ehlo | Hello::Lhlo))
    }

    fn reply(&mut self, code: u16, ec: EnhancedCode, text: &str) {
        let enhanced = self.enhanced();
        say(&mut self.out, enhanced, code, Some(ec), &[text]);
    }

    /// A reply to the peer's mistake: counts towards the error limit.
    fn error(&mut self, code: u16, ec: EnhancedCode, text: &str) {
        self.reply(code, ec, text);
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            self.shut_down(
                AbortReason::SessionClosed,
                EnhancedCode::TEMPORARY_SECURITY,
                "Too many errors",
            );
        }
    }

    /// Consumes as much of `input` as the state allows; returns how much.
    fn process(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while !self.closed && self.pending.is_none() && used < input.len() {
            let rest = &input[used..];
            match self.input {
                Input::Command | Input::Auth(..) => match self.framer.next(rest) {
                    Frame::Incomplete => break,
                    Frame::Discarded { consumed } => used += consumed,
                    Frame::TooLong { consumed } => {
                        used += consumed;
                        self.line_too_long();
                    }
                    Frame::Line {
                        line,
                        consumed,
                        bare,
                    } => {
                        used += consumed;
                        if bare {
                            self.error(
                                500,
                                EnhancedCode::SYNTAX_ERROR,
                                "Bare CR or LF in command line; lines must end with CRLF",
                            );
                        } else if self.line(line) {
                            // STARTTLS: what follows was sent in plaintext
                            // before the handshake and must not be obeyed.
                            return input.len();
                        }
                    }
                },
                Input::Data(ref mut decoder) => {
                    let lines = decoder.lines();
                    let result = if self.tx.aborted.is_some() {
                        Checked::Decoded(decoder.skip(rest))
                    } else {
                        decoder.decode_checked(rest, &mut self.data)
                    };
                    self.progress |= decoder.lines() != lines;
                    let complete = match result {
                        Checked::Decoded(Decoded::Incomplete) => {
                            used += rest.len();
                            self.message_data();
                            false
                        }
                        Checked::Decoded(Decoded::Complete { consumed }) => {
                            used += consumed;
                            self.message_data();
                            true
                        }
                        Checked::Violation { consumed, kind } => {
                            used += consumed;
                            // What came before the broken rule is handed out
                            // first, so the events do not depend on the split.
                            self.message_data();
                            self.abort_message(kind.into());
                            false
                        }
                    };
                    if complete {
                        self.progress = true;
                        self.input = Input::Command;
                        self.message_complete();
                    }
                }
                Input::Bdat {
                    ref mut remaining,
                    size,
                    last,
                } => {
                    let n = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    let done = *remaining == 0;
                    self.chunk_read(n, done);
                    if self.tx.aborted.is_none() {
                        let chunk = &rest[..n];
                        let checker = match &mut self.tx.phase {
                            Phase::Chunks { checker } => checker.as_mut(),
                            _ => None,
                        };
                        let broken = match checker {
                            Some(checker) => match checker.check(chunk, &mut self.data) {
                                Checked::Violation { kind, .. } => Some(kind),
                                Checked::Decoded(_) => None,
                            },
                            None => {
                                self.data.extend_from_slice(chunk);
                                None
                            }
                        };
                        // What came before the broken rule goes out first,
                        // as under DATA; the rest of the message is skipped.
                        self.message_data();
                        if let Some(kind) = broken {
                            self.abort_message(kind.into());
                        }
                    }
                    used += n;
                    if done {
                        self.input = Input::Command;
                        self.chunk_complete(size, last);
                    }
                }
                Input::Skip { ref mut remaining } => {
                    let n = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    let done = *remaining == 0;
                    if done {
                        self.input = Input::Command;
                    }
                    self.chunk_read(n, done);
                    used += n;
                }
            }
        }
        used
    }

    fn line_too_long(&mut self) {
        if let Input::Auth(..) = self.input {
            self.input = Input::Command;
            self.framer.set_limit(self.config.limits.max_command_line);
            self.error(
                500,
                EnhancedCode::AUTH_LINE_TOO_LONG,
                "Authentication exchange line is too long",
            );
        } else {
            self.error(500, EnhancedCode::SYNTAX_ERROR, "Line too long");
        }
    }

    /// Hands decoded message bytes to the application, enforcing the size limit.
    fn message_data(&mut self) {
        if self.data.is_empty() || self.tx.aborted.is_some() {
            self.data.clear();
            return;
        }
        let max = self.config.limits.max_message_size;
        let room = max.saturating_sub(self.tx.size);
        self.tx.size += self.data.len() as u64;
        if self.tx.size > max {
            // Hand out exactly the octets up to the limit, however the input
            // was split, then drop the message.
            self.data
                .truncate(usize::try_from(room).unwrap_or(usize::MAX));
            if !self.data.is_empty() {
                let chunk = Bytes::from(mem::take(&mut self.data));
                self.events.push_back(Event::MessageData(chunk));
            }
            self.abort_message(AbortReason::TooBig);
            return;
        }
        let chunk = Bytes::from(mem::take(&mut self.data));
        self.events.push_back(Event::MessageData(chunk));
    }

    fn abort_message(&mut self, reason: AbortReason) {
        self.data.clear();
        if self.tx.aborted.is_none() {
            self.tx.aborted = Some(reason);
            self.events.push_back(Event::MessageAborted(reason));
        }
    }

    /// The reply for a message that was dropped while it was read.
    fn abort_reply(&mut self, reason: AbortReason) {
        match reason {
            AbortReason::TooBig => self.reply(
                552,
                EnhancedCode::MESSAGE_TOO_BIG,
                "Message size exceeds fixed maximum message size",
            ),
            AbortReason::BareLineEnding => self.reply(
                554,
                EnhancedCode::MEDIA_ERROR,
                "Message refused: bare CR or LF found; lines must end with CRLF",
            ),
            AbortReason::LineTooLong => {
                let enhanced = self.enhanced();
                let mut digits = [0; 20];
                let limit = decimal(self.config.limits.max_text_line as u64, &mut digits);
                say(
                    &mut self.out,
                    enhanced,
                    554,
                    Some(EnhancedCode::MEDIA_ERROR),
                    &["Message refused: a line is longer than ", limit, " octets"],
                );
            }
            _ => {}
        }
    }

    /// The DATA end marker was seen.
    fn message_complete(&mut self) {
        if let Some(reason) = self.tx.aborted {
            self.abort_reply(reason);
            self.tx = Transaction::default();
        } else {
            self.finish_message();
        }
    }

    fn finish_message(&mut self) {
        self.tx.phase = Phase::Delivering;
        self.events.push_back(Event::MessageEnd);
        let total = match self.config.protocol {
            Protocol::Lmtp => self.tx.accepted,
            _ => 1,
        };
        self.pending = Some(Pending::Message { next: 0, total });
    }

    fn chunk_complete(&mut self, size: u64, last: bool) {
        if last
            && self.tx.aborted.is_none()
            && let Phase::Chunks {
                checker: Some(checker),
            } = &mut self.tx.phase
        {
            let broken = checker.finish(&mut self.data);
            self.message_data();
            if let Some(kind) = broken {
                self.abort_message(kind.into());
            }
        }
        if let Some(reason) = self.tx.aborted {
            self.abort_reply(reason);
            self.tx = Transaction::default();
        } else if last {
            self.finish_message();
        } else {
            let enhanced = self.enhanced();
            let mut digits = [0; 20];
            let n = decimal(size, &mut digits);
            say(
                &mut self.out,
                enhanced,
                250,
                Some(EnhancedCode::OK),
                &[n, " octets received"],
            );
        }
    }

    /// Handles one command line; returns true after STARTTLS.
    fn line(&mut self, line: &[u8]) -> bool {
        if let Input::Auth(exchange, mechanism) = &mut self.input {
            let mechanism = *mechanism;
            let step = exchange.respond(line);
            self.sasl_step(mechanism, step);
            return false;
        }
        match Command::parse(line) {
            Ok(command) => self.command(command),
            Err(e) => {
                let (code, ec, text) = e.parts();
                self.error(code, ec, text);
                false
            }
        }
    }
}

impl Session for ServerSession {
    type Event = Event;
    type UsageError = UsageError;

    /// Hands the session bytes from the client.
    fn receive(&mut self, now: Instant, data: &[u8]) {
        self.now = self.now.max(now);
        // Plaintext between STARTTLS and the handshake is an injection
        // (RFC 3207 §5): it is dropped unread.
        if self.closed || self.handshake_due {
            return;
        }
        // Only input that arrives while the application holds a decision
        // counts against the limit: one read of any size is the caller's
        // choice, more reads while waiting are the peer's.
        let waiting = self.pending.is_some();
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        if self.buf.is_empty() && self.pending.is_none() {
            let used = self.process(data);
            if !self.closed {
                self.buf.extend_from_slice(&data[used..]);
            }
        } else {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.extend_from_slice(data);
            self.resume();
        }
        if waiting {
            self.check_buffered();
        }
        // The timer restarts per record, never per byte (Postfix calls this
        // a per-record deadline): a client trickling bytes is cut off.
        if mem::take(&mut self.progress) {
            self.touch();
        }
    }

    /// Tells the session the client closed its side of the connection.
    fn receive_eof(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closed {
            return;
        }
        self.abandon(AbortReason::ConnectionClosed);
        self.close();
    }

    /// Whether the session has ended; write out what `poll_transmit` gives,
    /// then close the connection.
    fn is_closed(&self) -> bool {
        self.closed && self.events.is_empty() && self.out.is_empty()
    }

    /// The next event, if any.
    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the bytes to send to `buf`.
    fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        buf.extend_from_slice(&self.out);
        self.out.clear();
        n
    }

    /// When [`ServerSession::handle_timeout`] should be called next. `None`
    /// while the application holds a decision, or after the session closed.
    fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.pending.is_some() || self.handshake_due {
            None
        } else {
            self.deadline
        }
    }

    /// Tells the session the time; past the deadline it answers 421 and closes.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closed || self.pending.is_some() || self.handshake_due {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.shut_down(AbortReason::Timeout, EnhancedCode::TIMEOUT, "Timeout");
        }
    }

    /// The TLS handshake the [`Event::StartTls`] asked for has completed: TLS
    /// is active from now on and the session is back in its just-greeted
    /// state (RFC 3207 §4.2: no HELO, not authenticated, no transaction).
    /// [`UsageError::NoHandshakeDue`] when no handshake was due.
    fn tls_established(&mut self) -> Result<(), UsageError> {
        if !self.handshake_due {
            return Err(UsageError::NoHandshakeDue);
        }
        self.handshake_due = false;
        self.tls = true;
        self.framer.reset();
        self.buf.clear();
        self.pos = 0;
        if !self.closed {
            self.deadline = Some(self.now + self.config.timeouts.command);
        }
        Ok(())
    }

}

/// BDAT octets that count as one record for the timer: a chunk trickling in
/// slower than 1 KiB per data timeout is cut off.
const BDAT_RECORD: u64 = 1024;

/// Sequence errors (RFC 5321 §4.1.4, 503 5.5.1).
const NEED_HELLO: &str = "Send HELO or EHLO first";
const NEED_MAIL: &str = "Need MAIL command first";
const NEED_RCPT: &str = "Need RCPT command first";

impl ServerSession {
    fn sequence_error(&mut self, text: &str) {
        self.error(503, EnhancedCode::INVALID_COMMAND, text);
    }

    /// 555 5.5.4 (RFC 5321 §4.1.1.11): a MAIL or RCPT parameter that was not
    /// offered or is not known.
    fn parameter_not_recognized(&mut self) {
        self.error(
            555,
            EnhancedCode::INVALID_ARGUMENTS,
            "Parameter not recognized or not implemented",
        );
    }

    fn command(&mut self, command: Command<'_>) -> bool {
        let lmtp = self.config.protocol == Protocol::Lmtp;
        match command {
            Command::Helo(_) | Command::Ehlo(_) if lmtp => {
                self.error(500, EnhancedCode::INVALID_COMMAND, "Use LHLO in LMTP");
            }
            Command::Lhlo(_) if !lmtp => {
                self.error(500, EnhancedCode::INVALID_COMMAND, "Command unrecognized");
            }
            Command::Helo(d) => self.hello_command(Hello::Helo, d),
            Command::Ehlo(d) => self.hello_command(Hello::Ehlo, d),
            Command::Lhlo(d) => self.hello_command(Hello::Lhlo, d),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                let ok = Arc::clone(&self.config);
                self.reply(250, EnhancedCode::OK, &ok.texts.ok);
            }
            Command::Noop(_) => {
                let ok = Arc::clone(&self.config);
                self.reply(250, EnhancedCode::OK, &ok.texts.ok);
            }
            Command::Quit => {
                self.abandon(AbortReason::ConnectionClosed);
                let enhanced = self.enhanced();
                let c = &self.config;
                say(
                    &mut self.out,
                    enhanced,
                    221,
                    Some(EnhancedCode::OK),
                    &[&c.hostname, " ", &c.texts.quit],
                );
                self.close();
            }
            Command::Vrfy(_) => {
                let c = Arc::clone(&self.config);
                self.reply(252, EnhancedCode::CANNOT_VERIFY, &c.texts.vrfy);
            }
            Command::Expn(_) => {
                self.reply(502, EnhancedCode::INVALID_COMMAND, "EXPN is not available")
            }
            Command::Help(_) => {
                let enhanced = self.enhanced();
                let ec = enhanced.then_some(EnhancedCode::OK);
                let c = &self.config;
                let last = c.texts.help.len().saturating_sub(1);
                for (i, line) in c.texts.help.iter().enumerate() {
                    crate::reply::write_line(&mut self.out, 214, i == last, ec, line);
                }
                if c.texts.help.is_empty() {
                    say(&mut self.out, enhanced, 214, Some(EnhancedCode::OK), &[]);
                }
            }
            Command::StartTls => return self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
        }
        false
    }

    /// Drops the transaction at the client's request (RSET, HELO, EHLO, STARTTLS).
    fn reset_transaction(&mut self) {
        if self.tx.is_open() {
            if self.tx.in_message() {
                self.events
                    .push_back(Event::MessageAborted(AbortReason::Reset));
            } else {
                self.events.push_back(Event::Reset);
            }
        }
        self.tx = Transaction::default();
    }

    fn hello_command(&mut self, kind: Hello, domain: Domain<'_>) {
        self.reset_transaction();
        self.hello = Some(kind);
        self.events.push_back(Event::Hello {
            kind,
            domain: domain.clone().into_owned(),
        });
        let c = Arc::clone(&self.config);
        let first = [
            c.hostname.as_str(),
            " ",
            &c.texts.hello,
            " ",
            domain.as_str(),
        ];
        if kind == Hello::Helo {
            say(&mut self.out, false, 250, None, &first);
            return;
        }
        let out = &mut self.out;
        let ext = &c.extensions;
        // Every line is written as `250-`; the last one's mark becomes `250 `
        // at the end, when it is known which keyword came last.
        let mut last = out.len();
        let mut line = |out: &mut Vec<u8>, parts: &[&str]| {
            last = out.len();
            out.extend_from_slice(b"250-");
            for p in parts {
                out.extend_from_slice(p.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        };
        line(out, &first);
        if ext.pipelining {
            line(out, &["PIPELINING"]);
        }
        if ext.size {
            let mut digits = [0; 20];
            line(
                out,
                &["SIZE ", decimal(c.limits.max_message_size, &mut digits)],
            );
        }
        if ext.eight_bit_mime {
            line(out, &["8BITMIME"]);
        }
        if ext.smtputf8 {
            line(out, &["SMTPUTF8"]);
        }
        if ext.enhanced_status_codes {
            line(out, &["ENHANCEDSTATUSCODES"]);
        }
        if ext.chunking {
            line(out, &["CHUNKING"]);
            if ext.binary_mime {
                line(out, &["BINARYMIME"]);
            }
        }
        if ext.dsn {
            line(out, &["DSN"]);
        }
        if ext.starttls && !self.tls {
            line(out, &["STARTTLS"]);
        }
        if !ext.auth.is_empty() && !self.authenticated && (self.tls || c.login_without_tls) {
            line(out, &["AUTH"]);
            out.truncate(out.len() - 2);
            for m in &ext.auth {
                out.push(b' ');
                out.extend_from_slice(m.as_str().as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        // HELP is a command every server has (RFC 5321 §4.1.1.8), not a
        // service extension: it is not advertised.
        out[last + 3] = b' ';
    }

    /// Checks parameters against what was advertised; true when all are fine.
    fn unknown_parameters(&mut self, other: &[crate::command::Parameter<'_>]) -> bool {
        if !other.is_empty() && !self.config.allow_unknown_parameters {
            self.parameter_not_recognized();
            return true;
        }
        false
    }

    fn mail(&mut self, from: ReversePath<'_>, params: MailParameters<'_>) {
        if self.hello.is_none() {
            return self.sequence_error(NEED_HELLO);
        }
        if self.tx.is_open() {
            return self.sequence_error("Sender already given; RSET to start over");
        }
        let ext = &self.config.extensions;
        let extended = self.hello != Some(Hello::Helo);
        let unsupported = (params.size.is_some() && !ext.size)
            || (params.body == Some(Body::EightBitMime) && !ext.eight_bit_mime)
            || (params.body == Some(Body::BinaryMime) && !(ext.binary_mime && ext.chunking))
            || (params.smtputf8 && !ext.smtputf8)
            || (params.auth.is_some() && ext.auth.is_empty())
            || ((params.ret.is_some() || params.envid.is_some()) && !ext.dsn);
        let any = params.size.is_some()
            || params.body.is_some()
            || params.smtputf8
            || params.auth.is_some()
            || params.ret.is_some()
            || params.envid.is_some()
            || !params.other.is_empty();
        if unsupported || (any && !extended) {
            return self.parameter_not_recognized();
        }
        if self.unknown_parameters(&params.other) {
            return;
        }
        if params
            .size
            .is_some_and(|s| s > self.config.limits.max_message_size)
        {
            return self.reply(
                552,
                EnhancedCode::MESSAGE_TOO_BIG,
                "Message size exceeds fixed maximum message size",
            );
        }
        if from.mailbox().is_some_and(|m| !m.is_ascii()) && !params.smtputf8 {
            return self.reply(
                553,
                EnhancedCode::NON_ASCII_ADDRESS,
                "Non-ASCII address needs SMTPUTF8",
            );
        }
        self.pending = Some(Pending::Sender {
            body: params.body,
            smtputf8: params.smtputf8,
        });
        self.events.push_back(Event::Mail {
            from: from.into_owned(),
            params: params.into_owned(),
        });
    }

    fn rcpt(&mut self, to: ForwardPath<'_>, params: RcptParameters<'_>) {
        if self.hello.is_none() {
            return self.sequence_error(NEED_HELLO);
        }
        if !self.tx.is_open() {
            return self.sequence_error(NEED_MAIL);
        }
        if self.tx.chunked() {
            return self.sequence_error("RCPT not allowed after BDAT");
        }
        let dsn = self.config.extensions.dsn;
        if (params.notify.is_some() || params.orcpt.is_some()) && !dsn {
            return self.parameter_not_recognized();
        }
        if self.unknown_parameters(&params.other) {
            return;
        }
        if to.mailbox().is_some_and(|m| !m.is_ascii()) && !self.tx.smtputf8 {
            return self.reply(
                553,
                EnhancedCode::NON_ASCII_ADDRESS,
                "Non-ASCII address needs SMTPUTF8",
            );
        }
        self.tx.attempted += 1;
        if self.tx.accepted >= self.config.limits.max_recipients {
            return self.reply(
                452,
                EnhancedCode::TOO_MANY_RECIPIENTS,
                "Too many recipients",
            );
        }
        self.pending = Some(Pending::Recipient);
        self.events.push_back(Event::Rcpt {
            to: to.into_owned(),
            params: params.into_owned(),
        });
    }

    /// Checks shared by DATA and BDAT; true when a message may start.
    fn may_start_message(&mut self) -> bool {
        if self.hello.is_none() {
            self.sequence_error(NEED_HELLO);
        } else if !self.tx.is_open() {
            self.sequence_error(NEED_MAIL);
        } else if self.tx.accepted == 0 {
            if self.tx.attempted > 0 {
                self.reply(554, EnhancedCode::INVALID_COMMAND, "No valid recipients");
            } else {
                self.sequence_error(NEED_RCPT);
            }
        } else {
            return true;
        }
        false
    }

    fn data(&mut self) {
        if !self.may_start_message() {
            return;
        }
        if self.tx.chunked() {
            return self.sequence_error("DATA not allowed after BDAT");
        }
        if self.tx.body == Some(Body::BinaryMime) {
            return self.sequence_error("BODY=BINARYMIME needs BDAT");
        }
        let c = Arc::clone(&self.config);
        say(&mut self.out, false, 354, None, &[&c.texts.data_start]);
        self.tx.phase = Phase::Data;
        self.events.push_back(Event::MessageStart);
        self.input = Input::Data(DotDecoder::new(c.bare_line_endings, c.limits.max_text_line));
        self.touch_data();
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let refuse = if !self.config.extensions.chunking {
            self.error(502, EnhancedCode::INVALID_COMMAND, "BDAT is not available");
            true
        } else {
            !self.may_start_message()
        };
        if refuse {
            if size > 0 {
                self.input = Input::Skip { remaining: size };
            }
            return;
        }
        if !self.tx.chunked() {
            // Only BINARYMIME content passes as it is (RFC 3030 §3); 7BIT and
            // 8BITMIME text keeps the rules it would keep under DATA.
            let c = &self.config;
            let checker = (self.tx.body != Some(Body::BinaryMime))
                .then(|| LineChecker::new(c.bare_line_endings, c.limits.max_text_line));
            self.tx.phase = Phase::Chunks { checker };
            self.events.push_back(Event::MessageStart);
        }
        if size == 0 {
            self.chunk_complete(0, last);
        } else {
            self.input = Input::Bdat {
                remaining: size,
                size,
                last,
            };
            self.touch_data();
        }
    }

    fn touch_data(&mut self) {
        self.deadline = Some(self.now + self.config.timeouts.data);
    }

    fn starttls(&mut self) -> bool {
        if !self.config.extensions.starttls || self.tls {
            self.error(
                502,
                EnhancedCode::INVALID_COMMAND,
                "STARTTLS is not available",
            );
            return false;
        }
        if self.hello.is_none() {
            self.sequence_error(NEED_HELLO);
            return false;
        }
        self.reply(220, EnhancedCode::OK, "Ready to start TLS");
        self.reset_transaction();
        self.hello = None;
        self.authenticated = false;
        self.handshake_due = true;
        self.framer.reset();
        self.events.push_back(Event::StartTls);
        true
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) {
        let ext = &self.config.extensions;
        if ext.auth.is_empty() {
            return self.error(502, EnhancedCode::INVALID_COMMAND, "AUTH is not available");
        }
        if !matches!(self.hello, Some(Hello::Ehlo | Hello::Lhlo)) {
            return self.sequence_error("Send EHLO first");
        }
        if self.authenticated {
            return self.sequence_error("Already authenticated");
        }
        if self.tx.is_open() {
            return self.sequence_error("AUTH is not permitted during a mail transaction");
        }
        if !self.tls && !self.config.login_without_tls {
            return self.error(
                538,
                EnhancedCode::ENCRYPTION_REQUIRED,
                "Encryption required for requested authentication mechanism",
            );
        }
        let Some(mechanism) = mechanism
            .parse::<Mechanism>()
            .ok()
            .filter(|m| ext.auth.contains(m))
        else {
            return self.error(
                504,
                EnhancedCode::INVALID_ARGUMENTS,
                "Unrecognized authentication type",
            );
        };
        let (exchange, step) = Exchange::start(mechanism, initial.map(str::as_bytes));
        self.input = Input::Auth(exchange, mechanism);
        self.framer.set_limit(self.config.limits.max_auth_line);
        self.sasl_step(mechanism, step);
    }

    fn sasl_step(&mut self, mechanism: Mechanism, step: Step) {
        if let Step::Challenge(challenge) = step {
            say(&mut self.out, false, 334, None, &[challenge]);
            return;
        }
        self.input = Input::Command;
        self.framer.set_limit(self.config.limits.max_command_line);
        match step {
            Step::Done(credentials) => {
                self.pending = Some(Pending::Auth);
                self.events.push_back(Event::Auth {
                    mechanism,
                    credentials,
                });
            }
            Step::Failed(SaslError::Cancelled) => {
                self.error(501, EnhancedCode::SECURITY, "Authentication cancelled")
            }
            Step::Failed(_) => self.error(
                501,
                EnhancedCode::SYNTAX_ERROR,
                "Malformed authentication response",
            ),
            Step::Challenge(_) => {}
        }
    }
}
