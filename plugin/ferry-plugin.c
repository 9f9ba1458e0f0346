/* Dovecot 2.3 glue: settings, hook registration, module contexts. This is
   the file a Dovecot 2.4 variant replaces; the engine does not read
   settings or register hooks anywhere else. */

#include "lib.h"
#include "mail-storage-hooks.h"
#include "mail-namespace.h"
#include "settings-parser.h"
#include "mail-storage-settings.h"
#include "imapc-settings.h"
#include "ferry-plugin.h"

const char *ferry_plugin_version = DOVECOT_ABI_VERSION;

struct ferry_user_module ferry_user_module =
	MODULE_CONTEXT_INIT(&mail_user_module_register);
struct ferry_storage_module ferry_storage_module =
	MODULE_CONTEXT_INIT(&mail_storage_module_register);
struct ferry_mailbox_list_module ferry_mailbox_list_module =
	MODULE_CONTEXT_INIT(&mailbox_list_module_register);

/* Set while old.c initialises the old-server user, so that the hooks leave
   that user alone. */
bool ferry_creating_old_user = FALSE;

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
		ferry_setting_uint(user, "ferry_big_message_size", 1024*1024, 4096);
	set_r->max_folders =
		ferry_setting_uint(user, "ferry_max_folders", 10000, 0);
	set_r->old_connect_timeout_secs =
		ferry_setting_uint(user, "ferry_old_connect_timeout", 30, 1);
	set_r->parallel = ferry_setting_uint(user, "ferry_parallel",
					     ferry_workers_default(), 1);
	set_r->background_idle_msecs =
		ferry_setting_uint(user, "ferry_background_idle_msecs", 300, 0);
}

bool ferry_user_is_internal(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	return fuser == NULL || fuser->inactive || fuser->internal > 0;
}

void ferry_internal_begin(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	fuser->internal++;
}

void ferry_internal_end(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	i_assert(fuser->internal > 0);
	fuser->internal--;
}

static void ferry_user_deinit(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	ferry_bg_deinit(user);
	ferry_notify_deinit(user);
	if (fuser->old_user != NULL)
		mail_user_deinit(&fuser->old_user);
	ferry_map_deinit(user);
	fuser->module_ctx.super.deinit(user);
}

/* A package installs this plugin into a running Dovecot before the
   administrator has named the old server: until imapc_host is set, Ferry
   leaves every user alone (said once per process) instead of failing
   their folders against a placeholder. */
static bool ferry_old_server_configured(struct mail_user *user)
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

static void ferry_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	struct ferry_user *fuser;
	struct ferry_settings set;

	if (ferry_creating_old_user)
		return;
	ferry_settings_read(user, &set);
	if (!set.enabled)
		return;
	if (!ferry_old_server_configured(user))
		return;

	fuser = p_new(user->pool, struct ferry_user, 1);
	fuser->set = set;
	fuser->module_ctx.super = *v;
	user->vlast = &fuser->module_ctx.super;
	v->deinit = ferry_user_deinit;
	MODULE_CONTEXT_SET(user, ferry_user_module, fuser);
}

static void ferry_mail_namespaces_created(struct mail_namespace *namespaces)
{
	struct mail_user *user = namespaces->user;
	const char *error;

	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_namespace *ns;

	if (fuser == NULL)
		return;
	for (ns = namespaces; ns != NULL; ns = ns->next) {
		if ((ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0)
			break;
	}
	if (ns == NULL) {
		fuser->inactive = TRUE;
		return;
	}
	/* A missing or unreadable state file only means "not done yet". */
	if (ferry_user_state_read(user, &error) < 0)
		i_error(FERRY_LOG_PREFIX "%s", error);
	/* a login of a user not done yet: the rest follows in the
	   background (imap only) */
	if (!fuser->set.presync) {
		ferry_bg_start(user);
		ferry_notify_login(user);
	}
}

static void ferry_mailbox_list_created(struct mailbox_list *list)
{
	if (ferry_creating_old_user)
		ferry_old_list_created(list);
	else if (FERRY_USER_CONTEXT(list->ns->user) != NULL)
		ferry_lazy_mailbox_list_created(list);
}

static void ferry_mailbox_allocated(struct mailbox *box)
{
	if (FERRY_USER_CONTEXT(box->storage->user) != NULL)
		ferry_lazy_mailbox_allocated(box);
}

static struct mail_storage_hooks ferry_mail_storage_hooks = {
	.mail_user_created = ferry_mail_user_created,
	.mail_namespaces_created = ferry_mail_namespaces_created,
	.mailbox_list_created = ferry_mailbox_list_created,
	.mailbox_allocated = ferry_mailbox_allocated,
};

void ferry_plugin_init(struct module *module);
void ferry_plugin_deinit(void);

void ferry_plugin_init(struct module *module)
{
	mail_storage_hooks_add(module, &ferry_mail_storage_hooks);
}

void ferry_plugin_deinit(void)
{
	mail_storage_hooks_remove(&ferry_mail_storage_hooks);
}
