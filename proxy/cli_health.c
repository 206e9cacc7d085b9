/* cli_health: `apple-auth-proxy health`: one GET of /healthz (or /readyz) on the admin listener
 * of a running proxy, exit 0 when it answers 200. It is the container image's HEALTHCHECK: the
 * image has no shell and no HTTP client, so the binary probes itself. */
#include "proxy/cli_health.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "conf/conf.h"
#include "proxy/cli.h"

#define HEALTH_EXIT_UNHEALTHY 1
#define HEALTH_EXIT_USAGE     2
/* Where the admin listener is when neither --admin nor APPLE_AUTH_PROXY_ADMIN_LISTEN says. */
#define HEALTH_ADMIN_DEFAULT   "127.0.0.1:9901"
#define HEALTH_TIMEOUT_DEFAULT 5 /* seconds for the whole probe: connect, send, answer */
#define HEALTH_TIMEOUT_MAX     300
/* The answer is read up to this many bytes: the status line and enough of the body (the reasons
 * /readyz gives) for the message; anything longer is cut, never an error. */
#define HEALTH_RESPONSE_MAX 65536 /* /readyz of a proxy with many credentials fits */
#define HEALTH_REASON_MAX   300 /* bytes of the body repeated in the failure message */

static const char health_usage[] =
    "usage: apple-auth-proxy health [--admin ADDR | -c FILE] [--ready] [--timeout SECONDS]\n"
    "\n"
    "GET /healthz (/readyz with --ready) on a running proxy's admin listener; exit 0 when it\n"
    "answers 200, 1 otherwise (2 for a usage error). ADDR is HOST:PORT. Without --admin the\n"
    "address is the one `serve` would use: admin_listen of the configuration file (-c FILE,\n"
    "else $APPLE_AUTH_PROXY_CONFIG) with $APPLE_AUTH_PROXY_ADMIN_LISTEN over it; with no file,\n"
    "$APPLE_AUTH_PROXY_ADMIN_LISTEN, else " HEALTH_ADMIN_DEFAULT ". A wildcard host (0.0.0.0,\n"
    "[::]) is probed on loopback. --timeout bounds the whole probe (default 5, at most 300).\n";

static long health_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until deadline_ms. Returns 1 when ready, 0 on timeout, -1 on error. */
static int health_wait(int fd, short events, long deadline_ms)
{
    for (;;) {
        long left = deadline_ms - health_now_ms();
        struct pollfd p = {.fd = fd, .events = events};
        int rc;
        if (left <= 0)
            return 0;
        rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        return rc < 0 ? -1 : rc > 0;
    }
}

/* Connects to one address before the deadline; returns the connected non-blocking socket, or
 * -1 with why filled in. */
static int health_connect_one(const struct addrinfo *ai, long deadline_ms, char *why, size_t whylen)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    int err = 0;
    socklen_t errlen = sizeof(err);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        goto fail;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno != EINPROGRESS) {
        snprintf(why, whylen, "%s", strerror(errno));
        goto fail;
    }
    switch (health_wait(fd, POLLOUT, deadline_ms)) {
    case 0:
        snprintf(why, whylen, "no connection before the timeout");
        goto fail;
    case -1:
        snprintf(why, whylen, "poll: %s", strerror(errno));
        goto fail;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0)
        err = errno;
    if (err != 0) {
        snprintf(why, whylen, "%s", strerror(err));
        goto fail;
    }
    return fd;
fail:
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Sends the whole request before the deadline. Returns 0, or -1 with why filled in. */
static int health_send(int fd, const char *req, size_t len, long deadline_ms, char *why,
                       size_t whylen)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if ((errno != EAGAIN && errno != EWOULDBLOCK) ||
            health_wait(fd, POLLOUT, deadline_ms) != 1) {
            snprintf(why, whylen, "cannot send the request: %s",
                     errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Reads the answer into buf (NUL-terminated) until the peer closes, the buffer is full or the
 * deadline passes. Returns the length, or -1 with why filled in when nothing arrived. */
static ssize_t health_recv(int fd, char *buf, size_t size, long deadline_ms, char *why,
                           size_t whylen)
{
    size_t len = 0;
    int timed_out = 0;
    while (len + 1 < size) {
        ssize_t n = recv(fd, buf + len, size - 1 - len, 0);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        if (n == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            if (len == 0) {
                snprintf(why, whylen, "reading the answer: %s", strerror(errno));
                return -1;
            }
            break;
        }
        if (health_wait(fd, POLLIN, deadline_ms) != 1) {
            timed_out = 1;
            break;
        }
    }
    buf[len] = '\0';
    if (len == 0) {
        snprintf(why, whylen,
                 timed_out ? "no answer before the timeout" : "closed without an answer");
        return -1;
    }
    return (ssize_t)len;
}

/* The status code of "HTTP/1.x NNN ...", or -1 when the answer does not start with one. */
static int health_status(const char *resp)
{
    if (strncmp(resp, "HTTP/1.", 7) != 0 || (resp[7] != '0' && resp[7] != '1') || resp[8] != ' ')
        return -1;
    for (int i = 9; i < 12; i++)
        if (resp[i] < '0' || resp[i] > '9')
            return -1;
    if (resp[12] != ' ' && resp[12] != '\r' && resp[12] != '\n')
        return -1;
    return (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
}

/* Appends s to out (at *o) as printable ASCII, up to HEALTH_REASON_MAX bytes in all. */
static void health_put(char *out, size_t outlen, size_t *o, const char *s)
{
    for (; *s && *o + 1 < outlen && *o < HEALTH_REASON_MAX; s++)
        if ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f)
            out[(*o)++] = *s;
    out[*o] = '\0';
}

/* /readyz's JSON ({"ready": B, "checks": [{"name", "state", "ok", "detail"}...]}) as one line:
 * "ready" or "not ready", then the failing checks, then the others, each "NAME STATE: DETAIL".
 * The failing ones come first so that the length limit never cuts what made the proxy unready.
 * Returns -1 when the body is not that document. */
static int health_reason_ready(const char *body, size_t len, char *out, size_t outlen)
{
    cJSON *doc = cJSON_ParseWithLength(body, len), *ready, *checks, *c;
    size_t o = 0;
    if (doc == NULL)
        return -1;
    ready = cJSON_GetObjectItemCaseSensitive(doc, "ready");
    checks = cJSON_GetObjectItemCaseSensitive(doc, "checks");
    if (!cJSON_IsBool(ready) || !cJSON_IsArray(checks)) {
        cJSON_Delete(doc);
        return -1;
    }
    health_put(out, outlen, &o, cJSON_IsTrue(ready) ? "ready" : "not ready");
    /* pass 0: the checks that failed; pass 1: the rest, in the proxy's order */
    for (int pass = 0; pass < 2; pass++) {
        cJSON_ArrayForEach(c, checks)
        {
            const cJSON *ok = cJSON_GetObjectItemCaseSensitive(c, "ok");
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "name"));
            const char *state = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "state"));
            const char *detail =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "detail"));
            if ((pass == 0) != cJSON_IsFalse(ok) || name == NULL)
                continue;
            health_put(out, outlen, &o, "; ");
            health_put(out, outlen, &o, name);
            if (state) {
                health_put(out, outlen, &o, " ");
                health_put(out, outlen, &o, state);
            }
            if (detail) {
                health_put(out, outlen, &o, ": ");
                health_put(out, outlen, &o, detail);
            }
        }
    }
    cJSON_Delete(doc);
    return 0;
}

/* Copies the start of the body into out as one printable line (newlines become "; "), so that a
 * failing /readyz says why in `docker inspect` and the kubelet's events; /readyz's own JSON is
 * summarised, failing checks first. */
static void health_reason(const char *resp, size_t len, char *out, size_t outlen)
{
    const char *body = memmem(resp, len, "\r\n\r\n", 4), *end = resp + len;
    size_t o = 0;
    out[0] = '\0';
    if (body == NULL)
        return;
    if (health_reason_ready(body + 4, (size_t)(end - body - 4), out, outlen) == 0)
        return;
    for (const char *p = body + 4; p < end && o + 3 < outlen && o < HEALTH_REASON_MAX; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n') {
            if (p + 1 < end) {
                out[o++] = ';';
                out[o++] = ' ';
            }
        } else if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

static int health_parse_args(int argc, char **argv, const char **admin, const char **config,
                             int *ready, int *timeout)
{
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--admin") && i + 1 < argc) {
            *admin = argv[++i];
        } else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            *config = argv[++i];
        } else if (!strcmp(argv[i], "--ready")) {
            *ready = 1;
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            char *end;
            long v;
            errno = 0;
            v = strtol(argv[++i], &end, 10);
            if (errno || end == argv[i] || *end || v < 1 || v > HEALTH_TIMEOUT_MAX) {
                fprintf(stderr,
                        "apple-auth-proxy health: --timeout takes whole seconds, 1 to %d, "
                        "not \"%s\"\n",
                        HEALTH_TIMEOUT_MAX, argv[i]);
                return -1;
            }
            *timeout = (int)v;
        } else {
            fprintf(stderr, "apple-auth-proxy health: unknown or incomplete option \"%s\"\n%s",
                    argv[i], health_usage);
            return -1;
        }
    }
    if (*admin != NULL && *config != NULL) {
        fprintf(stderr, "apple-auth-proxy health: give --admin or -c, not both\n%s", health_usage);
        return -1;
    }
    return 0;
}

/* The admin address `serve` would listen on with this configuration file: its admin_listen,
 * which conf_load has already overridden with APPLE_AUTH_PROXY_ADMIN_LISTEN when that is set.
 * Copies it into buf ("off" when the file turns the listener off). Returns -1 when the file
 * cannot be loaded (said on stderr). */
static int health_admin_from_config(const char *path, char *buf, size_t size)
{
    struct conf *conf = NULL;
    char *errors = NULL, *warnings = NULL;
    int rc = -1;
    if (conf_load(path, &conf, &errors, &warnings) < 0) {
        cli_print_lines("apple-auth-proxy health: ", errors ? errors : "invalid configuration");
        goto out;
    }
    if (conf->admin_listen.text == NULL)
        snprintf(buf, size, "off");
    else if ((size_t)snprintf(buf, size, "%s", conf->admin_listen.text) >= size)
        goto out;
    rc = 0;
out:
    /* Warnings are the business of `check` and `serve`: a probe that runs every 30 s keeps its
     * output to the answer. */
    free(errors);
    free(warnings);
    conf_free(conf);
    return rc;
}

int cli_health(int argc, char **argv)
{
    const char *admin = NULL, *config = NULL, *path, *host;
    char admin_buf[300];
    int ready = 0, timeout = HEALTH_TIMEOUT_DEFAULT, rc = HEALTH_EXIT_UNHEALTHY, fd = -1;
    int status, v6;
    struct conf_addr addr = {0};
    struct addrinfo hints = {0}, *res = NULL;
    char port[8], hostport[300], url[340], req[512], resp[HEALTH_RESPONSE_MAX];
    char why[HEALTH_REASON_MAX + 64] = "", reason[HEALTH_REASON_MAX + 4];
    long deadline;
    ssize_t got;
    int n;

    if (argc == 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
        fputs(health_usage, stdout);
        return 0;
    }
    if (health_parse_args(argc, argv, &admin, &config, &ready, &timeout) < 0)
        return HEALTH_EXIT_USAGE;
    if (admin == NULL && config == NULL) {
        config = getenv("APPLE_AUTH_PROXY_CONFIG");
        if (config != NULL && config[0] == '\0')
            config = NULL;
    }
    if (admin == NULL && config != NULL) {
        if (health_admin_from_config(config, admin_buf, sizeof(admin_buf)) < 0)
            return HEALTH_EXIT_USAGE;
        admin = admin_buf;
    }
    if (admin == NULL) {
        admin = getenv("APPLE_AUTH_PROXY_ADMIN_LISTEN");
        if (admin == NULL || admin[0] == '\0')
            admin = HEALTH_ADMIN_DEFAULT;
    }
    /* "off" turns the admin listener off (docs/configuration.md): nothing can say the proxy is
     * healthy, which is a failed check, not a usage error. */
    if (strcmp(admin, "off") == 0) {
        fprintf(stderr, "apple-auth-proxy health: the admin listener is off (admin address "
                        "\"off\"), so there is no /healthz to ask\n");
        return HEALTH_EXIT_UNHEALTHY;
    }
    if (conf_addr_parse(admin, &addr, 0) < 0) {
        fprintf(stderr,
                "apple-auth-proxy health: invalid admin address \"%s\" (expected HOST:PORT "
                "or [V6]:PORT)\n",
                admin);
        return HEALTH_EXIT_USAGE;
    }
    path = ready ? "/readyz" : "/healthz";
    /* A listener on every address is reached through loopback of the same family. */
    host = addr.host;
    if (!strcmp(host, "0.0.0.0"))
        host = "127.0.0.1";
    else if (!strcmp(host, "::"))
        host = "::1";
    snprintf(port, sizeof(port), "%d", addr.port);
    v6 = strchr(host, ':') != NULL;
    snprintf(hostport, sizeof(hostport), "%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
    snprintf(url, sizeof(url), "http://%s%s", hostport, path);
    deadline = health_now_ms() + (long)timeout * 1000;

    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    n = getaddrinfo(host, port, &hints, &res);
    if (n != 0) {
        snprintf(why, sizeof(why), "cannot resolve %s: %s", host, gai_strerror(n));
        goto fail;
    }
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next)
        fd = health_connect_one(ai, deadline, why, sizeof(why));
    if (fd < 0)
        goto fail;
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s\r\n"
                 "User-Agent: apple-auth-proxy-health\r\nConnection: close\r\n\r\n",
                 path, hostport);
    if (n < 0 || (size_t)n >= sizeof(req)) {
        snprintf(why, sizeof(why), "host name too long");
        goto fail;
    }
    if (health_send(fd, req, (size_t)n, deadline, why, sizeof(why)) < 0)
        goto fail;
    got = health_recv(fd, resp, sizeof(resp), deadline, why, sizeof(why));
    if (got < 0)
        goto fail;
    status = health_status(resp);
    if (status < 0) {
        snprintf(why, sizeof(why), "the answer is not HTTP/1.x");
        goto fail;
    }
    health_reason(resp, (size_t)got, reason, sizeof(reason));
    if (status != 200) {
        snprintf(why, sizeof(why), "answered %d%s%s", status, reason[0] ? ": " : "", reason);
        goto fail;
    }
    printf("apple-auth-proxy health: GET %s answered 200%s%s\n", url, reason[0] ? ": " : "",
           reason);
    rc = 0;
fail:
    if (rc != 0)
        fprintf(stderr, "apple-auth-proxy health: GET %s: %s\n", url, why);
    if (fd >= 0)
        close(fd);
    if (res)
        freeaddrinfo(res);
    conf_addr_deinit(&addr);
    return rc;
}
