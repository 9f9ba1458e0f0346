/* Drives the copy of one user through the doveadm HTTP API and records
   what happened (folders, migration log, user state). Never writes mail. */
#ifndef FERRY_DISPATCH_H
#define FERRY_DISPATCH_H

#include "config.h"
#include "doveadm.h"
#include "store.h"

struct dispatch;

/* called when a user's job ends (success, failure or cancel) */
typedef void dispatch_done_cb(const char *user, const char *host, void *ctx);

struct dispatch *dispatch_new(struct store *st, struct doveadm_client *dc,
			      const struct ferry_config *cfg,
			      dispatch_done_cb *cb, void *ctx);
void dispatch_free(struct dispatch *d);
/* starts a job; -1 if it could not be started (logged) */
int dispatch_start(struct dispatch *d, const char *user);
int dispatch_in_flight(const struct dispatch *d);
/* a job of this user is in flight here */
int dispatch_has(const struct dispatch *d, const char *user);
/* Called when a user's folders are all complete: 1 = a verification was
   queued (the user stays running in its state until it ends), 0 = the user
   is done. */
typedef int dispatch_complete_cb(const struct user_rec *u, void *ctx);
void dispatch_set_complete_cb(struct dispatch *d, dispatch_complete_cb *cb, void *ctx);
/* Called after the user's folder rows were written (the user's name), so
   the totals kept in memory (tally.h) follow them; NULL: none. */
typedef void dispatch_folders_cb(const char *user, void *ctx);
void dispatch_set_folders_cb(struct dispatch *d, dispatch_folders_cb *cb, void *ctx);
/* drops every job in flight (drain timeout): users stay resumable */
void dispatch_cancel_all(struct dispatch *d);

#endif
