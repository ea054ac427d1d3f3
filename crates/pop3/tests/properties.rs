//! Properties: render then parse is identity for commands and responses;
//! stuff then decode is identity for any bytes, however split; any input to a
//! session gives responses, never a panic, within its memory bounds, and the
//! same output however it is split.

use std::time::Instant;

use postamt_pop3::response::MultilineEncoder;
use postamt_pop3::{
    Command, Event, Maildrop, MessageFlow, MessageNumber, MultiLine, MultilineDecoder, Response,
    ResponseCode, Secret, ServerConfig, ServerSession, Session, Status,
};
use postamt_wire::Decoded;
use proptest::prelude::*;

fn number() -> impl Strategy<Value = MessageNumber> {
    prop_oneof![1u32..20, any::<u32>().prop_filter("nonzero", |n| *n > 0)]
        .prop_map(|n| MessageNumber::new(n).unwrap())
}

/// Printable text without spaces, up to 40 octets, UTF-8 allowed.
fn word() -> impl Strategy<Value = String> {
    "[!-~äöüß€]{1,13}".prop_filter("40 octets", |w| w.len() <= 40)
}

/// Owned form of a command, since `Command` borrows.
#[derive(Debug, Clone)]
enum Owned {
    User(String),
    Pass(String),
    Apop(String, String),
    Auth(String, Option<String>),
    Plain(Command<'static>),
}

fn command() -> impl Strategy<Value = Owned> {
    prop_oneof![
        word().prop_map(Owned::User),
        // The password is the rest of the line: spaces anywhere, but not empty
        // and not a lone space.
        "[ -~]{1,60}"
            .prop_filter("not blank", |p| p != " ")
            .prop_map(Owned::Pass),
        (word(), "[0-9a-fA-F]{32}").prop_map(|(n, d)| Owned::Apop(n, d)),
        (
            "[A-Za-z0-9-]{1,20}",
            proptest::option::of("[A-Za-z0-9+/=]{1,200}")
        )
            .prop_map(|(m, i)| Owned::Auth(m, i)),
        Just(Owned::Plain(Command::Quit)),
        Just(Owned::Plain(Command::Stat)),
        Just(Owned::Plain(Command::Noop)),
        Just(Owned::Plain(Command::Rset)),
        Just(Owned::Plain(Command::Capa)),
        Just(Owned::Plain(Command::Stls)),
        Just(Owned::Plain(Command::Utf8)),
        proptest::option::of(number()).prop_map(|n| Owned::Plain(Command::List(n))),
        proptest::option::of(number()).prop_map(|n| Owned::Plain(Command::Uidl(n))),
        number().prop_map(|n| Owned::Plain(Command::Retr(n))),
        number().prop_map(|n| Owned::Plain(Command::Dele(n))),
        (number(), any::<u32>())
            .prop_map(|(message, lines)| Owned::Plain(Command::Top { message, lines })),
    ]
}

fn borrow(owned: &Owned) -> Command<'_> {
    match owned {
        Owned::User(u) => Command::User(u),
        Owned::Pass(p) => Command::Pass(Secret::new(p)),
        Owned::Apop(n, d) => Command::Apop {
            name: n,
            digest: Secret::new(d),
        },
        Owned::Auth(m, i) => Command::Auth {
            mechanism: m,
            initial_response: i.as_deref().map(Secret::new),
        },
        Owned::Plain(c) => c.clone(),
    }
}

fn code() -> impl Strategy<Value = ResponseCode> {
    prop_oneof![
        Just(ResponseCode::InUse),
        Just(ResponseCode::LoginDelay),
        Just(ResponseCode::SysTemp),
        Just(ResponseCode::SysPerm),
        Just(ResponseCode::Auth),
        Just(ResponseCode::Utf8),
        "[A-Z0-9-]{1,10}(/[A-Z0-9-]{1,10}){0,2}".prop_map(|c| ResponseCode::new(&c).unwrap()),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    // Text that does not open with `[` (that would read as a code).
    let text = "([ -Z\\\\-~äé][ -~äé]{0,60})?";
    prop_oneof![
        (proptest::option::of(code()), text).prop_map(|(c, t)| Response::new(Status::Ok, c, t)),
        (proptest::option::of(code()), text).prop_map(|(c, t)| Response::new(Status::Err, c, t)),
        "[A-Za-z0-9+/=]{0,80}".prop_map(Response::continuation),
    ]
}

/// What the encoder promises to keep: the bytes with each bare CR or LF made
/// CRLF, and a final CRLF added when missing.
fn normalized(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'.'),
            2 => Just(b'\r'),
            2 => Just(b'\n'),
        ],
        0..400,
    )
}

fn cut(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_render_then_parse(owned in command()) {
        let command = borrow(&owned);
        let mut line = Vec::new();
        command.render(&mut line);
        prop_assert!(line.ends_with(b"\r\n"));
        let parsed = Command::parse(&line[..line.len() - 2]);
        prop_assert_eq!(parsed, Ok(command));
    }

    #[test]
    fn response_render_then_parse(response in response(), trailing in "[ -~]{0,10}") {
        let mut line = Vec::new();
        response.render(&mut line);
        let len = line.len();
        line.extend_from_slice(trailing.as_bytes());
        let parsed = Response::parse(&line);
        prop_assert_eq!(parsed, Ok(Some((response, len))));
    }

    #[test]
    fn multiline_render_then_parse(lines in prop::collection::vec("[ -~]{0,30}", 0..10)) {
        let mut body = Vec::new();
        for line in &lines {
            body.extend_from_slice(line.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        let m = MultiLine::new(Response::ok("follows"), body);
        let mut out = Vec::new();
        m.render(&mut out);
        let parsed = MultiLine::parse(&out);
        prop_assert_eq!(parsed, Ok(Some((m.clone(), out.len()))));
        let back: Vec<&[u8]> = m.lines().collect();
        let expected: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn stuff_then_decode(
        input in message_bytes(),
        enc_cuts in prop::collection::vec(any::<usize>(), 0..8),
        dec_cuts in prop::collection::vec(any::<usize>(), 0..8),
        after in message_bytes(),
    ) {
        let mut encoder = MultilineEncoder::new();
        let mut wire = Vec::new();
        let points = cut(input.len(), &enc_cuts);
        for w in points.windows(2) {
            encoder.encode(&input[w[0]..w[1]], &mut wire);
        }
        encoder.finish(&mut wire);
        let end = wire.len();
        wire.extend_from_slice(&after);
        let mut decoder = MultilineDecoder::new();
        let mut out = Vec::new();
        let mut consumed_total = None;
        let points = cut(wire.len(), &dec_cuts);
        for w in points.windows(2) {
            if let Decoded::Complete { consumed } = decoder.decode(&wire[w[0]..w[1]], &mut out) {
                consumed_total = Some(w[0] + consumed);
                break;
            }
        }
        prop_assert_eq!(consumed_total, Some(end));
        prop_assert_eq!(out, normalized(&input));
    }

    #[test]
    fn any_input_is_answered_within_bounds(
        pieces in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(vec![
                    "USER bob\r\n", "PASS topSecret\r\n", "PASS x\r\n", "STAT\r\n", "LIST\r\n",
                    "LIST 2\r\n", "RETR 1\r\n", "RETR 2\r\n", "TOP 1 1\r\n", "TOP 2 0\r\n",
                    "DELE 1\r\n", "RSET\r\n", "NOOP\r\n", "UIDL\r\n", "CAPA\r\n", "QUIT\r\n",
                    "AUTH PLAIN\r\n", "AGJvYgB0b3BTZWNyZXQ=\r\n", "*\r\n", "UTF8\r\n",
                    "APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n",
                ]).prop_map(|s| s.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 0..40),
                1 => prop::collection::vec(prop_oneof![Just(b'x'), Just(b'\r'), Just(b'\n')], 0..600),
            ],
            0..40,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let input: Vec<u8> = pieces.concat();
        let whole = drive(&input, &[], 1 << 20);
        let split = drive(&input, &cuts, 1 << 20);
        let bytewise = drive(&input, &(0..input.len()).collect::<Vec<_>>(), 1);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(&whole, &bytewise);
    }
}

const MESSAGE: &[u8] = b"Subject: x\r\n\r\n.dot\r\nline\r\n";

/// Drives a session with `input` cut at `cuts`, answering every decision in a
/// fixed way, and checks the memory bounds after every step. Returns the
/// output and a description of the events.
fn drive(input: &[u8], cuts: &[usize], high_water: usize) -> (String, Vec<String>, bool) {
    let now = Instant::now();
    let mut config = ServerConfig::new();
    config.extensions.stls = true;
    config.login_without_tls = true;
    config.limits.output_high_water = high_water;
    config.limits.max_buffered_input = 4096;
    let cap = 12288;
    let mut s = ServerSession::with_apop(config, now, "<1.2@example.org>".parse().unwrap());
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut message: Option<usize> = None;
    let mut pump = |s: &mut ServerSession, out: &mut Vec<u8>| loop {
        let mut progress = false;
        while let Some(event) = s.poll_event() {
            progress = true;
            events.push(format!("{event:?}"));
            match event {
                Event::Login { password, .. } => {
                    if password.expose() == "topSecret" {
                        let mut m = Maildrop::new();
                        m.push(MESSAGE.len() as u64, "a".parse().unwrap()).unwrap();
                        m.push(MESSAGE.len() as u64, "b".parse().unwrap()).unwrap();
                        s.accept_login(m).unwrap();
                    } else {
                        s.reject_login().unwrap();
                    }
                }
                Event::Apop { .. } => s.maildrop_locked().unwrap(),
                Event::Auth { .. } => s.reject_login().unwrap(),
                Event::Retrieve { .. } => message = Some(0),
                Event::Commit { .. } => s.commit_done().unwrap(),
                // Whether bytes after STLS came before the handshake depends on
                // timing, not on the byte stream; here the handshake never
                // comes, so all of them are dropped.
                Event::StartTls => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        while s.wants_message_bytes() {
            progress = true;
            let offset = message.unwrap();
            if offset == MESSAGE.len() {
                s.message_end().unwrap();
                message = None;
            } else {
                let n = 5.min(MESSAGE.len() - offset);
                match s.message_chunk(&MESSAGE[offset..offset + n]).unwrap() {
                    MessageFlow::Continue => message = Some(offset + n),
                    MessageFlow::Finished => message = None,
                }
            }
        }
        assert!(s.buffered_input() <= cap, "input {}", s.buffered_input());
        assert!(
            s.buffered_output() <= high_water + 1024,
            "output {}",
            s.buffered_output()
        );
        let mut buf = Vec::new();
        let n = s.poll_transmit(&mut buf);
        out.extend_from_slice(&buf);
        if n == 0 && !progress {
            break;
        }
    };
    pump(&mut s, &mut out);
    let points = cut(input.len(), cuts);
    for w in points.windows(2) {
        s.receive(now, &input[w[0]..w[1]]);
        pump(&mut s, &mut out);
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        events,
        s.is_closed(),
    )
}

proptest! {
    /// One rule for line ends: a message of any bytes, listed at
    /// `crlf_size`, is sent by RETR as exactly that many octets between the
    /// `+OK` line and the final dot (after unstuffing), however it is fed.
    #[test]
    fn listed_size_is_what_retr_sends(
        message in prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()],
            0..200,
        ),
        step in 1usize..17,
    ) {
        let now = Instant::now();
        let mut config = ServerConfig::new();
        config.login_without_tls = true;
        let mut s = ServerSession::new(config, now);
        s.receive(now, b"USER u\r\nPASS p\r\nLIST 1\r\nRETR 1\r\n");
        let size = postamt_wire::crlf_size(&message);
        let mut out = Vec::new();
        loop {
            let mut progress = false;
            while let Some(event) = s.poll_event() {
                progress = true;
                match event {
                    Event::Login { .. } => {
                        let mut m = Maildrop::new();
                        m.push(size, "id".parse().unwrap()).unwrap();
                        s.accept_login(m).unwrap();
                    }
                    Event::Retrieve { .. } => {
                        for chunk in message.chunks(step) {
                            prop_assert_eq!(s.message_chunk(chunk).unwrap(), MessageFlow::Continue);
                        }
                        s.message_end().unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if s.poll_transmit(&mut out) == 0 && !progress {
                break;
            }
        }
        let head = format!(
            "+OK POP3 server ready\r\n+OK Now send your password with PASS\r\n\
             +OK Logged in, 1 message ({size} octets)\r\n+OK 1 {size}\r\n+OK {size} octets\r\n"
        );
        prop_assert!(out.starts_with(head.as_bytes()));
        let mut decoder = postamt_wire::DotDecoder::new(postamt_wire::BareLineEndings::Reject, usize::MAX);
        let mut text = Vec::new();
        let rest = &out[head.len()..];
        prop_assert_eq!(decoder.decode(rest, &mut text), Decoded::Complete { consumed: rest.len() });
        prop_assert_eq!(text.len() as u64, size);
    }
}
