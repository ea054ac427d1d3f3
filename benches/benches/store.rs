//! Store benchmarks: how fast a message is stored for good (Maildir with its
//! fsyncs, and memory), and how fast a POP3 session gets its listing of a big
//! maildrop.
//!
//! Run: `cargo bench -p postamt-benches --bench store -- --warm-up-time 1 --measurement-time 3`
//!
//! The Maildir figures depend on the disk under the temporary folder
//! (`TMPDIR`), as every fsync waits for it.

use std::fs;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use postamt_store::{MailStore, MailboxName, Maildir, MemoryStore};

/// A 4 KiB message: a header and 60 lines of text.
fn message() -> Vec<u8> {
    let mut m = b"From: anna@kolleg.de\r\nTo: bob@kolleg.de\r\nSubject: Bench\r\n\r\n".to_vec();
    let mut i = 0usize;
    while m.len() < 4096 - 70 {
        m.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 64));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m.resize(4094, b'z');
    m.extend_from_slice(b"\r\n");
    assert_eq!(m.len(), 4096);
    m
}

fn deliver(store: &dyn MailStore, to: &[MailboxName], text: &[u8]) {
    let mut delivery = store.begin_delivery(to).expect("begin");
    delivery.write_chunk(text).expect("write");
    delivery.commit().expect("commit");
}

/// One delivery of a 4 KiB message, durable when it returns.
fn delivery(c: &mut Criterion) {
    let text = message();
    let bob = vec![MailboxName::new("bob@kolleg.de").expect("valid name")];
    let mut g = c.benchmark_group("store_delivery_4KiB");
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().expect("temp dir");
    // No mailbox limit: millions of iterations go to one mailbox.
    let maildir = Maildir::new(dir.path()).with_mailbox_size_limit(None);
    g.bench_function("Maildir (fsync file and new/)", |b| {
        b.iter(|| deliver(&maildir, &bob, black_box(&text)))
    });
    // A fresh store per delivery, so memory does not pile up across
    // millions of iterations; making and dropping it is not timed.
    g.bench_function("MemoryStore", |b| {
        b.iter_batched(
            MemoryStore::new,
            |store| {
                deliver(&store, &bob, black_box(&text));
                store
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

const LISTED: usize = 10_000;

/// Opening a maildrop of 10,000 messages and reading its listing.
fn open_listing(c: &mut Criterion) {
    let bob = MailboxName::new("bob@kolleg.de").expect("valid name");
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = Maildir::new(dir.path());
    // One real delivery lays the folders out; the rest are written as another
    // delivery agent would leave them in cur/, named with their sizes as
    // Dovecot names them, so the listing needs no file reads.
    let text = message();
    deliver(&maildir, std::slice::from_ref(&bob), &text);
    let cur = maildir.mailbox_path(&bob).join("cur");
    for i in 1..LISTED {
        let name = format!("1764300000.M{i}P1.bench,S=4096,W=4096:2,");
        fs::write(cur.join(name), &text).expect("write message file");
    }
    let memory = MemoryStore::new();
    for _ in 0..LISTED {
        deliver(&memory, std::slice::from_ref(&bob), &text);
    }
    for store in [&maildir as &dyn MailStore, &memory] {
        let drop = store.open_maildrop(&bob).expect("open");
        assert_eq!(drop.messages().len(), LISTED);
        assert!(drop.messages().iter().all(|m| m.size == 4096));
    }

    let mut g = c.benchmark_group("store_open_maildrop_10k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("Maildir", |b| {
        b.iter(|| {
            let drop = maildir.open_maildrop(black_box(&bob)).expect("open");
            black_box(drop.messages().len())
        })
    });
    g.bench_function("MemoryStore", |b| {
        b.iter(|| {
            let drop = memory.open_maildrop(black_box(&bob)).expect("open");
            black_box(drop.messages().len())
        })
    });
    g.finish();
}

criterion_group!(benches, delivery, open_listing);
criterion_main!(benches);
