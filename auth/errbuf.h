/* errbuf: the error convention of auth/: a message in a caller-owned buffer. */
#ifndef AAP_AUTH_ERRBUF_H
#define AAP_AUTH_ERRBUF_H

#include <stddef.h>

/* Formats the message into err (errlen bytes, always NUL-terminated, cut when longer). err may
 * be NULL or errlen 0: callers that do not want the message pass nothing. */
__attribute__((format(printf, 3, 4))) void errbuf_set(char *err, size_t errlen, const char *fmt,
                                                      ...);

#endif
