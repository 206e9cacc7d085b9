/* Unit tests for proxy/http1: the strict request and response parser and its framing rules. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "proxy/http1.h"

static const struct http1_limits limits = {.max_line = 256, .max_head = 1024, .max_headers = 8};

struct capture {
    char out[4096];
    size_t len;
};

static int cap_data(void *arg, const char *at, size_t len)
{
    struct capture *c = arg;
    memcpy(c->out + c->len, at, len);
    c->len += len;
    return 0;
}

static int cap_chunk(void *arg, uint64_t size)
{
    struct capture *c = arg;
    c->len += (size_t)snprintf(c->out + c->len, sizeof(c->out) - c->len, "[%llu]",
                               (unsigned long long)size);
    return 0;
}

static int cap_chunk_end(void *arg)
{
    struct capture *c = arg;
    c->out[c->len++] = '|';
    return 0;
}

static const struct http1_sink cap_sink = {cap_data, cap_chunk, cap_chunk_end};

/* Parses a whole request; returns the head result, and the error status through *status. */
static int parse_req(const char *raw, struct http1_msg *m, int *status)
{
    memset(m, 0, sizeof(*m));
    http1_msg_init(m, HTTP_REQUEST, &limits);
    int r = http1_parse_head(m, raw, strlen(raw));
    *status = m->error_status;
    return r;
}

static void expect_reject(const char *raw, int want)
{
    struct http1_msg m;
    int status;
    int r = parse_req(raw, &m, &status);
    if (r != -1 || status != want)
        fail_msg("request %s: got r=%d status=%d, want rejection %d", raw, r, status, want);
    http1_msg_deinit(&m);
}

static void test_simple_get(void **state)
{
    struct http1_msg m;
    int status;
    const char *raw = "GET /v1/apps?limit=2 HTTP/1.1\r\nHost: localhost:8080\r\nX-A: b\r\n\r\nNEXT";
    assert_int_equal(parse_req(raw, &m, &status), 1);
    assert_int_equal(m.head_len, strlen(raw) - 4);
    assert_int_equal(m.method_len, 3);
    assert_memory_equal(m.target, "/v1/apps?limit=2", m.target_len);
    assert_int_equal(m.nheaders, 2);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    assert_true(m.keep_alive);
    assert_memory_equal(m.host, "localhost:8080", m.host_len);
    http1_msg_deinit(&m);
}

static void test_incomplete_then_complete(void **state)
{
    struct http1_msg m;
    const char *raw = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    memset(&m, 0, sizeof(m));
    http1_msg_init(&m, HTTP_REQUEST, &limits);
    for (size_t n = 1; n < strlen(raw) - 5; n++)
        assert_int_equal(http1_parse_head(&m, raw, n), 0);
    assert_int_equal(http1_parse_head(&m, raw, strlen(raw)), 1);
    assert_int_equal(m.body, HTTP1_BODY_LENGTH);
    assert_int_equal(m.content_length, 5);
    struct capture c = {0};
    m.sink = &cap_sink;
    m.sink_arg = &c;
    size_t used;
    const char *body = raw + m.head_len;
    assert_int_equal(http1_parse_body(&m, body, 2, &used), 0);
    assert_int_equal(used, 2);
    assert_int_equal(http1_parse_body(&m, body + 2, 3, &used), 1);
    assert_int_equal(used, 3);
    assert_memory_equal(c.out, "hello", 5);
    http1_msg_deinit(&m);
}

static void test_chunked_reframed(void **state)
{
    struct http1_msg m;
    int status;
    const char *raw = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nAuthorization: evil\r\n\r\nGET";
    assert_int_equal(parse_req(raw, &m, &status), 1);
    assert_int_equal(m.body, HTTP1_BODY_CHUNKED);
    size_t before = m.nheaders;
    struct capture c = {0};
    m.sink = &cap_sink;
    m.sink_arg = &c;
    size_t used;
    const char *body = raw + m.head_len;
    assert_int_equal(http1_parse_body(&m, body, strlen(body), &used), 1);
    assert_int_equal(strlen(body) - used, 3); /* the pipelined "GET" is left alone */
    c.out[c.len] = '\0';
    assert_string_equal(c.out, "[5]hello|[3]abc|[0]|");
    /* the trailer never became a header */
    assert_int_equal(m.nheaders, before);
    http1_msg_deinit(&m);
}

static void test_framing_smuggling(void **state)
{
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: "
                  "chunked\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                  400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  1 2\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                  400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501);
    /* llhttp itself refuses a coding after chunked (RFC 9112 6.3): 400 */
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                  400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", 501);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\x01: chunked\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n", 400);
    /* regression: only HTTP/1.0 and 1.1 requests */
    expect_reject("GET /v1/apps\r\nHost: a\r\n\r\n", 505);
    expect_reject("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedchunked\r\n\r\n", 501);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n", 400);
    expect_reject("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

static void test_header_syntax(void **state)
{
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\nHost: a\n\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: v\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\n\r\n", 400);                       /* no Host */
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400); /* two Host */
    expect_reject("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a:99999x\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400); /* port over 65535 */
    expect_reject("GET / HTTP/1.1\r\nHost: a:\r\n\r\n", 400);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", 417);
}

/* Header values are checked eight bytes at a time: every byte value at every position of
 * values of 0 to 24 bytes (three words and every tail length), NUL included. Only controls
 * other than HTAB, and DEL, are refused. */
static void test_header_value_characters_everywhere(void **state)
{
    char value[24];
    (void)state;
    assert_int_equal(http1_value_chars_ok("", 0), 1);
    for (size_t len = 1; len <= sizeof(value); len++) {
        for (size_t pos = 0; pos < len; pos++) {
            for (int c = 0; c < 256; c++) {
                int want = !((c < 0x20 && c != '\t') || c == 0x7f);
                memset(value, 'v', sizeof(value));
                value[pos] = (char)c;
                if (http1_value_chars_ok(value, len) != want)
                    fail_msg("byte 0x%02x at %zu of %zu: got %d", c, pos, len, !want);
            }
        }
    }
    /* And through the parser: a DEL deep in a value is refused. */
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789abcdef\x7fz\r\n\r\n", 400);
}

/* Field names are checked through a table: every byte value at every position of names of 1
 * to 3 bytes against RFC 9110's tchar written out here; an empty name is refused. */
static void test_header_name_characters_everywhere(void **state)
{
    char name[3];
    (void)state;
    assert_int_equal(http1_name_chars_ok("", 0), 0);
    for (size_t len = 1; len <= sizeof(name); len++) {
        for (size_t pos = 0; pos < len; pos++) {
            for (int c = 0; c < 256; c++) {
                int want = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
                           (c >= 'a' && c <= 'z') ||
                           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
                memset(name, 'n', sizeof(name));
                name[pos] = (char)c;
                if (http1_name_chars_ok(name, len) != want)
                    fail_msg("byte 0x%02x at %zu of %zu: got %d", c, pos, len, !want);
            }
        }
    }
    /* And through the parser: a separator in a name is refused. */
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX{y: 1\r\n\r\n", 400);
}

static void test_limits(void **state)
{
    char raw[2048];
    /* request target over max_line */
    int n = snprintf(raw, sizeof(raw), "GET /%0300d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    assert_true(n > 0);
    expect_reject(raw, 414);
    /* too many headers */
    strcpy(raw, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 9; i++)
        strcat(raw, "X-N: v\r\n");
    strcat(raw, "\r\n");
    expect_reject(raw, 431);
    /* head over max_head, even before it completes */
    struct http1_msg m;
    memset(&m, 0, sizeof(m));
    http1_msg_init(&m, HTTP_REQUEST, &limits);
    n = snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nHost: a\r\nX-Big: %01100d", 0);
    assert_int_equal(http1_parse_head(&m, raw, (size_t)n), -1);
    assert_int_equal(m.error_status, 431);
    http1_msg_deinit(&m);
    /* a long line without any newline yet: 414 before the head completes */
    memset(&m, 0, sizeof(m));
    http1_msg_init(&m, HTTP_REQUEST, &limits);
    memset(raw, 'a', 600);
    memcpy(raw, "GET /", 5);
    assert_int_equal(http1_parse_head(&m, raw, 600), -1);
    assert_int_equal(m.error_status, 414);
    http1_msg_deinit(&m);
}

static void test_bad_chunks(void **state)
{
    const char *bodies[] = {"0x5\r\nhello\r\n0\r\n\r\n", "_5\r\nhello\r\n0\r\n\r\n",
                            "+5\r\nhello\r\n0\r\n\r\n",  "-5\r\nhello\r\n0\r\n\r\n",
                            " 5\r\nhello\r\n0\r\n\r\n",  "5\nhello\r\n0\r\n\r\n",
                            "5;a=b\rc\r\nhello\r\n0\r\n\r\n", "3\r\nhello\r\n0\r\n\r\n",
                            "fffffffffffffffffff\r\n"};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct http1_msg m;
        int status;
        assert_int_equal(
            parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &m,
                      &status),
            1);
        struct capture c = {0};
        m.sink = &cap_sink;
        m.sink_arg = &c;
        size_t used;
        int r = http1_parse_body(&m, bodies[i], strlen(bodies[i]), &used);
        if (r != -1)
            fail_msg("chunked body %zu accepted", i);
        assert_int_equal(m.error_status, 400);
        http1_msg_deinit(&m);
    }
}

static void test_upgrade_is_plain(void **state)
{
    struct http1_msg m;
    int status;
    const char *raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    assert_int_equal(parse_req(raw, &m, &status), 1);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    assert_int_equal(m.head_len, strlen(raw));
    http1_msg_deinit(&m);
}

/* Regression (fuzz_request): CONNECT with a chunked body was reported complete without its
 * chunks; no body of a CONNECT is ever read (the proxy answers 405). */
static void test_connect_has_no_body(void **state)
{
    struct http1_msg m;
    int status;
    const char *raw = "CONNECT a:443 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n0\r\n\r\n";
    assert_int_equal(parse_req(raw, &m, &status), 1);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    assert_int_equal(m.parser.method, HTTP_CONNECT);
    http1_msg_deinit(&m);
}

static void test_http10_keepalive(void **state)
{
    struct http1_msg m;
    int status;
    assert_int_equal(parse_req("GET / HTTP/1.0\r\n\r\n", &m, &status), 1);
    assert_false(m.keep_alive);
    http1_msg_deinit(&m);
    assert_int_equal(parse_req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &m, &status),
                     1);
    assert_true(m.keep_alive);
    http1_msg_deinit(&m);
    assert_int_equal(parse_req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &m,
                               &status),
                     1);
    assert_false(m.keep_alive);
    http1_msg_deinit(&m);
}

static int parse_resp(const char *raw, int is_head, struct http1_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->request_is_head = is_head;
    http1_msg_init(m, HTTP_RESPONSE, &limits);
    return http1_parse_head(m, raw, strlen(raw));
}

static void test_responses(void **state)
{
    struct http1_msg m;
    assert_int_equal(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 0, &m), 1);
    assert_int_equal(m.status, 200);
    assert_int_equal(m.body, HTTP1_BODY_LENGTH);
    http1_msg_deinit(&m);
    assert_int_equal(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", 1, &m), 1);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    assert_true(http1_msg_complete(&m));
    http1_msg_deinit(&m);
    assert_int_equal(parse_resp("HTTP/1.1 204 No Content\r\n\r\n", 0, &m), 1);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    http1_msg_deinit(&m);
    assert_int_equal(parse_resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 0, &m),
                     1);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    http1_msg_deinit(&m);
    assert_int_equal(parse_resp("HTTP/1.1 200 OK\r\n\r\nuntil close", 0, &m), 1);
    assert_int_equal(m.body, HTTP1_BODY_EOF);
    size_t used;
    struct capture c = {0};
    m.sink = &cap_sink;
    m.sink_arg = &c;
    assert_int_equal(http1_parse_body(&m, "until close", 11, &used), 0);
    assert_int_equal(http1_parse_eof(&m), 1);
    assert_memory_equal(c.out, "until close", 11);
    http1_msg_deinit(&m);
    /* truncation of a length-delimited body */
    assert_int_equal(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 0, &m), 1);
    m.sink = &cap_sink;
    m.sink_arg = &c;
    assert_int_equal(http1_parse_body(&m, "abc", 3, &used), 0);
    assert_int_equal(http1_parse_eof(&m), -1);
    http1_msg_deinit(&m);
}

static void test_bad_responses(void **state)
{
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        /* regression: an interim response with a body could carry a forged final response */
        "HTTP/1.1 199 X\r\nContent-Length: 57\r\n\r\n",
        "HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        /* regression: "chunked" with a tab after it: framing that llhttp reads differently */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n",
        "garbage\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct http1_msg m;
        int r = parse_resp(bad[i], 0, &m);
        if (r != -1 || m.error_status != 502)
            fail_msg("response %zu: r=%d status=%d", i, r, m.error_status);
        http1_msg_deinit(&m);
    }
}

/* A head that arrived as fields (an HTTP/2 upstream's) gets the parsed path's framing, except
 * that no length means "until the stream ends", never "until the close". */
static int set_resp(int status, const struct http1_header *f, size_t n, int is_head,
                    struct http1_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->request_is_head = is_head;
    http1_msg_init(m, HTTP_RESPONSE, &limits);
    return http1_response_set(m, status, f, n);
}

#define FIELD(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}

static void test_response_from_fields(void **state)
{
    struct http1_msg m;
    const struct http1_header cl[] = {FIELD("apns-id", "ID"), FIELD("content-length", "3")};
    const struct http1_header none[] = {FIELD("apns-id", "ID")};
    assert_int_equal(set_resp(200, cl, 2, 0, &m), 0);
    assert_int_equal(m.status, 200);
    assert_int_equal(m.body, HTTP1_BODY_LENGTH);
    assert_int_equal(m.content_length, 3);
    assert_true(m.keep_alive);
    assert_false(http1_msg_complete(&m));
    assert_non_null(http1_find(&m, "apns-id"));
    http1_msg_deinit(&m);
    assert_int_equal(set_resp(200, none, 1, 0, &m), 0);
    assert_int_equal(m.body, HTTP1_BODY_CHUNKED);
    http1_msg_deinit(&m);
    /* HEAD, 204 and 304 have no body whatever their fields say */
    assert_int_equal(set_resp(200, cl, 2, 1, &m), 0);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    assert_true(http1_msg_complete(&m));
    http1_msg_deinit(&m);
    assert_int_equal(set_resp(304, cl, 2, 0, &m), 0);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    http1_msg_deinit(&m);
    assert_int_equal(set_resp(204, none, 1, 0, &m), 0);
    assert_int_equal(m.body, HTTP1_BODY_NONE);
    http1_msg_deinit(&m);
}

/* Hostile heads as fields: what the parsed path refuses is refused here too (502). */
static void test_bad_response_fields(void **state)
{
    static const struct {
        int status;
        struct http1_header f[2];
        size_t n;
    } bad[] = {
        {200, {FIELD("content-length", "3"), FIELD("content-length", "3")}, 2},
        {200, {FIELD("content-length", "abc")}, 1},
        {200, {FIELD("content-length", "3"), FIELD("transfer-encoding", "chunked")}, 2},
        {200, {FIELD("transfer-encoding", "gzip")}, 1},
        {101, {FIELD("upgrade", "h2c")}, 1},
        {199, {FIELD("content-length", "57")}, 1},
        {600, {FIELD("x", "y")}, 1},
        {200, {FIELD("x", "a\r\nx-injected: 1")}, 1},
        {200, {FIELD("x", "a\001b")}, 1},
        {200, {FIELD("x y", "z")}, 1},
        {200, {FIELD("", "z")}, 1},
    };
    struct http1_header many[9];
    struct http1_msg m;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int r = set_resp(bad[i].status, bad[i].f, bad[i].n, 0, &m);
        if (r != -1 || m.error_status != 502)
            fail_msg("head %zu: r=%d status=%d", i, r, m.error_status);
        http1_msg_deinit(&m);
    }
    /* max_headers (8 here) */
    for (size_t i = 0; i < 9; i++)
        many[i] = (struct http1_header)FIELD("x", "y");
    assert_int_equal(set_resp(200, many, 8, 0, &m), 0);
    http1_msg_deinit(&m);
    assert_int_equal(set_resp(200, many, 9, 0, &m), -1);
    assert_int_equal(m.error_status, 502);
    http1_msg_deinit(&m);
}

static void test_list_has(void **state)
{
    const char *v = "keep-alive, X-Foo ,Authorization";
    assert_true(http1_list_has(v, strlen(v), "x-foo"));
    assert_true(http1_list_has(v, strlen(v), "authorization"));
    assert_false(http1_list_has(v, strlen(v), "keep"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),       cmocka_unit_test(test_incomplete_then_complete),
        cmocka_unit_test(test_chunked_reframed), cmocka_unit_test(test_framing_smuggling),
        cmocka_unit_test(test_header_syntax),    cmocka_unit_test(test_limits),
        cmocka_unit_test(test_header_value_characters_everywhere),
        cmocka_unit_test(test_header_name_characters_everywhere),
        cmocka_unit_test(test_bad_chunks),       cmocka_unit_test(test_upgrade_is_plain),
        cmocka_unit_test(test_connect_has_no_body),
        cmocka_unit_test(test_http10_keepalive), cmocka_unit_test(test_responses),
        cmocka_unit_test(test_bad_responses),    cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_response_from_fields),
        cmocka_unit_test(test_bad_response_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
