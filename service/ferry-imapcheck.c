/* ferry-imapcheck: preflight and verification from the command line, for
 * tests and admins until ferryd/ferryctl drive them.
 *
 *   ferry-imapcheck sieve --user U --old-host H --old-port 4190 --new-host H
 *       --new-port 4190 [--map FILE] [--old-prefix P] [--keep-new] (same options)
 *       [--deactivate-old] (a cut-over user: OLD's active script switched off
 *       once NEW's is the same)
 *   ferry-imapcheck sieve-activate --user U --old-host H --old-port P --name S
 *       (rollback: S becomes the old server's active script; "" for none)
 *   ferry-imapcheck preflight|verify --user U --old-host H --old-port P
 *       [--new-host H --new-port P] [--{old,new}-tls none|imaps|starttls]
 *       [--{old,new}-ca-file F] [--{old,new}-tls-name N] [--{old,new}-tls-insecure]
 *       [--{old,new}-auth login|plain|xoauth2] [--{old,new}-auth-user MASTER]
 *       [--{old,new}-master-separator S] [--{old,new}-user LOGIN] [--timeout-ms N]
 *       [--{old,new}-identity full|no-own-login|none]
 *       [--sample F] [--sample-seed N] [--folder NAME] [--names FILE|-]
 *       [--text] [--json FILE]
 *       --credentials FILE|-
 *
 * Secrets never come from argv (ps shows it): the credentials file (or
 * stdin with "-") holds lines "old=SECRET" and "new=SECRET".
 * verify needs the plugin's folder names: --names FILE is the output of
 * `doveadm -f json ferry status -u USER`; with "-" they are a line
 * "names=JSON" of the credentials text (how ferryd passes them).
 * Exit: 0 pass, 1 fail (differences found), 2 error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "preflight.h"
#include "sieve.h"
#include "verify.h"

static void usage(void)
{
	fprintf(stderr,
		"usage: ferry-imapcheck preflight|verify --user USER --old-host H [--old-port P]\n"
		"       [--new-host H --new-port P] --credentials FILE|- [options]\n"
		"  per server (--old-X / --new-X): host port tls(none|imaps|starttls) ca-file\n"
		"       tls-name tls-insecure auth(login|plain|xoauth2) auth-user master-separator\n"
		"       user (the login there when it is not --user)\n"
		"       identity (after an impersonated login: full (default) | no-own-login\n"
		"       (no login as the master alone, which fails by design) | none)\n"
		"  --timeout-ms N  --sample FRACTION  --sample-seed N  --folder NAME\n"
		"  --names FILE|-  (verify, required: doveadm -f json ferry status -u USER;\n"
		"                   -: a names=JSON line after the credentials)\n"
		"  --text (text report instead of JSON)  --json FILE (also write JSON there)\n"
		"  sieve: --map FILE (lines OLD<TAB>NEW: folder names, from doveadm ferry\n"
		"       status) --keep-new; sieve-activate: --name SCRIPT\n"
		"  credentials file lines: old=SECRET new=SECRET\n");
	exit(2);
}

static void log_cb(void *ctx, enum imap_log_level lvl, const char *msg)
{
	if (lvl >= IMAP_LOG_WARN)
		fprintf(stderr, "ferry-imapcheck: %s: %s\n", lvl == IMAP_LOG_WARN ? "warning" : "error", msg);
}

static int set_side(struct imap_client_settings *s, const char *key, const char *val)
{
	if (strcmp(key, "host") == 0)
		s->host = val;
	else if (strcmp(key, "port") == 0)
		s->port = (unsigned)atoi(val);
	else if (strcmp(key, "tls") == 0)
		s->tls = strcmp(val, "imaps") == 0      ? IMAP_TLS_IMAPS
			 : strcmp(val, "starttls") == 0 ? IMAP_TLS_STARTTLS
			 : strcmp(val, "none") == 0     ? IMAP_TLS_NONE
							: (usage(), IMAP_TLS_NONE);
	else if (strcmp(key, "ca-file") == 0)
		s->ca_file = val;
	else if (strcmp(key, "tls-name") == 0)
		s->tls_name = val;
	else if (strcmp(key, "auth") == 0)
		s->auth = strcmp(val, "plain") == 0     ? IMAP_AUTH_PLAIN
			  : strcmp(val, "xoauth2") == 0 ? IMAP_AUTH_XOAUTH2
			  : strcmp(val, "login") == 0   ? IMAP_AUTH_LOGIN
							: (usage(), IMAP_AUTH_LOGIN);
	else if (strcmp(key, "auth-user") == 0)
		s->auth_user = val;
	else if (strcmp(key, "master-separator") == 0)
		s->master_separator = val;
	else if (strcmp(key, "user") == 0)
		s->user = val;
	else if (strcmp(key, "identity") == 0)
		s->identity = strcmp(val, "full") == 0           ? IMAP_IDENTITY_FULL
			      : strcmp(val, "no-own-login") == 0 ? IMAP_IDENTITY_NO_OWN_LOGIN
			      : strcmp(val, "none") == 0         ? IMAP_IDENTITY_NONE
								 : (usage(), IMAP_IDENTITY_FULL);
	else
		return -1;
	return 0;
}

#define MAX_CREDENTIALS (64 * 1024 * 1024) /* names of many folders */

/* The credentials text (old=, new=, names= lines), whole; *len_r for the
   wipe at exit. */
static char *read_secrets(const char *path, char **old_secret, char **new_secret,
			  char **names, size_t *len_r)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	if (f == NULL) {
		fprintf(stderr, "ferry-imapcheck: cannot open credentials file %s\n", path);
		exit(2);
	}
	size_t cap = 8192, n = 0, got;
	char *buf = malloc(cap);
	while (buf != NULL && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
		n += got;
		if (n + 1 == cap && cap < MAX_CREDENTIALS) {
			char *nb = malloc(cap * 2);
			if (nb != NULL)
				memcpy(nb, buf, n);
			OPENSSL_cleanse(buf, n);
			free(buf);
			buf = nb;
			cap *= 2;
		} else if (n + 1 == cap)
			break;
	}
	if (f != stdin)
		fclose(f);
	if (buf == NULL) {
		fprintf(stderr, "ferry-imapcheck: out of memory reading the credentials\n");
		exit(2);
	}
	buf[n] = '\0';
	*len_r = cap;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		size_t l = strlen(line);
		if (l && line[l - 1] == '\r')
			line[l - 1] = '\0';
		if (strncmp(line, "old=", 4) == 0)
			*old_secret = line + 4;
		else if (strncmp(line, "new=", 4) == 0)
			*new_secret = line + 4;
		else if (strncmp(line, "names=", 6) == 0)
			*names = line + 6;
	}
	return buf;
}

/* OLD<TAB>NEW per line (UTF-8 folder names), malloc()ed */
static int read_map(const char *path, struct sieve_folder_map *map)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		fprintf(stderr, "ferry-imapcheck: cannot open folder map %s\n", path);
		return -1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	while ((n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0)
			continue;
		char *tab = strchr(line, '\t');
		if (tab == NULL) {
			fprintf(stderr, "ferry-imapcheck: %s:%u: expected OLD<TAB>NEW\n", path, lineno);
			fclose(f);
			free(line);
			return -1;
		}
		*tab = '\0';
		map->old_names = realloc(map->old_names, (map->n + 1) * sizeof(char *));
		map->new_names = realloc(map->new_names, (map->n + 1) * sizeof(char *));
		map->old_names[map->n] = strdup(line);
		map->new_names[map->n] = strdup(tab + 1);
		map->n++;
	}
	free(line);
	fclose(f);
	return 0;
}

/* --text is for a person at a terminal; JSON is what ferryd stores. */
static void print_report(const json_t *report, int text,
			 char *(*format)(const json_t *report))
{
	if (text) {
		char *t = format(report);
		fputs(t ? t : "", stdout);
		free(t);
	} else {
		json_dumpf(report, stdout, JSON_INDENT(1));
		fputc('\n', stdout);
	}
}

int main(int argc, char **argv)
{
	struct imap_client_settings old = {.label = "old", .log = log_cb},
				    new = {.label = "new", .log = log_cb};
	const char *cred = NULL, *json_path = NULL, *user = NULL, *names_path = NULL;
	int text = 0, old_insecure = 0, new_insecure = 0;
	unsigned timeout = 0;
	struct verify_options vopt = {.sample = 1.0};
	if (argc < 2)
		usage();
	const char *mode = argv[1];
	if (strcmp(mode, "preflight") != 0 && strcmp(mode, "verify") != 0 &&
	    strcmp(mode, "sieve") != 0 && strcmp(mode, "sieve-activate") != 0)
		usage();
	const char *map_path = NULL, *script_name = NULL, *sieve_prefix = NULL;
	struct sieve_migrate_options sopt = {0};
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--text") == 0) {
			text = 1;
			continue;
		}
		if (strcmp(a, "--keep-new") == 0) {
			sopt.keep_new = 1;
			continue;
		}
		if (strcmp(a, "--deactivate-old") == 0) {
			sopt.deactivate_old = 1;
			continue;
		}
		if (strcmp(a, "--old-tls-insecure") == 0 || strcmp(a, "--new-tls-insecure") == 0) {
			*(a[2] == 'o' ? &old_insecure : &new_insecure) = 1;
			continue;
		}
		if (v == NULL)
			usage();
		i++;
		if (strcmp(a, "--user") == 0)
			user = v;
		else if (strcmp(a, "--credentials") == 0)
			cred = v;
		else if (strcmp(a, "--json") == 0)
			json_path = v;
		else if (strcmp(a, "--timeout-ms") == 0)
			timeout = (unsigned)atoi(v);
		else if (strcmp(a, "--sample") == 0)
			vopt.sample = atof(v);
		else if (strcmp(a, "--sample-seed") == 0)
			vopt.sample_seed = (unsigned)atoi(v);
		else if (strcmp(a, "--folder") == 0)
			vopt.only_folder = v;
		else if (strcmp(a, "--map") == 0)
			map_path = v;
		else if (strcmp(a, "--name") == 0)
			script_name = v;
		else if (strcmp(a, "--names") == 0)
			names_path = v;
		else if (strcmp(a, "--old-prefix") == 0)
			sieve_prefix = v;
		else if (strncmp(a, "--old-", 6) == 0 && set_side(&old, a + 6, v) == 0)
			;
		else if (strncmp(a, "--new-", 6) == 0 && set_side(&new, a + 6, v) == 0)
			;
		else {
			fprintf(stderr, "ferry-imapcheck: unknown option %s\n", a);
			usage();
		}
	}
	if (user == NULL || old.host == NULL || cred == NULL ||
	    ((strcmp(mode, "verify") == 0 || strcmp(mode, "sieve") == 0) && new.host == NULL) ||
	    (strcmp(mode, "verify") == 0 && names_path == NULL) ||
	    (strcmp(mode, "sieve-activate") == 0 && script_name == NULL))
		usage();
	char *old_secret = NULL, *new_secret = NULL, *names_text = NULL;
	size_t secrets_len = 0;
	char *secrets = read_secrets(cred, &old_secret, &new_secret, &names_text, &secrets_len);
	json_t *names = NULL;
	if (names_path != NULL) {
		json_error_t jerr;
		names = strcmp(names_path, "-") == 0
				? (names_text != NULL ? json_loads(names_text, 0, &jerr) : NULL)
				: json_load_file(names_path, 0, &jerr);
		if (!json_is_array(names)) {
			fprintf(stderr, "ferry-imapcheck: --names %s: %s\n", names_path,
				names == NULL && (names_text != NULL || strcmp(names_path, "-") != 0)
					? jerr.text
					: "not the JSON array of doveadm -f json ferry status");
			OPENSSL_cleanse(secrets, secrets_len);
			return 2;
		}
		vopt.names = names;
	}
	if (old.user == NULL)
		old.user = user;
	if (new.user == NULL)
		new.user = user;
	old.secret = old_secret;
	new.secret = new_secret;
	old.tls_insecure = old_insecure;
	new.tls_insecure = new_insecure;
	old.connect_timeout_ms = old.greeting_timeout_ms = timeout;
	new.connect_timeout_ms = new.greeting_timeout_ms = timeout;
	old.command_timeout_ms = new.command_timeout_ms = timeout;

	char err[2048] = "";
	json_t *report;
	int passed;
	if (strcmp(mode, "sieve-activate") == 0) {
		int r = ferry_sieve_set_active(&old, script_name, err, sizeof(err));
		OPENSSL_cleanse(secrets, secrets_len);
		free(secrets);
		json_decref(names);
		if (r < 0) {
			fprintf(stderr, "ferry-imapcheck: sieve-activate: %s\n", err);
			return 2;
		}
		/* a report like sieve's, so ferryd stores and shows it the same way */
		report = json_pack("{s:s, s:s, s:b, s:[]}", "user", user, "restored_active",
				   script_name, "passed", 1, "scripts");
		print_report(report, text, ferry_sieve_text);
		json_decref(report);
		return 0;
	}
	if (strcmp(mode, "preflight") == 0) {
		report = ferry_preflight(&old, new.host ? &new : NULL, NULL, err, sizeof(err));
		passed = report && ferry_preflight_passed(report);
	} else if (strcmp(mode, "sieve") == 0) {
		struct sieve_folder_map map = {.old_prefix = sieve_prefix};
		if (map_path != NULL && read_map(map_path, &map) < 0)
			return 2;
		report = ferry_sieve_migrate(&old, &new, &map, &sopt, err, sizeof(err));
		passed = report && ferry_sieve_passed(report);
		for (size_t i = 0; i < map.n; i++) {
			free((char *)map.old_names[i]);
			free((char *)map.new_names[i]);
		}
		free(map.old_names);
		free(map.new_names);
	} else {
		report = ferry_verify(&old, &new, &vopt, err, sizeof(err));
		passed = report && ferry_verify_passed(report);
	}
	OPENSSL_cleanse(secrets, secrets_len);
	free(secrets);
	json_decref(names);
	if (report == NULL) {
		fprintf(stderr, "ferry-imapcheck: %s: %s\n", mode, err);
		return 2;
	}
	if (json_path != NULL && json_dump_file(report, json_path, JSON_INDENT(1)) < 0) {
		fprintf(stderr, "ferry-imapcheck: cannot write %s\n", json_path);
		return 2;
	}
	print_report(report, text,
		     strcmp(mode, "preflight") == 0 ? ferry_preflight_text
		     : strcmp(mode, "sieve") == 0   ? ferry_sieve_text
						    : ferry_verify_text);
	json_decref(report);
	return passed ? 0 : 1;
}
