/* runtime: one loaded configuration and what is derived from it, reference-counted. */
#include "proxy/runtime.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/access_token.h"
#include "proxy/gateway.h"
#include "proxy/metrics.h"
#include "proxy/intercept.h"
#include "proxy/log.h"

static int str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static SSL_CTX *tls_client_ctx(const char *ca_file, int h2, char *err, size_t errlen)
{
    /* One protocol offered, never both: the upstream's choice decides how the bytes are read,
     * so a target says which it speaks. */
    static const unsigned char alpn_h1[] = "\x08http/1.1", alpn_h2[] = "\x02h2";
    const unsigned char *alpn = h2 ? alpn_h2 : alpn_h1;
    unsigned alpn_len = h2 ? sizeof(alpn_h2) - 1 : sizeof(alpn_h1) - 1;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto fail;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        goto fail;
    /* Verification is always on: there is deliberately no setting that turns it off. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file) {
        if (!SSL_CTX_load_verify_locations(ctx, ca_file, NULL)) {
            unsigned long e = ERR_peek_last_error();
            snprintf(err, errlen, "cannot load CA file %s: %s", ca_file,
                     e ? ERR_reason_error_string(e) : "unknown error");
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (!SSL_CTX_set_default_verify_paths(ctx)) {
        goto fail;
    }
    if (SSL_CTX_set_alpn_protos(ctx, alpn, alpn_len) != 0)
        goto fail;
    /* No SSL_MODE_RELEASE_BUFFERS: pooled upstream connections are few and busy, and
     * freeing and reallocating the record buffers on every exchange costs more than the
     * memory it saves. Read-ahead: a record's header and body (and the records after it)
     * come in one read instead of two. */
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
fail:
    if (err[0] == '\0')
        snprintf(err, errlen, "cannot create the upstream TLS context");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

const char *const *runtime_route_scope(const struct runtime *rt, size_t route, size_t *n)
{
    const struct conf_route *r = &rt->conf->routes[route];
    const struct credential *c = &rt->conf->credentials[r->credential_index];
    if (r->nscope) {
        *n = r->nscope;
        return (const char *const *)r->scope;
    }
    *n = c->nscope;
    return (const char *const *)c->scope;
}

/* The interception CA for the upstreams' names (loaded, or made on the first start). */
static int runtime_intercept_init(struct runtime *rt, char *err, size_t errlen)
{
    const char **hosts = calloc(rt->ntargets ? rt->ntargets : 1, sizeof(*hosts));
    char warn[1024];
    size_t i;
    if (hosts == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < rt->ntargets; i++)
        hosts[i] = rt->targets[i].name;
    rt->intercept = intercept_new(rt->conf->intercept_ca_dir, hosts, rt->ntargets, err, errlen,
                                  warn, sizeof(warn));
    free(hosts);
    if (rt->intercept == NULL)
        return -1;
    if (warn[0])
        log_msg(LOG_WARN, "intercept: %s", warn);
    return 0;
}

/* The token cache's mint hook: the count is kept in the credential's live entry, which
 * outlives this runtime's cache. */
static void runtime_count_mint(void *arg, const struct credential *cred)
{
    const struct runtime *rt = arg;
    live_count_mint(rt->live_creds[cred - rt->conf->credentials]);
}

/* Finds or adds the target for (name, port, connect address, CA, HTTP/2); its index goes to
 * *index. Targets are shared only when every field matches, including the CA file. */
static int runtime_target(struct runtime *rt, const char *name, int port, const char *addr_host,
                          int addr_port, const char *ca_file, int h2, size_t *index, char *err,
                          size_t errlen)
{
    const char *chost = addr_host ? addr_host : name;
    int cport = addr_port ? addr_port : port;
    size_t j;
    for (j = 0; j < rt->ntargets; j++) {
        const struct target *t = &rt->targets[j];
        if (str_eq(t->name, name) && t->port == port && str_eq(t->connect_host, chost) &&
            t->connect_port == cport && str_eq(t->ca_file, ca_file) && t->h2 == h2) {
            *index = j;
            return 0;
        }
    }
    struct target *t = &rt->targets[rt->ntargets];
    char hh[300];
    int v6 = strchr(name, ':') != NULL; /* IP literal: brackets in Host */
    if (port == 443)
        snprintf(hh, sizeof(hh), v6 ? "[%s]" : "%s", name);
    else
        snprintf(hh, sizeof(hh), v6 ? "[%s]:%d" : "%s:%d", name, port);
    t->name = strdup(name);
    t->port = port;
    t->host_header = strdup(hh);
    t->host_header_len = strlen(hh);
    t->connect_host = strdup(chost);
    t->connect_port = cport;
    t->ca_file = ca_file;
    t->h2 = h2;
    rt->ntargets++;
    if (!t->name || !t->host_header || !t->connect_host) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->metrics_label = metrics_upstream_id(hh);
    t->ssl_ctx = tls_client_ctx(ca_file, h2, err, errlen);
    if (t->ssl_ctx == NULL)
        return -1;
    *index = j;
    return 0;
}

static void runtime_count_mint_failure(void *arg, const struct credential *cred)
{
    const struct runtime *rt = arg;
    live_count_mint_failure(rt->live_creds[cred - rt->conf->credentials]);
}

struct runtime *runtime_new(struct conf *conf, struct live *live, char *err, size_t errlen)
{
    struct runtime *rt = calloc(1, sizeof(*rt));
    size_t i;
    err[0] = '\0';
    if (rt == NULL) {
        conf_free(conf);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rt->refs = 1;
    rt->conf = conf;
    rt->tokens = token_cache_new(conf->token_refresh_margin, NULL);
    rt->targets = calloc(conf->nroutes + conf->ncredentials + 1, sizeof(*rt->targets));
    rt->token_target = calloc(conf->ncredentials ? conf->ncredentials : 1, sizeof(size_t));
    rt->exchange = calloc(conf->ncredentials ? conf->ncredentials : 1, sizeof(*rt->exchange));
    rt->route_target = calloc(conf->nroutes ? conf->nroutes : 1, sizeof(*rt->route_target));
    rt->route_host = calloc(conf->nroutes ? conf->nroutes : 1, sizeof(*rt->route_host));
    rt->route_host_len = calloc(conf->nroutes ? conf->nroutes : 1, sizeof(*rt->route_host_len));
    rt->live_creds = calloc(conf->ncredentials ? conf->ncredentials : 1, sizeof(*rt->live_creds));
    rt->live_clients = calloc(conf->nclients ? conf->nclients : 1, sizeof(*rt->live_clients));
    rt->client_label = calloc(conf->nclients ? conf->nclients : 1, sizeof(*rt->client_label));
    size_t ncs = conf->nclients * conf->nroutes;
    rt->client_scope = calloc(ncs ? ncs : 1, sizeof(*rt->client_scope));
    rt->client_scope_n = calloc(ncs ? ncs : 1, sizeof(*rt->client_scope_n));
    if (rt->token_target == NULL || rt->exchange == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (i = 0; i < conf->ncredentials; i++) {
        pthread_mutex_init(&rt->exchange[i].lock, NULL);
        rt->token_target[i] = SIZE_MAX;
    }
    if (rt->tokens == NULL || rt->targets == NULL || rt->route_target == NULL ||
        rt->route_host == NULL || rt->route_host_len == NULL ||
        rt->live_creds == NULL || rt->live_clients == NULL || rt->client_label == NULL ||
        rt->client_scope == NULL || rt->client_scope_n == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (i = 0; i < conf->ncredentials; i++)
        if ((rt->live_creds[i] = live_cred_get(live, conf->credentials[i].name)) == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    for (i = 0; i < conf->nclients; i++)
        if ((rt->live_clients[i] = live_client_get(live, conf->clients[i].name)) == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    token_cache_on_mint(rt->tokens, runtime_count_mint, rt);
    token_cache_share_teams(rt->tokens, live_teams(live));
    token_cache_on_mint_failure(rt->tokens, runtime_count_mint_failure, rt);
    for (i = 0; i < conf->nclients; i++)
        rt->client_label[i] = metrics_client_id(conf->clients[i].name);
    for (i = 0; i < conf->nroutes; i++) {
        const struct conf_route *r = &conf->routes[i];
        if (runtime_target(rt, r->upstream_host, r->upstream_port, r->address_host,
                           r->address_port, r->ca_file, r->upstream_h2 == 1, &rt->route_target[i],
                           err, errlen) < 0)
            goto fail;
    }
    /* The token endpoints of exchanged credentials are upstreams like the routes' (a route to
     * the same name, address and CA shares their pools). */
    for (i = 0; i < conf->ncredentials; i++) {
        const struct credential *c = &conf->credentials[i];
        if (!profile_exchanged(c->profile))
            continue;
        if (runtime_target(rt, c->profile == PROFILE_MAPS ? MAPS_TOKEN_HOST : BUSINESS_TOKEN_HOST,
                           443, c->token_address_host, c->token_address_port, c->token_ca_file, 0,
                           &rt->token_target[i], err, errlen) < 0)
            goto fail;
    }
    for (i = 0; i < conf->nroutes; i++) {
        rt->route_host[i] = rt->targets[rt->route_target[i]].host_header;
        rt->route_host_len[i] = rt->targets[rt->route_target[i]].host_header_len;
    }
    rt->routes.conf = conf;
    rt->routes.host = rt->route_host;
    rt->routes.host_len = rt->route_host_len;
    if (conf->intercept_ca_dir && runtime_intercept_init(rt, err, errlen) < 0)
        goto fail;
    /* Mint every route's token now: a broken key fails the start, not the first request. */
    for (i = 0; i < conf->nroutes; i++) {
        size_t n;
        const char *const *scope = runtime_route_scope(rt, i, &n);
        char terr[256];
        const struct credential *c = &conf->credentials[conf->routes[i].credential_index];
        if (profile_exchanged(c->profile)) {
            /* The access token comes from the exchanger; signing the request once here still
             * fails the start on a broken key. */
            struct access_token_request rq;
            if (access_token_request_build(c, time(NULL), &rq, terr, sizeof(terr)) < 0) {
                snprintf(err, errlen, "credential %s: %s", c->name, terr);
                goto fail;
            }
            access_token_request_deinit(&rq);
            continue;
        }
        struct token *tok = token_cache_get(rt->tokens, c, scope, n, terr, sizeof(terr));
        if (tok == NULL) {
            snprintf(err, errlen, "credential %s: %s", c->name, terr);
            goto fail;
        }
        token_put(tok);
    }
    /* The scoped tokens of GET-only clients on "client_scopes" routes, minted up front too. */
    for (size_t cl = 0; cl < conf->nclients; cl++)
        for (i = 0; i < conf->nroutes; i++) {
            size_t n, k = cl * conf->nroutes + i;
            char **scope = gateway_client_scope(conf, cl, i, &n);
            char terr[256];
            if (scope == NULL)
                continue;
            rt->client_scope[k] = scope;
            rt->client_scope_n[k] = n;
            const struct credential *c = &conf->credentials[conf->routes[i].credential_index];
            struct token *tok = token_cache_get(rt->tokens, c, (const char *const *)scope, n,
                                                terr, sizeof(terr));
            if (tok == NULL) {
                snprintf(err, errlen, "credential %s (client %s): %s", c->name,
                         conf->clients[cl].name, terr);
                goto fail;
            }
            token_put(tok);
        }
    return rt;
fail:
    runtime_unref(rt);
    return NULL;
}

struct runtime *runtime_ref(struct runtime *rt)
{
    __atomic_add_fetch(&rt->refs, 1, __ATOMIC_RELAXED);
    return rt;
}

void runtime_unref(struct runtime *rt)
{
    size_t i;
    if (rt == NULL || __atomic_sub_fetch(&rt->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (i = 0; i < rt->ntargets; i++) {
        free(rt->targets[i].name);
        free(rt->targets[i].host_header);
        free(rt->targets[i].connect_host);
        SSL_CTX_free(rt->targets[i].ssl_ctx);
    }
    free(rt->targets);
    free(rt->route_target);
    free(rt->route_host);
    free(rt->route_host_len);
    if (rt->live_creds)
        for (i = 0; i < rt->conf->ncredentials; i++)
            live_cred_put(rt->live_creds[i]);
    free(rt->live_creds);
    if (rt->live_clients)
        for (i = 0; i < rt->conf->nclients; i++)
            live_client_put(rt->live_clients[i]);
    free(rt->live_clients);
    free(rt->client_label);
    if (rt->client_scope)
        for (i = 0; i < rt->conf->nclients * rt->conf->nroutes; i++)
            if (rt->client_scope[i])
                gateway_scope_free(rt->client_scope[i], rt->client_scope_n[i]);
    free(rt->client_scope);
    free(rt->client_scope_n);
    if (rt->exchange)
        for (i = 0; i < rt->conf->ncredentials; i++)
            pthread_mutex_destroy(&rt->exchange[i].lock);
    free(rt->exchange);
    free(rt->token_target);
    token_cache_free(rt->tokens);
    intercept_free(rt->intercept);
    conf_free(rt->conf);
    free(rt);
}

int runtime_same_exchange(const struct credential *a, const struct credential *b)
{
    return a->profile == b->profile && profile_exchanged(a->profile) &&
           str_eq(a->key_id, b->key_id) && str_eq(a->team_id, b->team_id) &&
           str_eq(a->client_id, b->client_id) &&
           (a->profile != PROFILE_APPLE_BUSINESS ||
            strcmp(credential_oauth_scope(a), credential_oauth_scope(b)) == 0) &&
           str_eq(a->token_address_host, b->token_address_host) &&
           a->token_address_port == b->token_address_port &&
           str_eq(a->token_ca_file, b->token_ca_file);
}

size_t runtime_credential_index(const struct runtime *rt, const char *name)
{
    for (size_t i = 0; i < rt->conf->ncredentials; i++)
        if (strcmp(rt->conf->credentials[i].name, name) == 0)
            return i;
    return SIZE_MAX;
}

void runtime_carry_exchanges(struct runtime *rt, const struct runtime *old)
{
    for (size_t i = 0; i < rt->conf->ncredentials; i++)
        for (size_t j = 0; j < old->conf->ncredentials; j++)
            if (strcmp(rt->conf->credentials[i].name, old->conf->credentials[j].name) == 0) {
                const struct credential *c = &rt->conf->credentials[i];
                const struct credential *o = &old->conf->credentials[j];
                for (int r = 0; r < EXCHANGE_RESULT_COUNT; r++)
                    rt->exchange[i].results[r] =
                        __atomic_load_n(&old->exchange[j].results[r], __ATOMIC_RELAXED);
                /* A reload does not make requests wait for a new exchange. */
                if (runtime_same_exchange(c, o))
                    token_cache_adopt(rt->tokens, c, old->tokens, o);
                break;
            }
}

const char *exchange_result_name(enum exchange_result r)
{
    static const char *const names[EXCHANGE_RESULT_COUNT] = {
        "ok", "sign", "unreachable", "timeout", "tls", "status", "malformed"};
    return (int)r >= 0 && r < EXCHANGE_RESULT_COUNT ? names[r] : "unknown";
}

void runtime_exchange_record(struct runtime *rt, size_t cred, enum exchange_result result,
                             const char *code, const char *reason, long long retry_at_ms)
{
    struct exchange_state *st = &rt->exchange[cred];
    __atomic_add_fetch(&st->results[result], 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&st->lock);
    snprintf(st->reason, sizeof(st->reason), "%s", reason ? reason : "");
    st->code = code;
    __atomic_store_n(&st->retry_at_ms, retry_at_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&st->failing, result != EXCHANGE_OK, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&st->lock);
}

int runtime_exchange_failing(struct runtime *rt, size_t cred, char *reason, size_t reasonlen,
                             const char **code, long long *retry_at_ms)
{
    struct exchange_state *st = &rt->exchange[cred];
    int failing;
    if (!__atomic_load_n(&st->failing, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&st->lock);
    failing = st->failing;
    if (reason)
        snprintf(reason, reasonlen, "%s", st->reason);
    if (code)
        *code = st->code;
    if (retry_at_ms)
        *retry_at_ms = st->retry_at_ms;
    pthread_mutex_unlock(&st->lock);
    return failing;
}
