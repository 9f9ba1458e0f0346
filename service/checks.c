/* Preflight and verification runs (see checks.h). The IMAP library
   (preflight.c, verify.c) blocks on private event_bases, so each run is a
   child: ferry-imapcheck from ferryd's directory, argv without secrets,
   "old=SECRET\nnew=SECRET\n" written to its stdin (a pipe), its JSON report
   read from stdout and its error line from stderr through bufferevents on
   ferryd's loop, killed at check_timeout. A crash of the IMAP code cannot
   take ferryd down, and the child's memory is gone with it.
   A verification first asks NEW's plugin which new folder each old one
   became (ferryStatus through the doveadm HTTP API); its rows go to the
   child as a "names=JSON" line after the credentials. */
#include "checks.h"

#include "backend.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "doveadm.h"
#include "evlog.h"
#include "ferry-contract.h"
#include "preflight.h"
#include "secret.h"
#include "sieve.h"
#include "userstate.h"
#include "verify.h"

#define MAX_REPORT (64 * 1024 * 1024)

struct run {
	struct checks *ch;
	struct run *next;
	char user[256], kind[16], host[256];
	int after_pull, started, timed_out, too_big;
	int hold;            /* sieve: waits for its folder map (checks_release) */
	char map[PATH_MAX];  /* sieve: old<TAB>new folder names */
	int identity_login;  /* preflight: the identity check's own login too */
	char restore[256];   /* sieve rollback: make this OLD's active script again */
	int64_t requested_at;
	pid_t pid;  /* 0 until the child runs */
	struct doveadm_req *names_req;  /* verify: ferryStatus in flight */
	char *names;  /* verify: the plugin's folder names (JSON) */
	struct bufferevent *out, *err, *in;
	int out_done, err_done;
	struct event *deadline;
	/* the result, held while another process holds the state database's
	   write lock (docs/ferryd.md, "A locked database") */
	struct event *hold_ev;
	json_t *held_rep;
	char held_error[1024];
	struct timespec hold_since;
};

#define HOLD_RETRY_MS 100

struct checks {
	struct event_base *base;
	struct store *st;
	struct doveadm_client *dc;
	const struct ferry_config *cfg;
	checks_done_cb *cb;
	void *ctx;
	char tool[PATH_MAX + 32];
	struct run *runs;  /* queue order: oldest first */
	int nrunning;
	/* read by checks_load_secrets: at start (before a privilege drop) and
	   at SIGHUP, never per run */
	char *secret_key, *old_master_pw, *new_master_pw;
};

static int set(const char *s)
{
	return s != NULL && *s != '\0';
}

struct checks *checks_new(struct event_base *base, struct store *st,
			  struct doveadm_client *dc, const struct ferry_config *cfg,
			  checks_done_cb *cb, void *ctx)
{
	struct checks *ch = calloc(1, sizeof(*ch));
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	ch->base = base;
	ch->st = st;
	ch->dc = dc;
	ch->cfg = cfg;
	ch->cb = cb;
	ch->ctx = ctx;
	if (n < 0)
		n = 0;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash != NULL)
		*slash = '\0';
	snprintf(ch->tool, sizeof(ch->tool), "%s/ferry-imapcheck", n > 0 ? self : ".");
	return ch;
}

/* ---- store and logs ----------------------------------------------------- */

static void log_event(struct checks *ch, const char *user, const char *folder,
		      const char *event, int64_t messages, const char *error)
{
	if (store_log_event(ch->st, user, folder, event, 0, messages, error) < 0)
		evlog("error", "store-error", "user", user, "error", ch->st->error(ch->st), NULL);
}

static void put_check(struct run *r, const char *state, const char *result,
		      const char *error, const char *json, const char *text)
{
	struct checks *ch = r->ch;
	struct check_rec c;

	memset(&c, 0, sizeof(c));
	snprintf(c.user, sizeof(c.user), "%s", r->user);
	snprintf(c.kind, sizeof(c.kind), "%s", r->kind);
	snprintf(c.state, sizeof(c.state), "%s", state);
	snprintf(c.result, sizeof(c.result), "%s", result != NULL ? result : "");
	snprintf(c.error, sizeof(c.error), "%s", error != NULL ? error : "");
	c.after_pull = r->after_pull;
	c.requested_at = r->requested_at;
	if (strcmp(state, "done") == 0 || strcmp(state, "error") == 0)
		c.finished_at = time(NULL);
	c.report_json = (char *)json;
	c.report_text = (char *)text;
	if (ch->st->check_put(ch->st, &c) < 0)
		evlog("error", "store-error", "user", r->user, "error", ch->st->error(ch->st), NULL);
}

/* ---- credentials -------------------------------------------------------- */

static void wipe(char **s)
{
	if (*s != NULL) {
		explicit_bzero(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

/* the user's CSV password (decrypted), NULL if none or not decryptable */
static char *csv_password(struct checks *ch, const char *user)
{
	char *enc = NULL, *pw = NULL;
	char id[SECRET_KEY_ID_LEN + 1], cur[SECRET_KEY_ID_LEN + 1];

	if (ch->secret_key == NULL || ch->st->user_password_get(ch->st, user, &enc) != 0) {
		free(enc);
		return NULL;
	}
	if ((pw = secret_decrypt(ch->secret_key, enc)) == NULL) {
		/* typically a key changed without ferryd --rekey */
		secret_key_id(ch->secret_key, cur);
		if (secret_value_key_id(enc, id) < 0)
			snprintf(id, sizeof(id), "unknown");
		evlog("warning", "password-undecryptable", "user", user, "key_id", id,
		      "current_key_id", cur, NULL);
	}
	free(enc);
	return pw;
}

enum how { HOW_NONE, HOW_MASTER, HOW_PASSWORD };

static enum how old_how(struct checks *ch, const struct user_rec *u, int has_pw)
{
	if (strcmp(u->ep.auth, "password") == 0 && has_pw)
		return HOW_PASSWORD;
	if (set(ch->cfg->old_master_user))
		return HOW_MASTER;
	return has_pw ? HOW_PASSWORD : HOW_NONE;
}

static enum how new_how(struct checks *ch, int has_pw)
{
	if (set(ch->cfg->new_master_user))
		return HOW_MASTER;
	return has_pw ? HOW_PASSWORD : HOW_NONE;
}

static int has_password(struct checks *ch, const char *user)
{
	char *enc = NULL;
	int ret = ch->st->user_password_get(ch->st, user, &enc) == 0 &&
		  ch->secret_key != NULL;

	free(enc);
	return ret;
}

int checks_can_verify(struct checks *ch, const struct user_rec *u)
{
	int pw = has_password(ch, u->name);

	return old_how(ch, u, pw) != HOW_NONE && new_how(ch, pw) != HOW_NONE;
}

/* ---- the child ---------------------------------------------------------- */

struct argv {
	const char *v[64];
	int n;
	char num[8][32];
	int nnum;
	char new_host[256];  /* the user's NEW backend (backend.h) */
};

static void arg(struct argv *a, const char *s)
{
	if (a->n < 63)
		a->v[a->n++] = s;
	a->v[a->n] = NULL;
}

static const char *num(struct argv *a, const char *fmt, double v)
{
	char *p = a->num[a->nnum < 7 ? a->nnum++ : 7];
	snprintf(p, 32, fmt, v);
	return p;
}

/* argv and the credentials text; -1 with why */
static int build(struct run *r, const struct user_rec *u, struct argv *a, char **creds,
		 char *why, size_t wl)
{
	struct checks *ch = r->ch;
	const struct ferry_config *cfg = ch->cfg;
	int verify = strcmp(r->kind, "verify") == 0, sieve = strcmp(r->kind, "sieve") == 0;
	char *pw = csv_password(ch, u->name), *old_secret = NULL, *new_secret = NULL;
	enum how oh = old_how(ch, u, pw != NULL), nh = new_how(ch, pw != NULL);
	int ret = -1;

	arg(a, ch->tool);
	arg(a, r->restore[0] ? "sieve-activate" : r->kind);
	arg(a, "--user");
	arg(a, u->old_login);
	arg(a, "--old-host");
	arg(a, u->ep.host);
	arg(a, "--old-port");
	arg(a, num(a, "%.0f", sieve ? cfg->old_sieve_port : u->ep.port));
	arg(a, "--old-tls");
	/* ManageSieve has no implicit TLS: STARTTLS on its own port */
	arg(a, sieve && strcmp(u->ep.tls, "imaps") == 0 ? "starttls" : u->ep.tls);
	if (oh == HOW_NONE && pw == NULL && has_password(ch, u->name)) {
		snprintf(why, wl, "the user's stored password does not decrypt with"
			 " secret_key_file (a key changed without ferryd --rekey?)");
		goto out;
	}
	if (oh == HOW_NONE) {
		snprintf(why, wl, "no credentials for the old server (set old_master_user and"
			 " old_master_password_file, or give the user's password in the CSV)");
		goto out;
	}
	if (oh == HOW_MASTER) {
		if (ch->old_master_pw == NULL) {
			snprintf(why, wl, "old_master_password_file is not loaded");
			goto out;
		}
		old_secret = strdup(ch->old_master_pw);
		arg(a, "--old-auth");
		arg(a, "plain");
		arg(a, "--old-auth-user");
		arg(a, cfg->old_master_user);
	} else
		old_secret = strdup(pw);
	if (r->restore[0])
		nh = HOW_NONE; /* only the old server is written */
	else if (nh == HOW_NONE && (verify || sieve)) {
		snprintf(why, wl, "no credentials for the new server (set new_master_user and"
			 " new_master_password_file)");
		goto out;
	}
	if (nh != HOW_NONE) {
		/* the backend that owns the user's mailbox, never the proxy
		   (which sends a user not cut over yet to OLD) */
		if (backend_host(sieve ? cfg->new_sieve_host : cfg->new_imap_host, u->new_host,
				 sieve ? "new_sieve" : "new_imap", a->new_host,
				 sizeof(a->new_host), why, wl) < 0)
			goto out;
		arg(a, "--new-host");
		arg(a, a->new_host);
		arg(a, "--new-port");
		arg(a, num(a, "%.0f", sieve ? cfg->new_sieve_port : cfg->new_imap_port));
		arg(a, "--new-tls");
		arg(a, !set(cfg->new_tls) ? "none"
		       : sieve && strcmp(cfg->new_tls, "imaps") == 0 ? "starttls" : cfg->new_tls);
		arg(a, "--new-user");
		arg(a, u->new_login);
		if (nh == HOW_MASTER) {
			if (ch->new_master_pw == NULL) {
				snprintf(why, wl, "new_master_password_file is not loaded");
				goto out;
			}
			new_secret = strdup(ch->new_master_pw);
			arg(a, "--new-auth");
			arg(a, "plain");
			arg(a, "--new-auth-user");
			arg(a, cfg->new_master_user);
		} else
			new_secret = strdup(pw);
	}
	if (set(cfg->imap_ca_file)) {
		arg(a, "--old-ca-file");
		arg(a, cfg->imap_ca_file);
		arg(a, "--new-ca-file");
		arg(a, cfg->imap_ca_file);
	}
	/* no login meant to fail on either server (a brute-force ban would
	   lock the migration out), unless the admin asked for the full
	   identity check (ferryctl preflight --identity-login); nothing read on
	   NEW after its login: LIST or STATUS there would make the plugin copy */
	arg(a, "--old-identity");
	arg(a, r->identity_login ? "full" : "no-own-login");
	if (nh != HOW_NONE) {
		arg(a, "--new-identity");
		arg(a, verify ? "no-own-login" : "none");
	}
	arg(a, "--timeout-ms");
	arg(a, num(a, "%.0f", cfg->check_timeout > 120 ? 120000.0 : cfg->check_timeout * 1000.0));
	if (r->restore[0]) {
		arg(a, "--name");
		arg(a, r->restore);
	} else if (sieve) {
		struct route_rec rt;
		arg(a, "--map");
		arg(a, r->map);
		if (ch->st->route_get(ch->st, u->name, &rt) == 0 && strcmp(rt.target, "new") == 0) {
			/* cut over: NEW is the truth (the user may edit there), and
			   OLD must not answer stragglers with a second vacation reply */
			arg(a, "--keep-new");
			arg(a, "--deactivate-old");
		}
	}
	if (sieve && !r->restore[0] && u->ep.old_prefix[0] != '\0') {
		arg(a, "--old-prefix");
		arg(a, u->ep.old_prefix);
	}
	if (verify) {
		arg(a, "--sample");
		arg(a, num(a, "%.6f", cfg->verify_sample));
		arg(a, "--names");
		arg(a, "-");
	}
	arg(a, "--credentials");
	arg(a, "-");
	if (asprintf(creds, "old=%s\nnew=%s\n", old_secret, new_secret != NULL ? new_secret : "") < 0)
		*creds = NULL;
	else
		ret = 0;
out:
	wipe(&pw);
	wipe(&old_secret);
	wipe(&new_secret);
	return ret;
}

static void run_end(struct run *r);
static void conclude(struct run *r, json_t *rep, const char *error);

static void on_read(struct bufferevent *bev, void *arg)
{
	struct run *r = arg;

	if (evbuffer_get_length(bufferevent_get_input(bev)) > MAX_REPORT && !r->too_big &&
	    r->pid > 0) {
		r->too_big = 1;
		kill(r->pid, SIGKILL);
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct run *r = arg;

	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	bufferevent_disable(bev, EV_READ);
	if (bev == r->out)
		r->out_done = 1;
	else
		r->err_done = 1;
	if (r->out_done && r->err_done)
		run_end(r);
}

static void run_end_early(struct run *r, const char *error);

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct run *r = arg;
	char error[128];

	(void)fd;
	(void)what;
	if (r->pid <= 0) { /* still asking the new server for the names */
		snprintf(error, sizeof(error), "no result within check_timeout (%d s)",
			 r->ch->cfg->check_timeout);
		run_end_early(r, error);
		return;
	}
	r->timed_out = 1;
	kill(r->pid, SIGKILL);
	run_end(r);
}

/* the names line went to the child (or it is gone): stdin closed */
static void on_names_written(struct bufferevent *bev, void *arg)
{
	struct run *r = arg;

	(void)bev;
	bufferevent_free(r->in);
	r->in = NULL;
}

static void on_names_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	on_names_written(bev, arg);
}

static struct bufferevent *reader(struct run *r, int fd)
{
	struct bufferevent *bev;

	evutil_make_socket_nonblocking(fd);
	bev = bufferevent_socket_new(r->ch->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(bev, on_read, NULL, on_event, r);
	bufferevent_enable(bev, EV_READ);
	return bev;
}

/* Forks ferry-imapcheck for the run: the credentials (a few hundred bytes:
   they fit the pipe buffer, the write cannot block) and, for a
   verification, the names line, written through a bufferevent (it may be
   large) that closes the pipe when done. */
static int run_spawn(struct run *r, char *why, size_t wl)
{
	struct checks *ch = r->ch;
	struct user_rec u;
	struct argv a;
	char *creds = NULL;
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	size_t len, off = 0;

	memset(&a, 0, sizeof(a));
	if (ch->st->user_get(ch->st, r->user, &u) != 0) {
		snprintf(why, wl, "unknown user");
		return -1;
	}
	if (build(r, &u, &a, &creds, why, wl) < 0)
		return -1;
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		snprintf(why, wl, "pipe: %s", strerror(errno));
		goto fail;
	}
	r->pid = fork();
	if (r->pid < 0) {
		r->pid = 0;
		snprintf(why, wl, "fork: %s", strerror(errno));
		goto fail;
	}
	if (r->pid == 0) {
		explicit_bzero(creds, strlen(creds));
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
			_exit(127);
		execv(a.v[0], (char *const *)a.v);
		dprintf(2, "ferry-imapcheck: cannot run %s: %s\n", a.v[0], strerror(errno));
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	len = strlen(creds);
	while (off < len) {
		ssize_t n = write(in[1], creds + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	explicit_bzero(creds, len);
	free(creds);
	if (r->names != NULL) {
		evutil_make_socket_nonblocking(in[1]);
		r->in = bufferevent_socket_new(ch->base, in[1], BEV_OPT_CLOSE_ON_FREE);
		bufferevent_setcb(r->in, NULL, on_names_written, on_names_event, r);
		evbuffer_add_printf(bufferevent_get_output(r->in), "names=%s\n", r->names);
		bufferevent_enable(r->in, EV_WRITE);
	} else
		close(in[1]);
	r->out = reader(r, out[0]);
	r->err = reader(r, err[0]);
	return 0;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0) close(in[i]);
		if (out[i] >= 0) close(out[i]);
		if (err[i] >= 0) close(err[i]);
	}
	if (creds != NULL) {
		explicit_bzero(creds, strlen(creds));
		free(creds);
	}
	return -1;
}

/* ferryStatus answered: the plugin's folder names, then the child */
static void on_names(const struct doveadm_reply *reply, void *ctx)
{
	struct run *r = ctx;
	char why[1024];

	r->names_req = NULL;
	if (!reply->ok) {
		snprintf(why, sizeof(why), "which new folder each old one became (doveadm ferry"
			 " status on the new server): %s", reply->error);
		run_end_early(r, why);
		return;
	}
	r->names = json_dumps(reply->rows, JSON_COMPACT);
	if (r->names == NULL) {
		run_end_early(r, "out of memory");
		return;
	}
	if (run_spawn(r, why, sizeof(why)) < 0)
		run_end_early(r, why);
}

static int run_start(struct run *r, char *why, size_t wl)
{
	struct checks *ch = r->ch;
	struct timeval tv = { ch->cfg->check_timeout, 0 };
	struct user_rec u;

	if (strcmp(r->kind, "verify") == 0) {
		/* verification compares folders under the plugin's own
		   mapping, never a translation of its own */
		if (ch->st->user_get(ch->st, r->user, &u) != 0) {
			snprintf(why, wl, "unknown user");
			return -1;
		}
		r->names_req = ch->dc == NULL ? NULL :
			doveadm_call(ch->dc, u.new_host, FERRY_CMD_STATUS,
				     json_pack("{s:s}", "user", u.new_login), on_names, r);
		if (r->names_req == NULL) {
			snprintf(why, wl, "could not ask the new server's doveadm for the user's"
				 " folder names%s%s", ch->dc != NULL ? ": " : "",
				 ch->dc != NULL ? doveadm_client_error(ch->dc) : "");
			return -1;
		}
	} else if (run_spawn(r, why, wl) < 0)
		return -1;
	r->deadline = evtimer_new(ch->base, on_deadline, r);
	evtimer_add(r->deadline, &tv);
	return 0;
}

/* ---- results ------------------------------------------------------------ */

static const char *diff_kind(const char *field)
{
	if (field == NULL)
		return "other";
	if (strcmp(field, "missing on new") == 0)
		return "missing";
	if (strncmp(field, "not on old", 10) == 0)
		return "unexpected";
	return field;
}

static void val_text(json_t *v, char *buf, size_t len)
{
	if (v == NULL)
		buf[0] = '\0';
	else if (json_is_string(v))
		snprintf(buf, len, "%s", json_string_value(v));
	else {
		char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		snprintf(buf, len, "%s", t != NULL ? t : "");
		free(t);
	}
}

static void append(char *buf, size_t len, const char *fmt, const char *a, const char *b,
		   const char *c)
{
	size_t used = strlen(buf);

	if (used + 1 < len)
		snprintf(buf + used, len - used, fmt, a, b, c);
}

/* verify-diff lines (event log and migration log) and the failure summary */
static void verify_diffs(struct run *r, json_t *rep, char *summary, size_t slen)
{
	json_t *f, *d, *m;
	size_t i, k;

	snprintf(summary, slen, "verification failed:");
	json_array_foreach(json_object_get(rep, "folders_missing_on_new"), i, m) {
		const char *name = json_is_string(m) ? json_string_value(m)
			: json_string_value(json_object_get(m, "name"));
		name = name != NULL ? name : "?";
		evlog("warning", "verify-diff", "user", r->user, "folder", name, "kind",
		      "folder-missing", NULL);
		log_event(r->ch, r->user, name, "verify-diff", 0, "kind=folder-missing");
		append(summary, slen, " %s: missing on new;", name, "", "");
	}
	json_array_foreach(json_object_get(rep, "folders_skipped"), i, m) {
		const char *name = json_string_value(json_object_get(m, "name"));
		const char *why = json_string_value(json_object_get(m, "reason"));
		char line[600];

		name = name != NULL ? name : "?";
		why = why != NULL ? why : "";
		evlog("warning", "verify-diff", "user", r->user, "folder", name, "kind",
		      "folder-skipped", "reason", why, NULL);
		snprintf(line, sizeof(line), "kind=folder-skipped reason=%s", why);
		log_event(r->ch, r->user, name, "verify-diff", 0, line);
		append(summary, slen, " %s: not migrated (%s);", name, why, "");
	}
	json_array_foreach(json_object_get(rep, "folders"), i, f) {
		const char *name = json_string_value(json_object_get(f, "name"));
		const char *first_kind = NULL;
		char first_uid[32] = "", counts[256] = "";
		const char *ck;
		json_t *cv;

		if (name == NULL || json_array_size(json_object_get(f, "differences")) == 0)
			continue;
		json_array_foreach(json_object_get(f, "differences"), k, d) {
			char uid[32] = "-", o[200], n[200], line[600];
			const char *kind = diff_kind(json_string_value(json_object_get(d, "field")));
			if (json_is_integer(json_object_get(d, "uid")))
				snprintf(uid, sizeof(uid), "%lld",
					 (long long)json_integer_value(json_object_get(d, "uid")));
			val_text(json_object_get(d, "old"), o, sizeof(o));
			val_text(json_object_get(d, "new"), n, sizeof(n));
			evlog("warning", "verify-diff", "user", r->user, "folder", name, "kind", kind,
			      "uid", uid, "old", o, "new", n, NULL);
			snprintf(line, sizeof(line), "kind=%s uid=%s%s%s%s%s", kind, uid,
				 *o ? " old=" : "", o, *n ? " new=" : "", n);
			log_event(r->ch, r->user, name, "verify-diff", 0, line);
			if (first_kind == NULL) {
				first_kind = kind;
				snprintf(first_uid, sizeof(first_uid), "%s", uid);
			}
		}
		json_object_foreach(json_object_get(f, "counts"), ck, cv) {
			char c[64];
			snprintf(c, sizeof(c), "%s%s %lld", counts[0] ? ", " : "", ck,
				 (long long)json_integer_value(cv));
			if (strlen(counts) + strlen(c) < sizeof(counts))
				strcat(counts, c);
		}
		append(summary, slen, " %s: %s (first: uid %s);", name,
		       counts[0] ? counts : (first_kind ? first_kind : "differs"), first_uid);
	}
	{
		size_t l = strlen(summary);
		if (l > 0 && summary[l - 1] == ';')
			summary[l - 1] = '\0';
	}
}

static void user_after(struct run *r, const char *result, const char *error)
{
	struct checks *ch = r->ch;
	struct userstate_retry retry = { ch->cfg->retry_limit, ch->cfg->retry_base,
					 ch->cfg->retry_max_delay };
	int failed = 0;
	int ret = userstate_verified(ch->st, r->user, r->after_pull, result, error, &retry,
				     &failed);

	if (ret < 0)
		evlog("error", "store-error", "user", r->user, "error", ch->st->error(ch->st), NULL);
	if (ret == USERSTATE_LOST) {
		userstate_log_lost(r->user);
		return;
	}
	if (r->after_pull && result != NULL && strcmp(result, "pass") == 0)
		/* the copy pass is complete and checked: what cut-over prechecks read */
		log_event(ch, r->user, NULL, "user-done", 0, NULL);
	else if (r->after_pull && failed && result == NULL) {
		log_event(ch, r->user, NULL, "user-failed", 0, error);
		evlog("error", "user-failed", "user", r->user, "error", error, NULL);
	}
}

/* the migration log: one line per script, where it went */
static void sieve_log(struct run *r, json_t *rep, char *summary, size_t slen)
{
	size_t i;
	json_t *s;
	int failed = 0;

	const char *restored = json_string_value(json_object_get(rep, "restored_active"));
	if (restored != NULL) {
		log_event(r->ch, r->user, restored, "sieve-restored", 0, NULL);
		snprintf(summary, slen, "sieve: %s is the old server's active script again", restored);
		return;
	}
	const char *off = json_string_value(json_object_get(rep, "old_deactivated"));
	if (off != NULL)
		log_event(r->ch, r->user, off, "sieve-old-deactivated", 0, NULL);
	json_array_foreach(json_object_get(rep, "scripts"), i, s) {
		const char *name = json_string_value(json_object_get(s, "name"));
		const char *res = json_string_value(json_object_get(s, "result"));
		const char *err = json_string_value(json_object_get(s, "error"));
		char line[1200];
		snprintf(line, sizeof(line), "result=%s%s%s%s", res ? res : "?",
			 json_is_true(json_object_get(s, "active_on_old")) ? " active-on-old" : "",
			 err ? " error=" : "", err ? err : "");
		log_event(r->ch, r->user, name, "sieve-script", 0, line);
		failed += err != NULL;
	}
	snprintf(summary, slen, "sieve: %zu scripts, %d not compiled by the new server; active: %s"
		 " (ferryctl sieve %s --show)", json_array_size(json_object_get(rep, "scripts")), failed,
		 json_string_value(json_object_get(rep, "new_active"))
		 ? json_string_value(json_object_get(rep, "new_active")) : "none", r->user);
}

static void finish(struct run *r, json_t *rep, const char *error)
{
	int verify = strcmp(r->kind, "verify") == 0, sieve = strcmp(r->kind, "sieve") == 0;
	const char *result = NULL;
	char summary[1024] = "";
	char *json = NULL, *text = NULL;

	if (rep != NULL) {
		result = (verify ? ferry_verify_passed(rep)
			  : sieve ? ferry_sieve_passed(rep) : ferry_preflight_passed(rep)) ? "pass"
											   : "fail";
		json = json_dumps(rep, JSON_COMPACT);
		text = verify ? ferry_verify_text(rep) : sieve ? ferry_sieve_text(rep)
							       : ferry_preflight_text(rep);
		if (sieve)
			sieve_log(r, rep, summary, sizeof(summary));
		else if (verify && strcmp(result, "fail") == 0)
			verify_diffs(r, rep, summary, sizeof(summary));
		else if (!verify && strcmp(result, "fail") == 0)
			snprintf(summary, sizeof(summary), "preflight failed (ferryctl preflight %s)",
				 r->user);
		put_check(r, "done", result, summary, json, text);
		evlog(strcmp(result, "pass") == 0 ? "info" : "warning", r->kind, "user", r->user,
		      "result", result, NULL);
		log_event(r->ch, r->user, NULL, r->kind, 0,
			  strcmp(result, "pass") == 0 ? "result=pass" : summary);
	} else {
		put_check(r, "error", NULL, error, NULL, NULL);
		evlog("error", r->kind, "user", r->user, "result", "error", "error", error, NULL);
		log_event(r->ch, r->user, NULL, r->kind, 0, error);
	}
	if (verify)
		user_after(r, result, rep != NULL ? summary : error);
	free(json);
	free(text);
}

static void run_unlink(struct run *r)
{
	for (struct run **p = &r->ch->runs; *p != NULL; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			break;
		}
	}
}

static void run_free(struct run *r)
{
	if (r->names_req != NULL)
		doveadm_cancel(r->names_req);
	free(r->names);
	if (r->in != NULL)
		bufferevent_free(r->in);
	if (r->out != NULL)
		bufferevent_free(r->out);
	if (r->err != NULL)
		bufferevent_free(r->err);
	if (r->deadline != NULL)
		event_free(r->deadline);
	if (r->hold_ev != NULL)
		event_free(r->hold_ev);
	json_decref(r->held_rep);
	free(r);
}

/* last non-empty stderr line without the program name */
static void stderr_line(struct run *r, char *buf, size_t len)
{
	struct evbuffer *in = bufferevent_get_input(r->err);
	size_t n = evbuffer_get_length(in);
	char *t = malloc(n + 1), *line, *p;

	evbuffer_copyout(in, t, n);
	t[n] = '\0';
	while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r'))
		t[--n] = '\0';
	line = strrchr(t, '\n');
	line = line != NULL ? line + 1 : t;
	if (strncmp(line, "ferry-imapcheck: ", 17) == 0)
		line += 17;
	for (p = line; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = ' ';
	snprintf(buf, len, "%s", line);
	free(t);
}

static void run_end(struct run *r)
{
	struct checks *ch = r->ch;
	char error[1024] = "";
	int status = 0, code = -1;
	json_t *rep = NULL;

	while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status))
		code = WEXITSTATUS(status);
	if (r->timed_out)
		snprintf(error, sizeof(error), "no result within check_timeout (%d s)",
			 ch->cfg->check_timeout);
	else if (r->too_big)
		snprintf(error, sizeof(error), "report larger than %d bytes", MAX_REPORT);
	else if (code == 0 || code == 1) {
		struct evbuffer *out = bufferevent_get_input(r->out);
		size_t n = evbuffer_get_length(out);
		json_error_t jerr;
		rep = json_loadb((const char *)evbuffer_pullup(out, (ev_ssize_t)n), n, 0, &jerr);
		if (!json_is_object(rep)) {
			json_decref(rep);
			rep = NULL;
			snprintf(error, sizeof(error), "ferry-imapcheck wrote no JSON report: %s",
				 jerr.text);
		}
	} else {
		stderr_line(r, error, sizeof(error));
		if (error[0] == '\0')
			snprintf(error, sizeof(error), "ferry-imapcheck ended with status %d",
				 WIFSIGNALED(status) ? 128 + WTERMSIG(status) : code);
	}
	r->pid = 0;  /* reaped */
	conclude(r, rep, error);
	json_decref(rep);
}

/* A run that ended before its child did anything (the names could not be
   had, the child could not start, the deadline): no process to reap. */
static void run_end_early(struct run *r, const char *error)
{
	conclude(r, NULL, error);
}

/* finish()'s writes in one transaction: 0 written, 1 nothing written (the
   write lock held by another process, a store that cannot begin, e.g.
   PostgreSQL unreachable, or the transaction rolled back at COMMIT, e.g. a
   row locked elsewhere or the connection lost): try again. Ending the run
   on a rolled-back COMMIT left its user claimed with no run, never picked
   again; writing without a transaction when BEGIN failed could leave half
   of them. */
static int finish_tx(struct run *r, json_t *rep, const char *error)
{
	struct store *st = r->ch->st;

	st->busy = 0;
	if (st->begin(st) < 0) {
		if (!st->busy && r->hold_ev == NULL)
			evlog("error", "store-error", "user", r->user, "error", st->error(st), NULL);
		return 1;
	}
	finish(r, rep, error);
	if (st->commit(st) < 0) {
		if (!st->busy && r->hold_ev == NULL)
			evlog("error", "store-error", "user", r->user, "error", st->error(st), NULL);
		st->rollback(st);
		return 1;
	}
	return 0;
}

static void on_hold(evutil_socket_t fd, short what, void *ctx)
{
	struct run *r = ctx;

	(void)fd;
	(void)what;
	conclude(r, r->held_rep, r->held_error);
}

/* the run's result written (or held and tried again every HOLD_RETRY_MS
   while the database is locked: the run keeps its old-host slot and its
   place, so the same check is not queued twice), then the run ends */
static void conclude(struct run *r, json_t *rep, const char *error)
{
	struct checks *ch = r->ch;
	char host[256];

	if (finish_tx(r, rep, error) > 0) {
		struct timeval tv = { 0, HOLD_RETRY_MS * 1000 };
		if (r->deadline != NULL)
			event_del(r->deadline);
		if (r->hold_ev == NULL) {
			if ((r->hold_ev = evtimer_new(ch->base, on_hold, r)) == NULL)
				abort();
			clock_gettime(CLOCK_MONOTONIC, &r->hold_since);
			evlog("warning", "store-busy", "user", r->user, "held", "check-result",
			      "kind", r->kind, "error", ch->st->error(ch->st), NULL);
			r->held_rep = json_incref(rep);
			snprintf(r->held_error, sizeof(r->held_error), "%s",
				 error != NULL ? error : "");
		}
		evtimer_add(r->hold_ev, &tv);
		return;
	}
	if (r->hold_ev != NULL) {
		struct timespec now;
		char ms[32];

		clock_gettime(CLOCK_MONOTONIC, &now);
		snprintf(ms, sizeof(ms), "%lld", (long long)((now.tv_sec - r->hold_since.tv_sec) *
			1000 + (now.tv_nsec - r->hold_since.tv_nsec) / 1000000));
		evlog("info", "store-resumed", "user", r->user, "kind", r->kind, "waited_ms", ms,
		      NULL);
	}
	snprintf(host, sizeof(host), "%s", r->host);
	run_unlink(r);
	ch->nrunning--;
	run_free(r);
	ch->cb(host, ch->ctx);
}

/* ---- queue -------------------------------------------------------------- */

static struct run *find(struct checks *ch, const char *user, const char *kind)
{
	for (struct run *r = ch->runs; r != NULL; r = r->next)
		if (strcmp(r->user, user) == 0 && strcmp(r->kind, kind) == 0)
			return r;
	return NULL;
}

int checks_queue(struct checks *ch, const struct user_rec *u, const char *kind, int after_pull)
{
	struct run *r = find(ch, u->name, kind), **p;

	if (r != NULL) {
		r->after_pull |= after_pull;
		return 0;
	}
	r = calloc(1, sizeof(*r));
	r->ch = ch;
	snprintf(r->user, sizeof(r->user), "%s", u->name);
	snprintf(r->kind, sizeof(r->kind), "%s", kind);
	snprintf(r->host, sizeof(r->host), "%s", u->ep.host);
	r->after_pull = after_pull;
	r->requested_at = time(NULL);
	for (p = &ch->runs; *p != NULL; p = &(*p)->next)
		;
	*p = r;
	put_check(r, "queued", NULL, NULL, NULL, NULL);
	evlog("info", "check-queued", "user", r->user, "kind", kind, "after_pull",
	      after_pull ? "yes" : "no", NULL);
	return 0;
}

void checks_start_queued(struct checks *ch, checks_slot_take_cb *take, void *ctx)
{
	struct run *r = ch->runs, *next;

	for (; r != NULL; r = next) {
		char why[1024];
		next = r->next;
		if (r->started || r->hold)
			continue;
		/* the old-host slot of every job kind, from the one accounting */
		if (!take(r->host, ctx))
			continue;
		r->started = 1;
		if (run_start(r, why, sizeof(why)) < 0) {
			char host[256];

			snprintf(host, sizeof(host), "%s", r->host);
			finish(r, NULL, why);
			run_unlink(r);
			run_free(r);
			ch->cb(host, ch->ctx);  /* its slot back */
			continue;
		}
		ch->nrunning++;
		put_check(r, "running", NULL, NULL, NULL, NULL);
		evlog("info", "check-start", "user", r->user, "kind", r->kind, "host", r->host, NULL);
	}
}

int checks_holds(struct checks *ch, const char *user)
{
	for (struct run *r = ch->runs; r != NULL; r = r->next)
		if (r->after_pull && strcmp(r->user, user) == 0)
			return 1;
	return 0;
}

int checks_queue_held(struct checks *ch, const struct user_rec *u, const char *kind)
{
	if (find(ch, u->name, kind) != NULL)
		return 1; /* one at a time */
	if (checks_queue(ch, u, kind, 0) < 0)
		return -1;
	find(ch, u->name, kind)->hold = 1;
	return 0;
}

int checks_queue_sieve_restore(struct checks *ch, const struct user_rec *u, const char *script)
{
	if (find(ch, u->name, "sieve") != NULL)
		return 1;
	if (checks_queue(ch, u, "sieve", 0) < 0)
		return -1;
	snprintf(find(ch, u->name, "sieve")->restore, sizeof(((struct run *)0)->restore), "%s",
		 script);
	return 0;
}

void checks_release(struct checks *ch, const char *user, const char *kind, const char *map,
		    const char *error)
{
	struct run *r = find(ch, user, kind);

	if (r == NULL || !r->hold)
		return;
	if (error != NULL) {
		finish(r, NULL, error);
		run_unlink(r);
		run_free(r);
		return;
	}
	snprintf(r->map, sizeof(r->map), "%s", map);
	r->hold = 0;
}

int checks_running(const struct checks *ch)
{
	return ch->nrunning;
}

static void drop(struct run *r, const char *why)
{
	struct checks *ch = r->ch;

	put_check(r, "error", NULL, why, NULL, NULL);
	if (r->after_pull && userstate_release(ch->st, r->user) < 0)
		evlog("error", "store-error", "user", r->user, "error", ch->st->error(ch->st), NULL);
	run_unlink(r);
	run_free(r);
}

void checks_drop_queued(struct checks *ch)
{
	struct run *r = ch->runs, *next;

	for (; r != NULL; r = next) {
		next = r->next;
		if (!r->started)
			drop(r, "ferryd stopped before the run started");
	}
}

void checks_cancel_all(struct checks *ch)
{
	char host[256];

	while (ch->runs != NULL) {
		struct run *r = ch->runs;
		if (r->hold_ev != NULL && finish_tx(r, r->held_rep, r->held_error) == 0) {
			/* a held result: written if the lock is gone now */
			ch->nrunning--;
			snprintf(host, sizeof(host), "%s", r->host);
			run_unlink(r);
			run_free(r);
			ch->cb(host, ch->ctx);
			continue;
		}
		if (r->started) {
			if (r->pid > 0) {
				kill(r->pid, SIGKILL);
				while (waitpid(r->pid, NULL, 0) < 0 && errno == EINTR)
					;
			}
			ch->nrunning--;
			evlog("warning", "check-abandoned", "user", r->user, "kind", r->kind, NULL);
			snprintf(host, sizeof(host), "%s", r->host);
			drop(r, "ferryd stopped during the run");
			ch->cb(host, ch->ctx);  /* its old-host slot is free again */
			continue;
		}
		drop(r, "ferryd stopped during the run");
	}
}

/* the file's first line, or NULL if the setting is empty; -1 on error */
static int load_private(const char *path, char **out, char **err_r)
{
	*out = NULL;
	if (!set(path))
		return 0;
	return (*out = config_read_private(path, err_r)) != NULL ? 0 : -1;
}

int checks_load_secrets(struct checks *ch, const struct ferry_config *cfg, char **err_r)
{
	char *key, *old_pw = NULL, *new_pw = NULL;

	if (load_private(cfg->secret_key_file, &key, err_r) < 0 ||
	    load_private(cfg->old_master_password_file, &old_pw, err_r) < 0 ||
	    load_private(cfg->new_master_password_file, &new_pw, err_r) < 0) {
		wipe(&key);
		wipe(&old_pw);
		return -1;
	}
	wipe(&ch->secret_key);
	wipe(&ch->old_master_pw);
	wipe(&ch->new_master_pw);
	ch->secret_key = key;
	ch->old_master_pw = old_pw;
	ch->new_master_pw = new_pw;
	return 0;
}

void checks_free(struct checks *ch)
{
	if (ch == NULL)
		return;
	checks_cancel_all(ch);
	wipe(&ch->secret_key);
	wipe(&ch->old_master_pw);
	wipe(&ch->new_master_pw);
	free(ch);
}

/* ---- admin API ---------------------------------------------------------- */

static int api_error(json_t **out, int code, const char *fmt, const char *a)
{
	char msg[1200];

	snprintf(msg, sizeof(msg), fmt, a);
	*out = json_pack("{s:s}", "error", msg);
	return code;
}

static const char *arg_str(json_t *args, const char *key)
{
	const char *v = json_string_value(json_object_get(args, key));
	return v != NULL && *v != '\0' ? v : NULL;
}

static int api_verify(struct checks *ch, json_t *args, json_t **out)
{
	const char *name = arg_str(args, "user");
	struct user_rec u;
	int rc;

	if (name == NULL)
		return api_error(out, 400, "user is required%s", "");
	if ((rc = ch->st->user_get(ch->st, name, &u)) != 0)
		return rc == STORE_NOTFOUND ? api_error(out, 404, "unknown user \"%.200s\"", name)
					    : api_error(out, 500, "state database error: %s",
							ch->st->error(ch->st));
	if (find(ch, name, "verify") == NULL) {
		if (u.running)
			return api_error(out, 409, "a pull of %.200s is in flight; verify it when"
					 " it ends", name);
		if (!checks_can_verify(ch, &u))
			return api_error(out, 400, "cannot verify %.200s: no credentials for both"
					 " servers (old_master_user/new_master_user, or a CSV"
					 " password)", name);
		checks_queue(ch, &u, "verify", 0);
	}
	*out = json_pack("{s:s, s:[s]}", "kind", "verify", "users", name);
	return 202;
}

struct collect {
	struct user_rec *v;
	size_t n;
};

static int collect_user(const struct user_rec *u, void *ctx)
{
	struct collect *c = ctx;

	c->v = realloc(c->v, (c->n + 1) * sizeof(*c->v));
	c->v[c->n++] = *u;
	return 0;
}

static int api_preflight(struct checks *ch, json_t *args, json_t **out)
{
	const char *name = arg_str(args, "user"), *wave = arg_str(args, "wave");
	int identity_login = json_is_true(json_object_get(args, "identity_login"));
	struct collect c = { NULL, 0 };
	struct wave_rec w;
	json_t *users;
	int rc;

	if ((name == NULL) == (wave == NULL))
		return api_error(out, 400, "give user or wave%s", "");
	if (name != NULL) {
		struct user_rec u;
		if ((rc = ch->st->user_get(ch->st, name, &u)) != 0)
			return rc == STORE_NOTFOUND
				? api_error(out, 404, "unknown user \"%.200s\"", name)
				: api_error(out, 500, "state database error: %s", ch->st->error(ch->st));
		collect_user(&u, &c);
	} else {
		if ((rc = ch->st->wave_get(ch->st, wave, &w)) != 0)
			return rc == STORE_NOTFOUND
				? api_error(out, 404, "unknown wave \"%.200s\"", wave)
				: api_error(out, 500, "state database error: %s", ch->st->error(ch->st));
		if (ch->st->user_each(ch->st, wave, collect_user, &c) < 0) {
			free(c.v);
			return api_error(out, 500, "state database error: %s", ch->st->error(ch->st));
		}
	}
	for (size_t i = 0; i < c.n; i++) {
		if (old_how(ch, &c.v[i], has_password(ch, c.v[i].name)) == HOW_NONE) {
			rc = api_error(out, 400, "no credentials for the old server of %.200s"
				       " (old_master_user, or a CSV password); nothing started",
				       c.v[i].name);
			free(c.v);
			return rc;
		}
	}
	users = json_array();
	for (size_t i = 0; i < c.n; i++) {
		struct run *r;
		checks_queue(ch, &c.v[i], "preflight", 0);
		if (identity_login && (r = find(ch, c.v[i].name, "preflight")) != NULL)
			r->identity_login = 1;
		json_array_append_new(users, json_string(c.v[i].name));
	}
	free(c.v);
	*out = json_pack("{s:s, s:o}", "kind", "preflight", "users", users);
	return 202;
}

static int api_check(struct checks *ch, json_t *args, json_t **out)
{
	const char *name = arg_str(args, "user"), *kind = arg_str(args, "kind");
	struct check_rec c;
	json_t *rep = NULL;
	int rc;

	if (kind == NULL)
		kind = "verify";
	if (name == NULL || (strcmp(kind, "verify") != 0 && strcmp(kind, "preflight") != 0 &&
			     strcmp(kind, "sieve") != 0))
		return api_error(out, 400, "user and kind (verify, preflight or sieve) are"
				 " required%s", "");
	if ((rc = ch->st->check_get(ch->st, name, kind, &c, 1)) != 0)
		return rc == STORE_NOTFOUND
			? api_error(out, 404, "no stored report for \"%.200s\"", name)
			: api_error(out, 500, "state database error: %s", ch->st->error(ch->st));
	if (c.report_json != NULL)
		rep = json_loads(c.report_json, 0, NULL);
	*out = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:s, s:o, s:s}", "user", name,
			 "kind", kind, "state", c.state, "result", c.result, "after_pull",
			 c.after_pull, "requested_at", (json_int_t)c.requested_at, "finished_at",
			 (json_int_t)c.finished_at, "error", c.error, "report",
			 rep != NULL ? rep : json_null(), "text",
			 c.report_text != NULL ? c.report_text : "");
	check_rec_free(&c);
	return 200;
}

static int api_endpoint(struct checks *ch, json_t *args, json_t **out)
{
	const char *ep = arg_str(args, "endpoint");
	json_t *pv = json_object_get(args, "old_prefix");
	const char *prefix = json_string_value(pv);
	char host[256];
	const char *colon;
	int port = 143, rc;

	if (ep == NULL || prefix == NULL || strlen(prefix) >= sizeof(((struct endpoint_rec *)0)->old_prefix))
		return api_error(out, 400, "endpoint (HOST[:PORT]) and old_prefix (up to 63"
				 " characters, \"\" for none) are required%s", "");
	colon = strrchr(ep, ':');
	if (colon != NULL) {
		char *end;
		long p = strtol(colon + 1, &end, 10);
		if (*end != '\0' || p < 1 || p > 65535 || colon == ep)
			return api_error(out, 400, "endpoint: \"%.200s\" is not HOST[:PORT]", ep);
		port = (int)p;
		snprintf(host, sizeof(host), "%.*s", (int)(colon - ep), ep);
	} else
		snprintf(host, sizeof(host), "%s", ep);
	rc = ch->st->endpoint_prefix_set(ch->st, host, port, prefix);
	if (rc == STORE_NOTFOUND)
		return api_error(out, 404, "no user has the endpoint %.200s", ep);
	if (rc < 0)
		return api_error(out, 500, "state database error: %s", ch->st->error(ch->st));
	evlog("info", "endpoint-config", "endpoint", ep, "old_prefix", prefix, NULL);
	*out = json_pack("{s:s, s:s}", "endpoint", ep, "old_prefix", prefix);
	return 200;
}

int checks_api(struct checks *ch, const char *path, json_t *args, json_t **out)
{
	if (strcmp(path, "POST /v1/verify") == 0)
		return api_verify(ch, args, out);
	if (strcmp(path, "POST /v1/preflight") == 0)
		return api_preflight(ch, args, out);
	if (strcmp(path, "GET /v1/check") == 0)
		return api_check(ch, args, out);
	if (strcmp(path, "POST /v1/endpoint") == 0)
		return api_endpoint(ch, args, out);
	return api_error(out, 404, "unknown endpoint %.200s", path);
}
