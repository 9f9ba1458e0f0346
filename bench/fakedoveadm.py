#!/usr/bin/env python3
"""A FAKE doveadm HTTP API for `make bench-scale` only: the test suite's
recording fake (tests/ferrytest/fakepull.py) in a process of its own, every
user's INBOX complete from the start, every answer held DELAY seconds (so
that many pulls are in flight together): what is measured is ferryd's own
cost (scheduling, state writes, status), not a mail server's.

usage: fakedoveadm.py PORT [DELAY]  (listens on 127.0.0.1, prints "ready")"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from ferrytest.fakepull import FakePull  # noqa: E402

if __name__ == "__main__":
    fake = FakePull(host_of=lambda user: "", port=int(sys.argv[1]), complete=True,
                    delay=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
    print("ready", flush=True)
    fake.server.serve_forever()
