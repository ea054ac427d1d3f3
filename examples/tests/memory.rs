//! Memory stays bounded by configuration, never by what a peer sends: a
//! 100 MiB message received into a Maildir, or into PostgreSQL, leaves the
//! server's peak resident set (`VmHWM` in `/proc/PID/status`) under 32 MiB. The server runs as a
//! process of its own so that the figure is its alone.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../crates/store/tests/pgtest/mod.rs"]
mod pgtest;

use postamt_store::{ApopSecrets, MailStore, MailboxName, PgStore, StaticDirectory};

const MIB: usize = 1024 * 1024;
/// What the message carries after its header.
const BODY: usize = 100 * MIB;
/// The bound the server must stay under.
const LIMIT_KIB: u64 = 32 * 1024;

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

fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

/// Sends the 100 MiB message to the test server `child` (started with
/// `env`, on `dir`); gives its peak RSS and the octets sent.
fn send_100_mib(dir: &std::path::Path, env: &[(&str, String)], store: &str) -> (u64, usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postamt-test-server"));
    child
        .arg(dir)
        .arg((2 * BODY).to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = child.spawn().expect("the test server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first.strip_prefix("smtp ").unwrap().parse().unwrap();
    let before = peak_rss_kib(child.id());

    let started = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut writer = tcp.try_clone().unwrap();
    let mut reader = BufReader::new(tcp);
    assert!(reply(&mut reader).starts_with("220 "));
    writer
        .write_all(b"EHLO memory.test\r\nMAIL FROM:<anna@kolleg.de>\r\nRCPT TO:<bob@kolleg.de>\r\nDATA\r\n")
        .unwrap();
    assert!(reply(&mut reader).starts_with("250-"));
    assert!(reply(&mut reader).starts_with("250 "));
    assert!(reply(&mut reader).starts_with("250 "));
    assert!(reply(&mut reader).starts_with("354 "));
    writer.write_all(HEADER).unwrap();
    // 64 KiB of 64-octet lines, written 1600 times.
    let line = format!("{}\r\n", "m".repeat(62));
    let chunk = line.repeat(1024);
    assert_eq!(chunk.len(), 64 * 1024);
    for _ in 0..BODY / chunk.len() {
        writer.write_all(chunk.as_bytes()).unwrap();
    }
    writer.write_all(b".\r\n").unwrap();
    let answer = reply(&mut reader);
    let elapsed = started.elapsed();
    assert!(answer.starts_with("250 "), "{answer}");
    let peak = peak_rss_kib(child.id());
    writer.write_all(b"QUIT\r\n").unwrap();
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "100 MiB message stored into {store} in {elapsed:.1?}; server peak RSS {peak} KiB ({before} KiB before)"
    );
    assert!(
        peak < LIMIT_KIB,
        "server peak RSS {peak} KiB, the bound is {LIMIT_KIB} KiB"
    );
    (peak, HEADER.len() + BODY)
}

const HEADER: &[u8] = b"Subject: 100 MiB\r\n\r\n";

/// Whether `stored` octets are what was sent plus a trace header.
fn stored_whole(stored: u64, sent: usize) {
    let trace_header = stored.checked_sub(sent as u64);
    assert!(
        trace_header.is_some_and(|t| (100..1000).contains(&t)),
        "stored {stored} octets for {sent} sent"
    );
}

#[test]
fn a_100_mib_message_into_maildir_keeps_rss_under_32_mib() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sent) = send_100_mib(dir.path(), &[], "a Maildir");
    // Stored whole: the trace header, then exactly what was sent.
    let new = dir.path().join("bob@kolleg.de/new");
    let files: Vec<_> = std::fs::read_dir(new).unwrap().collect();
    assert_eq!(files.len(), 1);
    stored_whole(files[0].as_ref().unwrap().metadata().unwrap().len(), sent);
}

#[test]
fn a_100_mib_message_into_postgresql_keeps_rss_under_32_mib() {
    let Some(db) = pgtest::TestDb::new() else {
        return;
    };
    let store = PgStore::connect(&db.url()).unwrap();
    store
        .import_users(&StaticDirectory::demo(), ApopSecrets::Discard)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, sent) = send_100_mib(
        dir.path(),
        &[("POSTAMT_TEST_DATABASE", db.url())],
        "PostgreSQL",
    );
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    let listing = store.open_maildrop(&bob).unwrap();
    assert_eq!(listing.messages().len(), 1);
    stored_whole(listing.messages()[0].size, sent);
}
