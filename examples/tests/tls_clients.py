"""STARTTLS and STLS against the toy server with a self-signed certificate.

Usage: tls_clients.py SMTP_PORT POP3_PORT
"""

import poplib
import smtplib
import ssl
import sys

HOST = "127.0.0.1"
smtp_port, pop3_port = int(sys.argv[1]), int(sys.argv[2])
# The classroom certificate is self-signed: no verification.
context = ssl._create_unverified_context()


def check(what, condition):
    if not condition:
        print("FAIL", what)
        sys.exit(1)
    print("ok", what)


with smtplib.SMTP(HOST, smtp_port, timeout=10) as smtp:
    smtp.ehlo("client.example")
    check("STARTTLS is offered", smtp.has_extn("starttls"))
    check("AUTH waits for TLS", not smtp.has_extn("auth"))
    code, _ = smtp.starttls(context=context)
    check("STARTTLS is answered 220", code == 220)
    smtp.ehlo("client.example")
    check("AUTH is offered over TLS", "PLAIN" in smtp.esmtp_features.get("auth", "").upper())
    check("STARTTLS is not offered twice", not smtp.has_extn("starttls"))
    smtp.login("anna", "geheim")
    refused = smtp.sendmail("anna@kolleg.de", ["carl@elsewhere.example"], "Subject: relay\r\n\r\nout\r\n")
    check("an authenticated client may address other domains", refused == {})
    refused = smtp.sendmail("anna@kolleg.de", ["bob@kolleg.de"], "Subject: secret\r\n\r\nover TLS\r\n")
    check("mail over TLS is accepted", refused == {})

pop = poplib.POP3(HOST, pop3_port, timeout=10)
caps = pop.capa()
check("STLS is offered", "STLS" in caps)
pop.stls(context=context)
pop.user("bob")
pop.pass_("topSecret")
count, _ = pop.stat()
check("bob has the message sent over TLS", count == 1)
_, lines, _ = pop.retr(1)
check("it was received with ESMTPSA", any(b"with ESMTPSA" in line for line in lines))
pop.quit()
print("all checks passed")
