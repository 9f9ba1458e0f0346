/* The one owner of a user's state in ferryd (docs/ferryd.md, "User
   states"). Dispatch, checks, cut-over and the admin API change a user only
   through these transitions; each is a compare-and-set in the store
   (store->user_update_if: the row still has the state, running flag, sync
   request and pause it was read with), retried on a lost race, so no writer
   overwrites what another wrote meanwhile.

   running is the user's claim: a pull (and the verification after it), a
   cut-over's or rollback's doveadm calls hold it; one claim per user.
   sync_seq > 0 is a queued "sync now"; a request that arrives while a job
   runs survives the job's end and is carried out afterwards. */
#ifndef FERRY_USERSTATE_H
#define FERRY_USERSTATE_H

#include <stdint.h>

#include "store.h"

#define USERSTATE_BUSY 2  /* the claim is held by another job */
/* A job's own transition (release, pass_ok, pass_failed, verified after a
   pull) found its claim gone: taken over when this ferryd's lease ran out
   (PostgreSQL, several ferryd), released or held by another: nothing
   written. */
#define USERSTATE_LOST 3
#define USERSTATE_NOTDUE 4  /* userstate_claim_pull: no longer due */
/* The event line of a job that got USERSTATE_LOST (its result is dropped:
   the ferryd that took the user over reports its own pass) */
void userstate_log_lost(const char *user);

struct userstate_retry {
	int limit, base, max_delay;  /* retry_limit, retry_base, retry_max_delay */
};

/* Called after every transition written (the user's name), so a cache of
   user states (runq.h) follows them without re-reading the store; one
   observer, NULL: none. */
typedef void userstate_observer(const char *user, void *ctx);
void userstate_set_observer(userstate_observer *fn, void *ctx);
/* Several ferryd on one PostgreSQL: the users another ferryd wrote since
   the last poll (imports included) are told to the observer like this
   one's own transitions; 0 on a store without peers, -1 on a store error */
int userstate_poll_peers(struct store *st);

/* pending/failed -> presync (ferryctl start); 1 changed, 0 not, -1 error */
int userstate_start(struct store *st, const char *user);
int userstate_set_paused(struct store *st, const char *user, int paused);
int userstate_set_wave(struct store *st, const char *user, const char *wave);
/* "sync now": queued with the next sequence number; a finished user goes
   back to presync (cut-over users stay cutover). *running_r: a job holds
   the user now (the sync follows it). login: asked for by the user's
   login (the plugin): recorded (login_at) and pulled ahead of every other
   user. 0, STORE_NOTFOUND or -1. */
int userstate_request_sync(struct store *st, const char *user, int login,
			   int *running_r);

/* Takes the user's claim (running 0 -> 1). *u_r: the user as claimed (its
   sync_seq is what this job carries out). 0, USERSTATE_BUSY, STORE_NOTFOUND
   or -1. */
int userstate_claim(struct store *st, const char *user, struct user_rec *u_r);
/* The same for a pull: only a user still due (presync or cutover, not
   paused, no retry pending), else USERSTATE_NOTDUE. */
int userstate_claim_pull(struct store *st, const char *user, struct user_rec *u_r);
/* Gives the claim back, nothing else changed (cancelled, restarted). */
int userstate_release(struct store *st, const char *user);

/* A copy pass ended well. verify: a verification follows (the claim stays).
   Otherwise the claim is released and the user is done, unless a sync was
   requested during the pass (then it stays presync/cutover and is pulled
   again). seq: the sync_seq the pass started with. */
int userstate_pass_ok(struct store *st, const char *user, int64_t seq, int verify);
/* A copy pass failed: retried with backoff, or failed for good (permanent
   or retry limit); *failed_r = 1 then, *delay_r the backoff. Releases. */
int userstate_pass_failed(struct store *st, const char *user, int64_t seq,
			  const char *error, int permanent, const struct userstate_retry *r,
			  int *failed_r, int64_t *delay_r, int *attempts_r);
/* A verification ended: result "pass", "fail" or NULL (could not run).
   after_pull: it held the pass's claim (released now). A verification
   that passed makes the user verified: ready for cut-over. */
int userstate_verified(struct store *st, const char *user, int after_pull,
		       const char *result, const char *error, const struct userstate_retry *r,
		       int *failed_r);

/* Inside the cut-over's transaction: the member is routed to NEW, queued
   for a pull at sync-now priority (seq), claim released. */
int userstate_cut_over(struct store *st, const char *user, int64_t seq);
/* Inside the rollback's transaction: back to presync and paused (no copy
   pass until ferryctl resume), the claim kept for the appends back to OLD. */
int userstate_roll_back(struct store *st, const char *user);

/* Several ferryd on one PostgreSQL (docs/ferryd.md): the claim a job
   takes (userstate_claim) carries st->node as its holder and a lease of
   st->lease seconds, renewed by userstate_renew while the job runs.
   userstate_take_over releases the claim of `holder` if its lease is still
   over (running 1 -> 0): 1 taken, 0 not (renewed, released or gone), -1. */
int userstate_take_over(struct store *st, const char *user, const char *holder);
/* every claim of this node renewed for st->lease seconds: how many, -1 */
int userstate_renew(struct store *st);

/* The next "sync now" sequence number (a setting in the store). */
int64_t userstate_next_seq(struct store *st);

#endif
