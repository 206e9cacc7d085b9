/* test_token_cache: reuse, refresh ahead of expiry on a fake clock, 401 handling, and one mint
 * for many concurrent callers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth/key.h"
#include "unit_key.h"
#include "auth/profile.h"
#include "auth/token_cache.h"

#define T0 ((time_t)1700000000)

static apple_key *key;
static _Atomic time_t fake_now = T0;

static time_t fake_clock(void)
{
    return atomic_load(&fake_now);
}

static void set_now(time_t t)
{
    atomic_store(&fake_now, t);
}

static int group_setup(void **state)
{
    (void)state;
    key = unit_key_new();
    return key != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    key_free(key);
    return 0;
}

static int reset_clock(void **state)
{
    (void)state;
    set_now(T0);
    return 0;
}

/* App Store Connect with the defaults: lifetime 1140, skew 60, so exp = now + 1080. */
static struct credential asc(void)
{
    struct credential c;

    memset(&c, 0, sizeof c);
    c.name = "asc";
    c.profile = PROFILE_APP_STORE_CONNECT;
    c.key_id = "2X9R4HXF34";
    c.issuer_id = "69a6de95-023f-47e3-e053-5b8c7c11a4d1";
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key = key;
    return c;
}

static struct token *get(token_cache *cache, const struct credential *c)
{
    char err[256] = "";
    struct token *t = token_cache_get(cache, c, NULL, 0, err, sizeof err);

    if (t == NULL)
        fail_msg("token_cache_get: %s", err);
    return t;
}

static void test_reuse(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *a, *b;
    char line[1024];

    (void)state;
    a = get(cache, &c);
    b = get(cache, &c);
    assert_ptr_equal(a, b);
    assert_string_equal(a->jwt, b->jwt);
    assert_int_equal(token_cache_mints(cache, &c), 1);
    assert_int_equal(a->generation, 1);
    assert_int_equal(a->iat, T0 - 60);
    assert_int_equal(a->exp, T0 + 1080);
    assert_int_equal(token_cache_expiry(cache, &c), T0 + 1080);

    /* The header line is built once, and jwt points into it. */
    snprintf(line, sizeof line, "Authorization: Bearer %.*s\r\n", (int)a->jwt_len, a->jwt);
    assert_int_equal(a->line_len, strlen(line));
    assert_memory_equal(a->line, line, a->line_len);
    assert_ptr_equal(a->jwt, a->line + strlen("Authorization: Bearer "));
    assert_int_equal(strlen(a->jwt), a->jwt_len + 2);
    token_put(a);
    token_put(b);
    token_cache_free(cache);
}

/* Refreshed refresh_margin (300 s) before exp; the old token stays usable by its holders. */
static void test_refresh_before_expiry(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *a, *b, *d;

    (void)state;
    a = get(cache, &c);
    set_now(T0 + 779);
    b = get(cache, &c);
    assert_ptr_equal(a, b);
    set_now(T0 + 780);
    d = get(cache, &c);
    assert_ptr_not_equal(a, d);
    assert_string_not_equal(a->jwt, d->jwt);
    assert_int_equal(d->generation, 2);
    assert_int_equal(d->exp, T0 + 780 + 1080);
    assert_int_equal(token_cache_mints(cache, &c), 2);
    /* a was replaced in the cache but is still referenced here. */
    assert_int_equal(strncmp(a->line, "Authorization: Bearer ", 22), 0);
    token_put(a);
    token_put(b);
    token_put(d);
    token_cache_free(cache);
}

/* Whatever the margin and however time moves, a token is never handed out within 5 s of exp. */
static void test_never_expired(void **state)
{
    long margins[] = {0, 3, 300, 100000};
    size_t m;

    (void)state;
    for (m = 0; m < sizeof margins / sizeof margins[0]; m++) {
        struct credential c = asc();
        token_cache *cache = token_cache_new(margins[m], fake_clock);
        time_t t;

        set_now(T0);
        for (t = T0; t < T0 + 3 * 3600; t += 7) {
            struct token *tok;

            set_now(t);
            tok = get(cache, &c);
            assert_true(t < tok->exp - 5);
            token_put(tok);
        }
        token_cache_free(cache);
    }
}

/* With margin 0 the 5-second guard still applies: served at exp - 6, replaced at exp - 5. */
static void test_guard_with_zero_margin(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(0, fake_clock);
    struct token *a, *b;

    (void)state;
    a = get(cache, &c);
    set_now(a->exp - 6);
    b = get(cache, &c);
    assert_ptr_equal(a, b);
    token_put(b);
    set_now(a->exp - 5);
    b = get(cache, &c);
    assert_ptr_not_equal(a, b);
    token_put(a);
    token_put(b);
    token_cache_free(cache);
}

/* The margin shrinks to a third of the time a token is usable: 120 s with 60 s of skew leaves
 * exp = now + 60, refreshed after 40 s (margin 20) rather than on every request. */
static void test_margin_capped_to_third_of_lifetime(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *a, *b;

    (void)state;
    c.lifetime = 120;
    a = get(cache, &c);
    assert_int_equal(a->exp, T0 + 60);
    set_now(T0 + 39);
    b = get(cache, &c);
    assert_ptr_equal(a, b);
    token_put(b);
    set_now(T0 + 40);
    b = get(cache, &c);
    assert_ptr_not_equal(a, b);
    token_put(a);
    token_put(b);
    token_cache_free(cache);
}

/* Regression: with clock_skew close to the lifetime (180 s, skew 120 s: usable for 60 s) the
 * margin was a third of exp - iat (60 s), so every new token was already inside it and every
 * request signed again. */
static void test_regression_large_skew_not_reminted_per_request(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *a, *b;

    (void)state;
    c.lifetime = 180;
    c.skew = 120;
    a = get(cache, &c);
    for (int t = 1; t < 40; t++) {
        set_now(T0 + t);
        b = get(cache, &c);
        assert_ptr_equal(a, b);
        token_put(b);
    }
    assert_int_equal(token_cache_mints(cache, &c), 1);
    token_put(a);
    token_cache_free(cache);
}

static void test_refresh_remints_inside_margin(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    const char *scope[] = {"GET /v1/apps"};
    char err[256] = "";
    struct token *a, *b, *s;

    (void)state;
    a = get(cache, &c);
    s = token_cache_get(cache, &c, scope, 1, err, sizeof err);
    assert_non_null(s);
    set_now(T0 + 100);
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), 0);
    assert_int_equal(token_cache_mints(cache, &c), 2);
    set_now(T0 + 800);
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), 2);
    assert_int_equal(token_cache_mints(cache, &c), 4);
    /* The request after the refresh gets the new token without signing. */
    b = get(cache, &c);
    assert_ptr_not_equal(a, b);
    assert_int_equal(b->generation, 2);
    assert_int_equal(b->exp, T0 + 800 + 1080);
    assert_int_equal(token_cache_mints(cache, &c), 4);
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), 0);
    token_put(a);
    token_put(b);
    token_put(s);
    token_cache_free(cache);
}

static void test_invalidate_with_cooldown(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *a, *b, *d;

    (void)state;
    a = get(cache, &c);
    assert_int_equal(token_cache_invalidate(cache, &c, NULL, 0, a, 60), 1);
    assert_int_equal(token_cache_expiry(cache, &c), 0);
    b = get(cache, &c);
    assert_ptr_not_equal(a, b);
    assert_int_equal(token_cache_mints(cache, &c), 2);
    /* Late 401s for the token already replaced change nothing. */
    assert_int_equal(token_cache_invalidate(cache, &c, NULL, 0, a, 60), 0);
    /* The new token fails too (a revoked key): no second re-mint inside the cooldown. */
    set_now(T0 + 59);
    assert_int_equal(token_cache_invalidate(cache, &c, NULL, 0, b, 60), 0);
    d = get(cache, &c);
    assert_ptr_equal(b, d);
    token_put(d);
    assert_int_equal(token_cache_mints(cache, &c), 2);
    set_now(T0 + 60);
    assert_int_equal(token_cache_invalidate(cache, &c, NULL, 0, b, 60), 1);
    d = get(cache, &c);
    assert_ptr_not_equal(b, d);
    assert_int_equal(token_cache_mints(cache, &c), 3);
    /* Unknown entry. */
    {
        const char *scope[] = {"GET /v1/builds"};

        assert_int_equal(token_cache_invalidate(cache, &c, scope, 1, d, 60), 0);
    }
    /* Dropped tokens stay readable for whoever still holds them. */
    assert_int_equal(strncmp(a->line, "Authorization: Bearer ", 22), 0);
    token_put(a);
    token_put(b);
    token_put(d);
    token_cache_free(cache);
}

static void test_scopes_are_separate_entries(void **state)
{
    struct credential c = asc(), other = asc();
    char *own[] = {"GET /v1/apps"};
    const char *apps[] = {"GET /v1/apps"}, *builds[] = {"GET /v1/builds"};
    const char *both[] = {"GET /v1/apps", "GET /v1/builds"};
    const char *joined[] = {"GET /v1/apps\nGET /v1/builds"};
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *t[6];
    char err[256];
    int i, j;

    (void)state;
    t[0] = token_cache_get(cache, &c, NULL, 0, err, sizeof err);
    t[1] = token_cache_get(cache, &c, apps, 1, err, sizeof err);
    t[2] = token_cache_get(cache, &c, builds, 1, err, sizeof err);
    t[3] = token_cache_get(cache, &c, both, 2, err, sizeof err);
    t[4] = token_cache_get(cache, &other, NULL, 0, err, sizeof err);
    t[5] = token_cache_get(cache, &c, joined, 1, err, sizeof err);
    for (i = 0; i < 6; i++) {
        assert_non_null(t[i]);
        for (j = 0; j < i; j++)
            assert_string_not_equal(t[i]->jwt, t[j]->jwt);
    }
    assert_int_equal(token_cache_mints(cache, &c), 5);
    assert_int_equal(token_cache_mints(cache, &other), 1);
    for (i = 0; i < 6; i++)
        token_put(t[i]);

    /* Same scope again: reused. A credential whose own scope equals a route's explicit scope
     * shares the entry. */
    t[0] = token_cache_get(cache, &c, apps, 1, err, sizeof err);
    other.scope = own;
    other.nscope = 1;
    t[1] = token_cache_get(cache, &other, apps, 1, err, sizeof err);
    t[2] = token_cache_get(cache, &other, NULL, 0, err, sizeof err);
    assert_ptr_equal(t[1], t[2]);
    assert_int_equal(token_cache_mints(cache, &c), 5);
    assert_int_equal(token_cache_mints(cache, &other), 2);
    for (i = 0; i < 3; i++)
        token_put(t[i]);
    token_cache_free(cache);
}

static void test_mint_failure(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *a, *b;
    char err[256] = "";

    (void)state;
    c.key = NULL;
    assert_null(token_cache_get(cache, &c, NULL, 0, err, sizeof err));
    assert_non_null(strstr(err, "no private key"));
    c.key = key;
    a = get(cache, &c);
    /* Signing now fails: inside the margin the still-valid token is served... */
    c.key = NULL;
    set_now(T0 + 800);
    b = token_cache_get(cache, &c, NULL, 0, err, sizeof err);
    assert_ptr_equal(a, b);
    token_put(b);
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), -1);
    /* ...but never within the guard. */
    set_now(a->exp - 5);
    assert_null(token_cache_get(cache, &c, NULL, 0, err, sizeof err));
    token_put(a);
    token_cache_free(cache);
}

/* 8 threads x 1000 gets on an empty cache: exactly one signature, one token for everyone. */
#define NTHREADS 8
#define NGETS    1000

struct worker {
    token_cache *cache;
    const struct credential *cred;
    pthread_barrier_t *start;
    const struct token *first;
    int failures;
};

static void *worker_run(void *p)
{
    struct worker *w = p;
    int i;

    pthread_barrier_wait(w->start);
    for (i = 0; i < NGETS; i++) {
        char err[256];
        struct token *t = token_cache_get(w->cache, w->cred, NULL, 0, err, sizeof err);

        if (t == NULL) {
            w->failures++;
            continue;
        }
        if (w->first == NULL)
            w->first = t;
        else if (t != w->first)
            w->failures++;
        token_put(t);
    }
    return NULL;
}

static void test_concurrent_single_mint(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, NULL);
    pthread_barrier_t start;
    pthread_t th[NTHREADS];
    struct worker w[NTHREADS];
    int i;

    (void)state;
    assert_int_equal(pthread_barrier_init(&start, NULL, NTHREADS), 0);
    for (i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){cache, &c, &start, NULL, 0};
        assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    }
    for (i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < NTHREADS; i++) {
        assert_int_equal(w[i].failures, 0);
        assert_ptr_equal(w[i].first, w[0].first);
    }
    assert_int_equal(token_cache_mints(cache, &c), 1);
    pthread_barrier_destroy(&start);
    token_cache_free(cache);
}

/* Getters race a clock that jumps ahead and a refresher: nobody ever sees a token within 5 s of
 * its exp (judged against the clock read before the call, which can only be earlier). */
struct racer {
    token_cache *cache;
    const struct credential *cred;
    atomic_int *stop;
    int failures;
    unsigned long gets;
};

static void *racer_run(void *p)
{
    struct racer *r = p;

    while (!atomic_load(r->stop)) {
        char err[256];
        time_t before = fake_clock();
        struct token *t = token_cache_get(r->cache, r->cred, NULL, 0, err, sizeof err);

        if (t == NULL || before >= t->exp - 5 || t->line[t->line_len - 1] != '\n')
            r->failures++;
        if (t != NULL)
            token_put(t);
        r->gets++;
    }
    return NULL;
}

static void test_concurrent_refresh_and_clock(void **state)
{
    struct credential c = asc();
    token_cache *cache = token_cache_new(300, fake_clock);
    atomic_int stop = 0;
    pthread_t th[4];
    struct racer r[4];
    char err[256];
    int i, step;

    (void)state;
    for (i = 0; i < 4; i++) {
        r[i] = (struct racer){cache, &c, &stop, 0, 0};
        assert_int_equal(pthread_create(&th[i], NULL, racer_run, &r[i]), 0);
    }
    for (step = 0; step < 200; step++) {
        set_now(fake_clock() + 97);
        if (step % 3 == 0 && token_cache_refresh(cache, err, sizeof err) < 0)
            fail_msg("refresh: %s", err);
        if (step % 7 == 0) {
            struct token *t = token_cache_get(cache, &c, NULL, 0, err, sizeof err);

            assert_non_null(t);
            token_cache_invalidate(cache, &c, NULL, 0, t, 30);
            token_put(t);
        }
    }
    atomic_store(&stop, 1);
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(r[i].failures, 0);
    }
    token_cache_free(cache);
}

static void test_free_null(void **state)
{
    (void)state;
    token_cache_free(NULL);
}

/* ---- APNs: one token per team, on APNs' schedule --------------------------------------- */

static struct credential apns(const char *name, const char *key_id, const char *team)
{
    struct credential c;

    memset(&c, 0, sizeof c);
    c.name = (char *)name;
    c.profile = PROFILE_APNS;
    c.key_id = (char *)key_id;
    c.team_id = (char *)team;
    c.skew = TOKEN_DEFAULT_SKEW;
    c.key = key;
    return c;
}

/* Two keys of one team get the same token (APNs counts the team's tokens, not the key's);
 * another team gets its own. */
static void test_apns_one_token_per_team(void **state)
{
    struct credential a = apns("a", "AAAAAAAAAA", "TEAM000001"), b = apns("b", "BBBBBBBBBB",
                                                                           "TEAM000001");
    struct credential other = apns("o", "CCCCCCCCCC", "TEAM000002");
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *ta, *tb, *to;

    (void)state;
    ta = get(cache, &a);
    tb = get(cache, &b);
    to = get(cache, &other);
    assert_ptr_equal(ta, tb);
    assert_ptr_not_equal(ta, to);
    assert_int_equal(token_cache_mints(cache, &a), 1);
    assert_int_equal(token_cache_mints(cache, &b), 1);
    assert_int_equal(token_cache_mints(cache, &other), 1);
    assert_int_equal(ta->iat, T0 - 60);
    assert_int_equal(ta->exp, T0 - 60 + 3600);
    assert_int_equal(token_cache_expiry(cache, &b), T0 - 60 + 3600);
    token_put(ta);
    token_put(tb);
    token_put(to);
    token_cache_free(cache);
}

/* Replaced at 50 minutes, not a second sooner, by a get or by the refresh timer; the refresh
 * margin of the cache does not apply (300 s before an hour would be 55 minutes). */
static void test_apns_replaced_at_50_minutes(void **state)
{
    struct credential c = apns("push", "AAAAAAAAAA", "TEAM000001");
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *t1, *t2;
    char err[256];

    (void)state;
    t1 = get(cache, &c);
    set_now(T0 + APNS_TOKEN_REFRESH_AGE - 1);
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), 0);
    t2 = get(cache, &c);
    assert_ptr_equal(t1, t2);
    token_put(t2);
    set_now(T0 + APNS_TOKEN_REFRESH_AGE);
    assert_int_equal(token_cache_refresh(cache, err, sizeof err), 1);
    t2 = get(cache, &c);
    assert_ptr_not_equal(t1, t2);
    assert_int_equal(t2->generation, 2);
    assert_int_equal(t2->iat, T0 + APNS_TOKEN_REFRESH_AGE - 60);
    assert_int_equal(token_cache_mints(cache, &c), 2);
    token_put(t1);
    token_put(t2);
    token_cache_free(cache);
}

/* A reload builds a new cache; with the process's shared store it keeps the team's token and
 * its age, so a reload never re-mints (each reload re-minting was TooManyProviderTokenUpdates). */
static void test_apns_token_survives_reload(void **state)
{
    struct credential c = apns("push", "AAAAAAAAAA", "TEAM000001");
    struct credential c2 = apns("push", "BBBBBBBBBB", "TEAM000001"); /* the reload's copy */
    token_teams *teams = token_teams_new(fake_clock);
    token_cache *old = token_cache_new(300, fake_clock), *fresh = token_cache_new(300, fake_clock);
    struct token *t1, *t2;
    char err[256];

    (void)state;
    token_cache_share_teams(old, teams);
    token_cache_share_teams(fresh, teams);
    t1 = get(old, &c);
    token_cache_free(old);
    set_now(T0 + 60);
    t2 = get(fresh, &c2);
    assert_ptr_equal(t1, t2);
    assert_int_equal(token_cache_refresh(fresh, err, sizeof err), 0);
    assert_int_equal(token_teams_mints(teams, "TEAM000001"), 1);
    token_put(t1);
    token_put(t2);
    token_cache_free(fresh);
    token_teams_free(teams);
}

/* A refused token (403 ExpiredProviderToken/InvalidProviderToken) is replaced only once it is
 * 20 minutes old, once however many pushes report it; a 429 is counted and changes nothing. */
static void test_apns_refused_obeys_20_minutes(void **state)
{
    struct credential c = apns("push", "AAAAAAAAAA", "TEAM000001");
    token_cache *cache = token_cache_new(300, fake_clock);
    struct token *t1, *t2;

    (void)state;
    t1 = get(cache, &c);
    set_now(T0 + APNS_TOKEN_MIN_AGE - 1);
    assert_int_equal(token_cache_team_refused(cache, &c, t1), 0);
    t2 = get(cache, &c);
    assert_ptr_equal(t1, t2);
    token_put(t2);
    assert_int_equal(token_cache_team_too_many(cache, &c), 1);
    assert_int_equal(token_cache_team_too_many(cache, &c), 2);
    t2 = get(cache, &c);
    assert_ptr_equal(t1, t2);
    token_put(t2);

    set_now(T0 + APNS_TOKEN_MIN_AGE);
    assert_int_equal(token_cache_team_refused(cache, &c, t1), 1);
    assert_int_equal(token_cache_team_refused(cache, &c, t1), 0);
    t2 = get(cache, &c);
    assert_ptr_not_equal(t1, t2);
    assert_int_equal(token_cache_mints(cache, &c), 2);
    /* The new token is young: refusing it right away does not re-mint. */
    assert_int_equal(token_cache_team_refused(cache, &c, t2), 0);
    token_put(t1);
    token_put(t2);
    token_cache_free(cache);
}

struct apns_thread {
    token_cache *cache;
    struct credential cred;
    struct token *tok;
};

static void *apns_get_thread(void *arg)
{
    struct apns_thread *a = arg;
    char err[256];

    a->tok = token_cache_get(a->cache, &a->cred, NULL, 0, err, sizeof err);
    return NULL;
}

/* Workers of two configurations, with different keys of one team, all at once: one signature. */
static void test_apns_concurrent_one_mint(void **state)
{
    enum { N = 16 };
    token_teams *teams = token_teams_new(fake_clock);
    token_cache *caches[2] = {token_cache_new(300, fake_clock), token_cache_new(300, fake_clock)};
    struct apns_thread args[N];
    pthread_t th[N];
    int i;

    (void)state;
    token_cache_share_teams(caches[0], teams);
    token_cache_share_teams(caches[1], teams);
    for (i = 0; i < N; i++) {
        args[i].cache = caches[i % 2];
        args[i].cred = apns("push", i % 2 ? "AAAAAAAAAA" : "BBBBBBBBBB", "TEAM000001");
        assert_int_equal(pthread_create(&th[i], NULL, apns_get_thread, &args[i]), 0);
    }
    for (i = 0; i < N; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_non_null(args[i].tok);
        assert_ptr_equal(args[i].tok, args[0].tok);
    }
    assert_int_equal(token_teams_mints(teams, "TEAM000001"), 1);
    for (i = 0; i < N; i++)
        token_put(args[i].tok);
    token_cache_free(caches[0]);
    token_cache_free(caches[1]);
    token_teams_free(teams);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_reuse, reset_clock),
        cmocka_unit_test_setup(test_refresh_before_expiry, reset_clock),
        cmocka_unit_test_setup(test_never_expired, reset_clock),
        cmocka_unit_test_setup(test_guard_with_zero_margin, reset_clock),
        cmocka_unit_test_setup(test_margin_capped_to_third_of_lifetime, reset_clock),
        cmocka_unit_test_setup(test_regression_large_skew_not_reminted_per_request, reset_clock),
        cmocka_unit_test_setup(test_refresh_remints_inside_margin, reset_clock),
        cmocka_unit_test_setup(test_invalidate_with_cooldown, reset_clock),
        cmocka_unit_test_setup(test_scopes_are_separate_entries, reset_clock),
        cmocka_unit_test_setup(test_mint_failure, reset_clock),
        cmocka_unit_test_setup(test_concurrent_single_mint, reset_clock),
        cmocka_unit_test_setup(test_concurrent_refresh_and_clock, reset_clock),
        cmocka_unit_test(test_free_null),
        cmocka_unit_test_setup(test_apns_one_token_per_team, reset_clock),
        cmocka_unit_test_setup(test_apns_replaced_at_50_minutes, reset_clock),
        cmocka_unit_test_setup(test_apns_token_survives_reload, reset_clock),
        cmocka_unit_test_setup(test_apns_refused_obeys_20_minutes, reset_clock),
        cmocka_unit_test_setup(test_apns_concurrent_one_mint, reset_clock),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
