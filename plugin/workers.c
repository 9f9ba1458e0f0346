/* The folders of one pass copied in parallel (ferry_parallel): the
   calling process and ferry_parallel - 1 forked workers, each with its
   own old-server session (the calling process keeps the one it has), take
   the next folder from a shared counter until none is left. A worker pulls a folder
   exactly as a single process does (under the folder's dsync lock, batch
   by batch), so every crash and race rule holds per worker; the workers
   die with the process that started them (a kill -9 of the pull is a
   kill -9 of each copy in flight). Results come back over a pipe, one
   tab-escaped line per folder, and are reported by the calling process. */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "str.h"
#include "strescape.h"
#include "write-full.h"
#include "ferry-plugin.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

struct ferry_worker {
	pid_t pid;
	int fd;
	string_t *input;
};

struct ferry_worker_report_ctx {
	struct ferry_user *fuser;
	int fd;
	unsigned int idx;
};

unsigned int ferry_workers_default(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	/* one per CPU, at most 4: each is a session on the old server */
	return cpus < 1 ? 1 : (unsigned int)I_MIN(cpus, 4);
}

static void ferry_worker_report(const struct ferry_pull_result *res,
				const char *error, void *context)
{
	struct ferry_worker_report_ctx *wctx = context;
	string_t *line = t_str_new(128);

	str_printfa(line, "%u\t%u\t%d\t%u\t%"PRIuUOFF_T"\t%u\t%u\t%u\t%u\t%d\t%d"
		    "\t%u\t%u\t%d\t",
		    wctx->idx, res->state, res->completed ? 1 : 0, res->copied,
		    res->bytes, res->renumbered, res->flag_changes,
		    res->expunged, res->skipped,
		    res->uidvalidity_changed ? 1 : 0, res->busy ? 1 : 0,
		    res->old_messages, res->local_messages,
		    wctx->fuser->old_refused ? 1 : 0);
	if (error != NULL) {
		str_append_c(line, 'E');
		str_append_tabescaped(line, error);
	}
	str_append_c(line, '\n');
	/* one write per line: the reader never sees half a result of a
	   worker that is killed */
	if (write_full(wctx->fd, str_data(line), str_len(line)) < 0)
		i_fatal(FERRY_LOG_PREFIX "worker: write(result pipe) failed: %m");
}

static void ATTR_NORETURN
ferry_worker_main(struct mail_user *user, const char *const *names,
		  unsigned int count, uint32_t *next, int fd,
		  ferry_pass_folder_func_t *func, void *context)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_worker_report_ctx wctx = { .fuser = fuser, .fd = fd };
	unsigned int idx;

	/* the calling process's old-server session and ioloop stay its own:
	   the session is forgotten here, never logged out (its socket is
	   shared), and this worker opens its own */
	fuser->old_user = NULL;
	(void)io_loop_create();
	while ((idx = __atomic_fetch_add(next, 1, __ATOMIC_SEQ_CST)) < count) {
		wctx.idx = idx;
		T_BEGIN {
			func(user, names[idx], ferry_worker_report, &wctx,
			     context);
		} T_END;
	}
	if (fuser->old_user != NULL)
		mail_user_deinit(&fuser->old_user);
	/* nothing of the calling process is torn down twice: its buffered
	   output, its ioloop and its users stay its own */
	_exit(0);
}

static bool ferry_worker_parse(const char *line, unsigned int count,
			       unsigned int *idx_r,
			       struct ferry_pull_result *res, bool *refused_r,
			       const char **error_r)
{
	const char *const *f = t_strsplit_tabescaped(line);
	unsigned int n[14], i;
	uoff_t bytes;

	if (str_array_length(f) != 15)
		return FALSE;
	for (i = 0; i < 14; i++) {
		if (i == 4 ? str_to_uoff(f[i], &bytes) < 0 :
		    str_to_uint(f[i], &n[i]) < 0)
			return FALSE;
	}
	if (n[0] >= count)
		return FALSE;
	*idx_r = n[0];
	i_zero(res);
	res->state = n[1];
	res->completed = n[2] != 0;
	res->copied = n[3];
	res->bytes = bytes;
	res->renumbered = n[5];
	res->flag_changes = n[6];
	res->expunged = n[7];
	res->skipped = n[8];
	res->uidvalidity_changed = n[9] != 0;
	res->busy = n[10] != 0;
	res->old_messages = n[11];
	res->local_messages = n[12];
	*refused_r = n[13] != 0;
	*error_r = f[14][0] == 'E' ? f[14] + 1 : NULL;
	return TRUE;
}

/* Reads what the workers report until every pipe is closed. */
static void ferry_workers_collect(struct ferry_user *fuser,
				  struct ferry_worker *w, unsigned int nw,
				  const char *const *names, unsigned int count,
				  bool *reported,
				  ferry_pass_report_func_t *report,
				  void *report_ctx)
{
	struct pollfd pfd[nw];
	unsigned int open = nw, i;
	char buf[4096];

	while (open > 0) {
		for (i = 0; i < nw; i++) {
			pfd[i].fd = w[i].fd;
			pfd[i].events = POLLIN;
			pfd[i].revents = 0;
		}
		if (poll(pfd, nw, -1) < 0) {
			if (errno == EINTR)
				continue;
			i_fatal("poll() failed: %m");
		}
		for (i = 0; i < nw; i++) {
			if (pfd[i].revents == 0)
				continue;
			ssize_t ret = read(w[i].fd, buf, sizeof(buf));
			if (ret < 0 && errno == EINTR)
				continue;
			if (ret <= 0) {
				i_close_fd(&w[i].fd);
				open--;
				continue;
			}
			str_append_data(w[i].input, buf, ret);
			const char *data = str_c(w[i].input), *nl;
			size_t used = 0;
			while ((nl = strchr(data + used, '\n')) != NULL) {
				struct ferry_pull_result res;
				const char *line, *error;
				unsigned int idx;
				bool refused;

				T_BEGIN {
					line = t_strdup_until(data + used, nl);
					if (!ferry_worker_parse(line, count, &idx,
								&res, &refused,
								&error)) {
						i_error(FERRY_LOG_PREFIX "worker: "
							"unparsable result: %s",
							line);
					} else {
						res.vname = names[idx];
						reported[idx] = TRUE;
						/* the exit code says so */
						if (refused)
							fuser->old_refused = TRUE;
						report(&res, error, report_ctx);
					}
				} T_END;
				used = nl - data + 1;
			}
			str_delete(w[i].input, 0, used);
		}
	}
}

pid_t ferry_worker_fork(pid_t parent, const int *open_fds,
			unsigned int open_count, int *fd_r)
{
	int fds[2];

	if (pipe(fds) < 0) {
		i_error(FERRY_LOG_PREFIX "pipe() failed: %m");
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		i_error(FERRY_LOG_PREFIX "fork() failed: %m");
		i_close_fd(&fds[0]);
		i_close_fd(&fds[1]);
		return -1;
	}
	if (pid == 0) {
		/* a worker never outlives the process that started it */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 ||
		    getppid() != parent)
			_exit(1);
		for (unsigned int j = 0; j < open_count; j++)
			(void)close(open_fds[j]);
		i_close_fd(&fds[0]);
		*fd_r = fds[1];
		return 0;
	}
	i_close_fd(&fds[1]);
	*fd_r = fds[0];
	return pid;
}

int ferry_workers_run(struct mail_user *user, const char *const *names,
		      unsigned int count, unsigned int workers,
		      ferry_pass_folder_func_t *func, void *context,
		      ferry_pass_report_func_t *report, void *report_ctx,
		      const char **error_r)
{
	struct ferry_worker w[workers];
	pid_t parent = getpid();
	uint32_t *next;
	bool *reported;
	unsigned int nw = 0, i;
	int open_fds[workers], fd, status;

	next = mmap(NULL, sizeof(*next), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (next == MAP_FAILED) {
		*error_r = t_strdup_printf("mmap() failed: %m");
		return -1;
	}
	*next = 0;
	reported = t_new(bool, count);
	i_info(FERRY_LOG_PREFIX "event=parallel workers=%u folders=%u",
	       workers, count);
	for (i = 1; i < workers; i++) {
		/* fewer workers than asked for: the ones there are do all */
		pid_t pid = ferry_worker_fork(parent, open_fds, nw, &fd);
		if (pid < 0)
			break;
		if (pid == 0) {
			ferry_worker_main(user, names, count, next, fd,
					  func, context);
		}
		open_fds[nw] = fd;
		w[nw].pid = pid;
		w[nw].fd = fd;
		w[nw].input = t_str_new(256);
		nw++;
	}
	/* this process is a worker too; its results are reported as they
	   come, the forked ones' after (a pipe holds 64 KB of them) */
	while ((i = __atomic_fetch_add(next, 1, __ATOMIC_SEQ_CST)) < count) {
		reported[i] = TRUE;
		T_BEGIN {
			func(user, names[i], report, report_ctx, context);
		} T_END;
	}
	ferry_workers_collect(FERRY_USER_CONTEXT(user), w, nw, names, count,
			      reported, report, report_ctx);
	for (i = 0; i < nw; i++) {
		while (waitpid(w[i].pid, &status, 0) < 0) {
			if (errno != EINTR)
				i_fatal("waitpid() failed: %m");
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			i_error(FERRY_LOG_PREFIX "worker %ld ended with %s %d",
				(long)w[i].pid, WIFSIGNALED(status) ?
				"signal" : "status", WIFSIGNALED(status) ?
				WTERMSIG(status) : WEXITSTATUS(status));
		}
	}
	(void)munmap(next, sizeof(*next));
	/* a folder no worker reported on (a worker died, or none could be
	   started for it) failed: it is retried like any failed folder */
	for (i = 0; i < count; i++) {
		if (reported[i])
			continue;
		struct ferry_pull_result res;
		i_zero(&res);
		res.vname = names[i];
		report(&res, "the worker copying this folder ended without "
		       "a result; retry", report_ctx);
	}
	return 0;
}
