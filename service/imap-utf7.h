/* Modified UTF-7 mailbox names (RFC 3501 section 5.1.3), with validation. */
#ifndef FERRY_IMAP_UTF7_H
#define FERRY_IMAP_UTF7_H

#include <stddef.h>

/* Both return a malloc()ed NUL-terminated string, or NULL with a clear
 * message in err (errlen bytes) when the input is invalid. */

/* UTF-8 -> modified UTF-7. Rejects invalid UTF-8 (overlong, surrogates,
 * > U+10FFFF, truncated sequences) and NUL. */
char *imap_utf8_to_utf7(const char *in, size_t len, char *err, size_t errlen);

/* Modified UTF-7 -> UTF-8. Rejects 8-bit bytes and controls, '&' without
 * a closing '-', characters outside the modified BASE64 alphabet, non-zero
 * padding bits, unpaired surrogates, printable ASCII encoded in base64 and
 * two adjacent encoded runs ("&..-&..-"), so that a name has exactly one
 * encoding. */
char *imap_utf7_to_utf8(const char *in, size_t len, char *err, size_t errlen);

#endif
