"""A fake-fast doveadm HTTP endpoint for scheduling tests with thousands of
users (tests/test_pgsql_multi.py): not a mail server, a recorder. Each
user has one INBOX, "partial" until a ferryPull of it answered, then
"complete"; every request is held DELAY seconds so that many are in flight
together. It records what a real NEW and OLD would show in their logs:

- `pulls[user]`: how many ferryPull requests the user had (a copy);
- `user_peak`: most requests of one user in flight at once (two ferryd
  pulling the same user at the same time makes it 2);
- `host_peak[host]`: most requests in flight at once for users of one old
  host (each job has at most one request in flight, so this is the number
  of jobs talking to that old host's users at once).

The old host of a user is the test's: host_of(user). Runs in the test's
process (a thread), on 127.0.0.1 only. `make bench-scale` runs it as its
own process (bench/fakedoveadm.py) with every user complete from the
start (complete=True): what it measures is ferryd's own cost. With GATE (a
threading.Event), ferryPull answers wait for it to be set: a test acts on
the store while an answer is known to be on its way."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakePull:
    def __init__(self, host_of, delay=0.02, port=0, complete=False, gate=None):
        self.host_of = host_of
        self.gate = gate  # a threading.Event: ferryPull answers wait for it
        self.waiting = 0  # ferryPull answers waiting for the gate
        self.all_complete = complete
        self.delay = delay
        self.lock = threading.Lock()
        self.complete = set()
        self.pulls = {}
        self.requests = 0
        self.in_user, self.in_host = {}, {}
        self.user_peak, self.host_peak = 0, {}
        self.overlaps = []  # (user, time) where a second request of a user began
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                out = [fake.answer(cmd, params, tag) for cmd, params, tag in json.loads(body)]
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
                pass  # a killed ferryd's connection: its answer goes nowhere

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, cmd, params, tag):
        user = params.get("user", "")
        host = self.host_of(user)
        with self.lock:
            self.requests += 1
            self.in_user[user] = self.in_user.get(user, 0) + 1
            self.in_host[host] = self.in_host.get(host, 0) + 1
            if self.in_user[user] > 1:
                self.overlaps.append((user, time.time()))
            self.user_peak = max(self.user_peak, self.in_user[user])
            self.host_peak[host] = max(self.host_peak.get(host, 0), self.in_host[host])
        try:
            time.sleep(self.delay)
            if cmd == "ferryPull" and self.gate is not None:
                with self.lock:
                    self.waiting += 1
                self.gate.wait()
                with self.lock:
                    self.waiting -= 1
            with self.lock:
                if cmd == "ferryPull":
                    self.pulls[user] = self.pulls.get(user, 0) + 1
                    self.complete.add(user)
                done = self.all_complete or user in self.complete
            row = {"folder": "INBOX", "state": "complete" if done else "partial",
                   "old": "10", "local": "10" if done else "0", "copied": "10" if
                   cmd == "ferryPull" else "0", "renumbered": "0", "messages": "10"}
            return ["doveadmResponse", [row] if cmd.startswith("ferry") else [], tag]
        finally:
            with self.lock:
                self.in_user[user] -= 1
                self.in_host[host] -= 1
