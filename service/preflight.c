/* Preflight of one user. See preflight.h. */
#include "preflight.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sizes {
	uint64_t count, bytes, largest;
	uint32_t largest_uid;
};

static int add_size(void *ctx, const struct imap_message *m)
{
	struct sizes *s = ctx;
	s->count++;
	s->bytes += m->size;
	if (m->size > s->largest) {
		s->largest = m->size;
		s->largest_uid = m->uid;
	}
	return 0;
}

static const char *tls_name(enum imap_tls_mode t)
{
	return t == IMAP_TLS_IMAPS ? "imaps" : t == IMAP_TLS_STARTTLS ? "starttls" : "none";
}

static json_t *server_base(const struct imap_client_settings *s, struct imap_client *c,
			   const struct imap_identity *id)
{
	struct imap_namespace ns = {0};
	json_t *j = json_pack("{s:s,s:i,s:s,s:b,s:s}", "host", s->host, "port",
			      (int)imap_client_settings(c)->port, "tls", tls_name(s->tls), "login", 1,
			      "capabilities", imap_client_caps(c));
	if (imap_namespace_personal(c, &ns) == 0 && ns.present) {
		char sep[2] = {ns.sep, 0};
		json_object_set_new(j, "namespace",
				    json_pack("{s:s,s:s}", "prefix", ns.prefix, "separator", sep));
	} else {
		json_object_set_new(j, "namespace", json_null());
	}
	if (id != NULL && id->impersonated)
		json_object_set_new(j, "identity",
				    json_pack("{s:b,s:s,s:I}", "impersonated", 1, "check", id->result,
					      "inbox_uidvalidity", (json_int_t)id->inbox_uidvalidity));
	return j;
}

struct quota {
	int found;
	uint64_t used_kb, limit_kb;
};

static void quota_untagged(void *ctx, const struct imap_response *r)
{
	struct quota *q = ctx;
	if (strcmp(r->name, "QUOTA") != 0)
		return;
	const struct imap_node *l = imap_node_child(r->data, 1);
	for (const struct imap_node *n = l ? l->children : NULL; n && n->next && n->next->next;
	     n = n->next->next->next)
		if (imap_node_is_atom(n, "STORAGE") && imap_node_u64(n->next, &q->used_kb) == 0 &&
		    imap_node_u64(n->next->next, &q->limit_kb) == 0)
			q->found = 1;
}

json_t *ferry_preflight(const struct imap_client_settings *old_set,
			const struct imap_client_settings *new_set,
			const struct preflight_options *opt_in, char *err, size_t errlen)
{
	struct preflight_options opt = {0};
	if (opt_in != NULL)
		opt = *opt_in;
	if (opt.bytes_per_second <= 0)
		opt.bytes_per_second = 20e6;
	if (opt.seconds_per_message <= 0)
		opt.seconds_per_message = 0.005;
	struct imap_identity id;
	struct imap_client *old = imap_sync_connect(old_set, &id, err, errlen);
	if (old == NULL)
		return NULL;
	json_t *report = json_pack("{s:s,s:s}", "kind", "preflight", "user", old_set->user);
	json_t *oj = server_base(old_set, old, &id);
	json_object_set_new(report, "old", oj);
	struct imap_folder_list l;
	if (imap_list(old, &l) < 0) {
		snprintf(err, errlen, "%s", imap_client_error(old));
		json_decref(report);
		imap_sync_close(old);
		return NULL;
	}
	json_t *folders = json_array();
	struct sizes total = {0};
	const char *largest_folder = NULL;
	char *largest_copy = NULL;
	for (size_t i = 0; i < l.n; i++) {
		const struct imap_folder *f = &l.v[i];
		char sep[2] = {f->sep, 0};
		json_t *fj = json_pack("{s:s,s:s}", "name", f->name, "separator", sep);
		if (f->special_use[0])
			json_object_set_new(fj, "special_use", json_string(f->special_use));
		if (f->flags & IMAP_FOLDER_NOSELECT) {
			json_object_set_new(fj, "selectable", json_false());
			json_array_append_new(folders, fj);
			continue;
		}
		struct imap_mailbox_info mi;
		struct sizes s = {0};
		if (imap_select(old, f->name, 1, &mi) < 0 ||
		    (mi.exists && imap_uid_fetch(old, "1:*", IMAP_FETCH_META, add_size, &s) < 0)) {
			/* one unreadable folder is a finding, not the end of preflight */
			json_object_set_new(fj, "error", json_string(imap_client_error(old)));
			json_array_append_new(folders, fj);
			if (!imap_client_ok(old))
				break;
			continue;
		}
		json_object_set_new(fj, "uidvalidity", json_integer(mi.uidvalidity));
		json_object_set_new(fj, "uidnext", json_integer(mi.uidnext));
		json_object_set_new(fj, "messages", json_integer((json_int_t)s.count));
		json_object_set_new(fj, "bytes", json_integer((json_int_t)s.bytes));
		json_object_set_new(fj, "largest", json_integer((json_int_t)s.largest));
		json_array_append_new(folders, fj);
		total.count += s.count;
		total.bytes += s.bytes;
		if (s.largest > total.largest) {
			total.largest = s.largest;
			total.largest_uid = s.largest_uid;
			largest_folder = f->name;
			free(largest_copy);
			largest_copy = strdup(largest_folder);
		}
	}
	json_object_set_new(oj, "folders", folders);
	double secs = (double)total.bytes / opt.bytes_per_second +
		      (double)total.count * opt.seconds_per_message;
	json_object_set_new(report, "total",
			    json_pack("{s:I,s:I,s:I,s:s?,s:I,s:f}", "messages", (json_int_t)total.count,
				      "bytes", (json_int_t)total.bytes, "largest_message",
				      (json_int_t)total.largest, "largest_folder", largest_copy,
				      "largest_uid", (json_int_t)total.largest_uid,
				      "estimated_copy_seconds", secs));
	free(largest_copy);
	imap_folder_list_free(&l);
	int ok = imap_client_ok(old);
	imap_sync_close(old);

	if (new_set != NULL) {
		char nerr[1024];
		struct imap_identity nid;
		struct imap_client *new = imap_sync_connect(new_set, &nid, nerr, sizeof(nerr));
		if (new == NULL) {
			json_object_set_new(report, "new", json_pack("{s:s,s:b,s:s}", "host", new_set->host,
								     "login", 0, "error", nerr));
			ok = 0;
		} else {
			json_t *nj = server_base(new_set, new, &nid);
			if (imap_client_has_cap(new, "QUOTA")) {
				struct quota q = {0};
				struct imap_command cmd = {.desc = "GETQUOTAROOT", .mailbox = "INBOX",
							   .untagged = quota_untagged,
							   .untagged_name = "QUOTA QUOTAROOT", .ctx = &q};
				if (imap_sync_command(new, &cmd, "GETQUOTAROOT INBOX") == 0 && q.found) {
					int fits = (q.used_kb * 1024 + total.bytes) <= q.limit_kb * 1024;
					json_object_set_new(nj, "quota",
							    json_pack("{s:I,s:I,s:b}", "used_bytes",
								      (json_int_t)(q.used_kb * 1024),
								      "limit_bytes",
								      (json_int_t)(q.limit_kb * 1024),
								      "fits", fits));
					ok &= fits;
				} else {
					json_object_set_new(nj, "quota", json_string("no storage limit"));
				}
			} else {
				json_object_set_new(nj, "quota", json_string("QUOTA not offered"));
			}
			json_object_set_new(report, "new", nj);
			imap_sync_close(new);
		}
	}
	json_object_set_new(report, "result", json_string(ok ? "pass" : "fail"));
	return report;
}

int ferry_preflight_passed(const json_t *report)
{
	const char *r = json_string_value(json_object_get(report, "result"));
	return r != NULL && strcmp(r, "pass") == 0;
}

char *ferry_preflight_text(const json_t *r)
{
	json_t *t = json_object_get(r, "total");
	json_t *o = json_object_get(r, "old"), *n = json_object_get(r, "new");
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	if (f == NULL)
		return NULL;
	fprintf(f, "preflight %s: %s\n", json_string_value(json_object_get(r, "user")),
		ferry_preflight_passed(r) ? "PASS" : "FAIL");
	fprintf(f, "  old %s:%lld (%s): logged in\n", json_string_value(json_object_get(o, "host")),
		(long long)json_integer_value(json_object_get(o, "port")),
		json_string_value(json_object_get(o, "tls")));
	size_t i;
	json_t *fo;
	json_array_foreach(json_object_get(o, "folders"), i, fo)
	{
		const char *e = json_string_value(json_object_get(fo, "error"));
		if (e)
			fprintf(f, "    %-30s ERROR %s\n", json_string_value(json_object_get(fo, "name")), e);
		else if (json_object_get(fo, "messages"))
			fprintf(f, "    %-30s %8lld msgs %12lld bytes (largest %lld)\n",
				json_string_value(json_object_get(fo, "name")),
				(long long)json_integer_value(json_object_get(fo, "messages")),
				(long long)json_integer_value(json_object_get(fo, "bytes")),
				(long long)json_integer_value(json_object_get(fo, "largest")));
	}
	fprintf(f, "  total: %lld messages, %lld bytes, largest %lld bytes; estimated copy %.0f s\n",
		(long long)json_integer_value(json_object_get(t, "messages")),
		(long long)json_integer_value(json_object_get(t, "bytes")),
		(long long)json_integer_value(json_object_get(t, "largest_message")),
		json_real_value(json_object_get(t, "estimated_copy_seconds")));
	if (n != NULL)
		fprintf(f, "  new %s: %s\n", json_string_value(json_object_get(n, "host")),
			json_is_true(json_object_get(n, "login"))
			    ? "logged in"
			    : json_string_value(json_object_get(n, "error")));
	fclose(f);
	return out;
}
