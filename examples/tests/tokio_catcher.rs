//! The tokio mail catcher, run as a program and driven by Python's smtplib:
//! what smtplib sends arrives byte for byte in the catcher's folder, and the
//! session's own deadline closes an idle connection.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod peers;

/// Where cargo put the example `name`: next to this test's `deps/` folder.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

/// Kills the catcher however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SCRIPT: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
    code, _ = s.ehlo("client.example")
    assert code == 250, code
    assert s.has_extn("pipelining")
    assert s.has_extn("8bitmime")
    refused = s.sendmail("anna@kolleg.de", ["bob@kolleg.de", "carl@example.org"],
        b"Subject: one\r\n\r\n.a dot line\r\n..two dots\r\nend\r\n")
    assert refused == {}, refused
    code, reply = s.docmd("NOOP")
    assert code == 250, (code, reply)
    refused = s.sendmail("anna@kolleg.de", ["bob@kolleg.de"],
        "Subject: zwei\r\n\r\nGr\u00fc\u00dfe\r\n".encode("utf-8"))
    assert refused == {}, refused
print("sent")
"#;

#[test]
fn smtplib_mail_lands_in_the_folder() {
    let Some(catcher) = example("tokio-catcher") else {
        peers::missing(
            "the tokio-catcher example",
            "run `cargo test --workspace`, which builds it",
        );
        return;
    };
    if !peers::python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(catcher)
        .args(["--listen", "127.0.0.1:0", "--idle-timeout", "2", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let running = Running(child);
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let port = addr.rsplit(':').next().unwrap();

    let out = Command::new("python3")
        .args(["-c", SCRIPT, port])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut caught: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    caught.sort();
    let bodies: Vec<&[u8]> = caught.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(
        bodies,
        [
            &b"Subject: one\r\n\r\n.a dot line\r\n..two dots\r\nend\r\n"[..],
            "Subject: zwei\r\n\r\nGr\u{fc}\u{df}e\r\n".as_bytes(),
        ]
    );
    assert!(
        caught.iter().all(|(n, _)| n.ends_with(".eml")),
        "{caught:?}"
    );

    // A client that says nothing is greeted, then cut off by the session's
    // own deadline (the select! arm on poll_timeout).
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut said = Vec::new();
    idle.read_to_end(&mut said).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&said),
        "220 catcher.localhost ESMTP postamt ready\r\n\
         421 catcher.localhost Timeout, closing connection\r\n"
    );

    // QUIT closes at once.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0; 64];
    let n = tcp.read(&mut greeting).unwrap();
    assert_eq!(
        &greeting[..n],
        b"220 catcher.localhost ESMTP postamt ready\r\n"
    );
    std::io::Write::write_all(&mut tcp, b"QUIT\r\n").unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"221 catcher.localhost See you later\r\n");
    drop(running);
}
