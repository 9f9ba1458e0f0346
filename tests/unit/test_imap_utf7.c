/* Modified UTF-7 (RFC 3501 5.1.3): round trips and invalid input. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "imap-utf7.h"

static void roundtrip(const char *utf8, const char *wire)
{
	char err[200] = "";
	char *enc = imap_utf8_to_utf7(utf8, strlen(utf8), err, sizeof(err));
	cr_assert_not_null(enc, "%s: %s", utf8, err);
	cr_assert_str_eq(enc, wire);
	char *dec = imap_utf7_to_utf8(wire, strlen(wire), err, sizeof(err));
	cr_assert_not_null(dec, "%s: %s", wire, err);
	cr_assert_str_eq(dec, utf8);
	free(enc);
	free(dec);
}

static void bad7(const char *wire, size_t len, const char *needle)
{
	char err[200] = "";
	char *dec = imap_utf7_to_utf8(wire, len, err, sizeof(err));
	cr_assert_null(dec, "accepted invalid '%s' -> '%s'", wire, dec ? dec : "");
	cr_assert(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
}

static void bad8(const char *utf8, size_t len, const char *needle)
{
	char err[200] = "";
	char *enc = imap_utf8_to_utf7(utf8, len, err, sizeof(err));
	cr_assert_null(enc);
	cr_assert(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
}

Test(utf7, roundtrips)
{
	roundtrip("INBOX", "INBOX");
	roundtrip("", "");
	roundtrip("Entwürfe", "Entw&APw-rfe");
	roundtrip("Reports & Stats", "Reports &- Stats");
	roundtrip("アーカイブ", "&MKIw,DCrMKQw1g-");
	roundtrip("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
	roundtrip("☺!", "&Jjo-!");
	roundtrip("😀", "&2D3eAA-");              /* astral plane: surrogate pair */
	roundtrip("a\tb", "a&AAk-b");              /* control char is encoded */
	roundtrip("&&", "&-&-");
}

Test(utf7, invalid_modified_utf7)
{
	bad7("Entw&APw", 8, "without closing '-'");
	bad7("a&", 2, "without closing '-'");
	bad7("&AGE-", 5, "printable ASCII");
	bad7("&U,BTFw-&ZeVnLIqe-", 18, "adjacent encoded runs");
	bad7("&2D0-", 5, "unpaired high surrogate");
	bad7("&3gA-", 5, "unpaired low surrogate");
	bad7("&APw/-", 6, "not in the modified BASE64 alphabet");
	bad7("&APx-", 5, "padding");
	bad7("&A-", 3, "padding");
	bad7("Entw\xc3\xbcrfe", 9, "byte 0xc3");
	bad7("a\0b", 3, "byte 0x00");
	bad7("a\tb", 3, "byte 0x09");
	bad7("&AAA-", 5, "encoded NUL");
}

Test(utf7, invalid_utf8)
{
	bad8("\xc3", 1, "invalid UTF-8");
	bad8("\xc0\xaf", 2, "invalid UTF-8");       /* overlong '/' */
	bad8("\xed\xa0\x80", 3, "invalid UTF-8");   /* surrogate */
	bad8("\xf4\x90\x80\x80", 4, "invalid UTF-8"); /* > U+10FFFF */
	bad8("\xff", 1, "invalid UTF-8");
	bad8("a\0b", 3, "NUL");
}
