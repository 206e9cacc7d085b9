/* runtime: one loaded configuration and what is derived from it (upstream TLS contexts, the
 * token cache), shared read-only by every worker and reference-counted so that in-flight
 * exchanges finish on the configuration they started with. */
#ifndef AAP_PROXY_RUNTIME_H
#define AAP_PROXY_RUNTIME_H

#include <stddef.h>
#include <openssl/ssl.h>
#include "auth/token_cache.h"
#include "conf/conf.h"

struct gateway_buckets;

/* A distinct upstream endpoint: routes that share name, address and CA share a target (and so
 * a connection pool in each worker). */
struct target {
    char *name;         /* the upstream's name: SNI, certificate check */
    int port;
    char *host_header;  /* "name" or "name:port" when the port is not 443 */
    size_t host_header_len;
    char *connect_host; /* where to connect (route "address" or name) */
    int connect_port;
    const char *ca_file; /* borrowed from the route; NULL: the system store */
    SSL_CTX *ssl_ctx;
};

struct runtime {
    int refs;           /* atomic */
    struct conf *conf;  /* owned */
    token_cache *tokens;
    struct target *targets;
    size_t ntargets;
    size_t *route_target; /* route index -> target index */
    int *route_label;     /* route index -> metrics label id */
    /* Apple's X-Rate-Limit figures per credential (index), updated from responses by any
     * worker: -1 until Apple has said. */
    long *quota_limit, *quota_remaining;
    long long *quota_updated_ms;   /* when the figures last came */
    long long *blocked_until_ms;   /* Apple's 429 Retry-After, per credential */
    struct gateway_buckets *buckets; /* per-client rate limits */
    unsigned long *mints_base;     /* per credential: mints by earlier configurations of the
                                      same credential name (the metric survives reloads) */
    char ***client_scope;          /* [client * nroutes + route]: "client_scopes" lists */
    size_t *client_scope_n;
};

/* Tokens signed for credential index cred since the process started (across reloads). */
unsigned long runtime_mints(const struct runtime *rt, size_t cred);
/* Carries the counts of old's credentials over to those of rt with the same names. */
void runtime_carry_counts(struct runtime *rt, const struct runtime *old);

/* Apple said 429 with Retry-After: no request with the credential goes out before `until`. */
void runtime_block_until(struct runtime *rt, size_t cred, double until);
double runtime_blocked_until(const struct runtime *rt, size_t cred);
double runtime_quota_updated(const struct runtime *rt, size_t cred);

/* Records "X-Rate-Limit: user-hour-lim:N;user-hour-rem:M;" for credential index cred. */
void runtime_quota_update(struct runtime *rt, size_t cred, long limit, long remaining);
long runtime_quota_remaining(const struct runtime *rt, size_t cred);
long runtime_quota_limit(const struct runtime *rt, size_t cred);

/* Takes ownership of conf (also on failure). Builds TLS contexts (verification always on) and
 * mints every route's token once, so that the first requests never wait for a signature.
 * Returns NULL with a message in err. */
struct runtime *runtime_new(struct conf *conf, char *err, size_t errlen);
struct runtime *runtime_ref(struct runtime *rt);
/* Drops a reference; the last one frees everything. runtime_unref(NULL) is a no-op. */
void runtime_unref(struct runtime *rt);

/* The scope for a route's tokens (the route's own, else the credential's); *n gets its size. */
const char *const *runtime_route_scope(const struct runtime *rt, size_t route, size_t *n);

#endif
