/* client: one client connection and the exchange it is in (see the diagram in client.c). */
#ifndef AAP_PROXY_CLIENT_H
#define AAP_PROXY_CLIENT_H

#include <sys/socket.h>
#include "proxy/worker.h"

#include <openssl/ssl.h>

/* The connections a worker serves (worker.h): accept, drain, free, clean up. */
extern const struct worker_conn_ops client_conn_ops;

/* The worker's wake_cb: an access-token exchange ended; requests waiting for its token go on
 * (or get its failure). */
void client_tokens_ready(struct worker *w);

#endif
