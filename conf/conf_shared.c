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

static const struct conf_field shared_tls_fields[] = {
    {.name = "ca_file",
     .set = conf_set_ca_file,
     .offset = offsetof(struct shared_in, sh.tls_ca_file)},
    {.name = "server_name",
     .set = conf_set_string,
     .offset = offsetof(struct shared_in, sh.tls_server_name),
     .check = conf_check_route_host,
     .lower = 1},
    {.name = "cert_file",
     .set = conf_set_tls_cert,
     .offset = offsetof(struct shared_in, sh.tls_cert_file)},
    {.name = "key_file",
     .set = conf_set_tls_key,
     .offset = offsetof(struct shared_in, sh.tls_key_file)},
};

/* "tls": true (the system's trust store, the host's name), or an object that names the CA
 * file, the name the certificate must carry, and a client certificate. false is the same as
 * leaving the key out. */
static void set_tls(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                    const struct conf_field *f)
{
    struct shared_in *in = base;
    (void)f;
    if (cJSON_IsBool(item)) {
        in->sh.tls = cJSON_IsTrue(item);
        return;
    }
    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path, "expected true, false or an object such as {\"ca_file\": "
                                       "\"/etc/redis/ca.pem\"}");
        return;
    }
    in->sh.tls = 1;
    conf_object_apply(ctx, item, path, shared_tls_fields,
                      sizeof shared_tls_fields / sizeof shared_tls_fields[0], in);
    if ((cJSON_GetObjectItemCaseSensitive(item, "cert_file") == NULL) !=
        (cJSON_GetObjectItemCaseSensitive(item, "key_file") == NULL))
        conf_msgs_add(ctx->errs, path, "cert_file and key_file go together (a client "
                                       "certificate and its private key)");
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
        if (in->sh.tls) {
            conf_path_key(sub, sizeof sub, path, "tls");
            conf_msgs_add(ctx->errs, sub, "not with a unix socket: Redis serves TLS on a TCP "
                                          "port only");
        }
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
    free(sh->tls_ca_file);
    free(sh->tls_server_name);
    free(sh->tls_cert_file);
    free(sh->tls_key_file);
    memset(sh, 0, sizeof *sh);
}
