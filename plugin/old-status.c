/* STATUS of a folder that is not complete yet, answered from the old
   server's STATUS instead of copying the folder first (docs/design.md,
   "STATUS before the copy"). Ferry keeps UIDVALIDITY, every UID and
   UIDNEXT, so the old server's MESSAGES, UIDNEXT, UIDVALIDITY and UNSEEN
   are what the folder shows once copied, and RECENT is 0 there (the copy
   claims \Recent). Anything else (HIGHESTMODSEQ, SIZE, a folder whose UIDs
   are not the old ones, messages Ferry will skip) is not equal by
   construction: the caller completes the folder first. */

#include "lib.h"
#include "mail-namespace.h"
#include "ferry-plugin.h"

#define FERRY_OLD_STATUS_ITEMS \
	(STATUS_MESSAGES | STATUS_RECENT | STATUS_UIDNEXT | \
	 STATUS_UIDVALIDITY | STATUS_UNSEEN)

/* Whether the local folder will show the old one's numbers once copied:
   its UIDs are (or will be) the old ones. Fills hdr_r and lst_r. */
static int ferry_old_status_local(struct mailbox *box,
				  struct ferry_box_hdr *hdr_r,
				  struct mailbox_status *lst_r)
{
	struct mail_user *user = box->storage->user;
	struct mailbox *lbox;
	int ret = 1;

	ferry_internal_begin(user);
	lbox = mailbox_alloc(box->list, box->vname, MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_open(lbox) < 0) {
		/* missing or unreadable: the usual path says so */
		ret = 0;
	} else {
		ferry_box_hdr_get(lbox, hdr_r);
		if (mailbox_get_status(lbox, STATUS_MESSAGES | STATUS_UIDNEXT |
				       STATUS_UIDVALIDITY, lst_r) < 0)
			ret = 0;
		else if (hdr_r->state == FERRY_BOX_COMPLETE ||
			 hdr_r->state == FERRY_BOX_LOCAL ||
			 hdr_r->renumbered > 0)
			ret = 0;
	}
	mailbox_free(&lbox);
	ferry_internal_end(user);
	return ret;
}

int ferry_old_status(struct mailbox *box, enum mailbox_status_items items,
		     struct mailbox_status *status_r, const char **error_r)
{
	struct mail_user *user = box->storage->user;
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct mail_user *old;
	struct mailbox *obox;
	struct ferry_box_hdr hdr;
	struct mailbox_status lst, ost;
	enum mail_error err;
	const char *error;
	int ret;

	if (items == 0 || (items & ~FERRY_OLD_STATUS_ITEMS) != 0)
		return 0;
	/* messages over ferry_max_message_size are not copied: the old count
	   is not the new one */
	if (fuser->set.max_message_size > 0 &&
	    (items & (STATUS_MESSAGES | STATUS_UNSEEN)) != 0)
		return 0;
	if (ferry_old_status_local(box, &hdr, &lst) <= 0)
		return 0;

	if (ferry_old_user_get(user, &old, error_r) < 0)
		return -1;
	i_zero(&ost);
	obox = mailbox_alloc(mail_namespace_find_inbox(old->namespaces)->list,
			     ferry_old_name(user, old, box->vname),
			     MAILBOX_FLAG_READONLY);
	ret = mailbox_get_status(obox, items | STATUS_UIDVALIDITY |
				 STATUS_UIDNEXT, &ost);
	if (ret < 0) {
		error = mailbox_get_last_internal_error(obox, &err);
		/* not on the old server: the copy marks it local */
		ret = err == MAIL_ERROR_NOTFOUND ? 0 : -1;
		if (ret < 0)
			*error_r = t_strdup_printf("old server: STATUS: %s",
						   error);
	} else if ((hdr.state == FERRY_BOX_PENDING &&
		    hdr.old_uidvalidity != ost.uidvalidity) ||
		   (lst.messages > 0 && lst.uidvalidity != ost.uidvalidity) ||
		   lst.uidnext > ost.uidnext) {
		/* not the old folder's UIDs (mail that predates Ferry, a
		   recreated old folder): the copy decides */
		ret = 0;
	} else {
		status_r->messages = ost.messages;
		status_r->recent = 0;
		status_r->uidnext = ost.uidnext;
		status_r->uidvalidity = ost.uidvalidity;
		status_r->unseen = ost.unseen;
		ret = 1;
	}
	mailbox_free(&obox);
	return ret;
}
