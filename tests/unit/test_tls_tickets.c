/* test_tls_tickets: session tickets under the shared, rotating keys, over in-memory TLS
 * handshakes: a ticket resumes under the current key and the previous one, is renewed under
 * the previous one, and stops resuming after two rotations; a second context on the same keys
 * (a reload) resumes the first one's sessions. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "proxy/tls_tickets.h"

static EVP_PKEY *pkey;
static X509 *cert;

static int setup(void **state)
{
    (void)state;
    pkey = EVP_EC_gen("P-256");
    cert = X509_new();
    if (pkey == NULL || cert == NULL)
        return -1;
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                               (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    X509_set_pubkey(cert, pkey);
    return X509_sign(cert, pkey, EVP_sha256()) > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    X509_free(cert);
    EVP_PKEY_free(pkey);
    return 0;
}

static SSL_CTX *server_ctx(struct tls_tickets *t)
{
    static const unsigned char sid[] = "test";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, pkey), 1);
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    SSL_CTX_set_num_tickets(ctx, 1);
    assert_int_equal(tls_tickets_attach(t, ctx), 0);
    return ctx;
}

/* One TLS 1.3 connection in memory offering sess (or none); returns the client's session
 * (with the ticket the server sent) and whether it resumed. */
static SSL_SESSION *connect_once(SSL_CTX *sctx, SSL_SESSION *sess, int *reused)
{
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    SSL *c, *s;
    BIO *cb, *sb;
    unsigned char byte;
    int i, cdone = 0, sdone = 0;
    assert_non_null(cctx);
    SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION);
    c = SSL_new(cctx);
    s = SSL_new(sctx);
    assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
    SSL_set_bio(c, cb, cb);
    SSL_set_bio(s, sb, sb);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    if (sess)
        assert_int_equal(SSL_set_session(c, sess), 1);
    for (i = 0; i < 20 && !(cdone && sdone); i++) {
        if (!cdone)
            cdone = SSL_do_handshake(c) == 1;
        if (!sdone)
            sdone = SSL_do_handshake(s) == 1;
    }
    assert_true(cdone && sdone);
    /* The ticket follows the handshake, before any data: reading the server's first byte
     * makes the client take it. */
    byte = 'x';
    assert_int_equal(SSL_write(s, &byte, 1), 1);
    assert_int_equal(SSL_read(c, &byte, 1), 1);
    *reused = SSL_session_reused(c);
    SSL_SESSION *out = SSL_get1_session(c);
    /* A connection freed without close_notify marks its session not resumable. */
    SSL_shutdown(c);
    SSL_shutdown(s);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    return out;
}

static void test_resumes_under_current_and_previous_key(void **state)
{
    char err[128];
    int reused;
    (void)state;
    struct tls_tickets *t = tls_tickets_new(err, sizeof(err));
    assert_non_null(t);
    SSL_CTX *sctx = server_ctx(t);
    SSL_SESSION *first = connect_once(sctx, NULL, &reused);
    assert_false(reused);
    SSL_SESSION *again = connect_once(sctx, first, &reused);
    assert_true(reused);
    SSL_SESSION_free(again);

    assert_int_equal(tls_tickets_rotate(t), 0);
    /* Under the previous key: still resumed, and renewed under the current one. */
    SSL_SESSION *renewed = connect_once(sctx, first, &reused);
    assert_true(reused);

    assert_int_equal(tls_tickets_rotate(t), 0);
    /* Two rotations later the first ticket's key is gone; the renewed ticket still works. */
    SSL_SESSION *late = connect_once(sctx, first, &reused);
    assert_false(reused);
    SSL_SESSION_free(late);
    late = connect_once(sctx, renewed, &reused);
    assert_true(reused);
    SSL_SESSION_free(late);

    SSL_SESSION_free(renewed);
    SSL_SESSION_free(first);
    SSL_CTX_free(sctx);
    tls_tickets_free(t);
}

static void test_new_context_on_the_same_keys_resumes(void **state)
{
    char err[128];
    int reused;
    (void)state;
    struct tls_tickets *t = tls_tickets_new(err, sizeof(err));
    struct tls_tickets *other = tls_tickets_new(err, sizeof(err));
    assert_non_null(t);
    assert_non_null(other);
    SSL_CTX *before = server_ctx(t);
    SSL_SESSION *sess = connect_once(before, NULL, &reused);
    SSL_CTX_free(before);
    SSL_CTX *after = server_ctx(t); /* a reload: new context, same keys */
    SSL_SESSION *again = connect_once(after, sess, &reused);
    assert_true(reused);
    SSL_SESSION_free(again);
    SSL_CTX *stranger = server_ctx(other); /* other keys: a full handshake */
    again = connect_once(stranger, sess, &reused);
    assert_false(reused);
    SSL_SESSION_free(again);
    SSL_SESSION_free(sess);
    SSL_CTX_free(after);
    SSL_CTX_free(stranger);
    tls_tickets_free(other);
    tls_tickets_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resumes_under_current_and_previous_key),
        cmocka_unit_test(test_new_context_on_the_same_keys_resumes),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
