/* libFuzzer target: the mail plugin's own state formats, through the very
   functions the plugin calls (plugin/state.c, plugin/map.c, compiled as
   they are), linked with Dovecot's libraries. The first byte selects the parser, the rest is its input:
     0  the per-user state file dovecot-ferry.state (ferry_state_parse):
        fails with "invalid line '...'" or gives times >= 0; what
        ferry_user_state_write writes for them parses back to them;
     1  the folder map dovecot-ferry.map, read from an istream as
        ferry_map_load reads the file (ferry_map_read_entries, which calls
        ferry_map_parse_line): entries of C strings; each entry written as
        ferry_map_write writes it (ferry_map_format_line) parses back to
        itself;
     2  the per-folder index header extension (ferry_box_hdr_parse) of any
        size: at most the stored size is read (ASan sees the input's exact
        size), the rest of the struct is zero. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strescape.h"
#include "istream.h"
#include "ferry-plugin.h"

/* defined by ferry-plugin.c in the plugin; state.c and map.c need nothing
   else from the rest of it */
struct ferry_user_module ferry_user_module =
	MODULE_CONTEXT_INIT(&mail_user_module_register);

/* map.c's calls into the Dovecot version glue (dovecot23.c/dovecot24.c):
   the settings and the namespace's special-use folders, which the parsers
   fuzzed here never reach */
const char *ferry_setting_str(struct mail_user *user ATTR_UNUSED,
			      const char *name ATTR_UNUSED)
{
	return NULL;
}

const char *ferry_special_use_box(struct mail_namespace *ns ATTR_UNUSED,
				  const char *special_use ATTR_UNUSED)
{
	return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc ATTR_UNUSED, char ***argv ATTR_UNUSED)
{
	lib_init();
	return 0;
}

static void fuzz_state(const unsigned char *data, size_t size)
{
	const char *text = t_strndup(data, size), *error = NULL;
	const char *identity, *identity2;
	time_t tree = -1, done = -1, tree2, done2;

	if (ferry_state_parse(text, &tree, &done, &identity, &error) < 0) {
		i_assert(error != NULL && str_begins(error, "invalid line '"));
		return;
	}
	i_assert(tree >= 0 && done >= 0);
	/* ferry_user_state_write's format */
	text = t_strdup_printf("tree=%lld\ndone=%lld\n%s%s%s",
			       (long long)tree, (long long)done,
			       identity == NULL ? "" : "identity=",
			       identity == NULL ? "" : identity,
			       identity == NULL ? "" : "\n");
	i_assert(ferry_state_parse(text, &tree2, &done2, &identity2,
				   &error) == 0);
	i_assert(tree2 == tree && done2 == done);
	i_assert(null_strcmp(identity, identity2) == 0);
}

static void fuzz_map(const unsigned char *data, size_t size)
{
	pool_t pool = pool_alloconly_create("fuzz map", 1024);
	ARRAY_TYPE(ferry_map_entry) entries;
	const struct ferry_map_entry *e;
	struct ferry_map_entry back;
	struct istream *input;
	string_t *line = t_str_new(128);

	p_array_init(&entries, pool, 8);
	input = i_stream_create_from_data(data, size);
	ferry_map_read_entries(input, pool, &entries);
	i_assert(input->stream_errno == 0);
	i_stream_unref(&input);

	array_foreach(&entries, e) {
		str_truncate(line, 0);
		ferry_map_format_line(line, e);
		i_assert(strchr(str_c(line), '\n') == NULL);
		i_assert(ferry_map_parse_line(str_c(line), &back));
		i_assert(strcmp(back.local, e->local) == 0);
		i_assert(strcmp(back.old, e->old) == 0);
		i_assert(strcmp(back.remote, e->remote) == 0);
		i_assert(strcmp(back.state, e->state) == 0);
		i_assert(strcmp(back.reason, e->reason) == 0);
	}
	pool_unref(&pool);
}

static void fuzz_box_hdr(const unsigned char *data, size_t size)
{
	struct ferry_box_hdr hdr;
	size_t n = I_MIN(size, sizeof(hdr));
	const unsigned char *p = (const unsigned char *)&hdr;

	memset(&hdr, 0xa5, sizeof(hdr));
	ferry_box_hdr_parse(size == 0 ? NULL : data, size, &hdr);
	i_assert(n == 0 || memcmp(&hdr, data, n) == 0);
	for (size_t i = n; i < sizeof(hdr); i++)
		i_assert(p[i] == 0);
	i_assert(ferry_box_state_name(hdr.state) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	T_BEGIN {
		switch (data[0] % 3) {
		case 0:
			fuzz_state(data + 1, size - 1);
			break;
		case 1:
			fuzz_map(data + 1, size - 1);
			break;
		default:
			fuzz_box_hdr(data + 1, size - 1);
			break;
		}
	} T_END;
	return 0;
}
