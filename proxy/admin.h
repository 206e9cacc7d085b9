/* admin: the admin endpoints (/healthz, /readyz, /metrics) on admin_listen, served by the main
 * thread's loop and never on a proxy listener. */
#ifndef AAP_PROXY_ADMIN_H
#define AAP_PROXY_ADMIN_H

#include <stddef.h>

struct server;
struct admin;

/* Listens on the configuration's admin_listen (none when it is null). Prints
 * "apple-auth-proxy: admin listening on HOST:PORT" on stderr. Returns NULL with err on failure;
 * *disabled is set when no admin listener is configured (and NULL is returned without error). */
struct admin *admin_new(struct server *s, int *disabled, char *err, size_t errlen);
void admin_free(struct admin *a);

#endif
