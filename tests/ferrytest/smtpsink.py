"""An SMTP sink on 127.0.0.1: accepts every message and keeps it, so a test
can read what a server sent (Sieve vacation replies, redirects). Plain
SMTP as RFC 5321 says, no relay: nothing leaves the machine."""
import socketserver
import threading


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        sink = self.server.sink
        w = self.wfile.write
        w(b"220 sink ESMTP\r\n")
        mail_from, rcpts = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO", "LHLO"):
                w(b"250-sink\r\n250 8BITMIME\r\n" if verb != "HELO" else b"250 sink\r\n")
            elif verb == "MAIL":
                mail_from, rcpts = cmd.split(":", 1)[1].strip().split()[0].strip("<>"), []
                w(b"250 ok\r\n")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].strip().split()[0].strip("<>"))
                w(b"250 ok\r\n")
            elif verb == "DATA":
                w(b"354 go\r\n")
                data = []
                while True:
                    d = self.rfile.readline()
                    if not d or d in (b".\r\n", b".\n"):
                        break
                    data.append(d[1:] if d.startswith(b"..") else d)
                with sink.lock:
                    sink.messages.append((mail_from, rcpts, b"".join(data)))
                w(b"250 queued\r\n")
            elif verb == "QUIT":
                w(b"221 bye\r\n")
                return
            else:  # RSET, NOOP, ...
                w(b"250 ok\r\n")


class SmtpSink:
    def __init__(self, port=0):
        """port 0: a free one, bound at once (self.port), so nothing can
        take it between choosing and binding"""
        self.messages = []  # (envelope sender, [recipients], raw message)
        self.lock = threading.Lock()
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.server.sink = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
