/* upstream: TLS connections to Apple's hosts, opened without blocking and kept in per-worker
 * keep-alive pools. */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "proxy/h2up.h"
#include "proxy/log.h"

enum { UP_RESOLVING, UP_CONNECTING, UP_HANDSHAKE, UP_ACTIVE, UP_IDLE, UP_ABANDONED };

static int ex_index = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static void ex_index_init(void)
{
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static struct worker *worker_of(const struct upool *pool)
{
    return pool->gen->worker;
}

/* A connection changes state: the worker-wide gauges and the upstream's own move together
 * (connecting is counted in active too, see metrics_up_gauge). */
static void pool_gauge(struct upool *pool, enum metrics_up_gauge g, int delta)
{
    struct worker *w = worker_of(pool);
    int proto = pool->target->h2 ? UP_PROTO_H2 : UP_PROTO_HTTP1;
    if (g == METRICS_UP_IDLE)
        WSTAT_ADD(w, upstream_idle, delta);
    else if (g == METRICS_UP_ACTIVE)
        WSTAT_ADD(w, upstream_active, delta);
    /* Every connection is idle or active, so their sum is the open ones. An HTTP/1.1
     * connection that is active and no longer connecting carries one request; HTTP/2
     * connections count their streams themselves (h2up.c). */
    if (g != METRICS_UP_CONNECTING)
        WSTAT_ADD(w, proto_conns[proto], delta);
    if (proto == UP_PROTO_HTTP1 && g != METRICS_UP_IDLE)
        WSTAT_ADD(w, proto_streams[proto], g == METRICS_UP_ACTIVE ? delta : -delta);
    metrics_upstream_gauge(&w->metrics, pool->target->metrics_label, g, delta);
}

static enum metrics_up_failure failure_kind(enum upstream_error err)
{
    switch (err) {
    case UPSTREAM_ERR_RESOLVE:
        return METRICS_UPF_RESOLVE;
    case UPSTREAM_ERR_CONNECT:
        return METRICS_UPF_CONNECT;
    case UPSTREAM_ERR_TLS:
        return METRICS_UPF_TLS;
    default:
        return METRICS_UPF_TIMEOUT;
    }
}

static const struct conf_limits *limits_of(const struct upool *pool)
{
    return &pool->gen->rt->conf->limits;
}

static struct timeval ms_tv(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* TLS 1.3 tickets arrive after the handshake: keep the newest for the next connection. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct upconn *c = ex_index >= 0 ? SSL_get_ex_data(ssl, ex_index) : NULL;
    if (c == NULL || c->pool == NULL)
        return 0;
    if (c->pool->session)
        SSL_SESSION_free(c->pool->session);
    c->pool->session = sess;
    return 1; /* we keep the reference */
}

void upstream_tls_ctx_prepare(SSL_CTX *ctx)
{
    pthread_once(&ex_once, ex_index_init);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
}

void upool_init(struct upool *pool, struct wgen *gen, struct target *target)
{
    memset(pool, 0, sizeof(*pool));
    pool->gen = gen;
    pool->target = target;
    pool->window_tick = gen->worker ? gen->worker->house_ticks : 0;
    TAILQ_INIT(&pool->idle);
}

size_t upool_idle_cap(size_t peak, size_t peak_prev, size_t hard_cap)
{
    size_t demand = peak > peak_prev ? peak : peak_prev;
    /* One connection is always worth keeping: a request every half minute must not pay a
     * handshake each time; upstream_idle_timeout decides when even that one goes. */
    if (demand < 1)
        demand = 1;
    return demand < hard_cap ? demand : hard_cap;
}

/* One more connection is active: the demand window remembers the most at once. */
static void pool_note_active(struct upool *pool)
{
    pool->nactive++;
    if (pool->nactive > pool->peak)
        pool->peak = pool->nactive;
}

static void conn_free(struct upconn *c)
{
    h1up_deinit(c);
    if (c->io)
        event_free(c->io);
    if (c->timer)
        event_free(c->timer);
    if (c->has_stream) {
        if (c->s.ssl)
            SSL_set_ex_data(c->s.ssl, ex_index, NULL);
        stream_close(&c->s); /* closes the socket and frees the SSL */
    } else if (c->fd >= 0) {
        close(c->fd);
    }
    free(c);
}

void upool_deinit(struct upool *pool)
{
    struct upconn *c;
    h2up_pool_free(pool);
    while ((c = TAILQ_FIRST(&pool->idle)) != NULL) {
        TAILQ_REMOVE(&pool->idle, c, link);
        pool_gauge(pool, METRICS_UP_IDLE, -1);
        conn_free(c);
    }
    pool->nidle = 0;
    if (pool->session)
        SSL_SESSION_free(pool->session);
    pool->session = NULL;
}

/* Reports the outcome to the owner; the connection is freed first on failure. Runs only from
 * event-loop callbacks, never from inside upstream_get. */
static void report(struct upconn *c, enum upstream_error err, const char *detail)
{
    void (*cb)(struct upconn *, enum upstream_error, const char *, void *) = c->ready_cb;
    void *arg = c->arg;
    upstream_stream_ready sready = c->stream_ready;
    void *sarg = c->stream_ready_arg;
    char msg[256];
    c->ready_cb = NULL;
    c->stream_ready = NULL;
    pool_gauge(c->pool, METRICS_UP_CONNECTING, -1);
    if (err == UPSTREAM_OK) {
        c->state = UP_ACTIVE;
        if (sready)
            sready(&c->us, UPSTREAM_OK, NULL, sarg);
        else if (cb)
            cb(c, UPSTREAM_OK, NULL, arg);
        return;
    }
    snprintf(msg, sizeof(msg), "%s", detail ? detail : "");
    c->pool->nactive--;
    pool_gauge(c->pool, METRICS_UP_ACTIVE, -1);
    metrics_upstream_failed(&worker_of(c->pool)->metrics, c->pool->target->metrics_label,
                            failure_kind(err));
    conn_free(c);
    if (sready)
        sready(NULL, err, msg, sarg);
    else if (cb)
        cb(NULL, err, msg, arg);
}

/* Between leaving the pool and the new owner's stream_setcb (no event is handled between). */
static void detached_cb(struct stream *s, unsigned ev, void *arg)
{
    (void)s;
    (void)ev;
    (void)arg;
}

static void deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *c = arg;
    report(c, c->err, c->detail);
}

/* A failure found while upstream_get is still on the stack: reported from the loop. */
static void fail_later(struct upconn *c, enum upstream_error err, const char *detail)
{
    c->err = err;
    snprintf(c->detail, sizeof(c->detail), "%s", detail);
    event_active(c->timer, EV_TIMEOUT, 1);
}

static void handshake_cb(struct stream *s, unsigned ev, void *arg)
{
    struct upconn *c = arg;
    struct target *t = c->pool->target;
    char detail[256];
    if (!s->handshaking && !(ev & (STREAM_EOF | STREAM_ERROR))) {
        const unsigned char *alpn = NULL;
        unsigned int alpn_len = 0;
        if (!(ev & STREAM_CONNECTED) && !(ev & STREAM_ALARM))
            return; /* nothing the owner-to-be must know */
        SSL_get0_alpn_selected(s->ssl, &alpn, &alpn_len);
        /* HTTP/2 only when the upstream chose it: an h2 target offers nothing else, and a
         * server that ignores ALPN would be read as the wrong protocol. */
        if (t->h2 && !(alpn_len == 2 && memcmp(alpn, "h2", 2) == 0)) {
            snprintf(detail, sizeof(detail), "%s did not select ALPN protocol h2 (HTTP/2)%s%.*s",
                     t->name, alpn_len ? "; it chose " : "", (int)alpn_len,
                     alpn_len ? (const char *)alpn : "");
            report(c, UPSTREAM_ERR_TLS, detail);
            return;
        }
        if (!t->h2 && alpn_len && !(alpn_len == 8 && memcmp(alpn, "http/1.1", 8) == 0)) {
            snprintf(detail, sizeof(detail), "%s selected ALPN protocol %.*s, not http/1.1",
                     t->name, (int)alpn_len, (const char *)alpn);
            report(c, UPSTREAM_ERR_TLS, detail);
            return;
        }
        WSTAT_ADD(worker_of(c->pool), upstream_handshakes, 1);
        metrics_upstream_opened(&worker_of(c->pool)->metrics, c->pool->target->metrics_label);
        stream_set_alarm(s, 0);
        report(c, UPSTREAM_OK, NULL);
        return;
    }
    if (s->handshaking && (ev & STREAM_ALARM) && !(ev & (STREAM_EOF | STREAM_ERROR))) {
        snprintf(detail, sizeof(detail), "TLS handshake with %s (%s:%d) timed out", t->name,
                 t->connect_host, t->connect_port);
        report(c, UPSTREAM_ERR_TLS_TIMEOUT, detail);
        return;
    }
    long vr = SSL_get_verify_result(s->ssl);
    if (vr != X509_V_OK) {
        snprintf(detail, sizeof(detail), "certificate verification failed for %s: %s", t->name,
                 X509_verify_cert_error_string(vr));
    } else if (s->ssl_error) {
        char ebuf[160];
        ERR_error_string_n(s->ssl_error, ebuf, sizeof(ebuf));
        snprintf(detail, sizeof(detail), "TLS handshake with %s failed: %s", t->name, ebuf);
    } else {
        /* Neither a certificate nor a TLS protocol error: the upstream closed or reset the
         * connection during the handshake. That is reachability, not certificate trouble. */
        snprintf(detail, sizeof(detail), "%s (%s:%d) closed the connection during the TLS "
                 "handshake%s%s", t->name, t->connect_host, t->connect_port,
                 s->sys_errno ? ": " : "", s->sys_errno ? strerror(s->sys_errno) : "");
        report(c, UPSTREAM_ERR_CONNECT, detail);
        return;
    }
    report(c, UPSTREAM_ERR_TLS, detail);
}

static void start_tls(struct upconn *c)
{
    struct upool *pool = c->pool;
    struct target *t = pool->target;
    struct worker *w = pool->gen->worker;
    const struct conf_limits *lim = limits_of(pool);
    SSL *ssl = SSL_new(t->ssl_ctx);
    if (ssl == NULL) {
        report(c, UPSTREAM_ERR_TLS, "cannot create a TLS session");
        return;
    }
    SSL_set_ex_data(ssl, ex_index, c);
    /* RFC 6125 name check on the upstream's configured name, never on the connect address;
     * the subject CN is never consulted, so a certificate must carry the name in its SAN. */
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
                               X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
    /* RFC 6066 3: SNI carries host names only, never an IP literal. */
    unsigned char ipbuf[16];
    int is_ip = inet_pton(AF_INET, t->name, ipbuf) == 1 || inet_pton(AF_INET6, t->name, ipbuf) == 1;
    if (!SSL_set1_host(ssl, t->name) || (!is_ip && !SSL_set_tlsext_host_name(ssl, t->name))) {
        SSL_free(ssl);
        report(c, UPSTREAM_ERR_TLS, "cannot set the upstream name on the TLS session");
        return;
    }
    if (pool->session)
        SSL_set_session(ssl, pool->session);
    if (stream_init(&c->s, &w->sctx, c->fd, ssl, STREAM_TLS_CONNECT, handshake_cb, c) < 0) {
        SSL_free(ssl);
        report(c, UPSTREAM_ERR_TLS, "cannot create the TLS connection");
        return;
    }
    c->has_stream = 1;
    c->fd = -1; /* owned by the stream now */
    stream_set_alarm(&c->s, (uint32_t)lim->upstream_handshake_timeout_ms);
    c->state = UP_HANDSHAKE;
}

static void connect_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *c = arg;
    struct target *t = c->pool->target;
    char detail[256];
    if (what & EV_TIMEOUT) {
        snprintf(detail, sizeof(detail), "connecting to %s (%s:%d) timed out", t->name,
                 t->connect_host, t->connect_port);
        report(c, UPSTREAM_ERR_CONNECT_TIMEOUT, detail);
        return;
    }
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr != 0) {
        snprintf(detail, sizeof(detail), "cannot connect to %s (%s:%d): %s", t->name,
                 t->connect_host, t->connect_port, strerror(soerr));
        report(c, UPSTREAM_ERR_CONNECT, detail);
        return;
    }
    event_free(c->io);
    c->io = NULL;
    start_tls(c);
}

/* Opens the TCP connection; failures found here are reported later (fail_later). */
static void start_connect(struct upconn *c, const struct sockaddr *sa, socklen_t salen)
{
    struct target *t = c->pool->target;
    const struct conf_limits *lim = limits_of(c->pool);
    char detail[256];
    int one = 1;
    c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(detail, sizeof(detail), "cannot create a socket: %s", strerror(errno));
        fail_later(c, UPSTREAM_ERR_CONNECT, detail);
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    WSTAT_ADD(worker_of(c->pool), upstream_connects, 1);
    if (connect(c->fd, sa, salen) < 0 && errno != EINPROGRESS) {
        snprintf(detail, sizeof(detail), "cannot connect to %s (%s:%d): %s", t->name,
                 t->connect_host, t->connect_port, strerror(errno));
        fail_later(c, UPSTREAM_ERR_CONNECT, detail);
        return;
    }
    c->state = UP_CONNECTING;
    c->io = event_new(c->pool->gen->worker->base, c->fd, EV_WRITE, connect_cb, c);
    struct timeval tv = ms_tv(lim->upstream_connect_timeout_ms);
    if (c->io == NULL || event_add(c->io, &tv) < 0)
        fail_later(c, UPSTREAM_ERR_CONNECT, "cannot watch the upstream socket");
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct upconn *c = arg;
    c->dns_req = NULL;
    if (c->state == UP_ABANDONED) {
        if (res)
            evutil_freeaddrinfo(res);
        conn_free(c);
        return;
    }
    if (result != 0 || res == NULL) {
        char detail[256];
        snprintf(detail, sizeof(detail), "cannot resolve %s: %s", c->pool->target->connect_host,
                 evutil_gai_strerror(result));
        if (res)
            evutil_freeaddrinfo(res);
        fail_later(c, UPSTREAM_ERR_RESOLVE, detail);
        return;
    }
    start_connect(c, res->ai_addr, (socklen_t)res->ai_addrlen);
    evutil_freeaddrinfo(res);
}

int upstream_get(struct upool *pool,
                 void (*ready_cb)(struct upconn *, enum upstream_error, const char *, void *),
                 void *arg, struct upconn **out)
{
    struct upconn *c;
    struct worker *w = pool->gen->worker;
    while ((c = TAILQ_FIRST(&pool->idle)) != NULL) {
        TAILQ_REMOVE(&pool->idle, c, link);
        pool->nidle--;
        if (stream_input_length(&c->s) > 0 || c->s.eof || c->s.failed) {
            conn_free(c); /* the upstream sent something unasked, or went away */
            continue;
        }
        c->state = UP_ACTIVE;
        c->reused = 1;
        pool_note_active(pool);
        pool_gauge(pool, METRICS_UP_IDLE, -1);
        pool_gauge(pool, METRICS_UP_ACTIVE, 1);
        stream_set_timeouts(&c->s, 0, 0);
        stream_setcb(&c->s, detached_cb, c); /* the caller attaches its own at once */
        WSTAT_ADD(w, upstream_reused, 1);
        *out = c;
        return 0;
    }
    return upstream_connect(pool, ready_cb, arg, out);
}

int upstream_stream_get(struct upool *pool, const struct credential *cred,
                        upstream_stream_ready ready, void *arg, struct upstream_stream **out)
{
    struct upconn *conn = NULL;
    int r;
    *out = NULL;
    if (pool->target->h2)
        return h2up_get(pool, cred, ready, arg, out);
    r = upstream_get(pool, NULL, NULL, &conn);
    if (r < 0)
        return r;
    /* Never reported before this returns: the exchange's callback is in place in time. */
    if (r == 1) {
        conn->stream_ready = ready;
        conn->stream_ready_arg = arg;
    }
    *out = &conn->us;
    return r;
}

int upstream_connect(struct upool *pool,
                     void (*ready_cb)(struct upconn *, enum upstream_error, const char *, void *),
                     void *arg, struct upconn **out)
{
    struct upconn *c;
    struct worker *w = pool->gen->worker;
    *out = NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    c->pool = pool;
    c->fd = -1;
    h1up_init(c);
    c->state = UP_RESOLVING;
    c->ready_cb = ready_cb;
    c->arg = arg;
    c->timer = evtimer_new(w->base, deferred_cb, c);
    if (c->timer == NULL) {
        free(c);
        return -1;
    }
    pool_note_active(pool);
    pool_gauge(pool, METRICS_UP_ACTIVE, 1);
    pool_gauge(pool, METRICS_UP_CONNECTING, 1);

    struct target *t = pool->target;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, t->connect_host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)t->connect_port);
        start_connect(c, (struct sockaddr *)sin, sizeof(*sin));
    } else if (inet_pton(AF_INET6, t->connect_host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)t->connect_port);
        start_connect(c, (struct sockaddr *)sin6, sizeof(*sin6));
    } else {
        struct evutil_addrinfo hints;
        char port[8];
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
        snprintf(port, sizeof(port), "%d", t->connect_port);
        /* The callback may run before this returns (cached or local names): it never reports
         * synchronously, see fail_later. */
        struct evdns_getaddrinfo_request *req =
            evdns_getaddrinfo(w->dns, t->connect_host, port, &hints, dns_cb, c);
        if (c->state == UP_RESOLVING)
            c->dns_req = req;
    }
    *out = c;
    return 1;
}

static void idle_close(struct upconn *c)
{
    TAILQ_REMOVE(&c->pool->idle, c, link);
    c->pool->nidle--;
    pool_gauge(c->pool, METRICS_UP_IDLE, -1);
    conn_free(c);
}

/* A pooled connection must stay silent: data, EOF, an error or the idle timeout end it. */
static void idle_cb(struct stream *s, unsigned ev, void *arg)
{
    (void)s;
    if (ev & (STREAM_READ | STREAM_EOF | STREAM_ERROR | STREAM_RTIMEOUT))
        idle_close(arg);
}

void upstream_put(struct upconn *c, int reusable)
{
    struct upool *pool = c->pool;
    const struct conf_limits *lim = limits_of(pool);
    pool->nactive--;
    pool_gauge(pool, METRICS_UP_ACTIVE, -1);
    c->exchanges++;
    if (!reusable || pool->gen->worker->draining || lim->upstream_pool_size == 0 ||
        stream_input_length(&c->s) > 0 || stream_output_length(&c->s) > 0 || c->s.eof ||
        c->s.failed) {
        conn_free(c);
        return;
    }
    c->state = UP_IDLE;
    c->idle_tick = pool->gen->worker->house_ticks;
    c->buffers_freed = 0;
    stream_setcb(&c->s, idle_cb, c);
    stream_set_timeouts(&c->s, (uint32_t)lim->upstream_idle_timeout_ms, 0);
    stream_set_reading(&c->s, 1);
    stream_park(&c->s);
    TAILQ_INSERT_HEAD(&pool->idle, c, link);
    pool->nidle++;
    pool_gauge(pool, METRICS_UP_IDLE, 1);
    /* The cap never falls below the connections active at once in this window, so an exchange
     * ending closes none that the current demand needs; the tick closes what it no longer does. */
    size_t cap = upool_idle_cap(pool->peak, pool->peak_prev, lim->upstream_pool_size);
    while (pool->nidle > cap)
        idle_close(TAILQ_LAST(&pool->idle, upconn_list));
}

void upool_tick(struct upool *pool, unsigned tick)
{
    struct upconn *c;
    h2up_tick(pool, tick);
    if (tick - pool->window_tick >= UPOOL_DEMAND_WINDOW_TICKS) {
        pool->peak_prev = pool->peak;
        pool->peak = pool->nactive;
        pool->window_tick = tick;
    }
    /* The pool is used from its head, so those at the tail are the ones demand left unused. */
    size_t cap = upool_idle_cap(pool->peak, pool->peak_prev, limits_of(pool)->upstream_pool_size);
    while (pool->nidle > cap)
        idle_close(TAILQ_LAST(&pool->idle, upconn_list));
    /* The pool is used from its head: walk from the tail, the longest idle first. */
    TAILQ_FOREACH_REVERSE(c, &pool->idle, upconn_list, link) {
        if (c->idle_tick + 2 > tick)
            break;
        if (!c->buffers_freed && c->s.ssl) {
            SSL_free_buffers(c->s.ssl); /* refused (harmlessly) while a record is pending */
            c->buffers_freed = 1;
        }
    }
}

void upstream_abort(struct upconn *c)
{
    /* Still opening (its report has not run): it stops connecting here. */
    if (c->ready_cb || c->stream_ready)
        pool_gauge(c->pool, METRICS_UP_CONNECTING, -1);
    c->ready_cb = NULL;
    c->stream_ready = NULL;
    c->pool->nactive--;
    pool_gauge(c->pool, METRICS_UP_ACTIVE, -1);
    if (c->state == UP_RESOLVING && c->dns_req) {
        /* The resolver still holds c: it is freed when the answer (or cancellation) comes. */
        c->state = UP_ABANDONED;
        c->pool = NULL;
        evdns_getaddrinfo_cancel(c->dns_req);
        return;
    }
    conn_free(c);
}
