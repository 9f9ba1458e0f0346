/* The folder tree: once per user, before anything else touches a folder,
   every old folder is created on the new server with the old folder's
   UIDVALIDITY (so that nothing, INBOX autocreation included, can give it
   another one), and the subscriptions are copied. Messages are copied
   later, folder by folder (pull.c). */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "ioloop.h"
#include "file-create-locked.h"
#include "mail-namespace.h"
#include "mailbox-list-iter.h"
#include "ferry-plugin.h"
#include "ferry-contract.h"

struct ferry_old_folder {
	const char *vname;
	enum mailbox_info_flags flags;
	/* its name here, or NULL (then skip_reason says why) */
	const char *local, *skip_reason;
};
ARRAY_DEFINE_TYPE(ferry_old_folder, struct ferry_old_folder);

/* Two old folders must never become one: a UID would then name two
   messages. A mapped name (special use, rename rule) that another old
   folder also gets falls back to plain separator translation. */
static void ferry_old_folders_dedup(struct mail_user *user, struct mail_user *old,
				    ARRAY_TYPE(ferry_old_folder) *folders)
{
	struct ferry_old_folder *f;
	const struct ferry_old_folder *g;

	array_foreach_modifiable(folders, f) {
		const char *plain = ferry_plain_name(user, old, f->vname);

		if (f->local == NULL || strcmp(f->local, plain) == 0)
			continue;
		array_foreach(folders, g) {
			if (g != f && g->local != NULL &&
			    strcmp(g->local, f->local) == 0) {
				i_warning(FERRY_LOG_PREFIX "folder=%s: not mapped "
					  "to %s, which %s also becomes; kept as %s",
					  f->vname, f->local, g->vname, plain);
				f->local = plain;
				break;
			}
		}
	}
}

static int ferry_old_folders(struct mail_user *user, struct mail_user *old,
			     ARRAY_TYPE(const_string) *subscribed,
			     ARRAY_TYPE(ferry_old_folder) *folders,
			     const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(old->namespaces);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	enum mail_error err;
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	unsigned int max = fuser->set.max_folders;
	bool overflow;

	/* a runaway or hostile old server: stop before creating anything
	   rather than fill the new server with folders */
	ferry_old_list_guard_arm(old, max);
	iter = mailbox_list_iter_init(ns->list, "*",
				      MAILBOX_LIST_ITER_RETURN_SUBSCRIBED |
				      MAILBOX_LIST_ITER_RETURN_SPECIALUSE);
	overflow = ferry_old_list_guard_disarm();
	while (!overflow && (info = mailbox_list_iter_next(iter)) != NULL) {
		struct ferry_old_folder *f = array_append_space(folders);
		f->vname = t_strdup(info->vname);
		f->flags = info->flags;
		f->local = ferry_local_name(user, old, f->vname,
					    info->special_use, &f->skip_reason);
	}
	if (overflow) {
		(void)mailbox_list_iter_deinit(&iter);
		*error_r = t_strdup_printf("the old server lists more than %u "
			"folders or subscriptions (ferry_max_folders); nothing "
			"was created", max);
		return -1;
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		*error_r = t_strdup_printf("LIST failed: %s",
			mailbox_list_get_last_error(ns->list, &err));
		return -1;
	}
	ferry_old_folders_dedup(user, old, folders);
	/* Subscriptions may name folders that do not exist. */
	iter = mailbox_list_iter_init(ns->list, "*",
				      MAILBOX_LIST_ITER_SELECT_SUBSCRIBED |
				      MAILBOX_LIST_ITER_RETURN_NO_FLAGS);
	while ((info = mailbox_list_iter_next(iter)) != NULL) {
		const char *name = t_strdup(info->vname);
		array_push_back(subscribed, &name);
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		*error_r = t_strdup_printf("LSUB failed: %s",
			mailbox_list_get_last_error(ns->list, &err));
		return -1;
	}
	return 0;
}

/* Returns 0 when the folder is there, 1 when it is skipped (the reason in
   *error_r), -1 on error. */
static int ferry_tree_create(struct mail_user *user, struct mail_user *old,
			     const struct ferry_old_folder *f,
			     const char *local_vname, const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct mail_namespace *old_ns =
		mail_namespace_find_inbox(old->namespaces);
	struct mailbox *box, *obox;
	struct mailbox_update update;
	struct mailbox_status status;
	enum mailbox_existence existence;
	enum mail_error err;
	int ret = 0;

	box = mailbox_alloc(ns->list, local_vname, 0);
	/* a name this server refuses ("..", an empty level...): that folder
	   is skipped like an excluded one, the others are migrated */
	if (mailbox_verify_create_name(box) < 0) {
		*error_r = t_strdup_printf("this server refuses the name %s: %s",
			local_vname, mailbox_get_last_error(box, NULL));
		mailbox_free(&box);
		return 1;
	}
	/* INBOX "exists" before it is created, so ask the list itself */
	if (mailbox_exists(box, FALSE, &existence) < 0) {
		*error_r = t_strdup_printf("%s: %s", local_vname,
			mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		return -1;
	}
	if (existence != MAILBOX_EXISTENCE_NONE && !box->inbox_any) {
		mailbox_free(&box);
		return 0;
	}
	obox = mailbox_alloc(old_ns->list, f->vname, MAILBOX_FLAG_READONLY);
	/* imapc cannot even ask for it ("." with "." as separator) */
	if (mailbox_verify_name(obox) < 0)
		*error_r = t_strdup_printf("the old name cannot be addressed: %s",
			mailbox_get_last_error(obox, NULL));
	else if (ferry_old_name_has_controls(obox))
		*error_r = "its name contains control characters";
	else
		*error_r = NULL;
	if (*error_r != NULL) {
		mailbox_free(&obox);
		mailbox_free(&box);
		return 1;
	}
	if (mailbox_get_status(obox, STATUS_UIDVALIDITY, &status) < 0) {
		*error_r = t_strdup_printf("STATUS %s on the old server: %s",
			f->vname, mailbox_get_last_internal_error(obox, NULL));
		ret = -1;
	}
	mailbox_free(&obox);
	if (ret < 0) {
		mailbox_free(&box);
		return -1;
	}
	i_zero(&update);
	update.uid_validity = status.uidvalidity;
	if (mailbox_create(box, &update, FALSE) < 0) {
		const char *error = mailbox_get_last_internal_error(box, &err);
		/* EXISTS: created meanwhile by another process */
		if (err != MAIL_ERROR_EXISTS) {
			*error_r = t_strdup_printf("CREATE %s: %s",
						   local_vname, error);
			ret = -1;
		}
	}
	mailbox_free(&box);
	return ret;
}

static int ferry_tree_reconcile(struct mail_user *user, struct mail_user *old,
				const ARRAY_TYPE(ferry_old_folder) *folders,
				const ARRAY_TYPE(const_string) *subscribed,
				const char **error_r);

/* What the tree copy did with an old folder, for the map file: the one
   record of "old folder X is new folder Y" (doveadm ferry status prints
   it, ferryd's verification uses it). */
static void ferry_tree_record(struct mail_user *user, struct mail_user *old,
			      const struct ferry_old_folder *f,
			      const char *local, const char *skip_reason)
{
	struct mailbox *obox = mailbox_alloc(
		mail_namespace_find_inbox(old->namespaces)->list, f->vname,
		MAILBOX_FLAG_READONLY);
	const char *remote = ferry_old_remote_name(obox);

	mailbox_free(&obox);
	if (local != NULL) {
		ferry_map_add(user, local, f->vname, remote, NULL, NULL);
		return;
	}
	/* ferry_local_name's reason for a ferry_exclude match */
	ferry_map_add(user, NULL, f->vname, remote,
		      strncmp(skip_reason, "excluded by ", 12) == 0 ?
		      FERRY_STATE_EXCLUDED : FERRY_STATE_SKIPPED, skip_reason);
}

HASH_TABLE_DEFINE_TYPE(ferry_old_folder_by_name, const char *,
		       const struct ferry_old_folder *);

/* The local name of an old name (subscriptions may name folders that do
   not exist). A hash: an old server may list thousands of folders and as
   many subscriptions. */
static const char *
ferry_tree_local(struct mail_user *user, struct mail_user *old,
		 HASH_TABLE_TYPE(ferry_old_folder_by_name) by_name,
		 const char *vname)
{
	const struct ferry_old_folder *f = hash_table_lookup(by_name, vname);
	const char *reason;

	if (f != NULL)
		return f->local;
	return ferry_local_name(user, old, vname, NULL, &reason);
}

static int ferry_tree_copy(struct mail_user *user, bool mirror,
			   const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	ARRAY_TYPE(ferry_old_folder) folders;
	ARRAY_TYPE(const_string) subscribed;
	const struct ferry_old_folder *f;
	const char *const *namep;
	struct mail_user *old;
	unsigned int created = 0, skipped = 0, subs = 0;

	if (ferry_old_user_get(user, &old, error_r) < 0)
		return -1;
	t_array_init(&folders, 64);
	t_array_init(&subscribed, 64);
	if (ferry_old_folders(user, old, &subscribed, &folders, error_r) < 0)
		return -1;
	if (mirror &&
	    ferry_tree_reconcile(user, old, &folders, &subscribed, error_r) < 0)
		return -1;
	ferry_map_reset(user);

	/* INBOX first: it is the folder most likely to be created by
	   something else (delivery, autocreation). */
	array_foreach(&folders, f) {
		if (strcasecmp(f->vname, "INBOX") != 0)
			continue;
		if (ferry_tree_create(user, old, f, "INBOX", error_r) < 0)
			return -1;
		created++;
	}
	array_foreach(&folders, f) {
		const char *local = f->local;

		/* \Noselect parents come into being with their children;
		   creating them would make them selectable on some layouts */
		if ((f->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) != 0)
			continue;
		if (local == NULL) {
			i_warning(FERRY_LOG_PREFIX "folder=%s event=skipped: %s",
				  f->vname, f->skip_reason);
			ferry_tree_record(user, old, f, NULL, f->skip_reason);
			skipped++;
			continue;
		}
		if (strcasecmp(local, "INBOX") == 0) {
			ferry_tree_record(user, old, f, local, NULL);
			continue;
		}
		int ret = ferry_tree_create(user, old, f, local, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0) {
			i_warning(FERRY_LOG_PREFIX "folder=%s event=skipped: %s",
				  f->vname, *error_r);
			ferry_tree_record(user, old, f, NULL, *error_r);
			*error_r = NULL;
			skipped++;
			continue;
		}
		ferry_tree_record(user, old, f, local, NULL);
		created++;
	}
	if (ferry_map_write(user, error_r) < 0)
		return -1;
	HASH_TABLE_TYPE(ferry_old_folder_by_name) by_name;
	int ret = 0;
	hash_table_create(&by_name, default_pool, array_count(&folders),
			  str_hash, strcmp);
	array_foreach(&folders, f)
		hash_table_update(by_name, f->vname, f);
	array_foreach(&subscribed, namep) {
		const char *local = ferry_tree_local(user, old, by_name, *namep);

		if (local == NULL)
			continue;
		struct mailbox *box = mailbox_alloc(ns->list, local, 0);
		if (mailbox_verify_create_name(box) < 0) {
			mailbox_free(&box); /* a skipped folder's name */
			continue;
		}
		ret = mailbox_set_subscribed(box, TRUE);
		if (ret < 0) {
			*error_r = t_strdup_printf("SUBSCRIBE %s: %s", local,
				mailbox_get_last_internal_error(box, NULL));
		}
		mailbox_free(&box);
		if (ret < 0)
			break;
		subs++;
	}
	hash_table_destroy(&by_name);
	if (ret < 0)
		return -1;
	if (!mirror) {
		i_info(FERRY_LOG_PREFIX "event=tree folders=%u skipped=%u "
		       "subscriptions=%u", created, skipped, subs);
	}
	return 0;
}

static const struct ferry_old_folder *
ferry_old_folder_find(const ARRAY_TYPE(ferry_old_folder) *folders,
		      const char *vname)
{
	const struct ferry_old_folder *f;

	array_foreach(folders, f) {
		if (strcmp(f->vname, vname) == 0 &&
		    (f->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) == 0)
			return f;
	}
	return NULL;
}

static bool ferry_str_in(const ARRAY_TYPE(const_string) *arr, const char *s)
{
	const char *const *p;

	array_foreach(arr, p) {
		if (strcmp(*p, s) == 0)
			return TRUE;
	}
	return FALSE;
}

/* A mirror pass: the new tree follows what happened to the old one. A
   folder that came from the old server (its header says so) and whose old
   name is gone was renamed there if an old folder with its UIDVALIDITY
   exists under a name that has no local folder yet, and deleted
   otherwise. Folders made on the new server are never touched. */
static int ferry_tree_reconcile(struct mail_user *user, struct mail_user *old,
				const ARRAY_TYPE(ferry_old_folder) *folders,
				const ARRAY_TYPE(const_string) *subscribed,
				const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct mail_namespace *old_ns = mail_namespace_find_inbox(old->namespaces);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	ARRAY_TYPE(const_string) locals, local_subs;
	const char *const *namep;
	enum mail_error err;

	t_array_init(&locals, 64);
	t_array_init(&local_subs, 64);
	iter = mailbox_list_iter_init(ns->list, "*", MAILBOX_LIST_ITER_RETURN_SUBSCRIBED);
	while ((info = mailbox_list_iter_next(iter)) != NULL) {
		const char *name = t_strdup(info->vname);
		if ((info->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) == 0)
			array_push_back(&locals, &name);
		if ((info->flags & MAILBOX_SUBSCRIBED) != 0)
			array_push_back(&local_subs, &name);
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		*error_r = mailbox_list_get_last_error(ns->list, &err);
		return -1;
	}
	array_foreach(&locals, namep) {
		const char *vname = *namep, *old_name, *error;
		const struct ferry_old_folder *f, *renamed = NULL;
		struct ferry_box_hdr hdr;
		struct mailbox *box;

		if (strcasecmp(vname, "INBOX") == 0)
			continue;
		old_name = ferry_old_name(user, old, vname);
		if (ferry_old_folder_find(folders, old_name) != NULL)
			continue;
		box = mailbox_alloc(ns->list, vname, 0);
		if (mailbox_open(box) < 0) {
			mailbox_free(&box);
			continue;
		}
		ferry_box_hdr_get(box, &hdr);
		if (hdr.state != FERRY_BOX_PENDING &&
		    hdr.state != FERRY_BOX_COMPLETE) {
			mailbox_free(&box); /* made here, or never looked at */
			continue;
		}
		/* An empty folder is simply made again under its new name;
		   for one with mail, the old folder with its UIDVALIDITY is
		   its new name only if no other candidate has that
		   UIDVALIDITY (some servers give every folder created in the
		   same second the same one). */
		struct mailbox_status lst;
		unsigned int matches = 0;
		if (mailbox_get_status(box, STATUS_MESSAGES, &lst) < 0)
			lst.messages = 0;
		array_foreach(folders, f) {
			struct mailbox_status st;
			const char *local = f->local;
			struct mailbox *obox;

			if (lst.messages == 0)
				break;
			if ((f->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) != 0 ||
			    local == NULL || ferry_str_in(&locals, local))
				continue;
			obox = mailbox_alloc(old_ns->list, f->vname,
					     MAILBOX_FLAG_READONLY);
			if (mailbox_get_status(obox, STATUS_UIDVALIDITY |
					       STATUS_UIDNEXT, &st) == 0 &&
			    st.uidvalidity == hdr.old_uidvalidity &&
			    st.uidnext >= hdr.old_uidnext) {
				renamed = f;
				matches++;
			}
			mailbox_free(&obox);
		}
		if (matches != 1)
			renamed = NULL;
		mailbox_close(box);
		if (renamed != NULL) {
			const char *local = renamed->local;
			struct mailbox *dest = mailbox_alloc(ns->list, local, 0);
			int ret = mailbox_rename(box, dest);
			error = ret < 0 ? mailbox_get_last_internal_error(box, NULL) : NULL;
			mailbox_free(&dest);
			mailbox_free(&box);
			if (ret < 0) {
				*error_r = t_strdup_printf("RENAME %s %s: %s",
							   vname, local, error);
				return -1;
			}
			i_info(FERRY_LOG_PREFIX "folder=%s event=renamed to=%s",
			       vname, local);
			const char *newname = local;
			array_push_back(&locals, &newname);
			continue;
		}
		int ret = mailbox_delete(box);
		error = ret < 0 ? mailbox_get_last_internal_error(box, NULL) : NULL;
		mailbox_free(&box);
		if (ret < 0) {
			*error_r = t_strdup_printf("DELETE %s: %s", vname, error);
			return -1;
		}
		i_info(FERRY_LOG_PREFIX "folder=%s event=deleted: gone from "
		       "the old server", vname);
	}
	/* subscriptions: the old server's set, for folders that came from it */
	array_foreach(&local_subs, namep) {
		const char *old_name = ferry_old_name(user, old, *namep);
		struct mailbox *box;

		if (ferry_str_in(subscribed, old_name))
			continue;
		box = mailbox_alloc(ns->list, *namep, 0);
		if (mailbox_set_subscribed(box, FALSE) < 0) {
			*error_r = t_strdup_printf("UNSUBSCRIBE %s: %s", *namep,
				mailbox_get_last_internal_error(box, NULL));
			mailbox_free(&box);
			return -1;
		}
		mailbox_free(&box);
	}
	return 0;
}

int ferry_mirror_recreate(struct mail_user *user, const char *vname,
			  const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct ferry_old_folder f;
	struct mail_user *old;
	struct mailbox *box;
	int ret;

	if (ferry_old_user_get(user, &old, error_r) < 0)
		return -1;
	ferry_internal_begin(user);
	box = mailbox_alloc(ns->list, vname, 0);
	ret = mailbox_delete(box);
	if (ret < 0) {
		*error_r = t_strdup_printf("DELETE %s: %s", vname,
			mailbox_get_last_internal_error(box, NULL));
	}
	mailbox_free(&box);
	if (ret == 0) {
		i_zero(&f);
		f.vname = ferry_old_name(user, old, vname);
		ret = ferry_tree_create(user, old, &f, vname, error_r);
		if (ret > 0)
			ret = -1; /* it was made once: its name is fine */
	}
	ferry_internal_end(user);
	return ret;
}

static int ferry_tree_lock(struct mail_user *user, struct file_lock **lock_r,
			   const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	const struct mail_storage_settings *mail_set = ns->storage->set;
	const char *root = ferry_user_index_root(user), *error;
	struct file_create_settings set;
	int ret;

	if (root == NULL) {
		*lock_r = NULL;
		return 0;
	}
	if (mailbox_list_mkdir_root(ns->list, root,
				    MAILBOX_LIST_PATH_TYPE_INDEX) < 0) {
		enum mail_error err;
		*error_r = mailbox_list_get_last_error(ns->list, &err);
		return -1;
	}
	i_zero(&set);
	set.lock_timeout_secs = fuser->set.lock_timeout_secs;
	set.lock_settings.lock_method = mail_set->parsed_lock_method;
	set.mode = 0600;
	ret = mail_storage_lock_create(t_strconcat(root, "/" FERRY_TREE_LOCK_FNAME,
						   NULL), &set, mail_set,
				       lock_r, &error);
	if (ret <= 0) {
		*error_r = ret == 0 ?
			"another process is copying the folder tree; try again" :
			t_strdup_printf("folder tree lock: %s", error);
		return -1;
	}
	return 0;
}

static int ferry_tree_run(struct mail_user *user, bool mirror,
			  const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct file_lock *lock = NULL;
	int ret = 0;

	if (fuser->tree_synced != 0 && !mirror)
		return 0;
	ferry_internal_begin(user);
	if (ferry_tree_lock(user, &lock, error_r) < 0)
		ret = -1;
	/* another process may have copied the tree while we waited */
	else if ((ret = ferry_user_state_read(user, error_r)) == 0 &&
		 (fuser->tree_synced == 0 || mirror)) {
		ret = ferry_tree_copy(user, mirror, error_r);
		if (ret == 0) {
			fuser->tree_synced = ioloop_time;
			ret = ferry_user_state_write(user, error_r);
		}
	}
	if (lock != NULL)
		file_lock_free(&lock);
	ferry_internal_end(user);
	return ret;
}

int ferry_tree_sync(struct mail_user *user, const char **error_r)
{
	return ferry_tree_run(user, FALSE, error_r);
}

int ferry_tree_mirror(struct mail_user *user, const char **error_r)
{
	return ferry_tree_run(user, TRUE, error_r);
}
