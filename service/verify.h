/* Independent verification of a migrated user: old vs new folder by folder
 * through ferryd's own IMAP client (never through the plugin).
 *
 * Which new folder each old one became is the plugin's answer, never
 * recomputed here: the rows of `doveadm ferry status` (FERRY_COL_* of
 * include/ferry-contract.h), whose old_folder is the folder's name exactly
 * as the old server's LIST shows it; excluded and skipped old folders have
 * rows of their own.
 *
 * Compared per folder: the folder set, UIDVALIDITY, the UID set, flags +
 * keywords (case-insensitive, \Recent ignored), INTERNALDATE as an
 * instant, RFC822.SIZE, and the SHA-256 of BODY[] for all messages or a
 * deterministic sample.
 * Fails: an old folder missing on new (or one the plugin does not know,
 * made on OLD after its last pass), one the plugin skipped, another
 * UIDVALIDITY, a UID missing on new or one on new below old UIDNEXT that
 * old does not have, any field difference. Reported but not failing:
 * folders excluded by the admin (ferry_exclude), folders and messages
 * (UIDs at or above old UIDNEXT) that exist only on new - users keep
 * working there.
 *
 * Blocking: runs private event_bases; call from a worker thread or child. */
#ifndef FERRY_VERIFY_H
#define FERRY_VERIFY_H

#include <jansson.h>

#include "imap-client.h"

struct verify_options {
	double sample;           /* fraction of messages whose bodies are hashed; 1 = all, 0 = none */
	unsigned sample_seed;    /* which messages a sample picks (deterministic) */
	size_t max_diffs;        /* per folder in the report (0: 50); counts are always complete */
	size_t fetch_batch;      /* UIDs per pipelined body fetch (0: 50) */
	const char *only_folder; /* verify just this folder (UTF-8, new naming), or NULL */
	/* doveadm ferry status rows of the user (a JSON array of objects,
	 * borrowed): the plugin's old name -> new name. Required. */
	const json_t *names;
};

/* The JSON report (kind, user, old, new, sample, folders[] with name,
 * old_name, result, uidvalidity, uidnext, messages, bodies_compared,
 * new_only_messages, counts, differences[]; folders_missing_on_new,
 * folders_only_on_new, folders_excluded, folders_skipped[] {name, reason},
 * result), NULL with err when a server
 * could not be reached or a command failed outright. */
json_t *ferry_verify(const struct imap_client_settings *old_set,
		     const struct imap_client_settings *new_set, const struct verify_options *opt,
		     char *err, size_t errlen);
/* 1 = pass, 0 = fail */
int ferry_verify_passed(const json_t *report);
/* Human-readable report (malloc). */
char *ferry_verify_text(const json_t *report);

#endif
