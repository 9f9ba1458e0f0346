/* The admin API: HTTP + JSON on 127.0.0.1 (evhttp), bearer token. Every
   ferryctl action is an endpoint (list in docs/ferryd.md). */
#ifndef FERRY_API_H
#define FERRY_API_H

#include "config.h"
#include "store.h"

struct event_base;
struct api;

typedef void api_kick_cb(void *ctx);  /* something became runnable */

struct api *api_new(struct event_base *base, struct store *st,
		    const struct ferry_config *cfg, api_kick_cb *kick, void *ctx,
		    char **err_r);
/* (re)reads the token and secret key files; -1 with *err_r */
int api_load_secrets(struct api *a, const struct ferry_config *cfg, char **err_r);
/* applies settings that can change on SIGHUP (body limit) */
void api_reconfigure(struct api *a, const struct ferry_config *cfg);
void api_free(struct api *a);
/* serves the cut-over, rollback and routing endpoints (cutover.h) */
struct cutover;
void api_set_cutover(struct api *a, struct cutover *cutover);
/* serves the preflight, verify, check and endpoint endpoints (checks.h) */
struct checks;
void api_set_checks(struct api *a, struct checks *checks);
/* serves GET and POST /v1/dns (dns.h) */
struct dns;
void api_set_dns(struct api *a, struct dns *dns);
/* serves POST /v1/sieve (sieve_step.h) */
struct sieve_step;
void api_set_sieve(struct api *a, struct sieve_step *sieve);
/* the user totals and pages /v1/status answers from (tally.h) */
struct tally;
void api_set_tally(struct api *a, struct tally *tally);

/* "1700000000", "2025-01-31", "2025-01-31T08:00[:SS]" or "... 08:00" (local
   time), or "90s" "10m" "2h" "3d" ago. -1 if invalid. */
long long api_parse_time(const char *s, long long now);

#endif
