/* es256: ECDSA P-256 SHA-256 signatures, converted from OpenSSL's DER to JWS's raw R || S. */
#include "auth/es256.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include "auth/errbuf.h"

#include "auth/errbuf.h"

/* SEQUENCE header (2) + two INTEGERs of at most 2 + 33 bytes: DER ECDSA-Sig-Value for P-256 is
 * never longer than this, and its lengths always fit the one-byte short form. */
#define ES256_DER_MAX 72
#define ES256_HALF    32

int es256_sign(const apple_key *key, const uint8_t *msg, size_t n, uint8_t sig[ES256_SIG_LEN],
               char *err, size_t errlen)
{
    EVP_MD_CTX *ctx = NULL;
    uint8_t der[ES256_DER_MAX];
    size_t derlen = sizeof der;
    int rc = -1;

    if (key == NULL) {
        errbuf_set(err, errlen, "no signing key");
        goto out;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    /* A fresh context per call: the key is shared between threads, contexts are not. */
    if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key_pkey(key)) != 1 ||
        EVP_DigestSign(ctx, der, &derlen, msg, n) != 1) {
        unsigned long e = ERR_peek_last_error();
        const char *why = e != 0 ? ERR_reason_error_string(e) : NULL;

        errbuf_set(err, errlen, "ES256 signing failed (%s)", why != NULL ? why : "unknown reason");
        goto out;
    }
    if (es256_der_to_raw(der, derlen, sig) != 0) {
        errbuf_set(err, errlen, "ES256 signing produced a malformed DER signature");
        goto out;
    }
    rc = 0;
out:
    ERR_clear_error();
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Reads one DER INTEGER at der[*pos] holding a positive value of at most 32 bytes and writes it
 * right-aligned into out[0..32). Returns 0, or -1 when anything is off. */
static int es256_der_int(const uint8_t *der, size_t n, size_t *pos, uint8_t out[ES256_HALF])
{
    size_t p = *pos, len;
    const uint8_t *v;

    if (n - p < 2 || der[p] != 0x02)
        return -1;
    len = der[p + 1];
    /* Long-form lengths are never minimal for values this short (X.690 10.1). */
    if (len & 0x80)
        return -1;
    p += 2;
    if (len == 0 || len > n - p || len > ES256_HALF + 1)
        return -1;
    v = der + p;
    /* Two's complement: a set top bit would make R or S negative. */
    if (v[0] & 0x80)
        return -1;
    if (v[0] == 0x00) {
        /* DER allows a leading zero only to keep the next byte's top bit from reading as a sign;
         * anything else is a second encoding of the same value. */
        if (len == 1 || !(v[1] & 0x80))
            return -1;
        v++;
        len--;
    }
    if (len > ES256_HALF)
        return -1;
    memset(out, 0, ES256_HALF - len);
    memcpy(out + ES256_HALF - len, v, len);
    *pos = p + (size_t)(v - (der + p)) + len;
    return 0;
}

int es256_der_to_raw(const uint8_t *der, size_t n, uint8_t raw[ES256_SIG_LEN])
{
    uint8_t tmp[ES256_SIG_LEN];
    size_t pos = 2;

    if (der == NULL || n < 8 || n > ES256_DER_MAX)
        return -1;
    if (der[0] != 0x30 || (der[1] & 0x80) || der[1] != n - 2)
        return -1;
    if (es256_der_int(der, n, &pos, tmp) != 0 || es256_der_int(der, n, &pos, tmp + ES256_HALF) != 0)
        return -1;
    /* Trailing bytes inside the SEQUENCE mean this is not an ECDSA-Sig-Value. */
    if (pos != n)
        return -1;
    memcpy(raw, tmp, sizeof tmp);
    return 0;
}
