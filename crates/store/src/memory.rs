//! A store that keeps everything in memory, for tests and demos.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::crlf::{CrlfReader, crlf_size};
use crate::store::{check_indices, unique_recipients};
use crate::{Delivery, MailStore, MailboxName, Maildrop, MessageInfo, StoreError, Uid};

/// A thread-safe [`MailStore`] without files. Clones share the same mail.
///
/// Messages are kept as delivered and served with CRLF line ends, like
/// [`Maildir`](crate::Maildir) does.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    mailboxes: HashMap<MailboxName, Vec<Stored>>,
    locked: HashSet<MailboxName>,
    next_uid: u64,
}

#[derive(Clone)]
struct Stored {
    info: MessageInfo,
    bytes: Arc<[u8]>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts, not contents: a store may hold megabytes of mail.
        let shared = self.lock();
        let mut mailboxes: Vec<(&str, usize)> = shared
            .mailboxes
            .iter()
            .map(|(name, messages)| (name.as_str(), messages.len()))
            .collect();
        mailboxes.sort_unstable();
        f.debug_struct("MemoryStore")
            .field("mailboxes", &mailboxes)
            .field("locked", &shared.locked.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

// A panic elsewhere while holding the lock leaves the maps consistent (every
// update is a single insert or retain), so a poisoned lock is still usable.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MailStore for MemoryStore {
    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError> {
        Ok(Box::new(MemoryDelivery {
            shared: Arc::clone(&self.shared),
            recipients: unique_recipients(recipients)?,
            bytes: Vec::new(),
        }))
    }

    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError> {
        let mut shared = self.lock();
        if !shared.locked.insert(mailbox.clone()) {
            return Err(StoreError::Locked(mailbox.clone()));
        }
        let messages = shared.mailboxes.get(mailbox).cloned().unwrap_or_default();
        drop(shared);
        Ok(Box::new(MemoryMaildrop {
            shared: Arc::clone(&self.shared),
            mailbox: mailbox.clone(),
            infos: messages.iter().map(|m| m.info.clone()).collect(),
            messages,
        }))
    }
}

struct MemoryDelivery {
    shared: Arc<Mutex<Shared>>,
    recipients: Vec<MailboxName>,
    bytes: Vec<u8>,
}

impl Delivery for MemoryDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let size = crlf_size(&self.bytes);
        let bytes: Arc<[u8]> = self.bytes.into();
        let mut shared = lock(&self.shared);
        shared.next_uid += 1;
        let uid = Uid::from_name(&format!("m{}", shared.next_uid));
        for mailbox in self.recipients {
            let stored = Stored {
                info: MessageInfo {
                    uid: uid.clone(),
                    size,
                },
                bytes: Arc::clone(&bytes),
            };
            shared.mailboxes.entry(mailbox).or_default().push(stored);
        }
        Ok(())
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
        let doomed: HashSet<&Uid> = indices
            .iter()
            .map(|&i| &self.messages[i].info.uid)
            .collect();
        let mut shared = lock(&self.shared);
        if let Some(stored) = shared.mailboxes.get_mut(&self.mailbox) {
            stored.retain(|m| !doomed.contains(&m.info.uid));
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
            r#"MemoryStore { mailboxes: [("anna", 1)], locked: 1 }"#
        );
    }
}
