/* accesslog: one line per request, buffered per worker and written whole. */
#include "proxy/evbuf.h"
#include "proxy/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static int enabled;
static char *log_path; /* NULL: stdout */
static enum accesslog_format log_format;

int accesslog_open(const char *path, enum accesslog_format format, char *err, size_t errlen)
{
    log_format = format;
    if (path && strcmp(path, "off") == 0) {
        enabled = 0;
        return 0;
    }
    enabled = 1;
    if (path == NULL || strcmp(path, "-") == 0) {
        log_fd = STDOUT_FILENO;
        return 0;
    }
    log_path = strdup(path);
    log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (log_path == NULL || log_fd < 0) {
        snprintf(err, errlen, "access log %s: %s", path, strerror(errno));
        free(log_path);
        log_path = NULL;
        enabled = 0;
        return -1;
    }
    return 0;
}

int accesslog_reopen(char *err, size_t errlen)
{
    int fd, old;
    if (log_path == NULL)
        return 0;
    fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "access log %s: %s", log_path, strerror(errno));
        return -1;
    }
    pthread_mutex_lock(&lock);
    old = log_fd;
    log_fd = fd;
    pthread_mutex_unlock(&lock);
    if (old >= 0 && old != STDOUT_FILENO)
        close(old);
    return 0;
}

int accesslog_enabled(void)
{
    return enabled;
}

void accesslog_close(void)
{
    pthread_mutex_lock(&lock);
    if (log_fd >= 0 && log_fd != STDOUT_FILENO)
        close(log_fd);
    log_fd = -1;
    enabled = 0;
    free(log_path);
    log_path = NULL;
    pthread_mutex_unlock(&lock);
}

static int secret_name(const char *name, size_t n)
{
    static const char *const words[] = {"token", "key", "secret", "password", "passwd",
                                        "signature", "sig", "auth", "credential", "jwt"};
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= n; i++)
            if (strncasecmp(name + i, words[w], wl) == 0)
                return 1;
    }
    return 0;
}

size_t accesslog_mask_target(const char *target, size_t len, char *out, size_t outlen)
{
    size_t o = 0, i = 0;
    const char *q = memchr(target, '?', len);
    size_t upto = q ? (size_t)(q - target) + 1 : len;
    if (outlen == 0)
        return 0;
    for (; i < upto && o + 1 < outlen; i++)
        out[o++] = target[i];
    while (i < len && o + 1 < outlen) {
        size_t start = i, eq = 0;
        while (i < len && target[i] != '&') {
            if (target[i] == '=' && !eq)
                eq = i;
            i++;
        }
        size_t name_end = eq ? eq : i;
        int mask = eq && secret_name(target + start, name_end - start);
        size_t copy_end = mask ? eq + 1 : i;
        for (size_t k = start; k < copy_end && o + 1 < outlen; k++)
            out[o++] = target[k];
        if (mask)
            for (const char *m = "***"; *m && o + 1 < outlen; m++)
                out[o++] = *m;
        if (i < len && o + 1 < outlen)
            out[o++] = target[i++]; /* '&' */
    }
    out[o] = '\0';
    return o;
}

/* The JSON line is written straight into the buffer's free space, reserved once for the
 * longest the line could be: no format string is parsed and no call is made per field. */

/* A string at most this many times longer once escaped ("\u00XX" for one byte). */
#define JSON_GROWTH 6

static size_t json_bound(const char *s, size_t n)
{
    return (s ? n : 4) * JSON_GROWTH + 2;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        *p++ = tmp[--i];
    return p;
}

static char *put_i64(char *p, long long v)
{
    if (v < 0) {
        *p++ = '-';
        return put_u64(p, (uint64_t)(-(v + 1)) + 1);
    }
    return put_u64(p, (uint64_t)v);
}

/* A JSON string: '"' and '\' escaped, control bytes and bytes past ASCII as \u00XX (the line
 * stays ASCII whatever a client sent). */
static char *put_json(char *p, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    *p++ = '"';
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            *p++ = (char)c;
        } else if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else {
            p = PUT_LIT(p, "\\u00");
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        }
    }
    *p++ = '"';
    return p;
}

static char *put_opt(char *p, const char *s)
{
    return s ? put_json(p, s, strlen(s)) : PUT_LIT(p, "null");
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" (24 bytes) for Unix time t. The part to the second is kept per
 * thread: a second's lines share it. */
static char *put_time(char *p, double t)
{
    static __thread time_t cached = (time_t)-1;
    static __thread char text[20];
    time_t secs = (time_t)t;
    int ms = (int)((t - (double)secs) * 1000);
    if (secs != cached) {
        struct tm tm;
        gmtime_r(&secs, &tm);
        if (strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm) != 19)
            memcpy(text, "1970-01-01T00:00:00", 19);
        cached = secs;
    }
    p = put(p, text, 19);
    if (ms < 0)
        ms = 0;
    if (ms > 999)
        ms = 999;
    *p++ = '.';
    *p++ = (char)('0' + ms / 100);
    *p++ = (char)('0' + ms / 10 % 10);
    *p++ = (char)('0' + ms % 10);
    *p++ = 'Z';
    return p;
}

/* Seconds with six decimals, rounded to the microsecond. */
static char *put_seconds(char *p, double d)
{
    uint64_t us = d > 0 ? (uint64_t)(d * 1e6 + 0.5) : 0;
    uint64_t frac = us % 1000000;
    int i;
    p = put_u64(p, us / 1000000);
    *p++ = '.';
    for (i = 5; i >= 0; i--) {
        p[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    return p + 6;
}

static void append_text(struct evbuffer *b, const struct access_entry *e, const char *masked)
{
    char ts[32];
    *put_time(ts, e->time) = '\0';
    evbuffer_add_printf(b, "%s %s %s %.*s %s %d %llu %llu %.3f %s route=%s credential=%s%s%s%s%s\n",
                        ts, e->remote ? e->remote : "-", e->client ? e->client : "-",
                        (int)e->method_len, e->method ? e->method : "-", masked, e->status,
                        (unsigned long long)e->bytes_in, (unsigned long long)e->bytes_out,
                        e->duration, e->outcome, e->route ? e->route : "-",
                        e->credential ? e->credential : "-", e->error ? " error=" : "",
                        e->error ? e->error : "", e->apns_id ? " apns_id=" : "",
                        e->apns_id ? e->apns_id : "");
}

void accesslog_append(struct evbuffer *b, const struct access_entry *e)
{
    char masked[2048];
    size_t mlen = accesslog_mask_target(e->target ? e->target : "", e->target ? e->target_len : 0,
                                        masked, sizeof(masked));
    const char *method = e->method ? e->method : "";
    size_t method_len = e->method ? e->method_len : 0, bound;
    char small[4096], *line, *p;
    if (log_format == ACCESSLOG_TEXT) {
        append_text(b, e, masked);
        return;
    }
#define OPT_LEN(s) ((s) ? strlen(s) : 0)
    /* Every literal and number of the line fits in 512 bytes; each string at its worst. */
    bound = 512 + json_bound(e->client, OPT_LEN(e->client)) +
            json_bound(e->remote, OPT_LEN(e->remote)) + json_bound(method, method_len) +
            json_bound(masked, mlen) + json_bound(e->route, OPT_LEN(e->route)) +
            json_bound(e->credential, OPT_LEN(e->credential)) +
            json_bound(e->error, OPT_LEN(e->error)) + json_bound(e->outcome, OPT_LEN(e->outcome)) +
            json_bound(e->apns_id, OPT_LEN(e->apns_id));
#undef OPT_LEN
    /* A usual line is written on the stack and added in one copy (reserving its worst case
     * in the buffer would start a new chunk every few lines); a huge one gets its own. */
    line = bound <= sizeof(small) ? small : malloc(bound);
    if (line == NULL)
        return; /* out of memory: the line is lost, the request is not */
    p = line;
    p = PUT_LIT(p, "{\"time\":\"");
    p = put_time(p, e->time);
    p = PUT_LIT(p, "\",\"client\":");
    p = put_opt(p, e->client);
    p = PUT_LIT(p, ",\"remote\":");
    p = put_opt(p, e->remote);
    p = PUT_LIT(p, ",\"method\":");
    p = put_json(p, method, method_len);
    p = PUT_LIT(p, ",\"path\":");
    p = put_json(p, masked, mlen);
    p = PUT_LIT(p, ",\"route\":");
    p = put_opt(p, e->route);
    p = PUT_LIT(p, ",\"credential\":");
    p = put_opt(p, e->credential);
    p = PUT_LIT(p, ",\"status\":");
    p = put_i64(p, e->status);
    p = PUT_LIT(p, ",\"error\":");
    p = put_opt(p, e->error);
    p = PUT_LIT(p, ",\"outcome\":");
    p = put_opt(p, e->outcome);
    p = PUT_LIT(p, ",\"bytes_in\":");
    p = put_u64(p, e->bytes_in);
    p = PUT_LIT(p, ",\"bytes_out\":");
    p = put_u64(p, e->bytes_out);
    p = PUT_LIT(p, ",\"duration\":");
    p = put_seconds(p, e->duration);
    if (e->upstream_reused < 0)
        p = PUT_LIT(p, ",\"upstream_reused\":null,");
    else if (e->upstream_reused)
        p = PUT_LIT(p, ",\"upstream_reused\":true,");
    else
        p = PUT_LIT(p, ",\"upstream_reused\":false,");
    if (e->apns_id != NULL) {
        p = PUT_LIT(p, "\"apns_id\":");
        p = put_opt(p, e->apns_id);
        *p++ = ',';
    }
    p = PUT_LIT(p, "\"apple_quota_remaining\":");
    if (e->quota_remaining < 0)
        p = PUT_LIT(p, "null");
    else
        p = put_i64(p, e->quota_remaining);
    p = PUT_LIT(p, "}\n");
    evbuffer_add(b, line, (size_t)(p - line));
    if (line != small)
        free(line);
}

#define FLUSH_IOV 64

void accesslog_flush(struct evbuffer *buf)
{
    size_t n = evbuffer_get_length(buf);
    if (n == 0)
        return;
    if (!enabled) {
        evbuffer_drain(buf, n);
        return;
    }
    /* The buffer's chunks as they are, a writev(2) at a time: no copy into one piece. */
    pthread_mutex_lock(&lock);
    while (evbuffer_get_length(buf) > 0) {
        struct evbuffer_iovec v[FLUSH_IOV];
        struct iovec iov[FLUSH_IOV];
        int nv = evbuffer_peek(buf, -1, NULL, v, FLUSH_IOV), i;
        ssize_t w;
        if (nv > FLUSH_IOV)
            nv = FLUSH_IOV;
        for (i = 0; i < nv; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len;
        }
        w = writev(log_fd, iov, nv);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a full disk must not stop the proxy */
        evbuffer_drain(buf, (size_t)w);
    }
    pthread_mutex_unlock(&lock);
    evbuffer_drain(buf, evbuffer_get_length(buf));
}
