/* The dashboard page (service/dashboard/: HTML, CSS, JavaScript, built
   into ferryd; no external asset, no build step). The page itself holds
   no data and is served without a token; its script reads the admin API
   with the viewer (or admin) token the person enters (docs/ferryd.md,
   "Dashboard"). */
#ifndef FERRY_DASHBOARD_H
#define FERRY_DASHBOARD_H

struct evhttp_request;

/* Answers GET /dashboard, /dashboard.css and /dashboard.js (and / as a
   redirect to /dashboard). Returns 1 if the path was one of them. */
int dashboard_serve(struct evhttp_request *req, const char *path);

#endif
