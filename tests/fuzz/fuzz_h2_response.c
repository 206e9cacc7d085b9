/* fuzz_h2_response: libFuzzer target for the HTTP/2 response path (proxy/h2up.c): whatever an
 * upstream sends on an HTTP/2 connection carrying one request. The input is every byte the
 * upstream sends after the TLS handshake; the first byte is control, not data: bits 0-6 choose
 * where the input is split into two reads, bit 7 ends the exchange (as a client going away)
 * between them.
 *
 * Includes h2up.c to reach its static functions (h2o's unit-test style), with a worker, a
 * pool and a connection built by hand and no socket: what nghttp2 wants to send is dropped.
 * abort() when an invariant breaks: what the exchange reads is always a well-formed HTTP/1.1
 * response (the proxy's own response parser with the limits client.c uses accepts it, and its
 * body parses without error); nothing is left allocated once the connection closes. */
#include "proxy/h2up.c"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_h2_response: invariant broken: %s: ", #cond);                    \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const struct http1_limits fz_resp_limits = {
    .max_line = 0, .max_head = 64 * 1024, .max_headers = 256};

static int fz_data(void *arg, const char *at, size_t len)
{
    (void)arg;
    (void)at;
    (void)len;
    return 0;
}

static const struct http1_sink fz_sink = {fz_data, NULL, NULL};

/* What the exchange would read so far must be a prefix of a well-formed response. */
static void check_input(struct h2s *st)
{
    struct evbuffer *in;
    struct http1_msg m;
    size_t n, used = 0;
    const char *p;
    int r;
    if (st->up == NULL)
        return;
    in = stream_input(&st->up->s);
    n = evbuffer_get_length(in);
    if (n == 0)
        return;
    p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    memset(&m, 0, sizeof(m)); /* init keeps a header array: there is none yet */
    http1_msg_init(&m, HTTP_RESPONSE, &fz_resp_limits);
    m.sink = &fz_sink;
    r = http1_parse_head(&m, p, n);
    CHECK(r >= 0, "synthesised head refused: %s", m.error_detail ? m.error_detail : "?");
    if (r == 1 && m.head_len < n) {
        r = http1_parse_body(&m, p + m.head_len, n - m.head_len, &used);
        CHECK(r >= 0, "synthesised body refused: %s", m.error_detail ? m.error_detail : "?");
    }
    http1_msg_deinit(&m);
}

static void drain_send(struct h2conn *hc)
{
    const uint8_t *data;
    while (hc->sess != NULL && nghttp2_session_mem_send(hc->sess, &data) > 0)
        ;
}

static int feed(struct h2conn *hc, const uint8_t *data, size_t len)
{
    ssize_t n;
    if (hc->sess == NULL || len == 0)
        return 0;
    hc->in_session = 1;
    n = nghttp2_session_mem_recv(hc->sess, data, len);
    hc->in_session = 0;
    drain_send(hc);
    return n < 0 ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char request[] = "POST /3/device/abc HTTP/1.1\r\nHost: api.push.apple.com\r\n"
                                  "Authorization: Bearer x.y.z\r\nContent-Length: 2\r\n\r\n{}";
    struct event_base *base = event_base_new();
    struct worker w;
    struct conf conf;
    struct runtime rt;
    struct wgen gen;
    struct target target;
    struct upool pool;
    struct h2conn *hc;
    struct h2s *st;
    size_t split;
    int release_between;

    if (size == 0 || base == NULL) {
        if (base)
            event_base_free(base);
        return 0;
    }
    memset(&w, 0, sizeof(w));
    memset(&conf, 0, sizeof(conf));
    memset(&rt, 0, sizeof(rt));
    memset(&gen, 0, sizeof(gen));
    memset(&target, 0, sizeof(target));
    w.base = base;
    stream_ctx_init(&w.sctx, base);
    conf.limits.send_timeout_ms = 1000;
    rt.conf = &conf;
    gen.worker = &w;
    gen.rt = &rt;
    target.name = "api.push.apple.com";
    target.host_header = "api.push.apple.com";
    target.host_header_len = strlen(target.host_header);
    target.h2 = 1;
    upool_init(&pool, &gen, &target);

    split = data[0] & 0x7f;
    release_between = (data[0] & 0x80) != 0;
    data++;
    size--;
    if (split > size)
        split = size;

    hc = calloc(1, sizeof(*hc));
    st = h2s_new(&pool, NULL);
    CHECK(hc != NULL && st != NULL && pool_h2(&pool) != NULL, "out of memory");
    hc->pool = &pool;
    hc->goaway_last = INT32_MAX;
    TAILQ_INIT(&hc->streams);
    TAILQ_INSERT_TAIL(&pool.h2->conns, hc, link);
    CHECK(conn_start_session(hc) == 0, "session");
    st->attached = 1;
    st->conn = hc;
    TAILQ_INSERT_TAIL(&hc->streams, st, link);
    hc->nstreams++;
    evbuffer_add(stream_output(&st->up->s), request, sizeof(request) - 1);
    h2s_poke(&st->up->s, st);
    CHECK(st->head_parsed && st->id >= 0, "the request was not submitted");
    /* No retry on another connection: there is no network here to open one on. */
    st->attempts = H2UP_ATTEMPTS;
    drain_send(hc);

    if (feed(hc, data, split) == 0) {
        check_input(st);
        if (release_between) {
            /* The exchange goes away mid-answer: its stream is reset and freed on close. */
            h2up_release(st->up);
            st = NULL;
        }
        if (feed(hc, data + split, size - split) == 0 && st != NULL)
            check_input(st);
    } else if (st != NULL) {
        check_input(st);
    }
    /* The connection ends: every stream is unbound; the exchange's own goes with it. */
    conn_close(hc, NULL);
    if (st != NULL) {
        CHECK(st->conn == NULL, "a stream still bound to a closed connection");
        h2up_release(st->up);
    }
    h2up_pool_free(&pool);
    event_base_loop(base, EVLOOP_NONBLOCK);
    stream_ctx_deinit(&w.sctx);
    event_base_free(base);
    return 0;
}
