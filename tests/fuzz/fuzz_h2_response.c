/* fuzz_h2_response: libFuzzer target for the HTTP/2 response path (proxy/h2up.c): whatever an
 * upstream sends on an HTTP/2 connection carrying one request. The input is every byte the
 * upstream sends after the TLS handshake; the first byte is control, not data: bits 0-6 choose
 * where the input is split into two reads, bit 7 ends the exchange (as a client going away)
 * between them.
 *
 * Includes h2up.c to reach its static functions (h2o's unit-test style), with a worker, a
 * pool and a connection built by hand and no socket: what nghttp2 wants to send is dropped.
 * The exchange's side is the upstream transport interface (upstream_transport.h), driven as
 * client.c drives it. The request is a push with an APNs team credential (a key made at
 * start-up) and its current token, and the token is 25 minutes old when the answer comes (the
 * clock is the harness's): a 403 ExpiredProviderToken is held, read whole and retried once
 * with a new token on the next stream, as with APNs. abort() when an invariant breaks: the exchange is told at most one head,
 * before any body, and nothing after the end or a failure; the head it is told is one the
 * HTTP/1.1 path would have accepted (written out as HTTP/1.1 text, the proxy's own response
 * parser with the limits h1up.c uses takes it and frames its body the same way); a
 * length-delimited body is never longer than its length, and exactly that long at the end;
 * nothing is left allocated once the connection closes. */
#include "proxy/h2up.c"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth/key.h"

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

/* What the exchange has been told. */
struct fz_seen {
    int heads, ended, faulted, released;
    enum http1_body body;
    uint64_t length, got;
};

/* The head, written out as the HTTP/1.1 path would have received it, must parse there with
 * the same framing. */
static void check_head(const struct http1_msg *r)
{
    struct evbuffer *text = evbuffer_new();
    struct http1_msg m;
    size_t i, n;
    const char *p;
    int res;
    CHECK(text != NULL, "out of memory");
    CHECK(r->status >= 200 && r->status <= 599, "status %d", r->status);
    evbuffer_add_printf(text, "HTTP/1.1 %d X\r\n", r->status);
    for (i = 0; i < r->nheaders; i++) {
        evbuffer_add(text, r->headers[i].name, r->headers[i].name_len);
        evbuffer_add(text, ": ", 2);
        evbuffer_add(text, r->headers[i].value, r->headers[i].value_len);
        evbuffer_add(text, "\r\n", 2);
    }
    /* An HTTP/2 body without a length ends with its stream: chunked, in HTTP/1.1 words. */
    if (r->body == HTTP1_BODY_CHUNKED)
        evbuffer_add(text, "transfer-encoding: chunked\r\n", 28);
    evbuffer_add(text, "\r\n", 2);
    n = evbuffer_get_length(text);
    p = (const char *)evbuffer_pullup(text, (ev_ssize_t)n);
    memset(&m, 0, sizeof(m)); /* init keeps a header array: there is none yet */
    m.request_is_head = r->request_is_head;
    http1_msg_init(&m, HTTP_RESPONSE, &fz_resp_limits);
    res = http1_parse_head(&m, p, n);
    /* The framing field added above may be one field too many for the parser's limit. */
    if (!(res < 0 && r->body == HTTP1_BODY_CHUNKED && r->nheaders == fz_resp_limits.max_headers))
        CHECK(res == 1, "head refused as HTTP/1.1: %s", m.error_detail ? m.error_detail : "?");
    if (res == 1) {
        CHECK(m.body == r->body, "framing %d as HTTP/1.1, %d here", (int)m.body, (int)r->body);
        CHECK(m.body != HTTP1_BODY_LENGTH || m.content_length == r->content_length,
              "length %" PRIu64 " as HTTP/1.1, %" PRIu64 " here", m.content_length,
              r->content_length);
    }
    http1_msg_deinit(&m);
    evbuffer_free(text);
}

static int fz_head(void *arg, const struct http1_msg *r)
{
    struct fz_seen *seen = arg;
    CHECK(!seen->released, "told after the release");
    CHECK(seen->heads == 0 && !seen->ended && !seen->faulted, "a second head, or a late one");
    seen->heads = 1;
    seen->body = r->body;
    seen->length = r->content_length;
    check_head(r);
    return 0;
}

static void fz_bytes(struct fz_seen *seen, size_t n)
{
    CHECK(!seen->released, "told after the release");
    CHECK(seen->heads == 1 && !seen->ended && !seen->faulted, "a body without its head");
    CHECK(seen->body != HTTP1_BODY_NONE, "a body after a head that has none");
    seen->got += n;
    CHECK(seen->body != HTTP1_BODY_LENGTH || seen->got <= seen->length,
          "%" PRIu64 " bytes of a %" PRIu64 "-byte body", seen->got, seen->length);
}

static void fz_body(void *arg, const char *at, size_t len)
{
    (void)at;
    fz_bytes(arg, len);
}

static void fz_body_buffer(void *arg, struct evbuffer *src, size_t n)
{
    CHECK(evbuffer_get_length(src) >= n, "told of bytes that are not there");
    fz_bytes(arg, n);
    evbuffer_drain(src, n);
}

static int fz_end(void *arg)
{
    struct fz_seen *seen = arg;
    CHECK(!seen->released, "told after the release");
    CHECK(seen->heads == 1 && !seen->ended && !seen->faulted, "an end without its head");
    CHECK(seen->body != HTTP1_BODY_LENGTH || seen->got == seen->length,
          "a %" PRIu64 "-byte body ended after %" PRIu64, seen->length, seen->got);
    seen->ended = 1;
    return 0;
}

static int fz_fault(void *arg, enum upstream_fault kind, const char *detail)
{
    struct fz_seen *seen = arg;
    (void)kind;
    CHECK(!seen->released, "told after the release");
    CHECK(!seen->ended && !seen->faulted, "a failure after the end");
    CHECK(detail != NULL, "a failure without a reason");
    seen->faulted = 1;
    return 0;
}

static int fz_drained(void *arg)
{
    CHECK(!((struct fz_seen *)arg)->released, "told after the release");
    return 0;
}

static void fz_settle(void *arg)
{
    CHECK(!((struct fz_seen *)arg)->released, "told after the release");
}

static struct credential fz_cred; /* APNs, its key made at start-up; process lifetime */
static time_t fz_now;             /* the token cache's clock */

static time_t fz_clock(void)
{
    return fz_now;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    char *pem, err[256];
    long n;
    (void)argc;
    (void)argv;
    if (k == NULL || b == NULL || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL))
        abort();
    n = BIO_get_mem_data(b, &pem);
    if (key_load_pem(pem, (size_t)n, &fz_cred.key, err, sizeof(err)) != 0)
        abort();
    BIO_free(b);
    EVP_PKEY_free(k);
    fz_cred.name = "apns";
    fz_cred.profile = PROFILE_APNS;
    fz_cred.key_id = "ABCDEFGHIJ";
    fz_cred.team_id = "TEAM123456";
    return 0;
}

static const struct upstream_events fz_events = {fz_head, fz_body, fz_body_buffer, fz_end,
                                                 fz_fault, fz_drained, fz_settle};

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
                                  "Content-Length: 2\r\n";
    struct event_base *base = event_base_new();
    token_teams *teams;
    char err[256];
    struct worker w;
    struct conf conf;
    struct runtime rt;
    struct wgen gen;
    struct target target;
    struct upool pool;
    struct token *tok;
    struct http1_header field;
    struct upstream_request rq;
    struct fz_seen seen;
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
    memset(&rq, 0, sizeof(rq));
    memset(&seen, 0, sizeof(seen));
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
    /* A fresh team store per input: what one input did to the team's token (refused, counted)
     * does not change how the next one runs. */
    fz_now = 1700000000;
    teams = token_teams_new(fz_clock);
    rt.tokens = token_cache_new(600, fz_clock);
    CHECK(teams != NULL && rt.tokens != NULL, "out of memory");
    token_cache_share_teams(rt.tokens, teams);
    tok = token_cache_get(rt.tokens, &fz_cred, NULL, 0, err, sizeof(err));
    CHECK(tok != NULL, "no token: %s", err);
    field.name = strstr(request, "Content-Length");
    field.name_len = 14;
    field.value = field.name + 16;
    field.value_len = 1;
    rq.head = request;
    rq.head_len = sizeof(request) - 1;
    rq.method = request;
    rq.method_len = 4;
    rq.target = request + 5;
    rq.target_len = 13;
    rq.fields = &field;
    rq.nfields = 1;
    rq.tok = tok;
    rq.body = HTTP1_BODY_LENGTH;
    rq.content_length = 2;

    split = data[0] & 0x7f;
    release_between = (data[0] & 0x80) != 0;
    data++;
    size--;
    if (split > size)
        split = size;

    hc = calloc(1, sizeof(*hc));
    st = h2s_new(&pool, &fz_cred);
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
    CHECK(st->us.ops->start(&st->us, &rq, &fz_events, &seen) == 0, "start");
    st->us.ops->send_body(&st->us, "{}", 2);
    st->us.ops->send_end(&st->us);
    CHECK(st->started && st->id >= 0, "the request was not submitted");
    /* No retry on another connection: there is no network here to open one on. */
    st->attempts = H2UP_ATTEMPTS;
    drain_send(hc);
    /* The answer comes when the token may be replaced (APNS_TOKEN_MIN_AGE) but is not due. */
    fz_now += 25 * 60;

    if (feed(hc, data, split) == 0) {
        event_base_loop(base, EVLOOP_NONBLOCK); /* the exchange is told from the loop */
        if (release_between) {
            /* The exchange goes away mid-answer: its stream is reset and freed on close. */
            st->us.ops->release(&st->us);
            seen.released = 1;
            st = NULL;
        }
        feed(hc, data + split, size - split);
    }
    event_base_loop(base, EVLOOP_NONBLOCK);
    /* The connection ends: every stream is unbound; the exchange's own goes with it. */
    conn_close(hc, NULL);
    if (st != NULL) {
        CHECK(st->conn == NULL, "a stream still bound to a closed connection");
        event_base_loop(base, EVLOOP_NONBLOCK);
        CHECK(seen.ended || seen.faulted, "the exchange was told neither the end nor a failure");
        st->us.ops->release(&st->us);
    }
    h2up_pool_free(&pool);
    token_put(tok);
    token_cache_free(rt.tokens);
    token_teams_free(teams);
    event_base_loop(base, EVLOOP_NONBLOCK);
    h2up_worker_cleanup(&w);
    stream_ctx_deinit(&w.sctx);
    event_base_free(base);
    return 0;
}
