/* The NEW backend of a user (backend.h). */
#include "backend.h"

#include <stdio.h>
#include <string.h>

int backend_host(const char *configured, const char *new_host, const char *setting,
		 char *out, size_t outlen, char *err, size_t errlen)
{
	const char *var = strstr(configured, BACKEND_HOST_VAR);
	int n;

	if (new_host == NULL)
		new_host = "";
	if (var == NULL) {
		/* one NEW: a user the routing puts on another host would be
		   pulled where its mailbox is not */
		if (*new_host != '\0' && strcmp(new_host, configured) != 0) {
			snprintf(err, errlen, "the user's NEW backend is %s but %s names the one"
				 " host %s: set %s = %s:PORT", new_host, setting, configured,
				 setting, BACKEND_HOST_VAR);
			return -1;
		}
		n = snprintf(out, outlen, "%s", configured);
	} else {
		if (*new_host == '\0') {
			snprintf(err, errlen, "the user has no NEW backend in the routing (new_host)"
				 " and %s is %s", setting, configured);
			return -1;
		}
		n = snprintf(out, outlen, "%.*s%s%s", (int)(var - configured), configured,
			     new_host, var + strlen(BACKEND_HOST_VAR));
	}
	if (n < 0 || (size_t)n >= outlen) {
		snprintf(err, errlen, "%s: the backend's address is too long", setting);
		return -1;
	}
	return 0;
}
