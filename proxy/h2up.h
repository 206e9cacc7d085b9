/* h2up: HTTP/2 upstream connections (nghttp2), each carrying many exchanges at once.
 *
 * An exchange gets one HTTP/2 stream of a shared connection as its upstream stream
 * (upstream_transport.h), the same interface as a pooled HTTP/1.1 connection (h1up.c):
 *
 *   start: the request's parts          -->  HEADERS: :method, :scheme, :authority (the
 *   (method, target, fields, token)          upstream's name), :path, the fields with lower-case
 *                                            names, no framing field but Content-Length
 *   send_body / send_end                -->  DATA as the peer's window allows; what waits counts
 *                                            as send_queued, so the client pauses as for a slow
 *                                            HTTP/1.1 upstream
 *   events->head: status and fields     <--  HEADERS (1xx dropped; a head that ends the stream
 *                                            gets "content-length: 0")
 *   events->body_buffer, end            <--  DATA as it came; the window reopens only as the
 *                                            exchange takes it (set_reading)
 *
 * Everything is told from the event loop (a per-stream event), never from inside nghttp2.
 * Nothing is serialised to HTTP/1.1 text or parsed from it on this path: the exchange frames
 * the response for its client from the head's fields, as it does for an HTTP/1.1 upstream,
 * so every rule it applies there (limits, timeouts, framing to the client, token retries, the
 * access log) applies unchanged. Connections, per worker and target,
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

/* upstream_stream_get for a target with h2 set: returns 0 with a stream whose connection is up
 * (ready_cb never called), or 1 with one whose connection is still opening (ready_cb reports
 * later, from the event loop), or -1 when out of memory. cred keys the connection. The stream
 * goes back with its release operation: an unfinished one is reset. */
int h2up_get(struct upool *pool, const struct credential *cred, upstream_stream_ready ready_cb,
             void *arg, struct upstream_stream **out);

/* Once a second: PINGs idle connections, closes those that do not answer, and, while the
 * worker drains, those with nothing left to carry. */
void h2up_tick(struct upool *pool, unsigned tick);

/* Closes every connection of the pool (their exchanges have ended). */
void h2up_pool_free(struct upool *pool);
/* Frees the streams the worker keeps for reuse; from then on freed streams go at once. Called
 * once the worker's pools are gone. */
void h2up_worker_cleanup(struct worker *w);

#endif
