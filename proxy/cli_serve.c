/* cli_serve: `apple-auth-proxy serve`: the configuration, --listen overrides, the pre-flight
 * checks `check` also runs, then the server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/cli.h"
#include "proxy/server.h"

#define SERVE_MAX_LISTEN 16

static const char serve_usage[] =
    "usage: apple-auth-proxy [serve] [-c|--config FILE] [--listen ADDR:PORT]...\n"
    "\n"
    "Runs the proxy: requests get the Bearer token of their route's credential and go to Apple\n"
    "over verified TLS. Before it accepts traffic it runs the checks `apple-auth-proxy check`\n"
    "runs (configuration, keys, the exposure rule, listener TLS files, the access log) and\n"
    "mints every route's token.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $APPLE_AUTH_PROXY_CONFIG, else the\n"
    "                      environment: docs/configuration.md)\n"
    "  --listen ADDR:PORT  listen here instead of the configuration's \"listen\" (repeatable,\n"
    "                      up to 16; a TLS listener keeps its settings when its address is\n"
    "                      given again)\n"
    "  -h, --help          this text\n"
    "\n"
    "Signals: SIGHUP reloads the configuration and keys, SIGUSR1 reopens the access log,\n"
    "SIGTERM/SIGINT drain and stop. Environment: APPLE_AUTH_PROXY_LOG_LEVEL=debug|info|warn|\n"
    "error (default info), APPLE_AUTH_PROXY_LISTEN, APPLE_AUTH_PROXY_ADMIN_LISTEN,\n"
    "APPLE_AUTH_PROXY_WORKERS. Exit status: 0 after a clean stop, 1 when it cannot start, 2 on\n"
    "a usage or configuration error.\n";

static void serve_report(void *arg, enum preflight_outcome outcome, const char *what,
                         const char *msg)
{
    cli_report_problem(outcome, what, msg);
}

/* Replaces the configuration's listen addresses with the --listen ones. An address that is a
 * TLS listener (or has server_names) in the configuration keeps its settings; a TLS listener left out would
 * otherwise turn into nothing without a word: an error. Returns 0 or an exit status. */
static int serve_override_listen(struct conf *conf, const char *const *listen, size_t nlisten)
{
    struct conf_addr *addrs = calloc(nlisten, sizeof(*addrs));
    int bad = 0;
    if (addrs == NULL)
        return CLI_EXIT_RUNTIME;
    for (size_t k = 0; k < nlisten; k++)
        if (conf_addr_parse(listen[k], &addrs[k], 1) < 0) {
            fprintf(stderr, "apple-auth-proxy: --listen: invalid address \"%s\" (expected "
                            "HOST:PORT)\n", listen[k]);
            for (size_t j = 0; j < k; j++)
                conf_addr_deinit(&addrs[j]);
            free(addrs);
            return CLI_EXIT_USAGE;
        }
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
            char name[64];
            conf_listen_name(conf, j, name, sizeof(name));
            fprintf(stderr, "apple-auth-proxy: --listen leaves out %s (%s), a TLS listener; add "
                            "--listen %s to keep it\n", name, conf->listen[j].text,
                    conf->listen[j].text);
            bad = 1;
        }
    for (size_t k = 0; k < conf->nlisten; k++)
        conf_addr_deinit(&conf->listen[k]);
    free(conf->listen);
    conf->listen = addrs;
    conf->nlisten = nlisten;
    conf->listen_source = "--listen";
    return bad ? CLI_EXIT_USAGE : 0;
}

int cli_serve(int argc, char **argv)
{
    const char *path = NULL;
    const char *listen[SERVE_MAX_LISTEN];
    size_t nlisten = 0, conf_errors = 0;
    int rc;
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(serve_usage, stdout);
            return 0;
        } else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            if (nlisten == SERVE_MAX_LISTEN) {
                fprintf(stderr, "apple-auth-proxy: at most %d --listen addresses\n",
                        SERVE_MAX_LISTEN);
                return CLI_EXIT_USAGE;
            }
            listen[nlisten++] = argv[++i];
        } else {
            fprintf(stderr, "apple-auth-proxy serve: unknown or incomplete option \"%s\"\n%s",
                    argv[i], serve_usage);
            return CLI_EXIT_USAGE;
        }
    }
    struct conf *conf = cli_load(path);
    if (conf == NULL)
        return CLI_EXIT_USAGE;
    if (nlisten && (rc = serve_override_listen(conf, listen, nlisten)) != 0) {
        conf_free(conf);
        return rc;
    }
    /* Binding is left to the server itself: it keeps the sockets it binds. */
    if (preflight_run(conf, 0, serve_report, NULL, &conf_errors) > 0) {
        conf_free(conf);
        return conf_errors ? CLI_EXIT_USAGE : CLI_EXIT_RUNTIME;
    }
    return server_run(conf, path);
}
