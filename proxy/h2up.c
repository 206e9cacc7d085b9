/* h2up: HTTP/2 upstream connections; see h2up.h for the picture. */
#include "proxy/h2up.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>

#include "auth/token_cache.h"
#include "proxy/http1.h"
#include "proxy/log.h"
#include "proxy/runtime.h"

/* Streams a connection is assumed to take before the peer's SETTINGS say (RFC 9113 6.5.2
 * recommends at least 100). */
#define H2UP_DEFAULT_STREAMS 100
/* Connections per credential and target in one worker: past this, streams queue in nghttp2 on
 * the least busy connection instead of opening more. */
#define H2UP_MAX_CONNS 16
/* Our receive windows: per stream, and for the whole connection. */
#define H2UP_STREAM_WINDOW (256 * 1024)
#define H2UP_CONN_WINDOW (4 * 1024 * 1024)
/* A response's bytes waiting for the exchange to read them: past this, the stream's window is
 * not reopened until they are read (the client's backpressure reaches the upstream). */
#define H2UP_IN_HIGH (256 * 1024)
/* A request is kept for a retry after GOAWAY while its body is at most this long. */
#define H2UP_REPLAY_MAX (64 * 1024)
/* Response heads: Apple's are small; a huge one is an attack (the HTTP/1.1 path's limits). */
#define H2UP_HEAD_MAX (64 * 1024)
#define H2UP_HEADERS_MAX 256
/* APNs error answers are held to read their reason; a longer body is passed on as it is. */
#define H2UP_HOLD_MAX 8192
/* Tries of one request over refused streams and GOAWAYs. */
#define H2UP_ATTEMPTS 3
/* The connection's output is filled by nghttp2 up to this much before the socket takes it. */
#define H2UP_OUT_HIGH (1024 * 1024)
/* Seconds idle before a PING, and seconds a PING may go unanswered. */
#define H2UP_PING_IDLE 30
#define H2UP_PING_TIMEOUT 10

struct h2conn;

/* What an exchange is told, from the event loop (h2s_deliver_cb). */
enum {
    H2S_TELL_HEAD = 0x01,    /* the response head is ready */
    H2S_TELL_DRAINED = 0x02  /* the request body waiting fell to UPSTREAM_SEND_LOW */
};

/* One exchange's HTTP/2 stream: the exchange's upstream_stream. Owned by the exchange until it
 * releases it; a stream still open in nghttp2 then stays here, detached (released), until it
 * closes. */
struct h2s {
    struct upstream_stream us; /* the exchange's handle */
    TAILQ_ENTRY(h2s) link;  /* in its connection's list */
    struct h2conn *conn;    /* NULL while waiting for a connection */
    struct upool *pool;
    const struct credential *cred;
    upstream_stream_ready ready_cb;
    void *arg;
    int attached;           /* the exchange has been handed the stream */
    int released;           /* the exchange let go: nothing more is told */
    const struct upstream_events *xev; /* set by start */
    void *xarg;
    int32_t id;             /* -1: not submitted */
    int attempts;
    struct worker *w;       /* keeps the spare streams (outlives every pool) */
    /* The request: the exchange's head as fields, names lower-cased in an own copy. nghttp2
     * is given these bytes without copying them (NGHTTP2_NV_FLAG_NO_COPY_*): they live until
     * the stream is freed, and a stream is never freed while nghttp2 may still read them. */
    char *head;             /* owned: the names, values and the authorization value */
    size_t head_cap;
    nghttp2_nv *nv;         /* owned, names and values into head or auth */
    size_t nnv, nv_cap;
    char *auth;             /* a replaced authorization value (token retry), owned */
    int auth_index;         /* the authorization entry of nv, -1 if none */
    int started, req_end, has_body, deferred;
    /* The request body: its first body_sent bytes went out and are kept for a retry (at most
     * H2UP_REPLAY_MAX; past that they are dropped and replay_gone is set), the rest waits. */
    struct evbuffer *body;
    size_t body_sent;
    int replay_gone;
    /* The response head as it arrives: names and values in fbuf, at the offsets in fields. */
    char *fbuf;
    size_t flen, fcap;
    struct h2field { uint32_t name, name_len, value, value_len; } *fields;
    size_t nfields, cap_fields;
    struct http1_msg resp;  /* the head the exchange is given */
    struct http1_header *resp_fields; /* resp's spans, into fbuf */
    size_t resp_cap;
    int status, has_cl, head_done, resp_end, holding, token_retried, too_large;
    int bad_status;         /* the upstream's :status was outside 100-599: stream reset */
    int bad_field;          /* a field an HTTP/1.1 head could not carry: stream reset */
    struct evbuffer *held;  /* an APNs error body, read before the head goes on */
    struct evbuffer *in;    /* response body received, not yet given to the exchange */
    size_t unconsumed;      /* DATA bytes the window has not been reopened for */
    /* Telling the exchange. */
    unsigned tell;          /* H2S_TELL_* not yet told */
    int head_told, end_told, reading;
    int failed;             /* the stream failed: fault, fault_detail (NULL: lost, see
                               h2s_lost) are told after what arrived before */
    enum upstream_fault fault;
    const char *fault_detail;
    struct event deliver;   /* event_active'd: tells the exchange from the loop */
    struct event timer;     /* the earliest of the two deadlines */
    uint32_t response_ms, send_ms;
    uint64_t resp_deadline, send_deadline, armed; /* ms, stream_now_ms; 0: none */
};

TAILQ_HEAD(h2s_list, h2s);

struct h2conn {
    TAILQ_ENTRY(h2conn) link;
    struct upool *pool;
    const struct credential *cred;
    struct upconn *carrier; /* the TLS connection (upstream.c) */
    nghttp2_session *sess;  /* NULL until the carrier is up */
    struct h2s_list streams; /* bound: waiting for the session or submitted */
    size_t nstreams;
    int going_away;         /* no new streams: GOAWAY received, or a failure */
    int settings_seen;      /* the peer's SETTINGS have arrived */
    int32_t goaway_last;    /* the peer's last-stream-id (INT32_MAX before any GOAWAY) */
    unsigned last_rx, ping_at;
    int ping_out;
    int closing;            /* being closed: callbacks do nothing more */
    int in_session;         /* inside nghttp2's recv or send: no nested send, no close */
    uint32_t goaway_error;  /* a GOAWAY's error code: the peer gave up on the connection */
    struct event *flush_ev; /* writes once per loop iteration what every stream queued */
    int flush_pending;
};

TAILQ_HEAD(h2conn_list, h2conn);

struct h2pool {
    struct h2conn_list conns;
    /* The peer's SETTINGS_MAX_CONCURRENT_STREAMS as its last SETTINGS said (0: none yet): a
     * connection still opening is assumed to take that many, so that a burst spreads over
     * new connections instead of piling onto one whose limit is not known yet. */
    uint32_t peer_streams;
};

/* Streams kept for reuse per worker, with their buffers (a few kilobytes each): one push's
 * state costs no allocation once a worker is warm, up to this many pushes in flight. */
#define H2S_SPARE 256
/* A stream whose request or response head needed more than this is not kept: a rare huge
 * head does not pin its buffers in the spare list. */
#define H2S_KEEP_BYTES 8192
#define H2S_KEEP_FIELDS 64

static const struct upstream_ops h2s_ops;
static int conn_flush(struct h2conn *hc);
static void conn_want_flush(struct h2conn *hc);
static void conn_close(struct h2conn *hc, const char *why);
static void h2s_bind(struct h2s *st);
static void h2s_submit(struct h2s *st);

static const char *target_name(const struct upool *pool)
{
    return pool->target->name;
}

static struct worker *worker_of(const struct upool *pool)
{
    return pool->gen->worker;
}

/* hc carries delta streams more: its count and the worker's per-protocol gauge move together. */
static void conn_streams_add(struct h2conn *hc, int delta)
{
    hc->nstreams = (size_t)((long)hc->nstreams + delta);
    WSTAT_ADD(worker_of(hc->pool), proto_streams[UP_PROTO_H2], (uint64_t)(int64_t)delta);
}

static unsigned tick_now(const struct upool *pool)
{
    return pool->gen->worker->house_ticks;
}

static char lower_ascii(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static struct h2s *h2s_of(struct upstream_stream *us)
{
    return (struct h2s *)(void *)((char *)us - offsetof(struct h2s, us));
}

/* The exchange still holds the stream and has started it: it may be told things. */
static int h2s_live(const struct h2s *st)
{
    return !st->released && st->xev != NULL;
}

/* ---- streams ---- */

/* Request body bytes not sent yet. */
static size_t h2s_unsent(const struct h2s *st)
{
    return evbuffer_get_length(st->body) - st->body_sent;
}

/* A replaced authorization value (the token retry): wiped and freed. */
static void free_auth(struct h2s *st)
{
    if (st->auth != NULL) {
        OPENSSL_cleanse(st->auth, strlen(st->auth));
        free(st->auth);
        st->auth = NULL;
    }
}

static void h2s_destroy(struct h2s *st)
{
    http1_msg_deinit(&st->resp);
    /* The request's copy holds the bearer token: wiped, as libevent's blocks are. */
    if (st->head != NULL)
        OPENSSL_cleanse(st->head, st->head_cap);
    free_auth(st);
    free(st->head);
    free(st->nv);
    free(st->fbuf);
    free(st->fields);
    free(st->resp_fields);
    if (st->body)
        evbuffer_free(st->body);
    if (st->held)
        evbuffer_free(st->held);
    if (st->in)
        evbuffer_free(st->in);
    free(st);
}

static void h2s_free(struct h2s *st)
{
    struct worker *w = st->w;
    event_del(&st->deliver);
    event_del(&st->timer);
    if (w->nspare_h2s >= H2S_SPARE || w->spare_h2s_closed ||
        st->head_cap > H2S_KEEP_BYTES || st->fcap > H2S_KEEP_BYTES ||
        st->cap_fields > H2S_KEEP_FIELDS || st->nv_cap > H2S_KEEP_FIELDS) {
        h2s_destroy(st);
        return;
    }
    /* Kept: the buffers stay with their capacities, everything else starts from zero. */
    {
        struct h2s keep = *st;
        free_auth(st);
        if (st->held)
            evbuffer_free(st->held);
        evbuffer_drain(st->body, evbuffer_get_length(st->body));
        evbuffer_drain(st->in, evbuffer_get_length(st->in));
        memset(st, 0, sizeof(*st));
        st->head = keep.head;
        st->head_cap = keep.head_cap;
        st->nv = keep.nv;
        st->nv_cap = keep.nv_cap;
        st->fbuf = keep.fbuf;
        st->fcap = keep.fcap;
        st->fields = keep.fields;
        st->cap_fields = keep.cap_fields;
        st->resp_fields = keep.resp_fields;
        st->resp_cap = keep.resp_cap;
        st->resp.headers = keep.resp.headers; /* http1_msg_init keeps them */
        st->resp.cap_headers = keep.resp.cap_headers;
        st->body = keep.body;
        st->in = keep.in;
        st->w = w;
    }
    *(struct h2s **)(void *)st = w->spare_h2s; /* the list runs through the first bytes */
    w->spare_h2s = st;
    w->nspare_h2s++;
}

void h2up_worker_cleanup(struct worker *w)
{
    struct h2s *st;
    while ((st = w->spare_h2s) != NULL) {
        w->spare_h2s = *(struct h2s **)(void *)st;
        *(struct h2s **)(void *)st = NULL;
        h2s_destroy(st);
    }
    w->nspare_h2s = 0;
    w->spare_h2s_closed = 1; /* streams freed from now on go at once */
}

/* Response heads: Apple's are small; a huge one is an attack (the HTTP/1.1 path's limits). */
static const struct http1_limits resp_limits = {.max_line = 0, .max_head = H2UP_HEAD_MAX,
                                                .max_headers = H2UP_HEADERS_MAX};

static void h2s_deliver_cb(evutil_socket_t fd, short what, void *arg);
static void h2s_timer_cb(evutil_socket_t fd, short what, void *arg);

static struct h2s *h2s_new(struct upool *pool, const struct credential *cred)
{
    struct worker *w = worker_of(pool);
    struct event_base *base = w->base;
    struct h2s *st = w->spare_h2s;
    if (st != NULL) {
        w->spare_h2s = *(struct h2s **)(void *)st;
        w->nspare_h2s--;
        memset(st, 0, sizeof(void *));
    } else {
        st = calloc(1, sizeof(*st));
        if (st == NULL)
            return NULL;
        st->w = w;
    }
    st->us.ops = &h2s_ops;
    st->pool = pool;
    st->id = -1;
    st->auth_index = -1;
    st->cred = cred;
    st->reading = 1;
    event_assign(&st->deliver, base, -1, 0, h2s_deliver_cb, st);
    evtimer_assign(&st->timer, base, h2s_timer_cb, st);
    if (st->body == NULL)
        st->body = evbuffer_new();
    if (st->in == NULL)
        st->in = evbuffer_new();
    if (st->body == NULL || st->in == NULL) {
        h2s_destroy(st);
        return NULL;
    }
    return st;
}

/* Unbinds from the connection (the nghttp2 stream, if any, no longer points here). */
static void h2s_unbind(struct h2s *st)
{
    struct h2conn *hc = st->conn;
    if (hc == NULL)
        return;
    if (st->id >= 0 && hc->sess != NULL)
        nghttp2_session_set_stream_user_data(hc->sess, st->id, NULL);
    if (st->unconsumed && hc->sess != NULL)
        nghttp2_session_consume_connection(hc->sess, st->unconsumed);
    st->unconsumed = 0;
    TAILQ_REMOVE(&hc->streams, st, link);
    conn_streams_add(hc, -1);
    st->conn = NULL;
    st->id = -1;
}

/* The exchange is told what is new, from the loop (never from inside nghttp2's calls or the
 * exchange's own). */
static void h2s_tell(struct h2s *st, unsigned what)
{
    st->tell |= what;
    if (h2s_live(st))
        event_active(&st->deliver, EV_TIMEOUT, 1);
}

/* The exchange sees the upstream fail (502 before the head, a cut response after it). */
static void h2s_fail(struct h2s *st, enum upstream_fault kind, const char *detail)
{
    if (st->released || st->failed)
        return;
    WSTAT_ADD(worker_of(st->pool), h2_failures, 1);
    st->failed = 1;
    st->fault = kind;
    st->fault_detail = detail;
    h2s_tell(st, 0);
}

/* The stream or its connection was lost (reset, closed, bad frames): told as an HTTP/1.1
 * connection's loss reads, by whether the exchange had the head by then. */
static void h2s_lost(struct h2s *st)
{
    h2s_fail(st, UPSTREAM_FAULT_UNREACHABLE, NULL);
}

/* ---- deadlines: the response's progress and the request's ---- */

static void h2s_arm(struct h2s *st)
{
    uint64_t at = st->resp_deadline;
    if (st->send_deadline && (at == 0 || st->send_deadline < at))
        at = st->send_deadline;
    if (at == 0 || (st->armed && st->armed <= at))
        return; /* the timer fires earlier and looks again */
    uint64_t now = stream_now_ms();
    uint64_t ms = at > now ? at - now : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    st->armed = at;
    evtimer_add(&st->timer, &tv);
}

/* The response made progress (or the exchange turned reading on): its deadline restarts. */
static void h2s_resp_progress(struct h2s *st)
{
    st->resp_deadline = st->response_ms && st->reading && !st->end_told
                            ? stream_now_ms() + st->response_ms : 0;
    h2s_arm(st);
}

/* The request's body moved (or more of it waits): its deadline restarts while some waits. */
static void h2s_send_progress(struct h2s *st)
{
    st->send_deadline = st->send_ms && h2s_unsent(st) > 0
                            ? stream_now_ms() + st->send_ms : 0;
    h2s_arm(st);
}

static void h2s_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2s *st = arg;
    uint64_t now = stream_now_ms();
    (void)fd;
    (void)what;
    st->armed = 0;
    if (!h2s_live(st))
        return;
    if (st->resp_deadline && st->resp_deadline <= now)
        h2s_fail(st, UPSTREAM_FAULT_TIMEOUT,
                 st->head_told ? "the upstream stalled mid-response"
                               : "the upstream did not answer in time");
    else if (st->send_deadline && st->send_deadline <= now)
        h2s_fail(st, UPSTREAM_FAULT_TIMEOUT,
                 st->head_told ? "the upstream stalled mid-response"
                               : "the upstream did not read the request in time");
    else
        h2s_arm(st);
}

/* Reopens the window for response bytes the exchange has taken, or will take at once. */
static void h2s_consume(struct h2s *st)
{
    struct h2conn *hc = st->conn;
    if (st->unconsumed == 0 || hc == NULL || hc->sess == NULL || st->id < 0)
        return;
    if (!st->released && (!st->reading || evbuffer_get_length(st->in) >= H2UP_IN_HIGH))
        return;
    nghttp2_session_consume(hc->sess, st->id, st->unconsumed);
    st->unconsumed = 0;
}

/* A request that was not processed (refused, or above a GOAWAY's last-stream-id) goes again
 * on another connection; 1 when it does. */
static int h2s_retry(struct h2s *st)
{
    if (st->head_done || st->replay_gone || st->attempts >= H2UP_ATTEMPTS || st->released)
        return 0;
    h2s_unbind(st);
    /* The body goes again from its start. */
    st->body_sent = 0;
    st->deferred = 0;
    WSTAT_ADD(worker_of(st->pool), h2_retries, 1);
    h2s_bind(st);
    return 1;
}

/* ---- the request: the exchange's head as fields ---- */

/* Connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2): the proxy's head has
 * none but its own framing field. TE is kept only as "trailers". */
static int skip_request_header(const struct http1_header *h)
{
    static const char *const drop[] = {"host", "connection", "keep-alive", "proxy-connection",
                                       "transfer-encoding", "upgrade"};
    size_t i;
    for (i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (http1_name_is(h->name, h->name_len, drop[i]))
            return 1;
    if (http1_name_is(h->name, h->name_len, "te"))
        return !(h->value_len == 8 && strncasecmp(h->value, "trailers", 8) == 0);
    return 0;
}

static void nv_set(nghttp2_nv *nv, const char *name, size_t nlen, const char *value, size_t vlen)
{
    nv->name = (uint8_t *)(uintptr_t)name;
    nv->namelen = nlen;
    nv->value = (uint8_t *)(uintptr_t)value;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
}

/* Builds the header list from the request's parts: pseudo-headers from the method, the target
 * and the upstream's name; the fields with lower-case names; the token. One copy of the head
 * and the token's value holds the bytes (the exchange's may go before nghttp2 is done). Returns
 * 0, or -1 when out of memory. */
static int h2s_build_nv(struct h2s *st, const struct upstream_request *rq)
{
    /* "Authorization: Bearer <jwt>\r\n": the value is what follows ": ", without the CRLF. */
    const char *auth = rq->tok->line + 15;
    size_t auth_len = rq->tok->line_len - 17, i, n = 0, need = rq->head_len + auth_len;
    char *copy;
    if (need > st->head_cap) {
        free(st->head);
        st->head_cap = need < 1024 ? 1024 : need;
        st->head = malloc(st->head_cap);
        if (st->head == NULL) {
            st->head_cap = 0;
            return -1;
        }
    }
    if (rq->nfields + 5 > st->nv_cap) {
        free(st->nv);
        st->nv_cap = rq->nfields + 5 < 32 ? 32 : rq->nfields + 5;
        st->nv = malloc(st->nv_cap * sizeof(*st->nv));
        if (st->nv == NULL) {
            st->nv_cap = 0;
            return -1;
        }
    }
    copy = st->head;
    memcpy(copy, rq->head, rq->head_len);
    memcpy(copy + rq->head_len, auth, auth_len);
#define IN_COPY(p) (copy + ((p) - rq->head))
    nv_set(&st->nv[n++], ":method", 7, IN_COPY(rq->method), rq->method_len);
    nv_set(&st->nv[n++], ":scheme", 7, "https", 5);
    nv_set(&st->nv[n++], ":authority", 10, st->pool->target->host_header,
           st->pool->target->host_header_len);
    nv_set(&st->nv[n++], ":path", 5, IN_COPY(rq->target), rq->target_len);
    for (i = 0; i < rq->nfields; i++) {
        const struct http1_header *h = &rq->fields[i];
        char *name = IN_COPY(h->name);
        size_t k;
        if (skip_request_header(h))
            continue;
        for (k = 0; k < h->name_len; k++)
            name[k] = lower_ascii(name[k]);
        nv_set(&st->nv[n++], name, h->name_len, IN_COPY(h->value), h->value_len);
    }
#undef IN_COPY
    st->auth_index = (int)n;
    nv_set(&st->nv[n++], "authorization", 13, copy + rq->head_len, auth_len);
    st->nnv = n;
    return 0;
}

static ssize_t h2s_read_body(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                             uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct h2s *st = src->ptr;
    size_t n, before;
    (void)sess;
    (void)id;
    (void)ud;
    if (st == NULL || st->released)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    before = n = h2s_unsent(st);
    if (n == 0 && !st->req_end) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    if (n > 0) {
        struct evbuffer_ptr at;
        if (evbuffer_ptr_set(st->body, &at, st->body_sent, EVBUFFER_PTR_SET) < 0 ||
            evbuffer_copyout_from(st->body, &at, buf, n) != (ev_ssize_t)n)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->body_sent += n;
        if (st->replay_gone || st->body_sent > H2UP_REPLAY_MAX) {
            /* Too long to keep for a retry: what went out is let go. */
            evbuffer_drain(st->body, st->body_sent);
            st->body_sent = 0;
            st->replay_gone = 1;
        }
        h2s_send_progress(st);
        /* Room for more of the body: once it is down to the low mark the exchange reads from
         * its client again. */
        if (before > UPSTREAM_SEND_LOW && before - n <= UPSTREAM_SEND_LOW)
            h2s_tell(st, H2S_TELL_DRAINED);
    }
    if (st->req_end && h2s_unsent(st) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void h2s_submit(struct h2s *st)
{
    struct h2conn *hc = st->conn;
    nghttp2_data_provider dp;
    int32_t id;
    if (hc == NULL || hc->sess == NULL || !st->started || st->id >= 0)
        return;
    dp.source.ptr = st;
    dp.read_callback = h2s_read_body;
    st->attempts++;
    id = nghttp2_submit_request(hc->sess, NULL, st->nv, st->nnv, st->has_body ? &dp : NULL, st);
    if (id < 0) {
        log_msg(LOG_WARN, "upstream %s: cannot submit an HTTP/2 request: %s",
                target_name(hc->pool), nghttp2_strerror(id));
        h2s_unbind(st);
        h2s_fail(st, UPSTREAM_FAULT_UNREACHABLE,
                 "the upstream connection failed before the response head");
        return;
    }
    st->id = id;
    WSTAT_ADD(worker_of(hc->pool), h2_streams, 1);
}

/* More of the body, or its end: a deferred stream goes on. */
static void h2s_body_moved(struct h2s *st)
{
    if (st->deferred && st->conn != NULL && st->id >= 0 && st->conn->sess != NULL) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->conn->sess, st->id);
    }
    h2s_send_progress(st);
}

/* ---- the response: its head as fields, its body as bytes ---- */

/* Tells the exchange what it has not been told: the head, the body while it reads, the end,
 * a failure. Returns nonzero once it let go. */
static int h2s_deliver(struct h2s *st)
{
    const struct upstream_events *xev = st->xev;
    void *xarg = st->xarg;
    if ((st->tell & H2S_TELL_DRAINED) && !st->end_told) {
        st->tell &= ~(unsigned)H2S_TELL_DRAINED;
        if (xev->drained(xarg))
            return 1;
    }
    if ((st->tell & H2S_TELL_HEAD) && !st->head_told) {
        st->tell &= ~(unsigned)H2S_TELL_HEAD;
        st->head_told = 1;
        if (xev->head(xarg, &st->resp))
            return 1;
        if (http1_msg_complete(&st->resp)) {
            /* No body follows such a head (HEAD, 204, 304, or a zero length). */
            st->end_told = 1;
            return xev->end(xarg);
        }
    }
    if (st->head_told && !st->end_told) {
        size_t n = evbuffer_get_length(st->in);
        if (n > 0 && st->reading) {
            xev->body_buffer(xarg, st->in, n);
            h2s_consume(st);
            if (st->conn != NULL)
                conn_want_flush(st->conn);
        }
        if (st->resp_end && evbuffer_get_length(st->in) == 0) {
            st->end_told = 1;
            return xev->end(xarg);
        }
    }
    if (st->failed && !st->end_told) {
        if (st->fault_detail != NULL)
            return xev->fault(xarg, st->fault, st->fault_detail);
        if (st->head_told)
            return xev->fault(xarg, UPSTREAM_FAULT_BAD_RESPONSE,
                              "the upstream closed the connection mid-response");
        return xev->fault(xarg, UPSTREAM_FAULT_UNREACHABLE,
                          "the upstream connection failed before the response head");
    }
    return 0;
}

static void h2s_deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2s *st = arg;
    const struct upstream_events *xev = st->xev;
    void *xarg = st->xarg;
    (void)fd;
    (void)what;
    if (!h2s_live(st))
        return;
    stream_batch_begin();
    h2s_deliver(st);
    xev->settle(xarg);
    stream_batch_end();
}

/* The head is complete and may go to the exchange: resp is built from the fields. */
static void h2s_head_ready(struct h2s *st)
{
    size_t i;
    if (st->nfields > st->resp_cap || st->resp_fields == NULL) {
        size_t cap = st->nfields < 16 ? 16 : st->nfields;
        free(st->resp_fields);
        st->resp_cap = 0;
        st->resp_fields = malloc(cap * sizeof(*st->resp_fields));
        if (st->resp_fields == NULL) {
            h2s_fail(st, UPSTREAM_FAULT_INTERNAL, "out of memory for the response head");
            return;
        }
        st->resp_cap = cap;
    }
    for (i = 0; i < st->nfields; i++) {
        st->resp_fields[i].name = st->fbuf + st->fields[i].name;
        st->resp_fields[i].name_len = st->fields[i].name_len;
        st->resp_fields[i].value = st->fbuf + st->fields[i].value;
        st->resp_fields[i].value_len = st->fields[i].value_len;
    }
    if (http1_response_set(&st->resp, st->status, st->resp_fields, st->nfields) < 0) {
        log_msg(LOG_WARN, "upstream %s: refused HTTP/2 response head: %s",
                target_name(st->pool), st->resp.error_detail);
        h2s_fail(st, st->resp.error_status == 500 ? UPSTREAM_FAULT_INTERNAL
                                                  : UPSTREAM_FAULT_BAD_RESPONSE,
                 st->resp.error_detail);
        return;
    }
    h2s_resp_progress(st);
    h2s_tell(st, H2S_TELL_HEAD);
}

/* Response body bytes for the exchange (told from the loop). */
static void h2s_emit(struct h2s *st, const uint8_t *data, size_t len)
{
    if (st->released || len == 0)
        return;
    evbuffer_add(st->in, data, len);
    h2s_resp_progress(st);
    h2s_tell(st, 0);
}

/* The held APNs answer goes on after all: its head, then what was held of its body. */
static void h2s_release_held(struct h2s *st)
{
    st->holding = 0;
    h2s_head_ready(st);
    if (st->held != NULL) {
        evbuffer_add_buffer(st->in, st->held);
        evbuffer_free(st->held);
        st->held = NULL;
    }
}

static void h2s_finish(struct h2s *st)
{
    st->resp_end = 1;
    h2s_tell(st, 0);
}

/* Appends a response field to fbuf; 0, or -1 past the head's limits. */
static int h2s_add_field(struct h2s *st, const char *name, size_t nlen, const char *value,
                         size_t vlen)
{
    if (st->nfields >= H2UP_HEADERS_MAX || st->flen + nlen + vlen + 4 > H2UP_HEAD_MAX)
        return -1;
    if (st->nfields == st->cap_fields) {
        size_t cap = st->cap_fields ? st->cap_fields * 2 : 8;
        struct h2field *f = realloc(st->fields, cap * sizeof(*f));
        if (f == NULL)
            return -1;
        st->fields = f;
        st->cap_fields = cap;
    }
    if (st->flen + nlen + vlen > st->fcap) {
        size_t cap = st->fcap ? st->fcap * 2 : 512;
        char *b;
        while (cap < st->flen + nlen + vlen)
            cap *= 2;
        b = realloc(st->fbuf, cap);
        if (b == NULL)
            return -1;
        st->fbuf = b;
        st->fcap = cap;
    }
    st->fields[st->nfields].name = (uint32_t)st->flen;
    st->fields[st->nfields].name_len = (uint32_t)nlen;
    memcpy(st->fbuf + st->flen, name, nlen);
    st->flen += nlen;
    st->fields[st->nfields].value = (uint32_t)st->flen;
    st->fields[st->nfields].value_len = (uint32_t)vlen;
    memcpy(st->fbuf + st->flen, value, vlen);
    st->flen += vlen;
    st->nfields++;
    return 0;
}

static void h2s_clear_head(struct h2s *st)
{
    st->flen = 0;
    st->nfields = 0;
    st->has_cl = 0;
}

/* The "reason" of an APNs error body, or "" (reason must hold 64 bytes). */
static void apns_reason(struct evbuffer *body, char *reason, size_t len)
{
    size_t n = body ? evbuffer_get_length(body) : 0;
    const cJSON *r;
    cJSON *doc;
    reason[0] = '\0';
    if (n == 0)
        return;
    doc = cJSON_ParseWithLength((const char *)evbuffer_pullup(body, (ev_ssize_t)n), n);
    r = cJSON_GetObjectItemCaseSensitive(doc, "reason");
    if (cJSON_IsString(r))
        snprintf(reason, len, "%s", r->valuestring);
    cJSON_Delete(doc);
}

/* An APNs refusal read whole: 1 when the push goes again with a new token. */
static int h2s_apns_decide(struct h2s *st)
{
    struct runtime *rt = st->pool->gen->rt;
    char reason[64], err[256];
    struct token *cur;
    int retry = 0;
    apns_reason(st->held, reason, sizeof(reason));
    if (st->status == 429 && strcmp(reason, "TooManyProviderTokenUpdates") == 0) {
        unsigned long n = token_cache_team_too_many(rt->tokens, st->cred);
        WSTAT_ADD(worker_of(st->pool), apns_too_many, 1);
        log_msg(LOG_ERROR, "APNs refused the token of team %s as replaced too often "
                "(TooManyProviderTokenUpdates, %lu so far): another sender is minting tokens "
                "for this team; keeping the current token", st->cred->team_id, n);
        return 0;
    }
    if (st->status != 403 || st->token_retried || st->replay_gone || st->auth_index < 0 ||
        (strcmp(reason, "ExpiredProviderToken") != 0 && strcmp(reason, "InvalidProviderToken") != 0))
        return 0;
    cur = token_cache_get(rt->tokens, st->cred, NULL, 0, err, sizeof(err));
    if (cur == NULL)
        return 0;
    /* Only the token this push carried can be refused: "Bearer " and the token. */
    if (st->nv[st->auth_index].valuelen == cur->jwt_len + 7 &&
        memcmp(st->nv[st->auth_index].value + 7, cur->jwt, cur->jwt_len) == 0 &&
        token_cache_team_refused(rt->tokens, st->cred, cur) == 1) {
        struct token *fresh = token_cache_get(rt->tokens, st->cred, NULL, 0, err, sizeof(err));
        if (fresh != NULL) {
            size_t n = fresh->jwt_len + 8;
            char *v = malloc(n);
            if (v != NULL) {
                snprintf(v, n, "Bearer %.*s", (int)fresh->jwt_len, fresh->jwt);
                free_auth(st);
                st->auth = v;
                nv_set(&st->nv[st->auth_index], (const char *)st->nv[st->auth_index].name,
                       st->nv[st->auth_index].namelen, v, n - 1);
                retry = 1;
            }
            token_put(fresh);
        }
    }
    log_msg(LOG_WARN, "APNs answered %d %s to the token of team %s: %s", st->status, reason,
            st->cred->team_id,
            retry ? "a new token was minted; the push goes once more"
                  : "the token is under 20 minutes old, so it is kept (APNs' rule) and the "
                    "answer is passed on");
    token_put(cur);
    return retry;
}

static int is_apns(const struct h2s *st)
{
    return st->cred != NULL && profile_team_token(st->cred->profile);
}

/* The response ended (END_STREAM). */
static void h2s_end(struct h2s *st)
{
    if (st->holding) {
        st->holding = 0;
        if (h2s_apns_decide(st)) {
            struct h2conn *hc = st->conn;
            st->token_retried = 1;
            WSTAT_ADD(worker_of(hc->pool), apns_token_retries, 1);
            evbuffer_free(st->held);
            st->held = NULL;
            st->head_done = 0;
            h2s_clear_head(st);
            st->status = 0;
            st->body_sent = 0; /* the body goes again from its start */
            h2s_unbind(st);
            st->conn = hc;
            TAILQ_INSERT_TAIL(&hc->streams, st, link);
            conn_streams_add(hc, 1);
            h2s_submit(st);
            return;
        }
        h2s_release_held(st);
    }
    h2s_finish(st);
}

/* What the HTTP/1.1 parser would refuse in a field of a head (the name one or more tchar, the
 * value no control but HTAB); nghttp2 lets some of it through. */
static int field_ok(const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen)
{
    return http1_name_chars_ok((const char *)name, namelen) &&
           http1_value_chars_ok((const char *)value, valuelen);
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    struct h2s *st;
    (void)flags;
    (void)ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    st = nghttp2_session_get_stream_user_data(sess, frame->hd.stream_id);
    if (st == NULL || st->head_done)
        return 0; /* trailers, or a stream nobody waits for: dropped */
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int status = 0;
        size_t i;
        /* nghttp2 lets any three digits through; the HTTP/1.1 path's rule holds here too. */
        for (i = 0; i < valuelen && i < 3; i++)
            status = status * 10 + (value[i] - '0');
        if (valuelen != 3 || status < 100 || status > 599) {
            st->bad_status = 1;
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        st->status = status;
        h2s_clear_head(st);
        return 0;
    }
    if (namelen > 0 && name[0] == ':')
        return 0;
    if (!field_ok(name, namelen, value, valuelen)) {
        st->bad_field = 1;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (h2s_add_field(st, (const char *)name, namelen, (const char *)value, valuelen) < 0) {
        st->too_large = 1;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (namelen == 14 && memcmp(name, "content-length", 14) == 0)
        st->has_cl = 1;
    return 0;
}

static void on_response_head(struct h2s *st, int end_stream)
{
    if (st->status < 200) {
        /* 1xx: interim, not relayed (the exchange answered Expect itself). */
        h2s_clear_head(st);
        return;
    }
    /* A response that ends with its head has a length, zero (the HTTP/1.1 client is told). */
    if (!st->has_cl && end_stream && st->status != 204 && st->status != 304 &&
        h2s_add_field(st, "content-length", 14, "0", 1) < 0) {
        st->too_large = 1;
        return;
    }
    st->head_done = 1;
    /* APNs' refusals of a token are read whole before anything goes on: one may be retried. */
    if (is_apns(st) && (st->status == 403 || st->status == 429)) {
        st->holding = 1;
        st->held = evbuffer_new();
        if (st->held != NULL)
            return;
        st->holding = 0;
    }
    h2s_head_ready(st);
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *frame, void *ud)
{
    struct h2conn *hc = ud;
    struct h2s *st;
    hc->last_rx = tick_now(hc->pool);
    switch (frame->hd.type) {
    case NGHTTP2_GOAWAY:
        hc->going_away = 1;
        hc->goaway_last = frame->goaway.last_stream_id;
        hc->goaway_error = frame->goaway.error_code;
        log_msg(LOG_INFO, "upstream %s sent GOAWAY (last stream %d, error %u): no new "
                "requests on that connection", target_name(hc->pool),
                (int)frame->goaway.last_stream_id, frame->goaway.error_code);
        return 0;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK)
            hc->ping_out = 0;
        return 0;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
            hc->settings_seen = 1;
            if (hc->pool->h2 != NULL)
                hc->pool->h2->peer_streams = nghttp2_session_get_remote_settings(
                    sess, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        }
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    st = nghttp2_session_get_stream_user_data(sess, frame->hd.stream_id);
    if (st == NULL || st->released)
        return 0; /* nobody waits for it: it is freed when it closes */
    if (frame->hd.type == NGHTTP2_HEADERS && !st->head_done && st->status > 0)
        on_response_head(st, (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && st->head_done && !st->resp_end)
        h2s_end(st);
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *ud)
{
    struct h2conn *hc = ud;
    struct h2s *st = nghttp2_session_get_stream_user_data(sess, id);
    (void)flags;
    if (st == NULL || st->released) {
        nghttp2_session_consume(sess, id, len);
        return 0;
    }
    hc->last_rx = tick_now(hc->pool);
    if (st->holding) {
        nghttp2_session_consume(sess, id, len);
        evbuffer_add(st->held, data, len);
        if (evbuffer_get_length(st->held) > H2UP_HOLD_MAX)
            h2s_release_held(st);
        return 0;
    }
    st->unconsumed += len;
    h2s_emit(st, data, len);
    h2s_consume(st);
    return 0;
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t code, void *ud)
{
    struct h2conn *hc = ud;
    struct h2s *st = nghttp2_session_get_stream_user_data(sess, id);
    if (st == NULL)
        return 0;
    if (st->released) {
        h2s_unbind(st);
        h2s_free(st);
        return 0;
    }
    if (st->resp_end && !st->holding) {
        h2s_unbind(st);
        return 0;
    }
    if (!st->head_done && (code == NGHTTP2_REFUSED_STREAM || id > hc->goaway_last) &&
        h2s_retry(st))
        return 0;
    h2s_unbind(st);
    if (st->bad_field) {
        log_msg(LOG_WARN, "upstream %s sent a header field an HTTP/1.1 head could not carry: "
                "stream reset", target_name(hc->pool));
        h2s_fail(st, UPSTREAM_FAULT_BAD_RESPONSE,
                 "the upstream sent an invalid header field");
        return 0;
    }
    if (st->too_large)
        log_msg(LOG_WARN, "upstream %s: a response head over %d bytes or %d fields: stream "
                "reset", target_name(hc->pool), H2UP_HEAD_MAX, H2UP_HEADERS_MAX);
    else if (st->bad_status)
        log_msg(LOG_WARN, "upstream %s sent a :status outside 100-599: stream reset",
                target_name(hc->pool));
    else if (code != NGHTTP2_NO_ERROR)
        log_msg(LOG_WARN, "upstream %s reset an HTTP/2 stream: %s", target_name(hc->pool),
                nghttp2_http2_strerror(code));
    h2s_lost(st);
    return 0;
}

/* ---- connections ---- */

static void conn_io_cb(struct stream *s, unsigned ev, void *arg);

static struct h2pool *pool_h2(struct upool *pool)
{
    if (pool->h2 == NULL) {
        pool->h2 = calloc(1, sizeof(*pool->h2));
        if (pool->h2 != NULL)
            TAILQ_INIT(&pool->h2->conns);
    }
    return pool->h2;
}

static int conn_start_session(struct h2conn *hc)
{
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    nghttp2_settings_entry iv[3] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2UP_STREAM_WINDOW},
                                    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2UP_HEAD_MAX}};
    int rc = -1;
    if (nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0)
        goto out;
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    /* The window reopens as the exchange reads, not as bytes arrive: backpressure. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, H2UP_DEFAULT_STREAMS);
    if (nghttp2_session_client_new2(&hc->sess, cbs, hc, opt) != 0)
        goto out;
    if (nghttp2_submit_settings(hc->sess, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
        nghttp2_session_set_local_window_size(hc->sess, NGHTTP2_FLAG_NONE, 0,
                                              H2UP_CONN_WINDOW) != 0)
        goto out;
    rc = 0;
out:
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    return rc;
}

static uint32_t conn_capacity(const struct h2conn *hc)
{
    if (hc->sess == NULL || !hc->settings_seen) {
        uint32_t known = hc->pool->h2 != NULL ? hc->pool->h2->peer_streams : 0;
        return known ? known : H2UP_DEFAULT_STREAMS;
    }
    return nghttp2_session_get_remote_settings(hc->sess, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

/* Hands the exchanges that waited for this connection their upconns, or the failure. */
static void conn_ready(struct upconn *carrier, enum upstream_error err, const char *detail,
                       void *arg)
{
    struct h2conn *hc = arg;
    struct h2s *st, *next;
    if (err != UPSTREAM_OK) {
        hc->carrier = NULL;
        while ((st = TAILQ_FIRST(&hc->streams)) != NULL) {
            h2s_unbind(st);
            if (st->attached) {
                h2s_lost(st);
            } else {
                upstream_stream_ready cb = st->ready_cb;
                void *cbarg = st->arg;
                h2s_free(st);
                cb(NULL, err, detail, cbarg);
            }
        }
        TAILQ_REMOVE(&pool_h2(hc->pool)->conns, hc, link);
        WSTAT_ADD(worker_of(hc->pool), h2_connections, -1);
        if (hc->flush_ev != NULL)
            event_free(hc->flush_ev);
        free(hc);
        return;
    }
    hc->carrier = carrier;
    hc->last_rx = tick_now(hc->pool);
    stream_setcb(&carrier->s, conn_io_cb, hc);
    stream_set_timeouts(&carrier->s, 0, (uint32_t)hc->pool->gen->rt->conf->limits.send_timeout_ms);
    stream_set_reading(&carrier->s, 1);
    if (conn_start_session(hc) != 0) {
        conn_close(hc, "cannot start an HTTP/2 session");
        return;
    }
    for (st = TAILQ_FIRST(&hc->streams); st != NULL; st = next) {
        next = TAILQ_NEXT(st, link);
        h2s_submit(st);
    }
    if (conn_flush(hc) < 0)
        return;
    /* An exchange's callback may end it, or others: look again from the start each time.
     * While they run, nothing is sent and the connection cannot close (in_session); what
     * they wrote goes out after the last one. */
    hc->in_session = 1;
    for (;;) {
        for (st = TAILQ_FIRST(&hc->streams); st != NULL; st = TAILQ_NEXT(st, link))
            if (!st->attached)
                break;
        if (st == NULL)
            break;
        st->attached = 1;
        st->ready_cb(&st->us, UPSTREAM_OK, NULL, st->arg);
    }
    hc->in_session = 0;
    conn_flush(hc);
}

/* Writes what nghttp2 has to send, as far as the output's high mark. Returns -1 when that
 * ended the connection (hc is gone), else 0. Inside nghttp2's own calls it does nothing: the
 * caller that entered nghttp2 flushes when it returns. */
static int conn_flush(struct h2conn *hc)
{
    struct evbuffer *out;
    const char *failed = NULL;
    if (hc->sess == NULL || hc->carrier == NULL || hc->closing || hc->in_session)
        return 0;
    out = stream_output(&hc->carrier->s);
    hc->in_session = 1;
    while (evbuffer_get_length(out) < H2UP_OUT_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(hc->sess, &data);
        if (n < 0) {
            failed = nghttp2_strerror((int)n);
            break;
        }
        if (n == 0)
            break;
        evbuffer_add(out, data, (size_t)n);
    }
    hc->in_session = 0;
    if (failed != NULL) {
        conn_close(hc, failed);
        return -1;
    }
    stream_settle(&hc->carrier->s);
    return 0;
}

/* Ends the connection: requests it never processed go elsewhere, the rest fail. */
static void conn_close(struct h2conn *hc, const char *why)
{
    struct h2s *st;
    if (hc->closing)
        return;
    hc->closing = 1;
    if (why != NULL && hc->nstreams > 0)
        log_msg(LOG_WARN, "upstream %s: HTTP/2 connection lost with %zu exchanges on it: %s",
                target_name(hc->pool), hc->nstreams, why);
    else if (why != NULL)
        log_msg(LOG_INFO, "upstream %s: idle HTTP/2 connection closed: %s",
                target_name(hc->pool), why);
    TAILQ_REMOVE(&pool_h2(hc->pool)->conns, hc, link);
    while ((st = TAILQ_FIRST(&hc->streams)) != NULL) {
        /* Never sent: not submitted yet, above a GOAWAY's last stream, or still in nghttp2's
         * queue (bound and submitted but not open: a request's stream opens only when its
         * HEADERS go out). */
        int queued = st->id >= 0 && hc->sess != NULL &&
                     nghttp2_session_find_stream(hc->sess, st->id) == NULL;
        int unsent = st->id < 0 || st->id > hc->goaway_last || queued;
        /* A try whose HEADERS never left does not count: a burst queued behind connections
         * that die one after another goes on until one takes it (or its response timeout). */
        if (queued && st->attempts > 0)
            st->attempts--;
        if (st->released) {
            h2s_unbind(st);
            h2s_free(st);
        } else if (!(unsent && h2s_retry(st))) {
            h2s_unbind(st);
            if (st->attached)
                h2s_lost(st);
        }
    }
    if (hc->carrier != NULL) {
        if (hc->sess != NULL)
            upstream_put(hc->carrier, 0);
        else
            upstream_abort(hc->carrier); /* still opening */
    }
    if (hc->sess != NULL) {
        nghttp2_session_del(hc->sess);
        hc->sess = NULL;
    }
    WSTAT_ADD(worker_of(hc->pool), h2_connections, -1);
    if (hc->flush_ev != NULL)
        event_free(hc->flush_ev);
    free(hc);
}

/* The deferred flush: many exchanges' requests (or resets) in one loop iteration leave in one
 * write, as few TLS records as they fill, instead of one write each. */
static void conn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2conn *hc = arg;
    (void)fd;
    (void)what;
    hc->flush_pending = 0;
    if (conn_flush(hc) == 0 && !hc->closing && hc->going_away && hc->nstreams == 0)
        conn_close(hc, NULL);
}

static void conn_want_flush(struct h2conn *hc)
{
    if (hc->closing || hc->in_session)
        return;
    if (hc->flush_ev == NULL) {
        conn_flush(hc);
        return;
    }
    if (!hc->flush_pending) {
        hc->flush_pending = 1;
        event_active(hc->flush_ev, EV_TIMEOUT, 1);
    }
}

static void conn_io_cb(struct stream *s, unsigned ev, void *arg)
{
    struct h2conn *hc = arg;
    if (ev & STREAM_READ) {
        struct evbuffer *in = stream_input(s);
        while (evbuffer_get_length(in) > 0) {
            struct evbuffer_iovec v;
            ssize_t n;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            hc->in_session = 1;
            n = nghttp2_session_mem_recv(hc->sess, v.iov_base, v.iov_len);
            hc->in_session = 0;
            if (n < 0) {
                conn_close(hc, nghttp2_strerror((int)n));
                return;
            }
            evbuffer_drain(in, (size_t)n);
        }
    }
    if (ev & (STREAM_EOF | STREAM_ERROR)) {
        conn_close(hc, (ev & STREAM_ERROR) ? "connection error" : "closed by the upstream");
        return;
    }
    /* A GOAWAY with an error ends the connection now (RFC 9113 5.4.1): the streams it may
     * have processed fail at once instead of waiting for answers that will not come. */
    if (hc->goaway_error != NGHTTP2_NO_ERROR) {
        conn_close(hc, nghttp2_http2_strerror(hc->goaway_error));
        return;
    }
    if (ev & STREAM_WTIMEOUT) {
        conn_close(hc, "the upstream stopped reading");
        return;
    }
    if (conn_flush(hc) < 0)
        return;
    if (!nghttp2_session_want_read(hc->sess) && !nghttp2_session_want_write(hc->sess)) {
        conn_close(hc, "the session ended");
        return;
    }
    if (hc->going_away && hc->nstreams == 0)
        conn_close(hc, NULL);
}

/* A connection for st: one of its credential with a free stream, else a new one. */
static void h2s_bind(struct h2s *st)
{
    struct upool *pool = st->pool;
    struct h2pool *hp = pool_h2(pool);
    struct h2conn *hc, *least = NULL;
    size_t nconns = 0;
    struct upconn *carrier = NULL;
    if (hp == NULL) {
        h2s_fail(st, UPSTREAM_FAULT_INTERNAL, "out of memory");
        return;
    }
    TAILQ_FOREACH(hc, &hp->conns, link) {
        if (hc->cred != st->cred || hc->going_away || hc->closing)
            continue;
        nconns++;
        if (hc->nstreams < conn_capacity(hc))
            break;
        if (least == NULL || hc->nstreams < least->nstreams)
            least = hc;
    }
    if (hc == NULL && nconns >= H2UP_MAX_CONNS)
        hc = least;
    if (hc == NULL) {
        hc = calloc(1, sizeof(*hc));
        if (hc == NULL) {
            h2s_fail(st, UPSTREAM_FAULT_INTERNAL, "out of memory");
            return;
        }
        hc->pool = pool;
        hc->cred = st->cred;
        hc->goaway_last = INT32_MAX;
        TAILQ_INIT(&hc->streams);
        hc->flush_ev = event_new(worker_of(pool)->base, -1, 0, conn_flush_cb, hc);
        if (hc->flush_ev == NULL) {
            free(hc);
            h2s_fail(st, UPSTREAM_FAULT_INTERNAL, "out of memory");
            return;
        }
        TAILQ_INSERT_TAIL(&hp->conns, hc, link);
        WSTAT_ADD(worker_of(pool), h2_connections, 1);
        if (upstream_connect(pool, conn_ready, hc, &carrier) < 0) {
            TAILQ_REMOVE(&hp->conns, hc, link);
            WSTAT_ADD(worker_of(pool), h2_connections, -1);
            event_free(hc->flush_ev);
            free(hc);
            h2s_fail(st, UPSTREAM_FAULT_INTERNAL, "out of memory");
            return;
        }
        hc->carrier = carrier; /* opening: conn_ready reports */
    }
    st->conn = hc;
    TAILQ_INSERT_TAIL(&hc->streams, st, link);
    conn_streams_add(hc, 1);
    if (hc->sess != NULL) {
        h2s_submit(st);
        conn_want_flush(hc);
    }
}

int h2up_get(struct upool *pool, const struct credential *cred, upstream_stream_ready ready_cb,
             void *arg, struct upstream_stream **out)
{
    struct h2s *st = h2s_new(pool, cred);
    *out = NULL;
    if (st == NULL)
        return -1;
    st->ready_cb = ready_cb;
    st->arg = arg;
    h2s_bind(st);
    if (st->conn == NULL) {
        h2s_free(st);
        return -1;
    }
    *out = &st->us;
    if (st->conn->sess != NULL) {
        st->attached = 1;
        return 0;
    }
    return 1;
}

/* ---- the exchange's operations (upstream_transport.h) ---- */

static int h2s_start(struct upstream_stream *us, const struct upstream_request *rq,
                     const struct upstream_events *events, void *arg)
{
    struct h2s *st = h2s_of(us);
    if (h2s_build_nv(st, rq) < 0)
        return -1;
    st->xev = events;
    st->xarg = arg;
    st->has_body = rq->body != HTTP1_BODY_NONE;
    st->req_end = !st->has_body;
    st->started = 1;
    st->resp.request_is_head = rq->is_head; /* kept by init: a HEAD response has no body */
    http1_msg_init(&st->resp, HTTP_RESPONSE, &resp_limits);
    /* Told from the loop: what happened before the exchange was there to hear it. */
    if (st->failed)
        h2s_tell(st, 0);
    h2s_submit(st);
    if (st->conn != NULL)
        conn_want_flush(st->conn);
    return 0;
}

static void h2s_send_body(struct upstream_stream *us, const char *at, size_t len)
{
    struct h2s *st = h2s_of(us);
    evbuffer_add(st->body, at, len);
    h2s_body_moved(st);
}

static void h2s_send_body_buffer(struct upstream_stream *us, struct evbuffer *src, size_t n)
{
    struct h2s *st = h2s_of(us);
    evbuffer_remove_buffer(src, st->body, n);
    h2s_body_moved(st);
}

static void h2s_send_end(struct upstream_stream *us)
{
    struct h2s *st = h2s_of(us);
    st->req_end = 1;
    h2s_body_moved(st);
}

static size_t h2s_send_queued(struct upstream_stream *us)
{
    return h2s_unsent(h2s_of(us));
}

/* Reading back on: what arrived meanwhile goes to the exchange now, and the window reopens. */
static void h2s_set_reading(struct upstream_stream *us, int on)
{
    struct h2s *st = h2s_of(us);
    st->reading = on != 0;
    h2s_resp_progress(st);
    if (!on || !st->head_told || st->end_told)
        return;
    if (evbuffer_get_length(st->in) > 0)
        st->xev->body_buffer(st->xarg, st->in, evbuffer_get_length(st->in));
    h2s_consume(st);
    if (st->conn != NULL)
        conn_want_flush(st->conn);
    if (st->reading && st->resp_end && evbuffer_get_length(st->in) == 0) {
        st->end_told = 1;
        st->xev->end(st->xarg); /* st may be gone */
    }
}

static void h2s_set_timeouts(struct upstream_stream *us, uint32_t response_ms, uint32_t send_ms)
{
    struct h2s *st = h2s_of(us);
    st->response_ms = response_ms;
    st->send_ms = send_ms;
    h2s_resp_progress(st);
    h2s_send_progress(st);
}

/* What the exchange queued leaves with the connection's next write, after every stream's. */
static int h2s_flush(struct upstream_stream *us)
{
    struct h2s *st = h2s_of(us);
    h2s_consume(st);
    if (st->conn != NULL)
        conn_want_flush(st->conn);
    return 0;
}

/* An unfinished stream is reset; one still open in nghttp2 stays, detached, until it closes
 * (on_stream_close frees it). */
static void h2s_release(struct upstream_stream *us)
{
    struct h2s *st = h2s_of(us);
    struct h2conn *hc = st->conn;
    int open = hc != NULL && hc->sess != NULL && st->id >= 0 &&
               nghttp2_session_find_stream(hc->sess, st->id) != NULL;
    /* Submitted, bound, and not open: its HEADERS still wait in nghttp2's queue (a stream
     * opens only when they go out, and a closed one is unbound). The reset cancels them
     * there; nghttp2 then closes the stream, and on_stream_close frees it. Freed now, the
     * HEADERS would go out anyway and the body callback would read freed memory. */
    int queued = !open && hc != NULL && hc->sess != NULL && st->id >= 0;
    int keep = open; /* until on_stream_close */
    st->released = 1;
    st->xev = NULL;
    st->xarg = NULL;
    event_del(&st->deliver);
    event_del(&st->timer);
    if (open && !st->resp_end)
        nghttp2_submit_rst_stream(hc->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    else if (queued && nghttp2_submit_rst_stream(hc->sess, NGHTTP2_FLAG_NONE, st->id,
                                                 NGHTTP2_CANCEL) == 0)
        keep = 1;
    if (!keep) {
        h2s_unbind(st);
        h2s_free(st);
    } else {
        h2s_consume(st); /* what was not read is given back to the window */
    }
    if (hc != NULL)
        conn_want_flush(hc); /* the reset, and a GOAWAY'd connection's end */
}

static const struct upstream_ops h2s_ops = {
    .start = h2s_start,
    .send_body = h2s_send_body,
    .send_body_buffer = h2s_send_body_buffer,
    .send_end = h2s_send_end,
    .send_queued = h2s_send_queued,
    .set_reading = h2s_set_reading,
    .set_timeouts = h2s_set_timeouts,
    .flush = h2s_flush,
    .release = h2s_release,
};

void h2up_tick(struct upool *pool, unsigned tick)
{
    struct h2conn *hc, *next;
    if (pool->h2 == NULL)
        return;
    for (hc = TAILQ_FIRST(&pool->h2->conns); hc != NULL; hc = next) {
        next = TAILQ_NEXT(hc, link);
        if (hc->sess == NULL)
            continue;
        if (hc->ping_out && tick - hc->ping_at >= H2UP_PING_TIMEOUT) {
            conn_close(hc, "no answer to PING");
            continue;
        }
        if (hc->nstreams == 0 && pool->gen->worker->draining) {
            nghttp2_session_terminate_session(hc->sess, NGHTTP2_NO_ERROR);
            if (conn_flush(hc) == 0)
                conn_close(hc, NULL);
            continue;
        }
        /* Apple asks providers to keep connections open; a PING now and then tells a dead one
         * from an idle one before a push finds out. */
        if (hc->nstreams == 0 && !hc->ping_out && tick - hc->last_rx >= H2UP_PING_IDLE) {
            if (nghttp2_submit_ping(hc->sess, NGHTTP2_FLAG_NONE, NULL) == 0) {
                hc->ping_out = 1;
                hc->ping_at = tick;
                hc->last_rx = tick;
                conn_flush(hc);
            }
        }
    }
}

void h2up_pool_free(struct upool *pool)
{
    struct h2conn *hc;
    if (pool->h2 == NULL)
        return;
    while ((hc = TAILQ_FIRST(&pool->h2->conns)) != NULL)
        conn_close(hc, NULL);
    free(pool->h2);
    pool->h2 = NULL;
}
