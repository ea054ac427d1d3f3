//! Streaming a message allocates nothing per line: once the output buffers
//! have grown, a RETR of many thousand lines (stuffed ones among them, chunk
//! boundaries everywhere) costs a fixed handful of allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use postamt_pop3::{Event, Maildrop, MessageFlow, ServerConfig, ServerSession, Session};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator and only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Streams message 1 once; returns the allocations counted while streaming.
fn retr(s: &mut ServerSession, now: Instant, text: &[u8], buf: &mut Vec<u8>) -> usize {
    s.receive(now, b"RETR 1\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Retrieve { .. })));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut offset = 0;
    let mut step = 1;
    let mut ended = false;
    loop {
        while !ended && s.wants_message_bytes() {
            if offset == text.len() {
                s.message_end().unwrap();
                ended = true;
            } else {
                step = (step * 13 + 7) % 9001 + 1;
                let n = step.min(text.len() - offset);
                assert_eq!(
                    s.message_chunk(&text[offset..offset + n]),
                    Ok(MessageFlow::Continue)
                );
                offset += n;
            }
        }
        buf.clear();
        if s.poll_transmit(buf) == 0 && ended {
            break;
        }
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn streaming_allocates_nothing_per_line() {
    let mut text = Vec::new();
    let mut lines = 0;
    while text.len() < 2 * 1024 * 1024 {
        if lines % 5 == 0 {
            text.push(b'.');
        }
        text.extend_from_slice(b"a line of the message \xff\xfe with some text\r\n");
        lines += 1;
    }
    let now = Instant::now();
    let mut s = ServerSession::new(plaintext(), now);
    s.receive(now, b"USER bob\r\nPASS topSecret\r\n");
    let _ = s.poll_event();
    let mut maildrop = Maildrop::new();
    maildrop
        .push(text.len() as u64, "uid".parse().unwrap())
        .unwrap();
    s.accept_login(maildrop).unwrap();
    let mut buf = Vec::new();
    while s.poll_transmit(&mut buf) > 0 {
        buf.clear();
    }
    // The first run grows the two output buffers; later runs reuse them.
    let first = retr(&mut s, now, &text, &mut buf);
    let second = retr(&mut s, now, &text, &mut buf);
    let third = retr(&mut s, now, &text, &mut buf);
    assert!(lines > 40_000);
    assert!(
        first < 200,
        "first run: {first} allocations for {lines} lines"
    );
    assert!(
        second <= 4 && third <= 4,
        "later runs: {second}, {third} allocations"
    );
}

/// The default configuration with USER/PASS and AUTH PLAIN allowed before
/// TLS, as on a classroom network.
fn plaintext() -> ServerConfig {
    let mut config = ServerConfig::new();
    config.login_without_tls = true;
    config
}
