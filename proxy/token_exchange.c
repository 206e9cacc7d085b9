/* token_exchange: access tokens for the maps and apple-business credentials, obtained on the
 * exchanger's own event loop with the proxy's upstream connections (token_exchange.h). */
#include "proxy/token_exchange.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <openssl/crypto.h>

#include "auth/access_token.h"
#include "proxy/evbuf.h"
#include "proxy/http1.h"
#include "proxy/http_error.h"
#include "proxy/log.h"
#include "proxy/upstream.h"
#include "proxy/worker.h"

/* Apple's answers are small: a head larger than this is refused like a body over
 * ACCESS_TOKEN_MAX_BODY. */
static const struct http1_limits answer_limits = {.max_line = 0, .max_head = 16 * 1024,
                                                  .max_headers = 100};

struct tx_run;
/* How a run ends. token is NULL unless result is EXCHANGE_OK; the run is freed after. */
typedef void (*tx_done_fn)(struct tx_run *run, enum exchange_result result, const char *reason,
                           const char *token, long expires_in);

/* One exchange in flight. */
struct tx_run {
    struct wgen *gen;            /* held: the runtime and pools it started on */
    size_t cred;
    struct upconn *up;           /* NULL when none is held */
    struct access_token_request rq; /* wiped when the run ends */
    struct http1_msg answer;
    int answer_init;
    struct evbuffer *body;       /* the answer's body, at most ACCESS_TOKEN_MAX_BODY bytes */
    int body_too_big;
    int retried;                 /* the stale pooled connection retry was used */
    tx_done_fn done;
    void *arg;
    struct tx_run *next;         /* the exchanger's list */
};

struct token_exchanger {
    struct worker w;             /* no listeners: the loop, resolver and pools of exchanges */
    int w_init;
    struct worker *workers; /* borrowed: the client workers, woken when an exchange ends */
    int nworkers;
    struct event *tick;          /* once a second: refresh ahead of expiry, retry after backoff */
    struct tx_run *runs;         /* in flight, on any runtime */
};

static const struct credential *run_cred(const struct tx_run *run)
{
    return &run->gen->rt->conf->credentials[run->cred];
}

static const struct target *run_target(const struct tx_run *run)
{
    const struct runtime *rt = run->gen->rt;
    return &rt->targets[rt->token_target[run->cred]];
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void run_free(struct tx_run *run)
{
    if (run->up)
        upstream_abort(run->up);
    if (run->body) {
        size_t n = evbuffer_get_length(run->body);
        if (n > 0) {
            /* The body held the access token. */
            unsigned char *p = evbuffer_pullup(run->body, (ev_ssize_t)n);
            if (p)
                OPENSSL_cleanse(p, n);
        }
        evbuffer_free(run->body);
    }
    if (run->answer_init)
        http1_msg_deinit(&run->answer);
    access_token_request_deinit(&run->rq);
    wgen_unref(run->gen);
    free(run);
}

/* Ends the run: reports, then frees it. Nothing touches run afterwards. */
static void run_end(struct tx_run *run, enum exchange_result result, const char *reason,
                    const char *token, long expires_in)
{
    tx_done_fn done = run->done;
    if (run->up) {
        upstream_abort(run->up);
        run->up = NULL;
    }
    done(run, result, reason, token, expires_in);
    run_free(run);
}

static int body_data(void *arg, const char *at, size_t len)
{
    struct tx_run *run = arg;
    if (evbuffer_get_length(run->body) + len > ACCESS_TOKEN_MAX_BODY) {
        run->body_too_big = 1;
        return -1;
    }
    evbuffer_add(run->body, at, len);
    return 0;
}

static const struct http1_sink body_sink = {body_data, NULL, NULL};

/* What Apple said in a refusal, when it said it in a known shape: OAuth's {"error": "..."}
 * (RFC 6749 5.2) or Apple's {"errors": [{"code": "..."}]}. Printable and short, never the body
 * itself. */
static void refusal_code(struct evbuffer *body, char *out, size_t outlen)
{
    size_t n = evbuffer_get_length(body), i;
    const char *s = NULL;
    cJSON *root;
    out[0] = '\0';
    if (n == 0 || n > ACCESS_TOKEN_MAX_BODY)
        return;
    root = cJSON_ParseWithLength((const char *)evbuffer_pullup(body, (ev_ssize_t)n), n);
    if (root == NULL)
        return;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(root, "errors");
    if (cJSON_IsString(e))
        s = e->valuestring;
    else if (cJSON_IsArray(errs) && cJSON_IsObject(cJSON_GetArrayItem(errs, 0))) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(errs, 0), "code");
        if (cJSON_IsString(c))
            s = c->valuestring;
    }
    for (i = 0; s && s[i] && i < 64 && i + 1 < outlen; i++)
        out[i] = (s[i] > 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\') ? s[i] : '_';
    out[s ? i : 0] = '\0';
    cJSON_Delete(root);
}

/* The whole answer is in: give the connection back, then judge the answer. */
static void answer_complete(struct tx_run *run)
{
    const struct target *t = run_target(run);
    char reason[256], code[72], err[200];
    int reusable = run->answer.keep_alive && run->answer.body != HTTP1_BODY_EOF &&
                   stream_input_length(&run->up->s) == 0;
    upstream_put(run->up, reusable);
    run->up = NULL;
    if (run->answer.status != 200) {
        refusal_code(run->body, code, sizeof(code));
        snprintf(reason, sizeof(reason), "%s answered %d%s%s", t->name, run->answer.status,
                 code[0] ? " " : "", code);
        run_end(run, EXCHANGE_STATUS, reason, NULL, 0);
        return;
    }
    size_t n = evbuffer_get_length(run->body);
    const char *text = n ? (const char *)evbuffer_pullup(run->body, (ev_ssize_t)n) : "";
    char *token = NULL;
    long expires_in = 0;
    if (access_token_parse(run_cred(run)->profile, text, n, &token, &expires_in, err,
                           sizeof(err)) < 0) {
        snprintf(reason, sizeof(reason), "%s answered 200 without a usable access token: %s",
                 t->name, err);
        run_end(run, EXCHANGE_MALFORMED, reason, NULL, 0);
        return;
    }
    run_end(run, EXCHANGE_OK, NULL, token, expires_in);
    OPENSSL_cleanse(token, strlen(token));
    free(token);
}

static void answer_bad(struct tx_run *run, const char *what)
{
    char reason[256];
    snprintf(reason, sizeof(reason), "%s sent a malformed answer: %s", run_target(run)->name,
             run->body_too_big ? "a body over 64 KiB" : what);
    run_end(run, EXCHANGE_MALFORMED, reason, NULL, 0);
}

/* Reads what has arrived. Returns 1 when the run ended. */
static int answer_read(struct tx_run *run)
{
    struct evbuffer *in = stream_input(&run->up->s);
    while (!http1_msg_head_complete(&run->answer)) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < answer_limits.max_head + 1 ? len : answer_limits.max_head + 1;
        if (n == 0)
            return 0;
        int r = http1_parse_head(&run->answer, (const char *)evbuffer_pullup(in, (ev_ssize_t)n),
                                 n);
        if (r == 0)
            return 0;
        if (r < 0) {
            answer_bad(run, run->answer.error_detail);
            return 1;
        }
        evbuffer_drain(in, run->answer.head_len);
        if (run->answer.status < 200) {
            http1_msg_init(&run->answer, HTTP_RESPONSE, &answer_limits);
            run->answer.sink = &body_sink;
            run->answer.sink_arg = run;
            continue;
        }
    }
    while (!http1_msg_complete(&run->answer) && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        size_t used = 0;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        int r = http1_parse_body(&run->answer, v.iov_base, v.iov_len, &used);
        evbuffer_drain(in, used);
        if (r < 0) {
            answer_bad(run, run->answer.error_detail);
            return 1;
        }
    }
    if (http1_msg_complete(&run->answer)) {
        answer_complete(run);
        return 1;
    }
    return 0;
}

static void run_connect(struct tx_run *run);

static void run_io_cb(struct stream *s, unsigned ev, void *arg)
{
    struct tx_run *run = arg;
    const struct target *t = run_target(run);
    char reason[256], why[160];
    if ((ev & STREAM_READ) && answer_read(run))
        return;
    if (ev & (STREAM_EOF | STREAM_ERROR)) {
        if (!http1_msg_head_complete(&run->answer) && stream_input_length(s) == 0 &&
            run->up->reused && !run->retried) {
            /* A pooled connection Apple closed while idle: nothing was processed. */
            upstream_abort(run->up);
            run->up = NULL;
            run->retried = 1;
            run_connect(run);
            return;
        }
        if (!(ev & STREAM_ERROR) && http1_msg_head_complete(&run->answer) &&
            !http1_msg_complete(&run->answer) && run->answer.body == HTTP1_BODY_EOF &&
            stream_clean_eof(s) && http1_parse_eof(&run->answer) == 1) {
            answer_complete(run);
            return;
        }
        why[0] = '\0';
        if (ev & STREAM_ERROR)
            stream_error_string(s, why, sizeof(why));
        snprintf(reason, sizeof(reason), "%s closed the connection %s the answer%s%s", t->name,
                 !http1_msg_head_complete(&run->answer) ? "before" : "in the middle of",
                 why[0] ? ": " : "", why);
        run_end(run, EXCHANGE_UNREACHABLE, reason, NULL, 0);
        return;
    }
    if (ev & (STREAM_RTIMEOUT | STREAM_WTIMEOUT)) {
        snprintf(reason, sizeof(reason), "%s did not answer in time", t->name);
        run_end(run, EXCHANGE_TIMEOUT, reason, NULL, 0);
    }
}

/* The connection is ready: send the request. */
static void run_send(struct tx_run *run)
{
    const struct conf_limits *lim = &run->gen->rt->conf->limits;
    const struct target *t = run_target(run);
    struct stream *s = &run->up->s;
    struct evbuffer *out;
    stream_setcb(s, run_io_cb, run);
    stream_set_watermarks(s, 0, 0);
    /* The exchange has the timeouts of any upstream request: connect and handshake in
     * upstream.c, then upstream_response_timeout for the answer and send_timeout. */
    stream_set_timeouts(s, (uint32_t)lim->upstream_response_timeout_ms,
                        (uint32_t)lim->send_timeout_ms);
    stream_set_reading(s, 1);
    out = stream_output(s);
    if (out == NULL || stream_input(s) == NULL) {
        run_end(run, EXCHANGE_UNREACHABLE, "out of memory", NULL, 0);
        return;
    }
    if (run->answer_init)
        http1_msg_deinit(&run->answer);
    http1_msg_init(&run->answer, HTTP_RESPONSE, &answer_limits);
    run->answer_init = 1;
    run->answer.sink = &body_sink;
    run->answer.sink_arg = run;
    evbuffer_drain(run->body, evbuffer_get_length(run->body));
    evbuffer_add_printf(out, "%s %s HTTP/1.1\r\nHost: %s\r\n", run->rq.method, run->rq.path,
                        t->host_header);
    ADD_LITERAL(out, "Accept: application/json\r\nUser-Agent: apple-auth-proxy/" AAP_VERSION "\r\n");
    evbuffer_add(out, run->rq.headers, run->rq.headers_len);
    if (run->rq.body)
        evbuffer_add_printf(out, "Content-Length: %zu\r\n\r\n", run->rq.body_len);
    else
        ADD_LITERAL(out, "\r\n");
    if (run->rq.body)
        evbuffer_add(out, run->rq.body, run->rq.body_len);
    stream_settle(s);
}

static void run_ready(struct upconn *conn, enum upstream_error err, const char *detail, void *arg)
{
    struct tx_run *run = arg;
    if (err == UPSTREAM_OK) {
        run->up = conn;
        run_send(run);
        return;
    }
    run->up = NULL;
    run_end(run,
            err == UPSTREAM_ERR_TLS                                              ? EXCHANGE_TLS
            : err == UPSTREAM_ERR_CONNECT_TIMEOUT || err == UPSTREAM_ERR_TLS_TIMEOUT ? EXCHANGE_TIMEOUT
                                                                                 : EXCHANGE_UNREACHABLE,
            detail, NULL, 0);
}

static void run_connect(struct tx_run *run)
{
    struct upool *pool = &run->gen->pools[run->gen->rt->token_target[run->cred]];
    struct upconn *conn = NULL;
    int r = upstream_get(pool, run_ready, run, &conn);
    if (r < 0) {
        run_end(run, EXCHANGE_UNREACHABLE, "out of memory", NULL, 0);
        return;
    }
    run->up = conn;
    if (r == 0)
        run_send(run);
}

/* Starts an exchange for credential cred of gen's runtime; done reports its end (possibly
 * before this returns). Returns -1 (done is not called) when out of memory. */
static int run_start(struct wgen *gen, size_t cred, tx_done_fn done, void *arg,
                     struct tx_run **list)
{
    struct tx_run *run = calloc(1, sizeof(*run));
    char err[256];
    if (run == NULL)
        return -1;
    run->gen = wgen_ref(gen);
    run->cred = cred;
    run->done = done;
    run->arg = arg;
    run->body = evbuffer_new();
    if (list) {
        run->next = *list;
        *list = run;
    }
    if (run->body == NULL) {
        run_end(run, EXCHANGE_SIGN, "out of memory", NULL, 0);
        return 0;
    }
    if (access_token_request_build(run_cred(run), time(NULL), &run->rq, err, sizeof(err)) < 0) {
        run_end(run, EXCHANGE_SIGN, err, NULL, 0);
        return 0;
    }
    run_connect(run);
    return 0;
}

/* ---- the exchanger: one thread for every exchanged credential ---- */

static void exchanger_unlink(struct token_exchanger *x, struct tx_run *run)
{
    struct tx_run **p;
    for (p = &x->runs; *p; p = &(*p)->next)
        if (*p == run) {
            *p = run->next;
            return;
        }
}

static void exchanger_done(struct tx_run *run, enum exchange_result result, const char *reason,
                           const char *token, long expires_in)
{
    struct token_exchanger *x;
    struct runtime *rt;
    struct exchange_state *st;
    const struct credential *c;
    x = run->arg;
    rt = run->gen->rt;
    st = &rt->exchange[run->cred];
    c = run_cred(run);
    exchanger_unlink(x, run);
    st->in_flight = 0;
    if (result == EXCHANGE_OK && token_cache_install(rt->tokens, c, token, strlen(token),
                                                     expires_in) < 0) {
        result = EXCHANGE_SIGN;
        reason = "out of memory";
    }
    if (result == EXCHANGE_OK) {
        struct runtime *cur = x->w.gen->rt;
        size_t j = cur != rt ? runtime_credential_index(cur, c->name) : SIZE_MAX;
        st->failures = 0;
        runtime_exchange_record(rt, run->cred, EXCHANGE_OK, NULL, NULL, 0);
        /* Begun before a reload: the configuration now in use gets the token too. */
        if (j != SIZE_MAX && runtime_same_exchange(&cur->conf->credentials[j], c))
            token_cache_adopt(cur->tokens, &cur->conf->credentials[j], rt->tokens, c);
        log_msg(LOG_INFO, "credential %s: new access token from %s (expires in %ld s)", c->name,
                run_target(run)->name, expires_in);
    } else {
        long backoff;
        st->failures++;
        backoff = st->failures >= 7 ? TOKEN_EXCHANGE_MAX_BACKOFF : 1L << (st->failures - 1);
        if (backoff > TOKEN_EXCHANGE_MAX_BACKOFF)
            backoff = TOKEN_EXCHANGE_MAX_BACKOFF;
        runtime_exchange_record(rt, run->cred, result, proxy_err_token_exchange, reason,
                                wall_ms() + backoff * 1000);
        log_msg(LOG_ERROR, "credential %s: access-token exchange failed (%s): %s; next attempt "
                           "in %ld s", c->name, exchange_result_name(result), reason, backoff);
    }
    /* Requests waiting for this credential go on, or get the failure. */
    for (int i = 0; i < x->nworkers; i++)
        worker_wake(&x->workers[i]);
}

/* Whether an exchange begun on an earlier configuration, for the same credential, is still
 * going: its token will do (exchanger_done hands it over), so a reload does not start a second
 * exchange. */
static int exchange_in_flight_before(const struct token_exchanger *x, const struct runtime *rt,
                                     const struct credential *c)
{
    for (const struct tx_run *run = x->runs; run; run = run->next)
        if (run->gen->rt != rt && strcmp(run_cred(run)->name, c->name) == 0 &&
            runtime_same_exchange(run_cred(run), c))
            return 1;
    return 0;
}

/* Whether a route uses the credential (an unused one is never exchanged). */
static int credential_routed(const struct runtime *rt, size_t cred)
{
    for (size_t r = 0; r < rt->conf->nroutes; r++)
        if (rt->conf->routes[r].credential_index == cred)
            return 1;
    return 0;
}

static void exchanger_scan(struct token_exchanger *x)
{
    struct wgen *gen = x->w.gen;
    struct runtime *rt = gen->rt;
    long long now = wall_ms();
    for (size_t i = 0; i < rt->conf->ncredentials; i++) {
        const struct credential *c = &rt->conf->credentials[i];
        struct exchange_state *st = &rt->exchange[i];
        if (!profile_exchanged(c->profile) || st->in_flight || !credential_routed(rt, i))
            continue;
        if (__atomic_load_n(&st->failing, __ATOMIC_ACQUIRE) &&
            now < __atomic_load_n(&st->retry_at_ms, __ATOMIC_RELAXED))
            continue; /* backing off */
        if (!token_cache_due(rt->tokens, c, NULL) || exchange_in_flight_before(x, rt, c))
            continue;
        st->in_flight = 1;
        if (run_start(gen, i, exchanger_done, x, &x->runs) < 0) {
            st->in_flight = 0; /* out of memory: the next tick tries again */
            log_msg(LOG_ERROR, "credential %s: out of memory starting a token exchange", c->name);
        }
    }
}

static void exchanger_wake_cb(struct worker *w)
{
    exchanger_scan(w->wake_arg);
}

static void exchanger_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exchanger_scan(arg);
}

struct token_exchanger *token_exchanger_new(struct runtime *rt, struct worker *workers,
                                            int nworkers, char *err, size_t errlen)
{
    struct token_exchanger *x = calloc(1, sizeof(*x));
    struct timeval one = {1, 0};
    if (x == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    x->workers = workers;
    x->nworkers = nworkers;
    /* No environment for the worker itself: it accepts nothing and takes no part in the
     * shared state. */
    if (worker_init(&x->w, -1, NULL, rt, NULL, NULL, 0, err, errlen) < 0) {
        free(x);
        return NULL;
    }
    x->w_init = 1;
    x->w.wake_cb = exchanger_wake_cb;
    x->w.wake_arg = x;
    x->tick = event_new(x->w.base, -1, EV_PERSIST, exchanger_tick_cb, x);
    if (x->tick == NULL || event_add(x->tick, &one) < 0) {
        snprintf(err, errlen, "cannot create the token exchanger's timer");
        token_exchanger_free(x);
        return NULL;
    }
    return x;
}

int token_exchanger_start(struct token_exchanger *x)
{
    if (worker_start(&x->w) < 0)
        return -1;
    token_exchanger_want(x);
    return 0;
}

void token_exchanger_reload(struct token_exchanger *x, struct runtime *rt)
{
    worker_reload(&x->w, rt, NULL);
    token_exchanger_want(x);
}

void token_exchanger_want(struct token_exchanger *x)
{
    worker_wake(&x->w);
}

void token_exchanger_free(struct token_exchanger *x)
{
    struct tx_run *run;
    if (x == NULL)
        return;
    if (x->w.started) {
        worker_stop(&x->w);
        pthread_join(x->w.thread, NULL);
        x->w.started = 0;
    }
    while ((run = x->runs) != NULL) {
        x->runs = run->next;
        run_free(run); /* abandoned: nobody waits for it any more */
    }
    if (x->tick)
        event_free(x->tick);
    if (x->w_init)
        worker_deinit(&x->w);
    free(x);
}

/* ---- one exchange for the command line ---- */

struct once {
    struct event_base *base;
    enum exchange_result result;
    char *token;
    long expires_in;
    char *err;
    size_t errlen;
};

static void once_done(struct tx_run *run, enum exchange_result result, const char *reason,
                      const char *token, long expires_in)
{
    struct once *o = run->arg;
    o->result = result;
    if (result == EXCHANGE_OK) {
        o->token = strdup(token);
        o->expires_in = expires_in;
        if (o->token == NULL) {
            o->result = EXCHANGE_SIGN;
            snprintf(o->err, o->errlen, "out of memory");
        }
    } else {
        snprintf(o->err, o->errlen, "%s", reason ? reason : "");
    }
    event_base_loopbreak(o->base);
}

enum exchange_result token_exchange_once(struct runtime *rt, size_t cred, char **token,
                                         long *expires_in, char *err, size_t errlen)
{
    struct worker w;
    struct once o;
    *token = NULL;
    *expires_in = 0;
    memset(&o, 0, sizeof(o));
    o.result = EXCHANGE_RESULT_COUNT; /* not ended yet */
    o.err = err;
    o.errlen = errlen;
    if (cred >= rt->conf->ncredentials || rt->token_target[cred] == SIZE_MAX) {
        snprintf(err, errlen, "the credential does not exchange tokens");
        return EXCHANGE_SIGN;
    }
    for (size_t t = 0; t < rt->ntargets; t++)
        upstream_tls_ctx_prepare(rt->targets[t].ssl_ctx);
    if (worker_init(&w, -1, NULL, rt, NULL, NULL, 0, err, errlen) < 0)
        return EXCHANGE_SIGN;
    o.base = w.base;
    if (run_start(w.gen, cred, once_done, &o, NULL) < 0) {
        o.result = EXCHANGE_SIGN;
        snprintf(err, errlen, "out of memory");
    }
    if (o.result == EXCHANGE_RESULT_COUNT)
        event_base_dispatch(w.base);
    worker_deinit(&w);
    if (o.result == EXCHANGE_RESULT_COUNT) {
        snprintf(err, errlen, "the exchange did not end");
        return EXCHANGE_TIMEOUT;
    }
    *token = o.token;
    *expires_in = o.expires_in;
    return o.result;
}
