/* Folder names, old server -> new server, in this order:
   1. ferry_exclude, ferry_exclude2, ...: wildcard patterns on the old name
      (separator '/'): matching folders are not migrated (logged);
   2. ferry_rename, ferry_rename2, ...: "REGEX => REPLACEMENT" (POSIX ERE on
      the '/'-separated old name, \1..\9 in the replacement); first match;
   3. special use: an old top-level folder flagged \Sent, \Drafts, \Trash,
      \Junk or \Archive (SPECIAL-USE), or known by its name in several
      languages ("Sent Items", "Gesendete Objekte", "送信済みアイテム"...),
      becomes the new server's folder with that special use, if the new
      namespace configures one;
   4. hierarchy separators translated level by level.
   Every old folder seen by the last tree copy is written to the user's map
   file with its fate: its name here (or excluded/skipped, and why) and its
   name exactly as the old server lists it. Later sessions find a folder's
   old name without asking the old server, and `doveadm ferry status`
   answers "which new folder did old folder X become" from it (ferryd's
   verification uses that answer instead of translating names itself). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strescape.h"
#include "istream.h"
#include "wildcard-match.h"
#include "safe-mkstemp.h"
#include "write-full.h"
#include "mail-namespace.h"
#include "ferry-plugin.h"

#include <regex.h>
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>

#define FERRY_MAP_FNAME "dovecot-ferry.map"
#define FERRY_MAX_RULES 100

struct ferry_rename_rule {
	regex_t re;
	const char *replacement;
};

struct ferry_map {
	ARRAY(const char *) excludes;
	ARRAY(struct ferry_rename_rule) renames;
	ARRAY_TYPE(ferry_map_entry) entries;
	bool entries_loaded;
};

static const struct {
	const char *special_use;
	const char *names[12];
} ferry_well_known[] = {
	{ "\\Sent", { "Sent", "Sent Items", "Sent Messages", "Sent Mail",
		      "Gesendet", "Gesendete Objekte", "Gesendete Elemente",
		      "Éléments envoyés", "Envoyés", "Messages envoyés",
		      "送信済みアイテム", "送信済み" } },
	{ "\\Trash", { "Trash", "Deleted Items", "Deleted Messages",
		       "Papierkorb", "Gelöschte Objekte", "Gelöschte Elemente",
		       "Éléments supprimés", "Corbeille", "削除済みアイテム",
		       "ごみ箱", NULL } },
	{ "\\Junk", { "Junk", "Junk E-mail", "Junk Email", "Spam",
		      "Junk-E-Mail", "Courrier indésirable", "迷惑メール", NULL } },
	{ "\\Drafts", { "Drafts", "Entwürfe", "Brouillons", "下書き", NULL } },
	{ "\\Archive", { "Archive", "Archives", "Archiv", "アーカイブ", NULL } },
};

static void ferry_map_free(struct ferry_map *map)
{
	struct ferry_rename_rule *rule;

	array_foreach_modifiable(&map->renames, rule)
		regfree(&rule->re);
}

static struct ferry_map *ferry_map_get(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_map *map = fuser->map;
	const char *value, *name;

	if (map != NULL)
		return map;
	map = fuser->map = p_new(user->pool, struct ferry_map, 1);
	p_array_init(&map->excludes, user->pool, 4);
	p_array_init(&map->renames, user->pool, 4);
	p_array_init(&map->entries, user->pool, 8);
	for (unsigned int i = 1; i <= FERRY_MAX_RULES; i++) {
		name = i == 1 ? "ferry_exclude" :
			t_strdup_printf("ferry_exclude%u", i);
		value = ferry_setting_str(user, name);
		if (value == NULL)
			break;
		value = p_strdup(user->pool, value);
		array_push_back(&map->excludes, &value);
	}
	for (unsigned int i = 1; i <= FERRY_MAX_RULES; i++) {
		const char *arrow;
		struct ferry_rename_rule rule;
		int err;

		name = i == 1 ? "ferry_rename" :
			t_strdup_printf("ferry_rename%u", i);
		value = ferry_setting_str(user, name);
		if (value == NULL)
			break;
		arrow = strstr(value, " => ");
		if (arrow == NULL) {
			i_error(FERRY_LOG_PREFIX "Invalid %s=%s: want "
				"\"REGEX => REPLACEMENT\"; ignored", name, value);
			continue;
		}
		err = regcomp(&rule.re, t_strdup_until(value, arrow), REG_EXTENDED);
		if (err != 0) {
			char buf[256];
			regerror(err, &rule.re, buf, sizeof(buf));
			i_error(FERRY_LOG_PREFIX "Invalid %s regex: %s; ignored",
				name, buf);
			continue;
		}
		rule.replacement = p_strdup(user->pool, arrow + 4);
		array_push_back(&map->renames, &rule);
	}
	return map;
}

void ferry_map_deinit(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser != NULL && fuser->map != NULL)
		ferry_map_free(fuser->map);
}

static const char *
ferry_name_translate(const char *name, char from_sep, char to_sep)
{
	if (from_sep == to_sep || strcasecmp(name, "INBOX") == 0)
		return name;
	string_t *str = t_str_new(strlen(name));
	for (const char *p = name; *p != '\0'; p++)
		str_append_c(str, *p == from_sep ? to_sep : *p);
	return str_c(str);
}

static char ferry_sep(struct mail_user *user)
{
	return mail_namespace_get_sep(mail_namespace_find_inbox(user->namespaces));
}

static const char *
ferry_regex_replace(const struct ferry_rename_rule *rule, const char *name)
{
	regmatch_t m[10];
	string_t *str;

	if (regexec(&rule->re, name, N_ELEMENTS(m), m, 0) != 0)
		return NULL;
	str = t_str_new(128);
	str_append_data(str, name, m[0].rm_so);
	for (const char *p = rule->replacement; *p != '\0'; p++) {
		if (*p == '\\' && p[1] >= '0' && p[1] <= '9') {
			unsigned int n = p[1] - '0';
			if (m[n].rm_so >= 0) {
				str_append_data(str, name + m[n].rm_so,
						m[n].rm_eo - m[n].rm_so);
			}
			p++;
		} else {
			str_append_c(str, *p);
		}
	}
	str_append(str, name + m[0].rm_eo);
	return str_c(str);
}

/* The new namespace's folder with this special use, if it configures one. */
static const char *
ferry_local_special(struct mail_user *user, const char *special_use)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);

	return ferry_special_use_box(ns, special_use);
}

static const char *ferry_well_known_use(const char *name)
{
	for (unsigned int i = 0; i < N_ELEMENTS(ferry_well_known); i++) {
		for (unsigned int j = 0; j < N_ELEMENTS(ferry_well_known[i].names) &&
			     ferry_well_known[i].names[j] != NULL; j++) {
			if (strcasecmp(name, ferry_well_known[i].names[j]) == 0)
				return ferry_well_known[i].special_use;
		}
	}
	return NULL;
}

const char *ferry_plain_name(struct mail_user *user, struct mail_user *old,
			     const char *old_vname)
{
	return ferry_name_translate(old_vname,
		mail_namespace_get_sep(mail_namespace_find_inbox(old->namespaces)),
		ferry_sep(user));
}

const char *ferry_local_name(struct mail_user *user, struct mail_user *old,
			     const char *old_vname, const char *special_use,
			     const char **skip_reason_r)
{
	struct ferry_map *map = ferry_map_get(user);
	char old_sep = mail_namespace_get_sep(mail_namespace_find_inbox(old->namespaces));
	char local_sep = ferry_sep(user);
	const struct ferry_rename_rule *rule;
	const char *const *pattern;
	const char *name, *renamed = NULL, *special;

	*skip_reason_r = NULL;
	if (strcasecmp(old_vname, "INBOX") == 0)
		return "INBOX";
	if (old_sep != local_sep && strchr(old_vname, local_sep) != NULL) {
		/* a level would silently become two */
		*skip_reason_r = "its name contains this server's hierarchy "
			"separator";
		return NULL;
	}
	name = ferry_name_translate(old_vname, old_sep, '/');
	array_foreach(&map->excludes, pattern) {
		if (wildcard_match(name, *pattern)) {
			*skip_reason_r = t_strdup_printf("excluded by %s", *pattern);
			return NULL;
		}
	}
	array_foreach(&map->renames, rule) {
		if ((renamed = ferry_regex_replace(rule, name)) != NULL)
			break;
	}
	if (renamed != NULL)
		name = renamed;
	else if (strchr(name, '/') == NULL) {
		if (special_use == NULL || *special_use == '\0')
			special_use = ferry_well_known_use(name);
		else /* "\Sent \Archive": the first is enough */
			special_use = t_strcut(special_use, ' ');
		special = special_use == NULL ? NULL :
			ferry_local_special(user, special_use);
		if (special != NULL)
			return special;
	}
	return ferry_name_translate(name, '/', local_sep);
}

static const char *ferry_map_path(struct mail_user *user)
{
	const char *root = ferry_user_index_root(user);

	return root == NULL ? NULL : t_strconcat(root, "/" FERRY_MAP_FNAME, NULL);
}

/* Lines, tab-escaped fields:
     local, old                      (older files: a mapped name only)
     local, old, remote              a migrated folder
     "", old, remote, state, reason  an old folder not migrated */
bool ferry_map_parse_line(const char *line, struct ferry_map_entry *entry_r)
{
	const char *const *fields = t_strsplit_tabescaped(line);
	unsigned int n = str_array_length(fields);

	if (n != 2 && n != 3 && n != 5)
		return FALSE;
	i_zero(entry_r);
	entry_r->local = fields[0];
	entry_r->old = fields[1];
	entry_r->remote = n > 2 ? fields[2] : "";
	entry_r->state = n > 3 ? fields[3] : "";
	entry_r->reason = n > 3 ? fields[4] : "";
	return TRUE;
}

void ferry_map_format_line(string_t *dest, const struct ferry_map_entry *e)
{
	str_append_tabescaped(dest, e->local);
	str_append_c(dest, '\t');
	str_append_tabescaped(dest, e->old);
	str_append_c(dest, '\t');
	str_append_tabescaped(dest, e->remote);
	if (*e->state != '\0' || *e->reason != '\0') {
		str_append_c(dest, '\t');
		str_append_tabescaped(dest, e->state);
		str_append_c(dest, '\t');
		str_append_tabescaped(dest, e->reason);
	}
}

static void ferry_map_entry_dup(pool_t pool, struct ferry_map_entry *e)
{
	e->local = p_strdup(pool, e->local);
	e->old = p_strdup(pool, e->old);
	e->remote = p_strdup(pool, e->remote);
	e->state = p_strdup(pool, e->state);
	e->reason = p_strdup(pool, e->reason);
}

void ferry_map_read_entries(struct istream *input, pool_t pool,
			    ARRAY_TYPE(ferry_map_entry) *entries)
{
	struct ferry_map_entry e;
	const char *line;

	while ((line = i_stream_read_next_line(input)) != NULL) {
		if (!ferry_map_parse_line(line, &e))
			continue;
		ferry_map_entry_dup(pool, &e);
		array_push_back(entries, &e);
	}
}

static void ferry_map_load(struct mail_user *user, struct ferry_map *map)
{
	const char *path = ferry_map_path(user);
	struct istream *input;
	int fd;

	map->entries_loaded = TRUE;
	if (path == NULL || (fd = open(path, O_RDONLY)) == -1) {
		if (path != NULL && errno != ENOENT)
			i_error(FERRY_LOG_PREFIX "open(%s) failed: %m", path);
		return;
	}
	input = i_stream_create_fd_autoclose(&fd, SIZE_MAX);
	ferry_map_read_entries(input, user->pool, &map->entries);
	if (input->stream_errno != 0) {
		i_error(FERRY_LOG_PREFIX "read(%s) failed: %s", path,
			i_stream_get_error(input));
	}
	i_stream_unref(&input);
}

void ferry_map_reset(struct mail_user *user)
{
	struct ferry_map *map = ferry_map_get(user);

	array_clear(&map->entries);
	map->entries_loaded = TRUE;
}

void ferry_map_add(struct mail_user *user, const char *local_vname,
		   const char *old_vname, const char *remote,
		   const char *state, const char *reason)
{
	struct ferry_map *map = ferry_map_get(user);
	struct ferry_map_entry e = {
		.local = local_vname == NULL ? "" : local_vname,
		.old = old_vname,
		.remote = remote == NULL ? "" : remote,
		.state = state == NULL ? "" : state,
		.reason = reason == NULL ? "" : reason,
	};

	ferry_map_entry_dup(user->pool, &e);
	array_push_back(&map->entries, &e);
}

const struct ferry_map_entry *
ferry_map_entries(struct mail_user *user, unsigned int *count_r)
{
	struct ferry_map *map = ferry_map_get(user);

	if (!map->entries_loaded)
		ferry_map_load(user, map);
	return array_get(&map->entries, count_r);
}

static const struct ferry_map_entry *
ferry_map_find_local(struct mail_user *user, const char *local_vname)
{
	const struct ferry_map_entry *e;
	unsigned int i, count;

	e = ferry_map_entries(user, &count);
	for (i = 0; i < count; i++) {
		if (*e[i].local != '\0' && strcmp(e[i].local, local_vname) == 0)
			return &e[i];
	}
	return NULL;
}

const char *ferry_map_remote_name(struct mail_user *user,
				  const char *local_vname)
{
	const struct ferry_map_entry *e =
		ferry_map_find_local(user, local_vname);

	return e == NULL || *e->remote == '\0' ? NULL : e->remote;
}

int ferry_map_write(struct mail_user *user, const char **error_r)
{
	struct ferry_map *map = ferry_map_get(user);
	const char *path = ferry_map_path(user);
	const struct ferry_map_entry *e;
	string_t *data, *tmp;
	int fd;

	if (path == NULL)
		return 0;
	data = t_str_new(256);
	array_foreach(&map->entries, e) {
		ferry_map_format_line(data, e);
		str_append_c(data, '\n');
	}
	tmp = t_str_new(256);
	str_append(tmp, path);
	fd = safe_mkstemp_hostpid(tmp, 0600, (uid_t)-1, (gid_t)-1);
	if (fd == -1) {
		*error_r = t_strdup_printf("safe_mkstemp(%s) failed: %m", path);
		return -1;
	}
	if (write_full(fd, str_data(data), str_len(data)) < 0 ||
	    fdatasync(fd) < 0 || rename(str_c(tmp), path) < 0) {
		*error_r = t_strdup_printf("writing %s failed: %m", path);
		i_close_fd(&fd);
		i_unlink_if_exists(str_c(tmp));
		return -1;
	}
	i_close_fd(&fd);
	return 0;
}

const char *ferry_old_name(struct mail_user *user, struct mail_user *old,
			   const char *local_vname)
{
	const struct ferry_map_entry *e =
		ferry_map_find_local(user, local_vname);

	if (e != NULL)
		return e->old;
	return ferry_name_translate(local_vname, ferry_sep(user),
		mail_namespace_get_sep(mail_namespace_find_inbox(old->namespaces)));
}
