/* http1: strict HTTP/1.1 message parsing on llhttp plus the proxy's own framing rules (RFC 9112). */
#include "proxy/http1.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* RFC 9110 5.6.2: tchar, as a table: every byte of every field name of every message is
 * looked up here (the client's request, and the upstream's answer on both protocols). */
#define TCHAR_ROW(b) [b] = 1
static const unsigned char tchar[256] = {
    TCHAR_ROW('!'), TCHAR_ROW('#'), TCHAR_ROW('$'), TCHAR_ROW('%'), TCHAR_ROW('&'),
    TCHAR_ROW('\''), TCHAR_ROW('*'), TCHAR_ROW('+'), TCHAR_ROW('-'), TCHAR_ROW('.'),
    TCHAR_ROW('^'), TCHAR_ROW('_'), TCHAR_ROW('`'), TCHAR_ROW('|'), TCHAR_ROW('~'),
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
};
#undef TCHAR_ROW

static int is_tchar(unsigned char c)
{
    return tchar[c];
}

int http1_name_chars_ok(const char *at, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++)
        if (!tchar[(unsigned char)at[i]])
            return 0;
    return len > 0;
}

const struct http1_header *http1_find(const struct http1_msg *m, const char *lower)
{
    size_t i, n = strlen(lower);
    for (i = 0; i < m->nheaders; i++)
        if (m->headers[i].name_len == n &&
            http1_name_is(m->headers[i].name, m->headers[i].name_len, lower))
            return &m->headers[i];
    return NULL;
}

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

int http1_list_has(const char *value, size_t len, const char *lower)
{
    size_t i = 0;
    while (i <= len) {
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        const char *item = value + start;
        size_t n = i - start;
        trim(&item, &n);
        if (n > 0 && http1_name_is(item, n, lower))
            return 1;
        i++;
    }
    return 0;
}

static struct http1_msg *msg_of(llhttp_t *p)
{
    return (struct http1_msg *)p->data;
}

static int fail(struct http1_msg *m, int status, const char *detail)
{
    if (m->error_status == 0) {
        m->error_status = status;
        m->error_detail = detail;
    }
    return -1;
}

static int is_request(const struct http1_msg *m)
{
    return m->parser.type == HTTP_REQUEST;
}

static int on_method(llhttp_t *p, const char *at, size_t len)
{
    struct http1_msg *m = msg_of(p);
    m->method = at;
    m->method_len = len;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http1_msg *m = msg_of(p);
    if (m->target == NULL)
        m->target = at;
    m->target_len += len;
    if (m->limits->max_line && m->target_len > m->limits->max_line)
        return fail(m, 414, "the request target is longer than the limit");
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    struct http1_msg *m = msg_of(p);
    m->reason = at;
    m->reason_len = len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http1_msg *m = msg_of(p);
    if (m->phase != HTTP1_PHASE_HEAD)
        return 0; /* trailers: parsed, never forwarded */
    if (m->nheaders >= m->limits->max_headers)
        return fail(m, is_request(m) ? 431 : 502, "too many header fields");
    if (m->nheaders == m->cap_headers) {
        size_t cap = m->cap_headers ? m->cap_headers * 2 : 16;
        struct http1_header *h = realloc(m->headers, cap * sizeof(*h));
        if (h == NULL)
            return fail(m, 500, "out of memory for header fields"); /* not the peer's fault */
        m->headers = h;
        m->cap_headers = cap;
    }
    if (len == 0)
        return fail(m, is_request(m) ? 400 : 502, "empty header name");
    if (!http1_name_chars_ok(at, len))
        return fail(m, is_request(m) ? 400 : 502, "invalid character in a header name");
    m->headers[m->nheaders].name = at;
    m->headers[m->nheaders].name_len = len;
    m->headers[m->nheaders].value = at + len; /* empty until a value span arrives */
    m->headers[m->nheaders].value_len = 0;
    m->nheaders++;
    m->in_value = 0;
    return 0;
}

static int value_char_ok(unsigned char c)
{
    return !((c < 0x20 && c != '\t') || c == 0x7f);
}

/* Eight bytes at a time: a word with no byte below 0x20 and none equal to 0x7f (the exact
 * tests of "Bit Twiddling Hacks", haszero and hasless) is let through whole; only a word that
 * may hold one (a tab does) is looked at byte by byte. Every value of every message goes
 * through here, the token line on its way upstream included, and byte by byte this was 6 % of
 * the proxy's work per request. */
int http1_value_chars_ok(const char *at, size_t len)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0, j;
    for (; i + 8 <= len; i += 8) {
        uint64_t v, del;
        memcpy(&v, at + i, 8);
        del = v ^ (ones * 0x7f);
        if ((((v - ones * 0x20) & ~v) | ((del - ones) & ~del)) & highs) {
            for (j = i; j < i + 8; j++)
                if (!value_char_ok((unsigned char)at[j]))
                    return 0;
        }
    }
    for (; i < len; i++)
        if (!value_char_ok((unsigned char)at[i]))
            return 0;
    return 1;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http1_msg *m = msg_of(p);
    if (m->phase != HTTP1_PHASE_HEAD)
        return 0;
    if (m->nheaders == 0)
        return fail(m, is_request(m) ? 400 : 502, "header value without a name");
    if (m->in_value) {
        /* A second value span for one field is a folded line (obs-fold, RFC 9112 5.2). */
        return fail(m, is_request(m) ? 400 : 502, "obsolete line folding in a header");
    }
    if (!http1_value_chars_ok(at, len))
        return fail(m, is_request(m) ? 400 : 502, "control character in a header value");
    m->headers[m->nheaders - 1].value = at;
    m->headers[m->nheaders - 1].value_len = len;
    m->in_value = 1;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    msg_of(p)->in_value = 1;
    return 0;
}

static int parse_length(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;
    if (len == 0 || len > 18)
        return -1; /* 18 digits: below 2^63, no overflow possible */
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* RFC 9110 7.2: Host = uri-host [ ":" port ]; reg-name, IPv4 or an IP-literal. */
static int host_valid(const char *s, size_t len)
{
    size_t i = 0, end = len;
    if (len == 0)
        return 0;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return 0;
        for (i = 1; s + i < close; i++)
            if (!(strchr("0123456789abcdefABCDEF:.", s[i]) && s[i]))
                return 0;
        i = (size_t)(close - s) + 1;
        if (i == len)
            return 1;
        if (s[i] != ':')
            return 0;
    } else {
        for (i = 0; i < len && s[i] != ':'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c && strchr("-._~!$&'()*+,;=%", c))))
                return 0;
        }
        if (i == 0)
            return 0;
        if (i == len)
            return 1;
    }
    /* ":" port, at most 65535 */
    i++;
    if (i == end || end - i > 5)
        return 0;
    long port = 0;
    for (; i < end; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        port = port * 10 + (s[i] - '0');
    }
    return port <= 65535;
}

static int check_request(struct http1_msg *m)
{
    size_t i, ncl = 0, nte = 0, nhost = 0;
    const struct http1_header *cl = NULL, *te = NULL;
    for (i = 0; i < m->nheaders; i++) {
        const struct http1_header *h = &m->headers[i];
        if (http1_name_is(h->name, h->name_len, "content-length")) {
            ncl++;
            cl = h;
        } else if (http1_name_is(h->name, h->name_len, "transfer-encoding")) {
            nte++;
            te = h;
        } else if (http1_name_is(h->name, h->name_len, "host")) {
            nhost++;
            m->host = h->value;
            m->host_len = h->value_len;
        } else if (http1_name_is(h->name, h->name_len, "expect")) {
            const char *v = h->value;
            size_t n = h->value_len;
            trim(&v, &n);
            if (!http1_name_is(v, n, "100-continue"))
                return fail(m, 417, "only Expect: 100-continue is supported");
            if (m->version_major == 1 && m->version_minor >= 1)
                m->expect_continue = 1;
        }
    }
    m->has_host = nhost > 0;
    if (ncl > 1)
        return fail(m, 400, "more than one Content-Length header");
    if (nte > 1)
        return fail(m, 400, "more than one Transfer-Encoding header");
    if (cl && te)
        return fail(m, 400, "both Content-Length and Transfer-Encoding");
    if (m->version_major == 1 && m->version_minor >= 1 && nhost != 1)
        return fail(m, 400, nhost ? "more than one Host header" : "missing Host header");
    if (nhost == 1 && !host_valid(m->host, m->host_len))
        return fail(m, 400, "invalid Host header");
    if (te) {
        const char *v = te->value;
        size_t n = te->value_len;
        trim(&v, &n);
        if (m->version_major == 1 && m->version_minor == 0)
            return fail(m, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (!http1_name_is(v, n, "chunked")) {
            /* RFC 9112 6.1: chunked must be the final coding; anything else is either an
             * unsupported coding list (501) or malformed (400). */
            size_t j;
            for (j = 0; j < n; j++)
                if (!is_tchar((unsigned char)v[j]) && v[j] != ',' && v[j] != ' ')
                    return fail(m, 400, "malformed Transfer-Encoding");
            return fail(m, 501, "only Transfer-Encoding: chunked is supported");
        }
        m->body = HTTP1_BODY_CHUNKED;
    } else if (cl) {
        const char *v = cl->value;
        size_t n = cl->value_len;
        trim(&v, &n);
        if (parse_length(v, n, &m->content_length) < 0)
            return fail(m, 400, "invalid Content-Length");
        m->body = m->content_length ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
    } else {
        m->body = HTTP1_BODY_NONE;
    }
    /* CONNECT is never forwarded (the proxy answers 405 and closes): whatever framing it
     * claims, no body of it is read (llhttp treats what follows as a tunnel). */
    if (m->parser.method == HTTP_CONNECT)
        m->body = HTTP1_BODY_NONE;
    return 0;
}

static int check_response(struct http1_msg *m)
{
    size_t i, ncl = 0, nte = 0;
    const struct http1_header *cl = NULL, *te = NULL;
    if (m->status < 100 || m->status > 599)
        return fail(m, 502, "the upstream sent a status code outside 100-599");
    if (m->status == 101)
        return fail(m, 502, "the upstream switched protocols");
    for (i = 0; i < m->nheaders; i++) {
        const struct http1_header *h = &m->headers[i];
        if (http1_name_is(h->name, h->name_len, "content-length")) {
            ncl++;
            cl = h;
        } else if (http1_name_is(h->name, h->name_len, "transfer-encoding")) {
            nte++;
            te = h;
        }
    }
    if (ncl > 1)
        return fail(m, 502, "the upstream sent more than one Content-Length");
    if (nte > 1)
        return fail(m, 502, "the upstream sent more than one Transfer-Encoding");
    if (cl && te)
        return fail(m, 502, "the upstream sent both Content-Length and Transfer-Encoding");
    if (cl) {
        const char *v = cl->value;
        size_t n = cl->value_len;
        trim(&v, &n);
        if (parse_length(v, n, &m->content_length) < 0)
            return fail(m, 502, "the upstream sent an invalid Content-Length");
    }
    if (te) {
        const char *v = te->value;
        size_t n = te->value_len;
        trim(&v, &n);
        if (!http1_name_is(v, n, "chunked"))
            return fail(m, 502, "the upstream sent an unsupported Transfer-Encoding");
    }
    /* RFC 9110 15.2: an interim response ends with its header section; one that announces
     * content is malformed, and what follows could be read as a forged final response. */
    if (m->status < 200 && (cl || te))
        return fail(m, 502, "the upstream sent an interim (1xx) response with a body");
    if (m->request_is_head || m->status < 200 || m->status == 204 || m->status == 304)
        m->body = HTTP1_BODY_NONE;
    else if (te)
        m->body = HTTP1_BODY_CHUNKED;
    else if (cl)
        m->body = m->content_length ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
    else
        m->body = HTTP1_BODY_EOF;
    return 0;
}

/* The proxy's framing decision must be llhttp's too: had they differed (a value llhttp reads
 * differently, e.g. "chunked" followed by a tab), the body would be split in two ways. */
static int check_agreement(struct http1_msg *m)
{
    const llhttp_t *p = &m->parser;
    int status = is_request(m) ? 400 : 502;
    int chunked = (p->flags & F_CHUNKED) != 0;
    if (is_request(m) && p->method == HTTP_CONNECT)
        return 0;
    if ((m->body == HTTP1_BODY_CHUNKED) != chunked &&
        !(m->body == HTTP1_BODY_NONE && !is_request(m)))
        return fail(m, status, "ambiguous Transfer-Encoding");
    if (m->body == HTTP1_BODY_LENGTH &&
        (!(p->flags & F_CONTENT_LENGTH) || p->content_length != m->content_length))
        return fail(m, status, "ambiguous Content-Length");
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http1_msg *m = msg_of(p);
    if (m->phase != HTTP1_PHASE_HEAD)
        return 0;
    m->version_major = p->http_major;
    m->version_minor = p->http_minor;
    m->keep_alive = llhttp_should_keep_alive(p);
    if (p->http_major != 1 || p->http_minor > 1) {
        /* HTTP/0.9 has no headers to rewrite and HTTP/2 is not spoken here. */
        if (is_request(m))
            return fail(m, 505, "only HTTP/1.0 and HTTP/1.1 requests are accepted");
        return fail(m, 502, "the upstream answered with an HTTP version other than 1.x");
    }
    if (is_request(m)) {
        if (check_request(m) < 0)
            return -1;
        /* Upgrade is a hop-by-hop request the proxy never honours: parse the message as a plain
         * request so that `Upgrade: h2c` can never turn into a tunnel. */
        if (p->method != HTTP_CONNECT)
            p->upgrade = 0;
    } else {
        m->status = p->status_code;
        if (check_response(m) < 0)
            return -1;
    }
    if (check_agreement(m) < 0)
        return -1;
    m->phase = HTTP1_PHASE_BODY;
    if (m->body == HTTP1_BODY_NONE)
        /* message_complete pauses right after. A response the proxy decided has no body (HEAD,
         * 1xx, 204, 304) must not have one read by llhttp either: 1 says so. */
        return is_request(m) ? 0 : 1;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http1_msg *m = msg_of(p);
    m->body_seen += len;
    if (m->sink && m->sink->data && m->sink->data(m->sink_arg, at, len) < 0)
        return fail(m, is_request(m) ? 400 : 502, "body rejected");
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    struct http1_msg *m = msg_of(p);
    if (m->sink && m->sink->chunk && m->sink->chunk(m->sink_arg, p->content_length) < 0)
        return fail(m, is_request(m) ? 400 : 502, "chunk rejected");
    return 0;
}

static int on_chunk_complete(llhttp_t *p)
{
    struct http1_msg *m = msg_of(p);
    if (m->sink && m->sink->chunk_end && m->sink->chunk_end(m->sink_arg) < 0)
        return fail(m, is_request(m) ? 400 : 502, "chunk rejected");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http1_msg *m = msg_of(p);
    m->phase = HTTP1_PHASE_DONE;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_method = on_method,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_chunk_complete = on_chunk_complete,
    .on_message_complete = on_message_complete,
};

void http1_msg_init(struct http1_msg *m, llhttp_type_t type, const struct http1_limits *limits)
{
    struct http1_header *keep = m->headers;
    size_t cap = m->cap_headers;
    const struct http1_sink *sink = m->sink;
    void *arg = m->sink_arg;
    int is_head = m->request_is_head;
    memset(m, 0, sizeof(*m));
    m->headers = keep;
    m->cap_headers = cap;
    m->sink = sink;
    m->sink_arg = arg;
    m->request_is_head = type == HTTP_RESPONSE ? is_head : 0;
    m->limits = limits;
    llhttp_init(&m->parser, type, &settings);
    m->parser.data = m;
}

void http1_msg_deinit(struct http1_msg *m)
{
    free(m->headers);
    m->headers = NULL;
    m->cap_headers = 0;
    m->nheaders = 0;
}

static int map_llhttp_error(struct http1_msg *m, llhttp_errno_t err)
{
    if (m->error_status)
        return -1;
    if (err == HPE_INVALID_TRANSFER_ENCODING || err == HPE_UNEXPECTED_CONTENT_LENGTH)
        return fail(m, is_request(m) ? 400 : 502, llhttp_get_error_reason(&m->parser));
    return fail(m, is_request(m) ? 400 : 502, llhttp_get_error_reason(&m->parser));
}

int http1_parse_head(struct http1_msg *m, const char *buf, size_t len)
{
    llhttp_errno_t err;
    llhttp_type_t type = (llhttp_type_t)m->parser.type;
    http1_msg_init(m, type, m->limits);
    err = llhttp_execute(&m->parser, buf, len);
    if (err == HPE_OK || err == HPE_PAUSED) {
        if (m->phase != HTTP1_PHASE_HEAD) {
            m->head_len = (size_t)(llhttp_get_error_pos(&m->parser) - buf);
            if (err == HPE_OK) /* no pause: cannot happen, the callbacks always pause */
                m->head_len = len;
            if (m->head_len > m->limits->max_head)
                return fail(m, is_request(m) ? 431 : 502, "the header section is too large");
            return 1;
        }
        if (is_request(m) && m->target == NULL && m->limits->max_line && len > m->limits->max_line)
            return fail(m, 414, "the request line is longer than the limit");
        if (len > m->limits->max_head)
            return fail(m, is_request(m) ? 431 : 502, "the header section is too large");
        return 0;
    }
    return map_llhttp_error(m, err);
}

int http1_parse_body(struct http1_msg *m, const char *buf, size_t len, size_t *used)
{
    llhttp_errno_t err;
    *used = 0;
    if (m->phase == HTTP1_PHASE_DONE)
        return 1;
    if (llhttp_get_errno(&m->parser) == HPE_PAUSED)
        llhttp_resume(&m->parser);
    if (len == 0)
        return 0;
    err = llhttp_execute(&m->parser, buf, len);
    if (err == HPE_OK) {
        *used = len;
        return 0;
    }
    if (err == HPE_PAUSED && m->phase == HTTP1_PHASE_DONE) {
        *used = (size_t)(llhttp_get_error_pos(&m->parser) - buf);
        return 1;
    }
    return map_llhttp_error(m, err);
}

int http1_parse_eof(struct http1_msg *m)
{
    llhttp_errno_t err;
    if (m->phase == HTTP1_PHASE_DONE)
        return 1;
    if (m->body != HTTP1_BODY_EOF)
        return -1;
    if (llhttp_get_errno(&m->parser) == HPE_PAUSED)
        llhttp_resume(&m->parser);
    err = llhttp_finish(&m->parser);
    if ((err == HPE_OK || err == HPE_PAUSED) && m->phase == HTTP1_PHASE_DONE)
        return 1;
    if (err == HPE_OK) {
        m->phase = HTTP1_PHASE_DONE;
        return 1;
    }
    return -1;
}

int http1_msg_head_complete(const struct http1_msg *m)
{
    return m->phase != HTTP1_PHASE_HEAD;
}

int http1_msg_complete(const struct http1_msg *m)
{
    return m->phase == HTTP1_PHASE_DONE;
}

int http1_response_set(struct http1_msg *m, int status, const struct http1_header *fields,
                       size_t n)
{
    size_t i;
    if (n > m->limits->max_headers)
        return fail(m, 502, "too many header fields");
    if (n > m->cap_headers) {
        struct http1_header *h = realloc(m->headers, n * sizeof(*h));
        if (h == NULL)
            return fail(m, 500, "out of memory for header fields"); /* not the peer's fault */
        m->headers = h;
        m->cap_headers = n;
    }
    for (i = 0; i < n; i++) {
        const struct http1_header *f = &fields[i];
        if (f->name_len == 0)
            return fail(m, 502, "empty header name");
        if (!http1_name_chars_ok(f->name, f->name_len))
            return fail(m, 502, "invalid character in a header name");
        if (!http1_value_chars_ok(f->value, f->value_len))
            return fail(m, 502, "control character in a header value");
        m->headers[i] = *f;
    }
    m->nheaders = n;
    m->status = status;
    m->version_major = 2;
    m->version_minor = 0;
    m->keep_alive = 1;
    if (check_response(m) < 0)
        return -1;
    /* A framed stream ends by itself, never with a connection. */
    if (m->body == HTTP1_BODY_EOF)
        m->body = HTTP1_BODY_CHUNKED;
    m->phase = m->body == HTTP1_BODY_NONE ? HTTP1_PHASE_DONE : HTTP1_PHASE_BODY;
    return 0;
}
