/* access_token: building the maps and apple-business token exchanges and parsing the answers. */
#include "auth/access_token.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include "auth/errbuf.h"

#define BEARER_LINE_PREFIX "Authorization: Bearer "

static void wipe_free(char *p, size_t n)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, n);
    free(p);
}

static int form_keeps(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '*' || ch == '-' || ch == '.' || ch == '_';
}

char *form_encode(const char *const *pairs, size_t npairs, size_t *len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, n = 0, at = 0;
    const unsigned char *p;
    char *out;

    for (i = 0; i < 2 * npairs; i++) {
        if (pairs[i] == NULL)
            return NULL;
        for (p = (const unsigned char *)pairs[i]; *p != '\0'; p++)
            n += form_keeps(*p) || *p == ' ' ? 1 : 3;
        n++; /* '=' or '&' */
    }
    out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    for (i = 0; i < 2 * npairs; i++) {
        if (i > 0)
            out[at++] = (i % 2) ? '=' : '&';
        for (p = (const unsigned char *)pairs[i]; *p != '\0'; p++) {
            if (form_keeps(*p)) {
                out[at++] = (char)*p;
            } else if (*p == ' ') {
                out[at++] = '+';
            } else {
                out[at++] = '%';
                out[at++] = hex[*p >> 4];
                out[at++] = hex[*p & 15];
            }
        }
    }
    out[at] = '\0';
    if (len != NULL)
        *len = at;
    return out;
}

int access_token_request_build(const struct credential *cred, time_t now,
                               struct access_token_request *rq, char *err, size_t errlen)
{
    time_t exp = 0;
    size_t n;

    memset(rq, 0, sizeof *rq);
    if (cred == NULL || !profile_exchanged(cred->profile)) {
        errbuf_set(err, errlen, "the credential's profile does not exchange tokens");
        return -1;
    }
    rq->assertion = token_mint(cred, NULL, 0, now, &exp, err, errlen);
    if (rq->assertion == NULL)
        return -1;
    if (cred->profile == PROFILE_MAPS) {
        rq->method = "GET";
        rq->host = MAPS_TOKEN_HOST;
        rq->path = MAPS_TOKEN_PATH;
        n = sizeof BEARER_LINE_PREFIX - 1 + strlen(rq->assertion) + 2;
        rq->headers = malloc(n + 1);
        if (rq->headers == NULL)
            goto oom;
        snprintf(rq->headers, n + 1, "%s%s\r\n", BEARER_LINE_PREFIX, rq->assertion);
        rq->headers_len = n;
        return 0;
    }
    {
        /* RFC 7523 2.2 and Apple's "Implementing OAuth for the Apple School and Business
         * Manager API": the assertion authenticates the client; the scope picks the API. */
        const char *pairs[] = {
            "grant_type",            "client_credentials",
            "client_id",             cred->client_id,
            "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion",      rq->assertion,
            "scope",                 credential_oauth_scope(cred),
        };
        static const char ctype[] = "Content-Type: application/x-www-form-urlencoded\r\n";

        rq->method = "POST";
        rq->host = BUSINESS_TOKEN_HOST;
        rq->path = BUSINESS_TOKEN_PATH;
        rq->body = form_encode(pairs, sizeof pairs / sizeof pairs[0] / 2, &rq->body_len);
        rq->headers = strdup(ctype);
        if (rq->body == NULL || rq->headers == NULL)
            goto oom;
        rq->headers_len = sizeof ctype - 1;
        return 0;
    }
oom:
    access_token_request_deinit(rq);
    errbuf_set(err, errlen, "out of memory");
    return -1;
}

void access_token_request_deinit(struct access_token_request *rq)
{
    if (rq == NULL)
        return;
    wipe_free(rq->headers, rq->headers ? strlen(rq->headers) : 0);
    wipe_free(rq->body, rq->body_len);
    wipe_free(rq->assertion, rq->assertion ? strlen(rq->assertion) : 0);
    memset(rq, 0, sizeof *rq);
}

/* The one member named `name`, or NULL with *dup set when it appears more than once: with two
 * "accessToken" members, which one Apple meant is anyone's guess. */
static const cJSON *at_member(const cJSON *obj, const char *name, int *dup)
{
    const cJSON *it, *found = NULL;

    for (it = obj->child; it != NULL; it = it->next) {
        if (it->string == NULL || strcmp(it->string, name) != 0)
            continue;
        if (found != NULL) {
            *dup = 1;
            return NULL;
        }
        found = it;
    }
    return found;
}

/* Whether the JSON text escapes a NUL (\u0000): cJSON's strings end at it, so a token holding one
 * would be cut short without a word. An escaped backslash before "u0000" does not count. */
static int at_escaped_nul(const char *body, size_t len)
{
    size_t i, run = 0;

    for (i = 0; i < len; i++) {
        if (body[i] == '\\') {
            run++;
            continue;
        }
        if (run % 2 == 1 && len - i >= 5 && (body[i] == 'u' || body[i] == 'U') &&
            memcmp(body + i + 1, "0000", 4) == 0)
            return 1;
        run = 0;
    }
    return 0;
}

static int at_token_ok(const char *s, size_t *len)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (i >= ACCESS_TOKEN_MAX_LEN)
            return 0;
        /* Visible ASCII only: the token is written into a header line. */
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    }
    *len = i;
    return i > 0;
}

int access_token_parse(enum token_profile profile, const char *body, size_t len, char **token,
                       long *expires_in, char *err, size_t errlen)
{
    const char *tname = NULL, *ename = NULL;
    const cJSON *t, *e, *type;
    const char *end = NULL;
    cJSON *root = NULL;
    size_t tlen, i;
    int dup = 0, rc = -1;
    double v;

    *token = NULL;
    *expires_in = 0;
    if (profile == PROFILE_MAPS) {
        tname = "accessToken";
        ename = "expiresInSeconds";
    } else if (profile == PROFILE_APPLE_BUSINESS) {
        tname = "access_token";
        ename = "expires_in";
    } else {
        errbuf_set(err, errlen, "the profile does not exchange tokens");
        goto out;
    }
    if (len > ACCESS_TOKEN_MAX_BODY) {
        errbuf_set(err, errlen, "the answer has %zu bytes (limit %d)", len, ACCESS_TOKEN_MAX_BODY);
        goto out;
    }
    if (len == 0 || memchr(body, '\0', len) != NULL || at_escaped_nul(body, len)) {
        errbuf_set(err, errlen, len == 0 ? "the answer is empty" : "the answer holds a NUL byte");
        goto out;
    }
    root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root == NULL) {
        errbuf_set(err, errlen, "the answer is not JSON");
        goto out;
    }
    for (i = (size_t)(end - body); i < len; i++)
        if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r' && body[i] != '\n') {
            errbuf_set(err, errlen, "the answer has data after its JSON object");
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        errbuf_set(err, errlen, "the answer is JSON but not an object");
        goto out;
    }
    t = at_member(root, tname, &dup);
    e = at_member(root, ename, &dup);
    type = profile == PROFILE_APPLE_BUSINESS ? at_member(root, "token_type", &dup) : NULL;
    if (dup) {
        errbuf_set(err, errlen, "the answer repeats %s, %s or token_type", tname, ename);
        goto out;
    }
    if (t == NULL || !cJSON_IsString(t)) {
        errbuf_set(err, errlen, t == NULL ? "the answer has no %s" : "%s is not a string", tname);
        goto out;
    }
    if (!at_token_ok(t->valuestring, &tlen)) {
        errbuf_set(err, errlen, "%s is empty, longer than %d characters or not visible ASCII", tname,
               ACCESS_TOKEN_MAX_LEN);
        goto out;
    }
    if (profile == PROFILE_APPLE_BUSINESS) {
        /* RFC 6749 7.1: the type is case-insensitive; only Bearer is usable here. */
        if (type == NULL || !cJSON_IsString(type) || strcasecmp(type->valuestring, "Bearer") != 0) {
            errbuf_set(err, errlen, "token_type is %s, not Bearer",
                   type == NULL ? "missing" : "something else");
            goto out;
        }
    }
    if (e == NULL || !cJSON_IsNumber(e)) {
        errbuf_set(err, errlen, e == NULL ? "the answer has no %s" : "%s is not a number", ename);
        goto out;
    }
    v = e->valuedouble;
    if (!isfinite(v) || v != floor(v) || v < ACCESS_TOKEN_MIN_LIFE || v > ACCESS_TOKEN_MAX_LIFE) {
        errbuf_set(err, errlen, "%s is %.17g, outside %d..%d seconds", ename, isfinite(v) ? v : -1.0,
               ACCESS_TOKEN_MIN_LIFE, ACCESS_TOKEN_MAX_LIFE);
        goto out;
    }
    *token = malloc(tlen + 1);
    if (*token == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    memcpy(*token, t->valuestring, tlen + 1);
    *expires_in = (long)v;
    rc = 0;
out:
    if (root != NULL) {
        /* The parsed copies of the strings (the token among them) are as secret as the answer. */
        const cJSON *it;

        for (it = root->child; it != NULL; it = it->next)
            if (cJSON_IsString(it) && it->valuestring != NULL)
                OPENSSL_cleanse(it->valuestring, strlen(it->valuestring));
        cJSON_Delete(root);
    }
    return rc;
}
