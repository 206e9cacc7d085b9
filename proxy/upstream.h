/* upstream: TLS connections to Apple's hosts, opened without blocking and kept in per-worker
 * keep-alive pools.
 *
 *   upstream_get --(idle conn)--------------------------------> returned at once (reused)
 *        \--(none idle)--> RESOLVING -> CONNECTING -> HANDSHAKE -> ready_cb(conn, NULL)
 *                               \____________\____________\____> ready_cb(NULL, error)
 *   upstream_put(conn, reusable) --> IDLE in the pool (closed on data, EOF or idle timeout)
 */
#ifndef AAP_PROXY_UPSTREAM_H
#define AAP_PROXY_UPSTREAM_H

#include <stddef.h>
#include <openssl/ssl.h>
#include <sys/queue.h>

#include "proxy/stream.h"
#include "proxy/upstream_transport.h"
#include "proxy/worker.h"

struct upconn;
struct h2pool;
struct credential;
TAILQ_HEAD(upconn_list, upconn);

/* How long the demand of a pool is remembered: the idle connections kept follow the most busy
 * at once in the current window of this many house ticks (seconds) and in the one before it. */
#define UPOOL_DEMAND_WINDOW_TICKS 10

/* One worker's pool for one target. Its size follows demand: it keeps as many idle connections
 * as were busy at once in the last one to two demand windows, never more than
 * upstream_pool_size; connections beyond that demand are closed, the longest idle first. */
struct upool {
    struct wgen *gen;
    struct target *target;
    struct upconn_list idle;
    size_t nidle;
    size_t nactive;       /* connecting or serving an exchange */
    size_t peak;          /* most connections active at once in the current demand window */
    size_t peak_prev;     /* the same for the window before */
    unsigned window_tick; /* house tick at which the current window began */
    SSL_SESSION *session; /* for resumption (TLS 1.2 and 1.3 tickets) */
    struct h2pool *h2;    /* HTTP/2 targets: the shared connections (h2up.c); owned */
};

/* Why opening a connection failed; each maps to one proxy error code. */
enum upstream_error {
    UPSTREAM_OK,
    UPSTREAM_ERR_RESOLVE,          /* 502 PROXY_UPSTREAM_UNREACHABLE */
    UPSTREAM_ERR_CONNECT,          /* 502 PROXY_UPSTREAM_UNREACHABLE */
    UPSTREAM_ERR_CONNECT_TIMEOUT,  /* 504 PROXY_UPSTREAM_TIMEOUT */
    UPSTREAM_ERR_TLS,              /* 502 PROXY_UPSTREAM_TLS */
    UPSTREAM_ERR_TLS_TIMEOUT       /* 504 PROXY_UPSTREAM_TIMEOUT */
};

typedef void (*upstream_stream_ready)(struct upstream_stream *us, enum upstream_error err,
                                     const char *detail, void *arg);

struct upconn {
    struct upstream_stream us; /* an exchange's handle on this connection (h1up.c) */
    struct upool *pool;
    struct stream s;           /* TLS; set up once the TCP connection is up (has_stream) */
    int has_stream;
    int fd;                    /* while connecting; then the stream's */
    int state;
    int reused;                /* served at least one exchange before this one */
    unsigned exchanges;
    unsigned idle_tick;        /* the worker's house tick when it last went idle */
    int buffers_freed;         /* idle long enough to give its TLS record buffers back */
    struct event *io;          /* waits for the TCP connect, with its timeout */
    struct event *timer;       /* deferred failure reports */
    struct evdns_getaddrinfo_request *dns_req;
    void (*ready_cb)(struct upconn *conn, enum upstream_error err, const char *detail, void *arg);
    void *arg;
    enum upstream_error err;
    char detail[256];
    /* Opened for an exchange (upstream_stream_get): reported to it instead of ready_cb. */
    upstream_stream_ready stream_ready;
    void *stream_ready_arg;
    /* The exchange the connection carries (h1up.c). */
    const struct upstream_events *xev;
    void *xarg;
    struct http1_msg resp;     /* the response; its header array stays with the connection */
    uint64_t resp_remaining;   /* Content-Length bodies: bytes still to come */
    unsigned req_chunked : 1;  /* the request body is sent chunked */
    unsigned req_ended : 1;    /* the whole request was handed to the connection */
    unsigned head_done : 1;    /* the response head was reported */
    unsigned resp_ended : 1;   /* the response is complete */
    unsigned reusable : 1;     /* ... and the connection may serve another exchange */
    unsigned paused : 1;       /* the exchange stopped the response (backpressure) */
    TAILQ_ENTRY(upconn) link;
};

void upool_init(struct upool *pool, struct wgen *gen, struct target *target);
/* Closes the idle connections; active ones must have been put or aborted. */
void upool_deinit(struct upool *pool);

/* Returns 0 with an idle pooled connection in *out (conn->reused set; ready_cb never called),
 * or 1 with a new, still opening connection in *out: ready_cb then reports, always from a later
 * event-loop callback, that connection ready or the failure (after which it is gone). The
 * caller holds *out either way and must upstream_abort it if it gives up first. -1: out of
 * memory. */
int upstream_get(struct upool *pool,
                 void (*ready_cb)(struct upconn *, enum upstream_error, const char *, void *),
                 void *arg, struct upconn **out);

/* An upstream stream for an exchange of credential cred (upstream_transport.h): a pooled or
 * new HTTP/1.1 connection (h1up.c), or on an HTTP/2 target (target->h2) a stream of a shared
 * connection keyed by cred (h2up.h). upstream_get's contract: 0 with a stream ready now (ready
 * never called), 1 with one still opening (ready reports it, or the failure with NULL, from a
 * later event-loop callback), -1 when out of memory. The caller holds *out either way and
 * gives it back with its release operation. */
int upstream_stream_get(struct upool *pool, const struct credential *cred,
                        upstream_stream_ready ready, void *arg, struct upstream_stream **out);

/* The HTTP/1.1 transport on a connection (h1up.c): init when it is made, deinit before it is
 * freed. */
void h1up_init(struct upconn *conn);
void h1up_deinit(struct upconn *conn);

/* Always a new connection (never from the idle pool), with upstream_get's contract; for h2up,
 * which keeps its connections itself. */
int upstream_connect(struct upool *pool,
                     void (*ready_cb)(struct upconn *, enum upstream_error, const char *, void *),
                     void *arg, struct upconn **out);

/* Ends an exchange: a reusable connection (clean response end, nothing left over) returns to the
 * pool, anything else is closed. The caller must not touch conn afterwards. */
void upstream_put(struct upconn *conn, int reusable);

/* Once a second (the worker's house tick): pooled connections idle for a whole second give
 * their TLS record buffers back (about 34 KiB each; reallocated when used again). The busy
 * ones at the head of the pool keep theirs, so steady traffic pays nothing for this. Idle
 * connections beyond the pool's demand (see struct upool) are closed, the longest idle first. */
void upool_tick(struct upool *pool, unsigned tick);

/* The number of idle connections a pool keeps: the most active at once in the current and the
 * previous demand window (at least one), at most hard_cap (upstream_pool_size; 0 keeps none).
 * Pure: decides, closes nothing. */
size_t upool_idle_cap(size_t peak, size_t peak_prev, size_t hard_cap);

/* Abandons a connection in any state (its ready_cb will not be called). */
void upstream_abort(struct upconn *conn);

/* Prepares an upstream SSL_CTX for session resumption into the pools (called once per context
 * before any connection uses it). */
void upstream_tls_ctx_prepare(SSL_CTX *ctx);

#endif
