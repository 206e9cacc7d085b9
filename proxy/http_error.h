/* http_error: the responses the proxy makes itself, in Apple's JSON error shape. */
#ifndef AAP_PROXY_HTTP_ERROR_H
#define AAP_PROXY_HTTP_ERROR_H

#include <stddef.h>

/* The most a response made by http_error_format takes: a detail too long for it is cut. */
#define HTTP_ERROR_MAX 4096

/* Named error codes: compared by address, and the `code` field clients see. */
extern const char proxy_err_bad_request[];        /* 400 PROXY_BAD_REQUEST */
extern const char proxy_err_forbidden_host[];     /* 403 PROXY_FORBIDDEN_HOST */
extern const char proxy_err_client_forbidden[];   /* 403 PROXY_CLIENT_FORBIDDEN */
extern const char proxy_err_browser_forbidden[];  /* 403 PROXY_BROWSER_FORBIDDEN */
extern const char proxy_err_misdirected[];        /* 421 PROXY_MISDIRECTED_REQUEST */
extern const char proxy_err_proxy_auth[];         /* 407 PROXY_AUTHENTICATION_REQUIRED */
extern const char proxy_err_rate_limited[];       /* 429 PROXY_RATE_LIMITED */
extern const char proxy_err_quota_reserved[];     /* 429 PROXY_QUOTA_RESERVED */
extern const char proxy_err_apple_retry_after[];  /* 429 PROXY_APPLE_RETRY_AFTER */
extern const char proxy_err_no_route[];           /* 404 PROXY_NO_ROUTE */
extern const char proxy_err_connect[];            /* 405 PROXY_CONNECT_NOT_SUPPORTED */
extern const char proxy_err_request_timeout[];    /* 408 PROXY_REQUEST_TIMEOUT */
extern const char proxy_err_body_too_large[];     /* 413 PROXY_BODY_TOO_LARGE */
extern const char proxy_err_uri_too_long[];       /* 414 PROXY_URI_TOO_LONG */
extern const char proxy_err_expectation[];        /* 417 PROXY_EXPECTATION_FAILED */
extern const char proxy_err_headers_too_large[];  /* 431 PROXY_HEADERS_TOO_LARGE */
extern const char proxy_err_not_implemented[];    /* 501 PROXY_NOT_IMPLEMENTED */
extern const char proxy_err_http_version[];       /* 505 PROXY_HTTP_VERSION_NOT_SUPPORTED */
extern const char proxy_err_upstream_unreachable[]; /* 502 PROXY_UPSTREAM_UNREACHABLE */
extern const char proxy_err_upstream_tls[];       /* 502 PROXY_UPSTREAM_TLS */
extern const char proxy_err_bad_upstream_response[]; /* 502 PROXY_BAD_UPSTREAM_RESPONSE */
extern const char proxy_err_token[];              /* 503 PROXY_TOKEN_UNAVAILABLE */
extern const char proxy_err_overloaded[];         /* 503 PROXY_OVERLOADED */
extern const char proxy_err_token_exchange[];     /* 502 PROXY_TOKEN_EXCHANGE_FAILED */
extern const char proxy_err_upstream_timeout[];   /* 504 PROXY_UPSTREAM_TIMEOUT */
extern const char proxy_err_internal[];           /* 500 PROXY_INTERNAL: out of memory */
extern const char proxy_err_intercept[];          /* 503 PROXY_INTERCEPT_UNAVAILABLE */

/* The reason phrase for a status ("Bad Gateway"); "Unknown" for others. */
const char *http_reason(int status);

/* Formats a complete response into out (HTTP_ERROR_MAX bytes): status line, Content-Type:
 * application/json, Content-Length, "Connection: close" when close is set, extra header lines
 * ("Name: value\r\n"..., or NULL), and the body
 * {"errors":[{"status":"502","code":CODE,"title":TITLE,"detail":DETAIL}]}. The detail is
 * JSON-escaped (cut short, at a character, when it would not fit); it must never hold a token
 * or key. Returns the response's length. */
size_t http_error_format(char *out, int status, const char *code, const char *detail, int close,
                         const char *extra_headers);

/* The status that goes with a code above. */
int http_error_status(const char *code);

#endif
