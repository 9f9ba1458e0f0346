/* User totals in memory (tally.h). One compact record per user (no
   strings but an offset into one arena of names), a hash from name to
   record, the records' order by id, and per (wave, state) the sums. */
#include "tally.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define DIRTY_ROW 1
#define DIRTY_FOLDERS 2
#define NONE UINT32_MAX
#define REFRESH_BATCH 64  /* users read per background refresh */

struct trec {
	int64_t id, wave_id;
	int64_t old_messages, messages, copied;
	uint32_t name;          /* offset in names */
	uint8_t state, paused, running, dirty;
};

struct tgroup {
	int64_t wave_id;
	struct tally_count c[US_COUNT];
};

struct tally {
	struct store *st;
	struct event *ev;       /* refresh soon after a change */
	int scheduled;
	struct trec *recs;
	uint32_t n, cap;
	uint32_t *order;        /* record indexes by id */
	uint32_t *hash;         /* open addressing: record index or NONE */
	uint32_t hcap;          /* power of two */
	char *names;
	size_t nlen, ncap;
	struct tgroup *groups;
	size_t ngroups;
	uint32_t *dirty;        /* records to read again */
	size_t ndirty, dcap;
	char **fresh;           /* names not known yet (imported) */
	size_t nfresh, fcap;
};

static void *xrealloc(void *p, size_t n)
{
	if ((p = realloc(p, n)) == NULL)
		abort();
	return p;
}

static uint32_t name_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static const char *rec_name(const struct tally *t, const struct trec *r)
{
	return t->names + r->name;
}

static uint32_t *slot_of(struct tally *t, const char *name)
{
	uint32_t i = name_hash(name) & (t->hcap - 1);

	while (t->hash[i] != NONE && strcmp(rec_name(t, &t->recs[t->hash[i]]), name) != 0)
		i = (i + 1) & (t->hcap - 1);
	return &t->hash[i];
}

static uint32_t find(struct tally *t, const char *name)
{
	return t->hcap == 0 ? NONE : *slot_of(t, name);
}

static void rehash(struct tally *t)
{
	t->hcap = t->hcap ? t->hcap * 2 : 1024;
	free(t->hash);
	t->hash = xrealloc(NULL, t->hcap * sizeof(*t->hash));
	memset(t->hash, 0xff, t->hcap * sizeof(*t->hash));
	for (uint32_t k = 0; k < t->n; k++)
		*slot_of(t, rec_name(t, &t->recs[k])) = k;
}

static struct tally_count *group(struct tally *t, int64_t wave_id, int state)
{
	size_t i;

	for (i = 0; i < t->ngroups; i++)
		if (t->groups[i].wave_id == wave_id)
			return &t->groups[i].c[state];
	t->groups = xrealloc(t->groups, (t->ngroups + 1) * sizeof(*t->groups));
	memset(&t->groups[i], 0, sizeof(t->groups[i]));
	t->groups[i].wave_id = wave_id;
	for (int s = 0; s < US_COUNT; s++) {
		t->groups[i].c[s].wave_id = wave_id;
		t->groups[i].c[s].state = (enum user_state)s;
	}
	t->ngroups++;
	return &t->groups[i].c[state];
}

/* adds (sign 1) or removes (-1) a record from the sums */
static void count(struct tally *t, const struct trec *r, int sign)
{
	struct tally_count *c = group(t, r->wave_id, r->state);

	c->users += sign;
	c->paused += sign * (r->paused != 0);
	c->running += sign * (r->running != 0);
	c->queued += sign * ((r->state == US_PRESYNC || r->state == US_CUTOVER) &&
			     !r->running && !r->paused);
	c->old_messages += sign * r->old_messages;
	c->messages += sign * r->messages;
	c->copied += sign * r->copied;
}

static void set_row(struct trec *r, const struct user_rec *u)
{
	r->id = u->id;
	r->wave_id = u->wave_id;
	r->state = (uint8_t)u->state;
	r->paused = u->paused != 0;
	r->running = u->running != 0;
}

static uint32_t insert(struct tally *t, const struct user_rec *u)
{
	size_t len = strlen(u->name) + 1;
	uint32_t k = t->n, lo = 0, hi = t->n;
	struct trec *r;

	if (t->n + 1 > t->hcap / 2)
		rehash(t);
	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 1024;
		t->recs = xrealloc(t->recs, t->cap * sizeof(*t->recs));
		t->order = xrealloc(t->order, t->cap * sizeof(*t->order));
	}
	while (t->nlen + len > t->ncap) {
		t->ncap = t->ncap ? t->ncap * 2 : 16384;
		t->names = xrealloc(t->names, t->ncap);
	}
	r = &t->recs[k];
	memset(r, 0, sizeof(*r));
	r->name = (uint32_t)t->nlen;
	memcpy(t->names + t->nlen, u->name, len);
	t->nlen += len;
	set_row(r, u);
	t->n++;
	*slot_of(t, u->name) = k;
	/* ids grow with imports: almost always appended */
	if (k > 0 && t->recs[t->order[k - 1]].id > u->id) {
		while (lo < hi) {
			uint32_t mid = (lo + hi) / 2;
			if (t->recs[t->order[mid]].id < u->id)
				lo = mid + 1;
			else
				hi = mid;
		}
		memmove(&t->order[lo + 1], &t->order[lo], (k - lo) * sizeof(*t->order));
		t->order[lo] = k;
	} else
		t->order[k] = k;
	count(t, r, 1);
	return k;
}

struct sums {
	int64_t old_messages, messages, copied;
};

static int sum_folder(const struct folder_rec *f, void *ctx)
{
	struct sums *s = ctx;

	s->old_messages += f->old_messages > 0 ? f->old_messages : 0;
	s->messages += f->messages > 0 ? f->messages : 0;
	s->copied += f->copied > 0 ? f->copied : 0;
	return 0;
}

/* ---- interface ------------------------------------------------------------ */

static int refresh(struct tally *t, size_t max);
static void schedule(struct tally *t);

/* in the background, REFRESH_BATCH users at a time (100,000 touched by a
   start are read over many loop turns, the API served between them) */
static void on_refresh(evutil_socket_t fd, short what, void *ctx)
{
	struct tally *t = ctx;

	(void)fd;
	(void)what;
	t->scheduled = 0;
	if (refresh(t, REFRESH_BATCH) == 0 && (t->nfresh > 0 || t->ndirty > 0))
		schedule(t);  /* a store error: they stay pending until a touch */
}

struct tally *tally_new(struct store *st, struct event_base *base)
{
	struct tally *t = calloc(1, sizeof(*t));

	if (t == NULL)
		abort();
	t->st = st;
	if (base != NULL && (t->ev = event_new(base, -1, 0, on_refresh, t)) == NULL)
		abort();
	return t;
}

void tally_free(struct tally *t)
{
	if (t == NULL)
		return;
	if (t->ev != NULL)
		event_free(t->ev);
	for (size_t i = 0; i < t->nfresh; i++)
		free(t->fresh[i]);
	free(t->fresh);
	free(t->dirty);
	free(t->groups);
	free(t->names);
	free(t->hash);
	free(t->order);
	free(t->recs);
	free(t);
}

static int load_user(const struct user_rec *u, void *ctx)
{
	struct tally *t = ctx;

	if (find(t, u->name) == NONE)
		insert(t, u);
	return 0;
}

/* every user's folders in one pass (folder_each of all users) */
static int load_folder(const struct folder_rec *f, void *ctx)
{
	struct tally *t = ctx;
	uint32_t k = find(t, f->user);
	struct sums s = { 0, 0, 0 };

	if (k == NONE)
		return 0;
	sum_folder(f, &s);
	count(t, &t->recs[k], -1);
	t->recs[k].old_messages += s.old_messages;
	t->recs[k].messages += s.messages;
	t->recs[k].copied += s.copied;
	count(t, &t->recs[k], 1);
	return 0;
}

int tally_load(struct tally *t)
{
	if (t->st->user_each(t->st, NULL, load_user, t) < 0)
		return -1;
	return t->st->folder_each(t->st, NULL, load_folder, t);
}

static void schedule(struct tally *t)
{
	struct timeval now = { 0, 0 };

	/* a zero timeout: after the loop has looked for new events */
	if (t->ev != NULL && !t->scheduled) {
		t->scheduled = 1;
		evtimer_add(t->ev, &now);
	}
}

static void touch(struct tally *t, const char *user, int what)
{
	uint32_t k = find(t, user);

	if (k == NONE) {
		if (t->nfresh == t->fcap) {
			t->fcap = t->fcap ? t->fcap * 2 : 64;
			t->fresh = xrealloc(t->fresh, t->fcap * sizeof(*t->fresh));
		}
		if ((t->fresh[t->nfresh++] = strdup(user)) == NULL)
			abort();
	} else {
		if (t->recs[k].dirty == 0) {
			if (t->ndirty == t->dcap) {
				t->dcap = t->dcap ? t->dcap * 2 : 64;
				t->dirty = xrealloc(t->dirty, t->dcap * sizeof(*t->dirty));
			}
			t->dirty[t->ndirty++] = k;
		}
		t->recs[k].dirty |= (uint8_t)what;
	}
	schedule(t);
}

void tally_touch(struct tally *t, const char *user)
{
	touch(t, user, DIRTY_ROW);
}

void tally_touch_folders(struct tally *t, const char *user)
{
	touch(t, user, DIRTY_FOLDERS);
}

/* reads record k again (what: DIRTY_*); 0, or -1 (left dirty) */
static int reread(struct tally *t, uint32_t k, int what)
{
	struct trec r = t->recs[k];
	const char *name = rec_name(t, &r);
	struct user_rec u;
	int ret;

	if (what & DIRTY_ROW) {
		if ((ret = t->st->user_get(t->st, name, &u)) < 0)
			return -1;
		if (ret == 0)
			set_row(&r, &u);
	}
	if (what & DIRTY_FOLDERS) {
		struct sums s = { 0, 0, 0 };
		if (t->st->folder_each(t->st, name, sum_folder, &s) < 0)
			return -1;
		r.old_messages = s.old_messages;
		r.messages = s.messages;
		r.copied = s.copied;
	}
	r.dirty = 0;
	count(t, &t->recs[k], -1);
	t->recs[k] = r;
	count(t, &t->recs[k], 1);
	return 0;
}

int tally_refresh(struct tally *t, size_t max)
{
	return refresh(t, max > 0 ? max : SIZE_MAX);
}

size_t tally_pending(const struct tally *t)
{
	size_t n = t->nfresh;

	for (size_t i = 0; i < t->ndirty; i++)
		n += t->recs[t->dirty[i]].dirty != 0;
	return n;
}

/* reads up to max pending users, oldest first */
static int refresh(struct tally *t, size_t max)
{
	size_t i, keep = 0, done = 0;
	int ret = 0;

	/* imported users first: a touch of a known one may follow */
	for (i = 0; i < t->nfresh; i++) {
		struct user_rec u;
		uint32_t k = find(t, t->fresh[i]);
		int r = 0;

		if (done++ >= max) {
			t->fresh[keep++] = t->fresh[i];
			continue;
		}
		if (k != NONE)
			r = reread(t, k, DIRTY_ROW | DIRTY_FOLDERS);
		else if ((r = t->st->user_get(t->st, t->fresh[i], &u)) == 0)
			r = reread(t, insert(t, &u), DIRTY_FOLDERS);
		else if (r == STORE_NOTFOUND)
			r = 0;  /* its import was rolled back */
		if (r < 0) {
			ret = -1;
			t->fresh[keep++] = t->fresh[i];
		} else
			free(t->fresh[i]);
	}
	t->nfresh = keep;
	keep = 0;
	for (i = 0; i < t->ndirty; i++) {
		uint32_t k = t->dirty[i];
		if (t->recs[k].dirty == 0)
			continue;
		if (done++ >= max)
			t->dirty[keep++] = k;
		else if (reread(t, k, t->recs[k].dirty) < 0) {
			ret = -1;
			t->dirty[keep++] = k;
		}
	}
	t->ndirty = keep;
	return ret;
}

int tally_counts(struct tally *t, int64_t wave_id,
		 int (*cb)(const struct tally_count *c, void *ctx), void *ctx)
{
	for (size_t i = 0; i < t->ngroups; i++) {
		if (wave_id >= 0 && t->groups[i].wave_id != wave_id)
			continue;
		for (int s = 0; s < US_COUNT; s++)
			if (t->groups[i].c[s].users > 0 && cb(&t->groups[i].c[s], ctx) < 0)
				return -1;
	}
	return 0;
}

int64_t tally_page(struct tally *t, int64_t wave_id, int state, int64_t offset,
		   int limit, int (*cb)(const char *user, void *ctx), void *ctx)
{
	int64_t total = 0;

	for (uint32_t i = 0; i < t->n; i++) {
		const struct trec *r = &t->recs[t->order[i]];
		if ((wave_id >= 0 && r->wave_id != wave_id) || (state >= 0 && r->state != state))
			continue;
		if (total >= offset && total < offset + limit &&
		    cb(rec_name(t, r), ctx) < 0)
			return -1;
		total++;
	}
	return total;
}

size_t tally_users(const struct tally *t)
{
	return t->n;
}
