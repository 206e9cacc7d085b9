/* runtime: one loaded configuration and what is derived from it (upstream TLS contexts, the
 * token cache), shared read-only by every worker and reference-counted so that in-flight
 * exchanges finish on the configuration they started with. */
#ifndef AAP_PROXY_RUNTIME_H
#define AAP_PROXY_RUNTIME_H

#include <pthread.h>
#include <stddef.h>
#include <openssl/ssl.h>
#include "auth/token_cache.h"
#include "conf/conf.h"
#include "proxy/live.h"
#include "proxy/request.h"

struct intercept;

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
    int h2;             /* HTTP/2 (ALPN "h2" only): connections carry many exchanges */
    SSL_CTX *ssl_ctx;
    int metrics_label;   /* metrics upstream label id (of host_header) */
};

/* How one access-token exchange ended: the label of its metric. */
enum exchange_result {
    EXCHANGE_OK,
    EXCHANGE_SIGN,        /* the signed token could not be made */
    EXCHANGE_UNREACHABLE, /* resolve, connect or the connection closed */
    EXCHANGE_TIMEOUT,     /* connect, handshake, answer or the whole exchange too slow */
    EXCHANGE_TLS,         /* certificate or TLS failure */
    EXCHANGE_STATUS,      /* Apple answered, but not 200 */
    EXCHANGE_MALFORMED,   /* a 200 whose body is not the access token Apple documents */
    EXCHANGE_RESULT_COUNT
};
/* "ok", "sign", "unreachable", "timeout", "tls", "status", "malformed". */
const char *exchange_result_name(enum exchange_result r);

/* The access-token exchange of one exchanged credential (maps, apple-business). The exchanger
 * thread writes it; workers (requests waiting for a token) and the admin thread read it. */
struct exchange_state {
    pthread_mutex_t lock;           /* guards reason and code */
    char reason[256];               /* the last failure ("" after a success): no secrets */
    const char *code;               /* the proxy error answered for that failure */
    int failing;                    /* atomic: the last exchange failed */
    long long retry_at_ms;          /* atomic: the next attempt after a failure (wall clock) */
    unsigned long results[EXCHANGE_RESULT_COUNT]; /* atomic counters, across reloads */
    /* The exchanger thread's own. */
    int in_flight;
    unsigned failures;              /* consecutive */
};

struct runtime {
    int refs;           /* atomic */
    struct conf *conf;  /* owned */
    token_cache *tokens;
    struct target *targets;
    size_t ntargets;
    size_t *route_target; /* route index -> target index */
    struct request_routes routes; /* for request_plan: conf and each route's target Host */
    const char **route_host;      /* route index -> its target's host_header (borrowed) */
    size_t *route_host_len;
    /* Entries in the process's live table (proxy/live.h), one reference each: what changes
     * with every request is kept there, by name, so that it outlives this configuration. */
    struct live_cred **live_creds;     /* per credential index */
    struct live_client **live_clients; /* per client index */
    int *client_label;                 /* client index -> metrics client label id */
    char ***client_scope;          /* [client * nroutes + route]: "client_scopes" lists */
    size_t *client_scope_n;
    struct intercept *intercept;   /* the CONNECT interception CA; NULL when it is off */
    /* Per credential: the target of its token endpoint (exchanged profiles; SIZE_MAX for the
     * others) and its exchange state. */
    size_t *token_target;
    struct exchange_state *exchange;
};

/* Records how an exchange of credential cred ended; reason says why it failed (NULL on
 * success), code is the proxy error requests get meanwhile, retry_at_ms the next attempt. */
void runtime_exchange_record(struct runtime *rt, size_t cred, enum exchange_result result,
                             const char *code, const char *reason, long long retry_at_ms);
/* 1 when the credential's last exchange failed: its reason (copied), code and next attempt. */
int runtime_exchange_failing(struct runtime *rt, size_t cred, char *reason, size_t reasonlen,
                             const char **code, long long *retry_at_ms);

/* A reload: the exchange counters of old's credentials, and the access tokens of those whose
 * exchange is unchanged, go to rt's credentials of the same names. */
void runtime_carry_exchanges(struct runtime *rt, const struct runtime *old);
/* Whether two exchanged credentials (of two configurations) make the same exchange: an access
 * token of one is good for the other. */
int runtime_same_exchange(const struct credential *a, const struct credential *b);
/* The index of the credential named `name`, or SIZE_MAX. */
size_t runtime_credential_index(const struct runtime *rt, const char *name);

/* Takes ownership of conf (also on failure). Builds TLS contexts (verification always on),
 * takes the entries of its credentials and clients from live (borrowed: it must outlive the
 * runtime) and mints every route's token once, so that the first requests never wait for a
 * signature. Returns NULL with a message in err. */
struct runtime *runtime_new(struct conf *conf, struct live *live, char *err, size_t errlen);
struct runtime *runtime_ref(struct runtime *rt);
/* Drops a reference; the last one frees everything. runtime_unref(NULL) is a no-op. */
void runtime_unref(struct runtime *rt);

/* The scope for a route's tokens (the route's own, else the credential's); *n gets its size. */
const char *const *runtime_route_scope(const struct runtime *rt, size_t route, size_t *n);

#endif
