/* profile: what each Apple API wants in its token (docs/tokens.md), checking credentials, minting. */
#include "auth/profile.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/rand.h>

#include "auth/errbuf.h"
#include "auth/jwt.h"
#include "auth/errbuf.h"

/* The longest clock-skew backdating accepted: beyond five minutes the clock is wrong, and
 * backdating further only eats into the lifetime Apple allows. */
#define PROFILE_MAX_SKEW 300
/* A token must live at least this long after the skew is taken off, or the cache would re-sign
 * on nearly every request. */
#define PROFILE_MIN_USEFUL_LIFE 60

struct profile_info {
    const char *name;
    long max_lifetime;
    long default_lifetime;
};

/* Maximums are Apple's (docs/tokens.md, "Profiles"). Defaults keep exp - iat under the maximum with a margin:
 * App Store Connect also compares exp with its own clock, so 18 minutes ahead of now at most
 * (1140 - 60 s of skew = 1080). WeatherKit documents no maximum; one hour is what Apple's sample
 * code uses, and half of it keeps a revoked key's tokens short-lived. Music allows six months;
 * twelve hours is long enough to be cheap and short enough to limit a leaked token. */
static const struct profile_info profile_table[PROFILE_COUNT] = {
    [PROFILE_APP_STORE_CONNECT] = {"app-store-connect", 1200, 18 * 60 + TOKEN_DEFAULT_SKEW},
    [PROFILE_APP_STORE_SERVER] = {"app-store-server", 3600, 1800},
    [PROFILE_WEATHERKIT] = {"weatherkit", 3600, 1800},
    [PROFILE_ENTERPRISE] = {"enterprise", 1200, 18 * 60 + TOKEN_DEFAULT_SKEW},
    [PROFILE_MUSIC] = {"music", 15777000, 43200},
    /* APNs tokens carry no exp: the "lifetime" is how long APNs takes one from its iat. It is
     * fixed, and the token cache replaces the token on APNs' schedule (APNS_TOKEN_*). */
    [PROFILE_APNS] = {"apns", APNS_TOKEN_MAX_AGE, APNS_TOKEN_MAX_AGE},
    /* DeviceCheck takes a token for an hour from its iat (it has no exp claim). */
    [PROFILE_DEVICECHECK] = {"devicecheck", 3600, 1800},
    /* The exchanged profiles sign a new token for each exchange, so it only has to outlive
     * the exchange: ten minutes. Apple allows a client assertion up to 180 days. */
    [PROFILE_MAPS] = {"maps", 3600, 600},
    [PROFILE_APPLE_BUSINESS] = {"apple-business", 180L * 86400, 600},
};

/* The audience Apple's token endpoint wants in a client assertion (it differs from the URL the
 * assertion is posted to: that one has no "/v2"). */
#define BUSINESS_AUDIENCE "https://account.apple.com/auth/oauth2/v2/token"
#define BUSINESS_DEFAULT_SCOPE "business.api"
/* Apple Business Manager client IDs are "BUSINESSAPI.<uuid>" or "SCHOOLAPI.<uuid>". */
#define CLIENT_ID_MAX 200

int profile_exchanged(enum token_profile p)
{
    return p == PROFILE_MAPS || p == PROFILE_APPLE_BUSINESS;
}

static int profile_valid(enum token_profile p)
{
    return (int)p >= 0 && p < PROFILE_COUNT;
}

int profile_team_token(enum token_profile p)
{
    return p == PROFILE_APNS;
}

const char *profile_name(enum token_profile p)
{
    return profile_valid(p) ? profile_table[p].name : NULL;
}

int profile_parse(const char *name, enum token_profile *out)
{
    int i;

    if (name == NULL)
        return -1;
    for (i = 0; i < PROFILE_COUNT; i++) {
        if (strcmp(name, profile_table[i].name) == 0) {
            *out = (enum token_profile)i;
            return 0;
        }
    }
    return -1;
}

long profile_max_lifetime(enum token_profile p)
{
    return profile_valid(p) ? profile_table[p].max_lifetime : 0;
}

long profile_default_lifetime(enum token_profile p)
{
    return profile_valid(p) ? profile_table[p].default_lifetime : 0;
}

long credential_lifetime(const struct credential *cred)
{
    return cred->lifetime > 0 ? cred->lifetime : profile_default_lifetime(cred->profile);
}

/* Appends "credentials.NAME.<message>" to err, one problem per line, and counts it. */
__attribute__((format(printf, 5, 6))) static void cv_add(int *count, char *err, size_t errlen,
                                                         const char *name, const char *fmt, ...)
{
    va_list ap;
    size_t used;
    int n;

    (*count)++;
    if (err == NULL || errlen == 0)
        return;
    used = strnlen(err, errlen);
    if (used >= errlen - 1)
        return;
    if (used > 0 && err[used - 1] != '\n') {
        err[used++] = '\n';
        err[used] = '\0';
    }
    n = snprintf(err + used, errlen - used, "credentials.%s.", name != NULL ? name : "?");
    if (n < 0 || (size_t)n >= errlen - used)
        return;
    used += (size_t)n;
    va_start(ap, fmt);
    vsnprintf(err + used, errlen - used, fmt, ap);
    va_end(ap);
}

static int is_present(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* Apple's Key IDs and Team IDs are 10 upper-case letters and digits. */
static int is_apple_id(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!isupper((unsigned char)s[i]) && !isdigit((unsigned char)s[i]))
            return 0;
    return i == 10;
}

/* Apple Business Manager shows its key IDs as UUIDs; other Apple keys have 10-character IDs.
 * Either way they go into a JSON header, so only letters, digits and '-' are accepted. */
static int is_business_key_id(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return 0;
    return i > 0 && i <= 64;
}

static int has_control(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    return 0;
}

/* A scope entry is "METHOD /path?query" (docs/tokens.md, "app-store-connect"): an upper-case method, one space, a path. */
static int is_scope_entry(const char *s)
{
    const char *p = s;

    while (isupper((unsigned char)*p))
        p++;
    if (p == s || *p != ' ' || p[1] != '/')
        return 0;
    for (p++; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

/* Checks one identifier: required, optional or not used by the profile. */
static void cv_ident(int *count, char *err, size_t errlen, const struct credential *cred,
                     const char *field, const char *value, int need, const char *what)
{
    const char *pname = profile_name(cred->profile);

    if (need == 0) {
        if (value != NULL)
            cv_add(count, err, errlen, cred->name, "%s: not used by the %s profile", field, pname);
        return;
    }
    if (value == NULL) {
        if (need == 2)
            cv_add(count, err, errlen, cred->name, "%s: required by the %s profile (%s)", field,
                   pname, what);
        return;
    }
    if (!is_present(value) || has_control(value))
        cv_add(count, err, errlen, cred->name, "%s: expected %s", field, what);
}

int credential_validate(const struct credential *cred, char *err, size_t errlen)
{
    int count = 0;
    enum token_profile p = cred->profile;
    const char *pname = profile_name(p);
    int asc = p == PROFILE_APP_STORE_CONNECT;
    int business = p == PROFILE_APPLE_BUSINESS;
    int team = p == PROFILE_WEATHERKIT || p == PROFILE_MUSIC || p == PROFILE_APNS ||
               p == PROFILE_DEVICECHECK ||
               p == PROFILE_MAPS;
    size_t i;

    if (!profile_valid(p)) {
        cv_add(&count, err, errlen, cred->name, "profile: unknown profile");
        return count;
    }
    if (!is_present(cred->key_id))
        cv_add(&count, err, errlen, cred->name,
               "key_id: required (the 10-character Key ID of "
               "the .p8 key)");
    else if (business ? !is_business_key_id(cred->key_id) : !is_apple_id(cred->key_id))
        cv_add(&count, err, errlen, cred->name,
               business ? "key_id: expected the Key ID Apple Business Manager shows for the key "
                          "(letters, digits and '-')"
                        : "key_id: expected a 10-character Key ID such as 2X9R4HXF34");
    cv_ident(&count, err, errlen, cred, "issuer_id", cred->issuer_id,
             asc                                                          ? 1
             : (p == PROFILE_APP_STORE_SERVER || p == PROFILE_ENTERPRISE) ? 2
                                                                          : 0,
             "the Issuer ID shown above the key list, a UUID");
    cv_ident(&count, err, errlen, cred, "team_id", cred->team_id, team ? 2 : 0,
             "the 10-character Team ID");
    if (is_present(cred->team_id) && !has_control(cred->team_id) && !is_apple_id(cred->team_id) &&
        team)
        cv_add(&count, err, errlen, cred->name, "team_id: expected a 10-character Team ID");
    cv_ident(&count, err, errlen, cred, "service_id", cred->service_id,
             p == PROFILE_WEATHERKIT ? 2 : 0, "the Services ID, e.g. com.example.weather-client");
    cv_ident(&count, err, errlen, cred, "bundle_id", cred->bundle_id,
             p == PROFILE_APP_STORE_SERVER ? 2 : 0, "the app's bundle ID, e.g. com.example.app");

    cv_ident(&count, err, errlen, cred, "client_id", cred->client_id, business ? 2 : 0,
             "the client ID Apple Business Manager shows, e.g. BUSINESSAPI.9703f56c-...");
    if (business && is_present(cred->client_id) && strlen(cred->client_id) > CLIENT_ID_MAX)
        cv_add(&count, err, errlen, cred->name, "client_id: longer than %d characters",
               CLIENT_ID_MAX);
    if (!profile_exchanged(p) && cred->token_address_host != NULL)
        cv_add(&count, err, errlen, cred->name,
               "token_address: only the maps and apple-business profiles exchange tokens, not %s",
               pname);
    if (!profile_exchanged(p) && cred->token_ca_file != NULL)
        cv_add(&count, err, errlen, cred->name,
               "token_ca_file: only the maps and apple-business profiles exchange tokens, not %s",
               pname);

    if (business) {
        if (cred->nscope > 1 ||
            (cred->nscope == 1 && (cred->scope[0] == NULL ||
                                   (strcmp(cred->scope[0], "business.api") != 0 &&
                                    strcmp(cred->scope[0], "school.api") != 0))))
            cv_add(&count, err, errlen, cred->name,
                   "scope: expected [\"business.api\"] (Apple Business Manager) or "
                   "[\"school.api\"] (Apple School Manager)");
    } else if (cred->nscope > 0 && !asc)
        cv_add(&count, err, errlen, cred->name,
               "scope: only app-store-connect and apple-business credentials take a "
               "scope, not %s",
               pname);
    else
        for (i = 0; i < cred->nscope; i++)
            if (cred->scope[i] == NULL || !is_scope_entry(cred->scope[i]))
                cv_add(&count, err, errlen, cred->name,
                       "scope[%zu]: expected \"METHOD /path?query\", e.g. \"GET /v1/apps\"", i);
    if (cred->norigin > 0 && p != PROFILE_MUSIC && p != PROFILE_MAPS)
        cv_add(&count, err, errlen, cred->name,
               "origin: only music and maps tokens take an origin, not %s", pname);
    else if (cred->norigin > 1 && p == PROFILE_MAPS)
        cv_add(&count, err, errlen, cred->name,
               "origin: a maps token takes one origin, not %zu", cred->norigin);
    else
        for (i = 0; i < cred->norigin; i++)
            if (!is_present(cred->origin[i]) || has_control(cred->origin[i]))
                cv_add(&count, err, errlen, cred->name,
                       "origin[%zu]: expected a web origin such as https://example.com", i);

    /* An APNs token has no exp: its lifetime is how long the proxy may still serve it when a
     * replacement cannot be signed, so it must outlast the 50 minutes after which the team's
     * token is replaced (iat is backdated by the skew, and a minute of margin). */
    if (p == PROFILE_APNS && cred->lifetime > 0 && cred->lifetime <= profile_max_lifetime(p) &&
        cred->lifetime < APNS_TOKEN_REFRESH_AGE + cred->skew + 60)
        cv_add(&count, err, errlen, cred->name,
               "token_lifetime: %ld is too short for APNs, whose tokens are replaced when 50 "
               "minutes old; use at least %ld (or leave it out: %d)",
               cred->lifetime, APNS_TOKEN_REFRESH_AGE + cred->skew + 60, APNS_TOKEN_MAX_AGE);
    else if (cred->lifetime < 0)
        cv_add(&count, err, errlen, cred->name,
               "token_lifetime: %ld is not a positive number of seconds", cred->lifetime);
    else if (cred->lifetime > profile_max_lifetime(p))
        cv_add(&count, err, errlen, cred->name,
               "token_lifetime: %ld is above the %s maximum of %ld seconds", cred->lifetime, pname,
               profile_max_lifetime(p));
    if (cred->skew < 0 || cred->skew > PROFILE_MAX_SKEW)
        cv_add(&count, err, errlen, cred->name, "clock_skew: %ld is outside 0..%d seconds",
               cred->skew, PROFILE_MAX_SKEW);
    else if (cred->lifetime >= 0 && cred->lifetime <= profile_max_lifetime(p) &&
             credential_lifetime(cred) - cred->skew < PROFILE_MIN_USEFUL_LIFE)
        cv_add(&count, err, errlen, cred->name,
               "token_lifetime: %ld less the %ld-second clock-skew backdating leaves tokens "
               "under %d seconds of life; use at least %ld",
               credential_lifetime(cred), cred->skew, PROFILE_MIN_USEFUL_LIFE,
               cred->skew + PROFILE_MIN_USEFUL_LIFE);
    return count;
}

static const char *cred_name(const struct credential *cred)
{
    return cred->name != NULL ? cred->name : "?";
}

/* The identifiers token_mint cannot do without; credential_validate gives the full story. */
static const char *mint_missing(const struct credential *cred)
{
    if (!is_present(cred->key_id))
        return "key_id";
    switch (cred->profile) {
    case PROFILE_APP_STORE_SERVER:
        if (!is_present(cred->bundle_id))
            return "bundle_id";
        /* fall through */
    case PROFILE_ENTERPRISE:
        return is_present(cred->issuer_id) ? NULL : "issuer_id";
    case PROFILE_WEATHERKIT:
        if (!is_present(cred->service_id))
            return "service_id";
        /* fall through */
    case PROFILE_MUSIC:
    case PROFILE_APNS:
    case PROFILE_DEVICECHECK:
    case PROFILE_MAPS:
        return is_present(cred->team_id) ? NULL : "team_id";
    case PROFILE_APPLE_BUSINESS:
        return is_present(cred->client_id) ? NULL : "client_id";
    default:
        return NULL;
    }
}

/* A random (version 4) UUID: Apple refuses a client assertion whose jti it has seen before. */
static int business_jti(char out[37])
{
    unsigned char r[16];

    if (RAND_bytes(r, sizeof r) != 1)
        return -1;
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0],
             r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
             r[14], r[15]);
    return 0;
}

static int mint_add_strings(cJSON *obj, const char *name, const char *const *v, size_t n)
{
    cJSON *arr = cJSON_AddArrayToObject(obj, name);
    size_t i;

    if (arr == NULL)
        return 0;
    for (i = 0; i < n; i++)
        if (v[i] == NULL || !cJSON_AddItemToArray(arr, cJSON_CreateString(v[i])))
            return 0;
    return 1;
}

char *token_mint(const struct credential *cred, const char *const *scope, size_t nscope, time_t now,
                 time_t *exp_out, char *err, size_t errlen)
{
    cJSON *h = NULL, *c = NULL;
    char *jwt = NULL, *id = NULL;
    const char *missing;
    enum token_profile p;
    time_t iat, exp;
    int ok = 1;

    if (cred == NULL || !profile_valid(cred->profile)) {
        errbuf_set(err, errlen, "no credential or unknown profile");
        goto out;
    }
    p = cred->profile;
    if (cred->key == NULL) {
        errbuf_set(err, errlen, "credentials.%s: no private key loaded", cred_name(cred));
        goto out;
    }
    missing = mint_missing(cred);
    if (missing != NULL) {
        errbuf_set(err, errlen, "credentials.%s.%s: required by the %s profile", cred_name(cred),
                 missing, profile_name(p));
        goto out;
    }
    if (scope == NULL) {
        scope = (const char *const *)cred->scope;
        nscope = cred->nscope;
    }
    /* The apple-business scope goes into the exchange's form, never into the assertion. */
    if (p == PROFILE_APPLE_BUSINESS)
        nscope = 0;
    if (nscope > 0 && p != PROFILE_APP_STORE_CONNECT) {
        errbuf_set(err, errlen, "credentials.%s: only app-store-connect tokens take a scope",
                 cred_name(cred));
        goto out;
    }
    /* Backdate iat for clocks that run ahead of Apple's, and measure the lifetime from iat so
     * that exp - iat never exceeds what Apple accepts (the fastlane 1260-second bug). */
    iat = now - cred->skew;
    exp = iat + credential_lifetime(cred);

    h = cJSON_CreateObject();
    c = cJSON_CreateObject();
    if (h == NULL || c == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    ok &= cJSON_AddStringToObject(h, "alg", "ES256") != NULL;
    ok &= cJSON_AddStringToObject(h, "kid", cred->key_id) != NULL;
    if (p == PROFILE_WEATHERKIT) {
        size_t n = strlen(cred->team_id) + 1 + strlen(cred->service_id) + 1;

        id = malloc(n);
        if (id == NULL) {
            errbuf_set(err, errlen, "out of memory");
            goto out;
        }
        snprintf(id, n, "%s.%s", cred->team_id, cred->service_id);
        ok &= cJSON_AddStringToObject(h, "id", id) != NULL;
    } else if (p != PROFILE_MUSIC && p != PROFILE_APNS && p != PROFILE_DEVICECHECK &&
               p != PROFILE_APPLE_BUSINESS) {
        ok &= cJSON_AddStringToObject(h, "typ", "JWT") != NULL;
    }

    if (p == PROFILE_APPLE_BUSINESS) {
        /* Apple's order: sub, aud, iat, exp, jti, iss; iss and sub are both the client ID. */
        char jti[37];

        if (business_jti(jti) != 0) {
            errbuf_set(err, errlen, "no random bytes for the assertion's jti");
            goto out;
        }
        ok &= cJSON_AddStringToObject(c, "sub", cred->client_id) != NULL;
        ok &= cJSON_AddStringToObject(c, "aud", BUSINESS_AUDIENCE) != NULL;
        ok &= cJSON_AddNumberToObject(c, "iat", (double)iat) != NULL;
        ok &= cJSON_AddNumberToObject(c, "exp", (double)exp) != NULL;
        ok &= cJSON_AddStringToObject(c, "jti", jti) != NULL;
        ok &= cJSON_AddStringToObject(c, "iss", cred->client_id) != NULL;
    } else {
        /* An individual App Store Connect key has no issuer: Apple wants "sub":"user". */
        if (p == PROFILE_APP_STORE_CONNECT && !is_present(cred->issuer_id))
            ok &= cJSON_AddStringToObject(c, "sub", "user") != NULL;
        else if (p == PROFILE_WEATHERKIT || p == PROFILE_MUSIC || p == PROFILE_APNS ||
                 p == PROFILE_DEVICECHECK || p == PROFILE_MAPS)
            ok &= cJSON_AddStringToObject(c, "iss", cred->team_id) != NULL;
        else
            ok &= cJSON_AddStringToObject(c, "iss", cred->issuer_id) != NULL;
        ok &= cJSON_AddNumberToObject(c, "iat", (double)iat) != NULL;
        /* APNs and DeviceCheck document exactly iss and iat: they judge the age from iat. */
        if (p != PROFILE_APNS && p != PROFILE_DEVICECHECK)
            ok &= cJSON_AddNumberToObject(c, "exp", (double)exp) != NULL;
    }
    switch (p) {
    case PROFILE_APP_STORE_CONNECT:
        ok &= cJSON_AddStringToObject(c, "aud", "appstoreconnect-v1") != NULL;
        if (nscope > 0)
            ok &= mint_add_strings(c, "scope", scope, nscope);
        break;
    case PROFILE_APP_STORE_SERVER:
        ok &= cJSON_AddStringToObject(c, "aud", "appstoreconnect-v1") != NULL;
        ok &= cJSON_AddStringToObject(c, "bid", cred->bundle_id) != NULL;
        break;
    case PROFILE_WEATHERKIT:
        ok &= cJSON_AddStringToObject(c, "sub", cred->service_id) != NULL;
        break;
    case PROFILE_ENTERPRISE:
        ok &= cJSON_AddStringToObject(c, "aud", "apple-developer-enterprise-v1") != NULL;
        break;
    case PROFILE_MUSIC:
        if (cred->norigin > 0)
            ok &= mint_add_strings(c, "origin", (const char *const *)cred->origin, cred->norigin);
        break;
    case PROFILE_MAPS:
        /* Maps takes one origin, as a string (the web page the token is for). */
        if (cred->norigin > 0)
            ok &= cJSON_AddStringToObject(c, "origin", cred->origin[0]) != NULL;
        break;
    default:
        break;
    }
    if (!ok) {
        errbuf_set(err, errlen, "out of memory building the token");
        goto out;
    }
    jwt = jwt_sign(h, c, cred->key, err, errlen);
    if (jwt != NULL && exp_out != NULL)
        *exp_out = exp;
out:
    free(id);
    cJSON_Delete(h);
    cJSON_Delete(c);
    return jwt;
}

static void free_strings(char **v, size_t n)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

const char *credential_oauth_scope(const struct credential *cred)
{
    return cred->nscope > 0 && cred->scope[0] != NULL ? cred->scope[0] : BUSINESS_DEFAULT_SCOPE;
}

void credential_deinit(struct credential *cred)
{
    if (cred == NULL)
        return;
    free(cred->client_id);
    free(cred->token_address_host);
    free(cred->token_ca_file);
    free(cred->name);
    free(cred->key_id);
    free(cred->issuer_id);
    free(cred->team_id);
    free(cred->service_id);
    free(cred->bundle_id);
    free_strings(cred->scope, cred->nscope);
    free_strings(cred->origin, cred->norigin);
    key_free(cred->key);
    memset(cred, 0, sizeof *cred);
}
