/* Per-batch durability of a pull (docs/design.md, "The UID rule", step 2),
   overlapped with the next batch where the pull asks for it.

   A batch's mail files are written without an fsync each; after the
   batch's commit one syncfs() makes files, renames and index durable
   together. That syncfs() runs in a helper thread, so the next batch is
   fetched from the old server and saved (into tmp/, invisible until its
   commit) while the disk writes this one; the next commit waits for it
   first. So a batch is committed only once the batch before it is
   durable, and a folder is marked complete only once its last batch is.
   A pull that does not overlap (it would wait at once) gets its syncfs()
   in the calling thread: no thread is made only to be joined.

   Once durable, a batch's mail files leave the page cache
   (POSIX_FADV_DONTNEED on each): a migration writes every mailbox once
   and reads it back rarely, so its mail should not push the server's
   working set (indexes, the mail users are reading) out of memory, and
   the next batch's writes reuse the freed pages instead of taking new
   ones. The files are the batch's saves' own descriptors, duplicated at
   each save (ferry_durable_file) and closed once dropped.

   The thread calls nothing but syncfs(), posix_fadvise() and close(), and
   sees no signal (they stay with the process's main thread and Dovecot's
   handlers). If it cannot be started, all of it runs in the calling
   thread, as it did before. */

#define _GNU_SOURCE /* syncfs() */
#include "lib.h"
#include "ferry-plugin.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <sys/resource.h>

/* the thread only makes system calls: a small stack is plenty, and keeps
   the process's address space (vsz_limit) as it was */
#define FERRY_DURABLE_STACK_SIZE (64 * 1024)

/* The most descriptors one batch holds: a quarter of the process's limit,
   so with the helper thread's batch at most half (the saves themselves,
   imapc and the index need theirs), and at most FERRY_DURABLE_MAX_FILES.
   A batch's files beyond it stay cached. */
#define FERRY_DURABLE_MAX_FILES 4096

static void ferry_durable_drop(ARRAY_TYPE(ferry_fd) *fds, bool durable)
{
	const int *fdp;

	/* only clean pages can be dropped: not after a failed sync */
	array_foreach(fds, fdp) {
		if (durable)
			(void)posix_fadvise(*fdp, 0, 0, POSIX_FADV_DONTNEED);
		(void)close(*fdp);
	}
	array_clear(fds);
}

static void *ferry_durable_thread(void *context)
{
	struct ferry_durable *d = context;

	d->error = syncfs(d->fd) < 0 ? errno : 0;
	if (array_is_created(&d->syncing))
		ferry_durable_drop(&d->syncing, d->error == 0);
	return NULL;
}

/* the process's limit does not change during a pull: read once */
static unsigned int ferry_durable_max_files(void)
{
	static unsigned int max_files = 0;
	struct rlimit rl;

	if (max_files == 0) {
		max_files = FERRY_DURABLE_MAX_FILES;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
		    rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 4 < max_files)
			max_files = I_MAX(rl.rlim_cur / 4, 1);
	}
	return max_files;
}

void ferry_durable_file(struct ferry_durable *d, int fd)
{
	int dup_fd;

	if (fd < 0)
		return;
	if (!array_is_created(&d->files)) {
		i_array_init(&d->files, 256);
		i_array_init(&d->syncing, 256);
	}
	if (array_count(&d->files) >= ferry_durable_max_files())
		return;
	dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (dup_fd >= 0)
		array_push_back(&d->files, &dup_fd);
}

void ferry_durable_deinit(struct ferry_durable *d)
{
	i_assert(!d->running);
	if (!array_is_created(&d->files))
		return;
	/* files of a batch that was not made durable stay as they are */
	ferry_durable_drop(&d->files, FALSE);
	ferry_durable_drop(&d->syncing, FALSE);
	array_free(&d->files);
	array_free(&d->syncing);
}

static int ferry_durable_result(struct ferry_durable *d, const char **error_r)
{
	int ret = 0;

	if (d->error != 0) {
		*error_r = t_strdup_printf("syncfs(%s) failed: %s", d->path,
					   strerror(d->error));
		ret = -1;
	}
	if (close(d->fd) < 0)
		i_error("close(%s) failed: %m", d->path);
	d->fd = -1;
	i_free(d->path);
	d->error = 0;
	return ret;
}

int ferry_durable_start(struct ferry_durable *d, const char *path,
			bool overlap, const char **error_r)
{
	pthread_attr_t attr;
	sigset_t all, old;
	int err;

	i_assert(!d->running);
	d->fd = open(path, O_RDONLY | O_DIRECTORY);
	if (d->fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	d->path = i_strdup(path);
	d->error = 0;
	if (array_is_created(&d->files)) {
		/* this batch's files are the thread's from here on; the next
		   batch's are collected in the (empty) other array */
		ARRAY_TYPE(ferry_fd) next = d->syncing;

		i_assert(array_count(&next) == 0);
		d->syncing = d->files;
		d->files = next;
	}
	if (!overlap) {
		ferry_durable_thread(d);
		return ferry_durable_result(d, error_r);
	}

	sigfillset(&all);
	if (pthread_attr_init(&attr) != 0) {
		err = -1;
	} else {
		(void)pthread_attr_setstacksize(&attr, FERRY_DURABLE_STACK_SIZE);
		/* the thread is created with every signal blocked */
		(void)pthread_sigmask(SIG_SETMASK, &all, &old);
		err = pthread_create(&d->thread, &attr, ferry_durable_thread, d);
		(void)pthread_sigmask(SIG_SETMASK, &old, NULL);
		(void)pthread_attr_destroy(&attr);
	}
	if (err == 0) {
		d->running = TRUE;
		return 0;
	}
	/* no thread: durable now, in this thread */
	ferry_durable_thread(d);
	return ferry_durable_result(d, error_r);
}

int ferry_durable_wait(struct ferry_durable *d, const char **error_r)
{
	if (!d->running)
		return 0;
	(void)pthread_join(d->thread, NULL);
	d->running = FALSE;
	return ferry_durable_result(d, error_r);
}
