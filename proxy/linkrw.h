/* linkrw: streaming rewrite of the upstream's origin in JSON response bodies to the origin the
 * client used, so that App Store Connect's absolute pagination links (links.next) lead back
 * through the proxy instead of to Apple without a token. */
#ifndef AAP_PROXY_LINKRW_H
#define AAP_PROXY_LINKRW_H

#include <stddef.h>

#define LINKRW_MAX_ORIGIN 300

typedef void (*linkrw_emit)(void *arg, const char *data, size_t len);

/* Rewrites "https://api.appstoreconnect.apple.com" (and its JSON form with escaped slashes,
 * "https:\/\/...") to the client's origin, e.g. "http://localhost:8080". A match must end at the
 * end of the host: "https://api.appstoreconnect.apple.com.example" is left alone. */
struct linkrw {
    char from[2][LINKRW_MAX_ORIGIN + 8];
    size_t from_len[2];
    char to[2][LINKRW_MAX_ORIGIN + 8];
    size_t to_len[2];
    char pending[2 * LINKRW_MAX_ORIGIN + 16]; /* a possible match cut by a chunk boundary */
    size_t npending;
    unsigned long replaced;
};

/* from_origin: "https://host[:port]"; to_origin: "http://host[:port]" (the client's). Returns
 * -1 when either is too long (the body is then forwarded untouched). */
int linkrw_init(struct linkrw *rw, const char *from_origin, const char *to_origin);
/* Rewrites data, calling emit with the output (possibly holding back a partial match). */
void linkrw_feed(struct linkrw *rw, const char *data, size_t len, linkrw_emit emit, void *arg);
/* The body ended: emits what was held back. */
void linkrw_finish(struct linkrw *rw, linkrw_emit emit, void *arg);

/* Whether a response with this Content-Type / Content-Encoding is rewritten: JSON
 * (application/json, application/...+json) and no content coding other than identity. */
int linkrw_applies(const char *ctype, size_t ctype_len, const char *cenc, size_t cenc_len);

#endif
