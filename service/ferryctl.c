/* ferryctl: command-line client of ferryd's admin API.
   The API address comes from --api, $FERRY_API or the "listen" setting of
   the configuration file (-c, $FERRYD_CONF, /etc/ferry/ferryd.conf); the
   token from a file (--token-file, $FERRY_TOKEN_FILE or the configuration's
   api_token_file), never from the command line. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"

#define DEFAULT_CONF "/etc/ferry/ferryd.conf"

static char api_host[256] = "127.0.0.1";
static int api_port = 8025;
static char *token;
static int max_body;  /* from the configuration; 0 = unknown */

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "ferryctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* One entry per command: `ferryctl help CMD`, `ferryctl CMD --help` and the
   error of a command line it does not understand print it (ferryctl(8)). */
struct cmd_help {
	const char *name, *synopsis, *text;
};

static const struct cmd_help cmd_helps[] = {
	{ "import", "import FILE.csv",
	  "Imports users from an imapsync-like CSV (checked whole: one bad line, nothing\n"
	  "imported). Columns: docs/ferryd.md, \"The users CSV\".\n" },
	{ "wave", "wave create NAME [--start-after TIME] [--window HH:MM-HH:MM]\n"
		  "wave add NAME USER...",
	  "Creates a wave (a team migrated together), optionally not before TIME and\n"
	  "only inside a daily window; adds users to it.\n" },
	{ "start", "start [--wave W]", "Starts the bulk copy of every wave, or of one.\n" },
	{ "pause", "pause [USER | --wave W]",
	  "Pauses a user, a wave or (nothing given) everything; pulls in flight finish.\n" },
	{ "resume", "resume [USER | --wave W]", "Undoes pause.\n" },
	{ "sync", "sync USER", "Queues a copy pass of one user now (presync refresh).\n" },
	{ "status", "status [--wave W] [--state S] [--page N] [USER] [--json] [--once]",
	  "Totals by state and wave, then one page of users (100; --page N for the\n"
	  "next ones, --state presync|failed|... to list only those); live on a\n"
	  "terminal, once otherwise or with --once.\n" },
	{ "log", "log [--user U] [--wave W] [--since TIME] [--limit N] [--json]",
	  "The migration log (one entry per event).\n" },
	{ "cutover", "cutover --wave W [--at TIME|+10m] [--force] [--max-age 24h] [--settle 35s] [--no-wait]",
	  "Routes a wave's users to the new server in one transaction after its prechecks\n"
	  "(docs/routing.md); waits for the final pass unless --no-wait.\n" },
	{ "rollback", "rollback --wave W [--settle 35s] [--no-wait]",
	  "Routes a cut-over wave back to the old server and appends there what arrived\n"
	  "on the new one meanwhile.\n" },
	{ "route", "route [USER | --wave W] [--json]\n"
		   "route config [--new-transport T] [--endpoint HOST[:PORT] [--pop3-port N] [--transport T]]",
	  "Shows where users are routed; `route config` sets the Postfix nexthops and\n"
	  "the old POP3 port per old endpoint.\n" },
	{ "preflight", "preflight USER | --wave W [--identity-login] [--json] [--no-wait] [--show] [--timeout S]",
	  "Checks logins and folder lists on both servers before copying; reads only,\n"
	  "copies nothing, and makes no login meant to fail unless --identity-login (the\n"
	  "master user also logs in alone on OLD to compare mailboxes: docs/ferryd.md).\n" },
	{ "verify", "verify USER [--json] [--no-wait] [--show] [--timeout S]",
	  "Compares a user's folders, UIDs, flags and (sampled) bodies on both servers.\n" },
	{ "endpoint", "endpoint HOST[:PORT] --old-prefix PREFIX",
	  "Sets the old server's namespace prefix for an endpoint.\n" },
	{ "sieve", "sieve USER [--json] [--no-wait] [--show] [--timeout S]",
	  "Moves a user's Sieve scripts (filters, vacation) from the old server's\n"
	  "ManageSieve to the new one's: fileinto folders follow the folder mapping, a\n"
	  "script the new server cannot compile is kept there inactive and reported,\n"
	  "the old server's active script becomes the active one.\n" },
	{ "dns", "dns [--last] [--json] [--timeout S]",
	  "Checks DNS now (or shows the last check): MX, the client names and where they\n"
	  "point (old or new server), TTLs against dns_max_ttl, SPF/DMARC/DKIM, and the\n"
	  "new server's addresses on the DNSBLs. Exit 1 when a TTL is too high, a\n"
	  "lookup failed or an address is listed.\n" },
	{ "report", "report [--wave W] [--json]\n"
		    "report --wave W --dns-changed TIME [--note TEXT]",
	  "The migration report (who, when, counts, errors, verification, routing, DNS\n"
	  "changes) as CSV, or JSON; the dashboard downloads the same. --dns-changed\n"
	  "records when DNS was changed for the wave (it appears in the report).\n" },
	{ "help", "help [COMMAND]", "This text, or one command's.\n" },
};
#define N_CMDS (sizeof(cmd_helps) / sizeof(cmd_helps[0]))

static const char *cur_cmd;  /* the command being parsed (for bad()) */

static const struct cmd_help *find_cmd(const char *name)
{
	for (size_t i = 0; i < N_CMDS; i++)
		if (strcmp(cmd_helps[i].name, name) == 0)
			return &cmd_helps[i];
	return NULL;
}

/* each form of a synopsis on its own line, after lead */
static void print_forms(FILE *out, const char *lead, const char *synopsis)
{
	const char *p = synopsis, *nl;

	while ((nl = strchr(p, '\n')) != NULL) {
		fprintf(out, "%s%.*s\n", lead, (int)(nl - p), p);
		p = nl + 1;
	}
	fprintf(out, "%s%s\n", lead, p);
}

static void print_usage(FILE *out)
{
	fprintf(out, "usage: ferryctl [-c CONFIG] [--api HOST:PORT] [--token-file FILE] COMMAND\n");
	for (size_t i = 0; i < N_CMDS; i++)
		print_forms(out, "  ", cmd_helps[i].synopsis);
	fprintf(out, "`ferryctl help COMMAND` or `ferryctl COMMAND --help`: one command; man ferryctl\n");
}

static void usage(void)
{
	print_usage(stderr);
	exit(2);
}

static void print_cmd_help(FILE *out, const struct cmd_help *h)
{
	fprintf(out, "usage:\n");
	print_forms(out, "  ferryctl [OPTIONS] ", h->synopsis);
	fprintf(out, "\n%s", h->text);
}

/* A command line the command does not understand: name the word, show the
   command's usage. */
static void bad(const char *arg)
{
	const char *cmd = cur_cmd != NULL ? cur_cmd : "";
	const struct cmd_help *h = find_cmd(cmd);

	if (arg != NULL)
		fprintf(stderr, "ferryctl %s: \"%s\": unknown option, unexpected argument or"
			" missing value\n", cmd, arg);
	else
		fprintf(stderr, "ferryctl %s: missing or conflicting arguments\n", cmd);
	if (h != NULL) {
		fprintf(stderr, "usage:\n");
		print_forms(stderr, "  ferryctl [OPTIONS] ", h->synopsis);
	}
	exit(2);
}

static void help_main(const char *name)
{
	const struct cmd_help *h;

	if (name == NULL) {
		print_usage(stdout);
		exit(0);
	}
	if ((h = find_cmd(name)) == NULL) {
		fprintf(stderr, "ferryctl: unknown command \"%s\"\n", name);
		usage();
	}
	print_cmd_help(stdout, h);
	exit(0);
}

/* ---- HTTP ---------------------------------------------------------------- */

struct resp {
	struct event_base *base;
	int status;
	char reason[128];
	char *body;
};

static void on_resp(struct evhttp_request *req, void *arg)
{
	struct resp *r = arg;

	if (req != NULL && (r->status = evhttp_request_get_response_code(req)) != 0) {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		const char *line = evhttp_request_get_response_code_line(req);
		r->body = malloc(len + 1);
		evbuffer_remove(in, r->body, len);
		r->body[len] = '\0';
		snprintf(r->reason, sizeof(r->reason), "%s", line != NULL ? line : "");
	}
	event_base_loopexit(r->base, NULL);
}

static void add_query(char *path, size_t len, const char *key, const char *value)
{
	char *enc;

	if (value == NULL)
		return;
	enc = evhttp_encode_uri(value);
	snprintf(path + strlen(path), len - strlen(path), "%s%s=%s",
		 strchr(path, '?') != NULL ? "&" : "?", key, enc);
	free(enc);
}

/* returns the JSON answer of a 2xx; dies with the server's message otherwise */
static void setup_once(void);

/* the answer's body (malloc'd) and HTTP status; dies without an answer */
static char *request(const char *method, const char *path, json_t *body, int *status_r,
		     char *reason, size_t reason_len)
{
	setup_once();
	struct resp r = { 0 };
	struct evhttp_connection *evcon;
	struct evhttp_request *req;
	struct evkeyvalq *h;
	char auth[1100], hostport[300];

	r.base = event_base_new();
	evcon = evhttp_connection_base_new(r.base, NULL, api_host, (ev_uint16_t)api_port);
	evhttp_connection_set_timeout(evcon, 60);
	req = evhttp_request_new(on_resp, &r);
	h = evhttp_request_get_output_headers(req);
	snprintf(hostport, sizeof(hostport), "%s:%d", api_host, api_port);
	snprintf(auth, sizeof(auth), "Bearer %s", token);
	evhttp_add_header(h, "Host", hostport);
	evhttp_add_header(h, "Authorization", auth);
	explicit_bzero(auth, sizeof(auth));
	if (body != NULL) {
		char *text = json_dumps(body, JSON_COMPACT);
		evhttp_add_header(h, "Content-Type", "application/json");
		evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
		free(text);
		json_decref(body);
	}
	if (evhttp_make_request(evcon, req, strcmp(method, "POST") == 0 ? EVHTTP_REQ_POST :
				EVHTTP_REQ_GET, path) < 0)
		die("cannot send the request to ferryd at %s:%d", api_host, api_port);
	event_base_dispatch(r.base);
	evhttp_connection_free(evcon);
	event_base_free(r.base);
	if (r.status == 0)
		die("no answer from ferryd at %s:%d (is it running? see --api, FERRY_API)",
		    api_host, api_port);
	*status_r = r.status;
	snprintf(reason, reason_len, "%s", r.reason);
	return r.body;
}

#define BUSY_RETRY_MS 200
#define BUSY_WAIT_S 60

/* returns the JSON answer of a 2xx; dies with the server's message otherwise */
static json_t *call(const char *method, const char *path, json_t *body)
{
	struct resp r = { 0 };
	json_t *j;
	json_error_t jerr;

	/* 503 with "busy": another process held ferryd's state database (a
	   backup, a sqlite3 shell): the request was not carried out; sent
	   again every BUSY_RETRY_MS for up to BUSY_WAIT_S seconds */
	for (int tries = 0;; tries++) {
		json_incref(body);
		r.body = request(method, path, body, &r.status, r.reason, sizeof(r.reason));
		j = json_loads(r.body, 0, &jerr);
		if (r.status != 503 || !json_is_true(json_object_get(j, "busy")) ||
		    tries >= BUSY_WAIT_S * 1000 / BUSY_RETRY_MS)
			break;
		if (tries == 0)
			fprintf(stderr, "ferryctl: ferryd's state database is locked by another "
				"process; retrying\n");
		json_decref(j);
		free(r.body);
		usleep(BUSY_RETRY_MS * 1000);
	}
	json_decref(body);
	if (r.status < 200 || r.status > 299) {
		const char *msg = json_string_value(json_object_get(j, "error"));
		if (msg != NULL)
			fprintf(stderr, "ferryctl: %s (HTTP %d)\n", msg, r.status);
		else if (r.status == 413)
			fprintf(stderr, "ferryctl: request too large for ferryd (HTTP 413 %s; "
				"see max_body)\n", r.reason);
		else
			fprintf(stderr, "ferryctl: ferryd answered HTTP %d %s\n", r.status, r.reason);
		exit(1);
	}
	free(r.body);
	if (j == NULL)
		die("ferryd sent an answer that is not JSON");
	return j;
}

/* ---- setup --------------------------------------------------------------- */

static void setup(const char *conf, const char *api, const char *token_file)
{
	struct ferry_config cfg;
	char *err = NULL;
	int have_conf = 0;

	config_defaults(&cfg);
	if (conf == NULL)
		conf = getenv("FERRYD_CONF");
	if (conf == NULL && access(DEFAULT_CONF, R_OK) == 0)
		conf = DEFAULT_CONF;
	if (conf != NULL) {
		if (config_load(conf, &cfg, &err) < 0)
			die("%s", err);
		have_conf = 1;
		max_body = cfg.max_body;
	}
	if (api == NULL)
		api = getenv("FERRY_API");
	if (api != NULL) {
		const char *colon = strrchr(api, ':');
		if (colon == NULL || colon == api || atoi(colon + 1) <= 0 || atoi(colon + 1) > 65535)
			die("API address \"%s\": expected HOST:PORT", api);
		snprintf(api_host, sizeof(api_host), "%.*s", (int)(colon - api), api);
		api_port = atoi(colon + 1);
	} else {
		snprintf(api_host, sizeof(api_host), "%s", cfg.listen_host);
		api_port = cfg.listen_port;
	}
	if (token_file == NULL)
		token_file = getenv("FERRY_TOKEN_FILE");
	if (token_file == NULL && have_conf)
		token_file = cfg.api_token_file;
	if (token_file == NULL)
		die("no API token: give --token-file, FERRY_TOKEN_FILE or -c CONFIG");
	if ((token = config_read_secret(token_file, &err)) == NULL)
		die("API token: %s", err);
	config_free(&cfg);
}

/* the configuration and token are read when the command line is understood
   (a mistake in it is reported first) */
static const char *opt_conf, *opt_api, *opt_token_file;

static void setup_once(void)
{
	if (token == NULL)
		setup(opt_conf, opt_api, opt_token_file);
}

/* ---- commands ------------------------------------------------------------ */

static void cmd_import(int argc, char **argv)
{
	FILE *f;
	char *text = NULL;
	size_t len = 0, n;
	char buf[65536];
	json_t *j, *created;
	json_t *body;

	if (argc != 2)
		bad(NULL);
	if ((f = fopen(argv[1], "r")) == NULL)
		die("%s: cannot open: %m", argv[1]);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
		text = realloc(text, len + n + 1);
		memcpy(text + len, buf, n);
		len += n;
	}
	fclose(f);
	if (text == NULL)
		die("%s: empty file", argv[1]);
	text[len] = '\0';
	if (strlen(text) != len)
		die("%s: contains a NUL byte", argv[1]);
	body = json_pack("{s:s}", "csv", text);
	if (body == NULL)
		die("%s: not UTF-8 text", argv[1]);
	setup_once();
	if (max_body > 0) {
		char *dump = json_dumps(body, JSON_COMPACT);
		size_t blen = strlen(dump);
		free(dump);
		if (blen > (size_t)max_body)
			die("%s is too large for one import (%zu bytes as JSON, max_body is %d): "
			    "split it or raise max_body", argv[1], blen, max_body);
	}
	explicit_bzero(text, len);
	free(text);
	j = call("POST", "/v1/import", body);
	created = json_object_get(j, "waves_created");
	printf("imported %lld users", (long long)json_integer_value(json_object_get(j, "imported")));
	if (json_array_size(created) > 0) {
		size_t i;
		json_t *w;
		printf(" (new waves:");
		json_array_foreach(created, i, w)
			printf(" %s", json_string_value(w));
		printf(")");
	}
	printf("\n");
	json_decref(j);
}

static void cmd_wave(int argc, char **argv)
{
	json_t *j;

	if (argc >= 3 && strcmp(argv[1], "create") == 0) {
		json_t *body = json_pack("{s:s}", "name", argv[2]);
		for (int i = 3; i < argc; i++) {
			if (strcmp(argv[i], "--start-after") == 0 && i + 1 < argc)
				json_object_set_new(body, "start_after", json_string(argv[++i]));
			else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
				json_object_set_new(body, "window", json_string(argv[++i]));
			else
				bad(argv[i]);
		}
		j = call("POST", "/v1/wave/create", body);
		printf("wave %s created\n", argv[2]);
	} else if (argc >= 4 && strcmp(argv[1], "add") == 0) {
		json_t *users = json_array();
		for (int i = 3; i < argc; i++)
			json_array_append_new(users, json_string(argv[i]));
		j = call("POST", "/v1/wave/add", json_pack("{s:s, s:o}", "wave", argv[2],
							   "users", users));
		printf("%d users added to wave %s\n", argc - 3, argv[2]);
	} else
		bad(NULL);
	json_decref(j);
}

/* [USER | --wave W] */
static json_t *target_body(int argc, char **argv)
{
	json_t *body = json_object();

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--wave") == 0 && i + 1 < argc)
			json_object_set_new(body, "wave", json_string(argv[++i]));
		else if (argv[i][0] != '-' && json_object_get(body, "user") == NULL)
			json_object_set_new(body, "user", json_string(argv[i]));
		else
			bad(argv[i]);
	}
	if (json_object_get(body, "user") != NULL && json_object_get(body, "wave") != NULL)
		bad(NULL);
	return body;
}

static void cmd_simple(int argc, char **argv)
{
	const char *what = argv[0];
	json_t *body = target_body(argc, argv), *j;
	const char *user = json_string_value(json_object_get(body, "user"));
	const char *wave = json_string_value(json_object_get(body, "wave"));
	char path[64], scope[600];

	if (strcmp(what, "start") == 0 && user != NULL)
		bad(NULL);
	if (strcmp(what, "sync") == 0 && user == NULL)
		bad(NULL);
	snprintf(scope, sizeof(scope), "%s%s", user != NULL ? "user " : wave != NULL ?
		 "wave " : "everything", user != NULL ? user : wave != NULL ? wave : "");
	snprintf(path, sizeof(path), "/v1/%s", what);
	user = wave = NULL;  /* owned by body, which call() frees */
	j = call("POST", path, body);
	if (strcmp(what, "start") == 0)
		printf("started %lld users (%s)\n",
		       (long long)json_integer_value(json_object_get(j, "started")), scope);
	else if (strcmp(what, "sync") == 0 && json_is_true(json_object_get(j, "queued")))
		printf("sync of %s queued: a pass of it is running, this one follows\n", scope);
	else if (strcmp(what, "sync") == 0)
		printf("sync of %s queued first\n", scope);
	else
		printf("%sd: %s\n", what, scope);
	json_decref(j);
}

/* ---- status -------------------------------------------------------------- */

static const char *jstr(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v != NULL ? v : "";
}

static long long jint(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

static void bar(FILE *out, double frac, int width)
{
	int fill = (int)(frac * width + 0.5);

	fputc('[', out);
	for (int i = 0; i < width; i++)
		fputc(i < fill ? '#' : '.', out);
	fputc(']', out);
}

static void fmt_time(long long t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	localtime_r(&tt, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static void fmt_duration(long long s, char *buf, size_t len)
{
	if (s < 0)
		snprintf(buf, len, "-");
	else if (s < 3600)
		snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
	else
		snprintf(buf, len, "%lldh%02lldm", s / 3600, s % 3600 / 60);
}

static void print_status(FILE *out, json_t *j, const char *user, int tty, const char *eta)
{
	json_t *waves = json_object_get(j, "waves"), *users = json_object_get(j, "users"),
		*states = json_object_get(j, "states"), *w, *u;
	size_t i;
	char ts[64];
	long long total = 0;
	const char *key;
	json_t *v;

	json_object_foreach(states, key, v)
		total += json_integer_value(v);
	fmt_time(jint(j, "time"), ts, sizeof(ts));
	fprintf(out, "ferry status at %s: %lld users, %lld running%s", ts, total,
		jint(j, "running"), json_is_true(json_object_get(j, "paused")) ? ", PAUSED (all)" : "");
	if (eta != NULL)
		fprintf(out, ", ETA %s", eta);
	fprintf(out, "\n  ");
	json_object_foreach(states, key, v)
		if (json_integer_value(v) > 0)
			fprintf(out, "%s %lld  ", key, (long long)json_integer_value(v));
	fprintf(out, "\n  messages %lld of %lld known on the old server\n\n",
		jint(j, "messages"), jint(j, "old_messages"));

	if (user == NULL && json_array_size(waves) > 0) {
		fprintf(out, "%-12s %-6s %-6s %-6s %-7s %-8s %-11s %s\n", "WAVE", "USERS", "DONE",
			"FAILED", "ACTIVE", "PAUSED", "WINDOW", "PROGRESS");
		json_array_foreach(waves, i, w) {
			json_t *st = json_object_get(w, "states");
			long long n = jint(w, "users"), done = jint(st, "done") + jint(st, "verified"),
				failed = jint(st, "failed"),
				active = jint(st, "presync") + jint(st, "cutover");
			fprintf(out, "%-12s %-6lld %-6lld %-6lld %-7lld %-8s %-11s ", jstr(w, "name"),
				n, done, failed, active,
				json_is_true(json_object_get(w, "paused")) ? "yes" : "no",
				*jstr(w, "window") ? jstr(w, "window") : "always");
			bar(out, n > 0 ? (double)(done + failed) / (double)n : 0, 20);
			fprintf(out, " %3lld%%\n", n > 0 ? (done + failed) * 100 / n : 0);
		}
		fprintf(out, "\n");
	}
	if (user == NULL) {
		long long off = jint(j, "offset"), n = (long long)json_array_size(users);
		fprintf(out, "users %lld-%lld of %lld%s\n", n > 0 ? off + 1 : off, off + n,
			jint(j, "users_total"),
			off + n < jint(j, "users_total") ? " (next: --page N)" : "");
	}
	fprintf(out, "%-16s %-10s %-9s %-7s %-15s %s\n", "USER", "WAVE", "STATE", "TRIES",
		"MESSAGES", tty ? "PROGRESS / ERROR" : "ERROR");
	json_array_foreach(users, i, u) {
		char msgs[48], state[32];
		long long old = jint(u, "old_messages"), have = jint(u, "messages");
		snprintf(msgs, sizeof(msgs), "%lld/%lld", have, old);
		snprintf(state, sizeof(state), "%s%s%s%s", jstr(u, "state"),
			 json_is_true(json_object_get(u, "paused")) ? ",paused" : "",
			 json_is_true(json_object_get(u, "running")) ? ",busy" : "",
			 jint(u, "login_at") > 0 ? ",login" : "");
		fprintf(out, "%-16s %-10s %-9s %-7lld %-15s ", jstr(u, "name"),
			*jstr(u, "wave") ? jstr(u, "wave") : "-", state, jint(u, "attempts"), msgs);
		if (tty && *jstr(u, "error") == '\0') {
			bar(out, old > 0 ? (double)have / (double)old :
			    strcmp(jstr(u, "state"), "done") == 0 ? 1 : 0, 20);
		} else
			fprintf(out, "%s", jstr(u, "error"));
		fprintf(out, "\n");
		if (user != NULL) {
			json_t *f;
			size_t k;
			fprintf(out, "\n  %-28s %-9s %8s %8s %8s %10s\n", "FOLDER", "STATE", "OLD",
				"LOCAL", "COPIED", "RENUMBERED");
			json_array_foreach(json_object_get(u, "folders"), k, f) {
				char oldc[24];
				if (jint(f, "old_messages") < 0)
					snprintf(oldc, sizeof(oldc), "?");
				else
					snprintf(oldc, sizeof(oldc), "%lld", jint(f, "old_messages"));
				fprintf(out, "  %-28s %-9s %8s %8lld %8lld %10lld\n", jstr(f, "name"),
					jstr(f, "state"), oldc, jint(f, "messages"), jint(f, "copied"),
					jint(f, "renumbered"));
			}
			json_t *v = json_object_get(u, "verify");
			if (json_is_object(v)) {
				char when[64] = "-";
				if (jint(v, "finished_at") > 0)
					fmt_time(jint(v, "finished_at"), when, sizeof(when));
				fprintf(out, "\n  verify: %s (%s)%s%s\n",
					*jstr(v, "result") ? jstr(v, "result") : jstr(v, "state"),
					when, *jstr(v, "error") ? ": " : "", jstr(v, "error"));
			} else
				fprintf(out, "\n  verify: never run\n");
		}
	}
}

static volatile sig_atomic_t stop_live;

static void on_sigint(int sig)
{
	(void)sig;
	stop_live = 1;
}

static void cmd_status(int argc, char **argv)
{
	const char *wave = NULL, *user = NULL, *state = NULL;
	int json = 0, once = 0;
	long long page = 1;
	char path[1024] = "/v1/status", offset[32], *end;
	json_t *j;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--wave") == 0 && i + 1 < argc)
			wave = argv[++i];
		else if (strcmp(argv[i], "--state") == 0 && i + 1 < argc)
			state = argv[++i];
		else if (strcmp(argv[i], "--page") == 0 && i + 1 < argc) {
			page = strtoll(argv[++i], &end, 10);
			if (page < 1 || *end != '\0' || page > 1000000000LL)
				bad(argv[i]);
		}
		else if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else if (strcmp(argv[i], "--once") == 0)
			once = 1;
		else if (argv[i][0] != '-' && user == NULL)
			user = argv[i];
		else
			bad(argv[i]);
	}
	add_query(path, sizeof(path), "wave", wave);
	add_query(path, sizeof(path), "user", user);
	add_query(path, sizeof(path), "state", state);
	/* pages of the API's default size (100 users) */
	snprintf(offset, sizeof(offset), "%lld", (page - 1) * 100);
	if (page > 1)
		add_query(path, sizeof(path), "offset", offset);
	if (json || once || !isatty(STDOUT_FILENO)) {
		j = call("GET", path, NULL);
		if (json) {
			json_dumpf(j, stdout, JSON_INDENT(2));
			printf("\n");
		} else
			print_status(stdout, j, user, 0, NULL);
		json_decref(j);
		return;
	}
	/* live view: redraw every second; ETA from the rate users finish */
	signal(SIGINT, on_sigint);
	{
		long long t0 = 0, fin0 = -1;
		while (!stop_live) {
			json_t *st;
			long long fin, active, now;
			char eta[32] = "-";

			j = call("GET", path, NULL);
			st = json_object_get(j, "states");
			fin = jint(st, "done") + jint(st, "verified") + jint(st, "failed");
			active = jint(st, "presync") + jint(st, "cutover");
			now = jint(j, "time");
			if (fin0 < 0) {
				fin0 = fin;
				t0 = now;
			} else if (fin > fin0 && now > t0) {
				double rate = (double)(fin - fin0) / (double)(now - t0);
				fmt_duration((long long)((double)active / rate), eta, sizeof(eta));
			}
			if (active == 0)
				snprintf(eta, sizeof(eta), "nothing in progress");
			printf("\033[H\033[2J");
			print_status(stdout, j, user, 1, eta);
			printf("\n(refreshing every second; Ctrl-C to quit)\n");
			fflush(stdout);
			json_decref(j);
			if (active == 0)
				break;
			sleep(1);
		}
	}
}

/* ---- log ----------------------------------------------------------------- */

static void cmd_report(int argc, char **argv)
{
	const char *wave = NULL, *dns_at = NULL, *note = NULL;
	int json = 0, status;
	char path[1024] = "/v1/report", reason[128];
	char *text;
	json_t *j;

	for (int k = 1; k < argc; k++) {
		if (strcmp(argv[k], "--wave") == 0 && k + 1 < argc)
			wave = argv[++k];
		else if (strcmp(argv[k], "--dns-changed") == 0 && k + 1 < argc)
			dns_at = argv[++k];
		else if (strcmp(argv[k], "--note") == 0 && k + 1 < argc)
			note = argv[++k];
		else if (strcmp(argv[k], "--json") == 0)
			json = 1;
		else
			bad(argv[k]);
	}
	if (dns_at != NULL) {
		if (wave == NULL || json)
			bad(NULL);
		j = call("POST", "/v1/report/dns", json_pack("{s:s, s:s, s:s}", "wave", wave,
							     "at", dns_at, "note", note ? note : ""));
		printf("DNS change noted for wave %s (%zu noted)\n", wave,
		       json_array_size(json_object_get(j, "dns_changes")));
		json_decref(j);
		return;
	}
	if (note != NULL)
		bad("--note");
	add_query(path, sizeof(path), "wave", wave);
	add_query(path, sizeof(path), "format", json ? "json" : "csv");
	text = request("GET", path, NULL, &status, reason, sizeof(reason));
	if (status < 200 || status > 299) {
		j = json_loads(text, 0, NULL);
		const char *msg = json_string_value(json_object_get(j, "error"));
		fprintf(stderr, "ferryctl: %s (HTTP %d)\n", msg != NULL ? msg : reason, status);
		exit(1);
	}
	fputs(text, stdout);
	free(text);
}

static void cmd_log(int argc, char **argv)
{
	const char *user = NULL, *wave = NULL, *since = NULL, *limit = NULL;
	int json = 0;
	char path[1024] = "/v1/log";
	json_t *j, *e;
	size_t i;

	for (int k = 1; k < argc; k++) {
		if (strcmp(argv[k], "--user") == 0 && k + 1 < argc)
			user = argv[++k];
		else if (strcmp(argv[k], "--wave") == 0 && k + 1 < argc)
			wave = argv[++k];
		else if (strcmp(argv[k], "--since") == 0 && k + 1 < argc)
			since = argv[++k];
		else if (strcmp(argv[k], "--limit") == 0 && k + 1 < argc)
			limit = argv[++k];
		else if (strcmp(argv[k], "--json") == 0)
			json = 1;
		else
			bad(argv[k]);
	}
	add_query(path, sizeof(path), "user", user);
	add_query(path, sizeof(path), "wave", wave);
	add_query(path, sizeof(path), "since", since);
	add_query(path, sizeof(path), "limit", limit);
	j = call("GET", path, NULL);
	if (json) {
		json_dumpf(json_object_get(j, "entries"), stdout, JSON_INDENT(2));
		printf("\n");
	} else {
		json_array_foreach(json_object_get(j, "entries"), i, e) {
			char ts[64];
			fmt_time(jint(e, "time"), ts, sizeof(ts));
			printf("%s %-14s user=%s", ts, jstr(e, "event"),
			       *jstr(e, "user") ? jstr(e, "user") : "-");
			if (*jstr(e, "folder"))
				printf(" folder=\"%s\"", jstr(e, "folder"));
			if (jint(e, "copied") || jint(e, "messages"))
				printf(" copied=%lld messages=%lld", jint(e, "copied"), jint(e, "messages"));
			if (*jstr(e, "error"))
				printf(" error=\"%s\"", jstr(e, "error"));
			printf("\n");
		}
	}
	json_decref(j);
}

/* ---- cut-over, rollback, routing (docs/runbook.md) ----------------------- */

/* "90s" "10m" "2h" "3d" or seconds; -1 if invalid */
static long long parse_duration(const char *s)
{
	char *end;
	long long n = strtoll(s, &end, 10);

	if (end == s || n < 0)
		return -1;
	if (*end == '\0')
		return n;
	if (end[1] != '\0')
		return -1;
	switch (*end) {
	case 's': return n;
	case 'm': return n * 60;
	case 'h': return n * 3600;
	case 'd': return n * 86400;
	default: return -1;
	}
}

/* polls the wave's cut-over record until it is done or failed */
static int wait_cutover(const char *wave, const char *what)
{
	char path[400] = "/v1/cutover";
	struct timespec ts = { 0, 200 * 1000 * 1000 };
	json_t *j;

	char waiting[400] = "";

	add_query(path, sizeof(path), "wave", wave);
	for (;;) {
		const char *state;
		j = call("GET", path, NULL);
		state = jstr(j, "state");
		if (strcmp(state, "done") == 0 || strcmp(state, "failed") == 0)
			break;
		/* why it takes long: a member's pass runs (said once per change) */
		if (*jstr(j, "waiting") != '\0' && strcmp(jstr(j, "waiting"), waiting) != 0) {
			snprintf(waiting, sizeof(waiting), "%s", jstr(j, "waiting"));
			printf("%s of wave %s: %s\n", what, wave, waiting);
			fflush(stdout);
		}
		json_decref(j);
		nanosleep(&ts, NULL);  /* a human is waiting, not a test */
	}
	if (strcmp(jstr(j, "state"), "done") == 0) {
		printf("%s of wave %s done: %lld users\n", what, wave, jint(j, "users"));
		json_decref(j);
		return 0;
	}
	fprintf(stderr, "ferryctl: %s of wave %s failed: %s\n", what, wave, jstr(j, "error"));
	json_decref(j);
	return 1;
}

static void cmd_cutover(int argc, char **argv)
{
	int rollback = strcmp(argv[0], "rollback") == 0, nowait = 0, rc = 0;
	const char *wave = NULL;
	json_t *body = json_object(), *j;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--wave") == 0 && i + 1 < argc)
			wave = argv[++i];
		else if (strcmp(argv[i], "--no-wait") == 0)
			nowait = 1;
		else if (strcmp(argv[i], "--settle") == 0 && i + 1 < argc) {
			long long d = parse_duration(argv[++i]);
			if (d < 0)
				die("--settle: \"%s\" is not a duration (35s, 2m)", argv[i]);
			json_object_set_new(body, "settle", json_integer(d));
		}
		else if (!rollback && strcmp(argv[i], "--force") == 0)
			json_object_set_new(body, "force", json_true());
		else if (!rollback && strcmp(argv[i], "--max-age") == 0 && i + 1 < argc) {
			long long a = parse_duration(argv[++i]);
			if (a < 0)
				die("--max-age: \"%s\" is not a duration (90s, 10m, 2h, 3d)", argv[i]);
			json_object_set_new(body, "max_age", json_integer(a));
		} else if (!rollback && strcmp(argv[i], "--at") == 0 && i + 1 < argc) {
			const char *t = argv[++i];
			if (t[0] == '+') {
				long long d = parse_duration(t + 1);
				if (d < 0)
					die("--at: \"%s\" is not +DURATION (+90s, +10m, +2h)", t);
				json_object_set_new(body, "at", json_integer((long long)time(NULL) + d));
			} else
				json_object_set_new(body, "at", json_string(t));
		} else
			bad(argv[i]);
	}
	if (wave == NULL)
		bad(NULL);
	json_object_set_new(body, "wave", json_string(wave));
	j = call("POST", rollback ? "/v1/rollback" : "/v1/cutover", body);
	if (strcmp(jstr(j, "state"), "scheduled") == 0) {
		char when[64];
		fmt_time(jint(j, "at"), when, sizeof(when));
		printf("cut-over of wave %s scheduled at %s (%lld users)%s\n", wave, when,
		       jint(j, "users"), json_is_true(json_object_get(j, "forced")) ?
		       ", forced" : ", prechecks again then");
		json_decref(j);
		return;
	}
	json_decref(j);
	if (nowait) {
		printf("%s of wave %s started (ferryctl status, ferryctl log --wave %s)\n",
		       rollback ? "rollback" : "cut-over", wave, wave);
		return;
	}
	rc = wait_cutover(wave, rollback ? "rollback" : "cut-over");
	if (rc != 0)
		exit(rc);
}

static void cmd_route(int argc, char **argv)
{
	char path[600] = "/v1/route";
	int json = 0;
	size_t i;
	json_t *j, *r;

	if (argc >= 2 && strcmp(argv[1], "config") == 0) {
		json_t *body = json_object();
		for (int k = 2; k < argc; k++) {
			if (k + 1 >= argc)
				bad(argv[k]);
			if (strcmp(argv[k], "--new-transport") == 0)
				json_object_set_new(body, "new_transport", json_string(argv[++k]));
			else if (strcmp(argv[k], "--endpoint") == 0)
				json_object_set_new(body, "endpoint", json_string(argv[++k]));
			else if (strcmp(argv[k], "--transport") == 0)
				json_object_set_new(body, "transport", json_string(argv[++k]));
			else if (strcmp(argv[k], "--pop3-port") == 0)
				json_object_set_new(body, "pop3_port", json_integer(atoi(argv[++k])));
			else
				bad(argv[k]);
		}
		json_decref(call("POST", "/v1/route/config", body));
		printf("routing configured\n");
		return;
	}
	for (int k = 1; k < argc; k++) {
		if (strcmp(argv[k], "--wave") == 0 && k + 1 < argc)
			add_query(path, sizeof(path), "wave", argv[++k]);
		else if (strcmp(argv[k], "--json") == 0)
			json = 1;
		else if (argv[k][0] != '-')
			add_query(path, sizeof(path), "user", argv[k]);
		else
			bad(argv[k]);
	}
	j = call("GET", path, NULL);
	if (json) {
		char *text = json_dumps(j, JSON_INDENT(1));
		printf("%s\n", text);
		free(text);
	} else {
		printf("%-16s %-10s %-6s %-8s %s\n", "USER", "WAVE", "ROUTE", "PHASE", "SINCE");
		json_array_foreach(json_object_get(j, "routes"), i, r) {
			char when[64] = "-";
			if (jint(r, "changed_at") > 0)
				fmt_time(jint(r, "changed_at"), when, sizeof(when));
			printf("%-16s %-10s %-6s %-8s %s\n", jstr(r, "user"), jstr(r, "wave"),
			       jstr(r, "route"), jstr(r, "phase"), when);
		}
	}
	json_decref(j);
}

/* ---- preflight, verify, endpoint (docs/ferryd.md) ---------------------- */

/* polls GET /v1/check until the run has ended; the stored answer */
static json_t *wait_check(const char *user, const char *kind, int timeout)
{
	char path[600] = "/v1/check";
	time_t end = time(NULL) + timeout;

	add_query(path, sizeof(path), "user", user);
	add_query(path, sizeof(path), "kind", kind);
	for (;;) {
		json_t *j = call("GET", path, NULL);
		const char *st = jstr(j, "state");
		if (strcmp(st, "done") == 0 || strcmp(st, "error") == 0)
			return j;
		json_decref(j);
		if (time(NULL) > end)
			die("%s of %s: no result within %d s (see ferryctl log --user %s)", kind, user,
			    timeout, user);
		usleep(200 * 1000);
	}
}

/* prints one stored run; 0 pass, 1 otherwise */
static int show_check(json_t *j, int json)
{
	const char *st = jstr(j, "state"), *res = jstr(j, "result");

	if (json) {
		char *text = json_dumps(j, JSON_INDENT(1));
		printf("%s\n", text);
		free(text);
	} else if (strcmp(st, "error") == 0)
		printf("%s %s: ERROR: %s\n", jstr(j, "kind"), jstr(j, "user"), jstr(j, "error"));
	else
		fputs(jstr(j, "text"), stdout);
	return strcmp(st, "done") == 0 && strcmp(res, "pass") == 0 ? 0 : 1;
}

static void cmd_check(int argc, char **argv)
{
	const char *kind = argv[0], *user = NULL, *wave = NULL;
	int json = 0, nowait = 0, show = 0, timeout = 900, rc = 0, identity_login = 0;
	json_t *body = json_object(), *j, *u;
	size_t i;

	for (int k = 1; k < argc; k++) {
		if (strcmp(argv[k], "--json") == 0)
			json = 1;
		else if (strcmp(argv[k], "--no-wait") == 0)
			nowait = 1;
		else if (strcmp(argv[k], "--show") == 0)
			show = 1;
		else if (strcmp(argv[k], "--timeout") == 0 && k + 1 < argc)
			timeout = atoi(argv[++k]);
		else if (strcmp(argv[k], "--wave") == 0 && k + 1 < argc && kind[0] == 'p')
			wave = argv[++k];
		else if (strcmp(argv[k], "--identity-login") == 0 && kind[0] == 'p')
			identity_login = 1;
		else if (argv[k][0] != '-' && user == NULL)
			user = argv[k];
		else
			bad(argv[k]);
	}
	if ((user == NULL) == (wave == NULL))
		bad(NULL);
	if (show) {  /* the stored report, without running again */
		char path[600] = "/v1/check";
		if (user == NULL)
			bad(NULL);
		add_query(path, sizeof(path), "user", user);
		add_query(path, sizeof(path), "kind", kind);
		j = call("GET", path, NULL);
		rc = show_check(j, json);
		json_decref(j);
		exit(rc);
	}
	json_object_set_new(body, user != NULL ? "user" : "wave", json_string(user ? user : wave));
	char post[64];
	if (identity_login)
		json_object_set_new(body, "identity_login", json_true());
	snprintf(post, sizeof(post), "/v1/%s", kind);
	j = call("POST", post, body);
	if (nowait) {
		printf("%s queued for %zu users (ferryctl %s USER --show)\n", kind,
		       json_array_size(json_object_get(j, "users")), kind);
		json_decref(j);
		return;
	}
	if (json)
		printf("[\n");
	json_array_foreach(json_object_get(j, "users"), i, u) {
		json_t *r = wait_check(json_string_value(u), kind, timeout);
		if (json && i > 0)
			printf(",\n");
		if (show_check(r, json) != 0)
			rc = 1;
		json_decref(r);
	}
	if (json)
		printf("]\n");
	json_decref(j);
	if (rc != 0) {
		fprintf(stderr, "ferryctl: %s: not every user passed\n", kind);
		exit(1);
	}
}

static void cmd_dns(int argc, char **argv)
{
	int json = 0, last = 0, timeout = 120, listed = 0;
	json_t *j;
	long long started = 0;

	for (int k = 1; k < argc; k++) {
		if (strcmp(argv[k], "--json") == 0)
			json = 1;
		else if (strcmp(argv[k], "--last") == 0)
			last = 1;
		else if (strcmp(argv[k], "--timeout") == 0 && k + 1 < argc)
			timeout = (int)parse_duration(argv[++k]);
		else
			bad(argv[k]);
	}
	if (!last) {
		j = call("POST", "/v1/dns", json_object());
		started = jint(j, "started");
		json_decref(j);
	}
	time_t end = time(NULL) + timeout;
	for (;;) {
		j = call("GET", "/v1/dns", NULL);
		json_t *rep = json_object_get(j, "report");
		if (strcmp(jstr(j, "state"), "none") == 0 && last)
			die("no DNS check yet (ferryctl dns)");
		if (strcmp(jstr(j, "state"), "running") != 0 && rep != NULL &&
		    jint(rep, "started") >= started)
			break;
		json_decref(j);
		if (time(NULL) > end)
			die("DNS check: no result within %d s", timeout);
		usleep(100 * 1000);
	}
	json_t *rep = json_object_get(j, "report"), *v;
	size_t i;
	json_array_foreach(json_object_get(rep, "dnsbl"), i, v)
		listed |= json_is_true(json_object_get(v, "listed"));
	if (json) {
		char *text = json_dumps(rep, JSON_INDENT(1));
		printf("%s\n", text);
		free(text);
	} else {
		fputs(jstr(j, "text"), stdout);
	}
	int rc = json_is_true(json_object_get(rep, "ttl_ok")) && !listed ? 0 : 1;
	json_decref(j);
	if (token != NULL)
		explicit_bzero(token, strlen(token));
	exit(rc);
}

static void cmd_endpoint(int argc, char **argv)
{
	json_t *body = json_object();

	if (argc != 4 || strcmp(argv[2], "--old-prefix") != 0)
		bad(NULL);
	json_object_set_new(body, "endpoint", json_string(argv[1]));
	json_object_set_new(body, "old_prefix", json_string(argv[3]));
	json_decref(call("POST", "/v1/endpoint", body));
	printf("endpoint %s: old_prefix \"%s\"\n", argv[1], argv[3]);
}

int main(int argc, char **argv)
{
	const char *conf = NULL, *api = NULL, *token_file = NULL;
	int i;

	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conf = argv[++i];
		else if (strcmp(argv[i], "--api") == 0 && i + 1 < argc)
			api = argv[++i];
		else if (strcmp(argv[i], "--token-file") == 0 && i + 1 < argc)
			token_file = argv[++i];
		else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			help_main(NULL);
		else {
			fprintf(stderr, "ferryctl: \"%s\": unknown option or missing value\n",
				argv[i]);
			usage();
		}
	}
	if (i >= argc)
		usage();
	/* help needs neither the configuration nor the token */
	if (strcmp(argv[i], "help") == 0)
		help_main(i + 1 < argc ? argv[i + 1] : NULL);
	if (find_cmd(argv[i]) == NULL) {
		fprintf(stderr, "ferryctl: unknown command \"%s\"\n", argv[i]);
		usage();
	}
	cur_cmd = argv[i];
	for (int k = i + 1; k < argc; k++)
		if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0)
			help_main(argv[i]);
	signal(SIGPIPE, SIG_IGN);
	opt_conf = conf;
	opt_api = api;
	opt_token_file = token_file;
	argc -= i;
	argv += i;
	if (strcmp(argv[0], "import") == 0)
		cmd_import(argc, argv);
	else if (strcmp(argv[0], "wave") == 0)
		cmd_wave(argc, argv);
	else if (strcmp(argv[0], "start") == 0 || strcmp(argv[0], "pause") == 0 ||
		 strcmp(argv[0], "resume") == 0 || strcmp(argv[0], "sync") == 0)
		cmd_simple(argc, argv);
	else if (strcmp(argv[0], "status") == 0)
		cmd_status(argc, argv);
	else if (strcmp(argv[0], "log") == 0)
		cmd_log(argc, argv);
	else if (strcmp(argv[0], "cutover") == 0 || strcmp(argv[0], "rollback") == 0)
		cmd_cutover(argc, argv);
	else if (strcmp(argv[0], "route") == 0)
		cmd_route(argc, argv);
	else if (strcmp(argv[0], "preflight") == 0 || strcmp(argv[0], "verify") == 0 ||
		 strcmp(argv[0], "sieve") == 0)
		cmd_check(argc, argv);
	else if (strcmp(argv[0], "endpoint") == 0)
		cmd_endpoint(argc, argv);
	else if (strcmp(argv[0], "dns") == 0)
		cmd_dns(argc, argv);
	else if (strcmp(argv[0], "report") == 0)
		cmd_report(argc, argv);
	else
		usage();
	if (token != NULL)
		explicit_bzero(token, strlen(token));
	free(token);
	return 0;
}
