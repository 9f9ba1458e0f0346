/* Presync mirror passes, message side: after the copy engine has added the
   old folder's new messages, the new folder takes the old one's flags and
   keywords and loses what was expunged there. Only while the user still
   works on the old server: after cut-over the new server is the truth and
   nothing here runs (pull.c appends stragglers instead). The folder-tree
   side of a mirror pass is in tree.c. */

#include "lib.h"
#include "array.h"
#include "mail-search-build.h"
#include "ferry-plugin.h"

#include <stdlib.h>

struct ferry_old_msg {
	uint32_t uid;
	bool seen_locally;
	enum mail_flags flags;
	const char *keywords; /* sorted, space-separated: comparable */
};
ARRAY_DEFINE_TYPE(ferry_old_msg, struct ferry_old_msg);

static int ferry_cmp_str(const char *const *a, const char *const *b)
{
	return strcmp(*a, *b);
}

static const char *ferry_keywords_key(const char *const *keywords)
{
	ARRAY_TYPE(const_string) sorted;

	t_array_init(&sorted, 8);
	for (; *keywords != NULL; keywords++)
		array_push_back(&sorted, keywords);
	array_sort(&sorted, ferry_cmp_str);
	array_append_zero(&sorted);
	return t_strarray_join(array_front(&sorted), " ");
}

static int ferry_cmp_uid(const uint32_t *uid, const struct ferry_old_msg *msg)
{
	return *uid < msg->uid ? -1 : (*uid > msg->uid ? 1 : 0);
}

/* The old folder as imapc's index holds it after its SELECT (UIDs and
   flags of every message: no further traffic). */
static int ferry_old_state(struct mailbox *obox, ARRAY_TYPE(ferry_old_msg) *msgs,
			   const char **error_r)
{
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *search;
	struct mail *mail;
	int ret;

	t = mailbox_transaction_begin(obox, 0, "ferry mirror");
	args = mail_search_build_init();
	mail_search_build_add_all(args);
	search = mailbox_search_init(t, args, NULL, MAIL_FETCH_FLAGS, NULL);
	mail_search_args_unref(&args);
	while (mailbox_search_next(search, &mail)) {
		struct ferry_old_msg *msg = array_append_space(msgs);
		msg->uid = mail->uid;
		msg->flags = mail_get_flags(mail) & ~MAIL_RECENT;
		msg->keywords = ferry_keywords_key(mail_get_keywords(mail));
	}
	ret = mailbox_search_deinit(&search);
	(void)mailbox_transaction_commit(&t);
	if (ret < 0) {
		*error_r = t_strdup_printf("old server: flags: %s",
			mailbox_get_last_internal_error(obox, NULL));
	}
	return ret;
}

int ferry_mirror_messages(struct mailbox *box, struct mailbox *obox,
			  uint32_t old_uidnext, struct ferry_mirror_result *res_r,
			  const char **error_r)
{
	ARRAY_TYPE(ferry_old_msg) msgs;
	struct ferry_old_msg *omsg;
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *search;
	struct mail *mail;
	int ret;

	i_zero(res_r);
	t_array_init(&msgs, 256);
	if (ferry_old_state(obox, &msgs, error_r) < 0)
		return -1;
	if (mailbox_sync(box, 0) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		return -1;
	}

	/* not EXTERNAL: the expunges must reach the mail files */
	t = mailbox_transaction_begin(box, 0, "ferry mirror");
	args = mail_search_build_init();
	mail_search_build_add_all(args);
	search = mailbox_search_init(t, args, NULL, MAIL_FETCH_FLAGS, NULL);
	mail_search_args_unref(&args);
	while (mailbox_search_next(search, &mail)) {
		struct ferry_old_msg *msg;

		if (mail->uid >= old_uidnext)
			continue; /* not an old message */
		msg = array_bsearch(&msgs, &mail->uid, ferry_cmp_uid);
		if (msg == NULL) {
			mail_expunge(mail);
			res_r->expunged++;
			continue;
		}
		msg->seen_locally = TRUE;
		const char *const *kw = mail_get_keywords(mail);
		if ((mail_get_flags(mail) & ~MAIL_RECENT) == msg->flags &&
		    strcmp(ferry_keywords_key(kw), msg->keywords) == 0)
			continue;
		mail_update_flags(mail, MODIFY_REPLACE, msg->flags);
		const char *const *names = t_strsplit_spaces(msg->keywords, " ");
		struct mail_keywords *kws =
			mailbox_keywords_create_valid(box, names);
		mail_update_keywords(mail, MODIFY_REPLACE, kws);
		mailbox_keywords_unref(&kws);
		res_r->flag_changes++;
	}
	ret = mailbox_search_deinit(&search);
	array_foreach_modifiable(&msgs, omsg) {
		if (omsg->uid >= old_uidnext || omsg->seen_locally)
			continue;
		if (res_r->missing++ == 0)
			res_r->first_missing_uid = omsg->uid;
	}
	if (ret < 0) {
		mailbox_transaction_rollback(&t);
	} else {
		ret = mailbox_transaction_commit(&t);
	}
	if (ret < 0 || mailbox_sync(box, 0) < 0) {
		*error_r = t_strdup_printf("mirroring flags and expunges: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}
