/* bench_token: in-process rates of token_mint (one ES256 signature each) and cache hits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth/key.h"
#include "auth/profile.h"
#include "auth/token_cache.h"

static double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A throwaway key made here: the benchmark must never need a real .p8 file. */
static apple_key *bench_key(void)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    apple_key *key = NULL;
    char err[256];
    char *pem;
    long n;

    if (pkey == NULL || bio == NULL ||
        PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) != 1)
        goto out;
    n = BIO_get_mem_data(bio, &pem);
    if (key_load_pem(pem, (size_t)n, &key, err, sizeof err) != 0)
        fprintf(stderr, "bench_token: %s\n", err);
out:
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return key;
}

int main(int argc, char **argv)
{
    struct credential cred;
    token_cache *cache = NULL;
    double seconds = 2.0, start, elapsed;
    unsigned long n = 0;
    char err[256];
    int rc = 1;

    if (argc == 3 && strcmp(argv[1], "--seconds") == 0) {
        seconds = atof(argv[2]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: bench_token [--seconds S]\n");
        return 2;
    }
    if (seconds <= 0)
        seconds = 2.0;
    memset(&cred, 0, sizeof cred);
    cred.name = "bench";
    cred.profile = PROFILE_APP_STORE_CONNECT;
    cred.key_id = "2X9R4HXF34";
    cred.issuer_id = "69a6de95-023f-47e3-e053-5b8c7c11a4d1";
    cred.skew = TOKEN_DEFAULT_SKEW;
    cred.key = bench_key();
    if (cred.key == NULL) {
        fprintf(stderr, "bench_token: could not make a P-256 key\n");
        goto out;
    }

    start = bench_now();
    do {
        int i;

        /* Read the clock every 64 tokens so that timing costs nothing measurable. */
        for (i = 0; i < 64; i++) {
            time_t exp;
            char *jwt = token_mint(&cred, NULL, 0, time(NULL), &exp, err, sizeof err);

            if (jwt == NULL) {
                fprintf(stderr, "bench_token: %s\n", err);
                goto out;
            }
            free(jwt);
            n++;
        }
        elapsed = bench_now() - start;
    } while (elapsed < seconds);
    printf("tokens signed per second (in-process): %.0f\n", (double)n / elapsed);

    cache = token_cache_new(300, NULL);
    if (cache == NULL)
        goto out;
    n = 0;
    start = bench_now();
    do {
        int i;

        for (i = 0; i < 1024; i++) {
            struct token *tok = token_cache_get(cache, &cred, NULL, 0, err, sizeof err);

            if (tok == NULL) {
                fprintf(stderr, "bench_token: %s\n", err);
                goto out;
            }
            token_put(tok);
            n++;
        }
        elapsed = bench_now() - start;
    } while (elapsed < seconds / 2);
    printf("token cache hits per second (in-process): %.0f\n", (double)n / elapsed);
    printf("token cache mints during the hit loop: %lu\n", token_cache_mints(cache, &cred));
    rc = 0;
out:
    token_cache_free(cache);
    key_free(cred.key);
    return rc;
}
