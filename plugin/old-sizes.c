/* RFC822.SIZE of a range of old UIDs in one command,
   UID FETCH first:last (RFC822.SIZE). The copy engine needs each message's
   size before its body (large ones are fetched in ranges, too large ones
   skipped). Through imapc's search the sizes went out as one command per
   prefetch window, each a list of UIDs, and cost a mail object per message
   here: measured on a Dovecot OLD, 4 us of its CPU a message against 1 us
   for one range command, a fifth of what the body fetch costs it. The
   next batch's command goes out while this batch is copied, so no batch
   waits a round trip for its sizes with the old server idle. */

#include "lib.h"
#include "array.h"
#include "imap-arg.h"
#include "imapc-storage.h"
#include "ferry-plugin.h"

struct ferry_sizes_fetch {
	struct mailbox *obox;
	uint32_t first, last;
	ARRAY_TYPE(ferry_old_size) sizes;
	/* set inside imapc's ioloop callbacks: heap, not data stack */
	char *error;
	struct imapc_simple_context sctx;
	struct imapc_command *cmd;
};

/* imapc's mailbox callbacks carry no context of their own; a process has
   one sizes command in flight at a time (the next batch's, sent ahead,
   or the one it waits for), so it is global. */
static struct ferry_sizes_fetch *ferry_sizes_current = NULL;

static void
ferry_sizes_untagged(const struct imapc_untagged_reply *reply,
		     struct imapc_mailbox *mbox)
{
	struct ferry_sizes_fetch *fetch = ferry_sizes_current;
	const struct imap_arg *list;
	const char *key, *value, *size_str = NULL;
	struct ferry_old_size *item;
	uint32_t uid = 0;
	uoff_t size;
	unsigned int i;

	/* a sizes command sent ahead outlives the batch that sent it: only
	   its own mailbox's lines are its answer */
	if (fetch == NULL || fetch->obox != &mbox->box ||
	    fetch->error != NULL || !imap_arg_get_list(reply->args, &list))
		return;
	for (i = 0; list[i].type != IMAP_ARG_EOL &&
		    list[i + 1].type != IMAP_ARG_EOL; i += 2) {
		if (!imap_arg_get_atom(&list[i], &key))
			continue;
		if (strcasecmp(key, "UID") == 0) {
			if (!imap_arg_get_atom(&list[i + 1], &value) ||
			    str_to_uint32(value, &uid) < 0)
				uid = 0;
		} else if (strcasecmp(key, "RFC822.SIZE") == 0) {
			if (!imap_arg_get_atom(&list[i + 1], &size_str))
				size_str = "";
		}
	}
	if (uid < fetch->first || uid > fetch->last || size_str == NULL)
		return; /* someone else's FETCH (flags, a body) */
	if (str_to_uoff(size_str, &size) < 0) {
		/* never taken for an expunge: the message would be lost */
		fetch->error = i_strdup_printf("UID %u: invalid RFC822.SIZE",
					       uid);
		return;
	}
	item = array_append_space(&fetch->sizes);
	item->uid = uid;
	item->size = size;
}

void ferry_old_sizes_register(struct mailbox *obox)
{
	imapc_mailbox_register_untagged(IMAPC_MAILBOX(obox), "FETCH",
					ferry_sizes_untagged);
}

static int ferry_old_size_cmp(const struct ferry_old_size *a,
			      const struct ferry_old_size *b)
{
	return a->uid < b->uid ? -1 : (a->uid > b->uid ? 1 : 0);
}

static struct ferry_sizes_fetch *
ferry_sizes_send(struct mailbox *obox, uint32_t first, uint32_t last)
{
	struct imapc_mailbox *mbox = IMAPC_MAILBOX(obox);
	struct ferry_sizes_fetch *fetch = i_new(struct ferry_sizes_fetch, 1);

	i_assert(ferry_sizes_current == NULL);
	fetch->obox = obox;
	fetch->first = first;
	fetch->last = last;
	i_array_init(&fetch->sizes, last - first < 4096 ? last - first + 1 : 4096);
	imapc_simple_context_init(&fetch->sctx, mbox->storage->client);
	fetch->cmd = imapc_client_mailbox_cmd(mbox->client_box,
					      imapc_simple_callback,
					      &fetch->sctx);
	imapc_command_sendf(fetch->cmd, "UID FETCH %u:%u (RFC822.SIZE)",
			    first, last);
	ferry_sizes_current = fetch;
	return fetch;
}

/* Waits for the command's end (its callback points into the fetch, which
   is freed only after it) and frees the fetch; the sizes to SIZES_R if
   not NULL. */
static int ferry_sizes_finish(struct ferry_sizes_fetch *fetch,
			      ARRAY_TYPE(ferry_old_size) *sizes_r,
			      const char **error_r)
{
	int ret = 0;

	imapc_simple_run(&fetch->sctx, &fetch->cmd);
	ferry_sizes_current = NULL;
	if (fetch->sctx.ret < 0) {
		*error_r = t_strdup_printf("UID FETCH %u:%u RFC822.SIZE: %s",
			fetch->first, fetch->last,
			mailbox_get_last_internal_error(fetch->obox, NULL));
		ret = -1;
	} else if (fetch->error != NULL) {
		*error_r = t_strdup_printf("UID FETCH %u:%u RFC822.SIZE: %s",
					   fetch->first, fetch->last,
					   fetch->error);
		ret = -1;
	}
	if (ret == 0 && sizes_r != NULL) {
		/* in UID order, each once, whatever order the server
		   answered in */
		const struct ferry_old_size *items;
		unsigned int count, i;

		array_sort(&fetch->sizes, ferry_old_size_cmp);
		items = array_get(&fetch->sizes, &count);
		for (i = 0; i < count; i++) {
			if (i > 0 && items[i - 1].uid == items[i].uid)
				continue;
			array_push_back(sizes_r, &items[i]);
		}
	}
	array_free(&fetch->sizes);
	i_free(fetch->error);
	i_free(fetch);
	return ret;
}

void ferry_old_sizes_prefetch(struct mailbox *obox, uint32_t first,
			      uint32_t last)
{
	if (ferry_sizes_current == NULL)
		(void)ferry_sizes_send(obox, first, last);
}

void ferry_old_sizes_discard(void)
{
	const char *error;

	if (ferry_sizes_current != NULL)
		(void)ferry_sizes_finish(ferry_sizes_current, NULL, &error);
}

int ferry_old_sizes_fetch(struct mailbox *obox, uint32_t first, uint32_t last,
			  ARRAY_TYPE(ferry_old_size) *sizes,
			  const char **error_r)
{
	struct ferry_sizes_fetch *fetch = ferry_sizes_current;

	if (fetch != NULL && (fetch->obox != obox || fetch->first != first ||
			      fetch->last != last)) {
		ferry_old_sizes_discard();
		fetch = NULL;
	}
	if (fetch == NULL)
		fetch = ferry_sizes_send(obox, first, last);
	return ferry_sizes_finish(fetch, sizes, error_r);
}
