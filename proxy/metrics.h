/* metrics: per-worker counters (written lock-free by their own thread) and the Prometheus
 * text exposition that sums them when scraped. */
#ifndef AAP_PROXY_METRICS_H
#define AAP_PROXY_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>

#define METRICS_MAX_LABELS 128  /* distinct route labels over the process's life */
#define METRICS_REQ_SLOTS 1024  /* distinct (route, method, status) series per worker */
#define METRICS_NBUCKETS 14
#define METRICS_MAX_UPSTREAMS 64 /* distinct upstream labels ("host:port") over the process's life */
#define METRICS_MAX_CLIENTS 1025 /* distinct gateway client names (1024 configurable) + "none" */
#define METRICS_NCLASSES 4       /* status classes of Apple's final answers: 2xx to 5xx */

/* States of an upstream connection (apple_auth_proxy_upstream_connections): connecting counts
 * from the first step (resolving) to the end of the TLS handshake; active counts connecting
 * ones too, so busy is active - connecting. */
enum metrics_up_gauge { METRICS_UP_IDLE, METRICS_UP_ACTIVE, METRICS_UP_CONNECTING, METRICS_UP_NGAUGES };
/* Why opening an upstream connection failed (upstream_connect_failures_total{reason}). */
enum metrics_up_failure {
    METRICS_UPF_RESOLVE, METRICS_UPF_CONNECT, METRICS_UPF_TLS, METRICS_UPF_TIMEOUT,
    METRICS_UPF_COUNT
};

enum metrics_method { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH, M_DELETE, M_OPTIONS, M_OTHER, M_COUNT };

struct metrics_req_slot {
    uint32_t key; /* 0: empty; else 1 + (label << 14 | method << 10 | status) */
    uint64_t count;
};

/* One worker's counters. Only the owning thread writes (relaxed atomic stores); a scrape reads
 * with relaxed atomic loads, so the request path takes no lock. */
struct metrics_shard {
    struct metrics_req_slot req[METRICS_REQ_SLOTS];
    uint64_t req_overflow;
    uint64_t dur_bucket[METRICS_MAX_LABELS][METRICS_NBUCKETS];
    uint64_t dur_count[METRICS_MAX_LABELS];
    uint64_t dur_sum_us[METRICS_MAX_LABELS];
    uint64_t errors[32]; /* by proxy error code index (metrics_error_index) */
    /* Apple's answers only (never the proxy's own refusals), by route label and status class:
     * request sent -> response head (apple), request head in -> response head out (ttfb). */
    uint64_t apple_bucket[METRICS_MAX_LABELS][METRICS_NCLASSES][METRICS_NBUCKETS];
    uint64_t apple_count[METRICS_MAX_LABELS][METRICS_NCLASSES];
    uint64_t apple_sum_us[METRICS_MAX_LABELS][METRICS_NCLASSES];
    uint64_t ttfb_bucket[METRICS_MAX_LABELS][METRICS_NCLASSES][METRICS_NBUCKETS];
    uint64_t ttfb_count[METRICS_MAX_LABELS][METRICS_NCLASSES];
    uint64_t ttfb_sum_us[METRICS_MAX_LABELS][METRICS_NCLASSES];
    /* Per upstream label. Gauges are kept as counters of +1/-1 (two's complement): only the
     * sum over workers is meaningful. Times are CLOCK_REALTIME milliseconds. */
    uint64_t up_gauge[METRICS_MAX_UPSTREAMS][METRICS_UP_NGAUGES];
    uint64_t up_handshakes[METRICS_MAX_UPSTREAMS];
    uint64_t up_failures[METRICS_MAX_UPSTREAMS][METRICS_UPF_COUNT];
    uint64_t up_last_ok_ms[METRICS_MAX_UPSTREAMS];
    uint64_t up_last_fail_ms[METRICS_MAX_UPSTREAMS];
    /* Requests by gateway client label (0: no client identified) and status class index
     * (0: none sent, 1..5: 1xx..5xx). */
    uint64_t client_req[METRICS_MAX_CLIENTS][6];
};

/* Interns a route label ("host/prefix"); returns its id (0 is "none": no route). Called when a
 * configuration is loaded, never on the request path. Thread-safe. */
int metrics_label_id(const char *label);

/* The label's text (stable for the process's life); "" for 0 or an unknown id. */
const char *metrics_label_name(int id);

/* Interns an upstream label ("host" or "host:port") / a gateway client name; like
 * metrics_label_id, called when a configuration is loaded. 0 when the table is full. */
int metrics_upstream_id(const char *label);
int metrics_client_id(const char *name);

/* The request path: one finished request. label 0: no route. */
void metrics_count_request(struct metrics_shard *m, int label, const char *method,
                           size_t method_len, int status, uint64_t duration_us);
/* One answer of Apple's relayed to the client: the round trip (request sent to response head)
 * and the time to the first response byte for the client (from the request head). */
void metrics_count_apple(struct metrics_shard *m, int label, int status, uint64_t apple_us,
                         uint64_t ttfb_us);
/* One finished request of a gateway client (client label 0: none identified). */
void metrics_count_client(struct metrics_shard *m, int client, int status);
/* Upstream connection events of an upstream label. */
void metrics_upstream_gauge(struct metrics_shard *m, int up, enum metrics_up_gauge g, int delta);
void metrics_upstream_opened(struct metrics_shard *m, int up);
void metrics_upstream_failed(struct metrics_shard *m, int up, enum metrics_up_failure why);
struct worker;
struct runtime;
struct shared;

/* What a scrape reads, borrowed for the call: the workers, whose shards and counters hold every
 * count; the current runtime; and what only the process knows (start, reloads, listeners). */
struct metrics_view {
    const struct worker *workers;
    int nworkers;
    struct runtime *rt;
    struct shared *shared; /* Redis for shared state, or NULL */
    double started;        /* process start (Unix time) */
    unsigned long reloads, reload_failures;
    double last_reload_ok;            /* when the running configuration was loaded */
    size_t nlisten;                   /* listen addresses in use */
    const time_t *listen_cert_expiry; /* per listen address: certificate notAfter (0: none) */
    const time_t *listen_ca_expiry;   /* per listen address: client CAs' first notAfter */
};

/* Whether the latest attempt to open a connection to upstream label up succeeded: 1 yes,
 * 0 no, -1 none was made yet. Sums the nworkers workers' shards. */
int metrics_upstream_reachable(const struct worker *workers, int nworkers, int up);
const char *metrics_upstream_name(int id);

/* A response the proxy made itself, by its error code constant (http_error.h). */
void metrics_count_error(struct metrics_shard *m, const char *code);

/* Appends the whole exposition (text format 0.0.4) for the view's workers and runtime. */
void metrics_render(struct evbuffer *out, const struct metrics_view *s);

#endif
