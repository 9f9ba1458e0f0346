/* ferryd.conf: "key = value" per line, '#' starts a comment. Every key is
   documented in docs/ferryd.md. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int config_fail(char **err_r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(err_r, fmt, ap) < 0)
		*err_r = NULL;
	va_end(ap);
	return -1;
}

void config_defaults(struct ferry_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->listen_host = strdup("127.0.0.1");
	cfg->listen_port = 8025;
	cfg->doveadm_host = strdup("127.0.0.1");
	cfg->doveadm_port = 8080;
	cfg->max_concurrent = 4;
	cfg->max_per_host = 2;
	cfg->retry_limit = 5;
	cfg->retry_base = 30;
	cfg->retry_max_delay = 3600;
	cfg->pull_timeout = 3600;
	cfg->drain_timeout = 30;
	cfg->max_body = 1048576;
	cfg->tick_ms = 1000;
	cfg->new_imap_host = strdup("127.0.0.1");
	cfg->new_imap_port = 143;
	cfg->verify_sample = 1.0;
	cfg->verify_after_pull = 1;
	cfg->check_timeout = 600;
	cfg->new_sieve_host = strdup("127.0.0.1");
	cfg->new_sieve_port = 4190;
	cfg->old_sieve_port = 4190;
	cfg->dns_max_ttl = 3600;
	cfg->dns_timeout_ms = 3000;
	cfg->dns_interval = 300;
	cfg->store = strdup("sqlite");
	cfg->pgsql_connect_timeout = 5;
	cfg->pgsql_statement_timeout_ms = 10000;
	cfg->pgsql_lock_timeout_ms = 5;
	cfg->pgsql_lease = 30;
}

void config_free(struct ferry_config *cfg)
{
	free(cfg->listen_host);
	free(cfg->api_token_file);
	free(cfg->viewer_token_file);
	free(cfg->state_db);
	free(cfg->store);
	free(cfg->pgsql_conninfo);
	free(cfg->pgsql_password_file);
	free(cfg->node_name);
	free(cfg->doveadm_host);
	free(cfg->doveadm_api_key_file);
	free(cfg->log_file);
	free(cfg->secret_key_file);
	free(cfg->new_imap_host);
	free(cfg->new_tls);
	free(cfg->imap_ca_file);
	free(cfg->old_master_user);
	free(cfg->old_master_password_file);
	free(cfg->new_master_user);
	free(cfg->new_master_password_file);
	free(cfg->user);
	free(cfg->new_sieve_host);
	free(cfg->dns_resolver);
	free(cfg->resolv_conf);
	free(cfg->dns_domains);
	free(cfg->dns_hosts);
	free(cfg->dns_old_ips);
	free(cfg->dns_new_ips);
	free(cfg->dnsbl_zones);
	free(cfg->dkim_selectors);
	memset(cfg, 0, sizeof(*cfg));
}

static int parse_int(const char *v, int min, int max, int *out)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || n < min || n > max)
		return -1;
	*out = (int)n;
	return 0;
}

/* yes/no, true/false, 1/0 (any case): every boolean setting */
static int parse_bool(const char *v, int *out)
{
	static const char *const t[] = { "yes", "true", "1" }, *const f[] = { "no", "false", "0" };

	for (size_t i = 0; i < 3; i++) {
		if (strcasecmp(v, t[i]) == 0 || strcasecmp(v, f[i]) == 0) {
			*out = strcasecmp(v, t[i]) == 0;
			return 0;
		}
	}
	return -1;
}

static int *bool_key(struct ferry_config *cfg, const char *key)
{
	if (strcmp(key, "allow_root") == 0)
		return &cfg->allow_root;
	if (strcmp(key, "verify_after_pull") == 0)
		return &cfg->verify_after_pull;
	if (strcmp(key, "sieve_after_pull") == 0)
		return &cfg->sieve_after_pull;
	return NULL;
}

/* "host:port" */
static int parse_addr(const char *v, char **host, int *port)
{
	const char *colon = strrchr(v, ':');

	if (colon == NULL || colon == v ||
	    parse_int(colon + 1, 1, 65535, port) < 0)
		return -1;
	free(*host);
	*host = strndup(v, (size_t)(colon - v));
	return 0;
}

struct int_key {
	const char *name;
	size_t offset;
	int min, max;
};

#define IK(name, min, max) { #name, offsetof(struct ferry_config, name), min, max }
static const struct int_key int_keys[] = {
	IK(max_concurrent, 1, 1000),
	IK(max_per_host, 1, 1000),
	IK(retry_limit, 1, 1000),
	IK(retry_base, 0, 86400),
	IK(retry_max_delay, 0, 604800),
	IK(pull_timeout, 1, 604800),
	IK(drain_timeout, 0, 3600),
	IK(max_body, 1024, 1 << 30),
	IK(tick_ms, 10, 60000),
	IK(check_timeout, 1, 86400),
	IK(old_sieve_port, 1, 65535),
	IK(dns_max_ttl, 0, 604800),
	IK(dns_timeout_ms, 100, 60000),
	IK(dns_interval, 0, 86400),
	IK(pgsql_connect_timeout, 1, 600),
	IK(pgsql_statement_timeout_ms, 100, 3600000),
	IK(pgsql_lock_timeout_ms, 1, 3600000),
	IK(pgsql_lease, 3, 3600),
};

static char **str_key(struct ferry_config *cfg, const char *key)
{
	if (strcmp(key, "api_token_file") == 0)
		return &cfg->api_token_file;
	if (strcmp(key, "viewer_token_file") == 0)
		return &cfg->viewer_token_file;
	if (strcmp(key, "state_db") == 0)
		return &cfg->state_db;
	if (strcmp(key, "doveadm_api_key_file") == 0)
		return &cfg->doveadm_api_key_file;
	if (strcmp(key, "pgsql_conninfo") == 0)
		return &cfg->pgsql_conninfo;
	if (strcmp(key, "pgsql_password_file") == 0)
		return &cfg->pgsql_password_file;
	if (strcmp(key, "node_name") == 0)
		return &cfg->node_name;
	if (strcmp(key, "log_file") == 0)
		return &cfg->log_file;
	if (strcmp(key, "secret_key_file") == 0)
		return &cfg->secret_key_file;
	if (strcmp(key, "imap_ca_file") == 0)
		return &cfg->imap_ca_file;
	if (strcmp(key, "old_master_user") == 0)
		return &cfg->old_master_user;
	if (strcmp(key, "old_master_password_file") == 0)
		return &cfg->old_master_password_file;
	if (strcmp(key, "new_master_user") == 0)
		return &cfg->new_master_user;
	if (strcmp(key, "new_master_password_file") == 0)
		return &cfg->new_master_password_file;
	if (strcmp(key, "user") == 0)
		return &cfg->user;
	if (strcmp(key, "dns_resolver") == 0)
		return &cfg->dns_resolver;
	if (strcmp(key, "resolv_conf") == 0)
		return &cfg->resolv_conf;
	if (strcmp(key, "dns_domains") == 0)
		return &cfg->dns_domains;
	if (strcmp(key, "dns_hosts") == 0)
		return &cfg->dns_hosts;
	if (strcmp(key, "dns_old_ips") == 0)
		return &cfg->dns_old_ips;
	if (strcmp(key, "dns_new_ips") == 0)
		return &cfg->dns_new_ips;
	if (strcmp(key, "dnsbl_zones") == 0)
		return &cfg->dnsbl_zones;
	if (strcmp(key, "dkim_selectors") == 0)
		return &cfg->dkim_selectors;
	return NULL;
}

/* "password" as a conninfo keyword (key=value form) or in a URI's
   userinfo/query: refused, the password comes from pgsql_password_file */
static int conninfo_has_password(const char *v)
{
	const char *p, *at, *scheme_end;

	for (p = v; (p = strcasestr(p, "password")) != NULL; p += 8) {
		const char *q = p + 8;
		if (p > v && (isalnum((unsigned char)p[-1]) || p[-1] == '_'))
			continue;
		while (*q == ' ')
			q++;
		if (*q == '=')
			return 1;
	}
	/* postgresql://user:secret@host */
	if ((scheme_end = strstr(v, "://")) != NULL &&
	    (at = strchr(scheme_end + 3, '@')) != NULL) {
		const char *slash = strchr(scheme_end + 3, '/');
		const char *colon = strchr(scheme_end + 3, ':');
		if ((slash == NULL || at < slash) && colon != NULL && colon < at)
			return 1;
	}
	return 0;
}

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static int parse_line(char *line, int lineno, const char *name,
		      struct ferry_config *cfg, char **err_r)
{
	char *key, *value, *eq, *hash;
	char **sp;
	int *bp;
	size_t i;

	if ((hash = strchr(line, '#')) != NULL)
		*hash = '\0';
	line = trim(line);
	if (*line == '\0')
		return 0;
	if ((eq = strchr(line, '=')) == NULL)
		return config_fail(err_r, "%s:%d: expected \"key = value\"", name, lineno);
	*eq = '\0';
	key = trim(line);
	value = trim(eq + 1);
	if (strcmp(key, "new_imap") == 0) {
		if (parse_addr(value, &cfg->new_imap_host, &cfg->new_imap_port) < 0)
			return config_fail(err_r, "%s:%d: %s: expected HOST:PORT, got \"%s\"",
				    name, lineno, key, value);
		return 0;
	}
	if (strcmp(key, "new_sieve") == 0) {
		if (parse_addr(value, &cfg->new_sieve_host, &cfg->new_sieve_port) < 0)
			return config_fail(err_r, "%s:%d: %s: expected HOST:PORT, got \"%s\"",
				    name, lineno, key, value);
		return 0;
	}
	if (strcmp(key, "store") == 0) {
		if (strcmp(value, "sqlite") != 0 && strcmp(value, "pgsql") != 0)
			return config_fail(err_r, "%s:%d: store: expected sqlite or pgsql, got \"%s\"",
				    name, lineno, value);
		free(cfg->store);
		cfg->store = strdup(value);
		return 0;
	}
	if (strcmp(key, "pgsql_conninfo") == 0 && conninfo_has_password(value))
		return config_fail(err_r, "%s:%d: pgsql_conninfo: no password here (the file is"
			    " readable by more than ferryd, and a password in conninfo ends up in"
			    " messages): put it in pgsql_password_file", name, lineno);
	if (strcmp(key, "new_tls") == 0) {
		if (strcmp(value, "none") != 0 && strcmp(value, "imaps") != 0 &&
		    strcmp(value, "starttls") != 0)
			return config_fail(err_r, "%s:%d: new_tls: expected none, imaps or starttls, got \"%s\"",
				    name, lineno, value);
		free(cfg->new_tls);
		cfg->new_tls = strdup(value);
		return 0;
	}
	if ((bp = bool_key(cfg, key)) != NULL) {
		if (parse_bool(value, bp) < 0)
			return config_fail(err_r, "%s:%d: %s: expected yes or no (true/false, 1/0),"
				    " got \"%s\"", name, lineno, key, value);
		return 0;
	}
	if (strcmp(key, "verify_sample") == 0) {
		char *end;
		double v;
		errno = 0;
		v = strtod(value, &end);
		if (errno != 0 || end == value || *end != '\0' || !(v >= 0.0 && v <= 1.0))
			return config_fail(err_r, "%s:%d: verify_sample: expected a fraction from 0 to 1,"
				    " got \"%s\"", name, lineno, value);
		cfg->verify_sample = v;
		return 0;
	}
	if (strcmp(key, "listen") == 0 || strcmp(key, "doveadm") == 0) {
		int is_listen = key[0] == 'l';
		if (parse_addr(value, is_listen ? &cfg->listen_host : &cfg->doveadm_host,
			       is_listen ? &cfg->listen_port : &cfg->doveadm_port) < 0)
			return config_fail(err_r, "%s:%d: %s: expected HOST:PORT, got \"%s\"",
				    name, lineno, key, value);
		return 0;
	}
	if ((sp = str_key(cfg, key)) != NULL) {
		free(*sp);
		*sp = strdup(value);
		return 0;
	}
	for (i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++) {
		if (strcmp(key, int_keys[i].name) != 0)
			continue;
		if (parse_int(value, int_keys[i].min, int_keys[i].max,
			      (int *)((char *)cfg + int_keys[i].offset)) < 0)
			return config_fail(err_r, "%s:%d: %s: expected a number from %d to %d, got \"%s\"",
				    name, lineno, key, int_keys[i].min, int_keys[i].max, value);
		return 0;
	}
	return config_fail(err_r, "%s:%d: unknown setting \"%s\"", name, lineno, key);
}

int config_parse(const char *text, const char *name, struct ferry_config *cfg,
		 char **err_r)
{
	char *copy = strdup(text), *line = copy, *next;
	int lineno = 0, ret = 0;

	while (line != NULL && ret == 0) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		ret = parse_line(line, ++lineno, name, cfg, err_r);
		line = next;
	}
	free(copy);
	return ret;
}

int config_load(const char *path, struct ferry_config *cfg, char **err_r)
{
	FILE *f = fopen(path, "r");
	char *text = NULL;
	size_t len = 0;
	int ret;

	if (f == NULL)
		return config_fail(err_r, "%s: %s", path, strerror(errno));
	text = malloc(1);
	for (;;) {
		char buf[4096];
		size_t n = fread(buf, 1, sizeof(buf), f);
		if (n == 0)
			break;
		text = realloc(text, len + n + 1);
		memcpy(text + len, buf, n);
		len += n;
	}
	text[len] = '\0';
	fclose(f);
	if (strlen(text) != len) {
		free(text);
		return config_fail(err_r, "%s: contains a NUL byte", path);
	}
	ret = config_parse(text, path, cfg, err_r);
	free(text);
	if (ret < 0)
		return -1;
	if (cfg->state_db == NULL || *cfg->state_db == '\0')
		return config_fail(err_r, "%s: state_db is required", path);
	if (strcmp(cfg->store, "pgsql") == 0 &&
	    (cfg->pgsql_conninfo == NULL || *cfg->pgsql_conninfo == '\0'))
		return config_fail(err_r, "%s: store = pgsql needs pgsql_conninfo", path);
	if (cfg->api_token_file == NULL || *cfg->api_token_file == '\0')
		return config_fail(err_r, "%s: api_token_file is required", path);
	if (cfg->doveadm_api_key_file == NULL || *cfg->doveadm_api_key_file == '\0')
		return config_fail(err_r, "%s: doveadm_api_key_file is required", path);
	if ((cfg->old_master_user != NULL && *cfg->old_master_user != '\0') !=
	    (cfg->old_master_password_file != NULL && *cfg->old_master_password_file != '\0'))
		return config_fail(err_r, "%s: old_master_user and old_master_password_file go together", path);
	if ((cfg->new_master_user != NULL && *cfg->new_master_user != '\0') !=
	    (cfg->new_master_password_file != NULL && *cfg->new_master_password_file != '\0'))
		return config_fail(err_r, "%s: new_master_user and new_master_password_file go together", path);
	return 0;
}

static uid_t secret_owner = (uid_t)-1;
static gid_t secret_group = (gid_t)-1;

void config_secret_owner(uid_t uid, gid_t gid)
{
	secret_owner = uid;
	secret_group = gid;
}

/* Nobody else may access it: the owner is ferryd's user or root, and the
   group may only read it when it is ferryd's own group (root:ferry 0640, as
   the packages install them: ferryd reads, only root writes). Anyone else
   able to replace or read the file holds the secret. */
static int private_ok(FILE *f, const char *path, char **err_r)
{
	uid_t me = secret_owner != (uid_t)-1 ? secret_owner : geteuid();
	gid_t my_gid = secret_group != (gid_t)-1 ? secret_group : getegid();
	struct stat sb;
	mode_t group;

	if (fstat(fileno(f), &sb) < 0)
		return config_fail(err_r, "%s: %s", path, strerror(errno));
	group = sb.st_mode & 070;
	if ((sb.st_mode & 007) != 0 || (sb.st_uid != me && sb.st_uid != 0) ||
	    (group != 0 && (group != 040 || sb.st_gid != my_gid || my_gid == 0)))
		return config_fail(err_r, "%s: mode %04o, owner uid %u, group gid %u: a secret file"
			    " must be accessible by its owner only (chmod 600) or also readable by"
			    " ferryd's group (gid %u, chmod 640), and belong to ferryd's user"
			    " (uid %u) or root", path, (unsigned)(sb.st_mode & 07777),
			    (unsigned)sb.st_uid, (unsigned)sb.st_gid, (unsigned)my_gid, (unsigned)me);
	return 0;
}

static char *read_first_line(const char *path, int private, char **err_r)
{
	FILE *f = fopen(path, "r");
	char buf[1024], *nl, *out;

	if (f == NULL) {
		config_fail(err_r, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (private && private_ok(f, path, err_r) < 0) {
		fclose(f);
		return NULL;
	}
	if (fgets(buf, sizeof(buf), f) == NULL)
		buf[0] = '\0';
	fclose(f);
	if ((nl = strpbrk(buf, "\r\n")) != NULL)
		*nl = '\0';
	if (buf[0] == '\0') {
		config_fail(err_r, "%s: empty", path);
		return NULL;
	}
	out = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	return out;
}

char *config_read_secret(const char *path, char **err_r)
{
	return read_first_line(path, 0, err_r);
}

char *config_read_private(const char *path, char **err_r)
{
	return read_first_line(path, 1, err_r);
}
