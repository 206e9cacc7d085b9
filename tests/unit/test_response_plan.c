/* Unit tests for proxy/response, table by table: the client's framing for every kind of upstream
 * body and request, the Connection field and whether the client connection closes, which
 * upstream headers go, link rewriting, and whether the upstream connection is pooled. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/response.h"

static const struct http1_limits resp_limits = {.max_line = 0, .max_head = 65536,
                                                .max_headers = 100};

static void parse_response(struct http1_msg *m, const char *text, int request_is_head)
{
    memset(m, 0, sizeof(*m)); /* init keeps a header array it finds: there is none */
    m->request_is_head = request_is_head;
    http1_msg_init(m, HTTP_RESPONSE, &resp_limits);
    if (http1_parse_head(m, text, strlen(text)) != 1)
        fail_msg("not a complete response head: %s", text);
}

#define JSON "Content-Type: application/json\r\n"
#define GZIP "Content-Encoding: gzip\r\n"

/* Facts: F_* bits. */
enum { HEAD = 1, H10 = 2, NOKEEP = 4, PARTIAL = 8, EOFC = 16, DRAIN = 32, ORIGIN = 64 };

struct plan_case {
    const char *response;
    int facts;
    int rewrites;
    enum response_framing framing;
    uint64_t content_length;
    int copy_length, close_after;
    const char *connection;
    int status;
};

static void test_plans(void **state)
{
    static const struct plan_case cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", 0, 0, RESPONSE_FRAME_LENGTH, 12, 0, 0,
         NULL, 200},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 0, RESPONSE_FRAME_CHUNKED, 0,
         0, 0, NULL, 200},
        {"HTTP/1.1 200 OK\r\n\r\n", 0, 0, RESPONSE_FRAME_CHUNKED, 0, 0, 0, NULL, 200},
        /* HTTP/1.0 clients: no chunked coding, the close ends the body */
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", H10, 0, RESPONSE_FRAME_CLOSE,
         0, 0, 1, "close", 200},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", H10, 0, RESPONSE_FRAME_LENGTH, 3, 0, 0,
         "keep-alive", 200},
        /* no body: 204, 304, 1xx-free empties, HEAD */
        {"HTTP/1.1 204 No Content\r\n\r\n", 0, 0, RESPONSE_FRAME_NONE, 0, 0, 0, NULL, 204},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", 0, 0,
         RESPONSE_FRAME_UPSTREAM, 0, 1, 0, NULL, 304},
        {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 0, RESPONSE_FRAME_EMPTY, 0, 0, 0,
         NULL, 200},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", HEAD, 0, RESPONSE_FRAME_UPSTREAM, 0, 1,
         0, NULL, 200},
        /* rewrite_links: a JSON body is rewritten and re-chunked; a HEAD of it says so */
        {"HTTP/1.1 200 OK\r\n" JSON "Content-Length: 99\r\n\r\n", ORIGIN, 1,
         RESPONSE_FRAME_CHUNKED, 0, 0, 0, NULL, 200},
        {"HTTP/1.1 200 OK\r\n" JSON "Content-Length: 99\r\n\r\n", ORIGIN | H10, 1,
         RESPONSE_FRAME_CLOSE, 0, 0, 1, "close", 200},
        {"HTTP/1.1 200 OK\r\n" JSON GZIP "Content-Length: 99\r\n\r\n", ORIGIN, 0,
         RESPONSE_FRAME_LENGTH, 99, 0, 0, NULL, 200},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n", ORIGIN, 0,
         RESPONSE_FRAME_LENGTH, 9, 0, 0, NULL, 200},
        {"HTTP/1.1 200 OK\r\n" JSON "Content-Length: 99\r\n\r\n", ORIGIN | HEAD, 0,
         RESPONSE_FRAME_HEAD_CHUNKED, 0, 0, 0, NULL, 200},
        {"HTTP/1.1 200 OK\r\n" JSON "Content-Length: 99\r\n\r\n", ORIGIN | HEAD | H10, 0,
         RESPONSE_FRAME_NONE, 0, 0, 0, "keep-alive", 200},
        {"HTTP/1.1 304 Not Modified\r\n" JSON "Content-Length: 99\r\n\r\n", ORIGIN, 0,
         RESPONSE_FRAME_NONE, 0, 0, 0, NULL, 304},
        {"HTTP/1.1 200 OK\r\n" JSON "Content-Length: 99\r\n\r\n", HEAD, 0,
         RESPONSE_FRAME_UPSTREAM, 0, 1, 0, NULL, 200},
        /* the client connection closes when asked, half-closed, draining or mid-upload */
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", NOKEEP, 0, RESPONSE_FRAME_LENGTH, 1, 0,
         1, "close", 200},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", EOFC, 0, RESPONSE_FRAME_LENGTH, 1, 0, 1,
         "close", 200},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", DRAIN, 0, RESPONSE_FRAME_LENGTH, 1, 0,
         1, "close", 200},
        {"HTTP/1.1 413 Too Large\r\nContent-Length: 1\r\n\r\n", PARTIAL, 0,
         RESPONSE_FRAME_LENGTH, 1, 0, 1, "close", 413},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct plan_case *k = &cases[i];
        struct http1_msg r;
        struct response_plan p;
        struct response_facts f = {
            .is_head = !!(k->facts & HEAD), .http10 = !!(k->facts & H10),
            .keep_alive = !(k->facts & NOKEEP), .req_done = !(k->facts & PARTIAL),
            .client_eof = !!(k->facts & EOFC), .draining = !!(k->facts & DRAIN),
            .has_origin = !!(k->facts & ORIGIN)};
        parse_response(&r, k->response, f.is_head);
        f.rewriting = response_rewrites(&r, f.has_origin);
        if (f.rewriting != k->rewrites)
            fail_msg("row %zu: rewrites %d, want %d", i, f.rewriting, k->rewrites);
        response_plan(&r, &f, &p);
        if (p.framing != k->framing || p.content_length != k->content_length ||
            p.copy_length != k->copy_length || p.close_after != k->close_after ||
            p.status != k->status)
            fail_msg("row %zu: framing %d length %llu copy %d close %d status %d, want %d %llu "
                     "%d %d %d", i, p.framing, (unsigned long long)p.content_length,
                     p.copy_length, p.close_after, p.status, k->framing,
                     (unsigned long long)k->content_length, k->copy_length, k->close_after,
                     k->status);
        if (k->connection == NULL ? p.connection != NULL
                                  : (p.connection == NULL || strcmp(p.connection, k->connection)))
            fail_msg("row %zu: Connection %s, want %s", i, p.connection ? p.connection : "none",
                     k->connection ? k->connection : "none");
        http1_msg_deinit(&r);
    }
}

static void test_reason_phrase(void **state)
{
    struct http1_msg r;
    struct response_plan p;
    struct response_facts f = {.keep_alive = 1, .req_done = 1};
    parse_response(&r, "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n", 0);
    response_plan(&r, &f, &p);
    assert_int_equal(p.reason_len, 11);
    assert_memory_equal(p.reason, "Fine Thanks", 11);
    http1_msg_deinit(&r);
    parse_response(&r, "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", 0);
    response_plan(&r, &f, &p);
    assert_string_equal(p.reason, "Not Found");
    assert_int_equal(p.reason_len, 9);
    http1_msg_deinit(&r);
}

/* Which headers go: "+" names the ones that do, in order. */
struct header_case {
    const char *response;
    int facts;
    const char *goes;
};

static void test_headers_that_go(void **state)
{
    static const struct header_case cases[] = {
        {"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: keep-alive, X-B\r\nX-B: 2\r\n"
         "Keep-Alive: timeout=5\r\nContent-Length: 3\r\nTrailer: X-T\r\nX-Rate-Limit: r\r\n\r\n",
         0, "+X-A+X-Rate-Limit"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nUpgrade: h2\r\n"
         "Proxy-Authenticate: Basic\r\nX-C: 1\r\n\r\n", 0, "+X-C"},
        {"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 9\r\n\r\n", 0,
         "+ETag+Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-D: 1\r\n\r\n", HEAD,
         "+Content-Length+X-D"},
        {"HTTP/1.1 200 OK\r\n" JSON "Content-Length: 9\r\n\r\n", HEAD | ORIGIN, "+Content-Type"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http1_msg r;
        struct response_plan p;
        struct response_facts f = {.is_head = !!(cases[i].facts & HEAD),
                                   .has_origin = !!(cases[i].facts & ORIGIN),
                                   .keep_alive = 1, .req_done = 1};
        char got[256] = "";
        size_t n = 0;
        parse_response(&r, cases[i].response, f.is_head);
        f.rewriting = response_rewrites(&r, f.has_origin);
        response_plan(&r, &f, &p);
        for (size_t h = 0; h < r.nheaders; h++)
            if (response_header_goes(&p, &r, h)) {
                got[n++] = '+';
                memcpy(got + n, r.headers[h].name, r.headers[h].name_len);
                n += r.headers[h].name_len;
                got[n] = '\0';
            }
        if (strcmp(got, cases[i].goes) != 0)
            fail_msg("row %zu: %s, want %s", i, got, cases[i].goes);
        http1_msg_deinit(&r);
    }
}

struct pool_case {
    const char *response;
    int req_done;
    size_t leftover;
    int pooled;
};

static void test_upstream_pooled(void **state)
{
    static const struct pool_case cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", 1, 0, 1},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", 0, 0, 0},  /* the upload was cut */
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", 1, 5, 0},  /* bytes after it */
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", 1, 0, 0},
        {"HTTP/1.1 200 OK\r\n\r\n", 1, 0, 0},                        /* close-delimited */
        {"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", 1, 0, 0},
        {"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", 1, 0, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http1_msg r;
        parse_response(&r, cases[i].response, 0);
        if (response_pools_upstream(&r, cases[i].req_done, cases[i].leftover) != cases[i].pooled)
            fail_msg("row %zu: pooled %d", i, !cases[i].pooled);
        http1_msg_deinit(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plans),
        cmocka_unit_test(test_reason_phrase),
        cmocka_unit_test(test_headers_that_go),
        cmocka_unit_test(test_upstream_pooled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
