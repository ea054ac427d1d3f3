//! One suite, run against every store: `MemoryStore`, `Maildir` and (with
//! the `postgres` feature and `POSTAMT_TEST_POSTGRES`) `PgStore` must
//! behave the same through the traits.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::thread;

use postamt_store::{MailStore, MailboxName, Maildir, Maildrop, MemoryStore, StoreError, Uid};

/// A store under test, with whatever keeps it alive and a way to look for
/// leftovers of aborted deliveries.
trait Harness: Sized {
    type Store: MailStore + Clone + 'static;
    fn new() -> Self;
    /// A store whose mailboxes hold at most `limit` octets each.
    fn with_mailbox_limit(limit: u64) -> Self;
    fn store(&self) -> &Self::Store;
    /// Files a delivery may have left outside the listing (none for memory).
    fn stray_files(&self, mailbox: &MailboxName) -> Vec<String>;
    /// Whether this store's tests skip here (a server that is not there).
    fn skip() -> bool {
        false
    }
}

struct Memory(MemoryStore);

impl Harness for Memory {
    type Store = MemoryStore;
    fn new() -> Self {
        Self(MemoryStore::new())
    }
    fn with_mailbox_limit(limit: u64) -> Self {
        Self(MemoryStore::new().with_mailbox_size_limit(Some(limit)))
    }
    fn store(&self) -> &MemoryStore {
        &self.0
    }
    fn stray_files(&self, _: &MailboxName) -> Vec<String> {
        Vec::new()
    }
}

struct OnDisk {
    store: Maildir,
    _dir: tempfile::TempDir,
}

impl Harness for OnDisk {
    type Store = Maildir;
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            store: Maildir::new(dir.path()),
            _dir: dir,
        }
    }
    fn with_mailbox_limit(limit: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            store: Maildir::new(dir.path()).with_mailbox_size_limit(Some(limit)),
            _dir: dir,
        }
    }
    fn store(&self) -> &Maildir {
        &self.store
    }
    fn stray_files(&self, mailbox: &MailboxName) -> Vec<String> {
        let root = self.store.mailbox_path(mailbox);
        let mut found = Vec::new();
        for sub in ["tmp", "new"] {
            found.extend(
                list(&root.join(sub))
                    .into_iter()
                    .map(|name| format!("{sub}/{name}")),
            );
        }
        found
    }
}

#[cfg(feature = "postgres")]
mod pgtest;

/// A fresh database of its own per test.
#[cfg(feature = "postgres")]
struct Pg {
    store: postamt_store::PgStore,
    db: pgtest::TestDb,
}

#[cfg(feature = "postgres")]
impl Harness for Pg {
    type Store = postamt_store::PgStore;
    fn new() -> Self {
        let db = pgtest::TestDb::new().unwrap();
        Self {
            store: db.store(),
            db,
        }
    }
    fn with_mailbox_limit(limit: u64) -> Self {
        let db = pgtest::TestDb::new().unwrap();
        let mut options = pgtest::options();
        options.mailbox_size_limit = Some(limit);
        Self {
            store: db.store_with(options),
            db,
        }
    }
    fn store(&self) -> &postamt_store::PgStore {
        &self.store
    }
    /// Messages (any mailbox's) begun and not committed, and chunks of
    /// messages no longer there.
    fn stray_files(&self, _: &MailboxName) -> Vec<String> {
        let mut client = self.db.client();
        let mut found: Vec<String> = client
            .query(
                "SELECT id FROM postamt_messages WHERE writer IS NOT NULL",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| format!("staged message {}", row.get::<_, i64>(0)))
            .collect();
        let orphans: i64 = client
            .query_one(
                "SELECT count(*) FROM postamt_messages m WHERE writer IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM postamt_mailbox_messages mm WHERE mm.message_id = m.id)",
                &[],
            )
            .unwrap()
            .get(0);
        if orphans > 0 {
            found.push(format!("{orphans} messages in no mailbox"));
        }
        found
    }
    fn skip() -> bool {
        pgtest::server().is_none()
    }
}

fn list(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn mailbox(name: &str) -> MailboxName {
    MailboxName::new(name).unwrap()
}

fn deliver(store: &impl MailStore, to: &[&str], chunks: &[&[u8]]) {
    let recipients: Vec<MailboxName> = to.iter().map(|name| mailbox(name)).collect();
    let mut delivery = store.begin_delivery(&recipients).unwrap();
    for chunk in chunks {
        delivery.write_chunk(chunk).unwrap();
    }
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

/// Every message in `name`, read back in listing order.
fn contents(store: &impl MailStore, name: &str) -> Vec<Vec<u8>> {
    let maildrop = store.open_maildrop(&mailbox(name)).unwrap();
    (0..maildrop.messages().len())
        .map(|i| read_all(&*maildrop, i))
        .collect()
}

fn uids(maildrop: &dyn Maildrop) -> Vec<Uid> {
    maildrop.messages().iter().map(|m| m.uid.clone()).collect()
}

const FIRST: &[u8] = b"From: anna@kolleg.de\r\nSubject: eins\r\n\r\nHallo\r\n";
const SECOND: &[u8] = b"From: bob@kolleg.de\r\nSubject: zwei\r\n\r\nServus\r\n.dot\r\n";

fn delivers_lists_and_reads<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna"], &[FIRST]);
    deliver(
        h.store(),
        &["anna"],
        &[&SECOND[..10], &SECOND[10..11], &SECOND[11..]],
    );
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    assert_eq!(maildrop.mailbox().as_str(), "anna");
    let sizes: Vec<u64> = maildrop.messages().iter().map(|m| m.size).collect();
    assert_eq!(sizes, [FIRST.len() as u64, SECOND.len() as u64]);
    let ids = uids(&*maildrop);
    assert_ne!(ids[0], ids[1]);
    for uid in &ids {
        assert!(Uid::new(uid.as_str()).is_some(), "{uid}");
    }
    assert_eq!(read_all(&*maildrop, 0), FIRST);
    assert_eq!(read_all(&*maildrop, 1), SECOND);
    assert_eq!(
        read_all(&*maildrop, 1),
        SECOND,
        "a message can be read twice"
    );
}

fn serves_bare_lf_as_crlf<H: Harness>() {
    let h = H::new();
    // A CRLF split across chunks must not be counted as a bare LF.
    deliver(
        h.store(),
        &["anna"],
        &[b"Subject: lf\n\nline\r", b"\nlast\n"],
    );
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    let expected = b"Subject: lf\r\n\r\nline\r\nlast\r\n";
    assert_eq!(maildrop.messages()[0].size, expected.len() as u64);
    assert_eq!(read_all(&*maildrop, 0), expected);
}

/// Messages as other tools store them, and as they are served: bare CR,
/// bare LF, CR CR LF, no final line end, a dot after a bare line end.
const ODD_LINE_ENDS: [(&[u8], &[u8]); 5] = [
    (
        b"Subject: cr\r\rbare\rcr\r.dot\r",
        b"Subject: cr\r\n\r\nbare\r\ncr\r\n.dot\r\n",
    ),
    (
        b"Subject: lf\n\nbare\nlf\n",
        b"Subject: lf\r\n\r\nbare\r\nlf\r\n",
    ),
    (
        b"Subject: crcrlf\r\r\n\r\nx\r\r\n",
        b"Subject: crcrlf\r\n\r\n\r\nx\r\n\r\n",
    ),
    (
        b"Subject: noend\r\n\r\nlast line",
        b"Subject: noend\r\n\r\nlast line\r\n",
    ),
    (b"\n.\r", b"\r\n.\r\n"),
];

/// The rule of `postamt_wire::crlf` end to end: what the store lists is
/// what a POP3 session's RETR sends between its `+OK` line and the final
/// dot, once unstuffed.
fn listed_size_is_what_retr_sends<H: Harness>() {
    use std::time::Instant;

    use postamt_pop3::{Event, MessageFlow, ServerConfig, ServerSession, Session};
    use postamt_wire::{Decoded, DotDecoder};

    let h = H::new();
    for (stored, _) in ODD_LINE_ENDS {
        // Three bytes at a time, so CR and LF of a pair arrive apart.
        deliver(h.store(), &["anna"], &stored.chunks(3).collect::<Vec<_>>());
    }
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    let sizes: Vec<u64> = maildrop.messages().iter().map(|m| m.size).collect();
    let served: Vec<&[u8]> = ODD_LINE_ENDS.iter().map(|(_, served)| *served).collect();
    assert_eq!(
        sizes,
        served.iter().map(|s| s.len() as u64).collect::<Vec<_>>()
    );
    for (i, expected) in served.iter().enumerate() {
        assert_eq!(read_all(&*maildrop, i), *expected, "message {i}");
    }

    let mut listing = postamt_pop3::Maildrop::new();
    for m in maildrop.messages() {
        listing
            .push(m.size, m.uid.as_str().parse().unwrap())
            .unwrap();
    }
    let mut listing = Some(listing);
    let mut config = ServerConfig::new();
    config.login_without_tls = true;
    let now = Instant::now();
    let mut session = ServerSession::new(config, now);
    let mut input = b"USER anna\r\nPASS pw\r\nLIST\r\n".to_vec();
    for n in 1..=served.len() {
        input.extend_from_slice(format!("RETR {n}\r\n").as_bytes());
    }
    input.extend_from_slice(b"QUIT\r\n");
    session.receive(now, &input);
    let mut out = Vec::new();
    let mut reading: Option<Box<dyn Read + Send>> = None;
    while !session.is_closed() {
        while let Some(event) = session.poll_event() {
            match event {
                Event::Login { .. } => session.accept_login(listing.take().unwrap()).unwrap(),
                Event::Retrieve { message, size, .. } => {
                    assert_eq!(size, sizes[message.index()]);
                    reading = Some(maildrop.read_message(message.index()).unwrap());
                }
                Event::Commit { .. } => session.commit_done().unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        while session.wants_message_bytes() {
            let mut buf = [0; 7];
            let n = reading.as_mut().unwrap().read(&mut buf).unwrap();
            if n == 0 {
                reading = None;
                session.message_end().unwrap();
            } else {
                assert_eq!(session.message_chunk(&buf[..n]), Ok(MessageFlow::Continue));
            }
        }
        session.poll_transmit(&mut out);
    }

    fn line(rest: &mut &[u8]) -> String {
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let text = String::from_utf8(rest[..end].to_vec()).unwrap();
        *rest = &rest[end + 2..];
        text
    }
    let mut rest = &out[..];
    for _ in 0..3 {
        line(&mut rest);
    }
    let total: u64 = sizes.iter().sum();
    assert_eq!(
        line(&mut rest),
        format!("+OK {} messages ({total} octets)", sizes.len())
    );
    for (i, size) in sizes.iter().enumerate() {
        assert_eq!(line(&mut rest), format!("{} {size}", i + 1));
    }
    assert_eq!(line(&mut rest), ".");
    for (i, size) in sizes.iter().enumerate() {
        assert_eq!(line(&mut rest), format!("+OK {size} octets"));
        let mut decoder = DotDecoder::new(postamt_wire::BareLineEndings::Reject, usize::MAX);
        let mut text = Vec::new();
        let Decoded::Complete { consumed } = decoder.decode(rest, &mut text) else {
            panic!("message {i} does not end");
        };
        rest = &rest[consumed..];
        assert_eq!(
            text.len() as u64,
            *size,
            "message {i}: listed size = octets sent"
        );
        assert_eq!(text, served[i], "message {i}");
    }
    assert_eq!(rest, b"+OK Goodbye\r\n");
}

fn large_message_in_many_chunks<H: Harness>() {
    let h = H::new();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let message: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 40_000)
        .collect();
    let chunks: Vec<&[u8]> = message.chunks(8191).collect();
    deliver(h.store(), &["anna"], &chunks);
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    assert_eq!(maildrop.messages()[0].size, message.len() as u64);
    let mut reader = maildrop.read_message(0).unwrap();
    let mut buf = vec![0; 1000];
    let mut total = Vec::with_capacity(message.len());
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total.extend_from_slice(&buf[..n]);
    }
    assert!(total == message, "large message differs");
}

fn empty_mailbox_opens_empty<H: Harness>() {
    let h = H::new();
    let maildrop = h.store().open_maildrop(&mailbox("nobody")).unwrap();
    assert!(maildrop.messages().is_empty());
    assert!(matches!(
        maildrop.read_message(0),
        Err(StoreError::NoSuchMessage { index: 0, count: 0 })
    ));
    maildrop.commit_deletions(&[]).unwrap();
}

fn commit_deletes_only_the_marked<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna"], &[FIRST]);
    deliver(h.store(), &["anna"], &[SECOND]);
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    let second_uid = maildrop.messages()[1].uid.clone();
    maildrop.commit_deletions(&[0, 0]).unwrap();
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    assert_eq!(uids(&*maildrop), [second_uid]);
    assert_eq!(read_all(&*maildrop, 0), SECOND);
    maildrop.commit_deletions(&[0]).unwrap();
    assert!(contents(h.store(), "anna").is_empty());
}

fn bad_index_deletes_nothing<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna"], &[FIRST]);
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    assert!(matches!(
        maildrop.read_message(1),
        Err(StoreError::NoSuchMessage { index: 1, count: 1 })
    ));
    let err = maildrop.commit_deletions(&[0, 1]).unwrap_err();
    assert!(
        matches!(err, StoreError::NoSuchMessage { index: 1, count: 1 }),
        "{err:?}"
    );
    assert_eq!(contents(h.store(), "anna"), [FIRST]);
}

fn drop_without_commit_keeps_everything<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna"], &[FIRST]);
    deliver(h.store(), &["anna"], &[SECOND]);
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    let before = uids(&*maildrop);
    drop(maildrop);
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    assert_eq!(uids(&*maildrop), before, "uids are stable across sessions");
    drop(maildrop);
    assert_eq!(contents(h.store(), "anna"), [FIRST, SECOND]);
}

fn maildrop_is_exclusive_across_threads<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna"], &[FIRST]);
    let held = h.store().open_maildrop(&mailbox("anna")).unwrap();
    let store = h.store().clone();
    let result = thread::spawn(move || store.open_maildrop(&mailbox("anna")).map(|_| ()))
        .join()
        .unwrap();
    match result {
        Err(StoreError::Locked(name)) => assert_eq!(name.as_str(), "anna"),
        other => panic!("second open gave {other:?}"),
    }
    // Other mailboxes are not affected, and neither is delivery.
    h.store().open_maildrop(&mailbox("bob")).unwrap();
    deliver(h.store(), &["anna"], &[SECOND]);
    drop(held);
    let store = h.store().clone();
    let count = thread::spawn(move || {
        store
            .open_maildrop(&mailbox("anna"))
            .map(|m| m.messages().len())
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(count, 2);
    // A committed maildrop releases its lock too.
    h.store()
        .open_maildrop(&mailbox("anna"))
        .unwrap()
        .commit_deletions(&[])
        .unwrap();
    h.store().open_maildrop(&mailbox("anna")).unwrap();
}

fn only_one_of_many_concurrent_opens_wins<H: Harness>() {
    let h = H::new();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = h.store().clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let opened = store.open_maildrop(&mailbox("anna"));
                // Keep a winner open until every thread has tried.
                barrier.wait();
                match opened {
                    Ok(_) => true,
                    Err(StoreError::Locked(_)) => false,
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let winners = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&won| won)
        .count();
    assert_eq!(winners, 1);
}

fn delivery_during_session_shows_up_next_time<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna"], &[FIRST]);
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    deliver(h.store(), &["anna"], &[SECOND]);
    assert_eq!(
        maildrop.messages().len(),
        1,
        "the open listing stays as it was"
    );
    assert_eq!(read_all(&*maildrop, 0), FIRST);
    maildrop.commit_deletions(&[0]).unwrap();
    assert_eq!(contents(h.store(), "anna"), [SECOND]);
}

fn delivers_to_several_recipients<H: Harness>() {
    let h = H::new();
    deliver(h.store(), &["anna", "bob", "anna"], &[FIRST]);
    assert_eq!(
        contents(h.store(), "anna"),
        [FIRST],
        "a repeated recipient gets one copy"
    );
    let maildrop = h.store().open_maildrop(&mailbox("bob")).unwrap();
    assert_eq!(read_all(&*maildrop, 0), FIRST);
    maildrop.commit_deletions(&[0]).unwrap();
    assert!(contents(h.store(), "bob").is_empty());
    assert_eq!(
        contents(h.store(), "anna"),
        [FIRST],
        "deleting bob's copy keeps anna's"
    );
}

fn aborted_delivery_leaves_nothing<H: Harness>() {
    let h = H::new();
    let recipients = [mailbox("anna"), mailbox("bob")];
    let mut delivery = h.store().begin_delivery(&recipients).unwrap();
    delivery.write_chunk(FIRST).unwrap();
    drop(delivery);
    let never_written = h.store().begin_delivery(&recipients).unwrap();
    drop(never_written);
    for name in &recipients {
        assert_eq!(h.stray_files(name), Vec::<String>::new());
        assert!(contents(h.store(), name.as_str()).is_empty());
    }
}

fn delivery_needs_a_recipient<H: Harness>() {
    let h = H::new();
    assert!(matches!(
        h.store().begin_delivery(&[]),
        Err(StoreError::NoRecipients)
    ));
}

fn concurrent_deliveries_all_arrive<H: Harness>() {
    let h = H::new();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = h.store().clone();
            thread::spawn(move || {
                for i in 0..10 {
                    let body = format!("Subject: {t}/{i}\r\n\r\nx\r\n");
                    deliver(&store, &["anna"], &[body.as_bytes()]);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let maildrop = h.store().open_maildrop(&mailbox("anna")).unwrap();
    let distinct: HashSet<Uid> = uids(&*maildrop).into_iter().collect();
    assert_eq!(distinct.len(), 40);
    let bodies: HashSet<Vec<u8>> = (0..40).map(|i| read_all(&*maildrop, i)).collect();
    assert_eq!(bodies.len(), 40);
}

// ---------------------------------------------------------------------------
// Mailbox size limits.

/// A message of exactly `n` stored octets.
fn sized(n: usize) -> Vec<u8> {
    let mut bytes = b"Subject: q\r\n\r\n".to_vec();
    assert!(n >= bytes.len() + 2);
    bytes.resize(n - 2, b'q');
    bytes.extend_from_slice(b"\r\n");
    bytes
}

fn is_quota(result: Result<(), StoreError>, name: &str, expected_limit: u64) -> bool {
    matches!(result, Err(StoreError::QuotaExceeded { mailbox, limit })
        if mailbox.as_str() == name && limit == expected_limit)
}

fn default_limits_are_50_mib<H: Harness>() {
    let h = H::new();
    // 50 MiB fit with the default; one more octet is refused at the ask.
    let anna = mailbox("anna");
    h.store().check_room(&anna, 50 * 1024 * 1024).unwrap();
    assert!(is_quota(
        h.store().check_room(&anna, 50 * 1024 * 1024 + 1),
        "anna",
        postamt_store::DEFAULT_MAILBOX_SIZE_LIMIT
    ));
}

fn under_the_limit_is_stored<H: Harness>() {
    let h = H::with_mailbox_limit(1000);
    let anna = mailbox("anna");
    h.store().check_room(&anna, 0).unwrap();
    h.store().check_room(&anna, 1000).unwrap();
    assert!(is_quota(h.store().check_room(&anna, 1001), "anna", 1000));
    deliver(h.store(), &["anna"], &[&sized(600)]);
    h.store().check_room(&anna, 400).unwrap();
    assert!(is_quota(h.store().check_room(&anna, 401), "anna", 1000));
    assert_eq!(contents(h.store(), "anna"), [sized(600)]);
}

fn exactly_at_the_limit_is_stored<H: Harness>() {
    let h = H::with_mailbox_limit(1000);
    let anna = mailbox("anna");
    deliver(h.store(), &["anna"], &[&sized(600)]);
    let last = sized(400);
    // In pieces, the last of which reaches the limit exactly.
    deliver(h.store(), &["anna"], &[&last[..399], &last[399..]]);
    assert_eq!(contents(h.store(), "anna"), [sized(600), sized(400)]);
    // Full: nothing more fits, not even a message of unknown size.
    assert!(is_quota(h.store().check_room(&anna, 0), "anna", 1000));
    assert!(is_quota(h.store().check_room(&anna, 1), "anna", 1000));
    // Other mailboxes have their own room.
    h.store().check_room(&mailbox("bob"), 1000).unwrap();
}

fn over_the_limit_is_refused_mid_write<H: Harness>() {
    let h = H::with_mailbox_limit(1000);
    deliver(h.store(), &["anna"], &[&sized(600)]);
    // Seen once, so that Maildir's new/ is empty again.
    assert_eq!(contents(h.store(), "anna"), [sized(600)]);
    // bob has room; anna has 400 octets left: the whole message is refused
    // for both when the chunk that would pass anna's limit comes.
    let recipients = [mailbox("bob"), mailbox("anna")];
    let mut delivery = h.store().begin_delivery(&recipients).unwrap();
    delivery.write_chunk(&[b'x'; 300]).unwrap();
    delivery.write_chunk(&[b'x'; 100]).unwrap();
    assert!(is_quota(delivery.write_chunk(b"x"), "anna", 1000));
    assert!(is_quota(delivery.write_chunk(b""), "anna", 1000), "void");
    assert!(is_quota(delivery.commit(), "anna", 1000));
    for name in &recipients {
        assert_eq!(h.stray_files(name), Vec::<String>::new());
    }
    assert_eq!(contents(h.store(), "anna"), [sized(600)]);
    assert!(contents(h.store(), "bob").is_empty());
    // A message that fits still goes in after the refusal.
    deliver(h.store(), &["anna"], &[&sized(400)]);
    assert_eq!(contents(h.store(), "anna"), [sized(600), sized(400)]);
}

fn deleting_frees_room<H: Harness>() {
    let h = H::with_mailbox_limit(1000);
    let anna = mailbox("anna");
    deliver(h.store(), &["anna"], &[&sized(600)]);
    deliver(h.store(), &["anna"], &[&sized(400)]);
    assert!(is_quota(h.store().check_room(&anna, 0), "anna", 1000));
    // A maildrop that only looks frees nothing.
    drop(h.store().open_maildrop(&anna).unwrap());
    assert!(is_quota(h.store().check_room(&anna, 0), "anna", 1000));
    let maildrop = h.store().open_maildrop(&anna).unwrap();
    maildrop.commit_deletions(&[0]).unwrap();
    h.store().check_room(&anna, 600).unwrap();
    assert!(is_quota(h.store().check_room(&anna, 601), "anna", 1000));
    deliver(h.store(), &["anna"], &[&sized(600)]);
    assert_eq!(contents(h.store(), "anna"), [sized(400), sized(600)]);
}

macro_rules! suite {
    ($module:ident, $harness:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn delivers_lists_and_reads() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::delivers_lists_and_reads::<$harness>();
            }
            #[test]
            fn serves_bare_lf_as_crlf() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::serves_bare_lf_as_crlf::<$harness>();
            }
            #[test]
            fn listed_size_is_what_retr_sends() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::listed_size_is_what_retr_sends::<$harness>();
            }
            #[test]
            fn large_message_in_many_chunks() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::large_message_in_many_chunks::<$harness>();
            }
            #[test]
            fn empty_mailbox_opens_empty() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::empty_mailbox_opens_empty::<$harness>();
            }
            #[test]
            fn commit_deletes_only_the_marked() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::commit_deletes_only_the_marked::<$harness>();
            }
            #[test]
            fn bad_index_deletes_nothing() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::bad_index_deletes_nothing::<$harness>();
            }
            #[test]
            fn drop_without_commit_keeps_everything() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::drop_without_commit_keeps_everything::<$harness>();
            }
            #[test]
            fn maildrop_is_exclusive_across_threads() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::maildrop_is_exclusive_across_threads::<$harness>();
            }
            #[test]
            fn only_one_of_many_concurrent_opens_wins() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::only_one_of_many_concurrent_opens_wins::<$harness>();
            }
            #[test]
            fn delivery_during_session_shows_up_next_time() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::delivery_during_session_shows_up_next_time::<$harness>();
            }
            #[test]
            fn delivers_to_several_recipients() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::delivers_to_several_recipients::<$harness>();
            }
            #[test]
            fn aborted_delivery_leaves_nothing() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::aborted_delivery_leaves_nothing::<$harness>();
            }
            #[test]
            fn delivery_needs_a_recipient() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::delivery_needs_a_recipient::<$harness>();
            }
            #[test]
            fn concurrent_deliveries_all_arrive() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::concurrent_deliveries_all_arrive::<$harness>();
            }
            #[test]
            fn default_limits_are_50_mib() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::default_limits_are_50_mib::<$harness>();
            }
            #[test]
            fn under_the_limit_is_stored() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::under_the_limit_is_stored::<$harness>();
            }
            #[test]
            fn exactly_at_the_limit_is_stored() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::exactly_at_the_limit_is_stored::<$harness>();
            }
            #[test]
            fn over_the_limit_is_refused_mid_write() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::over_the_limit_is_refused_mid_write::<$harness>();
            }
            #[test]
            fn deleting_frees_room() {
                if <$harness as Harness>::skip() {
                    return;
                }
                super::deleting_frees_room::<$harness>();
            }
        }
    };
}

suite!(memory, Memory);
suite!(maildir, OnDisk);
#[cfg(feature = "postgres")]
suite!(postgres, Pg);

#[test]
fn stores_are_usable_as_trait_objects_across_threads() {
    let h = OnDisk::new();
    let stores: Vec<std::sync::Arc<dyn MailStore>> = vec![
        std::sync::Arc::new(MemoryStore::new()),
        std::sync::Arc::new(h.store().clone()),
    ];
    for store in stores {
        let delivery = store.begin_delivery(&[mailbox("anna")]).unwrap();
        let mut delivery = thread::spawn(move || delivery).join().unwrap();
        delivery.write_chunk(FIRST).unwrap();
        delivery.commit().unwrap();
        let maildrop = store.open_maildrop(&mailbox("anna")).unwrap();
        let reader = maildrop.read_message(0).unwrap();
        let bytes = thread::spawn(move || {
            let mut reader = reader;
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).unwrap();
            bytes
        })
        .join()
        .unwrap();
        assert_eq!(bytes, FIRST);
    }
}

#[test]
fn no_limit_takes_anything() {
    let mem = MemoryStore::new()
        .with_mailbox_size_limit(None)
        .with_total_size_limit(None);
    let dir = tempfile::tempdir().unwrap();
    let disk = Maildir::new(dir.path()).with_mailbox_size_limit(None);
    assert_eq!(mem.mailbox_size_limit(), None);
    assert_eq!(mem.total_size_limit(), None);
    assert_eq!(disk.mailbox_size_limit(), None);
    let anna = mailbox("anna");
    mem.check_room(&anna, u64::MAX).unwrap();
    disk.check_room(&anna, u64::MAX).unwrap();
}

#[test]
fn memory_store_defaults() {
    let store = MemoryStore::new();
    assert_eq!(store.mailbox_size_limit(), Some(50 * 1024 * 1024));
    assert_eq!(store.total_size_limit(), Some(512 * 1024 * 1024));
    assert_eq!(postamt_store::DEFAULT_MEMORY_LIMIT, 512 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        Maildir::new(dir.path()).mailbox_size_limit(),
        Some(50 * 1024 * 1024)
    );
}

#[test]
fn memory_total_limit_counts_all_mailboxes() {
    let store = MemoryStore::new()
        .with_mailbox_size_limit(Some(1000))
        .with_total_size_limit(Some(1500));
    let full =
        |r: Result<(), StoreError>| matches!(r, Err(StoreError::StorageFull { limit: 1500 }));
    deliver(&store, &["anna"], &[&sized(1000)]);
    // A message for two mailboxes is held once and counts once.
    deliver(&store, &["bob", "carl"], &[&sized(400)]);
    assert_eq!(store.total_size(), 1400);
    assert_eq!(store.mailbox_size(&mailbox("bob")), 400);
    assert_eq!(store.mailbox_size(&mailbox("carl")), 400);
    // dora's own limit has room, the store has 100 octets left.
    store.check_room(&mailbox("dora"), 100).unwrap();
    assert!(full(store.check_room(&mailbox("dora"), 101)));
    let mut delivery = store.begin_delivery(&[mailbox("dora")]).unwrap();
    delivery.write_chunk(&[b'x'; 100]).unwrap();
    assert_eq!(store.total_size(), 1500, "a delivery in progress reserves");
    assert!(full(store.check_room(&mailbox("erik"), 0)));
    assert!(full(delivery.write_chunk(b"x")));
    assert_eq!(
        store.total_size(),
        1400,
        "a refused delivery gives back all"
    );
    assert!(full(delivery.commit()));
    assert!(contents(&store, "dora").is_empty());
    // Deleting bob's copy keeps carl's: no octets come back yet.
    store
        .open_maildrop(&mailbox("bob"))
        .unwrap()
        .commit_deletions(&[0])
        .unwrap();
    assert_eq!(store.total_size(), 1400);
    assert_eq!(store.mailbox_size(&mailbox("bob")), 0);
    store
        .open_maildrop(&mailbox("carl"))
        .unwrap()
        .commit_deletions(&[0])
        .unwrap();
    assert_eq!(store.total_size(), 1000);
    deliver(&store, &["dora"], &[&sized(500)]);
    assert_eq!(store.total_size(), 1500);
}

#[test]
fn memory_deliveries_in_progress_share_the_room() {
    let store = MemoryStore::new().with_mailbox_size_limit(Some(1000));
    let anna = [mailbox("anna")];
    let mut first = store.begin_delivery(&anna).unwrap();
    let mut second = store.begin_delivery(&anna).unwrap();
    first.write_chunk(&[b'x'; 700]).unwrap();
    second.write_chunk(&[b'x'; 300]).unwrap();
    let refused = first.write_chunk(b"x");
    assert!(
        matches!(&refused, Err(StoreError::QuotaExceeded { mailbox, limit: 1000 }) if mailbox.as_str() == "anna"),
        "{refused:?}"
    );
    // The refused one gave its 700 back; an aborted one gives back too.
    let mut third = store.begin_delivery(&anna).unwrap();
    third.write_chunk(&[b'x'; 700]).unwrap();
    drop(second);
    assert_eq!(store.total_size(), 700);
    third.commit().unwrap();
    assert_eq!(store.mailbox_size(&anna[0]), 700);
    assert_eq!(store.total_size(), 700);
}
