/* evbuf: appending string literals to evbuffers without counting their lengths by hand. */
#ifndef AAP_PROXY_EVBUF_H
#define AAP_PROXY_EVBUF_H

#include <event2/buffer.h>

/* s must be a string literal: its length is known at compile time (and never miscounted, which
 * once put a NUL byte into every access log line). */
#define ADD_LITERAL(buf, s) evbuffer_add((buf), "" s, sizeof(s) - 1)

#endif
