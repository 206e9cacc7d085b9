/* gateway: client identities, per-client policy, rate limits and Apple's quota. */
#include "proxy/gateway.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth/b64.h"
#include "proxy/http_error.h"

#define QUOTA_FRESH_SECONDS 60 /* how long Apple's remaining count is taken as current */

static void deny(struct gateway_verdict *v, const char *code, long retry_after, const char *fmt,
                 ...) __attribute__((format(printf, 4, 5)));

static void deny(struct gateway_verdict *v, const char *code, long retry_after, const char *fmt,
                 ...)
{
    va_list ap;
    v->code = code;
    v->retry_after = retry_after;
    va_start(ap, fmt);
    vsnprintf(v->detail, sizeof(v->detail), fmt, ap);
    va_end(ap);
}

static void sha256(const void *data, size_t len, unsigned char out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

void gateway_hash_hex(const char *secret, size_t len, char out[65])
{
    unsigned char h[32];
    sha256(secret, len, h);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
    OPENSSL_cleanse(h, sizeof(h));
}

static int cidr_match(const struct conf_cidr *c, const struct sockaddr *sa)
{
    unsigned char addr[16];
    int family, bits = c->prefix;
    if (sa->sa_family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        family = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const unsigned char *a6 = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (c->family == AF_INET && memcmp(a6, mapped, 12) == 0) {
            memcpy(addr, a6 + 12, 4); /* an IPv4 client on a dual-stack socket */
            family = AF_INET;
        } else {
            memcpy(addr, a6, 16);
            family = AF_INET6;
        }
    } else {
        return 0;
    }
    if (family != c->family)
        return 0;
    int full = bits / 8, rest = bits % 8;
    if (memcmp(addr, c->addr, (size_t)full) != 0)
        return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((addr[full] & mask) != (c->addr[full] & mask))
            return 0;
    }
    return 1;
}

static void peer_text(const struct sockaddr *sa, char *out, size_t len)
{
    out[0] = '\0';
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)len);
}

static void check_cidrs(const struct conf_client *cl, const struct sockaddr *peer,
                        struct gateway_verdict *v)
{
    char ip[64];
    if (cl->nallow_cidrs == 0)
        return;
    for (size_t i = 0; i < cl->nallow_cidrs; i++)
        if (cidr_match(&cl->allow_cidrs[i], peer))
            return;
    peer_text(peer, ip, sizeof(ip));
    deny(v, proxy_err_client_forbidden, 0, "client %s may not connect from %s", cl->name, ip);
}

/* Finds the client whose key hashes to secret; every client is compared (in constant time), so
 * the time taken does not tell which one, or how much of a hash, matched. */
static const struct conf_client *match_secret(const struct conf *conf, const char *secret,
                                              size_t len)
{
    unsigned char h[32];
    const struct conf_client *found = NULL;
    sha256(secret, len, h);
    for (size_t i = 0; i < conf->nclients; i++) {
        const struct conf_client *cl = &conf->clients[i];
        if (cl->has_key && CRYPTO_memcmp(h, cl->key_sha256, 32) == 0)
            found = cl;
    }
    OPENSSL_cleanse(h, sizeof(h));
    return found;
}

void gateway_identify(const struct conf *conf, const struct http1_msg *m, const char *tls_subject,
                      const struct sockaddr *peer, const struct conf_client **client,
                      struct gateway_verdict *v)
{
    const struct http1_header *pa = NULL;
    size_t i, count = 0;
    memset(v, 0, sizeof(*v));
    *client = NULL;
    if (conf->nclients == 0)
        return;
    if (tls_subject) {
        for (i = 0; i < conf->nclients; i++)
            if (conf->clients[i].cert_subject &&
                strcmp(conf->clients[i].cert_subject, tls_subject) == 0) {
                *client = &conf->clients[i];
                check_cidrs(*client, peer, v);
                return;
            }
    }
    for (i = 0; i < m->nheaders; i++)
        if (http1_name_is(m->headers[i].name, m->headers[i].name_len, "proxy-authorization")) {
            pa = &m->headers[i];
            count++;
        }
    if (count == 0) {
        deny(v, proxy_err_proxy_auth, 0,
             "this gateway needs client credentials: Proxy-Authorization: Bearer SECRET, or "
             "Basic with the client name and the secret as password");
        return;
    }
    if (count > 1) {
        deny(v, proxy_err_proxy_auth, 0, "more than one Proxy-Authorization header");
        return;
    }
    const char *val = pa->value;
    size_t n = pa->value_len;
    while (n && (*val == ' ' || *val == '\t')) {
        val++;
        n--;
    }
    const struct conf_client *cl = NULL;
    if (n > 7 && strncasecmp(val, "bearer ", 7) == 0) {
        const char *s = val + 7;
        size_t sl = n - 7;
        while (sl && *s == ' ') {
            s++;
            sl--;
        }
        while (sl && (s[sl - 1] == ' ' || s[sl - 1] == '\t'))
            sl--;
        if (sl)
            cl = match_secret(conf, s, sl);
    } else if (n > 6 && strncasecmp(val, "basic ", 6) == 0) {
        size_t dl = 0;
        uint8_t *dec = b64_decode_loose(val + 6, n - 6, &dl);
        if (dec) {
            const char *colon = memchr(dec, ':', dl);
            if (colon) {
                size_t ul = (size_t)(colon - (const char *)dec);
                cl = match_secret(conf, colon + 1, dl - ul - 1);
                /* The user name, when given, must be the client the secret belongs to. */
                if (cl && ul && (strlen(cl->name) != ul || memcmp(cl->name, dec, ul) != 0))
                    cl = NULL;
            }
            OPENSSL_cleanse(dec, dl);
            free(dec);
        }
    }
    if (cl == NULL) {
        deny(v, proxy_err_proxy_auth, 0, "the client credentials are not valid");
        return;
    }
    *client = cl;
    check_cidrs(cl, peer, v);
}

void gateway_authorize(const struct conf *conf, const struct conf_client *cl, const char *method,
                       size_t method_len, const char *path, size_t path_len, size_t route,
                       struct gateway_verdict *v)
{
    size_t i, j;
    const struct conf_route *r = &conf->routes[route];
    memset(v, 0, sizeof(*v));
    if (cl == NULL)
        return;
    if (cl->ncredentials) {
        for (i = 0; i < cl->ncredentials; i++)
            if (cl->credential_index[i] == r->credential_index)
                break;
        if (i == cl->ncredentials) {
            deny(v, proxy_err_client_forbidden, 0, "client %s may not use credential %s",
                 cl->name, r->credential);
            return;
        }
    }
    if (cl->nallow == 0)
        return;
    for (i = 0; i < cl->nallow; i++) {
        const struct conf_allow_rule *a = &cl->allow[i];
        int mok = a->nmethods == 0;
        for (j = 0; j < a->nmethods && !mok; j++)
            mok = strlen(a->methods[j]) == method_len &&
                  memcmp(a->methods[j], method, method_len) == 0;
        size_t pl = a->path_prefix ? strlen(a->path_prefix) : 0;
        if (mok && path_len >= pl && memcmp(path, a->path_prefix, pl) == 0)
            return;
    }
    deny(v, proxy_err_client_forbidden, 0, "client %s may not send %.*s %.*s", cl->name,
         (int)(method_len > 16 ? 16 : method_len), method, (int)(path_len > 100 ? 100 : path_len),
         path);
}

void gateway_rate_refuse(const struct conf_client *cl, double wait, struct gateway_verdict *v)
{
    long secs = (long)ceil(wait);
    deny(v, proxy_err_rate_limited, secs < 1 ? 1 : secs,
         "client %s is over its rate of %g requests per second (burst %g)", cl->name,
         cl->rate_per_second, cl->rate_burst);
}

void gateway_rate_take_share(struct live_client *bucket, const struct conf_client *cl,
                             int replicas, double now, struct gateway_verdict *v)
{
    double missing, rate = cl->rate_per_second, burst = cl->rate_burst;
    memset(v, 0, sizeof(*v));
    if (rate <= 0)
        return;
    if (replicas > 1) {
        rate /= replicas;
        burst /= replicas;
        if (burst < 1)
            burst = 1;
    }
    if (!live_rate_take(bucket, rate, burst, now, &missing))
        gateway_rate_refuse(cl, missing, v);
}

void gateway_rate_take(struct live_client *bucket, const struct conf_client *cl, double now,
                       struct gateway_verdict *v)
{
    gateway_rate_take_share(bucket, cl, 1, now, v);
}

void gateway_quota_check(const struct conf *conf, const struct live_cred *quota,
                         const struct conf_client *cl, size_t route, double now,
                         struct gateway_verdict *v)
{
    size_t ci = conf->routes[route].credential_index;
    const struct credential *cred = &conf->credentials[ci];
    struct live_quota q;
    memset(v, 0, sizeof(*v));
    live_cred_read(quota, &q);
    if (now < q.blocked_until) {
        long wait = (long)ceil(q.blocked_until - now);
        deny(v, proxy_err_apple_retry_after, wait < 1 ? 1 : wait,
             "Apple asked to wait before more requests with credential %s", cred->name);
        return;
    }
    long reserve = conf->quota_reserve ? conf->quota_reserve[ci] : -1;
    if (reserve < 0 || (cl && cl->priority))
        return;
    /* The count is only trusted while it is fresh: past that one request goes through and
     * Apple's answer says how much of the rolling hour has come back. */
    if (q.remaining >= 0 && q.remaining <= reserve && now - q.updated < QUOTA_FRESH_SECONDS) {
        long wait = (long)ceil(q.updated + QUOTA_FRESH_SECONDS - now);
        deny(v, proxy_err_quota_reserved, wait < 1 ? 1 : wait,
             "credential %s has %ld requests left this hour; the last %ld are reserved for "
             "priority clients", cred->name, q.remaining, reserve);
    }
}

double gateway_parse_retry_after(const char *value, size_t len, double now, int *capped)
{
    char buf[64];
    size_t i;
    double until;
    if (capped != NULL)
        *capped = 0;
    while (len && (*value == ' ' || *value == '\t')) {
        value++;
        len--;
    }
    while (len && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, value, len);
    buf[len] = '\0';
    for (i = 0; i < len && buf[i] >= '0' && buf[i] <= '9'; i++)
        ;
    if (i == len) {
        if (len > 15)
            return -1;
        double v = strtod(buf, NULL);
        /* The App Store Server API sends epoch milliseconds; everyone else delta seconds. */
        until = v > 1e11 ? v / 1000.0 : now + v;
    } else {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        if (end == NULL || *end != '\0')
            return -1;
        until = (double)timegm(&tm);
    }
    if (until > now + GATEWAY_RETRY_AFTER_MAX_SECONDS) {
        until = now + GATEWAY_RETRY_AFTER_MAX_SECONDS;
        if (capped != NULL)
            *capped = 1;
    }
    return until;
}

char **gateway_client_scope(const struct conf *conf, size_t client, size_t route, size_t *n)
{
    const struct conf_client *cl = &conf->clients[client];
    const struct conf_route *r = &conf->routes[route];
    char **scope;
    size_t i, j;
    *n = 0;
    if (!r->client_scopes || cl->nallow == 0 ||
        conf->credentials[r->credential_index].profile != PROFILE_APP_STORE_CONNECT)
        return NULL;
    for (i = 0; i < cl->nallow; i++) {
        const struct conf_allow_rule *a = &cl->allow[i];
        if (a->nmethods == 0)
            return NULL;
        for (j = 0; j < a->nmethods; j++)
            if (strcmp(a->methods[j], "GET") != 0 && strcmp(a->methods[j], "HEAD") != 0)
                return NULL;
    }
    scope = calloc(cl->nallow, sizeof(*scope));
    if (scope == NULL)
        return NULL;
    for (i = 0; i < cl->nallow; i++) {
        const char *p = cl->allow[i].path_prefix ? cl->allow[i].path_prefix : "/";
        size_t pl = strlen(p);
        if (pl > 1 && p[pl - 1] == '/')
            pl--; /* Apple's scope names resources: "GET /v1/apps", not "GET /v1/apps/" */
        scope[i] = malloc(pl + 5);
        if (scope[i] == NULL) {
            gateway_scope_free(scope, i);
            return NULL;
        }
        memcpy(scope[i], "GET ", 4);
        memcpy(scope[i] + 4, p, pl);
        scope[i][pl + 4] = '\0';
    }
    *n = cl->nallow;
    return scope;
}

void gateway_scope_free(char **scope, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(scope[i]);
    free(scope);
}
