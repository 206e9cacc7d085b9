/* Unit tests for proxy/gateway's decisions, table by table: who the client is (identify), what
 * it may send (authorize), Apple's quota and Retry-After (quota_check), the client's rate
 * (rate_take), and Retry-After parsing. No sockets: a configuration, a parsed head, and the live
 * table. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/gateway.h"
#include "proxy/http_error.h"
#include "proxy/live.h"
#include "unit_conf.h"

#define SECRET_ALICE "alice-secret-0123456789abcdefghijklmnopqrst"
#define SECRET_READER "reader-secret-0123456789abcdefghijklmnopqrs"
#define SECRET_WEATHER "weather-secret-0123456789abcdefghijklmnopqr"
#define SECRET_OFFICE "office-secret-0123456789abcdefghijklmnopqrs"
#define SECRET_PRIO "prio-secret-0123456789abcdefghijklmnopqrstuv"

static struct conf *conf;

static const struct conf_client *client_named(const char *name)
{
    for (size_t i = 0; i < conf->nclients; i++)
        if (strcmp(conf->clients[i].name, name) == 0)
            return &conf->clients[i];
    fail_msg("no client %s", name);
    return NULL;
}

static int setup(void **state)
{
    char json[4096], h[5][65];
    gateway_hash_hex(SECRET_ALICE, strlen(SECRET_ALICE), h[0]);
    gateway_hash_hex(SECRET_READER, strlen(SECRET_READER), h[1]);
    gateway_hash_hex(SECRET_WEATHER, strlen(SECRET_WEATHER), h[2]);
    gateway_hash_hex(SECRET_OFFICE, strlen(SECRET_OFFICE), h[3]);
    gateway_hash_hex(SECRET_PRIO, strlen(SECRET_PRIO), h[4]);
    snprintf(json, sizeof(json),
             "{\"listen\": [\"127.0.0.1:0\"], \"admin_listen\": null, \"workers\": 1,"
             " \"credentials\": {"
             "  \"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"ABCDEFGHIJ\","
             "   \"issuer_id\": \"69a6de95-023f-47e3-e053-5b8c7c11a4d1\","
             "   \"private_key_env\": \"AAP_UNIT_KEY\", \"quota_reserve\": 10},"
             "  \"wk\": {\"profile\": \"weatherkit\", \"key_id\": \"KLMNOPQRST\","
             "   \"team_id\": \"TEAM123456\", \"service_id\": \"com.example.wk\","
             "   \"private_key_env\": \"AAP_UNIT_KEY\"}},"
             " \"routes\": ["
             "  {\"path_prefix\": \"/api/v1/\", \"upstream\": \"https://weatherkit.apple.com\","
             "   \"credential\": \"wk\"},"
             "  {\"path_prefix\": \"/\", \"upstream\": \"https://api.appstoreconnect.apple.com\","
             "   \"credential\": \"asc\"}],"
             " \"clients\": {"
             "  \"alice\": {\"key_sha256\": \"%s\"},"
             "  \"reader\": {\"key_sha256\": \"%s\", \"allow\": [{\"methods\": [\"GET\", \"HEAD\"],"
             "   \"path_prefix\": \"/v1/apps\"}, {\"path_prefix\": \"/v1/builds\"}]},"
             "  \"weather\": {\"key_sha256\": \"%s\", \"credentials\": [\"wk\"],"
             "   \"rate\": {\"per_second\": 1, \"burst\": 2}},"
             "  \"office\": {\"key_sha256\": \"%s\", \"allow_cidrs\": [\"10.1.0.0/16\", "
             "   \"2001:db8::/32\"]},"
             "  \"prio\": {\"key_sha256\": \"%s\", \"priority\": true},"
             "  \"ci\": {\"cert_subject\": \"CN=ci,O=Example\"}}}",
             h[0], h[1], h[2], h[3], h[4]);
    conf = unit_conf(json);
    return 0;
}

static int teardown(void **state)
{
    conf_free(conf);
    return 0;
}

static void peer_v4(struct sockaddr_storage *ss, const char *ip)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    sin->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
}

static void peer_v6(struct sockaddr_storage *ss, const char *ip)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    sin6->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
}

struct identify_case {
    const char *headers;     /* header lines after Host */
    const char *tls_subject; /* a verified client certificate's subject, or NULL */
    const char *peer;        /* IPv4 or IPv6 text */
    const char *client;      /* who it is (NULL: nobody) */
    const char *code;        /* the refusal (NULL: none) */
};

static void test_identify(void **state)
{
    static const struct identify_case cases[] = {
        {"", NULL, "127.0.0.1", NULL, proxy_err_proxy_auth},
        {"Proxy-Authorization: Bearer " SECRET_ALICE "\r\n", NULL, "127.0.0.1", "alice", NULL},
        {"Proxy-Authorization: bearer   " SECRET_ALICE "  \r\n", NULL, "127.0.0.1", "alice",
         NULL},
        {"Proxy-Authorization: Bearer " SECRET_ALICE "x\r\n", NULL, "127.0.0.1", NULL,
         proxy_err_proxy_auth},
        {"Proxy-Authorization: Bearer \r\n", NULL, "127.0.0.1", NULL, proxy_err_proxy_auth},
        /* Basic: alice:SECRET, and :SECRET (no name) */
        {"Proxy-Authorization: Basic YWxpY2U6YWxpY2Utc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWZnaGlqa2xtbm9w"
         "cXJzdA==\r\n", NULL, "127.0.0.1", "alice", NULL},
        {"Proxy-Authorization: Basic OmFsaWNlLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcHFyc3Q="
         "\r\n", NULL, "127.0.0.1", "alice", NULL},
        /* bob:alice's secret: the name must be the secret's owner */
        {"Proxy-Authorization: Basic Ym9iOmFsaWNlLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcHFy"
         "c3Q=\r\n", NULL, "127.0.0.1", NULL, proxy_err_proxy_auth},
        {"Proxy-Authorization: Digest x\r\n", NULL, "127.0.0.1", NULL, proxy_err_proxy_auth},
        {"Proxy-Authorization: Bearer " SECRET_ALICE "\r\nProxy-Authorization: Bearer "
         SECRET_ALICE "\r\n", NULL, "127.0.0.1", NULL, proxy_err_proxy_auth},
        /* allow_cidrs: identified, then refused from outside its networks */
        {"Proxy-Authorization: Bearer " SECRET_OFFICE "\r\n", NULL, "10.1.200.3", "office", NULL},
        {"Proxy-Authorization: Bearer " SECRET_OFFICE "\r\n", NULL, "10.2.0.1", "office",
         proxy_err_client_forbidden},
        {"Proxy-Authorization: Bearer " SECRET_OFFICE "\r\n", NULL, "::ffff:10.1.0.9", "office",
         NULL},
        {"Proxy-Authorization: Bearer " SECRET_OFFICE "\r\n", NULL, "2001:db8:1::5", "office",
         NULL},
        {"Proxy-Authorization: Bearer " SECRET_OFFICE "\r\n", NULL, "2001:db9::5", "office",
         proxy_err_client_forbidden},
        /* a certificate subject names its client; an unknown one falls back to the header */
        {"", "CN=ci,O=Example", "127.0.0.1", "ci", NULL},
        {"Proxy-Authorization: Bearer " SECRET_READER "\r\n", "CN=other", "127.0.0.1", "reader",
         NULL},
        {"", "CN=other", "127.0.0.1", NULL, proxy_err_proxy_auth},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct identify_case *k = &cases[i];
        char text[1024];
        struct http1_msg m;
        struct sockaddr_storage ss;
        const struct conf_client *cl;
        struct gateway_verdict v;
        snprintf(text, sizeof(text), "GET /v1/apps HTTP/1.1\r\nHost: p\r\n%s\r\n", k->headers);
        unit_parse(&m, text);
        if (strchr(k->peer, ':'))
            peer_v6(&ss, k->peer);
        else
            peer_v4(&ss, k->peer);
        gateway_identify(conf, &m, k->tls_subject, (struct sockaddr *)&ss, &cl, &v);
        if (v.code != k->code)
            fail_msg("row %zu: code %s, want %s (%s)", i, v.code ? v.code : "none",
                     k->code ? k->code : "none", v.detail);
        if (k->client == NULL ? cl != NULL : (cl == NULL || strcmp(cl->name, k->client) != 0))
            fail_msg("row %zu: client %s, want %s", i, cl ? cl->name : "none",
                     k->client ? k->client : "none");
        http1_msg_deinit(&m);
    }
}

struct authorize_case {
    const char *client; /* NULL: no client (no clients configured) */
    const char *method, *path;
    size_t route;
    const char *code;
};

static void test_authorize(void **state)
{
    static const struct authorize_case cases[] = {
        {NULL, "POST", "/v1/anything", 1, NULL},
        {"alice", "DELETE", "/v1/apps/1", 1, NULL},
        {"alice", "GET", "/api/v1/weather", 0, NULL},
        {"reader", "GET", "/v1/apps", 1, NULL},
        {"reader", "HEAD", "/v1/apps/1/builds", 1, NULL},
        {"reader", "POST", "/v1/apps", 1, proxy_err_client_forbidden},
        {"reader", "get", "/v1/apps", 1, proxy_err_client_forbidden}, /* methods are exact */
        {"reader", "GET", "/v1/users", 1, proxy_err_client_forbidden},
        {"reader", "GET", "/v1/app", 1, proxy_err_client_forbidden},
        {"reader", "PATCH", "/v1/builds/7", 1, NULL}, /* a rule without methods allows any */
        {"weather", "GET", "/api/v1/weather", 0, NULL},
        {"weather", "GET", "/v1/apps", 1, proxy_err_client_forbidden},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct authorize_case *k = &cases[i];
        struct gateway_verdict v;
        const struct conf_client *cl = k->client ? client_named(k->client) : NULL;
        gateway_authorize(conf, cl, k->method, strlen(k->method), k->path, strlen(k->path),
                          k->route, &v);
        if (v.code != k->code)
            fail_msg("row %zu (%s %s %s): code %s, want %s (%s)", i,
                     k->client ? k->client : "-", k->method, k->path, v.code ? v.code : "none",
                     k->code ? k->code : "none", v.detail);
    }
}

struct quota_case {
    const char *client;
    size_t route;
    long remaining;      /* Apple's last count; -1: never said */
    double age;          /* seconds since Apple said it */
    double blocked_for;  /* Apple's Retry-After from now (0: none; < 0: in the past) */
    const char *code;
    long retry_after;
};

static void test_quota_check(void **state)
{
    static const struct quota_case cases[] = {
        {"alice", 1, -1, 0, 0, NULL, 0},                          /* nothing known */
        {"alice", 1, 11, 1, 0, NULL, 0},                          /* above the reserve */
        {"alice", 1, 10, 1, 0, proxy_err_quota_reserved, 59},     /* at it */
        {"alice", 1, 0, 30, 0, proxy_err_quota_reserved, 30},
        {"alice", 1, 3, 61, 0, NULL, 0},                          /* too old to trust */
        {"prio", 1, 3, 1, 0, NULL, 0},                            /* priority ignores it */
        {NULL, 1, 3, 1, 0, proxy_err_quota_reserved, 59},
        {"alice", 0, 3, 1, 0, NULL, 0},                           /* wk has no reserve */
        {"alice", 1, 500, 1, 7.5, proxy_err_apple_retry_after, 8},
        {"prio", 1, 500, 1, 0.2, proxy_err_apple_retry_after, 1}, /* Apple's wait is everyone's */
        {"prio", 0, -1, 0, 30, proxy_err_apple_retry_after, 30},
        {"alice", 1, 500, 1, -1, NULL, 0},                        /* the wait is over */
    };
    const double now = 1.7e9;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct quota_case *k = &cases[i];
        struct live *l = live_new();
        size_t ci = conf->routes[k->route].credential_index;
        struct live_cred *e = live_cred_get(l, conf->credentials[ci].name);
        struct gateway_verdict v;
        if (k->remaining >= 0)
            live_quota_note(e, 3600, k->remaining, now - k->age);
        if (k->blocked_for != 0)
            live_block_until(e, now + k->blocked_for);
        gateway_quota_check(conf, e, k->client ? client_named(k->client) : NULL, k->route, now,
                            &v);
        if (v.code != k->code || v.retry_after != k->retry_after)
            fail_msg("row %zu: %s Retry-After %ld, want %s %ld (%s)", i,
                     v.code ? v.code : "none", v.retry_after, k->code ? k->code : "none",
                     k->retry_after, v.detail);
        live_cred_put(e);
        live_free(l);
    }
}

static void test_rate_take(void **state)
{
    struct live *l = live_new();
    struct live_client *weather = live_client_get(l, "weather");
    struct live_client *alice = live_client_get(l, "alice");
    const struct conf_client *w = client_named("weather"), *a = client_named("alice");
    struct gateway_verdict v;
    for (int i = 0; i < 2; i++) {
        gateway_rate_take(weather, w, 100.0, &v);
        assert_null(v.code);
    }
    gateway_rate_take(weather, w, 100.0, &v);
    assert_ptr_equal(v.code, proxy_err_rate_limited);
    assert_int_equal(v.retry_after, 1);
    assert_non_null(strstr(v.detail, "client weather is over its rate of 1 requests per second"));
    gateway_rate_take(weather, w, 101.0, &v);
    assert_null(v.code);
    for (int i = 0; i < 100; i++) { /* no rate: never limited */
        gateway_rate_take(alice, a, 100.0, &v);
        assert_null(v.code);
    }
    live_client_put(weather);
    live_client_put(alice);
    live_free(l);
}

/* While Redis is not usable, each of N replicas enforces 1/N of the client's rate and burst,
 * the burst at least 1 so that a client with a small burst is never refused outright. */
static void test_rate_take_share(void **state)
{
    struct live *l = live_new();
    const struct conf_client *w = client_named("weather"); /* 1 per second, burst 2 */
    struct gateway_verdict v;
    struct live_client *b = live_client_get(l, "weather");
    (void)state;
    /* two replicas: a burst of 1 at 0.5 per second */
    gateway_rate_take_share(b, w, 2, 100.0, &v);
    assert_null(v.code);
    gateway_rate_take_share(b, w, 2, 100.0, &v);
    assert_ptr_equal(v.code, proxy_err_rate_limited);
    assert_int_equal(v.retry_after, 2);
    gateway_rate_take_share(b, w, 2, 101.0, &v);
    assert_ptr_equal(v.code, proxy_err_rate_limited);
    gateway_rate_take_share(b, w, 2, 102.0, &v);
    assert_null(v.code);
    live_client_put(b);
    /* three replicas: 2/3 is raised to a burst of 1 */
    b = live_client_get(l, "weather-3");
    gateway_rate_take_share(b, w, 3, 100.0, &v);
    assert_null(v.code);
    gateway_rate_take_share(b, w, 3, 100.0, &v);
    assert_ptr_equal(v.code, proxy_err_rate_limited);
    assert_int_equal(v.retry_after, 3);
    live_client_put(b);
    /* one replica: the whole limit, as gateway_rate_take */
    b = live_client_get(l, "weather-1");
    for (int i = 0; i < 2; i++) {
        gateway_rate_take_share(b, w, 1, 100.0, &v);
        assert_null(v.code);
    }
    gateway_rate_take_share(b, w, 1, 100.0, &v);
    assert_ptr_equal(v.code, proxy_err_rate_limited);
    live_client_put(b);
    live_free(l);
}

struct retry_after_case {
    const char *value;
    double want; /* -1: unreadable */
    int capped;
};

#define RA_NOW 1700000000.0
#define RA_MAX (RA_NOW + GATEWAY_RETRY_AFTER_MAX_SECONDS)

static void test_parse_retry_after(void **state)
{
    static const struct retry_after_case cases[] = {
        {"2", RA_NOW + 2, 0},
        {"  30 ", RA_NOW + 30, 0},
        {"0", RA_NOW, 0},
        {"1700000123456", 1700000123.456, 0}, /* the App Store Server API's epoch milliseconds */
        {"Sun, 06 Nov 1994 08:49:37 GMT", 784111777, 0},
        {"Sunday, 06-Nov-94 08:49:37 GMT", -1, 0},
        {"-5", -1, 0},
        {"2.5", -1, 0},
        {"", -1, 0},
        {"1234567890123456", -1, 0},
        {"Sun, 06 Nov 1994 08:49:37 GMT x", -1, 0},
        /* The rest is bounded: an hour is the longest any of these buys. */
        {"3600", RA_MAX, 0},
        {"3601", RA_MAX, 1},
        {"99999999999", RA_MAX, 1},          /* a delta of three thousand years */
        {"999999999999999", RA_MAX, 1},      /* epoch milliseconds in the year 33658 */
        {"1700003600000", RA_MAX, 0},        /* epoch milliseconds exactly an hour ahead */
        {"1700003600001", RA_MAX, 1},
        {"Fri, 31 Dec 9999 23:59:59 GMT", RA_MAX, 1},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int capped = -1;
        double got = gateway_parse_retry_after(cases[i].value, strlen(cases[i].value), RA_NOW,
                                               &capped);
        if (got < cases[i].want - 1e-3 || got > cases[i].want + 1e-3)
            fail_msg("row %zu (%s): %f, want %f", i, cases[i].value, got, cases[i].want);
        if (capped != cases[i].capped)
            fail_msg("row %zu (%s): capped %d, want %d", i, cases[i].value, capped,
                     cases[i].capped);
    }
    assert_true(gateway_parse_retry_after("99999", 5, RA_NOW, NULL) == RA_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identify),
        cmocka_unit_test(test_authorize),
        cmocka_unit_test(test_quota_check),
        cmocka_unit_test(test_rate_take),
        cmocka_unit_test(test_rate_take_share),
        cmocka_unit_test(test_parse_retry_after),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
