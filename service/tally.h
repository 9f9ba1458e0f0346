/* ferryd's user totals kept in memory (docs/ferryd.md, "Status and metrics
   at scale"): users, pause and run flags, and the folders' message counts
   per wave and state, and the users in id order (the status pages). Loaded
   once at start; afterwards each user that userstate's transitions (the
   one owner of a user's state) or the dispatcher's folder writes changed is
   read again once, soon after (a zero-timeout event, so a transition inside
   a transaction that was rolled back reads the truth), and the totals are
   moved by the difference. `/v1/status` and `/metrics` read these, never
   the whole users table. */
#ifndef FERRY_TALLY_H
#define FERRY_TALLY_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct event_base;
struct tally;

/* users a status request or a scrape reads before answering, at most (the
   rest stay for the background refresh) */
#define TALLY_REQUEST_MAX 64

struct tally_count {
	int64_t wave_id;        /* 0: in no wave */
	enum user_state state;
	int64_t users, paused, running;
	int64_t queued;         /* presync/cutover, not running, not paused */
	int64_t old_messages, messages, copied;  /* unknown (< 0) as 0 */
};

/* base NULL: changes are read only by tally_refresh (unit tests) */
struct tally *tally_new(struct store *st, struct event_base *base);
void tally_free(struct tally *t);
/* every user and folder, once (at start); -1 on a store error */
int tally_load(struct tally *t);
/* the user's row changed (userstate observer) / its folders changed */
void tally_touch(struct tally *t, const char *user);
void tally_touch_folders(struct tally *t, const char *user);
/* reads the changed users now (at most max of them, oldest first; 0: all);
   -1 on a store error (they stay pending) */
int tally_refresh(struct tally *t, size_t max);
/* changed users not read yet (their change is not in the totals) */
size_t tally_pending(const struct tally *t);

/* the totals, one call per wave and state with users (wave_id < 0: all) */
int tally_counts(struct tally *t, int64_t wave_id,
		 int (*cb)(const struct tally_count *c, void *ctx), void *ctx);
/* the users matching wave_id (< 0: any) and state (< 0: any), in id order:
   cb for the limit users from offset; returns how many match (-1 if cb
   failed) */
int64_t tally_page(struct tally *t, int64_t wave_id, int state, int64_t offset,
		   int limit, int (*cb)(const char *user, void *ctx), void *ctx);
/* users known */
size_t tally_users(const struct tally *t);

#endif
