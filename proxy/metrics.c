/* metrics: per-worker counters and the Prometheus text exposition that sums them. */
#include "proxy/evbuf.h"
#include "proxy/metrics.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "proxy/http_error.h"
#include "proxy/shared.h"
#include "proxy/upstream.h"
#include "proxy/worker.h"

static const double bucket_bounds[METRICS_NBUCKETS - 1] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                           0.5,   1,    2.5,   5,    10,  30, 60};
static const char *const method_names[M_COUNT] = {"GET",   "HEAD",   "POST",    "PUT",
                                                  "PATCH", "DELETE", "OPTIONS", "other"};

static pthread_mutex_t labels_lock = PTHREAD_MUTEX_INITIALIZER;
static char *labels[METRICS_MAX_LABELS] = {""};
static int nlabels = 1;
static char *up_labels[METRICS_MAX_UPSTREAMS] = {""};
static int nup_labels = 1;
static char *client_labels[METRICS_MAX_CLIENTS] = {""};
static int nclient_labels = 1;
static const char *const class_names[METRICS_NCLASSES] = {"2xx", "3xx", "4xx", "5xx"};
static const char *const up_failure_names[METRICS_UPF_COUNT] = {"resolve", "connect", "tls",
                                                                "timeout"};

static const char *const error_codes[] = {
    proxy_err_bad_request,        proxy_err_forbidden_host,       proxy_err_no_route,
    proxy_err_connect,            proxy_err_request_timeout,      proxy_err_body_too_large,
    proxy_err_uri_too_long,       proxy_err_expectation,          proxy_err_headers_too_large,
    proxy_err_not_implemented,    proxy_err_upstream_unreachable, proxy_err_upstream_tls,
    proxy_err_bad_upstream_response, proxy_err_token,             proxy_err_overloaded,
    proxy_err_upstream_timeout,   proxy_err_client_forbidden,     proxy_err_proxy_auth,
    proxy_err_rate_limited,       proxy_err_quota_reserved,       proxy_err_apple_retry_after,
    proxy_err_http_version,       proxy_err_internal,             proxy_err_intercept,
    proxy_err_token_exchange,
    proxy_err_browser_forbidden,  proxy_err_misdirected,
};
#define NERRORS (sizeof(error_codes) / sizeof(error_codes[0]))

/* Finds or adds label in a table of cap names (entry 0 is reserved); 0 when full. */
static int intern(char **names, int *n, int cap, const char *label)
{
    int i, id = 0;
    pthread_mutex_lock(&labels_lock);
    for (i = 1; i < *n; i++)
        if (strcmp(names[i], label) == 0) {
            id = i;
            goto out;
        }
    if (*n < cap) {
        names[*n] = strdup(label);
        if (names[*n])
            id = (*n)++;
    }
out:
    pthread_mutex_unlock(&labels_lock);
    return id;
}

int metrics_label_id(const char *label)
{
    return intern(labels, &nlabels, METRICS_MAX_LABELS, label);
}

int metrics_upstream_id(const char *label)
{
    return intern(up_labels, &nup_labels, METRICS_MAX_UPSTREAMS, label);
}

int metrics_client_id(const char *name)
{
    return intern(client_labels, &nclient_labels, METRICS_MAX_CLIENTS, name);
}

const char *metrics_upstream_name(int id)
{
    if (id <= 0 || id >= METRICS_MAX_UPSTREAMS || up_labels[id] == NULL)
        return "";
    return up_labels[id];
}

const char *metrics_label_name(int id)
{
    /* A worker interns its routes' labels (under the lock) before its generation serves a
     * request, and a label never changes afterwards. */
    if (id <= 0 || id >= METRICS_MAX_LABELS || labels[id] == NULL)
        return "";
    return labels[id];
}

static enum metrics_method method_index(const char *m, size_t n)
{
    for (int i = 0; i < M_OTHER; i++)
        if (strlen(method_names[i]) == n && memcmp(method_names[i], m, n) == 0)
            return (enum metrics_method)i;
    return M_OTHER;
}

static void add(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static uint64_t load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static int bucket_of(uint64_t us)
{
    double secs = (double)us / 1e6;
    int b;
    for (b = 0; b < METRICS_NBUCKETS - 1; b++)
        if (secs <= bucket_bounds[b])
            break;
    return b;
}

void metrics_count_request(struct metrics_shard *m, int label, const char *method,
                           size_t method_len, int status, uint64_t duration_us)
{
    uint32_t key, h;
    size_t i;
    if (status < 100 || status > 999)
        status = 0; /* no response was sent (the client went away first): code="none" */
    if (label < 0 || label >= METRICS_MAX_LABELS)
        label = 0;
    key = 1 + ((uint32_t)label << 14 | (uint32_t)method_index(method, method_len) << 10 |
               (uint32_t)status);
    h = key * 2654435761u;
    for (i = 0; i < METRICS_REQ_SLOTS; i++) {
        struct metrics_req_slot *s = &m->req[(h + i) % METRICS_REQ_SLOTS];
        uint32_t k = __atomic_load_n(&s->key, __ATOMIC_RELAXED);
        if (k == key) {
            add(&s->count, 1);
            break;
        }
        if (k == 0) {
            /* The count is set before the key is published, so a scrape never sees a key
             * without its count. */
            __atomic_store_n(&s->count, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&s->key, key, __ATOMIC_RELEASE);
            break;
        }
    }
    if (i == METRICS_REQ_SLOTS)
        add(&m->req_overflow, 1);
    add(&m->dur_bucket[label][bucket_of(duration_us)], 1); /* non-cumulative; summed when
                                                                 rendered */
    add(&m->dur_count[label], 1);
    add(&m->dur_sum_us[label], duration_us);
}

void metrics_count_apple(struct metrics_shard *m, int label, int status, uint64_t apple_us,
                         uint64_t ttfb_us)
{
    int k = status / 100 - 2;
    if (k < 0 || k >= METRICS_NCLASSES)
        return; /* only final answers reach the client */
    if (label < 0 || label >= METRICS_MAX_LABELS)
        label = 0;
    add(&m->apple_bucket[label][k][bucket_of(apple_us)], 1);
    add(&m->apple_count[label][k], 1);
    add(&m->apple_sum_us[label][k], apple_us);
    add(&m->ttfb_bucket[label][k][bucket_of(ttfb_us)], 1);
    add(&m->ttfb_count[label][k], 1);
    add(&m->ttfb_sum_us[label][k], ttfb_us);
}

void metrics_count_client(struct metrics_shard *m, int client, int status)
{
    int k = status >= 100 && status <= 599 ? status / 100 : 0;
    if (client < 0 || client >= METRICS_MAX_CLIENTS)
        client = 0;
    add(&m->client_req[client][k], 1);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void metrics_upstream_gauge(struct metrics_shard *m, int up, enum metrics_up_gauge g, int delta)
{
    if (up > 0 && up < METRICS_MAX_UPSTREAMS)
        add(&m->up_gauge[up][g], (uint64_t)(int64_t)delta);
}

void metrics_upstream_opened(struct metrics_shard *m, int up)
{
    if (up <= 0 || up >= METRICS_MAX_UPSTREAMS)
        return;
    add(&m->up_handshakes[up], 1);
    __atomic_store_n(&m->up_last_ok_ms[up], now_ms(), __ATOMIC_RELAXED);
}

void metrics_upstream_failed(struct metrics_shard *m, int up, enum metrics_up_failure why)
{
    if (up <= 0 || up >= METRICS_MAX_UPSTREAMS)
        return;
    add(&m->up_failures[up][why], 1);
    __atomic_store_n(&m->up_last_fail_ms[up], now_ms(), __ATOMIC_RELAXED);
}

int metrics_upstream_reachable(const struct worker *workers, int nworkers, int up)
{
    uint64_t ok = 0, fail = 0;
    if (up <= 0 || up >= METRICS_MAX_UPSTREAMS)
        return -1;
    for (int w = 0; w < nworkers; w++) {
        uint64_t a = load(&workers[w].metrics.up_last_ok_ms[up]);
        uint64_t b = load(&workers[w].metrics.up_last_fail_ms[up]);
        ok = a > ok ? a : ok;
        fail = b > fail ? b : fail;
    }
    if (ok == 0 && fail == 0)
        return -1;
    return ok >= fail;
}

void metrics_count_error(struct metrics_shard *m, const char *code)
{
    for (size_t i = 0; i < NERRORS; i++)
        if (error_codes[i] == code) {
            add(&m->errors[i], 1);
            return;
        }
}

static void label_escaped(struct evbuffer *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            evbuffer_add_printf(out, "\\%c", *s);
        else if (*s == '\n')
            ADD_LITERAL(out, "\\n");
        else
            evbuffer_add(out, s, 1);
    }
}

static uint64_t sum_stat(const struct metrics_view *s, size_t offset)
{
    uint64_t v = 0;
    for (int i = 0; i < s->nworkers; i++)
        v += load((const uint64_t *)((const char *)&s->workers[i].stats + offset));
    return v;
}

#define STAT(s, field) sum_stat((s), offsetof(struct worker_stats, field))

/* Upstream requests, failures, connections and streams by protocol. */
static void render_protocols(struct evbuffer *out, const struct metrics_view *s)
{
    static const char *const names[UP_PROTO_COUNT] = {"http/1.1", "h2"};
    static const struct {
        const char *name, *type, *help;
        size_t offset;
    } fams[] = {
        {"upstream_protocol_requests_total", "counter",
         "Requests sent to upstreams (a request sent again counts again).",
         offsetof(struct worker_stats, proto_requests)},
        {"upstream_protocol_failures_total", "counter",
         "Exchanges the upstream failed: unreachable, lost, reset, timed out or a bad answer "
         "(the proxy answered 502 or 504).",
         offsetof(struct worker_stats, proto_failures)},
        {"upstream_protocol_connections", "gauge", "Upstream connections open or opening.",
         offsetof(struct worker_stats, proto_conns)},
        {"upstream_protocol_streams", "gauge",
         "Requests in flight on upstream connections (HTTP/1.1: one per busy connection).",
         offsetof(struct worker_stats, proto_streams)},
    };
    for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
        evbuffer_add_printf(out, "# HELP apple_auth_proxy_%s %s\n# TYPE apple_auth_proxy_%s %s\n",
                            fams[f].name, fams[f].help, fams[f].name, fams[f].type);
        for (int p = 0; p < UP_PROTO_COUNT; p++)
            evbuffer_add_printf(out, "apple_auth_proxy_%s{protocol=\"%s\"} %lld\n", fams[f].name,
                                names[p],
                                (long long)sum_stat(s, fams[f].offset + p * sizeof(uint64_t)));
    }
}

/* HTTP/2 upstreams (h2up.c) and APNs' token answers. */
static void render_http2(struct evbuffer *out, const struct metrics_view *s)
{
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_http2_connections HTTP/2 upstream connections "
                        "open or opening.\n"
                        "# TYPE apple_auth_proxy_http2_connections gauge\n"
                        "apple_auth_proxy_http2_connections %llu\n"
                        "# HELP apple_auth_proxy_http2_streams_total Requests sent on HTTP/2 "
                        "upstream connections (a retry counts again).\n"
                        "# TYPE apple_auth_proxy_http2_streams_total counter\n"
                        "apple_auth_proxy_http2_streams_total %llu\n"
                        "# HELP apple_auth_proxy_http2_retries_total Requests sent again on "
                        "another connection after GOAWAY or REFUSED_STREAM.\n"
                        "# TYPE apple_auth_proxy_http2_retries_total counter\n"
                        "apple_auth_proxy_http2_retries_total %llu\n"
                        "# HELP apple_auth_proxy_http2_failures_total Exchanges failed by "
                        "RST_STREAM or a lost HTTP/2 connection.\n"
                        "# TYPE apple_auth_proxy_http2_failures_total counter\n"
                        "apple_auth_proxy_http2_failures_total %llu\n"
                        "# HELP apple_auth_proxy_apns_token_retries_total Pushes sent again with "
                        "a new token after APNs refused the old one.\n"
                        "# TYPE apple_auth_proxy_apns_token_retries_total counter\n"
                        "apple_auth_proxy_apns_token_retries_total %llu\n"
                        "# HELP apple_auth_proxy_apns_too_many_token_updates_total APNs answers "
                        "429 TooManyProviderTokenUpdates (another sender mints for the team).\n"
                        "# TYPE apple_auth_proxy_apns_too_many_token_updates_total counter\n"
                        "apple_auth_proxy_apns_too_many_token_updates_total %llu\n",
                        (unsigned long long)STAT(s, h2_connections),
                        (unsigned long long)STAT(s, h2_streams),
                        (unsigned long long)STAT(s, h2_retries),
                        (unsigned long long)STAT(s, h2_failures),
                        (unsigned long long)STAT(s, apns_token_retries),
                        (unsigned long long)STAT(s, apns_too_many));
}

static void render_requests(struct evbuffer *out, const struct metrics_view *s)
{
    /* Merge every worker's series (small: at most METRICS_REQ_SLOTS per worker). */
    size_t cap = (size_t)s->nworkers * METRICS_REQ_SLOTS, n = 0, i, j;
    struct metrics_req_slot *all = calloc(cap ? cap : 1, sizeof(*all));
    if (all == NULL)
        return;
    for (int w = 0; w < s->nworkers; w++) {
        const struct metrics_shard *m = &s->workers[w].metrics;
        for (i = 0; i < METRICS_REQ_SLOTS; i++) {
            uint32_t k = __atomic_load_n(&m->req[i].key, __ATOMIC_ACQUIRE);
            if (k == 0)
                continue;
            uint64_t c = load(&m->req[i].count);
            for (j = 0; j < n; j++)
                if (all[j].key == k)
                    break;
            if (j == n) {
                all[n].key = k;
                all[n].count = 0;
                n++;
            }
            all[j].count += c;
        }
    }
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_requests_total Requests answered, by route, "
                             "method and status code.\n"
                             "# TYPE apple_auth_proxy_requests_total counter\n");
    pthread_mutex_lock(&labels_lock);
    for (j = 0; j < n; j++) {
        uint32_t k = all[j].key - 1;
        int label = (int)(k >> 14), method = (int)((k >> 10) & 0xf), status = (int)(k & 0x3ff);
        evbuffer_add_printf(out, "apple_auth_proxy_requests_total{route=\"");
        label_escaped(out, labels[label] ? labels[label] : "");
        if (status == 0)
            evbuffer_add_printf(out, "\",method=\"%s\",code=\"none\"} %llu\n",
                                method_names[method], (unsigned long long)all[j].count);
        else
            evbuffer_add_printf(out, "\",method=\"%s\",code=\"%d\"} %llu\n",
                                method_names[method], status, (unsigned long long)all[j].count);
    }
    pthread_mutex_unlock(&labels_lock);
    free(all);
}

static void render_durations(struct evbuffer *out, const struct metrics_view *s)
{
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_request_duration_seconds Time from the request "
                        "head to the end of the response, by route.\n"
                        "# TYPE apple_auth_proxy_request_duration_seconds histogram\n");
    pthread_mutex_lock(&labels_lock);
    int n = nlabels;
    for (int l = 0; l < n; l++) {
        uint64_t count = 0, sum = 0, cum = 0;
        for (int w = 0; w < s->nworkers; w++) {
            count += load(&s->workers[w].metrics.dur_count[l]);
            sum += load(&s->workers[w].metrics.dur_sum_us[l]);
        }
        if (count == 0 && l == 0)
            continue;
        for (int b = 0; b < METRICS_NBUCKETS; b++) {
            for (int w = 0; w < s->nworkers; w++)
                cum += load(&s->workers[w].metrics.dur_bucket[l][b]);
            evbuffer_add_printf(out, "apple_auth_proxy_request_duration_seconds_bucket{route=\"");
            label_escaped(out, labels[l]);
            if (b < METRICS_NBUCKETS - 1)
                evbuffer_add_printf(out, "\",le=\"%g\"} %llu\n", bucket_bounds[b],
                                    (unsigned long long)cum);
            else
                evbuffer_add_printf(out, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        evbuffer_add_printf(out, "apple_auth_proxy_request_duration_seconds_sum{route=\"");
        label_escaped(out, labels[l]);
        evbuffer_add_printf(out, "\"} %.6f\n", (double)sum / 1e6);
        evbuffer_add_printf(out, "apple_auth_proxy_request_duration_seconds_count{route=\"");
        label_escaped(out, labels[l]);
        evbuffer_add_printf(out, "\"} %llu\n", (unsigned long long)count);
    }
    pthread_mutex_unlock(&labels_lock);
}

/* "shared_state": whether Redis is in use, how often a replica fell back to deciding alone,
 * and the figures all replicas share. */
static void render_shared(struct evbuffer *out, const struct shared *sh, const struct runtime *rt)
{
    struct shared_stats st;
    shared_stats_read(sh, &st);
    evbuffer_add_printf(
        out,
        "# HELP apple_auth_proxy_shared_state_up 1 while rate decisions go to Redis (some "
        "worker connection is up), 0 while they are local.\n"
        "# TYPE apple_auth_proxy_shared_state_up gauge\n"
        "apple_auth_proxy_shared_state_up %d\n"
        "# HELP apple_auth_proxy_shared_state_fallbacks_total Times a worker's Redis connection "
        "stopped being used (closed, refused, or slower than the timeout).\n"
        "# TYPE apple_auth_proxy_shared_state_fallbacks_total counter\n"
        "apple_auth_proxy_shared_state_fallbacks_total %llu\n"
        "# HELP apple_auth_proxy_shared_state_timeouts_total Of those, replies slower than the "
        "timeout.\n"
        "# TYPE apple_auth_proxy_shared_state_timeouts_total counter\n"
        "apple_auth_proxy_shared_state_timeouts_total %llu\n"
        "# HELP apple_auth_proxy_shared_rate_decisions_total Client rate decisions, by where "
        "they were made (local: Redis not in use, limits divided by replicas).\n"
        "# TYPE apple_auth_proxy_shared_rate_decisions_total counter\n"
        "apple_auth_proxy_shared_rate_decisions_total{where=\"redis\"} %llu\n"
        "apple_auth_proxy_shared_rate_decisions_total{where=\"local\"} %llu\n"
        "# HELP apple_auth_proxy_shared_state_tls_failures_total TLS connections to Redis that "
        "ended before Redis answered (a certificate refused by either side, a server that does "
        "not speak TLS, no handshake in time).\n"
        "# TYPE apple_auth_proxy_shared_state_tls_failures_total counter\n"
        "apple_auth_proxy_shared_state_tls_failures_total %llu\n",
        st.up > 0, (unsigned long long)st.fallbacks, (unsigned long long)st.timeouts,
        (unsigned long long)st.remote_decisions, (unsigned long long)st.local_decisions,
        (unsigned long long)st.tls_failures);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_shared_token_mints Tokens signed by all "
                             "replicas together, by credential, as last read from Redis.\n"
                             "# TYPE apple_auth_proxy_shared_token_mints gauge\n");
    for (size_t i = 0; i < rt->conf->ncredentials; i++) {
        struct live_quota q;
        live_cred_read(rt->live_creds[i], &q);
        if (q.mints_shared < 0)
            continue;
        evbuffer_add_printf(out, "apple_auth_proxy_shared_token_mints{credential=\"");
        label_escaped(out, rt->conf->credentials[i].name);
        evbuffer_add_printf(out, "\"} %ld\n", q.mints_shared);
    }
}

/* The access-token exchanges of the maps and apple-business credentials. */
static void render_exchanges(struct evbuffer *out, struct runtime *rt)
{
    size_t i;
    int r, any = 0;
    for (i = 0; i < rt->conf->ncredentials; i++)
        any |= profile_exchanged(rt->conf->credentials[i].profile);
    if (!any)
        return;
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_token_exchanges_total Access-token exchanges "
                             "with Apple's token endpoint, by credential and result.\n"
                             "# TYPE apple_auth_proxy_token_exchanges_total counter\n");
    for (i = 0; i < rt->conf->ncredentials; i++) {
        if (!profile_exchanged(rt->conf->credentials[i].profile))
            continue;
        for (r = 0; r < EXCHANGE_RESULT_COUNT; r++) {
            evbuffer_add_printf(out, "apple_auth_proxy_token_exchanges_total{credential=\"");
            label_escaped(out, rt->conf->credentials[i].name);
            evbuffer_add_printf(out, "\",result=\"%s\"} %lu\n",
                                exchange_result_name((enum exchange_result)r),
                                __atomic_load_n(&rt->exchange[i].results[r], __ATOMIC_RELAXED));
        }
    }
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_token_exchange_failing 1 while the "
                             "credential's last exchange failed.\n"
                             "# TYPE apple_auth_proxy_token_exchange_failing gauge\n");
    for (i = 0; i < rt->conf->ncredentials; i++) {
        if (!profile_exchanged(rt->conf->credentials[i].profile))
            continue;
        evbuffer_add_printf(out, "apple_auth_proxy_token_exchange_failing{credential=\"");
        label_escaped(out, rt->conf->credentials[i].name);
        evbuffer_add_printf(out, "\"} %d\n",
                            __atomic_load_n(&rt->exchange[i].failing, __ATOMIC_RELAXED));
    }
}

/* Apple's answers by route and status class: one histogram family (which: 0 the round trip,
 * 1 the time to the first byte). Only series that have seen a request are written. */
static void render_class_histogram(struct evbuffer *out, const struct metrics_view *s, int which,
                                   const char *name, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    pthread_mutex_lock(&labels_lock);
    for (int l = 0; l < nlabels; l++)
        for (int k = 0; k < METRICS_NCLASSES; k++) {
            uint64_t count = 0, sum = 0, cum = 0;
            for (int w = 0; w < s->nworkers; w++) {
                const struct metrics_shard *m = &s->workers[w].metrics;
                count += load(which ? &m->ttfb_count[l][k] : &m->apple_count[l][k]);
                sum += load(which ? &m->ttfb_sum_us[l][k] : &m->apple_sum_us[l][k]);
            }
            if (count == 0)
                continue;
            for (int b = 0; b < METRICS_NBUCKETS; b++) {
                for (int w = 0; w < s->nworkers; w++) {
                    const struct metrics_shard *m = &s->workers[w].metrics;
                    cum += load(which ? &m->ttfb_bucket[l][k][b] : &m->apple_bucket[l][k][b]);
                }
                evbuffer_add_printf(out, "%s_bucket{route=\"", name);
                label_escaped(out, labels[l]);
                if (b < METRICS_NBUCKETS - 1)
                    evbuffer_add_printf(out, "\",code_class=\"%s\",le=\"%g\"} %llu\n",
                                        class_names[k], bucket_bounds[b], (unsigned long long)cum);
                else
                    evbuffer_add_printf(out, "\",code_class=\"%s\",le=\"+Inf\"} %llu\n",
                                        class_names[k], (unsigned long long)cum);
            }
            evbuffer_add_printf(out, "%s_sum{route=\"", name);
            label_escaped(out, labels[l]);
            evbuffer_add_printf(out, "\",code_class=\"%s\"} %.6f\n", class_names[k],
                                (double)sum / 1e6);
            evbuffer_add_printf(out, "%s_count{route=\"", name);
            label_escaped(out, labels[l]);
            evbuffer_add_printf(out, "\",code_class=\"%s\"} %llu\n", class_names[k],
                                (unsigned long long)count);
        }
    pthread_mutex_unlock(&labels_lock);
}

static uint64_t sum_up(const struct metrics_view *s, size_t offset)
{
    uint64_t v = 0;
    for (int w = 0; w < s->nworkers; w++)
        v += load((const uint64_t *)((const char *)&s->workers[w].metrics + offset));
    return v;
}

#define UPSUM(s, field) sum_up((s), offsetof(struct metrics_shard, field))

/* Per upstream: connections by state, handshakes and failed attempts. */
static void render_upstreams(struct evbuffer *out, const struct metrics_view *s)
{
    static const char *const states[] = {"idle", "busy", "connecting"};
    int n;
    pthread_mutex_lock(&labels_lock);
    n = nup_labels;
    pthread_mutex_unlock(&labels_lock);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_upstream_connections Upstream TLS "
                             "connections by state: idle in a pool, busy with an exchange, or "
                             "connecting (resolving, TCP, TLS handshake).\n"
                             "# TYPE apple_auth_proxy_upstream_connections gauge\n");
    for (int u = 1; u < n; u++) {
        int64_t idle = (int64_t)UPSUM(s, up_gauge[u][METRICS_UP_IDLE]);
        int64_t active = (int64_t)UPSUM(s, up_gauge[u][METRICS_UP_ACTIVE]);
        int64_t conn = (int64_t)UPSUM(s, up_gauge[u][METRICS_UP_CONNECTING]);
        int64_t v[3] = {idle, active - conn, conn};
        for (int k = 0; k < 3; k++) {
            evbuffer_add_printf(out, "apple_auth_proxy_upstream_connections{upstream=\"");
            label_escaped(out, up_labels[u]);
            evbuffer_add_printf(out, "\",state=\"%s\"} %lld\n", states[k],
                                (long long)(v[k] > 0 ? v[k] : 0));
        }
    }
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_upstream_handshakes_total TLS handshakes "
                             "completed with an upstream (new connections).\n"
                             "# TYPE apple_auth_proxy_upstream_handshakes_total counter\n");
    for (int u = 1; u < n; u++) {
        evbuffer_add_printf(out, "apple_auth_proxy_upstream_handshakes_total{upstream=\"");
        label_escaped(out, up_labels[u]);
        evbuffer_add_printf(out, "\"} %llu\n", (unsigned long long)UPSUM(s, up_handshakes[u]));
    }
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_upstream_connect_failures_total Attempts "
                             "to open an upstream connection that failed, by reason.\n"
                             "# TYPE apple_auth_proxy_upstream_connect_failures_total counter\n");
    for (int u = 1; u < n; u++)
        for (int k = 0; k < METRICS_UPF_COUNT; k++) {
            evbuffer_add_printf(out, "apple_auth_proxy_upstream_connect_failures_total{"
                                     "upstream=\"");
            label_escaped(out, up_labels[u]);
            evbuffer_add_printf(out, "\",reason=\"%s\"} %llu\n", up_failure_names[k],
                                (unsigned long long)UPSUM(s, up_failures[u][k]));
        }
}

static void render_clients(struct evbuffer *out, const struct metrics_view *s)
{
    static const char *const classes[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    int n;
    pthread_mutex_lock(&labels_lock);
    n = nclient_labels;
    pthread_mutex_unlock(&labels_lock);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_client_requests_total Requests by gateway "
                             "client (client=\"\": none identified) and status class.\n"
                             "# TYPE apple_auth_proxy_client_requests_total counter\n");
    for (int c = 0; c < n; c++)
        for (int k = 0; k < 6; k++) {
            uint64_t v = UPSUM(s, client_req[c][k]);
            if (v == 0)
                continue;
            evbuffer_add_printf(out, "apple_auth_proxy_client_requests_total{client=\"");
            label_escaped(out, client_labels[c]);
            evbuffer_add_printf(out, "\",code_class=\"%s\"} %llu\n", classes[k],
                                (unsigned long long)v);
        }
}

/* The standard process_* families (what Prometheus client libraries export), from /proc. */
static void render_process(struct evbuffer *out, const struct metrics_view *s)
{
    struct rusage ru;
    struct rlimit rl;
    long pages = 0, rss = 0;
    unsigned long fds = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    DIR *d;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            fds += e->d_name[0] != '.';
        closedir(d);
        fds--; /* the directory's own descriptor */
    }
    getrusage(RUSAGE_SELF, &ru);
    evbuffer_add_printf(out,
                        "# HELP process_start_time_seconds Start time of the process since the "
                        "Unix epoch in seconds.\n"
                        "# TYPE process_start_time_seconds gauge\n"
                        "process_start_time_seconds %.3f\n"
                        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                        "# TYPE process_resident_memory_bytes gauge\n"
                        "process_resident_memory_bytes %lld\n"
                        "# HELP process_cpu_seconds_total Total user and system CPU time spent "
                        "in seconds.\n"
                        "# TYPE process_cpu_seconds_total counter\n"
                        "process_cpu_seconds_total %.6f\n"
                        "# HELP process_open_fds Number of open file descriptors.\n"
                        "# TYPE process_open_fds gauge\n"
                        "process_open_fds %lu\n",
                        s->started, (long long)rss * sysconf(_SC_PAGESIZE),
                        (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                            (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
                        fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        evbuffer_add_printf(out, "# HELP process_max_fds Maximum number of open file "
                                 "descriptors.\n"
                                 "# TYPE process_max_fds gauge\n"
                                 "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_build_info The running build: its version "
                             "and the libraries it runs with.\n"
                             "# TYPE apple_auth_proxy_build_info gauge\n"
                             "apple_auth_proxy_build_info{version=\"");
    label_escaped(out, AAP_VERSION);
    evbuffer_add_printf(out, "\",openssl=\"");
    label_escaped(out, OpenSSL_version(OPENSSL_VERSION));
    evbuffer_add_printf(out, "\",libevent=\"");
    label_escaped(out, event_get_version());
    evbuffer_add_printf(out, "\"} 1\n");
}

/* Reloads, and each listener's certificate and client CA expiry. */
static void render_server(struct evbuffer *out, const struct metrics_view *s)
{
    const struct conf *conf = s->rt->conf;
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_reloads_total Configuration reloads (SIGHUP) by "
                        "outcome.\n"
                        "# TYPE apple_auth_proxy_reloads_total counter\n"
                        "apple_auth_proxy_reloads_total{outcome=\"success\"} %lu\n"
                        "apple_auth_proxy_reloads_total{outcome=\"failure\"} %lu\n"
                        "# HELP apple_auth_proxy_last_reload_success_timestamp_seconds When the "
                        "running configuration was loaded (the start, or the last successful "
                        "reload), since the Unix epoch.\n"
                        "# TYPE apple_auth_proxy_last_reload_success_timestamp_seconds gauge\n"
                        "apple_auth_proxy_last_reload_success_timestamp_seconds %.3f\n",
                        s->reloads - s->reload_failures, s->reload_failures, s->last_reload_ok);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_listener_certificate_expiry_timestamp_"
                             "seconds When an HTTPS listener's certificate expires (notAfter), "
                             "since the Unix epoch.\n"
                             "# TYPE apple_auth_proxy_listener_certificate_expiry_timestamp_"
                             "seconds gauge\n");
    for (size_t l = 0; l < s->nlisten && l < conf->nlisten; l++)
        if (s->listen_cert_expiry && s->listen_cert_expiry[l]) {
            evbuffer_add_printf(out, "apple_auth_proxy_listener_certificate_expiry_timestamp_"
                                     "seconds{listener=\"");
            label_escaped(out, conf->listen[l].text);
            evbuffer_add_printf(out, "\"} %lld\n", (long long)s->listen_cert_expiry[l]);
        }
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_client_ca_expiry_timestamp_seconds When "
                             "the first certificate of an HTTPS listener's client_ca_file "
                             "expires, since the Unix epoch.\n"
                             "# TYPE apple_auth_proxy_client_ca_expiry_timestamp_seconds "
                             "gauge\n");
    for (size_t l = 0; l < s->nlisten && l < conf->nlisten; l++)
        if (s->listen_ca_expiry && s->listen_ca_expiry[l]) {
            evbuffer_add_printf(out, "apple_auth_proxy_client_ca_expiry_timestamp_seconds{"
                                     "listener=\"");
            label_escaped(out, conf->listen[l].text);
            evbuffer_add_printf(out, "\"} %lld\n", (long long)s->listen_ca_expiry[l]);
        }
}

/* One gauge or counter family with a value per credential. */
static void render_per_credential(struct evbuffer *out, const struct runtime *rt,
                                  const char *name, const char *type, const char *help,
                                  long long (*value)(const struct runtime *, size_t))
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (size_t i = 0; i < rt->conf->ncredentials; i++) {
        evbuffer_add_printf(out, "%s{credential=\"", name);
        label_escaped(out, rt->conf->credentials[i].name);
        evbuffer_add_printf(out, "\"} %lld\n", value(rt, i));
    }
}

static long long cred_failures(const struct runtime *rt, size_t i)
{
    struct live_quota q;
    live_cred_read(rt->live_creds[i], &q);
    return (long long)q.mint_failures;
}

static long long cred_remints(const struct runtime *rt, size_t i)
{
    struct live_quota q;
    live_cred_read(rt->live_creds[i], &q);
    return (long long)q.remints_401;
}

static long long cred_expiry(const struct runtime *rt, size_t i)
{
    return (long long)token_cache_expiry(rt->tokens, &rt->conf->credentials[i]);
}

static long long cred_quota_limit(const struct runtime *rt, size_t i)
{
    struct live_quota q;
    live_cred_read(rt->live_creds[i], &q);
    return q.limit;
}

void metrics_render(struct evbuffer *out, const struct metrics_view *s)
{
    struct runtime *rt = s->rt;
    time_t now = time(NULL);
    size_t i;
    render_process(out, s);
    render_server(out, s);
    render_requests(out, s);
    render_durations(out, s);
    render_class_histogram(out, s, 0, "apple_auth_proxy_apple_round_trip_seconds",
                           "Apple's answers only: from the request sent upstream to the "
                           "response head, by route and status class.");
    render_class_histogram(out, s, 1, "apple_auth_proxy_time_to_first_byte_seconds",
                           "Apple's answers only: from the client's complete request head to "
                           "the first response byte sent back, by route and status class.");
    render_clients(out, s);
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_requests_in_flight Requests whose head was "
                        "read and whose answer has not ended yet.\n"
                        "# TYPE apple_auth_proxy_requests_in_flight gauge\n"
                        "apple_auth_proxy_requests_in_flight %lld\n",
                        (long long)STAT(s, requests_in_flight));
    render_upstreams(out, s);
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_upstream_reused_total Exchanges served on a "
                        "pooled upstream connection.\n"
                        "# TYPE apple_auth_proxy_upstream_reused_total counter\n"
                        "apple_auth_proxy_upstream_reused_total %llu\n",
                        (unsigned long long)STAT(s, upstream_reused));

    render_protocols(out, s);
    render_http2(out, s);

    evbuffer_add_printf(out, "# HELP apple_auth_proxy_token_mints_total Tokens signed, by "
                             "credential.\n"
                             "# TYPE apple_auth_proxy_token_mints_total counter\n");
    for (i = 0; i < rt->conf->ncredentials; i++) {
        const struct credential *c = &rt->conf->credentials[i];
        evbuffer_add_printf(out, "apple_auth_proxy_token_mints_total{credential=\"");
        label_escaped(out, c->name);
        struct live_quota q;
        live_cred_read(rt->live_creds[i], &q);
        evbuffer_add_printf(out, "\"} %lu\n", q.mints);
    }
    if (s->shared)
        render_shared(out, s->shared, rt);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_token_expiry_seconds Seconds until the "
                             "credential's current token expires (0: none valid).\n"
                             "# TYPE apple_auth_proxy_token_expiry_seconds gauge\n");
    for (i = 0; i < rt->conf->ncredentials; i++) {
        const struct credential *c = &rt->conf->credentials[i];
        time_t exp = token_cache_expiry(rt->tokens, c);
        evbuffer_add_printf(out, "apple_auth_proxy_token_expiry_seconds{credential=\"");
        label_escaped(out, c->name);
        evbuffer_add_printf(out, "\"} %lld\n", (long long)(exp > now ? exp - now : 0));
    }
    render_exchanges(out, rt);
    render_per_credential(out, rt, "apple_auth_proxy_token_mint_failures_total", "counter",
                          "Attempts to sign a token that failed, by credential.", cred_failures);
    render_per_credential(out, rt, "apple_auth_proxy_token_401_remints_total", "counter",
                          "Tokens dropped and signed again because Apple answered 401 to "
                          "them, by credential.", cred_remints);
    render_per_credential(out, rt, "apple_auth_proxy_token_expiry_timestamp_seconds", "gauge",
                          "When the credential's current token expires, since the Unix "
                          "epoch (0: none valid).", cred_expiry);
    render_per_credential(out, rt, "apple_auth_proxy_apple_rate_limit_limit", "gauge",
                          "Apple's hourly request ceiling for the credential's key "
                          "(X-Rate-Limit user-hour-lim), -1 until Apple has said.",
                          cred_quota_limit);
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_apple_rate_limit_remaining Requests left in "
                             "Apple's rolling hour for the credential's key (X-Rate-Limit), -1 "
                             "until Apple has said.\n"
                             "# TYPE apple_auth_proxy_apple_rate_limit_remaining gauge\n");
    for (i = 0; i < rt->conf->ncredentials; i++) {
        struct live_quota q;
        live_cred_read(rt->live_creds[i], &q);
        evbuffer_add_printf(out, "apple_auth_proxy_apple_rate_limit_remaining{credential=\"");
        label_escaped(out, rt->conf->credentials[i].name);
        evbuffer_add_printf(out, "\"} %ld\n", q.remaining);
    }
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_apple_retry_after_seconds Seconds until "
                             "Apple's Retry-After for the credential ends (0: none).\n"
                             "# TYPE apple_auth_proxy_apple_retry_after_seconds gauge\n");
    for (i = 0; i < rt->conf->ncredentials; i++) {
        struct live_quota q;
        double left;
        live_cred_read(rt->live_creds[i], &q);
        left = q.blocked_until - (double)now;
        evbuffer_add_printf(out, "apple_auth_proxy_apple_retry_after_seconds{credential=\"");
        label_escaped(out, rt->conf->credentials[i].name);
        evbuffer_add_printf(out, "\"} %.0f\n", left > 0 ? left : 0);
    }
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_client_connections Open client connections.\n"
                        "# TYPE apple_auth_proxy_client_connections gauge\n"
                        "apple_auth_proxy_client_connections %llu\n",
                        (unsigned long long)STAT(s, connections_open));
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_client_connections_refused_total Connections "
                        "refused at max_client_connections.\n"
                        "# TYPE apple_auth_proxy_client_connections_refused_total counter\n"
                        "apple_auth_proxy_client_connections_refused_total %llu\n",
                        (unsigned long long)STAT(s, connections_refused));
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_accept_pauses_total Times accepting paused "
                        "because the process ran out of descriptors.\n"
                        "# TYPE apple_auth_proxy_accept_pauses_total counter\n"
                        "apple_auth_proxy_accept_pauses_total %llu\n",
                        (unsigned long long)STAT(s, accept_pauses));
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_client_tls_handshake_failures_total TLS "
                        "handshakes with clients that failed (HTTPS listeners).\n"
                        "# TYPE apple_auth_proxy_client_tls_handshake_failures_total counter\n"
                        "apple_auth_proxy_client_tls_handshake_failures_total %llu\n",
                        (unsigned long long)STAT(s, client_tls_failures));
    evbuffer_add_printf(out, "# HELP apple_auth_proxy_errors_total Responses the proxy made "
                             "itself, by error code.\n"
                             "# TYPE apple_auth_proxy_errors_total counter\n");
    for (i = 0; i < NERRORS; i++) {
        uint64_t v = 0;
        for (int w = 0; w < s->nworkers; w++)
            v += load(&s->workers[w].metrics.errors[i]);
        evbuffer_add_printf(out, "apple_auth_proxy_errors_total{code=\"%s\"} %llu\n",
                            error_codes[i], (unsigned long long)v);
    }
}
