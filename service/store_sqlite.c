/* The SQLite store: one file, WAL, schema versioned by PRAGMA user_version
   and brought up to date by the migrations below at open. */
#include "ferry-contract.h"
#include "store.h"
#include "store_sql.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STORE_BUSY_MS 5  /* longest wait for the write lock in the event loop */

/* prepared statements kept for the next call of the same SQL: parsing
   was three quarters of a user_get's CPU (perf, docs/bench.md "ferryd at
   scale"); a statement in use is not handed out twice (a nested call of
   the same SQL gets its own, finalized after) */
#define STMT_CACHE 64

struct cached_stmt {
	char *sql;  /* as the caller gives it (before sq_numbered) */
	sqlite3_stmt *stmt;
	int in_use;
};

struct sq {
	sqlite3 *db;
	char err[512];
	struct cached_stmt cache[STMT_CACHE];
	int ncache;
};

/* Migration N brings the schema from version N to N+1. Append only. */
static const char *const migrations[] = {
	/* 0 -> 1 */
	"CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE endpoints (id INTEGER PRIMARY KEY, host TEXT NOT NULL,"
	" port INTEGER NOT NULL, tls TEXT NOT NULL, auth TEXT NOT NULL,"
	" UNIQUE (host, port, tls, auth));"
	"CREATE TABLE waves (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
	" start_after INTEGER NOT NULL DEFAULT 0, win_start INTEGER NOT NULL DEFAULT -1,"
	" win_end INTEGER NOT NULL DEFAULT -1, paused INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
	" old_login TEXT NOT NULL, new_login TEXT NOT NULL,"
	" endpoint_id INTEGER NOT NULL REFERENCES endpoints(id),"
	" wave_id INTEGER REFERENCES waves(id), state TEXT NOT NULL,"
	" paused INTEGER NOT NULL DEFAULT 0, running INTEGER NOT NULL DEFAULT 0,"
	" attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL DEFAULT 0,"
	" sync_seq INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',"
	" started_at INTEGER NOT NULL DEFAULT 0, finished_at INTEGER NOT NULL DEFAULT 0,"
	" updated_at INTEGER NOT NULL DEFAULT 0, password_enc TEXT);"
	"CREATE TABLE folders (user_id INTEGER NOT NULL REFERENCES users(id),"
	" name TEXT NOT NULL, state TEXT NOT NULL, old_messages INTEGER NOT NULL,"
	" messages INTEGER NOT NULL, copied INTEGER NOT NULL, renumbered INTEGER NOT NULL,"
	" bytes INTEGER NOT NULL, updated_at INTEGER NOT NULL, PRIMARY KEY (user_id, name));"
	"CREATE TABLE log (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, user TEXT NOT NULL,"
	" folder TEXT NOT NULL, event TEXT NOT NULL, copied INTEGER NOT NULL,"
	" messages INTEGER NOT NULL, error TEXT NOT NULL);"
	"CREATE TRIGGER log_no_update BEFORE UPDATE ON log"
	" BEGIN SELECT RAISE(ABORT, 'the migration log is append-only'); END;"
	"CREATE TRIGGER log_no_delete BEFORE DELETE ON log"
	" BEGIN SELECT RAISE(ABORT, 'the migration log is append-only'); END;",
	/* 1 -> 2: log queries by user and time */
	"CREATE INDEX log_user_time ON log (user, time);"
	"CREATE INDEX users_wave ON users (wave_id);",
	/* 2 -> 3: routing read by Dovecot and Postfix (docs/routing.md), cut-overs */
	"ALTER TABLE endpoints ADD COLUMN pop3_port INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE endpoints ADD COLUMN transport TEXT NOT NULL DEFAULT '';"
	"CREATE TABLE routes (user_id INTEGER PRIMARY KEY REFERENCES users(id),"
	" target TEXT NOT NULL CHECK (target IN ('old', 'new')),"
	" changed_at INTEGER NOT NULL);"
	"CREATE TABLE cutovers (wave_id INTEGER PRIMARY KEY REFERENCES waves(id),"
	" kind TEXT NOT NULL, state TEXT NOT NULL, at INTEGER NOT NULL,"
	" forced INTEGER NOT NULL, max_age INTEGER NOT NULL, settle INTEGER NOT NULL,"
	" started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,"
	" users INTEGER NOT NULL, ok INTEGER NOT NULL, failed INTEGER NOT NULL,"
	" error TEXT NOT NULL);"
	"CREATE INDEX log_user_event ON log (user, event, time);",
	/* (the routing views are service/routing_views.sql, created after the
	   migrations by create_views()) */
	/* 3 -> 4: preflight and verification reports (docs/ferryd.md), the old
	   server's folder prefix per endpoint */
	"ALTER TABLE endpoints ADD COLUMN old_prefix TEXT NOT NULL DEFAULT '';"
	"CREATE TABLE checks (user_id INTEGER NOT NULL REFERENCES users(id),"
	" kind TEXT NOT NULL CHECK (kind IN ('preflight', 'verify')),"
	" state TEXT NOT NULL, result TEXT NOT NULL, after_pull INTEGER NOT NULL,"
	" requested_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,"
	" error TEXT NOT NULL, report_json TEXT, report_text TEXT,"
	" PRIMARY KEY (user_id, kind));",
	/* 4 -> 5: pulls asked for by a user's login (the plugin) */
	"ALTER TABLE users ADD COLUMN login_at INTEGER NOT NULL DEFAULT 0;",
	/* 5 -> 6: Sieve runs are stored like checks (docs/ferryd.md, "Sieve") */
	"CREATE TABLE checks6 (user_id INTEGER NOT NULL REFERENCES users(id),"
	" kind TEXT NOT NULL CHECK (kind IN ('preflight', 'verify', 'sieve')),"
	" state TEXT NOT NULL, result TEXT NOT NULL, after_pull INTEGER NOT NULL,"
	" requested_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,"
	" error TEXT NOT NULL, report_json TEXT, report_text TEXT,"
	" PRIMARY KEY (user_id, kind));"
	"INSERT INTO checks6 SELECT * FROM checks;"
	"DROP TABLE checks;"
	"ALTER TABLE checks6 RENAME TO checks;",
	/* 6 -> 7: the NEW backend that owns the user's mailbox ('' = the one
	   NEW): where its pulls run, where the proxy sends it after the
	   cut-over (docs/routing.md, "Several NEW backends") */
	"ALTER TABLE users ADD COLUMN new_host TEXT NOT NULL DEFAULT '';",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static struct sq *SQ(struct store *st)
{
	return st->priv;
}

/* the write lock held by another process (a busy timeout ran out) */
static int is_busy(sqlite3 *db)
{
	int rc = db != NULL ? sqlite3_errcode(db) : SQLITE_OK;

	return rc == SQLITE_BUSY || rc == SQLITE_LOCKED;
}

static int sq_fail(struct store *st, const char *what)
{
	struct sq *s = SQ(st);

	st->busy = is_busy(s->db);
	snprintf(s->err, sizeof(s->err), "%s: %s", what,
		 s->db != NULL ? sqlite3_errmsg(s->db) : "no database");
	return -1;
}

static const char *sq_error(struct store *st)
{
	return SQ(st)->err;
}

static int exec(struct store *st, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(SQ(st)->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		st->busy = is_busy(SQ(st)->db);
		snprintf(SQ(st)->err, sizeof(SQ(st)->err), "%s", msg ? msg : "sqlite error");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

/* The statements shared with PostgreSQL (store_sql.h) number their
   parameters $1..$N. SQLite would take "$1" for a named parameter and
   number it by first appearance; ?1..?N it numbers exactly. A copy with
   each $<digits> outside quotes made ?<digits> (malloc'd), or NULL when
   there is none (or no memory: the text is prepared as it is). */
static char *sq_numbered(const char *sql)
{
	const char *p;
	char *copy, quote = 0;

	if (strchr(sql, '$') == NULL || (copy = strdup(sql)) == NULL)
		return NULL;
	for (p = sql; *p != '\0'; p++) {
		if (quote != 0) {
			if (*p == quote)
				quote = 0;
		} else if (*p == '\'' || *p == '"') {
			quote = *p;
		} else if (*p == '$' && p[1] >= '0' && p[1] <= '9') {
			copy[p - sql] = '?';
		}
	}
	return copy;
}

static sqlite3_stmt *prep(struct store *st, const char *sql)
{
	struct sq *s = SQ(st);
	sqlite3_stmt *stmt = NULL;
	char *numbered;
	int rc;

	for (int i = 0; i < s->ncache; i++)
		if (!s->cache[i].in_use && strcmp(s->cache[i].sql, sql) == 0) {
			s->cache[i].in_use = 1;
			return s->cache[i].stmt;
		}
	numbered = sq_numbered(sql);
	rc = sqlite3_prepare_v3(s->db, numbered != NULL ? numbered : sql, -1,
				s->ncache < STMT_CACHE ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, NULL);
	free(numbered);
	if (rc != SQLITE_OK) {
		sqlite3_finalize(stmt);
		sq_fail(st, "prepare");
		return NULL;
	}
	if (s->ncache < STMT_CACHE && (s->cache[s->ncache].sql = strdup(sql)) != NULL) {
		s->cache[s->ncache].stmt = stmt;
		s->cache[s->ncache++].in_use = 1;
	}
	return stmt;
}

/* the end of a statement's use: reset for the next call (which also ends
   its read of the database), or finalized if it is not kept */
static void release(struct store *st, sqlite3_stmt *stmt)
{
	struct sq *s = SQ(st);

	for (int i = 0; i < s->ncache; i++)
		if (s->cache[i].stmt == stmt) {
			sqlite3_reset(stmt);
			sqlite3_clear_bindings(stmt);
			s->cache[i].in_use = 0;
			return;
		}
	sqlite3_finalize(stmt);
}

/* binds "s" text, "i" int64, "t" text-or-NULL; one type per parameter */
static sqlite3_stmt *prepf(struct store *st, const char *sql, const char *types, ...)
{
	sqlite3_stmt *stmt = prep(st, sql);
	va_list ap;
	int i;

	if (stmt == NULL)
		return NULL;
	/* a type without its parameter would read an argument the caller
	   never passed (valgrind: uninitialised pointer in check_put) */
	if (sqlite3_bind_parameter_count(stmt) != (int)strlen(types)) {
		snprintf(SQ(st)->err, sizeof(SQ(st)->err), "prepare: %d parameters, %d types",
			 sqlite3_bind_parameter_count(stmt), (int)strlen(types));
		release(st, stmt);
		return NULL;
	}
	va_start(ap, types);
	for (i = 0; types[i] != '\0'; i++) {
		if (types[i] == 'i')
			sqlite3_bind_int64(stmt, i + 1, va_arg(ap, int64_t));
		else {
			const char *v = va_arg(ap, const char *);
			if (v == NULL || (types[i] == 't' && *v == '\0'))
				sqlite3_bind_null(stmt, i + 1);
			else
				sqlite3_bind_text(stmt, i + 1, v, -1, SQLITE_TRANSIENT);
		}
	}
	va_end(ap);
	return stmt;
}

/* runs a statement without rows */
static int run(struct store *st, sqlite3_stmt *stmt, const char *what)
{
	int rc;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	release(st, stmt);
	if (rc != SQLITE_DONE)
		return sq_fail(st, what);
	return 0;
}

static void col_text(sqlite3_stmt *stmt, int col, char *buf, size_t len)
{
	const unsigned char *t = sqlite3_column_text(stmt, col);

	snprintf(buf, len, "%s", t != NULL ? (const char *)t : "");
}

static int user_version(struct store *st)
{
	sqlite3_stmt *stmt = prep(st, "PRAGMA user_version");
	int v = -1;

	if (stmt != NULL && sqlite3_step(stmt) == SQLITE_ROW)
		v = sqlite3_column_int(stmt, 0);
	release(st, stmt);
	return v;
}

static int sq_schema_version(struct store *st)
{
	return user_version(st);
}

static int sq_setting_get(struct store *st, const char *key, char *buf, int len);
static int sq_setting_set(struct store *st, const char *key, const char *value);

/* (Re)creates the routing views from service/routing_views.sql when the
   file changed since the hash recorded in settings (inside migrate()'s
   transaction, so readers see the old views or the new ones) */
static int create_views(struct store *st)
{
	char want[17], have[32];

	store_routing_views_hash(want);
	if (sq_setting_get(st, STORE_VIEWS_HASH_KEY, have, sizeof(have)) == 0 &&
	    strcmp(have, want) == 0)
		return 0;
	if (exec(st, "DROP VIEW IF EXISTS " FERRY_VIEW_TRANSPORT ";"
		 "DROP VIEW IF EXISTS " FERRY_VIEW_PROXY ";"
		 "DROP VIEW IF EXISTS " FERRY_VIEW_USERDB ";"
		 "DROP VIEW IF EXISTS " FERRY_VIEW_PASSDB ";"
		 "DROP VIEW IF EXISTS ferry_route;") < 0 ||
	    exec(st, store_routing_views_sql()) < 0)
		return -1;
	return sq_setting_set(st, STORE_VIEWS_HASH_KEY, want);
}

static int migrate(struct store *st)
{
	int v;
	char sql[64];

	if (exec(st, "BEGIN IMMEDIATE") < 0)
		return -1;
	v = user_version(st);
	if (v < 0 || v > SCHEMA_VERSION) {
		exec(st, "ROLLBACK");
		snprintf(SQ(st)->err, sizeof(SQ(st)->err),
			 "database schema version %d is newer than this ferryd (%d)",
			 v, SCHEMA_VERSION);
		return -1;
	}
	for (; v < SCHEMA_VERSION; v++) {
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v + 1);
		if (exec(st, migrations[v]) < 0 || exec(st, sql) < 0) {
			char keep[512];
			snprintf(keep, sizeof(keep), "%s", SQ(st)->err);
			exec(st, "ROLLBACK");
			snprintf(SQ(st)->err, sizeof(SQ(st)->err),
				 "migration to schema %d: %.400s", v + 1, keep);
			return -1;
		}
	}
	if (create_views(st) < 0) {
		char keep[512];
		snprintf(keep, sizeof(keep), "%s", SQ(st)->err);
		exec(st, "ROLLBACK");
		snprintf(SQ(st)->err, sizeof(SQ(st)->err), "routing views: %.400s", keep);
		return -1;
	}
	return exec(st, "COMMIT");
}

static int sq_open(struct store *st, const char *path)
{
	struct sq *s = SQ(st);

	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
			    NULL) != SQLITE_OK)
		return sq_fail(st, path);
	/* opening and migrating may wait (ferryd is not serving yet) */
	sqlite3_busy_timeout(s->db, 5000);
	if (exec(st, "PRAGMA journal_mode = WAL") < 0 ||
	    exec(st, "PRAGMA synchronous = NORMAL") < 0 ||
	    exec(st, "PRAGMA foreign_keys = ON") < 0 || migrate(st) < 0)
		return -1;
	/* then never long: a write the lock refuses fails with st->busy and is
	   retried by its caller, the event loop goes on (reads are not
	   blocked by a writer in WAL mode) */
	sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
	return 0;
}

static void sq_close(struct store *st)
{
	for (int i = 0; i < SQ(st)->ncache; i++) {
		sqlite3_finalize(SQ(st)->cache[i].stmt);
		free(SQ(st)->cache[i].sql);
	}
	SQ(st)->ncache = 0;
	if (SQ(st)->db != NULL)
		sqlite3_close(SQ(st)->db);
	SQ(st)->db = NULL;
}

static int sq_begin(struct store *st)
{
	return exec(st, "BEGIN IMMEDIATE");
}

static int sq_commit(struct store *st)
{
	return exec(st, "COMMIT");
}

static int sq_rollback(struct store *st)
{
	return exec(st, "ROLLBACK");
}

/* The end of a single-row lookup: the row (if any) has been read. */
static int one_row_end(struct store *st, sqlite3_stmt *stmt, int rc,
		       const char *what)
{
	release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? STORE_NOTFOUND : sq_fail(st, what);
}

static int sq_setting_get(struct store *st, const char *key, char *buf, int len)
{
	sqlite3_stmt *stmt = prepf(st, SQL_SETTING_GET, "s", key);
	int rc;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		col_text(stmt, 0, buf, (size_t)len);
	return one_row_end(st, stmt, rc, "setting_get");
}

static int sq_setting_set(struct store *st, const char *key, const char *value)
{
	return run(st, prepf(st, SQL_SETTING_SET,
			     "ss", key, value), "setting_set");
}

static int sq_endpoint_ensure(struct store *st, struct endpoint_rec *ep)
{
	sqlite3_stmt *stmt;

	if (run(st, prepf(st, "INSERT OR IGNORE INTO endpoints (host, port, tls, auth)"
			  " VALUES (?, ?, ?, ?)", "siss", ep->host, (int64_t)ep->port,
			  ep->tls, ep->auth), "endpoint_ensure") < 0)
		return -1;
	stmt = prepf(st, SQL_ENDPOINT_ID, "siss", ep->host, (int64_t)ep->port,
		     ep->tls, ep->auth);
	if (stmt == NULL)
		return -1;
	if (sqlite3_step(stmt) != SQLITE_ROW) {
		release(st, stmt);
		return sq_fail(st, "endpoint_ensure");
	}
	ep->id = sqlite3_column_int64(stmt, 0);
	release(st, stmt);
	return 0;
}

static void wave_row(sqlite3_stmt *stmt, struct wave_rec *w)
{
	memset(w, 0, sizeof(*w));
	w->id = sqlite3_column_int64(stmt, 0);
	col_text(stmt, 1, w->name, sizeof(w->name));
	w->start_after = sqlite3_column_int64(stmt, 2);
	w->win_start = sqlite3_column_int(stmt, 3);
	w->win_end = sqlite3_column_int(stmt, 4);
	w->paused = sqlite3_column_int(stmt, 5);
}

static int sq_wave_add(struct store *st, struct wave_rec *w)
{
	if (run(st, prepf(st, "INSERT INTO waves (name, start_after, win_start, win_end,"
			  " paused) VALUES (?, ?, ?, ?, ?)", "siiii", w->name, w->start_after,
			  (int64_t)w->win_start, (int64_t)w->win_end, (int64_t)w->paused),
		"wave_add") < 0)
		return -1;
	w->id = sqlite3_last_insert_rowid(SQ(st)->db);
	return 0;
}

static int sq_wave_get(struct store *st, const char *name, struct wave_rec *w)
{
	sqlite3_stmt *stmt = prepf(st, SQL_WAVE_GET,
				   "s", name);
	int rc;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		wave_row(stmt, w);
	return one_row_end(st, stmt, rc, "wave_get");
}

static int sq_wave_update(struct store *st, const struct wave_rec *w)
{
	return run(st, prepf(st, SQL_WAVE_UPDATE, "iiiii", w->start_after,
			     (int64_t)w->win_start, (int64_t)w->win_end, (int64_t)w->paused,
			     w->id), "wave_update");
}

static int sq_wave_each(struct store *st, int (*cb)(const struct wave_rec *, void *),
			void *ctx)
{
	sqlite3_stmt *stmt = prep(st, SQL_WAVE_EACH);
	struct wave_rec w;
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		wave_row(stmt, &w);
		ret = cb(&w, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "wave_each");
	release(st, stmt);
	return ret;
}

static void user_row(sqlite3_stmt *stmt, struct user_rec *u)
{
	char state[32];

	memset(u, 0, sizeof(*u));
	u->id = sqlite3_column_int64(stmt, 0);
	col_text(stmt, 1, u->name, sizeof(u->name));
	col_text(stmt, 2, u->old_login, sizeof(u->old_login));
	col_text(stmt, 3, u->new_login, sizeof(u->new_login));
	u->endpoint_id = u->ep.id = sqlite3_column_int64(stmt, 4);
	col_text(stmt, 5, u->ep.host, sizeof(u->ep.host));
	u->ep.port = sqlite3_column_int(stmt, 6);
	col_text(stmt, 7, u->ep.tls, sizeof(u->ep.tls));
	col_text(stmt, 8, u->ep.auth, sizeof(u->ep.auth));
	col_text(stmt, 21, u->ep.old_prefix, sizeof(u->ep.old_prefix));
	col_text(stmt, 9, u->wave, sizeof(u->wave));
	u->wave_id = sqlite3_column_int64(stmt, 10);
	col_text(stmt, 11, state, sizeof(state));
	if (user_state_parse(state, &u->state) < 0)
		u->state = US_FAILED;
	u->paused = sqlite3_column_int(stmt, 12);
	u->running = sqlite3_column_int(stmt, 13);
	u->attempts = sqlite3_column_int(stmt, 14);
	u->next_attempt = sqlite3_column_int64(stmt, 15);
	u->sync_seq = sqlite3_column_int64(stmt, 16);
	col_text(stmt, 17, u->last_error, sizeof(u->last_error));
	u->started_at = sqlite3_column_int64(stmt, 18);
	u->finished_at = sqlite3_column_int64(stmt, 19);
	u->updated_at = sqlite3_column_int64(stmt, 20);
	u->login_at = sqlite3_column_int64(stmt, 22);
	col_text(stmt, 23, u->new_host, sizeof(u->new_host));
}

static int sq_user_add(struct store *st, struct user_rec *u)
{
	if (run(st, prepf(st, "INSERT INTO users (name, old_login, new_login, endpoint_id,"
			  " wave_id, state, password_enc, updated_at, new_host) VALUES (?, ?, ?, ?,"
			  " (SELECT id FROM waves WHERE name = ?), ?, ?, ?, ?)", "sssitstis",
			  u->name, u->old_login, u->new_login, u->endpoint_id, u->wave,
			  user_state_name(u->state), u->password_enc,
			  (int64_t)time(NULL), u->new_host), "user_add") < 0)
		return -1;
	u->id = sqlite3_last_insert_rowid(SQ(st)->db);
	return 0;
}

static int sq_user_get(struct store *st, const char *name, struct user_rec *u)
{
	sqlite3_stmt *stmt = prepf(st, SQL_USER_GET,
				   "s", name);
	int rc;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		user_row(stmt, u);
	return one_row_end(st, stmt, rc, "user_get");
}

static int sq_user_update(struct store *st, const struct user_rec *u)
{
	return run(st, prepf(st, SQL_USER_UPDATE,
			     "tsiiiiisiiiii",
			     u->wave, user_state_name(u->state), (int64_t)u->paused,
			     (int64_t)u->running, (int64_t)u->attempts, u->next_attempt,
			     u->sync_seq, u->last_error, u->started_at, u->finished_at,
			     (int64_t)time(NULL), u->login_at, u->id), "user_update");
}

static int sq_user_update_if(struct store *st, const struct user_rec *u,
			     const struct user_rec *expect)
{
	if (run(st, prepf(st, SQL_USER_UPDATE_IF,
			  "tsiiiiisiiiiisiii",
			  u->wave, user_state_name(u->state), (int64_t)u->paused,
			  (int64_t)u->running, (int64_t)u->attempts, u->next_attempt,
			  u->sync_seq, u->last_error, u->started_at, u->finished_at,
			  (int64_t)time(NULL), u->login_at, u->id, user_state_name(expect->state),
			  (int64_t)expect->running, expect->sync_seq, (int64_t)expect->paused),
		"user_update_if") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_user_each(struct store *st, const char *wave,
			int (*cb)(const struct user_rec *, void *), void *ctx)
{
	sqlite3_stmt *stmt;
	struct user_rec u;
	int rc, ret = 0;

	stmt = wave == NULL ? prep(st, "SELECT " SQL_USER_COLS SQL_USER_FROM " ORDER BY u.id") :
		prepf(st, "SELECT " SQL_USER_COLS SQL_USER_FROM " WHERE w.name = ? ORDER BY u.id",
		      "s", wave);
	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		user_row(stmt, &u);
		ret = cb(&u, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "user_each");
	release(st, stmt);
	return ret;
}

static int sq_user_counts(struct store *st, const char *wave,
			  int (*cb)(const struct user_count *c, void *ctx), void *ctx)
{
	sqlite3_stmt *stmt = prepf(st,
		"SELECT COALESCE(w.name, ''), u.state, COUNT(*), SUM(u.paused), SUM(u.running),"
		" SUM(COALESCE(f.o, 0)), SUM(COALESCE(f.m, 0)) FROM users u"
		" LEFT JOIN waves w ON w.id = u.wave_id"
		" LEFT JOIN (SELECT user_id, SUM(MAX(old_messages, 0)) AS o,"
		"  SUM(MAX(messages, 0)) AS m FROM folders GROUP BY user_id) f ON f.user_id = u.id"
		" WHERE ?1 IS NULL OR w.name = ?1 GROUP BY 1, 2", "s", wave);
	struct user_count c;
	char state[32];
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&c, 0, sizeof(c));
		col_text(stmt, 0, c.wave, sizeof(c.wave));
		col_text(stmt, 1, state, sizeof(state));
		if (user_state_parse(state, &c.state) < 0)
			c.state = US_FAILED;
		c.users = sqlite3_column_int64(stmt, 2);
		c.paused = sqlite3_column_int64(stmt, 3);
		c.running = sqlite3_column_int64(stmt, 4);
		c.old_messages = sqlite3_column_int64(stmt, 5);
		c.messages = sqlite3_column_int64(stmt, 6);
		ret = cb(&c, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "user_counts");
	release(st, stmt);
	return ret;
}

#define USER_FILTER " WHERE (?1 IS NULL OR w.name = ?1) AND (?2 IS NULL OR u.state = ?2)" \
	" AND (?3 IS NULL OR u.name = ?3)"

static int sq_user_page(struct store *st, const struct user_filter *f, int64_t offset,
			int limit, int64_t *total_r,
			int (*cb)(const struct user_rec *u, void *ctx), void *ctx)
{
	sqlite3_stmt *stmt = prepf(st, "SELECT COUNT(*)" SQL_USER_FROM USER_FILTER, "sss",
				   f->wave, f->state, f->user);
	struct user_rec u;
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	if (sqlite3_step(stmt) != SQLITE_ROW) {
		release(st, stmt);
		return sq_fail(st, "user_page");
	}
	*total_r = sqlite3_column_int64(stmt, 0);
	release(st, stmt);
	stmt = prepf(st, "SELECT " SQL_USER_COLS SQL_USER_FROM USER_FILTER " ORDER BY u.id LIMIT ?4"
		     " OFFSET ?5", "sssii", f->wave, f->state, f->user, (int64_t)limit, offset);
	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		user_row(stmt, &u);
		ret = cb(&u, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "user_page");
	release(st, stmt);
	return ret;
}

static int sq_folder_put(struct store *st, const struct folder_rec *f)
{
	return run(st, prepf(st, "INSERT INTO folders (user_id, name, state, old_messages,"
			     " messages, copied, renumbered, bytes, updated_at) SELECT id, ?, ?,"
			     " ?, ?, ?, ?, ?, ? FROM users WHERE name = ?"
			     " ON CONFLICT (user_id, name) DO UPDATE SET state = excluded.state,"
			     " old_messages = excluded.old_messages, messages = excluded.messages,"
			     " copied = excluded.copied, renumbered = excluded.renumbered,"
			     " bytes = excluded.bytes, updated_at = excluded.updated_at",
			     "ssiiiiiis", f->name, f->state, f->old_messages, f->messages,
			     f->copied, f->renumbered, f->bytes, f->updated_at, f->user),
		   "folder_put");
}

static int sq_folder_each(struct store *st, const char *user,
			  int (*cb)(const struct folder_rec *, void *), void *ctx)
{
	/* two statements: an OR of both would not use the name's index */
	sqlite3_stmt *stmt = user != NULL ?
		prepf(st, SQL_FOLDER_SELECT " WHERE u.name = ? ORDER BY f.name", "s", user) :
		prep(st, SQL_FOLDER_SELECT " ORDER BY f.user_id, f.name");
	struct folder_rec f;
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&f, 0, sizeof(f));
		col_text(stmt, 0, f.user, sizeof(f.user));
		col_text(stmt, 1, f.name, sizeof(f.name));
		col_text(stmt, 2, f.state, sizeof(f.state));
		f.old_messages = sqlite3_column_int64(stmt, 3);
		f.messages = sqlite3_column_int64(stmt, 4);
		f.copied = sqlite3_column_int64(stmt, 5);
		f.renumbered = sqlite3_column_int64(stmt, 6);
		f.bytes = sqlite3_column_int64(stmt, 7);
		f.updated_at = sqlite3_column_int64(stmt, 8);
		ret = cb(&f, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "folder_each");
	release(st, stmt);
	return ret;
}

static int sq_route_get(struct store *st, const char *user, struct route_rec *r)
{
	sqlite3_stmt *stmt = prepf(st, SQL_ROUTE_GET, "s", user);
	int rc;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		memset(r, 0, sizeof(*r));
		col_text(stmt, 0, r->user, sizeof(r->user));
		col_text(stmt, 1, r->target, sizeof(r->target));
		r->changed_at = sqlite3_column_int64(stmt, 2);
	}
	return one_row_end(st, stmt, rc, "route_get");
}

static int sq_route_set(struct store *st, const char *user, const char *target,
			int64_t when)
{
	if (run(st, prepf(st, "INSERT INTO routes (user_id, target, changed_at)"
			  " SELECT id, ?, ? FROM users WHERE name = ?"
			  " ON CONFLICT (user_id) DO UPDATE SET target = excluded.target,"
			  " changed_at = excluded.changed_at", "sis", target, when, user),
		"route_set") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_route_set_wave(struct store *st, const char *wave, const char *target,
			     int64_t when, int *changed)
{
	if (run(st, prepf(st, "INSERT INTO routes (user_id, target, changed_at)"
			  " SELECT u.id, ?, ? FROM users u JOIN waves w ON w.id = u.wave_id"
			  " WHERE w.name = ?"
			  " ON CONFLICT (user_id) DO UPDATE SET target = excluded.target,"
			  " changed_at = excluded.changed_at", "sis", target, when, wave),
		"route_set_wave") < 0)
		return -1;
	if (changed != NULL)
		*changed = sqlite3_changes(SQ(st)->db);
	return 0;
}

static int sq_endpoint_route_set(struct store *st, const char *host, int port,
				 int pop3_port, const char *transport)
{
	if (run(st, prepf(st, SQL_ENDPOINT_ROUTE_SET, "issi", (int64_t)pop3_port,
			  transport, host, (int64_t)port), "endpoint_route_set") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_endpoint_prefix_set(struct store *st, const char *host, int port,
				  const char *old_prefix)
{
	if (run(st, prepf(st, SQL_ENDPOINT_PREFIX_SET,
			  "ssi", old_prefix, host, (int64_t)port), "endpoint_prefix_set") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_user_password_get(struct store *st, const char *user, char **enc_r)
{
	sqlite3_stmt *stmt = prepf(st, SQL_USER_PASSWORD_GET, "s", user);
	int rc;

	*enc_r = NULL;
	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*enc_r = strdup((const char *)sqlite3_column_text(stmt, 0));
	return one_row_end(st, stmt, rc, "user_password_get");
}

static int sq_user_password_each(struct store *st,
				 int (*cb)(const char *, const char *, void *), void *ctx)
{
	sqlite3_stmt *stmt = prep(st, SQL_USER_PASSWORD_EACH);
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
		ret = cb((const char *)sqlite3_column_text(stmt, 0),
			 (const char *)sqlite3_column_text(stmt, 1), ctx);
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "user_password_each");
	release(st, stmt);
	return ret;
}

static int sq_user_password_set(struct store *st, const char *user, const char *enc)
{
	if (run(st, prepf(st, SQL_USER_PASSWORD_SET, "ss",
			  enc, user), "user_password_set") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_check_put(struct store *st, const struct check_rec *c)
{
	sqlite3_stmt *stmt = prepf(st, "INSERT INTO checks (user_id, kind, state, result,"
				   " after_pull, requested_at, finished_at, error, report_json,"
				   " report_text) SELECT id, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM users"
				   " WHERE name = ? ON CONFLICT (user_id, kind) DO UPDATE SET"
				   " state = excluded.state, result = excluded.result,"
				   " after_pull = excluded.after_pull,"
				   " requested_at = excluded.requested_at,"
				   " finished_at = excluded.finished_at, error = excluded.error,"
				   " report_json = excluded.report_json,"
				   " report_text = excluded.report_text",
				   "sssiiistts", c->kind, c->state, c->result, (int64_t)c->after_pull,
				   c->requested_at, c->finished_at, c->error,
				   c->report_json != NULL ? c->report_json : "",
				   c->report_text != NULL ? c->report_text : "", c->user);

	if (run(st, stmt, "check_put") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_check_get(struct store *st, const char *user, const char *kind,
			struct check_rec *c, int with_reports)
{
	sqlite3_stmt *stmt = prepf(st, SQL_CHECK_GET, "ss", user, kind);
	int rc;

	memset(c, 0, sizeof(*c));
	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		snprintf(c->user, sizeof(c->user), "%s", user);
		snprintf(c->kind, sizeof(c->kind), "%s", kind);
		col_text(stmt, 0, c->state, sizeof(c->state));
		col_text(stmt, 1, c->result, sizeof(c->result));
		c->after_pull = sqlite3_column_int(stmt, 2);
		c->requested_at = sqlite3_column_int64(stmt, 3);
		c->finished_at = sqlite3_column_int64(stmt, 4);
		col_text(stmt, 5, c->error, sizeof(c->error));
		if (with_reports && sqlite3_column_type(stmt, 6) != SQLITE_NULL)
			c->report_json = strdup((const char *)sqlite3_column_text(stmt, 6));
		if (with_reports && sqlite3_column_type(stmt, 7) != SQLITE_NULL)
			c->report_text = strdup((const char *)sqlite3_column_text(stmt, 7));
	}
	return one_row_end(st, stmt, rc, "check_get");
}

static int sq_check_abort_all(struct store *st, const char *error)
{
	return run(st, prepf(st, SQL_CHECK_ABORT_ALL, "si",
			     error, (int64_t)time(NULL)), "check_abort_all");
}

static void cutover_row(sqlite3_stmt *stmt, struct cutover_rec *c)
{
	memset(c, 0, sizeof(*c));
	col_text(stmt, 0, c->wave, sizeof(c->wave));
	col_text(stmt, 1, c->kind, sizeof(c->kind));
	col_text(stmt, 2, c->state, sizeof(c->state));
	c->at = sqlite3_column_int64(stmt, 3);
	c->forced = sqlite3_column_int(stmt, 4);
	c->max_age = sqlite3_column_int64(stmt, 5);
	c->started_at = sqlite3_column_int64(stmt, 6);
	c->finished_at = sqlite3_column_int64(stmt, 7);
	c->users = sqlite3_column_int(stmt, 8);
	c->ok = sqlite3_column_int(stmt, 9);
	c->failed = sqlite3_column_int(stmt, 10);
	col_text(stmt, 11, c->error, sizeof(c->error));
	c->settle = sqlite3_column_int(stmt, 12);
}

static int sq_cutover_get(struct store *st, const char *wave, struct cutover_rec *c)
{
	sqlite3_stmt *stmt = prepf(st, SQL_CUTOVER_GET, "s", wave);
	int rc;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		cutover_row(stmt, c);
	return one_row_end(st, stmt, rc, "cutover_get");
}

static int sq_cutover_put(struct store *st, const struct cutover_rec *c)
{
	if (run(st, prepf(st, "INSERT INTO cutovers (wave_id, kind, state, at, forced, max_age,"
			  " started_at, finished_at, users, ok, failed, error, settle) SELECT id,"
			  " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM waves WHERE name = ?"
			  " ON CONFLICT (wave_id) DO UPDATE SET kind = excluded.kind,"
			  " state = excluded.state, at = excluded.at, forced = excluded.forced,"
			  " max_age = excluded.max_age, started_at = excluded.started_at,"
			  " finished_at = excluded.finished_at, users = excluded.users,"
			  " ok = excluded.ok, failed = excluded.failed, error = excluded.error,"
			  " settle = excluded.settle",
			  "ssiiiiiiiisis", c->kind, c->state, c->at, (int64_t)c->forced,
			  c->max_age, c->started_at, c->finished_at, (int64_t)c->users,
			  (int64_t)c->ok, (int64_t)c->failed, c->error, (int64_t)c->settle,
			  c->wave),
		"cutover_put") < 0)
		return -1;
	return sqlite3_changes(SQ(st)->db) == 0 ? STORE_NOTFOUND : 0;
}

static int sq_cutover_each(struct store *st, int (*cb)(const struct cutover_rec *, void *),
			   void *ctx)
{
	sqlite3_stmt *stmt = prep(st, SQL_CUTOVER_EACH);
	struct cutover_rec c;
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		cutover_row(stmt, &c);
		ret = cb(&c, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "cutover_each");
	release(st, stmt);
	return ret;
}

static int sq_log_last(struct store *st, const char *user, const char *event,
		       int64_t *time_r)
{
	sqlite3_stmt *stmt = prepf(st, "SELECT MAX(time) FROM log WHERE user = ? AND event = ?",
				   "ss", user, event);
	int rc, found = 0;

	if (stmt == NULL)
		return -1;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW && sqlite3_column_type(stmt, 0) != SQLITE_NULL) {
		*time_r = sqlite3_column_int64(stmt, 0);
		found = 1;
	}
	release(st, stmt);
	if (rc != SQLITE_ROW)
		return sq_fail(st, "log_last");
	return found ? 0 : STORE_NOTFOUND;
}

static int sq_log_add(struct store *st, const struct log_rec *l)
{
	return run(st, prepf(st, "INSERT INTO log (time, user, folder, event, copied,"
			     " messages, error) VALUES (?, ?, ?, ?, ?, ?, ?)", "isssiis",
			     l->time, l->user, l->folder, l->event, l->copied, l->messages,
			     l->error), "log_add");
}

static int sq_log_each(struct store *st, const struct log_filter *flt,
		       int (*cb)(const struct log_rec *, void *), void *ctx)
{
	const char *sql =
		"SELECT * FROM (SELECT id, time, user, folder, event, copied, messages, error"
		" FROM log WHERE (?1 IS NULL OR user = ?1) AND time >= ?2 AND (?3 IS NULL OR"
		" user IN (SELECT u.name FROM users u JOIN waves w ON w.id = u.wave_id"
		" WHERE w.name = ?3)) ORDER BY id DESC LIMIT ?4) ORDER BY id";
	sqlite3_stmt *stmt = prepf(st, sql, "sisi", flt->user, flt->since, flt->wave,
				   (int64_t)(flt->limit > 0 ? flt->limit : -1));
	struct log_rec l;
	int rc, ret = 0;

	if (stmt == NULL)
		return -1;
	while (ret == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&l, 0, sizeof(l));
		l.id = sqlite3_column_int64(stmt, 0);
		l.time = sqlite3_column_int64(stmt, 1);
		col_text(stmt, 2, l.user, sizeof(l.user));
		col_text(stmt, 3, l.folder, sizeof(l.folder));
		col_text(stmt, 4, l.event, sizeof(l.event));
		l.copied = sqlite3_column_int64(stmt, 5);
		l.messages = sqlite3_column_int64(stmt, 6);
		col_text(stmt, 7, l.error, sizeof(l.error));
		ret = cb(&l, ctx);
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = sq_fail(st, "log_each");
	release(st, stmt);
	return ret;
}

struct store *store_sqlite_new(void)
{
	struct store *st = calloc(1, sizeof(*st));

	st->backend = "sqlite";
	st->priv = calloc(1, sizeof(struct sq));
	st->open = sq_open;
	st->close = sq_close;
	st->error = sq_error;
	st->schema_version = sq_schema_version;
	st->begin = sq_begin;
	st->commit = sq_commit;
	st->rollback = sq_rollback;
	st->setting_get = sq_setting_get;
	st->setting_set = sq_setting_set;
	st->endpoint_ensure = sq_endpoint_ensure;
	st->wave_add = sq_wave_add;
	st->wave_get = sq_wave_get;
	st->wave_update = sq_wave_update;
	st->wave_each = sq_wave_each;
	st->user_add = sq_user_add;
	st->user_get = sq_user_get;
	st->user_update = sq_user_update;
	st->user_update_if = sq_user_update_if;
	st->user_each = sq_user_each;
	st->user_counts = sq_user_counts;
	st->user_page = sq_user_page;
	st->folder_put = sq_folder_put;
	st->folder_each = sq_folder_each;
	st->route_get = sq_route_get;
	st->route_set = sq_route_set;
	st->route_set_wave = sq_route_set_wave;
	st->endpoint_route_set = sq_endpoint_route_set;
	st->cutover_get = sq_cutover_get;
	st->cutover_put = sq_cutover_put;
	st->cutover_each = sq_cutover_each;
	st->endpoint_prefix_set = sq_endpoint_prefix_set;
	st->user_password_get = sq_user_password_get;
	st->user_password_each = sq_user_password_each;
	st->user_password_set = sq_user_password_set;
	st->check_put = sq_check_put;
	st->check_get = sq_check_get;
	st->check_abort_all = sq_check_abort_all;
	st->log_last = sq_log_last;
	st->log_add = sq_log_add;
	st->log_each = sq_log_each;
	return st;
}
