"""Where a pull waited on the old server, from imapc's rawlog (docs/bench.md,
"Lazy first SELECT").

    python3 bench/rawlog.py DIR      # DIR: an imapc_rawlog_dir

Reads the largest session of DIR (NNN.in / NNN.out, with imapc's
timestamps) and prints, per kind of command (sizes, bodies, range,
bigmeta = a large message's flags and dates, other), how many were sent,
how long they were outstanding in all, and how many were sent while no
earlier command was outstanding (idle_before): the old server had nothing
to do before each of those. For sizes, range and bigmeta commands this
process also waits for the answer (they are synchronous), so each is a full
round trip of stop-and-go; a prefetched bodies command may still find
earlier bodies to save here. The times are when imapc sent a command and
read its tagged reply, so they are this process's view, and under load
they stretch with it; the counts do not."""
import collections
import glob
import json
import os
import re
import sys


def kind(cmd):
    if b"RFC822.SIZE" in cmd:
        return "sizes"
    if b"BODY.PEEK[]<" in cmd:
        return "range"
    if b"BODY.PEEK[]" in cmd:
        return "bodies"
    if cmd.startswith(b"UID FETCH") and b"INTERNALDATE" in cmd:
        return "bigmeta"
    return "other"


def analyse(d):
    inn = max(glob.glob(os.path.join(d, "*.in")), key=os.path.getsize)
    out = inn[:-3] + ".out"
    sent, kinds = {}, {}
    for line in open(out, "rb"):
        m = re.match(rb"(\d+\.\d+) (\d+) (.*)", line)
        if m:
            tag = int(m.group(2))
            sent[tag] = float(m.group(1))
            kinds[tag] = kind(m.group(3))
    done = {}
    tagged = re.compile(rb"^(\d+\.\d+) (\d+) (OK|NO|BAD) ")
    for line in open(inn, "rb"):
        m = tagged.match(line)
        if m:
            done[int(m.group(2))] = float(m.group(1))
    tags = sorted(sent)
    res = collections.defaultdict(lambda: {"sent": 0, "outstanding_s": 0.0, "idle_before": 0})
    until = 0.0
    for tag in tags:
        r = res[kinds[tag]]
        r["sent"] += 1
        end = done.get(tag, sent[tag])
        r["outstanding_s"] += end - sent[tag]
        if sent[tag] >= until:
            r["idle_before"] += 1
        until = max(until, end)
    for r in res.values():
        r["outstanding_s"] = round(r["outstanding_s"], 3)
    span = max(done.values()) - sent[tags[0]] if done else 0.0
    return {"session": os.path.basename(inn), "span_s": round(span, 3), "commands": dict(res)}


if __name__ == "__main__":
    print(json.dumps(analyse(sys.argv[1]), indent=1))
