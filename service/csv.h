/* The users CSV of `ferryctl import` (format: docs/ferryd.md). */
#ifndef FERRY_CSV_H
#define FERRY_CSV_H

#include <stddef.h>
#include <stdio.h>

struct csv_user {
	int line;           /* where the record starts, 1-based */
	char *user;
	char *old_login;    /* default: user */
	char *new_login;    /* default: user */
	char *host;
	int port;           /* default 143, 993 with tls=imaps */
	char *tls;          /* none | imaps | starttls (default starttls) */
	char *auth;         /* master | password (default: password if given) */
	char *wave;         /* "" = none */
	char *password;     /* NULL = none */
	char *new_host;     /* the NEW backend that owns the mailbox ("" = the one NEW) */
};

struct csv_users {
	struct csv_user *rows;
	size_t count;
};

/* 0, or -1 with *err_r = "line N: ..." (malloc'd) and nothing in *out. */
int csv_parse_users(const char *text, size_t len, struct csv_users *out, char **err_r);
void csv_users_free(struct csv_users *u);

/* Writes one RFC 4180 field ("..." with "" when it needs quoting) and
   the separator after it (',' or, for the last one, CRLF). A field that
   a spreadsheet would run as a formula (leading = + @ or a tab) gets a
   leading ' so the report opens as text. */
void csv_write_field(FILE *fp, const char *s, int last);

/* Validators shared with the API */
int csv_valid_name(const char *s);   /* user/login: printable, no spaces */
int csv_valid_wave(const char *s);   /* [A-Za-z0-9._-]{1,127} */

#endif
