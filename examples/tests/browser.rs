//! The teacher's page in a real browser (issue 13): headless Chromium opens
//! it, the handout runs meanwhile (smtplib, poplib), and the sessions, the
//! message and the queue appear without a reload; a Subject holding
//! `<script>` and `<img onerror>` is shown as text and runs nothing. The
//! screenshot stays in `target/tmp/teacher-page/` (README's picture is one).

mod peers;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postamt_examples::{Forwarding, Options, Server, Web};
use postamt_store::{MemoryStore, StaticDirectory};

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn the_page_follows_the_handout_live_and_runs_no_student_script() {
    if !Path::new(CHROMIUM).exists() {
        peers::missing("chromium", "Debian's chromium package drives the page test");
        return;
    }
    if !peers::python() {
        return;
    }
    let store = Arc::new(MemoryStore::new());
    // The next hop for example.com refuses: the relayed mail stays queued.
    let refusing = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Server::start(Options {
        web: Some(Web {
            listen: "127.0.0.1:0".parse().unwrap(),
            view: store.clone(),
        }),
        forwarding: Forwarding {
            relay_from: vec!["127.0.0.0/8".parse().unwrap()],
            routes: vec![("example.com".into(), refusing.to_string().parse().unwrap())],
            retry_after: Duration::from_secs(3600),
            ..Forwarding::new()
        },
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("teacher-page");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("teacher-page.png");
    let _ = std::fs::remove_file(&shot);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(CHROMIUM)
        .arg(format!("http://{}/", server.web_addr().unwrap()))
        .arg(server.smtp_addr().port().to_string())
        .arg(server.pop3_addr().port().to_string())
        .arg(&shot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            "reloaded: False",
            "script ran: False",
            "title: postamt: the teacher's page",
            "title unchanged: True",
            "subject shown: <script>document.title='pwned';window.pwned=1</script>\
             <img src=x onerror=\"window.pwned=2\">",
            "elements from mail: 0",
            // anna's SMTP session, bob's POP3 session, the relayed one, and
            // the forwarder's attempt at the next hop.
            "connections: 4",
            "pop3 commands: 6",
            "queue state: deferred",
            "screenshot: True",
        ]
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    server.stop();
}
