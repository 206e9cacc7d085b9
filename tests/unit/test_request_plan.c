/* Unit tests for proxy/request's request_plan, table by table: which requests are refused and
 * with what, which route and path a forwarded one takes, and the exact head re-serialised for
 * the upstream. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http_error.h"
#include "proxy/live.h"
#include "proxy/request.h"
#include "proxy/runtime.h"
#include "unit_conf.h"

static struct live *live;
static struct runtime *rt;

/* Routes: 0 WeatherKit under /api/v1/ (links not rewritten), 1 /strip/ with strip_prefix to a non-default port,
 * 2 a host-bound route, 3 App Store Connect under /v1/ with rewrite_links; bodies over 1000
 * bytes are refused. */
static int setup(void **state)
{
    char err[256];
    struct conf *conf = unit_conf(
        UNIT_CONF_START " \"credentials\": {" UNIT_CRED_ASC "},"
        " \"routes\": ["
        "  {\"path_prefix\": \"/api/v1/\", \"upstream\": \"https://weatherkit.apple.com\","
        "   \"credential\": \"asc\", \"rewrite_links\": false},"
        "  {\"path_prefix\": \"/strip/\", \"strip_prefix\": \"/strip\","
        "   \"upstream\": \"https://api.appstoreconnect.apple.com:8443\", \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/\", \"host\": \"internal.example\","
        "   \"upstream\": \"https://api.storekit.itunes.apple.com\", \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/v1/\", \"upstream\": \"https://api.appstoreconnect.apple.com\","
        "   \"credential\": \"asc\", \"rewrite_links\": true}],"
        " \"limits\": {\"max_body_bytes\": 1000}}");
    live = live_new();
    rt = runtime_new(conf, live, err, sizeof(err));
    if (rt == NULL)
        fail_msg("runtime_new: %s", err);
    return 0;
}

static int teardown(void **state)
{
    runtime_unref(rt);
    live_free(live);
    return 0;
}

struct refusal_case {
    const char *request;
    const char *code;
    int keep;
};

static void test_refusals(void **state)
{
    static const struct refusal_case cases[] = {
        {"CONNECT api.appstoreconnect.apple.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
         proxy_err_connect, 0},
        {"GET http://evil.example/v1/apps HTTP/1.1\r\nHost: evil.example\r\n\r\n",
         proxy_err_forbidden_host, 1},
        {"POST http://evil.example/v1/apps HTTP/1.1\r\nHost: e\r\nContent-Length: 2\r\n\r\n",
         proxy_err_forbidden_host, 0},
        {"GET http://user@api.appstoreconnect.apple.com/v1/apps HTTP/1.1\r\nHost: x\r\n\r\n",
         proxy_err_bad_request, 0},
        {"GET http:///v1/apps HTTP/1.1\r\nHost: x\r\n\r\n", proxy_err_bad_request, 0},
        {"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n", proxy_err_no_route, 1},
        {"GET /v1/../admin HTTP/1.1\r\nHost: localhost\r\n\r\n", proxy_err_bad_request, 0},
        {"GET /v1/%2e%2E/admin HTTP/1.1\r\nHost: localhost\r\n\r\n", proxy_err_bad_request, 0},
        {"GET /v1/./apps HTTP/1.1\r\nHost: localhost\r\n\r\n", proxy_err_bad_request, 0},
        {"GET /v1/apps%2F..%2Fx HTTP/1.1\r\nHost: localhost\r\n\r\n", proxy_err_bad_request, 0},
        {"GET /v1/apps%5c HTTP/1.1\r\nHost: localhost\r\n\r\n", proxy_err_bad_request, 0},
        {"POST /v1/apps HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1001\r\n\r\n",
         proxy_err_body_too_large, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http1_msg m;
        struct request_plan p;
        unit_parse(&m, cases[i].request);
        assert_int_equal(request_plan(&rt->routes, &m, &p), 0);
        if (p.code != cases[i].code || p.keep != cases[i].keep)
            fail_msg("row %zu: %s keep %d, want %s keep %d (%s)", i, p.code ? p.code : "none",
                     p.keep, cases[i].code, cases[i].keep, p.detail);
        assert_null(p.head);
        request_plan_deinit(&p);
        http1_msg_deinit(&m);
    }
}

struct forward_case {
    const char *request;
    size_t route;
    const char *path;      /* what it was routed and authorised by */
    const char *authority; /* NULL: none */
    int is_head, idempotent, http10;
    const char *head;      /* the exact upstream head */
};

/* The head's parts (what an HTTP/2 upstream is sent) say the same as its text: the method, the
 * target of the request line, and each line after Host as one field, in order. */
static void check_parts(size_t row, const struct request_plan *p)
{
    const char *line = memchr(p->head, '\n', p->head_len);
    const char *end = p->head + p->head_len;
    size_t i;
    if (p->method_len == 0 || p->head[p->method_len] != ' ' ||
        p->target_off != p->method_len + 1 ||
        memcmp(p->head + p->target_off + p->target_len, " HTTP/1.1\r\n", 11) != 0)
        fail_msg("row %zu: request line parts", row);
    line = memchr(line + 1, '\n', (size_t)(end - line - 1)); /* after Host */
    for (i = 0; i < p->nfields; i++) {
        const struct http1_header *f = &p->fields[i];
        if (line == NULL || f->name != line + 1 || f->value != f->name + f->name_len + 2 ||
            memcmp(f->name + f->name_len, ": ", 2) != 0 ||
            memcmp(f->value + f->value_len, "\r\n", 2) != 0)
            fail_msg("row %zu: field %zu", row, i);
        line = f->value + f->value_len + 1;
    }
    if (line != end - 1)
        fail_msg("row %zu: %zu fields do not cover the head", row, p->nfields);
}

static void test_forwarded_heads(void **state)
{
    static const struct forward_case cases[] = {
        {"GET /v1/apps?limit=2 HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n", 3,
         "/v1/apps", "localhost:8080", 0, 1, 0,
         "GET /v1/apps?limit=2 HTTP/1.1\r\nHost: api.appstoreconnect.apple.com\r\n"
         "Accept: */*\r\n"},
        /* hop-by-hop fields, what Connection lists, credentials, Expect and names with '_'
         * stay behind; rewrite_links routes are not offered compression */
        {"POST /v1/apps HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
         "X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
         "Proxy-Authorization: Bearer s\r\nAuthorization: Bearer mine\r\n"
         "Expect: 100-continue\r\nX_Forwarded: 1\r\nAccept-Encoding: gzip\r\n"
         "Content-Length: 0005\r\nX-Keep: yes\r\n\r\n",
         3, "/v1/apps", "h", 0, 0, 0,
         "POST /v1/apps HTTP/1.1\r\nHost: api.appstoreconnect.apple.com\r\nX-Keep: yes\r\n"
         "Content-Length: 5\r\n"},
        {"PUT /api/v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
         "Accept-Encoding: gzip\r\n\r\n",
         0, "/api/v1/x", "h", 0, 1, 0,
         "PUT /api/v1/x HTTP/1.1\r\nHost: weatherkit.apple.com\r\nAccept-Encoding: gzip\r\n"
         "Transfer-Encoding: chunked\r\n"},
        /* strip_prefix; the port is in Host when it is not 443 */
        {"DELETE /strip/v1/apps/1 HTTP/1.1\r\nHost: h\r\n\r\n", 1, "/strip/v1/apps/1", "h", 0,
         1, 0, "DELETE /v1/apps/1 HTTP/1.1\r\nHost: api.appstoreconnect.apple.com:8443\r\n"},
        {"GET /strip/ HTTP/1.1\r\nHost: h\r\n\r\n", 1, "/strip/", "h", 0, 1, 0,
         "GET / HTTP/1.1\r\nHost: api.appstoreconnect.apple.com:8443\r\n"},
        /* absolute-form: routed by its own host; an empty path is "/" */
        {"HEAD http://weatherkit.apple.com/api/v1/a HTTP/1.1\r\nHost: x\r\n\r\n", 0,
         "/api/v1/a", "weatherkit.apple.com", 1, 1, 0,
         "HEAD /api/v1/a HTTP/1.1\r\nHost: weatherkit.apple.com\r\n"},
        {"GET http://internal.example HTTP/1.1\r\nHost: x\r\n\r\n", 2, "/",
         "internal.example", 0, 1, 0, "GET / HTTP/1.1\r\nHost: api.storekit.itunes.apple.com\r\n"},
        {"GET /inApps/v1/x HTTP/1.0\r\n\r\n", 0, NULL, NULL, 0, 1, 1, NULL}, /* no route */
        {"OPTIONS /v1/apps HTTP/1.0\r\nHost: internal.example\r\n\r\n", 2, "/v1/apps",
         "internal.example", 0, 1, 1,
         "OPTIONS /v1/apps HTTP/1.1\r\nHost: api.storekit.itunes.apple.com\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct forward_case *k = &cases[i];
        struct http1_msg m;
        struct request_plan p;
        unit_parse(&m, k->request);
        assert_int_equal(request_plan(&rt->routes, &m, &p), 0);
        if (k->head == NULL) {
            assert_ptr_equal(p.code, proxy_err_no_route);
            assert_int_equal(p.http10, k->http10);
        } else {
            if (p.code != NULL)
                fail_msg("row %zu: refused %s (%s)", i, p.code, p.detail);
            assert_int_equal(p.route, k->route);
            assert_int_equal(p.path_len, strlen(k->path));
            assert_memory_equal(p.path, k->path, p.path_len);
            assert_int_equal(p.authority_len, strlen(k->authority));
            assert_memory_equal(p.authority, k->authority, p.authority_len);
            assert_int_equal(p.is_head, k->is_head);
            assert_int_equal(p.idempotent, k->idempotent);
            assert_int_equal(p.http10, k->http10);
            if (p.head_len != strlen(k->head) || memcmp(p.head, k->head, p.head_len) != 0)
                fail_msg("row %zu: head\n%.*s\nwant\n%s", i, (int)p.head_len, p.head, k->head);
            check_parts(i, &p);
        }
        request_plan_deinit(&p);
        http1_msg_deinit(&m);
    }
}

struct tunnel_case {
    const char *host; /* the CONNECT's host (port 443) */
    const char *request;
    const char *code; /* NULL: forwarded by route */
    size_t route;
    const char *head;
};

/* Inside an intercepted CONNECT: Host must name the CONNECT's host (its port optional), the
 * target must be a path, and the route is the one an absolute-form request to that host
 * would take (so a WeatherKit tunnel never reaches an App Store Connect route). */
static void test_tunnel(void **state)
{
    static const char asc[] = "api.appstoreconnect.apple.com", wk[] = "weatherkit.apple.com";
    static const struct tunnel_case cases[] = {
        {asc, "GET /v1/apps HTTP/1.1\r\nHost: api.appstoreconnect.apple.com\r\n\r\n", NULL, 3,
         "GET /v1/apps HTTP/1.1\r\nHost: api.appstoreconnect.apple.com\r\n"},
        {asc, "GET /v1/apps HTTP/1.1\r\nHost: API.AppStoreConnect.apple.com:443\r\n\r\n", NULL,
         3, "GET /v1/apps HTTP/1.1\r\nHost: api.appstoreconnect.apple.com\r\n"},
        {wk, "GET /api/v1/weather/en/1/2 HTTP/1.1\r\nHost: weatherkit.apple.com\r\n\r\n", NULL,
         0, "GET /api/v1/weather/en/1/2 HTTP/1.1\r\nHost: weatherkit.apple.com\r\n"},
        {wk, "GET /v1/apps HTTP/1.1\r\nHost: weatherkit.apple.com\r\n\r\n", proxy_err_no_route,
         0, NULL},
        {asc, "GET /v1/apps HTTP/1.1\r\nHost: weatherkit.apple.com\r\n\r\n",
         proxy_err_bad_request, 0, NULL},
        {asc, "GET /v1/apps HTTP/1.1\r\nHost: api.appstoreconnect.apple.com:8443\r\n\r\n",
         proxy_err_bad_request, 0, NULL},
        {asc, "GET /v1/apps HTTP/1.1\r\nHost: api.appstoreconnect.apple.com.evil\r\n\r\n",
         proxy_err_bad_request, 0, NULL},
        {asc, "GET /v1/apps HTTP/1.0\r\n\r\n", proxy_err_bad_request, 0, NULL},
        {asc,
         "GET https://api.appstoreconnect.apple.com/v1/apps HTTP/1.1\r\n"
         "Host: api.appstoreconnect.apple.com\r\n\r\n",
         proxy_err_bad_request, 0, NULL},
        {asc, "CONNECT weatherkit.apple.com:443 HTTP/1.1\r\nHost: weatherkit.apple.com:443\r\n\r\n",
         proxy_err_bad_request, 0, NULL},
        {asc, "GET /v1/../x HTTP/1.1\r\nHost: api.appstoreconnect.apple.com\r\n\r\n",
         proxy_err_bad_request, 0, NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct tunnel_case *k = &cases[i];
        struct http1_msg m;
        struct request_plan p;
        unit_parse(&m, k->request);
        assert_int_equal(request_plan_tunnel(&rt->routes, &m, k->host, strlen(k->host), 443, &p),
                         0);
        if (p.code != k->code)
            fail_msg("row %zu: %s, want %s (%s)", i, p.code ? p.code : "forwarded",
                     k->code ? k->code : "forwarded", p.detail);
        if (k->head) {
            assert_int_equal(p.route, k->route);
            if (p.head_len != strlen(k->head) || memcmp(p.head, k->head, p.head_len) != 0)
                fail_msg("row %zu: head\n%.*s\nwant\n%s", i, (int)p.head_len, p.head, k->head);
            check_parts(i, &p);
        } else {
            assert_null(p.head);
        }
        request_plan_deinit(&p);
        http1_msg_deinit(&m);
    }
}

/* The scheme an absolute-form target wrote, which the links rewritten for the client keep
 * (an http:// URL sent through an HTTPS listener gets http:// links back); none otherwise. */
static void test_absolute_form_scheme(void **state)
{
    static const struct {
        const char *request, *scheme;
    } cases[] = {
        {"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n", NULL},
        {"GET http://api.appstoreconnect.apple.com/v1/apps HTTP/1.1\r\nHost: x\r\n\r\n", "http"},
        {"GET HTTPS://api.appstoreconnect.apple.com/v1/apps HTTP/1.1\r\nHost: x\r\n\r\n",
         "https"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http1_msg m;
        struct request_plan p;
        unit_parse(&m, cases[i].request);
        assert_int_equal(request_plan(&rt->routes, &m, &p), 0);
        assert_null(p.code);
        if (cases[i].scheme == NULL)
            assert_null(p.scheme);
        else
            assert_string_equal(p.scheme, cases[i].scheme);
        request_plan_deinit(&p);
        http1_msg_deinit(&m);
    }
}

/* PROXY_NO_ROUTE says which path found no route and which routes there are. */
static void test_no_route_names_the_routes(void **state)
{
    struct http1_msg m;
    struct request_plan p;
    unit_parse(&m, "GET /nothing?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_int_equal(request_plan(&rt->routes, &m, &p), 0);
    assert_ptr_equal(p.code, proxy_err_no_route);
    assert_string_equal(p.detail, "no route takes /nothing; the routes take /api/v1/, /strip/, / "
                                  "(host internal.example), /v1/");
    request_plan_deinit(&p);
    http1_msg_deinit(&m);
}

/* Many long routes: the list is cut with " ..." within the detail, never mid-entry. */
static void test_no_route_detail_is_bounded(void **state)
{
    char json[4096];
    char err[256];
    size_t o = (size_t)snprintf(json, sizeof(json), "%s \"credentials\": {%s}, \"routes\": [",
                                UNIT_CONF_START, UNIT_CRED_ASC);
    for (int i = 0; i < 20; i++)
        o += (size_t)snprintf(json + o, sizeof(json) - o,
                              "%s{\"path_prefix\": \"/a-rather-long-prefix-number-%02d/\","
                              " \"upstream\": \"https://api.appstoreconnect.apple.com\","
                              " \"credential\": \"asc\"}",
                              i ? "," : "", i);
    snprintf(json + o, sizeof(json) - o, "]}");
    struct conf *conf = unit_conf(json);
    struct live *lv = live_new();
    struct runtime *r = runtime_new(conf, lv, err, sizeof(err));
    assert_non_null(r);
    struct http1_msg m;
    struct request_plan p;
    unit_parse(&m, "GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_int_equal(request_plan(&r->routes, &m, &p), 0);
    assert_ptr_equal(p.code, proxy_err_no_route);
    size_t n = strlen(p.detail);
    assert_true(n > 4 && n < sizeof(p.detail));
    assert_string_equal(p.detail + n - 4, " ...");
    assert_non_null(strstr(p.detail, "no route takes /v1/apps; the routes take "
                                     "/a-rather-long-prefix-number-00/, "));
    /* the entry before the cut is whole */
    assert_memory_equal(p.detail + n - 5, "/", 1);
    request_plan_deinit(&p);
    http1_msg_deinit(&m);
    runtime_unref(r);
    live_free(lv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_forwarded_heads),
        cmocka_unit_test(test_tunnel),
        cmocka_unit_test(test_absolute_form_scheme),
        cmocka_unit_test(test_no_route_names_the_routes),
        cmocka_unit_test(test_no_route_detail_is_bounded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
