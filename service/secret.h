/* Old-server passwords at rest: AES-256-GCM under a key derived (SHA-256)
   from ferryd's secret_key_file. Stored as "v2:KEYID:" followed by
   base64(nonce | ciphertext | tag), the prefix authenticated as GCM
   additional data. KEYID names the key (secret_key_id) so a rotation can
   tell which key sealed a value. Values from before key identifiers are
   the bare base64 text; they still decrypt. */
#ifndef FERRY_SECRET_H
#define FERRY_SECRET_H

#define SECRET_KEY_ID_LEN 8

/* The key's identifier: 8 hex digits, the first 4 bytes of SHA-256 of the
   AES key. Not secret (it reveals nothing usable about the key). */
void secret_key_id(const char *key_material, char id[SECRET_KEY_ID_LEN + 1]);
/* The identifier a stored value was sealed under: 0, or -1 for a value
   from before key identifiers (id set to ""). */
int secret_value_key_id(const char *value, char id[SECRET_KEY_ID_LEN + 1]);
/* malloc'd stored text, or NULL */
char *secret_encrypt(const char *key_material, const char *plaintext);
/* malloc'd plaintext, or NULL if the key is wrong or the text was altered */
char *secret_decrypt(const char *key_material, const char *value);

#endif
