#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets whose input starts with
header bytes or spans a whole session: smtp_data, smtp_client, pop3_command,
pop3_multiline, pop3_session and pop3_client.

Rerun from the repository root (or anywhere) with

    python3 fuzz/seeds/generate.py

It rewrites only the files named below; the seeds of smtp_command and
smtp_session were written by hand and are left alone. Each seed is a complete,
meaningful starting point (a whole transaction, a login with RETR, ...); the
header layouts are those of the targets' doc comments and fuzz/README.md.
"""

from pathlib import Path

SEEDS = Path(__file__).resolve().parent


def crlf(*lines: str) -> bytes:
    """Lines joined and ended with CRLF."""
    return "".join(line + "\r\n" for line in lines).encode()


# --- smtp_data ---------------------------------------------------------------
# Header: flags (bit 0: 0 = Reject, 1 = Normalize; max_line = 2 + (flags >> 1) * 8),
# then a count byte (n % 16 split sizes follow, each size byte + 1), then the
# DATA text as the server reads it after 354.

REJECT_WIDE = 0xFE  # Reject, lines up to 1018 octets
NORMALIZE_WIDE = 0xFF  # Normalize, lines up to 1018 octets


def smtp_data(flags: int, splits: list[int], text: bytes) -> bytes:
    assert len(splits) < 16
    return bytes([flags, len(splits)]) + bytes(s - 1 for s in splits) + text


MESSAGE = crlf("From: anna@example.org", "To: bob@mx.example", "Subject: hi", "", "Hello Bob,", "bye.")

smtp_data_seeds = {
    # Dot-stuffed lines, a lone stuffed dot, then the end and a pipelined
    # command after it (consumed stops at the marker).
    "dot_lines": smtp_data(
        REJECT_WIDE,
        [3, 1, 7],
        crlf("Subject: dots", "", "..leading dot", "...two dots", "..", "last") + b".\r\nQUIT\r\n",
    ),
    # Bare LF and bare CR inside the text, a "\n.\n" that must not end it,
    # then the real end: rejected (flagged) under Reject.
    "bare_lf": smtp_data(
        REJECT_WIDE,
        [5],
        b"Subject: smuggle\r\n\r\nline one\nline two\rline three\r\n\n.\n"
        b"MAIL FROM:<evil@attacker.example>\r\n.\r\n",
    ),
    # The same text under Normalize: bare endings become CRLF.
    "bare_lf_normalize": smtp_data(
        NORMALIZE_WIDE,
        [5],
        b"Subject: smuggle\r\n\r\nline one\nline two\rline three\r\n\n.\n"
        b"MAIL FROM:<evil@attacker.example>\r\n.\r\n",
    ),
    # max_line 18 (flags 4): lines over the limit set the long-line flag.
    "long_line": smtp_data(
        0x04,
        [8, 2],
        crlf("short", "a line far longer than eighteen octets", "ok", "..stuffed and also far too long here")
        + b".\r\n",
    ),
    # The end marker cut at every place by splits of 1, 2 and 3 octets.
    "split_marker": smtp_data(REJECT_WIDE, [1, 2, 3], MESSAGE + b".\r\n"),
    # An empty message: the marker at once.
    "empty_message": smtp_data(REJECT_WIDE, [], b".\r\n"),
    # No end marker, no final CRLF, a trailing bare CR: the decoder stays
    # incomplete; the encoder must close the last line and add the marker.
    "unterminated": smtp_data(NORMALIZE_WIDE, [4], b"Subject: cut\r\n\r\n.starts with a dot\r\nno end\r"),
}

# --- smtp_client -------------------------------------------------------------
# Header: one flags byte for the acting application (bit 0: BDAT when offered;
# bit 1: STARTTLS, then the handshake at once; bit 2: AUTH, bit 3: LOGIN
# instead of PLAIN; bit 4: stream the message; bit 5: a second message; bit 6:
# QUIT at the end), then the server's bytes. The acting application sends
# MAIL, two RCPT and the message after the EHLO reply (and after STARTTLS and
# AUTH when it asks for them); the listening one only greets.

BDAT = 0x01
STARTTLS = 0x02
AUTH = 0x04
LOGIN = 0x08
STREAM = 0x10
SECOND = 0x20
QUIT = 0x40

EHLO_FULL = crlf(
    "250-mx.example Hello client.example",
    "250-PIPELINING",
    "250-SIZE 10485760",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-ENHANCEDSTATUSCODES",
    "250-CHUNKING",
    "250-DSN",
    "250-AUTH PLAIN LOGIN",
    "250 HELP",
)
EHLO_PLAIN = crlf("250-mx.example", "250 8BITMIME")
EHLO_STARTTLS = crlf("250-mx.example Hello client.example", "250-PIPELINING", "250 STARTTLS")
GREETING = crlf("220 mx.example ESMTP postamt ready")
# MAIL, two RCPT, DATA and the end of data, every one accepted (pipelined).
DATA_OK = crlf(
    "250 2.1.0 Sender ok",
    "250 2.1.5 Recipient ok",
    "250 2.1.5 Recipient ok",
    "354 Start mail input; end with <CRLF>.<CRLF>",
    "250 2.0.0 Ok: queued as 4F2A",
)
LOGIN_OK = crlf("334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful")


def smtp_client(flags: int, server: bytes) -> bytes:
    return bytes([flags]) + server


smtp_client_seeds = {
    # EHLO with PIPELINING: the envelope goes out at once; every reply ok.
    "pipelined_transaction": smtp_client(0, GREETING + EHLO_FULL + DATA_OK),
    # No PIPELINING: one command per reply.
    "lockstep_transaction": smtp_client(
        0, GREETING + EHLO_PLAIN + crlf("250 Ok", "250 Ok", "250 Ok", "354 Go ahead", "250 Ok: queued")
    ),
    # EHLO refused: the client falls back to HELO, then sends.
    "helo_fallback": smtp_client(
        0,
        GREETING
        + crlf("502 5.5.1 EHLO not implemented", "250 mx.example")
        + crlf("250 Ok", "250 Ok", "250 Ok", "354 Go ahead", "250 Ok"),
    ),
    # One recipient refused, the other accepted; multi-line replies.
    "rcpt_refused": smtp_client(
        0,
        GREETING
        + EHLO_FULL
        + crlf(
            "250 2.1.0 Ok",
            "550-5.1.1 No such user here",
            "550 5.1.1 Try another",
            "250 2.1.5 Ok",
            "354 Go ahead",
            "250-2.0.0 Ok",
            "250 2.0.0 queued",
        ),
    ),
    # Both recipients refused after pipelined DATA was accepted: the client
    # ends with a lone dot, reports the failure and sends RSET.
    "all_refused_rset": smtp_client(
        0,
        GREETING
        + EHLO_FULL
        + crlf(
            "250 Ok",
            "550 5.1.1 Unknown",
            "550 5.1.1 Unknown",
            "354 Go ahead",
            "554 5.5.1 No valid recipients",
            "250 2.0.0 Reset",
        ),
    ),
    # The server's SIZE is smaller than the message: nothing is sent, then
    # a 421 closes the connection.
    "size_too_big": smtp_client(0, GREETING + crlf("250-mx.example", "250 SIZE 10") + crlf("421 4.3.2 Shutting down")),
    # The server is busy: 421 right after EHLO (a reply nobody asked for).
    "greeting_refused": smtp_client(0, crlf("554-mx.example no service", "554 go away")),
    # AUTH PLAIN with the initial response, then the transaction.
    "auth_plain": smtp_client(AUTH, GREETING + EHLO_FULL + crlf("235 2.7.0 Authentication successful") + DATA_OK),
    # AUTH LOGIN, both prompts, then the transaction.
    "auth_login": smtp_client(AUTH | LOGIN, GREETING + EHLO_FULL + LOGIN_OK + DATA_OK),
    # AUTH LOGIN refused: the client goes on without it.
    "auth_refused": smtp_client(
        AUTH | LOGIN,
        GREETING + EHLO_FULL + crlf("334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "535 5.7.8 Bad credentials") + DATA_OK,
    ),
    # STARTTLS, the handshake, EHLO again; then AUTH LOGIN, the message by
    # BDAT in one chunk, and QUIT.
    "starttls_auth_bdat": smtp_client(
        STARTTLS | AUTH | LOGIN | BDAT | QUIT,
        GREETING
        + EHLO_STARTTLS
        + crlf("220 2.0.0 Ready to start TLS")
        + EHLO_FULL
        + LOGIN_OK
        + crlf("250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.0.0 Message accepted")
        + crlf("221 2.0.0 Bye"),
    ),
    # The message streamed by BDAT in chunks (four, then LAST), twice; AUTH
    # PLAIN first.
    "bdat_streamed": smtp_client(
        BDAT | STREAM | SECOND | AUTH,
        GREETING
        + EHLO_FULL
        + crlf("235 2.7.0 Ok")
        + 2 * crlf("250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 Ok", "250 Ok", "250 Ok", "250 Ok", "250 2.0.0 Done"),
    ),
    # The message streamed over DATA, then QUIT.
    "data_streamed": smtp_client(STREAM | QUIT, GREETING + EHLO_FULL + DATA_OK + crlf("221 2.0.0 Bye")),
}

# --- pop3_command ------------------------------------------------------------
# Arbitrary bytes: a command line without its CRLF, or a response line with it.

pop3_command_seeds = {
    "user": b"USER bob",
    "pass_spaces": b"PASS two words ",
    "apop": b"APOP mrose c4c9334bac560ecc979e58001b3e22fb",
    "top": b"TOP 1 10",
    "auth_plain": b"AUTH PLAIN AGJvYgB0b3BTZWNyZXQ=",
    "ok_stat": b"+OK 2 320\r\n",
    "err_resp_code": b"-ERR [IN-USE] Maildrop already locked\r\n",
    "continuation": b"+ \r\n",
}

# --- pop3_multiline ----------------------------------------------------------
# A multi-line body as the client reads it after +OK; the first byte also
# picks where the input is cut in two.

pop3_multiline_seeds = {
    "retr_stuffed": crlf(
        "From: carol@example.org",
        "Subject: Dots",
        "",
        "..leading dot",
        "...two dots",
        "..",
        "The line above is a lone dot.",
        ".",
    ),
    "multiline_capa": crlf("TOP", "UIDL", "RESP-CODES", "PIPELINING", "USER", "SASL PLAIN", "UTF8 USER", "."),
    "list_listing": crlf("1 120", "2 200", "."),
    "empty": crlf("."),
    # Bare LF and bare CR, a "\n.\n" that must not end it.
    "bare_lf": b"line one\nline two\rthree\r\n\n.\nstill text\r\n.\r\n",
    # Bytes after the terminating line belong to the next response.
    "trailing_response": crlf("1 u0", ".", "+OK next"),
    # No terminating line, no final CRLF.
    "unterminated": b"Subject: cut\r\n\r\n.x\r\n..",
}

# --- pop3_session ------------------------------------------------------------
# Header: four decision bytes d0..d3. d0: bit 0 offers STLS, bit 1 forbids
# login without TLS, bit 2 sets allow_authzid, bits 3-4 pick
# max_auth_failures (0: 3, 1: 1, 2: 2, 3: 5). The n-th event is answered by
# d[1 + n % 4] (d4 reads as 0): login 0 reject, 1 locked, 2/3 accept;
# RETR/TOP 0 mod 5 unavailable; commit 0 mod 3 fails. d2 also picks the split
# point. The target's maildrop has three messages: dot-stuffed, no header end
# with a stray CR, and non-UTF-8 with bare LF/CR and no final line end.


def pop3_session(d: list[int], *lines: str) -> bytes:
    assert len(d) == 4
    return bytes(d) + crlf(*lines)


pop3_session_seeds = {
    # The handout: login (accept), STAT, LIST, RETR 1 (streamed), DELE 1,
    # QUIT (commit done).
    "handout_session": pop3_session(
        [0x00, 0x02, 0x21, 0x01], "USER bob", "PASS topSecret", "STAT", "LIST", "RETR 1", "DELE 1", "QUIT"
    ),
    # RETR of the non-UTF-8 message with bare LF/CR and of the one with a
    # stray CR, RETR 1 answered "unavailable" (the fourth event), TOP with
    # and without body lines, RETR of no such message, all pipelined.
    "retr_stuffed": pop3_session(
        [0x00, 0x02, 0x11, 0x07],
        "USER bob",
        "PASS topSecret",
        "RETR 3",
        "RETR 2",
        "RETR 1",
        "TOP 2 0",
        "TOP 3 1",
        "RETR 4",
        "QUIT",
    ),
    # APOP, then the listings and the commands that need no decision.
    "apop_uidl": pop3_session(
        [0x00, 0x03, 0x2e, 0x02],
        "CAPA",
        "APOP bob c4c9334bac560ecc979e58001b3e22fb",
        "UIDL",
        "UIDL 2",
        "LIST 3",
        "LIST 9",
        "NOOP",
        "DELE 2",
        "RSET",
        "QUIT",
    ),
    # SASL PLAIN: cancelled, then with the response after the prompt.
    "auth_plain": pop3_session(
        [0x00, 0x02, 0x0e, 0x01],
        "AUTH PLAIN",
        "*",
        "AUTH PLAIN",
        "AGJvYgB0b3BTZWNyZXQ=",
        "STAT",
        "DELE 1",
        "DELE 3",
        "QUIT",
    ),
    # Refused, then locked, then accepted logins; the commit fails.
    "login_errors": pop3_session(
        [0x00, 0x00, 0x05, 0x02],
        "PASS early",
        "USER bob",
        "PASS wrong",
        "USER bob",
        "PASS locked",
        "USER bob",
        "PASS topSecret",
        "DELE 1",
        "QUIT",
    ),
    # STLS offered and taken: the plaintext after it must be dropped.
    "stls_injection": pop3_session(
        [0x01, 0x02, 0x09, 0x01], "CAPA", "STLS", "USER bob", "PASS topSecret", "STAT"
    ),
    # Three refused logins (USER/PASS, APOP, AUTH PLAIN): the third closes
    # the session; what follows is not read.
    "auth_failures": pop3_session(
        [0x00, 0x00, 0x00, 0x00],
        "USER bob",
        "PASS guess1",
        "APOP bob c4c9334bac560ecc979e58001b3e22fb",
        "AUTH PLAIN AGJvYgBndWVzczM=",
        "USER bob",
        "PASS topSecret",
        "STAT",
    ),
    # PLAIN acting for another user: refused by the session (no event), then
    # a login naming oneself; with bit 2 of d0 set the first one would reach
    # the application.
    "authzid": pop3_session(
        [0x00, 0x02, 0x1d, 0x02],
        "AUTH PLAIN Ym9iAG1yb3NlAHRhbnN0YWFm",
        "AUTH PLAIN Ym9iAGJvYgB0b3BTZWNyZXQ=",
        "RETR 2",
        "RETR 3",
        "QUIT",
    ),
    # The same with allow_authzid: the application sees the authzid.
    "authzid_allowed": pop3_session(
        [0x04, 0x02, 0x1d, 0x02], "AUTH PLAIN Ym9iAG1yb3NlAHRhbnN0YWFm", "RETR 1", "TOP 1 1", "QUIT"
    ),
    # Login without TLS forbidden: USER refused, unknown and overlong lines.
    "tls_required": pop3_session(
        [0x02, 0x02, 0x08, 0x01], "USER bob", "XTND XMIT", "UTF8", "TOP", "NOOP " + "x" * 300, "QUIT"
    ),
}

# --- pop3_client -------------------------------------------------------------
# The server's bytes. The acting application logs in with USER/PASS after
# Ready (greeting and CAPA), then asks STAT, RETR 1, TOP 1 2, DELE 1, QUIT.

POP3_GREETING = crlf("+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>")
CAPA_PIPELINING = crlf(
    "+OK Capability list follows",
    "TOP",
    "UIDL",
    "USER",
    "RESP-CODES",
    "PIPELINING",
    "SASL PLAIN",
    "IMPLEMENTATION postamt",
    ".",
)
RETR_BODY = crlf(
    "+OK 120 octets",
    "From: alice@example.org",
    "Subject: Lunch",
    "",
    "..leading dot",
    "Hi Bob,",
    ".",
)
TOP_BODY = crlf("+OK top of message follows", "From: alice@example.org", "Subject: Lunch", "", "..leading dot", ".")

pop3_client_seeds = {
    # The handout from the client's side, every command pipelined.
    "handout_session": POP3_GREETING
    + CAPA_PIPELINING
    + crlf("+OK send PASS", "+OK Logged in", "+OK 2 320")
    + RETR_BODY
    + TOP_BODY
    + crlf("+OK message 1 deleted", "+OK Goodbye"),
    # A server of RFC 1939 alone: CAPA refused, one command at a time.
    "no_capa": crlf("+OK POP3 ready")
    + crlf("-ERR unknown command", "+OK", "+OK maildrop has 1 message", "+OK 1 27")
    + crlf("+OK", "Subject: a", "", "body", ".")
    + crlf("+OK", "Subject: a", ".")
    + crlf("+OK", "+OK bye"),
    # RETR of a stuffed message with bare LF inside, split over the lines.
    "retr_stuffed": POP3_GREETING
    + CAPA_PIPELINING
    + crlf("+OK", "+OK", "+OK 3 900", "+OK message follows", "...two dots", "..", "a\nb\rc", ".")
    + crlf("-ERR [SYS/TEMP] try later", "-ERR no such message", "+OK bye"),
    # The password refused: no LoggedIn, then the connection ends.
    "login_refused": POP3_GREETING + CAPA_PIPELINING + crlf("+OK", "-ERR [AUTH] Invalid user name or password"),
    # The maildrop is locked; RESP-CODES.
    "in_use": POP3_GREETING + CAPA_PIPELINING + crlf("+OK", "-ERR [IN-USE] Maildrop already locked"),
    # QUIT fails to delete: Error, then Closed.
    "quit_error": POP3_GREETING
    + CAPA_PIPELINING
    + crlf("+OK", "+OK", "+OK 0 0", "-ERR no such message", "-ERR no such message", "-ERR no such message")
    + crlf("-ERR [SYS/PERM] some deleted messages not removed"),
    # A greeting that refuses service.
    "greeting_refused": crlf("-ERR [SYS/TEMP] server busy"),
}


def main() -> None:
    targets = {
        "smtp_data": smtp_data_seeds,
        "smtp_client": smtp_client_seeds,
        "pop3_command": pop3_command_seeds,
        "pop3_multiline": pop3_multiline_seeds,
        "pop3_session": pop3_session_seeds,
        "pop3_client": pop3_client_seeds,
    }
    for target, seeds in targets.items():
        directory = SEEDS / target
        directory.mkdir(exist_ok=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
