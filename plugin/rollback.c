/* Rollback: a user goes back to the old server. Every message that arrived
   on the new server after its folder was copied (UID at or above the old
   UIDNEXT recorded at completion), and every folder made on the new server,
   is appended to the old server through the same imapc session, with flags,
   keywords and INTERNALDATE. The header records how far this went after
   every APPEND, so a repeated rollback, or one re-run after it was cut
   off, appends nothing twice; a folder touched here is marked
   so that the next presync pass copies it again from the old server, which
   is the truth again. */

#include "lib.h"
#include "array.h"
#include "mail-namespace.h"
#include "mail-search-build.h"
#include "ferry-plugin.h"

struct ferry_rollback_ctx {
	void (*callback)(const struct ferry_rollback_result *res,
			 const char *error, void *context);
	void *context;
	unsigned int failed;
};

static int ferry_rollback_open_old(struct mailbox *obox, bool *created_r,
				   const char **error_r)
{
	enum mail_error err;

	*created_r = FALSE;
	if (mailbox_open(obox) == 0)
		return 0;
	(void)mailbox_get_last_internal_error(obox, &err);
	if (err != MAIL_ERROR_NOTFOUND || mailbox_create(obox, NULL, FALSE) < 0 ||
	    mailbox_open(obox) < 0) {
		*error_r = t_strdup_printf("old server: %s",
			mailbox_get_last_internal_error(obox, NULL));
		return -1;
	}
	*created_r = TRUE;
	return 0;
}

/* Whether the old folder already holds this message at or above
   since_uid: its APPEND was sent by an interrupted rollback whose answer
   never came. Same INTERNALDATE, size and Message-ID. */
static int ferry_rollback_on_old(struct mailbox *obox, struct mail *mail,
				 uint32_t since_uid, bool *found_r,
				 const char **error_r)
{
	struct mailbox_transaction_context *ot;
	struct mail_search_context *search;
	struct mail *omail;
	const char *msgid, *omsgid;
	time_t date, odate;
	uoff_t size, osize;
	int ret = 0;

	*found_r = FALSE;
	if (mail_get_received_date(mail, &date) < 0 ||
	    mail_get_virtual_size(mail, &size) < 0 ||
	    mail_get_first_header(mail, "Message-ID", &msgid) < 0) {
		*error_r = t_strdup_printf("reading UID %u: %s", mail->uid,
			mailbox_get_last_internal_error(mail->box, NULL));
		return -1;
	}
	/* the old server's view after the interrupted session */
	if (mailbox_sync(obox, 0) < 0) {
		*error_r = t_strdup_printf("old server: %s",
			mailbox_get_last_internal_error(obox, NULL));
		return -1;
	}
	ot = mailbox_transaction_begin(obox, 0, "ferry rollback check");
	search = ferry_search_uid_range(ot, since_uid, (uint32_t)-1,
					MAIL_FETCH_RECEIVED_DATE |
					MAIL_FETCH_PHYSICAL_SIZE);
	while (!*found_r && mailbox_search_next(search, &omail)) {
		if (omail->uid < since_uid)
			continue;
		/* RFC822.SIZE counts CRLFs, as the local virtual size */
		if (mail_get_received_date(omail, &odate) < 0 ||
		    mail_get_physical_size(omail, &osize) < 0 ||
		    mail_get_first_header(omail, "Message-ID", &omsgid) < 0) {
			ret = -1;
			break;
		}
		*found_r = odate == date && osize == size &&
			null_strcmp(msgid, omsgid) == 0;
	}
	if (mailbox_search_deinit(&search) < 0)
		ret = -1;
	(void)mailbox_transaction_commit(&ot);
	if (ret < 0) {
		*error_r = t_strdup_printf("old server: %s",
			mailbox_get_last_internal_error(obox, NULL));
	}
	return ret;
}

/* Appends the local messages from first_uid on. Progress is recorded after
   every APPEND (imapc sends each one as it is saved, so OLD holds it from
   then on): a rollback cut off anywhere is re-run without appending
   anything twice. The message whose APPEND was in flight when it was cut
   off is looked for on OLD before it is sent again. */
static int ferry_rollback_append(struct mailbox *box, struct mailbox *obox,
				 struct ferry_box_hdr *hdr, uint32_t first_uid,
				 unsigned int *appended_r, const char **error_r)
{
	struct mailbox_transaction_context *t, *ot;
	struct mail_search_context *search;
	struct mail_save_context *save;
	struct mailbox_status ost;
	struct mail *mail;
	bool check_first = hdr->rollback_old_uidnext != 0;
	int ret = 0;

	if (!check_first) {
		if (mailbox_get_status(obox, STATUS_UIDNEXT, &ost) < 0) {
			*error_r = t_strdup_printf("old server: %s",
				mailbox_get_last_internal_error(obox, NULL));
			return -1;
		}
		hdr->rollback_old_uidnext = I_MAX(ost.uidnext, 1);
		if (ferry_box_hdr_write(box, hdr) < 0) {
			*error_r = mailbox_get_last_internal_error(box, NULL);
			return -1;
		}
	}
	t = mailbox_transaction_begin(box, 0, "ferry rollback");
	search = ferry_search_uid_range(t, first_uid, (uint32_t)-1,
					MAIL_FETCH_FLAGS |
					MAIL_FETCH_RECEIVED_DATE |
					MAIL_FETCH_STREAM_HEADER |
					MAIL_FETCH_STREAM_BODY);
	while (ret == 0 && mailbox_search_next(search, &mail)) {
		bool found = FALSE;

		if (check_first) {
			check_first = FALSE;
			ret = ferry_rollback_on_old(obox, mail,
				hdr->rollback_old_uidnext, &found, error_r);
			if (ret < 0)
				break;
			if (found) {
				i_info(FERRY_LOG_PREFIX "folder=%s "
				       "event=rollback-resumed uid=%u: already "
				       "on the old server (its APPEND was cut "
				       "off before the answer)",
				       mailbox_get_vname(box), mail->uid);
			}
		}
		if (!found) {
			ot = mailbox_transaction_begin(obox,
				MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				"ferry rollback");
			save = mailbox_save_alloc(ot);
			mailbox_save_copy_flags(save, mail);
			if (mailbox_copy(&save, mail) < 0 ||
			    mailbox_transaction_commit(&ot) < 0) {
				*error_r = t_strdup_printf("APPEND of UID %u to "
					"the old server: %s", mail->uid,
					mailbox_get_last_internal_error(obox, NULL));
				if (ot != NULL)
					mailbox_transaction_rollback(&ot);
				ret = -1;
				break;
			}
			(*appended_r)++;
		}
		hdr->rolled_back_upto = mail->uid;
		if (ferry_box_hdr_write(box, hdr) < 0) {
			*error_r = mailbox_get_last_internal_error(box, NULL);
			ret = -1;
		}
	}
	if (mailbox_search_deinit(&search) < 0 && ret == 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
	}
	mailbox_transaction_rollback(&t);
	return ret;
}

static int ferry_rollback_folder(struct mail_user *user, const char *vname,
				 void *context)
{
	struct ferry_rollback_ctx *ctx = context;
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct ferry_rollback_result res;
	struct ferry_box_hdr hdr;
	struct mail_user *old;
	struct mailbox *box, *obox = NULL;
	const char *error = NULL;
	uint32_t first;
	int ret = 0;

	i_zero(&res);
	res.vname = vname;
	ferry_internal_begin(user);
	box = mailbox_alloc(ns->list, vname, MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_open(box) < 0 || mailbox_sync(box, 0) < 0) {
		error = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
	} else {
		ferry_box_hdr_get(box, &hdr);
		/* before completion nothing arrives locally (every access
		   completes the folder first) */
		first = hdr.state == FERRY_BOX_LOCAL ? 1 :
			hdr.state == FERRY_BOX_COMPLETE ? hdr.old_uidnext :
			/* no header: made here before Ferry marked new
			   folders, or copied from the old tree and never
			   opened (then empty) */
			hdr.state == FERRY_BOX_UNKNOWN ? 1 : 0;
		if (first != 0 && hdr.rolled_back_upto >= first)
			first = hdr.rolled_back_upto + 1;
		if (first != 0 && box->view != NULL &&
		    mail_index_view_get_messages_count(box->view) > 0) {
			uint32_t last_local;
			mail_index_lookup_uid(box->view,
				mail_index_view_get_messages_count(box->view),
				&last_local);
			if (last_local < first)
				first = 0; /* nothing new here */
		} else {
			first = 0;
		}
		if (hdr.state == FERRY_BOX_LOCAL || first != 0) {
			/* a never-opened folder from the old tree stays
			   untouched: nothing of it is new */
			ret = ferry_old_user_get(user, &old, &error);
			if (ret == 0) {
				obox = mailbox_alloc(mail_namespace_find_inbox(
					old->namespaces)->list,
					ferry_old_name(user, old, vname), 0);
				ret = ferry_rollback_open_old(obox, &res.created,
							      &error);
			}
			if (ret == 0 && first != 0)
				ret = ferry_rollback_append(box, obox, &hdr, first,
							    &res.appended, &error);
			if (ret == 0) {
				/* the old server is the truth again: the next
				   presync pass copies this folder anew */
				hdr.state = FERRY_BOX_COMPLETE;
				hdr.old_uidvalidity = 0;
				hdr.rollback_old_uidnext = 0;
				if (ferry_box_hdr_write(box, &hdr) < 0) {
					error = mailbox_get_last_internal_error(box, NULL);
					ret = -1;
				}
			}
		}
	}
	if (ret < 0) {
		ctx->failed++;
		error = t_strdup_printf("folder %s: %s", vname, error);
		i_error(FERRY_LOG_PREFIX "folder=%s event=rollback-failed "
			"appended=%u error=%s", vname, res.appended, error);
	} else if (res.appended > 0 || res.created) {
		i_info(FERRY_LOG_PREFIX "folder=%s event=rolled-back "
		       "appended=%u created=%s", vname, res.appended,
		       res.created ? "yes" : "no");
	}
	ctx->callback(&res, error, ctx->context);
	if (obox != NULL)
		mailbox_free(&obox);
	mailbox_free(&box);
	ferry_internal_end(user);
	return 0;
}

int ferry_rollback_user(struct mail_user *user,
			void (*callback)(const struct ferry_rollback_result *res,
					 const char *error, void *context),
			void *context, const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_rollback_ctx ctx = {
		.callback = callback, .context = context
	};

	if (ferry_each_folder(user, ferry_rollback_folder, &ctx, error_r) < 0)
		return -1;
	if (ctx.failed > 0) {
		*error_r = t_strdup_printf("%u folders failed", ctx.failed);
		return -1;
	}
	/* not done any more: the old server holds mail the new one lacks */
	if (fuser->done != 0) {
		fuser->done = 0;
		if (ferry_user_state_write(user, error_r) < 0)
			return -1;
	}
	return 0;
}
