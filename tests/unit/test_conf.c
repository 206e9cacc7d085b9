/* test_conf: the configuration loader accepts what docs/configuration.md describes and names
 * the path of every mistake. Keys are generated at test time; nothing secret is committed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth/profile.h"
#include "conf/conf.h"

static char tmpdir[64];
static char keypath[128];   /* a P-256 .p8, mode 0600 */
static char wkeypath[128];  /* another one */
static char loosepath[128]; /* mode 0644: draws a warning */
static char capath[128];    /* a self-signed certificate */
static char *pem;           /* the key's PEM text */
static char *pem_b64;       /* base64 of the whole PEM, as CI secrets often hold it */
static char *pem_json;      /* the PEM as a JSON string body (newlines escaped) */

#define ISSUER "69a6de95-023f-47e3-e053-5b8c7c11a4d1"
#define ASC_CRED                                                                                   \
    "\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"2X9R4HXF34\", \"issuer_id\": "    \
    "\"" ISSUER "\", \"private_key_file\": \"@KEY@\"}"
#define WK_CRED                                                                                    \
    "\"weather\": {\"profile\": \"weatherkit\", \"key_id\": \"ABC123DEFG\", \"team_id\": "         \
    "\"DEF123GHIJ\", \"service_id\": \"com.example.weatherkit-client\", "                          \
    "\"private_key_file\": \"@WKEY@\"}"
#define CREDS "\"credentials\": {" ASC_CRED "}"
#define ASC_CRED_TOKEN_ADDRESS                                                                     \
    "\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"2X9R4HXF34\", "                \
    "\"token_address\": \"127.0.0.1:1\", \"private_key_file\": \"@KEY@\"}"
#define ROUTE_ASC                                                                                  \
    "{\"path_prefix\": \"/\", \"upstream\": \"https://api.appstoreconnect.apple.com\", "           \
    "\"credential\": \"asc\"}"

/* ---- fixtures ------------------------------------------------------------------------------ */

static char *bio_text(BIO *bio)
{
    char *data, *copy;
    long n = BIO_get_mem_data(bio, &data);

    assert_true(n > 0);
    copy = malloc((size_t)n + 1);
    assert_non_null(copy);
    memcpy(copy, data, (size_t)n);
    copy[n] = '\0';
    return copy;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static char *new_key_pem(void)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    char *text;

    assert_non_null(pkey);
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL), 1);
    text = bio_text(bio);
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return text;
}

static char *new_cert_pem(void)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIO *bio = BIO_new(BIO_s_mem());
    X509_NAME *name;
    char *text;

    assert_non_null(pkey);
    assert_non_null(x);
    assert_non_null(bio);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, pkey), 1);
    name = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"test-ca", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, name), 1);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);
    assert_int_equal(PEM_write_bio_X509(bio, x), 1);
    text = bio_text(bio);
    BIO_free(bio);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return text;
}

static char *base64_of(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(4 * ((n + 2) / 3) + 1);

    assert_non_null(out);
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
    return out;
}

static char *json_escape(const char *s)
{
    char *out = malloc(2 * strlen(s) + 1), *o = out;

    assert_non_null(out);
    for (; *s != '\0'; s++) {
        if (*s == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
    return out;
}

static int group_setup(void **state)
{
    char *cert, *wpem;

    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_conf.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    snprintf(keypath, sizeof keypath, "%s/AuthKey_2X9R4HXF34.p8", tmpdir);
    snprintf(wkeypath, sizeof wkeypath, "%s/AuthKey_ABC123DEFG.p8", tmpdir);
    snprintf(loosepath, sizeof loosepath, "%s/loose.p8", tmpdir);
    snprintf(capath, sizeof capath, "%s/ca.pem", tmpdir);
    pem = new_key_pem();
    wpem = new_key_pem();
    write_file(keypath, pem, 0600);
    write_file(wkeypath, wpem, 0600);
    write_file(loosepath, pem, 0644);
    cert = new_cert_pem();
    write_file(capath, cert, 0644);
    free(cert);
    free(wpem);
    pem_b64 = base64_of(pem);
    pem_json = json_escape(pem);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    unlink(keypath);
    unlink(wkeypath);
    unlink(loosepath);
    unlink(capath);
    rmdir(tmpdir);
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    free(pem_b64);
    free(pem_json);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* Replaces @KEY@, @WKEY@, @LOOSE@, @CA@, @DIR@ and @PEM@ in a template. */
static char *subst(const char *tmpl)
{
    static const char *const names[] = {"@KEY@", "@WKEY@", "@LOOSE@", "@CA@", "@DIR@", "@PEM@"};
    const char *values[] = {keypath, wkeypath, loosepath, capath, tmpdir, pem_json};
    size_t cap = strlen(tmpl) + 1, len = 0, i;
    char *out;
    const char *p = tmpl;

    for (i = 0; i < 6; i++)
        cap += 8 * strlen(values[i]);
    cap *= 2;
    out = malloc(cap);
    assert_non_null(out);
    while (*p != '\0') {
        for (i = 0; i < 6; i++)
            if (strncmp(p, names[i], strlen(names[i])) == 0)
                break;
        if (i < 6) {
            size_t n = strlen(values[i]);

            assert_true(len + n < cap);
            memcpy(out + len, values[i], n);
            len += n;
            p += strlen(names[i]);
        } else {
            assert_true(len + 1 < cap);
            out[len++] = *p++;
        }
    }
    out[len] = '\0';
    return out;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (hay == NULL || strstr(hay, needle) == NULL) {
        print_error("expected \"%s\" in:\n%s\n", needle, hay != NULL ? hay : "(nothing)");
        fail();
    }
}

static void assert_starts(const char *s, const char *prefix)
{
    if (s == NULL || strncmp(s, prefix, strlen(prefix)) != 0) {
        print_error("expected to start with \"%s\":\n%s\n", prefix, s != NULL ? s : "(nothing)");
        fail();
    }
}

static void assert_lacks(const char *hay, const char *needle)
{
    if (hay != NULL && strstr(hay, needle) != NULL) {
        print_error("did not expect \"%s\" in:\n%s\n", needle, hay);
        fail();
    }
}

static size_t count_lines(const char *s)
{
    size_t n = 0;

    for (; s != NULL && *s != '\0'; s++)
        n += *s == '\n';
    return n;
}

static struct conf *load_ok_w(const char *tmpl, char **warnings)
{
    char *json = subst(tmpl), *errors = NULL;
    struct conf *conf = NULL;
    int rc = conf_load_string(json, strlen(json), "test.json", &conf, &errors, warnings);

    if (rc != 0) {
        print_error("unexpected errors:\n%s\nfor:\n%s\n", errors != NULL ? errors : "(none)", json);
        fail();
    }
    assert_non_null(conf);
    assert_null(errors);
    free(json);
    return conf;
}

static struct conf *load_ok(const char *tmpl)
{
    char *warnings = NULL;
    struct conf *conf = load_ok_w(tmpl, &warnings);

    free(warnings);
    return conf;
}

/* Loads a template that must fail; returns the error text (caller frees). */
static char *load_fail(const char *tmpl)
{
    char *json = subst(tmpl), *errors = NULL, *warnings = NULL;
    struct conf *conf = (struct conf *)1;
    int rc = conf_load_string(json, strlen(json), "test.json", &conf, &errors, &warnings);

    if (rc != -1) {
        print_error("expected a failure for:\n%s\n", json);
        conf_free(conf);
        fail();
    }
    assert_null(conf);
    assert_non_null(errors);
    assert_true(errors[strlen(errors) - 1] == '\n');
    free(warnings);
    free(json);
    return errors;
}

static void expect_error(const char *tmpl, const char *message)
{
    char *errors = load_fail(tmpl);

    assert_contains(errors, message);
    free(errors);
}

/* The environment conf_load_env sees in these tests: NULL-terminated name, value pairs. */
static const char *const *stub_env;

static const char *stub_getenv(const char *name)
{
    size_t i;

    for (i = 0; stub_env != NULL && stub_env[i] != NULL; i += 2)
        if (strcmp(stub_env[i], name) == 0)
            return stub_env[i + 1];
    return NULL;
}

static int load_env(const char *const *env, struct conf **conf, char **errors)
{
    char *warnings = NULL;
    int rc;

    stub_env = env;
    rc = conf_load_env(stub_getenv, conf, errors, &warnings);
    free(warnings);
    return rc;
}

/* ---- what loads, and with which values -------------------------------------------------- */

static void test_defaults(void **state)
{
    struct conf *conf = load_ok("{" CREDS "}");
    const struct credential *c;

    (void)state;
    assert_int_equal(conf->nlisten, 1);
    assert_string_equal(conf->listen[0].text, "127.0.0.1:8080");
    assert_string_equal(conf->listen[0].host, "127.0.0.1");
    assert_int_equal(conf->listen[0].port, 8080);
    assert_string_equal(conf->admin_listen.text, "127.0.0.1:9901");
    assert_int_equal(conf->admin_listen.port, 9901);
    assert_int_equal(conf->workers, 0);
    assert_int_equal(conf->token_refresh_margin, 300);
    assert_string_equal(conf->source, "test.json");
    assert_int_equal(conf->limits.max_request_line, 8192);
    assert_int_equal(conf->limits.max_header_bytes, 32768);
    assert_int_equal(conf->limits.max_headers, 100);
    assert_true(conf->limits.max_body == 1073741824ULL);
    assert_int_equal(conf->limits.max_client_connections, 10000);
    assert_int_equal(conf->limits.upstream_pool_size, 1024);
    assert_int_equal(conf->limits.client_header_timeout_ms, 10000);
    assert_int_equal(conf->limits.client_body_timeout_ms, 60000);
    assert_int_equal(conf->limits.idle_timeout_ms, 75000);
    assert_int_equal(conf->limits.upstream_connect_timeout_ms, 5000);
    assert_int_equal(conf->limits.upstream_handshake_timeout_ms, 10000);
    assert_int_equal(conf->limits.upstream_response_timeout_ms, 60000);
    assert_int_equal(conf->limits.upstream_idle_timeout_ms, 30000);
    assert_int_equal(conf->limits.send_timeout_ms, 60000);
    assert_int_equal(conf->limits.drain_timeout_ms, 30000);
    assert_int_equal(conf->ncredentials, 1);
    c = conf_credential(conf, "asc");
    assert_non_null(c);
    assert_null(conf_credential(conf, "nope"));
    assert_int_equal(c->profile, PROFILE_APP_STORE_CONNECT);
    assert_string_equal(c->key_id, "2X9R4HXF34");
    assert_string_equal(c->issuer_id, ISSUER);
    assert_int_equal(c->skew, TOKEN_DEFAULT_SKEW);
    assert_int_equal(c->lifetime, 0);
    assert_non_null(c->key);
    conf_free(conf);
    conf_free(NULL);
}

static void test_default_routes(void **state)
{
    struct conf *conf = load_ok("{\"credentials\": {" ASC_CRED ", " WK_CRED "}}");

    (void)state;
    assert_int_equal(conf->nroutes, 2);
    assert_string_equal(conf->routes[0].path_prefix, "/api/v1/");
    assert_string_equal(conf->routes[0].upstream, "https://weatherkit.apple.com");
    assert_string_equal(conf->routes[0].upstream_host, "weatherkit.apple.com");
    assert_int_equal(conf->routes[0].upstream_port, 443);
    assert_string_equal(conf->routes[0].credential, "weather");
    assert_int_equal(conf->routes[0].credential_index, 1);
    assert_string_equal(conf->routes[1].path_prefix, "/");
    assert_string_equal(conf->routes[1].upstream_host, "api.appstoreconnect.apple.com");
    assert_int_equal(conf->routes[1].credential_index, 0);
    conf_free(conf);

    conf = load_ok("{\"credentials\": {\"s\": {\"profile\": \"app-store-server\", \"key_id\": "
                   "\"2X9R4HXF34\", \"issuer_id\": \"" ISSUER "\", \"bundle_id\": "
                   "\"com.example.app\", \"private_key_file\": \"@KEY@\"}}}");
    assert_int_equal(conf->nroutes, 1);
    assert_string_equal(conf->routes[0].path_prefix, "/inApps/");
    assert_string_equal(conf->routes[0].upstream_host, "api.storekit.itunes.apple.com");
    conf_free(conf);
}

static void test_default_routes_conflict(void **state)
{
    (void)state;
    expect_error("{\"credentials\": {" ASC_CRED ", \"m\": {\"profile\": \"music\", \"key_id\": "
                 "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"private_key_file\": "
                 "\"@KEY@\"}}}",
                 "routes: credentials \"asc\" and \"m\" both want the default route \"/\"; "
                 "write \"routes\"");
}

static void test_explicit_routes(void **state)
{
    struct conf *conf =
        load_ok("{\"credentials\": {" ASC_CRED ", " WK_CRED "}, \"routes\": ["
                "{\"path_prefix\": \"/api/v1/\", \"upstream\": \"https://WeatherKit.apple.com/\", "
                "\"credential\": \"weather\"},"
                "{\"path_prefix\": \"/asc/\", \"strip_prefix\": \"/asc\", \"host\": "
                "\"Proxy.Example\", \"upstream\": \"https://localhost:8443\", \"address\": "
                "\"127.0.0.1:9443\", \"ca_file\": \"@CA@\", \"credential\": \"asc\", \"scope\": "
                "[\"GET /v1/apps\"]}," ROUTE_ASC "]}");

    (void)state;
    assert_int_equal(conf->nroutes, 3);
    assert_string_equal(conf->routes[0].upstream, "https://WeatherKit.apple.com/");
    assert_string_equal(conf->routes[0].upstream_host, "weatherkit.apple.com");
    assert_int_equal(conf->routes[0].credential_index, 1);
    assert_null(conf->routes[0].address_host);
    assert_int_equal(conf->routes[0].address_port, 0);
    assert_string_equal(conf->routes[1].upstream_host, "localhost");
    assert_int_equal(conf->routes[1].upstream_port, 8443);
    assert_string_equal(conf->routes[1].address_host, "127.0.0.1");
    assert_int_equal(conf->routes[1].address_port, 9443);
    assert_string_equal(conf->routes[1].host, "proxy.example");
    assert_string_equal(conf->routes[1].strip_prefix, "/asc");
    assert_string_equal(conf->routes[1].ca_file, capath);
    assert_int_equal(conf->routes[1].nscope, 1);
    assert_string_equal(conf->routes[1].scope[0], "GET /v1/apps");
    assert_int_equal(conf->routes[1].credential_index, 0);
    assert_int_equal(conf->routes[2].credential_index, 0);
    conf_free(conf);
}

static void test_values_set(void **state)
{
    struct conf *conf =
        load_ok("{\"listen\": \"0.0.0.0:0\", \"admin_listen\": null, \"workers\": 4, "
                "\"token_refresh_margin\": 120, \"credentials\": {\"asc\": {\"profile\": "
                "\"app-store-connect\", \"key_id\": \"2X9R4HXF34\", \"private_key\": \"@PEM@\", "
                "\"token_lifetime\": 1200, \"clock_skew\": 30, \"scope\": [\"GET "
                "/v1/apps?filter[platform]=IOS\"]}},"
                "\"limits\": {\"client_header_timeout\": 2.5, \"max_body_bytes\": 0, "
                "\"upstream_pool_size\": 0}}");

    (void)state;
    assert_int_equal(conf->nlisten, 1);
    assert_string_equal(conf->listen[0].host, "0.0.0.0");
    assert_int_equal(conf->listen[0].port, 0);
    assert_null(conf->admin_listen.text);
    assert_int_equal(conf->workers, 4);
    assert_int_equal(conf->token_refresh_margin, 120);
    /* The maximum itself is accepted as written, never clamped. */
    assert_int_equal(conf->credentials[0].lifetime, 1200);
    assert_int_equal(conf->credentials[0].skew, 30);
    assert_null(conf->credentials[0].issuer_id); /* an individual key */
    assert_int_equal(conf->credentials[0].nscope, 1);
    assert_string_equal(conf->credentials[0].scope[0], "GET /v1/apps?filter[platform]=IOS");
    assert_int_equal(conf->limits.client_header_timeout_ms, 2500);
    assert_true(conf->limits.max_body == 0);
    assert_int_equal(conf->limits.upstream_pool_size, 0);
    conf_free(conf);
}

static void test_access_log(void **state)
{
    struct conf *conf = load_ok("{" CREDS "}");

    (void)state;
    assert_null(conf->access_log); /* standard output */
    assert_int_equal(conf->access_log_text, 0);
    conf_free(conf);
    conf = load_ok("{" CREDS ", \"access_log\": {\"path\": \"/var/log/aap.log\", "
                   "\"format\": \"text\"}}");
    assert_string_equal(conf->access_log, "/var/log/aap.log");
    assert_int_equal(conf->access_log_text, 1);
    conf_free(conf);
    expect_error("{" CREDS ", \"access_log\": {\"format\": \"xml\"}}",
                 "access_log.format: expected \"json\" or \"text\"");
    expect_error("{" CREDS ", \"access_log\": {\"file\": \"x\"}}", "access_log.file: unknown key");
    expect_error("{" CREDS ", \"access_log\": \"-\"}", "access_log: expected an object");
}

static void test_intercept(void **state)
{
    const char *const env[] = {"WEATHERKIT_KEY_ID",
                               "ABC123DEFG",
                               "WEATHERKIT_TEAM_ID",
                               "DEF123GHIJ",
                               "WEATHERKIT_SERVICE_ID",
                               "com.example.w",
                               "WEATHERKIT_KEY",
                               pem,
                               "APPLE_AUTH_PROXY_INTERCEPT_CA_DIR",
                               "/var/lib/aap/ca",
                               NULL};
    const char *const relative[] = {"WEATHERKIT_KEY_ID",
                                    "ABC123DEFG",
                                    "WEATHERKIT_TEAM_ID",
                                    "DEF123GHIJ",
                                    "WEATHERKIT_SERVICE_ID",
                                    "com.example.w",
                                    "WEATHERKIT_KEY",
                                    pem,
                                    "APPLE_AUTH_PROXY_INTERCEPT_CA_DIR",
                                    "ca",
                                    NULL};
    struct conf *conf = load_ok("{" CREDS "}");
    char *errors = NULL;

    (void)state;
    assert_null(conf->intercept_ca_dir); /* off by default */
    conf_free(conf);
    conf = load_ok("{" CREDS ", \"intercept\": {\"ca_dir\": \"/var/lib/aap/ca\"}}");
    assert_string_equal(conf->intercept_ca_dir, "/var/lib/aap/ca");
    conf_free(conf);
    expect_error("{" CREDS ", \"intercept\": {}}", "intercept.ca_dir: required");
    expect_error("{" CREDS ", \"intercept\": {\"ca_dir\": \"ca\"}}",
                 "intercept.ca_dir: expected an absolute directory path");
    expect_error("{" CREDS ", \"intercept\": {\"ca_dir\": \"/a\\nb\"}}",
                 "intercept.ca_dir: expected a directory path without control characters");
    expect_error("{" CREDS ", \"intercept\": {\"ca_dir\": \"/x\", \"cadir\": 1}}",
                 "intercept.cadir: unknown key");
    expect_error("{" CREDS ", \"intercept\": \"/x\"}", "intercept: expected an object");
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_string_equal(conf->intercept_ca_dir, "/var/lib/aap/ca");
    conf_free(conf);
    assert_int_equal(load_env(relative, &conf, &errors), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_INTERCEPT_CA_DIR: expected an absolute directory path");
    free(errors);
}

static void test_shared_state(void **state)
{
    struct conf *conf = load_ok("{" CREDS "}");

    (void)state;
    assert_null(conf->shared.redis); /* nothing shared */
    conf_free(conf);
    conf = load_ok("{" CREDS ", \"shared_state\": {\"redis\": \"redis.example:6380\"}}");
    assert_string_equal(conf->shared.host, "redis.example");
    assert_int_equal(conf->shared.port, 6380);
    assert_null(conf->shared.unix_path);
    assert_string_equal(conf->shared.key_prefix, "apple-auth-proxy:");
    assert_int_equal(conf->shared.timeout_ms, 250);
    assert_int_equal(conf->shared.replicas, 1);
    conf_free(conf);
    conf = load_ok("{" CREDS ", \"shared_state\": {\"redis\": \"unix:/run/redis.sock\", "
                   "\"key_prefix\": \"team-a:\", \"timeout\": 0.05, \"replicas\": 3}}");
    assert_null(conf->shared.host);
    assert_string_equal(conf->shared.unix_path, "/run/redis.sock");
    assert_string_equal(conf->shared.key_prefix, "team-a:");
    assert_int_equal(conf->shared.timeout_ms, 50);
    assert_int_equal(conf->shared.replicas, 3);
    assert_int_equal(conf->shared.tls, 0);
    conf_free(conf);
    /* TLS: the system's store and the host's name, or all four keys */
    conf = load_ok("{" CREDS ", \"shared_state\": {\"redis\": \"redis.example:6380\", "
                   "\"tls\": true}}");
    assert_int_equal(conf->shared.tls, 1);
    assert_null(conf->shared.tls_ca_file);
    assert_null(conf->shared.tls_server_name);
    assert_null(conf->shared.tls_cert_file);
    conf_free(conf);
    conf = load_ok("{" CREDS ", \"shared_state\": {\"redis\": \"10.0.0.7:6380\", \"tls\": "
                   "{\"ca_file\": \"@CA@\", \"server_name\": \"Redis.Example\", "
                   "\"cert_file\": \"@CA@\", \"key_file\": \"@KEY@\"}}}");
    assert_int_equal(conf->shared.tls, 1);
    assert_string_equal(conf->shared.tls_ca_file, capath);
    assert_string_equal(conf->shared.tls_server_name, "redis.example");
    assert_string_equal(conf->shared.tls_cert_file, capath);
    assert_string_equal(conf->shared.tls_key_file, keypath);
    conf_free(conf);
    conf = load_ok("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": false}}");
    assert_int_equal(conf->shared.tls, 0);
    conf_free(conf);
    /* the password is read from its variable, whose name is noted so that serve removes it */
    assert_int_equal(setenv("AAP_TEST_CONF_REDIS_PASSWORD", "redis-pass-1", 1), 0);
    conf = load_ok("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", "
                   "\"password_env\": \"AAP_TEST_CONF_REDIS_PASSWORD\"}}");
    assert_string_equal(conf->shared.password, "redis-pass-1");
    assert_string_equal(conf->shared.password_env, "AAP_TEST_CONF_REDIS_PASSWORD");
    assert_true(conf->nkey_env_names >= 1);
    assert_string_equal(conf->key_env_names[conf->nkey_env_names - 1],
                        "AAP_TEST_CONF_REDIS_PASSWORD");
    conf_free(conf);
    unsetenv("AAP_TEST_CONF_REDIS_PASSWORD");
    /* the limits: a key_prefix of 64 bytes, a socket path of 107 (sun_path less its NUL) */
    {
        char prefix[66], sock[110], json[512];
        memset(prefix, 'p', 65);
        prefix[64] = '\0';
        snprintf(json, sizeof json, "{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", "
                 "\"key_prefix\": \"%s\"}}", prefix);
        conf = load_ok(json);
        assert_int_equal(strlen(conf->shared.key_prefix), 64);
        conf_free(conf);
        prefix[64] = 'p';
        prefix[65] = '\0';
        snprintf(json, sizeof json, "{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", "
                 "\"key_prefix\": \"%s\"}}", prefix);
        expect_error(json, "shared_state.key_prefix: expected at most 64 printable ASCII");
        sock[0] = '/';
        memset(sock + 1, 's', 108);
        sock[107] = '\0';
        snprintf(json, sizeof json, "{" CREDS ", \"shared_state\": {\"redis\": \"unix:%s\"}}",
                 sock);
        conf = load_ok(json);
        assert_int_equal(strlen(conf->shared.unix_path), 107);
        conf_free(conf);
        sock[107] = 's';
        sock[108] = '\0';
        snprintf(json, sizeof json, "{" CREDS ", \"shared_state\": {\"redis\": \"unix:%s\"}}",
                 sock);
        expect_error(json, "shared_state.redis: expected \"unix:\" and an absolute socket path of "
                           "at most 107 bytes");
    }
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"key_prefix\": \"caf\u00e9:\"}}",
                 "shared_state.key_prefix: expected at most 64 printable ASCII");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"key_prefix\": \"\"}}",
                 "shared_state.key_prefix:");
    expect_error("{" CREDS ", \"shared_state\": {}}", "shared_state.redis: required");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"nohost\"}}",
                 "shared_state.redis: expected \"HOST:PORT\" or \"unix:/path\"");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:0\"}}", "shared_state.redis:");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"unix:relative.sock\"}}",
                 "shared_state.redis: expected \"unix:\" and an absolute socket path");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"replicas\": 0}}",
                 "shared_state.replicas: must be at least 1");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"replicas\": 1001}}",
                 "shared_state.replicas: must be at most 1000");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"timeout\": 0}}",
                 "shared_state.timeout: must be at least 0.005 seconds");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"timeout\": 11}}",
                 "shared_state.timeout: must be at most 10 seconds");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"key_prefix\": \"a b\"}}",
                 "shared_state.key_prefix: expected at most 64 printable ASCII");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"password_env\": "
                 "\"AAP_TEST_UNSET_REDIS_PASSWORD\"}}",
                 "shared_state.password_env: environment variable AAP_TEST_UNSET_REDIS_PASSWORD "
                 "is not set");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": "
                 "{\"ca_file\": \"/nonexistent/ca.pem\"}}}",
                 "shared_state.tls.ca_file: /nonexistent/ca.pem: No such file or directory");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": "
                 "{\"ca_file\": \"@KEY@\"}}}",
                 "shared_state.tls.ca_file: ");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": "
                 "{\"cert_file\": \"@CA@\"}}}",
                 "shared_state.tls: cert_file and key_file go together");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": "
                 "{\"key_file\": \"@KEY@\"}}}",
                 "shared_state.tls: cert_file and key_file go together");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": "
                 "{\"server_name\": \"a b\"}}}",
                 "shared_state.tls.server_name: expected a host name");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": "
                 "{\"verify\": false}}}",
                 "shared_state.tls.verify: unknown key");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"tls\": \"yes\"}}",
                 "shared_state.tls: expected true, false or an object");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"unix:/run/r.sock\", "
                 "\"tls\": true}}",
                 "shared_state.tls: not with a unix socket");
    expect_error("{" CREDS ", \"shared_state\": {\"redis\": \"h:1\", \"Redis\": 1}}",
                 "shared_state.Redis: unknown key");
    expect_error("{" CREDS ", \"shared_state\": \"h:1\"}", "shared_state: expected an object");
}

/* The browser rule's names and origins: what loads, and every shape that is refused. */
static void test_server_names_and_origins(void **state)
{
    struct conf *conf = load_ok("{" CREDS ", \"server_names\": [\"proxy.team.test\", "
                                "\"10.0.0.5\"], \"allowed_origins\": [\"https://a.test\", "
                                "\"http://b.test:8080\", \"http://[::1]:3000\"], \"listen\": "
                                "[{\"address\": \"127.0.0.1:8080\", \"server_names\": "
                                "[\"gw.test\"]}]}");

    (void)state;
    assert_int_equal(conf->nserver_names, 2);
    assert_string_equal(conf->server_names[0], "proxy.team.test");
    assert_int_equal(conf->nallowed_origins, 3);
    assert_string_equal(conf->allowed_origins[2], "http://[::1]:3000");
    assert_int_equal(conf->listen[0].nserver_names, 1);
    assert_string_equal(conf->listen[0].server_names[0], "gw.test");
    conf_free(conf);
    expect_error("{" CREDS ", \"server_names\": [\"proxy.test:8080\"]}",
                 "server_names[0]: expected a host name without a port");
    expect_error("{" CREDS ", \"server_names\": [\"a b\"]}", "server_names[0]: expected");
    expect_error("{" CREDS ", \"server_names\": [\"\"]}", "server_names[0]:");
    expect_error("{" CREDS ", \"server_names\": \"proxy.test\"}",
                 "server_names: expected an array of strings");
    expect_error("{" CREDS ", \"allowed_origins\": [\"null\"]}",
                 "allowed_origins[0]: \"null\" is the origin of every sandboxed frame");
    expect_error("{" CREDS ", \"allowed_origins\": [\"*\"]}", "allowed_origins[0]: expected a web origin");
    expect_error("{" CREDS ", \"allowed_origins\": [\"https://a.test/\"]}",
                 "allowed_origins[0]: expected a web origin");
    expect_error("{" CREDS ", \"allowed_origins\": [\"ftp://a.test\"]}",
                 "allowed_origins[0]: expected a web origin");
    expect_error("{" CREDS ", \"allowed_origins\": [\"https://a.test:99999\"]}",
                 "allowed_origins[0]: expected a web origin");
    expect_error("{" CREDS ", \"allowed_origins\": [\"https://A.test\"]}",
                 "allowed_origins[0]: expected an origin in lower case");
    expect_error("{" CREDS ", \"admin_listen\": {\"address\": \"127.0.0.1:9901\", "
                 "\"server_names\": [\"x.test\"]}}",
                 "admin_listen.server_names: not allowed on admin_listen");
}

static void test_env_server_names(void **state)
{
    const char *const env[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID", "2X9R4HXF34",
                               "APP_STORE_CONNECT_API_KEY_ISSUER_ID", ISSUER,
                               "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH", keypath,
                               "APPLE_AUTH_PROXY_SERVER_NAMES", " aap , aap.ci.svc,", NULL};
    const char *const bad[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID", "2X9R4HXF34",
                               "APP_STORE_CONNECT_API_KEY_ISSUER_ID", ISSUER,
                               "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH", keypath,
                               "APPLE_AUTH_PROXY_SERVER_NAMES", "aap:8080", NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_null(errors);
    assert_int_equal(conf->nserver_names, 2);
    assert_string_equal(conf->server_names[0], "aap");
    assert_string_equal(conf->server_names[1], "aap.ci.svc");
    conf_free(conf);
    conf = NULL;
    assert_int_equal(load_env(bad, &conf, &errors), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_SERVER_NAMES: expected a host name without a port");
    free(errors);
}

static void test_listen_forms(void **state)
{
    struct conf *conf = load_ok("{\"listen\": [\"[::1]:8080\", \"localhost:8081\"], "
                                "\"admin_listen\": \"[::]:0\", " CREDS "}");

    (void)state;
    assert_int_equal(conf->nlisten, 2);
    assert_string_equal(conf->listen[0].host, "::1");
    assert_string_equal(conf->listen[0].text, "[::1]:8080");
    assert_int_equal(conf->listen[0].port, 8080);
    assert_string_equal(conf->listen[1].host, "localhost");
    assert_string_equal(conf->admin_listen.host, "::");
    conf_free(conf);
}

static void test_addr_parse(void **state)
{
    struct conf_addr a;

    (void)state;
    assert_int_equal(conf_addr_parse("127.0.0.1:80", &a, 0), 0);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 80);
    conf_addr_deinit(&a);
    assert_int_equal(conf_addr_parse("[fe80::1]:65535", &a, 0), 0);
    assert_string_equal(a.host, "fe80::1");
    conf_addr_deinit(&a);
    assert_int_equal(conf_addr_parse("localhost:0", &a, 1), 0);
    conf_addr_deinit(&a);
    assert_int_equal(conf_addr_parse("localhost:0", &a, 0), -1);
    assert_int_equal(conf_addr_parse("localhost", &a, 1), -1);
    assert_int_equal(conf_addr_parse(":80", &a, 1), -1);
    assert_int_equal(conf_addr_parse("::1:80", &a, 1), -1);
    assert_int_equal(conf_addr_parse("[::1]", &a, 1), -1);
    assert_int_equal(conf_addr_parse("[nope]:80", &a, 1), -1);
    assert_int_equal(conf_addr_parse("a b:80", &a, 1), -1);
    assert_int_equal(conf_addr_parse("host:65536", &a, 1), -1);
    assert_int_equal(conf_addr_parse("host:+80", &a, 1), -1);
    assert_int_equal(conf_addr_parse("host:", &a, 1), -1);
    assert_int_equal(conf_addr_parse("", &a, 1), -1);
    assert_null(a.text);
    conf_addr_deinit(&a);
}

#define ASC_KEY_ERR "credentials.asc.private_key_file: /run/secrets/AuthKey_2X9R4HXF34.p8: "
#define WK_KEY_ERR  "credentials.weather.private_key_file: /run/secrets/AuthKey_ABC123DEFG.p8: "

static void test_example_file(void **state)
{
    const char *src = getenv("AAP_SOURCE_DIR");
    char path[512], *errors = NULL, *warnings = NULL, *line;
    struct conf *conf = NULL;
    size_t n = 0;

    (void)state;
    snprintf(path, sizeof path, "%s/conf/apple-auth-proxy.example.json", src ? src : ".");
    assert_int_equal(conf_load_file(path, &conf, &errors, &warnings), -1);
    assert_null(conf);
    assert_non_null(errors);
    /* Everything in the example is valid except that its key files do not exist here. */
    for (line = errors; *line != '\0'; line = strchr(line, '\n') + 1, n++) {
        if (strncmp(line, ASC_KEY_ERR, strlen(ASC_KEY_ERR)) != 0 &&
            strncmp(line, WK_KEY_ERR, strlen(WK_KEY_ERR)) != 0) {
            print_error("unexpected error in the example:\n%s\n", errors);
            fail();
        }
    }
    assert_int_equal(n, 2);
    free(errors);
    free(warnings);
}

static void test_key_sources(void **state)
{
    struct conf *conf;

    (void)state;
    conf = load_ok("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                   "\"key_id\": \"2X9R4HXF34\", \"private_key\": \"@PEM@\"}}}");
    assert_non_null(conf->credentials[0].key);
    conf_free(conf);

    assert_int_equal(setenv("AAP_TEST_CONF_KEY", pem, 1), 0);
    conf = load_ok("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                   "\"key_id\": \"2X9R4HXF34\", \"private_key_env\": \"AAP_TEST_CONF_KEY\"}}}");
    assert_non_null(conf->credentials[0].key);
    conf_free(conf);
    assert_int_equal(setenv("AAP_TEST_CONF_KEY", pem_b64, 1), 0);
    conf = load_ok("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                   "\"key_id\": \"2X9R4HXF34\", \"private_key_env\": \"AAP_TEST_CONF_KEY\"}}}");
    assert_non_null(conf->credentials[0].key);
    conf_free(conf);
    unsetenv("AAP_TEST_CONF_KEY");
}

static void test_key_file_mode_warning(void **state)
{
    char *warnings = NULL;
    struct conf *conf =
        load_ok_w("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                  "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@LOOSE@\"}}}",
                  &warnings);

    (void)state;
    assert_contains(warnings, "credentials.asc.private_key_file: ");
    assert_contains(warnings, "chmod 600");
    conf_free(conf);
    free(warnings);
}

static void test_refresh_margin_capped(void **state)
{
    char *warnings = NULL;
    struct conf *conf;

    (void)state;
    /* App Store Connect's default lifetime is 1140 s: a third is 380. */
    conf = load_ok_w("{\"token_refresh_margin\": 600, " CREDS "}", &warnings);
    assert_int_equal(conf->token_refresh_margin, 380);
    assert_contains(warnings, "token_refresh_margin: 600 s is more than a third");
    conf_free(conf);
    free(warnings);
}

/* ---- one test per class of mistake --------------------------------------------------------- */

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_error("{\"listn\": [\"127.0.0.1:1\"], " CREDS "}",
                 "listn: unknown key (did you mean \"listen\"?)");
    expect_error("{\"bogus\": 1, " CREDS "}", "bogus: unknown key (known keys: listen, ");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "\"2X9R4HXF34\", \"private_key_file\": \"@KEY@\", \"kid\": \"x\"}}}",
                 "credentials.asc.kid: unknown key");
    expect_error("{" CREDS ", \"routes\": [" ROUTE_ASC ", {\"path_prefix\": \"/x/\", "
                 "\"upstrem\": \"https://a.example\", \"credential\": \"asc\"}]}",
                 "routes[1].upstrem: unknown key (did you mean \"upstream\"?)");
    expect_error("{" CREDS ", \"limits\": {\"max_header\": 10}}",
                 "limits.max_header: unknown key (did you mean \"max_headers\"?)");
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_error("{\"workers\": \"4\", " CREDS "}", "workers: expected a non-negative integer\n");
    expect_error("{\"workers\": -1, " CREDS "}", "workers: expected a non-negative integer\n");
    expect_error("{\"workers\": 1.5, " CREDS "}", "workers: expected a non-negative integer\n");
    expect_error("{\"workers\": 257, " CREDS "}", "workers: must be at most 256");
    expect_error("{\"listen\": 8080, " CREDS "}", "listen: expected an array of \"host:port\"");
    expect_error("{\"listen\": [8080], " CREDS "}", "listen[0]: expected a \"host:port\" string");
    expect_error("{\"admin_listen\": false, " CREDS "}", "admin_listen: expected a \"host:port\"");
    expect_error("{\"credentials\": []}", "credentials: expected an object");
    expect_error("{\"credentials\": {\"asc\": 1}}", "credentials.asc: expected an object");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "2, \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc.key_id: expected a string");
    expect_error("{" CREDS ", \"routes\": {}}", "routes: expected an array of routes");
    expect_error("{" CREDS ", \"routes\": [1]}", "routes[0]: expected an object");
    expect_error("{" CREDS ", \"limits\": []}", "limits: expected an object");
    expect_error("{" CREDS ", \"token_refresh_margin\": \"300\"}",
                 "token_refresh_margin: expected a positive integer");
    expect_error("[]", "test.json: expected a JSON object at the top level");
    expect_error("\"x\"", "test.json: expected a JSON object at the top level");
}

static void test_missing_credentials(void **state)
{
    (void)state;
    expect_error("{}", "credentials: required");
    expect_error("{\"credentials\": {}}", "credentials: expected at least one credential");
    expect_error("{\"credentials\": {\"asc\": {\"key_id\": \"2X9R4HXF34\", "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc: no profile");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"appstoreconnect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc.profile: unknown profile \"appstoreconnect\"");
    expect_error("{\"credentials\": {\"w\": {\"profile\": \"weatherkit\", \"key_id\": "
                 "\"ABC123DEFG\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.w.team_id: required by the weatherkit profile");
    expect_error("{\"credentials\": {\"bad name\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.bad name: credential names use letters");
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_error("{\"credentials\": {" ASC_CRED ", " ASC_CRED "}}",
                 "credentials.asc: duplicate key");
    expect_error("{\"workers\": 1, \"workers\": 2, " CREDS "}", "workers: duplicate key");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "\"2X9R4HXF34\", \"key_id\": \"2X9R4HXF35\", \"private_key_file\": "
                 "\"@KEY@\"}}}",
                 "credentials.asc.key_id: duplicate key");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://a.example\", \"upstream\": \"https://b.example\", \"credential\": "
                 "\"asc\"}]}",
                 "routes[0].upstream: duplicate key");
}

static void test_route_missing_credential(void **state)
{
    (void)state;
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"foo\"}]}",
                 "routes[0].credential: no credential named \"foo\"");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"credential\": \"asc\"}]}",
                 "routes[0].upstream: required");
    expect_error("{" CREDS ", \"routes\": []}", "routes: expected at least one route");
}

static void test_bad_upstreams(void **state)
{
    static const struct {
        const char *url, *message;
    } cases[] = {
        {"http://api.appstoreconnect.apple.com", "only https upstreams are supported"},
        {"ftp://example.com", "only https upstreams are supported"},
        {"api.appstoreconnect.apple.com", "expected https://host[:port]"},
        {"https://api.appstoreconnect.apple.com/v1", "a path is not allowed"},
        {"https://user:pw@api.appstoreconnect.apple.com",
         "user information (user@) is not allowed"},
        {"https://example.com?x=1", "a query is not allowed"},
        {"https://example.com#f", "a fragment is not allowed"},
        {"https://", "empty host"},
        {"https:///", "empty host"},
        {"https://:443", "empty host"},
        {"https://example.com:0", "bad port \"0\""},
        {"https://example.com:65536", "bad port \"65536\""},
        {"https://example.com:https", "bad port \"https\""},
        {"https://example.com:", "bad port \"\""},
        {"https://exa mple.com", "bad host name"},
        {"https://[::1", "missing ']'"},
    };
    char tmpl[512], *errors;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(tmpl, sizeof tmpl,
                 "{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": \"%s\", "
                 "\"credential\": \"asc\"}]}",
                 cases[i].url);
        errors = load_fail(tmpl);

        assert_contains(errors, "routes[0].upstream: ");
        assert_contains(errors, cases[i].message);
        free(errors);
    }
    /* IPv6 literals and a trailing slash are fine. */
    conf_free(load_ok("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                      "\"https://[::1]:8443/\", \"credential\": \"asc\"}]}"));
}

static void test_bad_ids(void **state)
{
    char *errors;

    (void)state;
    errors = load_fail("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                       "\"key_id\": \"2x9r4hxf34\", \"private_key_file\": \"@KEY@\"}}}");
    assert_contains(errors, "credentials.asc.key_id: expected a 10-character string");
    assert_int_equal(count_lines(errors), 1); /* one message per field, not one per checker */
    free(errors);
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF3\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc.key_id: expected a 10-character string");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"issuer_id\": \"69a6de95-023f-47e3\", "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc.issuer_id: expected a UUID");
    expect_error("{\"credentials\": {\"w\": {\"profile\": \"weatherkit\", \"key_id\": "
                 "\"ABC123DEFG\", \"team_id\": \"DEF123\", \"service_id\": \"com.example.w\", "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.w.team_id: expected a 10-character string");
    expect_error("{\"credentials\": {\"w\": {\"profile\": \"weatherkit\", \"key_id\": "
                 "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"service_id\": \"com.example.w\", "
                 "\"issuer_id\": \"" ISSUER "\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.w.issuer_id: not used by the weatherkit profile");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "\"2X9R4HXF34\", \"scope\": [\"get /v1/apps\"], \"private_key_file\": "
                 "\"@KEY@\"}}}",
                 "credentials.asc.scope[0]: expected \"METHOD /path\"");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "\"2X9R4HXF34\", \"scope\": \"GET /v1/apps\", \"private_key_file\": "
                 "\"@KEY@\"}}}",
                 "credentials.asc.scope: expected an array of strings");
}

static void test_lifetime_over_max(void **state)
{
    char *errors;

    (void)state;
    errors = load_fail("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                       "\"key_id\": \"2X9R4HXF34\", \"token_lifetime\": 1260, "
                       "\"private_key_file\": \"@KEY@\"}}}");
    assert_contains(errors, "credentials.asc.token_lifetime: 1260 is above the app-store-connect "
                            "maximum of 1200 seconds");
    free(errors);
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"token_lifetime\": 0, "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc.token_lifetime: must be at least 1");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"clock_skew\": 301, "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.asc.clock_skew: must be at most 300");
}

static void test_private_key_missing_file(void **state)
{
    char *errors;

    (void)state;
    errors = load_fail("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                       "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@DIR@/nope.p8\"}}}");
    assert_contains(errors, "credentials.asc.private_key_file: ");
    assert_contains(errors, "/nope.p8: No such file or directory");
    free(errors);
}

static void test_private_key_unreadable(void **state)
{
    char *errors;

    (void)state;
    /* chmod 000 means nothing to root, which runs these tests; a directory is refused for
     * everyone. */
    errors = load_fail("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                       "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@DIR@\"}}}");
    assert_contains(errors, "credentials.asc.private_key_file: ");
    assert_contains(errors, tmpdir);
    assert_contains(errors, "a directory");
    free(errors);
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@CA@\"}}}",
                 "credentials.asc.private_key_file: ");
}

static void test_private_key_text_not_echoed(void **state)
{
    char *errors;

    (void)state;
    errors = load_fail("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                       "\"key_id\": \"2X9R4HXF34\", \"private_key\": \"-----BEGIN PRIVATE "
                       "KEY-----\\nSECRETSECRETSECRET\\n-----END PRIVATE KEY-----\\n\"}}}");
    assert_contains(errors, "credentials.asc.private_key: ");
    assert_lacks(errors, "SECRETSECRET");
    free(errors);
    errors = load_fail("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                       "\"key_id\": \"2X9R4HXF34\", \"private_key\": \"SECRETSECRETSECRET\" "
                       "SECRETSECRET}}}");
    assert_contains(errors, "test.json: line 1, column ");
    assert_lacks(errors, "SECRETSECRET");
    free(errors);
}

static void test_two_key_sources(void **state)
{
    (void)state;
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"private_key_file\": \"@KEY@\", "
                 "\"private_key\": \"@PEM@\"}}}",
                 "credentials.asc: private_key_file and private_key are both set; use exactly "
                 "one");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\"}}}",
                 "credentials.asc: no private key: set private_key_file, private_key or "
                 "private_key_env");
}

static void test_key_env_missing(void **state)
{
    (void)state;
    unsetenv("AAP_TEST_CONF_NO_SUCH_KEY");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"private_key_env\": "
                 "\"AAP_TEST_CONF_NO_SUCH_KEY\"}}}",
                 "credentials.asc.private_key_env: environment variable "
                 "AAP_TEST_CONF_NO_SUCH_KEY is not set");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"2X9R4HXF34\", \"private_key_env\": \"NOT-A-NAME\"}}}",
                 "credentials.asc.private_key_env: expected the name of an environment variable");
}

static void test_bad_listen(void **state)
{
    (void)state;
    expect_error("{\"listen\": [\"localhost\"], " CREDS "}",
                 "listen[0]: expected host:port (no port) (got \"localhost\")");
    expect_error("{\"listen\": [\"127.0.0.1:99999\"], " CREDS "}", "listen[0]: bad port");
    expect_error("{\"listen\": [\"::1:8080\"], " CREDS "}",
                 "listen[0]: IPv6 addresses go in brackets");
    expect_error("{\"listen\": [], " CREDS "}", "listen: expected 1 to 64 addresses");
    expect_error("{\"listen\": [\"127.0.0.1:1\", \"127.0.0.1:1\"], " CREDS "}",
                 "listen[1]: \"127.0.0.1:1\" is listed twice");
    expect_error("{\"admin_listen\": \"127.0.0.1\", " CREDS "}",
                 "admin_listen: expected host:port");
    expect_error("{\"admin_listen\": \"127.0.0.1:8080\", " CREDS "}",
                 "admin_listen: 127.0.0.1:8080 is also a proxy listen address");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"address\": \"10.0.0.1:0\", "
                 "\"credential\": \"asc\"}]}",
                 "routes[0].address: bad port \"0\" (expected 1-65535)");
}

static void test_bad_limits(void **state)
{
    (void)state;
    expect_error("{" CREDS ", \"limits\": {\"client_header_timeout\": 0}}",
                 "limits.client_header_timeout: must be at least 0.001 seconds");
    expect_error("{" CREDS ", \"limits\": {\"send_timeout\": 86401}}",
                 "limits.send_timeout: must be at most 86400 seconds");
    expect_error("{" CREDS ", \"limits\": {\"drain_timeout\": \"30s\"}}",
                 "limits.drain_timeout: expected a number of seconds");
    expect_error("{" CREDS ", \"limits\": {\"max_headers\": \"100\"}}",
                 "limits.max_headers: expected a positive integer");
    expect_error("{" CREDS ", \"limits\": {\"max_body_bytes\": -1}}",
                 "limits.max_body_bytes: expected a non-negative integer");
    expect_error("{" CREDS ", \"limits\": {\"max_request_line_bytes\": 100}}",
                 "limits.max_request_line_bytes: must be at least 256");
    expect_error("{" CREDS ", \"limits\": {\"max_request_line_bytes\": 65536, "
                 "\"max_header_bytes\": 32768}}",
                 "limits.max_header_bytes: must be at least max_request_line_bytes (65536)");
    expect_error("{" CREDS ", \"token_refresh_margin\": 5}",
                 "token_refresh_margin: must be at least 10");
}

static void test_bad_routes(void **state)
{
    (void)state;
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"api/\", \"upstream\": "
                 "\"https://a.example\", \"credential\": \"asc\"}]}",
                 "routes[0].path_prefix: must start with '/'");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/a/\", \"strip_prefix\": \"/b\", "
                 "\"upstream\": \"https://a.example\", \"credential\": \"asc\"}]}",
                 "routes[0].strip_prefix: must be a prefix of path_prefix");
    expect_error("{" CREDS ", \"routes\": [" ROUTE_ASC ", {\"path_prefix\": \"/apps/\", "
                 "\"upstream\": \"https://api.appstoreconnect.apple.com:443/\", "
                 "\"credential\": \"asc\"}]}",
                 "routes[1]: never used: routes[0] (path_prefix \"/\") comes first");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/v1\", \"host\": \"a.example\", "
                 "\"upstream\": \"https://a.example\", \"credential\": \"asc\"}, "
                 "{\"path_prefix\": \"/v1x\", \"host\": \"a.example\", \"upstream\": "
                 "\"https://b.example\", \"credential\": \"asc\"}]}",
                 "routes[1]: never used: routes[0] (path_prefix \"/v1\")");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://a.example\", \"credential\": \"asc\", \"ca_file\": "
                 "\"@DIR@/none.pem\"}]}",
                 "routes[0].ca_file: ");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://a.example\", \"credential\": \"asc\", \"ca_file\": \"@DIR@\"}]}",
                 "not a regular file");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://a.example\", \"credential\": \"asc\", \"ca_file\": \"@KEY@\"}]}",
                 "no PEM certificate");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://a.example\", \"credential\": \"asc\", \"host\": \"a.example:80\"}]}",
                 "routes[0].host: expected a host name without a port");
    expect_error("{\"credentials\": {" WK_CRED "}, \"routes\": [{\"path_prefix\": \"/\", "
                 "\"upstream\": \"https://weatherkit.apple.com\", \"credential\": \"weather\", "
                 "\"scope\": [\"GET /api/v1/x\"]}]}",
                 "routes[0].scope: only app-store-connect credentials take a scope");
}

static void test_route_order_warns(void **state)
{
    char *warnings = NULL;
    struct conf *conf;

    (void)state;
    /* Two "/" routes to different hosts: the HTTP-proxy (absolute-form) setup. Not an error,
     * but origin-form requests all go to the first. */
    conf = load_ok_w("{\"credentials\": {" ASC_CRED ", " WK_CRED "}, \"routes\": [" ROUTE_ASC
                     ", {\"path_prefix\": \"/\", \"upstream\": \"https://weatherkit.apple.com\", "
                     "\"credential\": \"weather\"}]}",
                     &warnings);
    assert_contains(warnings, "routes[1]: only absolute-form (HTTP proxy) requests can reach this "
                              "route: routes[0] (path_prefix \"/\") comes first");
    conf_free(conf);
    free(warnings);
    /* A host on the later route keeps it apart for origin-form requests only when the earlier
     * route has the same host. */
    conf = load_ok_w("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"host\": \"a.example\", "
                     "\"upstream\": \"https://a.example\", \"credential\": \"asc\"}, "
                     "{\"path_prefix\": \"/\", \"host\": \"b.example\", \"upstream\": "
                     "\"https://a.example\", \"credential\": \"asc\"}]}",
                     &warnings);
    assert_null(warnings);
    conf_free(conf);
    conf = load_ok_w("{\"credentials\": {" ASC_CRED ", " WK_CRED "}, \"routes\": [" ROUTE_ASC "]}",
                     &warnings);
    assert_contains(warnings, "credentials.weather: no route uses this credential");
    conf_free(conf);
    free(warnings);
}

static void test_route_host_mismatch_warns(void **state)
{
    char *warnings = NULL;
    struct conf *conf = load_ok_w("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", "
                                  "\"upstream\": \"https://weatherkit.apple.com\", "
                                  "\"credential\": \"asc\"}]}",
                                  &warnings);

    (void)state;
    assert_contains(warnings, "routes[0].upstream: weatherkit.apple.com expects weatherkit "
                              "tokens, but credential \"asc\" is app-store-connect");
    conf_free(conf);
    free(warnings);
}

static void test_json_syntax(void **state)
{
    (void)state;
    expect_error("{\n  \"workers\": 1,\n  \"credentials\": {,\n}", "test.json: line 3, column ");
    expect_error("{" CREDS "} trailing", "unexpected text after the JSON object");
    expect_error("", "test.json: empty");
    expect_error("   \n", "test.json: empty");
}

static void test_multiple_errors(void **state)
{
    char *errors = load_fail("{\"workers\": \"x\", \"listen\": [\"nope\"], \"credentials\": {"
                             "\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"bad\", "
                             "\"private_key_file\": \"@DIR@/missing.p8\"}}, \"routes\": ["
                             "{\"path_prefix\": \"/\", \"upstream\": \"http://x.example\", "
                             "\"credential\": \"other\"}], \"limits\": {\"max_headers\": 0}}");

    (void)state;
    assert_contains(errors, "workers: expected a non-negative integer\n");
    assert_contains(errors, "listen[0]: expected host:port");
    assert_contains(errors, "credentials.asc.key_id: expected a 10-character string");
    assert_contains(errors, "credentials.asc.private_key_file: ");
    assert_contains(errors, "routes[0].upstream: only https upstreams are supported");
    assert_contains(errors, "routes[0].credential: no credential named \"other\"");
    assert_contains(errors, "limits.max_headers: must be at least 1");
    assert_int_equal(count_lines(errors), 7);
    free(errors);
}

static void test_many_errors_capped(void **state)
{
    size_t cap = 64 + 300 * 16, len = 0, i;
    char *tmpl = malloc(cap), *errors;

    (void)state;
    assert_non_null(tmpl);
    len += (size_t)snprintf(tmpl + len, cap - len, "{");
    for (i = 0; i < 300; i++)
        len += (size_t)snprintf(tmpl + len, cap - len, "\"k%03zu\": 1, ", i);
    snprintf(tmpl + len, cap - len, CREDS "}");
    errors = load_fail(tmpl);
    assert_contains(errors, "k000: unknown key");
    assert_contains(errors, "(200 more problems not shown)\n");
    assert_int_equal(count_lines(errors), 101);
    free(errors);
    free(tmpl);
}

/* ---- the team gateway: clients, TLS listeners, quota_reserve, client_scopes ------------------ */

/* Not secrets: the SHA-256 values the configuration holds, in both cases of hex. */
#define HASH_A "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789ABCDEF"
#define HASH_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
#define ASC_QUOTA_CRED                                                                             \
    "\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"2X9R4HXF34\", \"issuer_id\": "    \
    "\"" ISSUER "\", \"private_key_file\": \"@KEY@\", \"quota_reserve\": 200}"
#define GATEWAY_ROUTES                                                                             \
    "\"routes\": [{\"path_prefix\": \"/api/v1/\", \"upstream\": "                                  \
    "\"https://weatherkit.apple.com\", "                                                           \
    "\"credential\": \"weather\"}, {\"path_prefix\": \"/\", \"upstream\": "                        \
    "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", \"client_scopes\": "      \
    "true}]"
#define TLS_LISTEN                                                                                 \
    "{\"address\": \"0.0.0.0:8443\", \"tls\": {\"cert_file\": \"@CA@\", \"key_file\": \"@KEY@\", " \
    "\"client_ca_file\": \"@CA@\"}}"
/* A file with one client; CLIENT is the body of "clients". */
#define WITH_CLIENTS(clients) "{" CREDS ", \"clients\": {" clients "}}"
#define ONE_CLIENT(body)      WITH_CLIENTS("\"x\": {" body "}")
#define KEY_A                 "\"key_sha256\": \"" HASH_A "\""

static void test_gateway_config(void **state)
{
    static const unsigned char hash_a[8] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    static const unsigned char v6net[4] = {0x20, 0x01, 0x0d, 0xb8};
    static const unsigned char v6one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    char *warnings = NULL;
    const struct conf_client *c;
    struct conf *conf = load_ok_w(
        "{\"listen\": [\"127.0.0.1:8080\", " TLS_LISTEN "], \"allow_anonymous_clients\": false, "
        "\"credentials\": {" ASC_QUOTA_CRED ", " WK_CRED "}, " GATEWAY_ROUTES ", \"clients\": {"
        "\"release-bot\": {" KEY_A ", \"allow\": [{\"methods\": [\"get\", \"HEAD\"], "
        "\"path_prefix\": \"/v1/\"}, {\"methods\": [\"POST\"]}, {\"path_prefix\": \"/v2/\"}], "
        "\"credentials\": [\"asc\"], \"rate\": {\"per_second\": 5, \"burst\": 20}, "
        "\"priority\": false},"
        "\"weather-svc\": {\"key_sha256\": \"" HASH_B "\", \"credentials\": [\"weather\", "
        "\"asc\"], \"allow_cidrs\": [\"10.1.0.0/16\", \"::1\", \"2001:db8::/32\", \"192.168.1.7\", "
        "\"::ffff:172.16.0.0/108\"], \"rate\": {\"per_second\": 0.5}, \"priority\": true},"
        "\"ci-runner\": {\"cert_subject\": \"CN=ci-runner,O=Example\", \"rate\": "
        "{\"per_second\": 20}}}}",
        &warnings);

    (void)state;
    assert_null(warnings);
    /* listen: a plain entry and a TLS one */
    assert_int_equal(conf->nlisten, 2);
    assert_string_equal(conf->listen[0].text, "127.0.0.1:8080");
    assert_null(conf->listen[0].tls_cert_file);
    assert_null(conf->listen[0].tls_key_file);
    assert_null(conf->listen[0].tls_client_ca_file);
    assert_string_equal(conf->listen[1].text, "0.0.0.0:8443");
    assert_string_equal(conf->listen[1].host, "0.0.0.0");
    assert_int_equal(conf->listen[1].port, 8443);
    assert_string_equal(conf->listen[1].tls_cert_file, capath);
    assert_string_equal(conf->listen[1].tls_key_file, keypath);
    assert_string_equal(conf->listen[1].tls_client_ca_file, capath);
    assert_null(conf->admin_listen.tls_cert_file);
    assert_int_equal(conf->allow_anonymous_clients, 0);
    /* quota_reserve is parallel to credentials */
    assert_non_null(conf->quota_reserve);
    assert_int_equal(conf->quota_reserve[0], 200);
    assert_int_equal(conf->quota_reserve[1], -1);
    assert_int_equal(conf->routes[0].client_scopes, 0);
    assert_int_equal(conf->routes[1].client_scopes, 1);
    assert_int_equal(conf->nclients, 3);

    c = &conf->clients[0];
    assert_string_equal(c->name, "release-bot");
    assert_int_equal(c->has_key, 1);
    assert_memory_equal(c->key_sha256, hash_a, 8);
    assert_memory_equal(c->key_sha256 + 8, hash_a, 8);
    assert_memory_equal(c->key_sha256 + 16, hash_a, 8); /* upper-case hex, same bytes */
    assert_null(c->cert_subject);
    assert_int_equal(c->nallow, 3);
    assert_int_equal(c->allow[0].nmethods, 2);
    assert_string_equal(c->allow[0].methods[0], "GET");
    assert_string_equal(c->allow[0].methods[1], "HEAD");
    assert_string_equal(c->allow[0].path_prefix, "/v1/");
    assert_int_equal(c->allow[1].nmethods, 1);
    assert_string_equal(c->allow[1].methods[0], "POST");
    assert_string_equal(c->allow[1].path_prefix, "/"); /* absent: every path */
    assert_int_equal(c->allow[2].nmethods, 0);         /* absent: every method */
    assert_null(c->allow[2].methods);
    assert_string_equal(c->allow[2].path_prefix, "/v2/");
    assert_int_equal(c->ncredentials, 1);
    assert_string_equal(c->credentials[0], "asc");
    assert_int_equal(c->credential_index[0], 0);
    assert_int_equal(c->nallow_cidrs, 0);
    assert_true(c->rate_per_second == 5.0);
    assert_true(c->rate_burst == 20.0);
    assert_int_equal(c->priority, 0);

    c = &conf->clients[1];
    assert_string_equal(c->name, "weather-svc");
    assert_int_equal(c->has_key, 1);
    assert_int_equal(c->key_sha256[0], 0xff);
    assert_int_equal(c->key_sha256[31], 0x00);
    assert_int_equal(c->nallow, 0);
    assert_int_equal(c->ncredentials, 2);
    assert_int_equal(c->credential_index[0], 1);
    assert_int_equal(c->credential_index[1], 0);
    assert_int_equal(c->nallow_cidrs, 5);
    assert_int_equal(c->allow_cidrs[0].family, AF_INET);
    assert_int_equal(c->allow_cidrs[0].prefix, 16);
    assert_int_equal(c->allow_cidrs[0].addr[0], 10);
    assert_int_equal(c->allow_cidrs[0].addr[1], 1);
    assert_int_equal(c->allow_cidrs[0].addr[2], 0);
    assert_string_equal(c->allow_cidrs[0].text, "10.1.0.0/16");
    assert_int_equal(c->allow_cidrs[1].family, AF_INET6);
    assert_int_equal(c->allow_cidrs[1].prefix, 128);
    assert_memory_equal(c->allow_cidrs[1].addr, v6one, 16);
    assert_string_equal(c->allow_cidrs[1].text, "::1");
    assert_int_equal(c->allow_cidrs[2].family, AF_INET6);
    assert_int_equal(c->allow_cidrs[2].prefix, 32);
    assert_memory_equal(c->allow_cidrs[2].addr, v6net, 4);
    assert_int_equal(c->allow_cidrs[2].addr[4], 0);
    assert_int_equal(c->allow_cidrs[3].family, AF_INET);
    assert_int_equal(c->allow_cidrs[3].prefix, 32);
    assert_int_equal(c->allow_cidrs[3].addr[3], 7);
    /* An IPv4-mapped network is stored as the IPv4 one. */
    assert_int_equal(c->allow_cidrs[4].family, AF_INET);
    assert_int_equal(c->allow_cidrs[4].prefix, 12);
    assert_int_equal(c->allow_cidrs[4].addr[0], 172);
    assert_int_equal(c->allow_cidrs[4].addr[1], 16);
    assert_true(c->rate_per_second == 0.5);
    assert_true(c->rate_burst == 1.0); /* max(1, per_second) */
    assert_int_equal(c->priority, 1);

    c = &conf->clients[2];
    assert_string_equal(c->name, "ci-runner");
    assert_int_equal(c->has_key, 0);
    assert_string_equal(c->cert_subject, "CN=ci-runner,O=Example");
    assert_int_equal(c->ncredentials, 0);
    assert_null(c->credential_index);
    assert_true(c->rate_per_second == 20.0);
    assert_true(c->rate_burst == 20.0);
    conf_free(conf);

    /* Without any of it: no clients, no TLS, no reserve. */
    conf = load_ok("{" CREDS "}");
    assert_int_equal(conf->nclients, 0);
    assert_null(conf->clients);
    assert_int_equal(conf->allow_anonymous_clients, 0);
    assert_int_equal(conf->quota_reserve[0], -1);
    assert_null(conf->listen[0].tls_cert_file);
    assert_int_equal(conf->routes[0].client_scopes, 0);
    assert_true(conf->clients == NULL);
    conf_free(conf);
    /* A single object as "listen", and admin_listen as an object without tls. */
    conf = load_ok("{\"listen\": " TLS_LISTEN ", \"admin_listen\": {\"address\": "
                   "\"127.0.0.1:9999\"}, \"allow_anonymous_clients\": true, " CREDS "}");
    assert_int_equal(conf->nlisten, 1);
    assert_string_equal(conf->listen[0].tls_key_file, keypath);
    assert_string_equal(conf->admin_listen.text, "127.0.0.1:9999");
    assert_int_equal(conf->allow_anonymous_clients, 1);
    conf_free(conf);
    /* client_ca_file is optional; "priority" and the rest default. */
    conf = load_ok("{\"listen\": [{\"address\": \"[::]:0\", \"tls\": {\"cert_file\": \"@CA@\", "
                   "\"key_file\": \"@KEY@\"}}], " CREDS ", \"clients\": {\"a\": {" KEY_A "}}}");
    assert_null(conf->listen[0].tls_client_ca_file);
    assert_int_equal(conf->clients[0].priority, 0);
    assert_true(conf->clients[0].rate_per_second == 0);
    assert_int_equal(conf->clients[0].nallow, 0);
    conf_free(conf);
}

static void test_rewrite_links(void **state)
{
    struct conf *conf;

    (void)state;
    /* Default: on for app-store-connect routes (derived or written), off elsewhere. */
    conf = load_ok("{\"credentials\": {" ASC_CRED ", " WK_CRED "}}");
    assert_string_equal(conf->routes[0].credential, "weather");
    assert_int_equal(conf->routes[0].rewrite_links, 0);
    assert_int_equal(conf->routes[1].rewrite_links, 1);
    conf_free(conf);
    conf = load_ok("{\"credentials\": {" ASC_CRED ", " WK_CRED "}, " GATEWAY_ROUTES "}");
    assert_int_equal(conf->routes[0].rewrite_links, 0);
    assert_int_equal(conf->routes[1].rewrite_links, 1);
    conf_free(conf);
    /* As written, either way. */
    conf = load_ok("{\"credentials\": {" ASC_CRED ", " WK_CRED "}, \"routes\": [{\"path_prefix\": "
                   "\"/api/v1/\", \"upstream\": \"https://weatherkit.apple.com\", \"credential\": "
                   "\"weather\", \"rewrite_links\": true}, {\"path_prefix\": \"/\", \"upstream\": "
                   "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                   "\"rewrite_links\": false}]}");
    assert_int_equal(conf->routes[0].rewrite_links, 1);
    assert_int_equal(conf->routes[1].rewrite_links, 0);
    conf_free(conf);
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                 "\"rewrite_links\": \"no\"}]}",
                 "routes[0].rewrite_links: expected true or false");
}

static void test_gateway_listen_errors(void **state)
{
    (void)state;
    expect_error(
        "{\"listen\": [{\"tls\": {\"cert_file\": \"@CA@\", \"key_file\": \"@KEY@\"}}], " CREDS "}",
        "listen[0].address: required");
    expect_error("{\"listen\": [{\"adress\": \"0.0.0.0:1\"}], " CREDS "}",
                 "listen[0].adress: unknown key (did you mean \"address\"?)");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0\"}], " CREDS "}",
                 "listen[0].address: expected host:port (no port)");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"address\": \"0.0.0.0:2\"}], " CREDS
                 "}",
                 "listen[0].address: duplicate key");
    expect_error("{\"listen\": [\"0.0.0.0:1\", {\"address\": \"0.0.0.0:1\"}], " CREDS "}",
                 "listen[1]: \"0.0.0.0:1\" is listed twice");
    expect_error(
        "{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"key_file\": \"@KEY@\"}}], " CREDS
        "}",
        "listen[0].tls.cert_file: required");
    expect_error(
        "{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@CA@\"}}], " CREDS
        "}",
        "listen[0].tls.key_file: required");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": true}], " CREDS "}",
                 "listen[0].tls: expected an object");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": "
                 "\"@DIR@/none.pem\", \"key_file\": \"@KEY@\"}}], " CREDS "}",
                 "/none.pem: No such file or directory");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@CA@\", "
                 "\"key_file\": \"@DIR@\"}}], " CREDS "}",
                 "listen[0].tls.key_file: ");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@CA@\", "
                 "\"key_file\": \"@DIR@\"}}], " CREDS "}",
                 ": not a regular file");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@KEY@\", "
                 "\"key_file\": \"@KEY@\"}}], " CREDS "}",
                 "listen[0].tls.cert_file: ");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@CA@\", "
                 "\"key_file\": \"@KEY@\", \"client_ca_file\": \"@KEY@\"}}], " CREDS "}",
                 "no PEM certificate (-----BEGIN CERTIFICATE-----) in it");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@CA@\", "
                 "\"key_file\": \"@KEY@\", \"client_ca_file\": \"@DIR@/nope.pem\"}}], " CREDS "}",
                 "listen[0].tls.client_ca_file: ");
    expect_error("{\"listen\": [{\"address\": \"0.0.0.0:1\", \"tls\": {\"cert_file\": \"@CA@\", "
                 "\"key_file\": \"@KEY@\", \"ca_file\": \"@CA@\"}}], " CREDS "}",
                 "listen[0].tls.ca_file: unknown key");
    expect_error("{\"admin_listen\": {\"address\": \"127.0.0.1:9901\", \"tls\": {\"cert_file\": "
                 "\"@CA@\", \"key_file\": \"@KEY@\"}}, " CREDS "}",
                 "admin_listen.tls: not allowed on admin_listen");
    expect_error("{\"allow_anonymous_clients\": \"yes\", " CREDS "}",
                 "allow_anonymous_clients: expected true or false");
}

static void test_gateway_credential_route_errors(void **state)
{
    char *warnings = NULL;
    struct conf *conf;

    (void)state;
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "\"2X9R4HXF34\", \"private_key_file\": \"@KEY@\", \"quota_reserve\": -1}}}",
                 "credentials.asc.quota_reserve: expected a non-negative integer");
    expect_error("{\"credentials\": {\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": "
                 "\"2X9R4HXF34\", \"private_key_file\": \"@KEY@\", \"quota_reserve\": 2.5}}}",
                 "credentials.asc.quota_reserve: expected a non-negative integer");
    /* Only App Store Connect has a quota to reserve from: elsewhere a warning, and unset. */
    conf =
        load_ok_w("{\"credentials\": {\"weather\": {\"profile\": \"weatherkit\", \"key_id\": "
                  "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"service_id\": "
                  "\"com.example.w\", \"private_key_file\": \"@WKEY@\", \"quota_reserve\": 10}}}",
                  &warnings);
    assert_contains(warnings, "credentials.weather.quota_reserve: only app-store-connect "
                              "credentials have a quota to reserve from; ignored for this "
                              "weatherkit credential");
    assert_int_equal(conf->quota_reserve[0], -1);
    conf_free(conf);
    free(warnings);
    conf = load_ok("{\"credentials\": {" ASC_QUOTA_CRED "}}");
    assert_int_equal(conf->quota_reserve[0], 200);
    conf_free(conf);

    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                 "\"client_scopes\": 1}]}",
                 "routes[0].client_scopes: expected true or false");
    expect_error("{\"credentials\": {" WK_CRED "}, \"routes\": [{\"path_prefix\": \"/\", "
                 "\"upstream\": \"https://weatherkit.apple.com\", \"credential\": \"weather\", "
                 "\"client_scopes\": true}], \"clients\": {\"a\": {" KEY_A "}}}",
                 "routes[0].client_scopes: only app-store-connect credentials take a scope "
                 "(credential \"weather\" is weatherkit)");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                 "\"scope\": [\"GET /v1/apps\"], \"client_scopes\": true}], \"clients\": {\"a\": "
                 "{" KEY_A "}}}",
                 "routes[0].client_scopes: cannot be combined with the route's own \"scope\"");
    conf = load_ok_w("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                     "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                     "\"client_scopes\": true}]}",
                     &warnings);
    assert_contains(warnings, "routes[0].client_scopes: has no effect without \"clients\"");
    conf_free(conf);
    free(warnings);
}

static void test_gateway_client_errors(void **state)
{
    (void)state;
    expect_error("{" CREDS ", \"clients\": []}", "clients: expected an object of named clients");
    expect_error("{" CREDS ", \"clients\": {}}", "clients: expected at least one client");
    expect_error(WITH_CLIENTS("\"bad name\": {" KEY_A "}"), "clients.bad name: client names use");
    expect_error(WITH_CLIENTS("\"a:b\": {" KEY_A "}"), "clients.a:b: client names use");
    expect_error(WITH_CLIENTS("\"x\": 1"), "clients.x: expected an object");
    expect_error(WITH_CLIENTS("\"x\": {" KEY_A "}, \"x\": {" KEY_A "}"),
                 "clients.x: duplicate key");
    expect_error(ONE_CLIENT("\"priority\": true"), "clients.x: no identity: set \"key_sha256\"");
    expect_error(ONE_CLIENT(KEY_A ", \"key_sha\": 1"),
                 "clients.x.key_sha: unknown key (did you mean \"key_sha256\"?)");
    expect_error(ONE_CLIENT(KEY_A ", " KEY_A), "clients.x.key_sha256: duplicate key");
    expect_error(ONE_CLIENT(KEY_A ", \"priority\": \"yes\""),
                 "clients.x.priority: expected true or false");
}

static void test_gateway_key_sha256_errors(void **state)
{
    /* What client-key prints as a secret: 43 characters of base64url. */
    static const char secret[] = "Zm9vYmFyLXNlY3JldC1ub3QtYS1oYXNoLWF0LWFsbA_";
    char tmpl[512], *errors;

    (void)state;
    assert_int_equal(strlen(secret), 43);
    expect_error(ONE_CLIENT("\"key_sha256\": \"0123456789abcdef0123456789abcdef0123456789abcdef0"
                            "123456789abcde\""),
                 "clients.x.key_sha256: expected the SHA-256 of the secret as 64 hex digits "
                 "(apple-auth-proxy client-key prints it) (got 63 hex digits)");
    expect_error(ONE_CLIENT("\"key_sha256\": \"\""), "(got an empty string)");
    expect_error(ONE_CLIENT("\"key_sha256\": 12"),
                 "clients.x.key_sha256: expected a string of 64 hex digits");
    snprintf(tmpl, sizeof tmpl, ONE_CLIENT("\"key_sha256\": \"%s\""), secret);
    errors = load_fail(tmpl);
    assert_contains(errors, "clients.x.key_sha256: expected the SHA-256 of the secret as 64 hex "
                            "digits (apple-auth-proxy client-key prints it); this looks like the "
                            "secret itself");
    assert_lacks(errors, secret);
    free(errors);
    /* Anything else: not repeated either. */
    errors = load_fail(ONE_CLIENT("\"key_sha256\": \"sha256:" HASH_A "\""));
    assert_contains(errors, "clients.x.key_sha256: expected the SHA-256 of the secret");
    assert_contains(errors, "is not a hash");
    assert_lacks(errors, HASH_A);
    free(errors);
    /* One hash, one client: compared as bytes, so the case of the hex does not matter. */
    expect_error(
        WITH_CLIENTS("\"a\": {" KEY_A "}, \"b\": {\"key_sha256\": "
                     "\"0123456789ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef\"}"),
        "clients.b.key_sha256: the same as clients.a's: each client needs its own secret");
}

static void test_gateway_cert_subject_errors(void **state)
{
    char *warnings = NULL;
    struct conf *conf;

    (void)state;
    expect_error(ONE_CLIENT("\"cert_subject\": \"CN = ci, O = Example\""),
                 "clients.x.cert_subject: expected an RFC 2253 subject such as "
                 "\"CN=release-bot,O=Example\"");
    expect_error(ONE_CLIENT("\"cert_subject\": \"CN = ci, O = Example\""),
                 "not OpenSSL's default form");
    expect_error(ONE_CLIENT("\"cert_subject\": \"/CN=ci/O=Example\""),
                 "not the slash-separated form");
    expect_error(ONE_CLIENT("\"cert_subject\": \"subject=CN=ci\""), "without \"subject=\"");
    expect_error(ONE_CLIENT("\"cert_subject\": \"ci-runner\""), "ATTRIBUTE=value");
    expect_error(ONE_CLIENT("\"cert_subject\": \"\""),
                 "clients.x.cert_subject: expected a non-empty string");
    expect_error("{\"listen\": [" TLS_LISTEN "], " CREDS ", \"clients\": {\"a\": "
                 "{\"cert_subject\": \"CN=ci,O=Example\"}, \"b\": {\"cert_subject\": "
                 "\"CN=ci,O=Example\"}}}",
                 "clients.b.cert_subject: the same as clients.a's: a certificate identifies one "
                 "client");
    /* No listener verifies client certificates: the subject can never be presented. */
    conf = load_ok_w(ONE_CLIENT("\"cert_subject\": \"CN=ci,O=Example\""), &warnings);
    assert_contains(warnings, "clients.x.cert_subject: no listener verifies client certificates");
    conf_free(conf);
    free(warnings);
}

static void test_gateway_allow_errors(void **state)
{
    (void)state;
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": {}"),
                 "clients.x.allow: expected an array of rules");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": []"),
                 "clients.x.allow: expected at least one rule (leave \"allow\" out");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [1]"), "clients.x.allow[0]: expected an object");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{}]"),
                 "clients.x.allow[0]: expected \"methods\", \"path_prefix\" or both");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{\"method\": [\"GET\"]}]"),
                 "clients.x.allow[0].method: unknown key (did you mean \"methods\"?)");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{\"methods\": []}]"),
                 "clients.x.allow[0].methods: expected at least one method");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{\"methods\": \"GET\"}]"),
                 "clients.x.allow[0].methods: expected an array of HTTP methods");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{\"methods\": [\"GET\", \"GE T\"]}]"),
                 "clients.x.allow[0].methods[1]: expected an HTTP method such as GET or HEAD "
                 "(got \"GE T\")");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{\"methods\": [\"\"]}]"),
                 "clients.x.allow[0].methods[0]: expected a non-empty string");
    expect_error(ONE_CLIENT(KEY_A ", \"allow\": [{\"path_prefix\": \"v1/\"}]"),
                 "clients.x.allow[0].path_prefix: must start with '/'");
    expect_error(ONE_CLIENT(KEY_A ", \"credentials\": [\"nope\"]"),
                 "clients.x.credentials[0]: no credential named \"nope\"");
    expect_error(ONE_CLIENT(KEY_A ", \"credentials\": []"),
                 "clients.x.credentials: expected at least one credential name");
    expect_error(ONE_CLIENT(KEY_A ", \"credentials\": \"asc\""),
                 "clients.x.credentials: expected an array of strings");
    expect_error(ONE_CLIENT(KEY_A ", \"credentials\": [\"asc\", \"asc\"]"),
                 "clients.x.credentials[1]: \"asc\" is listed twice");
}

static void test_gateway_cidr_rate_errors(void **state)
{
    (void)state;
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"10.1.2.3/16\"]"),
                 "clients.x.allow_cidrs[0]: 10.1.2.3/16: host bits set; did you mean "
                 "10.1.0.0/16?");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"2001:db8::1/32\"]"),
                 "clients.x.allow_cidrs[0]: 2001:db8::1/32: host bits set; did you mean "
                 "2001:db8::/32?");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"10.1.0.0/33\"]"),
                 "clients.x.allow_cidrs[0]: bad prefix length after '/' (expected 0 to 32");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"::/129\"]"), "expected 0 to 128");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"10.0.0.0/\"]"), "bad prefix length");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"10.0.0.0/+8\"]"), "bad prefix length");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"10.1.0\"]"),
                 "clients.x.allow_cidrs[0]: expected an IPv4 or IPv6 address or network");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"office\"]"),
                 "expected an IPv4 or IPv6 address or network");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": []"),
                 "clients.x.allow_cidrs: expected at least one network");
    expect_error(ONE_CLIENT(KEY_A ", \"allow_cidrs\": \"10.0.0.0/8\""),
                 "clients.x.allow_cidrs: expected an array of networks");
    conf_free(load_ok(ONE_CLIENT(KEY_A ", \"allow_cidrs\": [\"0.0.0.0/0\", \"::/0\"]")));

    expect_error(ONE_CLIENT(KEY_A ", \"rate\": 5"), "clients.x.rate: expected an object");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"burst\": 5}"),
                 "clients.x.rate.per_second: required");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"per_second\": 0}"),
                 "clients.x.rate.per_second: must be more than 0");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"per_second\": -2}"),
                 "clients.x.rate.per_second: must be more than 0");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"per_second\": 2000000}"),
                 "clients.x.rate.per_second: must be at most 1000000");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"per_second\": \"5\"}"),
                 "clients.x.rate.per_second: expected a number");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"per_second\": 5, \"burst\": 0.5}"),
                 "clients.x.rate.burst: must be at least 1");
    expect_error(ONE_CLIENT(KEY_A ", \"rate\": {\"per_second\": 5, \"per_minute\": 5}"),
                 "clients.x.rate.per_minute: unknown key");
}

static void test_gateway_many_errors(void **state)
{
    char *errors = load_fail(WITH_CLIENTS(
        "\"a\": {\"key_sha256\": \"abc\", \"allow_cidrs\": [\"10.0.0.1/8\"], \"rate\": {}}, "
        "\"b\": {\"credentials\": [\"nope\"], \"allow\": [{\"methods\": []}]}"));

    (void)state;
    assert_contains(errors, "clients.a.key_sha256: ");
    assert_contains(errors, "clients.a.allow_cidrs[0]: 10.0.0.1/8: host bits set");
    assert_contains(errors, "clients.a.rate.per_second: required");
    assert_contains(errors, "clients.b: no identity");
    assert_contains(errors, "clients.b.credentials[0]: no credential named \"nope\"");
    assert_contains(errors, "clients.b.allow[0].methods: expected at least one method");
    assert_int_equal(count_lines(errors), 6);
    free(errors);
}

static void test_gateway_env_overrides(void **state)
{
    const char *const yes[] = {"WEATHERKIT_KEY_ID",
                               "ABC123DEFG",
                               "WEATHERKIT_TEAM_ID",
                               "DEF123GHIJ",
                               "WEATHERKIT_SERVICE_ID",
                               "com.example.w",
                               "WEATHERKIT_KEY",
                               pem,
                               "APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS",
                               " Yes\n",
                               NULL};
    const char *const bad[] = {"WEATHERKIT_KEY_ID",
                               "ABC123DEFG",
                               "WEATHERKIT_TEAM_ID",
                               "DEF123GHIJ",
                               "WEATHERKIT_SERVICE_ID",
                               "com.example.w",
                               "WEATHERKIT_KEY",
                               pem,
                               "APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS",
                               "maybe",
                               NULL};
    char path[256], *json, *errors = NULL, *warnings = NULL;
    struct conf *conf = NULL;
    FILE *f;

    (void)state;
    assert_int_equal(load_env(yes, &conf, &errors), 0);
    assert_int_equal(conf->allow_anonymous_clients, 1);
    assert_int_equal(conf->quota_reserve[0], -1); /* parallel to credentials here too */
    conf_free(conf);
    assert_int_equal(load_env(bad, &conf, &errors), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS: expected true or false");
    free(errors);

    /* Over a file, through conf_load (the command line's path). */
    snprintf(path, sizeof path, "%s/gateway.json", tmpdir);
    json = subst("{\"listen\": [\"127.0.0.1:0\", " TLS_LISTEN "], \"allow_anonymous_clients\": "
                 "true, " CREDS "}");
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    free(json);
    unsetenv("APPLE_AUTH_PROXY_LISTEN");
    assert_int_equal(setenv("APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS", "false", 1), 0);
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), 0);
    assert_int_equal(conf->allow_anonymous_clients, 0);
    conf_free(conf);
    free(warnings);
    assert_int_equal(setenv("APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS", "", 1), 0); /* unset */
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), 0);
    assert_int_equal(conf->allow_anonymous_clients, 1);
    conf_free(conf);
    free(warnings);
    unsetenv("APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS");

    /* APPLE_AUTH_PROXY_LISTEN keeps the TLS settings of the address it names again... */
    assert_int_equal(setenv("APPLE_AUTH_PROXY_LISTEN", "0.0.0.0:8443,127.0.0.1:9", 1), 0);
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), 0);
    assert_int_equal(conf->nlisten, 2);
    assert_string_equal(conf->listen[0].text, "0.0.0.0:8443");
    assert_string_equal(conf->listen[0].tls_cert_file, capath);
    assert_string_equal(conf->listen[0].tls_key_file, keypath);
    assert_string_equal(conf->listen[0].tls_client_ca_file, capath);
    assert_null(conf->listen[1].tls_cert_file);
    conf_free(conf);
    free(warnings);
    /* ... and refuses to turn a TLS listener into plain HTTP by leaving it out. */
    assert_int_equal(setenv("APPLE_AUTH_PROXY_LISTEN", "0.0.0.0:8080", 1), 0);
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_LISTEN: replaces listen[1] (0.0.0.0:8443), a TLS "
                            "listener, with plain HTTP");
    free(errors);
    free(warnings);
    unsetenv("APPLE_AUTH_PROXY_LISTEN");
    unlink(path);
}

/* Loads a template and runs the exposure check on it, with text already in both buffers. */
static int exposure(const char *tmpl, char **errors, char **warnings)
{
    struct conf *conf = load_ok(tmpl);
    int rc;

    *errors = strdup("earlier: error\n");
    *warnings = strdup("earlier: warning"); /* no final newline: one is added */
    assert_non_null(*errors);
    assert_non_null(*warnings);
    rc = conf_check_exposure(conf, errors, warnings);
    conf_free(conf);
    return rc;
}

static void test_exposure(void **state)
{
    char *errors = NULL, *warnings = NULL;
    struct conf *conf;

    (void)state;
    /* Loopback only: nothing to say. */
    assert_int_equal(exposure("{\"listen\": [\"127.0.0.1:1\", \"localhost:2\", \"127.0.0.2:3\", "
                              "\"[::1]:4\", \"LocalHost:5\", \"127.255.255.254:6\"], " CREDS "}",
                              &errors, &warnings),
                     0);
    assert_string_equal(errors, "earlier: error\n");
    assert_string_equal(warnings, "earlier: warning");
    free(errors);
    free(warnings);
    conf = load_ok("{" CREDS "}");
    errors = warnings = NULL;
    assert_int_equal(conf_check_exposure(conf, &errors, &warnings), 0);
    assert_null(errors);
    assert_null(warnings);
    conf_free(conf);

    /* Reachable from elsewhere, no clients: one error per address. */
    assert_int_equal(exposure("{\"listen\": [\"127.0.0.1:1\", \"0.0.0.0:8080\", \"[::]:8080\", "
                              "\"proxy.example:80\", \"10.0.0.5:80\", \"128.0.0.1:80\"], " CREDS
                              "}",
                              &errors, &warnings),
                     -1);
    assert_starts(errors, "earlier: error\nlisten[1]: 0.0.0.0:8080 is not a loopback address and "
                          "no client identities are configured: add \"clients\" (see "
                          "docs/deployment.md, the gateway) or set \"allow_anonymous_clients\": "
                          "true to accept anyone who can reach it\n");
    assert_contains(errors, "listen[2]: [::]:8080 is not a loopback address");
    assert_contains(errors, "listen[3]: proxy.example:80 is not a loopback address");
    assert_contains(errors, "listen[4]: 10.0.0.5:80 is not a loopback address");
    assert_contains(errors, "listen[5]: 128.0.0.1:80 is not a loopback address");
    assert_lacks(errors, "listen[0]");
    assert_int_equal(count_lines(errors), 6);
    assert_string_equal(warnings, "earlier: warning");
    free(errors);
    free(warnings);

    /* With the opt-out: one warning, no error. */
    assert_int_equal(exposure("{\"listen\": [\"0.0.0.0:8080\"], \"allow_anonymous_clients\": "
                              "true, " CREDS "}",
                              &errors, &warnings),
                     0);
    assert_string_equal(errors, "earlier: error\n");
    assert_string_equal(warnings,
                        "earlier: warning\nlisten[0]: allow_anonymous_clients is true and no "
                        "client identities are configured: anyone who can reach 0.0.0.0:8080 can "
                        "use the configured Apple keys\n");
    free(errors);
    free(warnings);
    assert_int_equal(exposure("{\"listen\": [\"0.0.0.0:8080\", \"127.0.0.1:1\", \"[::]:8080\"], "
                              "\"allow_anonymous_clients\": true, " CREDS "}",
                              &errors, &warnings),
                     0);
    assert_contains(warnings, "\nlisten: allow_anonymous_clients is true and no client "
                              "identities are configured: anyone who can reach 0.0.0.0:8080, "
                              "[::]:8080 can use the configured Apple keys\n");
    assert_int_equal(count_lines(warnings), 2);
    free(errors);
    free(warnings);

    /* With a client: the gateway identifies everyone. */
    assert_int_equal(exposure("{\"listen\": [\"0.0.0.0:8080\"], " CREDS ", \"clients\": {\"a\": "
                              "{" KEY_A "}}}",
                              &errors, &warnings),
                     0);
    assert_string_equal(errors, "earlier: error\n");
    assert_string_equal(warnings, "earlier: warning");
    free(errors);
    free(warnings);

    /* After an override such as --listen, which is why the check is separate. */
    conf = load_ok("{" CREDS "}");
    conf_addr_deinit(&conf->listen[0]);
    assert_int_equal(conf_addr_parse("[::]:9000", &conf->listen[0], 1), 0);
    errors = warnings = NULL;
    assert_int_equal(conf_check_exposure(conf, &errors, &warnings), -1);
    assert_starts(errors, "listen[0]: [::]:9000 is not a loopback address");
    assert_null(warnings);
    free(errors);
    conf_free(conf);
}

/* ---- files ------------------------------------------------------------------------------------
 */

static void test_config_files(void **state)
{
    char path[256], *errors = NULL, *warnings = NULL, *json, *big;
    struct conf *conf = NULL;
    FILE *f;

    (void)state;
    snprintf(path, sizeof path, "%s/missing.json", tmpdir);
    assert_int_equal(conf_load_file(path, &conf, &errors, &warnings), -1);
    assert_contains(errors, path);
    assert_contains(errors, "No such file or directory");
    free(errors);
    free(warnings);

    assert_int_equal(conf_load_file(tmpdir, &conf, &errors, &warnings), -1);
    assert_contains(errors, "is a directory");
    free(errors);
    free(warnings);

    snprintf(path, sizeof path, "%s/big.json", tmpdir);
    big = malloc(1024 * 1024 + 2);
    assert_non_null(big);
    memset(big, ' ', 1024 * 1024 + 1);
    big[0] = '{';
    big[1024 * 1024] = '}';
    big[1024 * 1024 + 1] = '\0';
    write_file(path, big, 0600);
    free(big);
    assert_int_equal(conf_load_file(path, &conf, &errors, &warnings), -1);
    assert_contains(errors, "at most 1 MiB");
    free(errors);
    free(warnings);

    snprintf(path, sizeof path, "%s/good.json", tmpdir);
    json = subst("{" CREDS "}");
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    free(json);
    assert_int_equal(conf_load_file(path, &conf, &errors, &warnings), 0);
    assert_null(errors);
    assert_string_equal(conf->source, path);
    conf_free(conf);
    free(warnings);

    /* conf_load: the path, APPLE_AUTH_PROXY_LISTEN over it. */
    assert_int_equal(setenv("APPLE_AUTH_PROXY_LISTEN", "0.0.0.0:9000, [::]:9000", 1), 0);
    assert_int_equal(setenv("APPLE_AUTH_PROXY_WORKERS", "3", 1), 0);
    assert_int_equal(setenv("APPLE_AUTH_PROXY_ADMIN_LISTEN", "0.0.0.0:9902", 1), 0);
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), 0);
    assert_int_equal(conf->nlisten, 2);
    assert_string_equal(conf->listen[0].text, "0.0.0.0:9000");
    assert_string_equal(conf->listen[1].host, "::");
    assert_int_equal(conf->workers, 3);
    assert_string_equal(conf->admin_listen.text, "0.0.0.0:9902");
    assert_int_equal(conf->admin_listen.port, 9902);
    conf_free(conf);
    free(warnings);
    /* APPLE_AUTH_PROXY_ADMIN_LISTEN=off turns the admin listener off; garbage is an error. */
    assert_int_equal(setenv("APPLE_AUTH_PROXY_ADMIN_LISTEN", "off", 1), 0);
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), 0);
    assert_null(conf->admin_listen.text);
    conf_free(conf);
    free(warnings);
    assert_int_equal(setenv("APPLE_AUTH_PROXY_ADMIN_LISTEN", "nonsense", 1), 0);
    assert_int_equal(conf_load(path, &conf, &errors, &warnings), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_ADMIN_LISTEN: ");
    free(errors);
    free(warnings);
    unsetenv("APPLE_AUTH_PROXY_ADMIN_LISTEN");
    /* ... and $APPLE_AUTH_PROXY_CONFIG when there is no path. */
    assert_int_equal(setenv("APPLE_AUTH_PROXY_CONFIG", path, 1), 0);
    assert_int_equal(setenv("APPLE_AUTH_PROXY_LISTEN", "localhost", 1), 0);
    assert_int_equal(conf_load(NULL, &conf, &errors, &warnings), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_LISTEN: expected host:port");
    free(errors);
    free(warnings);
    unsetenv("APPLE_AUTH_PROXY_LISTEN");
    unsetenv("APPLE_AUTH_PROXY_WORKERS");
    assert_int_equal(conf_load(NULL, &conf, &errors, &warnings), 0);
    assert_string_equal(conf->source, path);
    conf_free(conf);
    free(warnings);
    unsetenv("APPLE_AUTH_PROXY_CONFIG");
    unlink(path);
    snprintf(path, sizeof path, "%s/big.json", tmpdir);
    unlink(path);
}

/* ---- environment-only mode --------------------------------------------------------------------
 */

/* The exchanged profiles: client_id, token_address, token_ca_file, the OAuth scope picking the
 * default host, and what other profiles may not have. */
static void test_exchanged_credentials(void **state)
{
    struct conf *conf = load_ok(
        "{\"credentials\": {\"biz\": {\"profile\": \"apple-business\", \"key_id\": "
        "\"d136aa66-0c3b-4bd4-9892-c20e8db024ab\", \"client_id\": "
        "\"SCHOOLAPI.9703f56c-10ce-4876-8f59-e78e5e23a152\", \"scope\": [\"school.api\"], "
        "\"token_address\": \"127.0.0.1:8443\", \"token_ca_file\": \"@CA@\", "
        "\"private_key_file\": \"@KEY@\"}}}");

    (void)state;
    assert_string_equal(conf->credentials[0].client_id,
                        "SCHOOLAPI.9703f56c-10ce-4876-8f59-e78e5e23a152");
    assert_string_equal(conf->credentials[0].token_address_host, "127.0.0.1");
    assert_int_equal(conf->credentials[0].token_address_port, 8443);
    assert_string_equal(conf->credentials[0].token_ca_file, capath);
    assert_int_equal(conf->nroutes, 1);
    assert_string_equal(conf->routes[0].upstream_host, "api-school.apple.com");
    conf_free(conf);

    conf = load_ok("{\"credentials\": {\"m\": {\"profile\": \"maps\", \"key_id\": "
                   "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"origin\": "
                   "[\"https://maps.example.com\"], \"private_key_file\": \"@KEY@\"}}}");
    assert_string_equal(conf->routes[0].upstream_host, "maps-api.apple.com");
    /* A maps credential's ten-minute signed token does not cap the refresh margin. */
    assert_int_equal(conf->token_refresh_margin, 300);
    conf_free(conf);

    expect_error("{\"credentials\": {\"m\": {\"profile\": \"maps\", \"key_id\": "
                 "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"token_address\": \"nope\", "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.m.token_address:");
    expect_error("{\"credentials\": {\"m\": {\"profile\": \"maps\", \"key_id\": "
                 "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"token_ca_file\": "
                 "\"@DIR@/missing.pem\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.m.token_ca_file: ");
    expect_error("{\"credentials\": {" ASC_CRED_TOKEN_ADDRESS "}}",
                 "credentials.asc.token_address: only the maps and apple-business profiles");
    expect_error("{\"credentials\": {\"b\": {\"profile\": \"apple-business\", \"key_id\": "
                 "\"ABC123DEFG\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.b.client_id: required by the apple-business profile");
    expect_error("{\"credentials\": {\"b\": {\"profile\": \"apple-business\", \"key_id\": "
                 "\"ABC123DEFG\", \"client_id\": \"BUSINESSAPI.x\", \"scope\": "
                 "[\"GET /v1/apps\"], \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.b.scope: expected [\"business.api\"]");
    expect_error("{\"credentials\": {" ASC_CRED "}, \"routes\": [{\"path_prefix\": \"/\", "
                 "\"upstream\": \"https://api.appstoreconnect.apple.com\", \"credential\": "
                 "\"asc\"}], \"x\": {\"profile\": \"devicecheck\"}}",
                 "x: unknown key");
    expect_error("{\"credentials\": {\"a\": {\"profile\": \"app-store-connect\", "
                 "\"key_id\": \"d136aa66-0c3b-4bd4-9892-c20e8db024ab\", "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.a.key_id: expected a 10-character Key ID");
}

static void test_env_maps_and_business(void **state)
{
    const char *const maps[] = {"APPLE_MAPS_KEY_ID", "ABC123DEFG", "APPLE_MAPS_TEAM_ID",
                                "DEF123GHIJ", "APPLE_MAPS_KEY", pem, NULL};
    const char *const biz[] = {"APPLE_BUSINESS_CLIENT_ID", "BUSINESSAPI.9703f56c",
                               "APPLE_BUSINESS_KEY_ID", "d136aa66-0c3b-4bd4-9892-c20e8db024ab",
                               "APPLE_BUSINESS_KEY_FILEPATH", keypath, "APPLE_BUSINESS_SCOPE",
                               "school.api\n", NULL};
    const char *const partial[] = {"APPLE_BUSINESS_CLIENT_ID", "BUSINESSAPI.9703f56c",
                                   "APPLE_BUSINESS_KEY_FILEPATH", keypath, NULL};
    const char *const bad[] = {"APPLE_BUSINESS_CLIENT_ID", "BUSINESSAPI.9703f56c",
                               "APPLE_BUSINESS_KEY_ID", "d136aa66-0c3b-4bd4-9892-c20e8db024ab",
                               "APPLE_BUSINESS_KEY_FILEPATH", keypath, "APPLE_BUSINESS_SCOPE",
                               "maps.api", NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(maps, &conf, &errors), 0);
    assert_string_equal(conf->credentials[0].name, "maps");
    assert_int_equal(conf->credentials[0].profile, PROFILE_MAPS);
    assert_string_equal(conf->credentials[0].team_id, "DEF123GHIJ");
    assert_string_equal(conf->routes[0].upstream_host, "maps-api.apple.com");
    conf_free(conf);
    conf = NULL;
    assert_int_equal(load_env(biz, &conf, &errors), 0);
    assert_string_equal(conf->credentials[0].name, "business");
    assert_string_equal(conf->credentials[0].client_id, "BUSINESSAPI.9703f56c");
    assert_string_equal(credential_oauth_scope(&conf->credentials[0]), "school.api");
    assert_string_equal(conf->routes[0].upstream_host, "api-school.apple.com");
    conf_free(conf);
    conf = NULL;
    assert_int_not_equal(load_env(partial, &conf, &errors), 0);
    assert_contains(errors, "APPLE_BUSINESS_KEY_ID: not set, but other APPLE_BUSINESS_* "
                            "variables are; the Apple Business Manager API needs");
    free(errors);
    errors = NULL;
    assert_int_not_equal(load_env(bad, &conf, &errors), 0);
    assert_contains(errors, "APPLE_BUSINESS_SCOPE: expected business.api (Apple Business "
                            "Manager) or school.api (Apple School Manager) (got \"maps.api\")");
    free(errors);
}

static void test_env_asc(void **state)
{
    const char *const env[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID",
                               "2X9R4HXF34",
                               "APP_STORE_CONNECT_API_KEY_ISSUER_ID",
                               ISSUER,
                               "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH",
                               keypath,
                               NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_null(errors);
    assert_string_equal(conf->source, "environment");
    assert_int_equal(conf->ncredentials, 1);
    assert_string_equal(conf->credentials[0].name, "asc");
    assert_int_equal(conf->credentials[0].profile, PROFILE_APP_STORE_CONNECT);
    assert_string_equal(conf->credentials[0].key_id, "2X9R4HXF34");
    assert_string_equal(conf->credentials[0].issuer_id, ISSUER);
    assert_non_null(conf->credentials[0].key);
    assert_int_equal(conf->nroutes, 1);
    assert_string_equal(conf->routes[0].path_prefix, "/");
    assert_string_equal(conf->routes[0].upstream_host, "api.appstoreconnect.apple.com");
    assert_string_equal(conf->listen[0].text, "127.0.0.1:8080");
    conf_free(conf);
}

static void test_env_asc_individual_base64(void **state)
{
    const char *const env[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID",
                               "2X9R4HXF34\n",
                               "APP_STORE_CONNECT_API_KEY_KEY",
                               pem_b64,
                               "APP_STORE_CONNECT_API_KEY_IS_KEY_CONTENT_BASE64",
                               "true",
                               NULL};
    const char *const pem_env[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID", "2X9R4HXF34",
                                   "APP_STORE_CONNECT_API_KEY_KEY", pem, NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_null(conf->credentials[0].issuer_id); /* an individual key: "sub": "user" */
    assert_string_equal(conf->credentials[0].key_id, "2X9R4HXF34");
    assert_non_null(conf->credentials[0].key);
    conf_free(conf);
    assert_int_equal(load_env(pem_env, &conf, &errors), 0);
    assert_non_null(conf->credentials[0].key);
    conf_free(conf);
}

static void test_env_weatherkit(void **state)
{
    const char *const env[] = {"WEATHERKIT_KEY_ID",
                               "ABC123DEFG",
                               "WEATHERKIT_TEAM_ID",
                               "DEF123GHIJ",
                               "WEATHERKIT_SERVICE_ID",
                               "com.example.weather",
                               "WEATHERKIT_KEY",
                               pem_b64,
                               NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_int_equal(conf->ncredentials, 1);
    assert_string_equal(conf->credentials[0].name, "weatherkit");
    assert_int_equal(conf->credentials[0].profile, PROFILE_WEATHERKIT);
    assert_string_equal(conf->credentials[0].team_id, "DEF123GHIJ");
    assert_string_equal(conf->credentials[0].service_id, "com.example.weather");
    assert_int_equal(conf->nroutes, 1);
    assert_string_equal(conf->routes[0].path_prefix, "/api/v1/");
    assert_string_equal(conf->routes[0].upstream, "https://weatherkit.apple.com");
    conf_free(conf);
}

/* APNs from the environment: the apns credential, its default route to production, and
 * APNS_ENVIRONMENT=sandbox pointing that route at the sandbox host. */
static void test_env_apns(void **state)
{
    const char *env[] = {"APNS_KEY_ID", "ABC123DEFG", "APNS_TEAM_ID", "DEF123GHIJ",
                         "APNS_KEY_FILEPATH", keypath, NULL, NULL, NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_int_equal(conf->ncredentials, 1);
    assert_string_equal(conf->credentials[0].name, "apns");
    assert_int_equal(conf->credentials[0].profile, PROFILE_APNS);
    assert_string_equal(conf->credentials[0].key_id, "ABC123DEFG");
    assert_string_equal(conf->credentials[0].team_id, "DEF123GHIJ");
    assert_int_equal(conf->nroutes, 1);
    assert_string_equal(conf->routes[0].path_prefix, "/3/device/");
    assert_string_equal(conf->routes[0].upstream, "https://api.push.apple.com");
    assert_string_equal(conf->routes[0].upstream_host, "api.push.apple.com");
    conf_free(conf);

    env[6] = "APNS_ENVIRONMENT";
    env[7] = " sandbox\n";
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_string_equal(conf->routes[0].upstream, "https://api.sandbox.push.apple.com");
    assert_string_equal(conf->routes[0].upstream_host, "api.sandbox.push.apple.com");
    assert_int_equal(conf->routes[0].upstream_port, 443);
    conf_free(conf);

    env[7] = "staging";
    assert_int_equal(load_env(env, &conf, &errors), -1);
    assert_contains(errors, "APNS_ENVIRONMENT: expected production or sandbox (got \"staging\")");
    free(errors);

    env[2] = "APNS_KEY";
    env[3] = pem;
    env[7] = "production";
    assert_int_equal(load_env(env, &conf, &errors), -1);
    assert_contains(errors, "APNS_TEAM_ID: not set, but other APNS_* variables are");
    assert_contains(errors, "APNS_KEY: set together with APNS_KEY_FILEPATH; set only one");
    free(errors);
}

/* "upstream_protocol": h2 by default for APNs' two hosts only; either value can be forced;
 * anything else is refused with the path. */
static void test_upstream_protocol(void **state)
{
    struct conf *conf = load_ok(
        "{\"credentials\": {\"push\": {\"profile\": \"apns\", \"key_id\": \"ABC123DEFG\", "
        "\"team_id\": \"DEF123GHIJ\", \"private_key_file\": \"@KEY@\"}, " ASC_CRED "}, "
        "\"routes\": [{\"path_prefix\": \"/3/device/\", \"upstream\": "
        "\"https://api.push.apple.com\", \"credential\": \"push\"}, "
        "{\"path_prefix\": \"/sandbox/\", \"upstream\": \"https://API.Sandbox.Push.Apple.com\", "
        "\"credential\": \"push\"}, "
        "{\"path_prefix\": \"/h1/\", \"upstream\": \"https://api.push.apple.com\", "
        "\"credential\": \"push\", \"upstream_protocol\": \"http/1.1\"}, "
        "{\"path_prefix\": \"/h2/\", \"upstream\": \"https://api.appstoreconnect.apple.com\", "
        "\"credential\": \"asc\", \"upstream_protocol\": \"h2\"}, " ROUTE_ASC "]}");

    (void)state;
    assert_int_equal(conf->nroutes, 5);
    assert_int_equal(conf->routes[0].upstream_h2, 1);
    assert_int_equal(conf->routes[1].upstream_h2, 1);
    assert_int_equal(conf->routes[2].upstream_h2, 0);
    assert_int_equal(conf->routes[3].upstream_h2, 1);
    assert_int_equal(conf->routes[4].upstream_h2, 0);
    conf_free(conf);
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                 "\"upstream_protocol\": \"h3\"}]}",
                 "routes[0].upstream_protocol: expected \"h2\" or \"http/1.1\" (got \"h3\")");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                 "\"upstream_protocol\": \"H2\"}]}",
                 "routes[0].upstream_protocol: expected \"h2\" or \"http/1.1\" (got \"H2\")");
    expect_error("{" CREDS ", \"routes\": [{\"path_prefix\": \"/\", \"upstream\": "
                 "\"https://api.appstoreconnect.apple.com\", \"credential\": \"asc\", "
                 "\"upstream_protocol\": 2}]}",
                 "routes[0].upstream_protocol: expected a string");
}

/* An APNs token has no exp: a lifetime that would end before the 50-minute replacement is
 * refused. */
static void test_apns_credential(void **state)
{
    struct conf *conf = load_ok("{\"credentials\": {\"push\": {\"profile\": \"apns\", "
                                "\"key_id\": \"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", "
                                "\"private_key_file\": \"@KEY@\"}}}");

    (void)state;
    assert_int_equal(conf->nroutes, 1);
    assert_string_equal(conf->routes[0].path_prefix, "/3/device/");
    assert_string_equal(conf->routes[0].upstream_host, "api.push.apple.com");
    conf_free(conf);
    expect_error("{\"credentials\": {\"push\": {\"profile\": \"apns\", \"key_id\": "
                 "\"ABC123DEFG\", \"private_key_file\": \"@KEY@\"}}}",
                 "credentials.push.team_id: required by the apns profile");
    expect_error("{\"credentials\": {\"push\": {\"profile\": \"apns\", \"key_id\": "
                 "\"ABC123DEFG\", \"team_id\": \"DEF123GHIJ\", \"token_lifetime\": 1800, "
                 "\"private_key_file\": \"@KEY@\"}}}",
                 "credentials.push.token_lifetime: 1800 is too short for APNs");
}

static void test_env_both(void **state)
{
    const char *const env[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID",
                               "2X9R4HXF34",
                               "APP_STORE_CONNECT_API_KEY_ISSUER_ID",
                               ISSUER,
                               "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH",
                               keypath,
                               "WEATHERKIT_KEY_ID",
                               "ABC123DEFG",
                               "WEATHERKIT_TEAM_ID",
                               "DEF123GHIJ",
                               "WEATHERKIT_SERVICE_ID",
                               "com.example.weather",
                               "WEATHERKIT_KEY_FILEPATH",
                               wkeypath,
                               "APPLE_AUTH_PROXY_LISTEN",
                               "0.0.0.0:8080,[::]:8080",
                               "APPLE_AUTH_PROXY_WORKERS",
                               "2",
                               NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(env, &conf, &errors), 0);
    assert_int_equal(conf->ncredentials, 2);
    assert_int_equal(conf->nroutes, 2);
    assert_string_equal(conf->routes[0].path_prefix, "/api/v1/");
    assert_string_equal(conf->credentials[conf->routes[0].credential_index].name, "weatherkit");
    assert_string_equal(conf->routes[1].path_prefix, "/");
    assert_string_equal(conf->credentials[conf->routes[1].credential_index].name, "asc");
    assert_int_equal(conf->nlisten, 2);
    assert_string_equal(conf->listen[0].text, "0.0.0.0:8080");
    assert_string_equal(conf->listen[1].text, "[::]:8080");
    assert_int_equal(conf->workers, 2);
    conf_free(conf);
}

static void test_env_partial(void **state)
{
    const char *const wk[] = {"WEATHERKIT_KEY_ID", "ABC123DEFG", NULL};
    const char *const asc[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID", "2X9R4HXF34",
                               "APP_STORE_CONNECT_API_KEY_ISSUER_ID", ISSUER, NULL};
    const char *const both[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID",
                                "2X9R4HXF34",
                                "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH",
                                keypath,
                                "APP_STORE_CONNECT_API_KEY_KEY",
                                pem,
                                NULL};
    const char *const badid[] = {"APP_STORE_CONNECT_API_KEY_KEY_ID",
                                 "nope",
                                 "APP_STORE_CONNECT_API_KEY_ISSUER_ID",
                                 "nope",
                                 "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH",
                                 keypath,
                                 NULL};
    struct conf *conf = (struct conf *)1;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(wk, &conf, &errors), -1);
    assert_null(conf);
    assert_contains(errors, "WEATHERKIT_TEAM_ID: not set");
    assert_contains(errors, "WEATHERKIT_SERVICE_ID: not set");
    assert_contains(errors, "WEATHERKIT_KEY_FILEPATH: not set (nor WEATHERKIT_KEY)");
    assert_lacks(errors, "no configuration");
    free(errors);
    assert_int_equal(load_env(asc, &conf, &errors), -1);
    assert_contains(errors, "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH: not set (nor "
                            "APP_STORE_CONNECT_API_KEY_KEY)");
    free(errors);
    assert_int_equal(load_env(both, &conf, &errors), -1);
    assert_contains(errors, "APP_STORE_CONNECT_API_KEY_KEY: set together with "
                            "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH");
    free(errors);
    assert_int_equal(load_env(badid, &conf, &errors), -1);
    assert_contains(errors, "APP_STORE_CONNECT_API_KEY_KEY_ID: expected a 10-character string");
    assert_contains(errors, "APP_STORE_CONNECT_API_KEY_ISSUER_ID: expected a UUID");
    assert_int_equal(count_lines(errors), 2);
    free(errors);
}

static void test_env_empty(void **state)
{
    const char *const none[] = {"APPLE_AUTH_PROXY_LISTEN", "0.0.0.0:1", NULL};
    const char *const badlisten[] = {"WEATHERKIT_KEY_ID",
                                     "ABC123DEFG",
                                     "WEATHERKIT_TEAM_ID",
                                     "DEF123GHIJ",
                                     "WEATHERKIT_SERVICE_ID",
                                     "com.example.w",
                                     "WEATHERKIT_KEY",
                                     pem,
                                     "APPLE_AUTH_PROXY_LISTEN",
                                     "127.0.0.1:1,,",
                                     "APPLE_AUTH_PROXY_WORKERS",
                                     "many",
                                     NULL};
    struct conf *conf = NULL;
    char *errors = NULL;

    (void)state;
    assert_int_equal(load_env(none, &conf, &errors), -1);
    assert_non_null(errors);
    assert_starts(errors, "no configuration: pass --config FILE, set APPLE_AUTH_PROXY_CONFIG, "
                          "or set APP_STORE_CONNECT_API_KEY_KEY_ID");
    assert_contains(errors, "WEATHERKIT_KEY_ID");
    free(errors);
    assert_int_equal(load_env(badlisten, &conf, &errors), -1);
    assert_contains(errors, "APPLE_AUTH_PROXY_LISTEN: empty address");
    assert_contains(errors, "APPLE_AUTH_PROXY_WORKERS: expected an integer from 0 to 256");
    free(errors);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_default_routes),
        cmocka_unit_test(test_default_routes_conflict),
        cmocka_unit_test(test_env_apns),
        cmocka_unit_test(test_apns_credential),
        cmocka_unit_test(test_upstream_protocol),
        cmocka_unit_test(test_explicit_routes),
        cmocka_unit_test(test_values_set),
        cmocka_unit_test(test_access_log),
        cmocka_unit_test(test_intercept),
        cmocka_unit_test(test_shared_state),
        cmocka_unit_test(test_server_names_and_origins),
        cmocka_unit_test(test_env_server_names),
        cmocka_unit_test(test_listen_forms),
        cmocka_unit_test(test_addr_parse),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_key_sources),
        cmocka_unit_test(test_key_file_mode_warning),
        cmocka_unit_test(test_refresh_margin_capped),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_missing_credentials),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_route_missing_credential),
        cmocka_unit_test(test_bad_upstreams),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_lifetime_over_max),
        cmocka_unit_test(test_private_key_missing_file),
        cmocka_unit_test(test_private_key_unreadable),
        cmocka_unit_test(test_private_key_text_not_echoed),
        cmocka_unit_test(test_two_key_sources),
        cmocka_unit_test(test_key_env_missing),
        cmocka_unit_test(test_bad_listen),
        cmocka_unit_test(test_bad_limits),
        cmocka_unit_test(test_bad_routes),
        cmocka_unit_test(test_route_order_warns),
        cmocka_unit_test(test_route_host_mismatch_warns),
        cmocka_unit_test(test_json_syntax),
        cmocka_unit_test(test_multiple_errors),
        cmocka_unit_test(test_many_errors_capped),
        cmocka_unit_test(test_config_files),
        cmocka_unit_test(test_exchanged_credentials),
        cmocka_unit_test(test_env_maps_and_business),
        cmocka_unit_test(test_env_asc),
        cmocka_unit_test(test_env_asc_individual_base64),
        cmocka_unit_test(test_env_weatherkit),
        cmocka_unit_test(test_env_both),
        cmocka_unit_test(test_env_partial),
        cmocka_unit_test(test_env_empty),
        cmocka_unit_test(test_gateway_config),
        cmocka_unit_test(test_rewrite_links),
        cmocka_unit_test(test_gateway_listen_errors),
        cmocka_unit_test(test_gateway_credential_route_errors),
        cmocka_unit_test(test_gateway_client_errors),
        cmocka_unit_test(test_gateway_key_sha256_errors),
        cmocka_unit_test(test_gateway_cert_subject_errors),
        cmocka_unit_test(test_gateway_allow_errors),
        cmocka_unit_test(test_gateway_cidr_rate_errors),
        cmocka_unit_test(test_gateway_many_errors),
        cmocka_unit_test(test_gateway_env_overrides),
        cmocka_unit_test(test_exposure),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
