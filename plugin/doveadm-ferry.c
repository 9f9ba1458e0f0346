/* doveadm ferry pull|status: the copy engine driven from outside (by an
   admin, or by ferryd through the doveadm HTTP API). The work itself is
   the mail plugin's: this file only parses, runs and prints. It resolves
   the mail plugin's symbols at load time, which doveadm allows because it
   loads its own plugins after mail_plugins. */

#include "lib.h"
#include "doveadm-mail.h"
#include "doveadm-print.h"
#include "mail-namespace.h"
#include "mailbox-list-iter.h"
#include "ferry-plugin.h"
#include "ferry-contract.h"

#include <sysexits.h>

/* the contract's exit codes are the ones Dovecot gives these mail errors */
#if FERRY_EXIT_RETRY != EX_TEMPFAIL || FERRY_EXIT_NOT_ENABLED != DOVEADM_EX_NOTFOUND || \
	FERRY_EXIT_REFUSED != EX_NOPERM || FERRY_EXIT_UNKNOWN_USER != EX_NOUSER
#error "include/ferry-contract.h's FERRY_EXIT_* differ from doveadm's exit codes"
#endif

const char *doveadm_ferry_plugin_version = DOVECOT_ABI_VERSION;
void doveadm_ferry_plugin_init(struct module *module);
void doveadm_ferry_plugin_deinit(void);

struct ferry_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	const char *mailbox;
	/* -p N: ferry_parallel for this command (0: the setting's). ferryd
	   sends 1: it counts one old-server session per command it sends. */
	unsigned int parallel;
	/* the command's own init: its table's headers */
	void (*headers)(struct doveadm_mail_cmd_context *ctx);
};

static bool ferry_cmd_parallel(struct ferry_cmd_context *ctx, const char *value)
{
	if (str_to_uint(value, &ctx->parallel) < 0 || ctx->parallel == 0) {
		i_error("ferry: -p %s: want a number of parallel folders >= 1",
			value);
		return FALSE;
	}
	return TRUE;
}

/* The one place where doveadm's interface differs: 2.4 hands a command its
   options in init() (doveadm_cmd_param_*), 2.3 through getopt and
   parse_arg(). */
#if DOVECOT_VERSION_MAJOR > 2 || DOVECOT_VERSION_MINOR >= 4
static void ferry_cmd_init(struct doveadm_mail_cmd_context *_ctx)
{
	struct ferry_cmd_context *ctx = (struct ferry_cmd_context *)_ctx;
	const char *value;

	if (doveadm_cmd_param_str(_ctx->cctx, "mailbox", &value))
		ctx->mailbox = p_strdup(_ctx->pool, value);
	if (doveadm_cmd_param_str(_ctx->cctx, FERRY_PARAM_PARALLEL, &value) &&
	    !ferry_cmd_parallel(ctx, value))
		i_fatal_status(EX_USAGE, "ferry: invalid -p");
	ctx->headers(_ctx);
}

static void ferry_cmd_options(struct ferry_cmd_context *ctx,
			      const char *getopt_args ATTR_UNUSED)
{
	ctx->ctx.v.init = ferry_cmd_init;
}
#else
static bool ferry_cmd_parse_arg(struct doveadm_mail_cmd_context *_ctx, int c)
{
	struct ferry_cmd_context *ctx = (struct ferry_cmd_context *)_ctx;

	switch (c) {
	case 'm':
		ctx->mailbox = p_strdup(_ctx->pool, optarg);
		return TRUE;
	case 'p':
		return ferry_cmd_parallel(ctx, optarg);
	}
	return FALSE;
}

static void ferry_cmd_init(struct doveadm_mail_cmd_context *_ctx,
			   const char *const args[] ATTR_UNUSED)
{
	struct ferry_cmd_context *ctx = (struct ferry_cmd_context *)_ctx;

	ctx->headers(_ctx);
}

static void ferry_cmd_options(struct ferry_cmd_context *ctx,
			      const char *getopt_args)
{
	if (getopt_args != NULL) {
		ctx->ctx.getopt_args = getopt_args;
		ctx->ctx.v.parse_arg = ferry_cmd_parse_arg;
	}
	ctx->ctx.v.init = ferry_cmd_init;
}
#endif

static void ferry_cmd_apply_parallel(struct ferry_cmd_context *ctx,
				     struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (ctx->parallel != 0 && fuser != NULL)
		fuser->set.parallel = ctx->parallel;
}

/* Every ferry command: a table, options from getopt_args (NULL: none). */
static struct doveadm_mail_cmd_context *
ferry_cmd_alloc(const char *getopt_args,
		void (*headers)(struct doveadm_mail_cmd_context *ctx),
		int (*run)(struct doveadm_mail_cmd_context *ctx,
			   struct mail_user *user))
{
	struct ferry_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct ferry_cmd_context);
	ctx->headers = headers;
	ferry_cmd_options(ctx, getopt_args);
	ctx->ctx.v.run = run;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return &ctx->ctx;
}

static bool ferry_cmd_user_ok(struct doveadm_mail_cmd_context *ctx,
			      struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser != NULL && !fuser->inactive)
		return TRUE;
	i_error("ferry is not enabled for user %s (plugin setting ferry=yes)",
		user->username);
	doveadm_mail_failed_error(ctx, MAIL_ERROR_NOTFOUND);
	return FALSE;
}

/* A refused old session (its identity check failed, or a master login it
   cannot carry) is not fixed by retrying: FERRY_EXIT_REFUSED, which ferryd
   reads as permanent. Anything else is a temporary failure. */
static void ferry_cmd_failed(struct doveadm_mail_cmd_context *ctx,
			     struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser != NULL && fuser->old_refused)
		ctx->exit_code = FERRY_EXIT_REFUSED;
	else
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
}

static void ferry_pull_print(const struct ferry_pull_result *res,
			     const char *error, void *context)
{
	struct doveadm_mail_cmd_context *ctx = context;

	doveadm_print(res->vname);
	doveadm_print(error != NULL ? FERRY_STATE_FAILED : ferry_box_state_name(res->state));
	doveadm_print_num(res->copied);
	doveadm_print_num(res->bytes);
	doveadm_print_num(res->renumbered);
	doveadm_print_num(res->flag_changes);
	doveadm_print_num(res->expunged);
	doveadm_print_num(res->skipped);
	doveadm_print_num(res->local_messages);
	doveadm_print(error != NULL ? error : "");
	if (error != NULL)
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
}

static int ferry_cmd_pull_run(struct doveadm_mail_cmd_context *_ctx,
			      struct mail_user *user)
{
	struct ferry_cmd_context *ctx = (struct ferry_cmd_context *)_ctx;
	struct ferry_pull_result res;
	enum mail_error code;
	const char *error = NULL;
	int ret;

	if (!ferry_cmd_user_ok(_ctx, user))
		return -1;
	ferry_cmd_apply_parallel(ctx, user);
	if (ctx->mailbox == NULL) {
		ret = ferry_pull_all(user, FERRY_PULL_LAZY, ferry_pull_print,
				     _ctx, &error);
	} else if ((ret = ferry_tree_sync(user, &error)) == 0) {
		ret = ferry_pull_folder(user, ctx->mailbox, FERRY_PULL_LAZY,
					&res, &code, &error);
		ferry_pull_print(&res, ret < 0 ? error : NULL, _ctx);
		if (ret == 0 && ferry_user_check_done(user, &error) < 0)
			ret = -1;
	}
	if (ret < 0) {
		i_error("ferry pull: %s", error);
		ferry_cmd_failed(_ctx, user);
	}
	return ret;
}

static void ferry_cmd_pull_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED)
{
	doveadm_print_header_simple(FERRY_COL_FOLDER);
	doveadm_print_header_simple(FERRY_COL_STATE);
	doveadm_print_header_simple(FERRY_COL_COPIED);
	doveadm_print_header_simple(FERRY_COL_BYTES);
	doveadm_print_header_simple(FERRY_COL_RENUMBERED);
	doveadm_print_header_simple(FERRY_COL_FLAG_CHANGES);
	doveadm_print_header_simple(FERRY_COL_EXPUNGED);
	doveadm_print_header_simple(FERRY_COL_SKIPPED);
	doveadm_print_header_simple(FERRY_COL_MESSAGES);
	doveadm_print_header_simple(FERRY_COL_ERROR);
}

static struct doveadm_mail_cmd_context *ferry_cmd_pull_alloc(void)
{
	return ferry_cmd_alloc("m:p:", ferry_cmd_pull_init, ferry_cmd_pull_run);
}

/* sync: a later pass over every folder. For a user still in presync the
   new folders mirror the old ones (new messages, flags, expunges, folder
   renames and deletions, subscriptions); after cut-over only stragglers
   (mail that still reaches the old server) are appended. */
static int ferry_cmd_sync_run(struct doveadm_mail_cmd_context *_ctx,
			      struct mail_user *user)
{
	struct ferry_cmd_context *ctx = (struct ferry_cmd_context *)_ctx;
	struct ferry_user *fuser;
	const char *error = NULL;

	if (!ferry_cmd_user_ok(_ctx, user))
		return -1;
	ferry_cmd_apply_parallel(ctx, user);
	fuser = FERRY_USER_CONTEXT(user);
	if (ferry_pull_all(user, fuser->set.presync ? FERRY_PULL_MIRROR :
			   FERRY_PULL_STRAGGLERS, ferry_pull_print, _ctx,
			   &error) < 0) {
		i_error("ferry sync: %s", error);
		ferry_cmd_failed(_ctx, user);
		return -1;
	}
	return 0;
}

static struct doveadm_mail_cmd_context *ferry_cmd_sync_alloc(void)
{
	return ferry_cmd_alloc("p:", ferry_cmd_pull_init, ferry_cmd_sync_run);
}

/* rollback: back to the old server, with what arrived here meanwhile */
static void ferry_rollback_print(const struct ferry_rollback_result *res,
				 const char *error, void *context)
{
	struct doveadm_mail_cmd_context *ctx = context;

	doveadm_print(res->vname);
	doveadm_print_num(res->appended);
	doveadm_print(res->created ? "yes" : "no");
	doveadm_print(error != NULL ? error : "");
	if (error != NULL)
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
}

static int ferry_cmd_rollback_run(struct doveadm_mail_cmd_context *_ctx,
				  struct mail_user *user)
{
	const char *error = NULL;

	if (!ferry_cmd_user_ok(_ctx, user))
		return -1;
	if (ferry_rollback_user(user, ferry_rollback_print, _ctx, &error) < 0) {
		i_error("ferry rollback: %s", error);
		ferry_cmd_failed(_ctx, user);
		return -1;
	}
	return 0;
}

static void ferry_cmd_rollback_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED)
{
	doveadm_print_header_simple(FERRY_COL_FOLDER);
	doveadm_print_header_simple(FERRY_COL_APPENDED);
	doveadm_print_header_simple(FERRY_COL_CREATED);
	doveadm_print_header_simple(FERRY_COL_ERROR);
}

static struct doveadm_mail_cmd_context *ferry_cmd_rollback_alloc(void)
{
	return ferry_cmd_alloc(NULL, ferry_cmd_rollback_init, ferry_cmd_rollback_run);
}

/* The old server's LIST name of a local folder: the tree copy's record
   (no old-server access); for a folder of an older map file that lacks it,
   the old session is asked. "" for a folder made here. */
static const char *
ferry_status_old_folder(struct mail_user *user, const char *vname,
			const struct ferry_box_hdr *hdr)
{
	struct mail_user *old;
	struct mailbox *obox;
	const char *remote, *error;

	if (hdr->state == FERRY_BOX_LOCAL)
		return "";
	if ((remote = ferry_map_remote_name(user, vname)) != NULL)
		return remote;
	if (ferry_old_user_get(user, &old, &error) < 0)
		return "";
	obox = mailbox_alloc(mail_namespace_find_inbox(old->namespaces)->list,
			     ferry_old_name(user, old, vname),
			     MAILBOX_FLAG_READONLY);
	remote = ferry_old_remote_name(obox);
	mailbox_free(&obox);
	return remote;
}

/* status: local facts from the folder headers; the old server is asked
   only about folders that are not complete. */
/* -1: the old session was refused (see ferry_cmd_failed) */
static int ferry_status_folder(struct mail_user *user, const char *vname)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct ferry_box_hdr hdr;
	struct mailbox_status st, ost;
	struct mail_user *old;
	struct mailbox *box, *obox;
	const char *error, *old_count = "", *old_folder;

	ferry_internal_begin(user);
	box = mailbox_alloc(ns->list, vname, MAILBOX_FLAG_READONLY |
			    MAILBOX_FLAG_IGNORE_ACLS);
	i_zero(&hdr);
	i_zero(&st);
	if (mailbox_open(box) == 0) {
		ferry_box_hdr_get(box, &hdr);
		(void)mailbox_get_status(box, STATUS_MESSAGES |
					 STATUS_UIDVALIDITY, &st);
	}
	old_folder = ferry_status_old_folder(user, vname, &hdr);
	if (hdr.state == FERRY_BOX_COMPLETE)
		old_count = dec2str(hdr.old_messages);
	else if (hdr.state != FERRY_BOX_LOCAL) {
		if (ferry_old_user_get(user, &old, &error) < 0) {
			old_count = "?";
			if (fuser->old_refused) {
				mailbox_free(&box);
				ferry_internal_end(user);
				i_error("ferry status: %s", error);
				return -1;
			}
		} else {
			obox = mailbox_alloc(mail_namespace_find_inbox(
				old->namespaces)->list,
				ferry_old_name(user, old, vname),
				MAILBOX_FLAG_READONLY);
			old_count = mailbox_get_status(obox, STATUS_MESSAGES,
						       &ost) < 0 ? "?" :
				dec2str(ost.messages);
			mailbox_free(&obox);
		}
	}
	mailbox_free(&box);
	ferry_internal_end(user);

	doveadm_print(vname);
	doveadm_print(ferry_box_state_name(hdr.state));
	doveadm_print(old_count);
	doveadm_print_num(st.messages);
	doveadm_print_num(st.uidvalidity);
	doveadm_print_num(hdr.old_uidvalidity);
	doveadm_print_num(hdr.copied);
	doveadm_print_num(hdr.renumbered);
	doveadm_print(old_folder);
	doveadm_print("");
	return 0;
}

/* Old folders the tree copy did not migrate: excluded by the admin's
   rules, or skipped (a name this server cannot hold), with the reason. */
static void ferry_status_not_migrated(struct mail_user *user)
{
	const struct ferry_map_entry *e;
	unsigned int i, count;

	e = ferry_map_entries(user, &count);
	for (i = 0; i < count; i++) {
		if (*e[i].state == '\0')
			continue;
		doveadm_print("");
		doveadm_print(e[i].state);
		for (unsigned int col = 0; col < 6; col++)
			doveadm_print("");
		doveadm_print(*e[i].remote != '\0' ? e[i].remote : e[i].old);
		doveadm_print(e[i].reason);
	}
}

static int ferry_cmd_status_run(struct doveadm_mail_cmd_context *_ctx,
				struct mail_user *user)
{
	struct ferry_cmd_context *ctx = (struct ferry_cmd_context *)_ctx;
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	enum mail_error err;
	int ret = 0;

	if (!ferry_cmd_user_ok(_ctx, user))
		return -1;
	if (ctx->mailbox != NULL) {
		if (ferry_status_folder(user, ctx->mailbox) == 0)
			return 0;
		ferry_cmd_failed(_ctx, user);
		return -1;
	}
	ferry_internal_begin(user);
	iter = mailbox_list_iter_init(ns->list, "*", 0);
	ferry_internal_end(user);
	while (ret == 0 && (info = mailbox_list_iter_next(iter)) != NULL) T_BEGIN {
		if ((info->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) == 0)
			ret = ferry_status_folder(user, info->vname);
	} T_END;
	if (ret < 0) {
		(void)mailbox_list_iter_deinit(&iter);
		ferry_cmd_failed(_ctx, user);
		return -1;
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		i_error("ferry status: %s",
			mailbox_list_get_last_error(ns->list, &err));
		doveadm_mail_failed_error(_ctx, err);
		return -1;
	}
	ferry_status_not_migrated(user);
	return 0;
}

static void ferry_cmd_status_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED)
{
	doveadm_print_header_simple(FERRY_COL_FOLDER);
	doveadm_print_header_simple(FERRY_COL_STATE);
	doveadm_print_header_simple(FERRY_COL_OLD);
	doveadm_print_header_simple(FERRY_COL_LOCAL);
	doveadm_print_header_simple(FERRY_COL_UIDVALIDITY);
	doveadm_print_header_simple(FERRY_COL_OLD_UIDVALIDITY);
	doveadm_print_header_simple(FERRY_COL_COPIED);
	doveadm_print_header_simple(FERRY_COL_RENUMBERED);
	doveadm_print_header_simple(FERRY_COL_OLD_FOLDER);
	doveadm_print_header_simple(FERRY_COL_REASON);
}

static struct doveadm_mail_cmd_context *ferry_cmd_status_alloc(void)
{
	return ferry_cmd_alloc("m:", ferry_cmd_status_init, ferry_cmd_status_run);
}

static struct doveadm_cmd_ver2 ferry_commands[] = {
	{
		.name = "ferry pull",
		.usage = "[-m <folder>] [-p <parallel>]",
		.mail_cmd = ferry_cmd_pull_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('m', "mailbox", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('p', FERRY_PARAM_PARALLEL, CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "ferry sync",
		.usage = "[-p <parallel>]",
		.mail_cmd = ferry_cmd_sync_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('p', FERRY_PARAM_PARALLEL, CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "ferry rollback",
		.usage = "",
		.mail_cmd = ferry_cmd_rollback_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "ferry status",
		.usage = "[-m <folder>]",
		.mail_cmd = ferry_cmd_status_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('m', "mailbox", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAMS_END
	},
};

void doveadm_ferry_plugin_init(struct module *module ATTR_UNUSED)
{
	for (unsigned int i = 0; i < N_ELEMENTS(ferry_commands); i++)
		doveadm_cmd_register_ver2(&ferry_commands[i]);
}

void doveadm_ferry_plugin_deinit(void)
{
}
