//! The server side of an SMTP or LMTP session, as a state machine without I/O.
//!
//! `mod.rs` holds the session type, its decisions and the
//! [`Session`](postamt_wire::Session) contract; `input.rs` the input and
//! message path (command lines, DATA, BDAT); `commands.rs` what each command
//! does; `events.rs` what the application is told.

mod commands;
mod events;
mod input;

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::Arc;
use std::time::Instant;

use postamt_wire::sasl::{Exchange, Mechanism};
use postamt_wire::{DotDecoder, LineChecker, LineFramer, Session};

use crate::command::Body;
use crate::config::ServerConfig;
use crate::error::UsageError;
use crate::reply::{EnhancedCode, Reply, push_decimal};

pub use events::{AbortReason, Decision, Event, Hello};

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

/// What a [`ServerSession`] reads next from the client
/// ([`ServerSession::input_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputMode {
    /// A command line.
    Command,
    /// A line answering an AUTH challenge (base64 credentials).
    SaslResponse,
    /// Message text after DATA, up to `CRLF . CRLF`.
    Data,
    /// The octets left of a BDAT chunk (also of one that was refused and is
    /// skipped).
    Chunk {
        /// How many octets are still to come.
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
/// The session owns no socket and reads no clock. It keeps the driving
/// contract of [`Session`](postamt_wire::Session), re-exported as
/// [`crate::Session`] (bring the trait into scope to call its methods):
///
/// 1. Create it with [`ServerSession::new`]; the greeting is already queued.
///    For implicit TLS (port 465) set [`ServerConfig::implicit_tls`].
/// 2. Hand it whatever bytes arrive with [`Session::receive`], in any split,
///    and [`Session::receive_eof`] when the peer closes.
/// 3. Drain [`Session::poll_event`] after each call. Answer decision events
///    (sender, recipient, credentials, finished message) with
///    [`ServerSession::accept`], [`ServerSession::accept_with`] or
///    [`ServerSession::reject`]; answering may process pipelined input that
///    waited, so drain events again afterwards. A decision made after the
///    session closed is taken without a word (`Ok(())`, nothing written).
/// 4. Write what [`Session::poll_transmit`] appends to your buffer.
/// 5. Wait for input no longer than [`Session::time_to_timeout`], then call
///    [`Session::handle_timeout`] (calling it early is harmless).
/// 6. After [`Event::StartTls`] run the TLS handshake, then call
///    [`Session::tls_established`]; until then the session reads nothing,
///    and what arrived in between is dropped (RFC 3207 §5).
/// 7. Once [`Session::is_closed`] is true (ended, and every event and byte
///    taken), close the connection.
/// 8. Behind a proxy that names the real client with XCLIENT, call
///    [`ServerSession::allow_xclient`] for its connections and take the
///    client's address from [`Event::Xclient`].
///
/// The same input, however split, gives the same events and the same output.
/// Replies the protocol fixes (syntax errors, sequence errors, 354, 221, 421)
/// are sent without asking. The 250 after a message is sent only when the
/// application accepts it, which it must do only once the message is durable.
/// BDAT text keeps the rules DATA text keeps (bare CR/LF, line length),
/// unless the body is BINARYMIME.
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
    /// The application trusts this client to send XCLIENT.
    xclient: bool,
    tx: Transaction,
    errors: u32,
    auth_failures: u32,
    closed: bool,
    now: Instant,
    deadline: Option<Instant>,
    /// A whole record (command line, message line, 1 KiB of BDAT data)
    /// arrived since the timer last started.
    progress: bool,
    /// BDAT octets since the timer last started.
    chunk_progress: u64,
}

/// Written by hand: input held back (`buf`) may be a pipelined AUTH line
/// with a password in it, so buffers show as lengths, never as contents. The
/// SASL state (`Exchange`) and the credentials in queued events redact
/// themselves.
impl fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSession")
            .field("hostname", &self.config.hostname)
            .field("input", &self.input)
            .field("buffered_input", &(self.buf.len() - self.pos))
            .field("output", &self.out.len())
            .field("events", &self.events)
            .field("pending", &self.pending)
            .field("hello", &self.hello)
            .field("tls", &self.tls)
            .field("handshake_due", &self.handshake_due)
            .field("authenticated", &self.authenticated)
            .field("xclient", &self.xclient)
            .field("transaction", &self.tx)
            .field("errors", &self.errors)
            .field("closed", &self.closed)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
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
            xclient: false,
            tx: Transaction::default(),
            errors: 0,
            auth_failures: 0,
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

    /// Whether the client authenticated with AUTH (or a trusted proxy said
    /// so with XCLIENT `LOGIN=`).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Lets this client use XCLIENT (Postfix's `smtpd_authorized_xclient_hosts`):
    /// call it right after [`ServerSession::new`] for a connection from a
    /// proxy the application trusts to name the real client. Then EHLO
    /// offers `XCLIENT` with its attributes and the command is obeyed
    /// ([`Event::Xclient`]); otherwise it is refused with 550 5.7.0. Trust
    /// belongs to the connection, not to the configuration every connection
    /// shares, and it outlasts XCLIENT itself, so the proxy may send more.
    pub fn allow_xclient(&mut self, allowed: bool) {
        self.xclient = allowed;
    }

    /// Whether this client may use XCLIENT.
    pub fn is_xclient_allowed(&self) -> bool {
        self.xclient
    }

    /// Whether the next input line is a SASL response (base64 credentials),
    /// which a transcript or log must mask.
    pub fn expects_sasl_response(&self) -> bool {
        matches!(self.input, Input::Auth(..))
    }

    /// What the session reads next from the client, for a driver that puts
    /// something in front of it which must tell command lines from message
    /// text (an input filter, a transcript).
    pub fn input_mode(&self) -> InputMode {
        match self.input {
            Input::Command => InputMode::Command,
            Input::Auth(..) => InputMode::SaslResponse,
            Input::Data(_) => InputMode::Data,
            Input::Bdat { remaining, .. } | Input::Skip { remaining } => {
                InputMode::Chunk { remaining }
            }
        }
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
            Pending::Auth if accepted => self.authenticated = true,
            Pending::Auth => self.auth_failed(),
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
        if self.pending.is_none() && !self.closed {
            self.deadline = Some(self.now + self.config.timeouts.command);
            self.resume();
        }
        Ok(())
    }

    fn touch(&mut self) {
        let timeouts = &self.config.timeouts;
        let timeout = match self.input {
            Input::Data(_) | Input::Bdat { .. } | Input::Skip { .. } => timeouts.data,
            _ => timeouts.command,
        };
        self.deadline = Some(self.now + timeout);
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
        // A decision still open is moot now: answering it does nothing.
        self.pending = None;
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
        self.count_error();
    }

    /// Refused credentials (the reply is out): an error, and one try fewer
    /// before the session hangs up on a password guesser.
    fn auth_failed(&mut self) {
        self.auth_failures += 1;
        if self.auth_failures >= self.config.limits.max_auth_failures {
            self.shut_down(
                AbortReason::SessionClosed,
                EnhancedCode::TEMPORARY_SECURITY,
                "Too many failed authentications",
            );
        } else {
            self.count_error();
        }
    }

    fn count_error(&mut self) {
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            self.shut_down(
                AbortReason::SessionClosed,
                EnhancedCode::TEMPORARY_SECURITY,
                "Too many errors",
            );
        }
    }
}

impl Session for ServerSession {
    type Event = Event;
    type UsageError = UsageError;

    /// Hands the session bytes from the client. Ignored once closed, and
    /// between STARTTLS and [`Session::tls_established`].
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

    /// Whether the session has ended (QUIT, 421, the peer's EOF) and its
    /// events and output have all been taken.
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

    /// When [`Session::handle_timeout`] should be called next: the command
    /// or data deadline ([`ServerTimeouts`](crate::ServerTimeouts)). `None`
    /// while the application holds a decision or a TLS handshake is due, and
    /// after the session closed.
    fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.pending.is_some() || self.handshake_due {
            None
        } else {
            self.deadline
        }
    }

    /// Tells the session the time; past the deadline it answers `421 4.4.2`
    /// and closes.
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
