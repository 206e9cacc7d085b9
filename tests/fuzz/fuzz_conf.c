/* fuzz_conf: libFuzzer target for the configuration loader, conf_load_string, on arbitrary
 * bytes (JSON or not). The environment variable AAP_FUZZ_KEY holds a P-256 key generated at
 * start-up, so inputs naming "private_key_env": "AAP_FUZZ_KEY" (the seeds do) reach the whole
 * validation, token profiles included, without a key in the repository. Every result must be
 * either a configuration (and no error text) or error text (and no configuration). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "conf/conf.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    (void)argc;
    (void)argv;
    if (k == NULL || b == NULL || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL))
        abort();
    long n = BIO_get_mem_data(b, &data);
    char *pem = strndup(data, (size_t)n);
    setenv("AAP_FUZZ_KEY", pem, 1);
    free(pem);
    BIO_free(b);
    EVP_PKEY_free(k);
    /* Settings from the environment must not leak into what is fuzzed. */
    unsetenv("APPLE_AUTH_PROXY_LISTEN");
    unsetenv("APPLE_AUTH_PROXY_WORKERS");
    unsetenv("APPLE_AUTH_PROXY_ADMIN_LISTEN");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    char *buf = malloc(size ? size : 1); /* exact size, not NUL-terminated */
    memcpy(buf, data, size);
    int r = conf_load_string(buf, size, "fuzz", &conf, &errors, &warnings);
    if (r == 0 && conf == NULL) {
        fprintf(stderr, "fuzz_conf: success without a configuration\n");
        abort();
    }
    if (r < 0 && (conf != NULL || errors == NULL || errors[0] == '\0')) {
        fprintf(stderr, "fuzz_conf: failure without errors, or with a configuration\n");
        abort();
    }
    if (r == 0 && conf->nroutes == 0) {
        fprintf(stderr, "fuzz_conf: a valid configuration without routes\n");
        abort();
    }
    conf_free(conf);
    free(errors);
    free(warnings);
    free(buf);
    return 0;
}
