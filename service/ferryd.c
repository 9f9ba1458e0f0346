/* ferryd: one libevent loop running the admin API, the scheduler tick and
   the doveadm requests. Foreground process (systemd Type=simple).
     ferryd -c /etc/ferry/ferryd.conf      run
     ferryd -c /etc/ferry/ferryd.conf -t   check the configuration and exit
     ferryd -c /etc/ferry/ferryd.conf --rekey OLD_KEY_FILE
                                           re-encrypt the stored passwords
                                           to secret_key_file, then exit
   SIGTERM/SIGINT: stop starting pulls, wait up to drain_timeout for those
   in flight and for cut-overs and rollbacks until they end, exit; a second
   SIGTERM/SIGINT exits at once. SIGHUP: reload the configuration. Started as root it
   drops to `user` once the socket and files are open (runas.h). */
#include <errno.h>
#include <fcntl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "checks.h"
#include "dns.h"
#include "sieve_step.h"
#include "config.h"
#include "cutover.h"
#include "dispatch.h"
#include "doveadm.h"
#include "evlog.h"
#include "metrics.h"
#include "pathcheck.h"
#include "rekey.h"
#include "runas.h"
#include "scheduler.h"
#include "secret.h"
#include "runq.h"
#include "tally.h"
#include "store.h"
#include "userstate.h"

#define PICK_BATCH 32        /* pulls started per scheduler call */
#define LOOP_SLICE_US 10000  /* callbacks run before the loop looks again */

struct daemon {
	const char *conf_path;
	struct ferry_config cfg;
	struct event_base *base;
	struct evdns_base *dnsbase;  /* every name ferryd resolves */
	struct store *st;
	struct api *api;
	struct doveadm_client *dc;
	struct dispatch *disp;
	struct cutover *cut;
	struct checks *checks;
	struct dns *dns;
	struct sieve_step *sieve;
	struct sched_running run;
	struct runq *rq;  /* the users due, in memory */
	struct tally *tally;  /* the totals of status and metrics, in memory */
	struct event *tick, *kick, *due_timer, *drain_timer;
	int draining;
	/* several ferryd on one PostgreSQL (docs/ferryd.md) */
	struct event *lease_timer;
	time_t lease_ok;       /* the last renewal that worked */
	time_t takeover_done;  /* the last scan for expired claims */
};

/* userstate's observer: the queue and the totals read the user again */
static void on_user_changed(const char *user, void *arg)
{
	struct daemon *d = arg;

	runq_touch(d->rq, user);
	if (d->tally != NULL)
		tally_touch(d->tally, user);
}

static void on_folders_written(const char *user, void *arg)
{
	tally_touch_folders(((struct daemon *)arg)->tally, user);
}

/* the user's old host already counted in d->run (runq_pick); with several
   ferryd the host's slot shared in the store too: 1 = all held elsewhere */
static int start_pull(const char *user, const char *host, void *arg)
{
	struct daemon *d = arg;
	int ret;

	if (d->st->slot_take != NULL &&
	    (ret = d->st->slot_take(d->st, host, d->cfg.max_per_host)) != 0) {
		if (ret < 0)
			evlog("error", "store-error", "user", user, "error", d->st->error(d->st), NULL);
		return ret;
	}
	if (dispatch_start(d->disp, user) < 0) {
		if (d->st->slot_release != NULL)
			d->st->slot_release(d->st, host);
		return -1;
	}
	return 0;
}

static void kick(void *arg);
static int slot_take(const char *host, void *arg);

/* the due users from the in-memory queue (runq.h): no store scan. At most
   PICK_BATCH starts per call: the rest after the loop has looked at what
   is ready (an API request waits for one batch, not for a thousand). */
static void schedule(struct daemon *d)
{
	struct sched_limits lim = { d->cfg.max_concurrent, d->cfg.max_per_host };
	int started;
	char buf[16];
	time_t now = time(NULL), due;
	struct tm tm;

	if (d->draining)
		return;
	/* preflight/verify runs first: each holds an old-host slot like a pull */
	checks_start_queued(d->checks, slot_take, d);
	if (d->run.total >= d->cfg.max_concurrent)
		return;
	if (d->st->setting_get(d->st, "paused", buf, sizeof(buf)) == 0 && buf[0] == '1')
		return;
	localtime_r(&now, &tm);
	if (lim.max_concurrent > d->run.total + PICK_BATCH)
		lim.max_concurrent = d->run.total + PICK_BATCH;
	started = runq_pick(d->rq, &lim, &d->run, now, tm.tm_hour * 60 + tm.tm_min, start_pull, d);
	if (started < 0)
		evlog("error", "store-error", "error", d->st->error(d->st), NULL);
	else if (started >= PICK_BATCH && d->run.total < d->cfg.max_concurrent)
		kick(d);
	/* the next retry wakes the scheduler even between ticks */
	if ((due = runq_next_due(d->rq)) > 0) {
		struct timeval tv = { due > now ? due - now : 0, 0 };
		evtimer_add(d->due_timer, &tv);
	}
}

static int in_flight(struct daemon *d);

static int take_over_one(const struct user_rec *u, void *arg)
{
	struct daemon *d = arg;
	char holder[sizeof(u->claimed_by)], until[32], late[32], why[400];
	int ret;

	/* this ferryd's own claim with its job still here: its renewal failed
	   for a while (the lease-lost check below ends such jobs) */
	if (strcmp(u->claimed_by, d->st->node) == 0 &&
	    (dispatch_has(d->disp, u->name) || checks_holds(d->checks, u->name)))
		return 0;
	snprintf(holder, sizeof(holder), "%s", u->claimed_by);
	if ((ret = userstate_take_over(d->st, u->name, holder)) <= 0) {
		if (ret < 0)
			evlog("error", "store-error", "user", u->name, "error",
			      d->st->error(d->st), NULL);
		return 0;
	}
	snprintf(until, sizeof(until), "%lld", (long long)u->lease_until);
	snprintf(late, sizeof(late), "%lld", (long long)(time(NULL) - u->lease_until));
	snprintf(why, sizeof(why), "the claim of ferryd %.128s ended at %lld (its lease ran out)",
		 holder[0] ? holder : "(unnamed)", (long long)u->lease_until);
	evlog("warning", "taken-over", "user", u->name, "holder", holder, "lease_until", until,
	      "late_s", late, NULL);
	if (store_log_event(d->st, u->name, NULL, "pull-taken-over", 0, 0, why) < 0)
		evlog("error", "store-error", "user", u->name, "error", d->st->error(d->st), NULL);
	return 0;
}

/* several ferryd on one PostgreSQL: at every tick the users another
   ferryd changed are read again (the run queue hears of this one's own
   transitions only; LISTEN/NOTIFY), and once a second the claims whose
   lease ran out are taken over */
static void peers(struct daemon *d)
{
	time_t now = time(NULL);

	if (d->st->user_changed_each == NULL)
		return;
	if (userstate_poll_peers(d->st) < 0)
		evlog("error", "store-error", "error", d->st->error(d->st), NULL);
	if (now == d->takeover_done)
		return;
	if (d->st->user_expired_each(d->st, (int64_t)now, take_over_one, d) < 0)
		evlog("error", "store-error", "error", d->st->error(d->st), NULL);
	d->takeover_done = now;
}

/* every lease/3: this ferryd's claims and slots renewed; if no renewal
   worked for 2/3 of the lease, another ferryd may take its users over at
   the lease's end: its jobs stop first (docs/ferryd.md) */
static void on_lease(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	time_t now = time(NULL);
	char n[16];

	(void)fd;
	(void)what;
	if (userstate_renew(d->st) >= 0) {
		d->lease_ok = now;
		return;
	}
	evlog("error", "lease-renew-failed", "error", d->st->error(d->st), NULL);
	if (now - d->lease_ok < d->st->lease - d->st->lease / 3 || in_flight(d) == 0)
		return;
	snprintf(n, sizeof(n), "%d", dispatch_in_flight(d->disp) + checks_running(d->checks));
	evlog("error", "lease-lost", "abandoned", n, "note",
	      "no renewal within 2/3 of pgsql_lease: jobs stopped before another ferryd takes"
	      " their users over", NULL);
	dispatch_cancel_all(d->disp);
	checks_cancel_all(d->checks);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	(void)fd;
	(void)what;
	/* cut-overs in flight go on while draining: shutdown waits for them */
	cutover_pump(d->cut);
	if (d->draining) {
		if (in_flight(d) == 0) {
			evlog("info", "drained", NULL);
			event_base_loopexit(d->base, NULL);
		}
		return;
	}
	cutover_tick(d->cut, time(NULL));
	dns_tick(d->dns, time(NULL));
	peers(d);
	schedule(d);
}

/* the one slot accounting per old host: pulls (schedule), checks and the
   cut-over's and rollback's doveadm calls all count in d->run */
static int slot_take(const char *host, void *arg)
{
	struct daemon *d = arg;

	if (d->run.total >= d->cfg.max_concurrent ||
	    sched_running_count(&d->run, host) >= d->cfg.max_per_host)
		return 0;
	/* several ferryd: the host's slots are counted in the store too */
	if (d->st->slot_take != NULL && d->st->slot_take(d->st, host, d->cfg.max_per_host) != 0)
		return 0;
	sched_running_add(&d->run, host);
	return 1;
}

static void on_check_done(const char *host, void *arg);

static void slot_release(const char *host, void *arg)
{
	on_check_done(host, arg);
}

static void kick(void *arg)
{
	struct daemon *d = arg;

	/* runs after the callbacks already due; the loop's dispatch slice
	   (LOOP_SLICE_US) still lets new events in between */
	if (d->kick != NULL)  /* NULL: a start that failed, nothing runs */
		event_active(d->kick, EV_TIMEOUT, 0);
}

static int in_flight(struct daemon *d)
{
	return dispatch_in_flight(d->disp) + checks_running(d->checks) +
		(d->cut != NULL ? cutover_in_flight(d->cut) : 0);
}

static int on_pulls_complete(const struct user_rec *u, void *arg)
{
	struct daemon *d = arg;

	if (d->cfg.sieve_after_pull && !d->draining) {
		char why[600];
		if (sieve_step_user(d->sieve, u, why, sizeof(why)) < 0)
			evlog("warning", "sieve-skipped", "user", u->name, "error", why, NULL);
	}
	if (!d->cfg.verify_after_pull || d->draining || !checks_can_verify(d->checks, u))
		return 0;
	return checks_queue(d->checks, u, "verify", 1) == 0;
}

static void on_job_done(const char *user, const char *host, void *arg)
{
	struct daemon *d = arg;

	(void)user;
	on_check_done(host, d);
}

static void on_check_done(const char *host, void *arg)
{
	struct daemon *d = arg;

	sched_running_remove(&d->run, host);
	if (d->st->slot_release != NULL)
		d->st->slot_release(d->st, host);
	kick(d);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	char n[16];

	(void)fd;
	(void)what;
	snprintf(n, sizeof(n), "%d", dispatch_in_flight(d->disp) + checks_running(d->checks));
	evlog("warning", "drain-timeout", "abandoned", n, NULL);
	dispatch_cancel_all(d->disp);
	checks_cancel_all(d->checks);
	/* a cut-over or rollback stopped half-way leaves a wave routed without
	   its passes: wait for it (on_tick exits when it ends); a second
	   SIGTERM/SIGINT does not wait */
	if (cutover_in_flight(d->cut) > 0) {
		snprintf(n, sizeof(n), "%d", cutover_in_flight(d->cut));
		evlog("warning", "drain-waiting", "cutovers", n, NULL);
		kick(d);
		return;
	}
	event_base_loopexit(d->base, NULL);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	struct timeval tv = { d->cfg.drain_timeout, 0 };
	char n[16];

	(void)what;
	if (d->draining) {
		/* the second signal: stop now (cutover_free records the cut-overs
		   in flight as failed: run them again) */
		evlog("warning", "stop-now", "signal", sig == SIGINT ? "INT" : "TERM", NULL);
		dispatch_cancel_all(d->disp);
		checks_cancel_all(d->checks);
		event_base_loopexit(d->base, NULL);
		return;
	}
	d->draining = 1;
	checks_drop_queued(d->checks);
	snprintf(n, sizeof(n), "%d", in_flight(d));
	evlog("info", "draining", "signal", sig == SIGINT ? "INT" : "TERM", "in_flight", n, NULL);
	if (in_flight(d) == 0) {
		event_base_loopexit(d->base, NULL);
		return;
	}
	d->drain_timer = evtimer_new(d->base, on_drain_timeout, d);
	evtimer_add(d->drain_timer, &tv);
}

static int load_doveadm_key(struct daemon *d, const struct ferry_config *cfg, char **err)
{
	char *key = config_read_private(cfg->doveadm_api_key_file, err);

	if (key == NULL)
		return -1;
	doveadm_client_configure(d->dc, cfg->doveadm_host, cfg->doveadm_port, key,
				 cfg->pull_timeout);
	explicit_bzero(key, strlen(key));
	free(key);
	return 0;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	struct ferry_config nc;
	char *err = NULL;
	struct timeval tv;

	(void)sig;
	(void)what;
	config_defaults(&nc);
	if (config_load(d->conf_path, &nc, &err) < 0 ||
	    api_load_secrets(d->api, &nc, &err) < 0 ||
	    load_doveadm_key(d, &nc, &err) < 0 ||
	    checks_load_secrets(d->checks, &nc, &err) < 0) {
		evlog("error", "reload-failed", "error", err, "keeping", "previous configuration", NULL);
		free(err);
		config_free(&nc);
		return;
	}
	if (strcmp(nc.state_db, d->cfg.state_db) != 0 ||
	    strcmp(nc.listen_host, d->cfg.listen_host) != 0 || nc.listen_port != d->cfg.listen_port ||
	    strcmp(nc.user != NULL ? nc.user : "", d->cfg.user != NULL ? d->cfg.user : "") != 0 ||
	    nc.allow_root != d->cfg.allow_root)
		evlog("warning", "reload", "note",
		      "listen, state_db, user and allow_root change only on restart", NULL);
	/* swap the changeable settings in place (dispatch holds &d->cfg) */
#define SWAP_STR(f) do { char *t = d->cfg.f; d->cfg.f = nc.f; nc.f = t; } while (0)
	SWAP_STR(doveadm_host);
	SWAP_STR(doveadm_api_key_file);
	SWAP_STR(api_token_file);
	SWAP_STR(viewer_token_file);
	SWAP_STR(secret_key_file);
	SWAP_STR(log_file);
	SWAP_STR(new_imap_host);
	SWAP_STR(new_tls);
	SWAP_STR(imap_ca_file);
	SWAP_STR(old_master_user);
	SWAP_STR(old_master_password_file);
	SWAP_STR(new_master_user);
	SWAP_STR(new_master_password_file);
	d->cfg.new_imap_port = nc.new_imap_port;
	d->cfg.verify_sample = nc.verify_sample;
	d->cfg.verify_after_pull = nc.verify_after_pull;
	d->cfg.check_timeout = nc.check_timeout;
	d->cfg.doveadm_port = nc.doveadm_port;
	d->cfg.max_concurrent = nc.max_concurrent;
	d->cfg.max_per_host = nc.max_per_host;
	d->cfg.retry_limit = nc.retry_limit;
	d->cfg.retry_base = nc.retry_base;
	d->cfg.retry_max_delay = nc.retry_max_delay;
	d->cfg.pull_timeout = nc.pull_timeout;
	d->cfg.drain_timeout = nc.drain_timeout;
	d->cfg.max_body = nc.max_body;
	d->cfg.tick_ms = nc.tick_ms;
	config_free(&nc);
	if (evlog_open(d->cfg.log_file) < 0)
		evlog("error", "reload", "error", "cannot open log_file", "reason", strerror(errno),
		      NULL);
	api_reconfigure(d->api, &d->cfg);
	tv.tv_sec = d->cfg.tick_ms / 1000;
	tv.tv_usec = (d->cfg.tick_ms % 1000) * 1000;
	evtimer_add(d->tick, &tv);
	evlog("info", "reloaded", "config", d->conf_path, NULL);
	kick(d);
}

/* A claim left by this ferryd's previous life (on SQLite every claim:
   one process; on PostgreSQL those of this node_name, whose lock says no
   other process has it, and unnamed ones of a schema before leases (3)) is
   released; another ferryd's claims are its own, or taken over once their
   lease ran out (peers()). */
static int recover_one(const struct user_rec *u, void *ctx)
{
	struct store *st = ctx;
	int ret;

	if (!u->running)
		return 0;
	if (strcmp(u->claimed_by, st->node) == 0)
		ret = userstate_release(st, u->name);
	else if (u->claimed_by[0] == '\0')
		ret = userstate_take_over(st, u->name, "") < 0 ? -1 : 0;
	else
		return 0;
	if (ret < 0)
		return -1;
	evlog("warning", "pull-interrupted", "user", u->name, NULL);
	return store_log_event(st, u->name, NULL, "pull-interrupted", 0, 0,
			       "ferryd stopped during the pull; resuming");
}

static void usage(void)
{
	fprintf(stderr, "usage: ferryd -c CONFIG [-t | --rekey OLD_KEY_FILE]\n"
		"  -c CONFIG               configuration file (docs/ferryd.md)\n"
		"  -t                      check the configuration and exit\n"
		"  --rekey OLD_KEY_FILE    re-encrypt the stored passwords from the key in\n"
		"                          OLD_KEY_FILE to secret_key_file, then exit\n"
		"                          (docs/security.md, \"Key rotation\")\n");
}

static int set(const char *s)
{
	return s != NULL && *s != '\0';
}

/* every secret file ferryd reads at start, with config_read_private's checks */
static int check_secret_files(const struct ferry_config *cfg, char **err_r)
{
	const char *files[] = { cfg->api_token_file, cfg->viewer_token_file,
				cfg->doveadm_api_key_file,
				cfg->secret_key_file, cfg->old_master_password_file,
				cfg->new_master_password_file };

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char *s;
		if (!set(files[i]))
			continue;
		if ((s = config_read_private(files[i], err_r)) == NULL)
			return -1;
		explicit_bzero(s, strlen(s));
		free(s);
	}
	return 0;
}

/* The state database, its WAL files and its directory stay usable by the
   dropped user (SQLite creates and removes -wal and -shm next to it). */
static void keep_store_files(struct runas *ra, const char *db)
{
	char *copy = strdup(db), path[4096];

	runas_keep(ra, dirname(copy), 1);
	free(copy);
	runas_keep(ra, db, 0);
	snprintf(path, sizeof(path), "%s-wal", db);
	runas_keep(ra, path, 0);
	snprintf(path, sizeof(path), "%s-shm", db);
	runas_keep(ra, path, 0);
}

/* state_db's directory and file, created if missing: 2770 and 0660, the
   group of ferryd's user. Dovecot's auth and Postfix read the routing views
   as members of that group, and SQLite in WAL mode needs them to create and
   write the -shm file (SQLite gives -wal/-shm the database's mode). */
static int make_db_dir(const char *db, int with_file, char **err_r)
{
	char *copy = strdup(db), *dir = dirname(copy);
	int ret = 0, fd;

	if (mkdir(dir, 0770) == 0)
		ret = chmod(dir, 02770);
	else if (errno != EEXIST)
		ret = -1;
	if (ret < 0) {
		if (asprintf(err_r, "state_db directory %s: %s", dir, strerror(errno)) < 0)
			*err_r = NULL;
		free(copy);
		return -1;
	}
	free(copy);
	if (!with_file) /* store = pgsql: the directory holds local files only */
		return 0;
	if ((fd = open(db, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0660)) >= 0) {
		ret = fchmod(fd, 0660);
		close(fd);
	} else if (errno != EEXIST)
		ret = -1;
	if (ret < 0 && asprintf(err_r, "state_db %s: %s", db, strerror(errno)) < 0)
		*err_r = NULL;
	return ret;
}

static void wipe(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* --rekey: offline, both keys from files (never argv or the API), one
   transaction; runs as `user` like the daemon (after reading the keys). */
static int rekey_main(const char *conf_path, const struct ferry_config *cfg,
		      struct runas *ra, const char *old_file)
{
	char *err = NULL, *new_key = NULL, *old_key = NULL;
	char old_id[SECRET_KEY_ID_LEN + 1], new_id[SECRET_KEY_ID_LEN + 1];
	struct rekey_result res;
	struct store *st = NULL;
	struct stat sb;
	int ret = 1;

	if (!set(cfg->secret_key_file)) {
		fprintf(stderr, "ferryd: --rekey: %s sets no secret_key_file (the new key)\n",
			conf_path);
		return 1;
	}
	if ((new_key = config_read_private(cfg->secret_key_file, &err)) == NULL ||
	    (old_key = config_read_private(old_file, &err)) == NULL) {
		fprintf(stderr, "ferryd: --rekey: %s; nothing changed\n", err);
		goto out;
	}
	if (!store_is_pgsql(cfg) && stat(cfg->state_db, &sb) < 0) {
		fprintf(stderr, "ferryd: --rekey: state database %s: %s\n", cfg->state_db,
			strerror(errno));
		goto out;
	}
	if (!store_is_pgsql(cfg))
		keep_store_files(ra, cfg->state_db);
	if ((st = store_for_config(cfg, &err)) == NULL) {
		fprintf(stderr, "ferryd: --rekey: %s\n", err);
		goto out;
	}
	if (runas_drop(ra, &err) < 0) {
		fprintf(stderr, "ferryd: --rekey: %s\n", err);
		goto out;
	}
	if (st->open(st, store_location(cfg)) < 0) {
		fprintf(stderr, "ferryd: --rekey: state database %s: %s\n", store_location(cfg),
			st->error(st));
		goto out;
	}
	secret_key_id(old_key, old_id);
	secret_key_id(new_key, new_id);
	if (rekey_store(st, old_key, new_key, &res, &err) < 0) {
		fprintf(stderr, "ferryd: --rekey: %s; nothing changed\n", err);
		goto out;
	}
	printf("ferryd: rekey: %d stored passwords re-encrypted from key %s (%s) to key %s"
	       " (%s), %d already under it; one transaction\n", res.rekeyed, old_id, old_file,
	       new_id, cfg->secret_key_file, res.current);
	ret = 0;
out:
	free(err);
	wipe(new_key);
	wipe(old_key);
	if (st != NULL) {
		st->close(st);
		store_free(st);
	}
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "rekey", required_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct daemon d;
	struct runas ra;
	struct event *ev_term, *ev_int, *ev_hup;
	struct timeval tv;
	const char *rekey_file = NULL;
	char *err = NULL;
	int opt, test = 0, ret = 1;

	memset(&d, 0, sizeof(d));
	memset(&ra, 0, sizeof(ra));
	/* the log and whatever else ferryd creates: its user writes, its
	   group reads, nobody else, whatever the caller's umask (the state
	   database's own modes: make_db_dir) */
	umask(027);
	while ((opt = getopt_long(argc, argv, "c:th", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c': d.conf_path = optarg; break;
		case 't': test = 1; break;
		case 'R': rekey_file = optarg; break;
		default: usage(); return 2;
		}
	}
	if (d.conf_path == NULL || optind != argc || (test && rekey_file != NULL)) {
		usage();
		return 2;
	}
	config_defaults(&d.cfg);
	if (config_load(d.conf_path, &d.cfg, &err) < 0) {
		fprintf(stderr, "ferryd: invalid configuration: %s\n", err);
		free(err);
		config_free(&d.cfg);
		return 1;
	}
	if (runas_plan(&ra, &d.cfg, d.conf_path, &err) < 0) {
		fprintf(stderr, "ferryd: %s\n", err);
		free(err);
		config_free(&d.cfg);
		return 1;
	}
	/* files read as root before the drop may belong to the user already */
	if (ra.drop)
		config_secret_owner(ra.uid, ra.gid);
	if (rekey_file != NULL) {
		ret = rekey_main(d.conf_path, &d.cfg, &ra, rekey_file);
		runas_free(&ra);
		config_free(&d.cfg);
		return ret;
	}
	/* before anything is created: a refused file leaves no trace */
	if (check_secret_files(&d.cfg, &err) < 0) {
		fprintf(stderr, "ferryd: invalid configuration: %s\n", err);
		free(err);
		runas_free(&ra);
		config_free(&d.cfg);
		return 1;
	}
	if (test) {
		if (pathcheck_run(&d.cfg, &ra, stderr) > 0) {
			fprintf(stderr, "ferryd: configuration %s: the files above are not usable by"
				" ferryd's user\n", d.conf_path);
			runas_free(&ra);
			config_free(&d.cfg);
			return 1;
		}
		printf("ferryd: configuration %s is valid\n", d.conf_path);
		runas_free(&ra);
		config_free(&d.cfg);
		return 0;
	}
	runas_keep(&ra, d.cfg.log_file, 0);
	if (evlog_open(d.cfg.log_file) < 0) {
		fprintf(stderr, "ferryd: cannot open log_file %s: %s\n", d.cfg.log_file,
			strerror(errno));
		runas_free(&ra);
		config_free(&d.cfg);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	metrics_init();
	if (!store_is_pgsql(&d.cfg))
		keep_store_files(&ra, d.cfg.state_db);
	if (make_db_dir(d.cfg.state_db, !store_is_pgsql(&d.cfg), &err) < 0 ||
	    (d.st = store_for_config(&d.cfg, &err)) == NULL) {
		fprintf(stderr, "ferryd: %s\n", err);
		evlog("error", "start-failed", "error", err, NULL);
		free(err);
		goto out;
	}
	if (store_is_pgsql(&d.cfg)) {
		char node[sizeof(d.st->node)], host[64] = "localhost";

		gethostname(host, sizeof(host) - 1);
		host[sizeof(host) - 1] = '\0';
		if (set(d.cfg.node_name))
			snprintf(node, sizeof(node), "%s", d.cfg.node_name);
		else
			snprintf(node, sizeof(node), "%s:%d", host, d.cfg.listen_port);
		store_set_node(d.st, node, d.cfg.pgsql_lease);
	}
	if (d.st->open(d.st, store_location(&d.cfg)) < 0) {
		fprintf(stderr, "ferryd: state database %s: %s\n", store_location(&d.cfg),
			d.st->error(d.st));
		evlog("error", "store-open-failed", "db", store_location(&d.cfg), "store",
		      d.st->backend, "error", d.st->error(d.st), NULL);
		goto out;
	}
	if (d.st->user_each(d.st, NULL, recover_one, d.st) < 0) {
		fprintf(stderr, "ferryd: recovery: %s\n", d.st->error(d.st));
		goto out;
	}
	/* after the recovery: nothing runs */
	d.rq = runq_new(d.st);
	if (runq_load(d.rq) < 0) {
		fprintf(stderr, "ferryd: loading the queue: %s\n", d.st->error(d.st));
		goto out;
	}
	/* 0 unused, 1 (the default) the API, timers and signals, 2 the doveadm
	   replies (doveadm.c); after LOOP_SLICE_US of callbacks the loop looks
	   for new events again, so a saturated loop serves the API within a
	   slice (docs/ferryd.md, "Event loop") */
	{
		struct event_config *ec = event_config_new();
		struct timeval slice = { 0, LOOP_SLICE_US };

		if (ec != NULL && event_config_set_max_dispatch_interval(ec, &slice, -1, 1) == 0)
			d.base = event_base_new_with_config(ec);
		event_config_free(ec);
	}
	if (d.base == NULL || event_base_priority_init(d.base, 3) < 0) {
		fprintf(stderr, "ferryd: cannot set up the event loop\n");
		goto out;
	}
	d.tally = tally_new(d.st, d.base);
	if (tally_load(d.tally) < 0) {
		fprintf(stderr, "ferryd: loading the totals: %s\n", d.st->error(d.st));
		goto out;
	}
	userstate_set_observer(on_user_changed, &d);
	metrics_set_sources(d.st, d.tally, &d.run, &d.draining);
	/* every name ferryd resolves (the doveadm host) goes through evdns:
	   nameservers, options and /etc/hosts read now, before dropping root;
	   /etc/resolv.conf missing or without nameservers: 127.0.0.1, as the
	   C library does. A resolv_conf that was set must be readable. */
	d.dnsbase = evdns_base_new(d.base, 0);
	if (d.dnsbase != NULL &&
	    evdns_base_resolv_conf_parse(d.dnsbase, DNS_OPTIONS_ALL, d.cfg.resolv_conf != NULL ?
					 d.cfg.resolv_conf : "/etc/resolv.conf") == 1 &&
	    d.cfg.resolv_conf != NULL) {
		evdns_base_free(d.dnsbase, 0);
		d.dnsbase = NULL;
	}
	if (d.dnsbase == NULL) {
		fprintf(stderr, "ferryd: cannot set up the DNS resolver (%s)\n",
			d.cfg.resolv_conf != NULL ? d.cfg.resolv_conf : "/etc/resolv.conf");
		evlog("error", "start-failed", "error", "cannot set up the DNS resolver", NULL);
		goto out;
	}
	d.dc = doveadm_client_new(d.base, d.dnsbase);
	if (load_doveadm_key(&d, &d.cfg, &err) < 0) {
		fprintf(stderr, "ferryd: invalid configuration: %s\n", err);
		evlog("error", "start-failed", "error", err, NULL);
		free(err);
		goto out;
	}
	d.api = api_new(d.base, d.st, &d.cfg, kick, &d, &err);
	if (d.api == NULL) {
		fprintf(stderr, "ferryd: %s\n", err);
		evlog("error", "start-failed", "error", err, NULL);
		free(err);
		goto out;
	}
	d.disp = dispatch_new(d.st, d.dc, &d.cfg, on_job_done, &d);
	d.checks = checks_new(d.base, d.st, d.dc, &d.cfg, on_check_done, &d);
	if (checks_load_secrets(d.checks, &d.cfg, &err) < 0) {
		fprintf(stderr, "ferryd: invalid configuration: %s\n", err);
		evlog("error", "start-failed", "error", err, NULL);
		free(err);
		goto out;
	}
	if ((d.dns = dns_new(d.base, d.st, &d.cfg, &err)) == NULL) {
		fprintf(stderr, "ferryd: invalid configuration: %s\n", err);
		evlog("error", "start-failed", "error", err, NULL);
		free(err);
		goto out;
	}
	/* the socket is bound and every secret read: root is no longer needed */
	if (runas_drop(&ra, &err) < 0) {
		fprintf(stderr, "ferryd: %s\n", err);
		evlog("error", "start-failed", "error", err, NULL);
		free(err);
		goto out;
	}
	dispatch_set_complete_cb(d.disp, on_pulls_complete, &d);
	api_set_checks(d.api, d.checks);
	api_set_dns(d.api, d.dns);
	d.sieve = sieve_step_new(d.st, d.dc, d.checks, &d.cfg, kick, &d);
	api_set_sieve(d.api, d.sieve);
	api_set_tally(d.api, d.tally);
	dispatch_set_folders_cb(d.disp, on_folders_written, &d);
	if (d.st->check_abort_all(d.st, "ferryd stopped before the run ended") < 0)
		evlog("error", "store-error", "error", d.st->error(d.st), NULL);
	d.cut = cutover_new(d.base, d.st, d.dc, &d.cfg, kick, slot_take, slot_release, &d);
	api_set_cutover(d.api, d.cut);
	d.tick = event_new(d.base, -1, EV_PERSIST, on_tick, &d);
	d.kick = event_new(d.base, -1, 0, on_tick, &d);
	d.due_timer = evtimer_new(d.base, on_tick, &d);
	if (d.st->lease_renew != NULL) {
		struct timeval lv = { d.st->lease / 3 > 0 ? d.st->lease / 3 : 1, 0 };

		d.lease_ok = time(NULL);
		d.lease_timer = event_new(d.base, -1, EV_PERSIST, on_lease, &d);
		evtimer_add(d.lease_timer, &lv);
	}
	tv.tv_sec = d.cfg.tick_ms / 1000;
	tv.tv_usec = (d.cfg.tick_ms % 1000) * 1000;
	evtimer_add(d.tick, &tv);
	ev_term = evsignal_new(d.base, SIGTERM, on_term, &d);
	ev_int = evsignal_new(d.base, SIGINT, on_term, &d);
	ev_hup = evsignal_new(d.base, SIGHUP, on_hup, &d);
	evsignal_add(ev_term, NULL);
	evsignal_add(ev_int, NULL);
	evsignal_add(ev_hup, NULL);
	{
		char port[16], pid[16], uid[16];
		snprintf(port, sizeof(port), "%d", d.cfg.listen_port);
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		snprintf(uid, sizeof(uid), "%u", (unsigned)geteuid());
		evlog("info", "started", "listen", d.cfg.listen_host, "port", port, "pid", pid,
		      "db", store_location(&d.cfg), "store", d.st->backend, "uid", uid,
		      "node", d.st->node[0] ? d.st->node : NULL, NULL);
	}
	kick(&d);
	event_base_dispatch(d.base);
	evlog("info", "stopped", NULL);
	ret = 0;
	dispatch_free(d.disp);
	d.disp = NULL;
	api_set_checks(d.api, NULL);
	checks_free(d.checks);
	d.checks = NULL;
	api_set_cutover(d.api, NULL);
	cutover_free(d.cut);
	api_set_dns(d.api, NULL);
	dns_free(d.dns);
	d.dns = NULL;
	api_set_sieve(d.api, NULL);
	sieve_step_free(d.sieve);
	d.sieve = NULL;
	event_free(ev_term);
	event_free(ev_int);
	event_free(ev_hup);
	event_free(d.tick);
	event_free(d.kick);
	event_free(d.due_timer);
	if (d.lease_timer != NULL)
		event_free(d.lease_timer);
	if (d.drain_timer != NULL)
		event_free(d.drain_timer);
out:
	/* set up but never run (a start that failed): no runs, no callbacks */
	dispatch_free(d.disp);
	sieve_step_free(d.sieve);
	checks_free(d.checks);
	dns_free(d.dns);
	api_free(d.api);
	doveadm_client_free(d.dc);
	if (d.dnsbase != NULL)
		evdns_base_free(d.dnsbase, 1);
	sched_running_free(&d.run);
	userstate_set_observer(NULL, NULL);
	runq_free(d.rq);
	metrics_set_sources(NULL, NULL, NULL, NULL);
	tally_free(d.tally);
	if (d.base != NULL)
		event_base_free(d.base);
	if (d.st != NULL) {
		d.st->close(d.st);
		store_free(d.st);
	}
	runas_free(&ra);
	config_free(&d.cfg);
	evlog_close();
	return ret;
}
