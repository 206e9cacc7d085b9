/* route: choosing the configured route for a request by host and path prefix. */
#include "proxy/route.h"

#include <string.h>
#include <strings.h>

static int host_eq(const char *a, size_t alen, const char *b)
{
    return b != NULL && strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

void route_host_name(const char *host, size_t len, const char **name, size_t *name_len)
{
    size_t i;
    if (len > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', len);
        *name = host + 1;
        *name_len = close ? (size_t)(close - host) - 1 : len - 1;
        return;
    }
    for (i = 0; i < len && host[i] != ':'; i++)
        ;
    *name = host;
    *name_len = i;
}

enum route_result route_find(const struct conf *conf, const char *host, size_t host_len,
                             int absolute, const char *path, size_t path_len, size_t *route)
{
    size_t i;
    int known = 0;
    for (i = 0; i < conf->nroutes; i++) {
        const struct conf_route *r = &conf->routes[i];
        size_t plen = strlen(r->path_prefix);
        if (absolute) {
            int match = r->host ? host_eq(host, host_len, r->host)
                                : host_eq(host, host_len, r->upstream_host);
            if (!match)
                continue;
            known = 1;
        } else if (r->host) {
            if (host == NULL || !host_eq(host, host_len, r->host))
                continue;
        }
        if (path_len >= plen && memcmp(path, r->path_prefix, plen) == 0) {
            *route = i;
            return ROUTE_FOUND;
        }
    }
    return absolute && !known ? ROUTE_FOREIGN_HOST : ROUTE_NONE;
}
