/* The old server, seen through Dovecot's own IMAP client storage (imapc:)
   in a second mail_user that shares the real user's settings: imapc_host,
   imapc_user, imapc_master_user... and their per-user userdb overrides.
   It is opened only when a folder still needs copying, so a finished user
   never connects. */

#include "lib.h"
#include "str.h"
#include "mail-namespace.h"
#include "mail-storage-settings.h"
#include "imapc-settings.h"
#include "imapc-storage.h"
#include "imapc-list.h"
#include "imapc-client-private.h"
#include "ferry-plugin.h"

#define FERRY_MAX_LINE (64 * 1024 * 1024)

/* the real user's ferry_old_connect_timeout, for ferry_old_list_created()
   while its old user is being created */
static unsigned int ferry_old_connect_msecs;

int ferry_old_user_get(struct mail_user *user, struct mail_user **old_r,
		       const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_user *old;
	struct mail_storage_settings *mail_set;
	const char *error;

	if (fuser->old_user != NULL) {
		*old_r = fuser->old_user;
		return 0;
	}

	old = mail_user_dup(user);
	ferry_creating_old_user = TRUE;
	int ret = mail_user_init(old, &error);
	ferry_creating_old_user = FALSE;
	if (ret < 0) {
		*error_r = t_strdup_printf("old server session: %s", error);
		mail_user_deinit(&old);
		return -1;
	}
	/* The old session fetches ahead so that bodies arrive in pipelined
	   UID ranges instead of one round trip per message. This user's
	   settings are a private copy, so the change stays here. */
	mail_set = (struct mail_storage_settings *)
		mail_user_set_get_storage_set(old);
	mail_set->mail_prefetch_count = fuser->set.prefetch_count;
	/* Sizes come from RFC822.SIZE: without it imapc would download a
	   body to learn its size, and large bodies are fetched in ranges. */
	struct imapc_settings *imapc_set = (struct imapc_settings *)
		mail_user_set_get_driver_settings(old->set_info, old->set,
						  "imapc");
	imapc_set->parsed_features |= IMAPC_FEATURE_RFC822_SIZE;
	/* Bodies come in ranges of at most 1 MiB (old-body.c) and small
	   messages whole: a line or literal beyond this is a server gone
	   wrong, and imapc would buffer it whole (measured: 518 MB for a
	   literal claiming 1 TiB). */
	if (imapc_set->imapc_max_line_length == 0 ||
	    imapc_set->imapc_max_line_length > FERRY_MAX_LINE)
		imapc_set->imapc_max_line_length = FERRY_MAX_LINE;

	/* Connect at the first command, not while the list is created:
	   ferry_old_list_created() must set the connect timeout first. */
	imapc_set->parsed_features |= IMAPC_FEATURE_DELAY_LOGIN;
	ferry_old_connect_msecs = fuser->set.old_connect_timeout_secs * 1000;

	ferry_creating_old_user = TRUE;
	ret = mail_namespaces_init_location(old, "imapc:", &error);
	ferry_creating_old_user = FALSE;
	if (ret < 0) {
		*error_r = t_strdup_printf("old server: %s", error);
		mail_user_deinit(&old);
		return -1;
	}
	fuser->old_user = old;
	*old_r = old;
	return 0;
}

/* Dovecot 2.3 has no setting for imapc's connect + greeting timeout (a
   fixed 30 s): an old server that accepts and stays silent would hold
   every LMTP delivery and SELECT that long. Called for the old user's
   lists as they are created, before the first connect. */
void ferry_old_list_created(struct mailbox_list *list)
{
	if (strcmp(list->name, MAILBOX_LIST_NAME_IMAPC) != 0)
		return;
	((struct imapc_mailbox_list *)list)->client->client->set.connect_timeout_msecs =
		ferry_old_connect_msecs;
}
