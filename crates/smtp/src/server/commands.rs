//! What each command does: checks against the state and the configuration,
//! the replies the protocol fixes, and the events that ask for a decision.

use std::sync::Arc;

use postamt_wire::sasl::{Exchange, Mechanism, Step};
use postamt_wire::{DotDecoder, LineChecker, SaslError};

use super::{
    AbortReason, Event, Hello, Input, Pending, Phase, ServerSession, Transaction, decimal, say,
};
use crate::address::{Domain, ForwardPath, ReversePath};
use crate::command::{Body, Command, MailParameters, RcptParameters};
use crate::config::Protocol;
use crate::reply::EnhancedCode;
use crate::xclient::{XCLIENT_ATTRIBUTES, Xclient};

/// Sequence errors (RFC 5321 §4.1.4, 503 5.5.1).
const NEED_HELLO: &str = "Send HELO or EHLO first";
const NEED_MAIL: &str = "Need MAIL command first";
const NEED_RCPT: &str = "Need RCPT command first";

impl ServerSession {
    pub(super) fn sequence_error(&mut self, text: &str) {
        self.error(503, EnhancedCode::INVALID_COMMAND, text);
    }

    /// 555 5.5.4 (RFC 5321 §4.1.1.11): a MAIL or RCPT parameter that was not
    /// offered or is not known.
    pub(super) fn parameter_not_recognized(&mut self) {
        self.error(
            555,
            EnhancedCode::INVALID_ARGUMENTS,
            "Parameter not recognized or not implemented",
        );
    }

    pub(super) fn command(&mut self, command: Command<'_>) -> bool {
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
            Command::Xclient(attributes) => self.xclient(Some(attributes)),
        }
        false
    }

    /// Drops the transaction at the client's request (RSET, HELO, EHLO, STARTTLS).
    pub(super) fn reset_transaction(&mut self) {
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

    pub(super) fn hello_command(&mut self, kind: Hello, domain: Domain<'_>) {
        // The name lands in Received: headers and logs: ASCII unless
        // SMTPUTF8 is offered (RFC 5321 §4.1.2), and never characters that
        // steer a terminal (controls, bidi formatting, line separators).
        if !domain.as_str().is_ascii() {
            if !self.config.extensions.smtputf8 {
                return self.error(
                    501,
                    EnhancedCode::INVALID_ARGUMENTS,
                    "Non-ASCII host name needs SMTPUTF8",
                );
            }
            if crate::address::has_steering_chars(domain.as_str()) {
                return self.error(
                    501,
                    EnhancedCode::INVALID_ARGUMENTS,
                    "Host name holds control or text direction characters",
                );
            }
        }
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
        if self.xclient {
            line(out, &["XCLIENT ", XCLIENT_ATTRIBUTES]);
        }
        // HELP is a command every server has (RFC 5321 §4.1.1.8), not a
        // service extension: it is not advertised.
        out[last + 3] = b' ';
    }

    /// Checks parameters against what was advertised; true when all are fine.
    pub(super) fn unknown_parameters(&mut self, other: &[crate::command::Parameter<'_>]) -> bool {
        if !other.is_empty() && !self.config.allow_unknown_parameters {
            self.parameter_not_recognized();
            return true;
        }
        false
    }

    pub(super) fn mail(&mut self, from: ReversePath<'_>, params: MailParameters<'_>) {
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

    pub(super) fn rcpt(&mut self, to: ForwardPath<'_>, params: RcptParameters<'_>) {
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
    pub(super) fn may_start_message(&mut self) -> bool {
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

    pub(super) fn data(&mut self) {
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

    pub(super) fn bdat(&mut self, size: u64, last: bool) {
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

    pub(super) fn touch_data(&mut self) {
        self.deadline = Some(self.now + self.config.timeouts.data);
    }

    pub(super) fn starttls(&mut self) -> bool {
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

    /// XCLIENT (Postfix's `XCLIENT_README`), with its attributes or `None`
    /// when they did not parse. Outside a transaction, from a trusted
    /// client, with good attributes, the session starts over as for a new
    /// connection: 220 greeting, no HELO, authenticated only by `LOGIN=`.
    pub(super) fn xclient(&mut self, attributes: Option<Xclient>) {
        if self.tx.is_open() {
            return self.sequence_error("Error: MAIL transaction in progress");
        }
        if !self.xclient {
            return self.error(
                550,
                EnhancedCode::SECURITY,
                "Error: insufficient authorization",
            );
        }
        let Some(attributes) = attributes else {
            let (code, ec, text) = crate::error::CommandError::BadXclient.parts();
            return self.error(code, ec, text);
        };
        self.hello = None;
        self.authenticated = attributes.login_name().is_some();
        self.events.push_back(Event::Xclient(attributes));
        let c = Arc::clone(&self.config);
        say(
            &mut self.out,
            false,
            220,
            None,
            &[&c.hostname, " ", &c.texts.greeting],
        );
    }

    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<&str>) {
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

    pub(super) fn sasl_step(&mut self, mechanism: Mechanism, step: Step) {
        if let Step::Challenge(challenge) = step {
            say(&mut self.out, false, 334, None, &[challenge]);
            return;
        }
        self.input = Input::Command;
        self.framer.set_limit(self.config.limits.max_command_line);
        match step {
            Step::Done(credentials) => {
                let acts_for_another = credentials
                    .authzid
                    .as_ref()
                    .is_some_and(|z| *z != credentials.username);
                if acts_for_another && !self.config.allow_authzid {
                    let enhanced = self.enhanced();
                    crate::Reply::auth_failed().render_with(&mut self.out, enhanced);
                    self.auth_failed();
                    return;
                }
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
