/* route: choosing the configured route for a request by host and path prefix. */
#ifndef AAP_PROXY_ROUTE_H
#define AAP_PROXY_ROUTE_H

#include <stddef.h>
#include "conf/conf.h"

enum route_result {
    ROUTE_FOUND,
    ROUTE_NONE,          /* 404: nothing matches the path */
    ROUTE_FOREIGN_HOST   /* 403: an absolute-form target names a host no route serves */
};

/* host: the request's host without port (from an absolute-form target when absolute is set,
 * else the Host header; may be NULL for HTTP/1.0). path: the path, without the query.
 * Routes are tried in order; the first whose host (if it has one) and path prefix match wins.
 * For absolute-form targets a route without `host` matches only its own upstream's name, so a
 * token can never be sent to a host outside the configuration. */
enum route_result route_find(const struct conf *conf, const char *host, size_t host_len,
                             int absolute, const char *path, size_t path_len, size_t *route);

/* Splits "name[:port]" or "[v6][:port]" into the name (brackets kept off). */
void route_host_name(const char *host, size_t len, const char **name, size_t *name_len);

#endif
