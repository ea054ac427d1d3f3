//! The toy server on its event loops, over real sockets: two thousand
//! connections held open while a new client is served, a delivery that
//! waits on its store holding only its own session, and a client that
//! pipelines without reading its replies cut off at a bounded output.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod lines;
use lines::Conn;

use postamt_examples::{Options, Server};
use postamt_store::StoreError;
use postamt_store::{Delivery, MailStore, MailboxName, Maildrop, MemoryStore, StaticDirectory};

const HOST: &str = "mail.kolleg.de";
const WAIT: Duration = Duration::from_secs(30);
const GREETING: &str = "220 mail.kolleg.de ESMTP postamt ready\r\n";

fn server(store: Arc<dyn MailStore>) -> Server {
    Server::start(Options {
        hostname: HOST.to_string(),
        max_connections_per_client: 0,
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts")
}

/// A greeted SMTP client that says EHLO.
fn client(addr: SocketAddr) -> Conn {
    let mut c = Conn::with_timeout(addr, WAIT);
    assert_eq!(c.reply(), GREETING);
    assert!(
        c.command("EHLO client.example\r\n")
            .starts_with("250-mail.kolleg.de")
    );
    c
}

/// Sends one message to `to` and gives the reply to its end of data.
fn send_message(c: &mut Conn, to: &str) -> String {
    send_message_without_end(c, to);
    c.command("Subject: Hallo\r\n\r\nBis morgen!\r\n.\r\n")
}

#[test]
fn two_thousand_held_connections_and_a_new_client_is_served() {
    let server = server(Arc::new(MemoryStore::new()));
    // Each held client is greeted: the server has taken it and answered.
    let mut held = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut c = Conn::with_timeout(server.smtp_addr(), WAIT);
        assert_eq!(c.reply(), GREETING);
        held.push(c);
    }
    assert_eq!(server.active_connections(), 2000);
    let mut new = client(server.smtp_addr());
    assert_eq!(
        send_message(&mut new, "bob@kolleg.de"),
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(
        new.command("QUIT\r\n"),
        "221 2.0.0 mail.kolleg.de See you later\r\n"
    );
    // The held ones are still served too.
    for c in held.iter_mut().step_by(97) {
        // Before EHLO a reply has no enhanced status code (RFC 2034).
        assert_eq!(c.command("NOOP\r\n"), "250 OK\r\n");
    }
    drop(held);
    server.stop();
}

/// A memory store whose deliveries to `slow@kolleg.de` commit only when
/// the test says so, and say when they have begun to wait. It says it
/// blocks, so the server hands its work to the pool.
struct SlowStore {
    inner: MemoryStore,
    waiting: Mutex<mpsc::Sender<()>>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

struct SlowDelivery {
    inner: Box<dyn Delivery>,
    slow: bool,
    waiting: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl MailStore for SlowStore {
    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError> {
        Ok(Box::new(SlowDelivery {
            inner: self.inner.begin_delivery(recipients)?,
            slow: recipients.iter().any(|r| r.as_str() == "slow@kolleg.de"),
            waiting: self.waiting.lock().unwrap().clone(),
            release: Arc::clone(&self.release),
        }))
    }

    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError> {
        self.inner.open_maildrop(mailbox)
    }
}

impl Delivery for SlowDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.inner.write_chunk(chunk)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.slow {
            let _ = self.waiting.send(());
            let _ = self.release.lock().unwrap().recv_timeout(WAIT);
        }
        self.inner.commit()
    }
}

/// A directory with the demo users and `slow@kolleg.de`.
fn slow_directory() -> StaticDirectory {
    let mut users = StaticDirectory::demo();
    users
        .add_user("slow@kolleg.de", "langsam", &[])
        .expect("a valid user");
    users
}

#[test]
fn a_delivery_waiting_on_its_store_holds_only_its_own_session() {
    let (waiting_tx, waiting) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let store = Arc::new(SlowStore {
        inner: MemoryStore::new(),
        waiting: Mutex::new(waiting_tx),
        release: Arc::new(Mutex::new(release_rx)),
    });
    let server = Server::start(Options {
        hostname: HOST.to_string(),
        // One loop thread: the waiting session and the others share it.
        loop_threads: 1,
        ..Options::new(store.clone(), Arc::new(slow_directory()))
    })
    .expect("server starts");
    let mut slow = client(server.smtp_addr());
    send_message_without_end(&mut slow, "slow@kolleg.de");
    slow.send("Subject: Langsam\r\n\r\nDauert.\r\n.\r\n");
    waiting.recv_timeout(WAIT).expect("the slow commit begins");
    // While that commit waits, others are greeted, answered and stored.
    for _ in 0..3 {
        let mut other = client(server.smtp_addr());
        assert_eq!(other.command("NOOP\r\n"), "250 2.0.0 OK\r\n");
        assert_eq!(
            send_message(&mut other, "bob@kolleg.de"),
            "250 2.0.0 Message accepted for delivery\r\n"
        );
        assert_eq!(
            other.command("QUIT\r\n"),
            "221 2.0.0 mail.kolleg.de See you later\r\n"
        );
    }
    // The slow session has heard nothing yet: its 250 waits for the store.
    slow.writer
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = (&slow.writer).read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a reply before the store was done: {early:?}"
    );
    slow.writer.set_read_timeout(Some(WAIT)).unwrap();
    release.send(()).unwrap();
    assert_eq!(slow.reply(), "250 2.0.0 Message accepted for delivery\r\n");
    assert_eq!(
        slow.command("QUIT\r\n"),
        "221 2.0.0 mail.kolleg.de See you later\r\n"
    );
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    assert_eq!(store.inner.open_maildrop(&bob).unwrap().messages().len(), 3);
    let slow_box = MailboxName::new("slow@kolleg.de").unwrap();
    assert_eq!(
        store
            .inner
            .open_maildrop(&slow_box)
            .unwrap()
            .messages()
            .len(),
        1
    );
    server.stop();
}

/// MAIL, RCPT and DATA for `to`, leaving the message to the caller.
fn send_message_without_end(c: &mut Conn, to: &str) {
    assert_eq!(
        c.command("MAIL FROM:<anna@kolleg.de>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        c.command(&format!("RCPT TO:<{to}>\r\n")),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        c.command("DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
}

#[test]
fn a_pipelining_client_that_never_reads_is_cut_off() {
    let server = server(Arc::new(MemoryStore::new()));
    // A small receive buffer, so that little of the output hides in it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.smtp_addr().into()).unwrap();
    let mut tcp: TcpStream = socket.into();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    // 64 MiB of NOOPs would ask for 150 MiB of replies; the server holds
    // 256 KiB of them for a client at most, and then lets it go.
    let batch = b"NOOP\r\n".repeat(64 * 1024);
    let started = Instant::now();
    let mut sent = 0usize;
    let cut = loop {
        match tcp.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(e) => break e,
        }
        assert!(
            sent < 64 * 1024 * 1024,
            "still taking NOOPs after {sent} octets"
        );
        assert!(started.elapsed() < WAIT * 2, "neither cut off nor done");
    };
    assert!(
        matches!(
            cut.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{cut}"
    );
    // Everyone else is served as before.
    let mut other = client(server.smtp_addr());
    assert_eq!(other.command("NOOP\r\n"), "250 2.0.0 OK\r\n");
    // What the cut-off client had been sent is its replies, in order.
    let mut got = Vec::new();
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = tcp.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(GREETING),
        "{:?}",
        &text[..text.len().min(80)]
    );
    assert!(
        text[GREETING.len()..]
            .split_inclusive("\r\n")
            .all(|l| l == "250 OK\r\n" || !l.ends_with("\r\n"))
    );
    drop(other);
    let _ = tcp.flush();
    server.stop();
}
