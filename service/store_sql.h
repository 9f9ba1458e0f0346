#ifndef FERRY_STORE_SQL_H
#define FERRY_STORE_SQL_H

/* The SQL that both store backends run as it is (store_sqlite.c,
   store_pgsql.c): one text per statement, with PostgreSQL's numbered
   parameters $1..$N. SQLite would read "$1" as a named parameter numbered
   by first appearance, so store_sqlite.c prepares these as ?1..?N, which
   SQLite numbers exactly (sq_numbered()). What the dialects write
   differently stays in its backend: upserts and RETURNING, GREATEST and
   MAX, parameters tested for NULL (PostgreSQL needs their type), folder
   name collation, the schema. */

#define SQL_WAVE_COLS "id, name, start_after, win_start, win_end, paused"
#define SQL_USER_COLS "u.id, u.name, u.old_login, u.new_login, u.endpoint_id, e.host," \
	" e.port, e.tls, e.auth, COALESCE(w.name, ''), COALESCE(u.wave_id, 0), u.state," \
	" u.paused, u.running, u.attempts, u.next_attempt, u.sync_seq, u.last_error," \
	" u.started_at, u.finished_at, u.updated_at, e.old_prefix, u.login_at, u.new_host"
#define SQL_USER_FROM " FROM users u JOIN endpoints e ON e.id = u.endpoint_id" \
	" LEFT JOIN waves w ON w.id = u.wave_id"
#define SQL_FOLDER_SELECT "SELECT u.name, f.name, f.state, f.old_messages, f.messages," \
	" f.copied, f.renumbered, f.bytes, f.updated_at FROM folders f" \
	" JOIN users u ON u.id = f.user_id"
#define SQL_CUTOVER_COLS "w.name, c.kind, c.state, c.at, c.forced, c.max_age," \
	" c.started_at, c.finished_at, c.users, c.ok, c.failed, c.error, c.settle"

#define SQL_SETTING_GET "SELECT value FROM settings WHERE key = $1"
#define SQL_SETTING_SET "INSERT INTO settings (key, value) VALUES ($1, $2)" \
	" ON CONFLICT (key) DO UPDATE SET value = excluded.value"
#define SQL_ENDPOINT_ID "SELECT id FROM endpoints WHERE host = $1 AND port = $2" \
	" AND tls = $3 AND auth = $4"
#define SQL_ENDPOINT_ROUTE_SET "UPDATE endpoints SET pop3_port = $1, transport = $2" \
	" WHERE host = $3 AND port = $4"
#define SQL_ENDPOINT_PREFIX_SET "UPDATE endpoints SET old_prefix = $1" \
	" WHERE host = $2 AND port = $3"

#define SQL_WAVE_GET "SELECT " SQL_WAVE_COLS " FROM waves WHERE name = $1"
#define SQL_WAVE_UPDATE "UPDATE waves SET start_after = $1, win_start = $2," \
	" win_end = $3, paused = $4 WHERE id = $5"
#define SQL_WAVE_EACH "SELECT " SQL_WAVE_COLS " FROM waves ORDER BY id"

#define SQL_USER_GET "SELECT " SQL_USER_COLS SQL_USER_FROM " WHERE u.name = $1"
/* user_update; user_update_if adds the expected state (compare-and-set) */
#define SQL_USER_UPDATE "UPDATE users SET wave_id = (SELECT id FROM waves WHERE name = $1)," \
	" state = $2, paused = $3, running = $4, attempts = $5, next_attempt = $6," \
	" sync_seq = $7, last_error = $8, started_at = $9, finished_at = $10," \
	" updated_at = $11, login_at = $12 WHERE id = $13"
#define SQL_USER_UPDATE_IF SQL_USER_UPDATE " AND state = $14 AND running = $15" \
	" AND sync_seq = $16 AND paused = $17"
#define SQL_USER_PASSWORD_GET "SELECT password_enc FROM users WHERE name = $1" \
	" AND password_enc IS NOT NULL"
#define SQL_USER_PASSWORD_EACH "SELECT name, password_enc FROM users" \
	" WHERE password_enc IS NOT NULL ORDER BY id"
#define SQL_USER_PASSWORD_SET "UPDATE users SET password_enc = $1 WHERE name = $2"

#define SQL_ROUTE_GET "SELECT name, target, changed_at FROM ferry_route WHERE name = $1"

#define SQL_CHECK_GET "SELECT c.state, c.result, c.after_pull, c.requested_at," \
	" c.finished_at, c.error, c.report_json, c.report_text" \
	" FROM checks c JOIN users u ON u.id = c.user_id" \
	" WHERE u.name = $1 AND c.kind = $2"
#define SQL_CHECK_ABORT_ALL "UPDATE checks SET state = 'error', error = $1," \
	" finished_at = $2 WHERE state IN ('queued', 'running')"

#define SQL_CUTOVER_GET "SELECT " SQL_CUTOVER_COLS " FROM cutovers c" \
	" JOIN waves w ON w.id = c.wave_id WHERE w.name = $1"
#define SQL_CUTOVER_EACH "SELECT " SQL_CUTOVER_COLS " FROM cutovers c" \
	" JOIN waves w ON w.id = c.wave_id ORDER BY w.id"

#endif
