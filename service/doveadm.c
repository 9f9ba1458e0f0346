/* doveadm HTTP API client: one evhttp connection per request (doveadm
   serves one command per connection at a time), freed after it answers. */
#include "doveadm.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ferry-contract.h"

struct doveadm_client {
	struct event_base *base;
	struct evdns_base *dns;
	char *host;
	int port;
	char *auth_header;
	int timeout;
	unsigned tag_seq;
	char error[512];  /* why the last doveadm_call() returned NULL */
};

struct doveadm_req {
	struct doveadm_client *client;
	struct evhttp_connection *evcon;
	struct evhttp_request *req;
	doveadm_cb *cb;
	void *ctx;
	char tag[32];
	char host[256];  /* the backend this request went to */
};

const char *doveadm_client_error(const struct doveadm_client *c)
{
	return c->error;
}

struct event_base *doveadm_client_base(const struct doveadm_client *c)
{
	return c->base;
}

struct doveadm_client *doveadm_client_new(struct event_base *base, struct evdns_base *dns)
{
	struct doveadm_client *c = calloc(1, sizeof(*c));

	c->base = base;
	c->dns = dns;
	return c;
}

void doveadm_client_configure(struct doveadm_client *c, const char *host, int port,
			      const char *api_key, int timeout_secs)
{
	size_t klen = strlen(api_key);
	unsigned char *b64 = malloc(4 * ((klen + 2) / 3) + 1);

	EVP_EncodeBlock(b64, (const unsigned char *)api_key, (int)klen);
	free(c->host);
	if (c->auth_header != NULL) {
		explicit_bzero(c->auth_header, strlen(c->auth_header));
		free(c->auth_header);
	}
	c->host = strdup(host);
	c->port = port;
	c->timeout = timeout_secs;
	if (asprintf(&c->auth_header, "X-Dovecot-API %s", b64) < 0)
		c->auth_header = NULL;
	explicit_bzero(b64, strlen((char *)b64));
	free(b64);
}

void doveadm_client_free(struct doveadm_client *c)
{
	if (c == NULL)
		return;
	free(c->host);
	if (c->auth_header != NULL) {
		explicit_bzero(c->auth_header, strlen(c->auth_header));
		free(c->auth_header);
	}
	free(c);
}

const char *doveadm_exit_code_text(int code)
{
	switch (code) {
	case 64: return "usage error";
	case 65: return "not possible";
	case FERRY_EXIT_UNKNOWN_USER: return "user unknown on the new server";
	case FERRY_EXIT_NOT_ENABLED: return "not found (ferry enabled for the user?)";
	case 69: return "service unavailable";
	case 73: return "cannot create";
	case FERRY_EXIT_RETRY: return "temporary failure";
	case FERRY_EXIT_REFUSED: return "the old server's session was refused";
	case 78: return "configuration error";
	default: return "failed";
	}
}

static int exit_code_permanent(int code)
{
	/* usage and data errors, and the contract's codes no retry can fix */
	return code == 64 || code == 65 || code == FERRY_EXIT_UNKNOWN_USER ||
		code == FERRY_EXIT_NOT_ENABLED || code == FERRY_EXIT_REFUSED;
}

void doveadm_parse_reply(int http_status, const char *body, size_t len,
			 const char *tag, struct doveadm_reply *r)
{
	json_error_t jerr;
	json_t *root = NULL, *item, *kind, *payload, *jtag;

	memset(r, 0, sizeof(*r));
	r->http_status = http_status;
	if (http_status == 401 || http_status == 403) {
		snprintf(r->error, sizeof(r->error),
			 "doveadm HTTP API refused the API key (HTTP %d): check doveadm_api_key_file",
			 http_status);
		return;
	}
	if (http_status != 200) {
		snprintf(r->error, sizeof(r->error), "doveadm HTTP API answered HTTP %d",
			 http_status);
		return;
	}
	root = json_loadb(body, len, 0, &jerr);
	if (!json_is_array(root) || json_array_size(root) != 1 ||
	    !json_is_array(item = json_array_get(root, 0)) || json_array_size(item) < 3 ||
	    !json_is_string(kind = json_array_get(item, 0)) ||
	    !json_is_string(jtag = json_array_get(item, 2))) {
		snprintf(r->error, sizeof(r->error), "doveadm HTTP API: unexpected response");
		json_decref(root);
		return;
	}
	payload = json_array_get(item, 1);
	if (strcmp(json_string_value(jtag), tag) != 0) {
		snprintf(r->error, sizeof(r->error), "doveadm HTTP API: response for another tag");
	} else if (strcmp(json_string_value(kind), "doveadmResponse") == 0 &&
		   json_is_array(payload)) {
		r->ok = 1;
		r->rows = json_incref(payload);
	} else if (strcmp(json_string_value(kind), "error") == 0) {
		json_t *code = json_object_get(payload, "exitCode");
		const char *type = json_string_value(json_object_get(payload, "type"));
		r->exit_code = json_is_integer(code) ? (int)json_integer_value(code) : 0;
		r->permanent = exit_code_permanent(r->exit_code);
		if (r->exit_code != 0)
			snprintf(r->error, sizeof(r->error), "doveadm: %s (exit code %d)",
				 doveadm_exit_code_text(r->exit_code), r->exit_code);
		else
			snprintf(r->error, sizeof(r->error), "doveadm: error %s",
				 type != NULL ? type : "unknown");
	} else {
		snprintf(r->error, sizeof(r->error), "doveadm HTTP API: unexpected response");
	}
	json_decref(root);
}

static void free_evcon_later(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	evhttp_connection_free(arg);
}

static void req_done(struct evhttp_request *req, void *arg)
{
	struct doveadm_req *dr = arg;
	struct doveadm_reply r;
	struct timeval zero = { 0, 0 };
	int status = req != NULL ? evhttp_request_get_response_code(req) : 0;

	if (status == 0) {
		memset(&r, 0, sizeof(r));
		snprintf(r.error, sizeof(r.error),
			 "doveadm HTTP API at %s:%d: no answer (connection refused, closed or timed out)",
			 dr->host, dr->client->port);
	} else {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		const char *body = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
		doveadm_parse_reply(status, body != NULL ? body : "", len, dr->tag, &r);
	}
	event_base_once(dr->client->base, -1, EV_TIMEOUT, free_evcon_later, dr->evcon, &zero);
	dr->cb(&r, dr->ctx);
	json_decref(r.rows);
	free(dr);
}

struct doveadm_req *doveadm_call(struct doveadm_client *c, const char *backend,
				 const char *command, json_t *params, doveadm_cb *cb, void *ctx)
{
	struct doveadm_req *dr = calloc(1, sizeof(*dr));
	struct evkeyvalq *h;
	json_t *body;
	char *text;
	char hostport[300];

	snprintf(c->error, sizeof(c->error), "could not send a request to doveadm");
	if (backend_host(c->host, backend, "doveadm", dr->host, sizeof(dr->host),
			 c->error, sizeof(c->error)) < 0) {
		json_decref(params);
		free(dr);
		return NULL;
	}
	dr->client = c;
	dr->cb = cb;
	dr->ctx = ctx;
	snprintf(dr->tag, sizeof(dr->tag), "ferryd-%u", ++c->tag_seq);
	body = json_pack("[[s o s]]", command, params, dr->tag);
	text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	dr->evcon = text != NULL ? evhttp_connection_base_new(c->base, c->dns, dr->host,
							       (ev_uint16_t)c->port) : NULL;
	if (dr->evcon == NULL) {
		free(text);
		free(dr);
		return NULL;
	}
	evhttp_connection_set_timeout(dr->evcon, c->timeout);
	/* the loop's lowest priority (ferryd.c sets three): with a thousand
	   replies ready at once, the admin API, the scheduler's timers and the
	   totals' refresh run first (docs/ferryd.md, "Event loop") */
	bufferevent_priority_set(evhttp_connection_get_bufferevent(dr->evcon),
				 event_base_get_npriorities(c->base) - 1);
	dr->req = evhttp_request_new(req_done, dr);
	h = evhttp_request_get_output_headers(dr->req);
	snprintf(hostport, sizeof(hostport), "%s:%d", dr->host, c->port);
	evhttp_add_header(h, "Host", hostport);
	evhttp_add_header(h, "Authorization", c->auth_header);
	evhttp_add_header(h, "Content-Type", "application/json");
	evbuffer_add(evhttp_request_get_output_buffer(dr->req), text, strlen(text));
	free(text);
	if (evhttp_make_request(dr->evcon, dr->req, EVHTTP_REQ_POST, "/doveadm/v1") < 0) {
		/* the request is freed by evhttp on failure */
		evhttp_connection_free(dr->evcon);
		free(dr);
		return NULL;
	}
	return dr;
}

void doveadm_cancel(struct doveadm_req *dr)
{
	/* frees the request in flight without calling its callback */
	evhttp_connection_free(dr->evcon);
	free(dr);
}
