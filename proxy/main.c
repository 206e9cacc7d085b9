/* main: the command line: the subcommands' dispatch (each lives in proxy/cli_NAME.c),
 * --help, --version. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "proxy/cli.h"
#include "proxy/cli_ca_cert.h"
#include "proxy/cli_health.h"
#include "proxy/hardening.h"
#include "proxy/log.h"

static const char usage[] =
    "usage:\n"
    "  apple-auth-proxy [serve] [-c|--config FILE] [--listen ADDR:PORT]...\n"
    "  apple-auth-proxy token [-c FILE] [--credential NAME] [--scope \"GET /v1/apps\"]...\n"
    "                         [--lifetime SECONDS] [--decode]\n"
    "  apple-auth-proxy check [-c FILE] [--bind]\n"
    "  apple-auth-proxy client-key [NAME]\n"
    "  apple-auth-proxy health [--admin ADDR | -c FILE] [--ready] [--timeout SECONDS]\n"
    "  apple-auth-proxy ca-cert [-c FILE] [--bundle]\n"
    "  apple-auth-proxy COMMAND --help\n"
    "  apple-auth-proxy --help | --version\n"
    "\n"
    "serve   run the proxy (default 127.0.0.1:8080): requests get the Bearer token of their\n"
    "        route's credential and go to Apple over verified TLS\n"
    "token   print one token (the compact JWT alone, or with --decode its header and claims;\n"
    "        maps and apple-business: the access token Apple gives for it)\n"
    "check   try what serve tries before accepting traffic (configuration, keys, one token\n"
    "        per credential, listeners and their TLS files, the access log; maps and\n"
    "        apple-business: one exchange) and summarise\n"
    "client-key  make a secret for a gateway client and the key_sha256 line for the\n"
    "        configuration (the secret goes to the client, only its hash to the proxy)\n"
    "health  GET /healthz (/readyz with --ready) on a running proxy's admin listener: exit 0\n"
    "        when it answers 200, else 1 (the container image's HEALTHCHECK)\n"
    "ca-cert print the certificate of the CA that intercepts CONNECT (intercept.ca_dir), for\n"
    "        clients to trust; --bundle prints it after the system's CA bundle\n"
    "\n"
    "Without --config the file named by APPLE_AUTH_PROXY_CONFIG is read; without either, the\n"
    "configuration comes from the environment (APP_STORE_CONNECT_API_KEY_KEY_ID, ...,\n"
    "WEATHERKIT_KEY_ID, ..., APNS_KEY_ID, ..., APPLE_MAPS_KEY_ID, ...,\n"
    "APPLE_BUSINESS_CLIENT_ID, ...).\n"
    "APPLE_AUTH_PROXY_LOG_LEVEL=debug|info|warn|error sets the error log's level (default\n"
    "info). Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error.\n"
    "Documentation: docs/configuration.md, docs/tokens.md, docs/troubleshooting.md.\n";

static int run(int argc, char **argv);

int main(int argc, char **argv)
{
    int rc;
    if (hardening_apply() < 0)
        return EXIT_FAILURE;
    conf_set_getenv(cli_getenv);
    rc = run(argc, argv);
    conf_set_getenv(NULL);
    cli_secrets_free();
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
        return cli_token(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "check"))
        return cli_check(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "client-key"))
        return cli_client_key(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "health"))
        return cli_health(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "ca-cert"))
        return cli_ca_cert(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "serve"))
        return cli_serve(argc - 2, argv + 2);
    if (argc >= 2 && argv[1][0] != '-') {
        fprintf(stderr, "apple-auth-proxy: unknown command \"%s\"\n%s", argv[1], usage);
        return CLI_EXIT_USAGE;
    }
    return cli_serve(argc - 1, argv + 1);
}
