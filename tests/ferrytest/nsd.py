"""NSD (Debian `nsd`), an authoritative DNS server, on 127.0.0.1 with
zones a test writes: the DNS ferryd checks (docs/ferryd.md, "DNS").

    ns = Nsd(root, {"example.test": zone_text}).start()
    ns.set_zone("example.test", new_text)   # rewritten, reloaded, serving
    ns.stop()
"""
import os
import signal
import socket
import struct
import subprocess

from .sandbox import _descendants, _free_ports, cmdline, proc_alive, wait_until

NSD = "/usr/sbin/nsd"


def available():
    return os.access(NSD, os.X_OK)


def zone(origin, records, ttl=3600, serial=1):
    """Zone text: SOA and NS for origin, then records ("name TTL TYPE data")."""
    return ("$ORIGIN %s.\n$TTL %d\n@ IN SOA ns.%s. hostmaster.%s. %d 3600 600 86400 60\n"
            "@ IN NS ns.%s.\nns IN A 127.0.0.1\n" % (origin, ttl, origin, origin, serial, origin)
            + "".join(r + "\n" for r in records))


def query_serial(port, origin, timeout=1.0):
    """The SOA serial NSD serves for origin (a plain DNS query), or None."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in origin.split(".")) + b"\0"
    pkt = struct.pack(">HHHHHH", 0x1234, 0, 1, 0, 0, 0) + qname + struct.pack(">HH", 6, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(pkt, ("127.0.0.1", port))
        data = s.recv(4096)
    except OSError:
        return None
    finally:
        s.close()
    if len(data) < 12 or struct.unpack(">H", data[6:8])[0] == 0:
        return None
    pos = 12 + len(qname) + 4  # header, the question

    def skip_name(pos):
        while data[pos] != 0:
            if data[pos] >= 0xC0:
                return pos + 2
            pos += data[pos] + 1
        return pos + 1
    pos = skip_name(pos) + 8  # type class ttl
    rdlen = struct.unpack(">H", data[pos:pos + 2])[0]
    end = pos + 2 + rdlen
    # the SOA rdata ends with serial refresh retry expire minimum (5 x 32 bit)
    return struct.unpack(">I", data[end - 20:end - 16])[0]


class Nsd:
    def __init__(self, root, zones, port=None):
        self.dir = os.path.join(root, "nsd")
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or _free_ports(1)[0]
        self.zones = dict(zones)
        self.conf = os.path.join(self.dir, "nsd.conf")
        self.pidfile = os.path.join(self.dir, "nsd.pid")
        self.proc = None

    def _write(self):
        for name, text in self.zones.items():
            with open(os.path.join(self.dir, name + ".zone"), "w") as f:
                f.write(text)
        with open(self.conf, "w") as f:
            f.write("server:\n  ip-address: 127.0.0.1\n  port: %d\n  do-ip6: no\n"
                    "  server-count: 1\n  username: \"\"\n  chroot: \"\"\n  database: \"\"\n"
                    "  zonesdir: \"%s\"\n  pidfile: \"%s\"\n  logfile: \"%s/nsd.log\"\n"
                    "  xfrdfile: \"%s/xfrd.state\"\n  zonelistfile: \"%s/zone.list\"\n"
                    "  xfrdir: \"%s\"\n  verbosity: 1\n  hide-version: yes\n"
                    "remote-control:\n  control-enable: no\n"
                    % (self.port, self.dir, self.pidfile, self.dir, self.dir, self.dir, self.dir))
            for name in self.zones:
                f.write("zone:\n  name: %s\n  zonefile: \"%s.zone\"\n" % (name, name))

    def serial(self, name):
        for line in self.zones[name].splitlines():
            if " SOA " in line:
                return int(line.split()[5])
        return None

    def serving(self, name):
        return query_serial(self.port, name) == self.serial(name)

    def start(self):
        self._write()
        out = open(os.path.join(self.dir, "nsd.out"), "w")
        # -d: foreground, our child; ended by PID in stop()
        self.proc = subprocess.Popen([NSD, "-d", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        for name in self.zones:
            wait_until(lambda: self.proc.poll() is None and self.serving(name), 20,
                       "nsd serving %s on port %d" % (name, self.port))
        return self

    def set_zone(self, name, text):
        """New zone text (with a higher SOA serial); NSD reloads on SIGHUP."""
        self.zones[name] = text
        self._write()
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.serving(name), 20, "nsd serving the new %s" % name)

    def pause(self):
        """SIGSTOP NSD and its server processes: its socket stays open and
        nothing answers (a resolver that does not answer)."""
        for p in [self.proc.pid] + sorted(_descendants(self.proc.pid)):
            os.kill(p, signal.SIGSTOP)

    def resume(self):
        for p in [self.proc.pid] + sorted(_descendants(self.proc.pid)):
            os.kill(p, signal.SIGCONT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # NSD forks its server processes: end any left that run our config
        for p in [int(x) for x in os.listdir("/proc") if x.isdigit()]:
            if proc_alive(p) and self.conf in cmdline(p):
                os.kill(p, signal.SIGKILL)
