/* access_token: the token exchanges of the maps and apple-business profiles, without sockets:
 * the request that trades a signed token for an access token, and Apple's answer parsed. */
#ifndef AAP_AUTH_ACCESS_TOKEN_H
#define AAP_AUTH_ACCESS_TOKEN_H

#include <stddef.h>
#include <time.h>
#include "auth/profile.h"

/* Hard limits on Apple's answer; anything outside them is refused as malformed. */
#define ACCESS_TOKEN_MAX_BODY (64 * 1024) /* bytes of the answer's body */
#define ACCESS_TOKEN_MAX_LEN 8192         /* characters of the access token */
#define ACCESS_TOKEN_MIN_LIFE 10          /* seconds: an answer expiring sooner (or at 0) */
#define ACCESS_TOKEN_MAX_LIFE 86400       /* seconds: Apple says 1800 (maps), 3600 (business) */

/* Apple's token endpoints (the hosts the exchange connects to unless token_address says). */
#define MAPS_TOKEN_HOST "maps-api.apple.com"
#define MAPS_TOKEN_PATH "/v1/token"
#define BUSINESS_TOKEN_HOST "account.apple.com"
#define BUSINESS_TOKEN_PATH "/auth/oauth2/token"

/* One exchange request. Everything is owned by the struct and wiped by _deinit: the header
 * lines (maps) and the body (apple-business) carry the signed token. */
struct access_token_request {
    const char *method;  /* "GET" (maps) or "POST" (apple-business) */
    const char *host;    /* MAPS_TOKEN_HOST or BUSINESS_TOKEN_HOST */
    const char *path;    /* MAPS_TOKEN_PATH or BUSINESS_TOKEN_PATH */
    char *headers;       /* extra header lines, each "Name: value\r\n" */
    size_t headers_len;
    char *body;          /* the form (apple-business); NULL for maps */
    size_t body_len;
    char *assertion;     /* the signed token (maps auth token or business client assertion) */
};

/* Signs a new token for cred (maps or apple-business) at now and builds the request:
 *   maps:           GET /v1/token, "Authorization: Bearer <maps auth token>"
 *   apple-business: POST /auth/oauth2/token, form grant_type=client_credentials, client_id,
 *                   client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer,
 *                   client_assertion, scope
 * Returns 0, or -1 with err (rq is then empty). */
int access_token_request_build(const struct credential *cred, time_t now,
                               struct access_token_request *rq, char *err, size_t errlen);
/* Wipes and frees what rq holds. */
void access_token_request_deinit(struct access_token_request *rq);

/* application/x-www-form-urlencoded (the WHATWG URL standard's serializer): names and values
 * alternate in pairs (2 * npairs strings); ALPHA, DIGIT and "*-._" stay, a space becomes '+',
 * every other byte %XX. Returns the malloc'd form (NUL-terminated, length in *len) or NULL. */
char *form_encode(const char *const *pairs, size_t npairs, size_t *len);

/* Parses Apple's answer to an exchange (the body of a 200):
 *   maps:           {"accessToken": "...", "expiresInSeconds": 1800}
 *   apple-business: {"access_token": "...", "token_type": "Bearer", "expires_in": 3600, ...}
 * Keys are matched case-sensitively and must appear once; the token must be 1 to
 * ACCESS_TOKEN_MAX_LEN visible ASCII characters (it goes into a header line); the lifetime an
 * integer within ACCESS_TOKEN_MIN_LIFE..ACCESS_TOKEN_MAX_LIFE. Returns 0 with the token
 * (malloc'd, caller wipes and frees) and the lifetime, or -1 with err saying what was wrong
 * (never quoting the token). */
int access_token_parse(enum token_profile profile, const char *body, size_t len, char **token,
                       long *expires_in, char *err, size_t errlen);

#endif
