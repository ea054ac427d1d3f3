//! A store that keeps everything in memory, for tests and demos.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::crlf::{CrlfReader, crlf_size};
use crate::store::{DEFAULT_MAILBOX_SIZE_LIMIT, check_indices, fits, unique_recipients};
use crate::{Delivery, MailStore, MailView, MailboxName, Maildrop, MessageInfo, StoreError, Uid};

/// The default limit of all a [`MemoryStore`] holds: 512 MiB, so that a
/// server keeping mail in memory cannot be made to grow without bound.
pub const DEFAULT_MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

/// A thread-safe [`MailStore`] without files. Clones share the same mail
/// and the same limits.
///
/// Messages are kept as delivered and served with CRLF line ends, like
/// [`Maildir`](crate::Maildir) does.
///
/// Two limits count stored octets (as written): each mailbox's
/// ([`DEFAULT_MAILBOX_SIZE_LIMIT`] unless changed) and the whole store's
/// ([`DEFAULT_MEMORY_LIMIT`]), where a message for several mailboxes counts
/// once, since they share it. Deliveries in progress reserve what they have
/// written, so concurrent ones never pass a limit together.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    mailboxes: HashMap<MailboxName, Mailbox>,
    locked: HashSet<MailboxName>,
    next_uid: u64,
    mailbox_limit: Option<u64>,
    total_limit: Option<u64>,
    /// Octets held: every stored message once, plus what deliveries in
    /// progress have written.
    used: u64,
    /// How many mailboxes hold each message, by its sequence number.
    copies: HashMap<u64, usize>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            mailboxes: HashMap::new(),
            locked: HashSet::new(),
            next_uid: 0,
            mailbox_limit: Some(DEFAULT_MAILBOX_SIZE_LIMIT),
            total_limit: Some(DEFAULT_MEMORY_LIMIT),
            used: 0,
            copies: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct Mailbox {
    messages: Vec<Stored>,
    /// Octets of `messages`.
    size: u64,
    /// Octets written for this mailbox by deliveries in progress.
    pending: u64,
}

#[derive(Clone)]
struct Stored {
    info: MessageInfo,
    seq: u64,
    bytes: Arc<[u8]>,
}

/// Why a delivery was refused, kept to answer every later call the same way.
#[derive(Clone, Debug)]
enum Refusal {
    Mailbox { mailbox: MailboxName, limit: u64 },
    Total { limit: u64 },
}

impl Refusal {
    fn error(&self) -> StoreError {
        match self {
            Self::Mailbox { mailbox, limit } => StoreError::QuotaExceeded {
                mailbox: mailbox.clone(),
                limit: *limit,
            },
            Self::Total { limit } => StoreError::StorageFull { limit: *limit },
        }
    }
}

impl Shared {
    /// What a mailbox takes now, stored and being written.
    fn taken(&self, mailbox: &MailboxName) -> u64 {
        self.mailboxes
            .get(mailbox)
            .map_or(0, |m| m.size + m.pending)
    }

    /// Whether `add` octets fit in every one of `mailboxes` and in the store.
    fn room(&self, mailboxes: &[MailboxName], add: u64) -> Result<(), Refusal> {
        for mailbox in mailboxes {
            if !fits(self.taken(mailbox), add, self.mailbox_limit) {
                return Err(Refusal::Mailbox {
                    mailbox: mailbox.clone(),
                    limit: self.mailbox_limit.unwrap_or(u64::MAX),
                });
            }
        }
        if !fits(self.used, add, self.total_limit) {
            return Err(Refusal::Total {
                limit: self.total_limit.unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }

    fn reserve(&mut self, mailboxes: &[MailboxName], add: u64) {
        for mailbox in mailboxes {
            self.mailboxes.entry(mailbox.clone()).or_default().pending += add;
        }
        self.used += add;
    }

    fn release(&mut self, mailboxes: &[MailboxName], reserved: u64) {
        for mailbox in mailboxes {
            if let Some(m) = self.mailboxes.get_mut(mailbox) {
                m.pending -= reserved;
            }
        }
        self.used -= reserved;
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts, not contents: a store may hold megabytes of mail.
        let shared = self.lock();
        let mut mailboxes: Vec<(&str, usize)> = shared
            .mailboxes
            .iter()
            .filter(|(_, m)| !m.messages.is_empty())
            .map(|(name, m)| (name.as_str(), m.messages.len()))
            .collect();
        mailboxes.sort_unstable();
        f.debug_struct("MemoryStore")
            .field("mailboxes", &mailboxes)
            .field("locked", &shared.locked.len())
            .field("octets", &shared.used)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the limit of each mailbox's stored octets; `None` means no
    /// limit (and `Some(0)`, a mailbox that takes nothing).
    pub fn with_mailbox_size_limit(self, limit: Option<u64>) -> Self {
        self.lock().mailbox_limit = limit;
        self
    }

    /// Sets the limit of all the octets the store holds; `None` means no
    /// limit.
    pub fn with_total_size_limit(self, limit: Option<u64>) -> Self {
        self.lock().total_limit = limit;
        self
    }

    /// The limit of each mailbox, in octets.
    pub fn mailbox_size_limit(&self) -> Option<u64> {
        self.lock().mailbox_limit
    }

    /// The limit of the whole store, in octets.
    pub fn total_size_limit(&self) -> Option<u64> {
        self.lock().total_limit
    }

    /// Octets stored in `mailbox` (as written, before CRLF rewriting).
    pub fn mailbox_size(&self, mailbox: &MailboxName) -> u64 {
        self.lock().mailboxes.get(mailbox).map_or(0, |m| m.size)
    }

    /// Octets the store holds: each stored message once, and what
    /// deliveries in progress have written.
    pub fn total_size(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

// Nothing that can panic runs between the steps of an update under the lock
// (its arithmetic only undoes what was added), so a poisoned lock still
// guards consistent maps and counts.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MailStore for MemoryStore {
    /// Everything is in memory.
    fn blocks(&self) -> bool {
        false
    }

    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError> {
        Ok(Box::new(MemoryDelivery {
            shared: Arc::clone(&self.shared),
            recipients: unique_recipients(recipients)?,
            bytes: Vec::new(),
            refused: None,
        }))
    }

    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError> {
        let mut shared = self.lock();
        if !shared.locked.insert(mailbox.clone()) {
            return Err(StoreError::Locked(mailbox.clone()));
        }
        let messages = shared
            .mailboxes
            .get(mailbox)
            .map(|m| m.messages.clone())
            .unwrap_or_default();
        drop(shared);
        Ok(Box::new(MemoryMaildrop {
            shared: Arc::clone(&self.shared),
            mailbox: mailbox.clone(),
            infos: messages.iter().map(|m| m.info.clone()).collect(),
            messages,
        }))
    }

    fn check_room(&self, mailbox: &MailboxName, size: u64) -> Result<(), StoreError> {
        self.lock()
            .room(std::slice::from_ref(mailbox), size)
            .map_err(|refusal| refusal.error())
    }
}

impl MailView for MemoryStore {
    fn mailboxes(&self) -> Result<Vec<MailboxName>, StoreError> {
        let mut found: Vec<MailboxName> = self.lock().mailboxes.keys().cloned().collect();
        found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(found)
    }

    fn peek(&self, mailbox: &MailboxName) -> Result<Vec<MessageInfo>, StoreError> {
        Ok(self
            .lock()
            .mailboxes
            .get(mailbox)
            .map_or_else(Vec::new, |m| {
                m.messages.iter().map(|s| s.info.clone()).collect()
            }))
    }

    fn peek_message(
        &self,
        mailbox: &MailboxName,
        uid: &Uid,
    ) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let shared = self.lock();
        let bytes = shared
            .mailboxes
            .get(mailbox)
            .and_then(|m| m.messages.iter().find(|s| &s.info.uid == uid))
            .map(|s| Arc::clone(&s.bytes));
        Ok(bytes.map(|b| Box::new(CrlfReader::new(Cursor::new(b))) as Box<dyn Read + Send>))
    }
}

/// A message being written. `bytes.len()` octets are reserved in the store
/// for each recipient until it commits, is refused or drops.
struct MemoryDelivery {
    shared: Arc<Mutex<Shared>>,
    recipients: Vec<MailboxName>,
    bytes: Vec<u8>,
    refused: Option<Refusal>,
}

impl Delivery for MemoryDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if let Some(refusal) = &self.refused {
            return Err(refusal.error());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let add = chunk.len() as u64;
        let mut shared = lock(&self.shared);
        if let Err(refusal) = shared.room(&self.recipients, add) {
            // Void: give back the reservation and the memory at once.
            shared.release(&self.recipients, self.bytes.len() as u64);
            drop(shared);
            self.bytes = Vec::new();
            let error = refusal.error();
            self.refused = Some(refusal);
            return Err(error);
        }
        shared.reserve(&self.recipients, add);
        drop(shared);
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if let Some(refusal) = &self.refused {
            return Err(refusal.error());
        }
        let written = std::mem::take(&mut self.bytes);
        let len = written.len() as u64;
        let size = crlf_size(&written);
        let bytes: Arc<[u8]> = written.into();
        let recipients = std::mem::take(&mut self.recipients);
        let mut shared = lock(&self.shared);
        // The reservation becomes the stored message: `used` already counts it.
        shared.next_uid += 1;
        let seq = shared.next_uid;
        let uid = Uid::from_name(&format!("m{seq}"));
        shared.copies.insert(seq, recipients.len());
        for mailbox in recipients {
            let stored = Stored {
                info: MessageInfo {
                    uid: uid.clone(),
                    size,
                },
                seq,
                bytes: Arc::clone(&bytes),
            };
            let m = shared.mailboxes.entry(mailbox).or_default();
            m.pending -= len;
            m.size += len;
            m.messages.push(stored);
        }
        Ok(())
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        // Aborted: give back what was reserved (nothing after a commit or a
        // refusal, which emptied `bytes`).
        if !self.bytes.is_empty() {
            lock(&self.shared).release(&self.recipients, self.bytes.len() as u64);
        }
    }
}

struct MemoryMaildrop {
    shared: Arc<Mutex<Shared>>,
    mailbox: MailboxName,
    infos: Vec<MessageInfo>,
    messages: Vec<Stored>,
}

impl Maildrop for MemoryMaildrop {
    fn mailbox(&self) -> &MailboxName {
        &self.mailbox
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn read_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        check_indices(&[index], self.messages.len())?;
        let bytes = Arc::clone(&self.messages[index].bytes);
        Ok(Box::new(CrlfReader::new(Cursor::new(bytes))))
    }

    fn commit_deletions(self: Box<Self>, indices: &[usize]) -> Result<(), StoreError> {
        check_indices(indices, self.messages.len())?;
        let doomed: HashSet<u64> = indices.iter().map(|&i| self.messages[i].seq).collect();
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        if let Some(mailbox) = shared.mailboxes.get_mut(&self.mailbox) {
            let mut freed = 0;
            mailbox.messages.retain(|m| {
                if !doomed.contains(&m.seq) {
                    return true;
                }
                let len = m.bytes.len() as u64;
                freed += len;
                // The last mailbox holding a message gives its octets back.
                if let Some(copies) = shared.copies.get_mut(&m.seq) {
                    *copies -= 1;
                    if *copies == 0 {
                        shared.copies.remove(&m.seq);
                        shared.used -= len;
                    }
                }
                false
            });
            mailbox.size -= freed;
        }
        Ok(())
        // Dropping `self` releases the lock.
    }
}

impl Drop for MemoryMaildrop {
    fn drop(&mut self) {
        lock(&self.shared).locked.remove(&self.mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_counts_not_mail() {
        let store = MemoryStore::new();
        let anna = MailboxName::new("anna").unwrap();
        let mut delivery = store.begin_delivery(std::slice::from_ref(&anna)).unwrap();
        delivery.write_chunk(b"Subject: geheim\r\n").unwrap();
        delivery.commit().unwrap();
        let _held = store.open_maildrop(&anna).unwrap();
        let debug = format!("{store:?}");
        assert_eq!(
            debug,
            r#"MemoryStore { mailboxes: [("anna", 1)], locked: 1, octets: 17 }"#
        );
    }
}
