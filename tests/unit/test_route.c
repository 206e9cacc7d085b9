/* Unit tests for proxy/route: the route chosen for host, path and target form, table by table,
 * and host names split from Host values. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/route.h"
#include "unit_conf.h"

static struct conf *conf;

/* Routes, in order: 0 a host-bound route, 1 WeatherKit by prefix, 2 App Store Connect's /v1/,
 * 3 a catch-all for the App Store Server API. */
static int setup(void **state)
{
    conf = unit_conf(
        UNIT_CONF_START " \"credentials\": {" UNIT_CRED_ASC "},"
        " \"routes\": ["
        "  {\"path_prefix\": \"/\", \"host\": \"internal.example\","
        "   \"upstream\": \"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/api/v1/\", \"upstream\": \"https://weatherkit.apple.com\","
        "   \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/v1/\", \"upstream\": \"https://api.appstoreconnect.apple.com\","
        "   \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/\", \"upstream\": \"https://api.storekit.itunes.apple.com\","
        "   \"credential\": \"asc\"}]}");
    return 0;
}

static int teardown(void **state)
{
    conf_free(conf);
    return 0;
}

struct find_case {
    const char *host; /* NULL: none (HTTP/1.0 without Host) */
    int absolute;
    const char *path;
    enum route_result want;
    size_t route;
};

static void test_route_find(void **state)
{
    static const struct find_case cases[] = {
        /* origin-form: Host only selects routes that name one */
        {"localhost", 0, "/v1/apps", ROUTE_FOUND, 2},
        {"localhost", 0, "/api/v1/weather", ROUTE_FOUND, 1},
        {"localhost", 0, "/api/v2/weather", ROUTE_FOUND, 3},
        {"internal.example", 0, "/v1/apps", ROUTE_FOUND, 0},
        {"INTERNAL.example", 0, "/api/v1/x", ROUTE_FOUND, 0}, /* host names ignore case */
        {"internal.example.evil", 0, "/v1/apps", ROUTE_FOUND, 2},
        {NULL, 0, "/v1/apps", ROUTE_FOUND, 2},
        {"localhost", 0, "/v1", ROUTE_FOUND, 3},  /* "/v1/" is a prefix of bytes, not of names */
        {"localhost", 0, "/V1/apps", ROUTE_FOUND, 3}, /* paths keep their case */
        /* absolute-form: only a configured upstream (or a route's host) */
        {"api.appstoreconnect.apple.com", 1, "/v1/apps", ROUTE_FOUND, 2},
        {"weatherkit.apple.com", 1, "/api/v1/x", ROUTE_FOUND, 1},
        {"weatherkit.apple.com", 1, "/v1/apps", ROUTE_NONE, 0}, /* known host, no prefix */
        {"internal.example", 1, "/anything", ROUTE_FOUND, 0},
        {"api.storekit.itunes.apple.com", 1, "/inApps/v1/x", ROUTE_FOUND, 3},
        {"evil.example", 1, "/v1/apps", ROUTE_FOREIGN_HOST, 0},
        {"api.appstoreconnect.apple.com.evil.example", 1, "/v1/apps", ROUTE_FOREIGN_HOST, 0},
        {"", 1, "/v1/apps", ROUTE_FOREIGN_HOST, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct find_case *k = &cases[i];
        size_t route = 99;
        enum route_result rr = route_find(conf, k->host, k->host ? strlen(k->host) : 0,
                                          k->absolute, k->path, strlen(k->path), &route);
        if (rr != k->want || (rr == ROUTE_FOUND && route != k->route))
            fail_msg("row %zu (%s %s): result %d route %zu, want %d route %zu", i,
                     k->host ? k->host : "-", k->path, rr, route, k->want, k->route);
    }
}

struct host_case {
    const char *value, *name;
};

static void test_route_host_name(void **state)
{
    static const struct host_case cases[] = {
        {"example.com", "example.com"},
        {"example.com:8080", "example.com"},
        {"[::1]:8080", "::1"},
        {"[::1]", "::1"},
        {"[::1", "::1"},
        {"", ""},
        {":80", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *name;
        size_t len;
        route_host_name(cases[i].value, strlen(cases[i].value), &name, &len);
        if (len != strlen(cases[i].name) || memcmp(name, cases[i].name, len) != 0)
            fail_msg("row %zu (%s): %.*s, want %s", i, cases[i].value, (int)len, name,
                     cases[i].name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_find),
        cmocka_unit_test(test_route_host_name),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
