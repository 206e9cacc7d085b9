/* http_error: the responses the proxy makes itself, in Apple's JSON error shape. */
#include "proxy/http_error.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char proxy_err_bad_request[] = "PROXY_BAD_REQUEST";
const char proxy_err_forbidden_host[] = "PROXY_FORBIDDEN_HOST";
const char proxy_err_no_route[] = "PROXY_NO_ROUTE";
const char proxy_err_client_forbidden[] = "PROXY_CLIENT_FORBIDDEN";
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
const char proxy_err_upstream_timeout[] = "PROXY_UPSTREAM_TIMEOUT";

static const struct {
    const char *code;
    int status;
    const char *title;
} table[] = {
    {proxy_err_bad_request, 400, "The request is not valid HTTP/1.1."},
    {proxy_err_forbidden_host, 403, "The proxy does not forward to this host."},
    {proxy_err_no_route, 404, "No route matches this request."},
    {proxy_err_client_forbidden, 403, "This client may not make this request."},
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
    {proxy_err_upstream_timeout, 504, "The upstream did not answer in time."},
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
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
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

void http_error_write(struct evbuffer *out, int status, const char *code, const char *detail,
                      int close)
{
    http_error_write_ex(out, status, code, detail, close, NULL);
}

void http_error_write_ex(struct evbuffer *out, int status, const char *code, const char *detail,
                         int close, const char *extra_headers)
{
    const char *title = "Error";
    char statusbuf[8];
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].code == code)
            title = table[i].title;
    snprintf(statusbuf, sizeof(statusbuf), "%d", status);
    cJSON *root = cJSON_CreateObject();
    cJSON *errors = cJSON_AddArrayToObject(root, "errors");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToArray(errors, e);
    cJSON_AddStringToObject(e, "status", statusbuf);
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "title", title);
    cJSON_AddStringToObject(e, "detail", detail ? detail : title);
    char *body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    const char *b = body ? body : "{}";
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n%s%s\r\n%s",
                        status, http_reason(status), strlen(b),
                        close ? "Connection: close\r\n" : "", extra_headers ? extra_headers : "",
                        b);
    free(body);
}
