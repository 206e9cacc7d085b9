/* test_b64: base64url (JWS segments) and loose standard base64 (keys from the environment). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "auth/b64.h"

/* RFC 4648 section 10, with the padding removed as RFC 7515 section 2 requires. */
static const struct {
    const char *plain, *encoded, *padded;
} rfc4648[] = {
    {"", "", ""},
    {"f", "Zg", "Zg=="},
    {"fo", "Zm8", "Zm8="},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg", "Zm9vYg=="},
    {"fooba", "Zm9vYmE", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};

static void test_url_encode_rfc4648_vectors(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof rfc4648 / sizeof rfc4648[0]; i++) {
        size_t n = strlen(rfc4648[i].plain);
        char out[16];

        assert_int_equal(b64url_encoded_len(n), strlen(rfc4648[i].encoded));
        assert_int_equal(b64url_encode((const uint8_t *)rfc4648[i].plain, n, out),
                         strlen(rfc4648[i].encoded));
        assert_string_equal(out, rfc4648[i].encoded);
    }
}

static void test_url_decode_rfc4648_vectors(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof rfc4648 / sizeof rfc4648[0]; i++) {
        size_t len = 99;
        uint8_t *out = b64url_decode(rfc4648[i].encoded, strlen(rfc4648[i].encoded), &len);

        assert_non_null(out);
        assert_int_equal(len, strlen(rfc4648[i].plain));
        assert_memory_equal(out, rfc4648[i].plain, len);
        free(out);
    }
}

/* 0xfb 0xff is "+/8=" in standard base64: the two characters base64url replaces. */
static void test_url_alphabet(void **state)
{
    const uint8_t bytes[] = {0xfb, 0xff, 0xbf};
    char out[8];
    uint8_t *dec;
    size_t len;

    (void)state;
    b64url_encode(bytes, 2, out);
    assert_string_equal(out, "-_8");
    b64url_encode(bytes, 3, out);
    assert_string_equal(out, "-_-_");
    dec = b64url_decode("-_-_", 4, &len);
    assert_non_null(dec);
    assert_int_equal(len, 3);
    assert_memory_equal(dec, bytes, 3);
    free(dec);
}

static void test_url_decode_rejects(void **state)
{
    static const char *bad[] = {
        "Zg==",      /* padding is not part of base64url in JWS */
        "+/8",       /* standard alphabet */
        "Zm9v YmFy", /* whitespace */
        "Z",         /* one digit cannot end a byte */
        "Zm9vY",     /* likewise after a full group */
        "Zh",        /* non-zero unused bits: a second encoding of "f" */
        "Zm9",       /* 'o' is 0x6f: "Zm8" is canonical, "Zm9" is not */
        "Zm9v\x80",
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(b64url_decode(bad[i], strlen(bad[i]), &len));
    /* An embedded NUL is outside the alphabet too. */
    assert_null(b64url_decode("Zm\0v", 4, &len));
}

static void test_url_roundtrip_all_lengths(void **state)
{
    uint8_t in[300];
    char enc[401];
    size_t n, i;

    (void)state;
    for (i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 131 + 7);
    for (n = 0; n <= sizeof in; n++) {
        size_t len, elen = b64url_encode(in, n, enc);
        uint8_t *dec = b64url_decode(enc, elen, &len);

        assert_int_equal(elen, b64url_encoded_len(n));
        assert_non_null(dec);
        assert_int_equal(len, n);
        assert_memory_equal(dec, in, n);
        free(dec);
    }
}

static void test_loose_rfc4648_vectors(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof rfc4648 / sizeof rfc4648[0]; i++) {
        const char *forms[2] = {rfc4648[i].padded, rfc4648[i].encoded};
        int f;

        for (f = 0; f < 2; f++) {
            size_t len = 99;
            uint8_t *out = b64_decode_loose(forms[f], strlen(forms[f]), &len);

            assert_non_null(out);
            assert_int_equal(len, strlen(rfc4648[i].plain));
            assert_memory_equal(out, rfc4648[i].plain, len);
            assert_int_equal(out[len], '\0');
            free(out);
        }
    }
}

static void test_loose_whitespace(void **state)
{
    static const char *forms[] = {
        "Zm9v\nYmFy\n", "Zm9v\r\nYmFy\r\n", "  Zm 9v\tYm Fy  ", "\n\nZm9vYmFy", "Zm9vYmE\n=\n",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        size_t len;
        uint8_t *out = b64_decode_loose(forms[i], strlen(forms[i]), &len);

        assert_non_null(out);
        assert_int_equal(len, i == 4 ? 5 : 6);
        assert_memory_equal(out, "foobar", len);
        free(out);
    }
}

static void test_loose_standard_alphabet(void **state)
{
    size_t len;
    uint8_t *out = b64_decode_loose("+/8=", 4, &len);

    (void)state;
    assert_non_null(out);
    assert_int_equal(len, 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    free(out);
}

static void test_loose_rejects(void **state)
{
    static const char *bad[] = {
        "Zm9v!",   /* not base64 */
        "-_8",     /* base64url characters */
        "Zm9vY",   /* five digits */
        "Zg=Zg",   /* data after padding */
        "Zg===",   /* three pad characters */
        "Zm9vYg=", /* one pad where two belong */
        "=",       /* padding alone */
        "-----BEGIN PRIVATE KEY-----",
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(b64_decode_loose(bad[i], strlen(bad[i]), &len));
}

static void test_loose_empty(void **state)
{
    size_t len = 99;
    uint8_t *out = b64_decode_loose(" \n", 2, &len);

    (void)state;
    assert_non_null(out);
    assert_int_equal(len, 0);
    assert_int_equal(out[0], '\0');
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_encode_rfc4648_vectors),
        cmocka_unit_test(test_url_decode_rfc4648_vectors),
        cmocka_unit_test(test_url_alphabet),
        cmocka_unit_test(test_url_decode_rejects),
        cmocka_unit_test(test_url_roundtrip_all_lengths),
        cmocka_unit_test(test_loose_rfc4648_vectors),
        cmocka_unit_test(test_loose_whitespace),
        cmocka_unit_test(test_loose_standard_alphabet),
        cmocka_unit_test(test_loose_rejects),
        cmocka_unit_test(test_loose_empty),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
