/* DNS readiness and DNSBL checks. See dns.h. */
#include "dns.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/rand.h>

#include "evlog.h"

#define ATTEMPTS 2
#define MAX_STRAY 20 /* answers with another id before a query gives up */

enum kind { K_MX, K_ADDR, K_SPF, K_DMARC, K_DKIM, K_BL, K_BL_TXT };

struct list {
	char **v;
	size_t n;
};

struct dns {
	struct event_base *base;
	struct store *st;
	const struct ferry_config *cfg;
	struct sockaddr_storage server;
	socklen_t server_len;
	char server_text[80];
	struct __res_state rs;
	struct list domains, hosts, old_ips, new_ips, zones, selectors;
	struct run *run;      /* in progress */
	json_t *last;         /* last finished report */
	char *last_text;
	time_t last_start;
};

struct query;
struct run {
	struct dns *d;
	struct query *queries; /* in flight */
	int pending;
	time_t started;
	json_t *records, *errors, *dnsbl, *domains;
};

struct query {
	struct run *run;
	enum kind kind;
	char name[NS_MAXDNAME];
	int type;
	char subject[NS_MAXDNAME]; /* domain, host, or the listed IP */
	char extra[NS_MAXDNAME];   /* DKIM selector, DNSBL zone */
	int fd, tries, stray;
	struct event *ev;
	struct query *next;
	unsigned char pkt[NS_PACKETSZ];
	int pktlen;
};

static struct dns *current; /* for the cut-over precheck */

/* ---- settings --------------------------------------------------------------- */

static void list_free(struct list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static void split(const char *s, struct list *l)
{
	char *copy = strdup(s ? s : ""), *save = NULL;
	for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
		l->v = realloc(l->v, (l->n + 1) * sizeof(char *));
		l->v[l->n++] = strdup(w);
	}
	free(copy);
}

/* canonical text of an address, or -1 */
static int canon_ip(const char *s, char *out, size_t len)
{
	unsigned char b[16];
	if (inet_pton(AF_INET, s, b) == 1)
		return inet_ntop(AF_INET, b, out, (socklen_t)len) ? 0 : -1;
	if (inet_pton(AF_INET6, s, b) == 1)
		return inet_ntop(AF_INET6, b, out, (socklen_t)len) ? 0 : -1;
	return -1;
}

static int check_ips(struct list *l, const char *key, char **err_r)
{
	char c[INET6_ADDRSTRLEN];
	for (size_t i = 0; i < l->n; i++) {
		if (canon_ip(l->v[i], c, sizeof(c)) < 0)
			return config_fail(err_r, "%s: \"%s\" is not an IP address", key, l->v[i]);
		free(l->v[i]);
		l->v[i] = strdup(c);
	}
	return 0;
}

/* "IP", "IP:PORT", "[IPv6]:PORT" */
static int parse_server(struct dns *d, const char *s, char **err_r)
{
	char host[64] = "";
	int port = 53;
	const char *colon = strrchr(s, ':');
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL || (size_t)(end - s - 1) >= sizeof(host))
			return config_fail(err_r, "dns_resolver: bad address \"%s\"", s);
		memcpy(host, s + 1, (size_t)(end - s - 1));
		if (end[1] == ':')
			port = atoi(end + 2);
	} else if (colon != NULL && strchr(s, ':') == colon) {
		snprintf(host, sizeof(host), "%.*s", (int)(colon - s), s);
		port = atoi(colon + 1);
	} else {
		snprintf(host, sizeof(host), "%s", s);
	}
	struct sockaddr_in *v4 = (struct sockaddr_in *)&d->server;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&d->server;
	memset(&d->server, 0, sizeof(d->server));
	if (port < 1 || port > 65535)
		return config_fail(err_r, "dns_resolver: bad port in \"%s\"", s);
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		d->server_len = sizeof(*v4);
	} else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		d->server_len = sizeof(*v6);
	} else {
		return config_fail(err_r, "dns_resolver: \"%s\" is not IP[:PORT] (a resolver is "
				   "named by its address)", s);
	}
	snprintf(d->server_text, sizeof(d->server_text), "%s%s%s:%d", d->server_len == sizeof(*v6) ? "[" : "",
		 host, d->server_len == sizeof(*v6) ? "]" : "", port);
	return 0;
}

struct dns *dns_new(struct event_base *base, struct store *st, const struct ferry_config *cfg,
		    char **err_r)
{
	struct dns *d = calloc(1, sizeof(*d));
	d->base = base;
	d->st = st;
	d->cfg = cfg;
	if (res_ninit(&d->rs) < 0) {
		free(d);
		config_fail(err_r, "dns: cannot initialise the resolver library");
		return NULL;
	}
	d->rs.options |= RES_RECURSE;
	split(cfg->dns_domains, &d->domains);
	split(cfg->dns_hosts, &d->hosts);
	split(cfg->dns_old_ips, &d->old_ips);
	split(cfg->dns_new_ips, &d->new_ips);
	split(cfg->dnsbl_zones, &d->zones);
	split(cfg->dkim_selectors, &d->selectors);
	int bad = check_ips(&d->old_ips, "dns_old_ips", err_r) < 0 ||
		  check_ips(&d->new_ips, "dns_new_ips", err_r) < 0;
	if (!bad && cfg->dns_resolver != NULL && cfg->dns_resolver[0] != '\0') {
		bad = parse_server(d, cfg->dns_resolver, err_r) < 0;
	} else if (!bad) {
		/* resolv.conf's first nameserver (read by res_ninit) */
		char ip[INET6_ADDRSTRLEN] = "127.0.0.1", text[80];
		if (d->rs.nscount > 0)
			inet_ntop(AF_INET, &d->rs.nsaddr_list[0].sin_addr, ip, sizeof(ip));
		snprintf(text, sizeof(text), "%s:53", ip);
		bad = parse_server(d, text, err_r) < 0;
	}
	if (bad) {
		dns_free(d);
		return NULL;
	}
	current = d;
	return d;
}

int dns_configured(const struct dns *d)
{
	return d != NULL && (d->domains.n > 0 || d->hosts.n > 0 ||
			     (d->zones.n > 0 && d->new_ips.n > 0));
}

static void run_free(struct run *r);

void dns_free(struct dns *d)
{
	if (d == NULL)
		return;
	if (current == d)
		current = NULL;
	if (d->run != NULL)
		run_free(d->run); /* and its queries in flight */
	list_free(&d->domains);
	list_free(&d->hosts);
	list_free(&d->old_ips);
	list_free(&d->new_ips);
	list_free(&d->zones);
	list_free(&d->selectors);
	json_decref(d->last);
	free(d->last_text);
	res_nclose(&d->rs);
	free(d);
}

/* ---- names ------------------------------------------------------------------- */

int dns_blocklist_name(const char *ip, const char *zone, char *out, size_t len)
{
	unsigned char b[16];
	if (inet_pton(AF_INET, ip, b) == 1) {
		snprintf(out, len, "%u.%u.%u.%u.%s", b[3], b[2], b[1], b[0], zone);
		return 0;
	}
	if (inet_pton(AF_INET6, ip, b) != 1)
		return -1;
	size_t pos = 0;
	for (int i = 15; i >= 0 && pos + 4 < len; i--)
		pos += (size_t)snprintf(out + pos, len - pos, "%x.%x.", b[i] & 0xf, b[i] >> 4);
	snprintf(out + pos, len - pos, "%s", zone);
	return 0;
}

static const char *classify(struct dns *d, const char *ip)
{
	for (size_t i = 0; i < d->new_ips.n; i++)
		if (strcmp(d->new_ips.v[i], ip) == 0)
			return "new";
	for (size_t i = 0; i < d->old_ips.n; i++)
		if (strcmp(d->old_ips.v[i], ip) == 0)
			return "old";
	return "other";
}

static const char *type_name(int type)
{
	switch (type) {
	case ns_t_a:
		return "A";
	case ns_t_aaaa:
		return "AAAA";
	case ns_t_mx:
		return "MX";
	case ns_t_txt:
		return "TXT";
	default:
		return "?";
	}
}

/* ---- queries ------------------------------------------------------------------ */

static void finish_run(struct run *r);
static void on_query(evutil_socket_t fd, short what, void *arg);

static void query_free(struct query *q)
{
	for (struct query **p = &q->run->queries; *p != NULL; p = &(*p)->next)
		if (*p == q) {
			*p = q->next;
			break;
		}
	if (q->ev != NULL)
		event_free(q->ev);
	if (q->fd >= 0)
		close(q->fd);
	free(q);
}

static void query_end(struct query *q)
{
	struct run *r = q->run;
	query_free(q);
	if (--r->pending == 0)
		finish_run(r);
}

static void add_error(struct run *r, const char *fmt, const char *name, const char *type,
		      const char *detail)
{
	char *msg = NULL;
	if (asprintf(&msg, fmt, name, type, detail) >= 0)
		json_array_append_new(r->errors, json_string(msg));
	free(msg);
}

static int send_query(struct query *q)
{
	struct timeval tv = {q->run->d->cfg->dns_timeout_ms / 1000,
			     (q->run->d->cfg->dns_timeout_ms % 1000) * 1000};
	q->tries++;
	if (send(q->fd, q->pkt, (size_t)q->pktlen, 0) < 0)
		return -1;
	return event_add(q->ev, &tv);
}

static void query(struct run *r, enum kind kind, const char *name, int type, const char *subject,
		  const char *extra)
{
	struct dns *d = r->d;
	struct query *q = calloc(1, sizeof(*q));
	q->run = r;
	q->next = r->queries;
	r->queries = q;
	q->kind = kind;
	q->type = type;
	q->fd = -1;
	snprintf(q->name, sizeof(q->name), "%s", name);
	snprintf(q->subject, sizeof(q->subject), "%s", subject);
	snprintf(q->extra, sizeof(q->extra), "%s", extra ? extra : "");
	r->pending++;
	q->pktlen = res_nmkquery(&d->rs, ns_o_query, name, ns_c_in, type, NULL, 0, NULL, q->pkt,
				 sizeof(q->pkt));
	if (q->pktlen < 12) {
		add_error(r, "%s %s: cannot build the query (%s)", name, type_name(type), "bad name");
		query_end(q);
		return;
	}
	unsigned char id[2];
	if (RAND_bytes(id, 2) == 1)
		memcpy(q->pkt, id, 2); /* a fresh random id per query (res_nmkquery counts) */
	q->fd = socket(d->server.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* connected: answers from any other address are not even read */
	if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&d->server, d->server_len) < 0 ||
	    (q->ev = event_new(d->base, q->fd, EV_READ, on_query, q)) == NULL ||
	    send_query(q) < 0) {
		add_error(r, "%s %s: cannot send to the resolver: %s", name, type_name(type),
			  strerror(errno));
		query_end(q);
	}
}

static void record(struct run *r, const char *name, int type, unsigned ttl, const char *value,
		   const char *points)
{
	json_t *o = json_pack("{s:s, s:s, s:I, s:s}", "name", name, "type", type_name(type), "ttl",
			      (json_int_t)ttl, "value", value);
	if (points != NULL)
		json_object_set_new(o, "points", json_string(points));
	json_array_append_new(r->records, o);
}

static json_t *domain_obj(struct run *r, const char *domain)
{
	json_t *o = json_object_get(r->domains, domain);
	if (o == NULL) {
		o = json_pack("{s:[], s:[], s:[], s:{}}", "mx", "spf", "dmarc", "dkim");
		json_object_set_new(r->domains, domain, o);
	}
	return o;
}

static void txt_value(const ns_rr *rr, char *out, size_t len)
{
	const unsigned char *p = ns_rr_rdata(*rr), *end = p + ns_rr_rdlen(*rr);
	size_t pos = 0;
	while (p < end && pos + 1 < len) {
		unsigned n = *p++;
		for (unsigned i = 0; i < n && p < end && pos + 1 < len; i++, p++)
			out[pos++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '?';
	}
	out[pos] = '\0';
}

static void answer(struct query *q, const unsigned char *buf, int len)
{
	struct run *r = q->run;
	struct dns *d = r->d;
	ns_msg msg;
	if (ns_initparse(buf, len, &msg) < 0) {
		add_error(r, "%s %s: %s", q->name, type_name(q->type), "malformed answer");
		return;
	}
	int rcode = ns_msg_getflag(msg, ns_f_rcode);
	if (ns_msg_getflag(msg, ns_f_tc))
		add_error(r, "%s %s: %s", q->name, type_name(q->type),
			  "answer truncated (larger than a UDP answer; not retried over TCP)");
	if (rcode != ns_r_noerror && rcode != ns_r_nxdomain) {
		add_error(r, "%s %s: the resolver answered %s", q->name, type_name(q->type),
			  rcode == ns_r_servfail ? "SERVFAIL" : rcode == ns_r_refused ? "REFUSED"
											: "an error");
		return;
	}
	int found = 0;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
		ns_rr rr;
		char value[1100];
		if (ns_parserr(&msg, ns_s_an, i, &rr) < 0 || (int)ns_rr_type(rr) != q->type)
			continue;
		unsigned ttl = ns_rr_ttl(rr);
		found++;
		switch (q->type) {
		case ns_t_a:
			inet_ntop(AF_INET, ns_rr_rdata(rr), value, sizeof(value));
			break;
		case ns_t_aaaa:
			inet_ntop(AF_INET6, ns_rr_rdata(rr), value, sizeof(value));
			break;
		case ns_t_mx: {
			char host[NS_MAXDNAME];
			if (ns_rr_rdlen(rr) < 3 ||
			    ns_name_uncompress(ns_msg_base(msg), ns_msg_end(msg), ns_rr_rdata(rr) + 2,
					       host, sizeof(host)) < 0)
				continue;
			snprintf(value, sizeof(value), "%u %s", ns_get16(ns_rr_rdata(rr)), host);
			record(r, q->name, q->type, ttl, value, NULL);
			json_array_append_new(json_object_get(domain_obj(r, q->subject), "mx"),
					      json_string(host));
			query(r, K_ADDR, host, ns_t_a, host, "mx");
			query(r, K_ADDR, host, ns_t_aaaa, host, "mx");
			continue;
		}
		default:
			txt_value(&rr, value, sizeof(value));
			break;
		}
		switch (q->kind) {
		case K_ADDR:
			record(r, q->name, q->type, ttl, value, classify(d, value));
			break;
		case K_SPF:
		case K_DMARC:
			if (strncasecmp(value, q->kind == K_SPF ? "v=spf1" : "v=DMARC1",
					q->kind == K_SPF ? 6 : 8) != 0)
				break;
			record(r, q->name, q->type, ttl, value, NULL);
			json_array_append_new(json_object_get(domain_obj(r, q->subject),
							      q->kind == K_SPF ? "spf" : "dmarc"),
					      json_string(value));
			break;
		case K_DKIM:
			record(r, q->name, q->type, ttl, value, NULL);
			json_object_set_new(json_object_get(domain_obj(r, q->subject), "dkim"), q->extra,
					    json_string(value));
			break;
		case K_BL:
			json_array_append_new(r->dnsbl, json_pack("{s:s, s:s, s:b, s:s}", "ip",
								  q->subject, "zone", q->extra,
								  "listed", 1, "answer", value));
			query(r, K_BL_TXT, q->name, ns_t_txt, q->subject, q->extra);
			return; /* one answer is enough */
		case K_BL_TXT: {
			size_t k;
			json_t *e;
			json_array_foreach(r->dnsbl, k, e)
				if (strcmp(json_string_value(json_object_get(e, "ip")), q->subject) == 0 &&
				    strcmp(json_string_value(json_object_get(e, "zone")), q->extra) == 0)
					json_object_set_new(e, "reason", json_string(value));
			return;
		}
		default:
			break;
		}
	}
	if (q->kind == K_BL && found == 0)
		json_array_append_new(r->dnsbl, json_pack("{s:s, s:s, s:b}", "ip", q->subject, "zone",
							  q->extra, "listed", 0));
}

static void on_query(evutil_socket_t fd, short what, void *arg)
{
	struct query *q = arg;
	if (what & EV_TIMEOUT) {
		if (q->tries < ATTEMPTS && send_query(q) == 0)
			return;
		char detail[200];
		snprintf(detail, sizeof(detail), "no answer from the resolver %s within %d attempts of %d ms",
			 q->run->d->server_text, q->tries, q->run->d->cfg->dns_timeout_ms);
		add_error(q->run, "%s %s: %s", q->name, type_name(q->type), detail);
		query_end(q);
		return;
	}
	unsigned char buf[NS_MAXMSG < 65536 ? NS_MAXMSG : 65536];
	ssize_t n = recv(fd, buf, sizeof(buf), 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		goto again;
	if (n < 0) {
		/* ICMP port unreachable: nothing listens there */
		add_error(q->run, "%s %s: the resolver cannot be reached: %s", q->name,
			  type_name(q->type), strerror(errno));
		query_end(q);
		return;
	}
	if (n < 12 || memcmp(buf, q->pkt, 2) != 0 || !(buf[2] & 0x80)) {
		if (++q->stray > MAX_STRAY) {
			add_error(q->run, "%s %s: %s", q->name, type_name(q->type),
				  "only answers to other queries arrived");
			query_end(q);
			return;
		}
		goto again;
	}
	answer(q, buf, (int)n);
	query_end(q);
	return;
again:;
	struct timeval tv = {q->run->d->cfg->dns_timeout_ms / 1000,
			     (q->run->d->cfg->dns_timeout_ms % 1000) * 1000};
	event_add(q->ev, &tv);
}

/* ---- runs ----------------------------------------------------------------------- */

static void run_free(struct run *r)
{
	while (r->queries != NULL)
		query_free(r->queries);
	json_decref(r->records);
	json_decref(r->errors);
	json_decref(r->dnsbl);
	json_decref(r->domains);
	free(r);
}

void dns_start(struct dns *d)
{
	if (d->run != NULL || !dns_configured(d))
		return;
	struct run *r = calloc(1, sizeof(*r));
	r->d = d;
	r->started = time(NULL);
	r->records = json_array();
	r->errors = json_array();
	r->dnsbl = json_array();
	r->domains = json_object();
	d->run = r;
	d->last_start = r->started;
	evlog("info", "dns-check-started", "resolver", d->server_text, NULL);
	r->pending++; /* the queries below may end at once */
	char name[NS_MAXDNAME];
	for (size_t i = 0; i < d->domains.n; i++) {
		const char *dom = d->domains.v[i];
		domain_obj(r, dom);
		query(r, K_MX, dom, ns_t_mx, dom, NULL);
		query(r, K_SPF, dom, ns_t_txt, dom, NULL);
		snprintf(name, sizeof(name), "_dmarc.%s", dom);
		query(r, K_DMARC, name, ns_t_txt, dom, NULL);
		for (size_t k = 0; k < d->selectors.n; k++) {
			snprintf(name, sizeof(name), "%s._domainkey.%s", d->selectors.v[k], dom);
			query(r, K_DKIM, name, ns_t_txt, dom, d->selectors.v[k]);
		}
	}
	for (size_t i = 0; i < d->hosts.n; i++) {
		query(r, K_ADDR, d->hosts.v[i], ns_t_a, d->hosts.v[i], "host");
		query(r, K_ADDR, d->hosts.v[i], ns_t_aaaa, d->hosts.v[i], "host");
	}
	for (size_t i = 0; i < d->new_ips.n; i++)
		for (size_t k = 0; k < d->zones.n; k++)
			if (dns_blocklist_name(d->new_ips.v[i], d->zones.v[k], name, sizeof(name)) == 0)
				query(r, K_BL, name, ns_t_a, d->new_ips.v[i], d->zones.v[k]);
	if (--r->pending == 0)
		finish_run(r);
}

void dns_tick(struct dns *d, time_t now)
{
	if (d != NULL && d->cfg->dns_interval > 0 && d->run == NULL &&
	    now - d->last_start >= d->cfg->dns_interval)
		dns_start(d);
}

/* where a name points: new, old, mixed, other or none, from its A/AAAA */
static const char *points_of(json_t *records, const char *name, unsigned *max_ttl)
{
	int n_new = 0, n_old = 0, n_other = 0;
	size_t i;
	json_t *rec;
	json_array_foreach(records, i, rec) {
		const char *p = json_string_value(json_object_get(rec, "points"));
		if (p == NULL || strcasecmp(json_string_value(json_object_get(rec, "name")), name) != 0)
			continue;
		unsigned ttl = (unsigned)json_integer_value(json_object_get(rec, "ttl"));
		if (ttl > *max_ttl)
			*max_ttl = ttl;
		n_new += strcmp(p, "new") == 0;
		n_old += strcmp(p, "old") == 0;
		n_other += strcmp(p, "other") == 0;
	}
	if (n_new + n_old + n_other == 0)
		return "none";
	if (n_new && !n_old && !n_other)
		return "new";
	if (n_old && !n_new && !n_other)
		return "old";
	if (!n_new && !n_old)
		return "other";
	return "mixed";
}

static void log_line(struct dns *d, const char *name, const char *event, const char *text)
{
	if (store_log_event(d->st, "", name, event, 0, 0, text) < 0)
		evlog("error", "store-error", "error", d->st->error(d->st), NULL);
}

static const char *previous_points(struct dns *d, const char *name)
{
	size_t i;
	json_t *n;
	json_array_foreach(json_object_get(d->last, "names"), i, n)
		if (strcmp(json_string_value(json_object_get(n, "name")), name) == 0)
			return json_string_value(json_object_get(n, "points"));
	return NULL;
}

static char *report_text(json_t *rep);

static void finish_run(struct run *r)
{
	struct dns *d = r->d;
	json_t *rep = json_pack("{s:I, s:I, s:s, s:i, s:O, s:O, s:O, s:O, s:[], s:[]}", "started",
				(json_int_t)r->started, "finished", (json_int_t)time(NULL), "resolver",
				d->server_text, "max_ttl", d->cfg->dns_max_ttl, "records", r->records,
				"errors", r->errors, "dnsbl", r->dnsbl, "domains", r->domains, "names",
				"ttl_too_high");
	json_t *names = json_object_get(rep, "names"), *high = json_object_get(rep, "ttl_too_high");
	/* names: the client-facing hosts and every MX host */
	struct list all = {0};
	for (size_t i = 0; i < d->hosts.n; i++)
		split(d->hosts.v[i], &all);
	const char *dom;
	json_t *dobj;
	json_object_foreach(r->domains, dom, dobj) {
		size_t k;
		json_t *mx;
		json_array_foreach(json_object_get(dobj, "mx"), k, mx)
			split(json_string_value(mx), &all);
	}
	for (size_t i = 0; i < all.n; i++) {
		int dup = 0;
		for (size_t k = 0; k < i; k++)
			dup |= strcasecmp(all.v[k], all.v[i]) == 0;
		if (dup)
			continue;
		unsigned ttl = 0;
		const char *p = points_of(r->records, all.v[i], &ttl);
		json_array_append_new(names, json_pack("{s:s, s:s, s:I}", "name", all.v[i], "points", p,
						       "ttl", (json_int_t)ttl));
	}
	list_free(&all);
	/* per domain: where its MX hosts point */
	json_object_foreach(r->domains, dom, dobj) {
		size_t k;
		json_t *mx;
		const char *agg = NULL;
		json_array_foreach(json_object_get(dobj, "mx"), k, mx) {
			unsigned ttl = 0;
			const char *p = points_of(r->records, json_string_value(mx), &ttl);
			agg = agg == NULL || strcmp(agg, p) == 0 ? p : "mixed";
		}
		json_object_set_new(dobj, "mx_points", json_string(agg ? agg : "none"));
	}
	/* TTLs of what a cut-over changes: MX, the MX hosts' and the client names' addresses */
	size_t i;
	json_t *rec;
	json_array_foreach(r->records, i, rec) {
		const char *type = json_string_value(json_object_get(rec, "type"));
		json_int_t ttl = json_integer_value(json_object_get(rec, "ttl"));
		if (d->cfg->dns_max_ttl > 0 && ttl > d->cfg->dns_max_ttl &&
		    (strcmp(type, "MX") == 0 || json_object_get(rec, "points") != NULL)) {
			char t[NS_MAXDNAME + 40];
			snprintf(t, sizeof(t), "%s %s %lld", json_string_value(json_object_get(rec, "name")),
				 type, (long long)ttl);
			int dup = 0;
			size_t k;
			json_t *h;
			json_array_foreach(high, k, h) dup |= strcmp(json_string_value(h), t) == 0;
			if (!dup)
				json_array_append_new(high, json_string(t));
		}
	}
	json_object_set_new(rep, "ttl_ok", json_boolean(json_array_size(high) == 0 &&
							 json_array_size(r->errors) == 0));

	/* the migration log: every record, what changed, blacklists, errors */
	json_array_foreach(r->records, i, rec) {
		char t[1300];
		const char *p = json_string_value(json_object_get(rec, "points"));
		snprintf(t, sizeof(t), "%s ttl=%lld %s%s%s", json_string_value(json_object_get(rec, "type")),
			 (long long)json_integer_value(json_object_get(rec, "ttl")),
			 json_string_value(json_object_get(rec, "value")), p ? " points=" : "", p ? p : "");
		log_line(d, json_string_value(json_object_get(rec, "name")), "dns-record", t);
	}
	json_t *n;
	json_array_foreach(names, i, n) {
		const char *name = json_string_value(json_object_get(n, "name"));
		const char *now = json_string_value(json_object_get(n, "points"));
		const char *before = previous_points(d, name);
		if (before != NULL && strcmp(before, now) != 0) {
			char t[100];
			snprintf(t, sizeof(t), "%s -> %s", before, now);
			log_line(d, name, "dns-changed", t);
			evlog("info", "dns-changed", "name", name, "from", before, "to", now, NULL);
		}
	}
	json_array_foreach(r->dnsbl, i, n) {
		char t[1400];
		const char *reason = json_string_value(json_object_get(n, "reason"));
		int listed = json_is_true(json_object_get(n, "listed"));
		snprintf(t, sizeof(t), "%s on %s: %s%s%s%s%s", json_string_value(json_object_get(n, "ip")),
			 json_string_value(json_object_get(n, "zone")), listed ? "LISTED " : "not listed",
			 listed ? json_string_value(json_object_get(n, "answer")) : "",
			 reason ? " \"" : "", reason ? reason : "", reason ? "\"" : "");
		log_line(d, json_string_value(json_object_get(n, "zone")),
			 listed ? "dnsbl-listed" : "dnsbl-clean", t);
		if (listed)
			evlog("warning", "dnsbl-listed", "ip", json_string_value(json_object_get(n, "ip")),
			      "zone", json_string_value(json_object_get(n, "zone")), "answer",
			      json_string_value(json_object_get(n, "answer")), NULL);
	}
	json_array_foreach(high, i, n)
		log_line(d, "", "dns-ttl-high", json_string_value(n));
	json_array_foreach(r->errors, i, n) {
		log_line(d, "", "dns-error", json_string_value(n));
		evlog("warning", "dns-error", "error", json_string_value(n), NULL);
	}
	evlog("info", "dns-check-done", "records", json_array_size(r->records) ? "yes" : "no",
	      "ttl_ok", json_is_true(json_object_get(rep, "ttl_ok")) ? "yes" : "no", NULL);

	json_decref(d->last);
	d->last = rep;
	free(d->last_text);
	d->last_text = report_text(rep);
	d->run = NULL;
	run_free(r);
}

/* ---- text, API, precheck -------------------------------------------------------------- */

static char *report_text(json_t *rep)
{
	char *buf = NULL, when[32];
	size_t len = 0, i;
	FILE *f = open_memstream(&buf, &len);
	time_t t = (time_t)json_integer_value(json_object_get(rep, "finished"));
	json_t *v;
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&t));
	fprintf(f, "DNS check at %s via %s (TTL limit %lld s)\n", when,
		json_string_value(json_object_get(rep, "resolver")),
		(long long)json_integer_value(json_object_get(rep, "max_ttl")));
	fprintf(f, "\n%-32s %-5s %7s  %-30s %s\n", "NAME", "TYPE", "TTL", "VALUE", "POINTS AT");
	json_array_foreach(json_object_get(rep, "records"), i, v) {
		const char *p = json_string_value(json_object_get(v, "points"));
		fprintf(f, "%-32s %-5s %7lld  %-30s %s\n", json_string_value(json_object_get(v, "name")),
			json_string_value(json_object_get(v, "type")),
			(long long)json_integer_value(json_object_get(v, "ttl")),
			json_string_value(json_object_get(v, "value")), p ? p : "");
	}
	fprintf(f, "\n");
	json_array_foreach(json_object_get(rep, "names"), i, v)
		fprintf(f, "%-32s points at %s\n", json_string_value(json_object_get(v, "name")),
			json_string_value(json_object_get(v, "points")));
	const char *dom;
	json_object_foreach(json_object_get(rep, "domains"), dom, v) {
		fprintf(f, "domain %s: MX points at %s", dom,
			json_string_value(json_object_get(v, "mx_points")));
		fprintf(f, "; SPF %s; DMARC %s; DKIM %s\n",
			json_array_size(json_object_get(v, "spf")) ? "present" : "none",
			json_array_size(json_object_get(v, "dmarc")) ? "present" : "none",
			json_object_size(json_object_get(v, "dkim")) ? "present" : "none");
	}
	json_array_foreach(json_object_get(rep, "dnsbl"), i, v) {
		const char *reason = json_string_value(json_object_get(v, "reason"));
		if (json_is_true(json_object_get(v, "listed")))
			fprintf(f, "DNSBL %s: %s LISTED (%s)%s%s%s\n",
				json_string_value(json_object_get(v, "zone")),
				json_string_value(json_object_get(v, "ip")),
				json_string_value(json_object_get(v, "answer")), reason ? " \"" : "",
				reason ? reason : "", reason ? "\"" : "");
		else
			fprintf(f, "DNSBL %s: %s not listed\n", json_string_value(json_object_get(v, "zone")),
				json_string_value(json_object_get(v, "ip")));
	}
	json_t *high = json_object_get(rep, "ttl_too_high");
	if (json_array_size(high) > 0) {
		fprintf(f, "TTL above the limit:");
		json_array_foreach(high, i, v) fprintf(f, " %s;", json_string_value(v));
		fprintf(f, "\n");
	} else {
		fprintf(f, "TTLs within the limit\n");
	}
	json_array_foreach(json_object_get(rep, "errors"), i, v)
		fprintf(f, "error: %s\n", json_string_value(v));
	fclose(f);
	return buf;
}

int dns_api(struct dns *d, const char *path, json_t *args, json_t **out)
{
	(void)args;
	if (!dns_configured(d)) {
		*out = json_pack("{s:s}", "error", "no DNS check is configured (dns_domains, dns_hosts, "
				 "dnsbl_zones with dns_new_ips in ferryd.conf)");
		return 409;
	}
	if (strcmp(path, "POST /v1/dns") == 0) {
		dns_start(d);
		*out = json_pack("{s:s, s:I}", "state", "running", "started", (json_int_t)d->last_start);
		return 202;
	}
	*out = json_pack("{s:s, s:I}", "state", d->run != NULL ? "running" : d->last ? "done" : "none",
			 "started", (json_int_t)d->last_start);
	if (d->last != NULL) {
		json_object_set(*out, "report", d->last);
		json_object_set_new(*out, "text", json_string(d->last_text ? d->last_text : ""));
	}
	return 200;
}

const char *dns_cutover_precheck(char *buf, size_t len)
{
	struct dns *d = current;
	if (!dns_configured(d) || d->cfg->dns_max_ttl == 0 || (d->domains.n == 0 && d->hosts.n == 0))
		return NULL;
	if (d->last == NULL) {
		snprintf(buf, len, "no DNS check yet (ferryctl dns)");
		return buf;
	}
	json_t *errors = json_object_get(d->last, "errors"), *high = json_object_get(d->last, "ttl_too_high");
	if (json_array_size(errors) > 0) {
		snprintf(buf, len, "the last DNS check failed: %s (ferryctl dns)",
			 json_string_value(json_array_get(errors, 0)));
		return buf;
	}
	if (json_array_size(high) == 0)
		return NULL;
	size_t pos = (size_t)snprintf(buf, len, "DNS TTLs above dns_max_ttl %d s: ", d->cfg->dns_max_ttl);
	size_t i;
	json_t *v;
	json_array_foreach(high, i, v) {
		if (pos >= len)
			break;
		pos += (size_t)snprintf(buf + pos, len - pos, "%s%s", i ? ", " : "", json_string_value(v));
	}
	if (pos < len)
		snprintf(buf + pos, len - pos, " (lower them, wait out the old TTL, ferryctl dns)");
	return buf;
}
