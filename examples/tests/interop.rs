//! The toy server driven over real sockets by clients nobody here wrote:
//! Python's smtplib and poplib, and curl; plus the handout session typed
//! byte for byte as a student would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use postamt_examples::{Options, Server};
use postamt_store::{MailStore, Maildir, MemoryStore, StaticDirectory};

mod peers;

fn start(store: Arc<dyn MailStore>) -> Server {
    start_with(store, None, 20)
}

fn start_with(
    store: Arc<dyn MailStore>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
) -> Server {
    Server::start(Options {
        tls,
        max_connections,
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts on ephemeral ports")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_smtplib_and_poplib() {
    assert!(have("python3"), "python3 is needed for this test");
    let dir = tempfile::tempdir().unwrap();
    let server = start(Arc::new(Maildir::new(dir.path())));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(server.smtp_addr().port().to_string())
        .arg(server.pop3_addr().port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "clients.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");
    // What the Maildir holds: bob's remaining message, in new/ or cur/.
    let bob = dir.path().join("bob@kolleg.de");
    let files: Vec<_> = ["new", "cur"]
        .iter()
        .flat_map(|d| std::fs::read_dir(bob.join(d)).unwrap())
        .collect();
    assert_eq!(files.len(), 1, "bob keeps exactly one message");
    server.stop();
}

fn run_script(name: &str, server: &Server) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    let out = Command::new("python3")
        .arg(script)
        .arg(server.smtp_addr().port().to_string())
        .arg(server.pop3_addr().port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");
}

#[test]
fn python_starttls_and_stls() {
    let tls = postamt_examples::tls::self_signed("mail.kolleg.de").unwrap();
    let store = Arc::new(MemoryStore::new());
    let spool = Arc::new(postamt_store::MemorySpool::new());
    let server = Server::start(Options {
        tls: Some(tls),
        max_connections: 20,
        // A next hop that refuses connections: the message stays queued.
        forwarding: postamt_examples::Forwarding {
            relay_host: Some("127.0.0.1:9".parse().unwrap()),
            spool: spool.clone(),
            ..postamt_examples::Forwarding::new()
        },
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts on ephemeral ports");
    run_script("tls_clients.py", &server);
    // The authenticated client's relayed message is queued, not lost.
    let queued = postamt_store::Spool::list(&*spool).unwrap();
    assert_eq!(queued.len(), 1);
    server.stop();
}

#[test]
fn connections_over_the_cap_are_turned_away() {
    let server = start_with(Arc::new(MemoryStore::new()), None, 2);
    let first = TcpStream::connect(server.smtp_addr()).unwrap();
    let second = TcpStream::connect(server.smtp_addr()).unwrap();
    for s in [&first, &second] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(reply(&mut BufReader::new(s.try_clone().unwrap())).starts_with("220 "));
    }
    let third = TcpStream::connect(server.smtp_addr()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(third);
    assert_eq!(
        reply(&mut r),
        "421 mail.kolleg.de Too many connections, try again later\r\n"
    );
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    let pop_a = TcpStream::connect(server.pop3_addr()).unwrap();
    let pop_b = TcpStream::connect(server.pop3_addr()).unwrap();
    let pop_c = TcpStream::connect(server.pop3_addr()).unwrap();
    for s in [&pop_a, &pop_b, &pop_c] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    assert!(pop_line(&mut BufReader::new(pop_a.try_clone().unwrap())).starts_with("+OK"));
    assert!(pop_line(&mut BufReader::new(pop_b.try_clone().unwrap())).starts_with("+OK"));
    assert_eq!(
        pop_line(&mut BufReader::new(pop_c)),
        "-ERR [SYS/TEMP] Too many connections, try again later\r\n"
    );
    // Once one leaves, a new client is served again.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = TcpStream::connect(server.smtp_addr()).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if reply(&mut BufReader::new(again)).starts_with("220 ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
}

#[test]
fn curl_sends_and_fetches() {
    assert!(have("curl"), "curl is needed for this test");
    let server = start(Arc::new(MemoryStore::new()));
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail.txt");
    std::fs::write(
        &mail,
        "From: anna@kolleg.de\nTo: bob@kolleg.de\nSubject: curl\n\nsent by curl\n.\n",
    )
    .unwrap();
    let smtp = format!("smtp://127.0.0.1:{}", server.smtp_addr().port());
    let out = Command::new("curl")
        // --crlf: the file has LF line ends, which the server refuses as bare LFs.
        .args([
            "-sS",
            "--crlf",
            "--max-time",
            "10",
            &smtp,
            "--mail-from",
            "anna@kolleg.de",
        ])
        .args(["--mail-rcpt", "bob@kolleg.de", "--upload-file"])
        .arg(&mail)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl smtp: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pop3 = format!("pop3://127.0.0.1:{}/1", server.pop3_addr().port());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--user", "bob:topSecret", &pop3])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl pop3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Subject: curl\r\n"), "{text}");
    // curl stuffed the lone dot line; POP3 gives it back unstuffed.
    assert!(text.ends_with("sent by curl\r\n.\r\n"), "{text:?}");

    // A recipient in another domain is refused: curl reports the failure.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--crlf",
            "--max-time",
            "10",
            &smtp,
            "--mail-from",
            "anna@kolleg.de",
        ])
        .args(["--mail-rcpt", "carl@elsewhere.example", "--upload-file"])
        .arg(&mail)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("550"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

/// Reads one reply (all its lines) from the server.
fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

fn pop_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

#[test]
fn the_handout_session_over_telnet() {
    let server = start(Arc::new(MemoryStore::new()));
    let tcp = TcpStream::connect(server.smtp_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    assert_eq!(reply(&mut r), "220 mail.kolleg.de ESMTP postamt ready\r\n");
    let mut say = |line: &str, r: &mut BufReader<TcpStream>| {
        w.write_all(line.as_bytes()).unwrap();
        reply(r)
    };
    assert_eq!(
        say("HELO server\r\n", &mut r),
        "250 mail.kolleg.de Hello server\r\n"
    );
    assert_eq!(
        say("MAIL FROM: anna@kolleg.de\r\n", &mut r),
        "250 Sender OK\r\n"
    );
    assert_eq!(
        say("RCPT TO: bob@kolleg.de\r\n", &mut r),
        "250 Recipient OK\r\n"
    );
    assert_eq!(
        say("DATA\r\n", &mut r),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(
        say("Subject: Test\r\n\r\nHallo Bob!\r\n.\r\n", &mut r),
        "250 Message accepted for delivery\r\n"
    );
    assert_eq!(
        say("QUIT\r\n", &mut r),
        "221 mail.kolleg.de See you later\r\n"
    );

    let tcp = TcpStream::connect(server.pop3_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    assert!(pop_line(&mut r).starts_with("+OK"));
    for (command, expect) in [("USER bob\r\n", "+OK"), ("PASS topSecret\r\n", "+OK")] {
        w.write_all(command.as_bytes()).unwrap();
        let line = pop_line(&mut r);
        assert!(line.starts_with(expect), "{command:?} -> {line:?}");
    }
    w.write_all(b"STAT\r\n").unwrap();
    let stat = pop_line(&mut r);
    assert!(stat.starts_with("+OK 1 "), "{stat:?}");
    w.write_all(b"RETR 1\r\n").unwrap();
    let mut message = String::new();
    loop {
        let line = pop_line(&mut r);
        message.push_str(&line);
        if line == ".\r\n" {
            break;
        }
    }
    assert!(message.starts_with("+OK"), "{message}");
    assert!(
        message.contains("Return-Path: <anna@kolleg.de>\r\n"),
        "{message}"
    );
    assert!(
        message.contains(
            "Received: from server ([127.0.0.1])\r\n\tby mail.kolleg.de (postamt) with SMTP;"
        ),
        "{message}"
    );
    assert!(
        message.ends_with("Subject: Test\r\n\r\nHallo Bob!\r\n.\r\n"),
        "{message}"
    );
    w.write_all(b"DELE 1\r\nQUIT\r\n").unwrap();
    assert!(pop_line(&mut r).starts_with("+OK"));
    assert!(pop_line(&mut r).starts_with("+OK"));
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "the server closes after QUIT");
    server.stop();
}

/// swaks sends (pipelined, and with AUTH), fetchmail fetches and deletes.
/// Both are Debian packages; `.ci/run` installs them, elsewhere the test says
/// it was skipped.
#[test]
fn swaks_and_fetchmail() {
    if !have_any("swaks", "--version") || !have_any("fetchmail", "--version") {
        peers::missing("swaks or fetchmail", "Debian packages swaks and fetchmail");
        return;
    }
    let server = start(Arc::new(MemoryStore::new()));
    let smtp_port = server.smtp_addr().port().to_string();
    let swaks = |extra: &[&str]| {
        Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &smtp_port,
                "--helo",
                "client.example",
            ])
            .args(["--from", "anna@kolleg.de", "--timeout", "10"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = swaks(&[
        "--to",
        "bob@kolleg.de",
        "--pipeline",
        "--header",
        "Subject: swaks",
        "--body",
        "hi from swaks",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("<** 250-PIPELINING") || text.contains("<-  250-PIPELINING"),
        "{text}"
    );
    let out = swaks(&["--to", "carl@elsewhere.example"]);
    assert!(!out.status.success(), "relay without AUTH must fail");
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1"));
    let out = swaks(&[
        "--to",
        "carl@elsewhere.example",
        "--auth",
        "PLAIN",
        "--auth-user",
        "anna",
        "--auth-password",
        "geheim",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("fetchmailrc");
    let bsmtp = dir.path().join("out.bsmtp");
    std::fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 with protocol POP3 and port {}:\n  user \"bob\" there with password \"topSecret\" is \"bob\" here\n  sslproto ''\n  bsmtp \"{}\"\n",
            server.pop3_addr().port(),
            bsmtp.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .args(["--nosyslog", "--pidfile"])
        .arg(dir.path().join("pid"))
        .env("FETCHMAILHOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fetchmail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = std::fs::read_to_string(&bsmtp).unwrap();
    assert!(
        fetched.contains("Subject: swaks\r\n") || fetched.contains("Subject: swaks\n"),
        "{fetched}"
    );
    assert!(fetched.contains("hi from swaks"), "{fetched}");
    // fetchmail deleted what it fetched: the maildrop is empty now.
    let tcp = TcpStream::connect(server.pop3_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    pop_line(&mut r);
    w.write_all(b"USER bob\r\nPASS topSecret\r\nSTAT\r\nQUIT\r\n")
        .unwrap();
    pop_line(&mut r);
    pop_line(&mut r);
    assert_eq!(pop_line(&mut r), "+OK 0 0\r\n");
    server.stop();
}

fn have_any(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok()
}
