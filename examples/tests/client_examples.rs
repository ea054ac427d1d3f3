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

mod keyboard;
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

/// Bob's or anna's messages, in order.
fn maildrop(store: &MemoryStore, user: &str) -> Vec<Vec<u8>> {
    use postamt_store::{MailStore, MailboxName};
    use std::io::Read;
    let maildrop = store
        .open_maildrop(&MailboxName::new(user).unwrap())
        .unwrap();
    (0..maildrop.messages().len())
        .map(|i| {
            let mut m = Vec::new();
            maildrop
                .read_message(i)
                .unwrap()
                .read_to_end(&mut m)
                .unwrap();
            m
        })
        .collect()
}

/// `Tue, 1 Dec 2026 22:02:33 +0000`: RFC 5322's date-time, in UTC.
fn is_rfc5322_date(date: &str) -> bool {
    let parts: Vec<&str> = date.split(' ').collect();
    let days = ["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    let time: Vec<&str> = parts.get(4).map_or(vec![], |t| t.split(':').collect());
    parts.len() == 6
        && days.contains(&parts[0])
        && digits(parts[1], 1..=2)
        && months.contains(&parts[2])
        && digits(parts[3], 4..=4)
        && time.len() == 3
        && time.iter().all(|t| digits(t, 2..=2))
        && parts[5] == "+0000"
}

/// The handout's user agent on a terminal: send-mail asks for From (once
/// more after a wrong answer), To, Cc and Subject, then the text up to a
/// lone `.`; the message has Date and Message-ID and reaches both. Then
/// fetch-mail lists bob's maildrop, shows message 1, marks it, lists,
/// undoes, marks again, and deletes it at QUIT. Every prompt and answer is
/// checked as the terminal shows it (the pty echoes what is typed).
#[test]
fn send_mail_asks_and_fetch_mail_reads_and_deletes_on_a_terminal() {
    let (Some(send), Some(fetch)) = (example("send-mail"), example("fetch-mail")) else {
        peers::missing(
            "the send-mail and fetch-mail examples",
            "run `cargo test --workspace`, which builds them",
        );
        return;
    };
    if !peers::python() {
        return;
    }
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options::new(
        store.clone(),
        Arc::new(StaticDirectory::demo()),
    ))
    .unwrap();
    let smtp = server.smtp_addr().to_string();
    let pop3 = server.pop3_addr().to_string();
    let step = |keys: &str, until: &str| (keys.as_bytes().to_vec(), until.as_bytes().to_vec());

    let screen = keyboard::type_into(
        &[send.to_str().unwrap(), "--server", &smtp],
        &[
            step("", "From: "),
            step("anna\r", "From: "),
            step("anna@kolleg.de\r", "To: "),
            step("bob@kolleg.de\r", "Cc: "),
            step("anna@kolleg.de\r", "Subject: "),
            step("Grüße aus Raum 12\r", "Ctrl-D):\n"),
            step(
                "Hallo Bob,\r.ein Punkt vorn\r\rbis morgen!\r.\r",
                "for delivery\n",
            ),
        ],
        10,
    );
    let want = [
        "From: ",
        "anna\nnot a mail address: anna\nFrom: ",
        "anna@kolleg.de\nTo: ",
        "bob@kolleg.de\nCc: ",
        "anna@kolleg.de\nSubject: ",
        "Grüße aus Raum 12\nText (end it with a line holding only \".\", or with Ctrl-D):\n",
        "Hallo Bob,\n.ein Punkt vorn\n\nbis morgen!\n.\n\
         <bob@kolleg.de>: accepted (250 2.1.5 Recipient OK)\n\
         <anna@kolleg.de>: accepted (250 2.1.5 Recipient OK)\n\
         message sent: 250 2.0.0 Message accepted for delivery\n",
    ];
    for (got, want) in screen.steps.iter().zip(want) {
        assert_eq!(keyboard::show(got), keyboard::show(want.as_bytes()));
    }
    assert_eq!((screen.rest.as_slice(), screen.status), (&b""[..], 0));

    // The message: the headers asked for, Date and Message-ID, the text as
    // typed; one copy each for bob (To) and anna (Cc).
    let bob = maildrop(&store, "bob@kolleg.de");
    assert_eq!(bob.len(), 1);
    assert_eq!(maildrop(&store, "anna@kolleg.de"), bob);
    let text = String::from_utf8(bob[0].clone()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "Hallo Bob,\r\n.ein Punkt vorn\r\n\r\nbis morgen!\r\n");
    let fields: Vec<&str> = head.split("\r\n").skip(4).collect();
    assert_eq!(
        fields[..3],
        [
            "From: <anna@kolleg.de>",
            "To: <bob@kolleg.de>",
            "Cc: <anna@kolleg.de>"
        ]
    );
    assert_eq!(
        postamt_store::summary(&bob[0]).subject.as_deref(),
        Some("Grüße aus Raum 12")
    );
    assert!(fields[3].starts_with("Subject: =?utf-8?"), "{head}");
    let date = fields[4].strip_prefix("Date: ").unwrap();
    assert!(is_rfc5322_date(date), "{date:?}");
    let id = fields[5]
        .strip_prefix("Message-ID: <")
        .and_then(|id| id.strip_suffix("@kolleg.de>"))
        .unwrap();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
        "{id}"
    );
    assert_eq!(
        fields[6..],
        [
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit"
        ]
    );

    let size = bob[0].len();
    let help = "Commands: r N reads message N, d N deletes it, u undoes the deletions, \
                l lists again, q quits. Deletions take effect when you quit.\n";
    let screen = keyboard::type_into(
        &[
            fetch.to_str().unwrap(),
            "--server",
            &pop3,
            "--user",
            "bob",
            "--password",
            "topSecret",
        ],
        &[
            step("", "fetch-mail> "),
            step("r 1\r", "fetch-mail> "),
            step("d 1\r", "fetch-mail> "),
            step("r 1\r", "fetch-mail> "),
            step("l\r", "fetch-mail> "),
            step("u\r", "fetch-mail> "),
            step("l\r", "fetch-mail> "),
            step("r 9\r", "fetch-mail> "),
            step("hilfe\r", "fetch-mail> "),
            step("d 1\r", "fetch-mail> "),
            step("q\r", "at QUIT.\n"),
        ],
        10,
    );
    let line = format!(
        "    1 {size:>9}  {:<30}  Grüße aus Raum 12\n",
        "anna@kolleg.de"
    );
    let mut read = b"r 1\n".to_vec();
    read.extend_from_slice(&bob[0]);
    read.extend_from_slice(b"--- end of message 1 ---\nfetch-mail> ");
    let marked = "d 1\nMessage 1 is marked for deletion; it goes when you quit (q).\nfetch-mail> ";
    let want = [
        format!("1 message\n{line}{help}fetch-mail> ").into_bytes(),
        read,
        marked.into(),
        b"r 1\nMessage 1 is marked for deletion (u undoes that).\nfetch-mail> ".to_vec(),
        b"l\n0 messages\nfetch-mail> ".to_vec(),
        b"u\nNo message is marked for deletion any more.\nfetch-mail> ".to_vec(),
        format!("l\n1 message\n{line}fetch-mail> ").into_bytes(),
        b"r 9\nThere is no message 9.\nfetch-mail> ".to_vec(),
        format!("hilfe\n{help}fetch-mail> ").into_bytes(),
        marked.into(),
        b"q\nDeleting 1 marked message(s) now, at QUIT.\n".to_vec(),
    ];
    for (got, want) in screen.steps.iter().zip(&want) {
        assert_eq!(keyboard::show(got), keyboard::show(want));
    }
    assert_eq!((screen.rest.as_slice(), screen.status), (&b""[..], 0));
    // Bob's copy went at QUIT; anna's stays.
    assert!(maildrop(&store, "bob@kolleg.de").is_empty());
    assert_eq!(maildrop(&store, "anna@kolleg.de").len(), 1);
    server.stop();
}
