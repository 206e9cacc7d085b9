/* Unit tests for proxy/linkrw: origin rewriting in streamed JSON, across every chunk split. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/linkrw.h"

struct out {
    char buf[8192];
    size_t len;
};

static void emit(void *arg, const char *data, size_t len)
{
    struct out *o = arg;
    assert_true(o->len + len < sizeof(o->buf));
    memcpy(o->buf + o->len, data, len);
    o->len += len;
}

static const char *FROM = "https://api.appstoreconnect.apple.com";
static const char *TO = "http://localhost:8080";

/* Feeds in in two pieces split at every position, and in one-byte pieces. */
static void check(const char *in, const char *want)
{
    size_t n = strlen(in);
    for (size_t split = 0; split <= n; split++) {
        struct linkrw rw;
        struct out o = {.len = 0};
        assert_int_equal(linkrw_init(&rw, FROM, TO), 0);
        linkrw_feed(&rw, in, split, emit, &o);
        linkrw_feed(&rw, in + split, n - split, emit, &o);
        linkrw_finish(&rw, emit, &o);
        o.buf[o.len] = '\0';
        if (strcmp(o.buf, want) != 0)
            fail_msg("split %zu: got %s want %s", split, o.buf, want);
    }
    struct linkrw rw;
    struct out o = {.len = 0};
    assert_int_equal(linkrw_init(&rw, FROM, TO), 0);
    for (size_t i = 0; i < n; i++)
        linkrw_feed(&rw, in + i, 1, emit, &o);
    linkrw_finish(&rw, emit, &o);
    o.buf[o.len] = '\0';
    assert_string_equal(o.buf, want);
}

static void test_links(void **state)
{
    check("{\"links\":{\"self\":\"https://api.appstoreconnect.apple.com/v1/apps\","
          "\"next\":\"https://api.appstoreconnect.apple.com/v1/apps?cursor=AB&limit=2\"}}",
          "{\"links\":{\"self\":\"http://localhost:8080/v1/apps\","
          "\"next\":\"http://localhost:8080/v1/apps?cursor=AB&limit=2\"}}");
}

static void test_escaped_slashes(void **state)
{
    check("{\"next\":\"https:\\/\\/api.appstoreconnect.apple.com\\/v1\\/apps\"}",
          "{\"next\":\"http:\\/\\/localhost:8080\\/v1\\/apps\"}");
}

static void test_not_the_origin(void **state)
{
    /* a longer host, another host, a partial match at the very end, plain text */
    check("https://api.appstoreconnect.apple.com.evil.example/x", 
          "https://api.appstoreconnect.apple.com.evil.example/x");
    check("https://api.appstoreconnect.apple.co/x hhh https", "https://api.appstoreconnect.apple.co/x hhh https");
    check("\"https://api.appstoreconnect.apple", "\"https://api.appstoreconnect.apple");
    check("https://api.appstoreconnect.apple.com:8443/x", "https://api.appstoreconnect.apple.com:8443/x");
    check("no links here", "no links here");
    check("", "");
}

static void test_at_end(void **state)
{
    check("\"https://api.appstoreconnect.apple.com", "\"http://localhost:8080");
    check("https://api.appstoreconnect.apple.comhttps://api.appstoreconnect.apple.com/",
          "https://api.appstoreconnect.apple.comhttp://localhost:8080/");
}

static void test_many(void **state)
{
    char in[4096] = "", want[4096] = "";
    for (int i = 0; i < 40; i++) {
        strcat(in, "{\"u\":\"https://api.appstoreconnect.apple.com/v1/x\"},");
        strcat(want, "{\"u\":\"http://localhost:8080/v1/x\"},");
    }
    check(in, want);
}

static void test_applies(void **state)
{
    assert_true(linkrw_applies("application/json", 16, NULL, 0));
    assert_true(linkrw_applies("application/json; charset=utf-8", 31, NULL, 0));
    assert_true(linkrw_applies("application/vnd.api+json", 24, "identity", 8));
    assert_false(linkrw_applies("application/json", 16, "gzip", 4));
    assert_false(linkrw_applies("application/a-gzip", 18, NULL, 0));
    assert_false(linkrw_applies("text/html", 9, NULL, 0));
    assert_false(linkrw_applies(NULL, 0, NULL, 0));
}

static void test_too_long(void **state)
{
    char big[LINKRW_MAX_ORIGIN + 50];
    struct linkrw rw;
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(linkrw_init(&rw, FROM, big), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_links),    cmocka_unit_test(test_escaped_slashes),
        cmocka_unit_test(test_not_the_origin), cmocka_unit_test(test_at_end),
        cmocka_unit_test(test_many),     cmocka_unit_test(test_applies),
        cmocka_unit_test(test_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
