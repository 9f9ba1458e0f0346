/* The rest of a logged-in user, completed by the imap process that serves
   them, from the login on (docs/design.md, "Background completion").

   At the login the session lists the user's folders and forks workers:
   ferry_parallel - 1 while its client is active (the session keeps its own
   old-server session for the client's commands), ferry_parallel once the
   client has been quiet for ferry_background_idle_msecs (the session
   closes its own old-server session first), so the user never has more
   old-server sessions than a bulk pull of the user would. With ferryd
   configured ferry_parallel counts as one (ferryd's own pull is the
   second stream): no worker while the client is active, one while idle.
   Each worker takes the next folder from a shared counter (INBOX last:
   the client opens it itself) and pulls it whole, with the folder open on
   both servers from its first batch to its last, under the folder's dsync
   lock like every other writer, never waiting for it (a folder another
   writer holds is left to it and looked at again a second later). The
   session's own process copies nothing in the background and stays free
   for its client.

   A command that needs a folder that is not complete claims it first
   (ferry_bg_claim): no worker takes it any more, and a worker in the
   middle of it stops after the batch it is in, commits it and exits; the
   command then pulls the folder itself, whole, with progress lines, while
   the other workers go on. A command that needs the session's own
   old-server session while the idle-time worker runs stops one worker
   the same way (ferry_bg_need_old). So a command waits for one batch at
   most, and the other folders are copied while the client works.

   A worker dies with the session (PR_SET_PDEATHSIG): a kill -9 of the
   imap process is a kill -9 of each copy in flight, which the resume rule
   covers (at most one batch fetched again). */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "time-util.h"
#include "ferry-plugin.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

/* another writer holds a folder: look again after */
#define FERRY_BG_BUSY_MSECS 1000
/* a step failed (old server down...): the next attempt after this,
   doubled per failure in a row up to FERRY_BG_RETRY_MAX_MSECS; a step that
   waits for a silent old server holds a worker up to
   ferry_old_connect_timeout, so it is not tried often */
#define FERRY_BG_RETRY_MSECS (60 * 1000)
#define FERRY_BG_RETRY_MAX_MSECS (16 * 60 * 1000)
/* how much lower the workers' CPU priority is than the session's */
#define FERRY_BG_NICE 10
/* the most workers of one session */
#define FERRY_BG_MAX_WORKERS 8

/* shared with the workers (MAP_SHARED) */
struct ferry_bg_shared {
	uint32_t next;	 /* the next folder to take */
	uint32_t failed; /* folders whose pull failed */
	uint32_t busy;	 /* folders another writer held */
	/* per worker slot: set, stop after the batch in flight */
	uint32_t stop[FERRY_BG_MAX_WORKERS];
	/* per worker slot: the folder it is in, its index + 1; 0 none */
	uint32_t current[FERRY_BG_MAX_WORKERS];
};

struct ferry_background;
struct ferry_bg_worker {
	struct ferry_background *bg;
	pid_t pid;
	int fd;
	struct io *io;
};

struct ferry_background {
	struct mail_user *user;
	struct timeout *to;
	struct timeval last_activity;
	pool_t pool;
	ARRAY_TYPE(const_string) names;
	struct ferry_bg_shared *shared;
	/* per folder of names: claimed by one of the session's commands
	   (MAP_SHARED, as many as names) */
	uint32_t *claimed;
	unsigned int claimed_count;
	struct ferry_bg_worker workers[FERRY_BG_MAX_WORKERS];
	unsigned int running;
	/* failed rounds in a row */
	unsigned int failures;
	/* rounds in a row that ended with the user still not done */
	unsigned int idle_rounds;
	bool listed;
	/* the shared counter is over names: workers may be added */
	bool round;
	/* the session stopped a worker in this round (its folder may be
	   left partial): the round's end is not a round without progress */
	bool interrupted;
};

static void ferry_bg_step(struct ferry_background *bg);

static void ferry_bg_schedule(struct ferry_background *bg, unsigned int msecs)
{
	timeout_remove(&bg->to);
	bg->to = timeout_add_short_to(io_loop_get_root(), msecs,
				      ferry_bg_step, bg);
}

/* After a failure: later, the longer the more failures in a row. */
static void ferry_bg_backoff(struct ferry_background *bg)
{
	unsigned int shift = I_MIN(bg->failures, 4);

	bg->failures++;
	ferry_bg_schedule(bg, I_MIN(FERRY_BG_RETRY_MSECS << shift,
				    FERRY_BG_RETRY_MAX_MSECS));
}

static int ferry_bg_collect(struct mail_user *user ATTR_UNUSED,
			    const char *vname, void *context)
{
	struct ferry_background *bg = context;
	const char *name = p_strdup(bg->pool, vname);

	array_push_back(&bg->names, &name);
	return 0;
}

static void ferry_bg_unlist(struct ferry_background *bg)
{
	i_assert(bg->running == 0);
	if (bg->claimed != NULL) {
		(void)munmap(bg->claimed, bg->claimed_count * sizeof(uint32_t));
		bg->claimed = NULL;
	}
	bg->claimed_count = 0;
	array_clear(&bg->names);
	bg->listed = FALSE;
}

static bool ferry_bg_list(struct ferry_background *bg)
{
	const char *error, *const *names;
	unsigned int i, count;
	void *claimed;

	if (ferry_tree_sync(bg->user, &error) < 0 ||
	    ferry_each_folder(bg->user, ferry_bg_collect, bg, &error) < 0) {
		i_error(FERRY_LOG_PREFIX "event=background-failed error=%s",
			error);
		array_clear(&bg->names);
		return FALSE;
	}
	/* INBOX last: the folder a client opens first, itself (a command's
	   pull is the fastest path); the workers take the others meanwhile */
	names = array_get(&bg->names, &count);
	for (i = 0; i + 1 < count; i++) {
		if (strcmp(names[i], "INBOX") == 0) {
			const char *inbox = names[i];

			array_delete(&bg->names, i, 1);
			array_push_back(&bg->names, &inbox);
			break;
		}
	}
	count = array_count(&bg->names);
	if (count > 0) {
		claimed = mmap(NULL, count * sizeof(uint32_t),
			       PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (claimed == MAP_FAILED) {
			i_error(FERRY_LOG_PREFIX "event=background-failed "
				"error=mmap() failed: %m");
			array_clear(&bg->names);
			return FALSE;
		}
		bg->claimed = claimed;
		bg->claimed_count = count;
	}
	bg->listed = TRUE;
	i_info(FERRY_LOG_PREFIX "event=background folders=%u: the rest of "
	       "the user is completed in the background", count);
	return TRUE;
}

/* How many workers while the client is idle: ferry_parallel (the
   old-server sessions a bulk pull of the user may have), one when ferryd
   is configured (its own pull of the user, counted in its per-host
   accounting, is the second stream). One less while the client is active:
   the session's own old-server session is one of them. */
static unsigned int ferry_bg_worker_count(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	const char *url = ferry_setting_str(bg->user, "ferry_ferryd_url");
	unsigned int n = fuser->set.parallel;

	if (url != NULL && *url != '\0')
		n = 1;
	return I_MAX(I_MIN(n, FERRY_BG_MAX_WORKERS), 1);
}

static void ATTR_NORETURN
ferry_bg_worker_main(struct ferry_background *bg, unsigned int slot, int fd)
{
	struct mail_user *user = bg->user;
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_bg_shared *shared = bg->shared;
	uint32_t *stop = &shared->stop[slot];
	const char *const *names;
	unsigned int count, idx, i;

	/* the session's ioloop, timeouts, client and old-server session
	   stay its own: nothing of them is run or torn down here */
	fuser->bg = NULL;
	fuser->old_user = NULL;
	(void)io_loop_create();
	/* the copy a client waits for (its own process) gets the CPUs
	   first; on an idle machine this costs the workers nothing */
	errno = 0;
	int prio = getpriority(PRIO_PROCESS, 0);
	if (errno == 0 &&
	    setpriority(PRIO_PROCESS, 0, I_MIN(prio + FERRY_BG_NICE, 19)) < 0)
		i_warning(FERRY_LOG_PREFIX "background worker: setpriority() failed: %m");
	names = array_get(&bg->names, &count);
	while (__atomic_load_n(stop, __ATOMIC_SEQ_CST) == 0 &&
	       (idx = __atomic_fetch_add(&shared->next, 1,
					 __ATOMIC_SEQ_CST)) < count) {
		struct ferry_pull_result res;
		enum mail_error code;
		const char *error;
		int ret;

		/* in the folder before looking at the claims: a command that
		   claims it meanwhile sees this worker in it (and stops it) */
		__atomic_store_n(&shared->current[slot], idx + 1,
				 __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&bg->claimed[idx], __ATOMIC_SEQ_CST) != 0) {
			__atomic_store_n(&shared->current[slot], 0,
					 __ATOMIC_SEQ_CST);
			continue;
		}
		T_BEGIN {
			ret = ferry_pull_folder_step(user, names[idx], stop,
						     &res, &code, &error);
		} T_END;
		__atomic_store_n(&shared->current[slot], 0, __ATOMIC_SEQ_CST);
		if (ret < 0) {
			/* the old server may be down: no folder after this
			   one in this round, by any worker */
			__atomic_fetch_add(&shared->failed, 1, __ATOMIC_SEQ_CST);
			for (i = 0; i < FERRY_BG_MAX_WORKERS; i++)
				__atomic_store_n(&shared->stop[i], 1,
						 __ATOMIC_SEQ_CST);
			break;
		}
		if (res.busy)
			__atomic_fetch_add(&shared->busy, 1, __ATOMIC_SEQ_CST);
	}
	if (fuser->old_user != NULL)
		mail_user_deinit(&fuser->old_user);
	i_close_fd(&fd);
	_exit(0);
}

/* A worker's end: its pipe closed, then the process itself. */
static void ferry_bg_reap(struct ferry_bg_worker *w)
{
	struct ferry_background *bg = w->bg;
	int status;

	io_remove(&w->io);
	i_close_fd(&w->fd);
	while (waitpid(w->pid, &status, 0) < 0) {
		if (errno != EINTR) {
			status = 0; /* ECHILD: reaped already (SIGCHLD ignored) */
			break;
		}
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		i_error(FERRY_LOG_PREFIX "background worker %ld ended with "
			"%s %d", (long)w->pid, WIFSIGNALED(status) ?
			"signal" : "status", WIFSIGNALED(status) ?
			WTERMSIG(status) : WEXITSTATUS(status));
		/* as a failed folder: retried later */
		bg->shared->failed++;
	}
	w->pid = 0;
	i_assert(bg->running > 0);
	bg->running--;
}

/* The end of a round: every worker has exited, no folder is left to
   take (or a failure stopped them all). */
static void ferry_bg_round_done(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	struct ferry_bg_shared *shared = bg->shared;
	bool interrupted = bg->interrupted;
	const char *error;
	int ret;

	i_assert(bg->running == 0);
	bg->round = FALSE;
	bg->interrupted = FALSE;
	if (shared->failed > 0) {
		/* the session's own old-server session is likely as dead
		   as the workers' were: opened again at its next need */
		if (fuser->old_user != NULL)
			mail_user_deinit(&fuser->old_user);
		ferry_bg_backoff(bg);
		return;
	}
	bg->failures = 0;
	if (shared->busy > 0) {
		ferry_bg_schedule(bg, FERRY_BG_BUSY_MSECS);
		return;
	}
	ret = ferry_user_check_done(bg->user, &error);
	if (ret < 0)
		i_error(FERRY_LOG_PREFIX "%s", error);
	if (ret != 0)
		return;
	if (interrupted) {
		/* a stopped worker's folder may be partial: again */
		bg->idle_rounds = 0;
		ferry_bg_unlist(bg);
		ferry_bg_schedule(bg, 0);
	} else if (++bg->idle_rounds > 2) {
		i_warning(FERRY_LOG_PREFIX "event=background-stopped: folders "
			  "remain that a step cannot complete");
	} else {
		/* a folder appeared meanwhile: list again */
		ferry_bg_unlist(bg);
		ferry_bg_schedule(bg, FERRY_BG_BUSY_MSECS);
	}
}

static void ferry_bg_worker_input(struct ferry_bg_worker *w)
{
	struct ferry_background *bg = w->bg;
	char buf[64];
	ssize_t ret;

	ret = read(w->fd, buf, sizeof(buf));
	if (ret > 0 || (ret < 0 && errno == EINTR))
		return;
	/* the worker closed its end: it is exiting */
	ferry_bg_reap(w);
	if (bg->running == 0)
		ferry_bg_schedule(bg, 0);
}

/* Stops one worker after its batch in flight and waits for it: the
   client's command waits for one batch at most. */
static void ferry_bg_stop_worker(struct ferry_bg_worker *w, unsigned int slot)
{
	struct ferry_background *bg = w->bg;
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	struct pollfd pfd = { .fd = w->fd, .events = POLLIN };
	char buf[64];
	int ret;

	__atomic_store_n(&bg->shared->stop[slot], 1, __ATOMIC_SEQ_CST);
	/* a batch is bounded by the old server's timeouts; past
	   ferry_lock_timeout the worker is killed like a crash (the resume
	   rule covers it) */
	for (;;) {
		ret = poll(&pfd, 1, fuser->set.lock_timeout_secs * 1000);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret <= 0) {
			i_warning(FERRY_LOG_PREFIX "background worker %ld did "
				  "not stop within %us: killed", (long)w->pid,
				  fuser->set.lock_timeout_secs);
			(void)kill(w->pid, SIGKILL);
			break;
		}
		ssize_t n = read(w->fd, buf, sizeof(buf));
		if (n == 0 || (n < 0 && errno != EINTR))
			break;
	}
	ferry_bg_reap(w);
	bg->interrupted = TRUE;
	/* the others go on; a worker in its place once the command is
	   answered */
	ferry_bg_schedule(bg, 0);
}

static void ferry_bg_stop_workers(struct ferry_background *bg)
{
	unsigned int i;

	for (i = 0; i < FERRY_BG_MAX_WORKERS; i++)
		__atomic_store_n(&bg->shared->stop[i], 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < FERRY_BG_MAX_WORKERS; i++) {
		if (bg->workers[i].io != NULL)
			ferry_bg_stop_worker(&bg->workers[i], i);
	}
	i_assert(bg->running == 0);
}

/* One more worker in the round, in a free slot. */
static bool ferry_bg_add_worker(struct ferry_background *bg)
{
	pid_t parent = getpid();
	int open_fds[FERRY_BG_MAX_WORKERS], fd;
	unsigned int i, n = 0, slot = FERRY_BG_MAX_WORKERS;

	for (i = 0; i < FERRY_BG_MAX_WORKERS; i++) {
		if (bg->workers[i].io != NULL)
			open_fds[n++] = bg->workers[i].fd;
		else if (slot == FERRY_BG_MAX_WORKERS)
			slot = i;
	}
	i_assert(slot < FERRY_BG_MAX_WORKERS);
	struct ferry_bg_worker *w = &bg->workers[slot];
	bg->shared->stop[slot] = 0;
	bg->shared->current[slot] = 0;
	/* a worker never outlives the session */
	pid_t pid = ferry_worker_fork(parent, open_fds, n, &fd);
	if (pid < 0)
		return FALSE;
	if (pid == 0)
		ferry_bg_worker_main(bg, slot, fd);
	w->bg = bg;
	w->pid = pid;
	w->fd = fd;
	w->io = io_add_to(io_loop_get_root(), w->fd, IO_READ,
			  ferry_bg_worker_input, w);
	bg->running++;
	return TRUE;
}

static void ferry_bg_step(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	unsigned int wait = fuser->set.background_idle_msecs;
	unsigned int n = ferry_bg_worker_count(bg), want;
	int idle;

	timeout_remove(&bg->to);
	if (fuser->done != 0)
		return;
	if (!bg->round) {
		if (bg->running > 0)
			return; /* the last one's end starts the next */
		if (!bg->listed && !ferry_bg_list(bg)) {
			ferry_bg_backoff(bg);
			return;
		}
		i_zero(bg->shared);
		if (bg->claimed_count > 0)
			memset(bg->claimed, 0, bg->claimed_count * sizeof(uint32_t));
		bg->round = TRUE;
	}
	idle = timeval_diff_msecs(&ioloop_timeval, &bg->last_activity);
	want = idle >= (int)wait ? n : n - 1;
	if (bg->shared->failed == 0 &&
	    bg->shared->next < array_count(&bg->names)) {
		if (bg->running < want && want == n &&
		    fuser->old_user != NULL) {
			/* the idle-time worker replaces the session's own
			   old-server session */
			mail_user_deinit(&fuser->old_user);
		}
		while (bg->running < want) {
			if (!ferry_bg_add_worker(bg)) {
				bg->shared->failed++;
				break;
			}
		}
		if (want < n && bg->running < n)
			ferry_bg_schedule(bg, wait - idle);
	}
	if (bg->running == 0 && (bg->shared->failed > 0 ||
				 bg->shared->next >= array_count(&bg->names)))
		ferry_bg_round_done(bg);
}

void ferry_bg_start(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg;
	void *shared;

	/* only a session's process knows when its client waits */
	if (user->service == NULL || strcmp(user->service, "imap") != 0 ||
	    fuser->done != 0 || fuser->bg != NULL ||
	    fuser->set.background_idle_msecs == 0)
		return;
	shared = mmap(NULL, sizeof(struct ferry_bg_shared),
		      PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED) {
		i_error(FERRY_LOG_PREFIX "event=background-failed "
			"error=mmap() failed: %m");
		return;
	}
	bg = fuser->bg = p_new(user->pool, struct ferry_background, 1);
	bg->user = user;
	bg->shared = shared;
	bg->pool = pool_alloconly_create("ferry background", 1024);
	p_array_init(&bg->names, bg->pool, 32);
	bg->last_activity = ioloop_timeval;
	/* from the login on: the first step runs once the login is
	   answered */
	ferry_bg_schedule(bg, 0);
}

void ferry_bg_activity(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg;

	if (fuser == NULL || fuser->bg == NULL)
		return;
	bg = fuser->bg;
	bg->last_activity = ioloop_timeval;
	/* the idle-time worker once the client is quiet again */
	if (bg->round && bg->to == NULL)
		ferry_bg_schedule(bg, fuser->set.background_idle_msecs);
}

void ferry_bg_claim(struct mail_user *user, const char *vname)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg;
	const char *const *names;
	unsigned int i, count;

	if (fuser == NULL || fuser->bg == NULL || fuser->bg->claimed == NULL)
		return;
	bg = fuser->bg;
	names = array_get(&bg->names, &count);
	for (i = 0; i < count; i++) {
		if (strcmp(names[i], vname) == 0)
			break;
	}
	if (i == count)
		return;
	/* claimed before looking at the workers: a worker taking it
	   meanwhile sees the claim, or is seen in it */
	__atomic_store_n(&bg->claimed[i], 1, __ATOMIC_SEQ_CST);
	for (unsigned int slot = 0; slot < FERRY_BG_MAX_WORKERS; slot++) {
		if (bg->workers[slot].io != NULL &&
		    __atomic_load_n(&bg->shared->current[slot],
				    __ATOMIC_SEQ_CST) == i + 1)
			ferry_bg_stop_worker(&bg->workers[slot], slot);
	}
}

void ferry_bg_need_old(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg;
	unsigned int n, slot;

	if (fuser == NULL || fuser->bg == NULL)
		return;
	bg = fuser->bg;
	n = ferry_bg_worker_count(bg);
	/* the session's own session takes the idle-time worker's place */
	for (slot = FERRY_BG_MAX_WORKERS; slot > 0 && bg->running >= n; slot--) {
		if (bg->workers[slot - 1].io != NULL)
			ferry_bg_stop_worker(&bg->workers[slot - 1], slot - 1);
	}
}

void ferry_bg_deinit(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg = fuser->bg;

	if (bg == NULL)
		return;
	ferry_bg_stop_workers(bg);
	timeout_remove(&bg->to);
	ferry_bg_unlist(bg);
	(void)munmap(bg->shared, sizeof(*bg->shared));
	pool_unref(&bg->pool);
	fuser->bg = NULL;
}
