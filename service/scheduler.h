/* Which users to pull next: pure decisions, no I/O (unit-tested); the
   functions are in sched.c. Not named sched.h: that would shadow the
   system <sched.h> for anyone compiling with -Iservice. */
#ifndef FERRY_SCHED_H
#define FERRY_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "store.h"

struct sched_limits {
	int max_concurrent;  /* all hosts */
	int max_per_host;
};

/* pulls in flight, per old host; zero-initialised, grows with the number
   of distinct hosts in flight (bounded by max_concurrent), so every add
   has its remove whatever the number of old hosts */
struct sched_running {
	int total;
	int nhosts, cap;
	struct sched_host {
		char *host;
		int n;
	} *hosts;
};

/* what scheduling needs of a user: kept in memory for every queued user
   (runq.h), so small (not a user_rec) */
struct sched_user {
	int64_t id;
	const char *name;
	const char *host;  /* old server host */
	int64_t wave_id;   /* 0: none */
	enum user_state state;
	int paused, running;
	int64_t next_attempt, sync_seq, login_at;
};

struct sched_cand {
	const struct sched_user *user;
	const struct wave_rec *wave;  /* NULL: the user is in no wave */
};

int sched_running_count(const struct sched_running *run, const char *host);
void sched_running_add(struct sched_running *run, const char *host);
void sched_running_remove(struct sched_running *run, const char *host);
void sched_running_free(struct sched_running *run);

/* minutes after local midnight -> inside [start, end) (wrapping at
   midnight); start < 0 = no window, always inside */
int sched_in_window(int win_start, int win_end, int now_minutes);

/* May this user be pulled now (ignoring concurrency)? *why_r says why not. */
int sched_eligible(const struct sched_cand *c, int global_paused, time_t now,
		   int now_minutes, const char **why_r);

/* Priority order: "sync now" first (in request order), cut-over users
   before presync users, waves in creation order (no wave last), then
   earliest next attempt, then import order. */
int sched_cmp(const struct sched_cand *a, const struct sched_cand *b);

/* Picks up to `max` eligible candidates in priority order within the
   limits, counting them into `run`; returns how many (indexes in out). */
size_t sched_pick(const struct sched_limits *lim, struct sched_cand *cands, size_t n,
		  struct sched_running *run, int global_paused, time_t now,
		  int now_minutes, size_t *out, size_t max);

/* Seconds before attempt number `failures`+1: base * 2^(failures-1),
   capped at max_delay. */
int64_t sched_backoff(int failures, int base, int max_delay);

/* "HH:MM-HH:MM" -> minutes; 0 or -1 */
int sched_parse_window(const char *s, int *start, int *end);

#endif
