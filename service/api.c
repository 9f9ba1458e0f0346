/* Admin API (see api.h, docs/ferryd.md). Every answer is JSON; errors are
   {"error": "human message"}. A request body above max_body is refused by
   evhttp itself with 413 before it is read. */
#include "api.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "checks.h"
#include "dns.h"
#include "sieve_step.h"
#include "tally.h"
#include "csv.h"
#include "cutover.h"
#include "evlog.h"
#include "metrics.h"
#include "dashboard.h"
#include "report.h"
#include "scheduler.h"
#include "secret.h"
#include "userstate.h"

struct api {
	struct event_base *base;
	struct evhttp *http;
	struct store *st;
	unsigned char token_hash[SHA256_DIGEST_LENGTH];
	unsigned char viewer_hash[SHA256_DIGEST_LENGTH]; /* GET only (dashboard) */
	int has_viewer;
	char *secret;          /* key material for CSV passwords, or NULL */
	api_kick_cb *kick;
	void *ctx;
	struct cutover *cutover; /* cut-over, rollback and routing endpoints */
	struct checks *checks;   /* preflight and verification */
	struct dns *dns;         /* DNS readiness and DNSBL checks */
	struct sieve_step *sieve; /* Sieve scripts */
	struct tally *tally;     /* the totals and pages of /v1/status */
	struct start_job *starts; /* starts being carried out (h_start) */
};

struct call {
	struct api *a;
	struct evhttp_request *req;
	json_t *body;           /* POST: object */
	struct evkeyvalq query; /* GET parameters */
};

typedef void handler_fn(struct call *c);

/* ---- replies ------------------------------------------------------------ */

static void reply(struct call *c, int code, json_t *obj)
{
	struct store *st = c->a->st;

	if (code == 500 && st->busy) {
		/* a store call of this request found the write lock held by
		   another process (st->busy is cleared before each request): the
		   request was not carried out, or only partly (every admin
		   request may be sent again); ferryctl sends it again
		   (docs/ferryd.md, "A locked database") */
		evlog("warning", "store-busy", "path",
		      evhttp_uri_get_path(evhttp_request_get_evhttp_uri(c->req)),
		      "error", st->error(st), NULL);
		json_decref(obj);
		evhttp_add_header(evhttp_request_get_output_headers(c->req), "Retry-After", "1");
		code = 503;
		obj = json_pack("{s:s, s:b}", "error", "the state database is locked by another "
				"process; send the request again", "busy", 1);
	}

	char *text = json_dumps(obj, JSON_COMPACT);
	struct evbuffer *out = evbuffer_new();

	evbuffer_add_printf(out, "%s\n", text != NULL ? text : "{}");
	evhttp_add_header(evhttp_request_get_output_headers(c->req), "Content-Type",
			  "application/json");
	evhttp_send_reply(c->req, code, NULL, out);
	evbuffer_free(out);
	free(text);
	json_decref(obj);
}

static void reply_error(struct call *c, int code, const char *fmt, ...)
{
	va_list ap;
	char msg[1200];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	reply(c, code, json_pack("{s:s}", "error", msg));
}

static void reply_store_error(struct call *c)
{
	struct store *st = c->a->st;

	if (!st->busy)
		evlog("error", "store-error", "error", st->error(st), NULL);
	reply_error(c, 500, "state database error: %s", st->error(st));
}

/* ---- helpers ------------------------------------------------------------ */

static const char *body_str(struct call *c, const char *key)
{
	return json_string_value(json_object_get(c->body, key));
}

static const char *query_str(struct call *c, const char *key)
{
	const char *v = evhttp_find_header(&c->query, key);
	return v != NULL && *v != '\0' ? v : NULL;
}

long long api_parse_time(const char *s, long long now)
{
	struct tm tm;
	char *end;
	long long n;
	const char *p;

	if (s == NULL || *s == '\0')
		return -1;
	errno = 0;
	n = strtoll(s, &end, 10);
	/* relative times are bounded (10 years) so n * unit cannot overflow */
	if (end != s && errno == 0 && n >= 0) {
		if (*end == '\0')
			return n;
		if (end[1] == '\0' && n <= 10LL * 366 * 86400) {
			switch (*end) {
			case 's': return now - n;
			case 'm': return now - n * 60;
			case 'h': return now - n * 3600;
			case 'd': return now - n * 86400;
			}
		}
	}
	memset(&tm, 0, sizeof(tm));
	p = strptime(s, "%Y-%m-%d", &tm);
	if (p == NULL)
		return -1;
	if (*p == 'T' || *p == ' ') {
		const char *q = strptime(p + 1, "%H:%M:%S", &tm);
		if (q == NULL)
			q = strptime(p + 1, "%H:%M", &tm);
		p = q;
	}
	if (p == NULL || *p != '\0')
		return -1;
	tm.tm_isdst = -1;
	return (long long)mktime(&tm);
}

static json_t *user_brief(const struct user_rec *u)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:b, s:i, s:s}",
			 "name", u->name, "wave", u->wave, "state", user_state_name(u->state),
			 "host", u->ep.host, "new_login", u->new_login, "new_host", u->new_host,
			 "paused", u->paused,
			 "running", u->running, "attempts", u->attempts, "error", u->last_error);
}

/* ---- import ------------------------------------------------------------- */

static int ensure_wave(struct store *st, const char *name, json_t *created)
{
	struct wave_rec w;
	int ret;

	if (*name == '\0')
		return 0;
	if ((ret = st->wave_get(st, name, &w)) != STORE_NOTFOUND)
		return ret;
	memset(&w, 0, sizeof(w));
	snprintf(w.name, sizeof(w.name), "%s", name);
	w.win_start = w.win_end = -1;
	if (st->wave_add(st, &w) < 0)
		return -1;
	json_array_append_new(created, json_string(name));
	return 0;
}

static void h_import(struct call *c)
{
	struct store *st = c->a->st;
	const char *text = body_str(c, "csv");
	struct csv_users users;
	char *err = NULL;
	json_t *created;
	struct user_rec u, existing;

	if (text == NULL) {
		reply_error(c, 400, "import needs {\"csv\": \"...\"}");
		return;
	}
	if (csv_parse_users(text, strlen(text), &users, &err) < 0) {
		reply_error(c, 400, "%s; nothing imported", err != NULL ? err : "invalid CSV");
		free(err);
		return;
	}
	if (st->begin(st) < 0) {
		csv_users_free(&users);
		reply_store_error(c);
		return;
	}
	created = json_array();
	for (size_t i = 0; i < users.count; i++) {
		struct csv_user *r = &users.rows[i];
		struct endpoint_rec ep;
		int ret;

		if ((ret = st->user_get(st, r->user, &existing)) != STORE_NOTFOUND) {
			st->rollback(st);
			if (ret == 0)
				reply_error(c, 409, "line %d: user \"%s\" already exists; nothing imported",
					    r->line, r->user);
			else
				reply_store_error(c);
			goto out;
		}
		if (r->password != NULL && c->a->secret == NULL) {
			st->rollback(st);
			reply_error(c, 400, "line %d: a password needs secret_key_file in ferryd's "
				    "configuration (passwords are stored encrypted); nothing imported",
				    r->line);
			goto out;
		}
		memset(&ep, 0, sizeof(ep));
		snprintf(ep.host, sizeof(ep.host), "%s", r->host);
		ep.port = r->port;
		snprintf(ep.tls, sizeof(ep.tls), "%s", r->tls);
		snprintf(ep.auth, sizeof(ep.auth), "%s", r->auth);
		memset(&u, 0, sizeof(u));
		snprintf(u.name, sizeof(u.name), "%s", r->user);
		snprintf(u.old_login, sizeof(u.old_login), "%s", r->old_login);
		snprintf(u.new_login, sizeof(u.new_login), "%s", r->new_login);
		snprintf(u.wave, sizeof(u.wave), "%s", r->wave);
		snprintf(u.new_host, sizeof(u.new_host), "%s", r->new_host);
		u.state = US_PENDING;
		if (r->password != NULL)
			u.password_enc = secret_encrypt(c->a->secret, r->password);
		ret = ensure_wave(st, r->wave, created);
		if (ret == 0)
			ret = st->endpoint_ensure(st, &ep);
		u.endpoint_id = ep.id;
		if (ret == 0)
			ret = st->user_add(st, &u);
		free(u.password_enc);
		if (ret < 0) {
			st->rollback(st);
			reply_store_error(c);
			goto out;
		}
	}
	{
		struct log_rec l;
		memset(&l, 0, sizeof(l));
		l.time = time(NULL);
		snprintf(l.event, sizeof(l.event), "import");
		l.messages = (int64_t)users.count;
		if (st->log_add(st, &l) < 0 || st->commit(st) < 0) {
			st->rollback(st);
			reply_store_error(c);
			goto out;
		}
	}
	for (size_t i = 0; i < users.count && c->a->tally != NULL; i++)
		tally_touch(c->a->tally, users.rows[i].user);
	{
		char n[32];
		snprintf(n, sizeof(n), "%zu", users.count);
		evlog("info", "import", "users", n, NULL);
	}
	reply(c, 200, json_pack("{s:I, s:O}", "imported", (json_int_t)users.count,
				"waves_created", created));
out:
	json_decref(created);
	csv_users_free(&users);
}

/* ---- waves -------------------------------------------------------------- */

static void h_wave_create(struct call *c)
{
	struct store *st = c->a->st;
	const char *name = body_str(c, "name"), *after = body_str(c, "start_after"),
		*window = body_str(c, "window");
	struct wave_rec w;
	int ret;

	if (name == NULL || !csv_valid_wave(name)) {
		reply_error(c, 400, "wave name: letters, digits, '.', '_' or '-' (up to 127)");
		return;
	}
	memset(&w, 0, sizeof(w));
	snprintf(w.name, sizeof(w.name), "%s", name);
	w.win_start = w.win_end = -1;
	if (after != NULL && (w.start_after = api_parse_time(after, time(NULL))) < 0) {
		reply_error(c, 400, "start_after: \"%.64s\" is not a time (epoch seconds, "
			    "YYYY-MM-DD or YYYY-MM-DDTHH:MM)", after);
		return;
	}
	if (window != NULL && sched_parse_window(window, &w.win_start, &w.win_end) < 0) {
		reply_error(c, 400, "window: \"%.64s\" is not HH:MM-HH:MM", window);
		return;
	}
	if ((ret = st->wave_get(st, name, &(struct wave_rec){ 0 })) == 0) {
		reply_error(c, 409, "wave \"%s\" already exists", name);
		return;
	}
	if (ret < 0 || st->wave_add(st, &w) < 0) {
		reply_store_error(c);
		return;
	}
	evlog("info", "wave-created", "wave", name, "window", window, "start_after", after, NULL);
	reply(c, 200, json_pack("{s:s}", "created", name));
}

static void h_wave_add(struct call *c)
{
	struct store *st = c->a->st;
	const char *wave = body_str(c, "wave");
	json_t *list = json_object_get(c->body, "users"), *v;
	struct wave_rec w;
	size_t i;
	int ret;

	if (wave == NULL || !json_is_array(list) || json_array_size(list) == 0) {
		reply_error(c, 400, "wave add needs {\"wave\": NAME, \"users\": [USER...]}");
		return;
	}
	if ((ret = st->wave_get(st, wave, &w)) != 0) {
		if (ret == STORE_NOTFOUND)
			reply_error(c, 404, "unknown wave \"%s\"", wave);
		else
			reply_store_error(c);
		return;
	}
	if (st->begin(st) < 0) {
		reply_store_error(c);
		return;
	}
	json_array_foreach(list, i, v) {
		const char *name = json_string_value(v);
		if (name == NULL || (ret = userstate_set_wave(st, name, wave)) == STORE_NOTFOUND) {
			st->rollback(st);
			reply_error(c, 404, "unknown user \"%s\"; nothing changed",
				    name != NULL ? name : "?");
			return;
		}
		if (ret < 0) {
			st->rollback(st);
			reply_store_error(c);
			return;
		}
	}
	if (st->commit(st) < 0) {
		st->rollback(st);
		reply_store_error(c);
		return;
	}
	reply(c, 200, json_pack("{s:s, s:I}", "wave", wave, "added", (json_int_t)json_array_size(list)));
}

/* ---- start / pause / resume / sync ---------------------------------------- */

struct bulk {
	struct store *st;
	const char *action;
	int changed;
	int failed;
};

static int pause_one(const struct user_rec *cu, void *ctx)
{
	struct bulk *b = ctx;
	int pause = strcmp(b->action, "pause") == 0;

	if (cu->paused == pause)
		return 0;
	if (userstate_set_paused(b->st, cu->name, pause) < 0)
		return -1;
	b->changed++;
	return 0;
}

/* the wave (404 if unknown) or NULL for all; -1 = replied */
static int get_wave_arg(struct call *c, const char **wave_r, struct wave_rec *w)
{
	int ret;

	*wave_r = body_str(c, "wave");
	if (*wave_r == NULL)
		return 0;
	if ((ret = c->a->st->wave_get(c->a->st, *wave_r, w)) == 0)
		return 0;
	if (ret == STORE_NOTFOUND)
		reply_error(c, 404, "unknown wave \"%s\"", *wave_r);
	else
		reply_store_error(c);
	return -1;
}

/* A start is carried out in slices from the event loop (docs/ferryd.md,
   "Event loop"): a 100,000-user wave is 100,000 compare-and-set
   transitions, seconds of CPU that would otherwise hold every other
   request. The users are taken from the totals in memory (tally.c, once
   the changes it has not read yet are read), wave by wave in creation
   order (the scheduler may pick between two slices), each slice is one
   transaction of at most START_SLICE_MS, and the answer is sent when the
   last slice is written. Each transition decides on the row as it is then
   (another request between two slices is no problem); a slice that fails
   is rolled back and the request answered 500/503 (a start may be sent
   again: the users already started are left as they are). */
#define START_SLICE_MS 5
#define START_REFRESH 64  /* tally changes read per turn before collecting */

struct start_job {
	struct api *a;
	struct evhttp_request *req;
	int64_t wave_id;     /* -1: every user */
	char wave[128];      /* "" = every user */
	char **names;
	size_t n, cap, next;
	int collected;
	int changed;
	struct event *ev;
	struct start_job *next_job;
};

static int start_collect(const char *user, void *ctx)
{
	struct start_job *j = ctx;

	if (j->n == j->cap) {
		j->cap = j->cap ? j->cap * 2 : 1024;
		if ((j->names = realloc(j->names, j->cap * sizeof(*j->names))) == NULL)
			abort();
	}
	if ((j->names[j->n++] = strdup(user)) == NULL)
		abort();
	return 0;
}

static int start_collect_rec(const struct user_rec *u, void *ctx)
{
	return u->state == US_PENDING || u->state == US_FAILED ? start_collect(u->name, ctx) : 0;
}

static void start_collect_wave(struct start_job *j, struct tally *t, int64_t wave_id)
{
	tally_page(t, wave_id, US_PENDING, 0, INT32_MAX, start_collect, j);
	tally_page(t, wave_id, US_FAILED, 0, INT32_MAX, start_collect, j);
}

struct wave_ids {
	int64_t *v;
	size_t n;
};

static int start_wave_id(const struct wave_rec *w, void *ctx)
{
	struct wave_ids *ids = ctx;

	if ((ids->v = realloc(ids->v, (ids->n + 1) * sizeof(*ids->v))) == NULL)
		abort();
	ids->v[ids->n++] = w->id;
	return 0;
}

static void start_job_free(struct start_job *j)
{
	for (struct start_job **p = &j->a->starts; *p != NULL; p = &(*p)->next_job)
		if (*p == j) {
			*p = j->next_job;
			break;
		}
	for (size_t i = 0; i < j->n; i++)
		free(j->names[i]);
	free(j->names);
	event_free(j->ev);
	free(j);
}

static long long ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void start_slice(evutil_socket_t fd, short what, void *ctx)
{
	struct start_job *j = ctx;
	struct store *st = j->a->st;
	struct call c = { j->a, j->req, NULL, { 0 } };
	struct timeval now = { 0, 0 };
	struct timespec t0;
	int ret = 0;

	(void)fd;
	(void)what;
	TAILQ_INIT(&c.query);
	st->busy = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (!j->collected) {
		/* the totals' records say who is pending or failed once they
		   have read every change (an import just before, a wave add) */
		struct tally *t = j->a->tally;
		if (t != NULL && tally_pending(t) > 0) {
			/* at most START_REFRESH a turn; the last ones now, so
			   that changes coming meanwhile cannot keep it waiting */
			int more = tally_pending(t) > START_REFRESH;
			if (tally_refresh(t, more ? START_REFRESH : 0) < 0) {
				reply_store_error(&c);
				start_job_free(j);
				return;
			}
			if (more) {
				event_add(j->ev, &now);
				return;
			}
		}
		if (t != NULL && j->wave_id >= 0)
			start_collect_wave(j, t, j->wave_id);
		else if (t != NULL) {
			/* every wave: in creation order (then users without one),
			   so that a pick between two slices keeps the waves' order */
			struct wave_ids ids = { NULL, 0 };
			if (st->wave_each(st, start_wave_id, &ids) < 0) {
				free(ids.v);
				reply_store_error(&c);
				start_job_free(j);
				return;
			}
			for (size_t i = 0; i < ids.n; i++)
				start_collect_wave(j, t, ids.v[i]);
			start_collect_wave(j, t, 0);
			free(ids.v);
		} else if (st->user_each(st, j->wave[0] ? j->wave : NULL, start_collect_rec, j) < 0) {
			reply_store_error(&c);
			start_job_free(j);
			return;
		}
		j->collected = 1;
	}
	if (j->next < j->n) {
		if (st->begin(st) < 0)
			ret = -1;
		while (ret == 0 && j->next < j->n) {
			int r = userstate_start(st, j->names[j->next]);
			if (r < 0 && r != STORE_NOTFOUND) {  /* NOTFOUND: gone meanwhile */
				ret = -1;
				break;
			}
			j->changed += r > 0;
			j->next++;
			if (ms_since(&t0) >= START_SLICE_MS)
				break;
		}
		if (ret == 0 && st->commit(st) < 0)
			ret = -1;
		if (ret < 0) {
			st->rollback(st);
			reply_store_error(&c);
			start_job_free(j);
			return;
		}
		j->a->kick(j->a->ctx);
	}
	if (j->next < j->n) {
		event_add(j->ev, &now);  /* after the events that came meanwhile */
		return;
	}
	evlog("info", "start", "wave", j->wave[0] ? j->wave : NULL, NULL);
	reply(&c, 200, json_pack("{s:i}", "started", j->changed));
	start_job_free(j);
}

static void h_start(struct call *c)
{
	struct start_job *j;
	struct wave_rec w;
	const char *wave;

	if (get_wave_arg(c, &wave, &w) < 0)
		return;
	/* with several ferryd, an import through another one a moment ago
	   reaches the totals only at this one's next tick: poll it now */
	if (userstate_poll_peers(c->a->st) < 0) {
		reply_store_error(c);
		return;
	}
	if ((j = calloc(1, sizeof(*j))) == NULL)
		abort();
	j->a = c->a;
	j->req = c->req;
	j->wave_id = wave != NULL ? w.id : -1;
	snprintf(j->wave, sizeof(j->wave), "%s", wave != NULL ? wave : "");
	if ((j->ev = evtimer_new(c->a->base, start_slice, j)) == NULL)
		abort();
	/* the lowest priority (ferryd.c): a request that arrived during a
	   slice is answered before the next one */
	event_priority_set(j->ev, 2);
	j->next_job = c->a->starts;
	c->a->starts = j;
	start_slice(-1, 0, j);
}

static void pause_resume(struct call *c, const char *action)
{
	struct store *st = c->a->st;
	int pause = strcmp(action, "pause") == 0;
	const char *user = body_str(c, "user"), *wave;
	struct wave_rec w;
	int ret;

	if (user != NULL) {
		if ((ret = userstate_set_paused(st, user, pause)) != 0) {
			if (ret == STORE_NOTFOUND)
				reply_error(c, 404, "unknown user \"%s\"", user);
			else
				reply_store_error(c);
			return;
		}
		evlog("info", action, "user", user, NULL);
		reply(c, 200, json_pack("{s:s, s:s}", action, "user", "user", user));
	} else {
		if (get_wave_arg(c, &wave, &w) < 0)
			return;
		if (wave != NULL) {
			w.paused = pause;
			if (st->wave_update(st, &w) < 0) {
				reply_store_error(c);
				return;
			}
			if (!pause) {  /* resume a wave: its paused users too */
				struct bulk b = { st, action, 0, 0 };
				st->user_each(st, wave, pause_one, &b);
			}
			evlog("info", action, "wave", wave, NULL);
			reply(c, 200, json_pack("{s:s, s:s}", action, "wave", "wave", wave));
		} else {
			if (st->setting_set(st, "paused", pause ? "1" : "0") < 0) {
				reply_store_error(c);
				return;
			}
			evlog("info", action, "scope", "all", NULL);
			reply(c, 200, json_pack("{s:s}", action, "all"));
		}
	}
	if (!pause)
		c->a->kick(c->a->ctx);
}

static void h_pause(struct call *c)
{
	pause_resume(c, "pause");
}

static void h_resume(struct call *c)
{
	pause_resume(c, "resume");
}

static void h_sync(struct call *c)
{
	struct store *st = c->a->st;
	const char *user = body_str(c, "user"), *reason = body_str(c, "reason");
	int ret, running = 0, login = reason != NULL && strcmp(reason, "login") == 0;

	if (user == NULL) {
		reply_error(c, 400, "sync needs {\"user\": USER}");
		return;
	}
	if (reason != NULL && !login) {
		reply_error(c, 400, "sync: unknown reason \"%s\" (want \"login\")", reason);
		return;
	}
	if ((ret = userstate_request_sync(st, user, login, &running)) != 0) {
		if (ret == STORE_NOTFOUND)
			reply_error(c, 404, "unknown user \"%s\"", user);
		else
			reply_store_error(c);
		return;
	}
	/* running: a job holds the user; the sync stays queued behind it */
	evlog("info", login ? "sync-login" : "sync-now", "user", user, "queued_behind_job",
	      running ? "yes" : "no", NULL);
	c->a->kick(c->a->ctx);
	reply(c, 200, json_pack("{s:s, s:b, s:b}", "sync", user, "running", running,
				"queued", running));
}

/* ---- status ------------------------------------------------------------- */

struct status_ctx {
	struct store *st;
	json_t *users, *waves_stats;
	int64_t old_total, local_total;
	int64_t states[US_COUNT], paused, running;
};

static int folder_json(const struct folder_rec *f, void *ctx)
{
	json_t **arr = ctx;

	json_array_append_new(arr[0], json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}",
		"name", f->name, "state", f->state, "old_messages", (json_int_t)f->old_messages,
		"messages", (json_int_t)f->messages, "copied", (json_int_t)f->copied,
		"renumbered", (json_int_t)f->renumbered));
	return 0;
}

/* one user of the page, with its folders and last verification */
static int status_user(const struct user_rec *u, void *ctx)
{
	struct status_ctx *s = ctx;
	json_t *j, *folders = json_array();
	int64_t old = 0, local = 0;
	size_t i;
	json_t *f;

	if (s->st->folder_each(s->st, u->name, folder_json, &folders) < 0) {
		json_decref(folders);
		return -1;
	}
	json_array_foreach(folders, i, f) {
		int64_t o = json_integer_value(json_object_get(f, "old_messages"));
		int64_t m = json_integer_value(json_object_get(f, "messages"));
		old += o > 0 ? o : 0;
		local += m > 0 ? m : 0;
	}
	j = user_brief(u);
	json_object_set_new(j, "old_messages", json_integer(old));
	json_object_set_new(j, "messages", json_integer(local));
	json_object_set_new(j, "next_attempt", json_integer(u->next_attempt));
	json_object_set_new(j, "started_at", json_integer(u->started_at));
	json_object_set_new(j, "finished_at", json_integer(u->finished_at));
	json_object_set_new(j, "sync_now", json_boolean(u->sync_seq > 0));
	json_object_set_new(j, "login_at", json_integer(u->login_at));
	json_object_set_new(j, "folders", folders);
	{
		struct check_rec cr;
		if (s->st->check_get(s->st, u->name, "verify", &cr, 0) == 0)
			json_object_set_new(j, "verify", json_pack("{s:s, s:s, s:I, s:s}", "state",
				cr.state, "result", cr.result, "finished_at",
				(json_int_t)cr.finished_at, "error", cr.error));
		else
			json_object_set_new(j, "verify", json_null());
	}
	json_array_append_new(s->users, j);
	return 0;
}

/* the totals: one row per wave and state, whatever the number of users */
static int status_count(const struct tally_count *n, void *ctx)
{
	struct status_ctx *s = ctx;
	char id[32];
	json_t *ws;

	s->old_total += n->old_messages;
	s->local_total += n->messages;
	s->states[n->state] += n->users;
	s->paused += n->paused;
	s->running += n->running;
	snprintf(id, sizeof(id), "%lld", (long long)n->wave_id);
	ws = json_object_get(s->waves_stats, id);
	if (ws != NULL) {
		json_t *st = json_object_get(ws, "states");
		const char *name = user_state_name(n->state);
		json_object_set_new(st, name, json_integer(
			json_integer_value(json_object_get(st, name)) + n->users));
		json_object_set_new(ws, "users", json_integer(
			json_integer_value(json_object_get(ws, "users")) + n->users));
		json_object_set_new(ws, "old_messages", json_integer(
			json_integer_value(json_object_get(ws, "old_messages")) + n->old_messages));
		json_object_set_new(ws, "messages", json_integer(
			json_integer_value(json_object_get(ws, "messages")) + n->messages));
	}
	return 0;
}

struct wave_list {
	json_t *arr, *by_id;  /* keyed by the wave id */
	const char *only;
	struct store *st;
};

static int wave_json(const struct wave_rec *w, void *ctx)
{
	struct wave_list *wl = ctx;
	char window[32] = "";
	json_t *j;

	if (wl->only != NULL && strcmp(wl->only, w->name) != 0)
		return 0;
	if (w->win_start >= 0)
		snprintf(window, sizeof(window), "%02d:%02d-%02d:%02d", w->win_start / 60,
			 w->win_start % 60, w->win_end / 60, w->win_end % 60);
	j = json_pack("{s:s, s:I, s:s, s:b, s:i, s:{}, s:i, s:i}", "name", w->name,
		      "start_after", (json_int_t)w->start_after, "window", window,
		      "paused", w->paused, "users", 0, "states", "old_messages", 0,
		      "messages", 0);
	{
		/* the latest cut-over or rollback, for the dashboard */
		struct cutover_rec cr;
		if (wl->st != NULL && wl->st->cutover_get(wl->st, w->name, &cr) == 0)
			json_object_set_new(j, "cutover", json_pack("{s:s, s:s, s:I}",
				"kind", cr.kind, "state", cr.state, "at", (json_int_t)cr.at));
		else
			json_object_set_new(j, "cutover", json_null());
	}
	json_array_append_new(wl->arr, j);
	{
		char id[32];
		snprintf(id, sizeof(id), "%lld", (long long)w->id);
		json_object_set(wl->by_id, id, j);
	}
	return 0;
}

#define STATUS_PAGE 100
#define STATUS_PAGE_MAX 1000

/* a user of the page (the tally gives names in id order) */
static int page_user(const char *name, void *ctx)
{
	struct status_ctx *s = ctx;
	struct user_rec u;

	if (s->st->user_get(s->st, name, &u) != 0)
		return -1;
	return status_user(&u, s);
}

static void h_status(struct call *c)
{
	struct store *st = c->a->st;
	const char *wave = query_str(c, "wave"), *user = query_str(c, "user");
	const char *state = query_str(c, "state"), *limit_s = query_str(c, "limit");
	const char *offset_s = query_str(c, "offset");
	struct status_ctx s;
	struct wave_list wl;
	struct wave_rec w;
	struct user_rec u;
	enum user_state es;
	char buf[16], *end;
	json_t *states;
	long long limit = STATUS_PAGE, offset = 0;
	int64_t total = 0;
	int ret;

	if (c->a->tally == NULL) {
		reply_error(c, 500, "status is not available yet");
		return;
	}
	if (state != NULL && user_state_parse(state, &es) < 0) {
		reply_error(c, 400, "state: \"%.32s\" is no user state", state);
		return;
	}
	if (limit_s != NULL && ((limit = strtoll(limit_s, &end, 10)) < 1 || *end != '\0' ||
				limit > STATUS_PAGE_MAX)) {
		reply_error(c, 400, "limit: a number from 1 to %d", STATUS_PAGE_MAX);
		return;
	}
	if (offset_s != NULL && ((offset = strtoll(offset_s, &end, 10)) < 0 || *end != '\0')) {
		reply_error(c, 400, "offset: a number from 0");
		return;
	}
	if (wave != NULL && (ret = st->wave_get(st, wave, &w)) != 0) {
		if (ret == STORE_NOTFOUND)
			reply_error(c, 404, "unknown wave \"%s\"", wave);
		else
			reply_store_error(c);
		return;
	}
	if (user != NULL && (ret = st->user_get(st, user, &u)) != 0) {
		if (ret == STORE_NOTFOUND)
			reply_error(c, 404, "unknown user \"%s\"", user);
		else
			reply_store_error(c);
		return;
	}
	/* the users changed since the last refresh, read once (at most
	   TALLY_REQUEST_MAX: after a start of 100,000 users the rest are read
	   in the background and "totals_pending" says how many are not counted
	   yet); on a store error the totals stay as last read */
	if (tally_refresh(c->a->tally, TALLY_REQUEST_MAX) < 0)
		evlog("error", "store-error", "error", st->error(st), NULL);
	memset(&s, 0, sizeof(s));
	s.st = st;
	s.users = json_array();
	wl.arr = json_array();
	wl.by_id = json_object();
	wl.only = wave;
	wl.st = st;
	s.waves_stats = wl.by_id;
	if (st->wave_each(st, wave_json, &wl) < 0 ||
	    tally_counts(c->a->tally, wave != NULL ? w.id : -1, status_count, &s) < 0)
		total = -1;
	else if (user != NULL) {
		/* one user: the page is it, if it matches the filters */
		total = (wave == NULL || strcmp(u.wave, wave) == 0) &&
			(state == NULL || u.state == es);
		if (total > 0 && offset == 0 && status_user(&u, &s) < 0)
			total = -1;
	} else
		total = tally_page(c->a->tally, wave != NULL ? w.id : -1,
				   state != NULL ? (int)es : -1, offset, (int)limit,
				   page_user, &s);
	if (total < 0) {
		json_decref(s.users);
		json_decref(wl.arr);
		json_decref(wl.by_id);
		reply_store_error(c);
		return;
	}
	states = json_object();
	for (int i = 0; i < US_COUNT; i++)
		json_object_set_new(states, user_state_name((enum user_state)i),
				    json_integer(s.states[i]));
	reply(c, 200, json_pack("{s:I, s:b, s:I, s:I, s:o, s:I, s:I, s:o, s:o, s:I, s:I, s:I, s:I}",
		"time", (json_int_t)time(NULL),
		"paused", st->setting_get(st, "paused", buf, sizeof(buf)) == 0 && buf[0] == '1',
		"running", (json_int_t)s.running, "users_paused", (json_int_t)s.paused,
		"states", states, "old_messages", (json_int_t)s.old_total,
		"messages", (json_int_t)s.local_total, "waves", wl.arr, "users", s.users,
		"users_total", (json_int_t)total, "offset", (json_int_t)offset,
		"limit", (json_int_t)limit,
		"totals_pending", (json_int_t)tally_pending(c->a->tally)));
	json_decref(wl.by_id);
}

/* ---- log ---------------------------------------------------------------- */

static int log_json(const struct log_rec *l, void *ctx)
{
	json_array_append_new(ctx, json_pack("{s:I, s:I, s:s, s:s, s:s, s:I, s:I, s:s}",
		"id", (json_int_t)l->id, "time", (json_int_t)l->time, "user", l->user,
		"folder", l->folder, "event", l->event, "copied", (json_int_t)l->copied,
		"messages", (json_int_t)l->messages, "error", l->error));
	return 0;
}

static void h_log(struct call *c)
{
	struct store *st = c->a->st;
	struct log_filter f = { query_str(c, "user"), query_str(c, "wave"), 0, 0 };
	const char *since = query_str(c, "since"), *limit = query_str(c, "limit");
	struct wave_rec w;
	json_t *arr;

	if (since != NULL && (f.since = api_parse_time(since, time(NULL))) < 0) {
		reply_error(c, 400, "since: \"%.64s\" is not a time (epoch seconds, "
			    "YYYY-MM-DD[THH:MM], or 10m/2h/3d ago)", since);
		return;
	}
	if (limit != NULL && (f.limit = atoi(limit)) <= 0) {
		reply_error(c, 400, "limit: a positive number");
		return;
	}
	if (f.wave != NULL && st->wave_get(st, f.wave, &w) == STORE_NOTFOUND) {
		reply_error(c, 404, "unknown wave \"%s\"", f.wave);
		return;
	}
	arr = json_array();
	if (st->log_each(st, &f, log_json, arr) < 0) {
		json_decref(arr);
		reply_store_error(c);
		return;
	}
	reply(c, 200, json_pack("{s:o}", "entries", arr));
}

static void h_health(struct call *c)
{
	reply(c, 200, json_pack("{s:s, s:i}", "status", "ok", "schema",
				c->a->st->schema_version(c->a->st)));
}

/* ---- cut-over, rollback, routing (cutover.c) ------------------------------ */

/* For the modules that route their own paths: "METHOD /path" and the
   arguments, a POST's JSON body or a GET's query. */
static json_t *call_args(struct call *c, char *path, size_t len)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(c->req);
	int post = evhttp_request_get_command(c->req) == EVHTTP_REQ_POST;
	struct evkeyval *kv;
	json_t *args;

	snprintf(path, len, "%s %s", post ? "POST" : "GET", evhttp_uri_get_path(uri));
	if (post)
		return json_incref(c->body);
	args = json_object();
	TAILQ_FOREACH(kv, &c->query, next)
		json_object_set_new(args, kv->key, json_string(kv->value));
	return args;
}

static void h_cutover_api(struct call *c)
{
	char path[128];
	json_t *args, *out = NULL;
	int code;

	if (c->a->cutover == NULL) {
		reply_error(c, 503, "cut-overs are not available");
		return;
	}
	args = call_args(c, path, sizeof(path));
	code = cutover_api(c->a->cutover, path, args, &out);
	json_decref(args);
	if (code == 202 || code == 200)
		c->a->kick(c->a->ctx);
	reply(c, code, out != NULL ? out : json_object());
}

void api_set_cutover(struct api *a, struct cutover *cutover)
{
	a->cutover = cutover;
}

/* ---- preflight and verification (checks.c) ------------------------------ */

static void h_checks_api(struct call *c)
{
	char path[128];
	json_t *args, *out = NULL;
	int code;

	if (c->a->checks == NULL) {
		reply_error(c, 503, "checks are not available");
		return;
	}
	args = call_args(c, path, sizeof(path));
	code = checks_api(c->a->checks, path, args, &out);
	json_decref(args);
	if (code == 202)
		c->a->kick(c->a->ctx);
	reply(c, code, out != NULL ? out : json_object());
}

void api_set_checks(struct api *a, struct checks *checks)
{
	a->checks = checks;
}

/* ---- DNS checks (dns.c) ------------------------------------------------- */

static void h_dns_api(struct call *c)
{
	char path[128];
	json_t *args, *out = NULL;
	int code;

	if (c->a->dns == NULL) {
		reply_error(c, 503, "DNS checks are not available");
		return;
	}
	args = call_args(c, path, sizeof(path));
	code = dns_api(c->a->dns, path, args, &out);
	json_decref(args);
	reply(c, code, out != NULL ? out : json_object());
}

void api_set_dns(struct api *a, struct dns *dns)
{
	a->dns = dns;
}

static void h_sieve_api(struct call *c)
{
	char path[128];
	json_t *args, *out = NULL;
	int code;

	if (c->a->sieve == NULL) {
		reply_error(c, 503, "Sieve runs are not available");
		return;
	}
	args = call_args(c, path, sizeof(path));
	code = sieve_step_api(c->a->sieve, path, args, &out);
	json_decref(args);
	reply(c, code, out != NULL ? out : json_object());
}

void api_set_sieve(struct api *a, struct sieve_step *sieve)
{
	a->sieve = sieve;
}

void api_set_tally(struct api *a, struct tally *tally)
{
	a->tally = tally;
}

/* ---- reports (report.c) ---------------------------------------------------- */

static void h_report(struct call *c)
{
	const char *wave = query_str(c, "wave"), *format = query_str(c, "format");
	struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
	struct evbuffer *out;
	char err[512], disp[200];
	json_t *rep;
	char *text;
	int code;

	if (format != NULL && strcmp(format, "csv") != 0 && strcmp(format, "json") != 0) {
		reply_error(c, 400, "format: csv or json");
		return;
	}
	if ((rep = report_json(c->a->st, wave, &code, err, sizeof(err))) == NULL) {
		reply_error(c, code, "%s", err);
		return;
	}
	snprintf(disp, sizeof(disp), "attachment; filename=\"ferry-report-%s.%s\"",
		 wave != NULL ? wave : "all", format != NULL ? format : "json");
	evhttp_add_header(h, "Content-Disposition", disp);
	if (format == NULL || strcmp(format, "json") == 0) {
		reply(c, 200, rep);
		return;
	}
	text = report_csv(rep);
	json_decref(rep);
	if (text == NULL) {
		reply_error(c, 500, "out of memory");
		return;
	}
	out = evbuffer_new();
	evbuffer_add(out, text, strlen(text));
	evhttp_add_header(h, "Content-Type", "text/csv; charset=utf-8");
	evhttp_send_reply(c->req, 200, NULL, out);
	evbuffer_free(out);
	free(text);
}

static void h_report_api(struct call *c)
{
	char path[128];
	json_t *args, *out = NULL;
	int code;

	args = call_args(c, path, sizeof(path));
	code = report_api(c->a->st, path, args, &out);
	json_decref(args);
	reply(c, code, out != NULL ? out : json_object());
}

/* ---- routing ------------------------------------------------------------ */

static const struct route {
	enum evhttp_cmd_type method;
	const char *path;
	handler_fn *fn;
} routes[] = {
	{ EVHTTP_REQ_GET, "/v1/health", h_health },
	{ EVHTTP_REQ_POST, "/v1/import", h_import },
	{ EVHTTP_REQ_POST, "/v1/wave/create", h_wave_create },
	{ EVHTTP_REQ_POST, "/v1/wave/add", h_wave_add },
	{ EVHTTP_REQ_POST, "/v1/start", h_start },
	{ EVHTTP_REQ_POST, "/v1/pause", h_pause },
	{ EVHTTP_REQ_POST, "/v1/resume", h_resume },
	{ EVHTTP_REQ_POST, "/v1/sync", h_sync },
	{ EVHTTP_REQ_GET, "/v1/status", h_status },
	{ EVHTTP_REQ_GET, "/v1/log", h_log },
	{ EVHTTP_REQ_GET, "/v1/report", h_report },
	{ EVHTTP_REQ_POST, "/v1/report/dns", h_report_api },
	{ EVHTTP_REQ_GET, "/v1/throughput", h_report_api },
	{ EVHTTP_REQ_POST, "/v1/cutover", h_cutover_api },
	{ EVHTTP_REQ_GET, "/v1/cutover", h_cutover_api },
	{ EVHTTP_REQ_POST, "/v1/rollback", h_cutover_api },
	{ EVHTTP_REQ_POST, "/v1/route/config", h_cutover_api },
	{ EVHTTP_REQ_GET, "/v1/route", h_cutover_api },
	{ EVHTTP_REQ_POST, "/v1/preflight", h_checks_api },
	{ EVHTTP_REQ_POST, "/v1/verify", h_checks_api },
	{ EVHTTP_REQ_GET, "/v1/check", h_checks_api },
	{ EVHTTP_REQ_POST, "/v1/endpoint", h_checks_api },
	{ EVHTTP_REQ_POST, "/v1/dns", h_dns_api },
	{ EVHTTP_REQ_GET, "/v1/dns", h_dns_api },
	{ EVHTTP_REQ_POST, "/v1/sieve", h_sieve_api },
};

enum role { ROLE_NONE, ROLE_VIEWER, ROLE_ADMIN };

static enum role token_role(struct api *a, struct evhttp_request *req, const char **why)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
					   "Authorization");
	unsigned char hash[SHA256_DIGEST_LENGTH];

	if (h == NULL || strncmp(h, "Bearer ", 7) != 0) {
		*why = "missing API token (send \"Authorization: Bearer TOKEN\")";
		return ROLE_NONE;
	}
	h += 7;
	SHA256((const unsigned char *)h, strlen(h), hash);
	if (CRYPTO_memcmp(hash, a->token_hash, sizeof(hash)) == 0)
		return ROLE_ADMIN;
	if (a->has_viewer && CRYPTO_memcmp(hash, a->viewer_hash, sizeof(hash)) == 0)
		return ROLE_VIEWER;
	*why = "wrong API token";
	return ROLE_NONE;
}

static void handle(struct evhttp_request *req, void *arg)
{
	struct call c = { arg, req, NULL, { 0 } };
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
	enum evhttp_cmd_type method = evhttp_request_get_command(req);
	const struct route *r = NULL;
	const char *why;
	int path_known = 0;
	enum role role;

	TAILQ_INIT(&c.query);
	if (metrics_serve(req, path) || dashboard_serve(req, path))
		return;
	if ((role = token_role(c.a, req, &why)) == ROLE_NONE) {
		evlog("warning", "api-denied", "path", path, "reason", why, NULL);
		reply_error(&c, 401, "%s", why);
		return;
	}
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (path == NULL || strcmp(routes[i].path, path) != 0)
			continue;
		path_known = 1;
		if (routes[i].method == method)
			r = &routes[i];
	}
	if (r == NULL) {
		if (path_known)
			reply_error(&c, 405, "method not allowed for %s", path);
		else
			reply_error(&c, 404, "unknown endpoint %s", path != NULL ? path : "?");
		return;
	}
	if (role == ROLE_VIEWER && method != EVHTTP_REQ_GET) {
		reply_error(&c, 403, "the viewer token only reads (GET); %s needs the admin token",
			    path);
		return;
	}
	if (query != NULL && evhttp_parse_query_str(query, &c.query) < 0) {
		reply_error(&c, 400, "malformed query string");
		return;
	}
	if (method == EVHTTP_REQ_POST) {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		json_error_t jerr;

		if (len == 0)
			c.body = json_object();
		else {
			c.body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len),
					    len, 0, &jerr);
			if (!json_is_object(c.body)) {
				json_decref(c.body);
				evhttp_clear_headers(&c.query);
				reply_error(&c, 400, "the body must be a JSON object%s%s",
					    c.body == NULL ? ": " : "", c.body == NULL ? jerr.text : "");
				return;
			}
		}
	}
	c.a->st->busy = 0;
	r->fn(&c);
	json_decref(c.body);
	evhttp_clear_headers(&c.query);
}

int api_load_secrets(struct api *a, const struct ferry_config *cfg, char **err_r)
{
	char *token = config_read_private(cfg->api_token_file, err_r), *secret = NULL;

	if (token == NULL)
		return -1;
	if (cfg->secret_key_file != NULL && *cfg->secret_key_file != '\0' &&
	    (secret = config_read_private(cfg->secret_key_file, err_r)) == NULL) {
		explicit_bzero(token, strlen(token));
		free(token);
		return -1;
	}
	if (cfg->viewer_token_file != NULL && *cfg->viewer_token_file != '\0') {
		char *viewer = config_read_private(cfg->viewer_token_file, err_r);
		if (viewer == NULL) {
			explicit_bzero(token, strlen(token));
			free(token);
			if (secret != NULL) {
				explicit_bzero(secret, strlen(secret));
				free(secret);
			}
			return -1;
		}
		SHA256((const unsigned char *)viewer, strlen(viewer), a->viewer_hash);
		explicit_bzero(viewer, strlen(viewer));
		free(viewer);
		a->has_viewer = 1;
	} else
		a->has_viewer = 0;
	SHA256((const unsigned char *)token, strlen(token), a->token_hash);
	explicit_bzero(token, strlen(token));
	free(token);
	if (a->secret != NULL) {
		explicit_bzero(a->secret, strlen(a->secret));
		free(a->secret);
	}
	a->secret = secret;
	return 0;
}

void api_reconfigure(struct api *a, const struct ferry_config *cfg)
{
	evhttp_set_max_body_size(a->http, cfg->max_body);
}

struct api *api_new(struct event_base *base, struct store *st,
		    const struct ferry_config *cfg, api_kick_cb *kick, void *ctx,
		    char **err_r)
{
	struct api *a = calloc(1, sizeof(*a));

	a->base = base;
	a->st = st;
	a->kick = kick;
	a->ctx = ctx;
	if (api_load_secrets(a, cfg, err_r) < 0) {
		free(a);
		return NULL;
	}
	a->http = evhttp_new(base);
	evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	evhttp_set_timeout(a->http, 30);
	api_reconfigure(a, cfg);
	evhttp_set_gencb(a->http, handle, a);
	if (evhttp_bind_socket(a->http, cfg->listen_host, (ev_uint16_t)cfg->listen_port) < 0) {
		if (asprintf(err_r, "cannot listen on %s:%d: %s", cfg->listen_host,
			     cfg->listen_port, strerror(errno)) < 0)
			*err_r = NULL;
		api_free(a);
		return NULL;
	}
	return a;
}

void api_free(struct api *a)
{
	if (a == NULL)
		return;
	while (a->starts != NULL)  /* unanswered: evhttp_free drops the request */
		start_job_free(a->starts);
	if (a->http != NULL)
		evhttp_free(a->http);
	if (a->secret != NULL) {
		explicit_bzero(a->secret, strlen(a->secret));
		free(a->secret);
	}
	free(a);
}
