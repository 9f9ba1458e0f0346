/* Old-server passwords at rest: AES-256-GCM under a key derived (SHA-256)
   from ferryd's secret_key_file; stored as base64(nonce | ciphertext | tag). */
#ifndef FERRY_SECRET_H
#define FERRY_SECRET_H

/* malloc'd base64 text, or NULL */
char *secret_encrypt(const char *key_material, const char *plaintext);
/* malloc'd plaintext, or NULL if the key is wrong or the text was altered */
char *secret_decrypt(const char *key_material, const char *b64);

#endif
