/* worker: one thread with its own event loop, listener sockets, upstream pools and counters. */
#ifndef AAP_PROXY_WORKER_H
#define AAP_PROXY_WORKER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/event.h>
#include <event2/dns.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "proxy/http1.h"
#include "proxy/metrics.h"
#include "proxy/runtime.h"
#include "proxy/stream.h"

struct client;
struct exchange;
struct upool;
struct shared;
struct shared_conn;
struct token_exchanger;
struct worker;
struct wclient;

/* Upstream protocols, the index of the per-protocol counters below. */
enum up_proto { UP_PROTO_HTTP1, UP_PROTO_H2, UP_PROTO_COUNT };

/* Counters written only by the worker's own thread (no locks on the request path); a scrape
 * sums them across workers with relaxed atomic loads. */
struct worker_stats {
    uint64_t connections_accepted;
    uint64_t connections_refused;  /* over max_client_connections */
    uint64_t requests;             /* requests whose head was parsed */
    uint64_t proxy_errors;         /* responses the proxy made itself */
    uint64_t upstream_connects;    /* TCP connections opened upstream */
    uint64_t upstream_handshakes;  /* TLS handshakes completed upstream */
    uint64_t upstream_reused;      /* exchanges on a pooled connection */
    uint64_t upstream_retries;     /* requests retried on a fresh connection */
    uint64_t token_retries;        /* requests retried after Apple's 401 with a fresh token */
    uint64_t client_tls_failures;  /* TLS handshakes with clients that failed */
    uint64_t accept_pauses;        /* accepting paused for lack of descriptors */
    uint64_t upstream_active;      /* gauge: connecting or serving an exchange */
    uint64_t upstream_idle;        /* gauge: waiting in a pool */
    uint64_t h2_connections;       /* gauge: HTTP/2 upstream connections open or opening */
    uint64_t h2_streams;           /* HTTP/2 requests sent (a retry counts again) */
    uint64_t h2_retries;           /* requests sent again after GOAWAY or REFUSED_STREAM */
    uint64_t h2_failures;          /* exchanges failed by RST_STREAM or a lost connection */
    uint64_t apns_token_retries;   /* pushes sent again after APNs refused the token */
    uint64_t apns_too_many;        /* APNs' 429 TooManyProviderTokenUpdates answers */
    uint64_t requests_in_flight;   /* gauge: a request head was read, its answer not ended */
    uint64_t connections_open;     /* gauge: client connections of the worker */
    /* By upstream protocol (enum up_proto). */
    uint64_t proto_requests[UP_PROTO_COUNT]; /* requests sent upstream (a resend counts again) */
    uint64_t proto_failures[UP_PROTO_COUNT]; /* exchanges the upstream failed (502/504) */
    uint64_t proto_conns[UP_PROTO_COUNT];    /* gauge: connections open or opening */
    uint64_t proto_streams[UP_PROTO_COUNT];  /* gauge: requests in flight on connections */
};

/* Adds to a counter or gauge of the worker's own (relaxed atomics: scrapes read concurrently). */
#define WSTAT_ADD(w, field, v)                                                                     \
    __atomic_store_n(&(w)->stats.field, __atomic_load_n(&(w)->stats.field, __ATOMIC_RELAXED) + (v), \
                     __ATOMIC_RELAXED)

/* A worker's view of one runtime: the runtime and this worker's pools for its targets.
 * Clients hold a reference while an exchange uses it. */
struct wgen {
    int refs;
    struct worker *worker;
    struct runtime *rt;
    struct http1_limits req_limits; /* request head limits from rt's configuration */
    struct upool *pools; /* rt->ntargets of them */
    int *route_label;    /* route index -> metrics label id ("host/prefix") */
};

/* A client connection as its worker knows it (embedded in client.c's struct client): the
 * worker keeps the list, the count and the process-wide connection count. */
struct wclient {
    TAILQ_ENTRY(wclient) link;
};
TAILQ_HEAD(client_list, wclient);

/* The connection layer a worker serves (client.h's client_conn_ops): the worker owns the list,
 * the counts and the drain, and calls up into that layer only through these. */
struct worker_conn_ops {
    /* Takes the accepted socket (closed on failure). Returns 0, or -1 (not added). */
    int (*accept)(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
                  SSL_CTX *tls, size_t listener);
    /* Draining: the connection closes now if it is idle, else after its current exchange. */
    void (*drain)(struct wclient *wc);
    /* The worker stopped: the connection is freed now. */
    void (*free_now)(struct wclient *wc);
    /* Every connection is freed: what the layer keeps in the worker goes too. */
    void (*cleanup)(struct worker *w);
};

/* What the process gives the workers that serve clients: owned by the process, outlives them.
 * A worker that accepts no connections (the token exchanger's) has none. */
struct worker_env {
    const struct worker_conn_ops *conn;
    size_t nclients;                   /* client connections across the workers (atomic) */
    struct shared *shared;             /* Redis for shared state (proxy/shared.h), or NULL */
    struct token_exchanger *exchanger; /* access tokens (token_exchange.h), set before the
                                          workers start */
};

/* A listening socket of a worker, with the TLS context of HTTPS listeners. */
struct wlistener {
    struct worker *worker;
    SSL_CTX *tls;
    struct evconnlistener *l;
    struct event *pause_ev; /* re-enables accepting after running out of descriptors */
};

struct h2s;

struct worker {
    int id;
    struct worker_env *env; /* borrowed; NULL in a worker that accepts no connections */
    struct event_base *base;
    struct stream_ctx sctx;   /* the base, and spare buffers for the worker's streams */
    struct exchange *spare_exchanges; /* client.c's per-request state, kept for reuse */
    size_t nspare_exchanges;
    struct h2s *spare_h2s;    /* h2up.c's per-stream state, kept for reuse */
    size_t nspare_h2s;
    int spare_h2s_closed;     /* h2up_worker_cleanup ran: nothing more is kept */
    struct evdns_base *dns;
    struct wlistener *listeners;
    size_t nlisteners;
    struct wgen *gen;         /* current configuration for new exchanges */
    struct client_list clients; /* changed only by worker_client_add and _remove */
    size_t nclients;
    int draining;
    /* The main thread talks to the worker through an eventfd (the worker's event base has no
     * locks: nothing else touches it from another thread): it sets a request, then writes. */
    int notify_fd;
    struct event *notify_ev;
    int want_drain, want_stop; /* atomic */
    /* worker_wake (from any thread) runs wake_cb on the worker's own thread: client workers
     * look at the requests waiting for an access token, the token exchanger starts exchanges. */
    void (*wake_cb)(struct worker *w);
    void *wake_arg;
    int want_wake;             /* atomic */
    pthread_mutex_t pending_lock;
    struct runtime *pending_rt; /* a reference handed over by the main thread */
    SSL_CTX **pending_tls;      /* new contexts for the HTTPS listeners (references), or NULL */
    int lock_init;
    pthread_t thread;
    int started;
    int done;                 /* set (atomically) when the thread's loop has ended */
    struct worker_stats stats;
    struct metrics_shard metrics;
    struct event *house_ev;   /* once a second: memory back to the system after a burst */
    uint64_t house_churn;     /* connections opened, as of the last tick */
    int house_trim;           /* connections were opened in the tick before the last */
    unsigned house_ticks;
    struct shared_conn *shared; /* the worker's Redis connection (proxy/shared.h), or NULL */
    struct evbuffer *alog;    /* access log lines waiting for the next flush */
    struct event *alog_timer;
};

/* Creates the worker's event base and DNS resolver and wraps the given listening sockets
 * (ownership of the descriptors passes to the worker). env: borrowed, NULL for a worker that
 * accepts no connections. Returns 0 or -1 with err. */
int worker_init(struct worker *w, int id, struct worker_env *env, struct runtime *rt,
                const int *fds, SSL_CTX *const *tls, size_t nfds, char *err, size_t errlen);
/* Starts the worker's thread. */
int worker_start(struct worker *w);
/* Asks the worker (from any thread) to stop accepting and finish its exchanges. */
void worker_drain(struct worker *w);
/* Asks the worker (from any thread) to stop its loop now (the drain timeout). */
void worker_stop(struct worker *w);
/* Hands the worker a new configuration (a reference is taken); its new exchanges use it while
 * those in flight finish on the old one. tls, when not NULL, holds a new server context for
 * each listener (NULL entries: unchanged), taken by reference: connections accepted from then
 * on use it (renewed certificates, a new client CA). Thread-safe. */
void worker_reload(struct worker *w, struct runtime *rt, SSL_CTX *const *tls);
/* Runs w->wake_cb soon on the worker's thread (several wakes before it runs: one call).
 * Thread-safe. */
void worker_wake(struct worker *w);
/* Frees everything of a stopped worker. */
void worker_deinit(struct worker *w);

struct wgen *wgen_ref(struct wgen *g);
void wgen_unref(struct wgen *g);

/* A new client connection joins the worker (counted as accepted). */
void worker_client_add(struct worker *w, struct wclient *wc);

/* A client connection is leaving (its memory is freed next): it leaves the process's count, and
 * a draining worker whose last connection this was stops its loop. */
void worker_client_remove(struct worker *w, struct wclient *wc);

#endif
