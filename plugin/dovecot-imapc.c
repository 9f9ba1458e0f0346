/* The imapc internals Ferry changes (dovecot-glue.h, "imapc internals"):
   the order and the handlers of imapc-storage's untagged callbacks, and an
   imapc client's untagged and state-change callbacks, for which neither
   Dovecot version has a public way back. They are the same in every
   version tested (2.3.19, 2.4.1), so both builds compile this one file; a
   version whose structures differ gets its own copy in its glue file
   (dovecot2x.c) instead, and the Makefile leaves this one out for it. */

#include "lib.h"
#include "array.h"
#include "imapc-storage.h"
#include "imapc-client-private.h"
#include "imapc-connection.h"
#include "ferry-plugin.h"

/* the handler of a muted line: none */
static void
ferry_imapc_untagged_ignore(const struct imapc_untagged_reply *reply ATTR_UNUSED,
			    struct imapc_storage_client *client ATTR_UNUSED)
{
}

void ferry_imapc_untagged_first(struct imapc_storage_client *client,
				const char *name,
				ferry_imapc_untagged_cb_t *cb)
{
	const struct imapc_storage_event_callback *cur, *first;
	struct imapc_storage_event_callback ours;

	array_foreach(&client->untagged_callbacks, cur) {
		if (cur->callback == cb && strcasecmp(cur->name, name) == 0)
			return;
	}
	imapc_storage_client_register_untagged(client, name, cb);
	/* imapc calls the handlers of a line in the array's order */
	ours = *array_back(&client->untagged_callbacks);
	array_pop_back(&client->untagged_callbacks);
	array_insert(&client->untagged_callbacks, 0, &ours, 1);
	first = array_idx(&client->untagged_callbacks, 0);
	i_assert(first->callback == cb);
}

ferry_imapc_untagged_cb_t *
ferry_imapc_untagged_mute(struct imapc_storage_client *client,
			  const char *name, ferry_imapc_untagged_cb_t *ours)
{
	struct imapc_storage_event_callback *cur;
	ferry_imapc_untagged_cb_t *muted = NULL;

	/* changed in place: this may run from inside imapc's loop over the
	   array (from ours, for the line that decides) */
	array_foreach_modifiable(&client->untagged_callbacks, cur) {
		if (cur->callback == ours ||
		    cur->callback == ferry_imapc_untagged_ignore ||
		    strcasecmp(cur->name, name) != 0)
			continue;
		muted = cur->callback;
		cur->callback = ferry_imapc_untagged_ignore;
	}
	return muted;
}

void ferry_imapc_untagged_unmute(struct imapc_storage_client *client,
				 const char *name,
				 ferry_imapc_untagged_cb_t *muted)
{
	struct imapc_storage_event_callback *cur;

	array_foreach_modifiable(&client->untagged_callbacks, cur) {
		if (cur->callback == ferry_imapc_untagged_ignore &&
		    strcasecmp(cur->name, name) == 0)
			cur->callback = muted;
	}
}

void ferry_imapc_client_take(struct imapc_client *client,
			     imapc_untagged_callback_t *untagged,
			     imapc_state_change_callback_t *state_change,
			     void *context, struct ferry_imapc_taken *saved_r)
{
	saved_r->untagged = client->untagged_callback;
	saved_r->untagged_context = client->untagged_context;
	saved_r->state_change = client->state_change_callback;
	saved_r->state_change_context = client->state_change_context;
	client->untagged_callback = untagged;
	client->untagged_context = context;
	imapc_client_register_state_change_callback(client, state_change,
						    context);
}

void ferry_imapc_client_give_back(struct imapc_client *client,
				  const struct ferry_imapc_taken *saved)
{
	client->untagged_callback = saved->untagged;
	client->untagged_context = saved->untagged_context;
	client->state_change_callback = saved->state_change;
	client->state_change_context = saved->state_change_context;
}

bool ferry_imapc_client_offers_plain(struct imapc_client *client)
{
	struct imapc_client_connection *const *connp;

	array_foreach(&client->conns, connp) {
		enum imapc_capability caps =
			imapc_connection_get_capabilities((*connp)->conn);

		if (caps != 0 && (caps & IMAPC_CAPABILITY_AUTH_PLAIN) == 0)
			return FALSE;
	}
	return TRUE;
}
