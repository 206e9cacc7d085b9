/* unit_conf: helpers the table tests share: a configuration loaded from JSON text with a P-256
 * key made for the run (nothing secret is committed), and a request head parsed from text. */
#ifndef AAP_TESTS_UNIT_CONF_H
#define AAP_TESTS_UNIT_CONF_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "conf/conf.h"
#include "proxy/http1.h"

/* The start of a configuration, and an App Store Connect credential whose key is the run's. */
#define UNIT_CONF_START "{\"listen\": [\"127.0.0.1:0\"], \"admin_listen\": null, \"workers\": 1,"
#define UNIT_CRED_ASC                                                                              \
    "\"asc\": {\"profile\": \"app-store-connect\", \"key_id\": \"ABCDEFGHIJ\","                  \
    " \"issuer_id\": \"69a6de95-023f-47e3-e053-5b8c7c11a4d1\", \"private_key_env\": \"AAP_UNIT_KEY\"}"

/* Puts a fresh PKCS#8 PEM P-256 key in $AAP_UNIT_KEY, for credentials that name
 * "private_key_env": "AAP_UNIT_KEY". */
static inline void unit_key_env(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    if (k == NULL || b == NULL || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL))
        abort();
    long n = BIO_get_mem_data(b, &data);
    char *pem = strndup(data, (size_t)n);
    if (pem == NULL)
        abort();
    setenv("AAP_UNIT_KEY", pem, 1);
    free(pem);
    BIO_free(b);
    EVP_PKEY_free(k);
}

/* Loads json or aborts with the loader's messages. */
static inline struct conf *unit_conf(const char *json)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    unit_key_env();
    if (conf_load_string(json, strlen(json), "unit", &conf, &errors, &warnings) < 0) {
        fprintf(stderr, "configuration refused:\n%s\n", errors ? errors : "");
        abort();
    }
    free(errors);
    free(warnings);
    return conf;
}

static const struct http1_limits unit_req_limits = {
    .max_line = 8192, .max_head = 65536, .max_headers = 100};

/* Parses a complete request head (text must outlive m) or aborts. */
static inline void unit_parse(struct http1_msg *m, const char *text)
{
    memset(m, 0, sizeof(*m)); /* init keeps a header array it finds: there is none */
    http1_msg_init(m, HTTP_REQUEST, &unit_req_limits);
    if (http1_parse_head(m, text, strlen(text)) != 1) {
        fprintf(stderr, "not a complete request head: %s\n", text);
        abort();
    }
}

#endif
