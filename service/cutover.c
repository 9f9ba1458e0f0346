/* Cut-over and rollback of waves (see cutover.h): the admin endpoints and
   the operations that drive doveadm for them. The routing itself is rows
   in the store that Dovecot and Postfix read (docs/routing.md); ferryd is
   never on the login or delivery path. */
#include "cutover.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "dns.h"
#include "sieve_step.h"
#include "evlog.h"
#include "ferry-contract.h"
#include "userstate.h"

enum op_kind { OP_CUTOVER, OP_ROLLBACK };
enum op_stage { ST_CLAIM, ST_FINAL_SYNC, ST_STRAGGLERS, ST_ROLLBACK, ST_DONE };

struct member {
	char name[256], login[256], host[256];
	char backend[256]; /* the NEW backend that owns the mailbox ("" = the one NEW) */
	enum user_state state;
	int claimed;       /* the operation holds the user (userstate_claim) */
	int waited;        /* "waiting" logged */
	int skip;          /* nothing to do in this stage */
	int sent, done;    /* this stage's request */
	int failed;
	int64_t appended;
	char error[512];
};

struct op {
	struct cutover *c;
	struct op *next;
	enum op_kind kind;
	enum op_stage stage;
	struct cutover_rec rec;
	struct member *m;
	size_t n;
	int in_flight;
	int stage_failed;
	int settle;             /* seconds between the flip and the next stage */
	int settling;
	char waiting[300];      /* why the operation waits, "" if it does not */
	struct event *timer;
};

struct cutover {
	struct event_base *base;
	struct store *st;
	struct doveadm_client *dc;
	const struct ferry_config *cfg;
	cutover_kick_cb *kick;
	cutover_slot_take_cb *slot_take;
	cutover_slot_release_cb *slot_release;
	void *ctx;
	struct op *ops;
};

/* an operation "running" in the store was cut short by a restart */
static int interrupted_cb(const struct cutover_rec *r, void *ctx)
{
	struct cutover_rec rec = *r;

	if (strcmp(r->state, "running") != 0)
		return 0;
	snprintf(rec.state, sizeof(rec.state), "failed");
	snprintf(rec.error, sizeof(rec.error), "ferryd stopped during the %s; run it again",
		 r->kind);
	rec.finished_at = time(NULL);
	evlog("warning", "cutover-interrupted", "wave", r->wave, "kind", r->kind, NULL);
	return ((struct store *)ctx)->cutover_put(ctx, &rec);
}

struct cutover *cutover_new(struct event_base *base, struct store *st,
			    struct doveadm_client *dc, const struct ferry_config *cfg,
			    cutover_kick_cb *kick, cutover_slot_take_cb *slot_take,
			    cutover_slot_release_cb *slot_release, void *ctx)
{
	struct cutover *c = calloc(1, sizeof(*c));

	c->slot_take = slot_take;
	c->slot_release = slot_release;
	c->base = base;
	c->st = st;
	c->dc = dc;
	c->cfg = cfg;
	c->kick = kick;
	c->ctx = ctx;
	if (st->cutover_each(st, interrupted_cb, st) < 0)
		evlog("error", "store-error", "error", st->error(st), NULL);
	return c;
}

int cutover_in_flight(const struct cutover *c)
{
	int n = 0;

	for (const struct op *o = c->ops; o != NULL; o = o->next)
		n++;
	return n;
}

static struct op *op_find(struct cutover *c, const char *wave)
{
	for (struct op *o = c->ops; o != NULL; o = o->next)
		if (strcmp(o->rec.wave, wave) == 0)
			return o;
	return NULL;
}

/* ---- log and records ---------------------------------------------------- */

static void log_user(struct store *st, const char *user, const char *folder,
		     const char *event, int64_t copied, const char *error)
{
	if (store_log_event(st, user, folder, event, copied, 0, error) < 0)
		evlog("error", "store-error", "user", user, "error", st->error(st), NULL);
}

static void rec_save(struct cutover *c, const struct cutover_rec *r)
{
	if (c->st->cutover_put(c->st, r) < 0)
		evlog("error", "store-error", "wave", r->wave, "error", c->st->error(c->st), NULL);
}

static json_t *rec_json(const struct cutover_rec *r)
{
	return json_pack("{s:s, s:s, s:s, s:I, s:b, s:I, s:I, s:I, s:i, s:i, s:i, s:s, s:i}",
			 "wave", r->wave, "kind", r->kind, "state", r->state,
			 "at", (json_int_t)r->at, "forced", r->forced,
			 "max_age", (json_int_t)r->max_age,
			 "started_at", (json_int_t)r->started_at,
			 "finished_at", (json_int_t)r->finished_at, "users", r->users,
			 "ok", r->ok, "failed", r->failed, "error", r->error,
			 "settle", r->settle);
}

/* ---- members and prechecks ---------------------------------------------- */

struct members {
	struct member *m;
	size_t n, cap;
};

static int member_cb(const struct user_rec *u, void *ctx)
{
	struct members *ms = ctx;
	struct member *m;

	if (ms->n == ms->cap) {
		ms->cap = ms->cap ? ms->cap * 2 : 32;
		ms->m = realloc(ms->m, ms->cap * sizeof(*ms->m));
	}
	m = &ms->m[ms->n++];
	memset(m, 0, sizeof(*m));
	snprintf(m->name, sizeof(m->name), "%s", u->name);
	snprintf(m->login, sizeof(m->login), "%s", u->new_login);
	snprintf(m->host, sizeof(m->host), "%s", u->ep.host);
	snprintf(m->backend, sizeof(m->backend), "%s", u->new_host);
	m->state = u->state;
	return 0;
}

struct precheck {
	struct store *st;
	int64_t max_age;
	time_t now;
	json_t *refused;
	int users, already;
};

static int precheck_cb(const struct user_rec *u, void *ctx)
{
	struct precheck *p = ctx;
	struct route_rec r;
	int64_t last = -1;
	char why[512];
	int ret;

	p->users++;
	if (p->st->route_get(p->st, u->name, &r) == 0 && strcmp(r.target, "new") == 0) {
		p->already++;
		return 0;
	}
	ret = p->st->log_last(p->st, u->name, "user-done", &last);
	if (ret < 0)
		return -1;
	if (ret == STORE_NOTFOUND)
		last = -1;
	if (cutover_precheck_user(u, last, p->max_age, p->now, why, sizeof(why)) != NULL)
		json_array_append_new(p->refused, json_pack("{s:s, s:s}", "user", u->name,
							    "reason", why));
	return 0;
}

/* 0 = may go; 409 with *reply_r = refusal; 500 store error */
static int precheck_wave(struct cutover *c, const char *wave, int64_t max_age,
			 json_t **reply_r)
{
	struct precheck p = { c->st, max_age, time(NULL), json_array(), 0, 0 };
	char msg[1500];
	size_t pos, i;
	json_t *v;

	if (c->st->user_each(c->st, wave, precheck_cb, &p) < 0) {
		json_decref(p.refused);
		*reply_r = json_pack("{s:s}", "error", c->st->error(c->st));
		return 500;
	}
	if (p.users == 0) {
		json_decref(p.refused);
		*reply_r = json_pack("{s:s}", "error", "the wave has no members");
		return 409;
	}
	if (json_array_size(p.refused) == 0) {
		json_decref(p.refused);
		if (dns_cutover_precheck(msg, sizeof(msg)) != NULL) {
			*reply_r = json_pack("{s:s+}", "error", msg, "; --force overrides");
			return 409;
		}
		return 0;
	}
	pos = (size_t)snprintf(msg, sizeof(msg), "cut-over of wave %s refused: %zu of %d "
			       "users not ready (", wave, json_array_size(p.refused), p.users);
	json_array_foreach(p.refused, i, v) {
		if (i == 3) {
			pos += (size_t)snprintf(msg + pos, sizeof(msg) - pos, "; ...");
			break;
		}
		pos += (size_t)snprintf(msg + pos, sizeof(msg) - pos, "%s%s: %.200s",
					i > 0 ? "; " : "",
					json_string_value(json_object_get(v, "user")),
					json_string_value(json_object_get(v, "reason")));
		if (pos >= sizeof(msg))
			break;
	}
	if (pos < sizeof(msg))
		snprintf(msg + pos, sizeof(msg) - pos, "); --force overrides");
	*reply_r = json_pack("{s:s, s:o}", "error", msg, "refused", p.refused);
	return 409;
}

/* ---- the operation ------------------------------------------------------- */

static void op_pump(struct op *o);

/* gives back what the operation holds for a member: its old-host slot
   and its claim on the user */
static void member_release(struct op *o, struct member *m)
{
	if (m->claimed) {
		if (userstate_release(o->c->st, m->name) < 0)
			evlog("error", "store-error", "user", m->name, "error",
			      o->c->st->error(o->c->st), NULL);
		m->claimed = 0;
	}
}

static void op_free(struct op *o)
{
	struct op **p;

	for (p = &o->c->ops; *p != NULL; p = &(*p)->next) {
		if (*p == o) {
			*p = o->next;
			break;
		}
	}
	for (size_t i = 0; i < o->n; i++)
		member_release(o, &o->m[i]);
	if (o->timer != NULL)
		event_free(o->timer);
	free(o->m);
	free(o);
}

static void on_settled(evutil_socket_t fd, short what, void *arg)
{
	struct op *o = arg;

	(void)fd;
	(void)what;
	o->settling = 0;
	op_pump(o);
}

/* the next stage starts after the settle delay: mail already routed the
   old way (Postfix's resolve cache, deliveries in flight) lands first */
static void stage_after_settle(struct op *o)
{
	struct timeval tv = { o->settle, 0 };

	if (o->settle <= 0) {
		op_pump(o);
		return;
	}
	o->settling = 1;
	if (o->timer == NULL)
		o->timer = evtimer_new(o->c->base, on_settled, o);
	evtimer_add(o->timer, &tv);
}

/* The routing of every member in one transaction, with the users' states
   and the log. target "new": cut-over (queued for a pull at sync-now
   priority, claims released); "old": rollback (claims kept for the
   appends back to OLD). */
static int flip(struct op *o, const char *target)
{
	struct store *st = o->c->st;
	int64_t now = time(NULL);
	int changed = 0, to_new = strcmp(target, "new") == 0;

	if (st->begin(st) < 0)
		return -1;
	if (st->route_set_wave(st, o->rec.wave, target, now, &changed) < 0)
		goto fail;
	for (size_t i = 0; i < o->n; i++) {
		if (to_new) {
			int64_t seq = userstate_next_seq(st);
			if (seq < 0 || userstate_cut_over(st, o->m[i].name, seq) != 0)
				goto fail;
		} else if (userstate_roll_back(st, o->m[i].name) != 0)
			goto fail;
		log_user(st, o->m[i].name, NULL, to_new ? "cutover" : "rollback", 0,
			 o->rec.forced && to_new ? "forced" : NULL);
	}
	if (st->commit(st) < 0)
		goto fail;
	if (to_new)
		for (size_t i = 0; i < o->n; i++)
			o->m[i].claimed = 0;  /* userstate_cut_over released them */
	return changed;
fail:
	evlog("error", "store-error", "wave", o->rec.wave, "error", st->error(st), NULL);
	st->rollback(st);
	return -1;
}

static void op_finish(struct op *o, const char *state, const char *error)
{
	char users[16], ok[16], failed[16];
	struct cutover *c = o->c;

	snprintf(o->rec.state, sizeof(o->rec.state), "%s", state);
	snprintf(o->rec.error, sizeof(o->rec.error), "%s", error != NULL ? error : "");
	o->rec.finished_at = time(NULL);
	rec_save(c, &o->rec);
	snprintf(users, sizeof(users), "%d", o->rec.users);
	snprintf(ok, sizeof(ok), "%d", o->rec.ok);
	snprintf(failed, sizeof(failed), "%d", o->rec.failed);
	evlog(strcmp(state, "done") == 0 ? "info" : "error",
	      o->kind == OP_CUTOVER ? "cutover-finished" : "rollback-finished",
	      "wave", o->rec.wave, "state", state, "users", users, "ok", ok,
	      "failed", failed, "error", error, NULL);
	op_free(o);
	c->kick(c->ctx);  /* claims released; a draining ferryd may be done */
}

static void stage_begin(struct op *o, enum op_stage stage)
{
	o->stage = stage;
	o->stage_failed = 0;
	o->waiting[0] = '\0';
	for (size_t i = 0; i < o->n; i++) {
		o->m[i].failed = 0;
		o->m[i].sent = 0;
		o->m[i].done = 0;
		o->m[i].error[0] = '\0';
		/* a user never copied has no final pass to make (pure lazy) */
		o->m[i].skip = stage == ST_FINAL_SYNC && o->m[i].state == US_PENDING;
	}
}

/* every request of the stage has answered */
static void stage_end(struct op *o)
{
	struct store *st = o->c->st;
	char msg[1024];
	size_t pos = 0;
	int changed;

	switch (o->stage) {
	case ST_CLAIM:
		if (o->kind == OP_ROLLBACK) {
			if (flip(o, "old") < 0) {
				op_finish(o, "failed", "state database error: routing unchanged");
				return;
			}
			o->c->kick(o->c->ctx);
			stage_begin(o, ST_ROLLBACK);
			stage_after_settle(o);
			return;
		}
		stage_begin(o, ST_FINAL_SYNC);
		op_pump(o);
		return;
	case ST_FINAL_SYNC:
		if (o->stage_failed > 0 && !o->rec.forced) {
			pos = (size_t)snprintf(msg, sizeof(msg), "final presync pass failed for %d "
					       "of %zu users, routing unchanged (", o->stage_failed, o->n);
			for (size_t i = 0, k = 0; i < o->n && pos < sizeof(msg); i++) {
				if (!o->m[i].failed)
					continue;
				log_user(st, o->m[i].name, NULL, "cutover-aborted", 0, o->m[i].error);
				if (k++ < 2)
					pos += (size_t)snprintf(msg + pos, sizeof(msg) - pos, "%s%s: %.200s",
								k > 1 ? "; " : "", o->m[i].name,
								o->m[i].error);
			}
			if (pos < sizeof(msg))
				snprintf(msg + pos, sizeof(msg) - pos, "); --force overrides");
			o->rec.failed = o->stage_failed;
			op_finish(o, "failed", msg);
			return;
		}
		if ((changed = flip(o, "new")) < 0) {
			op_finish(o, "failed", "state database error: routing unchanged");
			return;
		}
		{
			char n[16];
			snprintf(n, sizeof(n), "%d", changed);
			evlog("info", "cutover", "wave", o->rec.wave, "users", n,
			      "forced", o->rec.forced ? "yes" : "no", NULL);
		}
		o->c->kick(o->c->ctx);  /* the delta pulls, at sync-now priority */
		stage_begin(o, ST_STRAGGLERS);
		stage_after_settle(o);
		return;
	case ST_STRAGGLERS:
		o->rec.ok = (int)o->n;
		o->rec.failed = 0;
		/* a failed stragglers pass is logged per user; the pull queued at
		   the flip and later passes catch up, the cut-over stands */
		op_finish(o, "done", NULL);
		return;
	case ST_ROLLBACK:
		o->rec.failed = o->stage_failed;
		o->rec.ok = (int)o->n - o->stage_failed;
		if (o->stage_failed > 0) {
			snprintf(msg, sizeof(msg), "%d of %zu users: mail that arrived on the new "
				 "server could not be appended back to the old one (ferryctl log "
				 "--wave %s; run ferryctl rollback --wave %s again)",
				 o->stage_failed, o->n, o->rec.wave, o->rec.wave);
			op_finish(o, "failed", msg);
		} else
			op_finish(o, "done", NULL);
		return;
	case ST_DONE:
		return;
	}
}

struct call_ctx {
	struct op *o;
	size_t i;
};

static int64_t row_num(json_t *row, const char *key)
{
	const char *v = json_string_value(json_object_get(row, key));
	return v != NULL ? atoll(v) : 0;
}

static void on_reply(const struct doveadm_reply *r, void *ctx)
{
	struct call_ctx *cc = ctx;
	struct op *o = cc->o;
	struct member *m = &o->m[cc->i];
	struct store *st = o->c->st;
	size_t k;
	json_t *row;
	char n[32];

	free(cc);
	o->in_flight--;
	m->done = 1;
	o->c->slot_release(m->host, o->c->ctx);
	if (!r->ok) {
		m->failed = 1;
		o->stage_failed++;
		snprintf(m->error, sizeof(m->error), "%s", r->error);
	}
	switch (o->stage) {
	case ST_FINAL_SYNC:
		if (r->ok)
			log_user(st, m->name, NULL, "final-sync", 0, NULL);
		break;
	case ST_STRAGGLERS:
		log_user(st, m->name, NULL, r->ok ? "stragglers-pass" : "stragglers-failed", 0,
			 r->ok ? NULL : m->error);
		break;
	case ST_ROLLBACK:
		if (r->ok) {
			json_array_foreach(r->rows, k, row) {
				const char *folder = json_string_value(json_object_get(row, FERRY_COL_FOLDER));
				const char *err = json_string_value(json_object_get(row, FERRY_COL_ERROR));
				int64_t a = row_num(row, FERRY_COL_APPENDED);
				m->appended += a;
				if (a > 0 || (err != NULL && *err != '\0'))
					log_user(st, m->name, folder, "rollback-appended", a, err);
			}
		}
		log_user(st, m->name, NULL, r->ok ? "rollback-done" : "rollback-failed",
			 m->appended, r->ok ? NULL : m->error);
		snprintf(n, sizeof(n), "%lld", (long long)m->appended);
		evlog(r->ok ? "info" : "error", r->ok ? "rollback-done" : "rollback-failed",
		      "user", m->name, "appended", n, "error", r->ok ? NULL : m->error, NULL);
		member_release(o, m);  /* its presync passes may go on */
		if (r->ok)
			sieve_step_rollback(m->name);
		break;
	case ST_CLAIM:
	case ST_DONE:
		break;
	}
	op_pump(o);
}

static const char *stage_command(enum op_stage s)
{
	return s == ST_ROLLBACK ? FERRY_CMD_ROLLBACK : FERRY_CMD_SYNC;
}

/* ST_CLAIM: takes each member's claim; a member whose pull (or another
   job) is running is waited for, never run over */
static void pump_claims(struct op *o)
{
	size_t busy = 0;
	const char *first = NULL;

	for (size_t i = 0; i < o->n; i++) {
		struct member *m = &o->m[i];
		struct user_rec u;
		int ret;

		if (m->claimed)
			continue;
		ret = userstate_claim(o->c->st, m->name, &u);
		if (ret == 0) {
			m->claimed = 1;
			m->state = u.state;
			continue;
		}
		if (ret != USERSTATE_BUSY) {
			/* nothing to hold: a store error or a member removed */
			evlog("error", "store-error", "user", m->name, "error",
			      o->c->st->error(o->c->st), NULL);
			m->claimed = 0;
			continue;
		}
		if (!m->waited) {
			m->waited = 1;
			log_user(o->c->st, m->name, NULL,
				 o->kind == OP_CUTOVER ? "cutover-waiting" : "rollback-waiting", 0,
				 "a copy pass or verification of the user is running; the "
				 "operation goes on when it ends");
			evlog("info", o->kind == OP_CUTOVER ? "cutover-waiting" : "rollback-waiting",
			      "wave", o->rec.wave, "user", m->name, "reason", "job running", NULL);
		}
		if (busy++ == 0)
			first = m->name;
	}
	if (busy > 0) {
		snprintf(o->waiting, sizeof(o->waiting), "waiting for %zu running job%s (%.200s%s)"
			 " to end", busy, busy > 1 ? "s" : "", first, busy > 1 ? ", ..." : "");
		return;
	}
	o->waiting[0] = '\0';
	stage_end(o);
}

/* sends the stage's requests, each within the old host's slots shared
   with pulls and checks; ends the stage when all have answered */
static void op_pump(struct op *o)
{
	size_t open = 0;

	if (o->settling)
		return;
	if (o->stage == ST_CLAIM) {
		pump_claims(o);
		return;
	}
	for (size_t i = 0; i < o->n; i++) {
		struct member *m = &o->m[i];
		struct call_ctx *cc;

		if (m->skip || m->done)
			continue;
		open++;
		if (m->sent)
			continue;
		if (!o->c->slot_take(m->host, o->c->ctx))
			continue;  /* the slot's release pumps again */
		cc = calloc(1, sizeof(*cc));
		cc->o = o;
		cc->i = i;
		m->sent = 1;
		o->in_flight++;
		/* one slot, one old-server session: no parallel folders */
		json_t *params = o->stage == ST_ROLLBACK ?
			json_pack("{s:s}", "user", m->login) :
			json_pack("{s:s, s:s}", "user", m->login, FERRY_PARAM_PARALLEL, "1");
		if (doveadm_call(o->c->dc, m->backend, stage_command(o->stage), params, on_reply,
				 cc) == NULL) {
			free(cc);
			o->in_flight--;
			o->c->slot_release(m->host, o->c->ctx);
			m->done = 1;
			m->failed = 1;
			o->stage_failed++;
			snprintf(m->error, sizeof(m->error), "%s", doveadm_client_error(o->c->dc));
			if (o->stage == ST_ROLLBACK)
				member_release(o, m);
			open--;
		}
	}
	if (open == 0)
		stage_end(o);
}

void cutover_pump(struct cutover *c)
{
	struct op *o, *next;

	/* op_pump may finish (and free) an operation */
	for (o = c->ops; o != NULL; o = next) {
		next = o->next;
		op_pump(o);
	}
}

/* takes over rec (state running); 0 or HTTP error with *reply_r */
static int op_start(struct cutover *c, enum op_kind kind, struct cutover_rec *rec,
		    int settle, json_t **reply_r)
{
	struct members ms = { 0 };
	struct op *o;

	if (c->st->user_each(c->st, rec->wave, member_cb, &ms) < 0) {
		free(ms.m);
		*reply_r = json_pack("{s:s}", "error", c->st->error(c->st));
		return 500;
	}
	o = calloc(1, sizeof(*o));
	o->c = c;
	o->kind = kind;
	o->settle = settle;
	o->rec = *rec;
	o->m = ms.m;
	o->n = ms.n;
	o->rec.users = (int)ms.n;
	o->rec.started_at = time(NULL);
	o->rec.finished_at = 0;
	o->rec.ok = o->rec.failed = 0;
	o->rec.error[0] = '\0';
	snprintf(o->rec.state, sizeof(o->rec.state), "running");
	rec_save(c, &o->rec);
	o->next = c->ops;
	c->ops = o;
	evlog("info", kind == OP_CUTOVER ? "cutover-start" : "rollback-start",
	      "wave", o->rec.wave, "forced", o->rec.forced ? "yes" : "no", NULL);
	*reply_r = rec_json(&o->rec);
	stage_begin(o, ST_CLAIM);
	op_pump(o);  /* may finish (and free) o at once */
	return 0;
}

/* ---- endpoints ---------------------------------------------------------- */

static const char *arg_str(json_t *args, const char *key)
{
	const char *v = json_string_value(json_object_get(args, key));
	return v != NULL && *v != '\0' ? v : NULL;
}

static int error_reply(json_t **reply_r, int code, const char *fmt, const char *a)
{
	char msg[600];

	snprintf(msg, sizeof(msg), fmt, a != NULL ? a : "");
	*reply_r = json_pack("{s:s}", "error", msg);
	return code;
}

/* "settle": seconds, default CUTOVER_DEFAULT_SETTLE; -1 if invalid */
static int arg_settle(json_t *args)
{
	json_t *j = json_object_get(args, "settle");

	if (j == NULL)
		return CUTOVER_DEFAULT_SETTLE;
	if (!json_is_integer(j) || json_integer_value(j) < 0 || json_integer_value(j) > 3600)
		return -1;
	return (int)json_integer_value(j);
}

static int get_wave(struct cutover *c, json_t *args, struct wave_rec *w, json_t **reply_r)
{
	const char *wave = arg_str(args, "wave");
	int ret;

	if (wave == NULL)
		return error_reply(reply_r, 400, "needs {\"wave\": NAME}%s", NULL);
	if ((ret = c->st->wave_get(c->st, wave, w)) == STORE_NOTFOUND)
		return error_reply(reply_r, 404, "unknown wave \"%.200s\"", wave);
	if (ret < 0)
		return error_reply(reply_r, 500, "state database error: %s", c->st->error(c->st));
	return 0;
}

static int h_cutover(struct cutover *c, json_t *args, json_t **reply_r)
{
	struct wave_rec w;
	struct cutover_rec rec;
	json_t *jat = json_object_get(args, "at"), *jage = json_object_get(args, "max_age");
	int64_t now = time(NULL), at = 0, max_age = CUTOVER_DEFAULT_MAX_AGE;
	int force = json_is_true(json_object_get(args, "force")), code;
	int settle = arg_settle(args);

	if ((code = get_wave(c, args, &w, reply_r)) != 0)
		return code;
	if (settle < 0)
		return error_reply(reply_r, 400, "settle: seconds (0..3600)%s", NULL);
	if (json_is_string(jat))
		at = api_parse_time(json_string_value(jat), now);
	else if (json_is_integer(jat))
		at = json_integer_value(jat);
	if (jat != NULL && at < 0)
		return error_reply(reply_r, 400, "at: a time (epoch seconds, YYYY-MM-DD or "
				   "YYYY-MM-DDTHH:MM)%s", NULL);
	if (jage != NULL && (!json_is_integer(jage) ||
			     (max_age = json_integer_value(jage)) < 0))
		return error_reply(reply_r, 400, "max_age: seconds%s", NULL);
	if (op_find(c, w.name) != NULL)
		return error_reply(reply_r, 409, "a cut-over or rollback of wave %s is in "
				   "progress", w.name);
	if (!force && (code = precheck_wave(c, w.name, max_age, reply_r)) != 0) {
		if (code == 409) {
			struct members ms = { 0 };
			const char *err = json_string_value(json_object_get(*reply_r, "error"));
			evlog("warning", "cutover-refused", "wave", w.name, "error", err, NULL);
			if (c->st->user_each(c->st, w.name, member_cb, &ms) == 0)
				for (size_t i = 0; i < ms.n; i++)
					log_user(c->st, ms.m[i].name, NULL, "cutover-refused", 0, err);
			free(ms.m);
		}
		return code;
	}
	memset(&rec, 0, sizeof(rec));
	snprintf(rec.wave, sizeof(rec.wave), "%s", w.name);
	snprintf(rec.kind, sizeof(rec.kind), "cutover");
	rec.at = at > now ? at : now;
	rec.forced = force;
	rec.max_age = max_age;
	rec.settle = settle;
	if (at > now) {
		struct members ms = { 0 };
		char when[32];
		snprintf(rec.state, sizeof(rec.state), "scheduled");
		if (c->st->cutover_put(c->st, &rec) < 0 ||
		    c->st->user_each(c->st, w.name, member_cb, &ms) < 0) {
			free(ms.m);
			return error_reply(reply_r, 500, "state database error: %s",
					   c->st->error(c->st));
		}
		rec.users = (int)ms.n;
		snprintf(when, sizeof(when), "%lld", (long long)at);
		for (size_t i = 0; i < ms.n; i++)
			log_user(c->st, ms.m[i].name, NULL, "cutover-scheduled", 0, NULL);
		free(ms.m);
		evlog("info", "cutover-scheduled", "wave", w.name, "at", when, NULL);
		*reply_r = rec_json(&rec);
		return 202;
	}
	code = op_start(c, OP_CUTOVER, &rec, settle, reply_r);
	return code == 0 ? 202 : code;
}

static int h_rollback(struct cutover *c, json_t *args, json_t **reply_r)
{
	struct wave_rec w;
	struct cutover_rec rec;
	int code, settle = arg_settle(args);

	if ((code = get_wave(c, args, &w, reply_r)) != 0)
		return code;
	if (settle < 0)
		return error_reply(reply_r, 400, "settle: seconds (0..3600)%s", NULL);
	if (op_find(c, w.name) != NULL)
		return error_reply(reply_r, 409, "a cut-over or rollback of wave %s is in "
				   "progress", w.name);
	memset(&rec, 0, sizeof(rec));
	snprintf(rec.wave, sizeof(rec.wave), "%s", w.name);
	snprintf(rec.kind, sizeof(rec.kind), "rollback");
	rec.at = time(NULL);
	rec.settle = settle;
	code = op_start(c, OP_ROLLBACK, &rec, settle, reply_r);
	return code == 0 ? 202 : code;
}

static int route_user_json(const struct user_rec *u, void *ctx)
{
	struct cutover *c = ((void **)ctx)[0];
	json_t *arr = ((void **)ctx)[1];
	const char *only = ((void **)ctx)[2];
	struct route_rec r;

	if (only != NULL && strcmp(only, u->name) != 0)
		return 0;
	if (c->st->route_get(c->st, u->name, &r) != 0)
		return -1;
	json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s}",
		"user", u->name, "login", u->new_login, "wave", u->wave,
		"route", r.target, "phase", strcmp(r.target, "new") == 0 ? FERRY_PHASE_CUTOVER : FERRY_PHASE_PRESYNC,
		"changed_at", (json_int_t)r.changed_at, "new_host", u->new_host));
	return 0;
}

static int h_route_show(struct cutover *c, json_t *args, json_t **reply_r)
{
	const char *user = arg_str(args, "user"), *wave = arg_str(args, "wave");
	json_t *arr = json_array();
	void *ctx[3] = { c, arr, (void *)user };
	struct wave_rec w;
	int code;

	if (wave != NULL && (code = get_wave(c, args, &w, reply_r)) != 0) {
		json_decref(arr);
		return code;
	}
	if (c->st->user_each(c->st, wave, route_user_json, ctx) < 0) {
		json_decref(arr);
		return error_reply(reply_r, 500, "state database error: %s", c->st->error(c->st));
	}
	if (user != NULL && json_array_size(arr) == 0) {
		json_decref(arr);
		return error_reply(reply_r, 404, "unknown user \"%.200s\"", user);
	}
	*reply_r = json_pack("{s:o}", "routes", arr);
	return 200;
}

static int valid_transport(const char *t)
{
	/* a Postfix nexthop: transport:destination, no spaces or quotes */
	if (strchr(t, ':') == NULL || *t == ':')
		return 0;
	for (; *t != '\0'; t++)
		if (*t <= ' ' || *t == '\'' || *t == '"' || *t == '\\' || *t == 0x7f)
			return 0;
	return 1;
}

static int h_route_config(struct cutover *c, json_t *args, json_t **reply_r)
{
	struct store *st = c->st;
	const char *newt = arg_str(args, "new_transport"), *ep = arg_str(args, "endpoint"),
		*transport = arg_str(args, "transport");
	json_t *jpop = json_object_get(args, "pop3_port");
	char host[256];
	int port = 143, pop3 = 0, ret;
	const char *colon;

	if (newt == NULL && ep == NULL)
		return error_reply(reply_r, 400, "route config needs new_transport and/or "
				   "endpoint%s", NULL);
	if (newt != NULL && !valid_transport(newt))
		return error_reply(reply_r, 400, "new_transport: \"%.200s\" is not a Postfix "
				   "nexthop (e.g. lmtp:unix:private/dovecot-lmtp)", newt);
	if (transport != NULL && !valid_transport(transport))
		return error_reply(reply_r, 400, "transport: \"%.200s\" is not a Postfix nexthop "
				   "(e.g. smtp:[old.example.com]:25)", transport);
	if (jpop != NULL && (!json_is_integer(jpop) || (pop3 = (int)json_integer_value(jpop)) < 0 ||
			     pop3 > 65535))
		return error_reply(reply_r, 400, "pop3_port: 0..65535%s", NULL);
	if (ep == NULL && (transport != NULL || jpop != NULL))
		return error_reply(reply_r, 400, "transport and pop3_port need endpoint%s", NULL);
	if (st->begin(st) < 0)
		return error_reply(reply_r, 500, "state database error: %s", st->error(st));
	if (newt != NULL && st->setting_set(st, "route_new_transport", newt) < 0)
		goto store_fail;
	if (ep != NULL) {
		colon = strrchr(ep, ':');
		snprintf(host, sizeof(host), "%.*s", colon != NULL ? (int)(colon - ep) : (int)strlen(ep), ep);
		if (colon != NULL && ((port = atoi(colon + 1)) <= 0 || port > 65535)) {
			st->rollback(st);
			return error_reply(reply_r, 400, "endpoint: \"%.200s\" is not HOST[:PORT]", ep);
		}
		ret = st->endpoint_route_set(st, host, port, pop3, transport != NULL ? transport : "");
		if (ret == STORE_NOTFOUND) {
			st->rollback(st);
			return error_reply(reply_r, 404, "no user has the endpoint %.200s", ep);
		}
		if (ret < 0)
			goto store_fail;
	}
	if (st->commit(st) < 0)
		goto store_fail;
	evlog("info", "route-config", "new_transport", newt, "endpoint", ep,
	      "transport", transport, NULL);
	*reply_r = json_pack("{s:b}", "configured", 1);
	return 200;
store_fail:
	st->rollback(st);
	return error_reply(reply_r, 500, "state database error: %s", st->error(st));
}

static int h_cutover_show(struct cutover *c, json_t *args, json_t **reply_r)
{
	struct wave_rec w;
	struct cutover_rec rec;
	int code, ret;

	if ((code = get_wave(c, args, &w, reply_r)) != 0)
		return code;
	if ((ret = c->st->cutover_get(c->st, w.name, &rec)) == STORE_NOTFOUND)
		return error_reply(reply_r, 404, "wave %.200s was never cut over", w.name);
	if (ret < 0)
		return error_reply(reply_r, 500, "state database error: %s", c->st->error(c->st));
	*reply_r = rec_json(&rec);
	{
		struct op *o = op_find(c, w.name);
		if (o != NULL && o->waiting[0] != '\0')
			json_object_set_new(*reply_r, "waiting", json_string(o->waiting));
	}
	return 200;
}

int cutover_api(struct cutover *c, const char *path, json_t *args, json_t **reply_r)
{
	if (strcmp(path, "POST /v1/cutover") == 0)
		return h_cutover(c, args, reply_r);
	if (strcmp(path, "POST /v1/rollback") == 0)
		return h_rollback(c, args, reply_r);
	if (strcmp(path, "GET /v1/cutover") == 0)
		return h_cutover_show(c, args, reply_r);
	if (strcmp(path, "POST /v1/route/config") == 0)
		return h_route_config(c, args, reply_r);
	if (strcmp(path, "GET /v1/route") == 0)
		return h_route_show(c, args, reply_r);
	return error_reply(reply_r, 404, "unknown endpoint %.200s", path);
}

/* ---- scheduled cut-overs ------------------------------------------------ */

struct due {
	struct cutover_rec *r;
	size_t n, cap;
	time_t now;
};

static int due_cb(const struct cutover_rec *r, void *ctx)
{
	struct due *d = ctx;

	if (strcmp(r->state, "scheduled") != 0 || r->at > (int64_t)d->now)
		return 0;
	if (d->n == d->cap)
		d->r = realloc(d->r, (d->cap = d->cap ? d->cap * 2 : 8) * sizeof(*d->r));
	d->r[d->n++] = *r;
	return 0;
}

void cutover_tick(struct cutover *c, time_t now)
{
	struct due d = { NULL, 0, 0, now };

	if (c->st->cutover_each(c->st, due_cb, &d) < 0) {
		evlog("error", "store-error", "error", c->st->error(c->st), NULL);
		return;
	}
	for (size_t i = 0; i < d.n; i++) {
		json_t *reply = NULL;
		struct cutover_rec *r = &d.r[i];

		if (op_find(c, r->wave) != NULL)
			continue;
		if (!r->forced && precheck_wave(c, r->wave, r->max_age, &reply) != 0) {
			const char *err = json_string_value(json_object_get(reply, "error"));
			struct members ms = { 0 };
			snprintf(r->state, sizeof(r->state), "failed");
			snprintf(r->error, sizeof(r->error), "%s", err != NULL ? err : "refused");
			r->finished_at = now;
			rec_save(c, r);
			if (c->st->user_each(c->st, r->wave, member_cb, &ms) == 0)
				for (size_t k = 0; k < ms.n; k++)
					log_user(c->st, ms.m[k].name, NULL, "cutover-refused", 0, r->error);
			free(ms.m);
			evlog("warning", "cutover-refused", "wave", r->wave, "error", r->error, NULL);
		} else {
			json_decref(reply);
			reply = NULL;
			op_start(c, OP_CUTOVER, r, r->settle, &reply);
		}
		json_decref(reply);
	}
	free(d.r);
}

void cutover_free(struct cutover *c)
{
	if (c == NULL)
		return;
	/* requests in flight belong to the doveadm client, freed with it; the
	   records stay "running" and are resumed by nobody: log it */
	while (c->ops != NULL) {
		evlog("warning", "cutover-abandoned", "wave", c->ops->rec.wave, NULL);
		snprintf(c->ops->rec.error, sizeof(c->ops->rec.error),
			 "ferryd stopped during the operation; run it again");
		snprintf(c->ops->rec.state, sizeof(c->ops->rec.state), "failed");
		rec_save(c, &c->ops->rec);
		op_free(c->ops);
	}
	free(c);
}
