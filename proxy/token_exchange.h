/* token_exchange: trading the signed tokens of the maps and apple-business credentials for
 * Apple's access tokens, over the proxy's own upstream connections, without blocking anyone.
 *
 *   worker: request, no access token --> token_exchanger_want --+
 *                                                               v
 *   exchanger thread (a worker without listeners):  scan: due? backoff over? none in flight?
 *       sign (access_token) -> upstream_get (pool, verified TLS) -> send -> parse the answer
 *       -> token_cache_install, or record the failure and back off
 *       -> worker_wake(every worker): the requests waiting for the token go on (or get the
 *          failure in Apple's error shape)
 *   every second: the same scan, so tokens are exchanged again before they expire.
 */
#ifndef AAP_PROXY_TOKEN_EXCHANGE_H
#define AAP_PROXY_TOKEN_EXCHANGE_H

#include <stddef.h>
#include "proxy/runtime.h"

struct token_exchanger;
struct worker;

/* Backoff after consecutive failed exchanges of one credential: 1, 2, 4... seconds, at most
 * this many. */
#define TOKEN_EXCHANGE_MAX_BACKOFF 60

/* Creates the exchanger for rt (its own event loop, resolver and upstream pools). It wakes the
 * nworkers client workers (borrowed, outlive it) when an exchange ends. Returns NULL with err. */
struct token_exchanger *token_exchanger_new(struct runtime *rt, struct worker *workers,
                                            int nworkers, char *err, size_t errlen);
/* Starts its thread and the first exchanges. Returns 0 or -1. */
int token_exchanger_start(struct token_exchanger *x);
/* A new configuration (a reference is taken); exchanges in flight finish on the old one. */
void token_exchanger_reload(struct token_exchanger *x, struct runtime *rt);
/* Asks for a scan now (a request found no access token). Thread-safe. */
void token_exchanger_want(struct token_exchanger *x);
/* Stops the thread, abandons exchanges in flight and frees everything. NULL is a no-op. */
void token_exchanger_free(struct token_exchanger *x);

/* One exchange for credential index cred of rt, on a private event loop, for the command line
 * (`token`, `check`). Returns EXCHANGE_OK with the access token (malloc'd; the caller wipes and
 * frees it) and its lifetime, or the failure with its reason in err (never a secret). */
enum exchange_result token_exchange_once(struct runtime *rt, size_t cred, char **token,
                                         long *expires_in, char *err, size_t errlen);

#endif
