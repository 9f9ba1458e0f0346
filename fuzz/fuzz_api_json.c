/* libFuzzer target: the admin API's request body handling (service/api.c
 * handle() and its handlers) as far as it is reachable without a server
 * and a store: the body is decoded with jansson exactly as handle() does
 * (json_loadb, must be an object), then every field a handler reads goes
 * through the same functions the handlers call: "csv" -> csv_parse_users
 * (POST /v1/import), "name"/"wave" -> csv_valid_wave, "user"/"users" ->
 * csv_valid_name (wave/add, pause, sync), "start_after"/"since" ->
 * api_parse_time (wave/create, log), "window" -> sched_parse_window, and a
 * CSV "password" -> secret_encrypt/secret_decrypt (what import stores). */
#include <assert.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "csv.h"
#include "scheduler.h"
#include "secret.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *str(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	json_t *body = json_loadb((const char *)data, size, 0, &jerr), *v;
	const char *s;
	size_t i;

	if (!json_is_object(body)) {
		json_decref(body);
		return 0;
	}
	if ((s = str(body, "csv")) != NULL) {
		struct csv_users users;
		char *err = NULL;

		if (csv_parse_users(s, strlen(s), &users, &err) < 0) {
			free(err);
		} else {
			for (i = 0; i < users.count && i < 4; i++) {
				const char *pw = users.rows[i].password;
				if (pw != NULL) {
					char *enc = secret_encrypt("fuzz-key", pw), *dec;
					assert(enc != NULL);
					dec = secret_decrypt("fuzz-key", enc);
					assert(dec != NULL && strcmp(dec, pw) == 0);
					assert(secret_decrypt("other-key", enc) == NULL);
					free(enc);
					free(dec);
				}
			}
			csv_users_free(&users);
		}
	}
	if ((s = str(body, "name")) != NULL)
		(void)csv_valid_wave(s);
	if ((s = str(body, "wave")) != NULL)
		(void)csv_valid_wave(s);
	if ((s = str(body, "user")) != NULL)
		(void)csv_valid_name(s);
	json_array_foreach(json_object_get(body, "users"), i, v) {
		if (json_is_string(v))
			(void)csv_valid_name(json_string_value(v));
	}
	if ((s = str(body, "start_after")) != NULL)
		(void)api_parse_time(s, 1700000000LL);
	if ((s = str(body, "since")) != NULL)
		(void)api_parse_time(s, 1700000000LL);
	if ((s = str(body, "window")) != NULL) {
		int a = -1, b = -1;
		if (sched_parse_window(s, &a, &b) == 0)
			assert(a >= 0 && a < 24 * 60 && b >= 0 && b <= 24 * 60 && a != b);
	}
	if ((s = str(body, "password")) != NULL && strlen(s) < 4096) {
		char *enc = secret_encrypt("fuzz-key", s), *dec = NULL;
		if (enc != NULL)
			dec = secret_decrypt("fuzz-key", enc);
		assert(enc != NULL && dec != NULL && strcmp(dec, s) == 0);
		free(enc);
		free(dec);
	}
	/* the reply path serialises what it got */
	free(json_dumps(body, JSON_COMPACT));
	json_decref(body);
	return 0;
}
