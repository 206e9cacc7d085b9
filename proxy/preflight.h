/* preflight: what serve tries before it accepts traffic, done without side effects so that
 * `check` runs exactly the same checks: the exposure rule, every listener's address and TLS
 * files (certificate, key, client CAs), the admin address, and the access log it will open for
 * writing. serve runs them first and then does the real thing. */
#ifndef AAP_PROXY_PREFLIGHT_H
#define AAP_PROXY_PREFLIGHT_H

#include <stddef.h>
#include <time.h>
#include <netdb.h>
#include <sys/socket.h>
#include <openssl/ssl.h>

#include "conf/conf.h"

enum preflight_outcome {
    PREFLIGHT_OK,      /* tried, and serve would get past it */
    PREFLIGHT_WARN,    /* serve would start, but something deserves attention */
    PREFLIGHT_FAIL,    /* serve would refuse to start */
    PREFLIGHT_UNTRIED  /* could not be tried without side effects */
};

/* Receives each finding: what is the configuration's name for the thing ("listen[0]",
 * "access_log", ...), msg says what was found. Both strings live only for the call. */
typedef void (*preflight_report_fn)(void *arg, enum preflight_outcome outcome, const char *what,
                                    const char *msg);

#define PREFLIGHT_BIND 0x1 /* bind and release every address (without it: resolve only) */

/* Runs every check on conf and reports each finding. Returns the number of failures; *conf_errors
 * (when not NULL) gets how many of them are the configuration's own (the exposure rule) rather
 * than the machine's (files, addresses). */
size_t preflight_run(const struct conf *conf, unsigned flags, preflight_report_fn report,
                     void *arg, size_t *conf_errors);

/* The server context of HTTPS listener i of conf: TLS 1.2+, ALPN http/1.1, session tickets
 * under the keys of tickets (which must outlive the context), and with a client_ca_file,
 * client certificates verified against those CAs. Returns NULL with a message naming the
 * listener in err. The caller owns the result. */
struct tls_tickets;
SSL_CTX *preflight_listener_tls(const struct conf *conf, size_t i, struct tls_tickets *tickets,
                                char *err, size_t errlen);

/* Resolves a listen address the way serve binds it (passive, TCP). Returns getaddrinfo's
 * status; on 0 the caller frees *res with freeaddrinfo. */
int preflight_resolve(const struct conf_addr *a, struct addrinfo **res);

/* A listening socket like serve's (SO_REUSEADDR, SO_REUSEPORT, v6-only for IPv6) bound to ss
 * (of family ai_family) and listening. Returns the descriptor, or -1 with errno set. */
int preflight_listen_socket(int family, const struct sockaddr_storage *ss, socklen_t sslen);

/* The expiry (notAfter) of the context's own certificate; 0 when it has none. */
time_t preflight_cert_expiry(SSL_CTX *ctx);
/* The earliest expiry among the certificates of a PEM file (a client CA bundle); 0 when it
 * cannot be read or holds none. */
time_t preflight_file_expiry(const char *path);

#endif
