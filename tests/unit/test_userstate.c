/* userstate.c: the transitions of a user's state against a real SQLite
   store: one claim per user, a sync asked for during a pass kept for the
   next one, verified users ready, compare-and-set refusing a stale write. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "store.h"
#include "unit_store.h"
#include "userstate.h"

static struct store *st;
static const struct userstate_retry retry = { 3, 1, 4 };

static void setup(void)
{
	st = unit_store_open("userstate");
	unit_store_add_user(st, "old.example", "none", "alice", "alice", "alice", "");
}

static void teardown(void)
{
	unit_store_close(st);
}

static struct user_rec get(void)
{
	struct user_rec u;

	cr_assert_eq(st->user_get(st, "alice", &u), 0);
	return u;
}

TestSuite(userstate, .init = setup, .fini = teardown);

Test(userstate, one_claim_per_user)
{
	struct user_rec u;

	cr_assert_eq(userstate_start(st, "alice"), 1);
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	cr_assert(u.running);
	cr_assert_eq(userstate_claim(st, "alice", &u), USERSTATE_BUSY);
	cr_assert_eq(userstate_release(st, "alice"), 0);
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	cr_assert_eq(userstate_claim(st, "nobody", &u), STORE_NOTFOUND);
}

Test(userstate, sync_during_a_pass_is_kept_for_the_next)
{
	struct user_rec u;
	int running;

	userstate_start(st, "alice");
	cr_assert_eq(userstate_request_sync(st, "alice", 0, &running), 0);
	cr_assert_not(running);
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	int64_t seq = u.sync_seq;
	cr_assert_gt(seq, 0);
	/* asked again while the pass runs */
	cr_assert_eq(userstate_request_sync(st, "alice", 0, &running), 0);
	cr_assert(running);
	cr_assert_eq(userstate_pass_ok(st, "alice", seq, 0), 0);
	u = get();
	cr_assert_not(u.running);
	cr_assert_gt(u.sync_seq, seq, "the newer request is still queued");
	cr_assert_eq(u.state, US_PRESYNC, "not done: it is pulled again");
	/* the next pass answers it */
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	cr_assert_eq(userstate_pass_ok(st, "alice", u.sync_seq, 0), 0);
	u = get();
	cr_assert_eq(u.sync_seq, 0);
	cr_assert_eq(u.state, US_DONE);
}

Test(userstate, verified_after_pull_keeps_the_claim_until_verification)
{
	struct user_rec u;
	int failed;

	userstate_start(st, "alice");
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	cr_assert_eq(userstate_pass_ok(st, "alice", 0, 1), 0);
	cr_assert(get().running, "the verification holds the claim");
	cr_assert_eq(userstate_claim(st, "alice", &u), USERSTATE_BUSY);
	cr_assert_eq(userstate_verified(st, "alice", 1, "pass", NULL, &retry, &failed), 0);
	u = get();
	cr_assert_not(failed);
	cr_assert_not(u.running);
	cr_assert_eq(u.state, US_VERIFIED);
}

Test(userstate, failed_pass_backs_off_then_fails)
{
	struct user_rec u;
	int failed, attempts;
	int64_t delay;

	userstate_start(st, "alice");
	for (int i = 1; i <= 3; i++) {
		cr_assert_eq(userstate_claim(st, "alice", &u), 0);
		cr_assert_eq(userstate_pass_failed(st, "alice", 0, "boom", 0, &retry, &failed,
						   &delay, &attempts), 0);
		cr_assert_eq(attempts, i);
		cr_assert_eq(failed, i == 3);
	}
	u = get();
	cr_assert_eq(u.state, US_FAILED);
	cr_assert_str_eq(u.last_error, "boom");
	cr_assert_not(u.running);
}

/* a claim taken over while its job went on (the holder's lease ran out,
   PostgreSQL with several ferryd): the late job's result is not written,
   whether the user was claimed and finished again meanwhile or not */
Test(userstate, a_late_job_of_a_taken_over_claim_writes_nothing)
{
	struct user_rec u;
	int failed, attempts;
	int64_t delay;

	userstate_start(st, "alice");
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);  /* job 1 */
	cr_assert_eq(userstate_take_over(st, "alice", ""), 1);
	cr_assert_eq(userstate_pass_failed(st, "alice", 0, "late", 0, &retry, &failed, &delay,
					   &attempts), USERSTATE_LOST);
	u = get();
	cr_assert_eq(u.state, US_PRESYNC, "due again, for whoever claims it");
	cr_assert_eq(u.attempts, 0);
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);  /* job 2 */
	cr_assert_eq(userstate_pass_ok(st, "alice", 0, 0), 0);
	u = get();
	cr_assert_eq(u.state, US_DONE);
	int64_t finished = u.finished_at;
	cr_assert_eq(userstate_pass_ok(st, "alice", 0, 0), USERSTATE_LOST, "job 1, late: done once");
	cr_assert_eq(userstate_verified(st, "alice", 1, "pass", NULL, &retry, &failed),
		     USERSTATE_LOST);
	u = get();
	cr_assert_eq(u.state, US_DONE);
	cr_assert_eq(u.finished_at, finished);
}

Test(userstate, compare_and_set_refuses_a_stale_row)
{
	struct user_rec before = get(), stale = before, now;

	cr_assert_eq(userstate_start(st, "alice"), 1);
	stale.state = US_DONE;
	cr_assert_eq(st->user_update_if(st, &stale, &before), STORE_NOTFOUND);
	now = get();
	cr_assert_eq(now.state, US_PRESYNC, "the newer write stands");
	stale = now;
	stale.state = US_DONE;
	cr_assert_eq(st->user_update_if(st, &stale, &now), 0);
	cr_assert_eq(get().state, US_DONE);
}

Test(userstate, cut_over_then_roll_back)
{
	struct user_rec u;

	userstate_start(st, "alice");
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	cr_assert_eq(userstate_cut_over(st, "alice", 7), 0);
	u = get();
	cr_assert_eq(u.state, US_CUTOVER);
	cr_assert_not(u.running, "released for the queued pull");
	cr_assert_eq(u.sync_seq, 7);
	cr_assert_eq(userstate_claim(st, "alice", &u), 0);
	cr_assert_eq(userstate_roll_back(st, "alice"), 0);
	u = get();
	cr_assert_eq(u.state, US_PRESYNC);
	cr_assert(u.running, "kept for the appends back to OLD");
	cr_assert(u.paused, "no copy pass until resumed");
	cr_assert_eq(u.sync_seq, 0);
}
