/* browser: the browser rule, which keeps web pages (and DNS rebinding) from using the proxy.
 *
 * Loopback is no boundary against a browser on the same machine: any page can send requests
 * to 127.0.0.1, and a page whose own name it rebinds to 127.0.0.1 can even read the answers,
 * as the browser thinks they come from the page's own origin. Two checks close that:
 * - Host: the name a request addressed must be one of the proxy's own (a rebound page still
 *   sends its own name), or it is 421 (RFC 9110 15.5.20, Misdirected Request).
 * - Origin and Sec-Fetch-Site: every browser of the last years sends one of them with every
 *   request a page makes (Fetch, "Sec-Fetch-Site" and "Origin" headers); a request carrying
 *   either is a web page's, and is refused unless its origin is allowed. Sec-Fetch-Site: none
 *   is a navigation the user typed, not a page's. Sec-Fetch-Mode is not looked at: Node's
 *   fetch sends "sec-fetch-mode: cors" on every request without being a browser. */
#include "proxy/browser.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "proxy/route.h"

/* How much of a refused Host or Origin a detail repeats. */
#define BROWSER_SHOWN 100

static int name_eq(const char *a, size_t alen, const char *b)
{
    return b != NULL && strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

static int name_in(const char *name, size_t len, char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (name_eq(name, len, list[i]))
            return 1;
    return 0;
}

/* Browsers serialise an origin in lower case (RFC 6454 6.1), and allowed_origins is written
 * that way: compared byte for byte. */
static int origin_allowed(const struct conf *conf, const char *v, size_t n)
{
    for (size_t i = 0; i < conf->nallowed_origins; i++)
        if (strlen(conf->allowed_origins[i]) == n && memcmp(conf->allowed_origins[i], v, n) == 0)
            return 1;
    return 0;
}

/* The wildcard addresses a listener binds are not names of the proxy: browsers have sent
 * requests to 0.0.0.0 that reach local services. */
static int is_wildcard(const char *host)
{
    return strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
}

/* An IP literal: 1 and *family/addr when name is one (IPv6 only when it was bracketed). */
static int ip_literal(const char *name, size_t len, int bracketed, int *family, unsigned char *addr)
{
    char buf[INET6_ADDRSTRLEN + 1];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, name, len);
    buf[len] = '\0';
    if (bracketed) {
        *family = AF_INET6;
        return inet_pton(AF_INET6, buf, addr) == 1;
    }
    *family = AF_INET;
    return inet_pton(AF_INET, buf, addr) == 1;
}

static int local_is(const struct sockaddr *local, int family, const unsigned char *addr)
{
    if (local->sa_family == AF_INET && family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)local)->sin_addr, addr, 4) == 0;
    if (local->sa_family == AF_INET6 && family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)local)->sin6_addr, addr, 16) == 0;
    if (local->sa_family == AF_INET6 && family == AF_INET) {
        /* A v4 client on a dual-stack listener: ::ffff:a.b.c.d. */
        const unsigned char *a6 = ((const struct sockaddr_in6 *)local)->sin6_addr.s6_addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return memcmp(a6, mapped, 12) == 0 && memcmp(a6 + 12, addr, 4) == 0;
    }
    return 0;
}

/* Whether the Host value names this proxy. */
static enum browser_verdict host_verdict(const struct conf *conf, size_t listener,
                                         const char *host, size_t host_len,
                                         const struct sockaddr *local)
{
    const char *name;
    size_t len, i;
    int family = 0;
    unsigned char addr[16];
    int bracketed = host_len > 0 && host[0] == '[';
    route_host_name(host, host_len, &name, &len);
    if (!bracketed && len > 1 && name[len - 1] == '.')
        len--; /* "localhost." is the same name as "localhost" */
    if (len == 0)
        return BROWSER_MISDIRECTED;
    if (name_eq(name, len, "localhost"))
        return BROWSER_OK;
    int literal = ip_literal(name, len, bracketed, &family, addr);
    if (literal && family == AF_INET && addr[0] == 127)
        return BROWSER_OK;
    if (literal && family == AF_INET6 && memcmp(addr, &in6addr_loopback, 16) == 0)
        return BROWSER_OK;
    if (name_in(name, len, conf->server_names, conf->nserver_names))
        return BROWSER_OK;
    if (listener < conf->nlisten) {
        const struct conf_addr *l = &conf->listen[listener];
        if (name_in(name, len, l->server_names, l->nserver_names))
            return BROWSER_OK;
        if (l->host && !is_wildcard(l->host) && name_eq(name, len, l->host))
            return BROWSER_OK;
    }
    /* Tools that send Apple's own host name (a client configured for api.example.com whose
     * name resolves to the proxy) keep working: those names are the proxy's by design. */
    for (i = 0; i < conf->nroutes; i++)
        if (name_eq(name, len, conf->routes[i].upstream_host) ||
            name_eq(name, len, conf->routes[i].host))
            return BROWSER_OK;
    if (!literal)
        return BROWSER_MISDIRECTED;
    if (local == NULL)
        return BROWSER_NEED_LOCAL;
    return local_is(local, family, addr) ? BROWSER_OK : BROWSER_MISDIRECTED;
}

/* A header value for a detail: printable ASCII only, cut short. */
static void shown(char *out, size_t outlen, const char *v, size_t n)
{
    size_t i, k = 0;
    if (outlen == 0)
        return;
    for (i = 0; i < n && i < BROWSER_SHOWN && k + 1 < outlen; i++)
        out[k++] = (v[i] >= 0x20 && v[i] < 0x7f && v[i] != '"' && v[i] != '\\') ? v[i] : '?';
    out[k] = '\0';
}

enum browser_verdict browser_check(const struct conf *conf, size_t listener, int in_tunnel,
                                   const struct http1_msg *m, const struct sockaddr *local,
                                   char *detail, size_t detail_len)
{
    char what[BROWSER_SHOWN + 1];
    const struct http1_header *origin = NULL, *site = NULL;
    size_t norigin = 0, i;
    int from_page = 0;

    /* Origin-form only: absolute-form targets are routed by their own host, to configured
     * upstreams only, and CONNECT's authority-form is refused on its own. */
    if (!in_tunnel && m->has_host && m->target_len > 0 && m->target[0] == '/') {
        enum browser_verdict v = host_verdict(conf, listener, m->host, m->host_len, local);
        if (v == BROWSER_NEED_LOCAL)
            return v;
        if (v == BROWSER_MISDIRECTED) {
            shown(what, sizeof(what), m->host, m->host_len);
            snprintf(detail, detail_len,
                     "Host \"%s\" does not name this proxy (add it to server_names if it does)",
                     what);
            return v;
        }
    }
    for (i = 0; i < m->nheaders; i++) {
        const struct http1_header *h = &m->headers[i];
        if (http1_name_is(h->name, h->name_len, "origin")) {
            origin = h;
            norigin++;
        } else if (http1_name_is(h->name, h->name_len, "sec-fetch-site") &&
                   !(h->value_len == 4 && strncasecmp(h->value, "none", 4) == 0) && !from_page) {
            site = h; /* the first that names a page */
            from_page = 1;
        }
    }
    if (norigin > 1) {
        snprintf(detail, detail_len, "the request has more than one Origin");
        return BROWSER_FORBIDDEN;
    }
    if (origin) {
        if (!origin_allowed(conf, origin->value, origin->value_len)) {
            shown(what, sizeof(what), origin->value, origin->value_len);
            snprintf(detail, detail_len,
                     "requests from web pages are refused (Origin \"%s\" is not in "
                     "allowed_origins)", what);
            return BROWSER_FORBIDDEN;
        }
        /* A preflight asks permission for what the page will send next; the proxy grants
         * none (it never adds CORS headers), so it is not forwarded with a token either. */
        if (m->method_len == 7 && memcmp(m->method, "OPTIONS", 7) == 0 &&
            http1_find(m, "access-control-request-method") != NULL) {
            snprintf(detail, detail_len, "CORS preflight requests are not answered");
            return BROWSER_FORBIDDEN;
        }
        return BROWSER_OK;
    }
    if (from_page) {
        shown(what, sizeof(what), site->value, site->value_len);
        snprintf(detail, detail_len,
                 "requests from web pages are refused (Sec-Fetch-Site \"%s\" without an "
                 "allowed Origin)", what);
        return BROWSER_FORBIDDEN;
    }
    return BROWSER_OK;
}
