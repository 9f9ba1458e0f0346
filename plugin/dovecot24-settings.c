/* Dovecot 2.4: Ferry's settings as a setting_parser_info. Built into the
   plugin (which reads them with settings_get()) and, alone, into the
   settings module modules/settings/libferry_settings.so, which Dovecot's
   config process loads to accept the ferry_* keys. Keys are top-level
   (no plugin {}); userdb fields override them by name. TIME values need
   units (300s, 300ms); rule strings and ferryd's URL and token are taken
   as written (no %{} expansion). */

#include "lib.h"
#include "settings-parser.h"
#include "dovecot24-settings.h"

#define DEF(type, name) \
	SETTING_DEFINE_STRUCT_##type(#name, name, struct ferry24_settings)
#define RULE(kind, name, n) \
	{ .type = SET_STR_NOVARS, .key = name, \
	  .offset = offsetof(struct ferry24_settings, ferry_##kind[(n) - 1]) }
#define RULES(kind) \
	RULE(kind, "ferry_" #kind, 1), RULE(kind, "ferry_" #kind "2", 2), \
	RULE(kind, "ferry_" #kind "3", 3), RULE(kind, "ferry_" #kind "4", 4), \
	RULE(kind, "ferry_" #kind "5", 5), RULE(kind, "ferry_" #kind "6", 6), \
	RULE(kind, "ferry_" #kind "7", 7), RULE(kind, "ferry_" #kind "8", 8), \
	RULE(kind, "ferry_" #kind "9", 9), RULE(kind, "ferry_" #kind "10", 10), \
	RULE(kind, "ferry_" #kind "11", 11), RULE(kind, "ferry_" #kind "12", 12), \
	RULE(kind, "ferry_" #kind "13", 13), RULE(kind, "ferry_" #kind "14", 14), \
	RULE(kind, "ferry_" #kind "15", 15), RULE(kind, "ferry_" #kind "16", 16), \
	RULE(kind, "ferry_" #kind "17", 17), RULE(kind, "ferry_" #kind "18", 18), \
	RULE(kind, "ferry_" #kind "19", 19), RULE(kind, "ferry_" #kind "20", 20)

static const struct setting_define ferry_setting_defines[] = {
	DEF(BOOL, ferry),
	DEF(ENUM, ferry_phase),
	DEF(UINT, ferry_batch_size),
	DEF(TIME, ferry_lock_timeout),
	DEF(TIME, ferry_progress_interval),
	DEF(UINT, ferry_prefetch_count),
	DEF(SIZE, ferry_big_message_size),
	DEF(SIZE, ferry_max_message_size),
	DEF(UINT, ferry_max_folders),
	DEF(TIME, ferry_old_connect_timeout),
	DEF(UINT, ferry_parallel),
	DEF(TIME_MSECS, ferry_background_idle_msecs),
	DEF(STR_NOVARS, ferry_ferryd_url),
	DEF(STR_NOVARS, ferry_ferryd_token),
	RULES(exclude),
	RULES(rename),
	SETTING_DEFINE_LIST_END
};

static const struct ferry24_settings ferry_default_settings = {
	.ferry = FALSE,
	.ferry_phase = "cutover:presync",
	.ferry_batch_size = 500,
	.ferry_lock_timeout = 300,
	.ferry_progress_interval = 5,
	.ferry_prefetch_count = 50,
	.ferry_big_message_size = 2 * 1024 * 1024,
	.ferry_max_message_size = 0,
	.ferry_max_folders = 10000,
	.ferry_old_connect_timeout = 30,
	.ferry_parallel = 0, /* CPUs, at most 4 */
	.ferry_background_idle_msecs = 300,
	.ferry_ferryd_url = "",
	.ferry_ferryd_token = "",
	.ferry_exclude = { "", "", "", "", "", "", "", "", "", "",
			   "", "", "", "", "", "", "", "", "", "" },
	.ferry_rename = { "", "", "", "", "", "", "", "", "", "",
			  "", "", "", "", "", "", "", "", "", "" },
};

static bool ferry_settings_check(void *_set, pool_t pool ATTR_UNUSED,
				 const char **error_r)
{
	struct ferry24_settings *set = _set;

	if (set->ferry_batch_size == 0)
		*error_r = "ferry_batch_size must be at least 1";
	else if (set->ferry_lock_timeout == 0)
		*error_r = "ferry_lock_timeout must be at least 1s";
	else if (set->ferry_progress_interval == 0)
		*error_r = "ferry_progress_interval must be at least 1s";
	else if (set->ferry_prefetch_count == 0)
		*error_r = "ferry_prefetch_count must be at least 1";
	else if (set->ferry_big_message_size < 4096)
		*error_r = "ferry_big_message_size must be at least 4k";
	else if (set->ferry_old_connect_timeout == 0)
		*error_r = "ferry_old_connect_timeout must be at least 1s";
	else {
		for (unsigned int i = 0; i < FERRY_MAX_RULES_24; i++) {
			const char *rule = set->ferry_rename[i];

			if (*rule != '\0' && strstr(rule, " => ") == NULL) {
				*error_r = t_strdup_printf(
					"Invalid ferry_rename%s=%s: want "
					"\"REGEX => REPLACEMENT\"",
					i == 0 ? "" : dec2str(i + 1), rule);
				return FALSE;
			}
		}
		return TRUE;
	}
	return FALSE;
}

const struct setting_parser_info ferry_setting_parser_info = {
	.name = "ferry",
	.defines = ferry_setting_defines,
	.defaults = &ferry_default_settings,
	.struct_size = sizeof(struct ferry24_settings),
	.pool_offset1 = 1 + offsetof(struct ferry24_settings, pool),
	.check_func = ferry_settings_check,
};

/* the settings module's symbols (lib<name>_settings.so: <name>_settings_*) */
extern const char *ferry_settings_version;
extern const struct setting_parser_info *ferry_settings_set_infos[];

const char *ferry_settings_version = DOVECOT_ABI_VERSION;
const struct setting_parser_info *ferry_settings_set_infos[] = {
	&ferry_setting_parser_info,
	NULL
};
