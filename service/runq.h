/* The users ferryd may pull, kept in memory by when they are due (the
   idiom of OpenSMTPD's scheduler_ramqueue): loaded once at start, then
   kept true by userstate's transitions (userstate_set_observer), never
   re-read whole. A tick costs what it decides plus the users that became
   due, not the number of users waiting:
   - "sync now" users in one heap (request order);
   - per wave, one heap of cut-over users and one of presync users (the
     order of sched_cmp); a wave that may not run now (paused, not started,
     outside its window) is skipped whole;
   - users waiting to retry in a heap by next attempt, moved to their
     wave's heap when due; runq_next_due says when to wake up.
   Running, paused and finished users are in no heap (finished ones are
   forgotten until a transition brings them back). */
#ifndef FERRY_RUNQ_H
#define FERRY_RUNQ_H

#include <stddef.h>
#include <time.h>

#include "scheduler.h"
#include "store.h"

struct runq;

struct runq *runq_new(struct store *st);
void runq_free(struct runq *q);
/* every user of the store, once (at start); -1 on a store error */
int runq_load(struct runq *q);
/* this user changed in the store: read again before the next pick (a
   transition inside a transaction that is rolled back reads the truth) */
void runq_touch(struct runq *q, const char *user);
/* the userstate observer's signature: ctx is the runq */
void runq_touch_cb(const char *user, void *ctx);

/* start a pull of user: 0 started (its slot counted in run), -1 not, 1
   not now: the old host's slots are all held by other ferryd (the user
   stays queued; that host is not asked again in this pick) */
typedef int runq_start_fn(const char *user, const char *host, void *ctx);

/* Starts the due users in priority order within the limits (slots counted
   in run, released by the caller when the pull ends); returns how many
   started, -1 on a store error. */
int runq_pick(struct runq *q, const struct sched_limits *lim, struct sched_running *run,
	      time_t now, int now_minutes, runq_start_fn *start, void *ctx);
/* epoch seconds of the next waiting user's retry, 0 if none */
time_t runq_next_due(const struct runq *q);
/* users in the queue (due, waiting or running) */
size_t runq_count(const struct runq *q);

#endif
