/* The copy engine: one folder's missing messages, old server -> new server,
   under the UID rule (docs/design.md):

   - the folder keeps the old UIDVALIDITY; it is set while the folder is
     still empty;
   - old messages are saved in ascending UID order with their old UID, in
     batches; each batch commits together with the header that records how
     far the copy got, so a crash re-fetches at most one batch;
   - the dsync lock (.dovecot-box-sync.lock) serialises every writer of
     the folder: a lazy pull, a bulk pull, doveadm sync;
   - then next_uid is raised to the old UIDNEXT, and only then is the
     folder marked complete and handed to the command that wanted it.

   A UID that is not kept (something wrote into the folder behind the lock)
   is logged with the UID it got, and from then on the folder's messages
   are appended with fresh UIDs: a UID never names another message. */

#define _GNU_SOURCE /* syncfs() */
#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "istream.h"
#include "mail-storage-settings.h"
#include "seq-range-array.h"
#include "file-lock.h"
#include "mail-namespace.h"
#include "mail-search-build.h"
#include "mailbox-list-iter.h"
#include "ferry-plugin.h"

#include <fcntl.h>
#include <unistd.h>

struct ferry_pull {
	struct mail_user *user;
	struct ferry_user *fuser;
	const char *vname;
	enum ferry_pull_mode mode;
	struct mailbox *box, *obox;
	struct ferry_box_hdr hdr;
	struct mailbox_status ost, lst;
	bool keep_uids;
	bool completed;
	bool uidvalidity_changed;
	unsigned int flag_changes, expunged, skipped;
	enum fsync_mode saved_fsync_mode;
	/* the last committed batch's syncfs(), in flight */
	struct ferry_durable durable;
	/* a copy that was interrupted before (crash, kill, lost server) */
	bool resumed;
	/* a background pull (background.c): stops after the batch during
	   which *stop became non-zero, no progress lines, a folder locked by
	   another writer is left to it */
	bool background;
	const volatile uint32_t *stop;
	/* a client's command waits for this pull (imap, pop3, lmtp; not a
	   background pull, not doveadm): the old server is kept busy with
	   the next FETCH while this process saves (ferry_old_fetch_ahead) */
	bool waiting;
	/* batches of half ferry_batch_size, each made durable while the next
	   one is copied (ferry_pull_sync_batch) */
	bool overlap;
	/* the step ended before the last batch: the folder stays partial */
	bool stopped;
	bool busy;
	/* a stragglers pass over a folder complete before it */
	bool stragglers;
	/* the interrupted copy cannot be trusted: copy the folder again */
	bool needs_recopy;
	/* copied_upto as of the last batch known to keep its UIDs */
	uint32_t trusted_upto;
	/* the highest old UID looked at, skipped ones included */
	uint32_t last_seen_uid;

	struct mailbox_transaction_context *t;
	ARRAY_TYPE(seq_range) batch_uids;
	unsigned int batch_count;
	unsigned int copied, renumbered, total;
	uoff_t bytes;  /* RFC822.SIZE of the messages copied */
	time_t last_notify;

	enum mail_error error_code;
	/* in pool: errors are set inside data stack frames */
	pool_t pool;
	const char *error;
};

/* The folder being filled: SAVEONLY lets a fast sync trust the index
   (ferry_mirror_messages) and reads the cache file in small reads rather
   than mapping it whole. */
#define FERRY_PULL_BOX_FLAGS \
	(MAILBOX_FLAG_IGNORE_ACLS | MAILBOX_FLAG_SAVEONLY)

static int ferry_pull_fail(struct ferry_pull *pull, enum mail_error code,
			   const char *error)
{
	pull->error_code = code;
	pull->error = p_strdup(pull->pool, error);
	return -1;
}

static int ferry_pull_fail_old(struct ferry_pull *pull, const char *what)
{
	const char *error = mailbox_get_last_internal_error(pull->obox, NULL);

	return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE,
		t_strdup_printf("old server: %s: %s", what, error));
}

static int ferry_pull_fail_local(struct ferry_pull *pull, const char *what)
{
	enum mail_error code;
	const char *error = mailbox_get_last_internal_error(pull->box, &code);

	/* whatever the local cause, the command is to be retried later */
	return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE,
		t_strdup_printf("%s: %s", what, error));
}

static void ferry_pull_notify(struct ferry_pull *pull)
{
	struct mail_storage *storage = pull->box->storage;
	time_t now = time(NULL);

	if (storage->callbacks.notify_ok == NULL || pull->background ||
	    now - pull->last_notify < (time_t)pull->fuser->set.progress_interval_secs)
		return;
	pull->last_notify = now;
	storage->callbacks.notify_ok(pull->box, t_strdup_printf(
		"Migrating %s: %u of %u messages copied",
		pull->vname, pull->copied, pull->total),
		storage->callback_context);
}

/* Durability per batch rather than per message: the messages of a batch
   are saved without an fsync each (see ferry_pull_messages), and after the
   batch's commit one syncfs() makes the mail files, their renames and the
   index durable together. A crash re-fetches at most one batch anyway, and
   the resume rule (highest local UID below old UIDNEXT) holds whatever the
   index kept.

   When a client's command waits for the pull, the syncfs() runs in a
   helper thread while the next batch is fetched and saved (durable.c);
   the next commit, and the completion, wait for it. Batches are then half
   of ferry_batch_size (ferry_pull_messages), so that what a power loss
   can take - the batch being made durable and the one being fetched - is
   still at most ferry_batch_size messages. Any other pull (doveadm,
   ferryd's bulk pulls, background workers) waits anyway: its syncfs()
   runs in line, in this thread. */
static int ferry_pull_sync_batch(struct ferry_pull *pull)
{
	const char *path, *error;

	if (pull->saved_fsync_mode == FSYNC_MODE_NEVER)
		return 0; /* the admin chose no fsyncs at all */
	if (mailbox_get_path_to(pull->box, MAILBOX_LIST_PATH_TYPE_MAILBOX,
				&path) <= 0)
		return 0;
	if (ferry_durable_start(&pull->durable, path, pull->overlap,
				&error) < 0)
		return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE, error);
	return 0;
}

/* The previous batch is durable (or failed to become so). */
static int ferry_pull_sync_wait(struct ferry_pull *pull)
{
	const char *error;

	if (ferry_durable_wait(&pull->durable, &error) < 0)
		return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE, error);
	return 0;
}

static int ferry_pull_commit(struct ferry_pull *pull)
{
	struct mail_transaction_commit_changes changes;
	const struct seq_range *range;

	if (pull->t == NULL)
		return 0;
	/* a batch is committed only once the one before it is durable */
	if (ferry_pull_sync_wait(pull) < 0)
		return -1;
	ferry_box_hdr_update(pull->t, &pull->hdr);
	if (mailbox_transaction_commit_get_changes(&pull->t, &changes) < 0)
		return ferry_pull_fail_local(pull, "saving a batch");
	if (ferry_pull_sync_batch(pull) < 0) {
		pool_unref(&changes.pool);
		return -1;
	}

	if (pull->keep_uids) {
		unsigned int kept = 0, count = pull->batch_count;
		uint32_t first_new = 0;

		array_foreach(&changes.saved_uids, range) {
			for (uint32_t uid = range->seq1; uid <= range->seq2; uid++) {
				if (seq_range_exists(&pull->batch_uids, uid))
					kept++;
				else if (first_new == 0)
					first_new = uid;
			}
		}
		if (kept < count && pull->hdr.state == FERRY_BOX_PENDING &&
		    !pull->stragglers) {
			/* Nobody has seen this folder: rather than carry on
			   with fresh UIDs, its trusted part is kept and the
			   rest copied again. Seen after a kill -9 inside
			   maildir's commit: dovecot-uidlist already had the
			   batch, the index not, and the resumed copy's UIDs
			   were taken. */
			pool_unref(&changes.pool);
			array_clear(&pull->batch_uids);
			pull->batch_count = 0;
			pull->hdr.copied_upto = pull->trusted_upto;
			(void)ferry_box_hdr_write(pull->box, &pull->hdr);
			pull->needs_recopy = TRUE;
			return ferry_pull_fail(pull, MAIL_ERROR_TEMP, t_strdup_printf(
				"%u of %u messages of a batch could not keep their "
				"old UIDs (first new UID %u)", count - kept, count,
				first_new));
		}
		array_foreach(&changes.saved_uids, range) {
			for (uint32_t uid = range->seq1; uid <= range->seq2; uid++) {
				if (seq_range_exists(&pull->batch_uids, uid))
					continue;
				i_error(FERRY_LOG_PREFIX "folder=%s event=renumbered "
					"new_uid=%u: a message could not keep its "
					"old UID; later messages get fresh UIDs",
					pull->vname, uid);
			}
		}
		if (kept < count) {
			pull->renumbered += count - kept;
			pull->hdr.renumbered += count - kept;
			pull->keep_uids = FALSE;
		}
	}
	pool_unref(&changes.pool);
	array_clear(&pull->batch_uids);
	pull->batch_count = 0;
	if (pull->keep_uids)
		pull->trusted_upto = pull->hdr.copied_upto;
	/* The folder's view follows the index after every batch: a view left
	   behind pins every transaction log record since it last synced, in
	   memory (measured: 6.5 MB at 200,000 messages in one folder). A fast
	   sync of the SAVEONLY box does not scan the mail files. */
	if (mailbox_sync(pull->box, MAILBOX_SYNC_FLAG_FAST) < 0)
		return ferry_pull_fail_local(pull, "syncing after a batch");
	return 0;
}

/* After an interruption, local UIDs above the header's copied_upto come
   from the batch in flight. Dovecot's maildir moves a batch's files into
   place before it writes their UIDs to dovecot-uidlist; a process killed
   between the two leaves files that the next sync numbers afresh from
   next_uid — so such a UID may name a different old message (seen in the
   kill -9 tests). Every such message is checked against the old message
   with its UID (RFC822.SIZE and INTERNALDATE, one pipelined FETCH for at
   most a batch). Returns 1 when they all match, 0 when the folder must be
   copied again, -1 on error. */
static int ferry_pull_check_tail(struct ferry_pull *pull, uint32_t last_uid)
{
	struct mailbox_transaction_context *t, *ot;
	struct mail_search_context *search;
	struct mail *mail, *omail;
	uoff_t size, osize;
	time_t date, odate;
	int ret = 1;

	t = mailbox_transaction_begin(pull->box, 0, "ferry check");
	ot = mailbox_transaction_begin(pull->obox, 0, "ferry check");
	omail = mail_alloc(ot, MAIL_FETCH_PHYSICAL_SIZE |
			   MAIL_FETCH_RECEIVED_DATE, NULL);
	search = ferry_search_uid_range(t, pull->hdr.copied_upto + 1, last_uid,
					MAIL_FETCH_VIRTUAL_SIZE |
					MAIL_FETCH_RECEIVED_DATE);
	while (ret > 0 && mailbox_search_next(search, &mail)) {
		if (!mail_set_uid(omail, mail->uid) ||
		    mail_get_physical_size(omail, &osize) < 0 ||
		    mail_get_received_date(omail, &odate) < 0 ||
		    /* RFC822.SIZE counts CRLFs: compare with the local
		       virtual size (maildir may store bare LFs) */
		    mail_get_virtual_size(mail, &size) < 0 ||
		    mail_get_received_date(mail, &date) < 0 ||
		    size != osize || date != odate) {
			i_warning(FERRY_LOG_PREFIX "folder=%s event=crash-renumbered "
				  "uid=%u: not the old message with this UID",
				  pull->vname, mail->uid);
			ret = 0;
		}
	}
	if (mailbox_search_deinit(&search) < 0 && ret > 0)
		ret = ferry_pull_fail_local(pull, "checking the interrupted batch");
	mail_free(&omail);
	(void)mailbox_transaction_commit(&ot);
	(void)mailbox_transaction_commit(&t);
	return ret;
}

/* Sets the folder's identity (UIDVALIDITY) and decides where the copy
   resumes. */
static int ferry_pull_prepare(struct ferry_pull *pull, uint32_t *start_r)
{
	struct ferry_box_hdr *hdr = &pull->hdr;
	uint32_t last_uid = 0;

	if (pull->lst.messages > 0)
		mail_index_lookup_uid(pull->box->view, pull->lst.messages,
				      &last_uid);

	if (hdr->state == FERRY_BOX_UNKNOWN) {
		hdr->old_uidvalidity = pull->ost.uidvalidity;
		if (pull->lst.messages == 0 &&
		    pull->lst.uidvalidity != pull->ost.uidvalidity) {
			struct mailbox_update update;

			i_zero(&update);
			update.uid_validity = pull->ost.uidvalidity;
			if (mailbox_update(pull->box, &update) < 0 ||
			    mailbox_sync(pull->box, 0) < 0)
				return ferry_pull_fail_local(pull,
					"setting UIDVALIDITY");
			pull->lst.uidvalidity = pull->ost.uidvalidity;
		} else if (pull->lst.messages > 0 &&
			   pull->lst.uidvalidity != pull->ost.uidvalidity) {
			/* Local mail that predates Ferry: its UIDVALIDITY is
			   not the old one, so clients resync anyway; old
			   messages are appended with fresh UIDs. */
			i_warning(FERRY_LOG_PREFIX "folder=%s event=fresh-uids: "
				  "folder already has %u messages under "
				  "UIDVALIDITY %u (old server: %u)", pull->vname,
				  pull->lst.messages, pull->lst.uidvalidity,
				  pull->ost.uidvalidity);
		}
		hdr->state = FERRY_BOX_PENDING;
	} else if (hdr->old_uidvalidity != pull->ost.uidvalidity) {
		return ferry_pull_fail(pull, MAIL_ERROR_NOTPOSSIBLE,
			t_strdup_printf("the old server changed the folder's "
					"UIDVALIDITY from %u to %u during the "
					"migration; it needs a new copy",
					hdr->old_uidvalidity,
					pull->ost.uidvalidity));
	}
	pull->keep_uids = pull->lst.uidvalidity == pull->ost.uidvalidity &&
		hdr->renumbered == 0;
	*start_r = hdr->copied_upto;
	/* The header may lag the messages if a crash hit between the mail
	   files and the index commit; local UIDs below old UIDNEXT are old
	   messages, so the highest of them is copied too. */
	/* an interrupted copy with local UIDs at or above the old UIDNEXT was
	   renumbered by the storage (seen with a full disk while Dovecot
	   rewrote dovecot-uidlist): the trusted part is rebuilt */
	if (pull->resumed && pull->keep_uids && last_uid >= pull->ost.uidnext) {
		pull->needs_recopy = TRUE;
		return ferry_pull_fail(pull, MAIL_ERROR_TEMP, t_strdup_printf(
			"local UID %u at or above the old UIDNEXT %u",
			last_uid, pull->ost.uidnext));
	}
	if (pull->keep_uids && last_uid < pull->ost.uidnext &&
	    last_uid > *start_r) {
		int ret = ferry_pull_check_tail(pull, last_uid);
		if (ret < 0)
			return -1;
		if (ret == 0) {
			pull->needs_recopy = TRUE;
			return ferry_pull_fail(pull, MAIL_ERROR_TEMP,
				"an interrupted copy left renumbered messages");
		}
		*start_r = last_uid;
	}
	return 0;
}

static void ferry_pull_begin(struct ferry_pull *pull)
{
	if (pull->t == NULL) {
		pull->t = mailbox_transaction_begin(pull->box,
			MAILBOX_TRANSACTION_FLAG_EXTERNAL |
			MAILBOX_TRANSACTION_FLAG_ASSIGN_UIDS, "ferry pull");
	}
}

static void ferry_pull_saved(struct ferry_pull *pull, uint32_t uid,
			     uoff_t size)
{
	pull->bytes += size;
	seq_range_array_add(&pull->batch_uids, uid);
	pull->batch_count++;
	pull->copied++;
	pull->hdr.copied++;
}

/* The old message's flags and keywords, without \Recent: the copies are
   not recent (the user has seen them on the old server; STATUS answered
   from there says RECENT 0), and on maildir a message saved with only
   \Recent goes to new/, which the completion's sync would then rename
   into cur/ one file at a time. */
static void ferry_pull_save_flags(struct mail_save_context *save,
				  struct mail *mail)
{
	mailbox_save_copy_flags(save, mail);
	save->data.flags &= ENUM_NEGATE(MAIL_RECENT);
}

static int ferry_pull_copy_one(struct ferry_pull *pull, struct mail *mail,
			       uoff_t size)
{
	struct mail_save_context *save;
	struct istream *input;
	uoff_t body_size;
	time_t save_date;

	/* the body as fetched must be the announced RFC822.SIZE: a literal
	   cut short (or padded) by the server is never saved */
	if (mail_get_stream(mail, NULL, NULL, &input) == 0) {
		if (i_stream_get_size(input, TRUE, &body_size) > 0 &&
		    body_size != size) {
			return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE,
				t_strdup_printf("old server: UID %u: the old "
				"server announced RFC822.SIZE %"PRIuUOFF_T" but "
				"sent %"PRIuUOFF_T" bytes of the body; not copied",
				mail->uid, size, body_size));
		}
		i_stream_set_max_buffer_size(input, FERRY_SAVE_BLOCK_SIZE);
	}
	ferry_pull_begin(pull);
	save = mailbox_save_alloc(pull->t);
	ferry_pull_save_flags(save, mail);
	if (pull->keep_uids)
		mailbox_save_set_uid(save, mail->uid);
	if (mail_get_save_date(mail, &save_date) >= 0)
		mailbox_save_set_save_date(save, save_date);
	if (mailbox_copy(&save, mail) < 0) {
		if (mail->expunged)
			return 0; /* expunged on the old server meanwhile */
		return ferry_pull_fail_local(pull, t_strdup_printf(
			"copying old UID %u", mail->uid));
	}
	ferry_pull_saved(pull, mail->uid, size);
	return 0;
}

struct mail_search_context *
ferry_search_uid_range(struct mailbox_transaction_context *t, uint32_t first,
		       uint32_t last, enum mail_fetch_field fields)
{
	struct mail_search_args *args = mail_search_build_init();
	struct mail_search_arg *arg = mail_search_build_add(args, SEARCH_UIDSET);
	struct mail_search_context *search;

	p_array_init(&arg->value.seqset, args->pool, 1);
	seq_range_array_add_range(&arg->value.seqset, first, last);
	search = mailbox_search_init(t, args, NULL, fields, NULL);
	mail_search_args_unref(&args);
	return search;
}

static struct mail_search_context *
ferry_old_search(struct mailbox_transaction_context *ot,
		 const ARRAY_TYPE(seq_range) *uids, enum mail_fetch_field fields)
{
	struct mail_search_args *args = mail_search_build_init();
	struct mail_search_arg *arg = mail_search_build_add(args, SEARCH_UIDSET);
	struct mail_search_context *search;

	p_array_init(&arg->value.seqset, args->pool, array_count(uids));
	array_append_array(&arg->value.seqset, uids);
	search = mailbox_search_init(ot, args, NULL, fields, NULL);
	mail_search_args_unref(&args);
	return search;
}

/* The old UIDs first..last still to copy, with their RFC822.SIZE: one
   command, no bodies (old-sizes.c); the next batch's (next_first..
   next_last, if any) is asked for right after. */
static int ferry_pull_todo(struct ferry_pull *pull, uint32_t first,
			   uint32_t last, uint32_t next_first,
			   uint32_t next_last, ARRAY_TYPE(ferry_old_size) *todo)
{
	ARRAY_TYPE(ferry_old_size) sizes;
	const struct ferry_old_size *item;
	uoff_t max = pull->fuser->set.max_message_size;
	const char *error;

	t_array_init(&sizes, last - first + 1 < 4096 ? last - first + 1 : 4096);
	if (ferry_old_sizes_fetch(pull->obox, first, last, &sizes, &error) < 0)
		return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE,
			t_strdup_printf("old server: %s", error));
	if (next_first != 0)
		ferry_old_sizes_prefetch(pull->obox, next_first, next_last);
	array_foreach(&sizes, item) {
		pull->last_seen_uid = item->uid;
		if (max > 0 && item->size > max) {
			/* never silently: logged and counted in the header */
			i_warning(FERRY_LOG_PREFIX "folder=%s event=skipped "
				  "old_uid=%u size=%"PRIuUOFF_T": larger than "
				  "ferry_max_message_size", pull->vname,
				  item->uid, item->size);
			pull->skipped++;
			pull->hdr.skipped++;
			continue;
		}
		array_push_back(todo, item);
	}
	return 0;
}

/* A large message: its flags and dates through imapc, its body in
   ranges (old-body.c), saved with the same metadata as a copy. */
static int ferry_pull_copy_big(struct ferry_pull *pull, struct mail *mail,
			       uoff_t size)
{
	struct mail_save_context *save;
	struct istream *input;
	const char *error;
	time_t date;
	int ret = 0;

	if (ferry_old_body_fetch(pull->obox, mail->uid, size, &input,
				 &error) < 0)
		return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE,
				       t_strdup_printf("old server: %s", error));
	if (input == NULL)
		return 0; /* expunged on the old server meanwhile */
	ferry_pull_begin(pull);
	save = mailbox_save_alloc(pull->t);
	ferry_pull_save_flags(save, mail);
	if (pull->keep_uids)
		mailbox_save_set_uid(save, mail->uid);
	if (mail_get_received_date(mail, &date) < 0) {
		mailbox_save_cancel(&save);
		i_stream_unref(&input);
		return ferry_pull_fail_old(pull, "INTERNALDATE");
	}
	mailbox_save_set_received_date(save, date, 0);
	if (mail_get_save_date(mail, &date) >= 0)
		mailbox_save_set_save_date(save, date);
	if (mailbox_save_begin(&save, input) < 0)
		ret = -1;
	while (ret == 0 && i_stream_read(input) != -1) {
		if (mailbox_save_continue(save) < 0)
			ret = -1;
	}
	if (ret == 0 && (input->stream_errno != 0 || input->v_offset != size)) {
		/* what is saved must be all that was fetched */
		const char *error = input->stream_errno != 0 ?
			t_strdup(i_stream_get_error(input)) : t_strdup_printf(
			"saved %"PRIuUOFF_T" of %"PRIuUOFF_T" bytes",
			input->v_offset, size);
		mailbox_save_cancel(&save);
		i_stream_unref(&input);
		return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE,
			t_strdup_printf("reading old UID %u: %s", mail->uid,
					error));
	}
	if (ret == 0 && mailbox_save_finish(&save) < 0)
		ret = -1;
	if (ret < 0 && save != NULL)
		mailbox_save_cancel(&save);
	i_stream_unref(&input);
	if (ret < 0)
		return ferry_pull_fail_local(pull, t_strdup_printf(
			"saving old UID %u", mail->uid));
	ferry_pull_saved(pull, mail->uid, size);
	return 0;
}

/* Consecutive messages, fetched as one pipelined search (bodies of small
   ones prefetched; large ones in ranges). */
static int ferry_pull_run_of(struct ferry_pull *pull,
			     struct mailbox_transaction_context *ot,
			     const struct ferry_old_size *items, unsigned int count,
			     bool big)
{
	ARRAY_TYPE(seq_range) range;
	struct mail_search_context *search;
	struct mail *mail;
	enum mail_fetch_field fields = MAIL_FETCH_FLAGS |
		MAIL_FETCH_RECEIVED_DATE | MAIL_FETCH_SAVE_DATE;
	int ret = 0;

	if (!big)
		fields |= MAIL_FETCH_STREAM_HEADER | MAIL_FETCH_STREAM_BODY;
	t_array_init(&range, count);
	for (unsigned int i = 0; i < count; i++)
		seq_range_array_add(&range, items[i].uid);
	search = ferry_old_search(ot, &range, fields);
	for (unsigned int i = 0; ret == 0 && mailbox_search_next(search, &mail); ) {
		while (i < count && items[i].uid < mail->uid)
			i++;
		T_BEGIN {
			ret = big && i < count ?
				ferry_pull_copy_big(pull, mail, items[i].size) :
				ferry_pull_copy_one(pull, mail, items[i].size);
		} T_END;
		if (ret == 0) {
			pull->hdr.copied_upto = mail->uid;
			ferry_pull_notify(pull);
			if (!big && pull->waiting)
				ferry_old_fetch_ahead(pull->obox,
					pull->fuser->set.prefetch_count);
		}
	}
	if (mailbox_search_deinit(&search) < 0 && ret == 0)
		ret = ferry_pull_fail_old(pull, "FETCH");
	return ret;
}

/* A run of large messages (over ferry_big_message_size, fetched in
   ranges one at a time): every such message that follows. */
static unsigned int
ferry_pull_big_run(const struct ferry_old_size *items, unsigned int count,
		   uoff_t big_size)
{
	unsigned int n;

	for (n = 1; n < count && items[n].size > big_size; n++) ;
	return n;
}

/* Bodies fetched whole are held in memory by imapc for its whole prefetch
   window (measured: 300 messages of ~1.5 MB, window 50: 92 MB peak RSS),
   so what a window may hold is bounded: 3 x ferry_big_message_size. */
#define FERRY_PULL_AHEAD_BYTES(big_size) ((big_size) * 3)

/* A run of messages fetched whole through imapc's prefetching search: it
   ends before any `window` consecutive messages of it would together
   exceed `ahead` bytes. Runs are one search each and a shorter run is
   shorter FETCH commands (each costs the old server a mailbox sync), so
   only large sums end one: 50 messages of 20 KB are 1 MB. */
static unsigned int
ferry_pull_whole_run(const struct ferry_old_size *items, unsigned int count,
		     uoff_t big_size, uoff_t ahead, unsigned int window)
{
	uoff_t held = items[0].size;
	unsigned int n;

	for (n = 1; n < count && items[n].size <= big_size; n++) {
		if (n >= window)
			held -= items[n - window].size;
		if (held + items[n].size > ahead)
			break;
		held += items[n].size;
	}
	return n;
}

/* One batch (old UIDs first..last), committed as one transaction: a crash
   re-fetches at most this batch. The old side gets a transaction of its
   own per batch, rolled back after: imapc keeps what it fetched (sizes,
   dates) in its transaction's cache records, which every lookup scans -
   over a whole folder that cost time quadratic and memory linear in the
   folder's size. */
static int ferry_pull_batch(struct ferry_pull *pull, uint32_t first,
			    uint32_t last, uint32_t next_first,
			    uint32_t next_last)
{
	uoff_t big_size = pull->fuser->set.big_message_size;
	struct mailbox_transaction_context *ot;
	ARRAY_TYPE(ferry_old_size) todo;
	const struct ferry_old_size *items;
	unsigned int i, n, count;
	int ret;

	ot = mailbox_transaction_begin(pull->obox, 0, "ferry pull");
	t_array_init(&todo, pull->fuser->set.batch_size);
	ret = ferry_pull_todo(pull, first, last, next_first, next_last, &todo);
	items = array_get(&todo, &count);
	for (i = 0; ret == 0 && i < count; i += n) {
		bool big = items[i].size > big_size;
		n = big ? ferry_pull_big_run(items + i, count - i, big_size) :
			ferry_pull_whole_run(items + i, count - i, big_size,
				FERRY_PULL_AHEAD_BYTES(big_size),
				pull->fuser->set.prefetch_count + 1);
		ret = ferry_pull_run_of(pull, ot, items + i, n, big);
	}
	if (ret == 0 && count > 0) {
		/* messages expunged on the old server meanwhile are done */
		pull->hdr.copied_upto = items[count - 1].uid;
		ret = ferry_pull_commit(pull);
	}
	if (pull->t != NULL)
		mailbox_transaction_rollback(&pull->t);
	mailbox_transaction_rollback(&ot);
	return ret;
}

static int ferry_pull_messages(struct ferry_pull *pull, uint32_t start)
{
	unsigned int batch = pull->fuser->set.batch_size;
	uint32_t seq, seq1, seq2, first, last, next_first, next_last;
	int ret = 0;

	if (start + 1 >= pull->ost.uidnext)
		return 0;
	/* the old folder's UIDs as imapc's index has them since the SELECT:
	   batches are cut from it, nothing per message is kept */
	mailbox_get_seq_range(pull->obox, start + 1, pull->ost.uidnext - 1,
			      &seq1, &seq2);
	if (seq1 == 0)
		return 0;
	pull->total = seq2 - seq1 + 1;
	/* a rebuilt folder is copied again with this same state */
	i_array_init(&pull->batch_uids, 32);
	pull->batch_count = 0;
	/* no fsync per message during the copy (ferry_pull_sync_batch); the
	   process does nothing else meanwhile, so changing the storage's
	   setting for the duration is contained */
	pull->saved_fsync_mode =
		ferry_storage_fsync_swap(pull->box->storage, FSYNC_MODE_NEVER);
	/* a waiting command's batches are made durable in the background,
	   two at a time at most: half a batch each (ferry_pull_sync_batch) */
	pull->overlap = pull->waiting && batch >= 2 &&
		pull->saved_fsync_mode != FSYNC_MODE_NEVER;
	if (pull->overlap)
		batch /= 2;
	/* once durable, a batch's files leave the page cache (durable.c):
	   where each message is a file of its own, and only if batches are
	   synced at all (dirty pages cannot be dropped) */
	if (pull->saved_fsync_mode != FSYNC_MODE_NEVER &&
	    (strcmp(pull->box->storage->name, "maildir") == 0 ||
	     strcmp(pull->box->storage->name, "sdbox") == 0))
		ferry_box_set_durable(pull->box, &pull->durable);
	for (seq = seq1; ret == 0 && seq <= seq2; seq += batch) {
		if (pull->stop != NULL &&
		    __atomic_load_n(pull->stop, __ATOMIC_SEQ_CST) != 0) {
			pull->stopped = TRUE;
			break;
		}
		mail_index_lookup_uid(pull->obox->view, seq, &first);
		mail_index_lookup_uid(pull->obox->view,
				      I_MIN(seq2, seq + batch - 1), &last);
		next_first = next_last = 0;
		if (seq2 - seq >= batch) {
			mail_index_lookup_uid(pull->obox->view, seq + batch,
					      &next_first);
			mail_index_lookup_uid(pull->obox->view,
				I_MIN(seq2, seq + 2 * batch - 1), &next_last);
		}
		T_BEGIN {
			ret = ferry_pull_batch(pull, first, last, next_first,
					       next_last);
		} T_END;
	}
	/* a stop or a failure leaves the next batch's sizes unread */
	ferry_old_sizes_discard();
	/* the last batch is durable before the folder can be completed */
	if (ret == 0)
		ret = ferry_pull_sync_wait(pull);
	else {
		const char *error;
		(void)ferry_durable_wait(&pull->durable, &error);
	}
	ferry_box_set_durable(pull->box, NULL);
	ferry_durable_deinit(&pull->durable);
	(void)ferry_storage_fsync_swap(pull->box->storage,
				       pull->saved_fsync_mode);
	array_free(&pull->batch_uids);
	return ret;
}

/* Expunges the local messages at or above the old UIDNEXT. */
static int ferry_pull_expunge_above(struct ferry_pull *pull)
{
	struct mailbox_transaction_context *t;
	struct mail_search_context *search;
	struct mail *mail;
	unsigned int n = 0;
	int ret;

	t = mailbox_transaction_begin(pull->box, 0, "ferry leftovers");
	search = ferry_search_uid_range(t, pull->ost.uidnext, (uint32_t)-1, 0);
	while (mailbox_search_next(search, &mail)) {
		mail_expunge(mail);
		n++;
	}
	ret = mailbox_search_deinit(&search);
	if (ret < 0 || mailbox_transaction_commit(&t) < 0 ||
	    mailbox_sync(pull->box, 0) < 0) {
		if (t != NULL)
			mailbox_transaction_rollback(&t);
		return ferry_pull_fail_local(pull, "expunging leftovers of an "
					     "interrupted commit");
	}
	i_warning(FERRY_LOG_PREFIX "folder=%s event=leftovers expunged=%u: "
		  "second copies above the old UIDNEXT %u, left by an "
		  "interrupted commit", pull->vname, n, pull->ost.uidnext);
	return 0;
}

static int ferry_pull_complete(struct ferry_pull *pull)
{
	struct mailbox_update update;
	const char *error;

	/* The copied part is checked against the old server like a mirror
	   pass (from imapc's index, no extra traffic) before the folder is
	   called complete. A process killed inside Dovecot's maildir save can
	   leave a keyword unnamed ("unknown-N", kill -9 tests); a full disk
	   while maildir writes dovecot-keywords leaves files whose keyword
	   letters were never named (Dovecot ignores that write's error): a
	   resumed copy re-reads the mail files first so the index shows what
	   the files say. Nobody has seen the folder yet, so this changes
	   nothing a client knows. */
	if (!pull->stragglers &&
	    (pull->mode == FERRY_PULL_MIRROR || pull->resumed || pull->copied > 0)) {
		struct ferry_mirror_result mres;

		if (pull->resumed &&
		    mailbox_sync(pull->box, MAILBOX_SYNC_FLAG_FORCE_RESYNC) < 0)
			return ferry_pull_fail_local(pull, "re-reading the folder");
		if (ferry_mirror_messages(pull->box, pull->obox, pull->ost.uidnext,
					  !pull->resumed, &mres, &error) < 0)
			return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE, error);
		pull->flag_changes += mres.flag_changes;
		pull->expunged += mres.expunged;
		/* every old message must be here under its UID (skipped ones
		   aside): a storage that renumbered files behind our back (a
		   full disk while dovecot-uidlist was rewritten) is caught
		   here, not by the user's client */
		if (pull->keep_uids && mres.missing > pull->hdr.skipped) {
			pull->hdr.copied_upto = mres.first_missing_uid - 1;
			(void)ferry_box_hdr_write(pull->box, &pull->hdr);
			pull->needs_recopy = TRUE;
			return ferry_pull_fail(pull, MAIL_ERROR_TEMP, t_strdup_printf(
				"%u old messages have no local copy under their "
				"UID (first: %u)", mres.missing,
				mres.first_missing_uid));
		}
		/* Until it is complete, every open of the folder waits for
		   the copy, so nothing but the copy saved into it: a message
		   above the old UIDNEXT is a file an interrupted commit moved
		   in before dovecot-uidlist named it, numbered afresh by the
		   re-read above - a second copy of an old message the resumed
		   copy fetched again (kill -9 tests). Nobody has seen it: it
		   is expunged (a rebuild would not do for INBOX, which
		   Dovecot does not delete). */
		if (pull->keep_uids && pull->hdr.state == FERRY_BOX_PENDING &&
		    mres.above > 0 && ferry_pull_expunge_above(pull) < 0)
			return -1;
	}
	/* Expunged old UIDs stay reserved: a new message may not take one.
	   The copies are not \Recent: the user has seen them on the old
	   server, and STATUS answered from there says RECENT 0. */
	if (pull->keep_uids) {
		i_zero(&update);
		update.min_next_uid = pull->ost.uidnext;
		update.min_first_recent_uid = pull->ost.uidnext;
		if (mailbox_update(pull->box, &update) < 0)
			return ferry_pull_fail_local(pull, "raising UIDNEXT");
	}
	bool was_complete = pull->hdr.state == FERRY_BOX_COMPLETE;
	/* skipped messages are done with too: not counted again next pass */
	if (pull->last_seen_uid > pull->hdr.copied_upto)
		pull->hdr.copied_upto = pull->last_seen_uid;
	pull->hdr.state = FERRY_BOX_COMPLETE;
	pull->hdr.old_uidnext = pull->ost.uidnext;
	pull->hdr.old_messages = pull->ost.messages;
	if (!was_complete)
		pull->hdr.completed_time = (uint32_t)time(NULL);
	if (ferry_box_hdr_write(pull->box, &pull->hdr) < 0)
		return ferry_pull_fail_local(pull, "marking complete");
	pull->completed = !was_complete;
	if (was_complete && pull->copied + pull->flag_changes +
	    pull->expunged + pull->skipped == 0)
		return 0; /* a pass that found nothing: no log line */
	i_info(FERRY_LOG_PREFIX "folder=%s event=%s copied=%u renumbered=%u "
	       "flag_changes=%u expunged=%u skipped=%u old_messages=%u "
	       "uidvalidity=%u uidnext=%u", pull->vname,
	       pull->stragglers ? "stragglers" :
	       was_complete ? "mirrored" : "complete",
	       pull->copied, pull->renumbered, pull->flag_changes,
	       pull->expunged, pull->skipped, pull->ost.messages, pull->ost.uidvalidity,
	       pull->ost.uidnext);
	return 0;
}

/* The folder is locked and the local state is fresh. */
static int ferry_pull_locked(struct ferry_pull *pull)
{
	struct mail_user *old;
	const char *error;
	enum mail_error err;
	uint32_t start;
	const enum mailbox_status_items items =
		STATUS_UIDVALIDITY | STATUS_UIDNEXT | STATUS_MESSAGES;

	if (ferry_old_user_get(pull->user, &old, &error) < 0)
		return ferry_pull_fail(pull, MAIL_ERROR_UNAVAILABLE, error);
	pull->obox = mailbox_alloc(mail_namespace_find_inbox(old->namespaces)->list,
				   ferry_old_name(pull->user, old, pull->vname),
				   MAILBOX_FLAG_READONLY);
	if (mailbox_open(pull->obox) < 0) {
		error = mailbox_get_last_internal_error(pull->obox, &err);
		if (err != MAIL_ERROR_NOTFOUND)
			return ferry_pull_fail_old(pull, "SELECT");
		/* Not on the old server: a folder made here, or one deleted
		   there. Either way there is nothing to copy. */
		pull->hdr.state = pull->hdr.state == FERRY_BOX_UNKNOWN ?
			FERRY_BOX_LOCAL : FERRY_BOX_COMPLETE;
		if (ferry_box_hdr_write(pull->box, &pull->hdr) < 0)
			return ferry_pull_fail_local(pull, "marking local");
		pull->completed = TRUE;
		return 0;
	}
	if (mailbox_sync(pull->obox, 0) < 0)
		return ferry_pull_fail_old(pull, "SELECT");
	ferry_old_body_register(pull->obox);
	ferry_old_sizes_register(pull->obox);
	if (mailbox_get_status(pull->obox, items, &pull->ost) < 0)
		return ferry_pull_fail_old(pull, "STATUS");
	if (mailbox_get_status(pull->box, items, &pull->lst) < 0)
		return ferry_pull_fail_local(pull, "STATUS");

	if (pull->hdr.state == FERRY_BOX_COMPLETE &&
	    pull->hdr.old_uidvalidity != pull->ost.uidvalidity) {
		/* the old folder was recreated: a mirror re-copies it (the
		   caller recreates the folder); after cut-over the new folder
		   is the truth */
		pull->uidvalidity_changed = TRUE;
		return ferry_pull_fail(pull, MAIL_ERROR_NOTPOSSIBLE,
			t_strdup_printf("the old server changed the folder's "
					"UIDVALIDITY from %u to %u",
					pull->hdr.old_uidvalidity,
					pull->ost.uidvalidity));
	}
	pull->resumed = pull->hdr.state == FERRY_BOX_PENDING;
	bool was_complete = pull->hdr.state == FERRY_BOX_COMPLETE;
	if (ferry_pull_prepare(pull, &start) < 0)
		return -1;
	/* a folder never completed is copied with its old UIDs even in a
	   stragglers pass: STATUS may already have shown its old numbers */
	pull->stragglers = pull->mode == FERRY_PULL_STRAGGLERS && was_complete;
	if (pull->stragglers) {
		/* the new folder is the truth: what the old one still gets is
		   appended above everything, with fresh UIDs */
		pull->keep_uids = FALSE;
		if (pull->hdr.old_uidnext > start + 1)
			start = pull->hdr.old_uidnext - 1;
	}
	pull->trusted_upto = start;
	if (pull->resumed) {
		i_info(FERRY_LOG_PREFIX "folder=%s event=resume after_uid=%u "
		       "copied_upto=%u local_messages=%u", pull->vname, start,
		       pull->hdr.copied_upto, pull->lst.messages);
	}
	if (ferry_pull_messages(pull, start) < 0)
		return -1;
	return pull->stopped ? 0 : ferry_pull_complete(pull);
}

static bool ferry_box_is_done(const struct ferry_box_hdr *hdr)
{
	return hdr->state == FERRY_BOX_COMPLETE || hdr->state == FERRY_BOX_LOCAL;
}

/* Whether this pass has nothing to do before looking at the old server. */
static bool ferry_pull_is_done(const struct ferry_pull *pull)
{
	if (pull->hdr.state == FERRY_BOX_LOCAL)
		return TRUE;
	return pull->mode == FERRY_PULL_LAZY &&
		pull->hdr.state == FERRY_BOX_COMPLETE;
}

static int ferry_pull_run(struct ferry_pull *pull)
{
	struct file_lock *lock;
	const char *error;
	enum mail_error err;
	int ret;

	if (mailbox_open(pull->box) < 0) {
		error = mailbox_get_last_internal_error(pull->box, &err);
		if (err == MAIL_ERROR_NOTFOUND)
			return 0; /* the caller reports it as usual */
		return ferry_pull_fail_local(pull, "open");
	}
	ferry_box_hdr_get(pull->box, &pull->hdr);
	if (ferry_pull_is_done(pull))
		return 0;

	/* a background step never waits: the other writer completes it */
	ret = mailbox_lock_file_create(pull->box, FERRY_BOX_LOCK_FNAME,
				       pull->background ? 0 :
				       pull->fuser->set.lock_timeout_secs,
				       &lock, &error);
	if (ret == 0 && pull->background) {
		pull->busy = TRUE;
		return 0;
	}
	if (ret <= 0) {
		return ferry_pull_fail(pull, ret == 0 ? MAIL_ERROR_INUSE :
				       MAIL_ERROR_UNAVAILABLE,
			ret == 0 ? "another process is copying this folder; "
			"try again shortly" : error);
	}
	/* see what the previous lock holder did */
	if (mailbox_sync(pull->box, 0) < 0)
		ret = ferry_pull_fail_local(pull, "sync");
	else {
		ferry_box_hdr_get(pull->box, &pull->hdr);
		if (ferry_pull_is_done(pull))
			ret = 0;
		else {
			ferry_heap_hold();
			ret = ferry_pull_locked(pull);
			ferry_heap_release();
		}
	}
	file_lock_free(&lock);
	return ret;
}

/* The folder's trusted part (UIDs up to keep_upto, committed with the
   header that says so) moved into a fresh folder with the same UIDVALIDITY:
   a local copy (hard links on maildir) keeping every UID, so that only the
   batch in flight is fetched again from the old server. The renumbered
   files of the interrupted commit are left behind with the old folder. */
static int ferry_pull_rebuild(struct mail_user *user, const char *vname,
			      const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	const char *tmp_name = t_strconcat(vname, "-ferry-rebuild", NULL);
	struct mailbox *box, *tmp;
	struct mailbox_transaction_context *t, *tt;
	struct mail_transaction_commit_changes changes;
	struct mail_search_context *search;
	struct mail_save_context *save;
	struct mailbox_update update;
	struct mailbox_status st;
	struct ferry_box_hdr hdr;
	struct mail *mail;
	unsigned int count = 0;
	int ret = 0;

	box = mailbox_alloc(ns->list, vname, MAILBOX_FLAG_IGNORE_ACLS);
	tmp = mailbox_alloc(ns->list, tmp_name, MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_open(box) < 0 || mailbox_sync(box, 0) < 0 ||
	    mailbox_get_status(box, STATUS_UIDVALIDITY, &st) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
		goto out;
	}
	ferry_box_hdr_get(box, &hdr);
	i_zero(&update);
	update.uid_validity = st.uidvalidity;
	(void)mailbox_delete(tmp); /* left over from an earlier attempt */
	mailbox_free(&tmp);
	tmp = mailbox_alloc(ns->list, tmp_name, MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_create(tmp, &update, FALSE) < 0 || mailbox_open(tmp) < 0) {
		*error_r = mailbox_get_last_internal_error(tmp, NULL);
		ret = -1;
		goto out;
	}
	t = mailbox_transaction_begin(box, 0, "ferry rebuild");
	tt = mailbox_transaction_begin(tmp, MAILBOX_TRANSACTION_FLAG_EXTERNAL |
				       MAILBOX_TRANSACTION_FLAG_ASSIGN_UIDS,
				       "ferry rebuild");
	search = ferry_search_uid_range(t, 1, I_MAX(hdr.copied_upto, 1), 0);
	while (ret == 0 && mailbox_search_next(search, &mail)) {
		if (mail->uid > hdr.copied_upto)
			break;
		save = mailbox_save_alloc(tt);
		mailbox_save_copy_flags(save, mail);
		mailbox_save_set_uid(save, mail->uid);
		if (mailbox_copy(&save, mail) < 0) {
			*error_r = mailbox_get_last_internal_error(tmp, NULL);
			ret = -1;
		}
		count++;
	}
	if (mailbox_search_deinit(&search) < 0 && ret == 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
	}
	ferry_box_hdr_update(tt, &hdr);
	if (ret == 0 && mailbox_transaction_commit_get_changes(&tt, &changes) == 0) {
		/* every UID kept, or this is no better than a full copy */
		const struct seq_range *last = array_count(&changes.saved_uids) == 0 ?
			NULL : array_back(&changes.saved_uids);
		if (seq_range_count(&changes.saved_uids) != count ||
		    (last != NULL && last->seq2 > hdr.copied_upto)) {
			*error_r = "UIDs not kept in the rebuilt folder";
			ret = -1;
		}
		pool_unref(&changes.pool);
	} else if (ret == 0) {
		*error_r = mailbox_get_last_internal_error(tmp, NULL);
		ret = -1;
	}
	if (tt != NULL)
		mailbox_transaction_rollback(&tt);
	mailbox_transaction_rollback(&t);
	if (ret == 0 && mailbox_delete(box) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
	}
	if (ret == 0) {
		mailbox_free(&box);
		box = mailbox_alloc(ns->list, vname, MAILBOX_FLAG_IGNORE_ACLS);
		if (mailbox_rename(tmp, box) < 0) {
			*error_r = mailbox_get_last_internal_error(tmp, NULL);
			ret = -1;
		}
	}
	if (ret == 0) {
		i_info(FERRY_LOG_PREFIX "folder=%s event=rebuilt kept=%u: the "
		       "interrupted batch is fetched again", vname, count);
	}
out:
	mailbox_free(&tmp);
	mailbox_free(&box);
	return ret;
}

static int ferry_pull_folder_full(struct mail_user *user, const char *vname,
				  enum ferry_pull_mode mode,
				  const volatile uint32_t *stop,
				  struct ferry_pull_result *result_r,
				  enum mail_error *error_code_r,
				  const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct ferry_pull pull;
	struct mailbox_status status;
	int ret;

	i_zero(&pull);
	pull.user = user;
	pull.fuser = FERRY_USER_CONTEXT(user);
	pull.vname = vname;
	pull.mode = mode;
	pull.background = stop != NULL;
	pull.stop = stop;
	pull.waiting = !pull.background && user->service != NULL &&
		strcmp(user->service, "doveadm") != 0;
	pull.pool = pool_alloconly_create("ferry pull", 1024);
	ferry_internal_begin(user);
	pull.box = mailbox_alloc(ns->list, vname, FERRY_PULL_BOX_FLAGS);
	ret = ferry_pull_run(&pull);
	if (ret < 0 && pull.needs_recopy) {
		/* nobody has seen this folder yet (it was never complete):
		   its trusted part is moved into a fresh folder; if even
		   that fails, it is made again and copied whole */
		const char *error;

		i_warning(FERRY_LOG_PREFIX "folder=%s event=recopy: %s",
			  vname, pull.error);
		if (pull.obox != NULL)
			mailbox_free(&pull.obox);
		mailbox_free(&pull.box);
		if (ferry_pull_rebuild(user, vname, &error) < 0 &&
		    ferry_mirror_recreate(user, vname, &error) < 0) {
			pull.error_code = MAIL_ERROR_UNAVAILABLE;
			pull.error = p_strdup(pull.pool, error);
		} else {
			pull.needs_recopy = FALSE;
			pull.error = NULL;
			i_zero(&pull.hdr);
			pull.box = mailbox_alloc(ns->list, vname,
						 FERRY_PULL_BOX_FLAGS);
			ret = ferry_pull_run(&pull);
		}
		if (pull.box == NULL)
			pull.box = mailbox_alloc(ns->list, vname,
						 FERRY_PULL_BOX_FLAGS);
	}

	i_zero(result_r);
	result_r->vname = vname;
	result_r->state = pull.hdr.state;
	result_r->completed = pull.completed;
	result_r->copied = pull.copied;
	result_r->bytes = pull.bytes;
	result_r->renumbered = pull.renumbered;
	result_r->flag_changes = pull.flag_changes;
	result_r->expunged = pull.expunged;
	result_r->skipped = pull.skipped;
	result_r->uidvalidity_changed = pull.uidvalidity_changed;
	result_r->old_messages = pull.ost.messages;
	result_r->busy = pull.busy;
	if (pull.box->opened && mailbox_sync(pull.box, MAILBOX_SYNC_FLAG_FAST) == 0 &&
	    mailbox_get_status(pull.box, STATUS_MESSAGES, &status) == 0)
		result_r->local_messages = status.messages;
	if (ret < 0) {
		*error_code_r = pull.error_code;
		*error_r = t_strdup_printf("folder %s: %s", vname, pull.error);
		i_error(FERRY_LOG_PREFIX "folder=%s event=failed copied=%u "
			"error=%s", vname, pull.copied, pull.error);
	}
	if (pull.obox != NULL)
		mailbox_free(&pull.obox);
	mailbox_free(&pull.box);
	pool_unref(&pull.pool);
	ferry_internal_end(user);
	return ret;
}

int ferry_pull_folder(struct mail_user *user, const char *vname,
		      enum ferry_pull_mode mode,
		      struct ferry_pull_result *result_r,
		      enum mail_error *error_code_r, const char **error_r)
{
	return ferry_pull_folder_full(user, vname, mode, NULL, result_r,
				      error_code_r, error_r);
}

int ferry_pull_folder_step(struct mail_user *user, const char *vname,
			   const volatile uint32_t *stop,
			   struct ferry_pull_result *result_r,
			   enum mail_error *error_code_r, const char **error_r)
{
	i_assert(stop != NULL);
	return ferry_pull_folder_full(user, vname, FERRY_PULL_LAZY, stop,
				      result_r, error_code_r, error_r);
}

int ferry_folder_names(struct mail_user *user, ARRAY_TYPE(const_string) *names,
		       const char **error_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	enum mail_error err;
	int ret = 0;

	t_array_init(names, 64);
	ferry_internal_begin(user);
	iter = mailbox_list_iter_init(ns->list, "*", 0);
	while ((info = mailbox_list_iter_next(iter)) != NULL) {
		if ((info->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) == 0) {
			const char *name = t_strdup(info->vname);
			array_push_back(names, &name);
		}
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		*error_r = mailbox_list_get_last_error(ns->list, &err);
		ret = -1;
	}
	ferry_internal_end(user);
	return ret;
}

int ferry_each_folder(struct mail_user *user,
		  int (*func)(struct mail_user *user, const char *vname,
			      void *context),
		  void *context, const char **error_r)
{
	ARRAY_TYPE(const_string) names;
	const char *const *namep;
	int ret = 0;

	/* collect first: pulling while a listing is open would nest */
	if (ferry_folder_names(user, &names, error_r) < 0)
		return -1;
	array_foreach(&names, namep) {
		int r = func(user, *namep, context);
		if (r != 0)
			ret = r;
	}
	return ret;
}

static int ferry_check_done_folder(struct mail_user *user, const char *vname,
				   void *context ATTR_UNUSED)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct ferry_box_hdr hdr;
	struct mailbox *box;
	int ret = 1;

	ferry_internal_begin(user);
	box = mailbox_alloc(ns->list, vname, MAILBOX_FLAG_IGNORE_ACLS);
	/* synced: this process may hold the folder's index from before a
	   background worker completed it (the index stays open a while
	   after a mailbox is freed), and an open does not re-read it */
	if (mailbox_open(box) == 0 &&
	    mailbox_sync(box, MAILBOX_SYNC_FLAG_FAST) == 0) {
		ferry_box_hdr_get(box, &hdr);
		if (ferry_box_is_done(&hdr))
			ret = 0;
	}
	mailbox_free(&box);
	ferry_internal_end(user);
	return ret;
}

int ferry_user_check_done(struct mail_user *user, const char **error_r)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	int ret;

	if (fuser->done != 0)
		return 1;
	if (fuser->tree_synced == 0)
		return 0;
	ret = ferry_each_folder(user, ferry_check_done_folder, NULL, error_r);
	if (ret != 0)
		return ret < 0 ? -1 : 0;
	fuser->done = ioloop_time;
	if (ferry_user_state_write(user, error_r) < 0)
		return -1;
	i_info(FERRY_LOG_PREFIX "event=user-done: every folder is complete; "
	       "the old server is not contacted again");
	return 1;
}

struct ferry_pull_all_context {
	enum ferry_pull_mode mode;
	void (*callback)(const struct ferry_pull_result *res,
			 const char *error, void *context);
	void *context;
	unsigned int failed;
};

/* One folder of a pass, in this process or in a worker (workers.c). */
static void ferry_pull_pass_folder(struct mail_user *user, const char *vname,
				   ferry_pass_report_func_t *report,
				   void *report_ctx, void *context)
{
	struct ferry_pull_all_context *ctx = context;
	struct ferry_pull_result res;
	enum mail_error code;
	const char *error = NULL;
	int ret;

	ret = ferry_pull_folder(user, vname, ctx->mode, &res, &code, &error);
	if (ret < 0 && res.uidvalidity_changed && ctx->mode == FERRY_PULL_MIRROR) {
		/* the old folder was recreated: so is the mirror */
		i_warning(FERRY_LOG_PREFIX "folder=%s event=recopy: %s",
			  vname, error);
		error = NULL;
		ret = ferry_mirror_recreate(user, vname, &error);
		if (ret == 0)
			ret = ferry_pull_folder(user, vname, ctx->mode, &res,
						&code, &error);
	}
	report(&res, ret < 0 ? error : NULL, report_ctx);
}

static void ferry_pull_pass_report(const struct ferry_pull_result *res,
				   const char *error, void *context)
{
	struct ferry_pull_all_context *ctx = context;

	if (error != NULL)
		ctx->failed++;
	ctx->callback(res, error, ctx->context);
}

int ferry_pull_all(struct mail_user *user, enum ferry_pull_mode mode,
		   void (*callback)(const struct ferry_pull_result *res,
				    const char *error, void *context),
		   void *context, const char **error_r)
{
	struct ferry_pull_all_context ctx = {
		.mode = mode, .callback = callback, .context = context
	};
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	ARRAY_TYPE(const_string) names;
	const char *const *namep;
	unsigned int count;
	int ret = mode == FERRY_PULL_MIRROR ? ferry_tree_mirror(user, error_r) :
		ferry_tree_sync(user, error_r);

	if (ret < 0 || ferry_folder_names(user, &names, error_r) < 0)
		return -1;
	namep = array_get(&names, &count);
	if (fuser->set.parallel > 1 && count > 1) {
		if (ferry_workers_run(user, namep, count,
				      I_MIN(fuser->set.parallel, count),
				      ferry_pull_pass_folder, &ctx,
				      ferry_pull_pass_report, &ctx,
				      error_r) < 0)
			return -1;
	} else {
		for (unsigned int i = 0; i < count; i++) T_BEGIN {
			ferry_pull_pass_folder(user, namep[i],
					       ferry_pull_pass_report, &ctx,
					       &ctx);
		} T_END;
	}
	if (ctx.failed > 0) {
		*error_r = t_strdup_printf("%u folders failed", ctx.failed);
		return -1;
	}
	if (mode != FERRY_PULL_LAZY)
		return 0;
	return ferry_user_check_done(user, error_r) < 0 ? -1 : 0;
}
