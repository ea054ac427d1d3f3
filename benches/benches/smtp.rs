//! SMTP benchmarks, each group measuring postamt and stalwart's `smtp-proto`
//! on the same input in the same run, so ratios are read from one run.
//!
//! Run: `cargo bench -p postamt-benches --bench smtp -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use postamt_benches::{
    EHLO_REPLY, dot_stuffed_message, smtp_command_lines, smtp_command_lines_crlf,
    smtp_pipelined_session,
};
use postamt_smtp::{Command, Event, Reply, ServerConfig, ServerSession};
use postamt_wire::{BareLineEndings, Decoded, DotDecoder, Session};
use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, Request};

const READ: usize = 16 * 1024;

/// 1. One command line at a time, as each parser wants it.
fn command_parse(c: &mut Criterion) {
    let ours = smtp_command_lines();
    let theirs = smtp_command_lines_crlf();
    for line in &ours {
        Command::parse(line).unwrap_or_else(|e| panic!("postamt refused {line:?}: {e}"));
    }
    for line in &theirs {
        Request::parse(&mut line.iter())
            .unwrap_or_else(|e| panic!("smtp-proto refused {line:?}: {e}"));
    }
    let mut g = c.benchmark_group("smtp_command_parse_mix");
    g.throughput(Throughput::Elements(ours.len() as u64));
    g.bench_function("postamt Command::parse", |b| {
        b.iter(|| {
            for line in &ours {
                let _ = black_box(Command::parse(black_box(line)));
            }
        })
    });
    g.bench_function("smtp-proto Request::parse", |b| {
        b.iter(|| {
            for line in &theirs {
                let _ = black_box(Request::parse(&mut black_box(line).iter()));
            }
        })
    });
    g.finish();
}

/// Runs our session over the whole pipelined buffer, accepting every decision;
/// returns the output and the message bytes seen.
fn run_session(config: &Arc<ServerConfig>, input: &[u8], now: Instant) -> (Vec<u8>, usize) {
    let mut session = ServerSession::new(Arc::clone(config), now);
    session.receive(now, input);
    let mut message = 0;
    while let Some(event) = session.poll_event() {
        match event {
            Event::Mail { .. } | Event::Rcpt { .. } | Event::MessageEnd => {
                session.accept().expect("a decision is pending")
            }
            Event::MessageData(bytes) => message += bytes.len(),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(1024);
    session.poll_transmit(&mut out);
    (out, message)
}

/// smtp-proto has no session: its request parser and DATA receiver over the
/// same pipelined buffer; returns the number of requests and message bytes.
fn run_proto_parser(input: &[u8], message: &mut Vec<u8>) -> usize {
    let mut bytes = input.iter();
    let mut requests = 0;
    while !bytes.as_slice().is_empty() {
        let request = Request::parse(&mut bytes).expect("smtp-proto parses the mix");
        requests += 1;
        if let Request::Data = request {
            message.clear();
            assert!(DataReceiver::new().ingest(&mut bytes, message));
        }
        black_box(request);
    }
    requests
}

/// 2. The mix pipelined through a whole session.
fn pipelined_session(c: &mut Criterion) {
    let (input, commands) = smtp_pipelined_session();
    let config = Arc::new(ServerConfig::new("mx.example.net"));
    let now = Instant::now();
    let (out, message) = run_session(&config, &input, now);
    let text = String::from_utf8(out).unwrap();
    assert!(message > 0, "no message data:\n{text}");
    assert!(
        text.ends_with("221 2.0.0 mx.example.net See you later\r\n"),
        "{text}"
    );
    assert!(!text.contains("\r\n5"), "an error reply:\n{text}");
    let mut buf = Vec::with_capacity(4096);
    assert_eq!(run_proto_parser(&input, &mut buf), commands);

    let mut g =
        c.benchmark_group("smtp_pipelined_mix (smtp-proto: parser+DataReceiver, no session)");
    g.throughput(Throughput::Elements(commands as u64));
    g.bench_function("postamt ServerSession", |b| {
        b.iter(|| black_box(run_session(&config, black_box(&input), now)))
    });
    g.bench_function("smtp-proto Request::parse+DataReceiver", |b| {
        b.iter(|| black_box(run_proto_parser(black_box(&input), &mut buf)))
    });
    g.finish();
}

/// 3. A 10-line EHLO reply.
fn ehlo_reply(c: &mut Criterion) {
    let input = EHLO_REPLY.as_bytes();
    let (reply, used) = Reply::parse(input).unwrap().unwrap();
    assert_eq!(
        (reply.code(), reply.lines().count(), used),
        (250, 10, input.len())
    );
    let theirs = ResponseReceiver::default()
        .parse(&mut input.iter())
        .unwrap();
    assert_eq!(theirs.code, 250);
    assert_eq!(theirs.message.lines().count(), 10);
    EhloResponse::parse(&mut input.iter()).unwrap();

    let mut g = c.benchmark_group("smtp_ehlo_reply_parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("postamt Reply::parse", |b| {
        b.iter(|| black_box(Reply::parse(black_box(input))))
    });
    g.bench_function("smtp-proto ResponseReceiver::parse", |b| {
        b.iter(|| black_box(ResponseReceiver::default().parse(&mut black_box(input).iter())))
    });
    g.bench_function(
        "smtp-proto EhloResponse::parse (also decodes capabilities)",
        |b| b.iter(|| black_box(EhloResponse::parse(&mut black_box(input).iter()))),
    );
    g.finish();
}

fn decode_ours(input: &[u8], read: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut decoder = DotDecoder::new(BareLineEndings::Reject, 1000);
    let mut offset = 0;
    for chunk in input.chunks(read) {
        match decoder.decode(chunk, out) {
            Decoded::Incomplete => offset += chunk.len(),
            Decoded::Complete { consumed } => return offset + consumed,
        }
    }
    panic!("no end of data");
}

fn decode_theirs(input: &[u8], read: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut receiver = DataReceiver::new();
    let mut offset = 0;
    for chunk in input.chunks(read) {
        let mut bytes = chunk.iter();
        if receiver.ingest(&mut bytes, out) {
            return offset + chunk.len() - bytes.as_slice().len();
        }
        offset += chunk.len();
    }
    panic!("no end of data");
}

fn same(expected: &[u8], got: &[u8], who: &str) {
    if let Some(at) = expected.iter().zip(got).position(|(a, b)| a != b) {
        panic!(
            "{who} decodes differently at {at}: {:?}",
            String::from_utf8_lossy(&got[at.saturating_sub(20)..(at + 20).min(got.len())])
        );
    }
    assert_eq!(
        expected.len(),
        got.len(),
        "{who} decodes a different length"
    );
}

/// 4. DATA decoding, whole and in 16 KiB reads, against the raw memmem scan.
fn data_decode(c: &mut Criterion) {
    for (name, size) in [("1MiB", 1 << 20), ("10MiB", 10 << 20)] {
        let input = dot_stuffed_message(size, 0x5eed);
        let mut out = Vec::with_capacity(input.len());
        let mut check = Vec::with_capacity(input.len());
        assert_eq!(decode_ours(&input, input.len(), &mut out), input.len());
        assert_eq!(decode_ours(&input, READ, &mut check), input.len());
        same(&out, &check, "postamt in reads");
        assert_eq!(decode_theirs(&input, input.len(), &mut check), input.len());
        same(&out, &check, "smtp-proto");
        assert_eq!(decode_theirs(&input, READ, &mut check), input.len());
        same(&out, &check, "smtp-proto in reads");

        let mut g = c.benchmark_group(format!("smtp_data_decode_{name}"));
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.sample_size(if size > 1 << 20 { 10 } else { 30 });
        g.bench_function("postamt DotDecoder whole", |b| {
            b.iter(|| black_box(decode_ours(black_box(&input), input.len(), &mut out)))
        });
        g.bench_function("postamt DotDecoder 16KiB reads", |b| {
            b.iter(|| black_box(decode_ours(black_box(&input), READ, &mut out)))
        });
        g.bench_function("smtp-proto DataReceiver whole", |b| {
            b.iter(|| black_box(decode_theirs(black_box(&input), input.len(), &mut out)))
        });
        g.bench_function("smtp-proto DataReceiver 16KiB reads", |b| {
            b.iter(|| black_box(decode_theirs(black_box(&input), READ, &mut out)))
        });
        g.bench_function("memchr::memmem::find CRLF.CRLF (scan only)", |b| {
            b.iter(|| black_box(memchr::memmem::find(black_box(&input), b"\r\n.\r\n")))
        });
        g.finish();
    }
}

/// A whole transaction from our client to our server in memory: MAIL, RCPT
/// and DATA pipelined, a 2 KiB message, the 250 (transactions per second).
fn client_transaction(c: &mut Criterion) {
    use bytes::Bytes;
    use postamt_smtp::{
        ClientConfig, ClientEvent, ClientSession, Envelope, ForwardPath, ReversePath,
    };

    let now = Instant::now();
    let mut client = ClientSession::new(ClientConfig::new("client.example"), now);
    let mut server = ServerSession::new(Arc::new(ServerConfig::new("mx.example")), now);
    let mut wire = Vec::new();
    let mut pump = |client: &mut ClientSession, server: &mut ServerSession| {
        let mut done = false;
        loop {
            wire.clear();
            client.poll_transmit(&mut wire);
            server.receive(now, &wire);
            while let Some(e) = server.poll_event() {
                if matches!(
                    e,
                    Event::Mail { .. } | Event::Rcpt { .. } | Event::MessageEnd
                ) {
                    server.accept().unwrap();
                }
            }
            wire.clear();
            server.poll_transmit(&mut wire);
            if wire.is_empty() {
                return done;
            }
            client.receive(now, &wire);
            while let Some(e) = client.poll_event() {
                done |= matches!(e, ClientEvent::Done(ref r) if r.outcome.is_ok());
            }
        }
    };
    pump(&mut client, &mut server);
    let envelope = Envelope::new(ReversePath::Mailbox("anna@example.org".parse().unwrap()))
        .to(ForwardPath::Mailbox("bob@mx.example".parse().unwrap()));
    let body = Bytes::from(
        "Subject: benchmark\r\n\r\n".to_string()
            + &"0123456789abcdef .. some text, 60 octets of it ......\r\n".repeat(36),
    );
    let mut g = c.benchmark_group("smtp_client_transaction_in_memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("postamt ClientSession -> ServerSession", |b| {
        b.iter(|| {
            client.send_message(envelope.clone(), body.clone()).unwrap();
            assert!(pump(&mut client, &mut server));
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    client_transaction,
    command_parse,
    pipelined_session,
    ehlo_reply,
    data_decode
);
criterion_main!(benches);
