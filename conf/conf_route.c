/* conf_route: the "routes" list, its checks against the credentials, and default routes. */
#include "conf/conf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth/profile.h"
#include "conf/conf_priv.h"

/* Where each profile's API lives and the route it gets when "routes" is left out. */
static const struct conf_profile_route {
    const char *prefix;
    const char *upstream;
    const char *host;
    const char *other_host; /* a second host the same tokens work on */
} conf_profile_routes[PROFILE_COUNT] = {
    [PROFILE_APP_STORE_CONNECT] = {"/", "https://api.appstoreconnect.apple.com",
                                   "api.appstoreconnect.apple.com", NULL},
    [PROFILE_APP_STORE_SERVER] = {"/inApps/", "https://api.storekit.itunes.apple.com",
                                  "api.storekit.itunes.apple.com",
                                  "api.storekit-sandbox.itunes.apple.com"},
    [PROFILE_WEATHERKIT] = {"/api/v1/", "https://weatherkit.apple.com", "weatherkit.apple.com",
                            NULL},
    [PROFILE_ENTERPRISE] = {"/", "https://api.enterprise.developer.apple.com",
                            "api.enterprise.developer.apple.com", NULL},
    [PROFILE_MUSIC] = {"/", "https://api.music.apple.com", "api.music.apple.com", NULL},
    [PROFILE_APNS] = {"/3/device/", "https://api.push.apple.com", "api.push.apple.com",
                      "api.sandbox.push.apple.com"},
    [PROFILE_DEVICECHECK] = {"/", "https://api.devicecheck.apple.com", "api.devicecheck.apple.com",
                             "api.development.devicecheck.apple.com"},
    [PROFILE_MAPS] = {"/", "https://maps-api.apple.com", "maps-api.apple.com", NULL},
    /* Apple School Manager's API (scope "school.api") is the second host. */
    [PROFILE_APPLE_BUSINESS] = {"/", "https://api-business.apple.com", "api-business.apple.com",
                                "api-school.apple.com"},
};

void conf_route_deinit(struct conf_route *r)
{
    size_t i;

    free(r->path_prefix);
    free(r->host);
    free(r->strip_prefix);
    free(r->upstream);
    free(r->upstream_host);
    free(r->address_host);
    free(r->ca_file);
    for (i = 0; i < r->nscope; i++)
        free(r->scope[i]);
    free(r->scope);
    free(r->credential);
    memset(r, 0, sizeof *r);
}

/* ---- routes ---------------------------------------------------------------------------------- */

static void conf_set_protocol(struct conf_ctx *ctx, const cJSON *item, const char *path,
                              void *base, const struct conf_field *f)
{
    struct conf_route *r = base;
    const char *s = conf_string_value(ctx, item, path, NULL);
    char shown[CONF_SHOWN];

    (void)f;
    if (s == NULL)
        return;
    if (strcmp(s, "h2") == 0) {
        r->upstream_h2 = 1;
    } else if (strcmp(s, "http/1.1") == 0) {
        r->upstream_h2 = 0;
    } else {
        conf_printable(s, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path, "expected \"h2\" or \"http/1.1\" (got \"%s\")", shown);
    }
}

/* APNs speaks only HTTP/2; every other Apple API is reached over HTTP/1.1. */
static int conf_default_h2(const char *host)
{
    return host != NULL && (strcmp(host, "api.push.apple.com") == 0 ||
                            strcmp(host, "api.sandbox.push.apple.com") == 0);
}

static void conf_set_upstream(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                              const struct conf_field *f)
{
    struct conf_route *r = base;
    const char *s = conf_string_value(ctx, item, path, NULL);
    const char *why;
    char buf[160], shown[CONF_SHOWN];
    char *host = NULL;
    int port = 0;

    if (s == NULL)
        return;
    why = conf_upstream_parse(s, &host, &port, buf, sizeof buf);
    if (why != NULL) {
        conf_printable(s, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path, "%s (got \"%s\")", why, shown);
        return;
    }
    r->upstream = strdup(s);
    r->upstream_host = host;
    r->upstream_port = port;
    if (r->upstream == NULL)
        conf_oom(ctx);
}

void conf_set_connect_address(struct conf_ctx *ctx, const cJSON *item, const char *path,
                              char **host, int *port)
{
    const char *s = conf_string_value(ctx, item, path, NULL);
    struct conf_addr a;
    char why[160], shown[CONF_SHOWN];

    if (s == NULL)
        return;
    if (conf_addr_parse_why(s, &a, 0, why, sizeof why) != 0) {
        conf_printable(s, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path, "%s (got \"%s\")", why, shown);
        return;
    }
    free(*host);
    *host = a.host;
    *port = a.port;
    free(a.text);
}

static void conf_set_address(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                             const struct conf_field *f)
{
    struct conf_route *r = base;

    conf_set_connect_address(ctx, item, path, &r->address_host, &r->address_port);
}

/* The CA file is read again when the TLS context is built; checking here turns a typo into a
 * configuration error instead of a 502 on the first request. */
void conf_set_ca_file(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f)
{
    char **dst = (char **)((char *)base + f->offset);
    const char *s = conf_string_value(ctx, item, path, NULL);
    char shown[512];
    struct stat st;
    BIO *bio = NULL;
    X509 *x = NULL;
    int saved;

    if (s == NULL)
        return;
    conf_printable(s, shown, sizeof shown);
    if (stat(s, &st) != 0) {
        saved = errno;
        conf_msgs_add(ctx->errs, path, "%s: %s", shown, strerror(saved));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        conf_msgs_add(ctx->errs, path, "%s: not a regular file", shown);
        goto out;
    }
    errno = 0;
    bio = BIO_new_file(s, "r");
    if (bio == NULL) {
        saved = errno;
        conf_msgs_add(ctx->errs, path, "%s: %s", shown,
                      saved != 0 ? strerror(saved) : "cannot be read");
        goto out;
    }
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (x == NULL) {
        conf_msgs_add(ctx->errs, path,
                      "%s: no PEM certificate (-----BEGIN CERTIFICATE-----) "
                      "in it",
                      shown);
        goto out;
    }
    free(*dst);
    *dst = strdup(s);
    if (*dst == NULL)
        conf_oom(ctx);
out:
    X509_free(x);
    BIO_free(bio);
    ERR_clear_error();
}

#define ROUTE_STRING(key, member, check_, lower_)                                                  \
    {                                                                                              \
        .name = key, .set = conf_set_string, .offset = offsetof(struct conf_route, member),        \
        .check = check_, .lower = lower_                                                           \
    }

static const struct conf_field conf_route_fields[] = {
    ROUTE_STRING("path_prefix", path_prefix, conf_check_path_prefix, 0),
    {.name = "upstream", .set = conf_set_upstream},
    ROUTE_STRING("credential", credential, NULL, 0),
    ROUTE_STRING("host", host, conf_check_route_host, 1),
    ROUTE_STRING("strip_prefix", strip_prefix, conf_check_path_prefix, 0),
    {.name = "address", .set = conf_set_address},
    {.name = "ca_file", .set = conf_set_ca_file, .offset = offsetof(struct conf_route, ca_file)},
    {.name = "scope",
     .set = conf_set_strings,
     .offset = offsetof(struct conf_route, scope),
     .count_offset = offsetof(struct conf_route, nscope),
     .check = conf_check_scope},
    {.name = "client_scopes",
     .set = conf_set_bool,
     .offset = offsetof(struct conf_route, client_scopes)},
    {.name = "rewrite_links",
     .set = conf_set_bool,
     .offset = offsetof(struct conf_route, rewrite_links)},
    {.name = "upstream_protocol", .set = conf_set_protocol},
};
#define CONF_NROUTE_FIELDS (sizeof conf_route_fields / sizeof conf_route_fields[0])

void conf_set_routes(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f)
{
    static const char *const required[] = {"path_prefix", "upstream", "credential"};
    struct conf *conf = base;
    const cJSON *c;
    size_t n, i = 0, k;

    ctx->routes_given = 1;
    if (conf_array_begin(ctx, item, path, CONF_MAX_ROUTES, "routes",
                         "expected an array of routes",
                         "expected at least one route (or leave \"routes\" out "
                         "to derive them from the credentials)",
                         &n) != 0)
        return;
    conf->routes = calloc(n, sizeof *conf->routes);
    if (conf->routes == NULL) {
        conf_oom(ctx);
        return;
    }
    conf->nroutes = n;
    for (k = 0; k < n; k++) {
        conf->routes[k].rewrite_links = -1; /* not given: decided by the profile */
        conf->routes[k].upstream_h2 = -1;   /* not given: decided by the upstream's name */
    }
    for (c = item->child; c != NULL && i < n; c = c->next, i++) {
        char sub[CONF_PATH_MAX], req[CONF_PATH_MAX];

        conf_path_index(sub, sizeof sub, path, i);
        if (!cJSON_IsObject(c)) {
            conf_msgs_add(ctx->errs, sub, "expected an object");
            continue;
        }
        conf_object_apply(ctx, c, sub, conf_route_fields, CONF_NROUTE_FIELDS, &conf->routes[i]);
        for (k = 0; k < 3; k++) {
            if (cJSON_GetObjectItemCaseSensitive(c, required[k]) != NULL)
                continue;
            conf_path_key(req, sizeof req, sub, required[k]);
            conf_msgs_add(ctx->errs, req, "required");
        }
    }
}

enum conf_hide { CONF_HIDE_NONE, CONF_HIDE_ORIGIN_FORM, CONF_HIDE_ALL };

/* Whether earlier, tried first, takes the requests later would match, as proxy/route.c
 * matches: path prefixes byte for byte; origin-form requests by "host" when a route has one
 * (any host otherwise); absolute-form requests by "host", else by the upstream's name. */
static enum conf_hide conf_route_hides(const struct conf_route *earlier,
                                       const struct conf_route *later)
{
    const char *ekey = earlier->host != NULL ? earlier->host : earlier->upstream_host;
    const char *lkey = later->host != NULL ? later->host : later->upstream_host;
    int origin, absolute;

    if (strncmp(later->path_prefix, earlier->path_prefix, strlen(earlier->path_prefix)) != 0)
        return CONF_HIDE_NONE;
    origin =
        earlier->host == NULL || (later->host != NULL && strcmp(earlier->host, later->host) == 0);
    absolute = ekey != NULL && lkey != NULL && strcmp(ekey, lkey) == 0;
    if (origin && absolute)
        return CONF_HIDE_ALL;
    return origin ? CONF_HIDE_ORIGIN_FORM : CONF_HIDE_NONE;
}

/* A profile's own Apple host, or -1 when host is not one of them. */
static int conf_host_profile(const char *host)
{
    int p;

    for (p = 0; p < PROFILE_COUNT; p++)
        if (strcmp(host, conf_profile_routes[p].host) == 0 ||
            (conf_profile_routes[p].other_host != NULL &&
             strcmp(host, conf_profile_routes[p].other_host) == 0))
            return p;
    return -1;
}

/* The checks that need the whole file: credentials named by routes, prefixes, order. */
void conf_routes_check(struct conf_ctx *ctx)
{
    struct conf *conf = ctx->conf;
    enum conf_hide hide;
    size_t i, j, hidden_by;

    for (i = 0; i < conf->nroutes; i++) {
        struct conf_route *r = &conf->routes[i];
        const struct credential *cred = NULL;
        char sub[CONF_PATH_MAX], shown[CONF_SHOWN];

        snprintf(sub, sizeof sub, "routes[%zu].credential", i);
        if (r->credential != NULL) {
            cred = conf_credential(conf, r->credential);
            if (cred == NULL) {
                conf_printable(r->credential, shown, sizeof shown);
                conf_msgs_add(ctx->errs, sub, "no credential named \"%s\"", shown);
            } else {
                r->credential_index = (size_t)(cred - conf->credentials);
            }
        }
        /* App Store Connect answers with absolute links to itself (links.next): rewritten by
         * default so that a client following them stays on the proxy. */
        if (r->rewrite_links < 0)
            r->rewrite_links = cred != NULL && cred->profile == PROFILE_APP_STORE_CONNECT;
        if (r->upstream_h2 < 0)
            r->upstream_h2 = conf_default_h2(r->upstream_host);
        if (r->strip_prefix != NULL && r->path_prefix != NULL &&
            strncmp(r->path_prefix, r->strip_prefix, strlen(r->strip_prefix)) != 0) {
            snprintf(sub, sizeof sub, "routes[%zu].strip_prefix", i);
            conf_msgs_add(ctx->errs, sub, "must be a prefix of path_prefix (or equal to it)");
        }
        if (r->nscope > 0 && cred != NULL && cred->profile != PROFILE_APP_STORE_CONNECT &&
            cred->profile < PROFILE_COUNT) {
            snprintf(sub, sizeof sub, "routes[%zu].scope", i);
            conf_msgs_add(ctx->errs, sub,
                          "only app-store-connect credentials take a scope "
                          "(credential \"%s\" is %s)",
                          cred->name, profile_name(cred->profile));
        }
        if (r->client_scopes) {
            snprintf(sub, sizeof sub, "routes[%zu].client_scopes", i);
            if (cred != NULL && cred->profile < PROFILE_COUNT &&
                cred->profile != PROFILE_APP_STORE_CONNECT)
                conf_msgs_add(ctx->errs, sub,
                              "only app-store-connect credentials take a scope "
                              "(credential \"%s\" is %s)",
                              cred->name, profile_name(cred->profile));
            if (r->nscope > 0)
                conf_msgs_add(ctx->errs, sub,
                              "cannot be combined with the route's own \"scope\": remove one "
                              "of them");
            if (conf->nclients == 0)
                conf_msgs_add(ctx->warns, sub,
                              "has no effect without \"clients\": tokens keep the "
                              "credential's scope");
        }
        /* The commonest mistake: one API's token sent to another API's host (docs/tokens.md, "Why
         * WeatherKit says {"reason": "MISSING_AUTH"} to an App Store Connect token"). */
        if (cred != NULL && cred->profile < PROFILE_COUNT && r->upstream_host != NULL) {
            int hp = conf_host_profile(r->upstream_host);

            if (hp >= 0 && hp != (int)cred->profile) {
                snprintf(sub, sizeof sub, "routes[%zu].upstream", i);
                conf_msgs_add(ctx->warns, sub,
                              "%s expects %s tokens, but credential \"%s\" is "
                              "%s; requests will be refused",
                              r->upstream_host, profile_name((enum token_profile)hp), cred->name,
                              profile_name(cred->profile));
            }
        }
        if (r->path_prefix == NULL)
            continue;
        /* The first route that takes everything, else the first that takes origin-form. */
        hidden_by = i;
        hide = CONF_HIDE_NONE;
        for (j = 0; j < i && hide != CONF_HIDE_ALL; j++) {
            enum conf_hide h = conf->routes[j].path_prefix == NULL
                                   ? CONF_HIDE_NONE
                                   : conf_route_hides(&conf->routes[j], r);

            if (h > hide) {
                hide = h;
                hidden_by = j;
            }
        }
        if (hide == CONF_HIDE_NONE)
            continue;
        snprintf(sub, sizeof sub, "routes[%zu]", i);
        conf_printable(conf->routes[hidden_by].path_prefix, shown, sizeof shown);
        if (hide == CONF_HIDE_ALL)
            conf_msgs_add(ctx->errs, sub,
                          "never used: routes[%zu] (path_prefix \"%s\") comes first and "
                          "matches every request this one would; put the more specific "
                          "route first",
                          hidden_by, shown);
        else
            conf_msgs_add(ctx->warns, sub,
                          "only absolute-form (HTTP proxy) requests can reach this route: "
                          "routes[%zu] (path_prefix \"%s\") comes first and takes the "
                          "others; put the more specific route first",
                          hidden_by, shown);
    }
    for (i = 0; i < conf->ncredentials; i++) {
        char sub[CONF_PATH_MAX];

        for (j = 0; j < conf->nroutes; j++)
            if (conf->routes[j].credential != NULL &&
                strcmp(conf->routes[j].credential, conf->credentials[i].name) == 0)
                break;
        if (j < conf->nroutes)
            continue;
        /* Still loaded and checked: `apple-auth-proxy token --credential NAME` can use it. */
        conf_path_key(sub, sizeof sub, "credentials", conf->credentials[i].name);
        conf_msgs_add(ctx->warns, sub, "no route uses this credential");
    }
}

void conf_routes_derive(struct conf *conf, struct conf_msgs *errs)
{
    size_t *order = NULL;
    size_t i, j, n = 0;
    int conflict = 0;

    if (conf->ncredentials == 0)
        return;
    order = malloc(conf->ncredentials * sizeof *order);
    if (order == NULL) {
        errs->oom = 1;
        return;
    }
    for (i = 0; i < conf->ncredentials; i++)
        if (conf->credentials[i].profile < PROFILE_COUNT)
            order[n++] = i;
    for (i = 0; i < n; i++) {
        const struct credential *a = &conf->credentials[order[i]];

        for (j = i + 1; j < n; j++) {
            const struct credential *b = &conf->credentials[order[j]];

            if (strcmp(conf_profile_routes[a->profile].prefix,
                       conf_profile_routes[b->profile].prefix) != 0)
                continue;
            conf_msgs_add(errs, "routes",
                          "credentials \"%s\" and \"%s\" both want the default "
                          "route \"%s\"; write \"routes\" to say which requests "
                          "go where",
                          a->name, b->name, conf_profile_routes[a->profile].prefix);
            conflict = 1;
        }
    }
    if (conflict || n == 0)
        goto out;
    /* Most specific first (insertion sort keeps credential order among equals). */
    for (i = 1; i < n; i++) {
        size_t v = order[i];
        size_t vlen = strlen(conf_profile_routes[conf->credentials[v].profile].prefix);

        for (j = i; j > 0; j--) {
            size_t u = order[j - 1];

            if (strlen(conf_profile_routes[conf->credentials[u].profile].prefix) >= vlen)
                break;
            order[j] = u;
        }
        order[j] = v;
    }
    conf->routes = calloc(n, sizeof *conf->routes);
    if (conf->routes == NULL) {
        errs->oom = 1;
        goto out;
    }
    conf->nroutes = n;
    for (i = 0; i < n; i++) {
        const struct credential *c = &conf->credentials[order[i]];
        const struct conf_profile_route *d = &conf_profile_routes[c->profile];
        struct conf_route *r = &conf->routes[i];

        r->path_prefix = strdup(d->prefix);
        if (c->profile == PROFILE_APPLE_BUSINESS &&
            strcmp(credential_oauth_scope(c), "school.api") == 0) {
            r->upstream = strdup("https://api-school.apple.com");
            r->upstream_host = strdup(d->other_host);
        } else {
            r->upstream = strdup(d->upstream);
            r->upstream_host = strdup(d->host);
        }
        r->upstream_port = 443;
        r->credential = strdup(c->name);
        r->credential_index = order[i];
        r->rewrite_links = c->profile == PROFILE_APP_STORE_CONNECT;
        r->upstream_h2 = conf_default_h2(r->upstream_host);
        if (r->path_prefix == NULL || r->upstream == NULL || r->upstream_host == NULL ||
            r->credential == NULL)
            errs->oom = 1;
    }
out:
    free(order);
}
