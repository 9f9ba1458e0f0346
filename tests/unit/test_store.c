#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "ferry-contract.h"
#include "store.h"
#include "unit_store.h"

static struct store *st;

static void setup(void)
{
	st = unit_store_open("store");
}

static void teardown(void)
{
	unit_store_close(st);
}

static void add_user(const char *name, const char *wave)
{
	unit_store_add_user(st, "old.example", "starttls", name, name, name, wave);
}

TestSuite(store, .init = setup, .fini = teardown);

Test(store, schema_is_current_and_reopen_is_idempotent)
{
	int v = st->schema_version(st);

	cr_assert_geq(v, 1); /* SQLite's numbering is its own (>= 2 there) */
	st->close(st);
	cr_assert_eq(st->open(st, unit_store_path), 0, "%s", st->error(st));
	cr_assert_eq(st->schema_version(st), v);
}

static int count_cb(const struct user_rec *u, void *ctx)
{
	(void)u;
	(*(int *)ctx)++;
	return 0;
}

Test(store, users_waves_and_rollback)
{
	struct wave_rec w = { .win_start = -1, .win_end = -1 };
	struct user_rec u;
	int n = 0;

	snprintf(w.name, sizeof(w.name), "w1");
	cr_assert_eq(st->wave_add(st, &w), 0);
	add_user("alice", "w1");
	add_user("bob", "");
	cr_assert_eq(st->user_get(st, "alice", &u), 0);
	cr_assert_str_eq(u.wave, "w1");
	cr_assert_eq(u.wave_id, w.id);
	cr_assert_str_eq(u.ep.host, "old.example");
	cr_assert_eq(u.state, US_PENDING);
	cr_assert_eq(st->user_get(st, "nobody", &u), STORE_NOTFOUND);
	st->user_each(st, "w1", count_cb, &n);
	cr_assert_eq(n, 1);

	/* a transaction rolled back leaves nothing */
	cr_assert_eq(st->begin(st), 0);
	add_user("carol", "w1");
	cr_assert_eq(st->rollback(st), 0);
	cr_assert_eq(st->user_get(st, "carol", &u), STORE_NOTFOUND);

	/* duplicates are refused */
	{
		struct user_rec dup;
		cr_assert_eq(st->user_get(st, "bob", &dup), 0);
		cr_assert_eq(st->user_add(st, &dup), -1);
	}
	cr_assert_eq(st->user_get(st, "bob", &u), 0);
	u.state = US_FAILED;
	u.attempts = 3;
	snprintf(u.last_error, sizeof(u.last_error), "login failed");
	snprintf(u.wave, sizeof(u.wave), "w1");
	cr_assert_eq(st->user_update(st, &u), 0);
	cr_assert_eq(st->user_get(st, "bob", &u), 0);
	cr_assert_eq(u.state, US_FAILED);
	cr_assert_eq(u.attempts, 3);
	cr_assert_str_eq(u.last_error, "login failed");
	cr_assert_str_eq(u.wave, "w1");
}

static int log_cb(const struct log_rec *l, void *ctx)
{
	strcat(ctx, l->event);
	strcat(ctx, ",");
	return 0;
}

Test(store, log_is_append_only_and_filtered)
{
	struct log_rec l = { .time = 100 };
	struct log_filter f = { 0 };
	char seen[256] = "";
	char *err = NULL;

	add_user("alice", "");
	snprintf(l.user, sizeof(l.user), "alice");
	snprintf(l.event, sizeof(l.event), "a");
	cr_assert_eq(st->log_add(st, &l), 0);
	l.time = 200;
	snprintf(l.event, sizeof(l.event), "b");
	cr_assert_eq(st->log_add(st, &l), 0);
	snprintf(l.user, sizeof(l.user), "bob");
	snprintf(l.event, sizeof(l.event), "c");
	cr_assert_eq(st->log_add(st, &l), 0);
	cr_assert_eq(st->log_each(st, &f, log_cb, seen), 0);
	cr_assert_str_eq(seen, "a,b,c,");
	seen[0] = '\0';
	f.user = "alice";
	f.since = 150;
	cr_assert_eq(st->log_each(st, &f, log_cb, seen), 0);
	cr_assert_str_eq(seen, "b,");
	seen[0] = '\0';
	f.user = NULL;
	f.since = 0;
	f.limit = 2;
	cr_assert_eq(st->log_each(st, &f, log_cb, seen), 0);
	cr_assert_str_eq(seen, "b,c,");
	(void)err;
}

Test(store, settings_and_folders)
{
	char buf[16];
	struct folder_rec f = { .old_messages = 10, .messages = 4, .bytes = -1 };

	cr_assert_eq(st->setting_get(st, "paused", buf, sizeof(buf)), STORE_NOTFOUND);
	cr_assert_eq(st->setting_set(st, "paused", "1"), 0);
	cr_assert_eq(st->setting_get(st, "paused", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "1");
	add_user("alice", "");
	snprintf(f.user, sizeof(f.user), "alice");
	snprintf(f.name, sizeof(f.name), "INBOX");
	snprintf(f.state, sizeof(f.state), "partial");
	cr_assert_eq(st->folder_put(st, &f), 0);
	f.messages = 10;
	snprintf(f.state, sizeof(f.state), "complete");
	cr_assert_eq(st->folder_put(st, &f), 0, "%s", st->error(st));
}

Test(store, check_put_and_get_round_trip)
{
	struct check_rec c, got;

	add_user("c1", "");
	memset(&c, 0, sizeof(c));
	snprintf(c.user, sizeof(c.user), "c1");
	snprintf(c.kind, sizeof(c.kind), "verify");
	snprintf(c.state, sizeof(c.state), "done");
	snprintf(c.result, sizeof(c.result), "fail");
	snprintf(c.error, sizeof(c.error), "2 differences");
	c.after_pull = 1;
	c.requested_at = 100;
	c.finished_at = 200;
	c.report_json = "{\"diffs\": 2}";
	c.report_text = "Bulk: 2 differences";
	cr_assert_eq(st->check_put(st, &c), 0, "%s", st->error(st));
	memset(&got, 0, sizeof(got));
	cr_assert_eq(st->check_get(st, "c1", "verify", &got, 1), 0, "%s", st->error(st));
	cr_assert_str_eq(got.state, "done");
	cr_assert_str_eq(got.result, "fail");
	cr_assert_str_eq(got.error, "2 differences");
	cr_assert_eq(got.after_pull, 1);
	cr_assert_eq(got.requested_at, 100);
	cr_assert_eq(got.finished_at, 200);
	cr_assert_str_eq(got.report_json, "{\"diffs\": 2}");
	cr_assert_str_eq(got.report_text, "Bulk: 2 differences");
	check_rec_free(&got);
}

static int sum_cb(const struct user_count *c, void *ctx)
{
	int64_t *n = ctx;

	n[0] += c->users;
	if (c->state == US_PRESYNC)
		n[1] += c->users;
	if (strcmp(c->wave, "w1") == 0)
		n[2] += c->users;
	return 0;
}

static int name_cb(const struct user_rec *u, void *ctx)
{
	char *names = ctx;

	strcat(names, u->name);
	strcat(names, " ");
	return 0;
}

/* status totals without reading every user; one page at a time */
Test(store, user_counts_and_pages)
{
	struct wave_rec w = { .win_start = -1, .win_end = -1 };
	struct user_rec u;
	int64_t n[3] = { 0 }, total;
	char names[256] = "";
	char name[16];

	snprintf(w.name, sizeof(w.name), "w1");
	cr_assert_eq(st->wave_add(st, &w), 0);
	for (int i = 1; i <= 5; i++) {
		snprintf(name, sizeof(name), "p%d", i);
		add_user(name, i <= 3 ? "w1" : "");
	}
	cr_assert_eq(st->user_get(st, "p2", &u), 0);
	u.state = US_PRESYNC;
	cr_assert_eq(st->user_update(st, &u), 0);
	cr_assert_eq(st->user_counts(st, NULL, sum_cb, n), 0);
	cr_assert_eq(n[0], 5);
	cr_assert_eq(n[1], 1);
	cr_assert_eq(n[2], 3);
	cr_assert_eq(st->user_page(st, &(struct user_filter){ NULL, NULL, NULL }, 1, 2, &total,
				   name_cb, names), 0);
	cr_assert_eq(total, 5);
	cr_assert_str_eq(names, "p2 p3 ");
	names[0] = '\0';
	cr_assert_eq(st->user_page(st, &(struct user_filter){ "w1", "pending", NULL }, 0, 10,
				   &total, name_cb, names), 0);
	cr_assert_eq(total, 2);
	cr_assert_str_eq(names, "p1 p3 ");
}

/* the views of service/routing_views.sql carry the contract's names, and a
   reopen with the same file leaves them alone (hash recorded) */
Test(store, routing_views_have_the_contract_names)
{
	static const char *const views[] = { FERRY_VIEW_PASSDB, FERRY_VIEW_USERDB,
					      FERRY_VIEW_TRANSPORT, FERRY_VIEW_PROXY };
	char hash[17], have[32];
	sqlite3 *db;

	if (unit_store_is_pgsql()) /* tests/test_pgsql.py reads them there */
		cr_skip_test("SQLite's catalogue");
	cr_assert_eq(sqlite3_open_v2(unit_store_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++) {
		sqlite3_stmt *stmt;
		cr_assert_eq(sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'view'"
						" AND name = ?", -1, &stmt, NULL), SQLITE_OK);
		sqlite3_bind_text(stmt, 1, views[i], -1, SQLITE_STATIC);
		cr_assert_eq(sqlite3_step(stmt), SQLITE_ROW, "no view %s", views[i]);
		sqlite3_finalize(stmt);
	}
	sqlite3_close(db);
	store_routing_views_hash(hash);
	cr_assert_eq(st->setting_get(st, STORE_VIEWS_HASH_KEY, have, sizeof(have)), 0);
	cr_assert_str_eq(have, hash);
}

/* the user's NEW backend (users.new_host) is read back with the user and
   is where the proxy's view sends it once cut over; before, OLD */
static void proxy_row(const char *login, char *host, size_t hl, char *destuser, size_t dl)
{
	sqlite3 *db;
	sqlite3_stmt *stmt;

	*host = *destuser = '\0';
	cr_assert_eq(sqlite3_open_v2(unit_store_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(db, "SELECT host, destuser FROM " FERRY_VIEW_PROXY
					" WHERE login = ?", -1, &stmt, NULL), SQLITE_OK);
	sqlite3_bind_text(stmt, 1, login, -1, SQLITE_STATIC);
	if (sqlite3_step(stmt) == SQLITE_ROW) {
		snprintf(host, hl, "%s", (const char *)sqlite3_column_text(stmt, 0));
		snprintf(destuser, dl, "%s", (const char *)sqlite3_column_text(stmt, 1));
	}
	sqlite3_finalize(stmt);
	sqlite3_close(db);
}

Test(store, new_host_round_trip_and_proxy_view)
{
	struct endpoint_rec ep = { .port = 143 };
	struct user_rec u;
	char host[64], destuser[64];

	snprintf(ep.host, sizeof(ep.host), "old.example");
	snprintf(ep.tls, sizeof(ep.tls), "none");
	snprintf(ep.auth, sizeof(ep.auth), "master");
	cr_assert_eq(st->endpoint_ensure(st, &ep), 0, "%s", st->error(st));
	memset(&u, 0, sizeof(u));
	snprintf(u.name, sizeof(u.name), "alice");
	snprintf(u.old_login, sizeof(u.old_login), "alice@old");
	snprintf(u.new_login, sizeof(u.new_login), "alice");
	snprintf(u.new_host, sizeof(u.new_host), "10.0.0.2");
	u.endpoint_id = ep.id;
	cr_assert_eq(st->user_add(st, &u), 0, "%s", st->error(st));
	add_user("bob", "");  /* no backend: the one NEW */
	cr_assert_eq(st->user_get(st, "alice", &u), 0);
	cr_assert_str_eq(u.new_host, "10.0.0.2");
	cr_assert_eq(st->user_get(st, "bob", &u), 0);
	cr_assert_str_eq(u.new_host, "");
	if (unit_store_is_pgsql()) /* tests/test_pgsql.py reads the views there */
		return;
	proxy_row("alice", host, sizeof(host), destuser, sizeof(destuser));
	cr_assert_str_eq(host, "old.example");
	cr_assert_str_eq(destuser, "alice@old");
	cr_assert_eq(st->route_set(st, "alice", "new", 0), 0, "%s", st->error(st));
	cr_assert_eq(st->route_set(st, "bob", "new", 0), 0, "%s", st->error(st));
	proxy_row("alice", host, sizeof(host), destuser, sizeof(destuser));
	cr_assert_str_eq(host, "10.0.0.2");
	cr_assert_str_eq(destuser, "alice");
	proxy_row("bob", host, sizeof(host), destuser, sizeof(destuser));
	cr_assert_str_eq(host, "", "a cut-over user without a backend has no proxy row");
}

/* PostgreSQL refuses text that is not UTF-8: a stray byte in an old
   server's error message must not fail the transition that records it
   (SQLite keeps the bytes, PostgreSQL gets '?' for each bad one) */
Test(store, text_that_is_not_utf8_is_stored)
{
	static const char bad[] = "NO [\xff] caf\xc3\xa9 \xed\xa0\x80 end";
	struct user_rec u;

	add_user("mallory", "");
	cr_assert_eq(st->user_get(st, "mallory", &u), 0);
	snprintf(u.last_error, sizeof(u.last_error), "%s", bad);
	cr_assert_eq(st->user_update(st, &u), 0, "%s", st->error(st));
	cr_assert_eq(st->user_get(st, "mallory", &u), 0);
	cr_assert_str_eq(u.last_error, unit_store_is_pgsql() ? "NO [?] caf\xc3\xa9 ??? end" : bad);
}
