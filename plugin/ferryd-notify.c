/* A login of a user not done yet, told to ferryd (when configured:
   ferry_ferryd_url, ferry_ferryd_token) through its admin API: POST
   /v1/sync {"user": U, "reason": "login"} puts the user ahead of every
   other in ferryd's queue and shows it in ferryd's status (docs/design.md,
   "Background completion"). Asynchronous, in the session's ioloop: the
   login never waits for it, and a ferryd that is down changes nothing
   else (the session completes the user itself, background.c). The token
   is never logged. */

#include "lib.h"
#include "str.h"
#include "http-url.h"
#include "http-client.h"
#include "ferry-plugin.h"

#define FERRY_NOTIFY_TIMEOUT_MSECS 5000

struct ferry_notify {
	struct http_client *client;
	struct http_client_request *req;
};

static void ferry_notify_response(const struct http_response *resp,
				  struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	fuser->notify->req = NULL;
	if (resp->status / 100 == 2) {
		i_info(FERRY_LOG_PREFIX "event=ferryd-login: ferryd pulls this "
		       "user ahead of the others");
	} else {
		/* the session's own background completion goes on */
		i_warning(FERRY_LOG_PREFIX "event=ferryd-unreachable status=%u "
			  "error=%s", resp->status, resp->reason);
	}
}

void ferry_notify_login(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);
	const char *url = ferry_setting_str(user, "ferry_ferryd_url");
	const char *token = ferry_setting_str(user, "ferry_ferryd_token");
	struct ferry_notify *n;
	string_t *body;

	if (url == NULL || *url == '\0' || fuser->done != 0 ||
	    user->service == NULL || strcmp(user->service, "imap") != 0)
		return;
	if (token == NULL || *token == '\0') {
		i_error(FERRY_LOG_PREFIX "ferry_ferryd_url is set but "
			"ferry_ferryd_token is not: ferryd is not told of logins");
		return;
	}
	n = fuser->notify = p_new(user->pool, struct ferry_notify, 1);
	n->client = ferry_http_client_init(user, FERRY_NOTIFY_TIMEOUT_MSECS);

	body = t_str_new(128);
	str_append(body, "{\"user\":\"");
	ferry_json_append_escaped(body, user->username);
	str_append(body, "\",\"reason\":\"login\"}");
	n->req = http_client_request_url_str(n->client, "POST",
		t_strconcat(t_str_rtrim(url, "/"), "/v1/sync", NULL),
		ferry_notify_response, user);
	http_client_request_add_header(n->req, "Authorization",
				       t_strconcat("Bearer ", token, NULL));
	http_client_request_add_header(n->req, "Content-Type",
				       "application/json");
	http_client_request_set_payload_data(n->req, str_data(body),
					     str_len(body));
	http_client_request_submit(n->req);
}

void ferry_notify_deinit(struct mail_user *user)
{
	struct ferry_user *fuser = FERRY_USER_CONTEXT(user);

	if (fuser->notify == NULL)
		return;
	/* A client that logs out at once (a phone checking for mail) must
	   not take ferryd's notice with it: the request is answered (or
	   times out, FERRY_NOTIFY_TIMEOUT_MSECS) after the client has gone,
	   rather than aborted, possibly before it was even sent. */
	if (fuser->notify->req != NULL)
		http_client_wait(fuser->notify->client);
	if (fuser->notify->req != NULL)
		http_client_request_abort(&fuser->notify->req);
	http_client_deinit(&fuser->notify->client);
	fuser->notify = NULL;
}
