/* conf_shared: "shared_state", the Redis that replicas share their live state through. */
#include "conf/conf_priv.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <openssl/crypto.h>

#define SHARED_DEFAULT_PREFIX  "apple-auth-proxy:"
#define SHARED_MAX_PREFIX      64   /* bytes of "key_prefix" */
#define SHARED_DEFAULT_TIMEOUT 250  /* ms */
#define SHARED_MAX_REPLICAS    1000

/* Everything shared_state holds is read into this, then moved into the configuration when
 * the whole object is valid (a half-read shared_state must not turn sharing on). */
struct shared_in {
    struct conf_shared sh;
    const char *redis;        /* borrowed from the JSON tree */
    const char *password_env; /* borrowed */
    int tls_given;
};

static const char *check_prefix(const char *s)
{
    size_t i;
    for (i = 0; s[i] != '\0'; i++)
        if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f || (unsigned char)s[i] >= 0x80)
            break;
    if (s[i] == '\0' && i <= SHARED_MAX_PREFIX)
        return NULL;
    return "expected at most 64 printable ASCII characters without spaces";
}

/* "tls": hiredis 0.14, the version Debian 12 ships and this build links, has no TLS. A Redis
 * that needs TLS is reached through a local TLS tunnel (docs/deployment.md); the key is
 * refused, not ignored, so that nobody believes the connection is encrypted. */
static void set_tls(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                    const struct conf_field *f)
{
    struct shared_in *in = base;
    in->tls_given = 1;
    conf_msgs_add(ctx->errs, path,
                  "TLS to Redis is not supported by the hiredis this proxy is built with (0.14); "
                  "reach a TLS-only Redis through a local TLS tunnel on loopback or a unix "
                  "socket (see docs/deployment.md)");
}

static const struct conf_field shared_fields[] = {
    {.name = "redis", .set = conf_set_borrowed, .offset = offsetof(struct shared_in, redis)},
    {.name = "password_env",
     .set = conf_set_borrowed,
     .offset = offsetof(struct shared_in, password_env),
     .check = conf_check_env_name},
    {.name = "tls", .set = set_tls},
    {.name = "key_prefix",
     .set = conf_set_string,
     .offset = offsetof(struct shared_in, sh.key_prefix),
     .check = check_prefix},
    {.name = "timeout",
     .set = conf_set_number,
     .offset = offsetof(struct shared_in, sh.timeout_ms),
     .store = CONF_STORE_MS,
     .min = 0.005,
     .max = 10,
     .unit = " seconds"},
    {.name = "replicas",
     .set = conf_set_number,
     .offset = offsetof(struct shared_in, sh.replicas),
     .store = CONF_STORE_INT,
     .min = 1,
     .max = SHARED_MAX_REPLICAS},
};

/* "HOST:PORT" or "unix:/absolute/path" into in->sh. */
static void parse_redis(struct conf_ctx *ctx, struct shared_in *in, const char *path)
{
    char sub[CONF_PATH_MAX], why[160], shown[CONF_SHOWN];
    conf_path_key(sub, sizeof sub, path, "redis");
    if (in->redis == NULL) {
        conf_msgs_add(ctx->errs, sub, "required: \"HOST:PORT\" or \"unix:/path/to/redis.sock\"");
        return;
    }
    in->sh.redis = strdup(in->redis);
    if (in->sh.redis == NULL) {
        conf_oom(ctx);
        return;
    }
    if (strncmp(in->redis, "unix:", 5) == 0) {
        const char *p = in->redis + 5;
        if (p[0] != '/' || strlen(p) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            conf_msgs_add(ctx->errs, sub, "expected \"unix:\" and an absolute socket path of at "
                                          "most 107 bytes");
            return;
        }
        in->sh.unix_path = strdup(p);
        if (in->sh.unix_path == NULL)
            conf_oom(ctx);
        return;
    }
    struct conf_addr a;
    memset(&a, 0, sizeof a);
    why[0] = '\0';
    if (conf_addr_parse_why(in->redis, &a, 0, why, sizeof why) != 0) {
        conf_printable(in->redis, shown, sizeof shown);
        conf_msgs_add(ctx->errs, sub, "expected \"HOST:PORT\" or \"unix:/path\" (got \"%s\"%s%s)",
                      shown, why[0] ? ": " : "", why);
        conf_addr_deinit(&a);
        return;
    }
    in->sh.host = a.host;
    in->sh.port = a.port;
    a.host = NULL;
    conf_addr_deinit(&a);
}

void conf_set_shared(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f)
{
    struct conf *conf = base;
    struct shared_in in;
    char sub[CONF_PATH_MAX];
    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path, "expected an object such as {\"redis\": \"127.0.0.1:6379\"}");
        return;
    }
    memset(&in, 0, sizeof in);
    in.sh.timeout_ms = SHARED_DEFAULT_TIMEOUT;
    in.sh.replicas = 1;
    conf_object_apply(ctx, item, path, shared_fields,
                      sizeof shared_fields / sizeof shared_fields[0], &in);
    parse_redis(ctx, &in, path);
    if (in.password_env != NULL) {
        const char *v = ctx->getenv_fn(in.password_env);
        conf_path_key(sub, sizeof sub, path, "password_env");
        conf_key_env_note(ctx, in.password_env);
        in.sh.password_env = strdup(in.password_env);
        if (in.sh.password_env == NULL)
            conf_oom(ctx);
        if (v == NULL || v[0] == '\0') {
            conf_msgs_add(ctx->errs, sub, "environment variable %s is not set", in.password_env);
        } else if ((in.sh.password = strdup(v)) == NULL) {
            conf_oom(ctx);
        }
    }
    if (in.sh.key_prefix == NULL && (in.sh.key_prefix = strdup(SHARED_DEFAULT_PREFIX)) == NULL)
        conf_oom(ctx);
    conf_shared_deinit(&conf->shared);
    conf->shared = in.sh;
}

void conf_shared_deinit(struct conf_shared *sh)
{
    if (sh->password != NULL) {
        OPENSSL_cleanse(sh->password, strlen(sh->password));
        free(sh->password);
    }
    free(sh->redis);
    free(sh->host);
    free(sh->unix_path);
    free(sh->password_env);
    free(sh->key_prefix);
    memset(sh, 0, sizeof *sh);
}
