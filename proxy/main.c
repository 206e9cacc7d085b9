/* main: the command line: serve, token, check, client-key, health, --help, --version. */
#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/b64.h"
#include "auth/profile.h"
#include "conf/conf.h"
#include "proxy/cli_health.h"
#include "proxy/cli_exchange.h"
#include "proxy/gateway.h"
#include "proxy/hardening.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/cli_ca_cert.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define MAX_SCOPES 64

static const char usage[] =
    "usage:\n"
    "  apple-auth-proxy [serve] [-c|--config FILE] [--listen ADDR:PORT]...\n"
    "  apple-auth-proxy token [-c FILE] [--credential NAME] [--scope \"GET /v1/apps\"]...\n"
    "                         [--lifetime SECONDS] [--decode]\n"
    "  apple-auth-proxy check [-c FILE]\n"
    "  apple-auth-proxy client-key [NAME]\n"
    "  apple-auth-proxy health [--admin ADDR] [--ready] [--timeout SECONDS]\n"
    "  apple-auth-proxy ca-cert [-c FILE] [--bundle]\n"
    "  apple-auth-proxy --help | --version\n"
    "\n"
    "serve   run the proxy (default 127.0.0.1:8080): requests get the Bearer token of their\n"
    "        route's credential and go to Apple over verified TLS\n"
    "token   print one token (the compact JWT alone, or with --decode its header and claims;\n"
    "        maps and apple-business: the access token Apple gives for it)\n"
    "check   validate the configuration and keys, mint one token per credential (maps and\n"
    "        apple-business: exchange one)\n"
    "client-key  make a secret for a gateway client and the key_sha256 line for the\n"
    "        configuration (the secret goes to the client, only its hash to the proxy)\n"
    "health  GET /healthz (/readyz with --ready) on a running proxy's admin listener: exit 0\n"
    "        when it answers 200, else 1 (the container image's HEALTHCHECK)\n"
    "ca-cert print the certificate of the CA that intercepts CONNECT (intercept.ca_dir), for\n"
    "        clients to trust; --bundle prints it after the system's CA bundle\n"
    "\n"
    "Without --config the file named by APPLE_AUTH_PROXY_CONFIG is read; without either, the\n"
    "configuration comes from the environment (APP_STORE_CONNECT_API_KEY_KEY_ID, ...,\n"
    "WEATHERKIT_KEY_ID, ..., APPLE_MAPS_KEY_ID, ..., APPLE_BUSINESS_CLIENT_ID, ...). Exit status: 0 ok, 1 runtime failure, 2 usage or configuration\n"
    "error. Documentation: docs/configuration.md, docs/tokens.md, docs/troubleshooting.md.\n";

/* Key material given in the environment leaves it once loaded: the value moves to a private
 * table (which configuration reloads read through conf_set_getenv) and the environment string
 * is overwritten in place, so it is not left readable in /proc/PID/environ. */
struct secret_var {
    char *name;
    char *value;
};
static struct secret_var *secrets;
static size_t nsecrets;

static const char *secret_getenv(const char *name)
{
    for (size_t i = 0; i < nsecrets; i++)
        if (strcmp(secrets[i].name, name) == 0)
            return secrets[i].value;
    return getenv(name);
}

static void scrub_env(const char *name)
{
    char *v = getenv(name);
    struct secret_var *grown;
    if (v == NULL)
        return;
    grown = realloc(secrets, (nsecrets + 1) * sizeof(*secrets));
    if (grown) {
        secrets = grown;
        secrets[nsecrets].name = strdup(name);
        secrets[nsecrets].value = strdup(v);
        if (secrets[nsecrets].name && secrets[nsecrets].value) {
            nsecrets++;
        } else {
            free(secrets[nsecrets].name);
            free(secrets[nsecrets].value);
        }
    }
    OPENSSL_cleanse(v, strlen(v));
    unsetenv(name);
}

static void scrub_key_env(const struct conf *conf)
{
    scrub_env("APP_STORE_CONNECT_API_KEY_KEY");
    scrub_env("WEATHERKIT_KEY");
    scrub_env("APPLE_MAPS_KEY");
    scrub_env("APPLE_BUSINESS_KEY");
    for (size_t i = 0; conf && i < conf->nkey_env_names; i++)
        scrub_env(conf->key_env_names[i]);
}

static void secrets_free(void)
{
    for (size_t i = 0; i < nsecrets; i++) {
        OPENSSL_cleanse(secrets[i].value, strlen(secrets[i].value));
        free(secrets[i].value);
        free(secrets[i].name);
    }
    free(secrets);
    secrets = NULL;
    nsecrets = 0;
}

static void print_lines(const char *prefix, const char *text)
{
    const char *p = text;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n)
            fprintf(stderr, "%s%.*s\n", prefix, (int)n, p);
        p = nl ? nl + 1 : NULL;
    }
}

/* Loads the configuration; prints warnings and errors. Returns NULL on failure. */
static struct conf *load(const char *path)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    int rc = conf_load(path, &conf, &errors, &warnings);
    if (warnings)
        print_lines("apple-auth-proxy: warning: ", warnings);
    if (rc < 0) {
        print_lines("apple-auth-proxy: ", errors ? errors : "invalid configuration");
        conf = NULL;
    }
    free(errors);
    free(warnings);
    scrub_key_env(conf);
    return conf;
}

/* The gateway's safety rule (conf_check_exposure), reported like configuration errors. */
static int check_exposure(const struct conf *conf)
{
    char *errors = NULL, *warnings = NULL;
    int rc = conf_check_exposure(conf, &errors, &warnings);
    if (warnings)
        print_lines("apple-auth-proxy: warning: ", warnings);
    if (errors)
        print_lines("apple-auth-proxy: ", errors);
    free(errors);
    free(warnings);
    return rc;
}

static cJSON *decode_segment(const char *seg, size_t len)
{
    size_t n;
    uint8_t *raw = b64url_decode(seg, len, &n);
    cJSON *j;
    if (raw == NULL)
        return NULL;
    j = cJSON_ParseWithLength((const char *)raw, n);
    free(raw);
    return j;
}

static int print_decoded(const char *jwt)
{
    const char *dot1 = strchr(jwt, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot2)
        return -1;
    cJSON *out = cJSON_CreateObject();
    cJSON *h = decode_segment(jwt, (size_t)(dot1 - jwt));
    cJSON *c = decode_segment(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (!out || !h || !c) {
        cJSON_Delete(out);
        cJSON_Delete(h);
        cJSON_Delete(c);
        return -1;
    }
    cJSON_AddItemToObject(out, "header", h);
    cJSON_AddItemToObject(out, "claims", c);
    char *s = cJSON_Print(out);
    cJSON_Delete(out);
    if (!s)
        return -1;
    printf("%s\n", s);
    free(s);
    return 0;
}

static int cmd_token(int argc, char **argv)
{
    const char *path = NULL, *name = NULL;
    const char *scope[MAX_SCOPES];
    size_t nscope = 0;
    long lifetime = 0;
    int decode = 0, i, rc = EXIT_RUNTIME;
    char err[512];
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(a, "--credential") && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(a, "--scope") && i + 1 < argc) {
            if (nscope == MAX_SCOPES) {
                fprintf(stderr, "apple-auth-proxy: at most %d --scope entries\n", MAX_SCOPES);
                return EXIT_USAGE;
            }
            scope[nscope++] = argv[++i];
        } else if (!strcmp(a, "--lifetime") && i + 1 < argc) {
            char *end;
            lifetime = strtol(argv[++i], &end, 10);
            if (*end || lifetime <= 0) {
                fprintf(stderr, "apple-auth-proxy: --lifetime: expected a positive number of "
                                "seconds, got \"%s\"\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (!strcmp(a, "--decode")) {
            decode = 1;
        } else {
            fprintf(stderr, "apple-auth-proxy token: unknown or incomplete option \"%s\"\n%s", a,
                    usage);
            return EXIT_USAGE;
        }
    }
    struct conf *conf = load(path);
    if (conf == NULL)
        return EXIT_USAGE;
    struct credential *cred = NULL;
    if (name) {
        cred = (struct credential *)conf_credential(conf, name);
        if (!cred) {
            fprintf(stderr, "apple-auth-proxy: --credential: no credential named \"%s\"\n", name);
            rc = EXIT_USAGE;
            goto out;
        }
    } else if (conf->ncredentials == 1) {
        cred = &conf->credentials[0];
    } else {
        fprintf(stderr, "apple-auth-proxy: %zu credentials are configured; choose one with "
                        "--credential:", conf->ncredentials);
        for (size_t k = 0; k < conf->ncredentials; k++)
            fprintf(stderr, " %s", conf->credentials[k].name);
        fprintf(stderr, "\n");
        rc = EXIT_USAGE;
        goto out;
    }
    if (nscope && cred->profile != PROFILE_APP_STORE_CONNECT) {
        fprintf(stderr, "apple-auth-proxy: --scope: only app-store-connect tokens carry a scope "
                        "(credential %s is %s)\n", cred->name, profile_name(cred->profile));
        rc = EXIT_USAGE;
        goto out;
    }
    if (lifetime) {
        cred->lifetime = lifetime;
        err[0] = '\0';
        if (credential_validate(cred, err, sizeof(err)) > 0) {
            print_lines("apple-auth-proxy: --lifetime: ", err);
            rc = EXIT_USAGE;
            goto out;
        }
    }
    if (profile_exchanged(cred->profile) && !decode) {
        /* What a script needs is the access token; --decode shows the signed assertion. */
        char *cname = strdup(cred->name);
        rc = cname ? cli_exchange_token(&conf, cname) : EXIT_RUNTIME;
        free(cname);
        goto out;
    }
    time_t exp;
    char *jwt = token_mint(cred, nscope ? scope : NULL, nscope, time(NULL), &exp, err,
                           sizeof(err));
    if (jwt == NULL) {
        fprintf(stderr, "apple-auth-proxy: credential %s: %s\n", cred->name, err);
        goto out;
    }
    if (decode) {
        if (print_decoded(jwt) < 0)
            fprintf(stderr, "apple-auth-proxy: cannot decode the token\n");
        else
            rc = 0;
    } else {
        printf("%s\n", jwt);
        rc = 0;
    }
    OPENSSL_cleanse(jwt, strlen(jwt));
    free(jwt);
out:
    conf_free(conf);
    return rc;
}

static int cmd_check(int argc, char **argv)
{
    const char *path = NULL;
    int rc = 0;
    for (int i = 0; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else {
            fprintf(stderr, "apple-auth-proxy check: unknown or incomplete option \"%s\"\n%s",
                    argv[i], usage);
            return EXIT_USAGE;
        }
    }
    struct conf *conf = load(path);
    if (conf == NULL)
        return EXIT_USAGE;
    if (check_exposure(conf) < 0)
        rc = EXIT_USAGE;
    printf("configuration %s: %zu credential%s, %zu route%s\n", conf->source, conf->ncredentials,
           conf->ncredentials == 1 ? "" : "s", conf->nroutes, conf->nroutes == 1 ? "" : "s");
    for (size_t k = 0; k < conf->ncredentials; k++) {
        const struct credential *c = &conf->credentials[k];
        char err[512];
        time_t exp, now = time(NULL);
        char *jwt = token_mint(c, NULL, 0, now, &exp, err, sizeof(err));
        if (jwt == NULL) {
            fprintf(stderr, "apple-auth-proxy: credentials.%s: cannot mint a token: %s\n",
                    c->name, err);
            rc = EXIT_USAGE;
            continue;
        }
        OPENSSL_cleanse(jwt, strlen(jwt));
        free(jwt);
        printf("credential %s: profile %s, key %s, token lifetime %ld s (max %ld), ok\n", c->name,
               profile_name(c->profile), c->key_id, credential_lifetime(c),
               profile_max_lifetime(c->profile));
    }
    for (size_t r = 0; r < conf->nroutes; r++) {
        const struct conf_route *rt = &conf->routes[r];
        printf("route %zu: %s%s%s -> %s (credential %s)\n", r, rt->host ? rt->host : "",
               rt->host ? " " : "", rt->path_prefix, rt->upstream, rt->credential);
    }
    /* maps and apple-business: one real exchange each (it takes conf). */
    if (rc == 0 && cli_exchange_check(&conf) != 0)
        rc = EXIT_RUNTIME;
    conf_free(conf);
    return rc;
}

/* A new gateway client secret: 32 random bytes as base64url (43 characters), and its SHA-256,
 * which is all the configuration holds. */
static int cmd_client_key(int argc, char **argv)
{
    unsigned char raw[32];
    char secret[64], hash[65];
    const char *name = argc > 0 ? argv[0] : "NAME";
    if (argc > 1) {
        fprintf(stderr, "apple-auth-proxy client-key: at most one argument (the client name)\n%s",
                usage);
        return EXIT_USAGE;
    }
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        fprintf(stderr, "apple-auth-proxy: the random number generator failed\n");
        return EXIT_RUNTIME;
    }
    b64url_encode(raw, sizeof(raw), secret);
    OPENSSL_cleanse(raw, sizeof(raw));
    gateway_hash_hex(secret, strlen(secret), hash);
    printf("secret for the client (give it to %s only; it is not stored anywhere):\n  %s\n\n"
           "for the proxy's configuration:\n  \"clients\": { \"%s\": { \"key_sha256\": \"%s\" } }\n\n"
           "the client sends:\n  Proxy-Authorization: Bearer %s\n"
           "or uses HTTP_PROXY=http://%s:%s@HOST:PORT\n",
           name, secret, name, hash, secret, name, secret);
    OPENSSL_cleanse(secret, sizeof(secret));
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    const char *path = NULL;
    const char *listen[16];
    size_t nlisten = 0;
    for (int i = 0; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            if (nlisten == 16) {
                fprintf(stderr, "apple-auth-proxy: at most 16 --listen addresses\n");
                return EXIT_USAGE;
            }
            listen[nlisten++] = argv[++i];
        } else {
            fprintf(stderr, "apple-auth-proxy serve: unknown or incomplete option \"%s\"\n%s",
                    argv[i], usage);
            return EXIT_USAGE;
        }
    }
    struct conf *conf = load(path);
    if (conf == NULL)
        return EXIT_USAGE;
    if (nlisten) {
        struct conf_addr *addrs = calloc(nlisten, sizeof(*addrs));
        if (addrs == NULL) {
            conf_free(conf);
            return EXIT_RUNTIME;
        }
        for (size_t k = 0; k < nlisten; k++)
            if (conf_addr_parse(listen[k], &addrs[k], 1) < 0) {
                fprintf(stderr, "apple-auth-proxy: --listen: invalid address \"%s\" (expected "
                                "HOST:PORT)\n", listen[k]);
                for (size_t j = 0; j < k; j++)
                    conf_addr_deinit(&addrs[j]);
                free(addrs);
                conf_free(conf);
                return EXIT_USAGE;
            }
        /* An address that is a TLS listener in the configuration keeps its TLS settings; a TLS
         * listener left out would otherwise turn into nothing without a word: an error. */
        int bad = 0;
        for (size_t k = 0; k < nlisten; k++)
            for (size_t j = 0; j < conf->nlisten; j++) {
                struct conf_addr *old = &conf->listen[j];
                if ((old->tls_cert_file == NULL && old->nserver_names == 0) ||
                    strcmp(old->text, addrs[k].text) != 0)
                    continue;
                conf_addr_move_settings(&addrs[k], old);
                break;
            }
        for (size_t j = 0; j < conf->nlisten; j++)
            if (conf->listen[j].tls_cert_file) {
                fprintf(stderr, "apple-auth-proxy: --listen leaves out listen[%zu] (%s), a TLS "
                                "listener; add --listen %s to keep it\n", j,
                        conf->listen[j].text, conf->listen[j].text);
                bad = 1;
            }
        for (size_t k = 0; k < conf->nlisten; k++)
            conf_addr_deinit(&conf->listen[k]);
        free(conf->listen);
        conf->listen = addrs;
        conf->nlisten = nlisten;
        if (bad) {
            conf_free(conf);
            return EXIT_USAGE;
        }
    }
    if (check_exposure(conf) < 0) {
        conf_free(conf);
        return EXIT_USAGE;
    }
    return server_run(conf, path);
}

static int run(int argc, char **argv);

int main(int argc, char **argv)
{
    int rc;
    if (hardening_apply() < 0)
        return EXIT_FAILURE;
    conf_set_getenv(secret_getenv);
    rc = run(argc, argv);
    conf_set_getenv(NULL);
    secrets_free();
    return rc;
}

static int run(int argc, char **argv)
{
    const char *lvl = getenv("APPLE_AUTH_PROXY_LOG_LEVEL");
    enum log_level level;
    if (lvl && log_parse_level(lvl, &level) == 0)
        log_set_level(level);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
                      !strcmp(argv[1], "help"))) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
        printf("apple-auth-proxy %s\n", AAP_VERSION);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "token"))
        return cmd_token(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "check"))
        return cmd_check(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "client-key"))
        return cmd_client_key(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "health"))
        return cli_health(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "ca-cert"))
        return cli_ca_cert(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "serve"))
        return cmd_serve(argc - 2, argv + 2);
    if (argc >= 2 && argv[1][0] != '-') {
        fprintf(stderr, "apple-auth-proxy: unknown command \"%s\"\n%s", argv[1], usage);
        return EXIT_USAGE;
    }
    return cmd_serve(argc - 1, argv + 1);
}
