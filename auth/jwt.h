/* jwt: compact JWS assembly (base64url(header) "." base64url(claims) "." base64url(sig)). */
#ifndef AAP_AUTH_JWT_H
#define AAP_AUTH_JWT_H

#include <cjson/cJSON.h>
#include "auth/key.h"

/* Serialises header and claims unformatted (cJSON_PrintUnformatted: keys in insertion order),
 * signs with ES256 and returns the compact JWT, malloc'd (caller frees), or NULL with err set. */
char *jwt_sign(const cJSON *header, const cJSON *claims, const apple_key *key, char *err,
               size_t errlen);

#endif
