/* A bound on the old server's folder list. Dovecot 2.3's imapc keeps the
   list in a tree whose levels are linked lists, so each LIST (or LSUB)
   line costs a scan of its siblings: 100,000 folders in one level kept a
   pull busy for minutes before the first one was returned (hostile-server
   tests). While armed, a callback that runs before imapc's own counts
   the lines and, past ferry_max_folders, turns imapc's handler into a
   no-op for the rest of the answer; the caller then reports the overflow
   instead of working through a truncated list. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "imap-utf7.h"
#include "mail-namespace.h"
#include "imapc-storage.h"
#include "ferry-plugin.h"

struct ferry_list_guard {
	struct imapc_storage_client *client;
	unsigned int max, seen_list, seen_lsub;
	bool overflow;
	/* imapc's handlers, given back when disarmed */
	ferry_imapc_untagged_cb_t *saved_list, *saved_lsub;
};

/* one old session lists at a time in a process */
static struct ferry_list_guard ferry_list_guard;

static void
ferry_list_count(const struct imapc_untagged_reply *reply,
		 struct imapc_storage_client *client)
{
	struct ferry_list_guard *g = &ferry_list_guard;

	if (g->client != client || g->overflow)
		return;
	if ((strcasecmp(reply->name, "LIST") == 0 ? ++g->seen_list :
	     ++g->seen_lsub) <= g->max)
		return;
	g->overflow = TRUE;
	g->saved_list = ferry_imapc_untagged_mute(client, "LIST",
						  ferry_list_count);
	g->saved_lsub = ferry_imapc_untagged_mute(client, "LSUB",
						  ferry_list_count);
}

void ferry_old_list_guard_arm(struct mail_user *old, unsigned int max)
{
	struct ferry_list_guard *g = &ferry_list_guard;
	struct imapc_storage_client *client = ferry_old_storage_client(old);

	i_zero(g);
	if (max == 0)
		return;
	/* the counter must see each line before imapc's tree does */
	ferry_imapc_untagged_first(client, "LIST", ferry_list_count);
	ferry_imapc_untagged_first(client, "LSUB", ferry_list_count);
	g->client = client;
	g->max = max;
}

bool ferry_old_list_guard_disarm(void)
{
	struct ferry_list_guard *g = &ferry_list_guard;
	bool overflow = g->overflow;

	if (g->client != NULL && g->overflow) {
		ferry_imapc_untagged_unmute(g->client, "LIST", g->saved_list);
		ferry_imapc_untagged_unmute(g->client, "LSUB", g->saved_lsub);
	}
	i_zero(g);
	return overflow;
}

bool ferry_old_name_has_controls(struct mailbox *obox)
{
	const unsigned char *p = (const unsigned char *)
		imapc_mailbox_get_remote_name(IMAPC_MAILBOX(obox));

	for (; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return TRUE;
	}
	return FALSE;
}

const char *ferry_old_remote_name(struct mailbox *obox)
{
	const char *wire = imapc_mailbox_get_remote_name(IMAPC_MAILBOX(obox));
	string_t *utf8 = t_str_new(strlen(wire) + 16);

	if (strcasecmp(wire, "INBOX") == 0)
		return "INBOX";
	/* not valid modified UTF-7: the bytes as they are, as ferryd's client
	   shows them too */
	if (imap_utf7_to_utf8(wire, utf8) < 0)
		return t_strdup(wire);
	return str_c(utf8);
}
