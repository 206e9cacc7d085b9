/* fuzz_request: libFuzzer target for the request path in memory: http1_parse_head, then
 * http1_parse_body with a sink, then request_plan against a runtime built once from a fixed
 * configuration (a P-256 key generated at start-up; no sockets). abort() on any broken
 * invariant of what the proxy would send upstream:
 *   - the re-serialised head has CRLF line ends only, no bare CR or LF, no NUL;
 *   - an origin-form request line "METHOD /target HTTP/1.1" without spaces or controls in
 *     the target;
 *   - exactly one Host, equal to the route's upstream; no Authorization (the token line is
 *     the proxy's, added at send time); no hop-by-hop field, no Expect;
 *   - at most one framing field, matching the parsed body;
 *   - the head plus the token line re-parses with the proxy's own strict parser, completely;
 *   - parsing is consistent when bytes arrive in pieces (the proxy re-parses from the start);
 *   - body sinks never see more than Content-Length, and chunk sizes add up;
 *   - request_plan_tunnel (a request inside an intercepted CONNECT) forwards only to the
 *     CONNECT's host, and only when Host names it, with the same head invariants. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "conf/conf.h"
#include "proxy/browser.h"
#include "proxy/http1.h"
#include "proxy/request.h"
#include "proxy/runtime.h"

static struct runtime *rt;
static const struct http1_limits req_limits = {
    .max_line = 1024, .max_head = 4096, .max_headers = 32};

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_request: invariant broken: %s: ", #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A PKCS#8 PEM P-256 key made for this run only (nothing secret is committed). */
static char *new_key_pem(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *out;
    long n;
    if (k == NULL || b == NULL || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL))
        abort();
    n = BIO_get_mem_data(b, &data);
    out = malloc((size_t)n + 1);
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    BIO_free(b);
    EVP_PKEY_free(k);
    return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char tmpl[] =
        "{\"listen\": [{\"address\": \"127.0.0.1:0\", \"server_names\": [\"gw.example\"]}],"
        " \"admin_listen\": null, \"workers\": 1, \"server_names\": [\"proxy.example\"],"
        " \"allowed_origins\": [\"https://dash.example\"],"
        " \"access_log\": {\"path\": \"off\"},"
        " \"credentials\": {"
        "  \"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"ABCDEFGHIJ\","
        "   \"issuer_id\": \"69a6de95-023f-47e3-e053-5b8c7c11a4d1\","
        "   \"private_key_env\": \"AAP_FUZZ_KEY\"},"
        "  \"wk\": {\"profile\": \"weatherkit\", \"key_id\": \"KLMNOPQRST\","
        "   \"team_id\": \"TEAM123456\", \"service_id\": \"com.example.wk\","
        "   \"private_key_env\": \"AAP_FUZZ_KEY\"}},"
        " \"routes\": ["
        "  {\"path_prefix\": \"/api/v1/\", \"upstream\": \"https://weatherkit.apple.com\","
        "   \"credential\": \"wk\"},"
        "  {\"path_prefix\": \"/strip/\", \"strip_prefix\": \"/strip\","
        "   \"upstream\": \"https://api.appstoreconnect.apple.com:8443\", \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/\", \"host\": \"internal.example\","
        "   \"upstream\": \"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\"},"
        "  {\"path_prefix\": \"/v1/\", \"upstream\": \"https://api.appstoreconnect.apple.com\","
        "   \"credential\": \"asc\"}],"
        " \"limits\": {\"max_body_bytes\": 1048576}}";
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    char err[512];
    char *pem = new_key_pem();
    (void)argc;
    (void)argv;
    setenv("AAP_FUZZ_KEY", pem, 1);
    free(pem);
    if (conf_load_string(tmpl, strlen(tmpl), "fuzz_request", &conf, &errors, &warnings) < 0) {
        fprintf(stderr, "fuzz_request: configuration refused:\n%s\n", errors ? errors : "");
        abort();
    }
    free(errors);
    free(warnings);
    rt = runtime_new(conf, live_new(), err, sizeof(err));
    if (rt == NULL) {
        fprintf(stderr, "fuzz_request: runtime_new: %s\n", err);
        abort();
    }
    return 0;
}

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int name_is(const char *s, size_t n, const char *lower)
{
    return strlen(lower) == n && strncasecmp(s, lower, n) == 0;
}

/* The forwarded path (before any query) names the resource it was routed by on every server:
 * no "." or ".." segment once "%2e" is decoded, no fragment, and no byte some servers read as
 * a separator or a segment's end ('\\', ';', and those or '/' percent-encoded). */
static void check_path(const char *t, size_t n)
{
    const char *q = memchr(t, '?', n);
    size_t bare = q ? (size_t)(q - t) : n, i = 0;
    CHECK(memchr(t, '#', n) == NULL, "a fragment in the forwarded target");
    for (size_t k = 0; k < bare; k++) {
        CHECK(t[k] != '\\' && t[k] != ';', "'%c' in the forwarded path", t[k]);
        if (t[k] == '%' && k + 3 <= bare)
            CHECK(strncasecmp(t + k, "%2f", 3) != 0 && strncasecmp(t + k, "%5c", 3) != 0 &&
                      strncasecmp(t + k, "%3b", 3) != 0,
                  "an encoded separator in the forwarded path %.*s", (int)bare, t);
    }
    while (i < bare) {
        size_t start = ++i, dots = 0, other = 0; /* i was at a '/' */
        while (i < bare && t[i] != '/') {
            if (t[i] == '.') {
                dots++;
                i++;
            } else if (t[i] == '%' && i + 3 <= bare && strncasecmp(t + i, "%2e", 3) == 0) {
                dots++;
                i += 3;
            } else {
                other++;
                i++;
            }
        }
        CHECK(i == start || other > 0 || dots > 2, "a dot-segment in the forwarded path %.*s",
              (int)bare, t);
    }
}

/* Checks the head request_plan built (plus the token line the proxy appends when sending). */
static void check_head(const struct request_plan *p, const struct http1_msg *m)
{
    static const char *const forbidden[] = {"authorization",
                                            "connection",
                                            "keep-alive",
                                            "proxy-connection",
                                            "te",
                                            "trailer",
                                            "upgrade",
                                            "http2-settings",
                                            "proxy-authorization",
                                            "proxy-authenticate",
                                            "expect"};
    const char *h = p->head;
    size_t n = p->head_len, i, nhost = 0, ncl = 0, nte = 0;
    const struct target *t = &rt->targets[rt->route_target[p->route]];
    CHECK(h != NULL && n >= 2, "no head");
    CHECK(memchr(h, '\0', n) == NULL, "NUL in the head");
    for (i = 0; i < n; i++) {
        if (h[i] == '\r')
            CHECK(i + 1 < n && h[i + 1] == '\n', "bare CR at %zu", i);
        if (h[i] == '\n')
            CHECK(i > 0 && h[i - 1] == '\r', "bare LF at %zu", i);
    }
    CHECK(h[n - 2] == '\r' && h[n - 1] == '\n', "the head does not end a line");
    /* The request line. */
    const char *eol = memmem(h, n, "\r\n", 2);
    size_t ll = (size_t)(eol - h);
    const char *sp1 = memchr(h, ' ', ll);
    CHECK(sp1 != NULL, "no space in the request line");
    CHECK((size_t)(sp1 - h) == m->method_len && memcmp(h, m->method, m->method_len) == 0,
          "method changed");
    const char *tgt = sp1 + 1;
    const char *sp2 = memchr(tgt, ' ', ll - (size_t)(tgt - h));
    CHECK(sp2 != NULL, "one space only in the request line");
    CHECK(tgt < sp2 && tgt[0] == '/', "the target is not origin-form: %.*s", (int)(sp2 - tgt), tgt);
    for (const char *q = tgt; q < sp2; q++)
        CHECK((unsigned char)*q > 0x20 && *q != 0x7f, "control or space in the target");
    check_path(tgt, (size_t)(sp2 - tgt));
    CHECK((size_t)(eol - sp2) == 9 && memcmp(sp2, " HTTP/1.1", 9) == 0, "version");
    /* The fields. */
    const char *line = eol + 2;
    while (line < h + n) {
        const char *le = memmem(line, (size_t)(h + n - line), "\r\n", 2);
        CHECK(le != NULL, "unterminated field line");
        const char *colon = memchr(line, ':', (size_t)(le - line));
        CHECK(colon != NULL && colon > line, "field line without a name and colon");
        size_t nl = (size_t)(colon - line);
        for (i = 0; i < nl; i++)
            CHECK(is_tchar((unsigned char)line[i]), "bad byte in a field name");
        CHECK(colon + 1 < le ? colon[1] == ' ' : 1, "no space after the colon");
        for (const char *v = colon + 1; v < le; v++)
            CHECK(((unsigned char)*v >= 0x20 || *v == '\t') && *v != 0x7f,
                  "control character in a field value");
        for (i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
            CHECK(!name_is(line, nl, forbidden[i]), "forwarded %s", forbidden[i]);
        if (name_is(line, nl, "host")) {
            nhost++;
            const char *v = colon + 2;
            CHECK((size_t)(le - v) == t->host_header_len &&
                      memcmp(v, t->host_header, t->host_header_len) == 0,
                  "Host is %.*s, want %s", (int)(le - v), v, t->host_header);
        } else if (name_is(line, nl, "content-length")) {
            char want[32];
            ncl++;
            snprintf(want, sizeof(want), "%llu", (unsigned long long)m->content_length);
            CHECK((size_t)(le - colon - 2) == strlen(want) &&
                      !memcmp(colon + 2, want, strlen(want)),
                  "Content-Length %.*s, parsed %s", (int)(le - colon - 2), colon + 2, want);
            CHECK(m->body != HTTP1_BODY_CHUNKED, "Content-Length on a chunked body");
        } else if (name_is(line, nl, "transfer-encoding")) {
            nte++;
            CHECK((size_t)(le - colon) == 9 && !memcmp(colon, ": chunked", 9), "TE value");
            CHECK(m->body == HTTP1_BODY_CHUNKED, "Transfer-Encoding without a chunked body");
        }
        line = le + 2;
    }
    CHECK(nhost == 1, "%zu Host fields", nhost);
    CHECK(ncl + nte <= 1, "%zu Content-Length and %zu Transfer-Encoding", ncl, nte);
    if (m->body == HTTP1_BODY_CHUNKED)
        CHECK(nte == 1, "a chunked body without Transfer-Encoding");
    if (m->body == HTTP1_BODY_LENGTH)
        CHECK(ncl == 1, "a body without Content-Length");

    /* What goes on the wire re-parses with the proxy's own parser as exactly this head. */
    {
        static const char tok[] = "Authorization: Bearer aaaa.bbbb.cccc\r\n\r\n";
        size_t wl = n + sizeof(tok) - 1;
        char *wire = malloc(wl);
        struct http1_msg w;
        struct http1_limits big = {0, 1 << 24, 1 << 16};
        memcpy(wire, h, n);
        memcpy(wire + n, tok, sizeof(tok) - 1);
        memset(&w, 0, sizeof(w));
        http1_msg_init(&w, HTTP_REQUEST, &big);
        int r = http1_parse_head(&w, wire, wl);
        CHECK(r == 1, "the forwarded head does not re-parse (%d: %s)", w.error_status,
              w.error_detail ? w.error_detail : "");
        CHECK(w.head_len == wl, "the forwarded head re-parses shorter");
        CHECK(w.body == m->body || (m->body == HTTP1_BODY_NONE && w.body == HTTP1_BODY_NONE),
              "framing changed");
        CHECK(w.content_length == (m->body == HTTP1_BODY_LENGTH ? m->content_length : 0) ||
                  m->body != HTTP1_BODY_LENGTH,
              "length changed");
        http1_msg_deinit(&w);
        free(wire);
    }
}

struct sink_state {
    uint64_t data, declared;
    int chunks_open;
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
    s->chunks_open++;
    return 0;
}

static int s_chunk_end(void *arg)
{
    struct sink_state *s = arg;
    s->chunks_open--;
    return 0;
}

static const struct http1_sink sink = {s_data, s_chunk, s_chunk_end};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so that any read past the end is caught. */
    char *buf = malloc(size ? size : 1);
    struct http1_msg m, p;
    memcpy(buf, data, size);
    memset(&m, 0, sizeof(m));
    memset(&p, 0, sizeof(p));
    http1_msg_init(&m, HTTP_REQUEST, &req_limits);
    http1_msg_init(&p, HTTP_REQUEST, &req_limits);
    /* client.c keeps the sink from the previous request while it parses the next pipelined
     * head: a body byte delivered during head parsing would go upstream unframed. */
    struct sink_state st = {0};
    m.sink = &sink;
    m.sink_arg = &st;

    int r = http1_parse_head(&m, buf, size);
    CHECK(st.data == 0 && st.declared == 0, "body bytes delivered while parsing the head");
    if (r < 0)
        CHECK(m.error_status >= 400 && m.error_status <= 599, "error status %d", m.error_status);
    if (r == 1) {
        size_t hl = m.head_len;
        CHECK(hl > 0 && hl <= size && hl <= req_limits.max_head, "head_len %zu of %zu", hl, size);
        CHECK(m.method && m.method >= buf && m.method + m.method_len <= buf + hl, "method span");
        CHECK(m.target && m.target >= buf && m.target + m.target_len <= buf + hl, "target span");
        for (size_t i = 0; i < m.nheaders; i++) {
            const struct http1_header *f = &m.headers[i];
            CHECK(f->name >= buf && f->name + f->name_len <= buf + hl, "name span");
            CHECK(f->value >= buf && f->value + f->value_len <= buf + hl, "value span");
            CHECK(memchr(f->value, '\r', f->value_len) == NULL &&
                      memchr(f->value, '\n', f->value_len) == NULL &&
                      memchr(f->value, '\0', f->value_len) == NULL,
                  "CR, LF or NUL in a parsed value");
        }
        /* Arriving in pieces: every prefix that ends before the head is "need more"; the
         * head alone parses to the same head. */
        CHECK(http1_parse_head(&p, buf, hl) == 1 && p.head_len == hl, "head alone differs");
        CHECK(http1_parse_head(&p, buf, hl - 1) == 0, "one byte short is not 'need more' (%d %s)",
              p.error_status, p.error_detail ? p.error_detail : "");
        CHECK(http1_parse_head(&p, buf, hl / 2) == 0, "half the head is not 'need more' (%d %s)",
              p.error_status, p.error_detail ? p.error_detail : "");

        /* The browser rule: a verdict, a detail that is printable and short, and a second
         * call with the connection's address never asks for it again. */
        {
            char detail[256];
            struct sockaddr_in local;
            memset(&local, 0, sizeof(local));
            local.sin_family = AF_INET;
            local.sin_addr.s_addr = htonl(0x0a000001); /* 10.0.0.1 */
            enum browser_verdict bv =
                browser_check(rt->conf, 0, size & 1, &m, NULL, detail, sizeof(detail));
            if (bv == BROWSER_NEED_LOCAL) {
                CHECK(!(size & 1), "a tunnel's request asked for the local address");
                bv = browser_check(rt->conf, 0, 0, &m, (const struct sockaddr *)&local, detail,
                                   sizeof(detail));
                CHECK(bv != BROWSER_NEED_LOCAL, "asked for the local address twice");
            }
            if (bv != BROWSER_OK)
                for (const char *d = detail; *d; d++)
                    CHECK(*d >= 0x20 && *d < 0x7f, "unprintable byte in the detail");
        }

        struct request_plan plan;
        CHECK(request_plan(&rt->routes, &m, &plan) == 0, "request_plan out of memory");
        if (plan.code == NULL)
            check_head(&plan, &m);
        else
            CHECK(plan.head == NULL, "an error plan with a head");
        request_plan_deinit(&plan);

        /* Inside an intercepted CONNECT to Apple's host: only that host's routes, and only
         * when Host names it. */
        static const char tunnel[] = "api.appstoreconnect.apple.com";
        CHECK(request_plan_tunnel(&rt->routes, &m, tunnel, sizeof(tunnel) - 1, 443, &plan) == 0,
              "request_plan_tunnel out of memory");
        if (plan.code == NULL) {
            check_head(&plan, &m);
            CHECK(strcmp(rt->targets[rt->route_target[plan.route]].name, tunnel) == 0,
                  "a tunnelled request routed to %s", rt->targets[rt->route_target[plan.route]].name);
            CHECK(m.has_host && m.host_len >= sizeof(tunnel) - 1 &&
                      strncasecmp(m.host, tunnel, sizeof(tunnel) - 1) == 0,
                  "a tunnelled request with another Host");
        } else {
            CHECK(plan.head == NULL, "an error plan with a head");
        }
        request_plan_deinit(&plan);

        /* The body, in two pieces (the second starts where the first stopped). */
        if (m.body != HTTP1_BODY_NONE) {
            size_t used = 0, used2 = 0, rest = size - hl, first = rest / 2;
            int br;
            br = http1_parse_body(&m, buf + hl, first, &used);
            CHECK(used <= first, "used %zu of %zu", used, first);
            if (br == 0) {
                CHECK(used == first, "need more, but %zu of %zu used", used, first);
                br = http1_parse_body(&m, buf + hl + first, rest - first, &used2);
                CHECK(used2 <= rest - first, "used2");
            }
            if (m.body == HTTP1_BODY_LENGTH) {
                CHECK(st.data <= m.content_length, "%llu body bytes for Content-Length %llu",
                      (unsigned long long)st.data, (unsigned long long)m.content_length);
                if (br == 1)
                    CHECK(st.data == m.content_length, "complete with %llu of %llu",
                          (unsigned long long)st.data, (unsigned long long)m.content_length);
            } else {
                CHECK(st.data <= st.declared, "%llu chunk bytes, %llu declared",
                      (unsigned long long)st.data, (unsigned long long)st.declared);
                if (br == 1)
                    CHECK(st.last_seen && st.data == st.declared, "complete chunked body");
            }
        }
    }
    http1_msg_deinit(&p);
    http1_msg_deinit(&m);
    free(buf);
    return 0;
}
