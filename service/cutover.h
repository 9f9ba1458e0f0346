/* Phased cut-over of waves (docs/routing.md, docs/runbook.md).

   Both first take every member's claim (userstate.h): a member whose pull
   or verification is running is waited for ("cutover-waiting"), so no two
   jobs ever act on one user; each doveadm call holds an old-host slot.
   cutover WAVE:  prechecks (every member had a successful copy pass, the
                  newest at most max_age old; none failed), then a final
                  presync pass (ferrySync, userdb still says presync) per
                  member, then the routing of every member flips to NEW in
                  ONE transaction (ferry_passdb/ferry_transport stop naming
                  OLD, ferry_userdb says cutover) with each member queued
                  for an immediate pull at "sync now" priority, then a
                  stragglers pass (ferrySync in cutover mode) for what
                  reached OLD before the flip. A failed final pass aborts
                  the cut-over with nothing changed, unless forced.
   rollback WAVE: routing back to OLD in one transaction, then
                  ferryRollback per member (mail that arrived on NEW since
                  its folders were copied is appended back to OLD).
   Both are recorded in the migration log per member. */
#ifndef FERRY_CUTOVER_H
#define FERRY_CUTOVER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "doveadm.h"
#include "store.h"

/* default precheck: the newest successful copy pass at most a day old */
#define CUTOVER_DEFAULT_MAX_AGE 86400

/* Seconds between the routing flip and the stage after it (stragglers
   pass; ferryRollback). Postfix's queue manager caches its last address
   resolution for 30 s (resolve_clnt.c, not configurable), so mail for a
   user may still take the old route that long after a flip. */
#define CUTOVER_DEFAULT_SETTLE 35

struct event_base;
struct cutover;
typedef void cutover_kick_cb(void *ctx);  /* users became runnable */
/* The old-host slots every job kind shares (ferryd's accounting): take one
   for a doveadm call that reaches HOST (1 = taken, 0 = none free: wait
   for cutover_pump), release it when the call answered. */
typedef int cutover_slot_take_cb(const char *host, void *ctx);
typedef void cutover_slot_release_cb(const char *host, void *ctx);

struct cutover *cutover_new(struct event_base *base, struct store *st,
			    struct doveadm_client *dc, const struct ferry_config *cfg,
			    cutover_kick_cb *kick, cutover_slot_take_cb *slot_take,
			    cutover_slot_release_cb *slot_release, void *ctx);
/* Moves operations waiting for a member's running job or for a slot on. */
void cutover_pump(struct cutover *c);
void cutover_free(struct cutover *c);

/* The admin API's cut-over endpoints (api.c routes them here):
     POST /v1/cutover       {"wave", "at"?, "force"?, "max_age"?, "settle"?}
     POST /v1/rollback      {"wave", "settle"?}
     GET  /v1/cutover       ?wave=W
     POST /v1/route/config  {"new_transport"?, "endpoint"?, "pop3_port"?, "transport"?}
     GET  /v1/route         ?user=U | ?wave=W
   args is the body (POST) or the query as an object of strings (GET).
   Returns the HTTP status; *reply_r is the JSON answer (new reference). */
int cutover_api(struct cutover *c, const char *path, json_t *args, json_t **reply_r);

/* starts the scheduled cut-overs that are due */
void cutover_tick(struct cutover *c, time_t now);
/* operations (cut-overs, rollbacks) in progress */
int cutover_in_flight(const struct cutover *c);

/* ---- pure decisions (cutover_check.c, unit-tested) ---- */

/* Why this member may not be cut over now (written to buf), or NULL if it
   may. last_pass: time of its newest successful copy pass, -1 = none. */
const char *cutover_precheck_user(const struct user_rec *u, int64_t last_pass,
				  int64_t max_age, time_t now, char *buf, size_t len);
/* "45s" "12m" "3h" "2d" */
void cutover_format_age(int64_t secs, char *buf, size_t len);

#endif
