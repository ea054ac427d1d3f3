//! Typing from telnet clients into the toy server, over real sockets (issue
//! 13's telnet part): option negotiation is refused and removed, Backspace
//! and DEL edit the line being typed, keys may come one per packet, CR NUL
//! ends a line; a mail client's 8-bit and binary bytes (0xFF, 0x08, 0x7f,
//! over DATA and BDAT) arrive byte for byte; `strict_input` turns it off.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postamt_examples::{Options, Server};
use postamt_store::{MailStore, MailboxName, MemoryStore, StaticDirectory};

const WAIT: Duration = Duration::from_secs(10);

fn start(strict_input: bool) -> (Server, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let server = Server::start(Options {
        strict_input,
        ..Options::new(store.clone(), Arc::new(StaticDirectory::demo()))
    })
    .expect("server starts on ephemeral ports");
    (server, store)
}

/// A raw connection that collects everything the server sends.
struct Raw {
    tcp: TcpStream,
    got: Vec<u8>,
}

impl Raw {
    fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        Self {
            tcp,
            got: Vec::new(),
        }
    }

    /// Sends `bytes` one per packet, as a telnet client in character mode.
    fn type_keys(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.tcp.write_all(&[*b]).unwrap();
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).unwrap();
    }

    /// Reads until what was received ends with `end`.
    fn until(&mut self, end: &[u8]) -> Vec<u8> {
        let started = Instant::now();
        let mut buf = [0; 4096];
        while !self.got.ends_with(end) {
            assert!(
                started.elapsed() < WAIT,
                "waited for {:?}, got {:?}",
                String::from_utf8_lossy(end),
                String::from_utf8_lossy(&self.got)
            );
            match self.tcp.read(&mut buf) {
                Ok(0) => panic!("closed; got {:?}", String::from_utf8_lossy(&self.got)),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        std::mem::take(&mut self.got)
    }
}

/// What PuTTY sends first in telnet mode: WILL NAWS, WILL TSPEED, WILL
/// TTYPE, WILL NEW-ENVIRON, DO ECHO, WILL SGA, DO SGA.
const PUTTY_OPENING: &[u8] =
    b"\xff\xfb\x1f\xff\xfb\x20\xff\xfb\x18\xff\xfb\x27\xff\xfd\x01\xff\xfb\x03\xff\xfd\x03";
/// Our refusals of exactly those, in order.
const REFUSALS: &[u8] =
    b"\xff\xfe\x1f\xff\xfe\x20\xff\xfe\x18\xff\xfe\x27\xff\xfc\x01\xff\xfe\x03\xff\xfc\x03";

#[test]
fn putty_style_negotiation_and_typing_mistakes_work_on_smtp() {
    let (server, store) = start(false);
    let mut c = Raw::open(server.smtp_addr());
    c.until(b"ESMTP postamt ready\r\n");
    c.send(PUTTY_OPENING);
    c.type_keys(b"HELO server\r\n");
    let got = c.until(b"Hello server\r\n");
    assert!(got.starts_with(REFUSALS), "{got:?}");
    assert_eq!(
        &got[REFUSALS.len()..],
        b"250 mail.kolleg.de Hello server\r\n"
    );
    // A typing mistake, corrected with Backspace, then with DEL.
    c.type_keys(b"NOOX\x08P\r\n");
    assert_eq!(c.until(b"\r\n"), b"250 OK\r\n");
    c.type_keys(b"MAIL FROM: anna@kolleg.deX\x7f\r\x00");
    assert_eq!(c.until(b"\r\n"), b"250 Sender OK\r\n");
    c.type_keys(b"RCPT TO: bob@kolleg.de\r\n");
    assert_eq!(c.until(b"\r\n"), b"250 Recipient OK\r\n");
    c.type_keys(b"DATA\r\n");
    c.until(b"<CR><LF>.<CR><LF>\r\n");
    // A telnet client's message is typed too: Backspace works there as well,
    // and a window resize (NAWS subnegotiation) mid-message vanishes.
    c.type_keys(
        b"Subject: Hallo\r\n\r\nHallo Bpb\x08\x08ob\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0!\r\n.\r\n",
    );
    assert_eq!(c.until(b"\r\n"), b"250 Message accepted for delivery\r\n");
    c.type_keys(b"QUIT\r\n");
    c.until(b"See you later\r\n");
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    let maildrop = store.open_maildrop(&bob).unwrap();
    let mut text = String::new();
    maildrop
        .read_message(0)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.ends_with("Subject: Hallo\r\n\r\nHallo Bob!\r\n"),
        "{text:?}"
    );
    drop(maildrop);
    server.stop();
}

#[test]
fn telnet_typing_works_on_pop3() {
    let (server, _store) = start(false);
    let mut c = Raw::open(server.pop3_addr());
    c.until(b"\r\n");
    c.send(PUTTY_OPENING);
    c.type_keys(b"USER bop\x08b\r\n");
    let got = c.until(b"PASS\r\n");
    assert_eq!(
        String::from_utf8_lossy(&got[REFUSALS.len()..]),
        "+OK Now send your password with PASS\r\n"
    );
    c.type_keys(b"PASS topSecret\r\n");
    assert!(String::from_utf8_lossy(&c.until(b")\r\n")).starts_with("+OK Logged in"));
    c.type_keys(b"STAT\x7f\x7f\x7f\x7fSTAT\r\x00QUIT\r\n");
    let got = String::from_utf8_lossy(&c.until(b"Goodbye\r\n")).into_owned();
    assert!(got.starts_with("+OK 0 0\r\n"), "{got}");
    server.stop();
}

/// A body with every byte a filter could be tempted by, in lines that end
/// with CRLF and stay below 1000 octets.
fn binary_body() -> Vec<u8> {
    let mut body = b"Subject: bytes\r\n\r\n".to_vec();
    for chunk in (1..=255u8)
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect::<Vec<_>>()
        .chunks(60)
    {
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"\xff\xfb\x1f \x08\x7f \xff\xff\r\n");
    body
}

fn retrieve_all(store: &MemoryStore) -> Vec<Vec<u8>> {
    let bob = MailboxName::new("bob@kolleg.de").unwrap();
    let maildrop = store.open_maildrop(&bob).unwrap();
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

#[test]
fn a_mail_clients_binary_bytes_pass_over_data_and_bdat() {
    let (server, store) = start(false);
    let body = binary_body();
    let mut c = Raw::open(server.smtp_addr());
    c.until(b"ready\r\n");
    c.send(b"EHLO client.example\r\n");
    c.until(b"250 AUTH PLAIN LOGIN\r\n");
    // DATA, body in one write after the 354.
    c.send(b"MAIL FROM:<anna@kolleg.de> BODY=8BITMIME\r\nRCPT TO:<bob@kolleg.de>\r\nDATA\r\n");
    c.until(b"<CR><LF>.<CR><LF>\r\n");
    let mut data = body.clone();
    data.extend_from_slice(b".\r\n");
    c.send(&data);
    assert_eq!(
        c.until(b"\r\n"),
        b"250 2.0.0 Message accepted for delivery\r\n"
    );
    // BDAT, chunk pipelined right behind its command, split mid-chunk.
    let (first, second) = body.split_at(100);
    let mut bdat = format!(
        "MAIL FROM:<anna@kolleg.de> BODY=8BITMIME\r\nRCPT TO:<bob@kolleg.de>\r\nBDAT {}\r\n",
        first.len()
    )
    .into_bytes();
    bdat.extend_from_slice(first);
    bdat.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
    bdat.extend_from_slice(second);
    c.send(&bdat);
    let replies = String::from_utf8_lossy(&c.until(b"for delivery\r\n")).into_owned();
    assert_eq!(
        replies,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.0.0 100 octets received\r\n\
         250 2.0.0 Message accepted for delivery\r\n"
    );
    c.send(b"QUIT\r\n");
    c.until(b"later\r\n");
    let stored = retrieve_all(&store);
    assert_eq!(stored.len(), 2);
    for m in stored {
        assert!(
            m.ends_with(&body),
            "changed in transit: {:?}",
            String::from_utf8_lossy(&m)
        );
    }
    server.stop();
}

#[test]
fn strict_input_leaves_negotiation_to_the_session() {
    let (server, _store) = start(true);
    let mut c = Raw::open(server.smtp_addr());
    c.until(b"ready\r\n");
    c.send(PUTTY_OPENING);
    c.send(b"HELO server\r\n");
    let got = String::from_utf8_lossy(&c.until(b"\r\n")).into_owned();
    assert!(got.starts_with("500 "), "{got}");
    c.send(b"NOOX\x08P\r\n");
    let got = String::from_utf8_lossy(&c.until(b"\r\n")).into_owned();
    assert!(got.starts_with("500 "), "{got}");
    server.stop();
}
