/* tls_tickets: the session ticket keys of the HTTPS listeners, shared by every worker and kept
 * across reloads, rotated on a schedule.
 *
 *   key 0 (current): encrypts new tickets; decrypts
 *   key 1 (previous): decrypts; a ticket under it is renewed (a new one under the current key)
 *   TLS 1.3: every resumption is given a new ticket (tickets are for one use)
 *   rotate: previous <- current, current <- fresh random key
 *
 * A ticket is therefore accepted for one to two rotation periods, and a key never lives longer
 * than two. The keys exist only in this process's memory and are wiped when replaced. */
#ifndef AAP_PROXY_TLS_TICKETS_H
#define AAP_PROXY_TLS_TICKETS_H

#include <stddef.h>
#include <openssl/ssl.h>

/* How often the keys rotate; also the session lifetime the listeners announce. */
#define TLS_TICKETS_ROTATE_SECONDS 3600

struct tls_tickets;

/* A store with a fresh current key and no previous one. NULL with err on failure. */
struct tls_tickets *tls_tickets_new(char *err, size_t errlen);
/* Wipes the keys. The contexts attached must be freed first (or outlive nothing). NULL: no-op. */
void tls_tickets_free(struct tls_tickets *t);
/* Makes a fresh current key, keeping the current one as the previous. Thread-safe against the
 * workers' handshakes. Returns 0, or -1 (the keys stay as they were) when no randomness. */
int tls_tickets_rotate(struct tls_tickets *t);
/* Makes ctx (a listener's server context) encrypt and decrypt its session tickets with the
 * store's keys. t must outlive ctx. Returns 0 or -1. */
int tls_tickets_attach(struct tls_tickets *t, SSL_CTX *ctx);

#endif
