/* A user's Sieve scripts from the old server to NEW, over ManageSieve on
 * both sides (managesieve.h):
 *  - every script is read from OLD (LISTSCRIPTS, GETSCRIPT);
 *  - folder names in `fileinto` are rewritten with the folder map (old
 *    name -> new name, as the plugin reports it: doveadm ferry status), so
 *    filters file into the folders the mail went to; vacation, redirect and
 *    everything else is kept byte for byte;
 *  - each is stored on NEW with PUTSCRIPT, which compiles it with NEW's
 *    Sieve compiler: a script that does not compile is kept on NEW as a
 *    commented-out copy (the error on top, every original line after "# "),
 *    never activated, and reported;
 *  - OLD's active script becomes NEW's active one when it compiled.
 * Blocking: run from a child (ferry-imapcheck sieve). */
#ifndef FERRY_SIEVE_H
#define FERRY_SIEVE_H

#include <jansson.h>
#include <stddef.h>

#include "imap-client.h"

struct sieve_folder_map {
	const char **old_names, **new_names;
	size_t n;
	const char *old_prefix; /* also try PREFIX+name (Cyrus/Courier "INBOX.") */
};

struct sieve_rewrite {
	char *from, *to; /* to NULL: left as it was (reason in note) */
	const char *note;
};
struct sieve_rewrites {
	struct sieve_rewrite *v;
	size_t n;
};

/* The script with every fileinto folder mapped (malloc); NULL on a script
 * the tokenizer cannot follow (err says where; out is then empty): it is
 * then stored as is. */
char *sieve_rewrite_fileinto(const char *script, const struct sieve_folder_map *map,
			     struct sieve_rewrites *out, char *err, size_t errlen);
void sieve_rewrites_free(struct sieve_rewrites *r);
/* The commented-out form of a script NEW refused (malloc). */
char *sieve_disabled_copy(const char *script, const char *error);

struct sieve_migrate_options {
	/* scripts that exist on NEW with other text are left alone (the user
	 * changed them there after the cut-over) */
	int keep_new;
	/* once NEW's active script is OLD's, switch OLD's off (a cut-over
	   user: stragglers reaching OLD get no second vacation reply or
	   redirect); the report names it (old_deactivated) for a rollback */
	int deactivate_old;
};

/* JSON report: {"user", "old_active", "new_active", "scripts": [...],
 * "failed": n, "passed": bool}; NULL with err if a server could not be
 * reached or refused the login. */
json_t *ferry_sieve_migrate(const struct imap_client_settings *old_set,
			    const struct imap_client_settings *new_set,
			    const struct sieve_folder_map *map,
			    const struct sieve_migrate_options *opt, char *err, size_t errlen);
/* Rollback: make `name` (or none, "") OLD's active script again. */
int ferry_sieve_set_active(const struct imap_client_settings *set, const char *name, char *err,
			   size_t errlen);
int ferry_sieve_passed(const json_t *report);
char *ferry_sieve_text(const json_t *report);

#endif
