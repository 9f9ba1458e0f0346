/* The root policy and the privilege drop (see runas.h). */
#include "runas.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int runas_plan(struct runas *ra, const struct ferry_config *cfg, const char *conf_path,
	       char **err_r)
{
	uid_t me = geteuid();
	struct passwd *pw;

	memset(ra, 0, sizeof(*ra));
	if (cfg->user == NULL || cfg->user[0] == '\0') {
		if (me == 0 && !cfg->allow_root)
			return config_fail(err_r, "refusing to run as root: set user = ... in %s (an"
				    " unprivileged account for ferryd; or allow_root = yes)",
				    conf_path);
		return 0;
	}
	errno = 0;
	if ((pw = getpwnam(cfg->user)) == NULL)
		return config_fail(err_r, "%s: user = %s: %s", conf_path, cfg->user,
			    errno != 0 ? strerror(errno) : "no such user");
	if (pw->pw_uid == 0)
		return config_fail(err_r, "%s: user = %s has uid 0: ferryd would keep root's privileges;"
			    " name an unprivileged account", conf_path, cfg->user);
	if (me != 0) {
		/* not root: nothing to switch, but it must be that user */
		if (pw->pw_uid != me)
			return config_fail(err_r, "%s: user = %s (uid %u), but ferryd runs as uid %u and"
				    " cannot switch: start it as root or as %s", conf_path,
				    cfg->user, (unsigned)pw->pw_uid, (unsigned)me, cfg->user);
		return 0;
	}
	ra->drop = 1;
	ra->uid = pw->pw_uid;
	ra->gid = pw->pw_gid;
	ra->name = strdup(cfg->user);
	return 0;
}

void runas_keep(struct runas *ra, const char *path, int is_dir)
{
	struct stat sb;

	if (path == NULL || *path == '\0' || ra->npaths == RUNAS_MAX_PATHS)
		return;
	ra->paths[ra->npaths].path = strdup(path);
	ra->paths[ra->npaths].dir = is_dir;
	ra->paths[ra->npaths].existed = lstat(path, &sb) == 0;
	ra->npaths++;
}

int runas_drop(struct runas *ra, char **err_r)
{
	struct stat sb;

	if (!ra->drop)
		return 0;
	/* only what ferryd created: an admin's files keep their owner */
	for (int i = 0; i < ra->npaths; i++) {
		const char *p = ra->paths[i].path;
		if (!ra->paths[i].existed && lstat(p, &sb) == 0 &&
		    lchown(p, ra->uid, ra->gid) < 0)
			return config_fail(err_r, "cannot give %s to user %s: %s", p, ra->name,
				    strerror(errno));
	}
	if (initgroups(ra->name, ra->gid) < 0)
		return config_fail(err_r, "initgroups(%s): %s", ra->name, strerror(errno));
	if (setgid(ra->gid) < 0)
		return config_fail(err_r, "setgid(%u): %s", (unsigned)ra->gid, strerror(errno));
	if (setuid(ra->uid) < 0)
		return config_fail(err_r, "setuid(%u): %s", (unsigned)ra->uid, strerror(errno));
	if (getuid() == 0 || geteuid() == 0 || getuid() != ra->uid || geteuid() != ra->uid ||
	    getgid() != ra->gid || getegid() != ra->gid || setuid(0) == 0)
		return config_fail(err_r, "the switch to user %s did not take effect (uid %u, euid %u);"
			    " refusing to continue", ra->name, (unsigned)getuid(),
			    (unsigned)geteuid());
	for (int i = 0; i < ra->npaths; i++) {
		const char *p = ra->paths[i].path;
		int mode = ra->paths[i].dir ? R_OK | W_OK | X_OK : R_OK | W_OK;
		if (lstat(p, &sb) == 0 && access(p, mode) < 0)
			return config_fail(err_r, "%s is not usable by user %s after the privilege drop:"
				    " %s (chown it to %s)", p, ra->name, strerror(errno), ra->name);
	}
	return 0;
}

void runas_free(struct runas *ra)
{
	for (int i = 0; i < ra->npaths; i++)
		free(ra->paths[i].path);
	free(ra->name);
	memset(ra, 0, sizeof(*ra));
}
