/* Streaming IMAP response parser: a byte-at-a-time state machine for the
 * line parts and bulk copies for literals. See imap-parser.h. */
#include "imap-parser.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum phase {
	PH_TAG,        /* first word: tag, "*" or "+" */
	PH_WORD,       /* status, number or name after the tag */
	PH_NAME,       /* name after "* <number>" */
	PH_CODE_START, /* after a status word: "[" or text */
	PH_AFTER_CODE, /* after "]": SP then text */
	PH_TEXT,       /* free text up to CRLF */
	PH_DATA,       /* tokens */
	PH_LITDATA,    /* literal bytes */
	PH_LF,         /* CR seen at the end of the response */
};

enum tok {
	T_NONE,
	T_ATOM,
	T_QUOTED,
	T_QUOTED_ESC,
	T_TILDE,
	T_LITSIZE,
	T_LITPLUS,
	T_LITCR,
	T_LITLF,
};

enum lit_mode { LIT_INLINE, LIT_STREAM, LIT_SKIP };

struct arena_block {
	struct arena_block *next;
	size_t used, size;
	max_align_t data[];
};

struct frame {
	struct imap_node *list, *last;
};

struct imap_parser {
	struct imap_parser_limits lim;
	struct imap_parser_callbacks cb;
	void *ctx;
	int failed;
	char err[320];
	uint64_t offset; /* bytes fed so far, for error messages */

	enum phase phase;
	enum tok tok;
	char *buf; /* token / tag / text accumulator */
	size_t buflen, bufcap;
	size_t line_bytes;
	unsigned bracket;
	int in_resp;
	int lines; /* ManageSieve: every line is data, no tag */

	struct imap_response resp;
	struct frame *stack;
	unsigned depth;      /* stack[depth] is the list being filled */
	unsigned code_depth; /* depth of the [code] frame, 0 = none */

	uint64_t lit_size, lit_left;
	int lit_binary;
	enum lit_mode lit_mode;
	struct imap_node *lit_node;
	char *lit_buf;

	struct arena_block *arena;
	size_t arena_total;
};

void imap_parser_default_limits(struct imap_parser_limits *lim)
{
	lim->max_line = 1 << 20;
	lim->max_token = 64 << 10;
	lim->max_depth = 32;
	lim->max_literal = (uint64_t)4 << 30;
	lim->max_inline_literal = 64 << 10;
	lim->max_memory = 64 << 20;
}

static int fail(struct imap_parser *p, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(p->err, sizeof(p->err), "IMAP response parse error at byte %llu: %s",
		 (unsigned long long)p->offset, msg);
	p->failed = 1;
	return -1;
}

/* ---- arena: one response's tree, freed at once ------------------------- */

static void *arena_alloc(struct imap_parser *p, size_t size)
{
	size = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
	struct arena_block *b = p->arena;
	if (b == NULL || b->size - b->used < size) {
		size_t bsize = size > 8192 ? size : 8192;
		if (p->arena_total + bsize > p->lim.max_memory) {
			fail(p, "response needs more than %zu bytes of memory", p->lim.max_memory);
			return NULL;
		}
		b = malloc(sizeof(*b) + bsize);
		if (b == NULL) {
			fail(p, "out of memory");
			return NULL;
		}
		b->next = p->arena;
		b->used = 0;
		b->size = bsize;
		p->arena = b;
		p->arena_total += bsize;
	}
	void *ret = (char *)b->data + b->used;
	b->used += size;
	return ret;
}

static void arena_reset(struct imap_parser *p)
{
	/* keep the newest block: most responses fit in it */
	struct arena_block *b = p->arena;
	if (b == NULL)
		return;
	struct arena_block *rest = b->next;
	while (rest != NULL) {
		struct arena_block *n = rest->next;
		free(rest);
		rest = n;
	}
	b->next = NULL;
	b->used = 0;
	p->arena_total = b->size;
}

static char *arena_strdup(struct imap_parser *p, const char *s, size_t len)
{
	char *r = arena_alloc(p, len + 1);
	if (r != NULL) {
		memcpy(r, s, len);
		r[len] = '\0';
	}
	return r;
}

/* ---- response construction --------------------------------------------- */

static int begin_response(struct imap_parser *p)
{
	memset(&p->resp, 0, sizeof(p->resp));
	struct imap_node *root = arena_alloc(p, sizeof(*root));
	if (root == NULL)
		return -1;
	memset(root, 0, sizeof(*root));
	root->type = IMAP_NODE_LIST;
	p->resp.data = root;
	p->resp.text = "";
	p->resp.name = "";
	p->stack[0].list = root;
	p->stack[0].last = NULL;
	p->depth = 0;
	p->code_depth = 0;
	p->buflen = 0;
	p->tok = T_NONE;
	p->bracket = 0;
	p->in_resp = 1;
	return 0;
}

static struct imap_node *add_node(struct imap_parser *p, enum imap_node_type type)
{
	struct imap_node *n = arena_alloc(p, sizeof(*n));
	if (n == NULL)
		return NULL;
	memset(n, 0, sizeof(*n));
	n->type = type;
	struct frame *f = &p->stack[p->depth];
	if (f->last != NULL)
		f->last->next = n;
	else
		f->list->children = n;
	f->last = n;
	f->list->len++;
	return n;
}

static int push_list(struct imap_parser *p)
{
	if (p->depth >= p->lim.max_depth)
		return fail(p, "lists nested deeper than %u levels", p->lim.max_depth);
	struct imap_node *n = add_node(p, IMAP_NODE_LIST);
	if (n == NULL)
		return -1;
	p->depth++;
	p->stack[p->depth].list = n;
	p->stack[p->depth].last = NULL;
	return 0;
}

static int buf_add(struct imap_parser *p, char c, size_t limit, const char *what)
{
	if (p->buflen >= limit)
		return fail(p, "%s longer than %zu bytes", what, limit);
	if (p->buflen + 1 >= p->bufcap) {
		size_t ncap = p->bufcap ? p->bufcap * 2 : 256;
		char *nb = realloc(p->buf, ncap);
		if (nb == NULL)
			return fail(p, "out of memory");
		p->buf = nb;
		p->bufcap = ncap;
	}
	p->buf[p->buflen++] = c;
	p->buf[p->buflen] = '\0';
	return 0;
}

static const char *buf_str(struct imap_parser *p)
{
	return p->buflen ? p->buf : "";
}

static int end_atom(struct imap_parser *p)
{
	struct imap_node *n;
	if (p->buflen == 3 && strncasecmp(p->buf, "NIL", 3) == 0) {
		n = add_node(p, IMAP_NODE_NIL);
	} else {
		n = add_node(p, IMAP_NODE_ATOM);
		if (n != NULL && (n->str = arena_strdup(p, p->buf, p->buflen)) != NULL)
			n->len = p->buflen;
	}
	p->buflen = 0;
	p->tok = T_NONE;
	return n == NULL || (n->type == IMAP_NODE_ATOM && n->str == NULL) ? -1 : 0;
}

static int end_quoted(struct imap_parser *p)
{
	struct imap_node *n = add_node(p, IMAP_NODE_STRING);
	if (n == NULL || (n->str = arena_strdup(p, buf_str(p), p->buflen)) == NULL)
		return -1;
	n->len = p->buflen;
	p->buflen = 0;
	p->tok = T_NONE;
	return 0;
}

static int complete_response(struct imap_parser *p)
{
	int stop = 0;
	if (p->cb.response != NULL)
		stop = p->cb.response(p->ctx, &p->resp);
	arena_reset(p);
	p->phase = PH_TAG;
	p->buflen = 0;
	p->line_bytes = 0;
	p->tok = T_NONE;
	p->in_resp = 0;
	return stop ? 1 : 0;
}

static int is_status(const char *w, enum imap_status *st)
{
	static const struct {
		const char *name;
		enum imap_status st;
	} map[] = {{"OK", IMAP_STATUS_OK},
		   {"NO", IMAP_STATUS_NO},
		   {"BAD", IMAP_STATUS_BAD},
		   {"BYE", IMAP_STATUS_BYE},
		   {"PREAUTH", IMAP_STATUS_PREAUTH}};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcasecmp(w, map[i].name) == 0) {
			*st = map[i].st;
			return 1;
		}
	return 0;
}

static int all_digits(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return 0;
	return 1;
}

static char *upper_dup(struct imap_parser *p, const char *s, size_t len)
{
	char *r = arena_strdup(p, s, len);
	if (r != NULL)
		for (char *c = r; *c; c++)
			*c = (char)toupper((unsigned char)*c);
	return r;
}

static int bad_char(struct imap_parser *p, unsigned char c, const char *where)
{
	if (c == '\0')
		return fail(p, "NUL byte in %s", where);
	if (c == '\n')
		return fail(p, "line ends with LF without CR in %s", where);
	return fail(p, "control character 0x%02x in %s", c, where);
}

/* ---- literals ---------------------------------------------------------- */

static int literal_start(struct imap_parser *p)
{
	struct imap_literal_info info = {
	    .size = p->lit_size,
	    .binary = p->lit_binary,
	    .depth = p->depth,
	    .prev = p->stack[p->depth].last,
	    .has_number = p->resp.has_number,
	    .number = p->resp.number,
	    .name = p->resp.name,
	};
	struct imap_node *n = add_node(p, IMAP_NODE_LITERAL);
	if (n == NULL)
		return -1;
	n->literal_size = p->lit_size;
	n->binary = p->lit_binary;
	p->lit_node = n;
	p->lit_left = p->lit_size;
	if (p->lit_size <= p->lim.max_inline_literal) {
		if (p->line_bytes + p->lit_size > p->lim.max_line)
			return fail(p, "response longer than %zu bytes (with inline literals)",
				    p->lim.max_line);
		p->line_bytes += p->lit_size;
		p->lit_mode = LIT_INLINE;
		p->lit_buf = arena_alloc(p, p->lit_size + 1);
		if (p->lit_buf == NULL)
			return -1;
		n->str = p->lit_buf;
		n->len = p->lit_size;
		p->lit_buf[p->lit_size] = '\0';
		p->lit_buf[0] = '\0';
	} else {
		n->streamed = 1;
		int want = p->cb.literal_begin != NULL && p->cb.literal_begin(p->ctx, &info);
		p->lit_mode = want ? LIT_STREAM : LIT_SKIP;
	}
	p->tok = T_NONE;
	p->phase = PH_LITDATA;
	return 0;
}

static int literal_done(struct imap_parser *p)
{
	if (p->lit_mode == LIT_STREAM && p->cb.literal_end != NULL) {
		const char *res = p->cb.literal_end(p->ctx);
		if (res != NULL) {
			p->lit_node->str = arena_strdup(p, res, strlen(res));
			if (p->lit_node->str == NULL)
				return -1;
			p->lit_node->len = strlen(res);
		}
	}
	p->lit_node = NULL;
	p->phase = PH_DATA;
	return 0;
}

/* ---- the state machine ------------------------------------------------- */

static int end_of_line(struct imap_parser *p)
{
	p->phase = PH_LF;
	return 0;
}

static int step_data(struct imap_parser *p, unsigned char c)
{
again:
	switch (p->tok) {
	case T_NONE:
		switch (c) {
		case ' ':
			return 0;
		case '(':
			return push_list(p);
		case ')':
			if (p->depth == 0 || (p->code_depth && p->depth == p->code_depth))
				return fail(p, "unbalanced parentheses: ')' without '('");
			p->depth--;
			return 0;
		case '"':
			p->tok = T_QUOTED;
			p->buflen = 0;
			return 0;
		case '{':
			p->tok = T_LITSIZE;
			p->lit_size = 0;
			p->lit_binary = 0;
			p->buflen = 0;
			return 0;
		case '~':
			p->tok = T_TILDE;
			return 0;
		case '\r':
			if (p->code_depth)
				return fail(p, "response code not closed by ']'");
			if (p->depth > 0)
				return fail(p, "unbalanced parentheses: %u '(' not closed at end of line",
					    p->depth);
			return end_of_line(p);
		case ']':
			if (p->code_depth) {
				if (p->depth != p->code_depth)
					return fail(p, "unbalanced parentheses in response code");
				p->resp.code = p->stack[p->depth].list;
				p->depth--;
				p->code_depth = 0;
				p->phase = PH_AFTER_CODE;
				return 0;
			}
			break;
		default:
			break;
		}
		if (c < 0x20 || c == 0x7f)
			return bad_char(p, c, "response data");
		p->tok = T_ATOM;
		p->buflen = 0;
		p->bracket = 0;
		goto again;
	case T_ATOM:
		if (c == '\r' || (p->bracket == 0 && (c == ' ' || c == '(' || c == ')' || c == '"')) ||
		    (p->bracket == 0 && c == ']' && p->code_depth)) {
			if (end_atom(p) < 0)
				return -1;
			goto again;
		}
		if (c < 0x20 || c == 0x7f)
			return bad_char(p, c, "atom");
		if (c == '[')
			p->bracket++;
		else if (c == ']' && p->bracket > 0)
			p->bracket--;
		return buf_add(p, (char)c, p->lim.max_token, "atom");
	case T_QUOTED:
		if (c == '"')
			return end_quoted(p);
		if (c == '\\') {
			p->tok = T_QUOTED_ESC;
			return 0;
		}
		if (c == '\r' || c == '\n')
			return fail(p, "quoted string not terminated before end of line");
		if (c == '\0')
			return bad_char(p, c, "quoted string");
		return buf_add(p, (char)c, p->lim.max_token, "quoted string");
	case T_QUOTED_ESC:
		/* RFC 3501 allows only \" and \\; other escapes are kept literally */
		if (c == '\r' || c == '\n' || c == '\0')
			return fail(p, "quoted string not terminated before end of line");
		p->tok = T_QUOTED;
		if (c != '"' && c != '\\' && buf_add(p, '\\', p->lim.max_token, "quoted string") < 0)
			return -1;
		return buf_add(p, (char)c, p->lim.max_token, "quoted string");
	case T_TILDE:
		if (c == '{') {
			p->tok = T_LITSIZE;
			p->lit_size = 0;
			p->lit_binary = 1;
			p->buflen = 0;
			return 0;
		}
		/* an atom that starts with '~' */
		p->tok = T_ATOM;
		p->buflen = 0;
		p->bracket = 0;
		if (buf_add(p, '~', p->lim.max_token, "atom") < 0)
			return -1;
		goto again;
	case T_LITSIZE:
		if (c >= '0' && c <= '9') {
			if (++p->buflen > 20 || p->lit_size > (UINT64_MAX - 9) / 10)
				return fail(p, "literal size too large");
			p->lit_size = p->lit_size * 10 + (uint64_t)(c - '0');
			return 0;
		}
		if (p->buflen == 0)
			return fail(p, "literal without a size: '{' followed by 0x%02x", c);
		if (c == '+') {
			p->tok = T_LITPLUS;
			return 0;
		}
		/* fall through */
	case T_LITPLUS:
		if (c != '}')
			return fail(p, "malformed literal size: unexpected 0x%02x", c);
		if (p->lit_size > p->lim.max_literal)
			return fail(p, "literal of %llu bytes exceeds the limit of %llu bytes",
				    (unsigned long long)p->lit_size,
				    (unsigned long long)p->lim.max_literal);
		p->buflen = 0;
		p->tok = T_LITCR;
		return 0;
	case T_LITCR:
		if (c != '\r')
			return fail(p, "literal size not followed by CRLF");
		p->tok = T_LITLF;
		return 0;
	case T_LITLF:
		if (c != '\n')
			return fail(p, "literal size not followed by CRLF");
		if (literal_start(p) < 0)
			return -1;
		if (p->lit_left == 0)
			return literal_done(p);
		return 0;
	}
	return 0;
}

static int finish_word(struct imap_parser *p, unsigned char c)
{
	/* c is the SP or CR that ended the word in p->buf */
	const char *w = buf_str(p);
	enum imap_status st;
	if (p->buflen == 0)
		return fail(p, "empty word after the tag");
	if (p->resp.kind == IMAP_RESP_TAGGED) {
		if (!is_status(w, &st) || st == IMAP_STATUS_BYE || st == IMAP_STATUS_PREAUTH)
			return fail(p, "tagged response with status '%.40s' (expected OK, NO or BAD)",
				    w);
		p->resp.status = st;
	} else if (is_status(w, &st)) {
		p->resp.status = st;
	} else if (all_digits(w)) {
		if (p->buflen > 10 || strtoull(w, NULL, 10) > UINT32_MAX)
			return fail(p, "message number %.40s out of range", w);
		p->resp.has_number = 1;
		p->resp.number = (uint32_t)strtoul(w, NULL, 10);
		if (c != ' ')
			return fail(p, "message number %s without a name", w);
		p->phase = PH_NAME;
		p->buflen = 0;
		return 0;
	} else {
		if ((p->resp.name = upper_dup(p, w, p->buflen)) == NULL)
			return -1;
		p->buflen = 0;
		p->phase = PH_DATA;
		return c == '\r' ? end_of_line(p) : 0;
	}
	p->buflen = 0;
	p->phase = PH_CODE_START;
	return c == '\r' ? end_of_line(p) : 0;
}

static int step(struct imap_parser *p, unsigned char c)
{
	if (p->phase != PH_LF && ++p->line_bytes > p->lim.max_line)
		return fail(p, "response line longer than %zu bytes", p->lim.max_line);
	switch (p->phase) {
	case PH_TAG:
		if (!p->in_resp && begin_response(p) < 0)
			return -1;
		if (p->lines) {
			p->resp.kind = IMAP_RESP_UNTAGGED;
			p->phase = PH_DATA;
			return step_data(p, c);
		}
		if (c == ' ' || c == '\r') {
			const char *t = buf_str(p);
			if (p->buflen == 0)
				return fail(p, "response starts with 0x%02x instead of a tag", c);
			if (strcmp(t, "+") == 0) {
				p->resp.kind = IMAP_RESP_CONTINUATION;
				p->buflen = 0;
				p->phase = PH_TEXT;
				return c == '\r' ? end_of_line(p) : 0;
			}
			if (c == '\r')
				return fail(p, "response '%.40s' ends after the tag", t);
			if (strcmp(t, "*") == 0) {
				p->resp.kind = IMAP_RESP_UNTAGGED;
			} else {
				p->resp.kind = IMAP_RESP_TAGGED;
				if ((p->resp.tag = arena_strdup(p, t, p->buflen)) == NULL)
					return -1;
			}
			p->buflen = 0;
			p->phase = PH_WORD;
			return 0;
		}
		if (c < 0x20 || c == 0x7f)
			return bad_char(p, c, "tag");
		if (strchr("(){\"%]", c) != NULL || (c == '*' && p->buflen > 0))
			return fail(p, "invalid character '%c' in tag", c);
		if (c == '+' && p->buflen > 0)
			return fail(p, "invalid character '+' in tag");
		return buf_add(p, (char)c, p->lim.max_token, "tag");
	case PH_WORD:
	case PH_NAME:
		if (c == ' ' || c == '\r') {
			if (p->phase == PH_WORD)
				return finish_word(p, c);
			if (p->buflen == 0)
				return fail(p, "empty name after message number");
			if ((p->resp.name = upper_dup(p, p->buf, p->buflen)) == NULL)
				return -1;
			p->buflen = 0;
			p->phase = PH_DATA;
			return c == '\r' ? end_of_line(p) : 0;
		}
		if (c < 0x20 || c == 0x7f)
			return bad_char(p, c, "response name");
		if (c == '(' || c == ')' || c == '"' || c == '{')
			return fail(p, "unexpected '%c' after the tag", c);
		return buf_add(p, (char)c, p->lim.max_token, "response name");
	case PH_CODE_START:
		if (c == '[') {
			if (push_list(p) < 0)
				return -1;
			p->code_depth = p->depth;
			p->phase = PH_DATA;
			return 0;
		}
		p->phase = PH_TEXT;
		p->buflen = 0;
		break; /* the char is text */
	case PH_AFTER_CODE:
		p->buflen = 0;
		p->phase = PH_TEXT;
		if (c == ' ')
			return 0;
		break;
	case PH_DATA:
		return step_data(p, c);
	case PH_LF:
		if (c != '\n')
			return fail(p, "CR not followed by LF");
		return complete_response(p);
	case PH_LITDATA:
		return fail(p, "internal: literal byte in step()");
	case PH_TEXT:
		break;
	}
	/* PH_TEXT */
	if (c == '\r') {
		if ((p->resp.text = arena_strdup(p, buf_str(p), p->buflen)) == NULL)
			return -1;
		p->buflen = 0;
		return end_of_line(p);
	}
	if (c == '\0' || c == '\n')
		return bad_char(p, c, "response text");
	return buf_add(p, (char)c, p->lim.max_line, "response text");
}

ssize_t imap_parser_feed(struct imap_parser *p, const void *data, size_t len)
{
	const unsigned char *s = data;
	size_t i = 0;
	if (p->failed)
		return -1;
	while (i < len) {
		if (p->phase == PH_LITDATA) {
			size_t n = len - i;
			if (n > p->lit_left)
				n = (size_t)p->lit_left;
			if (p->lit_mode == LIT_INLINE)
				memcpy(p->lit_buf + (p->lit_size - p->lit_left), s + i, n);
			else if (p->lit_mode == LIT_STREAM && p->cb.literal_data != NULL)
				p->cb.literal_data(p->ctx, s + i, n);
			p->lit_left -= n;
			p->offset += n;
			i += n;
			if (p->lit_left == 0 && literal_done(p) < 0)
				return -1;
			continue;
		}
		int r = step(p, s[i]);
		p->offset++;
		i++;
		if (r < 0) {
			p->failed = 1;
			return -1;
		}
		if (r > 0)
			return (ssize_t)i;
	}
	return (ssize_t)i;
}

void imap_parser_set_lines(struct imap_parser *p, int on)
{
	p->lines = on;
}

int imap_parser_idle(const struct imap_parser *p)
{
	return !p->failed && !p->in_resp;
}

int imap_parser_finish(struct imap_parser *p)
{
	if (p->failed)
		return -1;
	if (imap_parser_idle(p))
		return 0;
	if (p->phase == PH_LITDATA)
		return fail(p, "input ended inside a literal (%llu of %llu bytes missing)",
			    (unsigned long long)p->lit_left, (unsigned long long)p->lit_size);
	return fail(p, "input ended inside a response (no CRLF)");
}

const char *imap_parser_error(const struct imap_parser *p)
{
	return p->failed ? p->err : NULL;
}

void imap_parser_reset(struct imap_parser *p)
{
	if (p->phase == PH_LITDATA && p->lit_mode == LIT_STREAM && p->cb.literal_end != NULL)
		(void)p->cb.literal_end(p->ctx); /* lets the owner release its state */
	arena_reset(p);
	p->failed = 0;
	p->err[0] = '\0';
	p->phase = PH_TAG;
	p->tok = T_NONE;
	p->buflen = 0;
	p->line_bytes = 0;
	p->depth = 0;
	p->code_depth = 0;
	p->lit_node = NULL;
	p->in_resp = 0;
}

struct imap_parser *imap_parser_new(const struct imap_parser_limits *lim,
				    const struct imap_parser_callbacks *cb, void *ctx)
{
	struct imap_parser *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	if (lim != NULL)
		p->lim = *lim;
	else
		imap_parser_default_limits(&p->lim);
	if (p->lim.max_depth == 0)
		p->lim.max_depth = 1;
	if (p->lim.max_inline_literal > p->lim.max_line)
		p->lim.max_inline_literal = p->lim.max_line;
	if (cb != NULL)
		p->cb = *cb;
	p->ctx = ctx;
	/* +2: the data list itself and a [code] frame */
	p->stack = calloc(p->lim.max_depth + 2, sizeof(*p->stack));
	if (p->stack == NULL) {
		free(p);
		return NULL;
	}
	p->phase = PH_TAG;
	return p;
}

void imap_parser_free(struct imap_parser *p)
{
	if (p == NULL)
		return;
	arena_reset(p);
	free(p->arena);
	free(p->buf);
	free(p->stack);
	free(p);
}

/* ---- tree helpers -------------------------------------------------------- */

const struct imap_node *imap_node_child(const struct imap_node *list, size_t i)
{
	if (list == NULL || list->type != IMAP_NODE_LIST)
		return NULL;
	const struct imap_node *n = list->children;
	while (n != NULL && i-- > 0)
		n = n->next;
	return n;
}

int imap_node_is_atom(const struct imap_node *n, const char *atom)
{
	return n != NULL && n->type == IMAP_NODE_ATOM && strcasecmp(n->str, atom) == 0;
}

const char *imap_node_text(const struct imap_node *n)
{
	if (n == NULL || n->type == IMAP_NODE_LIST || n->type == IMAP_NODE_NIL)
		return NULL;
	if (n->type == IMAP_NODE_LITERAL && n->streamed)
		return NULL;
	return n->str;
}

int imap_node_u64(const struct imap_node *n, uint64_t *out)
{
	if (n == NULL || n->type != IMAP_NODE_ATOM || !all_digits(n->str) || n->len > 20)
		return -1;
	uint64_t v = 0;
	for (const char *s = n->str; *s; s++) {
		uint64_t d = (uint64_t)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

const struct imap_node *imap_node_pair(const struct imap_node *list, const char *name)
{
	if (list == NULL || list->type != IMAP_NODE_LIST)
		return NULL;
	for (const struct imap_node *n = list->children; n != NULL && n->next != NULL;
	     n = n->next->next)
		if (imap_node_is_atom(n, name))
			return n->next;
	return NULL;
}

const char *imap_status_name(enum imap_status st)
{
	switch (st) {
	case IMAP_STATUS_OK:
		return "OK";
	case IMAP_STATUS_NO:
		return "NO";
	case IMAP_STATUS_BAD:
		return "BAD";
	case IMAP_STATUS_BYE:
		return "BYE";
	case IMAP_STATUS_PREAUTH:
		return "PREAUTH";
	default:
		return "";
	}
}
