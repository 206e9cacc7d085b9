/* fuzz_access_token: libFuzzer target for Apple's answers to a token exchange
 * (access_token_parse, both profiles) and for the form encoder. A token that parses must be 1 to
 * ACCESS_TOKEN_MAX_LEN visible ASCII characters with a lifetime inside the limits; a refusal must
 * say why. The form of any strings must use only its own alphabet and decode back to them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/access_token.h"

#define CHECK(cond, msg)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_access_token: invariant broken: %s: %s\n", #cond, msg);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void try_parse(enum token_profile p, const char *buf, size_t size)
{
    char *token = NULL, err[256];
    long exp = -1;
    err[0] = '\0';
    if (access_token_parse(p, buf, size, &token, &exp, err, sizeof(err)) == 0) {
        size_t n = strlen(token), i;
        CHECK(n >= 1 && n <= ACCESS_TOKEN_MAX_LEN, "token length");
        for (i = 0; i < n; i++)
            CHECK((unsigned char)token[i] > 0x20 && (unsigned char)token[i] < 0x7f,
                  "a token byte that cannot go into a header line");
        CHECK(exp >= ACCESS_TOKEN_MIN_LIFE && exp <= ACCESS_TOKEN_MAX_LIFE, "lifetime");
        free(token);
    } else {
        CHECK(token == NULL && exp == 0, "a refusal with a result");
        CHECK(err[0] != '\0', "a refusal without a reason");
    }
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Splits the input at '\n' into up to 8 strings (NULs end them early) and checks the form. */
static void try_form(const char *buf, size_t size)
{
    char *parts[8];
    size_t n = 0, start = 0, i, len = 0;
    for (i = 0; i <= size && n < 8; i++)
        if (i == size || buf[i] == '\n') {
            parts[n++] = strndup(buf + start, i - start);
            start = i + 1;
        }
    if (n % 2)
        parts[n++] = strdup("");
    char *form = form_encode((const char *const *)parts, n / 2, &len);
    CHECK(form != NULL, "no form");
    CHECK(strlen(form) == len, "length");
    /* Decode back, field by field. */
    const char *p = form;
    for (i = 0; i < n; i++) {
        char want_sep = i + 1 == n ? '\0' : (i % 2 == 0 ? '=' : '&');
        const char *s = parts[i];
        while (*p != want_sep) {
            int ch;
            CHECK(*p != '\0', "the form ended early");
            if (*p == '%') {
                CHECK(unhex(p[1]) >= 0 && unhex(p[2]) >= 0, "a bad escape");
                ch = unhex(p[1]) * 16 + unhex(p[2]);
                p += 3;
            } else {
                CHECK(*p != '=' && *p != '&', "a separator inside a field");
                ch = *p == '+' ? ' ' : (unsigned char)*p;
                p++;
            }
            CHECK(*s != '\0' && (unsigned char)*s == ch, "does not decode to the input");
            s++;
        }
        CHECK(*s == '\0', "a field decoded short");
        if (want_sep)
            p++;
    }
    free(form);
    for (i = 0; i < n; i++)
        free(parts[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1); /* exact size, not NUL-terminated */
    memcpy(buf, data, size);
    try_parse(PROFILE_MAPS, buf, size);
    try_parse(PROFILE_APPLE_BUSINESS, buf, size);
    if (size <= 4096)
        try_form(buf, size);
    free(buf);
    return 0;
}
