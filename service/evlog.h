/* ferryd's own log: one line per event, key=value, parseable:
     time=2025-11-28T16:10:00.123Z level=info event=pull-done user=alice folder=INBOX copied=20
   A value is quoted ("...", with \" \\ \n escapes) when it has spaces,
   quotes, '=' or is empty. Never pass credentials. */
#ifndef FERRY_EVLOG_H
#define FERRY_EVLOG_H

#include <stddef.h>

int evlog_open(const char *path);  /* NULL/"" = stderr; reopen on SIGHUP */
void evlog_close(void);
/* key/value string pairs, NULL-terminated; NULL values are skipped */
void evlog(const char *level, const char *event, ...);
/* appends key=value (quoted as needed) to buf; returns the new length */
size_t evlog_format_kv(char *buf, size_t len, size_t pos, const char *key, const char *value);
/* Sees every event after it is written (metrics.c counts from them, so an
   event is counted exactly where it is logged): kv holds n key/value
   pairs (NULL values skipped). */
typedef void evlog_observer_fn(const char *level, const char *event,
			       const char *const *kv, size_t n);
void evlog_set_observer(evlog_observer_fn *fn);

#endif
