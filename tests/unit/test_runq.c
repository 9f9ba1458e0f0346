/* runq.c against a real SQLite store: users picked in priority order
   within the limits, transitions followed without a reload, users waiting
   to retry picked once due, a closed wave skipped whole. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "runq.h"
#include "store.h"
#include "unit_store.h"
#include "userstate.h"

static struct store *st;
static struct runq *q;
static struct sched_running run;
static char started[64][32];
static int nstarted;

static void add(const char *name, const char *host, const char *wave)
{
	unit_store_add_user(st, host, "none", name, name, name, wave);
	cr_assert_eq(userstate_start(st, name), 1);
}

static void add_wave(const char *name, int paused)
{
	struct wave_rec w;

	memset(&w, 0, sizeof(w));
	snprintf(w.name, sizeof(w.name), "%s", name);
	w.win_start = w.win_end = -1;
	w.paused = paused;
	cr_assert_eq(st->wave_add(st, &w), 0, "%s", st->error(st));
}

/* what dispatch_start does: take the claim */
static int start(const char *user, const char *host, void *ctx)
{
	(void)host;
	(void)ctx;
	if (userstate_claim(st, user, NULL) != 0)
		return -1;
	snprintf(started[nstarted++], sizeof(started[0]), "%s", user);
	return 0;
}

static int pick(int max, int per_host, time_t now)
{
	struct sched_limits lim = { max, per_host };

	nstarted = 0;
	return runq_pick(q, &lim, &run, now, 0, start, NULL);
}

static void setup(void)
{
	st = unit_store_open("runq");
	memset(&run, 0, sizeof(run));
}

static void teardown(void)
{
	userstate_set_observer(NULL, NULL);
	runq_free(q);
	sched_running_free(&run);
	unit_store_close(st);
}

static void load(void)
{
	q = runq_new(st);
	cr_assert_eq(runq_load(q), 0);
	userstate_set_observer(runq_touch_cb, q);
}

TestSuite(runq, .init = setup, .fini = teardown);

Test(runq, order_limits_and_transitions)
{
	const struct userstate_retry retry = { 3, 60, 600 };
	int failed, attempts;
	int64_t delay;

	add_wave("w1", 0);
	add("a1", "a", "w1");
	add("a2", "a", "w1");
	add("b1", "b", "w1");
	add("n1", "a", "");   /* no wave: last */
	load();
	cr_assert_eq(runq_count(q), 4);
	/* per host 1: a1 and b1 */
	cr_assert_eq(pick(10, 1, 1000), 2);
	cr_assert_str_eq(started[0], "a1");
	cr_assert_str_eq(started[1], "b1");
	cr_assert_eq(pick(10, 1, 1000), 0);  /* host a full */
	/* a1 fails: its slot back, retried after 60 s, a2 first meanwhile */
	cr_assert_eq(userstate_pass_failed(st, "a1", 0, "boom", 0, &retry, &failed, &delay,
					   &attempts), 0);
	sched_running_remove(&run, "a");
	cr_assert_eq(pick(10, 1, time(NULL)), 1);
	cr_assert_str_eq(started[0], "a2");
	cr_assert_gt(runq_next_due(q), time(NULL));
	/* a2 done (gone from the queue); then n1 before a1, which is not due */
	cr_assert_eq(userstate_pass_ok(st, "a2", 0, 0), 0);
	sched_running_remove(&run, "a");
	cr_assert_eq(pick(10, 1, time(NULL)), 1);
	cr_assert_str_eq(started[0], "n1");
	cr_assert_eq(userstate_pass_ok(st, "n1", 0, 0), 0);
	sched_running_remove(&run, "a");
	/* once due, a1 again */
	cr_assert_eq(pick(10, 1, runq_next_due(q)), 1);
	cr_assert_str_eq(started[0], "a1");
}

Test(runq, sync_now_first_and_paused_wave_skipped)
{
	int running;

	add_wave("closed", 1);
	add_wave("open", 0);
	add("c1", "h", "closed");
	add("o1", "h", "open");
	add("o2", "h", "open");
	load();
	/* the closed wave is skipped; "sync now" is first but a paused wave
	   still holds it */
	cr_assert_eq(userstate_request_sync(st, "o2", 0, &running), 0);
	cr_assert_eq(userstate_request_sync(st, "c1", 0, &running), 0);
	cr_assert_eq(pick(1, 5, 1000), 1);
	cr_assert_str_eq(started[0], "o2");
	cr_assert_eq(pick(5, 5, 1000), 1);
	cr_assert_str_eq(started[0], "o1");
	cr_assert_eq(pick(5, 5, 1000), 0);
}

/* a transition in a transaction rolled back: the queue follows the store */
Test(runq, rolled_back_transition_not_believed)
{
	add("r1", "h", "");
	load();
	cr_assert_eq(st->begin(st), 0);
	cr_assert_eq(userstate_set_paused(st, "r1", 1), 0);
	st->rollback(st);
	cr_assert_eq(pick(5, 5, 1000), 1);
	cr_assert_str_eq(started[0], "r1");
}
