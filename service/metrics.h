/* Prometheus metrics, health and readiness (docs/ferryd.md, "Metrics").
   Counters and histograms are counted from the event log as each event is
   written (evlog_set_observer); gauges are read from the user totals (tally.h) and the
   scheduler's slot accounting when /metrics is scraped. No label names a
   user: labels are states, waves, old hosts, results and reason classes. */
#ifndef FERRY_METRICS_H
#define FERRY_METRICS_H

#include "scheduler.h"
#include "store.h"

struct evhttp_request;

/* Starts counting (installs the event log observer). */
void metrics_init(void);
/* What the gauges and /readyz read: the store, the user totals kept in
   memory (tally.h), the old-server slots held by pulls and checks, and
   whether ferryd is shutting down. */
struct tally;
void metrics_set_sources(struct store *st, struct tally *tally,
			 const struct sched_running *run, const int *draining);
/* Answers GET /metrics, /healthz and /readyz (no token: they show no
   user, password or token). Returns 1 if the path was one of them. */
int metrics_serve(struct evhttp_request *req, const char *path);

/* The bounded class of a failure's text: auth, connect, timeout,
   unknown-user, verify, incomplete, doveadm or other. */
const char *metrics_reason_class(const char *error);

#endif
