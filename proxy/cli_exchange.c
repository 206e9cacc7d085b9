/* cli_exchange: access-token exchanges for the command line (cli_exchange.h). */
#include "proxy/cli_exchange.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "proxy/runtime.h"
#include "proxy/token_exchange.h"

/* The runtime the exchange needs (TLS contexts, token endpoints, limits), with its own live
 * table (*live, freed by cli_runtime_free). */
static struct runtime *cli_runtime(struct conf **conf, struct live **live)
{
    char err[512];
    struct runtime *rt = NULL;
    *live = live_new();
    if (*live == NULL) {
        conf_free(*conf);
        *conf = NULL;
        fprintf(stderr, "apple-auth-proxy: out of memory\n");
        return NULL;
    }
    rt = runtime_new(*conf, *live, err, sizeof(err));
    *conf = NULL;
    if (rt == NULL) {
        fprintf(stderr, "apple-auth-proxy: %s\n", err);
        live_free(*live);
        *live = NULL;
    }
    return rt;
}

static void cli_runtime_free(struct runtime *rt, struct live *live)
{
    runtime_unref(rt);
    live_free(live); /* after the runtime: it released its entries */
}

/* One exchange; 0 with the token printed (print) or its lifetime reported, else 1. */
static int cli_exchange_one(struct runtime *rt, size_t i, int print)
{
    const struct credential *c = &rt->conf->credentials[i];
    const struct target *t = &rt->targets[rt->token_target[i]];
    char err[512], *token = NULL;
    long expires_in = 0;
    enum exchange_result r = token_exchange_once(rt, i, &token, &expires_in, err, sizeof(err));
    if (r != EXCHANGE_OK) {
        fprintf(stderr, "apple-auth-proxy: credentials.%s: access-token exchange with %s failed "
                        "(%s): %s\n", c->name, t->name, exchange_result_name(r), err);
        return 1;
    }
    if (print)
        printf("%s\n", token);
    else
        printf("credential %s: access-token exchange with %s ok (the token expires in %ld s)\n",
               c->name, t->name, expires_in);
    OPENSSL_cleanse(token, strlen(token));
    free(token);
    return 0;
}

int cli_exchange_token(struct conf **conf, const char *name)
{
    struct live *live;
    struct runtime *rt = cli_runtime(conf, &live);
    int rc = 1;
    if (rt == NULL)
        return 1;
    for (size_t i = 0; i < rt->conf->ncredentials; i++)
        if (strcmp(rt->conf->credentials[i].name, name) == 0)
            rc = cli_exchange_one(rt, i, 1);
    cli_runtime_free(rt, live);
    return rc;
}

int cli_exchange_check(struct conf **conf)
{
    struct runtime *rt;
    struct live *live;
    int rc = 0, any = 0;
    for (size_t i = 0; i < (*conf)->ncredentials; i++)
        any |= profile_exchanged((*conf)->credentials[i].profile);
    if (!any)
        return 0; /* nothing to exchange: conf stays the caller's */
    rt = cli_runtime(conf, &live);
    if (rt == NULL)
        return 1;
    for (size_t i = 0; i < rt->conf->ncredentials; i++)
        if (rt->token_target[i] != SIZE_MAX && cli_exchange_one(rt, i, 0) != 0)
            rc = 1;
    cli_runtime_free(rt, live);
    return rc;
}
