/* shared: the live state (proxy/live.h) that replicas share through Redis ("shared_state").
 *
 * Each worker keeps one connection to Redis (plain TCP, a unix socket, or TLS with the server's
 * certificate verified) on its own event loop; nothing here blocks. What goes through Redis:
 *   - a client's rate decision: one atomic script (GCRA on Redis' clock), one round trip, the
 *     request waiting for it (shared_rate_take);
 *   - Apple's X-Rate-Limit figures and Retry-After per credential: written without waiting
 *     (shared_note_quota, shared_note_block) next to the local table's update, and read back
 *     once a second into the local table, so that every replica's quota checks see them;
 *   - tokens minted per credential: added up across replicas in the same once-a-second sync.
 * Tokens and keys never go to Redis: only names (of clients and credentials) and numbers.
 *
 * When Redis is unreachable, or a reply takes longer than `timeout`, the connection is dropped
 * and the worker decides locally (limits divided by `replicas`) until a background reconnect
 * succeeds; the change is logged once for the process and counted (shared_stats). */
#ifndef AAP_PROXY_SHARED_H
#define AAP_PROXY_SHARED_H

#include <stdint.h>
#include <event2/dns.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "proxy/live.h"

struct runtime;
struct stream_ctx;
struct shared;      /* the process's: the configuration and the counters */
struct shared_conn; /* a worker's connection */
struct shared_wait; /* a rate decision in flight */

/* NULL when cfg->redis is NULL (nothing shared: err is then ""), or on failure with err set
 * (out of memory; with "tls", a CA file, client certificate or key that OpenSSL cannot load).
 * cfg is copied: a reload does not change the Redis in use. nworkers: connections that will
 * be made. */
struct shared *shared_new(const struct conf_shared *cfg, int nworkers, char *err, size_t errlen);
void shared_free(struct shared *sh); /* after every connection is freed; NULL: no-op */
/* 1 when two configurations' "shared_state" are the same (a reload cannot change it). */
int shared_same(const struct conf_shared *a, const struct conf_shared *b);

/* The worker's connection, on its loop: sctx (the worker's streams' base and buffers, borrowed)
 * carries it, dns resolves a host name without blocking. sync: this
 * connection also runs the once-a-second sync of credential figures (one worker per process).
 * Connects in the background; NULL when out of memory. Free on the worker's thread, after its
 * clients: pending rate decisions are cancelled first. */
struct shared_conn *shared_conn_new(struct shared *sh, struct stream_ctx *sctx,
                                    struct evdns_base *dns, int sync);
void shared_conn_free(struct shared_conn *conn);

/* The worker's current runtime, for the sync (credential names and their live entries). The
 * pointer is only read on the worker's thread while the worker holds the runtime. */
void shared_conn_set_runtime(struct shared_conn *conn, const struct runtime *rt);

/* 1 when rate decisions go to Redis now (conn NULL: nothing shared). */
int shared_up(const struct shared_conn *conn);

/* The rate decision, asked of Redis. Returns a handle when it was sent: cb is called later, on
 * the worker's loop, exactly once unless shared_wait_cancel is called first, with result 1
 * (allowed), 0 (refused; wait: seconds until a request would be) or -1 (Redis failed or was
 * too slow: decide locally). Returns NULL when Redis is not in use now (decide locally). */
typedef void (*shared_rate_fn)(void *arg, int result, double wait);
struct shared_wait *shared_rate_take(struct shared_conn *conn, const char *client, double rate,
                                     double burst, shared_rate_fn cb, void *arg);
/* The requester went away: cb is not called (the handle is freed when Redis answers). */
void shared_wait_cancel(struct shared_wait *w);

/* The divisor for local limits: `replicas` while Redis is not in use, 1 otherwise (and when
 * conn is NULL: nothing shared). Counts the local decision. */
int shared_local_divisor(struct shared_conn *conn);

/* Written without waiting for a reply (no-ops while Redis is not in use). */
void shared_note_quota(struct shared_conn *conn, const char *cred, long limit, long remaining,
                       double now);
void shared_note_block(struct shared_conn *conn, const char *cred, double until);

/* For /metrics and /readyz (any thread). */
struct shared_stats {
    const char *target;         /* "HOST:PORT" or "unix:/path" as configured */
    int tls;                    /* 1 with "tls" */
    int replicas;
    int connections, up;        /* worker connections, and how many use Redis now */
    uint64_t fallbacks;         /* a connection stopped using Redis (error, timeout, refusal) */
    uint64_t timeouts;          /* of those: replies slower than `timeout` */
    uint64_t local_decisions;   /* rate decisions made locally while Redis was not in use */
    uint64_t remote_decisions;  /* rate decisions made by Redis */
    uint64_t tls_failures;      /* TLS connections that ended before Redis answered PING (a
                                   certificate refused by either side, a server that does not
                                   speak TLS, no handshake in time) */
};
void shared_stats_read(const struct shared *sh, struct shared_stats *st);

/* ---- reply parsing (pure; exposed for the unit tests) ---- */

struct redisReply;
struct redisReader;
/* Makes a hiredis reader refuse (as out of memory, which ends the connection) an array reply
 * of more than SHARED_MAX_REPLY_ELEMENTS elements before allocating it: hiredis 0.14 would
 * otherwise allocate whatever count a server announces (*2000000000 is 16 GB). */
#define SHARED_MAX_REPLY_ELEMENTS 64
/* Returns 0, or -1 when out of memory (the reader is then unchanged). */
int shared_reader_limit(struct redisReader *r);

/* The rate script's reply: {allowed (0|1), wait in microseconds}. Returns 0, or -1 when the
 * reply has another shape (an error reply, a script that is not ours). */
int shared_parse_rate(const struct redisReply *r, int *allowed, double *wait);
/* The sync script's reply: {limit, remaining, updated_ms, blocked_until_ms, mints}, each an
 * integer or nil (-1 for limit and remaining, 0 for the rest); the two times at most 10^15 ms.
 * Returns 0, or -1. */
int shared_parse_figures(const struct redisReply *r, struct live_quota *q);

/* ---- the connection's states (pure; exposed for the unit tests) ---- */

enum shared_state { SHARED_DOWN, SHARED_CONNECTING, SHARED_UP };
enum shared_event {
    SHARED_EV_CONNECT,  /* a connection attempt starts */
    SHARED_EV_READY,    /* the PING after AUTH was answered */
    SHARED_EV_FAILED,   /* refused, closed, or an unexpected reply */
    SHARED_EV_TIMEOUT   /* a reply (or the connection) took longer than allowed */
};
/* The state after ev; *fallback is set to 1 when the change leaves Redis (UP to not UP). */
enum shared_state shared_state_next(enum shared_state s, enum shared_event ev, int *fallback);

#endif
