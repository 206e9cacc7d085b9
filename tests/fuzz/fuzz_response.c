/* fuzz_response: libFuzzer target for the upstream response parser: http1_parse_head and
 * http1_parse_body (and http1_parse_eof) on HTTP_RESPONSE messages with the proxy's response
 * limits. The first input byte is control, not data: bit 0 sets request_is_head (the response
 * answers a HEAD request), bits 1-7 choose where the body is split in two reads. abort() when
 * an invariant breaks: spans inside the input, no CR/LF/NUL in values, bodyless responses
 * (HEAD, 1xx, 204, 304) have no body, sinks never exceed Content-Length, a complete chunked
 * body matches its declared sizes, and a complete head is stable when re-parsed in pieces.
 * The head's Retry-After, if any, goes through the parser the proxy uses on a 429
 * (gateway_parse_retry_after): a time, or -1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/gateway.h"
#include "proxy/http1.h"

/* The limits client.c gives upstream responses. */
static const struct http1_limits resp_limits = {
    .max_line = 0, .max_head = 64 * 1024, .max_headers = 256};

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_response: invariant broken: %s: ", #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct sink_state {
    uint64_t data, declared;
    int last_seen;
};

static int s_data(void *arg, const char *at, size_t len)
{
    struct sink_state *s = arg;
    (void)at;
    s->data += len;
    return 0;
}

static int s_chunk(void *arg, uint64_t size)
{
    struct sink_state *s = arg;
    CHECK(!s->last_seen, "a chunk after the last chunk");
    if (size == 0)
        s->last_seen = 1;
    /* Saturating: a chunk may declare up to 2^64 - 1 bytes. */
    if (__builtin_add_overflow(s->declared, size, &s->declared))
        s->declared = UINT64_MAX;
    return 0;
}

static const struct http1_sink sink = {s_data, s_chunk, NULL};

static void init(struct http1_msg *m, int is_head)
{
    memset(m, 0, sizeof(*m));
    m->request_is_head = is_head;
    http1_msg_init(m, HTTP_RESPONSE, &resp_limits);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int is_head = data[0] & 1;
    unsigned split = data[0] >> 1; /* 0..127: where the body is split, in 1/128ths */
    size -= 1;
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data + 1, size);
    struct http1_msg m, p;
    struct sink_state st = {0};
    init(&m, is_head);
    init(&p, is_head);
    /* As in client.c, the sink is in place before the head is parsed: a body byte delivered
     * during head parsing would go to the client raw, ahead of the proxy's own head. */
    m.sink = &sink;
    m.sink_arg = &st;

    int r = http1_parse_head(&m, buf, size);
    CHECK(st.data == 0 && st.declared == 0 && !st.last_seen,
          "body bytes delivered while parsing the head (%llu)", (unsigned long long)st.data);
    if (r < 0)
        CHECK(m.error_status == 502, "response error status %d", m.error_status);
    if (r == 1) {
        size_t hl = m.head_len;
        CHECK(hl > 0 && hl <= size && hl <= resp_limits.max_head, "head_len %zu", hl);
        CHECK(m.status >= 100 && m.status <= 599 && m.status != 101, "status %d", m.status);
        CHECK(m.nheaders <= resp_limits.max_headers, "%zu headers", m.nheaders);
        for (size_t i = 0; i < m.nheaders; i++) {
            const struct http1_header *f = &m.headers[i];
            CHECK(f->name >= buf && f->name + f->name_len <= buf + hl, "name span");
            CHECK(f->value >= buf && f->value + f->value_len <= buf + hl, "value span");
            CHECK(memchr(f->value, '\r', f->value_len) == NULL &&
                      memchr(f->value, '\n', f->value_len) == NULL &&
                      memchr(f->value, '\0', f->value_len) == NULL,
                  "CR, LF or NUL in a parsed value");
        }
        if (m.reason_len)
            CHECK(m.reason >= buf && m.reason + m.reason_len <= buf + hl &&
                      memchr(m.reason, '\r', m.reason_len) == NULL &&
                      memchr(m.reason, '\n', m.reason_len) == NULL,
                  "reason phrase");
        if (is_head || m.status < 200 || m.status == 204 || m.status == 304)
            CHECK(m.body == HTTP1_BODY_NONE, "a body on a bodyless response");
        {
            const struct http1_header *ra = http1_find(&m, "retry-after");
            if (ra != NULL) {
                double until = gateway_parse_retry_after(ra->value, ra->value_len, 1.7e9, NULL);
                CHECK(until == -1 || (isfinite(until) &&
                                      until <= 1.7e9 + GATEWAY_RETRY_AFTER_MAX_SECONDS),
                      "Retry-After read as %g", until);
            }
        }
        CHECK(http1_parse_head(&p, buf, hl) == 1 && p.head_len == hl && p.body == m.body,
              "the head alone parses differently");
        CHECK(http1_parse_head(&p, buf, hl - 1) == 0, "one byte short is not 'need more'");

        if (m.body != HTTP1_BODY_NONE) {
            size_t rest = size - hl, first = (size_t)((rest * split) / 128), used = 0, used2 = 0;
            int br;
            br = http1_parse_body(&m, buf + hl, first, &used);
            CHECK(used <= first, "used");
            if (br == 0) {
                CHECK(used == first, "need more, but %zu of %zu used", used, first);
                br = http1_parse_body(&m, buf + hl + first, rest - first, &used2);
                CHECK(used2 <= rest - first, "used2");
            }
            if (br == 0)
                br = http1_parse_eof(&m);
            if (m.body == HTTP1_BODY_LENGTH) {
                CHECK(st.data <= m.content_length, "%llu bytes for Content-Length %llu",
                      (unsigned long long)st.data, (unsigned long long)m.content_length);
                if (br == 1)
                    CHECK(st.data == m.content_length, "complete with %llu of %llu",
                          (unsigned long long)st.data, (unsigned long long)m.content_length);
            } else if (m.body == HTTP1_BODY_CHUNKED) {
                CHECK(st.data <= st.declared, "chunk data past the declared sizes");
                if (br == 1)
                    CHECK(st.last_seen && st.data == st.declared, "complete chunked body");
            } else {
                CHECK(br == 1 || br == -1, "close-delimited result %d", br);
            }
        }
    }
    http1_msg_deinit(&p);
    http1_msg_deinit(&m);
    free(buf);
    return 0;
}
