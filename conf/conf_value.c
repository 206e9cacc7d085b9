/* conf_value: single values (syntax, addresses, URLs), messages, the table-driven object reader. */
#include "conf/conf.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "conf/conf_priv.h"

/* ---- messages -------------------------------------------------------------------------------- */

static int conf_msgs_grow(struct conf_msgs *m, size_t need)
{
    size_t cap = m->cap != 0 ? m->cap : 256;
    char *p;

    if (m->len + need + 1 <= m->cap)
        return 0;
    while (cap < m->len + need + 1)
        cap *= 2;
    p = realloc(m->buf, cap);
    if (p == NULL) {
        m->oom = 1;
        return -1;
    }
    m->buf = p;
    m->cap = cap;
    return 0;
}

/* 1 when line (n bytes, no newline) is already one of m's lines. */
static int conf_msgs_has_line(const struct conf_msgs *m, const char *line, size_t n)
{
    size_t pos = 0;

    while (pos < m->len) {
        const char *nl = memchr(m->buf + pos, '\n', m->len - pos);
        size_t linelen = nl != NULL ? (size_t)(nl - (m->buf + pos)) : m->len - pos;

        if (linelen == n && memcmp(m->buf + pos, line, n) == 0)
            return 1;
        pos += linelen + 1;
    }
    return 0;
}

void conf_msgs_add(struct conf_msgs *m, const char *path, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    size_t n, i;
    int r;

    if (m == NULL)
        return;
    r = snprintf(line, sizeof line, "%s: ", path);
    if (r < 0)
        return;
    n = (size_t)r < sizeof line ? (size_t)r : sizeof line - 1;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    n = strlen(line);
    /* One problem, one line: whatever a message quotes must not break the format. */
    for (i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = ' ';
    /* Over the cap, count without looking for duplicates: that scan would make a fuzzed file
     * with a hundred thousand problems quadratic. */
    if (m->count >= CONF_MAX_MESSAGES) {
        m->dropped++;
        return;
    }
    if (conf_msgs_has_line(m, line, n))
        return;
    if (conf_msgs_grow(m, n + 1) != 0)
        return;
    memcpy(m->buf + m->len, line, n);
    m->len += n;
    m->buf[m->len++] = '\n';
    m->buf[m->len] = '\0';
    m->count++;
}

int conf_msgs_has_path(const struct conf_msgs *m, const char *path)
{
    size_t pos = 0, plen = strlen(path);

    while (pos < m->len) {
        const char *nl = memchr(m->buf + pos, '\n', m->len - pos);
        size_t linelen = nl != NULL ? (size_t)(nl - (m->buf + pos)) : m->len - pos;

        if (linelen > plen && memcmp(m->buf + pos, path, plen) == 0 && m->buf[pos + plen] == ':')
            return 1;
        pos += linelen + 1;
    }
    return 0;
}

int conf_msgs_any(const struct conf_msgs *m)
{
    return m->count > 0 || m->dropped > 0 || m->oom;
}

char *conf_msgs_take(struct conf_msgs *m)
{
    char *out;
    char tail[96];

    if (m->dropped > 0) {
        size_t n =
            (size_t)snprintf(tail, sizeof tail, "(%zu more problems not shown)\n", m->dropped);

        if (conf_msgs_grow(m, n) == 0) {
            memcpy(m->buf + m->len, tail, n + 1);
            m->len += n;
        }
    }
    if (m->oom && m->len == 0) {
        free(m->buf);
        out = strdup("out of memory\n");
    } else {
        out = m->buf;
    }
    memset(m, 0, sizeof *m);
    return out;
}

void conf_msgs_deinit(struct conf_msgs *m)
{
    free(m->buf);
    memset(m, 0, sizeof *m);
}

void conf_printable(const char *s, char *out, size_t outlen)
{
    size_t i, o = 0;

    if (outlen == 0)
        return;
    if (s == NULL)
        s = "";
    for (i = 0; s[i] != '\0' && o + 1 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];

        out[o++] = (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') ? '?' : (char)c;
    }
    if (s[i] != '\0' && outlen >= 4) {
        if (o > outlen - 4)
            o = outlen - 4;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* ---- syntax of single values ----------------------------------------------------------------- */

static int conf_is_upper_or_digit(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int conf_is_alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int conf_is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Apple's Key IDs and Team IDs: ten upper-case letters and digits. */
static int conf_apple_id_ok(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!conf_is_upper_or_digit(s[i]))
            return 0;
    return i == 10;
}

const char *conf_check_key_id(const char *s)
{
    /* Apple Business Manager shows its key IDs as UUIDs; which profile may use which form is
     * checked with the profile (credential_validate). */
    return conf_apple_id_ok(s) || conf_check_uuid(s) == NULL
               ? NULL
               : "expected a 10-character string of capital letters and digits "
                 "(the Key ID shown next to the key in App Store Connect)";
}

const char *conf_check_team_id(const char *s)
{
    return conf_apple_id_ok(s) ? NULL
                               : "expected a 10-character string of capital letters and digits "
                                 "(the Team ID)";
}

const char *conf_check_uuid(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                break;
        } else if (!conf_is_hex(s[i])) {
            break;
        }
    }
    if (i == 36 && s[i] == '\0')
        return NULL;
    return "expected a UUID such as 69a6de95-023f-47e3-e053-5b8c7c11a4d1 (the Issuer ID shown "
           "above the key list)";
}

const char *conf_check_identifier(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!conf_is_alnum(s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_')
            return "expected an identifier such as com.example.app (letters, digits, '.', '-' "
                   "and '_')";
    return i > 0 && i <= 255 ? NULL : "expected an identifier of 1 to 255 characters";
}

/* Scope entries are "METHOD /path?query" (docs/tokens.md, "app-store-connect"): an upper-case method, one space, a path. */
const char *conf_check_scope(const char *s)
{
    const char *p = s;

    while (*p >= 'A' && *p <= 'Z')
        p++;
    if (p == s || p[0] != ' ' || p[1] != '/')
        return "expected \"METHOD /path\" such as \"GET /v1/apps\" (upper-case method, one space, "
               "a path starting with '/')";
    for (p++; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return "expected \"METHOD /path\" with no spaces or control characters in the path";
    return NULL;
}

/* A credential's scope: App Store Connect entries, or the apple-business OAuth scope (which of
 * them the profile takes is checked with the profile). */
const char *conf_check_cred_scope(const char *s)
{
    if (strcmp(s, "business.api") == 0 || strcmp(s, "school.api") == 0)
        return NULL;
    return conf_check_scope(s);
}

const char *conf_check_origin(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return "expected a web origin such as https://example.com (no spaces)";
    return NULL;
}

const char *conf_check_env_name(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!conf_is_alnum(s[i]) && s[i] != '_')
            break;
    if (s[i] == '\0' && i > 0 && i <= 255 && !(s[0] >= '0' && s[0] <= '9'))
        return NULL;
    return "expected the name of an environment variable (letters, digits and '_')";
}

/* Route prefixes are compared with the request path as sent; a space, '?' or '#' in one would
 * never match anything a client can send. */
const char *conf_check_path_prefix(const char *s)
{
    if (s[0] != '/')
        return "must start with '/'";
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || *s >= 0x7f || *s == '?' || *s == '#')
            return "expected a path starting with '/' without spaces, '?' or '#'";
    return NULL;
}

const char *conf_check_credential_name(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!conf_is_alnum(s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_')
            break;
    if (s[i] == '\0' && i > 0 && i <= 64)
        return NULL;
    return "credential names use letters, digits, '.', '-' and '_' (1 to 64 characters)";
}

/* A DNS name (RFC 1123 labels; '_' tolerated as private networks use it) or IPv4 address. */
static int conf_hostname_ok(const char *s, size_t n)
{
    size_t i, label = 0;

    if (n == 0 || n > 253)
        return 0;
    for (i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        if (!conf_is_alnum(s[i]) && s[i] != '-' && s[i] != '_')
            return 0;
        if (++label > 63)
            return 0;
    }
    return label > 0;
}

static int conf_ipv6_ok(const char *s, size_t n)
{
    char buf[64];
    struct in6_addr a;

    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &a) == 1;
}

const char *conf_check_route_host(const char *s)
{
    return conf_hostname_ok(s, strlen(s)) ? NULL
                                          : "expected a host name without a port, such as "
                                            "api.example.com";
}

static int conf_port_parse(const char *s, size_t n, int allow0, int *port, char *why,
                           size_t whylen);

/* A name a request's Host may give for the proxy: a DNS name or an IPv4 address, no port. */
const char *conf_check_server_name(const char *s)
{
    return conf_hostname_ok(s, strlen(s)) ? NULL
                                          : "expected a host name without a port, such as "
                                            "proxy.example.internal";
}

/* An origin as browsers send it in Origin (RFC 6454 6.1): "http" or "https", "://", a host
 * name or bracketed IPv6 address, an optional port, nothing after it. "null" is refused: it
 * is what every sandboxed frame and file: page sends, so allowing it would allow them all. */
const char *conf_check_allowed_origin(const char *s)
{
    static const char want[] = "expected a web origin such as https://dashboard.example.com "
                               "(http or https, a host, an optional port, no path)";
    const char *host, *end;
    size_t n;

    if (strcmp(s, "null") == 0)
        return "\"null\" is the origin of every sandboxed frame and local file: it cannot be "
               "allowed";
    if (strncmp(s, "https://", 8) == 0)
        host = s + 8;
    else if (strncmp(s, "http://", 7) == 0)
        host = s + 7;
    else
        return want;
    if (host[0] == '[') {
        end = strchr(host, ']');
        if (end == NULL || !conf_ipv6_ok(host + 1, (size_t)(end - host - 1)))
            return want;
        end++;
    } else {
        n = strcspn(host, ":");
        if (!conf_hostname_ok(host, n))
            return want;
        end = host + n;
    }
    if (*end == ':') {
        int port;
        char why[80];
        n = strlen(end + 1);
        if (conf_port_parse(end + 1, n, 0, &port, why, sizeof why) != 0)
            return want;
        end += 1 + n;
    }
    if (*end != '\0')
        return want;
    for (; *s != '\0'; s++)
        if (*s >= 'A' && *s <= 'Z')
            return "expected an origin in lower case, as browsers send it";
    return NULL;
}

/* Parses a decimal port; -1 with why on anything else. */
static int conf_port_parse(const char *s, size_t n, int allow0, int *port, char *why, size_t whylen)
{
    char shown[CONF_SHOWN], tmp[CONF_SHOWN];
    long v = 0;
    size_t i;

    for (i = 0; i < n && i < 6; i++) {
        if (s[i] < '0' || s[i] > '9')
            break;
        v = v * 10 + (s[i] - '0');
    }
    if (n == 0 || i != n || v > 65535 || (v == 0 && !allow0)) {
        snprintf(tmp, sizeof tmp, "%.*s", (int)(n < sizeof tmp - 1 ? n : sizeof tmp - 1), s);
        conf_printable(tmp, shown, sizeof shown);
        snprintf(why, whylen, "bad port \"%s\" (expected %s-65535)", shown, allow0 ? "0" : "1");
        return -1;
    }
    *port = (int)v;
    return 0;
}

int conf_addr_parse_why(const char *text, struct conf_addr *addr, int allow_port0, char *why,
                        size_t whylen)
{
    const char *host, *colon;
    size_t hostlen;
    int port = 0;

    memset(addr, 0, sizeof *addr);
    if (text == NULL || text[0] == '\0') {
        snprintf(why, whylen, "empty address; expected host:port");
        return -1;
    }
    if (text[0] == '[') {
        const char *close = strchr(text, ']');

        if (close == NULL) {
            snprintf(why, whylen, "missing ']' after an IPv6 address; expected [v6]:port");
            return -1;
        }
        host = text + 1;
        hostlen = (size_t)(close - host);
        if (!conf_ipv6_ok(host, hostlen)) {
            snprintf(why, whylen, "bad IPv6 address in brackets");
            return -1;
        }
        if (close[1] != ':') {
            snprintf(why, whylen, "expected [v6]:port (no port after ']')");
            return -1;
        }
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL) {
            snprintf(why, whylen, "expected host:port (no port)");
            return -1;
        }
        host = text;
        hostlen = (size_t)(colon - text);
        if (memchr(text, ':', hostlen) != NULL) {
            snprintf(why, whylen, "IPv6 addresses go in brackets, e.g. [::1]:8080");
            return -1;
        }
        if (hostlen == 0) {
            snprintf(why, whylen, "empty host (use 0.0.0.0:PORT for every IPv4 address)");
            return -1;
        }
        if (!conf_hostname_ok(host, hostlen)) {
            snprintf(why, whylen, "bad host name or IPv4 address");
            return -1;
        }
    }
    if (conf_port_parse(colon + 1, strlen(colon + 1), allow_port0, &port, why, whylen) != 0)
        return -1;
    addr->text = strdup(text);
    addr->host = strndup(host, hostlen);
    addr->port = port;
    if (addr->text == NULL || addr->host == NULL) {
        conf_addr_deinit(addr);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

int conf_addr_parse(const char *text, struct conf_addr *addr, int allow_port0)
{
    char why[160];

    return conf_addr_parse_why(text, addr, allow_port0, why, sizeof why);
}

void conf_addr_deinit(struct conf_addr *addr)
{
    if (addr == NULL)
        return;
    free(addr->text);
    free(addr->host);
    free(addr->tls_cert_file);
    free(addr->tls_key_file);
    free(addr->tls_client_ca_file);
    conf_strings_free(addr->server_names, addr->nserver_names);
    memset(addr, 0, sizeof *addr);
}

int conf_addr_move_settings(struct conf_addr *dst, struct conf_addr *src)
{
    int had = src->tls_cert_file != NULL || src->nserver_names > 0;

    free(dst->tls_cert_file);
    free(dst->tls_key_file);
    free(dst->tls_client_ca_file);
    conf_strings_free(dst->server_names, dst->nserver_names);
    dst->tls_cert_file = src->tls_cert_file;
    dst->tls_key_file = src->tls_key_file;
    dst->tls_client_ca_file = src->tls_client_ca_file;
    dst->server_names = src->server_names;
    dst->nserver_names = src->nserver_names;
    src->tls_cert_file = src->tls_key_file = src->tls_client_ca_file = NULL;
    src->server_names = NULL;
    src->nserver_names = 0;
    return had;
}

void conf_strings_free(char **v, size_t n)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Parses "https://name[:port]" with at most a trailing "/". Returns NULL with *host (malloc'd,
 * lower case, IPv6 without brackets) and *port, or what is wrong. The proxy forwards the
 * request path unchanged, so a path here would be silently ignored: it is refused instead. */
const char *conf_upstream_parse(const char *url, char **host, int *port, char *why, size_t whylen)
{
    const char *auth, *end, *h, *portp = NULL;
    size_t authlen, hlen, i;

    *host = NULL;
    *port = 443;
    if (strncasecmp(url, "https://", 8) != 0) {
        if (strncasecmp(url, "http://", 7) == 0)
            return "only https upstreams are supported: the token must travel over verified "
                   "TLS (write https://)";
        if (strstr(url, "://") != NULL)
            return "only https upstreams are supported (expected https://host[:port])";
        return "expected https://host[:port]";
    }
    auth = url + 8;
    end = auth + strcspn(auth, "/?#");
    authlen = (size_t)(end - auth);
    if (memchr(auth, '@', authlen) != NULL)
        return "user information (user@) is not allowed in an upstream";
    if (*end == '?')
        return "a query is not allowed in an upstream (expected https://host[:port])";
    if (*end == '#')
        return "a fragment is not allowed in an upstream (expected https://host[:port])";
    if (*end == '/' && end[1] != '\0')
        return "a path is not allowed in an upstream: requests keep their own path (use "
               "path_prefix and strip_prefix to shape it)";
    if (authlen == 0)
        return "empty host in upstream (expected https://host[:port])";
    if (auth[0] == '[') {
        const char *close = memchr(auth, ']', authlen);

        if (close == NULL)
            return "missing ']' after an IPv6 address in upstream";
        h = auth + 1;
        hlen = (size_t)(close - h);
        if (!conf_ipv6_ok(h, hlen))
            return "bad IPv6 address in upstream";
        if (close + 1 < end) {
            if (close[1] != ':')
                return "expected https://[v6]:port";
            portp = close + 2;
        }
    } else {
        const char *colon = memchr(auth, ':', authlen);

        h = auth;
        hlen = colon != NULL ? (size_t)(colon - auth) : authlen;
        if (hlen == 0)
            return "empty host in upstream (expected https://host[:port])";
        if (!conf_hostname_ok(h, hlen))
            return "bad host name in upstream";
        if (colon != NULL)
            portp = colon + 1;
    }
    if (portp != NULL && conf_port_parse(portp, (size_t)(end - portp), 0, port, why, whylen) != 0)
        return why;
    *host = strndup(h, hlen);
    if (*host == NULL)
        return "out of memory";
    /* Host names compare case-insensitively (RFC 4343); one spelling keeps SNI and Host equal. */
    for (i = 0; i < hlen; i++)
        if ((*host)[i] >= 'A' && (*host)[i] <= 'Z')
            (*host)[i] = (char)((*host)[i] - 'A' + 'a');
    return NULL;
}

/* ---- tables: each key, how it is read and where it goes -------------------------------------- */

void conf_oom(struct conf_ctx *ctx)
{
    ctx->errs->oom = 1;
}

void conf_path_key(char *out, size_t outlen, const char *parent, const char *key)
{
    char k[CONF_SHOWN];

    conf_printable(key, k, sizeof k);
    if (parent[0] != '\0')
        snprintf(out, outlen, "%s.%s", parent, k);
    else
        snprintf(out, outlen, "%s", k);
}

void conf_path_index(char *out, size_t outlen, const char *parent, size_t i)
{
    snprintf(out, outlen, "%s[%zu]", parent, i);
}

/* Levenshtein distance for "did you mean"; SIZE_MAX for long strings. */
static size_t conf_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j;
    size_t prev[65], cur[65];

    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (j = 0; j <= lb; j++)
        prev[j] = j;
    for (i = 1; i <= la; i++) {
        cur[0] = i;
        for (j = 1; j <= lb; j++) {
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);

            cur[j] = del < ins ? del : ins;
            if (sub < cur[j])
                cur[j] = sub;
        }
        memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
    }
    return prev[lb];
}

static const struct conf_field *conf_field_find(const struct conf_field *fields, size_t n,
                                                const char *name)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(fields[i].name, name) == 0)
            return &fields[i];
    return NULL;
}

static void conf_unknown_key(struct conf_ctx *ctx, const char *path, const char *name,
                             const struct conf_field *fields, size_t n)
{
    char known[512];
    size_t i, best = SIZE_MAX, bi = 0, used = 0;

    /* Past the message cap nothing is printed; skip the work too (a fuzzed file may hold
     * thousands of unknown keys). */
    if (ctx->errs->count >= CONF_MAX_MESSAGES) {
        ctx->errs->dropped++;
        return;
    }
    for (i = 0; i < n; i++) {
        size_t d = conf_distance(name, fields[i].name);
        size_t nl = strlen(name), fl = strlen(fields[i].name);

        /* "max_body" for "max_body_bytes": a shortened name is as good as a typo. */
        if (nl >= 4 && fl > nl && strncmp(name, fields[i].name, nl) == 0 && d > 1)
            d = 2;
        if (d < best) {
            best = d;
            bi = i;
        }
    }
    if (best <= 2 && best < strlen(fields[bi].name) && best < strlen(name)) {
        conf_msgs_add(ctx->errs, path, "unknown key (did you mean \"%s\"?)", fields[bi].name);
        return;
    }
    known[0] = '\0';
    for (i = 0; i < n && used < sizeof known; i++) {
        int r =
            snprintf(known + used, sizeof known - used, "%s%s", i > 0 ? ", " : "", fields[i].name);

        if (r < 0)
            break;
        used += (size_t)r;
    }
    conf_msgs_add(ctx->errs, path, "unknown key (known keys: %s)", known);
}

struct conf_name_ix {
    const char *name;
    size_t ix;
};

static int conf_name_ix_cmp(const void *a, const void *b)
{
    const struct conf_name_ix *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    if (c != 0)
        return c;
    return x->ix < y->ix ? -1 : x->ix > y->ix;
}

size_t conf_count_children(const cJSON *item)
{
    const cJSON *c;
    size_t n = 0;

    for (c = item->child; c != NULL; c = c->next)
        n++;
    return n;
}

/* cJSON keeps every member of an object, duplicates included, and lookups return the first:
 * a second "key_id" would be silently ignored. Marks every member whose name appeared earlier
 * in the same object. Sorting keeps this O(n log n) for large (fuzzed) objects. Returns a
 * malloc'd array of n flags, or NULL when there are fewer than two members or no memory. */
unsigned char *conf_dup_flags(struct conf_ctx *ctx, const cJSON *obj, size_t n)
{
    struct conf_name_ix *v;
    unsigned char *flags;
    const cJSON *c;
    size_t i;

    if (n < 2)
        return NULL;
    v = malloc(n * sizeof *v);
    flags = calloc(n, 1);
    if (v == NULL || flags == NULL) {
        free(v);
        free(flags);
        conf_oom(ctx);
        return NULL;
    }
    for (c = obj->child, i = 0; c != NULL && i < n; c = c->next, i++) {
        v[i].name = c->string != NULL ? c->string : "";
        v[i].ix = i;
    }
    qsort(v, n, sizeof *v, conf_name_ix_cmp);
    for (i = 1; i < n; i++)
        if (strcmp(v[i].name, v[i - 1].name) == 0)
            flags[v[i].ix] = 1;
    free(v);
    return flags;
}

/* The table-driven pass over one object: duplicate and unknown keys are reported, every known
 * key goes to its setter, in the order written. */
void conf_object_apply(struct conf_ctx *ctx, const cJSON *obj, const char *path,
                       const struct conf_field *fields, size_t nfields, void *base)
{
    size_t n = conf_count_children(obj), i = 0;
    unsigned char *dup = conf_dup_flags(ctx, obj, n);
    const cJSON *item;

    for (item = obj->child; item != NULL; item = item->next, i++) {
        char sub[CONF_PATH_MAX];
        const char *name = item->string != NULL ? item->string : "";
        const struct conf_field *f;

        conf_path_key(sub, sizeof sub, path, name);
        if (dup != NULL && dup[i]) {
            conf_msgs_add(ctx->errs, sub, "duplicate key");
            continue;
        }
        f = conf_field_find(fields, nfields, name);
        if (f == NULL) {
            conf_unknown_key(ctx, sub, name, fields, nfields);
            continue;
        }
        f->set(ctx, item, sub, base, f);
    }
    free(dup);
}

void conf_number_store(void *dst, enum conf_store store, double v)
{
    switch (store) {
    case CONF_STORE_INT:
        *(int *)dst = (int)v;
        break;
    case CONF_STORE_LONG:
        *(long *)dst = (long)v;
        break;
    case CONF_STORE_SIZE:
        *(size_t *)dst = (size_t)v;
        break;
    case CONF_STORE_ULL:
        *(unsigned long long *)dst = (unsigned long long)v;
        break;
    case CONF_STORE_MS:
        *(long *)dst = (long)(v * 1000.0 + 0.5);
        break;
    }
}

void conf_set_number(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f)
{
    const char *unit = f->unit != NULL ? f->unit : "";
    double v;

    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble)) {
        if (f->store == CONF_STORE_MS)
            conf_msgs_add(ctx->errs, path, "expected a number of seconds");
        else
            conf_msgs_add(ctx->errs, path, "expected a %s integer%s",
                          f->min >= 1 ? "positive" : "non-negative", unit);
        return;
    }
    v = item->valuedouble;
    if (f->store == CONF_STORE_MS) {
        if (v < f->min)
            conf_msgs_add(ctx->errs, path, "must be at least %g%s", f->min, unit);
        else if (v > f->max)
            conf_msgs_add(ctx->errs, path, "must be at most %g%s", f->max, unit);
        else
            conf_number_store((char *)base + f->offset, f->store, v);
        return;
    }
    /* 2^63 bounds the cast below; anything that large is out of every range anyway. */
    if (v < 0 || v >= 9.2e18 || v != (double)(long long)v) {
        conf_msgs_add(ctx->errs, path, "expected a %s integer%s",
                      f->min >= 1 ? "positive" : "non-negative", unit);
        return;
    }
    if (v < f->min)
        conf_msgs_add(ctx->errs, path, "must be at least %.0f%s", f->min, unit);
    else if (v > f->max)
        conf_msgs_add(ctx->errs, path, "must be at most %.0f%s", f->max, unit);
    else
        conf_number_store((char *)base + f->offset, f->store, v);
}

/* Checks a string value; returns it, or NULL after reporting what is wrong. */
const char *conf_string_value(struct conf_ctx *ctx, const cJSON *item, const char *path,
                              const char *(*check)(const char *s))
{
    const char *why;

    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        conf_msgs_add(ctx->errs, path, "expected a string");
        return NULL;
    }
    if (item->valuestring[0] == '\0') {
        conf_msgs_add(ctx->errs, path, "expected a non-empty string");
        return NULL;
    }
    if (check != NULL && (why = check(item->valuestring)) != NULL) {
        char shown[CONF_SHOWN];

        conf_printable(item->valuestring, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path, "%s (got \"%s\")", why, shown);
        return NULL;
    }
    return item->valuestring;
}

static char *conf_strdup_lower(const char *s, int lower)
{
    char *d = strdup(s), *p;

    if (d != NULL && lower)
        for (p = d; *p != '\0'; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    return d;
}

void conf_set_string(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f)
{
    char **dst = (char **)((char *)base + f->offset);
    const char *s = conf_string_value(ctx, item, path, f->check);

    if (s == NULL)
        return;
    free(*dst);
    *dst = conf_strdup_lower(s, f->lower);
    if (*dst == NULL)
        conf_oom(ctx);
}

/* Keeps a pointer into the JSON tree (key sources: read once, never copied). */
void conf_set_borrowed(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                       const struct conf_field *f)
{
    const char **dst = (const char **)((char *)base + f->offset);

    *dst = conf_string_value(ctx, item, path, f->check);
}

void conf_set_strings(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f)
{
    char ***dst = (char ***)((char *)base + f->offset);
    size_t *count = (size_t *)((char *)base + f->count_offset);
    const cJSON *c;
    char **v;
    size_t n, i = 0, bad = 0;

    if (!cJSON_IsArray(item)) {
        conf_msgs_add(ctx->errs, path, "expected an array of strings");
        return;
    }
    n = conf_count_children(item);
    if (n > CONF_MAX_LIST) {
        conf_msgs_add(ctx->errs, path, "at most %d entries", CONF_MAX_LIST);
        return;
    }
    v = calloc(n + 1, sizeof *v);
    if (v == NULL) {
        conf_oom(ctx);
        return;
    }
    for (c = item->child; c != NULL; c = c->next, i++) {
        char sub[CONF_PATH_MAX];
        const char *s;

        conf_path_index(sub, sizeof sub, path, i);
        s = conf_string_value(ctx, c, sub, f->check);
        if (s == NULL) {
            bad++;
            continue;
        }
        v[i] = strdup(s);
        if (v[i] == NULL) {
            conf_oom(ctx);
            bad++;
        }
    }
    if (bad > 0) {
        for (i = 0; i < n; i++)
            free(v[i]);
        free(v);
        return;
    }
    *dst = v;
    *count = n;
}

void conf_set_bool(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                   const struct conf_field *f)
{
    if (!cJSON_IsBool(item)) {
        conf_msgs_add(ctx->errs, path, "expected true or false");
        return;
    }
    *(int *)((char *)base + f->offset) = cJSON_IsTrue(item) ? 1 : 0;
}

int conf_array_begin(struct conf_ctx *ctx, const cJSON *item, const char *path, size_t max,
                     const char *unit, const char *not_array, const char *empty, size_t *n)
{
    if (!cJSON_IsArray(item)) {
        conf_msgs_add(ctx->errs, path, "%s", not_array);
        return -1;
    }
    *n = conf_count_children(item);
    if (*n == 0) {
        conf_msgs_add(ctx->errs, path, "%s", empty);
        return -1;
    }
    if (*n > max) {
        conf_msgs_add(ctx->errs, path, "at most %zu %s", max, unit);
        return -1;
    }
    return 0;
}

int conf_named_member(struct conf_ctx *ctx, const cJSON *c, const char *path,
                      const unsigned char *dup, size_t i, const char *(*check)(const char *s),
                      char *sub, size_t sublen)
{
    char shown[CONF_SHOWN];
    const char *name = c->string != NULL ? c->string : "";
    const char *why = check(name);

    conf_path_key(sub, sublen, path, name);
    if (dup != NULL && dup[i]) {
        conf_msgs_add(ctx->errs, sub, "duplicate key");
        return -1;
    }
    if (why != NULL) {
        conf_printable(name, shown, sizeof shown);
        conf_msgs_add(ctx->errs, sub, "%s (got \"%s\")", why, shown);
    }
    if (!cJSON_IsObject(c)) {
        conf_msgs_add(ctx->errs, sub, "expected an object");
        return -1;
    }
    return 0;
}
