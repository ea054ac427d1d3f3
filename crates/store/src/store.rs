//! The traits a server uses to deliver mail and to serve a maildrop.
//!
//! They are synchronous on purpose: file-system work blocks anyway, and an
//! async server calls them from its blocking pool. Every trait is object-safe
//! and every value they return is owned (`'static`), so a delivery or a
//! maildrop can move into a blocking task and live as long as the session.

use std::io::Read;

use crate::{MailboxName, StoreError, Uid};

/// A place where mail is delivered and from which it is fetched.
pub trait MailStore: Send + Sync {
    /// Starts writing one message for every mailbox in `recipients`
    /// (duplicates are delivered once). Fails with
    /// [`StoreError::NoRecipients`] when the list is empty.
    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError>;

    /// Opens `mailbox` for one POP3 session, exclusively: while the returned
    /// maildrop lives, another open of the same mailbox fails with
    /// [`StoreError::Locked`]. A mailbox that never received mail opens empty.
    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError>;

    /// Asks, before a message is sent, whether `mailbox` has room for one of
    /// `size` octets (0: size unknown, asks only whether the mailbox is below
    /// its limit), so that SMTP can refuse the recipient at RCPT. Fails with
    /// [`StoreError::QuotaExceeded`] or [`StoreError::StorageFull`] when not.
    ///
    /// Only advice: the room may be gone when the message comes, and
    /// [`Delivery::write_chunk`] checks again. The default, for stores
    /// without limits, always has room.
    fn check_room(&self, mailbox: &MailboxName, size: u64) -> Result<(), StoreError> {
        let _ = (mailbox, size);
        Ok(())
    }

    /// Whether a call (or a call on what it returns) may wait on a disk or
    /// a network. An event loop calls a store that does not on the loop
    /// itself and hands one that does to worker threads; the default says
    /// it may.
    fn blocks(&self) -> bool {
        true
    }
}

/// The default limit of one mailbox's stored octets: 50 MiB, the order of
/// Postfix's `mailbox_size_limit` (51 200 000 octets).
pub const DEFAULT_MAILBOX_SIZE_LIMIT: u64 = 50 * 1024 * 1024;

/// Whether `add` more octets fit beside `used` under `limit` (`None`: no
/// limit). Adding nothing asks whether anything fits at all.
pub(crate) fn fits(used: u64, add: u64, limit: Option<u64>) -> bool {
    match limit {
        None => true,
        Some(limit) if add == 0 => used < limit,
        Some(limit) => used.checked_add(add).is_some_and(|total| total <= limit),
    }
}

/// One message being delivered, written in chunks of any size so that it
/// never has to fit in memory.
///
/// Dropping it without [`commit`](Delivery::commit) aborts: nothing of it
/// is left in any mailbox.
pub trait Delivery: Send {
    /// Appends the next bytes of the message, as they will be stored (the SMTP
    /// side hands over CRLF line ends, after removing the dot-stuffing).
    ///
    /// A chunk that would take a recipient's mailbox (or the store) past its
    /// size limit is refused before any of it is kept, with
    /// [`StoreError::QuotaExceeded`] (or [`StoreError::StorageFull`]); the
    /// delivery is then void, holds nothing, and every later call fails
    /// the same way.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError>;

    /// Makes the message part of every recipient's mailbox. When this returns
    /// `Ok`, the message is durable (SMTP may send its 250); on `Err`, no
    /// recipient has it.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// What a listing says about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// The same id in every session, usable as the POP3 UIDL.
    pub uid: Uid,
    /// Octets as POP3 lists and sends them: the stored bytes with their line
    /// ends made CRLF by the rule of [`postamt_wire::crlf`] (bare CR and
    /// bare LF become CRLF, a missing final line end is added), which is
    /// what [`Maildrop::read_message`] yields.
    pub size: u64,
}

/// One mailbox opened exclusively for one POP3 session.
///
/// The listing is fixed when the maildrop opens: mail delivered meanwhile
/// shows up in the next session. Dropping the maildrop without
/// [`commit_deletions`](Maildrop::commit_deletions) changes nothing and
/// releases the lock.
pub trait Maildrop: Send {
    /// The mailbox this maildrop holds.
    fn mailbox(&self) -> &MailboxName;

    /// The messages, in a stable order. POP3 message number `n` is index
    /// `n - 1` here.
    fn messages(&self) -> &[MessageInfo];

    /// Streams message `index` with CRLF line ends (by the rule of
    /// [`postamt_wire::crlf`]), exactly `messages()[index].size` octets,
    /// without loading it whole.
    fn read_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Deletes the messages at `indices` (out-of-range indices are an error
    /// and delete nothing; repeats are harmless), then releases the lock.
    /// When this returns `Ok`, the deletions are durable.
    fn commit_deletions(self: Box<Self>, indices: &[usize]) -> Result<(), StoreError>;
}

/// Checks every index against a listing of `count` messages.
pub(crate) fn check_indices(indices: &[usize], count: usize) -> Result<(), StoreError> {
    match indices.iter().find(|&&index| index >= count) {
        Some(&index) => Err(StoreError::NoSuchMessage { index, count }),
        None => Ok(()),
    }
}

/// The recipients without repeats, in their first order.
pub(crate) fn unique_recipients(
    recipients: &[MailboxName],
) -> Result<Vec<MailboxName>, StoreError> {
    if recipients.is_empty() {
        return Err(StoreError::NoRecipients);
    }
    let mut unique: Vec<MailboxName> = Vec::with_capacity(recipients.len());
    for mailbox in recipients {
        if !unique.contains(mailbox) {
            unique.push(mailbox.clone());
        }
    }
    Ok(unique)
}

/// A look into the mailboxes that changes nothing and takes no lock, for a
/// monitor such as the toy server's teacher's page: a POP3 session is never
/// turned away (`-ERR [IN-USE]`) because someone looks, and mail that a
/// session reads or deletes meanwhile is simply seen so a moment later.
pub trait MailView: Send + Sync {
    /// The mailboxes that hold or have held mail, sorted by name.
    fn mailboxes(&self) -> Result<Vec<MailboxName>, StoreError>;

    /// The messages of `mailbox` now, oldest first, read or not (a
    /// mailbox that never got mail has none). Sizes and ids are those a
    /// maildrop would list.
    fn peek(&self, mailbox: &MailboxName) -> Result<Vec<MessageInfo>, StoreError>;

    /// Message `uid` of `mailbox` with CRLF line ends, as a maildrop reads
    /// it; `None` when it is gone (deleted since the listing).
    fn peek_message(
        &self,
        mailbox: &MailboxName,
        uid: &Uid,
    ) -> Result<Option<Box<dyn Read + Send>>, StoreError>;
}
