/* Unit tests for proxy/live: entries by name and their lifetime, the rate bucket (refill, a
 * changed rate or burst, no refill on a new reference), Apple's figures and the mint count. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/live.h"

static void test_same_name_same_entry(void **state)
{
    struct live *l = live_new();
    struct live_cred *a = live_cred_get(l, "asc"), *b = live_cred_get(l, "asc");
    struct live_cred *c = live_cred_get(l, "weather");
    struct live_client *x = live_client_get(l, "asc"); /* clients are a separate namespace */
    struct live_quota q;
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    live_quota_note(a, 3600, 42, 1000.0);
    live_cred_read(b, &q);
    assert_int_equal(q.remaining, 42);
    live_cred_read(c, &q);
    assert_int_equal(q.remaining, -1);
    assert_int_equal(q.limit, -1);
    live_cred_put(a);
    live_cred_put(b);
    live_cred_put(c);
    live_client_put(x);
    live_free(l);
}

/* A name survives while any holder keeps it (the old runtime during a reload), and is
 * forgotten once the last one lets go (a reload that dropped the name has completed). */
static void test_entry_outlives_holders_then_dropped(void **state)
{
    struct live *l = live_new();
    struct live_cred *old = live_cred_get(l, "asc");
    struct live_quota q;
    live_block_until(old, 5000.0);
    struct live_cred *next = live_cred_get(l, "asc"); /* the new runtime, built first */
    live_cred_put(old);                               /* then the old one goes */
    live_cred_read(next, &q);
    assert_true(q.blocked_until == 5000.0);
    live_cred_put(next);
    struct live_cred *again = live_cred_get(l, "asc");
    live_cred_read(again, &q);
    assert_true(q.blocked_until == 0.0);
    live_cred_put(again);
    live_free(l);
}

struct take_case {
    double rate, burst, now;
    int allowed;
    double wait; /* when refused */
};

/* One bucket through a sequence of takes; the rate and burst may change between rows, as a
 * reload changes them. */
static void run_takes(const struct take_case *cases, size_t n)
{
    struct live *l = live_new();
    struct live_client *e = live_client_get(l, "c");
    for (size_t i = 0; i < n; i++) {
        double wait = -1;
        int ok = live_rate_take(e, cases[i].rate, cases[i].burst, cases[i].now, &wait);
        if (ok != cases[i].allowed)
            fail_msg("row %zu: allowed %d, want %d", i, ok, cases[i].allowed);
        if (!ok && (wait < cases[i].wait - 1e-9 || wait > cases[i].wait + 1e-9))
            fail_msg("row %zu: wait %g, want %g", i, wait, cases[i].wait);
        if (ok)
            assert_true(wait == 0);
    }
    live_client_put(e);
    live_free(l);
}

static void test_rate_burst_then_refill(void **state)
{
    static const struct take_case cases[] = {
        {1, 3, 100.0, 1, 0}, {1, 3, 100.0, 1, 0}, {1, 3, 100.0, 1, 0},
        {1, 3, 100.0, 0, 1.0},  /* empty: one token comes in a second */
        {1, 3, 100.5, 0, 0.5},  /* half of it has */
        {1, 3, 101.0, 1, 0},
        {1, 3, 200.0, 1, 0}, {1, 3, 200.0, 1, 0}, {1, 3, 200.0, 1, 0}, /* full, not more */
        {1, 3, 200.0, 0, 1.0},
        {1, 3, 150.0, 0, 1.0},  /* a clock stepping back refills nothing */
    };
    run_takes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_rate_change_does_not_refill(void **state)
{
    static const struct take_case cases[] = {
        {0.01, 2, 10.0, 1, 0}, {0.01, 2, 10.0, 1, 0},
        {0.01, 2, 10.0, 0, 100.0},
        {2, 5, 10.0, 0, 0.5},   /* a larger burst and rate: still empty, the new rate waits */
        {2, 5, 10.5, 1, 0},
        {2, 5, 100.0, 1, 0}, {2, 5, 100.0, 1, 0}, {2, 5, 100.0, 1, 0}, {2, 5, 100.0, 1, 0},
        {2, 5, 100.0, 1, 0},
        {2, 5, 100.0, 0, 0.5},
        {2, 1, 200.0, 1, 0},    /* a smaller burst caps what had accumulated */
        {2, 1, 200.0, 0, 0.5},
    };
    run_takes(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_quota_block_and_mints(void **state)
{
    struct live *l = live_new();
    struct live_cred *e = live_cred_get(l, "asc");
    struct live_quota q;
    live_cred_read(e, &q);
    assert_int_equal(q.mints, 0);
    assert_true(q.updated == 0 && q.blocked_until == 0);
    live_quota_note(e, 3600, 17, 1234.5);
    live_block_until(e, 2000.25);
    live_count_mint(e);
    live_count_mint(e);
    live_cred_read(e, &q);
    assert_int_equal(q.limit, 3600);
    assert_int_equal(q.remaining, 17);
    assert_true(q.updated == 1234.5);
    assert_true(q.blocked_until == 2000.25);
    assert_int_equal(q.mints, 2);
    live_cred_put(e);
    live_free(l);
}

/* Workers take from one client's bucket at once: exactly the burst is admitted. */
struct racer {
    struct live_client *e;
    int admitted;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    double wait;
    for (int i = 0; i < 1000; i++)
        r->admitted += live_rate_take(r->e, 1e-9, 500, 10.0, &wait);
    return NULL;
}

static void test_concurrent_takes_admit_the_burst(void **state)
{
    struct live *l = live_new();
    struct live_client *e = live_client_get(l, "c");
    struct racer r[4];
    pthread_t t[4];
    int total = 0;
    for (int i = 0; i < 4; i++) {
        r[i].e = e;
        r[i].admitted = 0;
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += r[i].admitted;
    }
    assert_int_equal(total, 500);
    live_client_put(e);
    live_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_name_same_entry),
        cmocka_unit_test(test_entry_outlives_holders_then_dropped),
        cmocka_unit_test(test_rate_burst_then_refill),
        cmocka_unit_test(test_rate_change_does_not_refill),
        cmocka_unit_test(test_quota_block_and_mints),
        cmocka_unit_test(test_concurrent_takes_admit_the_burst),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
