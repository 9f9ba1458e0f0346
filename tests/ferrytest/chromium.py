"""Debian's headless Chromium driven over the DevTools protocol with
python3-websocket: no browser download, no network beyond 127.0.0.1.

    with Chromium(workdir) as b:
        b.goto("http://127.0.0.1:8025/dashboard")
        b.wait_js("document.title === 'Ferry migration'", 20, "the page")
        b.screenshot(path)

Started with a fresh profile and every background service off (it would
otherwise reach out to the network); ended by PID."""
import base64
import json
import os
import shutil
import signal
import subprocess
import urllib.request

import websocket

from .sandbox import _free_ports, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def available():
    return os.access(CHROMIUM, os.X_OK)


class Chromium:
    def __init__(self, workdir, width=1400, height=1000):
        self.dir = workdir
        self.downloads = os.path.join(workdir, "downloads")
        os.makedirs(self.downloads, exist_ok=True)
        self.size = (width, height)
        self.proc = self.ws = None
        self.seq = 0
        self.events = []  # DevTools events received (console, exceptions, log)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        port = _free_ports(1)[0]
        profile = os.path.join(self.dir, "profile")
        os.makedirs(profile, exist_ok=True)
        self.log = open(os.path.join(self.dir, "chromium.log"), "w")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
             "--user-data-dir=" + profile, "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=%d" % port,
             "--window-size=%d,%d" % self.size, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        base = "http://127.0.0.1:%d" % port

        def page_target():
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited with %s (see %s)" % (
                    self.proc.returncode, self.log.name))
            try:
                with urllib.request.urlopen(base + "/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
            except OSError:
                return None
            return pages[0]["webSocketDebuggerUrl"] if pages else None
        url = wait_until(page_target, 60, "chromium's DevTools endpoint")
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.setDownloadBehavior", behavior="allow", downloadPath=self.downloads)

    def stop(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self.log.close()

    # ---- protocol ------------------------------------------------------------
    def call(self, method, **params):
        self.seq += 1
        mid = self.seq
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def js(self, expression):
        """The expression's value (promises awaited); a thrown exception
        is raised here."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError("%s: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait_js(self, expression, timeout, what):
        """Waits until the expression is truthy; returns its value."""
        return wait_until(lambda: self.js(expression), timeout, what, interval=0.1)

    def goto(self, url):
        self.call("Page.navigate", url=url)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))
        return path

    def errors(self):
        """JavaScript exceptions, console errors and the browser's own
        error entries (CSP violations, failed loads) seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "") + " " +
                           str(p["exceptionDetails"].get("exception", {}).get("description", "")))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", "")))
                                    for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append("%s: %s %s" % (p["entry"].get("source"), p["entry"].get("text"),
                                          p["entry"].get("url", "")))
        return out

    def downloaded(self, name):
        """The path of a finished download, or None."""
        p = os.path.join(self.downloads, name)
        return p if os.path.exists(p) and not os.path.exists(p + ".crdownload") else None
