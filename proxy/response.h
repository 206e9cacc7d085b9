/* response: the pure part of relaying a response: how the client's copy is framed, which of the
 * upstream's headers go, whether links are rewritten, and whether the client and upstream
 * connections are kept. Writes no bytes, so it is table-tested; request.h is its partner for
 * the request. */
#ifndef AAP_PROXY_RESPONSE_H
#define AAP_PROXY_RESPONSE_H

#include <stddef.h>
#include <stdint.h>
#include "proxy/http1.h"

/* How the body reaches the client: the framing field the proxy writes (RFC 9112 6). */
enum response_framing {
    RESPONSE_FRAME_NONE,        /* no field: 1xx and 204 have no body and no length */
    RESPONSE_FRAME_UPSTREAM,    /* the upstream's Content-Length is copied: a HEAD or 304 tells
                                   the length a GET would get */
    RESPONSE_FRAME_EMPTY,       /* Content-Length: 0 */
    RESPONSE_FRAME_LENGTH,      /* Content-Length: content_length */
    RESPONSE_FRAME_CHUNKED,     /* Transfer-Encoding: chunked, and the body re-chunked */
    RESPONSE_FRAME_HEAD_CHUNKED, /* Transfer-Encoding: chunked without a body: a HEAD of a
                                    resource whose GET would be rewritten */
    RESPONSE_FRAME_CLOSE        /* no field: an HTTP/1.0 client reads to the close */
};

/* What the exchange knows besides the response head. */
struct response_facts {
    int is_head;    /* the request was HEAD */
    int http10;     /* the client spoke HTTP/1.0 */
    int keep_alive; /* the client asked to keep the connection */
    int req_done;   /* the whole request body has been read */
    int client_eof; /* the client has half-closed */
    int draining;   /* the worker is shutting down */
    int has_origin; /* the route rewrites links and the client's origin is known */
    int rewriting;  /* this body's links are being rewritten (see response_rewrites) */
};

struct response_plan {
    int status;            /* the status line's code: the upstream's, 502 when out of range */
    const char *reason;    /* the upstream's reason phrase, else the standard one */
    size_t reason_len;
    enum response_framing framing;
    uint64_t content_length; /* RESPONSE_FRAME_LENGTH */
    int copy_length;       /* the upstream's Content-Length field is copied */
    int close_after;       /* the client connection closes after this response */
    const char *connection; /* the Connection field to write ("close", "keep-alive") or NULL */
    int scan_connection;   /* the upstream sent Connection: headers it lists stay behind */
};

/* Whether the links in r's body are rewritten: has_origin, a body, and JSON without a content
 * coding (linkrw_applies). */
int response_rewrites(const struct http1_msg *r, int has_origin);

/* Plans the client's response head for upstream head r. */
void response_plan(const struct http1_msg *r, const struct response_facts *f,
                   struct response_plan *p);

/* Whether r's header i goes to the client: not hop-by-hop, not named by Connection, and a
 * Content-Length only when the plan copies it. */
int response_header_goes(const struct response_plan *p, const struct http1_msg *r, size_t i);

/* Whether the upstream connection goes back to its pool once the response is complete: the
 * upstream keeps it, the request went out whole, the body was not close-delimited, and nothing
 * follows the response (leftover: bytes received after it). */
int response_pools_upstream(const struct http1_msg *r, int req_done, size_t leftover);

#endif
