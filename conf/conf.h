/* conf: loading and validating the configuration (JSON file or environment). */
#ifndef AAP_CONF_CONF_H
#define AAP_CONF_CONF_H

#include <stddef.h>
#include "auth/profile.h"

/* A listen address "host:port" or "[v6]:port", parsed. */
struct conf_addr {
    char *text;  /* as written, e.g. "127.0.0.1:8080" */
    char *host;  /* "127.0.0.1", "::1", "localhost" */
    int port;    /* 1..65535 (0 is allowed for listeners: the kernel picks) */
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
};

/* Limits and timeouts; every one is configurable under "limits" and documented in
 * docs/configuration.md. Times are in milliseconds in the struct, seconds (number) in JSON. */
struct conf_limits {
    size_t max_request_line;     /* "max_request_line_bytes", default 8192 -> 414 */
    size_t max_header_bytes;     /* "max_header_bytes", default 32768 (whole head) -> 431 */
    size_t max_headers;          /* "max_headers", default 100 -> 431 */
    unsigned long long max_body; /* "max_body_bytes", default 1 GiB... 0 = unlimited -> 413 */
    size_t max_client_connections; /* "max_client_connections", default 10000 (all workers) */
    size_t upstream_pool_size;   /* "upstream_pool_size", idle connections kept per upstream per
                                    worker, default 32 */
    long client_header_timeout_ms; /* "client_header_timeout", default 10 s -> 408 */
    long client_body_timeout_ms;   /* "client_body_timeout", between body reads, default 60 s */
    long idle_timeout_ms;          /* "keepalive_timeout", client idle between requests, 75 s */
    long upstream_connect_timeout_ms;   /* "upstream_connect_timeout", default 5 s -> 504 */
    long upstream_handshake_timeout_ms; /* "upstream_tls_handshake_timeout", default 10 s -> 504 */
    long upstream_response_timeout_ms;  /* "upstream_response_timeout", first byte, 60 s -> 504 */
    long upstream_idle_timeout_ms;      /* "upstream_idle_timeout", pooled connection, 30 s */
    long send_timeout_ms;          /* "send_timeout", a write making no progress, default 60 s */
    long drain_timeout_ms;         /* "drain_timeout", graceful shutdown, default 30 s */
};

struct conf {
    struct conf_addr *listen;   /* default one: 127.0.0.1:8080 */
    size_t nlisten;
    struct conf_addr admin_listen; /* default 127.0.0.1:9901; text NULL when "admin_listen": null */
    int workers;                /* 0: one per core */
    struct credential *credentials;
    size_t ncredentials;
    struct conf_route *routes;
    size_t nroutes;
    struct conf_limits limits;
    long token_refresh_margin;  /* "token_refresh_margin" seconds, default 300 (capped to a third of
                                   the shortest lifetime by validation) */
    char *access_log;           /* "access_log": {"path": ...}: NULL or "-" stdout, "off", or a
                                   file reopened on SIGUSR1 */
    int access_log_text;        /* "access_log": {"format": "text"} (default "json") */
    char *source;               /* the file it came from, or "environment" */
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
 * (docs/configuration.md). getenv_fn is getenv in production, a stub in tests. With no complete
 * set, fails with an error that names the variables it looked for. APPLE_AUTH_PROXY_LISTEN
 * overrides the listen address. */
int conf_load_env(const char *(*getenv_fn)(const char *name), struct conf **out, char **errors,
                  char **warnings);

/* The command-line resolution: path if non-NULL, else $APPLE_AUTH_PROXY_CONFIG, else the
 * environment. APPLE_AUTH_PROXY_LISTEN overrides the listen addresses in every mode. */
int conf_load(const char *path, struct conf **out, char **errors, char **warnings);

/* Finds a credential by name; NULL when absent. */
const struct credential *conf_credential(const struct conf *conf, const char *name);

/* Parses "host:port" / "[v6]:port" into addr (allocating host and text). Returns -1 on a bad
 * address; allow_port0 permits port 0. */
int conf_addr_parse(const char *text, struct conf_addr *addr, int allow_port0);
void conf_addr_deinit(struct conf_addr *addr);

/* conf_free(NULL) is a no-op. */
void conf_free(struct conf *conf);

#endif
