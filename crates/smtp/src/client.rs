//! The client side of an SMTP session, as a state machine without I/O.

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postamt_wire::sasl::{self, Mechanism};
use postamt_wire::{CrlfNormalizer, DotEncoder, Secret, Session};

use crate::address::{Domain, ForwardPath};
use crate::command::Command;
use crate::reply::{Reply, push_decimal};

mod capabilities;
mod config;
mod events;

pub use capabilities::Capabilities;
pub use config::{ClientConfig, ClientTimeouts};
pub use events::{ClientError, ClientEvent, ClientUsageError, Envelope, Failure, Report};

/// A reply the client waits for, in the order the commands went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    Bdat { last: bool },
    Rset,
    Quit,
}

#[derive(Debug)]
enum Phase {
    /// Before the first Ready, or during EHLO again.
    Starting,
    Ready,
    /// Waiting for STARTTLS's reply or the handshake.
    Tls {
        handshake: bool,
    },
    Auth(AuthStep),
    Transaction,
    Quitting,
    Closed,
}

/// Where an AUTH exchange stands; what is still to send is base64 of
/// credentials, so it stays in [`Secret`].
#[derive(Debug)]
enum AuthStep {
    /// PLAIN sent without initial response, waiting for 334.
    PlainPrompt(Secret<String>),
    /// LOGIN: waiting for the user prompt, then the password prompt.
    LoginUser(Secret<String>, Secret<String>),
    LoginPassword(Secret<String>),
    /// Waiting for 235.
    Final,
}

enum Body {
    /// Given whole; sent when the server is ready for it.
    Whole(Bytes),
    /// Given in pieces by the caller.
    Streamed,
}

/// The length, not the text: a message is the sender's business, and may
/// be megabytes long.
impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Whole(b) => write!(f, "Whole({} octets)", b.len()),
            Self::Streamed => f.write_str("Streamed"),
        }
    }
}

#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    body: Body,
    chunking: bool,
    pipelining: bool,
    /// Commands not sent yet (without PIPELINING, one per reply).
    queue: VecDeque<(Vec<u8>, Expect)>,
    mail_ok: bool,
    sender_failure: Option<Reply>,
    accepted: Vec<(ForwardPath<'static>, Reply)>,
    refused: Vec<(ForwardPath<'static>, Reply)>,
    /// The server takes message bytes now.
    sending: bool,
    /// The caller has ended the message.
    ended: bool,
    encoder: DotEncoder,
    /// `BODY=BINARYMIME`: the bytes go by BDAT as given.
    binary: bool,
    /// Line-end repair for BDAT, the rule DATA's encoder applies.
    crlf: CrlfNormalizer,
    /// One BDAT chunk after repair, so its size is known before it goes.
    scratch: Vec<u8>,
    failure: Option<Failure>,
}

/// One client-side SMTP session, driven by the caller through
/// [`postamt_wire::Session`], the contract all four postamt sessions keep:
/// hand it received bytes with [`receive`](Session::receive), drain
/// [`poll_event`](Session::poll_event), write what
/// [`poll_transmit`](Session::poll_transmit) gives, and keep time with
/// [`poll_timeout`](Session::poll_timeout) and
/// [`handle_timeout`](Session::handle_timeout). Replies may arrive split
/// anywhere. [`is_closed`](Session::is_closed) turns true once the session
/// ended and its last event ([`ClientEvent::Closed`], always) and output
/// were taken.
///
/// After [`ClientEvent::Ready`], run transactions with
/// [`send_message`](Self::send_message) (the whole message at once) or
/// [`start_message`](Self::start_message) and the streaming calls. With
/// PIPELINING the client sends MAIL, every RCPT and DATA in one write; it goes
/// on with the accepted recipients and reports the refused ones.
///
/// A session carries any number of transactions, one after another: the
/// next may start as soon as [`ClientEvent::Done`] reported the last one.
/// After a failed transaction the session says RSET by itself (the next
/// MAIL waits for its reply, or follows it unanswered with PIPELINING).
/// Between transactions, [`poll_timeout`](Session::poll_timeout) is `None`
/// once no reply is awaited: the session may then wait idle, e.g. in a
/// connection cache, for its next message.
///
/// Once the session has ended (the server closed, a timeout, a fatal reply:
/// [`ClientEvent::Closed`] is queued) every method that asks for something
/// returns `Ok(())` and sends nothing: the caller may not have seen the
/// `Closed` yet, so it is no mistake, and the answer is moot. Usage errors
/// are only the caller's own mistakes.
///
/// After [`ClientEvent::StartTls`] no command goes out and what the server
/// sends is discarded until the caller has run the handshake and called
/// [`tls_established`](Session::tls_established); then the client says EHLO
/// again.
///
/// ```
/// use std::time::Instant;
/// use postamt_smtp::{ClientConfig, ClientEvent, ClientSession, Envelope, ForwardPath, ReversePath};
/// use postamt_smtp::Session;
///
/// let now = Instant::now();
/// let mut client = ClientSession::new(ClientConfig::new("client.example"), now);
/// let mut out = Vec::new();
/// client.receive(now, b"220 mx.example ESMTP\r\n");
/// client.poll_transmit(&mut out);
/// assert_eq!(out, b"EHLO client.example\r\n");
/// client.receive(now, b"250-mx.example Hello\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n");
/// let Some(ClientEvent::Ready(caps)) = client.poll_event() else { panic!() };
/// assert!(caps.pipelining && caps.domain == "mx.example");
///
/// let envelope = Envelope::new(ReversePath::Mailbox("anna@example.org".parse().unwrap()))
///     .to(ForwardPath::Mailbox("bob@example.com".parse().unwrap()));
/// // Bare LFs, a line opening with a dot, no final line end: all repaired.
/// client.send_message(envelope, "Subject: hi\n\n.dot\nbye").unwrap();
/// out.clear();
/// client.poll_transmit(&mut out);
/// // PIPELINING: the envelope and DATA in one write.
/// assert_eq!(
///     out,
///     b"MAIL FROM:<anna@example.org> SIZE=26\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
/// );
/// client.receive(now, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n");
/// out.clear();
/// client.poll_transmit(&mut out);
/// assert_eq!(out, b"Subject: hi\r\n\r\n..dot\r\nbye\r\n.\r\n");
/// client.receive(now, b"250 2.0.0 queued as 42\r\n");
/// let Some(ClientEvent::Done(report)) = client.poll_event() else { panic!() };
/// assert_eq!(report.accepted.len(), 1);
/// assert_eq!(report.outcome.unwrap().code(), 250);
///
/// client.quit().unwrap();
/// out.clear();
/// client.poll_transmit(&mut out);
/// assert_eq!(out, b"QUIT\r\n");
/// client.receive(now, b"221 2.0.0 bye\r\n");
/// // Closed, but not drained: the last event is still to be taken.
/// assert!(!client.is_closed());
/// assert_eq!(client.poll_event(), Some(ClientEvent::Closed(None)));
/// assert!(client.is_closed());
/// ```
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    input: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    expect: VecDeque<Expect>,
    caps: Option<Capabilities>,
    tls: bool,
    tx: Option<Transaction>,
    now: Instant,
    deadline: Option<Instant>,
}

/// By hand: the input and output buffers are shown by length only, as
/// output waiting to be sent holds AUTH's credentials and the message.
impl fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSession")
            .field("config", &self.config)
            .field("phase", &self.phase)
            .field("input_len", &self.input.len())
            .field("output_len", &self.out.len())
            .field("events", &self.events)
            .field("expect", &self.expect)
            .field("caps", &self.caps)
            .field("tls", &self.tls)
            .field("tx", &self.tx)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// A session on a fresh connection, waiting for the server's greeting.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let deadline = Some(now + config.timeouts.greeting);
        Self {
            tls: config.implicit_tls,
            config,
            phase: Phase::Starting,
            input: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            caps: None,
            tx: None,
            now,
            deadline,
        }
    }

    /// Whether TLS is active: after
    /// [`tls_established`](Session::tls_established), or from the start with
    /// [`ClientConfig::implicit_tls`].
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// What the server offered, once it answered EHLO.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// Asks for STARTTLS; [`ClientEvent::StartTls`] says when to handshake.
    pub fn starttls(&mut self) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.ready()?;
        if self.tls || !self.caps.as_ref().is_some_and(|c| c.starttls) {
            return Err(ClientUsageError::NotOffered);
        }
        self.phase = Phase::Tls { handshake: false };
        self.send(Command::StartTls, Expect::StartTls);
        Ok(())
    }

    /// Authenticates with PLAIN or LOGIN (RFC 4954).
    pub fn authenticate(
        &mut self,
        mechanism: Mechanism,
        username: &str,
        password: &str,
    ) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.ready()?;
        if !self.caps.as_ref().is_some_and(|c| c.offers_auth(mechanism)) {
            return Err(ClientUsageError::NotOffered);
        }
        match mechanism {
            Mechanism::Plain => {
                let response = Secret::new(sasl::encode_plain(None, username, password));
                // RFC 4954 §4: no initial response if the line would be too long.
                if response.expose().len() + 13 <= 512 {
                    self.send_line(&["AUTH PLAIN ", response.expose()], Expect::Auth);
                    self.phase = Phase::Auth(AuthStep::Final);
                } else {
                    self.send_line(&["AUTH PLAIN"], Expect::Auth);
                    self.phase = Phase::Auth(AuthStep::PlainPrompt(response));
                }
            }
            _ => {
                self.send_line(&["AUTH LOGIN"], Expect::Auth);
                let user = Secret::new(sasl::encode_base64(username.as_bytes()));
                let pass = Secret::new(sasl::encode_base64(password.as_bytes()));
                self.phase = Phase::Auth(AuthStep::LoginUser(user, pass));
            }
        }
        Ok(())
    }

    /// Sends a whole message. Line ends are made CRLF (a bare CR or LF
    /// becomes CRLF, a last line without one gets one), over DATA (dots then
    /// stuffed) and BDAT alike, so the server gets the same text either way;
    /// only a `BODY=BINARYMIME` message goes as given (by BDAT: the server
    /// must offer CHUNKING and BINARYMIME). SIZE, when the server offers it,
    /// declares the octets after that repair.
    pub fn send_message(
        &mut self,
        envelope: Envelope,
        message: impl Into<Bytes>,
    ) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.ready()?;
        let message = message.into();
        let message = if is_binary(&envelope) || CrlfNormalizer::is_normalized(&message) {
            message
        } else {
            Bytes::from(CrlfNormalizer::normalize(&message))
        };
        let size = message.len() as u64;
        self.begin(envelope, Body::Whole(message), Some(size))
    }

    /// Starts a transaction whose message the caller streams after
    /// [`ClientEvent::SendMessage`]. `size`, when known, is declared with
    /// SIZE and checked against the server's limit first.
    pub fn start_message(
        &mut self,
        envelope: Envelope,
        size: Option<u64>,
    ) -> Result<(), ClientUsageError> {
        self.begin(envelope, Body::Streamed, size)
    }

    /// Whether the session takes message bytes now (the server is ready and
    /// the output is below the high-water mark).
    pub fn wants_message_bytes(&self) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|t| t.sending && !t.ended && matches!(t.body, Body::Streamed))
            && self.out.len() < self.config.output_high_water
    }

    /// The next piece of the message, split anywhere.
    pub fn message_chunk(&mut self, chunk: &[u8]) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        let tx = self.tx.as_mut().ok_or(ClientUsageError::NoMessage)?;
        if !tx.sending || tx.ended || !matches!(tx.body, Body::Streamed) {
            return Err(ClientUsageError::NoMessage);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if !tx.chunking {
            tx.encoder.encode(chunk, &mut self.out);
            return Ok(());
        }
        let text: &[u8] = if tx.binary {
            chunk
        } else {
            tx.scratch.clear();
            tx.crlf.push(chunk, &mut tx.scratch);
            &tx.scratch
        };
        // The size counts the octets that go, after the line-end repair.
        write_bdat(&mut self.out, text.len() as u64, false);
        self.out.extend_from_slice(text);
        self.expect.push_back(Expect::Bdat { last: false });
        Ok(())
    }

    /// The message is complete.
    pub fn end_message(&mut self) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        let tx = self.tx.as_mut().ok_or(ClientUsageError::NoMessage)?;
        if !tx.sending || tx.ended || !matches!(tx.body, Body::Streamed) {
            return Err(ClientUsageError::NoMessage);
        }
        self.finish_body();
        Ok(())
    }

    /// Says QUIT; [`ClientEvent::Closed`] follows the server's 221.
    pub fn quit(&mut self) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        match self.phase {
            // Also while a RSET is in flight: QUIT follows it.
            Phase::Ready if self.tx.is_none() => {}
            Phase::Quitting => return Err(ClientUsageError::Quitting),
            // Between the 220 to STARTTLS and the handshake nothing goes out.
            _ => return Err(ClientUsageError::Busy),
        }
        self.phase = Phase::Quitting;
        self.send(Command::Quit, Expect::Quit);
        Ok(())
    }

    /// Whether the session has ended (events or output may be left).
    fn ended(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    fn ready(&self) -> Result<(), ClientUsageError> {
        match self.phase {
            Phase::Ready if self.tx.is_none() => Ok(()),
            Phase::Quitting => Err(ClientUsageError::Quitting),
            _ => Err(ClientUsageError::Busy),
        }
    }

    fn begin(
        &mut self,
        mut envelope: Envelope,
        body: Body,
        size: Option<u64>,
    ) -> Result<(), ClientUsageError> {
        if self.ended() {
            // The session is over (the Closed event says why): moot.
            return Ok(());
        }
        self.ready()?;
        if envelope.recipients.is_empty() {
            return Err(ClientUsageError::NoRecipients);
        }
        let caps = self.caps.clone().unwrap_or_default();
        if let (Some(size), Some(limit)) = (size, caps.size.filter(|&l| l > 0))
            && size > limit
        {
            self.events.push_back(ClientEvent::Done(Report {
                accepted: Vec::new(),
                refused: Vec::new(),
                outcome: Err(Failure::TooBig { size, limit }),
            }));
            return Ok(());
        }
        if caps.size.is_some() && envelope.params.size.is_none() {
            envelope.params.size = size;
        }
        let binary = is_binary(&envelope);
        if binary && !(caps.chunking && caps.binary_mime) {
            // RFC 3030 §3: BINARYMIME only by BDAT, and only when offered.
            return Err(ClientUsageError::NotOffered);
        }
        let chunking = (self.config.prefer_chunking || binary) && caps.chunking;
        let mut queue = VecDeque::new();
        let mut line = Vec::new();
        Command::Mail {
            from: envelope.from.clone(),
            params: envelope.params.clone(),
        }
        .render(&mut line);
        queue.push_back((mem::take(&mut line), Expect::Mail));
        for (i, (to, params)) in envelope.recipients.iter().enumerate() {
            Command::Rcpt {
                to: to.clone(),
                params: params.clone(),
            }
            .render(&mut line);
            queue.push_back((mem::take(&mut line), Expect::Rcpt(i)));
        }
        if !chunking {
            queue.push_back((b"DATA\r\n".to_vec(), Expect::Data));
        }
        self.tx = Some(Transaction {
            envelope,
            body,
            chunking,
            pipelining: caps.pipelining,
            queue,
            mail_ok: false,
            sender_failure: None,
            accepted: Vec::new(),
            refused: Vec::new(),
            sending: false,
            ended: false,
            encoder: DotEncoder::new(),
            binary,
            crlf: CrlfNormalizer::new(),
            scratch: Vec::new(),
            failure: None,
        });
        self.phase = Phase::Transaction;
        self.flush_queue();
        Ok(())
    }

    /// Sends queued transaction commands: all of them with PIPELINING, else
    /// the next one when nothing is awaited.
    fn flush_queue(&mut self) {
        let Some(tx) = self.tx.as_mut() else { return };
        while let Some((line, expect)) = tx.queue.front() {
            if !tx.pipelining && !self.expect.is_empty() {
                break;
            }
            self.out.extend_from_slice(line);
            self.expect.push_back(*expect);
            tx.queue.pop_front();
        }
        self.arm(self.config.timeouts.command);
        // With CHUNKING, the message starts once the envelope is through (or
        // at once with PIPELINING: RFC 3030 lets BDAT follow RCPT unanswered).
        let tx = self.tx.as_mut().expect("transaction checked above");
        if tx.chunking
            && tx.queue.is_empty()
            && !tx.sending
            && (tx.pipelining || self.expect.is_empty())
        {
            self.start_sending();
        }
    }

    fn start_sending(&mut self) {
        let Some(tx) = self.tx.as_mut() else { return };
        if tx.sending {
            return;
        }
        tx.sending = true;
        match &tx.body {
            Body::Whole(_) => self.finish_body(),
            Body::Streamed => self.events.push_back(ClientEvent::SendMessage),
        }
    }

    /// Writes the rest of the message and its end (final dot or BDAT LAST).
    fn finish_body(&mut self) {
        let Some(tx) = self.tx.as_mut() else { return };
        tx.ended = true;
        let whole = match mem::replace(&mut tx.body, Body::Streamed) {
            Body::Whole(b) => Some(b),
            Body::Streamed => None,
        };
        if tx.chunking {
            // A whole message was repaired in send_message; a streamed one
            // may still lack the end of its last line.
            tx.scratch.clear();
            if !tx.binary {
                tx.crlf.finish(&mut tx.scratch);
            }
            let bytes: &[u8] = match &whole {
                Some(b) => b,
                None => &tx.scratch,
            };
            write_bdat(&mut self.out, bytes.len() as u64, true);
            self.out.extend_from_slice(bytes);
            self.expect.push_back(Expect::Bdat { last: true });
        } else {
            if let Some(bytes) = whole {
                tx.encoder.encode(&bytes, &mut self.out);
            }
            tx.encoder.finish(&mut self.out);
            self.expect.push_back(Expect::DataEnd);
        }
        self.arm(self.config.timeouts.data_end);
    }

    fn arm(&mut self, timeout: Duration) {
        self.deadline = Some(self.now + timeout);
    }

    fn send(&mut self, command: Command<'_>, expect: Expect) {
        command.render(&mut self.out);
        self.expect.push_back(expect);
        self.arm(self.config.timeouts.command);
    }

    fn send_line(&mut self, parts: &[&str], expect: Expect) {
        for p in parts {
            self.out.extend_from_slice(p.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
        self.expect.push_back(expect);
        self.arm(self.config.timeouts.command);
    }

    fn ehlo(&mut self) {
        let name = self.config.hostname.clone();
        match Domain::parse_str(&name) {
            Ok(d) => self.send(Command::Ehlo(d), Expect::Ehlo),
            Err(_) => self.send_line(&["EHLO ", &name], Expect::Ehlo),
        }
    }

    fn fail(&mut self, error: ClientError) {
        if let Some(tx) = self.tx.take() {
            let failure = tx.failure.unwrap_or(Failure::ConnectionLost);
            self.events.push_back(ClientEvent::Done(Report {
                accepted: tx.accepted,
                refused: tx.refused,
                outcome: Err(failure),
            }));
        }
        self.close(Some(error));
    }

    fn close(&mut self, error: Option<ClientError>) {
        self.phase = Phase::Closed;
        self.expect.clear();
        self.deadline = None;
        self.input.clear();
        // What was already said stays queued for the caller to write, so the
        // bytes sent never depend on how the server's input was split.
        self.events.push_back(ClientEvent::Closed(error));
    }

    fn ready_again(&mut self) {
        self.phase = Phase::Ready;
        self.deadline = None;
    }

    fn reply(&mut self, reply: Reply) {
        let Some(expect) = self.expect.pop_front() else {
            // A reply nobody asked for: a 421 announcing shutdown, or noise.
            if reply.code() == 421 {
                self.fail(ClientError::Refused(reply));
            } else {
                self.fail(ClientError::Unsolicited(reply));
            }
            return;
        };
        if reply.code() == 421 && expect != Expect::Quit {
            // RFC 5321 §3.8: the server is closing, whatever was asked.
            if let Some(tx) = self.tx.as_mut() {
                tx.failure.get_or_insert(Failure::Message(reply.clone()));
            }
            self.fail(ClientError::Refused(reply));
            return;
        }
        match expect {
            Expect::Greeting => {
                if reply.code() == 220 {
                    self.ehlo();
                } else {
                    self.fail(ClientError::Refused(reply));
                }
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.caps = Some(Capabilities::from_ehlo(&reply));
                    self.ready_again();
                    let caps = self.caps.clone().unwrap_or_default();
                    self.events.push_back(ClientEvent::Ready(caps));
                } else if matches!(reply.code(), 500 | 502) {
                    let name = self.config.hostname.clone();
                    self.send_line(&["HELO ", &name], Expect::Helo);
                } else {
                    self.fail(ClientError::Refused(reply));
                }
            }
            Expect::Helo => {
                if reply.is_positive() {
                    let caps = Capabilities::from_helo(&reply);
                    self.caps = Some(caps.clone());
                    self.ready_again();
                    self.events.push_back(ClientEvent::Ready(caps));
                } else {
                    self.fail(ClientError::Refused(reply));
                }
            }
            Expect::StartTls => {
                if reply.code() == 220 {
                    self.phase = Phase::Tls { handshake: true };
                    self.deadline = None;
                    self.events.push_back(ClientEvent::StartTls);
                } else {
                    // The caller asked for TLS; going on in plaintext is not
                    // the session's choice to make.
                    self.fail(ClientError::Refused(reply));
                }
            }
            Expect::Auth => self.auth_reply(reply),
            Expect::Quit => self.close(None),
            Expect::Rset => {
                if self.tx.is_some() {
                    // A transaction started while RSET was in flight: without
                    // PIPELINING its MAIL waited for this reply.
                    self.flush_queue();
                } else if self.expect.is_empty() {
                    self.ready_again();
                }
            }
            Expect::Mail
            | Expect::Rcpt(_)
            | Expect::Data
            | Expect::DataEnd
            | Expect::Bdat { .. } => {
                self.transaction_reply(expect, reply);
            }
        }
    }

    fn auth_reply(&mut self, reply: Reply) {
        let Phase::Auth(step) = mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        if reply.code() == 235 {
            self.ready_again();
            self.events.push_back(ClientEvent::Authenticated);
            return;
        }
        if reply.code() != 334 {
            self.ready_again();
            self.events.push_back(ClientEvent::AuthFailed(reply));
            return;
        }
        let next = match step {
            AuthStep::PlainPrompt(response) => {
                self.send_line(&[response.expose()], Expect::Auth);
                AuthStep::Final
            }
            AuthStep::LoginUser(user, pass) => {
                self.send_line(&[user.expose()], Expect::Auth);
                AuthStep::LoginPassword(pass)
            }
            AuthStep::LoginPassword(pass) => {
                self.send_line(&[pass.expose()], Expect::Auth);
                AuthStep::Final
            }
            AuthStep::Final => {
                // A challenge where none is due: cancel the exchange.
                self.send_line(&["*"], Expect::Auth);
                AuthStep::Final
            }
        };
        self.phase = Phase::Auth(next);
    }

    fn transaction_reply(&mut self, expect: Expect, reply: Reply) {
        let Some(tx) = self.tx.as_mut() else { return };
        match expect {
            Expect::Mail => {
                if reply.is_positive() {
                    tx.mail_ok = true;
                } else {
                    tx.failure.get_or_insert(Failure::Sender(reply.clone()));
                    tx.sender_failure = Some(reply);
                    // Without PIPELINING nothing else was sent: give up now.
                    tx.queue.clear();
                }
            }
            Expect::Rcpt(i) => {
                let to = tx.envelope.recipients[i].0.clone();
                if reply.is_positive() {
                    tx.accepted.push((to, reply));
                } else {
                    tx.refused.push((to, reply));
                }
                let last = i + 1 == tx.envelope.recipients.len();
                if last && tx.accepted.is_empty() {
                    tx.failure.get_or_insert(Failure::NoRecipients);
                    // DATA is pointless; unsent, it is dropped.
                    tx.queue.clear();
                }
            }
            Expect::Data => {
                if reply.code() == 354 {
                    if tx.failure.is_some() {
                        // Pipelined DATA was accepted although nothing can be
                        // delivered (RFC 2920 §3.1): end it with a lone dot.
                        tx.ended = true;
                        self.out.extend_from_slice(b".\r\n");
                        self.expect.push_back(Expect::DataEnd);
                    } else {
                        self.start_sending();
                        self.arm(self.config.timeouts.data_end);
                    }
                } else {
                    tx.failure.get_or_insert(Failure::Data(reply));
                }
            }
            Expect::Bdat { last } => {
                if !reply.is_positive() {
                    tx.failure.get_or_insert(Failure::Data(reply.clone()));
                }
                if last {
                    tx.failure.get_or_insert(Failure::Message(reply.clone()));
                    self.finish_transaction(Some(reply));
                    return;
                }
            }
            Expect::DataEnd => {
                self.finish_transaction(Some(reply));
                return;
            }
            _ => {}
        }
        // Nothing more will be asked: a failed transaction ends here.
        let tx = self.tx.as_ref().expect("transaction checked above");
        if tx.failure.is_some() && tx.queue.is_empty() && self.expect.is_empty() && !tx.sending {
            self.finish_transaction(None);
            return;
        }
        if tx.chunking && tx.failure.is_none() && self.expect.is_empty() && tx.queue.is_empty() {
            self.start_sending();
            return;
        }
        self.flush_queue();
    }

    /// Reports the transaction; RSET after a failure so the next one starts clean.
    fn finish_transaction(&mut self, final_reply: Option<Reply>) {
        let Some(tx) = self.tx.take() else { return };
        let outcome = match (tx.failure, final_reply) {
            (Some(Failure::Message(_)), Some(r)) if r.is_positive() => Ok(r),
            (None, Some(r)) if r.is_positive() => Ok(r),
            (None, Some(r)) => Err(Failure::Message(r)),
            (Some(f), _) => Err(f),
            (None, None) => Err(Failure::NoRecipients),
        };
        let failed = outcome.is_err();
        self.events.push_back(ClientEvent::Done(Report {
            accepted: tx.accepted,
            refused: tx.refused,
            outcome,
        }));
        if failed && tx.mail_ok {
            self.send(Command::Rset, Expect::Rset);
            self.phase = Phase::Ready;
        } else if self.expect.is_empty() {
            self.ready_again();
        } else {
            self.phase = Phase::Ready;
        }
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
    /// while no reply is awaited.
    fn poll_timeout(&self) -> Option<Instant> {
        if self.expect.is_empty() {
            None
        } else {
            self.deadline
        }
    }

    /// Tells the session the time; past a reply deadline it closes.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if !self.expect.is_empty() && self.deadline.is_some_and(|d| now >= d) {
            self.fail(ClientError::Timeout);
        }
    }

    /// Hands the session bytes from the server.
    fn receive(&mut self, now: Instant, data: &[u8]) {
        self.now = self.now.max(now);
        if self.ended() {
            return;
        }
        self.input.extend_from_slice(data);
        let mut used = 0;
        while !self.ended() {
            if matches!(self.phase, Phase::Tls { handshake: true }) {
                // Plaintext after the 220 to STARTTLS is never obeyed.
                used = self.input.len();
                break;
            }
            match Reply::parse(&self.input[used..]) {
                Ok(Some((reply, n))) => {
                    used += n;
                    self.reply(reply);
                }
                Ok(None) => {
                    if self.input.len() - used > self.config.max_reply {
                        self.fail(ClientError::ReplyTooLong);
                    }
                    break;
                }
                Err(e) => {
                    self.fail(ClientError::Malformed(e));
                    break;
                }
            }
        }
        self.input.drain(..used.min(self.input.len()));
    }

    /// Tells the session the server closed the connection.
    fn receive_eof(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if !self.ended() {
            if matches!(self.phase, Phase::Quitting) {
                self.close(None);
            } else {
                self.fail(ClientError::ConnectionClosed);
            }
        }
    }

    /// The TLS handshake is done: the client says EHLO again (RFC 3207 §4.2).
    fn tls_established(&mut self) -> Result<(), ClientUsageError> {
        match self.phase {
            Phase::Tls { handshake: true } => {}
            // The server went away during the handshake: moot.
            Phase::Closed => return Ok(()),
            _ => return Err(ClientUsageError::NoHandshakeDue),
        }
        self.tls = true;
        self.caps = None;
        self.input.clear();
        self.phase = Phase::Starting;
        self.ehlo();
        Ok(())
    }
}

fn is_binary(envelope: &Envelope) -> bool {
    envelope.params.body == Some(crate::command::Body::BinaryMime)
}

fn write_bdat(out: &mut Vec<u8>, size: u64, last: bool) {
    out.extend_from_slice(b"BDAT ");
    push_decimal(out, size);
    if last {
        out.extend_from_slice(b" LAST");
    }
    out.extend_from_slice(b"\r\n");
}
