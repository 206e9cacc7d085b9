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
};

/* Interns a route label ("host/prefix"); returns its id (0 is "none": no route). Called when a
 * configuration is loaded, never on the request path. Thread-safe. */
int metrics_label_id(const char *label);

/* The label's text (stable for the process's life); "" for 0 or an unknown id. */
const char *metrics_label_name(int id);

/* The request path: one finished request. label 0: no route. */
void metrics_count_request(struct metrics_shard *m, int label, const char *method,
                           size_t method_len, int status, uint64_t duration_us);
/* A response the proxy made itself, by its error code constant (http_error.h). */
void metrics_count_error(struct metrics_shard *m, const char *code);

struct worker;
struct server;
/* Appends the whole exposition (text format 0.0.4) for the server's workers and runtime. */
void metrics_render(struct evbuffer *out, struct server *s);

#endif
