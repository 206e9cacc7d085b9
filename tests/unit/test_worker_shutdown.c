/* Unit tests for proxy/worker's shutdown: what a worker holds is released by worker_deinit,
 * including a reload handed over that the worker had not taken yet. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "proxy/live.h"
#include "proxy/runtime.h"
#include "proxy/worker.h"
#include "unit_conf.h"

/* Counts TLS contexts really freed (not only unreferenced): OpenSSL calls an ex_data free
 * function once, when the last reference goes. */
static int ctx_freed;

static void count_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                       void *argp)
{
    ctx_freed++;
}

static int listening_socket(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 16), 0);
    return fd;
}

/* Regression: worker_deinit set the listener count to zero before freeing the contexts of a
 * pending reload, which it sized by that count: a SIGHUP just before shutdown leaked them. */
static void test_regression_pending_reload_contexts_freed(void **state)
{
    char err[256];
    struct live *live = live_new();
    struct runtime *rt = runtime_new(
        unit_conf(UNIT_CONF_START " \"credentials\": {" UNIT_CRED_ASC "}, \"routes\": ["
                  "{\"path_prefix\": \"/\", \"upstream\": \"https://api.appstoreconnect.apple.com\","
                  " \"credential\": \"asc\"}]}"),
        live, err, sizeof(err));
    if (rt == NULL)
        fail_msg("runtime_new: %s", err);
    int idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, count_free);
    SSL_CTX *first = SSL_CTX_new(TLS_server_method()), *renewed = SSL_CTX_new(TLS_server_method());
    assert_non_null(first);
    assert_non_null(renewed);
    /* the free function only runs for contexts that have the index set */
    SSL_CTX_set_ex_data(first, idx, &ctx_freed);
    SSL_CTX_set_ex_data(renewed, idx, &ctx_freed);
    int fd = listening_socket();
    struct worker w;
    assert_int_equal(worker_init(&w, 0, NULL, rt, &fd, &first, 1, err, sizeof(err)), 0);
    worker_reload(&w, rt, &renewed); /* the worker's thread never runs: it stays pending */
    worker_deinit(&w);
    SSL_CTX_free(first);
    SSL_CTX_free(renewed);
    assert_int_equal(ctx_freed, 2);
    runtime_unref(rt);
    live_free(live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regression_pending_reload_contexts_freed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
