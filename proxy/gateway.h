/* gateway: client identities, per-client policy, rate limits and Apple's quota, for a proxy
 * shared by a team. Decisions over the configuration and the live table (proxy/live.h); no I/O. */
#ifndef AAP_PROXY_GATEWAY_H
#define AAP_PROXY_GATEWAY_H

#include <stddef.h>
#include <sys/socket.h>

#include "conf/conf.h"
#include "proxy/http1.h"
#include "proxy/live.h"

/* The outcome of a gateway check: code NULL means allowed; otherwise the proxy error
 * (http_error.h) to answer, its detail, and retry_after seconds for 429s (0: none). */
struct gateway_verdict {
    const char *code;
    char detail[200];
    long retry_after;
};

/* Identifies the client of a request when clients are configured: a verified TLS client
 * certificate's subject (tls_subject, NULL when none), else Proxy-Authorization "Bearer SECRET"
 * or "Basic base64(NAME:SECRET)" (NAME, when given, must be the client's). Secrets are hashed
 * with SHA-256 and compared in constant time against every client. Then the source address
 * must be inside the client's allow_cidrs. *client is NULL when no clients are configured. */
void gateway_identify(const struct conf *conf, const struct http1_msg *m, const char *tls_subject,
                      const struct sockaddr *peer, const struct conf_client **client,
                      struct gateway_verdict *v);

/* Whether the client may send METHOD PATH through route (its credentials and allow rules). */
void gateway_authorize(const struct conf *conf, const struct conf_client *client,
                       const char *method, size_t method_len, const char *path, size_t path_len,
                       size_t route, struct gateway_verdict *v);

/* The client's rate (its entry in the live table; cl its configuration): takes one request
 * from its bucket, or sets a 429 verdict with Retry-After when it is empty. */
void gateway_rate_take(struct live_client *bucket, const struct conf_client *cl, double now,
                       struct gateway_verdict *v);
/* The same with the client's rate and burst divided by `replicas` (shared state without
 * Redis: each replica keeps its share; the burst stays at least 1). */
void gateway_rate_take_share(struct live_client *bucket, const struct conf_client *cl,
                             int replicas, double now, struct gateway_verdict *v);
/* The verdict for a request the rate refused, wait seconds before one would be allowed (used
 * for decisions made elsewhere: proxy/shared.h). */
void gateway_rate_refuse(const struct conf_client *cl, double wait, struct gateway_verdict *v);

/* Apple's quota for the route's credential (quota: that credential's entry in the live table):
 * refuses (429) while Apple's own Retry-After runs, and, when the credential has a
 * quota_reserve, once Apple's remaining count has fallen to it, for clients without priority. */
void gateway_quota_check(const struct conf *conf, const struct live_cred *quota,
                         const struct conf_client *client, size_t route, double now,
                         struct gateway_verdict *v);

/* The longest rest an Apple Retry-After gets at once. App Store Connect's quota is counted per
 * rolling hour, so no genuine answer asks for longer; a longer or garbled one (a delta of days, a
 * far-future date) would otherwise take the credential out of service for every client until
 * then. After this rest one request goes out, and a new 429 starts a new rest. */
#define GATEWAY_RETRY_AFTER_MAX_SECONDS 3600

/* Parses Retry-After as Apple sends it: delta seconds, an HTTP-date, or (App Store Server API)
 * epoch milliseconds. Returns the absolute Unix time it names, at most
 * GATEWAY_RETRY_AFTER_MAX_SECONDS after now (*capped, when not NULL, says whether it was cut
 * to that), or -1 when it is unreadable. */
double gateway_parse_retry_after(const char *value, size_t len, double now, int *capped);

/* The SHA-256 of secret as lower-case hex (65 bytes with the NUL): for `client-key`. */
void gateway_hash_hex(const char *secret, size_t len, char out[65]);

/* The scope entries for (client, route) under "client_scopes": "GET <path_prefix>" for each of
 * the client's rules when all of them allow only GET and HEAD; NULL (no client scope)
 * otherwise. The list is malloc'd (entries too); free with gateway_scope_free. */
char **gateway_client_scope(const struct conf *conf, size_t client, size_t route, size_t *n);
void gateway_scope_free(char **scope, size_t n);

#endif
