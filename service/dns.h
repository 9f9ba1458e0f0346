/* DNS readiness of a cut-over and the new server's reputation, checked by
   ferryd without blocking its event loop (docs/ferryd.md, "DNS"):
   - per mail domain (dns_domains): MX, the A/AAAA of every MX host, SPF
     (TXT v=spf1), DMARC (_dmarc TXT), DKIM (SELECTOR._domainkey TXT);
   - the client-facing names (dns_hosts: IMAP, POP3, submission): A/AAAA;
   - every address classified as the old server's (dns_old_ips), NEW's
     (dns_new_ips) or other, so each name is reported as pointing at old,
     new, mixed or other; TTLs against dns_max_ttl for the cut-over
     precheck;
   - each of dns_new_ips looked up in every dnsbl_zones zone (reversed
     octets or nibbles): listed or not, the list's answer and its TXT.
   Queries are UDP to one resolver (dns_resolver), built and read with
   libresolv (res_nmkquery, ns_initparse), sent and awaited with libevent
   events; each has dns_timeout_ms per attempt and 2 attempts, so a
   resolver that does not answer ends a run with a timeout error, never a
   hang. (libevent's evdns resolves only A, AAAA and PTR: MX and TXT need
   their own queries, and one path for all of them keeps one timeout rule.)
   Each run's results go to the migration log with their time; a name
   whose target changes (old -> new: the MX switch) is logged as
   dns-changed. */
#ifndef FERRY_DNS_H
#define FERRY_DNS_H

#include <jansson.h>
#include <stddef.h>
#include <time.h>

#include "config.h"
#include "store.h"

struct event_base;
struct dns;

/* NULL with *err_r when the DNS settings are invalid (a bad address). */
struct dns *dns_new(struct event_base *base, struct store *st, const struct ferry_config *cfg,
		    char **err_r);
void dns_free(struct dns *d);
/* a check is configured (domains or hosts, or DNSBL zones and new IPs) */
int dns_configured(const struct dns *d);
/* Starts a run unless one is running. */
void dns_start(struct dns *d);
/* Every dns_interval seconds a run by itself. */
void dns_tick(struct dns *d, time_t now);
/* "POST /v1/dns" (start; 202), "GET /v1/dns" (state and the last report
   with its text). HTTP code, *out the answer. */
int dns_api(struct dns *d, const char *path, json_t *args, json_t **out);
/* The cut-over precheck on the last run (no I/O): NULL when the TTLs are
   within dns_max_ttl (or nothing is configured), else why not, in buf. */
const char *dns_cutover_precheck(char *buf, size_t len);

/* "4.3.2.1.zone" for 1.2.3.4 (nibbles for IPv6); -1 if ip is no address */
int dns_blocklist_name(const char *ip, const char *zone, char *out, size_t len);

#endif
