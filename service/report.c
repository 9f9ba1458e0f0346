/* Reports read from the store (report.h). DNS change times noted by the
   administrator are kept as a JSON list in the settings table under
   "dns_notes:WAVE" (no schema change); the MX switches ferryd detects
   itself are the migration log's dns-changed entries. */
#include "report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "csv.h"
#include "evlog.h"

#define DNS_NOTES_MAX 100
#define NOTE_MAX 300

static void iso_time(int64_t t, char *buf, size_t len)
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (t <= 0) {
		buf[0] = '\0';
		return;
	}
	gmtime_r(&tt, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *time_json(int64_t t)
{
	char buf[32];

	if (t <= 0)
		return json_null();
	iso_time(t, buf, sizeof(buf));
	return json_string(buf);
}

/* ---- per-user rows -------------------------------------------------------- */

struct user_totals {
	int64_t old_messages, messages, copied;
	int folders;
};

static int folder_cb(const struct folder_rec *f, void *ctx)
{
	struct user_totals *t = ctx;

	t->old_messages += f->old_messages > 0 ? f->old_messages : 0;
	t->messages += f->messages > 0 ? f->messages : 0;
	t->copied += f->copied > 0 ? f->copied : 0;
	t->folders++;
	return 0;
}

static int error_count_cb(const struct log_rec *l, void *ctx)
{
	if (l->error[0] != '\0' && strncmp(l->error, "result=", 7) != 0)
		(*(int *)ctx)++;
	return 0;
}

struct report_ctx {
	struct store *st;
	json_t *users;
	int64_t old_messages, messages, copied;
	int states[US_COUNT];
	int failed;
};

static int user_cb(const struct user_rec *u, void *ctx)
{
	struct report_ctx *r = ctx;
	struct store *st = r->st;
	struct user_totals t = { 0 };
	struct log_filter lf = { u->name, NULL, 0, 0 };
	struct check_rec cr;
	struct route_rec route;
	int errors = 0;
	json_t *verify = json_null(), *j;

	if (st->folder_each(st, u->name, folder_cb, &t) < 0 ||
	    st->log_each(st, &lf, error_count_cb, &errors) < 0)
		return -1;
	memset(&cr, 0, sizeof(cr));
	if (st->check_get(st, u->name, "verify", &cr, 0) == 0) {
		json_decref(verify);
		verify = json_pack("{s:s, s:s, s:o}", "state", cr.state, "result", cr.result,
				   "finished_at", time_json(cr.finished_at));
		check_rec_free(&cr);
	}
	memset(&route, 0, sizeof(route));
	if (st->route_get(st, u->name, &route) != 0)
		snprintf(route.target, sizeof(route.target), "old");
	j = json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:s, s:o, s:I, s:I, s:I, s:i, s:i, "
		      "s:o, s:i, s:s}",
		      "user", u->name, "new_login", u->new_login, "wave", u->wave,
		      "state", user_state_name(u->state),
		      "started_at", time_json(u->started_at),
		      "finished_at", time_json(u->finished_at),
		      "routed_to", route.target, "routed_at", time_json(route.changed_at),
		      "old_messages", (json_int_t)t.old_messages,
		      "messages", (json_int_t)t.messages, "copied", (json_int_t)t.copied,
		      "folders", t.folders, "attempts", u->attempts, "verify", verify,
		      "errors", errors, "last_error", u->last_error);
	json_array_append_new(r->users, j);
	r->old_messages += t.old_messages;
	r->messages += t.messages;
	r->copied += t.copied;
	r->states[u->state]++;
	return 0;
}

/* ---- DNS changes ---------------------------------------------------------- */

static json_t *dns_notes(struct store *st, const char *wave)
{
	char key[160], *buf = malloc(DNS_NOTES_MAX * (NOTE_MAX + 64) + 64);
	json_t *notes = NULL;

	snprintf(key, sizeof(key), "dns_notes:%s", wave);
	if (st->setting_get(st, key, buf, DNS_NOTES_MAX * (NOTE_MAX + 64) + 64) == 0)
		notes = json_loads(buf, 0, NULL);
	free(buf);
	if (!json_is_array(notes)) {
		json_decref(notes);
		notes = json_array();
	}
	return notes;
}

static int dns_log_cb(const struct log_rec *l, void *ctx)
{
	if (strcmp(l->event, "dns-changed") == 0)
		json_array_append_new(ctx, json_pack("{s:s, s:o, s:s, s:s}", "source", "detected",
			"at", time_json(l->time), "name", l->folder, "detail", l->error));
	return 0;
}

/* ---- the report ----------------------------------------------------------- */

json_t *report_json(struct store *st, const char *wave, int *code_r, char *err,
		    size_t errlen)
{
	struct report_ctx r = { .st = st };
	struct log_filter all = { NULL, NULL, 0, 0 };
	struct wave_rec w;
	struct cutover_rec c;
	json_t *rep, *dns, *states, *cutover = json_null(), *n;
	size_t i;
	int ret;

	if (wave != NULL && (ret = st->wave_get(st, wave, &w)) != 0) {
		*code_r = ret == STORE_NOTFOUND ? 404 : 500;
		if (ret == STORE_NOTFOUND)
			snprintf(err, errlen, "unknown wave \"%s\"", wave);
		else
			snprintf(err, errlen, "state database error: %s", st->error(st));
		return NULL;
	}
	r.users = json_array();
	dns = json_array();
	if (st->user_each(st, wave, user_cb, &r) < 0 || st->log_each(st, &all, dns_log_cb, dns) < 0) {
		json_decref(r.users);
		json_decref(dns);
		*code_r = 500;
		snprintf(err, errlen, "state database error: %s", st->error(st));
		return NULL;
	}
	if (wave != NULL) {
		json_t *notes = dns_notes(st, wave);
		json_array_foreach(notes, i, n)
			json_array_append(dns, n);
		json_decref(notes);
		if (st->cutover_get(st, wave, &c) == 0)
			cutover = json_pack("{s:s, s:s, s:o, s:o, s:o, s:i, s:i, s:i, s:s}",
				"kind", c.kind, "state", c.state, "at", time_json(c.at),
				"started_at", time_json(c.started_at),
				"finished_at", time_json(c.finished_at), "users", c.users,
				"ok", c.ok, "failed", c.failed, "error", c.error);
	}
	states = json_object();
	for (int k = 0; k < US_COUNT; k++)
		json_object_set_new(states, user_state_name((enum user_state)k),
				    json_integer(r.states[k]));
	rep = json_pack("{s:s?, s:o, s:o, s:{s:I, s:I, s:I, s:I, s:o}, s:o, s:o}",
		"wave", wave, "generated_at", time_json(time(NULL)), "cutover", cutover,
		"totals", "users", (json_int_t)json_array_size(r.users),
		"old_messages", (json_int_t)r.old_messages, "messages", (json_int_t)r.messages,
		"copied", (json_int_t)r.copied, "states", states,
		"dns_changes", dns, "users", r.users);
	return rep;
}

static const char *jtext(json_t *o, const char *key, char *buf, size_t len)
{
	json_t *v = json_object_get(o, key);

	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v)) {
		snprintf(buf, len, "%lld", (long long)json_integer_value(v));
		return buf;
	}
	return "";
}

static const char *const csv_columns[] = {
	"record", "wave", "user", "new_login", "state", "started_at", "finished_at",
	"routed_to", "routed_at", "old_messages", "messages", "copied", "folders", "attempts",
	"verify", "errors", "last_error", "time", "detail",
};
#define NCOLS (sizeof(csv_columns) / sizeof(csv_columns[0]))

char *report_csv(const json_t *rep)
{
	char *text = NULL, buf[64];
	size_t len = 0, i;
	json_t *u, *d;
	FILE *fp = open_memstream(&text, &len);
	const char *wave = json_string_value(json_object_get(rep, "wave"));

	if (fp == NULL)
		return NULL;
	for (i = 0; i < NCOLS; i++)
		csv_write_field(fp, csv_columns[i], i + 1 == NCOLS);
	json_array_foreach(json_object_get(rep, "users"), i, u) {
		json_t *v = json_object_get(u, "verify");
		for (size_t k = 0; k < NCOLS; k++) {
			const char *col = csv_columns[k], *val;
			if (strcmp(col, "record") == 0)
				val = "user";
			else if (strcmp(col, "verify") == 0)
				val = json_is_object(v) ? jtext(v, "result", buf, sizeof(buf)) : "";
			else
				val = jtext(u, col, buf, sizeof(buf));
			csv_write_field(fp, val, k + 1 == NCOLS);
		}
	}
	json_array_foreach(json_object_get(rep, "dns_changes"), i, d) {
		for (size_t k = 0; k < NCOLS; k++) {
			const char *col = csv_columns[k], *val = "";
			if (strcmp(col, "record") == 0)
				val = "dns-change";
			else if (strcmp(col, "wave") == 0)
				val = wave != NULL ? wave : "";
			else if (strcmp(col, "time") == 0)
				val = jtext(d, "at", buf, sizeof(buf));
			else if (strcmp(col, "detail") == 0) {
				const char *src = jtext(d, "source", buf, sizeof(buf));
				char detail[NOTE_MAX + 300];
				snprintf(detail, sizeof(detail), "%s: %s%s%s", src,
					 json_string_value(json_object_get(d, "name")) ?: "",
					 json_object_get(d, "name") != NULL ? " " : "",
					 json_string_value(json_object_get(d, "detail")) ?:
					 json_string_value(json_object_get(d, "note")) ?: "");
				csv_write_field(fp, detail, k + 1 == NCOLS);
				continue;
			}
			csv_write_field(fp, val, k + 1 == NCOLS);
		}
	}
	fclose(fp);
	return text;
}

/* ---- API ------------------------------------------------------------------ */

static int api_err(json_t **out, int code, const char *fmt, const char *arg)
{
	char msg[512];

	snprintf(msg, sizeof(msg), fmt, arg);
	*out = json_pack("{s:s}", "error", msg);
	return code;
}

static int dns_note(struct store *st, json_t *args, json_t **out)
{
	const char *wave = json_string_value(json_object_get(args, "wave"));
	const char *at = json_string_value(json_object_get(args, "at"));
	const char *note = json_string_value(json_object_get(args, "note"));
	struct wave_rec w;
	long long when = time(NULL);
	char key[160], *text;
	json_t *notes;
	int ret;

	if (wave == NULL)
		return api_err(out, 400, "%s", "report/dns needs {\"wave\", \"at\"?, \"note\"?}");
	if ((ret = st->wave_get(st, wave, &w)) != 0)
		return ret == STORE_NOTFOUND ? api_err(out, 404, "unknown wave \"%s\"", wave) :
			api_err(out, 500, "state database error: %s", st->error(st));
	if (at != NULL && (when = api_parse_time(at, time(NULL))) < 0)
		return api_err(out, 400, "at: \"%.64s\" is not a time (epoch seconds, "
			       "YYYY-MM-DD[THH:MM], or 10m/2h/3d ago)", at);
	if (note != NULL && strlen(note) > NOTE_MAX)
		return api_err(out, 400, "%s", "note: at most 300 bytes");
	notes = dns_notes(st, wave);
	if (json_array_size(notes) >= DNS_NOTES_MAX) {
		json_decref(notes);
		return api_err(out, 409, "%s", "already 100 DNS changes noted for this wave");
	}
	json_array_append_new(notes, json_pack("{s:s, s:o, s:s, s:o}", "source", "admin",
		"at", time_json(when), "note", note != NULL ? note : "",
		"entered_at", time_json(time(NULL))));
	text = json_dumps(notes, JSON_COMPACT);
	snprintf(key, sizeof(key), "dns_notes:%s", wave);
	ret = st->setting_set(st, key, text);
	free(text);
	json_decref(notes);
	if (ret < 0)
		return api_err(out, 500, "state database error: %s", st->error(st));
	{
		char t[32];
		iso_time(when, t, sizeof(t));
		evlog("info", "dns-noted", "wave", wave, "at", t, NULL);
	}
	*out = json_pack("{s:s, s:o}", "wave", wave, "dns_changes", dns_notes(st, wave));
	return 200;
}

struct series {
	int64_t start, step;
	json_t *points; /* [[t, messages], ...] in time order */
};

static int series_cb(const struct log_rec *l, void *ctx)
{
	struct series *s = ctx;
	int64_t bucket;
	json_t *last;

	if (strcmp(l->event, "folder-pulled") != 0 || l->copied <= 0)
		return 0;
	bucket = l->time - l->time % s->step;
	last = json_array_get(s->points, json_array_size(s->points) - 1);
	if (last != NULL && json_integer_value(json_array_get(last, 0)) == bucket)
		json_array_set_new(last, 1, json_integer(
			json_integer_value(json_array_get(last, 1)) + l->copied));
	else
		json_array_append_new(s->points, json_pack("[I, I]", (json_int_t)bucket,
							   (json_int_t)l->copied));
	return 0;
}

static int throughput(struct store *st, json_t *args, json_t **out)
{
	const char *wave = json_string_value(json_object_get(args, "wave"));
	const char *step = json_string_value(json_object_get(args, "step"));
	struct log_filter f = { NULL, wave, 0, 0 };
	struct series s = { 0, 60, NULL };
	struct wave_rec w;

	if (wave != NULL && *wave == '\0')
		wave = f.wave = NULL;
	if (step != NULL && ((s.step = atoll(step)) < 1 || s.step > 86400))
		return api_err(out, 400, "%s", "step: seconds, 1 to 86400");
	if (wave != NULL && st->wave_get(st, wave, &w) == STORE_NOTFOUND)
		return api_err(out, 404, "unknown wave \"%s\"", wave);
	s.points = json_array();
	if (st->log_each(st, &f, series_cb, &s) < 0) {
		json_decref(s.points);
		return api_err(out, 500, "state database error: %s", st->error(st));
	}
	*out = json_pack("{s:s?, s:I, s:o}", "wave", wave, "step", (json_int_t)s.step,
			 "points", s.points);
	return 200;
}

int report_api(struct store *st, const char *path, json_t *args, json_t **out)
{
	if (strcmp(path, "POST /v1/report/dns") == 0)
		return dns_note(st, args, out);
	if (strcmp(path, "GET /v1/throughput") == 0)
		return throughput(st, args, out);
	return api_err(out, 404, "unknown endpoint %s", path);
}
