//! What only the PostgreSQL store has: several front ends on one database
//! (maildrop leases, queue claims, their expiry when a front end dies),
//! messages in chunks, hashed passwords, the schema's migrations.
//!
//! Each test has a database of its own on `POSTAMT_TEST_POSTGRES` and
//! skips without it (fails under `CI=true`).
#![cfg(feature = "postgres")]

mod pgtest;

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use pgtest::{TestDb, short_lease};
use postamt_store::pg::CHUNK_SIZE;
use postamt_store::{
    ApopSecrets, Directory, MailStore, MailboxName, Maildrop, PgStore, Spool, SpoolId,
    StaticDirectory, StoreError,
};

fn mailbox(name: &str) -> MailboxName {
    MailboxName::new(name).unwrap()
}

fn deliver(store: &dyn MailStore, to: &[&str], bytes: &[u8]) {
    let to: Vec<MailboxName> = to.iter().map(|n| mailbox(n)).collect();
    let mut delivery = store.begin_delivery(&to).unwrap();
    delivery.write_chunk(bytes).unwrap();
    delivery.commit().unwrap();
}

fn read_all(maildrop: &dyn Maildrop, index: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    maildrop
        .read_message(index)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[track_caller]
fn locked(result: Result<Box<dyn Maildrop>, StoreError>, name: &str) {
    match result {
        Err(StoreError::Locked(m)) => assert_eq!(m.as_str(), name),
        Err(e) => panic!("expected Locked({name}), got {e:?}"),
        Ok(_) => panic!("expected Locked({name}), the maildrop opened"),
    }
}

/// Tries `attempt` every 50 ms until it gives `Some`, at most `limit`.
#[track_caller]
fn eventually<T>(limit: Duration, mut attempt: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(value) = attempt() {
            return (value, start.elapsed());
        }
        assert!(start.elapsed() < limit, "nothing after {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The soonest a dead front end's lease can be taken after its death: the
/// heartbeat renewed it at most a beat (a third of the TTL) before.
fn earliest_takeover(ttl: Duration) -> Duration {
    ttl * 2 / 3 - Duration::from_millis(100)
}

const MESSAGE: &[u8] = b"Subject: eins\r\n\r\nHallo\r\n";

#[test]
fn the_maildrop_lock_holds_across_front_ends() {
    let Some(db) = TestDb::new() else { return };
    let (a, b) = (db.store(), db.store());
    assert_ne!(a.instance(), b.instance());
    deliver(&a, &["anna"], MESSAGE);
    let held = a.open_maildrop(&mailbox("anna")).unwrap();
    locked(b.open_maildrop(&mailbox("anna")), "anna");
    locked(a.open_maildrop(&mailbox("anna")), "anna");
    // Others' mailboxes and delivery are not held up.
    b.open_maildrop(&mailbox("bob")).unwrap();
    deliver(&b, &["anna"], MESSAGE);
    drop(held);
    let maildrop = b.open_maildrop(&mailbox("anna")).unwrap();
    assert_eq!(maildrop.messages().len(), 2);
    locked(a.open_maildrop(&mailbox("anna")), "anna");
    maildrop.commit_deletions(&[0]).unwrap();
    assert_eq!(
        a.open_maildrop(&mailbox("anna")).unwrap().messages().len(),
        1
    );
}

#[test]
fn a_dead_front_ends_lease_runs_out_and_a_live_ones_does_not() {
    let Some(db) = TestDb::new() else { return };
    let ttl = Duration::from_millis(1500);
    let live = db.store_with(short_lease(ttl));
    let other = db.store_with(short_lease(ttl));
    deliver(&live, &["anna", "bob"], MESSAGE);

    // Renewed by the heartbeat: held well past its TTL.
    let held = live.open_maildrop(&mailbox("anna")).unwrap();
    thread::sleep(ttl * 2);
    locked(other.open_maildrop(&mailbox("anna")), "anna");
    drop(held);

    // A front end dies holding bob's maildrop: its session never ends, its
    // heartbeat stops.
    let dying = db.store_with(short_lease(ttl));
    let orphan = dying.open_maildrop(&mailbox("bob")).unwrap();
    let started = Instant::now();
    drop(dying);
    locked(other.open_maildrop(&mailbox("bob")), "bob");
    let (taken, _) = eventually(Duration::from_secs(15), || {
        other.open_maildrop(&mailbox("bob")).ok()
    });
    let waited = started.elapsed();
    assert!(
        waited >= earliest_takeover(ttl),
        "taken after {waited:?}, the TTL is {ttl:?}"
    );
    assert_eq!(taken.messages().len(), 1);
    // The dead session's deletions are refused: it no longer holds the lock.
    match orphan.commit_deletions(&[0]) {
        Err(StoreError::Locked(m)) => assert_eq!(m.as_str(), "bob"),
        other => panic!("{other:?}"),
    }
    assert_eq!(read_all(&*taken, 0), MESSAGE);
    drop(taken);

    // A maildrop forgotten without a drop: released when its store is gone.
    let forgetful = db.store_with(short_lease(ttl));
    std::mem::forget(forgetful.open_maildrop(&mailbox("anna")).unwrap());
    drop(forgetful);
    eventually(Duration::from_secs(15), || {
        other.open_maildrop(&mailbox("anna")).ok()
    });
}

#[test]
fn a_large_message_is_stored_in_chunks_and_streamed_back() {
    let Some(db) = TestDb::new() else { return };
    let store = db.store();
    // 20 MiB of LF lines: served with CRLF, so one octet more per line.
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxy\n";
    let lines = 20 * 1024 * 1024 / line.len();
    let message: Vec<u8> = line.repeat(lines);
    let mut delivery = store.begin_delivery(&[mailbox("anna")]).unwrap();
    for (i, chunk) in message.chunks(64 * 1024).enumerate() {
        delivery.write_chunk(chunk).unwrap();
        if i == 100 {
            // Half written: staged in the database, in no mailbox yet.
            let staged: i64 = db
                .client()
                .query_one(
                    "SELECT count(*) FROM postamt_messages WHERE writer IS NOT NULL",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(staged, 1);
            assert!(
                store
                    .open_maildrop(&mailbox("anna"))
                    .unwrap()
                    .messages()
                    .is_empty()
            );
        }
    }
    delivery.commit().unwrap();

    let mut client = db.client();
    let row = client
        .query_one(
            "SELECT count(*), max(length(data)), sum(length(data))::bigint FROM postamt_chunks",
            &[],
        )
        .unwrap();
    let (count, longest, total): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(total as usize, message.len());
    assert_eq!(longest as usize, CHUNK_SIZE);
    assert_eq!(count as usize, message.len().div_ceil(CHUNK_SIZE));
    assert_eq!(
        store.mailbox_size(&mailbox("anna")).unwrap(),
        message.len() as u64
    );

    let maildrop = store.open_maildrop(&mailbox("anna")).unwrap();
    let served = message.len() + lines;
    assert_eq!(maildrop.messages()[0].size, served as u64);
    let mut reader = maildrop.read_message(0).unwrap();
    let mut buf = vec![0; 100_000];
    let (mut n, mut same) = (0, true);
    loop {
        let got = reader.read(&mut buf).unwrap();
        if got == 0 {
            break;
        }
        for &b in &buf[..got] {
            // The served stream is the message with CR before every LF.
            let line_pos = n % (line.len() + 1);
            let expected = match line_pos {
                p if p == line.len() - 1 => b'\r',
                p if p == line.len() => b'\n',
                p => line[p],
            };
            same &= b == expected;
            n += 1;
        }
    }
    assert!(same, "the served message differs");
    assert_eq!(n, served);
    maildrop.commit_deletions(&[0]).unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM postamt_chunks", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "deleting the last copy deletes its chunks");
    assert_eq!(store.mailbox_size(&mailbox("anna")).unwrap(), 0);
}

#[test]
fn what_a_dead_writer_left_is_cleared_after_its_lease() {
    let Some(db) = TestDb::new() else { return };
    let ttl = Duration::from_millis(1000);
    let survivor = db.store_with(short_lease(ttl));
    let dying = db.store_with(short_lease(ttl));
    let mut delivery = dying.begin_delivery(&[mailbox("anna")]).unwrap();
    delivery.write_chunk(&vec![b'x'; CHUNK_SIZE + 10]).unwrap();
    let mut writer = dying.spool().begin().unwrap();
    writer.write_chunk(&vec![b'y'; CHUNK_SIZE * 2]).unwrap();
    std::mem::forget(delivery);
    std::mem::forget(writer);
    drop(dying);
    let mut client = db.client();
    let mut count = |sql: &str| -> i64 { client.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(count("SELECT count(*) FROM postamt_chunks"), 1);
    assert_eq!(count("SELECT count(*) FROM postamt_spool_chunks"), 2);
    eventually(Duration::from_secs(15), || {
        (count("SELECT count(*) FROM postamt_chunks") == 0
            && count("SELECT count(*) FROM postamt_spool_chunks") == 0
            && count("SELECT count(*) FROM postamt_messages") == 0
            && count("SELECT count(*) FROM postamt_spool") == 0)
            .then_some(())
    });
    assert!(survivor.spool().list().unwrap().is_empty());
}

#[test]
fn the_limit_is_checked_again_at_commit_across_front_ends() {
    let Some(db) = TestDb::new() else { return };
    let mut options = pgtest::options();
    options.mailbox_size_limit = Some(1000);
    let (a, b) = (db.store_with(options.clone()), db.store_with(options));
    let mut slow = a.begin_delivery(&[mailbox("anna")]).unwrap();
    deliver(&b, &["anna"], &[b'x'; 600]);
    // The sizes `slow` saw at its start had room; the commit sees anna full.
    slow.write_chunk(&[b'y'; 600]).unwrap();
    match slow.commit() {
        Err(StoreError::QuotaExceeded { mailbox, limit }) => {
            assert_eq!((mailbox.as_str(), limit), ("anna", 1000));
        }
        other => panic!("{other:?}"),
    }
    let maildrop = a.open_maildrop(&mailbox("anna")).unwrap();
    assert_eq!(maildrop.messages().len(), 1);
    assert_eq!(
        read_all(&*maildrop, 0),
        [&[b'x'; 600][..], b"\r\n"].concat()
    );
    assert_eq!(a.mailbox_size(&mailbox("anna")).unwrap(), 600);
}

#[test]
fn crossing_deliveries_and_deletions_neither_deadlock_nor_leak() {
    let Some(db) = TestDb::new() else { return };
    let stores = [db.store(), db.store()];
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = stores[t % 2].clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                for i in 0..15 {
                    let to: &[&str] = if t % 2 == 0 {
                        &["anna", "bob"]
                    } else {
                        &["bob", "anna"]
                    };
                    deliver(&store, to, format!("Subject: {t}/{i}\r\n\r\n").as_bytes());
                    // Delete what is there, when the mailbox is free.
                    let name = to[i % 2];
                    if let Ok(maildrop) = store.open_maildrop(&mailbox(name)) {
                        let all: Vec<usize> = (0..maildrop.messages().len()).collect();
                        maildrop.commit_deletions(&all).unwrap();
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    for name in ["anna", "bob"] {
        let maildrop = stores[0].open_maildrop(&mailbox(name)).unwrap();
        let all: Vec<usize> = (0..maildrop.messages().len()).collect();
        maildrop.commit_deletions(&all).unwrap();
        assert_eq!(stores[0].mailbox_size(&mailbox(name)).unwrap(), 0, "{name}");
    }
    let mut client = db.client();
    for table in [
        "postamt_messages",
        "postamt_chunks",
        "postamt_mailbox_messages",
    ] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
}

fn spool_message(spool: &dyn Spool, body: &[u8], record: &[u8]) -> SpoolId {
    let mut writer = spool.begin().unwrap();
    writer.write_chunk(body).unwrap();
    let id = writer.id().clone();
    writer.commit(record).unwrap();
    id
}

fn ids(entries: &[postamt_store::SpoolEntry]) -> Vec<SpoolId> {
    entries.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn each_queued_message_has_one_claimer() {
    let Some(db) = TestDb::new() else { return };
    let (a, b) = (db.store().spool(), db.store().spool());
    assert_ne!(a.holder(), b.holder());
    let queued: Vec<SpoolId> = (0..6)
        .map(|i| spool_message(&a, format!("message {i}").as_bytes(), b"record"))
        .collect();
    // What a committed stays its own; every front end lists everything.
    assert!(b.claim(100).unwrap().is_empty());
    assert!(a.claim(100).unwrap().is_empty(), "a holds them already");
    assert_eq!(ids(&b.list().unwrap()), queued);
    // Only the holder changes a message.
    match b.update(&queued[0], b"stolen") {
        Err(StoreError::Claimed(id)) => assert_eq!(id, queued[0]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(b.remove(&queued[0]), Err(StoreError::Claimed(_))));
    a.update(&queued[0], b"record 2").unwrap();
    assert_eq!(b.list().unwrap()[0].record, b"record 2");
    // Released ones go to the next claimer, oldest first, `max` at a time.
    for id in &queued[..4] {
        a.release(id).unwrap();
    }
    b.release(&queued[5]).unwrap(); // not b's: changes nothing
    let first = b.claim(3).unwrap();
    assert_eq!(ids(&first), queued[..3]);
    assert_eq!(first[0].record, b"record 2");
    assert_eq!(first[1].size, 9);
    assert_eq!(ids(&a.claim(10).unwrap()), queued[3..4]);
    assert!(b.claim(10).unwrap().is_empty());
    b.update(&queued[0], b"b's now").unwrap();
    assert!(matches!(
        a.update(&queued[0], b"x"),
        Err(StoreError::Claimed(_))
    ));
    b.remove(&queued[0]).unwrap();
    assert!(matches!(
        b.remove(&queued[0]),
        Err(StoreError::NoSuchSpoolEntry(_))
    ));
    assert_eq!(b.list().unwrap().len(), 5);
    // A front end that stops cleanly hands everything on at once.
    assert_eq!(a.release_all().unwrap(), 3);
    assert_eq!(b.release_all().unwrap(), 2);
    assert_eq!(ids(&b.claim(10).unwrap()), queued[1..]);
}

#[test]
fn concurrent_claimers_never_get_the_same_message() {
    let Some(db) = TestDb::new() else { return };
    let producer = db.store().spool();
    let queued: HashSet<SpoolId> = (0..60)
        .map(|i| {
            let id = spool_message(&producer, format!("m{i}").as_bytes(), b"r");
            producer.release(&id).unwrap();
            id
        })
        .collect();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let spool = db.store().spool();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::new();
                loop {
                    let got = spool.claim(2).unwrap();
                    if got.is_empty() {
                        return (spool, mine);
                    }
                    mine.extend(got.into_iter().map(|e| e.id));
                }
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut seen = HashSet::new();
    for (_, mine) in &results {
        for id in mine {
            assert!(seen.insert(id.clone()), "{id} claimed twice");
        }
    }
    assert_eq!(seen, queued);
}

#[test]
fn a_dead_front_ends_claims_are_taken_over() {
    let Some(db) = TestDb::new() else { return };
    let ttl = Duration::from_millis(1500);
    let survivor = db.store_with(short_lease(ttl)).spool();
    let dying_store = db.store_with(short_lease(ttl));
    let dying = dying_store.spool();
    let id = spool_message(&dying, b"Subject: x\r\n\r\n", b"attempt 1");
    // Renewed while its front end lives.
    thread::sleep(ttl * 2);
    assert!(survivor.claim(10).unwrap().is_empty());
    let started = Instant::now();
    drop(dying_store);
    // A spool keeps its store's heartbeat going: only both gone is a death.
    drop(dying);
    let (got, _) = eventually(Duration::from_secs(15), || {
        let got = survivor.claim(10).unwrap();
        (!got.is_empty()).then_some(got)
    });
    assert!(started.elapsed() >= earliest_takeover(ttl));
    assert_eq!(ids(&got), std::slice::from_ref(&id));
    assert_eq!(got[0].record, b"attempt 1");
    survivor.update(&id, b"attempt 2").unwrap();
    let mut text = Vec::new();
    survivor.read(&id).unwrap().read_to_end(&mut text).unwrap();
    assert_eq!(text, b"Subject: x\r\n\r\n");
    survivor.remove(&id).unwrap();
    assert!(survivor.list().unwrap().is_empty());
}

#[test]
fn passwords_are_stored_as_argon2_hashes() {
    let Some(db) = TestDb::new() else { return };
    let store = db.store();
    let anna = store
        .set_user(
            "Anna@Kolleg.de",
            "geheim",
            &["sekretariat@verein.example"],
            ApopSecrets::Discard,
        )
        .unwrap();
    assert_eq!(anna.as_str(), "anna@kolleg.de");
    store
        .set_user("bob@kolleg.de", "topSecret", &[], ApopSecrets::Keep)
        .unwrap();
    let mut client = db.client();
    for row in client
        .query(
            "SELECT address, password_hash, apop_secret FROM postamt_users ORDER BY address",
            &[],
        )
        .unwrap()
    {
        let (address, hash): (String, String) = (row.get(0), row.get(1));
        let apop: Option<Vec<u8>> = row.get(2);
        assert!(hash.starts_with("$argon2id$"), "{address}: {hash}");
        assert!(
            !hash.contains("geheim") && !hash.contains("topSecret"),
            "{hash}"
        );
        match address.as_str() {
            "anna@kolleg.de" => assert_eq!(apop, None),
            "bob@kolleg.de" => assert_eq!(apop.as_deref(), Some(&b"topSecret"[..])),
            other => panic!("{other}"),
        }
    }
    assert_eq!(store.verify_password("anna", b"geheim"), Some(anna.clone()));
    assert_eq!(
        store.verify_password("ANNA@kolleg.de", b"geheim"),
        Some(anna.clone())
    );
    assert_eq!(store.verify_password("anna", b"Geheim"), None);
    assert_eq!(
        store.verify_password("sekretariat@verein.example", b"geheim"),
        None
    );
    assert_eq!(store.verify_password("carl", b"geheim"), None);
    // APOP only for the user stored with a secret.
    assert!(store.apop_secret("anna").is_none());
    let apop = store.apop_secret("bob").unwrap();
    assert_eq!(
        (apop.mailbox().as_str(), apop.secret()),
        ("bob@kolleg.de", &b"topSecret"[..])
    );
    assert_eq!(
        store.resolve("Sekretariat@Verein.Example"),
        Some(anna.clone())
    );
    assert_eq!(store.resolve("carl@kolleg.de"), None);
    assert!(store.is_local_domain("VEREIN.example"));
    assert!(!store.is_local_domain("example.org"));
    // Addresses are one user's only; an ambiguous local part logs in no one.
    assert!(matches!(
        store.set_user(
            "carl@kolleg.de",
            "x",
            &["anna@kolleg.de"],
            ApopSecrets::Discard
        ),
        Err(StoreError::InvalidUser { .. })
    ));
    assert!(matches!(
        store.set_user("sekretariat@verein.example", "x", &[], ApopSecrets::Discard),
        Err(StoreError::InvalidUser { .. })
    ));
    assert_eq!(store.resolve("carl@kolleg.de"), None);
    store
        .set_user("anna@verein.example", "zwei", &[], ApopSecrets::Discard)
        .unwrap();
    assert_eq!(store.verify_password("anna", b"geheim"), None);
    assert!(store.remove_user("anna@verein.example").unwrap());
    assert!(!store.remove_user("anna@verein.example").unwrap());
    assert_eq!(store.verify_password("anna", b"geheim"), Some(anna));
}

#[test]
fn importing_a_users_file_twice_updates() {
    let Some(db) = TestDb::new() else { return };
    let store = db.store();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(
        &path,
        "anna@kolleg.de geheim anna.schmidt@kolleg.de\nbob@kolleg.de topSecret\n",
    )
    .unwrap();
    assert_eq!(
        store.import_users_file(&path, ApopSecrets::Keep).unwrap(),
        2
    );
    assert_eq!(
        store.import_users_file(&path, ApopSecrets::Keep).unwrap(),
        2
    );
    let mut client = db.client();
    let mut count = |table: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!((count("postamt_users"), count("postamt_aliases")), (2, 1));
    assert_eq!(
        store.resolve("anna.schmidt@kolleg.de").unwrap().as_str(),
        "anna@kolleg.de"
    );
    assert_eq!(store.apop_secret("bob").unwrap().secret(), b"topSecret");

    // Changed: anna's password and alias; bob without APOP now; a new user.
    let changed: StaticDirectory = "anna@kolleg.de neu sekretariat@kolleg.de\n\
         bob@kolleg.de topSecret\ncarl@verein.example c4rl\n"
        .parse()
        .unwrap();
    assert_eq!(
        store.import_users(&changed, ApopSecrets::Discard).unwrap(),
        3
    );
    assert_eq!(store.verify_password("anna", b"geheim"), None);
    assert!(store.verify_password("anna", b"neu").is_some());
    assert_eq!(store.resolve("anna.schmidt@kolleg.de"), None);
    assert!(store.resolve("sekretariat@kolleg.de").is_some());
    assert!(store.apop_secret("bob").is_none());
    assert!(store.verify_password("carl", b"c4rl").is_some());
    assert!(store.is_local_domain("verein.example"));
    assert_eq!((count("postamt_users"), count("postamt_aliases")), (3, 1));

    // A file that clashes with the database changes nothing.
    store
        .set_user(
            "dora@kolleg.de",
            "d",
            &["info@kolleg.de"],
            ApopSecrets::Discard,
        )
        .unwrap();
    let clash: StaticDirectory = "erik@kolleg.de e\nanna@kolleg.de other info@kolleg.de\n"
        .parse()
        .unwrap();
    assert!(matches!(
        store.import_users(&clash, ApopSecrets::Discard),
        Err(StoreError::InvalidUser { .. })
    ));
    assert!(store.verify_password("erik", b"e").is_none());
    assert!(store.verify_password("anna", b"neu").is_some());
}

#[test]
fn the_schema_is_migrated_once() {
    let Some(db) = TestDb::new() else { return };
    let stores: Vec<PgStore> = thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| db.store())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let again = db.store();
    assert_eq!(again.schema_version().unwrap(), 1);
    let rows = db
        .client()
        .query("SELECT version FROM postamt_schema ORDER BY version", &[])
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1]);
    deliver(&stores[0], &["anna"], MESSAGE);
    assert_eq!(
        again
            .open_maildrop(&mailbox("anna"))
            .unwrap()
            .messages()
            .len(),
        1
    );
}

#[test]
fn errors_name_the_database_and_keep_the_password_out() {
    if pgtest::server().is_none() {
        return;
    }
    let mut options = pgtest::options();
    options.connect_timeout = Duration::from_secs(2);
    let err = PgStore::connect_with(
        "host=127.0.0.1 port=1 user=anna password=s3cr3t-pw dbname=x",
        options,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert!(text.starts_with("database: cannot connect"), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
}

/// The rule of `postamt_wire::crlf`, byte by byte, to check what is served.
fn crlf_reference(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' if i == 0 || bytes[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// However a message arrives (chunks of any size, CR and LF anywhere,
    /// across the store's chunk boundaries), it is stored in chunks of at
    /// most `CHUNK_SIZE` and served as the rule says, at the listed size.
    #[test]
    fn stored_whatever_the_chunking(
        extra in 0usize..CHUNK_SIZE,
        seed in proptest::prelude::any::<u64>(),
        cuts in proptest::collection::vec(1usize..200_000, 1..40),
    ) {
        let Some(db) = TestDb::new() else { return Ok(()) };
        let store = db.store();
        // Pseudo-random octets with many CR and LF, one to three chunks long.
        let mut state = seed | 1;
        let message: Vec<u8> = (0..CHUNK_SIZE + extra * 2)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                match state % 16 {
                    0 => b'\r',
                    1 => b'\n',
                    _ => (state >> 8) as u8,
                }
            })
            .collect();
        let mut delivery = store.begin_delivery(&[mailbox("anna")]).unwrap();
        let mut rest = &message[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
            delivery.write_chunk(chunk).unwrap();
            rest = tail;
        }
        delivery.commit().unwrap();
        let longest: i32 = db
            .client()
            .query_one("SELECT max(length(data)) FROM postamt_chunks", &[])
            .unwrap()
            .get(0);
        proptest::prop_assert!(longest as usize <= CHUNK_SIZE);
        let maildrop = store.open_maildrop(&mailbox("anna")).unwrap();
        let served = read_all(&*maildrop, 0);
        proptest::prop_assert_eq!(maildrop.messages()[0].size, served.len() as u64);
        proptest::prop_assert!(served == crlf_reference(&message), "served octets differ");
    }
}

#[test]
fn a_database_that_is_gone_says_so_instead_of_no() {
    let Some(db) = TestDb::new() else {
        return;
    };
    // Each call on the gone database waits this long for a connection.
    let mut options = pgtest::options();
    options.connect_timeout = Duration::from_millis(500);
    let store = db.store_with(options);
    store
        .import_users(&StaticDirectory::demo(), ApopSecrets::Discard)
        .unwrap();
    assert_eq!(
        store.lookup("bob@kolleg.de").unwrap(),
        Some(mailbox("bob@kolleg.de"))
    );
    assert_eq!(store.lookup("nobody@kolleg.de").unwrap(), None);
    assert!(store.check_local_domain("kolleg.de").unwrap());
    assert_eq!(
        store.check_password("bob", b"topSecret").unwrap(),
        Some(mailbox("bob@kolleg.de"))
    );
    assert_eq!(store.check_password("bob", b"wrong").unwrap(), None);
    db.drop_now();
    // The fallible forms say the database cannot answer; the plain ones
    // answer "no", as a directory without errors must.
    assert!(matches!(
        store.lookup("bob@kolleg.de"),
        Err(StoreError::Database(_))
    ));
    assert!(matches!(
        store.check_local_domain("kolleg.de"),
        Err(StoreError::Database(_))
    ));
    assert!(matches!(
        store.check_password("bob", b"topSecret"),
        Err(StoreError::Database(_))
    ));
    assert_eq!(store.resolve("bob@kolleg.de"), None);
    assert!(!store.is_local_domain("kolleg.de"));
}
