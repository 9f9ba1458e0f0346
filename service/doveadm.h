/* Client of the NEW server's doveadm HTTP API (libevent's evhttp):
   POST /doveadm/v1, Authorization: X-Dovecot-API <base64 of the key>,
   body [["ferryPull", {"user": ..., "mailbox": ...}, "tag"]]. */
#ifndef FERRY_DOVEADM_H
#define FERRY_DOVEADM_H

#include <jansson.h>
#include <stddef.h>

struct event_base;
struct doveadm_client;
struct doveadm_req;

struct doveadm_reply {
	int ok;             /* doveadmResponse received */
	int http_status;    /* 0: no HTTP answer (connect error, timeout) */
	int exit_code;      /* doveadm's exit code when !ok and known, else 0 */
	int permanent;      /* retrying will not help (unknown user...) */
	char error[512];    /* human text when !ok */
	json_t *rows;       /* when ok: array of objects (borrowed by the cb) */
};

typedef void doveadm_cb(const struct doveadm_reply *r, void *ctx);

struct evdns_base;
/* dns: the resolver of every host name (never a blocking getaddrinfo in
   the event loop); NULL only for a caller with no event loop to protect */
struct doveadm_client *doveadm_client_new(struct event_base *base, struct evdns_base *dns);
/* the event loop it runs in */
struct event_base *doveadm_client_base(const struct doveadm_client *c);
/* (re)configures the target; the key is kept only as the header value.
   host is one NEW's, or a pattern with %{host} (backend.h): each call
   then goes to the backend named with it. */
void doveadm_client_configure(struct doveadm_client *c, const char *host, int port,
			      const char *api_key, int timeout_secs);
void doveadm_client_free(struct doveadm_client *c);

/* params is stolen. backend: the user's NEW backend from the routing
   (user_rec.new_host; "" or NULL = none), resolved against the configured
   host by backend_host(). Returns NULL (and calls nothing) if the request
   could not even be queued, with the reason in doveadm_client_error(); the
   callback runs exactly once otherwise, unless doveadm_cancel() is called
   first. */
struct doveadm_req *doveadm_call(struct doveadm_client *c, const char *backend,
				 const char *command, json_t *params, doveadm_cb *cb, void *ctx);
/* why the last doveadm_call() returned NULL */
const char *doveadm_client_error(const struct doveadm_client *c);
void doveadm_cancel(struct doveadm_req *req);

/* Parses a response body of a single command with tag; fills r (rows are
   a new reference the caller must json_decref). Testable without I/O. */
void doveadm_parse_reply(int http_status, const char *body, size_t len,
			 const char *tag, struct doveadm_reply *r);
const char *doveadm_exit_code_text(int code);

#endif
