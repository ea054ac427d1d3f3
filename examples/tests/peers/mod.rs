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
