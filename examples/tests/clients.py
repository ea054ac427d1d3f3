"""Drives the toy server with Python's own smtplib and poplib.

Usage: clients.py SMTP_PORT POP3_PORT
Prints one line per check and exits non-zero on the first failure.
"""

import email
import poplib
import smtplib
import sys

HOST = "127.0.0.1"
smtp_port, pop3_port = int(sys.argv[1]), int(sys.argv[2])

MESSAGE = (
    "From: anna@kolleg.de\r\n"
    "To: bob@kolleg.de\r\n"
    "Subject: Hausaufgabe\r\n"
    "\r\n"
    "Hallo Bob,\r\n"
    ".\r\n"
    ".. a line that starts with two dots\r\n"
    "bis morgen!\r\n"
)


def check(what, condition):
    if not condition:
        print("FAIL", what)
        sys.exit(1)
    print("ok", what)


# SMTP: EHLO, a message with dot lines, a refused relay, an unknown user.
with smtplib.SMTP(HOST, smtp_port, timeout=10) as smtp:
    code, _ = smtp.ehlo("client.example")
    check("EHLO is answered 250", code == 250)
    check("PIPELINING is offered", smtp.has_extn("pipelining"))
    check("SIZE is offered", smtp.has_extn("size"))
    check("STARTTLS is not offered without a certificate", not smtp.has_extn("starttls"))
    refused = smtp.sendmail("anna@kolleg.de", ["bob@kolleg.de"], MESSAGE)
    check("sendmail accepted for bob", refused == {})
    try:
        smtp.sendmail("anna@kolleg.de", ["carl@elsewhere.example"], MESSAGE)
        check("relay to another domain is refused", False)
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["carl@elsewhere.example"]
        check("relay to another domain is refused with 550 5.7.1", code == 550 and text.startswith(b"5.7.1"))
    try:
        smtp.sendmail("anna@kolleg.de", ["nobody@kolleg.de"], MESSAGE)
        check("unknown local user is refused", False)
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["nobody@kolleg.de"]
        check("unknown local user is refused with 550 5.1.1", code == 550 and text.startswith(b"5.1.1"))
    refused = smtp.sendmail("anna@kolleg.de", ["bob@kolleg.de", "nobody@kolleg.de"], "Subject: second\r\n\r\nzwei\r\n")
    check("a partly refused transaction still delivers", list(refused) == ["nobody@kolleg.de"])
    code, _ = smtp.noop()
    check("NOOP", code == 250)
    code, _ = smtp.verify("bob")
    check("VRFY answers 252", code == 252)

# SMTP AUTH (PLAIN and LOGIN) without TLS, as the classroom server allows.
with smtplib.SMTP(HOST, smtp_port, timeout=10) as smtp:
    smtp.ehlo("client.example")
    try:
        smtp.login("anna@kolleg.de", "falsch")
        check("a wrong password is refused", False)
    except smtplib.SMTPAuthenticationError as e:
        check("a wrong password is refused with 535", e.smtp_code == 535)
with smtplib.SMTP(HOST, smtp_port, timeout=10) as smtp:
    smtp.ehlo("client.example")
    smtp.login("anna", "geheim")
    check("AUTH succeeds", True)

# POP3: the classic handout session for bob.
pop = poplib.POP3(HOST, pop3_port, timeout=10)
check("POP3 greeting is +OK", pop.getwelcome().startswith(b"+OK"))
pop.user("bob")
pop.pass_("topSecret")
count, size = pop.stat()
check("STAT shows two messages", count == 2)
_, listing, _ = pop.list()
check("LIST lists two messages", len(listing) == 2)
_, lines, octets = pop.retr(1)
text = b"\r\n".join(lines).decode()
msg = email.message_from_string(text)
check("RETR 1 has the subject", msg["Subject"] == "Hausaufgabe")
check("RETR 1 carries a Received header", msg["Received"] is not None and "kolleg.de" in msg["Received"])
check("RETR 1 has the Return-Path", msg["Return-Path"] == "<anna@kolleg.de>")
check("dot lines survive both ways", "\r\n.\r\n.. a line that starts with two dots\r\n" in text)
_, uids, _ = pop.uidl()
check("UIDL lists two ids", len(uids) == 2)
_, top, _ = pop.top(1, 0)
check("TOP 1 0 ends with the header", top[-1] == b"" and b"Subject: Hausaufgabe" in top)
pop.dele(1)
count, _ = pop.stat()
check("DELE hides the message", count == 1)
pop.quit()

pop = poplib.POP3(HOST, pop3_port, timeout=10)
pop.user("bob@kolleg.de")
pop.pass_("topSecret")
count, _ = pop.stat()
check("the deletion was committed at QUIT", count == 1)
try:
    second = poplib.POP3(HOST, pop3_port, timeout=10)
    second.user("bob")
    second.pass_("topSecret")
    check("a second session on the same maildrop is refused", False)
except poplib.error_proto as e:
    check("a second session gets -ERR [IN-USE]", str(e).startswith("b'-ERR [IN-USE]"))
pop.quit()

pop = poplib.POP3(HOST, pop3_port, timeout=10)
try:
    pop.user("bob")
    pop.pass_("wrong")
    check("a wrong POP3 password is refused", False)
except poplib.error_proto as e:
    check("a wrong POP3 password gets -ERR [AUTH]", str(e).startswith("b'-ERR [AUTH]"))
pop.quit()
print("all checks passed")
