/* ferryd's configuration file: "key = value" lines, '#' comments. */
#ifndef FERRY_CONFIG_H
#define FERRY_CONFIG_H

#include <sys/types.h>

struct ferry_config {
	char *listen_host;        /* admin API address (default 127.0.0.1) */
	int listen_port;          /* default 8025 */
	char *api_token_file;     /* admin token (required) */
	char *viewer_token_file;  /* read-only token (dashboard); optional */
	char *state_db;           /* SQLite file (required with store = sqlite;
				     with pgsql its directory holds local files) */
	char *store;              /* sqlite (default) | pgsql */
	char *pgsql_conninfo;     /* libpq conninfo without a password */
	char *pgsql_password_file; /* the role's password ("" = none/.pgpass) */
	int pgsql_connect_timeout; /* seconds for a (re)connection */
	int pgsql_statement_timeout_ms; /* server-side cap of one statement */
	int pgsql_lock_timeout_ms; /* cap of one wait for a row/table lock */
	int pgsql_lease;          /* s a claim holds without renewal (several ferryd) */
	char *node_name;          /* this ferryd among those sharing a PostgreSQL
				     (NULL: HOSTNAME:LISTEN_PORT) */
	char *doveadm_host;       /* NEW's doveadm HTTP API */
	int doveadm_port;
	char *doveadm_api_key_file; /* doveadm_api_key (required) */
	char *log_file;           /* event log; empty: stderr */
	char *secret_key_file;    /* encrypts CSV passwords at rest (optional) */
	int max_concurrent;       /* pulls in flight, all old hosts */
	int max_per_host;         /* pulls in flight per old host */
	int retry_limit;          /* failed attempts before a user is failed */
	int retry_base;           /* seconds before the first retry */
	int retry_max_delay;      /* cap of the exponential backoff, seconds */
	int pull_timeout;         /* seconds for one doveadm request */
	int drain_timeout;        /* seconds SIGTERM waits for pulls in flight */
	int max_body;             /* admin API request body limit, bytes */
	int tick_ms;              /* scheduler period */
	/* preflight and verification (service/checks.c) */
	char *new_imap_host;      /* NEW's IMAP address (default 127.0.0.1:143) */
	int new_imap_port;
	char *new_tls;            /* none | imaps | starttls (default none) */
	char *imap_ca_file;       /* CA file for TLS to either server ("" = system) */
	char *old_master_user;    /* master login on the old servers ("" = none) */
	char *old_master_password_file;
	char *new_master_user;    /* master login on NEW ("" = none) */
	char *new_master_password_file;
	double verify_sample;     /* fraction of bodies hashed (1 = all) */
	int verify_after_pull;    /* verify a user when the pulls complete */
	int check_timeout;        /* seconds one preflight/verify may take */
	/* Sieve scripts (service/sieve_step.c): ManageSieve on both servers */
	char *new_sieve_host;     /* NEW's ManageSieve (default 127.0.0.1:4190) */
	int new_sieve_port;
	int old_sieve_port;       /* on each old endpoint's host (default 4190) */
	int sieve_after_pull;     /* move a user's scripts when its pulls complete */
	/* DNS readiness and blacklists (service/dns.c); lists are
	   space-separated */
	char *dns_resolver;       /* "IP[:PORT]" ("" = first nameserver of resolv.conf) */
	char *resolv_conf;        /* what evdns reads for host names (NULL = /etc/resolv.conf) */
	char *dns_domains;        /* mail domains: MX, SPF, DMARC, DKIM */
	char *dns_hosts;          /* client-facing names (IMAP, POP3, submission) */
	char *dns_old_ips;        /* the old server's addresses */
	char *dns_new_ips;        /* NEW's public addresses (also checked on DNSBLs) */
	char *dnsbl_zones;        /* e.g. "zen.spamhaus.org bl.example" */
	char *dkim_selectors;     /* SELECTOR._domainkey.DOMAIN TXT is reported */
	int dns_max_ttl;          /* cut-over precheck: TTLs at most this (0 = no check) */
	int dns_timeout_ms;       /* per attempt; 2 attempts */
	int dns_interval;         /* seconds between automatic checks (0 = on demand) */
	/* privileges (service/runas.c) */
	char *user;               /* started as root: serve as this user ("" = none) */
	int allow_root;           /* started as root without user: run anyway */
};

void config_defaults(struct ferry_config *cfg);
/* Parses text (name is used in messages). 0, or -1 with *err_r (malloc'd). */
int config_parse(const char *text, const char *name, struct ferry_config *cfg,
		 char **err_r);
/* Reads and parses a file; validates required keys. */
int config_load(const char *path, struct ferry_config *cfg, char **err_r);
void config_free(struct ferry_config *cfg);
/* Reads the first line of a secret file (token, key) into a malloc'd
   string without the newline. */
char *config_read_secret(const char *path, char **err_r);
/* The same for ferryd's own secret files: refused (naming the file, its
   mode and owner) unless the owner is ferryd's user or root, others have
   no access and the group none, or read only when it is ferryd's group
   (not root's). */
char *config_read_private(const char *path, char **err_r);
/* ferryd's user and group for config_read_private (default: the
   effective ids); set before a privilege drop, while files are still read
   as root. */
void config_secret_owner(uid_t uid, gid_t gid);
/* *err_r = the formatted message (malloc'd); returns -1 */
int config_fail(char **err_r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
