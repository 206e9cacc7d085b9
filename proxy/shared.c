/* shared: live state shared by replicas through Redis, on each worker's event loop.
 *
 *            connect (host resolved by evdns)       PING answered
 *   DOWN -------------------------------------> CONNECTING ----------> UP
 *    ^  ^                                           |                  |
 *    |  +---- refused, closed, error, timeout ------+                  |
 *    +--------- closed, error, a reply slower than `timeout` ----------+
 *   (retried in the background, 100 ms doubling to 2 s)
 *
 * The connection is the proxy's own stream (proxy/stream.h), plain or TLS, on the worker's
 * loop; hiredis only formats the commands and reads the replies (its redisReader). One
 * transport for both, rather than hiredis' async context for plain TCP and a second one for
 * TLS: the hiredis Debian 12 ships (0.14) has no TLS, and one path means one behaviour for
 * timeouts, limits and failures whichever the configuration.
 *
 * Commands made while the connection is being opened (AUTH, PING, the probe) wait in conn->out
 * and go out when it is connected (TLS: after the handshake, so nothing is ever sent in clear).
 * The connection is ready once the rate script has run on a key of its own (the probe): a
 * Redis that answers PING but cannot run the scripts (a read-only replica after a failover, a
 * full Redis that refuses writes, an ACL without EVAL) is never used, rather than used and
 * found wanting at every request. An error reply to any script later drops the connection
 * likewise, and the probe runs again once a second on every connection in use, so that a
 * worker without traffic finds out too (and the process says so once, not when its busiest
 * worker happens to).
 * Replies come in the order commands were sent, so the commands in flight are a ring (their
 * callbacks and send times): the oldest unanswered one tells whether Redis is too slow. A
 * timer checks it; dropping the connection answers every command in flight with no reply,
 * and rate decisions waiting for one are then made locally. */
#include "proxy/shared.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "proxy/log.h"
#include "proxy/runtime.h"
#include "proxy/stream.h"

#define SHARED_MAX_INFLIGHT   4096   /* commands in flight per connection; past it: local */
#define SHARED_CONNECT_MIN_MS 1000   /* a connection gets at least this long to become ready */
#define SHARED_RETRY_MIN_MS   100
#define SHARED_RETRY_MAX_MS   2000
#define SHARED_SYNC_MS        1000   /* credential figures are read back this often */
#define SHARED_PROBE_MS       1000   /* a connection in use runs the probe this often */
#define SHARED_KEY_MAX        256
/* The probe's rate and burst: a million a second, so that the probe key's bucket (its own,
 * "PREFIXprobe") is never the reason a probe is refused, and it expires within about 1 s. */
#define SHARED_PROBE_RATE     1000000
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
    SSL_CTX *tls;           /* with "tls": every worker's connections use it; NULL: plain */
    int conns, up;          /* atomic */
    int logged;             /* atomic: what was last logged: -1 nothing, 0 local, 1 Redis */
    uint64_t fallbacks, timeouts, local, remote, tls_failures; /* atomic */
};

/* What to do with a command's reply. reply is NULL when the connection went away first (then
 * conn's state is not to be touched: it is being dropped or freed). */
typedef void (*reply_fn)(struct shared_conn *conn, redisReply *reply, void *priv);

struct inflight {
    reply_fn fn;
    void *priv;
    uint64_t sent_us;
};

struct shared_conn {
    struct shared *sh;
    struct stream_ctx *sctx;
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *resolving;
    enum shared_state state;
    int fd;                      /* the socket until it is connected (then the stream's); -1 */
    struct event *connecting;    /* watches fd until it is connected; NULL otherwise */
    struct stream s;             /* valid while has_stream */
    int has_stream;
    redisReader *reader;         /* with the stream */
    struct evbuffer *out;        /* commands not yet handed to the stream */
    unsigned gen;                /* changes whenever the connection is dropped */
    struct event *tick;
    uint64_t retry_at_us, sync_at_us, probe_at_us;
    unsigned retry_ms;
    int sync;
    const struct runtime *rt;
    struct inflight sent[SHARED_MAX_INFLIGHT]; /* the commands in flight, oldest first */
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
    unsigned long delta; /* this process's mints the script adds */
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

/* The TLS client context for Redis: TLS 1.2 or later, the server's certificate verified
 * against the CA file (else the system's store), and the client certificate when one is
 * configured. NULL with err set on failure. */
static SSL_CTX *tls_ctx_new(const struct conf_shared *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    const char *what = "cannot create the TLS context for Redis";
    unsigned long e;
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        goto fail;
    /* Verification is always on: there is deliberately no setting that turns it off. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    what = cfg->tls_ca_file ? "cannot load shared_state.tls.ca_file"
                            : "cannot load the system's trusted certificates";
    if (cfg->tls_ca_file ? !SSL_CTX_load_verify_locations(ctx, cfg->tls_ca_file, NULL)
                         : !SSL_CTX_set_default_verify_paths(ctx))
        goto fail;
    if (cfg->tls_cert_file) {
        what = "cannot load shared_state.tls.cert_file";
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1)
            goto fail;
        /* OpenSSL refuses a key that is not the certificate's here ("key values mismatch"). */
        what = "cannot load shared_state.tls.key_file";
        if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1)
            goto fail;
    }
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
fail:
    e = ERR_peek_last_error();
    snprintf(err, errlen, "%s: %s", what, e ? ERR_reason_error_string(e) : "out of memory");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

struct shared *shared_new(const struct conf_shared *cfg, int nworkers, char *err, size_t errlen)
{
    struct shared *sh;
    int oom = 0;
    err[0] = '\0';
    if (cfg->redis == NULL)
        return NULL;
    sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sh->cfg = *cfg;
    sh->cfg.redis = dup_or_null(cfg->redis, &oom);
    sh->cfg.host = dup_or_null(cfg->host, &oom);
    sh->cfg.unix_path = dup_or_null(cfg->unix_path, &oom);
    sh->cfg.password_env = dup_or_null(cfg->password_env, &oom);
    sh->cfg.password = dup_or_null(cfg->password, &oom);
    sh->cfg.key_prefix = dup_or_null(cfg->key_prefix, &oom);
    sh->cfg.tls_ca_file = dup_or_null(cfg->tls_ca_file, &oom);
    sh->cfg.tls_server_name = dup_or_null(cfg->tls_server_name, &oom);
    sh->cfg.tls_cert_file = dup_or_null(cfg->tls_cert_file, &oom);
    sh->cfg.tls_key_file = dup_or_null(cfg->tls_key_file, &oom);
    sh->logged = -1;
    (void)nworkers;
    if (oom) {
        snprintf(err, errlen, "out of memory");
        shared_free(sh);
        return NULL;
    }
    if (cfg->tls && (sh->tls = tls_ctx_new(cfg, err, errlen)) == NULL) {
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
    SSL_CTX_free(sh->tls);
    free(sh->cfg.redis);
    free(sh->cfg.host);
    free(sh->cfg.unix_path);
    free(sh->cfg.password_env);
    free(sh->cfg.password);
    free(sh->cfg.key_prefix);
    free(sh->cfg.tls_ca_file);
    free(sh->cfg.tls_server_name);
    free(sh->cfg.tls_cert_file);
    free(sh->cfg.tls_key_file);
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
           a->replicas == b->replicas && a->tls == b->tls &&
           str_same(a->tls_ca_file, b->tls_ca_file) &&
           str_same(a->tls_server_name, b->tls_server_name) &&
           str_same(a->tls_cert_file, b->tls_cert_file) &&
           str_same(a->tls_key_file, b->tls_key_file);
}

void shared_stats_read(const struct shared *sh, struct shared_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->target = sh->cfg.redis;
    st->tls = sh->tls != NULL;
    st->replicas = sh->cfg.replicas;
    st->connections = __atomic_load_n(&sh->conns, __ATOMIC_RELAXED);
    st->up = __atomic_load_n(&sh->up, __ATOMIC_RELAXED);
    st->fallbacks = get64(&sh->fallbacks);
    st->timeouts = get64(&sh->timeouts);
    st->local_decisions = get64(&sh->local);
    st->remote_decisions = get64(&sh->remote);
    st->tls_failures = get64(&sh->tls_failures);
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
        log_msg(LOG_INFO, "shared state: using Redis at %s%s", sh->cfg.redis,
                sh->tls ? " (TLS)" : "");
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
        conn->probe_at_us = mono_us() + SHARED_PROBE_MS * 1000u;
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

/* Closes the socket, the stream and the reader; commands not yet sent are discarded. */
static void conn_close(struct shared_conn *conn)
{
    conn->gen++;
    if (conn->connecting) {
        event_free(conn->connecting);
        conn->connecting = NULL;
    }
    if (conn->fd >= 0) {
        close(conn->fd);
        conn->fd = -1;
    }
    if (conn->has_stream) {
        stream_close(&conn->s);
        conn->has_stream = 0;
    }
    redisReaderFree(conn->reader);
    conn->reader = NULL;
    evbuffer_drain(conn->out, evbuffer_get_length(conn->out));
}

/* Every command in flight is answered with no reply (rate decisions then go local), oldest
 * first. A callback cannot add one: nothing is sent while the connection is closed. */
static void conn_answer_all(struct shared_conn *conn)
{
    while (conn->nsent > 0) {
        struct inflight e = conn->sent[conn->sent_head];
        conn->sent_head = (conn->sent_head + 1) % SHARED_MAX_INFLIGHT;
        conn->nsent--;
        e.fn(conn, NULL, e.priv);
    }
    conn->sent_head = 0;
}

/* Leaves the connection: closed, the state changed (logged, counted), then every command in
 * flight answered with no reply. */
static void conn_drop(struct shared_conn *conn, enum shared_event ev, const char *why)
{
    conn_close(conn);
    conn->retry_at_us = mono_us() + (uint64_t)conn->retry_ms * 1000u;
    conn->retry_ms = conn->retry_ms * 2 > SHARED_RETRY_MAX_MS ? SHARED_RETRY_MAX_MS
                                                              : conn->retry_ms * 2;
    log_msg(LOG_DEBUG, "shared state: connection to %s dropped: %s", conn->sh->cfg.redis, why);
    set_state(conn, ev, why);
    conn_answer_all(conn);
}

/* Hands what conn->out holds to the stream once there is one. A failure here (no memory)
 * leaves the commands unanswered: the timer then drops the connection, from the loop. */
static void conn_flush(struct shared_conn *conn)
{
    struct evbuffer *o;
    if (!conn->has_stream || evbuffer_get_length(conn->out) == 0)
        return;
    o = stream_output(&conn->s);
    if (o == NULL || evbuffer_add_buffer(o, conn->out) < 0)
        return;
    stream_settle(&conn->s);
}

/* Sends a command (fn is called with its reply later, never from here); its send time joins
 * the ring. Returns 0, or -1 (not sent: no connection, the ring is full, or no memory). */
static int conn_send(struct shared_conn *conn, reply_fn fn, void *priv, const char *fmt, ...)
{
    va_list ap;
    char *cmd = NULL;
    int len, r;
    struct inflight *e;
    if (conn->state == SHARED_DOWN || conn->nsent == SHARED_MAX_INFLIGHT)
        return -1;
    va_start(ap, fmt);
    len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return -1;
    r = evbuffer_add(conn->out, cmd, (size_t)len);
    redisFreeCommand(cmd);
    if (r < 0)
        return -1;
    e = &conn->sent[(conn->sent_head + conn->nsent) % SHARED_MAX_INFLIGHT];
    e->fn = fn;
    e->priv = priv;
    e->sent_us = mono_us();
    conn->nsent++;
    conn_flush(conn);
    return 0;
}

static void auth_reply(struct shared_conn *conn, redisReply *r, void *priv)
{
    char why[160];
    (void)priv;
    if (r == NULL || r->type != REDIS_REPLY_ERROR)
        return;
    snprintf(why, sizeof(why), "AUTH refused: %.100s", r->str ? r->str : "");
    conn_drop(conn, SHARED_EV_FAILED, why);
}

static void ping_reply(struct shared_conn *conn, redisReply *r, void *priv)
{
    char why[160];
    (void)priv;
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_STATUS && r->str && strcmp(r->str, "PONG") == 0)
        return; /* ready once the probe has run too */
    snprintf(why, sizeof(why), "PING answered with %.100s",
             r->type == REDIS_REPLY_ERROR && r->str ? r->str : "something else");
    conn_drop(conn, SHARED_EV_FAILED, why);
}

/* "PREFIXkind:name", or "PREFIXkind" when name is NULL. */
static void key_for(const struct shared *sh, const char *kind, const char *name, char *out,
                    size_t len)
{
    snprintf(out, len, "%s%s%s%s", sh->cfg.key_prefix, kind, name ? ":" : "", name ? name : "");
}

/* An error reply to one of the scripts: Redis cannot do what the proxy needs of it, so the
 * connection is dropped (the replica decides locally, logs why, counts it) and a new one is
 * used only once its probe runs. Returns 1 when dropped, 0 for any other reply. */
static int conn_refused(struct shared_conn *conn, const redisReply *r, const char *what)
{
    char why[200];
    if (r == NULL || r->type != REDIS_REPLY_ERROR || conn->state == SHARED_DOWN)
        return 0;
    snprintf(why, sizeof(why), "Redis refused the %s script: %.120s", what, r->str ? r->str : "");
    conn_drop(conn, SHARED_EV_FAILED, why);
    return 1;
}

/* The probe (the rate script on a key of its own) answered: the connection is ready, or not
 * usable at all. */
static void probe_reply(struct shared_conn *conn, redisReply *r, void *priv)
{
    int allowed;
    double wait;
    (void)priv;
    if (r == NULL || conn_refused(conn, r, "rate"))
        return;
    if (shared_parse_rate(r, &allowed, &wait) < 0) {
        conn_drop(conn, SHARED_EV_FAILED, "the rate script answered with something else");
        return;
    }
    if (conn->state == SHARED_CONNECTING)
        set_state(conn, SHARED_EV_READY, "ready");
}

/* Sends the probe: the rate script on the key PREFIXprobe. Returns 0, or -1 (not sent). */
static int conn_probe(struct shared_conn *conn)
{
    char key[SHARED_KEY_MAX];
    key_for(conn->sh, "probe", NULL, key, sizeof(key));
    return conn_send(conn, probe_reply, NULL, "EVAL %s 1 %s %d %d", rate_script, key,
                     SHARED_PROBE_RATE, SHARED_PROBE_RATE);
}

/* Feeds what arrived to the reader and answers the commands in flight, oldest first. Returns
 * 0, or -1 when the connection was dropped (by this or by a reply's callback). */
static int conn_read(struct shared_conn *conn)
{
    struct evbuffer *in = stream_input(&conn->s);
    unsigned gen = conn->gen;
    struct evbuffer_iovec v;
    const char *bad = NULL;
    char why[200];
    void *reply;
    while (in && evbuffer_peek(in, -1, NULL, &v, 1) == 1 && v.iov_len > 0) {
        if (redisReaderFeed(conn->reader, v.iov_base, v.iov_len) != REDIS_OK) {
            bad = "out of memory";
            goto fail;
        }
        evbuffer_drain(in, v.iov_len);
    }
    if (conn->reader->len > SHARED_MAX_READ_BUFFER) {
        /* A reply larger than any of ours (a bulk string of gigabytes announced): not Redis
         * as the proxy uses it. */
        bad = "a reply larger than 1 MiB";
        goto fail;
    }
    for (;;) {
        struct inflight e;
        if (redisReaderGetReply(conn->reader, &reply) != REDIS_OK) {
            snprintf(why, sizeof(why), "not a Redis reply: %.120s", conn->reader->errstr);
            bad = why;
            goto fail;
        }
        if (reply == NULL)
            return 0;
        if (conn->nsent == 0) {
            freeReplyObject(reply);
            bad = "a reply to no command";
            goto fail;
        }
        e = conn->sent[conn->sent_head];
        conn->sent_head = (conn->sent_head + 1) % SHARED_MAX_INFLIGHT;
        conn->nsent--;
        e.fn(conn, reply, e.priv);
        freeReplyObject(reply);
        if (conn->gen != gen)
            return -1;
    }
fail:
    conn_drop(conn, SHARED_EV_FAILED, bad);
    return -1;
}

/* Why the connection ended: a refused certificate is said as such. */
static void conn_end_reason(struct shared_conn *conn, char *why, size_t len)
{
    struct stream *s = &conn->s;
    char e[160];
    long vr = s->ssl ? SSL_get_verify_result(s->ssl) : X509_V_OK;
    if (vr != X509_V_OK) {
        snprintf(why, len, "TLS: certificate verification failed: %s",
                 X509_verify_cert_error_string(vr));
    } else if (s->handshaking) {
        stream_error_string(s, e, sizeof(e));
        snprintf(why, len, "TLS handshake failed: %s", e);
    } else if (s->ssl && conn->state == SHARED_CONNECTING) {
        /* TLS 1.3: the server judges the client's certificate after the client has finished
         * its handshake, and refuses it by closing. */
        stream_error_string(s, e, sizeof(e));
        snprintf(why, len, "TLS: closed by Redis right after the handshake (a client "
                 "certificate it requires, or refuses?): %s", e);
    } else if (s->failed) {
        stream_error_string(s, e, sizeof(e));
        snprintf(why, len, "connection lost: %s", e);
    } else {
        snprintf(why, len, "connection lost: closed");
    }
}

static void conn_stream_cb(struct stream *s, unsigned ev, void *arg)
{
    struct shared_conn *conn = arg;
    char why[256];
    (void)s;
    if ((ev & STREAM_READ) && conn_read(conn) < 0)
        return;
    if (ev & (STREAM_ERROR | STREAM_EOF)) {
        if (conn->s.ssl && conn->state == SHARED_CONNECTING)
            add64(&conn->sh->tls_failures);
        conn_end_reason(conn, why, sizeof(why));
        conn_drop(conn, SHARED_EV_FAILED, why);
    }
}

/* The socket is connected: the stream takes it over (TLS: the handshake starts, verifying the
 * certificate against the configured name) and the commands waiting go out. */
static void conn_connected(struct shared_conn *conn)
{
    const struct conf_shared *cfg = &conn->sh->cfg;
    const char *name = cfg->tls_server_name ? cfg->tls_server_name : cfg->host;
    unsigned char ipbuf[16];
    SSL *ssl = NULL;
    if (conn->connecting) {
        event_free(conn->connecting);
        conn->connecting = NULL;
    }
    conn->reader = redisReaderCreate();
    if (conn->reader == NULL || shared_reader_limit(conn->reader) < 0)
        goto fail;
    if (conn->sh->tls) {
        int is_ip = inet_pton(AF_INET, name, ipbuf) == 1 || inet_pton(AF_INET6, name, ipbuf) == 1;
        ssl = SSL_new(conn->sh->tls);
        if (ssl == NULL)
            goto fail;
        /* RFC 6125: the configured name in the certificate's subjectAltName, never its CN;
         * SNI (RFC 6066 3) carries host names only, never an address. */
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
                                   X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
        if (!SSL_set1_host(ssl, name) || (!is_ip && !SSL_set_tlsext_host_name(ssl, name)))
            goto fail;
    }
    if (stream_init(&conn->s, conn->sctx, conn->fd, ssl,
                    ssl ? STREAM_TLS_CONNECT : STREAM_PLAIN, conn_stream_cb, conn) < 0)
        goto fail;
    conn->has_stream = 1;
    conn->fd = -1; /* the stream's now */
    conn_flush(conn);
    return;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    conn_drop(conn, SHARED_EV_FAILED, "out of memory");
}

static void connect_cb(evutil_socket_t fd, short what, void *arg)
{
    struct shared_conn *conn = arg;
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    char why[160];
    (void)what;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr != 0) {
        snprintf(why, sizeof(why), "cannot connect: %s", strerror(soerr));
        conn_drop(conn, SHARED_EV_FAILED, why);
        return;
    }
    conn_connected(conn);
}

/* Opens the connection to an address: AUTH, PING and the probe are queued first, and sent once
 * it is connected. The connection's time limit is the PING's (tick_cb). */
static void conn_open(struct shared_conn *conn, const struct sockaddr *sa, socklen_t salen)
{
    const struct conf_shared *cfg = &conn->sh->cfg;
    char why[160];
    int one = 1;
    set_state(conn, SHARED_EV_CONNECT, "connecting");
    if ((cfg->password && conn_send(conn, auth_reply, NULL, "AUTH %s", cfg->password) < 0) ||
        conn_send(conn, ping_reply, NULL, "PING") < 0 || conn_probe(conn) < 0) {
        conn_drop(conn, SHARED_EV_FAILED, "out of memory");
        return;
    }
    conn->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (conn->fd < 0) {
        snprintf(why, sizeof(why), "cannot create a socket: %s", strerror(errno));
        conn_drop(conn, SHARED_EV_FAILED, why);
        return;
    }
    if (sa->sa_family != AF_UNIX)
        setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(conn->fd, sa, salen) == 0) {
        conn_connected(conn);
        return;
    }
    if (errno != EINPROGRESS) {
        snprintf(why, sizeof(why), "cannot connect: %s", strerror(errno));
        conn_drop(conn, SHARED_EV_FAILED, why);
        return;
    }
    conn->connecting = event_new(conn->sctx->base, conn->fd, EV_WRITE, connect_cb, conn);
    if (conn->connecting == NULL || event_add(conn->connecting, NULL) < 0)
        conn_drop(conn, SHARED_EV_FAILED, "cannot watch the connection");
}

static void resolved(int err, struct evutil_addrinfo *res, void *arg)
{
    struct shared_conn *conn = arg;
    char why[160];
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
        conn_drop(conn, SHARED_EV_FAILED, why);
    } else {
        conn_open(conn, res->ai_addr, (socklen_t)res->ai_addrlen);
    }
    if (res)
        evutil_freeaddrinfo(res);
}

/* A socket path or a numeric address is connected to at once; a name goes through the
 * worker's evdns first, so that nothing blocks on a resolver. */
static void conn_start(struct shared_conn *conn)
{
    const struct conf_shared *cfg = &conn->sh->cfg;
    struct evutil_addrinfo hints;
    union {
        struct sockaddr sa;
        struct sockaddr_un un;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } a;
    memset(&a, 0, sizeof(a));
    if (cfg->host == NULL) {
        a.un.sun_family = AF_UNIX;
        snprintf(a.un.sun_path, sizeof(a.un.sun_path), "%s", cfg->unix_path);
        conn_open(conn, &a.sa, sizeof(a.un));
        return;
    }
    if (inet_pton(AF_INET, cfg->host, &a.in.sin_addr) == 1) {
        a.in.sin_family = AF_INET;
        a.in.sin_port = htons((uint16_t)cfg->port);
        conn_open(conn, &a.sa, sizeof(a.in));
        return;
    }
    if (inet_pton(AF_INET6, cfg->host, &a.in6.sin6_addr) == 1) {
        a.in6.sin6_family = AF_INET6;
        a.in6.sin6_port = htons((uint16_t)cfg->port);
        conn_open(conn, &a.sa, sizeof(a.in6));
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof(port), "%d", cfg->port);
    conn->resolving = evdns_getaddrinfo(conn->dns, cfg->host, port, &hints, resolved, conn);
}

static void sync_reply(struct shared_conn *conn, redisReply *reply, void *priv)
{
    struct shared_sync *s = priv;
    struct live_quota q;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
        live_mints_unshare(s->cred, s->delta); /* not added: the next sync sends them again */
    if (reply != NULL && shared_parse_figures(reply, &q) == 0)
        live_shared_merge(s->cred, &q);
    conn_refused(conn, reply, "sync");
    live_cred_put(s->cred);
    free(s);
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
        s->delta = live_mints_unshared(s->cred);
        key_for(conn->sh, "cred", rt->conf->credentials[i].name, key, sizeof(key));
        if (conn_send(conn, sync_reply, s, "EVAL %s 1 %s %lu", sync_script, key, s->delta) < 0) {
            live_mints_unshare(s->cred, s->delta);
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
        if (now - conn->sent[conn->sent_head].sent_us > limit) {
            if (conn->state == SHARED_CONNECTING && conn->has_stream && conn->s.ssl)
                add64(&conn->sh->tls_failures);
            conn_drop(conn, SHARED_EV_TIMEOUT,
                      conn->state == SHARED_UP ? "a reply took longer than the timeout"
                      : conn->has_stream && conn->s.handshaking
                          ? "no TLS handshake in time"
                          : "no answer to PING and the probe in time");
            return;
        }
    }
    if (conn->state == SHARED_DOWN && conn->resolving == NULL && now >= conn->retry_at_us)
        conn_start(conn);
    if (conn->sync && conn->state == SHARED_UP && now >= conn->sync_at_us) {
        conn->sync_at_us = now + SHARED_SYNC_MS * 1000u;
        conn_sync(conn);
    }
    if (conn->state == SHARED_UP && now >= conn->probe_at_us) {
        conn->probe_at_us = now + SHARED_PROBE_MS * 1000u;
        conn_probe(conn); /* not sent (the ring full): traffic is checking the connection */
    }
}

struct shared_conn *shared_conn_new(struct shared *sh, struct stream_ctx *sctx,
                                    struct evdns_base *dns, int sync)
{
    struct shared_conn *conn = calloc(1, sizeof(*conn));
    long period = sh->cfg.timeout_ms / 4;
    struct timeval tv;
    if (conn == NULL)
        return NULL;
    conn->sh = sh;
    conn->sctx = sctx;
    conn->dns = dns;
    conn->sync = sync;
    conn->fd = -1;
    conn->state = SHARED_DOWN;
    conn->retry_ms = SHARED_RETRY_MIN_MS;
    /* A quarter of the timeout: a slow reply is noticed within 1.25 timeouts. */
    if (period < 5)
        period = 5;
    if (period > 100)
        period = 100;
    tv.tv_sec = 0;
    tv.tv_usec = (suseconds_t)period * 1000;
    conn->out = evbuffer_new();
    conn->tick = event_new(sctx->base, -1, EV_PERSIST, tick_cb, conn);
    if (conn->out == NULL || conn->tick == NULL || event_add(conn->tick, &tv) < 0) {
        if (conn->tick)
            event_free(conn->tick);
        if (conn->out)
            evbuffer_free(conn->out);
        free(conn);
        return NULL;
    }
    __atomic_add_fetch(&sh->conns, 1, __ATOMIC_RELAXED);
    conn_start(conn);
    return conn;
}

void shared_conn_free(struct shared_conn *conn)
{
    if (conn == NULL)
        return;
    event_free(conn->tick);
    if (conn->resolving)
        evdns_getaddrinfo_cancel(conn->resolving); /* resolved() hears of it later */
    if (conn->state == SHARED_UP)
        __atomic_sub_fetch(&conn->sh->up, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&conn->sh->conns, 1, __ATOMIC_RELAXED);
    conn->state = SHARED_DOWN;
    conn_close(conn);
    conn_answer_all(conn);
    evbuffer_free(conn->out);
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

static void rate_reply(struct shared_conn *conn, redisReply *reply, void *priv)
{
    struct shared_wait *w = priv;
    int allowed = -1;
    double wait = 0;
    /* dropped first, so that the local decision below already sees Redis as not in use */
    if (reply == NULL || conn_refused(conn, reply, "rate")) {
        allowed = -1;
    } else if (shared_parse_rate(reply, &allowed, &wait) < 0) {
        allowed = -1;
        conn_drop(conn, SHARED_EV_FAILED, "the rate script answered with something else");
    } else {
        add64(&w->sh->remote);
    }
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

static void note_reply(struct shared_conn *conn, redisReply *r, void *priv)
{
    (void)priv;
    conn_refused(conn, r, "figures");
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
