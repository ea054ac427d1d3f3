//! The outbound queue survives SIGKILL: a server with a full queue (its
//! next hop turns it away) is killed and restarted on the same folder with
//! a next hop that works, and every queued message reaches its recipient
//! exactly once; the queue is empty afterwards. Killed with a delivery in
//! flight (the next hop has the whole message and no reply went out), the
//! message is delivered after the restart: nothing accepted is lost.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postamt_examples::{Options, Server};
use postamt_store::{Directory, FolderSpool, MailStore, MemoryStore, Spool, StaticDirectory};

const WAIT: Duration = Duration::from_secs(20);

/// `postamt-test-server` relaying schule.example to `hop`.
struct Relaying {
    child: Child,
    _stdin: ChildStdin,
    smtp: SocketAddr,
}

impl Relaying {
    fn start(maildir: &Path, hop: SocketAddr) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postamt-test-server"))
            .arg(maildir)
            .env("POSTAMT_TEST_ROUTE", format!("schule.example={hop}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the test server starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let port: u16 = line.strip_prefix("smtp ").unwrap().parse().unwrap();
        // Both lines read before the pipe closes: a failed write of the
        // second would make the server give up.
        let _pop3 = lines.next();
        Self {
            child,
            _stdin: stdin,
            smtp: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// Sends message `n` from anna to carl; panics unless it gets its 250.
fn send(addr: SocketAddr, n: usize) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    let greeting = reply(&mut r);
    assert!(greeting.starts_with("220 "), "{greeting:?}");
    for line in [
        "EHLO client.kolleg.de\r\n".to_string(),
        "MAIL FROM:<anna@kolleg.de>\r\n".to_string(),
        "RCPT TO:<carl@schule.example>\r\n".to_string(),
        "DATA\r\n".to_string(),
        format!("Subject: m{n}\r\n\r\nmessage {n}\r\n.\r\n"),
    ] {
        w.write_all(line.as_bytes()).unwrap();
        let got = reply(&mut r);
        assert!(
            got.starts_with('2') || got.starts_with('3'),
            "{line}: {got}"
        );
    }
    w.write_all(b"QUIT\r\n").unwrap();
}

/// The next hop: carl's server, in this process.
fn schule() -> (Server, Arc<MemoryStore>, Arc<StaticDirectory>) {
    let mut directory = StaticDirectory::new();
    directory
        .add_user("carl@schule.example", "pw", &[])
        .unwrap();
    let directory = Arc::new(directory);
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options {
        hostname: "mx.schule.example".into(),
        ..Options::new(store.clone(), directory.clone())
    })
    .unwrap();
    (server, store, directory)
}

/// How often each subject arrived in carl's mailbox.
fn arrived(store: &MemoryStore, directory: &StaticDirectory) -> HashMap<String, usize> {
    let carl = directory.resolve("carl@schule.example").unwrap();
    let drop = store.open_maildrop(&carl).unwrap();
    let mut seen = HashMap::new();
    for i in 0..drop.messages().len() {
        let mut text = String::new();
        drop.read_message(i)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let subject = text
            .split("\r\nSubject: ")
            .nth(1)
            .and_then(|s| s.split("\r\n").next())
            .unwrap()
            .to_string();
        *seen.entry(subject).or_insert(0) += 1;
    }
    seen
}

/// A next hop that greets with 421 and hangs up: the host is down.
fn turning_away() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let _ = tcp.write_all(b"421 4.3.2 down for maintenance\r\n");
        }
    });
    addr
}

#[test]
fn a_full_queue_survives_sigkill_and_is_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relaying = Relaying::start(dir.path(), turning_away());
    for n in 0..5 {
        send(relaying.smtp, n);
    }
    relaying.kill();
    // Durable: all five are in the queue folder, records and all.
    let spool = FolderSpool::new(dir.path().join(".queue"));
    assert_eq!(spool.list().unwrap().len(), 5);

    let (next, store, directory) = schule();
    let relaying = Relaying::start(dir.path(), next.smtp_addr());
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = arrived(&store, &directory);
        if seen.len() == 5 && spool.list().unwrap().is_empty() {
            assert!(seen.values().all(|&n| n == 1), "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        thread::sleep(Duration::from_millis(50));
    }
    relaying.kill();
    next.stop();
}

/// A next hop that takes a message and never answers its final dot; says
/// over the channel when the dot came.
fn stalling() -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, dot) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let seen = seen.clone();
            thread::spawn(move || {
                let mut w = tcp.try_clone().unwrap();
                let mut r = BufReader::new(tcp);
                let _ = w.write_all(b"220 stall.example ESMTP\r\n");
                let mut data = false;
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if data {
                        if line == ".\r\n" {
                            let _ = seen.send(());
                            // Silence: the sender's delivery stays in flight.
                            thread::sleep(Duration::from_secs(60));
                            return;
                        }
                    } else {
                        let answer: &[u8] = match line.get(..4).unwrap_or("") {
                            "EHLO" => b"250 stall.example\r\n",
                            "DATA" => {
                                data = true;
                                b"354 go on\r\n"
                            }
                            _ => b"250 ok\r\n",
                        };
                        let _ = w.write_all(answer);
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, dot)
}

#[test]
fn a_delivery_in_flight_at_sigkill_is_made_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (stall, dot) = stalling();
    let relaying = Relaying::start(dir.path(), stall);
    send(relaying.smtp, 7);
    // Killed while the next hop holds the whole message without a reply.
    dot.recv_timeout(WAIT)
        .expect("the message reached the stalling hop");
    relaying.kill();
    let spool = FolderSpool::new(dir.path().join(".queue"));
    assert_eq!(spool.list().unwrap().len(), 1, "still queued");

    let (next, store, directory) = schule();
    let relaying = Relaying::start(dir.path(), next.smtp_addr());
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = arrived(&store, &directory);
        if seen.len() == 1 && spool.list().unwrap().is_empty() {
            assert_eq!(seen.get("m7"), Some(&1), "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        thread::sleep(Duration::from_millis(50));
    }
    relaying.kill();
    next.stop();
}
