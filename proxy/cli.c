/* cli: shared by the subcommands: configuration loading and the secrets moved out of the
 * environment. */
#include "proxy/cli.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Key material given in the environment leaves it once loaded: the value moves to a private
 * table (which configuration reloads read through conf_set_getenv) and the environment string
 * is overwritten in place, so it is not left readable in /proc/PID/environ. */
struct secret_var {
    char *name;  /* owned */
    char *value; /* owned, wiped on free */
};
static struct secret_var *secrets;
static size_t nsecrets;

const char *cli_getenv(const char *name)
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
    scrub_env("APNS_KEY");
    for (size_t i = 0; conf && i < conf->nkey_env_names; i++)
        scrub_env(conf->key_env_names[i]);
}

void cli_secrets_free(void)
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

void cli_print_lines(const char *prefix, const char *text)
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

int cli_is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

struct conf *cli_load(const char *path)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    int rc = conf_load(path, &conf, &errors, &warnings);
    if (warnings)
        cli_print_lines("apple-auth-proxy: warning: ", warnings);
    if (rc < 0) {
        cli_print_lines("apple-auth-proxy: ", errors ? errors : "invalid configuration");
        conf = NULL;
    }
    free(errors);
    free(warnings);
    scrub_key_env(conf);
    return conf;
}

void cli_report_problem(enum preflight_outcome outcome, const char *what, const char *msg)
{
    if (outcome == PREFLIGHT_FAIL)
        fprintf(stderr, "apple-auth-proxy: %s: %s\n", what, msg);
    else if (outcome == PREFLIGHT_WARN)
        fprintf(stderr, "apple-auth-proxy: warning: %s: %s\n", what, msg);
}
