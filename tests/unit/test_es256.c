/* test_es256: raw R || S signatures that OpenSSL verifies, and a DER parser that refuses hostile
 * input. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "auth/es256.h"
#include "auth/key.h"

/* Keys are made at test time: no private key is ever committed. */
static int setup_key(void **state)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    apple_key *key = NULL;
    char err[256], *pem;
    long n;

    if (pkey == NULL || bio == NULL ||
        PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) != 1)
        return -1;
    n = BIO_get_mem_data(bio, &pem);
    if (key_load_pem(pem, (size_t)n, &key, err, sizeof err) != 0)
        return -1;
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    *state = key;
    return 0;
}

static int teardown_key(void **state)
{
    key_free(*state);
    return 0;
}

/* Independent conversion back to DER with OpenSSL's own ECDSA_SIG. No cmocka asserts here:
 * threads call it too. Returns the DER length, or -1. */
static int raw_to_der(const uint8_t raw[64], uint8_t **der)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, 32, NULL), *s = BN_bin2bn(raw + 32, 32, NULL);
    int n = -1;

    *der = NULL;
    if (sig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(sig, r, s) != 1) {
        BN_free(r);
        BN_free(s);
    } else {
        n = i2d_ECDSA_SIG(sig, der);
    }
    ECDSA_SIG_free(sig);
    return n;
}

/* 1 when raw verifies over msg with the key's public half. */
static int verify_raw(const apple_key *key, const uint8_t *msg, size_t n, const uint8_t raw[64])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t *der;
    int derlen = raw_to_der(raw, &der), ok = 0;

    if (ctx != NULL && derlen > 0 &&
        EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key_pkey(key)) == 1)
        ok = EVP_DigestVerify(ctx, der, (size_t)derlen, msg, n) == 1;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    return ok;
}

static void test_sign_verifies(void **state)
{
    const apple_key *key = *state;
    const char *msg = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0";
    uint8_t sig[ES256_SIG_LEN];
    char err[256];

    assert_int_equal(es256_sign(key, (const uint8_t *)msg, strlen(msg), sig, err, sizeof err), 0);
    assert_true(verify_raw(key, (const uint8_t *)msg, strlen(msg), sig));
    /* One flipped bit in the message must fail: the signature covers exactly these bytes. */
    assert_false(
        verify_raw(key, (const uint8_t *)"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ5In0", strlen(msg), sig));
}

/* Many signatures: every one 64 bytes, verifying, and equal to OpenSSL's own DER decoding
 * (about 1 in 128 has R or S shorter than 32 bytes, exercising the left padding). */
static void test_many_random_signatures(void **state)
{
    const apple_key *key = *state;
    int i, short_seen = 0;

    for (i = 0; i < 1000; i++) {
        uint8_t msg[64], der[80], raw[64], expect[64], sig[ES256_SIG_LEN];
        size_t derlen = sizeof der;
        const uint8_t *p = der;
        const BIGNUM *r, *s;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        ECDSA_SIG *es;
        char err[256];

        assert_int_equal(RAND_bytes(msg, sizeof msg), 1);
        assert_int_equal(es256_sign(key, msg, sizeof msg, sig, err, sizeof err), 0);
        assert_true(verify_raw(key, msg, sizeof msg, sig));

        assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key_pkey(key)), 1);
        assert_int_equal(EVP_DigestSign(ctx, der, &derlen, msg, sizeof msg), 1);
        EVP_MD_CTX_free(ctx);
        es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
        assert_non_null(es);
        ECDSA_SIG_get0(es, &r, &s);
        if (BN_num_bytes(r) < 32 || BN_num_bytes(s) < 32)
            short_seen++;
        assert_int_equal(BN_bn2binpad(r, expect, 32), 32);
        assert_int_equal(BN_bn2binpad(s, expect + 32, 32), 32);
        ECDSA_SIG_free(es);
        assert_int_equal(es256_der_to_raw(der, derlen, raw), 0);
        assert_memory_equal(raw, expect, 64);
    }
    (void)short_seen;
}

struct thread_arg {
    const apple_key *key;
    int failures;
};

static void *sign_thread(void *p)
{
    struct thread_arg *a = p;
    int i;

    for (i = 0; i < 200; i++) {
        uint8_t msg[16] = {(uint8_t)i}, sig[ES256_SIG_LEN];
        char err[256];

        if (es256_sign(a->key, msg, sizeof msg, sig, err, sizeof err) != 0 ||
            !verify_raw(a->key, msg, sizeof msg, sig))
            a->failures++;
    }
    return NULL;
}

/* The header promises that threads may share one key. */
static void test_sign_threads_share_key(void **state)
{
    pthread_t t[4];
    struct thread_arg a[4];
    int i;

    for (i = 0; i < 4; i++) {
        a[i].key = *state;
        a[i].failures = 0;
        assert_int_equal(pthread_create(&t[i], NULL, sign_thread, &a[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].failures, 0);
    }
}

/* Builds SEQUENCE { INTEGER r, INTEGER s } from the given content bytes, as DER writes them. */
static size_t make_der(uint8_t *out, const uint8_t *r, size_t rlen, const uint8_t *s, size_t slen)
{
    size_t o = 0;

    out[o++] = 0x30;
    out[o++] = (uint8_t)(4 + rlen + slen);
    out[o++] = 0x02;
    out[o++] = (uint8_t)rlen;
    memcpy(out + o, r, rlen);
    o += rlen;
    out[o++] = 0x02;
    out[o++] = (uint8_t)slen;
    memcpy(out + o, s, slen);
    o += slen;
    return o;
}

static void fill(uint8_t *p, size_t n, uint8_t v)
{
    memset(p, v, n);
}

static void test_der_short_integers(void **state)
{
    uint8_t r[33], s[33], der[80], raw[64], expect[64];
    size_t n;

    (void)state;
    /* R of 31 bytes: left-padded with one zero. */
    fill(r, 31, 0x11);
    fill(s, 32, 0x22);
    n = make_der(der, r, 31, s, 32);
    assert_int_equal(es256_der_to_raw(der, n, raw), 0);
    memset(expect, 0, 64);
    fill(expect + 1, 31, 0x11);
    fill(expect + 32, 32, 0x22);
    assert_memory_equal(raw, expect, 64);

    /* S of 30 bytes. */
    n = make_der(der, s, 32, r, 30);
    assert_int_equal(es256_der_to_raw(der, n, raw), 0);
    memset(expect, 0, 64);
    fill(expect, 32, 0x22);
    fill(expect + 34, 30, 0x11);
    assert_memory_equal(raw, expect, 64);

    /* One-byte values. */
    r[0] = 0x01;
    s[0] = 0x7f;
    n = make_der(der, r, 1, s, 1);
    assert_int_equal(es256_der_to_raw(der, n, raw), 0);
    memset(expect, 0, 64);
    expect[31] = 0x01;
    expect[63] = 0x7f;
    assert_memory_equal(raw, expect, 64);
}

static void test_der_leading_zero(void **state)
{
    uint8_t r[33], s[33], der[80], raw[64], expect[64];
    size_t n;

    (void)state;
    /* 33 bytes: 0x00 then a byte with the top bit set, for both R and S. */
    r[0] = 0x00;
    fill(r + 1, 32, 0xab);
    s[0] = 0x00;
    fill(s + 1, 32, 0xcd);
    n = make_der(der, r, 33, s, 33);
    assert_int_equal(n, 72);
    assert_int_equal(es256_der_to_raw(der, n, raw), 0);
    fill(expect, 32, 0xab);
    fill(expect + 32, 32, 0xcd);
    assert_memory_equal(raw, expect, 64);

    /* A short value that still needs the zero: 0x00 0x80 ... (17 bytes total). */
    r[0] = 0x00;
    fill(r + 1, 16, 0x80);
    fill(s, 32, 0x01);
    n = make_der(der, r, 17, s, 32);
    assert_int_equal(es256_der_to_raw(der, n, raw), 0);
    memset(expect, 0, 64);
    fill(expect + 16, 16, 0x80);
    fill(expect + 32, 32, 0x01);
    assert_memory_equal(raw, expect, 64);
}

static void test_der_hostile(void **state)
{
    uint8_t good[80], bad[80], raw[64], r[40], s[40];
    size_t n;

    (void)state;
    fill(r, 32, 0x11);
    fill(s, 32, 0x22);
    n = make_der(good, r, 32, s, 32);
    assert_int_equal(es256_der_to_raw(good, n, raw), 0);

    /* Too short, empty, NULL. */
    assert_int_equal(es256_der_to_raw(good, 0, raw), -1);
    assert_int_equal(es256_der_to_raw(good, 7, raw), -1);
    assert_int_equal(es256_der_to_raw(NULL, 8, raw), -1);

    /* Truncated anywhere. */
    for (size_t cut = 1; cut < n; cut++)
        assert_int_equal(es256_der_to_raw(good, cut, raw), -1);

    /* Wrong outer tag (SET instead of SEQUENCE). */
    memcpy(bad, good, n);
    bad[0] = 0x31;
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* Sequence length past the end, and shorter than the content. */
    memcpy(bad, good, n);
    bad[1] = (uint8_t)(n - 2 + 1);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
    bad[1] = (uint8_t)(n - 2 - 1);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* Trailing byte after the sequence. */
    memcpy(bad, good, n);
    bad[n] = 0x00;
    assert_int_equal(es256_der_to_raw(bad, n + 1, raw), -1);

    /* Trailing bytes inside the sequence (a third INTEGER, length adjusted). */
    memcpy(bad, good, n);
    bad[1] = (uint8_t)(n - 2 + 3);
    bad[n] = 0x02;
    bad[n + 1] = 0x01;
    bad[n + 2] = 0x01;
    assert_int_equal(es256_der_to_raw(bad, n + 3, raw), -1);

    /* Long-form sequence length: 30 81 44. */
    bad[0] = 0x30;
    bad[1] = 0x81;
    bad[2] = (uint8_t)(n - 2);
    memcpy(bad + 3, good + 2, n - 2);
    assert_int_equal(es256_der_to_raw(bad, n + 1, raw), -1);

    /* Long-form integer length: 02 81 20. */
    bad[0] = 0x30;
    bad[1] = (uint8_t)(n - 2 + 1);
    bad[2] = 0x02;
    bad[3] = 0x81;
    bad[4] = 0x20;
    memcpy(bad + 5, good + 4, n - 4);
    assert_int_equal(es256_der_to_raw(bad, n + 1, raw), -1);

    /* Integer length past the end of the sequence. */
    memcpy(bad, good, n);
    bad[3] = 0x7f;
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
    memcpy(bad, good, n);
    bad[4 + 32 + 1] = 0x21;
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* Wrong integer tag. */
    memcpy(bad, good, n);
    bad[2] = 0x03;
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
    memcpy(bad, good, n);
    bad[4 + 32] = 0x04;
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* Negative R, negative S. */
    fill(r, 32, 0x81);
    n = make_der(bad, r, 32, s, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
    n = make_der(bad, s, 32, r, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* 33 bytes without the sign zero: a value over 256 bits. */
    fill(r, 33, 0x11);
    n = make_der(bad, r, 33, s, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* 34 bytes even with a leading zero. */
    r[0] = 0x00;
    fill(r + 1, 33, 0x91);
    n = make_der(bad, r, 34, s, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* A leading zero DER forbids (next byte's top bit clear): a second encoding. */
    r[0] = 0x00;
    fill(r + 1, 32, 0x11);
    n = make_der(bad, r, 33, s, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
    r[0] = 0x00;
    r[1] = 0x00;
    fill(r + 2, 31, 0x91);
    n = make_der(bad, r, 33, s, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);

    /* Zero-length integer, and the value zero (never a valid R or S). */
    n = make_der(bad, r, 0, s, 32);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
    r[0] = 0x00;
    n = make_der(bad, s, 32, r, 1);
    assert_int_equal(es256_der_to_raw(bad, n, raw), -1);
}

/* Every single-byte change of a valid signature, and random bytes: no crash, no read past the
 * end (AddressSanitizer watches), and an accepted result always 64 bytes written in place. */
static void test_der_mutations(void **state)
{
    uint8_t good[80], r[32], s[32], raw[64];
    size_t n, i;
    int v, k;

    (void)state;
    fill(r, 32, 0x11);
    fill(s, 32, 0x22);
    n = make_der(good, r, 32, s, 32);
    for (i = 0; i < n; i++) {
        for (v = 0; v < 256; v++) {
            uint8_t *copy = malloc(n);

            memcpy(copy, good, n);
            copy[i] = (uint8_t)v;
            (void)es256_der_to_raw(copy, n, raw);
            free(copy);
        }
    }
    for (k = 0; k < 20000; k++) {
        uint8_t len = 0, *buf;

        RAND_bytes(&len, 1);
        len %= 80;
        buf = malloc(len ? len : 1);
        RAND_bytes(buf, len ? len : 1);
        if (len >= 2) {
            buf[0] = 0x30;
            buf[1] = (uint8_t)(len - 2);
        }
        (void)es256_der_to_raw(buf, len, raw);
        free(buf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_verifies),
        cmocka_unit_test(test_many_random_signatures),
        cmocka_unit_test(test_sign_threads_share_key),
        cmocka_unit_test(test_der_short_integers),
        cmocka_unit_test(test_der_leading_zero),
        cmocka_unit_test(test_der_hostile),
        cmocka_unit_test(test_der_mutations),
    };

    return cmocka_run_group_tests(tests, setup_key, teardown_key);
}
