//! The outbound queue: one suite over `MemorySpool`, `FolderSpool` and (with
//! the `postgres` feature) `PgSpool`, then
//! what a crash leaves in a `FolderSpool`: each intermediate state written
//! by hand, and a child process killed with SIGKILL in a loop.
//!
//! The SIGKILL test runs 16 rounds by default; `POSTAMT_SPOOL_CRASH_ROUNDS`
//! for more, `POSTAMT_SPOOL_CRASH_SEED` repeats a run (the seed is printed).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postamt_store::{
    FolderSpool, MemorySpool, STALE_TMP_AGE, Spool, SpoolId, SpoolWriter, StoreError,
};

#[cfg(feature = "postgres")]
mod pgtest;

/// Runs `check` on a fresh memory spool and a fresh folder spool, and on a
/// `PgSpool` in a fresh database when there is a server to test against.
fn both(check: impl Fn(&dyn Spool, &str)) {
    check(&MemorySpool::new(), "memory");
    let dir = tempfile::tempdir().unwrap();
    check(&FolderSpool::new(dir.path().join("queue")), "folder");
    #[cfg(feature = "postgres")]
    if let Some(db) = pgtest::TestDb::new() {
        check(&db.store().spool(), "postgres");
    }
}

fn spool_message(spool: &dyn Spool, chunks: &[&[u8]], record: &[u8]) -> SpoolId {
    let mut writer = spool.begin().unwrap();
    for chunk in chunks {
        writer.write_chunk(chunk).unwrap();
    }
    let id = writer.id().clone();
    writer.commit(record).unwrap();
    id
}

fn read_all(spool: &dyn Spool, id: &SpoolId) -> Vec<u8> {
    let mut bytes = Vec::new();
    spool.read(id).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

#[track_caller]
fn no_such(result: Result<impl std::fmt::Debug, StoreError>, id: &SpoolId, kind: &str) {
    match result {
        Err(StoreError::NoSuchSpoolEntry(found)) => assert_eq!(&found, id, "{kind}"),
        other => panic!("{kind}: expected NoSuchSpoolEntry({id}), got {other:?}"),
    }
}

#[test]
fn a_message_from_begin_to_remove() {
    both(|spool, kind| {
        assert!(spool.list().unwrap().is_empty(), "{kind}");
        let mut writer = spool.begin().unwrap();
        let id = writer.id().clone();
        writer.write_chunk(b"From: anna@kolleg.de\r\n").unwrap();
        writer.write_chunk(b"").unwrap();
        writer.write_chunk(b"\r\nHallo\r\n").unwrap();
        // Not there before commit.
        assert!(spool.list().unwrap().is_empty(), "{kind}");
        no_such(spool.read(&id).map(|_| ()), &id, kind);
        no_such(spool.update(&id, b"r"), &id, kind);
        writer.commit(b"record 1\n").unwrap();

        let listed = spool.list().unwrap();
        assert_eq!(listed.len(), 1, "{kind}");
        assert_eq!(listed[0].id, id, "{kind}");
        assert_eq!(listed[0].record, b"record 1\n", "{kind}");
        assert_eq!(listed[0].size, 31, "{kind}");
        assert_eq!(
            read_all(spool, &id),
            b"From: anna@kolleg.de\r\n\r\nHallo\r\n",
            "{kind}"
        );

        spool
            .update(&id, b"record 2, longer than the first\n")
            .unwrap();
        spool.update(&id, b"record 3\n").unwrap();
        assert_eq!(spool.list().unwrap()[0].record, b"record 3\n", "{kind}");
        assert_eq!(read_all(spool, &id).len(), 31, "{kind}");

        spool.remove(&id).unwrap();
        assert!(spool.list().unwrap().is_empty(), "{kind}");
        no_such(spool.remove(&id), &id, kind);
        no_such(spool.read(&id).map(|_| ()), &id, kind);
        no_such(spool.update(&id, b"r"), &id, kind);
    });
}

#[test]
fn empty_and_large_messages_and_records() {
    both(|spool, kind| {
        let empty = spool_message(spool, &[], b"");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<&[u8]> = big.chunks(7_777).collect();
        let large = spool_message(spool, &chunks, &big[..100_000]);
        let listed = spool.list().unwrap();
        assert_eq!(listed.len(), 2, "{kind}");
        assert_eq!((listed[0].size, listed[0].record.len()), (0, 0), "{kind}");
        assert_eq!(listed[1].size, 300_000, "{kind}");
        assert_eq!(listed[1].record, &big[..100_000], "{kind}");
        assert!(read_all(spool, &empty).is_empty(), "{kind}");
        assert_eq!(read_all(spool, &large), big, "{kind}");
    });
}

#[test]
fn dropped_without_commit_leaves_nothing() {
    both(|spool, kind| {
        let mut writer = spool.begin().unwrap();
        let id = writer.id().clone();
        writer.write_chunk(b"half a message").unwrap();
        drop(writer);
        drop(spool.begin().unwrap());
        assert!(spool.list().unwrap().is_empty(), "{kind}");
        no_such(spool.read(&id).map(|_| ()), &id, kind);
        no_such(spool.remove(&id), &id, kind);
    });
    let dir = tempfile::tempdir().unwrap();
    let spool = FolderSpool::new(dir.path());
    let mut writer = spool.begin().unwrap();
    writer.write_chunk(b"half a message").unwrap();
    drop(writer);
    for sub in ["tmp", "mail", "msg", "rec"] {
        assert_eq!(files(&dir.path().join(sub)), Vec::<String>::new(), "{sub}");
    }
}

#[test]
fn listed_in_the_order_begun_whatever_the_commit_order() {
    both(|spool, kind| {
        let writers: Vec<Box<dyn SpoolWriter>> = (0..6).map(|_| spool.begin().unwrap()).collect();
        let begun: Vec<SpoolId> = writers.iter().map(|w| w.id().clone()).collect();
        let mut writers: Vec<_> = writers.into_iter().map(Some).collect();
        for i in [3, 0, 5, 1, 4, 2] {
            let mut w = writers[i].take().unwrap();
            w.write_chunk(format!("message {i}").as_bytes()).unwrap();
            w.commit(format!("record {i}").as_bytes()).unwrap();
        }
        let listed = spool.list().unwrap();
        let ids: Vec<_> = listed.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, begun, "{kind}");
        for (i, entry) in listed.iter().enumerate() {
            assert_eq!(entry.record, format!("record {i}").as_bytes(), "{kind}");
            assert_eq!(
                read_all(spool, &entry.id),
                format!("message {i}").as_bytes()
            );
        }
        spool.remove(&begun[2]).unwrap();
        let later = spool_message(spool, &[b"m"], b"r");
        let ids: Vec<_> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 6, "{kind}");
        assert_eq!(ids.last(), Some(&later), "{kind}");
        assert!(!ids.contains(&begun[2]), "{kind}");
    });
}

#[test]
fn ids_are_unique() {
    both(|spool, kind| {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let writer = spool.begin().unwrap();
            assert!(
                seen.insert(writer.id().clone()),
                "{kind}: {:?}",
                writer.id()
            );
        }
    });
    // Two spools on one folder (as after a restart) never hand out one id twice.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (FolderSpool::new(dir.path()), FolderSpool::new(dir.path()));
    let mut seen = HashSet::new();
    for _ in 0..200 {
        for spool in [&a, &b] {
            let id = spool_message(spool, &[b"x"], b"r");
            assert!(seen.insert(id));
        }
    }
    assert_eq!(a.list().unwrap().len(), 400);
}

#[test]
fn folder_spool_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not/yet/there");
    let spool = FolderSpool::new(&root);
    assert_eq!(spool.dir(), root);
    assert!(!root.exists(), "nothing before first use");
    assert!(spool.list().unwrap().is_empty());
    let id = spool_message(&spool, &[b"Subject: x\r\n"], b"postamt-queue 1\nend\n");
    // `<secs>.<micros>_<pid>_<n>`, seconds of now.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (secs, rest) = id.as_str().split_once('.').unwrap();
    assert_eq!(secs.len(), 10);
    assert!(secs.parse::<u64>().unwrap().abs_diff(now) < 5, "{id}");
    let parts: Vec<&str> = rest.split('_').collect();
    assert_eq!(parts.len(), 3, "{id}");
    assert_eq!(parts[0].len(), 6, "{id}");
    assert_eq!(parts[1], std::process::id().to_string(), "{id}");
    // One file: the message, its first record, the trailer.
    assert_eq!(files(&root.join("mail")), [id.to_string()]);
    for sub in ["tmp", "msg", "rec"] {
        assert_eq!(files(&root.join(sub)), Vec::<String>::new(), "{sub}");
    }
    assert_eq!(
        fs::read(root.join("mail").join(id.as_str())).unwrap(),
        b"Subject: x\r\npostamt-queue 1\nend\npostamt-spool 1 0000000000000014\n"
    );
    // A later record goes to rec/ and supersedes the first.
    spool.update(&id, b"v2").unwrap();
    assert_eq!(files(&root.join("tmp")), Vec::<String>::new());
    assert_eq!(files(&root.join("rec")), [id.to_string()]);
    assert_eq!(fs::read(root.join("rec").join(id.as_str())).unwrap(), b"v2");
    assert_eq!(spool.list().unwrap()[0].record, b"v2");
    assert_eq!(spool.list().unwrap()[0].size, 12);
    assert_eq!(read_all(&spool, &id), b"Subject: x\r\n");
    spool.remove(&id).unwrap();
    for sub in ["tmp", "mail", "msg", "rec"] {
        assert_eq!(files(&root.join(sub)), Vec::<String>::new(), "{sub}");
    }

    // A folder that cannot be made: the error names it.
    let blocked = dir.path().join("file");
    fs::write(&blocked, b"").unwrap();
    let err = FolderSpool::new(&blocked).begin().err().unwrap();
    assert!(
        matches!(
            &err,
            StoreError::Io {
                action: "create",
                ..
            }
        ),
        "{err:?}"
    );
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Sets a file's modification time to two days ago: a leftover of a crash
/// long past.
fn age(path: &Path) {
    let old = SystemTime::now() - STALE_TMP_AGE - Duration::from_secs(12 * 3600);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// The trailer that ends a `mail/` file whose first record is `len` long.
fn trailer(len: usize) -> Vec<u8> {
    format!("postamt-spool 1 {len:016x}\n").into_bytes()
}

/// Each state a crash can leave, made by hand as the documentation of
/// `FolderSpool` describes the steps; after a "restart" (a new
/// `FolderSpool` value) only whole entries are listed, with the record
/// that counts, and old leftovers go.
#[test]
fn folder_spool_after_a_crash_in_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let before = FolderSpool::new(root);
    let whole = spool_message(&before, &[b"whole message\r\n"], b"record old\n");
    let mail = |id: &SpoolId| root.join("mail").join(id.as_str());
    let rec = |id: &SpoolId| root.join("rec").join(id.as_str());
    let tmp = |name: String| root.join("tmp").join(name);

    // 1. Killed while the message was written: its tmp file stays.
    let mut writer = before.begin().unwrap();
    writer.write_chunk(b"half").unwrap();
    let writing = writer.id().clone();
    std::mem::forget(writer);
    // 2. Killed in commit: the file whole and synced in tmp/, not renamed
    //    (or renamed, but the rename lost with `mail/` not yet synced).
    let mut writer = before.begin().unwrap();
    let committing = writer.id().clone();
    writer.write_chunk(b"committing").unwrap();
    std::mem::forget(writer);
    let mut file = b"committing record new\n".to_vec();
    file.extend(trailer(11));
    fs::write(tmp(committing.to_string()), &file).unwrap();
    // 3. Killed in the first update: the new record half written in tmp/,
    //    not renamed: the first record counts.
    let updating = spool_message(&before, &[b"updating"], b"record before update\n");
    fs::write(tmp(format!("{updating}.99.upd")), b"record af").unwrap();
    // 4. Killed in a later update: rec/ has the last whole one.
    let updated = spool_message(&before, &[b"updated"], b"record 1\n");
    before.update(&updated, b"record 2\n").unwrap();
    fs::write(tmp(format!("{updated}.98.upd")), b"record 3 cut").unwrap();
    // 5. Killed in remove after `mail/` was synced, before the record went:
    //    the record stays, alone.
    let removing = spool_message(&before, &[b"removing"], b"record 1\n");
    before.update(&removing, b"record 2\n").unwrap();
    fs::remove_file(mail(&removing)).unwrap();
    // 6. A message file whose trailer does not parse or does not fit (never
    //    made by us: damage), a record without any message, names that are
    //    not ours.
    let broken = SpoolId::new("1700000000.000000_1_3").unwrap();
    fs::write(mail(&broken), b"message without a trailer\n").unwrap();
    let overlong = SpoolId::new("1700000000.000000_1_4").unwrap();
    let mut file = b"short".to_vec();
    file.extend(trailer(6));
    fs::write(mail(&overlong), &file).unwrap();
    let orphan = SpoolId::new("1700000000.000000_1_1").unwrap();
    fs::write(rec(&orphan), b"record\n").unwrap();
    fs::write(root.join("mail/not an id"), b"x").unwrap();
    fs::write(root.join("rec/.hidden"), b"x").unwrap();
    fs::create_dir(root.join("rec/1700000000.000000_1_2")).unwrap();

    let after = FolderSpool::new(root);
    let listed = after.list().unwrap();
    let got: Vec<(&str, &[u8], u64)> = listed
        .iter()
        .map(|e| (e.id.as_str(), &e.record[..], e.size))
        .collect();
    assert_eq!(
        got,
        [
            (whole.as_str(), &b"record old\n"[..], 15),
            (updating.as_str(), &b"record before update\n"[..], 8),
            (updated.as_str(), &b"record 2\n"[..], 7),
        ]
    );
    assert_eq!(read_all(&after, &updated), b"updated");
    for id in [
        &writing,
        &committing,
        &removing,
        &broken,
        &overlong,
        &orphan,
    ] {
        no_such(after.read(id).map(|_| ()), id, "leftover");
        no_such(after.update(id, b"x"), id, "leftover");
        no_such(after.remove(id), id, "leftover");
    }
    // Fresh leftovers stay (a commit of another process may be under way).
    assert!(tmp(writing.to_string()).exists());
    assert!(tmp(committing.to_string()).exists() && rec(&removing).exists());

    // The interrupted updates' entries take a new update as usual.
    after.update(&updating, b"record after update\n").unwrap();
    assert_eq!(after.list().unwrap()[1].record, b"record after update\n");
    after.update(&updated, b"record 3\n").unwrap();
    assert_eq!(after.list().unwrap()[2].record, b"record 3\n");

    // Two days later they are gone; whole entries (and what is not ours)
    // stay.
    for path in [
        tmp(writing.to_string()),
        tmp(committing.to_string()),
        tmp(format!("{updating}.99.upd")),
        tmp(format!("{updated}.98.upd")),
        rec(&removing),
        rec(&orphan),
        mail(&whole),
        rec(&updated),
        mail(&broken),
    ] {
        age(&path);
    }
    assert_eq!(after.list().unwrap().len(), 3);
    assert_eq!(files(&root.join("tmp")), Vec::<String>::new());
    assert_eq!(
        files(&root.join("mail")),
        sorted([
            whole.to_string(),
            updating.to_string(),
            updated.to_string(),
            broken.to_string(),
            overlong.to_string(),
            "not an id".to_owned(),
        ])
    );
    assert_eq!(
        files(&root.join("rec")),
        sorted([
            ".hidden".to_owned(),
            "1700000000.000000_1_2".to_owned(),
            updating.to_string(),
            updated.to_string(),
        ])
    );
    assert_eq!(read_all(&after, &whole), b"whole message\r\n");
    // A removed entry's id is never handed out again while its record
    // lingers: ids come from the clock, so only check that a new one differs.
    assert_ne!(after.begin().unwrap().id(), &removing);
}

/// A queue as the first layout wrote it (postamt before the single file,
/// i.e. main up to 3e10ed2): `msg/<id>` with the octets, `rec/<id>` with
/// the record, each step of its commit and remove cut short too. After the
/// upgrade its whole entries are listed (in order with new ones), read,
/// updated and removed; its leftovers are not listed and go when old.
#[test]
fn a_queue_of_the_first_layout_is_read_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["tmp", "msg", "rec"] {
        fs::create_dir(root.join(sub)).unwrap();
    }
    let id = |s: &str| SpoolId::new(s).unwrap();
    let (old, updated, committing, removing) = (
        id("1764612345.000001_4711_0"),
        id("1764612345.000002_4711_1"),
        id("1764612345.000003_4711_2"),
        id("1764612345.000004_4711_3"),
    );
    let put = |sub: &str, id: &SpoolId, bytes: &[u8]| {
        fs::write(root.join(sub).join(id.as_str()), bytes).unwrap()
    };
    put("msg", &old, b"Subject: old\r\n\r\nfirst layout\r\n");
    put("rec", &old, b"postamt-queue 1\nold\n");
    put("msg", &updated, b"Subject: updated\r\n");
    put("rec", &updated, b"record 2\n");
    // Its update cut short: a half record in tmp/.
    fs::write(root.join(format!("tmp/{updated}.7.upd")), b"record 3 c").unwrap();
    // Its commit cut short: message linked, record still in tmp/.
    put("msg", &committing, b"Subject: committing\r\n");
    fs::write(root.join(format!("tmp/{committing}.rec")), b"r").unwrap();
    fs::write(
        root.join(format!("tmp/{committing}")),
        b"Subject: committing\r\n",
    )
    .unwrap();
    // Its remove cut short: record gone, message not yet.
    put("msg", &removing, b"Subject: removing\r\n");

    let spool = FolderSpool::new(root);
    let new = spool_message(&spool, &[b"Subject: new\r\n"], b"new record\n");
    let listed = spool.list().unwrap();
    let got: Vec<(&str, &[u8], u64)> = listed
        .iter()
        .map(|e| (e.id.as_str(), &e.record[..], e.size))
        .collect();
    assert_eq!(
        got,
        [
            (old.as_str(), &b"postamt-queue 1\nold\n"[..], 30),
            (updated.as_str(), &b"record 2\n"[..], 18),
            (new.as_str(), &b"new record\n"[..], 14),
        ]
    );
    assert_eq!(
        read_all(&spool, &old),
        b"Subject: old\r\n\r\nfirst layout\r\n"
    );
    for leftover in [&committing, &removing] {
        no_such(spool.read(leftover).map(|_| ()), leftover, "leftover");
        no_such(spool.update(leftover, b"x"), leftover, "leftover");
        no_such(spool.remove(leftover), leftover, "leftover");
    }
    // Updated in place, in its own layout.
    spool.update(&updated, b"record 3\n").unwrap();
    assert_eq!(
        fs::read(root.join("rec").join(updated.as_str())).unwrap(),
        b"record 3\n"
    );
    assert_eq!(spool.list().unwrap()[1].record, b"record 3\n");
    assert!(!root.join("mail").join(updated.as_str()).exists());
    // Removed: both files go.
    spool.remove(&old).unwrap();
    assert!(!root.join("msg").join(old.as_str()).exists());
    assert!(!root.join("rec").join(old.as_str()).exists());
    no_such(spool.remove(&old), &old, "removed");
    // A remove of the first layout cut after its record went (`rec/`
    // synced) leaves a message without a record: not listed.
    fs::remove_file(root.join("rec").join(updated.as_str())).unwrap();
    let ids: Vec<_> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, std::slice::from_ref(&new));
    // Old leftovers go; the new entry stays.
    for path in [
        root.join(format!("tmp/{updated}.7.upd")),
        root.join(format!("tmp/{committing}.rec")),
        root.join(format!("tmp/{committing}")),
        root.join("msg").join(committing.as_str()),
        root.join("msg").join(removing.as_str()),
        root.join("msg").join(updated.as_str()),
        root.join("mail").join(new.as_str()),
    ] {
        age(&path);
    }
    assert_eq!(spool.list().unwrap().len(), 1);
    for sub in ["tmp", "msg", "rec"] {
        assert_eq!(files(&root.join(sub)), Vec::<String>::new(), "{sub}");
    }
    assert_eq!(files(&root.join("mail")), [new.to_string()]);
}

fn sorted<const N: usize>(mut names: [String; N]) -> Vec<String> {
    names.sort();
    names.to_vec()
}

/// xorshift64*: repeatable sizes and kill moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A message's octets, known from its id and length alone.
fn body(id: &SpoolId, len: usize) -> Vec<u8> {
    id.as_str()
        .bytes()
        .chain(*b"\r\n")
        .cycle()
        .take(len)
        .collect()
}

/// A record of generation `generation` for `id`: long enough that a write
/// cut short would show, and checkable as a whole.
fn record(id: &SpoolId, generation: u32, len: usize) -> Vec<u8> {
    let mut out = format!("v{generation} {id} {len}\n").into_bytes();
    let filler = format!("line of generation {generation}\n");
    while out.len() < 40_000 {
        out.extend_from_slice(filler.as_bytes());
    }
    out.extend_from_slice(format!("end {id}\n").as_bytes());
    out
}

/// The generation and message length of a whole record, else `None`.
fn check_record(id: &SpoolId, bytes: &[u8]) -> Option<(u32, usize)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.lines().next()?;
    let mut words = head.split(' ');
    let generation: u32 = words.next()?.strip_prefix('v')?.parse().ok()?;
    (words.next()? == id.as_str()).then_some(())?;
    let len: usize = words.next()?.parse().ok()?;
    (record(id, generation, len) == bytes).then_some((generation, len))
}

/// The child of `folder_spool_survives_sigkill`: spools, updates and
/// removes in a loop until killed, saying on stdout what has returned.
#[test]
fn folder_spool_child_workload() {
    let Some(dir) = std::env::var_os("POSTAMT_SPOOL_CHILD") else {
        return;
    };
    let seed: u64 = std::env::var("POSTAMT_SPOOL_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let mut rng = Rng(seed | 1);
    let spool = FolderSpool::new(dir);
    let mut queued: Vec<(SpoolId, usize)> = spool
        .list()
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.size as usize))
        .collect();
    let out = std::io::stdout();
    let say = |what: &str, id: &SpoolId| {
        let mut out = out.lock();
        writeln!(out, "spool {what} {id}").unwrap();
        out.flush().unwrap();
    };
    say("ready", &SpoolId::new("x").unwrap());
    loop {
        let len = rng.below(150_000) as usize;
        let mut writer = spool.begin().unwrap();
        let id = writer.id().clone();
        let bytes = body(&id, len);
        let mut at = 0;
        while at < len {
            let n = (1 + rng.below(40_000) as usize).min(len - at);
            writer.write_chunk(&bytes[at..at + n]).unwrap();
            at += n;
        }
        say("committing", &id);
        writer.commit(&record(&id, 1, len)).unwrap();
        say("committed", &id);
        queued.push((id.clone(), len));
        if rng.below(2) == 0 {
            // Mostly the new one, sometimes an older one (of either layout).
            let (id, len) = if rng.below(3) == 0 {
                queued[rng.below(queued.len() as u64) as usize].clone()
            } else {
                (id, len)
            };
            say("updating", &id);
            spool.update(&id, &record(&id, 2, len)).unwrap();
            say("updated", &id);
        }
        if queued.len() > 12 || rng.below(3) == 0 {
            let (victim, _) = queued.remove(rng.below(queued.len() as u64) as usize);
            say("removing", &victim);
            spool.remove(&victim).unwrap();
            say("removed", &victim);
        }
    }
}

/// SIGKILL at a random moment, restart, check: every message whose commit
/// returned is listed with a whole record (the updated one when the update
/// returned), byte for byte; nothing removed comes back; whatever else is
/// listed is whole too.
#[test]
fn folder_spool_survives_sigkill() {
    if std::env::var_os("POSTAMT_SPOOL_CHILD").is_some() {
        return;
    }
    let rounds: u32 = std::env::var("POSTAMT_SPOOL_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(16);
    let seed: u64 = std::env::var("POSTAMT_SPOOL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("POSTAMT_SPOOL_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    // What the children said had returned, over all rounds.
    let mut committed: HashSet<SpoolId> = HashSet::new();
    let mut updated: HashSet<SpoolId> = HashSet::new();
    let mut removing: HashSet<SpoolId> = HashSet::new();
    let mut removed: HashSet<SpoolId> = HashSet::new();
    let mut total_ops = 0;
    // The queue starts with entries of the first layout (as today's main
    // left them), which the children update and remove like the others.
    for n in 0..6 {
        let id = SpoolId::new(format!("1764612345.{n:06}_4711_{n}")).unwrap();
        let len = 1000 * n;
        for sub in ["msg", "rec"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("msg").join(id.as_str()), body(&id, len)).unwrap();
        fs::write(
            dir.path().join("rec").join(id.as_str()),
            record(&id, 1, len),
        )
        .unwrap();
        committed.insert(id);
    }
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "folder_spool_child_workload", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("POSTAMT_SPOOL_CHILD", dir.path())
            .env("POSTAMT_SPOOL_CHILD_SEED", rng.below(u64::MAX).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // libtest prints `test NAME ... ` before the test's own output.
        while !line.contains("spool ready ") {
            line.clear();
            assert!(lines.read_line(&mut line).unwrap() > 0, "the child starts");
        }
        // Half the rounds kill at a random moment, half the moment the
        // child says it starts the n-th change (within its first steps).
        let mut rest = String::new();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(5 + rng.below(120)));
        } else {
            let mut starts = 1 + rng.below(12);
            while starts > 0 {
                line.clear();
                if lines.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                rest.push_str(&line);
                if ["committing", "updating", "removing"]
                    .iter()
                    .any(|start| line.contains(&format!("spool {start} ")))
                {
                    starts -= 1;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        lines.read_to_string(&mut rest).unwrap();
        // Only whole lines were said.
        let whole = &rest[..rest.rfind('\n').map_or(0, |i| i + 1)];
        for line in whole.lines() {
            let Some((what, id)) = line
                .find("spool ")
                .and_then(|at| line[at + 6..].split_once(' '))
            else {
                continue;
            };
            let id = SpoolId::new(id).unwrap();
            total_ops += 1;
            match what {
                "committing" | "updating" => {}
                "committed" => assert!(committed.insert(id)),
                "updated" => {
                    updated.insert(id);
                }
                // A remove cut short may be tried again after the restart.
                "removing" => {
                    removing.insert(id);
                }
                "removed" => assert!(removed.insert(id)),
                other => panic!("{other}"),
            }
        }

        let spool = FolderSpool::new(dir.path());
        let listed = spool.list().unwrap();
        let mut by_id = HashMap::new();
        for entry in &listed {
            let (generation, len) = check_record(&entry.id, &entry.record).unwrap_or_else(|| {
                panic!(
                    "round {round}: {} has a broken record ({} octets)",
                    entry.id,
                    entry.record.len()
                )
            });
            assert_eq!(entry.size, len as u64, "round {round}: {}", entry.id);
            assert_eq!(read_all(&spool, &entry.id), body(&entry.id, len));
            by_id.insert(entry.id.clone(), generation);
        }
        for id in &committed {
            if removing.contains(id) {
                if removed.contains(id) {
                    assert!(!by_id.contains_key(id), "round {round}: {id} came back");
                }
                continue;
            }
            let generation = by_id
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: committed {id} is lost"));
            if updated.contains(id) {
                assert_eq!(*generation, 2, "round {round}: {id} lost its update");
            }
        }
        let ids: Vec<_> = listed.iter().map(|e| e.id.clone()).collect();
        let mut in_order = ids.clone();
        in_order.sort_by_key(|id| {
            let (time, rest) = id.as_str().split_once('_').unwrap();
            let n: u64 = rest.split('_').nth(1).unwrap().parse().unwrap();
            (time.to_owned(), n)
        });
        assert_eq!(ids, in_order, "round {round}: oldest first");
    }
    println!(
        "{total_ops} steps: {} committed, {} updated, {} removed",
        committed.len(),
        updated.len(),
        removed.len()
    );
    assert!(
        total_ops > rounds as usize,
        "the children did too little to show anything ({total_ops} steps)"
    );
}
