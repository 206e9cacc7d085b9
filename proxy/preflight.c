/* preflight: serve's start-up checks without side effects, shared with `check`. */
#include "proxy/preflight.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "proxy/intercept.h"
#include "proxy/shared.h"
#include "proxy/tls_tickets.h"

#define LISTEN_BACKLOG 1024
#define EXPIRY_WARN_SECONDS (14 * 86400) /* a certificate this close to expiry gets a warning */
#define PREFLIGHT_MSG_MAX 768

static time_t asn1_to_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

time_t preflight_cert_expiry(SSL_CTX *ctx)
{
    X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
    return x ? asn1_to_time(X509_get0_notAfter(x)) : 0;
}

time_t preflight_file_expiry(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x;
    time_t first = 0;
    if (f == NULL)
        return 0;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        time_t t = asn1_to_time(X509_get0_notAfter(x));
        if (t && (first == 0 || t < first))
            first = t;
        X509_free(x);
    }
    ERR_clear_error(); /* the end of the file reads as an error */
    fclose(f);
    return first;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, (const unsigned char *)"\x08http/1.1", 9, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

/* A resumed session skips certificate verification, so a session must resume only where it
 * was made: on this listener, with these client CAs. The session ID context names both (the
 * CA file's contents, so that a reload that drops a CA also ends its sessions), and OpenSSL
 * refuses to resume a session (ticket or cached) made under another. */
static int listener_sid_ctx(const struct conf_addr *a, unsigned char *out, unsigned int *outlen)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    BIO *f = NULL;
    unsigned char buf[4096];
    int n, rc = -1;
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, "apple-auth-proxy", 17) != 1 ||
        EVP_DigestUpdate(md, a->text, strlen(a->text) + 1) != 1)
        goto out;
    if (a->tls_client_ca_file) {
        f = BIO_new_file(a->tls_client_ca_file, "rb");
        if (f == NULL)
            goto out;
        while ((n = BIO_read(f, buf, sizeof(buf))) > 0)
            if (EVP_DigestUpdate(md, buf, (size_t)n) != 1)
                goto out;
        if (n < 0)
            goto out;
    }
    if (EVP_DigestFinal_ex(md, out, outlen) == 1)
        rc = 0;
out:
    BIO_free(f);
    EVP_MD_CTX_free(md);
    return rc;
}

/* Client certificates are optional for the client: one without can still identify itself with
 * Proxy-Authorization. tickets NULL: no session tickets (check builds the context only to try
 * the files). err gets "ADDRESS: why". */
static SSL_CTX *listener_tls_new(const struct conf_addr *a, struct tls_tickets *tickets,
                                 char *err, size_t errlen)
{
    unsigned char sid_ctx[EVP_MAX_MD_SIZE];
    unsigned int sid_len = 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const char *what = "cannot create a TLS context";
    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Idle connections give their record buffers back; read-ahead takes a flight of records
     * (the client's Finished and its request) in one read instead of two per record. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    /* One TLS 1.3 ticket per handshake, not two: a client resumes with one, and each costs an
     * encryption and a record. Sessions live as long as the ticket keys are sure to. */
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_timeout(ctx, TLS_TICKETS_ROTATE_SECONDS);
    what = "cannot set up session tickets";
    if (tickets && tls_tickets_attach(tickets, ctx) < 0)
        goto fail;
    /* OpenSSL decrypts records in place and would keep a client's plaintext (its
     * Proxy-Authorization secret) in its read buffer until the next record overwrites it. */
    SSL_CTX_set_options(ctx, SSL_OP_CLEANSE_PLAINTEXT);
    what = "cannot load cert_file";
    if (SSL_CTX_use_certificate_chain_file(ctx, a->tls_cert_file) != 1)
        goto fail;
    what = "cannot load key_file";
    if (SSL_CTX_use_PrivateKey_file(ctx, a->tls_key_file, SSL_FILETYPE_PEM) != 1)
        goto fail;
    what = "key_file does not match cert_file";
    if (SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    what = "cannot read client_ca_file";
    if (listener_sid_ctx(a, sid_ctx, &sid_len) < 0 ||
        SSL_CTX_set_session_id_context(ctx, sid_ctx, sid_len) != 1)
        goto fail;
    if (a->tls_client_ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(a->tls_client_ca_file);
        what = "cannot load client_ca_file";
        if (names == NULL || SSL_CTX_load_verify_locations(ctx, a->tls_client_ca_file, NULL) != 1) {
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
fail:
    {
        unsigned long e = ERR_peek_last_error();
        snprintf(err, errlen, "%s: %s%s%s", a->text, what, e ? ": " : "",
                 e ? ERR_reason_error_string(e) : "");
        ERR_clear_error();
    }
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *preflight_listener_tls(const struct conf *conf, size_t i, struct tls_tickets *tickets,
                                char *err, size_t errlen)
{
    char name[64], why[PREFLIGHT_MSG_MAX];
    SSL_CTX *ctx = listener_tls_new(&conf->listen[i], tickets, why, sizeof(why));
    if (ctx == NULL) {
        conf_listen_name(conf, i, name, sizeof(name));
        snprintf(err, errlen, "%s %s", name, why);
    }
    return ctx;
}

int preflight_listen_socket(int family, const struct sockaddr_storage *ss, socklen_t sslen)
{
    int one = 1, saved;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)ss, sslen) < 0)
        goto fail;
    if (listen(fd, LISTEN_BACKLOG) < 0)
        goto fail;
    return fd;
fail:
    saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int preflight_resolve(const struct conf_addr *a, struct addrinfo **res)
{
    struct addrinfo hints;
    char port[8];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof(port), "%d", a->port);
    return getaddrinfo(a->host, port, &hints, res);
}

/* Resolves an address the way serve does, and with bind set binds and releases it. */
static void check_address(const struct conf_addr *a, const char *what, int bind_it,
                          preflight_report_fn report, void *arg, size_t *failures)
{
    struct addrinfo *res = NULL;
    struct sockaddr_storage ss;
    char msg[PREFLIGHT_MSG_MAX];
    int rc, fd;
    rc = preflight_resolve(a, &res);
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "%s: cannot resolve %s: %s", a->text, a->host,
                 gai_strerror(rc));
        report(arg, PREFLIGHT_FAIL, what, msg);
        (*failures)++;
        return;
    }
    if (!bind_it) {
        snprintf(msg, sizeof(msg), "%s: the address resolves; binding it was not tried (check "
                                   "--bind tries it)", a->text);
        report(arg, PREFLIGHT_UNTRIED, what, msg);
        freeaddrinfo(res);
        return;
    }
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    fd = preflight_listen_socket(res->ai_family, &ss, res->ai_addrlen);
    if (fd < 0) {
        snprintf(msg, sizeof(msg), "%s: cannot listen there: %s", a->text, strerror(errno));
        report(arg, PREFLIGHT_FAIL, what, msg);
        (*failures)++;
    } else {
        close(fd);
        snprintf(msg, sizeof(msg), "%s: bound and released", a->text);
        report(arg, PREFLIGHT_OK, what, msg);
    }
    freeaddrinfo(res);
}

static void check_expiry(time_t exp, const char *file_what, const char *file, const char *what,
                         preflight_report_fn report, void *arg)
{
    char msg[PREFLIGHT_MSG_MAX], when[32];
    struct tm tm;
    time_t now = time(NULL);
    if (exp == 0)
        return;
    gmtime_r(&exp, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (exp <= now)
        snprintf(msg, sizeof(msg), "%s %s expired at %s", file_what, file, when);
    else if (exp - now < EXPIRY_WARN_SECONDS)
        snprintf(msg, sizeof(msg), "%s %s expires at %s, in less than %d days", file_what, file,
                 when, EXPIRY_WARN_SECONDS / 86400);
    else
        return;
    report(arg, PREFLIGHT_WARN, what, msg);
}

static void check_listener(const struct conf *conf, size_t i, int bind_it,
                           preflight_report_fn report, void *arg, size_t *failures)
{
    const struct conf_addr *a = &conf->listen[i];
    char what[64], msg[PREFLIGHT_MSG_MAX];
    conf_listen_name(conf, i, what, sizeof(what));
    check_address(a, what, bind_it, report, arg, failures);
    if (a->tls_cert_file == NULL)
        return;
    SSL_CTX *ctx = listener_tls_new(a, NULL, msg, sizeof(msg));
    if (ctx == NULL) {
        report(arg, PREFLIGHT_FAIL, what, msg);
        (*failures)++;
        return;
    }
    snprintf(msg, sizeof(msg), "%s: TLS certificate, key%s loaded", a->text,
             a->tls_client_ca_file ? " and client CAs" : "");
    report(arg, PREFLIGHT_OK, what, msg);
    check_expiry(preflight_cert_expiry(ctx), "cert_file", a->tls_cert_file, what, report, arg);
    if (a->tls_client_ca_file)
        check_expiry(preflight_file_expiry(a->tls_client_ca_file), "a certificate in "
                     "client_ca_file", a->tls_client_ca_file, what, report, arg);
    SSL_CTX_free(ctx);
}

/* shared_state.tls: serve loads the CA file (or the system's store), the client certificate
 * and its key into one context when it starts; a key that is not the certificate's, or a file
 * OpenSSL cannot read, stops it. Redis itself is not contacted. */
static void check_shared_tls(const struct conf *conf, preflight_report_fn report, void *arg,
                             size_t *failures)
{
    char msg[PREFLIGHT_MSG_MAX];
    struct shared *sh;
    if (conf->shared.redis == NULL || !conf->shared.tls)
        return;
    sh = shared_new(&conf->shared, 0, msg, sizeof(msg));
    if (sh == NULL) {
        report(arg, PREFLIGHT_FAIL, "shared_state.tls", msg);
        (*failures)++;
        return;
    }
    snprintf(msg, sizeof(msg), "%s: trusted certificates%s loaded", conf->shared.redis,
             conf->shared.tls_cert_file ? ", client certificate and key" : "");
    report(arg, PREFLIGHT_OK, "shared_state.tls", msg);
    if (conf->shared.tls_cert_file)
        check_expiry(preflight_file_expiry(conf->shared.tls_cert_file), "cert_file",
                     conf->shared.tls_cert_file, "shared_state.tls", report, arg);
    shared_free(sh);
}

/* serve opens the access log with O_APPEND | O_CREAT: an existing file must open for writing
 * (opened without O_CREAT and closed: no side effect), a missing one needs a directory it can
 * create files in. */
static void check_access_log(const char *path, preflight_report_fn report, void *arg,
                             size_t *failures)
{
    char msg[PREFLIGHT_MSG_MAX], dir[4096];
    const char *slash;
    struct stat st;
    int fd;
    if (path == NULL || strcmp(path, "-") == 0 || strcmp(path, "off") == 0)
        return;
    fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd >= 0) {
        close(fd);
        snprintf(msg, sizeof(msg), "%s opens for writing", path);
        report(arg, PREFLIGHT_OK, "access_log", msg);
        return;
    }
    if (errno != ENOENT) {
        snprintf(msg, sizeof(msg), "%s: cannot open it for writing: %s", path, strerror(errno));
        goto fail;
    }
    slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    if (stat(dir, &st) != 0) {
        snprintf(msg, sizeof(msg), "%s: the directory %.256s does not exist (create it first; the "
                                   "proxy creates only the file)", path, dir);
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(msg, sizeof(msg), "%s: %.256s is not a directory", path, dir);
        goto fail;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(msg, sizeof(msg), "%s: cannot create files in %.256s: %s", path, dir,
                 strerror(errno));
        goto fail;
    }
    snprintf(msg, sizeof(msg), "%s does not exist yet; serve creates it in %.256s", path, dir);
    report(arg, PREFLIGHT_OK, "access_log", msg);
    return;
fail:
    report(arg, PREFLIGHT_FAIL, "access_log", msg);
    (*failures)++;
}

/* The interception CA: serve loads it, or makes it in a directory that has none; check loads it
 * the same way and, where there is none yet, tries whether serve could make it there. */
static void check_intercept(const struct conf *conf, preflight_report_fn report, void *arg,
                            size_t *failures)
{
    char msg[PREFLIGHT_MSG_MAX], err[PREFLIGHT_MSG_MAX - 64], warn[PREFLIGHT_MSG_MAX];
    const char **hosts;
    time_t not_after = 0;
    size_t i;
    int r;
    if (conf->intercept_ca_dir == NULL)
        return;
    hosts = calloc(conf->nroutes ? conf->nroutes : 1, sizeof(*hosts));
    if (hosts == NULL) {
        report(arg, PREFLIGHT_FAIL, "intercept", "out of memory");
        (*failures)++;
        return;
    }
    for (i = 0; i < conf->nroutes; i++)
        hosts[i] = conf->routes[i].upstream_host;
    r = intercept_check(conf->intercept_ca_dir, hosts, conf->nroutes, &not_after, err,
                        sizeof(err), warn, sizeof(warn));
    free(hosts);
    if (r < 0) {
        report(arg, PREFLIGHT_FAIL, "intercept", err);
        (*failures)++;
        return;
    }
    if (r == 0)
        snprintf(msg, sizeof(msg), "no CA in %s yet; serve makes one there", conf->intercept_ca_dir);
    else
        snprintf(msg, sizeof(msg), "the CA in %s loads and permits every upstream",
                 conf->intercept_ca_dir);
    report(arg, PREFLIGHT_OK, "intercept", msg);
    if (warn[0])
        report(arg, PREFLIGHT_WARN, "intercept", warn);
}

/* Each line of text (the exposure rule's messages, "PATH: message") as one finding. */
static void report_lines(const char *text, enum preflight_outcome outcome,
                         preflight_report_fn report, void *arg)
{
    char line[PREFLIGHT_MSG_MAX], what[128];
    const char *p = text;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n) {
            const char *colon;
            snprintf(line, sizeof(line), "%.*s", (int)n, p);
            colon = strstr(line, ": ");
            if (colon && (size_t)(colon - line) < sizeof(what)) {
                snprintf(what, sizeof(what), "%.*s", (int)(colon - line), line);
                report(arg, outcome, what, colon + 2);
            } else {
                report(arg, outcome, "configuration", line);
            }
        }
        p = nl ? nl + 1 : NULL;
    }
}

size_t preflight_run(const struct conf *conf, unsigned flags, preflight_report_fn report,
                     void *arg, size_t *conf_errors)
{
    char *errors = NULL, *warnings = NULL;
    size_t failures = 0, i;
    int bind_it = (flags & PREFLIGHT_BIND) != 0;

    if (conf_check_exposure(conf, &errors, &warnings) < 0)
        failures++;
    if (conf_errors)
        *conf_errors = failures;
    report_lines(warnings, PREFLIGHT_WARN, report, arg);
    report_lines(errors, PREFLIGHT_FAIL, report, arg);
    free(errors);
    free(warnings);
    for (i = 0; i < conf->nlisten; i++)
        check_listener(conf, i, bind_it, report, arg, &failures);
    if (conf->admin_listen.text)
        check_address(&conf->admin_listen, "admin_listen", bind_it, report, arg, &failures);
    check_access_log(conf->access_log, report, arg, &failures);
    check_intercept(conf, report, arg, &failures);
    check_shared_tls(conf, report, arg, &failures);
    return failures;
}
