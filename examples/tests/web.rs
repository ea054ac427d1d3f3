//! The teacher's page over HTTP (issue 13): the page and its files as
//! built in, the event stream with the handout's sessions (Python's smtplib
//! and poplib) line for line as the terminal trace shows them, passwords
//! masked, the mailboxes and the queue; a browser that stops reading holds
//! up no session and is dropped.

mod peers;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postamt_examples::{Forwarding, Options, Server, Web};
use postamt_store::{MemoryStore, StaticDirectory};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// The trace as the terminal gets it.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A port nothing listens on: a next hop that refuses, so relayed mail
/// stays in the queue, deferred.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> (Server, Buffer) {
    let store = Arc::new(MemoryStore::new());
    let trace = Buffer::default();
    let hop = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let server = Server::start(Options {
        trace: true,
        trace_output: Some(Box::new(trace.clone())),
        web: Some(Web {
            listen: "127.0.0.1:0".parse().unwrap(),
            view: store.clone(),
        }),
        forwarding: Forwarding {
            relay_from: vec!["127.0.0.0/8".parse().unwrap()],
            routes: vec![("example.com".into(), hop)],
            retry_after: Duration::from_secs(3600),
            ..Forwarding::new()
        },
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts");
    (server, trace)
}

/// One HTTP exchange on its own connection: status line, headers
/// (lower-case names), body.
fn http(addr: SocketAddr, request: &str) -> (String, BTreeMap<String, String>, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(tcp);
    let (status, headers) = head(&mut reader);
    let mut body = Vec::new();
    match headers.get("content-length") {
        Some(n) => {
            body.resize(n.parse().unwrap(), 0);
            reader.read_exact(&mut body).unwrap();
        }
        None => {
            chunked_transfer::Decoder::new(reader)
                .read_to_end(&mut body)
                .unwrap();
        }
    }
    (status, headers, body)
}

fn head(reader: &mut impl BufRead) -> (String, BTreeMap<String, String>) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    (status.trim_end().to_string(), headers)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// Follows `/events`: each event's JSON, and every octet of the stream.
fn follow(addr: SocketAddr) -> (Receiver<Value>, Arc<Mutex<Vec<u8>>>) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.write_all(get("/events").as_bytes()).unwrap();
    let mut reader = BufReader::new(tcp);
    let (status, headers) = head(&mut reader);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(headers["transfer-encoding"], "chunked");
    let raw = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let seen = Arc::clone(&raw);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(chunked_transfer::Decoder::new(reader));
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            seen.lock().unwrap().extend_from_slice(line.as_bytes());
            if let Some(data) = line.strip_prefix("data: ") {
                let event: Value = serde_json::from_str(data).expect("each event is JSON");
                if tx.send(event).is_err() {
                    return;
                }
            }
            line.clear();
        }
    });
    (rx, raw)
}

#[test]
fn the_page_and_its_files_are_served_as_built_in() {
    let (server, _) = start();
    let addr = server.web_addr().unwrap();
    for (path, kind, file) in [
        (
            "/",
            "text/html; charset=utf-8",
            include_str!("../src/web/page.html"),
        ),
        (
            "/page.css",
            "text/css; charset=utf-8",
            include_str!("../src/web/page.css"),
        ),
        (
            "/page.js",
            "text/javascript; charset=utf-8",
            include_str!("../src/web/page.js"),
        ),
    ] {
        let (status, headers, body) = http(addr, &get(path));
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(headers["content-type"], kind);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-security-policy"]
                .starts_with("default-src 'none'; script-src 'self';")
        );
        assert_eq!(body, file.as_bytes());
    }
    let (status, _, _) = http(addr, &get("/nothing"));
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Reached under another name (a site rebinding its name to 127.0.0.1).
    let (status, _, body) = http(
        addr,
        "GET / HTTP/1.1\r\nHost: evil.example:8025\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(
        body,
        b"open this page by the server's address, such as http://127.0.0.1:8025/\n"
    );
    // It only reads.
    let (status, _, body) = http(
        addr,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(body, b"this page only reads\n");
    server.stop();
}

/// The handout with smtplib and poplib: anna sends bob a message after
/// logging in (AUTH PLAIN), bob fetches and deletes it (USER, PASS, STAT,
/// LIST, RETR, DELE, QUIT), and the handout's relayed example.
const HANDOUT: &str = r#"
import poplib, smtplib, sys
smtp_port, pop3_port = int(sys.argv[1]), int(sys.argv[2])
msg = ("From: anna@kolleg.de\r\nTo: bob@kolleg.de\r\n"
       "Subject: <script>document.title='pwned'</script>\r\n\r\nHallo Bob,\r\nbis morgen!\r\n")
with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="pc1", timeout=10) as s:
    s.login("anna@kolleg.de", "geheim")
    s.sendmail("anna@kolleg.de", ["bob@kolleg.de"], msg)
input()  # the test saw the message on the page
p = poplib.POP3("127.0.0.1", pop3_port, timeout=10)
p.user("bob"); p.pass_("topSecret")
print("stat", p.stat()[0]); p.list()
print("retr", len(b"\r\n".join(p.retr(1)[1]) + b"\r\n"))
p.dele(1); p.quit()
with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="pc1", timeout=10) as s:
    s.helo("pc1")
    s.sendmail("bar@example.org", ["foo@example.com"], "Subject: weiter\r\n\r\nHallo\r\n")
"#;

/// Events until `done` says so, or panics after [`WAIT`].
fn until(rx: &Receiver<Value>, seen: &mut Vec<Value>, done: impl Fn(&[Value]) -> bool) {
    let started = Instant::now();
    while !done(seen) {
        let left = WAIT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(_) => panic!("waited for events; got {seen:#?}"),
        }
    }
}

#[test]
fn the_event_stream_shows_the_handout_as_the_trace_does() {
    if !peers::python() {
        return;
    }
    let (server, trace) = start();
    let (rx, raw) = follow(server.web_addr().unwrap());
    let mut seen = Vec::new();
    until(&rx, &mut seen, |s| !s.is_empty());
    assert_eq!(seen[0]["type"], "snapshot");
    assert_eq!(seen[0]["connections"], serde_json::json!([]));
    assert_eq!(seen[0]["mailboxes"], serde_json::json!([]));

    let mut python = Command::new("python3")
        .args(["-c", HANDOUT])
        .arg(server.smtp_addr().port().to_string())
        .arg(server.pop3_addr().port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let has_mail = |s: &[Value]| {
        s.iter()
            .any(|e| e["type"] == "mailboxes" && e["mailboxes"][0]["count"] == 1)
    };
    until(&rx, &mut seen, has_mail);
    python.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let retr: usize = printed.lines().nth(1).unwrap()[5..].parse().unwrap();
    assert_eq!(printed.lines().next(), Some("stat 1"));

    // Three connections, all closed; bob's message seen, then deleted; the
    // relayed one deferred in the queue.
    let closed = |s: &[Value]| s.iter().filter(|e| e["type"] == "closed").count();
    let queued = |s: &[Value]| {
        s.iter()
            .any(|e| e["type"] == "queue" && e["queue"][0]["recipients"][0]["state"] == "deferred")
    };
    until(&rx, &mut seen, |s| closed(s) >= 3 && queued(s));
    let mail_events: Vec<&Value> = seen.iter().filter(|e| e["type"] == "mailboxes").collect();
    let shown = mail_events
        .iter()
        .find(|e| e["mailboxes"][0]["count"] == 1)
        .expect("bob's mailbox with the message");
    let bob = &shown["mailboxes"][0];
    assert_eq!(bob["name"], "bob@kolleg.de");
    let message = &bob["messages"][0];
    assert_eq!(
        message["subject"],
        "<script>document.title='pwned'</script>"
    );
    assert_eq!(message["from"], "anna@kolleg.de");
    assert_eq!(message["size"], retr);
    assert_eq!(message["body"], "Hallo Bob,\nbis morgen!");
    assert!(message["headers"].as_str().unwrap().ends_with(
        "From: anna@kolleg.de\nTo: bob@kolleg.de\nSubject: <script>document.title='pwned'</script>"
    ));
    assert_eq!(message["more"], 0);
    // After QUIT the deletion shows: the mailbox is empty again.
    until(&rx, &mut seen, |s| {
        s.iter().rev().find(|e| e["type"] == "mailboxes").unwrap()["mailboxes"][0]["count"] == 0
    });

    let queue = seen.iter().rev().find(|e| e["type"] == "queue").unwrap();
    let entry = &queue["queue"][0];
    assert_eq!(entry["from"], "<bar@example.org>");
    assert_eq!(entry["subject"], "weiter");
    assert_eq!(entry["recipients"][0]["to"], "foo@example.com");
    let detail = entry["recipients"][0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("1 attempt(s), next "), "{detail}");

    // Each connection's lines are the terminal trace's, in order.
    let mut by_id: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for e in seen.iter().filter(|e| e["type"] == "line") {
        let shown = match e["said"].as_str().unwrap() {
            "C" => format!("C: {}", e["text"].as_str().unwrap()),
            "S" => format!("S: {}", e["text"].as_str().unwrap()),
            "note" => format!("-- {}", e["text"].as_str().unwrap()),
            other => panic!("unexpected {other}: {e}"),
        };
        let line = format!("[{} #{}] {shown}", e["protocol"].as_str().unwrap(), e["id"]);
        by_id
            .entry(e["id"].as_u64().unwrap())
            .or_default()
            .push(line);
    }
    let terminal = trace.text();
    for (id, lines) in &by_id {
        let expected: Vec<&str> = terminal
            .lines()
            .filter(|l| l.contains(&format!(" #{id}] ")))
            .collect();
        assert_eq!(lines, &expected, "connection #{id}");
    }
    let client = |proto: &str| -> Vec<Vec<String>> {
        by_id
            .values()
            .filter(|l| l[0].starts_with(&format!("[{proto} #")))
            .map(|l| {
                l.iter()
                    .filter_map(|l| l.split_once("] C: ").map(|(_, c)| c.to_string()))
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        client("pop3"),
        [[
            "USER bob",
            "PASS ****",
            "STAT",
            "LIST",
            "RETR 1",
            "DELE 1",
            "QUIT"
        ]]
    );
    let smtp = client("smtp");
    assert_eq!(smtp.len(), 2);
    assert_eq!(
        smtp[0][..3],
        [
            "ehlo pc1",
            "AUTH PLAIN ****",
            "mail FROM:<anna@kolleg.de> size=118"
        ]
    );
    assert_eq!(
        smtp[1][..3],
        [
            "helo pc1",
            "mail FROM:<bar@example.org>",
            "rcpt TO:<foo@example.com>"
        ]
    );
    // The forwarder's own attempt shows as a connection too.
    assert!(by_id.values().any(|l| l[0].starts_with("[smtp-out #")));
    // No secret ever went out on the stream.
    let raw = String::from_utf8(raw.lock().unwrap().clone()).unwrap();
    for secret in ["geheim", "topSecret", "AGFubmFAa29sbGVnLmRlAGdlaGVpbQ"] {
        assert!(!raw.contains(secret), "{secret} on the page");
    }
    assert!(raw.contains("PASS ****"));
    server.stop();
}

#[test]
fn a_browser_that_stops_reading_holds_up_no_session_and_is_dropped() {
    let (server, _) = start();
    let addr = server.web_addr().unwrap();
    // A browser that reads nothing, with a small receive window.
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck.set_recv_buffer_size(4096).unwrap();
    stuck.connect(&addr.into()).unwrap();
    let mut stuck: TcpStream = stuck.into();
    stuck.write_all(get("/events").as_bytes()).unwrap();

    // Far more trace than its queue and the socket buffers hold.
    let started = Instant::now();
    let mut smtp = TcpStream::connect(server.smtp_addr()).unwrap();
    smtp.set_read_timeout(Some(WAIT)).unwrap();
    let mut replies = BufReader::new(smtp.try_clone().unwrap());
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    let noop = format!("NOOP {}\r\n", "x".repeat(400));
    let batch = noop.repeat(100);
    for _ in 0..120 {
        smtp.write_all(batch.as_bytes()).unwrap();
        for _ in 0..100 {
            line.clear();
            replies.read_line(&mut line).unwrap();
            assert!(line.starts_with("250 "), "{line}");
        }
    }
    let took = started.elapsed();
    assert!(took < WAIT, "12000 NOOPs took {took:?}");

    // A browser that keeps up still gets everything from a fresh snapshot.
    let (rx, _) = follow(addr);
    let snapshot = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(
        snapshot["connections"][0]["lines"]
            .as_array()
            .unwrap()
            .len(),
        200
    );
    smtp.write_all(b"QUIT\r\n").unwrap();
    let next = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(next["text"], "QUIT");

    // The stuck one was let go: once it reads, its stream ends.
    stuck.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stuck);
    let (status, _) = head(&mut reader);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut rest = Vec::new();
    chunked_transfer::Decoder::new(reader)
        .read_to_end(&mut rest)
        .expect("the stream ends with its last chunk");
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.starts_with("retry: 1000\n\ndata: {\"type\":\"snapshot\""));
    assert!(!rest.contains("QUIT"), "nothing after it was dropped");
    server.stop();
}
