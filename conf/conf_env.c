/* conf_env: configuration from environment variables (fastlane's names), and the overrides. */
#include "conf/conf.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/key.h"
#include "auth/profile.h"
#include "conf/conf_priv.h"

/* fastlane's names (fastlane/spaceship ConnectAPI::Token.from and app_store_connect_api_key),
 * so a CI job that already feeds fastlane can feed the proxy unchanged. */
#define ASC_KEY_ID       "APP_STORE_CONNECT_API_KEY_KEY_ID"
#define ASC_ISSUER_ID    "APP_STORE_CONNECT_API_KEY_ISSUER_ID"
#define ASC_KEY_FILEPATH "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH"
#define ASC_KEY          "APP_STORE_CONNECT_API_KEY_KEY"
#define ASC_BASE64       "APP_STORE_CONNECT_API_KEY_IS_KEY_CONTENT_BASE64"
#define ASC_DURATION     "APP_STORE_CONNECT_API_KEY_DURATION"
#define ASC_IN_HOUSE     "APP_STORE_CONNECT_API_KEY_IN_HOUSE"
#define WK_KEY_ID        "WEATHERKIT_KEY_ID"
#define WK_TEAM_ID       "WEATHERKIT_TEAM_ID"
#define WK_SERVICE_ID    "WEATHERKIT_SERVICE_ID"
#define WK_KEY_FILEPATH  "WEATHERKIT_KEY_FILEPATH"
#define WK_KEY           "WEATHERKIT_KEY"
#define APNS_KEY_ID       "APNS_KEY_ID"
#define APNS_TEAM_ID      "APNS_TEAM_ID"
#define APNS_KEY_FILEPATH "APNS_KEY_FILEPATH"
#define APNS_KEY          "APNS_KEY"
#define APNS_ENVIRONMENT  "APNS_ENVIRONMENT"
#define APNS_SANDBOX_UPSTREAM "https://api.sandbox.push.apple.com"
#define MAPS_KEY_ID      "APPLE_MAPS_KEY_ID"
#define MAPS_TEAM_ID     "APPLE_MAPS_TEAM_ID"
#define MAPS_KEY_FILEPATH "APPLE_MAPS_KEY_FILEPATH"
#define MAPS_KEY         "APPLE_MAPS_KEY"
#define BIZ_CLIENT_ID    "APPLE_BUSINESS_CLIENT_ID"
#define BIZ_KEY_ID       "APPLE_BUSINESS_KEY_ID"
#define BIZ_KEY_FILEPATH "APPLE_BUSINESS_KEY_FILEPATH"
#define BIZ_KEY          "APPLE_BUSINESS_KEY"
#define BIZ_SCOPE        "APPLE_BUSINESS_SCOPE"
#define ENV_LISTEN       "APPLE_AUTH_PROXY_LISTEN"
#define ENV_WORKERS      "APPLE_AUTH_PROXY_WORKERS"
#define ENV_ADMIN        "APPLE_AUTH_PROXY_ADMIN_LISTEN"
#define ENV_ANONYMOUS    "APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS"
#define ENV_CA_DIR       "APPLE_AUTH_PROXY_INTERCEPT_CA_DIR"
#define ENV_SERVER_NAMES "APPLE_AUTH_PROXY_SERVER_NAMES"

#define ASC_SET                                                                                    \
    ASC_KEY_ID ", " ASC_ISSUER_ID " (absent for an individual key) and " ASC_KEY_FILEPATH          \
               " or " ASC_KEY
#define APNS_SET                                                                                   \
    APNS_KEY_ID ", " APNS_TEAM_ID " and " APNS_KEY_FILEPATH " or " APNS_KEY                        \
                " (" APNS_ENVIRONMENT ": production or sandbox)"
#define MAPS_SET MAPS_KEY_ID ", " MAPS_TEAM_ID " and " MAPS_KEY_FILEPATH " or " MAPS_KEY
#define BIZ_SET                                                                                    \
    BIZ_CLIENT_ID ", " BIZ_KEY_ID " and " BIZ_KEY_FILEPATH " or " BIZ_KEY " (" BIZ_SCOPE " optional)"
#define WK_SET WK_KEY_ID ", " WK_TEAM_ID ", " WK_SERVICE_ID " and " WK_KEY_FILEPATH " or " WK_KEY

/* A set variable; an empty one counts as unset (how `docker run -e NAME=` reads). */
static const char *conf_env_get(conf_getenv_fn getenv_fn, const char *name)
{
    const char *v = getenv_fn(name);

    return v != NULL && v[0] != '\0' ? v : NULL;
}

static int conf_env_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* A copy without surrounding whitespace: secrets are often pasted with their final newline. */
static char *conf_env_trimmed(const char *v, size_t n)
{
    while (n > 0 && conf_env_space(*v)) {
        v++;
        n--;
    }
    while (n > 0 && conf_env_space(v[n - 1]))
        n--;
    return strndup(v, n);
}

static int conf_env_bool(const char *v, int *out)
{
    static const char *const yes[] = {"true", "1", "yes"}, *const no[] = {"false", "0", "no"};
    char *t = conf_env_trimmed(v, strlen(v));
    int rc = -1;
    size_t i;

    if (t == NULL)
        return -1;
    for (i = 0; i < 3; i++) {
        if (strcasecmp(t, yes[i]) == 0) {
            *out = 1;
            rc = 0;
        } else if (strcasecmp(t, no[i]) == 0) {
            *out = 0;
            rc = 0;
        }
    }
    free(t);
    return rc;
}

/* A decimal integer in [min, max], surrounding whitespace allowed. */
static int conf_env_long(const char *v, long min, long max, long *out)
{
    char *t = conf_env_trimmed(v, strlen(v));
    long n = 0;
    size_t i;
    int rc = -1;

    if (t == NULL)
        return -1;
    for (i = 0; t[i] >= '0' && t[i] <= '9' && i < 12; i++)
        n = n * 10 + (t[i] - '0');
    if (i > 0 && t[i] == '\0' && n >= min && n <= max) {
        *out = n;
        rc = 0;
    }
    free(t);
    return rc;
}

/* Copies an identifier and checks its syntax, reporting under the variable's name. */
static char *conf_env_ident(const char *var, const char *v, const char *(*check)(const char *s),
                            struct conf_msgs *errs)
{
    char *t = conf_env_trimmed(v, strlen(v));
    const char *why;

    if (t == NULL) {
        errs->oom = 1;
        return NULL;
    }
    if ((why = check(t)) != NULL) {
        char shown[72];

        conf_printable(t, shown, sizeof shown);
        conf_msgs_add(errs, var, "%s (got \"%s\")", why, shown);
    }
    return t;
}

static void conf_env_key(struct credential *cred, const char *file_var, const char *file,
                         const char *text_var, const char *text, struct conf_msgs *errs,
                         struct conf_msgs *warns)
{
    char err[768], warn[768];

    err[0] = warn[0] = '\0';
    if (file != NULL) {
        if (key_load_file(file, &cred->key, err, sizeof err, warn, sizeof warn) != 0)
            conf_msgs_add(errs, file_var, "%s", err);
        if (warn[0] != '\0')
            conf_msgs_add(warns, file_var, "%s", warn);
    } else if (key_load_text(text, strlen(text), &cred->key, err, sizeof err) != 0) {
        conf_msgs_add(errs, text_var, "%s", err);
    }
}

/* Maps credential_validate's field names back to the variables the user set. */
static const char *conf_env_rename_asc(const char *field)
{
    if (strcmp(field, "key_id") == 0)
        return ASC_KEY_ID;
    if (strcmp(field, "issuer_id") == 0)
        return ASC_ISSUER_ID;
    if (strcmp(field, "token_lifetime") == 0)
        return ASC_DURATION;
    return NULL;
}

static void conf_env_asc(struct conf *conf, conf_getenv_fn g, struct conf_msgs *errs,
                         struct conf_msgs *warns, int *found)
{
    const char *kid = conf_env_get(g, ASC_KEY_ID), *iss = conf_env_get(g, ASC_ISSUER_ID);
    const char *file = conf_env_get(g, ASC_KEY_FILEPATH), *text = conf_env_get(g, ASC_KEY);
    const char *b64 = conf_env_get(g, ASC_BASE64), *dur = conf_env_get(g, ASC_DURATION);
    const char *inhouse = conf_env_get(g, ASC_IN_HOUSE);
    struct credential c;
    int bad = 0, base64 = 0, in_house = 0;

    if (kid == NULL && iss == NULL && file == NULL && text == NULL)
        return;
    *found = 1;
    if (kid == NULL) {
        conf_msgs_add(errs, ASC_KEY_ID,
                      "not set, but other APP_STORE_CONNECT_API_KEY_* "
                      "variables are; App Store Connect needs " ASC_SET);
        bad = 1;
    }
    if (file == NULL && text == NULL) {
        conf_msgs_add(errs, ASC_KEY_FILEPATH,
                      "not set (nor " ASC_KEY "); App Store Connect "
                      "needs " ASC_SET);
        bad = 1;
    }
    if (file != NULL && text != NULL) {
        conf_msgs_add(errs, ASC_KEY, "set together with " ASC_KEY_FILEPATH "; set only one");
        bad = 1;
    }
    /* The key text is recognised as PEM or base64 by itself; the flag is checked so that a
     * typo in it is not silently ignored. */
    if (b64 != NULL && conf_env_bool(b64, &base64) != 0) {
        conf_msgs_add(errs, ASC_BASE64, "expected true or false");
        bad = 1;
    }
    if (inhouse != NULL && conf_env_bool(inhouse, &in_house) != 0) {
        conf_msgs_add(errs, ASC_IN_HOUSE, "expected true or false");
        bad = 1;
    }
    if (bad)
        return;
    memset(&c, 0, sizeof c);
    c.name = strdup("asc");
    /* fastlane's in_house: an Apple Developer Enterprise Program key, another API and aud. */
    c.profile = in_house ? PROFILE_ENTERPRISE : PROFILE_APP_STORE_CONNECT;
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key_id = conf_env_ident(ASC_KEY_ID, kid, conf_check_key_id, errs);
    if (iss != NULL)
        c.issuer_id = conf_env_ident(ASC_ISSUER_ID, iss, conf_check_uuid, errs);
    if (dur != NULL && conf_env_long(dur, 1, 1000000000L, &c.lifetime) != 0)
        conf_msgs_add(errs, ASC_DURATION, "expected a positive number of seconds");
    if (c.name == NULL)
        errs->oom = 1;
    conf_env_key(&c, ASC_KEY_FILEPATH, file, ASC_KEY, text, errs, warns);
    conf_credential_validate(&c, errs, conf_env_rename_asc);
    if (conf_credential_add(conf, &c) != 0)
        errs->oom = 1;
}

static const char *conf_env_check_business_scope(const char *s)
{
    return strcmp(s, "business.api") == 0 || strcmp(s, "school.api") == 0
               ? NULL
               : "expected business.api (Apple Business Manager) or school.api (Apple School "
                 "Manager)";
}

/* A credential made of a fixed set of variables (WeatherKit, Maps, Apple Business Manager): every
 * variable is required once any of them is set. */
struct conf_env_var {
    const char *var;
    size_t field;                        /* offsetof(struct credential, ...) of a char * */
    const char *(*check)(const char *s);
};

struct conf_env_set {
    const char *name;    /* the credential's name */
    enum token_profile profile;
    const char *product; /* "WeatherKit" */
    const char *prefix;  /* "WEATHERKIT_" */
    const char *set;     /* the whole set, for messages */
    const char *key_file, *key_text;
    struct conf_env_var vars[4];
    size_t nvars;
    const char *(*rename)(const char *field); /* credential_validate's field -> variable */
};

static const char *conf_env_rename_weatherkit(const char *field)
{
    if (strcmp(field, "key_id") == 0)
        return WK_KEY_ID;
    if (strcmp(field, "team_id") == 0)
        return WK_TEAM_ID;
    if (strcmp(field, "service_id") == 0)
        return WK_SERVICE_ID;
    return NULL;
}

static const char *conf_env_rename_maps(const char *field)
{
    if (strcmp(field, "key_id") == 0)
        return MAPS_KEY_ID;
    if (strcmp(field, "team_id") == 0)
        return MAPS_TEAM_ID;
    return NULL;
}

static const char *conf_env_rename_business(const char *field)
{
    if (strcmp(field, "key_id") == 0)
        return BIZ_KEY_ID;
    if (strcmp(field, "client_id") == 0)
        return BIZ_CLIENT_ID;
    if (strcmp(field, "scope") == 0)
        return BIZ_SCOPE;
    return NULL;
}

static const struct conf_env_set conf_env_sets[] = {
    {"weatherkit", PROFILE_WEATHERKIT, "WeatherKit", "WEATHERKIT_", WK_SET, WK_KEY_FILEPATH,
     WK_KEY,
     {{WK_KEY_ID, offsetof(struct credential, key_id), conf_check_key_id},
      {WK_TEAM_ID, offsetof(struct credential, team_id), conf_check_team_id},
      {WK_SERVICE_ID, offsetof(struct credential, service_id), conf_check_identifier}},
     3, conf_env_rename_weatherkit},
    {"maps", PROFILE_MAPS, "the Maps Server API", "APPLE_MAPS_", MAPS_SET, MAPS_KEY_FILEPATH,
     MAPS_KEY,
     {{MAPS_KEY_ID, offsetof(struct credential, key_id), conf_check_key_id},
      {MAPS_TEAM_ID, offsetof(struct credential, team_id), conf_check_team_id}},
     2, conf_env_rename_maps},
    {"business", PROFILE_APPLE_BUSINESS, "the Apple Business Manager API", "APPLE_BUSINESS_",
     BIZ_SET, BIZ_KEY_FILEPATH, BIZ_KEY,
     {{BIZ_KEY_ID, offsetof(struct credential, key_id), conf_check_key_id},
      {BIZ_CLIENT_ID, offsetof(struct credential, client_id), conf_check_identifier}},
     2, conf_env_rename_business},
};

static void conf_env_one_set(const struct conf_env_set *set, struct conf *conf, conf_getenv_fn g,
                             struct conf_msgs *errs, struct conf_msgs *warns, int *found)
{
    const char *file = conf_env_get(g, set->key_file), *text = conf_env_get(g, set->key_text);
    const char *v[4];
    struct credential c;
    int bad = 0, any = file != NULL || text != NULL;
    size_t i;

    for (i = 0; i < set->nvars; i++) {
        v[i] = conf_env_get(g, set->vars[i].var);
        any |= v[i] != NULL;
    }
    if (!any)
        return;
    *found = 1;
    for (i = 0; i < set->nvars; i++) {
        if (v[i] != NULL)
            continue;
        conf_msgs_add(errs, set->vars[i].var, "not set, but other %s* variables are; %s needs %s",
                      set->prefix, set->product, set->set);
        bad = 1;
    }
    if (file == NULL && text == NULL) {
        conf_msgs_add(errs, set->key_file, "not set (nor %s); %s needs %s", set->key_text,
                      set->product, set->set);
        bad = 1;
    }
    if (file != NULL && text != NULL) {
        conf_msgs_add(errs, set->key_text, "set together with %s; set only one", set->key_file);
        bad = 1;
    }
    if (bad)
        return;
    memset(&c, 0, sizeof c);
    c.name = strdup(set->name);
    c.profile = set->profile;
    c.skew = TOKEN_DEFAULT_SKEW;
    for (i = 0; i < set->nvars; i++)
        if (v[i] != NULL)
            *(char **)((char *)&c + set->vars[i].field) =
                conf_env_ident(set->vars[i].var, v[i], set->vars[i].check, errs);
    if (set->profile == PROFILE_APPLE_BUSINESS && conf_env_get(g, BIZ_SCOPE) != NULL) {
        /* One scope: "business.api" or "school.api" (checked with the profile). */
        c.scope = calloc(1, sizeof *c.scope);
        if (c.scope == NULL) {
            errs->oom = 1;
        } else {
            c.scope[0] = conf_env_ident(BIZ_SCOPE, conf_env_get(g, BIZ_SCOPE),
                                        conf_env_check_business_scope, errs);
            c.nscope = 1;
        }
    }
    if (c.name == NULL)
        errs->oom = 1;
    conf_env_key(&c, set->key_file, file, set->key_text, text, errs, warns);
    conf_credential_validate(&c, errs, set->rename);
    if (conf_credential_add(conf, &c) != 0)
        errs->oom = 1;
}

static const char *conf_env_rename_apns(const char *field)
{
    if (strcmp(field, "key_id") == 0)
        return APNS_KEY_ID;
    if (strcmp(field, "team_id") == 0)
        return APNS_TEAM_ID;
    return NULL;
}

/* APNs has two hosts with the same tokens: production, and sandbox for development builds. */
static void conf_env_apns(struct conf *conf, conf_getenv_fn g, struct conf_msgs *errs,
                          struct conf_msgs *warns, int *found, int *sandbox)
{
    const char *kid = conf_env_get(g, APNS_KEY_ID), *team = conf_env_get(g, APNS_TEAM_ID);
    const char *file = conf_env_get(g, APNS_KEY_FILEPATH), *text = conf_env_get(g, APNS_KEY);
    const char *env = conf_env_get(g, APNS_ENVIRONMENT);
    struct credential c;
    char *t;
    int bad = 0;

    if (kid == NULL && team == NULL && file == NULL && text == NULL && env == NULL)
        return;
    *found = 1;
    if (kid == NULL) {
        conf_msgs_add(errs, APNS_KEY_ID, "not set, but other APNS_* variables are; APNs needs " APNS_SET);
        bad = 1;
    }
    if (team == NULL) {
        conf_msgs_add(errs, APNS_TEAM_ID, "not set, but other APNS_* variables are; APNs needs " APNS_SET);
        bad = 1;
    }
    if (file == NULL && text == NULL) {
        conf_msgs_add(errs, APNS_KEY_FILEPATH, "not set (nor " APNS_KEY "); APNs needs " APNS_SET);
        bad = 1;
    }
    if (file != NULL && text != NULL) {
        conf_msgs_add(errs, APNS_KEY, "set together with " APNS_KEY_FILEPATH "; set only one");
        bad = 1;
    }
    if (env != NULL) {
        t = conf_env_trimmed(env, strlen(env));
        if (t == NULL) {
            errs->oom = 1;
            bad = 1;
        } else if (strcmp(t, "sandbox") == 0) {
            *sandbox = 1;
        } else if (strcmp(t, "production") != 0) {
            char shown[72];

            conf_printable(t, shown, sizeof shown);
            conf_msgs_add(errs, APNS_ENVIRONMENT, "expected production or sandbox (got \"%s\")",
                          shown);
            bad = 1;
        }
        free(t);
    }
    if (bad)
        return;
    memset(&c, 0, sizeof c);
    c.name = strdup("apns");
    c.profile = PROFILE_APNS;
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key_id = conf_env_ident(APNS_KEY_ID, kid, conf_check_key_id, errs);
    c.team_id = conf_env_ident(APNS_TEAM_ID, team, conf_check_team_id, errs);
    if (c.name == NULL)
        errs->oom = 1;
    conf_env_key(&c, APNS_KEY_FILEPATH, file, APNS_KEY, text, errs, warns);
    conf_credential_validate(&c, errs, conf_env_rename_apns);
    if (conf_credential_add(conf, &c) != 0)
        errs->oom = 1;
}

/* Points the derived APNs route at the sandbox host (development builds' device tokens). */
static void conf_env_apns_sandbox(struct conf *conf, struct conf_msgs *errs)
{
    const char *why;
    char buf[160];
    size_t i;

    for (i = 0; i < conf->nroutes; i++) {
        struct conf_route *r = &conf->routes[i];

        if (r->credential == NULL || strcmp(r->credential, "apns") != 0)
            continue;
        free(r->upstream);
        free(r->upstream_host);
        r->upstream_host = NULL;
        r->upstream = strdup(APNS_SANDBOX_UPSTREAM);
        why = conf_upstream_parse(APNS_SANDBOX_UPSTREAM, &r->upstream_host, &r->upstream_port,
                                  buf, sizeof buf);
        if (r->upstream == NULL || why != NULL)
            errs->oom = 1;
    }
}

/* The listen override names addresses; a file's listener at the same address keeps its TLS
 * settings (moved from conf->listen to list). A TLS listener the override leaves out would
 * otherwise become plain HTTP without a word (the Docker image sets APPLE_AUTH_PROXY_LISTEN):
 * that is an error. Returns the number of errors. */
static size_t conf_env_keep_tls(struct conf *conf, struct conf_addr *list, size_t n,
                                struct conf_msgs *errs)
{
    size_t i, j, bad = 0;

    for (i = 0; i < n; i++)
        for (j = 0; j < conf->nlisten; j++) {
            struct conf_addr *old = &conf->listen[j];

            if ((old->tls_cert_file == NULL && old->nserver_names == 0) ||
                strcmp(old->text, list[i].text) != 0)
                continue;
            conf_addr_move_settings(&list[i], old);
            break;
        }
    for (j = 0; j < conf->nlisten; j++) {
        if (conf->listen[j].tls_cert_file == NULL)
            continue;
        conf_msgs_add(errs, ENV_LISTEN,
                      "replaces listen[%zu] (%s), a TLS listener, with plain HTTP; add %s to "
                      "APPLE_AUTH_PROXY_LISTEN to keep it (with its TLS settings), or set "
                      "APPLE_AUTH_PROXY_LISTEN to an empty value to use the configuration's "
                      "listen",
                      j, conf->listen[j].text, conf->listen[j].text);
        bad++;
    }
    return bad;
}

/* APPLE_AUTH_PROXY_SERVER_NAMES: comma-separated names replacing the top-level server_names
 * (a container reached by its service name needs one). */
static void conf_env_server_names(struct conf *conf, conf_getenv_fn g, struct conf_msgs *errs)
{
    const char *v = conf_env_get(g, ENV_SERVER_NAMES), *p;
    char **names;
    size_t n = 0, i = 0, k, bad = 0;

    if (v == NULL)
        return;
    for (p = v; *p != '\0'; p++)
        n += *p == ',';
    if (++n > CONF_MAX_LIST) {
        conf_msgs_add(errs, ENV_SERVER_NAMES, "at most %d names", CONF_MAX_LIST);
        return;
    }
    names = calloc(n + 1, sizeof *names);
    if (names == NULL) {
        errs->oom = 1;
        return;
    }
    for (p = v, k = 0; k < n; k++) {
        size_t len = strcspn(p, ",");
        char *entry = conf_env_trimmed(p, len);
        char shown[72];

        p += len + (p[len] == ',');
        if (entry == NULL) {
            errs->oom = 1;
            bad++;
            break;
        }
        if (entry[0] == '\0') {
            free(entry);
        } else if (conf_check_server_name(entry) != NULL) {
            conf_printable(entry, shown, sizeof shown);
            conf_msgs_add(errs, ENV_SERVER_NAMES, "%s (got \"%s\")",
                          conf_check_server_name(entry), shown);
            free(entry);
            bad++;
        } else {
            names[i++] = entry;
        }
    }
    if (bad > 0) {
        conf_strings_free(names, i);
        return;
    }
    conf_strings_free(conf->server_names, conf->nserver_names);
    conf->server_names = names;
    conf->nserver_names = i;
}

void conf_env_overrides(struct conf *conf, conf_getenv_fn g, struct conf_msgs *errs)
{
    const char *v = conf_env_get(g, ENV_LISTEN), *p;
    struct conf_addr *list = NULL;
    size_t n = 1, i = 0, j, bad = 0;
    long workers;

    if (v != NULL) {
        for (p = v; *p != '\0'; p++)
            n += *p == ',';
        if (n > CONF_MAX_LISTEN) {
            conf_msgs_add(errs, ENV_LISTEN, "at most %d addresses", CONF_MAX_LISTEN);
            goto workers;
        }
        list = calloc(n, sizeof *list);
        if (list == NULL) {
            errs->oom = 1;
            goto workers;
        }
        for (p = v; i < n; i++) {
            size_t len = strcspn(p, ",");
            char *entry = conf_env_trimmed(p, len);
            char why[160], shown[72];

            p += len + (p[len] == ',');
            if (entry == NULL) {
                errs->oom = 1;
                bad++;
                continue;
            }
            conf_printable(entry, shown, sizeof shown);
            if (conf_addr_parse_why(entry, &list[i], 1, why, sizeof why) != 0) {
                conf_msgs_add(errs, ENV_LISTEN,
                              "%s (got \"%s\"; expected comma-separated "
                              "host:port addresses)",
                              why, shown);
                bad++;
            } else {
                for (j = 0; j < i; j++)
                    if (list[i].port != 0 && list[j].text != NULL &&
                        strcmp(list[j].text, list[i].text) == 0)
                        break;
                if (j < i) {
                    conf_msgs_add(errs, ENV_LISTEN, "\"%s\" is listed twice", shown);
                    bad++;
                }
            }
            free(entry);
        }
        if (bad == 0)
            bad = conf_env_keep_tls(conf, list, n, errs);
        if (bad > 0) {
            for (i = 0; i < n; i++)
                conf_addr_deinit(&list[i]);
            free(list);
        } else {
            for (i = 0; i < conf->nlisten; i++)
                conf_addr_deinit(&conf->listen[i]);
            free(conf->listen);
            conf->listen = list;
            conf->nlisten = n;
            conf->listen_source = ENV_LISTEN;
        }
    }
workers:
    v = conf_env_get(g, ENV_ADMIN);
    if (v != NULL) {
        struct conf_addr a;
        char why[160], shown[72];
        char *t = conf_env_trimmed(v, strlen(v));
        memset(&a, 0, sizeof a);
        if (t == NULL) {
            errs->oom = 1;
        } else if (strcmp(t, "off") == 0) {
            conf_addr_deinit(&conf->admin_listen);
        } else if (conf_addr_parse_why(t, &a, 1, why, sizeof why) != 0) {
            conf_printable(t, shown, sizeof shown);
            conf_msgs_add(errs, ENV_ADMIN, "%s (got \"%s\"; expected host:port or off)", why,
                          shown);
        } else {
            conf_addr_deinit(&conf->admin_listen);
            conf->admin_listen = a;
        }
        free(t);
    }
    conf_env_server_names(conf, g, errs);
    v = conf_env_get(g, ENV_ANONYMOUS);
    if (v != NULL && conf_env_bool(v, &conf->allow_anonymous_clients) != 0)
        conf_msgs_add(errs, ENV_ANONYMOUS, "expected true or false (or 1/0, yes/no)");
    v = conf_env_get(g, ENV_CA_DIR);
    if (v != NULL && v[0] != '/') {
        conf_msgs_add(errs, ENV_CA_DIR, "expected an absolute directory path");
    } else if (v != NULL) {
        char *d = strdup(v);
        if (d == NULL) {
            errs->oom = 1;
        } else {
            free(conf->intercept_ca_dir);
            conf->intercept_ca_dir = d;
        }
    }
    v = conf_env_get(g, ENV_WORKERS);
    if (v == NULL)
        return;
    if (conf_env_long(v, 0, CONF_MAX_WORKERS, &workers) != 0)
        conf_msgs_add(errs, ENV_WORKERS, "expected an integer from 0 to %d (0: one per core)",
                      CONF_MAX_WORKERS);
    else
        conf->workers = (int)workers;
}

int conf_load_env(const char *(*getenv_fn)(const char *name), struct conf **out, char **errors,
                  char **warnings)
{
    struct conf_msgs errs, warns;
    struct conf *conf;
    int found = 0, sandbox = 0;

    memset(&errs, 0, sizeof errs);
    memset(&warns, 0, sizeof warns);
    if (getenv_fn == NULL)
        getenv_fn = conf_getenv;
    conf = conf_new_default("environment");
    if (conf == NULL) {
        errs.oom = 1;
        goto out;
    }
    conf_env_asc(conf, getenv_fn, &errs, &warns, &found);
    for (size_t i = 0; i < sizeof conf_env_sets / sizeof conf_env_sets[0]; i++)
        conf_env_one_set(&conf_env_sets[i], conf, getenv_fn, &errs, &warns, &found);
    conf_env_apns(conf, getenv_fn, &errs, &warns, &found, &sandbox);
    if (!found)
        conf_msgs_add(&errs, "no configuration",
                      "pass --config FILE, set APPLE_AUTH_PROXY_CONFIG, or set " ASC_SET
                      " (App Store Connect) / " WK_SET " (WeatherKit) / " APNS_SET " (APNs) / "
                      MAPS_SET " (Maps) / " BIZ_SET " (Apple Business Manager)");
    /* WeatherKit's "/api/v1/" sorts before App Store Connect's "/": most specific first. */
    conf_routes_derive(conf, &errs);
    if (sandbox)
        conf_env_apns_sandbox(conf, &errs);
    conf_env_overrides(conf, getenv_fn, &errs);
    conf_listen_check(conf, &errs);
    conf_finish(conf, 0, &errs, &warns);
out:
    return conf_result(conf, &errs, &warns, out, errors, warnings);
}

int conf_load(const char *path, struct conf **out, char **errors, char **warnings)
{
    struct conf_msgs errs, warns;
    struct conf *conf;
    const char *env_path;

    if (path == NULL) {
        env_path = conf_env_get(conf_getenv, "APPLE_AUTH_PROXY_CONFIG");
        if (env_path == NULL)
            return conf_load_env(conf_getenv, out, errors, warnings);
        path = env_path;
    }
    memset(&errs, 0, sizeof errs);
    memset(&warns, 0, sizeof warns);
    conf = conf_parse_file(path, conf_getenv, &errs, &warns);
    if (conf != NULL) {
        conf_env_overrides(conf, conf_getenv, &errs);
        conf_listen_check(conf, &errs);
    }
    return conf_result(conf, &errs, &warns, out, errors, warnings);
}
