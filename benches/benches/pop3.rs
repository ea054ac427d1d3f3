//! POP3 benchmarks. Where `pop3-codec` does the same work (command parsing,
//! decoding a multi-line RETR response) the same group measures it on the same
//! input, so ratios are read from one run. It has no server side and no
//! stuffing encoder, so the RETR-through-the-session group measures postamt
//! alone.
//!
//! Run: `cargo bench -p postamt-benches --bench pop3 -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use postamt_pop3::response::MultilineEncoder;
use postamt_pop3::{
    ClientConfig, ClientEvent, ClientSession, Command, Decoded, Event, Maildrop, MessageFlow,
    MessageNumber, MultilineDecoder, Response, ServerConfig, ServerSession,
};
use postamt_wire::Session;

/// The nine commands of the classic session, without CRLF for postamt (its
/// parser sees framed lines) and with it for pop3-codec (which frames itself).
const CLASSIC: [&str; 9] = [
    "USER bob",
    "PASS topSecret",
    "STAT",
    "LIST",
    "RETR 1",
    "DELE 1",
    "NOOP",
    "RSET",
    "QUIT",
];

/// How much the application reads from its store at a time.
const READ: usize = 64 * 1024;

/// A message of about `size` octets: header, then lines of 20 to 99 octets,
/// every 41st starting with a dot. With `binary`, the text holds octets that
/// are not UTF-8.
fn message(size: usize, binary: bool) -> Vec<u8> {
    let mut m =
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: A long one\r\n\r\n".to_vec();
    let mut i = 0usize;
    while m.len() < size {
        let len = 20 + (i * 37) % 80;
        if i.is_multiple_of(41) {
            m.push(b'.');
        }
        for j in 0..len {
            let b = b'a' + ((i + j) % 26) as u8;
            m.push(if binary && j % 17 == 5 { 0x80 | b } else { b });
        }
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

fn command_parse(c: &mut Criterion) {
    let theirs: Vec<Vec<u8>> = CLASSIC
        .iter()
        .map(|l| format!("{l}\r\n").into_bytes())
        .collect();
    for line in CLASSIC {
        Command::parse(line.as_bytes()).expect("postamt parses the classic commands");
    }
    for line in &theirs {
        pop3_codec::parse::command(line).expect("pop3-codec parses the classic commands");
    }
    let mut g = c.benchmark_group("pop3_command_parse_classic");
    g.throughput(Throughput::Elements(CLASSIC.len() as u64));
    g.bench_function("postamt Command::parse", |b| {
        b.iter(|| {
            for line in CLASSIC {
                let _ = black_box(Command::parse(black_box(line.as_bytes())));
            }
        })
    });
    g.bench_function("pop3-codec parse::command", |b| {
        b.iter(|| {
            for line in &theirs {
                let _ = black_box(pop3_codec::parse::command(black_box(line)));
            }
        })
    });
    g.finish();
}

/// A session logged in with one message of `size` octets.
fn logged_in(size: usize, now: Instant) -> ServerSession {
    let mut s = ServerSession::new(Arc::new(ServerConfig::default()), now);
    s.receive(now, b"USER bob\r\nPASS topSecret\r\n");
    match s.poll_event() {
        Some(Event::Login { .. }) => {}
        other => panic!("expected a login, got {other:?}"),
    }
    let mut maildrop = Maildrop::new();
    maildrop.push(size as u64, "uid-1").expect("valid uid");
    s.accept_login(maildrop).expect("login pending");
    let mut sink = Vec::new();
    while s.poll_transmit(&mut sink) > 0 {}
    s
}

/// One RETR through the session: the command in, the message streamed in
/// reads of [`READ`] octets while the session wants them, the output drained
/// into `buf` (swapped, not copied, as `poll_transmit` does into an empty
/// buffer). Returns the output octets.
fn retr(s: &mut ServerSession, now: Instant, text: &[u8], buf: &mut Vec<u8>) -> usize {
    s.receive(now, b"RETR 1\r\n");
    match s.poll_event() {
        Some(Event::Retrieve { .. }) => {}
        other => panic!("expected a retrieve, got {other:?}"),
    }
    let mut offset = 0;
    let mut total = 0;
    let mut ended = false;
    loop {
        while !ended && s.wants_message_bytes() {
            if offset == text.len() {
                s.message_end().expect("message pending");
                ended = true;
            } else {
                let n = READ.min(text.len() - offset);
                let flow = s
                    .message_chunk(&text[offset..offset + n])
                    .expect("message pending");
                debug_assert_eq!(flow, MessageFlow::Continue);
                offset += n;
            }
        }
        buf.clear();
        let n = s.poll_transmit(buf);
        black_box(&buf[..]);
        total += n;
        if n == 0 && ended {
            return total;
        }
    }
}

fn retr_through_session(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("pop3_retr_session");
    for (name, size) in [("100KiB", 100 * 1024), ("10MiB", 10 * 1024 * 1024)] {
        let text = message(size, true);
        let mut s = logged_in(text.len(), now);
        let mut buf = Vec::new();
        let stuffed = retr(&mut s, now, &text, &mut buf);
        assert!(stuffed > text.len());
        g.throughput(Throughput::Bytes(stuffed as u64));
        g.bench_function(BenchmarkId::new("postamt ServerSession RETR", name), |b| {
            b.iter(|| retr(&mut s, now, black_box(&text), &mut buf))
        });
        // The stuffing encoder alone, on the same reads, to show what the
        // session adds to it.
        let mut out = Vec::with_capacity(stuffed);
        g.bench_function(
            BenchmarkId::new("postamt-wire DotEncoder alone", name),
            |b| {
                b.iter(|| {
                    out.clear();
                    let mut encoder = MultilineEncoder::new();
                    for chunk in black_box(&text).chunks(READ) {
                        encoder.encode(chunk, &mut out);
                    }
                    encoder.finish(&mut out);
                    black_box(out.len())
                })
            },
        );
    }
    g.finish();
}

fn multiline_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("pop3_multiline_decode");
    for (name, size) in [("100KiB", 100 * 1024), ("10MiB", 10 * 1024 * 1024)] {
        // ASCII, so pop3-codec (which wants UTF-8 lines) can read it too.
        let text = message(size, false);
        let mut response = b"+OK message follows\r\n".to_vec();
        let head = response.len();
        let mut encoder = MultilineEncoder::new();
        encoder.encode(&text, &mut response);
        encoder.finish(&mut response);
        let mut out = Vec::with_capacity(text.len());
        let mut decoder = MultilineDecoder::new();
        assert_eq!(
            decoder.decode(&response[head..], &mut out),
            Decoded::Complete {
                consumed: response.len() - head
            }
        );
        assert!(out == text);
        let (rest, _) = pop3_codec::parse::response_retr(&response).expect("pop3-codec decodes it");
        assert!(rest.is_empty());
        g.throughput(Throughput::Bytes(response.len() as u64));
        g.bench_function(BenchmarkId::new("postamt MultilineDecoder", name), |b| {
            b.iter(|| {
                out.clear();
                let input = black_box(&response[..]);
                let Ok(Some((_, head))) = Response::parse(input) else {
                    unreachable!("the status line parses")
                };
                let mut decoder = MultilineDecoder::new();
                let done = decoder.decode(&input[head..], &mut out);
                black_box((done, out.len()))
            })
        });
        g.bench_function(BenchmarkId::new("pop3-codec response_retr", name), |b| {
            b.iter(|| black_box(pop3_codec::parse::response_retr(black_box(&response))))
        });
    }
    g.finish();
}

/// A client session that has read the greeting and CAPA and logged in.
fn client_logged_in(now: Instant) -> ClientSession {
    let mut client = ClientSession::new(ClientConfig::default(), now);
    client.receive(now, b"+OK ready\r\n+OK\r\nUSER\r\nPIPELINING\r\n.\r\n");
    client
        .login_user("bob", "topSecret")
        .expect("ready for USER");
    client.receive(now, b"+OK\r\n+OK logged in\r\n");
    while let Some(event) = client.poll_event() {
        assert!(matches!(
            event,
            ClientEvent::Ready(_) | ClientEvent::LoggedIn
        ));
    }
    assert!(client.is_logged_in());
    let mut wire = Vec::new();
    client.poll_transmit(&mut wire);
    assert_eq!(wire, b"CAPA\r\nUSER bob\r\nPASS topSecret\r\n");
    client
}

/// RETR's response fed to the client in reads of 64 KiB, the text coming
/// out as `MessageData` pieces; returns the octets of text.
fn client_retr(
    client: &mut ClientSession,
    now: Instant,
    response: &[u8],
    wire: &mut Vec<u8>,
) -> usize {
    client
        .retr(MessageNumber::new(1).expect("1 is a message number"))
        .expect("logged in");
    wire.clear();
    client.poll_transmit(wire);
    let mut text = 0;
    let mut ended = false;
    for read in response.chunks(READ) {
        client.receive(now, read);
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::MessageData(bytes) => text += black_box(bytes).len(),
                ClientEvent::MessageEnd => ended = true,
                ClientEvent::MessageStart(_) => {}
                other => unreachable!("{other:?}"),
            }
        }
    }
    assert!(ended);
    text
}

/// The client's RETR decoding through `ClientSession`: status line, then the
/// stuffed text unstuffed and handed out as `Bytes` pieces, never collected.
fn client_retr_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("pop3_client_retr");
    let size = 10 * 1024 * 1024;
    let text = message(size, true);
    let mut response = b"+OK message follows\r\n".to_vec();
    let mut encoder = MultilineEncoder::new();
    encoder.encode(&text, &mut response);
    encoder.finish(&mut response);
    let now = Instant::now();
    let mut client = client_logged_in(now);
    let mut wire = Vec::new();
    assert_eq!(
        client_retr(&mut client, now, &response, &mut wire),
        text.len()
    );
    assert_eq!(wire, b"RETR 1\r\n");
    g.throughput(Throughput::Bytes(response.len() as u64));
    g.bench_function(BenchmarkId::new("postamt ClientSession", "10MiB"), |b| {
        b.iter(|| {
            black_box(client_retr(
                &mut client,
                now,
                black_box(&response),
                &mut wire,
            ))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    command_parse,
    retr_through_session,
    multiline_decode,
    client_retr_decode
);
criterion_main!(benches);
