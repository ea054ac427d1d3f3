//! `MailView` over every store: it sees what a maildrop would list and read,
//! takes no lock and moves nothing.

use std::io::Read;
use std::path::Path;

use postamt_store::{MailStore, MailView, MailboxName, Maildir, MemoryStore};

fn deliver(store: &dyn MailStore, to: &[&MailboxName], bytes: &[u8]) {
    let to: Vec<MailboxName> = to.iter().map(|m| (*m).clone()).collect();
    let mut delivery = store.begin_delivery(&to).unwrap();
    delivery.write_chunk(bytes).unwrap();
    delivery.commit().unwrap();
}

fn read(reader: Box<dyn Read + Send>) -> Vec<u8> {
    let mut bytes = Vec::new();
    { reader }.read_to_end(&mut bytes).unwrap();
    bytes
}

fn check(store: &(impl MailStore + MailView), files: Option<&Path>) {
    let anna = MailboxName::new("anna@kolleg.de").unwrap();
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    assert!(store.mailboxes().unwrap().is_empty());
    assert!(store.peek(&bob).unwrap().is_empty());
    deliver(store, &[&bob], b"Subject: one\r\n\r\nbare\nlf\n");
    deliver(store, &[&bob, &anna], b"Subject: two\r\n\r\nHallo\r\n");
    assert_eq!(store.mailboxes().unwrap(), [anna.clone(), bob.clone()]);

    let peeked = store.peek(&bob).unwrap();
    // A POP3 session can open the mailbox while (and after) someone looks.
    let maildrop = store.open_maildrop(&bob).unwrap();
    assert_eq!(peeked, maildrop.messages());
    for (index, info) in peeked.iter().enumerate() {
        let seen = read(store.peek_message(&bob, &info.uid).unwrap().unwrap());
        assert_eq!(seen, read(maildrop.read_message(index).unwrap()));
        assert_eq!(seen.len() as u64, info.size);
    }
    assert_eq!(
        read(store.peek_message(&bob, &peeked[0].uid).unwrap().unwrap()),
        b"Subject: one\r\n\r\nbare\r\nlf\r\n"
    );
    // Looking while the maildrop is held sees the same and changes nothing.
    assert_eq!(store.peek(&bob).unwrap(), peeked);
    maildrop.commit_deletions(&[0]).unwrap();
    assert_eq!(store.peek(&bob).unwrap(), peeked[1..]);
    assert!(store.peek_message(&bob, &peeked[0].uid).unwrap().is_none());
    assert_eq!(store.peek(&anna).unwrap().len(), 1);

    if let Some(root) = files {
        // Anna's message was never fetched: it stays in new/.
        let new = std::fs::read_dir(root.join("anna@kolleg.de/new")).unwrap();
        assert_eq!(new.count(), 1);
        // A folder that is no mailbox (the queue) is not listed.
        std::fs::create_dir_all(root.join(".queue/new")).unwrap();
        assert_eq!(store.mailboxes().unwrap(), [anna, bob]);
    }
}

#[test]
fn memory_store_view() {
    check(&MemoryStore::new(), None);
}

#[test]
fn maildir_view() {
    let root = tempfile::tempdir().unwrap();
    check(&Maildir::new(root.path()), Some(root.path()));
}

#[cfg(feature = "postgres")]
mod pgtest;

#[cfg(feature = "postgres")]
#[test]
fn postgres_view() {
    if let Some(db) = pgtest::TestDb::new() {
        check(&db.store(), None);
    }
}
