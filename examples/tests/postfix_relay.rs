//! Interop with Postfix, both ways: a private Postfix instance (its own
//! configuration, queue and mail in a temporary folder; `postfix -c DIR
//! start`, as root) is the next hop of our server for pf.example, and relays
//! everything else to our server (`relayhost = [127.0.0.1]:PORT`). Skips
//! without Postfix or root, except under CI=true.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postamt_examples::{Forwarding, Options, Server};
use postamt_store::{Directory, MailStore, MailboxName, MemoryStore, StaticDirectory};

mod peers;

const WAIT: Duration = Duration::from_secs(30);

/// A private Postfix: smtpd on a loopback port, virtual(8) delivery into
/// Maildir folders for pf.example, the rest to `relayhost`. Stopped when
/// dropped.
struct Postfix {
    config: PathBuf,
    vmail: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Postfix {
    fn start(relayhost: SocketAddr, users: &[&str]) -> Option<Self> {
        if !Path::new("/usr/sbin/postfix").exists() {
            peers::missing("postfix", "apt-get install postfix");
            return None;
        }
        let root = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&root.stdout).trim() != "0" {
            peers::missing("root", "a private Postfix instance is started as root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        // The Postfix daemons run as user postfix and pass through it.
        chmod(t, "755");
        let (config, queue, data, vmail) = (
            t.join("etc"),
            t.join("queue"),
            t.join("data"),
            t.join("vmail"),
        );
        for d in [&config, &queue, &data, &vmail] {
            std::fs::create_dir_all(d).unwrap();
        }
        chown(&vmail, "nobody:nogroup");
        chown(&data, "postfix:postfix");
        let vmailbox: String = users
            .iter()
            .map(|u| format!("{u}@pf.example {u}/\n"))
            .collect();
        std::fs::write(config.join("vmailbox"), vmailbox).unwrap();
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let port = peers::spare_port();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.pf.example
mydomain = pf.example
myorigin = pf.example
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost = [{relay_ip}]:{relay_port}
local_transport = error:local delivery is off
alias_maps =
alias_database =
virtual_mailbox_domains = pf.example
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = texthash:{config}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtp_dns_support_level = disabled
maillog_file = {t}/maillog
maillog_file_prefixes = {t}
syslog_name = postfix-postamt-test
biff = no
",
            queue = queue.display(),
            data = data.display(),
            relay_ip = relayhost.ip(),
            relay_port = relayhost.port(),
            vmail = vmail.display(),
            config = config.display(),
            uid = id("-u"),
            gid = id("-g"),
            t = t.display(),
        );
        std::fs::write(config.join("main.cf"), main_cf).unwrap();
        // chroot off (column 5 = n): a chroot needs copies of /etc files.
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
        );
        std::fs::write(config.join("master.cf"), master_cf).unwrap();
        let pf = Self {
            config,
            vmail,
            port,
            _dir: dir,
        };
        for step in ["check", "start"] {
            let out = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&pf.config)
                .arg(step)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "postfix {step}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postfix smtpd does not listen");
            thread::sleep(Duration::from_millis(50));
        }
        Some(pf)
    }

    fn hop(&self) -> postamt_relay::NextHop {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// The messages Postfix delivered to `user`@pf.example.
    fn maildir(&self, user: &str) -> Vec<String> {
        let new = self.vmail.join(user).join("new");
        let mut names: Vec<PathBuf> = std::fs::read_dir(new)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .output();
    }
}

fn chmod(path: &Path, mode: &str) {
    assert!(
        Command::new("chmod")
            .arg(mode)
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

fn chown(path: &Path, owner: &str) {
    assert!(
        Command::new("chown")
            .arg(owner)
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

/// One SMTP transaction; each reply must be positive.
fn send(addr: SocketAddr, mail: &str, rcpts: &[&str], message: &str) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    let mut reply = |w: &mut TcpStream, line: &str| -> String {
        if !line.is_empty() {
            w.write_all(line.as_bytes()).unwrap();
        }
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    assert!(reply(&mut w, "").starts_with("220 "));
    assert!(reply(&mut w, "EHLO client.pf.example\r\n").starts_with("250"));
    let got = reply(&mut w, &format!("{mail}\r\n"));
    assert!(got.starts_with("250 "), "{mail}: {got}");
    for rcpt in rcpts {
        let got = reply(&mut w, &format!("{rcpt}\r\n"));
        assert!(got.starts_with("250 "), "{rcpt}: {got}");
    }
    assert!(reply(&mut w, "DATA\r\n").starts_with("354 "));
    let got = reply(&mut w, &format!("{message}.\r\n"));
    assert!(got.starts_with("250 "), "{got}");
    assert!(reply(&mut w, "QUIT\r\n").starts_with("221 "));
}

fn messages(store: &MemoryStore, mailbox: &str) -> Vec<String> {
    let drop = store
        .open_maildrop(&MailboxName::new(mailbox).unwrap())
        .unwrap();
    (0..drop.messages().len())
        .map(|i| {
            let mut s = String::new();
            drop.read_message(i)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        })
        .collect()
}

/// Waits until one of `mailbox`'s messages contains `needle`.
fn wait_for(store: &MemoryStore, mailbox: &str, needle: &str, pf: &Postfix) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = messages(store, mailbox)
            .into_iter()
            .find(|m| m.contains(needle))
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no message with {needle:?} for {mailbox}: {:?}\npostfix log:\n{}",
            messages(store, mailbox),
            pf.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

const MESSAGE: &str = "From: anna@kolleg.de\r\nTo: carl@pf.example\r\nSubject: Hausaufgaben\r\n\r\nHallo Carl,\r\nbis morgen\r\n";

#[test]
fn postfix_as_our_next_hop_and_relaying_into_us() {
    // Our server for kolleg.de; its port must be known to Postfix first.
    let port = peers::spare_port();
    let our_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Some(pf) = Postfix::start(our_addr, &["carl"]) else {
        return;
    };
    let mut directory = StaticDirectory::new();
    directory.add_user("anna@kolleg.de", "pw", &[]).unwrap();
    let directory = Arc::new(directory);
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options {
        smtp_port: port,
        hostname: "mail.kolleg.de".into(),
        forwarding: Forwarding {
            relay_from: vec!["127.0.0.0/8".parse().unwrap()],
            routes: vec![("pf.example".into(), pf.hop())],
            local_domains: vec!["kolleg.de".into()],
            retry_after: Duration::from_secs(1),
            retry_max: Duration::from_secs(2),
            ..Forwarding::new()
        },
        ..Options::new(store.clone(), directory.clone())
    })
    .expect("server starts");
    let anna = directory.resolve("anna@kolleg.de").unwrap();
    let anna = anna.as_str();

    // 1. Postfix as next hop: carl@pf.example exists, nobody@ does not.
    // NOTIFY goes on to Postfix (it offers DSN), which reports carl's
    // delivery itself, through us, as a message from <>.
    send(
        our_addr,
        "MAIL FROM:<anna@kolleg.de> ENVID=hausaufgaben",
        &[
            "RCPT TO:<carl@pf.example> NOTIFY=SUCCESS,FAILURE",
            "RCPT TO:<nobody@pf.example>",
        ],
        MESSAGE,
    );
    let ours = wait_for(
        &store,
        anna,
        "Final-Recipient: rfc822; nobody@pf.example",
        &pf,
    );
    assert!(
        ours.contains(
            "Diagnostic-Code: smtp; 550 5.1.1 <nobody@pf.example>: Recipient address\r\n rejected: User unknown in virtual mailbox table\r\n"
        ),
        "{ours}"
    );
    assert!(ours.contains("Remote-MTA: dns; 127.0.0.1\r\n"), "{ours}");
    let deadline = Instant::now() + WAIT;
    let delivered = loop {
        if let Some(m) = pf.maildir("carl").pop() {
            break m;
        }
        assert!(Instant::now() < deadline, "postfix log:\n{}", pf.log());
        thread::sleep(Duration::from_millis(100));
    };
    // Postfix keeps the message (in LF lines), adding Message-Id and Date.
    assert!(
        delivered.contains("\nFrom: anna@kolleg.de\nTo: carl@pf.example\nSubject: Hausaufgaben\n"),
        "{delivered}"
    );
    assert!(
        delivered.ends_with("\n\nHallo Carl,\nbis morgen\n"),
        "{delivered}"
    );
    assert!(
        delivered.contains("Received: from mail.kolleg.de"),
        "{delivered}"
    );
    assert!(
        delivered.contains("by mail.pf.example (Postfix) with ESMTP"),
        "{delivered}"
    );
    assert!(
        delivered.contains("\n\tby mail.kolleg.de (postamt) with ESMTP;"),
        "{delivered}"
    );
    // Postfix's own success notice, relayed into our server.
    let theirs = wait_for(&store, anna, "Reporting-MTA: dns; mail.pf.example", &pf);
    assert!(theirs.starts_with("Return-Path: <>\r\n"), "{theirs}");
    assert!(
        theirs.contains("Original-Envelope-Id: hausaufgaben"),
        "{theirs}"
    );
    assert!(
        theirs.contains("Final-Recipient: rfc822; carl@pf.example"),
        "{theirs}"
    );
    assert!(theirs.contains("Action: delivered"), "{theirs}");

    // 2. Postfix relaying into us: mail sent to Postfix for anna goes to
    // its relayhost, our server.
    send(
        ([127, 0, 0, 1], pf.port).into(),
        "MAIL FROM:<dora@pf.example>",
        &["RCPT TO:<anna@kolleg.de>"],
        "From: dora@pf.example\r\nSubject: Gruss\r\n\r\nHallo Anna\r\n",
    );
    let via = wait_for(&store, anna, "Subject: Gruss", &pf);
    assert!(
        via.starts_with("Return-Path: <dora@pf.example>\r\n"),
        "{via}"
    );
    assert!(
        via.contains("Received: from mail.pf.example ([127.0.0.1])\r\n"),
        "{via}"
    );
    assert!(
        via.contains("by mail.pf.example (Postfix) with ESMTP"),
        "{via}"
    );
    assert!(via.ends_with("\r\n\r\nHallo Anna\r\n"), "{via}");
    assert_eq!(messages(&store, anna).len(), 3);
    server.stop();
}
