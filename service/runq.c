/* The in-memory run queue (runq.h). */
#include "runq.h"

#include <search.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "evlog.h"

struct heap;

struct rq_entry {
	struct sched_user u;  /* name and host owned */
	struct heap *heap;    /* NULL: in none */
	size_t hidx;
};

struct heap {
	struct rq_entry **v;
	size_t n, cap;
	int by_due;  /* ordered by next attempt, else by sched_cmp */
};

struct group {  /* one wave's due users; wave_id 0: no wave */
	int64_t wave_id;
	struct heap cut, pre;
};

struct runq {
	struct store *st;
	void *by_name;  /* tsearch tree of entries, by name */
	size_t count;
	struct heap sync, waiting;
	struct group *groups;  /* in wave order, no wave last */
	size_t ngroups;
	char **touched;
	size_t ntouched, tcap;
	struct wave_rec *waves;
	size_t nwaves, wcap;
};

static int name_cmp(const void *a, const void *b)
{
	return strcmp(((const struct rq_entry *)a)->u.name, ((const struct rq_entry *)b)->u.name);
}

/* ---- heaps ---------------------------------------------------------------- */

static int before(const struct heap *h, const struct rq_entry *a, const struct rq_entry *b)
{
	if (h->by_due) {
		if (a->u.next_attempt != b->u.next_attempt)
			return a->u.next_attempt < b->u.next_attempt;
		return a->u.id < b->u.id;
	}
	struct sched_cand ca = { &a->u, NULL }, cb = { &b->u, NULL };
	return sched_cmp(&ca, &cb) < 0;  /* one wave per heap: wave order is the groups' */
}

static void place(struct heap *h, size_t i, struct rq_entry *e)
{
	h->v[i] = e;
	e->heap = h;
	e->hidx = i;
}

static void sift_up(struct heap *h, size_t i)
{
	struct rq_entry *e = h->v[i];

	while (i > 0 && before(h, e, h->v[(i - 1) / 2])) {
		place(h, i, h->v[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	place(h, i, e);
}

static void sift_down(struct heap *h, size_t i)
{
	struct rq_entry *e = h->v[i];

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && before(h, h->v[c + 1], h->v[c]))
			c++;
		if (!before(h, h->v[c], e))
			break;
		place(h, i, h->v[c]);
		i = c;
	}
	place(h, i, e);
}

static void heap_push(struct heap *h, struct rq_entry *e)
{
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 64;
		if ((h->v = realloc(h->v, h->cap * sizeof(*h->v))) == NULL)
			abort();
	}
	place(h, h->n++, e);
	sift_up(h, h->n - 1);
}

static void heap_remove(struct rq_entry *e)
{
	struct heap *h = e->heap;
	size_t i = e->hidx;

	if (h == NULL)
		return;
	e->heap = NULL;
	if (--h->n == i)
		return;
	struct rq_entry *m = h->v[h->n];
	place(h, i, m);
	sift_up(h, i);
	sift_down(h, m->hidx);
}

static struct rq_entry *heap_pop(struct heap *h)
{
	struct rq_entry *e = h->n > 0 ? h->v[0] : NULL;

	if (e != NULL)
		heap_remove(e);
	return e;
}

/* ---- placement ------------------------------------------------------------ */

static int64_t wave_key(int64_t wave_id)
{
	return wave_id != 0 ? wave_id : INT64_MAX;
}

static struct group *group_of(struct runq *q, int64_t wave_id)
{
	size_t i;

	for (i = 0; i < q->ngroups; i++) {
		if (q->groups[i].wave_id == wave_id)
			return &q->groups[i];
		if (wave_key(q->groups[i].wave_id) > wave_key(wave_id))
			break;
	}
	/* waves are few: an insertion keeps them in order; the heaps move, so
	   their entries are pointed at them again */
	q->groups = realloc(q->groups, (q->ngroups + 1) * sizeof(*q->groups));
	if (q->groups == NULL)
		abort();
	memmove(&q->groups[i + 1], &q->groups[i], (q->ngroups - i) * sizeof(*q->groups));
	q->ngroups++;
	memset(&q->groups[i], 0, sizeof(q->groups[i]));
	q->groups[i].wave_id = wave_id;
	for (size_t g = 0; g < q->ngroups; g++) {
		struct heap *hs[2] = { &q->groups[g].cut, &q->groups[g].pre };
		for (int k = 0; k < 2; k++)
			for (size_t j = 0; j < hs[k]->n; j++)
				hs[k]->v[j]->heap = hs[k];
	}
	return &q->groups[i];
}

/* into the heap its state says, now */
static void enqueue(struct runq *q, struct rq_entry *e, time_t now)
{
	struct group *g;

	heap_remove(e);
	if (e->u.running || e->u.paused)
		return;
	if (e->u.sync_seq > 0)
		heap_push(&q->sync, e);
	else if (e->u.next_attempt > (int64_t)now)
		heap_push(&q->waiting, e);
	else {
		g = group_of(q, e->u.wave_id);
		heap_push(e->u.state == US_CUTOVER ? &g->cut : &g->pre, e);
	}
}

static void entry_free(void *p)
{
	struct rq_entry *e = p;

	free((char *)e->u.name);
	free((char *)e->u.host);
	free(e);
}

static void forget(struct runq *q, struct rq_entry *e)
{
	heap_remove(e);
	tdelete(e, &q->by_name, name_cmp);
	q->count--;
	entry_free(e);
}

/* the user as the store has it now */
static void update(struct runq *q, const struct user_rec *u, time_t now)
{
	struct rq_entry key = { .u.name = u->name }, **found, *e;
	int queued = u->state == US_PRESYNC || u->state == US_CUTOVER;

	found = tfind(&key, &q->by_name, name_cmp);
	e = found != NULL ? *found : NULL;
	if (!queued) {
		if (e != NULL)
			forget(q, e);
		return;
	}
	if (e == NULL) {
		if ((e = calloc(1, sizeof(*e))) == NULL || (e->u.name = strdup(u->name)) == NULL)
			abort();
		tsearch(e, &q->by_name, name_cmp);
		q->count++;
	}
	if (e->u.host == NULL || strcmp(e->u.host, u->ep.host) != 0) {
		free((char *)e->u.host);
		if ((e->u.host = strdup(u->ep.host)) == NULL)
			abort();
	}
	heap_remove(e);  /* its order may change */
	e->u.id = u->id;
	e->u.wave_id = u->wave_id;
	e->u.state = u->state;
	e->u.paused = u->paused;
	e->u.running = u->running;
	e->u.next_attempt = u->next_attempt;
	e->u.sync_seq = u->sync_seq;
	e->u.login_at = u->login_at;
	enqueue(q, e, now);
}

/* ---- interface ------------------------------------------------------------ */

struct runq *runq_new(struct store *st)
{
	struct runq *q = calloc(1, sizeof(*q));

	q->st = st;
	q->waiting.by_due = 1;
	return q;
}

void runq_free(struct runq *q)
{
	if (q == NULL)
		return;
	tdestroy(q->by_name, entry_free);
	free(q->sync.v);
	free(q->waiting.v);
	for (size_t i = 0; i < q->ngroups; i++) {
		free(q->groups[i].cut.v);
		free(q->groups[i].pre.v);
	}
	free(q->groups);
	for (size_t i = 0; i < q->ntouched; i++)
		free(q->touched[i]);
	free(q->touched);
	free(q->waves);
	free(q);
}

static int load_one(const struct user_rec *u, void *ctx)
{
	struct runq *q = ctx;

	update(q, u, time(NULL));
	return 0;
}

int runq_load(struct runq *q)
{
	return q->st->user_each(q->st, NULL, load_one, q);
}

void runq_touch(struct runq *q, const char *user)
{
	if (q->ntouched == q->tcap) {
		q->tcap = q->tcap ? q->tcap * 2 : 16;
		if ((q->touched = realloc(q->touched, q->tcap * sizeof(*q->touched))) == NULL)
			abort();
	}
	if ((q->touched[q->ntouched++] = strdup(user)) == NULL)
		abort();
}

void runq_touch_cb(const char *user, void *ctx)
{
	runq_touch(ctx, user);
}

static int refresh(struct runq *q, time_t now)
{
	struct user_rec u;
	int ret = 0;

	for (size_t i = 0; i < q->ntouched; i++) {
		int r = q->st->user_get(q->st, q->touched[i], &u);
		if (r == 0)
			update(q, &u, now);
		else if (r < 0)
			ret = -1;
		free(q->touched[i]);
	}
	q->ntouched = 0;
	return ret;
}

static int wave_cb(const struct wave_rec *w, void *ctx)
{
	struct runq *q = ctx;

	if (q->nwaves == q->wcap) {
		q->wcap = q->wcap ? q->wcap * 2 : 16;
		if ((q->waves = realloc(q->waves, q->wcap * sizeof(*q->waves))) == NULL)
			abort();
	}
	q->waves[q->nwaves++] = *w;
	return 0;
}

static const struct wave_rec *wave_find(const struct runq *q, int64_t id)
{
	for (size_t i = 0; i < q->nwaves; i++)
		if (q->waves[i].id == id)
			return &q->waves[i];
	return NULL;
}

struct pick {
	struct runq *q;
	const struct sched_limits *lim;
	struct sched_running *run;
	time_t now;
	int now_minutes;
	runq_start_fn *start;
	void *ctx;
	struct rq_entry **aside;  /* popped, not started: pushed back after */
	size_t naside, acap;
	int started;
	int busy;  /* the store's write lock is held elsewhere: stop picking */
	/* hosts whose slots other ferryd hold (start said 1): not asked again
	   in this pick */
	const char **full;
	size_t nfull, fcap;
};

static int host_full(const struct pick *p, const char *host)
{
	for (size_t i = 0; i < p->nfull; i++)
		if (strcmp(p->full[i], host) == 0)
			return 1;
	return 0;
}

static void set_aside(struct pick *p, struct rq_entry *e)
{
	if (p->naside == p->acap) {
		p->acap = p->acap ? p->acap * 2 : 64;
		if ((p->aside = realloc(p->aside, p->acap * sizeof(*p->aside))) == NULL)
			abort();
	}
	p->aside[p->naside++] = e;
}

/* starts from h in its order until the limits are reached or h is empty */
static void drain(struct pick *p, struct heap *h)
{
	struct rq_entry *e;

	while (!p->busy && p->run->total < p->lim->max_concurrent && (e = heap_pop(h)) != NULL) {
		struct sched_cand c = { &e->u, e->u.wave_id != 0 ? wave_find(p->q, e->u.wave_id) : NULL };
		int r;

		if (!sched_eligible(&c, 0, p->now, p->now_minutes, NULL) ||
		    sched_running_count(p->run, e->u.host) >= p->lim->max_per_host ||
		    host_full(p, e->u.host)) {
			set_aside(p, e);
			continue;
		}
		sched_running_add(p->run, e->u.host);
		p->q->st->busy = 0;
		if ((r = p->start(e->u.name, e->u.host, p->ctx)) == 1) {
			sched_running_remove(p->run, e->u.host);
			if (p->nfull == p->fcap) {
				p->fcap = p->fcap ? p->fcap * 2 : 8;
				if ((p->full = realloc(p->full, p->fcap * sizeof(*p->full))) == NULL)
					abort();
			}
			p->full[p->nfull++] = e->u.host;
			set_aside(p, e);
			continue;
		}
		if (r < 0) {
			sched_running_remove(p->run, e->u.host);
			runq_touch(p->q, e->u.name);  /* read again: what kept it */
			/* each further claim would wait for the lock too: the next
			   pick tries again (docs/ferryd.md, "A locked database") */
			p->busy = p->q->st->busy;
			continue;
		}
		e->u.running = 1;  /* the claim's transition confirms it */
		p->started++;
	}
}

/* may the wave's users run now (a sync-now user skips this) */
static int wave_open(const struct runq *q, int64_t wave_id, time_t now, int now_minutes)
{
	const struct wave_rec *w = wave_id != 0 ? wave_find(q, wave_id) : NULL;

	if (w == NULL)
		return 1;
	return !w->paused && w->start_after <= (int64_t)now &&
	       sched_in_window(w->win_start, w->win_end, now_minutes);
}

int runq_pick(struct runq *q, const struct sched_limits *lim, struct sched_running *run,
	      time_t now, int now_minutes, runq_start_fn *start, void *ctx)
{
	struct pick p = { q, lim, run, now, now_minutes, start, ctx, NULL, 0, 0, 0, 0,
			  NULL, 0, 0 };
	struct rq_entry *e;
	int ret = 0;

	if (refresh(q, now) < 0)
		ret = -1;
	while (q->waiting.n > 0 && q->waiting.v[0]->u.next_attempt <= (int64_t)now) {
		e = heap_pop(&q->waiting);
		enqueue(q, e, now);
	}
	q->nwaves = 0;
	if (q->st->wave_each(q->st, wave_cb, q) < 0)
		return -1;
	drain(&p, &q->sync);
	for (int cut = 1; cut >= 0; cut--)
		for (size_t i = 0; i < q->ngroups; i++)
			if (wave_open(q, q->groups[i].wave_id, now, now_minutes))
				drain(&p, cut ? &q->groups[i].cut : &q->groups[i].pre);
	for (size_t i = 0; i < p.naside; i++)
		enqueue(q, p.aside[i], now);
	free(p.aside);
	free(p.full);
	return ret < 0 ? -1 : p.started;
}

time_t runq_next_due(const struct runq *q)
{
	return q->waiting.n > 0 ? (time_t)q->waiting.v[0]->u.next_attempt : 0;
}

size_t runq_count(const struct runq *q)
{
	return q->count;
}
