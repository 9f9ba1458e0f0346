/* The streaming IMAP response parser: RFC 3501/9051 response shapes, and
 * malformed or hostile input, each parsed or rejected with a clear error. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap-parser.h"

#define MAXR 16

/* What the callbacks saw: a flattened copy of each response (the tree is
 * only valid inside the callback). */
struct seen {
	int n;
	char flat[MAXR][2048];
	char tag[MAXR][32];
	enum imap_status status[MAXR];
	enum imap_response_kind kind[MAXR];
	char name[MAXR][32];
	char text[MAXR][256];
	char code[MAXR][256];
	unsigned number[MAXR];
	/* streamed literal */
	unsigned long long streamed_bytes, streamed_sum;
	int streamed_chunks, lit_begins;
	char lit_prev[64];
	int stream;
	int stop_after;
};

static void flatten(const struct imap_node *n, char *out, size_t cap)
{
	size_t len = strlen(out);
	for (; n != NULL; n = n->next) {
		len = strlen(out);
		if (len + 8 >= cap)
			return;
		if (len > 0 && out[len - 1] != '(')
			strcat(out, " ");
		switch (n->type) {
		case IMAP_NODE_NIL:
			strcat(out, "NIL");
			break;
		case IMAP_NODE_LIST:
			strcat(out, "(");
			flatten(n->children, out, cap);
			strcat(out, ")");
			break;
		case IMAP_NODE_ATOM:
			strncat(out, n->str, cap - strlen(out) - 1);
			break;
		case IMAP_NODE_STRING:
			strcat(out, "\"");
			strncat(out, n->str, cap - strlen(out) - 3);
			strcat(out, "\"");
			break;
		case IMAP_NODE_LITERAL:
			if (n->streamed)
				snprintf(out + strlen(out), cap - strlen(out), "<lit %llu %s>",
					 (unsigned long long)n->literal_size, n->str ? n->str : "skipped");
			else
				snprintf(out + strlen(out), cap - strlen(out), "{%.*s}", (int)n->len, n->str);
			break;
		}
	}
}

static int on_resp(void *ctx, const struct imap_response *r)
{
	struct seen *s = ctx;
	if (s->n >= MAXR)
		return 0;
	int i = s->n++;
	s->kind[i] = r->kind;
	s->status[i] = r->status;
	snprintf(s->tag[i], 32, "%s", r->tag ? r->tag : "");
	snprintf(s->name[i], 32, "%s", r->name);
	snprintf(s->text[i], 256, "%s", r->text);
	s->number[i] = r->has_number ? r->number : 0;
	s->flat[i][0] = '\0';
	flatten(r->data->children, s->flat[i], sizeof(s->flat[i]));
	s->code[i][0] = '\0';
	if (r->code)
		flatten(r->code->children, s->code[i], sizeof(s->code[i]));
	return s->stop_after && s->n == s->stop_after;
}

static int on_lit_begin(void *ctx, const struct imap_literal_info *info)
{
	struct seen *s = ctx;
	s->lit_begins++;
	snprintf(s->lit_prev, sizeof(s->lit_prev), "%s",
		 info->prev && info->prev->str ? info->prev->str : "");
	return s->stream;
}

static void on_lit_data(void *ctx, const void *data, size_t len)
{
	struct seen *s = ctx;
	const unsigned char *d = data;
	s->streamed_chunks++;
	s->streamed_bytes += len;
	for (size_t i = 0; i < len; i++)
		s->streamed_sum += d[i];
}

static const char *on_lit_end(void *ctx)
{
	return "hashed";
}

static const struct imap_parser_callbacks CB = {on_lit_begin, on_lit_data, on_lit_end, on_resp};

static struct imap_parser *mk(struct seen *s, const struct imap_parser_limits *lim)
{
	memset(s, 0, sizeof(*s));
	struct imap_parser *p = imap_parser_new(lim, &CB, s);
	cr_assert_not_null(p);
	return p;
}

/* whole input at once, then byte by byte: same result */
static int parse_both(const char *in, size_t len, struct seen *s, const struct imap_parser_limits *lim,
		      char *err, size_t errlen)
{
	struct seen s2;
	struct imap_parser *p = mk(s, lim);
	int rc = imap_parser_feed(p, in, len) < 0 ? -1 : imap_parser_finish(p);
	snprintf(err, errlen, "%s", rc < 0 ? imap_parser_error(p) : "");
	imap_parser_free(p);
	p = mk(&s2, lim);
	int rc2 = 0;
	for (size_t i = 0; i < len && rc2 == 0; i++)
		rc2 = imap_parser_feed(p, in + i, 1) < 0 ? -1 : 0;
	if (rc2 == 0)
		rc2 = imap_parser_finish(p);
	cr_assert_eq(rc, rc2, "byte-by-byte feeding changed the outcome: %s / %s", err,
		     rc2 < 0 ? imap_parser_error(p) : "ok");
	cr_assert_eq(s->n, s2.n);
	for (int i = 0; i < s->n; i++)
		cr_assert_str_eq(s->flat[i], s2.flat[i]);
	imap_parser_free(p);
	return rc;
}

#define PARSE_OK(in, s)                                                             \
	do {                                                                        \
		char e_[400];                                                       \
		int rc_ = parse_both(in, sizeof(in) - 1, s, NULL, e_, sizeof(e_)); \
		cr_assert_eq(rc_, 0, "unexpected error: %s", e_);                   \
	} while (0)

static void expect_error(const char *in, size_t len, const struct imap_parser_limits *lim,
			 const char *needle)
{
	struct seen s;
	char err[400];
	int rc = parse_both(in, len, &s, lim, err, sizeof(err));
	cr_assert_eq(rc, -1, "accepted: %.60s", in);
	cr_assert(strstr(err, needle) != NULL, "error '%s' does not mention '%s'", err, needle);
}

Test(parser, greeting_with_capability_code)
{
	struct seen s;
	PARSE_OK("* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN] Dovecot ready.\r\n", &s);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.kind[0], IMAP_RESP_UNTAGGED);
	cr_assert_eq(s.status[0], IMAP_STATUS_OK);
	cr_assert_str_eq(s.code[0], "CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN");
	cr_assert_str_eq(s.text[0], "Dovecot ready.");
}

Test(parser, tagged_status_responses)
{
	struct seen s;
	PARSE_OK("a1 OK LOGIN completed\r\nA002 NO [NONEXISTENT] Mailbox doesn't exist: Foo (0.001 + 0.000 secs).\r\n"
		 "a3 BAD Error in IMAP command: Unknown command\r\na4 OK\r\na5 ok [READ-ONLY] Done\r\n", &s);
	cr_assert_eq(s.n, 5);
	cr_assert_str_eq(s.tag[0], "a1");
	cr_assert_eq(s.status[1], IMAP_STATUS_NO);
	cr_assert_str_eq(s.code[1], "NONEXISTENT");
	cr_assert_str_eq(s.text[1], "Mailbox doesn't exist: Foo (0.001 + 0.000 secs).");
	cr_assert_eq(s.status[2], IMAP_STATUS_BAD);
	cr_assert_str_eq(s.text[3], "");
	cr_assert_eq(s.status[4], IMAP_STATUS_OK);
	cr_assert_str_eq(s.code[4], "READ-ONLY");
}

Test(parser, untagged_status_bye_preauth_and_codes)
{
	struct seen s;
	PARSE_OK("* BYE Autologout; idle for too long\r\n* PREAUTH [ALERT] welcome\r\n"
		 "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
		 "* NO [ALERT] disk full\r\n* OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n", &s);
	cr_assert_eq(s.n, 6);
	cr_assert_eq(s.status[0], IMAP_STATUS_BYE);
	cr_assert_eq(s.status[1], IMAP_STATUS_PREAUTH);
	cr_assert_str_eq(s.code[2], "PERMANENTFLAGS (\\Deleted \\Seen \\*)");
	cr_assert_str_eq(s.code[3], "UIDVALIDITY 3857529045");
	cr_assert_str_eq(s.code[5], "COPYUID 38505 304,319:320 3956:3958");
}

Test(parser, continuation)
{
	struct seen s;
	PARSE_OK("+ \r\n+\r\n+ Ready for literal data\r\n+ eyJzdGF0dXMiOiI0MDEifQ==\r\n", &s);
	cr_assert_eq(s.n, 4);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(s.kind[i], IMAP_RESP_CONTINUATION);
	cr_assert_str_eq(s.text[2], "Ready for literal data");
	cr_assert_str_eq(s.text[3], "eyJzdGF0dXMiOiI0MDEifQ==");
}

Test(parser, fetch_with_inline_literal)
{
	struct seen s;
	PARSE_OK("* 12 FETCH (FLAGS (\\Seen $Forwarded) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" "
		 "RFC822.SIZE 4286 UID 44 BODY[HEADER.FIELDS (DATE FROM)] {9}\r\nFrom: a\r\n)\r\n", &s);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.number[0], 12);
	cr_assert_str_eq(s.name[0], "FETCH");
	cr_assert_str_eq(s.flat[0], "(FLAGS (\\Seen $Forwarded) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" "
				    "RFC822.SIZE 4286 UID 44 BODY[HEADER.FIELDS (DATE FROM)] {From: a\r\n})");
}

Test(parser, big_literal_is_streamed_in_chunks_not_buffered)
{
	struct imap_parser_limits lim;
	imap_parser_default_limits(&lim);
	lim.max_memory = 256 << 10; /* far below the literal */
	struct seen s;
	struct imap_parser *p = mk(&s, &lim);
	s.stream = 1;
	const char *head = "* 1 FETCH (UID 7 BODY[] {8000000}\r\n";
	cr_assert_eq(imap_parser_feed(p, head, strlen(head)), (ssize_t)strlen(head));
	static char chunk[65536];
	memset(chunk, 'x', sizeof(chunk));
	size_t left = 8000000;
	while (left > 0) {
		size_t n = left < sizeof(chunk) ? left : sizeof(chunk);
		cr_assert_eq(imap_parser_feed(p, chunk, n), (ssize_t)n);
		left -= n;
	}
	const char *tail = " FLAGS (\\Seen))\r\n";
	cr_assert_eq(imap_parser_feed(p, tail, strlen(tail)), (ssize_t)strlen(tail));
	cr_assert_eq(imap_parser_finish(p), 0);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.streamed_bytes, 8000000);
	cr_assert_eq(s.streamed_sum, 8000000ull * 'x');
	cr_assert(s.streamed_chunks >= 8000000 / 65536);
	cr_assert_str_eq(s.lit_prev, "BODY[]");
	cr_assert_str_eq(s.flat[0], "(UID 7 BODY[] <lit 8000000 hashed> FLAGS (\\Seen))");
	imap_parser_free(p);
}

Test(parser, big_literal_skipped_without_callback_interest)
{
	struct seen s;
	struct imap_parser *p = mk(&s, NULL);
	char *in = malloc(200000);
	int n = sprintf(in, "* 1 FETCH (BODY[] {100000}\r\n");
	memset(in + n, 'y', 100000);
	strcpy(in + n + 100000, ")\r\n");
	cr_assert_eq(imap_parser_feed(p, in, strlen(in)), (ssize_t)strlen(in));
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.streamed_bytes, 0);
	cr_assert_str_eq(s.flat[0], "(BODY[] <lit 100000 skipped>)");
	free(in);
	imap_parser_free(p);
}

Test(parser, literal8_and_nonsync_literal_and_empty_literal)
{
	struct seen s;
	PARSE_OK("* 1 FETCH (BINARY[] ~{3}\r\n\x01\x02\x03 X {0}\r\n Y {2+}\r\nab)\r\n", &s);
	cr_assert_eq(s.n, 1);
	cr_assert_str_eq(s.flat[0], "(BINARY[] {\x01\x02\x03} X {} Y {ab})");
}

Test(parser, literal_with_nul_bytes_is_data)
{
	struct seen s;
	PARSE_OK("* 1 FETCH (BODY[] {3}\r\na\0b)\r\n", &s);
	cr_assert_eq(s.n, 1);
}

Test(parser, list_lsub_namespace_status)
{
	struct seen s;
	PARSE_OK("* LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n"
		 "* LIST (\\Noselect \\HasChildren) \".\" \"Projects.2019\"\r\n"
		 "* LIST () NIL {11}\r\nfoo \"bar\"\\x\r\n"
		 "* LIST (\\HasNoChildren) \"/\" \"Entw&APw-rfe\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"
		 "* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\" \"X-PARAM\" (\"FLAG1\" \"FLAG2\"))) NIL\r\n"
		 "* STATUS \"Sent\" (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY 12 SIZE 100)\r\n"
		 "* LIST (\\HasNoChildren) \"\\\\\" \"a\\\"b\"\r\n", &s);
	cr_assert_eq(s.n, 7);
	cr_assert_str_eq(s.flat[0], "(\\HasNoChildren \\Sent) \"/\" Sent");
	cr_assert_str_eq(s.flat[2], "() NIL {foo \"bar\"\\x}");
	cr_assert_str_eq(s.name[4], "NAMESPACE");
	cr_assert_str_eq(s.flat[4], "((\"\" \"/\")) ((\"Other Users/\" \"/\" \"X-PARAM\" (\"FLAG1\" \"FLAG2\"))) NIL");
	cr_assert_str_eq(s.flat[5], "\"Sent\" (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY 12 SIZE 100)");
	cr_assert_str_eq(s.flat[6], "(\\HasNoChildren) \"\\\" \"a\"b\"");
}

Test(parser, search_esearch_expunge_exists_capability_id_enabled)
{
	struct seen s;
	PARSE_OK("* SEARCH 2 84 882\r\n* SEARCH\r\n* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3\r\n"
		 "* 22 EXPUNGE\r\n* 23 EXISTS\r\n* 1 RECENT\r\n* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI\r\n"
		 "* ID (\"name\" \"Cyrus\" \"version\" NIL)\r\n* ENABLED CONDSTORE\r\n"
		 "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 5 FETCH (MODSEQ (624140003))\r\n"
		 "* VANISHED (EARLIER) 41,43:116\r\n", &s);
	cr_assert_eq(s.n, 12);
	cr_assert_str_eq(s.flat[0], "2 84 882");
	cr_assert_str_eq(s.flat[1], "");
	cr_assert_eq(s.number[3], 22);
	cr_assert_str_eq(s.name[3], "EXPUNGE");
	cr_assert_str_eq(s.name[6], "CAPABILITY");
	cr_assert_str_eq(s.flat[7], "(\"name\" \"Cyrus\" \"version\" NIL)");
}

Test(parser, quoted_escapes_and_utf8)
{
	struct seen s;
	PARSE_OK("* LIST () \"/\" \"a \\\\ b \\\" c ü\"\r\n", &s);
	cr_assert_str_eq(s.flat[0], "() \"/\" \"a \\ b \" c ü\"");
}

Test(parser, stop_after_response_leaves_rest_unread)
{
	struct seen s;
	struct imap_parser *p = mk(&s, NULL);
	s.stop_after = 1;
	const char *in = "a1 OK Begin TLS\r\n* OK injected\r\n";
	cr_assert_eq(imap_parser_feed(p, in, strlen(in)), 17);
	cr_assert_eq(s.n, 1);
	cr_assert(imap_parser_idle(p));
	imap_parser_free(p);
}

/* ---- malformed and hostile input ---------------------------------------- */

Test(malformed, truncated_literal)
{
	const char in[] = "* 1 FETCH (BODY[] {100}\r\nonly a little";
	expect_error(in, sizeof(in) - 1, NULL, "input ended inside a literal");
}

Test(malformed, literal_size_2_pow_40)
{
	const char in[] = "* 1 FETCH (BODY[] {1099511627776}\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "literal of 1099511627776 bytes exceeds the limit");
}

Test(malformed, literal_size_overflow)
{
	const char in[] = "* 1 FETCH (BODY[] {999999999999999999999999999}\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "literal size too large");
}

Test(malformed, literal_size_garbage)
{
	const char in[] = "* 1 FETCH (BODY[] {12a}\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "malformed literal size");
	const char in2[] = "* 1 FETCH (BODY[] {}\r\n";
	expect_error(in2, sizeof(in2) - 1, NULL, "literal without a size");
	const char in3[] = "* 1 FETCH (BODY[] {3}\nabc)\r\n";
	expect_error(in3, sizeof(in3) - 1, NULL, "literal size not followed by CRLF");
}

Test(malformed, line_without_crlf)
{
	const char in[] = "* OK no line end";
	expect_error(in, sizeof(in) - 1, NULL, "input ended inside a response (no CRLF)");
	const char in2[] = "* OK bare LF\n* OK next\r\n";
	expect_error(in2, sizeof(in2) - 1, NULL, "LF without CR");
	const char in3[] = "* OK CR alone\rX\r\n";
	expect_error(in3, sizeof(in3) - 1, NULL, "CR not followed by LF");
}

Test(malformed, ten_megabyte_line, .timeout = 20)
{
	size_t len = 10 << 20;
	char *in = malloc(len + 3);
	memcpy(in, "* SEARCH", 8);
	for (size_t i = 8; i < len; i++)
		in[i] = (i % 2) ? ' ' : '7';
	memcpy(in + len, "\r\n", 3);
	struct seen s;
	struct imap_parser *p = mk(&s, NULL);
	cr_assert_eq(imap_parser_feed(p, in, len + 2), -1);
	cr_assert(strstr(imap_parser_error(p), "response line longer than 1048576 bytes") != NULL,
		  "%s", imap_parser_error(p));
	imap_parser_free(p);
	/* a 10 MB text line too */
	memcpy(in, "* OK ", 5);
	memset(in + 5, 'a', len - 5);
	p = mk(&s, NULL);
	cr_assert_eq(imap_parser_feed(p, in, len + 2), -1);
	cr_assert(strstr(imap_parser_error(p), "longer than") != NULL, "%s", imap_parser_error(p));
	imap_parser_free(p);
	/* and a 10 MB atom: the token limit trips first */
	memcpy(in, "* X ", 4);
	memset(in + 4, 'a', len - 4);
	p = mk(&s, NULL);
	cr_assert_eq(imap_parser_feed(p, in, len + 2), -1);
	cr_assert(strstr(imap_parser_error(p), "atom longer than 65536 bytes") != NULL, "%s",
		  imap_parser_error(p));
	imap_parser_free(p);
	free(in);
}

Test(malformed, nul_bytes)
{
	const char in[] = "a1 OK \0 nul in text\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "NUL byte in response text");
	const char in2[] = "* 1 FETCH (FL\0AGS ())\r\n";
	expect_error(in2, sizeof(in2) - 1, NULL, "NUL byte in atom");
	const char in3[] = "* LIST () \"/\" \"a\0b\"\r\n";
	expect_error(in3, sizeof(in3) - 1, NULL, "NUL byte in quoted string");
	const char in4[] = "\0* OK\r\n";
	expect_error(in4, sizeof(in4) - 1, NULL, "NUL byte in tag");
}

Test(malformed, unbalanced_parentheses)
{
	const char in[] = "* 1 FETCH (FLAGS (\\Seen)\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "unbalanced parentheses: 1 '(' not closed");
	const char in2[] = "* 1 FETCH (FLAGS (\\Seen)))\r\n";
	expect_error(in2, sizeof(in2) - 1, NULL, "unbalanced parentheses: ')' without '('");
	const char in3[] = "* OK [PERMANENTFLAGS (\\Seen] x\r\n";
	expect_error(in3, sizeof(in3) - 1, NULL, "unbalanced parentheses in response code");
	const char in4[] = "* OK [ALERT x\r\n";
	expect_error(in4, sizeof(in4) - 1, NULL, "response code not closed");
}

Test(malformed, nesting_depth_limit)
{
	char in[300] = "* 1 FETCH ";
	for (int i = 0; i < 40; i++)
		strcat(in, "(");
	strcat(in, "\r\n");
	expect_error(in, strlen(in), NULL, "nested deeper than 32 levels");
}

Test(malformed, unterminated_quoted_string)
{
	const char in[] = "* LIST () \"/\" \"abc\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "quoted string not terminated");
}

Test(malformed, bad_tags_and_words)
{
	const char in[] = " OK x\r\n";
	expect_error(in, sizeof(in) - 1, NULL, "instead of a tag");
	const char in2[] = "a1 FETCH x\r\n";
	expect_error(in2, sizeof(in2) - 1, NULL, "tagged response with status 'FETCH'");
	const char in3[] = "a1\r\n";
	expect_error(in3, sizeof(in3) - 1, NULL, "ends after the tag");
	const char in4[] = "* 99999999999 EXISTS\r\n";
	expect_error(in4, sizeof(in4) - 1, NULL, "out of range");
	const char in5[] = "a(1 OK\r\n";
	expect_error(in5, sizeof(in5) - 1, NULL, "invalid character '(' in tag");
}

Test(malformed, memory_limit)
{
	struct imap_parser_limits lim;
	imap_parser_default_limits(&lim);
	lim.max_memory = 64 << 10;
	char *in = malloc(600000);
	strcpy(in, "* SEARCH");
	for (int i = 0; i < 100000; i++)
		strcat(in + 8 + i * 2 - (i ? 0 : 0), " 1");
	strcat(in, "\r\n");
	struct seen s;
	struct imap_parser *p = mk(&s, &lim);
	cr_assert_eq(imap_parser_feed(p, in, strlen(in)), -1);
	cr_assert(strstr(imap_parser_error(p), "needs more than 65536 bytes of memory") != NULL, "%s",
		  imap_parser_error(p));
	imap_parser_free(p);
	free(in);
}

Test(malformed, failed_parser_stays_failed_and_reset_recovers)
{
	struct seen s;
	struct imap_parser *p = mk(&s, NULL);
	cr_assert_eq(imap_parser_feed(p, "* 1 FETCH ))\r\n", 14), -1);
	cr_assert_eq(imap_parser_feed(p, "* OK\r\n", 6), -1);
	imap_parser_reset(p);
	cr_assert_null(imap_parser_error(p));
	cr_assert_eq(imap_parser_feed(p, "* OK fine\r\n", 11), 11);
	cr_assert_eq(s.n, 1);
	imap_parser_free(p);
}

Test(helpers, node_pair_and_numbers)
{
	struct seen s;
	memset(&s, 0, sizeof(s));
	struct imap_parser *p = imap_parser_new(NULL, NULL, NULL);
	imap_parser_free(p);
	uint64_t v = 0;
	struct imap_node a = {.type = IMAP_NODE_ATOM, .str = "18446744073709551615", .len = 20};
	cr_assert_eq(imap_node_u64(&a, &v), 0);
	cr_assert_eq(v, UINT64_MAX);
	struct imap_node b = {.type = IMAP_NODE_ATOM, .str = "18446744073709551616", .len = 20};
	cr_assert_eq(imap_node_u64(&b, &v), -1);
	struct imap_node val = {.type = IMAP_NODE_ATOM, .str = "7", .len = 1};
	struct imap_node key = {.type = IMAP_NODE_ATOM, .str = "uid", .len = 3, .next = &val};
	struct imap_node list = {.type = IMAP_NODE_LIST, .children = &key, .len = 2};
	cr_assert_eq(imap_node_pair(&list, "UID"), &val);
	cr_assert_null(imap_node_pair(&list, "FLAGS"));
}
