#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

Test(config, defaults_and_values)
{
	struct ferry_config c;
	char *err = NULL;

	config_defaults(&c);
	cr_assert_str_eq(c.listen_host, "127.0.0.1");
	cr_assert_eq(c.max_per_host, 2);
	cr_assert_eq(config_parse("# comment\n\nlisten = 127.0.0.1:9000\n"
				  "max_per_host = 3 # trailing comment\n"
				  "state_db=/tmp/x.db\ndoveadm = ::1:8080\n", "t", &c, &err), 0,
		     "%s", err);
	cr_assert_eq(c.listen_port, 9000);
	cr_assert_eq(c.max_per_host, 3);
	cr_assert_str_eq(c.state_db, "/tmp/x.db");
	cr_assert_str_eq(c.doveadm_host, "::1");
	cr_assert_eq(c.doveadm_port, 8080);
	config_free(&c);
}

static void expect_error(const char *text, const char *want)
{
	struct ferry_config c;
	char *err = NULL;

	config_defaults(&c);
	cr_assert_eq(config_parse(text, "ferryd.conf", &c, &err), -1);
	cr_assert(err != NULL && strstr(err, want) != NULL, "\"%s\" lacks \"%s\"", err, want);
	free(err);
	config_free(&c);
}

Test(config, errors_name_the_line)
{
	expect_error("max_per_host = 2\nbogus = 1\n", "ferryd.conf:2: unknown setting \"bogus\"");
	expect_error("max_per_host = zero\n", "ferryd.conf:1: max_per_host: expected a number");
	expect_error("max_per_host = 0\n", "from 1 to 1000");
	expect_error("\n\nlisten = nowhere\n", "ferryd.conf:3: listen: expected HOST:PORT");
	expect_error("just words\n", "ferryd.conf:1: expected \"key = value\"");
}

Test(config, load_requires_files)
{
	struct ferry_config c;
	char *err = NULL;
	char path[] = "/tmp/ferry-test-config-XXXXXX";
	int fd = mkstemp(path);

	dprintf(fd, "state_db = /tmp/x.db\napi_token_file = /tmp/t\n");
	close(fd);
	config_defaults(&c);
	cr_assert_eq(config_load(path, &c, &err), -1);
	cr_assert(strstr(err, "doveadm_api_key_file is required") != NULL, "%s", err);
	free(err);
	config_free(&c);
	unlink(path);
	config_defaults(&c);
	cr_assert_eq(config_load("/nonexistent/ferryd.conf", &c, &err), -1);
	cr_assert(strstr(err, "No such file") != NULL, "%s", err);
	free(err);
	config_free(&c);
}

Test(config, booleans_take_yes_no_true_false_1_0)
{
	static const struct { const char *v; int want; } cases[] = {
		{ "yes", 1 }, { "no", 0 }, { "true", 1 }, { "false", 0 }, { "1", 1 },
		{ "0", 0 }, { "Yes", 1 }, { "FALSE", 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ferry_config c;
		char *err = NULL, text[128];

		config_defaults(&c);
		c.verify_after_pull = c.allow_root = !cases[i].want;
		snprintf(text, sizeof(text), "verify_after_pull = %s\nallow_root = %s\n",
			 cases[i].v, cases[i].v);
		cr_assert_eq(config_parse(text, "t", &c, &err), 0, "%s: %s", cases[i].v, err);
		cr_assert_eq(c.verify_after_pull, cases[i].want, "verify_after_pull = %s", cases[i].v);
		cr_assert_eq(c.allow_root, cases[i].want, "allow_root = %s", cases[i].v);
		config_free(&c);
	}
	expect_error("verify_after_pull = maybe\n",
		     "ferryd.conf:1: verify_after_pull: expected yes or no (true/false, 1/0), got \"maybe\"");
	expect_error("allow_root = 2\n", "allow_root: expected yes or no");
}

Test(config, store_backend_and_pgsql_password_never_in_conninfo)
{
	struct ferry_config c;
	char *err = NULL;

	config_defaults(&c);
	cr_assert_str_eq(c.store, "sqlite");
	cr_assert_eq(config_parse("store = pgsql\npgsql_conninfo = host=127.0.0.1 dbname=ferry"
				  " user=ferry passfile=/etc/ferry/pgpass\n"
				  "pgsql_password_file = /etc/ferry/pgsql.pw\n"
				  "pgsql_lock_timeout_ms = 250\n", "t", &c, &err), 0, "%s", err);
	cr_assert_str_eq(c.store, "pgsql");
	cr_assert_str_eq(c.pgsql_password_file, "/etc/ferry/pgsql.pw");
	cr_assert_eq(c.pgsql_lock_timeout_ms, 250);
	config_free(&c);
	expect_error("store = mysql\n", "ferryd.conf:1: store: expected sqlite or pgsql");
	expect_error("pgsql_conninfo = host=db password=secret\n",
		     "ferryd.conf:1: pgsql_conninfo: no password here");
	expect_error("pgsql_conninfo = host=db PASSWORD = secret\n", "no password here");
	expect_error("pgsql_conninfo = postgresql://ferry:secret@db/ferry\n", "no password here");
}
