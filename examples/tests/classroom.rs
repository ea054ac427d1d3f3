//! `toy-server --classroom` as the teacher starts it (issue 13), with the
//! flags that must win over it (loopback, free ports, a next hop on
//! loopback): the banner says what it set, the handout's relayed example
//! gets `250 Recipient OK` from this machine's own network, the trace shows
//! it, the teacher's page answers.

mod peers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

/// Kills the server however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reply(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn classroom_mode_relays_for_the_local_network_traces_and_serves_the_page() {
    let Some(toy) = example("toy-server") else {
        peers::missing(
            "the toy-server example",
            "run `cargo test --workspace`, which builds it",
        );
        return;
    };
    // Relayed mail goes to a loopback port that refuses, never to DNS.
    let refusing = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(toy)
        .args(["--classroom", "--memory", "--listen", "127.0.0.1"])
        .args([
            "--smtp-port",
            "0",
            "--pop3-port",
            "0",
            "--web",
            "127.0.0.1:0",
        ])
        .args(["--relay-host", &refusing.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("toy-server starts");
    let mut running = Running(child);
    let stdout = running.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut banner = Vec::new();
    while banner.last().is_none_or(|l| l != "Stop with Ctrl-C.") {
        banner.push(lines.recv_timeout(WAIT).expect("the banner"));
    }
    let port = |prefix: &str| -> u16 {
        banner
            .iter()
            .find_map(|l| l.trim_start_matches(['|', ' ']).strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {banner:#?}"))
    };
    let smtp = port("SMTP  telnet 127.0.0.1 ");
    let pop3 = port("POP3  telnet 127.0.0.1 ");
    assert!(banner[0].starts_with("+-") && banner[1].starts_with("|  The class's mail server."));
    let has = |line: &str| banner.iter().any(|l| l == line);
    assert!(
        has(&format!(
            "Listening on 127.0.0.1, SMTP port {smtp}, POP3 port {pop3}."
        )),
        "{banner:#?}"
    );
    assert!(has(
        "|    anna@kolleg.de       password geheim                             |"
    ));
    assert!(has(
        "Trace: on, every dialogue below (C: client, S: server, passwords masked)."
    ));
    let relaying = banner
        .iter()
        .find_map(|l| l.strip_prefix("Relaying: for logged-in clients and for "))
        .expect("relaying for the local networks");
    let nets: Vec<&str> = relaying.trim_end_matches('.').split(", ").collect();
    assert!(
        nets.contains(&"127.0.0.0/8") && nets.contains(&"::1/128"),
        "{nets:?}"
    );
    let page = banner
        .iter()
        .find_map(|l| l.strip_prefix("Teacher's page: http://"))
        .and_then(|rest| rest.split('/').next())
        .map(|addr| addr.parse::<SocketAddr>().unwrap())
        .expect("the page's address");

    // The handout's example, typed from this machine: relayed.
    let tcp = TcpStream::connect(("127.0.0.1", smtp)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut to = tcp.try_clone().unwrap();
    let mut from = BufReader::new(tcp);
    assert_eq!(reply(&mut from), "220 mail.kolleg.de ESMTP postamt ready");
    for (typed, answer) in [
        ("HELO server", "250 mail.kolleg.de Hello server"),
        ("MAIL FROM: bar@example.org", "250 Sender OK"),
        ("RCPT TO: foo@example.com", "250 Recipient OK"),
        ("DATA", "354 End data with <CR><LF>.<CR><LF>"),
        (
            "Subject: Hallo\r\n\r\nHallo Foo!\r\n.",
            "250 Message accepted for delivery",
        ),
        ("QUIT", "221 mail.kolleg.de See you later"),
    ] {
        to.write_all(format!("{typed}\r\n").as_bytes()).unwrap();
        assert_eq!(reply(&mut from), answer, "after {typed:?}");
    }
    // The trace shows it on the terminal.
    let mut traced = Vec::new();
    while !traced
        .iter()
        .any(|l: &String| l.ends_with("S: 221 mail.kolleg.de See you later"))
    {
        traced.push(lines.recv_timeout(WAIT).expect("trace lines"));
    }
    assert!(
        traced
            .iter()
            .any(|l| l.ends_with("] C: RCPT TO: foo@example.com"))
    );
    assert!(
        traced
            .iter()
            .any(|l| l.ends_with("] -- foo@example.com goes to the queue"))
    );

    // The page answers.
    let mut http = TcpStream::connect(page).unwrap();
    http.set_read_timeout(Some(WAIT)).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("<title>postamt: the teacher's page</title>"));
}
