/* cli_ca_cert: `apple-auth-proxy ca-cert [-c FILE] [--bundle]`: prints the interception CA's
 * certificate (making the CA when the directory has none yet), for clients to trust. */
#include "proxy/cli_ca_cert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "conf/conf.h"
#include "proxy/intercept.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
/* The system bundle is copied through in pieces of this size. */
#define COPY_CHUNK 65536

static const char ca_cert_usage[] =
    "usage: apple-auth-proxy ca-cert [-c|--config FILE] [--bundle]\n"
    "\n"
    "Prints the certificate of the CA that intercepts CONNECT to the configured upstreams\n"
    "(intercept.ca_dir, or APPLE_AUTH_PROXY_INTERCEPT_CA_DIR), making the CA there when there\n"
    "is none yet. --bundle prints the system's CA bundle first ($SSL_CERT_FILE, else OpenSSL's\n"
    "default file), for clients whose trust store is a single file.\n";

static void print_lines(const char *prefix, const char *text)
{
    const char *p = text;
    while (*p) {
        size_t n = strcspn(p, "\n");
        fprintf(stderr, "%s%.*s\n", prefix, (int)n, p);
        p += n + (p[n] == '\n');
    }
}

/* Copies the system bundle to stdout, ending with a newline. */
static int print_bundle(void)
{
    const char *path = getenv(X509_get_default_cert_file_env());
    char *buf;
    size_t n, last = '\n';
    FILE *f;
    if (path == NULL || path[0] == '\0')
        path = X509_get_default_cert_file();
    f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "apple-auth-proxy ca-cert: cannot read the system CA bundle %s\n", path);
        return -1;
    }
    buf = malloc(COPY_CHUNK);
    if (buf == NULL) {
        fclose(f);
        return -1;
    }
    while ((n = fread(buf, 1, COPY_CHUNK, f)) > 0) {
        fwrite(buf, 1, n, stdout);
        last = (unsigned char)buf[n - 1];
    }
    free(buf);
    fclose(f);
    if (last != '\n')
        putchar('\n');
    return 0;
}

int cli_ca_cert(int argc, char **argv)
{
    const char *path = NULL;
    int bundle = 0, rc = EXIT_RUNTIME;
    struct conf *conf = NULL;
    struct intercept *ic = NULL;
    char *errors = NULL, *warnings = NULL;
    const char **hosts = NULL;
    char err[512], warn[1024];
    size_t i;
    for (i = 0; i < (size_t)argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < (size_t)argc) {
            path = argv[++i];
        } else if (!strcmp(argv[i], "--bundle")) {
            bundle = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(ca_cert_usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "apple-auth-proxy ca-cert: unknown or incomplete option \"%s\"\n%s",
                    argv[i], ca_cert_usage);
            return EXIT_USAGE;
        }
    }
    if (conf_load(path, &conf, &errors, &warnings) < 0) {
        print_lines("apple-auth-proxy: ", errors ? errors : "invalid configuration");
        rc = EXIT_USAGE;
        goto out;
    }
    if (conf->intercept_ca_dir == NULL) {
        fprintf(stderr, "apple-auth-proxy ca-cert: interception is off in %s: set "
                        "\"intercept\": {\"ca_dir\": DIR} or APPLE_AUTH_PROXY_INTERCEPT_CA_DIR\n",
                conf->source);
        rc = EXIT_USAGE;
        goto out;
    }
    hosts = calloc(conf->nroutes ? conf->nroutes : 1, sizeof(*hosts));
    if (hosts == NULL)
        goto out;
    for (i = 0; i < conf->nroutes; i++)
        hosts[i] = conf->routes[i].upstream_host;
    ic = intercept_new(conf->intercept_ca_dir, hosts, conf->nroutes, err, sizeof(err), warn,
                       sizeof(warn));
    if (ic == NULL) {
        fprintf(stderr, "apple-auth-proxy ca-cert: %s\n", err);
        goto out;
    }
    if (warn[0])
        fprintf(stderr, "apple-auth-proxy: warning: intercept: %s\n", warn);
    if (bundle && print_bundle() < 0)
        goto out;
    if (!PEM_write_X509(stdout, intercept_ca_cert(ic)) || fflush(stdout) != 0) {
        fprintf(stderr, "apple-auth-proxy ca-cert: cannot write the certificate\n");
        goto out;
    }
    rc = 0;
out:
    if (warnings)
        print_lines("apple-auth-proxy: warning: ", warnings);
    free(errors);
    free(warnings);
    free(hosts);
    intercept_free(ic);
    conf_free(conf);
    return rc;
}
