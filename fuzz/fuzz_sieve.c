/* libFuzzer target for what the Sieve step reads from the old server:
 * scripts (sieve_rewrite_fileinto, sieve_disabled_copy) and ManageSieve
 * lines (the IMAP parser in its line mode). First byte even: the input is
 * a script; it is rewritten with a small folder map, and a script in which
 * nothing was rewritten must come back byte for byte. Odd: the rest is fed
 * to the parser in line mode, in one piece and in small pieces, and both
 * runs must see the same number of lines and the same outcome. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap-parser.h"
#include "sieve.h"

static int count_line(void *ctx, const struct imap_response *r)
{
	unsigned *n = ctx;
	(*n)++;
	(void)imap_node_text(imap_node_child(r->data, 0));
	return 0;
}

static int feed(const uint8_t *d, size_t n, size_t piece, unsigned *lines)
{
	struct imap_parser_limits lim;
	imap_parser_default_limits(&lim);
	lim.max_line = 4096;
	lim.max_inline_literal = 256;
	struct imap_parser_callbacks cb = {NULL, NULL, NULL, count_line};
	struct imap_parser *p = imap_parser_new(&lim, &cb, lines);
	imap_parser_set_lines(p, 1);
	int ok = 1;
	for (size_t i = 0; i < n && ok; i += piece) {
		size_t k = n - i < piece ? n - i : piece;
		ok = imap_parser_feed(p, d + i, k) >= 0;
	}
	imap_parser_free(p);
	return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1) {
		unsigned a = 0, b = 0;
		int ra = feed(data + 1, size - 1, size, &a);
		int rb = feed(data + 1, size - 1, 1 + data[0] % 7, &b);
		if (ra != rb || a != b)
			abort();
		return 0;
	}
	char *script = malloc(size);
	memcpy(script, data + 1, size - 1);
	script[size - 1] = '\0';
	static const char *olds[] = {"Projects.2024", "INBOX.Sent Items", "a\"b\\c"};
	static const char *news[] = {"Work/2024", "Sent", "x/y"};
	struct sieve_folder_map map = {olds, news, 3, "INBOX."};
	struct sieve_rewrites rw;
	char err[200];
	char *out = sieve_rewrite_fileinto(script, &map, &rw, err, sizeof(err));
	if (out != NULL) {
		int changed = 0;
		for (size_t i = 0; i < rw.n; i++)
			changed |= rw.v[i].to != NULL;
		if (!changed && strcmp(out, script) != 0)
			abort();
		sieve_rewrites_free(&rw);
		free(out);
	}
	char *copy = sieve_disabled_copy(script, err);
	free(copy);
	free(script);
	return 0;
}
