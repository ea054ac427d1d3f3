"""Opens the teacher's page in headless Chromium, runs the handout against
the server while the page is open, and reports what the page showed.

Usage: browser.py CHROMIUM PAGE_URL SMTP_PORT POP3_PORT SCREENSHOT.png

Chromium is driven over its DevTools pipe (--remote-debugging-pipe: JSON
messages ended by NUL on file descriptors 3 and 4), so nothing but the
standard library is needed. Prints one `name: value` line per finding;
the Rust test checks them. Exits non-zero when the page never showed
what it should.
"""

import base64
import json
import os
import poplib
import smtplib
import subprocess
import sys
import tempfile
import time

chromium, url, smtp_port, pop3_port, shot = sys.argv[1:6]
smtp_port, pop3_port = int(smtp_port), int(pop3_port)
SUBJECT = (
    "<script>document.title='pwned';window.pwned=1</script>"
    '<img src=x onerror="window.pwned=2">'
)
DEADLINE = time.monotonic() + 25


class Browser:
    def __init__(self):
        self.profile = tempfile.TemporaryDirectory()
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        high = [os.dup(fd) for fd in (to_r, to_w, from_r, from_w)]
        for fd in (to_r, to_w, from_r, from_w):
            os.close(fd)
        to_r, to_w, from_r, from_w = high
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)
        self.proc = subprocess.Popen(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--remote-debugging-pipe",
                "--user-data-dir=" + self.profile.name, "--window-size=1600,900",
                "--hide-scrollbars", "about:blank",
            ],
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in (3, 4, to_r, from_w):
            os.close(fd)
        self.out = os.fdopen(to_w, "wb", buffering=0)
        self.inp = os.fdopen(from_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def _read(self):
        while b"\0" not in self.buf:
            chunk = self.inp.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        message, self.buf = self.buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        self.out.write(json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, what, expression):
        while time.monotonic() < DEADLINE:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        print("timed out waiting for:", what)
        print("page text:", self.evaluate("document.body.innerText"))
        sys.exit(1)

    def close(self):
        try:
            self.call("Browser.close", session=False)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.profile.cleanup()


browser = Browser()
try:
    targets = browser.call("Target.getTargets")["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    browser.session = browser.call(
        "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
    )["sessionId"]
    browser.call("Page.enable")
    # A projector's screen.
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1600, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.call("Page.navigate", {"url": url})
    browser.wait_for("the page", "document.readyState === 'complete' && !!document.getElementById('connections')")
    browser.wait_for("the event stream", "document.body.dataset.state === 'live'")
    title = browser.evaluate("document.title")
    # Gone if the page reloads.
    browser.evaluate("window.loadedOnce = true")

    # The handout, while the page is open: anna sends, bob fetches, and the
    # relayed example goes to the queue.
    message = (
        "From: anna@kolleg.de\r\nTo: bob@kolleg.de\r\n"
        f"Subject: {SUBJECT}\r\n\r\nHallo Bob,\r\nbis morgen!\r\nAnna\r\n"
    )
    with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="pc12", timeout=10) as s:
        s.helo("pc12")
        s.sendmail("anna@kolleg.de", ["bob@kolleg.de"], message)
    pop = poplib.POP3("127.0.0.1", pop3_port, timeout=10)
    pop.user("bob")
    pop.pass_("topSecret")
    pop.stat()
    pop.list()
    pop.retr(1)
    pop.quit()
    with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="pc12", timeout=10) as s:
        s.helo("pc12")
        s.sendmail("bar@example.org", ["foo@example.com"], "Subject: Hallo Welt\r\n\r\nHallo\r\n")

    subject_js = json.dumps(SUBJECT)
    browser.wait_for(
        "the message",
        f"[...document.querySelectorAll('#mailboxes .subject')].some(e => e.textContent === {subject_js})",
    )
    browser.wait_for(
        "the POP3 session",
        "[...document.querySelectorAll('#connections .line.C')].some(e => e.textContent === 'C:PASS ****')",
    )
    browser.wait_for("the queue", "!!document.querySelector('#queue .state.deferred')")
    # Open the message's body for the picture.
    browser.evaluate(
        "(() => { const m = document.querySelector('#mailboxes details.msg');"
        " m.open = true; m.querySelector('details.part:nth-of-type(2)').open = true; })()"
    )
    time.sleep(0.3)

    print("reloaded:", browser.evaluate("window.loadedOnce !== true"))
    print("script ran:", browser.evaluate("window.pwned !== undefined"))
    print("title:", browser.evaluate("document.title"))
    print("title unchanged:", browser.evaluate("document.title") == title)
    print("subject shown:", browser.evaluate(
        "document.querySelector('#mailboxes .subject').textContent"))
    print("elements from mail:", browser.evaluate(
        "document.querySelectorAll('main img, main script').length"))
    print("connections:", browser.evaluate("document.querySelectorAll('#connections .conn').length"))
    print("pop3 commands:", browser.evaluate(
        "[...document.querySelectorAll('#connections .conn')]"
        ".find(c => c.textContent.includes('USER bob'))"
        ".querySelectorAll('.line.C').length"))
    print("queue state:", browser.evaluate("document.querySelector('#queue .rcpt .state').textContent"))
    png = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"})["data"])
    with open(shot, "wb") as f:
        f.write(png)
    print("screenshot:", len(png) > 10000)
finally:
    browser.close()
