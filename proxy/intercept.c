/* intercept: the proxy's own name-constrained CA and the leaf certificates it mints (see
 * intercept.h; the threat model is in docs/security.md). */
#include "proxy/intercept.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

/* A CA file larger than this is not one the proxy wrote. */
#define CA_FILE_MAX (64 * 1024)
/* Warn when the CA has less than this left: every client must be given the next one. */
#define CA_WARN_DAYS 90
/* The longest Common Name a certificate may carry (X.520 ub-common-name). A longer host name
 * (DNS allows 253) goes in the subjectAltName alone, marked critical as RFC 5280 4.2.1.6 asks
 * of a certificate whose subject is empty; clients match the subjectAltName anyway. */
#define LEAF_CN_MAX 64

struct leaf {
    SSL_CTX *ctx;    /* NULL until the host's first connection */
    time_t renew_at; /* a new leaf is minted from then on */
};

struct intercept {
    X509 *ca;
    EVP_PKEY *ca_key;
    time_t ca_not_after;
    char **hosts; /* lower case */
    size_t nhosts;
    struct leaf *leaves; /* parallel to hosts */
    pthread_mutex_t lock; /* guards leaves: every worker mints and reads them */
};

static void ssl_reason(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char buf[200];
    if (e) {
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(err, errlen, "%s: %s", what, buf);
    } else {
        snprintf(err, errlen, "%s", what);
    }
    ERR_clear_error();
}

/* A DNS name the constraints and a SAN can carry: letters, digits, '-' and '.', no IP. */
static int is_dns_name(const char *s)
{
    size_t n = strlen(s), i;
    int alpha = 0;
    if (n == 0 || n > INTERCEPT_MAX_NAME || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-')
            alpha = 1;
        else if (!(c >= '0' && c <= '9') && c != '.')
            return 0;
    }
    return alpha; /* all digits and dots: an IPv4 literal */
}

static time_t asn1_to_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return -1;
    ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* A random positive 127-bit serial (RFC 5280 4.1.2.2: unique per CA, at most 20 bytes). */
static int set_serial(X509 *cert)
{
    unsigned char raw[16];
    BIGNUM *bn;
    int ok;
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    raw[0] &= 0x7f;
    raw[0] |= 0x01; /* never zero-length or zero */
    bn = BN_bin2bn(raw, sizeof(raw), NULL);
    ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok ? 0 : -1;
}

static EVP_PKEY *p256_new(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* The nameConstraints value: every host as a permitted dNSName subtree, and every IPv4 and
 * IPv6 address excluded (constraints only bind the name forms they list: without the
 * exclusion, the key could still sign a certificate for an IP address). */
static char *constraints_value(char *const *hosts, size_t n)
{
    static const char tail[] = "excluded;IP:0.0.0.0/0.0.0.0,excluded;IP:::/::";
    size_t len = sizeof("critical,") + sizeof(tail), i;
    char *v, *p;
    for (i = 0; i < n; i++)
        len += strlen(hosts[i]) + sizeof("permitted;DNS:,");
    v = malloc(len);
    if (v == NULL)
        return NULL;
    p = v + sprintf(v, "critical,");
    for (i = 0; i < n; i++)
        p += sprintf(p, "permitted;DNS:%s,", hosts[i]);
    strcpy(p, tail);
    return v;
}

static X509 *ca_make(EVP_PKEY *key, char *const *hosts, size_t n, char *err, size_t errlen)
{
    X509 *x = X509_new();
    X509_NAME *name;
    unsigned char id[4];
    char cn[80], *nc = NULL;
    if (x == NULL || RAND_bytes(id, sizeof(id)) != 1)
        goto fail;
    /* A distinct name per CA: a trust store holding an old and a new one (during a rotation)
     * shows which is which. */
    snprintf(cn, sizeof(cn), "apple-auth-proxy interception CA %02x%02x%02x%02x", id[0], id[1],
             id[2], id[3]);
    name = X509_get_subject_name(x);
    if (!X509_set_version(x, 2) || set_serial(x) < 0 ||
        !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"apple-auth-proxy",
                                    -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) ||
        !X509_set_issuer_name(x, name) || !X509_gmtime_adj(X509_getm_notBefore(x), -INTERCEPT_BACKDATE) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)INTERCEPT_CA_DAYS * 86400) ||
        !X509_set_pubkey(x, key))
        goto fail;
    nc = constraints_value(hosts, n);
    if (nc == NULL || add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        add_ext(x, x, NID_subject_key_identifier, "hash") < 0 ||
        add_ext(x, x, NID_name_constraints, nc) < 0 || !X509_sign(x, key, EVP_sha256()))
        goto fail;
    free(nc);
    return x;
fail:
    ssl_reason(err, errlen, "cannot make the CA certificate");
    free(nc);
    X509_free(x);
    return NULL;
}

static int leaf_make(const struct intercept *ic, const char *host, long lifetime, X509 **cert,
                     EVP_PKEY **key, char *err, size_t errlen)
{
    X509 *x = NULL;
    EVP_PKEY *k = p256_new();
    char san[INTERCEPT_MAX_NAME + 16];
    int has_cn = strlen(host) <= LEAF_CN_MAX;
    *cert = NULL;
    *key = NULL;
    if (k == NULL || (x = X509_new()) == NULL)
        goto fail;
    snprintf(san, sizeof(san), "%sDNS:%s", has_cn ? "" : "critical,", host);
    if (!X509_set_version(x, 2) || set_serial(x) < 0 ||
        (has_cn && !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                               (const unsigned char *)host, -1, -1, 0)) ||
        !X509_set_issuer_name(x, X509_get_subject_name(ic->ca)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -INTERCEPT_BACKDATE) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), lifetime) || !X509_set_pubkey(x, k) ||
        add_ext(x, ic->ca, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, ic->ca, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, ic->ca, NID_ext_key_usage, "serverAuth") < 0 ||
        add_ext(x, ic->ca, NID_subject_key_identifier, "hash") < 0 ||
        add_ext(x, ic->ca, NID_authority_key_identifier, "keyid:always") < 0 ||
        add_ext(x, ic->ca, NID_subject_alt_name, san) < 0 ||
        !X509_sign(x, ic->ca_key, EVP_sha256()))
        goto fail;
    *cert = x;
    *key = k;
    return 0;
fail:
    ssl_reason(err, errlen, "cannot mint a leaf certificate");
    X509_free(x);
    EVP_PKEY_free(k);
    return -1;
}

/* ---- files ---- */

/* The directory: created 0700 when missing; refused when others may read or change it. A
 * directory on a read-only file system (a Kubernetes Secret volume) cannot be changed by anyone:
 * only its key file's mode matters there (file_read). */
/* The directory is made (0700) when create is set; otherwise a missing one sets *missing when
 * its parent would let it be made, the way intercept_check tries without side effects. */
static int dir_check(const char *dir, int create, int *readonly, int *missing, char *err,
                     size_t errlen)
{
    struct stat st;
    struct statvfs vfs;
    *missing = 0;
    if (create && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "intercept.ca_dir %s: cannot create it: %s", dir, strerror(errno));
        return -1;
    }
    if (!create && stat(dir, &st) != 0 && errno == ENOENT) {
        char parent[4096];
        const char *slash = strrchr(dir, '/');
        if (slash == NULL)
            snprintf(parent, sizeof(parent), ".");
        else if (slash == dir)
            snprintf(parent, sizeof(parent), "/");
        else
            snprintf(parent, sizeof(parent), "%.*s", (int)(slash - dir), dir);
        if (access(parent, W_OK | X_OK) != 0) {
            snprintf(err, errlen, "intercept.ca_dir %s: cannot create it in %s: %s", dir, parent,
                     strerror(errno));
            return -1;
        }
        *missing = 1;
        return 0;
    }
    if (stat(dir, &st) != 0) {
        snprintf(err, errlen, "intercept.ca_dir %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "intercept.ca_dir %s: not a directory", dir);
        return -1;
    }
    *readonly = statvfs(dir, &vfs) == 0 && (vfs.f_flag & ST_RDONLY);
    if (*readonly)
        return 0;
    if (st.st_mode & (S_IRWXO | S_IWGRP)) {
        snprintf(err, errlen,
                 "intercept.ca_dir %s: mode %03o lets others read or change the CA key's "
                 "directory; chmod 700 it",
                 dir, (unsigned)(st.st_mode & 0777));
        return -1;
    }
    if (st.st_uid != geteuid() && st.st_uid != 0) {
        snprintf(err, errlen, "intercept.ca_dir %s: owned by uid %u, not by this user (%u) or root",
                 dir, (unsigned)st.st_uid, (unsigned)geteuid());
        return -1;
    }
    return 0;
}

/* Reads a whole file (at most CA_FILE_MAX) into a malloc'd copy. private: nobody but the owner
 * may read it (but its group on a read-only file system, where a Kubernetes fsGroup makes
 * Secret files group-readable: the pod's own group). Symbolic links are followed (Secret
 * volumes are made of them): the directory was checked, so its owner placed them. */
static char *file_read(const char *path, int private, int readonly, size_t *len, char *err,
                       size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    ssize_t n;
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > CA_FILE_MAX) {
        snprintf(err, errlen, "%s: not a regular file of at most %d bytes", path, CA_FILE_MAX);
        goto fail;
    }
    if (private && (st.st_mode & (readonly ? S_IRWXO : (S_IRWXG | S_IRWXO)))) {
        snprintf(err, errlen, "%s: mode %03o lets others read the CA key; chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
        goto fail;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    n = read(fd, buf, (size_t)st.st_size);
    if (n != st.st_size) {
        snprintf(err, errlen, "%s: short read", path);
        goto fail;
    }
    *len = (size_t)n;
    close(fd);
    errno = 0;
    return buf;
fail:
    if (buf) {
        OPENSSL_cleanse(buf, (size_t)st.st_size);
        free(buf);
    }
    close(fd);
    errno = EINVAL;
    return NULL;
}

/* Writes data to dir/name through a temporary file and a rename, with mode. */
static int file_write(const char *dir, const char *name, const char *data, size_t len, mode_t mode,
                      char *err, size_t errlen)
{
    char tmp[4096], path[4096];
    int fd;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%ld.tmp", dir, name, (long)getpid());
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        goto fail;
    if (fchmod(fd, mode) != 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) != 0) {
        close(fd);
        unlink(tmp);
        goto fail;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        goto fail;
    }
    return 0;
fail:
    snprintf(err, errlen, "%s: cannot write it: %s", path, strerror(errno));
    return -1;
}

static int ca_create(struct intercept *ic, const char *dir, char *err, size_t errlen)
{
    BIO *kb = BIO_new(BIO_s_mem()), *cb = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int rc = -1;
    ic->ca_key = p256_new();
    if (kb == NULL || cb == NULL || ic->ca_key == NULL) {
        ssl_reason(err, errlen, "cannot make the CA key");
        goto out;
    }
    ic->ca = ca_make(ic->ca_key, ic->hosts, ic->nhosts, err, errlen);
    if (ic->ca == NULL)
        goto out;
    if (!PEM_write_bio_PrivateKey(kb, ic->ca_key, NULL, NULL, 0, NULL, NULL) ||
        !PEM_write_bio_X509(cb, ic->ca)) {
        ssl_reason(err, errlen, "cannot encode the CA");
        goto out;
    }
    /* The key first: a certificate without its key is never left behind. */
    n = BIO_get_mem_data(kb, &data);
    if (file_write(dir, INTERCEPT_CA_KEY_FILE, data, (size_t)n, 0600, err, errlen) < 0)
        goto out;
    n = BIO_get_mem_data(cb, &data);
    if (file_write(dir, INTERCEPT_CA_CERT_FILE, data, (size_t)n, 0644, err, errlen) < 0)
        goto out;
    rc = 0;
out:
    BIO_free_all(cb);
    if (kb) {
        n = BIO_get_mem_data(kb, &data);
        if (n > 0)
            OPENSSL_cleanse(data, (size_t)n);
        BIO_free_all(kb);
    }
    return rc;
}

/* The dNSName subtrees the CA permits; 0 and *n = 0 when it has no name constraints. */
static int ca_permitted(X509 *ca, char ***out, size_t *n)
{
    int crit = 0, i;
    NAME_CONSTRAINTS *nc = X509_get_ext_d2i(ca, NID_name_constraints, &crit, NULL);
    char **list;
    *out = NULL;
    *n = 0;
    if (nc == NULL)
        return 0;
    int k = sk_GENERAL_SUBTREE_num(nc->permittedSubtrees);
    list = calloc(k > 0 ? (size_t)k : 1, sizeof(*list));
    if (list == NULL) {
        NAME_CONSTRAINTS_free(nc);
        return -1;
    }
    for (i = 0; i < k; i++) {
        GENERAL_SUBTREE *st = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i);
        if (st->base->type != GEN_DNS)
            continue;
        const ASN1_IA5STRING *s = st->base->d.dNSName;
        list[*n] = strndup((const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
        if (list[*n])
            (*n)++;
    }
    NAME_CONSTRAINTS_free(nc);
    *out = list;
    return 0;
}

static int list_has(char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(list[i], s) == 0)
            return 1;
    return 0;
}

/* An existing CA: its key and certificate must belong together, the certificate must be a
 * valid CA whose constraints permit every host. */
static int ca_load(struct intercept *ic, const char *dir, int readonly, char *err, size_t errlen,
                   char *warn, size_t warnlen)
{
    char path[4096];
    char *kdata = NULL, *cdata = NULL, **permitted = NULL;
    size_t klen = 0, clen = 0, npermitted = 0, i;
    BIO *b = NULL;
    int rc = -1;
    snprintf(path, sizeof(path), "%s/%s", dir, INTERCEPT_CA_KEY_FILE);
    kdata = file_read(path, 1, readonly, &klen, err, errlen);
    if (kdata == NULL)
        goto out;
    b = BIO_new_mem_buf(kdata, (int)klen);
    ic->ca_key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (ic->ca_key == NULL || !EVP_PKEY_is_a(ic->ca_key, "EC")) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: not a PEM EC private key", path);
        goto out;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, INTERCEPT_CA_CERT_FILE);
    cdata = file_read(path, 0, readonly, &clen, err, errlen);
    if (cdata == NULL)
        goto out;
    b = BIO_new_mem_buf(cdata, (int)clen);
    ic->ca = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (ic->ca == NULL) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: not a PEM certificate", path);
        goto out;
    }
    if (X509_check_private_key(ic->ca, ic->ca_key) != 1 || X509_check_ca(ic->ca) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: not the CA certificate of %s", path, INTERCEPT_CA_KEY_FILE);
        goto out;
    }
    ic->ca_not_after = asn1_to_time(X509_get0_notAfter(ic->ca));
    if (ic->ca_not_after <= time(NULL) + INTERCEPT_LEAF_LIFETIME) {
        snprintf(err, errlen,
                 "%s: the CA expires within a day or has expired: rotate it "
                 "(docs/deployment.md)", path);
        goto out;
    }
    if (ca_permitted(ic->ca, &permitted, &npermitted) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (i = 0; i < ic->nhosts; i++)
        if (!list_has(permitted, npermitted, ic->hosts[i])) {
            snprintf(err, errlen,
                     "%s: the CA's name constraints do not permit %s, a configured upstream; a "
                     "CA cannot be widened: rotate it (docs/deployment.md)",
                     path, ic->hosts[i]);
            goto out;
        }
    if (warn) {
        size_t used = 0;
        warn[0] = '\0';
        for (i = 0; i < npermitted; i++)
            if (!list_has(ic->hosts, ic->nhosts, permitted[i]) && used < warnlen)
                used += (size_t)snprintf(warn + used, warnlen - used,
                                         "%sthe CA in %s also permits %s, which is no longer a "
                                         "configured upstream (rotate it to narrow it)",
                                         used ? "; " : "", dir, permitted[i]);
        if (ic->ca_not_after < time(NULL) + (time_t)CA_WARN_DAYS * 86400 && used < warnlen)
            snprintf(warn + used, warnlen - used,
                     "%sthe CA in %s expires in less than %d days: rotate it", used ? "; " : "",
                     dir, CA_WARN_DAYS);
    }
    rc = 0;
out:
    for (i = 0; i < npermitted; i++)
        free(permitted[i]);
    free(permitted);
    if (kdata) {
        OPENSSL_cleanse(kdata, klen);
        free(kdata);
    }
    free(cdata);
    return rc;
}

/* intercept_new, and intercept_check when create is 0: then nothing is made, and a directory
 * with no CA yet (or none at all) answers an intercept without a CA and *absent set. */
static struct intercept *intercept_open(const char *dir, const char *const *hosts, size_t nhosts,
                                        int create, int *absent, char *err, size_t errlen,
                                        char *warn, size_t warnlen)
{
    struct intercept *ic = calloc(1, sizeof(*ic));
    char path[4096];
    struct stat st;
    int lockfd = -1, readonly = 0, missing = 0;
    size_t i;
    *absent = 0;
    if (warn && warnlen)
        warn[0] = '\0';
    if (ic == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&ic->lock, NULL);
    ic->hosts = calloc(nhosts ? nhosts : 1, sizeof(*ic->hosts));
    ic->leaves = calloc(nhosts ? nhosts : 1, sizeof(*ic->leaves));
    if (ic->hosts == NULL || ic->leaves == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (i = 0; i < nhosts; i++) {
        if (!is_dns_name(hosts[i]) || list_has(ic->hosts, ic->nhosts, hosts[i]))
            continue; /* IP literals are not intercepted; names are listed once */
        if (ic->nhosts == INTERCEPT_MAX_HOSTS) {
            snprintf(err, errlen, "intercept: more than %d upstream hosts", INTERCEPT_MAX_HOSTS);
            goto fail;
        }
        ic->hosts[ic->nhosts] = strdup(hosts[i]);
        if (ic->hosts[ic->nhosts] == NULL) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        for (char *p = ic->hosts[ic->nhosts]; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        ic->nhosts++;
    }
    if (ic->nhosts == 0) {
        snprintf(err, errlen, "intercept: no upstream has a DNS name to intercept");
        goto fail;
    }
    if (dir_check(dir, create, &readonly, &missing, err, errlen) < 0)
        goto fail;
    if (missing) {
        *absent = 1;
        return ic;
    }
    /* Two processes starting at once on a fresh directory must end up with one CA (nothing is
     * made in a read-only one). */
    snprintf(path, sizeof(path), "%s/.lock", dir);
    if (create && !readonly)
        lockfd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (create && !readonly && (lockfd < 0 || flock(lockfd, LOCK_EX) != 0)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, INTERCEPT_CA_KEY_FILE);
    if (stat(path, &st) != 0 && errno == ENOENT) {
        snprintf(path, sizeof(path), "%s/%s", dir, INTERCEPT_CA_CERT_FILE);
        if (stat(path, &st) == 0) {
            snprintf(err, errlen, "%s exists without %s: remove it to make a new CA", path,
                     INTERCEPT_CA_KEY_FILE);
            goto fail;
        }
        if (!create && readonly) {
            snprintf(err, errlen, "intercept.ca_dir %s: no CA in it, and it is read-only: a CA "
                     "cannot be made there", dir);
            goto fail;
        }
        if (!create && access(dir, W_OK | X_OK) != 0) {
            snprintf(err, errlen, "intercept.ca_dir %s: no CA in it, and this user cannot "
                     "write it: %s", dir, strerror(errno));
            goto fail;
        }
        if (!create) {
            *absent = 1;
            return ic;
        }
        if (ca_create(ic, dir, err, errlen) < 0)
            goto fail;
        ic->ca_not_after = asn1_to_time(X509_get0_notAfter(ic->ca));
    } else if (ca_load(ic, dir, readonly, err, errlen, warn, warnlen) < 0) {
        goto fail;
    }
    if (lockfd >= 0)
        close(lockfd);
    return ic;
fail:
    if (lockfd >= 0)
        close(lockfd);
    intercept_free(ic);
    return NULL;
}

struct intercept *intercept_new(const char *dir, const char *const *hosts, size_t nhosts,
                                char *err, size_t errlen, char *warn, size_t warnlen)
{
    int absent;
    return intercept_open(dir, hosts, nhosts, 1, &absent, err, errlen, warn, warnlen);
}

int intercept_check(const char *dir, const char *const *hosts, size_t nhosts, time_t *not_after,
                    char *err, size_t errlen, char *warn, size_t warnlen)
{
    int absent;
    struct intercept *ic = intercept_open(dir, hosts, nhosts, 0, &absent, err, errlen, warn,
                                          warnlen);
    if (ic == NULL)
        return -1;
    *not_after = ic->ca_not_after;
    intercept_free(ic);
    return absent ? 0 : 1;
}

void intercept_free(struct intercept *ic)
{
    size_t i;
    if (ic == NULL)
        return;
    for (i = 0; i < ic->nhosts; i++) {
        free(ic->hosts[i]);
        SSL_CTX_free(ic->leaves[i].ctx);
    }
    free(ic->hosts);
    free(ic->leaves);
    X509_free(ic->ca);
    EVP_PKEY_free(ic->ca_key);
    pthread_mutex_destroy(&ic->lock);
    free(ic);
}

static long host_index(const struct intercept *ic, const char *name, size_t len)
{
    for (size_t i = 0; i < ic->nhosts; i++)
        if (strlen(ic->hosts[i]) == len && strncasecmp(ic->hosts[i], name, len) == 0)
            return (long)i;
    return -1;
}

int intercept_allows(const struct intercept *ic, const char *name, size_t len)
{
    return host_index(ic, name, len) >= 0;
}

X509 *intercept_ca_cert(const struct intercept *ic)
{
    return ic->ca;
}

int intercept_ca_pem(const struct intercept *ic, struct evbuffer *out)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int rc = -1;
    if (b && PEM_write_bio_X509(b, ic->ca) && (n = BIO_get_mem_data(b, &data)) > 0)
        rc = evbuffer_add(out, data, (size_t)n);
    BIO_free(b);
    return rc;
}

/* Clients inside a tunnel speak HTTP/1.1 (RFC 7301: no overlap means no ALPN answer). */
static int alpn_http11(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *o;
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto(&o, outlen, (const unsigned char *)"\x08http/1.1", 9, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *leaf_ctx(const struct intercept *ic, const char *host, time_t now,
                         time_t *renew_at, char *err, size_t errlen)
{
    long lifetime = INTERCEPT_LEAF_LIFETIME;
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    SSL_CTX *ctx = NULL;
    /* Never beyond the CA's own end. */
    if (ic->ca_not_after - now < lifetime)
        lifetime = (long)(ic->ca_not_after - now);
    if (lifetime <= 0) {
        snprintf(err, errlen, "the interception CA has expired");
        return NULL;
    }
    if (leaf_make(ic, host, lifetime, &cert, &key, err, errlen) < 0)
        return NULL;
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
        ssl_reason(err, errlen, "cannot make the interception TLS context");
        SSL_CTX_free(ctx);
        ctx = NULL;
        goto out;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_http11, NULL);
    *renew_at = now + lifetime - (lifetime > INTERCEPT_LEAF_RENEW * 2 ? INTERCEPT_LEAF_RENEW
                                                                      : lifetime / 2);
out:
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}

SSL *intercept_ssl_new(struct intercept *ic, const char *name, size_t len, char *err,
                       size_t errlen)
{
    return intercept_ssl_new_at(ic, name, len, time(NULL), err, errlen);
}

SSL *intercept_ssl_new_at(struct intercept *ic, const char *name, size_t len, time_t now,
                          char *err, size_t errlen)
{
    long i = host_index(ic, name, len);
    SSL *ssl = NULL;
    if (i < 0) {
        snprintf(err, errlen, "%.*s is not an intercepted host", (int)(len > 200 ? 200 : len), name);
        return NULL;
    }
    pthread_mutex_lock(&ic->lock);
    struct leaf *l = &ic->leaves[i];
    if (l->ctx == NULL || now >= l->renew_at) {
        time_t renew_at = 0;
        SSL_CTX *ctx = leaf_ctx(ic, ic->hosts[i], now, &renew_at, err, errlen);
        if (ctx) {
            SSL_CTX_free(l->ctx); /* connections using the old one hold their own reference */
            l->ctx = ctx;
            l->renew_at = renew_at;
        }
    }
    if (l->ctx) {
        ssl = SSL_new(l->ctx);
        if (ssl == NULL)
            ssl_reason(err, errlen, "out of memory");
    }
    pthread_mutex_unlock(&ic->lock);
    return ssl;
}
