/* cli_check: `apple-auth-proxy check`: everything serve does before it accepts traffic that
 * can be done without side effects (the same pre-flight function serve runs, every token
 * minted, upstream TLS contexts built), then a summary of what would be served. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/profile.h"
#include "proxy/cli.h"
#include "proxy/cli_exchange.h"
#include "proxy/live.h"
#include "proxy/runtime.h"

static const char check_usage[] =
    "usage: apple-auth-proxy check [-c|--config FILE] [--bind]\n"
    "\n"
    "Tries what `serve` tries before it accepts traffic, without side effects: the\n"
    "configuration and keys, one token minted per credential and per route, the upstream TLS\n"
    "settings, the exposure rule, each listener's address and TLS certificate, key and client\n"
    "CAs, the admin address, and the access log it would open for writing; for maps and\n"
    "apple-business credentials, one access-token exchange with Apple each. Then it lists the\n"
    "listeners, credentials, clients and routes, what it could not try, and a verdict.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $APPLE_AUTH_PROXY_CONFIG, else the\n"
    "                      environment)\n"
    "  --bind              also bind each listen address and release it at once (without it\n"
    "                      the addresses are only resolved; a proxy already running there\n"
    "                      makes the bind fail)\n"
    "  -h, --help          this text\n"
    "\n"
    "Problems go to stderr, the summary to stdout; its last line is \"check: ok\" only when\n"
    "serve would start. Exit status: 0 ok, 1 serve would fail to start (a file, an address),\n"
    "2 usage or configuration error.\n";

/* What the pre-flight findings turn into: problems on stderr at once, the rest kept for the
 * summary. */
struct check_state {
    FILE *tried;   /* owned: what was tried and passed */
    FILE *untried; /* owned: what could not be tried */
};

static void check_report(void *arg, enum preflight_outcome outcome, const char *what,
                         const char *msg)
{
    struct check_state *st = arg;
    if (outcome == PREFLIGHT_OK)
        fprintf(st->tried, "tried: %s: %s\n", what, msg);
    else if (outcome == PREFLIGHT_UNTRIED)
        fprintf(st->untried, "not tried: %s: %s\n", what, msg);
    else
        cli_report_problem(outcome, what, msg);
}

static void summary_listeners(FILE *out, const struct conf *conf)
{
    char name[64];
    for (size_t i = 0; i < conf->nlisten; i++) {
        const struct conf_addr *a = &conf->listen[i];
        conf_listen_name(conf, i, name, sizeof(name));
        if (a->tls_cert_file == NULL)
            fprintf(out, "listener %s: %s, http\n", name, a->text);
        else if (a->tls_client_ca_file == NULL)
            fprintf(out, "listener %s: %s, https (certificate %s)\n", name, a->text,
                    a->tls_cert_file);
        else
            fprintf(out, "listener %s: %s, https (certificate %s; client certificates verified "
                         "against %s)\n", name, a->text, a->tls_cert_file,
                    a->tls_client_ca_file);
    }
    if (conf->admin_listen.text)
        fprintf(out, "admin_listen: %s, http (/healthz, /readyz, /metrics)\n",
                conf->admin_listen.text);
    else
        fprintf(out, "admin_listen: off\n");
}

static void summary_clients(FILE *out, const struct conf *conf)
{
    if (conf->nclients == 0)
        fprintf(out, "clients: none (%s)\n", conf->allow_anonymous_clients
                                                 ? "anyone who can reach a listener is served"
                                                 : "loopback listeners only");
    for (size_t i = 0; i < conf->nclients; i++) {
        const struct conf_client *c = &conf->clients[i];
        fprintf(out, "client %s: identified by %s%s%s", c->name, c->has_key ? "secret" : "",
                c->has_key && c->cert_subject ? " or " : "",
                c->cert_subject ? "certificate subject " : "");
        if (c->cert_subject)
            fprintf(out, "\"%s\"", c->cert_subject);
        if (c->nallow == 0) {
            fprintf(out, "; allowed every method and path");
        } else {
            fprintf(out, "; allowed");
            for (size_t r = 0; r < c->nallow; r++) {
                const struct conf_allow_rule *rule = &c->allow[r];
                fprintf(out, "%s ", r ? "," : "");
                for (size_t m = 0; m < rule->nmethods; m++)
                    fprintf(out, "%s%s", m ? "|" : "", rule->methods[m]);
                fprintf(out, "%s%s", rule->nmethods ? " " : "* ", rule->path_prefix);
            }
        }
        if (c->ncredentials) {
            fprintf(out, "; credentials");
            for (size_t k = 0; k < c->ncredentials; k++)
                fprintf(out, " %s", c->credentials[k]);
        }
        if (c->nallow_cidrs) {
            fprintf(out, "; from");
            for (size_t k = 0; k < c->nallow_cidrs; k++)
                fprintf(out, " %s", c->allow_cidrs[k].text);
        }
        if (c->rate_per_second > 0)
            fprintf(out, "; rate %g/s (burst %g)", c->rate_per_second, c->rate_burst);
        fprintf(out, "%s\n", c->priority ? "; priority" : "");
    }
}

static void summary_routes(FILE *out, const struct conf *conf)
{
    for (size_t r = 0; r < conf->nroutes; r++) {
        const struct conf_route *rt = &conf->routes[r];
        fprintf(out, "route %zu: %s%s%s -> %s (credential %s%s)\n", r, rt->host ? rt->host : "",
                rt->host ? " " : "", rt->path_prefix, rt->upstream, rt->credential,
                rt->client_scopes ? ", client_scopes" : "");
    }
}

/* Mints one token per credential; each failure is reported on its own. Returns failures. */
static size_t check_credentials(FILE *out, const struct conf *conf)
{
    size_t failures = 0;
    for (size_t k = 0; k < conf->ncredentials; k++) {
        const struct credential *c = &conf->credentials[k];
        char err[512];
        time_t exp, now = time(NULL);
        char *jwt = token_mint(c, NULL, 0, now, &exp, err, sizeof(err));
        if (jwt == NULL) {
            fprintf(stderr, "apple-auth-proxy: credentials.%s: cannot mint a token: %s\n",
                    c->name, err);
            failures++;
            continue;
        }
        OPENSSL_cleanse(jwt, strlen(jwt));
        free(jwt);
        fprintf(out, "credential %s: profile %s, key %s, token lifetime %ld s (max %ld), token "
                     "minted\n", c->name, profile_name(c->profile), c->key_id,
                credential_lifetime(c), profile_max_lifetime(c->profile));
    }
    return failures;
}

/* Closes an open_memstream stream (which sets *text) and prints what it gathered. */
static void put_stream(FILE *f, char **text)
{
    fclose(f);
    if (*text)
        fputs(*text, stdout);
    free(*text);
    *text = NULL;
}

int cli_check(int argc, char **argv)
{
    const char *path = NULL;
    unsigned flags = 0;
    size_t failures, conf_errors = 0;
    struct check_state st;
    char *summary = NULL, *tried = NULL, *untried = NULL, err[512];
    size_t nsummary, ntried, nuntried;
    FILE *sum;
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(check_usage, stdout);
            return 0;
        } else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(argv[i], "--bind")) {
            flags |= PREFLIGHT_BIND;
        } else {
            fprintf(stderr, "apple-auth-proxy check: unknown or incomplete option \"%s\"\n%s",
                    argv[i], check_usage);
            return CLI_EXIT_USAGE;
        }
    }
    struct conf *conf = cli_load(path);
    if (conf == NULL)
        return CLI_EXIT_USAGE;
    sum = open_memstream(&summary, &nsummary);
    st.tried = open_memstream(&tried, &ntried);
    st.untried = open_memstream(&untried, &nuntried);
    if (!sum || !st.tried || !st.untried) {
        fprintf(stderr, "apple-auth-proxy: out of memory\n");
        exit(CLI_EXIT_RUNTIME);
    }
    fprintf(sum, "configuration %s: %zu listener%s, %zu credential%s, %zu client%s, %zu route%s\n",
            conf->source, conf->nlisten, conf->nlisten == 1 ? "" : "s", conf->ncredentials,
            conf->ncredentials == 1 ? "" : "s", conf->nclients, conf->nclients == 1 ? "" : "s",
            conf->nroutes, conf->nroutes == 1 ? "" : "s");
    summary_listeners(sum, conf);
    failures = preflight_run(conf, flags, check_report, &st, &conf_errors);
    /* A credential that cannot sign is the configuration's fault (its key). */
    size_t mint_failures = check_credentials(sum, conf);
    summary_clients(sum, conf);
    summary_routes(sum, conf);
    int exchanged = 0;
    for (size_t k = 0; k < conf->ncredentials; k++)
        exchanged |= profile_exchanged(conf->credentials[k].profile);
    fprintf(st.untried, "not tried: upstreams: reaching them (check sends nothing to Apple's "
                        "APIs%s)\n", exchanged ? "; only the maps and apple-business token "
                                              "exchanges below" : "");
    put_stream(sum, &summary);
    put_stream(st.tried, &tried);
    put_stream(st.untried, &untried);
    fflush(stdout);
    /* Last, what serve builds from the configuration: the upstream TLS contexts (route
     * ca_file) and the token of every route and client_scopes client, or for maps and
     * apple-business credentials one real exchange each (each path takes conf). The summary
     * above ends in no verdict: that comes after these. */
    if (mint_failures) {
        conf_free(conf);
    } else if (exchanged) {
        if (cli_exchange_check(&conf) != 0)
            failures++;
        conf_free(conf); /* NULL once taken */
    } else {
        struct live *live = live_new();
        struct runtime *rt = NULL;
        if (live == NULL) {
            fprintf(stderr, "apple-auth-proxy: out of memory\n");
            exit(CLI_EXIT_RUNTIME);
        }
        /* The interception CA was tried by the pre-flight without making anything; the
         * runtime would make one in a directory that has none, a side effect check must not
         * have. */
        free(conf->intercept_ca_dir);
        conf->intercept_ca_dir = NULL;
        if ((rt = runtime_new(conf, live, err, sizeof(err))) == NULL) {
            fprintf(stderr, "apple-auth-proxy: %s\n", err);
            conf_errors++;
            failures++;
        }
        runtime_unref(rt);
        live_free(live);
    }
    conf_errors += mint_failures;
    failures += mint_failures;
    if (failures == 0) {
        printf("check: ok\n");
        return 0;
    }
    printf("check: %zu problem%s (on stderr); serve would not start\n", failures,
           failures == 1 ? "" : "s");
    return conf_errors ? CLI_EXIT_USAGE : CLI_EXIT_RUNTIME;
}
