/* cli_token: `apple-auth-proxy token`: one token for a credential, or with --decode its header
 * and claims, with the times in UTC beside them. */
#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/b64.h"
#include "auth/profile.h"
#include "proxy/cli.h"
#include "proxy/cli_exchange.h"

#define TOKEN_MAX_SCOPES 64

static const char token_usage[] =
    "usage: apple-auth-proxy token [-c|--config FILE] [--credential NAME]\n"
    "                              [--scope \"GET /v1/apps\"]... [--lifetime SECONDS] [--decode]\n"
    "\n"
    "Prints one token signed with a credential of the configuration: the compact JWT alone on\n"
    "one line, or with --decode its header and claims as JSON, with iat and exp also written\n"
    "as UTC times under \"times\". For maps and apple-business credentials it prints the access\n"
    "token one exchange with Apple gives (--decode: the signed assertion instead).\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $APPLE_AUTH_PROXY_CONFIG, else the\n"
    "                      environment)\n"
    "  --credential NAME   which credential (needed when there are several)\n"
    "  --scope \"M /path\"   an App Store Connect scope entry (repeatable, up to 64)\n"
    "  --lifetime SECONDS  exp - iat, at most the profile's maximum\n"
    "  --decode            print the header, the claims and their times instead of the token\n"
    "  -h, --help          this text\n"
    "\n"
    "Exit status: 0 ok, 1 the token could not be minted, 2 usage or configuration error.\n";

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

/* "2026-12-07T04:05:06Z" for a claim holding seconds since the epoch; 0 when absent. */
static int add_utc(cJSON *times, const cJSON *claims, const char *claim)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(claims, claim);
    char text[32];
    struct tm tm;
    time_t t;
    if (!cJSON_IsNumber(v))
        return 0;
    t = (time_t)v->valuedouble;
    if (gmtime_r(&t, &tm) == NULL)
        return 0;
    strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return cJSON_AddStringToObject(times, claim, text) ? 0 : -1;
}

static int print_decoded(const char *jwt, time_t now)
{
    const char *dot1 = strchr(jwt, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    cJSON *out = NULL, *h = NULL, *c = NULL, *times = NULL;
    char *s = NULL, nowtext[32];
    struct tm tm;
    int rc = -1;
    if (!dot2)
        goto fail;
    out = cJSON_CreateObject();
    h = decode_segment(jwt, (size_t)(dot1 - jwt));
    c = decode_segment(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    times = cJSON_CreateObject();
    if (!out || !h || !c || !times)
        goto fail;
    /* The claims stay exactly as signed; their readable times go beside them. */
    if (add_utc(times, c, "iat") < 0 || add_utc(times, c, "exp") < 0)
        goto fail;
    gmtime_r(&now, &tm);
    strftime(nowtext, sizeof(nowtext), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!cJSON_AddStringToObject(times, "now", nowtext))
        goto fail;
    cJSON_AddItemToObject(out, "header", h);
    h = NULL;
    cJSON_AddItemToObject(out, "claims", c);
    c = NULL;
    cJSON_AddItemToObject(out, "times", times);
    times = NULL;
    s = cJSON_Print(out);
    if (!s)
        goto fail;
    printf("%s\n", s);
    rc = 0;
fail:
    free(s);
    cJSON_Delete(out);
    cJSON_Delete(h);
    cJSON_Delete(c);
    cJSON_Delete(times);
    return rc;
}

/* The credential the command is about: the one named, else the only one. NULL with a message
 * otherwise. */
static struct credential *token_pick(struct conf *conf, const char *name)
{
    struct credential *cred;
    if (name) {
        cred = (struct credential *)conf_credential(conf, name);
        if (!cred)
            fprintf(stderr, "apple-auth-proxy: --credential: no credential named \"%s\"\n", name);
        return cred;
    }
    if (conf->ncredentials == 1)
        return &conf->credentials[0];
    fprintf(stderr, "apple-auth-proxy: %zu credentials are configured; choose one with "
                    "--credential:", conf->ncredentials);
    for (size_t k = 0; k < conf->ncredentials; k++)
        fprintf(stderr, " %s", conf->credentials[k].name);
    fprintf(stderr, "\n");
    return NULL;
}

int cli_token(int argc, char **argv)
{
    const char *path = NULL, *name = NULL;
    const char *scope[TOKEN_MAX_SCOPES];
    size_t nscope = 0;
    long lifetime = 0;
    int decode = 0, i, rc = CLI_EXIT_RUNTIME;
    char err[512];
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            fputs(token_usage, stdout);
            return 0;
        } else if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(a, "--credential") && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(a, "--scope") && i + 1 < argc) {
            if (nscope == TOKEN_MAX_SCOPES) {
                fprintf(stderr, "apple-auth-proxy: at most %d --scope entries\n",
                        TOKEN_MAX_SCOPES);
                return CLI_EXIT_USAGE;
            }
            scope[nscope++] = argv[++i];
        } else if (!strcmp(a, "--lifetime") && i + 1 < argc) {
            char *end;
            lifetime = strtol(argv[++i], &end, 10);
            if (*end || lifetime <= 0) {
                fprintf(stderr, "apple-auth-proxy: --lifetime: expected a positive number of "
                                "seconds, got \"%s\"\n", argv[i]);
                return CLI_EXIT_USAGE;
            }
        } else if (!strcmp(a, "--decode")) {
            decode = 1;
        } else {
            fprintf(stderr, "apple-auth-proxy token: unknown or incomplete option \"%s\"\n%s", a,
                    token_usage);
            return CLI_EXIT_USAGE;
        }
    }
    struct conf *conf = cli_load(path);
    if (conf == NULL)
        return CLI_EXIT_USAGE;
    struct credential *cred = token_pick(conf, name);
    if (cred == NULL) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (nscope && cred->profile != PROFILE_APP_STORE_CONNECT) {
        fprintf(stderr, "apple-auth-proxy: --scope: only app-store-connect tokens carry a scope "
                        "(credential %s is %s)\n", cred->name, profile_name(cred->profile));
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (lifetime) {
        cred->lifetime = lifetime;
        err[0] = '\0';
        if (credential_validate(cred, err, sizeof(err)) > 0) {
            cli_print_lines("apple-auth-proxy: --lifetime: ", err);
            rc = CLI_EXIT_USAGE;
            goto out;
        }
    }
    if (profile_exchanged(cred->profile) && !decode) {
        /* What a script needs is the access token; --decode shows the signed assertion. */
        char *cname = strdup(cred->name);
        rc = cname ? cli_exchange_token(&conf, cname) : CLI_EXIT_RUNTIME;
        free(cname);
        goto out;
    }
    time_t exp, now = time(NULL);
    char *jwt = token_mint(cred, nscope ? scope : NULL, nscope, now, &exp, err, sizeof(err));
    if (jwt == NULL) {
        fprintf(stderr, "apple-auth-proxy: credential %s: %s\n", cred->name, err);
        goto out;
    }
    if (decode) {
        if (print_decoded(jwt, now) < 0)
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
