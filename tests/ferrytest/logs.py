"""Counting things in a sandbox instance's log (IMAP logins per user, and the
body_count of their logouts). Lines reach the file asynchronously through
Dovecot's log process, so counts are taken after a barrier / settle()."""
import datetime
import re
import socket
import uuid

from .sandbox import wait_until

# user, authenticating user, session id ("Login:" on 2.3, "Logged in:" on 2.4)
LOGIN = re.compile(r"imap-login: Info: (?:Login|Logged in): user=<([^>]*)>, auth=<([^>]*)>.*session=<([^>]*)>")
# user, session id, body_count, body_bytes of a session's end
LOGOUT_SESSION = re.compile(r"imap\(([^)]*)\)<\d+><([^>]*)>: Info: .*\bbody_count=(\d+)"
                            r" body_bytes=(\d+)")
SESSION_END = re.compile(
    r"imap\(([^)]*)\)<\d+><([^>]*)>: Info: (?:Disconnected|Connection closed)")


def _stamp(line):
    """Seconds of a sandbox log line's "Mon DD HH:MM:SS.uuuuuu" prefix."""
    try:
        t = datetime.datetime.strptime(line[:22], "%b %d %H:%M:%S.%f")
    except ValueError:
        return None
    return (t - datetime.datetime(1900, 1, 1)).total_seconds()


# Dovecot's log process reads imap-login's and imap's pipes in turn and
# stamps each line when it reads it, so a session's end written before the
# next session's Login may still be filed after it, stamped within the same
# read loop (microseconds apart). Lines this close are of uncertain order.
SAME_READ = 0.005


def peak_sessions(log_text, auth):
    """Most IMAP sessions logged in with auth=<auth> open at once, from an
    instance's log: +1 at each Login, -1 at its session's end.
    The log's order is not the order of events (SAME_READ): an end filed
    within SAME_READ after a Login is taken first; and imap-login logs a
    Login after handing the connection over, so a short session's end can
    come before its own Login: it counts as open at its end line (it can
    only over-count) and its late Login is ignored.
    Returns (peak, the log lines of the sessions open at the peak)."""
    events = []  # (stamp, is_login, session, user, line)
    for line in log_text.splitlines():
        m = LOGIN.search(line)
        if m:
            if m.group(2) == auth:
                events.append((_stamp(line), True, m.group(3), m.group(1), line))
            continue
        m = SESSION_END.search(line)
        if m:
            events.append((_stamp(line), False, m.group(2), m.group(1), line))

    open_, ended, peak, at_peak, lines = {}, set(), 0, [], {}

    def see(sessions):
        nonlocal peak, at_peak
        if len(sessions) > peak:
            peak, at_peak = len(sessions), list(sessions)

    def end(ev):
        _, _, session, user, line = ev
        lines.setdefault(session, []).append(line)
        if session not in open_:  # ended before its Login was logged
            see(dict(open_, **{session: user}))
        open_.pop(session, None)
        ended.add(session)

    done = set()
    for i, ev in enumerate(events):
        if i in done:
            continue
        stamp, is_login, session, user, line = ev
        if not is_login:
            end(ev)
            continue
        j = i + 1
        while (stamp is not None and j < len(events) and events[j][0] is not None
               and events[j][0] - stamp <= SAME_READ):
            if not events[j][1] and j not in done:
                end(events[j])
                done.add(j)
            j += 1
        lines.setdefault(session, []).append(line)
        if session not in ended:
            open_[session] = user
            see(open_)
    return peak, [l for s in at_peak for l in lines[s]]


class LogWatch:
    """Reads sandbox.log_path(inst) from an offset (the mark)."""

    def __init__(self, sandbox, inst="old"):
        self.sb, self.inst = sandbox, inst
        self.mark()

    def mark(self):
        self.offset = self.sb.log_size(self.inst)
        return self.offset

    def text(self, since=None):
        return self.sb.log_text(self.inst, self.offset if since is None else since)

    def logins(self, user, since=None, master=None):
        """IMAP logins as user; master=True: only via the master user,
        master=False: only with the user's own password."""
        n = 0
        for line in self.text(since).splitlines():
            m = LOGIN.search(line)
            if m and m.group(1) == user:
                via_master = m.group(2) != user
                n += master is None or master == via_master
        return n

    def _sessions(self, user, since=None):
        """([session ids of user's logins since the mark], {session:
        (body_count, body_bytes)} of every end of user's sessions since the
        mark, in log order; a session that began before the mark may end
        after it and fetch bodies meanwhile)."""
        logins, ends = [], {}
        for line in self.text(since).splitlines():
            m = LOGIN.search(line)
            if m:
                if m.group(1) == user:
                    logins.append(m.group(3))
                continue
            m = LOGOUT_SESSION.search(line)
            if m and m.group(1) == user:
                ends[m.group(2)] = (int(m.group(3)), int(m.group(4)))
        return logins, ends

    def body_counts(self, user, since=None):
        """body_count of each IMAP session of user ended since the mark, in
        log order."""
        return [c for c, _ in self._sessions(user, since)[1].values()]

    def body_bytes(self, user, since=None):
        """body_bytes of each IMAP session of user ended since the mark, in
        log order."""
        return [b for _, b in self._sessions(user, since)[1].values()]

    def wait_for(self, pattern, since=None, timeout=30):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.text(since)), timeout,
                          "%r in %s log" % (pattern, self.inst))

    def barrier(self, timeout=10):
        """Log a unique line via a fresh connection and wait for it: lines
        logged before this call are then (very nearly surely) in the file."""
        tag = "ferry-barrier-" + uuid.uuid4().hex
        with socket.create_connection(("127.0.0.1", self.sb.port(self.inst)), 10) as s:
            f = s.makefile("rwb")
            f.readline()
            f.write(b'a ID ("name" "%s")\r\nb LOGOUT\r\n' % tag.encode())
            f.flush()
            while not f.readline().startswith(b"b "):
                pass
        self.wait_for(re.escape(tag), timeout=timeout)

    def settle(self, user, since=None, timeout=30):
        """Barrier, then wait until every logged-in session of user has
        logged out (so body_counts() is complete)."""
        self.barrier()

        # by session: the end of a session from before the mark (a seeding
        # session) may reach the file after it; counted against the logins
        # it let settle() return while a session of the test was still open
        # (CI: a lazy pull's 2,300 bodies missing from the count)
        def ended():
            logins, ends = self._sessions(user, since)
            return all(s in ends for s in logins)
        wait_until(ended, timeout, "%s sessions of %s to end" % (self.inst, user))
