//! Mailbox and memory limits of the toy server, over real sockets: what an
//! unauthenticated client that keeps sending to `<Postmaster>` sees (250
//! while there is room, then `452 4.2.2` at RCPT, at RCPT for a `SIZE=` over
//! the room, and at the end of data for a message that crosses the limit),
//! what POP3 then lists, and that the process's memory stays bounded by the
//! limits when a client sends far more.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

mod lines;
use lines::Conn;

use postamt_examples::{Options, Server};
use postamt_store::{
    ApopSecret, Directory, MailStore, MailboxName, Maildir, MemoryStore, StaticDirectory,
};

mod peers;

const MIB: u64 = 1024 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const MAILBOX_FULL: &str = "452 4.2.2 Mailbox full\r\n";
const STORAGE_FULL: &str = "452 4.3.1 Insufficient system storage\r\n";

/// The demo users, plus a POP3 login `postmaster` / `pm` for the mailbox
/// that mail to `<Postmaster>` goes to.
struct WithPostmaster(StaticDirectory);

impl Directory for WithPostmaster {
    fn verify_password(&self, user: &str, password: &[u8]) -> Option<MailboxName> {
        if user == "postmaster" && password == b"pm" {
            return MailboxName::new(postamt_examples::POSTMASTER_MAILBOX).ok();
        }
        self.0.verify_password(user, password)
    }
    fn apop_secret(&self, user: &str) -> Option<ApopSecret> {
        self.0.apop_secret(user)
    }
    fn resolve(&self, address: &str) -> Option<MailboxName> {
        self.0.resolve(address)
    }
    fn is_local_domain(&self, domain: &str) -> bool {
        self.0.is_local_domain(domain)
    }
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        Self::with_timeout(addr, READ_TIMEOUT)
    }

    fn smtp(addr: SocketAddr) -> Self {
        let mut c = Self::open(addr);
        assert!(c.reply().starts_with("220 "));
        let ehlo = c.command("EHLO client.example\r\n");
        assert!(
            ehlo.contains("250-SIZE ") || ehlo.contains("250 SIZE "),
            "{ehlo}"
        );
        c
    }

    /// DATA, the message, the final dot: the reply to the dot.
    fn data(&mut self, message: &[u8]) -> String {
        assert_eq!(self.command("DATA\r\n").get(..4), Some("354 "));
        self.send(message);
        self.command(".\r\n")
    }
}

/// A message of exactly `octets` octets: a Subject naming it, then lines of
/// at most 80 octets, the last ending in CRLF, none starting with a dot.
fn message(marker: &str, octets: usize) -> Vec<u8> {
    let mut m = format!("Subject: {marker}\r\n\r\n").into_bytes();
    assert!(octets >= m.len() + 2, "{octets} is too small");
    while m.len() < octets {
        let left = octets - m.len();
        let line = left.min(80);
        if left - line == 1 {
            // Never leave a single octet: it cannot end in CRLF.
            m.extend(std::iter::repeat_n(b'q', line - 3));
        } else {
            m.extend(std::iter::repeat_n(b'q', line - 2));
        }
        m.extend_from_slice(b"\r\n");
    }
    assert_eq!(m.len(), octets);
    m
}

/// What the message gets after a plain `MAIL FROM:<>` (with `size` as its
/// SIZE= when given), `RCPT TO:<Postmaster>` and, when the RCPT is accepted,
/// DATA: the RCPT reply, then the reply to the final dot.
fn to_postmaster(c: &mut Conn, size: Option<usize>, message: &[u8]) -> (String, Option<String>) {
    let mail = match size {
        Some(size) => format!("MAIL FROM:<> SIZE={size}\r\n"),
        None => "MAIL FROM:<>\r\n".to_string(),
    };
    assert_eq!(c.command(&mail), "250 2.1.0 Sender OK\r\n");
    let rcpt = c.command("RCPT TO:<Postmaster>\r\n");
    if !rcpt.starts_with("250 ") {
        assert_eq!(c.command("RSET\r\n").get(..4), Some("250 "));
        return (rcpt, None);
    }
    (rcpt, Some(c.data(message)))
}

const RCPT_OK: &str = "250 2.1.5 Recipient OK\r\n";
const STORED: &str = "250 2.0.0 Message accepted for delivery\r\n";

/// The POP3 listing of `user`: STAT's count and octets, and each message's
/// Subject, in order.
fn pop3_listing(addr: SocketAddr, user: &str, password: &str) -> (usize, u64, Vec<String>) {
    let mut c = Conn::open(addr);
    assert!(c.line().starts_with("+OK"));
    assert!(c.command(&format!("USER {user}\r\n")).starts_with("+OK"));
    assert!(
        c.command(&format!("PASS {password}\r\n"))
            .starts_with("+OK"),
        "login as {user}"
    );
    let stat = c.command("STAT\r\n");
    let mut parts = stat.trim_end().split(' ').skip(1);
    let count: usize = parts.next().unwrap().parse().unwrap();
    let octets: u64 = parts.next().unwrap().parse().unwrap();
    let mut subjects = Vec::new();
    for n in 1..=count {
        assert!(c.command(&format!("TOP {n} 0\r\n")).starts_with("+OK"));
        loop {
            let line = c.line();
            if line == ".\r\n" {
                break;
            }
            if let Some(subject) = line.strip_prefix("Subject: ") {
                subjects.push(subject.trim_end().to_string());
            }
        }
    }
    assert!(c.command("QUIT\r\n").starts_with("+OK"));
    (count, octets, subjects)
}

/// The whole dialogue against a store whose mailboxes hold 1 MiB, whatever
/// the store; `size_of` reads the postmaster mailbox's stored octets.
fn postmaster_fills_up(store: Arc<dyn MailStore>, size_of: &dyn Fn() -> u64) {
    const LIMIT: u64 = MIB;
    let server = Server::start(Options::new(
        store,
        Arc::new(WithPostmaster(StaticDirectory::demo())),
    ))
    .expect("server starts");
    let mut c = Conn::smtp(server.smtp_addr());

    // Three messages of 300 000 octets fit.
    for i in 0..3 {
        let (rcpt, end) = to_postmaster(&mut c, None, &message(&format!("m{i}"), 300_000));
        assert_eq!(rcpt, RCPT_OK);
        assert_eq!(end.as_deref(), Some(STORED), "message {i}");
    }
    let used = size_of();
    // Each stored message is its trace header and what was sent.
    assert_eq!(used % 3, 0);
    let header = used / 3 - 300_000;
    assert!(
        (100..400).contains(&header),
        "trace header of {header} octets"
    );

    // The fourth has room at RCPT (no SIZE= said otherwise) and crosses the
    // limit mid-DATA: 452 at the end of data, nothing stored.
    let (rcpt, end) = to_postmaster(&mut c, None, &message("crosses", 300_000));
    assert_eq!(rcpt, RCPT_OK);
    assert_eq!(end.as_deref(), Some(MAILBOX_FULL));
    assert_eq!(size_of(), used);

    // A SIZE= over the room is refused at RCPT; other recipients go on.
    let room = LIMIT - used;
    let over = usize::try_from(room).unwrap() + 1;
    assert_eq!(
        c.command(&format!("MAIL FROM:<> SIZE={over}\r\n")),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(c.command("RCPT TO:<Postmaster>\r\n"), MAILBOX_FULL);
    assert_eq!(c.command("RCPT TO:<anna@kolleg.de>\r\n"), RCPT_OK);
    assert_eq!(c.data(&message("for anna", 2000)), STORED);
    assert_eq!(size_of(), used);

    // A message that fills the mailbox exactly fits, SIZE= and all.
    let exact = usize::try_from(room - header).unwrap();
    let (rcpt, end) = to_postmaster(&mut c, Some(exact), &message("last", exact));
    assert_eq!(rcpt, RCPT_OK);
    assert_eq!(end.as_deref(), Some(STORED));
    assert_eq!(size_of(), LIMIT);

    // Full: refused at RCPT, with or without SIZE=, on this connection and
    // the next.
    assert_eq!(to_postmaster(&mut c, None, b"").0, MAILBOX_FULL);
    assert_eq!(to_postmaster(&mut c, Some(10), b"").0, MAILBOX_FULL);
    assert_eq!(c.command("QUIT\r\n").get(..4), Some("221 "));
    let mut next = Conn::smtp(server.smtp_addr());
    assert_eq!(to_postmaster(&mut next, None, b"").0, MAILBOX_FULL);
    drop(next);

    // POP3 shows exactly the stored ones.
    let (count, octets, subjects) = pop3_listing(server.pop3_addr(), "postmaster", "pm");
    assert_eq!((count, octets), (4, LIMIT));
    assert_eq!(subjects, ["m0", "m1", "m2", "last"]);
    let (count, _, subjects) = pop3_listing(server.pop3_addr(), "anna", "geheim");
    assert_eq!((count, subjects), (1, vec!["for anna".to_string()]));

    // Fetching and deleting over POP3 makes room again.
    let mut p = Conn::open(server.pop3_addr());
    assert!(p.line().starts_with("+OK"));
    assert!(p.command("USER postmaster\r\n").starts_with("+OK"));
    assert!(p.command("PASS pm\r\n").starts_with("+OK"));
    assert!(p.command("DELE 1\r\n").starts_with("+OK"));
    assert!(p.command("QUIT\r\n").starts_with("+OK"));
    let mut again = Conn::smtp(server.smtp_addr());
    let (rcpt, end) = to_postmaster(&mut again, Some(250_000), &message("after", 250_000));
    assert_eq!(rcpt, RCPT_OK);
    assert_eq!(end.as_deref(), Some(STORED));
    server.stop();
}

#[test]
fn a_full_memory_mailbox_gets_452_at_rcpt_and_at_end_of_data() {
    let memory = MemoryStore::new().with_mailbox_size_limit(Some(MIB));
    let postmaster = MailboxName::new(postamt_examples::POSTMASTER_MAILBOX).unwrap();
    let probe = memory.clone();
    postmaster_fills_up(Arc::new(memory), &|| probe.mailbox_size(&postmaster));
    // The refused messages left nothing behind: what the store holds is
    // exactly what POP3 listed (less the deleted one, plus the last).
    assert_eq!(
        probe.total_size(),
        probe.mailbox_size(&postmaster)
            + probe.mailbox_size(&MailboxName::new("anna@kolleg.de").unwrap())
    );
}

#[test]
fn a_full_maildir_mailbox_gets_452_at_rcpt_and_at_end_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = Maildir::new(dir.path()).with_mailbox_size_limit(Some(MIB));
    let postmaster = MailboxName::new(postamt_examples::POSTMASTER_MAILBOX).unwrap();
    let probe = maildir.clone();
    postmaster_fills_up(Arc::new(maildir), &|| {
        probe.mailbox_size(&postmaster).unwrap()
    });
    let tmp = dir.path().join("postmaster/tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "no tmp leftovers"
    );
}

#[test]
fn a_full_memory_store_gets_452_4_3_1() {
    let memory = MemoryStore::new()
        .with_mailbox_size_limit(Some(MIB))
        .with_total_size_limit(Some(MIB + MIB / 2));
    let server = Server::start(Options::new(
        Arc::new(memory.clone()),
        Arc::new(StaticDirectory::demo()),
    ))
    .expect("server starts");
    let mut c = Conn::smtp(server.smtp_addr());
    let big = message("big", 900_000);
    for to in ["anna@kolleg.de", "bob@kolleg.de"] {
        assert_eq!(c.command("MAIL FROM:<>\r\n"), "250 2.1.0 Sender OK\r\n");
        assert_eq!(c.command(&format!("RCPT TO:<{to}>\r\n")), RCPT_OK);
        let end = c.data(&big);
        if to.starts_with("anna") {
            assert_eq!(end, STORED);
        } else {
            // bob's mailbox has room; the store does not.
            assert_eq!(end, STORAGE_FULL);
        }
    }
    assert_eq!(
        c.command("MAIL FROM:<> SIZE=700000\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(c.command("RCPT TO:<bob@kolleg.de>\r\n"), STORAGE_FULL);
    assert_eq!(c.command("QUIT\r\n").get(..4), Some("221 "));
    assert!(memory.total_size() < 900_000 + 1000);
    server.stop();
}

// ---------------------------------------------------------------------------
// The process's memory.

/// Where cargo put the example `name`: next to this test's `deps/` folder.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

/// Peak resident set of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The attack, 40 unauthenticated 5 MiB messages, against
/// `toy-server --memory` with 8 MiB per mailbox and 12 MiB in all: 200 MiB
/// sent, and the server's peak RSS stays under twice the memory limit plus
/// 64 MiB (without the limits it holds all 200 MiB).
#[test]
fn toy_server_memory_stays_bounded_by_the_limits() {
    const MEMORY_LIMIT: u64 = 12 * MIB;
    const BOUND_KIB: u64 = (2 * MEMORY_LIMIT + 64 * MIB) / 1024;
    let Some(toy) = example("toy-server") else {
        peers::missing(
            "the toy-server example",
            "run `cargo test --workspace`, which builds it",
        );
        return;
    };
    let mut child = Command::new(toy)
        .args(["--memory", "--smtp-port", "0", "--pop3-port", "0"])
        .args(["--mailbox-size-limit", "8M", "--memory-limit", "12M"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("toy-server starts");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    let mut banner = String::new();
    while port.is_none() {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("toy-server ended before it listened: {banner}");
        }
        banner.push_str(&line);
        port = line
            .trim()
            .strip_prefix("SMTP  telnet 127.0.0.1 ")
            .and_then(|p| p.parse::<u16>().ok());
    }
    // The rest of the banner, for the limits it names.
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        rest
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port.unwrap()).into();
    let mut c = Conn::smtp(addr);
    let body = message("five", 5 * MIB as usize);
    let mut ends = Vec::new();
    let mut rcpt_refusals = Vec::new();
    for i in 0..40 {
        // The first half to <Postmaster> (its mailbox fills), the rest to
        // anna and bob in turn (the store fills).
        let to = match i {
            0..20 => "<Postmaster>",
            _ if i % 2 == 0 => "<anna@kolleg.de>",
            _ => "<bob@kolleg.de>",
        };
        assert_eq!(c.command("MAIL FROM:<>\r\n"), "250 2.1.0 Sender OK\r\n");
        let rcpt = c.command(&format!("RCPT TO:{to}\r\n"));
        if rcpt != RCPT_OK {
            rcpt_refusals.push(rcpt);
            assert_eq!(c.command("RSET\r\n").get(..4), Some("250 "));
            continue;
        }
        ends.push(c.data(&body));
    }
    let peak = peak_rss_kib(pid);
    assert_eq!(c.command("QUIT\r\n").get(..4), Some("221 "));
    let _ = child.kill();
    let _ = child.wait();
    let rest = reader.join().unwrap();
    let stored = ends.iter().filter(|e| *e == STORED).count();
    println!(
        "toy-server --memory: {stored} of 40 x 5 MiB stored, peak RSS {peak} KiB (bound {BOUND_KIB} KiB)"
    );
    assert!(
        peak < BOUND_KIB,
        "peak RSS {peak} KiB, the bound is {BOUND_KIB} KiB"
    );
    assert!(
        (banner.clone() + &rest).contains("Limits: 8 MiB per mailbox, 12 MiB in memory in all."),
        "{banner}{rest}"
    );
    // One 5 MiB message fits in an 8 MiB mailbox (Postmaster's, then
    // anna's), and a third does not fit in 12 MiB: two stored, the rest
    // refused with 452 mid-DATA.
    assert_eq!(stored, 2, "{ends:?}");
    for reply in ends.iter().chain(&rcpt_refusals) {
        assert!(
            [STORED, MAILBOX_FULL, STORAGE_FULL].contains(&reply.as_str()),
            "{reply}"
        );
    }
    assert!(ends.iter().any(|e| e == MAILBOX_FULL), "{ends:?}");
    assert!(
        ends.iter().chain(&rcpt_refusals).any(|e| e == STORAGE_FULL),
        "{ends:?} {rcpt_refusals:?}"
    );
}

#[test]
fn toy_server_refuses_a_size_it_cannot_read() {
    let Some(toy) = example("toy-server") else {
        peers::missing(
            "the toy-server example",
            "run `cargo test --workspace`, which builds it",
        );
        return;
    };
    let out = Command::new(toy)
        .args(["--memory", "--mailbox-size-limit", "12X"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value '12X' for '--mailbox-size-limit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("give octets, or a number with K, M or G"),
        "{stderr}"
    );
}
