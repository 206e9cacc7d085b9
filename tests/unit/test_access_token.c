/* test_access_token: the exchange requests of the maps and apple-business profiles (form
 * encoding included), Apple's answers parsed under hostile input, and the token cache's
 * handling of exchanged credentials (installed, never signed by a request, due ahead of
 * expiry, carried across a reload). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth/access_token.h"
#include "auth/b64.h"
#include "auth/key.h"
#include "unit_key.h"
#include "auth/profile.h"
#include "auth/token_cache.h"

#define T0 ((time_t)1700000000)
#define CLIENT "BUSINESSAPI.9703f56c-10ce-4876-8f59-e78e5e23a152"

static apple_key *key;
static _Atomic time_t fake_now = T0;

static time_t fake_clock(void)
{
    return atomic_load(&fake_now);
}

static int group_setup(void **state)
{
    (void)state;
    key = unit_key_new();
    return key != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    key_free(key);
    return 0;
}

static struct credential maps_cred(void)
{
    struct credential c;

    memset(&c, 0, sizeof c);
    c.name = "maps";
    c.profile = PROFILE_MAPS;
    c.key_id = "2X9R4HXF34";
    c.team_id = "DEF123GHIJ";
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key = key;
    return c;
}

static struct credential business_cred(void)
{
    struct credential c;

    memset(&c, 0, sizeof c);
    c.name = "biz";
    c.profile = PROFILE_APPLE_BUSINESS;
    c.key_id = "d136aa66-0c3b-4bd4-9892-c20e8db024ab";
    c.client_id = CLIENT;
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key = key;
    return c;
}

static void assert_form(const char *const *pairs, size_t n, const char *want)
{
    size_t len = 0;
    char *got = form_encode(pairs, n, &len);

    assert_non_null(got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(got);
}

/* The WHATWG urlencoded serializer: only ALPHA DIGIT *-._ stay; space is '+'; the bytes that
 * would change the form's meaning ('&', '=', '+', '%') and everything else are %XX. */
static void test_form_encode(void **state)
{
    const char *plain[] = {"grant_type", "client_credentials"};
    const char *hostile[] = {"a b", "x&y=z+1%2", "utf8", "\xc3\xa9\x01\x7f\xff", "e", ""};
    const char *jwt[] = {"client_assertion", "eyJh.eyJp_-x.s1g~"};
    const char *nul[] = {"a", NULL};

    (void)state;
    assert_form(plain, 1, "grant_type=client_credentials");
    assert_form(hostile, 3, "a+b=x%26y%3Dz%2B1%252&utf8=%C3%A9%01%7F%FF&e=");
    assert_form(jwt, 1, "client_assertion=eyJh.eyJp_-x.s1g%7E");
    assert_form(plain, 0, "");
    assert_null(form_encode(nul, 1, NULL));
}

/* Decodes one application/x-www-form-urlencoded value (the stand-in's job, done here too). */
static char *form_value(const char *form, const char *name)
{
    size_t nl = strlen(name);
    const char *p = form;

    while (p != NULL && *p) {
        if (strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1, *end = strchr(v, '&');
            size_t n = end ? (size_t)(end - v) : strlen(v), i, o = 0;
            char *out = malloc(n + 1);

            for (i = 0; i < n; i++) {
                if (v[i] == '+') {
                    out[o++] = ' ';
                } else if (v[i] == '%' && i + 2 < n + 1) {
                    unsigned x;
                    sscanf(v + i + 1, "%2x", &x);
                    out[o++] = (char)x;
                    i += 2;
                } else {
                    out[o++] = v[i];
                }
            }
            out[o] = '\0';
            return out;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return NULL;
}

static cJSON *claims_of(const char *jwt)
{
    const char *d1 = strchr(jwt, '.'), *d2 = strchr(d1 + 1, '.');
    size_t n;
    char *raw = (char *)b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &n);
    cJSON *c = cJSON_ParseWithLength(raw, n);

    free(raw);
    return c;
}

static void test_maps_request(void **state)
{
    struct credential c = maps_cred();
    struct access_token_request rq;
    char err[256] = "", want[2048];

    (void)state;
    assert_int_equal(access_token_request_build(&c, T0, &rq, err, sizeof err), 0);
    assert_string_equal(rq.method, "GET");
    assert_string_equal(rq.host, "maps-api.apple.com");
    assert_string_equal(rq.path, "/v1/token");
    assert_null(rq.body);
    snprintf(want, sizeof want, "Authorization: Bearer %s\r\n", rq.assertion);
    assert_string_equal(rq.headers, want);
    assert_int_equal(rq.headers_len, strlen(want));
    access_token_request_deinit(&rq);
    assert_null(rq.headers);
    assert_null(rq.assertion);
}

/* The client assertion and the form Apple's token endpoint takes, field by field. */
static void test_business_request(void **state)
{
    struct credential c = business_cred();
    char *school[] = {"school.api"};
    struct access_token_request rq;
    char err[256] = "", *v;
    cJSON *claims;

    (void)state;
    assert_int_equal(access_token_request_build(&c, T0, &rq, err, sizeof err), 0);
    assert_string_equal(rq.method, "POST");
    assert_string_equal(rq.host, "account.apple.com");
    assert_string_equal(rq.path, "/auth/oauth2/token");
    assert_string_equal(rq.headers, "Content-Type: application/x-www-form-urlencoded\r\n");
    assert_int_equal(rq.body_len, strlen(rq.body));
    assert_int_equal(strncmp(rq.body, "grant_type=client_credentials&client_id=", 40), 0);
    v = form_value(rq.body, "client_id");
    assert_string_equal(v, CLIENT);
    free(v);
    v = form_value(rq.body, "client_assertion_type");
    assert_string_equal(v, "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    free(v);
    v = form_value(rq.body, "scope");
    assert_string_equal(v, "business.api");
    free(v);
    v = form_value(rq.body, "client_assertion");
    assert_string_equal(v, rq.assertion);
    claims = claims_of(v);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(claims, "iss")->valuestring, CLIENT);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(claims, "sub")->valuestring, CLIENT);
    assert_int_equal((long)cJSON_GetObjectItemCaseSensitive(claims, "exp")->valuedouble -
                         (long)cJSON_GetObjectItemCaseSensitive(claims, "iat")->valuedouble,
                     600);
    assert_null(cJSON_GetObjectItemCaseSensitive(claims, "scope"));
    cJSON_Delete(claims);
    free(v);
    access_token_request_deinit(&rq);

    c.scope = school;
    c.nscope = 1;
    assert_int_equal(access_token_request_build(&c, T0, &rq, err, sizeof err), 0);
    v = form_value(rq.body, "scope");
    assert_string_equal(v, "school.api");
    free(v);
    access_token_request_deinit(&rq);
}

static void test_request_refused_for_signed_profiles(void **state)
{
    struct credential c = maps_cred();
    struct access_token_request rq;
    char err[256] = "";

    (void)state;
    c.profile = PROFILE_MUSIC;
    assert_int_equal(access_token_request_build(&c, T0, &rq, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not exchange"));
    c = business_cred();
    c.key = NULL;
    assert_int_equal(access_token_request_build(&c, T0, &rq, err, sizeof err), -1);
    assert_null(rq.body);
}

static void parse_ok(enum token_profile p, const char *body, const char *want, long want_exp)
{
    char *tok = NULL, err[256] = "";
    long exp = 0;

    if (access_token_parse(p, body, strlen(body), &tok, &exp, err, sizeof err) != 0)
        fail_msg("%s: %s", body, err);
    assert_string_equal(tok, want);
    assert_int_equal(exp, want_exp);
    free(tok);
}

static void parse_bad_len(enum token_profile p, const char *body, size_t len, const char *why)
{
    char *tok = (char *)1, err[256] = "";
    long exp = 7;

    assert_int_equal(access_token_parse(p, body, len, &tok, &exp, err, sizeof err), -1);
    assert_null(tok);
    assert_int_equal(exp, 0);
    if (strstr(err, why) == NULL)
        fail_msg("%.60s: \"%s\" does not say \"%s\"", body, err, why);
    /* The message never repeats a token. */
    assert_null(strstr(err, "SECRET"));
}

static void parse_bad(enum token_profile p, const char *body, const char *why)
{
    parse_bad_len(p, body, strlen(body), why);
}

static void test_parse_answers(void **state)
{
    (void)state;
    parse_ok(PROFILE_MAPS, "{\"accessToken\":\"abc.DEF-_~+/=\",\"expiresInSeconds\":1800}",
             "abc.DEF-_~+/=", 1800);
    parse_ok(PROFILE_MAPS, " \r\n{\"expiresInSeconds\": 10, \"accessToken\": \"t\", \"x\": [1]}\n",
             "t", 10);
    parse_ok(PROFILE_APPLE_BUSINESS,
             "{\"access_token\":\"at\",\"token_type\":\"Bearer\",\"expires_in\":3600,"
             "\"scope\":\"business.api\"}",
             "at", 3600);
    /* RFC 6749 7.1: the token type is case-insensitive. */
    parse_ok(PROFILE_APPLE_BUSINESS,
             "{\"access_token\":\"at\",\"token_type\":\"bearer\",\"expires_in\":86400}", "at",
             86400);
}

/* docs/testing.md: every parser gets hostile input. Each case must be refused with its reason. */
static void test_parse_hostile(void **state)
{
    static char big[ACCESS_TOKEN_MAX_BODY + 2], longtok[ACCESS_TOKEN_MAX_LEN + 64];
    static char deep[4000];
    size_t i;

    (void)state;
    parse_bad(PROFILE_MAPS, "", "empty");
    parse_bad(PROFILE_MAPS, "<html>500</html>", "not JSON");
    parse_bad(PROFILE_MAPS, "[\"accessToken\"]", "not an object");
    parse_bad(PROFILE_MAPS, "\"SECRET\"", "not an object");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":1800}x",
              "data after");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":1800}{}",
              "data after");
    parse_bad(PROFILE_MAPS, "{\"expiresInSeconds\":1800}", "no accessToken");
    parse_bad(PROFILE_MAPS, "{\"accesstoken\":\"SECRET\",\"expiresInSeconds\":1800}",
              "no accessToken");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":null,\"expiresInSeconds\":1800}", "not a string");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":42,\"expiresInSeconds\":1800}", "not a string");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"\",\"expiresInSeconds\":1800}", "empty");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SEC RET\",\"expiresInSeconds\":1800}",
              "visible ASCII");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\\r\\nX-Injected: 1\",\"expiresInSeconds\":1800}",
              "visible ASCII");
    /* cJSON would end the string at the NUL and hand back a shortened token. */
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\\u0000x\",\"expiresInSeconds\":1800}",
              "NUL");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\\\\\\U0000\",\"expiresInSeconds\":1}",
              "NUL");
    parse_ok(PROFILE_MAPS, "{\"accessToken\":\"a\\\\u0000\",\"expiresInSeconds\":10}",
             "a\\u0000", 10);
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECR\xc3\xa9T\",\"expiresInSeconds\":1800}",
              "visible ASCII");
    parse_bad(PROFILE_MAPS,
              "{\"accessToken\":\"SECRET\",\"accessToken\":\"other\",\"expiresInSeconds\":1800}",
              "repeats");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\"}", "no expiresInSeconds");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":\"1800\"}",
              "not a number");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":0}", "is 0, outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":-1800}", "outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":9}", "outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":86401}", "outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":1800.5}", "outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":1e308}", "outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":1e999}", "outside");
    parse_bad(PROFILE_MAPS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":NaN}", "not JSON");
    parse_bad_len(PROFILE_MAPS, "{\"accessToken\":\"SECRET\"\0,\"expiresInSeconds\":1}", 40,
                  "NUL");
    parse_bad(PROFILE_APPLE_BUSINESS, "{\"access_token\":\"SECRET\",\"expires_in\":3600}",
              "token_type is missing");
    parse_bad(PROFILE_APPLE_BUSINESS,
              "{\"access_token\":\"SECRET\",\"token_type\":\"mac\",\"expires_in\":3600}",
              "not Bearer");
    parse_bad(PROFILE_APPLE_BUSINESS,
              "{\"access_token\":\"SECRET\",\"token_type\":[\"Bearer\"],\"expires_in\":3600}",
              "not Bearer");
    parse_bad(PROFILE_APPLE_BUSINESS,
              "{\"access_token\":\"SECRET\",\"token_type\":\"Bearer\",\"token_type\":\"Bearer\","
              "\"expires_in\":3600}",
              "repeats");
    /* The field names of the other profile do not count. */
    parse_bad(PROFILE_APPLE_BUSINESS, "{\"accessToken\":\"SECRET\",\"expiresInSeconds\":1800}",
              "no access_token");
    parse_bad(PROFILE_MUSIC, "{}", "does not exchange");

    memset(big, ' ', sizeof big);
    big[0] = '{';
    big[sizeof big - 1] = '}';
    parse_bad_len(PROFILE_MAPS, big, sizeof big, "limit");

    memcpy(longtok, "{\"accessToken\":\"", 16);
    for (i = 16; i < 16 + ACCESS_TOKEN_MAX_LEN + 1; i++)
        longtok[i] = 'A';
    strcpy(longtok + i, "\",\"expiresInSeconds\":1800}");
    parse_bad(PROFILE_MAPS, longtok, "longer than 8192");
    /* Exactly the limit is taken. */
    strcpy(longtok + i - 1, "\",\"expiresInSeconds\":1800}");
    {
        char *tok = NULL, err[256];
        long exp;

        assert_int_equal(access_token_parse(PROFILE_MAPS, longtok, strlen(longtok), &tok, &exp,
                                            err, sizeof err),
                         0);
        assert_int_equal(strlen(tok), ACCESS_TOKEN_MAX_LEN);
        free(tok);
    }

    /* Deep nesting: refused by cJSON's depth limit or parsed and ignored, never a crash. */
    for (i = 0; i < sizeof deep / 2 - 1; i++)
        deep[i] = '[';
    deep[i] = '\0';
    parse_bad(PROFILE_MAPS, deep, "not JSON");
}

/* Exchanged credentials in the token cache: a request never signs for them; the exchanger's
 * token is served until the expiry guard, due for refresh a third of its life early, and taken
 * over by the next configuration's cache. */
static void test_cache_exchanged(void **state)
{
    token_cache *cache = token_cache_new(300, fake_clock), *next = token_cache_new(300, fake_clock);
    struct credential c = maps_cred(), c2 = maps_cred();
    struct token *t;
    char err[256] = "";
    time_t exp = 1;

    (void)state;
    atomic_store(&fake_now, T0);
    assert_null(token_cache_get(cache, &c, NULL, 0, err, sizeof err));
    assert_string_equal(err, "credentials.maps: no access token yet");
    assert_int_equal(token_cache_due(cache, &c, &exp), 1);
    assert_int_equal(exp, 0);
    assert_int_equal(token_cache_mints(cache, &c), 0);
    /* The refresher never signs for it either. */
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), 0);

    assert_int_equal(token_cache_install(cache, &c, "access-1", 8, 1800), 0);
    t = token_cache_get(cache, &c, NULL, 0, err, sizeof err);
    assert_non_null(t);
    assert_string_equal(t->line, "Authorization: Bearer access-1\r\n");
    assert_int_equal(t->exp, T0 + 1800);
    token_put(t);
    assert_int_equal(token_cache_due(cache, &c, &exp), 0);
    assert_int_equal(exp, T0 + 1800);
    /* Due 300 s (the margin) before expiry; still served until 5 s before it. */
    atomic_store(&fake_now, T0 + 1500);
    assert_int_equal(token_cache_due(cache, &c, NULL), 1);
    atomic_store(&fake_now, T0 + 1794);
    t = token_cache_get(cache, &c, NULL, 0, err, sizeof err);
    assert_non_null(t);
    token_put(t);

    /* A reload: the new cache takes the valid token over. */
    assert_int_equal(token_cache_adopt(next, &c2, cache, &c), 1);
    t = token_cache_get(next, &c2, NULL, 0, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(t->jwt_len, 8);
    assert_memory_equal(t->jwt, "access-1", 8);
    token_put(t);
    assert_int_equal(token_cache_adopt(next, &c2, cache, &c), 0); /* it has one already */

    atomic_store(&fake_now, T0 + 1795);
    assert_null(token_cache_get(cache, &c, NULL, 0, err, sizeof err));

    /* A short-lived token: due a third of its life early, or at the 5-second guard when that
     * is earlier. */
    atomic_store(&fake_now, T0);
    assert_int_equal(token_cache_install(cache, &c, "access-2", 8, 30), 0);
    atomic_store(&fake_now, T0 + 19);
    assert_int_equal(token_cache_due(cache, &c, NULL), 0);
    atomic_store(&fake_now, T0 + 20);
    assert_int_equal(token_cache_due(cache, &c, NULL), 1);
    assert_int_equal(token_cache_install(cache, &c, "access-3", 8, 12), 0);
    atomic_store(&fake_now, T0 + 26);
    assert_int_equal(token_cache_due(cache, &c, NULL), 0);
    atomic_store(&fake_now, T0 + 27);
    assert_int_equal(token_cache_due(cache, &c, NULL), 1);
    token_cache_free(cache);
    token_cache_free(next);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_encode),
        cmocka_unit_test(test_maps_request),
        cmocka_unit_test(test_business_request),
        cmocka_unit_test(test_request_refused_for_signed_profiles),
        cmocka_unit_test(test_parse_answers),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_cache_exchanged),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
