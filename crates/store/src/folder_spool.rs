//! The outbound queue in a folder, with Maildir's rules for durable files.
//!
//! See [`FolderSpool`] for the layout and why a crash leaves only whole
//! entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::maildir::{STALE_TMP_AGE, sync_dir};
use crate::{Spool, SpoolEntry, SpoolId, SpoolWriter, StoreError};

/// Ids and temporary names taken by this process, across all spools.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A [`Spool`] in a folder of plain files, durable across crashes.
///
/// Layout under the spool folder:
///
/// - `tmp/`: files being written: a message (`<id>`), its first record
///   (`<id>.rec`), a replacement record (`<id>.<n>.upd`);
/// - `msg/<id>`: a committed message's octets;
/// - `rec/<id>`: its record. **A message is in the queue exactly when
///   `rec/<id>` and `msg/<id>` both exist**; everything else is a leftover.
///
/// Ids are `<unix seconds, 10 digits>.<microseconds, 6 digits>_<pid>_<n>`
/// ([`SpoolId`]-valid), taken when [`Spool::begin`] is called: the time and
/// pid keep them unique across restarts and between processes, `n` (a
/// per-process counter) within one process, and a name already taken in
/// any of the three folders is never reused. [`Spool::list`] sorts by time
/// and counter, so messages come back in the order they were begun (as far
/// as the clock goes forward).
///
/// # Why a crash leaves only whole entries
///
/// - **commit**: the message file is fsynced, the record written to
///   `tmp/<id>.rec` and fsynced, the message linked into `msg/` and `msg/`
///   fsynced, and only then the record linked into `rec/` and `rec/`
///   fsynced. A record name therefore always points at a whole record and a
///   durable message. A crash before the record's link leaves a message
///   without a record: not listed. A crash after the link but before `rec/`
///   is fsynced may leave the entry or not; commit had not returned, so
///   the client had no 250 yet and sends again: at worst a duplicate, never
///   a loss (RFC 5321 §6.1).
/// - **update**: the new record is written to a new file in `tmp/`,
///   fsynced, renamed over `rec/<id>` (atomic: the name points at the old
///   or the new file, both whole), and `rec/` is fsynced before `Ok`.
/// - **remove**: the record goes first (`rec/` fsynced), then the message
///   (`msg/` fsynced). A crash between leaves a message without a record:
///   not listed.
///
/// Leftovers (files in `tmp/`, messages without a record, records without a
/// message) are never listed, and [`Spool::list`] removes those last changed
/// more than [`STALE_TMP_AGE`] ago, as Maildir readers do with `tmp/`: the
/// age keeps a listing from another process (an admin's `queue` command)
/// from removing a message that a running server is committing right now.
///
/// One process owns a spool folder and its clones share it (there are no
/// file locks); each id is changed by one caller at a time (an update and a
/// remove of the same id must not race). Other processes may list it.
#[derive(Clone, Debug)]
pub struct FolderSpool {
    dir: PathBuf,
    /// Whether `tmp/`, `msg/` and `rec/` are known to exist.
    ready: Arc<AtomicBool>,
}

impl FolderSpool {
    /// A spool in `dir`. Nothing is touched until first use, which creates
    /// the folders (an error then comes from that method).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ready: Arc::default(),
        }
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn msg(&self, id: &SpoolId) -> PathBuf {
        self.dir.join("msg").join(id.as_str())
    }

    fn rec(&self, id: &SpoolId) -> PathBuf {
        self.dir.join("rec").join(id.as_str())
    }

    /// Creates the three folders if missing, fsyncing their parents so that
    /// what is committed into them survives a crash.
    fn ensure_layout(&self) -> Result<(), StoreError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        for sub in ["tmp", "msg", "rec"] {
            let path = self.dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| StoreError::io("create", &path, e))?;
        }
        sync_dir(&self.dir)?;
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// A new id whose name is free in `tmp/`, `msg/` and `rec/`, with its
    /// message file created in `tmp/`.
    fn create_unique(&self) -> Result<(SpoolId, PathBuf, File), StoreError> {
        let mut attempts = 0;
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let id = SpoolId::new(format!(
                "{:010}.{:06}_{}_{n}",
                now.as_secs(),
                now.subsec_micros(),
                std::process::id()
            ))?;
            let path = self.tmp().join(id.as_str());
            let taken = self.msg(&id).exists() || self.rec(&id).exists();
            let created = if taken {
                Err(io::Error::from(io::ErrorKind::AlreadyExists))
            } else {
                OpenOptions::new().write(true).create_new(true).open(&path)
            };
            match created {
                Ok(file) => return Ok((id, path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10 => {
                    attempts += 1;
                }
                Err(e) => return Err(StoreError::io("create", &path, e)),
            }
        }
    }

    /// Whether `id` is in the queue: its record and its message are there.
    fn require(&self, id: &SpoolId) -> Result<(), StoreError> {
        for path in [self.rec(id), self.msg(id)] {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Err(StoreError::NoSuchSpoolEntry(id.clone())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NoSuchSpoolEntry(id.clone()));
                }
                Err(e) => return Err(StoreError::io("stat", path, e)),
            }
        }
        Ok(())
    }

    /// Removes leftovers last changed more than [`STALE_TMP_AGE`] before
    /// `now`: anything in `tmp/`, messages without a record, records
    /// without a message. Best effort: what cannot go now goes next time.
    fn remove_stale(&self, now: SystemTime) {
        let stale = |path: &Path| {
            fs::symlink_metadata(path).is_ok_and(|meta| {
                meta.is_file()
                    && meta.modified().is_ok_and(|mtime| {
                        now.duration_since(mtime)
                            .is_ok_and(|age| age > STALE_TMP_AGE)
                    })
            })
        };
        let names = |dir: PathBuf| {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
        };
        for path in names(self.tmp()) {
            if stale(&path) {
                let _ = fs::remove_file(path);
            }
        }
        for (sub, other) in [("msg", "rec"), ("rec", "msg")] {
            for path in names(self.dir.join(sub)) {
                let Some(name) = path.file_name() else {
                    continue;
                };
                let partner = self.dir.join(other).join(name);
                if !partner.exists() && stale(&path) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    written.map_err(|e| {
        let _ = fs::remove_file(path);
        StoreError::io("write", path, e)
    })
}

/// The order of [`Spool::list`]: time, then counter, then pid; names that
/// are not ours last.
fn sort_key(id: &SpoolId) -> (u64, u64, u64, u64) {
    let parse = || -> Option<(u64, u64, u64, u64)> {
        let (secs, rest) = id.as_str().split_once('.')?;
        let mut parts = rest.split('_');
        let micros = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let n = parts.next()?.parse().ok()?;
        Some((secs.parse().ok()?, micros, n, pid))
    };
    parse().unwrap_or((u64::MAX, u64::MAX, u64::MAX, u64::MAX))
}

impl Spool for FolderSpool {
    fn begin(&self) -> Result<Box<dyn SpoolWriter>, StoreError> {
        self.ensure_layout()?;
        let (id, tmp_msg, file) = self.create_unique()?;
        Ok(Box::new(FolderWriter {
            spool: self.clone(),
            tmp_rec: self.tmp().join(format!("{id}.rec")),
            id,
            tmp_msg,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
        }))
    }

    fn list(&self) -> Result<Vec<SpoolEntry>, StoreError> {
        self.ensure_layout()?;
        self.remove_stale(SystemTime::now());
        let rec_dir = self.dir.join("rec");
        let mut entries = Vec::new();
        for entry in fs::read_dir(&rec_dir).map_err(|e| StoreError::io("read", &rec_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &rec_dir, e))?;
            // Names that are not ids were not written by us.
            let Some(id) = entry
                .file_name()
                .into_string()
                .ok()
                .and_then(|name| SpoolId::new(name).ok())
            else {
                continue;
            };
            let size = match fs::symlink_metadata(self.msg(&id)) {
                Ok(meta) if meta.is_file() => meta.len(),
                // A record without its message: a leftover.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", self.msg(&id), e)),
            };
            let record = match fs::read(entry.path()) {
                Ok(record) => record,
                // Removed while we listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("read", entry.path(), e)),
            };
            entries.push(SpoolEntry { id, record, size });
        }
        entries.sort_by_cached_key(|e| (sort_key(&e.id), e.id.clone()));
        Ok(entries)
    }

    fn read(&self, id: &SpoolId) -> Result<Box<dyn Read + Send>, StoreError> {
        self.ensure_layout()?;
        self.require(id)?;
        let path = self.msg(id);
        match File::open(&path) {
            Ok(file) => Ok(Box::new(BufReader::new(file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NoSuchSpoolEntry(id.clone()))
            }
            Err(e) => Err(StoreError::io("open", path, e)),
        }
    }

    fn update(&self, id: &SpoolId, record: &[u8]) -> Result<(), StoreError> {
        self.ensure_layout()?;
        self.require(id)?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp().join(format!("{id}.{n}.upd"));
        write_synced(&tmp, record)?;
        let rec = self.rec(id);
        if let Err(e) = fs::rename(&tmp, &rec) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("rename", rec, e));
        }
        sync_dir(&self.dir.join("rec"))
    }

    fn remove(&self, id: &SpoolId) -> Result<(), StoreError> {
        self.ensure_layout()?;
        self.require(id)?;
        let rec = self.rec(id);
        match fs::remove_file(&rec) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchSpoolEntry(id.clone()));
            }
            Err(e) => return Err(StoreError::io("remove", rec, e)),
        }
        sync_dir(&self.dir.join("rec"))?;
        let msg = self.msg(id);
        match fs::remove_file(&msg) {
            Ok(()) => sync_dir(&self.dir.join("msg")),
            // Not listed any more, so gone as far as anyone can tell.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", msg, e)),
        }
    }
}

#[derive(Debug)]
struct FolderWriter {
    spool: FolderSpool,
    id: SpoolId,
    tmp_msg: PathBuf,
    tmp_rec: PathBuf,
    /// `None` after a failed write: the message is void.
    file: Option<BufWriter<File>>,
}

impl FolderWriter {
    fn void(&self) -> StoreError {
        StoreError::io(
            "write",
            &self.tmp_msg,
            io::Error::other("an earlier write failed; the message is void"),
        )
    }

    /// Steps 2 to 4 of a commit (see the module documentation); on error
    /// the caller undoes what was placed.
    fn place(&self, record: &[u8], placed: &mut Vec<PathBuf>) -> Result<(), StoreError> {
        let spool = &self.spool;
        write_synced(&self.tmp_rec, record)?;
        let msg = spool.msg(&self.id);
        fs::hard_link(&self.tmp_msg, &msg).map_err(|e| StoreError::io("link", &msg, e))?;
        placed.push(msg);
        sync_dir(&spool.dir.join("msg"))?;
        let rec = spool.rec(&self.id);
        fs::hard_link(&self.tmp_rec, &rec).map_err(|e| StoreError::io("link", &rec, e))?;
        placed.push(rec);
        sync_dir(&spool.dir.join("rec"))
    }
}

impl SpoolWriter for FolderWriter {
    fn id(&self) -> &SpoolId {
        &self.id
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.void());
        };
        if let Err(e) = file.write_all(chunk) {
            // A partly written chunk must never be committed.
            self.file = None;
            return Err(StoreError::io("write", &self.tmp_msg, e));
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, record: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.take() else {
            return Err(self.void());
        };
        file.into_inner()
            .map_err(io::IntoInnerError::into_error)
            .and_then(|file| file.sync_all())
            .map_err(|e| StoreError::io("sync", &self.tmp_msg, e))?;
        let mut placed = Vec::new();
        let result = self.place(record, &mut placed);
        if result.is_err() {
            // Record first, as in remove: never a record without a message.
            for path in placed.iter().rev() {
                let _ = fs::remove_file(path);
            }
        }
        // The tmp names go when `self` drops.
        result
    }
}

impl Drop for FolderWriter {
    fn drop(&mut self) {
        // Committed or not, the tmp names have served their purpose.
        self.file = None;
        let _ = fs::remove_file(&self.tmp_msg);
        let _ = fs::remove_file(&self.tmp_rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_then_counter() {
        let id = |s: &str| SpoolId::new(s).unwrap();
        let mut ids = [
            id("1700000001.000000_7_1"),
            id("1700000000.000002_7_10"),
            id("other"),
            id("1700000000.000002_7_9"),
            id("1700000000.000001_9_11"),
        ];
        ids.sort_by_key(|i| (sort_key(i), i.clone()));
        let names: Vec<_> = ids.iter().map(SpoolId::as_str).collect();
        assert_eq!(
            names,
            [
                "1700000000.000001_9_11",
                "1700000000.000002_7_9",
                "1700000000.000002_7_10",
                "1700000001.000000_7_1",
                "other"
            ]
        );
    }
}
