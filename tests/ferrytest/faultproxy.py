"""A TCP proxy between NEW's imapc and OLD that injects faults.

    proxy = FaultProxy(sandbox.port("old")).start()
    # NEW reaches OLD through it for one user:
    #   Sandbox(new_userdb_extra={"u": "userdb_imapc_port=%d" % proxy.port})
    proxy.arm(Fault("cut", at_byte=1234))       # one-shot
    ... run a pull ...
    proxy.fired.wait(...)

The proxy follows the IMAP stream from OLD (lines and {N} literals) and the
tags of the client's FETCH commands, so a fault can be placed

  at_byte=N      after N bytes OLD -> NEW since arm() (0 = at once)
  in_literal     ... and then inside a BODY[] literal (mid-literal)
  boundary       ... and then between two responses while a FETCH is in
                 flight (needed for "no" / "bye")
  pattern=rx     ... and then right after a line from OLD matching rx

Actions:
  cut       deliver the bytes before the point, then RST both sides
  truncate  deliver the bytes before the point, then FIN to NEW, close OLD
  stall     stop forwarding in both directions for `duration` seconds
            (None: until a side hangs up), then go on
  hold      like stall, but until release(); sets `held` so the test can
            act at that exact point (kill -9 a process, restart a server)
  no        answer the oldest FETCH in flight with a tagged NO, drop OLD's
            own rest of that command's response (what a server failing
            mid-FETCH sends)
  bye       send an untagged BYE, then close both sides

Counters: bytes and BODY[] literals from OLD (bodies seen by NEW), per arm.
"""
import re
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass

LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n$")
FETCH_CMD = re.compile(rb"^(\S+) (?:UID )?FETCH ", re.I)


@dataclass
class Fault:
    action: str  # cut | truncate | stall | hold | no | bye
    at_byte: int = 0
    in_literal: bool = False
    boundary: bool = False
    pattern: bytes = None
    duration: float = None  # stall

    def __post_init__(self):
        assert self.action in ("cut", "truncate", "stall", "hold", "no", "bye"), self.action
        if self.action in ("no", "bye"):
            self.boundary = True


class _Conn:
    def __init__(self, client, upstream):
        self.client, self.upstream = client, upstream
        self.line = bytearray()  # partial line from OLD
        self.lit = 0  # literal bytes still to come
        self.lit_pos = 0  # bytes of the current literal seen
        self.body_lit = False  # the current literal is a BODY[] one
        self.mid = False  # inside a response that continues after a literal
        self.c2s_line = bytearray()
        self.pending = []  # tags of FETCH commands in flight
        self.discard_tag = None  # "no": dropping OLD's rest for this tag
        self.stalled_until = 0.0  # 0: not stalled; inf: hold / forever
        self.s2c_pending = b""  # from OLD, not forwarded yet (stall)
        self.c2s_pending = b""
        self.upstream_eof = False
        self.closed = False


def _rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.conns = []
        self.lock = threading.Lock()
        self.fault = None
        self.fired = threading.Event()
        self.held = threading.Event()
        self._release = None
        self._stop = False
        self.thread = None
        self.reset_counters()

    # ---- control (test thread) ---------------------------------------------
    def start(self):
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, ("accept", None))
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name="faultproxy:%d" % self.port)
        self.thread.start()
        return self

    def stop(self):
        self._stop = True
        self._wake()
        if self.thread:
            self.thread.join(10)
        for c in list(self.conns):
            self._close(c, rst=True)
        self.lsock.close()

    def reset_counters(self):
        self.bytes = 0  # OLD -> NEW since arm / reset
        self.bodies = 0  # BODY[] literals OLD -> NEW
        self.body_bytes = 0
        self.connections = 0

    def arm(self, fault):
        with self.lock:
            self.fault = fault
            self.fired.clear()
            self.held.clear()
            self._release = None
            self.reset_counters()
        self._wake()

    def disarm(self):
        with self.lock:
            self.fault = None

    def release(self, then="resume"):
        """End a hold: 'resume' forwarding, or 'cut' / 'truncate'."""
        with self.lock:
            self._release = then
        self._wake()

    def client_ports(self):
        """Local ports of NEW's side of the live connections (to find the
        process that owns them)."""
        out = []
        for c in list(self.conns):
            try:
                out.append(c.client.getpeername()[1])
            except OSError:
                pass
        return out

    def _wake(self):
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    # ---- the loop ------------------------------------------------------------
    def _loop(self):
        while not self._stop:
            timeout = None
            now = time.monotonic()
            for c in self.conns:
                if 0 < c.stalled_until < float("inf"):
                    t = c.stalled_until - now
                    timeout = t if timeout is None else min(timeout, t)
            events = self.sel.select(None if timeout is None else max(0.0, timeout))
            for key, _ in events:
                kind, c = key.data
                if kind == "accept":
                    self._accept()
                elif kind == "wake":
                    try:
                        self.wake_r.recv(4096)
                    except OSError:
                        pass
                elif not c.closed:
                    self._readable(c, kind)
            self._timers()

    def _accept(self):
        try:
            client, _ = self.lsock.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _rst(client)
            return
        for s in (client, upstream):
            s.setblocking(True)
            s.settimeout(30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = _Conn(client, upstream)
        self.conns.append(c)
        self.connections += 1
        self.sel.register(client, selectors.EVENT_READ, ("c2s", c))
        self.sel.register(upstream, selectors.EVENT_READ, ("s2c", c))

    def _close(self, c, rst=False, fin_client=False):
        if c.closed:
            return
        c.closed = True
        for s in (c.client, c.upstream):
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
        if fin_client:
            try:
                c.client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        for s in (c.client, c.upstream):
            if rst:
                _rst(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass
        if c in self.conns:
            self.conns.remove(c)

    def _send(self, c, sock, data):
        if not data:
            return True
        try:
            sock.sendall(data)
            return True
        except OSError:
            self._close(c)
            return False

    def _readable(self, c, kind):
        src = c.client if kind == "c2s" else c.upstream
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        if not data:
            # a side hung up: pass what OLD sent before it, then close
            if kind == "s2c" and c.stalled_until == 0:
                self._close(c, fin_client=True)
            elif kind == "s2c":  # stalled / held: OLD's close waits too
                c.upstream_eof = True
                try:
                    self.sel.unregister(c.upstream)
                except (KeyError, ValueError):
                    pass
            else:
                self._close(c)
            return
        if c.stalled_until:
            if kind == "c2s":
                c.c2s_pending += data
            else:
                c.s2c_pending += data
            return
        if kind == "c2s":
            self._track_c2s(c, data)
            self._send(c, c.upstream, data)
        else:
            self._s2c(c, data)

    def _track_c2s(self, c, data):
        c.c2s_line += data
        while True:
            i = c.c2s_line.find(b"\n")
            if i < 0:
                break
            line = bytes(c.c2s_line[:i + 1])
            del c.c2s_line[:i + 1]
            m = FETCH_CMD.match(line)
            if m:
                c.pending.append(m.group(1))
        if len(c.c2s_line) > 65536:
            del c.c2s_line[:]

    def _timers(self):
        now = time.monotonic()
        with self.lock:
            release, self._release = self._release, None
        for c in list(self.conns):
            if c.closed or not c.stalled_until:
                continue
            if release and c.stalled_until == float("inf"):
                if release == "cut":
                    self._close(c, rst=True)
                    continue
                if release == "truncate":
                    self._close(c, fin_client=True)
                    continue
                c.stalled_until = now  # resume below
            if c.stalled_until <= now:
                c.stalled_until = 0.0
                s2c, c.s2c_pending = c.s2c_pending, b""
                c2s, c.c2s_pending = c.c2s_pending, b""
                if c2s:
                    self._track_c2s(c, c2s)
                    if not self._send(c, c.upstream, c2s):
                        continue
                if s2c:
                    self._s2c(c, s2c)
                if not c.closed and c.upstream_eof and not c.stalled_until:
                    self._close(c, fin_client=True)

    # ---- OLD -> NEW, where faults fire ----------------------------------------
    def _trigger_ready(self, c, f):
        if self.bytes < f.at_byte:
            return False
        if f.in_literal:
            return c.lit > 0 and c.body_lit and c.lit_pos > 0
        if f.boundary:
            return (c.lit == 0 and not c.line and not c.mid and bool(c.pending)
                    and c.discard_tag is None)
        return True

    def _s2c(self, c, data):
        out = bytearray()
        i, n = 0, len(data)
        while i < n and not c.closed:
            f = self.fault
            if f is not None and f.pattern is None and self._trigger_ready(c, f):
                self._fire(c, f, out, data[i:])
                return
            limit = n  # how far to go before looking again
            if f is not None and f.pattern is None:
                if self.bytes < f.at_byte:
                    limit = min(n, i + (f.at_byte - self.bytes))
                elif f.in_literal or f.boundary:
                    limit = i + 1  # creep up to the point byte by byte
            discarding = c.discard_tag is not None
            if c.lit > 0:
                take = max(1, min(c.lit, limit - i))
                c.lit -= take
                c.lit_pos += take
                if c.body_lit:
                    self.body_bytes += take
                if not discarding:
                    out += data[i:i + take]
                i += take
                self.bytes += take
                continue
            j = data.find(b"\n", i, max(limit, i + 1))
            end = (j + 1) if j >= 0 else max(limit, i + 1)
            chunk = data[i:end]
            c.line += chunk
            if not discarding:
                out += chunk
            i = end
            self.bytes += len(chunk)
            if j < 0:
                continue
            line = bytes(c.line)
            c.line = bytearray()
            m = LITERAL.search(line)
            if m:
                c.mid = True
                c.lit = int(m.group(1))
                c.lit_pos = 0
                c.body_lit = b"BODY[" in line.upper()
                if c.body_lit and not discarding:
                    self.bodies += 1
            else:
                c.mid = False
                self._response_end(c, line)
            if f is not None and f.pattern is not None and not discarding \
                    and self.bytes >= f.at_byte and re.search(f.pattern, line):
                self._fire(c, f, out, data[i:])
                return
        if out and not c.closed:
            self._send(c, c.client, bytes(out))

    def _response_end(self, c, line):
        """A line without a literal ends a response: tagged completions
        take their command off the list."""
        tag = line.split(b" ", 1)[0]
        if tag != b"*" and tag != b"+":
            if c.discard_tag == tag:
                c.discard_tag = None
            if tag in c.pending:
                c.pending.remove(tag)

    def _fire(self, c, f, out, rest):
        self.fault = None
        self.fired.set()
        if f.action == "no":
            tag = c.pending[0]
            out += b"%s NO [SERVERBUG] ferry-faultproxy: injected NO mid-FETCH\r\n" % tag
            c.pending.remove(tag)
            c.discard_tag = tag
            if self._send(c, c.client, bytes(out)):
                out.clear()
                self._s2c(c, rest)
            return
        if f.action == "bye":
            out += b"* BYE [UNAVAILABLE] ferry-faultproxy: injected BYE mid-FETCH\r\n"
            self._send(c, c.client, bytes(out))
            self._close(c, fin_client=True)
            return
        if out and not self._send(c, c.client, bytes(out)):
            return
        if f.action == "cut":
            self._close(c, rst=True)
        elif f.action == "truncate":
            self._close(c, fin_client=True)
        else:  # stall / hold: the rest waits
            c.s2c_pending = rest
            if f.action == "hold" or f.duration is None:
                c.stalled_until = float("inf")
            else:
                c.stalled_until = time.monotonic() + f.duration
            if f.action == "hold":
                self.held.set()


# ---- finding the process behind a connection ---------------------------------

def socket_owner(local_port, pids=None):
    """PID of the process holding the TCP socket bound to 127.0.0.1:local_port
    (NEW's end of a proxied connection), or None; pids: where to look
    (default: every process)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].split(":")[1], 16) == local_port:
                        inode = parts[9]
                        break
        except OSError:
            continue
        if inode:
            break
    if not inode or inode == "0":
        return None
    target = "socket:[%s]" % inode
    import os
    for pid in (map(str, pids) if pids is not None else os.listdir("/proc")):
        if not pid.isdigit():
            continue
        d = "/proc/%s/fd" % pid
        try:
            for fd in os.listdir(d):
                try:
                    if os.readlink("%s/%s" % (d, fd)) == target:
                        return int(pid)
                except OSError:
                    continue
        except OSError:
            continue
    return None
