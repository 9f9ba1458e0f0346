/* Cut-over prechecks: pure decisions, no I/O (tests/unit/test_cutover.c). */
#include "cutover.h"

#include <stdio.h>

void cutover_format_age(int64_t secs, char *buf, size_t len)
{
	if (secs < 0)
		secs = 0;
	if (secs < 120)
		snprintf(buf, len, "%llds", (long long)secs);
	else if (secs < 7200)
		snprintf(buf, len, "%lldm", (long long)(secs / 60));
	else if (secs < 172800)
		snprintf(buf, len, "%lldh", (long long)(secs / 3600));
	else
		snprintf(buf, len, "%lldd", (long long)(secs / 86400));
}

const char *cutover_precheck_user(const struct user_rec *u, int64_t last_pass,
				  int64_t max_age, time_t now, char *buf, size_t len)
{
	char age[32], lim[32];

	if (u->state == US_FAILED) {
		snprintf(buf, len, "failed: %.300s", u->last_error);
		return buf;
	}
	if (u->state == US_PENDING) {
		snprintf(buf, len, "not started (no copy pass yet; ferryctl start --wave %s)",
			 u->wave);
		return buf;
	}
	if (last_pass < 0) {
		snprintf(buf, len, "no successful copy pass yet (state %s)",
			 user_state_name(u->state));
		return buf;
	}
	if (max_age > 0 && (int64_t)now - last_pass > max_age) {
		cutover_format_age((int64_t)now - last_pass, age, sizeof(age));
		cutover_format_age(max_age, lim, sizeof(lim));
		snprintf(buf, len, "last successful copy pass %s ago (limit %s; "
			 "ferryctl sync %s, or --max-age)", age, lim, u->name);
		return buf;
	}
	return NULL;
}
