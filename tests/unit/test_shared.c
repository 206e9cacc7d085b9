/* shared: the Redis replies the proxy reads (rate decisions, credential figures), hostile
 * shapes included, and the connection's states (when a replica falls back to local limits). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "proxy/shared.h"
#include "proxy/stream.h"

static redisReply int_reply(long long v)
{
    redisReply r;
    memset(&r, 0, sizeof(r));
    r.type = REDIS_REPLY_INTEGER;
    r.integer = v;
    return r;
}

static redisReply str_reply(const char *s)
{
    redisReply r;
    memset(&r, 0, sizeof(r));
    r.type = REDIS_REPLY_STRING;
    r.str = (char *)s;
    r.len = strlen(s);
    return r;
}

static redisReply nil_reply(void)
{
    redisReply r;
    memset(&r, 0, sizeof(r));
    r.type = REDIS_REPLY_NIL;
    return r;
}

static redisReply array_of(redisReply **el, size_t n)
{
    redisReply r;
    memset(&r, 0, sizeof(r));
    r.type = REDIS_REPLY_ARRAY;
    r.element = el;
    r.elements = n;
    return r;
}

static int rate_of(long long a, long long us, int *allowed, double *wait)
{
    redisReply e0 = int_reply(a), e1 = int_reply(us);
    redisReply *el[2] = {&e0, &e1};
    redisReply r = array_of(el, 2);
    return shared_parse_rate(&r, allowed, wait);
}

static void test_rate_replies(void **state)
{
    int allowed = -1;
    double wait = -1;
    (void)state;
    assert_int_equal(rate_of(1, 0, &allowed, &wait), 0);
    assert_int_equal(allowed, 1);
    assert_true(wait == 0);
    assert_int_equal(rate_of(0, 2500000, &allowed, &wait), 0);
    assert_int_equal(allowed, 0);
    assert_true(wait > 2.49 && wait < 2.51);
}

static void test_rate_replies_hostile(void **state)
{
    int allowed = 7;
    double wait = 7;
    redisReply err;
    (void)state;
    assert_int_equal(shared_parse_rate(NULL, &allowed, &wait), -1);
    memset(&err, 0, sizeof(err));
    err.type = REDIS_REPLY_ERROR;
    err.str = (char *)"NOSCRIPT";
    err.len = 8;
    assert_int_equal(shared_parse_rate(&err, &allowed, &wait), -1);
    assert_int_equal(rate_of(2, 0, &allowed, &wait), -1);   /* not a yes or no */
    assert_int_equal(rate_of(0, -5, &allowed, &wait), -1);  /* a negative wait */
    assert_int_equal(rate_of(1, 10, &allowed, &wait), -1);  /* allowed with a wait */
    {
        redisReply e0 = int_reply(1), e1 = str_reply("0");
        redisReply *el[2] = {&e0, &e1};
        redisReply r = array_of(el, 2);
        assert_int_equal(shared_parse_rate(&r, &allowed, &wait), -1);
        r.elements = 1;
        assert_int_equal(shared_parse_rate(&r, &allowed, &wait), -1);
    }
    assert_int_equal(allowed, 7); /* nothing written on a refusal */
    assert_true(wait == 7);
}

static void test_figures(void **state)
{
    struct live_quota q;
    redisReply e[5] = {str_reply("3600"), str_reply("12"), str_reply("1700000000123"), nil_reply(),
                       int_reply(9)};
    redisReply *el[5] = {&e[0], &e[1], &e[2], &e[3], &e[4]};
    redisReply r = array_of(el, 5);
    (void)state;
    assert_int_equal(shared_parse_figures(&r, &q), 0);
    assert_int_equal(q.limit, 3600);
    assert_int_equal(q.remaining, 12);
    assert_true(q.updated > 1700000000.12 && q.updated < 1700000000.13);
    assert_true(q.blocked_until == 0);
    assert_int_equal(q.mints, 9);
    /* a credential nobody has heard of yet: all nil */
    for (int i = 0; i < 5; i++)
        e[i] = nil_reply();
    assert_int_equal(shared_parse_figures(&r, &q), 0);
    assert_int_equal(q.limit, -1);
    assert_int_equal(q.remaining, -1);
    assert_int_equal(q.mints, 0);
}

static void test_figures_hostile(void **state)
{
    struct live_quota q;
    static const char *bad[] = {"", "-", "12x", "99999999999999999999", "9999999999999999999", "-5", " 1", "1.5"};
    redisReply e[5] = {nil_reply(), nil_reply(), nil_reply(), nil_reply(), nil_reply()};
    redisReply *el[5] = {&e[0], &e[1], &e[2], &e[3], &e[4]};
    redisReply r = array_of(el, 5);
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        e[2] = str_reply(bad[i]);
        assert_int_equal(shared_parse_figures(&r, &q), -1);
    }
    e[2] = nil_reply();
    e[0] = str_reply("-2"); /* below "unknown" */
    assert_int_equal(shared_parse_figures(&r, &q), -1);
    e[0] = nil_reply();
    r.elements = 4;
    assert_int_equal(shared_parse_figures(&r, &q), -1);
    r.elements = 5;
    {
        redisReply inner = array_of(el, 5);
        e[1] = inner; /* nested arrays are not figures */
        assert_int_equal(shared_parse_figures(&r, &q), -1);
    }
    assert_int_equal(shared_parse_figures(NULL, &q), -1);
}

/* Regression (found by fuzz_redis_reply once it merged what it parsed): an integer reply of
 * 2^63 - 1 as updated_ms or blocked_until_ms went back to milliseconds as 9.2e18, outside long
 * long (undefined behaviour); a time no proxy writes is refused, the furthest one it does is
 * kept. */
static void test_figures_times_out_of_range(void **state)
{
    struct live_quota q;
    redisReply e[5] = {nil_reply(), nil_reply(), nil_reply(), nil_reply(), nil_reply()};
    redisReply *el[5] = {&e[0], &e[1], &e[2], &e[3], &e[4]};
    redisReply r = array_of(el, 5);
    (void)state;
    for (int i = 2; i <= 3; i++) {
        e[i] = int_reply(INT64_MAX);
        assert_int_equal(shared_parse_figures(&r, &q), -1);
        e[i] = int_reply(1000000000000001LL);
        assert_int_equal(shared_parse_figures(&r, &q), -1);
        e[i] = str_reply("999999999999999999"); /* 18 digits: read, then refused */
        assert_int_equal(shared_parse_figures(&r, &q), -1);
        e[i] = int_reply(999999999999999LL); /* a 15-digit epoch-ms Retry-After */
        assert_int_equal(shared_parse_figures(&r, &q), 0);
        assert_true((i == 2 ? q.updated : q.blocked_until) > 999999999999.0);
        e[i] = nil_reply();
    }
}

/* Regression (found by fuzz_redis_reply): hiredis allocated the element array a reply announced
 * before any element arrived, 16 GB for "*2000000123". */
static void test_reader_refuses_huge_arrays(void **state)
{
    static const char huge[] = "*2000000123\r\n$-1\r\n";
    static const char big[] = "*65\r\n";
    static const char ours[] = "*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n";
    redisReader *r = redisReaderCreate();
    void *reply = NULL;
    struct live_quota q;
    (void)state;
    assert_non_null(r);
    assert_int_equal(shared_reader_limit(r), 0);
    assert_int_equal(redisReaderFeed(r, huge, sizeof(huge) - 1), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_ERR);
    assert_null(reply);
    redisReaderFree(r);
    r = redisReaderCreate();
    assert_int_equal(shared_reader_limit(r), 0);
    assert_int_equal(redisReaderFeed(r, big, sizeof(big) - 1), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_ERR);
    redisReaderFree(r);
    /* what the proxy's scripts answer still reads */
    r = redisReaderCreate();
    assert_int_equal(shared_reader_limit(r), 0);
    assert_int_equal(redisReaderFeed(r, ours, sizeof(ours) - 1), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    assert_non_null(reply);
    assert_int_equal(shared_parse_figures(reply, &q), 0);
    assert_int_equal(q.mints, 5);
    freeReplyObject(reply);
    redisReaderFree(r);
}

static void test_states(void **state)
{
    int fb = -1;
    enum shared_state s = SHARED_DOWN;
    (void)state;
    s = shared_state_next(s, SHARED_EV_CONNECT, &fb);
    assert_int_equal(s, SHARED_CONNECTING);
    assert_int_equal(fb, 0);
    /* a connection that never became ready is not a fallback: it was never in use */
    assert_int_equal(shared_state_next(s, SHARED_EV_FAILED, &fb), SHARED_DOWN);
    assert_int_equal(fb, 0);
    assert_int_equal(shared_state_next(s, SHARED_EV_TIMEOUT, &fb), SHARED_DOWN);
    assert_int_equal(fb, 0);
    s = shared_state_next(s, SHARED_EV_READY, &fb);
    assert_int_equal(s, SHARED_UP);
    assert_int_equal(fb, 0);
    /* up: a second connect or ready changes nothing */
    assert_int_equal(shared_state_next(s, SHARED_EV_CONNECT, &fb), SHARED_UP);
    assert_int_equal(fb, 0);
    assert_int_equal(shared_state_next(s, SHARED_EV_READY, &fb), SHARED_UP);
    assert_int_equal(fb, 0);
    assert_int_equal(shared_state_next(s, SHARED_EV_TIMEOUT, &fb), SHARED_DOWN);
    assert_int_equal(fb, 1);
    assert_int_equal(shared_state_next(s, SHARED_EV_FAILED, &fb), SHARED_DOWN);
    assert_int_equal(fb, 1);
    /* ready without a connection attempt (a stale reply) does not bring it up */
    assert_int_equal(shared_state_next(SHARED_DOWN, SHARED_EV_READY, &fb), SHARED_DOWN);
    assert_int_equal(fb, 0);
}

/* A connection freed while the Redis host name is still being resolved (a worker stopping while
 * the name server is slow): the resolver reports the cancellation later, from the loop, and
 * must not write into the freed connection. The name server here reads nothing, so the name
 * stays unresolved; ASan (the CI's sanitized run) reports the write if one happens. */
static void test_freed_while_resolving(void **state)
{
    struct conf_shared cfg;
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    struct event_base *base = event_base_new();
    struct evdns_base *dns;
    struct shared *sh;
    struct shared_conn *conn;
    struct stream_ctx sctx;
    char ns[32], err[256];
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    (void)state;
    assert_non_null(base);
    assert_true(udp >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(udp, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(udp, (struct sockaddr *)&sin, &len), 0);
    snprintf(ns, sizeof(ns), "127.0.0.1:%d", ntohs(sin.sin_port));
    dns = evdns_base_new(base, 0);
    assert_non_null(dns);
    assert_int_equal(evdns_base_nameserver_ip_add(dns, ns), 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.redis = (char *)"redis.example:6379";
    cfg.host = (char *)"redis.example";
    cfg.port = 6379;
    cfg.key_prefix = (char *)"apple-auth-proxy:";
    cfg.timeout_ms = 250;
    cfg.replicas = 1;
    sh = shared_new(&cfg, 1, err, sizeof(err));
    assert_non_null(sh);
    stream_ctx_init(&sctx, base);
    conn = shared_conn_new(sh, &sctx, dns, 0);
    assert_non_null(conn);
    assert_int_equal(shared_up(conn), 0);
    shared_conn_free(conn);
    /* The cancellation is delivered here. */
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_loop(base, EVLOOP_NONBLOCK);
    evdns_base_free(dns, 0);
    stream_ctx_deinit(&sctx);
    event_base_free(base);
    shared_free(sh);
    close(udp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_replies),        cmocka_unit_test(test_rate_replies_hostile),
        cmocka_unit_test(test_figures),             cmocka_unit_test(test_figures_hostile),
        cmocka_unit_test(test_figures_times_out_of_range),
        cmocka_unit_test(test_states),
        cmocka_unit_test(test_reader_refuses_huge_arrays),
        cmocka_unit_test(test_freed_while_resolving),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
