/* libFuzzer target: ferryd's users CSV import parser (service/csv.c).
 * Any input: csv_parse_users either fails with a "line N: ..." message and
 * returns nothing, or returns rows whose fields are valid C strings and
 * whose names pass the validators the API applies. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "csv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct csv_users users;
	char *err = NULL;

	memset(&users, 0, sizeof(users));
	if (csv_parse_users((const char *)data, size, &users, &err) < 0) {
		assert(users.count == 0);
		assert(err == NULL || strncmp(err, "line ", 5) == 0);
		free(err);
		return 0;
	}
	assert(err == NULL);
	for (size_t i = 0; i < users.count; i++) {
		const struct csv_user *u = &users.rows[i];
		assert(u->user != NULL && csv_valid_name(u->user));
		assert(u->line >= 1);
		(void)strlen(u->old_login);
		(void)strlen(u->new_login);
		(void)strlen(u->host);
		(void)strlen(u->tls);
		(void)strlen(u->auth);
		(void)strlen(u->wave);
		if (u->password != NULL)
			(void)strlen(u->password);
		assert(u->port > 0 && u->port < 65536);
	}
	csv_users_free(&users);
	return 0;
}
