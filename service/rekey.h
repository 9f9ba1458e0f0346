/* Key rotation (ferryd --rekey, docs/security.md "Key rotation"): every
   stored password re-encrypted from the old key to the current one. */
#ifndef FERRY_REKEY_H
#define FERRY_REKEY_H

#include "store.h"

struct rekey_result {
	int rekeyed;  /* re-encrypted to the current key */
	int current;  /* already under the current key (an earlier run) */
};

/* One transaction: all values or none. A value sealed under a third key,
   or one that does not decrypt, fails the whole run naming its user.
   0, or -1 with *err_r (malloc'd; never key material or a password). */
int rekey_store(struct store *st, const char *old_key, const char *new_key,
		struct rekey_result *res, char **err_r);

#endif
