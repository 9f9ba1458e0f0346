/* The rest of a logged-in user, completed by the imap process that serves
   them while the client is idle (docs/design.md, "Background completion").

   The process is single-threaded: a step runs from the ioloop between
   client commands, one batch at most (ferry_pull_folder_step), so a
   command that arrives meanwhile waits for that batch and no more; after
   it, the client's own storage calls keep the background away until the
   client has been quiet for ferry_background_idle_msecs again. The folder a
   command needs is pulled by that command, whole, before any further
   step. Each step takes the folder's dsync lock like every other writer
   and never waits for it: a folder locked by another writer (ferryd's
   bulk pull, another session) is left to it and looked at again on the
   next round. */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "time-util.h"
#include "ferry-plugin.h"

/* another writer holds a folder: look again after */
#define FERRY_BG_BUSY_MSECS 1000
/* a step failed (old server down...): the next attempt after this,
   doubled per failure in a row up to FERRY_BG_RETRY_MAX_MSECS; a step that
   waits for a silent old server holds the session up to
   ferry_old_connect_timeout, so it is not tried often */
#define FERRY_BG_RETRY_MSECS (60 * 1000)
#define FERRY_BG_RETRY_MAX_MSECS (16 * 60 * 1000)

struct ferry_background {
	struct mail_user *user;
	struct timeout *to;
	struct timeval last_activity;
	pool_t pool;
	ARRAY_TYPE(const_string) names;
	unsigned int next, busy;
	/* failed steps in a row */
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

static int ferry_bg_collect(struct mail_user *user, const char *vname,
			    void *context)
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

/* The end of a round over every folder. */
static void ferry_bg_round_done(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	const char *error;
	int ret;

	if (bg->busy > 0) {
		ferry_bg_schedule(bg, FERRY_BG_BUSY_MSECS);
		bg->next = bg->busy = 0;
		return;
	}
	ret = ferry_user_check_done(bg->user, &error);
	if (ret < 0)
		i_error(FERRY_LOG_PREFIX "%s", error);
	if (ret > 0 && fuser->old_user != NULL) {
		/* nothing is read from the old server again */
		mail_user_deinit(&fuser->old_user);
	}
	if (ret == 0 && ++bg->idle_rounds > 2) {
		i_warning(FERRY_LOG_PREFIX "event=background-stopped: folders "
			  "remain that a step cannot complete");
	} else if (ret == 0) {
		/* a folder appeared meanwhile: list again */
		bg->listed = FALSE;
		bg->next = 0;
		array_clear(&bg->names);
		ferry_bg_schedule(bg, FERRY_BG_BUSY_MSECS);
	}
}

static void ferry_bg_step(struct ferry_background *bg)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(bg->user);
	struct ferry_pull_result res;
	enum mail_error code;
	const char *vname, *error;
	unsigned int wait = fuser->set.background_idle_msecs;
	int idle, ret;

	timeout_remove(&bg->to);
	if (fuser->done != 0)
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
	if (bg->next >= array_count(&bg->names)) {
		ferry_bg_round_done(bg);
		return;
	}

	vname = array_idx_elem(&bg->names, bg->next);
	T_BEGIN {
		ret = ferry_pull_folder_step(bg->user, vname, 1, &res, &code,
					     &error);
	} T_END;
	if (ret < 0) {
		/* the next folder, but later: the old server may be down */
		bg->next++;
		ferry_bg_backoff(bg);
		return;
	}
	bg->failures = 0;
	if (res.busy)
		bg->busy++;
	if (res.busy || res.state != FERRY_BOX_PENDING || res.copied == 0)
		bg->next++;
	ferry_bg_schedule(bg, 0);
}

void ferry_bg_start(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	struct ferry_background *bg;

	/* only a session's process knows when its client is idle */
	if (user->service == NULL || strcmp(user->service, "imap") != 0 ||
	    fuser->done != 0 || fuser->bg != NULL ||
	    fuser->set.background_idle_msecs == 0)
		return;
	bg = fuser->bg = p_new(user->pool, struct ferry_background, 1);
	bg->user = user;
	bg->pool = pool_alloconly_create("ferry background", 1024);
	p_array_init(&bg->names, bg->pool, 32);
	bg->last_activity = ioloop_timeval;
	ferry_bg_schedule(bg, fuser->set.background_idle_msecs);
}

void ferry_bg_activity(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser->bg != NULL)
		fuser->bg->last_activity = ioloop_timeval;
}

void ferry_bg_deinit(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser->bg == NULL)
		return;
	timeout_remove(&fuser->bg->to);
	pool_unref(&fuser->bg->pool);
	fuser->bg = NULL;
}
