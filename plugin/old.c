/* The old server, seen through Dovecot's own IMAP client storage (imapc:)
   in a second mail_user that shares the real user's settings: imapc_host,
   imapc_user, imapc_master_user... and their per-user userdb overrides.
   It is opened only when a folder still needs copying, so a finished user
   never connects. */

#include "lib.h"
#include "str.h"
#include "mail-namespace.h"
#include "mail-storage-service.h"
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

static int ferry_old_master_mechanisms(struct imapc_settings *imapc_set,
				       const char **error_r)
{
	const char *mechs = imapc_set->imapc_sasl_mechanisms;

	if (*mechs == '\0') {
		imapc_set->imapc_sasl_mechanisms = "plain";
		return 0;
	}
	if (strcasecmp(mechs, "plain") == 0)
		return 0;
	*error_r = t_strdup_printf("imapc_sasl_mechanisms=%s cannot carry the "
		"authorization identity of imapc_master_user=%s: use plain "
		"(or leave it empty)", mechs, imapc_set->imapc_master_user);
	return -1;
}

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
			client->set.host, client->set.port, error);
		if (permanent) {
			/* a security event: someone else's mailbox, or a
			   master password about to go out as a LOGIN */
			i_error(FERRY_LOG_PREFIX "event=identity-failed "
				"security=yes server=%s:%u master=%s reason=%s",
				client->set.host, client->set.port,
				client->set.master_user, error);
			fuser->old_refused = TRUE;
			fuser->identity_error = p_strdup(user->pool, *error_r);
		}
		return -1;
	}
	i_info(FERRY_LOG_PREFIX "event=identity-ok server=%s:%u master=%s",
	       client->set.host, client->set.port, client->set.master_user);
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
	struct mail_storage_settings *mail_set;
	const char *error, *identity_key;

	if (fuser->old_user != NULL) {
		*old_r = fuser->old_user;
		return 0;
	}
	if (fuser->identity_error != NULL) {
		*error_r = fuser->identity_error;
		return -1;
	}

	old = mail_user_dup(user);
	/* mail_user_dup() in 2.3 drops the service user (it tests the new
	   user's, always NULL), and with it the ssl_client_* settings: imapc
	   could not verify an old server's certificate against
	   ssl_client_ca_file. */
	if (old->_service_user == NULL && user->_service_user != NULL) {
		old->_service_user = user->_service_user;
		mail_storage_service_user_ref(old->_service_user);
	}
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

	/* A master user goes only where an authorization identity can carry
	   it: imapc 2.3 would otherwise fall back to LOGIN with the user's
	   name and the master's password when AUTH=PLAIN is not offered.
	   With PLAIN the only mechanism, imapc refuses before sending any
	   password (old-identity.c tells that refusal apart). PROXYAUTH is
	   the master's own LOGIN, then the user's identity. */
	identity_key = NULL;
	if (*imapc_set->imapc_master_user != '\0' &&
	    strcmp(imapc_set->imapc_master_user,
		   *imapc_set->imapc_user != '\0' ? imapc_set->imapc_user :
		   user->username) != 0) {
		identity_key = t_strdup_printf("%s@%s:%u",
			imapc_set->imapc_master_user, imapc_set->imapc_host,
			imapc_set->imapc_port);
		if ((imapc_set->parsed_features & IMAPC_FEATURE_PROXYAUTH) == 0 &&
		    ferry_old_master_mechanisms(imapc_set, error_r) < 0) {
			fuser->old_refused = TRUE;
			mail_user_deinit(&old);
			return -1;
		}
	}

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
