//! Thirty students at once (issue 13): thirty telnet-style sessions type the
//! handout at the same time, one key per packet with a short pause, with
//! typing mistakes corrected by Backspace or DEL; half of them open with
//! PuTTY's option negotiation and end lines with CR NUL. Each sends to a
//! classmate, then, once everybody has sent, reads and deletes its own
//! message over POP3. Every reply is checked exactly, and it all ends within
//! a bounded time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use postamt_examples::{Options, Server};
use postamt_store::{MailStore, MailboxName, MemoryStore, StaticDirectory};

const STUDENTS: usize = 30;
/// The pause between two keys.
const KEY_PAUSE: Duration = Duration::from_millis(3);
const WAIT: Duration = Duration::from_secs(15);

/// What PuTTY sends first in telnet mode, and our refusals of it.
const PUTTY_OPENING: &[u8] =
    b"\xff\xfb\x1f\xff\xfb\x20\xff\xfb\x18\xff\xfb\x27\xff\xfd\x01\xff\xfb\x03\xff\xfd\x03";
const REFUSALS: &[u8] =
    b"\xff\xfe\x1f\xff\xfe\x20\xff\xfe\x18\xff\xfe\x27\xff\xfc\x01\xff\xfe\x03\xff\xfc\x03";

/// A student's terminal: keys go out one per packet.
struct Terminal {
    tcp: TcpStream,
    got: Vec<u8>,
    /// Negotiates like PuTTY and ends lines with CR NUL.
    putty: bool,
}

impl Terminal {
    fn open(addr: SocketAddr, putty: bool) -> Self {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut t = Self {
            tcp,
            got: Vec::new(),
            putty,
        };
        if putty {
            // The refusals come once, before or after the greeting.
            t.tcp.write_all(PUTTY_OPENING).unwrap();
            t.wait_for(|got| got.windows(REFUSALS.len()).any(|w| w == REFUSALS));
            let at = t.got.windows(REFUSALS.len()).position(|w| w == REFUSALS);
            t.got.drain(at.unwrap()..at.unwrap() + REFUSALS.len());
        }
        t
    }

    /// Reads until `done` holds for what came.
    fn wait_for(&mut self, done: impl Fn(&[u8]) -> bool) {
        let started = Instant::now();
        let mut buf = [0; 4096];
        while !done(&self.got) {
            assert!(
                started.elapsed() < WAIT,
                "waited, got {:?}",
                String::from_utf8_lossy(&self.got)
            );
            match self.tcp.read(&mut buf) {
                Ok(0) => panic!("closed; got {:?}", String::from_utf8_lossy(&self.got)),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// Types `line` key by key, then Enter. `#` in `line` stands for a
    /// typing mistake: a wrong key, then Backspace (or DEL for PuTTY).
    fn type_line(&mut self, line: &str) {
        let erase = if self.putty { 0x7f } else { 0x08 };
        let mut keys = Vec::new();
        for b in line.bytes() {
            if b == b'#' {
                keys.extend_from_slice(&[b'x', erase]);
            } else {
                keys.push(b);
            }
        }
        keys.extend_from_slice(if self.putty { b"\r\0" } else { b"\r\n" });
        for key in keys {
            self.tcp.write_all(&[key]).unwrap();
            std::thread::sleep(KEY_PAUSE);
        }
    }

    /// Reads until what came ends with `end`; returns it all.
    fn until(&mut self, end: &str) -> String {
        self.wait_for(|got| got.ends_with(end.as_bytes()));
        String::from_utf8(std::mem::take(&mut self.got)).unwrap()
    }

    /// Types a line and checks the reply exactly.
    fn say(&mut self, line: &str, reply: &str) {
        self.type_line(line);
        assert_eq!(self.until(reply), reply, "after {line:?}");
    }
}

fn student(i: usize) -> String {
    format!("student{i}@kolleg.de")
}

/// One student's lesson: send to the next classmate, wait for the class,
/// fetch and delete the message from the previous one.
fn lesson(i: usize, smtp: SocketAddr, pop3: SocketAddr, class: &Barrier) {
    // A student who fails still lets the class go on (and the test end).
    let sent = std::panic::catch_unwind(|| send(i, smtp));
    class.wait();
    if let Err(e) = sent {
        std::panic::resume_unwind(e);
    }
    fetch(i, pop3);
}

fn send(i: usize, smtp: SocketAddr) {
    let putty = i.is_multiple_of(2);
    let me = student(i);
    let to = student((i + 1) % STUDENTS);
    let mut t = Terminal::open(smtp, putty);
    assert_eq!(
        t.until("ready\r\n"),
        "220 mail.kolleg.de ESMTP postamt ready\r\n"
    );
    t.say(
        &format!("HELO pc#{i}"),
        &format!("250 mail.kolleg.de Hello pc{i}\r\n"),
    );
    t.say(&format!("MAIL FROM: {me}"), "250 Sender OK\r\n");
    t.say(
        &format!("RCPT TO: stu#dent{}@kolleg.de", (i + 1) % STUDENTS),
        "250 Recipient OK\r\n",
    );
    t.say("DA#TA", "354 End data with <CR><LF>.<CR><LF>\r\n");
    for line in [
        format!("Subject: Gr#uss von {i}"),
        String::new(),
        format!("Hallo, hier schreibt {me} an {to}."),
        "Bis m#orgen!".to_string(),
    ] {
        // Message text from a client that did not negotiate passes as it
        // is (it may be a mail client's 8-bit text): no mistakes there.
        t.type_line(&if putty { line } else { line.replace('#', "") });
    }
    t.say(".", "250 Message accepted for delivery\r\n");
    t.say("QUIT", "221 mail.kolleg.de See you later\r\n");
}

fn fetch(i: usize, pop3: SocketAddr) {
    let putty = i.is_multiple_of(2);
    let me = student(i);
    let from = student((i + STUDENTS - 1) % STUDENTS);
    let mut t = Terminal::open(pop3, putty);
    let greeting = t.until("kolleg.de>\r\n");
    assert!(
        greeting.starts_with("+OK POP3 server ready <"),
        "{greeting}"
    );
    t.say(
        &format!("USER student#{i}"),
        "+OK Now send your password with PASS\r\n",
    );
    t.type_line(&format!("PASS geh#eim{i}"));
    let logged_in = t.until(" octets)\r\n");
    let size: usize = logged_in
        .strip_prefix("+OK Logged in, 1 message (")
        .and_then(|s| s.strip_suffix(" octets)\r\n"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{logged_in:?}"));
    t.say("ST#AT", &format!("+OK 1 {size}\r\n"));
    t.say(
        "LIST",
        &format!("+OK 1 message ({size} octets)\r\n1 {size}\r\n.\r\n"),
    );
    t.type_line("RETR 1");
    let text = t.until("\r\n.\r\n");
    let body = format!(
        "Subject: Gruss von {}\r\n\r\nHallo, hier schreibt {from} an {me}.\r\nBis morgen!\r\n.\r\n",
        (i + STUDENTS - 1) % STUDENTS
    );
    assert!(
        text.starts_with(&format!("+OK {size} octets\r\nReturn-Path: <{from}>\r\n"))
            && text.ends_with(&body),
        "{text:?}"
    );
    t.say("DELE 1", "+OK Message deleted\r\n");
    t.say("QUIT", "+OK Goodbye\r\n");
}

#[test]
fn thirty_students_type_the_handout_at_once() {
    let mut directory = StaticDirectory::new();
    for i in 0..STUDENTS {
        directory
            .add_user(&student(i), &format!("geheim{i}"), &[])
            .unwrap();
    }
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options::new(store.clone(), Arc::new(directory)))
        .expect("server starts on ephemeral ports");
    let (smtp, pop3) = (server.smtp_addr(), server.pop3_addr());
    let class = Arc::new(Barrier::new(STUDENTS));
    let started = Instant::now();
    let students: Vec<_> = (0..STUDENTS)
        .map(|i| {
            let class = class.clone();
            std::thread::Builder::new()
                .name(format!("student{i}"))
                .spawn(move || lesson(i, smtp, pop3, &class))
                .unwrap()
        })
        .collect();
    let failed: Vec<usize> = students
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| s.join().is_err().then_some(i))
        .collect();
    let took = started.elapsed();
    assert!(failed.is_empty(), "students {failed:?} failed");
    assert!(took < Duration::from_secs(20), "the lesson took {took:?}");
    eprintln!("{STUDENTS} students, the whole handout each: {took:?}");
    // Every message was read and deleted.
    for i in 0..STUDENTS {
        let mailbox = MailboxName::new(student(i)).unwrap();
        assert!(store.open_maildrop(&mailbox).unwrap().messages().is_empty());
    }
    server.stop();
}
