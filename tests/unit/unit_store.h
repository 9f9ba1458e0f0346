/* Shared by the unit tests that run against a real SQLite store: one
   database file per test process (several test binaries run side by side),
   removed with SQLite's -wal/-shm files so the next test starts empty. */
#ifndef FERRY_UNIT_STORE_H
#define FERRY_UNIT_STORE_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static char unit_store_path[64];

static inline struct store *unit_store_open(const char *name)
{
	struct store *st;

	snprintf(unit_store_path, sizeof(unit_store_path), "/tmp/ferry-test-%s-%d.db",
		 name, (int)getpid());
	unlink(unit_store_path);
	st = store_sqlite_new();
	cr_assert_eq(st->open(st, unit_store_path), 0, "%s", st->error(st));
	return st;
}

static inline void unit_store_close(struct store *st)
{
	char p[80];

	st->close(st);
	store_free(st);
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
