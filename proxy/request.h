/* request: the pure part of forwarding a request: target parsing, routing and the upstream head
 * the proxy re-serialises. No sockets and no event loop, so it is unit-tested and fuzzed. */
#ifndef AAP_PROXY_REQUEST_H
#define AAP_PROXY_REQUEST_H

#include <stddef.h>
#include "conf/conf.h"
#include "proxy/http1.h"

/* What planning needs besides the request: the configuration's routes and limits, and each
 * route's upstream Host value ("name" or "name:port"). Borrowed; a runtime keeps one. */
struct request_routes {
    const struct conf *conf;
    const char *const *host; /* per route */
    const size_t *host_len;  /* per route */
};

struct request_plan {
    const char *code;  /* NULL: forward it; else the proxy error (http_error.h) to answer */
    char detail[256];
    int keep;          /* after an error: the connection stays usable (no body to skip) */
    size_t route;
    const char *path;  /* the path routed by (no query, before strip_prefix); points into the
                          request head or a constant */
    size_t path_len;
    const char *authority; /* the host[:port] the client addressed (absolute-form target, else
                              Host; NULL for an HTTP/1.0 request without one) */
    size_t authority_len;
    const char *scheme; /* "http" or "https" as an absolute-form target wrote it (a constant),
                           else NULL: links rewritten for the client keep the scheme it used */
    int is_head, idempotent, http10;
    char *head;        /* malloc'd: request line, Host, forwarded headers and framing; the
                          token line and the final CRLF are added when it is sent */
    size_t head_len;
    /* The same head in parts, spans into head (in its allocation: freeing head frees them):
     * the method is head's first method_len bytes, the target target_len bytes at target_off,
     * and fields every line after Host (the framing field last, when there is one). An HTTP/2
     * upstream sends these instead of the text. */
    size_t method_len, target_off, target_len;
    const struct http1_header *fields;
    size_t nfields;
};

/* Plans a request whose head m is complete: CONNECT and malformed targets are refused, the
 * route is chosen (absolute-form targets only to configured upstreams), the body limit is
 * checked, and the head is re-serialised: hop-by-hop headers, everything Connection lists,
 * Authorization, Proxy-Authorization, Host and Expect are dropped; Host is the upstream's;
 * framing is the proxy's own. Returns 0 (p->code says whether to forward); -1 out of memory. */
int request_plan(const struct request_routes *routes, const struct http1_msg *m,
                 struct request_plan *p);
/* The same for a request inside an intercepted CONNECT tunnel to host:port: the target must be
 * a path and Host must name that host (and port, when it gives one); the request is routed as
 * an absolute-form request to that host would be. */
int request_plan_tunnel(const struct request_routes *routes, const struct http1_msg *m,
                        const char *host, size_t host_len, int port, struct request_plan *p);
void request_plan_deinit(struct request_plan *p);

/* Whether a request target is in absolute form ("http://..." or "https://...", any case). */
int request_target_is_absolute(const char *t, size_t n);

/* RFC 9110 7.6.1 hop-by-hop fields, plus the proxy credentials that never cross the proxy. */
int http_is_hop_by_hop(const char *name, size_t len);
/* Whether a Connection header of m lists this field name. */
int http_connection_lists(const struct http1_msg *m, const char *name, size_t len);

#endif
