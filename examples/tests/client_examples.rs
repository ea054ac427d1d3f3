//! The send-mail and fetch-mail examples, run as the programs people run,
//! against the toy server. `cargo test` builds the examples before it runs
//! the tests; a run of this test file alone (`--test client_examples`) may
//! not, and then the test says it skipped.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use postamt_examples::{Options, Server};
use postamt_store::{MemoryStore, StaticDirectory};

mod peers;

/// Where cargo put the example `name`: next to this test's `deps/` folder.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

#[test]
fn send_mail_then_fetch_mail() {
    let (Some(send), Some(fetch)) = (example("send-mail"), example("fetch-mail")) else {
        peers::missing(
            "the send-mail and fetch-mail examples",
            "run `cargo test --workspace`, which builds them",
        );
        return;
    };
    let server = Server::start(Options {
        tls: Some(postamt_examples::tls::self_signed("mail.kolleg.de").unwrap()),
        max_connections: 20,
        ..Options::new(
            Arc::new(MemoryStore::new()),
            Arc::new(StaticDirectory::demo()),
        )
    })
    .unwrap();
    let smtp = server.smtp_addr().to_string();
    let pop3 = server.pop3_addr().to_string();

    let mut child = Command::new(&send)
        .args([
            "--server",
            &smtp,
            "--from",
            "anna@kolleg.de",
            "--to",
            "bob@kolleg.de",
        ])
        .args([
            "--to",
            "nobody@kolleg.de",
            "--subject",
            "Grüße",
            "--starttls",
            "--tls-insecure",
        ])
        .args(["--auth", "anna:geheim"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hallo Bob,\n.\nbis morgen!\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One recipient refused: exit status 1, and each recipient is reported.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("<bob@kolleg.de>: accepted (250 2.1.5 Recipient OK)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("<nobody@kolleg.de>: refused (550 5.1.1 No such user here)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("message sent: 250 2.0.0 Message accepted for delivery"),
        "{stdout}"
    );

    let fetched = Command::new(&fetch)
        .args([
            "--server",
            &pop3,
            "--user",
            "bob",
            "--stls",
            "--tls-insecure",
            "--print",
            "--delete",
        ])
        .env("POSTAMT_PASSWORD", "topSecret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&fetched.stdout);
    assert!(
        fetched.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(
        text.contains("Subject: =?utf-8?B?R3LDvMOfZQ==?=\r\n"),
        "{text}"
    );
    assert!(text.contains("with ESMTPSA;"), "{text}");
    assert!(
        text.contains("\r\n\r\nHallo Bob,\r\n.\r\nbis morgen!\r\n"),
        "{text}"
    );

    // A server with TLS takes no password in the clear.
    let plaintext = Command::new(&fetch)
        .args([
            "--server",
            &pop3,
            "--user",
            "bob",
            "--password",
            "topSecret",
        ])
        .output()
        .unwrap();
    assert!(!plaintext.status.success());

    // --delete committed at QUIT: nothing is left to list.
    let listed = Command::new(&fetch)
        .args([
            "--server",
            &pop3,
            "--user",
            "bob",
            "--password",
            "topSecret",
            "--stls",
            "--tls-insecure",
        ])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("Grüße"));
    server.stop();
}
