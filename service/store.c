/* Backend-independent parts of the store interface. */
#include "store.h"

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
