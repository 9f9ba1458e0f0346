/* Pure parts of the Sieve and DNS steps: fileinto rewriting (sieve.c)
   and DNSBL query names (dns.c). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "sieve.h"

static const char *olds[] = {"Projects.2024", "Sent Items", "Odd\"Name"};
static const char *news[] = {"Work/2024", "Sent", "Odd/Name"};
static const struct sieve_folder_map map = {olds, news, 3, "INBOX."};

static char *rw(const char *in, struct sieve_rewrites *r)
{
	char err[200] = "";
	char *out = sieve_rewrite_fileinto(in, &map, r, err, sizeof(err));
	cr_assert(out != NULL, "rewrite failed: %s", err);
	return out;
}

Test(sieve, fileinto_targets_follow_the_map)
{
	struct sieve_rewrites r;
	char *out = rw("require [\"fileinto\", \"imap4flags\"];\n"
		       "if true { fileinto :copy :flags [\"\\\\Seen\", \"x\"] \"Projects.2024\"; }\n"
		       "FileInto \"Sent Items\"; fileinto \"INBOX.Projects.2024\";\n", &r);
	cr_assert_str_eq(out, "require [\"fileinto\", \"imap4flags\"];\n"
			      "if true { fileinto :copy :flags [\"\\\\Seen\", \"x\"] \"Work/2024\"; }\n"
			      "FileInto \"Sent\"; fileinto \"Work/2024\";\n");
	cr_assert_eq(r.n, 3);
	free(out);
	sieve_rewrites_free(&r);
}

Test(sieve, comments_strings_and_unknown_folders_are_left_alone)
{
	struct sieve_rewrites r;
	const char *in = "# fileinto \"Projects.2024\";\n/* fileinto \"Projects.2024\"; */\n"
			 "if header :contains \"subject\" \"fileinto \\\"Projects.2024\\\"\" {\n"
			 "  fileinto \"Elsewhere\"; fileinto \"${folder}\";\n}\n"
			 "vacation :subject \"away\" text:\nfileinto \"Projects.2024\";\n.\n;\n";
	char *out = rw(in, &r);
	cr_assert_str_eq(out, in);
	cr_assert_eq(r.n, 2);
	cr_assert_null(r.v[0].to);
	cr_assert_str_eq(r.v[1].note, "uses variables: not rewritten");
	free(out);
	sieve_rewrites_free(&r);
}

Test(sieve, quotes_in_names_are_escaped)
{
	struct sieve_rewrites r;
	char *out = rw("fileinto \"Odd\\\"Name\";", &r);
	cr_assert_str_eq(out, "fileinto \"Odd/Name\";");
	free(out);
	sieve_rewrites_free(&r);
}

Test(sieve, unterminated_string_is_an_error)
{
	struct sieve_rewrites r;
	char err[200] = "";
	cr_assert_null(sieve_rewrite_fileinto("fileinto \"x", &map, &r, err, sizeof(err)));
	cr_assert(strstr(err, "unterminated string") != NULL, "%s", err);
}

Test(sieve, disabled_copy_keeps_every_line)
{
	char *c = sieve_disabled_copy("a;\nb;", "line 1: error\nline 2: error");
	cr_assert(strstr(c, "# line 1: error\n# line 2: error\n") != NULL, "%s", c);
	cr_assert(strstr(c, "\n# a;\n# b;\n") != NULL, "%s", c);
	free(c);
}

Test(dns, blocklist_names)
{
	char b[300];
	cr_assert_eq(dns_blocklist_name("127.0.0.20", "bl.test", b, sizeof(b)), 0);
	cr_assert_str_eq(b, "20.0.0.127.bl.test");
	cr_assert_eq(dns_blocklist_name("2001:db8::1", "bl.test", b, sizeof(b)), 0);
	cr_assert_str_eq(b, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test");
	cr_assert_eq(dns_blocklist_name("mail.example", "bl.test", b, sizeof(b)), -1);
}
