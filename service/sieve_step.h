/* ferryd's Sieve step (docs/ferryd.md, "Sieve"): a user's scripts from the
   old server's ManageSieve to NEW's, run as a ferry-imapcheck child by
   checks.c (kind "sieve": credentials, per-host slots, stored report).
   Before the run starts, NEW's plugin is asked which new folder each old
   one became (doveadm ferry status, column old_folder): that map is what
   fileinto targets are rewritten with. After a user's pulls complete
   (sieve_after_pull = yes) and on `ferryctl sieve USER`. */
#ifndef FERRY_SIEVE_STEP_H
#define FERRY_SIEVE_STEP_H

#include <jansson.h>

#include "checks.h"
#include "config.h"
#include "doveadm.h"
#include "store.h"

struct sieve_step;
typedef void sieve_kick_cb(void *ctx); /* a run may start now */

struct sieve_step *sieve_step_new(struct store *st, struct doveadm_client *dc,
				  struct checks *ch, const struct ferry_config *cfg,
				  sieve_kick_cb *kick, void *ctx);
void sieve_step_free(struct sieve_step *s);
/* Queues the user's Sieve run; 0, or -1 with why. */
int sieve_step_user(struct sieve_step *s, const struct user_rec *u, char *why, size_t wl);
/* A rolled-back user: if its last Sieve run switched OLD's active script
   off (cut over: --deactivate-old), a run makes it active again. */
void sieve_step_rollback(const char *user);
/* "POST /v1/sieve" {"user"} -> 202; the report: GET /v1/check?kind=sieve */
int sieve_step_api(struct sieve_step *s, const char *path, json_t *args, json_t **out);

#endif
