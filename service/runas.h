/* Who ferryd runs as (docs/ferryd.md, "Privileges"). Started as root with
   user = NAME, ferryd sets up everything that needs root (listening
   socket, secret files, log file, state database and its directory),
   hands the files it created to NAME, then switches to NAME for good.
   Started as root without user it refuses to run unless allow_root. */
#ifndef FERRY_RUNAS_H
#define FERRY_RUNAS_H

#include <sys/types.h>

#include "config.h"

#define RUNAS_MAX_PATHS 8

struct runas {
	int drop;      /* switch to uid/gid in runas_drop */
	uid_t uid;
	gid_t gid;
	char *name;
	struct {
		char *path;
		int dir, existed;
	} paths[RUNAS_MAX_PATHS];
	int npaths;
};

/* Decides from the configuration and the effective uid. Refuses root
   without user (unless allow_root), user = a uid-0 account, and a user
   ferryd cannot switch to (started as someone else). 0, or -1 with *err_r. */
int runas_plan(struct runas *ra, const struct ferry_config *cfg, const char *conf_path,
	       char **err_r);
/* A file or directory NAME must be able to write after the drop. Noted
   before ferryd creates it: runas_drop gives NAME what ferryd created. */
void runas_keep(struct runas *ra, const char *path, int is_dir);
/* Unless !ra->drop: chown of the kept paths ferryd created, initgroups,
   setgid, setuid, a check that root cannot be regained, then a check that
   NAME can use every kept path. 0, or -1 with *err_r (ferryd must exit). */
int runas_drop(struct runas *ra, char **err_r);
void runas_free(struct runas *ra);

#endif
