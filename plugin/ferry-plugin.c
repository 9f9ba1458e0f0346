/* Hook registration and module contexts (the same on Dovecot 2.3 and 2.4;
   what differs is in dovecot23.c / dovecot24.c). */

#include "lib.h"
#include "mail-storage-hooks.h"
#include "mail-namespace.h"
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
