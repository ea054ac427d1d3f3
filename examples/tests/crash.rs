//! Crash safety: clients send mail in a loop, the server is killed with
//! SIGKILL at a random moment, restarted on the same Maildir, and then every
//! message that got its 250 must be there, byte for byte, and nothing
//! half-written may be listed, on disk or over POP3.
//!
//! Five rounds by default; `POSTAMT_CRASH_ROUNDS=20` for more, and
//! `POSTAMT_CRASH_SEED` repeats a run (the seed is printed).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Senders per round.
const CLIENTS: usize = 2;
/// Longest wait for one reply.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// xorshift64*: enough randomness for kill moments and sizes, repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The test server as a child process.
struct TestServer {
    child: Child,
    /// Held open: the server exits when it closes.
    stdin: Option<ChildStdin>,
    smtp: SocketAddr,
    pop3: SocketAddr,
}

impl TestServer {
    fn start(maildir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postamt-test-server"))
            .arg(maildir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the test server starts");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut port = |name: &str| -> SocketAddr {
            let line = lines.next().expect("the server prints its ports").unwrap();
            let port = line
                .strip_prefix(name)
                .and_then(|p| p.trim().parse::<u16>().ok())
                .unwrap_or_else(|| panic!("expected `{name} PORT`, got {line:?}"));
            SocketAddr::from(([127, 0, 0, 1], port))
        };
        let smtp = port("smtp");
        let pop3 = port("pop3");
        Self {
            child,
            stdin,
            smtp,
            pop3,
        }
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("the test server did not stop when its stdin closed");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // On a failed assertion: no orphan left behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message with this id: a header naming it and `size` octets of
/// numbered lines derived from it, so any message can be rebuilt from its id.
fn message(id: &str, size: usize) -> String {
    let mut m = format!("Message-Id: <{id}@crash.test>\r\nX-Size: {size}\r\nSubject: {id}\r\n\r\n");
    let mut n = 0;
    while m.len() < size {
        m.push_str(&format!("{id} {n:08} the quick brown fox jumps\r\n"));
        n += 1;
    }
    m
}

/// The message a stored file must hold, read from its own header lines.
fn expected_body(stored: &str) -> Option<String> {
    let id = stored
        .split("\r\nMessage-Id: <")
        .nth(1)?
        .split_once("@crash.test>")?
        .0;
    let size = stored
        .split("\r\nX-Size: ")
        .nth(1)?
        .split_once("\r\n")?
        .0
        .parse()
        .ok()?;
    Some(message(id, size))
}

/// Reads one SMTP reply; `None` when the connection broke.
fn reply(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Some(all);
        }
    }
}

/// Sends messages until the connection breaks or `stop` is set; returns the
/// ids of those answered 250.
fn sender(addr: SocketAddr, prefix: String, seed: u64, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut rng = Rng(seed | 1);
    let mut acked = Vec::new();
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return acked;
    };
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut exchange = |text: &str, code: &str| -> Option<String> {
        tcp.write_all(text.as_bytes()).ok()?;
        reply(&mut reader).filter(|r| r.starts_with(code))
    };
    if exchange("", "220 ").is_none() || exchange("EHLO crash.test\r\n", "250").is_none() {
        return acked;
    }
    for seq in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("{prefix}-{seq}");
        // 1 KB to 64 KB: the kill lands in commands, in DATA and in commits.
        let size = 1024 + rng.below(63 * 1024) as usize;
        let body = message(&id, size);
        let sent = exchange("MAIL FROM:<anna@kolleg.de>\r\n", "250 ")
            .and_then(|_| exchange("RCPT TO:<bob@kolleg.de>\r\n", "250 "))
            .and_then(|_| exchange("DATA\r\n", "354 "))
            .and_then(|_| exchange(&format!("{body}.\r\n"), "250 "));
        match sent {
            Some(_) => acked.push(id),
            None => break,
        }
    }
    acked
}

/// Everything `bob` has on disk (`new/` and `cur/`), each file checked to be
/// a whole message; returns the ids found. `tmp/` may hold leftovers of the
/// kill, which nobody lists.
fn check_disk(maildir: &Path) -> HashSet<String> {
    let bob = maildir.join("bob@kolleg.de");
    let mut found = HashSet::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(bob.join(sub)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8(bytes).expect("stored mail is the ASCII we sent");
            assert!(
                text.starts_with("Return-Path: <anna@kolleg.de>\r\nReceived: "),
                "{}: no trace header",
                path.display()
            );
            let body = expected_body(&text)
                .unwrap_or_else(|| panic!("{}: not a whole message", path.display()));
            assert!(
                text.ends_with(&body),
                "{}: half-written or altered ({} octets)",
                path.display(),
                text.len()
            );
            let id = body.split(['<', '@']).nth(1).unwrap().to_string();
            assert!(found.insert(id), "{}: stored twice", path.display());
        }
    }
    found
}

/// Over POP3 on the restarted server: the listing has exactly the files on
/// disk, and a sample of 20 messages comes back whole (the disk check read
/// every one).
fn check_pop3(addr: SocketAddr, on_disk: usize, rng: &mut Rng) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut writer = tcp.try_clone().unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = || {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        l
    };
    assert!(line().starts_with("+OK"));
    writer
        .write_all(b"USER bob\r\nPASS topSecret\r\nSTAT\r\n")
        .unwrap();
    assert!(line().starts_with("+OK"));
    assert!(line().starts_with("+OK"), "bob logs in");
    let stat = line();
    assert_eq!(
        stat.split(' ').nth(1),
        Some(on_disk.to_string().as_str()),
        "POP3 lists what is on disk: {stat}"
    );
    for _ in 0..20.min(on_disk) {
        let n = 1 + rng.below(on_disk as u64);
        writer
            .write_all(format!("RETR {n}\r\n").as_bytes())
            .unwrap();
        assert!(line().starts_with("+OK"));
        let mut text = String::new();
        loop {
            let l = line();
            assert!(!l.is_empty(), "connection closed in RETR {n}");
            if l == ".\r\n" {
                break;
            }
            text.push_str(l.strip_prefix('.').unwrap_or(&l));
        }
        let body = expected_body(&text).expect("RETR gives a whole message");
        assert!(text.ends_with(&body), "RETR {n} is intact");
    }
    writer.write_all(b"QUIT\r\n").unwrap();
    assert!(line().starts_with("+OK"));
}

#[test]
fn messages_acknowledged_before_sigkill_survive_intact() {
    let rounds: usize = std::env::var("POSTAMT_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("POSTAMT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("POSTAMT_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path();
    let mut acked_all: HashSet<String> = HashSet::new();
    let mut server = TestServer::start(maildir);
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (addr, stop, seed) = (server.smtp, Arc::clone(&stop), rng.next());
                thread::spawn(move || sender(addr, format!("r{round}c{c}"), seed, stop))
            })
            .collect();
        // Kill at a random moment 50 to 500 ms in.
        thread::sleep(Duration::from_millis(50 + rng.below(450)));
        server.kill();
        stop.store(true, Ordering::SeqCst);
        let mut acked = 0;
        for s in senders {
            let ids = s.join().unwrap();
            acked += ids.len();
            acked_all.extend(ids);
        }

        server = TestServer::start(maildir);
        let on_disk = check_disk(maildir);
        let lost: Vec<_> = acked_all.difference(&on_disk).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );
        check_pop3(server.pop3, on_disk.len(), &mut rng);
        let leftovers =
            std::fs::read_dir(maildir.join("bob@kolleg.de/tmp")).map_or(0, Iterator::count);
        println!(
            "round {round}: {acked} acknowledged, {} on disk in all, {leftovers} unlisted in tmp/",
            on_disk.len()
        );
    }
    assert!(
        !acked_all.is_empty(),
        "no message was acknowledged at all: the test proved nothing"
    );
    server.stop();
}
