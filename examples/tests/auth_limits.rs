//! Password guessing against the toy server, over real sockets: refused
//! logins keep their one-second pause, the third refused AUTH on one
//! connection ends it (issue 16, point 5), the right password still works on
//! a new connection, and SASL PLAIN naming someone else as authorization
//! identity is refused (point 11).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postamt_examples::{Options, Server};
use postamt_store::{MemoryStore, StaticDirectory};

/// Longest wait for any single reply; far above what any step needs.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn start() -> Server {
    // No TLS, as in the classroom: logins in the clear are allowed.
    Server::start(Options::new(
        Arc::new(MemoryStore::new()),
        Arc::new(StaticDirectory::demo()),
    ))
    .expect("server starts on ephemeral ports")
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let writer = tcp.try_clone().unwrap();
        Self {
            reader: BufReader::new(tcp),
            writer,
        }
    }

    /// One reply, all its lines, CRLF kept; empty at end of stream.
    fn reply(&mut self, last: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap() == 0 {
                return text;
            }
            text.push_str(&line);
            if last(&line) {
                return text;
            }
        }
    }

    fn smtp_reply(&mut self) -> String {
        self.reply(|l| l.as_bytes().get(3) != Some(&b'-'))
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    fn command(&mut self, text: &str) -> String {
        self.send(text);
        self.smtp_reply()
    }

    fn closed(&mut self) -> bool {
        let mut rest = String::new();
        self.reader.read_line(&mut rest).unwrap() == 0
    }
}

/// `AUTH PLAIN` for `authzid NUL user NUL password`.
fn plain(authzid: &str, user: &str, password: &str) -> String {
    use base64::Engine as _;
    let blob = format!("{authzid}\0{user}\0{password}");
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

#[test]
fn smtp_third_refused_auth_closes_and_the_right_password_still_works() {
    let server = start();
    let mut c = Client::open(server.smtp_addr());
    assert!(c.smtp_reply().starts_with("220 "));
    let ehlo = c.command("EHLO guesser.example\r\n");
    assert!(ehlo.ends_with("250 AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    let started = Instant::now();
    for _ in 0..2 {
        assert_eq!(
            c.command(&plain("", "anna", "wrong")),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
    }
    assert_eq!(
        c.command(&plain("", "anna", "wrong")),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(
        c.smtp_reply(),
        "421 4.7.0 mail.kolleg.de Too many failed authentications, closing connection\r\n"
    );
    // Each refusal waited its pause: guessing stays slow.
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(c.closed(), "the connection stays open after the 421");

    let mut c = Client::open(server.smtp_addr());
    c.smtp_reply();
    c.command("EHLO anna.example\r\n");
    assert_eq!(
        c.command(&plain("", "anna", "geheim")),
        "235 2.7.0 Authentication successful\r\n"
    );
    c.command("QUIT\r\n");
    server.stop();
}

#[test]
fn smtp_plain_acting_for_someone_else_is_refused() {
    let server = start();
    let mut c = Client::open(server.smtp_addr());
    c.smtp_reply();
    c.command("EHLO anna.example\r\n");
    // Anna's own password, but asking to act as bob.
    assert_eq!(
        c.command(&plain("bob@kolleg.de", "anna", "geheim")),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // Naming herself is no change of identity.
    assert_eq!(
        c.command(&plain("anna", "anna", "geheim")),
        "235 2.7.0 Authentication successful\r\n"
    );
    c.command("QUIT\r\n");
    server.stop();
}

#[test]
fn pop3_third_refused_login_closes_and_the_right_password_still_works() {
    let server = start();
    let pop3_line = |l: &str| l.ends_with("\r\n");
    let mut c = Client::open(server.pop3_addr());
    assert!(c.reply(pop3_line).starts_with("+OK"));
    let started = Instant::now();
    for round in 0..3 {
        c.send("USER bob\r\n");
        assert!(c.reply(pop3_line).starts_with("+OK"));
        c.send("PASS guess\r\n");
        let refused = c.reply(pop3_line);
        assert!(
            refused.starts_with("-ERR [AUTH] "),
            "round {round}: {refused}"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        c.closed(),
        "the connection stays open after the third refusal"
    );

    let mut c = Client::open(server.pop3_addr());
    c.reply(pop3_line);
    c.send("USER bob\r\nPASS topSecret\r\n");
    assert!(c.reply(pop3_line).starts_with("+OK"));
    assert!(c.reply(pop3_line).starts_with("+OK Logged in"));
    c.send("QUIT\r\n");
    server.stop();
}
