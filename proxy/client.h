/* client: one client connection and the exchange it is in (see the diagram in client.c). */
#ifndef AAP_PROXY_CLIENT_H
#define AAP_PROXY_CLIENT_H

#include <sys/socket.h>
#include "proxy/worker.h"

#include <openssl/ssl.h>

/* Takes the accepted socket (closed on failure). tls: the listener's server context for HTTPS
 * listeners, NULL for plain HTTP. listener: its index in the configuration's listen list.
 * Returns 0 or -1. */
int client_new(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
               SSL_CTX *tls, size_t listener);

/* Draining: the connection closes now if it is idle, else after its current exchange. */
void client_drain(struct wclient *wc);

/* Frees a client of a stopped worker (its upstream connection is closed). */
void client_free_now(struct wclient *wc);

/* The worker's wake_cb: an access-token exchange ended; requests waiting for its token go on
 * (or get its failure). */
void client_tokens_ready(struct worker *w);

/* Frees the worker's spare per-request state (after every client is freed). */
void client_worker_cleanup(struct worker *w);

#endif
