/* Re-encrypts the stored passwords from the old key to the current one
   (see rekey.h). Offline by design: ferryd --rekey reads both keys from
   files, so no key crosses the admin API or a command line. */
#include "rekey.h"
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret.h"

struct item {
	char *user, *enc;
};

struct items {
	struct item *v;
	size_t n, cap;
};

static int collect(const char *user, const char *enc, void *ctx)
{
	struct items *it = ctx;

	if (it->n == it->cap)
		it->v = realloc(it->v, (it->cap = it->cap ? it->cap * 2 : 64) * sizeof(*it->v));
	it->v[it->n].user = strdup(user);
	it->v[it->n].enc = strdup(enc);
	it->n++;
	return 0;
}

static void wipe(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* the value re-encrypted under new_key into *out (NULL: already there) */
static int rekey_one(const struct item *it, const char *old_key, const char *old_id,
		     const char *new_key, const char *new_id, char **out, char **err_r)
{
	char id[SECRET_KEY_ID_LEN + 1], *pw;
	int legacy = secret_value_key_id(it->enc, id) < 0;

	*out = NULL;
	if (!legacy && strcmp(id, new_id) == 0) {
		if ((pw = secret_decrypt(new_key, it->enc)) == NULL)
			return config_fail(err_r, "user %s: the password is marked with the current key"
				    " (%s) but does not decrypt with it (altered?)", it->user, new_id);
		wipe(pw);
		return 0;
	}
	if (!legacy && strcmp(id, old_id) != 0)
		return config_fail(err_r, "user %s: the password was encrypted with key %s, neither the"
			    " old key (%s) nor the current one (%s)", it->user, id, old_id, new_id);
	pw = secret_decrypt(old_key, it->enc);
	/* a value from before key identifiers may already be under the current
	   key: it only gains the identifier */
	if (pw == NULL && legacy)
		pw = secret_decrypt(new_key, it->enc);
	if (pw == NULL)
		return config_fail(err_r, "user %s: the password does not decrypt with the old key (%s)%s",
			    it->user, old_id, legacy ? " nor with the current one" : "");
	*out = secret_encrypt(new_key, pw);
	wipe(pw);
	if (*out == NULL)
		return config_fail(err_r, "user %s: encryption failed", it->user);
	return 0;
}

int rekey_store(struct store *st, const char *old_key, const char *new_key,
		struct rekey_result *res, char **err_r)
{
	char old_id[SECRET_KEY_ID_LEN + 1], new_id[SECRET_KEY_ID_LEN + 1];
	struct items it = { 0 };
	int ret = -1;

	memset(res, 0, sizeof(*res));
	secret_key_id(old_key, old_id);
	secret_key_id(new_key, new_id);
	if (strcmp(old_id, new_id) == 0)
		return config_fail(err_r, "the old key and secret_key_file hold the same key (%s)", new_id);
	/* IMMEDIATE: no import can add a value between the read and the writes */
	if (st->begin(st) < 0)
		return config_fail(err_r, "state database: %s", st->error(st));
	if (st->user_password_each(st, collect, &it) < 0) {
		config_fail(err_r, "state database: %s", st->error(st));
		goto out;
	}
	for (size_t i = 0; i < it.n; i++) {
		char *enc;
		int r;

		if (rekey_one(&it.v[i], old_key, old_id, new_key, new_id, &enc, err_r) < 0)
			goto out;
		if (enc == NULL) {
			res->current++;
			continue;
		}
		r = st->user_password_set(st, it.v[i].user, enc);
		free(enc);
		if (r != 0) {
			config_fail(err_r, "user %s: state database: %s", it.v[i].user,
			     r < 0 ? st->error(st) : "user vanished");
			goto out;
		}
		res->rekeyed++;
	}
	if (store_log_event(st, "", NULL, "rekey", 0, res->rekeyed, "") < 0 ||
	    st->commit(st) < 0) {
		config_fail(err_r, "state database: %s", st->error(st));
		goto out;
	}
	ret = 0;
out:
	if (ret < 0) {
		st->rollback(st);
		memset(res, 0, sizeof(*res));
	}
	for (size_t i = 0; i < it.n; i++) {
		free(it.v[i].user);
		free(it.v[i].enc);
	}
	free(it.v);
	return ret;
}
