/* AES-256-GCM sealing of old-server passwords (see secret.h). */
#include "secret.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#define NONCE 12
#define TAG 16

static void derive(const char *material, unsigned char key[32])
{
	SHA256((const unsigned char *)material, strlen(material), key);
}

char *secret_encrypt(const char *material, const char *plaintext)
{
	int len = (int)strlen(plaintext), n = 0, fin = 0;
	unsigned char key[32], *raw = malloc((size_t)len + NONCE + TAG);
	char *out = malloc(4 * (((size_t)len + NONCE + TAG + 2) / 3) + 1);
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int ok;

	derive(material, key);
	ok = RAND_bytes(raw, NONCE) == 1 &&
		EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) == 1 &&
		EVP_EncryptUpdate(ctx, raw + NONCE, &n, (const unsigned char *)plaintext, len) == 1 &&
		EVP_EncryptFinal_ex(ctx, raw + NONCE + n, &fin) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, raw + NONCE + n + fin) == 1;
	EVP_CIPHER_CTX_free(ctx);
	explicit_bzero(key, sizeof(key));
	if (ok)
		EVP_EncodeBlock((unsigned char *)out, raw, NONCE + n + fin + TAG);
	free(raw);
	if (!ok) {
		free(out);
		return NULL;
	}
	return out;
}

char *secret_decrypt(const char *material, const char *b64)
{
	size_t blen = strlen(b64);
	unsigned char key[32], *raw = malloc(blen + 1);
	char *out = NULL;
	int rawlen, pad = 0, n = 0, fin = 0, ok = 0;
	EVP_CIPHER_CTX *ctx;

	rawlen = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)blen);
	if (blen >= 2 && b64[blen - 1] == '=')
		pad = b64[blen - 2] == '=' ? 2 : 1;
	rawlen -= pad;
	if (rawlen < NONCE + TAG) {
		free(raw);
		return NULL;
	}
	derive(material, key);
	out = malloc((size_t)rawlen + 1);
	ctx = EVP_CIPHER_CTX_new();
	ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) == 1 &&
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
