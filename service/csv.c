/* CSV of users: RFC 4180 quoting, ',' or ';' (taken from the header line),
   a header naming the columns, '#' comment lines and blank lines ignored.
   A bad record fails the whole parse with its line number. */
#include "csv.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELDS 16

enum col { C_USER, C_OLD, C_NEW, C_ENDPOINT, C_TLS, C_AUTH, C_WAVE, C_PASSWORD,
	   C_NEW_HOST, C_COUNT };
static const char *const col_names[C_COUNT] = {
	"user", "old_login", "new_login", "endpoint", "tls", "auth", "wave", "password",
	"new_host",
};

struct reader {
	const char *p, *end;
	int line;
	char delim;
};

static int fail(char **err_r, int line, const char *fmt, ...)
{
	va_list ap;
	char *msg = NULL;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (asprintf(err_r, "line %d: %s", line, msg != NULL ? msg : "error") < 0)
		*err_r = NULL;
	free(msg);
	return -1;
}

/* Reads one record into fields (malloc'd); returns the field count, 0 at
   the end, -1 on a quoting error. *line_r = the record's first line. */
static int read_record(struct reader *r, char **fields, int *line_r, char **err_r)
{
	int n = 0;

	*line_r = r->line;
	if (r->p >= r->end)
		return 0;
	for (;;) {
		size_t cap = 64, len = 0;
		char *buf = malloc(cap);
		int quoted = 0;

		if (r->p < r->end && *r->p == '"') {
			quoted = 1;
			r->p++;
		}
		for (;;) {
			char c;
			if (r->p >= r->end) {
				if (quoted) {
					free(buf);
					for (int i = 0; i < n; i++)
						free(fields[i]);
					return fail(err_r, *line_r, "unterminated quoted field");
				}
				break;
			}
			c = *r->p;
			if (quoted) {
				if (c == '"') {
					if (r->p + 1 < r->end && r->p[1] == '"') {
						r->p++;
					} else {
						quoted = 0;
						r->p++;
						if (r->p < r->end && *r->p != r->delim &&
						    *r->p != '\n' && *r->p != '\r') {
							free(buf);
							for (int i = 0; i < n; i++)
								free(fields[i]);
							return fail(err_r, r->line,
								    "text after a closing quote");
						}
						continue;
					}
				} else if (c == '\n')
					r->line++;
			} else if (c == r->delim || c == '\n' || c == '\r')
				break;
			if (len + 2 > cap)
				buf = realloc(buf, cap *= 2);
			buf[len++] = c;
			r->p++;
		}
		buf[len] = '\0';
		if (n == MAX_FIELDS) {
			free(buf);
			for (int i = 0; i < n; i++)
				free(fields[i]);
			return fail(err_r, *line_r, "more than %d fields", MAX_FIELDS);
		}
		fields[n++] = buf;
		if (r->p < r->end && *r->p == r->delim) {
			r->p++;
			continue;
		}
		if (r->p < r->end && *r->p == '\r')
			r->p++;
		if (r->p < r->end && *r->p == '\n')
			r->p++;
		r->line++;
		return n;
	}
}

static char *trim_dup(const char *s)
{
	const char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	return strndup(s, (size_t)(e - s));
}

int csv_valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 255)
		return 0;
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c == 0x7f || c == '"' || c == '\\')
			return 0;
	}
	return 1;
}

int csv_valid_wave(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 127)
		return 0;
	for (; *s != '\0'; s++) {
		if (!isalnum((unsigned char)*s) && strchr("._-", *s) == NULL)
			return 0;
	}
	return 1;
}

static int valid_host(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 253)
		return 0;
	for (; *s != '\0'; s++) {
		if (!isalnum((unsigned char)*s) && strchr(".-_", *s) == NULL)
			return 0;
	}
	return 1;
}

/* host[:port] */
static int parse_endpoint(const char *v, struct csv_user *u)
{
	const char *colon = strrchr(v, ':');
	char *end;
	long port;

	if (colon == NULL) {
		u->host = strdup(v);
		u->port = 0;
	} else {
		port = strtol(colon + 1, &end, 10);
		if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535)
			return -1;
		u->host = strndup(v, (size_t)(colon - v));
		u->port = (int)port;
	}
	return valid_host(u->host) ? 0 : -1;
}

static void user_free(struct csv_user *u)
{
	free(u->user);
	free(u->old_login);
	free(u->new_login);
	free(u->host);
	free(u->tls);
	free(u->auth);
	free(u->wave);
	free(u->new_host);
	if (u->password != NULL) {
		explicit_bzero(u->password, strlen(u->password));
		free(u->password);
	}
}

void csv_users_free(struct csv_users *users)
{
	for (size_t i = 0; i < users->count; i++)
		user_free(&users->rows[i]);
	free(users->rows);
	users->rows = NULL;
	users->count = 0;
}

static int make_user(char **f, const int *map, int line, struct csv_user *u, char **err_r)
{
	const char *v[C_COUNT];

	for (int c = 0; c < C_COUNT; c++)
		v[c] = map[c] >= 0 ? f[map[c]] : "";
	memset(u, 0, sizeof(*u));
	u->line = line;
	if (!csv_valid_name(v[C_USER]))
		return fail(err_r, line, "user: \"%.64s\" is not a valid user name", v[C_USER]);
	u->user = strdup(v[C_USER]);
	u->old_login = strdup(*v[C_OLD] != '\0' ? v[C_OLD] : v[C_USER]);
	u->new_login = strdup(*v[C_NEW] != '\0' ? v[C_NEW] : v[C_USER]);
	if (!csv_valid_name(u->old_login))
		return fail(err_r, line, "old_login: \"%.64s\" is not a valid login", v[C_OLD]);
	if (!csv_valid_name(u->new_login))
		return fail(err_r, line, "new_login: \"%.64s\" is not a valid login", v[C_NEW]);
	if (*v[C_ENDPOINT] == '\0')
		return fail(err_r, line, "endpoint: missing (HOST or HOST:PORT of the old server)");
	if (parse_endpoint(v[C_ENDPOINT], u) < 0)
		return fail(err_r, line, "endpoint: \"%.64s\" is not HOST or HOST:PORT",
			    v[C_ENDPOINT]);
	u->tls = strdup(*v[C_TLS] != '\0' ? v[C_TLS] : "starttls");
	if (strcmp(u->tls, "none") != 0 && strcmp(u->tls, "imaps") != 0 &&
	    strcmp(u->tls, "starttls") != 0)
		return fail(err_r, line, "tls: \"%.32s\" is not none, imaps or starttls", u->tls);
	if (u->port == 0)
		u->port = strcmp(u->tls, "imaps") == 0 ? 993 : 143;
	if (*v[C_PASSWORD] != '\0')
		u->password = strdup(v[C_PASSWORD]);
	u->auth = strdup(*v[C_AUTH] != '\0' ? v[C_AUTH] :
			 u->password != NULL ? "password" : "master");
	if (strcmp(u->auth, "master") != 0 && strcmp(u->auth, "password") != 0)
		return fail(err_r, line, "auth: \"%.32s\" is not master or password", u->auth);
	if (strcmp(u->auth, "password") == 0 && u->password == NULL)
		return fail(err_r, line, "auth=password needs a password");
	u->wave = strdup(v[C_WAVE]);
	if (*u->wave != '\0' && !csv_valid_wave(u->wave))
		return fail(err_r, line, "wave: \"%.64s\" is not a valid wave name "
			    "(letters, digits, . _ -)", u->wave);
	u->new_host = strdup(v[C_NEW_HOST]);
	if (*u->new_host != '\0' && !valid_host(u->new_host))
		return fail(err_r, line, "new_host: \"%.64s\" is not a host name or address "
			    "(the NEW backend that owns the mailbox)", u->new_host);
	return 0;
}

int csv_parse_users(const char *text, size_t len, struct csv_users *out, char **err_r)
{
	struct reader r = { text, text + len, 1, ',' };
	char *f[MAX_FIELDS];
	int map[C_COUNT], nhdr = 0, line, n, ret = 0;
	size_t cap = 0;
	const char *eol;

	memset(out, 0, sizeof(*out));
	if (memchr(text, '\0', len) != NULL)
		return fail(err_r, 1 + (int)0, "the file contains a NUL byte");
	for (int c = 0; c < C_COUNT; c++)
		map[c] = -1;
	/* header: the first line that is neither blank nor a comment */
	for (;;) {
		while (r.p < r.end && (*r.p == '\n' || *r.p == '\r' || *r.p == '#')) {
			if (*r.p == '#')
				while (r.p < r.end && *r.p != '\n')
					r.p++;
			if (r.p < r.end && *r.p == '\n')
				r.line++;
			r.p++;
		}
		break;
	}
	if (r.p >= r.end)
		return fail(err_r, r.line, "no header line (user,endpoint,...)");
	eol = memchr(r.p, '\n', (size_t)(r.end - r.p));
	if (eol == NULL)
		eol = r.end;
	if (memchr(r.p, ';', (size_t)(eol - r.p)) != NULL &&
	    memchr(r.p, ',', (size_t)(eol - r.p)) == NULL)
		r.delim = ';';
	if ((n = read_record(&r, f, &line, err_r)) < 0)
		return -1;
	for (int i = 0; i < n && ret == 0; i++) {
		char *name = trim_dup(f[i]);
		int c;
		for (c = 0; c < C_COUNT; c++)
			if (strcasecmp(name, col_names[c]) == 0)
				break;
		if (c == C_COUNT)
			ret = fail(err_r, line, "unknown column \"%.32s\" (known: user, "
				   "old_login, new_login, endpoint, tls, auth, wave, password, new_host)", name);
		else if (map[c] >= 0)
			ret = fail(err_r, line, "column \"%s\" given twice", name);
		else
			map[c] = i;
		free(name);
	}
	for (int i = 0; i < n; i++)
		free(f[i]);
	if (ret < 0)
		return -1;
	nhdr = n;
	if (map[C_USER] < 0 || map[C_ENDPOINT] < 0)
		return fail(err_r, line, "the header needs the columns user and endpoint");

	while (ret == 0) {
		/* skip blank and comment lines */
		if (r.p < r.end && (*r.p == '\n' || *r.p == '\r' || *r.p == '#')) {
			if (*r.p == '#')
				while (r.p < r.end && *r.p != '\n')
					r.p++;
			if (r.p < r.end && *r.p == '\n')
				r.line++;
			r.p++;
			continue;
		}
		if ((n = read_record(&r, f, &line, err_r)) <= 0) {
			ret = n;
			break;
		}
		for (int i = 0; i < n; i++) {
			char *t = trim_dup(f[i]);
			free(f[i]);
			f[i] = t;
		}
		if (n != nhdr)
			ret = fail(err_r, line, "%d fields, the header has %d", n, nhdr);
		else {
			if (out->count == cap)
				out->rows = realloc(out->rows, (cap = cap ? cap * 2 : 64) *
						    sizeof(*out->rows));
			ret = make_user(f, map, line, &out->rows[out->count], err_r);
			out->count++;  /* freed by csv_users_free on error too */
		}
		for (int i = 0; i < n; i++)
			free(f[i]);
		for (size_t i = 0; ret == 0 && i + 1 < out->count; i++) {
			if (strcmp(out->rows[i].user, out->rows[out->count - 1].user) == 0)
				ret = fail(err_r, line, "user \"%s\" already on line %d",
					   out->rows[i].user, out->rows[i].line);
		}
	}
	if (ret == 0 && out->count == 0)
		ret = fail(err_r, r.line, "no users after the header");
	if (ret < 0)
		csv_users_free(out);
	return ret;
}

void csv_write_field(FILE *fp, const char *s, int last)
{
	int quote;

	if (s == NULL)
		s = "";
	quote = strpbrk(s, ",;\"\r\n") != NULL;
	if (quote)
		fputc('"', fp);
	if (*s == '=' || *s == '+' || *s == '@' || *s == '\t')
		fputc('\'', fp);
	for (; *s != '\0'; s++) {
		if (*s == '"')
			fputc('"', fp);
		fputc(*s, fp);
	}
	if (quote)
		fputc('"', fp);
	fputs(last ? "\r\n" : ",", fp);
}
