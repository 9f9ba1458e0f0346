#ifndef DOVECOT24_SETTINGS_H
#define DOVECOT24_SETTINGS_H

/* Dovecot 2.4: Ferry's settings, declared (dovecot24-settings.c). The
   same declaration is in the plugin and in the settings module that
   Dovecot's config process loads (modules/settings/libferry_settings.so):
   without the module every ferry_* key is refused. */

#include "settings-parser.h"

/* ferry_exclude, ferry_exclude2 ... ferry_exclude20 (and ferry_rename...) */
#define FERRY_MAX_RULES_24 20

struct ferry24_settings {
	pool_t pool;
	bool ferry;
	const char *ferry_phase;
	unsigned int ferry_batch_size;
	unsigned int ferry_lock_timeout;
	unsigned int ferry_progress_interval;
	unsigned int ferry_prefetch_count;
	uoff_t ferry_big_message_size;
	uoff_t ferry_max_message_size;
	unsigned int ferry_max_folders;
	unsigned int ferry_old_connect_timeout;
	unsigned int ferry_parallel;
	unsigned int ferry_background_idle_msecs;
	const char *ferry_ferryd_url;
	const char *ferry_ferryd_token;
	const char *ferry_exclude[FERRY_MAX_RULES_24];
	const char *ferry_rename[FERRY_MAX_RULES_24];
};

extern const struct setting_parser_info ferry_setting_parser_info;

#endif
