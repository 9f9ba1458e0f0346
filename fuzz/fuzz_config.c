/* libFuzzer target: ferryd's configuration parser (service/config.c). The
 * input is the text of a config file (NUL-terminated copy); config_parse
 * either fails with a message or fills the struct, which is then freed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ferry_config cfg;
	char *text = malloc(size + 1), *err = NULL;

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	config_defaults(&cfg);
	if (config_parse(text, "fuzz.conf", &cfg, &err) < 0)
		free(err);
	config_free(&cfg);
	free(text);
	return 0;
}
