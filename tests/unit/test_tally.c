/* tally.c against a real SQLite store: after a seeded series of
   transitions, folder writes, imports and a rolled-back transaction, the
   totals kept in memory equal the store's own grouped query (user_counts)
   and the pages equal user_page, without reloading. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"
#include "tally.h"
#include "unit_store.h"
#include "userstate.h"

static struct store *st;
static struct tally *t;

static void on_change(const char *user, void *ctx)
{
	tally_touch(ctx, user);
}

static void setup(void)
{
	st = unit_store_open("tally");
}

static void teardown(void)
{
	userstate_set_observer(NULL, NULL);
	tally_free(t);
	unit_store_close(st);
}

TestSuite(tally, .init = setup, .fini = teardown);

struct cmp {
	int64_t wave_id;
	struct user_count c;
	int found;
};

static int64_t wave_id_of(const char *name)
{
	struct wave_rec w;

	if (*name == '\0')
		return 0;
	cr_assert_eq(st->wave_get(st, name, &w), 0);
	return w.id;
}

static int find_cb(const struct tally_count *c, void *ctx)
{
	struct cmp *m = ctx;

	if (c->wave_id == m->wave_id && c->state == m->c.state) {
		m->found = 1;
		cr_expect_eq(c->users, m->c.users, "users of %s/%s", m->c.wave,
			     user_state_name(c->state));
		cr_expect_eq(c->paused, m->c.paused);
		cr_expect_eq(c->running, m->c.running);
		cr_expect_eq(c->old_messages, m->c.old_messages);
		cr_expect_eq(c->messages, m->c.messages);
	}
	return 0;
}

static int store_count_cb(const struct user_count *c, void *ctx)
{
	struct cmp m = { wave_id_of(c->wave), *c, 0 };

	(void)ctx;
	tally_counts(t, -1, find_cb, &m);
	cr_expect(m.found, "%s/%s in the tally", c->wave, user_state_name(c->state));
	*(int64_t *)ctx += c->users;
	return 0;
}

static int tally_sum_cb(const struct tally_count *c, void *ctx)
{
	*(int64_t *)ctx += c->users;
	return 0;
}

struct names {
	char v[200][256];
	int n;
};

static int name_cb(const char *user, void *ctx)
{
	struct names *n = ctx;

	snprintf(n->v[n->n++], sizeof(n->v[0]), "%s", user);
	return 0;
}

static int rec_cb(const struct user_rec *u, void *ctx)
{
	return name_cb(u->name, ctx);
}

/* the tally equals the store: totals per wave and state, and pages */
static void check_equal(void)
{
	int64_t store_users = 0, tally_users_n = 0, total;
	const char *waves[] = { NULL, "w1", "w2" };
	const char *states[] = { NULL, "presync", "done", "failed" };

	cr_assert_eq(tally_refresh(t, 0), 0, "%s", st->error(st));
	cr_assert_eq(tally_pending(t), 0);
	cr_assert_eq(st->user_counts(st, NULL, store_count_cb, &store_users), 0);
	tally_counts(t, -1, tally_sum_cb, &tally_users_n);
	cr_expect_eq(store_users, tally_users_n);
	for (int w = 0; w < 3; w++)
		for (int s = 0; s < 4; s++)
			for (int64_t off = 0; off < 60; off += 25) {
				struct user_filter f = { waves[w], states[s], NULL };
				struct names a = { .n = 0 }, b = { .n = 0 };
				enum user_state es = US_PENDING;
				int64_t stotal = 0;

				if (states[s] != NULL)
					user_state_parse(states[s], &es);
				total = tally_page(t, waves[w] ? wave_id_of(waves[w]) : -1,
						   states[s] ? (int)es : -1, off, 25, name_cb, &a);
				cr_assert_eq(st->user_page(st, &f, off, 25, &stotal, rec_cb, &b), 0);
				cr_expect_eq(total, stotal);
				cr_assert_eq(a.n, b.n);
				for (int i = 0; i < a.n; i++)
					cr_expect_str_eq(a.v[i], b.v[i]);
			}
}

static void put_folder(const char *user, const char *folder, int64_t old, int64_t msgs)
{
	struct folder_rec f;

	memset(&f, 0, sizeof(f));
	snprintf(f.user, sizeof(f.user), "%s", user);
	snprintf(f.name, sizeof(f.name), "%s", folder);
	snprintf(f.state, sizeof(f.state), "partial");
	f.old_messages = old;
	f.messages = msgs;
	f.copied = msgs;
	f.bytes = -1;
	cr_assert_eq(st->folder_put(st, &f), 0, "%s", st->error(st));
	if (t != NULL)
		tally_touch_folders(t, user);
}

Test(tally, follows_transitions_without_reload)
{
	struct userstate_retry r = { 2, 1, 10 };
	char name[16];
	unsigned seed = 16;

	for (int i = 1; i <= 2; i++) {
		struct wave_rec w;
		memset(&w, 0, sizeof(w));
		snprintf(w.name, sizeof(w.name), "w%d", i);
		w.win_start = w.win_end = -1;
		cr_assert_eq(st->wave_add(st, &w), 0, "%s", st->error(st));
	}
	for (int i = 0; i < 60; i++) {
		snprintf(name, sizeof(name), "u%03d", i);
		unit_store_add_user(st, "old", "none", name, name, name,
				    i % 3 == 0 ? "" : i % 3 == 1 ? "w1" : "w2");
		if (i < 40)
			put_folder(name, "INBOX", i, i / 2);
	}
	t = tally_new(st, NULL);
	cr_assert_eq(tally_load(t), 0, "%s", st->error(st));
	check_equal();
	userstate_set_observer(on_change, t);
	for (int step = 0; step < 600; step++) {
		int failed, attempts;
		int64_t delay;

		snprintf(name, sizeof(name), "u%03d", rand_r(&seed) % 60);
		switch (rand_r(&seed) % 8) {
		case 0: userstate_start(st, name); break;
		case 1: userstate_claim(st, name, NULL); break;
		case 2: userstate_pass_ok(st, name, 0, 0); break;
		case 3: userstate_pass_failed(st, name, 0, "x", 0, &r, &failed, &delay, &attempts);
			break;
		case 4: userstate_set_paused(st, name, rand_r(&seed) % 2); break;
		case 5: userstate_set_wave(st, name, rand_r(&seed) % 2 ? "w1" : "w2"); break;
		case 6: put_folder(name, rand_r(&seed) % 2 ? "INBOX" : "Sent",
				   rand_r(&seed) % 100, rand_r(&seed) % 100); break;
		case 7: {
			/* a transition rolled back: the tally reads the truth */
			cr_assert_eq(st->begin(st), 0);
			userstate_cut_over(st, name, 1);
			cr_assert_eq(st->rollback(st), 0);
			break;
		}
		}
		if (step % 50 == 49)
			check_equal();
	}
	/* users imported later (a touch of a name not known yet) */
	for (int i = 60; i < 70; i++) {
		snprintf(name, sizeof(name), "u%03d", i);
		unit_store_add_user(st, "old", "none", name, name, name, "w2");
		tally_touch(t, name);
	}
	tally_touch(t, "nobody");  /* an import rolled back */
	check_equal();
	cr_expect_eq(tally_users(t), 70);
}
