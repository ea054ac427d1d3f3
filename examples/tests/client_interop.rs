//! postamt's SMTP client against a server nobody here wrote: Python's
//! aiosmtpd (from PyPI; `.ci/run` installs it, elsewhere the test says it
//! skipped).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use postamt_examples::client::ClientStream;
use postamt_smtp::{
    ClientConfig, ClientEvent, ClientSession, Envelope, Failure, ForwardPath, Mechanism,
    ReversePath,
};
use postamt_wire::Session;

mod peers;

/// Runs the client until `until` says stop, feeding it what the server sends.
fn pump(
    stream: &mut ClientStream,
    session: &mut ClientSession,
    mut until: impl FnMut(&mut ClientSession, ClientEvent) -> bool,
) {
    let mut buf = vec![0; 16 * 1024];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(event) = session.poll_event() {
            if until(session, event) {
                return;
            }
        }
        out.clear();
        session.poll_transmit(&mut out);
        stream.send(&out).unwrap();
        assert!(Instant::now() < deadline, "the exchange took too long");
        let wait = Some(Instant::now() + Duration::from_secs(5));
        match stream.read_until(&mut buf, wait).unwrap() {
            None => session.handle_timeout(Instant::now()),
            Some(0) => session.receive_eof(Instant::now()),
            Some(n) => session.receive(Instant::now(), &buf[..n]),
        }
    }
}

fn envelope(to: &[&str]) -> Envelope {
    let mut e = Envelope::new(ReversePath::Mailbox("anna@kolleg.de".parse().unwrap()));
    for t in to {
        e = e.to(ForwardPath::Mailbox(t.parse().unwrap()));
    }
    e
}

#[test]
fn client_against_aiosmtpd() {
    let available = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        peers::missing("aiosmtpd", "pip install aiosmtpd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aiosmtpd_server.py");
    let mut server = Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();

    let mut stream =
        ClientStream::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).unwrap();
    let mut session = ClientSession::new(ClientConfig::new("client.example"), Instant::now());
    let mut caps = None;
    pump(&mut stream, &mut session, |_, e| match e {
        ClientEvent::Ready(c) => {
            caps = Some(c);
            true
        }
        other => panic!("{other:?}"),
    });
    let caps = caps.unwrap();
    assert!(
        caps.offers_auth(Mechanism::Plain) && caps.offers_auth(Mechanism::Login),
        "{caps:?}"
    );

    session
        .authenticate(Mechanism::Login, "anna", "wrong")
        .unwrap();
    pump(&mut stream, &mut session, |_, e| {
        matches!(&e, ClientEvent::AuthFailed(r) if r.code() == 535) || panic!("{e:?}")
    });
    session
        .authenticate(Mechanism::Plain, "anna", "geheim")
        .unwrap();
    pump(&mut stream, &mut session, |_, e| {
        e == ClientEvent::Authenticated || panic!("{e:?}")
    });

    let message =
        Bytes::from_static(b"Subject: from postamt\r\n\r\n.leading dot\nbare LF line\r\nend");
    session
        .send_message(envelope(&["bob@kolleg.de", "nobody@kolleg.de"]), message)
        .unwrap();
    let mut report = None;
    pump(&mut stream, &mut session, |_, e| match e {
        ClientEvent::Done(r) => {
            report = Some(r);
            true
        }
        other => panic!("{other:?}"),
    });
    let report = report.unwrap();
    assert_eq!(report.outcome.as_ref().unwrap().code(), 250, "{report:?}");
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].1.code(), 550);

    // All recipients refused: reported, and the session goes on (RSET).
    session
        .send_message(
            envelope(&["nobody@kolleg.de"]),
            Bytes::from_static(b"x\r\n"),
        )
        .unwrap();
    pump(&mut stream, &mut session, |_, e| {
        matches!(&e, ClientEvent::Done(r) if r.outcome == Err(Failure::NoRecipients))
            || panic!("{e:?}")
    });
    session
        .send_message(
            envelope(&["bob@kolleg.de"]),
            Bytes::from_static(b"Subject: two\r\n\r\nsecond\r\n"),
        )
        .unwrap();
    pump(&mut stream, &mut session, |_, e| {
        matches!(&e, ClientEvent::Done(r) if r.outcome.is_ok()) || panic!("{e:?}")
    });
    session.quit().unwrap();
    pump(&mut stream, &mut session, |_, e| {
        e == ClientEvent::Closed(None) || panic!("{e:?}")
    });

    drop(server.stdin.take());
    let _ = server.wait();
    let first = std::fs::read(dir.path().join("1.eml")).unwrap();
    assert_eq!(
        first,
        b"Subject: from postamt\r\n\r\n.leading dot\r\nbare LF line\r\nend\r\n"
    );
    let env = std::fs::read_to_string(dir.path().join("1.env")).unwrap();
    assert_eq!(env, "anna@kolleg.de\nbob@kolleg.de\n");
    let second = std::fs::read(dir.path().join("2.eml")).unwrap();
    assert_eq!(second, b"Subject: two\r\n\r\nsecond\r\n");
}

/// Kills a child process when the test ends, however it ends.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Postfix's smtp-sink (Debian package `postfix`; `.ci/run` installs it):
/// many pipelined transactions on one connection, all accepted.
#[test]
fn client_against_smtp_sink() {
    let sink = "/usr/sbin/smtp-sink";
    if !Path::new(sink).exists() {
        peers::missing(sink, "Debian package postfix");
        return;
    }
    let port = peers::spare_port();
    let _sink = Reaper(
        Command::new(sink)
            .args(["-u", "nobody", &format!("127.0.0.1:{port}"), "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match ClientStream::connect(&addr, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "smtp-sink did not start: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let mut session = ClientSession::new(ClientConfig::new("client.example"), Instant::now());
    pump(&mut stream, &mut session, |_, e| match e {
        ClientEvent::Ready(caps) => {
            assert!(
                caps.pipelining && caps.dsn && caps.enhanced_status_codes,
                "{caps:?}"
            );
            true
        }
        other => panic!("{other:?}"),
    });
    let body = Bytes::from(
        (0..200)
            .map(|i| {
                format!("line {i} of a message; .dots. at the start of the next line\r\n.{i}\r\n")
            })
            .collect::<String>(),
    );
    for round in 0..50 {
        session
            .send_message(
                envelope(&["bob@kolleg.de", "carl@kolleg.de", "dora@kolleg.de"]),
                body.clone(),
            )
            .unwrap();
        pump(&mut stream, &mut session, |_, e| match e {
            ClientEvent::Done(report) => {
                assert_eq!(report.accepted.len(), 3, "round {round}: {report:?}");
                assert!(report.outcome.is_ok(), "round {round}: {report:?}");
                true
            }
            other => panic!("round {round}: {other:?}"),
        });
    }
    session.quit().unwrap();
    pump(&mut stream, &mut session, |_, e| {
        e == ClientEvent::Closed(None) || panic!("{e:?}")
    });
}
