/* Streaming IMAP response parser (RFC 3501 / RFC 9051).
 *
 * Bytes are pushed with imap_parser_feed() in pieces of any size (a
 * bufferevent read, a fuzzer input); every complete response is handed to
 * the `response` callback as a small tree that lives until the callback
 * returns. Literals above `max_inline_literal` are never buffered: they go
 * to the literal_* callbacks in chunks (e.g. into SHA-256) or are skipped,
 * so memory stays bounded by the limits whatever the server sends.
 * Any limit breach or syntax error stops the parser with a clear message
 * (imap_parser_error()); it then refuses further input. */
#ifndef FERRY_IMAP_PARSER_H
#define FERRY_IMAP_PARSER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum imap_node_type {
	IMAP_NODE_ATOM,    /* atom or number: str */
	IMAP_NODE_STRING,  /* quoted string: str, len */
	IMAP_NODE_LITERAL, /* literal: str,len if inline; else streamed */
	IMAP_NODE_NIL,
	IMAP_NODE_LIST, /* ( ... ): children */
};

struct imap_node {
	enum imap_node_type type;
	const char *str; /* NUL-terminated; NULL for NIL, lists, skipped literals */
	size_t len;      /* bytes in str; children for a list */
	uint64_t literal_size; /* literals: size announced by the server */
	int streamed;          /* literal went to the callbacks (or was skipped) */
	int binary;            /* literal8 ~{n} */
	struct imap_node *children, *next;
};

enum imap_response_kind { IMAP_RESP_TAGGED, IMAP_RESP_UNTAGGED, IMAP_RESP_CONTINUATION };
enum imap_status {
	IMAP_STATUS_NONE, /* untagged data (FETCH, LIST, CAPABILITY ...) */
	IMAP_STATUS_OK,
	IMAP_STATUS_NO,
	IMAP_STATUS_BAD,
	IMAP_STATUS_BYE,
	IMAP_STATUS_PREAUTH,
};

struct imap_response {
	enum imap_response_kind kind;
	const char *tag;          /* tagged responses */
	enum imap_status status;  /* OK/NO/BAD/BYE/PREAUTH or NONE */
	const struct imap_node *code; /* [CODE args...] as a list, or NULL */
	const char *text;         /* human-readable text / continuation text */
	int has_number;           /* "* 12 FETCH ..." */
	uint32_t number;
	const char *name;         /* upper-cased: FETCH, LIST, CAPABILITY, EXISTS ... */
	const struct imap_node *data; /* list of the remaining items (never NULL) */
};

struct imap_parser_limits {
	size_t max_line;           /* non-literal bytes of one response (+ inline literals) */
	size_t max_token;          /* one atom or quoted string */
	unsigned max_depth;        /* nesting of ( ) */
	uint64_t max_literal;      /* announced literal size */
	size_t max_inline_literal; /* literals up to this are kept in the tree */
	size_t max_memory;         /* tree memory of one response */
};
/* 1 MiB line, 64 KiB token, depth 32, 4 GiB literal, 64 KiB inline, 64 MiB tree */
void imap_parser_default_limits(struct imap_parser_limits *lim);

struct imap_literal_info {
	uint64_t size;
	int binary;
	unsigned depth;                  /* list depth of the literal */
	const struct imap_node *prev;    /* preceding item at that depth (e.g. BODY[]) */
	int has_number;                  /* the response's "* N FETCH" */
	uint32_t number;
	const char *name;
};

struct imap_parser_callbacks {
	/* A literal larger than max_inline_literal is announced: return 1 to
	 * get its bytes through literal_data, 0 to skip them. */
	int (*literal_begin)(void *ctx, const struct imap_literal_info *info);
	void (*literal_data)(void *ctx, const void *data, size_t len);
	/* End of a streamed literal: may return a string stored as the node's
	 * str (e.g. a hex digest), or NULL. */
	const char *(*literal_end)(void *ctx);
	/* A complete response. Return non-zero to stop: imap_parser_feed()
	 * then returns how much it consumed so far (e.g. after STARTTLS OK). */
	int (*response)(void *ctx, const struct imap_response *resp);
};

struct imap_parser;

struct imap_parser *imap_parser_new(const struct imap_parser_limits *lim, /* NULL: defaults */
				    const struct imap_parser_callbacks *cb, void *ctx);
void imap_parser_free(struct imap_parser *p);
/* Bytes consumed (len unless a callback stopped the parser), or -1 on
 * error: imap_parser_error() says what and where. */
ssize_t imap_parser_feed(struct imap_parser *p, const void *buf, size_t len);
/* End of input: -1 with an error if a response was left unfinished. */
int imap_parser_finish(struct imap_parser *p);
const char *imap_parser_error(const struct imap_parser *p);
/* ManageSieve (RFC 5804) has no tags and no "*": with on, every line is
 * handed over as an untagged response whose items are all in data
 * (OK/NO/BYE included: the caller reads them). */
void imap_parser_set_lines(struct imap_parser *p, int on);
/* Between responses (nothing half-read)? */
int imap_parser_idle(const struct imap_parser *p);
/* Forget a half-read response and any error (new connection / after TLS). */
void imap_parser_reset(struct imap_parser *p);

/* Helpers for reading trees. */
const struct imap_node *imap_node_child(const struct imap_node *list, size_t i);
int imap_node_is_atom(const struct imap_node *n, const char *atom); /* case-insensitive */
/* atom/string/inline literal as text (NIL -> NULL) */
const char *imap_node_text(const struct imap_node *n);
/* number (atom of digits) -> 0, else -1 */
int imap_node_u64(const struct imap_node *n, uint64_t *out);
/* In a list of NAME value pairs (FETCH, STATUS), the value after NAME. */
const struct imap_node *imap_node_pair(const struct imap_node *list, const char *name);
const char *imap_status_name(enum imap_status st);

#endif
