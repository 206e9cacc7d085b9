/* Unit tests for proxy/http_error: the proxy's own responses byte for byte, the detail's JSON
 * escaping, and a detail too long for the response cut at a character, never mid-escape. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http_error.h"

static void test_whole_response(void **state)
{
    char out[HTTP_ERROR_MAX + 1];
    size_t n = http_error_format(out, 404, proxy_err_no_route, "no route", 0, NULL);
    out[n] = '\0';
    assert_string_equal(out,
                        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                        "Content-Length: 114\r\n\r\n"
                        "{\"errors\":[{\"status\":\"404\",\"code\":\"PROXY_NO_ROUTE\","
                        "\"title\":\"No route matches this request.\",\"detail\":\"no route\"}]}");
    n = http_error_format(out, 429, proxy_err_rate_limited, NULL, 1, "Retry-After: 2\r\n");
    out[n] = '\0';
    assert_non_null(strstr(out, "HTTP/1.1 429 Too Many Requests\r\n"));
    assert_non_null(strstr(out, "\r\nConnection: close\r\nRetry-After: 2\r\n\r\n{"));
    /* without a detail, the title is the detail */
    assert_non_null(strstr(out, "\"detail\":\"The client is over its request rate.\"}]}"));
}

struct escape_case {
    const char *detail, *json;
};

static void test_escaping(void **state)
{
    static const struct escape_case cases[] = {
        {"plain", "plain"},
        {"a \"quoted\" \\ path", "a \\\"quoted\\\" \\\\ path"},
        {"\b\f\n\r\t", "\\b\\f\\n\\r\\t"},
        {"\x01\x1f\x7f", "\\u0001\\u001f\x7f"},
        {"caf\xc3\xa9 \xe2\x9c\x93", "caf\xc3\xa9 \xe2\x9c\x93"},
        {"</script>", "</script>"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[HTTP_ERROR_MAX + 1], want[256];
        size_t n = http_error_format(out, 400, proxy_err_bad_request, cases[i].detail, 0, NULL);
        out[n] = '\0';
        snprintf(want, sizeof(want), "\"detail\":\"%s\"}]}", cases[i].json);
        if (strstr(out, want) == NULL)
            fail_msg("row %zu: %s does not end in %s", i, out, want);
    }
}

/* The Content-Length the head states is the body that follows. */
static void check_length(const char *out, size_t n)
{
    const char *cl = strstr(out, "Content-Length: ");
    const char *body = strstr(out, "\r\n\r\n");
    assert_non_null(cl);
    assert_non_null(body);
    assert_int_equal(strtoul(cl + 16, NULL, 10), n - (size_t)(body + 4 - out));
}

static void test_long_detail_is_cut_whole(void **state)
{
    static const char *const units[] = {"\"", "\x01", "\xe2\x9c\x93", "x"};
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        char detail[3 * HTTP_ERROR_MAX], out[HTTP_ERROR_MAX + 1];
        size_t ul = strlen(units[u]), dl = 0;
        while (dl + ul < sizeof(detail))
            memcpy(detail + dl, units[u], ul), dl += ul;
        detail[dl] = '\0';
        size_t n = http_error_format(out, 502, proxy_err_upstream_tls, detail, 1,
                                     "X-Extra: 1\r\n");
        assert_true(n <= HTTP_ERROR_MAX);
        out[n] = '\0';
        check_length(out, n);
        assert_string_equal(out + n - 4, "\"}]}");
        const char *d = strstr(out, "\"detail\":\"") + 10;
        size_t dlen = (size_t)(out + n - 4 - d);
        /* whole escapes or sequences only: the cut detail is a repetition of one unit */
        size_t el = u == 0 ? 2 : u == 1 ? 6 : ul;
        assert_true(dlen > 1000);
        assert_int_equal(dlen % el, 0);
    }
}

static void test_statuses(void **state)
{
    assert_int_equal(http_error_status(proxy_err_bad_request), 400);
    assert_int_equal(http_error_status(proxy_err_proxy_auth), 407);
    assert_int_equal(http_error_status(proxy_err_upstream_timeout), 504);
    assert_string_equal(http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_reason(299), "Unknown");
    assert_string_equal(http_reason(410), "Gone");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_response),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_long_detail_is_cut_whole),
        cmocka_unit_test(test_statuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
