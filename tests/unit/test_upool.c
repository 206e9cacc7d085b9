/* test_upool: how many idle upstream connections a pool keeps for a given demand. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "proxy/upstream.h"

/* The most busy at once in either remembered window decides. */
static void test_cap_follows_the_higher_window(void **state)
{
    (void)state;
    assert_int_equal(upool_idle_cap(500, 0, 1024), 500);
    assert_int_equal(upool_idle_cap(3, 500, 1024), 500);
    assert_int_equal(upool_idle_cap(40, 7, 1024), 40);
}

/* upstream_pool_size bounds the pool whatever the demand. */
static void test_cap_never_exceeds_the_hard_cap(void **state)
{
    (void)state;
    assert_int_equal(upool_idle_cap(5000, 0, 1024), 1024);
    assert_int_equal(upool_idle_cap(0, 5000, 64), 64);
}

/* With no demand one connection stays (upstream_idle_timeout decides about it); a pool size of
 * 0 keeps none. */
static void test_cap_floor_and_zero(void **state)
{
    (void)state;
    assert_int_equal(upool_idle_cap(0, 0, 1024), 1);
    assert_int_equal(upool_idle_cap(0, 0, 0), 0);
    assert_int_equal(upool_idle_cap(200, 200, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_follows_the_higher_window),
        cmocka_unit_test(test_cap_never_exceeds_the_hard_cap),
        cmocka_unit_test(test_cap_floor_and_zero),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
