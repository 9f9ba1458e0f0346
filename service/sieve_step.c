/* ferryd's Sieve step. See sieve_step.h. */
#include "sieve_step.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "evlog.h"
#include "ferry-contract.h"

struct pending {
	struct pending *next;
	struct sieve_step *s;
	struct doveadm_req *req;
	char user[256];
};

struct sieve_step {
	struct store *st;
	struct doveadm_client *dc;
	struct checks *ch;
	const struct ferry_config *cfg;
	sieve_kick_cb *kick;
	void *ctx;
	struct pending *pending;
};

static struct sieve_step *current; /* for the rollback hook */

struct sieve_step *sieve_step_new(struct store *st, struct doveadm_client *dc,
				  struct checks *ch, const struct ferry_config *cfg,
				  sieve_kick_cb *kick, void *ctx)
{
	struct sieve_step *s = calloc(1, sizeof(*s));
	current = s;
	s->st = st;
	s->dc = dc;
	s->ch = ch;
	s->cfg = cfg;
	s->kick = kick;
	s->ctx = ctx;
	return s;
}

void sieve_step_free(struct sieve_step *s)
{
	if (s == NULL)
		return;
	if (current == s)
		current = NULL;
	while (s->pending != NULL) {
		struct pending *p = s->pending;
		s->pending = p->next;
		doveadm_cancel(p->req);
		free(p);
	}
	free(s);
}

/* <state_db's directory>/sieve-maps/<user>.map, the directory made 0700 */
static int map_path(struct sieve_step *s, const char *user, char *out, size_t len)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(s->cfg->state_db, '/');
	snprintf(dir, sizeof(dir), "%.*s/sieve-maps", slash ? (int)(slash - s->cfg->state_db) : 1,
		 slash ? s->cfg->state_db : ".");
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -1;
	int n = snprintf(out, len, "%s/", dir);
	for (const char *p = user; *p && (size_t)n + 1 < len; p++)
		out[n++] = *p == '/' ? '_' : *p;
	snprintf(out + n, len - (size_t)n, ".map");
	return 0;
}

static void on_status(const struct doveadm_reply *r, void *ctx)
{
	struct pending *p = ctx;
	struct sieve_step *s = p->s;
	char path[PATH_MAX], tmp[PATH_MAX + 8], err[PATH_MAX + 700] = "";
	size_t i, n = 0;
	json_t *row;

	for (struct pending **pp = &s->pending; *pp != NULL; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	if (!r->ok) {
		snprintf(err, sizeof(err), "folder map from the new server: %s", r->error);
	} else if (map_path(s, p->user, path, sizeof(path)) < 0) {
		snprintf(err, sizeof(err), "cannot make the folder map's directory: %s",
			 strerror(errno));
	} else {
		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		FILE *f = fopen(tmp, "w");
		if (f == NULL) {
			snprintf(err, sizeof(err), "cannot write %.500s: %s", tmp, strerror(errno));
		} else {
			json_array_foreach(r->rows, i, row) {
				const char *nw = json_string_value(json_object_get(row, FERRY_COL_FOLDER));
				const char *old = json_string_value(json_object_get(row, FERRY_COL_OLD_FOLDER));
				if (nw != NULL && old != NULL && nw[0] && old[0] &&
				    !strpbrk(nw, "\t\r\n") && !strpbrk(old, "\t\r\n")) {
					fprintf(f, "%s\t%s\n", old, nw);
					n++;
				}
			}
			if (fclose(f) != 0 || rename(tmp, path) < 0)
				snprintf(err, sizeof(err), "cannot write %.500s: %s", path, strerror(errno));
		}
	}
	if (err[0] == '\0') {
		char count[32];
		snprintf(count, sizeof(count), "%zu", n);
		evlog("info", "sieve-map", "user", p->user, "folders", count, NULL);
	}
	checks_release(s->ch, p->user, "sieve", err[0] ? NULL : path, err[0] ? err : NULL);
	s->kick(s->ctx);
	free(p);
}

int sieve_step_user(struct sieve_step *s, const struct user_rec *u, char *why, size_t wl)
{
	if (!checks_can_verify(s->ch, u)) {
		snprintf(why, wl, "no credentials for both servers (old_master_user/new_master_user,"
			 " or a CSV password)");
		return -1;
	}
	int q = checks_queue_held(s->ch, u, "sieve");
	if (q < 0) {
		snprintf(why, wl, "cannot queue the run");
		return -1;
	}
	if (q == 1)
		return 0; /* one is queued or running already */
	struct pending *p = calloc(1, sizeof(*p));
	p->s = s;
	snprintf(p->user, sizeof(p->user), "%s", u->name);
	p->next = s->pending;
	s->pending = p;
	p->req = doveadm_call(s->dc, u->new_host, FERRY_CMD_STATUS,
			      json_pack("{s:s}", "user", u->new_login), on_status, p);
	if (p->req == NULL) {
		s->pending = p->next;
		free(p);
		snprintf(why, wl, "cannot ask the new server (doveadm): %s",
			 doveadm_client_error(s->dc));
		checks_release(s->ch, u->name, "sieve", NULL, why);
		return -1;
	}
	return 0;
}

void sieve_step_rollback(const char *user)
{
	struct sieve_step *s = current;
	struct check_rec c;
	struct user_rec u;
	json_t *rep;
	const char *off;

	if (s == NULL || s->st->check_get(s->st, user, "sieve", &c, 1) != 0)
		return;
	rep = c.report_json != NULL ? json_loads(c.report_json, 0, NULL) : NULL;
	off = json_string_value(json_object_get(rep, "old_deactivated"));
	if (off != NULL && s->st->user_get(s->st, user, &u) == 0) {
		if (checks_queue_sieve_restore(s->ch, &u, off) == 0)
			evlog("info", "sieve-restore-queued", "user", user, "script", off, NULL);
		else
			evlog("warning", "sieve-restore-deferred", "user", user, "script", off,
			      "error", "a Sieve run of this user is in progress: ferryctl sieve it "
			      "after the rollback", NULL);
		s->kick(s->ctx);
	}
	json_decref(rep);
	check_rec_free(&c);
}

int sieve_step_api(struct sieve_step *s, const char *path, json_t *args, json_t **out)
{
	const char *name = json_string_value(json_object_get(args, "user"));
	struct user_rec u;
	char why[600];
	int rc;

	if (strcmp(path, "POST /v1/sieve") != 0) {
		*out = json_pack("{s:s}", "error", "unknown endpoint");
		return 404;
	}
	if (name == NULL || name[0] == '\0') {
		*out = json_pack("{s:s}", "error", "user is required");
		return 400;
	}
	if ((rc = s->st->user_get(s->st, name, &u)) != 0) {
		if (rc == STORE_NOTFOUND)
			snprintf(why, sizeof(why), "unknown user \"%.200s\"", name);
		else
			snprintf(why, sizeof(why), "state database error: %s", s->st->error(s->st));
		*out = json_pack("{s:s}", "error", why);
		return rc == STORE_NOTFOUND ? 404 : 500;
	}
	if (sieve_step_user(s, &u, why, sizeof(why)) < 0) {
		char msg[900];
		snprintf(msg, sizeof(msg), "cannot move the Sieve scripts of %.200s: %s", name, why);
		*out = json_pack("{s:s}", "error", msg);
		return 400;
	}
	*out = json_pack("{s:s, s:[s]}", "kind", "sieve", "users", name);
	return 202;
}
