//! The outbound queue: messages a server has accepted for other servers and
//! not yet passed on, each with a small record of where it stands.
//!
//! The record's format belongs to whoever forwards (`postamt-relay`); the
//! spool keeps it as opaque bytes, durably, next to the message. A message is
//! spooled in two steps, like a delivery: [`Spool::begin`] names it and
//! takes its bytes in chunks, [`SpoolWriter::commit`] makes message and
//! record durable together (SMTP may then say 250). Afterwards the forwarder
//! replaces the record as recipients are delivered or deferred
//! ([`Spool::update`]) and removes the message once nothing is left to do
//! ([`Spool::remove`]). After a restart, [`Spool::list`] gives everything
//! back. [`MemorySpool`] keeps the queue in memory,
//! [`FolderSpool`](crate::FolderSpool) in a folder, durably.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, PoisonError};

use crate::StoreError;

/// The name of one spooled message: 1 to 64 characters of `A-Z a-z 0-9 . -
/// _`, so that it can be a file name anywhere.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolId(String);

impl SpoolId {
    /// Checks `id` against the rule above.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        let fine = !id.is_empty()
            && id.len() <= 64
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if fine {
            Ok(Self(id))
        } else {
            Err(StoreError::InvalidSpoolId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpoolId({})", self.0)
    }
}

/// One spooled message as [`Spool::list`] gives it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// Its name.
    pub id: SpoolId,
    /// Its record, as last committed or updated.
    pub record: Vec<u8>,
    /// The message's octets, as written.
    pub size: u64,
}

/// Where messages wait to be passed on. Synchronous and object-safe like
/// [`MailStore`](crate::MailStore).
pub trait Spool: Send + Sync {
    /// Starts spooling one message under a new, unique id.
    fn begin(&self) -> Result<Box<dyn SpoolWriter>, StoreError>;

    /// Every committed message, oldest first.
    fn list(&self) -> Result<Vec<SpoolEntry>, StoreError>;

    /// Streams the octets of message `id`.
    fn read(&self, id: &SpoolId) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Replaces the record of `id`. When this returns `Ok` the new record is
    /// durable; after a crash either the old or the new one is read back,
    /// never a mix.
    fn update(&self, id: &SpoolId, record: &[u8]) -> Result<(), StoreError>;

    /// Removes message `id` and its record, durably. Removing what is not
    /// there is an error ([`StoreError::NoSuchSpoolEntry`]).
    fn remove(&self, id: &SpoolId) -> Result<(), StoreError>;

    /// Whether a call (or a call on what it returns) may wait on a disk or
    /// a network, as [`MailStore::blocks`](crate::MailStore::blocks) says
    /// of a store; the default says it may.
    fn blocks(&self) -> bool {
        true
    }

    /// Takes charge of up to `max` committed messages that no front end is
    /// passing on, oldest first, so that several front ends can share one
    /// queue and each message is passed on by one of them at a time.
    ///
    /// A shared spool (`PgSpool`, cargo feature `postgres`) hands each message to one
    /// claimer: the messages it committed itself, and those claimed here,
    /// stay this spool's until [`release`](Spool::release),
    /// [`remove`](Spool::remove) or until its process stops renewing the
    /// claim (it died); then another front end's `claim` takes them over.
    /// A runner calls it once at start instead of [`list`](Spool::list) and
    /// then every little while, skipping ids it already has queued.
    ///
    /// A spool one process owns ([`MemorySpool`], [`FolderSpool`]) has no one
    /// to share with: every message is always that process's, so the default
    /// gives the first `max` of [`list`](Spool::list).
    ///
    /// [`FolderSpool`]: crate::FolderSpool
    fn claim(&self, max: usize) -> Result<Vec<SpoolEntry>, StoreError> {
        let mut entries = self.list()?;
        entries.truncate(max);
        Ok(entries)
    }

    /// Gives up this spool's claim on `id` (a message it will not pass on
    /// now), so another front end's [`claim`](Spool::claim) may take it.
    /// Releasing what this spool does not hold changes nothing. The default,
    /// for spools one process owns, does nothing.
    fn release(&self, id: &SpoolId) -> Result<(), StoreError> {
        let _ = id;
        Ok(())
    }
}

/// One message being spooled; dropping it without
/// [`commit`](SpoolWriter::commit) leaves nothing behind.
pub trait SpoolWriter: Send {
    /// The id the message will have.
    fn id(&self) -> &SpoolId;

    /// Appends the next octets of the message.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError>;

    /// Makes the message and its first `record` durable, together: on `Ok`
    /// both are there after any crash, on `Err` neither is listed.
    fn commit(self: Box<Self>, record: &[u8]) -> Result<(), StoreError>;
}

/// A [`Spool`] in memory, for tests and for a server that keeps mail in
/// memory anyway. Clones share the same queue.
#[derive(Clone, Default)]
pub struct MemorySpool {
    shared: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    next: u64,
    /// By the order they were begun: the id, the record, the octets.
    entries: BTreeMap<u64, Queued>,
}

type Queued = (SpoolId, Vec<u8>, Arc<Vec<u8>>);

impl MemorySpool {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemorySpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySpool")
            .field("messages", &self.lock().entries.len())
            .finish()
    }
}

impl Queue {
    fn find(&mut self, id: &SpoolId) -> Result<u64, StoreError> {
        self.entries
            .iter()
            .find(|(_, (known, _, _))| known == id)
            .map(|(&n, _)| n)
            .ok_or_else(|| StoreError::NoSuchSpoolEntry(id.clone()))
    }
}

impl Spool for MemorySpool {
    /// Everything is in memory.
    fn blocks(&self) -> bool {
        false
    }

    fn begin(&self) -> Result<Box<dyn SpoolWriter>, StoreError> {
        let mut queue = self.lock();
        queue.next += 1;
        let n = queue.next;
        Ok(Box::new(MemoryWriter {
            spool: self.clone(),
            n,
            id: SpoolId::new(format!("m{n:08}"))?,
            data: Vec::new(),
        }))
    }

    fn list(&self) -> Result<Vec<SpoolEntry>, StoreError> {
        Ok(self
            .lock()
            .entries
            .values()
            .map(|(id, record, data)| SpoolEntry {
                id: id.clone(),
                record: record.clone(),
                size: data.len() as u64,
            })
            .collect())
    }

    fn read(&self, id: &SpoolId) -> Result<Box<dyn Read + Send>, StoreError> {
        let mut queue = self.lock();
        let n = queue.find(id)?;
        let data = Arc::clone(&queue.entries[&n].2);
        Ok(Box::new(Cursor::new(SharedBytes(data))))
    }

    fn update(&self, id: &SpoolId, record: &[u8]) -> Result<(), StoreError> {
        let mut queue = self.lock();
        let n = queue.find(id)?;
        if let Some(entry) = queue.entries.get_mut(&n) {
            entry.1 = record.to_vec();
        }
        Ok(())
    }

    fn remove(&self, id: &SpoolId) -> Result<(), StoreError> {
        let mut queue = self.lock();
        let n = queue.find(id)?;
        queue.entries.remove(&n);
        Ok(())
    }
}

/// Message octets shared between the queue and its readers.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

struct MemoryWriter {
    spool: MemorySpool,
    n: u64,
    id: SpoolId,
    data: Vec<u8>,
}

impl SpoolWriter for MemoryWriter {
    fn id(&self) -> &SpoolId {
        &self.id
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    fn commit(self: Box<Self>, record: &[u8]) -> Result<(), StoreError> {
        let Self { spool, n, id, data } = *self;
        spool
            .lock()
            .entries
            .insert(n, (id, record.to_vec(), Arc::new(data)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(SpoolId::new("m00000001").is_ok());
        assert!(SpoolId::new("1764612345.4711_a-b").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(SpoolId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_spool_keeps_order_records_and_bytes() {
        let spool = MemorySpool::new();
        let mut a = spool.begin().unwrap();
        let mut b = spool.begin().unwrap();
        let (ia, ib) = (a.id().clone(), b.id().clone());
        assert_ne!(ia, ib);
        a.write_chunk(b"Subject: a\r\n").unwrap();
        b.write_chunk(b"Subject: b\r\n").unwrap();
        // Not listed before commit; dropped without commit: gone.
        assert!(spool.list().unwrap().is_empty());
        b.commit(b"record b").unwrap();
        a.commit(b"record a").unwrap();
        let dropped = spool.begin().unwrap();
        drop(dropped);
        let listed = spool.list().unwrap();
        let ids: Vec<_> = listed.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, [ia.clone(), ib.clone()], "oldest first");
        assert_eq!(listed[0].record, b"record a");
        assert_eq!(listed[0].size, 12);
        spool.update(&ia, b"record a2").unwrap();
        assert_eq!(spool.list().unwrap()[0].record, b"record a2");
        let mut text = String::new();
        spool.read(&ib).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "Subject: b\r\n");
        spool.remove(&ia).unwrap();
        assert!(matches!(
            spool.remove(&ia),
            Err(StoreError::NoSuchSpoolEntry(id)) if id == ia
        ));
        assert_eq!(spool.list().unwrap().len(), 1);
    }
}
