/* profile: Apple's token profiles (docs/tokens.md) and minting one token for a credential. */
#ifndef AAP_AUTH_PROFILE_H
#define AAP_AUTH_PROFILE_H

#include <stddef.h>
#include <time.h>
#include "auth/key.h"

enum token_profile {
    PROFILE_APP_STORE_CONNECT, /* "app-store-connect" */
    PROFILE_APP_STORE_SERVER,  /* "app-store-server" */
    PROFILE_WEATHERKIT,        /* "weatherkit" */
    PROFILE_ENTERPRISE,        /* "enterprise" */
    PROFILE_MUSIC,             /* "music" */
    PROFILE_APNS,              /* "apns": one token per team, replaced on APNs' schedule */
    PROFILE_DEVICECHECK,       /* "devicecheck" */
    PROFILE_MAPS,              /* "maps": the signed token is exchanged for an access token */
    PROFILE_APPLE_BUSINESS,    /* "apple-business": a client assertion, exchanged likewise */
    PROFILE_COUNT
};

#define TOKEN_DEFAULT_SKEW 60 /* seconds iat is backdated for clock skew */

/* A credential: one Apple key and the identifiers its profile needs. Filled by conf/, read-only
 * afterwards (shared by all threads). Strings are owned by the credential. */
struct credential {
    char *name;
    enum token_profile profile;
    char *key_id;     /* 10 characters */
    char *issuer_id;  /* app-store-connect (absent: individual key), app-store-server, enterprise */
    char *team_id;    /* weatherkit, music, apns, devicecheck, maps */
    char *service_id; /* weatherkit */
    char *bundle_id;  /* app-store-server (required) */
    char *client_id;  /* apple-business: "BUSINESSAPI.<uuid>" or "SCHOOLAPI.<uuid>" */
    char **scope;     /* app-store-connect: "METHOD /path?query" entries; apple-business: one
                         OAuth scope, "business.api" (the default) or "school.api" */
    size_t nscope;
    char **origin;    /* music (a list); maps (at most one) */
    size_t norigin;
    /* Exchanged profiles: where the token endpoint is reached instead of Apple's host, and the
     * CAs trusted for it (NULL: the system store), as "address" and "ca_file" on routes. */
    char *token_address_host;
    int token_address_port;
    char *token_ca_file;
    long lifetime;    /* exp - iat in seconds; 0 means the profile's default */
    long skew;        /* seconds iat is backdated; TOKEN_DEFAULT_SKEW unless configured */
    apple_key *key;   /* owned */
};

/* Whether the profile's signed token is traded for an access token (maps, apple-business):
 * the proxy never sends the signed token to the API itself. */
int profile_exchanged(enum token_profile p);

/* "app-store-connect" etc.; NULL for an out-of-range value. */
const char *profile_name(enum token_profile p);
/* Parses a profile name; returns -1 for an unknown one. */
int profile_parse(const char *name, enum token_profile *out);
/* The longest exp - iat Apple accepts for the profile (docs/tokens.md, "Profiles"):
 * app-store-connect 1200, app-store-server 3600, weatherkit 3600, enterprise 1200, music
 * 15777000, devicecheck 3600, maps 3600, apple-business 15552000 (180 days). */
long profile_max_lifetime(enum token_profile p);
/* The lifetime used when none is configured. Chosen so that exp stays at most 18 minutes ahead
 * of now for App Store Connect with the default skew: iat = now - skew, exp = iat + lifetime,
 * so the default is 18 * 60 + TOKEN_DEFAULT_SKEW = 1140 (<= 1200 with margin); others likewise
 * keep exp - iat under the maximum. */
long profile_default_lifetime(enum token_profile p);

/* APNs' schedule for provider tokens: Apple refuses a token older than an hour
 * (ExpiredProviderToken) and one replaced sooner than 20 minutes after the last
 * (TooManyProviderTokenUpdates). A team's token is replaced once it is 50 minutes old, and never
 * sooner than 20 minutes after the previous one, whatever asks for it. */
#define APNS_TOKEN_REFRESH_AGE 3000
#define APNS_TOKEN_MIN_AGE     1200
#define APNS_TOKEN_MAX_AGE     3600

/* 1 for profiles whose tokens belong to the team rather than the key: every credential of one
 * team shares one token (APNs cannot tell the keys of a team apart and counts every new token
 * of the team against its 20-minute rule). */
int profile_team_token(enum token_profile p);

/* The effective lifetime of a credential's tokens (cred->lifetime or the profile default). */
long credential_lifetime(const struct credential *cred);

/* Checks the credential's fields against its profile (required identifiers present, scope only
 * on app-store-connect, origin only on music, lifetime within 1..max, skew 0..300). Appends
 * one message per problem to err (each prefixed with "credentials.NAME."), returns the count. */
int credential_validate(const struct credential *cred, char *err, size_t errlen);

/* Mints a token. scope overrides cred->scope when non-NULL (nscope entries; app-store-connect
 * only). iat = now - skew, exp = iat + lifetime. Header and claims in Apple's documented order:
 *   app-store-connect: {"alg","kid","typ"} {"iss" | "sub":"user","iat","exp","aud","scope"?}
 *   app-store-server:  {"alg","kid","typ"} {"iss","iat","exp","aud","bid"}
 *   weatherkit:        {"alg","kid","id"}  {"iss","iat","exp","sub"}
 *   enterprise:        {"alg","kid","typ"} {"iss","iat","exp","aud"}
 *   music:             {"alg","kid"}       {"iss","iat","exp","origin"?}
 *   apns:              {"alg","kid"}       {"iss","iat"} (exactly: APNs takes no exp; *exp_out
 *                                          is iat + APNS_TOKEN_MAX_AGE, when APNs stops taking it)
 *   devicecheck:       {"alg","kid"}       {"iss","iat"}
 *   maps:              {"alg","kid","typ"} {"iss","iat","exp","origin"?}
 *   apple-business:    {"alg","kid"}       {"sub","aud","iat","exp","jti","iss"}
 * (the apple-business client assertion gets a fresh random jti on every call).
 * Returns the compact JWT (malloc'd, caller frees) and the exp in *exp_out, or NULL with err. */
char *token_mint(const struct credential *cred, const char *const *scope, size_t nscope,
                 time_t now, time_t *exp_out, char *err, size_t errlen);

/* The OAuth scope of an apple-business credential ("business.api" unless configured). */
const char *credential_oauth_scope(const struct credential *cred);

/* Frees the strings and key of a credential embedded in another struct (not the struct). */
void credential_deinit(struct credential *cred);

#endif
