/* conf: reads the JSON configuration, checks every key and value, and loads the keys it names. */
#include "conf/conf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>

#include "auth/key.h"
#include "auth/profile.h"
#include "conf/conf_priv.h"

/* A configuration file is a few kilobytes; a larger one is the wrong file. */
#define CONF_MAX_FILE_BYTES (1024 * 1024)

/* ---- the configuration object ---------------------------------------------------------------- */

void conf_free(struct conf *conf)
{
    size_t i;

    if (conf == NULL)
        return;
    for (i = 0; i < conf->nlisten; i++)
        conf_addr_deinit(&conf->listen[i]);
    free(conf->listen);
    conf_addr_deinit(&conf->admin_listen);
    for (i = 0; i < conf->ncredentials; i++)
        credential_deinit(&conf->credentials[i]);
    free(conf->credentials);
    for (i = 0; i < conf->nkey_env_names; i++)
        free(conf->key_env_names[i]);
    free(conf->key_env_names);
    for (i = 0; i < conf->nroutes; i++)
        conf_route_deinit(&conf->routes[i]);
    free(conf->routes);
    free(conf->quota_reserve);
    for (i = 0; i < conf->nclients; i++)
        conf_client_deinit(&conf->clients[i]);
    free(conf->clients);
    free(conf->access_log);
    free(conf->intercept_ca_dir);
    conf_shared_deinit(&conf->shared);
    free(conf->source);
    conf_strings_free(conf->server_names, conf->nserver_names);
    conf_strings_free(conf->allowed_origins, conf->nallowed_origins);
    free(conf);
}

const struct credential *conf_credential(const struct conf *conf, const char *name)
{
    size_t i;

    if (conf == NULL || name == NULL)
        return NULL;
    for (i = 0; i < conf->ncredentials; i++)
        if (conf->credentials[i].name != NULL && strcmp(conf->credentials[i].name, name) == 0)
            return &conf->credentials[i];
    return NULL;
}

int conf_credential_add(struct conf *conf, struct credential *cred)
{
    /* quota_reserve is parallel to credentials: grown first, -1 (none) until set. */
    long *q = realloc(conf->quota_reserve, (conf->ncredentials + 1) * sizeof *q);
    struct credential *p;

    if (q == NULL) {
        credential_deinit(cred);
        return -1;
    }
    conf->quota_reserve = q;
    q[conf->ncredentials] = -1;
    p = realloc(conf->credentials, (conf->ncredentials + 1) * sizeof *conf->credentials);
    if (p == NULL) {
        credential_deinit(cred);
        return -1;
    }
    conf->credentials = p;
    p[conf->ncredentials++] = *cred;
    memset(cred, 0, sizeof *cred);
    return 0;
}

/* ---- top level ------------------------------------------------------------------------------- */

/* Rejects the same address twice: the second bind would fail at start-up with a vaguer error. */
static int conf_listen_dup(const struct conf_addr *v, size_t n, const char *text)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (v[i].port != 0 && strcmp(v[i].text, text) == 0)
            return 1;
    return 0;
}

/* Each entry is "host:port" (plain HTTP) or {"address": "host:port", "tls": {...}}. */
static void conf_set_listen(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                            const struct conf_field *f)
{
    struct conf *conf = base;
    struct conf_addr *v;
    const cJSON *c;
    size_t n, i = 0, bad = 0;
    int single = cJSON_IsString(item) || cJSON_IsObject(item);

    if (single)
        n = 1;
    else if (cJSON_IsArray(item))
        n = conf_count_children(item);
    else {
        conf_msgs_add(ctx->errs, path,
                      "expected an array of \"host:port\" strings or {\"address\": ..., "
                      "\"tls\": {...}} objects");
        return;
    }
    if (n == 0 || n > CONF_MAX_LISTEN) {
        conf_msgs_add(ctx->errs, path, "expected 1 to %d addresses", CONF_MAX_LISTEN);
        return;
    }
    v = calloc(n, sizeof *v);
    if (v == NULL) {
        conf_oom(ctx);
        return;
    }
    for (c = single ? item : item->child; i < n && c != NULL; c = c->next, i++) {
        char sub[CONF_PATH_MAX], why[160], shown[CONF_SHOWN];

        if (single)
            snprintf(sub, sizeof sub, "%s", path);
        else
            conf_path_index(sub, sizeof sub, path, i);
        if (cJSON_IsObject(c)) {
            if (conf_listen_object(ctx, c, sub, &v[i], 0) != 0)
                bad++;
            else if (conf_listen_dup(v, i, v[i].text)) {
                conf_printable(v[i].text, shown, sizeof shown);
                conf_msgs_add(ctx->errs, sub, "\"%s\" is listed twice", shown);
                bad++;
            }
            continue;
        }
        if (!cJSON_IsString(c) || c->valuestring == NULL) {
            conf_msgs_add(ctx->errs, sub,
                          "expected a \"host:port\" string or an {\"address\": ..., \"tls\": "
                          "{...}} object");
            bad++;
            continue;
        }
        conf_printable(c->valuestring, shown, sizeof shown);
        if (conf_addr_parse_why(c->valuestring, &v[i], 1, why, sizeof why) != 0) {
            conf_msgs_add(ctx->errs, sub, "%s (got \"%s\")", why, shown);
            bad++;
        } else if (conf_listen_dup(v, i, v[i].text)) {
            conf_msgs_add(ctx->errs, sub, "\"%s\" is listed twice", shown);
            bad++;
        }
    }
    if (bad > 0) {
        for (i = 0; i < n; i++)
            conf_addr_deinit(&v[i]);
        free(v);
        return;
    }
    for (i = 0; i < conf->nlisten; i++)
        conf_addr_deinit(&conf->listen[i]);
    free(conf->listen);
    conf->listen = v;
    conf->nlisten = n;
}

static void conf_set_admin_listen(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                  void *base, const struct conf_field *f)
{
    struct conf *conf = base;
    struct conf_addr a;
    char why[160], shown[CONF_SHOWN];

    if (cJSON_IsNull(item)) {
        conf_addr_deinit(&conf->admin_listen);
        return;
    }
    /* {"address": ...} is accepted like a listen entry; "tls" is refused there. */
    if (cJSON_IsObject(item)) {
        if (conf_listen_object(ctx, item, path, &a, 1) == 0) {
            conf_addr_deinit(&conf->admin_listen);
            conf->admin_listen = a;
        }
        return;
    }
    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        conf_msgs_add(ctx->errs, path,
                      "expected a \"host:port\" string, or null to turn the "
                      "admin listener off");
        return;
    }
    if (conf_addr_parse_why(item->valuestring, &a, 1, why, sizeof why) != 0) {
        conf_printable(item->valuestring, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path, "%s (got \"%s\")", why, shown);
        return;
    }
    conf_addr_deinit(&conf->admin_listen);
    conf->admin_listen = a;
}

static void conf_set_margin(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                            const struct conf_field *f)
{
    ctx->margin_given = 1;
    conf_set_number(ctx, item, path, base, f);
}

/* "access_log": {"path": "-" (stdout, the default) | "off" | FILE, "format": "json" | "text"}.
 * The file is opened by the proxy (proxy/accesslog.c), which reports what goes wrong there. */
static void conf_set_log_format(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                void *base, const struct conf_field *f)
{
    struct conf *conf = base;
    const char *s = conf_string_value(ctx, item, path, NULL);
    char shown[CONF_SHOWN];

    if (s == NULL)
        return;
    if (strcmp(s, "json") == 0 || strcmp(s, "text") == 0) {
        conf->access_log_text = strcmp(s, "text") == 0;
        return;
    }
    conf_printable(s, shown, sizeof shown);
    conf_msgs_add(ctx->errs, path, "expected \"json\" or \"text\" (got \"%s\")", shown);
}

static const char *conf_check_log_path(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return "expected \"-\" (standard output), \"off\" or a file name";
    return NULL;
}

static const struct conf_field conf_access_log_fields[] = {
    {.name = "path",
     .set = conf_set_string,
     .offset = offsetof(struct conf, access_log),
     .check = conf_check_log_path},
    {.name = "format", .set = conf_set_log_format},
};

static void conf_set_access_log(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                void *base, const struct conf_field *f)
{
    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path,
                      "expected an object such as {\"path\": \"-\", \"format\": "
                      "\"json\"}");
        return;
    }
    conf_object_apply(ctx, item, path, conf_access_log_fields,
                      sizeof conf_access_log_fields / sizeof conf_access_log_fields[0], base);
}

/* "intercept": {"ca_dir": "/var/lib/apple-auth-proxy/ca"}: an absolute directory path (the
 * proxy checks its permissions and makes the CA there: proxy/intercept.c). */
static const char *conf_check_ca_dir(const char *s)
{
    if (s[0] != '/')
        return "expected an absolute directory path";
    return conf_check_log_path(s) ? "expected a directory path without control characters" : NULL;
}

static const struct conf_field conf_intercept_fields[] = {
    {.name = "ca_dir",
     .set = conf_set_string,
     .offset = offsetof(struct conf, intercept_ca_dir),
     .check = conf_check_ca_dir},
};

static void conf_set_intercept(struct conf_ctx *ctx, const cJSON *item, const char *path,
                               void *base, const struct conf_field *f)
{
    struct conf *conf = base;
    char sub[CONF_PATH_MAX];

    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path,
                      "expected an object such as {\"ca_dir\": \"/var/lib/apple-auth-proxy/ca\"}");
        return;
    }
    conf_object_apply(ctx, item, path, conf_intercept_fields,
                      sizeof conf_intercept_fields / sizeof conf_intercept_fields[0], base);
    snprintf(sub, sizeof sub, "%s.ca_dir", path);
    if (conf->intercept_ca_dir == NULL && !conf_msgs_has_path(ctx->errs, sub))
        conf_msgs_add(ctx->errs, sub, "required: the directory that holds the interception CA");
}

/* ---- limits ---------------------------------------------------------------------------------- */

#define LIMIT_SIZE(key, member, store_, def_, min_, max_)                                          \
    {                                                                                              \
        .name = key, .set = conf_set_number, .offset = offsetof(struct conf_limits, member),       \
        .store = store_, .def = def_, .min = min_, .max = max_, .unit = ""                         \
    }
/* Timeouts: more than nothing (1 ms) and at most a day. */
#define LIMIT_TIME(key, member, def_)                                                              \
    {                                                                                              \
        .name = key, .set = conf_set_number, .offset = offsetof(struct conf_limits, member),       \
        .store = CONF_STORE_MS, .def = def_, .min = 0.001, .max = 86400, .unit = " seconds"        \
    }

/* Defaults and ranges; docs/configuration.md repeats them with the status each produces. */
static const struct conf_field conf_limit_fields[] = {
    LIMIT_SIZE("max_request_line_bytes", max_request_line, CONF_STORE_SIZE, 8192, 256, 1048576),
    LIMIT_SIZE("max_header_bytes", max_header_bytes, CONF_STORE_SIZE, 32768, 1024, 16777216),
    LIMIT_SIZE("max_headers", max_headers, CONF_STORE_SIZE, 100, 1, 10000),
    /* 2^53: the largest integer a JSON number carries exactly. 0 means no limit. */
    LIMIT_SIZE("max_body_bytes", max_body, CONF_STORE_ULL, 1073741824.0, 0, 9007199254740992.0),
    LIMIT_SIZE("max_client_connections", max_client_connections, CONF_STORE_SIZE, 10000, 1,
               1000000),
    LIMIT_SIZE("upstream_pool_size", upstream_pool_size, CONF_STORE_SIZE, 1024, 0, 10000),
    LIMIT_TIME("client_header_timeout", client_header_timeout_ms, 10),
    LIMIT_TIME("client_body_timeout", client_body_timeout_ms, 60),
    LIMIT_TIME("keepalive_timeout", idle_timeout_ms, 75),
    LIMIT_TIME("upstream_connect_timeout", upstream_connect_timeout_ms, 5),
    LIMIT_TIME("upstream_tls_handshake_timeout", upstream_handshake_timeout_ms, 10),
    LIMIT_TIME("upstream_response_timeout", upstream_response_timeout_ms, 60),
    LIMIT_TIME("upstream_idle_timeout", upstream_idle_timeout_ms, 30),
    LIMIT_TIME("send_timeout", send_timeout_ms, 60),
    LIMIT_TIME("drain_timeout", drain_timeout_ms, 30),
    LIMIT_TIME("token_wait_timeout", token_wait_timeout_ms, 15),
};
#define CONF_NLIMITS (sizeof conf_limit_fields / sizeof conf_limit_fields[0])

static void conf_limits_default(struct conf_limits *limits)
{
    size_t i;

    for (i = 0; i < CONF_NLIMITS; i++)
        conf_number_store((char *)limits + conf_limit_fields[i].offset, conf_limit_fields[i].store,
                          conf_limit_fields[i].def);
}

static void conf_set_limits(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                            const struct conf_field *f)
{
    struct conf *conf = base;

    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path, "expected an object");
        return;
    }
    conf_object_apply(ctx, item, path, conf_limit_fields, CONF_NLIMITS, &conf->limits);
    /* The request line is part of the head: a larger line limit could never be reached. */
    if (conf->limits.max_header_bytes < conf->limits.max_request_line)
        conf_msgs_add(ctx->errs, "limits.max_header_bytes",
                      "must be at least max_request_line_bytes (%zu): the request line is part "
                      "of the head",
                      conf->limits.max_request_line);
}

/* ---- credentials ----------------------------------------------------------------------------- */

/* A credential while it is read: the key sources point into the JSON tree. */
struct conf_cred_in {
    struct credential cred;
    const char *key_file;
    const char *key_text;
    const char *key_env;
    long quota_reserve; /* -1: not set */
};

static void conf_set_profile(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                             const struct conf_field *f)
{
    struct conf_cred_in *in = base;
    const char *s = conf_string_value(ctx, item, path, NULL);
    char shown[CONF_SHOWN];

    if (s == NULL)
        return;
    if (profile_parse(s, &in->cred.profile) != 0) {
        conf_printable(s, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path,
                      "unknown profile \"%s\" (expected app-store-connect, "
                      "app-store-server, weatherkit, enterprise, music, apns, devicecheck, maps "
                      "or apple-business)",
                      shown);
    }
}

/* "token_address": where an exchanged credential's token endpoint is reached, as "address" on
 * a route (the endpoint's name still goes into SNI, the certificate check and Host). */
static void conf_set_token_address(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                   void *base, const struct conf_field *f)
{
    struct conf_cred_in *in = base;

    conf_set_connect_address(ctx, item, path, &in->cred.token_address_host,
                             &in->cred.token_address_port);
}

#define CRED_STRING(key, member, check_)                                                           \
    {                                                                                              \
        .name = key, .set = conf_set_string,                                                       \
        .offset = offsetof(struct conf_cred_in, cred) + offsetof(struct credential, member),       \
        .check = check_                                                                            \
    }
#define CRED_LIST(key, member, count, check_)                                                      \
    {                                                                                              \
        .name = key, .set = conf_set_strings,                                                      \
        .offset = offsetof(struct conf_cred_in, cred) + offsetof(struct credential, member),       \
        .count_offset = offsetof(struct conf_cred_in, cred) + offsetof(struct credential, count),  \
        .check = check_                                                                            \
    }

static const struct conf_field conf_credential_fields[] = {
    {.name = "profile", .set = conf_set_profile},
    CRED_STRING("key_id", key_id, conf_check_key_id),
    CRED_STRING("issuer_id", issuer_id, conf_check_uuid),
    CRED_STRING("team_id", team_id, conf_check_team_id),
    CRED_STRING("service_id", service_id, conf_check_identifier),
    CRED_STRING("bundle_id", bundle_id, conf_check_identifier),
    {.name = "private_key_file",
     .set = conf_set_borrowed,
     .offset = offsetof(struct conf_cred_in, key_file)},
    {.name = "private_key",
     .set = conf_set_borrowed,
     .offset = offsetof(struct conf_cred_in, key_text)},
    {.name = "private_key_env",
     .set = conf_set_borrowed,
     .offset = offsetof(struct conf_cred_in, key_env),
     .check = conf_check_env_name},
    /* The profile's maximum is checked once the profile is known (credential_validate). */
    {.name = "token_lifetime",
     .set = conf_set_number,
     .offset = offsetof(struct conf_cred_in, cred) + offsetof(struct credential, lifetime),
     .store = CONF_STORE_LONG,
     .min = 1,
     .max = 1e9,
     .unit = " (seconds)"},
    {.name = "clock_skew",
     .set = conf_set_number,
     .offset = offsetof(struct conf_cred_in, cred) + offsetof(struct credential, skew),
     .store = CONF_STORE_LONG,
     .min = 0,
     .max = 300,
     .unit = " (seconds)"},
    CRED_STRING("client_id", client_id, conf_check_identifier),
    {.name = "token_address", .set = conf_set_token_address},
    {.name = "token_ca_file",
     .set = conf_set_ca_file,
     .offset = offsetof(struct conf_cred_in, cred) + offsetof(struct credential, token_ca_file)},
    CRED_LIST("scope", scope, nscope, conf_check_cred_scope),
    CRED_LIST("origin", origin, norigin, conf_check_origin),
    /* Requests of Apple's hourly quota kept for clients with "priority" (the gateway). */
    {.name = "quota_reserve",
     .set = conf_set_number,
     .offset = offsetof(struct conf_cred_in, quota_reserve),
     .store = CONF_STORE_LONG,
     .min = 0,
     .max = 1e9,
     .unit = " (requests)"},
};
#define CONF_NCRED_FIELDS (sizeof conf_credential_fields / sizeof conf_credential_fields[0])

static const char *const conf_key_sources[] = {"private_key_file", "private_key",
                                               "private_key_env"};

/* Apple names the key file it hands out AuthKey_<KEY ID>.p8. A file of that form whose ID is
 * not the credential's key_id is nearly always a paste error, which Apple would answer with a
 * bare 401 on every request: warn while the mistake can still be named. */
static void conf_cred_check_key_file_name(struct conf_ctx *ctx, const struct conf_cred_in *in,
                                          const char *sub)
{
    static const char prefix[] = "AuthKey_", suffix[] = ".p8";
    const char *base = strrchr(in->key_file, '/');
    size_t n, idlen;

    base = base != NULL ? base + 1 : in->key_file;
    n = strlen(base);
    if (in->cred.key_id == NULL || n <= sizeof prefix - 1 + sizeof suffix - 1 ||
        strncmp(base, prefix, sizeof prefix - 1) != 0 ||
        strcmp(base + n - (sizeof suffix - 1), suffix) != 0)
        return;
    idlen = n - (sizeof prefix - 1) - (sizeof suffix - 1);
    if (idlen == strlen(in->cred.key_id) &&
        strncmp(base + sizeof prefix - 1, in->cred.key_id, idlen) == 0)
        return;
    conf_msgs_add(ctx->warns, sub,
                  "the file is named for key %.*s but key_id is %s; Apple answers 401 to "
                  "tokens whose key_id does not match the key that signed them",
                  (int)(idlen > 64 ? 64 : idlen), base + sizeof prefix - 1, in->cred.key_id);
}

/* Loads the credential's key from its one source. Key text is never quoted in a message. */
static void conf_cred_load_key(struct conf_ctx *ctx, const cJSON *obj, struct conf_cred_in *in,
                               const char *path)
{
    char err[768], warn[768], sub[CONF_PATH_MAX], given[96];
    const char *src = NULL;
    size_t i, nsrc = 0;

    given[0] = '\0';
    for (i = 0; i < 3; i++) {
        if (cJSON_GetObjectItemCaseSensitive(obj, conf_key_sources[i]) == NULL)
            continue;
        if (nsrc++ > 0)
            strncat(given, " and ", sizeof given - strlen(given) - 1);
        strncat(given, conf_key_sources[i], sizeof given - strlen(given) - 1);
        src = conf_key_sources[i];
    }
    if (nsrc == 0) {
        conf_msgs_add(ctx->errs, path,
                      "no private key: set private_key_file, private_key or "
                      "private_key_env");
        return;
    }
    if (nsrc > 1) {
        conf_msgs_add(ctx->errs, path,
                      "%s are %s set; use exactly one of private_key_file, "
                      "private_key and private_key_env",
                      given, nsrc == 2 ? "both" : "all");
        return;
    }
    conf_path_key(sub, sizeof sub, path, src);
    err[0] = warn[0] = '\0';
    if (in->key_file != NULL) {
        if (key_load_file(in->key_file, &in->cred.key, err, sizeof err, warn, sizeof warn) != 0)
            conf_msgs_add(ctx->errs, sub, "%s", err);
        if (warn[0] != '\0')
            conf_msgs_add(ctx->warns, sub, "%s", warn);
        conf_cred_check_key_file_name(ctx, in, sub);
    } else if (in->key_text != NULL) {
        if (key_load_text(in->key_text, strlen(in->key_text), &in->cred.key, err, sizeof err) != 0)
            conf_msgs_add(ctx->errs, sub, "%s", err);
    } else if (in->key_env != NULL) {
        const char *v = ctx->getenv_fn(in->key_env);
        conf_key_env_note(ctx, in->key_env);
        if (v == NULL || v[0] == '\0')
            conf_msgs_add(ctx->errs, sub, "environment variable %s is not set", in->key_env);
        else if (key_load_text(v, strlen(v), &in->cred.key, err, sizeof err) != 0)
            conf_msgs_add(ctx->errs, sub, "%s: %s", in->key_env, err);
    }
    /* Otherwise the one source had the wrong type, already reported. */
}

void conf_key_env_note(struct conf_ctx *ctx, const char *name)
{
    char **names = realloc(ctx->conf->key_env_names,
                           (ctx->conf->nkey_env_names + 1) * sizeof *names);
    if (names == NULL) {
        conf_oom(ctx);
        return;
    }
    ctx->conf->key_env_names = names;
    names[ctx->conf->nkey_env_names] = strdup(name);
    if (names[ctx->conf->nkey_env_names] == NULL)
        conf_oom(ctx);
    else
        ctx->conf->nkey_env_names++;
}

void conf_credential_validate(const struct credential *cred, struct conf_msgs *errs,
                              const char *(*rename)(const char *field))
{
    char buf[4096], prefix[CONF_PATH_MAX], path[CONF_PATH_MAX];
    char *line, *next;
    size_t plen;

    buf[0] = '\0';
    if (credential_validate(cred, buf, sizeof buf) == 0)
        return;
    plen = (size_t)snprintf(prefix, sizeof prefix, "credentials.%s.",
                            cred->name != NULL ? cred->name : "?");
    for (line = buf; line != NULL && *line != '\0'; line = next) {
        char *colon;
        const char *msg = line;

        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        colon = strstr(line, ": ");
        if (colon == NULL) {
            snprintf(path, sizeof path, "%.*s", (int)(plen - 1), prefix);
        } else {
            *colon = '\0';
            msg = colon + 2;
            snprintf(path, sizeof path, "%.*s", (int)sizeof path - 1, line);
            if (rename != NULL && strncmp(line, prefix, plen) == 0) {
                const char *r = rename(line + plen);

                if (r != NULL)
                    snprintf(path, sizeof path, "%s", r);
            }
        }
        /* A field with a syntax error already has its message; one per field is enough. */
        if (!conf_msgs_has_path(errs, path))
            conf_msgs_add(errs, path, "%s", msg);
    }
}

static void conf_set_credentials(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                 void *base, const struct conf_field *f)
{
    struct conf *conf = base;
    size_t n, i = 0;
    unsigned char *dup;
    const cJSON *c;

    ctx->credentials_given = 1;
    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path, "expected an object of named credentials");
        return;
    }
    n = conf_count_children(item);
    if (n == 0) {
        conf_msgs_add(ctx->errs, path, "expected at least one credential");
        return;
    }
    if (n > CONF_MAX_CREDENTIALS) {
        conf_msgs_add(ctx->errs, path, "at most %d credentials", CONF_MAX_CREDENTIALS);
        return;
    }
    dup = conf_dup_flags(ctx, item, n);
    for (c = item->child; c != NULL; c = c->next, i++) {
        struct conf_cred_in in;
        char sub[CONF_PATH_MAX];
        const char *name = c->string != NULL ? c->string : "";

        if (conf_named_member(ctx, c, path, dup, i, conf_check_credential_name, sub,
                              sizeof sub) != 0)
            continue;
        memset(&in, 0, sizeof in);
        in.quota_reserve = -1;
        in.cred.skew = TOKEN_DEFAULT_SKEW;
        in.cred.profile = PROFILE_COUNT; /* not yet known */
        in.cred.name = strdup(name);
        if (in.cred.name == NULL) {
            conf_oom(ctx);
            continue;
        }
        conf_object_apply(ctx, c, sub, conf_credential_fields, CONF_NCRED_FIELDS, &in);
        if (cJSON_GetObjectItemCaseSensitive(c, "profile") == NULL)
            conf_msgs_add(ctx->errs, sub,
                          "no profile: set \"profile\" to app-store-connect, "
                          "app-store-server, weatherkit, enterprise, music, apns, devicecheck, "
                          "maps or apple-business");
        conf_cred_load_key(ctx, c, &in, sub);
        /* Profile rules (required and unused identifiers, lifetime within Apple's maximum)
         * belong to auth/; their messages use the raw name, so only for valid names. */
        if (in.cred.profile < PROFILE_COUNT && conf_check_credential_name(name) == NULL)
            conf_credential_validate(&in.cred, ctx->errs, NULL);
        /* Only App Store Connect reports the hourly quota (X-Rate-Limit) a reserve is kept
         * against; elsewhere the value would do nothing. */
        if (in.quota_reserve >= 0 && in.cred.profile < PROFILE_COUNT &&
            in.cred.profile != PROFILE_APP_STORE_CONNECT) {
            char q[CONF_PATH_MAX];

            conf_path_key(q, sizeof q, sub, "quota_reserve");
            conf_msgs_add(ctx->warns, q,
                          "only app-store-connect credentials have a quota to reserve from; "
                          "ignored for this %s credential",
                          profile_name(in.cred.profile));
            in.quota_reserve = -1;
        }
        if (conf_credential_add(conf, &in.cred) != 0)
            conf_oom(ctx);
        else
            conf->quota_reserve[conf->ncredentials - 1] = in.quota_reserve;
    }
    free(dup);
}

void conf_finish(struct conf *conf, int margin_given, struct conf_msgs *errs,
                 struct conf_msgs *warns)
{
    long shortest = LONG_MAX;
    const char *who = NULL;
    size_t i;

    if (conf_msgs_any(errs))
        return;
    for (i = 0; i < conf->ncredentials; i++) {
        long l = credential_lifetime(&conf->credentials[i]);

        /* An exchanged credential's signed token is used once, never cached or refreshed. */
        if (profile_exchanged(conf->credentials[i].profile))
            continue;
        if (l > 0 && l < shortest) {
            shortest = l;
            who = conf->credentials[i].name;
        }
    }
    /* Refreshing a third of a lifetime early leaves two thirds of it for the token in use;
     * a larger margin would re-sign continuously. */
    if (who != NULL && conf->token_refresh_margin > shortest / 3) {
        if (margin_given)
            conf_msgs_add(warns, "token_refresh_margin",
                          "%ld s is more than a third of the shortest token lifetime (%ld s, "
                          "credential \"%s\"); using %ld s",
                          conf->token_refresh_margin, shortest, who, shortest / 3);
        conf->token_refresh_margin = shortest / 3;
    }
}

/* ---- the whole file -------------------------------------------------------------------------- */

static const struct conf_field conf_top_fields[] = {
    {.name = "listen", .set = conf_set_listen},
    {.name = "admin_listen", .set = conf_set_admin_listen},
    {.name = "workers",
     .set = conf_set_number,
     .offset = offsetof(struct conf, workers),
     .store = CONF_STORE_INT,
     .min = 0,
     .max = CONF_MAX_WORKERS},
    {.name = "credentials", .set = conf_set_credentials},
    {.name = "routes", .set = conf_set_routes},
    {.name = "clients", .set = conf_set_clients},
    {.name = "allow_anonymous_clients",
     .set = conf_set_bool,
     .offset = offsetof(struct conf, allow_anonymous_clients)},
    {.name = "limits", .set = conf_set_limits},
    {.name = "access_log", .set = conf_set_access_log},
    {.name = "intercept", .set = conf_set_intercept},
    {.name = "shared_state", .set = conf_set_shared},
    {.name = "server_names",
     .set = conf_set_strings,
     .offset = offsetof(struct conf, server_names),
     .count_offset = offsetof(struct conf, nserver_names),
     .check = conf_check_server_name},
    {.name = "allowed_origins",
     .set = conf_set_strings,
     .offset = offsetof(struct conf, allowed_origins),
     .count_offset = offsetof(struct conf, nallowed_origins),
     .check = conf_check_allowed_origin},
    /* At least 10 s: a token must not expire between being taken and reaching Apple. */
    {.name = "token_refresh_margin",
     .set = conf_set_margin,
     .offset = offsetof(struct conf, token_refresh_margin),
     .store = CONF_STORE_LONG,
     .min = 10,
     .max = 86400,
     .unit = " (seconds)"},
};
#define CONF_NTOP_FIELDS (sizeof conf_top_fields / sizeof conf_top_fields[0])

struct conf *conf_new_default(const char *source)
{
    struct conf *conf = calloc(1, sizeof *conf);

    if (conf == NULL)
        return NULL;
    conf->listen = calloc(1, sizeof *conf->listen);
    conf->source = strdup(source != NULL ? source : "configuration");
    if (conf->listen == NULL || conf->source == NULL ||
        conf_addr_parse(CONF_DEFAULT_LISTEN, &conf->listen[0], 0) != 0)
        goto fail;
    conf->nlisten = 1;
    if (conf_addr_parse(CONF_DEFAULT_ADMIN_LISTEN, &conf->admin_listen, 0) != 0)
        goto fail;
    conf->workers = 0;
    conf_limits_default(&conf->limits);
    conf->token_refresh_margin = CONF_DEFAULT_REFRESH_MARGIN;
    return conf;
fail:
    conf_free(conf);
    return NULL;
}

/* Wipes every string value before the tree is freed: one of them may be a private key. */
static void conf_json_wipe(cJSON *item)
{
    for (; item != NULL; item = item->next) {
        if (item->valuestring != NULL)
            OPENSSL_cleanse(item->valuestring, strlen(item->valuestring));
        conf_json_wipe(item->child);
    }
}

/* Reports a JSON syntax error by line and column; the text around it is not quoted, since it
 * may be part of a private key. */
static void conf_json_error(struct conf_msgs *errs, const char *source, const char *json,
                            size_t len, size_t off, const char *what)
{
    size_t i, line = 1, col = 1;

    if (off > len)
        off = len;
    for (i = 0; i < off; i++) {
        if (json[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    conf_msgs_add(errs, source, "line %zu, column %zu: %s", line, col, what);
}

static struct conf *conf_parse_text(const char *json, size_t len, const char *source,
                                    conf_getenv_fn getenv_fn, struct conf_msgs *errs,
                                    struct conf_msgs *warns)
{
    struct conf_ctx ctx;
    struct conf *conf;
    cJSON *root = NULL;
    const char *end = NULL;
    char shown[512];
    size_t i;

    conf_printable(source, shown, sizeof shown);
    conf = conf_new_default(source);
    if (conf == NULL) {
        errs->oom = 1;
        return NULL;
    }
    for (i = 0;
         i < len && (json[i] == ' ' || json[i] == '\t' || json[i] == '\r' || json[i] == '\n'); i++)
        ;
    if (i == len) {
        conf_msgs_add(errs, shown, "empty; expected a JSON object");
        goto out;
    }
    /* The end pointer is cJSON_GetErrorPtr's position without its global state. */
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (root == NULL) {
        conf_json_error(errs, shown, json, len, end != NULL ? (size_t)(end - json) : 0,
                        "invalid JSON");
        goto out;
    }
    for (i = (size_t)(end - json); i < len; i++)
        if (json[i] != ' ' && json[i] != '\t' && json[i] != '\r' && json[i] != '\n')
            break;
    if (i < len) {
        conf_json_error(errs, shown, json, len, i, "unexpected text after the JSON object");
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        conf_msgs_add(errs, shown, "expected a JSON object at the top level");
        goto out;
    }
    memset(&ctx, 0, sizeof ctx);
    ctx.conf = conf;
    ctx.errs = errs;
    ctx.warns = warns;
    ctx.getenv_fn = getenv_fn;
    conf_object_apply(&ctx, root, "", conf_top_fields, CONF_NTOP_FIELDS, conf);
    if (!ctx.credentials_given)
        conf_msgs_add(errs, "credentials",
                      "required: at least one credential (profile, key_id, "
                      "the identifiers its profile needs, and a private "
                      "key)");
    if (ctx.routes_given)
        conf_routes_check(&ctx);
    else
        conf_routes_derive(conf, errs);
    conf_clients_check(&ctx);
    conf_finish(conf, ctx.margin_given, errs, warns);
out:
    if (root != NULL) {
        conf_json_wipe(root);
        cJSON_Delete(root);
    }
    return conf;
}

struct conf *conf_parse_file(const char *path, conf_getenv_fn getenv_fn, struct conf_msgs *errs,
                             struct conf_msgs *warns)
{
    struct conf *conf = NULL;
    struct stat st;
    char *buf = NULL;
    char shown[512];
    size_t len = 0;
    int fd = -1, saved;

    conf_printable(path, shown, sizeof shown);
    /* stat() first: open() on a FIFO would block; a pipe (--config <(...)) is fine to read. */
    if (stat(path, &st) != 0) {
        saved = errno;
        conf_msgs_add(errs, shown, "cannot read the configuration: %s", strerror(saved));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        conf_msgs_add(errs, shown, "is a directory, not a configuration file");
        goto out;
    }
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
        conf_msgs_add(errs, shown, "not a regular file");
        goto out;
    }
    if (S_ISREG(st.st_mode) && st.st_size > CONF_MAX_FILE_BYTES) {
        conf_msgs_add(errs, shown, "%lld bytes; a configuration file is at most 1 MiB",
                      (long long)st.st_size);
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        saved = errno;
        conf_msgs_add(errs, shown, "cannot read the configuration: %s", strerror(saved));
        goto out;
    }
    buf = malloc(CONF_MAX_FILE_BYTES + 2);
    if (buf == NULL) {
        errs->oom = 1;
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + len, CONF_MAX_FILE_BYTES + 1 - len);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            saved = errno;
            conf_msgs_add(errs, shown, "cannot read the configuration: %s", strerror(saved));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > CONF_MAX_FILE_BYTES) {
            conf_msgs_add(errs, shown,
                          "larger than 1 MiB; a configuration file is at most "
                          "1 MiB");
            goto out;
        }
    }
    buf[len] = '\0';
    conf = conf_parse_text(buf, len, path, getenv_fn, errs, warns);
out:
    if (fd >= 0)
        close(fd);
    if (buf != NULL) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
    return conf;
}

static const char *(*conf_getenv_hook)(const char *name);

void conf_set_getenv(const char *(*fn)(const char *name))
{
    conf_getenv_hook = fn;
}

const char *conf_getenv(const char *name)
{
    return conf_getenv_hook ? conf_getenv_hook(name) : getenv(name);
}

int conf_result(struct conf *conf, struct conf_msgs *errs, struct conf_msgs *warns,
                struct conf **out, char **errors, char **warnings)
{
    char *w = conf_msgs_take(warns);
    int failed = conf == NULL || conf_msgs_any(errs);

    if (warnings != NULL)
        *warnings = w;
    else
        free(w);
    if (failed) {
        char *e = conf_msgs_take(errs);

        if (e == NULL)
            e = strdup("out of memory\n");
        conf_free(conf);
        *out = NULL;
        if (errors != NULL)
            *errors = e;
        else
            free(e);
        return -1;
    }
    conf_msgs_deinit(errs);
    *out = conf;
    if (errors != NULL)
        *errors = NULL;
    return 0;
}

int conf_load_string(const char *json, size_t len, const char *source, struct conf **out,
                     char **errors, char **warnings)
{
    struct conf_msgs errs, warns;
    struct conf *conf;

    memset(&errs, 0, sizeof errs);
    memset(&warns, 0, sizeof warns);
    conf = conf_parse_text(json, len, source != NULL ? source : "configuration", conf_getenv, &errs,
                           &warns);
    if (conf != NULL)
        conf_listen_check(conf, &errs);
    return conf_result(conf, &errs, &warns, out, errors, warnings);
}

int conf_load_file(const char *path, struct conf **out, char **errors, char **warnings)
{
    struct conf_msgs errs, warns;
    struct conf *conf;

    memset(&errs, 0, sizeof errs);
    memset(&warns, 0, sizeof warns);
    conf = conf_parse_file(path, conf_getenv, &errs, &warns);
    if (conf != NULL)
        conf_listen_check(conf, &errs);
    return conf_result(conf, &errs, &warns, out, errors, warnings);
}

void conf_listen_check(const struct conf *conf, struct conf_msgs *errs)
{
    size_t i;

    if (conf->admin_listen.text == NULL || conf->admin_listen.port == 0)
        return;
    for (i = 0; i < conf->nlisten; i++)
        if (strcmp(conf->listen[i].text, conf->admin_listen.text) == 0)
            conf_msgs_add(errs, "admin_listen",
                          "%s is also a proxy listen address; the admin "
                          "endpoints need their own port",
                          conf->admin_listen.text);
}
