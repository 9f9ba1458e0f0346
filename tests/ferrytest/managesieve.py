"""A minimal ManageSieve (RFC 5804) client for the tests: seeds scripts on
an old server and reads them back, independently of ferryd's C client."""
import base64
import re
import socket


class ManageSieveError(RuntimeError):
    pass


class ManageSieve:
    def __init__(self, host, port, user, password, authz=None, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        self.caps = self._response()[0]
        if authz:  # authzid NUL authcid NUL password: an admin acting as authz
            raw = "%s\0%s\0%s" % (authz, user, password)
        else:
            raw = "\0%s\0%s" % (user, password)
        self.command('AUTHENTICATE "PLAIN" "%s"' % base64.b64encode(raw.encode()).decode())

    def _line(self):
        line = self.f.readline()
        if not line:
            raise ManageSieveError("connection closed")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def _response(self):
        """(data lines, final line); a literal {n} is read whole."""
        data = []
        while True:
            line = self._line()
            m = re.match(r"^\{(\d+)\+?\}$", line)
            if m:
                data.append(self.f.read(int(m.group(1))).decode("utf-8", "replace"))
                self._line()
                continue
            if re.match(r"^(OK|NO|BYE)\b", line):
                return data, line
            data.append(line)

    def command(self, text, literal=None):
        if literal is not None:
            b = literal.encode()
            self.sock.sendall(("%s {%d+}\r\n" % (text, len(b))).encode() + b + b"\r\n")
        else:
            self.sock.sendall(text.encode() + b"\r\n")
        data, final = self._response()
        if not final.startswith("OK"):
            raise ManageSieveError("%s: %s" % (text.split()[0], final))
        return data

    @staticmethod
    def q(s):
        return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')

    def put(self, name, text):
        self.command("PUTSCRIPT %s" % self.q(name), text)

    def activate(self, name):
        self.command("SETACTIVE %s" % self.q(name))

    def list(self):
        """{name: active}"""
        out = {}
        for line in self.command("LISTSCRIPTS"):
            m = re.match(r'^"((?:[^"\\]|\\.)*)"( ACTIVE)?$', line)
            if m:
                out[m.group(1)] = bool(m.group(2))
        return out

    def get(self, name):
        return self.command("GETSCRIPT %s" % self.q(name))[0]

    def close(self):
        try:
            self.command("LOGOUT")
        except (ManageSieveError, OSError):
            pass
        self.sock.close()
