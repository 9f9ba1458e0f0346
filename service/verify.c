/* Verification: old vs new folder by folder. See verify.h. */
#include "verify.h"

#include "ferry-contract.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct msg {
	uint32_t uid;
	char *flags;
	int64_t internaldate;
	uint64_t size;
	int has_sha;
	char sha[65];
};

struct msgs {
	struct msg *v;
	size_t n, cap;
	int oom;
};

static void msgs_free(struct msgs *m)
{
	for (size_t i = 0; i < m->n; i++)
		free(m->v[i].flags);
	free(m->v);
	memset(m, 0, sizeof(*m));
}

static int collect(void *ctx, const struct imap_message *im)
{
	struct msgs *m = ctx;
	if (m->n == m->cap) {
		size_t ncap = m->cap ? m->cap * 2 : 256;
		struct msg *nv = realloc(m->v, ncap * sizeof(*nv));
		if (nv == NULL) {
			m->oom = 1;
			return -1;
		}
		m->v = nv;
		m->cap = ncap;
	}
	struct msg *x = &m->v[m->n++];
	memset(x, 0, sizeof(*x));
	x->uid = im->uid;
	x->flags = strdup(im->flags ? im->flags : "");
	x->internaldate = im->internaldate;
	x->size = im->size;
	return 0;
}

static int cmp_msg(const void *a, const void *b)
{
	uint32_t x = ((const struct msg *)a)->uid, y = ((const struct msg *)b)->uid;
	return x < y ? -1 : x > y;
}

static struct msg *find(struct msgs *m, uint32_t uid)
{
	struct msg key = {.uid = uid};
	if (m->n == 0)
		return NULL;
	return bsearch(&key, m->v, m->n, sizeof(*m->v), cmp_msg);
}

static int store_sha(void *ctx, const struct imap_message *im)
{
	struct msg *x = find(ctx, im->uid);
	if (x != NULL && im->has_sha256) {
		x->has_sha = 1;
		memcpy(x->sha, im->sha256, 65);
	}
	return 0;
}

/* deterministic sample: a hash of (seed, uid) below the fraction */
static int sampled(const struct verify_options *o, uint32_t uid)
{
	if (o->sample >= 1.0)
		return 1;
	if (o->sample <= 0.0)
		return 0;
	uint64_t h = ((uint64_t)o->sample_seed << 32 | uid) * 0x9E3779B97F4A7C15ull;
	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	h ^= h >> 32;
	return (double)(h % 1000000) / 1e6 < o->sample;
}

/* The plugin's row for an old folder (doveadm ferry status: old_folder is
   the name as the old server lists it), NULL if it has none. INBOX is
   case-insensitive (RFC 3501 5.1). */
static json_t *name_row(const json_t *names, const char *old_name)
{
	size_t i;
	json_t *row;

	json_array_foreach(names, i, row) {
		const char *o = json_string_value(json_object_get(row, FERRY_COL_OLD_FOLDER));
		if (o == NULL || *o == '\0')
			continue;
		if (strcmp(o, old_name) == 0 ||
		    (strcasecmp(o, "INBOX") == 0 && strcasecmp(old_name, "INBOX") == 0))
			return row;
	}
	return NULL;
}

static const char *row_str(const json_t *row, const char *key)
{
	const char *v = json_string_value(json_object_get(row, key));
	return v != NULL ? v : "";
}

struct side {
	struct imap_client *c;
	struct imap_folder_list list;
};

static int selectable(const struct imap_folder *f)
{
	return !(f->flags & IMAP_FOLDER_NOSELECT);
}

static void add_diff(json_t *diffs, size_t max, json_t *d)
{
	if (json_array_size(diffs) < max)
		json_array_append_new(diffs, d);
	else
		json_decref(d);
}

static void count(json_t *counts, const char *key)
{
	json_t *v = json_object_get(counts, key);
	json_object_set_new(counts, key, json_integer(v ? json_integer_value(v) + 1 : 1));
}

static json_t *diff_str(uint32_t uid, const char *field, const char *o, const char *n)
{
	return json_pack("{s:I,s:s,s:s,s:s}", "uid", (json_int_t)uid, "field", field, "old", o, "new",
			 n);
}

static json_t *diff_int(uint32_t uid, const char *field, json_int_t o, json_int_t n)
{
	return json_pack("{s:I,s:s,s:I,s:I}", "uid", (json_int_t)uid, "field", field, "old", o, "new",
			 n);
}

/* Compare one folder; returns the folder's JSON or NULL on a hard error. */
static json_t *verify_folder(struct side *old, struct side *new, const struct imap_folder *of,
			     const struct imap_folder *nf, const char *name,
			     const struct verify_options *opt, char *err, size_t errlen)
{
	size_t maxd = opt->max_diffs ? opt->max_diffs : 50;
	json_t *f = json_pack("{s:s,s:s}", "name", name, "old_name", of->name);
	json_t *diffs = json_array(), *counts = json_object();
	struct imap_mailbox_info om, nm;
	struct msgs o = {0}, n = {0};
	int fail = 0;
	if (imap_select(old->c, of->name, 1, &om) < 0 || imap_select(new->c, nf->name, 1, &nm) < 0) {
		snprintf(err, errlen, "%s",
			 imap_client_error(imap_client_ok(old->c) && !imap_client_error(new->c) ? old->c
												 : new->c));
		goto hard;
	}
	json_object_set_new(f, "uidvalidity", json_pack("{s:I,s:I}", "old", (json_int_t)om.uidvalidity,
							"new", (json_int_t)nm.uidvalidity));
	json_object_set_new(f, "uidnext", json_pack("{s:I,s:I}", "old", (json_int_t)om.uidnext, "new",
						    (json_int_t)nm.uidnext));
	if (om.uidvalidity != nm.uidvalidity) {
		count(counts, "uidvalidity");
		add_diff(diffs, maxd, json_pack("{s:s,s:I,s:I}", "field", "uidvalidity", "old",
						(json_int_t)om.uidvalidity, "new",
						(json_int_t)nm.uidvalidity));
		fail = 1;
	}
	if ((om.exists && imap_uid_fetch(old->c, "1:*", IMAP_FETCH_META, collect, &o) < 0) ||
	    (nm.exists && imap_uid_fetch(new->c, "1:*", IMAP_FETCH_META, collect, &n) < 0) ||
	    o.oom || n.oom) {
		snprintf(err, errlen, "%s", o.oom || n.oom ? "out of memory" : imap_client_error(om.exists ? old->c : new->c));
		if (!(o.oom || n.oom) && imap_client_error(new->c) && nm.exists)
			snprintf(err, errlen, "%s", imap_client_error(new->c));
		goto hard;
	}
	if (o.n > 0) /* qsort(NULL, 0) is undefined */
		qsort(o.v, o.n, sizeof(*o.v), cmp_msg);
	if (n.n > 0)
		qsort(n.v, n.n, sizeof(*n.v), cmp_msg);
	json_object_set_new(f, "messages", json_pack("{s:I,s:I}", "old", (json_int_t)o.n, "new",
						     (json_int_t)n.n));
	/* merge by UID */
	uint32_t *common = malloc((o.n + 1) * sizeof(*common));
	size_t ncommon = 0, i = 0, j = 0, extra_new = 0, after_pass = 0;
	while (i < o.n || j < n.n) {
		if (j >= n.n || (i < o.n && o.v[i].uid < n.v[j].uid)) {
			if (o.v[i].uid >= nm.uidnext && om.uidvalidity == nm.uidvalidity) {
				/* arrived on OLD after the last pass (NEW's UIDNEXT is
				   OLD's as that pass saw it): the next pass copies it;
				   a miss is a UID below it */
				after_pass++;
				i++;
				continue;
			}
			count(counts, "missing");
			add_diff(diffs, maxd, json_pack("{s:I,s:s}", "uid", (json_int_t)o.v[i].uid,
							"field", "missing on new"));
			fail = 1;
			i++;
		} else if (i >= o.n || n.v[j].uid < o.v[i].uid) {
			if (n.v[j].uid < om.uidnext || om.uidvalidity != nm.uidvalidity) {
				/* below old UIDNEXT a UID may only name an old message */
				count(counts, "unexpected");
				add_diff(diffs, maxd, json_pack("{s:I,s:s}", "uid", (json_int_t)n.v[j].uid,
								"field", "not on old (below old UIDNEXT)"));
				fail = 1;
			} else {
				extra_new++; /* new mail on the new server */
			}
			j++;
		} else {
			struct msg *a = &o.v[i], *b = &n.v[j];
			if (strcasecmp(a->flags, b->flags) != 0) {
				count(counts, "flags");
				add_diff(diffs, maxd, diff_str(a->uid, "flags", a->flags, b->flags));
				fail = 1;
			}
			if (a->internaldate != b->internaldate) {
				count(counts, "internaldate");
				add_diff(diffs, maxd,
					 diff_int(a->uid, "internaldate", a->internaldate, b->internaldate));
				fail = 1;
			}
			if (a->size != b->size) {
				count(counts, "size");
				add_diff(diffs, maxd, diff_int(a->uid, "size", (json_int_t)a->size,
							       (json_int_t)b->size));
				fail = 1;
			}
			if (sampled(opt, a->uid))
				common[ncommon++] = a->uid;
			i++, j++;
		}
	}
	size_t batch = opt->fetch_batch ? opt->fetch_batch : 50;
	if (ncommon > 0 &&
	    (imap_uid_fetch_pipelined(old->c, common, ncommon, batch, IMAP_FETCH_SHA256, store_sha, &o) < 0 ||
	     imap_uid_fetch_pipelined(new->c, common, ncommon, batch, IMAP_FETCH_SHA256, store_sha, &n) < 0)) {
		snprintf(err, errlen, "%s",
			 imap_client_error(imap_client_ok(new->c) ? old->c : new->c));
		free(common);
		goto hard;
	}
	size_t hashed = 0;
	for (size_t k = 0; k < ncommon; k++) {
		struct msg *a = find(&o, common[k]), *b = find(&n, common[k]);
		if (a == NULL || b == NULL)
			continue;
		if (!a->has_sha || !b->has_sha) {
			count(counts, "body");
			add_diff(diffs, maxd, json_pack("{s:I,s:s,s:s}", "uid", (json_int_t)a->uid, "field",
							"body", "problem", "body not returned"));
			fail = 1;
			continue;
		}
		hashed++;
		if (strcmp(a->sha, b->sha) != 0) {
			count(counts, "body");
			add_diff(diffs, maxd, diff_str(a->uid, "body sha256", a->sha, b->sha));
			fail = 1;
		}
	}
	free(common);
	json_object_set_new(f, "bodies_compared", json_integer((json_int_t)hashed));
	json_object_set_new(f, "new_only_messages", json_integer((json_int_t)extra_new));
	json_object_set_new(f, "old_after_last_pass", json_integer((json_int_t)after_pass));
	json_object_set_new(f, "result", json_string(fail ? "fail" : "pass"));
	json_object_set_new(f, "counts", counts);
	json_object_set_new(f, "differences", diffs);
	msgs_free(&o);
	msgs_free(&n);
	return f;
hard:
	msgs_free(&o);
	msgs_free(&n);
	json_decref(diffs);
	json_decref(counts);
	json_decref(f);
	return NULL;
}

static json_t *server_json(const struct imap_client_settings *s, struct imap_client *c)
{
	return json_pack("{s:s,s:i,s:s,s:s}", "host", s->host, "port",
			 (int)imap_client_settings(c)->port, "tls",
			 s->tls == IMAP_TLS_IMAPS ? "imaps" : s->tls == IMAP_TLS_STARTTLS ? "starttls" : "none",
			 "capabilities", imap_client_caps(c));
}

json_t *ferry_verify(const struct imap_client_settings *old_set,
		     const struct imap_client_settings *new_set, const struct verify_options *opt_in,
		     char *err, size_t errlen)
{
	struct verify_options opt = {.sample = 1.0};
	if (opt_in != NULL)
		opt = *opt_in;
	struct side old = {0}, new = {0};
	json_t *report = NULL;
	if ((old.c = imap_sync_connect(old_set, NULL, err, errlen)) == NULL ||
	    (new.c = imap_sync_connect(new_set, NULL, err, errlen)) == NULL)
		goto out;
	if (imap_list(old.c, &old.list) < 0 || imap_list(new.c, &new.list) < 0) {
		snprintf(err, errlen, "%s",
			 imap_client_error(imap_client_error(old.c) ? old.c : new.c));
		goto out;
	}
	if (!json_is_array(opt.names)) {
		snprintf(err, errlen, "no folder names from the plugin (doveadm ferry status)");
		goto out;
	}
	report = json_object();
	json_object_set_new(report, "kind", json_string("verify"));
	json_object_set_new(report, "user", json_string(old_set->user));
	json_object_set_new(report, "old", server_json(old_set, old.c));
	json_object_set_new(report, "new", server_json(new_set, new.c));
	json_object_set_new(report, "sample", json_real(opt.sample));
	json_t *folders = json_array(), *missing = json_array(), *extra = json_array(),
	       *excluded = json_array(), *skipped = json_array();
	int fail = 0;
	const char **mapped = calloc(old.list.n + 1, sizeof(*mapped));
	size_t nmapped = 0;
	for (size_t i = 0; i < old.list.n; i++) {
		const struct imap_folder *of = &old.list.v[i];
		if (!selectable(of))
			continue;
		/* which new folder this old one became: the plugin's answer */
		json_t *row = name_row(opt.names, of->name);
		const char *name = row != NULL ? row_str(row, FERRY_COL_FOLDER) : "";
		const char *state = row != NULL ? row_str(row, FERRY_COL_STATE) : "";
		if (opt.only_folder && strcmp(opt.only_folder, *name ? name : of->name) != 0)
			continue;
		if (strcmp(state, FERRY_STATE_EXCLUDED) == 0) {
			json_array_append_new(excluded, json_string(of->name));
			continue;
		}
		if (*name == '\0' || strcmp(state, FERRY_STATE_SKIPPED) == 0) {
			/* skipped by the plugin, or not known to it (made on OLD
			   after the last pass): not migrated is not verified */
			json_array_append_new(row != NULL ? skipped : missing,
					      row != NULL ? json_pack("{s:s,s:s}", "name", of->name,
								      "reason", row_str(row, FERRY_COL_REASON))
							  : json_string(of->name));
			fail = 1;
			continue;
		}
		mapped[nmapped++] = name;
		const struct imap_folder *nf = NULL;
		for (size_t k = 0; k < new.list.n && nf == NULL; k++)
			if (strcmp(new.list.v[k].name, name) == 0 && selectable(&new.list.v[k]))
				nf = &new.list.v[k];
		if (nf == NULL) {
			json_array_append_new(missing, json_string(name));
			fail = 1;
			continue;
		}
		json_t *fj = verify_folder(&old, &new, of, nf, name, &opt, err, errlen);
		if (fj == NULL) {
			json_decref(folders);
			json_decref(missing);
			json_decref(extra);
			json_decref(excluded);
			json_decref(skipped);
			json_decref(report);
			report = NULL;
			free(mapped);
			goto out;
		}
		if (strcmp(json_string_value(json_object_get(fj, "result")), "pass") != 0)
			fail = 1;
		json_array_append_new(folders, fj);
	}
	for (size_t k = 0; k < new.list.n && !opt.only_folder; k++) {
		int found = 0;
		if (!selectable(&new.list.v[k]))
			continue;
		for (size_t m = 0; m < nmapped && !found; m++)
			found = strcmp(mapped[m], new.list.v[k].name) == 0;
		if (!found)
			json_array_append_new(extra, json_string(new.list.v[k].name));
	}
	free(mapped);
	json_object_set_new(report, "folders", folders);
	json_object_set_new(report, "folders_missing_on_new", missing);
	json_object_set_new(report, "folders_only_on_new", extra);
	json_object_set_new(report, "folders_excluded", excluded);
	json_object_set_new(report, "folders_skipped", skipped);
	json_object_set_new(report, "result", json_string(fail ? "fail" : "pass"));
out:
	imap_folder_list_free(&old.list);
	imap_folder_list_free(&new.list);
	imap_sync_close(old.c);
	imap_sync_close(new.c);
	return report;
}

int ferry_verify_passed(const json_t *report)
{
	const char *r = json_string_value(json_object_get(report, "result"));
	return r != NULL && strcmp(r, "pass") == 0;
}

/* a growing string */
struct sb {
	char *s;
	size_t len, cap;
};

static void sbf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sbf(struct sb *b, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (b->s && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t ncap = (b->cap + (size_t)n + 1) * 2;
		char *ns = realloc(b->s, ncap);
		if (ns == NULL)
			return;
		b->s = ns;
		b->cap = ncap;
	}
}

char *ferry_verify_text(const json_t *r)
{
	struct sb b = {0};
	sbf(&b, "verify %s: %s\n", json_string_value(json_object_get(r, "user")),
	    ferry_verify_passed(r) ? "PASS" : "FAIL");
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(r, "folders_missing_on_new"), i, v)
		sbf(&b, "  folder \"%s\": missing on new\n", json_string_value(v));
	json_array_foreach(json_object_get(r, "folders_skipped"), i, v)
		sbf(&b, "  folder \"%s\": not migrated: %s\n",
		    json_string_value(json_object_get(v, "name")),
		    json_string_value(json_object_get(v, "reason")));
	json_array_foreach(json_object_get(r, "folders_excluded"), i, v)
		sbf(&b, "  folder \"%s\": excluded (ferry_exclude; not a failure)\n",
		    json_string_value(v));
	json_array_foreach(json_object_get(r, "folders_only_on_new"), i, v)
		sbf(&b, "  folder \"%s\": only on new (created there; not a failure)\n",
		    json_string_value(v));
	json_t *f;
	json_array_foreach(json_object_get(r, "folders"), i, f)
	{
		json_t *m = json_object_get(f, "messages");
		sbf(&b, "  folder \"%s\": %s, %lld/%lld messages, %lld bodies compared\n",
		    json_string_value(json_object_get(f, "name")),
		    json_string_value(json_object_get(f, "result")),
		    (long long)json_integer_value(json_object_get(m, "old")),
		    (long long)json_integer_value(json_object_get(m, "new")),
		    (long long)json_integer_value(json_object_get(f, "bodies_compared")));
		if (json_integer_value(json_object_get(f, "old_after_last_pass")) > 0)
			sbf(&b, "    %lld arrived on old after the last pass (the next pass copies them)\n",
			    (long long)json_integer_value(json_object_get(f, "old_after_last_pass")));
		size_t k;
		json_t *d;
		json_array_foreach(json_object_get(f, "differences"), k, d)
		{
			json_t *o = json_object_get(d, "old"), *n = json_object_get(d, "new");
			sbf(&b, "    uid %lld: %s", (long long)json_integer_value(json_object_get(d, "uid")),
			    json_string_value(json_object_get(d, "field")));
			if (json_is_string(o))
				sbf(&b, ": old \"%s\" new \"%s\"", json_string_value(o), json_string_value(n));
			else if (json_is_integer(o))
				sbf(&b, ": old %lld new %lld", (long long)json_integer_value(o),
				    (long long)json_integer_value(n));
			sbf(&b, "\n");
		}
	}
	return b.s;
}
