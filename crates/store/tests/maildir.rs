//! What only the Maildir store promises: file names, foreign files, tmp/
//! cleaning, the lock file, and names that must not become paths.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use postamt_store::{
    LOCK_FILE_NAME, MailStore, MailboxName, Maildir, Maildrop, STALE_TMP_AGE, StoreError, Uid,
};

fn setup() -> (tempfile::TempDir, Maildir, MailboxName, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = Maildir::new(dir.path());
    let anna = MailboxName::new("anna").unwrap();
    let path = store.mailbox_path(&anna);
    (dir, store, anna, path)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn deliver(store: &Maildir, mailbox: &MailboxName, bytes: &[u8]) {
    let mut delivery = store.begin_delivery(std::slice::from_ref(mailbox)).unwrap();
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

/// Creates the folders the way another tool would, without our store.
fn make_maildir(path: &Path) {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(path.join(sub)).unwrap();
    }
}

#[test]
fn delivered_names_carry_size_and_crlf_size() {
    let (_dir, store, anna, path) = setup();
    deliver(&store, &anna, b"Subject: x\r\n\r\nCRLF line\r\nLF line\n");
    let new = names(&path.join("new"));
    assert_eq!(new.len(), 1);
    let name = &new[0];
    assert!(name.ends_with(",S=33,W=34"), "{name}");
    let file = path.join("new").join(name);
    assert_eq!(fs::metadata(&file).unwrap().len(), 33);
    assert!(
        names(&path.join("tmp")).is_empty(),
        "tmp/ is emptied on commit"
    );

    let maildrop = store.open_maildrop(&anna).unwrap();
    assert!(
        names(&path.join("new")).is_empty(),
        "opening moves new/ to cur/"
    );
    assert_eq!(names(&path.join("cur")), [format!("{name}:2,")]);
    assert_eq!(maildrop.messages()[0].size, 34);
    assert_eq!(
        maildrop.messages()[0].uid.as_str(),
        name,
        "the uid is the base name"
    );
}

#[test]
fn foreign_bare_lf_messages_are_served_with_crlf() {
    let (_dir, store, anna, path) = setup();
    make_maildir(&path);
    let body = b"Subject: from mutt\n\nline one\nline two\n";
    let crlf = b"Subject: from mutt\r\n\r\nline one\r\nline two\r\n";
    let (s, w) = (body.len(), crlf.len());
    let files = [
        format!("new/1600000001.M1P1Q1.other,S={s},W={w}"),
        "new/1600000002.M1P1Q2.other".to_owned(),
        format!("cur/1600000003.M1P1Q3.other,S={s}:2,S"),
        "cur/1600000004.M1P1Q4.other:2,RS".to_owned(),
        format!("cur/1600000005.M1P1Q5.other,S={s},W={w}:2,"),
    ];
    for file in &files {
        fs::write(path.join(file), body).unwrap();
    }
    let maildrop = store.open_maildrop(&anna).unwrap();
    let listed: Vec<(&str, u64)> = maildrop
        .messages()
        .iter()
        .map(|m| (m.uid.as_str(), m.size))
        .collect();
    assert_eq!(
        listed,
        [
            (
                format!("1600000001.M1P1Q1.other,S={s},W={w}").as_str(),
                w as u64
            ),
            ("1600000002.M1P1Q2.other", w as u64),
            (format!("1600000003.M1P1Q3.other,S={s}").as_str(), w as u64),
            ("1600000004.M1P1Q4.other", w as u64),
            (
                format!("1600000005.M1P1Q5.other,S={s},W={w}").as_str(),
                w as u64
            ),
        ]
    );
    for index in 0..files.len() {
        assert_eq!(read_all(&*maildrop, index), crlf);
    }
    // Flags set by another reader survive; new/ got the empty info.
    let cur = names(&path.join("cur"));
    assert!(
        cur.contains(&"1600000002.M1P1Q2.other:2,".to_owned()),
        "{cur:?}"
    );
    assert!(
        cur.contains(&"1600000004.M1P1Q4.other:2,RS".to_owned()),
        "{cur:?}"
    );
}

#[test]
fn stale_tmp_files_are_removed_fresh_ones_kept() {
    let (_dir, store, anna, path) = setup();
    make_maildir(&path);
    let stale = path.join("tmp/1500000000.M1P1Q1.crashed");
    let almost = path.join("tmp/1500000000.M1P1Q2.recent");
    let fresh = path.join("tmp/1500000000.M1P1Q3.writing");
    let now = SystemTime::now();
    for (file, age) in [
        (&stale, STALE_TMP_AGE + Duration::from_secs(60)),
        (&almost, STALE_TMP_AGE - Duration::from_secs(60)),
        (&fresh, Duration::ZERO),
    ] {
        let f = File::create(file).unwrap();
        f.set_modified(now - age).unwrap();
    }
    drop(store.open_maildrop(&anna).unwrap());
    assert!(!stale.exists(), "older than 36 hours: removed");
    assert!(almost.exists(), "younger than 36 hours: kept");
    assert!(fresh.exists());
}

#[test]
fn invalid_mailbox_names_never_reach_the_file_system() {
    let (dir, _store, _anna, _path) = setup();
    for name in [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "a\\b",
        "a\0b",
        ".hidden",
        "x\ny",
        "a..b",
    ] {
        match MailboxName::new(name) {
            Err(StoreError::InvalidMailboxName { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name:?} gave {other:?}"),
        }
        match name.parse::<MailboxName>() {
            Err(StoreError::InvalidMailboxName { .. }) => {}
            other => panic!("{name:?} parsed as {other:?}"),
        }
    }
    assert!(MailboxName::new("x".repeat(256)).is_err());
    assert!(names(dir.path()).is_empty());
}

#[test]
fn lock_file_is_beside_the_folders_and_not_listed() {
    let (_dir, store, anna, path) = setup();
    deliver(&store, &anna, b"Subject: x\r\n\r\n");
    let maildrop = store.open_maildrop(&anna).unwrap();
    assert!(path.join(LOCK_FILE_NAME).is_file());
    assert_eq!(maildrop.messages().len(), 1);
    drop(maildrop);
    let maildrop = store.open_maildrop(&anna).unwrap();
    assert_eq!(
        maildrop.messages().len(),
        1,
        "the lock file never becomes a message"
    );
    assert_eq!(names(&path), ["cur", "new", LOCK_FILE_NAME, "tmp"]);
}

#[test]
fn the_os_lock_is_held_while_a_maildrop_is_open() {
    let (_dir, store, anna, path) = setup();
    let maildrop = store.open_maildrop(&anna).unwrap();
    // What another process would see: its own open of the lock file.
    let other = File::open(path.join(LOCK_FILE_NAME)).unwrap();
    assert!(
        other.try_lock().is_err(),
        "locked while the maildrop is open"
    );
    drop(maildrop);
    other.try_lock().unwrap();
    // And while another process holds it, we cannot open.
    match store.open_maildrop(&anna) {
        Err(StoreError::Locked(name)) => assert_eq!(name, anna),
        other => panic!("{:?}", other.map(|_| ())),
    }
    other.unlock().unwrap();
    store.open_maildrop(&anna).unwrap();
}

#[test]
fn uids_are_stable_across_opens_and_stores() {
    let (dir, store, anna, _path) = setup();
    for i in 0..3 {
        deliver(&store, &anna, format!("Subject: {i}\r\n\r\n").as_bytes());
    }
    let first: Vec<Uid> = store
        .open_maildrop(&anna)
        .unwrap()
        .messages()
        .iter()
        .map(|m| m.uid.clone())
        .collect();
    let again = Maildir::new(dir.path());
    let second: Vec<Uid> = again
        .open_maildrop(&anna)
        .unwrap()
        .messages()
        .iter()
        .map(|m| m.uid.clone())
        .collect();
    assert_eq!(first.len(), 3);
    assert_eq!(first, second);
}

#[test]
fn names_unfit_for_uidl_get_a_derived_uid() {
    let (_dir, store, anna, path) = setup();
    make_maildir(&path);
    let long = format!("1600000000.M1P1Q1.{}", "h".repeat(80));
    fs::write(path.join("cur").join(format!("{long}:2,")), b"a\r\n").unwrap();
    fs::write(path.join("cur/1600000001.M1P1Q1.h\u{e4}st:2,"), b"b\r\n").unwrap();
    // Two files with one base name (flags differ): uids must still differ.
    fs::write(path.join("cur/1600000002.M1P1Q1.twin:2,"), b"c\r\n").unwrap();
    fs::write(path.join("cur/1600000002.M1P1Q1.twin:2,S"), b"d\r\n").unwrap();
    let first: Vec<Uid> = store
        .open_maildrop(&anna)
        .unwrap()
        .messages()
        .iter()
        .map(|m| m.uid.clone())
        .collect();
    assert_eq!(first.len(), 4);
    for uid in &first {
        assert!(Uid::new(uid.as_str()).is_some(), "{uid}");
    }
    let unique: std::collections::HashSet<&Uid> = first.iter().collect();
    assert_eq!(unique.len(), 4);
    let second: Vec<Uid> = store
        .open_maildrop(&anna)
        .unwrap()
        .messages()
        .iter()
        .map(|m| m.uid.clone())
        .collect();
    assert_eq!(first, second);
}

#[test]
fn hidden_files_and_folders_in_cur_are_not_messages() {
    let (_dir, store, anna, path) = setup();
    make_maildir(&path);
    fs::write(path.join("cur/.hidden:2,"), b"x").unwrap();
    fs::write(path.join("new/.also-hidden"), b"x").unwrap();
    fs::create_dir(path.join("cur/1600000000.folder")).unwrap();
    let maildrop = store.open_maildrop(&anna).unwrap();
    assert!(maildrop.messages().is_empty());
    assert!(path.join("new/.also-hidden").exists(), "left where it was");
}

#[test]
fn a_message_renamed_by_another_reader_is_still_read_and_deleted() {
    let (_dir, store, anna, path) = setup();
    deliver(&store, &anna, b"Subject: one\r\n\r\n");
    deliver(&store, &anna, b"Subject: two\r\n\r\n");
    let maildrop = store.open_maildrop(&anna).unwrap();
    // mutt marks both messages seen: same base, new flags.
    for name in names(&path.join("cur")) {
        fs::rename(
            path.join("cur").join(&name),
            path.join("cur").join(format!("{name}S")),
        )
        .unwrap();
    }
    assert_eq!(read_all(&*maildrop, 0), b"Subject: one\r\n\r\n");
    maildrop.commit_deletions(&[0]).unwrap();
    let left = names(&path.join("cur"));
    assert_eq!(left.len(), 1);
    assert!(left[0].ends_with(":2,S"), "{left:?}");
    let maildrop = store.open_maildrop(&anna).unwrap();
    assert_eq!(read_all(&*maildrop, 0), b"Subject: two\r\n\r\n");
}

#[test]
fn a_message_deleted_by_another_reader_counts_as_deleted() {
    let (_dir, store, anna, path) = setup();
    deliver(&store, &anna, b"Subject: one\r\n\r\n");
    let maildrop = store.open_maildrop(&anna).unwrap();
    for name in names(&path.join("cur")) {
        fs::remove_file(path.join("cur").join(name)).unwrap();
    }
    assert!(matches!(
        maildrop.read_message(0),
        Err(StoreError::Io { .. })
    ));
    maildrop.commit_deletions(&[0]).unwrap();
}

#[test]
fn io_errors_name_the_path_and_keep_the_source() {
    let dir = tempfile::tempdir().unwrap();
    // The root is a file, so no mailbox folder can be created under it.
    let root = dir.path().join("not-a-folder");
    fs::write(&root, b"").unwrap();
    let store = Maildir::new(&root);
    let anna = MailboxName::new("anna").unwrap();
    let err = store
        .begin_delivery(std::slice::from_ref(&anna))
        .map(|_| ())
        .unwrap_err();
    match &err {
        StoreError::Io { path, .. } => assert!(path.starts_with(&root), "{path:?}"),
        other => panic!("{other:?}"),
    }
    assert!(std::error::Error::source(&err).is_some());
    assert!(err.to_string().contains("not-a-folder"), "{err}");
}

#[test]
fn delivery_to_several_mailboxes_shares_one_name() {
    let (_dir, store, anna, anna_path) = setup();
    let bob = MailboxName::new("bob").unwrap();
    let mut delivery = store.begin_delivery(&[anna.clone(), bob.clone()]).unwrap();
    delivery.write_chunk(b"Subject: both\r\n\r\n").unwrap();
    delivery.commit().unwrap();
    let bob_path = store.mailbox_path(&bob);
    assert_eq!(names(&anna_path.join("new")), names(&bob_path.join("new")));
    assert!(names(&anna_path.join("tmp")).is_empty());
    assert!(names(&bob_path.join("tmp")).is_empty());
}

#[test]
fn mailbox_size_comes_from_the_names() {
    let (_dir, store, anna, path) = setup();
    assert_eq!(store.mailbox_size(&anna).unwrap(), 0, "no folder yet");
    deliver(&store, &anna, b"Subject: x\r\n\r\nLF line\n");
    make_maildir(&path);
    // The name's S= is believed without reading the file ...
    fs::write(path.join("cur/1700000000.M1P1.other,S=1000:2,S"), b"short").unwrap();
    // ... a name without S= is counted by the file's length ...
    fs::write(path.join("new/1700000001.M1P1.other"), b"12345678").unwrap();
    // ... and tmp/, dot files and folders are not mail.
    fs::write(path.join("tmp/1700000002.M1P1.other,S=99999"), b"x").unwrap();
    fs::write(path.join("cur/.hidden,S=99999"), b"x").unwrap();
    fs::create_dir(path.join("cur/folder,S=99999")).unwrap();
    assert_eq!(store.mailbox_size(&anna).unwrap(), 22 + 1000 + 8);

    // A POP3 deletion frees its octets; so does another tool's.
    let maildrop = store.open_maildrop(&anna).unwrap();
    assert_eq!(maildrop.messages().len(), 3);
    maildrop.commit_deletions(&[0]).unwrap();
    assert_eq!(store.mailbox_size(&anna).unwrap(), 22 + 8);
    let limited = store.with_mailbox_size_limit(Some(31));
    limited.check_room(&anna, 1).unwrap();
    assert!(matches!(
        limited.check_room(&anna, 2),
        Err(StoreError::QuotaExceeded { limit: 31, .. })
    ));
    for name in names(&path.join("cur")) {
        if name.contains("other") {
            fs::remove_file(path.join("cur").join(name)).unwrap();
        }
    }
    assert_eq!(limited.mailbox_size(&anna).unwrap(), 22);
}

#[test]
fn a_refused_delivery_removes_its_tmp_file_at_once() {
    let (_dir, store, anna, path) = setup();
    let store = store.with_mailbox_size_limit(Some(10));
    let mut delivery = store.begin_delivery(std::slice::from_ref(&anna)).unwrap();
    delivery.write_chunk(b"0123456789").unwrap();
    assert_eq!(names(&path.join("tmp")).len(), 1);
    let err = delivery.write_chunk(b"x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "mailbox anna is full (limit 10 octets)",
        "{err:?}"
    );
    // Gone while the delivery still lives, before the client's data ends.
    assert!(names(&path.join("tmp")).is_empty());
    drop(delivery);
    assert!(names(&path.join("new")).is_empty());
}

/// Sets a folder's modification time, as a clock tick that two changes
/// share would leave it.
fn set_mtime(dir: &Path, mtime: SystemTime) {
    File::open(dir).unwrap().set_modified(mtime).unwrap();
}

fn mtime(dir: &Path) -> SystemTime {
    fs::metadata(dir).unwrap().modified().unwrap()
}

#[test]
fn a_settled_folder_size_is_cached_until_the_folder_changes() {
    let (_dir, store, anna, path) = setup();
    deliver(&store, &anna, b"Subject: x\r\n\r\n12345678\r\n");
    let cur = path.join("cur");
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&cur, hour_ago);
    assert_eq!(store.mailbox_size(&anna).unwrap(), 24);
    // A change that keeps the time is not seen: the size was cached (and a
    // clone shares the cache) ...
    fs::write(cur.join("1700000000.M1P1.other,S=1000:2,"), b"").unwrap();
    set_mtime(&cur, hour_ago);
    assert_eq!(store.clone().mailbox_size(&anna).unwrap(), 24);
    // ... and every real change moves the time on.
    set_mtime(&cur, SystemTime::now());
    assert_eq!(store.mailbox_size(&anna).unwrap(), 1024);
    let maildrop = store.open_maildrop(&anna).unwrap();
    maildrop.commit_deletions(&[0]).unwrap();
    assert_eq!(store.mailbox_size(&anna).unwrap(), 24);
}

#[test]
fn a_folder_changed_within_the_margin_is_listed_at_every_ask_without_relist_time() {
    let (_dir, store, anna, path) = setup();
    let store = store.with_size_relist_after(Duration::ZERO);
    deliver(&store, &anna, b"Subject: x\r\n\r\n12345678\r\n");
    let new = path.join("new");
    let recent = mtime(&new);
    assert_eq!(store.mailbox_size(&anna).unwrap(), 24);
    // Two changes in one tick: the time stays, the size is right anyway.
    fs::write(new.join("1700000000.M1P1.other,S=1000"), b"").unwrap();
    set_mtime(&new, recent);
    assert_eq!(store.mailbox_size(&anna).unwrap(), 1024);
    assert!(postamt_store::SIZE_CACHE_MARGIN >= Duration::from_secs(2));
}

#[test]
fn our_own_deliveries_keep_a_changing_folder_sum_without_listing_it() {
    let (_dir, store, anna, path) = setup();
    deliver(&store, &anna, b"Subject: x\r\n\r\n12345678\r\n");
    assert_eq!(store.mailbox_size(&anna).unwrap(), 24);
    let new = path.join("new");
    // Another program's change in the same tick as a listing is not seen
    // while the sum is trusted ...
    let recent = mtime(&new);
    fs::write(new.join("1700000000.M1P1.other,S=1000"), b"").unwrap();
    set_mtime(&new, recent);
    assert_eq!(store.mailbox_size(&anna).unwrap(), 24);
    // ... while each of our deliveries adds its octets, however fast they
    // come, and a second store (another process) lists and sees them all.
    let mut expected = 24;
    for n in 0..20u64 {
        let text = format!("Subject: {n}\r\n\r\n{}\r\n", "x".repeat(n as usize));
        deliver(&store, &anna, text.as_bytes());
        expected += text.len() as u64;
        assert_eq!(store.mailbox_size(&anna).unwrap(), expected, "after {n}");
    }
    let fresh = Maildir::new(path.parent().unwrap());
    assert_eq!(fresh.mailbox_size(&anna).unwrap(), expected + 1000);
    // A POP3 session's changes make the sum be listed again: all counted.
    // Message 1 is the other program's (the oldest name).
    let maildrop = store.open_maildrop(&anna).unwrap();
    assert_eq!(maildrop.messages().len(), 22);
    assert_eq!(store.mailbox_size(&anna).unwrap(), expected + 1000);
    maildrop.commit_deletions(&[0]).unwrap();
    assert_eq!(store.mailbox_size(&anna).unwrap(), expected);
    assert!(postamt_store::SIZE_RELIST_AFTER <= Duration::from_secs(60));
}
