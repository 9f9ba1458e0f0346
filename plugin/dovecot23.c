/* Dovecot 2.3 glue (dovecot-glue.h): plugin {} settings read with
   mail_user_plugin_getenv(), the old session's imapc settings changed in
   its private copy, imapc's client settings read from the client. Checked
   against Dovecot 2.3.19.1 (Debian 12). */

#include "lib.h"
#include "str.h"
#include "json-parser.h"
#include "http-client.h"
#include "mail-namespace.h"
#include "mail-storage-service.h"
#include "mail-storage-settings.h"
#include "settings-parser.h"
#include "imapc-settings.h"
#include "imapc-storage.h"
#include "imapc-list.h"
#include "imapc-client-private.h"
#include "ferry-plugin.h"

#define FERRY_MAX_LINE (64 * 1024 * 1024)

/* the real user's ferry_old_connect_timeout, for ferry_old_list_created()
   while its old user is being created */
static unsigned int ferry_old_connect_msecs;

static unsigned int
ferry_setting_uint(struct mail_user *user, const char *name,
		   unsigned int def, unsigned int min)
{
	const char *value = mail_user_plugin_getenv(user, name);
	unsigned int n;

	if (value == NULL || *value == '\0')
		return def;
	if (str_to_uint(value, &n) < 0 || n < min) {
		i_error(FERRY_LOG_PREFIX "Invalid %s=%s (want an integer >= %u), "
			"using %u", name, value, min, def);
		return def;
	}
	return n;
}

void ferry_settings_read(struct mail_user *user, struct ferry_settings *set_r)
{
	const char *value = mail_user_plugin_getenv(user, "ferry"), *error;

	i_zero(set_r);
	set_r->enabled = value != NULL &&
		(strcasecmp(value, "yes") == 0 || strcasecmp(value, "y") == 0 ||
		 strcmp(value, "1") == 0);
	value = mail_user_plugin_getenv(user, "ferry_phase");
	set_r->presync = value != NULL && strcasecmp(value, "presync") == 0;
	if (value != NULL && !set_r->presync && *value != '\0' &&
	    strcasecmp(value, "cutover") != 0) {
		i_error(FERRY_LOG_PREFIX "Invalid ferry_phase=%s (want presync "
			"or cutover), using cutover", value);
	}
	set_r->batch_size = ferry_setting_uint(user, "ferry_batch_size", 500, 1);
	set_r->lock_timeout_secs =
		ferry_setting_uint(user, "ferry_lock_timeout", 300, 1);
	set_r->progress_interval_secs =
		ferry_setting_uint(user, "ferry_progress_interval", 5, 1);
	set_r->prefetch_count =
		ferry_setting_uint(user, "ferry_prefetch_count", 50, 1);
	value = mail_user_plugin_getenv(user, "ferry_max_message_size");
	if (value != NULL && *value != '\0' &&
	    settings_get_size(value, &set_r->max_message_size, &error) < 0) {
		i_error(FERRY_LOG_PREFIX "Invalid ferry_max_message_size=%s: %s; "
			"no limit", value, error);
		set_r->max_message_size = 0;
	}
	set_r->big_message_size =
		ferry_setting_uint(user, "ferry_big_message_size", 2*1024*1024, 4096);
	set_r->max_folders =
		ferry_setting_uint(user, "ferry_max_folders", 10000, 0);
	set_r->old_connect_timeout_secs =
		ferry_setting_uint(user, "ferry_old_connect_timeout", 30, 1);
	set_r->parallel = ferry_setting_uint(user, "ferry_parallel",
					     ferry_workers_default(), 1);
	set_r->background_idle_msecs =
		ferry_setting_uint(user, "ferry_background_idle_msecs", 300, 0);
}

/* A package installs this plugin into a running Dovecot before the
   administrator has named the old server: until imapc_host is set, Ferry
   leaves every user alone (said once per process) instead of failing
   their folders against a placeholder. */
bool ferry_old_server_configured(struct mail_user *user)
{
	static bool warned = FALSE;
	const struct imapc_settings *imapc_set =
		mail_user_set_get_driver_settings(user->set_info, user->set,
						  "imapc");

	if (imapc_set != NULL && imapc_set->imapc_host != NULL &&
	    imapc_set->imapc_host[0] != '\0')
		return TRUE;
	if (!warned) {
		i_warning(FERRY_LOG_PREFIX "imapc_host is not set: nothing is "
			  "migrated until the old server's address is configured");
		warned = TRUE;
	}
	return FALSE;
}

const char *ferry_setting_str(struct mail_user *user, const char *name)
{
	const char *value = mail_user_plugin_getenv(user, name);

	return value == NULL || *value == '\0' ? NULL : value;
}

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

int ferry_old_user_create(struct mail_user *user, struct mail_user **old_r,
			  const char **identity_key_r, bool *refused_r,
			  const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_user *old;
	struct mail_storage_settings *mail_set;
	const char *error;

	*identity_key_r = NULL;
	*refused_r = FALSE;
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
	   settings are a private copy (2.3 has no override for it), so the
	   change stays here. */
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
	if (*imapc_set->imapc_master_user != '\0' &&
	    strcmp(imapc_set->imapc_master_user,
		   *imapc_set->imapc_user != '\0' ? imapc_set->imapc_user :
		   user->username) != 0) {
		*identity_key_r = t_strdup_printf("%s@%s:%u",
			imapc_set->imapc_master_user, imapc_set->imapc_host,
			imapc_set->imapc_port);
		if ((imapc_set->parsed_features & IMAPC_FEATURE_PROXYAUTH) == 0 &&
		    ferry_old_master_mechanisms(imapc_set, error_r) < 0) {
			*refused_r = TRUE;
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

const char *ferry_imapc_host(const struct imapc_client *client)
{
	return client->set.host;
}

unsigned int ferry_imapc_port(const struct imapc_client *client)
{
	return client->set.port;
}

const char *ferry_imapc_user(const struct imapc_client *client)
{
	return client->set.username;
}

const char *ferry_imapc_master_user(const struct imapc_client *client)
{
	return client->set.master_user;
}

struct imapc_client *
ferry_imapc_master_client_init(struct mail_user *old,
			       struct imapc_client *session)
{
	struct imapc_client_settings set = session->set;

	set.username = session->set.master_user;
	set.master_user = NULL;
	set.use_proxyauth = FALSE;
	set.session_id_prefix = NULL;
	return imapc_client_init(&set, old->event);
}

void ferry_imapc_master_client_deinit(struct imapc_client **client)
{
	imapc_client_deinit(client);
}

enum fsync_mode ferry_storage_fsync_swap(struct mail_storage *storage,
					 enum fsync_mode mode)
{
	/* the storage's settings are the user's own parsed copy; the
	   process does nothing else during a pull */
	struct mail_storage_settings *mail_set =
		(struct mail_storage_settings *)storage->set;
	enum fsync_mode prev = mail_set->parsed_fsync_mode;

	mail_set->parsed_fsync_mode = mode;
	return prev;
}

const char *ferry_special_use_box(struct mail_namespace *ns,
				  const char *special_use)
{
	struct mailbox_settings *const *boxp;

	if (!array_is_created(&ns->set->mailboxes))
		return NULL;
	array_foreach(&ns->set->mailboxes, boxp) {
		const char *const *uses =
			t_strsplit_spaces((*boxp)->special_use, " ");
		if (str_array_icase_find(uses, special_use))
			return (*boxp)->name;
	}
	return NULL;
}

struct http_client *ferry_http_client_init(struct mail_user *user ATTR_UNUSED,
					   unsigned int timeout_msecs)
{
	struct http_client_settings set;

	i_zero(&set);
	set.max_attempts = 1;
	set.max_parallel_connections = 1;
	set.connect_timeout_msecs = timeout_msecs;
	set.request_timeout_msecs = timeout_msecs;
	return http_client_init(&set);
}

void ferry_json_append_escaped(string_t *dest, const char *src)
{
	json_append_escaped(dest, src);
}
