/* fuzz_conf_env: libFuzzer target for configuration from the environment: conf_load_env
 * (fastlane's variables, every profile's set) and the APPLE_AUTH_PROXY_* overrides applied to a
 * configuration file's result (conf_env_overrides, then conf_listen_check, as conf_load does).
 * The input is the environment: lines "NAME=VALUE" (the first line naming a variable wins, as
 * getenv finds it). The first input byte is control, not data: bit 0 chooses the mode (0: the
 * environment only; 1: a fixed file with a TLS listener, a plain one and admin_listen, then the
 * overrides). Three values stand for material made at start-up, never committed: "$KEY" a
 * P-256 PEM private key, "$KEYB64" the same in base64 (fastlane's IS_KEY_CONTENT_BASE64),
 * "$KEYFILE" the path of a file holding it. Any other *_FILEPATH value names a file that does
 * not exist (a run reads no file of the machine's).
 * abort() when an invariant breaks: a result is either a configuration (no error text) or
 * error text (no configuration); a configuration has a route and a listener, every listener
 * and admin_listen has its text, workers is inside its limit; and in the file mode, a TLS
 * listener of the file never becomes plain HTTP: an accepted configuration serves TLS on each
 * address the file served it on, or does not listen there. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "conf/conf.h"
#include "conf/conf_priv.h"

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_conf_env: invariant broken: %s: ", #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FZ_MAX_VARS 32
#define FZ_TLS_ADDR "127.0.0.1:8443"

static char *key_pem, *key_b64;             /* made at start-up; process lifetime */
static char key_dir[64];                    /* this run's own directory, removed at exit */
static char key_path[256], cert_path[256];  /* files in key_dir */
static char *file_json;                     /* the file mode's configuration */

static struct {
    char *name[FZ_MAX_VARS], *value[FZ_MAX_VARS]; /* owned; reset per input */
    size_t n;
} env;

static char *pem_of_key(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long n;
    if (b == NULL || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL))
        abort();
    n = BIO_get_mem_data(b, &data);
    char *out = strndup(data, (size_t)n);
    BIO_free(b);
    return out;
}

static char *b64_of(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out == NULL || EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n) < 0)
        abort();
    return out;
}

static void write_file(const char *path, const char *data)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(data, f) < 0 || fclose(f) != 0)
        abort();
}

/* A self-signed certificate for the key, for the file's TLS listener. */
static void write_cert(EVP_PKEY *k, const char *path)
{
    X509 *x = X509_new();
    FILE *f;
    if (x == NULL || !ASN1_INTEGER_set(X509_get_serialNumber(x), 1) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 86400) || !X509_set_pubkey(x, k) ||
        !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                    (const unsigned char *)"fuzz.example", -1, -1, 0) ||
        !X509_set_issuer_name(x, X509_get_subject_name(x)) || !X509_sign(x, k, EVP_sha256()))
        abort();
    f = fopen(path, "w");
    if (f == NULL || !PEM_write_X509(f, x) || fclose(f) != 0)
        abort();
    X509_free(x);
}

/* The key is test material, but it is a private key: it does not outlive the run. */
static void remove_files(void)
{
    unlink(key_path);
    unlink(cert_path);
    rmdir(key_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char tmpl[] =
        "{\"listen\": [{\"address\": \"" FZ_TLS_ADDR "\", \"tls\": {\"cert_file\": \"%s\","
        " \"key_file\": \"%s\"}, \"server_names\": [\"tls.example\"]}, \"127.0.0.1:8080\"],"
        " \"admin_listen\": \"127.0.0.1:9901\", \"workers\": 2,"
        " \"credentials\": {\"asc\": {\"profile\": \"app-store-connect\","
        " \"key_id\": \"ABCDEFGHIJ\", \"issuer_id\": \"69a6de95-023f-47e3-e053-5b8c7c11a4d1\","
        " \"private_key_env\": \"AAP_FUZZ_KEY\"}}}";
    EVP_PKEY *k = EVP_EC_gen("P-256");
    size_t n;
    (void)argc;
    (void)argv;
    snprintf(key_dir, sizeof(key_dir), "%s", "/tmp/fuzz_conf_env.XXXXXX");
    if (k == NULL || mkdtemp(key_dir) == NULL)
        abort();
    snprintf(key_path, sizeof(key_path), "%s/AuthKey.p8", key_dir);
    snprintf(cert_path, sizeof(cert_path), "%s/server.pem", key_dir);
    atexit(remove_files);
    key_pem = pem_of_key(k);
    key_b64 = b64_of(key_pem);
    write_file(key_path, key_pem);
    if (chmod(key_path, 0600) != 0)
        abort();
    write_cert(k, cert_path);
    EVP_PKEY_free(k);
    n = sizeof(tmpl) + 2 * sizeof(key_path);
    file_json = malloc(n);
    snprintf(file_json, n, tmpl, cert_path, key_path);
    setenv("AAP_FUZZ_KEY", key_pem, 1);
    return 0;
}

static const char *fz_getenv(const char *name)
{
    for (size_t i = 0; i < env.n; i++)
        if (strcmp(env.name[i], name) == 0)
            return env.value[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* One "NAME=VALUE" line into the table, with the stand-ins replaced. */
static void env_add(const char *line, size_t len)
{
    const char *eq = memchr(line, '=', len);
    char *value;
    if (eq == NULL || eq == line || env.n == FZ_MAX_VARS || memchr(line, '\0', len) != NULL)
        return;
    env.name[env.n] = strndup(line, (size_t)(eq - line));
    value = strndup(eq + 1, len - (size_t)(eq + 1 - line));
    CHECK(env.name[env.n] != NULL && value != NULL, "out of memory");
    if (strcmp(value, "$KEY") == 0) {
        free(value);
        value = strdup(key_pem);
    } else if (strcmp(value, "$KEYB64") == 0) {
        free(value);
        value = strdup(key_b64);
    } else if (strcmp(value, "$KEYFILE") == 0) {
        free(value);
        value = strdup(key_path);
    } else if (ends_with(env.name[env.n], "_FILEPATH") && value[0] != '\0') {
        /* A path that names nothing: the same refusal, no file of the machine read. */
        size_t vl = strlen(value);
        char *p = malloc(vl + 32);
        CHECK(p != NULL, "out of memory");
        snprintf(p, vl + 32, "/nonexistent-fuzz-dir/%s", value);
        for (char *q = p + 22; *q; q++)
            if (*q == '/')
                *q = '_';
        free(value);
        value = p;
    }
    CHECK(value != NULL, "out of memory");
    env.value[env.n++] = value;
}

static void env_reset(void)
{
    for (size_t i = 0; i < env.n; i++) {
        free(env.name[i]);
        free(env.value[i]);
    }
    env.n = 0;
}

/* The file mode: the file, then the overrides and the listen checks, as conf_load does. */
static int load_file_mode(struct conf **out, char **errors, char **warnings)
{
    struct conf_msgs errs, warns;
    struct conf *conf = NULL;
    char *e = NULL, *w = NULL;
    if (conf_load_string(file_json, strlen(file_json), "fuzz", &conf, &e, &w) != 0) {
        fprintf(stderr, "fuzz_conf_env: the file is refused:\n%s\n", e ? e : "");
        abort();
    }
    free(e);
    free(w);
    memset(&errs, 0, sizeof errs);
    memset(&warns, 0, sizeof warns);
    conf_env_overrides(conf, fz_getenv, &errs);
    conf_listen_check(conf, &errs);
    return conf_result(conf, &errs, &warns, out, errors, warnings);
}

static void check_conf(const struct conf *conf, int file_mode)
{
    size_t i;
    int tls_addr_listed = 0, tls_addr_served = 0;
    CHECK(conf->nroutes > 0, "a configuration without routes");
    CHECK(conf->nlisten > 0 && conf->nlisten <= CONF_MAX_LISTEN, "%zu listeners", conf->nlisten);
    CHECK(conf->workers >= 0 && conf->workers <= CONF_MAX_WORKERS, "workers %d", conf->workers);
    for (i = 0; i < conf->nlisten; i++) {
        const struct conf_addr *a = &conf->listen[i];
        CHECK(a->text != NULL && a->text[0] != '\0', "listen[%zu] without its text", i);
        CHECK((a->tls_cert_file == NULL) == (a->tls_key_file == NULL),
              "listen[%zu] with half its TLS settings", i);
        if (strcmp(a->text, FZ_TLS_ADDR) == 0) {
            tls_addr_listed = 1;
            tls_addr_served |= a->tls_cert_file != NULL;
        }
    }
    for (i = 0; i < conf->nserver_names; i++)
        CHECK(conf->server_names[i] != NULL && conf->server_names[i][0] != '\0',
              "an empty server name");
    if (file_mode)
        CHECK(!tls_addr_listed || tls_addr_served,
              "the file's TLS listener %s is served as plain HTTP", FZ_TLS_ADDR);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    int file_mode, r;
    size_t start, i;
    if (size == 0)
        return 0;
    file_mode = data[0] & 1;
    data++;
    size--;
    for (start = 0, i = 0; i <= size; i++)
        if (i == size || data[i] == '\n') {
            env_add((const char *)data + start, i - start);
            start = i + 1;
        }
    r = file_mode ? load_file_mode(&conf, &errors, &warnings)
                  : conf_load_env(fz_getenv, &conf, &errors, &warnings);
    if (r == 0) {
        CHECK(conf != NULL && errors == NULL, "success without a configuration, or with errors");
        check_conf(conf, file_mode);
    } else {
        CHECK(conf == NULL && errors != NULL && errors[0] != '\0',
              "failure without errors, or with a configuration");
    }
    conf_free(conf);
    free(errors);
    free(warnings);
    env_reset();
    return 0;
}
