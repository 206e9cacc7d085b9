/* linkrw: streaming rewrite of the upstream's origin in JSON response bodies. */
#include "proxy/linkrw.h"

#include <string.h>
#include <strings.h>

/* "https://h" -> "https:\/\/h": JSON may escape the slashes. */
static size_t escape_slashes(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    for (; *in && o + 2 < outlen; in++) {
        if (*in == '/')
            out[o++] = '\\';
        out[o++] = *in;
    }
    out[o] = '\0';
    return o;
}

int linkrw_init(struct linkrw *rw, const char *from_origin, const char *to_origin)
{
    memset(rw, 0, sizeof(*rw));
    if (strlen(from_origin) > LINKRW_MAX_ORIGIN || strlen(to_origin) > LINKRW_MAX_ORIGIN)
        return -1;
    strcpy(rw->from[0], from_origin);
    rw->from_len[0] = strlen(from_origin);
    strcpy(rw->to[0], to_origin);
    rw->to_len[0] = strlen(to_origin);
    rw->from_len[1] = escape_slashes(from_origin, rw->from[1], sizeof(rw->from[1]));
    rw->to_len[1] = escape_slashes(to_origin, rw->to[1], sizeof(rw->to[1]));
    return 0;
}

/* A byte that would continue a host name (or port): the match is then not the origin. */
static int continues_host(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == ':' || c == '_' || c == '@';
}

/* At p (n bytes left): 1 and *which on a complete match (with the byte after it seen),
 * 0 when there is none, -1 when the bytes so far could still become one. */
static int match_at(const struct linkrw *rw, const char *p, size_t n, int *which, int final)
{
    int maybe = 0;
    for (int k = 0; k < 2; k++) {
        size_t fl = rw->from_len[k];
        if (n >= fl + 1) {
            if (memcmp(p, rw->from[k], fl) == 0 && !continues_host(p[fl])) {
                *which = k;
                return 1;
            }
        } else if (memcmp(p, rw->from[k], n < fl ? n : fl) == 0) {
            if (n == fl && final) {
                *which = k; /* the body ends right after the origin */
                return 1;
            }
            maybe = 1;
        }
    }
    return maybe ? -1 : 0;
}

/* Scans buf; emits what is settled; returns how many bytes at the end must wait. */
static size_t scan(struct linkrw *rw, const char *buf, size_t n, linkrw_emit emit, void *arg,
                   int final)
{
    size_t start = 0, i = 0;
    while (i < n) {
        const char *h = memchr(buf + i, 'h', n - i);
        if (h == NULL)
            break;
        i = (size_t)(h - buf);
        int which;
        int m = match_at(rw, buf + i, n - i, &which, final);
        if (m == 1) {
            if (i > start)
                emit(arg, buf + start, i - start);
            emit(arg, rw->to[which], rw->to_len[which]);
            rw->replaced++;
            i += rw->from_len[which];
            start = i;
        } else if (m == -1 && !final) {
            if (i > start)
                emit(arg, buf + start, i - start);
            return n - i;
        } else {
            i++;
        }
    }
    if (n > start)
        emit(arg, buf + start, n - start);
    return 0;
}

void linkrw_feed(struct linkrw *rw, const char *data, size_t len, linkrw_emit emit, void *arg)
{
    if (len == 0)
        return;
    if (rw->npending == 0) {
        size_t keep = scan(rw, data, len, emit, arg, 0);
        memcpy(rw->pending, data + len - keep, keep);
        rw->npending = keep;
        return;
    }
    /* A match may straddle the boundary: settle the held-back bytes together with the start
     * of the new data (a match is shorter than the pending buffer), then the rest directly. */
    size_t take = sizeof(rw->pending) - rw->npending;
    char buf[sizeof(rw->pending)];
    if (take > len)
        take = len;
    memcpy(buf, rw->pending, rw->npending);
    memcpy(buf + rw->npending, data, take);
    size_t total = rw->npending + take;
    rw->npending = 0;
    if (take == len) {
        size_t keep = scan(rw, buf, total, emit, arg, 0);
        memcpy(rw->pending, buf + total - keep, keep);
        rw->npending = keep;
        return;
    }
    /* More data follows: decide everything in buf that starts before its last byte. */
    size_t keep = scan(rw, buf, total, emit, arg, 0);
    /* keep bytes at the end of buf are undecided; they are the last `keep` bytes of
     * data[0..take), so rescan from there within data itself. */
    size_t from = take - keep;
    linkrw_feed(rw, data + from, len - from, emit, arg);
}

void linkrw_finish(struct linkrw *rw, linkrw_emit emit, void *arg)
{
    if (rw->npending)
        scan(rw, rw->pending, rw->npending, emit, arg, 1);
    rw->npending = 0;
}

int linkrw_applies(const char *ctype, size_t ctype_len, const char *cenc, size_t cenc_len)
{
    size_t i, n = 0;
    if (cenc) {
        while (cenc_len && (*cenc == ' ' || *cenc == '\t')) {
            cenc++;
            cenc_len--;
        }
        while (cenc_len && (cenc[cenc_len - 1] == ' ' || cenc[cenc_len - 1] == '\t'))
            cenc_len--;
        if (cenc_len && !(cenc_len == 8 && strncasecmp(cenc, "identity", 8) == 0))
            return 0;
    }
    if (ctype == NULL)
        return 0;
    /* the media type, before any parameter */
    while (n < ctype_len && ctype[n] != ';')
        n++;
    while (n && (ctype[n - 1] == ' ' || ctype[n - 1] == '\t'))
        n--;
    i = 0;
    while (i < n && (ctype[i] == ' ' || ctype[i] == '\t'))
        i++;
    const char *t = ctype + i;
    size_t tl = n - i;
    if (tl == 16 && strncasecmp(t, "application/json", 16) == 0)
        return 1;
    if (tl > 17 && strncasecmp(t, "application/", 12) == 0 &&
        strncasecmp(t + tl - 5, "+json", 5) == 0)
        return 1;
    return 0;
}
