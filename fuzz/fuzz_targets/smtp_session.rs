//! A `ServerSession` fed arbitrary client bytes, with an application that
//! accepts or rejects each decision as the fuzzer says.
//!
//! Checks:
//! - the same bytes at an arbitrary split and byte by byte give the same
//!   output bytes and the same events (message data merged, since its
//!   chunking follows the reads);
//! - the output is a sequence of well-formed replies, `ddd[ -]text CRLF`,
//!   each parsed by `Reply::parse`, multi-line replies never interleaved;
//! - output per input byte is bounded;
//! - with XCLIENT trusted (as the header says), the same holds for sessions
//!   that start over after XCLIENT;
//! - with a small `max_buffered_input` and an application that sits on its
//!   decisions for a few reads, a client that sends more than the limit
//!   while a decision is pending gets the session closed, and a closed
//!   session takes no more input and says nothing more.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postamt_smtp::{BareLineEndings, Event, Protocol, Reply, ServerConfig, ServerSession, Session};

/// The end of the connection, after all input.
#[derive(Debug, Clone, Copy)]
enum End {
    Open,
    Eof,
    Timeout,
}

struct Setup {
    /// The application trusts the client with XCLIENT.
    xclient: bool,
    config: Arc<ServerConfig>,
    small: Arc<ServerConfig>,
    end: End,
    decisions: Vec<u8>,
    splits: Vec<usize>,
}

struct Run {
    output: Vec<u8>,
    events: Vec<Event>,
    /// Bytes handed to `receive`.
    fed: usize,
    decisions: usize,
}

/// The application: answers pending decisions as `decisions` say.
struct App<'a> {
    decisions: &'a [u8],
    answered: usize,
    /// Reads to wait before the pending decision is answered.
    wait: Option<u8>,
    /// Whether decisions may wait (the buffering run).
    lazy: bool,
}

impl App<'_> {
    /// Drains events and answers decisions; returns true after StartTls.
    fn drain(&mut self, session: &mut ServerSession, events: &mut Vec<Event>, force: bool) -> bool {
        let mut tls = false;
        loop {
            while let Some(event) = session.poll_event() {
                tls |= event == Event::StartTls;
                push_event(events, event);
            }
            if session.pending_decision().is_none() {
                self.wait = None;
                return tls;
            }
            let d = self
                .decisions
                .get(self.answered % self.decisions.len().max(1))
                .copied()
                .unwrap_or(0);
            if self.lazy && !force {
                let wait = self.wait.get_or_insert((d >> 4) % 4);
                if *wait > 0 {
                    *wait -= 1;
                    return tls;
                }
            }
            self.wait = None;
            self.answered += 1;
            let result = match d & 7 {
                0..=3 => session.accept(),
                4 => session.accept_with(Reply::new(250, None, "Ok: queued as 4F2A")),
                5 => session.reject(Reply::new(451, None, "Try again later")),
                6 => session.reject(Reply::unknown_user()),
                _ => session.reject(Reply::auth_failed()),
            };
            result.expect("a decision was pending");
        }
    }
}

fn push_event(events: &mut Vec<Event>, event: Event) {
    // Message data is joined, as its chunking follows the reads; the joined
    // bytes, aborted messages included, must match exactly.
    if let (Event::MessageData(new), Some(Event::MessageData(old))) = (&event, events.last_mut()) {
        let mut joined = old.to_vec();
        joined.extend_from_slice(new);
        *old = Bytes::from(joined);
        return;
    }
    assert!(
        !matches!(&event, Event::MessageData(b) if b.is_empty()),
        "empty MessageData event"
    );
    events.push(event);
}

fn run(setup: &Setup, config: &Arc<ServerConfig>, input: &[u8], splits: &[usize], lazy: bool) -> Run {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::clone(config), now);
    session.allow_xclient(setup.xclient);
    let mut app = App {
        decisions: &setup.decisions,
        answered: 0,
        wait: None,
        lazy,
    };
    let mut output = Vec::new();
    let mut events = Vec::new();
    let mut fed = 0;
    let mut rest = input;
    let mut i = 0;
    // Bytes received while a decision was pending: the session holds them all.
    let mut held = 0;
    let limit = config.limits.max_buffered_input;
    let mut tls = app.drain(&mut session, &mut events, false);
    while !rest.is_empty() && !tls {
        let n = splits[i % splits.len()].min(rest.len());
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let was_closed = session.is_closed();
        if session.pending_decision().is_some() {
            held += n;
        } else {
            held = 0;
        }
        session.receive(now, chunk);
        fed += n;
        let before = output.len();
        session.poll_transmit(&mut output);
        if was_closed {
            assert_eq!(output.len(), before, "a closed session answered");
            assert!(session.poll_event().is_none(), "a closed session made an event");
        }
        if held > limit {
            // Closed means closed and drained: first take what the session
            // said on its way out (the transaction it dropped).
            while let Some(event) = session.poll_event() {
                push_event(&mut events, event);
            }
            session.poll_transmit(&mut output);
            assert!(
                session.is_closed(),
                "{held} bytes arrived while a decision was pending, limit {limit}, session still open"
            );
        }
        let answered = app.answered;
        tls = app.drain(&mut session, &mut events, false);
        if app.answered != answered {
            // An answer let the session read what it held.
            held = 0;
        }
        session.poll_transmit(&mut output);
    }
    app.drain(&mut session, &mut events, true);
    match setup.end {
        End::Open => {}
        End::Eof => session.receive_eof(now),
        End::Timeout => {
            // Far past any deadline.
            session.handle_timeout(now + Duration::from_secs(24 * 3600));
        }
    }
    app.drain(&mut session, &mut events, true);
    session.poll_transmit(&mut output);
    Run {
        output,
        events,
        fed,
        decisions: app.answered,
    }
}

/// Checks that `output` is whole replies: lines `ddd[ -]text CRLF`, each
/// reply parsed by `Reply::parse` up to its last line.
fn check_replies(output: &[u8]) {
    let mut pos = 0;
    while pos < output.len() {
        let rest = &output[pos..];
        let lf = memchr(b'\n', rest).unwrap_or_else(|| panic!("unterminated reply line {:?}", text(rest)));
        let line = &rest[..lf + 1];
        assert!(
            line.len() >= 6
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-')
                && line.ends_with(b"\r\n")
                && !line[..line.len() - 2].contains(&b'\r'),
            "malformed reply line {:?} in {:?}",
            text(line),
            text(output)
        );
        match Reply::parse(rest) {
            Ok(Some((_, used))) => pos += used,
            other => panic!("Reply::parse gives {other:?} at {:?}", text(rest)),
        }
    }
}

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_bounds(run: &Run) {
    // The longest fixed answers (HELP, EHLO) are under 64 octets per octet
    // of their command; a decision adds one reply of the application's.
    let bound = 1024 + 64 * run.fed + 160 * run.decisions;
    assert!(
        run.output.len() <= bound,
        "{} octets of output for {} of input and {} decisions",
        run.output.len(),
        run.fed,
        run.decisions
    );
}

/// Reads the setup from the front of the fuzz input.
fn setup(data: &[u8]) -> Option<(Setup, &[u8])> {
    let (head, rest) = data.split_at_checked(5)?;
    let [flags, small_limit, size, line, counts] = *head else {
        return None;
    };
    let ndecisions = usize::from(counts & 0x0f).min(rest.len());
    let (decisions, rest) = rest.split_at(ndecisions);
    let nsplits = usize::from(counts >> 4).min(rest.len());
    let (splits, input) = rest.split_at(nsplits);

    let mut config = if flags & 1 == 0 {
        ServerConfig::new("mx.example")
    } else {
        ServerConfig::lmtp("mx.example")
    };
    debug_assert!(matches!(config.protocol, Protocol::Smtp | Protocol::Lmtp));
    if flags & 2 != 0 {
        config.bare_line_endings = BareLineEndings::Normalize;
    }
    config.extensions.starttls = flags & 4 != 0;
    config.login_without_tls = flags & 8 != 0;
    config.implicit_tls = flags & 32 != 0;
    config.allow_unknown_parameters = flags & 16 != 0;
    config.limits.max_message_size = 16 << (size % 16);
    config.limits.max_text_line = 20 + usize::from(line) * 4;
    if line & 1 != 0 {
        config.limits.max_command_line = 40;
    }
    if size & 0x10 != 0 {
        config.limits.max_errors = 3;
    }
    // Large enough that no split of a fuzz input reaches it: the split
    // comparison must not depend on how much arrives in one read.
    config.limits.max_buffered_input = 1 << 24;
    let mut small = config.clone();
    small.limits.max_buffered_input = 32 + usize::from(small_limit) * 8;
    let end = match flags >> 6 {
        0 => End::Open,
        1 | 3 => End::Eof,
        _ => End::Timeout,
    };
    let splits = splits.iter().map(|&b| usize::from(b) + 1).collect::<Vec<_>>();
    Some((
        Setup {
            xclient: size & 0x20 != 0,
            config: Arc::new(config),
            small: Arc::new(small),
            end,
            decisions: decisions.to_vec(),
            splits: if splits.is_empty() { vec![usize::MAX] } else { splits },
        },
        input,
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some((setup, input)) = setup(data) else {
        return;
    };
    let split = run(&setup, &setup.config, input, &setup.splits, false);
    let bytewise = run(&setup, &setup.config, input, &[1], false);
    check_replies(&split.output);
    check_bounds(&split);
    assert_eq!(
        text(&split.output),
        text(&bytewise.output),
        "output differs between splits {:?} and byte by byte",
        setup.splits
    );
    assert_eq!(split.output, bytewise.output);
    assert_eq!(split.events, bytewise.events, "events differ between splits");

    let lazy = run(&setup, &setup.small, input, &setup.splits, true);
    check_replies(&lazy.output);
    check_bounds(&lazy);
});
