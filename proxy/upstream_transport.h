/* upstream_transport: how an exchange (client.c) talks to "an upstream stream", whatever
 * carries it. The exchange holds a `struct upstream_stream` for the length of one request and
 * its response, and uses only the operations below; what is on the wire is the transport's
 * business:
 *
 *   HTTP/1.1 (proxy/h1up.c)  one pooled TLS connection per exchange: the head is written as
 *                            the proxy serialised it, the body framed (Content-Length or
 *                            chunked), the response parsed with llhttp
 *   HTTP/2   (proxy/h2up.c)  one stream of a connection shared by many exchanges: the head
 *                            goes as HEADERS from its fields, the body as DATA within the
 *                            stream's flow-control window, the response head arrives as
 *                            HEADERS and is handed over as status and fields
 *
 *   exchange                               transport
 *     start(request head + token) ------->   sends the head
 *     send_body(bytes) ... send_end ----->   frames and sends the body (send_queued: how much
 *                                            waits; events->drained: it went down to the mark)
 *     set_reading(0 / 1) ---------------->   stops / resumes delivering the response (and,
 *                                            on HTTP/2, reopening the stream's window)
 *     <------------------------ events->head(status, fields, framing)   (1xx never reported)
 *     <------------------------ events->body / body_buffer ...
 *     <------------------------ events->end                  or events->fault(kind, why)
 *     release --------------------------->   a stream whose response ended cleanly is kept
 *                                            for another exchange; anything else is closed
 *                                            (HTTP/1.1) or reset (HTTP/2)
 *
 * Events come from the event loop, never from inside an operation the exchange called, with one
 * exception: set_reading(us, 1) delivers at once what the transport received while reading was
 * off (body, body_buffer, end or fault; never settle), as the exchange would have read it
 * itself. Each wake-up of a transport ends with events->settle, after which the transport does
 * not touch the stream (the exchange may have released it, or freed itself). The events that return int
 * return 0 while the exchange still holds the stream and nonzero when it has let go: the
 * transport then stops at once.
 */
#ifndef AAP_PROXY_UPSTREAM_TRANSPORT_H
#define AAP_PROXY_UPSTREAM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <event2/buffer.h>

#include "auth/token_cache.h"
#include "proxy/http1.h"

/* A transport reports the request drained (events->drained) when what waits to be sent falls
 * to this many bytes. */
#define UPSTREAM_SEND_LOW (64 * 1024)

/* The request, as the exchange planned it (proxy/request.h). Borrowed: the exchange keeps it,
 * unchanged, until it releases the stream (a transport may send it again: a retry). */
struct upstream_request {
    /* HTTP/1.1 serialisation: request line, Host, the forwarded fields and the framing field,
     * without the token line and the final CRLF. */
    const char *head;
    size_t head_len;
    /* The same head as parts (spans into head): the method, the origin-form target, and every
     * field after Host (the framing field included). */
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    const struct http1_header *fields;
    size_t nfields;
    const struct token *tok; /* the Authorization the proxy adds */
    enum http1_body body;    /* HTTP1_BODY_NONE, _LENGTH or _CHUNKED */
    uint64_t content_length; /* HTTP1_BODY_LENGTH */
    int is_head;             /* HEAD: the response has no body whatever its head says */
};

/* Why a stream failed; the exchange maps each to its answer (http_error.h). */
enum upstream_fault {
    UPSTREAM_FAULT_UNANSWERED,   /* closed or failed before any byte of a response: nothing of
                                    the request can have been processed by a reused stream */
    UPSTREAM_FAULT_UNREACHABLE,  /* closed, failed or reset before the response head */
    UPSTREAM_FAULT_TIMEOUT,      /* no answer, no progress sending, or a stalled response */
    UPSTREAM_FAULT_BAD_RESPONSE, /* a response the proxy refuses, or cut short */
    UPSTREAM_FAULT_INTERNAL      /* the proxy ran out of memory */
};

/* The exchange's side. arg is what start() was given. */
struct upstream_events {
    /* The final response head: r's status, fields, body framing (HTTP1_BODY_NONE, _LENGTH with
     * content_length, _CHUNKED for "until the end", _EOF for "until the close") and keep_alive.
     * r is valid during the call only. */
    int (*head)(void *arg, const struct http1_msg *r);
    /* Response body bytes, without framing; the exchange copies them. */
    void (*body)(void *arg, const char *at, size_t len);
    /* n bytes of the body at the front of src; the exchange removes them (moves or drains). */
    void (*body_buffer)(void *arg, struct evbuffer *src, size_t n);
    /* The response is complete. */
    int (*end)(void *arg);
    /* The stream failed; detail says how, for the log and the client. */
    int (*fault)(void *arg, enum upstream_fault kind, const char *detail);
    /* The request bytes waiting went down to UPSTREAM_SEND_LOW: more may be sent. */
    int (*drained)(void *arg);
    /* The end of the transport's wake-up. */
    void (*settle)(void *arg);
};

struct upstream_stream;

struct upstream_ops {
    /* Starts an exchange on the stream (or starts it again, for a retry): sends the head with
     * the token, and reports to events with arg from now on. Returns 0, or -1 when out of
     * memory (nothing was sent). */
    int (*start)(struct upstream_stream *us, const struct upstream_request *rq,
                 const struct upstream_events *events, void *arg);
    /* Request body bytes, without framing (copied / n bytes moved from the front of src). */
    void (*send_body)(struct upstream_stream *us, const char *at, size_t len);
    void (*send_body_buffer)(struct upstream_stream *us, struct evbuffer *src, size_t n);
    /* The request body is complete. */
    void (*send_end)(struct upstream_stream *us);
    /* Request bytes taken but not yet sent: the exchange stops reading its client past its own
     * high mark, and resumes on events->drained. */
    size_t (*send_queued)(struct upstream_stream *us);
    /* Backpressure from the client: 0 stops delivering the response (an HTTP/2 stream's window
     * stays closed), 1 resumes and delivers what is held (see above). */
    void (*set_reading)(struct upstream_stream *us, int on);
    /* response_ms: the response (its head, then each part of its body) must progress within
     * this (0: no limit, while the request is still being sent); send_ms: the request's bytes
     * must be taken within this. */
    void (*set_timeouts)(struct upstream_stream *us, uint32_t response_ms, uint32_t send_ms);
    /* Writes what the exchange queued, now (from the exchange's settle). Returns 1 when that
     * brought the request's queue down to UPSTREAM_SEND_LOW. */
    int (*flush)(struct upstream_stream *us);
    /* The exchange lets go. After events->end the stream may serve another exchange (an
     * HTTP/1.1 connection returns to its pool when nothing was left over); in any other state
     * it is aborted. The caller must not touch us afterwards. */
    void (*release)(struct upstream_stream *us);
};

/* The exchange's handle; embedded in the transport's own object. */
struct upstream_stream {
    const struct upstream_ops *ops;
    int reused; /* the carrier served an exchange before this one (a stale pooled connection
                   can be retried; see UPSTREAM_FAULT_UNANSWERED) */
};

#endif
