/* cli_client_key: `apple-auth-proxy client-key`: a new gateway client secret, the key_sha256
 * line for the configuration, and how the client presents it. */
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "auth/b64.h"
#include "proxy/cli.h"
#include "proxy/gateway.h"

#define CLIENT_KEY_BYTES 32 /* 43 characters of base64url */
#define CLIENT_KEY_URL_MAX 256 /* a percent-encoded name (64 characters at most) or secret */

static const char client_key_usage[] =
    "usage: apple-auth-proxy client-key [NAME]\n"
    "\n"
    "Makes a secret for a gateway client: 32 random bytes as base64url, printed once for the\n"
    "client, and its SHA-256 as the \"key_sha256\" line for the proxy's configuration (the\n"
    "configuration never holds the secret itself). NAME is the client's name in \"clients\":\n"
    "letters, digits, '.', '-' and '_' (1 to 64 characters).\n"
    "\n"
    "  -h, --help   this text\n";

/* Percent-encodes everything but RFC 3986's unreserved characters (section 2.3), so the text
 * can go into a URL's userinfo. */
static void url_encode(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *in && o + 4 < outlen; in++) {
        unsigned char c = (unsigned char)*in;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

int cli_client_key(int argc, char **argv)
{
    unsigned char raw[CLIENT_KEY_BYTES];
    char secret[64], hash[65], uname[CLIENT_KEY_URL_MAX], usecret[CLIENT_KEY_URL_MAX];
    const char *name = "NAME", *why;
    if (argc > 0 && cli_is_help(argv[0])) {
        fputs(client_key_usage, stdout);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "apple-auth-proxy client-key: at most one argument (the client name)\n%s",
                client_key_usage);
        return CLI_EXIT_USAGE;
    }
    if (argc == 1) {
        name = argv[0];
        /* An option-like argument is a mistake, not a client called "--verbose". */
        if (name[0] == '-') {
            fprintf(stderr, "apple-auth-proxy client-key: unknown option \"%s\"\n%s", name,
                    client_key_usage);
            return CLI_EXIT_USAGE;
        }
        why = conf_client_name_problem(name);
        if (why) {
            fprintf(stderr, "apple-auth-proxy client-key: the configuration would refuse a "
                            "client named \"%.64s\": %s\n", name, why);
            return CLI_EXIT_USAGE;
        }
    }
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        fprintf(stderr, "apple-auth-proxy: the random number generator failed\n");
        return CLI_EXIT_RUNTIME;
    }
    b64url_encode(raw, sizeof(raw), secret);
    OPENSSL_cleanse(raw, sizeof(raw));
    gateway_hash_hex(secret, strlen(secret), hash);
    url_encode(name, uname, sizeof(uname));
    url_encode(secret, usecret, sizeof(usecret));
    printf("secret for the client (give it to %s only; it is not stored anywhere):\n  %s\n\n"
           "for the proxy's configuration:\n  \"clients\": { \"%s\": { \"key_sha256\": \"%s\" } }\n\n"
           "the client sends:\n  Proxy-Authorization: Bearer %s\n"
           "or uses the proxy URL (curl reads only the lower-case http_proxy for http:// URLs):\n"
           "  http_proxy=http://%s:%s@HOST:PORT\n",
           name, secret, name, hash, secret, uname, usecret);
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(usecret, sizeof(usecret));
    return 0;
}
