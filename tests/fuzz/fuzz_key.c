/* fuzz_key: libFuzzer target for key material and signatures: key_load_text (PEM, or base64
 * of PEM, as fastlane's variables carry it), key_load_pem, and es256_der_to_raw on the same
 * bytes. A key that loads must be a usable P-256 signing key (it signs, and the raw signature
 * is 64 bytes); a DER signature that converts must round-trip through OpenSSL's own parser to
 * the same R and S. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>

#include "auth/es256.h"
#include "auth/key.h"

#define CHECK(cond, msg)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_key: invariant broken: %s: %s\n", #cond, msg);                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void try_key(int (*load)(const char *, size_t, apple_key **, char *, size_t),
                    const char *buf, size_t size)
{
    apple_key *key = NULL;
    char err[256];
    err[0] = '\0';
    if (load(buf, size, &key, err, sizeof(err)) == 0) {
        uint8_t sig[ES256_SIG_LEN];
        CHECK(key != NULL, "loaded without a key");
        CHECK(es256_sign(key, (const uint8_t *)"x.y", 3, sig, err, sizeof(err)) == 0,
              "a loaded key does not sign");
        key_free(key);
    } else {
        CHECK(key == NULL, "failed with a key");
        CHECK(err[0] != '\0', "failed without a message");
        CHECK(strstr(err, "PRIVATE KEY-----") == NULL || strlen(err) < 200,
              "the message repeats key text");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1); /* exact size, not NUL-terminated */
    uint8_t raw[ES256_SIG_LEN];
    memcpy(buf, data, size);

    try_key(key_load_text, buf, size);
    try_key(key_load_pem, buf, size);

    if (es256_der_to_raw((const uint8_t *)buf, size, raw) == 0) {
        /* What the converter accepted, OpenSSL must read as the same (r, s) when the DER is
         * strict; the converter may be laxer, never different. */
        const unsigned char *p = (const unsigned char *)buf;
        ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)size);
        if (s != NULL && p == (const unsigned char *)buf + size) {
            const BIGNUM *r = NULL, *ss = NULL;
            uint8_t want[ES256_SIG_LEN];
            ECDSA_SIG_get0(s, &r, &ss);
            CHECK(BN_num_bytes(r) <= 32 && BN_num_bytes(ss) <= 32, "integers over 32 bytes");
            BN_bn2binpad(r, want, 32);
            BN_bn2binpad(ss, want + 32, 32);
            CHECK(memcmp(raw, want, ES256_SIG_LEN) == 0, "R||S differs from OpenSSL's parse");
        }
        ECDSA_SIG_free(s);
    }
    free(buf);
    return 0;
}
