//! What a person typing into a telnet client sends, made into what a
//! session expects, without touching what a mail client sends.
//!
//! Telnet clients open with option negotiation (RFC 854, RFC 855: `IAC WILL
//! NAWS`, `IAC DO ECHO`, ...), and clients that send each key as it is
//! pressed send Backspace (0x08) or DEL (0x7f) for a typing mistake. The
//! protocol sessions stay strict and would answer both with a syntax error.
//! [`TelnetFilter`] sits in front of a session: it refuses every option
//! (`WONT`/`DONT`, so both sides stay plain network virtual terminals),
//! removes the negotiation from the input, applies Backspace and DEL to the
//! line being typed, and ends a line at CR LF or CR NUL. A client that
//! negotiated ends a line at a bare LF too: PuTTY's plink on a terminal in
//! line mode sends each line as the terminal gives it, ending in LF.
//!
//! A mail client is never changed: editing applies only to command lines
//! ([`Reads::Lines`]), where none of these bytes is valid anyway, and
//! message text ([`Reads::Message`]) passes untouched unless the client has
//! shown itself to be a telnet client by negotiating. A telnet client cannot
//! send raw binary (its 0xFF is `IAC IAC`), so for it the filter goes on
//! working inside messages too.

/// `IAC`, "interpret as command" (RFC 854).
const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
/// Subnegotiation begins (RFC 855).
const SB: u8 = 250;
/// Erase line.
const EL: u8 = 248;
/// Erase character.
const EC: u8 = 247;
/// Subnegotiation ends.
const SE: u8 = 240;

const BS: u8 = 0x08;
const DEL: u8 = 0x7f;

/// What the session reads next, as the caller learns it from the session
/// before each piece of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reads {
    /// Command lines (or SASL responses): typed, so editing applies, and
    /// [`TelnetFilter::push`] stops after each complete line so the caller
    /// can ask again.
    Lines,
    /// Message text (DATA, a BDAT chunk): passed as it is, unless the client
    /// negotiated telnet options.
    Message,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    /// A CR was typed; LF or NUL after it ends the line.
    Cr,
    /// After `IAC`.
    Iac,
    /// After `IAC WILL/WONT/DO/DONT`, waiting for the option.
    Option(u8),
    /// Inside `IAC SB ... IAC SE`, skipped.
    Sub,
    /// `IAC` inside a subnegotiation.
    SubIac,
}

/// A sans-IO filter for typed input in front of an SMTP or POP3 session.
///
/// Feed it what the client sent with [`push`](Self::push), saying what the
/// session expects next ([`Reads`]); hand what it appends to the session;
/// write what [`poll_reply`](Self::poll_reply) gives back to the client
/// (the option refusals). The same input, however split, gives the same
/// output and replies.
#[derive(Debug, Clone)]
pub struct TelnetFilter {
    state: State,
    /// The line being typed, held until it ends so that Backspace can reach
    /// back into it.
    line: Vec<u8>,
    /// The held line outgrew `max_line`: it was handed on, and the rest of
    /// it passes without editing.
    overflowed: bool,
    max_line: usize,
    telnet: bool,
    replies: Vec<u8>,
}

impl TelnetFilter {
    /// A filter that holds a typed line of up to `max_line` octets for
    /// editing; a longer line is handed on as it comes (the session then
    /// refuses it as too long).
    pub fn new(max_line: usize) -> Self {
        Self {
            state: State::Text,
            line: Vec::new(),
            overflowed: false,
            max_line: max_line.max(1),
            telnet: false,
            replies: Vec::new(),
        }
    }

    /// Whether the client has negotiated telnet options.
    pub fn is_telnet(&self) -> bool {
        self.telnet
    }

    /// Whether [`push`](Self::push) would hand `input` on exactly as it is,
    /// whatever the session reads meanwhile: nothing is held, the client
    /// has not negotiated, `input` ends a line (a key typed alone must stay
    /// here, where a Backspace after it can still reach it) and has none of
    /// the bytes the filter acts on (IAC, Backspace, DEL, NUL). A caller may
    /// then give `input` to the session directly, in one piece, which is
    /// what a mail client's reads almost always allow.
    pub fn passes_unchanged(&self, input: &[u8]) -> bool {
        input.last() == Some(&b'\n')
            && self.state == State::Text
            && self.line.is_empty()
            && !self.overflowed
            && !self.telnet
            && memchr::memchr3(IAC, BS, DEL, input).is_none()
            && memchr::memchr(0, input).is_none()
    }

    /// Appends the refusals owed to the client to `buf`; returns how many
    /// bytes.
    pub fn poll_reply(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.replies.len();
        buf.append(&mut self.replies);
        n
    }

    /// Filters `input` and appends what the session should read to `out`.
    /// Returns how much of `input` was taken: with [`Reads::Lines`] it stops
    /// right after the first line that ends, so the caller can ask the
    /// session what it expects next; otherwise it takes everything.
    pub fn push(&mut self, input: &[u8], reads: Reads, out: &mut Vec<u8>) -> usize {
        if reads == Reads::Message && !self.telnet && self.state == State::Text {
            out.append(&mut self.line);
            self.overflowed = false;
            out.extend_from_slice(input);
            return input.len();
        }
        for (i, &b) in input.iter().enumerate() {
            if self.byte(b, out) && reads == Reads::Lines {
                return i + 1;
            }
        }
        input.len()
    }

    /// Takes one byte; true when it ended a line.
    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match self.state {
            State::Text => self.text(b, out),
            State::Cr => {
                self.state = State::Text;
                match b {
                    b'\n' | 0 => self.end_line(b"\r\n", out),
                    _ => {
                        // A bare CR: the session decides what it means.
                        self.keep(b'\r', out);
                        self.text(b, out)
                    }
                }
            }
            State::Iac => {
                self.state = State::Text;
                match b {
                    IAC => {
                        self.keep(IAC, out);
                    }
                    WILL | WONT | DO | DONT => {
                        self.telnet = true;
                        self.state = State::Option(b);
                    }
                    SB => {
                        self.telnet = true;
                        self.state = State::Sub;
                    }
                    EC => {
                        self.telnet = true;
                        self.erase();
                    }
                    EL => {
                        self.telnet = true;
                        self.line.clear();
                    }
                    // NOP, data mark, break, interrupt, abort output, are you
                    // there, go ahead: nothing a mail session can act on.
                    SE..=IAC => self.telnet = true,
                    // Not a command: the IAC is dropped, the byte kept.
                    _ => return self.text(b, out),
                }
                false
            }
            State::Option(verb) => {
                self.state = State::Text;
                // Refuse whatever is proposed; a refusal needs no answer.
                let answer = match verb {
                    WILL => Some(DONT),
                    DO => Some(WONT),
                    _ => None,
                };
                if let Some(answer) = answer {
                    self.replies.extend_from_slice(&[IAC, answer, b]);
                }
                false
            }
            State::Sub => {
                if b == IAC {
                    self.state = State::SubIac;
                }
                false
            }
            State::SubIac => {
                self.state = if b == SE { State::Text } else { State::Sub };
                false
            }
        }
    }

    fn text(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match b {
            IAC => {
                self.state = State::Iac;
                false
            }
            b'\r' => {
                self.state = State::Cr;
                false
            }
            // A telnet client's bare LF is its user's Enter key; anyone
            // else's stays bare for the session to refuse.
            b'\n' if self.telnet => self.end_line(b"\r\n", out),
            b'\n' => self.end_line(b"\n", out),
            BS | DEL if !self.overflowed => {
                self.erase();
                false
            }
            _ => {
                self.keep(b, out);
                false
            }
        }
    }

    /// Adds a byte to the line being typed, or hands it on once the line
    /// is too long to hold.
    fn keep(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.overflowed {
            out.push(b);
        } else {
            self.line.push(b);
            if self.line.len() > self.max_line {
                out.append(&mut self.line);
                self.overflowed = true;
            }
        }
    }

    /// Backspace: the last character typed goes, all of its UTF-8 bytes.
    fn erase(&mut self) {
        while let Some(b) = self.line.pop() {
            if b & 0xC0 != 0x80 {
                break;
            }
        }
    }

    fn end_line(&mut self, end: &[u8], out: &mut Vec<u8>) -> bool {
        out.append(&mut self.line);
        out.extend_from_slice(end);
        self.overflowed = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step`, asking for `reads` throughout, and
    /// returns what the session got and what the client gets back.
    fn run(input: &[u8], reads: Reads, step: usize) -> (Vec<u8>, Vec<u8>) {
        let mut f = TelnetFilter::new(32);
        let (mut out, mut replies) = (Vec::new(), Vec::new());
        for piece in input.chunks(step.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = f.push(rest, reads, &mut out);
                assert!(n > 0);
                rest = &rest[n..];
            }
            f.poll_reply(&mut replies);
        }
        (out, replies)
    }

    fn every_split(input: &[u8], reads: Reads) -> (Vec<u8>, Vec<u8>) {
        let whole = run(input, reads, input.len());
        for step in 1..input.len() {
            assert_eq!(run(input, reads, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn options_are_refused_and_removed() {
        // PuTTY's opening, then a command.
        let input = b"\xff\xfb\x1f\xff\xfb\x20\xff\xfd\x01\xff\xfd\x03\xff\xfc\x27HELO server\r\n";
        let (out, replies) = every_split(input, Reads::Lines);
        assert_eq!(out, b"HELO server\r\n");
        // WILL NAWS, WILL TSPEED -> DONT; DO ECHO, DO SGA -> WONT; WONT: nothing.
        assert_eq!(replies, b"\xff\xfe\x1f\xff\xfe\x20\xff\xfc\x01\xff\xfc\x03");
    }

    #[test]
    fn subnegotiation_and_other_commands_vanish() {
        let input = b"NO\xff\xfa\x1f\x00\x50\xff\xff\x00\x18\xff\xf0OP\xff\xf1\r\n";
        let (out, replies) = every_split(input, Reads::Lines);
        assert_eq!(out, b"NOOP\r\n");
        assert!(replies.is_empty());
    }

    #[test]
    fn backspace_and_del_erase_what_was_typed() {
        let (out, _) = every_split(b"NOOX\x08P\r\nQUIR\x7fT\r\n", Reads::Lines);
        assert_eq!(out, b"NOOP\r\nQUIT\r\n");
        // A whole UTF-8 character goes, and nothing before the line.
        let (out, _) = every_split(
            "a\r\nRCPT TO:<j\u{fc}\x08u@x>\r\n\x08\x08ok\r\n".as_bytes(),
            Reads::Lines,
        );
        assert_eq!(out, b"a\r\nRCPT TO:<ju@x>\r\nok\r\n");
        // Telnet's own erase character and erase line.
        let (out, _) = every_split(b"NOOX\xff\xf7P\r\nJUNK\xff\xf8QUIT\r\n", Reads::Lines);
        assert_eq!(out, b"NOOP\r\nQUIT\r\n");
    }

    #[test]
    fn cr_nul_and_cr_lf_end_a_line_bare_ones_pass() {
        let (out, _) = every_split(b"HELO a\r\x00NOOP\r\nX\ny\rz\r\n", Reads::Lines);
        assert_eq!(out, b"HELO a\r\nNOOP\r\nX\ny\rz\r\n");
    }

    #[test]
    fn a_telnet_clients_bare_lf_ends_its_line() {
        // plink in line mode: its opening, then lines ending in LF.
        let (out, replies) =
            every_split(b"\xff\xfb\x1fHELO server\nNOOX\x08P\nX\ry\n", Reads::Lines);
        assert_eq!(out, b"HELO server\r\nNOOP\r\nX\ry\r\n");
        assert_eq!(replies, b"\xff\xfe\x1f");
        // Its message text too.
        let mut f = TelnetFilter::new(64);
        let mut out = Vec::new();
        f.push(b"\xff\xfb\x1fDATA\n", Reads::Lines, &mut out);
        f.push(b"Hallo\n.\n", Reads::Message, &mut out);
        assert_eq!(out, b"DATA\r\nHallo\r\n.\r\n");
        // Without negotiation a bare LF stays bare.
        let (out, _) = every_split(b"HELO server\n", Reads::Lines);
        assert_eq!(out, b"HELO server\n");
    }

    #[test]
    fn lines_mode_stops_after_each_line() {
        let mut f = TelnetFilter::new(64);
        let mut out = Vec::new();
        let input = b"DATA\r\nbody\x08\r\n";
        let n = f.push(input, Reads::Lines, &mut out);
        assert_eq!((n, out.as_slice()), (6, &b"DATA\r\n"[..]));
        // The caller learns the session now reads a message.
        let m = f.push(&input[n..], Reads::Message, &mut out);
        assert_eq!(m, input.len() - n);
        assert_eq!(out, b"DATA\r\nbody\x08\r\n");
    }

    #[test]
    fn a_mail_clients_message_passes_byte_for_byte() {
        let body: Vec<u8> = (0..=255u8).chain(*b"\r\n.\r\n").collect();
        let (out, replies) = every_split(&body, Reads::Message);
        assert_eq!(out, body);
        assert!(replies.is_empty());
    }

    #[test]
    fn a_telnet_client_is_edited_in_messages_too() {
        let mut f = TelnetFilter::new(64);
        let mut out = Vec::new();
        f.push(b"\xff\xfb\x1fDATA\r\n", Reads::Lines, &mut out);
        assert!(f.is_telnet());
        out.clear();
        f.push(
            b"Hallo Bpb\x08\x08ob\xff\xff!\r\n.\r\n",
            Reads::Message,
            &mut out,
        );
        assert_eq!(out, b"Hallo Bob\xff!\r\n.\r\n");
    }

    #[test]
    fn passes_unchanged_means_what_it_says() {
        let mut f = TelnetFilter::new(64);
        let mail = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3\r\nx\ry\r\n";
        assert!(f.passes_unchanged(mail));
        // Whatever is read, lines or message text, it comes out the same.
        for reads in [Reads::Lines, Reads::Message] {
            let (out, replies) = every_split(mail, reads);
            assert_eq!(out, mail);
            assert!(replies.is_empty());
        }
        for special in [&b"a\x08\n"[..], b"\xff\n", b"\x7f\n", b"\r\x00\n", b"NOO"] {
            assert!(!f.passes_unchanged(special), "{special:?}");
        }
        // A half-typed line held, or a telnet client: never unchanged.
        let mut out = Vec::new();
        f.push(b"NOO", Reads::Lines, &mut out);
        assert!(!f.passes_unchanged(b"P\r\n"));
        out.clear();
        f.push(b"P\r\n\xff\xfb\x1f", Reads::Lines, &mut out);
        f.push(b"\xff\xfb\x1f", Reads::Lines, &mut out);
        assert!(f.is_telnet());
        assert!(!f.passes_unchanged(b"NOOP\r\n"));
    }

    #[test]
    fn a_line_too_long_to_hold_is_handed_on() {
        let long = [b'x'; 40];
        let mut input = long.to_vec();
        input.extend_from_slice(b"\x08\r\nNOOP\r\n");
        let (out, _) = every_split(&input, Reads::Lines);
        let mut want = long.to_vec();
        want.extend_from_slice(b"\x08\r\nNOOP\r\n");
        assert_eq!(out, want);
    }
}
