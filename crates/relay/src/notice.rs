//! Delivery status notifications (RFC 3464, RFC 3461 §6), composed with
//! `mail-builder`: a readable part, the `message/delivery-status` fields,
//! and the original message or its headers.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use mail_builder::MessageBuilder;
use mail_builder::headers::Header;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId as MimeMessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use postamt_smtp::command::decode_xtext;
use postamt_smtp::{EnhancedCode, Mailbox, Reply, Ret};

use crate::config::RelayConfig;
use crate::queue::{MessageId, QueuedMessage, QueuedRecipient};

/// Why a notice goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NoticeKind {
    /// Recipients failed for good (a 5xx, or the queue lifetime ran out).
    Failure,
    /// Recipients are still being tried after the delay warning time.
    Delay,
    /// Recipients were relayed to a next hop that offers no DSN, so it
    /// cannot report success itself (RFC 3461 §5.2.2).
    Success,
    /// A message from `<>` (a notice) failed; its sender cannot be told,
    /// so the postmaster of this server gets it (Postfix's double bounce).
    /// Deliver it locally: queued, it could bounce again.
    DoubleBounce,
}

/// The `Action:` of one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DsnAction {
    /// `failed`.
    Failed,
    /// `delayed`.
    Delayed,
    /// `relayed`: handed to a next hop that sends no DSNs.
    Relayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delayed => "delayed",
            Self::Relayed => "relayed",
        }
    }
}

/// One recipient's block in a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRecipient {
    final_recipient: Mailbox<'static>,
    original: Option<(String, String)>,
    action: DsnAction,
    reply: Option<Reply>,
    from_peer: bool,
    remote_mta: Option<String>,
    will_retry_until: Option<SystemTime>,
}

impl NoticeRecipient {
    pub(crate) fn new(
        r: &QueuedRecipient,
        action: DsnAction,
        reply: Option<Reply>,
        remote: Option<(String, bool)>,
        will_retry_until: Option<SystemTime>,
    ) -> Self {
        let (remote_mta, from_peer) = match remote {
            Some((mta, peer)) => (Some(mta), peer),
            None => (None, false),
        };
        let original = r.orcpt().map(|o| {
            let address = decode_xtext(&o.address).unwrap_or_else(|| o.address.to_string());
            (o.addr_type.to_string(), address)
        });
        Self {
            final_recipient: r.mailbox().clone(),
            original,
            action,
            reply,
            from_peer,
            remote_mta,
            will_retry_until,
        }
    }

    /// The recipient as we tried it.
    pub fn final_recipient(&self) -> &Mailbox<'static> {
        &self.final_recipient
    }

    /// What happened.
    pub fn action(&self) -> DsnAction {
        self.action
    }

    /// The reply behind it.
    pub fn reply(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }

    /// The host tried, if there was one.
    pub fn remote_mta(&self) -> Option<&str> {
        self.remote_mta.as_deref()
    }

    /// The status code: the reply's enhanced code, else its class (X.0.0).
    pub fn status(&self) -> EnhancedCode {
        let class = match self.action {
            DsnAction::Relayed => 2,
            DsnAction::Delayed => 4,
            DsnAction::Failed => 5,
        };
        self.reply
            .as_ref()
            .and_then(|r| {
                r.enhanced()
                    .or_else(|| EnhancedCode::new((r.code() / 100) as u8, 0, 0))
            })
            .or_else(|| EnhancedCode::new(class, 0, 0))
            .expect("2, 4 and 5 are classes")
    }
}

/// A delivery status notification to send: to the original sender, about
/// some recipients of one message. [`compose`](Self::compose) writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    kind: NoticeKind,
    message: MessageId,
    to: Mailbox<'static>,
    reporting_mta: String,
    envid: Option<String>,
    arrival: SystemTime,
    date: SystemTime,
    returns: Ret,
    global: bool,
    recipients: Vec<NoticeRecipient>,
    seq: u64,
}

impl Notice {
    pub(crate) fn new(
        kind: NoticeKind,
        msg: &QueuedMessage,
        to: Mailbox<'static>,
        config: &RelayConfig,
        recipients: Vec<NoticeRecipient>,
        date: SystemTime,
        seq: u64,
    ) -> Self {
        let asked = match (msg.ret(), kind) {
            (Some(ret), _) => ret,
            (None, NoticeKind::Failure | NoticeKind::DoubleBounce) => Ret::Full,
            (None, _) => Ret::Headers,
        };
        let returns = if msg.size() > config.return_size_limit {
            Ret::Headers
        } else {
            asked
        };
        Self {
            kind,
            message: msg.id().clone(),
            to,
            reporting_mta: config.hostname.clone(),
            envid: msg
                .envid()
                .map(|e| decode_xtext(e).unwrap_or_else(|| e.to_owned())),
            arrival: msg.arrival(),
            date,
            returns,
            global: msg.needs_smtputf8(),
            recipients,
            seq,
        }
    }

    /// Why it goes out.
    pub fn kind(&self) -> NoticeKind {
        self.kind
    }

    /// The message it reports on.
    pub fn message(&self) -> &MessageId {
        &self.message
    }

    /// Whom to send it to (from `<>`): the original sender, or for a
    /// [`NoticeKind::DoubleBounce`] `postmaster@` this server's name.
    pub fn recipient(&self) -> &Mailbox<'static> {
        &self.to
    }

    /// Whether [`compose`](Self::compose) needs the whole message or its
    /// headers only (RET, and the return size limit).
    pub fn returns(&self) -> Ret {
        self.returns
    }

    /// Whether the notice itself needs SMTPUTF8 (RFC 6533: it reports on a
    /// message that did).
    pub fn needs_smtputf8(&self) -> bool {
        self.global || !self.to.is_ascii()
    }

    /// The recipients it reports on.
    pub fn recipients(&self) -> &[NoticeRecipient] {
        &self.recipients
    }

    /// The notice as a message, CRLF line ends. `original` is the queued
    /// message (whole, or at least its header section when
    /// [`returns`](Self::returns) is [`Ret::Headers`]).
    pub fn compose(&self, original: &[u8]) -> Vec<u8> {
        let returned = match self.returns {
            Ret::Full => original,
            Ret::Headers => header_section(original),
        };
        let host = &self.reporting_mta;
        let subject = match self.kind {
            NoticeKind::Failure => "Undelivered Mail Returned to Sender",
            NoticeKind::Delay => "Delayed Mail (still being retried)",
            NoticeKind::Success => "Successful Mail Delivery Report",
            NoticeKind::DoubleBounce => "Undeliverable Mail Delivery Notice",
        };
        let id_part: String = self
            .message
            .as_str()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect();
        let boundary = self.boundary(&id_part, returned);

        let report = MimePart::new(
            ContentType::new("multipart/report")
                .attribute("report-type", "delivery-status")
                .attribute("boundary", boundary),
            vec![
                MimePart::new(
                    ContentType::new("text/plain").attribute("charset", "utf-8"),
                    self.readable(),
                )
                .header("Content-Description", Raw::new("Notification")),
                MimePart::new(
                    ContentType::new(if self.global {
                        "message/global-delivery-status"
                    } else {
                        "message/delivery-status"
                    }),
                    self.status_fields(),
                )
                .header("Content-Description", Raw::new("Delivery report"))
                .transfer_encoding(if self.global { "8bit" } else { "7bit" }),
                MimePart::new(
                    ContentType::new(match (self.returns, self.global) {
                        (Ret::Full, false) => "message/rfc822",
                        (Ret::Full, true) => "message/global",
                        (Ret::Headers, false) => "text/rfc822-headers",
                        (Ret::Headers, true) => "message/global-headers",
                    }),
                    returned.to_vec(),
                )
                .header(
                    "Content-Description",
                    Raw::new(match self.returns {
                        Ret::Full => "Undelivered message",
                        Ret::Headers => "Message headers",
                    }),
                )
                .transfer_encoding(if returned.is_ascii() {
                    "7bit"
                } else {
                    "8bit"
                }),
            ],
        );
        MessageBuilder::new()
            .from(Address::new_address(
                Some("Mail Delivery System"),
                format!("MAILER-DAEMON@{host}"),
            ))
            .to(Address::new_address(None::<&str>, self.to.to_string()))
            .subject(subject)
            .date(Date::new(unix_seconds(self.date)))
            .message_id(MimeMessageId::new(format!(
                "{id_part}.dsn{}.{}@{host}",
                self.seq,
                unix_seconds(self.date)
            )))
            .header("Auto-Submitted", Raw::new("auto-replied"))
            .body(report)
            .write_to_vec()
            .expect("writing to a Vec does not fail")
    }

    /// A boundary that occurs nowhere in the returned message (the other
    /// parts are ours and hold no `--postamt`).
    fn boundary(&self, id_part: &str, returned: &[u8]) -> String {
        let base = format!("postamt-{id_part}-{}", self.seq);
        let mut boundary = base.clone();
        let mut n = 0u32;
        while contains(returned, boundary.as_bytes()) {
            n += 1;
            boundary = format!("{base}-{n}");
        }
        boundary
    }

    fn readable(&self) -> String {
        let mut text = format!(
            "This is the mail system at host {}.\n\n",
            self.reporting_mta
        );
        text.push_str(match self.kind {
            NoticeKind::Failure => {
                "Your message could not be delivered to one or more recipients.\n\
                 It is attached below, with the reason for each recipient.\n"
            }
            NoticeKind::Delay => {
                "Your message could not be delivered yet to one or more recipients.\n\
                 It is still being tried; you need not send it again.\n"
            }
            NoticeKind::Success => {
                "Your message was passed on to a mail system that sends no\n\
                 delivery notices of its own, so this is the last you will hear of it.\n"
            }
            NoticeKind::DoubleBounce => {
                "A message with no return address (a delivery notice) could not be\n\
                 delivered to one or more recipients. Nobody else can be told, so the\n\
                 postmaster gets it; it is attached below, with the reason.\n"
            }
        });
        for r in &self.recipients {
            let _ = write!(text, "\n<{}>:", r.final_recipient);
            if let Some(reply) = &r.reply {
                match (&r.remote_mta, r.from_peer) {
                    (Some(mta), true) => {
                        let _ = write!(text, " host {mta} said:");
                    }
                    (Some(mta), false) => {
                        let _ = write!(text, " trying {mta}:");
                    }
                    (None, _) => {}
                }
                let _ = write!(text, "\n    {}", one_line(reply));
            }
            if let Some(until) = r.will_retry_until {
                let _ = write!(
                    text,
                    "\n    (tried until {})",
                    Date::new(unix_seconds(until)).to_rfc822()
                );
            }
            text.push('\n');
        }
        text
    }

    /// The `message/delivery-status` body: the per-message fields, then a
    /// block per recipient, each field folded by `mail-builder`.
    fn status_fields(&self) -> Vec<u8> {
        let mut out = Vec::new();
        field(
            &mut out,
            "Reporting-MTA",
            &format!("dns; {}", self.reporting_mta),
        );
        if let Some(envid) = &self.envid {
            field(&mut out, "Original-Envelope-Id", envid);
        }
        field(
            &mut out,
            "Arrival-Date",
            &Date::new(unix_seconds(self.arrival)).to_rfc822(),
        );
        for r in &self.recipients {
            out.extend_from_slice(b"\r\n");
            let addr_type = if r.final_recipient.is_ascii() {
                "rfc822"
            } else {
                "utf-8"
            };
            field(
                &mut out,
                "Final-Recipient",
                &format!("{addr_type}; {}", r.final_recipient),
            );
            if let Some((addr_type, address)) = &r.original {
                field(
                    &mut out,
                    "Original-Recipient",
                    &format!("{addr_type}; {address}"),
                );
            }
            field(&mut out, "Action", r.action.as_str());
            field(&mut out, "Status", &r.status().to_string());
            if let Some(mta) = &r.remote_mta {
                field(&mut out, "Remote-MTA", &format!("dns; {mta}"));
            }
            if let Some(reply) = &r.reply {
                let kind = if r.from_peer { "smtp" } else { "X-Postamt" };
                field(
                    &mut out,
                    "Diagnostic-Code",
                    &format!("{kind}; {}", one_line(reply)),
                );
            }
            if r.remote_mta.is_some() {
                field(
                    &mut out,
                    "Last-Attempt-Date",
                    &Date::new(unix_seconds(self.date)).to_rfc822(),
                );
            }
            if let Some(until) = r.will_retry_until {
                field(
                    &mut out,
                    "Will-Retry-Until",
                    &Date::new(unix_seconds(until)).to_rfc822(),
                );
            }
        }
        out
    }
}

/// A reply on one line, as DSN fields and Postfix's notices show it.
fn one_line(reply: &Reply) -> String {
    let mut line = reply.code().to_string();
    if let Some(code) = reply.enhanced() {
        let _ = write!(line, " {code}");
    }
    for text in reply.lines() {
        line.push(' ');
        line.push_str(text);
    }
    line
}

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    Raw::new(value).write_header(out, name.len() + 2);
}

/// The header section with its closing empty line, or all of it when there
/// is no body.
fn header_section(message: &[u8]) -> &[u8] {
    for start in [&b"\r\n"[..], b"\n"] {
        if message.starts_with(start) {
            return &message[..start.len()];
        }
    }
    for (i, w) in message.windows(2).enumerate() {
        if w == b"\n\n" {
            return &message[..i + 2];
        }
        if w == b"\r\n" && message[i + 2..].starts_with(b"\r\n") {
            return &message[..i + 4];
        }
    }
    message
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sections() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_section(b"A: 1\n\nbody"), b"A: 1\n\n");
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\n\r\nx"), b"\r\n");
    }

    #[test]
    fn replies_on_one_line() {
        let reply = Reply::multiline(
            550,
            Some(EnhancedCode::UNKNOWN_USER),
            vec!["No such user".into(), "see the postmaster".into()],
        );
        assert_eq!(
            one_line(&reply),
            "550 5.1.1 No such user see the postmaster"
        );
        assert_eq!(one_line(&Reply::new(421, None, "bye")), "421 bye");
    }

    #[test]
    fn long_fields_are_folded() {
        let mut out = Vec::new();
        let long = format!("smtp; 550 5.1.1 {}", "word ".repeat(60));
        field(&mut out, "Diagnostic-Code", &long);
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
        let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
        assert!(unfolded.starts_with("Diagnostic-Code: smtp; 550 5.1.1 word word"));
    }
}
