/* accesslog: one line per request, buffered per worker and written whole. */
#include "proxy/evbuf.h"
#include "proxy/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* Runs of bytes that need no escape go into the buffer in one call: a line holds a dozen
 * strings, and a call per byte was most of the cost of writing it. */
static void json_str(struct evbuffer *b, const char *s, size_t n)
{
    size_t i, run = 0;
    ADD_LITERAL(b, "\"");
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            continue;
        evbuffer_add(b, s + run, i - run);
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            evbuffer_add(b, esc, sizeof(esc));
        } else {
            evbuffer_add_printf(b, "\\u%04x", c);
        }
        run = i + 1;
    }
    evbuffer_add(b, s + run, n - run);
    ADD_LITERAL(b, "\"");
}

static void json_opt(struct evbuffer *b, const char *s)
{
    if (s)
        json_str(b, s, strlen(s));
    else
        ADD_LITERAL(b, "null");
}

void accesslog_append(struct evbuffer *b, const struct access_entry *e)
{
    char masked[2048], ts[64];
    size_t mlen = accesslog_mask_target(e->target ? e->target : "", e->target ? e->target_len : 0,
                                        masked, sizeof(masked));
    time_t secs = (time_t)e->time;
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t tl = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof(ts) - tl, ".%03dZ", (int)((e->time - (double)secs) * 1000));
    if (log_format == ACCESSLOG_TEXT) {
        evbuffer_add_printf(b, "%s %s %s %.*s %s %d %llu %llu %.3f %s route=%s credential=%s%s%s%s%s\n",
                            ts, e->remote ? e->remote : "-", e->client ? e->client : "-",
                            (int)e->method_len, e->method ? e->method : "-", masked, e->status,
                            (unsigned long long)e->bytes_in, (unsigned long long)e->bytes_out,
                            e->duration, e->outcome, e->route ? e->route : "-",
                            e->credential ? e->credential : "-", e->error ? " error=" : "",
                            e->error ? e->error : "", e->apns_id ? " apns_id=" : "",
                            e->apns_id ? e->apns_id : "");
        return;
    }
    evbuffer_add_printf(b, "{\"time\":\"%s\",\"client\":", ts);
    json_opt(b, e->client);
    ADD_LITERAL(b, ",\"remote\":");
    json_opt(b, e->remote);
    ADD_LITERAL(b, ",\"method\":");
    json_str(b, e->method ? e->method : "", e->method ? e->method_len : 0);
    ADD_LITERAL(b, ",\"path\":");
    json_str(b, masked, mlen);
    ADD_LITERAL(b, ",\"route\":");
    json_opt(b, e->route);
    ADD_LITERAL(b, ",\"credential\":");
    json_opt(b, e->credential);
    evbuffer_add_printf(b, ",\"status\":%d,\"error\":", e->status);
    json_opt(b, e->error);
    ADD_LITERAL(b, ",\"outcome\":");
    json_opt(b, e->outcome);
    evbuffer_add_printf(b, ",\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration\":%.6f,",
                        (unsigned long long)e->bytes_in, (unsigned long long)e->bytes_out,
                        e->duration);
    if (e->upstream_reused < 0)
        ADD_LITERAL(b, "\"upstream_reused\":null,");
    else
        evbuffer_add_printf(b, "\"upstream_reused\":%s,", e->upstream_reused ? "true" : "false");
    if (e->apns_id != NULL) {
        ADD_LITERAL(b, "\"apns_id\":");
        json_opt(b, e->apns_id);
        ADD_LITERAL(b, ",");
    }
    if (e->quota_remaining < 0)
        ADD_LITERAL(b, "\"apple_quota_remaining\":null}\n");
    else
        evbuffer_add_printf(b, "\"apple_quota_remaining\":%ld}\n", e->quota_remaining);
}

void accesslog_flush(struct evbuffer *buf)
{
    size_t n = evbuffer_get_length(buf);
    if (n == 0)
        return;
    if (!enabled) {
        evbuffer_drain(buf, n);
        return;
    }
    const char *p = (const char *)evbuffer_pullup(buf, (ev_ssize_t)n);
    pthread_mutex_lock(&lock);
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(log_fd, p + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break; /* a full disk must not stop the proxy */
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&lock);
    evbuffer_drain(buf, n);
}
