#ifndef FERRY_PLUGIN_H
#define FERRY_PLUGIN_H

/* Internal interface of the ferry mail plugin: the copy engine (pull.c),
   the folder tree (tree.c), per-folder and per-user state (state.c), the
   old-server session (old.c) and the storage overrides that trigger pulls
   (lazy.c). Hook registration lives in ferry-plugin.c; everything that
   differs between Dovecot versions (settings, the old session's imapc
   settings, a few library calls) in dovecot23.c / dovecot24.c behind
   dovecot-glue.h. */

#include <pthread.h>
#include "module-context.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mailbox-list-private.h"
#include "dovecot-glue.h"

#define FERRY_LOG_PREFIX "ferry: "
#define FERRY_BOX_LOCK_FNAME ".dovecot-box-sync.lock" /* shared with dsync */
#define FERRY_TREE_LOCK_FNAME "dovecot-ferry-tree.lock"
#define FERRY_STATE_FNAME "dovecot-ferry.state"

struct ferry_settings {
	bool enabled;
	/* ferry_phase=presync: the user still works on the old server */
	bool presync;
	unsigned int batch_size;
	unsigned int lock_timeout_secs;
	unsigned int progress_interval_secs;
	unsigned int prefetch_count;
	/* larger messages are fetched in ranges (old-body.c) */
	unsigned int big_message_size;
	/* larger messages are not copied (0 = no limit); logged, counted */
	uoff_t max_message_size;
	/* an old server listing more folders is refused (0 = no limit) */
	unsigned int max_folders;
	/* connect + greeting of the old server (imapc's own is a fixed 30 s) */
	unsigned int old_connect_timeout_secs;
	/* folders of one doveadm pass copied at once (workers.c) */
	unsigned int parallel;
	/* imap: the rest of the user is completed in the background from
	   the login on (0 = never); the client is idle after this long
	   without a command, and gets one more worker then */
	unsigned int background_idle_msecs;
};

/* Per-user state, attached to users being migrated. */
struct ferry_user {
	union mail_user_module_context module_ctx;
	struct ferry_settings set;

	/* Folder-name rules and the user's map file (map.c). */
	struct ferry_map *map;
	/* Session on the old server (imapc:), opened on first need. */
	struct mail_user *old_user;
	/* No INBOX namespace (e.g. LMTP's raw-mail user): nothing to migrate */
	bool inactive;
	/* User-level state file contents (see state.c). */
	time_t tree_synced, done;
	/* "<master>@<host>:<port>" whose session was proven to be this
	   user's (old-identity.c); NULL: not proven */
	const char *identity;
	/* this process's failed identity check: later calls fail at once */
	const char *identity_error;
	/* the failure is not one a retry can fix (doveadm: EX_NOPERM) */
	bool old_refused;
	/* Nesting depth of Ferry's own storage calls: our hooks stand aside
	   while Ferry itself creates, opens or lists. */
	unsigned int internal;
	/* background.c: completion from the login on (imap) */
	struct ferry_background *bg;
	/* ferryd-notify.c: the login told to ferryd */
	struct ferry_notify *notify;
};

#define FERRY_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, ferry_user_module)
extern MODULE_CONTEXT_DEFINE(ferry_user_module, &mail_user_module_register);
extern MODULE_CONTEXT_DEFINE(ferry_storage_module, &mail_storage_module_register);
extern MODULE_CONTEXT_DEFINE(ferry_mailbox_list_module,
			     &mailbox_list_module_register);

/* Per-folder state, an index header extension written in the same
   transaction as the messages it describes. */
enum ferry_box_state {
	FERRY_BOX_UNKNOWN = 0,	/* no header: never looked at */
	FERRY_BOX_PENDING,	/* copy under way */
	FERRY_BOX_COMPLETE,	/* every old message copied */
	FERRY_BOX_LOCAL,	/* created on the new server; nothing to copy */
};
struct ferry_box_hdr {
	uint32_t state;
	uint32_t old_uidvalidity;
	/* every old UID <= copied_upto is copied */
	uint32_t copied_upto;
	uint32_t old_uidnext;
	uint32_t old_messages;	/* at completion */
	uint32_t copied;	/* messages copied by Ferry, in total */
	uint32_t renumbered;	/* messages that could not keep their UID */
	uint32_t completed_time;
	/* rollback: local UIDs up to this were appended back to the old
	   server */
	uint32_t rolled_back_upto;
	/* messages not copied: over ferry_max_message_size */
	uint32_t skipped;
	/* rollback under way: the old folder's UIDNEXT before its first
	   APPEND (0: none interrupted). A message whose APPEND was cut off
	   before its answer is looked for at or above it. */
	uint32_t rollback_old_uidnext;
};

/* state.c */
void ferry_box_hdr_get(struct mailbox *box, struct ferry_box_hdr *hdr_r);
/* The stored header extension (any size) as a struct: at most its size is
   copied, the rest zeroed. */
void ferry_box_hdr_parse(const void *data, size_t size,
			 struct ferry_box_hdr *hdr_r);
void ferry_box_hdr_update(struct mailbox_transaction_context *t,
			  const struct ferry_box_hdr *hdr);
int ferry_box_hdr_write(struct mailbox *box, const struct ferry_box_hdr *hdr);
const char *ferry_box_state_name(enum ferry_box_state state);
int ferry_user_state_read(struct mail_user *user, const char **error_r);
int ferry_user_state_write(struct mail_user *user, const char **error_r);
const char *ferry_user_index_root(struct mail_user *user);
/* The user state file's text (tree=N, done=N, identity=KEY lines; others
   ignored). A key read before an invalid line keeps its value; *identity_r
   is allocated from the data stack (NULL: none). */
int ferry_state_parse(const char *text, time_t *tree_r, time_t *done_r,
		      const char **identity_r, const char **error_r);

/* old.c: the old server, as Dovecot's imapc storage in a second user
   (made by the glue's ferry_old_user_create) */
int ferry_old_user_get(struct mail_user *user, struct mail_user **old_r,
		       const char **error_r);
struct imapc_storage_client *ferry_old_storage_client(struct mail_user *old);

/* old-identity.c: the session opened with a master identity is the user's
   (include/ferry-identity.h decides). *permanent_r: refused, not a failure
   a retry can fix. */
int ferry_old_identity_check(struct mail_user *user, struct mail_user *old,
			     bool *permanent_r, const char **error_r);

/* old-status.c: STATUS of a folder not complete yet, from the old server.
   1: status_r filled; 0: an item is not equal by construction (complete
   the folder first); -1: the old server failed (error_r). */
int ferry_old_status(struct mailbox *box, enum mailbox_status_items items,
		     struct mailbox_status *status_r, const char **error_r);

/* map.c: folder names, old <-> new (excludes, renames, special use,
   separators) */
const char *ferry_old_name(struct mail_user *user, struct mail_user *old,
			   const char *local_vname);
/* NULL: the folder is not migrated (*skip_reason_r says why) */
const char *ferry_local_name(struct mail_user *user, struct mail_user *old,
			     const char *old_vname, const char *special_use,
			     const char **skip_reason_r);
/* the name by separator translation alone */
const char *ferry_plain_name(struct mail_user *user, struct mail_user *old,
			     const char *old_vname);
/* One old folder as the last tree copy saw it (the user's map file). */
struct ferry_map_entry {
	const char *local;	/* its name here; "" when not migrated */
	const char *old;	/* its name in the old session's namespace */
	/* its name as the old server's LIST shows it (prefix, separator),
	   UTF-8; "" when not known (a map file of an older version) */
	const char *remote;
	const char *state;	/* "" migrated, else excluded / skipped */
	const char *reason;	/* why not migrated */
};
ARRAY_DEFINE_TYPE(ferry_map_entry, struct ferry_map_entry);

void ferry_map_reset(struct mail_user *user);
/* local_vname NULL: not migrated (state, reason say why) */
void ferry_map_add(struct mail_user *user, const char *local_vname,
		   const char *old_vname, const char *remote,
		   const char *state, const char *reason);
int ferry_map_write(struct mail_user *user, const char **error_r);
void ferry_map_deinit(struct mail_user *user);
const struct ferry_map_entry *
ferry_map_entries(struct mail_user *user, unsigned int *count_r);
/* The old server's LIST name of a local folder, NULL if not recorded. */
const char *ferry_map_remote_name(struct mail_user *user,
				  const char *local_vname);
/* One map file line into entry_r (strings from the data stack); FALSE:
   not such a line (skipped). */
bool ferry_map_parse_line(const char *line, struct ferry_map_entry *entry_r);
/* The line ferry_map_write writes for e (no newline). */
void ferry_map_format_line(string_t *dest, const struct ferry_map_entry *e);
/* The map file's entries from input, allocated from pool */
void ferry_map_read_entries(struct istream *input, pool_t pool,
			    ARRAY_TYPE(ferry_map_entry) *entries);

/* old-body.c: large old messages, fetched in ranges */
/* old.c: the next prefetched FETCH sent while this one is still read */
void ferry_old_fetch_ahead(struct mailbox *obox, unsigned int prefetch_count);
void ferry_old_body_register(struct mailbox *obox);
int ferry_old_body_fetch(struct mailbox *obox, uint32_t uid, uoff_t size,
			 struct istream **input_r, const char **error_r);

/* old-sizes.c: RFC822.SIZE of old UIDs first..last, one command; sorted
   by UID. A message the server does not answer for is gone from it.
   prefetch() sends the command for a range fetch() will ask for next
   (the old server answers it between the current batch's bodies);
   discard() ends one nobody asked for, before the old mailbox closes. */
struct ferry_old_size {
	uint32_t uid;
	uoff_t size;
};
ARRAY_DEFINE_TYPE(ferry_old_size, struct ferry_old_size);
void ferry_old_sizes_register(struct mailbox *obox);
int ferry_old_sizes_fetch(struct mailbox *obox, uint32_t first, uint32_t last,
			  ARRAY_TYPE(ferry_old_size) *sizes,
			  const char **error_r);
void ferry_old_sizes_prefetch(struct mailbox *obox, uint32_t first,
			      uint32_t last);
void ferry_old_sizes_discard(void);

/* durable.c: a batch's syncfs(); with overlap in a helper thread while the
   next batch is copied (wait() before the next commit and before
   completing), without it in the calling thread before start() returns.
   Then the batch's mail files leave the page cache. */
ARRAY_DEFINE_TYPE(ferry_fd, int);
struct ferry_durable {
	pthread_t thread;
	int fd;
	int error; /* syncfs()'s errno, 0 when it succeeded */
	bool running;
	char *path;
	/* descriptors of the mail files of the batch being saved, and of
	   the batch being made durable (the thread's) */
	ARRAY_TYPE(ferry_fd) files, syncing;
};
int ferry_durable_start(struct ferry_durable *d, const char *path,
			bool overlap, const char **error_r);
int ferry_durable_wait(struct ferry_durable *d, const char **error_r);
/* a mail file of the batch being saved (fd is duplicated) */
void ferry_durable_file(struct ferry_durable *d, int fd);
/* after the last wait(): closes what is left */
void ferry_durable_deinit(struct ferry_durable *d);
/* lazy.c: each file saved into box from now on is given to d
   (ferry_durable_file); NULL: no more */
void ferry_box_set_durable(struct mailbox *box, struct ferry_durable *d);

/* How much of a message the save path reads, filters and write()s at a
   time (Dovecot's default is IO_BLOCK_SIZE, 8 KiB): a 10,000-message
   folder took 42,000 write()s, and each write() that ends inside a fresh
   page has the kernel zero the rest of that page first */
#define FERRY_SAVE_BLOCK_SIZE (256 * 1024)

/* heap.c: while a pull copies, freed message buffers stay in the heap
   (hold/release nest; the last release returns what is free) */
void ferry_heap_hold(void);
void ferry_heap_release(void);

/* tree.c: folders and subscriptions, once per user */
int ferry_tree_sync(struct mail_user *user, const char **error_r);

/* pull.c: the copy engine. Returns 0 when the folder is complete. */
enum ferry_pull_mode {
	/* cut-over user: copy what is missing; a complete folder is left
	   alone (never contacts the old server) */
	FERRY_PULL_LAZY = 0,
	/* presync user (still working on the old server): the new folder
	   mirrors the old one: new messages with their UIDs, flag changes,
	   expunges */
	FERRY_PULL_MIRROR,
	/* cut-over user, later pass: the new server is the truth; messages
	   that still arrive on the old server are appended with fresh UIDs */
	FERRY_PULL_STRAGGLERS,
};
struct ferry_pull_result {
	const char *vname;
	enum ferry_box_state state;
	/* this call made the folder complete (or local) */
	bool completed;
	unsigned int copied;
	uoff_t bytes; /* of the messages copied (their RFC822.SIZE) */
	unsigned int renumbered;
	unsigned int flag_changes, expunged, skipped;
	/* the old server gave the folder a new UIDVALIDITY (mirror mode) */
	bool uidvalidity_changed;
	/* a background step found the folder locked by another writer */
	bool busy;
	uint32_t old_messages, local_messages;
};
int ferry_pull_folder(struct mail_user *user, const char *vname,
		      enum ferry_pull_mode mode,
		      struct ferry_pull_result *result_r,
		      enum mail_error *error_code_r, const char **error_r);
/* A lazy pull that stops after the batch during which *stop became
   non-zero (the folder stays partial if more remain), without progress
   lines, and leaves a folder locked by another writer alone
   (result_r->busy): background.c's workers. */
int ferry_pull_folder_step(struct mail_user *user, const char *vname,
			   const volatile uint32_t *stop,
			   struct ferry_pull_result *result_r,
			   enum mail_error *error_code_r, const char **error_r);
/* A search of t's mailbox for the UIDs first..last (pull.c). */
struct mail_search_context *
ferry_search_uid_range(struct mailbox_transaction_context *t, uint32_t first,
		       uint32_t last, enum mail_fetch_field fields);
int ferry_each_folder(struct mail_user *user,
		      int (*func)(struct mail_user *user, const char *vname,
				  void *context),
		      void *context, const char **error_r);
/* The folders of the user's INBOX namespace that can be selected, in
   listing order (allocated from the data stack). */
int ferry_folder_names(struct mail_user *user, ARRAY_TYPE(const_string) *names,
		       const char **error_r);
int ferry_pull_all(struct mail_user *user, enum ferry_pull_mode mode,
		   void (*callback)(const struct ferry_pull_result *res,
				    const char *error, void *context),
		   void *context, const char **error_r);
/* Marks the user done if every folder is complete (no old server access
   in later sessions). */
int ferry_user_check_done(struct mail_user *user, const char **error_r);

/* workers.c: one pass's folders in parallel, by forked workers */
typedef void ferry_pass_report_func_t(const struct ferry_pull_result *res,
				      const char *error, void *context);
typedef void ferry_pass_folder_func_t(struct mail_user *user, const char *vname,
				      ferry_pass_report_func_t *report,
				      void *report_ctx, void *context);
/* ferry_parallel's default: CPUs, at most 4 */
unsigned int ferry_workers_default(void);
/* Forks a worker that dies with parent (this process) and answers through
   a pipe: its pid and *fd_r the read end here; 0 and *fd_r the write end
   in the worker, where open_fds (earlier workers' ends) are closed; -1
   after logging why. */
pid_t ferry_worker_fork(pid_t parent, const int *open_fds,
			unsigned int open_count, int *fd_r);
/* func runs in a worker for each of names; report in this process for
   each result (a folder whose worker died is reported failed). */
int ferry_workers_run(struct mail_user *user, const char *const *names,
		      unsigned int count, unsigned int workers,
		      ferry_pass_folder_func_t *func, void *context,
		      ferry_pass_report_func_t *report, void *report_ctx,
		      const char **error_r);

/* old-list.c: the old server's folder list stops counting past max
   (0 = no bound); disarm says whether it overflowed */
void ferry_old_list_guard_arm(struct mail_user *old, unsigned int max);
bool ferry_old_list_guard_disarm(void);
/* Whether the old folder's name on the wire has control characters: no
   client can show or type it, and a server echoing CR/LF in a quoted
   string breaks the protocol (Dovecot 2.3's imapc then asserted in its
   command timeout: hostile-server tests). */
bool ferry_old_name_has_controls(struct mailbox *obox);
/* The old folder's name as the old server's LIST shows it (its list
   prefix and separator), modified UTF-7 decoded to UTF-8. */
const char *ferry_old_remote_name(struct mailbox *obox);

/* mirror.c: presync passes */
struct ferry_mirror_result {
	unsigned int flag_changes, expunged;
	/* old messages below old_uidnext with no local message of that UID */
	unsigned int missing;
	uint32_t first_missing_uid;
	/* local messages at or above old_uidnext (not old messages) */
	unsigned int above;
};
/* fast: since its last full sync (the one under the folder's lock, before
   the copy) the folder was written only by this process's own committed
   saves, and the copy was not resumed: its index is trusted without a scan
   of every mail file (MAILBOX_SYNC_FLAG_FAST on a box opened with
   MAILBOX_FLAG_SAVEONLY), unless the pass itself changes something */
int ferry_mirror_messages(struct mailbox *box, struct mailbox *obox,
			  uint32_t old_uidnext, bool fast,
			  struct ferry_mirror_result *res_r,
			  const char **error_r);
int ferry_tree_mirror(struct mail_user *user, const char **error_r);
int ferry_mirror_recreate(struct mail_user *user, const char *vname,
			  const char **error_r);

/* rollback.c: mail that arrived on the new server after cut-over goes
   back to the old one */
struct ferry_rollback_result {
	const char *vname;
	unsigned int appended;
	bool created; /* the folder was made on the old server */
};
int ferry_rollback_user(struct mail_user *user,
			void (*callback)(const struct ferry_rollback_result *res,
					 const char *error, void *context),
			void *context, const char **error_r);

/* background.c: the rest of the user, completed by the imap process
   from the login on */
void ferry_bg_start(struct mail_user *user);
/* a client's storage call: the client is not idle */
void ferry_bg_activity(struct mail_user *user);
/* a command needs this folder: no worker takes it, a worker in it stops
   after its batch (waited for) */
void ferry_bg_claim(struct mail_user *user, const char *vname);
/* the session opens its own old-server session: a worker beyond
   ferry_parallel - 1 stops after its batch (waited for) */
void ferry_bg_need_old(struct mail_user *user);
void ferry_bg_deinit(struct mail_user *user);

/* ferryd-notify.c: a login of a user not done yet, told to ferryd (when
   ferry_ferryd_url is set): the user goes ahead of every other */
void ferry_notify_login(struct mail_user *user);
void ferry_notify_deinit(struct mail_user *user);

/* lazy.c: the storage overrides */
void ferry_lazy_mailbox_allocated(struct mailbox *box);
void ferry_lazy_mailbox_list_created(struct mailbox_list *list);

/* ferry-plugin.c */
extern bool ferry_creating_old_user;
bool ferry_user_is_internal(struct mail_user *user);
void ferry_internal_begin(struct mail_user *user);
void ferry_internal_end(struct mail_user *user);

#endif
