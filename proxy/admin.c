/* admin: the admin endpoints (/healthz, /readyz, /metrics), served by the main thread. */
#include "proxy/admin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h> /* before keyvalq_struct.h, which would define TAILQ_HEAD */
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "proxy/metrics.h"
#include "proxy/intercept.h"
#include "proxy/server.h"
#include "proxy/shared.h"

struct admin {
    struct server *server;
    struct evhttp *http;
};

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

/* Ready when the configuration is loaded, the proxy is not draining, and every credential
 * holds a valid token (the refresher re-mints ahead of expiry; a failing key shows here). */
static int readiness(struct server *s, struct evbuffer *why)
{
    struct runtime *rt = s->rt;
    time_t now = time(NULL);
    int ok = 1;
    if (__atomic_load_n(&s->stopping, __ATOMIC_RELAXED)) {
        evbuffer_add_printf(why, "draining: the proxy is shutting down\n");
        ok = 0;
    }
    for (size_t i = 0; i < rt->conf->ncredentials; i++) {
        const struct credential *c = &rt->conf->credentials[i];
        int used = 0;
        for (size_t r = 0; r < rt->conf->nroutes; r++)
            if (rt->conf->routes[r].credential_index == i)
                used = 1;
        if (!used)
            continue; /* no route mints with it */
        time_t exp = token_cache_expiry(rt->tokens, c);
        if (exp <= now + 5 && profile_exchanged(c->profile)) {
            char reason[256];
            if (runtime_exchange_failing(rt, i, reason, sizeof(reason), NULL, NULL))
                evbuffer_add_printf(why, "credential %s: cannot get an access token: %s\n",
                                    c->name, reason);
            else
                evbuffer_add_printf(why, "credential %s: no access token yet (the first "
                                         "exchange is in progress)\n", c->name);
            ok = 0;
        } else if (exp <= now + 5) {
            evbuffer_add_printf(why, "credential %s: no valid token (minting failed; see the "
                                     "error log)\n", c->name);
            ok = 0;
        }
    }
    return ok;
}

/* Shared state's condition, said whether or not the proxy is ready: without Redis each replica
 * still serves, on its share of the limits, so it is a detail and never a reason to be
 * unready (an unready replica would take traffic away for what is Redis' problem). */
static void shared_detail(struct server *s, struct evbuffer *out)
{
    struct shared_stats st;
    if (s->shared == NULL)
        return;
    shared_stats_read(s->shared, &st);
    if (st.up == st.connections)
        evbuffer_add_printf(out, "shared_state: using Redis at %s\n", st.target);
    else if (st.up > 0)
        evbuffer_add_printf(out, "shared_state: Redis at %s used by %d of %d workers; the others "
                            "decide locally\n", st.target, st.up, st.connections);
    else
        evbuffer_add_printf(out, "shared_state: Redis at %s is not usable; rate limits are "
                            "local, divided by %d replica%s (fallbacks so far: %llu)\n",
                            st.target, st.replicas, st.replicas == 1 ? "" : "s",
                            (unsigned long long)st.fallbacks);
}

static void handle(struct evhttp_request *req, void *arg)
{
    struct admin *a = arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *body = evbuffer_new();
    size_t plen;
    if (body == NULL) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    plen = strcspn(uri, "?");
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evbuffer_add_printf(body, "only GET and HEAD\n");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply(req, 405, "Method Not Allowed", "text/plain; charset=utf-8", body);
    } else if (plen == 8 && strncmp(uri, "/healthz", 8) == 0) {
        evbuffer_add_printf(body, "ok\n");
        reply(req, 200, "OK", "text/plain; charset=utf-8", body);
    } else if (plen == 7 && strncmp(uri, "/readyz", 7) == 0) {
        struct evbuffer *why = evbuffer_new();
        if (why && readiness(a->server, why)) {
            evbuffer_add_printf(body, "ready\n");
            shared_detail(a->server, body);
            reply(req, 200, "OK", "text/plain; charset=utf-8", body);
        } else {
            if (why)
                evbuffer_add_buffer(body, why);
            shared_detail(a->server, body);
            reply(req, 503, "Service Unavailable", "text/plain; charset=utf-8", body);
        }
        if (why)
            evbuffer_free(why);
    } else if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        metrics_render(body, a->server);
        reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
    } else if (plen == 7 && strncmp(uri, "/ca.pem", 7) == 0 && a->server->rt->intercept) {
        /* The interception CA's certificate (public): what clients beside a container or in
         * a cluster fetch to trust it. */
        if (intercept_ca_pem(a->server->rt->intercept, body) == 0)
            reply(req, 200, "OK", "application/x-pem-file", body);
        else
            reply(req, 500, "Internal Server Error", "text/plain; charset=utf-8", body);
    } else {
        evbuffer_add_printf(body, "not found: the admin endpoints are /healthz, /readyz and "
                                  "/metrics\n");
        reply(req, 404, "Not Found", "text/plain; charset=utf-8", body);
    }
    evbuffer_free(body);
}

struct admin *admin_new(struct server *s, int *disabled, char *err, size_t errlen)
{
    const struct conf_addr *addr = &s->rt->conf->admin_listen;
    struct admin *a;
    struct evhttp_bound_socket *bound;
    *disabled = 0;
    if (addr->text == NULL) {
        *disabled = 1;
        return NULL;
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->server = s;
    a->http = evhttp_new(s->base);
    if (a->http == NULL) {
        snprintf(err, errlen, "cannot create the admin server");
        goto fail;
    }
    evhttp_set_gencb(a->http, handle, a);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    evhttp_set_max_headers_size(a->http, 16384);
    evhttp_set_max_body_size(a->http, 0);
    evhttp_set_timeout(a->http, 10);
    bound = evhttp_bind_socket_with_handle(a->http, addr->host, (ev_uint16_t)addr->port);
    if (bound == NULL) {
        snprintf(err, errlen, "admin_listen %s: cannot listen there", addr->text);
        goto fail;
    }
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int port = addr->port;
        if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) == 0)
            port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                 : ((struct sockaddr_in6 *)&ss)->sin6_port);
        if (strchr(addr->host, ':'))
            fprintf(stderr, "apple-auth-proxy: admin listening on [%s]:%d\n", addr->host, port);
        else
            fprintf(stderr, "apple-auth-proxy: admin listening on %s:%d\n", addr->host, port);
    }
    return a;
fail:
    admin_free(a);
    return NULL;
}

void admin_free(struct admin *a)
{
    if (a == NULL)
        return;
    if (a->http)
        evhttp_free(a->http);
    free(a);
}
