//! The harness checked against a tiny line-echo session.

use super::*;

/// Echoes each CRLF line as `> line`; `BYE` ends it, `TLS` asks for a
/// handshake (and ignores input until then), `HOLD` waits for a decision.
#[derive(Default)]
struct Echo {
    buf: Vec<u8>,
    out: Vec<u8>,
    events: std::collections::VecDeque<String>,
    ended: bool,
    tls_due: bool,
    holding: bool,
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct NoHandshake;

impl std::fmt::Display for NoHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no handshake due")
    }
}

impl std::error::Error for NoHandshake {}

impl Echo {
    fn process(&mut self) {
        while !self.ended && !self.tls_due && !self.holding {
            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
            match line.as_slice() {
                b"BYE" => {
                    self.out.extend_from_slice(b"> bye\r\n");
                    self.events.push_back("bye".into());
                    self.ended = true;
                }
                b"TLS" => {
                    self.out.extend_from_slice(b"> go ahead\r\n");
                    self.events.push_back("starttls".into());
                    self.tls_due = true;
                    self.buf.clear();
                }
                b"HOLD" => {
                    self.events.push_back("hold".into());
                    self.holding = true;
                }
                _ => {
                    self.out.extend_from_slice(b"> ");
                    self.out.extend_from_slice(&line);
                    self.out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    fn release(&mut self) {
        self.holding = false;
        self.out.extend_from_slice(b"> released\r\n");
        self.process();
    }
}

impl Session for Echo {
    type Event = String;
    type UsageError = NoHandshake;
    fn receive(&mut self, now: Instant, data: &[u8]) {
        if self.ended || self.tls_due {
            return;
        }
        self.deadline = Some(now + Duration::from_secs(10));
        self.buf.extend_from_slice(data);
        self.process();
    }
    fn receive_eof(&mut self, _now: Instant) {
        self.events.push_back("eof".into());
        self.ended = true;
    }
    fn poll_event(&mut self) -> Option<String> {
        self.events.pop_front()
    }
    fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        buf.append(&mut self.out);
        n
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| !self.ended)
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.out.extend_from_slice(b"> timeout\r\n");
            self.ended = true;
        }
    }
    fn tls_established(&mut self) -> Result<(), NoHandshake> {
        if !std::mem::take(&mut self.tls_due) {
            return Err(NoHandshake);
        }
        self.process();
        Ok(())
    }
    fn is_closed(&self) -> bool {
        self.ended && self.out.is_empty() && self.events.is_empty()
    }
}

/// Releases every HOLD at once, or never with `!config sit`.
struct App {
    echo: Echo,
    sit: bool,
}

impl Application for App {
    type Session = Echo;
    fn start(t: &Transcript, _split: Split, _now: Instant) -> Self {
        let mut echo = Echo::default();
        echo.out.extend_from_slice(b"> hello\r\n");
        Self {
            echo,
            sit: t.setting("sit").is_some(),
        }
    }
    fn session(&mut self) -> &mut Echo {
        &mut self.echo
    }
    fn event(&mut self, event: String, log: &mut Vec<String>) {
        if event == "hold" && !self.sit {
            self.echo.release();
        }
        log.push(event);
    }
}

fn outcome(text: &str) -> Result<(), String> {
    let t = Transcript::parse("test.txt", text);
    Split::all(8)
        .into_iter()
        .try_for_each(|split| run::<App>(&t, split))
}

#[test]
fn a_transcript_that_matches_passes_at_every_split() {
    outcome(
        "# comment\n\
         S: > hello\n\
         C: one\n\
         C~ tw\n\
         C~ o\\r\\n\n\
         S: > one\n\
         S: > two\n\
         C: HOLD\n\
         C: three\n\
         E: hold\n\
         S: > released\n\
         S: > three\n\
         C: BYE\n\
         S: > bye\n\
         E: bye\n\
         = closed\n",
    )
    .unwrap();
}

#[test]
fn output_is_checked_after_each_action_not_only_in_total() {
    // The total output is the same, but "> one" is claimed after the wrong stretch.
    let e =
        outcome("S: > hello\nS: > one\nC: one\nC: BYE\nS: > bye\nE: bye\n= closed\n").unwrap_err();
    assert!(e.starts_with("output after the start differs"), "{e}");
}

#[test]
fn events_and_end_state_are_checked() {
    let e = outcome("S: > hello\nC: BYE\nS: > bye\n= closed\n").unwrap_err();
    assert!(
        e.starts_with("events after the action on line 2 differ"),
        "{e}"
    );
    let e = outcome("S: > hello\nC: BYE\nS: > bye\nE: bye\n= open\n").unwrap_err();
    assert_eq!(e, "the session ended closed instead of open");
}

#[test]
fn a_decision_that_is_never_answered_holds_the_rest() {
    outcome("!config sit\nS: > hello\nC: HOLD\nC: one\nE: hold\n= open\n").unwrap();
}

#[test]
fn handshake_waits_and_discards_plaintext() {
    outcome(
        "S: > hello\n\
         C: TLS\n\
         C: injected\n\
         S: > go ahead\n\
         E: starttls\n\
         C: ignored too\n\
         !tls-handshake\n\
         C: after\n\
         S: > after\n\
         = open\n",
    )
    .unwrap();
    let e = outcome("S: > hello\n!tls-handshake\n= open\n").unwrap_err();
    assert_eq!(e, "line 2: tls_established refused: no handshake due");
}

#[test]
fn waits_move_the_clock_and_eof_is_delivered() {
    outcome("S: > hello\nC: a\nS: > a\n!wait 9\n!wait 1\nS: > timeout\n= closed\n").unwrap();
    outcome("S: > hello\n!eof\nE: eof\n= closed\n").unwrap();
}

#[test]
fn escapes_and_repeats() {
    assert_eq!(
        unescape("t", 1, r"a\r\n\\\x00{x*3}b"),
        b"a\r\n\\\x00xxxb".to_vec()
    );
    assert_eq!(escape(b"a\r\n\\\x00\xff"), r"a\r\n\\\x00\xff");
    outcome("S: > hello\nC: {y*5}\nS: > yyyyy\n= open\n").unwrap();
}

#[test]
#[should_panic(expected = "the last line must be")]
fn the_end_state_is_required() {
    Transcript::parse("t.txt", "S: > hello\n");
}

#[test]
#[should_panic(expected = "cannot read")]
fn unknown_lines_are_refused() {
    Transcript::parse("t.txt", "X: what\n= open\n");
}

#[test]
fn settings_are_read() {
    let t = Transcript::parse("t.txt", "!config a=1\n!config b\n!config a=2\n= open\n");
    assert_eq!(t.setting("a").map(Setting::number::<u32>), Some(2));
    assert_eq!(t.setting("b").map(|s| s.value.as_str()), Some(""));
    assert!(t.setting("c").is_none());
}

#[test]
fn splits_cover_every_byte() {
    for split in Split::all(4) {
        let mut rng = split.rng();
        let mut left = 100;
        let mut pieces = 0;
        while left > 0 {
            let n = split.piece(&mut rng, left);
            assert!((1..=24.max(left)).contains(&n));
            left -= n;
            pieces += 1;
        }
        match split {
            Split::Whole => assert_eq!(pieces, 1),
            Split::Bytewise => assert_eq!(pieces, 100),
            Split::Random(_) => assert!(pieces > 4),
        }
    }
}
