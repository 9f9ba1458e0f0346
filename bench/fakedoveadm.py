#!/usr/bin/env python3
"""A FAKE doveadm HTTP API for `make bench-scale` only: it answers every
ferryStatus / ferryPull / ferrySync with one complete INBOX, at once or
after DELAY seconds (so that many pulls are in flight together), so
what is measured is ferryd's own cost (scheduling, state writes, status),
not a mail server's. Never used by a correctness test.

usage: fakedoveadm.py PORT [DELAY]  (listens on 127.0.0.1, prints "ready")"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FOLDER = {"folder": "INBOX", "state": "complete", "old": "10", "local": "10",
          "copied": "0", "renumbered": "0", "messages": "10"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        time.sleep(DELAY)
        out = []
        for cmd, _params, tag in json.loads(body):
            out.append(["doveadmResponse", [dict(FOLDER)] if cmd.startswith("ferry") else [],
                        tag])
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048

    def handle_error(self, request, client_address):
        pass  # ferryd closing its connection after the answer: not an error here


DELAY = 0.0

if __name__ == "__main__":
    DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    srv = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    srv.serve_forever()
