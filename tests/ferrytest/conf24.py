"""The Dovecot 2.4 form of a config written in 2.3 syntax (the sandbox's
own and the tests' extras), for a sandbox instance that runs 2.4.1.

Each rule is a documented 2.3 -> 2.4 change (checked against the 2.4.1
sources and the server): no plugin {} (its keys are top-level), named
passdb/userdb blocks with driver settings instead of args, %{...}
variables instead of %x, changed setting names, list settings as blocks,
units on TIME values. A 2.3-only construct without a rule raises
Unconvertible: the test must then say what it means on 2.4."""
import re


class Unconvertible(ValueError):
    pass


HEADER = "dovecot_config_version = 2.4.1\ndovecot_storage_version = 2.4.1\n"

# 2.3 %x variables -> 2.4 %{...}, by setting (the letters mean different
# things in different settings)
LOGIN_VARS = {"u": "user", "m": "mechanism", "r": "remote_ip", "l": "local_ip",
              "e": "mail_pid", "c": "secured", "s": "service", "p": "pid"}
LOGOUT_VARS = {"i": "input", "o": "output"}
USER_VARS = {"u": "user", "n": "user | username", "d": "user | domain",
             "Lu": "user | lower", "Ln": "user | username | lower",
             "Ld": "user | domain | lower", "h": "home", "s": "protocol"}
UIDL_VARS = {"v": "uidvalidity", "u": "uid", "m": "md5", "f": "filename",
             "g": "guid", "08Xv": "uidvalidity | hex(8)", "08Xu": "uid | hex(8)",
             "Xv": "uidvalidity | hex", "Xu": "uid | hex"}

# ferry_* settings declared as time intervals by the 2.4 settings module:
# a bare number gets the unit the 2.3 setting meant
FERRY_TIME_UNITS = {"ferry_lock_timeout": "s", "ferry_progress_interval": "s",
                    "ferry_old_connect_timeout": "s",
                    "ferry_background_idle_msecs": "ms"}


def _vars(value, table):
    """Replace %x / %Lx / %08Xx (longest first) by %{name}; %{...} stays;
    %% stays (a literal %)."""
    keys = sorted(table, key=len, reverse=True)
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if value.startswith("%%", i) or value.startswith("%{", i):
            j = value.index("}", i) + 1 if value.startswith("%{", i) else i + 2
            out.append(value[i:j])
            i = j
            continue
        for k in keys:
            if value.startswith(k, i + 1):
                out.append("%%{%s}" % table[k])
                i += 1 + len(k)
                break
        else:
            raise Unconvertible("no 2.4 form for %r in %r" % (value[i:i + 3], value))
    return "".join(out)


def uidl_format(value):
    return _vars(value, UIDL_VARS)


def _list_block(key, words, indent):
    """A 2.4 boollist/strlist block: words 'a' -> a = yes, 'k=v' -> k = v."""
    lines = ["%s%s {" % (indent, key)]
    for w in words:
        if "=" in w:
            k, v = w.split("=", 1)
            lines.append("%s  %s = %s" % (indent, k, v))
        else:
            lines.append("%s  %s = yes" % (indent, w))
    lines.append(indent + "}")
    return lines


def _import_environment(value, indent):
    lines = ["%simport_environment {" % indent]
    for w in value.split():
        k, _, v = w.partition("=")
        lines.append("%s  %s = %s" % (indent, k, v if v else "%%{env:%s}" % k))
    return lines + [indent + "}"]


def _sql_lines(path, indent, kind):
    """passdb/userdb sql: the 2.3 dovecot-sql.conf.ext inlined as 2.4
    settings (sql_driver, sqlite_path, query, iterate_query)."""
    conf = {}
    with open(path) as f:
        text = re.sub(r"\\\n\s*", " ", f.read())  # continued lines
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            conf[k.strip()] = v.strip()
    if conf.get("driver") != "sqlite":
        raise Unconvertible("sql driver %r (only sqlite is converted)" % conf.get("driver"))
    out = []
    q = conf.get("password_query" if kind == "passdb" else "user_query")
    if q:
        out.append("%squery = %s" % (indent, _vars(q, USER_VARS)))
    if kind == "userdb" and conf.get("iterate_query"):
        out.append("%siterate_query = %s" % (indent, conf["iterate_query"]))
    top = ["sql_driver = sqlite", "sqlite_path = %s" % conf["connect"]]
    return out, top


def convert(text):
    """2.4 form of a 2.3 config text (without the version header)."""
    out, top_extra = [], []
    stack = []          # block kinds; "plugin" blocks are unwrapped
    db_seq = {"passdb": 0, "userdb": 0}
    db = None           # the passdb/userdb block being read: its settings
    for raw in text.splitlines():
        line = raw.strip()
        indent = "  " * sum(1 for s in stack if s != "plugin")
        if not line or line.startswith("#") or line.startswith("!include"):
            out.append(raw)
            continue
        m = re.match(r"^([A-Za-z0-9_]+)(?:\s+(\"[^\"]*\"|\S+))?\s*\{$", line)
        if m:
            kind, name = m.group(1), m.group(2)
            if kind == "plugin" and not name:
                stack.append("plugin")
                continue
            if kind in ("passdb", "userdb") and not stack:
                db_seq[kind] += 1
                db = {"kind": kind, "name": name or "%s%d" % (kind, db_seq[kind]),
                      "lines": []}
                stack.append(kind)
                continue
            stack.append(kind)
            out.append(raw)
            continue
        if line == "}":
            kind = stack.pop() if stack else None
            if kind == "plugin":
                continue
            if kind in ("passdb", "userdb") and db is not None and not stack:
                out.extend(_db_block(db, top_extra))
                db = None
                continue
            out.append(indent[:-2] + "}" if indent else "}")
            continue
        m = re.match(r"^([A-Za-z0-9_/]+)\s*=\s*(.*)$", line)
        if not m:
            raise Unconvertible("line %r" % line)
        key, value = m.group(1), m.group(2)
        if db is not None and stack and stack[-1] == db["kind"]:
            db["lines"].append((key, value))
            continue
        if key == "address" and stack and stack[-1] == "inet_listener":
            key = "listen"  # a listener's address is its listen setting
        out.extend(_setting(key, value, indent))
    if stack:
        raise Unconvertible("unclosed block %s" % stack)
    return "\n".join(top_extra + out) + "\n"


def _db_block(db, top_extra):
    kind, settings = db["kind"], dict(db["lines"])
    driver = settings.pop("driver", None)
    args = settings.pop("args", "")
    # a driver's own settings (passdb_sql_query) are found in a block
    # named after the driver
    name = "sql" if driver == "sql" else db["name"]
    lines = ["%s %s {" % (kind, name), "  driver = %s" % driver]
    if driver == "passwd-file":
        words = args.split()
        path = [w for w in words if "=" not in w]
        if len(path) != 1 or any(not w.startswith("scheme=") for w in words if "=" in w):
            raise Unconvertible("passwd-file args %r" % args)
        lines.append("  passwd_file_path = %s" % path[0])
        # the file's entries carry their {SCHEME}: scheme= is not needed
    elif driver == "sql":
        q, top = _sql_lines(args, "  ", kind)
        lines += q
        for t in top:
            if t not in top_extra:
                top_extra.append(t)
    elif args:
        raise Unconvertible("%s driver %s with args %r" % (kind, driver, args))
    for k, v in settings.items():
        if k == "mechanisms":
            lines += _list_block("mechanisms_filter", v.split(), "  ")
        else:
            lines.append("  %s = %s" % (k, v))
    return lines + ["}"]


def _setting(key, value, indent):
    if key == "disable_plaintext_auth":
        return ["%sauth_allow_cleartext = %s" % (indent, "no" if value == "yes" else "yes")]
    if key == "mail_location":
        driver, _, path = value.partition(":")
        if ":" in path:
            raise Unconvertible("mail_location %r" % value)
        return ["%smail_driver = %s" % (indent, driver), "%smail_path = %s" % (indent, path)]
    if key == "login_log_format_elements":
        return ["%s%s = %s" % (indent, key, _vars(value, LOGIN_VARS))]
    if key == "imap_logout_format":
        return ["%s%s = %s" % (indent, key, _vars(value, LOGOUT_VARS))]
    if key in ("auth_username_format", "imapc_user"):
        return ["%s%s = %s" % (indent, key, _vars(value, USER_VARS))]
    if key == "pop3_uidl_format":
        return ["%s%s = %s" % (indent, key, uidl_format(value))]
    if key == "imap_id_log":
        # 2.4 logs a client's ID as the imap_id_received event's debug line
        return ["%slog_debug = event=imap_id_received" % indent]
    if key == "import_environment":
        return _import_environment(value, indent)
    if key == "default_vsz_limit" and value == "0":
        return ["%sdefault_vsz_limit = unlimited" % indent]
    if key in ("ssl_cert", "ssl_key"):
        if not value.startswith("<"):
            raise Unconvertible("%s = %r" % (key, value))
        return ["%sssl_server_%s_file = %s" % (indent, key[4:], value[1:].strip())]
    if key == "imapc_ssl_verify":
        return ["%sssl_client_require_valid_cert = %s" % (indent, value)]
    if key == "imapc_features":
        return _list_block(key, value.split(), indent)
    if key == "mail_plugins":
        words = value.split()
        if words and words[0] == "$mail_plugins":
            words = words[1:]
        elif words:
            raise Unconvertible("mail_plugins = %r replaces the list" % value)
        return _list_block(key, words, indent)
    if key == "sieve":
        m = re.match(r"^file:([^;]+);active=(.+)$", value)
        if not m:
            raise Unconvertible("sieve = %r" % value)
        return [indent + l for l in ("sieve_script personal {", "  driver = file",
                                     "  path = %s" % m.group(1),
                                     "  active_path = %s" % m.group(2), "}")]
    if key == "sieve_extensions":
        words = [w.lstrip("+") for w in value.split()]
        if any(w.startswith("-") for w in words):
            raise Unconvertible("sieve_extensions = %r" % value)
        return _list_block(key, words, indent)
    if key in FERRY_TIME_UNITS and re.fullmatch(r"\d+", value) and value != "0":
        value += FERRY_TIME_UNITS[key]
    return ["%s%s = %s" % (indent, key, value)]


def userdb_extra(fields):
    """The extra fields of a passwd-file line (userdb_key=value ...) for a
    2.4 userdb: the same names; pop3_uidl_format's variables rewritten."""
    out = []
    for f in fields.split():
        k, eq, v = f.partition("=")
        name = k[len("userdb_"):] if k.startswith("userdb_") else k
        if name == "pop3_uidl_format":
            # passwd-file values are expanded: %% stands for a % of the format
            v = uidl_format(v.replace("%%", "%")).replace("%{", "%%{")
        elif name in FERRY_TIME_UNITS and re.fullmatch(r"\d+", v) and v != "0":
            v += FERRY_TIME_UNITS[name]
        out.append(k + eq + v)
    return " ".join(out)


def doveadm_args(args):
    """doveadm arguments for 2.4: -o plugin/KEY=V -> -o KEY=V."""
    return [a[len("plugin/"):] if a.startswith("plugin/") else a for a in args]
