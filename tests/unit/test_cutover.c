/* Cut-over: prechecks (pure), the store's routing rows, and the views
   Dovecot and Postfix read, queried exactly as conf/ queries them. */
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cutover.h"
#include "store.h"
#include "unit_store.h"

static struct store *st;

static void setup(void)
{
	st = unit_store_open("cutover");
}

static void teardown(void)
{
	unit_store_close(st);
}

static void add_user(const char *name, const char *login, const char *wave, const char *tls)
{
	char old_login[64];

	snprintf(old_login, sizeof(old_login), "old-%s", name);
	unit_store_add_user(st, "old.example", tls, name, old_login, login, wave);
}

static void add_wave(const char *name)
{
	struct wave_rec w = { .win_start = -1, .win_end = -1 };

	snprintf(w.name, sizeof(w.name), "%s", name);
	cr_assert_eq(st->wave_add(st, &w), 0, "%s", st->error(st));
}

/* one row of a query on a second connection (as Dovecot/Postfix do) */
static int query1(const char *sql, char out[][128], int ncols)
{
	sqlite3 *db;
	sqlite3_stmt *stmt;
	int rc;

	cr_assert_eq(sqlite3_open_v2(unit_store_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK, "%s: %s", sql,
		     sqlite3_errmsg(db));
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		for (int i = 0; i < ncols; i++) {
			const unsigned char *t = sqlite3_column_text(stmt, i);
			snprintf(out[i], 128, "%s", t != NULL ? (const char *)t : "NULL");
		}
	sqlite3_finalize(stmt);
	sqlite3_close(db);
	return rc == SQLITE_ROW;
}

TestSuite(cutover, .init = setup, .fini = teardown);

/* conf/dovecot-sql.conf.ext's password_query after %-expansion */
#define PASSDB(service, user) \
	"SELECT NULL AS password, 'y' AS nopassword, 'y' AS proxy, host," \
	" CASE WHEN '" service "' = 'pop3' THEN pop3_port ELSE imap_port END AS port," \
	" destuser, ssl, starttls FROM ferry_passdb WHERE login = '" user "'"

Test(cutover, passdb_userdb_transport_follow_the_route)
{
	char r[8][128];
	int changed = -1;

	add_wave("pilot");
	add_user("alice", "alice@example.com", "pilot", "starttls");
	add_user("bob", "bob", "", "imaps");
	/* not cut over: proxied, the old login, POP3 to the old POP3 port */
	cr_assert(query1(PASSDB("imap", "alice@example.com"), r, 8));
	cr_assert_str_eq(r[1], "y");
	cr_assert_str_eq(r[2], "y");
	cr_assert_str_eq(r[3], "old.example");
	cr_assert_str_eq(r[4], "143");
	cr_assert_str_eq(r[5], "old-alice");
	cr_assert_str_eq(r[6], "NULL");
	cr_assert_str_eq(r[7], "yes");
	cr_assert(query1(PASSDB("pop3", "alice@example.com"), r, 8));
	cr_assert_str_eq(r[4], "110");
	cr_assert(query1(PASSDB("pop3", "bob"), r, 8));
	cr_assert_str_eq(r[4], "995");
	cr_assert_str_eq(r[6], "yes");
	cr_assert(query1("SELECT ferry_phase FROM ferry_userdb WHERE login = 'alice@example.com'",
			 r, 1));
	cr_assert_str_eq(r[0], "presync");
	cr_assert(query1("SELECT nexthop FROM ferry_transport WHERE address = 'alice@example.com'"
			 " OR address = 'alice'", r, 1));
	cr_assert_str_eq(r[0], "smtp:[old.example]:25");
	/* per endpoint: POP3 port and Postfix nexthop */
	cr_assert_eq(st->endpoint_route_set(st, "old.example", 143, 1110,
					    "lmtp:inet:127.0.0.1:2424"), 0);
	cr_assert_eq(st->endpoint_route_set(st, "nowhere", 143, 0, ""), STORE_NOTFOUND);
	cr_assert(query1(PASSDB("pop3", "alice@example.com"), r, 8));
	cr_assert_str_eq(r[4], "1110");
	cr_assert_eq(st->setting_set(st, "route_new_transport", "lmtp:inet:127.0.0.1:24"), 0);
	/* the wave flips in one statement: alice only */
	cr_assert_eq(st->begin(st), 0);
	cr_assert_eq(st->route_set_wave(st, "pilot", "new", 1000, &changed), 0);
	cr_assert_eq(st->commit(st), 0);
	cr_assert_eq(changed, 1);
	cr_assert_not(query1(PASSDB("imap", "alice@example.com"), r, 8), "cut over: no proxy row");
	cr_assert(query1(PASSDB("imap", "bob"), r, 8));
	cr_assert(query1("SELECT ferry_phase FROM ferry_userdb WHERE login = 'alice@example.com'",
			 r, 1));
	cr_assert_str_eq(r[0], "cutover");
	cr_assert(query1("SELECT nexthop FROM ferry_transport WHERE address = 'alice@example.com'",
			 r, 1));
	cr_assert_str_eq(r[0], "lmtp:inet:127.0.0.1:24");
	cr_assert(query1("SELECT nexthop FROM ferry_transport WHERE address = 'bob'", r, 1));
	cr_assert_str_eq(r[0], "lmtp:inet:127.0.0.1:2424");
	/* and back */
	cr_assert_eq(st->route_set(st, "alice", "old", 2000), 0);
	cr_assert_eq(st->route_set(st, "nobody", "old", 2000), STORE_NOTFOUND);
	cr_assert(query1(PASSDB("imap", "alice@example.com"), r, 8));
	{
		struct route_rec rr;
		cr_assert_eq(st->route_get(st, "alice", &rr), 0);
		cr_assert_str_eq(rr.target, "old");
		cr_assert_eq(rr.changed_at, 2000);
		cr_assert_eq(st->route_get(st, "bob", &rr), 0);
		cr_assert_str_eq(rr.target, "old");
		cr_assert_eq(rr.changed_at, 0);
	}
	/* an unknown user has no row anywhere: Dovecot and Postfix fall through */
	cr_assert_not(query1(PASSDB("imap", "carol"), r, 8));
	cr_assert_not(query1("SELECT nexthop FROM ferry_transport WHERE address = 'carol'", r, 1));
	/* the routes table refuses anything but old/new */
	cr_assert_neq(st->route_set(st, "bob", "elsewhere", 1), 0);
}

Test(cutover, records_and_last_event)
{
	struct cutover_rec c, got;
	struct log_rec l = { 0 };
	int64_t t = 0;

	add_wave("teamA");
	add_user("u1", "u1", "teamA", "none");
	memset(&c, 0, sizeof(c));
	snprintf(c.wave, sizeof(c.wave), "teamA");
	snprintf(c.kind, sizeof(c.kind), "cutover");
	snprintf(c.state, sizeof(c.state), "scheduled");
	c.at = 12345;
	c.max_age = 3600;
	cr_assert_eq(st->cutover_get(st, "teamA", &got), STORE_NOTFOUND);
	cr_assert_eq(st->cutover_put(st, &c), 0, "%s", st->error(st));
	snprintf(c.state, sizeof(c.state), "done");
	c.users = 1;
	cr_assert_eq(st->cutover_put(st, &c), 0);
	cr_assert_eq(st->cutover_get(st, "teamA", &got), 0);
	cr_assert_str_eq(got.state, "done");
	cr_assert_eq(got.at, 12345);
	cr_assert_eq(got.users, 1);
	snprintf(c.wave, sizeof(c.wave), "nope");
	cr_assert_eq(st->cutover_put(st, &c), STORE_NOTFOUND);
	cr_assert_eq(st->log_last(st, "u1", "user-done", &t), STORE_NOTFOUND);
	snprintf(l.user, sizeof(l.user), "u1");
	snprintf(l.event, sizeof(l.event), "user-done");
	l.time = 100;
	cr_assert_eq(st->log_add(st, &l), 0);
	l.time = 300;
	cr_assert_eq(st->log_add(st, &l), 0);
	snprintf(l.event, sizeof(l.event), "pull-failed");
	l.time = 900;
	cr_assert_eq(st->log_add(st, &l), 0);
	cr_assert_eq(st->log_last(st, "u1", "user-done", &t), 0);
	cr_assert_eq(t, 300);
}

Test(cutover, prechecks)
{
	struct user_rec u;
	char buf[512];
	const char *why;

	memset(&u, 0, sizeof(u));
	snprintf(u.name, sizeof(u.name), "alice");
	snprintf(u.wave, sizeof(u.wave), "pilot");
	u.state = US_PENDING;
	why = cutover_precheck_user(&u, -1, 86400, 100000, buf, sizeof(buf));
	cr_assert(why != NULL && strstr(why, "not started") != NULL, "%s", why);
	u.state = US_FAILED;
	snprintf(u.last_error, sizeof(u.last_error), "login refused");
	why = cutover_precheck_user(&u, 99000, 86400, 100000, buf, sizeof(buf));
	cr_assert(why != NULL && strstr(why, "login refused") != NULL);
	u.state = US_PRESYNC;
	why = cutover_precheck_user(&u, -1, 86400, 100000, buf, sizeof(buf));
	cr_assert(why != NULL && strstr(why, "no successful copy pass") != NULL);
	u.state = US_DONE;
	cr_assert_null(cutover_precheck_user(&u, 99000, 86400, 100000, buf, sizeof(buf)));
	why = cutover_precheck_user(&u, 1000000 - 3 * 86400, 86400, 1000000, buf, sizeof(buf));
	cr_assert(why != NULL && strstr(why, "3d ago (limit 24h") != NULL, "%s", why);
	/* max_age 0: no age limit */
	cr_assert_null(cutover_precheck_user(&u, 1, 0, 100000, buf, sizeof(buf)));
	/* a running pass does not block: the final presync pass follows anyway */
	u.running = 1;
	cr_assert_null(cutover_precheck_user(&u, 99000, 86400, 100000, buf, sizeof(buf)));
}

Test(cutover, ages)
{
	char b[16];

	cutover_format_age(45, b, sizeof(b));
	cr_assert_str_eq(b, "45s");
	cutover_format_age(600, b, sizeof(b));
	cr_assert_str_eq(b, "10m");
	cutover_format_age(86400, b, sizeof(b));
	cr_assert_str_eq(b, "24h");
	cutover_format_age(3 * 86400, b, sizeof(b));
	cr_assert_str_eq(b, "3d");
}
