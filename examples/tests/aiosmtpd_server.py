"""An aiosmtpd server for the client interop test.

Usage: aiosmtpd_server.py OUTDIR
Listens on a free loopback port, prints "PORT <n>", stores each message as
OUTDIR/<n>.eml with the envelope in OUTDIR/<n>.env, and accepts AUTH
PLAIN/LOGIN for anna/geheim. Stops when standard input closes.
"""

import os
import socket
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

outdir = sys.argv[1]
count = 0


class Store:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        with open(os.path.join(outdir, f"{count}.eml"), "wb") as f:
            f.write(envelope.original_content)
        with open(os.path.join(outdir, f"{count}.env"), "w") as f:
            f.write(envelope.mail_from + "\n" + "\n".join(envelope.rcpt_tos) + "\n")
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"anna" and auth_data.password == b"geheim"
    # handled=False: aiosmtpd then sends its 535 itself.
    return AuthResult(success=ok, handled=False)


with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
controller = Controller(
    Store(),
    hostname="127.0.0.1",
    port=port,
    authenticator=authenticator,
    auth_require_tls=False,
    decode_data=False,
)
controller.start()
print("PORT", port, flush=True)
sys.stdin.read()
controller.stop()
