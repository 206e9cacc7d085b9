/* jwt: compact JWS serialisation (RFC 7515 section 7.1) of a header and claims, signed ES256. */
#include "auth/jwt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/b64.h"
#include "auth/es256.h"
#include "auth/errbuf.h"

char *jwt_sign(const cJSON *header, const cJSON *claims, const apple_key *key, char *err,
               size_t errlen)
{
    char *h = NULL, *c = NULL, *jwt = NULL;
    uint8_t sig[ES256_SIG_LEN];
    size_t hlen, clen, total, o;

    if (header == NULL || claims == NULL || key == NULL) {
        errbuf_set(err, errlen, "JWT header, claims or key missing");
        goto fail;
    }
    h = cJSON_PrintUnformatted(header);
    c = cJSON_PrintUnformatted(claims);
    if (h == NULL || c == NULL) {
        errbuf_set(err, errlen, "out of memory serialising the JWT");
        goto fail;
    }
    hlen = strlen(h);
    clen = strlen(c);
    total = b64url_encoded_len(hlen) + 1 + b64url_encoded_len(clen) + 1 +
            b64url_encoded_len(ES256_SIG_LEN) + 1;
    jwt = malloc(total);
    if (jwt == NULL) {
        errbuf_set(err, errlen, "out of memory serialising the JWT");
        goto fail;
    }
    o = b64url_encode((const uint8_t *)h, hlen, jwt);
    jwt[o++] = '.';
    o += b64url_encode((const uint8_t *)c, clen, jwt + o);
    /* The signing input is the ASCII of the two encoded segments joined by '.' (RFC 7515 5.1). */
    if (es256_sign(key, (const uint8_t *)jwt, o, sig, err, errlen) != 0)
        goto fail;
    jwt[o++] = '.';
    b64url_encode(sig, sizeof sig, jwt + o);
    cJSON_free(h);
    cJSON_free(c);
    return jwt;
fail:
    free(jwt);
    cJSON_free(h);
    cJSON_free(c);
    return NULL;
}
