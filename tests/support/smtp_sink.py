"""A real SMTP server for CLM's tests (aiosmtpd): it accepts every message and keeps it.

    python smtp_sink.py --port PORT --dir DIR

Each message is saved in DIR as NNNNNN.eml (the bytes of the DATA section as the client sent
them, dot-unstuffed, without the final ".") and then NNNNNN.json ({"mail_from", "rcpt_to"}); a
reader takes a message once its .json exists. DIR/ready appears once the server accepts
connections.

Failures on demand: a file DIR/fail-rcpt or DIR/fail-data holding "N CODE" makes the next N
RCPT TO (or DATA) commands answer CODE (e.g. 451 or 550) instead of 250; the count goes down
with each, and the file is removed at zero. Write it atomically (write elsewhere, rename).

Stops on SIGTERM or SIGINT, or when its parent process dies (stdin closed).
"""

import argparse
import json
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller

MESSAGES = {400: "Requested action not taken", 421: "Service not available", 450: "Mailbox unavailable",
            451: "Local error in processing", 452: "Insufficient storage", 550: "Mailbox unavailable",
            552: "Exceeded storage allocation", 553: "Mailbox name not allowed", 554: "Transaction failed"}


class Sink:
    def __init__(self, directory):
        self.dir = directory
        self.seq = 0

    def _fail(self, stage):
        """The reply to give instead of 250 if DIR/fail-<stage> says so, else None."""
        path = os.path.join(self.dir, "fail-" + stage)
        try:
            with open(path) as f:
                count, code = (int(x) for x in f.read().split())
        except (FileNotFoundError, ValueError):
            return None
        if count <= 0:
            os.remove(path)
            return None
        if count == 1:
            os.remove(path)
        else:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{count - 1} {code}")
            os.replace(tmp, path)
        return f"{code} {MESSAGES.get(code, 'Failure requested by the test')}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self._fail("rcpt")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self._fail("data")
        if reply:
            return reply
        self.seq += 1
        base = os.path.join(self.dir, f"{self.seq:06d}")
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        with open(base + ".eml", "wb") as f:
            f.write(raw)
        meta = {"mail_from": envelope.mail_from, "rcpt_to": list(envelope.rcpt_tos)}
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.replace(base + ".json.tmp", base + ".json")
        return f"250 2.0.0 Ok: queued as {self.seq:06d}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()

    controller = Controller(Sink(args.dir), hostname="127.0.0.1", port=args.port,
                            decode_data=False, enable_SMTPUTF8=True)
    controller.start()
    with open(os.path.join(args.dir, "ready"), "w") as f:
        f.write(str(os.getpid()))

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    # The parent holds our stdin open; when it dies without killing us, stdin reaches EOF.
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main()
