//! The client side of a POP3 session, as a state machine without I/O. See
//! [`ClientSession`] for the driving contract.

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::time::Instant;

use bytes::Bytes;
use memchr::memchr;
use postamt_wire::sasl::{self, Mechanism};
use postamt_wire::{Decoded, Secret, Session};

use crate::apop::apop_digest;
use crate::command::{Command, MAX_COMMAND_LINE, MessageNumber};
use crate::error::ResponseError;
use crate::response::{MultilineDecoder, Response, Status};

mod capabilities;
mod config;
mod events;

pub use capabilities::Capabilities;
pub use config::{ClientConfig, ClientTimeouts};
pub use events::{ClientError, ClientEvent, ClientUsageError, Request};

/// A response the client waits for, in the order the commands went out.
#[derive(Debug)]
enum Expect {
    Greeting,
    Capa,
    Stls,
    /// USER's answer; PASS with this password follows on `+OK`.
    User(Secret<String>),
    Pass,
    Apop,
    /// AUTH's answer; the response still to send at the `+ ` prompt, if any.
    Auth(Option<Secret<String>>),
    Stat,
    List(Option<MessageNumber>),
    Uidl(Option<MessageNumber>),
    Retr(MessageNumber),
    Top(MessageNumber),
    Dele(MessageNumber),
    Rset,
    Noop,
    Quit,
}

impl Expect {
    fn request(&self) -> Request {
        match self {
            Self::Greeting => Request::Greeting,
            Self::Capa => Request::Capa,
            Self::Stls => Request::Stls,
            Self::User(_) => Request::User,
            Self::Pass => Request::Pass,
            Self::Apop => Request::Apop,
            Self::Auth(_) => Request::Auth,
            Self::Stat => Request::Stat,
            Self::List(_) => Request::List,
            Self::Uidl(_) => Request::Uidl,
            Self::Retr(_) => Request::Retr,
            Self::Top(_) => Request::Top,
            Self::Dele(_) => Request::Dele,
            Self::Rset => Request::Rset,
            Self::Noop => Request::Noop,
            Self::Quit => Request::Quit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the greeting, or for CAPA's answer (again after STLS).
    Starting,
    /// AUTHORIZATION state, nothing outstanding but what the caller queued.
    Authorization,
    /// A login or STLS is outstanding.
    Exchange,
    /// STLS was accepted: waiting for the caller's handshake.
    Handshake,
    /// TRANSACTION state.
    Transaction,
    /// QUIT was queued or sent.
    Quitting,
    Closed,
}

/// A multi-line body being read.
#[derive(Debug)]
enum Body {
    /// CAPA, LIST or UIDL: kept until complete, bounded by
    /// [`ClientConfig::max_listing`].
    Listing {
        command: Listing,
        decoder: MultilineDecoder,
        text: Vec<u8>,
    },
    /// RETR or TOP: handed on as it arrives.
    Message(MultilineDecoder),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Capa,
    List,
    Uidl,
}

/// One client-side POP3 session, driven by the caller through
/// [`postamt_wire::Session`], the contract all four postamt sessions keep:
///
/// 1. [`receive`](Session::receive) takes the bytes that arrived, split
///    anywhere; [`receive_eof`](Session::receive_eof) says the server closed.
/// 2. [`poll_event`](Session::poll_event) gives what happened, one event at
///    a time, in the order of the commands: drain it after every `receive`.
/// 3. Commands are queued with methods ([`login_user`](Self::login_user),
///    [`stat`](Self::stat), [`retr`](Self::retr), ...); each yields exactly
///    one outcome event. After login, maildrop commands may be queued at any
///    time: with `PIPELINING` in CAPA they go out at once, otherwise one
///    after each response.
/// 4. [`poll_transmit`](Session::poll_transmit) appends the bytes to write.
/// 5. [`poll_timeout`](Session::poll_timeout) and
///    [`handle_timeout`](Session::handle_timeout) carry time in; the session
///    reads no clock.
/// 6. [`is_closed`](Session::is_closed) turns true once the session ended
///    and its last event ([`ClientEvent::Closed`], always) and output were
///    taken: then drop the connection.
/// 7. STLS: after [`ClientEvent::StartTls`] run the handshake, then call
///    [`tls_established`](Session::tls_established); until then no command
///    goes out and what the server sends is discarded. The session then asks
///    CAPA again and says [`ClientEvent::Ready`] once more.
///
/// Once the session has ended (the server closed, a timeout, a malformed
/// response: [`ClientEvent::Closed`] is queued) every method that asks for
/// something returns `Ok(())` and sends nothing: the caller may not have seen
/// the `Closed` yet, so it is no mistake, and the answer is moot. Usage
/// errors are only the caller's own mistakes.
///
/// The session opens by reading the greeting (keeping its APOP timestamp)
/// and sending CAPA. A message's text (RETR, TOP) is unstuffed as it arrives
/// and handed on as [`ClientEvent::MessageData`]; it is never collected.
/// What is kept is bounded by [`ClientConfig`]: one status line, one listing.
///
/// ```
/// use std::time::Instant;
/// use postamt_pop3::{ClientConfig, ClientEvent, ClientSession};
/// use postamt_pop3::Session;
///
/// let now = Instant::now();
/// let mut client = ClientSession::new(ClientConfig::new(), now);
/// let mut out = Vec::new();
/// client.receive(now, b"+OK ready\r\n");
/// client.poll_transmit(&mut out);
/// assert_eq!(out, b"CAPA\r\n");
/// client.receive(now, b"+OK\r\nUSER\r\nPIPELINING\r\n.\r\n");
/// let Some(ClientEvent::Ready(caps)) = client.poll_event() else { panic!() };
/// assert!(caps.user && caps.pipelining);
/// client.login_user("bob", "topSecret").unwrap();
/// client.receive(now, b"+OK\r\n+OK 2 messages\r\n");
/// assert_eq!(client.poll_event(), Some(ClientEvent::LoggedIn));
/// client.stat().unwrap();
/// client.retr(postamt_pop3::MessageNumber::new(1).unwrap()).unwrap();
/// client.quit().unwrap();
/// out.clear();
/// client.poll_transmit(&mut out);
/// assert_eq!(out, b"USER bob\r\nPASS topSecret\r\nSTAT\r\nRETR 1\r\nQUIT\r\n");
/// client.receive(now, b"+OK 1 9\r\n+OK\r\n..hi\r\nyo\r\n.\r\n+OK bye\r\n");
/// assert_eq!(client.poll_event(), Some(ClientEvent::Stat { count: 1, octets: 9 }));
/// assert!(matches!(client.poll_event(), Some(ClientEvent::MessageStart(_))));
/// assert_eq!(client.poll_event(), Some(ClientEvent::MessageData(".hi\r\nyo\r\n".into())));
/// assert_eq!(client.poll_event(), Some(ClientEvent::MessageEnd));
/// // Closed, but not drained: the last event is still to be taken.
/// assert!(!client.is_closed());
/// assert_eq!(client.poll_event(), Some(ClientEvent::Closed(None)));
/// assert!(client.is_closed());
/// ```
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    /// Received bytes not processed yet (part of a line).
    input: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    /// Sent commands whose responses are awaited, oldest first.
    expect: VecDeque<Expect>,
    /// Queued maildrop commands not sent yet (without PIPELINING).
    queue: VecDeque<(Vec<u8>, Expect)>,
    body: Option<Body>,
    greeting: Option<Response>,
    caps: Option<Capabilities>,
    tls: bool,
    now: Instant,
    deadline: Option<Instant>,
}

/// By hand: the input and output buffers are shown by length only, as
/// output waiting to be sent holds PASS, AUTH's response or APOP's digest.
impl fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSession")
            .field("config", &self.config)
            .field("phase", &self.phase)
            .field("input_len", &self.input.len())
            .field("output_len", &self.out.len())
            .field("events", &self.events)
            .field("expect", &self.expect)
            .field(
                "queued",
                &self.queue.iter().map(|(_, e)| e).collect::<Vec<_>>(),
            )
            .field("body", &self.body)
            .field("greeting", &self.greeting)
            .field("caps", &self.caps)
            .field("tls", &self.tls)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// A session on a fresh connection, waiting for the server's greeting.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let deadline = Some(now + config.timeouts.response);
        Self {
            tls: config.implicit_tls,
            config,
            phase: Phase::Starting,
            input: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            queue: VecDeque::new(),
            body: None,
            greeting: None,
            caps: None,
            now,
            deadline,
        }
    }

    /// The server's greeting, once it arrived.
    pub fn greeting(&self) -> Option<&Response> {
        self.greeting.as_ref()
    }

    /// The greeting's APOP timestamp (`<...>`), if it carried one.
    pub fn apop_timestamp(&self) -> Option<&str> {
        self.greeting.as_ref().and_then(Response::apop_timestamp)
    }

    /// What the server offered, once it answered CAPA.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// Whether TLS is active (after [`tls_established`](Session::tls_established)
    /// or from the start with [`ClientConfig::implicit_tls`]).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the login succeeded and the maildrop is open.
    pub fn is_logged_in(&self) -> bool {
        matches!(self.phase, Phase::Transaction)
    }

    /// Commands sent or queued whose responses have not arrived in full
    /// yet (a message being read counts until its end).
    pub fn outstanding(&self) -> usize {
        self.expect.len() + self.queue.len() + usize::from(self.body.is_some())
    }

    /// Whether a response, or the rest of one, is awaited.
    fn awaiting(&self) -> bool {
        !self.expect.is_empty() || self.body.is_some()
    }

    /// Asks for STLS (RFC 2595 §4); [`ClientEvent::StartTls`] says when to
    /// run the handshake.
    pub fn stls(&mut self) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.idle_authorization()?;
        if self.tls || !self.caps.as_ref().is_some_and(|c| c.stls) {
            return Err(ClientUsageError::NotOffered);
        }
        self.phase = Phase::Exchange;
        self.send(&Command::Stls, Expect::Stls);
        Ok(())
    }

    /// Logs in with USER and PASS (RFC 1939 §7); PASS goes after USER's
    /// `+OK`. [`ClientEvent::LoggedIn`] or [`ClientEvent::Error`] follows.
    pub fn login_user(&mut self, user: &str, password: &str) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.idle_authorization()?;
        if self.caps.as_ref().is_some_and(|c| c.capa && !c.user) {
            return Err(ClientUsageError::NotOffered);
        }
        check_name(user)?;
        check_secret(password)?;
        if 5 + password.len() + 2 > MAX_COMMAND_LINE || 5 + user.len() + 2 > MAX_COMMAND_LINE {
            return Err(ClientUsageError::InvalidArgument);
        }
        self.phase = Phase::Exchange;
        self.send(
            &Command::User(user),
            Expect::User(Secret::new(password.to_string())),
        );
        Ok(())
    }

    /// Logs in with APOP (RFC 1939 §7): the digest of the greeting's
    /// timestamp and `secret`; the secret itself is never sent.
    pub fn login_apop(&mut self, user: &str, secret: &str) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.idle_authorization()?;
        check_name(user)?;
        // `APOP name digest`: the digest is 32 hex digits.
        if "APOP ".len() + user.len() + 1 + 32 + 2 > MAX_COMMAND_LINE {
            return Err(ClientUsageError::InvalidArgument);
        }
        let Some(timestamp) = self.apop_timestamp() else {
            return Err(ClientUsageError::NoApopTimestamp);
        };
        let digest = apop_digest(timestamp, secret);
        self.phase = Phase::Exchange;
        self.send(
            &Command::Apop {
                name: user,
                digest: Secret::new(&digest),
            },
            Expect::Apop,
        );
        Ok(())
    }

    /// Logs in with AUTH (RFC 5034). PLAIN is sent with its initial
    /// response when the line stays within 255 octets, else at the `+ `
    /// prompt.
    pub fn authenticate(
        &mut self,
        mechanism: Mechanism,
        user: &str,
        password: &str,
    ) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.idle_authorization()?;
        if mechanism != Mechanism::Plain {
            return Err(ClientUsageError::UnsupportedMechanism);
        }
        if !self.caps.as_ref().is_some_and(|c| c.offers_sasl(mechanism)) {
            return Err(ClientUsageError::NotOffered);
        }
        // RFC 4616 §2: authcid and passwd are one or more octets, no NUL.
        if user.is_empty() || password.is_empty() || user.contains('\0') || password.contains('\0')
        {
            return Err(ClientUsageError::InvalidArgument);
        }
        let response = sasl::encode_plain(None, user, password);
        self.phase = Phase::Exchange;
        if "AUTH PLAIN ".len() + response.len() + 2 <= MAX_COMMAND_LINE {
            self.send(
                &Command::Auth {
                    mechanism: "PLAIN",
                    initial_response: Some(Secret::new(&response)),
                },
                Expect::Auth(None),
            );
        } else {
            self.send(
                &Command::Auth {
                    mechanism: "PLAIN",
                    initial_response: None,
                },
                Expect::Auth(Some(Secret::new(response))),
            );
        }
        Ok(())
    }

    /// Queues STAT: [`ClientEvent::Stat`].
    pub fn stat(&mut self) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Stat, Expect::Stat)
    }

    /// Queues LIST, for one message or all: [`ClientEvent::List`].
    pub fn list(&mut self, message: Option<MessageNumber>) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::List(message), Expect::List(message))
    }

    /// Queues UIDL, for one message or all: [`ClientEvent::Uidl`].
    pub fn uidl(&mut self, message: Option<MessageNumber>) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Uidl(message), Expect::Uidl(message))
    }

    /// Queues RETR: [`ClientEvent::MessageStart`], the text, and
    /// [`ClientEvent::MessageEnd`].
    pub fn retr(&mut self, message: MessageNumber) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Retr(message), Expect::Retr(message))
    }

    /// Queues `TOP message lines`: the header and that many body lines, as
    /// for [`retr`](Self::retr).
    pub fn top(&mut self, message: MessageNumber, lines: u32) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Top { message, lines }, Expect::Top(message))
    }

    /// Queues DELE: [`ClientEvent::Deleted`]. The message goes at QUIT.
    pub fn dele(&mut self, message: MessageNumber) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Dele(message), Expect::Dele(message))
    }

    /// Queues RSET: [`ClientEvent::Reset`].
    pub fn rset(&mut self) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Rset, Expect::Rset)
    }

    /// Queues NOOP: [`ClientEvent::Noop`].
    pub fn noop(&mut self) -> Result<(), ClientUsageError> {
        self.maildrop_command(&Command::Noop, Expect::Noop)
    }

    /// Queues QUIT, after whatever is queued. After login the server then
    /// deletes the marked messages; [`ClientEvent::Closed`] follows its
    /// response (after [`ClientEvent::Error`] if it could not).
    pub fn quit(&mut self) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        match self.phase {
            Phase::Transaction => {
                self.phase = Phase::Quitting;
                self.enqueue(&Command::Quit, Expect::Quit);
                Ok(())
            }
            Phase::Authorization => {
                self.phase = Phase::Quitting;
                self.send(&Command::Quit, Expect::Quit);
                Ok(())
            }
            Phase::Quitting => Err(ClientUsageError::Quitting),
            Phase::Starting | Phase::Exchange | Phase::Handshake | Phase::Closed => {
                Err(ClientUsageError::Busy)
            }
        }
    }

    // ----- internals -----

    /// Whether the session has ended (events may be left).
    fn ended(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn idle_authorization(&self) -> Result<(), ClientUsageError> {
        match self.phase {
            Phase::Authorization if !self.awaiting() => Ok(()),
            Phase::Transaction => Err(ClientUsageError::AlreadyLoggedIn),
            Phase::Quitting => Err(ClientUsageError::Quitting),
            _ => Err(ClientUsageError::Busy),
        }
    }

    fn maildrop_command(
        &mut self,
        command: &Command<'_>,
        expect: Expect,
    ) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        match self.phase {
            Phase::Transaction => {
                self.enqueue(command, expect);
                Ok(())
            }
            Phase::Quitting => Err(ClientUsageError::Quitting),
            Phase::Authorization | Phase::Exchange => Err(ClientUsageError::NotLoggedIn),
            Phase::Starting | Phase::Handshake | Phase::Closed => Err(ClientUsageError::Busy),
        }
    }

    fn pipelining(&self) -> bool {
        self.caps.as_ref().is_some_and(|c| c.pipelining)
    }

    fn enqueue(&mut self, command: &Command<'_>, expect: Expect) {
        let mut line = Vec::new();
        command.render(&mut line);
        self.queue.push_back((line, expect));
        self.flush_queue();
    }

    /// Sends queued commands: all of them with PIPELINING, else the next
    /// one when nothing is awaited.
    fn flush_queue(&mut self) {
        while !self.queue.is_empty() && (!self.awaiting() || self.pipelining()) {
            let (line, expect) = self.queue.pop_front().expect("queue checked above");
            if !self.awaiting() {
                self.arm();
            }
            self.out.extend_from_slice(&line);
            self.expect.push_back(expect);
        }
    }

    fn send(&mut self, command: &Command<'_>, expect: Expect) {
        command.render(&mut self.out);
        if !self.awaiting() {
            self.arm();
        }
        self.expect.push_back(expect);
    }

    fn arm(&mut self) {
        self.deadline = Some(self.now + self.config.timeouts.response);
    }

    fn close(&mut self, error: Option<ClientError>) {
        self.phase = Phase::Closed;
        // What was already said stays queued for the caller to write, so the
        // bytes sent never depend on how the server's input was split.
        self.expect.clear();
        self.queue.clear();
        self.body = None;
        self.deadline = None;
        self.input = Vec::new();
        self.events.push_back(ClientEvent::Closed(error));
    }

    /// Reads responses from `input`; returns how many bytes were used. What
    /// is left is the start of a line.
    fn process(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() && !self.ended() {
            if self.phase == Phase::Handshake {
                // Plaintext after the +OK to STLS is never obeyed.
                return input.len();
            }
            match self.body.take() {
                Some(Body::Message(mut decoder)) => {
                    let mut text = Vec::new();
                    let status = decoder.decode(&input[used..], &mut text);
                    if !text.is_empty() {
                        self.events
                            .push_back(ClientEvent::MessageData(Bytes::from(text)));
                    }
                    match status {
                        Decoded::Incomplete => {
                            self.body = Some(Body::Message(decoder));
                            return input.len();
                        }
                        Decoded::Complete { consumed } => {
                            used += consumed;
                            self.events.push_back(ClientEvent::MessageEnd);
                            self.response_done();
                        }
                    }
                }
                Some(Body::Listing {
                    command,
                    mut decoder,
                    mut text,
                }) => {
                    // Never more than the room left (and the end marker)
                    // at a time, so the listing stays within its bound.
                    let room = self.config.max_listing.saturating_sub(text.len());
                    let end = input.len().min(used.saturating_add(room).saturating_add(5));
                    match decoder.decode(&input[used..end], &mut text) {
                        Decoded::Complete { consumed } => {
                            used += consumed;
                            if text.len() > self.config.max_listing {
                                self.close(Some(ClientError::ListingTooLong));
                            } else {
                                self.listing(command, &text);
                            }
                        }
                        Decoded::Incomplete => {
                            used = end;
                            if text.len() > self.config.max_listing {
                                self.close(Some(ClientError::ListingTooLong));
                            } else {
                                self.body = Some(Body::Listing {
                                    command,
                                    decoder,
                                    text,
                                });
                            }
                        }
                    }
                }
                None => {
                    let rest = &input[used..];
                    let window = &rest[..rest.len().min(self.config.max_response_line)];
                    let Some(lf) = memchr(b'\n', window) else {
                        if rest.len() >= self.config.max_response_line {
                            self.close(Some(ClientError::LineTooLong));
                        }
                        return used;
                    };
                    used += lf + 1;
                    if lf == 0 || window[lf - 1] != b'\r' {
                        self.close(Some(ClientError::Malformed(ResponseError::BareLineEnding)));
                        return used;
                    }
                    match Response::parse_line(&window[..lf - 1]) {
                        Ok(response) => self.response(response),
                        Err(e) => self.close(Some(ClientError::Malformed(e))),
                    }
                }
            }
        }
        used
    }

    /// A command's response (with its body, if any) is complete.
    fn response_done(&mut self) {
        if !self.awaiting() {
            self.deadline = None;
        } else {
            self.arm();
        }
        self.flush_queue();
    }

    fn error(&mut self, command: Request, response: Response) {
        self.events
            .push_back(ClientEvent::Error { command, response });
    }

    fn ready(&mut self) {
        self.phase = Phase::Authorization;
        let caps = self.caps.clone().unwrap_or_default();
        self.events.push_back(ClientEvent::Ready(caps));
    }

    fn login_failed(&mut self, command: Request, response: Response) {
        self.phase = Phase::Authorization;
        self.error(command, response);
    }

    fn logged_in(&mut self) {
        self.phase = Phase::Transaction;
        self.events.push_back(ClientEvent::LoggedIn);
    }

    fn response(&mut self, response: Response) {
        let Some(expect) = self.expect.pop_front() else {
            self.close(Some(ClientError::Unsolicited(response)));
            return;
        };
        let command = expect.request();
        if response.status() == Status::Continuation && !matches!(expect, Expect::Auth(_)) {
            self.close(Some(ClientError::Unexpected(command)));
            return;
        }
        let ok = response.is_ok();
        match expect {
            Expect::Greeting => {
                if !ok {
                    self.close(Some(ClientError::Refused(response)));
                    return;
                }
                self.greeting = Some(response);
                self.send(&Command::Capa, Expect::Capa);
            }
            Expect::Capa => {
                if ok {
                    self.start_listing(Listing::Capa);
                    return;
                }
                // A server of RFC 1939 alone: nothing is known.
                self.caps = Some(Capabilities::default());
                self.ready();
            }
            Expect::Stls => {
                if ok {
                    self.phase = Phase::Handshake;
                    self.deadline = None;
                    self.events.push_back(ClientEvent::StartTls);
                } else {
                    self.phase = Phase::Authorization;
                    self.error(command, response);
                }
            }
            Expect::User(password) => {
                if ok {
                    self.send(&Command::Pass(Secret::new(password.expose())), Expect::Pass);
                } else {
                    self.login_failed(command, response);
                }
            }
            Expect::Pass | Expect::Apop => {
                if ok {
                    self.logged_in();
                } else {
                    self.login_failed(command, response);
                }
            }
            Expect::Auth(pending) => match response.status() {
                Status::Ok => self.logged_in(),
                Status::Err => self.login_failed(command, response),
                Status::Continuation => {
                    // The prompt for PLAIN's response; a second prompt (or
                    // one where none is due) cancels the exchange.
                    match pending {
                        Some(answer) => {
                            self.out.extend_from_slice(answer.expose().as_bytes());
                            self.out.extend_from_slice(b"\r\n");
                        }
                        None => self.out.extend_from_slice(b"*\r\n"),
                    }
                    self.expect.push_front(Expect::Auth(None));
                    self.arm();
                    return;
                }
            },
            Expect::Stat => {
                if ok {
                    match parse_stat(response.text()) {
                        Some((count, octets)) => {
                            self.events.push_back(ClientEvent::Stat { count, octets });
                        }
                        None => {
                            self.close(Some(ClientError::Unexpected(command)));
                            return;
                        }
                    }
                } else {
                    self.error(command, response);
                }
            }
            Expect::List(Some(n)) | Expect::Uidl(Some(n)) => {
                if ok {
                    let listing = if command == Request::List {
                        Listing::List
                    } else {
                        Listing::Uidl
                    };
                    match self.listing_line(listing, response.text().as_bytes()) {
                        Some(event) if entry_number(&event) == Some(n) => {
                            self.events.push_back(event);
                        }
                        _ => {
                            self.close(Some(ClientError::Unexpected(command)));
                            return;
                        }
                    }
                } else {
                    self.error(command, response);
                }
            }
            Expect::List(None) => {
                if ok {
                    self.start_listing(Listing::List);
                    return;
                }
                self.error(command, response);
            }
            Expect::Uidl(None) => {
                if ok {
                    self.start_listing(Listing::Uidl);
                    return;
                }
                self.error(command, response);
            }
            Expect::Retr(n) | Expect::Top(n) => {
                if ok {
                    self.events.push_back(ClientEvent::MessageStart(n));
                    self.body = Some(Body::Message(MultilineDecoder::new()));
                    return;
                }
                self.error(command, response);
            }
            Expect::Dele(n) => {
                if ok {
                    self.events.push_back(ClientEvent::Deleted(n));
                } else {
                    self.error(command, response);
                }
            }
            Expect::Rset => {
                if ok {
                    self.events.push_back(ClientEvent::Reset);
                } else {
                    self.error(command, response);
                }
            }
            Expect::Noop => {
                if ok {
                    self.events.push_back(ClientEvent::Noop);
                } else {
                    self.error(command, response);
                }
            }
            Expect::Quit => {
                if !ok {
                    self.error(command, response);
                }
                self.close(None);
                return;
            }
        }
        self.response_done();
    }

    fn start_listing(&mut self, command: Listing) {
        self.body = Some(Body::Listing {
            command,
            decoder: MultilineDecoder::new(),
            text: Vec::new(),
        });
    }

    /// One line of LIST or UIDL (or the `+OK` text of `LIST n`, `UIDL n`)
    /// as an event with one entry.
    fn listing_line(&self, listing: Listing, line: &[u8]) -> Option<ClientEvent> {
        let line = std::str::from_utf8(line).ok()?;
        let mut words = line.split_ascii_whitespace();
        let number: MessageNumber = words.next()?.parse().ok()?;
        let second = words.next()?;
        match listing {
            Listing::List => Some(ClientEvent::List(vec![(number, parse_decimal(second)?)])),
            Listing::Uidl => Some(ClientEvent::Uidl(vec![(number, second.to_string())])),
            Listing::Capa => None,
        }
    }

    fn listing(&mut self, command: Listing, text: &[u8]) {
        let lines = text
            .strip_suffix(b"\r\n")
            .map(|t| t.split(|&b| b == b'\n').collect::<Vec<_>>())
            .unwrap_or_default();
        let lines = lines
            .into_iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        match command {
            Listing::Capa => {
                self.caps = Some(Capabilities::from_lines(lines));
                self.ready();
            }
            Listing::List | Listing::Uidl => {
                let mut sizes = Vec::new();
                let mut uids = Vec::new();
                for line in lines {
                    match self.listing_line(command, line) {
                        Some(ClientEvent::List(mut entry)) => sizes.append(&mut entry),
                        Some(ClientEvent::Uidl(mut entry)) => uids.append(&mut entry),
                        _ => {
                            let request = if command == Listing::List {
                                Request::List
                            } else {
                                Request::Uidl
                            };
                            self.close(Some(ClientError::Unexpected(request)));
                            return;
                        }
                    }
                }
                self.events.push_back(if command == Listing::List {
                    ClientEvent::List(sizes)
                } else {
                    ClientEvent::Uidl(uids)
                });
            }
        }
        self.response_done();
    }
}

impl Session for ClientSession {
    type Event = ClientEvent;
    type UsageError = ClientUsageError;

    /// Closed and drained: the session ended and its last event (always
    /// [`ClientEvent::Closed`]) and output have been taken.
    fn is_closed(&self) -> bool {
        self.ended() && self.events.is_empty() && self.out.is_empty()
    }

    fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        buf.append(&mut self.out);
        n
    }

    /// When [`handle_timeout`](Session::handle_timeout) should be called; `None`
    /// while no response is awaited.
    fn poll_timeout(&self) -> Option<Instant> {
        if !self.awaiting() {
            None
        } else {
            self.deadline
        }
    }

    /// Tells the session the time; past a response deadline it closes with
    /// [`ClientError::Timeout`]. Safe to call early.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.awaiting() && self.deadline.is_some_and(|d| now >= d) {
            self.close(Some(ClientError::Timeout));
        }
    }

    /// Hands the session bytes from the server.
    fn receive(&mut self, now: Instant, data: &[u8]) {
        self.now = self.now.max(now);
        if self.ended() || data.is_empty() {
            return;
        }
        // Bytes are progress: the deadline runs from the last of them.
        self.deadline = Some(self.now + self.config.timeouts.response);
        if self.input.is_empty() {
            let used = self.process(data);
            if !self.ended() && self.phase != Phase::Handshake {
                self.input.extend_from_slice(&data[used..]);
            }
        } else {
            let mut input = mem::take(&mut self.input);
            input.extend_from_slice(data);
            let used = self.process(&input);
            if !self.ended() && self.phase != Phase::Handshake {
                input.drain(..used);
                self.input = input;
            }
        }
    }

    /// Tells the session the server closed the connection. Before QUIT's
    /// response that is [`ClientError::ConnectionClosed`]: nothing marked
    /// was deleted.
    fn receive_eof(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if !self.ended() {
            self.close(Some(ClientError::ConnectionClosed));
        }
    }

    /// The TLS handshake after STLS is done: the session forgets what it
    /// knew of the server and asks CAPA again (RFC 2595 §4).
    fn tls_established(&mut self) -> Result<(), ClientUsageError> {
        match self.phase {
            Phase::Handshake => {}
            // The server went away during the handshake: moot.
            Phase::Closed => return Ok(()),
            _ => return Err(ClientUsageError::NoHandshakeDue),
        }
        self.tls = true;
        self.caps = None;
        self.input.clear();
        self.phase = Phase::Starting;
        self.send(&Command::Capa, Expect::Capa);
        Ok(())
    }
}

fn entry_number(event: &ClientEvent) -> Option<MessageNumber> {
    match event {
        ClientEvent::List(entries) => entries.first().map(|e| e.0),
        ClientEvent::Uidl(entries) => entries.first().map(|e| e.0),
        _ => None,
    }
}

fn parse_decimal<T: std::str::FromStr>(word: &str) -> Option<T> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

/// `+OK count octets` (RFC 1939 §5: the drop listing, more text allowed after).
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let mut words = text.split_ascii_whitespace();
    let count = parse_decimal(words.next()?)?;
    let octets = parse_decimal(words.next()?)?;
    Some((count, octets))
}

/// A user name is one argument: printable, no space (RFC 1939 §3).
fn check_name(user: &str) -> Result<(), ClientUsageError> {
    if user.is_empty()
        || user.len() + 7 > MAX_COMMAND_LINE
        || user.chars().any(|c| c <= ' ' || c == '\x7f')
    {
        return Err(ClientUsageError::InvalidArgument);
    }
    Ok(())
}

/// A password is the rest of PASS's line: anything but CR, LF and NUL.
fn check_secret(secret: &str) -> Result<(), ClientUsageError> {
    if secret.is_empty() || secret.contains(['\r', '\n', '\0']) {
        return Err(ClientUsageError::InvalidArgument);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn n(v: u32) -> MessageNumber {
        MessageNumber::new(v).unwrap()
    }

    fn ready(caps: &[u8]) -> (ClientSession, Instant) {
        let now = Instant::now();
        let mut c = ClientSession::new(ClientConfig::default(), now);
        c.receive(now, b"+OK hello <1.2@host>\r\n");
        c.receive(now, caps);
        assert!(matches!(c.poll_event(), Some(ClientEvent::Ready(_))));
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"CAPA\r\n");
        (c, now)
    }

    #[test]
    fn capabilities_are_parsed() {
        let caps = Capabilities::from_lines([
            &b"TOP"[..],
            b"user",
            b"SASL PLAIN login",
            b"STLS",
            b"PIPELINING",
            b"UIDL",
            b"UTF8 USER",
            b"RESP-CODES",
            b"AUTH-RESP-CODE",
            b"IMPLEMENTATION Dovecot",
            b"EXPIRE NEVER",
            b"X-FOO bar",
        ]);
        assert!(caps.capa && caps.top && caps.user && caps.stls && caps.pipelining);
        assert!(caps.uidl && caps.utf8 && caps.resp_codes && caps.auth_resp_code);
        assert_eq!(caps.sasl, ["PLAIN", "LOGIN"]);
        assert!(caps.offers_sasl(Mechanism::Plain));
        assert_eq!(caps.implementation.as_deref(), Some("Dovecot"));
        assert_eq!(caps.expire.as_deref(), Some("NEVER"));
        assert_eq!(caps.other, ["X-FOO bar"]);
    }

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let (mut c, now) = ready(b"+OK\r\nUSER\r\n.\r\n");
        c.login_user("bob", "pw").unwrap();
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"USER bob\r\n");
        c.receive(now, b"+OK\r\n");
        out.clear();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"PASS pw\r\n");
        c.receive(now, b"+OK\r\n");
        assert_eq!(c.poll_event(), Some(ClientEvent::LoggedIn));
        c.stat().unwrap();
        c.dele(n(1)).unwrap();
        c.quit().unwrap();
        assert_eq!(c.outstanding(), 3);
        out.clear();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"STAT\r\n");
        c.receive(now, b"+OK 2 30\r\n");
        out.clear();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"DELE 1\r\n");
        c.receive(now, b"-ERR [SYS/TEMP] busy\r\n");
        out.clear();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"QUIT\r\n");
        c.receive(now, b"+OK bye\r\n");
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Stat {
                count: 2,
                octets: 30
            })
        );
        let Some(ClientEvent::Error { command, response }) = c.poll_event() else {
            panic!()
        };
        assert_eq!(command, Request::Dele);
        assert_eq!(response.code(), Some(&crate::ResponseCode::SysTemp));
        assert_eq!(c.poll_event(), Some(ClientEvent::Closed(None)));
        assert!(c.is_closed());
    }

    #[test]
    fn usage_errors() {
        let now = Instant::now();
        let mut c = ClientSession::new(ClientConfig::default(), now);
        assert_eq!(c.stat(), Err(ClientUsageError::Busy));
        assert_eq!(c.login_user("bob", "x"), Err(ClientUsageError::Busy));
        let (mut c, now) = ready(b"+OK\r\nUSER\r\n.\r\n");
        assert_eq!(c.stat(), Err(ClientUsageError::NotLoggedIn));
        assert_eq!(c.stls(), Err(ClientUsageError::NotOffered));
        assert_eq!(
            c.authenticate(Mechanism::Plain, "bob", "x"),
            Err(ClientUsageError::NotOffered)
        );
        assert_eq!(
            c.login_user("bob\r\nDELE 1", "x"),
            Err(ClientUsageError::InvalidArgument)
        );
        assert_eq!(
            c.login_user("bob", "x\r\nDELE 1"),
            Err(ClientUsageError::InvalidArgument)
        );
        assert_eq!(c.tls_established(), Err(ClientUsageError::NoHandshakeDue));
        c.login_apop("bob", "secret").unwrap();
        assert_eq!(c.login_user("bob", "x"), Err(ClientUsageError::Busy));
        c.receive(now, b"+OK\r\n");
        assert_eq!(c.poll_event(), Some(ClientEvent::LoggedIn));
        assert_eq!(
            c.login_user("bob", "x"),
            Err(ClientUsageError::AlreadyLoggedIn)
        );
        let mut sent = Vec::new();
        c.poll_transmit(&mut sent);
        assert!(sent.starts_with(b"APOP bob "));
        c.receive_eof(now);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Closed(Some(ClientError::ConnectionClosed)))
        );
        // After the end, requests are moot, not mistakes: nothing is sent.
        assert_eq!(c.stat(), Ok(()));
        assert_eq!(c.quit(), Ok(()));
        let mut out = Vec::new();
        assert_eq!(c.poll_transmit(&mut out), 0);
        assert_eq!(c.poll_event(), None);
        assert!(c.is_closed());
    }

    #[test]
    fn limits_and_timeouts() {
        let (mut c, now) = ready(b"+OK\r\nUSER\r\n.\r\n");
        assert_eq!(c.poll_timeout(), None);
        c.login_user("bob", "pw").unwrap();
        let deadline = c.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(600));
        c.handle_timeout(deadline - Duration::from_secs(1));
        assert!(!c.is_closed());
        c.receive(now, &[b'+'; 1023]);
        assert!(!c.is_closed());
        c.receive(now, b"+");
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Closed(Some(ClientError::LineTooLong)))
        );

        let (mut c, now) = ready(b"+OK\r\nUSER\r\n.\r\n");
        c.login_user("bob", "pw").unwrap();
        c.handle_timeout(now + Duration::from_secs(600));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Closed(Some(ClientError::Timeout)))
        );

        let now = Instant::now();
        let config = ClientConfig {
            max_listing: 100,
            ..ClientConfig::default()
        };
        let mut c = ClientSession::new(config, now);
        c.receive(now, b"+OK\r\n+OK\r\n");
        for _ in 0..20 {
            c.receive(now, b"X-CAPABILITY\r\n");
        }
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Closed(Some(ClientError::ListingTooLong)))
        );
    }

    #[test]
    fn a_stalled_message_times_out_and_waits_for_its_end() {
        let (mut c, now) = ready(b"+OK\r\nUSER\r\n.\r\n");
        c.login_apop("bob", "pw").unwrap();
        c.receive(now, b"+OK\r\n");
        assert_eq!(c.poll_event(), Some(ClientEvent::LoggedIn));
        c.retr(n(1)).unwrap();
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        let later = now + Duration::from_secs(60);
        c.receive(later, b"+OK\r\nSubject: x\r\n");
        // Without PIPELINING, DELE waits for the end of the message.
        c.dele(n(1)).unwrap();
        out.clear();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"");
        assert_eq!(c.outstanding(), 2);
        assert_eq!(c.poll_timeout(), Some(later + Duration::from_secs(600)));
        c.handle_timeout(later + Duration::from_secs(600));
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(
            events.last(),
            Some(&ClientEvent::Closed(Some(ClientError::Timeout)))
        );
        assert!(!events.contains(&ClientEvent::MessageEnd));
    }

    #[test]
    fn auth_plain_prompt_and_malformed_stat() {
        let (mut c, now) = ready(b"+OK\r\nSASL PLAIN\r\n.\r\n");
        let long = "p".repeat(300);
        c.authenticate(Mechanism::Plain, "bob", &long).unwrap();
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        assert_eq!(out, b"AUTH PLAIN\r\n");
        c.receive(now, b"+ \r\n");
        out.clear();
        c.poll_transmit(&mut out);
        assert_eq!(
            out,
            format!("{}\r\n", sasl::encode_plain(None, "bob", &long)).as_bytes()
        );
        c.receive(now, b"+OK\r\n");
        assert_eq!(c.poll_event(), Some(ClientEvent::LoggedIn));
        c.stat().unwrap();
        c.receive(now, b"+OK many\r\n");
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Closed(Some(ClientError::Unexpected(
                Request::Stat
            ))))
        );
    }
}
