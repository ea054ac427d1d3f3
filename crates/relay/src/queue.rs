//! The outbound queue as plain data: what a store writes down and reads back.
//!
//! Times are [`SystemTime`]: a queue outlives the process, and an `Instant`
//! means nothing after a restart.

use std::fmt;
use std::time::SystemTime;

use postamt_smtp::command::OriginalRecipient;
use postamt_smtp::{
    Body, MailParameters, Mailbox, Notify, RcptParameters, Reply, Ret, ReversePath,
};

/// The caller's name for a queued message (a spool file name, a row id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// Wraps the caller's id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientState {
    /// Not tried yet: due at once.
    Pending,
    /// Failed for now; tried again at `next_attempt`.
    Deferred {
        /// Attempts so far (at least 1).
        attempts: u32,
        /// When the next attempt is due.
        next_attempt: SystemTime,
        /// The reply of the last attempt (the peer's, or one we made up
        /// for a connection that failed).
        last_reply: Reply,
    },
    /// The next hop took it.
    Delivered {
        /// Its final reply.
        reply: Reply,
    },
    /// Will not be delivered: a 5xx, a route that cannot work, or the
    /// queue lifetime ran out (then the last 4xx).
    Failed {
        /// Why, in the peer's words where there was a peer.
        reply: Reply,
    },
}

impl RecipientState {
    /// Delivered or failed: nothing more happens to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Delivered { .. } | Self::Failed { .. })
    }

    /// When this recipient is due: at once for pending (the earliest time
    /// there is, `UNIX_EPOCH`), the next attempt for deferred, never
    /// (`None`) when final.
    pub fn due(&self) -> Option<SystemTime> {
        match self {
            Self::Pending => Some(SystemTime::UNIX_EPOCH),
            Self::Deferred { next_attempt, .. } => Some(*next_attempt),
            Self::Delivered { .. } | Self::Failed { .. } => None,
        }
    }

    /// The attempts made so far.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Deferred { attempts, .. } => *attempts,
            _ => 0,
        }
    }
}

/// One recipient of a queued message, with its DSN parameters and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecipient {
    mailbox: Mailbox<'static>,
    notify: Option<Notify>,
    orcpt: Option<OriginalRecipient<'static>>,
    state: RecipientState,
    delay_notified: bool,
}

impl QueuedRecipient {
    /// A pending recipient without DSN parameters. A relayed recipient
    /// always has a domain, so it is a [`Mailbox`], never `<Postmaster>`.
    pub fn new(mailbox: Mailbox<'static>) -> Self {
        Self {
            mailbox,
            notify: None,
            orcpt: None,
            state: RecipientState::Pending,
            delay_notified: false,
        }
    }

    /// A pending recipient with the RCPT parameters it came with.
    pub fn from_rcpt(mailbox: Mailbox<'static>, params: &RcptParameters<'_>) -> Self {
        Self {
            notify: params.notify,
            orcpt: params.orcpt.clone().map(|o| OriginalRecipient {
                addr_type: o.addr_type.into_owned().into(),
                address: o.address.into_owned().into(),
            }),
            ..Self::new(mailbox)
        }
    }

    /// Sets `NOTIFY=`.
    #[must_use]
    pub fn with_notify(mut self, notify: Notify) -> Self {
        self.notify = Some(notify);
        self
    }

    /// Sets `ORCPT=`.
    #[must_use]
    pub fn with_orcpt(mut self, orcpt: OriginalRecipient<'static>) -> Self {
        self.orcpt = Some(orcpt);
        self
    }

    /// Sets the state, as a store does when it reads the queue back.
    #[must_use]
    pub fn with_state(mut self, state: RecipientState) -> Self {
        self.state = state;
        self
    }

    /// Records that the delay notice went out (read back from a store).
    #[must_use]
    pub fn with_delay_notified(mut self, sent: bool) -> Self {
        self.delay_notified = sent;
        self
    }

    /// The recipient.
    pub fn mailbox(&self) -> &Mailbox<'static> {
        &self.mailbox
    }

    /// `NOTIFY=` as the client gave it.
    pub fn notify(&self) -> Option<Notify> {
        self.notify
    }

    /// `ORCPT=` as the client gave it (xtext-encoded).
    pub fn orcpt(&self) -> Option<&OriginalRecipient<'static>> {
        self.orcpt.as_ref()
    }

    /// Where it stands.
    pub fn state(&self) -> &RecipientState {
        &self.state
    }

    /// Whether the delay notice for it has gone out (it goes once).
    pub fn delay_notified(&self) -> bool {
        self.delay_notified
    }

    /// The RCPT parameters to pass on to a next hop that offers DSN.
    pub fn rcpt_parameters(&self) -> RcptParameters<'static> {
        RcptParameters {
            notify: self.notify,
            orcpt: self.orcpt.clone(),
            other: Vec::new(),
        }
    }

    /// What the sender asked to hear about. Without NOTIFY, failures only
    /// (RFC 3461 §4.1 leaves the default to us; Postfix does the same).
    pub(crate) fn wants(&self) -> (bool, bool, bool) {
        match self.notify {
            None => (false, true, false),
            Some(Notify::Never) => (false, false, false),
            Some(Notify::On {
                success,
                failure,
                delay,
            }) => (success, failure, delay),
        }
    }

    pub(crate) fn set_state(&mut self, state: RecipientState) {
        self.state = state;
    }

    pub(crate) fn set_delay_notified(&mut self) {
        self.delay_notified = true;
    }
}

/// A message in the outbound queue: the envelope, what the body needs of a
/// next hop, and each recipient's state. The body stays with the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    id: MessageId,
    reverse_path: ReversePath<'static>,
    arrival: SystemTime,
    size: u64,
    envid: Option<String>,
    ret: Option<Ret>,
    smtputf8: bool,
    eight_bit: bool,
    recipients: Vec<QueuedRecipient>,
}

impl QueuedMessage {
    /// A message of `size` octets from `reverse_path`, arrived at `arrival`,
    /// with no recipients yet.
    pub fn new(
        id: MessageId,
        reverse_path: ReversePath<'static>,
        arrival: SystemTime,
        size: u64,
    ) -> Self {
        Self {
            id,
            reverse_path,
            arrival,
            size,
            envid: None,
            ret: None,
            smtputf8: false,
            eight_bit: false,
            recipients: Vec::new(),
        }
    }

    /// Takes ENVID, RET, BODY=8BITMIME and SMTPUTF8 from the MAIL parameters
    /// the message came with.
    #[must_use]
    pub fn with_mail_parameters(mut self, params: &MailParameters<'_>) -> Self {
        self.envid = params.envid.as_deref().map(str::to_owned);
        self.ret = params.ret;
        self.eight_bit = matches!(params.body, Some(Body::EightBitMime));
        self.smtputf8 = params.smtputf8;
        self
    }

    /// Sets `ENVID=` (xtext-encoded, as on the wire).
    #[must_use]
    pub fn with_envid(mut self, envid: impl Into<String>) -> Self {
        self.envid = Some(envid.into());
        self
    }

    /// Sets `RET=`.
    #[must_use]
    pub fn with_ret(mut self, ret: Ret) -> Self {
        self.ret = Some(ret);
        self
    }

    /// Says the message needs SMTPUTF8 of every next hop (RFC 6531).
    #[must_use]
    pub fn with_smtputf8(mut self, needed: bool) -> Self {
        self.smtputf8 = needed;
        self
    }

    /// Says the body is 8-bit (`BODY=8BITMIME`, RFC 6152).
    #[must_use]
    pub fn with_eight_bit(mut self, eight_bit: bool) -> Self {
        self.eight_bit = eight_bit;
        self
    }

    /// Adds a recipient; a second copy of the same mailbox is dropped, so
    /// nobody gets the message twice from one transaction.
    #[must_use]
    pub fn with_recipient(mut self, recipient: QueuedRecipient) -> Self {
        if !self
            .recipients
            .iter()
            .any(|r| r.mailbox == recipient.mailbox)
        {
            self.recipients.push(recipient);
        }
        self
    }

    /// The caller's id.
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// The sender, `<>` for notices.
    pub fn reverse_path(&self) -> &ReversePath<'static> {
        &self.reverse_path
    }

    /// When the message was accepted.
    pub fn arrival(&self) -> SystemTime {
        self.arrival
    }

    /// Its size in octets.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `ENVID=`, xtext-encoded.
    pub fn envid(&self) -> Option<&str> {
        self.envid.as_deref()
    }

    /// `RET=`.
    pub fn ret(&self) -> Option<Ret> {
        self.ret
    }

    /// Whether every next hop must offer SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        self.smtputf8
    }

    /// Whether the body is 8-bit.
    pub fn is_eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// The recipients in the order they were added.
    pub fn recipients(&self) -> &[QueuedRecipient] {
        &self.recipients
    }

    /// Whether every recipient is delivered or failed: the message can go.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }

    /// The earliest time a recipient is due, if any is still open.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.recipients.iter().filter_map(|r| r.state.due()).min()
    }

    /// The MAIL parameters to send to a next hop: BODY, SMTPUTF8, and
    /// ENVID and RET when it offers DSN. SIZE is the client session's.
    pub fn mail_parameters(&self, dsn: bool) -> MailParameters<'static> {
        MailParameters {
            body: self.eight_bit.then_some(Body::EightBitMime),
            smtputf8: self.smtputf8,
            ret: self.ret.filter(|_| dsn),
            envid: self.envid.clone().filter(|_| dsn).map(Into::into),
            ..MailParameters::default()
        }
    }

    pub(crate) fn recipient_mut(&mut self, index: usize) -> &mut QueuedRecipient {
        &mut self.recipients[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postamt_smtp::{Command, EnhancedCode};
    use std::time::Duration;

    #[test]
    fn built_from_the_commands_it_came_with() {
        let Ok(Command::Mail { params: mail, .. }) = Command::parse(
            b"MAIL FROM:<anna@kolleg.de> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1",
        ) else {
            panic!()
        };
        let Ok(Command::Rcpt { params: rcpt, .. }) =
            Command::parse(b"RCPT TO:<carl@schule.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;carl+40schule.example")
        else {
            panic!()
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let msg = QueuedMessage::new(
            MessageId::new("q1"),
            "<anna@kolleg.de>".parse().unwrap(),
            at,
            1234,
        )
        .with_mail_parameters(&mail)
        .with_recipient(QueuedRecipient::from_rcpt(
            "carl@schule.example".parse().unwrap(),
            &rcpt,
        ))
        .with_recipient(QueuedRecipient::new("carl@schule.example".parse().unwrap()));
        assert_eq!(msg.recipients().len(), 1, "the second copy is dropped");
        assert!(msg.needs_smtputf8() && msg.is_eight_bit());
        assert_eq!(msg.ret(), Some(Ret::Headers));
        assert_eq!(msg.envid(), Some("QQ+2B1"));
        let r = &msg.recipients()[0];
        assert_eq!(
            r.notify(),
            Some(Notify::On {
                success: false,
                failure: true,
                delay: true
            })
        );
        assert_eq!(r.orcpt().unwrap().address, "carl+40schule.example");
        assert_eq!(r.state(), &RecipientState::Pending);
        assert_eq!(msg.next_due(), Some(SystemTime::UNIX_EPOCH));

        let mut out = Vec::new();
        Command::Mail {
            from: msg.reverse_path().clone(),
            params: msg.mail_parameters(true),
        }
        .render(&mut out);
        assert_eq!(
            out,
            b"MAIL FROM:<anna@kolleg.de> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1\r\n"
        );
        out.clear();
        Command::Mail {
            from: msg.reverse_path().clone(),
            params: msg.mail_parameters(false),
        }
        .render(&mut out);
        assert_eq!(
            out,
            b"MAIL FROM:<anna@kolleg.de> BODY=8BITMIME SMTPUTF8\r\n"
        );
    }

    #[test]
    fn states() {
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(300);
        let reply = Reply::new(451, Some(EnhancedCode::SYSTEM_TEMPORARY), "later");
        let deferred = RecipientState::Deferred {
            attempts: 2,
            next_attempt: later,
            last_reply: reply.clone(),
        };
        assert_eq!(deferred.due(), Some(later));
        assert_eq!(deferred.attempts(), 2);
        assert!(!deferred.is_final());
        let done = RecipientState::Delivered { reply };
        assert!(done.is_final() && done.due().is_none());
        let msg = QueuedMessage::new(MessageId::new("m"), ReversePath::Null, later, 1)
            .with_recipient(QueuedRecipient::new("a@b.example".parse().unwrap()).with_state(done));
        assert!(msg.is_done());
        assert_eq!(msg.next_due(), None);
    }
}
