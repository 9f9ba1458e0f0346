/* Sieve scripts from the old server to NEW. See sieve.h. */
#include "sieve.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "managesieve.h"

/* ---- the fileinto rewriter ---------------------------------------------------- */

enum tok { T_END, T_IDENT, T_TAG, T_STRING, T_OTHER, T_SEMI, T_ERROR };

struct lexer {
	const char *s;
	size_t pos, len;
	/* the last token */
	enum tok t;
	size_t start, end; /* its bytes in s */
	int multiline;     /* a text: string (its value is not a plain quoted one) */
	char err[200];
};

static void skip_space(struct lexer *lx)
{
	for (;;) {
		while (lx->pos < lx->len && isspace((unsigned char)lx->s[lx->pos]))
			lx->pos++;
		if (lx->pos < lx->len && lx->s[lx->pos] == '#') {
			while (lx->pos < lx->len && lx->s[lx->pos] != '\n')
				lx->pos++;
			continue;
		}
		if (lx->pos + 1 < lx->len && lx->s[lx->pos] == '/' && lx->s[lx->pos + 1] == '*') {
			const char *e = strstr(lx->s + lx->pos + 2, "*/");
			lx->pos = e ? (size_t)(e - lx->s) + 2 : lx->len;
			continue;
		}
		return;
	}
}

static enum tok next(struct lexer *lx)
{
	skip_space(lx);
	lx->start = lx->pos;
	lx->multiline = 0;
	if (lx->pos >= lx->len)
		return lx->t = T_END;
	char c = lx->s[lx->pos];
	if (c == '"') {
		for (lx->pos++; lx->pos < lx->len && lx->s[lx->pos] != '"'; lx->pos++)
			if (lx->s[lx->pos] == '\\')
				lx->pos++;
		if (lx->pos >= lx->len) {
			snprintf(lx->err, sizeof(lx->err), "unterminated string at byte %zu", lx->start);
			return lx->t = T_ERROR;
		}
		lx->end = ++lx->pos;
		return lx->t = T_STRING;
	}
	if (isalpha((unsigned char)c) || c == '_' || c == ':') {
		lx->pos++;
		while (lx->pos < lx->len &&
		       (isalnum((unsigned char)lx->s[lx->pos]) || lx->s[lx->pos] == '_'))
			lx->pos++;
		lx->end = lx->pos;
		if (c != ':' && lx->end - lx->start == 4 && strncasecmp(lx->s + lx->start, "text", 4) == 0 &&
		    lx->pos < lx->len && lx->s[lx->pos] == ':') {
			/* text: ... CRLF "." CRLF (RFC 5228 2.4.2) */
			const char *p = lx->s + lx->pos;
			for (;;) {
				const char *nl = strchr(p, '\n');
				if (nl == NULL) {
					snprintf(lx->err, sizeof(lx->err),
						 "multi-line string at byte %zu not ended by '.'", lx->start);
					return lx->t = T_ERROR;
				}
				p = nl + 1;
				if (p[0] == '.' && (p[1] == '\n' || (p[1] == '\r' && p[2] == '\n'))) {
					p += p[1] == '\n' ? 2 : 3;
					break;
				}
			}
			lx->pos = lx->end = (size_t)(p - lx->s);
			lx->multiline = 1;
			return lx->t = T_STRING;
		}
		return lx->t = c == ':' ? T_TAG : T_IDENT;
	}
	lx->end = ++lx->pos;
	return lx->t = c == ';' ? T_SEMI : T_OTHER;
}

/* a quoted string's value (RFC 5228 2.4.2: \x is x) */
static char *unquote(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;
	if (out == NULL)
		return NULL;
	for (size_t i = 1; i + 1 < len; i++) {
		if (s[i] == '\\' && i + 2 < len)
			i++;
		*o++ = s[i];
	}
	*o = '\0';
	return out;
}

static char *quote(const char *s)
{
	char *out = malloc(2 * strlen(s) + 3), *o = out;
	if (out == NULL)
		return NULL;
	*o++ = '"';
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			*o++ = '\\';
		*o++ = *s;
	}
	*o++ = '"';
	*o = '\0';
	return out;
}

static const char *map_lookup(const struct sieve_folder_map *map, const char *name)
{
	for (size_t i = 0; i < map->n; i++)
		if (strcmp(map->old_names[i], name) == 0)
			return map->new_names[i];
	if (strcasecmp(name, "INBOX") == 0)
		return "INBOX";
	if (map->old_prefix != NULL && map->old_prefix[0] != '\0') {
		/* the script names "INBOX.Work", the map "Work" (or the other way) */
		size_t pl = strlen(map->old_prefix);
		if (strncmp(name, map->old_prefix, pl) == 0 && name[pl] != '\0') {
			const char *to = map_lookup(map, name + pl);
			if (to != NULL)
				return to;
		}
		for (size_t i = 0; i < map->n; i++)
			if (strncmp(map->old_names[i], map->old_prefix, pl) == 0 &&
			    strcmp(map->old_names[i] + pl, name) == 0)
				return map->new_names[i];
	}
	return NULL;
}

static void add_rewrite(struct sieve_rewrites *out, const char *from, const char *to,
			const char *note)
{
	struct sieve_rewrite *v = realloc(out->v, (out->n + 1) * sizeof(*v));
	if (v == NULL)
		return;
	out->v = v;
	v[out->n].from = strdup(from);
	v[out->n].to = to ? strdup(to) : NULL;
	v[out->n].note = note;
	out->n++;
}

/* skips one argument after a tag that takes one: a string or [list] */
static int skip_tag_arg(struct lexer *lx)
{
	enum tok t = next(lx);
	if (t == T_STRING)
		return 0;
	if (t == T_OTHER && lx->s[lx->start] == '[') {
		while ((t = next(lx)) != T_END && t != T_ERROR)
			if (t == T_OTHER && lx->s[lx->start] == ']')
				return 0;
	}
	return t == T_ERROR ? -1 : 0;
}

char *sieve_rewrite_fileinto(const char *script, const struct sieve_folder_map *map,
			     struct sieve_rewrites *out, char *err, size_t errlen)
{
	struct lexer lx = {.s = script, .len = strlen(script)};
	size_t cap = lx.len + 64, olen = 0, copied = 0;
	char *res = malloc(cap);
	int command_pos = 1; /* at the start of a command */
	memset(out, 0, sizeof(*out));
	if (res == NULL)
		return NULL;
	for (;;) {
		enum tok t = next(&lx);
		if (t == T_ERROR) {
			snprintf(err, errlen, "%s", lx.err);
			free(res);
			sieve_rewrites_free(out);
			return NULL;
		}
		if (t == T_END)
			break;
		int is_fileinto = command_pos && t == T_IDENT && lx.end - lx.start == 8 &&
				  strncasecmp(script + lx.start, "fileinto", 8) == 0;
		command_pos = t == T_SEMI || (t == T_OTHER && strchr("{}", script[lx.start]) != NULL);
		if (!is_fileinto)
			continue;
		/* fileinto [:copy] [:create] [:flags X] [:specialuse X] [:mailboxid X] "folder"; */
		size_t fstart = 0, fend = 0;
		int multiline = 0;
		while ((t = next(&lx)) != T_SEMI && t != T_END && t != T_ERROR) {
			if (t == T_TAG) {
				size_t n = lx.end - lx.start;
				const char *tag = script + lx.start;
				if ((n == 6 && strncasecmp(tag, ":flags", 6) == 0) ||
				    (n == 11 && strncasecmp(tag, ":specialuse", 11) == 0) ||
				    (n == 10 && strncasecmp(tag, ":mailboxid", 10) == 0))
					if (skip_tag_arg(&lx) < 0) {
						t = T_ERROR;
						break;
					}
			} else if (t == T_STRING) {
				fstart = lx.start;
				fend = lx.end;
				multiline = lx.multiline;
			}
		}
		if (t == T_ERROR) {
			snprintf(err, errlen, "%s", lx.err);
			free(res);
			sieve_rewrites_free(out);
			return NULL;
		}
		command_pos = 1;
		if (fend == 0)
			continue;
		if (multiline) {
			add_rewrite(out, "(multi-line string)", NULL, "multi-line folder name: not rewritten");
			continue;
		}
		char *name = unquote(script + fstart, fend - fstart);
		if (name == NULL)
			continue;
		const char *to = strstr(name, "${") ? NULL : map_lookup(map, name);
		if (to == NULL) {
			add_rewrite(out, name, NULL,
				    strstr(name, "${") ? "uses variables: not rewritten"
						       : "not a migrated folder: kept as it is");
		} else if (strcmp(to, name) != 0) {
			char *q = quote(to);
			size_t need = olen + (fstart - copied) + (q ? strlen(q) : 0) + (lx.len - fend) + 1;
			if (q != NULL && need > cap) {
				char *nr = realloc(res, need + 64);
				if (nr == NULL) {
					free(q);
					free(name);
					continue;
				}
				res = nr;
				cap = need + 64;
			}
			if (q != NULL) {
				memcpy(res + olen, script + copied, fstart - copied);
				olen += fstart - copied;
				memcpy(res + olen, q, strlen(q));
				olen += strlen(q);
				copied = fend;
				add_rewrite(out, name, to, NULL);
			}
			free(q);
		}
		free(name);
	}
	if (olen + (lx.len - copied) + 1 > cap) {
		char *nr = realloc(res, olen + (lx.len - copied) + 1);
		if (nr == NULL) {
			free(res);
			sieve_rewrites_free(out);
			return NULL;
		}
		res = nr;
	}
	memcpy(res + olen, script + copied, lx.len - copied);
	res[olen + (lx.len - copied)] = '\0';
	return res;
}

void sieve_rewrites_free(struct sieve_rewrites *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->v[i].from);
		free(r->v[i].to);
	}
	free(r->v);
	memset(r, 0, sizeof(*r));
}

char *sieve_disabled_copy(const char *script, const char *error)
{
	size_t n = strlen(script), lines = 1;
	for (const char *p = script; *p; p++)
		lines += *p == '\n';
	size_t cap = n + 2 * lines + strlen(error) * 2 + 400;
	char *out = malloc(cap), *o = out;
	if (out == NULL)
		return NULL;
	o += sprintf(o, "# Ferry: this script did not compile on the new server and is kept\n"
			"# here inactive, every original line after \"# \". The compiler said:\n# ");
	for (const char *e = error; *e; e++) {
		if (*e == '\r')
			continue;
		*o++ = *e;
		if (*e == '\n') {
			*o++ = '#';
			*o++ = ' ';
		}
	}
	o += sprintf(o, "\n#\n");
	const char *p = script;
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t l = nl ? (size_t)(nl - p) + 1 : strlen(p);
		*o++ = '#';
		*o++ = ' ';
		memcpy(o, p, l);
		o += l;
		p += l;
	}
	if (o > out && o[-1] != '\n')
		*o++ = '\n';
	*o = '\0';
	return out;
}

/* ---- the migration -------------------------------------------------------------- */

static const char *last_error(struct imap_client *c, const char *fallback)
{
	const char *e = imap_client_error(c);
	return e ? e : fallback;
}

/* the server's words after "PUTSCRIPT "name": NO " */
static const char *server_words(const char *e)
{
	const char *p = strstr(e, ": NO ");
	return p ? p + 5 : e;
}

static json_t *rewrites_json(const struct sieve_rewrites *rw)
{
	json_t *a = json_array();
	for (size_t i = 0; i < rw->n; i++) {
		json_t *o = json_pack("{s:s}", "from", rw->v[i].from);
		if (rw->v[i].to)
			json_object_set_new(o, "to", json_string(rw->v[i].to));
		if (rw->v[i].note)
			json_object_set_new(o, "note", json_string(rw->v[i].note));
		json_array_append_new(a, o);
	}
	return a;
}

static const char *find_text(const struct sieve_script_list *l, char **texts, const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].name, name) == 0)
			return texts[i];
	return NULL;
}

json_t *ferry_sieve_migrate(const struct imap_client_settings *old_set,
			    const struct imap_client_settings *new_set,
			    const struct sieve_folder_map *map,
			    const struct sieve_migrate_options *opt, char *err, size_t errlen)
{
	struct sieve_script_list ol = {0}, nl = {0};
	char **otexts = NULL, **ntexts = NULL;
	size_t nntexts = 0; /* nl is listed again at the end: its count changes */
	json_t *report = NULL;
	struct imap_client *nc = NULL, *oc = ms_connect(old_set, err, errlen);
	if (oc == NULL)
		return NULL;
	if (ms_listscripts(oc, &ol) < 0) {
		snprintf(err, errlen, "%s", last_error(oc, "LISTSCRIPTS failed"));
		goto out;
	}
	otexts = calloc(ol.n + 1, sizeof(*otexts));
	for (size_t i = 0; i < ol.n; i++)
		if (ms_getscript(oc, ol.v[i].name, &otexts[i]) < 0) {
			snprintf(err, errlen, "GETSCRIPT \"%s\": %s", ol.v[i].name,
				 last_error(oc, "empty, larger than 1 MiB or holds NUL bytes"));
			goto out;
		}
	imap_sync_close(oc);
	oc = NULL;

	if ((nc = ms_connect(new_set, err, errlen)) == NULL)
		goto out;
	if (ms_listscripts(nc, &nl) < 0) {
		snprintf(err, errlen, "%s", last_error(nc, "LISTSCRIPTS failed"));
		goto out;
	}
	ntexts = calloc(nl.n + 1, sizeof(*ntexts));
	nntexts = nl.n;
	const char *new_active = NULL, *old_active = NULL;
	for (size_t i = 0; i < nl.n; i++) {
		if (nl.v[i].active)
			new_active = nl.v[i].name;
		if (opt->keep_new && ms_getscript(nc, nl.v[i].name, &ntexts[i]) < 0)
			ntexts[i] = NULL;
	}

	report = json_pack("{s:s, s:[]}", "user", old_set->user, "scripts");
	json_t *scripts = json_object_get(report, "scripts");
	int failed = 0, active_ok = 0;
	for (size_t i = 0; i < ol.n; i++) {
		const char *name = ol.v[i].name;
		if (ol.v[i].active)
			old_active = name;
		struct sieve_rewrites rw;
		char rerr[256] = "";
		char *text = sieve_rewrite_fileinto(otexts[i], map, &rw, rerr, sizeof(rerr));
		json_t *s = json_pack("{s:s, s:b, s:I}", "name", name, "active_on_old", ol.v[i].active,
				      "bytes", (json_int_t)strlen(otexts[i]));
		json_array_append_new(scripts, s);
		if (text == NULL) {
			/* NEW's compiler will judge it as it is */
			json_object_set_new(s, "rewrite_error", json_string(rerr));
			text = strdup(otexts[i]);
		} else {
			json_object_set_new(s, "fileinto", rewrites_json(&rw));
			sieve_rewrites_free(&rw);
		}
		const char *existing = find_text(&nl, ntexts, name);
		if (opt->keep_new && existing != NULL && strcmp(existing, text) != 0) {
			json_object_set_new(s, "result", json_string("kept-new"));
			json_object_set_new(s, "note",
					    json_string("changed on the new server: left as it is there"));
			if (ol.v[i].active)
				active_ok = 1;
			free(text);
			continue;
		}
		if (ms_putscript(nc, name, text) == 0) {
			json_object_set_new(s, "result", json_string("stored"));
			if (ol.v[i].active)
				active_ok = 1;
		} else if (!imap_client_ok(nc)) {
			snprintf(err, errlen, "%s", last_error(nc, "connection lost"));
			free(text);
			json_decref(report);
			report = NULL;
			goto out;
		} else {
			/* NEW's compiler refused it (or quota): keep it, inactive */
			char why[1024];
			snprintf(why, sizeof(why), "%s", server_words(last_error(nc, "refused")));
			for (size_t l = strlen(why); l > 0 && isspace((unsigned char)why[l - 1]);)
				why[--l] = '\0';
			char *copy = sieve_disabled_copy(otexts[i], why);
			int kept = copy != NULL && ms_putscript(nc, name, copy) == 0;
			free(copy);
			failed++;
			json_object_set_new(s, "result", json_string(kept ? "kept-inactive" : "not-stored"));
			json_object_set_new(s, "error", json_string(why));
			if (!kept)
				json_object_set_new(s, "store_error",
						    json_string(last_error(nc, "refused")));
		}
		free(text);
	}
	json_object_set_new(report, "old_active", old_active ? json_string(old_active) : json_null());
	if (old_active != NULL && active_ok) {
		if (!(opt->keep_new && new_active != NULL && strcmp(new_active, old_active) != 0)) {
			if (ms_setactive(nc, old_active) < 0) {
				failed++;
				json_object_set_new(report, "activate_error",
						    json_string(last_error(nc, "SETACTIVE failed")));
			} else {
				new_active = old_active;
			}
		}
	} else if (old_active != NULL) {
		json_object_set_new(report, "activate_error",
				    json_string("the old server's active script did not compile on the "
						"new server: not activated"));
	}
	/* LISTSCRIPTS again: what NEW says is active now */
	ms_script_list_free(&nl);
	new_active = NULL;
	if (ms_listscripts(nc, &nl) == 0)
		for (size_t i = 0; i < nl.n; i++)
			if (nl.v[i].active)
				new_active = nl.v[i].name;
	json_object_set_new(report, "new_active", new_active ? json_string(new_active) : json_null());
	if (opt->deactivate_old && old_active != NULL && new_active != NULL &&
	    strcmp(old_active, new_active) == 0) {
		char derr[1024];
		if (ferry_sieve_set_active(old_set, "", derr, sizeof(derr)) == 0)
			json_object_set_new(report, "old_deactivated", json_string(old_active));
		else {
			failed++;
			json_object_set_new(report, "deactivate_error", json_string(derr));
		}
	}
	json_object_set_new(report, "failed", json_integer(failed));
	json_object_set_new(report, "passed", json_boolean(failed == 0));
out:
	if (otexts)
		for (size_t i = 0; i < ol.n; i++)
			free(otexts[i]);
	if (ntexts)
		for (size_t i = 0; i < nntexts; i++)
			free(ntexts[i]);
	free(otexts);
	free(ntexts);
	ms_script_list_free(&ol);
	ms_script_list_free(&nl);
	imap_sync_close(oc);
	imap_sync_close(nc);
	return report;
}

int ferry_sieve_set_active(const struct imap_client_settings *set, const char *name, char *err,
			   size_t errlen)
{
	struct imap_client *c = ms_connect(set, err, errlen);
	if (c == NULL)
		return -1;
	int r = ms_setactive(c, name);
	if (r < 0)
		snprintf(err, errlen, "%s", last_error(c, "SETACTIVE failed"));
	imap_sync_close(c);
	return r;
}

int ferry_sieve_passed(const json_t *report)
{
	return json_is_true(json_object_get(report, "passed"));
}

char *ferry_sieve_text(const json_t *report)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL)
		return NULL;
	const char *oa = json_string_value(json_object_get(report, "old_active"));
	const char *na = json_string_value(json_object_get(report, "new_active"));
	const char *restored = json_string_value(json_object_get(report, "restored_active"));
	if (restored != NULL) {
		fprintf(f, "sieve %s: %s is the old server's active script again (rollback)\n",
			json_string_value(json_object_get(report, "user")), restored);
		fclose(f);
		return buf;
	}
	fprintf(f, "sieve %s: active on old: %s, active on new: %s\n",
		json_string_value(json_object_get(report, "user")), oa ? oa : "(none)",
		na ? na : "(none)");
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(report, "scripts"), i, s) {
		fprintf(f, "  %-24s %-14s%s", json_string_value(json_object_get(s, "name")),
			json_string_value(json_object_get(s, "result")),
			json_is_true(json_object_get(s, "active_on_old")) ? " (active on old)" : "");
		const char *e = json_string_value(json_object_get(s, "error"));
		if (e)
			fprintf(f, ": %s", e);
		fputc('\n', f);
		size_t j;
		json_t *r;
		json_array_foreach(json_object_get(s, "fileinto"), j, r) {
			const char *to = json_string_value(json_object_get(r, "to"));
			const char *note = json_string_value(json_object_get(r, "note"));
			fprintf(f, "    fileinto \"%s\" -> %s%s%s\n",
				json_string_value(json_object_get(r, "from")), to ? "\"" : "",
				to ? to : note, to ? "\"" : "");
		}
	}
	const char *ae = json_string_value(json_object_get(report, "activate_error"));
	if (ae)
		fprintf(f, "  activation: %s\n", ae);
	const char *off = json_string_value(json_object_get(report, "old_deactivated"));
	if (off)
		fprintf(f, "  %s switched off on the old server (a rollback switches it on again)\n", off);
	fclose(f);
	return buf;
}
