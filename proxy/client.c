/* client: one client connection and the exchange it is in.
 *
 * The connection (enum client_state, c->state):
 *
 *   accept (header timeout armed)
 *     |
 *     v          head parsed, checked, routed                 upstream ready: head + token sent
 *   HEAD -----------------------------------> CONNECTING -------------------------------> EXCHANGE
 *    ^ |  (bad head: 4xx; header timeout:       |  waits, body unread, for:                  |
 *    | |   408; browser rule, gateway,          |  - the client's rate decision on Redis     |
 *    | |   rate: 4xx/503)                       |    (rate_ask -> rate_decided)              |
 *    | |                                        |  - an access token, as TOKEN_WAIT          |
 *    | | CONNECT to an intercepted upstream:    |    (wait_for_token -> client_tokens_ready; |
 *    | | 200, TLS inside, back to HEAD          |    token_wait_timeout 503, failure 502)    |
 *    | +-----+                                  |  - an upstream stream: a pooled or new     |
 *    |       |                                  |    connection, or an HTTP/2 stream         |
 *    |       |                                  |    (acquire_upstream -> up_ready)          |
 *    |       |      retries: a stale pooled connection (up_fault UNANSWERED, once), a 401   |
 *    |       |      to a cached token (up_end after DISCARD, once): EXCHANGE -> CONNECTING
 *    |       |      (TOKEN_WAIT when the access token is to be exchanged again)              |
 *    |       v                                  v                                            |
 *    |    CLOSING <--- error, no keep-alive --- (any) <--- upstream error / cut short -------+
 *    |  (flush, half-close, linger, free)                                                    |
 *    |                                                                                       |
 *   IDLE <--------------- response complete, keep-alive (or an error reply that keeps it) --+
 *     (first byte: HEAD; idle timeout: close)
 *
 * The exchange inside EXCHANGE has two states of its own, one per direction, each changed only
 * by its setter (req_set, resp_set), which asserts the edge:
 *
 *   request   HEAD --head sent--> BODY --body sent--> DONE       BODY --refused, cut--> FAILED
 *             HEAD --head sent, no body--> DONE
 *   response  HEAD --head relayed--> BODY --end--> DONE           BODY --cut short--> FAILED
 *             HEAD --401 to a cached token--> DISCARD --read whole, retry--> HEAD
 *
 * CONNECTING also covers the wait for a client's rate decision from Redis (rate_ask, with
 * shared_state): the head is planned and drained, the body waits unread.
 *
 * The upstream side is an upstream stream (upstream_transport.h): a pooled HTTP/1.1 connection
 * (h1up.c) or a stream of a shared HTTP/2 connection (h2up.c), reached only through its
 * operations. Its events drive the response state: up_head (HEAD -> BODY, or DISCARD), the
 * body events, up_end (-> DONE, and the connection to IDLE or CLOSING), up_fault (-> FAILED
 * once the head went out, else the proxy's answer, or a retry). The stream belongs to the
 * client only for the length of one exchange.
 *
 * One exchange at a time: pipelined requests wait in the input buffer until the response
 * before them is complete.
 * Objects are never freed inside a callback's call chain: functions set `dead`, and each
 * top-level callback frees the client as its last step.
 */
#include "proxy/evbuf.h"
#include "proxy/client.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "proxy/accesslog.h"
#include "proxy/browser.h"
#include "proxy/gateway.h"
#include "proxy/http1.h"
#include "proxy/http_error.h"
#include "proxy/intercept.h"
#include "proxy/linkrw.h"
#include "proxy/log.h"
#include "proxy/request.h"
#include "proxy/response.h"
#include "proxy/shared.h"
#include "proxy/stream.h"
#include "proxy/token_exchange.h"
#include "proxy/upstream.h"

/* Backpressure: stop reading one side when the other side's output holds this much, resume
 * when it has drained to the low mark (libevent's le-proxy pattern). */
#define OUT_HIGH (256 * 1024)
#define OUT_LOW (64 * 1024)
#define LINGER_MS 2000

/* C_TOKEN_WAIT: like C_CONNECTING (the head is planned and drained, the body waits unread),
 * waiting for an access token from the exchanger (wait_for_token), with the alarm armed at
 * token_wait_timeout. */
enum client_state { C_IDLE, C_HEAD, C_CONNECTING, C_TOKEN_WAIT, C_EXCHANGE, C_CLOSING };

/* The request's progress towards the upstream.
 *   HEAD    not sent yet: being read, checked, or waiting for a token or a connection
 *   BODY    the head went up; the body follows as the client sends it
 *   DONE    all of it went up (a retry sends it again without leaving DONE or BODY)
 *   FAILED  the client's body was refused or cut short: the connection ends */
enum req_state { REQ_HEAD, REQ_BODY, REQ_DONE, REQ_FAILED };

/* The response's progress towards the client.
 *   HEAD     waiting for the upstream's head (interim 1xx heads are dropped here)
 *   DISCARD  a 401 to a cached token is read and dropped: the request goes again with a
 *            fresh token, back to HEAD
 *   BODY     the head went to the client; the body follows
 *   DONE     the response is complete
 *   FAILED   cut short after its head went out: only closing the connection says so */
enum resp_state { RESP_HEAD, RESP_DISCARD, RESP_BODY, RESP_DONE, RESP_FAILED };

/* What one request/response exchange needs. A connection holds one from the first byte of a
 * request head until it is idle again with nothing buffered; an idle keep-alive connection
 * holds none (struct exchange is most of the memory a busy connection uses). Spares are kept
 * per worker with their header arrays, so steady traffic allocates nothing here. */
struct exchange {
    struct http1_msg req;
    size_t route;
    struct token *tok;
    const char *const *scope;   /* the token's scope: the client's or the route's (owned by the
                                   runtime, held through gen for the exchange) */
    size_t nscope;
    char *up_head; /* the re-serialised head without the token line and the final CRLF */
    size_t up_head_len;
    uint64_t req_remaining;  /* Content-Length bodies: bytes still to forward */
    uint64_t req_consumed;   /* bytes after the head the request parser has taken from the
                                client's input (data and chunk framing): what an upstream
                                connection has been given of the body */
    struct upstream_request up_req; /* what the upstream stream is given (spans into up_head) */
    unsigned char req_state;    /* enum req_state: changed only by req_set */
    unsigned char resp_state;   /* enum resp_state: changed only by resp_set */
    unsigned retried : 1;       /* the stale pooled connection retry was used */
    unsigned token_retried : 1; /* the 401 re-mint retry was used */
    unsigned close_after : 1;
    unsigned chunked_out : 1;   /* the response is re-chunked to the client */
    unsigned is_head : 1;
    unsigned idempotent : 1;
    unsigned http10 : 1;
    unsigned keep_alive : 1;
    /* The exchange's record, for the access log and the metrics. */
    int status;                 /* sent to the client */
    int label;                  /* metrics route label (0: none) */
    int up_reused;              /* -1: no upstream connection was used */
    const char *err_code;
    const char *outcome;
    uint64_t t_start_us;
    uint64_t t_sent_us;         /* the request head went to the upstream (0: not yet) */
    uint64_t t_head_us;         /* Apple's final response head arrived */
    uint64_t t_first_us;        /* the response head went to the client */
    int client_label;           /* metrics label of the gateway client (0: none) */
    double t_start;
    uint64_t bytes_out;
    char method[8];             /* for the metrics: "other" when longer */
    size_t method_len;
    char *log_line;             /* method, '\0', target: copied when the access log is on */
    size_t log_method_len, log_target_len;
    const char *client_name;    /* the gateway client (owned by the configuration) */
    char apns_id[40];           /* APNs' apns-id of the answer, for the access log ("": none) */
    char *origin;               /* "http://HOST" the client addressed, on rewrite_links routes */
    char *origin_pending;       /* the same while the request is being checked */
    struct linkrw *rw;          /* the response's link rewriter, when one applies */
    /* CONNECTING: the client's rate decision asked of Redis (proxy/shared.h), for the client
     * rate_client; rate_keep: the connection stays open after a refusal. */
    struct shared_wait *rate_wait;
    const struct conf_client *rate_client;
    unsigned rate_keep : 1;
    struct exchange *next_spare;
};

#define SPARE_EXCHANGES 64
/* Header arrays larger than this are not kept with a spare exchange (a hostile head may have
 * grown one to max_headers). */
#define SPARE_HEADER_CAP 64

struct client {
    struct stream s;
    struct wclient wc;          /* in the worker's list (worker.c keeps it) */
    struct worker *w;
    struct wgen *gen;           /* held for the exchange */
    struct exchange *x;         /* NULL only while idle with nothing buffered */
    struct upstream_stream *up; /* the upstream stream (upstream_transport.h), held from the
                                   request to its response's end */
    char *tls_subject;          /* a verified client certificate's subject (TLS listeners) */
    char *tunnel_host;          /* an intercepted CONNECT's host: requests inside go there */
    char *tunnel_client;        /* the gateway client the CONNECT identified (NULL: none) */
    int tunnel_port;
    unsigned up_gen;            /* counts upstream streams attached (see up_let_go) */
    unsigned char state;        /* enum client_state */
    unsigned short listener;    /* index in the configuration's listen list (at most 64) */
    unsigned dead : 1;
    unsigned client_eof : 1;
    unsigned read_paused : 1;   /* client reading stopped for backpressure */
    unsigned up_paused : 1;     /* upstream reading stopped for backpressure */
    unsigned tls : 1;           /* the connection is HTTPS */
    unsigned lingering : 1;     /* closing: flushed and half-closed */
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer_addr; /* for allow_cidrs and logs (a sockaddr_storage would cost 100 bytes) */
};

/* The only writers of the exchange's two states (besides exchange_states_begin): an edge that
 * is not in these tables is a bug in the caller and fails here in debug builds. */
static void req_set(struct exchange *x, enum req_state to)
{
    enum req_state from = (enum req_state)x->req_state;
    (void)from;
    assert((from == REQ_HEAD && (to == REQ_BODY || to == REQ_DONE)) ||
           (from == REQ_BODY && (to == REQ_DONE || to == REQ_FAILED)));
    x->req_state = (unsigned char)to;
}

static void resp_set(struct exchange *x, enum resp_state to)
{
    enum resp_state from = (enum resp_state)x->resp_state;
    (void)from;
    assert((from == RESP_HEAD && (to == RESP_DISCARD || to == RESP_BODY)) ||
           (from == RESP_DISCARD && to == RESP_HEAD) ||
           (from == RESP_BODY && (to == RESP_DONE || to == RESP_FAILED)));
    x->resp_state = (unsigned char)to;
}

/* The one way c->state changes; asserts the edge is one the diagram above draws. Entering
 * CONNECTING again covers the rate decision before the upstream is asked for, and the retries
 * (EXCHANGE -> CONNECTING); TOKEN_WAIT is entered from CONNECTING, or from EXCHANGE when a 401
 * dropped the token the exchange used. */
static void client_set_state(struct client *c, enum client_state to)
{
    enum client_state from = c->state;
    (void)from;
    assert((to == C_HEAD && (from == C_IDLE || from == C_CONNECTING)) ||
           (to == C_CONNECTING && (from == C_HEAD || from == C_CONNECTING || from == C_TOKEN_WAIT ||
                                   from == C_EXCHANGE)) ||
           (to == C_TOKEN_WAIT && (from == C_CONNECTING || from == C_EXCHANGE)) ||
           (to == C_EXCHANGE && from == C_CONNECTING) ||
           (to == C_IDLE && (from == C_CONNECTING || from == C_TOKEN_WAIT || from == C_EXCHANGE)) ||
           (to == C_CLOSING && from != C_CLOSING));
    c->state = to;
}

/* A new request head was parsed: both directions start over. */
static void exchange_states_begin(struct exchange *x)
{
    x->req_state = REQ_HEAD;
    x->resp_state = RESP_HEAD;
}

/* The response's head has gone to the client (what follows can only be cut short). */
static int resp_head_sent(const struct exchange *x)
{
    return x->resp_state == RESP_BODY || x->resp_state == RESP_FAILED;
}

static struct client *client_of(struct wclient *wc)
{
    return (struct client *)(void *)((char *)wc - offsetof(struct client, wc));
}

static const struct conf_limits *limits(const struct client *c)
{
    return &c->w->gen->rt->conf->limits;
}

/* The loop's clocks (stream.h): one reading per wake-up. */
#define mono_us stream_now_us
#define now_real stream_wall_now

/* "ip:port" or "[v6]:port" of the client, for logs (formatted only when something is said). */
static const char *peer(const struct client *c)
{
    static __thread char buf[64];
    char ip[INET6_ADDRSTRLEN];
    if (c->peer_addr.sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &c->peer_addr.in4.sin_addr, ip, sizeof(ip));
        snprintf(buf, sizeof(buf), "%s:%d", ip, ntohs(c->peer_addr.in4.sin_port));
    } else if (c->peer_addr.sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &c->peer_addr.in6.sin6_addr, ip, sizeof(ip));
        snprintf(buf, sizeof(buf), "[%s]:%d", ip, ntohs(c->peer_addr.in6.sin6_port));
    } else {
        snprintf(buf, sizeof(buf), "-");
    }
    return buf;
}

/* The metrics beyond the request count: Apple's latency (only for an answer of Apple's that
 * reached the client, never for the proxy's own refusals), the gateway client, in-flight. */
static void exchange_count(struct worker *w, const struct exchange *x)
{
    WSTAT_ADD(w, requests_in_flight, -1);
    metrics_count_client(&w->metrics, x->client_label, x->status);
    if (x->t_first_us && x->t_head_us >= x->t_sent_us && x->t_sent_us && x->err_code == NULL)
        metrics_count_apple(&w->metrics, x->label, x->status, x->t_head_us - x->t_sent_us,
                            x->t_first_us - x->t_start_us);
}

/* Whether the exchange's record is open: a request head was parsed (exchange_begin moves the
 * connection to CONNECTING) and the connection has not left CONNECTING, TOKEN_WAIT or EXCHANGE
 * since. Every path out of them writes the record first (end_exchange_objects) or frees the
 * client (client_free writes it). */
static int record_open(const struct client *c)
{
    return c->x != NULL &&
           (c->state == C_CONNECTING || c->state == C_TOKEN_WAIT || c->state == C_EXCHANGE);
}

/* Writes the exchange's record (once): metrics always, the access log when it is on. */
static void exchange_end(struct client *c, const char *outcome)
{
    struct worker *w = c->w;
    struct exchange *x = c->x;
    uint64_t dur;
    if (!record_open(c))
        return;
    dur = mono_us() - x->t_start_us;
    metrics_count_request(&w->metrics, x->label, x->method, x->method_len, x->status, dur);
    exchange_count(w, x);
    if (accesslog_enabled() && w->alog) {
        struct access_entry e;
        const struct runtime *rt = c->gen ? c->gen->rt : NULL;
        const struct conf_route *route = rt && x->label ? &rt->conf->routes[x->route] : NULL;
        memset(&e, 0, sizeof(e));
        e.time = x->t_start;
        e.remote = peer(c);
        e.client = x->client_name;
        e.method = x->log_line;
        e.method_len = x->log_method_len;
        e.target = x->log_line ? x->log_line + x->log_method_len + 1 : NULL;
        e.target_len = x->log_target_len;
        e.route = route ? metrics_label_name(x->label) : NULL;
        e.credential = route ? route->credential : NULL;
        e.status = x->status;
        e.error = x->err_code;
        e.outcome = x->outcome ? x->outcome : outcome;
        e.bytes_in = x->req.body_seen;
        e.bytes_out = x->bytes_out;
        e.duration = (double)dur / 1e6;
        e.upstream_reused = x->up_reused;
        e.apns_id = x->apns_id[0] ? x->apns_id : NULL;
        e.quota_remaining = -1;
        if (route) {
            struct live_quota q;
            live_cred_read(rt->live_creds[route->credential_index], &q);
            e.quota_remaining = q.remaining;
        }
        accesslog_append(w->alog, &e);
        if (evbuffer_get_length(w->alog) >= 64 * 1024) {
            accesslog_flush(w->alog);
            stream_clock_forget(); /* the write may have waited for the lock or the disk */
        }
    }
    free(x->log_line);
    x->log_line = NULL;
}

static void arm_timer(struct client *c, long ms)
{
    stream_set_alarm(&c->s, (uint32_t)ms);
}

/* A zeroed exchange, from the worker's spares when there are any (their header arrays kept). */
static struct exchange *exchange_get(struct worker *w)
{
    struct exchange *x = w->spare_exchanges;
    struct http1_header *rqh = NULL;
    size_t rqc = 0;
    if (x) {
        w->spare_exchanges = x->next_spare;
        w->nspare_exchanges--;
        rqh = x->req.headers;
        rqc = x->req.cap_headers;
    } else {
        x = malloc(sizeof(*x));
        if (x == NULL)
            return NULL;
    }
    memset(x, 0, sizeof(*x));
    x->req.headers = rqh;
    x->req.cap_headers = rqc;
    http1_msg_init(&x->req, HTTP_REQUEST, &w->gen->req_limits);
    return x;
}

/* Frees what the exchange owns and keeps it as a spare (or frees it). */
static void exchange_put(struct worker *w, struct exchange *x)
{
    shared_wait_cancel(x->rate_wait);
    x->rate_wait = NULL;
    free(x->up_head);
    free(x->origin);
    free(x->origin_pending);
    free(x->rw);
    free(x->log_line);
    if (x->tok)
        token_put(x->tok);
    if (x->req.cap_headers > SPARE_HEADER_CAP)
        http1_msg_deinit(&x->req);
    if (w->nspare_exchanges < SPARE_EXCHANGES) {
        x->next_spare = w->spare_exchanges;
        w->spare_exchanges = x;
        w->nspare_exchanges++;
        return;
    }
    http1_msg_deinit(&x->req);
    free(x);
}

/* Frees the worker's spare per-request state (after every client is freed). */
static void client_worker_cleanup(struct worker *w)
{
    struct exchange *x;
    while ((x = w->spare_exchanges) != NULL) {
        w->spare_exchanges = x->next_spare;
        http1_msg_deinit(&x->req);
        free(x);
    }
    w->nspare_exchanges = 0;
}

/* Gives the upstream stream back (upstream_transport.h: kept after a clean end, else
 * aborted). */
static void up_release(struct client *c)
{
    if (c->up) {
        c->up->ops->release(c->up);
        c->up = NULL;
    }
}

static void client_free(struct client *c)
{
    struct worker *w = c->w;
    exchange_end(c, "client_abort"); /* x->outcome says "upstream_cut" when that was the cause */
    up_release(c);
    if (c->x)
        exchange_put(w, c->x);
    if (c->gen)
        wgen_unref(c->gen);
    free(c->tls_subject);
    free(c->tunnel_host);
    free(c->tunnel_client);
    stream_close(&c->s);
    worker_client_remove(w, &c->wc);
    free(c);
}

static void end_exchange_objects(struct client *c)
{
    struct exchange *x = c->x;
    /* The exchange ended normally (a whole response, or the proxy's own reply): whatever the
     * client did after sending its request (a half-close) did not cut it short. */
    x->outcome = NULL;
    exchange_end(c, "ok");
    shared_wait_cancel(x->rate_wait);
    x->rate_wait = NULL;
    free(x->origin);
    x->origin = NULL;
    free(x->origin_pending);
    x->origin_pending = NULL;
    free(x->rw);
    x->rw = NULL;
    if (x->tok) {
        token_put(x->tok);
        x->tok = NULL;
    }
    free(x->up_head);
    x->up_head = NULL;
    memset(&x->up_req, 0, sizeof(x->up_req));
    if (c->gen) {
        wgen_unref(c->gen);
        c->gen = NULL;
    }
}

/* Everything queued for the client is written: half-close and linger (plain TCP), or end the
 * TLS connection. */
static void closing_flushed(struct client *c)
{
    if (c->lingering)
        return;
    if (c->tls) {
        c->dead = 1;
        return;
    }
    c->lingering = 1;
    stream_shutdown_write(&c->s);
    arm_timer(c, LINGER_MS);
}

/* Flush what is queued, half-close, read and discard what the client still sends for a short
 * while, then free: closing with unread input would reset the connection and could destroy
 * the error response on its way to the client. */
static void start_closing(struct client *c)
{
    if (c->state == C_CLOSING)
        return;
    up_release(c);
    end_exchange_objects(c); /* before leaving the state that keeps the record open */
    client_set_state(c, C_CLOSING);
    stream_set_watermarks(&c->s, 0, 0);
    /* A client that never reads its reply must not keep the connection forever. */
    stream_set_timeouts(&c->s, 0, (uint32_t)limits(c)->send_timeout_ms);
    stream_set_alarm(&c->s, 0);
    stream_set_reading(&c->s, 1);
    c->read_paused = 0;
    if (stream_output_length(&c->s) == 0)
        closing_flushed(c);
}

static const char *code_for_status(int status)
{
    switch (status) {
    case 408: return proxy_err_request_timeout;
    case 413: return proxy_err_body_too_large;
    case 414: return proxy_err_uri_too_long;
    case 417: return proxy_err_expectation;
    case 431: return proxy_err_headers_too_large;
    case 501: return proxy_err_not_implemented;
    case 505: return proxy_err_http_version;
    case 500: return proxy_err_internal;
    default: return proxy_err_bad_request;
    }
}

static void reply_error_ex(struct client *c, const char *code, const char *detail, int keep,
                           const char *extra);

/* A response made by the proxy. keep: the connection stays usable (the request was read whole
 * and no response has started); otherwise it closes after the reply. */
static void reply_error(struct client *c, const char *code, const char *detail, int keep)
{
    reply_error_ex(c, code, detail, keep, NULL);
}

static void reply_error_ex(struct client *c, const char *code, const char *detail, int keep,
                           const char *extra)
{
    int status = http_error_status(code);
    WSTAT_ADD(c->w, proxy_errors, 1);
    metrics_count_error(&c->w->metrics, code);
    if (resp_head_sent(c->x)) {
        /* A response is already on its way: the only honest signal left is to cut it short. */
        if (c->x->resp_state == RESP_BODY)
            resp_set(c->x, RESP_FAILED);
        c->dead = 1;
        return;
    }
    keep = keep && c->x->keep_alive && !c->client_eof && !c->w->draining;
    {
        char reply[HTTP_ERROR_MAX];
        size_t n = http_error_format(reply, status, code, detail, !keep, extra);
        evbuffer_add(stream_output(&c->s), reply, n);
        c->x->bytes_out += n;
    }
    c->x->status = status;
    c->x->err_code = code;
    if (status >= 500)
        log_msg(LOG_WARN, "client %s: %d %s: %s", peer(c), status, code, detail ? detail : "");
    else
        log_msg(LOG_DEBUG, "client %s: %d %s: %s", peer(c), status, code, detail ? detail : "");
    if (!keep) {
        start_closing(c);
        return;
    }
    /* The request was consumed whole: go back to idle for the next one. */
    up_release(c);
    end_exchange_objects(c);
    client_set_state(c, C_IDLE);
    arm_timer(c, limits(c)->idle_timeout_ms);
}

static void process(struct client *c);
static void feed_body(struct client *c);

/* ---- the request body, forwarded upstream ---- */

static int req_data(void *arg, const char *at, size_t len)
{
    struct client *c = arg;
    unsigned long long max = limits(c)->max_body;
    if (max && c->x->req.body_seen > max) {
        c->x->req.error_status = 413;
        c->x->req.error_detail = "the request body is larger than max_body_bytes";
        return -1;
    }
    c->up->ops->send_body(c->up, at, len);
    return 0;
}

static int req_chunk(void *arg, uint64_t size)
{
    struct client *c = arg;
    unsigned long long max = limits(c)->max_body;
    if (max && (size > max || c->x->req.body_seen + size > max)) {
        /* Refused before any of the chunk goes upstream. */
        c->x->req.error_status = 413;
        c->x->req.error_detail = "the request body is larger than max_body_bytes";
        return -1;
    }
    return 0;
}

/* The body goes upstream without the client's chunk framing: the transport frames it its own
 * way (trailers are dropped). */
static const struct http1_sink req_sink = {req_data, req_chunk, NULL};

/* ---- the response, forwarded to the client ---- */

static void emit_client(void *arg, const char *at, size_t len)
{
    struct client *c = arg;
    struct evbuffer *out = stream_output(&c->s);
    if (len == 0)
        return;
    c->x->bytes_out += len;
    if (c->x->chunked_out) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, at, len);
        ADD_LITERAL(out, "\r\n");
    } else {
        evbuffer_add(out, at, len);
    }
}

/* Backpressure: the upstream stream stops delivering while the client's output is full. */
static void pause_upstream_if_full(struct client *c)
{
    if (c->up && !c->up_paused && stream_output_length(&c->s) >= OUT_HIGH) {
        c->up->ops->set_reading(c->up, 0);
        c->up_paused = 1;
    }
}

static void resp_bytes(struct client *c, const char *at, size_t len)
{
    if (c->x->resp_state == RESP_DISCARD)
        return;
    if (c->x->rw)
        linkrw_feed(c->x->rw, at, len, emit_client, c);
    else
        emit_client(c, at, len);
}

/* upstream_events: response body bytes. */
static void up_body(void *arg, const char *at, size_t len)
{
    struct client *c = arg;
    resp_bytes(c, at, len);
    pause_upstream_if_full(c);
}

/* upstream_events: n body bytes at the front of src, moved across without copying when they
 * go to the client as they are. */
static void up_body_buffer(void *arg, struct evbuffer *src, size_t n)
{
    struct client *c = arg;
    if (c->x->resp_state == RESP_DISCARD) {
        evbuffer_drain(src, n);
    } else if (c->x->rw || c->x->chunked_out) {
        while (n > 0) {
            struct evbuffer_iovec v;
            size_t k;
            if (evbuffer_peek(src, -1, NULL, &v, 1) < 1)
                break;
            k = v.iov_len < n ? v.iov_len : n;
            resp_bytes(c, v.iov_base, k);
            evbuffer_drain(src, k);
            n -= k;
        }
    } else {
        evbuffer_remove_buffer(src, stream_output(&c->s), n);
        c->x->bytes_out += n;
    }
    pause_upstream_if_full(c);
}

/* App Store Connect: "X-Rate-Limit: user-hour-lim:3600;user-hour-rem:3599;" on every
 * response; the latest figures are kept per credential (metrics, access log, quota reserve). */
static void note_rate_limit(struct client *c, const struct http1_msg *r)
{
    const struct http1_header *h = http1_find(r, "x-rate-limit");
    long lim = -1, rem = -1;
    size_t i = 0;
    if (h == NULL)
        return;
    while (i < h->value_len) {
        size_t start = i;
        while (i < h->value_len && h->value[i] != ';')
            i++;
        const char *item = h->value + start;
        size_t n = i - start;
        while (n && (*item == ' ' || *item == '\t')) {
            item++;
            n--;
        }
        long *dst = NULL;
        size_t kl = 0;
        if (n > 14 && strncasecmp(item, "user-hour-lim:", 14) == 0) {
            dst = &lim;
            kl = 14;
        } else if (n > 14 && strncasecmp(item, "user-hour-rem:", 14) == 0) {
            dst = &rem;
            kl = 14;
        }
        if (dst) {
            long v = 0;
            size_t k;
            for (k = kl; k < n && item[k] >= '0' && item[k] <= '9' && v < 1000000000L; k++)
                v = v * 10 + (item[k] - '0');
            if (k > kl)
                *dst = v;
        }
        i++;
    }
    if (rem >= 0) {
        const struct runtime *rt = c->gen->rt;
        size_t ci = rt->conf->routes[c->x->route].credential_index;
        double now = now_real();
        live_quota_note(rt->live_creds[ci], lim, rem, now);
        shared_note_quota(c->w->shared, rt->conf->credentials[ci].name, lim, rem, now);
    }
}

/* On rewrite_links routes, a JSON body without content coding gets its links rewritten (its
 * length changes, so it goes out chunked). */
static void start_rewriting(struct client *c, const struct http1_msg *r)
{
    const struct target *t = &c->gen->rt->targets[c->gen->rt->route_target[c->x->route]];
    char from[LINKRW_MAX_ORIGIN + 16];
    if (!response_rewrites(r, c->x->origin != NULL))
        return;
    snprintf(from, sizeof(from), "https://%s", t->host_header);
    c->x->rw = malloc(sizeof(*c->x->rw));
    if (c->x->rw && linkrw_init(c->x->rw, from, c->x->origin) < 0) {
        free(c->x->rw);
        c->x->rw = NULL;
    }
}

/* A head assembled in place: one contiguous reservation in the output, filled with memcpy. */
struct head_writer {
    char *p, *start;
};

static void hw_put(struct head_writer *hw, const char *s, size_t n)
{
    memcpy(hw->p, s, n);
    hw->p += n;
}

#define HW_LITERAL(hw, s) hw_put((hw), "" s, sizeof(s) - 1)

static void hw_uint(struct head_writer *hw, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *hw->p++ = tmp[--n];
}

static void write_response_head(struct client *c, const struct http1_msg *r)
{
    struct evbuffer *out = stream_output(&c->s);
    struct exchange *x = c->x;
    struct response_plan plan;
    size_t i, bound;
    start_rewriting(c, r);
    const struct response_facts facts = {
        .is_head = x->is_head,
        .http10 = x->http10,
        .keep_alive = x->keep_alive,
        .req_done = x->req_state == REQ_DONE,
        .client_eof = c->client_eof,
        .draining = c->w->draining,
        .has_origin = x->origin != NULL,
        .rewriting = x->rw != NULL,
    };
    response_plan(r, &facts, &plan);
    /* The bound covers every line added below (status line, the copied headers, framing,
     * Connection, the final CRLF). */
    bound = 16 + plan.reason_len + 128;
    for (i = 0; i < r->nheaders; i++)
        bound += r->headers[i].name_len + r->headers[i].value_len + 4;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)bound, &v, 1) < 1 || v.iov_len < bound) {
        c->dead = 1; /* out of memory */
        return;
    }
    struct head_writer hw = {v.iov_base, v.iov_base};
    HW_LITERAL(&hw, "HTTP/1.1 ");
    hw_uint(&hw, (uint64_t)plan.status);
    HW_LITERAL(&hw, " ");
    hw_put(&hw, plan.reason, plan.reason_len);
    HW_LITERAL(&hw, "\r\n");
    for (i = 0; i < r->nheaders; i++) {
        const struct http1_header *h = &r->headers[i];
        if (!response_header_goes(&plan, r, i))
            continue;
        hw_put(&hw, h->name, h->name_len);
        HW_LITERAL(&hw, ": ");
        hw_put(&hw, h->value, h->value_len);
        HW_LITERAL(&hw, "\r\n");
    }
    x->chunked_out = 0;
    switch (plan.framing) {
    case RESPONSE_FRAME_NONE:
    case RESPONSE_FRAME_UPSTREAM: /* the upstream's Content-Length was copied above */
    case RESPONSE_FRAME_CLOSE:
        break;
    case RESPONSE_FRAME_EMPTY:
        HW_LITERAL(&hw, "Content-Length: 0\r\n");
        break;
    case RESPONSE_FRAME_LENGTH:
        HW_LITERAL(&hw, "Content-Length: ");
        hw_uint(&hw, plan.content_length);
        HW_LITERAL(&hw, "\r\n");
        break;
    case RESPONSE_FRAME_HEAD_CHUNKED:
        HW_LITERAL(&hw, "Transfer-Encoding: chunked\r\n");
        break;
    case RESPONSE_FRAME_CHUNKED:
        HW_LITERAL(&hw, "Transfer-Encoding: chunked\r\n");
        x->chunked_out = 1;
        break;
    }
    /* A close decided earlier in the exchange stands. */
    x->close_after = x->close_after || plan.close_after;
    if (x->close_after) {
        HW_LITERAL(&hw, "Connection: close\r\n");
    } else if (plan.connection) {
        HW_LITERAL(&hw, "Connection: ");
        hw_put(&hw, plan.connection, strlen(plan.connection));
        HW_LITERAL(&hw, "\r\n");
    }
    HW_LITERAL(&hw, "\r\n");
    v.iov_len = (size_t)(hw.p - hw.start);
    evbuffer_commit_space(out, &v, 1);
    resp_set(x, RESP_BODY);
    x->t_first_us = mono_us();
    x->status = r->status;
    x->bytes_out += v.iov_len;
}

static void attach_upstream(struct client *c);
static void acquire_upstream(struct client *c);

static void finish_exchange(struct client *c)
{
    resp_set(c->x, RESP_DONE);
    end_exchange_objects(c);
    if (c->x->close_after || c->x->req_state != REQ_DONE || c->client_eof || c->w->draining) {
        start_closing(c);
        return;
    }
    client_set_state(c, C_IDLE);
    arm_timer(c, limits(c)->idle_timeout_ms);
    if (c->read_paused) {
        c->read_paused = 0;
        stream_set_reading(&c->s, 1);
    }
    /* A pipelined request may already be waiting. */
    if (stream_input_length(&c->s) > 0)
        process(c);
}

/* ---- waiting for an access token (maps, apple-business: token_exchange.h) ---- */

static void settle(struct client *c);

/* The credential's last exchange failed and its next attempt is still ahead: the request gets
 * that failure now, in Apple's error shape, instead of waiting for nothing. Returns 1 when it
 * answered. */
static int token_wait_failed(struct client *c)
{
    struct runtime *rt = c->gen->rt;
    size_t ci = rt->conf->routes[c->x->route].credential_index;
    char reason[256], detail[400], extra[64];
    const char *code = NULL;
    long long retry_at = 0, now = (long long)(now_real() * 1000);
    if (!runtime_exchange_failing(rt, ci, reason, sizeof(reason), &code, &retry_at) ||
        retry_at <= now)
        return 0;
    stream_set_alarm(&c->s, 0);
    snprintf(detail, sizeof(detail), "credential %s: the access-token exchange failed: %s",
             rt->conf->credentials[ci].name, reason);
    snprintf(extra, sizeof(extra), "Retry-After: %lld\r\n", (retry_at - now + 999) / 1000);
    reply_error_ex(c, code ? code : proxy_err_token_exchange, detail,
                   c->x->req.body == HTTP1_BODY_NONE, extra);
    return 1;
}

/* No access token yet for the route's exchanged credential: the request waits, its body
 * unread, until the exchanger installs a token (client_tokens_ready), the exchange fails, or
 * token_wait_timeout passes (503). A worker never exchanges or blocks itself. Returns 1 when
 * the request was answered at once (the credential is backing off after a failure); the
 * caller then looks for a pipelined request unless process() is already doing that. */
static int wait_for_token(struct client *c)
{
    client_set_state(c, C_TOKEN_WAIT);
    if (token_wait_failed(c))
        return 1;
    arm_timer(c, limits(c)->token_wait_timeout_ms);
    token_exchanger_want(c->w->env->exchanger);
    return 0;
}

static void token_wait_retry(struct client *c)
{
    struct runtime *rt = c->gen->rt;
    const struct credential *cred =
        &rt->conf->credentials[rt->conf->routes[c->x->route].credential_index];
    struct runtime *cur = c->w->gen->rt;
    size_t j;
    /* A reload came while this request waited: the exchange may have been made for the new
     * configuration; its token is as good when the credential did not change. */
    if (cur != rt && (j = runtime_credential_index(cur, cred->name)) != SIZE_MAX &&
        runtime_same_exchange(&cur->conf->credentials[j], cred))
        token_cache_adopt(rt->tokens, cred, cur->tokens, &cur->conf->credentials[j]);
    c->x->tok = token_cache_get(rt->tokens, cred, c->x->scope, c->x->nscope, NULL, 0);
    if (c->x->tok != NULL) {
        stream_set_alarm(&c->s, 0);
        acquire_upstream(c);
        return;
    }
    if (token_wait_failed(c) && c->state == C_IDLE)
        process(c); /* a pipelined request may be waiting */
}

static void token_wait_expired(struct client *c)
{
    const struct runtime *rt = c->gen->rt;
    char detail[300];
    snprintf(detail, sizeof(detail),
             "credential %s: no access token from Apple within token_wait_timeout (the exchange "
             "is still in progress)",
             rt->conf->credentials[rt->conf->routes[c->x->route].credential_index].name);
    reply_error(c, proxy_err_token, detail, c->x->req.body == HTTP1_BODY_NONE);
    if (c->state == C_IDLE)
        process(c);
}

void client_tokens_ready(struct worker *w)
{
    struct wclient *wc, *next;
    for (wc = TAILQ_FIRST(&w->clients); wc; wc = next) {
        struct client *c = client_of(wc);
        next = TAILQ_NEXT(wc, link);
        if (c->state != C_TOKEN_WAIT)
            continue;
        token_wait_retry(c);
        settle(c); /* may free c, never another client */
    }
}

static void response_complete(struct client *c)
{
    up_release(c); /* a clean end: the transport keeps the connection when it can */
    if (c->x->resp_state == RESP_DISCARD) {
        /* Apple refused the cached token: it was dropped, so this mints a fresh one. */
        char err[256];
        const struct credential *cred =
            &c->gen->rt->conf->credentials[c->gen->rt->conf->routes[c->x->route].credential_index];
        resp_set(c->x, RESP_HEAD);
        c->x->token_retried = 1;
        WSTAT_ADD(c->w, token_retries, 1);
        token_put(c->x->tok);
        c->x->tok = token_cache_get(c->gen->rt->tokens, cred, c->x->scope, c->x->nscope, err,
                                    sizeof(err));
        if (c->x->tok == NULL && profile_exchanged(cred->profile)) {
            /* The exchanger fetches a new access token. */
            if (wait_for_token(c) && c->state == C_IDLE)
                process(c);
            return;
        }
        if (c->x->tok == NULL) {
            reply_error(c, proxy_err_token, err, 0);
            return;
        }
        acquire_upstream(c);
        return;
    }
    if (c->x->rw)
        linkrw_finish(c->x->rw, emit_client, c);
    if (c->x->chunked_out)
        ADD_LITERAL(stream_output(&c->s), "0\r\n\r\n");
    finish_exchange(c);
}

/* The protocol of the exchange's upstream (enum up_proto), for the per-protocol counters. */
static int up_proto(const struct client *c)
{
    return c->gen->pools[c->gen->rt->route_target[c->x->route]].target->h2 ? UP_PROTO_H2
                                                                           : UP_PROTO_HTTP1;
}

/* The upstream broke the exchange. before_head: nothing of the response has arrived. */
static void upstream_failed(struct client *c, const char *code, const char *detail)
{
    if (code != proxy_err_internal)
        WSTAT_ADD(c->w, proto_failures[up_proto(c)], 1);
    up_release(c);
    if (resp_head_sent(c->x)) {
        /* Cut the client off without a clean end so that it cannot mistake a truncated
         * body for a whole one. */
        if (c->x->resp_state == RESP_BODY)
            resp_set(c->x, RESP_FAILED);
        log_msg(LOG_WARN, "client %s: response cut short: %s", peer(c), detail);
        c->x->outcome = "upstream_cut";
        c->x->err_code = code;
        c->dead = 1;
        return;
    }
    reply_error(c, code, detail, c->x->req_state == REQ_DONE);
    if (c->state == C_IDLE)
        process(c); /* a pipelined request may be waiting */
}

/* APNs names each push with apns-id (a UUID): kept for the access log, which is written after
 * the head's bytes are gone. Anything that is not a short printable token is left out. */
static void note_apns_id(struct client *c, const struct http1_msg *r)
{
    const struct http1_header *h = http1_find(r, "apns-id");
    size_t i;
    if (h == NULL || h->value_len >= sizeof(c->x->apns_id))
        return;
    for (i = 0; i < h->value_len; i++)
        if (h->value[i] <= 0x20 || h->value[i] >= 0x7f || h->value[i] == '"' ||
            h->value[i] == '\\')
            return;
    memcpy(c->x->apns_id, h->value, h->value_len);
    c->x->apns_id[h->value_len] = '\0';
}

/* Whether the client has let go of the upstream stream it held when an event began (gen: its
 * up_gen then): the transport then stops at once (upstream_transport.h). */
static int up_let_go(const struct client *c, unsigned gen)
{
    return !(c->up && c->up_gen == gen && !c->dead && c->state == C_EXCHANGE);
}

/* upstream_events: the final response head. */
static int up_head(void *arg, const struct http1_msg *r)
{
    struct client *c = arg;
    unsigned gen = c->up_gen;
    if (r->status == 401 && !c->x->token_retried && c->x->idempotent &&
        c->x->req.body == HTTP1_BODY_NONE && c->x->req_state == REQ_DONE) {
        const struct credential *cred =
            &c->gen->rt->conf->credentials[c->gen->rt->conf->routes[c->x->route].credential_index];
        if (token_cache_invalidate(c->gen->rt->tokens, cred, c->x->scope, c->x->nscope,
                                   c->x->tok, 60) == 1) {
            log_msg(LOG_WARN, "upstream %s answered 401 to the cached token of %s: minting "
                    "a new one and retrying once", c->gen->rt->targets[
                    c->gen->rt->route_target[c->x->route]].name, cred->name);
            live_count_remint_401(c->gen->rt->live_creds[cred - c->gen->rt->conf->credentials]);
            resp_set(c->x, RESP_DISCARD);
        }
    }
    c->x->t_head_us = mono_us();
    note_rate_limit(c, r);
    if (r->status == 429) {
        /* Apple's Retry-After is respected for everyone using the credential. */
        const struct http1_header *ra = http1_find(r, "retry-after");
        int capped = 0;
        double until = ra ? gateway_parse_retry_after(ra->value, ra->value_len, now_real(),
                                                      &capped)
                          : -1;
        size_t ci = c->gen->rt->conf->routes[c->x->route].credential_index;
        if (capped)
            log_msg(LOG_WARN, "credential %s: Apple's Retry-After (%.*s) is more than %d s "
                    "away; it rests %d s, then one request asks again",
                    c->gen->rt->conf->credentials[ci].name, (int)(ra->value_len > 64 ? 64 :
                    ra->value_len), ra->value, GATEWAY_RETRY_AFTER_MAX_SECONDS,
                    GATEWAY_RETRY_AFTER_MAX_SECONDS);
        if (until > 0) {
            live_block_until(c->gen->rt->live_creds[ci], until);
            shared_note_block(c->w->shared, c->gen->rt->conf->credentials[ci].name, until);
        }
    }
    if (c->x->resp_state != RESP_DISCARD) {
        note_apns_id(c, r);
        write_response_head(c, r);
        if (c->dead)
            return 1; /* out of memory: the client and its upstream stream go */
    }
    if (c->x->req_state != REQ_DONE) {
        /* An answer before the whole request went up (a refusal mid-upload): its body
         * reads need the timeout that is otherwise armed once the request is sent. */
        c->up->ops->set_timeouts(c->up, (uint32_t)limits(c)->upstream_response_timeout_ms,
                                 (uint32_t)limits(c)->send_timeout_ms);
    }
    return up_let_go(c, gen);
}

/* upstream_events: the response is complete. */
static int up_end(void *arg)
{
    struct client *c = arg;
    unsigned gen = c->up_gen;
    response_complete(c);
    return up_let_go(c, gen);
}

static void settle(struct client *c);

/* The client's output drained (to the low mark, or empty). */
static void client_drained(struct client *c)
{
    if (c->state == C_CLOSING) {
        if (stream_output_length(&c->s) == 0)
            closing_flushed(c);
    } else if (c->up_paused && c->up) {
        /* The transport delivers what it holds at once (upstream_transport.h). */
        c->up_paused = 0;
        c->up->ops->set_reading(c->up, 1);
    }
}

/* The upstream took the queued body: read more of it from the client. */
static void request_drained(struct client *c)
{
    if (c->read_paused && c->x && c->x->req_state != REQ_DONE) {
        c->read_paused = 0;
        stream_set_reading(&c->s, 1);
        feed_body(c);
    }
}

/* Whether a request whose pooled connection closed before any answer goes once more on a
 * new connection. A retry replays only what the exchange keeps: the head and the token line.
 * The body is not kept: bytes of it that the request parser has consumed are gone from the
 * client's input, and with them the framing they carried (a chunk-size line, the last chunk),
 * which the parser will not produce again. So a request with a body is retried only while the
 * parser has consumed none of it, and then the new connection gets exactly the same bytes as
 * the first one; once anything was consumed the client gets a 502. Without a body, only
 * idempotent methods are retried: the upstream may have acted on a whole request. */
static int retry_allowed(const struct client *c)
{
    const struct exchange *x = c->x;
    if (!c->up->reused || x->retried)
        return 0;
    if (x->req.body == HTTP1_BODY_NONE)
        return x->idempotent;
    return x->req_consumed == 0;
}

/* upstream_events: the request bytes waiting went down to the low mark. */
static int up_drained(void *arg)
{
    struct client *c = arg;
    unsigned gen = c->up_gen;
    if (up_let_go(c, gen))
        return 1;
    request_drained(c);
    return up_let_go(c, gen);
}

static const char *fault_code(enum upstream_fault kind)
{
    switch (kind) {
    case UPSTREAM_FAULT_UNANSWERED:
    case UPSTREAM_FAULT_UNREACHABLE:
        return proxy_err_upstream_unreachable;
    case UPSTREAM_FAULT_TIMEOUT:
        return proxy_err_upstream_timeout;
    case UPSTREAM_FAULT_INTERNAL:
        return proxy_err_internal;
    case UPSTREAM_FAULT_BAD_RESPONSE:
        break;
    }
    return proxy_err_bad_upstream_response;
}

/* upstream_events: the stream failed. The exchange always lets go of it here. */
static int up_fault(void *arg, enum upstream_fault kind, const char *detail)
{
    struct client *c = arg;
    if (kind == UPSTREAM_FAULT_UNANSWERED && retry_allowed(c)) {
        /* The pooled connection was closed by the upstream while idle: nothing of this
         * request can have been processed, so it goes once more on a fresh connection. */
        up_release(c);
        c->x->retried = 1;
        WSTAT_ADD(c->w, upstream_retries, 1);
        acquire_upstream(c);
        return 1;
    }
    upstream_failed(c, fault_code(kind), detail);
    return 1;
}

static void up_settle(void *arg)
{
    settle(arg);
}

static const struct upstream_events up_events = {
    .head = up_head,
    .body = up_body,
    .body_buffer = up_body_buffer,
    .end = up_end,
    .fault = up_fault,
    .drained = up_drained,
    .settle = up_settle,
};

/* ---- sending the request ---- */

static void attach_upstream(struct client *c)
{
    struct exchange *x = c->x;
    const struct conf_limits *lim = limits(c);
    c->up_gen++;
    x->up_req.head = x->up_head;
    x->up_req.head_len = x->up_head_len;
    x->up_req.tok = x->tok;
    x->up_req.body = x->req.body;
    x->up_req.content_length = x->req.content_length;
    x->up_req.is_head = x->is_head;
    if (c->up->ops->start(c->up, &x->up_req, &up_events, c) < 0) {
        upstream_failed(c, proxy_err_internal, "out of memory");
        return;
    }
    x->t_sent_us = mono_us();
    WSTAT_ADD(c->w, proto_requests[up_proto(c)], 1);
    /* The wait for the first byte of the answer starts when the request is all sent: a long
     * upload is covered by client_body_timeout and send_timeout, not by this. */
    c->up->ops->set_timeouts(c->up,
                             x->req.body == HTTP1_BODY_NONE
                                 ? (uint32_t)lim->upstream_response_timeout_ms : 0,
                             (uint32_t)lim->send_timeout_ms);
    c->up_paused = 0;
    x->up_reused = c->up->reused;
    x->req_remaining = x->req.content_length;
    client_set_state(c, C_EXCHANGE);
    assert(x->resp_state == RESP_HEAD);
    if (x->req_state != REQ_HEAD) {
        /* A retry: the same head went again, the request's progress stays where it was
         * (a body is only retried while none of it was consumed). */
        assert(x->retried || x->token_retried);
    } else if (x->req.body == HTTP1_BODY_NONE) {
        req_set(x, REQ_DONE);
        return;
    } else {
        req_set(x, REQ_BODY);
    }
    if (x->req_state == REQ_DONE)
        return;
    if (x->req.expect_continue && stream_input_length(&c->s) == 0 && x->req.body_seen == 0 &&
        !x->retried) {
        ADD_LITERAL(stream_output(&c->s), "HTTP/1.1 100 Continue\r\n\r\n");
    }
    stream_set_timeouts(&c->s, (uint32_t)lim->client_body_timeout_ms,
                        (uint32_t)lim->send_timeout_ms);
    feed_body(c);
}

static void up_ready(struct upstream_stream *us, enum upstream_error err, const char *detail,
                     void *arg)
{
    struct client *c = arg;
    if (err != UPSTREAM_OK) {
        const char *code = (err == UPSTREAM_ERR_TLS)                ? proxy_err_upstream_tls
                           : (err == UPSTREAM_ERR_CONNECT_TIMEOUT ||
                              err == UPSTREAM_ERR_TLS_TIMEOUT)      ? proxy_err_upstream_timeout
                                                                    : proxy_err_upstream_unreachable;
        c->up = NULL;
        WSTAT_ADD(c->w, proto_failures[up_proto(c)], 1);
        reply_error(c, code, detail, c->x->req.body == HTTP1_BODY_NONE);
        if (c->state == C_IDLE)
            process(c); /* a pipelined request may be waiting */
    } else {
        c->up = us;
        attach_upstream(c);
    }
    settle(c);
}

static void acquire_upstream(struct client *c)
{
    struct upool *pool = &c->gen->pools[c->gen->rt->route_target[c->x->route]];
    const struct conf *conf = c->gen->rt->conf;
    struct upstream_stream *us = NULL;
    client_set_state(c, C_CONNECTING);
    /* Keyed by credential: an HTTP/2 connection carries one credential's tokens only. */
    int r = upstream_stream_get(pool,
                                &conf->credentials[conf->routes[c->x->route].credential_index],
                                up_ready, c, &us);
    if (r < 0) {
        reply_error(c, proxy_err_internal, "out of memory", 0);
        return;
    }
    /* Held from now on, ready or not: if the client goes away first, client_free releases the
     * pending stream and its ready callback never runs on a freed client. */
    c->up = us;
    if (r == 0)
        attach_upstream(c);
}

/* Forwards the request body that has arrived, as far as the upstream stream takes it. */
static void feed_body(struct client *c)
{
    struct evbuffer *in = stream_input(&c->s);
    unsigned was_done = c->x->req_state == REQ_DONE;
    while (c->x->req_state != REQ_DONE && c->up && !c->dead && c->state == C_EXCHANGE) {
        if (c->up->ops->send_queued(c->up) >= OUT_HIGH) {
            stream_set_reading(&c->s, 0);
            c->read_paused = 1;
            return;
        }
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            break;
        if (c->x->req.body == HTTP1_BODY_LENGTH) {
            size_t n = avail < c->x->req_remaining ? avail : (size_t)c->x->req_remaining;
            c->up->ops->send_body_buffer(c->up, in, n);
            c->x->req.body_seen += n;
            c->x->req_consumed += n;
            c->x->req_remaining -= n;
            if (c->x->req_remaining == 0) {
                c->up->ops->send_end(c->up);
                req_set(c->x, REQ_DONE);
            }
        } else {
            struct evbuffer_iovec v;
            size_t used = 0;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            int r = http1_parse_body(&c->x->req, v.iov_base, v.iov_len, &used);
            evbuffer_drain(in, used);
            c->x->req_consumed += used;
            if (r < 0) {
                const char *code = code_for_status(c->x->req.error_status);
                c->x->close_after = 1;
                req_set(c->x, REQ_FAILED);
                reply_error(c, code, c->x->req.error_detail, 0);
                return;
            }
            if (r == 1) {
                c->up->ops->send_end(c->up);
                req_set(c->x, REQ_DONE);
            }
        }
    }
    if (c->x->req_state == REQ_DONE && !was_done && !c->dead) {
        /* The whole request is up: the client's body timeout ends, the wait for the answer
         * starts. */
        stream_set_timeouts(&c->s, 0, (uint32_t)limits(c)->send_timeout_ms);
        if (c->up && c->x->resp_state == RESP_HEAD)
            c->up->ops->set_timeouts(c->up, (uint32_t)limits(c)->upstream_response_timeout_ms,
                                     (uint32_t)limits(c)->send_timeout_ms);
    } else if (!c->dead && c->x->req_state != REQ_DONE && c->client_eof && !c->read_paused &&
               evbuffer_get_length(in) == 0) {
        /* The client closed before the end of its request: the upstream connection, holding
         * a partial request, cannot be reused; the exchange is abandoned. */
        req_set(c->x, REQ_FAILED);
        if (!c->x->outcome)
            c->x->outcome = "client_abort";
        c->dead = 1;
    }
}

/* ---- the request head ---- */

/* "ip:port" (or "[v6]:port") of the listener the client connected to. */
static int local_authority(struct client *c, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    if (getsockname(stream_fd(&c->s), (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%d", ip, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%d", ip, ntohs(a->sin6_port));
    } else {
        return -1;
    }
    return 0;
}

/* The RFC 2253 subject of the client's certificate when one was presented and verified. */
static char *peer_subject(struct client *c)
{
    SSL *ssl = c->s.ssl;
    X509 *cert = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    BIO *bio;
    char *out = NULL;
    if (cert == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
        return NULL;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return NULL;
    if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
        char *data;
        long n = BIO_get_mem_data(bio, &data);
        out = n >= 0 ? strndup(data, (size_t)n) : NULL;
    }
    BIO_free(bio);
    return out;
}

/* The scope of the exchange's tokens: the client's own under "client_scopes", else the
 * route's. */
static const char *const *client_scope(struct client *c, const struct conf_client *cl, size_t *n)
{
    const struct runtime *rt = c->gen->rt;
    if (cl) {
        size_t k = (size_t)(cl - rt->conf->clients) * rt->conf->nroutes + c->x->route;
        if (rt->client_scope[k]) {
            *n = rt->client_scope_n[k];
            return (const char *const *)rt->client_scope[k];
        }
    }
    return runtime_route_scope(rt, c->x->route, n);
}

/* A gateway refusal: 407 with the challenges, 429 with Retry-After, 403. */
static void reply_verdict(struct client *c, const struct gateway_verdict *v, int keep)
{
    char extra[160];
    extra[0] = '\0';
    if (v->code == proxy_err_proxy_auth)
        snprintf(extra, sizeof(extra), "Proxy-Authenticate: Basic realm=\"apple-auth-proxy\"\r\n"
                                       "Proxy-Authenticate: Bearer realm=\"apple-auth-proxy\"\r\n");
    else if (v->retry_after > 0)
        snprintf(extra, sizeof(extra), "Retry-After: %ld\r\n", v->retry_after);
    if (v->code == proxy_err_proxy_auth || v->code == proxy_err_client_forbidden)
        log_msg(LOG_WARN, "client %s%s%s: refused: %s", peer(c), c->x->client_name ? " " : "",
                c->x->client_name ? c->x->client_name : "", v->detail);
    reply_error_ex(c, v->code, v->detail, keep, extra);
}

/* ---- CONNECT interception ---- */

static void drain_head(struct client *c, const struct http1_msg *m);

/* Requests inside an intercepted connection: the gateway client is the one the CONNECT
 * proved (looked up again: the configuration may have been reloaded since). */
static void tunnel_identify(struct client *c, const struct runtime *rt,
                            const struct conf_client **cl, struct gateway_verdict *v)
{
    memset(v, 0, sizeof(*v));
    *cl = NULL;
    for (size_t i = 0; i < rt->conf->nclients; i++)
        if (strcmp(rt->conf->clients[i].name, c->tunnel_client) == 0) {
            *cl = &rt->conf->clients[i];
            return;
        }
    v->code = proxy_err_client_forbidden;
    snprintf(v->detail, sizeof(v->detail), "client %s is no longer configured", c->tunnel_client);
}

/* "name:port" of a CONNECT target (RFC 9110 9.3.6: authority-form, the port required). */
static int connect_target(const struct http1_msg *m, size_t *name_len, int *port)
{
    const char *colon = memchr(m->target, ':', m->target_len);
    size_t i;
    long p = 0;
    if (colon == NULL || colon == m->target || (size_t)(colon - m->target) > INTERCEPT_MAX_NAME)
        return -1;
    *name_len = (size_t)(colon - m->target);
    for (i = *name_len + 1; i < m->target_len; i++) {
        if (m->target[i] < '0' || m->target[i] > '9' || p > 65535)
            return -1;
        p = p * 10 + (m->target[i] - '0');
    }
    if (i == *name_len + 1 || p < 1 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

/* CONNECT host:port to a configured upstream (the client is already identified): answer 200
 * and become that host, in TLS on this connection, with a leaf of the proxy's CA. What comes
 * inside is planned by request_plan_tunnel, as plain requests to that upstream. */
static void intercept_start(struct client *c, struct runtime *rt, const struct conf_client *cl)
{
    struct http1_msg *m = &c->x->req;
    char name[INTERCEPT_MAX_NAME + 1], err[320];
    size_t name_len, i;
    int port;
    SSL *ssl;
    int bad = connect_target(m, &name_len, &port);
    if (bad == 0)
        snprintf(name, sizeof(name), "%.*s", (int)name_len, m->target);
    else
        snprintf(name, sizeof(name), "%.*s", (int)(m->target_len > 150 ? 150 : m->target_len),
                 m->target);
    drain_head(c, m);
    if (bad) {
        reply_error(c, proxy_err_bad_request, "CONNECT needs a host:port target", 0);
        return;
    }
    for (i = 0; i < rt->ntargets; i++)
        if (rt->targets[i].port == port && strcasecmp(rt->targets[i].name, name) == 0)
            break;
    if (i == rt->ntargets || !intercept_allows(rt->intercept, name, name_len)) {
        snprintf(err, sizeof(err), "%s:%d is not one of the configured upstreams", name, port);
        reply_error(c, proxy_err_forbidden_host, err, 0);
        return;
    }
    if (c->tls) {
        /* TLS inside TLS would need a second record layer; HTTPS listeners serve
         * base-URL clients instead. */
        reply_error(c, proxy_err_connect,
                    "CONNECT is intercepted on plain http:// listeners only", 0);
        return;
    }
    if (stream_input_length(&c->s) > 0) {
        /* A client must wait for the 200 before its ClientHello. */
        reply_error(c, proxy_err_bad_request, "data after CONNECT before the proxy's answer", 0);
        return;
    }
    ssl = intercept_ssl_new(rt->intercept, name, name_len, err, sizeof(err));
    c->tunnel_host = ssl ? strdup(name) : NULL;
    c->tunnel_client = ssl && cl ? strdup(cl->name) : NULL;
    if (ssl == NULL || c->tunnel_host == NULL || (cl && c->tunnel_client == NULL)) {
        log_msg(LOG_ERROR, "client %s: cannot intercept %s: %s", peer(c), name,
                ssl ? "out of memory" : err);
        SSL_free(ssl);
        reply_error(c, proxy_err_intercept, "no certificate could be made for this host", 0);
        return;
    }
    c->tunnel_port = port;
    ADD_LITERAL(stream_output(&c->s), "HTTP/1.1 200 Connection established\r\n\r\n");
    c->x->status = 200;
    c->x->bytes_out = 39;
    end_exchange_objects(c);
    /* The handshake and the first request head must arrive within the header timeout. */
    client_set_state(c, C_HEAD);
    if (stream_start_tls(&c->s, ssl) < 0) {
        c->dead = 1;
        return;
    }
    c->tls = 1;
    arm_timer(c, limits(c)->client_header_timeout_ms);
}

/* The request passed the gateway's checks (its upstream head in x->up_head): take the token
 * and get an upstream connection. */
static void exchange_go(struct client *c, const struct conf_client *cl, int keep)
{
    struct runtime *rt = c->gen->rt;
    char err[256];
    const struct credential *cred =
        &rt->conf->credentials[rt->conf->routes[c->x->route].credential_index];
    /* Kept for the 401 re-mint, which must find and replace this very token. */
    c->x->scope = client_scope(c, cl, &c->x->nscope);
    c->x->tok = token_cache_get(rt->tokens, cred, c->x->scope, c->x->nscope, err, sizeof(err));
    if (c->x->tok == NULL && !profile_exchanged(cred->profile)) {
        log_msg(LOG_ERROR, "credential %s: cannot mint a token: %s", cred->name, err);
        reply_error(c, proxy_err_token, "the token for this route could not be made", keep);
        return;
    }
    if (rt->conf->routes[c->x->route].rewrite_links && c->x->origin_pending) {
        c->x->origin = c->x->origin_pending;
        c->x->origin_pending = NULL;
    }
    if (c->x->tok == NULL) {
        /* An exchanged credential whose access token is not there yet. */
        wait_for_token(c);
        return;
    }
    acquire_upstream(c);
}

/* ---- the rate decision on Redis (shared_state) ---- */

/* Ends the wait for the rate decision: result 1 allowed, 0 refused (wait: seconds until one
 * would be), -1 Redis failed and the replica decides alone, with its share of the limit. */
static void rate_conclude(struct client *c, int result, double wait)
{
    const struct conf_client *cl = c->x->rate_client;
    const struct runtime *rt = c->gen->rt;
    struct gateway_verdict v;
    memset(&v, 0, sizeof(v));
    c->x->rate_wait = NULL;
    if (result < 0)
        gateway_rate_take_share(rt->live_clients[cl - rt->conf->clients], cl,
                                shared_local_divisor(c->w->shared), now_real(), &v);
    else if (result == 0)
        gateway_rate_refuse(cl, wait, &v);
    if (v.code)
        reply_verdict(c, &v, c->x->rate_keep);
    else
        exchange_go(c, cl, c->x->rate_keep);
}

/* Redis' answer, on the worker's loop; the client is still there (client_free cancels). */
static void rate_decided(void *arg, int result, double wait)
{
    struct client *c = arg;
    rate_conclude(c, result, wait);
    if (c->state == C_IDLE && !c->dead)
        process(c); /* a pipelined request may be waiting */
    settle(c);
}

/* The request waits (CONNECTING, its body unread) for one round trip to Redis; the worker goes
 * on with others. Redis' timeout bounds the wait: past it the decision is made locally. */
static void rate_ask(struct client *c, const struct conf_client *cl, int keep)
{
    client_set_state(c, C_CONNECTING);
    c->x->rate_client = cl;
    c->x->rate_keep = keep != 0;
    c->x->rate_wait = shared_rate_take(c->w->shared, cl->name, cl->rate_per_second,
                                       cl->rate_burst, rate_decided, c);
    if (c->x->rate_wait == NULL)
        rate_conclude(c, -1, 0); /* not sent (Redis went away just now): decided here */
}

/* Takes the parsed head out of the client's input, wiped first: it may hold a
 * Proxy-Authorization secret (or a client's own Authorization), and the buffer's memory can
 * live on with the body or a pipelined request behind it. */
static void drain_head(struct client *c, const struct http1_msg *m)
{
    struct evbuffer *in = stream_input(&c->s);
    struct evbuffer_iovec v[4];
    int n = evbuffer_peek(in, (ev_ssize_t)m->head_len, NULL, v, 4);
    size_t left = m->head_len;
    for (int i = 0; i < n && i < 4 && left; i++) {
        size_t k = v[i].iov_len < left ? v[i].iov_len : left;
        OPENSSL_cleanse(v[i].iov_base, k);
        left -= k;
    }
    evbuffer_drain(in, m->head_len);
}

/* The browser rule (proxy/browser.c): 0 when the request may go on, else -1 after the refusal
 * (logged: a page trying the proxy is worth an operator's attention). */
static int check_browser(struct client *c, const struct runtime *rt, const struct http1_msg *m)
{
    char detail[256];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int in_tunnel = c->tunnel_host != NULL;
    enum browser_verdict v =
        browser_check(rt->conf, c->listener, in_tunnel, m, NULL, detail, sizeof(detail));
    if (v == BROWSER_NEED_LOCAL) {
        const struct sockaddr *local =
            getsockname(stream_fd(&c->s), (struct sockaddr *)&ss, &sl) == 0
                ? (const struct sockaddr *)&ss : NULL;
        v = local ? browser_check(rt->conf, c->listener, in_tunnel, m, local, detail,
                                  sizeof(detail))
                  : BROWSER_MISDIRECTED;
        if (local == NULL)
            snprintf(detail, sizeof(detail), "the connection's own address is unknown");
    }
    if (v == BROWSER_OK)
        return 0;
    log_msg(LOG_WARN, "client %s: refused by the browser rule: %s", peer(c), detail);
    drain_head(c, m);
    reply_error(c, v == BROWSER_MISDIRECTED ? proxy_err_misdirected : proxy_err_browser_forbidden,
                detail, m->body == HTTP1_BODY_NONE);
    return -1;
}

/* A request head was parsed: the exchange's record and both directions' states start over. */
static void exchange_begin(struct client *c, const struct http1_msg *m)
{
    client_set_state(c, C_CONNECTING); /* the head is checked and planned; the record is open */
    WSTAT_ADD(c->w, requests_in_flight, 1);
    c->x->t_start_us = mono_us();
    c->x->t_sent_us = c->x->t_head_us = c->x->t_first_us = 0;
    c->x->client_label = 0;
    c->x->t_start = now_real();
    c->x->status = 0;
    c->x->label = 0;
    c->x->up_reused = -1;
    c->x->err_code = NULL;
    c->x->outcome = NULL;
    c->x->bytes_out = 0;
    c->x->apns_id[0] = '\0';
    c->x->method_len = m->method_len < sizeof(c->x->method) ? m->method_len : 0;
    memcpy(c->x->method, m->method, c->x->method_len);
    if (accesslog_enabled()) {
        size_t tl = m->target_len > 4096 ? 4096 : m->target_len;
        free(c->x->log_line);
        c->x->log_line = malloc(m->method_len + tl + 2);
        if (c->x->log_line) {
            memcpy(c->x->log_line, m->method, m->method_len);
            c->x->log_line[m->method_len] = '\0';
            memcpy(c->x->log_line + m->method_len + 1, m->target, tl);
            c->x->log_line[m->method_len + 1 + tl] = '\0';
            c->x->log_method_len = m->method_len;
            c->x->log_target_len = tl;
        }
    }
    c->x->keep_alive = m->keep_alive;
    exchange_states_begin(c->x);
    c->x->retried = c->x->token_retried = 0;
    c->x->req_consumed = 0;
    c->x->close_after = c->x->chunked_out = 0;
    c->x->req.sink = &req_sink;
    c->x->req.sink_arg = c;
    c->x->client_name = NULL;
}

/* The origin the client addressed, for rewriting links on the planned route (copied: the head
 * goes). An HTTP/1.0 request may name none: then the address it connected to. The scheme is the
 * listener's, except for an absolute-form target: an http:// URL sent through an HTTPS listener
 * gets http:// links back, which the client sends through the proxy again. */
static void note_origin(struct client *c, const struct request_plan *plan)
{
    char local[INET6_ADDRSTRLEN + 16];
    const char *auth = plan->authority;
    size_t al = plan->authority_len > 256 ? 256 : plan->authority_len;
    if (auth == NULL && local_authority(c, local, sizeof(local)) == 0) {
        auth = local;
        al = strlen(local);
    }
    free(c->x->origin_pending);
    c->x->origin_pending = auth ? malloc(al + 9) : NULL;
    if (c->x->origin_pending)
        snprintf(c->x->origin_pending, al + 9, "%s://%.*s",
                 plan->scheme ? plan->scheme : c->tls ? "https" : "http", (int)al, auth);
}

/* Policy before any token is taken: the client's credentials and rules, Apple's quota for the
 * credential, and the client's rate. Returns 1 when the rate is to be asked of Redis (once the
 * head is out of the input); a refusal is left in v. */
static int exchange_authorize(struct client *c, const struct runtime *rt,
                              const struct conf_client *cl, const struct http1_msg *m,
                              const struct request_plan *plan, struct gateway_verdict *v)
{
    /* plan->path points into the head: still there. */
    gateway_authorize(rt->conf, cl, m->method, m->method_len, plan->path, plan->path_len,
                      c->x->route, v);
    /* Apple's quota first, so that a request refused for it costs the client nothing of its
     * own rate. */
    if (v->code == NULL)
        gateway_quota_check(rt->conf,
                            rt->live_creds[rt->conf->routes[c->x->route].credential_index], cl,
                            c->x->route, now_real(), v);
    if (v->code == NULL && cl && cl->rate_per_second > 0) {
        if (shared_up(c->w->shared))
            return 1;
        gateway_rate_take_share(rt->live_clients[cl - rt->conf->clients], cl,
                                shared_local_divisor(c->w->shared), now_real(), v);
    }
    return 0;
}

/* The head is complete: plan it (route, token, upstream head), drain it from the input and
 * start the exchange, or answer the proxy's error. */
static void start_exchange(struct client *c)
{
    struct http1_msg *m = &c->x->req;
    struct request_plan plan;
    struct runtime *rt;

    WSTAT_ADD(c->w, requests, 1);
    stream_set_alarm(&c->s, 0);
    c->gen = wgen_ref(c->w->gen);
    rt = c->gen->rt;
    exchange_begin(c, m);
    if (c->tls && c->tls_subject == NULL)
        c->tls_subject = peer_subject(c);
    const struct conf_client *cl = NULL;
    struct gateway_verdict v;
    int rate_remote = 0;
    /* Before anything else, even who is asking: a web page gets no further. */
    if (check_browser(c, rt, m) < 0)
        return;
    /* Who is asking comes first: an unknown client learns nothing about the routes. */
    if (c->tunnel_client)
        tunnel_identify(c, rt, &cl, &v);
    else
        gateway_identify(rt->conf, m, c->tls_subject, &c->peer_addr.sa, &cl, &v);
    if (cl) {
        c->x->client_name = cl->name;
        c->x->client_label = rt->client_label[cl - rt->conf->clients];
    }
    int keep = m->body == HTTP1_BODY_NONE;
    if (v.code) {
        drain_head(c, m);
        reply_verdict(c, &v, keep);
        return;
    }
    if (m->parser.method == HTTP_CONNECT && rt->intercept && !c->tunnel_host) {
        intercept_start(c, rt, cl);
        return;
    }
    if ((c->tunnel_host ? request_plan_tunnel(&rt->routes, m, c->tunnel_host,
                                              strlen(c->tunnel_host), c->tunnel_port, &plan)
                        : request_plan(&rt->routes, m, &plan)) < 0) {
        drain_head(c, m);
        reply_error(c, proxy_err_internal, "out of memory", 0);
        return;
    }
    c->x->http10 = plan.http10;
    c->x->is_head = plan.is_head;
    c->x->idempotent = plan.idempotent;
    c->x->route = plan.route;
    if (plan.code == NULL || plan.code == proxy_err_body_too_large)
        c->x->label = c->gen->route_label[plan.route];
    /* Inside an intercepted connection the client sees Apple's own origin: nothing to rewrite. */
    if (plan.code == NULL && rt->conf->routes[plan.route].rewrite_links && !c->tunnel_host)
        note_origin(c, &plan);
    if (plan.code == NULL)
        rate_remote = exchange_authorize(c, rt, cl, m, &plan, &v);
    drain_head(c, m); /* m's spans are gone now */
    if (plan.code || v.code) {
        if (plan.code)
            reply_error(c, plan.code, plan.detail, plan.keep);
        else
            reply_verdict(c, &v, keep);
        request_plan_deinit(&plan);
        return;
    }
    c->x->up_head = plan.head; /* ownership moves to the client, with the spans into it */
    c->x->up_head_len = plan.head_len;
    c->x->up_req.method = plan.head;
    c->x->up_req.method_len = plan.method_len;
    c->x->up_req.target = plan.head + plan.target_off;
    c->x->up_req.target_len = plan.target_len;
    c->x->up_req.fields = plan.fields;
    c->x->up_req.nfields = plan.nfields;
    plan.head = NULL;
    request_plan_deinit(&plan);
    if (rate_remote) {
        rate_ask(c, cl, keep);
        return;
    }
    exchange_go(c, cl, keep);
}

static void process(struct client *c)
{
    struct evbuffer *in = stream_input(&c->s);
    size_t len;
    if (in == NULL) {
        c->dead = 1;
        return;
    }
    /* A loop, not recursion: requests the proxy answers itself (404, 403...) leave the
     * connection idle with the next pipelined request possibly already buffered. */
    while (!c->dead) {
        switch (c->state) {
        case C_IDLE:
        case C_HEAD:
            len = evbuffer_get_length(in);
            if (len == 0)
                return;
            if (c->state == C_IDLE) {
                if (c->x == NULL && (c->x = exchange_get(c->w)) == NULL) {
                    c->dead = 1; /* out of memory */
                    return;
                }
                client_set_state(c, C_HEAD);
                arm_timer(c, limits(c)->client_header_timeout_ms);
            }
            if (stream_output(&c->s) == NULL) {
                c->dead = 1;
                return;
            }
            {
                /* The current configuration's limits (a reload may have changed them). */
                const struct http1_limits *rl = &c->w->gen->req_limits;
                size_t n = len < rl->max_head + 1 ? len : rl->max_head + 1;
                c->x->req.limits = rl;
                const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
                int r = http1_parse_head(&c->x->req, data, n);
                if (r == 0)
                    return;
                if (r < 0) {
                    reply_error(c, code_for_status(c->x->req.error_status), c->x->req.error_detail, 0);
                    return;
                }
            }
            start_exchange(c);
            continue;
        case C_EXCHANGE:
            feed_body(c);
            return;
        case C_CONNECTING:
        case C_TOKEN_WAIT:
            return; /* the body waits until the upstream is ready */
        case C_CLOSING:
            evbuffer_drain(in, evbuffer_get_length(in));
            return;
        }
    }
}

/* After every callback: write what the callback queued (in the same loop iteration: no wait
 * for EPOLLOUT), react to what that drained, and free the client or park an idle one. */
static void settle(struct client *c)
{
    while (!c->dead) {
        unsigned cev = stream_settle(&c->s);
        int udrained = c->up && c->state == C_EXCHANGE ? c->up->ops->flush(c->up) : 0;
        if (!(cev & STREAM_DRAINED) && !udrained)
            break;
        if (cev & STREAM_DRAINED)
            client_drained(c);
        if (udrained && !c->dead && c->up && c->state == C_EXCHANGE)
            request_drained(c);
    }
    if (c->dead) {
        client_free(c);
        return;
    }
    if (c->state == C_IDLE && c->x && stream_input_length(&c->s) == 0) {
        /* Idle with nothing buffered: the connection keeps only its socket and timer. */
        exchange_put(c->w, c->x);
        c->x = NULL;
        stream_park(&c->s);
    }
}

static void on_client_eof(struct client *c)
{
    struct exchange *x = c->x;
    c->client_eof = 1;
    if (record_open(c) && !x->outcome)
        x->outcome = "client_abort"; /* unless the response still completes */
    if (c->state == C_CLOSING || c->state == C_IDLE ||
        (c->state == C_HEAD && stream_input_length(&c->s) == 0)) {
        c->dead = c->state != C_CLOSING || stream_output_length(&c->s) == 0;
    } else if (c->state == C_HEAD) {
        c->dead = 1; /* half a request head, then nothing */
    } else if (c->state == C_EXCHANGE && x->req_state != REQ_DONE) {
        /* What the client sent before closing may still complete the request: forward it;
         * feed_body ends the connection if the request stays incomplete. */
        feed_body(c);
    }
    /* A half-close after a whole request (forwarded, or waiting in the input while the
     * upstream connection opens, checked when it is ready): the response is still
     * delivered. */
}

static void client_cb(struct stream *s, unsigned ev, void *arg)
{
    struct client *c = arg;
    if (s->handshaking && (ev & (STREAM_EOF | STREAM_ERROR))) {
        /* A refused or abandoned TLS handshake (an unknown client certificate, a client that
         * does not trust the listener's): counted, and said at debug level. */
        char reason[160];
        stream_error_string(s, reason, sizeof(reason));
        WSTAT_ADD(c->w, client_tls_failures, 1);
        log_msg(LOG_DEBUG, "client %s: TLS handshake failed: %s", peer(c), reason);
        c->dead = 1;
        settle(c);
        return;
    }
    if (ev & STREAM_DRAINED)
        client_drained(c);
    if ((ev & STREAM_READ) && !c->dead)
        process(c);
    if ((ev & STREAM_EOF) && !c->dead)
        on_client_eof(c);
    if ((ev & STREAM_ERROR) && !c->dead) {
        if (record_open(c) && !c->x->outcome)
            c->x->outcome = "client_abort";
        c->dead = 1;
    }
    if ((ev & (STREAM_RTIMEOUT | STREAM_WTIMEOUT)) && !c->dead) {
        if ((ev & STREAM_RTIMEOUT) && c->state == C_EXCHANGE && c->x->req_state != REQ_DONE) {
            reply_error(c, proxy_err_request_timeout, "the request body stalled", 0);
        } else if (ev & STREAM_WTIMEOUT) {
            if (record_open(c) && !c->x->outcome)
                c->x->outcome = "client_abort"; /* it stopped reading its response */
            c->dead = 1;
        }
    }
    if ((ev & STREAM_ALARM) && !c->dead && s->handshaking) {
        /* A TLS handshake that stalls (an HTTPS listener's, or an intercepted CONNECT's): no
         * reply can be sent, so the connection ends at the header timeout. */
        WSTAT_ADD(c->w, client_tls_failures, 1);
        log_msg(LOG_DEBUG, "client %s: TLS handshake timed out", peer(c));
        c->dead = 1;
    }
    if ((ev & STREAM_ALARM) && !c->dead) {
        switch (c->state) {
        case C_HEAD:
            reply_error(c, proxy_err_request_timeout,
                        "the request head did not arrive within client_header_timeout", 0);
            break;
        case C_IDLE:
        case C_CLOSING:
            c->dead = 1;
            break;
        case C_TOKEN_WAIT:
            token_wait_expired(c);
            break;
        default:
            break;
        }
    }
    settle(c);
}

/* Takes the accepted socket (closed on failure). tls: the listener's server context for HTTPS
 * listeners, NULL for plain HTTP. listener: its index in the configuration's listen list. */
static int client_new(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
                      SSL_CTX *tls, size_t listener)
{
    const struct conf_limits *lim = &w->gen->rt->conf->limits;
    struct client *c = calloc(1, sizeof(*c));
    SSL *ssl = NULL;
    if (c == NULL) {
        close(fd);
        return -1;
    }
    c->w = w;
    if (tls && (ssl = SSL_new(tls)) == NULL) {
        close(fd);
        free(c);
        return -1;
    }
    c->x = exchange_get(w);
    if (c->x == NULL ||
        stream_init(&c->s, &w->sctx, fd, ssl, ssl ? STREAM_TLS_ACCEPT : STREAM_PLAIN, client_cb,
                    c) < 0) {
        if (c->x)
            exchange_put(w, c->x);
        if (ssl)
            SSL_free(ssl);
        close(fd);
        free(c);
        return -1;
    }
    c->tls = ssl != NULL;
    c->listener = (unsigned short)listener;
    if ((size_t)addrlen <= sizeof(c->peer_addr))
        memcpy(&c->peer_addr, addr, (size_t)addrlen);
    worker_client_add(w, &c->wc);
    /* Input is bounded: the head limit plus one read; body reads pause on backpressure. */
    stream_set_watermarks(&c->s,
                          lim->max_header_bytes + 1 > OUT_HIGH ? (uint32_t)lim->max_header_bytes + 1
                                                               : OUT_HIGH,
                          OUT_LOW);
    stream_set_timeouts(&c->s, 0, (uint32_t)lim->send_timeout_ms);
    /* The first request's head must arrive within the header timeout from the accept. */
    c->state = C_HEAD; /* the first state: accept is the edge into it */
    arm_timer(c, lim->client_header_timeout_ms);
    return 0;
}

/* Draining: the connection closes now if it is idle, else after its current exchange. */
static void client_drain(struct wclient *wc)
{
    struct client *c = client_of(wc);
    if ((c->state == C_IDLE || c->state == C_HEAD) && stream_input_length(&c->s) == 0)
        client_free(c);
}

/* Frees a client of a stopped worker (its upstream stream is released). */
static void client_free_now(struct wclient *wc)
{
    client_free(client_of(wc));
}

const struct worker_conn_ops client_conn_ops = {client_new, client_drain, client_free_now,
                                                client_worker_cleanup};
