/* intercept: the proxy's own certificate authority for CONNECT interception: a name-constrained
 * CA kept in a directory, and short-lived leaf certificates minted per upstream host. */
#ifndef AAP_PROXY_INTERCEPT_H
#define AAP_PROXY_INTERCEPT_H

#include <stddef.h>
#include <time.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct evbuffer;

/* The CA: ca.pem (certificate) and ca.key (PKCS#8 P-256 key, mode 0600) in the directory. */
#define INTERCEPT_CA_CERT_FILE "ca.pem"
#define INTERCEPT_CA_KEY_FILE "ca.key"
/* A new CA is valid for five years; rotating it is documented in docs/deployment.md. */
#define INTERCEPT_CA_DAYS 1826
/* Leaf certificates live a day and are replaced once less than a third of that is left, so
 * a connection never gets one that expires within eight hours. */
#define INTERCEPT_LEAF_LIFETIME (24 * 3600)
#define INTERCEPT_LEAF_RENEW (8 * 3600)
/* Clocks of clients may run behind: a leaf is valid from an hour before it was made. */
#define INTERCEPT_BACKDATE 3600
/* Upstream host names the CA can cover (its name constraints). */
#define INTERCEPT_MAX_HOSTS 256
#define INTERCEPT_MAX_NAME 253

struct intercept;

/* Loads the CA from dir, creating dir (0700) and the CA on first use. hosts: the upstream DNS
 * names to intercept (IP literals are left out: nothing is minted for them). A new CA permits
 * exactly these names (critical name constraints, every IP address excluded); an existing CA
 * must permit every one of them (a CA permitting more adds a line to warn). dir must not be
 * writable by group or others nor readable by others, and the key not readable by anyone but
 * its owner. Returns NULL with a message in err. warn may be NULL. */
struct intercept *intercept_new(const char *dir, const char *const *hosts, size_t nhosts,
                                char *err, size_t errlen, char *warn, size_t warnlen);
/* What intercept_new would do with the same arguments, without making anything (no directory,
 * no CA, no lock file): 1 when the CA there loads and permits every host (its expiry in
 * *not_after), 0 when there is none yet and intercept_new would make one, -1 when
 * intercept_new would fail (err says why). warn as for intercept_new. */
int intercept_check(const char *dir, const char *const *hosts, size_t nhosts, time_t *not_after,
                    char *err, size_t errlen, char *warn, size_t warnlen);
/* intercept_free(NULL) is a no-op. SSL objects made earlier stay usable. */
void intercept_free(struct intercept *ic);

/* Whether name (a DNS name, case-insensitive, no port) is one of the intercepted hosts. */
int intercept_allows(const struct intercept *ic, const char *name, size_t len);

/* A server-side SSL (not yet bound to a socket) presenting a leaf certificate for name, minted
 * on first use and renewed ahead of expiry; safe to call from any thread. ALPN: http/1.1
 * only. Returns NULL (name not allowed, or out of memory) with a message in err. */
SSL *intercept_ssl_new(struct intercept *ic, const char *name, size_t len, char *err,
                       size_t errlen);

/* The same at a given time (seconds since the epoch), which decides whether the cached leaf
 * is due for renewal (the certificate's own validity starts from the real clock). */
SSL *intercept_ssl_new_at(struct intercept *ic, const char *name, size_t len, time_t now,
                          char *err, size_t errlen);

/* The CA certificate (owned by ic). */
X509 *intercept_ca_cert(const struct intercept *ic);
/* Appends the CA certificate as PEM to out. Returns 0/-1. */
int intercept_ca_pem(const struct intercept *ic, struct evbuffer *out);

#endif
