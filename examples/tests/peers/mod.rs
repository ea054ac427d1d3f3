//! What an interop test does when its peer is not installed: under `CI=true`
//! it fails (CI installs every peer, so a missing one is a broken set-up);
//! elsewhere it says it skipped.
#![allow(dead_code)]

/// Reports a missing peer: panics under `CI=true`, prints a skip note otherwise.
pub(crate) fn missing(peer: &str, hint: &str) {
    let message = format!("{peer} is missing ({hint})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}; CI=true, so this test fails instead of skipping");
    }
    eprintln!("skipped: {message}");
}

/// Whether `python3` runs; reports it missing when not.
pub(crate) fn python() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing(
            "python3",
            "the interop tests drive the servers with smtplib and poplib",
        );
    }
    ok
}

/// A free loopback port for a server program the test starts, which cannot
/// be handed a listening socket. Taken from 20000-31999, below Linux's
/// ephemeral range (32768 and up), so that no socket another test binds to
/// port 0 meanwhile can take it; tests of one binary count through the range
/// from an offset of their own process, and test binaries run one at a time.
pub(crate) fn spare_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 30;
    for _ in 0..12_000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base - 20_000 + step) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999");
}
