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
	/* imapc's handlers, put back when disarmed */
	imapc_storage_callback_t *saved_list, *saved_lsub;
};

/* one old session lists at a time in a process */
static struct ferry_list_guard ferry_list_guard;

static void
ferry_list_ignore(const struct imapc_untagged_reply *reply ATTR_UNUSED,
		  struct imapc_storage_client *client ATTR_UNUSED)
{
}

static void
ferry_list_count(const struct imapc_untagged_reply *reply,
		 struct imapc_storage_client *client)
{
	struct ferry_list_guard *g = &ferry_list_guard;
	struct imapc_storage_event_callback *cb;

	if (g->client != client || g->overflow)
		return;
	if ((strcasecmp(reply->name, "LIST") == 0 ? ++g->seen_list :
	     ++g->seen_lsub) <= g->max)
		return;
	g->overflow = TRUE;
	array_foreach_modifiable(&client->untagged_callbacks, cb) {
		if (cb->callback == ferry_list_count ||
		    cb->callback == ferry_list_ignore)
			continue;
		if (strcasecmp(cb->name, "LIST") == 0) {
			g->saved_list = cb->callback;
			cb->callback = ferry_list_ignore;
		} else if (strcasecmp(cb->name, "LSUB") == 0) {
			g->saved_lsub = cb->callback;
			cb->callback = ferry_list_ignore;
		}
	}
}

/* Registers the counter in front of imapc's handlers (once per session). */
static void ferry_list_register(struct imapc_storage_client *client,
				const char *name)
{
	const struct imapc_storage_event_callback *cb;
	struct imapc_storage_event_callback *first;

	array_foreach(&client->untagged_callbacks, cb) {
		if (cb->callback == ferry_list_count &&
		    strcasecmp(cb->name, name) == 0)
			return;
	}
	imapc_storage_client_register_untagged(client, name, ferry_list_count);
	/* move it first: it must see each line before imapc's tree does */
	struct imapc_storage_event_callback ours =
		*array_back(&client->untagged_callbacks);
	array_pop_back(&client->untagged_callbacks);
	array_insert(&client->untagged_callbacks, 0, &ours, 1);
	first = array_idx_modifiable(&client->untagged_callbacks, 0);
	i_assert(first->callback == ferry_list_count);
}

void ferry_old_list_guard_arm(struct mail_user *old, unsigned int max)
{
	struct ferry_list_guard *g = &ferry_list_guard;
	struct imapc_storage_client *client = ferry_old_storage_client(old);

	i_zero(g);
	if (max == 0)
		return;
	ferry_list_register(client, "LIST");
	ferry_list_register(client, "LSUB");
	g->client = client;
	g->max = max;
}

bool ferry_old_list_guard_disarm(void)
{
	struct ferry_list_guard *g = &ferry_list_guard;
	struct imapc_storage_event_callback *cb;
	bool overflow = g->overflow;

	if (g->client != NULL && g->overflow) {
		array_foreach_modifiable(&g->client->untagged_callbacks, cb) {
			if (cb->callback != ferry_list_ignore)
				continue;
			cb->callback = strcasecmp(cb->name, "LIST") == 0 ?
				g->saved_list : g->saved_lsub;
		}
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
