//! Property tests: render-then-parse identity for commands and replies, and a
//! session that never panics and does not care how its input is split.

use std::time::Instant;

use postamt_smtp::{Command, EnhancedCode, Event, Reply, ServerConfig, ServerSession, Session};
use proptest::prelude::*;

fn atom() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}"
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(atom(), 1..4).prop_map(|a| a.join(".")),
        "[a-zA-Z0-9 !#-\\[\\]-~]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4).prop_map(|l| l.join(".")),
        1 => (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255).prop_map(|(a, b, c, d)| format!("[{a}.{b}.{c}.{d}]")),
        1 => Just("[IPv6:2001:db8::1]".to_string()),
    ]
}

fn mailbox() -> impl Strategy<Value = String> {
    (local_part(), domain()).prop_map(|(l, d)| format!("{l}@{d}"))
}

fn xtext() -> impl Strategy<Value = String> {
    "([a-zA-Z0-9!-*,-<>-~]|\\+[0-9A-F][0-9A-F]){1,10}"
}

fn mail_params() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            any::<u32>().prop_map(|n| format!("SIZE={n}")),
            prop_oneof![
                Just("BODY=7BIT"),
                Just("BODY=8BITMIME"),
                Just("BODY=BINARYMIME")
            ]
            .prop_map(String::from),
            Just("SMTPUTF8".to_string()),
            xtext().prop_map(|x| format!("ENVID={x}")),
            prop_oneof![Just("RET=FULL"), Just("RET=HDRS")].prop_map(String::from),
            xtext().prop_map(|x| format!("AUTH={x}")),
            ("X-[A-Z]{1,6}", prop::option::of("[a-z0-9]{1,6}")).prop_map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            }),
        ],
        0..4,
    )
}

fn command_line() -> impl Strategy<Value = String> {
    prop_oneof![
        domain().prop_map(|d| format!("EHLO {d}")),
        domain().prop_map(|d| format!("HELO {d}")),
        domain().prop_map(|d| format!("LHLO {d}")),
        (prop::option::of(mailbox()), mail_params()).prop_map(|(m, p)| {
            let path = m.map_or("<>".to_string(), |m| format!("<{m}>"));
            let mut line = format!("MAIL FROM:{path}");
            let mut seen = Vec::new();
            for p in p {
                // A parameter given twice is an error, not a round trip.
                let keyword = p.split('=').next().unwrap_or_default().to_string();
                if !seen.contains(&keyword) {
                    line.push(' ');
                    line.push_str(&p);
                    seen.push(keyword);
                }
            }
            line
        }),
        (
            mailbox(),
            prop::option::of(Just("NOTIFY=SUCCESS,DELAY")),
            prop::option::of(xtext())
        )
            .prop_map(|(m, n, o)| {
                let mut line = format!("RCPT TO:<{m}>");
                if let Some(n) = n {
                    line.push(' ');
                    line.push_str(n);
                }
                if let Some(o) = o {
                    line.push_str(&format!(" ORCPT=rfc822;{o}"));
                }
                line
            }),
        Just("RCPT TO:<Postmaster>".to_string()),
        Just("DATA".to_string()),
        (any::<u64>(), any::<bool>())
            .prop_map(|(n, l)| format!("BDAT {n}{}", if l { " LAST" } else { "" })),
        Just("RSET".to_string()),
        Just("QUIT".to_string()),
        Just("STARTTLS".to_string()),
        "[a-zA-Z0-9 .@<>]{0,20}".prop_map(|s| format!("NOOP {s}")),
        "[a-zA-Z0-9.@<>][a-zA-Z0-9 .@<>]{0,20}".prop_map(|s| format!("VRFY {s}")),
        (
            "(PLAIN|LOGIN|X-OTHER)",
            prop::option::of("[a-zA-Z0-9+/]{1,20}={0,2}")
        )
            .prop_map(|(m, i)| match i {
                Some(i) => format!("AUTH {m} {i}"),
                None => format!("AUTH {m}"),
            }),
        xclient_attributes().prop_map(|a| format!("XCLIENT {}", a.join(" "))),
    ]
}

/// One to eight XCLIENT attributes, each at most once, in any case.
fn xclient_attributes() -> impl Strategy<Value = Vec<String>> {
    let special = || prop_oneof![Just("[UNAVAILABLE]".to_string())];
    let ip = || {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
            any::<[u8; 16]>().prop_map(|a| format!("IPv6:{}", std::net::Ipv6Addr::from(a))),
            special(),
        ]
    };
    let port = || prop_oneof![any::<u16>().prop_map(|p| p.to_string()), special()];
    // xtext whose decoded text is printable: what HELO and LOGIN may hold.
    let text = || prop_oneof!["([a-zA-Z0-9.@\\[\\]:-]|\\+2B|\\+3D|\\+20){1,12}", special()];
    let name = || {
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4).prop_map(|l| l.join("."))
    };
    (
        prop::option::of(prop_oneof![
            name(),
            special(),
            Just("[TEMPUNAVAIL]".to_string())
        ]),
        prop::option::of(ip()),
        prop::option::of(port()),
        prop::option::of(prop_oneof![
            Just("SMTP".to_string()),
            Just("esmtp".to_string()),
            special()
        ]),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(ip()),
        prop::option::of(port()),
    )
        .prop_filter_map("no attribute", |(n, a, p, pr, h, l, da, dp)| {
            let pairs = [
                ("NAME", n),
                ("addr", a),
                ("Port", p),
                ("PROTO", pr),
                ("HELO", h),
                ("LOGIN", l),
                ("DESTADDR", da),
                ("destport", dp),
            ];
            let attrs: Vec<String> = pairs
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
                .collect();
            (!attrs.is_empty()).then_some(attrs)
        })
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        200u16..600,
        any::<bool>(),
        0u16..1000,
        0u16..1000,
        prop::collection::vec("([a-zA-Z][a-zA-Z0-9 .,:;!?<>-]{0,40})?", 1..5),
    )
        .prop_map(|(code, with_enhanced, s, d, lines)| {
            let class = (code / 100) as u8;
            let enhanced = if with_enhanced && class != 3 {
                EnhancedCode::new(class, s, d)
            } else {
                None
            };
            Reply::multiline(code, enhanced, lines.into_iter().map(Into::into).collect())
        })
}

proptest! {
    #[test]
    fn command_render_then_parse_is_identity(line in command_line()) {
        let command = Command::parse(line.as_bytes());
        prop_assert!(command.is_ok(), "{line:?} did not parse: {command:?}");
        let command = command.unwrap();
        let mut wire = Vec::new();
        command.render(&mut wire);
        prop_assert!(wire.ends_with(b"\r\n"));
        let again = Command::parse(&wire[..wire.len() - 2]);
        prop_assert_eq!(again.as_ref(), Ok(&command), "{}", String::from_utf8_lossy(&wire));
    }

    #[test]
    fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(command) = Command::parse(&line) {
            let mut wire = Vec::new();
            command.render(&mut wire);
            let again = Command::parse(&wire[..wire.len() - 2]);
            prop_assert_eq!(again, Ok(command));
        }
    }

    #[test]
    fn reply_render_then_parse_is_identity(reply in reply(), tail in "[A-Z]{0,5}") {
        let mut wire = Vec::new();
        reply.render(&mut wire);
        let len = wire.len();
        wire.extend_from_slice(tail.as_bytes());
        let parsed = Reply::parse(&wire);
        prop_assert_eq!(parsed, Ok(Some((reply, len))));
        prop_assert_eq!(Reply::parse(&wire[..len - 1]), Ok(None));
    }

    #[test]
    fn session_output_does_not_depend_on_splits(
        pieces in prop::collection::vec(session_piece(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        accept_mask in any::<u64>(),
    ) {
        let input: Vec<u8> = pieces.concat();
        let whole = drive(&input, &[input.len()], accept_mask);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let split = drive(&input, &points, accept_mask);
        prop_assert_eq!(&whole.0, &split.0);
        prop_assert_eq!(&whole.1, &split.1);
        // Every byte of output is a well-formed reply line.
        let mut rest = &whole.0[..];
        while !rest.is_empty() {
            match Reply::parse(rest) {
                Ok(Some((_, used))) => rest = &rest[used..],
                other => prop_assert!(false, "bad output {:?}: {other:?}", String::from_utf8_lossy(rest)),
            }
        }
        // Output stays proportionate to input: no reply storm.
        prop_assert!(whole.0.len() <= 400 + input.len() * 60);
    }
}

fn session_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => command_line().prop_map(|l| format!("{l}\r\n").into_bytes()),
        1 => Just(b"DATA\r\n".to_vec()),
        1 => Just(b"BDAT 5\r\n".to_vec()),
        1 => Just(b"hello\r\n.\r\n".to_vec()),
        1 => Just(b"\r\n.\r\n".to_vec()),
        1 => prop_oneof![Just(b"\n".to_vec()), Just(b"\r".to_vec()), Just(b".".to_vec())],
        1 => prop::collection::vec(any::<u8>(), 0..30),
    ]
}

/// Feeds `input` cut at `points`; returns the output and the events, with
/// message data joined per message (its chunking depends on the split).
fn drive(input: &[u8], points: &[usize], accept_mask: u64) -> (Vec<u8>, Vec<String>) {
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.login_without_tls = true;
    config.extensions.starttls = true;
    config.limits.max_message_size = 300;
    config.limits.max_text_line = 40;
    let mut s = ServerSession::new(config, now);
    s.allow_xclient(true);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut data = Vec::new();
    let mut decisions = 0u32;
    let mut from = 0;
    let mut handshake = false;
    for &to in points {
        if to < from {
            continue;
        }
        s.receive(now, &input[from..to]);
        from = to;
        // Until the handshake is reported nothing fed is obeyed (RFC 3207 §5).
        if handshake {
            assert!(s.poll_event().is_none(), "an event before the handshake");
            assert_eq!(s.poll_transmit(&mut out), 0, "a reply before the handshake");
            continue;
        }
        while let Some(event) = s.poll_event() {
            match event {
                Event::MessageData(bytes) => data.extend_from_slice(&bytes),
                Event::MessageStart => {
                    data.clear();
                    events.push("start".to_string());
                }
                Event::MessageAborted(reason) => {
                    events.push(format!("data {data:?}"));
                    events.push(format!("aborted {reason:?}"));
                }
                Event::StartTls => {
                    handshake = true;
                    events.push("starttls".to_string());
                }
                other => {
                    let decide = matches!(
                        other,
                        Event::Mail { .. }
                            | Event::Rcpt { .. }
                            | Event::Auth { .. }
                            | Event::MessageEnd
                    );
                    if matches!(other, Event::MessageEnd) {
                        events.push(format!("data {data:?}"));
                    }
                    events.push(format!("{other:?}"));
                    if decide {
                        decisions += 1;
                        if accept_mask >> (decisions % 64) & 1 == 1 {
                            s.accept().unwrap();
                        } else {
                            s.reject(Reply::new(550, None, "no")).unwrap();
                        }
                    }
                }
            }
        }
        s.poll_transmit(&mut out);
    }
    (out, events)
}

/// One message through a fresh session, by DATA (`chunks` = None) or by BDAT
/// cut at `chunks`: the message bytes handed out, how it ended, and the
/// reply that settled it.
fn deliver(text: &[u8], chunks: Option<&[usize]>, normalize: bool) -> (Vec<u8>, String, String) {
    let now = Instant::now();
    let mut config = ServerConfig::new("mx.example");
    config.limits.max_text_line = 12;
    if normalize {
        config.bare_line_endings = postamt_smtp::BareLineEndings::Normalize;
    }
    let mut s = ServerSession::new(config, now);
    let mut input =
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n".to_vec();
    match chunks {
        None => {
            input.extend_from_slice(b"DATA\r\n");
            input.extend_from_slice(text);
            input.extend_from_slice(b".\r\n");
        }
        Some(points) => {
            for (i, w) in points.windows(2).enumerate() {
                let last = if i + 2 == points.len() { " LAST" } else { "" };
                input.extend_from_slice(format!("BDAT {}{last}\r\n", w[1] - w[0]).as_bytes());
                input.extend_from_slice(&text[w[0]..w[1]]);
            }
        }
    }
    input.extend_from_slice(b"QUIT\r\n");
    s.receive(now, &input);
    let (mut data, mut end) = (Vec::new(), String::from("none"));
    while let Some(event) = s.poll_event() {
        match event {
            Event::Mail { .. } | Event::Rcpt { .. } => s.accept().unwrap(),
            Event::MessageData(b) => data.extend_from_slice(&b),
            Event::MessageEnd => {
                end = "end".into();
                s.accept().unwrap();
            }
            Event::MessageAborted(r) => end = format!("{r:?}"),
            _ => {}
        }
    }
    let mut out = Vec::new();
    s.poll_transmit(&mut out);
    let out = String::from_utf8(out).unwrap();
    let reply = out
        .lines()
        .find(|l| l.starts_with("250 2.0.0 Message") || l.starts_with("55"))
        .unwrap_or("")
        .to_string();
    (data, end, reply)
}

proptest! {
    /// RFC 3030 BDAT text keeps the rules of DATA text: the same message
    /// gives the same bytes, the same outcome and the same reply however it
    /// is sent and however its chunks are cut (BODY=BINARYMIME aside).
    #[test]
    fn bdat_and_data_agree_on_the_same_message(
        body in prop::collection::vec(
            prop_oneof![4 => Just(b'a'), 1 => Just(b' '), 1 => Just(b'\r'), 1 => Just(b'\n')],
            0..60,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..5),
        normalize in any::<bool>(),
    ) {
        let mut text = body;
        text.extend_from_slice(b"\r\n");
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        points.extend([0, text.len()]);
        points.sort_unstable();
        points.dedup();
        let by_data = deliver(&text, None, normalize);
        prop_assert_ne!(&by_data.2, "");
        let by_bdat = deliver(&text, Some(&points), normalize);
        prop_assert_eq!(&by_bdat, &by_data);
        let one_chunk = deliver(&text, Some(&[0, text.len()]), normalize);
        prop_assert_eq!(&one_chunk, &by_data);
    }
}
