/* The identity check's decision (common/identity.c), shared by the plugin
 * and ferryd's client: the cases each side's I/O feeds it. */
#include <criterion/criterion.h>
#include <string.h>

#include "ferry-identity.h"

static struct ferry_identity_evidence ev;
static char reason[512];

static void session(const char *server, uint32_t uidvalidity, const char *const *names)
{
	ferry_identity_init(&ev, "alice", "admin");
	if (server != NULL)
		ferry_identity_set_id_field(&ev, "name", server);
	ferry_identity_set_other_namespace(&ev, "user.", '.');
	ferry_identity_view_inbox(&ev.session, uidvalidity, 8, 7);
	for (; *names != NULL; names++)
		ferry_identity_session_folder(&ev, *names);
}

static const char *const alice[] = {"INBOX", "INBOX.Sent", NULL};

Test(identity, no_inbox_is_refused)
{
	ferry_identity_init(&ev, "alice", "admin");
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_REFUSE);
	cr_assert_str_eq(reason, "the session has no INBOX");
}

Test(identity, known_servers_pass_without_a_second_login)
{
	session("Dovecot", 1, alice);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_PASS);
	session("Cyrus IMAP", 1, alice);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_PASS);
	cr_assert(strstr(reason, "Cyrus honours") == reason);
}

Test(identity, own_hierarchy_among_other_users_is_refused_even_for_cyrus)
{
	static const char *const admin[] = {"INBOX", "user.alice", "user.alice.Sent", NULL};
	session("Cyrus IMAP", 1, admin);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_REFUSE);
	cr_assert(strstr(reason, "lists user.alice among other users'") != NULL, "%s", reason);
	/* user.alicea is someone else */
	static const char *const other[] = {"INBOX", "user.alicea", NULL};
	session("Cyrus IMAP", 1, other);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_PASS);
}

Test(identity, unknown_server_compares_with_the_master)
{
	session(NULL, 5, alice);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_COMPARE);
	ev.master_login = FERRY_IDENTITY_MASTER_REFUSED;
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_PASS);
	cr_assert_str_eq(reason, "the authenticating identity has no mailbox of its own");

	/* the same mailbox, folders listed in another order: ignored */
	ev.master_login = FERRY_IDENTITY_MASTER_OK;
	ferry_identity_view_inbox(&ev.master_view, 5, 8, 7);
	ferry_identity_view_folder(&ev.master_view, "INBOX.Sent");
	ferry_identity_view_folder(&ev.master_view, "INBOX");
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_REFUSE);
	cr_assert(strstr(reason, "the same mailbox as admin's own login") != NULL, "%s", reason);
	cr_assert(strstr(reason, "ignored the authorization identity") != NULL);

	/* one more message in the master's INBOX: another mailbox */
	ferry_identity_view_inbox(&ev.master_view, 5, 9, 8);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_PASS);
}

Test(identity, courier_is_not_trusted_by_name)
{
	session("Courier-IMAP", 5, alice);
	cr_assert_eq(ferry_identity_decide(&ev, reason, sizeof(reason)), FERRY_IDENTITY_COMPARE);
}
