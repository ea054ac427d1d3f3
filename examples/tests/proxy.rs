//! The toy server behind a load balancer and a proxy, over real sockets:
//! a PROXY protocol header (v1 or v2, split anywhere) from a trusted
//! balancer names the client that `Received:`, the relay decision and the
//! per-client limit then use; from anyone else no header is read; a
//! malformed one closes the connection unanswered. XCLIENT is offered to
//! and obeyed from trusted SMTP clients only.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod lines;
use lines::Conn;

use postamt_examples::{Forwarding, Options, Server};
use postamt_store::{MailStore, MailboxName, MemoryStore, StaticDirectory};
use postamt_wire::proxy::ProxyHeader;

const HOST: &str = "mail.kolleg.de";
const WAIT: Duration = Duration::from_secs(10);
const GREETING: &str = "220 mail.kolleg.de ESMTP postamt ready\r\n";

/// A connection from `source` (a loopback address other than 127.0.0.1
/// is another host to the server).
fn connect_from(source: &str, addr: SocketAddr) -> Conn {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&addr.into()).expect("connect");
    Conn::from_stream(socket.into(), WAIT)
}

/// The balancer is 127.0.0.1; 127.0.0.2 is an ordinary client; clients in
/// 192.0.2.0/24 may relay; 127.0.0.3 may use XCLIENT.
fn server(store: Arc<MemoryStore>, per_client: usize) -> Server {
    let mut forwarding = Forwarding::new();
    forwarding.relay_from = vec!["192.0.2.0/24".parse().unwrap()];
    Server::start(Options {
        hostname: HOST.to_string(),
        proxy_from: vec!["127.0.0.1/32".parse().unwrap()],
        xclient_from: vec!["127.0.0.3/32".parse().unwrap()],
        max_connections_per_client: per_client,
        forwarding,
        ..Options::new(store, Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts")
}

fn v1(client: &str, server: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::new(client.parse().unwrap(), server).encode_v1(&mut out);
    out
}

fn v2(client: &str, server: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::new(client.parse().unwrap(), server)
        .encode_v2(&mut out)
        .unwrap();
    out
}

/// Sends a message from anna to bob; gives the reply to its end.
fn send_message(c: &mut Conn) -> String {
    assert!(c.command("EHLO client.example\r\n").starts_with("250-"));
    assert_eq!(
        c.command("MAIL FROM:<anna@kolleg.de>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        c.command("RCPT TO:<bob@kolleg.de>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        c.command("DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    c.command("Subject: Hallo\r\n\r\nBis morgen!\r\n.\r\n")
}

/// The `Received:` header of each of bob's messages, unfolded.
fn received_lines(store: &MemoryStore) -> Vec<String> {
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    let drop = store.open_maildrop(&bob).unwrap();
    (0..drop.messages().len())
        .map(|i| {
            let mut text = String::new();
            drop.read_message(i)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            let start = text.find("Received: ").expect("a Received: header");
            let end = text[start..].find(";").unwrap();
            text[start..start + end].replace("\r\n\t", " ")
        })
        .collect()
}

#[test]
fn a_proxy_header_names_the_client_in_received_however_it_arrives() {
    let store = Arc::new(MemoryStore::new());
    let server = server(Arc::clone(&store), 0);
    let addr = server.smtp_addr();
    for (client, header) in [
        ("192.0.2.7", v1("192.0.2.7:56324", addr)),
        ("198.51.100.9", v2("198.51.100.9:40000", addr)),
        ("2001:db8::5", v2("[2001:db8::5]:40001", addr)),
    ] {
        // The header comes in pieces, a byte, the rest, then the client.
        let mut c = connect_from("127.0.0.1", addr);
        c.send(&header[..1]);
        thread::sleep(Duration::from_millis(20));
        c.send(&header[1..]);
        assert_eq!(c.reply(), GREETING, "{client}");
        assert_eq!(
            send_message(&mut c),
            "250 2.0.0 Message accepted for delivery\r\n"
        );
        assert_eq!(
            c.command("QUIT\r\n"),
            "221 2.0.0 mail.kolleg.de See you later\r\n"
        );
    }
    // The header and the client's first command in one write.
    let mut c = connect_from("127.0.0.1", addr);
    let mut first = v1("192.0.2.8:1025", addr);
    first.extend_from_slice(b"NOOP\r\n");
    c.send(&first);
    assert_eq!(c.reply(), GREETING);
    assert_eq!(c.reply(), "250 OK\r\n");
    assert_eq!(
        received_lines(&store),
        [
            "Received: from client.example ([192.0.2.7]) by mail.kolleg.de (postamt) with ESMTP",
            "Received: from client.example ([198.51.100.9]) by mail.kolleg.de (postamt) with ESMTP",
            "Received: from client.example ([2001:db8::5]) by mail.kolleg.de (postamt) with ESMTP",
        ]
    );
    server.stop();
}

#[test]
fn the_named_client_decides_relaying_and_counts_against_its_own_limit() {
    let store = Arc::new(MemoryStore::new());
    let server = server(store, 1);
    let addr = server.smtp_addr();
    let relay = |c: &mut Conn| {
        assert!(c.command("EHLO client.example\r\n").starts_with("250-"));
        assert_eq!(
            c.command("MAIL FROM:<anna@kolleg.de>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        c.command("RCPT TO:<someone@example.org>\r\n")
    };
    let mut inside = connect_from("127.0.0.1", addr);
    inside.send(v2("192.0.2.7:5000", addr));
    assert_eq!(inside.reply(), GREETING);
    assert_eq!(relay(&mut inside), "250 2.1.5 Recipient OK\r\n");
    // The same client again through the balancer: over its limit of one.
    let mut again = connect_from("127.0.0.1", addr);
    again.send(v1("192.0.2.7:5001", addr));
    assert_eq!(
        again.reply(),
        "421 mail.kolleg.de Too many connections from your address, try again later\r\n"
    );
    // Another client through the same balancer is its own.
    let mut outside = connect_from("127.0.0.1", addr);
    outside.send(v1("198.51.100.9:5002", addr));
    assert_eq!(outside.reply(), GREETING);
    assert_eq!(relay(&mut outside), "550 5.7.1 Relaying denied\r\n");
    server.stop();
}

#[test]
fn only_the_balancer_may_send_a_header_and_a_bad_one_is_not_answered() {
    let store = Arc::new(MemoryStore::new());
    let server = server(store, 0);
    let addr = server.smtp_addr();
    // From an ordinary client the header is just a line of SMTP.
    let mut c = connect_from("127.0.0.2", addr);
    assert_eq!(c.reply(), GREETING);
    let header = String::from_utf8(v1("192.0.2.7:5000", addr)).unwrap();
    assert!(
        c.command(&header).starts_with("500 "),
        "answered as a command"
    );
    // From the balancer, anything but a header is closed without a word.
    for junk in [
        &b"EHLO client.example\r\n"[..],
        b"PROXY TCP4 1.2.3.4\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x99\x11\0\0",
    ] {
        let mut c = connect_from("127.0.0.1", addr);
        c.send(junk);
        let mut got = Vec::new();
        let _ = c.reader.read_to_end(&mut got);
        assert_eq!(got, b"", "{junk:?}");
    }
    // POP3 reads the header too.
    let pop3 = server.pop3_addr();
    let mut p = connect_from("127.0.0.1", pop3);
    p.send(v2("192.0.2.7:5003", pop3));
    assert!(p.line().starts_with("+OK "));
    assert_eq!(
        p.command("USER bob\r\n"),
        "+OK Now send your password with PASS\r\n"
    );
    p.writer.flush().unwrap();
    server.stop();
}

#[test]
fn xclient_is_offered_to_and_obeyed_from_trusted_clients_only() {
    let store = Arc::new(MemoryStore::new());
    let server = server(Arc::clone(&store), 0);
    let addr = server.smtp_addr();
    let mut untrusted = connect_from("127.0.0.2", addr);
    assert_eq!(untrusted.reply(), GREETING);
    assert!(
        !untrusted
            .command("EHLO proxy.example\r\n")
            .contains("XCLIENT")
    );
    assert_eq!(
        untrusted.command("XCLIENT ADDR=192.0.2.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    let mut proxy = connect_from("127.0.0.3", addr);
    assert_eq!(proxy.reply(), GREETING);
    assert!(
        proxy
            .command("EHLO proxy.example\r\n")
            .contains("250 XCLIENT NAME ADDR PROTO HELO LOGIN PORT DESTADDR DESTPORT\r\n")
    );
    assert_eq!(
        proxy.command("XCLIENT NAME=client.example ADDR=192.0.2.9 PORT=4242\r\n"),
        GREETING
    );
    assert_eq!(
        send_message(&mut proxy),
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(
        received_lines(&store),
        [
            "Received: from client.example (client.example [192.0.2.9]) by mail.kolleg.de (postamt) with ESMTP"
        ]
    );
    server.stop();
}
