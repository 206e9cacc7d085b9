/* Unit tests for proxy/http1 when memory runs out: the parser's refusal names the proxy's own
 * failure (500), never the peer's request (431) or response (502). realloc is wrapped
 * (-Wl,--wrap=realloc, this test only) so that it can be made to fail. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http1.h"

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

static int fail_realloc;

void *__wrap_realloc(void *p, size_t n)
{
    return fail_realloc ? NULL : __real_realloc(p, n);
}

static const struct http1_limits limits = {.max_line = 8192, .max_head = 65536,
                                           .max_headers = 100};

static void parse_without_memory(llhttp_type_t type, const char *text)
{
    struct http1_msg m;
    memset(&m, 0, sizeof(m));
    http1_msg_init(&m, type, &limits);
    fail_realloc = 1;
    int r = http1_parse_head(&m, text, strlen(text));
    fail_realloc = 0;
    assert_int_equal(r, -1);
    assert_int_equal(m.error_status, 500);
    assert_non_null(strstr(m.error_detail, "out of memory"));
    http1_msg_deinit(&m);
}

/* Regression: a request whose header array could not grow was answered 431 (as if it had too
 * many fields), and an upstream response 502 (as if Apple had sent a bad one). */
static void test_regression_header_oom_is_500(void **state)
{
    parse_without_memory(HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    parse_without_memory(HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regression_header_oom_is_500),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
