/* b64: base64url without padding (RFC 7515 section 2) and tolerant standard base64 decoding. */
#ifndef AAP_AUTH_B64_H
#define AAP_AUTH_B64_H

#include <stddef.h>
#include <stdint.h>

/* Length of the base64url encoding of n bytes, without padding and without the NUL. */
size_t b64url_encoded_len(size_t n);

/* Writes the base64url encoding of in[0..n) to out, which must hold b64url_encoded_len(n) + 1
 * bytes, NUL-terminates it and returns its length. */
size_t b64url_encode(const uint8_t *in, size_t n, char *out);

/* Decodes base64url (no padding, RFC 4648 section 5). Returns a malloc'd buffer (caller frees)
 * and its length in *outlen, or NULL on any byte outside the alphabet or an impossible length. */
uint8_t *b64url_decode(const char *in, size_t n, size_t *outlen);

/* Decodes standard base64 (RFC 4648 section 4) as keys arrive from environment variables:
 * padding optional, ASCII whitespace (space, tab, CR, LF) anywhere is skipped. Returns a malloc'd
 * NUL-terminated buffer (caller frees, and wipes it if it held a key) with its length in *outlen
 * (not counting the NUL), or NULL when the input is not base64. */
uint8_t *b64_decode_loose(const char *in, size_t n, size_t *outlen);

#endif
