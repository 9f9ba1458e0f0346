#ifndef DOVECOT_GLUE_H
#define DOVECOT_GLUE_H

/* What differs between Dovecot versions, behind one interface: each
   version has one file implementing it (dovecot23.c, dovecot24.c; the
   Makefile picks one from the installed Dovecot's config.h), plus
   dovecot-imapc.c for the imapc internals that are the same in every
   version tested. The engine includes this header and nothing
   version-specific, and rewrites none of imapc's callbacks itself. */

#include "fsync-mode.h"
#include "imapc-client.h"

struct mail_user;
struct mail_storage;
struct mail_namespace;
struct mailbox_list;
struct imapc_client;
struct imapc_storage_client;
struct imapc_untagged_reply;
struct http_client;
struct ferry_settings;

/* Settings */
/* The ferry_* settings of this user (userdb fields override). */
void ferry_settings_read(struct mail_user *user, struct ferry_settings *set_r);
/* A string setting as written (exclude/rename rules, ferryd's URL and
   token: no %-expansion), data stack; NULL when unset, empty or not
   declared (2.4 declares ferry_exclude..ferry_excludeFERRY_MAX_RULES_24). */
const char *ferry_setting_str(struct mail_user *user, const char *name);
/* imapc_host is set: there is an old server to migrate from */
bool ferry_old_server_configured(struct mail_user *user);

/* The old server's session: a second user whose storage is imapc, with
   Ferry's changes to imapc's settings (prefetch, RFC822.SIZE, delayed
   login, line length, connect timeout, PLAIN only for a master user).
   *identity_key_r: "master@host:port" when a master identity is used
   (old-identity.c proves it), else NULL. *refused_r: the failure is not
   one a retry fixes. */
int ferry_old_user_create(struct mail_user *user, struct mail_user **old_r,
			  const char **identity_key_r, bool *refused_r,
			  const char **error_r);
/* the mailbox_list_created hook for the old user's lists */
void ferry_old_list_created(struct mailbox_list *list);

/* The old session's imapc client: what it connects to and as whom. */
const char *ferry_imapc_host(const struct imapc_client *client);
unsigned int ferry_imapc_port(const struct imapc_client *client);
const char *ferry_imapc_user(const struct imapc_client *client);
const char *ferry_imapc_master_user(const struct imapc_client *client);
/* A second client to the same server logging in as the master alone
   (no authorization identity, no PROXYAUTH). */
struct imapc_client *
ferry_imapc_master_client_init(struct mail_user *old,
			       struct imapc_client *session);
void ferry_imapc_master_client_deinit(struct imapc_client **client);

/* imapc internals (dovecot-imapc.c): imapc-storage's untagged handlers
   and an imapc client's callbacks, which no public API orders, replaces
   or gives back. */
typedef void ferry_imapc_untagged_cb_t(const struct imapc_untagged_reply *reply,
				       struct imapc_storage_client *client);
/* cb sees each untagged NAME line before imapc-storage's own handlers do
   (registered once per client; again is a no-op) */
void ferry_imapc_untagged_first(struct imapc_storage_client *client,
				const char *name,
				ferry_imapc_untagged_cb_t *cb);
/* imapc-storage's own NAME handlers (all but ours) ignore the lines from
   now on, until unmuted; may be called from ours while imapc dispatches a
   line. Returns the handler muted (NULL if none was). */
ferry_imapc_untagged_cb_t *
ferry_imapc_untagged_mute(struct imapc_storage_client *client,
			  const char *name, ferry_imapc_untagged_cb_t *ours);
void ferry_imapc_untagged_unmute(struct imapc_storage_client *client,
				 const char *name,
				 ferry_imapc_untagged_cb_t *muted);
/* The client's untagged and state-change callbacks, taken over for a
   while (the untagged one replaces imapc-storage's own handler) and given
   back as they were. */
struct ferry_imapc_taken {
	imapc_untagged_callback_t *untagged;
	void *untagged_context;
	imapc_state_change_callback_t *state_change;
	void *state_change_context;
};
void ferry_imapc_client_take(struct imapc_client *client,
			     imapc_untagged_callback_t *untagged,
			     imapc_state_change_callback_t *state_change,
			     void *context, struct ferry_imapc_taken *saved_r);
void ferry_imapc_client_give_back(struct imapc_client *client,
				  const struct ferry_imapc_taken *saved);
/* FALSE when a connection's capabilities are known and lack AUTH=PLAIN */
bool ferry_imapc_client_offers_plain(struct imapc_client *client);

/* Storage */
/* Switches the storage's fsync mode (for the duration of a pull: one
   syncfs() per batch instead); returns the previous mode. */
enum fsync_mode ferry_storage_fsync_swap(struct mail_storage *storage,
					 enum fsync_mode mode);
/* The folder of ns configured with this special use, NULL if none. */
const char *ferry_special_use_box(struct mail_namespace *ns,
				  const char *special_use);

/* HTTP and JSON (ferryd-notify.c) */
/* One attempt, one connection, this timeout for connect and request. */
struct http_client *ferry_http_client_init(struct mail_user *user,
					   unsigned int timeout_msecs);
void ferry_json_append_escaped(string_t *dest, const char *src);

#endif
