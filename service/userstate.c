/* User state transitions (see userstate.h). Each one reads the row,
   decides, and writes it back only if the row is still as read. */
#include "userstate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "evlog.h"
#include "scheduler.h"

static userstate_observer *observer;
static void *observer_ctx;

void userstate_set_observer(userstate_observer *fn, void *ctx)
{
	observer = fn;
	observer_ctx = ctx;
}

static int peer_changed(const char *user, void *ctx)
{
	(void)ctx;
	if (observer != NULL)
		observer(user, observer_ctx);
	return 0;
}

void userstate_log_lost(const char *user)
{
	evlog("warning", "claim-lost", "user", user, "note",
	      "another ferryd took the user over (this one's lease ran out)", NULL);
}

int userstate_poll_peers(struct store *st)
{
	if (st->user_changed_each == NULL)
		return 0;
	return st->user_changed_each(st, peer_changed, NULL);
}

/* mutate: 0 = write, 1 = nothing to change (returned as is), other = refuse */
typedef int mutate_fn(struct user_rec *u, void *ctx);

/* the claim is this ferryd's (always on SQLite: one process, no holder) */
static int claim_mine(const struct store *st, const struct user_rec *u)
{
	return strcmp(u->claimed_by, st->node) == 0;
}

#define OWN 1  /* a job's own transition: refused once its claim is not ours */

static int change(struct store *st, const char *user, mutate_fn *fn, void *ctx,
		  struct user_rec *u_r, int flags)
{
	struct user_rec u, before;
	int ret;

	/* a lost race means another transition got there first: decide again
	   on what it wrote */
	for (int tries = 0; tries < 8; tries++) {
		if ((ret = st->user_get(st, user, &before)) != 0)
			return ret;
		u = before;
		/* the claim was taken over (this ferryd's lease ran out while
		   the job went on): released, perhaps claimed and even finished
		   by another ferryd since; what this job learnt is no longer the
		   user's truth (a finished pass written again is a user done
		   twice) */
		if ((flags & OWN) && (!before.running || !claim_mine(st, &before))) {
			if (u_r != NULL)
				*u_r = before;
			return USERSTATE_LOST;
		}
		if ((ret = fn(&u, ctx)) != 0) {
			if (u_r != NULL)
				*u_r = before;
			return ret == 1 ? 0 : ret;
		}
		/* the claim's holder and lease follow running */
		if (!u.running) {
			u.claimed_by[0] = '\0';
			u.lease_until = 0;
		} else if (!before.running) {
			snprintf(u.claimed_by, sizeof(u.claimed_by), "%s", st->node);
			u.lease_until = st->lease > 0 ? (int64_t)time(NULL) + st->lease : 0;
		}
		ret = st->user_update_if(st, &u, &before);
		if (ret != STORE_NOTFOUND) {
			if (ret == 0 && u_r != NULL)
				*u_r = u;
			if (ret == 0 && observer != NULL)
				observer(user, observer_ctx);
			return ret;
		}
	}
	return -1;
}

static int m_start(struct user_rec *u, void *ctx)
{
	int *changed = ctx;

	if (u->state != US_PENDING && u->state != US_FAILED)
		return 1;
	u->state = US_PRESYNC;
	u->attempts = 0;
	u->next_attempt = 0;
	u->finished_at = 0;
	*changed = 1;
	return 0;
}

int userstate_start(struct store *st, const char *user)
{
	int changed = 0;

	if (change(st, user, m_start, &changed, NULL, 0) < 0)
		return -1;
	return changed;
}

static int m_paused(struct user_rec *u, void *ctx)
{
	int paused = *(int *)ctx;

	if (u->paused == paused)
		return 1;
	u->paused = paused;
	return 0;
}

int userstate_set_paused(struct store *st, const char *user, int paused)
{
	return change(st, user, m_paused, &paused, NULL, 0);
}

static int m_wave(struct user_rec *u, void *ctx)
{
	snprintf(u->wave, sizeof(u->wave), "%s", (const char *)ctx);
	return 0;
}

int userstate_set_wave(struct store *st, const char *user, const char *wave)
{
	return change(st, user, m_wave, (void *)wave, NULL, 0);
}

int64_t userstate_next_seq(struct store *st)
{
	char buf[32];
	long long seq = 0;

	if (st->setting_get(st, "sync_seq", buf, sizeof(buf)) == 0)
		seq = atoll(buf);
	snprintf(buf, sizeof(buf), "%lld", seq + 1);
	if (st->setting_set(st, "sync_seq", buf) < 0)
		return -1;
	return seq + 1;
}

struct sync_ctx {
	int64_t seq;
	int cut_over;
	int login;
};

static int m_sync(struct user_rec *u, void *ctx)
{
	struct sync_ctx *s = ctx;

	/* a cut-over user's passes are cut-over passes (stragglers) */
	u->state = s->cut_over ? US_CUTOVER : US_PRESYNC;
	u->paused = 0;
	u->attempts = 0;
	u->next_attempt = 0;
	u->sync_seq = s->seq;
	if (s->login)
		u->login_at = time(NULL);
	return 0;
}

int userstate_request_sync(struct store *st, const char *user, int login,
			   int *running_r)
{
	struct sync_ctx s = { 0, 0, login };
	struct route_rec r;
	struct user_rec u;
	int ret;

	if ((ret = st->user_get(st, user, &u)) != 0)
		return ret;
	if (st->begin(st) < 0)
		return -1;
	if ((s.seq = userstate_next_seq(st)) < 0)
		goto fail;
	if (st->route_get(st, user, &r) == 0 && strcmp(r.target, "new") == 0)
		s.cut_over = 1;
	if ((ret = change(st, user, m_sync, &s, &u, 0)) != 0 || st->commit(st) < 0)
		goto fail;
	*running_r = u.running;
	return 0;
fail:
	st->rollback(st);
	return ret == STORE_NOTFOUND ? ret : -1;
}

static int m_claim(struct user_rec *u, void *ctx)
{
	(void)ctx;
	if (u->running)
		return USERSTATE_BUSY;
	u->running = 1;
	if (u->started_at == 0)
		u->started_at = time(NULL);
	return 0;
}

int userstate_claim(struct store *st, const char *user, struct user_rec *u_r)
{
	return change(st, user, m_claim, NULL, u_r, 0);
}

/* the run queue's view may be older than the row (another ferryd's
   transitions are read a moment later): a pull's claim checks that the user
   is still due */
static int m_claim_pull(struct user_rec *u, void *ctx)
{
	(void)ctx;
	if ((u->state != US_PRESYNC && u->state != US_CUTOVER) || u->paused ||
	    u->next_attempt > (int64_t)time(NULL))
		return USERSTATE_NOTDUE;
	return m_claim(u, NULL);
}

int userstate_claim_pull(struct store *st, const char *user, struct user_rec *u_r)
{
	return change(st, user, m_claim_pull, NULL, u_r, 0);
}

static int m_release(struct user_rec *u, void *ctx)
{
	(void)ctx;
	if (!u->running)
		return 1;
	u->running = 0;
	return 0;
}

int userstate_release(struct store *st, const char *user)
{
	return change(st, user, m_release, NULL, NULL, OWN);
}

struct pass_ctx {
	int64_t seq;
	int verify;
	const char *error;
	int permanent;
	const struct userstate_retry *retry;
	int failed;
	int64_t delay;
	int attempts;
};

/* the request the job carried out is answered; a newer one stays queued */
static void answer_sync(struct user_rec *u, int64_t seq)
{
	if (seq > 0 && u->sync_seq == seq)
		u->sync_seq = 0;
}

static int m_pass_ok(struct user_rec *u, void *ctx)
{
	struct pass_ctx *p = ctx;

	answer_sync(u, p->seq);
	u->next_attempt = 0;
	if (p->verify)
		return 0;  /* claim kept: the verification ends the job */
	u->running = 0;
	u->attempts = 0;
	u->last_error[0] = '\0';
	u->finished_at = time(NULL);
	if (u->sync_seq == 0)
		u->state = US_DONE;
	return 0;
}

int userstate_pass_ok(struct store *st, const char *user, int64_t seq, int verify)
{
	struct pass_ctx p = { .seq = seq, .verify = verify };

	return change(st, user, m_pass_ok, &p, NULL, OWN);
}

static void fail_or_retry(struct user_rec *u, struct pass_ctx *p, int permanent)
{
	time_t now = time(NULL);

	u->attempts++;
	p->attempts = u->attempts;
	if (permanent || u->attempts >= p->retry->limit) {
		u->state = US_FAILED;
		u->finished_at = now;
		p->failed = 1;
	} else {
		p->delay = sched_backoff(u->attempts, p->retry->base, p->retry->max_delay);
		u->next_attempt = now + p->delay;
	}
}

static int m_pass_failed(struct user_rec *u, void *ctx)
{
	struct pass_ctx *p = ctx;

	p->failed = 0;
	p->delay = 0;
	answer_sync(u, p->seq);
	u->running = 0;
	snprintf(u->last_error, sizeof(u->last_error), "%s", p->error);
	fail_or_retry(u, p, p->permanent);
	return 0;
}

int userstate_pass_failed(struct store *st, const char *user, int64_t seq,
			  const char *error, int permanent, const struct userstate_retry *r,
			  int *failed_r, int64_t *delay_r, int *attempts_r)
{
	struct pass_ctx p = { .seq = seq, .error = error, .permanent = permanent, .retry = r };
	int ret = change(st, user, m_pass_failed, &p, NULL, OWN);

	*failed_r = p.failed;
	*delay_r = p.delay;
	*attempts_r = p.attempts;
	return ret;
}

struct verify_ctx {
	struct pass_ctx p;
	int after_pull;
	const char *result;
};

static int m_verified(struct user_rec *u, void *ctx)
{
	struct verify_ctx *v = ctx;
	time_t now = time(NULL);

	v->p.failed = 0;
	if (!v->after_pull) {
		/* a verification asked for by hand judges a finished user only */
		if (v->result == NULL || u->running ||
		    (u->state != US_DONE && u->state != US_VERIFIED && u->state != US_FAILED))
			return 1;
		u->state = strcmp(v->result, "pass") == 0 ? US_VERIFIED : US_FAILED;
		snprintf(u->last_error, sizeof(u->last_error), "%s",
			 strcmp(v->result, "pass") == 0 ? "" : v->p.error);
		u->finished_at = now;
		return 0;
	}
	u->running = 0;
	if (v->result != NULL && strcmp(v->result, "pass") == 0) {
		/* a sync requested meanwhile keeps the user queued */
		if (u->sync_seq == 0)
			u->state = US_VERIFIED;
		u->attempts = 0;
		u->next_attempt = 0;
		u->last_error[0] = '\0';
		u->finished_at = now;
	} else if (v->result != NULL) {
		u->state = US_FAILED;
		u->finished_at = now;
		snprintf(u->last_error, sizeof(u->last_error), "%s", v->p.error);
		v->p.failed = 1;
	} else {
		snprintf(u->last_error, sizeof(u->last_error), "verification: %s", v->p.error);
		fail_or_retry(u, &v->p, 0);
	}
	return 0;
}

int userstate_verified(struct store *st, const char *user, int after_pull,
		       const char *result, const char *error, const struct userstate_retry *r,
		       int *failed_r)
{
	struct verify_ctx v = { .p = { .error = error != NULL ? error : "", .retry = r },
				.after_pull = after_pull, .result = result };
	int ret = change(st, user, m_verified, &v, NULL, after_pull ? OWN : 0);

	*failed_r = v.p.failed;
	return ret;
}

static int m_cut_over(struct user_rec *u, void *ctx)
{
	u->state = US_CUTOVER;
	u->running = 0;
	u->paused = 0;
	u->attempts = 0;
	u->next_attempt = 0;
	u->sync_seq = *(int64_t *)ctx;
	u->finished_at = 0;
	return 0;
}

int userstate_cut_over(struct store *st, const char *user, int64_t seq)
{
	return change(st, user, m_cut_over, &seq, NULL, 0);
}

static int m_roll_back(struct user_rec *u, void *ctx)
{
	(void)ctx;
	u->state = US_PRESYNC;
	/* no copy pass while NEW holds mail OLD may not have yet (a rollback
	   that failed half-way): the admin resumes the wave when it is over */
	u->paused = 1;
	u->attempts = 0;
	u->next_attempt = 0;
	u->sync_seq = 0;
	return 0;
}

int userstate_roll_back(struct store *st, const char *user)
{
	return change(st, user, m_roll_back, NULL, NULL, 0);
}

struct takeover_ctx {
	const char *holder;
	int64_t now;
	int changed;
};

static int m_take_over(struct user_rec *u, void *ctx)
{
	struct takeover_ctx *t = ctx;

	/* released, renewed or claimed anew meanwhile: nothing to take */
	if (!u->running || u->lease_until >= t->now || strcmp(u->claimed_by, t->holder) != 0)
		return 1;
	u->running = 0;
	t->changed = 1;
	return 0;
}

int userstate_take_over(struct store *st, const char *user, const char *holder)
{
	struct takeover_ctx t = { holder, (int64_t)time(NULL), 0 };
	int ret = change(st, user, m_take_over, &t, NULL, 0);

	return ret < 0 ? -1 : ret == STORE_NOTFOUND ? 0 : t.changed;
}

int userstate_renew(struct store *st)
{
	if (st->lease_renew == NULL)
		return 0;
	return st->lease_renew(st, (int64_t)time(NULL) + st->lease);
}
