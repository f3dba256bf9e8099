"""A real SMTP server for CLM's tests (aiosmtpd): it accepts every message and keeps it.

    python smtp_sink.py --port PORT --dir DIR [--tls-cert PEM --tls-key PEM [--starttls]]
                        [--auth-user USER --auth-pass PASS [--auth-mechanisms LOGIN,PLAIN]]

Each message is saved in DIR as NNNNNN.eml (the bytes of the DATA section as the client sent
them, dot-unstuffed, without the final ".") and then NNNNNN.json ({"mail_from", "rcpt_to"}); a
reader takes a message once its .json exists. DIR/ready appears once the server accepts
connections.

Failures on demand: a file DIR/fail-rcpt or DIR/fail-data holding "N CODE" makes the next N
RCPT TO (or DATA) commands answer CODE (e.g. 451 or 550) instead of 250; the count goes down
with each, and the file is removed at zero. Write it atomically (write elsewhere, rename).

TLS: with --tls-cert/--tls-key the server speaks TLS from the first byte (implicit TLS, as on
port 465); adding --starttls makes it a plain server that offers STARTTLS with that certificate
and refuses MAIL before it (port 587). AUTH: with --auth-user/--auth-pass it offers AUTH (the
mechanisms listed, PLAIN and LOGIN by default), only once the connection is encrypted when it
has TLS at all, and refuses MAIL until the client authenticated. Every AUTH try is appended to
DIR/auth.log as a JSON line {"mechanism", "user", "ok", "tls"}. A message's .json also says
"tls" (the protocol, e.g. "TLSv1.3", or null) and "auth" ({"mechanism", "user"} or null).

Stops on SIGTERM or SIGINT, or when its parent process dies (stdin closed).
"""

import argparse
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

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
        auth = session.auth_data if session.authenticated else None
        meta = {"mail_from": envelope.mail_from, "rcpt_to": list(envelope.rcpt_tos),
                "tls": tls_version(server), "auth": auth}
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.replace(base + ".json.tmp", base + ".json")
        return f"250 2.0.0 Ok: queued as {self.seq:06d}"


def tls_version(server):
    """The TLS protocol of the server's connection ("TLSv1.3"), or None in the clear."""
    ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
    return ssl_object.version() if ssl_object else None


class Authenticator:
    """Accepts one user and password; logs every try to DIR/auth.log."""

    def __init__(self, directory, user, password):
        self.log = os.path.join(directory, "auth.log")
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == self.user and auth_data.password == self.password)
        user = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else None
        with open(self.log, "a") as f:
            f.write(json.dumps({"mechanism": mechanism, "user": user, "ok": ok,
                                "tls": tls_version(server)}) + "\n")
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data={"mechanism": mechanism, "user": user})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--auth-user")
    parser.add_argument("--auth-pass")
    parser.add_argument("--auth-mechanisms", default="LOGIN,PLAIN")
    args = parser.parse_args()

    options = {}
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    if context and args.starttls:
        options.update(tls_context=context, require_starttls=True)
    elif context:
        options["ssl_context"] = context
    if args.auth_user:
        mechanisms = {m.strip().upper() for m in args.auth_mechanisms.split(",")}
        options.update(
            authenticator=Authenticator(args.dir, args.auth_user, args.auth_pass or ""),
            auth_required=True,
            auth_exclude_mechanism=[m for m in ("LOGIN", "PLAIN") if m not in mechanisms],
            # aiosmtpd counts only STARTTLS as encryption; behind implicit TLS everything is
            # encrypted already. Without any TLS the server takes AUTH in the clear (a test of
            # what the client does then).
            auth_require_tls=bool(context and args.starttls),
        )

    controller = Controller(Sink(args.dir), hostname="127.0.0.1", port=args.port,
                            decode_data=False, enable_SMTPUTF8=True, **options)
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
