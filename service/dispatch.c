/* One job per user in flight:
     ferryStatus            what the new server has (empty before the tree copy)
     ferryPull -m INBOX     only if empty: copies the folder tree and INBOX
     ferryStatus            the folders and their old-server counts
     ferryPull -m FOLDER    for each folder not complete yet (progress per folder)
     ferrySync              presync users only: the mirror pass (new, changed
                            and expunged old messages of complete folders too,
                            folders created, renamed, deleted on OLD)
     ferryStatus            final counts; every folder complete -> done
   A failed request ends the job: doveadm's HTTP answer carries only an exit
   code, so the reason is read back with logErrors (Dovecot's own error
   ring buffer), filtered to this user's doveadm session. */
#include "dispatch.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "evlog.h"
#include "ferry-contract.h"
#include "scheduler.h"
#include "userstate.h"

enum phase { P_STATUS0, P_TREE, P_STATUS1, P_FOLDER, P_SYNC, P_FINAL, P_LOGERR };

struct job_folder {
	char *name;
	int64_t old_messages, copied;
	int todo;  /* not complete (nor local) when last seen */
};

struct job {
	struct dispatch *d;
	struct job *next;
	char user[256], login[256], host[256];
	char backend[256];  /* the NEW backend that owns the mailbox ("" = the one NEW) */
	enum phase phase;
	struct doveadm_req *req;
	struct job_folder *folders;
	size_t nfolders, cur;
	time_t started;
	int64_t seq;  /* the "sync now" request this pass carries out */
	int presync;  /* still on OLD: end with a mirror pass */
	int64_t copied;
	char error[1024];
	int permanent;
	/* a doveadm answer kept while another process holds the database's
	   write lock, applied again every HOLD_RETRY_MS */
	struct event *hold;
	struct doveadm_reply held;
	int holding;
	struct timespec hold_since;  /* 0: not waiting */
	/* inside deliver()'s transaction: the next request and the job's end
	   wait for its commit (a rolled-back answer restarts the pass) */
	int in_tx, step_due, ended;
	int restarts;  /* since the last commit that went through (the backoff) */
};

#define HOLD_RETRY_MS 100
#define RESTART_MAX_MS 8000

struct dispatch {
	struct store *st;
	struct doveadm_client *dc;
	const struct ferry_config *cfg;
	dispatch_done_cb *cb;
	void *ctx;
	struct job *jobs;
	int n;
	dispatch_complete_cb *complete_cb;
	void *complete_ctx;
	dispatch_folders_cb *folders_cb;
	void *folders_ctx;
};

void dispatch_set_folders_cb(struct dispatch *d, dispatch_folders_cb *cb, void *ctx)
{
	d->folders_cb = cb;
	d->folders_ctx = ctx;
}

static void folders_written(struct dispatch *d, const char *user)
{
	if (d->folders_cb != NULL)
		d->folders_cb(user, d->folders_ctx);
}

void dispatch_set_complete_cb(struct dispatch *d, dispatch_complete_cb *cb, void *ctx)
{
	d->complete_cb = cb;
	d->complete_ctx = ctx;
}

static void job_step(struct job *j);
static void job_end(struct job *j);

struct dispatch *dispatch_new(struct store *st, struct doveadm_client *dc,
			      const struct ferry_config *cfg, dispatch_done_cb *cb, void *ctx)
{
	struct dispatch *d = calloc(1, sizeof(*d));

	d->st = st;
	d->dc = dc;
	d->cfg = cfg;
	d->cb = cb;
	d->ctx = ctx;
	return d;
}

int dispatch_in_flight(const struct dispatch *d)
{
	return d->n;
}

int dispatch_has(const struct dispatch *d, const char *user)
{
	for (const struct job *j = d->jobs; j != NULL; j = j->next)
		if (strcmp(j->user, user) == 0)
			return 1;
	return 0;
}

static void log_event(struct dispatch *d, const char *user, const char *folder,
		      const char *event, int64_t copied, int64_t messages, const char *error)
{
	if (store_log_event(d->st, user, folder, event, copied, messages, error) < 0)
		evlog("error", "store-error", "user", user, "error", d->st->error(d->st), NULL);
}

static void folders_free(struct job *j)
{
	for (size_t i = 0; i < j->nfolders; i++)
		free(j->folders[i].name);
	free(j->folders);
	j->folders = NULL;
	j->nfolders = j->cur = 0;
}

static void job_free(struct job *j)
{
	struct job **p;

	for (p = &j->d->jobs; *p != NULL; p = &(*p)->next) {
		if (*p == j) {
			*p = j->next;
			break;
		}
	}
	j->d->n--;
	folders_free(j);
	if (j->hold != NULL)
		event_free(j->hold);
	if (j->holding)
		json_decref(j->held.rows);
	free(j);
}

static const char *jstr(json_t *row, const char *key)
{
	const char *v = json_string_value(json_object_get(row, key));
	return v != NULL ? v : "";
}

static int64_t jnum(json_t *row, const char *key)
{
	const char *v = jstr(row, key);
	char *end;
	long long n;

	if (*v == '\0')
		return -1;
	n = strtoll(v, &end, 10);
	return *end == '\0' ? n : -1;
}

static struct job_folder *job_folder(struct job *j, const char *name)
{
	for (size_t i = 0; i < j->nfolders; i++)
		if (strcmp(j->folders[i].name, name) == 0)
			return &j->folders[i];
	return NULL;
}

/* ferryStatus rows: folder state old local uidvalidity old_uidvalidity copied renumbered */
static void record_status(struct job *j, json_t *rows, int *all_complete_r)
{
	struct dispatch *d = j->d;
	size_t i;
	json_t *row;
	int all = 1;

	folders_free(j);
	j->folders = calloc(json_array_size(rows) + 1, sizeof(*j->folders));
	json_array_foreach(rows, i, row) {
		struct folder_rec f;
		const char *state = jstr(row, FERRY_COL_STATE);

		/* an old folder that is not migrated (excluded, or a name this
		   server cannot have): nothing to pull, verification reads it */
		if (strcmp(state, FERRY_STATE_EXCLUDED) == 0 ||
		    strcmp(state, FERRY_STATE_SKIPPED) == 0 || *jstr(row, FERRY_COL_FOLDER) == '\0')
			continue;
		memset(&f, 0, sizeof(f));
		snprintf(f.user, sizeof(f.user), "%s", j->user);
		snprintf(f.name, sizeof(f.name), "%s", jstr(row, FERRY_COL_FOLDER));
		snprintf(f.state, sizeof(f.state), "%s", state);
		f.old_messages = jnum(row, FERRY_COL_OLD);
		f.messages = jnum(row, FERRY_COL_LOCAL);
		f.copied = jnum(row, FERRY_COL_COPIED);
		f.renumbered = jnum(row, FERRY_COL_RENUMBERED);
		f.bytes = -1;
		f.updated_at = time(NULL);
		if (f.old_messages < 0 && strcmp(state, FERRY_STATE_COMPLETE) == 0)
			f.old_messages = f.messages;
		if (d->st->folder_put(d->st, &f) < 0)
			evlog("error", "store-error", "user", j->user, "folder", f.name,
			      "error", d->st->error(d->st), NULL);
		j->folders[j->nfolders].name = strdup(f.name);
		j->folders[j->nfolders].old_messages = f.old_messages;
		j->folders[j->nfolders].copied = f.copied < 0 ? 0 : f.copied;
		j->folders[j->nfolders].todo = strcmp(state, FERRY_STATE_COMPLETE) != 0 &&
			strcmp(state, FERRY_STATE_LOCAL) != 0;
		if (j->folders[j->nfolders].todo)
			all = 0;
		j->nfolders++;
	}
	folders_written(d, j->user);
	*all_complete_r = all;
}

/* ferryPull rows: folder state copied bytes renumbered messages error */
static void record_pull(struct job *j, json_t *rows)
{
	struct dispatch *d = j->d;
	size_t i;
	json_t *row;
	char copied[32], messages[32], bytes[32];

	json_array_foreach(rows, i, row) {
		struct folder_rec f;
		struct job_folder *jf = job_folder(j, jstr(row, FERRY_COL_FOLDER));
		int64_t c = jnum(row, FERRY_COL_COPIED);

		memset(&f, 0, sizeof(f));
		snprintf(f.user, sizeof(f.user), "%s", j->user);
		snprintf(f.name, sizeof(f.name), "%s", jstr(row, FERRY_COL_FOLDER));
		snprintf(f.state, sizeof(f.state), "%s", jstr(row, FERRY_COL_STATE));
		f.messages = jnum(row, FERRY_COL_MESSAGES);
		f.copied = (jf != NULL ? jf->copied : 0) + (c > 0 ? c : 0);
		f.renumbered = jnum(row, FERRY_COL_RENUMBERED);
		f.old_messages = jf != NULL ? jf->old_messages : -1;
		if (strcmp(f.state, FERRY_STATE_COMPLETE) == 0)
			f.old_messages = f.messages;  /* complete: every old message is here */
		f.bytes = -1;
		f.updated_at = time(NULL);
		if (c > 0)
			j->copied += c;
		if (d->st->folder_put(d->st, &f) < 0)
			evlog("error", "store-error", "user", j->user, "folder", f.name,
			      "error", d->st->error(d->st), NULL);
		log_event(d, j->user, f.name, "folder-pulled", c > 0 ? c : 0, f.messages, NULL);
		snprintf(copied, sizeof(copied), "%lld", (long long)(c > 0 ? c : 0));
		snprintf(messages, sizeof(messages), "%lld", (long long)f.messages);
		snprintf(bytes, sizeof(bytes), "%lld", (long long)jnum(row, FERRY_COL_BYTES));
		evlog("info", "folder-pulled", "user", j->user, "folder", f.name,
		      "state", f.state, "copied", copied, "messages", messages,
		      "bytes", bytes[0] != '-' ? bytes : NULL, NULL);
	}
	folders_written(d, j->user);
}

static void job_finish(struct job *j, int ok)
{
	struct dispatch *d = j->d;
	struct userstate_retry retry = { d->cfg->retry_limit, d->cfg->retry_base,
					 d->cfg->retry_max_delay };
	char n1[32], n2[32];
	int ret;

	if (ok) {
		struct user_rec u;
		int64_t total = 0;
		int verify = 0;

		for (size_t i = 0; i < j->nfolders; i++)
			total += j->folders[i].old_messages > 0 ? j->folders[i].old_messages : 0;
		snprintf(n1, sizeof(n1), "%lld", (long long)j->copied);
		snprintf(n2, sizeof(n2), "%lld", (long long)total);
		if (d->complete_cb != NULL && d->st->user_get(d->st, j->user, &u) == 0)
			verify = d->complete_cb(&u, d->complete_ctx);
		ret = userstate_pass_ok(d->st, j->user, j->seq, verify);
		if (ret != 0)
			;  /* LOST: another ferryd has the user now, its job reports */
		else if (verify) {
			/* verification queued: the claim is held until it ends */
			log_event(d, j->user, NULL, "pulls-complete", j->copied, total, NULL);
			evlog("info", "pulls-complete", "user", j->user, "copied", n1,
			      "messages", n2, "next", "verify", NULL);
		} else {
			log_event(d, j->user, NULL, "user-done", j->copied, total, NULL);
			evlog("info", "user-done", "user", j->user, "copied", n1, "messages", n2,
			      NULL);
		}
	} else {
		int failed = 0, attempts = 0;
		int64_t delay = 0;

		ret = userstate_pass_failed(d->st, j->user, j->seq, j->error, j->permanent,
					    &retry, &failed, &delay, &attempts);
		snprintf(n1, sizeof(n1), "%d", attempts);
		if (ret != 0)
			;
		else if (failed) {
			log_event(d, j->user, NULL, "user-failed", j->copied, 0, j->error);
			evlog("error", "user-failed", "user", j->user, "attempts", n1,
			      "error", j->error, NULL);
		} else {
			log_event(d, j->user, NULL, "pull-failed", j->copied, 0, j->error);
			snprintf(n2, sizeof(n2), "%lld", (long long)delay);
			evlog("warning", "pull-failed", "user", j->user, "attempts", n1,
			      "retry_in", n2, "error", j->error, NULL);
		}
	}
	if (ret == USERSTATE_LOST)
		userstate_log_lost(j->user);
	else if (ret != 0)
		evlog("error", "store-error", "user", j->user, "error", d->st->error(d->st), NULL);
	if (j->in_tx)
		j->ended = 1;  /* job_end() once the transaction committed */
	else
		job_end(j);
}

/* the job's slot and memory given back */
static void job_end(struct job *j)
{
	struct dispatch *d = j->d;
	char host[256], user[256];

	snprintf(host, sizeof(host), "%s", j->host);
	snprintf(user, sizeof(user), "%s", j->user);
	job_free(j);
	d->cb(user, host, d->ctx);
}

/* logErrors answer: the reason of this user's failed doveadm command */
static void on_log_errors(const struct doveadm_reply *r, void *ctx)
{
	struct job *j = ctx;
	char prefix[300];
	const char *found = NULL, *any = NULL;
	size_t i, plen;
	json_t *row;

	j->req = NULL;
	snprintf(prefix, sizeof(prefix), "doveadm(%s)", j->login);
	plen = strlen(prefix);
	if (r->ok) {
		json_array_foreach(r->rows, i, row) {
			const char *p = jstr(row, "prefix"), *t = jstr(row, "text");
			if (strncmp(p, prefix, plen) != 0 || (p[plen] != '<' && p[plen] != '\0'))
				continue;
			any = t;
			if (strncmp(t, "ferry pull: ", 12) == 0)
				found = t + 12;
			else if (strncmp(t, "ferry status: ", 14) == 0)
				found = t + 14;
			else if (strncmp(t, "ferry sync: ", 12) == 0)
				found = t + 12;
		}
	}
	if (found == NULL)
		found = any;
	if (found != NULL) {
		char keep[sizeof(j->error)];
		snprintf(keep, sizeof(keep), "%s", j->error);
		snprintf(j->error, sizeof(j->error), "%.700s (%.300s)", found, keep);
	}
	job_finish(j, 0);
}

static void job_fail(struct job *j, const struct doveadm_reply *r)
{
	snprintf(j->error, sizeof(j->error), "%s", r->error);
	j->permanent = r->permanent;
	if (r->exit_code == 0) {
		job_finish(j, 0);
		return;
	}
	j->phase = P_LOGERR;
	job_step(j);
}

/* what one doveadm answer changes (the job may end and be freed) */
static void handle_reply(struct job *j, const struct doveadm_reply *r)
{
	int all_complete = 0;

	if (!r->ok) {
		job_fail(j, r);
		return;
	}
	switch (j->phase) {
	case P_STATUS0:
		record_status(j, r->rows, &all_complete);
		if (j->nfolders == 0)
			j->phase = P_TREE;
		else if (all_complete && j->presync)
			j->phase = P_SYNC;
		else if (all_complete) {
			job_finish(j, 1);
			return;
		} else {
			j->phase = P_FOLDER;
			j->cur = 0;
		}
		break;
	case P_TREE:
		record_pull(j, r->rows);
		j->phase = P_STATUS1;
		break;
	case P_STATUS1:
		record_status(j, r->rows, &all_complete);
		if (j->nfolders == 0) {
			struct doveadm_reply e = { 0 };
			snprintf(e.error, sizeof(e.error),
				 "no folders on the new server after copying the folder tree");
			job_fail(j, &e);
			return;
		}
		j->phase = P_FOLDER;
		j->cur = 0;
		break;
	case P_FOLDER:
		record_pull(j, r->rows);
		j->cur++;
		break;
	case P_SYNC:
		record_pull(j, r->rows);
		j->phase = P_FINAL;
		break;
	case P_FINAL:
		record_status(j, r->rows, &all_complete);
		if (!all_complete) {
			struct doveadm_reply e = { 0 };
			snprintf(e.error, sizeof(e.error),
				 "some folders are still not complete after pulling them");
			job_fail(j, &e);
		} else
			job_finish(j, 1);
		return;
	case P_LOGERR:
		return;
	}
	job_step(j);
}

static void deliver(struct job *j, const struct doveadm_reply *r);

static void on_hold(evutil_socket_t fd, short what, void *ctx)
{
	struct job *j = ctx;
	struct doveadm_reply r = j->held;

	(void)fd;
	(void)what;
	if (!j->holding) {
		job_step(j);  /* a restarted pass */
		return;
	}
	j->holding = 0;
	deliver(j, &r);  /* may hold it again, or free j */
	json_decref(r.rows);
}

static void arm(struct job *j, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	if (j->hold == NULL &&
	    (j->hold = evtimer_new(doveadm_client_base(j->d->dc), on_hold, j)) == NULL)
		abort();
	evtimer_add(j->hold, &tv);
}

/* The answer's writes were rolled back at COMMIT (PostgreSQL: a row
   another ferryd's stalled transaction still locks, or the connection
   lost), or never begun (the store unreachable at BEGIN): the job's
   memory has moved on, the store has not, so the pass
   starts again from ferryStatus after a delay. Pulls are idempotent (the
   UID rule): the new pass copies only what is still missing. Ending the
   job instead left its user claimed by this ferryd with no job, never
   picked again. */
static void job_restart(struct job *j, const char *error)
{
	int64_t delay = sched_backoff(++j->restarts, HOLD_RETRY_MS, RESTART_MAX_MS);
	char ms[32];

	folders_free(j);
	j->phase = P_STATUS0;
	j->step_due = j->ended = 0;
	j->error[0] = '\0';
	j->permanent = 0;
	snprintf(ms, sizeof(ms), "%lld", (long long)delay);
	evlog("warning", "pass-restart", "user", j->user, "retry_in_ms", ms, "error", error,
	      NULL);
	arm(j, (int)delay);
}

/* the write lock is held by another process: keep the answer, try again
   soon; the job keeps its claim and its slot meanwhile */
static void hold(struct job *j, const struct doveadm_reply *r)
{
	if (j->hold_since.tv_sec == 0) {
		clock_gettime(CLOCK_MONOTONIC, &j->hold_since);
		evlog("warning", "store-busy", "user", j->user, "held", "doveadm-answer",
		      "error", j->d->st->error(j->d->st), NULL);
	}
	j->held = *r;
	json_incref(r->rows);
	j->holding = 1;
	arm(j, HOLD_RETRY_MS);
}

/* One doveadm answer's writes in one transaction (all or nothing). If
   another process holds the write lock, BEGIN IMMEDIATE says so within the
   store's short busy timeout and the answer is held, not lost
   (docs/ferryd.md, "A locked database"). A store that cannot begin at all
   (PostgreSQL unreachable, a disk error) gets none of the answer's writes:
   made one by one outside a transaction, a failure half-way left the store
   behind the job's memory; the pass starts again instead. */
static void deliver(struct job *j, const struct doveadm_reply *r)
{
	struct store *st = j->d->st;

	if (st->begin(st) < 0) {
		char error[600];

		if (st->busy) {
			hold(j, r);
			return;
		}
		snprintf(error, sizeof(error), "%s", st->error(st));
		job_restart(j, error);
		return;
	}
	if (j->hold_since.tv_sec != 0) {
		struct timespec now;
		char ms[32];

		clock_gettime(CLOCK_MONOTONIC, &now);
		snprintf(ms, sizeof(ms), "%lld", (long long)((now.tv_sec - j->hold_since.tv_sec) *
			1000 + (now.tv_nsec - j->hold_since.tv_nsec) / 1000000));
		evlog("info", "store-resumed", "user", j->user, "waited_ms", ms, NULL);
		j->hold_since.tv_sec = 0;
	}
	j->in_tx = 1;
	handle_reply(j, r);
	j->in_tx = 0;
	if (st->commit(st) < 0) {
		char error[600];

		snprintf(error, sizeof(error), "%s", st->error(st));
		st->rollback(st);
		job_restart(j, error);
		return;
	}
	j->restarts = 0;
	if (j->ended)
		job_end(j);
	else if (j->step_due) {
		j->step_due = 0;
		job_step(j);
	}
}

static void on_reply(const struct doveadm_reply *r, void *ctx)
{
	struct job *j = ctx;

	j->req = NULL;
	deliver(j, r);
}

static void job_call(struct job *j, const char *command, const char *mailbox)
{
	json_t *params = json_pack("{s:s}", "user", j->login);

	if (strcmp(command, FERRY_CMD_PULL) == 0 || strcmp(command, FERRY_CMD_SYNC) == 0)
		json_object_set_new(params, FERRY_PARAM_PARALLEL, json_string("1"));
	if (mailbox != NULL)
		json_object_set_new(params, "mailbox", json_string(mailbox));
	j->req = doveadm_call(j->d->dc, j->backend, command, params, on_reply, j);
	if (j->req == NULL) {
		struct doveadm_reply e = { 0 };
		snprintf(e.error, sizeof(e.error), "%s", doveadm_client_error(j->d->dc));
		job_fail(j, &e);
	}
}

static void job_step(struct job *j)
{
	if (j->in_tx) {
		j->step_due = 1;
		return;
	}
	switch (j->phase) {
	case P_STATUS0:
	case P_STATUS1:
	case P_FINAL:
		job_call(j, FERRY_CMD_STATUS, NULL);
		break;
	case P_TREE:
		job_call(j, FERRY_CMD_PULL, "INBOX");
		break;
	case P_FOLDER:
		/* skip folders already complete or created locally */
		while (j->cur < j->nfolders && !j->folders[j->cur].todo)
			j->cur++;
		if (j->cur >= j->nfolders) {
			j->phase = j->presync ? P_SYNC : P_FINAL;
			job_step(j);
			return;
		}
		job_call(j, FERRY_CMD_PULL, j->folders[j->cur].name);
		break;
	case P_SYNC:
		/* a complete folder is not left alone while the user works on
		   OLD: the presync refresh brings what changed there */
		job_call(j, FERRY_CMD_SYNC, NULL);
		break;
	case P_LOGERR:
		j->req = doveadm_call(j->d->dc, j->backend, "logErrors",
				      json_pack("{s:I}", "since", (json_int_t)(j->started - 1)),
				      on_log_errors, j);
		if (j->req == NULL)
			job_finish(j, 0);
		break;
	}
}

int dispatch_start(struct dispatch *d, const char *user)
{
	struct job *j;
	struct user_rec cur;
	int ret;

	/* the claim: no other job (cut-over, rollback, pull) holds the user */
	if ((ret = userstate_claim_pull(d->st, user, &cur)) != 0) {
		if (ret == USERSTATE_BUSY || ret == USERSTATE_NOTDUE || d->st->busy)
			return -1;  /* busy: the write lock is held elsewhere, picked again later */
		evlog("error", "store-error", "user", user, "error", d->st->error(d->st), NULL);
		return -1;
	}
	j = calloc(1, sizeof(*j));
	j->d = d;
	snprintf(j->user, sizeof(j->user), "%s", cur.name);
	snprintf(j->login, sizeof(j->login), "%s", cur.new_login);
	snprintf(j->host, sizeof(j->host), "%s", cur.ep.host);
	snprintf(j->backend, sizeof(j->backend), "%s", cur.new_host);
	j->started = time(NULL);
	j->seq = cur.sync_seq;
	j->presync = cur.state == US_PRESYNC;
	j->phase = P_STATUS0;
	j->next = d->jobs;
	d->jobs = j;
	d->n++;
	log_event(d, j->user, NULL, "pull-start", 0, 0, NULL);
	evlog("info", "pull-start", "user", j->user, "host", j->host,
	      "sync_now", cur.sync_seq > 0 ? "yes" : "no",
	      "new_host", j->backend[0] != '\0' ? j->backend : NULL, NULL);
	job_step(j);
	return 0;
}

void dispatch_cancel_all(struct dispatch *d)
{
	char host[256], user[256];

	while (d->jobs != NULL) {
		struct job *j = d->jobs;

		if (j->req != NULL)
			doveadm_cancel(j->req);
		if (userstate_release(d->st, j->user) < 0)
			evlog("error", "store-error", "user", j->user, "error",
			      d->st->error(d->st), NULL);
		log_event(d, j->user, NULL, "pull-abandoned", j->copied, 0,
			  "ferryd stopped before the pull answered");
		evlog("warning", "pull-abandoned", "user", j->user, NULL);
		snprintf(host, sizeof(host), "%s", j->host);
		snprintf(user, sizeof(user), "%s", j->user);
		job_free(j);
		d->cb(user, host, d->ctx);  /* its old-host slot is free again */
	}
}

void dispatch_free(struct dispatch *d)
{
	if (d == NULL)
		return;
	dispatch_cancel_all(d);
	free(d);
}
