/* AES-256-GCM sealing of old-server passwords (see secret.h). */
#include "secret.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONCE 12
#define TAG 16
/* "v2:" KEYID ":" */
#define PREFIX_LEN (3 + SECRET_KEY_ID_LEN + 1)

static void derive(const char *material, unsigned char key[32])
{
	SHA256((const unsigned char *)material, strlen(material), key);
}

static void key_id_of(const unsigned char key[32], char id[SECRET_KEY_ID_LEN + 1])
{
	unsigned char h[SHA256_DIGEST_LENGTH];

	SHA256(key, 32, h);
	snprintf(id, SECRET_KEY_ID_LEN + 1, "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
}

void secret_key_id(const char *material, char id[SECRET_KEY_ID_LEN + 1])
{
	unsigned char key[32];

	derive(material, key);
	key_id_of(key, id);
	explicit_bzero(key, sizeof(key));
}

int secret_value_key_id(const char *value, char id[SECRET_KEY_ID_LEN + 1])
{
	id[0] = '\0';
	/* ':' is not in the base64 alphabet: a bare base64 text is a legacy value */
	if (strncmp(value, "v2:", 3) != 0 || strlen(value) < PREFIX_LEN ||
	    value[PREFIX_LEN - 1] != ':')
		return -1;
	memcpy(id, value + 3, SECRET_KEY_ID_LEN);
	id[SECRET_KEY_ID_LEN] = '\0';
	return 0;
}

char *secret_encrypt(const char *material, const char *plaintext)
{
	int len = (int)strlen(plaintext), n = 0, fin = 0, ignored;
	unsigned char key[32], *raw = malloc((size_t)len + NONCE + TAG);
	char *out = malloc(PREFIX_LEN + 4 * (((size_t)len + NONCE + TAG + 2) / 3) + 1);
	char id[SECRET_KEY_ID_LEN + 1];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int ok;

	derive(material, key);
	key_id_of(key, id);
	snprintf(out, PREFIX_LEN + 1, "v2:%s:", id);
	ok = RAND_bytes(raw, NONCE) == 1 &&
		EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &ignored, (const unsigned char *)out, PREFIX_LEN) == 1 &&
		EVP_EncryptUpdate(ctx, raw + NONCE, &n, (const unsigned char *)plaintext, len) == 1 &&
		EVP_EncryptFinal_ex(ctx, raw + NONCE + n, &fin) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, raw + NONCE + n + fin) == 1;
	EVP_CIPHER_CTX_free(ctx);
	explicit_bzero(key, sizeof(key));
	if (ok)
		EVP_EncodeBlock((unsigned char *)out + PREFIX_LEN, raw, NONCE + n + fin + TAG);
	free(raw);
	if (!ok) {
		free(out);
		return NULL;
	}
	return out;
}

char *secret_decrypt(const char *material, const char *value)
{
	char want[SECRET_KEY_ID_LEN + 1], id[SECRET_KEY_ID_LEN + 1];
	int v2 = secret_value_key_id(value, want) == 0, ignored;
	const char *b64 = v2 ? value + PREFIX_LEN : value;
	size_t blen = strlen(b64);
	unsigned char key[32], *raw;
	char *out = NULL;
	int rawlen, pad = 0, n = 0, fin = 0, ok = 0;
	EVP_CIPHER_CTX *ctx;

	derive(material, key);
	key_id_of(key, id);
	if (v2 && strcmp(id, want) != 0) {  /* sealed under another key */
		explicit_bzero(key, sizeof(key));
		return NULL;
	}
	raw = malloc(blen + 1);
	rawlen = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)blen);
	if (blen >= 2 && b64[blen - 1] == '=')
		pad = b64[blen - 2] == '=' ? 2 : 1;
	rawlen -= pad;
	if (rawlen < NONCE + TAG) {
		explicit_bzero(key, sizeof(key));
		free(raw);
		return NULL;
	}
	out = malloc((size_t)rawlen + 1);
	ctx = EVP_CIPHER_CTX_new();
	ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) == 1 &&
		(!v2 || EVP_DecryptUpdate(ctx, NULL, &ignored, (const unsigned char *)value,
					  PREFIX_LEN) == 1) &&
		EVP_DecryptUpdate(ctx, (unsigned char *)out, &n, raw + NONCE,
				  rawlen - NONCE - TAG) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG,
				    raw + rawlen - TAG) == 1 &&
		EVP_DecryptFinal_ex(ctx, (unsigned char *)out + n, &fin) == 1;
	EVP_CIPHER_CTX_free(ctx);
	explicit_bzero(key, sizeof(key));
	free(raw);
	if (!ok) {
		explicit_bzero(out, (size_t)rawlen + 1);
		free(out);
		return NULL;
	}
	out[n + fin] = '\0';
	return out;
}
