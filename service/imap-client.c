/* ferryd's IMAP client. See imap-client.h. */
#include "imap-client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ferry-identity.h"
#include "imap-utf7.h"

enum state {
	ST_NEW,
	ST_CONNECTING,
	ST_TLS_HANDSHAKE,
	ST_GREETING,
	ST_LOGIN, /* capability / starttls / authentication steps */
	ST_READY,
	ST_FAILED,
};

struct cmd {
	struct cmd *next;
	char tag[16];
	char *desc, *mailbox, *want;
	imap_untagged_cb *untagged;
	imap_done_cb *done;
	void *ctx, *done_ctx;
	int hash_bodies;
	/* AUTHENTICATE: answers to continuation requests */
	char *cont_data;
	int conts;
};

struct imap_client {
	struct event_base *base;
	int own_base;
	struct imap_client_settings set;
	char *strings[10];
	char where[300]; /* "old 127.0.0.1:143" */

	struct bufferevent *bev;
	SSL_CTX *ssl_ctx;
	SSL *ssl; /* owned by bev once wrapped */
	int tls_done;
	struct imap_parser *parser;
	struct event *timer;
	enum state state;
	int stop_parser; /* STARTTLS OK seen: stop reading plaintext */

	char caps[4096]; /* " CAP1 CAP2 " upper-case */
	int have_caps, logged_in;
	struct cmd *head, *tail;
	unsigned npending, tagseq;
	char error[1024];
	char bye[300];
	imap_ready_cb *ready_cb;
	void *ready_ctx;

	EVP_MD_CTX *sha;
	int sha_active;
	char digest[65];
};

static void next_login_step(struct imap_client *c);
static void flatten_code(const struct imap_node *code, char *out, size_t cap);
static void on_read(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* ---- logging and errors ---------------------------------------------------- */

static void logf_(struct imap_client *c, enum imap_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(struct imap_client *c, enum imap_log_level lvl, const char *fmt, ...)
{
	char msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (c->set.log != NULL)
		c->set.log(c->set.log_ctx, lvl, msg);
	else if (lvl >= IMAP_LOG_WARN)
		fprintf(stderr, "ferry-imap: %s: %s\n", lvl == IMAP_LOG_WARN ? "warning" : "error", msg);
}

static void fail_all(struct imap_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void free_cmd(struct cmd *cmd)
{
	free(cmd->desc);
	free(cmd->mailbox);
	free(cmd->want);
	if (cmd->cont_data != NULL) {
		OPENSSL_cleanse(cmd->cont_data, strlen(cmd->cont_data));
		free(cmd->cont_data);
	}
	free(cmd);
}

/* A fatal error: the connection is unusable; every command in flight and a
 * pending connect get the message. */
static void fail_all(struct imap_client *c, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	if (c->state == ST_FAILED)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(c->error, sizeof(c->error), "%s: %s", c->where, msg);
	c->state = ST_FAILED;
	if (c->timer != NULL)
		evtimer_del(c->timer);
	if (c->bev != NULL)
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	logf_(c, IMAP_LOG_DEBUG, "%s", c->error);
	struct cmd *cmd = c->head;
	c->head = c->tail = NULL;
	c->npending = 0;
	while (cmd != NULL) {
		struct cmd *next = cmd->next;
		if (cmd->done != NULL)
			cmd->done(cmd->done_ctx, NULL, c->error);
		free_cmd(cmd);
		cmd = next;
	}
	if (c->ready_cb != NULL) {
		imap_ready_cb *cb = c->ready_cb;
		c->ready_cb = NULL;
		cb(c, c->error, c->ready_ctx);
	}
}

/* ---- timers ---------------------------------------------------------------- */

static void arm(struct imap_client *c, unsigned ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(c->timer, &tv);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct imap_client *c = arg;
	switch (c->state) {
	case ST_CONNECTING:
		fail_all(c, "connect timed out after %u ms", c->set.connect_timeout_ms);
		break;
	case ST_TLS_HANDSHAKE:
		fail_all(c, "TLS handshake timed out after %u ms", c->set.greeting_timeout_ms);
		break;
	case ST_GREETING:
		fail_all(c, "no greeting within %u ms", c->set.greeting_timeout_ms);
		break;
	default:
		if (c->head != NULL)
			fail_all(c, "%s%s%s%s: no response within %u ms", c->head->desc,
				 c->head->mailbox ? " \"" : "", c->head->mailbox ? c->head->mailbox : "",
				 c->head->mailbox ? "\"" : "", c->set.command_timeout_ms);
		break;
	}
}

static void rearm_command_timer(struct imap_client *c)
{
	if (c->state == ST_FAILED)
		return;
	if (c->npending > 0)
		arm(c, c->set.command_timeout_ms);
	else if (c->state == ST_READY)
		evtimer_del(c->timer);
}

/* ---- capabilities ------------------------------------------------------------ */

static void set_caps(struct imap_client *c, const struct imap_node *first)
{
	size_t len = 1;
	strcpy(c->caps, " ");
	for (const struct imap_node *n = first; n != NULL; n = n->next) {
		if (n->type != IMAP_NODE_ATOM || len + n->len + 2 >= sizeof(c->caps))
			continue;
		for (size_t i = 0; i < n->len; i++)
			c->caps[len++] = (char)toupper((unsigned char)n->str[i]);
		c->caps[len++] = ' ';
		c->caps[len] = '\0';
	}
	c->have_caps = 1;
}

int imap_client_has_cap(const struct imap_client *c, const char *cap)
{
	char want[128];
	snprintf(want, sizeof(want), " %s ", cap);
	for (char *s = want; *s; s++)
		*s = (char)toupper((unsigned char)*s);
	return c->have_caps && strstr(c->caps, want) != NULL;
}

const char *imap_client_caps(const struct imap_client *c)
{
	return c->caps[0] == ' ' ? c->caps + 1 : c->caps;
}

/* ---- response handling ----------------------------------------------------- */

static int is_body_item(const struct imap_node *prev)
{
	return prev != NULL && prev->type == IMAP_NODE_ATOM &&
	       (strncasecmp(prev->str, "BODY[", 5) == 0 || strncasecmp(prev->str, "BINARY[", 7) == 0 ||
		strcasecmp(prev->str, "RFC822") == 0);
}

static int on_literal_begin(void *ctx, const struct imap_literal_info *info)
{
	struct imap_client *c = ctx;
	int want = 0;
	for (struct cmd *cmd = c->head; cmd != NULL; cmd = cmd->next)
		want |= cmd->hash_bodies;
	if (!want || strcmp(info->name, "FETCH") != 0 || !is_body_item(info->prev))
		return 0;
	if (c->sha == NULL && (c->sha = EVP_MD_CTX_new()) == NULL)
		return 0;
	EVP_DigestInit_ex(c->sha, EVP_sha256(), NULL);
	c->sha_active = 1;
	return 1;
}

static void on_literal_data(void *ctx, const void *data, size_t len)
{
	struct imap_client *c = ctx;
	if (c->sha_active)
		EVP_DigestUpdate(c->sha, data, len);
	if (c->npending > 0 && c->state != ST_FAILED)
		arm(c, c->set.command_timeout_ms); /* progress keeps the deadline away */
}

static void hex(const unsigned char *d, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static const char *on_literal_end(void *ctx)
{
	struct imap_client *c = ctx;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (!c->sha_active)
		return NULL;
	c->sha_active = 0;
	EVP_DigestFinal_ex(c->sha, md, &mdlen);
	hex(md, mdlen, c->digest);
	return c->digest;
}

static void flatten_code(const struct imap_node *code, char *out, size_t cap)
{
	size_t len = 0;
	out[0] = '\0';
	for (const struct imap_node *n = code ? code->children : NULL; n != NULL; n = n->next) {
		const char *t = n->type == IMAP_NODE_LIST ? "(...)" : imap_node_text(n);
		if (t == NULL)
			t = "NIL";
		int w = snprintf(out + len, cap - len, "%s%s", len ? " " : "", t);
		if (w < 0 || (size_t)w >= cap - len)
			break;
		len += (size_t)w;
	}
}

/* The final response of cmd (already unlinked from the queue). */
static int finish_cmd(struct imap_client *c, struct cmd *cmd, const struct imap_response *r)
{
	c->npending--;
	char err[1024], code[200];
	const char *errp = NULL;
	if (r->status != IMAP_STATUS_OK) {
		flatten_code(r->code, code, sizeof(code));
		snprintf(err, sizeof(err), "%s: %s%s%s%s: %s %s%s%s%s", c->where, cmd->desc,
			 cmd->mailbox ? " \"" : "", cmd->mailbox ? cmd->mailbox : "",
			 cmd->mailbox ? "\"" : "", imap_status_name(r->status),
			 code[0] ? (c->set.managesieve ? "(" : "[") : "", code,
			 code[0] ? (c->set.managesieve ? ") " : "] ") : "", r->text);
		snprintf(c->error, sizeof(c->error), "%s", err);
		errp = err;
	}
	rearm_command_timer(c);
	if (cmd->done != NULL)
		cmd->done(cmd->done_ctx, r, errp);
	free_cmd(cmd);
	return c->state == ST_FAILED || c->stop_parser;
}

/* ManageSieve: a line is data (capabilities, LISTSCRIPTS, GETSCRIPT's
 * literal), or OK/NO/BYE [(CODE)] [text] ending the oldest command (the
 * protocol has no tags; answers come in order). */
static int on_managesieve_line(struct imap_client *c, const struct imap_response *line)
{
	const struct imap_node *first = imap_node_child(line->data, 0);
	struct imap_response r = *line;
	r.status = imap_node_is_atom(first, "OK")    ? IMAP_STATUS_OK
		   : imap_node_is_atom(first, "NO")  ? IMAP_STATUS_NO
		   : imap_node_is_atom(first, "BYE") ? IMAP_STATUS_BYE
						      : IMAP_STATUS_NONE;
	if (r.status == IMAP_STATUS_NONE) {
		if (c->state == ST_GREETING || (c->head != NULL && c->head->want != NULL &&
						strcmp(c->head->want, "CAPABILITY") == 0)) {
			/* "SASL" "PLAIN LOGIN" -> AUTH=PLAIN AUTH=LOGIN; "STARTTLS" */
			const char *k = imap_node_text(first), *v = imap_node_text(first ? first->next : NULL);
			size_t len = strlen(c->caps);
			if (k == NULL || len + strlen(k) + (v ? 6 * strlen(v) : 0) + 8 >= sizeof(c->caps))
				return 0;
			if (strcasecmp(k, "SASL") == 0 && v != NULL) {
				char tmp[512];
				snprintf(tmp, sizeof(tmp), "%s", v);
				for (char *save, *w = strtok_r(tmp, " ", &save); w; w = strtok_r(NULL, " ", &save))
					len += (size_t)sprintf(c->caps + len, "AUTH=%s ", w);
			} else {
				len += (size_t)sprintf(c->caps + len, "%s ", k);
			}
			for (char *p = c->caps; *p; p++)
				*p = (char)toupper((unsigned char)*p);
			return 0;
		}
		if (c->head != NULL && c->head->cont_data != NULL) {
			/* a SASL challenge after the initial response: XOAUTH2's
			 * error; answer empty to get the NO */
			bufferevent_write(c->bev, "\"\"\r\n", 4);
			return 0;
		}
		if (c->head != NULL && c->head->untagged != NULL)
			c->head->untagged(c->head->ctx, &r);
		return c->state == ST_FAILED;
	}
	r.kind = IMAP_RESP_TAGGED;
	r.code = NULL;
	r.text = "";
	for (const struct imap_node *n = first->next; n != NULL; n = n->next) {
		if (n->type == IMAP_NODE_LIST && r.code == NULL && r.text[0] == '\0')
			r.code = n;
		else if (imap_node_text(n) != NULL)
			r.text = imap_node_text(n);
	}
	if (c->state == ST_GREETING) {
		if (r.status != IMAP_STATUS_OK) {
			fail_all(c, "server refused the connection: %s %s", imap_status_name(r.status),
				 r.text);
			return 1;
		}
		c->have_caps = 1;
		c->state = ST_LOGIN;
		evtimer_del(c->timer);
		next_login_step(c);
		return c->state == ST_FAILED;
	}
	if (r.status == IMAP_STATUS_BYE && c->head == NULL) {
		snprintf(c->bye, sizeof(c->bye), "%s", r.text);
		return 0;
	}
	struct cmd *cmd = c->head;
	if (cmd == NULL) {
		fail_all(c, "response without a command: %s %s", imap_status_name(r.status), r.text);
		return 1;
	}
	c->head = cmd->next;
	if (c->tail == cmd)
		c->tail = NULL;
	if (r.status == IMAP_STATUS_BYE) /* LOGOUT's answer, or the server leaving */
		r.status = strcmp(cmd->desc, "LOGOUT") == 0 ? IMAP_STATUS_OK : IMAP_STATUS_BYE;
	return finish_cmd(c, cmd, &r);
}

static int on_response(void *ctx, const struct imap_response *r)
{
	struct imap_client *c = ctx;
	if (c->state == ST_FAILED)
		return 1;
	if (c->set.managesieve)
		return on_managesieve_line(c, r);
	if (r->code != NULL && imap_node_is_atom(imap_node_child(r->code, 0), "CAPABILITY"))
		set_caps(c, r->code->children->next);

	if (c->state == ST_GREETING) {
		if (r->kind != IMAP_RESP_UNTAGGED) {
			fail_all(c, "bad greeting (not an untagged response)");
			return 1;
		}
		if (r->status == IMAP_STATUS_BYE) {
			fail_all(c, "server refused the connection: BYE %s", r->text);
			return 1;
		}
		if (r->status == IMAP_STATUS_PREAUTH) {
			/* we could not tell whose mailbox this is */
			fail_all(c, "server sent PREAUTH; refusing a session we did not log in to");
			return 1;
		}
		if (r->status != IMAP_STATUS_OK) {
			fail_all(c, "bad greeting: %s %s", imap_status_name(r->status), r->text);
			return 1;
		}
		c->state = ST_LOGIN;
		evtimer_del(c->timer);
		next_login_step(c);
		return c->state == ST_FAILED;
	}

	switch (r->kind) {
	case IMAP_RESP_UNTAGGED:
		if (r->status == IMAP_STATUS_BYE) {
			snprintf(c->bye, sizeof(c->bye), "%s", r->text);
			return 0;
		}
		if (strcmp(r->name, "CAPABILITY") == 0)
			set_caps(c, r->data->children);
		for (struct cmd *cmd = c->head; cmd != NULL; cmd = cmd->next) {
			if (cmd->untagged == NULL)
				continue;
			/* status responses (* OK [UIDVALIDITY n]) go by their status */
			const char *nm = r->name[0] ? r->name : imap_status_name(r->status);
			if (cmd->want != NULL && (nm[0] == '\0' || strstr(cmd->want, nm) == NULL))
				continue;
			cmd->untagged(cmd->ctx, r);
			break;
		}
		return c->state == ST_FAILED;
	case IMAP_RESP_CONTINUATION: {
		struct cmd *cmd = c->head;
		while (cmd != NULL && cmd->cont_data == NULL)
			cmd = cmd->next;
		if (cmd == NULL) {
			fail_all(c, "unexpected continuation request: + %s", r->text);
			return 1;
		}
		/* AUTHENTICATE: first "+" gets the credentials (no SASL-IR); a
		 * later one carries an error (XOAUTH2): answer empty to get the NO */
		if (cmd->conts++ == 0 && cmd->cont_data[0] != '\0') {
			bufferevent_write(c->bev, cmd->cont_data, strlen(cmd->cont_data));
			OPENSSL_cleanse(cmd->cont_data, strlen(cmd->cont_data));
			cmd->cont_data[0] = '\0';
		}
		bufferevent_write(c->bev, "\r\n", 2);
		return 0;
	}
	case IMAP_RESP_TAGGED: {
		struct cmd **pp = &c->head, *cmd = NULL, *prev = NULL;
		for (; *pp != NULL; prev = *pp, pp = &(*pp)->next)
			if (strcmp((*pp)->tag, r->tag) == 0) {
				cmd = *pp;
				*pp = cmd->next;
				if (c->tail == cmd)
					c->tail = prev;
				break;
			}
		if (cmd == NULL) {
			fail_all(c, "tagged response for unknown tag %s", r->tag);
			return 1;
		}
		return finish_cmd(c, cmd, r);
	}
	}
	return 0;
}

/* ---- sending ---------------------------------------------------------------- */

static int vsend(struct imap_client *c, const struct imap_command *spec, char *cont_data,
		 const char *fmt, va_list ap)
{
	struct cmd *cmd = NULL;
	if (c->state == ST_FAILED || c->bev == NULL || (cmd = calloc(1, sizeof(*cmd))) == NULL) {
		if (cont_data != NULL) {
			OPENSSL_cleanse(cont_data, strlen(cont_data));
			free(cont_data);
		}
		if (c->state != ST_FAILED)
			snprintf(c->error, sizeof(c->error), "%s: %s", c->where,
				 c->bev == NULL ? "not connected" : "out of memory");
		return -1;
	}
	snprintf(cmd->tag, sizeof(cmd->tag), "F%u", ++c->tagseq);
	cmd->desc = strdup(spec->desc ? spec->desc : "command");
	cmd->mailbox = spec->mailbox ? strdup(spec->mailbox) : NULL;
	cmd->untagged = spec->untagged;
	cmd->done = spec->done;
	cmd->ctx = cmd->done_ctx = spec->ctx;
	cmd->want = spec->untagged_name ? strdup(spec->untagged_name) : NULL;
	cmd->hash_bodies = spec->hash_bodies;
	cmd->cont_data = cont_data;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	if (!c->set.managesieve)
		evbuffer_add_printf(out, "%s ", cmd->tag);
	evbuffer_add_vprintf(out, fmt, ap);
	evbuffer_add(out, "\r\n", 2);
	if (c->tail)
		c->tail->next = cmd;
	else
		c->head = cmd;
	c->tail = cmd;
	c->npending++;
	if (c->npending == 1)
		arm(c, c->set.command_timeout_ms);
	logf_(c, IMAP_LOG_DEBUG, "%s: sent %s %s", c->where, cmd->tag, cmd->desc);
	return 0;
}

static int send_internal(struct imap_client *c, const struct imap_command *spec, char *cont_data,
			 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int send_internal(struct imap_client *c, const struct imap_command *spec, char *cont_data,
			 const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsend(c, spec, cont_data, fmt, ap);
	va_end(ap);
	return r;
}

int imap_client_command(struct imap_client *c, const struct imap_command *cmd, const char *fmt, ...)
{
	va_list ap;
	if (c->state != ST_READY) {
		if (c->state != ST_FAILED)
			snprintf(c->error, sizeof(c->error), "%s: %s: not logged in", c->where,
				 cmd->desc ? cmd->desc : "command");
		return -1;
	}
	va_start(ap, fmt);
	int r = vsend(c, cmd, NULL, fmt, ap);
	va_end(ap);
	return r;
}

/* ---- TLS ------------------------------------------------------------------------ */

static int is_ip_literal(const char *s)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static const char *tls_name(const struct imap_client *c)
{
	return c->set.tls_name ? c->set.tls_name : c->set.host;
}

static int start_tls(struct imap_client *c)
{
	c->ssl = SSL_new(c->ssl_ctx);
	if (c->ssl == NULL) {
		fail_all(c, "cannot create a TLS session");
		return -1;
	}
	const char *name = tls_name(c);
	if (!c->set.tls_insecure) {
		int ok = is_ip_literal(name)
			     ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name)
			     : SSL_set1_host(c->ssl, name);
		if (!ok) {
			fail_all(c, "cannot set the TLS name to verify ('%s')", name);
			return -1;
		}
		SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	}
	if (!is_ip_literal(name))
		SSL_set_tlsext_host_name(c->ssl, name);
	struct bufferevent *tls = bufferevent_openssl_filter_new(
	    c->base, c->bev, c->ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		SSL_free(c->ssl);
		c->ssl = NULL;
		fail_all(c, "cannot start TLS");
		return -1;
	}
	/* logging out without close_notify is what most servers do */
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	c->bev = tls; /* the filter owns the socket bufferevent and the SSL now */
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->state = ST_TLS_HANDSHAKE;
	arm(c, c->set.greeting_timeout_ms);
	return 0;
}

static void tls_error(struct imap_client *c)
{
	char detail[400] = "";
	unsigned long e;
	while ((e = bufferevent_get_openssl_error(c->bev)) != 0)
		if (detail[0] == '\0')
			ERR_error_string_n(e, detail, sizeof(detail));
	long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
	if (vr != X509_V_OK)
		fail_all(c, "TLS handshake failed: certificate verification failed: %s "
			    "(verifying '%s'%s%s)",
			 X509_verify_cert_error_string(vr), tls_name(c),
			 c->set.ca_file ? " against CA file " : " against the system trust store",
			 c->set.ca_file ? c->set.ca_file : "");
	else
		fail_all(c, "TLS handshake failed: %s", detail[0] ? detail : "connection closed");
}

/* ---- bufferevent callbacks ----------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
	struct imap_client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	while (c->state != ST_FAILED && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		ssize_t n = imap_parser_feed(c->parser, v.iov_base, v.iov_len);
		if (n < 0) {
			fail_all(c, "%s", imap_parser_error(c->parser));
			return;
		}
		evbuffer_drain(in, (size_t)n);
		if (c->stop_parser) {
			c->stop_parser = 0;
			if (evbuffer_get_length(in) > 0) {
				/* RFC 3207 / CVE-2011-0411-style injection */
				fail_all(c, "server sent data after STARTTLS OK; refusing it");
				return;
			}
			start_tls(c);
			return;
		}
	}
	if (c->state == ST_READY || c->state == ST_LOGIN)
		rearm_command_timer(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct imap_client *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->state == ST_CONNECTING) {
			evtimer_del(c->timer);
			if (c->set.tls == IMAP_TLS_IMAPS) {
				start_tls(c);
				return;
			}
			c->state = ST_GREETING;
			arm(c, c->set.greeting_timeout_ms);
		} else if (c->state == ST_TLS_HANDSHAKE) {
			c->tls_done = 1;
			evtimer_del(c->timer);
			logf_(c, IMAP_LOG_DEBUG, "%s: TLS established (%s)", c->where,
			      SSL_get_version(c->ssl));
			if (c->set.tls == IMAP_TLS_IMAPS) {
				c->state = ST_GREETING;
				arm(c, c->set.greeting_timeout_ms);
			} else if (c->set.managesieve) {
				/* RFC 5804 2.2: the server sends its capabilities again */
				c->have_caps = 0;
				strcpy(c->caps, " ");
				c->state = ST_GREETING;
				arm(c, c->set.greeting_timeout_ms);
			} else {
				/* RFC 3501 6.2.1: forget what was learned in plaintext */
				c->have_caps = 0;
				c->state = ST_LOGIN;
				next_login_step(c);
			}
		}
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		if (c->state == ST_TLS_HANDSHAKE || (c->ssl != NULL && bufferevent_get_openssl_error(bev))) {
			tls_error(c);
			return;
		}
		int err = EVUTIL_SOCKET_ERROR();
		int dns = bufferevent_socket_get_dns_error(bev);
		if (dns)
			fail_all(c, "cannot resolve %s: %s", c->set.host, evutil_gai_strerror(dns));
		else if (c->state == ST_CONNECTING)
			fail_all(c, "cannot connect: %s", evutil_socket_error_to_string(err));
		else
			fail_all(c, "connection error: %s", evutil_socket_error_to_string(err));
		return;
	}
	if (what & BEV_EVENT_EOF) {
		if (c->state == ST_TLS_HANDSHAKE)
			tls_error(c);
		else if (c->bye[0])
			fail_all(c, "server closed the connection: BYE %s", c->bye);
		else
			fail_all(c, "server closed the connection");
	}
}

/* ---- login sequence --------------------------------------------------------------- */

static void login_step_done(void *ctx, const struct imap_response *r, const char *err)
{
	struct imap_client *c = ctx;
	if (c->state == ST_FAILED)
		return;
	if (err != NULL) {
		/* the NO text may say why; it never holds our secret */
		char msg[1100];
		snprintf(msg, sizeof(msg), "%s", err + strlen(c->where) + 2);
		fail_all(c, "%s", msg);
		return;
	}
	next_login_step(c);
}

static void capability_done(void *ctx, const struct imap_response *r, const char *err)
{
	struct imap_client *c = ctx;
	/* a server that answers without * CAPABILITY offers nothing special;
	 * asking again would loop */
	if (err == NULL && !c->have_caps) {
		strcpy(c->caps, " ");
		c->have_caps = 1;
	}
	login_step_done(ctx, r, err);
}

static void starttls_done(void *ctx, const struct imap_response *r, const char *err)
{
	struct imap_client *c = ctx;
	if (err != NULL) {
		login_step_done(ctx, r, err);
		return;
	}
	c->stop_parser = 1; /* on_read switches to TLS after this response */
}

static void login_done(void *ctx, const struct imap_response *r, const char *err)
{
	struct imap_client *c = ctx;
	if (err == NULL) {
		c->logged_in = 1;
		/* a [CAPABILITY] in the OK already reset caps; else ask again */
		if (!c->set.managesieve &&
		    !(r->code && imap_node_is_atom(imap_node_child(r->code, 0), "CAPABILITY")))
			c->have_caps = 0;
	}
	login_step_done(ctx, r, err);
}

static char *b64(const void *data, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	if (out != NULL)
		EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

static int impersonating(const struct imap_client *c)
{
	return c->set.auth_user != NULL && c->set.auth_user[0] != '\0' &&
	       strcmp(c->set.auth_user, c->set.user) != 0;
}

static void send_login(struct imap_client *c)
{
	struct imap_command spec = {.desc = NULL, .done = login_done, .ctx = c};
	const char *user = c->set.user, *secret = c->set.secret ? c->set.secret : "";
	if (c->set.auth == IMAP_AUTH_LOGIN && !c->set.managesieve) {
		spec.desc = "LOGIN";
		if (imap_client_has_cap(c, "LOGINDISABLED")) {
			fail_all(c, "LOGIN: the server disables LOGIN on this connection "
				    "(use TLS or AUTHENTICATE)");
			return;
		}
		char name[600];
		if (impersonating(c)) {
			if (c->set.master_separator == NULL) {
				fail_all(c, "LOGIN as a master user needs master_separator "
					    "(or use AUTHENTICATE PLAIN)");
				return;
			}
			snprintf(name, sizeof(name), "%s%s%s", user, c->set.master_separator,
				 c->set.auth_user);
		} else {
			snprintf(name, sizeof(name), "%s", user);
		}
		char *qn = imap_quote(name), *qp = imap_quote(secret);
		if (qn == NULL || qp == NULL)
			fail_all(c, "LOGIN: user name or password contains CR, LF or NUL");
		else
			send_internal(c, &spec, NULL, "LOGIN %s %s", qn, qp);
		free(qn);
		if (qp != NULL) {
			OPENSSL_cleanse(qp, strlen(qp));
			free(qp);
		}
		return;
	}
	/* SASL: PLAIN (RFC 4616) with an authorization identity, or XOAUTH2;
	 * ManageSieve has no LOGIN command: PLAIN, its mandatory mechanism */
	enum imap_auth_mech auth = c->set.auth == IMAP_AUTH_LOGIN ? IMAP_AUTH_PLAIN : c->set.auth;
	const char *mech = auth == IMAP_AUTH_PLAIN ? "PLAIN" : "XOAUTH2";
	char cap[32];
	snprintf(cap, sizeof(cap), "AUTH=%s", mech);
	if (!imap_client_has_cap(c, cap)) {
		fail_all(c, "AUTHENTICATE %s: the server does not offer %s", mech, cap);
		return;
	}
	size_t ulen = strlen(user), alen = c->set.auth_user ? strlen(c->set.auth_user) : 0,
	       slen = strlen(secret);
	char *raw = malloc(ulen + alen + slen + 64);
	size_t rlen;
	if (raw == NULL)
		return;
	if (auth == IMAP_AUTH_PLAIN) {
		/* authzid NUL authcid NUL passwd */
		if (impersonating(c))
			rlen = (size_t)sprintf(raw, "%s%c%s%c", user, 0, c->set.auth_user, 0);
		else
			rlen = (size_t)sprintf(raw, "%c%s%c", 0, user, 0);
		memcpy(raw + rlen, secret, slen);
		rlen += slen;
	} else {
		rlen = (size_t)sprintf(raw, "user=%s\001auth=Bearer ", user);
		memcpy(raw + rlen, secret, slen);
		rlen += slen;
		memcpy(raw + rlen, "\001\001", 2);
		rlen += 2;
	}
	char *enc = b64(raw, rlen);
	OPENSSL_cleanse(raw, rlen);
	free(raw);
	if (enc == NULL)
		return;
	spec.desc = auth == IMAP_AUTH_PLAIN ? "AUTHENTICATE PLAIN" : "AUTHENTICATE XOAUTH2";
	if (c->set.managesieve) {
		/* RFC 5804 2.1: the initial response is a string argument */
		send_internal(c, &spec, strdup(""), "AUTHENTICATE \"%s\" \"%s\"", mech, enc);
		OPENSSL_cleanse(enc, strlen(enc));
		free(enc);
	} else if (imap_client_has_cap(c, "SASL-IR")) {
		/* empty cont_data: answers a later "+" (XOAUTH2 error) with an empty line */
		send_internal(c, &spec, strdup(""), "AUTHENTICATE %s %s", mech, enc);
		OPENSSL_cleanse(enc, strlen(enc));
		free(enc);
	} else {
		char *withcrlf = malloc(strlen(enc) + 1);
		strcpy(withcrlf, enc);
		OPENSSL_cleanse(enc, strlen(enc));
		free(enc);
		send_internal(c, &spec, withcrlf, "AUTHENTICATE %s", mech);
	}
}

static void next_login_step(struct imap_client *c)
{
	struct imap_command spec = {.done = login_step_done, .ctx = c};
	if (c->state == ST_FAILED)
		return;
	if (c->set.tls == IMAP_TLS_STARTTLS && !c->tls_done) {
		if (!c->have_caps) {
			spec.desc = "CAPABILITY";
			spec.done = capability_done;
			send_internal(c, &spec, NULL, "CAPABILITY");
		} else if (!imap_client_has_cap(c, "STARTTLS")) {
			fail_all(c, "STARTTLS required but the server does not offer it");
		} else {
			spec.desc = "STARTTLS";
			spec.done = starttls_done;
			send_internal(c, &spec, NULL, "STARTTLS");
		}
		return;
	}
	if (!c->have_caps) {
		spec.desc = "CAPABILITY";
		spec.done = capability_done;
		send_internal(c, &spec, NULL, "CAPABILITY");
		return;
	}
	if (!c->logged_in) {
		send_login(c);
		return;
	}
	c->state = ST_READY;
	rearm_command_timer(c);
	if (c->ready_cb != NULL) {
		imap_ready_cb *cb = c->ready_cb;
		c->ready_cb = NULL;
		cb(c, NULL, c->ready_ctx);
	}
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static char *keep(struct imap_client *c, int i, const char *s)
{
	c->strings[i] = s ? strdup(s) : NULL;
	return c->strings[i];
}

struct imap_client *imap_client_new(struct event_base *base, const struct imap_client_settings *set,
				    char *err, size_t errlen)
{
	if (set->host == NULL || set->user == NULL || set->user[0] == '\0') {
		snprintf(err, errlen, "IMAP client: host and user are required");
		return NULL;
	}
	if (set->auth == IMAP_AUTH_XOAUTH2 && set->auth_user != NULL && set->auth_user[0] != '\0' &&
	    strcmp(set->auth_user, set->user) != 0) {
		/* the token itself names whose mailbox it opens */
		snprintf(err, errlen,
			 "IMAP client: AUTHENTICATE XOAUTH2 has no authorization identity: "
			 "give %s's own token, not auth-user %s",
			 set->user, set->auth_user);
		return NULL;
	}
	struct imap_client *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->base = base;
	c->set = *set;
	c->set.label = keep(c, 0, set->label ? set->label : "imap");
	c->set.host = keep(c, 1, set->host);
	c->set.ca_file = keep(c, 2, set->ca_file);
	c->set.tls_name = keep(c, 3, set->tls_name);
	c->set.user = keep(c, 4, set->user);
	c->set.auth_user = keep(c, 5, set->auth_user);
	c->set.secret = keep(c, 6, set->secret);
	c->set.master_separator = keep(c, 7, set->master_separator);
	if (!c->set.port)
		c->set.port = set->managesieve ? 4190 : set->tls == IMAP_TLS_IMAPS ? 993 : 143;
	if (!c->set.connect_timeout_ms)
		c->set.connect_timeout_ms = 10000;
	if (!c->set.greeting_timeout_ms)
		c->set.greeting_timeout_ms = 10000;
	if (!c->set.command_timeout_ms)
		c->set.command_timeout_ms = 60000;
	if (c->set.limits.max_line == 0)
		imap_parser_default_limits(&c->set.limits);
	snprintf(c->where, sizeof(c->where), "%s %s:%u", c->set.label, c->set.host, c->set.port);
	c->timer = evtimer_new(base, on_timeout, c);
	struct imap_parser_callbacks cb = {on_literal_begin, on_literal_data, on_literal_end,
					   on_response};
	c->parser = imap_parser_new(&c->set.limits, &cb, c);
	if (set->tls != IMAP_TLS_NONE) {
		c->ssl_ctx = SSL_CTX_new(TLS_client_method());
		if (c->ssl_ctx == NULL) {
			snprintf(err, errlen, "%s: cannot create a TLS context", c->where);
			imap_client_free(c);
			return NULL;
		}
		SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION);
		if (set->tls_insecure) {
			SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_NONE, NULL);
		} else {
			SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_PEER, NULL);
			int ok = set->ca_file ? SSL_CTX_load_verify_locations(c->ssl_ctx, set->ca_file, NULL)
					      : SSL_CTX_set_default_verify_paths(c->ssl_ctx);
			if (!ok) {
				char e[256];
				ERR_error_string_n(ERR_get_error(), e, sizeof(e));
				snprintf(err, errlen, "%s: cannot load CA file %s: %s", c->where,
					 set->ca_file ? set->ca_file : "(system default)", e);
				imap_client_free(c);
				return NULL;
			}
		}
	}
	if (c->timer == NULL || c->parser == NULL) {
		snprintf(err, errlen, "%s: out of memory", c->where);
		imap_client_free(c);
		return NULL;
	}
	return c;
}

int imap_client_connect(struct imap_client *c, imap_ready_cb *cb, void *ctx)
{
	c->ready_cb = cb;
	c->ready_ctx = ctx;
	if (c->set.managesieve) {
		imap_parser_set_lines(c->parser, 1);
		strcpy(c->caps, " "); /* filled from the greeting's lines */
	}
	if (c->set.tls != IMAP_TLS_NONE && c->set.tls_insecure)
		logf_(c, IMAP_LOG_WARN,
		      "%s: TLS certificate verification is DISABLED by configuration "
		      "(tls_insecure): the server is not authenticated", c->where);
	if (c->set.tls == IMAP_TLS_NONE)
		logf_(c, IMAP_LOG_INFO, "%s: plaintext IMAP (no TLS configured)", c->where);
	c->bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		fail_all(c, "cannot create a socket");
		return -1;
	}
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->state = ST_CONNECTING;
	arm(c, c->set.connect_timeout_ms);
	/* resolves synchronously (no evdns base): hosts are few and usually IPs */
	if (bufferevent_socket_connect_hostname(c->bev, NULL, AF_UNSPEC, c->set.host,
						(int)c->set.port) < 0) {
		if (c->state != ST_FAILED)
			fail_all(c, "cannot connect");
		return -1;
	}
	return 0;
}

void imap_client_free(struct imap_client *c)
{
	if (c == NULL)
		return;
	struct cmd *cmd = c->head;
	while (cmd != NULL) {
		struct cmd *next = cmd->next;
		free_cmd(cmd);
		cmd = next;
	}
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	else if (c->ssl != NULL)
		SSL_free(c->ssl);
	if (c->ssl_ctx != NULL)
		SSL_CTX_free(c->ssl_ctx);
	if (c->timer != NULL)
		event_free(c->timer);
	imap_parser_free(c->parser);
	if (c->sha != NULL)
		EVP_MD_CTX_free(c->sha);
	if (c->strings[6] != NULL)
		OPENSSL_cleanse(c->strings[6], strlen(c->strings[6]));
	for (size_t i = 0; i < sizeof(c->strings) / sizeof(c->strings[0]); i++)
		free(c->strings[i]);
	free(c);
}

const char *imap_client_error(const struct imap_client *c)
{
	return c->error[0] ? c->error : NULL;
}

int imap_client_ok(const struct imap_client *c)
{
	return c->state == ST_READY;
}

unsigned imap_client_pending(const struct imap_client *c)
{
	return c->npending;
}

struct event_base *imap_client_base(const struct imap_client *c)
{
	return c->base;
}

const struct imap_client_settings *imap_client_settings(const struct imap_client *c)
{
	return &c->set;
}

/* ---- argument helpers --------------------------------------------------------------- */

char *imap_quote(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(2 * n + 3), *o = out;
	if (out == NULL)
		return NULL;
	*o++ = '"';
	for (; *s; s++) {
		if (*s == '\r' || *s == '\n') {
			free(out);
			return NULL;
		}
		if (*s == '"' || *s == '\\')
			*o++ = '\\';
		*o++ = *s;
	}
	*o++ = '"';
	*o = '\0';
	return out;
}

char *imap_mailbox_arg(const char *utf8, char *err, size_t errlen)
{
	char *w = imap_utf8_to_utf7(utf8, strlen(utf8), err, errlen);
	if (w == NULL)
		return NULL;
	char *q = imap_quote(w);
	free(w);
	return q;
}

int imap_body_sha256(const struct imap_node *n, char out[65])
{
	if (n == NULL)
		return -1;
	if (n->type == IMAP_NODE_LITERAL && n->streamed) {
		if (n->str == NULL || strlen(n->str) != 64)
			return -1;
		memcpy(out, n->str, 65);
		return 0;
	}
	if (n->type == IMAP_NODE_NIL) {
		n = NULL; /* NIL body: hash of nothing */
	} else if (n->type == IMAP_NODE_LIST) {
		return -1;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_Digest(n ? n->str : "", n ? n->len : 0, md, &mdlen, EVP_sha256(), NULL);
	hex(md, mdlen, out);
	return 0;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	const int64_t era = (y >= 0 ? y : y - 399) / 400;
	const unsigned yoe = (unsigned)(y - era * 400);
	const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

int imap_parse_internaldate(const char *s, int64_t *out)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	int d, y, hh, mm, ss, zh, zm;
	char mon[4], sign;
	if (s == NULL || sscanf(s, "%d-%3s-%d %d:%d:%d %c%2d%2d", &d, mon, &y, &hh, &mm, &ss, &sign,
				&zh, &zm) != 9)
		return -1;
	const char *p = strstr(months, mon);
	if (p == NULL || (p - months) % 3 != 0 || (sign != '+' && sign != '-') || d < 1 || d > 31 ||
	    hh > 23 || mm > 59 || ss > 60 || zh > 23 || zm > 59)
		return -1;
	unsigned m = (unsigned)((p - months) / 3 + 1);
	int64_t t = days_from_civil(y, m, (unsigned)d) * 86400 + hh * 3600 + mm * 60 + ss;
	int64_t off = (zh * 60 + zm) * 60;
	*out = sign == '+' ? t - off : t + off;
	return 0;
}

/* ---- blocking layer ----------------------------------------------------------------- */

struct waiter {
	int done, failed;
	char err[1024];
	imap_done_cb *user_done;
	void *user_ctx;
};

static void wait_done(void *ctx, const struct imap_response *r, const char *err)
{
	struct waiter *w = ctx;
	w->done++;
	if (err != NULL && !w->failed) {
		w->failed = 1;
		snprintf(w->err, sizeof(w->err), "%s", err);
	}
}

static void run_until(struct imap_client *c, const int *flag, int target)
{
	while (*flag < target && c->state != ST_FAILED)
		if (event_base_loop(c->base, EVLOOP_ONCE) < 0)
			break;
}

static int vsync(struct imap_client *c, const struct imap_command *cmd, const char *fmt, va_list ap)
{
	struct waiter w = {0};
	if (c->state != ST_READY) {
		if (c->state != ST_FAILED)
			snprintf(c->error, sizeof(c->error), "%s: %s: not logged in", c->where,
				 cmd->desc ? cmd->desc : "command");
		return -1;
	}
	if (vsend(c, cmd, NULL, fmt, ap) < 0)
		return -1;
	c->tail->done = wait_done;
	c->tail->done_ctx = &w;
	run_until(c, &w.done, 1);
	if (w.done == 0)
		return -1; /* the connection failed: c->error says why */
	if (w.failed) {
		snprintf(c->error, sizeof(c->error), "%s", w.err);
		return -1;
	}
	return 0;
}

int imap_sync_command(struct imap_client *c, const struct imap_command *cmd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsync(c, cmd, fmt, ap);
	va_end(ap);
	return r;
}

struct connect_wait {
	int done;
	char err[1024];
};

static void connect_done(struct imap_client *c, const char *error, void *ctx)
{
	struct connect_wait *w = ctx;
	w->done = 1;
	if (error != NULL)
		snprintf(w->err, sizeof(w->err), "%s", error);
}

struct imap_client *imap_sync_connect(const struct imap_client_settings *set,
				      struct imap_identity *id, char *err, size_t errlen)
{
	struct event_base *base = event_base_new();
	if (base == NULL) {
		snprintf(err, errlen, "cannot create an event base");
		return NULL;
	}
	struct imap_client *c = imap_client_new(base, set, err, errlen);
	if (c == NULL) {
		event_base_free(base);
		return NULL;
	}
	c->own_base = 1;
	struct connect_wait w = {0};
	if (imap_client_connect(c, connect_done, &w) == 0)
		while (!w.done && event_base_loop(base, EVLOOP_ONCE) == 0)
			;
	if (!w.done || w.err[0]) {
		snprintf(err, errlen, "%s", w.err[0] ? w.err : c->error);
		imap_client_free(c);
		event_base_free(base);
		return NULL;
	}
	struct imap_identity local;
	if (id == NULL)
		id = &local;
	memset(id, 0, sizeof(*id));
	/* ManageSieve has no mailbox to fingerprint: see managesieve.h */
	if (impersonating(c) && !c->set.managesieve && c->set.identity != IMAP_IDENTITY_NONE) {
		if (imap_identity_check(c, id, err, errlen) < 0) {
			imap_sync_close(c);
			return NULL;
		}
	}
	return c;
}

void imap_sync_close(struct imap_client *c)
{
	if (c == NULL)
		return;
	struct event_base *base = c->own_base ? c->base : NULL;
	if (c->state == ST_READY) {
		struct imap_command spec = {.desc = "LOGOUT"};
		/* a BYE and a closed connection are the normal end of LOGOUT */
		(void)imap_sync_command(c, &spec, "LOGOUT");
	}
	imap_client_free(c);
	if (base != NULL)
		event_base_free(base);
}

int imap_sync_wait(struct imap_client *c)
{
	while (c->npending > 0 && c->state != ST_FAILED)
		if (event_base_loop(c->base, EVLOOP_ONCE) < 0)
			return -1;
	return c->state == ST_FAILED ? -1 : 0;
}

/* ---- high-level commands -------------------------------------------------------------- */

static void ns_untagged(void *ctx, const struct imap_response *r)
{
	struct imap_namespace *ns = ctx;
	/* NAMESPACE (personal) (other) (shared): first personal entry */
	const struct imap_node *personal = imap_node_child(r->data, 0);
	const struct imap_node *first = imap_node_child(personal, 0);
	if (first == NULL || first->type != IMAP_NODE_LIST)
		return;
	const char *prefix = imap_node_text(imap_node_child(first, 0));
	const char *sep = imap_node_text(imap_node_child(first, 1));
	snprintf(ns->prefix, sizeof(ns->prefix), "%s", prefix ? prefix : "");
	ns->sep = sep ? sep[0] : 0;
	ns->present = 1;
}

int imap_namespace_personal(struct imap_client *c, struct imap_namespace *ns)
{
	memset(ns, 0, sizeof(*ns));
	if (!imap_client_has_cap(c, "NAMESPACE"))
		return 0; /* nothing to ask: present stays 0 */
	struct imap_command cmd = {.desc = "NAMESPACE", .untagged = ns_untagged,
				   .untagged_name = "NAMESPACE", .ctx = ns};
	return imap_sync_command(c, &cmd, "NAMESPACE");
}

static void apply_status(struct imap_folder *f, const struct imap_node *items)
{
	uint64_t v;
	f->has_status = 1;
	if (imap_node_u64(imap_node_pair(items, "MESSAGES"), &v) == 0)
		f->messages = (uint32_t)v;
	if (imap_node_u64(imap_node_pair(items, "UIDNEXT"), &v) == 0)
		f->uidnext = (uint32_t)v;
	if (imap_node_u64(imap_node_pair(items, "UIDVALIDITY"), &v) == 0)
		f->uidvalidity = (uint32_t)v;
	if (imap_node_u64(imap_node_pair(items, "SIZE"), &v) == 0) {
		f->has_size = 1;
		f->size = v;
	}
}

struct list_ctx {
	struct imap_folder_list *l;
	size_t cap;
	int oom;
};

static void list_untagged(void *ctx, const struct imap_response *r)
{
	struct list_ctx *lc = ctx;
	struct imap_folder_list *l = lc->l;
	if (strcmp(r->name, "STATUS") == 0) { /* LIST-STATUS */
		const char *wire = imap_node_text(imap_node_child(r->data, 0));
		for (size_t i = 0; wire != NULL && i < l->n; i++)
			if (strcmp(l->v[i].wire, wire) == 0)
				apply_status(&l->v[i], imap_node_child(r->data, 1));
		return;
	}
	const struct imap_node *flags = imap_node_child(r->data, 0);
	const char *sep = imap_node_text(imap_node_child(r->data, 1));
	const char *wire = imap_node_text(imap_node_child(r->data, 2));
	if (flags == NULL || flags->type != IMAP_NODE_LIST || wire == NULL)
		return;
	if (l->n == lc->cap) {
		size_t ncap = lc->cap ? lc->cap * 2 : 32;
		struct imap_folder *nv = realloc(l->v, ncap * sizeof(*nv));
		if (nv == NULL) {
			lc->oom = 1;
			return;
		}
		l->v = nv;
		lc->cap = ncap;
	}
	struct imap_folder *f = &l->v[l->n];
	memset(f, 0, sizeof(*f));
	f->sep = sep ? sep[0] : 0;
	f->wire = strdup(wire);
	char err[200];
	if (strcasecmp(wire, "INBOX") == 0)
		f->name = strdup("INBOX");
	else if ((f->name = imap_utf7_to_utf8(wire, strlen(wire), err, sizeof(err))) == NULL)
		f->name = strdup(wire); /* not valid mUTF-7: keep the bytes, still addressable */
	for (const struct imap_node *n = flags->children; n != NULL; n = n->next) {
		if (imap_node_is_atom(n, "\\Noselect"))
			f->flags |= IMAP_FOLDER_NOSELECT;
		else if (imap_node_is_atom(n, "\\NonExistent"))
			f->flags |= IMAP_FOLDER_NONEXISTENT | IMAP_FOLDER_NOSELECT;
		else if (imap_node_is_atom(n, "\\HasChildren"))
			f->flags |= IMAP_FOLDER_HASCHILDREN;
		else if (n->type == IMAP_NODE_ATOM &&
			 strstr(" \\ALL \\ARCHIVE \\DRAFTS \\FLAGGED \\JUNK \\SENT \\TRASH ", n->str) ==
			     NULL) {
			/* not special-use */
		} else if (n->type == IMAP_NODE_ATOM) {
			snprintf(f->special_use, sizeof(f->special_use), "%s", n->str);
		}
	}
	l->n++;
}

static int cmp_folder(const void *a, const void *b)
{
	const struct imap_folder *x = a, *y = b;
	return strcmp(x->name, y->name);
}

int imap_list(struct imap_client *c, struct imap_folder_list *out)
{
	struct list_ctx lc = {.l = out};
	memset(out, 0, sizeof(*out));
	struct imap_command cmd = {.desc = "LIST", .untagged = list_untagged,
				   .untagged_name = "LIST STATUS", .ctx = &lc};
	int ext = imap_client_has_cap(c, "LIST-EXTENDED");
	int su = ext && imap_client_has_cap(c, "SPECIAL-USE");
	int st = ext && imap_client_has_cap(c, "LIST-STATUS");
	int r;
	if (su || st)
		r = imap_sync_command(c, &cmd, "LIST \"\" \"*\" RETURN (%s%s%s)", su ? "SPECIAL-USE" : "",
				      su && st ? " " : "",
				      st ? (imap_client_has_cap(c, "STATUS=SIZE")
						? "STATUS (MESSAGES UIDNEXT UIDVALIDITY SIZE)"
						: "STATUS (MESSAGES UIDNEXT UIDVALIDITY)")
					 : "");
	else
		r = imap_sync_command(c, &cmd, "LIST \"\" \"*\"");
	if (r == 0 && lc.oom) {
		snprintf(c->error, sizeof(c->error), "%s: LIST: out of memory", c->where);
		r = -1;
	}
	if (r < 0) {
		imap_folder_list_free(out);
		return -1;
	}
	if (out->n > 0)
		qsort(out->v, out->n, sizeof(*out->v), cmp_folder);
	return 0;
}

void imap_folder_list_free(struct imap_folder_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].name);
		free(l->v[i].wire);
	}
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

static void status_untagged(void *ctx, const struct imap_response *r)
{
	struct imap_folder *f = ctx;
	const char *wire = imap_node_text(imap_node_child(r->data, 0));
	if (wire != NULL && strcmp(wire, f->wire) == 0)
		apply_status(f, imap_node_child(r->data, 1));
}

/* the only STATUS in flight: whatever name the server spells */
static void status_any_untagged(void *ctx, const struct imap_response *r)
{
	apply_status(ctx, imap_node_child(r->data, 1));
}

int imap_status(struct imap_client *c, struct imap_folder *f)
{
	char *q = imap_quote(f->wire);
	if (q == NULL)
		return -1;
	struct imap_command cmd = {.desc = "STATUS", .mailbox = f->name, .untagged = status_untagged,
				   .untagged_name = "STATUS", .ctx = f};
	int r = imap_sync_command(c, &cmd, "STATUS %s (MESSAGES UIDNEXT UIDVALIDITY%s)", q,
				  imap_client_has_cap(c, "STATUS=SIZE") ? " SIZE" : "");
	free(q);
	return r;
}

static void select_untagged(void *ctx, const struct imap_response *r)
{
	struct imap_mailbox_info *mi = ctx;
	uint64_t v;
	if (strcmp(r->name, "EXISTS") == 0 && r->has_number)
		mi->exists = r->number;
	if (r->code == NULL)
		return;
	const struct imap_node *k = imap_node_child(r->code, 0);
	if (imap_node_is_atom(k, "UIDVALIDITY") && imap_node_u64(k->next, &v) == 0)
		mi->uidvalidity = (uint32_t)v;
	else if (imap_node_is_atom(k, "UIDNEXT") && imap_node_u64(k->next, &v) == 0)
		mi->uidnext = (uint32_t)v;
}


int imap_select(struct imap_client *c, const char *utf8_name, int examine,
		struct imap_mailbox_info *out)
{
	char err[200];
	memset(out, 0, sizeof(*out));
	char *arg = strcasecmp(utf8_name, "INBOX") == 0 ? strdup("INBOX")
							: imap_mailbox_arg(utf8_name, err, sizeof(err));
	if (arg == NULL) {
		snprintf(c->error, sizeof(c->error), "%s: %s \"%s\": %s", c->where,
			 examine ? "EXAMINE" : "SELECT", utf8_name, err);
		return -1;
	}
	struct imap_command cmd = {.desc = examine ? "EXAMINE" : "SELECT", .mailbox = utf8_name,
				   .untagged = select_untagged, .untagged_name = "EXISTS OK FLAGS",
				   .ctx = out};
	int r = imap_sync_command(c, &cmd, "%s %s", examine ? "EXAMINE" : "SELECT", arg);
	if (r == 0 && out->uidnext == 0) {
		/* [UIDNEXT] is only a SHOULD (RFC 3501 6.3.1): Courier-IMAP sends
		 * none. Ask STATUS, or verify could not tell a UID on new below
		 * old UIDNEXT from new mail. */
		struct imap_folder f = {.name = (char *)utf8_name};
		struct imap_command st = {.desc = "STATUS", .mailbox = utf8_name,
					  .untagged = status_any_untagged, .untagged_name = "STATUS",
					  .ctx = &f};
		r = imap_sync_command(c, &st, "STATUS %s (UIDNEXT)", arg);
		if (r == 0)
			out->uidnext = f.uidnext;
	}
	free(arg);
	out->read_only = examine;
	return r;
}

struct search_ctx {
	uint32_t *v;
	size_t n, cap;
	int oom;
};

static void search_untagged(void *ctx, const struct imap_response *r)
{
	struct search_ctx *s = ctx;
	for (const struct imap_node *n = r->data->children; n != NULL; n = n->next) {
		uint64_t v;
		if (imap_node_u64(n, &v) < 0 || v == 0 || v > UINT32_MAX)
			continue;
		if (s->n == s->cap) {
			size_t ncap = s->cap ? s->cap * 2 : 256;
			uint32_t *nv = realloc(s->v, ncap * sizeof(*nv));
			if (nv == NULL) {
				s->oom = 1;
				return;
			}
			s->v = nv;
			s->cap = ncap;
		}
		s->v[s->n++] = (uint32_t)v;
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int imap_uid_search(struct imap_client *c, const char *criteria, uint32_t **uids, size_t *n)
{
	struct search_ctx s = {0};
	struct imap_command cmd = {.desc = "UID SEARCH", .untagged = search_untagged,
				   .untagged_name = "SEARCH", .ctx = &s};
	int r = imap_sync_command(c, &cmd, "UID SEARCH %s", criteria);
	if (r < 0 || s.oom) {
		free(s.v);
		return -1;
	}
	if (s.n > 0)
		qsort(s.v, s.n, sizeof(*s.v), cmp_u32);
	*uids = s.v;
	*n = s.n;
	return 0;
}

char *imap_uidset(const uint32_t *uids, size_t n)
{
	char *out = malloc(n * 22 + 1);
	size_t len = 0;
	if (out == NULL)
		return NULL;
	out[0] = '\0';
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && uids[j + 1] == uids[j] + 1)
			j++;
		if (j > i)
			len += (size_t)sprintf(out + len, "%s%u:%u", len ? "," : "", uids[i], uids[j]);
		else
			len += (size_t)sprintf(out + len, "%s%u", len ? "," : "", uids[i]);
		i = j + 1;
	}
	return out;
}

struct fetch_ctx {
	imap_message_cb *cb;
	void *ctx;
	unsigned what;
	int cb_failed;
	char flagbuf[4096];
};

static int cmp_str(const void *a, const void *b)
{
	return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

static void fetch_untagged(void *ctx, const struct imap_response *r)
{
	struct fetch_ctx *fc = ctx;
	const struct imap_node *items = imap_node_child(r->data, 0);
	struct imap_message m = {0};
	uint64_t v;
	if (imap_node_u64(imap_node_pair(items, "UID"), &v) < 0)
		return; /* unsolicited FETCH (flag change by another session) */
	m.uid = (uint32_t)v;
	const struct imap_node *flags = imap_node_pair(items, "FLAGS");
	const char *names[256];
	size_t nf = 0;
	for (const struct imap_node *n = flags ? flags->children : NULL; n && nf < 256; n = n->next)
		if (n->type == IMAP_NODE_ATOM && strcasecmp(n->str, "\\Recent") != 0)
			names[nf++] = n->str;
	if (nf > 0)
		qsort(names, nf, sizeof(names[0]), cmp_str);
	size_t len = 0;
	fc->flagbuf[0] = '\0';
	for (size_t i = 0; i < nf; i++)
		len += (size_t)snprintf(fc->flagbuf + len, sizeof(fc->flagbuf) - len, "%s%s",
					i ? " " : "", names[i]);
	m.flags = fc->flagbuf;
	(void)imap_parse_internaldate(imap_node_text(imap_node_pair(items, "INTERNALDATE")),
				      &m.internaldate);
	(void)imap_node_u64(imap_node_pair(items, "RFC822.SIZE"), &m.size);
	if (fc->what & IMAP_FETCH_SHA256) {
		const struct imap_node *body = NULL;
		for (const struct imap_node *n = items ? items->children : NULL; n && n->next;
		     n = n->next->next)
			if (n->type == IMAP_NODE_ATOM && strncasecmp(n->str, "BODY[", 5) == 0)
				body = n->next;
		m.has_sha256 = body != NULL && imap_body_sha256(body, m.sha256) == 0;
	}
	if (fc->cb(fc->ctx, &m) != 0)
		fc->cb_failed = 1;
}

static const char *fetch_items(unsigned what)
{
	if ((what & IMAP_FETCH_META) && (what & IMAP_FETCH_SHA256))
		return "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])";
	if (what & IMAP_FETCH_SHA256)
		return "(UID BODY.PEEK[])";
	return "(UID FLAGS INTERNALDATE RFC822.SIZE)";
}

int imap_uid_fetch(struct imap_client *c, const char *uidset, unsigned what, imap_message_cb *cb,
		   void *ctx)
{
	struct fetch_ctx fc = {.cb = cb, .ctx = ctx, .what = what};
	struct imap_command cmd = {.desc = "UID FETCH", .untagged = fetch_untagged,
				   .untagged_name = "FETCH", .ctx = &fc,
				   .hash_bodies = (what & IMAP_FETCH_SHA256) != 0};
	return imap_sync_command(c, &cmd, "UID FETCH %s %s", uidset, fetch_items(what));
}

int imap_uid_fetch_pipelined(struct imap_client *c, const uint32_t *uids, size_t n, size_t batch,
			     unsigned what, imap_message_cb *cb, void *ctx)
{
	struct fetch_ctx fc = {.cb = cb, .ctx = ctx, .what = what};
	struct waiter w = {0};
	int sent = 0;
	if (batch == 0)
		batch = 100;
	for (size_t i = 0; i < n; i += batch) {
		char *set = imap_uidset(uids + i, n - i < batch ? n - i : batch);
		struct imap_command cmd = {.desc = "UID FETCH", .untagged = fetch_untagged,
					   .untagged_name = "FETCH", .ctx = &fc,
					   .hash_bodies = (what & IMAP_FETCH_SHA256) != 0};
		int r = set ? imap_client_command(c, &cmd, "UID FETCH %s %s", set, fetch_items(what)) : -1;
		free(set);
		if (r < 0)
			break;
		c->tail->done = wait_done;
		c->tail->done_ctx = &w;
		sent++;
	}
	run_until(c, &w.done, sent);
	if (w.done < sent)
		return -1;
	if (w.failed) {
		snprintf(c->error, sizeof(c->error), "%s", w.err);
		return -1;
	}
	return sent * batch < n ? -1 : 0;
}

/* ---- identity check ------------------------------------------------------------------- */

/* The decision is include/ferry-identity.h's (shared with the mail plugin);
 * this is its I/O: the evidence of one session, pipelined in one round trip. */
struct evidence {
	struct ferry_identity_evidence *ev;
	struct ferry_identity_view *view;
	int session; /* the user's session: ID, NAMESPACE and the other-users check */
	unsigned done;
	struct imap_folder inbox;
	char status_err[600], err[600];
};

static void ev_untagged(void *ctx, const struct imap_response *r)
{
	struct evidence *e = ctx;
	if (strcmp(r->name, "ID") == 0) {
		const struct imap_node *l = imap_node_child(r->data, 0);
		if (l == NULL || l->type != IMAP_NODE_LIST)
			return;
		for (const struct imap_node *k = l->children; k != NULL && k->next != NULL;
		     k = k->next->next)
			ferry_identity_set_id_field(e->ev, imap_node_text(k), imap_node_text(k->next));
	} else if (strcmp(r->name, "NAMESPACE") == 0) {
		/* (personal) (other users) (shared): the first other-users entry */
		const struct imap_node *first = imap_node_child(imap_node_child(r->data, 1), 0);
		if (first == NULL || first->type != IMAP_NODE_LIST)
			return;
		const char *sep = imap_node_text(imap_node_child(first, 1));
		ferry_identity_set_other_namespace(e->ev, imap_node_text(imap_node_child(first, 0)),
						   sep != NULL ? sep[0] : '\0');
	} else if (strcmp(r->name, "STATUS") == 0) {
		apply_status(&e->inbox, imap_node_child(r->data, 1));
	} else if (strcmp(r->name, "LIST") == 0) {
		const char *wire = imap_node_text(imap_node_child(r->data, 2));
		if (wire == NULL)
			return;
		if (e->session)
			ferry_identity_session_folder(e->ev, wire);
		else
			ferry_identity_view_folder(e->view, wire);
	}
}

static void ev_done(void *ctx, const struct imap_response *resp, const char *error)
{
	struct evidence *e = ctx;
	e->done++;
	(void)resp;
	if (error != NULL && e->err[0] == '\0')
		snprintf(e->err, sizeof(e->err), "%s", error);
}

/* ID and NAMESPACE only inform: a NO or BAD is no evidence */
static void ev_info_done(void *ctx, const struct imap_response *resp, const char *error)
{
	struct evidence *e = ctx;
	e->done++;
	(void)resp;
	(void)error;
}

static void ev_status_done(void *ctx, const struct imap_response *resp, const char *error)
{
	struct evidence *e = ctx;
	e->done++;
	(void)resp;
	if (error != NULL)
		snprintf(e->status_err, sizeof(e->status_err), "%s", error);
}

/* ID and NAMESPACE (session only), STATUS INBOX, LIST "" "*", all sent at
 * once. -1: the session failed (c->error); a NO to STATUS is evidence (no
 * INBOX), to ID or NAMESPACE none. */
static int take_evidence(struct imap_client *c, struct evidence *e)
{
	struct imap_command id = {.desc = "ID", .untagged = ev_untagged, .untagged_name = "ID",
				  .done = ev_info_done, .ctx = e};
	struct imap_command ns = id, st = id, list = id;
	ns.desc = ns.untagged_name = "NAMESPACE";
	st.desc = st.untagged_name = "STATUS";
	st.mailbox = "INBOX";
	st.done = ev_status_done;
	list.desc = list.untagged_name = "LIST";
	list.done = ev_done;
	e->inbox.wire = e->inbox.name = "INBOX";
	if (e->session && imap_client_has_cap(c, "ID") && imap_client_command(c, &id, "ID NIL") < 0)
		return -1;
	if (e->session && imap_client_has_cap(c, "NAMESPACE") &&
	    imap_client_command(c, &ns, "NAMESPACE") < 0)
		return -1;
	if (imap_client_command(c, &st, "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY)") < 0 ||
	    imap_client_command(c, &list, "LIST \"\" \"*\"") < 0)
		return -1;
	if (imap_sync_wait(c) < 0)
		return -1;
	if (e->err[0] != '\0') {
		snprintf(c->error, sizeof(c->error), "%s", e->err);
		return -1;
	}
	if (e->inbox.has_status && e->status_err[0] == '\0')
		ferry_identity_view_inbox(e->view, e->inbox.uidvalidity, e->inbox.uidnext,
					  e->inbox.messages);
	return 0;
}

int imap_identity_check(struct imap_client *session, struct imap_identity *id, char *err,
			size_t errlen)
{
	const struct imap_client_settings *set = &session->set;
	struct ferry_identity_evidence ev;
	char reason[700];
	memset(id, 0, sizeof(*id));
	id->impersonated = 1;
	ferry_identity_init(&ev, set->user, set->auth_user);
	struct evidence mine = {.ev = &ev, .view = &ev.session, .session = 1};
	if (take_evidence(session, &mine) < 0) {
		snprintf(err, errlen, "identity check for %s failed: %s", set->user, session->error);
		return -1;
	}
	id->inbox_uidvalidity = ev.session.inbox_uidvalidity;
	id->inbox_uidnext = ev.session.inbox_uidnext;
	id->inbox_messages = ev.session.inbox_messages;
	struct imap_namespace ns;
	if (imap_namespace_personal(session, &ns) == 0 && ns.present) {
		snprintf(id->personal_prefix, sizeof(id->personal_prefix), "%s", ns.prefix);
		id->separator[0] = ns.sep;
	}
	if (ev.session.inbox_ok && set->expect_inbox_uidvalidity &&
	    set->expect_inbox_uidvalidity != ev.session.inbox_uidvalidity) {
		snprintf(err, errlen,
			 "identity check for %s failed: INBOX UIDVALIDITY is %u, expected %u from "
			 "earlier sessions; refusing to continue", set->user,
			 ev.session.inbox_uidvalidity, set->expect_inbox_uidvalidity);
		return -1;
	}
	enum ferry_identity_verdict v = ferry_identity_decide(&ev, reason, sizeof(reason));
	if (v == FERRY_IDENTITY_COMPARE && set->identity == IMAP_IDENTITY_NO_OWN_LOGIN) {
		snprintf(id->result, sizeof(id->result),
			 "not compared with the authenticating identity's own mailbox "
			 "(no login meant to fail)");
		return 0;
	}
	if (v == FERRY_IDENTITY_COMPARE) {
		/* the authenticating identity on its own */
		struct imap_client_settings own = *set;
		own.user = set->auth_user;
		own.auth_user = NULL;
		own.label = "identity-check";
		own.log = NULL; /* its expected login failure is not worth a warning */
		char err2[1024];
		struct imap_client *admin = imap_sync_connect(&own, NULL, err2, sizeof(err2));
		if (admin == NULL) {
			/* a NO to the login: the identity has no mailbox of its own */
			if (strstr(err2, ": NO") == NULL) {
				snprintf(err, errlen,
					 "identity check for %s failed: could not log in as %s alone to "
					 "compare (%s); refusing to continue",
					 set->user, set->auth_user, err2);
				return -1;
			}
			ev.master_login = FERRY_IDENTITY_MASTER_REFUSED;
		} else {
			struct evidence theirs = {.ev = &ev, .view = &ev.master_view};
			int r = take_evidence(admin, &theirs);
			imap_sync_close(admin);
			if (r < 0) {
				snprintf(err, errlen,
					 "identity check for %s failed: listing %s's own mailbox failed",
					 set->user, set->auth_user);
				return -1;
			}
			ev.master_login = FERRY_IDENTITY_MASTER_OK;
		}
		v = ferry_identity_decide(&ev, reason, sizeof(reason));
	}
	if (v != FERRY_IDENTITY_PASS) {
		if (!ev.session.inbox_ok && mine.status_err[0] != '\0')
			snprintf(err, errlen, "identity check for %s failed: %s (%s); refusing to continue",
				 set->user, reason, mine.status_err);
		else
			snprintf(err, errlen, "identity check for %s failed: %s; refusing to continue",
				 set->user, reason);
		return -1;
	}
	snprintf(id->result, sizeof(id->result), "%s", reason);
	return 0;
}
