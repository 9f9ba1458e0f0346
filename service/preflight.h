/* Preflight of one user before migrating: can ferryd log in on both
 * servers, what do they offer, how much is there to copy.
 *
 * Old: login (+ identity check for impersonated logins), capabilities,
 * personal namespace and separator, per folder (EXAMINE + UID FETCH
 * RFC822.SIZE, read-only) messages, bytes, largest message; totals and an
 * estimated copy time. New: login, capabilities, namespace, quota
 * (GETQUOTAROOT when QUOTA is offered) and whether the mail fits. New's
 * folders are not listed: on a Ferry server LIST would start the
 * migration of the folder tree.
 *
 * Blocking: runs private event_bases; call from a worker thread or child. */
#ifndef FERRY_PREFLIGHT_H
#define FERRY_PREFLIGHT_H

#include <jansson.h>

#include "imap-client.h"

struct preflight_options {
	double bytes_per_second;   /* copy throughput for the estimate (0: 20 MB/s) */
	double seconds_per_message; /* per-message overhead (0: 0.005) */
};

/* JSON report; new_set may be NULL. NULL with err if old fails. */
json_t *ferry_preflight(const struct imap_client_settings *old_set,
			const struct imap_client_settings *new_set,
			const struct preflight_options *opt, char *err, size_t errlen);
int ferry_preflight_passed(const json_t *report); /* both logins worked, mail fits */
char *ferry_preflight_text(const json_t *report);

#endif
