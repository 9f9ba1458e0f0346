/* ManageSieve commands. See managesieve.h. */
#include "managesieve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_MAX_SCRIPT (1024 * 1024)

struct imap_client *ms_connect(const struct imap_client_settings *set, char *err, size_t errlen)
{
	struct imap_client_settings s = *set;
	s.managesieve = 1;
	if (s.limits.max_line == 0)
		imap_parser_default_limits(&s.limits);
	if (s.limits.max_inline_literal < MS_MAX_SCRIPT)
		s.limits.max_inline_literal = MS_MAX_SCRIPT;
	return imap_sync_connect(&s, NULL, err, errlen);
}

static void list_line(void *ctx, const struct imap_response *r)
{
	struct sieve_script_list *l = ctx;
	const struct imap_node *n = imap_node_child(r->data, 0);
	const char *name = imap_node_text(n);
	if (name == NULL || n->type == IMAP_NODE_ATOM)
		return;
	struct sieve_script_info *v = realloc(l->v, (l->n + 1) * sizeof(*v));
	if (v == NULL)
		return;
	l->v = v;
	v[l->n].name = strdup(name);
	v[l->n].active = imap_node_is_atom(n->next, "ACTIVE");
	if (v[l->n].name != NULL)
		l->n++;
}

int ms_listscripts(struct imap_client *c, struct sieve_script_list *out)
{
	memset(out, 0, sizeof(*out));
	struct imap_command spec = {.desc = "LISTSCRIPTS", .untagged = list_line, .ctx = out};
	return imap_sync_command(c, &spec, "LISTSCRIPTS");
}

void ms_script_list_free(struct sieve_script_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

struct get_ctx {
	char *text;
	int bad;
};

static void get_line(void *ctx, const struct imap_response *r)
{
	struct get_ctx *g = ctx;
	const struct imap_node *n = imap_node_child(r->data, 0);
	if (g->text != NULL || n == NULL)
		return;
	if (n->str == NULL || strlen(n->str) != n->len) {
		g->bad = 1; /* streamed (too large) or holds NUL */
		return;
	}
	g->text = strdup(n->str);
}

int ms_getscript(struct imap_client *c, const char *name, char **text)
{
	struct get_ctx g = {0};
	char *q = imap_quote(name);
	*text = NULL;
	if (q == NULL)
		return -1;
	struct imap_command spec = {.desc = "GETSCRIPT", .mailbox = name, .untagged = get_line,
				    .ctx = &g};
	int r = imap_sync_command(c, &spec, "GETSCRIPT %s", q);
	free(q);
	if (r == 0 && (g.bad || g.text == NULL)) {
		free(g.text);
		return -1;
	}
	if (r < 0) {
		free(g.text);
		return -1;
	}
	*text = g.text;
	return 0;
}

int ms_putscript(struct imap_client *c, const char *name, const char *text)
{
	char *q = imap_quote(name);
	if (q == NULL)
		return -1;
	struct imap_command spec = {.desc = "PUTSCRIPT", .mailbox = name};
	/* RFC 5804 4.1: client literals are non-synchronizing {n+} */
	int r = imap_sync_command(c, &spec, "PUTSCRIPT %s {%zu+}\r\n%s", q, strlen(text), text);
	free(q);
	return r;
}

int ms_setactive(struct imap_client *c, const char *name)
{
	char *q = imap_quote(name);
	if (q == NULL)
		return -1;
	struct imap_command spec = {.desc = "SETACTIVE", .mailbox = name[0] ? name : NULL};
	int r = imap_sync_command(c, &spec, "SETACTIVE %s", q);
	free(q);
	return r;
}
