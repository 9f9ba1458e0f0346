"""The results dict of bench.py -> one markdown table (+ a few lines)."""

MB = 10**6
HEAD = ("| # | scenario | tool | msgs | MB | wall s | msg/s | MB/s | CPU s tool / OLD / NEW "
        "| peak RSS MB tool / OLD / NEW | ratio | kept | target |")
SEP = "|" + "---|" * 13


def _f(v, fmt="%.2f"):
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return fmt % v
    return str(v)


def _cpu(r):
    c = r.get("cpu_s", {})
    return "%s / %s / %s" % (_f(r.get("tool_cpu_s"), "%.1f"), _f(c.get("old"), "%.1f"),
                             _f(c.get("new"), "%.1f"))


def _rss(r):
    p = r.get("peak_rss_mb", {})
    return "%s / %s / %s" % (_f(r.get("tool_peak_rss_mb"), "%.0f"), _f(p.get("old"), "%.0f"),
                             _f(p.get("new"), "%.0f"))


def _target(r):
    if "target" not in r:
        return ""
    return "%s: **%s**" % (r["target"], "met" if r.get("target_met") else "missed")


def _kept(k):
    if not k:
        return "-"
    if "text" in k:
        return ("all kept (%d users checked)" % len(k["sampled_users"]) if k["all_kept"]
                else "NOT all kept: " + k["text"])
    parts = ["UIDs" if k["uids"] and k["uidvalidity"] else "**UIDs not kept**",
             "flags" if k["flags"] else "**flags not kept**",
             "keywords" if k["keywords"] else "**keywords not kept**",
             "dates" if k["dates"] else "**dates not kept**"]
    if not k["complete"]:
        parts.append("**%d of %d messages**" % (k["found"], k["messages"]))
    if k.get("bodies_modified"):
        parts.append("bodies changed (X-TUID header added) in %d" % k["bodies_modified"])
    if k.get("folders_missing"):
        parts.append("missing folders: " + ", ".join(k["folders_missing"][:4]))
    return ", ".join(parts)


def row(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def markdown(res):
    S = res.get("scenarios", {})
    c = res.get("corpus", {})
    out = ["## Ferry bench results", ""]
    m = res.get("machine", {})
    out.append("Command: `%s` (%s)%s; total wall time %s s." % (
        res.get("command", "?"), res.get("started", "?"),
        " — SMALL mode (smoke test)" if res.get("small") else "", res.get("wall_s", "?")))
    out.append("Machine: %s, %s cores, %s MB RAM, %s, kernel %s, Dovecot %s." % (
        m.get("cpu"), m.get("cores"), m.get("mem_mb"), m.get("os"), m.get("kernel"),
        m.get("dovecot")))
    if c:
        out.append("Corpus: %d messages, %.1f MB, %d folders, largest %.1f MB (seed %s; "
                   "seeded in %s s)." % (c["messages"], c["bytes"] / MB, c["folders"],
                                         c["max_message"] / MB, c["seed"], c["seed_s"]))
    cfg = res.get("config", {})
    out.append("NEW: one configuration for every tool, mail_fsync=%s; ferry settings: %s." % (
        cfg.get("new_mail_fsync", "?"),
        ", ".join("%s=%s" % kv for kv in sorted(cfg.get("ferry_settings", {}).items()))
        or "defaults"))
    out += ["", HEAD, SEP]

    s1 = S.get("1_full", {})
    if "error" in s1:
        out.append(row(["1", "full bulk pass", "-", "", "", "", "", "", "", "", "",
                        "ERROR " + s1["error"], ""]))
    for tool in ("ferry", "dsync", "mbsync", "imapsync"):
        r = s1.get(tool)
        if r is None:
            continue
        if "unavailable" in r:
            out.append(row(["1", "full bulk pass", "%s: %s" % (tool, r["unavailable"])] +
                           [""] * 10))
            continue
        err = (" ERROR rc %s: %s" % (r["rc"], r.get("error", "")[:200])) if r.get("rc") else ""
        out.append(row(["1", "full bulk pass", tool, r.get("messages"),
                        _f(r.get("bytes", 0) / MB, "%.0f"), _f(r.get("wall_s"), "%.1f"),
                        _f(r.get("msgs_per_s"), "%.0f"), _f(r.get("mb_per_s"), "%.1f"),
                        _cpu(r), _rss(r),
                        ("%.2fx dsync msg/s" % r["ratio_vs_dsync"]) if "ratio_vs_dsync" in r
                        else "-", _kept(r.get("kept")) + err, _target(r)]))

    s1p = S.get("1_paired", {})
    if "error" in s1p:
        out.append(row(["1p", "paired full passes", "-"] + [""] * 8 + ["ERROR " + s1p["error"], ""]))
    for fs, pair in s1p.get("pairs", {}).items():
        for tool in ("ferry", "dsync"):
            r = pair[tool]
            errs = ("; ERRORS: " + " / ".join(e[:120] for e in r["errors"])) if r["errors"] else ""
            out.append(row([
                "1p", "full pass, mail_fsync=%s for both, median of %d" % (fs, r["runs"]), tool,
                c.get("messages", ""), _f(c.get("bytes", 0) / MB, "%.0f"),
                "%s (%s)" % (_f(r["median_wall_s"], "%.1f"),
                             ", ".join("%.1f" % w for w in r["wall_s"])),
                _f(r["msgs_per_s"], "%.0f"), "",
                "%s / OLD %s us per msg / -" % (_f(r["median_tool_cpu_s"], "%.1f"),
                                                 _f(r["old_cpu_us_per_msg"], "%.0f")),
                "%s / - / -" % _f(r["peak_rss_mb"], "%.0f"),
                ("%.2fx dsync msg/s (ratio of medians)" % pair["ratio"])
                if tool == "ferry" and "ratio" in pair else "-",
                _kept(r.get("kept")) + errs,
                _target(pair) if tool == "ferry" else ""]))

    s2 = S.get("2_delta", {})
    if "error" in s2:
        out.append(row(["2", "delta pass", "-"] + [""] * 8 + ["ERROR " + s2["error"], ""]))
    for tool in ("ferry", "dsync", "mbsync", "imapsync"):
        r = s2.get(tool)
        if r is None:
            continue
        if "unavailable" in r:
            out.append(row(["2", "delta pass", "%s: %s" % (tool, r["unavailable"])] + [""] * 10))
            continue
        what = "new %s/%s, flag changes %s/%s" % (
            _f(r.get("new_copied")), r.get("new_on_old"), _f(r.get("flags_mirrored")),
            r.get("flag_changes_on_old"))
        if tool == "ferry" and r.get("new_copied") != r.get("new_on_old"):
            what += " — not mirrored yet (issue 5)"
        out.append(row(["2", "delta: %s new msgs + %s flag changes on OLD" % (
            r.get("new_on_old"), r.get("flag_changes_on_old")), tool, "", "",
            _f(r.get("wall_s"), "%.2f"), "", "", _cpu(r), _rss(r),
            ("%.2fx mbsync time" % r["ratio_vs_mbsync"]) if "ratio_vs_mbsync" in r else "-",
            what + ((" ERROR " + r.get("error", "")[:200]) if r.get("rc") else ""),
            _target(r)]))

    s3 = S.get("3_lazy", {})
    if "error" in s3:
        out.append(row(["3", "lazy latency", "-"] + [""] * 8 + ["ERROR " + s3["error"], ""]))
    res3 = s3.get("resources", {})
    for key, r in s3.items():
        if not key.startswith("L"):
            continue
        out.append(row(["3", "lazy: first SELECT, never-copied folder", "ferry",
                        r["messages"], _f(r["bytes"] / MB, "%.1f"),
                        "p50 %.3f / p95 %.3f (n=%d)" % (r["p50_s"], r["p95_s"], r["repeats"]),
                        _f(r["msgs_per_s"], "%.0f"), _f(r["mb_per_s"], "%.1f"),
                        _cpu(res3) + " (all sizes)" if key == "L%d" % r["messages"] and
                        key == sorted((k for k in s3 if k.startswith("L")),
                                      key=lambda k: int(k[1:]))[-1] else "",
                        _rss(res3) if key == sorted((k for k in s3 if k.startswith("L")),
                                                    key=lambda k: int(k[1:]))[-1] else "",
                        "-", "-", _target(r)]))
    if "tree" in s3:
        t = s3["tree"]
        out.append(row(["3", "lazy: LIST (tree copy) before", "ferry", "", "",
                        "p50 %.3f / p95 %.3f" % (t["p50_s"], t["p95_s"])] + [""] * 7))

    s4 = S.get("4_overhead", {})
    if "error" in s4:
        out.append(row(["4", "plugin overhead", "-"] + [""] * 8 + ["ERROR " + s4["error"], ""]))
    for key, label in (("select_status", "SELECT+STATUS loop, migrated user"),
                       ("login", "LOGIN+SELECT+STATUS+LOGOUT loop")):
        r = s4.get(key)
        if not r:
            continue
        cpu = ""
        if key == "select_status":
            cpu = "NEW %.2f vs %.2f" % (s4.get("cpu_new_plugin_s", 0),
                                        s4.get("cpu_new_no_plugin_s", 0))
        out.append(row(["4", "plugin overhead: " + label, "ferry loaded vs not", r["ops"], "",
                        "%.4f vs %.4f" % (r["plugin_s"], r["no_plugin_s"]), "", "", cpu, "",
                        "%.3fx" % r["ratio"], "-",
                        _target(s4) if key == "select_status" else ""]))

    s5 = S.get("5_many_users", {})
    if "error" in s5:
        out.append(row(["5", "many users", "-"] + [""] * 8 + ["ERROR " + s5["error"], ""]))
    for key in ("ferryd", "pool"):
        r = s5.get(key)
        if r is None:
            continue
        if "pending" in r:
            out.append(row(["5", "many users", "ferryd: pending (%s)" % r["pending"][:200]] +
                           [""] * 10))
            continue
        out.append(row(["5", "many users: %d x %d msgs" % (r["users"], r["messages"] //
                                                            max(r["users"], 1)),
                        key if key == "ferryd" else "doveadm ferry pull pool",
                        r["messages"], _f(r["bytes"] / MB, "%.0f"), _f(r["wall_s"], "%.1f"),
                        _f(r["msgs_per_s"], "%.0f"), _f(r["mb_per_s"], "%.1f"), _cpu(r), _rss(r),
                        "max %d sessions on OLD (limit %d); %d/%d users done" % (
                            r["max_sessions_on_old"], r["per_host_limit"], r["users_done"],
                            r["users"]),
                        _kept(r.get("kept")), _target(r)]))
    s6 = S.get("6_first_login", {})
    if "error" in s6:
        out.append(row(["6", "first login", "-"] + [""] * 8 + ["ERROR " + s6["error"], ""]))
    for key in ("first", "big"):
        r = s6.get(key)
        if r is None:
            continue
        what = "INBOX (%d msgs) selected %.2f s, STATUS sweep of %d folders %.2f s" % (
            r["inbox_messages"], r["inbox_selected_s"], r["folders"], r["status_s"])
        if "complete_s" in r:
            what += "; user complete %.1f s after login (bulk copy %.1f s)" % (
                r["complete_s"], r["bulk_copy_s"])
        if len(r.get("pairs", ())) > 1:
            what += "; complete / bulk copy of %d logins, each right after its bulk copy: " \
                "%s (the median's figures shown)" % (
                    len(r["pairs"]), " ".join("%.2f" % p["complete_over_bulk"]
                                              for p in r["pairs"]))
        kept = "STATUS = OLD's: %s" % ("yes" if r["status_equal_old"] else "**no**")
        if "status_equal_after" in r:
            kept += ", unchanged after: %s" % ("yes" if r["status_equal_after"] else "**no**")
        out.append(row(["6", "first login: LIST, STATUS every folder, SELECT INBOX", "ferry",
                        r.get("messages"), _f(r.get("bytes", 0) / MB, "%.0f")
                        if r.get("bytes") else "", _f(r["inbox_selected_s"], "%.2f"), "", "",
                        _cpu(r.get("resources", {})), _rss(r.get("resources", {})), what,
                        kept, _target(r)]))
    out.append("")
    notes = []
    if s6:
        notes.append("First login: a NEW user never migrated (cut over); wall s = LOGIN to "
                     "SELECT INBOX done; then the client stays idle and the session "
                     "completes the rest (no ferryd); the big user has the same INBOX and "
                     "its other folders in ~1 KB messages.")
    f2 = s2.get("ferry", {})
    if f2.get("note"):
        notes.append("Delta (Ferry): " + f2["note"] + ".")
    for tool in ("ferry", "dsync", "mbsync"):
        r = s1.get(tool, {})
        if r.get("note"):
            notes.append("%s: %s." % (tool, r["note"]))
    if s3.get("note"):
        notes.append("Lazy: " + s3["note"] + ".")
    if s4.get("what"):
        notes.append("Overhead: " + s4["what"] + ".")
    for key in ("ferryd", "pool"):
        if s5.get(key, {}).get("what"):
            notes.append("Many users: " + s5[key]["what"] + ".")
    notes.append("CPU: tool = os.wait4 rusage of the tool's process; OLD/NEW = the "
                 "instance's processes (/proc/<pid>/stat utime+stime, plus the master's "
                 "cutime+cstime for exited ones), after minus before. Peak RSS: tool = "
                 "GNU time's %M (max RSS of the tool process); OLD/NEW = the largest VmHWM of a process that appeared during "
                 "the scenario (sampled every 100 ms).")
    out += ["- " + n for n in notes]
    return "\n".join(out) + "\n"
