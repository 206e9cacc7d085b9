/* conf_gateway: the team gateway's part of the file: "clients" (who may use the proxy, for
 * what, how fast) and listeners written as objects, with "tls". */
#include "conf/conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth/profile.h"
#include "conf/conf_priv.h"

/* Errors recorded so far, to tell whether one entry added any. */
static size_t conf_err_mark(const struct conf_ctx *ctx)
{
    return ctx->errs->count + ctx->errs->dropped + (size_t)ctx->errs->oom;
}

/* ---- files named by "tls" -------------------------------------------------------------------- */

/* The proxy loads these with OpenSSL when it starts; checking here turns a typo into a
 * configuration error that names the key. want_cert: the file must hold a PEM certificate (a
 * certificate chain or CA list; the private key file is opened, never read). */
static void conf_set_tls_file(struct conf_ctx *ctx, const cJSON *item, const char *path, char **dst,
                              int want_cert)
{
    const char *s = conf_string_value(ctx, item, path, NULL);
    char shown[512];
    struct stat st;
    BIO *bio = NULL;
    X509 *x = NULL;
    int fd, saved;

    if (s == NULL)
        return;
    conf_printable(s, shown, sizeof shown);
    if (stat(s, &st) != 0) {
        saved = errno;
        conf_msgs_add(ctx->errs, path, "%s: %s", shown, strerror(saved));
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        conf_msgs_add(ctx->errs, path, "%s: not a regular file", shown);
        return;
    }
    fd = open(s, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        saved = errno;
        conf_msgs_add(ctx->errs, path, "%s: cannot be read: %s", shown, strerror(saved));
        return;
    }
    if (want_cert) {
        bio = BIO_new_fd(fd, BIO_CLOSE);
        if (bio == NULL) {
            close(fd);
            conf_oom(ctx);
            return;
        }
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        X509_free(x);
        BIO_free(bio);
        ERR_clear_error();
        if (x == NULL) {
            conf_msgs_add(ctx->errs, path,
                          "%s: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", shown);
            return;
        }
    } else {
        close(fd);
    }
    free(*dst);
    *dst = strdup(s);
    if (*dst == NULL)
        conf_oom(ctx);
}

void conf_set_tls_cert(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                       const struct conf_field *f)
{
    conf_set_tls_file(ctx, item, path, (char **)((char *)base + f->offset), 1);
}

void conf_set_tls_key(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f)
{
    conf_set_tls_file(ctx, item, path, (char **)((char *)base + f->offset), 0);
}

static const struct conf_field conf_tls_fields[] = {
    {.name = "cert_file",
     .set = conf_set_tls_cert,
     .offset = offsetof(struct conf_addr, tls_cert_file)},
    {.name = "key_file",
     .set = conf_set_tls_key,
     .offset = offsetof(struct conf_addr, tls_key_file)},
    {.name = "client_ca_file",
     .set = conf_set_tls_cert,
     .offset = offsetof(struct conf_addr, tls_client_ca_file)},
};
#define CONF_NTLS_FIELDS (sizeof conf_tls_fields / sizeof conf_tls_fields[0])

/* ---- listen entries written as objects ------------------------------------------------------- */

struct conf_listen_in {
    struct conf_addr addr;
    int admin;
};

static void conf_set_listen_address(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                    void *base, const struct conf_field *f)
{
    struct conf_listen_in *in = base;
    struct conf_addr a;
    char why[160], shown[CONF_SHOWN];

    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        conf_msgs_add(ctx->errs, path, "expected a \"host:port\" string");
        return;
    }
    if (conf_addr_parse_why(item->valuestring, &a, 1, why, sizeof why) != 0) {
        conf_printable(item->valuestring, shown, sizeof shown);
        conf_msgs_add(ctx->errs, path, "%s (got \"%s\")", why, shown);
        return;
    }
    free(in->addr.text);
    free(in->addr.host);
    in->addr.text = a.text;
    in->addr.host = a.host;
    in->addr.port = a.port;
}

static void conf_set_listen_tls(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                void *base, const struct conf_field *f)
{
    static const char *const required[] = {"cert_file", "key_file"};
    static const char *const what[] = {"the server's PEM certificate chain",
                                       "the PEM private key of that certificate"};
    struct conf_listen_in *in = base;
    char sub[CONF_PATH_MAX];
    size_t k;

    if (in->admin) {
        conf_msgs_add(ctx->errs, path,
                      "not allowed on admin_listen: the admin endpoints serve plain HTTP; keep "
                      "admin_listen on a loopback or private address");
        return;
    }
    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path,
                      "expected an object such as {\"cert_file\": \"server.pem\", \"key_file\": "
                      "\"server.key\"}");
        return;
    }
    conf_object_apply(ctx, item, path, conf_tls_fields, CONF_NTLS_FIELDS, &in->addr);
    for (k = 0; k < 2; k++) {
        if (cJSON_GetObjectItemCaseSensitive(item, required[k]) != NULL)
            continue;
        conf_path_key(sub, sizeof sub, path, required[k]);
        conf_msgs_add(ctx->errs, sub, "required (%s)", what[k]);
    }
}

/* "server_names" is refused on admin_listen: the admin endpoints carry no token. */
static void conf_set_listen_names(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                  void *base, const struct conf_field *f)
{
    struct conf_listen_in *in = base;

    if (in->admin) {
        conf_msgs_add(ctx->errs, path, "not allowed on admin_listen");
        return;
    }
    conf_strings_free(in->addr.server_names, in->addr.nserver_names);
    in->addr.server_names = NULL;
    in->addr.nserver_names = 0;
    conf_set_strings(ctx, item, path, base, f);
}

static const struct conf_field conf_listen_fields[] = {
    {.name = "address", .set = conf_set_listen_address},
    {.name = "tls", .set = conf_set_listen_tls},
    {.name = "server_names",
     .set = conf_set_listen_names,
     .offset = offsetof(struct conf_listen_in, addr.server_names),
     .count_offset = offsetof(struct conf_listen_in, addr.nserver_names),
     .check = conf_check_server_name},
};
#define CONF_NLISTEN_FIELDS (sizeof conf_listen_fields / sizeof conf_listen_fields[0])

int conf_listen_object(struct conf_ctx *ctx, const cJSON *item, const char *path,
                       struct conf_addr *addr, int admin)
{
    struct conf_listen_in in;
    size_t mark = conf_err_mark(ctx);
    char sub[CONF_PATH_MAX];

    memset(addr, 0, sizeof *addr);
    memset(&in, 0, sizeof in);
    in.admin = admin;
    conf_object_apply(ctx, item, path, conf_listen_fields, CONF_NLISTEN_FIELDS, &in);
    if (cJSON_GetObjectItemCaseSensitive(item, "address") == NULL) {
        conf_path_key(sub, sizeof sub, path, "address");
        conf_msgs_add(ctx->errs, sub, "required (\"host:port\")");
    }
    if (conf_err_mark(ctx) != mark || in.addr.text == NULL) {
        conf_addr_deinit(&in.addr);
        return -1;
    }
    *addr = in.addr;
    return 0;
}

/* ---- one client ------------------------------------------------------------------------------ */

#define CONF_KEY_SHA256_MSG                                                                        \
    "expected the SHA-256 of the secret as 64 hex digits (apple-auth-proxy client-key prints it)"

static int conf_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* What client-key prints as the secret: 32 bytes in unpadded base64url, 43 characters. */
static int conf_b64url_secret(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_'))
            return 0;
    return i == 43;
}

/* The value is never repeated in a message: when it is not a hash, it may be the secret. */
static void conf_set_key_sha256(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                void *base, const struct conf_field *f)
{
    struct conf_client *c = base;
    const char *s;
    size_t n, hex, i;

    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        conf_msgs_add(ctx->errs, path,
                      "expected a string of 64 hex digits, the SHA-256 of the client's secret "
                      "(apple-auth-proxy client-key prints it)");
        return;
    }
    s = item->valuestring;
    n = strlen(s);
    for (hex = 0; hex < n && conf_hex_digit(s[hex]) >= 0; hex++)
        ;
    if (n == 64 && hex == 64) {
        for (i = 0; i < 32; i++)
            c->key_sha256[i] =
                (unsigned char)(conf_hex_digit(s[2 * i]) << 4 | conf_hex_digit(s[2 * i + 1]));
        c->has_key = 1;
        return;
    }
    if (n == 0)
        conf_msgs_add(ctx->errs, path, CONF_KEY_SHA256_MSG " (got an empty string)");
    else if (hex == n)
        conf_msgs_add(ctx->errs, path, CONF_KEY_SHA256_MSG " (got %zu hex digits)", n);
    else if (conf_b64url_secret(s))
        conf_msgs_add(ctx->errs, path,
                      CONF_KEY_SHA256_MSG "; this looks like the secret itself (not shown "
                                          "here): it belongs with the client only, and the "
                                          "configuration holds its SHA-256");
    else
        conf_msgs_add(ctx->errs, path,
                      CONF_KEY_SHA256_MSG "; the value (not shown here: it may be a secret) is "
                                          "not a hash");
}

#define CONF_SUBJECT_MSG                                                                           \
    "expected an RFC 2253 subject such as \"CN=release-bot,O=Example\", as `openssl x509 "         \
    "-noout -subject -nameopt RFC2253` prints it"

static const char *conf_check_cert_subject(const char *s)
{
    const char *p;

    if (strlen(s) > 1024)
        return "expected a subject of at most 1024 characters";
    for (p = s; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return CONF_SUBJECT_MSG " (no control characters)";
    if (strncasecmp(s, "subject=", 8) == 0)
        return CONF_SUBJECT_MSG ", without \"subject=\"";
    if (s[0] == '/')
        return CONF_SUBJECT_MSG ", not the slash-separated form";
    /* OpenSSL's default form, "CN = x, O = y": it never matches a certificate. */
    if (strstr(s, " = ") != NULL)
        return CONF_SUBJECT_MSG ", not OpenSSL's default form with \" = \"";
    if (strchr(s, '=') == NULL)
        return CONF_SUBJECT_MSG " (ATTRIBUTE=value pairs separated by ',')";
    return NULL;
}

static const char *conf_check_client_name(const char *s)
{
    return conf_check_credential_name(s) == NULL
               ? NULL
               : "client names use letters, digits, '.', '-' and '_' (1 to 64 characters)";
}

const char *conf_client_name_problem(const char *name)
{
    return conf_check_client_name(name);
}

/* An HTTP method is a token (RFC 9110, section 5.6.2). */
static const char *conf_check_method(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c) != NULL))
            return "expected an HTTP method such as GET or HEAD";
    }
    return i <= 32 ? NULL : "expected an HTTP method of at most 32 characters";
}

static void conf_set_methods(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                             const struct conf_field *f)
{
    struct conf_allow_rule *r = base;
    const cJSON *c;
    char **v;
    size_t n, i = 0, bad = 0;

    if (conf_array_begin(ctx, item, path, CONF_MAX_LIST, "entries",
                         "expected an array of HTTP methods such as [\"GET\", \"HEAD\"]",
                         "expected at least one method (leave \"methods\" out to allow every "
                         "method)",
                         &n) != 0)
        return;
    v = calloc(n, sizeof *v);
    if (v == NULL) {
        conf_oom(ctx);
        return;
    }
    for (c = item->child; c != NULL && i < n; c = c->next, i++) {
        char sub[CONF_PATH_MAX], *p;
        const char *s;

        conf_path_index(sub, sizeof sub, path, i);
        s = conf_string_value(ctx, c, sub, conf_check_method);
        if (s == NULL) {
            bad++;
            continue;
        }
        v[i] = strdup(s);
        if (v[i] == NULL) {
            conf_oom(ctx);
            bad++;
            continue;
        }
        for (p = v[i]; *p != '\0'; p++)
            if (*p >= 'a' && *p <= 'z')
                *p = (char)(*p - 'a' + 'A');
    }
    if (bad > 0) {
        for (i = 0; i < n; i++)
            free(v[i]);
        free(v);
        return;
    }
    r->methods = v;
    r->nmethods = n;
}

static const struct conf_field conf_allow_fields[] = {
    {.name = "methods", .set = conf_set_methods},
    {.name = "path_prefix",
     .set = conf_set_string,
     .offset = offsetof(struct conf_allow_rule, path_prefix),
     .check = conf_check_path_prefix},
};
#define CONF_NALLOW_FIELDS (sizeof conf_allow_fields / sizeof conf_allow_fields[0])

static void conf_set_allow(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                           const struct conf_field *f)
{
    struct conf_client *cl = base;
    const cJSON *c;
    size_t n, i = 0;

    if (conf_array_begin(ctx, item, path, CONF_MAX_LIST, "rules",
                         "expected an array of rules such as [{\"methods\": [\"GET\"], "
                         "\"path_prefix\": \"/v1/\"}]",
                         "expected at least one rule (leave \"allow\" out to allow every method "
                         "and path)",
                         &n) != 0)
        return;
    cl->allow = calloc(n, sizeof *cl->allow);
    if (cl->allow == NULL) {
        conf_oom(ctx);
        return;
    }
    cl->nallow = n;
    for (c = item->child; c != NULL && i < n; c = c->next, i++) {
        struct conf_allow_rule *r = &cl->allow[i];
        char sub[CONF_PATH_MAX];

        conf_path_index(sub, sizeof sub, path, i);
        if (!cJSON_IsObject(c)) {
            conf_msgs_add(ctx->errs, sub,
                          "expected an object with \"methods\", \"path_prefix\" or both");
            continue;
        }
        conf_object_apply(ctx, c, sub, conf_allow_fields, CONF_NALLOW_FIELDS, r);
        if (cJSON_GetObjectItemCaseSensitive(c, "methods") == NULL &&
            cJSON_GetObjectItemCaseSensitive(c, "path_prefix") == NULL)
            conf_msgs_add(ctx->errs, sub,
                          "expected \"methods\", \"path_prefix\" or both (a rule without either "
                          "would allow everything: leave \"allow\" out for that)");
        /* Never NULL for the proxy: a rule without a prefix takes every path. */
        if (r->path_prefix == NULL && (r->path_prefix = strdup("/")) == NULL)
            conf_oom(ctx);
    }
}

/* Parses "ADDRESS[/PREFIX]"; returns NULL, or what is wrong (possibly in why). */
static const char *conf_cidr_parse(const char *s, struct conf_cidr *out, char *why, size_t whylen)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const char *const expected =
        "expected an IPv4 or IPv6 address or network such as 10.1.0.0/16, 2001:db8::/32 or ::1";
    const char *slash = strchr(s, '/');
    size_t alen = slash != NULL ? (size_t)(slash - s) : strlen(s), i, bytes;
    unsigned char addr[16], masked[16];
    char buf[64], shown[CONF_SHOWN], net[INET6_ADDRSTRLEN];
    int family, max, prefix;

    memset(addr, 0, sizeof addr);
    if (alen == 0 || alen >= sizeof buf)
        return expected;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET, buf, addr) == 1) {
        family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, addr) == 1) {
        family = AF_INET6;
        max = 128;
    } else {
        return expected;
    }
    prefix = max;
    if (slash != NULL) {
        const char *p = slash + 1;

        prefix = 0;
        for (i = 0; p[i] >= '0' && p[i] <= '9' && i < 4; i++)
            prefix = prefix * 10 + (p[i] - '0');
        if (i == 0 || p[i] != '\0' || prefix > max) {
            conf_printable(s, shown, sizeof shown);
            snprintf(why, whylen,
                     "bad prefix length after '/' (expected 0 to %d for an %s address) (got "
                     "\"%s\")",
                     max, family == AF_INET ? "IPv4" : "IPv6", shown);
            return why;
        }
    }
    bytes = (size_t)max / 8;
    for (i = 0; i < bytes; i++) {
        int bits = prefix - (int)i * 8;

        masked[i] = bits >= 8   ? addr[i]
                    : bits <= 0 ? 0
                                : (unsigned char)(addr[i] & (unsigned char)(0xff << (8 - bits)));
    }
    if (memcmp(masked, addr, bytes) != 0) {
        conf_printable(s, shown, sizeof shown);
        if (inet_ntop(family, masked, net, sizeof net) == NULL)
            snprintf(net, sizeof net, "?");
        snprintf(why, whylen, "%s: host bits set; did you mean %s/%d?", shown, net, prefix);
        return why;
    }
    memset(out, 0, sizeof *out);
    /* An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) is the IPv4 one: peers on a dual-stack
     * socket are compared as IPv4. */
    if (family == AF_INET6 && prefix >= 96 && memcmp(addr, v4mapped, sizeof v4mapped) == 0) {
        family = AF_INET;
        memmove(addr, addr + 12, 4);
        memset(addr + 4, 0, 12);
        prefix -= 96;
    }
    out->family = family;
    memcpy(out->addr, addr, sizeof out->addr);
    out->prefix = prefix;
    return NULL;
}

static void conf_set_allow_cidrs(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                 void *base, const struct conf_field *f)
{
    struct conf_client *cl = base;
    const cJSON *c;
    size_t n, i = 0;

    if (conf_array_begin(ctx, item, path, CONF_MAX_LIST, "entries",
                         "expected an array of networks such as [\"10.1.0.0/16\", \"::1\"]",
                         "expected at least one network (leave \"allow_cidrs\" out to accept "
                         "any source address)",
                         &n) != 0)
        return;
    cl->allow_cidrs = calloc(n, sizeof *cl->allow_cidrs);
    if (cl->allow_cidrs == NULL) {
        conf_oom(ctx);
        return;
    }
    cl->nallow_cidrs = n;
    for (c = item->child; c != NULL && i < n; c = c->next, i++) {
        char sub[CONF_PATH_MAX], buf[200], shown[CONF_SHOWN];
        const char *s, *why;

        conf_path_index(sub, sizeof sub, path, i);
        s = conf_string_value(ctx, c, sub, NULL);
        if (s == NULL)
            continue;
        why = conf_cidr_parse(s, &cl->allow_cidrs[i], buf, sizeof buf);
        if (why == buf) {
            conf_msgs_add(ctx->errs, sub, "%s", why);
            continue;
        }
        if (why != NULL) {
            conf_printable(s, shown, sizeof shown);
            conf_msgs_add(ctx->errs, sub, "%s (got \"%s\")", why, shown);
            continue;
        }
        cl->allow_cidrs[i].text = strdup(s);
        if (cl->allow_cidrs[i].text == NULL)
            conf_oom(ctx);
    }
}

/* "rate": {"per_second": N, "burst": M}. */
struct conf_rate_in {
    double per_second;
    double burst;
};

static void conf_set_rate_number(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                 void *base, const struct conf_field *f)
{
    double v;

    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble)) {
        conf_msgs_add(ctx->errs, path, "expected a number%s", f->unit);
        return;
    }
    v = item->valuedouble;
    if (f->min == 0 && v <= 0)
        conf_msgs_add(ctx->errs, path, "must be more than 0 (leave \"rate\" out for no limit)");
    else if (v < f->min)
        conf_msgs_add(ctx->errs, path, "must be at least %.15g%s", f->min, f->unit);
    else if (v > f->max)
        conf_msgs_add(ctx->errs, path, "must be at most %.15g%s", f->max, f->unit);
    else
        *(double *)((char *)base + f->offset) = v;
}

static const struct conf_field conf_rate_fields[] = {
    {.name = "per_second",
     .set = conf_set_rate_number,
     .offset = offsetof(struct conf_rate_in, per_second),
     .min = 0, /* exclusive */
     .max = 1e6,
     .unit = " (requests per second)"},
    {.name = "burst",
     .set = conf_set_rate_number,
     .offset = offsetof(struct conf_rate_in, burst),
     .min = 1,
     .max = 1e9,
     .unit = " (requests)"},
};
#define CONF_NRATE_FIELDS (sizeof conf_rate_fields / sizeof conf_rate_fields[0])

static void conf_set_rate(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                          const struct conf_field *f)
{
    struct conf_client *cl = base;
    struct conf_rate_in in = {0, 0};
    char sub[CONF_PATH_MAX];

    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path,
                      "expected an object such as {\"per_second\": 5, \"burst\": 20}");
        return;
    }
    conf_object_apply(ctx, item, path, conf_rate_fields, CONF_NRATE_FIELDS, &in);
    if (cJSON_GetObjectItemCaseSensitive(item, "per_second") == NULL) {
        conf_path_key(sub, sizeof sub, path, "per_second");
        conf_msgs_add(ctx->errs, sub, "required (requests per second, e.g. 5 or 0.5)");
        return;
    }
    if (in.per_second <= 0)
        return; /* reported */
    cl->rate_per_second = in.per_second;
    cl->rate_burst = in.burst >= 1 ? in.burst : in.per_second > 1 ? in.per_second : 1;
}

static void conf_set_client_credentials(struct conf_ctx *ctx, const cJSON *item, const char *path,
                                        void *base, const struct conf_field *f)
{
    if (cJSON_IsArray(item) && item->child == NULL) {
        conf_msgs_add(ctx->errs, path,
                      "expected at least one credential name (leave \"credentials\" out to "
                      "allow every credential)");
        return;
    }
    conf_set_strings(ctx, item, path, base, f);
}

static const struct conf_field conf_client_fields[] = {
    {.name = "key_sha256", .set = conf_set_key_sha256},
    {.name = "cert_subject",
     .set = conf_set_string,
     .offset = offsetof(struct conf_client, cert_subject),
     .check = conf_check_cert_subject},
    {.name = "allow", .set = conf_set_allow},
    {.name = "credentials",
     .set = conf_set_client_credentials,
     .offset = offsetof(struct conf_client, credentials),
     .count_offset = offsetof(struct conf_client, ncredentials),
     .check = conf_check_credential_name},
    {.name = "allow_cidrs", .set = conf_set_allow_cidrs},
    {.name = "rate", .set = conf_set_rate},
    {.name = "priority", .set = conf_set_bool, .offset = offsetof(struct conf_client, priority)},
};
#define CONF_NCLIENT_FIELDS (sizeof conf_client_fields / sizeof conf_client_fields[0])

void conf_client_deinit(struct conf_client *c)
{
    size_t i, j;

    free(c->name);
    free(c->cert_subject);
    for (i = 0; i < c->nallow; i++) {
        for (j = 0; j < c->allow[i].nmethods; j++)
            free(c->allow[i].methods[j]);
        free(c->allow[i].methods);
        free(c->allow[i].path_prefix);
    }
    free(c->allow);
    for (i = 0; i < c->ncredentials; i++)
        free(c->credentials[i]);
    free(c->credentials);
    free(c->credential_index);
    for (i = 0; i < c->nallow_cidrs; i++)
        free(c->allow_cidrs[i].text);
    free(c->allow_cidrs);
    memset(c, 0, sizeof *c);
}

/* ---- "clients" ------------------------------------------------------------------------------- */

void conf_set_clients(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f)
{
    struct conf *conf = base;
    unsigned char *dup;
    const cJSON *c;
    size_t n, i = 0;

    if (!cJSON_IsObject(item)) {
        conf_msgs_add(ctx->errs, path,
                      "expected an object of named clients, such as {\"release-bot\": "
                      "{\"key_sha256\": \"...\"}}");
        return;
    }
    n = conf_count_children(item);
    if (n == 0) {
        conf_msgs_add(ctx->errs, path,
                      "expected at least one client (leave \"clients\" out for a proxy that "
                      "listens on loopback only)");
        return;
    }
    if (n > CONF_MAX_CLIENTS) {
        conf_msgs_add(ctx->errs, path, "at most %d clients", CONF_MAX_CLIENTS);
        return;
    }
    conf->clients = calloc(n, sizeof *conf->clients);
    if (conf->clients == NULL) {
        conf_oom(ctx);
        return;
    }
    dup = conf_dup_flags(ctx, item, n);
    for (c = item->child; c != NULL && i < n; c = c->next, i++) {
        struct conf_client *cl;
        char sub[CONF_PATH_MAX];
        const char *name = c->string != NULL ? c->string : "";

        if (conf_named_member(ctx, c, path, dup, i, conf_check_client_name, sub,
                              sizeof sub) != 0)
            continue;
        cl = &conf->clients[conf->nclients++];
        cl->name = strdup(name);
        if (cl->name == NULL) {
            conf_oom(ctx);
            continue;
        }
        conf_object_apply(ctx, c, sub, conf_client_fields, CONF_NCLIENT_FIELDS, cl);
        if (cJSON_GetObjectItemCaseSensitive(c, "key_sha256") == NULL &&
            cJSON_GetObjectItemCaseSensitive(c, "cert_subject") == NULL)
            conf_msgs_add(ctx->errs, sub,
                          "no identity: set \"key_sha256\" (the SHA-256 of the client's secret, "
                          "from apple-auth-proxy client-key) or \"cert_subject\" (the subject of "
                          "its TLS client certificate), or both");
    }
    free(dup);
}

void conf_clients_check(struct conf_ctx *ctx)
{
    struct conf *conf = ctx->conf;
    size_t i, j, k;
    int verifies = 0;

    for (i = 0; i < conf->nlisten; i++)
        verifies |= conf->listen[i].tls_client_ca_file != NULL;
    for (i = 0; i < conf->nclients; i++) {
        struct conf_client *cl = &conf->clients[i];
        char sub[CONF_PATH_MAX], base[128], shown[CONF_SHOWN];

        conf_path_key(base, sizeof base, "clients", cl->name);
        if (cl->ncredentials > 0) {
            cl->credential_index = calloc(cl->ncredentials, sizeof *cl->credential_index);
            if (cl->credential_index == NULL) {
                conf_oom(ctx);
                return;
            }
        }
        for (j = 0; j < cl->ncredentials; j++) {
            const struct credential *cred = conf_credential(conf, cl->credentials[j]);

            snprintf(sub, sizeof sub, "%s.credentials[%zu]", base, j);
            conf_printable(cl->credentials[j], shown, sizeof shown);
            if (cred == NULL) {
                conf_msgs_add(ctx->errs, sub, "no credential named \"%s\"", shown);
                continue;
            }
            cl->credential_index[j] = (size_t)(cred - conf->credentials);
            for (k = 0; k < j; k++)
                if (strcmp(cl->credentials[k], cl->credentials[j]) == 0)
                    break;
            if (k < j)
                conf_msgs_add(ctx->errs, sub, "\"%s\" is listed twice", shown);
        }
        /* One secret or certificate, one client: otherwise a request would be attributed to
         * whichever comes first, with its permissions. */
        for (k = 0; k < i && cl->has_key; k++)
            if (conf->clients[k].has_key &&
                memcmp(conf->clients[k].key_sha256, cl->key_sha256, 32) == 0) {
                snprintf(sub, sizeof sub, "%s.key_sha256", base);
                conf_printable(conf->clients[k].name, shown, sizeof shown);
                conf_msgs_add(ctx->errs, sub,
                              "the same as clients.%s's: each client needs its own secret", shown);
                break;
            }
        for (k = 0; k < i && cl->cert_subject != NULL; k++)
            if (conf->clients[k].cert_subject != NULL &&
                strcasecmp(conf->clients[k].cert_subject, cl->cert_subject) == 0) {
                snprintf(sub, sizeof sub, "%s.cert_subject", base);
                conf_printable(conf->clients[k].name, shown, sizeof shown);
                conf_msgs_add(ctx->errs, sub,
                              "the same as clients.%s's: a certificate identifies one client",
                              shown);
                break;
            }
        if (cl->cert_subject != NULL && !verifies) {
            snprintf(sub, sizeof sub, "%s.cert_subject", base);
            conf_msgs_add(ctx->warns, sub,
                          "no listener verifies client certificates (\"tls\": "
                          "{\"client_ca_file\": ...}), so no request can present this subject");
        }
    }
}
