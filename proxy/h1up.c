/* h1up: the HTTP/1.1 upstream transport (upstream_transport.h) on one pooled connection.
 *
 *   start        the exchange's serialised head, the token line, the final CRLF
 *   send_body    as it is (Content-Length) or as one chunk per call (chunked); send_end "0"
 *   the answer   parsed with llhttp as strictly as requests (a bad head or framing: 502);
 *                1xx heads are dropped; Content-Length bodies move as evbuffer chains
 *                (body_buffer), chunked and close-delimited ones are de-framed (body)
 *   release      after a clean end with nothing left over the connection returns to its pool
 *                (response_pools_upstream), otherwise it is closed
 */
#include "proxy/evbuf.h"
#include "proxy/upstream.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "proxy/response.h"

/* Upstream response heads: fixed limits (Apple's heads are small; a huge one is an attack). */
static const struct http1_limits resp_limits = {.max_line = 0, .max_head = 64 * 1024,
                                                .max_headers = 256};

static struct upconn *conn_of(struct upstream_stream *us)
{
    return (struct upconn *)(void *)((char *)us - offsetof(struct upconn, us));
}

static int h1_data(void *arg, const char *at, size_t len)
{
    struct upconn *u = arg;
    u->xev->body(u->xarg, at, len);
    return 0;
}

static const struct http1_sink h1_sink = {h1_data, NULL, NULL};

static enum upstream_fault parse_fault(const struct upconn *u)
{
    return u->resp.error_status == 500 ? UPSTREAM_FAULT_INTERNAL : UPSTREAM_FAULT_BAD_RESPONSE;
}

static int h1_end(struct upconn *u)
{
    u->resp_ended = 1;
    u->reusable = response_pools_upstream(&u->resp, u->req_ended, stream_input_length(&u->s)) != 0;
    return u->xev->end(u->xarg);
}

/* force: deliver what is buffered even while paused (the connection has closed, so it is all
 * that will come; at most one read). Returns nonzero once the exchange let go. */
static int h1_read_body(struct upconn *u, int force)
{
    struct evbuffer *in = stream_input(&u->s);
    while (evbuffer_get_length(in) > 0) {
        if (u->resp.body == HTTP1_BODY_LENGTH) {
            /* Length-delimited: the buffers move across without parsing or copying. */
            size_t n = evbuffer_get_length(in);
            if (n > u->resp_remaining)
                n = (size_t)u->resp_remaining;
            u->xev->body_buffer(u->xarg, in, n);
            u->resp_remaining -= n;
            if (u->resp_remaining == 0)
                return h1_end(u);
        } else {
            struct evbuffer_iovec v;
            size_t used = 0;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            int r = http1_parse_body(&u->resp, v.iov_base, v.iov_len, &used);
            evbuffer_drain(in, used);
            if (r < 0)
                return u->xev->fault(u->xarg, parse_fault(u), u->resp.error_detail);
            if (r == 1)
                return h1_end(u);
        }
        if (!force && u->paused)
            return 0;
    }
    return 0;
}

static int h1_read_head(struct upconn *u)
{
    struct evbuffer *in = stream_input(&u->s);
    for (;;) {
        size_t len = evbuffer_get_length(in);
        size_t n = len < resp_limits.max_head + 1 ? len : resp_limits.max_head + 1;
        if (n == 0)
            return 0;
        const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        int r = http1_parse_head(&u->resp, data, n);
        if (r == 0)
            return 0;
        if (r < 0)
            return u->xev->fault(u->xarg, parse_fault(u), u->resp.error_detail);
        if (u->resp.status < 200) {
            /* Interim responses (100 Continue, 103) are not relayed: the proxy answered the
             * client's Expect itself. */
            evbuffer_drain(in, u->resp.head_len);
            http1_msg_init(&u->resp, HTTP_RESPONSE, &resp_limits);
            continue;
        }
        u->head_done = 1;
        if (u->xev->head(u->xarg, &u->resp))
            return 1;
        evbuffer_drain(in, u->resp.head_len);
        if (http1_msg_complete(&u->resp))
            return h1_end(u);
        u->resp_remaining = u->resp.content_length;
        return h1_read_body(u, 0);
    }
}

/* The connection ended (EOF, or an error when failed). */
static int h1_closed(struct upconn *u, int failed)
{
    if (!u->head_done)
        return u->xev->fault(u->xarg,
                             stream_input_length(&u->s) == 0 ? UPSTREAM_FAULT_UNANSWERED
                                                             : UPSTREAM_FAULT_UNREACHABLE,
                             !failed ? "the upstream closed the connection before the response "
                                       "head"
                                     : "the upstream connection failed before the response "
                                       "head");
    if (!failed) {
        /* What was read before the close may still be waiting behind backpressure. */
        if (h1_read_body(u, 1))
            return 1;
        /* A body that ends with the connection is only whole if TLS ended cleanly
         * (close_notify): a bare FIN could be a truncation by someone on the path. */
        if (u->resp.body == HTTP1_BODY_EOF && stream_clean_eof(&u->s) &&
            http1_parse_eof(&u->resp) == 1)
            return h1_end(u);
    }
    return u->xev->fault(u->xarg, UPSTREAM_FAULT_BAD_RESPONSE,
                         "the upstream closed the connection mid-response");
}

/* Events of the connection during an exchange. Reading comes first: a response and the close
 * after it can arrive in one wake-up. Once the exchange lets go, nothing here touches u. */
static void h1_cb(struct stream *s, unsigned ev, void *arg)
{
    struct upconn *u = arg;
    const struct upstream_events *xev = u->xev;
    void *xarg = u->xarg;
    (void)s;
    if ((ev & STREAM_DRAINED) && xev->drained(xarg))
        goto out;
    if ((ev & STREAM_READ) && (u->head_done ? h1_read_body(u, 0) : h1_read_head(u)))
        goto out;
    if ((ev & (STREAM_EOF | STREAM_ERROR)) && h1_closed(u, (ev & STREAM_ERROR) != 0))
        goto out;
    if (ev & (STREAM_RTIMEOUT | STREAM_WTIMEOUT)) {
        const char *why = u->head_done ? "the upstream stalled mid-response"
                          : (ev & STREAM_RTIMEOUT) ? "the upstream did not answer in time"
                                                   : "the upstream did not read the request "
                                                     "in time";
        xev->fault(xarg, UPSTREAM_FAULT_TIMEOUT, why);
    }
out:
    xev->settle(xarg);
}

static int h1_start(struct upstream_stream *us, const struct upstream_request *rq,
                    const struct upstream_events *events, void *arg)
{
    struct upconn *u = conn_of(us);
    struct evbuffer *out = stream_output(&u->s);
    if (out == NULL || stream_input(&u->s) == NULL)
        return -1;
    u->xev = events;
    u->xarg = arg;
    us->reused = u->reused;
    u->req_chunked = rq->body == HTTP1_BODY_CHUNKED;
    u->req_ended = rq->body == HTTP1_BODY_NONE;
    u->head_done = u->resp_ended = u->reusable = u->paused = 0;
    u->resp_remaining = 0;
    u->resp.request_is_head = rq->is_head; /* kept by init: a HEAD response has no body */
    http1_msg_init(&u->resp, HTTP_RESPONSE, &resp_limits);
    u->resp.sink = &h1_sink;
    u->resp.sink_arg = u;
    stream_setcb(&u->s, h1_cb, u);
    stream_set_watermarks(&u->s, 0, UPSTREAM_SEND_LOW);
    stream_set_reading(&u->s, 1);
    evbuffer_add(out, rq->head, rq->head_len);
    evbuffer_add(out, rq->tok->line, rq->tok->line_len);
    ADD_LITERAL(out, "\r\n");
    return 0;
}

static void h1_send_body(struct upstream_stream *us, const char *at, size_t len)
{
    struct upconn *u = conn_of(us);
    struct evbuffer *out = stream_output(&u->s);
    if (len == 0)
        return;
    if (u->req_chunked) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, at, len);
        ADD_LITERAL(out, "\r\n");
    } else {
        evbuffer_add(out, at, len);
    }
}

static void h1_send_body_buffer(struct upstream_stream *us, struct evbuffer *src, size_t n)
{
    struct upconn *u = conn_of(us);
    struct evbuffer *out = stream_output(&u->s);
    if (n == 0)
        return;
    if (u->req_chunked)
        evbuffer_add_printf(out, "%zx\r\n", n);
    evbuffer_remove_buffer(src, out, n);
    if (u->req_chunked)
        ADD_LITERAL(out, "\r\n");
}

static void h1_send_end(struct upstream_stream *us)
{
    struct upconn *u = conn_of(us);
    if (u->req_chunked && !u->req_ended)
        ADD_LITERAL(stream_output(&u->s), "0\r\n\r\n");
    u->req_ended = 1;
}

static size_t h1_send_queued(struct upstream_stream *us)
{
    return stream_output_length(&conn_of(us)->s);
}

static void h1_set_reading(struct upstream_stream *us, int on)
{
    struct upconn *u = conn_of(us);
    u->paused = !on;
    stream_set_reading(&u->s, on);
    /* What arrived before the pause is delivered now, not at the next read. */
    if (on && u->head_done && !u->resp_ended)
        h1_read_body(u, 0);
}

static void h1_set_timeouts(struct upstream_stream *us, uint32_t response_ms, uint32_t send_ms)
{
    stream_set_timeouts(&conn_of(us)->s, response_ms, send_ms);
}

static int h1_flush(struct upstream_stream *us)
{
    return (stream_settle(&conn_of(us)->s) & STREAM_DRAINED) != 0;
}

static void h1_release(struct upstream_stream *us)
{
    struct upconn *u = conn_of(us);
    if (u->xev == NULL) {
        upstream_abort(u); /* still opening, or never started */
        return;
    }
    u->xev = NULL;
    u->xarg = NULL;
    if (u->resp_ended)
        upstream_put(u, u->reusable);
    else
        upstream_abort(u);
}

static const struct upstream_ops h1up_ops = {
    .start = h1_start,
    .send_body = h1_send_body,
    .send_body_buffer = h1_send_body_buffer,
    .send_end = h1_send_end,
    .send_queued = h1_send_queued,
    .set_reading = h1_set_reading,
    .set_timeouts = h1_set_timeouts,
    .flush = h1_flush,
    .release = h1_release,
};

void h1up_init(struct upconn *conn)
{
    conn->us.ops = &h1up_ops;
}

void h1up_deinit(struct upconn *conn)
{
    http1_msg_deinit(&conn->resp);
}
