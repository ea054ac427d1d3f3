//! Counts heap allocations: a session in steady state answers NOOP and RSET
//! without allocating, and MAIL and RCPT allocate only the owned event.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use postamt_smtp::{Event, ServerConfig, ServerSession, Session};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a thread-local Cell that needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `f` and returns how many allocations it made on this thread.
fn count(f: impl FnOnce()) -> usize {
    let before = allocations();
    f();
    allocations() - before
}

fn exchange(session: &mut ServerSession, out: &mut Vec<u8>, input: &[u8]) {
    let now = Instant::now();
    session.receive(now, input);
    while let Some(event) = session.poll_event() {
        match event {
            Event::Mail { .. } | Event::Rcpt { .. } => session.accept().unwrap(),
            other => drop(other),
        }
    }
    out.clear();
    session.poll_transmit(out);
}

#[test]
fn steady_state_allocations() {
    let now = Instant::now();
    let mut session = ServerSession::new(ServerConfig::new("mx.kolleg.de"), now);
    let mut out = Vec::with_capacity(4096);
    exchange(&mut session, &mut out, b"EHLO client.example\r\n");
    // Warm every buffer once: a transaction, RSET, NOOP.
    exchange(
        &mut session,
        &mut out,
        b"MAIL FROM:<anna@kolleg.de>\r\nRCPT TO:<bob@kolleg.de>\r\nRSET\r\nNOOP\r\n",
    );

    let n = count(|| exchange(&mut session, &mut out, b"NOOP\r\n"));
    assert_eq!(n, 0, "NOOP allocated");
    assert_eq!(out, b"250 2.0.0 OK\r\n");

    let n = count(|| exchange(&mut session, &mut out, b"RSET\r\n"));
    assert_eq!(n, 0, "RSET allocated");
    assert_eq!(out, b"250 2.0.0 OK\r\n");

    let n = count(|| exchange(&mut session, &mut out, b"NOOP\r\nRSET\r\nNOOP\r\n"));
    assert_eq!(n, 0, "pipelined NOOP/RSET allocated");
    assert_eq!(out, b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n");

    // Errors are written without allocating too.
    let n = count(|| exchange(&mut session, &mut out, b"FOO\r\n"));
    assert_eq!(n, 0, "an error reply allocated");
    assert_eq!(out, b"500 5.5.1 Command unrecognized\r\n");

    // MAIL and RCPT: exactly one allocation each, the mailbox text of the
    // owned event handed to the application.
    let n = count(|| {
        exchange(
            &mut session,
            &mut out,
            b"MAIL FROM:<anna@kolleg.de> SIZE=100 BODY=8BITMIME\r\n",
        )
    });
    assert_eq!(n, 1, "MAIL");
    assert_eq!(out, b"250 2.1.0 Sender OK\r\n");
    let n = count(|| exchange(&mut session, &mut out, b"RCPT TO:<bob@kolleg.de>\r\n"));
    assert_eq!(n, 1, "RCPT");
    assert_eq!(out, b"250 2.1.5 Recipient OK\r\n");
    // RSET with a transaction open hands out an Event::Reset: still nothing.
    let n = count(|| exchange(&mut session, &mut out, b"RSET\r\n"));
    assert_eq!(n, 0, "RSET in a transaction allocated");
    // The null sender and Postmaster carry no text at all.
    let n = count(|| {
        exchange(
            &mut session,
            &mut out,
            b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nRSET\r\n",
        )
    });
    assert_eq!(n, 0, "MAIL FROM:<> / RCPT TO:<Postmaster>");
    assert_eq!(
        out,
        b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.0.0 OK\r\n"
    );
}
