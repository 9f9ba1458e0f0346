#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "scheduler.h"

/* names and hosts live as long as the test */
static char names[2000][16], hosts[2000][32];

static struct sched_user mk(int id, const char *host, enum user_state st)
{
	struct sched_user u;

	memset(&u, 0, sizeof(u));
	u.id = id;
	snprintf(names[id], sizeof(names[id]), "u%d", id);
	snprintf(hosts[id], sizeof(hosts[id]), "%s", host);
	u.name = names[id];
	u.host = hosts[id];
	u.state = st;
	return u;
}

Test(sched, backoff_doubles_up_to_cap)
{
	cr_assert_eq(sched_backoff(0, 30, 3600), 0);
	cr_assert_eq(sched_backoff(1, 30, 3600), 30);
	cr_assert_eq(sched_backoff(2, 30, 3600), 60);
	cr_assert_eq(sched_backoff(5, 30, 3600), 480);
	cr_assert_eq(sched_backoff(50, 30, 3600), 3600);
}

Test(sched, windows)
{
	int s, e;

	cr_assert_eq(sched_parse_window("22:00-06:00", &s, &e), 0);
	cr_assert_eq(s, 22 * 60);
	cr_assert_eq(e, 6 * 60);
	cr_assert(sched_in_window(s, e, 23 * 60));
	cr_assert(sched_in_window(s, e, 60));
	cr_assert_not(sched_in_window(s, e, 12 * 60));
	cr_assert(sched_in_window(9 * 60, 17 * 60, 9 * 60));
	cr_assert_not(sched_in_window(9 * 60, 17 * 60, 17 * 60));
	cr_assert(sched_in_window(-1, -1, 0));
	cr_assert_eq(sched_parse_window("25:00-06:00", &s, &e), -1);
	cr_assert_eq(sched_parse_window("10:00-10:00", &s, &e), -1);
	cr_assert_eq(sched_parse_window("10:00", &s, &e), -1);
}

Test(sched, limits_per_host_and_global)
{
	struct sched_user u[6] = { mk(1, "a", US_PRESYNC), mk(2, "a", US_PRESYNC),
				 mk(3, "a", US_PRESYNC), mk(4, "b", US_PRESYNC),
				 mk(5, "b", US_PRESYNC), mk(6, "c", US_PRESYNC) };
	struct sched_cand c[6];
	struct sched_limits lim = { 4, 2 };
	struct sched_running run;
	size_t out[6], n;

	memset(&run, 0, sizeof(run));
	for (int i = 0; i < 6; i++)
		c[i] = (struct sched_cand){ &u[i], NULL };
	n = sched_pick(&lim, c, 6, &run, 0, 1000, 0, out, 6);
	cr_assert_eq(n, 4);
	cr_assert_eq(run.total, 4);
	cr_assert_eq(sched_running_count(&run, "a"), 2);
	cr_assert_eq(sched_running_count(&run, "b"), 2);
	/* one more slot: host a and b are full, c is free */
	sched_running_remove(&run, "a");
	for (int i = 0; i < 6; i++)
		u[i].running = c[i].user->id <= 2 || (c[i].user->id >= 4 && c[i].user->id <= 5);
	n = sched_pick(&lim, c, 6, &run, 0, 1000, 0, out, 6);
	cr_assert_eq(n, 1);
	cr_assert_str_eq(c[out[0]].user->name, "u3");
	sched_running_free(&run);
}

/* max_concurrent may be 1000: more old hosts in flight than any fixed
   table held (256 once) must all be counted and all released */
Test(sched, many_hosts_every_slot_released)
{
	enum { N = 1000 };
	static struct sched_user u[N];
	static struct sched_cand c[N];
	static size_t out[N];
	struct sched_limits lim = { N, 1 };
	struct sched_running run;
	char host[32];

	memset(&run, 0, sizeof(run));
	for (int i = 0; i < N; i++) {
		snprintf(host, sizeof(host), "old%d.example", i);
		u[i] = mk(i + 1, host, US_PRESYNC);
		c[i] = (struct sched_cand){ &u[i], NULL };
	}
	cr_assert_eq(sched_pick(&lim, c, N, &run, 0, 1000, 0, out, N), N);
	cr_assert_eq(run.total, N);
	cr_assert_eq(run.nhosts, N);
	cr_assert_eq(sched_running_count(&run, "old999.example"), 1);
	for (int i = 0; i < N; i++)
		sched_running_remove(&run, u[i].host);
	cr_assert_eq(run.total, 0);
	cr_assert_eq(run.nhosts, 0);
	sched_running_free(&run);
}

Test(sched, priorities)
{
	struct wave_rec w1 = { .id = 1, .win_start = -1, .win_end = -1 };
	struct wave_rec w2 = { .id = 2, .win_start = -1, .win_end = -1 };
	struct sched_user a = mk(1, "h", US_PRESYNC), b = mk(2, "h", US_PRESYNC),
		cu = mk(3, "h", US_CUTOVER), s = mk(4, "h", US_PRESYNC), nw = mk(5, "h", US_PRESYNC);
	struct sched_cand c[5] = { { &nw, NULL }, { &b, &w2 }, { &a, &w1 }, { &cu, &w2 },
				   { &s, &w2 } };
	struct sched_limits lim = { 10, 10 };
	struct sched_running run;
	size_t out[5];

	s.sync_seq = 7;
	memset(&run, 0, sizeof(run));
	cr_assert_eq(sched_pick(&lim, c, 5, &run, 0, 1000, 0, out, 5), 5);
	cr_assert_str_eq(c[out[0]].user->name, "u4");  /* sync now */
	cr_assert_str_eq(c[out[1]].user->name, "u3");  /* cut over */
	cr_assert_str_eq(c[out[2]].user->name, "u1");  /* wave 1 */
	cr_assert_str_eq(c[out[3]].user->name, "u2");  /* wave 2 */
	cr_assert_str_eq(c[out[4]].user->name, "u5");  /* no wave */

	/* a sync asked for by a login goes ahead of an earlier sync now */
	nw.sync_seq = 9;
	nw.login_at = 1000;
	cr_assert_eq(sched_pick(&lim, c, 5, &run, 0, 1000, 0, out, 5), 5);
	cr_assert_str_eq(c[out[0]].user->name, "u5");  /* login */
	cr_assert_str_eq(c[out[1]].user->name, "u4");  /* sync now */
	sched_running_free(&run);
}

Test(sched, eligibility)
{
	struct wave_rec w = { .id = 1, .win_start = 22 * 60, .win_end = 6 * 60 };
	struct sched_user u = mk(1, "h", US_PRESYNC);
	struct sched_cand c = { &u, &w };
	const char *why;

	cr_assert_not(sched_eligible(&c, 0, 1000, 12 * 60, &why));
	cr_assert_str_eq(why, "outside the maintenance window");
	cr_assert(sched_eligible(&c, 0, 1000, 23 * 60, &why));
	u.sync_seq = 1;  /* sync now ignores the window */
	cr_assert(sched_eligible(&c, 0, 1000, 12 * 60, &why));
	u.sync_seq = 0;
	w.win_start = w.win_end = -1;
	w.start_after = 2000;
	cr_assert_not(sched_eligible(&c, 0, 1000, 0, &why));
	cr_assert_str_eq(why, "wave not started yet");
	w.start_after = 0;
	u.next_attempt = 1500;
	cr_assert_not(sched_eligible(&c, 0, 1000, 0, &why));
	cr_assert_str_eq(why, "waiting to retry");
	u.next_attempt = 0;
	cr_assert_not(sched_eligible(&c, 1, 1000, 0, &why));
	u.paused = 1;
	cr_assert_not(sched_eligible(&c, 0, 1000, 0, &why));
	u.paused = 0;
	w.paused = 1;
	cr_assert_not(sched_eligible(&c, 0, 1000, 0, &why));
	w.paused = 0;
	u.state = US_DONE;
	cr_assert_not(sched_eligible(&c, 0, 1000, 0, &why));
	u.state = US_PENDING;
	cr_assert_not(sched_eligible(&c, 0, 1000, 0, &why));
	u.state = US_CUTOVER;
	cr_assert(sched_eligible(&c, 0, 1000, 0, &why));
}
