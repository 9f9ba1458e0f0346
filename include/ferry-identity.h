/* The identity check after an impersonated login on the old server (a
 * master/admin user logging in for a user: AUTHENTICATE PLAIN with an
 * authorization identity). A server may answer OK to an authorization
 * identity it ignores (Courier does) and hand out the master's own
 * mailbox; copying that into the user's new mailbox would give the user
 * someone else's mail.
 *
 * This is the decision only, plain C shared by the mail plugin and ferryd's
 * client. Each side gathers the evidence with its own IMAP I/O:
 *  1. on the user's session, pipelined in one round trip: ID, NAMESPACE,
 *     STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY), LIST "" "*"
 *     (NAMESPACE answered before LIST: the other users' prefix is needed
 *     while folders are added);
 *  2. only when ferry_identity_decide() answers FERRY_IDENTITY_COMPARE: the
 *     master logs in alone on a second connection and the same STATUS and
 *     LIST are taken there. */
#ifndef FERRY_IDENTITY_H
#define FERRY_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

/* what one session shows */
struct ferry_identity_view {
	int inbox_ok; /* STATUS INBOX answered */
	uint32_t inbox_uidvalidity, inbox_uidnext, inbox_messages;
	uint64_t names_hash; /* of the listed names, in any order */
	unsigned int nfolders;
};

enum ferry_identity_master_login {
	FERRY_IDENTITY_MASTER_NOT_TRIED = 0,
	/* NO to the master's own login: it has no mailbox of its own */
	FERRY_IDENTITY_MASTER_REFUSED,
	/* logged in; master_view filled */
	FERRY_IDENTITY_MASTER_OK,
};

struct ferry_identity_evidence {
	char user[256], master[256];
	char server_name[64];	/* ID "name"; "" if not answered */
	char other_prefix[256];	/* NAMESPACE other users' prefix */
	char other_sep;
	int have_other;
	/* the session lists <other_prefix><user>: the user's own mailbox as
	   someone else's (Cyrus's user.<name> hierarchy seen by an admin) */
	int user_listed_as_other;
	char listed_as_other[256];
	struct ferry_identity_view session;
	enum ferry_identity_master_login master_login;
	struct ferry_identity_view master_view;
};

enum ferry_identity_verdict {
	FERRY_IDENTITY_PASS,
	FERRY_IDENTITY_REFUSE,
	/* undecided: log in as the master alone, fill master_login/master_view
	   and decide again */
	FERRY_IDENTITY_COMPARE,
};

void ferry_identity_init(struct ferry_identity_evidence *ev, const char *user,
			 const char *master);
/* ID response: key/value pairs as the server sent them (NULL values for NIL) */
void ferry_identity_set_id_field(struct ferry_identity_evidence *ev,
				 const char *key, const char *value);
/* NAMESPACE's first "other users" entry */
void ferry_identity_set_other_namespace(struct ferry_identity_evidence *ev,
					const char *prefix, char sep);
void ferry_identity_view_inbox(struct ferry_identity_view *v,
			       uint32_t uidvalidity, uint32_t uidnext,
			       uint32_t messages);
/* a LIST answer's name as sent on the wire */
void ferry_identity_view_folder(struct ferry_identity_view *v, const char *name);
/* the same for the user's session, also checking the other users' prefix */
void ferry_identity_session_folder(struct ferry_identity_evidence *ev,
				   const char *name);
/* The verdict; reason says why (for REFUSE a sentence that ends "...: the
   server ignored the authorization identity" where that is what it shows). */
enum ferry_identity_verdict
ferry_identity_decide(const struct ferry_identity_evidence *ev,
		      char *reason, size_t reason_size);

#endif
