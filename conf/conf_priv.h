/* conf_priv: what the files of conf/ share among themselves; not an interface for others. */
#ifndef AAP_CONF_CONF_PRIV_H
#define AAP_CONF_CONF_PRIV_H

/* conf/ is one module (conf.h) in six files, each under a thousand lines:
 *   conf.c          files and strings, the top level, limits, credentials, conf_free
 *   conf_value.c    messages, the syntax of single values, addresses, URLs, the table reader
 *   conf_route.c    "routes", their checks against the credentials, default routes
 *   conf_env.c      environment-only mode and the APPLE_AUTH_PROXY_* overrides, conf_load
 *   conf_gateway.c  the team gateway: "clients", listen objects with "tls", their checks
 *   conf_exposure.c conf_check_exposure: non-loopback listeners need client identities */

#include <stddef.h>
#include <cjson/cJSON.h>
#include "conf/conf.h"

/* A configuration with one mistake per line is read top to bottom; past this many lines the
 * rest are counted, not printed (a fuzzed or wrong file could otherwise produce megabytes). */
#define CONF_MAX_MESSAGES 100

/* Hard limits on list sizes (docs/configuration.md, "Limits on the file itself"). */
#define CONF_MAX_CREDENTIALS 256
#define CONF_MAX_ROUTES      1024
#define CONF_MAX_LIST        256 /* scope, origin, allow, methods and allow_cidrs entries */
#define CONF_MAX_CLIENTS     1024

#define CONF_DEFAULT_LISTEN         "127.0.0.1:8080"
#define CONF_DEFAULT_ADMIN_LISTEN   "127.0.0.1:9901"
#define CONF_DEFAULT_REFRESH_MARGIN 300
#define CONF_MAX_WORKERS            256

#define CONF_PATH_MAX 256 /* "routes[12].strip_prefix" and the like, names shortened */
#define CONF_SHOWN    72  /* how much of a name or value a message repeats */

typedef const char *(*conf_getenv_fn)(const char *name);

/* ---- messages ---- */

/* Collected messages: "PATH: message\n" lines, deduplicated, at most CONF_MAX_MESSAGES. */
struct conf_msgs {
    char *buf;
    size_t len, cap;
    size_t count;   /* lines kept */
    size_t dropped; /* lines over the cap */
    int oom;
};

__attribute__((format(printf, 3, 4))) void conf_msgs_add(struct conf_msgs *m, const char *path,
                                                         const char *fmt, ...);
/* 1 when a line for exactly this path ("PATH: ...") was already added. */
int conf_msgs_has_path(const struct conf_msgs *m, const char *path);
/* Hands the lines over (malloc'd, caller frees; NULL when there are none) and resets m. */
char *conf_msgs_take(struct conf_msgs *m);
void conf_msgs_deinit(struct conf_msgs *m);
/* 1 when any message was recorded (including ones over the cap or lost to memory). */
int conf_msgs_any(const struct conf_msgs *m);

/* Copies s for a message: printable ASCII only ('"' and '\\' and controls become '?'),
 * truncated with "..." to fit out. */
void conf_printable(const char *s, char *out, size_t outlen);

/* ---- single values: each check returns NULL when s is fine, else what was expected ---- */

const char *conf_check_key_id(const char *s);
const char *conf_check_team_id(const char *s);
const char *conf_check_uuid(const char *s);
const char *conf_check_identifier(const char *s);
const char *conf_check_scope(const char *s);
const char *conf_check_cred_scope(const char *s);
const char *conf_check_origin(const char *s);
const char *conf_check_env_name(const char *s);
const char *conf_check_path_prefix(const char *s);
const char *conf_check_credential_name(const char *s);
const char *conf_check_route_host(const char *s);
const char *conf_check_server_name(const char *s);
const char *conf_check_allowed_origin(const char *s);

/* Frees a list of n strings (and the list); NULL is a no-op. */
void conf_strings_free(char **v, size_t n);

/* Parses an address with the reason for a refusal in why. */
int conf_addr_parse_why(const char *text, struct conf_addr *addr, int allow_port0, char *why,
                        size_t whylen);

/* Parses "https://name[:port]" with at most a trailing "/". Returns NULL with *host (malloc'd,
 * lower case, IPv6 without brackets) and *port, or what is wrong (possibly in why). */
const char *conf_upstream_parse(const char *url, char **host, int *port, char *why, size_t whylen);

/* ---- the table-driven reader ---- */

/* One pass over a file. */
struct conf_ctx {
    struct conf *conf;
    struct conf_msgs *errs;
    struct conf_msgs *warns;
    conf_getenv_fn getenv_fn; /* for private_key_env */
    int credentials_given;
    int routes_given;
    int margin_given;
};

enum conf_store {
    CONF_STORE_INT,
    CONF_STORE_LONG,
    CONF_STORE_SIZE,
    CONF_STORE_ULL,
    CONF_STORE_MS /* seconds in JSON (fractions allowed), milliseconds in a long */
};

struct conf_field;
typedef void (*conf_set_fn)(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                            const struct conf_field *f);

/* One key of one JSON object: its setter reads the value and writes base + offset. */
struct conf_field {
    const char *name;
    conf_set_fn set;
    size_t offset;
    size_t count_offset;                 /* string lists: where the count goes */
    const char *(*check)(const char *s); /* strings: NULL when fine, else what was expected */
    int lower;                           /* strings: store in lower case */
    enum conf_store store;               /* numbers */
    double min, max, def;                /* numbers: range and default */
    const char *unit;                    /* numbers: appended to messages, e.g. " seconds" */
};

void conf_oom(struct conf_ctx *ctx);
void conf_path_key(char *out, size_t outlen, const char *parent, const char *key);
void conf_path_index(char *out, size_t outlen, const char *parent, size_t i);
size_t conf_count_children(const cJSON *item);
/* Flags (malloc'd, n entries) for the members of obj whose name appeared earlier in it; NULL
 * when there are fewer than two members (or no memory, reported through ctx). */
unsigned char *conf_dup_flags(struct conf_ctx *ctx, const cJSON *obj, size_t n);
/* Reports duplicate and unknown keys of obj and hands every known one to its setter. */
void conf_object_apply(struct conf_ctx *ctx, const cJSON *obj, const char *path,
                       const struct conf_field *fields, size_t nfields, void *base);
void conf_number_store(void *dst, enum conf_store store, double v);
/* Returns the non-empty string value (checked with check when given), or NULL after
 * reporting what is wrong. */
const char *conf_string_value(struct conf_ctx *ctx, const cJSON *item, const char *path,
                              const char *(*check)(const char *s));

/* The checks every list starts with: item is an array (else not_array is reported), not empty
 * (else empty), at most max entries (else "at most MAX UNIT"). Returns 0 with its length in
 * *n, or -1 after reporting. */
int conf_array_begin(struct conf_ctx *ctx, const cJSON *item, const char *path, size_t max,
                     const char *unit, const char *not_array, const char *empty, size_t *n);

/* The checks for member i of an object of named objects (credentials, clients): a duplicate
 * name, a name check refuses (reported, but the member is still read), a value that is not an
 * object. Writes the member's path to sub. Returns 0 when the member is to be read, -1 to skip. */
int conf_named_member(struct conf_ctx *ctx, const cJSON *c, const char *path,
                      const unsigned char *dup, size_t i, const char *(*check)(const char *s),
                      char *sub, size_t sublen);

/* Setters for the tables. */
void conf_set_number(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f);
void conf_set_string(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f);
/* Keeps a pointer into the JSON tree (key sources: read once, never copied). */
void conf_set_borrowed(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                       const struct conf_field *f);
/* A "host:port" to connect to instead of an upstream's own name (a route's "address", a
 * credential's "token_address"): replaces *host (malloc'd) and *port. */
void conf_set_connect_address(struct conf_ctx *ctx, const cJSON *item, const char *path,
                              char **host, int *port);
/* A CA file (a readable regular file with a PEM certificate) into the char * at f->offset. */
void conf_set_ca_file(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f);
void conf_set_strings(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f);
/* A file the proxy loads when it starts, into the char * at f->offset: it must exist, be a
 * regular file and open; conf_set_tls_cert also wants a PEM certificate in it (a key file is
 * opened, never read, by the check). */
void conf_set_tls_cert(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                       const struct conf_field *f);
void conf_set_tls_key(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f);
/* true or false into an int. */
void conf_set_bool(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                   const struct conf_field *f);

/* ---- the configuration ---- */

/* A configuration holding the defaults: listen 127.0.0.1:8080, admin 127.0.0.1:9901, limits,
 * margin; no credentials or routes. NULL when out of memory. source is copied. */
struct conf *conf_new_default(const char *source);

/* Appends the credential (taken over, *cred is zeroed) to conf. Returns 0, or -1 when out of
 * memory (the credential is then freed). */
int conf_credential_add(struct conf *conf, struct credential *cred);

/* Runs auth's profile rules (credential_validate) and adds each complaint to errs unless a line
 * for the same path is already there. rename, when non-NULL, maps a field name ("key_id") to
 * the path to report instead of "credentials.NAME.key_id" (environment mode names variables). */
void conf_credential_validate(const struct credential *cred, struct conf_msgs *errs,
                              const char *(*rename)(const char *field));

/* "routes": the setter for the top-level table, and the checks made once the credentials are
 * known (names resolved to indexes, prefixes, order, scope). */
void conf_set_routes(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f);
void conf_routes_check(struct conf_ctx *ctx);
void conf_route_deinit(struct conf_route *r);

/* Records an environment variable the configuration read secrets from (conf.key_env_names),
 * so that the caller can remove it from the process environment. */
void conf_key_env_note(struct conf_ctx *ctx, const char *name);

/* ---- shared state (conf_shared.c) ---- */

/* "shared_state": the setter for the top-level key, and its deinit (wipes the password). */
void conf_set_shared(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                     const struct conf_field *f);
void conf_shared_deinit(struct conf_shared *sh);

/* ---- the gateway (conf_gateway.c) ---- */

/* A "listen" entry written as an object, {"address": "host:port", "tls": {"cert_file",
 * "key_file", "client_ca_file"}}, into addr (zeroed first). admin: for admin_listen, where
 * "tls" is refused. Returns 0, or -1 after reporting (addr is then empty). */
int conf_listen_object(struct conf_ctx *ctx, const cJSON *item, const char *path,
                       struct conf_addr *addr, int admin);

/* "clients": the setter for the top-level table, and the checks made once the credentials
 * and listeners are known (credential names resolved, identities unique). */
void conf_set_clients(struct conf_ctx *ctx, const cJSON *item, const char *path, void *base,
                      const struct conf_field *f);
void conf_clients_check(struct conf_ctx *ctx);
void conf_client_deinit(struct conf_client *c);

/* Derives one route per credential from its profile (docs/configuration.md, "Default
 * routes"), most specific prefix first. Two credentials wanting the same prefix is an error. */
void conf_routes_derive(struct conf *conf, struct conf_msgs *errs);

/* Checks made once everything is loaded: the refresh margin against the shortest token
 * lifetime (capped, with a warning when it was configured explicitly). Does nothing when
 * errors were already found. */
void conf_finish(struct conf *conf, int margin_given, struct conf_msgs *errs,
                 struct conf_msgs *warns);

/* Reads and validates a JSON configuration file, using getenv_fn for private_key_env.
 * Returns the configuration (possibly partial: check errs) or NULL when nothing could be
 * read; the caller frees it with conf_free. */
struct conf *conf_parse_file(const char *path, conf_getenv_fn getenv_fn, struct conf_msgs *errs,
                             struct conf_msgs *warns);

/* APPLE_AUTH_PROXY_LISTEN, _ADMIN_LISTEN, _WORKERS and _ALLOW_ANONYMOUS_CLIENTS, applied in
 * every mode. A listen override keeps the TLS settings of a file's listener with the same
 * address, and refuses to drop a TLS listener silently. */
void conf_env_overrides(struct conf *conf, conf_getenv_fn getenv_fn, struct conf_msgs *errs);

/* Checks between the listen addresses and admin_listen, made after the overrides. */
void conf_listen_check(const struct conf *conf, struct conf_msgs *errs);

/* getenv with the signature conf_load_env takes. */
const char *conf_getenv(const char *name);

/* Ends a load: on errors (or conf NULL) frees conf and returns -1 with *errors; else 0 with
 * *out = conf. *warnings is set either way (NULL when there are none). */
int conf_result(struct conf *conf, struct conf_msgs *errs, struct conf_msgs *warns,
                struct conf **out, char **errors, char **warnings);

#endif
