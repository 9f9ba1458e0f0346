"""make demo: two real Dovecot servers on 127.0.0.1, a seeded user on the
OLD one, migrated to the NEW one first by lazy access (a client opens
INBOX), then by `doveadm ferry pull`. Prints a per-folder before/after
table read by an independent IMAP client on both servers."""
import sys
import time

from ferrytest import corpus
from ferrytest.sandbox import Sandbox
from ferrytest.snapshot import compare, duplicates, snapshot

USER = "alice"


def table(title, old, new):
    print("\n" + title)
    fmt = "  %-20s %6s %6s  %-11s %-11s  %s"
    print(fmt % ("folder", "OLD", "NEW", "OLD uidval", "NEW uidval", "UIDs, flags, dates, bodies"))
    for name in sorted(old.folders):
        o = old.folders[name]
        if not o.selectable:
            continue
        n = new.folders.get(name) if new else None
        if n is None or n.uidvalidity is None:
            print(fmt % (name, len(o.messages), "-", o.uidvalidity, "-", "not copied yet"))
            continue
        same = not compare(type(old)(folders={name: o}), type(old)(folders={name: n}))
        print(fmt % (name, len(o.messages), len(n.messages), o.uidvalidity, n.uidvalidity,
                     "identical" if same else "DIFFERENT"))


def main():
    sb = Sandbox(users=(USER,))
    sb.start()
    try:
        print("OLD Dovecot on 127.0.0.1:%d, NEW Dovecot with the ferry plugin on "
              "127.0.0.1:%d (sandbox %s)" % (sb.port("old"), sb.port("new"), sb.root))
        spec = corpus.full_spec(seed=1)
        corpus.seed_old(sb, USER, spec)
        old = snapshot(sb, "old", USER)
        print("seeded %s on OLD: %d messages in %d folders" % (
            USER, old.count(), len([f for f in old.folders.values() if f.selectable])))
        table("Before: nothing on NEW", old, None)

        conn = sb.imap("new", USER)
        t0 = time.monotonic()
        typ, data = conn.select("INBOX")
        print("\nLazy access: a client SELECTs INBOX on NEW -> %s %s messages in %.2fs "
              "(the folder is copied before the client sees it)"
              % (typ, data[0].decode(), time.monotonic() - t0))
        conn.logout()

        t0 = time.monotonic()
        r = sb.doveadm("new", "ferry", "pull", "-u", USER)
        print("\nBulk: doveadm ferry pull -u %s (%.2fs)\n%s" % (USER, time.monotonic() - t0,
                                                               r.stdout.rstrip()))
        print("\ndoveadm ferry status -u %s\n%s" % (
            USER, sb.doveadm("new", "ferry", "status", "-u", USER).stdout.rstrip()))

        new = snapshot(sb, "new", USER)
        table("After (independent IMAP client on both servers)", old, new)
        diffs = compare(old, new)
        dups = duplicates(new, old)
        print("\n%d folders, %d messages: %s; duplicates: %d; subscriptions %s"
              % (len(old.folders), old.count(), "all identical" if not diffs else
                 "%d differences" % len(diffs), sum(dups.values()),
                 "equal" if old.subscriptions == new.subscriptions else "DIFFERENT"))
        return 0 if not diffs and not dups else 1
    finally:
        sb.cleanup()


if __name__ == "__main__":
    sys.exit(main())
