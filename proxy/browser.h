/* browser: the browser rule, which keeps web pages (and DNS rebinding) from using the proxy.
 * A pure decision on a parsed request head: no sockets, so it is unit-tested and fuzzed. */
#ifndef AAP_PROXY_BROWSER_H
#define AAP_PROXY_BROWSER_H

#include <stddef.h>
#include <sys/socket.h>

#include "conf/conf.h"
#include "proxy/http1.h"

enum browser_verdict {
    BROWSER_OK,
    BROWSER_MISDIRECTED, /* 421: an origin-form request whose Host does not name the proxy */
    BROWSER_FORBIDDEN,   /* 403: sent by a web page whose origin is not in allowed_origins */
    BROWSER_NEED_LOCAL   /* Host is an IP address that only the connection's own address can
                            vouch for: call again with local set */
};

/* Checks m (a complete request head) against the browser rule of docs/security.md.
 * listener: the index in conf->listen the connection was accepted on. in_tunnel: m came inside
 * an intercepted CONNECT, where Host must name the CONNECT's host instead (request.h's
 * request_plan_tunnel checks that), so only Origin and Sec-Fetch-Site are checked here.
 * local: the address the connection was accepted on, or NULL (asked for only when needed).
 * On a refusal, detail says why (it may quote the Host or Origin, cut short and made
 * printable). */
enum browser_verdict browser_check(const struct conf *conf, size_t listener, int in_tunnel,
                                   const struct http1_msg *m, const struct sockaddr *local,
                                   char *detail, size_t detail_len);

#endif
