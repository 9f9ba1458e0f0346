#include <criterion/criterion.h>
#include <string.h>

#include "csv.h"

static int parse(const char *text, struct csv_users *u, char **err)
{
	*err = NULL;
	return csv_parse_users(text, strlen(text), u, err);
}

Test(csv, minimal_with_defaults)
{
	struct csv_users u;
	char *err;

	cr_assert_eq(parse("user,endpoint\nalice,old.example.com\n", &u, &err), 0, "%s", err);
	cr_assert_eq(u.count, 1);
	cr_assert_str_eq(u.rows[0].user, "alice");
	cr_assert_str_eq(u.rows[0].old_login, "alice");
	cr_assert_str_eq(u.rows[0].new_login, "alice");
	cr_assert_str_eq(u.rows[0].host, "old.example.com");
	cr_assert_eq(u.rows[0].port, 143);
	cr_assert_str_eq(u.rows[0].tls, "starttls");
	cr_assert_str_eq(u.rows[0].auth, "master");
	cr_assert_str_eq(u.rows[0].wave, "");
	cr_assert_null(u.rows[0].password);
	cr_assert_eq(u.rows[0].line, 2);
	csv_users_free(&u);
}

Test(csv, new_host_column)
{
	struct csv_users u;
	char *err;

	cr_assert_eq(parse("user,endpoint,new_host\nalice,old,10.0.0.2\nbob,old,\n", &u, &err),
		     0, "%s", err);
	cr_assert_str_eq(u.rows[0].new_host, "10.0.0.2");
	cr_assert_str_eq(u.rows[1].new_host, "");
	csv_users_free(&u);
	cr_assert_eq(parse("user,endpoint,new_host\nalice,old,back end\n", &u, &err), -1);
	cr_assert(strstr(err, "line 2: new_host") != NULL, "%s", err);
	free(err);
}

Test(csv, all_columns_quotes_semicolons_comments)
{
	struct csv_users u;
	char *err;
	const char *text =
		"# exported from the old directory\n"
		"user;old_login;new_login;endpoint;tls;auth;wave;password\n"
		"\n"
		"bob;bob@old;bob@new;imap.old:993;imaps;;w1;\"p;a\"\"ss\"\n"
		"# a comment between rows\n"
		"carol;;;10.0.0.5:1143;none;master;w2;\n";

	cr_assert_eq(parse(text, &u, &err), 0, "%s", err);
	cr_assert_eq(u.count, 2);
	cr_assert_str_eq(u.rows[0].old_login, "bob@old");
	cr_assert_eq(u.rows[0].port, 993);
	cr_assert_str_eq(u.rows[0].auth, "password");
	cr_assert_str_eq(u.rows[0].password, "p;a\"ss");
	cr_assert_eq(u.rows[0].line, 4);
	cr_assert_str_eq(u.rows[1].host, "10.0.0.5");
	cr_assert_eq(u.rows[1].port, 1143);
	cr_assert_eq(u.rows[1].line, 6);
	csv_users_free(&u);
}

static void expect_error(const char *text, const char *want)
{
	struct csv_users u;
	char *err;

	cr_assert_eq(parse(text, &u, &err), -1);
	cr_assert_not_null(err);
	cr_assert(strstr(err, want) != NULL, "error \"%s\" lacks \"%s\"", err, want);
	cr_assert_eq(u.count, 0);
	cr_assert_null(u.rows);
	free(err);
}

Test(csv, errors_name_the_line)
{
	expect_error("", "line 1: no header");
	expect_error("user,endpoint,color\n", "line 1: unknown column \"color\"");
	expect_error("user,wave\nalice,w1\n", "line 1: the header needs the columns user and endpoint");
	expect_error("user,endpoint\na,h\nb,h:99999\n", "line 3: endpoint");
	expect_error("user,endpoint\na,h\nb\n", "line 3: 1 fields, the header has 2");
	expect_error("user,endpoint\na,h\na,h\n", "line 3: user \"a\" already on line 2");
	expect_error("user,endpoint\n\"a b\",h\n", "line 2: user");
	expect_error("user,endpoint,tls\na,h,ssl\n", "line 2: tls");
	expect_error("user,endpoint,wave\na,h,bad/wave\n", "line 2: wave");
	expect_error("user,endpoint,auth\na,h,password\n", "line 2: auth=password needs a password");
	expect_error("user,endpoint\n\"a,h\n", "line 2: unterminated");
	expect_error("user,endpoint\n", "no users");
}

Test(csv, quoted_newline_keeps_line_numbers)
{
	struct csv_users u;
	char *err;

	/* a quoted field spanning lines: the next record starts on line 4 */
	cr_assert_eq(parse("user,endpoint,password\na,h,\"x\ny\"\nb,h,\n", &u, &err), 0, "%s", err);
	cr_assert_eq(u.rows[1].line, 4);
	csv_users_free(&u);
	expect_error("user,endpoint,password\na,h,\"x\ny\"\nb,h:0,\n", "line 4: endpoint");
}

Test(csv, write_field_quotes_and_defuses_formulas)
{
	char *text = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&text, &len);

	csv_write_field(fp, "plain", 0);
	csv_write_field(fp, "a,b \"q\"", 0);
	csv_write_field(fp, "=HYPERLINK(\"x\")", 0);
	csv_write_field(fp, NULL, 1);
	fclose(fp);
	cr_assert_str_eq(text, "plain,\"a,b \"\"q\"\"\",\"'=HYPERLINK(\"\"x\"\")\",\r\n");
	free(text);
}
