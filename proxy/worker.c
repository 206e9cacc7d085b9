/* worker: one thread with its own event loop, listener sockets, upstream pools and counters. */
#include "proxy/worker.h"

#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/thread.h>

#include "proxy/accesslog.h"
#include "proxy/http_error.h"
#include "proxy/h2up.h"
#include "proxy/log.h"
#include "proxy/shared.h"
#include "proxy/upstream.h"

static struct wgen *wgen_new(struct worker *w, struct runtime *rt)
{
    struct wgen *g = calloc(1, sizeof(*g));
    size_t i;
    if (g == NULL)
        return NULL;
    g->pools = calloc(rt->ntargets ? rt->ntargets : 1, sizeof(*g->pools));
    g->route_label = calloc(rt->conf->nroutes ? rt->conf->nroutes : 1, sizeof(*g->route_label));
    if (g->pools == NULL || g->route_label == NULL) {
        free(g->pools);
        free(g->route_label);
        free(g);
        return NULL;
    }
    /* The metrics' names for the routes: interned once per process and label, so every
     * generation of every worker finds the same ids. */
    for (i = 0; i < rt->conf->nroutes; i++) {
        const struct conf_route *r = &rt->conf->routes[i];
        char label[600];
        snprintf(label, sizeof(label), "%s%s", r->host ? r->host : r->upstream_host,
                 r->path_prefix);
        g->route_label[i] = metrics_label_id(label);
    }
    g->refs = 1;
    g->worker = w;
    g->rt = runtime_ref(rt);
    g->req_limits.max_line = rt->conf->limits.max_request_line;
    g->req_limits.max_head = rt->conf->limits.max_header_bytes;
    g->req_limits.max_headers = rt->conf->limits.max_headers;
    for (i = 0; i < rt->ntargets; i++)
        upool_init(&g->pools[i], g, &rt->targets[i]);
    return g;
}

struct wgen *wgen_ref(struct wgen *g)
{
    g->refs++; /* only the worker's own thread touches its generations */
    return g;
}

void wgen_unref(struct wgen *g)
{
    size_t i;
    if (g == NULL || --g->refs > 0)
        return;
    for (i = 0; i < g->rt->ntargets; i++)
        upool_deinit(&g->pools[i]);
    free(g->pools);
    free(g->route_label);
    runtime_unref(g->rt);
    free(g);
}

/* Counts a new client connection across the workers; 0 when it is over max (and not counted,
 * max 0: no limit). */
static int env_client_enter(struct worker_env *env, size_t max)
{
    size_t n = __atomic_add_fetch(&env->nclients, 1, __ATOMIC_RELAXED);
    if (max && n > max) {
        __atomic_sub_fetch(&env->nclients, 1, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}

static void env_client_leave(struct worker_env *env)
{
    __atomic_sub_fetch(&env->nclients, 1, __ATOMIC_RELAXED);
}

/* Past max_client_connections: answer 503 at once and close, without disturbing the
 * connections already open. */
static void refuse(int fd)
{
    char reply[HTTP_ERROR_MAX];
    size_t n = http_error_format(reply, 503, proxy_err_overloaded,
                                 "the proxy is at max_client_connections; retry shortly", 1, NULL);
    ssize_t r = send(fd, reply, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)r;
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
                      int len, void *arg)
{
    struct wlistener *wl = arg;
    struct worker *w = wl->worker;
    int one = 1;
    if (w->draining) {
        close(fd);
        return;
    }
    if (!env_client_enter(w->env, w->gen->rt->conf->limits.max_client_connections)) {
        WSTAT_ADD(w, connections_refused, 1);
        metrics_count_error(&w->metrics, proxy_err_overloaded);
        refuse(fd);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (w->env->conn->accept(w, fd, addr, (socklen_t)len, wl->tls, (size_t)(wl - w->listeners)) < 0)
        env_client_leave(w->env);
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    struct wlistener *wl = arg;
    if (wl->l && !wl->worker->draining)
        evconnlistener_enable(wl->l);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct wlistener *wl = arg;
    int err = EVUTIL_SOCKET_ERROR();
    /* Out of descriptors (EMFILE, ENFILE, ENOBUFS...): the pending connection stays in the
     * kernel's queue, so retrying at once would spin and log without end. Pause this listener
     * for a moment, say so once per pause, and keep serving the connections already open. */
    evconnlistener_disable(l);
    if (wl->pause_ev == NULL)
        wl->pause_ev = evtimer_new(wl->worker->base, resume_accepting, wl);
    if (wl->pause_ev) {
        struct timeval tv = {0, 250 * 1000};
        evtimer_add(wl->pause_ev, &tv);
    }
    WSTAT_ADD(wl->worker, accept_pauses, 1);
    log_msg(LOG_WARN, "accept failed: %s; not accepting for 250 ms (raise the descriptor "
                      "limit or lower max_client_connections)",
            evutil_socket_error_to_string(err));
}

#if defined(__SANITIZE_ADDRESS__)
#define AAP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AAP_ASAN 1
#endif
#endif

/* Returns glibc's free pages to the system. Under AddressSanitizer the heap is the sanitizer's
 * and glibc's allocator is never set up: malloc_trim would only initialise it, and two workers
 * doing that at once race inside glibc (one walks bins the other has not built yet: a crash
 * seen in the sanitizer suite). There is nothing of glibc's to trim, so nothing is done. */
static void heap_trim(void)
{
#ifndef AAP_ASAN
    malloc_trim(0);
#endif
}

/* A burst of connections leaves freed memory scattered between the long-lived objects
 * (upstream TLS sessions, idle clients), where the allocator cannot return it. Once a second
 * passes without new connections after a burst, hand the free pages back (malloc_trim also
 * releases whole free pages inside the heap). */
static void house_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t churn = __atomic_load_n(&w->stats.connections_accepted, __ATOMIC_RELAXED) +
                     __atomic_load_n(&w->stats.upstream_connects, __ATOMIC_RELAXED);
    size_t i;
    (void)fd;
    (void)what;
    w->house_ticks++;
    if (w->gen)
        for (i = 0; i < w->gen->rt->ntargets; i++)
            upool_tick(&w->gen->pools[i], w->house_ticks);
    if (churn != w->house_churn) {
        w->house_churn = churn;
        w->house_trim = 1;
    } else if (w->house_trim) {
        w->house_trim = 0;
        heap_trim();
    }
}

static void alog_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    accesslog_flush(w->alog);
}

static void apply_reload(struct worker *w)
{
    struct runtime *rt;
    SSL_CTX **tls;
    pthread_mutex_lock(&w->pending_lock);
    rt = w->pending_rt;
    w->pending_rt = NULL;
    tls = w->pending_tls;
    w->pending_tls = NULL;
    pthread_mutex_unlock(&w->pending_lock);
    if (tls) {
        /* Connections already open keep their own reference to the old context. */
        for (size_t i = 0; i < w->nlisteners; i++)
            if (tls[i]) {
                SSL_CTX_free(w->listeners[i].tls);
                w->listeners[i].tls = tls[i];
            }
        free(tls);
    }
    if (rt == NULL)
        return;
    struct wgen *g = wgen_new(w, rt);
    runtime_unref(rt); /* the wgen holds its own reference */
    if (g == NULL) {
        log_msg(LOG_ERROR, "worker %d: out of memory applying the new configuration", w->id);
        return;
    }
    /* Exchanges in flight hold the old generation; its pools close when they are done. */
    wgen_unref(w->gen);
    w->gen = g;
    shared_conn_set_runtime(w->shared, g->rt);
}

static void free_tls_list(SSL_CTX **tls, size_t n)
{
    if (tls == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        SSL_CTX_free(tls[i]);
    free(tls);
}

static void notify(struct worker *w)
{
    uint64_t one = 1;
    ssize_t r = write(w->notify_fd, &one, sizeof(one));
    (void)r; /* a full counter still wakes the worker */
}

void worker_reload(struct worker *w, struct runtime *rt, SSL_CTX *const *tls)
{
    struct runtime *old;
    SSL_CTX **copy = NULL, **old_tls;
    if (tls) {
        copy = calloc(w->nlisteners ? w->nlisteners : 1, sizeof(*copy));
        for (size_t i = 0; copy && i < w->nlisteners; i++)
            if (tls[i] && SSL_CTX_up_ref(tls[i]))
                copy[i] = tls[i];
    }
    runtime_ref(rt);
    pthread_mutex_lock(&w->pending_lock);
    old = w->pending_rt;
    w->pending_rt = rt;
    old_tls = w->pending_tls;
    w->pending_tls = copy;
    pthread_mutex_unlock(&w->pending_lock);
    runtime_unref(old);
    free_tls_list(old_tls, w->nlisteners);
    notify(w);
}

void worker_client_add(struct worker *w, struct wclient *wc)
{
    TAILQ_INSERT_TAIL(&w->clients, wc, link);
    w->nclients++;
    WSTAT_ADD(w, connections_accepted, 1);
    WSTAT_ADD(w, connections_open, 1);
}

void worker_client_remove(struct worker *w, struct wclient *wc)
{
    TAILQ_REMOVE(&w->clients, wc, link);
    w->nclients--;
    WSTAT_ADD(w, connections_open, -1);
    env_client_leave(w->env);
    if (w->draining && w->nclients == 0)
        event_base_loopexit(w->base, NULL);
}

static void start_draining(struct worker *w)
{
    struct wclient *wc, *next;
    size_t i;
    if (w->draining)
        return;
    w->draining = 1;
    for (i = 0; i < w->nlisteners; i++) {
        evconnlistener_free(w->listeners[i].l); /* closes the socket: no new connections */
        w->listeners[i].l = NULL;
    }
    /* Idle connections close now, busy ones after their current exchange. */
    for (wc = TAILQ_FIRST(&w->clients); wc; wc = next) {
        next = TAILQ_NEXT(wc, link);
        w->env->conn->drain(wc);
    }
    if (w->nclients == 0)
        event_base_loopexit(w->base, NULL);
}

static void notify_cb(evutil_socket_t fd, short what, void *arg);

int worker_init(struct worker *w, int id, struct worker_env *env, struct runtime *rt,
                const int *fds, SSL_CTX *const *tls, size_t nfds, char *err, size_t errlen)
{
    size_t i;
    memset(w, 0, sizeof(*w));
    w->id = id;
    w->env = env;
    TAILQ_INIT(&w->clients);
    w->notify_fd = -1;
    {
        /* One thread uses this base: no locks on the request path. */
        struct event_config *cfg = event_config_new();
        if (cfg)
            event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
        w->base = cfg ? event_base_new_with_config(cfg) : NULL;
        if (cfg)
            event_config_free(cfg);
    }
    if (w->base == NULL) {
        snprintf(err, errlen, "cannot create an event base");
        goto fail;
    }
    stream_ctx_init(&w->sctx, w->base);
    {
        struct timeval one = {1, 0};
        w->house_ev = event_new(w->base, -1, EV_PERSIST, house_cb, w);
        if (w->house_ev == NULL || event_add(w->house_ev, &one) < 0) {
            snprintf(err, errlen, "cannot create the worker's timer");
            goto fail;
        }
    }
    w->dns = evdns_base_new(w->base, 0);
    if (w->dns == NULL) {
        snprintf(err, errlen, "cannot create the DNS resolver");
        goto fail;
    }
    if (evdns_base_resolv_conf_parse(w->dns, DNS_OPTIONS_ALL, "/etc/resolv.conf") != 0 && id == 0)
        log_msg(LOG_WARN, "cannot read /etc/resolv.conf: upstream names may not resolve "
                          "(IP addresses in a route's \"address\" still work)");
    w->gen = wgen_new(w, rt);
    w->listeners = calloc(nfds ? nfds : 1, sizeof(*w->listeners));
    w->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->notify_ev = w->notify_fd >= 0 ? event_new(w->base, w->notify_fd, EV_READ | EV_PERSIST,
                                                 notify_cb, w)
                                     : NULL;
    pthread_mutex_init(&w->pending_lock, NULL);
    w->lock_init = 1;
    if (w->gen == NULL || w->listeners == NULL || w->notify_ev == NULL ||
        event_add(w->notify_ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (accesslog_enabled()) {
        struct timeval tv = {0, 200 * 1000};
        w->alog = evbuffer_new();
        w->alog_timer = event_new(w->base, -1, EV_PERSIST, alog_timer_cb, w);
        if (w->alog == NULL || w->alog_timer == NULL || event_add(w->alog_timer, &tv) < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    if (env && env->shared) {
        /* One worker reads the credentials' figures back for the whole process. */
        w->shared = shared_conn_new(env->shared, &w->sctx, w->dns, id == 0);
        if (w->shared == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        shared_conn_set_runtime(w->shared, w->gen->rt);
    }
    for (i = 0; i < nfds; i++) {
        w->listeners[i].worker = w;
        w->listeners[i].l = evconnlistener_new(w->base, accept_cb, &w->listeners[i],
                                               LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1,
                                               fds[i]);
        if (w->listeners[i].l == NULL) {
            snprintf(err, errlen, "cannot listen: %s", strerror(errno));
            for (; i < nfds; i++)
                close(fds[i]);
            goto fail;
        }
        evconnlistener_set_error_cb(w->listeners[i].l, accept_error_cb);
        w->listeners[i].tls = tls[i] && SSL_CTX_up_ref(tls[i]) ? tls[i] : NULL;
        w->nlisteners++;
    }
    return 0;
fail:
    worker_deinit(w);
    return -1;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    if (w->alog)
        accesslog_flush(w->alog);
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

int worker_start(struct worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return -1;
    w->started = 1;
    return 0;
}

void worker_drain(struct worker *w)
{
    __atomic_store_n(&w->want_drain, 1, __ATOMIC_RELEASE);
    notify(w);
}

void worker_wake(struct worker *w)
{
    __atomic_store_n(&w->want_wake, 1, __ATOMIC_RELEASE);
    notify(w);
}

void worker_stop(struct worker *w)
{
    __atomic_store_n(&w->want_stop, 1, __ATOMIC_RELEASE);
    notify(w);
}

/* Requests from other threads: a new configuration, a wake, draining, stopping. */
static void notify_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof(n));
    (void)r;
    apply_reload(w);
    if (__atomic_exchange_n(&w->want_wake, 0, __ATOMIC_ACQ_REL) && w->wake_cb)
        w->wake_cb(w);
    if (__atomic_load_n(&w->want_drain, __ATOMIC_ACQUIRE))
        start_draining(w);
    if (__atomic_load_n(&w->want_stop, __ATOMIC_ACQUIRE))
        event_base_loopbreak(w->base);
}

void worker_deinit(struct worker *w)
{
    struct wclient *wc;
    size_t i;
    /* Only a worker with an environment ever has clients. */
    while ((wc = TAILQ_FIRST(&w->clients)) != NULL)
        w->env->conn->free_now(wc);
    if (w->env)
        w->env->conn->cleanup(w);
    shared_conn_free(w->shared); /* after the clients: their rate decisions are cancelled */
    w->shared = NULL;
    if (w->alog) {
        accesslog_flush(w->alog);
        evbuffer_free(w->alog);
        w->alog = NULL;
    }
    if (w->alog_timer)
        event_free(w->alog_timer);
    w->alog_timer = NULL;
    if (w->house_ev)
        event_free(w->house_ev);
    w->house_ev = NULL;
    /* A reload not yet taken: its contexts are one per listener, so they go before the
     * listener count does. */
    if (w->lock_init) {
        runtime_unref(w->pending_rt);
        w->pending_rt = NULL;
        free_tls_list(w->pending_tls, w->nlisteners);
        w->pending_tls = NULL;
        pthread_mutex_destroy(&w->pending_lock);
        w->lock_init = 0;
    }
    for (i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].l)
            evconnlistener_free(w->listeners[i].l);
        if (w->listeners[i].pause_ev)
            event_free(w->listeners[i].pause_ev);
        SSL_CTX_free(w->listeners[i].tls);
    }
    free(w->listeners);
    w->listeners = NULL;
    w->nlisteners = 0;
    if (w->gen)
        wgen_unref(w->gen);
    w->gen = NULL;
    h2up_worker_cleanup(w); /* after the pools: their streams are kept for reuse */
    stream_ctx_deinit(&w->sctx); /* after the pools: their connections return buffers */
    if (w->notify_ev)
        event_free(w->notify_ev);
    w->notify_ev = NULL;
    if (w->notify_fd >= 0)
        close(w->notify_fd);
    w->notify_fd = -1;
    if (w->dns)
        evdns_base_free(w->dns, 1);
    w->dns = NULL;
    if (w->base)
        event_base_free(w->base);
    w->base = NULL;
}
