/* client: one client connection and the exchange it is in.
 *
 *   accept
 *     |
 *     v            first byte             head parsed, routed, token taken
 *   IDLE ------------------> HEAD ---------------------------------------> CONNECTING
 *     ^   (idle timeout:       | (header timeout: 408,                         | upstream ready:
 *     |    close)              |  bad head: 4xx)                               | head + token sent
 *     |                        v                                               v
 *     |                     CLOSING <------- error before the response ---- EXCHANGE
 *     |                  (flush, half-close,      head (4xx/5xx JSON)      request body up,
 *     |                   linger, free)                                   response down, both
 *     |                        ^                                          with backpressure
 *     +--- keep-alive ---------+------------- response complete ---------------+
 *
 * One exchange at a time: pipelined requests wait in the input buffer until the response
 * before them is complete. Client and upstream connections are separate objects; the upstream
 * connection (upstream.c) belongs to the client only for the length of one exchange.
 * Objects are never freed inside a callback's call chain: functions set `dead`, and each
 * top-level callback frees the client as its last step.
 */
#include "proxy/evbuf.h"
#include "proxy/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "proxy/accesslog.h"
#include "proxy/gateway.h"
#include "proxy/http1.h"
#include "proxy/http_error.h"
#include "proxy/linkrw.h"
#include "proxy/log.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

/* Backpressure: stop reading one side when the other side's output holds this much, resume
 * when it has drained to the low mark (libevent's le-proxy pattern). */
#define OUT_HIGH (256 * 1024)
#define OUT_LOW (64 * 1024)
#define LINGER_MS 2000

enum client_state { C_IDLE, C_HEAD, C_CONNECTING, C_EXCHANGE, C_CLOSING };

struct client {
    TAILQ_ENTRY(client) link;
    struct worker *w;
    struct wgen *gen; /* held for the exchange */
    struct bufferevent *bev;
    struct event *timer; /* header, idle and linger timeouts */
    enum client_state state;
    int dead;
    struct http1_msg req, resp;
    struct upconn *up;
    size_t route;
    struct token *tok;
    char *up_head; /* the re-serialised head without the token line and the final CRLF */
    size_t up_head_len;
    uint64_t req_remaining;  /* Content-Length bodies: bytes still to forward */
    uint64_t resp_remaining;
    unsigned req_done : 1;      /* the request (with its body) has been forwarded */
    unsigned resp_started : 1;  /* the response head went to the client */
    unsigned client_eof : 1;
    unsigned retried : 1;       /* the stale pooled connection retry was used */
    unsigned token_retried : 1; /* the 401 re-mint retry was used */
    unsigned discard : 1;       /* swallowing a 401 to retry with a fresh token */
    unsigned close_after : 1;
    unsigned chunked_out : 1;   /* the response is re-chunked to the client */
    unsigned is_head : 1;
    unsigned idempotent : 1;
    unsigned http10 : 1;
    unsigned keep_alive : 1;
    unsigned read_paused : 1;   /* client reading stopped for backpressure */
    unsigned up_paused : 1;     /* upstream reading stopped for backpressure */
    unsigned last_chunk : 1;
    unsigned in_exchange : 1;   /* a request head was parsed and its record is not written */
    /* The exchange's record, for the access log and the metrics. */
    int status;                 /* sent to the client */
    int label;                  /* metrics route label (0: none) */
    int up_reused;              /* -1: no upstream connection was used */
    const char *err_code;
    const char *outcome;
    uint64_t t_start_us;
    double t_start;
    uint64_t bytes_out;
    char method[8];             /* for the metrics: "other" when longer */
    size_t method_len;
    char *log_line;             /* method, '\0', target: copied when the access log is on */
    size_t log_method_len, log_target_len;
    const char *client_name;    /* the gateway client (owned by the configuration) */
    char *tls_subject;          /* a verified client certificate's subject (TLS listeners) */
    unsigned tls : 1;           /* the connection is HTTPS */
    char *origin;               /* "http://HOST" the client addressed, on rewrite_links routes */
    char *origin_pending;       /* the same while the request is being checked */
    struct linkrw *rw;          /* the response's link rewriter, when one applies */
    char peer[64];
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer_addr; /* for allow_cidrs (a sockaddr_storage would cost 100 bytes per connection) */
};

/* Upstream response heads: fixed limits (Apple's heads are small; a huge one is an attack). */
static const struct http1_limits resp_limits = {.max_line = 0, .max_head = 64 * 1024,
                                                .max_headers = 256};

static const struct conf_limits *limits(const struct client *c)
{
    return &c->w->gen->rt->conf->limits;
}

static struct timeval ms_tv(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes the exchange's record (once): metrics always, the access log when it is on. */
static void exchange_end(struct client *c, const char *outcome)
{
    struct worker *w = c->w;
    uint64_t dur;
    if (!c->in_exchange)
        return;
    c->in_exchange = 0;
    dur = mono_us() - c->t_start_us;
    metrics_count_request(&w->metrics, c->label, c->method, c->method_len, c->status, dur);
    if (accesslog_enabled() && w->alog) {
        struct access_entry e;
        const struct runtime *rt = c->gen ? c->gen->rt : NULL;
        const struct conf_route *route =
            rt && c->label ? &rt->conf->routes[c->route] : NULL;
        memset(&e, 0, sizeof(e));
        e.time = c->t_start;
        e.remote = c->peer;
        e.client = c->client_name;
        e.method = c->log_line;
        e.method_len = c->log_method_len;
        e.target = c->log_line ? c->log_line + c->log_method_len + 1 : NULL;
        e.target_len = c->log_target_len;
        e.route = route ? metrics_label_name(c->label) : NULL;
        e.credential = route ? route->credential : NULL;
        e.status = c->status;
        e.error = c->err_code;
        e.outcome = c->outcome ? c->outcome : outcome;
        e.bytes_in = c->req.body_seen;
        e.bytes_out = c->bytes_out;
        e.duration = (double)dur / 1e6;
        e.upstream_reused = c->up_reused;
        e.quota_remaining = route ? runtime_quota_remaining(rt, route->credential_index) : -1;
        accesslog_append(w->alog, &e);
        if (evbuffer_get_length(w->alog) >= 64 * 1024)
            accesslog_flush(w->alog);
    }
    free(c->log_line);
    c->log_line = NULL;
}

static void arm_timer(struct client *c, long ms)
{
    struct timeval tv = ms_tv(ms);
    evtimer_add(c->timer, &tv);
}

static void client_free(struct client *c)
{
    struct worker *w = c->w;
    exchange_end(c, "client_abort"); /* c->outcome says "upstream_cut" when that was the cause */
    TAILQ_REMOVE(&w->clients, c, link);
    w->nclients--;
    if (c->up)
        upstream_abort(c->up);
    if (c->tok)
        token_put(c->tok);
    if (c->gen)
        wgen_unref(c->gen);
    free(c->up_head);
    free(c->tls_subject);
    free(c->origin);
    free(c->origin_pending);
    free(c->rw);
    http1_msg_deinit(&c->req);
    http1_msg_deinit(&c->resp);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->timer)
        event_free(c->timer);
    server_client_leave(w->server);
    free(c);
    if (w->draining && w->nclients == 0)
        event_base_loopexit(w->base, NULL);
}

static void end_exchange_objects(struct client *c)
{
    /* The header arrays are only needed while a head is parsed and used: an idle keep-alive
     * connection should cost as little as possible. */
    http1_msg_deinit(&c->resp);
    http1_msg_deinit(&c->req);
    /* The exchange ended normally (a whole response, or the proxy's own reply): whatever the
     * client did after sending its request (a half-close) did not cut it short. */
    c->outcome = NULL;
    exchange_end(c, "ok");
    free(c->origin);
    c->origin = NULL;
    free(c->origin_pending);
    c->origin_pending = NULL;
    free(c->rw);
    c->rw = NULL;
    if (c->tok) {
        token_put(c->tok);
        c->tok = NULL;
    }
    free(c->up_head);
    c->up_head = NULL;
    if (c->gen) {
        wgen_unref(c->gen);
        c->gen = NULL;
    }
}

/* Everything queued for the client is written: half-close and linger (plain TCP), or end the
 * TLS connection. */
static void closing_flushed(struct client *c)
{
    if (c->tls) {
        c->dead = 1;
        return;
    }
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    arm_timer(c, LINGER_MS);
}

/* Flush what is queued, half-close, read and discard what the client still sends for a short
 * while, then free: closing with unread input would reset the connection and could destroy
 * the error response on its way to the client. */
static void start_closing(struct client *c)
{
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    if (c->up) {
        upstream_abort(c->up);
        c->up = NULL;
    }
    end_exchange_objects(c);
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    {
        /* A client that never reads its reply must not keep the connection forever. */
        struct timeval stv = ms_tv(limits(c)->send_timeout_ms);
        bufferevent_set_timeouts(c->bev, NULL, &stv);
    }
    evtimer_del(c->timer);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
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
    if (c->resp_started) {
        /* A response is already on its way: the only honest signal left is to cut it short. */
        c->dead = 1;
        return;
    }
    keep = keep && c->keep_alive && !c->client_eof && !c->w->draining;
    {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        size_t before = evbuffer_get_length(out);
        http_error_write_ex(out, status, code, detail, !keep, extra);
        c->bytes_out += evbuffer_get_length(out) - before;
    }
    c->status = status;
    c->err_code = code;
    if (status >= 500)
        log_msg(LOG_WARN, "client %s: %d %s: %s", c->peer, status, code, detail ? detail : "");
    else
        log_msg(LOG_DEBUG, "client %s: %d %s: %s", c->peer, status, code, detail ? detail : "");
    if (!keep) {
        start_closing(c);
        return;
    }
    /* The request was consumed whole: go back to idle for the next one. */
    if (c->up) {
        upstream_abort(c->up);
        c->up = NULL;
    }
    end_exchange_objects(c);
    c->state = C_IDLE;
    arm_timer(c, limits(c)->idle_timeout_ms);
}

static void process(struct client *c);
static void feed_body(struct client *c);

/* ---- the request body, forwarded upstream ---- */

static int req_data(void *arg, const char *at, size_t len)
{
    struct client *c = arg;
    struct evbuffer *out = bufferevent_get_output(c->up->bev);
    unsigned long long max = limits(c)->max_body;
    if (max && c->req.body_seen > max) {
        c->req.error_status = 413;
        c->req.error_detail = "the request body is larger than max_body_bytes";
        return -1;
    }
    evbuffer_add(out, at, len);
    return 0;
}

static int req_chunk(void *arg, uint64_t size)
{
    struct client *c = arg;
    unsigned long long max = limits(c)->max_body;
    if (max && (size > max || c->req.body_seen + size > max)) {
        /* Refused before the chunk's size line goes upstream. */
        c->req.error_status = 413;
        c->req.error_detail = "the request body is larger than max_body_bytes";
        return -1;
    }
    if (size == 0) {
        c->last_chunk = 1; /* "0\r\n\r\n" is written at the end: trailers are dropped */
        return 0;
    }
    evbuffer_add_printf(bufferevent_get_output(c->up->bev), "%" PRIx64 "\r\n", size);
    return 0;
}

static int req_chunk_end(void *arg)
{
    struct client *c = arg;
    if (!c->last_chunk)
        ADD_LITERAL(bufferevent_get_output(c->up->bev), "\r\n");
    return 0;
}

static const struct http1_sink req_sink = {req_data, req_chunk, req_chunk_end};

/* ---- the response, forwarded to the client ---- */

static void emit_client(void *arg, const char *at, size_t len)
{
    struct client *c = arg;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (len == 0)
        return;
    c->bytes_out += len;
    if (c->chunked_out) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, at, len);
        ADD_LITERAL(out, "\r\n");
    } else {
        evbuffer_add(out, at, len);
    }
}

static int resp_data(void *arg, const char *at, size_t len)
{
    struct client *c = arg;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->discard)
        return 0;
    if (c->rw) {
        linkrw_feed(c->rw, at, len, emit_client, c);
        return 0;
    }
    c->bytes_out += len;
    if (c->chunked_out) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, at, len);
        ADD_LITERAL(out, "\r\n");
    } else {
        evbuffer_add(out, at, len);
    }
    return 0;
}

static const struct http1_sink resp_sink = {resp_data, NULL, NULL};

/* App Store Connect: "X-Rate-Limit: user-hour-lim:3600;user-hour-rem:3599;" on every
 * response; the latest figures are kept per credential (metrics, access log, quota reserve). */
static void note_rate_limit(struct client *c)
{
    const struct http1_header *h = http1_find(&c->resp, "x-rate-limit");
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
        runtime_quota_update(c->gen->rt, rt->conf->routes[c->route].credential_index, lim, rem);
    }
}

/* On rewrite_links routes, a JSON body without content coding gets its links rewritten (its
 * length changes, so it goes out chunked). */
static void start_rewriting(struct client *c)
{
    const struct http1_header *ct = http1_find(&c->resp, "content-type");
    const struct http1_header *ce = http1_find(&c->resp, "content-encoding");
    const struct target *t = &c->gen->rt->targets[c->gen->rt->route_target[c->route]];
    char from[LINKRW_MAX_ORIGIN + 16];
    if (c->origin == NULL || c->resp.body == HTTP1_BODY_NONE ||
        !linkrw_applies(ct ? ct->value : NULL, ct ? ct->value_len : 0, ce ? ce->value : NULL,
                        ce ? ce->value_len : 0))
        return;
    snprintf(from, sizeof(from), "https://%s", t->host_header);
    c->rw = malloc(sizeof(*c->rw));
    if (c->rw && linkrw_init(c->rw, from, c->origin) < 0) {
        free(c->rw);
        c->rw = NULL;
    }
}

static void write_response_head(struct client *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t before = evbuffer_get_length(out);
    start_rewriting(c);
    const struct http1_msg *r = &c->resp;
    int status = r->status;
    int keep_cl = r->body == HTTP1_BODY_NONE && (c->is_head || status == 304);
    if (keep_cl && c->origin) {
        /* A GET of this resource would be rewritten and sent chunked: its length here would
         * be the upstream's, not what the client would get. */
        const struct http1_header *ct = http1_find(r, "content-type");
        const struct http1_header *ce = http1_find(r, "content-encoding");
        if (linkrw_applies(ct ? ct->value : NULL, ct ? ct->value_len : 0, ce ? ce->value : NULL,
                           ce ? ce->value_len : 0))
            keep_cl = 0;
    }
    size_t i;
    if (r->reason_len)
        evbuffer_add_printf(out, "HTTP/1.1 %d %.*s\r\n", status, (int)r->reason_len, r->reason);
    else
        evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, http_reason(status));
    int has_connection = http1_find(r, "connection") != NULL;
    for (i = 0; i < r->nheaders; i++) {
        const struct http1_header *h = &r->headers[i];
        if (http_is_hop_by_hop(h->name, h->name_len) ||
            (has_connection && http_connection_lists(r, h->name, h->name_len)))
            continue;
        if (http1_name_is(h->name, h->name_len, "content-length") && !keep_cl)
            continue;
        evbuffer_add(out, h->name, h->name_len);
        ADD_LITERAL(out, ": ");
        evbuffer_add(out, h->value, h->value_len);
        ADD_LITERAL(out, "\r\n");
    }
    c->chunked_out = 0;
    switch (r->body) {
    case HTTP1_BODY_NONE:
        if (keep_cl)
            break; /* the upstream's Content-Length was copied above */
        if (c->is_head && status >= 200 && status != 204 && status != 304) {
            /* a HEAD on a rewritten resource: the headers a GET would get */
            if (!c->http10)
                ADD_LITERAL(out, "Transfer-Encoding: chunked\r\n");
        } else if (status != 204 && status >= 200) {
            ADD_LITERAL(out, "Content-Length: 0\r\n");
        }
        break;
    case HTTP1_BODY_LENGTH:
        if (!c->rw) {
            evbuffer_add_printf(out, "Content-Length: %" PRIu64 "\r\n", r->content_length);
            break;
        }
        /* a rewritten body's length is only known at its end: it goes out like these */
        __attribute__((fallthrough));
    case HTTP1_BODY_CHUNKED:
    case HTTP1_BODY_EOF:
        if (c->http10) {
            c->close_after = 1; /* HTTP/1.0 has no chunked coding: the close ends the body */
        } else {
            ADD_LITERAL(out, "Transfer-Encoding: chunked\r\n");
            c->chunked_out = 1;
        }
        break;
    }
    if (!c->keep_alive || c->client_eof || c->w->draining || !c->req_done)
        c->close_after = 1;
    if (c->close_after)
        ADD_LITERAL(out, "Connection: close\r\n");
    else if (c->http10)
        ADD_LITERAL(out, "Connection: keep-alive\r\n");
    ADD_LITERAL(out, "\r\n");
    c->resp_started = 1;
    c->status = status;
    c->bytes_out += evbuffer_get_length(out) - before;
}

static void attach_upstream(struct client *c);
static void acquire_upstream(struct client *c);

static void finish_exchange(struct client *c)
{
    end_exchange_objects(c);
    if (c->close_after || !c->req_done || c->client_eof || c->w->draining) {
        start_closing(c);
        return;
    }
    c->state = C_IDLE;
    c->resp_started = 0;
    arm_timer(c, limits(c)->idle_timeout_ms);
    if (c->read_paused) {
        c->read_paused = 0;
        bufferevent_enable(c->bev, EV_READ);
    }
    /* A pipelined request may already be waiting. */
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        process(c);
}

static void response_complete(struct client *c)
{
    struct evbuffer *upin = bufferevent_get_input(c->up->bev);
    int reusable = c->resp.keep_alive && c->req_done && c->resp.body != HTTP1_BODY_EOF &&
                   evbuffer_get_length(upin) == 0;
    upstream_put(c->up, reusable);
    c->up = NULL;
    if (c->discard) {
        /* Apple refused the cached token: it was dropped, so this mints a fresh one. */
        char err[256];
        size_t n;
        const char *const *scope = runtime_route_scope(c->gen->rt, c->route, &n);
        const struct credential *cred =
            &c->gen->rt->conf->credentials[c->gen->rt->conf->routes[c->route].credential_index];
        c->discard = 0;
        c->token_retried = 1;
        WSTAT_ADD(c->w, token_retries, 1);
        token_put(c->tok);
        c->tok = token_cache_get(c->gen->rt->tokens, cred, scope, n, err, sizeof(err));
        if (c->tok == NULL) {
            reply_error(c, proxy_err_token, err, 0);
            return;
        }
        acquire_upstream(c);
        return;
    }
    if (c->rw)
        linkrw_finish(c->rw, emit_client, c);
    if (c->chunked_out)
        ADD_LITERAL(bufferevent_get_output(c->bev), "0\r\n\r\n");
    finish_exchange(c);
}

/* The upstream broke the exchange. before_head: nothing of the response has arrived. */
static void upstream_failed(struct client *c, const char *code, const char *detail)
{
    if (c->up) {
        upstream_abort(c->up);
        c->up = NULL;
    }
    if (c->resp_started) {
        /* Cut the client off without a clean end so that it cannot mistake a truncated
         * body for a whole one. */
        log_msg(LOG_WARN, "client %s: response cut short: %s", c->peer, detail);
        c->outcome = "upstream_cut";
        c->err_code = code;
        c->dead = 1;
        return;
    }
    reply_error(c, code, detail, c->req_done);
    if (c->state == C_IDLE)
        process(c); /* a pipelined request may be waiting */
}

static void pause_upstream_if_full(struct client *c)
{
    if (c->up && evbuffer_get_length(bufferevent_get_output(c->bev)) >= OUT_HIGH) {
        bufferevent_disable(c->up->bev, EV_READ);
        c->up_paused = 1;
    }
}

/* force: process what is buffered even when the client's output is full (the upstream has
 * closed, so what is buffered is all that will come; it is at most one read). */
static void up_read_body_ex(struct client *c, int force)
{
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->up && evbuffer_get_length(in) > 0 && !c->dead) {
        if (c->resp.body == HTTP1_BODY_LENGTH && !c->rw) {
            /* Length-delimited: move the buffers across without parsing or copying. */
            size_t n = evbuffer_get_length(in);
            if (n > c->resp_remaining)
                n = (size_t)c->resp_remaining;
            if (c->discard) {
                evbuffer_drain(in, n);
            } else {
                evbuffer_remove_buffer(in, out, n);
                c->bytes_out += n;
            }
            c->resp_remaining -= n;
            if (c->resp_remaining == 0) {
                response_complete(c);
                return;
            }
        } else {
            struct evbuffer_iovec v;
            size_t used = 0;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            int r = http1_parse_body(&c->resp, v.iov_base, v.iov_len, &used);
            evbuffer_drain(in, used);
            if (r < 0) {
                upstream_failed(c, proxy_err_bad_upstream_response, c->resp.error_detail);
                return;
            }
            if (r == 1) {
                response_complete(c);
                return;
            }
        }
        if (!force) {
            pause_upstream_if_full(c);
            if (c->up_paused)
                return;
        }
    }
}

static void up_read_body(struct client *c)
{
    up_read_body_ex(c, 0);
}

static void up_read_head(struct client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    for (;;) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < resp_limits.max_head + 1 ? len : resp_limits.max_head + 1;
        if (n == 0)
            return;
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        int r = http1_parse_head(&c->resp, data, n);
        if (r == 0)
            return;
        if (r < 0) {
            upstream_failed(c, proxy_err_bad_upstream_response, c->resp.error_detail);
            return;
        }
        if (c->resp.status < 200) {
            /* Interim responses (100 Continue, 103) are not relayed: the proxy answered the
             * client's Expect itself. */
            evbuffer_drain(in, c->resp.head_len);
            http1_msg_init(&c->resp, HTTP_RESPONSE, &resp_limits);
            continue;
        }
        if (c->resp.status == 401 && !c->token_retried && c->idempotent &&
            c->req.body == HTTP1_BODY_NONE && c->req_done) {
            size_t ns;
            const char *const *scope = runtime_route_scope(c->gen->rt, c->route, &ns);
            const struct credential *cred =
                &c->gen->rt->conf
                     ->credentials[c->gen->rt->conf->routes[c->route].credential_index];
            if (token_cache_invalidate(c->gen->rt->tokens, cred, scope, ns, c->tok, 60) == 1) {
                log_msg(LOG_WARN, "upstream %s answered 401 to the cached token of %s: minting "
                        "a new one and retrying once", c->gen->rt->targets[
                        c->gen->rt->route_target[c->route]].name, cred->name);
                c->discard = 1;
            }
        }
        note_rate_limit(c);
        if (c->resp.status == 429) {
            /* Apple's Retry-After is respected for everyone using the credential. */
            const struct http1_header *ra = http1_find(&c->resp, "retry-after");
            double until = ra ? gateway_parse_retry_after(ra->value, ra->value_len, now_real())
                              : -1;
            if (until > 0)
                runtime_block_until(c->gen->rt,
                                    c->gen->rt->conf->routes[c->route].credential_index, until);
        }
        if (!c->discard)
            write_response_head(c);
        evbuffer_drain(in, c->resp.head_len);
        if (!c->req_done) {
            /* An answer before the whole request went up (a refusal mid-upload): its body
             * reads need the timeout that is otherwise armed once the request is sent. */
            struct timeval tv = ms_tv(limits(c)->upstream_response_timeout_ms);
            struct timeval wtv = ms_tv(limits(c)->send_timeout_ms);
            bufferevent_set_timeouts(c->up->bev, &tv, &wtv);
        }
        if (c->resp.phase == 2) {
            response_complete(c);
            return;
        }
        c->resp_remaining = c->resp.content_length;
        up_read_body(c);
        return;
    }
}

static void up_read_cb(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    if (c->state == C_EXCHANGE && c->up) {
        if (c->resp.phase == 0)
            up_read_head(c);
        else
            up_read_body(c);
    }
    if (c->dead)
        client_free(c);
}

static void up_write_cb(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    /* The upstream took the queued body: read more of it from the client. */
    if (c->read_paused && !c->req_done) {
        c->read_paused = 0;
        bufferevent_enable(c->bev, EV_READ);
        feed_body(c);
    }
    if (c->dead)
        client_free(c);
}

static void up_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct client *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (what & BEV_EVENT_TIMEOUT) {
        if (c->resp.phase == 0)
            upstream_failed(c, proxy_err_upstream_timeout,
                            (what & BEV_EVENT_READING) ? "the upstream did not answer in time"
                                                       : "the upstream did not read the request "
                                                         "in time");
        else
            upstream_failed(c, proxy_err_upstream_timeout, "the upstream stalled mid-response");
        goto out;
    }
    /* EOF or error. */
    if (c->resp.phase == 0) {
        if (evbuffer_get_length(in) == 0 && c->up->reused && !c->retried &&
            c->req.body_seen == 0 && (c->idempotent || c->req.body != HTTP1_BODY_NONE)) {
            /* The pooled connection was closed by the upstream while idle: nothing of this
             * request can have been processed, so it goes once more on a fresh connection. */
            upstream_abort(c->up);
            c->up = NULL;
            c->retried = 1;
            WSTAT_ADD(c->w, upstream_retries, 1);
            acquire_upstream(c);
            goto out;
        }
        upstream_failed(c, proxy_err_upstream_unreachable,
                        (what & BEV_EVENT_EOF)
                            ? "the upstream closed the connection before the response head"
                            : "the upstream connection failed before the response head");
        goto out;
    }
    if (what & BEV_EVENT_EOF) {
        /* What was read before the close may still be waiting behind backpressure. */
        up_read_body_ex(c, 1);
        if (c->up == NULL || c->dead || c->state != C_EXCHANGE)
            goto out;
        /* A body that ends with the connection is only whole if TLS ended cleanly
         * (close_notify): a bare FIN could be a truncation by someone on the path. */
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        int clean = ssl && (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN);
        if (c->resp.body == HTTP1_BODY_EOF && clean && http1_parse_eof(&c->resp) == 1) {
            response_complete(c);
            goto out;
        }
    }
    if (c->up)
        upstream_failed(c, proxy_err_bad_upstream_response,
                        "the upstream closed the connection mid-response");
out:
    if (c->dead)
        client_free(c);
}

/* ---- sending the request ---- */

static void send_request(struct client *c)
{
    struct evbuffer *out = bufferevent_get_output(c->up->bev);
    evbuffer_add(out, c->up_head, c->up_head_len);
    evbuffer_add(out, c->tok->line, c->tok->line_len);
    ADD_LITERAL(out, "\r\n");
    if (c->req.body == HTTP1_BODY_NONE) {
        c->req_done = 1;
    } else if (c->req.expect_continue &&
               evbuffer_get_length(bufferevent_get_input(c->bev)) == 0 &&
               c->req.body_seen == 0) {
        ADD_LITERAL(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
    }
}

static void attach_upstream(struct client *c)
{
    struct timeval rtv = ms_tv(limits(c)->upstream_response_timeout_ms);
    struct timeval wtv = ms_tv(limits(c)->send_timeout_ms);
    bufferevent_setcb(c->up->bev, up_read_cb, up_write_cb, up_event_cb, c);
    bufferevent_setwatermark(c->up->bev, EV_WRITE, OUT_LOW, 0);
    /* Large bodies move in large steps (libevent's default is 16 KiB per callback). */
    bufferevent_set_max_single_read(c->up->bev, OUT_HIGH);
    bufferevent_set_max_single_write(c->up->bev, OUT_HIGH);
    /* The wait for the first byte of the answer starts when the request is all sent: a long
     * upload is covered by client_body_timeout and send_timeout, not by this. */
    bufferevent_set_timeouts(c->up->bev, c->req.body == HTTP1_BODY_NONE ? &rtv : NULL, &wtv);
    bufferevent_enable(c->up->bev, EV_READ | EV_WRITE);
    c->up_paused = 0;
    c->up_reused = c->up->reused;
    c->req_remaining = c->req.content_length;
    c->state = C_EXCHANGE;
    c->resp.request_is_head = c->is_head; /* kept by init: a HEAD response has no body */
    http1_msg_init(&c->resp, HTTP_RESPONSE, &resp_limits);
    c->resp.sink = &resp_sink;
    c->resp.sink_arg = c;
    send_request(c);
    if (!c->req_done) {
        struct timeval btv = ms_tv(limits(c)->client_body_timeout_ms);
        struct timeval stv = ms_tv(limits(c)->send_timeout_ms);
        bufferevent_set_timeouts(c->bev, &btv, &stv);
        feed_body(c);
    }
}

static void up_ready(struct upconn *conn, enum upstream_error err, const char *detail, void *arg)
{
    struct client *c = arg;
    if (err != UPSTREAM_OK) {
        const char *code = (err == UPSTREAM_ERR_TLS)                ? proxy_err_upstream_tls
                           : (err == UPSTREAM_ERR_CONNECT_TIMEOUT ||
                              err == UPSTREAM_ERR_TLS_TIMEOUT)      ? proxy_err_upstream_timeout
                                                                    : proxy_err_upstream_unreachable;
        c->up = NULL;
        reply_error(c, code, detail, c->req.body == HTTP1_BODY_NONE);
        if (c->state == C_IDLE)
            process(c); /* a pipelined request may be waiting */
    } else {
        c->up = conn;
        attach_upstream(c);
    }
    if (c->dead)
        client_free(c);
}

static void acquire_upstream(struct client *c)
{
    struct upool *pool = &c->gen->pools[c->gen->rt->route_target[c->route]];
    struct upconn *conn = NULL;
    c->state = C_CONNECTING;
    int r = upstream_get(pool, up_ready, c, &conn);
    if (r < 0) {
        reply_error(c, proxy_err_upstream_unreachable, "out of memory", 0);
        return;
    }
    /* Held from now on, ready or not: if the client goes away first, client_free aborts the
     * pending connection and its ready callback never runs on a freed client. */
    c->up = conn;
    if (r == 0)
        attach_upstream(c);
}

/* Forwards the request body that has arrived, as far as the upstream's buffer allows. */
static void feed_body(struct client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->req_done && c->up && !c->dead && c->state == C_EXCHANGE) {
        struct evbuffer *out = bufferevent_get_output(c->up->bev);
        if (evbuffer_get_length(out) >= OUT_HIGH) {
            bufferevent_disable(c->bev, EV_READ);
            c->read_paused = 1;
            return;
        }
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            break;
        if (c->req.body == HTTP1_BODY_LENGTH) {
            size_t n = avail < c->req_remaining ? avail : (size_t)c->req_remaining;
            evbuffer_remove_buffer(in, out, n);
            c->req.body_seen += n;
            c->req_remaining -= n;
            if (c->req_remaining == 0)
                c->req_done = 1;
        } else {
            struct evbuffer_iovec v;
            size_t used = 0;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            int r = http1_parse_body(&c->req, v.iov_base, v.iov_len, &used);
            evbuffer_drain(in, used);
            if (r < 0) {
                const char *code = code_for_status(c->req.error_status);
                c->close_after = 1;
                reply_error(c, code, c->req.error_detail, 0);
                return;
            }
            if (r == 1) {
                ADD_LITERAL(out, "0\r\n\r\n");
                c->req_done = 1;
            }
        }
    }
    if (c->req_done && !c->dead) {
        struct timeval stv = ms_tv(limits(c)->send_timeout_ms);
        bufferevent_set_timeouts(c->bev, NULL, &stv);
        if (c->up && c->resp.phase == 0) {
            struct timeval rtv = ms_tv(limits(c)->upstream_response_timeout_ms);
            bufferevent_set_timeouts(c->up->bev, &rtv, &stv);
        }
    } else if (!c->dead && !c->req_done && c->client_eof && !c->read_paused &&
               evbuffer_get_length(in) == 0) {
        /* The client closed before the end of its request: the upstream connection, holding
         * a partial request, cannot be reused; the exchange is abandoned. */
        if (!c->outcome)
            c->outcome = "client_abort";
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
    if (getsockname(bufferevent_getfd(c->bev), (struct sockaddr *)&ss, &sl) != 0)
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
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
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
        size_t k = (size_t)(cl - rt->conf->clients) * rt->conf->nroutes + c->route;
        if (rt->client_scope[k]) {
            *n = rt->client_scope_n[k];
            return (const char *const *)rt->client_scope[k];
        }
    }
    return runtime_route_scope(rt, c->route, n);
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
        log_msg(LOG_WARN, "client %s%s%s: refused: %s", c->peer, c->client_name ? " " : "",
                c->client_name ? c->client_name : "", v->detail);
    reply_error_ex(c, v->code, v->detail, keep, extra);
}

/* The head is complete: plan it (route, token, upstream head), drain it from the input and
 * start the exchange, or answer the proxy's error. */
static void start_exchange(struct client *c)
{
    struct http1_msg *m = &c->req;
    struct request_plan plan;
    struct runtime *rt;
    char err[256];

    WSTAT_ADD(c->w, requests, 1);
    evtimer_del(c->timer);
    c->gen = wgen_ref(c->w->gen);
    rt = c->gen->rt;
    c->in_exchange = 1;
    c->t_start_us = mono_us();
    c->t_start = now_real();
    c->status = 0;
    c->label = 0;
    c->up_reused = -1;
    c->err_code = NULL;
    c->outcome = NULL;
    c->bytes_out = 0;
    c->method_len = m->method_len < sizeof(c->method) ? m->method_len : 0;
    memcpy(c->method, m->method, c->method_len);
    if (accesslog_enabled()) {
        size_t tl = m->target_len > 4096 ? 4096 : m->target_len;
        free(c->log_line);
        c->log_line = malloc(m->method_len + tl + 2);
        if (c->log_line) {
            memcpy(c->log_line, m->method, m->method_len);
            c->log_line[m->method_len] = '\0';
            memcpy(c->log_line + m->method_len + 1, m->target, tl);
            c->log_line[m->method_len + 1 + tl] = '\0';
            c->log_method_len = m->method_len;
            c->log_target_len = tl;
        }
    }
    c->keep_alive = m->keep_alive;
    c->req_done = c->resp_started = c->retried = c->token_retried = c->discard = 0;
    c->close_after = c->chunked_out = c->last_chunk = 0;
    c->req.sink = &req_sink;
    c->req.sink_arg = c;
    c->client_name = NULL;
    if (c->tls && c->tls_subject == NULL)
        c->tls_subject = peer_subject(c);
    const struct conf_client *cl = NULL;
    struct gateway_verdict v;
    /* Who is asking comes first: an unknown client learns nothing about the routes. */
    gateway_identify(rt->conf, m, c->tls_subject, &c->peer_addr.sa, &cl, &v);
    if (cl)
        c->client_name = cl->name;
    int keep = m->body == HTTP1_BODY_NONE;
    if (v.code) {
        evbuffer_drain(bufferevent_get_input(c->bev), m->head_len);
        reply_verdict(c, &v, keep);
        return;
    }
    if (request_plan(rt, m, &plan) < 0) {
        evbuffer_drain(bufferevent_get_input(c->bev), m->head_len);
        reply_error(c, proxy_err_bad_request, "out of memory", 0);
        return;
    }
    c->http10 = plan.http10;
    c->is_head = plan.is_head;
    c->idempotent = plan.idempotent;
    c->route = plan.route;
    if (plan.code == NULL || plan.code == proxy_err_body_too_large)
        c->label = rt->route_label[plan.route];
    if (plan.code == NULL && rt->conf->routes[plan.route].rewrite_links) {
        /* The origin the client addressed, for rewriting links (copied: the head goes). An
         * HTTP/1.0 request may name none: then the address it connected to. */
        char local[INET6_ADDRSTRLEN + 16];
        const char *auth = plan.authority;
        size_t al = plan.authority_len > 256 ? 256 : plan.authority_len;
        if (auth == NULL && local_authority(c, local, sizeof(local)) == 0) {
            auth = local;
            al = strlen(local);
        }
        free(c->origin_pending);
        c->origin_pending = auth ? malloc(al + 9) : NULL;
        if (c->origin_pending)
            snprintf(c->origin_pending, al + 9, "%s://%.*s", c->tls ? "https" : "http", (int)al,
                     auth);
    }
    if (plan.code == NULL) {
        /* Policy before any token is taken: the client's credentials and rules, its rate, and
         * Apple's quota for the credential. plan.path points into the head: still there. */
        gateway_authorize(rt->conf, cl, m->method, m->method_len, plan.path, plan.path_len,
                          c->route, &v);
        /* Apple's quota first, so that a request refused for it costs the client nothing
         * of its own rate. */
        if (v.code == NULL)
            gateway_quota_check(rt, cl, c->route, now_real(), &v);
        if (v.code == NULL && cl)
            gateway_rate_take(rt->buckets, rt->conf, (size_t)(cl - rt->conf->clients),
                              now_real(), &v);
    }
    evbuffer_drain(bufferevent_get_input(c->bev), m->head_len); /* m's spans are gone now */
    if (plan.code || v.code) {
        if (plan.code)
            reply_error(c, plan.code, plan.detail, plan.keep);
        else
            reply_verdict(c, &v, keep);
        request_plan_deinit(&plan);
        return;
    }
    const struct credential *cred =
        &rt->conf->credentials[rt->conf->routes[c->route].credential_index];
    size_t nscope;
    const char *const *scope = client_scope(c, cl, &nscope);
    c->tok = token_cache_get(rt->tokens, cred, scope, nscope, err, sizeof(err));
    if (c->tok == NULL) {
        log_msg(LOG_ERROR, "credential %s: cannot mint a token: %s", cred->name, err);
        reply_error(c, proxy_err_token, "the token for this route could not be made", keep);
        request_plan_deinit(&plan);
        return;
    }
    if (rt->conf->routes[c->route].rewrite_links && c->origin_pending) {
        c->origin = c->origin_pending;
        c->origin_pending = NULL;
    }
    c->up_head = plan.head; /* ownership moves to the client */
    c->up_head_len = plan.head_len;
    plan.head = NULL;
    acquire_upstream(c);
}

static void process(struct client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len;
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
                c->state = C_HEAD;
                arm_timer(c, limits(c)->client_header_timeout_ms);
            }
            {
                /* The current configuration's limits (a reload may have changed them). */
                const struct http1_limits *rl = &c->w->gen->req_limits;
                size_t n = len < rl->max_head + 1 ? len : rl->max_head + 1;
                c->req.limits = rl;
                const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
                int r = http1_parse_head(&c->req, data, n);
                if (r == 0)
                    return;
                if (r < 0) {
                    reply_error(c, code_for_status(c->req.error_status), c->req.error_detail, 0);
                    return;
                }
            }
            start_exchange(c);
            continue;
        case C_EXCHANGE:
            feed_body(c);
            return;
        case C_CONNECTING:
            return; /* the body waits until the upstream is ready */
        case C_CLOSING:
            evbuffer_drain(in, evbuffer_get_length(in));
            return;
        }
    }
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    process(c);
    if (c->dead)
        client_free(c);
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    size_t left = evbuffer_get_length(bufferevent_get_output(bev));
    if (c->state == C_CLOSING) {
        if (left == 0)
            closing_flushed(c);
    } else if (c->up_paused && c->up) {
        c->up_paused = 0;
        bufferevent_enable(c->up->bev, EV_READ);
        up_read_body(c);
    }
    if (c->dead)
        client_free(c);
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct client *c = arg;
    if (what & BEV_EVENT_CONNECTED)
        return; /* the TLS handshake with the client is done: requests come as reads */
    if (c->tls && (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF))) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        if (ssl && !SSL_is_init_finished(ssl)) {
            /* A refused or abandoned TLS handshake (an unknown client certificate, a client
             * that does not trust the listener's): counted, and said at debug level. */
            unsigned long e = bufferevent_get_openssl_error(bev);
            char reason[160] = "connection closed";
            if (e)
                ERR_error_string_n(e, reason, sizeof(reason));
            WSTAT_ADD(c->w, client_tls_failures, 1);
            log_msg(LOG_DEBUG, "client %s: TLS handshake failed: %s", c->peer, reason);
            ERR_clear_error();
            c->dead = 1;
            client_free(c);
            return;
        }
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if ((what & BEV_EVENT_READING) && c->state == C_EXCHANGE && !c->req_done) {
            reply_error(c, proxy_err_request_timeout, "the request body stalled", 0);
        } else {
            if (c->in_exchange && !c->outcome)
                c->outcome = "client_abort"; /* it stopped reading its response */
            c->dead = 1;
        }
    } else if (what & BEV_EVENT_EOF) {
        c->client_eof = 1;
        if (c->in_exchange && !c->outcome)
            c->outcome = "client_abort"; /* unless the response still completes */
        if (c->state == C_CLOSING || c->state == C_IDLE ||
            (c->state == C_HEAD && evbuffer_get_length(bufferevent_get_input(bev)) == 0)) {
            c->dead = c->state != C_CLOSING ||
                      evbuffer_get_length(bufferevent_get_output(bev)) == 0;
        } else if (c->state == C_HEAD) {
            c->dead = 1; /* half a request head, then nothing */
        } else if (c->state == C_EXCHANGE && !c->req_done) {
            /* What the client sent before closing may still complete the request: forward it;
             * feed_body ends the connection if the request stays incomplete. */
            feed_body(c);
        }
        /* A half-close after a whole request (forwarded, or waiting in the input while the
         * upstream connection opens, checked when it is ready): the response is still
         * delivered. */
    } else {
        if (c->in_exchange && !c->outcome)
            c->outcome = "client_abort";
        c->dead = 1;
    }
    if (c->dead)
        client_free(c);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    switch (c->state) {
    case C_HEAD:
        reply_error(c, proxy_err_request_timeout,
                    "the request head did not arrive within client_header_timeout", 0);
        break;
    case C_IDLE:
    case C_CLOSING:
        c->dead = 1;
        break;
    default:
        break;
    }
    if (c->dead)
        client_free(c);
}

int client_new(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
               SSL_CTX *tls)
{
    const struct conf_limits *lim = &w->gen->rt->conf->limits;
    struct client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return -1;
    }
    c->w = w;
    if (tls) {
        SSL *ssl = SSL_new(tls);
        c->bev = ssl ? bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (c->bev == NULL && ssl)
            SSL_free(ssl);
        if (c->bev) {
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
            c->tls = 1;
        }
    } else {
        c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->timer = evtimer_new(w->base, timer_cb, c);
    if (c->bev == NULL || c->timer == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return -1;
    }
    if ((size_t)addrlen <= sizeof(c->peer_addr))
        memcpy(&c->peer_addr, addr, (size_t)addrlen);
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)addr;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, ntohs(s->sin_port));
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)addr;
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip, ntohs(s->sin6_port));
    }
    http1_msg_init(&c->req, HTTP_REQUEST, &w->gen->req_limits);
    TAILQ_INSERT_TAIL(&w->clients, c, link);
    w->nclients++;
    WSTAT_ADD(w, connections_accepted, 1);
    c->state = C_IDLE;
    bufferevent_setcb(c->bev, client_read_cb, client_write_cb, client_event_cb, c);
    /* Input is bounded: the head limit plus one read; body reads pause on backpressure. */
    bufferevent_setwatermark(c->bev, EV_READ, 0,
                             lim->max_header_bytes + 1 > OUT_HIGH ? lim->max_header_bytes + 1
                                                                  : OUT_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    bufferevent_set_max_single_read(c->bev, OUT_HIGH);
    bufferevent_set_max_single_write(c->bev, OUT_HIGH);
    {
        struct timeval stv = ms_tv(lim->send_timeout_ms);
        bufferevent_set_timeouts(c->bev, NULL, &stv);
    }
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    /* The first request's head must arrive within the header timeout from the accept. */
    c->state = C_HEAD;
    arm_timer(c, lim->client_header_timeout_ms);
    return 0;
}

void client_drain_all(struct worker *w)
{
    struct client *c, *next;
    for (c = TAILQ_FIRST(&w->clients); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if ((c->state == C_IDLE || c->state == C_HEAD) &&
            evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            client_free(c);
    }
}

void client_free_all(struct worker *w)
{
    struct client *c;
    while ((c = TAILQ_FIRST(&w->clients)) != NULL)
        client_free(c);
}
