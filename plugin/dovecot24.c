/* Dovecot 2.4 glue (dovecot-glue.h): settings declared in
   dovecot24-settings.c and read with settings_get(); the old session is a
   private user (mail_user_dup) with its own settings instance
   (settings_instance_dup + settings_override), so Ferry's changes to
   imapc's settings go through 2.4's public mechanism and stay in that
   user. Checked against Dovecot 2.4.1 (Debian 13). */

#include "lib.h"
#include "str.h"
#include "json-generator.h"
#include "http-client.h"
#include "settings.h"
#include "mail-namespace.h"
#include "mail-storage-service.h"
#include "mail-storage-settings.h"
#include "imapc-settings.h"
#include "imapc-storage.h"
#include "imapc-client-private.h"
#include "ferry-plugin.h"
#include "dovecot24-settings.h"

#define FERRY_MAX_LINE (64 * 1024 * 1024)

static int ferry24_settings_get(struct mail_user *user,
				const struct ferry24_settings **set_r)
{
	const char *error;

	if (settings_get(user->event, &ferry_setting_parser_info, 0,
			 set_r, &error) < 0) {
		e_error(user->event, FERRY_LOG_PREFIX "%s", error);
		return -1;
	}
	return 0;
}

void ferry_settings_read(struct mail_user *user, struct ferry_settings *set_r)
{
	const struct ferry24_settings *set;

	i_zero(set_r);
	if (ferry24_settings_get(user, &set) < 0) {
		/* the user is not served with half its settings */
		if (user->error == NULL)
			user->error = p_strdup(user->pool, "ferry: invalid settings");
		return;
	}
	set_r->enabled = set->ferry;
	set_r->presync = strcmp(set->ferry_phase, "presync") == 0;
	set_r->batch_size = set->ferry_batch_size;
	set_r->lock_timeout_secs = set->ferry_lock_timeout;
	set_r->progress_interval_secs = set->ferry_progress_interval;
	set_r->prefetch_count = set->ferry_prefetch_count;
	set_r->big_message_size = set->ferry_big_message_size > UINT_MAX ?
		UINT_MAX : (unsigned int)set->ferry_big_message_size;
	set_r->max_message_size = set->ferry_max_message_size;
	set_r->max_folders = set->ferry_max_folders;
	set_r->old_connect_timeout_secs = set->ferry_old_connect_timeout;
	set_r->parallel = set->ferry_parallel != 0 ? set->ferry_parallel :
		ferry_workers_default();
	set_r->background_idle_msecs = set->ferry_background_idle_msecs;
	settings_free(set);
}

const char *ferry_setting_str(struct mail_user *user, const char *name)
{
	const struct ferry24_settings *set;
	const struct setting_define *def;
	const char *value = NULL;

	if (ferry24_settings_get(user, &set) < 0)
		return NULL;
	for (def = ferry_setting_parser_info.defines; def->key != NULL; def++) {
		if (def->type == SET_STR_NOVARS && strcmp(def->key, name) == 0) {
			value = *(const char *const *)
				CONST_PTR_OFFSET(set, def->offset);
			break;
		}
	}
	value = value == NULL || *value == '\0' ? NULL : t_strdup(value);
	settings_free(set);
	return value;
}

bool ferry_old_server_configured(struct mail_user *user)
{
	static bool warned = FALSE;
	const struct imapc_settings *imapc_set;
	const char *error;
	bool ret;

	if (settings_get(user->event, &imapc_setting_parser_info, 0,
			 &imapc_set, &error) < 0) {
		e_error(user->event, FERRY_LOG_PREFIX "%s", error);
		return FALSE;
	}
	ret = imapc_set->imapc_host[0] != '\0';
	settings_free(imapc_set);
	if (!ret && !warned) {
		i_warning(FERRY_LOG_PREFIX "imapc_host is not set: nothing is "
			  "migrated until the old server's address is configured");
		warned = TRUE;
	}
	return ret;
}

/* The old user's own settings instance lives as long as the user. */
struct ferry24_old_user {
	union mail_user_module_context module_ctx;
	struct settings_instance *set_instance;
};
static MODULE_CONTEXT_DEFINE_INIT(ferry24_old_user_module,
				  &mail_user_module_register);

static void ferry24_old_user_deinit(struct mail_user *old)
{
	struct ferry24_old_user *ouser =
		MODULE_CONTEXT_REQUIRE(old, ferry24_old_user_module);
	struct settings_instance *set_instance = ouser->set_instance;

	ouser->module_ctx.super.deinit(old);
	settings_instance_free(&set_instance);
}

static void ferry24_override(struct settings_instance *set_instance,
			     const char *key, const char *value)
{
	settings_override(set_instance, t_strconcat("*/", key, NULL), value,
			  SETTINGS_OVERRIDE_TYPE_CODE);
}

/* A master user goes only where an authorization identity can carry it:
   with PLAIN the only mechanism, imapc refuses before sending any password
   when the server does not offer it (old-identity.c tells that refusal
   apart). PROXYAUTH is the master's own LOGIN, then the user's identity. */
static int ferry24_master_mechanisms(struct settings_instance *set_instance,
				     const struct imapc_settings *imapc_set,
				     const char **error_r)
{
	const ARRAY_TYPE(const_string) *mechs = &imapc_set->imapc_sasl_mechanisms;

	if (!array_is_created(mechs) || array_is_empty(mechs)) {
		ferry24_override(set_instance, "imapc_sasl_mechanisms", "plain");
		return 0;
	}
	if (array_count(mechs) == 1 &&
	    strcasecmp(array_idx_elem(mechs, 0), "plain") == 0)
		return 0;
	*error_r = t_strdup_printf("imapc_sasl_mechanisms=%s cannot carry the "
		"authorization identity of imapc_master_user=%s: use plain "
		"(or leave it empty)",
		t_array_const_string_join(mechs, " "),
		imapc_set->imapc_master_user);
	return -1;
}

static int ferry24_old_settings(struct mail_user *user, struct mail_user *old,
				struct settings_instance *set_instance,
				const char **identity_key_r, bool *refused_r,
				const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	const struct imapc_settings *imapc_set;
	const char *error;
	int ret = 0;

	/* the old server's storage, indexes in memory */
	ferry24_override(set_instance, "mail_driver", "imapc");
	ferry24_override(set_instance, "mail_path", "");
	/* The old session fetches ahead so that bodies arrive in pipelined
	   UID ranges instead of one round trip per message. */
	ferry24_override(set_instance, "mail_prefetch_count",
			 dec2str(fuser->set.prefetch_count));
	/* an old server that accepts and stays silent must not hold every
	   LMTP delivery and SELECT for imapc's default 30 s */
	ferry24_override(set_instance, "imapc_connection_timeout_interval",
			 t_strdup_printf("%us", fuser->set.old_connect_timeout_secs));

	if (settings_get(old->event, &imapc_setting_parser_info, 0,
			 &imapc_set, &error) < 0) {
		*error_r = t_strdup_printf("old server: %s", error);
		return -1;
	}
	/* Sizes come from RFC822.SIZE (2.4's default): without it imapc
	   would download a body to learn its size, and large bodies are
	   fetched in ranges. The login waits for the first command (2.4's
	   default too). */
	if ((imapc_set->parsed_features & IMAPC_FEATURE_NO_FETCH_SIZE) != 0)
		ferry24_override(set_instance, "imapc_features/no-fetch-size", "no");
	if ((imapc_set->parsed_features & IMAPC_FEATURE_NO_DELAY_LOGIN) != 0)
		ferry24_override(set_instance, "imapc_features/no-delay-login", "no");
	/* Bodies come in ranges of at most 1 MiB (old-body.c) and small
	   messages whole: a line or literal beyond this is a server gone
	   wrong, and imapc would buffer it whole. */
	if (imapc_set->imapc_max_line_length == 0 ||
	    imapc_set->imapc_max_line_length > FERRY_MAX_LINE) {
		ferry24_override(set_instance, "imapc_max_line_length",
				 dec2str(FERRY_MAX_LINE));
	}
	*identity_key_r = NULL;
	if (*imapc_set->imapc_master_user != '\0' &&
	    strcmp(imapc_set->imapc_master_user,
		   *imapc_set->imapc_user != '\0' ? imapc_set->imapc_user :
		   user->username) != 0) {
		*identity_key_r = t_strdup_printf("%s@%s:%u",
			imapc_set->imapc_master_user, imapc_set->imapc_host,
			imapc_set->imapc_port);
		if ((imapc_set->parsed_features & IMAPC_FEATURE_PROXYAUTH) == 0 &&
		    ferry24_master_mechanisms(set_instance, imapc_set,
					      error_r) < 0) {
			*refused_r = TRUE;
			ret = -1;
		}
	}
	settings_free(imapc_set);
	return ret;
}

int ferry_old_user_create(struct mail_user *user, struct mail_user **old_r,
			  const char **identity_key_r, bool *refused_r,
			  const char **error_r)
{
	struct mail_user *old;
	struct ferry24_old_user *ouser;
	const char *error;
	int ret;

	*identity_key_r = NULL;
	*refused_r = FALSE;
	old = mail_user_dup(user);
	ouser = p_new(old->pool, struct ferry24_old_user, 1);
	ouser->set_instance = settings_instance_dup(
		mail_storage_service_user_get_settings_instance(user->service_user));
	ouser->module_ctx.super = old->v;
	old->vlast = &ouser->module_ctx.super;
	old->v.deinit = ferry24_old_user_deinit;
	MODULE_CONTEXT_SET(old, ferry24_old_user_module, ouser);
	event_set_ptr(old->event, SETTINGS_EVENT_INSTANCE, ouser->set_instance);

	if (ferry24_old_settings(user, old, ouser->set_instance, identity_key_r,
				 refused_r, error_r) < 0) {
		mail_user_deinit(&old);
		return -1;
	}
	ferry_creating_old_user = TRUE;
	ret = mail_user_init(old, &error);
	ferry_creating_old_user = FALSE;
	if (ret < 0) {
		*error_r = t_strdup_printf("old server session: %s", error);
		mail_user_deinit(&old);
		return -1;
	}
	ferry_creating_old_user = TRUE;
	ret = mail_namespaces_init_location(old, old->event, &error);
	ferry_creating_old_user = FALSE;
	if (ret < 0) {
		*error_r = t_strdup_printf("old server: %s", error);
		mail_user_deinit(&old);
		return -1;
	}
	*old_r = old;
	return 0;
}

/* the connect timeout is a setting in 2.4 (ferry_old_user_create) */
void ferry_old_list_created(struct mailbox_list *list ATTR_UNUSED)
{
}

const char *ferry_imapc_host(const struct imapc_client *client)
{
	return client->set->imapc_host;
}

unsigned int ferry_imapc_port(const struct imapc_client *client)
{
	return client->set->imapc_port;
}

const char *ferry_imapc_user(const struct imapc_client *client)
{
	return client->set->imapc_user;
}

const char *ferry_imapc_master_user(const struct imapc_client *client)
{
	return client->set->imapc_master_user;
}

/* one master client at a time (old-identity.c, synchronous) */
static struct settings_instance *ferry24_master_set_instance;
static struct event *ferry24_master_event;

struct imapc_client *
ferry_imapc_master_client_init(struct mail_user *old,
			       struct imapc_client *session)
{
	struct imapc_parameters params = {
		.temp_path_prefix = session->params.temp_path_prefix,
		.override_password = session->password,
	};

	i_assert(ferry24_master_event == NULL);
	ferry24_master_set_instance =
		settings_instance_dup(settings_instance_find(old->event));
	ferry24_master_event = event_create(old->event);
	event_set_ptr(ferry24_master_event, SETTINGS_EVENT_INSTANCE,
		      ferry24_master_set_instance);
	ferry24_override(ferry24_master_set_instance, "imapc_user",
			 session->set->imapc_master_user);
	ferry24_override(ferry24_master_set_instance, "imapc_master_user", "");
	ferry24_override(ferry24_master_set_instance,
			 "imapc_features/proxyauth", "no");
	return imapc_client_init(&params, ferry24_master_event);
}

void ferry_imapc_master_client_deinit(struct imapc_client **client)
{
	imapc_client_deinit(client);
	event_unref(&ferry24_master_event);
	settings_instance_free(&ferry24_master_set_instance);
}

enum fsync_mode ferry_storage_fsync_swap(struct mail_storage *storage,
					 enum fsync_mode mode)
{
	/* 2.4 has no per-transaction fsync switch either: the storage's
	   parsed settings are changed for the duration of a pull (the
	   process does nothing else meanwhile) */
	struct mail_storage_settings *mail_set =
		(struct mail_storage_settings *)storage->set;
	enum fsync_mode prev = mail_set->parsed_fsync_mode;

	mail_set->parsed_fsync_mode = mode;
	return prev;
}

const char *ferry_special_use_box(struct mail_namespace *ns,
				  const char *special_use)
{
	const struct mailbox_settings *box_set;

	if (!array_is_created(&ns->set->parsed_mailboxes))
		return NULL;
	array_foreach_elem(&ns->set->parsed_mailboxes, box_set) {
		const char *use;

		if (!array_is_created(&box_set->special_use))
			continue;
		array_foreach_elem(&box_set->special_use, use) {
			if (strcasecmp(use, special_use) == 0)
				return box_set->name;
		}
	}
	return NULL;
}

struct http_client *ferry_http_client_init(struct mail_user *user,
					   unsigned int timeout_msecs)
{
	pool_t pool = pool_alloconly_create("ferry http client settings", 512);
	struct http_client_settings *set =
		p_new(pool, struct http_client_settings, 1);
	struct http_client *client;

	/* the settings hold the pool's reference; the client keeps them */
	http_client_settings_init(pool, set);
	pool_unref(&pool);
	set->request_max_attempts = 1;
	set->max_parallel_connections = 1;
	set->connect_timeout_msecs = timeout_msecs;
	set->request_timeout_msecs = timeout_msecs;
	/* like http_client_init_private_auto(): the client keeps this
	   reference and frees the settings with itself */
	client = http_client_init_private(set, user->event);
	return client;
}

void ferry_json_append_escaped(string_t *dest, const char *src)
{
	json_append_escaped(dest, src);
}
