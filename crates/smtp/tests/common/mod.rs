//! The scripted application of the SMTP server tests, and its place in the
//! shared transcript harness (`postamt-transcript`): the transcripts in
//! `tests/transcripts/` set the session up with `!config` keys (see
//! [`config`]) and describe events as [`App`] logs them.

#![allow(dead_code, unreachable_pub)]

use std::time::Instant;

use postamt_smtp::{
    BareLineEndings, ClientProtocol, Command, Decision, Event, ForwardPath, Reply, ServerConfig,
    ServerSession, Session, XclientValue,
};
use postamt_transcript::{Application, Split, Transcript, escape};

/// The session's configuration from a transcript's `!config` lines.
pub fn config(t: &Transcript) -> ServerConfig {
    let mut config = ServerConfig::new("mx.kolleg.de");
    for setting in &t.settings {
        let num = || setting.number::<u64>();
        match setting.key.as_str() {
            "lmtp" => {
                let old = config.clone();
                config = ServerConfig::lmtp(old.hostname);
                config.extensions = old.extensions;
                config.limits = old.limits;
                config.timeouts = old.timeouts;
                config.implicit_tls = old.implicit_tls;
                config.login_without_tls = old.login_without_tls;
            }
            "starttls" => config.extensions.starttls = true,
            "tls" => config.implicit_tls = true,
            "login_without_tls" => config.login_without_tls = true,
            "no_auth" => config.extensions.auth.clear(),
            "no_chunking" => config.extensions.chunking = false,
            "no_dsn" => config.extensions.dsn = false,
            "no_enhanced" => config.extensions.enhanced_status_codes = false,
            "binary_mime" => config.extensions.binary_mime = true,
            "normalize" => config.bare_line_endings = BareLineEndings::Normalize,
            "allow_authzid" => config.allow_authzid = true,
            "allow_unknown" => config.allow_unknown_parameters = true,
            "max_recipients" => config.limits.max_recipients = num() as usize,
            "max_message_size" => config.limits.max_message_size = num(),
            "max_errors" => config.limits.max_errors = num() as u32,
            "max_command_line" => config.limits.max_command_line = num() as usize,
            "max_text_line" => config.limits.max_text_line = num() as usize,
            "max_buffered_input" => config.limits.max_buffered_input = num() as usize,
            // Not configuration but the application's trust in this client:
            // `Scripted::start` calls `allow_xclient`.
            "xclient" => {}
            other => panic!("{} line {}: unknown !config {other}", t.name, setting.line),
        }
    }
    config
}

/// The scripted application: answers decisions from the addresses and data.
#[derive(Default)]
pub struct App {
    pub events: Vec<String>,
    data: Vec<u8>,
    recipients: Vec<String>,
}

impl App {
    pub fn drain(&mut self, session: &mut ServerSession) {
        while let Some(event) = session.poll_event() {
            self.handle(session, event);
        }
    }

    fn handle(&mut self, session: &mut ServerSession, event: Event) {
        match event {
            Event::Hello { kind, domain } => self.events.push(format!("hello {kind:?} {domain}")),
            Event::StartTls => {
                self.events.push("starttls".into());
            }
            Event::Auth {
                mechanism,
                credentials,
            } => {
                self.events
                    .push(format!("auth {} {}", mechanism, credentials.username));
                assert_eq!(session.pending_decision(), Some(Decision::Auth));
                if credentials.username == "anna" && credentials.password.expose() == "geheim" {
                    session.accept().unwrap();
                } else {
                    session.reject(Reply::auth_failed()).unwrap();
                }
            }
            Event::Mail { from, params } => {
                let mut line = Vec::new();
                Command::Mail {
                    from: from.clone(),
                    params,
                }
                .render(&mut line);
                let line = String::from_utf8(line).unwrap();
                self.events.push(format!(
                    "mail {}",
                    line.trim_end().trim_start_matches("MAIL FROM:")
                ));
                assert_eq!(session.pending_decision(), Some(Decision::Sender));
                self.recipients.clear();
                if from.mailbox().is_some_and(|m| m.local_part() == "blocked") {
                    session
                        .reject(Reply::new(550, "5.7.1".parse().ok(), "Sender blocked"))
                        .unwrap();
                } else {
                    session.accept().unwrap();
                }
            }
            Event::Rcpt { to, params } => {
                let mut line = Vec::new();
                Command::Rcpt {
                    to: to.clone(),
                    params,
                }
                .render(&mut line);
                let line = String::from_utf8(line).unwrap();
                self.events.push(format!(
                    "rcpt {}",
                    line.trim_end().trim_start_matches("RCPT TO:")
                ));
                assert_eq!(session.pending_decision(), Some(Decision::Recipient));
                let reply = match &to {
                    ForwardPath::Postmaster => None,
                    ForwardPath::Mailbox(m) if m.domain() == "elsewhere.example" => {
                        Some(Reply::relay_denied())
                    }
                    ForwardPath::Mailbox(m) if m.local_part() == "nobody" => {
                        Some(Reply::unknown_user())
                    }
                    ForwardPath::Mailbox(_) => None,
                };
                match reply {
                    Some(r) => session.reject(r).unwrap(),
                    None => {
                        self.recipients.push(to.to_string());
                        session.accept().unwrap();
                    }
                }
            }
            Event::MessageStart => {
                self.data.clear();
                self.events.push("message-start".into());
            }
            Event::MessageData(bytes) => self.data.extend_from_slice(&bytes),
            Event::MessageEnd => {
                self.events.push(format!("data \"{}\"", escape(&self.data)));
                self.events.push("message-end".into());
                let lmtp = session.config().protocol == postamt_smtp::Protocol::Lmtp;
                let count = if lmtp { self.recipients.len() } else { 1 };
                for i in 0..count {
                    assert_eq!(
                        session.pending_decision(),
                        Some(Decision::Message { recipient: i })
                    );
                    let temp_fail = memchr::memmem::find(&self.data, b"X-Fail: temp").is_some();
                    let full = lmtp && self.recipients[i].starts_with("<full@");
                    if temp_fail {
                        session.reject(Reply::local_error()).unwrap();
                    } else if full {
                        session
                            .reject(Reply::new(452, "4.2.2".parse().ok(), "Mailbox full"))
                            .unwrap();
                    } else {
                        session.accept().unwrap();
                    }
                }
                self.data.clear();
            }
            Event::MessageAborted(reason) => {
                // What arrived before the abort is the same however the input
                // was split: the octets before the byte that broke a rule.
                self.events.push(format!("data \"{}\"", escape(&self.data)));
                self.events.push(format!("aborted {reason:?}"));
                self.data.clear();
            }
            Event::Reset => self.events.push("reset".into()),
            Event::Xclient(x) => {
                fn attr<T>(
                    line: &mut String,
                    key: &str,
                    v: &Option<XclientValue<T>>,
                    f: impl Fn(&T) -> String,
                ) {
                    let text = match v {
                        None => return,
                        Some(XclientValue::Known(v)) => f(v),
                        Some(XclientValue::Unavailable) => "[UNAVAILABLE]".into(),
                        Some(XclientValue::TempUnavailable) => "[TEMPUNAVAIL]".into(),
                    };
                    line.push_str(&format!(" {key}={text}"));
                }
                let mut line = String::from("xclient");
                attr(&mut line, "name", &x.name, |d| d.to_string());
                attr(&mut line, "addr", &x.addr, |a| a.to_string());
                attr(&mut line, "port", &x.port, |p| p.to_string());
                attr(&mut line, "proto", &x.proto, |p| {
                    match p {
                        ClientProtocol::Smtp => "SMTP",
                        ClientProtocol::Esmtp => "ESMTP",
                    }
                    .into()
                });
                attr(&mut line, "helo", &x.helo, |h| format!("{h:?}"));
                attr(&mut line, "login", &x.login, |l| format!("{l:?}"));
                attr(&mut line, "destaddr", &x.destaddr, |a| a.to_string());
                attr(&mut line, "destport", &x.destport, |p| p.to_string());
                let auth = if session.is_authenticated() {
                    "authenticated"
                } else {
                    "anonymous"
                };
                line.push_str(&format!(" ({auth})"));
                self.events.push(line);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// The application with its session, as the transcript harness runs it.
pub struct Scripted {
    app: App,
    session: ServerSession,
}

impl Application for Scripted {
    type Session = ServerSession;

    fn start(t: &Transcript, _split: Split, now: Instant) -> Self {
        let mut session = ServerSession::new(config(t), now);
        if t.settings.iter().any(|s| s.key == "xclient") {
            session.allow_xclient(true);
        }
        Self {
            app: App::default(),
            session,
        }
    }

    fn session(&mut self) -> &mut ServerSession {
        &mut self.session
    }

    fn event(&mut self, event: Event, log: &mut Vec<String>) {
        self.app.handle(&mut self.session, event);
        log.append(&mut self.app.events);
    }
}

/// Runs `tests/transcripts/<name>` whole, byte by byte and at eight random splits.
pub fn check_file(name: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transcripts");
    let t = Transcript::load(dir, name);
    postamt_transcript::check::<Scripted>(&t, &Split::all(8));
}
