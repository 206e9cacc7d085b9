/* server: the process: listening sockets, worker threads, signals and the token refresher. */
#ifndef AAP_PROXY_SERVER_H
#define AAP_PROXY_SERVER_H

#include <stddef.h>
#include <time.h>
#include <openssl/ssl.h>
#include "proxy/runtime.h"
#include "proxy/tls_tickets.h"
#include "proxy/worker.h"

struct server {
    struct event_base *base;      /* the main thread's loop: signals, token refresh */
    struct runtime *rt;           /* the current configuration */
    struct live *live;            /* owned: what outlives configurations (proxy/live.h) */
    struct shared *shared;        /* owned: Redis for shared state (proxy/shared.h), or NULL */
    struct worker *workers;
    int nworkers;
    struct worker_env env;        /* what the workers are given: the connection layer, the
                                     client count across them, shared, the exchanger */
    int stopping;                 /* SIGTERM/SIGINT received (atomic) */
    struct event *sig_term, *sig_int, *sig_hup, *sig_usr1, *refresh_timer, *drain_timer,
        *stop_check;
    struct admin *admin;
    struct token_exchanger *exchanger; /* access tokens for maps and apple-business */
    SSL_CTX **listen_tls;         /* per listen address: the HTTPS context, or NULL */
    struct tls_tickets *tickets;  /* session ticket keys of every HTTPS context, across reloads */
    struct event *ticket_timer;   /* rotates them */
    size_t nlisten;               /* listen addresses in use (fixed for the process) */
    const char *config_path;      /* what SIGHUP re-reads (NULL: environment resolution) */
    unsigned long reloads, reload_failures;
    double started;               /* process start (Unix time): process_start_time_seconds */
    double last_reload_ok;        /* when the running configuration was loaded */
    time_t *listen_cert_expiry;   /* per listen address: its certificate's notAfter (0: none) */
    time_t *listen_ca_expiry;     /* per listen address: its client CAs' first notAfter */
};

/* Runs the proxy with this configuration (ownership passes) until SIGTERM/SIGINT and a drain.
 * config_path is what SIGHUP re-reads (NULL: $APPLE_AUTH_PROXY_CONFIG or the environment).
 * Returns the process exit status: 0 after a clean stop, 1 on a start-up failure (logged). */
int server_run(struct conf *conf, const char *config_path);

/* SIGHUP: re-reads the configuration and keys; a valid one takes over for new requests, an
 * invalid one is logged and the current one keeps serving. Returns 0 when applied. */
int server_reload(struct server *s);

#endif
