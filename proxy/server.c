/* server: the process: listening sockets, worker threads, signals and the token refresher. */
#include "proxy/server.h"
#include "proxy/shared.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/err.h>

#include "proxy/accesslog.h"
#include "proxy/admin.h"
#include "proxy/client.h"
#include "proxy/log.h"
#include "proxy/preflight.h"
#include "proxy/token_exchange.h"
#include "proxy/upstream.h"

#define DESCRIPTOR_MARGIN 64 /* listeners, logs, the admin server, DNS, eventfds */

/* Opens one listening socket per worker on addr (SO_REUSEPORT: the kernel spreads connections
 * across the workers). With port 0 the first bind picks the port and the others reuse it. */
static int open_listeners(const struct conf_addr *addr, int nworkers, int *fds, int *bound_port,
                          char *err, size_t errlen)
{
    struct addrinfo *res = NULL;
    int i, rc;
    rc = preflight_resolve(addr, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: %s", addr->text, gai_strerror(rc));
        return -1;
    }
    *bound_port = addr->port;
    for (i = 0; i < nworkers; i++)
        fds[i] = -1;
    for (i = 0; i < nworkers; i++) {
        struct sockaddr_storage ss;
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)*bound_port);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)*bound_port);
        int fd = preflight_listen_socket(res->ai_family, &ss, res->ai_addrlen);
        if (fd < 0)
            goto fail;
        fds[i] = fd;
        if (*bound_port == 0) {
            socklen_t sl = sizeof(ss);
            getsockname(fd, (struct sockaddr *)&ss, &sl);
            *bound_port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                        : ((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    freeaddrinfo(res);
    return 0;
fail:
    {
        int saved = errno;
        snprintf(err, errlen, "listen %s: %s", addr->text, strerror(saved));
        for (i = 0; i < nworkers; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        freeaddrinfo(res);
    }
    return -1;
}

/* Notes the expiry of listener l's certificate and client CAs, for the metrics. */
static void note_listener_expiry(struct server *s, const struct conf *conf, size_t l, SSL_CTX *ctx)
{
    if (s->listen_cert_expiry == NULL || l >= s->nlisten)
        return;
    s->listen_cert_expiry[l] = preflight_cert_expiry(ctx);
    s->listen_ca_expiry[l] = conf->listen[l].tls_client_ca_file
                                 ? preflight_file_expiry(conf->listen[l].tls_client_ca_file)
                                 : 0;
}

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int addrs_same_text(const struct conf *a, const struct conf *b)
{
    if (a->nlisten != b->nlisten)
        return 0;
    for (size_t i = 0; i < a->nlisten; i++)
        if (strcmp(a->listen[i].text, b->listen[i].text) != 0 ||
            (a->listen[i].tls_cert_file == NULL) != (b->listen[i].tls_cert_file == NULL))
            return 0;
    return 1;
}

int server_reload(struct server *s)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    char err[512];
    s->reloads++;
    if (conf_load(s->config_path, &conf, &errors, &warnings) < 0) {
        const char *p = errors ? errors : "invalid configuration";
        log_msg(LOG_ERROR, "reload rejected; the current configuration keeps serving:");
        while (p && *p) {
            const char *nl = strchr(p, '\n');
            int n = nl ? (int)(nl - p) : (int)strlen(p);
            if (n)
                log_msg(LOG_ERROR, "  %.*s", n, p);
            p = nl ? nl + 1 : NULL;
        }
        free(errors);
        free(warnings);
        s->reload_failures++;
        return -1;
    }
    if (warnings) {
        log_msg(LOG_WARN, "reload: %s", warnings);
        free(warnings);
        warnings = NULL;
    }
    free(errors);
    errors = NULL;
    /* The sockets stay as they are, so the rule is checked against the addresses in use. */
    {
        struct conf_addr *keep = conf->listen;
        size_t nkeep = conf->nlisten;
        conf->listen = s->rt->conf->listen;
        conf->nlisten = s->rt->conf->nlisten;
        int exposed = conf_check_exposure(conf, &errors, &warnings);
        conf->listen = keep;
        conf->nlisten = nkeep;
        free(warnings);
        if (exposed < 0) {
            log_msg(LOG_ERROR, "reload rejected; the current configuration keeps serving: %s",
                    errors ? errors : "listeners exposed without client identities");
            free(errors);
            conf_free(conf);
            s->reload_failures++;
            return -1;
        }
        free(errors);
    }
    struct runtime *rt = runtime_new(conf, s->live, err, sizeof(err));
    if (rt == NULL) {
        log_msg(LOG_ERROR, "reload rejected; the current configuration keeps serving: %s", err);
        s->reload_failures++;
        return -1;
    }
    for (size_t t = 0; t < rt->ntargets; t++)
        upstream_tls_ctx_prepare(rt->targets[t].ssl_ctx);
    if (!addrs_same_text(rt->conf, s->rt->conf))
        log_msg(LOG_WARN, "reload: the listen addresses changed (or a listener switched between "
                          "HTTP and HTTPS); that takes effect at the next restart (the proxy "
                          "keeps its current sockets)");
    if ((rt->conf->admin_listen.text == NULL) != (s->rt->conf->admin_listen.text == NULL) ||
        (rt->conf->admin_listen.text && s->rt->conf->admin_listen.text &&
         strcmp(rt->conf->admin_listen.text, s->rt->conf->admin_listen.text) != 0))
        log_msg(LOG_WARN, "reload: admin_listen changed; it takes effect at the next restart");
    if (rt->conf->workers != s->rt->conf->workers)
        log_msg(LOG_WARN, "reload: workers changed; it takes effect at the next restart");
    if (!shared_same(&rt->conf->shared, &s->rt->conf->shared))
        log_msg(LOG_WARN, "reload: shared_state changed; it takes effect at the next restart");
    /* HTTPS listeners at unchanged addresses get contexts from the new files: renewed
     * certificates and client CAs apply to the connections accepted from now on. */
    SSL_CTX **tls = NULL;
    if (addrs_same_text(rt->conf, s->rt->conf) && s->nlisten) {
        tls = calloc(s->nlisten, sizeof(*tls));
        for (size_t l = 0; tls && l < s->nlisten; l++) {
            if (!rt->conf->listen[l].tls_cert_file || !s->listen_tls[l])
                continue;
            tls[l] = preflight_listener_tls(rt->conf, l, s->tickets, err, sizeof(err));
            if (tls[l] == NULL) {
                log_msg(LOG_ERROR, "reload rejected; the current configuration keeps serving: %s",
                        err);
                for (size_t k = 0; k < l; k++)
                    SSL_CTX_free(tls[k]);
                free(tls);
                runtime_unref(rt);
                s->reload_failures++;
                return -1;
            }
        }
    }
    runtime_carry_exchanges(rt, s->rt);
    for (int i = 0; i < s->nworkers; i++)
        worker_reload(&s->workers[i], rt, tls);
    token_exchanger_reload(s->exchanger, rt);
    if (tls) {
        for (size_t l = 0; l < s->nlisten; l++)
            if (tls[l]) {
                SSL_CTX_free(s->listen_tls[l]);
                s->listen_tls[l] = tls[l]; /* the workers took their own references */
                note_listener_expiry(s, rt->conf, l, tls[l]);
            }
        free(tls);
    }
    runtime_unref(s->rt);
    s->rt = rt;
    s->last_reload_ok = now_real();
    log_msg(LOG_INFO, "reloaded %s: %zu credential%s, %zu route%s", rt->conf->source,
            rt->conf->ncredentials, rt->conf->ncredentials == 1 ? "" : "s", rt->conf->nroutes,
            rt->conf->nroutes == 1 ? "" : "s");
    return 0;
}

static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
    struct server *s = arg;
    if (!s->stopping)
        server_reload(s);
}

static void usr1_cb(evutil_socket_t sig, short what, void *arg)
{
    char err[256];
    if (accesslog_reopen(err, sizeof(err)) < 0)
        log_msg(LOG_ERROR, "SIGUSR1: %s", err);
    else
        log_msg(LOG_INFO, "SIGUSR1: access log reopened");
}

/* Every client connection costs one descriptor: raise the soft limit to the hard one, and say
 * when even that leaves too little for max_client_connections client connections plus the
 * pooled upstream connections (idle ones: upstream_pool_size per upstream per worker) and a
 * margin for listeners, logs and the admin server, so that the connection cap (a clean 503)
 * comes before the descriptor limit (Debian's default soft limit is 1024). Exchanges in flight
 * use a descriptor upstream each on top, which the margin covers only in part: the warning is
 * for a limit that is certainly too low, not one that might be. */
static void raise_descriptor_limit(const struct conf *conf, int nworkers, size_t ntargets)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t want = (rlim_t)conf->limits.max_client_connections +
                  (rlim_t)conf->limits.upstream_pool_size * (rlim_t)nworkers * ntargets +
                  DESCRIPTOR_MARGIN;
    if (conf->limits.max_client_connections && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        log_msg(LOG_WARN, "the descriptor limit is %llu but max_client_connections %zu needs about "
                          "%llu; raise it (ulimit -n, LimitNOFILE=) or lower "
                          "max_client_connections",
                (unsigned long long)rl.rlim_cur, conf->limits.max_client_connections,
                (unsigned long long)want);
}

static void ticket_rotate_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    if (tls_tickets_rotate(s->tickets) < 0)
        log_msg(LOG_ERROR, "cannot rotate the TLS session ticket keys (no randomness); the "
                           "current ones stay in use");
}

static void refresh_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    char err[256];
    if (token_cache_refresh(s->rt->tokens, err, sizeof(err)) < 0)
        log_msg(LOG_ERROR, "token refresh failed (the current token is kept while valid): %s",
                err);
}

static void stop_workers_now(struct server *s)
{
    for (int i = 0; i < s->nworkers; i++)
        if (s->workers[i].base)
            worker_stop(&s->workers[i]);
    event_base_loopexit(s->base, NULL);
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    log_msg(LOG_WARN, "drain timeout reached: closing the remaining connections");
    stop_workers_now(s);
}

static void stop_check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    for (int i = 0; i < s->nworkers; i++)
        if (!__atomic_load_n(&s->workers[i].done, __ATOMIC_ACQUIRE))
            return;
    event_base_loopexit(s->base, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct server *s = arg;
    if (s->stopping) {
        log_msg(LOG_WARN, "second signal: stopping now");
        stop_workers_now(s);
        return;
    }
    s->stopping = 1;
    log_msg(LOG_INFO, "%s: no new connections; finishing in-flight exchanges (drain_timeout %ld s)",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", s->rt->conf->limits.drain_timeout_ms / 1000);
    for (int i = 0; i < s->nworkers; i++)
        worker_drain(&s->workers[i]);
    struct timeval dtv = {s->rt->conf->limits.drain_timeout_ms / 1000,
                          (s->rt->conf->limits.drain_timeout_ms % 1000) * 1000};
    event_add(s->drain_timer, &dtv);
    struct timeval ctv = {0, 50 * 1000};
    event_add(s->stop_check, &ctv);
}

int server_run(struct conf *conf, const char *config_path)
{
    struct server srv;
    struct server *s = &srv;
    char err[512];
    int rc = 1, i;
    size_t l;
    int **fds = NULL;
    int ports[CONF_MAX_LISTEN];
    size_t nlisten = 0;
    long ncpu;

    memset(s, 0, sizeof(*s));
    s->config_path = config_path;
    s->started = s->last_reload_ok = now_real();
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0) {
        log_msg(LOG_ERROR, "cannot enable libevent threading");
        conf_free(conf);
        return 1;
    }
    s->live = live_new();
    if (s->live == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        conf_free(conf);
        return 1;
    }
    s->rt = runtime_new(conf, s->live, err, sizeof(err));
    if (s->rt == NULL) {
        log_msg(LOG_ERROR, "%s", err);
        live_free(s->live);
        return 1;
    }
    for (size_t t = 0; t < s->rt->ntargets; t++)
        upstream_tls_ctx_prepare(s->rt->targets[t].ssl_ctx);
    if (accesslog_open(s->rt->conf->access_log, s->rt->conf->access_log_text ? ACCESSLOG_TEXT
                                                                              : ACCESSLOG_JSON,
                       err, sizeof(err)) < 0) {
        log_msg(LOG_ERROR, "%s", err);
        runtime_unref(s->rt);
        live_free(s->live);
        return 1;
    }
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    s->nworkers = s->rt->conf->workers > 0 ? s->rt->conf->workers : (int)(ncpu > 0 ? ncpu : 1);
    {
        s->shared = shared_new(&s->rt->conf->shared, s->nworkers, err, sizeof(err));
        if (s->shared == NULL && err[0] != '\0') {
            log_msg(LOG_ERROR, "%s", err);
            runtime_unref(s->rt);
            live_free(s->live);
            return 1;
        }
    }
    s->env.conn = &client_conn_ops;
    s->env.shared = s->shared;
    raise_descriptor_limit(s->rt->conf, s->nworkers, s->rt->ntargets);
    s->base = event_base_new();
    s->workers = calloc((size_t)s->nworkers, sizeof(*s->workers));
    for (i = 0; s->workers && i < s->nworkers; i++)
        s->workers[i].notify_fd = -1; /* worker_deinit may see workers never initialised */
    fds = calloc(s->rt->conf->nlisten ? s->rt->conf->nlisten : 1, sizeof(*fds));
    if (s->base == NULL || s->workers == NULL || fds == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto out;
    }
    /* The signals are caught before the first "listening on" line: a supervisor or a test that
     * sends SIGHUP (or SIGTERM) as soon as the proxy says it listens must not meet the default
     * action, which ends the process. They are handled once the loop runs. */
    s->sig_term = evsignal_new(s->base, SIGTERM, signal_cb, s);
    s->sig_int = evsignal_new(s->base, SIGINT, signal_cb, s);
    s->sig_hup = evsignal_new(s->base, SIGHUP, hup_cb, s);
    s->sig_usr1 = evsignal_new(s->base, SIGUSR1, usr1_cb, s);
    s->refresh_timer = event_new(s->base, -1, EV_PERSIST, refresh_cb, s);
    s->drain_timer = evtimer_new(s->base, drain_timeout_cb, s);
    s->stop_check = event_new(s->base, -1, EV_PERSIST, stop_check_cb, s);
    if (!s->sig_term || !s->sig_int || !s->sig_hup || !s->sig_usr1 || !s->refresh_timer || !s->drain_timer || !s->stop_check) {
        log_msg(LOG_ERROR, "out of memory");
        goto out;
    }
    {
        struct timeval one = {1, 0};
        event_add(s->sig_term, NULL);
        event_add(s->sig_int, NULL);
        event_add(s->sig_hup, NULL);
        event_add(s->sig_usr1, NULL);
        event_add(s->refresh_timer, &one);
    }
    nlisten = s->rt->conf->nlisten; /* fixed for the process: reloads keep the sockets */
    if (nlisten > CONF_MAX_LISTEN) {
        /* The loader refuses more; the workers' listener arrays are sized by it. */
        log_msg(LOG_ERROR, "listen: at most %d addresses (got %zu)", CONF_MAX_LISTEN, nlisten);
        goto out;
    }
    s->nlisten = nlisten;
    s->listen_tls = calloc(nlisten, sizeof(*s->listen_tls));
    s->listen_cert_expiry = calloc(nlisten ? nlisten : 1, sizeof(time_t));
    s->listen_ca_expiry = calloc(nlisten ? nlisten : 1, sizeof(time_t));
    if (s->listen_tls == NULL || s->listen_cert_expiry == NULL || s->listen_ca_expiry == NULL) {
        log_msg(LOG_ERROR, "out of memory");
        goto out;
    }
    for (l = 0; l < nlisten; l++)
        if (s->rt->conf->listen[l].tls_cert_file && s->tickets == NULL) {
            s->tickets = tls_tickets_new(err, sizeof(err));
            s->ticket_timer = event_new(s->base, -1, EV_PERSIST, ticket_rotate_cb, s);
            struct timeval period = {TLS_TICKETS_ROTATE_SECONDS, 0};
            if (s->tickets == NULL || s->ticket_timer == NULL ||
                event_add(s->ticket_timer, &period) < 0) {
                log_msg(LOG_ERROR, "%s", s->tickets ? "out of memory" : err);
                goto out;
            }
        }
    for (l = 0; l < nlisten; l++)
        if (s->rt->conf->listen[l].tls_cert_file) {
            s->listen_tls[l] = preflight_listener_tls(s->rt->conf, l, s->tickets, err,
                                                      sizeof(err));
            if (s->listen_tls[l] == NULL) {
                log_msg(LOG_ERROR, "%s", err);
                goto out;
            }
            note_listener_expiry(s, s->rt->conf, l, s->listen_tls[l]);
        }
    for (l = 0; l < nlisten; l++) {
        const struct conf_addr *a = &s->rt->conf->listen[l];
        int port;
        fds[l] = calloc((size_t)s->nworkers, sizeof(int));
        if (fds[l] == NULL || open_listeners(a, s->nworkers, fds[l], &port, err, sizeof(err)) < 0) {
            log_msg(LOG_ERROR, "%s", fds[l] ? err : "out of memory");
            if (fds[l]) {
                free(fds[l]);
                fds[l] = NULL;
            }
            goto out;
        }
        ports[l] = port;
    }
    for (i = 0; i < s->nworkers; i++) {
        int wfds[CONF_MAX_LISTEN];
        SSL_CTX *wtls[CONF_MAX_LISTEN];
        size_t n = 0;
        for (l = 0; l < nlisten; l++) {
            wtls[n] = s->listen_tls[l];
            wfds[n++] = fds[l][i];
            fds[l][i] = -1;
        }
        if (worker_init(&s->workers[i], i, &s->env, s->rt, wfds, wtls, n, err, sizeof(err)) < 0) {
            log_msg(LOG_ERROR, "worker %d: %s", i, err);
            goto out;
        }
        s->workers[i].wake_cb = client_tokens_ready;
    }
    s->exchanger = token_exchanger_new(s->rt, s->workers, s->nworkers, err, sizeof(err));
    if (s->exchanger == NULL) {
        log_msg(LOG_ERROR, "token exchanger: %s", err);
        goto out;
    }
    s->env.exchanger = s->exchanger;
    {
        int disabled;
        s->admin = admin_new(s, &disabled, err, sizeof(err));
        if (s->admin == NULL && !disabled) {
            log_msg(LOG_ERROR, "%s", err);
            goto out;
        }
    }
    for (i = 0; i < s->nworkers; i++)
        if (worker_start(&s->workers[i]) < 0) {
            log_msg(LOG_ERROR, "cannot start worker thread %d", i);
            stop_workers_now(s);
            goto join;
        }
    if (token_exchanger_start(s->exchanger) < 0) {
        log_msg(LOG_ERROR, "cannot start the token exchanger's thread");
        stop_workers_now(s);
        goto join;
    }
    /* The exact lines scripts and tests wait for (the real port when 0 was asked), said only
     * once every thread is running: whoever waits for them may count the process's threads
     * and descriptors, or send a signal, and finds it complete. Connections that arrive
     * earlier wait in the listen queue. */
    for (l = 0; l < nlisten; l++) {
        const struct conf_addr *a = &s->rt->conf->listen[l];
        int v6 = strchr(a->host, ':') != NULL;
        fprintf(stderr, "apple-auth-proxy: listening on %s%s%s:%d%s\n", v6 ? "[" : "", a->host,
                v6 ? "]" : "", ports[l], s->listen_tls[l] ? " (https)" : "");
    }
    log_msg(LOG_INFO, "apple-auth-proxy %s serving with %d worker%s, %zu route%s", AAP_VERSION,
            s->nworkers, s->nworkers == 1 ? "" : "s", s->rt->conf->nroutes,
            s->rt->conf->nroutes == 1 ? "" : "s");
    event_base_dispatch(s->base);
    rc = 0;
join:
    for (i = 0; i < s->nworkers; i++)
        if (s->workers[i].started)
            pthread_join(s->workers[i].thread, NULL);
    if (rc == 0)
        log_msg(LOG_INFO, "stopped");
out:
    /* Before the workers: it wakes them when an exchange ends. */
    token_exchanger_free(s->exchanger);
    s->exchanger = NULL;
    if (s->workers)
        for (i = 0; i < s->nworkers; i++)
            worker_deinit(&s->workers[i]);
    if (fds) {
        for (l = 0; l < nlisten; l++)
            if (fds[l]) {
                for (i = 0; i < s->nworkers; i++)
                    if (fds[l][i] >= 0)
                        close(fds[l][i]);
                free(fds[l]);
            }
        free(fds);
    }
    free(s->workers);
    if (s->listen_tls) {
        for (l = 0; l < nlisten; l++)
            SSL_CTX_free(s->listen_tls[l]);
        free(s->listen_tls);
    }
    if (s->ticket_timer)
        event_free(s->ticket_timer);
    tls_tickets_free(s->tickets); /* after every context that uses the keys */
    free(s->listen_cert_expiry);
    free(s->listen_ca_expiry);
    if (s->sig_term)
        event_free(s->sig_term);
    if (s->sig_int)
        event_free(s->sig_int);
    if (s->sig_hup)
        event_free(s->sig_hup);
    if (s->sig_usr1)
        event_free(s->sig_usr1);
    admin_free(s->admin);
    if (s->refresh_timer)
        event_free(s->refresh_timer);
    if (s->drain_timer)
        event_free(s->drain_timer);
    if (s->stop_check)
        event_free(s->stop_check);
    if (s->base)
        event_base_free(s->base);
    runtime_unref(s->rt);
    shared_free(s->shared); /* after the workers' connections */
    live_free(s->live); /* after every runtime: the workers have released theirs */
    accesslog_close();
    return rc;
}
