/* accesslog: one line per request (JSON by default, or text), buffered per worker and written
 * whole; the file is reopened on SIGUSR1 for logrotate. Never a token, secret or key. */
#ifndef AAP_PROXY_ACCESSLOG_H
#define AAP_PROXY_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>

enum accesslog_format { ACCESSLOG_JSON, ACCESSLOG_TEXT };

struct access_entry {
    double time;              /* Unix time the request head completed */
    const char *client;       /* client identity name, or NULL */
    const char *remote;       /* "ip:port" */
    const char *method;
    size_t method_len;
    const char *target;       /* as received; secret-looking query values are masked */
    size_t target_len;
    const char *route;        /* route label, or NULL */
    const char *credential;   /* credential name, or NULL */
    int status;               /* sent to the client; 0: none was sent */
    const char *error;        /* the proxy's error code, or NULL */
    const char *outcome;      /* "ok", "client_abort", "upstream_cut" */
    uint64_t bytes_in, bytes_out;
    double duration;          /* seconds */
    int upstream_reused;      /* -1: no upstream connection was used */
    long quota_remaining;     /* Apple's X-Rate-Limit remaining, -1 unknown */
    const char *apns_id;      /* APNs' apns-id of the answer (a push), or NULL: left out */
};

/* Opens the destination: NULL or "-" is stdout; "off" disables logging. Not thread-safe: call
 * before the workers start. Returns 0 or -1 with err. */
int accesslog_open(const char *path, enum accesslog_format format, char *err, size_t errlen);
/* Reopens the file (SIGUSR1). Thread-safe. */
int accesslog_reopen(char *err, size_t errlen);
int accesslog_enabled(void);
/* Appends one line to a worker's buffer (flushed by accesslog_flush). */
void accesslog_append(struct evbuffer *buf, const struct access_entry *e);
/* Writes the buffer's whole lines out (writev of its chunks, under a lock) and empties it. */
void accesslog_flush(struct evbuffer *buf);
void accesslog_close(void);

/* Copies target into out (size outlen), masking the values of query parameters whose names
 * look secret (token, key, secret, password, signature, auth...). Returns the length. */
size_t accesslog_mask_target(const char *target, size_t len, char *out, size_t outlen);

#endif
