/* conf: loading and validating the configuration (JSON file or environment). */
#ifndef AAP_CONF_CONF_H
#define AAP_CONF_CONF_H

#include <stddef.h>
#include "auth/profile.h"

/* "listen" takes at most this many addresses (the file's list or APPLE_AUTH_PROXY_LISTEN);
 * each worker holds one listener per address. */
#define CONF_MAX_LISTEN 64

/* A listen address "host:port" or "[v6]:port", parsed. Listeners given as objects
 * {"address": ..., "tls": {"cert_file", "key_file", "client_ca_file"}} serve HTTPS; the tls_*
 * fields are NULL for plain HTTP (and always for admin_listen). */
struct conf_addr {
    char *text;  /* as written, e.g. "127.0.0.1:8080" */
    char *host;  /* "127.0.0.1", "::1", "localhost" */
    int port;    /* 1..65535 (0 is allowed for listeners: the kernel picks) */
    char *tls_cert_file;      /* PEM certificate chain; set iff the listener is TLS */
    char *tls_key_file;       /* PEM private key for it */
    char *tls_client_ca_file; /* optional: client certificates are verified against these CAs
                                 (mutual TLS; a verified certificate identifies a client by its
                                 subject, see conf_client.cert_subject) */
    char **server_names;      /* "server_names" of a listener object: more names a request's
                                 Host may give for this listener (the browser rule) */
    size_t nserver_names;
};

/* One "allow" rule of a client: a request is allowed when its method is one of methods (all
 * methods when nmethods is 0) and its path starts with path_prefix ("/" when absent). */
struct conf_allow_rule {
    char **methods; /* upper case */
    size_t nmethods;
    char *path_prefix;
};

/* An "allow_cidrs" entry: "10.1.0.0/16", "2001:db8::/32", or a bare address (/32, /128). */
struct conf_cidr {
    int family;             /* AF_INET or AF_INET6 */
    unsigned char addr[16]; /* network address, host bits zero */
    int prefix;
    char *text;
};

/* A client identity of the gateway ("clients": {"NAME": {...}}). */
struct conf_client {
    char *name;
    unsigned char key_sha256[32]; /* SHA-256 of the client's secret ("key_sha256": 64 hex) */
    int has_key;
    char *cert_subject;  /* optional: RFC 2253 subject of a client certificate (on a listener
                            with client_ca_file) that identifies this client, e.g.
                            "CN=release-bot,O=Example" */
    struct conf_allow_rule *allow; /* none: every method and path */
    size_t nallow;
    char **credentials;  /* credential names this client may use; none: all */
    size_t ncredentials;
    size_t *credential_index; /* resolved indexes into conf.credentials */
    struct conf_cidr *allow_cidrs; /* none: any source address */
    size_t nallow_cidrs;
    double rate_per_second; /* "rate": {"per_second", "burst"}; 0: no limit */
    double rate_burst;      /* default: max(1, per_second) */
    int priority;           /* "priority": true: exempt from credentials' quota_reserve */
};

struct conf_route {
    char *path_prefix;  /* required, starts with '/' */
    char *host;         /* optional: match the request's Host (case-insensitive, port ignored) */
    char *strip_prefix; /* optional: removed from the path before forwarding; must be a prefix of
                           path_prefix or equal to it */
    char *upstream;     /* "https://name[:port]" as written; only https, no path/query/userinfo */
    char *upstream_host;/* the name from upstream: SNI, certificate check, Host header */
    int upstream_port;  /* 443 unless given */
    char *address_host; /* from "address": connect here instead (NULL: upstream_host) */
    int address_port;   /* from "address" (0: upstream_port) */
    char *ca_file;      /* optional: trust these CAs instead of the system store */
    char **scope;       /* optional app-store-connect scope for this route's tokens */
    size_t nscope;
    char *credential;   /* credential name */
    size_t credential_index; /* index into conf.credentials */
    int rewrite_links;  /* "rewrite_links": the upstream's origin in JSON response bodies is
                           rewritten to the client's (pagination links keep going through the
                           proxy); default true for app-store-connect routes, false elsewhere */
    int upstream_h2;    /* "upstream_protocol": 1 for "h2", 0 for "http/1.1"; default h2 for
                           APNs' hosts (api.push.apple.com, api.sandbox.push.apple.com, which
                           speak nothing else), http/1.1 for every other */
    int client_scopes;  /* "client_scopes": true (app-store-connect routes without their own
                           scope): a client whose allow rules are all GET/HEAD gets tokens whose
                           scope claim is "GET <path_prefix>" for each of its rules */
};

/* Limits and timeouts; every one is configurable under "limits" and documented in
 * docs/configuration.md. Times are in milliseconds in the struct, seconds (number) in JSON. */
struct conf_limits {
    size_t max_request_line;     /* "max_request_line_bytes", default 8192 -> 414 */
    size_t max_header_bytes;     /* "max_header_bytes", default 32768 (whole head) -> 431 */
    size_t max_headers;          /* "max_headers", default 100 -> 431 */
    unsigned long long max_body; /* "max_body_bytes", default 1 GiB... 0 = unlimited -> 413 */
    size_t max_client_connections; /* "max_client_connections", default 10000 (all workers) */
    size_t upstream_pool_size;   /* "upstream_pool_size", the most idle connections kept per
                                    upstream per worker (fewer when demand is lower), 1024 */
    long client_header_timeout_ms; /* "client_header_timeout", default 10 s -> 408 */
    long client_body_timeout_ms;   /* "client_body_timeout", between body reads, default 60 s */
    long idle_timeout_ms;          /* "keepalive_timeout", client idle between requests, 75 s */
    long upstream_connect_timeout_ms;   /* "upstream_connect_timeout", default 5 s -> 504 */
    long upstream_handshake_timeout_ms; /* "upstream_tls_handshake_timeout", default 10 s -> 504 */
    long upstream_response_timeout_ms;  /* "upstream_response_timeout", first byte, 60 s -> 504 */
    long upstream_idle_timeout_ms;      /* "upstream_idle_timeout", pooled connection, 30 s */
    long send_timeout_ms;          /* "send_timeout", a write making no progress, default 60 s */
    long drain_timeout_ms;         /* "drain_timeout", graceful shutdown, default 30 s */
    long token_wait_timeout_ms;    /* "token_wait_timeout": the longest a request waits for an
                                      access token (maps, apple-business), default 15 s -> 503 */
};

/* "shared_state": replicas share rate buckets, Apple's quota figures, Retry-After and mint
 * counts through Redis (proxy/shared.h). redis is NULL when the key is absent: nothing is
 * shared. */
struct conf_shared {
    char *redis;         /* "HOST:PORT" or "unix:/path", as written */
    char *host;          /* TCP: the host part (malloc'd); NULL for a socket path */
    int port;
    char *unix_path;     /* "unix:/path": the path (malloc'd); NULL for TCP */
    char *password_env;  /* "password_env": the variable the password was read from */
    char *password;      /* its value when the configuration was read (wiped on free) */
    char *key_prefix;    /* "key_prefix", default "apple-auth-proxy:" */
    long timeout_ms;     /* "timeout" seconds, default 0.25: slower replies count as a failure */
    int replicas;        /* "replicas", default 1: local limits are divided by it in fallback */
    int tls;             /* "tls": true or an object: TLS 1.2 or later, the certificate verified */
    char *tls_ca_file;   /* "tls.ca_file" (malloc'd); NULL: the system's trust store */
    char *tls_server_name; /* "tls.server_name" (malloc'd): the name the certificate must carry;
                              NULL: host */
    char *tls_cert_file; /* "tls.cert_file" and "tls.key_file" (malloc'd): a client certificate */
    char *tls_key_file;  /* for Redis servers that require one (mutual TLS); both or neither */
};

struct conf {
    struct conf_addr *listen;   /* default one: 127.0.0.1:8080 */
    size_t nlisten;
    const char *listen_source;  /* what set listen: NULL for the file's "listen" (or the
                                   default), else "APPLE_AUTH_PROXY_LISTEN" or "--listen"
                                   (static strings, so messages name where an address came
                                   from) */
    struct conf_addr admin_listen; /* default 127.0.0.1:9901; text NULL when "admin_listen": null */
    int workers;                /* 0: one per core */
    struct credential *credentials;
    size_t ncredentials;
    struct conf_route *routes;
    size_t nroutes;
    struct conf_limits limits;
    long token_refresh_margin;  /* "token_refresh_margin" seconds, default 300 (capped to a third of
                                   the shortest lifetime by validation) */
    long *quota_reserve;        /* per credential (parallel to credentials): "quota_reserve" on
                                   a credential, -1 when not set */
    struct conf_client *clients; /* "clients": the gateway's client identities */
    size_t nclients;
    int allow_anonymous_clients; /* "allow_anonymous_clients": true, or the environment's
                                    APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS=true */
    char *access_log;           /* "access_log": {"path": ...}: NULL or "-" stdout, "off", or a
                                   file reopened on SIGUSR1 */
    int access_log_text;        /* "access_log": {"format": "text"} (default "json") */
    char **key_env_names;       /* environment variables this configuration read key material
                                   from (private_key_env), so the caller can remove them from
                                   the process environment */
    size_t nkey_env_names;
    char *intercept_ca_dir;     /* "intercept": {"ca_dir": DIR}, or the environment's
                                   APPLE_AUTH_PROXY_INTERCEPT_CA_DIR: CONNECT to a configured
                                   upstream is intercepted with the CA kept there; NULL: off */
    char *source;               /* the file it came from, or "environment" */
    struct conf_shared shared;  /* "shared_state" */
    char **server_names;        /* "server_names" (or APPLE_AUTH_PROXY_SERVER_NAMES): names a
                                   request's Host may give on every listener, besides localhost,
                                   loopback and listener addresses and the upstreams' names */
    size_t nserver_names;
    char **allowed_origins;     /* "allowed_origins": web origins ("https://host[:port]") whose
                                   pages may send requests through the proxy; none by default */
    size_t nallowed_origins;
};

/* Loads and validates a JSON configuration file, and loads every key it names. On success returns
 * 0 and *out (free with conf_free). Problems: every one is appended to *errors as one line
 * "PATH: message" (e.g. "credentials.asc.key_id: expected a 10-character string"), *errors is
 * malloc'd (caller frees), and -1 is returned. Non-fatal remarks (a key file readable by others)
 * go to *warnings the same way (may be NULL on return when there are none). */
int conf_load_file(const char *path, struct conf **out, char **errors, char **warnings);

/* The same from JSON text (source names it in messages). */
int conf_load_string(const char *json, size_t len, const char *source, struct conf **out,
                     char **errors, char **warnings);

/* Environment-only mode: fastlane's APP_STORE_CONNECT_API_KEY_* names and WEATHERKIT_*
 * (docs/configuration.md). getenv_fn is getenv in production, a table in tests. With no complete
 * set, fails with an error that names the variables it looked for. APPLE_AUTH_PROXY_LISTEN
 * overrides the listen address. */
int conf_load_env(const char *(*getenv_fn)(const char *name), struct conf **out, char **errors,
                  char **warnings);

/* The command-line resolution: path if non-NULL, else $APPLE_AUTH_PROXY_CONFIG, else the
 * environment. APPLE_AUTH_PROXY_LISTEN overrides the listen addresses in every mode. */
int conf_load(const char *path, struct conf **out, char **errors, char **warnings);

/* The gateway's safety rule, checked after every override (--listen included): a listener on a
 * non-loopback address while no client identity is configured is an error naming `clients` and
 * the opt-out `"allow_anonymous_clients": true`; with the opt-out it is a warning. Loopback means
 * 127.0.0.0/8, ::1 and "localhost". Messages are appended to *errors / *warnings (malloc'd,
 * caller frees; they may already hold text). Returns 0, or -1 on an error. */
int conf_check_exposure(const struct conf *conf, char **errors, char **warnings);

/* Replaces getenv for every lookup conf makes (NULL restores getenv): the CLI keeps key
 * material it has removed from the process environment in a private table, so a reload can
 * still read it. */
void conf_set_getenv(const char *(*fn)(const char *name));

/* Names listener i in messages: "listen[i]" for the file's, else the variable or option that
 * set the addresses (listen_source). */
void conf_listen_name(const struct conf *conf, size_t i, char *out, size_t outlen);

/* Why a gateway client could not be called name in "clients" (a static message), or NULL
 * when it can. */
const char *conf_client_name_problem(const char *name);

/* Finds a credential by name; NULL when absent. */
const struct credential *conf_credential(const struct conf *conf, const char *name);

/* Parses "host:port" / "[v6]:port" into addr (allocating host and text). Returns -1 on a bad
 * address; allow_port0 permits port 0. */
int conf_addr_parse(const char *text, struct conf_addr *addr, int allow_port0);
void conf_addr_deinit(struct conf_addr *addr);
/* Moves what a listener object adds to an address (its TLS files and server_names) from src
 * to dst, whose own are freed first: an override of the listen addresses keeps them. Returns
 * whether src had any. */
int conf_addr_move_settings(struct conf_addr *dst, struct conf_addr *src);

/* conf_free(NULL) is a no-op. */
void conf_free(struct conf *conf);

#endif
