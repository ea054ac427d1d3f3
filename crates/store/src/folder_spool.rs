//! The outbound queue in a folder, with Maildir's rules for durable files.
//!
//! See [`FolderSpool`] for the layout and why a crash leaves only whole
//! entries.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::maildir::{STALE_TMP_AGE, sync_dir};
use crate::{Spool, SpoolEntry, SpoolId, SpoolWriter, StoreError};

/// Ids and temporary names taken by this process, across all spools.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The end of every file in `mail/`: this text, the first record's length
/// as 16 hex digits, a newline.
const TRAILER_TAG: &[u8] = b"postamt-spool 1 ";
const TRAILER_LEN: u64 = TRAILER_TAG.len() as u64 + 17;

/// A [`Spool`] in a folder of plain files, durable across crashes.
///
/// Layout under the spool folder:
///
/// - `tmp/`: files being written: a message (`<id>`), a replacement record
///   (`<id>.<n>.upd`);
/// - `mail/<id>`: a committed message: its octets, then its first record,
///   then a trailer (`postamt-spool 1 `, the record's length in 16 hex
///   digits, a newline). **A message is in the queue exactly when
///   `mail/<id>` exists**;
/// - `rec/<id>`: a later record of that message, which supersedes the one
///   in `mail/<id>`;
/// - `msg/<id>`: a message committed by the first layout (postamt before
///   the single file), whose record is `rec/<id>`: such a message is in the
///   queue exactly when `msg/<id>` and `rec/<id>` both exist. Nothing
///   writes this layout any more; queues written by it are read, updated
///   and removed as before, so an upgrade loses nothing.
///
/// Everything else is a leftover.
///
/// Ids are `<unix seconds, 10 digits>.<microseconds, 6 digits>_<pid>_<n>`
/// ([`SpoolId`]-valid), taken when [`Spool::begin`] is called: the time and
/// pid keep them unique across restarts and between processes, `n` (a
/// per-process counter) within one process, and a name already taken in
/// any of the folders is never reused (so a leftover record can never be
/// taken for a later message's). [`Spool::list`] sorts by time and counter,
/// so messages come back in the order they were begun (as far as the clock
/// goes forward).
///
/// # Folder fsyncs are shared
///
/// A rename is durable once its folder is fsynced, and one fsync of a
/// folder makes durable every rename into it that came before the fsync
/// started. So callers that change a folder at the same time share its
/// fsyncs (a group commit): a caller whose rename is done waits for the
/// next fsync of that folder that *starts after* its call, running it
/// itself when none is running. While one fsync runs, the callers arriving
/// meanwhile queue up for the next, which then serves all of them; an
/// fsync that fails fails every caller waiting for it (and any fsync that
/// started after their rename).
///
/// # Why a crash leaves only whole entries
///
/// - **commit** (one fsync of the file, one shared fsync of `mail/`): the
///   message, its first record and the trailer are written to `tmp/<id>`,
///   the file is fsynced, renamed to `mail/<id>`, and `mail/` is fsynced
///   before `Ok`. A crash before the rename leaves a file in `tmp/`: not
///   listed. After the rename the name points at a whole, durable file (it
///   was fsynced before it got the name); until `mail/` is fsynced a power
///   cut may keep it or not, and commit had not returned, so the client had
///   no 250 yet and sends again: at worst a duplicate, never a loss (RFC
///   5321 §6.1). A trailer that does not parse (never written by us) is
///   not listed.
/// - **update** (one fsync of the file, one shared fsync of `rec/`): the
///   new record is written to a new file in `tmp/`, fsynced, renamed over
///   `rec/<id>` (atomic: the name points at the old or the new file, or is
///   still missing and the record in `mail/<id>` counts; each of them
///   whole), and `rec/` is fsynced before `Ok`.
/// - **remove** (one shared fsync of `mail/`, none for the rest):
///   `mail/<id>` is unlinked, `mail/` fsynced, and only then `rec/<id>`
///   unlinked, without an fsync. A crash before the fsync may bring the
///   message back with its last durable record: what the last attempt
///   delivered is sent again, the one attempt that was in flight (the
///   forwarder counts a result as in flight until its write returned). The
///   order matters: were `rec/<id>` gone and `mail/<id>` back, the first
///   record would count and recipients delivered long ago would get a
///   second copy. After the fsync nothing can come back: a `rec/<id>`
///   that reappears has no message, is not listed, keeps its id taken, and
///   goes with the other leftovers. For the first layout, `rec/<id>` goes
///   first (`rec/` fsynced, shared) and `msg/<id>` after it, without an
///   fsync: a message without a record is not listed.
///
/// Leftovers (files in `tmp/`, records without a message, messages of the
/// first layout without a record) are never listed, and [`Spool::list`]
/// removes those last changed more than [`STALE_TMP_AGE`] ago, as Maildir
/// readers do with `tmp/`: the age keeps a listing from another process
/// (an admin's `queue` command) from removing a message that a running
/// server is committing right now.
///
/// One process owns a spool folder and its clones share it (there are no
/// file locks); each id is changed by one caller at a time (an update and a
/// remove of the same id must not race). Other processes may list it.
#[derive(Clone, Debug)]
pub struct FolderSpool {
    dir: PathBuf,
    /// Whether the folders are known to exist.
    ready: Arc<AtomicBool>,
    /// The shared fsyncs of `mail/` and of `rec/`.
    mail_sync: Arc<GroupSync>,
    rec_sync: Arc<GroupSync>,
}

/// Fsyncs of one folder shared by the callers that wait at the same time;
/// see [`FolderSpool`].
#[derive(Debug, Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// How many fsyncs have started; the running one is number `started`.
    started: u64,
    /// The number of the last one that finished.
    done: u64,
    running: bool,
    /// Callers waiting for another's fsync (seen by the tests).
    waiting: usize,
    /// The number of the last one that failed (0: none), and why.
    failed: u64,
    why: String,
}

impl GroupSync {
    /// Returns once an fsync (`sync`) that started after this call has
    /// succeeded, running it here when no other caller is.
    fn wait(
        &self,
        path: &Path,
        sync: impl Fn() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let lock = || self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = lock();
        // A running fsync may have started before our change.
        let need = state.started + 1;
        loop {
            if state.done >= need {
                if state.failed >= need {
                    let why = io::Error::other(state.why.clone());
                    return Err(StoreError::io("sync", path, why));
                }
                return Ok(());
            }
            if state.running {
                state.waiting += 1;
                state = self
                    .finished
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.waiting -= 1;
                continue;
            }
            state.running = true;
            state.started += 1;
            let number = state.started;
            drop(state);
            let result = sync();
            state = lock();
            state.running = false;
            state.done = number;
            if let Err(e) = result {
                state.failed = number;
                state.why = e.to_string();
            }
            self.finished.notify_all();
        }
    }
}

/// Where a queued message's files are.
enum Layout {
    /// `mail/<id>`, the first record at its end; `rec/<id>` when updated.
    Single,
    /// The first layout: `msg/<id>` and `rec/<id>`.
    Pair,
}

/// What the trailer of a `mail/` file says: the message's length and the
/// first record's.
fn read_trailer(file: &mut File) -> io::Result<(u64, u64)> {
    let len = file.metadata()?.len();
    let broken = || io::Error::new(io::ErrorKind::InvalidData, "no spool trailer");
    let body = len.checked_sub(TRAILER_LEN).ok_or_else(broken)?;
    file.seek(SeekFrom::Start(body))?;
    let mut trailer = [0; TRAILER_LEN as usize];
    file.read_exact(&mut trailer)?;
    let hex = trailer
        .strip_prefix(TRAILER_TAG)
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .ok_or_else(broken)?;
    let record = std::str::from_utf8(hex)
        .ok()
        .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(broken)?;
    let message = body.checked_sub(record).ok_or_else(broken)?;
    Ok((message, record))
}

impl FolderSpool {
    /// A spool in `dir`. Nothing is touched until first use, which creates
    /// the folders (an error then comes from that method).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ready: Arc::default(),
            mail_sync: Arc::default(),
            rec_sync: Arc::default(),
        }
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn mail(&self, id: &SpoolId) -> PathBuf {
        self.dir.join("mail").join(id.as_str())
    }

    fn msg(&self, id: &SpoolId) -> PathBuf {
        self.dir.join("msg").join(id.as_str())
    }

    fn rec(&self, id: &SpoolId) -> PathBuf {
        self.dir.join("rec").join(id.as_str())
    }

    /// Waits for a shared fsync of `mail/` that started after this call.
    fn sync_mail(&self) -> Result<(), StoreError> {
        let dir = self.dir.join("mail");
        self.mail_sync.wait(&dir, || sync_dir(&dir))
    }

    /// Waits for a shared fsync of `rec/` that started after this call.
    fn sync_rec(&self) -> Result<(), StoreError> {
        let dir = self.dir.join("rec");
        self.rec_sync.wait(&dir, || sync_dir(&dir))
    }

    /// Creates the folders if missing, fsyncing their parents so that what
    /// is committed into them survives a crash. `msg/` too, so that a
    /// queue of the first layout and a new one look alike.
    fn ensure_layout(&self) -> Result<(), StoreError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        for sub in ["tmp", "mail", "msg", "rec"] {
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

    /// A new id whose name is free in every folder, with its message file
    /// created in `tmp/`.
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
            let taken = [self.mail(&id), self.msg(&id), self.rec(&id)]
                .iter()
                .any(|p| fs::symlink_metadata(p).is_ok());
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

    /// Where `id`'s files are, when it is in the queue.
    fn locate(&self, id: &SpoolId) -> Result<Layout, StoreError> {
        let is_file = |path: PathBuf| match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("stat", path, e)),
        };
        let mail = self.mail(id);
        match File::open(&mail).and_then(|mut file| read_trailer(&mut file)) {
            Ok(_) => return Ok(Layout::Single),
            // Not ours (see `list`).
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(StoreError::NoSuchSpoolEntry(id.clone()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("read", mail, e)),
        }
        if is_file(self.rec(id))? && is_file(self.msg(id))? {
            Ok(Layout::Pair)
        } else {
            Err(StoreError::NoSuchSpoolEntry(id.clone()))
        }
    }

    /// Removes leftovers last changed more than [`STALE_TMP_AGE`] before
    /// `now`: anything in `tmp/`, records without a message, messages of
    /// the first layout without a record. Best effort: what cannot go now
    /// goes next time.
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
        for (sub, partners) in [("msg", &["rec"][..]), ("rec", &["msg", "mail"][..])] {
            for path in names(self.dir.join(sub)) {
                let Some(name) = path.file_name() else {
                    continue;
                };
                let alone = partners
                    .iter()
                    .all(|other| !self.dir.join(other).join(name).exists());
                if alone && stale(&path) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    /// The entry of a `mail/` file, `None` when it is gone or broken.
    fn single_entry(&self, id: SpoolId) -> Result<Option<SpoolEntry>, StoreError> {
        let path = self.mail(&id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            // Removed while we listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open", path, e)),
        };
        let (size, first) = match read_trailer(&mut file) {
            Ok(lengths) => lengths,
            // Never written by us: not an entry.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(StoreError::io("read", path, e)),
        };
        let record = match fs::read(self.rec(&id)) {
            Ok(record) => record,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut record = Vec::new();
                file.seek(SeekFrom::Start(size))
                    .and_then(|_| (&mut file).take(first).read_to_end(&mut record))
                    .map_err(|e| StoreError::io("read", &path, e))?;
                if record.len() as u64 != first {
                    return Ok(None);
                }
                record
            }
            Err(e) => return Err(StoreError::io("read", self.rec(&id), e)),
        };
        Ok(Some(SpoolEntry { id, record, size }))
    }

    /// The entry of the first layout for a name in `rec/`, `None` when it
    /// has no message (a leftover) or is gone.
    fn pair_entry(&self, id: SpoolId, rec: &Path) -> Result<Option<SpoolEntry>, StoreError> {
        let size = match fs::symlink_metadata(self.msg(&id)) {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("stat", self.msg(&id), e)),
        };
        match fs::read(rec) {
            Ok(record) => Ok(Some(SpoolEntry { id, record, size })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", rec, e)),
        }
    }
}

/// The ids among the names in `dir`; names that are not ids were not
/// written by us.
fn ids_in(dir: &Path) -> Result<Vec<(SpoolId, PathBuf)>, StoreError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io("read", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("read", dir, e))?;
        if let Some(id) = entry
            .file_name()
            .into_string()
            .ok()
            .and_then(|name| SpoolId::new(name).ok())
        {
            ids.push((id, entry.path()));
        }
    }
    Ok(ids)
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

/// Unlinks `path`; `Ok(false)` when it was not there.
fn unlink(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
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
            id,
            tmp_msg,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
        }))
    }

    fn list(&self) -> Result<Vec<SpoolEntry>, StoreError> {
        self.ensure_layout()?;
        self.remove_stale(SystemTime::now());
        let mut entries = Vec::new();
        let mut single = HashSet::new();
        for (id, _) in ids_in(&self.dir.join("mail"))? {
            single.insert(id.clone());
            entries.extend(self.single_entry(id)?);
        }
        for (id, rec) in ids_in(&self.dir.join("rec"))? {
            if !single.contains(&id) {
                entries.extend(self.pair_entry(id, &rec)?);
            }
        }
        entries.sort_by_cached_key(|e| (sort_key(&e.id), e.id.clone()));
        Ok(entries)
    }

    fn read(&self, id: &SpoolId) -> Result<Box<dyn Read + Send>, StoreError> {
        self.ensure_layout()?;
        let layout = self.locate(id)?;
        let path = match layout {
            Layout::Single => self.mail(id),
            Layout::Pair => self.msg(id),
        };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchSpoolEntry(id.clone()));
            }
            Err(e) => return Err(StoreError::io("open", path, e)),
        };
        match layout {
            Layout::Pair => Ok(Box::new(BufReader::new(file))),
            Layout::Single => {
                let (size, _) = read_trailer(&mut file)
                    .and_then(|lengths| file.rewind().map(|()| lengths))
                    .map_err(|e| StoreError::io("read", &path, e))?;
                Ok(Box::new(BufReader::new(file).take(size)))
            }
        }
    }

    fn update(&self, id: &SpoolId, record: &[u8]) -> Result<(), StoreError> {
        self.ensure_layout()?;
        self.locate(id)?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp().join(format!("{id}.{n}.upd"));
        write_synced(&tmp, record)?;
        let rec = self.rec(id);
        if let Err(e) = fs::rename(&tmp, &rec) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("rename", rec, e));
        }
        self.sync_rec()
    }

    fn remove(&self, id: &SpoolId) -> Result<(), StoreError> {
        self.ensure_layout()?;
        let gone = || StoreError::NoSuchSpoolEntry(id.clone());
        match self.locate(id)? {
            Layout::Single => {
                if !unlink(&self.mail(id))? {
                    return Err(gone());
                }
                // Durably gone before its later record may go.
                self.sync_mail()?;
                unlink(&self.rec(id)).map(drop)
            }
            Layout::Pair => {
                if !unlink(&self.rec(id))? {
                    return Err(gone());
                }
                self.sync_rec()?;
                // Not listed any more: gone as far as anyone can tell.
                unlink(&self.msg(id)).map(drop)
            }
        }
    }
}

#[derive(Debug)]
struct FolderWriter {
    spool: FolderSpool,
    id: SpoolId,
    tmp_msg: PathBuf,
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
        let Some(mut file) = self.file.take() else {
            return Err(self.void());
        };
        let trailer = format!("{:016x}\n", record.len());
        file.write_all(record)
            .and_then(|()| file.write_all(TRAILER_TAG))
            .and_then(|()| file.write_all(trailer.as_bytes()))
            .and_then(|()| file.into_inner().map_err(io::IntoInnerError::into_error))
            .and_then(|file| file.sync_all())
            .map_err(|e| StoreError::io("sync", &self.tmp_msg, e))?;
        let mail = self.spool.mail(&self.id);
        fs::rename(&self.tmp_msg, &mail).map_err(|e| StoreError::io("rename", &mail, e))?;
        if let Err(e) = self.spool.sync_mail() {
            // Not durable, so not committed: the caller says 4xx and the
            // client sends again.
            let _ = fs::remove_file(&mail);
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for FolderWriter {
    fn drop(&mut self) {
        // Committed (renamed away) or not, the tmp name has served.
        self.file = None;
        let _ = fs::remove_file(&self.tmp_msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    /// Polls `state` until `ready` holds (bounded: 10 s).
    fn until(sync: &GroupSync, ready: impl Fn(&SyncState) -> bool) {
        for _ in 0..10_000 {
            if ready(&sync.state.lock().unwrap()) {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("not reached: {:?}", sync.state.lock().unwrap());
    }

    /// Callers that come while an fsync runs wait for the next one, which
    /// serves them all; one that fails fails its callers only.
    #[test]
    fn fsyncs_are_shared_and_start_after_the_call() {
        let sync = Arc::new(GroupSync::default());
        let (go, gate) = mpsc::channel::<Result<(), ()>>();
        let gate = Arc::new(Mutex::new(gate));
        let calls = Arc::new(AtomicU64::new(0));
        let path = Path::new("/nowhere");
        let caller = |sync: &Arc<GroupSync>| {
            let (sync, gate, calls) = (Arc::clone(sync), Arc::clone(&gate), Arc::clone(&calls));
            thread::spawn(move || {
                let result = sync.wait(path, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let outcome = gate.lock().unwrap().recv().unwrap();
                    outcome.map_err(|()| StoreError::io("sync", path, io::Error::other("disk")))
                });
                // Which fsyncs had finished when this caller was let go.
                (result, sync.state.lock().unwrap().done)
            })
        };
        let first = caller(&sync);
        until(&sync, |s| s.running);
        let later: Vec<_> = (0..8).map(|_| caller(&sync)).collect();
        until(&sync, |s| s.waiting == 8);
        go.send(Ok(())).unwrap();
        let (result, done) = first.join().unwrap();
        assert!(result.is_ok());
        assert_eq!(done, 1);
        // The eight did not count the first fsync: one more serves them.
        until(&sync, |s| s.running && s.started == 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        go.send(Ok(())).unwrap();
        for t in later {
            let (result, done) = t.join().unwrap();
            assert!(result.is_ok());
            assert_eq!(done, 2);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // A failing fsync fails the callers waiting for it.
        let failing = caller(&sync);
        until(&sync, |s| s.running && s.started == 3);
        let also = caller(&sync);
        until(&sync, |s| s.waiting == 1);
        go.send(Err(())).unwrap();
        let err = failing.join().unwrap().0.unwrap_err();
        assert!(err.to_string().contains("disk"), "{err}");
        // `also` came while number 3 ran: number 4 is its own, and fine.
        go.send(Ok(())).unwrap();
        assert!(also.join().unwrap().0.is_ok());
        let next = caller(&sync);
        go.send(Ok(())).unwrap();
        assert!(next.join().unwrap().0.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

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
