/* test_key: .p8 loading accepts what Apple issues in every common wrapping, and refuses anything
 * else with a message that says what it was. All keys are generated at test time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth/es256.h"
#include "auth/key.h"

enum pem_kind { PEM_PKCS8, PEM_SEC1, PEM_PUBLIC, PEM_CERT };

static char tmpdir[64];
static EVP_PKEY *p256; /* shared: generating one per test adds nothing */

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

static X509 *self_signed(EVP_PKEY *pkey)
{
    X509 *x = X509_new();
    X509_NAME *name;

    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, pkey), 1);
    name = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"test", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, name), 1);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);
    return x;
}

static char *pem_of(EVP_PKEY *pkey, enum pem_kind kind)
{
    BIO *bio = BIO_new(BIO_s_mem());
    X509 *x = NULL;
    char *text;
    int ok = 0;

    assert_non_null(bio);
    switch (kind) {
    case PEM_PKCS8:
        ok = PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL);
        break;
    case PEM_SEC1:
        ok = PEM_write_bio_PrivateKey_traditional(bio, pkey, NULL, NULL, 0, NULL, NULL);
        break;
    case PEM_PUBLIC:
        ok = PEM_write_bio_PUBKEY(bio, pkey);
        break;
    case PEM_CERT:
        x = self_signed(pkey);
        ok = PEM_write_bio_X509(bio, x);
        break;
    }
    assert_int_equal(ok, 1);
    text = bio_text(bio);
    X509_free(x);
    BIO_free(bio);
    return text;
}

static EVP_PKEY *gen(const char *type, const char *curve)
{
    EVP_PKEY *pkey;

    if (strcmp(type, "RSA") == 0)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    else if (curve != NULL)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, type, curve);
    else
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, type);
    assert_non_null(pkey);
    return pkey;
}

/* The loaded key must be the same key, not merely some P-256 key. */
static void assert_same_public(const apple_key *key, EVP_PKEY *pkey)
{
    char *want = pem_of(pkey, PEM_PUBLIC), *got = key_public_pem(key);

    assert_non_null(got);
    assert_string_equal(got, want);
    free(want);
    free(got);
}

static void assert_loads(const char *text, size_t len)
{
    apple_key *key = NULL;
    char err[256] = "";
    uint8_t sig[ES256_SIG_LEN];

    if (key_load_pem(text, len, &key, err, sizeof err) != 0)
        fail_msg("refused: %s", err);
    assert_non_null(key);
    assert_same_public(key, p256);
    assert_int_equal(es256_sign(key, (const uint8_t *)"x", 1, sig, err, sizeof err), 0);
    key_free(key);
}

/* A refusal names what was given and never echoes any of the text it was handed. */
static void assert_refused(const char *text, size_t len, const char *w1, const char *w2)
{
    apple_key *key = (apple_key *)1;
    char err[512] = "";
    const char *body;

    assert_int_equal(key_load_pem(text, len, &key, err, sizeof err), -1);
    assert_null(key);
    if (strstr(err, w1) == NULL || (w2 != NULL && strstr(err, w2) == NULL))
        fail_msg("message \"%s\" lacks \"%s\"%s%s", err, w1, w2 ? " or " : "", w2 ? w2 : "");
    /* text need not be NUL-terminated: stay inside len. */
    body = memchr(text, '\n', len);
    if (body != NULL && (size_t)(body - text) + 17 < len) {
        char chunk[17];

        memcpy(chunk, body + 1, 16);
        chunk[16] = '\0';
        assert_null(strstr(err, chunk));
    }
}

static int group_setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/aap-test-key-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    return p256 == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    static const char *const names[] = {"AuthKey_0600.p8", "AuthKey_0644.p8", "key.fifo",
                                        "p384.p8",         "empty.p8",        "big.p8"};
    char path[128];
    size_t i;

    (void)state;
    EVP_PKEY_free(p256);
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    return rmdir(tmpdir);
}

static void path_in_tmp(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", tmpdir, name);
}

static void write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    /* fchmod, not the open mode: the umask would otherwise decide. */
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    const char *p;
    char *out, *o;

    for (p = s; (p = strstr(p, from)) != NULL; p += fl)
        n++;
    out = malloc(strlen(s) + n * tl + 1);
    assert_non_null(out);
    for (o = out; *s != '\0';) {
        if (strncmp(s, from, fl) == 0) {
            memcpy(o, to, tl);
            o += tl;
            s += fl;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

static void test_pkcs8_p256_ok(void **state)
{
    char *pem = pem_of(p256, PEM_PKCS8);

    (void)state;
    assert_non_null(strstr(pem, "-----BEGIN PRIVATE KEY-----"));
    assert_loads(pem, strlen(pem));
    free(pem);
}

static void test_sec1_p256_ok(void **state)
{
    char *pem = pem_of(p256, PEM_SEC1);

    (void)state;
    assert_non_null(strstr(pem, "-----BEGIN EC PRIVATE KEY-----"));
    assert_loads(pem, strlen(pem));
    free(pem);
}

static void test_crlf_ok(void **state)
{
    char *pem = pem_of(p256, PEM_PKCS8), *crlf = replace_all(pem, "\n", "\r\n");

    (void)state;
    assert_loads(crlf, strlen(crlf));
    free(crlf);
    free(pem);
}

static void test_no_final_newline_ok(void **state)
{
    char *pem = pem_of(p256, PEM_PKCS8);
    size_t len = strlen(pem);

    (void)state;
    while (len > 0 && pem[len - 1] == '\n')
        len--;
    /* Not NUL-terminated at len: the loader must honour the length it is given. */
    assert_loads(pem, len);
    free(pem);
}

/* Indented YAML, padding, and a PEM pasted into a one-line variable with literal "\n". */
static void test_whitespace_and_escaped_newlines_ok(void **state)
{
    char *pem = pem_of(p256, PEM_PKCS8);
    char *indented = replace_all(pem, "\n", "\n    ");
    char *escaped = replace_all(pem, "\n", "\\n");
    char *padded = malloc(strlen(pem) + 8);

    (void)state;
    sprintf(padded, "\n \t%s \n\n", pem);
    assert_loads(indented, strlen(indented));
    assert_loads(escaped, strlen(escaped));
    assert_loads(padded, strlen(padded));
    free(indented);
    free(escaped);
    free(padded);
    free(pem);
}

static char *base64_of(const char *s)
{
    BIO *b64 = BIO_new(BIO_f_base64()), *mem = BIO_new(BIO_s_mem());
    char *text;

    assert_non_null(b64);
    assert_non_null(mem);
    b64 = BIO_push(b64, mem);
    assert_int_equal(BIO_write(b64, s, (int)strlen(s)), (int)strlen(s));
    assert_int_equal(BIO_flush(b64), 1);
    text = bio_text(mem);
    BIO_free_all(b64);
    return text;
}

/* fastlane's APP_STORE_CONNECT_API_KEY_IS_KEY_CONTENT_BASE64: the base64 of the whole file,
 * wrapped at 64 columns by OpenSSL or on one line by `base64 -w0`. */
static void test_text_base64_of_pem_ok(void **state)
{
    char *pem = pem_of(p256, PEM_PKCS8), *b64 = base64_of(pem), *oneline;
    apple_key *key = NULL;
    char err[256];

    (void)state;
    assert_int_equal(key_load_text(b64, strlen(b64), &key, err, sizeof err), 0);
    assert_same_public(key, p256);
    key_free(key);

    oneline = replace_all(b64, "\n", "");
    assert_int_equal(key_load_text(oneline, strlen(oneline), &key, err, sizeof err), 0);
    key_free(key);

    /* And plain PEM through the same entry point. */
    assert_int_equal(key_load_text(pem, strlen(pem), &key, err, sizeof err), 0);
    key_free(key);
    free(oneline);
    free(b64);
    free(pem);
}

static void test_text_refusals(void **state)
{
    apple_key *key = NULL;
    char err[256];
    char *b64 = base64_of("hello, this is not a key\n");

    (void)state;
    assert_int_equal(key_load_text("not base64!", 11, &key, err, sizeof err), -1);
    assert_non_null(strstr(err, "neither PEM"));
    assert_int_equal(key_load_text(b64, strlen(b64), &key, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not decode to PEM"));
    assert_int_equal(key_load_text("", 0, &key, err, sizeof err), -1);
    assert_non_null(strstr(err, "empty"));
    assert_null(key);
    free(b64);
}

static void test_p384_refused(void **state)
{
    EVP_PKEY *pkey = gen("EC", "P-384");
    char *pem = pem_of(pkey, PEM_PKCS8);

    (void)state;
    assert_refused(pem, strlen(pem), "P-384", "P-256");
    free(pem);
    pem = pem_of(pkey, PEM_SEC1);
    assert_refused(pem, strlen(pem), "P-384", "secp384r1");
    free(pem);
    EVP_PKEY_free(pkey);
}

static void test_rsa_refused(void **state)
{
    EVP_PKEY *pkey = gen("RSA", NULL);
    char *pem = pem_of(pkey, PEM_PKCS8);

    (void)state;
    assert_refused(pem, strlen(pem), "RSA", "P-256");
    free(pem);
    pem = pem_of(pkey, PEM_SEC1); /* "-----BEGIN RSA PRIVATE KEY-----" */
    assert_refused(pem, strlen(pem), "RSA", NULL);
    free(pem);
    EVP_PKEY_free(pkey);
}

static void test_ed25519_refused(void **state)
{
    EVP_PKEY *pkey = gen("ED25519", NULL);
    char *pem = pem_of(pkey, PEM_PKCS8);

    (void)state;
    assert_refused(pem, strlen(pem), "Ed25519", "P-256");
    free(pem);
    EVP_PKEY_free(pkey);
}

static void test_public_key_refused(void **state)
{
    char *pem = pem_of(p256, PEM_PUBLIC);

    (void)state;
    assert_non_null(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
    assert_refused(pem, strlen(pem), "public key", "not a private key");
    free(pem);
}

static void test_certificate_refused(void **state)
{
    char *pem = pem_of(p256, PEM_CERT);

    (void)state;
    assert_non_null(strstr(pem, "-----BEGIN CERTIFICATE-----"));
    assert_refused(pem, strlen(pem), "certificate", "not a private key");
    free(pem);
}

static void test_garbage_and_empty_refused(void **state)
{
    static const char garbage[] = "this is not a key at all\njust some text\n";
    char *pem = pem_of(p256, PEM_PKCS8), *corrupt;
    size_t len = strlen(pem);

    (void)state;
    assert_refused(garbage, strlen(garbage), "not a PEM private key", NULL);
    assert_refused("", 0, "empty", NULL);
    assert_refused(" \r\n\t\n", 5, "empty", NULL);
    assert_refused("\x30\x82\x01\x00\x00", 5, "binary", NULL);

    /* A PEM private key whose body was damaged: named as such, body not echoed. */
    corrupt = strdup(pem);
    corrupt[40] = '!';
    corrupt[41] = '!';
    assert_refused(corrupt, len, "cannot read", NULL);
    free(corrupt);

    /* Truncated: the END line is missing. */
    assert_refused(pem, len / 2, "cannot read", NULL);
    free(pem);
}

static void test_size_limit(void **state)
{
    size_t n = 70000;
    char *big = malloc(n);

    (void)state;
    memset(big, 'A', n);
    memcpy(big, "-----BEGIN PRIVATE KEY-----\n", 28);
    assert_refused(big, n, "limit", NULL);
    free(big);
}

static void test_file_0600_ok_without_warning(void **state)
{
    char path[128], err[256], warn[256];
    char *pem = pem_of(p256, PEM_PKCS8);
    apple_key *key = NULL;

    (void)state;
    path_in_tmp(path, sizeof path, "AuthKey_0600.p8");
    write_file(path, pem, strlen(pem), 0600);
    strcpy(warn, "stale");
    assert_int_equal(key_load_file(path, &key, err, sizeof err, warn, sizeof warn), 0);
    assert_string_equal(warn, "");
    assert_same_public(key, p256);
    key_free(key);
    /* warn may be NULL. */
    assert_int_equal(key_load_file(path, &key, err, sizeof err, NULL, 0), 0);
    key_free(key);
    free(pem);
}

static void test_file_0644_warns(void **state)
{
    char path[128], err[256], warn[512], expect[300];
    char *pem = pem_of(p256, PEM_PKCS8);
    apple_key *key = NULL;

    (void)state;
    path_in_tmp(path, sizeof path, "AuthKey_0644.p8");
    write_file(path, pem, strlen(pem), 0644);
    assert_int_equal(key_load_file(path, &key, err, sizeof err, warn, sizeof warn), 0);
    assert_non_null(key);
    snprintf(expect, sizeof expect, "chmod 600 %s", path);
    assert_non_null(strstr(warn, expect));
    assert_non_null(strstr(warn, "readable by group or others"));
    key_free(key);

    write_file(path, pem, strlen(pem), 0640);
    assert_int_equal(key_load_file(path, &key, err, sizeof err, warn, sizeof warn), 0);
    assert_non_null(strstr(warn, "chmod 600"));
    key_free(key);
    free(pem);
}

static void assert_file_refused(const char *path, const char *word)
{
    apple_key *key = (apple_key *)1;
    char err[512] = "", warn[256];

    assert_int_equal(key_load_file(path, &key, err, sizeof err, warn, sizeof warn), -1);
    assert_null(key);
    if (strstr(err, path) == NULL || strstr(err, word) == NULL)
        fail_msg("message \"%s\" lacks the path or \"%s\"", err, word);
}

static void test_file_not_regular_refused(void **state)
{
    char fifo[128];

    (void)state;
    assert_file_refused(tmpdir, "directory");
    path_in_tmp(fifo, sizeof fifo, "key.fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    /* Must return at once: opening a FIFO with no writer would block. */
    assert_file_refused(fifo, "FIFO");
    assert_file_refused("/dev/null", "device");
}

static void test_file_missing_refused(void **state)
{
    char path[128];

    (void)state;
    path_in_tmp(path, sizeof path, "AuthKey_MISSING.p8");
    assert_file_refused(path, strerror(ENOENT));
}

static void test_file_wrong_contents_refused(void **state)
{
    char path[128];
    EVP_PKEY *pkey = gen("EC", "P-384");
    char *pem = pem_of(pkey, PEM_PKCS8), *big;

    (void)state;
    path_in_tmp(path, sizeof path, "p384.p8");
    write_file(path, pem, strlen(pem), 0600);
    assert_file_refused(path, "P-384");
    path_in_tmp(path, sizeof path, "empty.p8");
    write_file(path, "", 0, 0600);
    assert_file_refused(path, "empty");
    big = calloc(1, 100000);
    path_in_tmp(path, sizeof path, "big.p8");
    write_file(path, big, 100000, 0600);
    assert_file_refused(path, "limit");
    free(big);
    free(pem);
    EVP_PKEY_free(pkey);
}

static void test_free_null(void **state)
{
    (void)state;
    key_free(NULL);
    assert_null(key_public_pem(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pkcs8_p256_ok),
        cmocka_unit_test(test_sec1_p256_ok),
        cmocka_unit_test(test_crlf_ok),
        cmocka_unit_test(test_no_final_newline_ok),
        cmocka_unit_test(test_whitespace_and_escaped_newlines_ok),
        cmocka_unit_test(test_text_base64_of_pem_ok),
        cmocka_unit_test(test_text_refusals),
        cmocka_unit_test(test_p384_refused),
        cmocka_unit_test(test_rsa_refused),
        cmocka_unit_test(test_ed25519_refused),
        cmocka_unit_test(test_public_key_refused),
        cmocka_unit_test(test_certificate_refused),
        cmocka_unit_test(test_garbage_and_empty_refused),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_file_0600_ok_without_warning),
        cmocka_unit_test(test_file_0644_warns),
        cmocka_unit_test(test_file_not_regular_refused),
        cmocka_unit_test(test_file_missing_refused),
        cmocka_unit_test(test_file_wrong_contents_refused),
        cmocka_unit_test(test_free_null),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
