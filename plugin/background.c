/* The rest of a logged-in user, completed by the imap process that serves
   them while the client is idle (docs/design.md, "Background completion").

   Once the client has been quiet for ferry_background_idle_msecs, the
   session forks workers (at most ferry_parallel; one when ferryd is
   configured, whose own pull is the second stream) and closes its own
   old-server session meanwhile, so the user never has more old-server
   sessions than a bulk pull of the user would. Each worker takes the next
   folder from a shared counter and pulls it whole, with the folder open
   on both servers from its first batch to its last, under the folder's
   dsync lock like every other writer, never waiting for it (a folder
   another writer holds is left to it and looked at again a second
   later). The session's own process copies nothing and stays free for
   its client.

   The client's next storage call (any folder opened, any listing) raises
   the shared stop flag and waits for the workers: each stops after the
   batch it is in, commits it and exits. So a command waits for one batch
   at most, and then finds every folder lock free and only its own
   old-server session. The folder a command needs is pulled by that
   command, whole, with progress lines, before the workers start again
   (after the client has been quiet again).

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
#include <sys/wait.h>

/* another writer holds a folder: look again after */
#define FERRY_BG_BUSY_MSECS 1000
/* a step failed (old server down...): the next attempt after this,
   doubled per failure in a row up to FERRY_BG_RETRY_MAX_MSECS; a step that
   waits for a silent old server holds a worker up to
   ferry_old_connect_timeout, so it is not tried often */
#define FERRY_BG_RETRY_MSECS (60 * 1000)
#define FERRY_BG_RETRY_MAX_MSECS (16 * 60 * 1000)
/* the most workers of one session */
#define FERRY_BG_MAX_WORKERS 8

/* shared with the workers (MAP_SHARED) */
struct ferry_bg_shared {
	uint32_t next;	 /* the next folder to take */
	uint32_t stop;	 /* set: stop after the batch in flight */
	uint32_t failed; /* folders whose pull failed */
	uint32_t busy;	 /* folders another writer held */
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
	struct ferry_bg_worker workers[FERRY_BG_MAX_WORKERS];
	unsigned int running;
	/* failed rounds in a row */
	unsigned int failures;
	/* rounds in a row that ended with the user still not done */
	unsigned int idle_rounds;
	bool listed;
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

	/* INBOX first: the folder a client shows first */
	if (strcmp(vname, "INBOX") == 0)
		array_insert(&bg->names, 0, &name, 1);
	else
		array_push_back(&bg->names, &name);
	return 0;
}

static bool ferry_bg_list(struct ferry_background *bg)
{
	const char *error;

	if (ferry_tree_sync(bg->user, &error) < 0 ||
	    ferry_each_folder(bg->user, ferry_bg_collect, bg, &error) < 0) {
		i_error(FERRY_LOG_PREFIX "event=background-failed error=%s",
			error);
		array_clear(&bg->names);
		return FALSE;
	}
	bg->listed = TRUE;
	i_info(FERRY_LOG_PREFIX "event=background folders=%u: the rest of "
	       "the user is completed while the client is idle",
	       array_count(&bg->names));
	return TRUE;
}

/* How many workers: ferry_parallel (the old-server sessions a bulk pull
   of the user may have), one when ferryd is configured (its own pull of
   the user, counted in its per-host accounting, is the second stream). */
static unsigned int ferry_bg_worker_count(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	const char *url = ferry_setting_str(bg->user, "ferry_ferryd_url");
	unsigned int n = fuser->set.parallel;

	if (url != NULL && *url != '\0')
		n = 1;
	n = I_MIN(n, array_count(&bg->names));
	return I_MAX(I_MIN(n, FERRY_BG_MAX_WORKERS), 1);
}

static void ATTR_NORETURN
ferry_bg_worker_main(struct ferry_background *bg, int fd)
{
	struct mail_user *user = bg->user;
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_bg_shared *shared = bg->shared;
	const char *const *names;
	unsigned int count, idx;

	/* the session's ioloop, timeouts and client stay its own: nothing
	   of them is run or torn down here */
	fuser->bg = NULL;
	fuser->old_user = NULL;
	(void)io_loop_create();
	names = array_get(&bg->names, &count);
	while (__atomic_load_n(&shared->stop, __ATOMIC_SEQ_CST) == 0 &&
	       (idx = __atomic_fetch_add(&shared->next, 1,
					 __ATOMIC_SEQ_CST)) < count) {
		struct ferry_pull_result res;
		enum mail_error code;
		const char *error;
		int ret;

		T_BEGIN {
			ret = ferry_pull_folder_step(user, names[idx],
						     &shared->stop, &res,
						     &code, &error);
		} T_END;
		if (ret < 0) {
			/* the old server may be down: no folder after this
			   one in this round, by any worker */
			__atomic_fetch_add(&shared->failed, 1, __ATOMIC_SEQ_CST);
			__atomic_store_n(&shared->stop, 1, __ATOMIC_SEQ_CST);
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
	i_assert(bg->running > 0);
	bg->running--;
}

/* The end of a round: every worker has exited. */
static void ferry_bg_round_done(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	struct ferry_bg_shared *shared = bg->shared;
	const char *error;
	int ret;

	if (shared->failed > 0) {
		ferry_bg_backoff(bg);
		return;
	}
	bg->failures = 0;
	if (shared->stop != 0) {
		/* the client spoke: again once it is quiet */
		ferry_bg_schedule(bg, fuser->set.background_idle_msecs);
		return;
	}
	if (shared->busy > 0) {
		ferry_bg_schedule(bg, FERRY_BG_BUSY_MSECS);
		return;
	}
	ret = ferry_user_check_done(bg->user, &error);
	if (ret < 0)
		i_error(FERRY_LOG_PREFIX "%s", error);
	if (ret == 0 && ++bg->idle_rounds > 2) {
		i_warning(FERRY_LOG_PREFIX "event=background-stopped: folders "
			  "remain that a step cannot complete");
	} else if (ret == 0) {
		/* a folder appeared meanwhile: list again */
		bg->listed = FALSE;
		array_clear(&bg->names);
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
		ferry_bg_round_done(bg);
}

/* Stops the workers after their batch in flight and waits for them: the
   client's command waits for one batch at most. */
static void ferry_bg_stop_workers(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	unsigned int i;

	if (bg->running == 0)
		return;
	__atomic_store_n(&bg->shared->stop, 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < FERRY_BG_MAX_WORKERS; i++) {
		struct ferry_bg_worker *w = &bg->workers[i];
		struct pollfd pfd = { .fd = w->fd, .events = POLLIN };
		char buf[64];
		int ret;

		if (w->io == NULL)
			continue;
		/* a batch is bounded by the old server's timeouts; past
		   ferry_lock_timeout the worker is killed like a crash
		   (the resume rule covers it) */
		for (;;) {
			ret = poll(&pfd, 1, fuser->set.lock_timeout_secs * 1000);
			if (ret < 0 && errno == EINTR)
				continue;
			if (ret <= 0) {
				i_warning(FERRY_LOG_PREFIX "background worker "
					  "%ld did not stop within %us: killed",
					  (long)w->pid,
					  fuser->set.lock_timeout_secs);
				(void)kill(w->pid, SIGKILL);
				break;
			}
			ssize_t n = read(w->fd, buf, sizeof(buf));
			if (n == 0 || (n < 0 && errno != EINTR))
				break;
		}
		ferry_bg_reap(w);
	}
	i_assert(bg->running == 0);
	ferry_bg_schedule(bg, fuser->set.background_idle_msecs);
}

/* A round: workers over every folder, until done or stopped. */
static void ferry_bg_start_workers(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	unsigned int i, n = ferry_bg_worker_count(bg);
	pid_t parent = getpid();
	int open_fds[n + 1], fd;

	i_zero(bg->shared);
	/* the workers' sessions replace this one while they run */
	if (fuser->old_user != NULL)
		mail_user_deinit(&fuser->old_user);
	for (i = 0; i < n; i++) {
		struct ferry_bg_worker *w = &bg->workers[i];

		/* a worker never outlives the session */
		pid_t pid = ferry_worker_fork(parent, open_fds, i, &fd);
		if (pid < 0)
			break;
		if (pid == 0)
			ferry_bg_worker_main(bg, fd);
		open_fds[i] = fd;
		w->bg = bg;
		w->pid = pid;
		w->fd = fd;
		w->io = io_add_to(io_loop_get_root(), w->fd, IO_READ,
				  ferry_bg_worker_input, w);
		bg->running++;
	}
	if (bg->running == 0) {
		bg->shared->failed++;
		ferry_bg_round_done(bg);
	}
}

static void ferry_bg_step(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	unsigned int wait = fuser->set.background_idle_msecs;
	int idle;

	timeout_remove(&bg->to);
	if (fuser->done != 0 || bg->running > 0)
		return;
	idle = timeval_diff_msecs(&ioloop_timeval, &bg->last_activity);
	if (idle < (int)wait) {
		ferry_bg_schedule(bg, wait - idle);
		return;
	}
	if (!bg->listed && !ferry_bg_list(bg)) {
		ferry_bg_backoff(bg);
		return;
	}
	if (array_count(&bg->names) == 0) {
		ferry_bg_round_done(bg);
		return;
	}
	ferry_bg_start_workers(bg);
}

void ferry_bg_start(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg;
	void *shared;

	/* only a session's process knows when its client is idle */
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
	ferry_bg_schedule(bg, fuser->set.background_idle_msecs);
}

void ferry_bg_activity(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser == NULL || fuser->bg == NULL)
		return;
	fuser->bg->last_activity = ioloop_timeval;
	ferry_bg_stop_workers(fuser->bg);
}

void ferry_bg_deinit(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg = fuser->bg;

	if (bg == NULL)
		return;
	ferry_bg_stop_workers(bg);
	timeout_remove(&bg->to);
	(void)munmap(bg->shared, sizeof(*bg->shared));
	pool_unref(&bg->pool);
	fuser->bg = NULL;
}
