/* Preflight and verification runs of ferryd (docs/ferryd.md): each run is a
   child process, ferry-imapcheck from ferryd's own directory, fed the
   credentials on its stdin and read (JSON on stdout) through bufferevents,
   with a deadline, so the event loop never blocks. Runs count against the
   same per-old-host limit as pulls; the report is stored (store.h
   check_rec), the user's state follows a verification. */
#ifndef FERRY_CHECKS_H
#define FERRY_CHECKS_H

#include <jansson.h>

#include "config.h"
#include "scheduler.h"
#include "store.h"

struct event_base;
struct checks;

/* a run ended: its old host's slot is free again */
typedef void checks_done_cb(const char *host, void *ctx);

/* dc: NEW's doveadm HTTP API, where a verification asks the plugin which
   new folder each old one became (ferryStatus) */
struct doveadm_client;
struct checks *checks_new(struct event_base *base, struct store *st,
			  struct doveadm_client *dc, const struct ferry_config *cfg,
			  checks_done_cb *cb, void *ctx);
void checks_free(struct checks *ch);
/* (Re)reads secret_key_file and the master password files (all or none;
   config_read_private's rules). At start, before a privilege drop, and at
   SIGHUP: runs use these copies, so root-owned files work after the drop. */
int checks_load_secrets(struct checks *ch, const struct ferry_config *cfg, char **err_r);

/* Can ferryd log in for this user on both servers (master or CSV password)? */
int checks_can_verify(struct checks *ch, const struct user_rec *u);
/* Queues a run (kind "preflight" or "verify"); one per user and kind.
   after_pull: the user's pulls just completed (running stays set until the
   verification ends). 0, or -1 (logged). */
int checks_queue(struct checks *ch, const struct user_rec *u, const char *kind, int after_pull);
/* Starts queued runs, each once take() gave it an old-host slot (1; 0:
   none now); the done callback gives it back. */
typedef int checks_slot_take_cb(const char *host, void *ctx);
void checks_start_queued(struct checks *ch, checks_slot_take_cb *take, void *ctx);
/* a verification after this user's pulls holds the user's claim here */
int checks_holds(struct checks *ch, const char *user);
int checks_running(const struct checks *ch);
/* A run that waits before it may start (a sieve run waits for its folder
   map): 0 queued, 1 one is already queued or running, -1 error.
   checks_release() lets it start with map, or ends it with error. */
int checks_queue_held(struct checks *ch, const struct user_rec *u, const char *kind);
void checks_release(struct checks *ch, const char *user, const char *kind, const char *map,
		    const char *error);
/* A sieve run that makes script OLD's active one again (rollback); 0, 1
   if a sieve run is queued or running, -1 error. */
int checks_queue_sieve_restore(struct checks *ch, const struct user_rec *u, const char *script);
/* Drops queued runs (draining): users verifying after their pulls are
   pulled and verified again at the next start. */
void checks_drop_queued(struct checks *ch);
/* Kills the runs in flight (drain timeout). */
void checks_cancel_all(struct checks *ch);

/* Admin API: "POST /v1/verify", "POST /v1/preflight", "GET /v1/check",
   "POST /v1/endpoint"; HTTP code, *out the JSON answer. */
int checks_api(struct checks *ch, const char *path, json_t *args, json_t **out);

#endif
