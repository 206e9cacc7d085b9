/* conf_exposure: the gateway's safety rule. A proxy that answers on a non-loopback address
 * mints Apple tokens for anyone who can reach it, unless clients must identify themselves. */
#include "conf/conf.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf/conf_priv.h"

/* 127.0.0.0/8, ::1 (and ::ffff:127.0.0.0/104), "localhost". Everything else, the wildcard
 * addresses 0.0.0.0 and :: and every other name included, counts as reachable from outside. */
static int conf_host_loopback(const char *host)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char v6loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    unsigned char a[16];

    if (host == NULL)
        return 0;
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1)
        return memcmp(a, v6loopback, 16) == 0 ||
               (memcmp(a, v4mapped, sizeof v4mapped) == 0 && a[12] == 127);
    return 0;
}

/* Appends lines (malloc'd, taken over, may be NULL) to *dst; -1 when out of memory. */
static int conf_append(char **dst, char *lines)
{
    size_t have, add, sep;
    char *p;

    if (lines == NULL)
        return 0;
    if (dst == NULL) {
        free(lines);
        return 0;
    }
    if (*dst == NULL || **dst == '\0') {
        free(*dst);
        *dst = lines;
        return 0;
    }
    have = strlen(*dst);
    add = strlen(lines);
    sep = (*dst)[have - 1] != '\n';
    p = realloc(*dst, have + sep + add + 1);
    if (p == NULL) {
        free(lines);
        return -1;
    }
    if (sep)
        p[have] = '\n';
    memcpy(p + have + sep, lines, add + 1);
    *dst = p;
    free(lines);
    return 0;
}

void conf_listen_name(const struct conf *conf, size_t i, char *out, size_t outlen)
{
    if (conf->listen_source != NULL)
        snprintf(out, outlen, "%s", conf->listen_source);
    else
        conf_path_index(out, outlen, "listen", i);
}

int conf_check_exposure(const struct conf *conf, char **errors, char **warnings)
{
    struct conf_msgs errs, warns;
    char list[1024], path[CONF_PATH_MAX];
    size_t i, used = 0, exposed = 0, first = 0, unlisted = 0;
    int failed;

    if (conf == NULL || conf->nclients > 0)
        return 0;
    memset(&errs, 0, sizeof errs);
    memset(&warns, 0, sizeof warns);
    list[0] = '\0';
    for (i = 0; i < conf->nlisten; i++) {
        const struct conf_addr *a = &conf->listen[i];
        const char *text = a->text != NULL ? a->text : "?";

        if (conf_host_loopback(a->host))
            continue;
        conf_listen_name(conf, i, path, sizeof path);
        if (!conf->allow_anonymous_clients) {
            conf_msgs_add(&errs, path,
                          "%s is not a loopback address and no client identities are "
                          "configured: add \"clients\" (see docs/deployment.md, the gateway) or "
                          "set \"allow_anonymous_clients\": true to accept anyone who can reach "
                          "it",
                          text);
            continue;
        }
        if (exposed++ == 0)
            first = i;
        if (used + strlen(text) + 8 < sizeof list)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used > 0 ? ", " : "",
                                     text);
        else
            unlisted++;
    }
    /* One warning for all of them: the opt-out was deliberate. */
    if (exposed > 0) {
        if (exposed == 1)
            conf_listen_name(conf, first, path, sizeof path);
        else
            snprintf(path, sizeof path, "%s",
                     conf->listen_source != NULL ? conf->listen_source : "listen");
        if (unlisted > 0)
            conf_msgs_add(&warns, path,
                          "allow_anonymous_clients is true and no client identities are "
                          "configured: anyone who can reach %s (and %zu more) can use the "
                          "configured Apple keys",
                          list, unlisted);
        else
            conf_msgs_add(&warns, path,
                          "allow_anonymous_clients is true and no client identities are "
                          "configured: anyone who can reach %s can use the configured Apple "
                          "keys",
                          list);
    }
    /* Out of memory while appending loses text, never the verdict. */
    failed = conf_msgs_any(&errs);
    (void)conf_append(errors, conf_msgs_take(&errs));
    (void)conf_append(warnings, conf_msgs_take(&warns));
    return failed ? -1 : 0;
}
