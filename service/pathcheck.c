/* The rules are those of a real start (ferryd.c, runas.c): started as root,
   ferryd opens the log and creates the state directory and database
   itself, then hands what it created to `user`; started as the user, the
   user creates them. Either way the user then writes the database, its
   -wal/-shm (so its directory) and reopens the log on SIGHUP. */
#include "pathcheck.h"

#include <errno.h>
#include <libgen.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct ctx {
	FILE *out;
	const char *user;
	int root_start;  /* files ferryd creates are created as root */
	int errors;
};

static char *dir_of(const char *path)
{
	char *copy = strdup(path), *d = strdup(dirname(copy));

	free(copy);
	return d;
}

static void problem(struct ctx *c, int error, const char *what, const char *path,
		    const char *why, const char *fix)
{
	fprintf(c->out, "ferryd: %s: %s %s: %s (%s)\n", error ? "error" : "warning", what,
		path, why, fix);
	if (error)
		c->errors++;
}

static int usable(const char *path, int mode, char *why, size_t len, const char *user)
{
	if (access(path, mode) == 0)
		return 1;
	snprintf(why, len, "not %s by user %s: %s",
		 mode == R_OK ? "readable" : mode == (R_OK | W_OK) ? "readable and writable" :
		 "writable", user, strerror(errno));
	return 0;
}

/* A file ferryd creates if missing (the log, the database): when it exists
   the user must use it; when not, whoever starts ferryd creates it in an
   existing directory. */
static void check_file(struct ctx *c, const char *what, const char *path, const char *fix)
{
	char why[512], *dir;
	struct stat sb;

	if (stat(path, &sb) == 0) {
		if (!usable(path, R_OK | W_OK, why, sizeof(why), c->user))
			problem(c, 1, what, path, why, fix);
		return;
	}
	if (errno != ENOENT) {
		snprintf(why, sizeof(why), "not accessible by user %s: %s", c->user, strerror(errno));
		problem(c, 1, what, path, why, fix);
		return;
	}
	dir = dir_of(path);
	if (stat(dir, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		snprintf(why, sizeof(why), "directory %s does not exist", dir);
		problem(c, 1, what, path, why, fix);
	} else if (!c->root_start && !usable(dir, W_OK | X_OK, why, sizeof(why), c->user)) {
		char msg[700];
		snprintf(msg, sizeof(msg), "cannot be created: directory %s %s", dir, why);
		problem(c, 1, what, path, msg, fix);
	}
	free(dir);
}

static void check_state(struct ctx *c, const char *db)
{
	static const char fix[] = "chown -R ferryd's user the state directory, or"
				  " StateDirectory= in the unit";
	char *dir = dir_of(db), why[512];
	struct stat sb;

	if (stat(dir, &sb) == 0) {
		/* SQLite creates and removes -wal and -shm beside the database */
		if (!usable(dir, W_OK | X_OK, why, sizeof(why), c->user))
			problem(c, 1, "state_db directory", dir, why, fix);
		else
			check_file(c, "state_db", db, fix);
	} else if (errno == ENOENT) {
		/* ferryd creates the directory (one level) */
		char *parent = dir_of(dir);
		if (stat(parent, &sb) < 0)
			problem(c, 1, "state_db directory", dir, "its parent does not exist", fix);
		else if (!c->root_start && !usable(parent, W_OK | X_OK, why, sizeof(why), c->user))
			problem(c, 1, "state_db directory", dir, why, fix);
		free(parent);
	} else {
		snprintf(why, sizeof(why), "not accessible by user %s: %s", c->user, strerror(errno));
		problem(c, 1, "state_db directory", dir, why, fix);
	}
	free(dir);
}

static void check_secret(struct ctx *c, const char *what, const char *path)
{
	char why[512];

	if (path == NULL || *path == '\0' || usable(path, R_OK, why, sizeof(why), c->user))
		return;
	/* root reads it at start; SIGHUP re-reads it as the user */
	problem(c, !c->root_start, what, path, why,
		c->root_start ? "ferryd starts, but a SIGHUP reload will fail: chgrp it to"
				" ferryd's group with mode 0640, or chown it to the user" :
				"chgrp it to ferryd's group with mode 0640");
}

static int run_checks(const struct ferry_config *cfg, FILE *out, const char *user,
		      int root_start)
{
	struct ctx c = { out, user, root_start, 0 };

	if (cfg->log_file != NULL && *cfg->log_file != '\0')
		check_file(&c, "log_file", cfg->log_file,
			   "create its directory writable by ferryd's user, or LogsDirectory="
			   " in the unit");
	check_state(&c, cfg->state_db);
	check_secret(&c, "api_token_file", cfg->api_token_file);
	check_secret(&c, "viewer_token_file", cfg->viewer_token_file);
	check_secret(&c, "viewer_token_file", cfg->viewer_token_file);
	check_secret(&c, "doveadm_api_key_file", cfg->doveadm_api_key_file);
	check_secret(&c, "pgsql_password_file", cfg->pgsql_password_file);
	check_secret(&c, "secret_key_file", cfg->secret_key_file);
	check_secret(&c, "old_master_password_file", cfg->old_master_password_file);
	check_secret(&c, "new_master_password_file", cfg->new_master_password_file);
	return c.errors;
}

int pathcheck_run(const struct ferry_config *cfg, struct runas *ra, FILE *out)
{
	struct passwd *pw;
	char *err = NULL;
	int status;
	pid_t pid;

	if (!ra->drop) {
		pw = getpwuid(geteuid());
		return run_checks(cfg, out, pw != NULL ? pw->pw_name : "(this user)", 0);
	}
	fflush(out);
	if ((pid = fork()) < 0) {
		fprintf(out, "ferryd: error: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		if (runas_drop(ra, &err) < 0) {
			fprintf(out, "ferryd: error: %s\n", err);
			_exit(1);
		}
		status = run_checks(cfg, out, ra->name, 1);
		fflush(out);
		_exit(status > 100 ? 100 : status);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
