"""A scripted DNS responder on 127.0.0.1 (UDP) that answers late: the
first `slow` queries are answered after `delay` seconds, later ones at
once. It knows one name (an A record); AAAA and other types get an empty
NOERROR answer, other names NXDOMAIN. A real server (NSD, test_dns.py)
cannot be told to answer late, so the delay is scripted here; the
question section is echoed byte for byte (evdns randomizes the case of the
name and checks it)."""
import socket
import struct
import threading
import time


def _question_end(pkt):
    i = 12
    while pkt[i] != 0:
        i += 1 + pkt[i]
    return i + 1 + 4  # the root label, QTYPE, QCLASS


def _qname(pkt):
    labels, i = [], 12
    while pkt[i] != 0:
        labels.append(pkt[i + 1:i + 1 + pkt[i]].decode("ascii", "replace"))
        i += 1 + pkt[i]
    return ".".join(labels).lower(), struct.unpack("!H", pkt[i + 1:i + 3])[0]


class SlowDns:
    def __init__(self, name, address, delay=5.0, slow=2):
        self.name, self.address, self.delay, self.slow = name.lower(), address, delay, slow
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = []   # (time received, name, type)
        self.answers = []   # (time sent, name, type)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stopped = False

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopped = True
        self.sock.close()

    def _answer(self, pkt):
        end = _question_end(pkt)
        name, qtype = _qname(pkt)
        known = name == self.name
        flags = 0x8180 if known else 0x8183  # response, RD, RA; NXDOMAIN
        ancount = 1 if known and qtype == 1 else 0
        out = pkt[:2] + struct.pack("!HHHHH", flags, 1, ancount, 0, 0) + pkt[12:end]
        if ancount:
            out += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(self.address)
        return out, name, qtype

    def _send(self, pkt, peer):
        out, name, qtype = self._answer(pkt)
        try:
            self.sock.sendto(out, peer)
        except OSError:
            return
        with self.lock:
            self.answers.append((time.time(), name, qtype))

    def _serve(self):
        while not self.stopped:
            try:
                pkt, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(pkt) < 17:
                continue
            name, qtype = _qname(pkt)
            with self.lock:
                self.queries.append((time.time(), name, qtype))
                late = len(self.queries) <= self.slow
            if late:
                threading.Timer(self.delay, self._send, (pkt, peer)).start()
            else:
                self._send(pkt, peer)
