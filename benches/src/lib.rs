//! Shared, deterministic inputs for the benchmarks.
//!
//! Every generator returns the same bytes on every call and on every machine,
//! so numbers from different runs (and from the peers measured beside us) are
//! read off the same input.

/// The SMTP command mix, one line per command, without CRLF (as the line
/// framer hands lines to `Command::parse`): EHLO, MAIL with SIZE and BODY,
/// RCPT, a long RCPT with NOTIFY and ORCPT, DATA, RSET, NOOP, QUIT.
pub const SMTP_COMMANDS: [&str; 8] = [
    "EHLO mail-wr1-f54.google.com",
    "MAIL FROM:<anna.schmidt@example.org> SIZE=48213 BODY=8BITMIME",
    "RCPT TO:<bob@mx.example.net>",
    "RCPT TO:<firstname.lastname+newsletter-2024@subdomain.corporation-example.com> \
     NOTIFY=SUCCESS,FAILURE,DELAY \
     ORCPT=rfc822;firstname.lastname+2Bnewsletter-2024@subdomain.corporation-example.com",
    "DATA",
    "RSET",
    "NOOP",
    "QUIT",
];

/// [`SMTP_COMMANDS`] as byte lines without CRLF.
pub fn smtp_command_lines() -> Vec<Vec<u8>> {
    SMTP_COMMANDS
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// [`SMTP_COMMANDS`] as byte lines with CRLF (what smtp-proto's parser needs).
pub fn smtp_command_lines_crlf() -> Vec<Vec<u8>> {
    SMTP_COMMANDS
        .iter()
        .map(|c| {
            let mut l = c.as_bytes().to_vec();
            l.extend_from_slice(b"\r\n");
            l
        })
        .collect()
}

/// A small message body (headers and a few paragraphs, one stuffed line),
/// dot-stuffed and terminated with `.CRLF`, as it travels after DATA.
pub fn smtp_small_message() -> Vec<u8> {
    let mut m = Vec::new();
    for line in [
        "Return-Path: <anna.schmidt@example.org>",
        "From: Anna Schmidt <anna.schmidt@example.org>",
        "To: Bob <bob@mx.example.net>",
        "Subject: Quarterly numbers",
        "Date: Tue, 14 May 2024 09:12:44 +0200",
        "Message-ID: <20240514091244.4F2A@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Hello Bob,",
        "",
        "here are the numbers you asked for. They look better than last quarter,",
        "mostly because the spring campaign finally paid off.",
        "..and this line started with a dot, so it travels stuffed.",
        "",
        "Regards, Anna",
    ] {
        m.extend_from_slice(line.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// The command mix pipelined as one client buffer, with the message between
/// DATA and RSET. Returns the buffer and the number of commands in it.
pub fn smtp_pipelined_session() -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    for (i, c) in SMTP_COMMANDS.iter().enumerate() {
        buf.extend_from_slice(c.as_bytes());
        buf.extend_from_slice(b"\r\n");
        if i == 4 {
            buf.extend_from_slice(&smtp_small_message());
        }
    }
    (buf, SMTP_COMMANDS.len())
}

/// A 10-line EHLO reply as a big provider sends it: the server advertises
/// ENHANCEDSTATUSCODES but (as RFC 2034 allows) uses none on the EHLO reply.
pub const EHLO_REPLY: &str = "250-mx.google.com at your service, [203.0.113.7]\r\n\
250-SIZE 157286400\r\n\
250-8BITMIME\r\n\
250-STARTTLS\r\n\
250-ENHANCEDSTATUSCODES\r\n\
250-PIPELINING\r\n\
250-CHUNKING\r\n\
250-SMTPUTF8\r\n\
250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n\
250 DSN\r\n";

/// A deterministic xorshift generator, so inputs need no `rand`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A dot-stuffed DATA stream of about `size` octets (at least `size`):
/// 78-octet lines of printable text plus CRLF, about one line in 16 starting
/// with a dot (so it travels as `..`), terminated by `.CRLF`.
///
/// The first line does not start with a dot. The stream starts at the beginning of a line, as DATA text does after the
/// 354, so `CRLF . CRLF` occurs exactly once: at the end.
pub fn dot_stuffed_message(size: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,;:-_()!?'\"/";
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(size + 128);
    while out.len() < size {
        // The first line is never stuffed: smtp-proto's DataReceiver starts
        // outside a line and would keep its dot, so the outputs would differ.
        let stuffed = rng.below(16) == 0 && !out.is_empty();
        if stuffed {
            out.extend_from_slice(b"..");
        }
        let text = if stuffed { 77 } else { 78 };
        for _ in 0..text {
            let r = rng.next_u64();
            out.push(ALPHABET[(r % ALPHABET.len() as u64) as usize]);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_one_end_marker_at_the_end() {
        let m = dot_stuffed_message(1 << 20, 7);
        assert!(m.len() >= 1 << 20);
        let end = memchr::memmem::find(&m, b"\r\n.\r\n").unwrap();
        assert_eq!(end + 5, m.len());
        assert!(m.windows(3).any(|w| w == b"\n.."));
        assert_eq!(m, dot_stuffed_message(1 << 20, 7));
    }
}
