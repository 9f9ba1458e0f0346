/* libFuzzer target for modified UTF-7: decoding never crashes, and
 * whatever decodes re-encodes to exactly the input (one encoding per
 * name); UTF-8 that encodes decodes back to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap-utf7.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[200];
	char *u8 = imap_utf7_to_utf8((const char *)data, size, err, sizeof(err));
	if (u8 != NULL) {
		char *back = imap_utf8_to_utf7(u8, strlen(u8), err, sizeof(err));
		if (back == NULL || strlen(back) != size || memcmp(back, data, size) != 0)
			abort();
		free(back);
		free(u8);
	} else if (err[0] == '\0') {
		abort();
	}
	char *u7 = imap_utf8_to_utf7((const char *)data, size, err, sizeof(err));
	if (u7 != NULL) {
		char *again = imap_utf7_to_utf8(u7, strlen(u7), err, sizeof(err));
		if (again == NULL || strlen(again) != size || memcmp(again, data, size) != 0)
			abort();
		free(again);
		free(u7);
	}
	return 0;
}
