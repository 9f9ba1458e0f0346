#include <criterion/criterion.h>
#include <string.h>

#include "evlog.h"
#include "metrics.h"

/* error texts as ferryd logs them (tests/test_ferryd.py, docs/ferryd.md) */
Test(metrics, reason_classes)
{
	static const struct { const char *error, *class; } cases[] = {
		{ "LIST failed: Authentication failed: [AUTHENTICATIONFAILED] Authentication "
		  "failed. (doveadm: temporary failure (exit code 75))", "auth" },
		{ "doveadm HTTP API refused the API key (HTTP 401): check doveadm_api_key_file",
		  "auth" },
		{ "verification failed: Bulk: flags 1 (first: uid 3)", "verify" },
		{ "identity check for alice failed: the master login alone sees the same "
		  "mailbox", "auth" },
		{ "old server: imapc: connect(127.0.0.1:143) failed: Connection refused "
		  "(doveadm: temporary failure (exit code 75))", "connect" },
		{ "doveadm request timed out after 3600 s", "timeout" },
		{ "doveadm: user unknown (exit code 67)", "unknown-user" },
		{ "some folders are still not complete after pulling them", "incomplete" },
		{ "doveadm HTTP API answered HTTP 500", "doveadm" },
		{ "something new", "other" },
		{ "", "other" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		cr_assert_str_eq(metrics_reason_class(cases[i].error), cases[i].class, "%s",
				 cases[i].error);
	cr_assert_str_eq(metrics_reason_class(NULL), "other");
}
