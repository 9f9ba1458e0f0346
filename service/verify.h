/* Independent verification of a migrated user: old vs new folder by folder
 * through ferryd's own IMAP client (never through the plugin).
 *
 * Compared per folder: the folder set (selectable folders, names mapped
 * level by level from the old separator to the new one), UIDVALIDITY, the
 * UID set, flags + keywords (case-insensitive, \Recent ignored),
 * INTERNALDATE as an instant, RFC822.SIZE, and the SHA-256 of BODY[] for
 * all messages or a deterministic sample.
 * Fails: a folder missing on new, another UIDVALIDITY, a UID missing on
 * new or one on new below old UIDNEXT that old does not have, any field
 * difference. Reported but not failing: folders and messages (UIDs at or
 * above old UIDNEXT) that exist only on new - users keep working there.
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
	/* Old-server prefix to strip before mapping, in old naming, e.g.
	 * "INBOX." for Cyrus (altnamespace: no) and Courier, "INBOX/" for
	 * Cyrus with unixhierarchysep: yes - where Ferry's NEW (imapc_list_prefix)
	 * keeps those folders at the top level. "INBOX" is the same as "INBOX"
	 * plus the old separator; its "INBOX" matches case-insensitively.
	 * Folders outside the prefix (INBOX itself) keep their names; a folder
	 * that would become "INBOX" is not representable. NULL or "": none. */
	const char *old_prefix;
};

/* The new-side name of an old folder (malloc): old_prefix stripped, then
 * mapped level by level from osep to nsep. *lossy = 1 when a level holds
 * nsep or the result would be INBOX (not representable on new). */
char *ferry_verify_map_name(const char *old_name, char osep, char nsep, const char *old_prefix,
			    int *lossy);

/* The JSON report (kind, user, old, new, sample, folders[] with name,
 * old_name, result, uidvalidity, uidnext, messages, bodies_compared,
 * new_only_messages, counts, differences[]; folders_missing_on_new,
 * folders_only_on_new, folders_not_representable, result), NULL with err when a server
 * could not be reached or a command failed outright. */
json_t *ferry_verify(const struct imap_client_settings *old_set,
		     const struct imap_client_settings *new_set, const struct verify_options *opt,
		     char *err, size_t errlen);
/* 1 = pass, 0 = fail */
int ferry_verify_passed(const json_t *report);
/* Human-readable report (malloc). */
char *ferry_verify_text(const json_t *report);

#endif
