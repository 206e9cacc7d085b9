/* Unit tests for proxy/intercept: the CA made once and reused, leaves cached per host and
 * renewed ahead of expiry, and the cache shared safely by threads. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509v3.h>

#include "proxy/intercept.h"

#define THREADS 8
#define CALLS 50

static char dir[256];
static const char *const hosts[] = {"api.appstoreconnect.apple.com", "weatherkit.apple.com",
                                    "10.0.0.1", "api.appstoreconnect.apple.com"};

static int setup(void **state)
{
    char tmpl[] = "/tmp/aap-intercept-XXXXXX";
    (void)state;
    if (mkdtemp(tmpl) == NULL)
        return -1;
    snprintf(dir, sizeof(dir), "%s/ca", tmpl);
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%.*s'", (int)(strrchr(dir, '/') - dir), dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct intercept *open_ca(void)
{
    char err[512], warn[512];
    struct intercept *ic = intercept_new(dir, hosts, 4, err, sizeof(err), warn, sizeof(warn));
    if (ic == NULL)
        fail_msg("intercept_new: %s", err);
    assert_string_equal(warn, "");
    return ic;
}

/* The leaf an SSL presents, as its serial number (hex, malloc'd). */
static char *leaf_serial(SSL *ssl)
{
    X509 *x = SSL_get_certificate(ssl);
    BIGNUM *bn;
    char *hex;
    assert_non_null(x);
    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    hex = BN_bn2hex(bn);
    BN_free(bn);
    return hex;
}

static void test_ca_made_once(void **state)
{
    struct intercept *a, *b;
    struct stat st;
    char path[300];
    (void)state;
    a = open_ca();
    b = open_ca();
    assert_int_equal(X509_cmp(intercept_ca_cert(a), intercept_ca_cert(b)), 0);
    snprintf(path, sizeof(path), "%s/ca.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* IP literals are not intercepted; names are, case-insensitively. */
    assert_true(intercept_allows(a, "WeatherKit.apple.com", 20));
    assert_false(intercept_allows(a, "10.0.0.1", 8));
    assert_false(intercept_allows(a, "apple.com", 9));
    assert_false(intercept_allows(a, "api.appstoreconnect.apple.co", 28));
    intercept_free(a);
    intercept_free(b);
}

static void test_leaf_cached_and_renewed(void **state)
{
    struct intercept *ic = open_ca();
    time_t now = time(NULL);
    char err[256], *s1, *s2, *s3, *s4;
    SSL *a, *b, *c, *d;
    (void)state;
    a = intercept_ssl_new_at(ic, "api.appstoreconnect.apple.com", 29, now, err, sizeof(err));
    b = intercept_ssl_new_at(ic, "api.appstoreconnect.apple.com", 29,
                             now + INTERCEPT_LEAF_LIFETIME - INTERCEPT_LEAF_RENEW - 60, err,
                             sizeof(err));
    c = intercept_ssl_new_at(ic, "api.appstoreconnect.apple.com", 29,
                             now + INTERCEPT_LEAF_LIFETIME - INTERCEPT_LEAF_RENEW, err,
                             sizeof(err));
    d = intercept_ssl_new_at(ic, "weatherkit.apple.com", 20, now, err, sizeof(err));
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(d);
    s1 = leaf_serial(a);
    s2 = leaf_serial(b);
    s3 = leaf_serial(c);
    s4 = leaf_serial(d);
    assert_string_equal(s1, s2);     /* cached until renewal is due */
    assert_string_not_equal(s1, s3); /* a new one once less than INTERCEPT_LEAF_RENEW is left */
    assert_string_not_equal(s1, s4); /* one per host */
    /* The leaf names its host, and the CA signed it. */
    assert_int_equal(X509_check_host(SSL_get_certificate(d), "weatherkit.apple.com", 0, 0, NULL),
                     1);
    assert_int_equal(X509_check_host(SSL_get_certificate(d), "apple.com", 0, 0, NULL), 0);
    assert_int_equal(X509_verify(SSL_get_certificate(d),
                                 X509_get0_pubkey(intercept_ca_cert(ic))), 1);
    OPENSSL_free(s1);
    OPENSSL_free(s2);
    OPENSSL_free(s3);
    OPENSSL_free(s4);
    /* An SSL outlives the renewal and the CA object. */
    SSL_free(b);
    SSL_free(c);
    SSL_free(d);
    assert_null(intercept_ssl_new(ic, "www.example.com", 15, err, sizeof(err)));
    assert_non_null(strstr(err, "not an intercepted host"));
    intercept_free(ic);
    assert_non_null(SSL_get_certificate(a));
    SSL_free(a);
}

struct worker_arg {
    struct intercept *ic;
    int failures;
    char serial[80];
    int mixed;
};

static void *worker(void *p)
{
    struct worker_arg *w = p;
    char err[256];
    for (int i = 0; i < CALLS; i++) {
        SSL *ssl = intercept_ssl_new(w->ic, i % 2 ? "weatherkit.apple.com"
                                                  : "api.appstoreconnect.apple.com",
                                     i % 2 ? 20 : 29, err, sizeof(err));
        if (ssl == NULL) {
            w->failures++;
            continue;
        }
        if (i % 2 == 0) {
            char *s = leaf_serial(ssl);
            if (w->serial[0] == '\0')
                snprintf(w->serial, sizeof(w->serial), "%s", s);
            else if (strcmp(w->serial, s) != 0)
                w->mixed = 1;
            OPENSSL_free(s);
        }
        SSL_free(ssl);
    }
    return NULL;
}

static void test_threads_share_one_leaf(void **state)
{
    struct intercept *ic = open_ca();
    pthread_t t[THREADS];
    struct worker_arg args[THREADS];
    (void)state;
    memset(args, 0, sizeof(args));
    for (int i = 0; i < THREADS; i++) {
        args[i].ic = ic;
        assert_int_equal(pthread_create(&t[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(args[i].failures, 0);
        assert_int_equal(args[i].mixed, 0);
        assert_string_equal(args[i].serial, args[0].serial);
    }
    intercept_free(ic);
}

static void test_refusals(void **state)
{
    char err[512], d2[300];
    const char *const ips[] = {"10.0.0.1", "::1"};
    (void)state;
    assert_null(intercept_new(dir, ips, 2, err, sizeof(err), NULL, 0));
    assert_non_null(strstr(err, "no upstream has a DNS name"));
    snprintf(d2, sizeof(d2), "%s-open", dir);
    assert_int_equal(mkdir(d2, 0700), 0);
    assert_int_equal(chmod(d2, 0750 | S_IWGRP), 0);
    assert_null(intercept_new(d2, hosts, 2, err, sizeof(err), NULL, 0));
    assert_non_null(strstr(err, "chmod 700"));
    rmdir(d2);
}

/* A host name longer than 64 characters (the most a certificate's Common Name may hold; a DNS
 * name may have 253) still gets a leaf: the name is in the subjectAltName, which is what
 * clients check. */
static void test_leaf_for_a_name_longer_than_a_common_name(void **state)
{
    static const char longname[] =
        "mdm-enrollment-gateway-eu-west-1-production.devices.business.apple.com";
    const char *const one[] = {longname};
    char err[512], d2[300];
    struct intercept *ic;
    SSL *ssl;
    (void)state;
    assert_true(strlen(longname) > 64);
    snprintf(d2, sizeof(d2), "%s-long", dir);
    ic = intercept_new(d2, one, 1, err, sizeof(err), NULL, 0);
    if (ic == NULL)
        fail_msg("intercept_new: %s", err);
    ssl = intercept_ssl_new(ic, longname, strlen(longname), err, sizeof(err));
    if (ssl == NULL)
        fail_msg("intercept_ssl_new: %s", err);
    assert_int_equal(X509_check_host(SSL_get_certificate(ssl), longname, 0, 0, NULL), 1);
    /* And it verifies under the CA's name constraints, as a client's check does. */
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    assert_non_null(store);
    assert_non_null(vctx);
    assert_int_equal(X509_STORE_add_cert(store, intercept_ca_cert(ic)), 1);
    assert_int_equal(X509_STORE_CTX_init(vctx, store, SSL_get_certificate(ssl), NULL), 1);
    X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(vctx), longname, 0);
    if (X509_verify_cert(vctx) != 1)
        fail_msg("verify: %s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);
    SSL_free(ssl);
    intercept_free(ic);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_made_once),
        cmocka_unit_test(test_leaf_cached_and_renewed),
        cmocka_unit_test(test_threads_share_one_leaf),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_leaf_for_a_name_longer_than_a_common_name),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
