/* The old server, seen through Dovecot's own IMAP client storage (imapc:)
   in a second mail_user that shares the real user's settings: imapc_host,
   imapc_user, imapc_master_user... and their per-user userdb overrides.
   It is opened only when a folder still needs copying, so a finished user
   never connects. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "mail-namespace.h"
#include "imapc-storage.h"
#include "imapc-mail.h"
#include "imapc-client-private.h"
#include "ferry-plugin.h"

/* Once per user: the proof is remembered in the user's state, keyed by
   master and server; a failure is remembered for this process. */
static int ferry_old_prove_identity(struct mail_user *user,
				    struct mail_user *old, const char *key,
				    const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct imapc_client *client = ferry_old_storage_client(old)->client;
	const char *error;
	bool permanent;

	if (fuser->identity != NULL && strcmp(fuser->identity, key) == 0)
		return 0;
	if (ferry_old_identity_check(user, old, &permanent, &error) < 0) {
		*error_r = t_strdup_printf("old server %s:%u: %s",
			ferry_imapc_host(client), ferry_imapc_port(client),
			error);
		if (permanent) {
			/* a security event: someone else's mailbox, or a
			   master password about to go out as a LOGIN */
			i_error(FERRY_LOG_PREFIX "event=identity-failed "
				"security=yes server=%s:%u master=%s reason=%s",
				ferry_imapc_host(client),
				ferry_imapc_port(client),
				ferry_imapc_master_user(client), error);
			fuser->old_refused = TRUE;
			fuser->identity_error = p_strdup(user->pool, *error_r);
		}
		return -1;
	}
	i_info(FERRY_LOG_PREFIX "event=identity-ok server=%s:%u master=%s",
	       ferry_imapc_host(client), ferry_imapc_port(client),
	       ferry_imapc_master_user(client));
	if (strchr(key, '\n') != NULL)
		return 0;
	fuser->identity = p_strdup(user->pool, key);
	if (ferry_user_state_write(user, &error) < 0)
		i_error(FERRY_LOG_PREFIX "%s", error);
	return 0;
}

int ferry_old_user_get(struct mail_user *user, struct mail_user **old_r,
		       const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_user *old;
	const char *identity_key;
	bool refused;

	if (fuser->old_user != NULL) {
		*old_r = fuser->old_user;
		return 0;
	}
	if (fuser->identity_error != NULL) {
		*error_r = fuser->identity_error;
		return -1;
	}
	/* never more old-server sessions than ferry_parallel */
	ferry_bg_need_old(user);
	if (ferry_old_user_create(user, &old, &identity_key, &refused,
				  error_r) < 0) {
		if (refused)
			fuser->old_refused = TRUE;
		return -1;
	}
	if (identity_key != NULL &&
	    ferry_old_prove_identity(user, old, identity_key, error_r) < 0) {
		mail_user_deinit(&old);
		return -1;
	}
	fuser->old_user = old;
	*old_r = old;
	return 0;
}

struct imapc_storage_client *ferry_old_storage_client(struct mail_user *old)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(old->namespaces);
	struct imapc_storage *storage = IMAPC_STORAGE(ns->storage);

	return storage->client;
}

/* Keeps the old server busy while this process saves: imapc sends the
   bodies its search prefetches only when it next waits for one, i.e. once
   every message of the FETCH in flight was saved, and the old server then
   idles while this process saves the last of them and waits for the first
   of the next. Sending the next FETCH once it has half a prefetch window
   of messages keeps one in flight while this process saves the other. */
void ferry_old_fetch_ahead(struct mailbox *obox, unsigned int prefetch_count)
{
	struct imapc_mailbox *mbox = IMAPC_MAILBOX(obox);
	unsigned int half = I_MAX(prefetch_count / 2, 1);

	if (mbox->pending_fetch_request != NULL &&
	    array_count(&mbox->pending_fetch_request->mails) >= half)
		imapc_mail_fetch_flush(mbox);
}
