/* test_profiles: every profile's header and claims byte for byte, lifetimes at and over Apple's
 * maximums, and credential_validate's messages. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cjson/cJSON.h>

#include "auth/b64.h"
#include "auth/es256.h"
#include "auth/key.h"
#include "unit_key.h"
#include "auth/profile.h"

#define NOW    ((time_t)1700000000)
#define KID    "2X9R4HXF34"
#define ISS    "69a6de95-023f-47e3-e053-5b8c7c11a4d1"
#define TEAM   "DEF123GHIJ"
#define SVC    "com.example.weatherkit-client"
#define BUNDLE "com.example.app"
#define CLIENT "BUSINESSAPI.9703f56c-10ce-4876-8f59-e78e5e23a152"
#define BIZKID "d136aa66-0c3b-4bd4-9892-c20e8db024ab"

static apple_key *key;

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

static struct credential cred_for(enum token_profile p)
{
    struct credential c;

    memset(&c, 0, sizeof c);
    c.name = "test";
    c.profile = p;
    c.key_id = KID;
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key = key;
    switch (p) {
    case PROFILE_APP_STORE_CONNECT:
    case PROFILE_ENTERPRISE:
        c.issuer_id = ISS;
        break;
    case PROFILE_APP_STORE_SERVER:
        c.issuer_id = ISS;
        c.bundle_id = BUNDLE;
        break;
    case PROFILE_WEATHERKIT:
        c.team_id = TEAM;
        c.service_id = SVC;
        break;
    case PROFILE_MUSIC:
    case PROFILE_APNS:
    case PROFILE_DEVICECHECK:
    case PROFILE_MAPS:
        c.team_id = TEAM;
        break;
    case PROFILE_APPLE_BUSINESS:
        c.key_id = BIZKID;
        c.client_id = CLIENT;
        break;
    default:
        break;
    }
    return c;
}

/* Verifies the JWT's signature with OpenSSL over "header.claims" (raw R || S turned back into
 * DER independently) and returns the decoded header and claims JSON texts. */
static void decode_and_verify(const char *jwt, char **header, char **claims)
{
    const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    uint8_t *sig, *der = NULL;
    size_t hlen, clen, slen;
    ECDSA_SIG *es = ECDSA_SIG_new();
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int derlen;

    assert_non_null(d1);
    assert_non_null(d2);
    assert_null(strchr(d2 + 1, '.'));
    assert_null(strchr(jwt, '='));
    *header = (char *)b64url_decode(jwt, (size_t)(d1 - jwt), &hlen);
    *claims = (char *)b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &clen);
    sig = b64url_decode(d2 + 1, strlen(d2 + 1), &slen);
    assert_non_null(*header);
    assert_non_null(*claims);
    assert_non_null(sig);
    assert_int_equal(slen, ES256_SIG_LEN);
    assert_int_equal(ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL)),
                     1);
    derlen = i2d_ECDSA_SIG(es, &der);
    assert_true(derlen > 0);
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key_pkey(key)), 1);
    assert_int_equal(
        EVP_DigestVerify(ctx, der, (size_t)derlen, (const uint8_t *)jwt, (size_t)(d2 - jwt)), 1);
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    free(sig);
}

static void assert_token(const struct credential *c, const char *const *scope, size_t nscope,
                         const char *want_header, const char *want_claims, time_t want_exp)
{
    char err[256] = "", *header, *claims;
    time_t exp = 0;
    char *jwt = token_mint(c, scope, nscope, NOW, &exp, err, sizeof err);

    if (jwt == NULL)
        fail_msg("token_mint: %s", err);
    decode_and_verify(jwt, &header, &claims);
    assert_string_equal(header, want_header);
    assert_string_equal(claims, want_claims);
    assert_int_equal(exp, want_exp);
    free(header);
    free(claims);
    free(jwt);
}

static void test_app_store_connect_team_key(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_CONNECT);

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"iss\":\"" ISS "\",\"iat\":1699999940,\"exp\":1700001080,"
                 "\"aud\":\"appstoreconnect-v1\"}",
                 1700001080);
}

/* An individual key has no issuer: "sub":"user" takes the place of "iss". */
static void test_app_store_connect_individual_key(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_CONNECT);
    char err[256] = "";

    (void)state;
    c.issuer_id = NULL;
    assert_int_equal(credential_validate(&c, err, sizeof err), 0);
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"sub\":\"user\",\"iat\":1699999940,\"exp\":1700001080,"
                 "\"aud\":\"appstoreconnect-v1\"}",
                 1700001080);
}

static void test_app_store_connect_scope(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_CONNECT);
    char *own[] = {"GET /v1/apps?filter[platform]=IOS", "GET /v1/builds"};
    const char *route[] = {"GET /v1/apps"};
    const char *const hdr = "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}";

    (void)state;
    c.scope = own;
    c.nscope = 2;
    assert_token(&c, NULL, 0, hdr,
                 "{\"iss\":\"" ISS "\",\"iat\":1699999940,\"exp\":1700001080,"
                 "\"aud\":\"appstoreconnect-v1\","
                 "\"scope\":[\"GET /v1/apps?filter[platform]=IOS\",\"GET /v1/builds\"]}",
                 1700001080);
    /* A route's scope replaces the credential's. */
    assert_token(&c, route, 1, hdr,
                 "{\"iss\":\"" ISS "\",\"iat\":1699999940,\"exp\":1700001080,"
                 "\"aud\":\"appstoreconnect-v1\",\"scope\":[\"GET /v1/apps\"]}",
                 1700001080);
}

static void test_app_store_server(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_SERVER);

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"iss\":\"" ISS "\",\"iat\":1699999940,\"exp\":1700001740,"
                 "\"aud\":\"appstoreconnect-v1\",\"bid\":\"" BUNDLE "\"}",
                 1700001740);
}

/* WeatherKit: "id" in the header and "sub" in the claims, and nothing else (no typ, no aud). */
static void test_weatherkit(void **state)
{
    struct credential c = cred_for(PROFILE_WEATHERKIT);

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"id\":\"" TEAM "." SVC "\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940,\"exp\":1700001740,"
                 "\"sub\":\"" SVC "\"}",
                 1700001740);
}

static void test_enterprise(void **state)
{
    struct credential c = cred_for(PROFILE_ENTERPRISE);

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"iss\":\"" ISS "\",\"iat\":1699999940,\"exp\":1700001080,"
                 "\"aud\":\"apple-developer-enterprise-v1\"}",
                 1700001080);
}

/* APNs documents exactly {"alg","kid"} and {"iss","iat"}: no typ, no exp. */
static void test_apns(void **state)
{
    struct credential c = cred_for(PROFILE_APNS);
    char err[512] = "";

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940}", 1699999940 + 3600);
    assert_true(profile_team_token(PROFILE_APNS));
    assert_false(profile_team_token(PROFILE_MUSIC));
    assert_int_equal(credential_validate(&c, err, sizeof err), 0);
    /* The lifetime only says how long a token may still be served when a new one cannot be
     * signed: it has to outlast the 50 minutes after which the team's token is replaced. */
    c.lifetime = 3000 + TOKEN_DEFAULT_SKEW + 60;
    assert_int_equal(credential_validate(&c, err, sizeof err), 0);
    c.lifetime = 3000 + TOKEN_DEFAULT_SKEW + 59;
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "token_lifetime: 3119 is too short for APNs"));
}

static void test_music(void **state)
{
    struct credential c = cred_for(PROFILE_MUSIC);
    char *origin[] = {"https://example.com", "https://www.example.com"};

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940,\"exp\":1700043140}", 1700043140);
    c.origin = origin;
    c.norigin = 2;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940,\"exp\":1700043140,"
                 "\"origin\":[\"https://example.com\",\"https://www.example.com\"]}",
                 1700043140);
}

/* DeviceCheck: iss and iat only (Apple takes the token for an hour from iat; no exp claim). */
static void test_devicecheck(void **state)
{
    struct credential c = cred_for(PROFILE_DEVICECHECK);

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940}", 1699999940 + 1800);
}

/* Maps: typ JWT, and the one origin as a string. */
static void test_maps(void **state)
{
    struct credential c = cred_for(PROFILE_MAPS);
    char *origin[] = {"https://maps.example.com"}, *two[] = {"https://a.example", "https://b.example"};
    char err[256] = "";

    (void)state;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940,\"exp\":1700000540}", 1700000540);
    c.origin = origin;
    c.norigin = 1;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"iss\":\"" TEAM "\",\"iat\":1699999940,\"exp\":1700000540,"
                 "\"origin\":\"https://maps.example.com\"}",
                 1700000540);
    c.origin = two;
    c.norigin = 2;
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "credentials.test.origin: a maps token takes one origin"));
}

/* The apple-business client assertion: alg and kid only; sub, aud, iat, exp, jti, iss in
 * Apple's order, iss = sub = the client ID, and a new jti (a version 4 UUID) every time. */
static void test_apple_business_assertion(void **state)
{
    struct credential c = cred_for(PROFILE_APPLE_BUSINESS);
    char *h1, *c1, *h2, *c2, err[256] = "";
    char *j1 = token_mint(&c, NULL, 0, NOW, NULL, err, sizeof err);
    char *j2 = token_mint(&c, NULL, 0, NOW, NULL, err, sizeof err);
    cJSON *a, *b;
    const cJSON *it;
    static const char *const order[] = {"sub", "aud", "iat", "exp", "jti", "iss"};
    size_t i = 0;

    (void)state;
    assert_non_null(j1);
    assert_non_null(j2);
    decode_and_verify(j1, &h1, &c1);
    decode_and_verify(j2, &h2, &c2);
    assert_string_equal(h1, "{\"alg\":\"ES256\",\"kid\":\"" BIZKID "\"}");
    a = cJSON_Parse(c1);
    b = cJSON_Parse(c2);
    assert_non_null(a);
    assert_non_null(b);
    for (it = a->child; it != NULL; it = it->next, i++) {
        assert_true(i < 6);
        assert_string_equal(it->string, order[i]);
    }
    assert_int_equal(i, 6);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "iss")->valuestring, CLIENT);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "sub")->valuestring, CLIENT);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(a, "aud")->valuestring,
                        "https://account.apple.com/auth/oauth2/v2/token");
    assert_int_equal((long)cJSON_GetObjectItemCaseSensitive(a, "iat")->valuedouble, NOW - 60);
    assert_int_equal((long)cJSON_GetObjectItemCaseSensitive(a, "exp")->valuedouble, NOW - 60 + 600);
    {
        const char *jti = cJSON_GetObjectItemCaseSensitive(a, "jti")->valuestring;

        assert_int_equal(strlen(jti), 36);
        assert_int_equal(jti[14], '4');
        assert_string_not_equal(jti, cJSON_GetObjectItemCaseSensitive(b, "jti")->valuestring);
    }
    /* 180 days is the most Apple takes; a day more is refused. */
    c.lifetime = 180L * 86400;
    assert_int_equal(credential_validate(&c, err, sizeof err), 0);
    c.lifetime = 181L * 86400;
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    cJSON_Delete(a);
    cJSON_Delete(b);
    free(h1);
    free(c1);
    free(h2);
    free(c2);
    free(j1);
    free(j2);
}

/* The apple-business identifiers: client_id required, scope business.api or school.api, key IDs
 * in Apple Business Manager's UUID form (refused on other profiles). */
static void test_apple_business_validation(void **state)
{
    struct credential c = cred_for(PROFILE_APPLE_BUSINESS);
    char *school[] = {"school.api"}, *bad[] = {"business.api school.api"};
    char err[512] = "";

    (void)state;
    assert_string_equal(credential_oauth_scope(&c), "business.api");
    c.scope = school;
    c.nscope = 1;
    assert_int_equal(credential_validate(&c, err, sizeof err), 0);
    assert_string_equal(credential_oauth_scope(&c), "school.api");
    c.scope = bad;
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    c.scope = NULL;
    c.nscope = 0;
    c.client_id = NULL;
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "credentials.test.client_id: required by the apple-business"));
    c = cred_for(PROFILE_MAPS);
    c.key_id = BIZKID;
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "credentials.test.key_id: expected a 10-character Key ID"));
    c = cred_for(PROFILE_MUSIC);
    c.token_address_host = "127.0.0.1";
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "credentials.test.token_address: only the maps and"));
}

static void test_configured_skew_and_lifetime(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_CONNECT);

    (void)state;
    c.skew = 0;
    c.lifetime = 600;
    assert_token(&c, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"" KID "\",\"typ\":\"JWT\"}",
                 "{\"iss\":\"" ISS "\",\"iat\":1700000000,\"exp\":1700000600,"
                 "\"aud\":\"appstoreconnect-v1\"}",
                 1700000600);
}

static void test_names_and_limits(void **state)
{
    static const struct {
        const char *name;
        long max, def;
    } want[PROFILE_COUNT] = {
        [PROFILE_APP_STORE_CONNECT] = {"app-store-connect", 1200, 1140},
        [PROFILE_APP_STORE_SERVER] = {"app-store-server", 3600, 1800},
        [PROFILE_WEATHERKIT] = {"weatherkit", 3600, 1800},
        [PROFILE_ENTERPRISE] = {"enterprise", 1200, 1140},
        [PROFILE_MUSIC] = {"music", 15777000, 43200},
        [PROFILE_APNS] = {"apns", 3600, 3600},
        [PROFILE_DEVICECHECK] = {"devicecheck", 3600, 1800},
        [PROFILE_MAPS] = {"maps", 3600, 600},
        [PROFILE_APPLE_BUSINESS] = {"apple-business", 15552000, 600},
    };
    enum token_profile p, parsed;

    (void)state;
    for (p = 0; p < PROFILE_COUNT; p++) {
        assert_string_equal(profile_name(p), want[p].name);
        assert_int_equal(profile_parse(want[p].name, &parsed), 0);
        assert_int_equal(parsed, p);
        assert_int_equal(profile_max_lifetime(p), want[p].max);
        assert_int_equal(profile_default_lifetime(p), want[p].def);
        assert_true(profile_default_lifetime(p) <= profile_max_lifetime(p));
    }
    assert_null(profile_name(PROFILE_COUNT));
    assert_int_equal(profile_parse("maps-api", &parsed), -1);
    assert_true(profile_exchanged(PROFILE_MAPS));
    assert_true(profile_exchanged(PROFILE_APPLE_BUSINESS));
    assert_false(profile_exchanged(PROFILE_DEVICECHECK));
    assert_false(profile_exchanged(PROFILE_APP_STORE_CONNECT));
    assert_int_equal(profile_parse("App-Store-Connect", &parsed), -1);
    assert_int_equal(profile_parse("", &parsed), -1);
}

/* The fastlane bug: exp must stay at most 18 minutes ahead of now with the default skew, and
 * exp - iat within Apple's 20 minutes. */
static void test_default_lifetime_app_store_connect(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_CONNECT);
    char err[256];
    time_t exp = 0;
    char *jwt = token_mint(&c, NULL, 0, NOW, &exp, err, sizeof err);

    (void)state;
    assert_non_null(jwt);
    assert_true(exp - NOW <= 1080);
    assert_true(exp - (NOW - TOKEN_DEFAULT_SKEW) <= 1200);
    assert_int_equal(credential_lifetime(&c), 1140);
    free(jwt);
}

/* Every profile: exactly the maximum is accepted and minted, one second more is refused. */
static void test_lifetime_at_and_over_maximum(void **state)
{
    enum token_profile p;

    (void)state;
    for (p = 0; p < PROFILE_COUNT; p++) {
        struct credential c = cred_for(p);
        char err[512] = "", want[200];
        time_t exp = 0;
        char *jwt;

        c.name = "asc";
        c.lifetime = profile_max_lifetime(p);
        assert_int_equal(credential_validate(&c, err, sizeof err), 0);
        assert_string_equal(err, "");
        jwt = token_mint(&c, NULL, 0, NOW, &exp, err, sizeof err);
        assert_non_null(jwt);
        assert_int_equal(exp - (NOW - c.skew), profile_max_lifetime(p));
        free(jwt);

        c.lifetime = profile_max_lifetime(p) + 1;
        assert_int_equal(credential_validate(&c, err, sizeof err), 1);
        snprintf(want, sizeof want,
                 "credentials.asc.token_lifetime: %ld is above the %s maximum of %ld seconds",
                 c.lifetime, profile_name(p), profile_max_lifetime(p));
        assert_string_equal(err, want);
    }
}

static void test_valid_credentials_pass(void **state)
{
    enum token_profile p;

    (void)state;
    for (p = 0; p < PROFILE_COUNT; p++) {
        struct credential c = cred_for(p);
        char err[256] = "";

        assert_int_equal(credential_validate(&c, err, sizeof err), 0);
        assert_string_equal(err, "");
    }
}

static void test_app_store_server_without_bid_refused(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_SERVER);
    char err[256] = "";

    (void)state;
    c.bundle_id = NULL;
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "credentials.test.bundle_id: required"));
    err[0] = '\0';
    assert_null(token_mint(&c, NULL, 0, NOW, NULL, err, sizeof err));
    assert_non_null(strstr(err, "bundle_id"));
}

static void test_scope_on_other_profiles_refused(void **state)
{
    enum token_profile p;
    char *scope[] = {"GET /v1/apps"};
    const char *override[] = {"GET /v1/apps"};

    (void)state;
    for (p = 0; p < PROFILE_COUNT; p++) {
        struct credential c = cred_for(p);
        char err[256] = "";

        if (p == PROFILE_APP_STORE_CONNECT)
            continue;
        c.scope = scope;
        c.nscope = 1;
        assert_int_equal(credential_validate(&c, err, sizeof err), 1);
        if (p == PROFILE_APPLE_BUSINESS) {
            /* Its scope is the OAuth one, never in the assertion. */
            assert_non_null(strstr(err, "credentials.test.scope: expected [\"business.api\"]"));
            continue;
        }
        assert_non_null(strstr(err, "credentials.test.scope: only app-store-connect"));
        c.scope = NULL;
        c.nscope = 0;
        assert_null(token_mint(&c, override, 1, NOW, NULL, err, sizeof err));
        assert_non_null(strstr(err, "scope"));
    }
}

static void test_validate_messages(void **state)
{
    struct credential c = cred_for(PROFILE_WEATHERKIT);
    char *bad_scope[] = {"/v1/apps"};
    char *origin[] = {"https://example.com"};
    char err[1024] = "";

    (void)state;
    /* Several problems: one line each, all prefixed, counted. */
    c.service_id = NULL;
    c.issuer_id = ISS;
    c.skew = 301;
    c.key_id = "short";
    assert_int_equal(credential_validate(&c, err, sizeof err), 4);
    assert_non_null(strstr(err, "credentials.test.key_id: expected a 10-character Key ID"));
    assert_non_null(strstr(err, "\ncredentials.test.issuer_id: not used by the weatherkit"));
    assert_non_null(strstr(err, "\ncredentials.test.service_id: required by the weatherkit"));
    assert_non_null(strstr(err, "\ncredentials.test.clock_skew: 301 is outside 0..300"));

    /* Appends after what the caller already has. */
    strcpy(err, "earlier problem");
    c = cred_for(PROFILE_APP_STORE_CONNECT);
    c.scope = bad_scope;
    c.nscope = 1;
    c.origin = origin;
    c.norigin = 1;
    c.lifetime = -5;
    c.team_id = TEAM;
    assert_int_equal(credential_validate(&c, err, sizeof err), 4);
    assert_true(strncmp(err, "earlier problem\ncredentials.test.", 33) == 0);
    assert_non_null(strstr(err, "scope[0]: expected \"METHOD /path?query\""));
    assert_non_null(strstr(err, "origin: only music"));
    assert_non_null(strstr(err, "token_lifetime: -5 is not a positive"));
    assert_non_null(strstr(err, "team_id: not used by the app-store-connect profile"));

    /* A lifetime the skew would eat. */
    c = cred_for(PROFILE_ENTERPRISE);
    c.lifetime = 90;
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "credentials.test.token_lifetime: 90"));

    /* Missing identifiers for each profile. */
    c = cred_for(PROFILE_ENTERPRISE);
    c.issuer_id = NULL;
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, sizeof err), 1);
    assert_non_null(strstr(err, "issuer_id: required by the enterprise profile"));
    c = cred_for(PROFILE_MUSIC);
    c.team_id = NULL;
    c.key_id = NULL;
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, sizeof err), 2);
    assert_non_null(strstr(err, "key_id: required"));
    assert_non_null(strstr(err, "team_id: required by the music profile"));

    /* A tiny buffer truncates but still counts, and NULL is allowed. */
    c = cred_for(PROFILE_MUSIC);
    c.team_id = NULL;
    c.lifetime = 20000000;
    err[0] = '\0';
    assert_int_equal(credential_validate(&c, err, 8), 2);
    assert_true(strlen(err) < 8);
    assert_int_equal(credential_validate(&c, NULL, 0), 2);
}

static void test_mint_without_key_refused(void **state)
{
    struct credential c = cred_for(PROFILE_APP_STORE_CONNECT);
    char err[256] = "";

    (void)state;
    c.key = NULL;
    assert_null(token_mint(&c, NULL, 0, NOW, NULL, err, sizeof err));
    assert_non_null(strstr(err, "no private key"));
}

/* credential_deinit frees everything it owns (AddressSanitizer's leak check watches). */
static void test_credential_deinit(void **state)
{
    struct credential c;
    char err[256], *pem;
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    long n;

    (void)state;
    memset(&c, 0, sizeof c);
    c.name = strdup("asc");
    c.key_id = strdup(KID);
    c.issuer_id = strdup(ISS);
    c.scope = calloc(2, sizeof *c.scope);
    c.scope[0] = strdup("GET /v1/apps");
    c.scope[1] = strdup("GET /v1/builds");
    c.nscope = 2;
    PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL);
    n = BIO_get_mem_data(bio, &pem);
    assert_int_equal(key_load_pem(pem, (size_t)n, &c.key, err, sizeof err), 0);
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    credential_deinit(&c);
    assert_null(c.name);
    assert_null(c.key);
    credential_deinit(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_app_store_connect_team_key),
        cmocka_unit_test(test_app_store_connect_individual_key),
        cmocka_unit_test(test_app_store_connect_scope),
        cmocka_unit_test(test_app_store_server),
        cmocka_unit_test(test_weatherkit),
        cmocka_unit_test(test_enterprise),
        cmocka_unit_test(test_music),
        cmocka_unit_test(test_apns),
        cmocka_unit_test(test_configured_skew_and_lifetime),
        cmocka_unit_test(test_devicecheck),
        cmocka_unit_test(test_maps),
        cmocka_unit_test(test_apple_business_assertion),
        cmocka_unit_test(test_apple_business_validation),
        cmocka_unit_test(test_names_and_limits),
        cmocka_unit_test(test_default_lifetime_app_store_connect),
        cmocka_unit_test(test_lifetime_at_and_over_maximum),
        cmocka_unit_test(test_valid_credentials_pass),
        cmocka_unit_test(test_app_store_server_without_bid_refused),
        cmocka_unit_test(test_scope_on_other_profiles_refused),
        cmocka_unit_test(test_validate_messages),
        cmocka_unit_test(test_mint_without_key_refused),
        cmocka_unit_test(test_credential_deinit),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
