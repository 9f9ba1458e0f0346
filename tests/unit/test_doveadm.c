#include <criterion/criterion.h>
#include <string.h>

#include "backend.h"
#include "doveadm.h"
#include "secret.h"

static void parse(int status, const char *body, struct doveadm_reply *r)
{
	doveadm_parse_reply(status, body, strlen(body), "t1", r);
}

Test(doveadm, response_rows)
{
	struct doveadm_reply r;

	parse(200, "[[\"doveadmResponse\",[{\"folder\":\"INBOX\",\"state\":\"complete\"}],\"t1\"]]", &r);
	cr_assert(r.ok);
	cr_assert_eq(json_array_size(r.rows), 1);
	json_decref(r.rows);
}

Test(doveadm, errors)
{
	struct doveadm_reply r;

	parse(200, "[[\"error\",{\"type\":\"exitCode\", \"exitCode\":75},\"t1\"]]", &r);
	cr_assert_not(r.ok);
	cr_assert_eq(r.exit_code, 75);
	cr_assert_not(r.permanent);
	cr_assert(strstr(r.error, "temporary failure") != NULL);
	parse(200, "[[\"error\",{\"type\":\"exitCode\", \"exitCode\":67},\"t1\"]]", &r);
	cr_assert(r.permanent);
	cr_assert(strstr(r.error, "user unknown") != NULL);
	parse(401, "", &r);
	cr_assert_not(r.ok);
	cr_assert(strstr(r.error, "API key") != NULL);
	parse(200, "not json", &r);
	cr_assert_not(r.ok);
	parse(200, "[[\"doveadmResponse\",[],\"other\"]]", &r);
	cr_assert_not(r.ok);
}

/* a user's NEW backend put into doveadm, new_imap, new_sieve (backend.h) */
Test(backend, host_from_pattern_or_the_one_new)
{
	char out[64], err[256];

	/* shipped default: one NEW, users without a backend */
	cr_assert_eq(backend_host("127.0.0.1", "", "doveadm", out, sizeof(out), err,
				  sizeof(err)), 0);
	cr_assert_str_eq(out, "127.0.0.1");
	cr_assert_eq(backend_host("127.0.0.1", "127.0.0.1", "doveadm", out, sizeof(out), err,
				  sizeof(err)), 0);
	cr_assert_str_eq(out, "127.0.0.1");
	/* the pattern names each user's backend */
	cr_assert_eq(backend_host("%{host}", "10.0.0.3", "doveadm", out, sizeof(out), err,
				  sizeof(err)), 0);
	cr_assert_str_eq(out, "10.0.0.3");
	cr_assert_eq(backend_host("adm.%{host}", "b2.example", "doveadm", out, sizeof(out), err,
				  sizeof(err)), 0);
	cr_assert_str_eq(out, "adm.b2.example");
	/* never a pull where the mailbox is not */
	cr_assert_eq(backend_host("127.0.0.1", "10.0.0.3", "doveadm", out, sizeof(out), err,
				  sizeof(err)), -1);
	cr_assert(strstr(err, "set doveadm = %{host}:PORT") != NULL, "%s", err);
	cr_assert_eq(backend_host("%{host}", "", "new_imap", out, sizeof(out), err,
				  sizeof(err)), -1);
	cr_assert(strstr(err, "no NEW backend") != NULL, "%s", err);
	cr_assert_eq(backend_host("%{host}", "a-very-long-backend-name-that-does-not-fit-in-64-bytes-of-output."
				  "example", "doveadm", out, sizeof(out), err, sizeof(err)), -1);
}

Test(secret, roundtrip_and_tamper)
{
	char *enc = secret_encrypt("key material", "old-password");
	char *dec;

	cr_assert_not_null(enc);
	cr_assert(strstr(enc, "old-password") == NULL);
	dec = secret_decrypt("key material", enc);
	cr_assert_str_eq(dec, "old-password");
	free(dec);
	cr_assert_null(secret_decrypt("another key", enc));
	enc[5] = enc[5] == 'A' ? 'B' : 'A';
	cr_assert_null(secret_decrypt("key material", enc));
	free(enc);
}
