//! What each command does and answers, in the AUTHORIZATION and
//! TRANSACTION states (RFC 1939 §4, §5; RFC 2449, 2595, 5034, 6856).

use std::io::Write as _;
use std::sync::Arc;

use postamt_wire::sasl::{Exchange, Mechanism, Step};
use postamt_wire::{DotEncoder, SaslError, Secret};

use super::events::Listed;
use super::message::{Streaming, TopCounter};
use super::{Deletion, Event, Maildrop, Phase, ServerSession};
use crate::command::{Command, MessageNumber};
use crate::error::{CommandError, Decision};
use crate::response::{Status, write_line};

#[derive(Debug)]
pub(super) struct OpenMaildrop {
    pub(super) messages: Vec<Listed>,
    pub(super) deleted: Vec<bool>,
    pub(super) live: usize,
    pub(super) live_octets: u64,
}

impl OpenMaildrop {
    pub(super) fn new(maildrop: Maildrop) -> Self {
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

impl ServerSession {
    pub(super) fn handle_command(&mut self, command: Command<'_>) {
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

    pub(super) fn sasl_step(&mut self, mechanism: Mechanism, exchange: Exchange, step: Step) {
        match step {
            Step::Challenge(challenge) => {
                self.line(Status::Continuation, None, &[challenge.as_bytes()]);
                self.framer.set_limit(self.config.limits.max_auth_line);
                self.sasl = Some((mechanism, exchange));
            }
            Step::Done(credentials) => {
                let acts_for_another = credentials
                    .authzid
                    .as_ref()
                    .is_some_and(|z| *z != credentials.username);
                if acts_for_another && !self.config.allow_authzid {
                    // RFC 4616 §2: the server decides who may act for whom;
                    // this one lets nobody, without asking the application.
                    self.credentials_refused();
                    return;
                }
                let ascii = credentials.username.is_ascii()
                    && credentials.password.expose().is_ascii()
                    && credentials.authzid.as_deref().is_none_or(str::is_ascii);
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

/// `N message(s) (M octets)`.
pub(super) fn write_count(out: &mut Vec<u8>, messages: usize, octets: u64) {
    let plural = if messages == 1 { "" } else { "s" };
    let _ = write!(out, "{messages} message{plural} ({octets} octets)");
}
