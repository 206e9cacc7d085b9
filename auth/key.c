/* key: loading Apple's .p8 signing keys and saying plainly what was given when it is not one. */
#include "auth/key.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "auth/b64.h"
#include "auth/errbuf.h"

/* A .p8 file is about 250 bytes; anything this large is the wrong file, and reading it whole
 * into memory would let a mistaken path (a log, an image) cost real memory. */
#define KEY_MAX_BYTES 65536

struct apple_key {
    EVP_PKEY *pkey;
};

/* OpenSSL must never prompt on the terminal for a passphrase: a proxy has no one to ask. */
static int key_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Copies the text into a form OpenSSL's PEM reader accepts whatever the transport did to it:
 * CR removed (files edited on Windows), spaces and tabs trimmed at both ends of every line
 * (YAML and shell indentation), a final newline added, and, when the text has no newline at all
 * but contains the two characters '\' 'n', those turned into newlines (a PEM pasted into a
 * single-line environment variable). Returns a malloc'd NUL-terminated copy, or NULL. */
static char *key_normalise(const char *pem, size_t len, size_t *outlen)
{
    int literal_nl = memchr(pem, '\n', len) == NULL && memmem(pem, len, "\\n", 2) != NULL;
    char *out = malloc(len + 2);
    size_t i = 0, o = 0;

    if (out == NULL)
        return NULL;
    while (i < len) {
        size_t start, end, next;

        /* Find one line: [start, end) without its terminator, next after it. */
        start = i;
        while (i < len && pem[i] != '\n' &&
               !(literal_nl && pem[i] == '\\' && i + 1 < len && pem[i + 1] == 'n'))
            i++;
        end = i;
        next = i < len ? (pem[i] == '\n' ? i + 1 : i + 2) : i;
        while (start < end && (pem[start] == ' ' || pem[start] == '\t' || pem[start] == '\r'))
            start++;
        while (end > start && (pem[end - 1] == ' ' || pem[end - 1] == '\t' || pem[end - 1] == '\r'))
            end--;
        for (; start < end; start++)
            if (pem[start] != '\r')
                out[o++] = pem[start];
        out[o++] = '\n';
        i = next;
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* Finds the label of the first "-----BEGIN LABEL-----" line at or after *pos and advances *pos
 * past it. Returns 0 with the label in label, or -1 when there is none. */
static int key_next_label(const char *text, size_t len, size_t *pos, char *label, size_t labellen)
{
    const char *p = memmem(text + *pos, len - *pos, "-----BEGIN ", 11);
    const char *end;
    size_t n;

    if (p == NULL)
        return -1;
    p += 11;
    end = memmem(p, len - (size_t)(p - text), "-----", 5);
    if (end == NULL || memchr(p, '\n', (size_t)(end - p)) != NULL)
        return -1;
    n = (size_t)(end - p);
    if (n >= labellen)
        n = labellen - 1;
    memcpy(label, p, n);
    label[n] = '\0';
    *pos = (size_t)(end + 5 - text);
    return 0;
}

/* Says what a PEM block that is not a private key is, in words a user recognises. */
static const char *key_describe_label(const char *label)
{
    if (strcmp(label, "PUBLIC KEY") == 0 || strcmp(label, "EC PUBLIC KEY") == 0)
        return "a public key, not a private key; Apple's .p8 file holds the private key";
    if (strcmp(label, "RSA PUBLIC KEY") == 0)
        return "an RSA public key, not a private key; Apple keys are EC P-256 private keys";
    if (strcmp(label, "CERTIFICATE") == 0 || strcmp(label, "TRUSTED CERTIFICATE") == 0 ||
        strcmp(label, "X509 CERTIFICATE") == 0)
        return "a certificate, not a private key; Apple's .p8 file holds the private key";
    if (strcmp(label, "CERTIFICATE REQUEST") == 0 || strcmp(label, "NEW CERTIFICATE REQUEST") == 0)
        return "a certificate request, not a private key";
    if (strcmp(label, "ENCRYPTED PRIVATE KEY") == 0)
        return "an encrypted private key; Apple's .p8 files are not encrypted (decrypt it with "
               "openssl pkcs8)";
    if (strcmp(label, "OPENSSH PRIVATE KEY") == 0)
        return "an OpenSSH private key; Apple keys are PKCS#8 PEM (.p8) files";
    if (strcmp(label, "RSA PRIVATE KEY") == 0)
        return "an RSA key; Apple keys are EC P-256 keys";
    if (strcmp(label, "DSA PRIVATE KEY") == 0)
        return "a DSA key; Apple keys are EC P-256 keys";
    if (strcmp(label, "PGP PRIVATE KEY BLOCK") == 0 || strcmp(label, "PGP PUBLIC KEY BLOCK") == 0)
        return "a PGP key; Apple keys are PKCS#8 PEM (.p8) files";
    return NULL;
}

/* Accepts only what Apple issues: an EC key on the named curve P-256. */
static int key_check_type(EVP_PKEY *pkey, char *err, size_t errlen)
{
    char group[80];

    if (EVP_PKEY_is_a(pkey, "EC")) {
        if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                           NULL) != 1) {
            errbuf_set(err, errlen,
                    "an EC key with explicit curve parameters; Apple keys name the "
                    "curve P-256");
            return -1;
        }
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0 ||
            strcmp(group, "secp256r1") == 0)
            return 0;
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            errbuf_set(err, errlen, "an EC key on P-384 (secp384r1); Apple keys are P-256");
        else if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0)
            errbuf_set(err, errlen, "an EC key on P-521 (secp521r1); Apple keys are P-256");
        else if (strcmp(group, "secp224r1") == 0 || strcmp(group, "P-224") == 0)
            errbuf_set(err, errlen, "an EC key on P-224 (secp224r1); Apple keys are P-256");
        else
            errbuf_set(err, errlen, "an EC key on %s; Apple keys are P-256 (prime256v1)", group);
        return -1;
    }
    if (EVP_PKEY_is_a(pkey, "RSA") || EVP_PKEY_is_a(pkey, "RSA-PSS"))
        errbuf_set(err, errlen, "an RSA key; Apple keys are EC P-256 keys");
    else if (EVP_PKEY_is_a(pkey, "ED25519"))
        errbuf_set(err, errlen, "an Ed25519 key; Apple keys are EC P-256 keys");
    else if (EVP_PKEY_is_a(pkey, "ED448"))
        errbuf_set(err, errlen, "an Ed448 key; Apple keys are EC P-256 keys");
    else if (EVP_PKEY_is_a(pkey, "X25519") || EVP_PKEY_is_a(pkey, "X448"))
        errbuf_set(err, errlen,
                "a key-agreement key (%s), not a signing key; Apple keys are EC "
                "P-256 keys",
                EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "X25519/X448");
    else
        errbuf_set(err, errlen, "a %s key; Apple keys are EC P-256 keys",
                EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "non-EC");
    return -1;
}

int key_load_pem(const char *pem, size_t len, apple_key **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t textlen = 0, pos = 0, i;
    char label[64], first[64];
    int have_private = 0, have_label = 0, rc = -1;
    BIO *bio = NULL;
    EVP_PKEY *pkey = NULL;
    apple_key *key = NULL;

    *out = NULL;
    if (len > KEY_MAX_BYTES) {
        errbuf_set(err, errlen, "%zu bytes of key text; a .p8 key is under 1 KiB (limit %d bytes)",
                len, KEY_MAX_BYTES);
        goto out;
    }
    if (memchr(pem, '\0', len) != NULL) {
        errbuf_set(err, errlen, "binary data, not a PEM private key");
        goto out;
    }
    text = key_normalise(pem, len, &textlen);
    if (text == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    for (i = 0; i < textlen && (text[i] == '\n'); i++)
        ;
    if (i == textlen) {
        errbuf_set(err, errlen, "empty, not a PEM private key");
        goto out;
    }
    /* Look at every block's label: a file may carry a certificate before the key, and when there
     * is no private key block at all, the first label says what the user picked up instead. */
    while (key_next_label(text, textlen, &pos, label, sizeof label) == 0) {
        if (!have_label) {
            memcpy(first, label, strlen(label) + 1);
            have_label = 1;
        }
        if (strcmp(label, "PRIVATE KEY") == 0 || strcmp(label, "EC PRIVATE KEY") == 0)
            have_private = 1;
    }
    if (!have_private) {
        const char *what = have_label ? key_describe_label(first) : NULL;

        if (what != NULL)
            errbuf_set(err, errlen, "%s", what);
        else if (have_label)
            errbuf_set(err, errlen, "a PEM block of type \"%.40s\", not a PEM private key", first);
        else
            errbuf_set(err, errlen, "not a PEM private key (no \"-----BEGIN PRIVATE KEY-----\" line)");
        goto out;
    }
    bio = BIO_new_mem_buf(text, (int)textlen);
    if (bio == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    pkey = PEM_read_bio_PrivateKey(bio, NULL, key_no_passphrase, NULL);
    if (pkey == NULL) {
        /* OpenSSL's reason strings ("bad base64 decode", "unsupported") never quote the input. */
        unsigned long e = ERR_peek_last_error();
        const char *why = e != 0 ? ERR_reason_error_string(e) : NULL;

        errbuf_set(err, errlen,
                "a PEM private key block that OpenSSL cannot read (%s); the file may "
                "be truncated or corrupted",
                why != NULL ? why : "unknown reason");
        goto out;
    }
    if (key_check_type(pkey, err, errlen) != 0)
        goto out;
    key = malloc(sizeof *key);
    if (key == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    key->pkey = pkey;
    pkey = NULL;
    *out = key;
    rc = 0;
out:
    /* Failed parses leave entries on this thread's error queue; they must not surface later in
     * an unrelated TLS error message. */
    ERR_clear_error();
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    if (text != NULL) {
        OPENSSL_cleanse(text, textlen);
        free(text);
    }
    return rc;
}

int key_load_text(const char *text, size_t len, apple_key **out, char *err, size_t errlen)
{
    uint8_t *decoded = NULL;
    size_t declen = 0;
    int rc = -1;

    *out = NULL;
    /* Base64 makes text a third longer; a limit on the decoded PEM follows in key_load_pem. */
    if (len > KEY_MAX_BYTES / 3 * 4 + 1024) {
        errbuf_set(err, errlen, "%zu bytes of key text; a .p8 key is under 1 KiB (limit %d bytes)",
                len, KEY_MAX_BYTES);
        goto out;
    }
    if (memmem(text, len, "-----BEGIN", 10) != NULL) {
        rc = key_load_pem(text, len, out, err, errlen);
        goto out;
    }
    decoded = b64_decode_loose(text, len, &declen);
    if (decoded == NULL) {
        errbuf_set(err, errlen, "neither PEM (no \"-----BEGIN PRIVATE KEY-----\" line) nor base64");
        goto out;
    }
    if (declen == 0) {
        errbuf_set(err, errlen, "empty, not a PEM private key");
        goto out;
    }
    if (memmem(decoded, declen, "-----BEGIN", 10) == NULL) {
        errbuf_set(err, errlen,
                "base64 that does not decode to PEM; expected the base64 of the "
                "whole .p8 file, BEGIN and END lines included");
        goto out;
    }
    rc = key_load_pem((const char *)decoded, declen, out, err, errlen);
out:
    if (decoded != NULL) {
        OPENSSL_cleanse(decoded, declen);
        free(decoded);
    }
    return rc;
}

static const char *key_file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISSOCK(mode))
        return "a socket";
    return "not a regular file";
}

int key_load_file(const char *path, apple_key **out, char *err, size_t errlen, char *warn,
                  size_t warnlen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    char why[256];
    int fd = -1, rc = -1, saved;

    *out = NULL;
    if (warn != NULL && warnlen > 0)
        warn[0] = '\0';
    /* stat() before open(): opening a FIFO blocks and opening a device can have side effects. */
    if (stat(path, &st) != 0) {
        saved = errno;
        errbuf_set(err, errlen, "%s: %s", path, strerror(saved));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        errbuf_set(err, errlen, "%s: %s, not a key file", path, key_file_kind(st.st_mode));
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        saved = errno;
        errbuf_set(err, errlen, "%s: %s", path, strerror(saved));
        goto out;
    }
    /* The path may have been replaced between stat() and open(); judge what was opened. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        errbuf_set(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size > KEY_MAX_BYTES) {
        errbuf_set(err, errlen, "%s: %lld bytes; a .p8 key is under 1 KiB (limit %d bytes)", path,
                (long long)st.st_size, KEY_MAX_BYTES);
        goto out;
    }
    if ((st.st_mode & 077) != 0 && warn != NULL && warnlen > 0)
        snprintf(warn, warnlen, "%s is %s by group or others; run: chmod 600 %s", path,
                 (st.st_mode & 044) != 0 ? "readable" : "accessible", path);
    /* One byte more than the limit, so a file that grew after fstat() is still caught. */
    buf = malloc(KEY_MAX_BYTES + 1);
    if (buf == NULL) {
        errbuf_set(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + len, KEY_MAX_BYTES + 1 - len);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            saved = errno;
            errbuf_set(err, errlen, "%s: %s", path, strerror(saved));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > KEY_MAX_BYTES) {
            errbuf_set(err, errlen, "%s: larger than %d bytes; a .p8 key is under 1 KiB", path,
                    KEY_MAX_BYTES);
            goto out;
        }
    }
    if (key_load_pem(buf, len, out, why, sizeof why) != 0) {
        errbuf_set(err, errlen, "%s: %s", path, why);
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (buf != NULL) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
    return rc;
}

void key_free(apple_key *key)
{
    if (key == NULL)
        return;
    EVP_PKEY_free(key->pkey);
    free(key);
}

EVP_PKEY *key_pkey(const apple_key *key)
{
    return key->pkey;
}

char *key_public_pem(const apple_key *key)
{
    BIO *bio = NULL;
    char *data, *copy = NULL;
    long n;

    if (key == NULL)
        goto out;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || PEM_write_bio_PUBKEY(bio, key->pkey) != 1)
        goto out;
    n = BIO_get_mem_data(bio, &data);
    if (n <= 0)
        goto out;
    copy = malloc((size_t)n + 1);
    if (copy == NULL)
        goto out;
    memcpy(copy, data, (size_t)n);
    copy[n] = '\0';
out:
    BIO_free(bio);
    return copy;
}
