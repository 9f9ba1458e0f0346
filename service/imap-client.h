/* ferryd's own IMAP client: libevent bufferevents, OpenSSL for IMAPS and
 * STARTTLS, the streaming parser of imap-parser.h.
 *
 * Two layers:
 *  - asynchronous: imap_client_connect() (connect, greeting, TLS,
 *    CAPABILITY, login) and imap_client_command() with callbacks, on the
 *    caller's event_base; commands may be pipelined;
 *  - blocking helpers (imap_sync_*, imap_list, imap_select, ...): they run
 *    the client's event_base until their command is done. preflight and
 *    verify use them on a private event_base, so ferryd calls those from a
 *    worker thread or child, never from its main loop.
 *
 * Deadlines: connect, greeting (TLS handshake included) and commands; the
 * command deadline is an inactivity limit while any command is
 * outstanding (a 1 GB body keeps it alive as long as bytes arrive).
 * Secrets (password, token) never appear in logs or error messages. */
#ifndef FERRY_IMAP_CLIENT_H
#define FERRY_IMAP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "imap-parser.h"

struct event_base;

enum imap_tls_mode { IMAP_TLS_NONE, IMAP_TLS_IMAPS, IMAP_TLS_STARTTLS };
enum imap_auth_mech { IMAP_AUTH_LOGIN, IMAP_AUTH_PLAIN, IMAP_AUTH_XOAUTH2 };
enum imap_log_level { IMAP_LOG_DEBUG, IMAP_LOG_INFO, IMAP_LOG_WARN, IMAP_LOG_ERROR };

struct imap_client_settings {
	const char *label; /* "old", "new": prefixes messages */
	const char *host;  /* connect to; also the TLS name unless tls_name */
	unsigned port;     /* 0: 143, or 993 for IMAPS */
	enum imap_tls_mode tls;
	const char *ca_file;  /* PEM trust anchors; NULL: system store */
	const char *tls_name; /* name the certificate must carry (default host) */
	int tls_insecure;     /* skip certificate checks (logged as a warning) */
	unsigned connect_timeout_ms, greeting_timeout_ms, command_timeout_ms; /* 0: 10/10/60 s */

	enum imap_auth_mech auth;
	const char *user;      /* whose mailbox */
	const char *auth_user; /* authenticate as (master/admin); NULL or == user: plain login */
	const char *secret;    /* password, or OAuth2 bearer token */
	/* LOGIN as a master user: "user<sep>auth_user" (Dovecot: "*");
	 * AUTHENTICATE PLAIN sends user as the authorization identity */
	const char *master_separator;
	/* identity check (impersonated logins): expected INBOX UIDVALIDITY
	 * from an earlier session, 0 = unknown */
	uint32_t expect_inbox_uidvalidity;
	/* identity check after an impersonated login (imap_identity_check) */
	enum imap_identity_mode {
		/* fingerprint, then the authenticating identity logs in alone to
		 * compare: where it has no mailbox (Dovecot master users) that
		 * login fails by design, and brute-force protection counts it */
		IMAP_IDENTITY_FULL = 0,
		/* fingerprint only (INBOX, expected UIDVALIDITY): no login that
		 * is meant to fail */
		IMAP_IDENTITY_NO_OWN_LOGIN,
		/* nothing read after the login: a server of ours (NEW), where
		 * LIST or STATUS would make the ferry plugin copy the mailbox */
		IMAP_IDENTITY_NONE,
	} identity;

	void (*log)(void *ctx, enum imap_log_level level, const char *msg);
	void *log_ctx;
	struct imap_parser_limits limits; /* max_line 0: defaults */
	/* speak ManageSieve (RFC 5804, port 4190) instead of IMAP: the same
	 * connection, TLS, deadlines and SASL PLAIN; see managesieve.h */
	int managesieve;
};

struct imap_client;

/* ---- asynchronous layer --------------------------------------------------- */

typedef void imap_ready_cb(struct imap_client *c, const char *error, void *ctx);
typedef void imap_untagged_cb(void *ctx, const struct imap_response *resp);
/* error: NULL on OK, else "<label> <host>:<port>: <command> "<folder>": NO [CODE] text"
 * or the connection failure; resp is NULL when the connection failed. */
typedef void imap_done_cb(void *ctx, const struct imap_response *resp, const char *error);

struct imap_command {
	const char *desc;    /* e.g. "SELECT"; never the arguments of LOGIN */
	const char *mailbox; /* UTF-8 folder name for messages, or NULL */
	imap_untagged_cb *untagged;
	/* untagged responses with these names ("FETCH", "LIST STATUS"), NULL:
	 * all; each goes to the oldest command in flight that wants it */
	const char *untagged_name;
	imap_done_cb *done;
	void *ctx;
	int hash_bodies; /* stream BODY[]/BINARY[] literals into SHA-256 */
};

/* Settings strings are copied. Returns NULL on bad settings (message in err). */
struct imap_client *imap_client_new(struct event_base *base, const struct imap_client_settings *set,
				    char *err, size_t errlen);
void imap_client_free(struct imap_client *c); /* not from inside its own callbacks */
/* Connect, greeting, IMAPS/STARTTLS, CAPABILITY, login; cb runs once. */
int imap_client_connect(struct imap_client *c, imap_ready_cb *cb, void *ctx);
/* Queue a command (pipelined: sent at once). fmt after the tag, no CRLF. */
int imap_client_command(struct imap_client *c, const struct imap_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int imap_client_has_cap(const struct imap_client *c, const char *cap);
const char *imap_client_caps(const struct imap_client *c); /* space-separated */
const char *imap_client_error(const struct imap_client *c); /* last error */
int imap_client_ok(const struct imap_client *c);            /* connected, logged in, no fatal error */
unsigned imap_client_pending(const struct imap_client *c);  /* commands in flight */
struct event_base *imap_client_base(const struct imap_client *c);
const struct imap_client_settings *imap_client_settings(const struct imap_client *c);

/* "quoted" argument (malloc); NULL if s has CR, LF or NUL. */
char *imap_quote(const char *s);
/* UTF-8 folder name -> quoted modified UTF-7 argument (malloc), NULL if invalid. */
char *imap_mailbox_arg(const char *utf8, char *err, size_t errlen);
/* BODY[] node (inline or hashed while streaming) -> lowercase hex SHA-256 */
int imap_body_sha256(const struct imap_node *n, char out[65]);
/* "17-Jul-1996 02:44:25 -0700" -> seconds since the epoch (an instant) */
int imap_parse_internaldate(const char *s, int64_t *out);

/* ---- blocking layer -------------------------------------------------------- */

struct imap_identity {
	int impersonated;    /* logged in with an authorization identity */
	char result[300];    /* what the check established */
	uint32_t inbox_uidvalidity, inbox_uidnext, inbox_messages;
	char personal_prefix[128];
	char separator[4];
};

/* New client on its own event_base, connected and logged in; for an
 * impersonated login the identity check below has passed. NULL on error
 * (err says why). Free with imap_sync_close(). */
struct imap_client *imap_sync_connect(const struct imap_client_settings *set,
				      struct imap_identity *id, char *err, size_t errlen);
void imap_sync_close(struct imap_client *c); /* LOGOUT, free, free the base */
/* Run a command to completion: 0 on OK, -1 (imap_client_error()). */
int imap_sync_command(struct imap_client *c, const struct imap_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Wait until every command in flight is done: 0, or -1 if any failed. */
int imap_sync_wait(struct imap_client *c);

/* The identity check after an impersonated login, decided by
 * include/ferry-identity.h (shared with the mail plugin): the session's
 * INBOX must exist (and match expect_inbox_uidvalidity if set), must not
 * list the user among other users, and either the server is one that
 * honours the authorization identity (ID) or the authenticating identity
 * alone, on a second connection, is refused or shows another mailbox.
 * Anything else refuses to continue. 0 ok, -1 with err. */
int imap_identity_check(struct imap_client *session, struct imap_identity *id, char *err,
			size_t errlen);

#define IMAP_FOLDER_NOSELECT 0x01
#define IMAP_FOLDER_NONEXISTENT 0x02
#define IMAP_FOLDER_HASCHILDREN 0x04
struct imap_folder {
	char *name; /* UTF-8, server separator */
	char *wire; /* as the server sent it (modified UTF-7) */
	char sep;   /* 0: flat */
	unsigned flags;
	char special_use[16]; /* \Sent, \Drafts ... or "" */
	int has_status;       /* from LIST-STATUS or imap_status() */
	uint32_t messages, uidnext, uidvalidity;
	int has_size;
	uint64_t size; /* STATUS=SIZE */
};
struct imap_folder_list {
	struct imap_folder *v;
	size_t n;
};
struct imap_namespace {
	char prefix[256];
	char sep;
	int present; /* NAMESPACE answered and the personal namespace exists */
};

int imap_namespace_personal(struct imap_client *c, struct imap_namespace *ns);
/* LIST "" "*" (+ RETURN (SPECIAL-USE STATUS (...)) when offered) */
int imap_list(struct imap_client *c, struct imap_folder_list *out);
void imap_folder_list_free(struct imap_folder_list *l);
int imap_status(struct imap_client *c, struct imap_folder *f); /* fills status fields */

struct imap_mailbox_info {
	uint32_t exists, uidvalidity, uidnext;
	int read_only;
};
int imap_select(struct imap_client *c, const char *utf8_name, int examine,
		struct imap_mailbox_info *out);
/* UID SEARCH <criteria> -> malloc()ed sorted array */
int imap_uid_search(struct imap_client *c, const char *criteria, uint32_t **uids, size_t *n);

#define IMAP_FETCH_META 0x01   /* FLAGS INTERNALDATE RFC822.SIZE */
#define IMAP_FETCH_SHA256 0x02 /* BODY.PEEK[] hashed while it streams */
struct imap_message {
	uint32_t uid;
	const char *flags; /* system flags and keywords, sorted, space-separated, no \Recent */
	int64_t internaldate;
	uint64_t size;
	int has_sha256;
	char sha256[65];
};
/* cb returns non-zero to note an error (the fetch still completes) */
typedef int imap_message_cb(void *ctx, const struct imap_message *m);
/* UID FETCH uidset (the selected folder) */
int imap_uid_fetch(struct imap_client *c, const char *uidset, unsigned what, imap_message_cb *cb,
		   void *ctx);
/* The same for a UID array, as commands of `batch` UIDs all sent at once
 * (pipelined) */
int imap_uid_fetch_pipelined(struct imap_client *c, const uint32_t *uids, size_t n, size_t batch,
			     unsigned what, imap_message_cb *cb, void *ctx);
/* "1:3,7,9:12" from a sorted array (malloc) */
char *imap_uidset(const uint32_t *uids, size_t n);

#endif
