/* ferryd's state behind one interface (OpenSMTPD queue_backend style): the
   scheduler, dispatcher and API only call these function pointers, so a
   PostgreSQL backend is a new store_pgsql.c, not a change elsewhere.
   Every call returns 0 on success, STORE_NOTFOUND where stated, or -1 with
   store->error() describing the failure. */
#ifndef FERRY_STORE_H
#define FERRY_STORE_H

#include <stdint.h>

#define STORE_NOTFOUND 1

enum user_state {
	US_PENDING,  /* imported, not started */
	US_PRESYNC,  /* started: copied in the background */
	US_CUTOVER,  /* served by the new server: copied first */
	US_VERIFIED, /* copy checked */
	US_DONE,     /* every folder complete */
	US_FAILED,   /* retries exhausted; last_error says why */
	US_COUNT
};
const char *user_state_name(enum user_state s);
int user_state_parse(const char *name, enum user_state *s);

struct endpoint_rec {
	int64_t id;
	char host[256];
	int port;
	char tls[16];  /* none | imaps | starttls */
	char auth[16]; /* master | password */
	char old_prefix[64]; /* folder prefix stripped by verification, e.g. "INBOX." */
};

struct wave_rec {
	int64_t id;          /* creation order = scheduling order */
	char name[128];
	int64_t start_after; /* epoch seconds, 0 = at once */
	int win_start;       /* maintenance window, minutes after local */
	int win_end;         /* midnight; -1 = always */
	int paused;
};

struct user_rec {
	int64_t id;
	char name[256];
	char old_login[256];
	char new_login[256];
	char new_host[256];     /* the NEW backend that owns the mailbox, from
				   the routing ("" = the one NEW): backend.h */
	int64_t endpoint_id;
	struct endpoint_rec ep; /* filled by user_get/user_each */
	char wave[128];         /* "" = none */
	int64_t wave_id;        /* 0 = none; filled by user_get/user_each */
	enum user_state state;
	int paused;
	int running;            /* a pull is in flight (0 after a restart) */
	int attempts;           /* failed attempts since the last success */
	int64_t next_attempt;   /* not before (epoch seconds) */
	int64_t sync_seq;       /* > 0: "sync now" requested, in this order */
	int64_t login_at;       /* > 0: the last pull asked for by the user's
				   login (the plugin), ahead of every other */
	char last_error[1024];
	int64_t started_at, finished_at, updated_at;
	char *password_enc;     /* encrypted, base64; NULL = none (user_add) */
	/* the claim's holder and lease (PostgreSQL, several ferryd: docs/ferryd.md,
	   "Several ferryd on one PostgreSQL"): the ferryd node that set running,
	   and until when (epoch seconds) its claim holds unless renewed; "" and 0
	   when not running, and always on SQLite (one process) */
	char claimed_by[128];
	int64_t lease_until;
};

struct folder_rec {
	char user[256];
	char name[512];
	char state[16];         /* plugin's: new partial complete local failed */
	int64_t old_messages;   /* on the old server (-1 unknown) */
	int64_t messages;       /* on the new server */
	int64_t copied, renumbered;
	int64_t bytes;          /* -1: not reported */
	int64_t updated_at;
};

struct store;
/* Appends one record to the migration log (every field copied, NULLs
   as empty); the store's log_add() underneath. */
int store_log_event(struct store *st, const char *user, const char *folder,
		    const char *event, int64_t copied, int64_t messages,
		    const char *error);

struct log_rec {
	int64_t id;
	int64_t time;
	char user[256];
	char folder[512];
	char event[64];
	int64_t copied, messages;
	char error[1024];
};

/* Routing (docs/routing.md): where a user's logins and mail go. Read
   natively by Dovecot (passdb/userdb sql) and Postfix (transport_maps)
   through the views ferry_passdb, ferry_userdb and ferry_transport. */
struct route_rec {
	char user[256];
	char target[8];        /* "old" (not cut over yet) or "new" */
	int64_t changed_at;    /* 0 = never changed (default: old) */
};

/* A wave's cut-over or rollback (one per wave, the latest) */
struct cutover_rec {
	char wave[128];
	char kind[16];         /* cutover | rollback */
	char state[16];        /* scheduled | running | done | failed */
	int64_t at;            /* when it is (was) due */
	int forced;
	int64_t max_age;       /* precheck: newest presync pass at most this old */
	int settle;            /* seconds between the flip and the next stage */
	int64_t started_at, finished_at;
	int users, ok, failed;
	char error[1024];
};

/* A preflight or verification run of one user (the latest per kind) */
struct check_rec {
	char user[256];
	char kind[16];         /* preflight | verify */
	char state[16];        /* queued | running | done | error */
	char result[16];       /* pass | fail ("" unless done) */
	int after_pull;        /* queued because the user's pulls completed */
	int64_t requested_at, finished_at;
	char error[1024];      /* error: why it could not run; fail: summary */
	char *report_json;     /* malloc'd or NULL (check_get with reports) */
	char *report_text;
};
void check_rec_free(struct check_rec *c);

/* users of one wave and state, and their folders' message totals */
struct user_count {
	char wave[128];  /* "" = none */
	enum user_state state;
	int64_t users, paused, running;
	int64_t old_messages, messages;  /* unknown (< 0) counted as 0 */
};

struct user_filter {
	const char *wave;   /* NULL = any */
	const char *state;  /* NULL = any, else a user_state_name */
	const char *user;   /* NULL = any */
};

struct log_filter {
	const char *user;  /* NULL = any */
	const char *wave;  /* NULL = any */
	int64_t since;     /* 0 = all */
	int limit;         /* 0 = no limit (newest last) */
};

struct store {
	const char *backend;
	void *priv;
	void (*free_priv)(struct store *st); /* NULL: free(priv) is enough */
	/* set by the backend at each failure: 1 when another process holds
	   the database's write lock (SQLite: still SQLITE_BUSY after a short
	   busy timeout, so the event loop is never held for long): the call
	   may succeed later and the caller retries it or answers "busy"
	   (docs/ferryd.md, "A locked database"); 0 for any other failure */
	int busy;
	/* this ferryd's name among those sharing the database (node_name) and
	   its claims' lease in seconds (pgsql_lease); set before open(). ""
	   and 0 on SQLite: one process, claims without a lease */
	char node[128];
	int lease;

	int (*open)(struct store *st, const char *path);
	void (*close)(struct store *st);
	const char *(*error)(struct store *st);
	int (*schema_version)(struct store *st);

	int (*begin)(struct store *st);
	int (*commit)(struct store *st);
	int (*rollback)(struct store *st);

	/* key/value settings (e.g. "paused" = "1"); NOTFOUND if unset */
	int (*setting_get)(struct store *st, const char *key, char *buf, int len);
	int (*setting_set)(struct store *st, const char *key, const char *value);

	/* returns the id of an equal endpoint, adding it if new */
	int (*endpoint_ensure)(struct store *st, struct endpoint_rec *ep);

	int (*wave_add)(struct store *st, struct wave_rec *w);
	int (*wave_get)(struct store *st, const char *name, struct wave_rec *w);
	int (*wave_update)(struct store *st, const struct wave_rec *w);
	int (*wave_each)(struct store *st,
			 int (*cb)(const struct wave_rec *w, void *ctx), void *ctx);

	int (*user_add)(struct store *st, struct user_rec *u);
	int (*user_get)(struct store *st, const char *name, struct user_rec *u);
	/* writes every mutable field (wave by name, state, flags, times) */
	int (*user_update)(struct store *st, const struct user_rec *u);
	/* the same, only if the row still has expect's state, running,
	   sync_seq and paused (compare-and-set; userstate.c is its one
	   caller): NOTFOUND if it changed meanwhile */
	int (*user_update_if)(struct store *st, const struct user_rec *u,
			      const struct user_rec *expect);
	/* wave NULL = every user; in id order */
	int (*user_each)(struct store *st, const char *wave,
			 int (*cb)(const struct user_rec *u, void *ctx), void *ctx);

	/* counts per wave and state (wave NULL = all): status without
	   reading every user */
	int (*user_counts)(struct store *st, const char *wave,
			   int (*cb)(const struct user_count *c, void *ctx), void *ctx);
	/* one page of the users matching f, in id order; *total_r: how many
	   match */
	int (*user_page)(struct store *st, const struct user_filter *f, int64_t offset,
			 int limit, int64_t *total_r,
			 int (*cb)(const struct user_rec *u, void *ctx), void *ctx);

	int (*folder_put)(struct store *st, const struct folder_rec *f);
	/* user NULL: every user's folders (in user id order) */
	int (*folder_each)(struct store *st, const char *user,
			   int (*cb)(const struct folder_rec *f, void *ctx), void *ctx);

	/* routing; route_get gives target "old" for a user without a row */
	int (*route_get)(struct store *st, const char *user, struct route_rec *r);
	int (*route_set)(struct store *st, const char *user, const char *target,
			 int64_t when);
	/* every member of the wave in one statement; *changed = rows changed */
	int (*route_set_wave)(struct store *st, const char *wave, const char *target,
			      int64_t when, int *changed);
	/* the endpoint HOST:PORT's POP3 port (0 = 110/995) and Postfix nexthop
	   ("" = smtp:[HOST]:25); NOTFOUND if no user has that endpoint */
	int (*endpoint_route_set)(struct store *st, const char *host, int port,
				  int pop3_port, const char *transport);

	int (*cutover_get)(struct store *st, const char *wave, struct cutover_rec *c);
	int (*cutover_put)(struct store *st, const struct cutover_rec *c);
	int (*cutover_each)(struct store *st,
			    int (*cb)(const struct cutover_rec *c, void *ctx), void *ctx);

	/* old-server folder prefix of the endpoint HOST:PORT; NOTFOUND if no
	   user has that endpoint */
	int (*endpoint_prefix_set)(struct store *st, const char *host, int port,
				   const char *old_prefix);
	/* the user's encrypted CSV password (malloc'd) or NOTFOUND */
	int (*user_password_get)(struct store *st, const char *user, char **enc_r);
	/* every user with an encrypted password, in id order (key rotation) */
	int (*user_password_each)(struct store *st,
				  int (*cb)(const char *user, const char *enc, void *ctx),
				  void *ctx);
	/* replaces the user's encrypted password; NOTFOUND if no such user */
	int (*user_password_set)(struct store *st, const char *user, const char *enc);

	/* checks: one row per user and kind, replaced by check_put; check_get
	   fills report_json/report_text only if with_reports (free with
	   check_rec_free); NOTFOUND if none */
	int (*check_put)(struct store *st, const struct check_rec *c);
	int (*check_get)(struct store *st, const char *user, const char *kind,
			 struct check_rec *c, int with_reports);
	/* queued or running checks -> error (after a restart) */
	int (*check_abort_all)(struct store *st, const char *error);

	/* time of the user's newest log entry with this event; NOTFOUND if none */
	int (*log_last)(struct store *st, const char *user, const char *event,
			int64_t *time_r);

	/* Shared by several ferryd (NULL on SQLite, where one process counts
	   its slots in memory): one of max per-old-host slots of host, held
	   until slot_release or until this process's connection ends (kill -9
	   included); 0 taken, 1 every slot is held (by any ferryd), -1 error */
	int (*slot_take)(struct store *st, const char *host, int max);
	void (*slot_release)(struct store *st, const char *host);
	/* the lease of every user claimed by st->node renewed until `until`;
	   the number of claims renewed or -1 (NULL on SQLite) */
	int (*lease_renew)(struct store *st, int64_t until);
	/* running users whose lease ended before `now` (their holder died or
	   lost the database), NULL on SQLite */
	int (*user_expired_each)(struct store *st, int64_t now,
				 int (*cb)(const struct user_rec *u, void *ctx), void *ctx);
	/* names of users another ferryd changed since the last call (at
	   least: a user may come twice), NULL on SQLite */
	int (*user_changed_each)(struct store *st,
				 int (*cb)(const char *user, void *ctx), void *ctx);

	/* append-only */
	int (*log_add)(struct store *st, const struct log_rec *l);
	int (*log_each)(struct store *st, const struct log_filter *flt,
			int (*cb)(const struct log_rec *l, void *ctx), void *ctx);
};

/* Backends */
struct store *store_sqlite_new(void);
/* open() takes a libpq conninfo; password NULL = none (or ~/.pgpass);
   every (re)connection waits at most connect_timeout s (non-blocking
   connect), each statement is capped by statement_timeout_ms and each lock
   wait by lock_timeout_ms on the server (docs/ferryd.md, "PostgreSQL") */
struct store *store_pgsql_new(const char *password, int connect_timeout,
			      int statement_timeout_ms, int lock_timeout_ms);
/* node name and lease of a PostgreSQL store (store.node, store.lease) */
void store_set_node(struct store *st, const char *node, int lease);

struct ferry_config;
/* The backend ferryd.conf's `store` names (password read from
   pgsql_password_file); NULL with *err_r (malloc'd) on failure. */
struct store *store_for_config(const struct ferry_config *cfg, char **err_r);
/* what open() takes: state_db or pgsql_conninfo (never a password) */
const char *store_location(const struct ferry_config *cfg);
int store_is_pgsql(const struct ferry_config *cfg);

/* service/routing_views.sql, the one definition of the routing views
   both backends create, and its hash (16 hex digits + NUL) */
const char *store_routing_views_sql(void);
void store_routing_views_hash(char out[17]);
#define STORE_VIEWS_HASH_KEY "routing_views_hash"
/* Frees a store made by any backend (after close). */
void store_free(struct store *st);

#endif
