//! The toy server under faults, over real sockets: a store that fails (a full
//! disk), clients that vanish or go silent mid-DATA, more connections than the
//! cap. Each test checks the exact reply, that nothing half-received is
//! delivered, that nothing accepted is lost, and that the server goes on
//! serving the next client. Timeouts are shortened to seconds through
//! `Server::start_with_configs`, so every test runs in a few seconds.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod lines;
use lines::Conn;

use postamt_examples::{Options, Server};
use postamt_store::{
    Delivery, MailStore, MailboxName, Maildir, Maildrop, MemoryStore, MessageInfo, StaticDirectory,
    StoreError,
};

const HOST: &str = "mail.kolleg.de";
/// Longest wait for any single reply; far above what any step needs.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// A store that fails on demand.

/// Switches that make [`FailingStore`] fail where a real disk can.
#[derive(Default)]
struct Faults {
    begin_delivery: AtomicBool,
    /// Writes fail once a delivery has taken more than this many bytes
    /// (`u64::MAX`: never), as a disk that fills up mid-message.
    write_after: AtomicU64,
    commit: AtomicBool,
    commit_deletions: AtomicBool,
}

impl Faults {
    fn new() -> Arc<Self> {
        let faults = Self::default();
        faults.write_after.store(u64::MAX, Ordering::SeqCst);
        Arc::new(faults)
    }

    fn clear(&self) {
        self.begin_delivery.store(false, Ordering::SeqCst);
        self.write_after.store(u64::MAX, Ordering::SeqCst);
        self.commit.store(false, Ordering::SeqCst);
        self.commit_deletions.store(false, Ordering::SeqCst);
    }
}

fn disk_full(what: &'static str) -> StoreError {
    // ENOSPC as the operating system reports it.
    StoreError::Io {
        action: what,
        path: "/var/mail/simulated".into(),
        source: std::io::Error::from_raw_os_error(28),
    }
}

/// A [`MailStore`] over a [`MemoryStore`] whose operations fail while a
/// switch in [`Faults`] is on.
struct FailingStore {
    inner: MemoryStore,
    faults: Arc<Faults>,
}

impl MailStore for FailingStore {
    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError> {
        if self.faults.begin_delivery.load(Ordering::SeqCst) {
            return Err(disk_full("create"));
        }
        Ok(Box::new(FailingDelivery {
            inner: self.inner.begin_delivery(recipients)?,
            faults: Arc::clone(&self.faults),
            written: 0,
        }))
    }

    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError> {
        Ok(Box::new(FailingMaildrop {
            inner: self.inner.open_maildrop(mailbox)?,
            faults: Arc::clone(&self.faults),
        }))
    }
}

struct FailingDelivery {
    inner: Box<dyn Delivery>,
    faults: Arc<Faults>,
    written: u64,
}

impl Delivery for FailingDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        if self.written > self.faults.write_after.load(Ordering::SeqCst) {
            return Err(disk_full("write"));
        }
        self.inner.write_chunk(chunk)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.faults.commit.load(Ordering::SeqCst) {
            // Dropping the inner delivery aborts it, as a failed fsync would.
            return Err(disk_full("sync"));
        }
        self.inner.commit()
    }
}

struct FailingMaildrop {
    inner: Box<dyn Maildrop>,
    faults: Arc<Faults>,
}

impl Maildrop for FailingMaildrop {
    fn mailbox(&self) -> &MailboxName {
        self.inner.mailbox()
    }

    fn messages(&self) -> &[MessageInfo] {
        self.inner.messages()
    }

    fn read_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        self.inner.read_message(index)
    }

    fn commit_deletions(self: Box<Self>, indices: &[usize]) -> Result<(), StoreError> {
        if self.faults.commit_deletions.load(Ordering::SeqCst) {
            return Err(disk_full("unlink"));
        }
        self.inner.commit_deletions(indices)
    }
}

// ---------------------------------------------------------------------------
// Starting the server and talking to it.

fn options(store: Arc<dyn MailStore>, max_connections: usize) -> Options {
    Options {
        hostname: HOST.to_string(),
        max_connections,
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    }
}

/// A server whose SMTP command and data timeouts are `timeout`.
fn start(store: Arc<dyn MailStore>, max_connections: usize, timeout: Duration) -> Server {
    let mut smtp = postamt_smtp::ServerConfig::new(HOST);
    smtp.timeouts.command = timeout;
    smtp.timeouts.data = timeout;
    let mut pop3 = postamt_pop3::ServerConfig::default();
    pop3.timeouts.inactivity = timeout;
    Server::start_with_configs(options(store, max_connections), Some(smtp), Some(pop3))
        .expect("server starts on ephemeral ports")
}

fn bob() -> MailboxName {
    MailboxName::new("bob@kolleg.de").unwrap()
}

/// The messages in `mailbox`, read through the store's own interface.
fn stored(store: &dyn MailStore, mailbox: &MailboxName) -> Vec<Vec<u8>> {
    let drop = store.open_maildrop(mailbox).expect("maildrop opens");
    (0..drop.messages().len())
        .map(|i| {
            let mut bytes = Vec::new();
            drop.read_message(i)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        })
        .collect()
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        Self::with_timeout(addr, READ_TIMEOUT)
    }

    /// Greeting and EHLO.
    fn smtp(addr: SocketAddr) -> Self {
        let mut c = Self::open(addr);
        assert!(c.reply().starts_with("220 "));
        assert!(c.command("EHLO client.example\r\n").starts_with("250-"));
        c
    }

    /// MAIL, RCPT and DATA to bob, up to the 354.
    fn start_data(&mut self) {
        assert!(
            self.command("MAIL FROM:<anna@kolleg.de>\r\n")
                .starts_with("250 ")
        );
        assert!(
            self.command("RCPT TO:<bob@kolleg.de>\r\n")
                .starts_with("250 ")
        );
        assert!(self.command("DATA\r\n").starts_with("354 "));
    }

    /// A whole transaction; the reply after the final dot.
    fn send_message(&mut self, body: &str) -> String {
        self.start_data();
        self.send(body);
        self.command(".\r\n")
    }

    /// Whether the server closed the connection (no further bytes).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

/// `Subject` plus `lines` numbered text lines: a message that identifies itself.
fn message(marker: &str, lines: usize) -> String {
    let mut m = format!("Subject: {marker}\r\n\r\n");
    for i in 0..lines {
        m.push_str(&format!("{marker} line {i:06} of the message body\r\n"));
    }
    m
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

const LOCAL_ERROR: &str = "451 4.3.0 Local error in processing; try again later\r\n";

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn failed_delivery_is_451_and_the_retry_and_next_client_are_served() {
    let faults = Faults::new();
    let memory = MemoryStore::new();
    let store = Arc::new(FailingStore {
        inner: memory.clone(),
        faults: Arc::clone(&faults),
    });
    let server = start(store, 10, Duration::from_secs(30));
    // 2000 lines of about 50 octets: 100 KB, so the disk fills up mid-message.
    for name in ["begin", "write", "commit"] {
        let mut c = Conn::smtp(server.smtp_addr());
        match name {
            "begin" => faults.begin_delivery.store(true, Ordering::SeqCst),
            "write" => faults.write_after.store(32 * 1024, Ordering::SeqCst),
            _ => faults.commit.store(true, Ordering::SeqCst),
        }
        let body = message(&format!("fails-at-{name}"), 2000);
        assert_eq!(
            c.send_message(&body),
            LOCAL_ERROR,
            "store failing at {name}"
        );
        // The client retries on the same connection once the disk has room.
        faults.clear();
        let retry = message(&format!("retry-after-{name}"), 2000);
        assert!(
            c.send_message(&retry).starts_with("250 "),
            "retry after {name}"
        );
        assert!(c.command("QUIT\r\n").starts_with("221 "));
        // And a new client is served.
        let mut next = Conn::smtp(server.smtp_addr());
        let body = message(&format!("next-after-{name}"), 3);
        assert!(next.send_message(&body).starts_with("250 "));
        assert!(next.command("QUIT\r\n").starts_with("221 "));
    }
    // Exactly the accepted messages, whole; none of the refused ones.
    let messages = stored(&memory, &bob());
    assert_eq!(messages.len(), 6);
    for (m, name) in messages.chunks(2).zip(["begin", "write", "commit"]) {
        let retry = message(&format!("retry-after-{name}"), 2000);
        let next = message(&format!("next-after-{name}"), 3);
        assert!(
            m[0].ends_with(retry.as_bytes()),
            "retry after {name} intact"
        );
        assert!(m[1].ends_with(next.as_bytes()), "next after {name} intact");
    }
    server.stop();
}

#[test]
fn failed_pop3_commit_is_sys_temp_and_loses_nothing() {
    let faults = Faults::new();
    let memory = MemoryStore::new();
    for i in 1..=3 {
        let mut d = memory.begin_delivery(&[bob()]).unwrap();
        d.write_chunk(message(&format!("kept-{i}"), 5).as_bytes())
            .unwrap();
        d.commit().unwrap();
    }
    let store = Arc::new(FailingStore {
        inner: memory.clone(),
        faults: Arc::clone(&faults),
    });
    let server = start(store, 10, Duration::from_secs(30));
    let login = |c: &mut Conn| {
        assert!(c.line().starts_with("+OK"));
        c.send("USER bob\r\n");
        assert!(c.line().starts_with("+OK"));
        c.send("PASS topSecret\r\n");
        let answer = c.line();
        assert!(answer.starts_with("+OK"), "{answer}");
    };

    faults.commit_deletions.store(true, Ordering::SeqCst);
    let mut c = Conn::open(server.pop3_addr());
    login(&mut c);
    c.send("STAT\r\n");
    assert!(c.line().starts_with("+OK 3 "));
    for n in 1..=2 {
        c.send(format!("DELE {n}\r\n"));
        assert!(c.line().starts_with("+OK"));
    }
    c.send("QUIT\r\n");
    assert_eq!(
        c.line(),
        "-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    );
    assert!(c.closed(), "the session ends after a failed commit");

    // The next session gets the maildrop (the lock was released) with all
    // three messages, intact; this time the deletion goes through.
    faults.clear();
    let mut c = Conn::open(server.pop3_addr());
    login(&mut c);
    c.send("STAT\r\n");
    assert!(c.line().starts_with("+OK 3 "));
    c.send("RETR 1\r\n");
    assert!(c.line().starts_with("+OK"));
    let mut text = String::new();
    loop {
        let line = c.line();
        assert!(!line.is_empty(), "connection closed mid-RETR");
        if line == ".\r\n" {
            break;
        }
        text.push_str(&line);
    }
    assert_eq!(text, message("kept-1", 5));
    c.send("DELE 1\r\nQUIT\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK"));
    let left = stored(&memory, &bob());
    assert_eq!(left.len(), 2);
    assert_eq!(left[0], message("kept-2", 5).as_bytes());
    assert_eq!(left[1], message("kept-3", 5).as_bytes());
    server.stop();
}

#[test]
fn client_vanishing_mid_data_delivers_nothing() {
    let memory = MemoryStore::new();
    let dir = tempfile::tempdir().unwrap();
    let maildir = Maildir::new(dir.path());
    let stores: [Arc<dyn MailStore>; 2] = [Arc::new(memory.clone()), Arc::new(maildir.clone())];
    for store in stores {
        let server = start(Arc::clone(&store), 10, Duration::from_secs(30));
        for half_close in [false, true] {
            let mut c = Conn::smtp(server.smtp_addr());
            c.start_data();
            // 200 KB of the message, then the client is gone: without a
            // final dot, or with the dot line cut short.
            c.send(message("vanished", 5000));
            c.send("\r\n.");
            if half_close {
                c.writer.shutdown(std::net::Shutdown::Write).unwrap();
                assert!(c.closed(), "the server closes after EOF mid-DATA");
            }
            drop(c);
            wait_until("the connection to end", Duration::from_secs(5), || {
                server.active_connections() == 0
            });
        }
        // The server still serves, and the one message it has is this one.
        let mut c = Conn::smtp(server.smtp_addr());
        assert!(c.send_message(&message("complete", 3)).starts_with("250 "));
        assert!(c.command("QUIT\r\n").starts_with("221 "));
        let messages = stored(store.as_ref(), &bob());
        assert_eq!(messages.len(), 1);
        assert!(messages[0].ends_with(message("complete", 3).as_bytes()));
        server.stop();
    }
    // No half-written file is left behind in the Maildir either.
    let tmp = maildir.mailbox_path(&bob()).join("tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

#[test]
fn silent_client_mid_data_gets_421_at_the_data_timeout() {
    let memory = MemoryStore::new();
    let timeout = Duration::from_secs(2);
    let server = start(Arc::new(memory.clone()), 10, timeout);
    let mut c = Conn::smtp(server.smtp_addr());
    c.start_data();
    c.send(message("silent", 100));
    let sent = Instant::now();
    assert_eq!(
        c.reply(),
        format!("421 4.4.2 {HOST} Timeout, closing connection\r\n")
    );
    let waited = sent.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(100) && waited < timeout * 2,
        "421 after {waited:?}, the timeout is {timeout:?}"
    );
    assert!(c.closed());
    assert!(stored(&memory, &bob()).is_empty());
    server.stop();
}

#[test]
fn idle_connections_hit_the_cap_and_a_new_client_is_served_after() {
    let memory = MemoryStore::new();
    let cap = 50;
    let timeout = Duration::from_secs(2);
    let server = start(Arc::new(memory.clone()), cap, timeout);
    let mut idle: Vec<Conn> = (0..cap)
        .map(|_| {
            let mut c = Conn::open(server.smtp_addr());
            assert!(c.reply().starts_with("220 "));
            c
        })
        .collect();
    // Everyone beyond the cap is turned away with one line, then closed.
    for _ in 0..10 {
        let mut c = Conn::open(server.smtp_addr());
        assert_eq!(
            c.reply(),
            format!("421 {HOST} Too many connections, try again later\r\n")
        );
        assert!(c.closed());
    }
    // Some leave: a legitimate client gets a slot and delivers.
    idle.truncate(cap - 5);
    let mut c = Conn::open(server.smtp_addr());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.reply().starts_with("220 ") {
        assert!(Instant::now() < deadline, "no slot freed after closes");
        thread::sleep(Duration::from_millis(20));
        c = Conn::open(server.smtp_addr());
    }
    assert!(c.command("EHLO client.example\r\n").starts_with("250-"));
    assert!(c.send_message(&message("served", 3)).starts_with("250 ")); // before the idle time out
    assert!(c.command("QUIT\r\n").starts_with("221 "));
    // The rest time out: each gets the 421 (no EHLO, so no enhanced code)
    // and the server frees every slot.
    for c in &mut idle {
        assert_eq!(
            c.reply(),
            format!("421 {HOST} Timeout, closing connection\r\n")
        );
    }
    wait_until("the idle slots to free", Duration::from_secs(5), || {
        server.active_connections() == 0
    });
    let full: Vec<Conn> = (0..cap)
        .map(|_| {
            let mut c = Conn::open(server.smtp_addr());
            assert!(c.reply().starts_with("220 "), "every slot is free again");
            c
        })
        .collect();
    drop(full);
    assert_eq!(stored(&memory, &bob()).len(), 1);
    server.stop();
}

/// Sends the first 8 bytes of `text` one byte a second and returns what the
/// server answered and when, or `None` if it was still listening after them.
fn dribble(c: &mut Conn, text: &str) -> Option<(String, Duration)> {
    let start = Instant::now();
    for byte in text.bytes().take(8) {
        if c.writer.write_all(&[byte]).is_err() {
            break;
        }
        thread::sleep(Duration::from_secs(1));
        c.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut peek = [0; 1];
        let answered = c.reader.get_ref().peek(&mut peek).is_ok_and(|n| n > 0);
        c.reader
            .get_ref()
            .set_read_timeout(Some(READ_TIMEOUT))
            .unwrap();
        if answered {
            return Some((c.reply(), start.elapsed()));
        }
    }
    None
}

#[test]
fn slow_client_one_byte_a_second_is_cut_off_in_a_command() {
    let timeout = Duration::from_secs(2);
    let server = start(Arc::new(MemoryStore::new()), 10, timeout);
    let mut c = Conn::smtp(server.smtp_addr());
    let answer = dribble(&mut c, "MAIL FROM:<anna@kolleg.de>\r\n");
    let (reply, after) = answer.expect("the server never cut the slow client off");
    assert_eq!(
        reply,
        format!("421 4.4.2 {HOST} Timeout, closing connection\r\n")
    );
    assert!(after < timeout * 3, "cut off only after {after:?}");
    server.stop();
}

#[test]
fn slow_client_one_byte_a_second_is_cut_off_in_data() {
    let memory = MemoryStore::new();
    let timeout = Duration::from_secs(2);
    let server = start(Arc::new(memory.clone()), 10, timeout);
    let mut c = Conn::smtp(server.smtp_addr());
    c.start_data();
    let answer = dribble(&mut c, &message("slow", 1));
    let (reply, after) = answer.expect("the server never cut the slow client off");
    assert_eq!(
        reply,
        format!("421 4.4.2 {HOST} Timeout, closing connection\r\n")
    );
    assert!(after < timeout * 3, "cut off only after {after:?}");
    assert!(stored(&memory, &bob()).is_empty());
    server.stop();
}
