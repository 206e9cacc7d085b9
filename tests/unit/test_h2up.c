/* test_h2up: the HTTP/2 exchange path against an nghttp2 server in the same process, on a fake
 * clock, for what a real APNs stand-in cannot show in a test's time: APNs refusing a token that
 * is 20 minutes old (mint once more, send the push again) or younger (pass the answer on, keep
 * the token), and a refusal of a token that has already been replaced. The exchange's side is
 * the upstream transport interface (upstream_transport.h), driven as client.c drives it.
 * Includes h2up.c to build a connection without a socket (h2o's t/00unit style). */
#include "proxy/h2up.c"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth/key.h"

#define T0 ((time_t)1800000000)
#define TEAM "TEAM000001"

static time_t fake_now = T0;
static time_t fake_clock(void)
{
    return fake_now;
}

/* The server side: answers each request from a script and records its authorization. */
struct server {
    nghttp2_session *sess;
    int status[4];        /* the answer to request i (403 with `reason`, else 200) */
    const char *reason[4];
    char auth[4][1024];   /* the authorization of request i */
    int nrequests;
    size_t big_left;      /* status 200 with a body of this many bytes (0: none) */
    struct evbuffer *body[4]; /* the body of request i, as received */
};

/* What the exchange was told (upstream_events). */
struct seen {
    int status;
    int nheads;
    struct evbuffer *body;
    int ended;
    int faulted;
};

struct fixture {
    struct event_base *base;
    struct seen seen;
    struct upstream_request rq;
    struct http1_header rq_fields[2];
    struct token *tok;
    struct worker w;
    struct conf conf;
    struct runtime rt;
    struct wgen gen;
    struct target target;
    struct upool pool;
    struct credential cred;
    apple_key *key;
    struct h2conn *hc;
    struct h2s *st;
    struct server srv;
};

static int srv_header(nghttp2_session *sess, const nghttp2_frame *frame, const uint8_t *name,
                      size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                      void *ud)
{
    struct server *srv = ud;
    (void)sess;
    (void)flags;
    if (frame->hd.type == NGHTTP2_HEADERS && namelen == 13 &&
        memcmp(name, "authorization", 13) == 0 && srv->nrequests < 4)
        snprintf(srv->auth[srv->nrequests], sizeof(srv->auth[0]), "%.*s", (int)valuelen,
                 (const char *)value);
    return 0;
}

static int srv_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                    size_t len, void *ud)
{
    struct server *srv = ud;
    (void)sess;
    (void)flags;
    (void)id;
    if (srv->nrequests < 4) /* requests are answered one at a time here */
        evbuffer_add(srv->body[srv->nrequests], data, len);
    return 0;
}

static ssize_t srv_body(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                        uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    const char *reason = src->ptr;
    int n = snprintf((char *)buf, len, "{\"reason\":\"%s\"}", reason);
    (void)sess;
    (void)id;
    (void)ud;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return n;
}

static ssize_t srv_big(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                       uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct server *srv = src->ptr;
    size_t n = len < srv->big_left ? len : srv->big_left;
    (void)sess;
    (void)id;
    (void)ud;
    memset(buf, 'z', n);
    srv->big_left -= n;
    if (srv->big_left == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int srv_frame(nghttp2_session *sess, const nghttp2_frame *frame, void *ud)
{
    struct server *srv = ud;
    int i;
    if (frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) || srv->nrequests >= 4)
        return 0;
    i = srv->nrequests++;
    if (srv->status[i] == 403) {
        nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"403", 7, 3, 0},
                           {(uint8_t *)"apns-id", (uint8_t *)"ID", 7, 2, 0}};
        nghttp2_data_provider dp = {.source.ptr = (void *)srv->reason[i],
                                    .read_callback = srv_body};
        nghttp2_submit_response(sess, frame->hd.stream_id, nv, 2, &dp);
    } else {
        nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                           {(uint8_t *)"apns-id", (uint8_t *)"ID", 7, 2, 0}};
        nghttp2_data_provider dp = {.source.ptr = srv, .read_callback = srv_big};
        nghttp2_submit_response(sess, frame->hd.stream_id, nv, 2, srv->big_left ? &dp : NULL);
    }
    return 0;
}

/* Moves bytes both ways until neither side has anything to send. */
static void pump(struct fixture *f)
{
    for (int round = 0; round < 50; round++) {
        const uint8_t *data;
        ssize_t n;
        int moved = 0;
        f->hc->in_session = 1;
        while ((n = nghttp2_session_mem_send(f->hc->sess, &data)) > 0) {
            assert_int_equal(nghttp2_session_mem_recv(f->srv.sess, data, (size_t)n), n);
            moved = 1;
        }
        f->hc->in_session = 0;
        while ((n = nghttp2_session_mem_send(f->srv.sess, &data)) > 0) {
            f->hc->in_session = 1;
            assert_int_equal(nghttp2_session_mem_recv(f->hc->sess, data, (size_t)n), n);
            f->hc->in_session = 0;
            moved = 1;
        }
        if (!moved)
            return;
    }
}

static apple_key *new_key(void)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    apple_key *k = NULL;
    char err[256], *pem;
    long n;
    assert_non_null(pkey);
    assert_int_equal(PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL), 1);
    n = BIO_get_mem_data(bio, &pem);
    assert_int_equal(key_load_pem(pem, (size_t)n, &k, err, sizeof err), 0);
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return k;
}

static int ev_head(void *arg, const struct http1_msg *r)
{
    struct seen *seen = arg;
    seen->status = r->status;
    seen->nheads++;
    return 0;
}

static void ev_body(void *arg, const char *at, size_t len)
{
    struct seen *seen = arg;
    evbuffer_add(seen->body, at, len);
}

static void ev_body_buffer(void *arg, struct evbuffer *src, size_t n)
{
    struct seen *seen = arg;
    evbuffer_remove_buffer(src, seen->body, n);
}

static int ev_end(void *arg)
{
    ((struct seen *)arg)->ended = 1;
    return 0;
}

static int ev_fault(void *arg, enum upstream_fault kind, const char *detail)
{
    (void)kind;
    (void)detail;
    ((struct seen *)arg)->faulted = 1;
    return 0;
}

static int ev_drained(void *arg)
{
    (void)arg;
    return 0;
}

static void ev_settle(void *arg)
{
    (void)arg;
}

static const struct upstream_events test_events = {ev_head, ev_body, ev_body_buffer, ev_end,
                                                   ev_fault, ev_drained, ev_settle};

/* The exchange's request, as request_plan makes it: the text and its parts. */
static const char request[] = "POST /3/device/abc HTTP/1.1\r\nHost: api.push.apple.com\r\n"
                              "apns-topic: com.example.app\r\nContent-Length: 2\r\n";

static void set_field(struct http1_header *h, const char *name, const char *value)
{
    h->name = strstr(request, name);
    h->name_len = strlen(name);
    h->value = strstr(request, value);
    h->value_len = strlen(value);
}

/* A connection with one stream carrying a push, the server answering from its script. */
static struct fixture *fixture_new(void)
{
    struct fixture *f = calloc(1, sizeof(*f));
    nghttp2_session_callbacks *cbs;
    char err[256];

    assert_non_null(f);
    f->base = event_base_new();
    f->w.base = f->base;
    stream_ctx_init(&f->w.sctx, f->base);
    f->conf.limits.send_timeout_ms = 1000;
    f->rt.conf = &f->conf;
    f->rt.tokens = token_cache_new(300, fake_clock);
    f->gen.worker = &f->w;
    f->gen.rt = &f->rt;
    f->target.name = "api.push.apple.com";
    f->target.host_header = "api.push.apple.com";
    f->target.host_header_len = strlen(f->target.host_header);
    f->target.h2 = 1;
    upool_init(&f->pool, &f->gen, &f->target);
    f->key = new_key();
    f->cred.name = "push";
    f->cred.profile = PROFILE_APNS;
    f->cred.key_id = "AAAAAAAAAA";
    f->cred.team_id = TEAM;
    f->cred.skew = TOKEN_DEFAULT_SKEW;
    f->cred.key = f->key;

    assert_int_equal(nghttp2_session_callbacks_new(&cbs), 0);
    nghttp2_session_callbacks_set_on_header_callback(cbs, srv_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, srv_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, srv_data);
    for (int i = 0; i < 4; i++) {
        f->srv.body[i] = evbuffer_new();
        assert_non_null(f->srv.body[i]);
    }
    assert_int_equal(nghttp2_session_server_new(&f->srv.sess, cbs, &f->srv), 0);
    nghttp2_session_callbacks_del(cbs);
    assert_int_equal(nghttp2_submit_settings(f->srv.sess, NGHTTP2_FLAG_NONE, NULL, 0), 0);

    f->hc = calloc(1, sizeof(*f->hc));
    f->st = h2s_new(&f->pool, &f->cred);
    assert_non_null(f->hc);
    assert_non_null(f->st);
    assert_non_null(pool_h2(&f->pool));
    f->hc->pool = &f->pool;
    f->hc->cred = &f->cred;
    f->hc->goaway_last = INT32_MAX;
    TAILQ_INIT(&f->hc->streams);
    TAILQ_INSERT_TAIL(&f->pool.h2->conns, f->hc, link);
    assert_int_equal(conn_start_session(f->hc), 0);
    f->st->attached = 1;
    f->st->conn = f->hc;
    TAILQ_INSERT_TAIL(&f->hc->streams, f->st, link);
    f->hc->nstreams++;

    /* The exchange's request with the team's token, as client.c gives it. */
    f->tok = token_cache_get(f->rt.tokens, &f->cred, NULL, 0, err, sizeof(err));
    assert_non_null(f->tok);
    f->seen.body = evbuffer_new();
    assert_non_null(f->seen.body);
    set_field(&f->rq_fields[0], "apns-topic", "com.example.app");
    set_field(&f->rq_fields[1], "Content-Length", "2");
    f->rq.head = request;
    f->rq.head_len = sizeof(request) - 1;
    f->rq.method = request;
    f->rq.method_len = 4;
    f->rq.target = request + 5;
    f->rq.target_len = strlen("/3/device/abc");
    f->rq.fields = f->rq_fields;
    f->rq.nfields = 2;
    f->rq.tok = f->tok;
    f->rq.body = HTTP1_BODY_LENGTH;
    f->rq.content_length = 2;
    return f;
}

static void fixture_free(struct fixture *f)
{
    conn_close(f->hc, NULL);
    f->st->us.ops->release(&f->st->us);
    token_put(f->tok);
    evbuffer_free(f->seen.body);
    h2up_pool_free(&f->pool);
    nghttp2_session_del(f->srv.sess);
    for (int i = 0; i < 4; i++)
        evbuffer_free(f->srv.body[i]);
    token_cache_free(f->rt.tokens);
    key_free(f->key);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    h2up_worker_cleanup(&f->w);
    stream_ctx_deinit(&f->w.sctx);
    event_base_free(f->base);
    free(f);
}

/* What the exchange was told: the status of the one head it got (0: none). */
static int answer_status(struct fixture *f)
{
    event_base_loop(f->base, EVLOOP_NONBLOCK); /* the transport tells from the loop */
    assert_true(f->seen.nheads <= 1);
    return f->seen.status;
}

static void run(struct fixture *f)
{
    const struct upstream_ops *ops = f->st->us.ops;
    assert_int_equal(ops->start(&f->st->us, &f->rq, &test_events, &f->seen), 0);
    ops->send_body(&f->st->us, "{}", 2);
    ops->send_end(&f->st->us);
    assert_true(f->st->id >= 0);
    pump(f);
}

/* A token 20 minutes old: APNs says it has expired; the proxy mints once more, sends the push
 * again with the new token, and the exchange sees only the second answer. */
static void test_refused_token_20_minutes_old_is_replaced_once(void **state)
{
    struct fixture *f;
    (void)state;
    fake_now = T0;
    f = fixture_new();
    fake_now = T0 + APNS_TOKEN_MIN_AGE;
    f->srv.status[0] = 403;
    f->srv.reason[0] = "ExpiredProviderToken";
    f->srv.status[1] = 200;
    run(f);
    assert_int_equal(f->srv.nrequests, 2);
    assert_string_not_equal(f->srv.auth[0], f->srv.auth[1]);
    assert_int_equal(answer_status(f), 200);
    assert_int_equal(f->w.stats.apns_token_retries, 1);
    assert_int_equal(token_cache_mints(f->rt.tokens, &f->cred), 2);
    fixture_free(f);
}

/* A push whose token is 20 minutes old when the peer refuses it (ExpiredProviderToken), the
 * peer answering 200 to a second try. */
static struct fixture *fixture_token_refused_at_20_minutes(void)
{
    struct fixture *f;
    fake_now = T0;
    f = fixture_new();
    fake_now = T0 + APNS_TOKEN_MIN_AGE;
    f->srv.status[0] = 403;
    f->srv.reason[0] = "ExpiredProviderToken";
    f->srv.status[1] = 200;
    return f;
}

/* Sends a body of n bytes (a pattern) in pieces, the peer reading as it goes; returns it. */
static char *send_long_body(struct fixture *f, size_t n)
{
    const struct upstream_ops *ops = f->st->us.ops;
    char *b = malloc(n);
    size_t i, off;
    assert_non_null(b);
    for (i = 0; i < n; i++)
        b[i] = (char)('a' + (i * 7 + i / 251) % 26);
    f->rq.nfields = 1; /* no Content-Length: the body is chunked in from the client */
    f->rq.body = HTTP1_BODY_CHUNKED;
    assert_int_equal(ops->start(&f->st->us, &f->rq, &test_events, &f->seen), 0);
    for (off = 0; off < n; off += 3000) {
        ops->send_body(&f->st->us, b + off, n - off < 3000 ? n - off : 3000);
        pump(f);
    }
    ops->send_end(&f->st->us);
    pump(f);
    return b;
}

static void assert_body(struct evbuffer *got, const char *want, size_t n)
{
    assert_int_equal(evbuffer_get_length(got), n);
    assert_memory_equal(evbuffer_pullup(got, -1), want, n);
}

/* A token refused after 20 minutes: the push goes again, its body from the start, whole. */
static void test_refused_token_replays_the_body(void **state)
{
    struct fixture *f = fixture_token_refused_at_20_minutes();
    char *b;
    (void)state;
    b = send_long_body(f, 40000);
    assert_int_equal(f->srv.nrequests, 2);
    assert_body(f->srv.body[0], b, 40000);
    assert_body(f->srv.body[1], b, 40000);
    assert_int_equal(answer_status(f), 200);
    free(b);
    fixture_free(f);
}

/* A body past the 64 KiB kept for a retry goes out whole, once, and the refusal is passed on:
 * it cannot be sent again. */
static void test_long_body_is_not_kept_for_a_retry(void **state)
{
    struct fixture *f = fixture_token_refused_at_20_minutes();
    char *b;
    (void)state;
    b = send_long_body(f, 100000);
    assert_int_equal(f->srv.nrequests, 1);
    assert_body(f->srv.body[0], b, 100000);
    assert_true(f->st->replay_gone);
    assert_int_equal(answer_status(f), 403);
    free(b);
    fixture_free(f);
}

/* Younger than 20 minutes: the 403 goes to the client as APNs gave it, the token stays. */
static void test_refused_young_token_is_kept(void **state)
{
    struct fixture *f;
    struct evbuffer *in;
    (void)state;
    fake_now = T0;
    f = fixture_new();
    fake_now = T0 + APNS_TOKEN_MIN_AGE - 1;
    f->srv.status[0] = 403;
    f->srv.reason[0] = "InvalidProviderToken";
    run(f);
    assert_int_equal(f->srv.nrequests, 1);
    assert_int_equal(answer_status(f), 403);
    in = f->seen.body;
    assert_true(evbuffer_search(in, "{\"reason\":\"InvalidProviderToken\"}", 33, NULL).pos >= 0);
    assert_true(f->seen.ended);
    assert_int_equal(f->w.stats.apns_token_retries, 0);
    assert_int_equal(token_cache_mints(f->rt.tokens, &f->cred), 1);
    fixture_free(f);
}

/* Refused twice in a row: one new token, one retry, then APNs' second answer is passed on. */
static void test_second_refusal_is_passed_on(void **state)
{
    struct fixture *f;
    (void)state;
    fake_now = T0;
    f = fixture_new();
    fake_now = T0 + APNS_TOKEN_MIN_AGE;
    f->srv.status[0] = 403;
    f->srv.reason[0] = "ExpiredProviderToken";
    f->srv.status[1] = 403;
    f->srv.reason[1] = "ExpiredProviderToken";
    run(f);
    assert_int_equal(f->srv.nrequests, 2);
    assert_int_equal(answer_status(f), 403);
    assert_int_equal(token_cache_mints(f->rt.tokens, &f->cred), 2);
    fixture_free(f);
}

/* Other 403 reasons (a bad topic, say) are not the token's fault: passed on, nothing minted. */
static void test_other_403_is_passed_on(void **state)
{
    struct fixture *f;
    (void)state;
    fake_now = T0;
    f = fixture_new();
    fake_now = T0 + APNS_TOKEN_MIN_AGE;
    f->srv.status[0] = 403;
    f->srv.reason[0] = "TopicDisallowed";
    run(f);
    assert_int_equal(f->srv.nrequests, 1);
    assert_int_equal(answer_status(f), 403);
    assert_int_equal(token_cache_mints(f->rt.tokens, &f->cred), 1);
    fixture_free(f);
}

/* Backpressure: while the exchange does not read, the upstream can send no more than the
 * stream's window; once it reads and turns reading back on, the window reopens and the rest
 * comes, handed over as it arrived (the answer has no content-length: no framing is added). */
static void test_window_follows_the_reader(void **state)
{
    struct fixture *f;
    const struct upstream_ops *ops;
    size_t total = 1024 * 1024;
    int rounds = 0;
    (void)state;
    fake_now = T0;
    f = fixture_new();
    ops = f->st->us.ops;
    f->srv.big_left = total;
    ops->set_reading(&f->st->us, 0);
    run(f);
    assert_int_equal(answer_status(f), 200);
    /* At most one stream window of DATA waits for the exchange, which has taken none. */
    assert_true(evbuffer_get_length(f->st->in) > 0);
    assert_true(evbuffer_get_length(f->st->in) <= H2UP_STREAM_WINDOW);
    assert_int_equal(evbuffer_get_length(f->seen.body), 0);
    assert_true(f->srv.big_left > 0);
    while (f->srv.big_left > 0 && rounds++ < 100) {
        ops->set_reading(&f->st->us, 1); /* takes what waits: the window reopens */
        pump(f);
        ops->set_reading(&f->st->us, 0);
    }
    ops->set_reading(&f->st->us, 1);
    assert_int_equal(f->srv.big_left, 0);
    assert_int_equal(evbuffer_get_length(f->seen.body), total);
    assert_true(f->st->resp_end);
    assert_true(f->seen.ended);
    fixture_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_token_20_minutes_old_is_replaced_once),
        cmocka_unit_test(test_refused_young_token_is_kept),
        cmocka_unit_test(test_second_refusal_is_passed_on),
        cmocka_unit_test(test_other_403_is_passed_on),
        cmocka_unit_test(test_window_follows_the_reader),
        cmocka_unit_test(test_refused_token_replays_the_body),
        cmocka_unit_test(test_long_body_is_not_kept_for_a_retry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
