/* Prometheus text format (exposition format 0.0.4) for ferryd; see
   metrics.h. Durations run from an event that starts something to the
   event that ends it for the same user (pull-start -> pulls-complete,
   user-done, pull-failed, user-failed, pull-abandoned; check-start
   kind=verify -> verify), on the monotonic clock. */
#include "metrics.h"

#include <dirent.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "evlog.h"
#include "tally.h"

static const double duration_buckets[] = {
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600
};
#define NBUCKETS (sizeof(duration_buckets) / sizeof(duration_buckets[0]))

struct histogram {
	unsigned long long counts[NBUCKETS]; /* per bucket, not cumulative */
	unsigned long long count;
	double sum;
};

static const char *const reasons[] = {
	"auth", "connect", "timeout", "unknown-user", "verify", "incomplete",
	"doveadm", "other"
};
#define NREASONS (sizeof(reasons) / sizeof(reasons[0]))

enum pull_result { PR_OK, PR_RETRY, PR_FAILED, PR_ABANDONED, PR_COUNT };
static const char *const pull_results[] = { "ok", "retry", "failed", "abandoned" };

enum check_result { CR_PASS, CR_FAIL, CR_ERROR, CR_COUNT };
static const char *const check_results[] = { "pass", "fail", "error" };

/* a pull or verification in flight: at most max_concurrent of them */
struct running {
	char user[256], host[256];
	double started;
	int verify;
};

static struct {
	struct store *st;
	struct tally *tally;
	const struct sched_running *run;
	const int *draining;
	time_t start_time;

	unsigned long long pulls_started, folders_pulled, messages_copied, bytes_copied;
	unsigned long long pulls[PR_COUNT];
	unsigned long long pull_failures[NREASONS];  /* every failed attempt */
	unsigned long long users_failed[NREASONS];
	unsigned long long pulls_interrupted;         /* found running at start */
	unsigned long long verifications[CR_COUNT], preflights[CR_COUNT];
	unsigned long long verify_diffs;
	unsigned long long rollbacks_ok, rollbacks_failed;
	unsigned long long cutovers_done, cutovers_failed;
	unsigned long long wave_rollbacks_done, wave_rollbacks_failed;
	unsigned long long api_denied;
	struct histogram pull_seconds, verify_seconds;

	struct running *inflight;
	size_t ninflight, cap;
} m;

const char *metrics_reason_class(const char *e)
{
	if (e == NULL || *e == '\0')
		return "other";
	if (strcasestr(e, "verification failed") != NULL)
		return "verify";
	if (strcasestr(e, "authentication") != NULL || strstr(e, "AUTHENTICATIONFAILED") != NULL ||
	    strcasestr(e, "login failed") != NULL || strcasestr(e, "refused the API key") != NULL ||
	    strcasestr(e, "identity check") != NULL)
		return "auth";
	if (strcasestr(e, "timed out") != NULL || strcasestr(e, "timeout") != NULL)
		return "timeout";
	if (strcasestr(e, "unknown user") != NULL || strcasestr(e, "user doesn't exist") != NULL ||
	    strstr(e, "exit code 67") != NULL)
		return "unknown-user";
	if (strcasestr(e, "connect") != NULL || strcasestr(e, "disconnected") != NULL ||
	    strstr(e, "UNAVAILABLE") != NULL || strcasestr(e, "could not send") != NULL)
		return "connect";
	if (strcasestr(e, "not complete") != NULL || strcasestr(e, "no folders") != NULL)
		return "incomplete";
	if (strcasestr(e, "doveadm") != NULL)
		return "doveadm";
	return "other";
}

static size_t reason_index(const char *error)
{
	const char *c = metrics_reason_class(error);

	for (size_t i = 0; i < NREASONS; i++)
		if (strcmp(reasons[i], c) == 0)
			return i;
	return NREASONS - 1;
}

static double now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void observe(struct histogram *h, double v)
{
	for (size_t i = 0; i < NBUCKETS; i++)
		if (v <= duration_buckets[i]) {
			h->counts[i]++;
			break;
		}
	h->count++;
	h->sum += v;
}

static const char *get(const char *const *kv, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(kv[2 * i], key) == 0)
			return kv[2 * i + 1];
	return NULL;
}

static struct running *inflight_find(const char *user, int verify)
{
	for (size_t i = 0; i < m.ninflight; i++)
		if (m.inflight[i].verify == verify && strcmp(m.inflight[i].user, user) == 0)
			return &m.inflight[i];
	return NULL;
}

static void inflight_add(const char *user, const char *host, int verify)
{
	struct running *r = inflight_find(user, verify);

	if (r == NULL) {
		if (m.ninflight == m.cap) {
			m.cap = m.cap ? m.cap * 2 : 16;
			m.inflight = realloc(m.inflight, m.cap * sizeof(*m.inflight));
		}
		r = &m.inflight[m.ninflight++];
	}
	snprintf(r->user, sizeof(r->user), "%s", user);
	snprintf(r->host, sizeof(r->host), "%s", host != NULL ? host : "");
	r->verify = verify;
	r->started = now_mono();
}

/* ends the user's pull or verification; its duration, or -1 if none ran */
static double inflight_end(const char *user, int verify)
{
	struct running *r = user != NULL ? inflight_find(user, verify) : NULL;
	double d;

	if (r == NULL)
		return -1;
	d = now_mono() - r->started;
	*r = m.inflight[--m.ninflight];
	return d;
}

static void pull_end(const char *user, enum pull_result res)
{
	double d = inflight_end(user, 0);

	if (d < 0)
		return;  /* not a pull of this process (e.g. a verification's verdict) */
	m.pulls[res]++;
	observe(&m.pull_seconds, d);
}

static enum check_result check_result(const char *r)
{
	return r == NULL ? CR_ERROR : strcmp(r, "pass") == 0 ? CR_PASS :
		strcmp(r, "fail") == 0 ? CR_FAIL : CR_ERROR;
}

static void on_event(const char *level, const char *event, const char *const *kv, size_t n)
{
	const char *user = get(kv, n, "user"), *error = get(kv, n, "error");

	(void)level;
	if (strcmp(event, "pull-start") == 0) {
		m.pulls_started++;
		if (user != NULL)
			inflight_add(user, get(kv, n, "host"), 0);
	} else if (strcmp(event, "folder-pulled") == 0) {
		const char *c = get(kv, n, "copied"), *b = get(kv, n, "bytes");
		m.folders_pulled++;
		if (c != NULL)
			m.messages_copied += strtoull(c, NULL, 10);
		if (b != NULL)
			m.bytes_copied += strtoull(b, NULL, 10);
	} else if (strcmp(event, "pulls-complete") == 0 || strcmp(event, "user-done") == 0) {
		pull_end(user, PR_OK);
	} else if (strcmp(event, "pull-failed") == 0) {
		m.pull_failures[reason_index(error)]++;
		pull_end(user, PR_RETRY);
	} else if (strcmp(event, "user-failed") == 0) {
		size_t r = reason_index(error);
		m.users_failed[r]++;
		if (user != NULL && inflight_find(user, 0) != NULL) {
			m.pull_failures[r]++;
			pull_end(user, PR_FAILED);
		}
	} else if (strcmp(event, "pull-abandoned") == 0) {
		pull_end(user, PR_ABANDONED);
	} else if (strcmp(event, "pull-interrupted") == 0) {
		m.pulls_interrupted++;
	} else if (strcmp(event, "check-start") == 0) {
		const char *kind = get(kv, n, "kind");
		if (user != NULL && kind != NULL && strcmp(kind, "verify") == 0)
			inflight_add(user, get(kv, n, "host"), 1);
	} else if (strcmp(event, "verify") == 0) {
		double d = inflight_end(user, 1);
		m.verifications[check_result(get(kv, n, "result"))]++;
		if (d >= 0)
			observe(&m.verify_seconds, d);
	} else if (strcmp(event, "check-abandoned") == 0) {
		inflight_end(user, 1);
	} else if (strcmp(event, "preflight") == 0) {
		m.preflights[check_result(get(kv, n, "result"))]++;
	} else if (strcmp(event, "verify-diff") == 0) {
		m.verify_diffs++;
	} else if (strcmp(event, "rollback-done") == 0) {
		m.rollbacks_ok++;
	} else if (strcmp(event, "rollback-failed") == 0) {
		m.rollbacks_failed++;
	} else if (strcmp(event, "cutover-finished") == 0 ||
		   strcmp(event, "rollback-finished") == 0) {
		const char *state = get(kv, n, "state");
		int ok = state != NULL && strcmp(state, "done") == 0;
		if (event[0] == 'c')
			ok ? m.cutovers_done++ : m.cutovers_failed++;
		else
			ok ? m.wave_rollbacks_done++ : m.wave_rollbacks_failed++;
	} else if (strcmp(event, "api-denied") == 0) {
		m.api_denied++;
	}
}

void metrics_init(void)
{
	m.start_time = time(NULL);
	evlog_set_observer(on_event);
}

void metrics_set_sources(struct store *st, struct tally *tally,
			 const struct sched_running *run, const int *draining)
{
	m.st = st;
	m.tally = tally;
	m.run = run;
	m.draining = draining;
}

/* ---- exposition ----------------------------------------------------------- */

static void label_value(struct evbuffer *out, const char *v)
{
	for (; *v != '\0'; v++) {
		if (*v == '\\' || *v == '"')
			evbuffer_add_printf(out, "\\%c", *v);
		else if (*v == '\n')
			evbuffer_add(out, "\\n", 2);
		else
			evbuffer_add(out, v, 1);
	}
}

static void head(struct evbuffer *out, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(struct evbuffer *out, const char *name, const char *help,
		      const struct histogram *h)
{
	unsigned long long cum = 0;

	head(out, name, "histogram", help);
	for (size_t i = 0; i < NBUCKETS; i++) {
		cum += h->counts[i];
		evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, duration_buckets[i], cum);
	}
	evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
			    name, h->count, name, h->sum, name, h->count);
}

static void by_label(struct evbuffer *out, const char *name, const char *type,
		     const char *help, const char *label, const char *const *values,
		     const unsigned long long *counts, size_t n)
{
	head(out, name, type, help);
	for (size_t i = 0; i < n; i++)
		evbuffer_add_printf(out, "%s{%s=\"%s\"} %llu\n", name, label, values[i], counts[i]);
}

static void counter(struct evbuffer *out, const char *name, const char *help,
		    unsigned long long v)
{
	head(out, name, "counter", help);
	evbuffer_add_printf(out, "%s %llu\n", name, v);
}

static void gauge(struct evbuffer *out, const char *name, const char *help, double v)
{
	head(out, name, "gauge", help);
	evbuffer_add_printf(out, "%s %.17g\n", name, v);
}

/* users per wave and state, from the totals kept in memory (tally.h): a
   scrape costs the number of waves, not of users */
struct wave_count {
	int64_t id;
	char name[128];
	long long states[US_COUNT];
};

struct scan {
	struct wave_count *waves;
	size_t n, cap;
	long long paused, running, queued;
	long long old_messages, new_messages, copied;
};

static struct wave_count *scan_wave(struct scan *s, int64_t id, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->waves[i].id == id)
			return &s->waves[i];
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 16;
		if ((s->waves = realloc(s->waves, s->cap * sizeof(*s->waves))) == NULL)
			abort();
	}
	memset(&s->waves[s->n], 0, sizeof(s->waves[s->n]));
	s->waves[s->n].id = id;
	snprintf(s->waves[s->n].name, sizeof(s->waves[s->n].name), "%s", name);
	return &s->waves[s->n++];
}

static int scan_wave_cb(const struct wave_rec *w, void *ctx)
{
	scan_wave(ctx, w->id, w->name);
	return 0;
}

static int scan_count_cb(const struct tally_count *c, void *ctx)
{
	struct scan *s = ctx;

	scan_wave(s, c->wave_id, "")->states[c->state] += c->users;
	s->paused += c->paused;
	s->running += c->running;
	s->queued += c->queued;
	s->old_messages += c->old_messages;
	s->new_messages += c->messages;
	s->copied += c->copied;
	return 0;
}

static void store_gauges(struct evbuffer *out)
{
	struct scan s;

	memset(&s, 0, sizeof(s));
	if (m.st == NULL || m.tally == NULL || m.st->wave_each(m.st, scan_wave_cb, &s) < 0 ||
	    tally_refresh(m.tally, TALLY_REQUEST_MAX) < 0 ||
	    tally_counts(m.tally, -1, scan_count_cb, &s) < 0) {
		gauge(out, "ferry_store_up", "1 if the state database answered this scrape", 0);
		free(s.waves);
		return;
	}
	gauge(out, "ferry_store_up", "1 if the state database answered this scrape", 1);
	head(out, "ferry_users", "gauge", "Users per wave and state (wave=\"\": in no wave)");
	for (size_t i = 0; i < s.n; i++)
		for (int k = 0; k < US_COUNT; k++) {
			evbuffer_add_printf(out, "ferry_users{wave=\"");
			label_value(out, s.waves[i].name);
			evbuffer_add_printf(out, "\",state=\"%s\"} %lld\n",
					    user_state_name((enum user_state)k), s.waves[i].states[k]);
		}
	gauge(out, "ferry_users_paused", "Users whose own pause flag is set",
	      (double)s.paused);
	gauge(out, "ferry_users_running", "Users with a pull or verification in flight",
	      (double)s.running);
	gauge(out, "ferry_queue_users",
	      "Users waiting for a pull (started, not running, not paused)", (double)s.queued);
	head(out, "ferry_folder_messages", "gauge",
	     "Messages in the users' folders as last reported, per server");
	evbuffer_add_printf(out, "ferry_folder_messages{server=\"old\"} %lld\n"
			    "ferry_folder_messages{server=\"new\"} %lld\n",
			    s.old_messages, s.new_messages);
	gauge(out, "ferry_folder_messages_copied",
	      "Messages copied into the users' folders so far (all runs of ferryd)",
	      (double)s.copied);
	free(s.waves);
}

static void slot_gauges(struct evbuffer *out)
{
	head(out, "ferry_pulls_in_flight", "gauge", "Pulls in flight per old host");
	for (size_t i = 0; i < m.ninflight; i++) {
		size_t k;
		if (m.inflight[i].verify)
			continue;
		for (k = 0; k < i; k++)  /* each host once */
			if (!m.inflight[k].verify &&
			    strcmp(m.inflight[k].host, m.inflight[i].host) == 0)
				break;
		if (k < i)
			continue;
		int count = 0;
		for (k = i; k < m.ninflight; k++)
			count += !m.inflight[k].verify &&
				strcmp(m.inflight[k].host, m.inflight[i].host) == 0;
		evbuffer_add_printf(out, "ferry_pulls_in_flight{host=\"");
		label_value(out, m.inflight[i].host);
		evbuffer_add_printf(out, "\"} %d\n", count);
	}
	head(out, "ferry_old_sessions", "gauge",
	     "Old-server sessions held by ferryd per host (pulls, preflights, verifications)");
	if (m.run != NULL)
		for (int i = 0; i < m.run->nhosts; i++) {
			if (m.run->hosts[i].n <= 0)
				continue;
			evbuffer_add_printf(out, "ferry_old_sessions{host=\"");
			label_value(out, m.run->hosts[i].host);
			evbuffer_add_printf(out, "\"} %d\n", m.run->hosts[i].n);
		}
}

/* process_* as the Prometheus client libraries export them */
static void process_gauges(struct evbuffer *out)
{
	struct rusage ru;
	struct rlimit rl;
	unsigned long vsize = 0;
	long rss = 0, fds = 0;
	FILE *fp;
	DIR *dir;

	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		head(out, "process_cpu_seconds_total", "counter", "User and system CPU time");
		evbuffer_add_printf(out, "process_cpu_seconds_total %.6f\n",
				    (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
				    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	}
	if ((fp = fopen("/proc/self/statm", "r")) != NULL) {
		unsigned long pages = 0, res = 0;
		if (fscanf(fp, "%lu %lu", &pages, &res) == 2) {
			vsize = pages * (unsigned long)sysconf(_SC_PAGESIZE);
			rss = (long)res * sysconf(_SC_PAGESIZE);
		}
		fclose(fp);
	}
	gauge(out, "process_resident_memory_bytes", "Resident memory size", (double)rss);
	gauge(out, "process_virtual_memory_bytes", "Virtual memory size", (double)vsize);
	if ((dir = opendir("/proc/self/fd")) != NULL) {
		struct dirent *de;
		while ((de = readdir(dir)) != NULL)
			fds += de->d_name[0] != '.';
		closedir(dir);
		gauge(out, "process_open_fds", "Open file descriptors", (double)(fds - 1));
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		gauge(out, "process_max_fds", "Limit of open file descriptors",
		      (double)rl.rlim_cur);
	gauge(out, "process_start_time_seconds", "Start time, seconds since the epoch",
	      (double)m.start_time);
}

static void render(struct evbuffer *out)
{
	counter(out, "ferry_pulls_started_total", "Pulls (one job per user) started",
		m.pulls_started);
	by_label(out, "ferry_pulls_total", "counter",
		 "Pulls ended, by result (ok: every folder complete; retry: failed, retried "
		 "later; failed: the user failed; abandoned: ferryd stopped)",
		 "result", pull_results, m.pulls, PR_COUNT);
	by_label(out, "ferry_pull_failures_total", "counter",
		 "Failed pull attempts by reason class (retried or final)", "reason", reasons,
		 m.pull_failures, NREASONS);
	counter(out, "ferry_retries_total", "Failed pulls scheduled for another attempt",
		m.pulls[PR_RETRY]);
	by_label(out, "ferry_users_failed_total", "counter",
		 "Users that became failed, by reason class", "reason", reasons, m.users_failed,
		 NREASONS);
	counter(out, "ferry_pulls_interrupted_total",
		"Pulls found in flight at start (ferryd had stopped) and resumed",
		m.pulls_interrupted);
	counter(out, "ferry_folders_pulled_total", "Folder pulls answered by doveadm",
		m.folders_pulled);
	counter(out, "ferry_messages_copied_total", "Messages copied by ferryd's pulls",
		m.messages_copied);
	counter(out, "ferry_bytes_copied_total",
		"Size of the messages copied by ferryd's pulls (RFC822.SIZE on the old server)",
		m.bytes_copied);
	histogram(out, "ferry_pull_duration_seconds",
		  "Duration of a user's pull job, start to the last answer", &m.pull_seconds);
	by_label(out, "ferry_verifications_total", "counter", "Verification runs by result",
		 "result", check_results, m.verifications, CR_COUNT);
	histogram(out, "ferry_verify_duration_seconds", "Duration of a verification run",
		  &m.verify_seconds);
	counter(out, "ferry_verify_differences_total", "Differences found by verifications",
		m.verify_diffs);
	by_label(out, "ferry_preflights_total", "counter", "Preflight runs by result", "result",
		 check_results, m.preflights, CR_COUNT);
	head(out, "ferry_rollbacks_total", "counter",
	     "Users whose new mail was appended back to the old server, by result");
	evbuffer_add_printf(out, "ferry_rollbacks_total{result=\"ok\"} %llu\n"
			    "ferry_rollbacks_total{result=\"failed\"} %llu\n",
			    m.rollbacks_ok, m.rollbacks_failed);
	head(out, "ferry_wave_operations_total", "counter",
	     "Wave cut-overs and rollbacks finished, by kind and result");
	evbuffer_add_printf(out,
		"ferry_wave_operations_total{kind=\"cutover\",result=\"done\"} %llu\n"
		"ferry_wave_operations_total{kind=\"cutover\",result=\"failed\"} %llu\n"
		"ferry_wave_operations_total{kind=\"rollback\",result=\"done\"} %llu\n"
		"ferry_wave_operations_total{kind=\"rollback\",result=\"failed\"} %llu\n",
		m.cutovers_done, m.cutovers_failed, m.wave_rollbacks_done,
		m.wave_rollbacks_failed);
	counter(out, "ferry_api_denied_total", "Admin API requests refused for their token",
		m.api_denied);
	slot_gauges(out);
	store_gauges(out);
	gauge(out, "ferry_draining", "1 while ferryd shuts down",
	      m.draining != NULL && *m.draining ? 1 : 0);
	process_gauges(out);
}

/* ---- endpoints ------------------------------------------------------------ */

static int store_ok(void)
{
	char buf[16];

	return m.st != NULL && m.st->setting_get(m.st, "paused", buf, sizeof(buf)) >= 0;
}

static void send_text(struct evhttp_request *req, int code, const char *type,
		      struct evbuffer *body)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", type);
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_send_reply(req, code, NULL, body);
}

int metrics_serve(struct evhttp_request *req, const char *path)
{
	struct evbuffer *out;
	int code = 200;

	if (path == NULL || (strcmp(path, "/metrics") != 0 && strcmp(path, "/healthz") != 0 &&
			     strcmp(path, "/readyz") != 0))
		return 0;
	out = evbuffer_new();
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evbuffer_add_printf(out, "only GET\n");
		send_text(req, 405, "text/plain; charset=utf-8", out);
	} else if (strcmp(path, "/metrics") == 0) {
		render(out);
		send_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", out);
	} else if (strcmp(path, "/healthz") == 0) {
		evbuffer_add_printf(out, "ok\n");
		send_text(req, 200, "text/plain; charset=utf-8", out);
	} else {
		if (m.draining != NULL && *m.draining) {
			code = 503;
			evbuffer_add_printf(out, "not ready: shutting down\n");
		} else if (!store_ok()) {
			code = 503;
			evbuffer_add_printf(out, "not ready: state database: %s\n",
					    m.st != NULL ? m.st->error(m.st) : "not open");
		} else
			evbuffer_add_printf(out, "ready\n");
		send_text(req, code, "text/plain; charset=utf-8", out);
	}
	evbuffer_free(out);
	return 1;
}
