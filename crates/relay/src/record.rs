//! A queued message written down: the record a spool keeps next to the
//! message, so that the queue's state survives a restart.
//!
//! The format is line-based text that `cat` shows as it is: LF line ends,
//! UTF-8, one `key value` per line in a fixed order, a version on the first
//! line and `end` on the last (a record cut short is refused, not read as
//! one with fewer recipients). Addresses use their SMTP text forms, times
//! are `seconds.nanoseconds` since the Unix epoch (`-` before it), free
//! text (ENVID, ORCPT, reply lines) is in double quotes with `\\`, `\"`
//! and control characters (`\u{7f}`) escaped; any other character,
//! non-ASCII included, is written as it is.
//!
//! ```text
//! postamt-queue 1
//! from <anna@kolleg.de>
//! arrival 1700000000.250000000
//! size 1234
//! envid "QQ+2B1"
//! ret HDRS
//! smtputf8 no
//! eight-bit yes
//! rcpt carl@schule.example
//! notify FAILURE,DELAY
//! orcpt "rfc822" "carl+40schule.example"
//! delay-notified yes
//! state deferred 2 1700000600.000000000
//! reply 451 4.7.1
//! text "Greylisted, \"try\" again"
//! text "in 5 minutes"
//! rcpt dora@other.example
//! delay-notified no
//! state pending
//! end
//! ```
//!
//! `envid`, `ret`, `notify` and `orcpt` are left out when absent. `state`
//! is `pending`, `deferred ATTEMPTS NEXT-ATTEMPT`, `delivered` or `failed`;
//! all but `pending` are followed by their reply: `reply CODE [ENHANCED]`
//! and one `text` line per reply line. `notify` is `NEVER` or the RFC 3461
//! keywords joined by commas.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use postamt_smtp::command::OriginalRecipient;
use postamt_smtp::{EnhancedCode, Mailbox, Notify, Reply, Ret, ReversePath};

use crate::queue::{MessageId, QueuedMessage, QueuedRecipient, RecipientState};

/// The first line of every record this version writes.
const VERSION_LINE: &str = "postamt-queue 1";

/// A record that cannot be read back: which line, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue record, line {line}: {reason}")]
pub struct RecordError {
    line: usize,
    reason: String,
}

impl RecordError {
    fn new(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            reason: reason.into(),
        }
    }

    /// The 1-based line the error is on (one past the last line when the
    /// record ends too early).
    pub fn line(&self) -> usize {
        self.line
    }

    /// What is wrong on that line.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl QueuedMessage {
    /// Writes the message's envelope and every recipient's state in the
    /// record format of [this module](crate::record). The id is not part of
    /// it: it is the spool's name for the record.
    pub fn to_record(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        out.push_str(VERSION_LINE);
        out.push('\n');
        let _ = writeln!(out, "from {}", self.reverse_path());
        let _ = writeln!(out, "arrival {}", time_text(self.arrival()));
        let _ = writeln!(out, "size {}", self.size());
        if let Some(envid) = self.envid() {
            let _ = writeln!(out, "envid {}", quote(envid));
        }
        if let Some(ret) = self.ret() {
            let _ = writeln!(out, "ret {}", ret_text(ret));
        }
        let _ = writeln!(out, "smtputf8 {}", yes_no(self.needs_smtputf8()));
        let _ = writeln!(out, "eight-bit {}", yes_no(self.is_eight_bit()));
        for r in self.recipients() {
            let _ = writeln!(out, "rcpt {}", r.mailbox());
            if let Some(notify) = r.notify() {
                // A value that sets nothing is the key alone.
                out.push_str("notify");
                let words = notify_text(notify);
                if !words.is_empty() {
                    out.push(' ');
                    out.push_str(&words);
                }
                out.push('\n');
            }
            if let Some(orcpt) = r.orcpt() {
                let _ = writeln!(
                    out,
                    "orcpt {} {}",
                    quote(&orcpt.addr_type),
                    quote(&orcpt.address)
                );
            }
            let _ = writeln!(out, "delay-notified {}", yes_no(r.delay_notified()));
            match r.state() {
                RecipientState::Pending => out.push_str("state pending\n"),
                RecipientState::Deferred {
                    attempts,
                    next_attempt,
                    last_reply,
                } => {
                    let _ = writeln!(
                        out,
                        "state deferred {attempts} {}",
                        time_text(*next_attempt)
                    );
                    write_reply(&mut out, last_reply);
                }
                RecipientState::Delivered { reply } => {
                    out.push_str("state delivered\n");
                    write_reply(&mut out, reply);
                }
                RecipientState::Failed { reply } => {
                    out.push_str("state failed\n");
                    write_reply(&mut out, reply);
                }
            }
        }
        out.push_str("end\n");
        out.into_bytes()
    }

    /// Reads a record written by [`to_record`](Self::to_record) back, as
    /// message `id`. Anything else (another version, a record cut short, a
    /// field out of order or malformed) is refused with the line at fault.
    pub fn from_record(id: MessageId, record: &[u8]) -> Result<Self, RecordError> {
        let mut lines = Lines::new(record)?;
        let version = lines.next_line()?;
        if version != VERSION_LINE {
            return Err(lines.error(format!(
                "expected `{VERSION_LINE}`, found {version:?} (not a queue record, or another version)"
            )));
        }
        let from = lines.field("from")?;
        let from: ReversePath<'static> = from
            .parse()
            .map_err(|e| lines.error(format!("`from`: {e}")))?;
        let arrival = parse_time(lines.field("arrival")?).map_err(|e| lines.error(e))?;
        let size =
            digits(lines.field("size")?).ok_or_else(|| lines.error("`size` is not a number"))?;
        let mut message = Self::new(id, from, arrival, size);
        if let Some(envid) = lines.optional("envid")? {
            message = message.with_envid(unquote_all(envid).map_err(|e| lines.error(e))?);
        }
        if let Some(ret) = lines.optional("ret")? {
            let ret = match ret {
                "FULL" => Ret::Full,
                "HDRS" => Ret::Headers,
                other => {
                    return Err(lines.error(format!("`ret` must be FULL or HDRS, not {other:?}")));
                }
            };
            message = message.with_ret(ret);
        }
        let smtputf8 = parse_flag(lines.field("smtputf8")?).map_err(|e| lines.error(e))?;
        let eight_bit = parse_flag(lines.field("eight-bit")?).map_err(|e| lines.error(e))?;
        message = message.with_smtputf8(smtputf8).with_eight_bit(eight_bit);
        loop {
            if lines.peek_key()? == "end" {
                let end = lines.next_line()?;
                if end != "end" {
                    return Err(lines.error("`end` takes no value"));
                }
                break;
            }
            let recipient = read_recipient(&mut lines)?;
            let count = message.recipients().len();
            let mailbox = recipient.mailbox().to_string();
            message = message.with_recipient(recipient);
            if message.recipients().len() == count {
                return Err(lines.error(format!("recipient {mailbox} is listed twice")));
            }
        }
        lines.finish()?;
        Ok(message)
    }
}

fn read_recipient(lines: &mut Lines<'_>) -> Result<QueuedRecipient, RecordError> {
    let mailbox: Mailbox<'static> = lines
        .field("rcpt")?
        .parse()
        .map_err(|e| lines.error(format!("`rcpt`: {e}")))?;
    let mut recipient = QueuedRecipient::new(mailbox);
    if let Some(notify) = lines.optional("notify")? {
        recipient = recipient.with_notify(parse_notify(notify).map_err(|e| lines.error(e))?);
    }
    if let Some(orcpt) = lines.optional("orcpt")? {
        let (addr_type, rest) = unquote(orcpt).map_err(|e| lines.error(format!("`orcpt`: {e}")))?;
        let address = rest
            .strip_prefix(' ')
            .ok_or_else(|| lines.error("`orcpt` needs a type and an address, each quoted"))?;
        let address = unquote_all(address).map_err(|e| lines.error(format!("`orcpt`: {e}")))?;
        recipient = recipient.with_orcpt(OriginalRecipient {
            addr_type: addr_type.into(),
            address: address.into(),
        });
    }
    let notified = parse_flag(lines.field("delay-notified")?).map_err(|e| lines.error(e))?;
    recipient = recipient.with_delay_notified(notified);
    let state = lines.field("state")?;
    let (kind, rest) = state.split_once(' ').unwrap_or((state, ""));
    let state = match (kind, rest) {
        ("pending", "") => RecipientState::Pending,
        ("deferred", rest) => {
            let (attempts, next) = rest
                .split_once(' ')
                .ok_or_else(|| lines.error("`state deferred` needs ATTEMPTS NEXT-ATTEMPT"))?;
            let attempts = digits(attempts)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| lines.error(format!("attempts {attempts:?} is not a number")))?;
            let next_attempt = parse_time(next).map_err(|e| lines.error(e))?;
            RecipientState::Deferred {
                attempts,
                next_attempt,
                last_reply: read_reply(lines)?,
            }
        }
        ("delivered", "") => RecipientState::Delivered {
            reply: read_reply(lines)?,
        },
        ("failed", "") => RecipientState::Failed {
            reply: read_reply(lines)?,
        },
        _ => {
            return Err(lines.error(format!(
                "`state` must be pending, deferred ATTEMPTS TIME, delivered or failed, not {state:?}"
            )));
        }
    };
    Ok(recipient.with_state(state))
}

fn write_reply(out: &mut String, reply: &Reply) {
    let _ = write!(out, "reply {}", reply.code());
    if let Some(enhanced) = reply.enhanced() {
        let _ = write!(out, " {enhanced}");
    }
    out.push('\n');
    for line in reply.lines() {
        let _ = writeln!(out, "text {}", quote(line));
    }
}

fn read_reply(lines: &mut Lines<'_>) -> Result<Reply, RecordError> {
    let head = lines.field("reply")?;
    let (code, enhanced) = match head.split_once(' ') {
        Some((code, enhanced)) => (code, Some(enhanced)),
        None => (head, None),
    };
    let code = digits(code)
        .filter(|c| code.len() == 3 && (200..=599).contains(c))
        .ok_or_else(|| lines.error(format!("reply code {code:?} is not within 200..=599")))?;
    let enhanced = enhanced
        .map(|e| {
            e.parse::<EnhancedCode>()
                .map_err(|_| lines.error(format!("{e:?} is not an enhanced status code")))
        })
        .transpose()?;
    let mut text: Vec<Cow<'static, str>> = Vec::new();
    while lines.peek_key()? == "text" {
        let line = unquote_all(lines.field("text")?).map_err(|e| lines.error(e))?;
        if line.contains(['\r', '\n']) {
            return Err(lines.error("a reply line cannot hold CR or LF"));
        }
        text.push(line.into());
    }
    if text.is_empty() {
        return Err(lines.error("a reply needs at least one `text` line"));
    }
    Ok(Reply::multiline(code as u16, enhanced, text))
}

/// The record's lines with their numbers, read strictly in order.
struct Lines<'a> {
    lines: Vec<&'a str>,
    /// Lines consumed so far; the last consumed one is line `pos`.
    pos: usize,
}

impl<'a> Lines<'a> {
    fn new(record: &'a [u8]) -> Result<Self, RecordError> {
        let text = std::str::from_utf8(record).map_err(|e| {
            let line = record[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            RecordError::new(line, "not UTF-8")
        })?;
        let Some(body) = text.strip_suffix('\n') else {
            let line = text.split('\n').count();
            return Err(RecordError::new(
                line,
                if text.is_empty() {
                    "the record is empty"
                } else {
                    "the record is cut short (no line end after the last line)"
                },
            ));
        };
        Ok(Self {
            lines: body.split('\n').collect(),
            pos: 0,
        })
    }

    /// An error about the line consumed last.
    fn error(&self, reason: impl Into<String>) -> RecordError {
        RecordError::new(self.pos.max(1), reason)
    }

    /// An error about the line that comes next.
    fn error_ahead(&self, reason: impl Into<String>) -> RecordError {
        RecordError::new(self.pos + 1, reason)
    }

    fn next_line(&mut self) -> Result<&'a str, RecordError> {
        let line = self
            .lines
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.error_ahead("the record is cut short (no `end` line)"))?;
        self.pos += 1;
        if line.contains('\r') {
            return Err(self.error("a CR in the line"));
        }
        Ok(line)
    }

    fn peek_key(&self) -> Result<&'a str, RecordError> {
        let line = self
            .lines
            .get(self.pos)
            .ok_or_else(|| self.error_ahead("the record is cut short (no `end` line)"))?;
        Ok(line.split_once(' ').map_or(line, |(key, _)| key))
    }

    /// The value of the next line, which must have `key`.
    fn field(&mut self, key: &str) -> Result<&'a str, RecordError> {
        let found = self.peek_key()?;
        if found != key {
            return Err(self.error_ahead(format!("expected `{key}`, found `{found}`")));
        }
        let line = self.next_line()?;
        Ok(line
            .strip_prefix(key)
            .map_or("", |v| v.strip_prefix(' ').unwrap_or(v)))
    }

    /// The value of the next line if it has `key`.
    fn optional(&mut self, key: &str) -> Result<Option<&'a str>, RecordError> {
        if self.peek_key()? == key {
            self.field(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn finish(&self) -> Result<(), RecordError> {
        if self.pos < self.lines.len() {
            return Err(self.error_ahead("text after `end`"));
        }
        Ok(())
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

fn parse_flag(value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(format!("expected yes or no, found {other:?}")),
    }
}

fn ret_text(ret: Ret) -> &'static str {
    match ret {
        Ret::Full => "FULL",
        Ret::Headers => "HDRS",
    }
}

/// `NOTIFY=`'s value as on the wire (empty for a value that sets nothing).
fn notify_text(notify: Notify) -> String {
    match notify {
        Notify::Never => "NEVER".to_owned(),
        Notify::On {
            success,
            failure,
            delay,
        } => [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn parse_notify(value: &str) -> Result<Notify, String> {
    if value == "NEVER" {
        return Ok(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    if !value.is_empty() {
        for word in value.split(',') {
            let flag = match word {
                "SUCCESS" => &mut success,
                "FAILURE" => &mut failure,
                "DELAY" => &mut delay,
                other => return Err(format!("`notify`: unknown keyword {other:?}")),
            };
            if std::mem::replace(flag, true) {
                return Err(format!("`notify`: {word} twice"));
            }
        }
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

fn time_text(time: SystemTime) -> String {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            format!("-{}.{:09}", d.as_secs(), d.subsec_nanos())
        }
    }
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("{text:?} is not a time (SECONDS.NANOSECONDS, 9 digits after the dot)");
    let (before, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, nanos) = unsigned.split_once('.').ok_or_else(bad)?;
    let secs = digits(secs).ok_or_else(bad)?;
    let nanos = digits(nanos).filter(|_| nanos.len() == 9).ok_or_else(bad)? as u32;
    let offset = Duration::new(secs, nanos);
    let time = if before {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    };
    time.ok_or_else(|| format!("{text:?} is out of this system's time range"))
}

/// A plain decimal number (no sign, no spaces, at most 20 digits).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `text` in double quotes, with `\`, `"` and control characters escaped.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads one quoted string from the front of `text`; returns it and the rest.
fn unquote(text: &str) -> Result<(String, &str), String> {
    let mut chars = text.char_indices();
    if chars.next().map(|(_, c)| c) != Some('"') {
        return Err("expected a quoted string".to_owned());
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &text[i + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('u') => {
                    let rest = chars.as_str();
                    let hex = rest
                        .strip_prefix('{')
                        .and_then(|r| r.split_once('}'))
                        .map(|(hex, _)| hex)
                        .filter(|hex| (1..=6).contains(&hex.len()))
                        .ok_or("`\\u` must be followed by {HEX}")?;
                    let c = u32::from_str_radix(hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("`\\u{{{hex}}}` is not a character"))?;
                    out.push(c);
                    // Skip `{`, the digits and `}`.
                    for _ in 0..hex.len() + 2 {
                        chars.next();
                    }
                }
                Some(other) => return Err(format!("unknown escape `\\{other}`")),
                None => return Err("the quoted string is not closed".to_owned()),
            },
            c if c.is_control() => {
                return Err(format!(
                    "a control character ({c:?}) not written as `\\u{{..}}`"
                ));
            }
            c => out.push(c),
        }
    }
    Err("the quoted string is not closed".to_owned())
}

/// A value that is exactly one quoted string.
fn unquote_all(text: &str) -> Result<String, String> {
    match unquote(text)? {
        (value, "") => Ok(value),
        (_, rest) => Err(format!("text after the closing quote: {rest:?}")),
    }
}

#[cfg(test)]
mod tests;
