/* Proof that the old session is the user's own before anything is copied
   from it. With a master/admin identity (imapc_master_user: AUTHENTICATE
   PLAIN with the user as authorization identity) a server may answer OK
   and hand out the master's own mailbox (Courier does). The decision is
   include/ferry-identity.h's, shared with ferryd's client; this file is
   its I/O through imapc, on the session's own connection:
   - ID, NAMESPACE, STATUS INBOX and LIST "" "*" queued together before
     the (delayed) login, so they go out in one burst: one round trip;
   - only for a server not known to honour the identity, the master logs
     in alone on a second imapc client and its STATUS and LIST are
     compared.
   Its login callback also sees a login refused for want of AUTH=PLAIN
   (old.c makes PLAIN the only mechanism with a master user, so imapc
   never falls back to LOGIN with the master password). */

#include "lib.h"
#include "array.h"
#include "imap-arg.h"
#include "mail-namespace.h"
#include "imapc-client.h"
#include "imapc-storage.h"
#include "ferry-identity.h"
#include "ferry-plugin.h"

struct ferry_identity_io {
	/* the texts kept from callbacks (imapc may run them inside a data
	   stack frame of its own) */
	pool_t pool;
	struct imapc_client *client;
	struct ferry_identity_evidence *ev;
	struct ferry_identity_view *view;
	bool session;
	unsigned int pending;
	/* STATUS INBOX's answer, NO included */
	bool inbox_seen, status_no;
	uint32_t uidvalidity, uidnext, messages;
	/* a command that failed other than by NO/BAD (connection lost) */
	const char *failure;
	/* the session's login was refused while AUTH=PLAIN was not offered */
	bool no_auth_plain;
	/* the master's own login's reply */
	bool login_returned;
	enum imapc_command_state login_state;
	const char *login_text;
};

static void ferry_identity_id(struct ferry_identity_io *io,
			      const struct imap_arg *args)
{
	const struct imap_arg *list;
	const char *key, *value;

	if (!imap_arg_get_list(args, &list))
		return;
	for (; !IMAP_ARG_IS_EOL(list) && !IMAP_ARG_IS_EOL(list + 1); list += 2) {
		if (imap_arg_get_string(list, &key) &&
		    imap_arg_get_nstring(list + 1, &value))
			ferry_identity_set_id_field(io->ev, key, value);
	}
}

static void ferry_identity_namespace(struct ferry_identity_io *io,
				     const struct imap_arg *args)
{
	const struct imap_arg *others, *first;
	const char *prefix, *sep;

	/* (personal) (other users) (shared): the first other-users entry */
	if (IMAP_ARG_IS_EOL(args) || !imap_arg_get_list(args + 1, &others) ||
	    !imap_arg_get_list(others, &first) ||
	    !imap_arg_get_string(first, &prefix))
		return;
	if (!imap_arg_get_nstring(first + 1, &sep) || sep == NULL)
		sep = "";
	ferry_identity_set_other_namespace(io->ev, prefix, sep[0]);
}

static void ferry_identity_status(struct ferry_identity_io *io,
				  const struct imap_arg *args)
{
	const struct imap_arg *items;
	const char *key, *value;
	uint32_t num;

	if (!imap_arg_get_list(args + 1, &items))
		return;
	io->inbox_seen = TRUE;
	for (; !IMAP_ARG_IS_EOL(items) && !IMAP_ARG_IS_EOL(items + 1); items += 2) {
		if (!imap_arg_get_atom(items, &key) ||
		    !imap_arg_get_atom(items + 1, &value) ||
		    str_to_uint32(value, &num) < 0)
			continue;
		if (strcasecmp(key, "UIDVALIDITY") == 0)
			io->uidvalidity = num;
		else if (strcasecmp(key, "UIDNEXT") == 0)
			io->uidnext = num;
		else if (strcasecmp(key, "MESSAGES") == 0)
			io->messages = num;
	}
}

/* in place of imapc-storage's handler while the check runs: no mailbox is
   selected yet, and imapc's own list tree must not see our LIST */
static void ferry_identity_untagged(const struct imapc_untagged_reply *reply,
				    void *context)
{
	struct ferry_identity_io *io = context;
	const char *name;

	if (strcasecmp(reply->name, "ID") == 0 && io->session)
		ferry_identity_id(io, reply->args);
	else if (strcasecmp(reply->name, "NAMESPACE") == 0 && io->session)
		ferry_identity_namespace(io, reply->args);
	else if (strcasecmp(reply->name, "STATUS") == 0)
		ferry_identity_status(io, reply->args);
	else if (strcasecmp(reply->name, "LIST") == 0 &&
		 !IMAP_ARG_IS_EOL(reply->args) &&
		 !IMAP_ARG_IS_EOL(reply->args + 1) &&
		 imap_arg_get_astring(reply->args + 2, &name)) {
		if (io->session)
			ferry_identity_session_folder(io->ev, name);
		else
			ferry_identity_view_folder(io->view, name);
	}
}

static void ferry_identity_done(struct ferry_identity_io *io)
{
	i_assert(io->pending > 0);
	if (--io->pending == 0)
		imapc_client_stop(io->client);
}

/* ID, NAMESPACE: a NO or BAD is no evidence */
static void ferry_identity_info_cb(const struct imapc_command_reply *reply,
				   void *context)
{
	struct ferry_identity_io *io = context;

	if (reply->state == IMAPC_COMMAND_STATE_DISCONNECTED &&
	    io->failure == NULL)
		io->failure = p_strdup(io->pool, reply->text_full);
	ferry_identity_done(io);
}

static void ferry_identity_status_cb(const struct imapc_command_reply *reply,
				     void *context)
{
	struct ferry_identity_io *io = context;

	if (reply->state == IMAPC_COMMAND_STATE_NO ||
	    reply->state == IMAPC_COMMAND_STATE_BAD)
		io->status_no = TRUE;
	else if (reply->state != IMAPC_COMMAND_STATE_OK && io->failure == NULL)
		io->failure = p_strdup(io->pool, reply->text_full);
	ferry_identity_done(io);
}

static void ferry_identity_list_cb(const struct imapc_command_reply *reply,
				   void *context)
{
	struct ferry_identity_io *io = context;

	if (reply->state != IMAPC_COMMAND_STATE_OK && io->failure == NULL)
		io->failure = p_strdup_printf(io->pool, "LIST: %s",
					      reply->text_full);
	ferry_identity_done(io);
}

/* called by imapc as a login fails, before it disconnects: the
   capabilities are still the connection's */
static void ferry_identity_state_cb(void *context,
				    enum imapc_state_change_event event,
				    const char *error ATTR_UNUSED)
{
	struct ferry_identity_io *io = context;

	if (event == IMAPC_STATE_CHANGE_AUTH_FAILED &&
	    !ferry_imapc_client_offers_plain(io->client))
		io->no_auth_plain = TRUE;
}

static void ferry_identity_login_cb(const struct imapc_command_reply *reply,
				    void *context)
{
	struct ferry_identity_io *io = context;

	io->login_returned = TRUE;
	io->login_state = reply->state;
	io->login_text = p_strdup(io->pool, reply->text_full);
}

/* Sends the evidence commands (queued before the login: one burst after
   it) and runs the client until each is answered. */
static void ferry_identity_gather(struct ferry_identity_io *io)
{
	struct imapc_command *cmd;

	if (io->session) {
		cmd = imapc_client_cmd(io->client, ferry_identity_info_cb, io);
		imapc_command_send(cmd, "ID NIL");
		cmd = imapc_client_cmd(io->client, ferry_identity_info_cb, io);
		imapc_command_send(cmd, "NAMESPACE");
		io->pending += 2;
	}
	cmd = imapc_client_cmd(io->client, ferry_identity_status_cb, io);
	imapc_command_send(cmd, "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY)");
	cmd = imapc_client_cmd(io->client, ferry_identity_list_cb, io);
	imapc_command_send(cmd, "LIST \"\" \"*\"");
	io->pending += 2;
	while (io->pending > 0)
		imapc_client_run(io->client);
	if (io->inbox_seen && !io->status_no)
		ferry_identity_view_inbox(io->view, io->uidvalidity,
					  io->uidnext, io->messages);
}

/* The master alone: refused (no mailbox of its own), or its view. 0, or
   -1 when it could not be told (temporary). */
static int ferry_identity_master_alone(struct mail_user *old, pool_t pool,
				       struct imapc_client *session,
				       struct ferry_identity_evidence *ev,
				       const char **error_r)
{
	const char *master = ferry_imapc_master_user(session);
	struct ferry_identity_io io;
	struct imapc_client *client;

	client = ferry_imapc_master_client_init(old, session);
	i_zero(&io);
	io.pool = pool;
	io.client = client;
	io.ev = ev;
	io.view = &ev->master_view;
	imapc_client_set_login_callback(client, ferry_identity_login_cb, &io);
	imapc_client_register_untagged(client, ferry_identity_untagged, &io);
	ferry_identity_gather(&io);
	if (io.login_returned && io.login_state == IMAPC_COMMAND_STATE_OK &&
	    io.failure == NULL)
		ev->master_login = FERRY_IDENTITY_MASTER_OK;
	else if (io.login_returned && io.login_state == IMAPC_COMMAND_STATE_NO)
		ev->master_login = FERRY_IDENTITY_MASTER_REFUSED;
	else {
		*error_r = t_strdup_printf("could not log in as %s alone to "
			"compare (%s)", master, io.login_returned &&
			io.login_state != IMAPC_COMMAND_STATE_OK ?
			io.login_text : io.failure);
	}
	if (io.login_returned && io.login_state == IMAPC_COMMAND_STATE_OK)
		imapc_client_logout(client);
	ferry_imapc_master_client_deinit(&client);
	return ev->master_login == FERRY_IDENTITY_MASTER_NOT_TRIED ? -1 : 0;
}

/* The verdict from what the session showed (and, if needed, the master's
   own login). Strings returned are on the data stack. */
static int ferry_identity_judge(struct mail_user *user, struct mail_user *old,
				struct imapc_storage_client *sclient,
				struct ferry_identity_evidence *ev,
				struct ferry_identity_io *io,
				bool *permanent_r, const char **error_r)
{
	enum ferry_identity_verdict verdict;
	char reason[1024];
	const char *error = "no answer";

	/* the login is imapc-storage's: its callback keeps the result */
	if (sclient->auth_failed_state != IMAPC_COMMAND_STATE_OK) {
		if (io->no_auth_plain) {
			*permanent_r = TRUE;
			*error_r = "the old server does not support master "
				"logins: it offers no AUTH=PLAIN; set per-user "
				"passwords or enable TLS";
		} else {
			*error_r = t_strdup_printf("login failed: %s",
				sclient->auth_failed_reason);
		}
		return -1;
	}
	if (io->failure != NULL) {
		*error_r = t_strdup_printf("identity check for %s could not be "
			"completed: %s", ev->user, io->failure);
		return -1;
	}
	verdict = ferry_identity_decide(ev, reason, sizeof(reason));
	if (verdict == FERRY_IDENTITY_COMPARE) {
		if (ferry_identity_master_alone(old, io->pool, sclient->client,
						ev, &error) < 0) {
			*error_r = t_strdup_printf("identity check for %s could "
				"not be completed: %s", ev->user, error);
			return -1;
		}
		verdict = ferry_identity_decide(ev, reason, sizeof(reason));
	}
	if (verdict != FERRY_IDENTITY_PASS) {
		*permanent_r = TRUE;
		*error_r = t_strdup_printf("identity check for %s failed: %s; "
			"refusing to continue", ev->user, reason);
		return -1;
	}
	e_debug(user->event, FERRY_LOG_PREFIX "event=identity-ok master=%s "
		"reason=%s", ev->master, reason);
	return 0;
}

int ferry_old_identity_check(struct mail_user *user, struct mail_user *old,
			     bool *permanent_r, const char **error_r)
{
	struct imapc_storage_client *sclient = ferry_old_storage_client(old);
	struct imapc_client *client = sclient->client;
	struct ferry_imapc_taken saved;
	struct ferry_identity_evidence ev;
	struct ferry_identity_io io;
	int ret;

	*permanent_r = FALSE;
	ferry_identity_init(&ev, ferry_imapc_user(client),
			    ferry_imapc_master_user(client));
	i_zero(&io);
	io.pool = pool_alloconly_create("ferry identity check", 1024);
	io.client = client;
	io.ev = &ev;
	io.view = &ev.session;
	io.session = TRUE;
	ferry_imapc_client_take(client, ferry_identity_untagged,
				ferry_identity_state_cb, &io, &saved);
	ferry_identity_gather(&io);
	ferry_imapc_client_give_back(client, &saved);

	ret = ferry_identity_judge(user, old, sclient, &ev, &io, permanent_r,
				   error_r);
	pool_unref(&io.pool);
	return ret;
}
