/* shared: live state shared by replicas through Redis, on each worker's event loop.
 *
 *            connect (host resolved by evdns)       PING answered
 *   DOWN -------------------------------------> CONNECTING ----------> UP
 *    ^  ^                                           |                  |
 *    |  +---- refused, closed, error, timeout ------+                  |
 *    +--------- closed, error, a reply slower than `timeout` ----------+
 *   (retried in the background, 100 ms doubling to 2 s)
 *
 * Replies come in the order commands were sent, so the send times of the commands in flight
 * are a ring: the oldest unanswered one tells whether Redis is too slow. A timer checks it;
 * dropping the connection answers every command in flight with no reply, and rate decisions
 * waiting for one are then made locally. */
#include "proxy/shared.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>
#include <openssl/crypto.h>

#include "proxy/log.h"
#include "proxy/runtime.h"

#define SHARED_MAX_INFLIGHT   4096   /* commands in flight per connection; past it: local */
#define SHARED_CONNECT_MIN_MS 1000   /* a connection gets at least this long to become ready */
#define SHARED_RETRY_MIN_MS   100
#define SHARED_RETRY_MAX_MS   2000
#define SHARED_SYNC_MS        1000   /* credential figures are read back this often */
#define SHARED_KEY_MAX        256
#define SHARED_MAX_READ_BUFFER (1024 * 1024) /* unparsed reply bytes: more ends the connection */
/* The latest time a figure read back may name, in Unix milliseconds: above every time a proxy
 * writes (the furthest, a Retry-After of 15 digits of epoch milliseconds, is below 10^15), and
 * far enough below 2^63 that the figure converts back to milliseconds without overflow. */
#define SHARED_TIME_MAX_MS 1000000000000000LL

/* GCRA on Redis' clock (the replicas' clocks never meet): the key holds the theoretical
 * arrival time in microseconds; a request is admitted when it is at most burst intervals
 * ahead of now. One script, so that no two replicas admit on the same state. */
static const char rate_script[] =
    "local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) "
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) "
    "local interval = 1000000 / rate "
    "local tat = tonumber(redis.call('GET', KEYS[1])) "
    "if tat == nil or tat < now then tat = now end "
    "local new_tat = tat + interval local over = new_tat - now - burst * interval "
    "if over > 1 then return {0, math.ceil(over)} end "
    "redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', "
    "math.ceil((new_tat - now) / 1000) + 1000) "
    "return {1, 0}";

/* Apple's figures: the newest quota reading and the latest Retry-After win. */
static const char note_script[] =
    "if ARGV[1] == 'q' then "
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'updated_ms')) "
    "if cur == nil or cur < tonumber(ARGV[4]) then "
    "redis.call('HSET', KEYS[1], 'limit', ARGV[2], 'remaining', ARGV[3], 'updated_ms', ARGV[4]) "
    "end "
    "else "
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'blocked_ms')) "
    "if cur == nil or cur < tonumber(ARGV[2]) then "
    "redis.call('HSET', KEYS[1], 'blocked_ms', ARGV[2]) end "
    "end "
    "redis.call('PEXPIRE', KEYS[1], 86400000) return 1";

/* The sync: this replica's new mints added, everyone's figures read back. */
static const char sync_script[] =
    "if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[1], 'mints', ARGV[1]) end "
    "redis.call('PEXPIRE', KEYS[1], 86400000) "
    "return redis.call('HMGET', KEYS[1], 'limit', 'remaining', 'updated_ms', 'blocked_ms', "
    "'mints')";

struct shared {
    struct conf_shared cfg; /* copied strings; the password is wiped on free */
    int conns, up;          /* atomic */
    int logged;             /* atomic: what was last logged: -1 nothing, 0 local, 1 Redis */
    uint64_t fallbacks, timeouts, local, remote; /* atomic */
};

struct shared_conn {
    struct shared *sh;
    struct event_base *base;
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *resolving;
    redisAsyncContext *ac;       /* NULL while DOWN */
    enum shared_state state;
    struct event *tick;
    uint64_t retry_at_us, sync_at_us;
    unsigned retry_ms;
    int sync;
    const struct runtime *rt;
    uint64_t sent[SHARED_MAX_INFLIGHT]; /* send times of the commands in flight, oldest first */
    size_t sent_head, nsent;
};

struct shared_wait {
    shared_rate_fn cb; /* NULL once cancelled */
    void *arg;
    struct shared *sh;
};

/* A credential's figures being read back: the entry is held until the reply. */
struct shared_sync {
    struct live_cred *cred;
};

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t get64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void add64(uint64_t *p)
{
    __atomic_add_fetch(p, 1, __ATOMIC_RELAXED);
}

/* ---- pure parts ---- */

enum shared_state shared_state_next(enum shared_state s, enum shared_event ev, int *fallback)
{
    enum shared_state n = s;
    switch (ev) {
    case SHARED_EV_CONNECT:
        n = s == SHARED_DOWN ? SHARED_CONNECTING : s;
        break;
    case SHARED_EV_READY:
        n = s == SHARED_CONNECTING ? SHARED_UP : s;
        break;
    case SHARED_EV_FAILED:
    case SHARED_EV_TIMEOUT:
        n = SHARED_DOWN;
        break;
    }
    *fallback = s == SHARED_UP && n != SHARED_UP;
    return n;
}

/* An integer element: an integer reply, or a string of digits (HMGET); nil gives def. */
static int reply_int(const redisReply *r, long long def, long long *out)
{
    if (r->type == REDIS_REPLY_NIL) {
        *out = def;
        return 0;
    }
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return 0;
    }
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len <= 18) {
        long long v = 0;
        size_t i = 0;
        int neg = r->str[0] == '-';
        for (i = (size_t)neg; i < r->len && r->str[i] >= '0' && r->str[i] <= '9'; i++)
            v = v * 10 + (r->str[i] - '0');
        if (i != r->len || i == (size_t)neg)
            return -1;
        *out = neg ? -v : v;
        return 0;
    }
    return -1;
}

int shared_parse_rate(const redisReply *r, int *allowed, double *wait)
{
    long long a, us;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER)
        return -1;
    a = r->element[0]->integer;
    us = r->element[1]->integer;
    if ((a != 0 && a != 1) || us < 0 || (a == 1 && us != 0))
        return -1;
    *allowed = (int)a;
    *wait = (double)us / 1e6;
    return 0;
}

int shared_parse_figures(const redisReply *r, struct live_quota *q)
{
    long long v[5];
    static const long long def[5] = {-1, -1, 0, 0, 0};
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 5)
        return -1;
    for (size_t i = 0; i < 5; i++)
        if (reply_int(r->element[i], def[i], &v[i]) < 0 || v[i] < def[i])
            return -1;
    if (v[2] > SHARED_TIME_MAX_MS || v[3] > SHARED_TIME_MAX_MS)
        return -1; /* not a time any proxy wrote */
    memset(q, 0, sizeof(*q));
    q->limit = (long)v[0];
    q->remaining = (long)v[1];
    q->updated = (double)v[2] / 1000.0;
    q->blocked_until = (double)v[3] / 1000.0;
    q->mints = (unsigned long)v[4];
    return 0;
}

/* hiredis' own reply constructors (copied from a reader made for the purpose: 0.14 does not
 * export them), and the limited array constructor in front of them. */
static redisReplyObjectFunctions limited_fns;
static void *(*default_create_array)(const redisReadTask *task, int elements);
static pthread_once_t limited_once = PTHREAD_ONCE_INIT;
static int limited_ok;

static void *create_array_limited(const redisReadTask *task, int elements)
{
    if (elements < 0 || elements > SHARED_MAX_REPLY_ELEMENTS)
        return NULL;
    return default_create_array(task, elements);
}

static void limited_init(void)
{
    redisReader *model = redisReaderCreate();
    if (model == NULL || model->fn == NULL || model->fn->createArray == NULL) {
        redisReaderFree(model);
        return;
    }
    limited_fns = *model->fn;
    default_create_array = model->fn->createArray;
    limited_fns.createArray = create_array_limited;
    limited_ok = 1;
    redisReaderFree(model);
}

int shared_reader_limit(redisReader *r)
{
    pthread_once(&limited_once, limited_init);
    if (!limited_ok)
        return -1;
    r->fn = &limited_fns;
    return 0;
}

/* ---- the process's object ---- */

static char *dup_or_null(const char *s, int *oom)
{
    char *d;
    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *oom = 1;
    return d;
}

struct shared *shared_new(const struct conf_shared *cfg, int nworkers, int *oom)
{
    struct shared *sh;
    *oom = 0;
    if (cfg->redis == NULL)
        return NULL;
    sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        *oom = 1;
        return NULL;
    }
    sh->cfg = *cfg;
    sh->cfg.redis = dup_or_null(cfg->redis, oom);
    sh->cfg.host = dup_or_null(cfg->host, oom);
    sh->cfg.unix_path = dup_or_null(cfg->unix_path, oom);
    sh->cfg.password_env = dup_or_null(cfg->password_env, oom);
    sh->cfg.password = dup_or_null(cfg->password, oom);
    sh->cfg.key_prefix = dup_or_null(cfg->key_prefix, oom);
    sh->logged = -1;
    (void)nworkers;
    if (*oom) {
        shared_free(sh);
        return NULL;
    }
    return sh;
}

void shared_free(struct shared *sh)
{
    if (sh == NULL)
        return;
    if (sh->cfg.password)
        OPENSSL_cleanse(sh->cfg.password, strlen(sh->cfg.password));
    free(sh->cfg.redis);
    free(sh->cfg.host);
    free(sh->cfg.unix_path);
    free(sh->cfg.password_env);
    free(sh->cfg.password);
    free(sh->cfg.key_prefix);
    free(sh);
}

static int str_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

int shared_same(const struct conf_shared *a, const struct conf_shared *b)
{
    return str_same(a->redis, b->redis) && str_same(a->password, b->password) &&
           str_same(a->key_prefix, b->key_prefix) && a->timeout_ms == b->timeout_ms &&
           a->replicas == b->replicas;
}

void shared_stats_read(const struct shared *sh, struct shared_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->target = sh->cfg.redis;
    st->replicas = sh->cfg.replicas;
    st->connections = __atomic_load_n(&sh->conns, __ATOMIC_RELAXED);
    st->up = __atomic_load_n(&sh->up, __ATOMIC_RELAXED);
    st->fallbacks = get64(&sh->fallbacks);
    st->timeouts = get64(&sh->timeouts);
    st->local_decisions = get64(&sh->local);
    st->remote_decisions = get64(&sh->remote);
}

/* Logs when the process as a whole starts or stops using Redis (some connection up, or none):
 * once per change, not once per worker or per retry. */
static void log_change(struct shared *sh, const char *why)
{
    int now_up = __atomic_load_n(&sh->up, __ATOMIC_RELAXED) > 0;
    int before = __atomic_exchange_n(&sh->logged, now_up, __ATOMIC_RELAXED);
    if (before == now_up)
        return;
    if (now_up)
        log_msg(LOG_INFO, "shared state: using Redis at %s", sh->cfg.redis);
    else
        log_msg(LOG_WARN, "shared state: Redis at %s is not usable (%s); rate limits are local, "
                "divided by %d replica%s, until it is back", sh->cfg.redis, why,
                sh->cfg.replicas, sh->cfg.replicas == 1 ? "" : "s");
}

/* ---- the connection ---- */

static void set_state(struct shared_conn *conn, enum shared_event ev, const char *why)
{
    int fallback;
    enum shared_state before = conn->state;
    conn->state = shared_state_next(before, ev, &fallback);
    if (conn->state == SHARED_UP && before != SHARED_UP) {
        __atomic_add_fetch(&conn->sh->up, 1, __ATOMIC_RELAXED);
        conn->retry_ms = SHARED_RETRY_MIN_MS;
    }
    if (fallback) {
        __atomic_sub_fetch(&conn->sh->up, 1, __ATOMIC_RELAXED);
        add64(&conn->sh->fallbacks);
        if (ev == SHARED_EV_TIMEOUT)
            add64(&conn->sh->timeouts);
    }
    if (ev != SHARED_EV_CONNECT)
        log_change(conn->sh, why);
}

/* Leaves the connection: every command in flight is answered with no reply (rate decisions
 * then go local). free_ac: 0 when hiredis frees the context itself (its connect and
 * disconnect callbacks). */
static void conn_drop(struct shared_conn *conn, enum shared_event ev, const char *why, int free_ac)
{
    redisAsyncContext *ac = conn->ac;
    conn->ac = NULL;
    conn->nsent = 0;
    conn->sent_head = 0;
    conn->retry_at_us = mono_us() + (uint64_t)conn->retry_ms * 1000u;
    conn->retry_ms = conn->retry_ms * 2 > SHARED_RETRY_MAX_MS ? SHARED_RETRY_MAX_MS
                                                              : conn->retry_ms * 2;
    log_msg(LOG_DEBUG, "shared state: connection to %s dropped: %s", conn->sh->cfg.redis, why);
    set_state(conn, ev, why);
    if (ac) {
        ac->data = NULL;
        if (free_ac)
            redisAsyncFree(ac);
    }
}

/* A reply for conn's current context (else a context being torn down: nothing to count). */
static struct shared_conn *reply_conn(redisAsyncContext *ac, void *reply)
{
    struct shared_conn *conn = ac->data;
    if (reply == NULL || conn == NULL || conn->ac != ac)
        return NULL;
    if (conn->nsent > 0) {
        conn->sent_head = (conn->sent_head + 1) % SHARED_MAX_INFLIGHT;
        conn->nsent--;
    }
    return conn;
}

/* Sends a command; its send time joins the ring. Returns 0, or -1 (not sent: the ring is
 * full or hiredis refused, the context being torn down). */
static int conn_send(struct shared_conn *conn, redisCallbackFn *fn, void *priv, const char *fmt,
                     ...)
{
    va_list ap;
    int r;
    if (conn->ac == NULL || conn->nsent == SHARED_MAX_INFLIGHT)
        return -1;
    va_start(ap, fmt);
    r = redisvAsyncCommand(conn->ac, fn, priv, fmt, ap);
    va_end(ap);
    if (r != REDIS_OK)
        return -1;
    conn->sent[(conn->sent_head + conn->nsent) % SHARED_MAX_INFLIGHT] = mono_us();
    conn->nsent++;
    return 0;
}

static void auth_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct shared_conn *conn = reply_conn(ac, reply);
    const redisReply *r = reply;
    char why[160];
    if (conn == NULL || r->type != REDIS_REPLY_ERROR)
        return;
    snprintf(why, sizeof(why), "AUTH refused: %.100s", r->str ? r->str : "");
    conn_drop(conn, SHARED_EV_FAILED, why, 1);
}

static void ping_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct shared_conn *conn = reply_conn(ac, reply);
    const redisReply *r = reply;
    char why[160];
    if (conn == NULL)
        return;
    if (r->type == REDIS_REPLY_STATUS && r->str && strcmp(r->str, "PONG") == 0) {
        set_state(conn, SHARED_EV_READY, "ready");
        return;
    }
    snprintf(why, sizeof(why), "PING answered with %.100s",
             r->type == REDIS_REPLY_ERROR && r->str ? r->str : "something else");
    conn_drop(conn, SHARED_EV_FAILED, why, 1);
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    struct shared_conn *conn = ac->data;
    char why[160];
    if (status == REDIS_OK || conn == NULL || conn->ac != ac)
        return;
    snprintf(why, sizeof(why), "cannot connect: %.100s", ac->errstr);
    conn_drop(conn, SHARED_EV_FAILED, why, 0);
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    struct shared_conn *conn = ac->data;
    char why[160];
    if (conn == NULL || conn->ac != ac)
        return;
    snprintf(why, sizeof(why), "connection lost: %.100s",
             status == REDIS_OK ? "closed" : ac->errstr);
    conn_drop(conn, SHARED_EV_FAILED, why, 0);
}

/* Opens the connection to a numeric address (or the socket path): AUTH, then PING. */
static void conn_open(struct shared_conn *conn, const char *ip)
{
    const struct conf_shared *cfg = &conn->sh->cfg;
    redisAsyncContext *ac = ip ? redisAsyncConnect(ip, cfg->port)
                               : redisAsyncConnectUnix(cfg->unix_path);
    char why[160];
    set_state(conn, SHARED_EV_CONNECT, "connecting");
    if (ac == NULL || ac->err) {
        snprintf(why, sizeof(why), "cannot connect: %.100s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_drop(conn, SHARED_EV_FAILED, why, 0);
        return;
    }
    ac->data = conn;
    conn->ac = ac;
    if (shared_reader_limit(ac->c.reader) < 0) {
        conn_drop(conn, SHARED_EV_FAILED, "out of memory", 1);
        return;
    }
    if (redisLibeventAttach(ac, conn->base) != REDIS_OK) {
        conn_drop(conn, SHARED_EV_FAILED, "cannot watch the connection", 1);
        return;
    }
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    if ((cfg->password && conn_send(conn, auth_reply, NULL, "AUTH %s", cfg->password) < 0) ||
        conn_send(conn, ping_reply, NULL, "PING") < 0)
        conn_drop(conn, SHARED_EV_FAILED, "cannot send PING", 1);
}

static void resolved(int err, struct evutil_addrinfo *res, void *arg)
{
    struct shared_conn *conn = arg;
    char ip[INET6_ADDRSTRLEN], why[160];
    /* Cancelled: the connection is being freed (libevent may call this after it is gone),
     * so conn is not touched. */
    if (err == EVUTIL_EAI_CANCEL) {
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    conn->resolving = NULL;
    if (err != 0 || res == NULL) {
        snprintf(why, sizeof(why), "cannot resolve %.80s: %s", conn->sh->cfg.host,
                 evutil_gai_strerror(err));
        conn_drop(conn, SHARED_EV_FAILED, why, 0);
    } else {
        const void *a = res->ai_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
        inet_ntop(res->ai_family, a, ip, sizeof(ip));
        conn_open(conn, ip);
    }
    if (res)
        evutil_freeaddrinfo(res);
}

/* hiredis resolves names with a blocking getaddrinfo: names go through the worker's evdns
 * first, so that hiredis only ever sees a numeric address. */
static void conn_start(struct shared_conn *conn)
{
    struct evutil_addrinfo hints;
    const char *host = conn->sh->cfg.host;
    unsigned char buf[16];
    if (host == NULL) {
        conn_open(conn, NULL);
        return;
    }
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) {
        conn_open(conn, host);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    conn->resolving = evdns_getaddrinfo(conn->dns, host, NULL, &hints, resolved, conn);
}

static void sync_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct shared_sync *s = priv;
    struct live_quota q;
    if (reply_conn(ac, reply) != NULL && shared_parse_figures(reply, &q) == 0)
        live_shared_merge(s->cred, &q);
    live_cred_put(s->cred);
    free(s);
}

static void key_for(const struct shared *sh, const char *kind, const char *name, char *out,
                    size_t len)
{
    snprintf(out, len, "%s%s:%s", sh->cfg.key_prefix, kind, name);
}

/* Once a second on one worker: this process's new mints out, every replica's figures in. */
static void conn_sync(struct shared_conn *conn)
{
    const struct runtime *rt = conn->rt;
    char key[SHARED_KEY_MAX];
    if (rt == NULL)
        return;
    for (size_t i = 0; i < rt->conf->ncredentials && conn->state == SHARED_UP; i++) {
        struct shared_sync *s = malloc(sizeof(*s));
        if (s == NULL)
            return;
        s->cred = live_cred_hold(rt->live_creds[i]);
        unsigned long delta = live_mints_unshared(s->cred);
        key_for(conn->sh, "cred", rt->conf->credentials[i].name, key, sizeof(key));
        if (conn_send(conn, sync_reply, s, "EVAL %s 1 %s %lu", sync_script, key, delta) < 0) {
            live_mints_unshare(s->cred, delta);
            live_cred_put(s->cred);
            free(s);
            return;
        }
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct shared_conn *conn = arg;
    uint64_t now = mono_us();
    (void)fd;
    (void)what;
    if (conn->state != SHARED_DOWN && conn->nsent > 0) {
        uint64_t limit = (uint64_t)conn->sh->cfg.timeout_ms * 1000u;
        if (conn->state == SHARED_CONNECTING && limit < SHARED_CONNECT_MIN_MS * 1000u)
            limit = SHARED_CONNECT_MIN_MS * 1000u;
        if (now - conn->sent[conn->sent_head] > limit) {
            conn_drop(conn, SHARED_EV_TIMEOUT, conn->state == SHARED_UP
                                                   ? "a reply took longer than the timeout"
                                                   : "no answer to PING in time", 1);
            return;
        }
    }
    if (conn->ac && conn->ac->c.reader && conn->ac->c.reader->len > SHARED_MAX_READ_BUFFER) {
        /* A reply larger than any of ours (a bulk string of gigabytes announced): not Redis
         * as the proxy uses it. */
        conn_drop(conn, SHARED_EV_FAILED, "a reply larger than 1 MiB", 1);
        return;
    }
    if (conn->state == SHARED_DOWN && conn->resolving == NULL && now >= conn->retry_at_us)
        conn_start(conn);
    if (conn->sync && conn->state == SHARED_UP && now >= conn->sync_at_us) {
        conn->sync_at_us = now + SHARED_SYNC_MS * 1000u;
        conn_sync(conn);
    }
}

struct shared_conn *shared_conn_new(struct shared *sh, struct event_base *base,
                                    struct evdns_base *dns, int sync)
{
    struct shared_conn *conn = calloc(1, sizeof(*conn));
    long period = sh->cfg.timeout_ms / 4;
    struct timeval tv;
    if (conn == NULL)
        return NULL;
    conn->sh = sh;
    conn->base = base;
    conn->dns = dns;
    conn->sync = sync;
    conn->state = SHARED_DOWN;
    conn->retry_ms = SHARED_RETRY_MIN_MS;
    /* A quarter of the timeout: a slow reply is noticed within 1.25 timeouts. */
    if (period < 5)
        period = 5;
    if (period > 100)
        period = 100;
    tv.tv_sec = 0;
    tv.tv_usec = (suseconds_t)period * 1000;
    conn->tick = event_new(base, -1, EV_PERSIST, tick_cb, conn);
    if (conn->tick == NULL || event_add(conn->tick, &tv) < 0) {
        if (conn->tick)
            event_free(conn->tick);
        free(conn);
        return NULL;
    }
    __atomic_add_fetch(&sh->conns, 1, __ATOMIC_RELAXED);
    conn_start(conn);
    return conn;
}

void shared_conn_free(struct shared_conn *conn)
{
    redisAsyncContext *ac;
    if (conn == NULL)
        return;
    event_free(conn->tick);
    if (conn->resolving)
        evdns_getaddrinfo_cancel(conn->resolving); /* resolved() hears of it later */
    if (conn->state == SHARED_UP)
        __atomic_sub_fetch(&conn->sh->up, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&conn->sh->conns, 1, __ATOMIC_RELAXED);
    ac = conn->ac;
    conn->ac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac); /* answers what is in flight with no reply */
    }
    free(conn);
}

void shared_conn_set_runtime(struct shared_conn *conn, const struct runtime *rt)
{
    if (conn)
        conn->rt = rt;
}

/* ---- what requests do ---- */

int shared_up(const struct shared_conn *conn)
{
    return conn != NULL && conn->state == SHARED_UP;
}

static void rate_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct shared_wait *w = priv;
    int allowed = -1;
    double wait = 0;
    reply_conn(ac, reply);
    if (reply == NULL || shared_parse_rate(reply, &allowed, &wait) < 0)
        allowed = -1;
    else
        add64(&w->sh->remote);
    if (w->cb) {
        shared_rate_fn cb = w->cb;
        void *arg = w->arg;
        free(w);
        cb(arg, allowed, wait);
        return;
    }
    free(w);
}

struct shared_wait *shared_rate_take(struct shared_conn *conn, const char *client, double rate,
                                     double burst, shared_rate_fn cb, void *arg)
{
    struct shared_wait *w;
    char key[SHARED_KEY_MAX];
    if (conn == NULL || conn->state != SHARED_UP)
        return NULL;
    w = malloc(sizeof(*w));
    if (w == NULL)
        return NULL;
    w->cb = cb;
    w->arg = arg;
    w->sh = conn->sh;
    key_for(conn->sh, "rate", client, key, sizeof(key));
    if (conn_send(conn, rate_reply, w, "EVAL %s 1 %s %.17g %.17g", rate_script, key, rate,
                  burst) < 0) {
        free(w);
        return NULL;
    }
    return w;
}

void shared_wait_cancel(struct shared_wait *w)
{
    if (w)
        w->cb = NULL;
}

int shared_local_divisor(struct shared_conn *conn)
{
    if (conn == NULL)
        return 1;
    add64(&conn->sh->local);
    return conn->sh->cfg.replicas > 0 ? conn->sh->cfg.replicas : 1;
}

static void note_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    const redisReply *r = reply;
    (void)priv;
    if (reply_conn(ac, reply) != NULL && r->type == REDIS_REPLY_ERROR)
        log_msg(LOG_DEBUG, "shared state: a figure was not stored: %.200s", r->str ? r->str : "");
}

void shared_note_quota(struct shared_conn *conn, const char *cred, long limit, long remaining,
                       double now)
{
    char key[SHARED_KEY_MAX];
    if (conn == NULL || conn->state != SHARED_UP)
        return;
    key_for(conn->sh, "cred", cred, key, sizeof(key));
    conn_send(conn, note_reply, NULL, "EVAL %s 1 %s q %ld %ld %lld", note_script, key, limit,
              remaining, (long long)(now * 1000));
}

void shared_note_block(struct shared_conn *conn, const char *cred, double until)
{
    char key[SHARED_KEY_MAX];
    if (conn == NULL || conn->state != SHARED_UP)
        return;
    key_for(conn->sh, "cred", cred, key, sizeof(key));
    conn_send(conn, note_reply, NULL, "EVAL %s 1 %s b %lld", note_script, key,
              (long long)(until * 1000));
}
