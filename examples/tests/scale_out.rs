//! Two toy servers behind HAProxy (TCP mode, `send-proxy-v2`), sharing one
//! PostgreSQL database: SMTP load through the balancer while one front end
//! is killed with SIGKILL. Every message that got its 250 is in the
//! database exactly once, the other front end keeps serving, POP3 through
//! the balancer sees every message once, a maildrop held through one front
//! end is `[IN-USE]` through the other (and free once the dead one's lease
//! runs out), queued mail for another server that the dead one accepted is
//! passed on by the survivor, and `Received:` names the clients' own
//! address, not the balancer's.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod lines;
mod peers;
#[path = "../../crates/store/tests/pgtest/mod.rs"]
mod pgtest;

use lines::Conn;
use postamt_examples::{Options, Server};
use postamt_store::{ApopSecrets, MailStore, MailboxName, MemoryStore, PgStore, StaticDirectory};

const WAIT: Duration = Duration::from_secs(20);
/// A dead front end's leases (maildrop locks, queue claims) run out after this.
const LEASE_MS: u64 = 2000;
/// Where the test's clients connect from: not the balancer's 127.0.0.1.
const CLIENT_IP: &str = "127.0.0.5";
const GREETING: &str = "220 mail.kolleg.de ESMTP postamt ready\r\n";

/// A front end: `postamt-test-server` on the shared database.
struct FrontEnd {
    child: Child,
    _stdin: ChildStdin,
    smtp: SocketAddr,
    pop3: SocketAddr,
}

impl FrontEnd {
    fn start(database: &str, route: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postamt-test-server"))
            .arg("unused")
            .env("POSTAMT_TEST_DATABASE", database)
            .env("POSTAMT_TEST_LEASE_MS", LEASE_MS.to_string())
            .env("POSTAMT_TEST_PROXY_FROM", "127.0.0.1/32")
            .env("POSTAMT_TEST_ROUTE", route)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("postamt-test-server starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut port = |what: &str| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let port: u16 = line
                .strip_prefix(what)
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("expected `{what} PORT`, got {line:?}"));
            SocketAddr::from(([127, 0, 0, 1], port))
        };
        let smtp = port("smtp ");
        let pop3 = port("pop3 ");
        let stdin = child.stdin.take().unwrap();
        Self {
            child,
            _stdin: stdin,
            smtp,
            pop3,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy in front of both front ends, for SMTP and POP3.
struct Balancer {
    child: Child,
    smtp: SocketAddr,
    pop3: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(fronts: &[&FrontEnd]) -> Self {
        let smtp = SocketAddr::from(([127, 0, 0, 1], peers::spare_port()));
        let pop3 = SocketAddr::from(([127, 0, 0, 1], peers::spare_port()));
        let backend = |name: &str, addrs: Vec<SocketAddr>| {
            let mut text = format!("backend {name}\n    balance roundrobin\n");
            for (n, addr) in addrs.iter().enumerate() {
                // Health checks send a PROXY header too (a v2 LOCAL one).
                text.push_str(&format!(
                    "    server fe{n} {addr} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2\n"
                ));
            }
            text
        };
        let config = format!(
            "global\n    maxconn 4000\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             frontend smtp\n    bind {smtp}\n    default_backend smtp_fronts\n\
             frontend pop3\n    bind {pop3}\n    default_backend pop3_fronts\n\
             {}{}",
            backend("smtp_fronts", fronts.iter().map(|f| f.smtp).collect()),
            backend("pop3_fronts", fronts.iter().map(|f| f.pop3).collect()),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(smtp).is_err() || TcpStream::connect(pop3).is_err() {
            assert!(Instant::now() < deadline, "haproxy does not listen");
            thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            smtp,
            pop3,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection from the test's client address.
fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let source: IpAddr = CLIENT_IP.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(Conn::from_stream(socket.into(), Duration::from_secs(5)))
}

/// One line, or an error when the connection broke or closed.
fn line(c: &mut Conn) -> std::io::Result<String> {
    let mut line = String::new();
    c.reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line)
}

/// One SMTP reply (its last line), or an error.
fn reply(c: &mut Conn) -> std::io::Result<String> {
    loop {
        let l = line(c)?;
        if l.len() < 4 || l.as_bytes()[3] != b'-' {
            return Ok(l);
        }
    }
}

fn command(c: &mut Conn, text: &str) -> std::io::Result<String> {
    c.writer.write_all(text.as_bytes())?;
    reply(c)
}

/// Sends one message to `to` with `subject` on a new connection to `addr`;
/// `Ok(true)` when it got its 250, `Ok(false)` or an error when not.
fn send(addr: SocketAddr, to: &str, subject: &str) -> std::io::Result<bool> {
    let mut c = connect(addr)?;
    if reply(&mut c)? != GREETING {
        return Ok(false);
    }
    command(&mut c, "EHLO client.example\r\n")?;
    let steps = [
        "MAIL FROM:<anna@kolleg.de>\r\n".to_string(),
        format!("RCPT TO:<{to}>\r\n"),
        "DATA\r\n".to_string(),
    ];
    for step in &steps {
        let r = command(&mut c, step)?;
        if !r.starts_with('2') && !r.starts_with('3') {
            return Ok(false);
        }
    }
    let r = command(&mut c, &format!("Subject: {subject}\r\n\r\nLast.\r\n.\r\n"))?;
    let _ = command(&mut c, "QUIT\r\n");
    Ok(r.starts_with("250 "))
}

/// A POP3 login as bob; the `+OK` or `-ERR` line of PASS, and the connection.
fn pop3_login(addr: SocketAddr) -> (String, Conn) {
    let mut c = connect(addr).expect("POP3 connects");
    assert!(line(&mut c).unwrap().starts_with("+OK"));
    c.send("USER bob\r\nPASS topSecret\r\n");
    assert!(line(&mut c).unwrap().starts_with("+OK"));
    let pass = line(&mut c).unwrap();
    (pass, c)
}

/// Every message of bob's: its Subject, and its first Received: line.
fn bob_messages(addr: SocketAddr) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        // The dead front end's lease on the maildrop runs out in a while.
        let (pass, c) = pop3_login(addr);
        if pass.starts_with("+OK") {
            break c;
        }
        assert!(pass.starts_with("-ERR [IN-USE]"), "{pass}");
        assert!(Instant::now() < deadline, "bob's maildrop stays locked");
        thread::sleep(Duration::from_millis(200));
    };
    c.send("STAT\r\n");
    let stat = line(&mut c).unwrap();
    let count: usize = stat.split(' ').nth(1).unwrap().parse().unwrap();
    let mut messages = Vec::new();
    for n in 1..=count {
        c.send(format!("RETR {n}\r\n"));
        assert!(line(&mut c).unwrap().starts_with("+OK"));
        let (mut subject, mut received) = (String::new(), String::new());
        loop {
            let l = line(&mut c).unwrap();
            if l == ".\r\n" {
                break;
            }
            if let Some(s) = l.strip_prefix("Subject: ") {
                subject = s.trim_end().to_string();
            }
            if received.is_empty()
                && let Some(r) = l.strip_prefix("Received: ")
            {
                received = r.trim_end().to_string();
            }
        }
        messages.push((subject, received));
    }
    c.send("QUIT\r\n");
    let _ = line(&mut c);
    messages
}

#[test]
fn two_front_ends_behind_haproxy_survive_the_death_of_one() {
    let Some(db) = pgtest::TestDb::new() else {
        return;
    };
    if Command::new("haproxy").arg("-v").output().is_err() {
        peers::missing("haproxy", "apt-get install haproxy");
        return;
    }
    let url = db.url();
    PgStore::connect(&url)
        .unwrap()
        .import_users(&StaticDirectory::demo(), ApopSecrets::Keep)
        .unwrap();
    // Another server for schule.de, down at first.
    let sink_port = peers::spare_port();
    let route = format!("schule.de=127.0.0.1:{sink_port}");
    let mut a = FrontEnd::start(&url, &route);
    let b = FrontEnd::start(&url, &route);
    let balancer = Balancer::start(&[&a, &b]);

    // A maildrop held through A is in use through B.
    let (pass, held) = pop3_login(a.pop3);
    assert!(pass.starts_with("+OK"), "{pass}");
    let (pass, _) = pop3_login(b.pop3);
    assert!(pass.starts_with("-ERR [IN-USE]"), "{pass}");
    // A takes mail for schule.de, which it cannot pass on yet.
    assert!(send(a.smtp, "carla@schule.de", "to carla").unwrap());

    // Load through the balancer; A dies in the middle of it.
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let (accepted, sent, done) =
                (Arc::clone(&accepted), Arc::clone(&sent), Arc::clone(&done));
            let addr = balancer.smtp;
            thread::spawn(move || {
                let mut n = 0;
                let deadline = Instant::now() + WAIT * 2;
                while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let subject = format!("load {t}-{n}");
                    n += 1;
                    if let Ok(true) = send(addr, "bob@kolleg.de", &subject) {
                        accepted.lock().unwrap().push(subject);
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let wait_for = |count: usize| {
        let deadline = Instant::now() + WAIT;
        while sent.load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "the load stalled at {}",
                sent.load(Ordering::SeqCst)
            );
            thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(30);
    a.kill();
    let at_kill = sent.load(Ordering::SeqCst);
    // B alone keeps serving through the balancer.
    wait_for(at_kill + 30);
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    drop(held.writer.shutdown(std::net::Shutdown::Both));

    // Through the balancer (B alone now), once A's lease has run out: every
    // accepted message once, and no message twice.
    let messages = bob_messages(balancer.pop3);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (subject, received) in &messages {
        *seen.entry(subject.as_str()).or_default() += 1;
        assert!(
            received.starts_with("from client.example ([127.0.0.5])"),
            "{received}"
        );
    }
    let accepted = accepted.lock().unwrap();
    for subject in accepted.iter() {
        assert_eq!(seen.get(subject.as_str()), Some(&1), "{subject}");
    }
    assert!(seen.values().all(|&n| n == 1), "a message twice: {seen:?}");

    // The mail A queued for schule.de: B claims it once A's claim runs out
    // and passes it on when schule.de's server is up.
    let sink_store = Arc::new(MemoryStore::new());
    let mut schule = StaticDirectory::new();
    schule.add_user("carla@schule.de", "geheim", &[]).unwrap();
    let sink = Server::start(Options {
        hostname: "mail.schule.de".to_string(),
        smtp_port: sink_port,
        ..Options::new(sink_store.clone(), Arc::new(schule))
    })
    .expect("schule.de's server starts");
    let carla = MailboxName::new("carla@schule.de").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let n = sink_store
            .open_maildrop(&carla)
            .map(|m| m.messages().len())
            .unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(
            n == 0 && Instant::now() < deadline,
            "carla has {n} message(s)"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let maildrop = sink_store.open_maildrop(&carla).unwrap();
    let mut text = String::new();
    maildrop
        .read_message(0)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("Subject: to carla\r\n"), "{text}");
    drop(maildrop);
    // Once only, however often the queue is claimed.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sink_store.open_maildrop(&carla).unwrap().messages().len(),
        1
    );
    sink.stop();
    drop(balancer);
    drop(b);
}
