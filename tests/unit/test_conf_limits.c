/* Unit tests for conf's named limit on listen addresses: 64 load, 65 are refused with a message
 * naming the limit, from the file and from APPLE_AUTH_PROXY_LISTEN alike. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "unit_conf.h"

/* A configuration listening on n loopback addresses (127.0.0.1 to 127.0.0.n, port 0). */
static char *listen_json(int n)
{
    size_t cap = 512 + (size_t)n * 24;
    char *json = malloc(cap);
    size_t len = (size_t)snprintf(json, cap, "{\"listen\": [");
    for (int i = 1; i <= n; i++)
        len += (size_t)snprintf(json + len, cap - len, "%s\"127.0.0.%d:0\"", i > 1 ? ", " : "", i);
    snprintf(json + len, cap - len,
             "], \"admin_listen\": null, \"credentials\": {" UNIT_CRED_ASC "}, \"routes\": "
             "[{\"path_prefix\": \"/\", \"upstream\": \"https://api.appstoreconnect.apple.com\","
             " \"credential\": \"asc\"}]}");
    return json;
}

static void test_listen_limit_in_the_file(void **state)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL, *json;
    json = listen_json(CONF_MAX_LISTEN);
    unit_key_env();
    assert_int_equal(conf_load_string(json, strlen(json), "t", &conf, &errors, &warnings), 0);
    assert_int_equal(conf->nlisten, 64);
    conf_free(conf);
    free(json);
    free(errors);
    free(warnings);
    errors = warnings = NULL;
    json = listen_json(CONF_MAX_LISTEN + 1);
    unit_key_env();
    assert_int_equal(conf_load_string(json, strlen(json), "t", &conf, &errors, &warnings), -1);
    assert_non_null(strstr(errors, "listen: expected 1 to 64 addresses"));
    free(json);
    free(errors);
    free(warnings);
}

static const char *env_listen;

static const char *fake_env(const char *name)
{
    if (strcmp(name, "APPLE_AUTH_PROXY_LISTEN") == 0)
        return env_listen;
    if (strcmp(name, "APP_STORE_CONNECT_API_KEY_KEY_ID") == 0)
        return "ABCDEFGHIJ";
    if (strcmp(name, "APP_STORE_CONNECT_API_KEY_ISSUER_ID") == 0)
        return "69a6de95-023f-47e3-e053-5b8c7c11a4d1";
    if (strcmp(name, "APP_STORE_CONNECT_API_KEY_KEY") == 0)
        return getenv("AAP_UNIT_KEY");
    return NULL;
}

static void test_listen_limit_in_the_environment(void **state)
{
    char list[65 * 20];
    size_t len = 0;
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    for (int i = 1; i <= CONF_MAX_LISTEN + 1; i++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s127.0.0.%d:0", i > 1 ? "," : "",
                                i);
    env_listen = list;
    unit_key_env();
    assert_int_equal(conf_load_env(fake_env, &conf, &errors, &warnings), -1);
    assert_non_null(strstr(errors, "APPLE_AUTH_PROXY_LISTEN: at most 64 addresses"));
    free(errors);
    free(warnings);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_limit_in_the_file),
        cmocka_unit_test(test_listen_limit_in_the_environment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
