//! The handout typed into real telnet clients from Debian, on a terminal
//! (a pseudo-terminal driven by `keyboard.py`): netkit `telnet` and PuTTY's
//! `plink -telnet`, which opens with PuTTY's option negotiation and, on a
//! terminal in line mode, ends each line with a bare LF. Anna sends to Bob
//! over SMTP, Bob reads and deletes over POP3; every reply is checked as the
//! terminal shows it, and the message Bob reads is the one stored, byte for
//! byte. Then mail clients' 8-bit and binary bodies (smtplib over DATA and
//! BDAT, curl, swaks) arrive unchanged with the telnet filter on.

use std::io::Read;
use std::process::Command;
use std::sync::Arc;

use postamt_examples::{Options, Server};
use postamt_store::{MailStore, MailboxName, MemoryStore, StaticDirectory};

mod keyboard;
mod peers;

use keyboard::{Step, show, type_into};

/// A telnet client as the test runs it, and how its terminal looks.
struct Client {
    name: &'static str,
    /// The command line for a port on 127.0.0.1.
    command: fn(u16) -> Vec<String>,
    /// What it prints before the server's greeting.
    preamble: &'static str,
    /// How the line just typed is echoed: the terminal's LF in line mode
    /// (plink), CR LF from telnet's own echo.
    echo_end: &'static str,
    /// What it prints once the server has closed.
    closed: &'static str,
}

const TELNET: Client = Client {
    name: "telnet",
    command: |port| vec!["telnet".into(), "127.0.0.1".into(), port.to_string()],
    preamble: "Trying 127.0.0.1...\nConnected to 127.0.0.1.\nEscape character is '^]'.\n",
    echo_end: "\r\n",
    closed: "Connection closed by foreign host.\n",
};

const PLINK: Client = Client {
    name: "plink",
    command: |port| {
        ["plink", "-telnet", "-P", &port.to_string(), "127.0.0.1"]
            .map(String::from)
            .to_vec()
    },
    preamble: "",
    echo_end: "\n",
    closed: "",
};

fn have(client: &Client) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {}", client.name)])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        peers::missing(
            client.name,
            "Debian packages telnet and putty-tools (plink)",
        );
    }
    found && peers::python()
}

/// A line typed and answered: Enter is CR on the keyboard.
fn typed(line: &str, reply: &str) -> Step {
    (format!("{line}\r").into_bytes(), reply.as_bytes().to_vec())
}

/// The message anna types after DATA, each line ended by Enter.
const TEXT: [&str; 7] = [
    "Subject: Hallo",
    "",
    "Hallo Bob,",
    "wie geht's? Ich schreibe mit telnet.",
    "",
    "Anna",
    ".",
];

fn handout(client: &Client) {
    if !have(client) {
        return;
    }
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options::new(
        store.clone(),
        Arc::new(StaticDirectory::demo()),
    ))
    .expect("server starts on ephemeral ports");
    let smtp = (client.command)(server.smtp_addr().port());
    let smtp: Vec<&str> = smtp.iter().map(String::as_str).collect();
    let text_keys: String = TEXT.iter().map(|l| format!("{l}\r")).collect();
    let steps = [
        (Vec::new(), b"ready\r\n".to_vec()),
        typed("HELO server", "Hello server\r\n"),
        typed("MAIL FROM: anna@kolleg.de", "OK\r\n"),
        typed("RCPT TO: bob@kolleg.de", "OK\r\n"),
        typed("DATA", "<CR><LF>.<CR><LF>\r\n"),
        (text_keys.into_bytes(), b"delivery\r\n".to_vec()),
        typed("QUIT", "later\r\n"),
    ];
    let screen = type_into(&smtp, &steps, 10);
    let e = client.echo_end;
    let want = [
        format!(
            "{}220 mail.kolleg.de ESMTP postamt ready\r\n",
            client.preamble
        ),
        format!("HELO server{e}250 mail.kolleg.de Hello server\r\n"),
        format!("MAIL FROM: anna@kolleg.de{e}250 Sender OK\r\n"),
        format!("RCPT TO: bob@kolleg.de{e}250 Recipient OK\r\n"),
        format!("DATA{e}354 End data with <CR><LF>.<CR><LF>\r\n"),
        TEXT.iter().map(|l| format!("{l}{e}")).collect::<String>()
            + "250 Message accepted for delivery\r\n",
        format!("QUIT{e}221 mail.kolleg.de See you later\r\n"),
    ];
    for (got, want) in screen.steps.iter().zip(&want) {
        assert_eq!(show(got), show(want.as_bytes()), "{}", client.name);
    }
    assert_eq!(show(&screen.rest), show(client.closed.as_bytes()));

    // What was stored: the trace headers, then exactly what anna typed.
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    let stored = {
        let maildrop = store.open_maildrop(&bob).unwrap();
        assert_eq!(maildrop.messages().len(), 1);
        let mut m = Vec::new();
        maildrop
            .read_message(0)
            .unwrap()
            .read_to_end(&mut m)
            .unwrap();
        m
    };
    let typed_text =
        "Subject: Hallo\r\n\r\nHallo Bob,\r\nwie geht's? Ich schreibe mit telnet.\r\n\r\nAnna\r\n";
    let stored_text = String::from_utf8(stored.clone()).unwrap();
    assert!(
        stored_text.starts_with(
            "Return-Path: <anna@kolleg.de>\r\nReceived: from server ([127.0.0.1])\r\n\tby mail.kolleg.de (postamt) with SMTP;\r\n\t"
        ) && stored_text.ends_with(&format!(" +0000\r\n{typed_text}")),
        "{stored_text:?}"
    );

    let pop3 = (client.command)(server.pop3_addr().port());
    let pop3: Vec<&str> = pop3.iter().map(String::as_str).collect();
    let size = stored.len();
    let steps = [
        (Vec::new(), b"kolleg.de>\r\n".to_vec()),
        typed("USER bob", "PASS\r\n"),
        typed("PASS topSecret", "octets)\r\n"),
        typed("STAT", &format!("+OK 1 {size}\r\n")),
        typed("LIST", "\r\n.\r\n"),
        typed("RETR 1", &format!("{typed_text}.\r\n")),
        typed("DELE 1", "deleted\r\n"),
        typed("QUIT", "Goodbye\r\n"),
    ];
    let screen = type_into(&pop3, &steps, 10);
    let greeting = String::from_utf8_lossy(&screen.steps[0]);
    assert!(
        greeting.starts_with(&format!("{}+OK POP3 server ready <", client.preamble))
            && greeting.ends_with("@mail.kolleg.de>\r\n"),
        "{greeting:?}"
    );
    let mut retr = format!("RETR 1{e}+OK {size} octets\r\n").into_bytes();
    retr.extend_from_slice(&stored);
    retr.extend_from_slice(b".\r\n");
    let want = [
        format!("USER bob{e}+OK Now send your password with PASS\r\n").into_bytes(),
        format!("PASS topSecret{e}+OK Logged in, 1 message ({size} octets)\r\n").into_bytes(),
        format!("STAT{e}+OK 1 {size}\r\n").into_bytes(),
        format!("LIST{e}+OK 1 message ({size} octets)\r\n1 {size}\r\n.\r\n").into_bytes(),
        retr,
        format!("DELE 1{e}+OK Message deleted\r\n").into_bytes(),
        format!("QUIT{e}+OK Goodbye\r\n").into_bytes(),
    ];
    for (got, want) in screen.steps[1..].iter().zip(&want) {
        assert_eq!(show(got), show(want), "{}", client.name);
    }
    assert_eq!(show(&screen.rest), show(client.closed.as_bytes()));
    // DELE took effect at QUIT.
    assert!(store.open_maildrop(&bob).unwrap().messages().is_empty());
    server.stop();
}

#[test]
fn the_handout_typed_into_netkit_telnet() {
    handout(&TELNET);
}

#[test]
fn the_handout_typed_into_plink_telnet() {
    handout(&PLINK);
}

/// A body with every byte but CR and LF, in CRLF lines below 1000 octets,
/// and a line of what a telnet filter would act on (IAC WILL NAWS, BS, DEL,
/// IAC IAC).
fn binary_body() -> Vec<u8> {
    let mut body = b"Subject: bytes\r\n\r\n".to_vec();
    let bytes: Vec<u8> = (1..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
    for chunk in bytes.chunks(60) {
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"\xff\xfb\x1f \x08\x7f \xff\xff\r\n.\x08\r\n");
    body
}

/// smtplib sends over DATA and (with its low-level calls) BDAT, curl and
/// swaks over DATA; bob's maildrop then holds each body byte for byte.
#[test]
fn mail_clients_binary_bodies_arrive_byte_for_byte_with_the_filter_on() {
    if !peers::python() {
        return;
    }
    let swaks = Command::new("swaks").arg("--version").output().is_ok();
    if !swaks {
        peers::missing("swaks", "Debian package swaks");
        return;
    }
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options::new(
        store.clone(),
        Arc::new(StaticDirectory::demo()),
    ))
    .expect("server starts on ephemeral ports");
    let port = server.smtp_addr().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.eml");
    let body = binary_body();
    std::fs::write(&file, &body).unwrap();

    let script = r#"
import smtplib, sys
body = open(sys.argv[2], 'rb').read()
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.example', timeout=10)
s.ehlo()
print(s.sendmail('anna@kolleg.de', ['bob@kolleg.de'], body, mail_options=['BODY=8BITMIME']))
print(s.mail('anna@kolleg.de', ['BODY=8BITMIME']))
print(s.rcpt('bob@kolleg.de'))
s.putcmd('BDAT %d LAST' % len(body))
s.send(body)
print(s.getreply())
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{}\n(250, b'2.1.0 Sender OK')\n(250, b'2.1.5 Recipient OK')\n\
         (250, b'2.0.0 Message accepted for delivery')\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("smtp://127.0.0.1:{port}"))
        .args([
            "--mail-from",
            "anna@kolleg.de",
            "--mail-rcpt",
            "bob@kolleg.de",
        ])
        .arg("--upload-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // swaks takes --data as the whole DATA text, ending in its dot line.
    let swaks_data = dir.path().join("data.eml");
    std::fs::write(&swaks_data, [&body[..], b".\r\n"].concat()).unwrap();
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--helo",
            "client.example",
        ])
        .args(["--from", "anna@kolleg.de", "--to", "bob@kolleg.de"])
        .args(["--timeout", "10", "--data"])
        .arg(&swaks_data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks: {text}");
    assert!(
        text.contains("<-  250 2.0.0 Message accepted for delivery"),
        "{text}"
    );

    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    let maildrop = store.open_maildrop(&bob).unwrap();
    assert_eq!(maildrop.messages().len(), 4);
    for i in 0..4 {
        let mut m = Vec::new();
        maildrop
            .read_message(i)
            .unwrap()
            .read_to_end(&mut m)
            .unwrap();
        assert!(
            m.ends_with(&body),
            "message {i} changed in transit: {}",
            show(&m)
        );
    }
    drop(maildrop);
    server.stop();
}
