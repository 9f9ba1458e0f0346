/* Which NEW backend a user's doveadm calls, verification and Sieve run go
   to: the routing's users.new_host (what the proxy's ferry_proxy view
   answers as host= after the cut-over) put into the configured address.
   docs/ferryd.md, "Several NEW backends". */
#ifndef FERRY_BACKEND_H
#define FERRY_BACKEND_H

#include <stddef.h>

/* the placeholder of the user's backend in doveadm, new_imap, new_sieve */
#define BACKEND_HOST_VAR "%{host}"

/* The host to connect to for a user whose backend is new_host ("" = none
   in the routing), from a configured host that is either one NEW's name or
   address (shipped default), or a pattern containing %{host}
   ("%{host}", "doveadm.%{host}"). setting names the setting in errors.
   0 with out filled, or -1 with err filled:
   - a pattern and no backend for the user;
   - one fixed host and a user that lives on another backend (the pull
     would run where the mailbox is not). */
int backend_host(const char *configured, const char *new_host, const char *setting,
		 char *out, size_t outlen, char *err, size_t errlen);

#endif
