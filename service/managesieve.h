/* ManageSieve (RFC 5804) commands on ferryd's IMAP client in its
 * managesieve mode (imap_client_settings.managesieve): the same
 * connection, TLS (STARTTLS), deadlines and SASL PLAIN with an
 * authorization identity, so Dovecot Pigeonhole and Cyrus timsieved are
 * read and written with the master/admin login the IMAP side uses.
 *
 * Blocking, like imap_sync_*: run from a child or worker, never from
 * ferryd's main loop. Each returns 0, or -1 with the server's answer in
 * imap_client_error() (e.g. PUTSCRIPT's compile errors). */
#ifndef FERRY_MANAGESIEVE_H
#define FERRY_MANAGESIEVE_H

#include <stddef.h>

#include "imap-client.h"

struct sieve_script_info {
	char *name;
	int active;
};
struct sieve_script_list {
	struct sieve_script_info *v;
	size_t n;
};

/* imap_sync_connect() in managesieve mode (port default 4190, scripts up
 * to 1 MiB kept inline). The server's own identity check does not exist in
 * ManageSieve: an impersonated login is trusted as the server answers it. */
struct imap_client *ms_connect(const struct imap_client_settings *set, char *err, size_t errlen);
int ms_listscripts(struct imap_client *c, struct sieve_script_list *out);
void ms_script_list_free(struct sieve_script_list *l);
/* *text is malloc()ed, NUL-terminated (a script with NUL is refused) */
int ms_getscript(struct imap_client *c, const char *name, char **text);
int ms_putscript(struct imap_client *c, const char *name, const char *text);
int ms_setactive(struct imap_client *c, const char *name); /* "" deactivates */

#endif
