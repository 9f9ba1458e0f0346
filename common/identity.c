/* The identity check's decision (include/ferry-identity.h): plain C, shared
   by the mail plugin and ferryd's client; the I/O is each side's. */

#include "ferry-identity.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Servers whose own code decides the authorization identity: a master
   login there opens the user's mailbox or is refused, never the master's
   own. Matched against the start of ID's "name". Courier is not here: it
   drops the authorization identity and logs the master in as itself. */
static const struct {
	const char *name, *why;
} honouring_servers[] = {
	{ "Dovecot", "Dovecot honours the authorization identity (a master "
		     "login opens the user's mailbox or is refused)" },
	{ "Cyrus", "Cyrus honours the authorization identity (proxyservers/"
		   "admins; others are refused)" },
};

static void copy(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src != NULL ? src : "");
}

void ferry_identity_init(struct ferry_identity_evidence *ev, const char *user,
			 const char *master)
{
	memset(ev, 0, sizeof(*ev));
	copy(ev->user, sizeof(ev->user), user);
	copy(ev->master, sizeof(ev->master), master);
}

void ferry_identity_set_id_field(struct ferry_identity_evidence *ev,
				 const char *key, const char *value)
{
	if (key != NULL && value != NULL && strcasecmp(key, "name") == 0)
		copy(ev->server_name, sizeof(ev->server_name), value);
}

void ferry_identity_set_other_namespace(struct ferry_identity_evidence *ev,
					const char *prefix, char sep)
{
	if (prefix == NULL || prefix[0] == '\0' || ev->have_other)
		return;
	copy(ev->other_prefix, sizeof(ev->other_prefix), prefix);
	ev->other_sep = sep;
	ev->have_other = 1;
}

void ferry_identity_view_inbox(struct ferry_identity_view *v,
			       uint32_t uidvalidity, uint32_t uidnext,
			       uint32_t messages)
{
	v->inbox_ok = 1;
	v->inbox_uidvalidity = uidvalidity;
	v->inbox_uidnext = uidnext;
	v->inbox_messages = messages;
}

void ferry_identity_view_folder(struct ferry_identity_view *v, const char *name)
{
	/* FNV-1a per name, summed: servers may list in any order */
	uint64_t h = 14695981039346656037ull;

	for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++)
		h = (h ^ *p) * 1099511628211ull;
	v->names_hash += h;
	v->nfolders++;
}

void ferry_identity_session_folder(struct ferry_identity_evidence *ev,
				   const char *name)
{
	size_t plen = strlen(ev->other_prefix), ulen = strlen(ev->user);

	ferry_identity_view_folder(&ev->session, name);
	if (!ev->have_other || ev->user_listed_as_other || ulen == 0 ||
	    strncmp(name, ev->other_prefix, plen) != 0 ||
	    strncmp(name + plen, ev->user, ulen) != 0)
		return;
	/* the user's own hierarchy: <prefix><user> or <prefix><user><sep>... */
	char next = name[plen + ulen];
	if (next == '\0' || (ev->other_sep != '\0' && next == ev->other_sep)) {
		ev->user_listed_as_other = 1;
		copy(ev->listed_as_other, sizeof(ev->listed_as_other), name);
	}
}

static int views_equal(const struct ferry_identity_view *a,
		       const struct ferry_identity_view *b)
{
	return a->inbox_ok == b->inbox_ok &&
		a->inbox_uidvalidity == b->inbox_uidvalidity &&
		a->inbox_uidnext == b->inbox_uidnext &&
		a->inbox_messages == b->inbox_messages &&
		a->names_hash == b->names_hash && a->nfolders == b->nfolders;
}

enum ferry_identity_verdict
ferry_identity_decide(const struct ferry_identity_evidence *ev,
		      char *reason, size_t reason_size)
{
	if (!ev->session.inbox_ok) {
		snprintf(reason, reason_size, "the session has no INBOX");
		return FERRY_IDENTITY_REFUSE;
	}
	if (ev->user_listed_as_other) {
		/* nobody sees their own mailbox among other users' */
		snprintf(reason, reason_size,
			 "the session lists %s among other users' mailboxes, "
			 "so it is not %s's own session: the server ignored "
			 "the authorization identity",
			 ev->listed_as_other, ev->user);
		return FERRY_IDENTITY_REFUSE;
	}
	for (size_t i = 0; i < sizeof(honouring_servers) /
			       sizeof(honouring_servers[0]); i++) {
		const char *name = honouring_servers[i].name;

		if (strncasecmp(ev->server_name, name, strlen(name)) == 0) {
			snprintf(reason, reason_size, "%s",
				 honouring_servers[i].why);
			return FERRY_IDENTITY_PASS;
		}
	}
	switch (ev->master_login) {
	case FERRY_IDENTITY_MASTER_NOT_TRIED:
		snprintf(reason, reason_size, "%s is not known to honour the "
			 "authorization identity: compare with %s's own login",
			 ev->server_name[0] != '\0' ? ev->server_name :
			 "the server (no ID)", ev->master);
		return FERRY_IDENTITY_COMPARE;
	case FERRY_IDENTITY_MASTER_REFUSED:
		snprintf(reason, reason_size,
			 "the authenticating identity has no mailbox of its own");
		return FERRY_IDENTITY_PASS;
	case FERRY_IDENTITY_MASTER_OK:
		break;
	}
	if (views_equal(&ev->session, &ev->master_view)) {
		snprintf(reason, reason_size,
			 "the session shows the same mailbox as %s's own login "
			 "(INBOX UIDVALIDITY %u, %u folders): the server "
			 "ignored the authorization identity", ev->master,
			 ev->session.inbox_uidvalidity, ev->session.nfolders);
		return FERRY_IDENTITY_REFUSE;
	}
	snprintf(reason, reason_size,
		 "differs from the authenticating identity's own mailbox");
	return FERRY_IDENTITY_PASS;
}
