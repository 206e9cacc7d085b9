/* unit_key: a throwaway P-256 key for the unit tests (made with OpenSSL, loaded through
 * key_load_pem like a .p8 file). */
#ifndef AAP_TESTS_UNIT_KEY_H
#define AAP_TESTS_UNIT_KEY_H

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth/key.h"

/* A new key (the caller frees it with key_free), or NULL. */
static inline apple_key *unit_key_new(void)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    apple_key *key = NULL;
    char err[256], *pem;
    long n;

    if (pkey != NULL && bio != NULL &&
        PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) == 1) {
        n = BIO_get_mem_data(bio, &pem);
        if (key_load_pem(pem, (size_t)n, &key, err, sizeof err) != 0)
            key = NULL;
    }
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return key;
}

#endif
