/* libFuzzer target for the IMAP response parser. The input is parsed
 * twice, once in one piece and once in pieces whose sizes come from the
 * first byte, with small limits so that every limit is reachable; both
 * runs must produce the same responses (hashed) and the same outcome.
 * Streamed literals are hashed too, so chunking bugs show as a mismatch. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap-parser.h"

struct run {
	uint64_t h;
	unsigned responses;
};

static void mix(struct run *r, const void *data, size_t len)
{
	const unsigned char *s = data;
	for (size_t i = 0; i < len; i++)
		r->h = (r->h ^ s[i]) * 1099511628211ull;
}

static void mix_node(struct run *r, const struct imap_node *n)
{
	for (; n != NULL; n = n->next) {
		unsigned char t = (unsigned char)n->type;
		mix(r, &t, 1);
		mix(r, &n->len, sizeof(n->len));
		if (n->type == IMAP_NODE_LIST)
			mix_node(r, n->children);
		else if (n->str != NULL)
			mix(r, n->str, n->type == IMAP_NODE_LIST ? 0 : strlen(n->str));
		/* walking the whole tree lets ASan check every pointer */
	}
}

static int on_response(void *ctx, const struct imap_response *resp)
{
	struct run *r = ctx;
	r->responses++;
	mix(r, &resp->kind, sizeof(resp->kind));
	mix(r, &resp->status, sizeof(resp->status));
	if (resp->tag)
		mix(r, resp->tag, strlen(resp->tag));
	mix(r, resp->name, strlen(resp->name));
	mix(r, resp->text, strlen(resp->text));
	if (resp->code)
		mix_node(r, resp->code);
	mix_node(r, resp->data);
	(void)imap_node_pair(resp->data, "UID");
	uint64_t v;
	(void)imap_node_u64(imap_node_child(resp->data, 0), &v);
	return 0;
}

static int on_lit_begin(void *ctx, const struct imap_literal_info *info)
{
	return info->size % 2 == 0; /* stream some, skip others */
}

static void on_lit_data(void *ctx, const void *data, size_t len)
{
	mix(ctx, data, len);
}

static const char *on_lit_end(void *ctx)
{
	return "digest";
}

static void parse(const uint8_t *data, size_t size, size_t chunk, struct run *r, int *ok,
		  char *err, size_t errlen)
{
	struct imap_parser_limits lim;
	imap_parser_default_limits(&lim);
	lim.max_line = 4096;
	lim.max_token = 512;
	lim.max_depth = 8;
	lim.max_literal = 1 << 20;
	lim.max_inline_literal = 16;
	lim.max_memory = 1 << 20;
	struct imap_parser_callbacks cb = {on_lit_begin, on_lit_data, on_lit_end, on_response};
	struct imap_parser *p = imap_parser_new(&lim, &cb, r);
	if (p == NULL)
		abort();
	*ok = 1;
	for (size_t off = 0; off < size && *ok;) {
		size_t n = size - off < chunk ? size - off : chunk;
		ssize_t got = imap_parser_feed(p, data + off, n);
		if (got < 0)
			*ok = 0;
		else if ((size_t)got != n)
			abort(); /* callbacks never stop here */
		off += n;
	}
	if (*ok && imap_parser_finish(p) < 0)
		*ok = 0;
	snprintf(err, errlen, "%s", *ok ? "" : imap_parser_error(p));
	if (!*ok && (imap_parser_error(p) == NULL || imap_parser_feed(p, "x", 1) != -1))
		abort(); /* a failed parser must say why and stay failed */
	imap_parser_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t chunk = (size_t)(data[0] % 17) + 1;
	data++, size--;
	struct run a = {14695981039346656037ull, 0}, b = a;
	int oka, okb;
	char erra[400], errb[400];
	parse(data, size, size ? size : 1, &a, &oka, erra, sizeof(erra));
	parse(data, size, chunk, &b, &okb, errb, sizeof(errb));
	if (oka != okb || a.h != b.h || a.responses != b.responses) {
		fprintf(stderr, "chunking changed the result: %d/%d '%s' vs '%s'\n", oka, okb, erra,
			errb);
		abort();
	}
	return 0;
}
