/* Shared by the unit tests that run against a real store: SQLite, one
   database file per test process (several test binaries run side by side),
   removed with SQLite's -wal/-shm files so the next test starts empty; or,
   with FERRY_UNIT_PGSQL set to a libpq conninfo of a PostgreSQL superuser
   (tests/test_pgsql.py does it), PostgreSQL: one database per test process,
   created empty and dropped after. unit_store_path is what open() takes. */
#ifndef FERRY_UNIT_STORE_H
#define FERRY_UNIT_STORE_H

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static char unit_store_path[600];
static char unit_pg_db[64];

static inline int unit_store_is_pgsql(void)
{
	const char *e = getenv("FERRY_UNIT_PGSQL");

	return e != NULL && *e != '\0';
}

/* runs SQL on FERRY_UNIT_PGSQL's database (create/drop the test's own) */
static inline void unit_pg_admin(const char *sql)
{
	PGconn *c = PQconnectdb(getenv("FERRY_UNIT_PGSQL"));
	PGresult *r;

	cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
	r = PQexec(c, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(c));
	PQclear(r);
	PQfinish(c);
}

static inline struct store *unit_store_open(const char *name)
{
	struct store *st;
	char sql[160];

	if (unit_store_is_pgsql()) {
		snprintf(unit_pg_db, sizeof(unit_pg_db), "ferry_unit_%s_%d", name, (int)getpid());
		snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", unit_pg_db);
		unit_pg_admin(sql);
		snprintf(sql, sizeof(sql), "CREATE DATABASE %s", unit_pg_db);
		unit_pg_admin(sql);
		snprintf(unit_store_path, sizeof(unit_store_path), "%s dbname=%s",
			 getenv("FERRY_UNIT_PGSQL"), unit_pg_db);
		st = store_pgsql_new(NULL, 5, 10000, 1000);
		cr_assert_eq(st->open(st, unit_store_path), 0, "%s", st->error(st));
		return st;
	}
	snprintf(unit_store_path, sizeof(unit_store_path), "/tmp/ferry-test-%s-%d.db",
		 name, (int)getpid());
	unlink(unit_store_path);
	st = store_sqlite_new();
	cr_assert_eq(st->open(st, unit_store_path), 0, "%s", st->error(st));
	return st;
}

static inline void unit_store_close(struct store *st)
{
	char p[620];

	st->close(st);
	store_free(st);
	if (unit_store_is_pgsql()) {
		snprintf(p, sizeof(p), "DROP DATABASE IF EXISTS %s", unit_pg_db);
		unit_pg_admin(p);
		return;
	}
	unlink(unit_store_path);
	snprintf(p, sizeof(p), "%s-wal", unit_store_path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", unit_store_path);
	unlink(p);
}

/* A user whose OLD server is host:143 with master-user login. */
static inline void unit_store_add_user(struct store *st, const char *host, const char *tls,
				       const char *name, const char *old_login,
				       const char *new_login, const char *wave)
{
	struct endpoint_rec ep = { .port = 143 };
	struct user_rec u;

	snprintf(ep.host, sizeof(ep.host), "%s", host);
	snprintf(ep.tls, sizeof(ep.tls), "%s", tls);
	snprintf(ep.auth, sizeof(ep.auth), "master");
	cr_assert_eq(st->endpoint_ensure(st, &ep), 0, "%s", st->error(st));
	memset(&u, 0, sizeof(u));
	snprintf(u.name, sizeof(u.name), "%s", name);
	snprintf(u.old_login, sizeof(u.old_login), "%s", old_login);
	snprintf(u.new_login, sizeof(u.new_login), "%s", new_login);
	snprintf(u.wave, sizeof(u.wave), "%s", wave);
	u.endpoint_id = ep.id;
	cr_assert_eq(st->user_add(st, &u), 0, "%s", st->error(st));
}

#endif
