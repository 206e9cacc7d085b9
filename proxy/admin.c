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
#include <cjson/cJSON.h>

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

static void utc_text(time_t t, char *buf, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Adds {"name", "state", "ok"[, "detail"]} to checks; ok -1 means informational (never makes
 * the proxy unready, so no "ok" is given). */
static void add_check(cJSON *checks, const char *name, const char *state, int ok,
                      const char *detail)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return;
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "state", state);
    if (ok >= 0)
        cJSON_AddBoolToObject(o, "ok", ok);
    if (detail)
        cJSON_AddStringToObject(o, "detail", detail);
    cJSON_AddItemToArray(checks, o);
}

/* Shared state's condition, said whether or not the proxy is ready: without Redis each replica
 * still serves, on its share of the limits, so it is a detail and never a reason to be
 * unready (an unready replica would take traffic away for what is Redis' problem). */
static void shared_check(struct server *s, cJSON *checks)
{
    struct shared_stats st;
    char detail[512];
    const char *state;
    if (s->shared == NULL)
        return;
    shared_stats_read(s->shared, &st);
    if (st.up == st.connections) {
        state = "redis";
        snprintf(detail, sizeof(detail), "using Redis at %s%s", st.target,
                 st.tls ? " over TLS" : "");
    } else if (st.up > 0) {
        state = "partly local";
        snprintf(detail, sizeof(detail), "Redis at %s used by %d of %d workers; the others "
                 "decide locally", st.target, st.up, st.connections);
    } else {
        state = "local";
        snprintf(detail, sizeof(detail), "Redis at %s is not usable; rate limits are local, "
                 "divided by %d replica%s (fallbacks so far: %llu)", st.target, st.replicas,
                 st.replicas == 1 ? "" : "s", (unsigned long long)st.fallbacks);
    }
    add_check(checks, "shared_state", state, -1, detail);
}

/* Ready when the proxy is not draining, its listeners are up, and every credential a route
 * uses holds a valid token (the refresher re-mints ahead of expiry; a failing key shows here).
 * Each upstream's reachability (the latest attempt to connect, once one was made) is reported
 * too, but does not make the proxy unready: another instance could not reach Apple either, and
 * taking every instance out of rotation would turn a network problem into an outage.
 * Returns the verdict; *body gets the JSON (malloc'd, or NULL when out of memory). */
static int readiness(struct server *s, char **body)
{
    struct runtime *rt = s->rt;
    time_t now = time(NULL);
    int ok = 1, draining = __atomic_load_n(&s->stopping, __ATOMIC_RELAXED);
    char name[320], detail[320], when[32];
    cJSON *doc = cJSON_CreateObject(), *checks = cJSON_CreateArray();
    *body = NULL;
    if (doc == NULL || checks == NULL) {
        cJSON_Delete(doc);
        cJSON_Delete(checks);
        return 0;
    }
    add_check(checks, "draining", draining ? "draining: the proxy is shutting down" : "no",
              !draining, NULL);
    ok &= !draining;
    snprintf(detail, sizeof(detail), "%zu listen address%s, %d worker%s", s->nlisten,
             s->nlisten == 1 ? "" : "es", s->nworkers, s->nworkers == 1 ? "" : "s");
    add_check(checks, "listeners", draining ? "closed" : "up", !draining, detail);
    for (size_t i = 0; i < rt->conf->ncredentials; i++) {
        const struct credential *c = &rt->conf->credentials[i];
        int used = 0;
        for (size_t r = 0; r < rt->conf->nroutes; r++)
            if (rt->conf->routes[r].credential_index == i)
                used = 1;
        snprintf(name, sizeof(name), "credential %s", c->name);
        if (!used) {
            add_check(checks, name, "unused", -1, "no route uses it");
            continue;
        }
        time_t exp = token_cache_expiry(rt->tokens, c);
        if (exp <= now + 5 && profile_exchanged(c->profile)) {
            char reason[256];
            if (runtime_exchange_failing(rt, i, reason, sizeof(reason), NULL, NULL)) {
                snprintf(detail, sizeof(detail), "cannot get an access token: %s", reason);
                add_check(checks, name, "failing", 0, detail);
            } else {
                add_check(checks, name, "waiting", 0,
                          "no access token yet (the first exchange is in progress)");
            }
            ok = 0;
        } else if (exp <= now + 5) {
            add_check(checks, name, "failing", 0,
                      "no valid token (minting failed; see the error log)");
            ok = 0;
        } else {
            utc_text(exp, when, sizeof(when));
            snprintf(detail, sizeof(detail), "token valid until %s", when);
            add_check(checks, name, profile_exchanged(c->profile) ? "exchanged" : "minting", 1,
                      detail);
        }
    }
    for (size_t t = 0; t < rt->ntargets; t++) {
        int r = metrics_upstream_reachable(s->workers, s->nworkers, rt->targets[t].metrics_label);
        snprintf(name, sizeof(name), "upstream %s", rt->targets[t].host_header);
        add_check(checks, name, r < 0 ? "unknown" : r ? "reachable" : "unreachable", -1,
                  r < 0 ? "no connection attempted yet" : "the latest connection attempt");
    }
    shared_check(s, checks);
    cJSON_AddBoolToObject(doc, "ready", ok);
    cJSON_AddItemToObject(doc, "checks", checks);
    *body = cJSON_Print(doc);
    cJSON_Delete(doc);
    return ok;
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
        char *json;
        int ready = readiness(a->server, &json);
        if (json) {
            evbuffer_add(body, json, strlen(json));
            evbuffer_add(body, "\n", 1);
            free(json);
        }
        if (ready)
            reply(req, 200, "OK", "application/json", body);
        else
            reply(req, 503, "Service Unavailable", "application/json", body);
    } else if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        struct server *s = a->server;
        struct metrics_view v = {.workers = s->workers,
                                 .nworkers = s->nworkers,
                                 .rt = s->rt,
                                 .shared = s->shared,
                                 .started = s->started,
                                 .reloads = s->reloads,
                                 .reload_failures = s->reload_failures,
                                 .last_reload_ok = s->last_reload_ok,
                                 .nlisten = s->nlisten,
                                 .listen_cert_expiry = s->listen_cert_expiry,
                                 .listen_ca_expiry = s->listen_ca_expiry};
        metrics_render(body, &v);
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
