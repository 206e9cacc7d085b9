/* metrics: per-worker counters and the Prometheus text exposition that sums them. */
#include "proxy/evbuf.h"
#include "proxy/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/http_error.h"
#include "proxy/server.h"
#include "proxy/shared.h"
#include "proxy/upstream.h"

static const double bucket_bounds[METRICS_NBUCKETS - 1] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                           0.5,   1,    2.5,   5,    10,  30, 60};
static const char *const method_names[M_COUNT] = {"GET",   "HEAD",   "POST",    "PUT",
                                                  "PATCH", "DELETE", "OPTIONS", "other"};

static pthread_mutex_t labels_lock = PTHREAD_MUTEX_INITIALIZER;
static char *labels[METRICS_MAX_LABELS] = {""};
static int nlabels = 1;

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

int metrics_label_id(const char *label)
{
    int i, id = 0;
    pthread_mutex_lock(&labels_lock);
    for (i = 1; i < nlabels; i++)
        if (strcmp(labels[i], label) == 0) {
            id = i;
            goto out;
        }
    if (nlabels < METRICS_MAX_LABELS) {
        labels[nlabels] = strdup(label);
        if (labels[nlabels])
            id = nlabels++;
    }
out:
    pthread_mutex_unlock(&labels_lock);
    return id;
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
    double secs = (double)duration_us / 1e6;
    int b;
    for (b = 0; b < METRICS_NBUCKETS - 1; b++)
        if (secs <= bucket_bounds[b])
            break;
    add(&m->dur_bucket[label][b], 1); /* non-cumulative here; summed when rendered */
    add(&m->dur_count[label], 1);
    add(&m->dur_sum_us[label], duration_us);
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

static uint64_t sum_stat(struct server *s, size_t offset)
{
    uint64_t v = 0;
    for (int i = 0; i < s->nworkers; i++)
        v += load((const uint64_t *)((const char *)&s->workers[i].stats + offset));
    return v;
}

#define STAT(s, field) sum_stat((s), offsetof(struct worker_stats, field))

/* HTTP/2 upstreams (h2up.c) and APNs' token answers. */
static void render_http2(struct evbuffer *out, struct server *s)
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

static void render_requests(struct evbuffer *out, struct server *s)
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

static void render_durations(struct evbuffer *out, struct server *s)
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
        "apple_auth_proxy_shared_rate_decisions_total{where=\"local\"} %llu\n",
        st.up > 0, (unsigned long long)st.fallbacks, (unsigned long long)st.timeouts,
        (unsigned long long)st.remote_decisions, (unsigned long long)st.local_decisions);
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

void metrics_render(struct evbuffer *out, struct server *s)
{
    struct runtime *rt = s->rt;
    time_t now = time(NULL);
    size_t i;
    render_requests(out, s);
    render_durations(out, s);

    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_upstream_connections Upstream TLS connections "
                        "serving an exchange (active) or waiting in a pool (idle).\n"
                        "# TYPE apple_auth_proxy_upstream_connections gauge\n"
                        "apple_auth_proxy_upstream_connections{state=\"active\"} %llu\n"
                        "apple_auth_proxy_upstream_connections{state=\"idle\"} %llu\n",
                        (unsigned long long)STAT(s, upstream_active),
                        (unsigned long long)STAT(s, upstream_idle));
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_upstream_handshakes_total TLS handshakes "
                        "completed with upstreams.\n"
                        "# TYPE apple_auth_proxy_upstream_handshakes_total counter\n"
                        "apple_auth_proxy_upstream_handshakes_total %llu\n",
                        (unsigned long long)STAT(s, upstream_handshakes));
    evbuffer_add_printf(out,
                        "# HELP apple_auth_proxy_upstream_reused_total Exchanges served on a "
                        "pooled upstream connection.\n"
                        "# TYPE apple_auth_proxy_upstream_reused_total counter\n"
                        "apple_auth_proxy_upstream_reused_total %llu\n",
                        (unsigned long long)STAT(s, upstream_reused));

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
                        (unsigned long long)__atomic_load_n(&s->nclients, __ATOMIC_RELAXED));
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
