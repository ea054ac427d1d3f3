//! Mailboxes as Maildir folders that Dovecot, mutt and neomutt share with us.
//!
//! Layout: `ROOT/<mailbox>/{tmp,new,cur}` plus the lock file
//! `ROOT/<mailbox>/postamt.lock`. File names follow the convention Dovecot
//! writes, `<secs>.M<usecs>P<pid>Q<seq>.<host>,S=<size>,W=<crlf size>`, so a
//! listing needs no file reads; in `cur/` they carry the `:2,<flags>` info.
//!
//! `W=` is the size by the rule of [`postamt_wire::crlf`], the size POP3
//! sends. A name without it is counted from the file. A `W=` that another
//! tool wrote is trusted: Dovecot counts only bare LF, which agrees with the
//! rule for every message that has no bare CR and ends with a line end
//! (all that an MTA delivers).
//!
//! A mailbox's size for its limit is the sum of the `S=` fields (the stored
//! octets) of the names in `new/` and `cur/`, so it too needs no file reads
//! (a name without `S=` costs one `stat`). Each folder's sum is kept with
//! the folder's modification time and reused while that time stays the
//! same, so an unchanged folder costs one `stat`. Any entry added, removed
//! or renamed (our deliveries, POP3 deletions, other tools) changes the
//! time. Two changes within one tick of the file system's clock may leave
//! the same time, so a sum listed while the folder was still changing is
//! trusted only for [`SIZE_RELIST_AFTER`] (one listed after the folder had
//! not changed for [`SIZE_CACHE_MARGIN`], as long as the time stays).
//! This store's own deliveries add their octets to the kept sum as they
//! link a file into `new/` (the listing and the linking hold one lock, so
//! none of our own changes can slip between them), so a mailbox that keeps
//! receiving mail is listed once per [`SIZE_RELIST_AFTER`], not once per
//! message; what another program changes in the same clock tick is caught
//! at the next listing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::crlf::{CrlfReader, CrlfSize, crlf_size_of};
use crate::store::{DEFAULT_MAILBOX_SIZE_LIMIT, check_indices, fits, unique_recipients};
use crate::{Delivery, MailStore, MailView, MailboxName, Maildrop, MessageInfo, StoreError, Uid};

/// Files in `tmp/` older than this are leftovers of crashed deliveries; the
/// Maildir convention says to remove them after 36 hours.
pub const STALE_TMP_AGE: Duration = Duration::from_secs(36 * 60 * 60);

/// How long a folder must have been unchanged before its size is cached:
/// above the coarsest timestamp granularity of common file systems (FAT's
/// 2 s), so a later change always shows as a new modification time.
pub const SIZE_CACHE_MARGIN: Duration = Duration::from_secs(3);

/// How long a size listed while its folder was still changing (or kept
/// up to date by our own deliveries since) is trusted before the folder is
/// listed again: what another program did within one clock tick of one of
/// our changes counts after this at the latest.
pub const SIZE_RELIST_AFTER: Duration = Duration::from_secs(30);

/// The lock file's name inside each mailbox folder. It sits beside `tmp/`,
/// `new/` and `cur/`, where Maildir readers do not look for mail.
pub const LOCK_FILE_NAME: &str = "postamt.lock";

/// A [`MailStore`] over a root folder that holds one Maildir per mailbox.
///
/// Folders are created when first needed. Deliveries are durable when
/// [`Delivery::commit`] returns: the file is written in `tmp/`, fsynced,
/// linked into each recipient's `new/`, and `new/` is fsynced.
///
/// Each mailbox holds at most [`DEFAULT_MAILBOX_SIZE_LIMIT`] stored octets
/// unless changed with [`with_mailbox_size_limit`](Self::with_mailbox_size_limit).
/// A delivery checks against the size its mailboxes had when it began, so
/// deliveries running at the same time to one mailbox may together pass the
/// limit by what they carry (as Postfix's per-delivery check may).
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    mailbox_size_limit: Option<u64>,
    /// Stored octets of `new/` and `cur/` folders, shared by clones.
    sizes: Arc<Mutex<HashMap<PathBuf, ListedSize>>>,
    /// How long a sum of a folder that was still changing is trusted.
    relist_after: Duration,
}

/// A folder's stored octets, as listed while its modification time was
/// `mtime` (or as our own changes since left it).
#[derive(Clone, Copy, Debug)]
struct ListedSize {
    mtime: SystemTime,
    octets: u64,
    /// `None`: listed after the folder had settled, good while `mtime`
    /// stays; else good until then.
    trusted_until: Option<Instant>,
}

impl ListedSize {
    fn holds(&self, mtime: Option<SystemTime>, now: Instant) -> bool {
        Some(self.mtime) == mtime && self.trusted_until.is_none_or(|until| now < until)
    }
}

impl Maildir {
    /// A store under `root`, with the default mailbox size limit. Nothing is
    /// touched until mail is delivered or a maildrop is opened.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            mailbox_size_limit: Some(DEFAULT_MAILBOX_SIZE_LIMIT),
            sizes: Arc::default(),
            relist_after: SIZE_RELIST_AFTER,
        }
    }

    /// Sets the limit of each mailbox's stored octets; `None` means no
    /// limit (and `Some(0)`, a mailbox that takes nothing).
    pub fn with_mailbox_size_limit(mut self, limit: Option<u64>) -> Self {
        self.mailbox_size_limit = limit;
        self
    }

    /// Sets how long the size of a folder that was still changing when it
    /// was listed (or that our own deliveries keep changing) is trusted
    /// before it is listed again ([`SIZE_RELIST_AFTER`] by default): how
    /// late a change another program made within one clock tick of ours
    /// counts. Zero lists such a folder at every ask, which is exact and
    /// costs a listing per message for a mailbox that keeps receiving.
    pub fn with_size_relist_after(mut self, after: Duration) -> Self {
        self.relist_after = after;
        self
    }

    /// The limit of each mailbox, in octets.
    pub fn mailbox_size_limit(&self) -> Option<u64> {
        self.mailbox_size_limit
    }

    /// Octets stored in `mailbox` (in `new/` and `cur/`), from the file
    /// names' `S=` fields; 0 for a mailbox that does not exist yet.
    pub fn mailbox_size(&self, mailbox: &MailboxName) -> Result<u64, StoreError> {
        let dir = self.mailbox_path(mailbox);
        let mut total = 0u64;
        for sub in ["new", "cur"] {
            total = total.saturating_add(self.folder_size(&dir.join(sub))?);
        }
        Ok(total)
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Maildir folder of `mailbox` (the one holding `tmp/`, `new/`, `cur/`).
    pub fn mailbox_path(&self, mailbox: &MailboxName) -> PathBuf {
        self.root.join(mailbox.as_str())
    }

    /// The stored octets of one `new/` or `cur/` folder, cached as the
    /// module documentation says.
    fn folder_size(&self, dir: &Path) -> Result<u64, StoreError> {
        folder_size(&self.sizes, dir, self.relist_after)
    }

    /// Creates the mailbox's folders if they are missing, fsyncing the
    /// parents so that a message committed into them survives a crash.
    fn ensure_layout(&self, mailbox: &MailboxName) -> Result<PathBuf, StoreError> {
        let dir = self.mailbox_path(mailbox);
        if dir.join("cur").is_dir() && dir.join("new").is_dir() && dir.join("tmp").is_dir() {
            return Ok(dir);
        }
        for sub in ["tmp", "new", "cur"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| StoreError::io("create", &path, e))?;
        }
        sync_dir(&dir)?;
        sync_dir(&self.root)?;
        Ok(dir)
    }
}

/// The kept sums of `new/` and `cur/` folders, shared by a store's clones
/// and its deliveries.
type Sizes = Arc<Mutex<HashMap<PathBuf, ListedSize>>>;

fn lock(sizes: &Sizes) -> MutexGuard<'_, HashMap<PathBuf, ListedSize>> {
    sizes.lock().unwrap_or_else(PoisonError::into_inner)
}

fn modified(dir: &Path) -> Result<Option<SystemTime>, StoreError> {
    match fs::metadata(dir) {
        Ok(meta) => Ok(meta.modified().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("stat", dir, e)),
    }
}

/// See [`Maildir::folder_size`]. The listing holds the lock, so that our
/// own deliveries ([`placed`]) cannot change the folder meanwhile.
fn folder_size(sizes: &Sizes, dir: &Path, relist_after: Duration) -> Result<u64, StoreError> {
    let mut sizes = lock(sizes);
    let mtime = match fs::metadata(dir) {
        Ok(meta) => meta.modified().ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("stat", dir, e)),
    };
    let now = Instant::now();
    if let Some(hit) = sizes.get(dir)
        && hit.holds(mtime, now)
    {
        return Ok(hit.octets);
    }
    let listed_at = SystemTime::now();
    let octets = stored_size(dir)?;
    match mtime {
        Some(mtime) => {
            let settled = mtime
                .checked_add(SIZE_CACHE_MARGIN)
                .is_some_and(|settled| settled <= listed_at);
            if !settled && relist_after.is_zero() {
                sizes.remove(dir);
                return Ok(octets);
            }
            let trusted_until = (!settled).then(|| now + relist_after);
            sizes.insert(
                dir.to_path_buf(),
                ListedSize {
                    mtime,
                    octets,
                    trusted_until,
                },
            );
        }
        None => {
            sizes.remove(dir);
        }
    }
    Ok(octets)
}

/// Runs `link` (which adds a file of `octets` to the folder `dir`) and adds
/// those octets to the folder's kept sum, if it held just before: then the
/// sum stays right without listing the folder again.
fn placed(
    sizes: &Sizes,
    dir: &Path,
    octets: u64,
    relist_after: Duration,
    link: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut sizes = lock(sizes);
    let before = modified(dir)?;
    link()?;
    let now = Instant::now();
    let after = modified(dir).ok().flatten();
    match (sizes.get_mut(dir), after) {
        (Some(kept), Some(after)) if kept.holds(before, now) => {
            kept.mtime = after;
            kept.octets = kept.octets.saturating_add(octets);
            kept.trusted_until.get_or_insert(now + relist_after);
        }
        _ => {
            sizes.remove(dir);
        }
    }
    Ok(())
}

/// Runs `change` (which moves or removes files of the mailbox folder
/// `dir`) under the lock of the kept sums, and forgets the sums of its
/// `new/` and `cur/`: they are listed again when next asked, and no
/// delivery of ours can slip in between.
fn forgetting_sizes<T>(
    sizes: &Sizes,
    dir: &Path,
    change: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut sizes = lock(sizes);
    let result = change();
    sizes.remove(&dir.join("new"));
    sizes.remove(&dir.join("cur"));
    result
}

impl MailStore for Maildir {
    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError> {
        let dirs = unique_recipients(recipients)?
            .iter()
            .map(|mailbox| self.ensure_layout(mailbox))
            .collect::<Result<Vec<_>, _>>()?;
        let quota = match self.mailbox_size_limit {
            None => None,
            Some(limit) => {
                let mut tightest: Option<Quota> = None;
                for mailbox in unique_recipients(recipients)? {
                    let room = limit.saturating_sub(self.mailbox_size(&mailbox)?);
                    if tightest.as_ref().is_none_or(|q| room < q.room) {
                        tightest = Some(Quota {
                            mailbox,
                            limit,
                            room,
                        });
                    }
                }
                tightest
            }
        };
        let tmp = dirs[0].join("tmp");
        let (base, tmp_path, file) = create_unique(&tmp)?;
        Ok(Box::new(MaildirDelivery {
            dirs,
            base,
            tmp_path,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            counter: CrlfSize::new(),
            quota,
            refused: false,
            sizes: Arc::clone(&self.sizes),
            relist_after: self.relist_after,
        }))
    }

    fn check_room(&self, mailbox: &MailboxName, size: u64) -> Result<(), StoreError> {
        let Some(limit) = self.mailbox_size_limit else {
            return Ok(());
        };
        if fits(self.mailbox_size(mailbox)?, size, Some(limit)) {
            Ok(())
        } else {
            Err(StoreError::QuotaExceeded {
                mailbox: mailbox.clone(),
                limit,
            })
        }
    }

    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError> {
        let dir = self.ensure_layout(mailbox)?;
        let key = fs::canonicalize(&dir).map_err(|e| StoreError::io("resolve", &dir, e))?;
        let process_lock =
            ProcessLock::acquire(key).ok_or_else(|| StoreError::Locked(mailbox.clone()))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::io("open", &lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(mailbox.clone())),
            Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", &lock_path, e)),
        }
        remove_stale_tmp(&dir.join("tmp"), SystemTime::now());
        forgetting_sizes(&self.sizes, &dir, || move_new_to_cur(&dir))?;
        let cur = dir.join("cur");
        let entries = list_cur(&cur)?;
        Ok(Box::new(MaildirMaildrop {
            mailbox: mailbox.clone(),
            cur,
            infos: entries.iter().map(|e| e.info.clone()).collect(),
            entries,
            sizes: Arc::clone(&self.sizes),
            _lock_file: lock_file,
            _process_lock: process_lock,
        }))
    }
}

impl MailView for Maildir {
    fn mailboxes(&self) -> Result<Vec<MailboxName>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("read", &self.root, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("read", &self.root, e))?;
            // Names a mailbox cannot have (`.queue`, not UTF-8) are not ours.
            let Some(mailbox) = entry
                .file_name()
                .to_str()
                .and_then(|name| MailboxName::new(name).ok())
            else {
                continue;
            };
            if entry.path().join("cur").is_dir() || entry.path().join("new").is_dir() {
                found.push(mailbox);
            }
        }
        found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(found)
    }

    fn peek(&self, mailbox: &MailboxName) -> Result<Vec<MessageInfo>, StoreError> {
        let dir = self.mailbox_path(mailbox);
        Ok(peek_folders(&dir)?
            .into_iter()
            .map(|(_, e)| e.info)
            .collect())
    }

    fn peek_message(
        &self,
        mailbox: &MailboxName,
        uid: &Uid,
    ) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let dir = self.mailbox_path(mailbox);
        let Some((path, _)) = peek_folders(&dir)?
            .into_iter()
            .find(|(_, e)| &e.info.uid == uid)
        else {
            return Ok(None);
        };
        match File::open(&path) {
            Ok(file) => Ok(Some(Box::new(CrlfReader::new(file)))),
            // Read or deleted by a POP3 session since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("open", &path, e)),
        }
    }
}

/// The messages in a mailbox folder's `new/` and `cur/`, moving none, in
/// the order and with the ids [`list_cur`] gives them once moved; each with
/// its path now. A file that goes away while listed is left out.
fn peek_folders(dir: &Path) -> Result<Vec<(PathBuf, Entry)>, StoreError> {
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let folder = dir.join(sub);
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("read", &folder, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("read", &folder, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            found.push((entry.path(), name));
        }
    }
    found.sort_by_cached_key(|(_, name)| (delivery_time(name), name.clone()));
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(found.len());
    for (path, name) in found {
        let base = base_name(&name).to_owned();
        let mut uid = Uid::from_name(&base);
        if !seen.insert(uid.clone()) {
            uid = Uid::hashed(&name);
            seen.insert(uid.clone());
        }
        let size = match crlf_size_field(&base) {
            Some(size) => size,
            None => match File::open(&path).and_then(crlf_size_of) {
                Ok(size) => size,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("read", &path, e)),
            },
        };
        entries.push((
            path,
            Entry {
                name,
                base,
                info: MessageInfo { uid, size },
            },
        ));
    }
    Ok(entries)
}

/// Fsyncs a directory, so that entries created or renamed in it are durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| StoreError::io("sync", path, e))
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A new unique base name: time, pid and per-process sequence, host.
fn unique_base() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        seq,
        hostname()
    )
}

/// The host name as Maildir wants it in a file name: `/` and `:` (and `,`,
/// which starts our size fields) replaced by octal escapes.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let raw = raw.trim();
        let raw = if raw.is_empty() { "localhost" } else { raw };
        let mut host = String::with_capacity(raw.len());
        for c in raw.chars() {
            match c {
                '/' => host.push_str("\\057"),
                ':' => host.push_str("\\072"),
                ',' => host.push_str("\\054"),
                c if c.is_ascii_graphic() => host.push(c),
                _ => host.push('_'),
            }
        }
        host
    })
}

/// Creates a new file in `tmp` under a fresh unique name.
fn create_unique(tmp: &Path) -> Result<(String, PathBuf, File), StoreError> {
    let mut attempts = 0;
    loop {
        let base = unique_base();
        let path = tmp.join(&base);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((base, path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10 => attempts += 1,
            Err(e) => return Err(StoreError::io("create", &path, e)),
        }
    }
}

/// The octets of every file in a `new/` or `cur/` folder, from their names.
fn stored_size(dir: &Path) -> Result<u64, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("read", dir, e)),
    };
    let mut total = 0u64;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("read", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let size = match raw_size_field(base_name(&name)) {
            Some(size) => size,
            // Named by a tool that writes no S=, or removed meanwhile (0).
            None => entry.metadata().map_or(0, |meta| meta.len()),
        };
        total = total.saturating_add(size);
    }
    Ok(total)
}

/// The mailbox with the least room among a delivery's recipients.
#[derive(Debug)]
struct Quota {
    mailbox: MailboxName,
    limit: u64,
    /// Octets it could still take when the delivery began.
    room: u64,
}

#[derive(Debug)]
struct MaildirDelivery {
    /// Each recipient's Maildir folder; the file is written in the first's tmp/.
    dirs: Vec<PathBuf>,
    base: String,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    counter: CrlfSize,
    /// `None`: no limit.
    quota: Option<Quota>,
    /// A chunk was refused for the limit; the tmp file is gone.
    refused: bool,
    /// The store's kept folder sums, which the commit adds to.
    sizes: Sizes,
    relist_after: Duration,
}

impl Delivery for MaildirDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.earlier_failure());
        };
        if !chunk.is_empty()
            && let Some(quota) = &self.quota
            && !fits(self.counter.raw(), chunk.len() as u64, Some(quota.room))
        {
            // Give up the file now, so that nothing of it stays on disk.
            self.file = None;
            let _ = fs::remove_file(&self.tmp_path);
            self.refused = true;
            return Err(self.earlier_failure());
        }
        if let Err(e) = file.write_all(chunk) {
            // A partly written chunk must never be committed: give up the file.
            self.file = None;
            return Err(StoreError::io("write", &self.tmp_path, e));
        }
        self.counter.update(chunk);
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let tmp = self.tmp_path.clone();
        let Some(writer) = self.file.take() else {
            return Err(self.earlier_failure());
        };
        let file = writer
            .into_inner()
            .map_err(|e| StoreError::io("write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("sync", &tmp, e))?;
        drop(file);
        let name = format!(
            "{},S={},W={}",
            self.base,
            self.counter.raw(),
            self.counter.size()
        );
        let mut placed: Vec<PathBuf> = Vec::with_capacity(self.dirs.len());
        let octets = self.counter.raw();
        let result = self.dirs.iter().try_for_each(|dir| {
            let new = dir.join("new");
            let dest = new.join(&name);
            self::placed(&self.sizes, &new, octets, self.relist_after, || {
                place(&tmp, dir, &name, &dest)
            })?;
            placed.push(dest);
            sync_dir(&new)
        });
        if let Err(e) = result {
            for path in &placed {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        // The tmp file is removed when `self` drops; it is no longer needed.
        Ok(())
    }
}

impl MaildirDelivery {
    fn earlier_failure(&self) -> StoreError {
        if let (true, Some(quota)) = (self.refused, &self.quota) {
            return StoreError::QuotaExceeded {
                mailbox: quota.mailbox.clone(),
                limit: quota.limit,
            };
        }
        StoreError::io(
            "write",
            &self.tmp_path,
            io::Error::other("an earlier write failed; the delivery is void"),
        )
    }
}

/// Puts the finished tmp file at `dest`: a hard link where the file system
/// allows, else a copy written in the recipient's own tmp/ and renamed.
fn place(tmp: &Path, dir: &Path, name: &str, dest: &Path) -> Result<(), StoreError> {
    if fs::hard_link(tmp, dest).is_ok() {
        return Ok(());
    }
    let copy = dir.join("tmp").join(name);
    let copied = fs::copy(tmp, &copy)
        .and_then(|_| File::open(&copy)?.sync_all())
        .map_err(|e| StoreError::io("copy", &copy, e))
        .and_then(|()| fs::rename(&copy, dest).map_err(|e| StoreError::io("rename", dest, e)));
    if copied.is_err() {
        let _ = fs::remove_file(&copy);
    }
    copied
}

impl Drop for MaildirDelivery {
    fn drop(&mut self) {
        // Aborted or committed, the tmp file has served its purpose. Close it
        // first; an error here can only leave a stray tmp file, which the
        // next maildrop open removes after 36 hours.
        self.file = None;
        let _ = fs::remove_file(&self.tmp_path);
    }
}

/// Maildrops held open in this process, by canonical folder path. The OS lock
/// alone may not exclude a second open in the same process on every file
/// system (NFS emulates flock with per-process locks).
static OPEN_MAILDROPS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

#[derive(Debug)]
struct ProcessLock {
    key: PathBuf,
}

impl ProcessLock {
    fn acquire(key: PathBuf) -> Option<Self> {
        let mut open = OPEN_MAILDROPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // `then`, not `then_some`: a lock built eagerly and dropped on the
        // refusal path would take this mutex again while it is held (and
        // would release the key its rightful holder owns).
        open.insert(key.clone()).then(|| Self { key })
    }
}

impl Drop for ProcessLock {
    fn drop(&mut self) {
        OPEN_MAILDROPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Removes files in `tmp` last modified more than [`STALE_TMP_AGE`] before
/// `now`. Best effort: a file that cannot be removed is tried again next time.
fn remove_stale_tmp(tmp: &Path, now: SystemTime) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let stale = meta.is_file()
            && meta.modified().is_ok_and(|mtime| {
                now.duration_since(mtime)
                    .is_ok_and(|age| age > STALE_TMP_AGE)
            });
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Moves every message in new/ to cur/ with an empty `:2,` info, as a
/// Maildir reader does when it has seen a message.
fn move_new_to_cur(dir: &Path) -> Result<(), StoreError> {
    let new = dir.join("new");
    let cur = dir.join("cur");
    let mut moved = false;
    for entry in fs::read_dir(&new).map_err(|e| StoreError::io("read", &new, e))? {
        let entry = entry.map_err(|e| StoreError::io("read", &new, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let target = if name.contains(':') {
            name.to_owned()
        } else {
            format!("{name}:2,")
        };
        let to = cur.join(target);
        match fs::rename(entry.path(), &to) {
            Ok(()) => moved = true,
            // Another reader moved it first; it will be listed from cur/.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("rename", entry.path(), e)),
        }
    }
    if moved {
        sync_dir(&cur)?;
        sync_dir(&new)?;
    }
    Ok(())
}

#[derive(Debug)]
struct Entry {
    /// The file name in cur/, as it was when the maildrop opened.
    name: String,
    /// The part before the `:2,` info, which other readers keep when they
    /// change flags.
    base: String,
    info: MessageInfo,
}

/// Lists cur/ in a stable order: by the delivery time at the start of the
/// name, then by name.
fn list_cur(cur: &Path) -> Result<Vec<Entry>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(cur).map_err(|e| StoreError::io("read", cur, e))? {
        let entry = entry.map_err(|e| StoreError::io("read", cur, e))?;
        // Names that are not UTF-8 were not written by a Maildir tool.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        found.push(name);
    }
    found.sort_by_cached_key(|name| (delivery_time(name), name.clone()));
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(found.len());
    for name in found {
        let base = base_name(&name).to_owned();
        let mut uid = Uid::from_name(&base);
        if !seen.insert(uid.clone()) {
            uid = Uid::hashed(&name);
            seen.insert(uid.clone());
        }
        let size = match crlf_size_field(&base) {
            Some(size) => size,
            None => {
                let path = cur.join(&name);
                File::open(&path)
                    .and_then(crlf_size_of)
                    .map_err(|e| StoreError::io("read", &path, e))?
            }
        };
        entries.push(Entry {
            name,
            base,
            info: MessageInfo { uid, size },
        });
    }
    Ok(entries)
}

/// When the message was delivered, as its name says: the seconds before the
/// first dot and, in Dovecot-style names, the microseconds after `M`. Names
/// without a time sort last.
fn delivery_time(name: &str) -> (u64, u64) {
    let (secs, rest) = name.split_once('.').unwrap_or((name, ""));
    let Ok(secs) = secs.parse() else {
        return (u64::MAX, u64::MAX);
    };
    let micros = rest
        .strip_prefix('M')
        .and_then(|m| m.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0);
    (secs, micros)
}

/// The name without the `:2,<flags>` info.
fn base_name(name: &str) -> &str {
    name.split_once(':').map_or(name, |(base, _)| base)
}

/// The `W=` field of a base name: the size as served.
fn crlf_size_field(base: &str) -> Option<u64> {
    size_field(base, "W=")
}

/// The `S=` field of a base name: the octets stored.
fn raw_size_field(base: &str) -> Option<u64> {
    size_field(base, "S=")
}

fn size_field(base: &str, key: &str) -> Option<u64> {
    base.split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix(key)?.parse().ok())
}

#[derive(Debug)]
struct MaildirMaildrop {
    mailbox: MailboxName,
    cur: PathBuf,
    infos: Vec<MessageInfo>,
    entries: Vec<Entry>,
    /// The store's kept folder sums, which deletions make stale.
    sizes: Sizes,
    // Field order matters: the OS lock is released before this process's
    // record of it, so a waiting open never sees a stale OS lock.
    _lock_file: File,
    _process_lock: ProcessLock,
}

impl MaildirMaildrop {
    /// The message's current path: its listed name, or, if another reader
    /// renamed it to change flags meanwhile, the name with the same base.
    fn locate(&self, entry: &Entry) -> Result<Option<PathBuf>, StoreError> {
        let path = self.cur.join(&entry.name);
        if path.exists() {
            return Ok(Some(path));
        }
        let read_err = |e| StoreError::io("read", &self.cur, e);
        for found in fs::read_dir(&self.cur).map_err(read_err)? {
            let found = found.map_err(read_err)?;
            if let Ok(name) = found.file_name().into_string()
                && base_name(&name) == entry.base
            {
                return Ok(Some(found.path()));
            }
        }
        Ok(None)
    }
}

impl Maildrop for MaildirMaildrop {
    fn mailbox(&self) -> &MailboxName {
        &self.mailbox
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn read_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        check_indices(&[index], self.entries.len())?;
        let entry = &self.entries[index];
        let path = self
            .locate(entry)?
            .unwrap_or_else(|| self.cur.join(&entry.name));
        let file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        Ok(Box::new(CrlfReader::new(file)))
    }

    fn commit_deletions(self: Box<Self>, indices: &[usize]) -> Result<(), StoreError> {
        check_indices(indices, self.entries.len())?;
        let unique: BTreeSet<usize> = indices.iter().copied().collect();
        let mut removed = false;
        let mailbox_dir = self.cur.parent().unwrap_or(&self.cur).to_path_buf();
        forgetting_sizes(&self.sizes, &mailbox_dir, || {
            for index in unique {
                // Already gone (deleted by another reader) counts as deleted.
                let Some(path) = self.locate(&self.entries[index])? else {
                    continue;
                };
                match fs::remove_file(&path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", &path, e)),
                }
            }
            Ok(())
        })?;
        if removed {
            sync_dir(&self.cur)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_fields() {
        let name = "1700000000.M5P6Q7.host,S=10,W=12:2,S";
        assert_eq!(base_name(name), "1700000000.M5P6Q7.host,S=10,W=12");
        assert_eq!(crlf_size_field(base_name(name)), Some(12));
        assert_eq!(raw_size_field(base_name(name)), Some(10));
        assert_eq!(raw_size_field("1700000000.M5P6Q7.host,W=12"), None);
        assert_eq!(crlf_size_field("1700000000.M5P6Q7.host,S=10"), None);
        assert_eq!(crlf_size_field("1700000000.M5P6Q7.host,W=x"), None);
        assert_eq!(crlf_size_field("W=5.host"), None);
        assert_eq!(delivery_time(name), (1_700_000_000, 5));
        assert_eq!(delivery_time("1700000000.P1.host"), (1_700_000_000, 0));
        assert_eq!(delivery_time("1700000000"), (1_700_000_000, 0));
        assert_eq!(delivery_time("abc.M5"), (u64::MAX, u64::MAX));
        let mut names = [
            "1700000001.M1P1.h",
            "x",
            "1700000000.M12P1.h",
            "1700000000.M5P1.h",
        ];
        names.sort_by_key(|name| (delivery_time(name), *name));
        assert_eq!(
            names,
            [
                "1700000000.M5P1.h",
                "1700000000.M12P1.h",
                "1700000001.M1P1.h",
                "x"
            ]
        );
    }

    #[test]
    fn a_failed_write_voids_the_delivery() {
        let root = tempfile::tempdir().unwrap();
        let store = Maildir::new(root.path());
        let anna = MailboxName::new("anna").unwrap();
        let dir = store.ensure_layout(&anna).unwrap();
        let tmp_path = dir.join("tmp/1.M1P1Q1.test");
        fs::write(&tmp_path, b"").unwrap();
        // Opened read-only, so every write that reaches the file fails.
        let file = File::open(&tmp_path).unwrap();
        let mut delivery = Box::new(MaildirDelivery {
            dirs: vec![dir.clone()],
            base: "1.M1P1Q1.test".to_owned(),
            tmp_path: tmp_path.clone(),
            file: Some(BufWriter::with_capacity(16, file)),
            counter: CrlfSize::new(),
            quota: None,
            refused: false,
            sizes: Arc::default(),
            relist_after: SIZE_RELIST_AFTER,
        });
        let err = delivery.write_chunk(&[b'x'; 100]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { path, .. } if *path == tmp_path),
            "{err:?}"
        );
        assert!(delivery.write_chunk(b"more").is_err());
        let err = delivery.commit().unwrap_err();
        assert!(err.to_string().contains("earlier write failed"), "{err}");
        assert!(!tmp_path.exists());
        assert!(fs::read_dir(dir.join("new")).unwrap().next().is_none());
    }

    #[test]
    fn unique_bases_differ_and_have_no_separators() {
        let a = unique_base();
        let b = unique_base();
        assert_ne!(a, b);
        for base in [a, b] {
            assert!(!base.contains(['/', ':', ',']), "{base}");
            assert!(base.bytes().all(|c| c.is_ascii_graphic()), "{base}");
        }
    }
}
