/* A wave's migration report (the runbook's migration log, CSV or JSON),
   DNS change times noted by the administrator, and the throughput series
   the dashboard charts; all read from the store (docs/ferryd.md,
   "Report"). */
#ifndef FERRY_REPORT_H
#define FERRY_REPORT_H

#include <jansson.h>

#include "store.h"

/* The report of a wave (NULL: every user) as JSON; NULL with *code_r and
   *err_r set (404 unknown wave, 500 store). */
json_t *report_json(struct store *st, const char *wave, int *code_r, char *err,
		    size_t errlen);
/* The same report as CSV (malloc'd text, one row per user, then one per
   DNS change); NULL as above. */
char *report_csv(const json_t *report);

/* POST /v1/report/dns {"wave", "at"?, "note"}: the time DNS was changed
   for a wave (default now), as the administrator states it; GET
   /v1/throughput?wave=W&step=S: messages copied per S seconds. The
   checks_api()-style entry: an HTTP code and a JSON answer. */
int report_api(struct store *st, const char *path, json_t *args, json_t **out);

#endif
