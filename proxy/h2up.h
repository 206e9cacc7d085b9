/* h2up: HTTP/2 upstream connections (nghttp2), each carrying many exchanges at once.
 *
 * An exchange gets a `struct upconn` exactly as from the HTTP/1.1 pool, but its stream is a peer
 * stream (stream.h) bound to one HTTP/2 stream of a shared connection:
 *
 *   exchange writes the HTTP/1.1 request  -->  parsed here, sent as HEADERS + DATA (flow control:
 *   into the upconn's output                   what the peer's window allows; the output stays
 *                                              full, and the client paused, until it opens)
 *   exchange reads an HTTP/1.1 response   <--  HEADERS re-framed (Content-Length or chunked),
 *   from the upconn's input                    DATA appended; the window reopens as it is read
 *
 * so every rule the exchange applies to an HTTP/1.1 upstream (limits, timeouts, framing to the
 * client, token retries, the access log) applies unchanged. Connections, per worker and target,
 * are keyed by credential (APNs refuses two teams' tokens on one connection), carry up to the
 * peer's SETTINGS_MAX_CONCURRENT_STREAMS, and a new one opens only when those are all taken.
 * Idle connections stay open and are PINGed; one that does not answer is closed.
 *
 *   GOAWAY / REFUSED_STREAM, no answer yet   -> the request goes again on another connection
 *                                                (it was not processed), at most H2UP_ATTEMPTS
 *   RST_STREAM, connection lost, bad frames  -> the exchange sees a failed upstream: 502
 *   no answer within the response timeout    -> the exchange's own timeout: 504, RST_STREAM
 *   APNs 403 Expired/InvalidProviderToken    -> once, when the team's token may be replaced (20
 *                                                minutes old): a new token, the push again
 *   APNs 429 TooManyProviderTokenUpdates     -> logged as an error and counted; token kept
 */
#ifndef AAP_PROXY_H2UP_H
#define AAP_PROXY_H2UP_H

#include "proxy/upstream.h"

struct credential;

/* Like upstream_get, for a target with h2 set: returns 0 with an upconn whose connection is up
 * (ready_cb never called), or 1 with one whose connection is still opening (ready_cb reports
 * later, from the event loop), or -1 when out of memory. cred keys the connection. */
int h2up_get(struct upool *pool, const struct credential *cred, upstream_stream_ready ready_cb,
             void *arg, struct upstream_stream **out);

/* upstream_put and upstream_abort of an HTTP/2 exchange: an unfinished stream is reset. */
void h2up_release(struct upconn *up);

/* Once a second: PINGs idle connections, closes those that do not answer, and, while the
 * worker drains, those with nothing left to carry. */
void h2up_tick(struct upool *pool, unsigned tick);

/* Closes every connection of the pool (their exchanges have ended). */
void h2up_pool_free(struct upool *pool);

#endif
