//! Our POP3 client session against a server nobody here wrote: Dovecot's
//! POP3 (`dovecot-pop3d`), started on a free loopback port with its whole
//! configuration, state and log in a temporary folder. Skips with a note when
//! `/usr/sbin/dovecot` is missing.
//!
//! Two messages are put into bob's Maildir with `postamt_store::Maildir`; the
//! client logs in, checks STAT, LIST, UIDL, RETR (byte for byte), TOP, marks
//! message 1 deleted and QUITs; a second session sees one message left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postamt_examples::client::ClientStream;
use postamt_pop3::{ClientConfig, ClientEvent, ClientSession, MessageNumber};
use postamt_store::{MailStore, MailboxName, Maildir};
use postamt_wire::Session;

mod peers;

const DOVECOT: &str = "/usr/sbin/dovecot";

/// 5 lines, two of them needing stuffing; 150 octets.
const FIRST: &[u8] = b"From: Anna <anna@kolleg.de>\r\nTo: bob@kolleg.de\r\nSubject: Erste\r\n\r\n.a dot\r\n..two dots\r\n.\r\nEnde\r\n";
const SECOND: &[u8] = b"From: carol@kolleg.de\r\nTo: bob@kolleg.de\r\nSubject: Zweite\r\n\r\nline one\r\nline two\r\nline three\r\n";

/// Kills Dovecot's master process (and so its children) when dropped, also
/// when the test fails.
struct Dovecot {
    child: Child,
    log: PathBuf,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; `kill` sends it by pid.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dovecot {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The uid and gid of a user in /etc/passwd.
fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn current_user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 2 && fields[2] == uid.to_string()).then(|| fields[0].to_string())
        })
        .or_else(|| std::env::var("USER").ok())
        .expect("cannot tell the current user's name")
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

fn free_port() -> u16 {
    peers::spare_port()
}

/// Writes the configuration, delivers the messages and starts Dovecot.
fn start(dir: &Path) -> (Dovecot, u16) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = std::fs::metadata(dir).unwrap();
    let root = me.uid() == 0;
    // As root, Dovecot's login processes run as its unprivileged login user
    // and mail is served with a uid other than 0 (Dovecot refuses 0); as
    // anyone else, everything runs as that user.
    let (login_user, internal_user, (mail_uid, mail_gid)) = if root {
        let ids = passwd_ids("dovecot").expect("dovecot-pop3d creates the user dovecot");
        ("dovenull".to_string(), "dovecot".to_string(), ids)
    } else {
        let name = current_user_name(me.uid());
        (name.clone(), name, (me.uid(), me.gid()))
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let store = Maildir::new(dir.join("mail"));
    let bob = MailboxName::new("bob").unwrap();
    for message in [FIRST, SECOND] {
        let mut delivery = store.begin_delivery(std::slice::from_ref(&bob)).unwrap();
        delivery.write_chunk(message).unwrap();
        delivery.commit().unwrap();
        // Distinct delivery times keep Dovecot's order the delivery order.
        std::thread::sleep(Duration::from_millis(20));
    }
    if root {
        chown_tree(&dir.join("mail"), mail_uid, mail_gid);
    }

    let d = dir.display();
    std::fs::write(
        dir.join("users"),
        format!("bob:{{PLAIN}}topSecret:{mail_uid}:{mail_gid}::{d}/mail/bob::\n"),
    )
    .unwrap();
    let port = free_port();
    let config = format!(
        "protocols = pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal_user}
default_internal_group = {internal_user}
default_login_user = {login_user}
first_valid_uid = 0
mail_location = maildir:{d}/mail/%u
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"
    );
    for sub in ["run", "state"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("dovecot.conf"), config).unwrap();
    let child = Command::new(DOVECOT)
        .arg("-F")
        .arg("-c")
        .arg(dir.join("dovecot.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dovecot");
    let dovecot = Dovecot {
        child,
        log: dir.join("dovecot.log"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "dovecot did not listen on {port}:\n{}",
            dovecot.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (dovecot, port)
}

/// A client session over a real socket.
struct Conn {
    session: ClientSession,
    stream: ClientStream,
    deadline: Instant,
}

impl Conn {
    fn connect(port: u16) -> Self {
        let stream =
            ClientStream::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let mut config = ClientConfig::default();
        config.timeouts.response = Duration::from_secs(10);
        Self {
            session: ClientSession::new(config, Instant::now()),
            stream,
            deadline: Instant::now() + Duration::from_secs(30),
        }
    }

    /// Writes what is queued and reads until every response is in; returns
    /// the events.
    fn run(&mut self) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        let mut buf = vec![0; 16 * 1024];
        loop {
            events.extend(std::iter::from_fn(|| self.session.poll_event()));
            let mut out = Vec::new();
            self.session.poll_transmit(&mut out);
            self.stream.send(&out).unwrap();
            if self.session.outstanding() == 0 || self.session.is_closed() {
                return events;
            }
            assert!(Instant::now() < self.deadline, "the test took too long");
            let wait = self
                .session
                .poll_timeout()
                .map_or(self.deadline, |t| t.min(self.deadline));
            match self.stream.read_until(&mut buf, Some(wait)).unwrap() {
                None => self.session.handle_timeout(Instant::now()),
                Some(0) => self.session.receive_eof(Instant::now()),
                Some(n) => self.session.receive(Instant::now(), &buf[..n]),
            }
        }
    }

    fn login(port: u16) -> Self {
        let mut conn = Self::connect(port);
        let events = conn.run();
        let [ClientEvent::Ready(caps)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(caps.capa && caps.user && caps.top && caps.uidl, "{caps:?}");
        assert!(caps.resp_codes && caps.pipelining, "{caps:?}");
        assert_eq!(caps.sasl, ["PLAIN"]);
        conn.session.login_user("bob", "topSecret").unwrap();
        assert_eq!(conn.run(), [ClientEvent::LoggedIn]);
        conn
    }
}

fn n(v: u32) -> MessageNumber {
    MessageNumber::new(v).unwrap()
}

/// The text of the one message in `events`.
fn message(events: &[ClientEvent], number: u32) -> Vec<u8> {
    assert_eq!(events.first(), Some(&ClientEvent::MessageStart(n(number))));
    assert_eq!(events.last(), Some(&ClientEvent::MessageEnd));
    let mut text = Vec::new();
    for event in &events[1..events.len() - 1] {
        let ClientEvent::MessageData(bytes) = event else {
            panic!("{event:?}")
        };
        text.extend_from_slice(bytes);
    }
    text
}

#[test]
fn our_client_against_dovecot_pop3() {
    if !Path::new(DOVECOT).exists() {
        peers::missing(DOVECOT, "Debian package dovecot-pop3d");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dovecot, port) = start(dir.path());

    let mut conn = Conn::login(port);
    let s = &mut conn.session;
    s.stat().unwrap();
    s.list(None).unwrap();
    s.uidl(None).unwrap();
    let total = (FIRST.len() + SECOND.len()) as u64;
    let events = conn.run();
    assert_eq!(
        events[..2],
        [
            ClientEvent::Stat {
                count: 2,
                octets: total
            },
            ClientEvent::List(vec![
                (n(1), FIRST.len() as u64),
                (n(2), SECOND.len() as u64)
            ]),
        ],
        "{}",
        dovecot.log()
    );
    let ClientEvent::Uidl(uids) = &events[2] else {
        panic!("{events:?}")
    };
    assert_eq!(uids.len(), 2);
    assert_eq!((uids[0].0, uids[1].0), (n(1), n(2)));
    assert_ne!(uids[0].1, uids[1].1);
    let first_uid = uids[0].1.clone();
    let second_uid = uids[1].1.clone();

    conn.session.retr(n(1)).unwrap();
    assert_eq!(message(&conn.run(), 1), FIRST);
    conn.session.retr(n(2)).unwrap();
    assert_eq!(message(&conn.run(), 2), SECOND);
    conn.session.top(n(2), 1).unwrap();
    assert_eq!(
        message(&conn.run(), 2),
        b"From: carol@kolleg.de\r\nTo: bob@kolleg.de\r\nSubject: Zweite\r\n\r\nline one\r\n"
    );
    conn.session.retr(n(3)).unwrap();
    let events = conn.run();
    assert!(
        matches!(
            &events[..],
            [ClientEvent::Error {
                command: postamt_pop3::Request::Retr,
                ..
            }]
        ),
        "{events:?}"
    );
    conn.session.uidl(Some(n(2))).unwrap();
    assert_eq!(
        conn.run(),
        [ClientEvent::Uidl(vec![(n(2), second_uid.clone())])]
    );
    conn.session.dele(n(1)).unwrap();
    conn.session.quit().unwrap();
    assert_eq!(
        conn.run(),
        [ClientEvent::Deleted(n(1)), ClientEvent::Closed(None)]
    );

    // A new session: message 1 is gone, the other keeps its unique id.
    let mut conn = Conn::login(port);
    conn.session.stat().unwrap();
    conn.session.uidl(None).unwrap();
    assert_eq!(
        conn.run(),
        [
            ClientEvent::Stat {
                count: 1,
                octets: SECOND.len() as u64
            },
            ClientEvent::Uidl(vec![(n(1), second_uid)])
        ]
    );
    assert!(!first_uid.is_empty());
    conn.session.retr(n(1)).unwrap();
    assert_eq!(message(&conn.run(), 1), SECOND);
    conn.session.quit().unwrap();
    assert_eq!(conn.run(), [ClientEvent::Closed(None)]);
    drop(dovecot);
}
