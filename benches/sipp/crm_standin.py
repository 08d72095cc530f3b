#!/usr/bin/env python3
"""A stand-in CRM for benches/sipp/soak.sh: the receiving end of a
sipscreen `[[crm.webhook]]` sink.

Answers every POST 200 once its signature checks out
(`X-Sipscreen-Signature: sha256=<hex HMAC-SHA256 of the body>` under the
secret in the environment variable named by --secret-env; 401 when it does
not, 400 for a body that is not a call event), and counts what it
received: per event kind, duplicates (the same call and kind twice) and
events out of order for their call (answered or ended before started,
ended before answered). GET /stats answers the counts as JSON.

Usage: crm_standin.py --port PORT [--secret-env NAME]
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDER = {"call.started": 1, "call.answered": 2, "call.ended": 4}


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.received = 0
        self.by_kind = {}
        self.duplicates = 0
        self.out_of_order = 0
        self.bad_signature = 0
        self.bad_body = 0
        # call_id -> bit set of the kinds seen
        self.seen = {}

    def add(self, kind, call):
        bit = ORDER.get(kind, 0)
        with self.lock:
            self.received += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            had = self.seen.get(call, 0)
            if bit and had & bit:
                self.duplicates += 1
            # started first; answered before ended
            if (
                (kind == "call.started" and had & 6)
                or (kind == "call.answered" and (not had & 1 or had & 4))
                or (kind == "call.ended" and not had & 1)
            ):
                self.out_of_order += 1
            self.seen[call] = had | bit

    def stats(self):
        with self.lock:
            return {
                "received": self.received,
                "by_kind": dict(self.by_kind),
                "calls": len(self.seen),
                "duplicates": self.duplicates,
                "out_of_order": self.out_of_order,
                "bad_signature": self.bad_signature,
                "bad_body": self.bad_body,
            }


def handler(counts, secret):
    class Handler(BaseHTTPRequestHandler):
        # keep-alive: sipscreen's HTTP client reuses one connection
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY: else the body, a second small segment after the
        # headers, waits for the client's delayed ACK (40 ms per request).
        disable_nagle_algorithm = True

        def answer(self, code, body=b"{}"):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            if secret is not None:
                want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                got = self.headers.get("X-Sipscreen-Signature", "")
                if not hmac.compare_digest(want, got):
                    with counts.lock:
                        counts.bad_signature += 1
                    return self.answer(401, b'{"error": "bad signature"}')
            try:
                ev = json.loads(body)
                kind, call = ev["event"], ev["call_id"]
                if kind != self.headers.get("X-Sipscreen-Event"):
                    raise ValueError("X-Sipscreen-Event differs from the body's event")
            except (ValueError, KeyError, TypeError):
                with counts.lock:
                    counts.bad_body += 1
                return self.answer(400, b'{"error": "not a call event"}')
            counts.add(kind, call)
            self.answer(200)

        def do_GET(self):
            if self.path != "/stats":
                return self.answer(404, b'{"error": "not found"}')
            self.answer(200, json.dumps(counts.stats()).encode())

        def log_message(self, fmt, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret-env")
    a = p.parse_args()
    secret = None
    if a.secret_env:
        v = os.environ.get(a.secret_env)
        if not v:
            sys.exit(f"crm_standin.py: {a.secret_env} is not set")
        secret = v.encode()
    counts = Counts()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), handler(counts, secret))
    srv.daemon_threads = True
    srv.serve_forever()


if __name__ == "__main__":
    main()
