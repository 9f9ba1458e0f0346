/* The lazy path: storage overrides that make a folder complete before any
   command sees it. Opening a folder (SELECT, EXAMINE, STATUS, APPEND,
   COPY/MOVE into it, LMTP/LDA delivery, POP3 login) pulls its missing
   messages first; listing, creating or probing a folder copies the old
   folder tree first. A user whose folders are all complete is left alone
   entirely: no check, no connection. */

#include "lib.h"
#include "time-util.h"
#include "ostream.h"
#include "mail-namespace.h"
#include "mailbox-list-private.h"
#include "ferry-plugin.h"

#define FERRY_BOX_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, ferry_storage_module)
#define FERRY_LIST_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, ferry_mailbox_list_module)

struct ferry_mailbox {
	union mailbox_module_context module_ctx;
	/* Ferry's pull saving into this mailbox: each saved file is given
	   to its batch's durability (durable.c) */
	struct ferry_durable *durable;
};

struct ferry_mailbox_list {
	union mailbox_list_module_context module_ctx;
};

/* Whether Ferry has anything to do for this user right now. */
static bool ferry_lazy_active(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	return fuser != NULL && !fuser->inactive && fuser->internal == 0 &&
		fuser->done == 0;
}

static const char *ferry_user_error(const char *vname, const char *error)
{
	return t_strdup_printf("Folder %s is being migrated and could not be "
			       "completed (%s). Try again later.", vname, error);
}

static int ferry_lazy_tree(struct mailbox *box)
{
	struct mail_user *user = box->storage->user;
	const char *error;

	if (ferry_tree_sync(user, &error) == 0)
		return 0;
	i_error(FERRY_LOG_PREFIX "event=tree-failed folder=%s error=%s",
		box->vname, error);
	mail_storage_set_error(box->storage, MAIL_ERROR_UNAVAILABLE,
			       ferry_user_error(box->vname, error));
	return -1;
}

static struct event_category event_category_ferry = {
	.name = "ferry",
};

/* What a lazy pull cost the user, for Dovecot's stats (a metric with
   filter event=ferry_pull_finished, docs/settings.md): created before the
   pull so the event's own duration is the time the command waited. */
static void ferry_lazy_pull_event(struct event *event,
				  const struct ferry_pull_result *res,
				  const char *error)
{
	struct timeval created, now;

	event_get_create_time(event, &created);
	i_gettimeofday(&now);
	event_add_int(event, "waited_usecs", timeval_diff_usecs(&now, &created));
	event_add_int(event, "messages", res->copied);
	event_add_int(event, "bytes", res->bytes);
	event_add_int(event, "old_messages", res->old_messages);
	event_add_str(event, "completed", res->completed ? "yes" : "no");
	if (error != NULL)
		event_add_str(event, "error", error);
	e_debug(event, FERRY_LOG_PREFIX "event=pull-finished folder=%s "
		"messages=%u bytes=%"PRIuUOFF_T"%s%s", res->vname, res->copied,
		res->bytes, error != NULL ? " error=" : "",
		error != NULL ? error : "");
}

static int ferry_lazy_pull(struct mailbox *box)
{
	struct mail_user *user = box->storage->user;
	struct ferry_pull_result res;
	enum mail_error code;
	const char *error = NULL;
	struct event *event;
	int ret;

	event = event_create(box->event);
	event_add_category(event, &event_category_ferry);
	event_set_name(event, "ferry_pull_finished");
	if (ferry_lazy_tree(box) < 0) {
		i_zero(&res);
		res.vname = box->vname;
		ferry_lazy_pull_event(event, &res,
			mail_storage_get_last_error(box->storage, NULL));
		event_unref(&event);
		return -1;
	}
	/* no background worker copies it meanwhile (one in it stops after
	   its batch): this command pulls it, the fastest path */
	ferry_bg_claim(user, box->vname);
	ret = ferry_pull_folder(user, box->vname, FERRY_PULL_LAZY, &res, &code,
				&error);
	/* only pulls that copied, completed or failed: opening a folder
	   that was already complete cost the user nothing */
	if (ret < 0 || res.copied > 0 || res.completed)
		ferry_lazy_pull_event(event, &res, ret < 0 ? error : NULL);
	event_unref(&event);
	if (ret < 0) {
		mail_storage_set_error(box->storage, code,
				       ferry_user_error(box->vname, error));
		return -1;
	}
	if (res.completed && ferry_user_check_done(user, &error) < 0)
		i_error(FERRY_LOG_PREFIX "%s", error);
	return 0;
}

static int ferry_box_open(struct mailbox *box)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(box);

	if (ferry_lazy_active(box->storage->user) && ferry_lazy_pull(box) < 0)
		return -1;
	return fbox->module_ctx.super.open(box);
}

static int ferry_box_exists(struct mailbox *box, bool auto_boxes,
			    enum mailbox_existence *existence_r)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(box);

	if (ferry_lazy_active(box->storage->user) && ferry_lazy_tree(box) < 0)
		return -1;
	return fbox->module_ctx.super.exists(box, auto_boxes, existence_r);
}

static int ferry_box_get_status(struct mailbox *box,
				enum mailbox_status_items items,
				struct mailbox_status *status_r)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(box);
	const char *error;
	int ret;

	if (!box->opened && ferry_lazy_active(box->storage->user)) {
		/* the items equal by construction come from the old server's
		   STATUS; the others are only shown once they are true, so
		   the folder is completed (opened) first */
		if (ferry_lazy_tree(box) < 0)
			return -1;
		ret = ferry_old_status(box, items, status_r, &error);
		if (ret < 0) {
			mail_storage_set_error(box->storage, MAIL_ERROR_UNAVAILABLE,
					       ferry_user_error(box->vname, error));
			return -1;
		}
		if (ret > 0)
			return 0;
		if (mailbox_open(box) < 0)
			return -1;
	}
	return fbox->module_ctx.super.get_status(box, items, status_r);
}

static int ferry_box_create(struct mailbox *box,
			    const struct mailbox_update *update, bool directory)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(box);
	struct mail_user *user = box->storage->user;
	struct ferry_box_hdr hdr;

	/* a CREATE of a folder the old server has answers "exists" */
	if (ferry_lazy_active(user) && ferry_lazy_tree(box) < 0)
		return -1;
	if (fbox->module_ctx.super.create_box(box, update, directory) < 0)
		return -1;
	/* also for a finished user: a rollback must know what is new here */
	if (ferry_user_is_internal(user) || directory)
		return 0;
	/* created here, not on the old server: nothing will ever be copied
	   into it, so it needs no old-server look-up later */
	i_zero(&hdr);
	hdr.state = FERRY_BOX_LOCAL;
	ferry_internal_begin(user);
	int ret = mailbox_open(box) < 0 ? -1 : ferry_box_hdr_write(box, &hdr);
	ferry_internal_end(user);
	if (ret < 0)
		i_error(FERRY_LOG_PREFIX "folder=%s: marking a new folder "
			"local failed: %s", box->vname,
			mailbox_get_last_internal_error(box, NULL));
	return 0;
}

static int ferry_box_delete(struct mailbox *box)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(box);

	/* a background worker copying it stops first */
	if (ferry_lazy_active(box->storage->user))
		ferry_bg_claim(box->storage->user, box->vname);
	return fbox->module_ctx.super.delete_box(box);
}

static int ferry_box_rename(struct mailbox *src, struct mailbox *dest)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(src);

	/* the copy completes under the old name; the folder's old identity
	   (its header) then moves with it */
	if (ferry_lazy_active(src->storage->user) && ferry_lazy_pull(src) < 0)
		return -1;
	return fbox->module_ctx.super.rename_box(src, dest);
}

/* The file is still open here (the storage closes it in save_finish). */
static int ferry_box_save_finish(struct mail_save_context *ctx)
{
	struct ferry_mailbox *fbox = FERRY_BOX_CONTEXT(ctx->transaction->box);

	if (fbox->durable != NULL && ctx->data.output != NULL)
		ferry_durable_file(fbox->durable,
				   o_stream_get_fd(ctx->data.output));
	return fbox->module_ctx.super.save_finish(ctx);
}

void ferry_box_set_durable(struct mailbox *box, struct ferry_durable *d)
{
	struct ferry_mailbox *fbox =
		MODULE_CONTEXT(box, ferry_storage_module);

	if (fbox != NULL)
		fbox->durable = d;
}

void ferry_lazy_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct ferry_mailbox *fbox;

	/* only the user's own folders are migrated */
	if (box->list->ns->type != MAIL_NAMESPACE_TYPE_PRIVATE ||
	    box->list->ns->owner != box->storage->user)
		return;
	if (!ferry_user_is_internal(box->storage->user))
		ferry_bg_activity(box->storage->user);

	fbox = p_new(box->pool, struct ferry_mailbox, 1);
	fbox->module_ctx.super = *v;
	box->vlast = &fbox->module_ctx.super;
	v->open = ferry_box_open;
	v->exists = ferry_box_exists;
	v->get_status = ferry_box_get_status;
	v->create_box = ferry_box_create;
	v->rename_box = ferry_box_rename;
	v->delete_box = ferry_box_delete;
	v->save_finish = ferry_box_save_finish;
	MODULE_CONTEXT_SET(box, ferry_storage_module, fbox);
}

static struct mailbox_list_iterate_context *
ferry_list_iter_init(struct mailbox_list *list, const char *const *patterns,
		     enum mailbox_list_iter_flags flags)
{
	struct ferry_mailbox_list *flist = FERRY_LIST_CONTEXT(list);
	struct mail_user *user = list->ns->user;
	struct mailbox_list_iterate_context *ctx;
	const char *error = NULL;

	if (!ferry_user_is_internal(user))
		ferry_bg_activity(user);
	if (ferry_lazy_active(user) && ferry_tree_sync(user, &error) < 0)
		i_error(FERRY_LOG_PREFIX "event=tree-failed error=%s", error);
	ctx = flist->module_ctx.super.iter_init(list, patterns, flags);
	if (error != NULL) {
		/* a partial tree must not look like the whole one */
		mailbox_list_set_error(list, MAIL_ERROR_UNAVAILABLE,
			t_strdup_printf("The folder list is being migrated and "
					"could not be completed (%s). Try again "
					"later.", error));
		ctx->failed = TRUE;
	}
	return ctx;
}

void ferry_lazy_mailbox_list_created(struct mailbox_list *list)
{
	struct mailbox_list_vfuncs *v = list->vlast;
	struct ferry_mailbox_list *flist;

	if (list->ns->type != MAIL_NAMESPACE_TYPE_PRIVATE)
		return;
	flist = p_new(list->pool, struct ferry_mailbox_list, 1);
	flist->module_ctx.super = *v;
	list->vlast = &flist->module_ctx.super;
	v->iter_init = ferry_list_iter_init;
	MODULE_CONTEXT_SET(list, ferry_mailbox_list_module, flist);
}
