"""ferryd and ferryctl under valgrind's memcheck (make valgrind-ferryd).

FERRY_VALGRIND=1 makes ferrytest.ferryd start every ferryd and ferryctl
through prefix(): one XML report per process in FERRY_VALGRIND_DIR
(<name>.<pid>.xml, also for the ferry-imapcheck children ferryd starts,
which memcheck follows; the program is read from the report), and
deadlines multiplied by SLOW. After the run,

    python3 -m ferrytest.valgrind DIR

reads every report: memcheck's errors (invalid reads and writes, reads of
uninitialised memory, bad frees...) and, for processes that exited (not
killed -9: those never reach the leak check), definitely lost blocks.
Exit status 1 if any, or if no ferryd ran under valgrind at all. XML
rather than the text log because a report cut short by kill -9 still
holds whole <error> records, each with its kind."""
import os
import re
import sys
import xml.etree.ElementTree as ET

from .sandbox import BUILD_DIR

ENABLED = os.environ.get("FERRY_VALGRIND") == "1"
DIR = os.environ.get("FERRY_VALGRIND_DIR") or os.path.join(BUILD_DIR, "valgrind")
# memcheck runs ferryd's own code 10-50x slower; ferryd mostly waits on
# doveadm, so a factor 5 on the harness's deadlines is enough
SLOW = 5 if ENABLED else 1
ERROR_EXIT = 99
ERROR = re.compile(rb"<error>.*?</error>", re.S)


def prefix(name):
    """The command prefix that runs program `name` under memcheck ([] when
    FERRY_VALGRIND is off)."""
    if not ENABLED:
        return []
    os.makedirs(DIR, exist_ok=True)
    base = os.path.join(DIR, "%s.%%p" % name)
    return ["valgrind", "--tool=memcheck", "--error-exitcode=%d" % ERROR_EXIT,
            "--leak-check=full", "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite", "--num-callers=30",
            # ferryd's checks run in ferry-imapcheck children (fork + exec)
            "--trace-children=yes",
            # no gdbserver FIFOs: a process killed -9 would leave them in /tmp
            "--vgdb=no",
            "--xml=yes", "--xml-file=%s.xml" % base, "--log-file=%s.log" % base]


def _frame(f):
    fn = f.findtext("fn") or f.findtext("obj") or "?"
    if f.findtext("file"):
        return "%s (%s:%s)" % (fn, f.findtext("file"), f.findtext("line"))
    return fn


def read_report(path):
    """-> {"program", "pid", "finished", "errors": [(kind, what, frames)]}"""
    with open(path, "rb") as f:
        data = f.read()
    pid = re.search(rb"<pid>(\d+)</pid>", data)
    exe = re.search(rb"<argv>\s*<exe>([^<]*)</exe>", data)
    errors = []
    for block in ERROR.findall(data):
        e = ET.fromstring(block)
        what = e.findtext("what") or e.findtext("xwhat/text") or ""
        frames = [_frame(f) for f in e.findall("stack/frame")]
        errors.append((e.findtext("kind"), what, frames))
    return {"program": os.path.basename(exe.group(1).decode()) if exe else "?",
            "pid": int(pid.group(1)) if pid else 0,
            # the leak check ran: the process exited rather than being killed
            "finished": b"<state>FINISHED</state>" in data,
            "errors": errors}


def summarize(directory):
    """-> (per program {"processes", "finished", "errors"}, error texts)"""
    programs, texts = {}, []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".xml"):
            continue
        r = read_report(os.path.join(directory, name))
        p = programs.setdefault(r["program"], {"processes": 0, "finished": 0, "errors": 0})
        p["processes"] += 1
        p["finished"] += r["finished"]
        p["errors"] += len(r["errors"])
        for kind, what, frames in r["errors"]:
            texts.append("%s pid %d: %s: %s\n    %s" % (r["program"], r["pid"], kind, what,
                                                     "\n    ".join(frames[:12])))
    return programs, texts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    directory = argv[0] if argv else DIR
    programs, texts = summarize(directory)
    for t in texts:
        print(t)
    for prog, p in sorted(programs.items()):
        print("valgrind: %s: %d processes (%d exited and leak-checked, %d killed), %d errors"
              % (prog, p["processes"], p["finished"], p["processes"] - p["finished"],
                 p["errors"]))
    if not programs.get("ferryd", {}).get("processes"):
        print("valgrind: no ferryd ran under valgrind in %s" % directory)
        return 1
    return 1 if texts else 0


if __name__ == "__main__":
    sys.exit(main())
