/* The contract between the ferry plugin (plugin/) and ferryd (service/):
   what both sides must spell the same way. Plain C, no Dovecot or libevent
   types: it is included by both. Documented in docs/design.md ("doveadm
   ferry") and docs/ferryd.md. */
#ifndef FERRY_CONTRACT_H
#define FERRY_CONTRACT_H

/* doveadm ferry commands as the doveadm HTTP API names them */
#define FERRY_CMD_PULL "ferryPull"
#define FERRY_CMD_SYNC "ferrySync"
#define FERRY_CMD_STATUS "ferryStatus"
#define FERRY_CMD_ROLLBACK "ferryRollback"
/* ferryPull/ferrySync parameter: folders copied at once (ferry_parallel)
   for this command. ferryd sends "1": its per-old-host accounting counts one
   old-server session per command. */
#define FERRY_PARAM_PARALLEL "parallel"

/* userdb field ferry_phase */
#define FERRY_PHASE_PRESYNC "presync"
#define FERRY_PHASE_CUTOVER "cutover"

/* Routing views in ferryd's state database, read natively by Dovecot's
   passdb and userdb (driver sql: conf/dovecot-sql.conf.ext, which names them
   in its queries) and Postfix's transport_maps (conf/postfix/); the userdb
   view's column is the ferry_phase field above. docs/routing.md */
#define FERRY_VIEW_PASSDB "ferry_passdb"
#define FERRY_VIEW_USERDB "ferry_userdb"
#define FERRY_VIEW_TRANSPORT "ferry_transport"
/* the proxy in front of several NEW backends (conf/dovecot-proxy-sql.conf.ext):
   host = OLD until the cut-over, then the user's backend (users.new_host) */
#define FERRY_VIEW_PROXY "ferry_proxy"

/* Folder states, as the state column of pull, sync and status prints them */
#define FERRY_STATE_NEW "new"
#define FERRY_STATE_PARTIAL "partial"
#define FERRY_STATE_COMPLETE "complete"
#define FERRY_STATE_LOCAL "local"      /* made on the new server */
#define FERRY_STATE_FAILED "failed"    /* pull/sync: this pass failed */
/* status only: an old folder that is not migrated (folder column empty) */
#define FERRY_STATE_EXCLUDED "excluded" /* ferry_exclude* matched it */
#define FERRY_STATE_SKIPPED "skipped"   /* its name cannot be made here */

/* doveadm ferry status columns, in this order */
#define FERRY_COL_FOLDER "folder"       /* the new server's name ("" for an
					   old folder that is not migrated) */
#define FERRY_COL_STATE "state"
#define FERRY_COL_OLD "old"             /* messages on the old server */
#define FERRY_COL_LOCAL "local"         /* messages here */
#define FERRY_COL_UIDVALIDITY "uidvalidity"
#define FERRY_COL_OLD_UIDVALIDITY "old_uidvalidity"
#define FERRY_COL_COPIED "copied"
#define FERRY_COL_RENUMBERED "renumbered"
/* The old server's name of this folder exactly as its LIST shows it
   (prefix and separator included), UTF-8; "" for a folder made here. The
   one answer to "old folder X is new folder Y": verification uses it. */
#define FERRY_COL_OLD_FOLDER "old_folder"
#define FERRY_COL_REASON "reason"       /* why excluded or skipped */

/* doveadm ferry pull and sync columns (folder, state, copied as above) */
#define FERRY_COL_BYTES "bytes"         /* size of the messages copied */
#define FERRY_COL_FLAG_CHANGES "flag_changes"
#define FERRY_COL_EXPUNGED "expunged"
#define FERRY_COL_SKIPPED "skipped"
#define FERRY_COL_MESSAGES "messages"
#define FERRY_COL_ERROR "error"

/* Why a doveadm ferry command failed, machine-readably: its exit code
   (sysexits.h values), which the doveadm HTTP API returns as
   ["error", {"type": "exitCode", "exitCode": N}, tag] (the printed rows are
   not returned then). ferryd decides from the code alone whether a retry
   can help; the error text it reads back (logErrors) is only shown. */
#define FERRY_EXIT_RETRY 75        /* EX_TEMPFAIL: a later attempt may work
				      (old server down or slow, a folder
				      failed, a lock held): retried */
#define FERRY_EXIT_REFUSED 77      /* EX_NOPERM: the old server's session is
				      refused (its identity check failed, a
				      master login it cannot carry): not
				      retried, the user is failed */
#define FERRY_EXIT_NOT_ENABLED 68  /* DOVEADM_EX_NOTFOUND: ferry is not
				      enabled for the user on NEW: not retried */
#define FERRY_EXIT_UNKNOWN_USER 67 /* EX_NOUSER: NEW does not know the user
				      (doveadm's own answer): not retried */

/* doveadm ferry rollback columns (folder, error as above) */
#define FERRY_COL_APPENDED "appended"
#define FERRY_COL_CREATED "created"

#endif
