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

   The thread calls nothing but syncfs() and sees no signal (they stay
   with the process's main thread and Dovecot's handlers). If it cannot be
   started, syncfs() runs in the calling thread, as it did before. */

#define _GNU_SOURCE /* syncfs() */
#include "lib.h"
#include "ferry-plugin.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

/* the thread only calls syncfs(): a small stack is plenty, and keeps the
   process's address space (vsz_limit) as it was */
#define FERRY_DURABLE_STACK_SIZE (64 * 1024)

static void *ferry_durable_thread(void *context)
{
	struct ferry_durable *d = context;

	d->error = syncfs(d->fd) < 0 ? errno : 0;
	return NULL;
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
