/* b64: base64url without padding for JWS segments, and tolerant standard base64 for keys. */
#include "auth/b64.h"

#include <stdlib.h>
#include <openssl/crypto.h>

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Value of one base64url digit (RFC 4648 section 5), or -1. */
static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Value of one standard base64 digit (RFC 4648 section 4), or -1. */
static int b64_value(unsigned char c)
{
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    if (c == '-' || c == '_')
        return -1;
    return b64url_value(c);
}

size_t b64url_encoded_len(size_t n)
{
    static const size_t tail[3] = {0, 2, 3};

    return n / 3 * 4 + tail[n % 3];
}

size_t b64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0, o = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

uint8_t *b64url_decode(const char *in, size_t n, size_t *outlen)
{
    uint8_t *out;
    uint32_t acc = 0;
    size_t i, o = 0;
    int bits = 0;

    /* A single leftover digit carries only 6 bits: no byte can end there. */
    if (n % 4 == 1)
        return NULL;
    out = malloc(n / 4 * 3 + 3 + 1);
    if (out == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            goto fail;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* JWS segments are canonical (RFC 7515 section 2): the unused low bits must be zero, so that
     * one value has one encoding and a tampered token cannot pass as the same bytes. */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
        goto fail;
    out[o] = '\0';
    *outlen = o;
    return out;
fail:
    free(out);
    return NULL;
}

static int b64_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

uint8_t *b64_decode_loose(const char *in, size_t n, size_t *outlen)
{
    uint8_t *out;
    uint32_t acc = 0;
    size_t i, o = 0, digits = 0, pads = 0;
    int bits = 0;

    out = malloc(n / 4 * 3 + 3 + 1);
    if (out == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int v;

        if (b64_is_space(c))
            continue;
        if (c == '=') {
            pads++;
            continue;
        }
        /* Padding ends the data: a digit after '=' means two encodings were concatenated or the
         * text is not base64 at all. */
        if (pads > 0)
            goto fail;
        v = b64_value(c);
        if (v < 0)
            goto fail;
        digits++;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (digits % 4 == 1)
        goto fail;
    if (pads > 0 && (pads > 2 || (digits + pads) % 4 != 0))
        goto fail;
    out[o] = '\0';
    *outlen = o;
    return out;
fail:
    /* The partial output may already hold part of a private key. */
    OPENSSL_cleanse(out, n / 4 * 3 + 3 + 1);
    free(out);
    return NULL;
}
