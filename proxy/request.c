/* request: the pure part of forwarding a request: target parsing, routing and the upstream head
 * the proxy re-serialises. No sockets and no event loop, so it is unit-tested and fuzzed. */
#include "proxy/request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/http_error.h"
#include "proxy/route.h"

int http_is_hop_by_hop(const char *name, size_t len)
{
    /* By length first: every header of every request and response passes through here. */
    switch (len) {
    case 2: return http1_name_is(name, len, "te");
    case 7: return http1_name_is(name, len, "trailer") || http1_name_is(name, len, "upgrade");
    case 10:
        return http1_name_is(name, len, "connection") || http1_name_is(name, len, "keep-alive");
    case 14: return http1_name_is(name, len, "http2-settings");
    case 16: return http1_name_is(name, len, "proxy-connection");
    case 17: return http1_name_is(name, len, "transfer-encoding");
    case 18: return http1_name_is(name, len, "proxy-authenticate");
    case 19: return http1_name_is(name, len, "proxy-authorization");
    default: return 0;
    }
}

int http_connection_lists(const struct http1_msg *m, const char *name, size_t len)
{
    char lower[128];
    size_t i;
    if (len >= sizeof(lower))
        return 0;
    for (i = 0; i < len; i++)
        lower[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] - 'A' + 'a' : name[i]);
    lower[len] = '\0';
    for (i = 0; i < m->nheaders; i++) {
        const struct http1_header *h = &m->headers[i];
        if (http1_name_is(h->name, h->name_len, "connection") &&
            http1_list_has(h->value, h->value_len, lower))
            return 1;
    }
    return 0;
}

static int is_idempotent(const char *m, size_t n)
{
    return (n == 3 && (!memcmp(m, "GET", 3) || !memcmp(m, "PUT", 3))) ||
           (n == 4 && !memcmp(m, "HEAD", 4)) || (n == 6 && !memcmp(m, "DELETE", 6)) ||
           (n == 7 && !memcmp(m, "OPTIONS", 7)) || (n == 5 && !memcmp(m, "TRACE", 5));
}

/* RFC 3986 5.2.4: a path with "." or ".." segments (also percent-encoded) could name another
 * resource after normalisation than the prefix it was routed by; such targets are refused. */
static int has_dot_segment(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t start = ++i; /* after a '/' */
        while (i < n && p[i] != '/')
            i++;
        size_t seg = i - start;
        const char *s = p + start;
        if ((seg == 1 && s[0] == '.') || (seg == 2 && s[0] == '.' && s[1] == '.'))
            return 1;
        if (seg == 3 && strncasecmp(s, "%2e", 3) == 0)
            return 1;
        if ((seg == 4 && ((s[0] == '.' && strncasecmp(s + 1, "%2e", 3) == 0) ||
                          (strncasecmp(s, "%2e", 3) == 0 && s[3] == '.'))) ||
            (seg == 6 && strncasecmp(s, "%2e%2e", 6) == 0))
            return 1;
    }
    return 0;
}

static void fail(struct request_plan *p, const char *code, const char *detail, int keep)
{
    p->code = code;
    snprintf(p->detail, sizeof(p->detail), "%s", detail);
    p->keep = keep;
}

/* Bytes some servers read as a path separator or a segment's end, so that a path that starts
 * with an allowed prefix names another resource there; the query may hold anything. Apple's
 * resource paths never need one:
 * - '\\', literal or encoded: a '/' to servers that accept Windows paths ("/v1\\..\\admin");
 * - an encoded '/' ("..%2F" is a dot-segment to a server that decodes before resolving);
 * - ';', literal or encoded: RFC 3986 3.3 path parameters, which servers such as Tomcat strip
 *   from a segment before resolving ("/v1/apps/..;/users" is "/v1/users" there), while the
 *   proxy and a gateway client's allow rules compare the path as sent.
 * Returns 1 after failing the plan. */
static int has_path_separator_trick(const char *path, size_t n, struct request_plan *p)
{
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '\\') {
            fail(p, proxy_err_bad_request, "the request path has a '\\'", 0);
            return 1;
        }
        if (path[i] == ';') {
            fail(p, proxy_err_bad_request, "the request path has a ';' (path parameters are "
                 "refused)", 0);
            return 1;
        }
        if (path[i] == '%' && i + 3 <= n &&
            (strncasecmp(path + i, "%2f", 3) == 0 || strncasecmp(path + i, "%5c", 3) == 0 ||
             strncasecmp(path + i, "%3b", 3) == 0)) {
            fail(p, proxy_err_bad_request,
                 "the request path has an encoded '/', '\\' or ';'", 0);
            return 1;
        }
    }
    return 0;
}

/* A head assembled in one allocation sized beforehand: the proxy's additions are bounded, the
 * rest is the request's own bytes. */
struct head_out {
    char *p;
};

static void out_put(struct head_out *o, const char *s, size_t n)
{
    memcpy(o->p, s, n);
    o->p += n;
}

#define OUT_LITERAL(o, s) out_put((o), "" s, sizeof(s) - 1)

/* Whether header h of m goes upstream. Header names with '_' are dropped (as nginx does by
 * default): some servers read them as '-', so "Transfer_Encoding" or "Content_Length" could
 * mean framing to them that the proxy never saw. */
static int header_goes(const struct http1_msg *m, const struct http1_header *h, int identity,
                       int has_connection)
{
    return !(http_is_hop_by_hop(h->name, h->name_len) ||
             http1_name_is(h->name, h->name_len, "content-length") ||
             http1_name_is(h->name, h->name_len, "host") ||
             http1_name_is(h->name, h->name_len, "authorization") ||
             http1_name_is(h->name, h->name_len, "expect") ||
             (identity && http1_name_is(h->name, h->name_len, "accept-encoding")) ||
             memchr(h->name, '_', h->name_len) != NULL ||
             (has_connection && http_connection_lists(m, h->name, h->name_len)));
}

/* Records the line just written as a field span (name, ": ", value, CRLF). */
static void note_field(struct request_plan *p, struct http1_header *fields, const char *line,
                       size_t name_len, size_t value_len)
{
    struct http1_header *f = &fields[p->nfields++];
    f->name = line;
    f->name_len = name_len;
    f->value = line + name_len + 2;
    f->value_len = value_len;
}

static int build_head(struct request_plan *p, const struct http1_msg *m, const char *host,
                      size_t host_len, const char *path, size_t path_len, const char *prefix,
                      int identity)
{
    int had_cl = http1_find(m, "content-length") != NULL;
    /* Without a Connection header there is nothing it could list: skip that scan. */
    int has_connection = http1_find(m, "connection") != NULL;
    size_t prefix_len = prefix ? strlen(prefix) : 0, bound, i;
    struct http1_header *fields;
    /* request line and Host, each header line, and the framing line (at most
     * "Content-Length: " and 20 digits, or "Transfer-Encoding: chunked") with its CRLF */
    bound = m->method_len + 1 + prefix_len + path_len + 17 + host_len + 2 + 48;
    for (i = 0; i < m->nheaders; i++)
        bound += m->headers[i].name_len + m->headers[i].value_len + 4;
    /* The field spans follow the text in the same allocation, aligned. */
    bound = (bound + _Alignof(struct http1_header) - 1) &
            ~(size_t)(_Alignof(struct http1_header) - 1);
    p->head = malloc(bound + (m->nheaders + 1) * sizeof(struct http1_header));
    if (p->head == NULL)
        return -1;
    fields = (struct http1_header *)(void *)(p->head + bound);
    p->fields = fields;
    p->nfields = 0;
    struct head_out o = {p->head};
    out_put(&o, m->method, m->method_len);
    p->method_len = m->method_len;
    OUT_LITERAL(&o, " ");
    p->target_off = (size_t)(o.p - p->head);
    if (prefix)
        out_put(&o, prefix, prefix_len);
    out_put(&o, path, path_len);
    p->target_len = (size_t)(o.p - p->head) - p->target_off;
    OUT_LITERAL(&o, " HTTP/1.1\r\nHost: ");
    out_put(&o, host, host_len);
    OUT_LITERAL(&o, "\r\n");
    for (i = 0; i < m->nheaders; i++) {
        const struct http1_header *h = &m->headers[i];
        if (!header_goes(m, h, identity, has_connection))
            continue;
        note_field(p, fields, o.p, h->name_len, h->value_len);
        out_put(&o, h->name, h->name_len);
        OUT_LITERAL(&o, ": ");
        out_put(&o, h->value, h->value_len);
        OUT_LITERAL(&o, "\r\n");
    }
    if (m->body == HTTP1_BODY_CHUNKED) {
        note_field(p, fields, o.p, 17, 7);
        OUT_LITERAL(&o, "Transfer-Encoding: chunked\r\n");
    } else if (m->body == HTTP1_BODY_LENGTH || had_cl) {
        char digits[20];
        uint64_t v = m->content_length;
        int n = 0, k;
        do { /* the digits, last first */
            digits[n++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        for (k = 0; k < n / 2; k++) {
            char t = digits[k];
            digits[k] = digits[n - 1 - k];
            digits[n - 1 - k] = t;
        }
        note_field(p, fields, o.p, 14, (size_t)n);
        OUT_LITERAL(&o, "Content-Length: ");
        out_put(&o, digits, (size_t)n);
        OUT_LITERAL(&o, "\r\n");
    }
    p->head_len = (size_t)(o.p - p->head);
    return 0;
}

static int plan_routed(const struct request_routes *routes, const struct http1_msg *m,
                       struct request_plan *p, const char *host, size_t host_len, int absolute,
                       const char *path, size_t path_len);

int request_target_is_absolute(const char *t, size_t n)
{
    return (n > 7 && strncasecmp(t, "http://", 7) == 0) ||
           (n > 8 && strncasecmp(t, "https://", 8) == 0);
}

static void plan_start(const struct http1_msg *m, struct request_plan *p)
{
    memset(p, 0, sizeof(*p));
    p->http10 = m->version_major == 1 && m->version_minor == 0;
    p->is_head = m->method_len == 4 && memcmp(m->method, "HEAD", 4) == 0;
    p->idempotent = is_idempotent(m->method, m->method_len);
}

/* Whether m's Host is "host" or "host:port" (a DNS name: no brackets). */
static int host_names(const struct http1_msg *m, const char *host, size_t host_len, int port)
{
    char want[16];
    size_t n;
    if (!m->has_host || m->host_len < host_len || strncasecmp(m->host, host, host_len) != 0)
        return 0;
    if (m->host_len == host_len)
        return 1;
    n = (size_t)snprintf(want, sizeof(want), ":%d", port);
    return m->host_len - host_len == n && memcmp(m->host + host_len, want, n) == 0;
}

int request_plan_tunnel(const struct request_routes *routes, const struct http1_msg *m,
                        const char *host, size_t host_len, int port, struct request_plan *p)
{
    plan_start(m, p);
    if (m->parser.method == HTTP_CONNECT) {
        fail(p, proxy_err_bad_request, "CONNECT inside an intercepted connection", 0);
        return 0;
    }
    if (m->target_len == 0 || m->target[0] != '/') {
        fail(p, proxy_err_bad_request,
             "inside an intercepted connection the request target must be a path", 0);
        return 0;
    }
    /* The connection was opened to one host: a request naming another could be routed, and
     * given a token, for a host the client never connected to. */
    if (!host_names(m, host, host_len, port)) {
        char err[200];
        snprintf(err, sizeof(err), "Host must name %.*s, the host this connection was opened to",
                 (int)(host_len > 150 ? 150 : host_len), host);
        fail(p, proxy_err_bad_request, err, 0);
        return 0;
    }
    p->authority = m->host;
    p->authority_len = m->host_len;
    return plan_routed(routes, m, p, host, host_len, 1, m->target, m->target_len);
}

int request_plan(const struct request_routes *routes, const struct http1_msg *m,
                 struct request_plan *p)
{
    const char *host = NULL, *path = m->target;
    size_t host_len = 0, path_len = m->target_len;
    int absolute = 0;

    plan_start(m, p);

    if (m->parser.method == HTTP_CONNECT) {
        fail(p, proxy_err_connect,
             "CONNECT opens a TLS tunnel, and the proxy cannot add the Authorization header "
             "inside one: send plain http:// requests to the proxy instead",
             0);
        return 0;
    }
    if (request_target_is_absolute(path, path_len)) {
        /* absolute-form (what clients send through HTTP_PROXY): routed by its own host */
        const char *auth = path + (path[4] == ':' ? 7 : 8);
        const char *end = m->target + m->target_len;
        const char *q = auth;
        while (q < end && *q != '/' && *q != '?')
            q++;
        if (q == auth || memchr(auth, '@', (size_t)(q - auth))) {
            fail(p, proxy_err_bad_request, "invalid authority in the request target", 0);
            return 0;
        }
        route_host_name(auth, (size_t)(q - auth), &host, &host_len);
        p->authority = auth;
        p->authority_len = (size_t)(q - auth);
        p->scheme = path[4] == ':' ? "http" : "https";
        absolute = 1;
        path = q;
        path_len = (size_t)(end - q);
    } else if (path_len == 0 || path[0] != '/') {
        fail(p, proxy_err_bad_request, "the request target must be a path or an http:// URL", 0);
        return 0;
    } else if (m->has_host) {
        route_host_name(m->host, m->host_len, &host, &host_len);
        p->authority = m->host;
        p->authority_len = m->host_len;
    }
    return plan_routed(routes, m, p, host, host_len, absolute, path, path_len);
}

/* PROXY_NO_ROUTE's detail: the path, and the routes there are (prefix, and host when a route
 * has one), so that a request to the wrong place says where the right ones are. Cut with "..."
 * to fit out. */
static void no_route_detail(const struct conf *conf, const char *path, size_t path_len,
                            char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "no route takes %.*s; the routes take",
                     (int)(path_len > 100 ? 100 : path_len), path);
    size_t o = n < 0 ? 0 : (size_t)n;
    for (size_t i = 0; i < conf->nroutes && o < outlen; i++) {
        const struct conf_route *r = &conf->routes[i];
        char one[200];
        int m = snprintf(one, sizeof(one), "%s %s%s%s%s", i ? "," : "", r->path_prefix,
                         r->host ? " (host " : "", r->host ? r->host : "", r->host ? ")" : "");
        /* room for this entry and a final " ..." */
        if (m < 0 || (size_t)m >= sizeof(one) || o + (size_t)m + 5 > outlen - 1) {
            snprintf(out + o, outlen - o, " ...");
            return;
        }
        memcpy(out + o, one, (size_t)m + 1);
        o += (size_t)m;
    }
}

/* The rest of planning, once the target is parsed: the path's checks, the route (absolute:
 * by host among the upstreams only), the body limit and the upstream head. */
static int plan_routed(const struct request_routes *routes, const struct http1_msg *m,
                       struct request_plan *p, const char *host, size_t host_len, int absolute,
                       const char *path, size_t path_len)
{
    const struct conf *conf = routes->conf;
    const char *query;
    int no_body = m->body == HTTP1_BODY_NONE;
    char err[200];

    query = memchr(path, '?', path_len);
    size_t bare_len = query ? (size_t)(query - path) : path_len;
    if (memchr(path, '#', path_len) || has_dot_segment(path, bare_len)) {
        fail(p, proxy_err_bad_request, "the request path has a fragment or dot-segments", 0);
        return 0;
    }
    if (has_path_separator_trick(path, bare_len, p))
        return 0;
    /* An absolute-form target with an empty path means "/" (RFC 9112 3.2.2). */
    const char *route_path = bare_len ? path : "/";
    size_t route_len = bare_len ? bare_len : 1;
    p->path = route_path;
    p->path_len = route_len;
    enum route_result rr =
        route_find(conf, host, host_len, absolute, route_path, route_len, &p->route);
    if (rr == ROUTE_FOREIGN_HOST) {
        snprintf(err, sizeof(err), "%.*s is not one of the configured upstreams",
                 (int)(host_len > 150 ? 150 : host_len), host);
        fail(p, proxy_err_forbidden_host, err, no_body);
        return 0;
    }
    if (rr == ROUTE_NONE) {
        no_route_detail(conf, route_path, route_len, err, sizeof(err));
        fail(p, proxy_err_no_route, err, no_body);
        return 0;
    }
    if (m->body == HTTP1_BODY_LENGTH && conf->limits.max_body &&
        m->content_length > conf->limits.max_body) {
        fail(p, proxy_err_body_too_large, "Content-Length is larger than max_body_bytes", 0);
        return 0;
    }
    const struct conf_route *route = &conf->routes[p->route];
    const char *fwd = path;
    size_t fwd_len = path_len;
    const char *prefix = NULL;
    if (route->strip_prefix) {
        size_t sl = strlen(route->strip_prefix);
        if (fwd_len >= sl && memcmp(fwd, route->strip_prefix, sl) == 0) {
            fwd += sl;
            fwd_len -= sl;
        }
    }
    if (fwd_len == 0 || fwd[0] != '/')
        prefix = "/"; /* the forwarded target always starts with '/' */
    /* Links in JSON bodies can only be rewritten in identity-coded bodies: on such routes the
     * upstream is not offered compression. */
    return build_head(p, m, routes->host[p->route], routes->host_len[p->route], fwd, fwd_len,
                      prefix, route->rewrite_links);
}

void request_plan_deinit(struct request_plan *p)
{
    free(p->head);
    p->head = NULL;
    p->fields = NULL;
    p->nfields = 0;
}
