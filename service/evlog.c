/* key=value event lines (format in evlog.h). */
#include "evlog.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static FILE *log_fp;
static evlog_observer_fn *observer;

#define EVLOG_MAX_PAIRS 32

void evlog_set_observer(evlog_observer_fn *fn)
{
	observer = fn;
}

int evlog_open(const char *path)
{
	FILE *fp;

	if (path == NULL || *path == '\0') {
		evlog_close();
		return 0;
	}
	if ((fp = fopen(path, "a")) == NULL)
		return -1;
	evlog_close();
	setvbuf(fp, NULL, _IOLBF, 0);
	log_fp = fp;
	return 0;
}

void evlog_close(void)
{
	if (log_fp != NULL)
		fclose(log_fp);
	log_fp = NULL;
}

static size_t put(char *buf, size_t len, size_t pos, char c)
{
	if (pos + 1 < len)
		buf[pos] = c;
	return pos + 1;
}

size_t evlog_format_kv(char *buf, size_t len, size_t pos, const char *key, const char *value)
{
	int quote = *value == '\0' || strpbrk(value, " \t\"=\\\r\n") != NULL;

	if (pos > 0)
		pos = put(buf, len, pos, ' ');
	for (const char *k = key; *k != '\0'; k++)
		pos = put(buf, len, pos, *k);
	pos = put(buf, len, pos, '=');
	if (quote)
		pos = put(buf, len, pos, '"');
	for (const unsigned char *v = (const unsigned char *)value; *v != '\0'; v++) {
		if (*v == '"' || *v == '\\') {
			pos = put(buf, len, pos, '\\');
			pos = put(buf, len, pos, (char)*v);
		} else if (*v == '\n') {
			pos = put(buf, len, pos, '\\');
			pos = put(buf, len, pos, 'n');
		} else if (*v == '\r') {
			pos = put(buf, len, pos, '\\');
			pos = put(buf, len, pos, 'r');
		} else if (*v < ' ' || *v == 0x7f)
			pos = put(buf, len, pos, '?');
		else
			pos = put(buf, len, pos, (char)*v);
	}
	if (quote)
		pos = put(buf, len, pos, '"');
	if (len > 0)
		buf[pos < len ? pos : len - 1] = '\0';
	return pos;
}

void evlog(const char *level, const char *event, ...)
{
	char line[4096], ts[64];
	struct timeval tv;
	struct tm tm;
	size_t pos = 0;
	va_list ap;
	const char *k, *v, *kv[EVLOG_MAX_PAIRS * 2];
	size_t n = 0;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + strlen(ts), sizeof(ts) - strlen(ts), ".%03dZ", (int)(tv.tv_usec / 1000));
	pos = evlog_format_kv(line, sizeof(line), pos, "time", ts);
	pos = evlog_format_kv(line, sizeof(line), pos, "level", level);
	pos = evlog_format_kv(line, sizeof(line), pos, "event", event);
	va_start(ap, event);
	while ((k = va_arg(ap, const char *)) != NULL) {
		v = va_arg(ap, const char *);
		if (v == NULL)
			continue;
		pos = evlog_format_kv(line, sizeof(line), pos, k, v);
		if (n < EVLOG_MAX_PAIRS) {
			kv[2 * n] = k;
			kv[2 * n + 1] = v;
			n++;
		}
	}
	va_end(ap);
	fprintf(log_fp != NULL ? log_fp : stderr, "%s\n", line);
	if (observer != NULL)
		observer(level, event, kv, n);
}
