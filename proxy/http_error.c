/* http_error: the responses the proxy makes itself, in Apple's JSON error shape. */
#include "proxy/http_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char proxy_err_bad_request[] = "PROXY_BAD_REQUEST";
const char proxy_err_forbidden_host[] = "PROXY_FORBIDDEN_HOST";
const char proxy_err_no_route[] = "PROXY_NO_ROUTE";
const char proxy_err_client_forbidden[] = "PROXY_CLIENT_FORBIDDEN";
const char proxy_err_browser_forbidden[] = "PROXY_BROWSER_FORBIDDEN";
const char proxy_err_misdirected[] = "PROXY_MISDIRECTED_REQUEST";
const char proxy_err_proxy_auth[] = "PROXY_AUTHENTICATION_REQUIRED";
const char proxy_err_rate_limited[] = "PROXY_RATE_LIMITED";
const char proxy_err_quota_reserved[] = "PROXY_QUOTA_RESERVED";
const char proxy_err_apple_retry_after[] = "PROXY_APPLE_RETRY_AFTER";
const char proxy_err_connect[] = "PROXY_CONNECT_NOT_SUPPORTED";
const char proxy_err_request_timeout[] = "PROXY_REQUEST_TIMEOUT";
const char proxy_err_body_too_large[] = "PROXY_BODY_TOO_LARGE";
const char proxy_err_uri_too_long[] = "PROXY_URI_TOO_LONG";
const char proxy_err_expectation[] = "PROXY_EXPECTATION_FAILED";
const char proxy_err_headers_too_large[] = "PROXY_HEADERS_TOO_LARGE";
const char proxy_err_not_implemented[] = "PROXY_NOT_IMPLEMENTED";
const char proxy_err_http_version[] = "PROXY_HTTP_VERSION_NOT_SUPPORTED";
const char proxy_err_upstream_unreachable[] = "PROXY_UPSTREAM_UNREACHABLE";
const char proxy_err_upstream_tls[] = "PROXY_UPSTREAM_TLS";
const char proxy_err_bad_upstream_response[] = "PROXY_BAD_UPSTREAM_RESPONSE";
const char proxy_err_token[] = "PROXY_TOKEN_UNAVAILABLE";
const char proxy_err_overloaded[] = "PROXY_OVERLOADED";
const char proxy_err_token_exchange[] = "PROXY_TOKEN_EXCHANGE_FAILED";
const char proxy_err_upstream_timeout[] = "PROXY_UPSTREAM_TIMEOUT";
const char proxy_err_internal[] = "PROXY_INTERNAL";
const char proxy_err_intercept[] = "PROXY_INTERCEPT_UNAVAILABLE";

static const struct {
    const char *code;
    int status;
    const char *title;
} table[] = {
    {proxy_err_bad_request, 400, "The request is not valid HTTP/1.1."},
    {proxy_err_forbidden_host, 403, "The proxy does not forward to this host."},
    {proxy_err_no_route, 404, "No route matches this request."},
    {proxy_err_client_forbidden, 403, "This client may not make this request."},
    {proxy_err_browser_forbidden, 403, "The proxy does not serve requests from web pages."},
    {proxy_err_misdirected, 421, "The request's Host does not name this proxy."},
    {proxy_err_proxy_auth, 407, "The gateway needs client credentials."},
    {proxy_err_rate_limited, 429, "The client is over its request rate."},
    {proxy_err_quota_reserved, 429, "The rest of Apple's hourly quota is reserved."},
    {proxy_err_apple_retry_after, 429, "Apple asked to wait before more requests."},
    {proxy_err_connect, 405, "CONNECT is not supported."},
    {proxy_err_request_timeout, 408, "The request did not arrive in time."},
    {proxy_err_body_too_large, 413, "The request body is larger than the proxy allows."},
    {proxy_err_uri_too_long, 414, "The request line is longer than the proxy allows."},
    {proxy_err_expectation, 417, "The expectation cannot be met."},
    {proxy_err_headers_too_large, 431, "The request header section is larger than the proxy allows."},
    {proxy_err_not_implemented, 501, "The request uses a feature the proxy does not implement."},
    {proxy_err_http_version, 505, "Only HTTP/1.0 and HTTP/1.1 are accepted."},
    {proxy_err_upstream_unreachable, 502, "The upstream could not be reached."},
    {proxy_err_upstream_tls, 502, "The upstream's TLS could not be verified."},
    {proxy_err_bad_upstream_response, 502, "The upstream sent an invalid response."},
    {proxy_err_token, 503, "The proxy could not make a token."},
    {proxy_err_overloaded, 503, "The proxy is at its connection limit."},
    {proxy_err_token_exchange, 502, "Apple did not give the proxy an access token."},
    {proxy_err_upstream_timeout, 504, "The upstream did not answer in time."},
    {proxy_err_internal, 500, "The proxy ran out of memory for this request."},
    {proxy_err_intercept, 503, "The proxy could not make a certificate for this host."},
};

int http_error_status(const char *code)
{
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].code == code)
            return table[i].status;
    return 500;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone"; /* APNs: the device token is no longer registered */
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Appends s to the JSON string being built at *o as RFC 8259 section 7 escapes it (the same
 * bytes cJSON would write: \" \\ \b \f \n \r \t, other controls as \u00xx, the rest as is),
 * stopping before a character (a whole UTF-8 sequence) that would pass end. */
static void json_escape(char **o, const char *end, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[6];
        size_t n = 0;
        switch (ch) {
        case '"': n = 2, esc[0] = '\\', esc[1] = '"'; break;
        case '\\': n = 2, esc[0] = '\\', esc[1] = '\\'; break;
        case '\b': n = 2, esc[0] = '\\', esc[1] = 'b'; break;
        case '\f': n = 2, esc[0] = '\\', esc[1] = 'f'; break;
        case '\n': n = 2, esc[0] = '\\', esc[1] = 'n'; break;
        case '\r': n = 2, esc[0] = '\\', esc[1] = 'r'; break;
        case '\t': n = 2, esc[0] = '\\', esc[1] = 't'; break;
        default:
            if (ch < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[ch >> 4];
                esc[5] = hex[ch & 15];
                n = 6;
            } else {
                /* a UTF-8 sequence goes whole or not at all */
                n = 1;
                if (ch >= 0xc0)
                    while (n < 4 && ((unsigned char)s[n] & 0xc0) == 0x80)
                        n++;
                if ((size_t)(end - *o) < n)
                    return;
                memcpy(*o, s, n);
                *o += n;
                s += n - 1;
                continue;
            }
        }
        if ((size_t)(end - *o) < n)
            return;
        memcpy(*o, esc, n);
        *o += n;
    }
}

size_t http_error_format(char *out, int status, const char *code, const char *detail, int close,
                         const char *extra_headers)
{
    const char *title = "Error";
    char body[HTTP_ERROR_MAX / 2], *o = body;
    /* what follows the detail: its closing quote and the brackets */
    static const char tail[] = "\"}]}";
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].code == code)
            title = table[i].title;
    /* The code and title are constants of this file, far shorter than body: only the detail
     * can run into its end. */
    o += snprintf(body, sizeof(body), "{\"errors\":[{\"status\":\"%d\",\"code\":\"%s\","
                  "\"title\":\"%s\",\"detail\":\"", status, code, title);
    json_escape(&o, body + sizeof(body) - (sizeof(tail) - 1), detail ? detail : title);
    memcpy(o, tail, sizeof(tail) - 1);
    o += sizeof(tail) - 1;
    size_t body_len = (size_t)(o - body);
    /* The head's fixed part, the reason, the extra headers (a few short lines) and the body
     * fit in HTTP_ERROR_MAX: extra headers that would not are left out. */
    int n = snprintf(out, HTTP_ERROR_MAX - body_len,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s%s\r\n",
                     status, http_reason(status), body_len, close ? "Connection: close\r\n" : "",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= HTTP_ERROR_MAX - body_len)
        n = snprintf(out, HTTP_ERROR_MAX - body_len,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     status, http_reason(status), body_len, close ? "Connection: close\r\n" : "");
    memcpy(out + n, body, body_len);
    return (size_t)n + body_len;
}
