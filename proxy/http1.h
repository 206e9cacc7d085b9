/* http1: strict HTTP/1.1 message parsing on llhttp plus the proxy's own framing rules (RFC 9112). */
#ifndef AAP_PROXY_HTTP1_H
#define AAP_PROXY_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <llhttp.h>

/* Spans point into the caller's buffer given to http1_parse_head: valid until it changes. */
struct http1_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

enum http1_body {
    HTTP1_BODY_NONE,    /* no body follows the head */
    HTTP1_BODY_LENGTH,  /* Content-Length bytes */
    HTTP1_BODY_CHUNKED, /* chunked; re-framed by the caller through the sink */
    HTTP1_BODY_EOF      /* responses only: until the connection closes */
};

/* Where the parser is in a message: reading the head, its body, or done (the end may come
 * with the head). */
enum http1_phase { HTTP1_PHASE_HEAD, HTTP1_PHASE_BODY, HTTP1_PHASE_DONE };

struct http1_limits {
    size_t max_line;    /* request line (requests) -> 414 */
    size_t max_head;    /* whole head -> 431 (requests), 502 (responses) */
    size_t max_headers; /* header count -> 431 / 502 */
};

/* Receives the body as it is parsed. For chunked bodies the sink gets each chunk's size before
 * its data (size 0: the last chunk; trailers are parsed and discarded, never forwarded). */
struct http1_sink {
    int (*data)(void *arg, const char *at, size_t len);
    int (*chunk)(void *arg, uint64_t size);
    int (*chunk_end)(void *arg);
};

struct http1_msg {
    llhttp_t parser;
    const struct http1_limits *limits;
    const struct http1_sink *sink;
    void *sink_arg;

    /* The head, filled by http1_parse_head. */
    struct http1_header *headers;
    size_t nheaders, cap_headers;
    const char *method;   /* requests */
    size_t method_len;
    const char *target;   /* requests */
    size_t target_len;
    int status;           /* responses */
    const char *reason;   /* responses */
    size_t reason_len;
    int version_major, version_minor;
    size_t head_len;      /* bytes of the head, including the final CRLF */
    enum http1_body body;
    uint64_t content_length;
    int keep_alive;
    int expect_continue;  /* requests: Expect: 100-continue */
    int request_is_head;  /* responses: set by the caller before parsing (no body follows) */
    int has_host;
    const char *host;     /* requests: the Host header value */
    size_t host_len;

    /* Parse state, private to http1.c: ask http1_msg_head_complete and http1_msg_complete. */
    enum http1_phase phase;
    int in_value;         /* last span was a header value (obs-fold detection) */
    uint64_t body_seen;

    /* The error, when a call returns -1: an HTTP status for the reply (400, 413, 414, 417, 431,
     * 501 for requests; 502 for responses; 500 for either when the proxy ran out of memory)
     * and a detail naming what was wrong. */
    int error_status;
    const char *error_detail;
};

/* type: HTTP_REQUEST or HTTP_RESPONSE. Keeps its own header array; deinit frees it. */
void http1_msg_init(struct http1_msg *m, llhttp_type_t type, const struct http1_limits *limits);
void http1_msg_deinit(struct http1_msg *m);

/* Parses the head from the start of buf (the whole of what has arrived so far; call again
 * from the start when more arrives). Returns 1 when the head is complete (m->head_len bytes of
 * buf are the head; the body, if any, follows), 0 when more bytes are needed, -1 on an error
 * (m->error_status and m->error_detail say which). */
int http1_parse_head(struct http1_msg *m, const char *buf, size_t len);

/* After a complete head: parses body bytes, calling the sink. Sets *used to the bytes consumed.
 * Returns 1 when the message is complete (bytes after it are not consumed: the next pipelined
 * message or, from an upstream, leftovers), 0 when more are needed, -1 on an error. */
int http1_parse_body(struct http1_msg *m, const char *buf, size_t len, size_t *used);

/* The peer closed: returns 1 when that completes the message (close-delimited response), -1 when
 * the message is truncated. */
int http1_parse_eof(struct http1_msg *m);
/* Whether the head has been parsed (the body, if any, is next). */
int http1_msg_head_complete(const struct http1_msg *m);
/* Whether the whole message has been parsed (its end may come with its head). */
int http1_msg_complete(const struct http1_msg *m);

/* A response head that arrived as fields rather than text (an HTTP/2 upstream's HEADERS): m,
 * initialised for HTTP_RESPONSE with request_is_head set as for parsing, takes the status and
 * the n fields (spans copied, the bytes they point to borrowed) under the same rules as a
 * parsed head: the field syntax, max_headers, the status range, Content-Length and
 * Transfer-Encoding, 1xx without a body. The body framing is the one a parsed head would get,
 * except that a response without Content-Length is HTTP1_BODY_CHUNKED (it ends with its
 * stream). http1_msg_complete is true when no body follows. Returns 0, or -1 (m->error_status
 * 502, or 500 when out of memory, and m->error_detail). */
int http1_response_set(struct http1_msg *m, int status, const struct http1_header *fields,
                       size_t n);

/* Case-insensitive token comparison of a span with a NUL-terminated lower-case name. */
static inline int http1_name_is(const char *name, size_t len, const char *lower)
{
    /* Called with a literal, strlen is a constant: most names are told apart by length. */
    size_t i, n = strlen(lower);
    if (n != len)
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/* 1 when a header value holds no control character other than HTAB (and no DEL). llhttp
 * refuses those already; the parser checks again so that its guarantee does not rest on the
 * library's version or settings. */
int http1_value_chars_ok(const char *at, size_t len);

/* 1 when a field name is one or more tchar (RFC 9110 5.6.2), as HTTP/1.1 requires and the
 * HTTP/2 path checks too (names it cannot pass on to an HTTP/1.1 client are refused). */
int http1_name_chars_ok(const char *at, size_t len);

/* Finds the first header with that (lower-case) name; NULL when absent. */
const struct http1_header *http1_find(const struct http1_msg *m, const char *lower);

/* Whether the comma-separated list value contains token (case-insensitive). */
int http1_list_has(const char *value, size_t len, const char *lower);

#endif
