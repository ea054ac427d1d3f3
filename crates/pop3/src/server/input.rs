//! The input path: the client's bytes framed into lines (commands, or the
//! responses of a SASL exchange), processed while no decision is open and
//! the output has room.

use postamt_wire::sasl::Step;
use postamt_wire::{Frame, SaslError};

use super::ServerSession;
use crate::command::Command;
use crate::error::CommandError;

impl ServerSession {
    pub(super) fn input_cap(&self) -> usize {
        let limits = &self.config.limits;
        limits
            .max_buffered_input
            .max(limits.max_auth_line)
            .max(limits.max_command_line)
    }

    /// A whole command line arrived: the inactivity timer starts again.
    pub(super) fn command_received(&mut self) {
        self.deadline = self.last_now + self.config.timeouts.inactivity;
        self.rearm = false;
    }

    /// Processes buffered lines while no decision is pending and the output
    /// has room.
    pub(super) fn advance(&mut self) {
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

    pub(super) fn handle_line(&mut self, line: &[u8], bare: bool) {
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
}
