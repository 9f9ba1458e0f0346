/* Serves the dashboard's three files, embedded at build time with the
   assembler's .incbin (paths relative to the top directory, where make
   runs the compiler). A strict Content-Security-Policy: the page loads
   nothing but these files and talks to nothing but this server. */
#include "dashboard.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <string.h>

#define ASSET(sym, file)                                                     \
	__asm__(".pushsection .rodata\n"                                     \
		".global " #sym "\n" #sym ":\n"                              \
		".incbin \"" file "\"\n"                                     \
		".global " #sym "_end\n" #sym "_end:\n"                      \
		".byte 0\n"                                                  \
		".popsection\n");                                            \
	extern const char sym[], sym##_end[]

ASSET(ferry_dashboard_html, "service/dashboard/dashboard.html");
ASSET(ferry_dashboard_css, "service/dashboard/dashboard.css");
ASSET(ferry_dashboard_js, "service/dashboard/dashboard.js");

static const struct asset {
	const char *path, *type;
	const char *start, *end;
} assets[] = {
	{ "/dashboard", "text/html; charset=utf-8", ferry_dashboard_html, ferry_dashboard_html_end },
	{ "/dashboard.css", "text/css; charset=utf-8", ferry_dashboard_css, ferry_dashboard_css_end },
	{ "/dashboard.js", "text/javascript; charset=utf-8", ferry_dashboard_js,
	  ferry_dashboard_js_end },
};

int dashboard_serve(struct evhttp_request *req, const char *path)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *out;

	if (path == NULL)
		return 0;
	if (strcmp(path, "/") == 0 && evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
		evhttp_add_header(h, "Location", "/dashboard");
		evhttp_send_reply(req, 302, "Found", NULL);
		return 1;
	}
	for (size_t i = 0; i < sizeof(assets) / sizeof(assets[0]); i++) {
		const struct asset *a = &assets[i];
		if (strcmp(path, a->path) != 0)
			continue;
		if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
			evhttp_send_error(req, 405, "only GET");
			return 1;
		}
		evhttp_add_header(h, "Content-Type", a->type);
		evhttp_add_header(h, "Cache-Control", "no-store");
		evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
		evhttp_add_header(h, "X-Frame-Options", "DENY");
		evhttp_add_header(h, "Referrer-Policy", "no-referrer");
		evhttp_add_header(h, "Content-Security-Policy",
				  "default-src 'none'; script-src 'self'; style-src 'self'; "
				  "connect-src 'self'; img-src 'self' data:; "
				  "frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
		out = evbuffer_new();
		evbuffer_add_reference(out, a->start, (size_t)(a->end - a->start), NULL, NULL);
		evhttp_send_reply(req, 200, NULL, out);
		evbuffer_free(out);
		return 1;
	}
	return 0;
}
