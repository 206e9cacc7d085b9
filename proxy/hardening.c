/* hardening: what the process does to itself at start so that its secrets stay in it.
 *
 * A core dump holds every page of the process: the private keys, minted tokens, and whatever
 * a client sent in Proxy-Authorization. It lands in a file (or with systemd-coredump, a
 * journal) readable by more people than the key file, and outlives the process. So no dump is
 * ever written unless an operator asks for one to debug a crash. */
#include "proxy/hardening.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <event2/event.h>

/* libevent's allocations (every evbuffer chain: what was read from clients, including
 * Proxy-Authorization lines, and what is written to upstreams, including the token line) are
 * wiped when they are freed or moved by realloc: libevent copies and frees chains on its own
 * (pulling data together, growing a chain), so wiping only where the proxy drains its buffers
 * would miss copies. malloc_usable_size covers the whole block, not only what was used.
 * explicit_bzero, which the compiler may not drop either, is glibc's vectorised memset:
 * OPENSSL_cleanse stores 8 bytes at a time, and every request frees about a dozen such
 * blocks, a kilobyte or more each, so it was a few percent of the proxy's CPU per request. */
static void wipe_free(void *p)
{
    if (p == NULL)
        return;
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
}

static void *wipe_realloc(void *p, size_t n)
{
    void *q;
    size_t old;
    if (p == NULL)
        return malloc(n);
    old = malloc_usable_size(p);
    q = malloc(n ? n : 1);
    if (q == NULL)
        return NULL; /* p stays valid, as realloc leaves it */
    memcpy(q, p, old < n ? old : n);
    wipe_free(p);
    return q;
}

int hardening_apply(void)
{
    const char *v = getenv(HARDENING_CORE_DUMPS_ENV);
    struct rlimit none = {0, 0};
    /* Before any other libevent call, as libevent requires. */
    event_set_mem_functions(malloc, wipe_realloc, wipe_free);
    if (v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0)) {
        fprintf(stderr, "apple-auth-proxy: warning: core dumps are on (%s=%s): a dump of this "
                        "process holds its private keys and tokens; turn it off again after "
                        "debugging\n", HARDENING_CORE_DUMPS_ENV, v);
        return 0;
    }
    if (setrlimit(RLIMIT_CORE, &none) != 0) {
        fprintf(stderr, "apple-auth-proxy: cannot turn core dumps off (RLIMIT_CORE): %s\n",
                strerror(errno));
        return -1;
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        fprintf(stderr, "apple-auth-proxy: cannot turn core dumps off (PR_SET_DUMPABLE): %s\n",
                strerror(errno));
        return -1;
    }
    return 0;
}
