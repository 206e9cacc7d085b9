/* fuzz_linkrw: libFuzzer target for the streaming link rewriter (proxy/linkrw.c) that turns
 * the upstream's origin in JSON bodies into the origin the client addressed, and for
 * linkrw_applies. The first two input bytes are control, not data:
 *   byte 0: bits 0-5 the length of the client's authority taken from the input (the origin
 *           is "http://" and those bytes, as note_origin builds it), bit 6 an upstream with a
 *           port, bit 7 an upstream origin of the longest length allowed;
 *   byte 1: the body's piece sizes (the upstream's reads): piece k (from 1) is
 *           1 + (byte1 * k) % 97 bytes;
 * the rest is the body. abort() when an invariant breaks: however the body arrives in pieces,
 * the output is the one of a plain whole-body rewrite (every occurrence of the origin, bare or
 * with JSON-escaped slashes, not followed by a byte that continues a host, replaced; nothing
 * else changed), with the same count of replacements, and what is emitted before the end is
 * always a prefix of it (nothing sent is taken back). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/linkrw.h"

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_linkrw: invariant broken: %s: ", #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct out {
    char *buf; /* owned */
    size_t len, cap;
};

static void out_add(struct out *o, const char *data, size_t len)
{
    if (o->len + len > o->cap) {
        size_t cap = (o->len + len) * 2 + 64;
        char *b = realloc(o->buf, cap);
        CHECK(b != NULL, "out of memory");
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
}

static void emit(void *arg, const char *data, size_t len)
{
    CHECK(data != NULL || len == 0, "a NULL emit");
    out_add(arg, data, len);
}

/* The rewriter's rule, written plainly over the whole body. */
static int continues_host(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == ':' || c == '_' || c == '@';
}

static void escaped(const char *in, char *out)
{
    for (; *in; in++) {
        if (*in == '/')
            *out++ = '\\';
        *out++ = *in;
    }
    *out = '\0';
}

static unsigned long reference(const char *from, const char *to, const char *body, size_t n,
                               struct out *o)
{
    char from_esc[2 * LINKRW_MAX_ORIGIN + 2], to_esc[2 * LINKRW_MAX_ORIGIN + 2];
    const char *f[2] = {from, from_esc}, *t[2] = {to, to_esc};
    unsigned long count = 0;
    size_t i = 0;
    escaped(from, from_esc);
    escaped(to, to_esc);
    while (i < n) {
        int k, hit = 0;
        for (k = 0; k < 2 && !hit; k++) {
            size_t fl = strlen(f[k]);
            if (n - i >= fl && memcmp(body + i, f[k], fl) == 0 &&
                (i + fl == n || !continues_host(body[i + fl]))) {
                out_add(o, t[k], strlen(t[k]));
                i += fl;
                count++;
                hit = 1;
            }
        }
        if (!hit)
            out_add(o, body + i++, 1);
    }
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char from[LINKRW_MAX_ORIGIN + 1], to[LINKRW_MAX_ORIGIN + 1];
    struct out got = {0}, want = {0};
    struct linkrw *rw;
    size_t alen, off, k;
    unsigned long count;
    unsigned ctl;
    char *body;
    if (size < 2)
        return 0;
    ctl = data[1];
    alen = data[0] & 0x3f;
    if (data[0] & 0x80) {
        /* An upstream host as long as the limit allows, ending in the usual name. */
        static const char tail[] = ".api.appstoreconnect.apple.com";
        size_t pad = LINKRW_MAX_ORIGIN - 8 - (sizeof(tail) - 1) - ((data[0] & 0x40) ? 5 : 0);
        memcpy(from, "https://", 8);
        memset(from + 8, 'a', pad);
        snprintf(from + 8 + pad, sizeof(from) - 8 - pad, "%s%s", tail,
                 (data[0] & 0x40) ? ":8443" : "");
    } else {
        snprintf(from, sizeof(from), "https://api.appstoreconnect.apple.com%s",
                 (data[0] & 0x40) ? ":8443" : "");
    }
    CHECK(strlen(from) <= LINKRW_MAX_ORIGIN, "the harness's origin is too long");
    data += 2;
    size -= 2;
    if (alen > size)
        alen = size;
    memcpy(to, "http://", 7);
    for (k = 0; k < alen; k++)
        to[7 + k] = data[k] ? (char)data[k] : 'x'; /* a C string: no NUL inside */
    to[7 + alen] = '\0';
    body = malloc(size - alen ? size - alen : 1); /* exact size: reads past it are caught */
    memcpy(body, data + alen, size - alen);
    size -= alen;

    count = reference(from, to, body, size, &want);
    rw = malloc(sizeof(*rw));
    CHECK(rw != NULL && linkrw_init(rw, from, to) == 0, "linkrw_init refused its origins");
    for (off = 0, k = 1; off < size; k++) {
        size_t piece = 1 + (size_t)((ctl * k) % 97);
        if (piece > size - off)
            piece = size - off;
        linkrw_feed(rw, body + off, piece, emit, &got);
        off += piece;
        /* What went out is settled: a prefix of the whole-body result. */
        CHECK(got.len <= want.len && (got.len == 0 || memcmp(got.buf, want.buf, got.len) == 0),
              "after %zu of %zu bytes, the output is not a prefix of the whole-body rewrite",
              off, size);
    }
    linkrw_finish(rw, emit, &got);
    CHECK(got.len == want.len && (got.len == 0 || memcmp(got.buf, want.buf, got.len) == 0),
          "the streamed rewrite differs from the whole-body one (%zu vs %zu bytes)", got.len,
          want.len);
    CHECK(rw->replaced == count, "%lu replacements counted, %lu made", rw->replaced, count);

    /* The same body as a Content-Type and a Content-Encoding: a verdict, nothing more. */
    {
        size_t half = size / 2;
        int a = linkrw_applies(body, half, body + half, size - half);
        CHECK(a == 0 || a == 1, "linkrw_applies said %d", a);
        a = linkrw_applies(body, size, NULL, 0);
        CHECK(a == 0 || a == 1, "linkrw_applies said %d", a);
    }
    free(rw);
    free(body);
    free(got.buf);
    free(want.buf);
    return 0;
}
