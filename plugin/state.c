/* Ferry's persistent state. Per folder: an index header extension, written
   in the same index transaction as the batch of messages it describes, so
   that it can never claim more than was copied. Per user: a small file in
   the index root that says the folder tree was copied and, later, that
   every folder is complete, so that a finished user's sessions never
   contact the old server. */

#include "lib.h"
#include "str.h"
#include "strescape.h"
#include "safe-mkstemp.h"
#include "write-full.h"
#include "mail-index.h"
#include "mail-namespace.h"
#include "mailbox-list.h"
#include "ferry-plugin.h"
#include "ferry-contract.h"

#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>

#define FERRY_HDR_EXT_NAME "ferry"

static uint32_t ferry_box_ext_id(struct mailbox *box)
{
	return mail_index_ext_register(box->index, FERRY_HDR_EXT_NAME,
				       sizeof(struct ferry_box_hdr), 0, 0);
}

void ferry_box_hdr_parse(const void *data, size_t size,
			 struct ferry_box_hdr *hdr_r)
{
	i_zero(hdr_r);
	/* an older, shorter header (written before rolled_back_upto,
	   skipped or rollback_old_uidnext existed) reads with its new fields zero; a longer one (a
	   newer version) with the fields this one knows */
	if (size > 0)
		memcpy(hdr_r, data, I_MIN(size, sizeof(*hdr_r)));
}

void ferry_box_hdr_get(struct mailbox *box, struct ferry_box_hdr *hdr_r)
{
	const void *data;
	size_t size;

	i_assert(box->opened);
	mail_index_get_header_ext(box->view, ferry_box_ext_id(box),
				  &data, &size);
	ferry_box_hdr_parse(data, size, hdr_r);
}

void ferry_box_hdr_update(struct mailbox_transaction_context *t,
			  const struct ferry_box_hdr *hdr)
{
	mail_index_update_header_ext(t->itrans, ferry_box_ext_id(t->box), 0,
				     hdr, sizeof(*hdr));
}

int ferry_box_hdr_write(struct mailbox *box, const struct ferry_box_hdr *hdr)
{
	struct mailbox_transaction_context *t;

	t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				      "ferry state");
	ferry_box_hdr_update(t, hdr);
	return mailbox_transaction_commit(&t);
}

const char *ferry_box_state_name(enum ferry_box_state state)
{
	switch (state) {
	case FERRY_BOX_UNKNOWN:
		return FERRY_STATE_NEW;
	case FERRY_BOX_PENDING:
		return FERRY_STATE_PARTIAL;
	case FERRY_BOX_COMPLETE:
		return FERRY_STATE_COMPLETE;
	case FERRY_BOX_LOCAL:
		return FERRY_STATE_LOCAL;
	}
	return "?";
}

const char *ferry_user_index_root(struct mail_user *user)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	const char *path;

	if (!mailbox_list_get_root_path(ns->list, MAILBOX_LIST_PATH_TYPE_INDEX,
					&path) &&
	    !mailbox_list_get_root_path(ns->list, MAILBOX_LIST_PATH_TYPE_MAILBOX,
					&path))
		return NULL;
	return path;
}

static const char *ferry_user_state_path(struct mail_user *user)
{
	const char *root = ferry_user_index_root(user);

	return root == NULL ? NULL :
		t_strconcat(root, "/" FERRY_STATE_FNAME, NULL);
}

/* Format: "key=value" lines; unknown keys are ignored so that newer
   versions can add to it. */
int ferry_state_parse(const char *text, time_t *tree_r, time_t *done_r,
		      const char **identity_r, const char **error_r)
{
	*tree_r = *done_r = 0;
	*identity_r = NULL;
	for (const char *const *line = t_strsplit(text, "\n");
	     *line != NULL; line++) {
		const char *value;
		long long n;

		if (strncmp(*line, "identity=", 9) == 0) {
			*identity_r = *line + 9;
			continue;
		}
		if (strncmp(*line, "tree=", 5) == 0) value = *line + 5;
		else if (strncmp(*line, "done=", 5) == 0) value = *line + 5;
		else continue;
		if (str_to_llong(value, &n) < 0 || n < 0) {
			*error_r = t_strdup_printf("invalid line '%s'", *line);
			return -1;
		}
		if (**line == 't')
			*tree_r = (time_t)n;
		else
			*done_r = (time_t)n;
	}
	return 0;
}

int ferry_user_state_read(struct mail_user *user, const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	const char *path = ferry_user_state_path(user), *error, *identity;
	char buf[2048];
	ssize_t ret;
	int fd;

	fuser->tree_synced = fuser->done = 0;
	fuser->identity = NULL;
	if (path == NULL)
		return 0; /* in-memory storage: nothing persisted */
	fd = open(path, O_RDONLY);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	ret = read(fd, buf, sizeof(buf) - 1);
	i_close_fd(&fd);
	if (ret < 0) {
		*error_r = t_strdup_printf("read(%s) failed: %m", path);
		return -1;
	}
	buf[ret] = '\0';
	if (ferry_state_parse(buf, &fuser->tree_synced, &fuser->done,
			      &identity, &error) < 0) {
		*error_r = t_strdup_printf("%s: %s", path, error);
		return -1;
	}
	if (identity != NULL)
		fuser->identity = p_strdup(user->pool, identity);
	return 0;
}

int ferry_user_state_write(struct mail_user *user, const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	const char *path = ferry_user_state_path(user);
	const char *data, *tmp_path;
	string_t *tmp;
	int fd;

	if (path == NULL)
		return 0;
	data = t_strdup_printf("tree=%lld\ndone=%lld\n%s%s%s",
			       (long long)fuser->tree_synced,
			       (long long)fuser->done,
			       fuser->identity == NULL ? "" : "identity=",
			       fuser->identity == NULL ? "" : fuser->identity,
			       fuser->identity == NULL ? "" : "\n");
	tmp = t_str_new(256);
	str_append(tmp, path);
	fd = safe_mkstemp_hostpid(tmp, 0600, (uid_t)-1, (gid_t)-1);
	if (fd == -1) {
		*error_r = t_strdup_printf("safe_mkstemp(%s) failed: %m", path);
		return -1;
	}
	tmp_path = str_c(tmp);
	if (write_full(fd, data, strlen(data)) < 0 || fdatasync(fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m", tmp_path);
		i_close_fd(&fd);
		i_unlink(tmp_path);
		return -1;
	}
	i_close_fd(&fd);
	if (rename(tmp_path, path) < 0) {
		*error_r = t_strdup_printf("rename(%s, %s) failed: %m",
					   tmp_path, path);
		i_unlink(tmp_path);
		return -1;
	}
	return 0;
}
