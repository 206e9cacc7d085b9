/* tls_tickets: the session ticket keys of the HTTPS listeners, shared by every worker and kept
 * across reloads, rotated on a schedule. */
#include "proxy/tls_tickets.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define TICKET_NAME_LEN 16
#define TICKET_AES_LEN 32  /* AES-256-CBC, as OpenSSL's own ticket keys */
#define TICKET_HMAC_LEN 32 /* HMAC-SHA256 */

struct ticket_key {
    int present;
    unsigned char name[TICKET_NAME_LEN];
    unsigned char aes[TICKET_AES_LEN];
    unsigned char hmac[TICKET_HMAC_LEN];
};

struct tls_tickets {
    pthread_mutex_t lock;      /* the keys: rotated by the main thread, read by the workers */
    struct ticket_key keys[2]; /* [0] current, [1] previous */
    EVP_CIPHER *cipher;        /* fetched once, not per ticket */
};

static pthread_once_t ex_once = PTHREAD_ONCE_INIT;
static int ex_index = -1;

static void ex_index_init(void)
{
    ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int key_make(struct ticket_key *k)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_priv_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_priv_bytes(k->hmac, sizeof(k->hmac)) != 1) {
        OPENSSL_cleanse(k, sizeof(*k));
        return -1;
    }
    k->present = 1;
    return 0;
}

struct tls_tickets *tls_tickets_new(char *err, size_t errlen)
{
    struct tls_tickets *t = calloc(1, sizeof(*t));
    const char *what = "out of memory";
    if (t == NULL)
        goto fail;
    pthread_mutex_init(&t->lock, NULL);
    what = "AES-256-CBC is not available";
    t->cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (t->cipher == NULL)
        goto fail;
    what = "no randomness for session ticket keys";
    if (key_make(&t->keys[0]) < 0)
        goto fail;
    return t;
fail:
    snprintf(err, errlen, "TLS session tickets: %s", what);
    tls_tickets_free(t);
    return NULL;
}

void tls_tickets_free(struct tls_tickets *t)
{
    if (t == NULL)
        return;
    OPENSSL_cleanse(t->keys, sizeof(t->keys));
    EVP_CIPHER_free(t->cipher);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

int tls_tickets_rotate(struct tls_tickets *t)
{
    struct ticket_key fresh;
    if (key_make(&fresh) < 0)
        return -1;
    pthread_mutex_lock(&t->lock);
    t->keys[1] = t->keys[0];
    t->keys[0] = fresh;
    pthread_mutex_unlock(&t->lock);
    OPENSSL_cleanse(&fresh, sizeof(fresh));
    return 0;
}

static int hmac_init(EVP_MAC_CTX *hctx, unsigned char *key)
{
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, TICKET_HMAC_LEN);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

/* OpenSSL's ticket callback: 1 = use this key, 2 = decrypted, but issue a fresh ticket under
 * the current key, 0 = unknown key (a full handshake follows), -1 = error. */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    struct tls_tickets *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index);
    struct ticket_key k = {0};
    int rc = -1, which = 0;
    if (t == NULL)
        return -1;
    pthread_mutex_lock(&t->lock);
    if (enc) {
        k = t->keys[0];
    } else {
        for (which = 0; which < 2; which++)
            if (t->keys[which].present &&
                CRYPTO_memcmp(key_name, t->keys[which].name, TICKET_NAME_LEN) == 0)
                break;
        if (which < 2)
            k = t->keys[which];
    }
    pthread_mutex_unlock(&t->lock);
    if (enc) {
        memcpy(key_name, k.name, TICKET_NAME_LEN);
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(t->cipher)) != 1 ||
            EVP_EncryptInit_ex(cctx, t->cipher, NULL, k.aes, iv) != 1 || hmac_init(hctx, k.hmac) != 1)
            goto out;
        rc = 1;
    } else if (which == 2) {
        return 0;
    } else {
        if (hmac_init(hctx, k.hmac) != 1 || EVP_DecryptInit_ex(cctx, t->cipher, NULL, k.aes, iv) != 1)
            goto out;
        /* TLS 1.3 tickets are for one use (RFC 8446 C.4): without a fresh one after each
         * resumption, a client that keeps only its latest session (wrk, many HTTP clients)
         * falls back to a full handshake every other time. */
        rc = which == 0 && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
    }
out:
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

int tls_tickets_attach(struct tls_tickets *t, SSL_CTX *ctx)
{
    pthread_once(&ex_once, ex_index_init);
    if (ex_index < 0 || !SSL_CTX_set_ex_data(ctx, ex_index, t))
        return -1;
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) == 1 ? 0 : -1;
}
