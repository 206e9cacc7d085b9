/* response: the pure part of relaying a response: framing, headers, connections. */
#include "proxy/response.h"

#include <string.h>

#include "proxy/http_error.h"
#include "proxy/linkrw.h"
#include "proxy/request.h"

/* Whether a GET of r's resource would have its links rewritten (and so go out chunked). */
static int rewritable(const struct http1_msg *r)
{
    const struct http1_header *ct = http1_find(r, "content-type");
    const struct http1_header *ce = http1_find(r, "content-encoding");
    return linkrw_applies(ct ? ct->value : NULL, ct ? ct->value_len : 0, ce ? ce->value : NULL,
                          ce ? ce->value_len : 0);
}

int response_rewrites(const struct http1_msg *r, int has_origin)
{
    return has_origin && r->body != HTTP1_BODY_NONE && rewritable(r);
}

void response_plan(const struct http1_msg *r, const struct response_facts *f,
                   struct response_plan *p)
{
    int status = r->status;
    memset(p, 0, sizeof(*p));
    p->status = status > 0 && status < 1000 ? status : 502;
    p->reason = r->reason_len ? r->reason : http_reason(status);
    p->reason_len = r->reason_len ? r->reason_len : strlen(p->reason);
    /* A HEAD or 304 carries the length a GET would get (RFC 9110 8.6); on a rewritten resource
     * that length would be the upstream's, not what the client would get, so none is sent. */
    p->copy_length = r->body == HTTP1_BODY_NONE && (f->is_head || status == 304) &&
                     !(f->has_origin && rewritable(r));
    switch (r->body) {
    case HTTP1_BODY_NONE:
        if (p->copy_length)
            p->framing = RESPONSE_FRAME_UPSTREAM;
        else if (f->is_head && status >= 200 && status != 204 && status != 304)
            p->framing = f->http10 ? RESPONSE_FRAME_NONE : RESPONSE_FRAME_HEAD_CHUNKED;
        else if (status != 204 && status != 304 && status >= 200)
            p->framing = RESPONSE_FRAME_EMPTY;
        else
            p->framing = RESPONSE_FRAME_NONE;
        break;
    case HTTP1_BODY_LENGTH:
        if (!f->rewriting) {
            p->framing = RESPONSE_FRAME_LENGTH;
            p->content_length = r->content_length;
            break;
        }
        /* a rewritten body's length is only known at its end: it goes out like these */
        __attribute__((fallthrough));
    case HTTP1_BODY_CHUNKED:
    case HTTP1_BODY_EOF:
        /* HTTP/1.0 has no chunked coding: the close ends the body */
        p->framing = f->http10 ? RESPONSE_FRAME_CLOSE : RESPONSE_FRAME_CHUNKED;
        break;
    }
    p->scan_connection = http1_find(r, "connection") != NULL;
    p->close_after = p->framing == RESPONSE_FRAME_CLOSE || !f->keep_alive || f->client_eof ||
                     f->draining || !f->req_done;
    if (p->close_after)
        p->connection = "close";
    else if (f->http10)
        p->connection = "keep-alive";
}

int response_header_goes(const struct response_plan *p, const struct http1_msg *r, size_t i)
{
    const struct http1_header *h = &r->headers[i];
    if (http_is_hop_by_hop(h->name, h->name_len))
        return 0;
    if (!p->copy_length && h->name_len == 14 && http1_name_is(h->name, h->name_len,
                                                              "content-length"))
        return 0;
    return !(p->scan_connection && http_connection_lists(r, h->name, h->name_len));
}

int response_pools_upstream(const struct http1_msg *r, int req_done, size_t leftover)
{
    return r->keep_alive && req_done && r->body != HTTP1_BODY_EOF && leftover == 0;
}
