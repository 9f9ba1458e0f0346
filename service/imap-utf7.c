/* Modified UTF-7 (RFC 3501 5.1.3): printable ASCII stands for itself
 * ("&" as "&-"), everything else is UTF-16BE in BASE64 with ',' for '/'
 * between '&' and '-'. */
#include "imap-utf7.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static char *fail(char *err, size_t errlen, char *out, const char *fmt, ...)
{
	va_list ap;
	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	free(out);
	return NULL;
}

/* Decode one UTF-8 sequence; returns its length or 0 when invalid. */
static size_t utf8_next(const unsigned char *s, size_t len, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if ((c & 0xe0) == 0xc0) {
		n = 2, v = c & 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3, v = c & 0x0f, min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		n = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

char *imap_utf8_to_utf7(const char *in, size_t len, char *err, size_t errlen)
{
	const unsigned char *s = (const unsigned char *)in;
	/* worst case: a 1-byte control character alone in a run between two
	 * "&" ("&AAI-&-" for 2 bytes); 8 output bytes per input byte is ample */
	size_t cap = len * 8 + 4;
	char *out = malloc(cap), *o = out;
	if (out == NULL)
		return fail(err, errlen, NULL, "out of memory");
	size_t i = 0;
	while (i < len) {
		if (s[i] >= 0x20 && s[i] <= 0x7e) {
			*o++ = (char)s[i];
			if (s[i++] == '&')
				*o++ = '-';
			continue;
		}
		if (s[i] == 0)
			return fail(err, errlen, out, "NUL byte at offset %zu", i);
		/* a run of non-printable characters */
		uint32_t bits = 0;
		int nbits = 0;
		*o++ = '&';
		while (i < len && !(s[i] >= 0x20 && s[i] <= 0x7e)) {
			uint32_t cp;
			size_t n = utf8_next(s + i, len - i, &cp);
			if (n == 0)
				return fail(err, errlen, out, "invalid UTF-8 at offset %zu", i);
			if (cp == 0)
				return fail(err, errlen, out, "NUL byte at offset %zu", i);
			i += n;
			uint16_t units[2];
			int nu = 1;
			if (cp >= 0x10000) {
				cp -= 0x10000;
				units[0] = (uint16_t)(0xd800 | (cp >> 10));
				units[1] = (uint16_t)(0xdc00 | (cp & 0x3ff));
				nu = 2;
			} else {
				units[0] = (uint16_t)cp;
			}
			for (int u = 0; u < nu; u++) {
				bits = (bits << 16) | units[u];
				nbits += 16;
				while (nbits >= 6) {
					nbits -= 6;
					*o++ = b64[(bits >> nbits) & 0x3f];
				}
				bits &= (1u << nbits) - 1;
			}
		}
		if (nbits > 0)
			*o++ = b64[(bits << (6 - nbits)) & 0x3f];
		*o++ = '-';
	}
	*o = '\0';
	return out;
}

static int b64val(unsigned char c)
{
	const char *p = c ? strchr(b64, c) : NULL;
	return p ? (int)(p - b64) : -1;
}

static char *put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | (cp >> 6));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | (cp >> 12));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | (cp >> 18));
		*o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

char *imap_utf7_to_utf8(const char *in, size_t len, char *err, size_t errlen)
{
	const unsigned char *s = (const unsigned char *)in;
	/* each 8 base64 chars give at most 3 UTF-16 units -> <= 9 UTF-8 bytes */
	char *out = malloc(len * 2 + 1), *o = out;
	if (out == NULL)
		return fail(err, errlen, NULL, "out of memory");
	size_t i = 0;
	int prev_run_end = -1; /* offset just after the last "&...-" run */
	while (i < len) {
		unsigned char c = s[i];
		if (c < 0x20 || c > 0x7e)
			return fail(err, errlen, out,
				    "invalid modified UTF-7: byte 0x%02x at offset %zu (only printable "
				    "ASCII allowed)", c, i);
		if (c != '&') {
			*o++ = (char)c;
			i++;
			continue;
		}
		size_t start = i++;
		if (i < len && s[i] == '-') {
			*o++ = '&';
			i++;
			continue;
		}
		if ((int)start == prev_run_end)
			return fail(err, errlen, out,
				    "invalid modified UTF-7: adjacent encoded runs at offset %zu", start);
		uint32_t bits = 0, hi = 0;
		int nbits = 0, units = 0;
		while (i < len && s[i] != '-') {
			int v = b64val(s[i]);
			if (v < 0)
				return fail(err, errlen, out,
					    "invalid modified UTF-7: '%c' (0x%02x) at offset %zu is not "
					    "in the modified BASE64 alphabet", s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?',
					    s[i], i);
			bits = (bits << 6) | (uint32_t)v;
			nbits += 6;
			i++;
			if (nbits < 16)
				continue;
			nbits -= 16;
			uint32_t u = (bits >> nbits) & 0xffff;
			bits &= (1u << nbits) - 1;
			units++;
			if (hi) {
				if (u < 0xdc00 || u > 0xdfff)
					return fail(err, errlen, out,
						    "invalid modified UTF-7: unpaired high surrogate before offset %zu", i);
				o = put_utf8(o, 0x10000 + ((hi - 0xd800) << 10) + (u - 0xdc00));
				hi = 0;
			} else if (u >= 0xd800 && u <= 0xdbff) {
				hi = u;
			} else if (u >= 0xdc00 && u <= 0xdfff) {
				return fail(err, errlen, out,
					    "invalid modified UTF-7: unpaired low surrogate before offset %zu", i);
			} else if (u >= 0x20 && u <= 0x7e) {
				return fail(err, errlen, out,
					    "invalid modified UTF-7: printable ASCII 0x%02x encoded in BASE64 "
					    "before offset %zu", u, i);
			} else if (u == 0) {
				return fail(err, errlen, out, "invalid modified UTF-7: encoded NUL");
			} else {
				o = put_utf8(o, u);
			}
		}
		if (i >= len)
			return fail(err, errlen, out,
				    "invalid modified UTF-7: '&' at offset %zu without closing '-'", start);
		if (hi)
			return fail(err, errlen, out,
				    "invalid modified UTF-7: unpaired high surrogate at end of run at offset %zu", start);
		if (nbits >= 6 || bits != 0 || units == 0)
			return fail(err, errlen, out,
				    "invalid modified UTF-7: bad BASE64 padding in run at offset %zu", start);
		i++; /* '-' */
		prev_run_end = (int)i;
	}
	*o = '\0';
	return out;
}
