/* Large old messages, fetched in ranges (BODY.PEEK[]<offset.length>) into
   an unlinked temporary file. Dovecot 2.3's imapc reads a whole FETCH
   BODY[] literal into memory before handing it over (measured: a 20 MB
   message grew the process by 62 MB), so messages above
   ferry_big_message_size never go through it in one piece: memory stays
   bounded by the range size whatever the message size.

   The ranges that the announced RFC822.SIZE calls for are sent together
   (up to FERRY_BODY_PIPELINE at a time), not one after the other: the old
   server reads and sends the next range while this process writes the
   one before, instead of each range costing a round trip of its own
   (docs/bench.md, "Lazy first SELECT"). The server answers them one at a
   time on the one connection, so memory stays one range. What is kept is
   decided as if they had been fetched in order: up to the first short or
   missing range; a body longer than announced is still caught by the
   last range coming back full. */

#include "lib.h"
#include "istream.h"
#include "str.h"
#include "safe-mkstemp.h"
#include "write-full.h"
#include "imap-arg.h"
#include "imapc-storage.h"
#include "imapc-mail.h"
#include "ferry-plugin.h"

#include <unistd.h>

#define FERRY_BODY_RANGE (1024 * 1024)
/* ranges asked for at once */
#define FERRY_BODY_PIPELINE 8

struct ferry_body_fetch {
	uint32_t uid;
	/* the ranges in flight: first_range .. first_range + count - 1 */
	uoff_t first_range;
	unsigned int count;
	/* bytes each of them brought; answered[i]: it came at all */
	size_t got[FERRY_BODY_PIPELINE];
	bool answered[FERRY_BODY_PIPELINE];
	int fd;
	/* set inside imapc's ioloop callbacks: heap, not data stack */
	char *error;
};

/* imapc's mailbox callbacks carry no context of their own; a process
   copies one message at a time, so the fetch in progress is global. */
static struct ferry_body_fetch *ferry_body_current = NULL;

static bool
ferry_body_range_offset(const char *key, uoff_t *offset_r)
{
	const char *p;

	if (strncasecmp(key, "BODY[]<", 7) != 0)
		return FALSE;
	p = strchr(key + 7, '>');
	return p != NULL && p[1] == '\0' &&
		str_to_uoff(t_strdup_until(key + 7, p), offset_r) == 0;
}

static void
ferry_body_untagged(const struct imapc_untagged_reply *reply,
		    struct imapc_mailbox *mbox ATTR_UNUSED)
{
	struct ferry_body_fetch *fetch = ferry_body_current;
	const struct imap_arg *list;
	const char *key, *data = NULL;
	uint32_t uid = 0;
	uoff_t offset = 0;
	size_t size = 0;
	unsigned int i;

	if (fetch == NULL || fetch->error != NULL ||
	    !imap_arg_get_list(reply->args, &list))
		return;
	for (i = 0; list[i].type != IMAP_ARG_EOL &&
		    list[i + 1].type != IMAP_ARG_EOL; i += 2) {
		if (!imap_arg_get_atom(&list[i], &key))
			continue;
		if (strcasecmp(key, "UID") == 0) {
			const char *value;
			if (!imap_arg_get_atom(&list[i + 1], &value) ||
			    str_to_uint32(value, &uid) < 0)
				uid = 0;
		} else if (ferry_body_range_offset(key, &offset) &&
			   imap_arg_get_nstring(&list[i + 1], &data) &&
			   data != NULL) {
			size = list[i + 1].str_len;
		}
	}
	if (uid != fetch->uid || data == NULL)
		return; /* someone else's FETCH */
	uoff_t range = offset / FERRY_BODY_RANGE;
	if (offset % FERRY_BODY_RANGE != 0 || range < fetch->first_range ||
	    range - fetch->first_range >= fetch->count ||
	    size > FERRY_BODY_RANGE) {
		fetch->error = i_strdup_printf("range at %"PRIuUOFF_T
			" (%zu bytes) answered for ranges %"PRIuUOFF_T
			"-%"PRIuUOFF_T, offset, size,
			fetch->first_range * FERRY_BODY_RANGE,
			(fetch->first_range + fetch->count) * FERRY_BODY_RANGE);
		return;
	}
	if (pwrite_full(fetch->fd, data, size, offset) < 0) {
		fetch->error = i_strdup_printf("write(temp file) failed: %m");
		return;
	}
	fetch->got[range - fetch->first_range] = size;
	fetch->answered[range - fetch->first_range] = TRUE;
}

void ferry_old_body_register(struct mailbox *obox)
{
	imapc_mailbox_register_untagged(IMAPC_MAILBOX(obox), "FETCH",
					ferry_body_untagged);
}

static int ferry_body_temp_fd(struct mail_user *user, const char **error_r)
{
	string_t *path = t_str_new(128);
	int fd;

	mail_user_set_get_temp_prefix(path, user->set);
	fd = safe_mkstemp_hostpid(path, 0600, (uid_t)-1, (gid_t)-1);
	if (fd == -1) {
		*error_r = t_strdup_printf("safe_mkstemp(%s) failed: %m",
					   str_c(path));
		return -1;
	}
	i_unlink(str_c(path));
	return fd;
}

/* Sends ranges first_range.. (count of them) and waits for all of them. */
static int ferry_body_fetch_ranges(struct imapc_mailbox *mbox,
				   struct ferry_body_fetch *fetch,
				   uoff_t first_range, unsigned int count,
				   const char **error_r)
{
	struct imapc_simple_context sctx[FERRY_BODY_PIPELINE];
	struct imapc_command *cmd[FERRY_BODY_PIPELINE];
	unsigned int i;
	int ret = 0;

	i_assert(count > 0 && count <= FERRY_BODY_PIPELINE);
	fetch->first_range = first_range;
	fetch->count = count;
	i_zero(&fetch->got);
	i_zero(&fetch->answered);
	/* the message's flags and dates, which the search has queued, go
	   out with the ranges rather than in a round trip of their own
	   after them */
	imapc_mail_fetch_flush(mbox);
	for (i = 0; i < count; i++) {
		imapc_simple_context_init(&sctx[i], mbox->storage->client);
		cmd[i] = imapc_client_mailbox_cmd(mbox->client_box,
						  imapc_simple_callback,
						  &sctx[i]);
		/* imapc's own format knows no 64-bit offsets */
		imapc_command_send(cmd[i], t_strdup_printf(
			"UID FETCH %u BODY.PEEK[]<%"PRIuUOFF_T".%u>",
			fetch->uid, (first_range + i) * FERRY_BODY_RANGE,
			FERRY_BODY_RANGE));
	}
	/* every command is waited for, even after one failed: none is left
	   with a callback pointing into this frame */
	for (i = 0; i < count; i++) {
		imapc_simple_run(&sctx[i], &cmd[i]);
		if (sctx[i].ret < 0 && ret == 0) {
			*error_r = t_strdup_printf("UID FETCH %u: %s",
				fetch->uid,
				mailbox_get_last_internal_error(&mbox->box, NULL));
			ret = -1;
		}
	}
	if (ret == 0 && fetch->error != NULL) {
		*error_r = t_strdup_printf("UID FETCH %u: %s", fetch->uid,
					   fetch->error);
		ret = -1;
	}
	return ret;
}

int ferry_old_body_fetch(struct mailbox *obox, uint32_t uid, uoff_t size,
			 struct istream **input_r, const char **error_r)
{
	struct imapc_mailbox *mbox = IMAPC_MAILBOX(obox);
	struct ferry_body_fetch fetch;
	/* the range that holds the announced end (short, maybe empty) */
	uoff_t last_range = size / FERRY_BODY_RANGE;
	uoff_t offset = 0, range = 0;
	bool end = FALSE;
	int ret = 0;

	i_zero(&fetch);
	fetch.uid = uid;
	fetch.fd = ferry_body_temp_fd(obox->storage->user, error_r);
	if (fetch.fd == -1)
		return -1;
	ferry_body_current = &fetch;
	/* Ranges are asked for up to the one that holds the announced end,
	   and kept up to the first short one (the end of the body), not up
	   to the announced RFC822.SIZE: a server that under-reports it would
	   otherwise give a silently short copy. Past the announced size
	   nothing more is fetched: the sizes disagree already. */
	while (ret == 0 && !end && range <= last_range) {
		unsigned int count = I_MIN(last_range - range + 1,
					   FERRY_BODY_PIPELINE);

		ret = ferry_body_fetch_ranges(mbox, &fetch, range, count,
					      error_r);
		for (unsigned int i = 0; ret == 0 && !end && i < count; i++) {
			if (!fetch.answered[i]) {
				/* expunged meanwhile, or the end */
				end = TRUE;
			} else {
				offset = (range + i) * FERRY_BODY_RANGE +
					fetch.got[i];
				end = fetch.got[i] < FERRY_BODY_RANGE;
			}
		}
		range += count;
	}
	ferry_body_current = NULL;
	i_free(fetch.error);
	if (ret == 0 && offset != 0 && offset != size) {
		/* nothing of it is saved: the folder fails naming it */
		*error_r = t_strdup_printf("UID %u: the old server announced "
			"RFC822.SIZE %"PRIuUOFF_T" but sent %s%"PRIuUOFF_T
			" bytes of the body; not copied", uid, size,
			offset > size ? "at least " : "", offset);
		ret = -1;
	}
	if (ret < 0 || lseek(fetch.fd, 0, SEEK_SET) < 0) {
		if (ret == 0)
			*error_r = t_strdup_printf("lseek(temp file) failed: %m");
		i_close_fd(&fetch.fd);
		return -1;
	}
	if (offset == 0) {
		i_close_fd(&fetch.fd);
		*input_r = NULL; /* gone from the old server */
		return 0;
	}
	*input_r = i_stream_create_fd_autoclose(&fetch.fd, FERRY_SAVE_BLOCK_SIZE);
	i_stream_set_name(*input_r, t_strdup_printf("old UID %u", uid));
	return 0;
}
