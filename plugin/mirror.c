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

/* The old folder as imapc's index holds it after its SELECT (UIDs and
   flags of every message: no further traffic), read alongside the new
   folder in UID order: nothing per message is kept, whatever the
   folder's size. */
struct ferry_old_iter {
	struct mailbox_transaction_context *t;
	struct mail_search_context *search;
	struct mail *mail; /* NULL: past the last old message */
};

static void ferry_old_iter_init(struct ferry_old_iter *it, struct mailbox *obox)
{
	struct mail_search_args *args;

	it->t = mailbox_transaction_begin(obox, 0, "ferry mirror");
	args = mail_search_build_init();
	mail_search_build_add_all(args);
	it->search = mailbox_search_init(it->t, args, NULL, MAIL_FETCH_FLAGS,
					 NULL);
	mail_search_args_unref(&args);
	it->mail = NULL;
}

static void ferry_old_iter_next(struct ferry_old_iter *it)
{
	if (!mailbox_search_next(it->search, &it->mail))
		it->mail = NULL;
}

static int ferry_old_iter_deinit(struct ferry_old_iter *it, struct mailbox *obox,
				 const char **error_r)
{
	int ret = mailbox_search_deinit(&it->search);

	(void)mailbox_transaction_commit(&it->t);
	if (ret < 0) {
		*error_r = t_strdup_printf("old server: flags: %s",
			mailbox_get_last_internal_error(obox, NULL));
	}
	return ret;
}

static void ferry_mirror_missing(struct ferry_mirror_result *res, uint32_t uid,
				 uint32_t old_uidnext)
{
	if (uid < old_uidnext && res->missing++ == 0)
		res->first_missing_uid = uid;
}

/* One message on both sides: the new one takes the old one's flags and
   keywords. */
static void ferry_mirror_flags(struct mailbox *box, struct mail *mail,
			       struct mail *omail,
			       struct ferry_mirror_result *res)
{
	enum mail_flags flags = mail_get_flags(omail) & ~MAIL_RECENT;
	const char *okeys = ferry_keywords_key(mail_get_keywords(omail));

	if ((mail_get_flags(mail) & ~MAIL_RECENT) == flags &&
	    strcmp(ferry_keywords_key(mail_get_keywords(mail)), okeys) == 0)
		return;
	mail_update_flags(mail, MODIFY_REPLACE, flags);
	const char *const *names = t_strsplit_spaces(okeys, " ");
	struct mail_keywords *kws = mailbox_keywords_create_valid(box, names);
	mail_update_keywords(mail, MODIFY_REPLACE, kws);
	mailbox_keywords_unref(&kws);
	res->flag_changes++;
}

int ferry_mirror_messages(struct mailbox *box, struct mailbox *obox,
			  uint32_t old_uidnext, bool fast,
			  struct ferry_mirror_result *res_r,
			  const char **error_r)
{
	/* A full sync of a maildir that this process just filled scans every
	   file and builds a second copy of dovecot-uidlist in memory: ~40 MB
	   at 200,000 messages for nothing a fast sync would not see. */
	enum mailbox_sync_flags sync_flags = fast ? MAILBOX_SYNC_FLAG_FAST : 0;
	struct ferry_old_iter oit;
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *search;
	struct mail *mail;
	const char *old_error = NULL;
	int ret;

	i_zero(res_r);
	if (mailbox_sync(box, sync_flags) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		return -1;
	}

	ferry_old_iter_init(&oit, obox);
	ferry_old_iter_next(&oit);
	/* not EXTERNAL: the expunges must reach the mail files */
	t = mailbox_transaction_begin(box, 0, "ferry mirror");
	args = mail_search_build_init();
	mail_search_build_add_all(args);
	search = mailbox_search_init(t, args, NULL, MAIL_FETCH_FLAGS, NULL);
	mail_search_args_unref(&args);
	while (mailbox_search_next(search, &mail)) {
		if (mail->uid >= old_uidnext) {
			res_r->above++;
			continue; /* not an old message */
		}
		/* old messages below this UID have no local copy */
		while (oit.mail != NULL && oit.mail->uid < mail->uid) {
			ferry_mirror_missing(res_r, oit.mail->uid, old_uidnext);
			ferry_old_iter_next(&oit);
		}
		if (oit.mail == NULL || oit.mail->uid != mail->uid) {
			mail_expunge(mail);
			res_r->expunged++;
			continue;
		}
		T_BEGIN {
			ferry_mirror_flags(box, mail, oit.mail, res_r);
		} T_END;
		ferry_old_iter_next(&oit);
	}
	ret = mailbox_search_deinit(&search);
	for (; oit.mail != NULL; ferry_old_iter_next(&oit))
		ferry_mirror_missing(res_r, oit.mail->uid, old_uidnext);
	if (ferry_old_iter_deinit(&oit, obox, &old_error) < 0) {
		mailbox_transaction_rollback(&t);
		*error_r = old_error;
		return -1;
	}
	if (ret < 0) {
		mailbox_transaction_rollback(&t);
	} else {
		ret = mailbox_transaction_commit(&t);
	}
	/* changes made here reach the mail files (maildir flags) now */
	if (res_r->flag_changes + res_r->expunged > 0)
		sync_flags = 0;
	if (ret < 0 || mailbox_sync(box, sync_flags) < 0) {
		*error_r = t_strdup_printf("mirroring flags and expunges: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}
