"""Drives a terminal program through a pseudo-terminal, as a person at the
keyboard would, for the Rust tests (telnet, plink, send-mail, fetch-mail).

    python3 keyboard.py [--key-delay SECS] [--wait SECS] KEYS_HEX UNTIL_HEX [KEYS_HEX UNTIL_HEX ...] -- PROGRAM ARGS...

For each pair it types KEYS (one byte per write, like a keyboard) and reads
what the terminal shows until UNTIL appears; then it waits for the program
to end. It prints one line of hex per step (what was shown from the end of
the previous step's UNTIL through this one's), then a line with the hex of
what came after the last step, then the exit status. A step that does not see UNTIL within --wait
seconds ends the run with status 3 and what was shown on standard error.

The terminal does not turn LF into CR LF on output (ONLCR off), so the
bytes are the ones the program wrote; Enter is CR, as on a keyboard.
"""

import os
import pty
import select
import sys
import termios
import time


def main():
    args = sys.argv[1:]
    key_delay = 0.0
    wait = 10.0
    while args and args[0].startswith("--") and args[0] != "--":
        if args[0] == "--key-delay":
            key_delay = float(args[1])
        elif args[0] == "--wait":
            wait = float(args[1])
        else:
            sys.exit("unknown option " + args[0])
        args = args[2:]
    split = args.index("--")
    pairs, program = args[:split], args[split + 1:]
    steps = [(bytes.fromhex(pairs[i]), bytes.fromhex(pairs[i + 1]))
             for i in range(0, len(pairs), 2)]

    pid, fd = pty.fork()
    if pid == 0:
        attrs = termios.tcgetattr(0)
        attrs[1] &= ~termios.ONLCR
        termios.tcsetattr(0, termios.TCSANOW, attrs)
        try:
            os.execvp(program[0], program)
        finally:
            os._exit(127)

    shown = bytearray()

    def read_some(timeout):
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        shown.extend(data)
        return True

    for keys, until in steps:
        for b in keys:
            os.write(fd, bytes([b]))
            if key_delay:
                time.sleep(key_delay)
        deadline = time.monotonic() + wait
        while until not in shown:
            if time.monotonic() > deadline or not read_some(0.05):
                sys.stderr.write("waited for %r, the terminal showed %r\n"
                                 % (until, bytes(shown)))
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                sys.exit(3)
        end = shown.index(until) + len(until)
        print(shown[:end].hex(), flush=True)
        del shown[:end]

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and read_some(0.05):
        pass
    print(shown.hex())
    if time.monotonic() >= deadline:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))


main()
