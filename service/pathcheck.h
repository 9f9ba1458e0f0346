/* ferryd -t: can ferryd's user use the files the configuration names (log,
   state database and its directory, secret files)? Each problem is printed
   with the path, the user and why. */
#ifndef FERRY_PATHCHECK_H
#define FERRY_PATHCHECK_H

#include <stdio.h>

#include "config.h"
#include "runas.h"

/* Checks as ferryd's user (a child that drops to it when ra->drop; no
   kept paths yet). Returns the number of errors; warnings (a secret file
   only root can read: start works, SIGHUP reload will not) are printed too
   but not counted. */
int pathcheck_run(const struct ferry_config *cfg, struct runas *ra, FILE *out);

#endif
