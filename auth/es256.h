/* es256: ECDSA P-256 SHA-256 signatures in the JWS form, the raw 64-byte R || S (RFC 7518 3.4). */
#ifndef AAP_AUTH_ES256_H
#define AAP_AUTH_ES256_H

#include <stddef.h>
#include <stdint.h>
#include "auth/key.h"

#define ES256_SIG_LEN 64

/* Signs msg[0..n) with SHA-256 and the key, writing raw R || S (each 32 bytes big-endian,
 * left-padded with zeros) to sig. Returns 0, or -1 with a message in err. Thread-safe: several
 * threads may sign with the same key at once. */
int es256_sign(const apple_key *key, const uint8_t *msg, size_t n, uint8_t sig[ES256_SIG_LEN],
               char *err, size_t errlen);

/* Converts an ASN.1 DER ECDSA-Sig-Value (SEQUENCE { INTEGER r, INTEGER s }) into raw R || S.
 * Handles R or S shorter than 32 bytes (left-pads) and the leading 0x00 DER adds to positive
 * integers whose top bit is set. Returns -1 on malformed DER or an integer longer than 32 bytes. */
int es256_der_to_raw(const uint8_t *der, size_t n, uint8_t raw[ES256_SIG_LEN]);

#endif
