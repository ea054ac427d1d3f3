//! The input path: command lines through the framer, message text through
//! the DATA decoder or BDAT's line checker, and what a finished or refused
//! message leads to.

use std::mem;

use bytes::Bytes;
use postamt_wire::{Checked, Decoded, Frame};

use super::{AbortReason, Event, Input, Pending, Phase, ServerSession, Transaction, decimal, say};
use crate::command::Command;
use crate::config::Protocol;
use crate::error::CommandError;
use crate::reply::EnhancedCode;

/// BDAT octets that count as one record for the timer: a chunk trickling in
/// slower than 1 KiB per data timeout is cut off.
const BDAT_RECORD: u64 = 1024;

impl ServerSession {
    /// Processes input that waited in the buffer.
    pub(super) fn resume(&mut self) {
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

    pub(super) fn check_buffered(&mut self) {
        if !self.closed && self.buf.len() - self.pos > self.config.limits.max_buffered_input {
            self.pending = None;
            self.shut_down(
                AbortReason::SessionClosed,
                EnhancedCode::TEMPORARY_SECURITY,
                "Too much pipelined input",
            );
        }
    }

    /// Counts BDAT octets towards the per-record timer.
    pub(super) fn chunk_read(&mut self, n: usize, done: bool) {
        self.chunk_progress += n as u64;
        if done || self.chunk_progress >= BDAT_RECORD {
            self.chunk_progress = 0;
            self.progress = true;
        }
    }

    /// Consumes as much of `input` as the state allows; returns how much.
    pub(super) fn process(&mut self, input: &[u8]) -> usize {
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
                        // Every whole command line restarts the command timer
                        // (RFC 5321 §4.5.3.2.7: the timeout is per command),
                        // NOOP and HELP included; a trickle of bytes does not.
                        self.progress = true;
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

    pub(super) fn line_too_long(&mut self) {
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
    pub(super) fn message_data(&mut self) {
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

    pub(super) fn abort_message(&mut self, reason: AbortReason) {
        self.data.clear();
        if self.tx.aborted.is_none() {
            self.tx.aborted = Some(reason);
            self.events.push_back(Event::MessageAborted(reason));
        }
    }

    /// The reply for a message that was dropped while it was read.
    pub(super) fn abort_reply(&mut self, reason: AbortReason) {
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
    pub(super) fn message_complete(&mut self) {
        if let Some(reason) = self.tx.aborted {
            self.abort_reply(reason);
            self.tx = Transaction::default();
        } else {
            self.finish_message();
        }
    }

    pub(super) fn finish_message(&mut self) {
        self.tx.phase = Phase::Delivering;
        self.events.push_back(Event::MessageEnd);
        let total = match self.config.protocol {
            Protocol::Lmtp => self.tx.accepted,
            _ => 1,
        };
        self.pending = Some(Pending::Message { next: 0, total });
    }

    pub(super) fn chunk_complete(&mut self, size: u64, last: bool) {
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
    pub(super) fn line(&mut self, line: &[u8]) -> bool {
        if let Input::Auth(exchange, mechanism) = &mut self.input {
            let mechanism = *mechanism;
            let step = exchange.respond(line);
            self.sasl_step(mechanism, step);
            return false;
        }
        match Command::parse(line) {
            Ok(command) => self.command(command),
            // The session's own checks (transaction, trust) come before the
            // syntax: an untrusted client learns nothing from its attributes.
            Err(CommandError::BadXclient) => {
                self.xclient(None);
                false
            }
            Err(e) => {
                let (code, ec, text) = e.parts();
                self.error(code, ec, text);
                false
            }
        }
    }
}
