#include <criterion/criterion.h>
#include <string.h>

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
