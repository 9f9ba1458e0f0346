/* Scheduling decisions. The daemon gathers candidates from the store and
   the pulls in flight; this file decides, so it is tested without I/O. */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sched_running_count(const struct sched_running *run, const char *host)
{
	for (int i = 0; i < run->nhosts; i++)
		if (strcmp(run->hosts[i].host, host) == 0)
			return run->hosts[i].n;
	return 0;
}

void sched_running_add(struct sched_running *run, const char *host)
{
	int i;

	run->total++;
	for (i = 0; i < run->nhosts; i++) {
		if (strcmp(run->hosts[i].host, host) == 0) {
			run->hosts[i].n++;
			return;
		}
	}
	if (run->nhosts == run->cap) {
		int cap = run->cap > 0 ? run->cap * 2 : 16;
		struct sched_host *h = realloc(run->hosts, (size_t)cap * sizeof(*h));
		if (h == NULL)
			abort();  /* a pull counted nowhere would never be released */
		run->hosts = h;
		run->cap = cap;
	}
	if ((run->hosts[i].host = strdup(host)) == NULL)
		abort();
	run->hosts[i].n = 1;
	run->nhosts++;
}

void sched_running_remove(struct sched_running *run, const char *host)
{
	for (int i = 0; i < run->nhosts; i++) {
		if (strcmp(run->hosts[i].host, host) != 0)
			continue;
		run->total--;
		if (--run->hosts[i].n == 0) {
			free(run->hosts[i].host);
			run->hosts[i] = run->hosts[--run->nhosts];
		}
		return;
	}
}

void sched_running_free(struct sched_running *run)
{
	for (int i = 0; i < run->nhosts; i++)
		free(run->hosts[i].host);
	free(run->hosts);
	memset(run, 0, sizeof(*run));
}

int sched_in_window(int win_start, int win_end, int now)
{
	if (win_start < 0 || win_end < 0 || win_start == win_end)
		return 1;
	if (win_start < win_end)
		return now >= win_start && now < win_end;
	return now >= win_start || now < win_end;  /* across midnight */
}

int sched_eligible(const struct sched_cand *c, int global_paused, time_t now,
		   int now_minutes, const char **why_r)
{
	const struct sched_user *u = c->user;
	int sync_now = u->sync_seq > 0;
	const char *why = NULL;

	if (u->state != US_PRESYNC && u->state != US_CUTOVER)
		why = "not started or finished";
	else if (u->running)
		why = "running";
	else if (global_paused)
		why = "paused (all)";
	else if (u->paused)
		why = "paused";
	else if (c->wave != NULL && c->wave->paused)
		why = "wave paused";
	else if (!sync_now && u->next_attempt > (int64_t)now)
		why = "waiting to retry";
	else if (!sync_now && c->wave != NULL && c->wave->start_after > (int64_t)now)
		why = "wave not started yet";
	else if (!sync_now && c->wave != NULL &&
		 !sched_in_window(c->wave->win_start, c->wave->win_end, now_minutes))
		why = "outside the maintenance window";
	if (why_r != NULL)
		*why_r = why;
	return why == NULL;
}

static int cmp64(int64_t a, int64_t b)
{
	return a < b ? -1 : a > b;
}

int sched_cmp(const struct sched_cand *a, const struct sched_cand *b)
{
	const struct sched_user *ua = a->user, *ub = b->user;
	int64_t wa, wb;
	int r;

	if ((ua->sync_seq > 0) != (ub->sync_seq > 0))
		return ua->sync_seq > 0 ? -1 : 1;
	/* a user waiting at a mail client first */
	if (ua->sync_seq > 0 && (ua->login_at > 0) != (ub->login_at > 0))
		return ua->login_at > 0 ? -1 : 1;
	if (ua->sync_seq > 0 && (r = cmp64(ua->sync_seq, ub->sync_seq)) != 0)
		return r;
	if ((ua->state == US_CUTOVER) != (ub->state == US_CUTOVER))
		return ua->state == US_CUTOVER ? -1 : 1;
	wa = a->wave != NULL ? a->wave->id : INT64_MAX;
	wb = b->wave != NULL ? b->wave->id : INT64_MAX;
	if ((r = cmp64(wa, wb)) != 0)
		return r;
	if ((r = cmp64(ua->next_attempt, ub->next_attempt)) != 0)
		return r;
	return cmp64(ua->id, ub->id);
}

static int qcmp(const void *a, const void *b)
{
	return sched_cmp(a, b);
}

size_t sched_pick(const struct sched_limits *lim, struct sched_cand *cands, size_t n,
		  struct sched_running *run, int global_paused, time_t now,
		  int now_minutes, size_t *out, size_t max)
{
	size_t picked = 0;

	qsort(cands, n, sizeof(*cands), qcmp);
	for (size_t i = 0; i < n && picked < max; i++) {
		const char *host = cands[i].user->host;
		if (run->total >= lim->max_concurrent)
			break;
		if (!sched_eligible(&cands[i], global_paused, now, now_minutes, NULL))
			continue;
		if (sched_running_count(run, host) >= lim->max_per_host)
			continue;
		sched_running_add(run, host);
		out[picked++] = i;
	}
	return picked;
}

int64_t sched_backoff(int failures, int base, int max_delay)
{
	int64_t d = base;

	if (failures < 1)
		return 0;
	for (int i = 1; i < failures && d < max_delay; i++)
		d *= 2;
	return d > max_delay ? max_delay : d;
}

int sched_parse_window(const char *s, int *start, int *end)
{
	int h1, m1, h2, m2, n = 0;

	if (sscanf(s, "%2d:%2d-%2d:%2d%n", &h1, &m1, &h2, &m2, &n) != 4 ||
	    s[n] != '\0' || h1 < 0 || h1 > 23 || h2 < 0 || h2 > 24 || m1 < 0 ||
	    m1 > 59 || m2 < 0 || m2 > 59 || (h2 == 24 && m2 != 0))
		return -1;
	*start = h1 * 60 + m1;
	*end = h2 * 60 + m2;
	return *start == *end ? -1 : 0;
}
