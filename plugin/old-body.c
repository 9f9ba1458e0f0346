/* Large old messages, fetched in ranges (BODY.PEEK[]<offset.length>) into
   an unlinked temporary file. Dovecot 2.3's imapc reads a whole FETCH
   BODY[] literal into memory before handing it over (measured: a 20 MB
   message grew the process by 62 MB), so messages above
   ferry_big_message_size never go through it in one piece: memory stays
   bounded by the range size whatever the message size. */

#include "lib.h"
#include "istream.h"
#include "str.h"
#include "safe-mkstemp.h"
#include "write-full.h"
#include "imap-arg.h"
#include "imapc-storage.h"
#include "ferry-plugin.h"

#include <unistd.h>

#define FERRY_BODY_RANGE (1024 * 1024)

struct ferry_body_fetch {
	uint32_t uid;
	uoff_t offset; /* of the range asked for */
	int fd;
	bool got_range;
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
	if (offset != fetch->offset) {
		fetch->error = i_strdup_printf("range at %"PRIuUOFF_T
			" answered for %"PRIuUOFF_T, offset, fetch->offset);
		return;
	}
	if (pwrite_full(fetch->fd, data, size, offset) < 0) {
		fetch->error = i_strdup_printf("write(temp file) failed: %m");
		return;
	}
	fetch->offset += size;
	fetch->got_range = TRUE;
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

int ferry_old_body_fetch(struct mailbox *obox, uint32_t uid, uoff_t size,
			 struct istream **input_r, const char **error_r)
{
	struct imapc_mailbox *mbox = IMAPC_MAILBOX(obox);
	struct ferry_body_fetch fetch;
	int ret = 0;

	i_zero(&fetch);
	fetch.uid = uid;
	fetch.fd = ferry_body_temp_fd(obox->storage->user, error_r);
	if (fetch.fd == -1)
		return -1;
	ferry_body_current = &fetch;
	/* Ranges are asked for until the server sends a short one (the end of
	   the body), not until the announced RFC822.SIZE: a server that
	   under-reports it would otherwise give a silently short copy. Past
	   the announced size nothing more is fetched: the sizes disagree
	   already. */
	while (ret == 0) {
		struct imapc_simple_context sctx;
		struct imapc_command *cmd;
		uoff_t start = fetch.offset;

		fetch.got_range = FALSE;
		imapc_simple_context_init(&sctx, mbox->storage->client);
		cmd = imapc_client_mailbox_cmd(mbox->client_box,
					       imapc_simple_callback, &sctx);
		/* imapc's own format knows no 64-bit offsets */
		imapc_command_send(cmd, t_strdup_printf(
			"UID FETCH %u BODY.PEEK[]<%"PRIuUOFF_T".%u>",
			uid, start, FERRY_BODY_RANGE));
		imapc_simple_run(&sctx, &cmd);
		if (sctx.ret < 0) {
			*error_r = t_strdup_printf("UID FETCH %u: %s", uid,
				mailbox_get_last_internal_error(obox, NULL));
			ret = -1;
		} else if (fetch.error != NULL) {
			*error_r = t_strdup_printf("UID FETCH %u: %s", uid,
						   fetch.error);
			ret = -1;
		} else if (!fetch.got_range ||
			   fetch.offset - start < FERRY_BODY_RANGE ||
			   fetch.offset > size) {
			/* the end of the body, expunged meanwhile, or more
			   than announced */
			break;
		}
	}
	ferry_body_current = NULL;
	i_free(fetch.error);
	if (ret == 0 && fetch.offset != 0 && fetch.offset != size) {
		/* nothing of it is saved: the folder fails naming it */
		*error_r = t_strdup_printf("UID %u: the old server announced "
			"RFC822.SIZE %"PRIuUOFF_T" but sent %s%"PRIuUOFF_T
			" bytes of the body; not copied", uid, size,
			fetch.offset > size ? "at least " : "", fetch.offset);
		ret = -1;
	}
	if (ret < 0 || lseek(fetch.fd, 0, SEEK_SET) < 0) {
		if (ret == 0)
			*error_r = t_strdup_printf("lseek(temp file) failed: %m");
		i_close_fd(&fetch.fd);
		return -1;
	}
	if (fetch.offset == 0) {
		i_close_fd(&fetch.fd);
		*input_r = NULL; /* gone from the old server */
		return 0;
	}
	*input_r = i_stream_create_fd_autoclose(&fetch.fd, IO_BLOCK_SIZE);
	i_stream_set_name(*input_r, t_strdup_printf("old UID %u", uid));
	return 0;
}
