/* key: loading Apple's .p8 signing keys (PKCS#8 PEM, P-256 EC private keys only). */
#ifndef AAP_AUTH_KEY_H
#define AAP_AUTH_KEY_H

#include <stddef.h>
#include <openssl/evp.h>

typedef struct apple_key apple_key;

/* Loads a key from PEM text. Tolerates CRLF line ends, leading/trailing whitespace and a missing
 * final newline. Refuses anything that is not a P-256 EC private key with a message in err that
 * says what it got, e.g. "an EC key on secp384r1 (P-384); Apple keys are P-256",
 * "an RSA key", "a public key, not a private key", "a certificate, not a private key",
 * "not a PEM private key". Returns 0 and a new key in *out (caller frees with key_free), or -1. */
int key_load_pem(const char *pem, size_t len, apple_key **out, char *err, size_t errlen);

/* Loads a key from text that is either PEM or the standard base64 of PEM (fastlane's
 * APP_STORE_CONNECT_API_KEY_IS_KEY_CONTENT_BASE64): PEM when it contains "-----BEGIN", else
 * base64-decoded first. Decoded copies are wiped before they are freed. */
int key_load_text(const char *text, size_t len, apple_key **out, char *err, size_t errlen);

/* Loads a key from a file. The file must be a regular file (a directory, FIFO or device is
 * refused, naming the path). When it is group- or world-readable, a warning naming the file and
 * the fix ("chmod 600 FILE") is written to warn (warn[0] stays '\0' otherwise; warn may be NULL).
 * The buffer that held the file is wiped before it is freed. Errors name the path. */
int key_load_file(const char *path, apple_key **out, char *err, size_t errlen, char *warn,
                  size_t warnlen);

/* Frees the key (OpenSSL wipes the private scalar). key_free(NULL) is a no-op. */
void key_free(apple_key *key);

/* The key's EVP_PKEY, owned by the key (do not free). */
EVP_PKEY *key_pkey(const apple_key *key);

/* The public key as PEM (SubjectPublicKeyInfo), malloc'd, caller frees; NULL on failure.
 * Used by `token --decode`, tests and the demo to verify tokens independently. */
char *key_public_pem(const apple_key *key);

#endif
