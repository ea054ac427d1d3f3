//! Forwarding over real sockets: several toy servers on loopback, each with
//! its own domain, passing mail to one another by static routes. What a
//! peer sees is checked exactly: reply lines, the message as POP3 hands it
//! out, the transactions a next hop counts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postamt_examples::{Forwarding, Options, Server};
use postamt_store::{Directory, MailStore, MailboxName, MemoryStore, StaticDirectory};

/// Longest wait for any one reply or delivery; far above what a step needs.
const WAIT: Duration = Duration::from_secs(15);

/// A trace sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// One mail server of the test network.
struct Node {
    server: Server,
    store: Arc<MemoryStore>,
    directory: Arc<StaticDirectory>,
    trace: Captured,
}

impl Node {
    /// A server for `domain` named `hostname`, with these users (password
    /// `pw`), on `port` (0: any).
    fn start(hostname: &str, domain: &str, users: &[&str], port: u16, f: Forwarding) -> Self {
        Self::start_tls(hostname, domain, users, port, f, None)
    }

    /// [`Node::start`], offering STARTTLS with `tls`.
    fn start_tls(
        hostname: &str,
        domain: &str,
        users: &[&str],
        port: u16,
        f: Forwarding,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let mut directory = StaticDirectory::new();
        for user in users {
            directory
                .add_user(&format!("{user}@{domain}"), "pw", &[])
                .unwrap();
        }
        let directory = Arc::new(directory);
        let store = Arc::new(MemoryStore::new());
        let trace = Captured::default();
        let server = Server::start(Options {
            smtp_port: port,
            tls,
            hostname: hostname.to_string(),
            trace: true,
            trace_output: Some(Box::new(trace.clone())),
            forwarding: Forwarding {
                local_domains: vec![domain.to_string()],
                ..f
            },
            ..Options::new(store.clone(), directory.clone())
        })
        .expect("server starts");
        Self {
            server,
            store,
            directory,
            trace,
        }
    }

    fn hop(&self) -> postamt_relay::NextHop {
        self.server.smtp_addr().to_string().parse().unwrap()
    }

    /// The messages in the mailbox of `address`.
    fn mailbox(&self, address: &str) -> Vec<Vec<u8>> {
        let name = self
            .directory
            .resolve(address)
            .unwrap_or_else(|| MailboxName::new(address).unwrap());
        let drop = self.store.open_maildrop(&name).unwrap();
        (0..drop.messages().len())
            .map(|i| {
                let mut bytes = Vec::new();
                drop.read_message(i)
                    .unwrap()
                    .read_to_end(&mut bytes)
                    .unwrap();
                bytes
            })
            .collect()
    }

    /// Waits until `address` has `n` messages.
    fn wait_for(&self, address: &str, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.mailbox(address);
            if got.len() >= n || Instant::now() > deadline {
                assert_eq!(got.len(), n, "{address} got {} messages", got.len());
                return got;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SMTP transactions this server took (MAIL commands it saw).
    fn transactions(&self) -> usize {
        self.trace
            .text()
            .lines()
            .filter(|l| l.starts_with("[smtp #") && l.contains(" C: MAIL FROM:"))
            .count()
    }
}

/// Routes for every domain to its node, trusted loopback.
fn trusted(routes: &[(&str, &Node)]) -> Forwarding {
    Forwarding {
        relay_from: vec!["127.0.0.0/8".parse().unwrap()],
        routes: routes
            .iter()
            .map(|(d, n)| (d.to_string(), n.hop()))
            .collect(),
        retry_after: Duration::from_millis(500),
        retry_max: Duration::from_secs(1),
        queue_lifetime: Duration::from_secs(30),
        ..Forwarding::new()
    }
}

/// Kolleg's server (anna), trusting loopback, with mail for `domain` routed
/// to `hop` and its queue in a [`MemorySpool`](postamt_store::MemorySpool)
/// the test can watch.
fn kolleg_via(
    domain: &str,
    hop: postamt_relay::NextHop,
) -> (Node, Arc<postamt_store::MemorySpool>) {
    let spool = Arc::new(postamt_store::MemorySpool::new());
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            routes: vec![(domain.into(), hop)],
            spool: spool.clone(),
            ..trusted(&[])
        },
    );
    (kolleg, spool)
}

/// A client typing lines and reading whole replies.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        Self {
            writer: tcp.try_clone().unwrap(),
            reader: BufReader::new(tcp),
        }
    }

    /// One reply, all its lines.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(line.ends_with("\r\n"), "cut reply: {all}{line:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn send(&mut self, text: &str) -> String {
        self.writer.write_all(text.as_bytes()).unwrap();
        self.reply()
    }

    /// A POP3 line.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }
}

/// Sends `message` with plain SMTP, from `from` to every one of `to`.
fn send(addr: SocketAddr, from: &str, to: &[&str], message: &str) {
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220 "));
    assert!(c.send("EHLO client.kolleg.de\r\n").starts_with("250"));
    assert_eq!(
        c.send(&format!("MAIL FROM:<{from}>\r\n")),
        "250 2.1.0 Sender OK\r\n"
    );
    for rcpt in to {
        assert_eq!(
            c.send(&format!("RCPT TO:<{rcpt}>\r\n")),
            "250 2.1.5 Recipient OK\r\n",
            "{rcpt}"
        );
    }
    assert!(c.send("DATA\r\n").starts_with("354 "));
    // Dot-stuffed, as any client sends it.
    let stuffed = message.replace("\r\n.", "\r\n..");
    let end = c.send(&format!("{stuffed}.\r\n"));
    assert!(end.starts_with("250 2.0.0 "), "{end}");
    assert!(c.send("QUIT\r\n").starts_with("221 2.0.0 "));
}

/// The message of `user` number 1, over POP3, dot-unstuffed.
fn pop3_retr(addr: SocketAddr, user: &str) -> Vec<u8> {
    let mut c = Client::connect(addr);
    assert!(c.line().starts_with("+OK"));
    c.writer
        .write_all(format!("USER {user}\r\n").as_bytes())
        .unwrap();
    assert!(c.line().starts_with("+OK"));
    c.writer.write_all(b"PASS pw\r\n").unwrap();
    assert!(c.line().starts_with("+OK"));
    c.writer.write_all(b"RETR 1\r\n").unwrap();
    assert!(c.line().starts_with("+OK"));
    let mut message = Vec::new();
    loop {
        let line = c.line();
        if line == ".\r\n" {
            break;
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        message.extend_from_slice(line.as_bytes());
    }
    c.writer.write_all(b"QUIT\r\n").unwrap();
    message
}

/// The header lines of a message that start with `name`.
fn fields<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = &message[..message.find("\r\n\r\n").unwrap()];
    head.split("\r\n").filter(|l| l.starts_with(name)).collect()
}

const MESSAGE: &str = "From: anna@kolleg.de\r\nTo: carl@schule.example\r\nSubject: Hausaufgaben\r\n\r\nHallo Carl,\r\n.punkt am Zeilenanfang\r\nbis morgen\r\n";

#[test]
fn anna_writes_to_carl_through_her_server_and_carl_fetches_it_by_pop3() {
    let schule = Node::start(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        0,
        Forwarding::new(),
    );
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        trusted(&[("schule.example", &schule)]),
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example"],
        MESSAGE,
    );
    schule.wait_for("carl@schule.example", 1);
    let got = String::from_utf8(pop3_retr(schule.server.pop3_addr(), "carl")).unwrap();
    // Byte for byte: the last server's Return-Path and Received, the first
    // server's Received, then the message as anna sent it.
    assert!(got.ends_with(MESSAGE), "{got}");
    let added = &got[..got.len() - MESSAGE.len()];
    let lines: Vec<&str> = added.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 7, "{added}");
    assert_eq!(lines[0], "Return-Path: <anna@kolleg.de>");
    assert_eq!(lines[1], "Received: from mail.kolleg.de ([127.0.0.1])");
    assert_eq!(lines[2], "\tby mx.schule.example (postamt) with ESMTP;");
    assert!(
        lines[3].starts_with('\t') && lines[3].ends_with(" +0000"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4], "Received: from client.kolleg.de ([127.0.0.1])");
    assert_eq!(lines[5], "\tby mail.kolleg.de (postamt) with ESMTP;");
    assert!(
        lines[6].starts_with('\t') && lines[6].ends_with(" +0000"),
        "{}",
        lines[6]
    );
    assert_eq!(fields(&got, "Received:").len(), 2);
    // The outbound session is traced with its own connection id, one no
    // inbound session of this server has.
    let trace = kolleg.trace.text();
    let ids = |prefix: &str| -> Vec<String> {
        let mut ids: Vec<String> = trace
            .lines()
            .filter_map(|l| l.strip_prefix(prefix)?.split(']').next().map(str::to_owned))
            .collect();
        ids.dedup();
        ids
    };
    let (outbound, inbound) = (ids("[smtp-out #"), ids("[smtp #"));
    assert_eq!(outbound.len(), 1, "{trace}");
    assert!(
        !inbound.is_empty() && !inbound.contains(&outbound[0]),
        "{trace}"
    );
    assert!(
        trace.contains(" C: RCPT TO:<carl@schule.example>"),
        "{trace}"
    );
    assert!(trace.contains(" S: 250 2.0.0 "), "{trace}");
    kolleg.server.stop();
    schule.server.stop();
}

/// The handout's dialogue, typed as it stands there.
fn handout(addr: SocketAddr) -> Vec<String> {
    let mut c = Client::connect(addr);
    let mut replies = vec![c.reply()];
    replies.push(c.send("HELO kolleg.de\r\n"));
    replies.push(c.send("MAIL FROM: bar@example.org\r\n"));
    let rcpt = c.send("RCPT TO: foo@example.com\r\n");
    let accepted = rcpt.starts_with("250");
    replies.push(rcpt);
    if accepted {
        replies.push(c.send("DATA\r\n"));
        replies.push(c.send("Subject: Test\r\n\r\nHallo foo\r\n.\r\n"));
    }
    replies.push(c.send("QUIT\r\n"));
    replies
}

#[test]
fn the_handout_dialogue_is_relayed_from_a_trusted_network_only() {
    let example = Node::start(
        "mail.example.com",
        "example.com",
        &["foo"],
        0,
        Forwarding::new(),
    );
    let relay = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        trusted(&[("example.com", &example)]),
    );
    let replies = handout(relay.server.smtp_addr());
    assert_eq!(replies[1], "250 mail.kolleg.de Hello kolleg.de\r\n");
    assert_eq!(replies[2], "250 Sender OK\r\n");
    assert_eq!(replies[3], "250 Recipient OK\r\n");
    assert!(replies[4].starts_with("354 "), "{}", replies[4]);
    assert!(replies[5].starts_with("250 "), "{}", replies[5]);
    let got = example.wait_for("foo@example.com", 1);
    let got = String::from_utf8(got[0].clone()).unwrap();
    assert!(
        got.starts_with("Return-Path: <bar@example.org>\r\n"),
        "{got}"
    );
    assert!(
        got.ends_with("\r\nSubject: Test\r\n\r\nHallo foo\r\n"),
        "{got}"
    );

    // The same server for a client outside its networks: no open relay.
    let closed = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            relay_from: vec!["10.0.0.0/8".parse().unwrap()],
            ..trusted(&[("example.com", &example)])
        },
    );
    let replies = handout(closed.server.smtp_addr());
    assert_eq!(replies[3], "550 Relaying denied\r\n");
    assert!(replies[4].starts_with("221 "), "{}", replies[4]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(example.mailbox("foo@example.com").len(), 1);
    closed.server.stop();
    relay.server.stop();
    example.server.stop();
}

#[test]
fn a_next_hop_that_is_down_gets_the_message_when_it_comes_up() {
    // A port nobody listens on yet.
    // Below the ephemeral range: no server of another test can take it.
    let port = peers::spare_port();
    let hop: postamt_relay::NextHop = format!("127.0.0.1:{port}").parse().unwrap();
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            routes: vec![("schule.example".into(), hop)],
            ..trusted(&[])
        },
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example"],
        MESSAGE,
    );
    // Refused connections: deferred, tried again.
    let deadline = Instant::now() + WAIT;
    while kolleg.trace.text().matches("cannot connect").count() < 2 {
        assert!(Instant::now() < deadline, "{}", kolleg.trace.text());
        thread::sleep(Duration::from_millis(50));
    }
    let schule = Node::start(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        port,
        Forwarding::new(),
    );
    let got = schule.wait_for("carl@schule.example", 1);
    assert!(got[0].ends_with(MESSAGE.as_bytes()));
    // No notice: a delay is not a failure.
    assert!(kolleg.mailbox("anna@kolleg.de").is_empty());
    kolleg.server.stop();
    schule.server.stop();
}

#[test]
fn a_refused_recipient_gets_anna_a_notice_quoting_the_reply() {
    let schule = Node::start(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        0,
        Forwarding::new(),
    );
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        trusted(&[("schule.example", &schule)]),
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example", "nobody@schule.example"],
        MESSAGE,
    );
    let carl = schule.wait_for("carl@schule.example", 1);
    assert!(carl[0].ends_with(MESSAGE.as_bytes()));
    let notices = kolleg.wait_for("anna@kolleg.de", 1);
    let notice = String::from_utf8(notices[0].clone()).unwrap();
    assert!(notice.starts_with("Return-Path: <>\r\n"), "{notice}");
    assert!(notice.contains("multipart/report"), "{notice}");
    assert!(
        notice.contains("Final-Recipient: rfc822; nobody@schule.example\r\n"),
        "{notice}"
    );
    assert!(
        notice.contains("Action: failed\r\nStatus: 5.1.1\r\n"),
        "{notice}"
    );
    assert!(
        notice.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user here\r\n"),
        "{notice}"
    );
    assert!(
        !notice.contains("Final-Recipient: rfc822; carl@"),
        "{notice}"
    );
    // One transaction carried both recipients.
    assert_eq!(schule.transactions(), 1);
    kolleg.server.stop();
    schule.server.stop();
}

#[test]
fn recipients_on_one_host_travel_together() {
    let schule = Node::start(
        "mx.schule.example",
        "schule.example",
        &["carl", "dora"],
        0,
        Forwarding::new(),
    );
    let other = Node::start(
        "mx.other.example",
        "other.example",
        &["emil"],
        0,
        Forwarding::new(),
    );
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna", "bob"],
        0,
        trusted(&[("schule.example", &schule), ("other.example", &other)]),
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &[
            "carl@schule.example",
            "emil@other.example",
            "dora@schule.example",
            "bob@kolleg.de",
        ],
        MESSAGE,
    );
    for (node, who) in [
        (&schule, "carl@schule.example"),
        (&schule, "dora@schule.example"),
        (&other, "emil@other.example"),
        (&kolleg, "bob@kolleg.de"),
    ] {
        let got = node.wait_for(who, 1);
        assert!(got[0].ends_with(MESSAGE.as_bytes()), "{who}");
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(schule.transactions(), 1, "{}", schule.trace.text());
    assert_eq!(other.transactions(), 1, "{}", other.trace.text());
    for (node, who) in [
        (&schule, "carl@schule.example"),
        (&schule, "dora@schule.example"),
        (&other, "emil@other.example"),
    ] {
        assert_eq!(node.mailbox(who).len(), 1, "{who}");
    }
    assert!(kolleg.mailbox("anna@kolleg.de").is_empty());
    kolleg.server.stop();
    schule.server.stop();
    other.server.stop();
}

#[test]
fn a_message_past_fifty_hops_is_refused() {
    let kolleg = Node::start("mail.kolleg.de", "kolleg.de", &["anna"], 0, trusted(&[]));
    let mut c = Client::connect(kolleg.server.smtp_addr());
    c.reply();
    c.send("EHLO client.kolleg.de\r\n");
    c.send("MAIL FROM:<x@elsewhere.example>\r\n");
    assert_eq!(
        c.send("RCPT TO:<anna@kolleg.de>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    c.send("DATA\r\n");
    let received = "Received: from a by b; Tue, 1 Dec 2026 20:00:00 +0000\r\n".repeat(51);
    assert_eq!(
        c.send(&format!(
            "{received}Subject: loop\r\n\r\nround and round\r\n.\r\n"
        )),
        "554 5.4.6 Too many hops: routing loop detected\r\n"
    );
    // Fifty are still fine.
    c.send("MAIL FROM:<x@elsewhere.example>\r\n");
    c.send("RCPT TO:<anna@kolleg.de>\r\n");
    c.send("DATA\r\n");
    let received = "Received: from a by b; Tue, 1 Dec 2026 20:00:00 +0000\r\n".repeat(50);
    let end = c.send(&format!("{received}Subject: long way\r\n\r\nhere\r\n.\r\n"));
    assert!(end.starts_with("250 2.0.0 "), "{end}");
    assert_eq!(kolleg.mailbox("anna@kolleg.de").len(), 1);
    kolleg.server.stop();
}

mod peers;

/// A dnsmasq on a loopback port, stopped when dropped.
struct Dnsmasq {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// Serves `records` (dnsmasq options) for the `local` domains only.
    fn start(local: &[&str], records: &[String]) -> Option<Self> {
        let program = "/usr/sbin/dnsmasq";
        if !std::path::Path::new(program).exists() {
            peers::missing(
                "dnsmasq",
                "the MX tests ask it; apt-get install dnsmasq-base",
            );
            return None;
        }
        // dnsmasq listens on UDP and TCP on this number.
        let port = peers::spare_port();
        let mut cmd = std::process::Command::new(program);
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            &format!("--port={port}"),
        ]);
        for domain in local {
            cmd.arg(format!("--local=/{domain}/"));
        }
        cmd.args(records)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = cmd.spawn().expect("dnsmasq starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Up when it answers on TCP.
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not come up");
            thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, addr })
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mail_goes_to_the_mx_host_dns_names_and_a_null_mx_bounces() {
    let schule = Node::start(
        "mx1.schule.example",
        "schule.example",
        &["carl"],
        0,
        Forwarding::new(),
    );
    let Some(dns) = Dnsmasq::start(
        &["schule.example", "nullmx.example"],
        &[
            // The better MX does not exist, so the second one is used.
            "--mx-host=schule.example,mx0.schule.example,5".into(),
            "--mx-host=schule.example,mx1.schule.example,10".into(),
            "--host-record=mx1.schule.example,127.0.0.1".into(),
            // RFC 7505: preference 0, the root as exchange.
            "--dns-rr=nullmx.example,15,000000".into(),
        ],
    ) else {
        return;
    };
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            dns: Some(dns.addr),
            relay_port: schule.server.smtp_addr().port(),
            ..trusted(&[])
        },
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example", "niemand@nullmx.example"],
        MESSAGE,
    );
    let got = schule.wait_for("carl@schule.example", 1);
    assert!(got[0].ends_with(MESSAGE.as_bytes()));
    let notice = kolleg.wait_for("anna@kolleg.de", 1);
    let notice = String::from_utf8(notice[0].clone()).unwrap();
    assert!(
        notice.contains("Final-Recipient: rfc822; niemand@nullmx.example\r\n"),
        "{notice}"
    );
    assert!(notice.contains("Status: 5.1.10\r\n"), "{notice}");
    assert!(notice.contains("556 5.1.10"), "{notice}");
    assert!(
        !notice.contains("Final-Recipient: rfc822; carl@"),
        "{notice}"
    );
    kolleg.server.stop();
    schule.server.stop();
}

#[test]
fn starttls_is_used_when_the_next_hop_offers_it() {
    let tls = postamt_examples::tls::self_signed("mx.schule.example").unwrap();
    let schule = Node::start_tls(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        0,
        Forwarding::new(),
        Some(tls),
    );
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        trusted(&[("schule.example", &schule)]),
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example"],
        MESSAGE,
    );
    let got = schule.wait_for("carl@schule.example", 1);
    let got = String::from_utf8(got[0].clone()).unwrap();
    assert!(
        got.contains("\r\n\tby mx.schule.example (postamt) with ESMTPS;\r\n"),
        "{got}"
    );
    let trace = kolleg.trace.text();
    assert!(trace.contains(" C: STARTTLS"), "{trace}");
    assert!(trace.contains("TLS established"), "{trace}");
    kolleg.server.stop();
    schule.server.stop();
}

/// A spool whose commit fails while `fail` is set, as a full disk would.
struct FailingSpool {
    inner: postamt_store::MemorySpool,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

fn disk_full() -> postamt_store::StoreError {
    postamt_store::StoreError::Io {
        action: "sync",
        path: "/var/spool/simulated".into(),
        source: std::io::Error::from_raw_os_error(28),
    }
}

impl postamt_store::Spool for FailingSpool {
    fn begin(&self) -> Result<Box<dyn postamt_store::SpoolWriter>, postamt_store::StoreError> {
        Ok(Box::new(FailingWriter {
            inner: self.inner.begin()?,
            fail: self.fail.clone(),
        }))
    }
    fn list(&self) -> Result<Vec<postamt_store::SpoolEntry>, postamt_store::StoreError> {
        self.inner.list()
    }
    fn read(
        &self,
        id: &postamt_store::SpoolId,
    ) -> Result<Box<dyn Read + Send>, postamt_store::StoreError> {
        self.inner.read(id)
    }
    fn update(
        &self,
        id: &postamt_store::SpoolId,
        record: &[u8],
    ) -> Result<(), postamt_store::StoreError> {
        self.inner.update(id, record)
    }
    fn remove(&self, id: &postamt_store::SpoolId) -> Result<(), postamt_store::StoreError> {
        self.inner.remove(id)
    }
}

struct FailingWriter {
    inner: Box<dyn postamt_store::SpoolWriter>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl postamt_store::SpoolWriter for FailingWriter {
    fn id(&self) -> &postamt_store::SpoolId {
        self.inner.id()
    }
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), postamt_store::StoreError> {
        self.inner.write_chunk(chunk)
    }
    fn commit(self: Box<Self>, record: &[u8]) -> Result<(), postamt_store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.commit(record)
    }
}

/// A store whose deliveries fail to commit while `fail` is set.
struct FailingStore {
    inner: MemoryStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

struct FailingDelivery {
    inner: Box<dyn postamt_store::Delivery>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl postamt_store::Delivery for FailingDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), postamt_store::StoreError> {
        self.inner.write_chunk(chunk)
    }
    fn commit(self: Box<Self>) -> Result<(), postamt_store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.commit()
    }
}

impl MailStore for FailingStore {
    fn begin_delivery(
        &self,
        recipients: &[MailboxName],
    ) -> Result<Box<dyn postamt_store::Delivery>, postamt_store::StoreError> {
        Ok(Box::new(FailingDelivery {
            inner: self.inner.begin_delivery(recipients)?,
            fail: self.fail.clone(),
        }))
    }
    fn open_maildrop(
        &self,
        mailbox: &MailboxName,
    ) -> Result<Box<dyn postamt_store::Maildrop>, postamt_store::StoreError> {
        self.inner.open_maildrop(mailbox)
    }
}

/// One transaction to a local and a foreign recipient; the final reply.
fn local_and_foreign(addr: SocketAddr) -> String {
    let mut c = Client::connect(addr);
    c.reply();
    c.send("EHLO client.kolleg.de\r\n");
    c.send("MAIL FROM:<anna@kolleg.de>\r\n");
    assert_eq!(
        c.send("RCPT TO:<bob@kolleg.de>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        c.send("RCPT TO:<carl@schule.example>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    c.send("DATA\r\n");
    c.send("Subject: both\r\n\r\nfor bob and carl\r\n.\r\n")
}

#[test]
fn the_250_comes_only_when_queue_and_mailbox_both_have_the_message() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let spool_fails = Arc::new(AtomicBool::new(true));
    let store_fails = Arc::new(AtomicBool::new(false));
    let spool = Arc::new(FailingSpool {
        inner: postamt_store::MemorySpool::new(),
        fail: spool_fails.clone(),
    });
    let store = Arc::new(FailingStore {
        inner: MemoryStore::new(),
        fail: store_fails.clone(),
    });
    let server = Server::start(Options {
        forwarding: Forwarding {
            relay_from: vec!["127.0.0.0/8".parse().unwrap()],
            // Nobody listens there: a queued message stays queued.
            relay_host: Some("127.0.0.1:9".parse().unwrap()),
            spool: spool.clone(),
            ..Forwarding::new()
        },
        ..Options::new(store.clone(), Arc::new(StaticDirectory::demo()))
    })
    .unwrap();
    let bob = StaticDirectory::demo().resolve("bob@kolleg.de").unwrap();
    let bobs = || store.inner.open_maildrop(&bob).unwrap().messages().len();
    let queued = || postamt_store::Spool::list(&*spool).unwrap().len();

    // The queue cannot take it: bob does not get it either.
    let end = local_and_foreign(server.smtp_addr());
    assert!(end.starts_with("451 4.3.0 "), "{end}");
    assert_eq!((bobs(), queued()), (0, 0));

    // Bob's mailbox cannot take it: the queue entry is taken back.
    spool_fails.store(false, Ordering::SeqCst);
    store_fails.store(true, Ordering::SeqCst);
    let end = local_and_foreign(server.smtp_addr());
    assert!(end.starts_with("451 4.3.0 "), "{end}");
    assert_eq!((bobs(), queued()), (0, 0));

    // Both take it: 250, one copy each.
    store_fails.store(false, Ordering::SeqCst);
    let end = local_and_foreign(server.smtp_addr());
    assert!(end.starts_with("250 2.0.0 "), "{end}");
    assert_eq!((bobs(), queued()), (1, 1));
    server.stop();
}

#[test]
fn a_route_back_to_this_server_fails_instead_of_looping() {
    // Below the ephemeral range: no server of another test can take it.
    let port = peers::spare_port();
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        port,
        Forwarding {
            routes: vec![(
                "schule.example".into(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            )],
            ..trusted(&[])
        },
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example"],
        MESSAGE,
    );
    let notice = kolleg.wait_for("anna@kolleg.de", 1);
    let notice = String::from_utf8(notice[0].clone()).unwrap();
    assert!(notice.contains("Status: 5.4.6\r\n"), "{notice}");
    assert!(notice.contains("greets as mail.kolleg.de"), "{notice}");
    // It said QUIT at once: one connection to itself, no transaction.
    assert_eq!(kolleg.transactions(), 1, "only anna's own");
    kolleg.server.stop();
}

/// A next hop that answers every RCPT with `451`; counts its transactions
/// (MAIL commands: retries may share a connection).
fn always_451() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sessions.clone();
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let counted = counted.clone();
            thread::spawn(move || {
                let mut w = tcp.try_clone().unwrap();
                let mut r = BufReader::new(tcp);
                let _ = w.write_all(b"220 busy.example ESMTP\r\n");
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-busy.example\r\n250 ENHANCEDSTATUSCODES\r\n",
                        "MAIL" => {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            b"250 2.1.0 ok\r\n"
                        }
                        "RCPT" => b"451 4.3.0 Try again later\r\n",
                        "RSET" => b"250 2.0.0 ok\r\n",
                        "QUIT" => b"221 2.0.0 bye\r\n",
                        _ => b"503 5.5.1 no\r\n",
                    };
                    let _ = w.write_all(answer);
                    if verb == "QUIT" {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, sessions)
}

#[test]
fn a_next_hop_that_defers_forever_fails_at_the_end_of_the_lifetime() {
    let (addr, transactions) = always_451();
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            routes: vec![("busy.example".into(), addr.to_string().parse().unwrap())],
            queue_lifetime: Duration::from_secs(3),
            ..trusted(&[])
        },
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["niemand@busy.example"],
        MESSAGE,
    );
    let notice = kolleg.wait_for("anna@kolleg.de", 1);
    let notice = String::from_utf8(notice[0].clone()).unwrap();
    assert!(
        notice.contains("Final-Recipient: rfc822; niemand@busy.example\r\n"),
        "{notice}"
    );
    assert!(notice.contains("Action: failed\r\n"), "{notice}");
    assert!(
        notice.contains("Diagnostic-Code: smtp; 451 4.3.0 Try again later\r\n"),
        "{notice}"
    );
    // Tried again and again in between (retries after 0.5 s, then 1 s).
    let tries = transactions.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tries >= 3, "{tries} transactions");
    kolleg.server.stop();
}

#[test]
fn a_large_message_is_passed_on_whole() {
    let schule = Node::start(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        0,
        Forwarding::new(),
    );
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        trusted(&[("schule.example", &schule)]),
    );
    // 2 MiB: far more than the client session buffers before writing.
    let mut big = String::from("Subject: big\r\n\r\n");
    let mut n = 0;
    while big.len() < 2 << 20 {
        big.push_str(&format!(
            "{n:08} the quick brown fox jumps over the lazy dog\r\n"
        ));
        n += 1;
    }
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &["carl@schule.example"],
        &big,
    );
    let got = schule.wait_for("carl@schule.example", 1);
    assert!(got[0].ends_with(big.as_bytes()), "{} octets", got[0].len());
    kolleg.server.stop();
    schule.server.stop();
}

/// Sends one transaction with these exact MAIL and RCPT commands (their
/// parameters as given); every reply must be positive.
fn send_raw(addr: SocketAddr, mail: &str, rcpts: &[&str], message: &str) {
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220 "));
    assert!(c.send("EHLO client.kolleg.de\r\n").starts_with("250"));
    let reply = c.send(&format!("{mail}\r\n"));
    assert!(reply.starts_with("250 "), "{mail}: {reply}");
    for rcpt in rcpts {
        let reply = c.send(&format!("{rcpt}\r\n"));
        assert!(reply.starts_with("250 "), "{rcpt}: {reply}");
    }
    assert!(c.send("DATA\r\n").starts_with("354 "));
    let end = c.send(&format!("{message}.\r\n"));
    assert!(end.starts_with("250 2.0.0 "), "{end}");
    assert!(c.send("QUIT\r\n").starts_with("221 2.0.0 "));
}

/// A next hop run by the test: greets, answers EHLO with `ehlo` (the
/// capability lines after the name, each ending in CRLF), every RCPT with
/// `rcpt`, takes the message, and records every command line it got, by
/// session.
struct Scripted {
    addr: SocketAddr,
    sessions: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Scripted {
    fn start(ehlo: &'static str, rcpt: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let all = sessions.clone();
        thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let all = all.clone();
                thread::spawn(move || {
                    let n = {
                        let mut all = all.lock().unwrap();
                        all.push(Vec::new());
                        all.len() - 1
                    };
                    let mut w = tcp.try_clone().unwrap();
                    let mut r = BufReader::new(tcp);
                    let _ = w.write_all(b"220 hop.example ESMTP\r\n");
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|k| k > 0) {
                        all.lock().unwrap()[n].push(line.clone());
                        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                        let answer = match verb.as_str() {
                            "EHLO" => format!("250-hop.example\r\n{ehlo}250 8BITMIME\r\n"),
                            "MAIL" => "250 2.1.0 ok\r\n".into(),
                            "RCPT" => format!("{rcpt}\r\n"),
                            "DATA" => {
                                let _ = w.write_all(b"354 go on\r\n");
                                let mut body = String::new();
                                while r.read_line(&mut body).is_ok_and(|k| k > 0)
                                    && !body.ends_with("\r\n.\r\n")
                                {
                                }
                                "250 2.0.0 queued as X1\r\n".into()
                            }
                            "QUIT" => "221 2.0.0 bye\r\n".into(),
                            "RSET" => "250 2.0.0 ok\r\n".into(),
                            _ => "502 5.5.1 no\r\n".into(),
                        };
                        let _ = w.write_all(answer.as_bytes());
                        if verb == "QUIT" {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        Self { addr, sessions }
    }

    fn hop(&self) -> postamt_relay::NextHop {
        self.addr.to_string().parse().unwrap()
    }

    /// The MAIL and RCPT lines of every session, in order.
    fn envelopes(&self) -> Vec<Vec<String>> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                s.iter()
                    .filter(|l| l.starts_with("MAIL") || l.starts_with("RCPT"))
                    .cloned()
                    .collect()
            })
            .collect()
    }
}

/// Waits until the queue has nothing left.
fn wait_until_empty(spool: &postamt_store::MemorySpool) {
    use postamt_store::Spool;
    let deadline = Instant::now() + WAIT;
    while !spool.list().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the queue did not empty");
        thread::sleep(Duration::from_millis(50));
    }
}

const DSN_MAIL: &str = "MAIL FROM:<anna@kolleg.de> RET=HDRS ENVID=anna+2B1";
const DSN_RCPT: &str =
    "RCPT TO:<carl@dsn.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;carl@dsn.example";

#[test]
fn dsn_parameters_go_on_to_a_next_hop_that_offers_dsn_and_it_reports() {
    let hop = Scripted::start("250-DSN\r\n250-SIZE 1000000\r\n", "250 2.1.5 ok");
    let (kolleg, spool) = kolleg_via("dsn.example", hop.hop());
    send_raw(kolleg.server.smtp_addr(), DSN_MAIL, &[DSN_RCPT], MESSAGE);
    wait_until_empty(&spool);
    // SIZE= is the queued message: anna's plus our Received: header.
    let mut envelopes = hop.envelopes();
    let size: usize = envelopes[0][0]
        .strip_prefix("MAIL FROM:<anna@kolleg.de> SIZE=")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{envelopes:?}"));
    assert!(
        (MESSAGE.len() + 60..MESSAGE.len() + 200).contains(&size),
        "{size}"
    );
    envelopes[0][0] = envelopes[0][0].replace(&format!(" SIZE={size}"), "");
    assert_eq!(
        envelopes,
        [[
            "MAIL FROM:<anna@kolleg.de> RET=HDRS ENVID=anna+2B1\r\n",
            "RCPT TO:<carl@dsn.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;carl@dsn.example\r\n",
        ]]
    );
    // The next hop reports success itself: no notice from us.
    assert!(kolleg.mailbox("anna@kolleg.de").is_empty());
    kolleg.server.stop();
}

#[test]
fn notify_success_gets_a_relayed_notice_when_the_next_hop_has_no_dsn() {
    let hop = Scripted::start("", "250 2.1.5 ok");
    let (kolleg, _) = kolleg_via("dsn.example", hop.hop());
    send_raw(kolleg.server.smtp_addr(), DSN_MAIL, &[DSN_RCPT], MESSAGE);
    let notice = kolleg.wait_for("anna@kolleg.de", 1);
    let notice = String::from_utf8(notice[0].clone()).unwrap();
    // Neither RET/ENVID nor NOTIFY/ORCPT went to a host without DSN.
    assert_eq!(
        hop.envelopes(),
        [[
            "MAIL FROM:<anna@kolleg.de>\r\n",
            "RCPT TO:<carl@dsn.example>\r\n"
        ]]
    );
    assert!(
        notice.contains("Subject: Successful Mail Delivery Report\r\n"),
        "{notice}"
    );
    assert!(
        notice.contains("Original-Envelope-Id: anna+1\r\n"),
        "{notice}"
    );
    assert!(
        notice.contains(
            "Final-Recipient: rfc822; carl@dsn.example\r\nOriginal-Recipient: rfc822; carl@dsn.example\r\nAction: relayed\r\nStatus: 2.0.0\r\n"
        ),
        "{notice}"
    );
    assert!(
        notice.contains("Diagnostic-Code: smtp; 250 2.0.0 queued as X1\r\n"),
        "{notice}"
    );
    kolleg.server.stop();
}

#[test]
fn notify_never_gets_no_notice_and_a_bounce_never_bounces_to_its_sender() {
    let hop = Scripted::start("", "550 5.1.1 No such user");
    let (kolleg, spool) = kolleg_via("far.example", hop.hop());
    send_raw(
        kolleg.server.smtp_addr(),
        "MAIL FROM:<anna@kolleg.de>",
        &["RCPT TO:<niemand@far.example> NOTIFY=NEVER"],
        MESSAGE,
    );
    wait_until_empty(&spool);
    assert_eq!(hop.envelopes().len(), 1);
    assert!(kolleg.mailbox("anna@kolleg.de").is_empty());
    assert!(
        kolleg
            .mailbox(postamt_examples::POSTMASTER_MAILBOX)
            .is_empty()
    );
    kolleg.server.stop();
}

#[test]
fn a_bounce_that_cannot_be_delivered_goes_to_the_postmaster() {
    // bob@far.example relays through kolleg (a trusted network) to a
    // recipient at far.example that does not exist; his bounce goes back
    // to far.example, which refuses it too.
    let hop = Scripted::start("", "550 5.1.1 No such user");
    let (kolleg, spool) = kolleg_via("far.example", hop.hop());
    send(
        kolleg.server.smtp_addr(),
        "bob@far.example",
        &["niemand@far.example"],
        MESSAGE,
    );
    let got = kolleg.wait_for(postamt_examples::POSTMASTER_MAILBOX, 1);
    wait_until_empty(&spool);
    // The bounce takes the connection the message went over (idle
    // connections are reused).
    let envelopes = hop.envelopes();
    assert_eq!(
        envelopes,
        [[
            "MAIL FROM:<bob@far.example>\r\n",
            "RCPT TO:<niemand@far.example>\r\n",
            "MAIL FROM:<>\r\n",
            "RCPT TO:<bob@far.example>\r\n",
        ]]
    );
    let text = String::from_utf8(got[0].clone()).unwrap();
    assert!(text.starts_with("Return-Path: <>\r\n"), "{text}");
    assert!(
        text.contains("To: <postmaster@mail.kolleg.de>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Subject: Undeliverable Mail Delivery Notice\r\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; bob@far.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n"),
        "{text}"
    );
    // The bounce that failed is attached whole, and it quotes bob's failure.
    assert!(
        text.contains("Subject: Undelivered Mail Returned to Sender\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; niemand@far.example\r\n"),
        "{text}"
    );
    // Exactly one: the double bounce itself is never queued or bounced.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        kolleg.mailbox(postamt_examples::POSTMASTER_MAILBOX).len(),
        1
    );
    let mails = hop.envelopes().concat();
    assert_eq!(mails.iter().filter(|l| l.starts_with("MAIL")).count(), 2);
    kolleg.server.stop();
}

#[test]
fn smtputf8_to_a_next_hop_without_it_fails_with_5_6_7() {
    let hop = Scripted::start("", "250 2.1.5 ok");
    let (kolleg, _) = kolleg_via("far.example", hop.hop());
    send_raw(
        kolleg.server.smtp_addr(),
        "MAIL FROM:<anna@kolleg.de> SMTPUTF8",
        &["RCPT TO:<jörg@far.example>"],
        "Subject: Grüße\r\n\r\nHallo Jörg\r\n",
    );
    let notice = kolleg.wait_for("anna@kolleg.de", 1);
    let notice = String::from_utf8(notice[0].clone()).unwrap();
    assert!(
        notice.contains(
            "Final-Recipient: utf-8; jörg@far.example\r\nAction: failed\r\nStatus: 5.6.7\r\n"
        ),
        "{notice}"
    );
    assert!(
        notice.contains("Content-Type: message/global-delivery-status"),
        "{notice}"
    );
    // The host was asked EHLO, then told QUIT: no MAIL without SMTPUTF8.
    assert_eq!(hop.envelopes(), [Vec::<String>::new()]);
    kolleg.server.stop();
}

#[test]
fn a_delay_notice_comes_after_the_delay_warning_then_the_failure() {
    let (addr, _) = always_451();
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            routes: vec![("busy.example".into(), addr.to_string().parse().unwrap())],
            delay_warning: Duration::from_secs(1),
            queue_lifetime: Duration::from_secs(4),
            ..trusted(&[])
        },
    );
    send_raw(
        kolleg.server.smtp_addr(),
        "MAIL FROM:<anna@kolleg.de>",
        &["RCPT TO:<niemand@busy.example> NOTIFY=DELAY,FAILURE"],
        MESSAGE,
    );
    let delay = kolleg.wait_for("anna@kolleg.de", 1);
    let delay = String::from_utf8(delay[0].clone()).unwrap();
    assert!(
        delay.contains("Subject: Delayed Mail (still being retried)\r\n"),
        "{delay}"
    );
    assert!(
        delay.contains("Action: delayed\r\nStatus: 4.3.0\r\n"),
        "{delay}"
    );
    assert!(delay.contains("Will-Retry-Until: "), "{delay}");
    let both = kolleg.wait_for("anna@kolleg.de", 2);
    let failure = String::from_utf8(both[1].clone()).unwrap();
    assert!(
        failure.contains("Action: failed\r\nStatus: 4.3.0\r\n"),
        "{failure}"
    );
    assert!(
        failure.contains("Diagnostic-Code: smtp; 451 4.3.0 Try again later\r\n"),
        "{failure}"
    );
    kolleg.server.stop();
}

/// The built toy-server example, next to the test binaries.
fn toy_server() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join("toy-server");
    if path.exists() {
        return Some(path);
    }
    peers::missing(
        "the toy-server example",
        "run `cargo test --workspace` or build it with `cargo build --examples`",
    );
    None
}

/// Runs `toy-server ARGS` to its end: exit status, stdout, stderr.
fn toy(binary: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binary)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn queue_flush_makes_the_running_server_retry_now() {
    let Some(binary) = toy_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("mail");
    let maildir = maildir.to_str().unwrap();
    // schule's server is down at first; its port is known in advance.
    let schule_port = peers::spare_port();
    let route = format!("schule.example=127.0.0.1:{schule_port}");
    let mut child = std::process::Command::new(&binary)
        .args(["--maildir", maildir, "--smtp-port", "0", "--pop3-port", "0"])
        .args(["--relay-from", "127.0.0.0/8", "--route", &route])
        // Without the flush, the next attempt would be an hour away.
        .args(["--retry-after", "1h", "--retry-max", "1h"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = BufReader::new(child.stdout.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(banner.read_line(&mut line).unwrap() > 0, "no banner");
        if let Some(p) = line.trim().strip_prefix("SMTP  telnet 127.0.0.1 ") {
            break p.parse::<u16>().unwrap();
        }
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    send(addr, "anna@kolleg.de", &["carl@schule.example"], MESSAGE);

    // The first attempt fails; `queue` shows the deferred recipient.
    let deadline = Instant::now() + WAIT;
    let listing = loop {
        let (ok, out, err) = toy(&binary, &["queue", "--maildir", maildir]);
        assert!(ok, "{err}");
        if out.contains("deferred") {
            break out;
        }
        assert!(Instant::now() < deadline, "never deferred: {out}");
        thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines[0].contains(" octets  from <anna@kolleg.de>  arrived "),
        "{listing}"
    );
    assert!(
        lines[1].starts_with("  carl@schule.example  deferred, 1 attempt(s), next "),
        "{listing}"
    );
    assert!(
        lines[1].contains(&format!(
            "; last reply: 451 4.4.1 Connect to 127.0.0.1 failed: 127.0.0.1:{schule_port}: "
        )),
        "{listing}"
    );

    let schule = Node::start(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        schule_port,
        Forwarding::new(),
    );
    let (ok, out, err) = toy(&binary, &["--maildir", maildir, "queue", "flush"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "Flushed: 1 deferred recipient(s) are being tried now.\n"
    );
    let got = schule.wait_for("carl@schule.example", 1);
    assert!(got[0].ends_with(MESSAGE.as_bytes()));
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, _) = toy(&binary, &["queue", "--maildir", maildir]);
        if out.starts_with("The queue in ") && out.ends_with(" is empty.\n") {
            break;
        }
        assert!(Instant::now() < deadline, "still queued: {out}");
        thread::sleep(Duration::from_millis(100));
    }

    // Stopped (Ctrl-C), the server takes its control socket away: a flush
    // then says nobody is there.
    let stopped = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(child.wait().unwrap().success());
    let (ok, out, err) = toy(&binary, &["queue", "flush", "--maildir", maildir]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.starts_with("toy-server: no running server owns this queue ("),
        "{err}"
    );
    schule.server.stop();
}

/// A certificate authority of the test's own and a certificate it signed
/// for 127.0.0.1: the CA file, and the server configuration.
fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let config = postamt_examples::tls::from_pem_files(&cert_file, &key_file).unwrap();
    (ca_file, config)
}

#[test]
fn required_tls_is_verified_and_a_host_without_it_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, verified) = test_ca(dir.path());
    // One next hop with a certificate the CA signed, one whose certificate
    // signed itself, one without STARTTLS.
    let good = Node::start_tls(
        "mx.good.example",
        "good.example",
        &["carl"],
        0,
        Forwarding::new(),
        Some(verified),
    );
    let selfish = Node::start_tls(
        "mx.self.example",
        "self.example",
        &["carl"],
        0,
        Forwarding::new(),
        Some(postamt_examples::tls::self_signed("mx.self.example").unwrap()),
    );
    let plain = Node::start(
        "mx.plain.example",
        "plain.example",
        &["carl"],
        0,
        Forwarding::new(),
    );
    let spool = Arc::new(postamt_store::MemorySpool::new());
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            tls: postamt_examples::RelayTls::Require,
            tls_roots: Some(ca),
            spool: spool.clone(),
            retry_after: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
            ..trusted(&[
                ("good.example", &good),
                ("self.example", &selfish),
                ("plain.example", &plain),
            ])
        },
    );
    send(
        kolleg.server.smtp_addr(),
        "anna@kolleg.de",
        &[
            "carl@good.example",
            "carl@self.example",
            "carl@plain.example",
        ],
        MESSAGE,
    );
    let got = good.wait_for("carl@good.example", 1);
    let got = String::from_utf8(got[0].clone()).unwrap();
    assert!(
        got.contains("\r\n\tby mx.good.example (postamt) with ESMTPS;\r\n"),
        "{got}"
    );
    // The other two are deferred with why, and never sent in plaintext.
    use postamt_store::Spool;
    let deadline = Instant::now() + WAIT;
    let replies =
        loop {
            let entries = spool.list().unwrap();
            assert_eq!(entries.len(), 1);
            let msg = postamt_relay::QueuedMessage::from_record(
                postamt_relay::MessageId::new(entries[0].id.as_str()),
                &entries[0].record,
            )
            .unwrap();
            let replies: Vec<String> =
                msg.recipients()
                    .iter()
                    .filter_map(|r| match r.state() {
                        postamt_relay::RecipientState::Deferred { last_reply, .. } => Some(
                            format!("{} {}", r.mailbox(), last_reply.to_string().trim_end()),
                        ),
                        _ => None,
                    })
                    .collect();
            if replies.len() == 2 {
                break replies;
            }
            assert!(Instant::now() < deadline, "{replies:?}");
            thread::sleep(Duration::from_millis(50));
        };
    assert!(
        replies[0].starts_with("carl@self.example 451 4.7.5 TLS with 127.0.0.1 failed: "),
        "{replies:?}"
    );
    assert!(replies[0].contains("certificate"), "{replies:?}");
    assert_eq!(
        replies[1],
        format!(
            "carl@plain.example 451 4.7.5 TLS with 127.0.0.1 failed: {} does not offer STARTTLS",
            plain.server.smtp_addr()
        )
    );
    assert!(selfish.mailbox("carl@self.example").is_empty());
    assert!(plain.mailbox("carl@plain.example").is_empty());
    assert_eq!(selfish.transactions(), 0);
    assert_eq!(plain.transactions(), 0);
    kolleg.server.stop();
    for n in [good, selfish, plain] {
        n.server.stop();
    }
}

/// What a [`Counting`] next hop does besides answering well.
#[derive(Clone, Copy, PartialEq)]
enum HopMode {
    /// Takes every transaction and waits for more.
    Patient,
    /// Closes the connection right after each message's 250, as a server
    /// with a short idle timeout does.
    ClosesAfterEachMessage,
    /// Answers a connection's second MAIL with 421 and closes.
    Refuses421AtSecondMail,
    /// Takes a connection's second message and closes without answering
    /// its final dot.
    VanishesAfterSecondDot,
}

/// One connection a [`Counting`] next hop took: its command lines and
/// the message texts it got (as sent, dot-stuffed, without the final dot).
#[derive(Clone, Default, Debug)]
struct HopSession {
    lines: Vec<String>,
    messages: Vec<Vec<u8>>,
}

/// A next hop that counts connections and transactions, with or without
/// STARTTLS.
struct Counting {
    addr: SocketAddr,
    sessions: Arc<Mutex<Vec<HopSession>>>,
}

impl Counting {
    fn start(mode: HopMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let all = sessions.clone();
        thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let all = all.clone();
                thread::spawn(move || Self::serve(tcp, mode, &all));
            }
        });
        Self { addr, sessions }
    }

    fn serve(tcp: TcpStream, mode: HopMode, all: &Mutex<Vec<HopSession>>) {
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let n = {
            let mut all = all.lock().unwrap();
            all.push(HopSession::default());
            all.len() - 1
        };
        let mut w = tcp.try_clone().unwrap();
        let mut r = BufReader::new(tcp);
        let _ = w.write_all(b"220 hop.example ESMTP\r\n");
        let mut mails = 0;
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|k| k > 0) {
            all.lock().unwrap()[n].lines.push(line.clone());
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let answer = match verb.as_str() {
                "EHLO" => "250-hop.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into(),
                "MAIL" => {
                    mails += 1;
                    if mode == HopMode::Refuses421AtSecondMail && mails == 2 {
                        let _ = w.write_all(b"421 4.3.2 hop.example closing\r\n");
                        return;
                    }
                    "250 2.1.0 ok\r\n".to_string()
                }
                "RCPT" => "250 2.1.5 ok\r\n".into(),
                "DATA" => {
                    let _ = w.write_all(b"354 go on\r\n");
                    let mut text = Vec::new();
                    while !text.ends_with(b"\r\n.\r\n") {
                        let mut piece = Vec::new();
                        if !r.read_until(b'\n', &mut piece).is_ok_and(|k| k > 0) {
                            return;
                        }
                        text.extend_from_slice(&piece);
                    }
                    text.truncate(text.len() - 3);
                    let got = {
                        let mut all = all.lock().unwrap();
                        all[n].messages.push(text);
                        all[n].messages.len()
                    };
                    if mode == HopMode::VanishesAfterSecondDot && got == 2 {
                        return;
                    }
                    let _ = w.write_all(b"250 2.0.0 queued\r\n");
                    if mode == HopMode::ClosesAfterEachMessage {
                        return;
                    }
                    line.clear();
                    continue;
                }
                "RSET" => "250 2.0.0 ok\r\n".into(),
                "QUIT" => "221 2.0.0 bye\r\n".into(),
                _ => "502 5.5.1 no\r\n".into(),
            };
            let _ = w.write_all(answer.as_bytes());
            if verb == "QUIT" {
                return;
            }
            line.clear();
        }
    }

    fn sessions(&self) -> Vec<HopSession> {
        self.sessions.lock().unwrap().clone()
    }

    /// Waits until `n` messages arrived, in all connections.
    fn wait_for(&self, n: usize) -> Vec<HopSession> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.sessions();
            let count: usize = got.iter().map(|s| s.messages.len()).sum();
            if count >= n || Instant::now() > deadline {
                assert_eq!(count, n, "{got:?}");
                return got;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `i`th message of a reuse test.
fn numbered(i: usize) -> String {
    format!(
        "From: anna@kolleg.de\r\nTo: carl@hop.example\r\nSubject: Nummer {i}\r\n\r\nText {i}\r\n.punkt\r\n"
    )
}

/// A relay for `hop.example` through `hop`, one delivery at a time (so
/// the counts are exact), keeping idle connections for `idle`.
fn reusing(hop: SocketAddr, idle: Duration) -> Node {
    Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            routes: vec![("hop.example".into(), hop.to_string().parse().unwrap())],
            concurrency: 1,
            reuse_idle: idle,
            ..trusted(&[])
        },
    )
}

/// Each message arrived once, in order, as queued: our Received: header
/// in front of the text anna sent (dot-stuffed on the wire).
fn assert_each_once(messages: &[Vec<u8>], n: usize) {
    assert_eq!(messages.len(), n);
    for (i, got) in messages.iter().enumerate() {
        let text = String::from_utf8(got.clone()).unwrap();
        let sent = numbered(i).replace("\r\n.", "\r\n..");
        assert!(text.starts_with("Received: from "), "{text}");
        assert!(text.ends_with(&sent), "{text}");
        assert_eq!(text.matches("Subject: ").count(), 1, "{text}");
    }
}

fn verbs(session: &HopSession) -> Vec<String> {
    session
        .lines
        .iter()
        .map(|l| l.split([' ', ':', '\r']).next().unwrap().to_string())
        .collect()
}

#[test]
fn messages_to_one_host_in_a_row_share_one_connection() {
    let hop = Counting::start(HopMode::Patient);
    let kolleg = reusing(hop.addr, Duration::from_secs(5));
    for i in 0..4 {
        send(
            kolleg.server.smtp_addr(),
            "anna@kolleg.de",
            &["carl@hop.example"],
            &numbered(i),
        );
        hop.wait_for(i + 1);
    }
    let sessions = hop.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_each_once(&sessions[0].messages, 4);
    let per_message = ["MAIL", "RCPT", "DATA"];
    let mut want = vec!["EHLO".to_string()];
    want.extend((0..4).flat_map(|_| per_message.map(String::from)));
    assert_eq!(verbs(&sessions[0]), want);
    // At stop the idle connection gets its QUIT.
    kolleg.server.stop();
    let sessions = hop.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].lines.last().unwrap(), "QUIT\r\n");
}

#[test]
fn an_idle_connection_is_closed_with_quit_when_its_time_is_up() {
    let hop = Counting::start(HopMode::Patient);
    let kolleg = reusing(hop.addr, Duration::from_millis(300));
    let addr = kolleg.server.smtp_addr();
    send(addr, "anna@kolleg.de", &["carl@hop.example"], &numbered(0));
    hop.wait_for(1);
    let deadline = Instant::now() + WAIT;
    while hop.sessions()[0].lines.last().map(String::as_str) != Some("QUIT\r\n") {
        assert!(Instant::now() < deadline, "{:?}", hop.sessions());
        thread::sleep(Duration::from_millis(20));
    }
    send(addr, "anna@kolleg.de", &["carl@hop.example"], &numbered(1));
    let sessions = hop.wait_for(2);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(
        verbs(&sessions[0]),
        ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    );
    assert_each_once(&[sessions[0].messages[0].clone()], 1);
    assert_eq!(sessions[1].messages.len(), 1);
    assert!(sessions[1].messages[0].ends_with(numbered(1).replace("\r\n.", "\r\n..").as_bytes()));
    kolleg.server.stop();
}

#[test]
fn reuse_can_be_turned_off() {
    let hop = Counting::start(HopMode::Patient);
    let kolleg = reusing(hop.addr, Duration::ZERO);
    for i in 0..3 {
        send(
            kolleg.server.smtp_addr(),
            "anna@kolleg.de",
            &["carl@hop.example"],
            &numbered(i),
        );
        hop.wait_for(i + 1);
    }
    // The last QUIT may still be on its way when the third message is in.
    let deadline = Instant::now() + WAIT;
    let sessions = loop {
        let sessions = hop.sessions();
        let quit = |s: &HopSession| s.lines.last().map(String::as_str) == Some("QUIT\r\n");
        if sessions.len() >= 3 && sessions.iter().all(quit) || Instant::now() >= deadline {
            break sessions;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    for s in &sessions {
        assert_eq!(verbs(s), ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]);
    }
    kolleg.server.stop();
}

#[test]
fn a_next_hop_that_closed_the_idle_connection_gets_the_next_message_on_a_new_one() {
    let hop = Counting::start(HopMode::ClosesAfterEachMessage);
    let kolleg = reusing(hop.addr, Duration::from_secs(5));
    for i in 0..3 {
        send(
            kolleg.server.smtp_addr(),
            "anna@kolleg.de",
            &["carl@hop.example"],
            &numbered(i),
        );
        hop.wait_for(i + 1);
        // The FIN is on its way; the relay may see it before or only
        // at the next MAIL: either way the message goes on a new connection.
    }
    assert!(kolleg.mailbox("anna@kolleg.de").is_empty(), "no notice");
    kolleg.server.stop();
    let sessions = hop.sessions();
    // Every message once; a stale connection's MAIL (if it went out
    // before the FIN arrived) reached no one.
    let messages: Vec<Vec<u8>> = sessions.iter().flat_map(|s| s.messages.clone()).collect();
    assert_each_once(&messages, 3);
    assert_eq!(sessions.len(), 3, "{sessions:?}");
}

#[test]
fn a_421_at_mail_on_a_reused_connection_sends_the_message_once_on_a_new_one() {
    let hop = Counting::start(HopMode::Refuses421AtSecondMail);
    let kolleg = reusing(hop.addr, Duration::from_secs(5));
    for i in 0..3 {
        send(
            kolleg.server.smtp_addr(),
            "anna@kolleg.de",
            &["carl@hop.example"],
            &numbered(i),
        );
        hop.wait_for(i + 1);
    }
    // The 421 was no failed attempt: no notice, nothing deferred.
    assert!(kolleg.mailbox("anna@kolleg.de").is_empty(), "no notice");
    kolleg.server.stop();
    let sessions = hop.sessions();
    // Each connection: one message, then a MAIL that got 421 (the hop
    // reads nothing after it; the last connection: idle until the stop's
    // QUIT).
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(
        verbs(&sessions[0]),
        ["EHLO", "MAIL", "RCPT", "DATA", "MAIL"]
    );
    assert_eq!(
        verbs(&sessions[1]),
        ["EHLO", "MAIL", "RCPT", "DATA", "MAIL"]
    );
    assert_eq!(
        verbs(&sessions[2]),
        ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    );
    let messages: Vec<Vec<u8>> = sessions.iter().flat_map(|s| s.messages.clone()).collect();
    assert_each_once(&messages, 3);
    outbound_lines(&kolleg.trace, "the idle connection was dead", 2);
}

#[test]
fn starttls_reuse_keeps_tls() {
    let tls = postamt_examples::tls::self_signed("mx.schule.example").unwrap();
    let schule = Node::start_tls(
        "mx.schule.example",
        "schule.example",
        &["carl"],
        0,
        Forwarding::new(),
        Some(tls),
    );
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            concurrency: 1,
            reuse_idle: Duration::from_secs(5),
            ..trusted(&[("schule.example", &schule)])
        },
    );
    for i in 0..3 {
        send(
            kolleg.server.smtp_addr(),
            "anna@kolleg.de",
            &["carl@schule.example"],
            &numbered(i),
        );
        schule.wait_for("carl@schule.example", i + 1);
    }
    for got in schule.mailbox("carl@schule.example") {
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.contains("\r\n\tby mx.schule.example (postamt) with ESMTPS;\r\n"),
            "{got}"
        );
    }
    kolleg.server.stop();
    // One connection: one STARTTLS, EHLO before and after it, three
    // transactions, one QUIT at the stop.
    outbound_lines(&kolleg.trace, " C: STARTTLS", 1);
    outbound_lines(&kolleg.trace, " -- TLS established", 1);
    outbound_lines(&kolleg.trace, " C: EHLO mail.kolleg.de", 2);
    outbound_lines(&kolleg.trace, " C: MAIL FROM:<anna@kolleg.de>", 3);
    outbound_lines(&kolleg.trace, " C: QUIT", 1);
    outbound_lines(&kolleg.trace, " -- connected to ", 1);
    assert_eq!(schule.transactions(), 3);
    schule.server.stop();
}

/// Waits until a node's trace shows `n` lines of its outbound sessions
/// containing `needle` (the trace is written by a thread of its own),
/// and that there are no more.
fn outbound_lines(trace: &Captured, needle: &str, n: usize) {
    let count = || {
        trace
            .text()
            .lines()
            .filter(|l| l.starts_with("[smtp-out #") && l.contains(needle))
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while count() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(count(), n, "{needle:?} in {}", trace.text());
}

#[test]
fn a_connection_lost_after_the_final_dot_is_not_retried_at_once() {
    let hop = Counting::start(HopMode::VanishesAfterSecondDot);
    let spool = Arc::new(postamt_store::MemorySpool::new());
    let kolleg = Node::start(
        "mail.kolleg.de",
        "kolleg.de",
        &["anna"],
        0,
        Forwarding {
            routes: vec![("hop.example".into(), hop.addr.to_string().parse().unwrap())],
            concurrency: 1,
            reuse_idle: Duration::from_secs(5),
            spool: spool.clone(),
            // The deferred recipient's own retry comes long after the test.
            retry_after: Duration::from_secs(60),
            ..trusted(&[])
        },
    );
    for i in 0..2 {
        send(
            kolleg.server.smtp_addr(),
            "anna@kolleg.de",
            &["carl@hop.example"],
            &numbered(i),
        );
        hop.wait_for(i + 1);
    }
    // The hop may have taken the second message: it is not sent again on
    // a new connection (that would be the retry of a stale connection).
    thread::sleep(Duration::from_millis(500));
    let sessions = hop.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_each_once(&sessions[0].messages, 2);
    outbound_lines(&kolleg.trace, "the idle connection was dead", 0);
    // Deferred, still queued for its retry (the first one's removal is
    // written by a thread of its own).
    use postamt_store::Spool;
    let deadline = Instant::now() + WAIT;
    while spool.list().unwrap().len() > 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(spool.list().unwrap().len(), 1);
    kolleg.server.stop();
}
