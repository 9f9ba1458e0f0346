/* Backend-independent parts of the store interface. */
#include "store.h"
#include "config.h"
#include "routing_views.h" /* generated from service/routing_views.sql */

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>

static const char *const state_names[US_COUNT] = {
	"pending", "presync", "cutover", "verified", "done", "failed",
};

const char *user_state_name(enum user_state s)
{
	return (unsigned)s < US_COUNT ? state_names[s] : "unknown";
}

int user_state_parse(const char *name, enum user_state *s)
{
	for (int i = 0; i < US_COUNT; i++) {
		if (strcmp(name, state_names[i]) == 0) {
			*s = (enum user_state)i;
			return 0;
		}
	}
	return -1;
}

void store_free(struct store *st)
{
	if (st == NULL)
		return;
	if (st->free_priv != NULL)
		st->free_priv(st);
	free(st->priv);
	free(st);
}

void check_rec_free(struct check_rec *c)
{
	free(c->report_json);
	free(c->report_text);
	c->report_json = c->report_text = NULL;
}

int store_log_event(struct store *st, const char *user, const char *folder,
		    const char *event, int64_t copied, int64_t messages,
		    const char *error)
{
	struct log_rec l;

	memset(&l, 0, sizeof(l));
	l.time = time(NULL);
	snprintf(l.user, sizeof(l.user), "%s", user);
	snprintf(l.folder, sizeof(l.folder), "%s", folder != NULL ? folder : "");
	snprintf(l.event, sizeof(l.event), "%s", event);
	l.copied = copied;
	l.messages = messages;
	snprintf(l.error, sizeof(l.error), "%s", error != NULL ? error : "");
	return st->log_add(st, &l);
}

const char *store_routing_views_sql(void)
{
	return routing_views_sql;
}

/* FNV-1a of the views file, in hex: a backend re-creates the views when
   the hash it recorded differs */
void store_routing_views_hash(char out[17])
{
	uint64_t h = 14695981039346656037ULL;

	for (const unsigned char *p = (const unsigned char *)routing_views_sql; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	snprintf(out, 17, "%016llx", (unsigned long long)h);
}

int store_is_pgsql(const struct ferry_config *cfg)
{
	return cfg->store != NULL && strcmp(cfg->store, "pgsql") == 0;
}

struct store *store_for_config(const struct ferry_config *cfg, char **err_r)
{
	struct store *st;
	char *password = NULL;

	*err_r = NULL;
	if (!store_is_pgsql(cfg))
		return store_sqlite_new();
	if (cfg->pgsql_password_file != NULL && *cfg->pgsql_password_file != '\0' &&
	    (password = config_read_private(cfg->pgsql_password_file, err_r)) == NULL)
		return NULL;
	st = store_pgsql_new(password, cfg->pgsql_connect_timeout,
			     cfg->pgsql_statement_timeout_ms, cfg->pgsql_lock_timeout_ms);
	if (password != NULL) {
		explicit_bzero(password, strlen(password));
		free(password);
	}
	return st;
}

const char *store_location(const struct ferry_config *cfg)
{
	return store_is_pgsql(cfg) ? cfg->pgsql_conninfo : cfg->state_db;
}

void store_set_node(struct store *st, const char *node, int lease)
{
	snprintf(st->node, sizeof(st->node), "%s", node != NULL ? node : "");
	st->lease = lease;
}
