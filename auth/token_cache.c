/* token_cache: minted tokens shared by all threads, reused until shortly before they expire. */
#include "auth/token_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include "auth/errbuf.h"

#include "auth/errbuf.h"

/* A token is never handed out this close to its exp: the request still has to cross the
 * network and Apple's clock may be a little ahead of ours. */
#define TOKEN_EXPIRY_GUARD 5
#define BEARER_PREFIX      "Authorization: Bearer "

/* One allocation per mint: the public token, its reference count and the header line. */
struct token_block {
    struct token pub; /* first, so token_put can find the block from the token */
    atomic_ulong refs;
    time_t minted;    /* when it was signed: iat is earlier by the clock skew */
    char text[]; /* BEARER_PREFIX jwt "\r\n" NUL */
};

/* One credential and scope list. Entries live until the cache is freed, so a pointer to one stays
 * valid while the cache lock is dropped for signing. */
struct cache_entry {
    struct cache_entry *next;
    const struct credential *cred;
    char **scope; /* copies of the effective scope, so minting never reads the caller's arrays */
    size_t nscope;
    struct token_block *cur; /* NULL before the first mint and after a 401 drop */
    int minting;             /* a thread is signing for this entry without the lock */
    int dropped_for_401;
    time_t last_401_drop;
    unsigned long generation;
    unsigned long mints;
};

/*
 * One mutex guards the entry list and every entry's fields; it is held only for pointer and
 * counter work, never during a signature. A thread that needs a token while none is usable
 * marks the entry "minting", signs unlocked, and broadcasts `minted` when done; others either
 * take the still-valid current token or wait on the condition variable. The entry list is a
 * plain list: a proxy has a handful of credentials and scopes, and lookups compare pointers
 * first.
 */
/* One team's token (profile_team_token). Entries live until the store is freed. */
struct team_entry {
    struct team_entry *next;
    char *team_id;
    struct token_block *cur; /* NULL before the first mint and after a refused token is dropped */
    int minting;
    unsigned long generation;
    unsigned long mints;
    unsigned long too_many; /* 429 TooManyProviderTokenUpdates answers */
};

/* Same locking as the cache: one mutex for pointer and counter work, never held while signing. */
struct token_teams {
    pthread_mutex_t lock;
    pthread_cond_t minted;
    time_t (*now)(void);
    struct team_entry *entries;
};

struct token_cache {
    pthread_mutex_t lock;
    pthread_cond_t minted;
    long refresh_margin;
    time_t (*now)(void);
    struct cache_entry *entries;
    void (*on_mint)(void *arg, const struct credential *cred); /* NULL: none */
    void *on_mint_arg;
    token_teams *teams;     /* the store team tokens come from: own_teams or a shared one */
    token_teams *own_teams; /* owned */
    void (*on_fail)(void *arg, const struct credential *cred); /* NULL: none */
    void *on_fail_arg;
};

static const char *const cache_no_scope[1] = {NULL};

static time_t cache_wall_clock(void)
{
    return time(NULL);
}

token_teams *token_teams_new(time_t (*clock_fn)(void))
{
    token_teams *teams = calloc(1, sizeof *teams);

    if (teams == NULL)
        return NULL;
    if (pthread_mutex_init(&teams->lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&teams->minted, NULL) != 0) {
        pthread_mutex_destroy(&teams->lock);
        goto fail;
    }
    teams->now = clock_fn != NULL ? clock_fn : cache_wall_clock;
    return teams;
fail:
    free(teams);
    return NULL;
}

token_cache *token_cache_new(long refresh_margin, time_t (*clock_fn)(void))
{
    token_cache *cache = calloc(1, sizeof *cache);

    if (cache == NULL)
        return NULL;
    cache->now = clock_fn != NULL ? clock_fn : cache_wall_clock;
    cache->own_teams = token_teams_new(cache->now);
    if (cache->own_teams == NULL)
        goto fail;
    if (pthread_mutex_init(&cache->lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&cache->minted, NULL) != 0) {
        pthread_mutex_destroy(&cache->lock);
        goto fail;
    }
    cache->refresh_margin = refresh_margin > 0 ? refresh_margin : 0;
    cache->teams = cache->own_teams;
    return cache;
fail:
    token_teams_free(cache->own_teams);
    free(cache);
    return NULL;
}

void token_cache_share_teams(token_cache *cache, token_teams *teams)
{
    cache->teams = teams != NULL ? teams : cache->own_teams;
}

static void block_put(struct token_block *b)
{
    if (b == NULL)
        return;
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        /* A bearer token is a credential for its lifetime: do not leave it in freed memory. */
        OPENSSL_cleanse(b->text, b->pub.line_len);
        free(b);
    }
}

void token_put(struct token *tok)
{
    block_put((struct token_block *)tok);
}

static void entry_free(struct cache_entry *e)
{
    size_t i;

    block_put(e->cur);
    for (i = 0; i < e->nscope; i++)
        free(e->scope[i]);
    free(e->scope);
    free(e);
}

void token_teams_free(token_teams *teams)
{
    struct team_entry *e, *next;

    if (teams == NULL)
        return;
    for (e = teams->entries; e != NULL; e = next) {
        next = e->next;
        block_put(e->cur);
        free(e->team_id);
        free(e);
    }
    pthread_cond_destroy(&teams->minted);
    pthread_mutex_destroy(&teams->lock);
    free(teams);
}

void token_cache_free(token_cache *cache)
{
    struct cache_entry *e, *next;

    if (cache == NULL)
        return;
    for (e = cache->entries; e != NULL; e = next) {
        next = e->next;
        entry_free(e);
    }
    token_teams_free(cache->own_teams);
    pthread_cond_destroy(&cache->minted);
    pthread_mutex_destroy(&cache->lock);
    free(cache);
}

/* The scope list is part of the key: a token scoped to "GET /v1/apps" must never be served for a
 * request that needs another scope. Compared entry by entry, which is the "\n"-joined list
 * compared without building it on every request. */
static int entry_matches(const struct cache_entry *e, const struct credential *cred,
                         const char *const *scope, size_t nscope)
{
    size_t i;

    if (e->cred != cred || e->nscope != nscope)
        return 0;
    for (i = 0; i < nscope; i++)
        if (strcmp(e->scope[i], scope[i]) != 0)
            return 0;
    return 1;
}

/* Called with the lock held. */
static struct cache_entry *cache_find(token_cache *cache, const struct credential *cred,
                                      const char *const *scope, size_t nscope)
{
    struct cache_entry *e;

    for (e = cache->entries; e != NULL; e = e->next)
        if (entry_matches(e, cred, scope, nscope))
            return e;
    return NULL;
}

/* Called with the lock held; scope entries are known to be non-NULL. */
static struct cache_entry *cache_add(token_cache *cache, const struct credential *cred,
                                     const char *const *scope, size_t nscope)
{
    struct cache_entry *e = calloc(1, sizeof *e);
    size_t i;

    if (e == NULL)
        return NULL;
    e->cred = cred;
    if (nscope > 0) {
        e->scope = calloc(nscope, sizeof *e->scope);
        if (e->scope == NULL)
            goto fail;
        for (; e->nscope < nscope; e->nscope++) {
            e->scope[e->nscope] = strdup(scope[e->nscope]);
            if (e->scope[e->nscope] == NULL)
                goto fail;
        }
    }
    e->next = cache->entries;
    cache->entries = e;
    return e;
fail:
    for (i = 0; i < e->nscope; i++)
        free(e->scope[i]);
    free(e->scope);
    free(e);
    return NULL;
}

/* A block holding "Authorization: Bearer <bearer>\r\n", with the entry's own reference. */
static struct token_block *block_new(const char *bearer, size_t len, time_t iat, time_t exp,
                                     time_t minted)
{
    size_t line_len, plen = sizeof BEARER_PREFIX - 1;
    struct token_block *b;

    line_len = plen + len + 2;
    b = malloc(sizeof *b + line_len + 1);
    if (b == NULL)
        return NULL;
    memcpy(b->text, BEARER_PREFIX, plen);
    memcpy(b->text + plen, bearer, len);
    memcpy(b->text + plen + len, "\r\n", 3);
    b->pub.jwt = b->text + plen;
    b->pub.jwt_len = len;
    b->pub.line = b->text;
    b->pub.line_len = line_len;
    b->pub.iat = iat;
    b->pub.exp = exp;
    b->pub.generation = 0;
    b->minted = minted;
    atomic_init(&b->refs, 1);
    return b;
}

/* Signs a new token. Called WITHOUT any lock: reads only immutable fields (an entry's cred and
 * scope, which no other thread changes while its `minting` is set). */
static struct token_block *token_sign(const struct credential *cred, const char *const *scope,
                                      size_t nscope, time_t now, char *err, size_t errlen)
{
    struct token_block *b = NULL;
    time_t exp = 0;
    char *jwt;

    jwt = token_mint(cred, scope, nscope, now, &exp, err, errlen);
    if (jwt == NULL)
        goto out;
    b = block_new(jwt, strlen(jwt), now - cred->skew, exp, now);
    if (b == NULL)
        errbuf_set(err, errlen, "out of memory");
out:
    if (jwt != NULL) {
        OPENSSL_cleanse(jwt, strlen(jwt));
        free(jwt);
    }
    return b;
}

static struct token_block *cache_mint(const struct cache_entry *e, time_t now, char *err,
                                      size_t errlen)
{
    return token_sign(e->cred, e->nscope > 0 ? (const char *const *)e->scope : cache_no_scope,
                      e->nscope, now, err, errlen);
}

/* Called with the store's lock held. NULL when out of memory. */
static struct team_entry *teams_find(token_teams *teams, const char *team_id, int add)
{
    struct team_entry *e;

    for (e = teams->entries; e != NULL; e = e->next)
        if (strcmp(e->team_id, team_id) == 0)
            return e;
    if (!add)
        return NULL;
    e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->team_id = strdup(team_id);
    if (e->team_id == NULL) {
        free(e);
        return NULL;
    }
    e->next = teams->entries;
    teams->entries = e;
    return e;
}

/*
 * A team's token (APNs): the one the team has while it is younger than APNS_TOKEN_REFRESH_AGE,
 * else a new one signed with this credential's key. The age is measured from the signature, so
 * a replacement is never sooner than APNS_TOKEN_REFRESH_AGE (> APNS_TOKEN_MIN_AGE) after the
 * last; only token_cache_team_refused can make it sooner, and it obeys APNS_TOKEN_MIN_AGE. Sets
 * *signed_one when this call signed. Returns a referenced token, or NULL with err.
 */
static struct token_block *team_get(token_cache *cache, const struct credential *cred,
                                    int *signed_one, char *err, size_t errlen)
{
    token_teams *teams = cache->teams;
    struct team_entry *e;
    struct token_block *b = NULL, *fresh, *old;
    time_t now;

    pthread_mutex_lock(&teams->lock);
    e = teams_find(teams, cred->team_id, 1);
    if (e == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    for (;;) {
        now = teams->now();
        b = e->cur;
        if (b != NULL && (now - b->minted < APNS_TOKEN_REFRESH_AGE ||
                          (e->minting && now < b->pub.exp - TOKEN_EXPIRY_GUARD)))
            goto out;
        if (!e->minting)
            break;
        pthread_cond_wait(&teams->minted, &teams->lock);
    }
    e->minting = 1;
    pthread_mutex_unlock(&teams->lock);
    fresh = token_sign(cred, cache_no_scope, 0, now, err, errlen);
    pthread_mutex_lock(&teams->lock);
    e->minting = 0;
    if (fresh != NULL) {
        old = e->cur;
        fresh->pub.generation = ++e->generation;
        e->mints++;
        *signed_one = 1;
        if (cache->on_mint != NULL)
            cache->on_mint(cache->on_mint_arg, cred);
        e->cur = fresh;
        block_put(old);
    }
    pthread_cond_broadcast(&teams->minted);
    b = e->cur;
    now = teams->now();
    if (b == NULL || now >= b->pub.exp - TOKEN_EXPIRY_GUARD)
        b = NULL;
out:
    if (b != NULL)
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&teams->lock);
    return b;
}

/* Makes sure the cache lists cred, so that token_cache_refresh keeps its team's token fresh. */
static int cache_note_team_cred(token_cache *cache, const struct credential *cred)
{
    struct cache_entry *e;

    pthread_mutex_lock(&cache->lock);
    e = cache_find(cache, cred, cache_no_scope, 0);
    if (e == NULL)
        e = cache_add(cache, cred, cache_no_scope, 0);
    pthread_mutex_unlock(&cache->lock);
    return e != NULL ? 0 : -1;
}

/* Refreshing starts refresh_margin before exp, but never later than two thirds into the time
 * the token is usable, from its signing to its exp (short lifetimes would otherwise have no
 * window at all; iat is backdated by the skew and does not count), and never inside the guard. */
static long cache_margin(const token_cache *cache, const struct token *t)
{
    const struct token_block *b = (const struct token_block *)t;
    long m = cache->refresh_margin;
    long third = (long)(t->exp - b->minted) / 3;

    if (third < m)
        m = third;
    if (m < TOKEN_EXPIRY_GUARD)
        m = TOKEN_EXPIRY_GUARD;
    return m;
}

/* Called with the lock held: makes b the entry's current token. */
static void entry_install(token_cache *cache, struct cache_entry *e, struct token_block *b)
{
    struct token_block *old = e->cur;

    b->pub.generation = ++e->generation;
    e->mints++;
    if (cache->on_mint != NULL)
        cache->on_mint(cache->on_mint_arg, e->cred);
    e->cur = b;
    block_put(old);
}

struct token *token_cache_get(token_cache *cache, const struct credential *cred,
                              const char *const *scope, size_t nscope, char *err, size_t errlen)
{
    struct cache_entry *e;
    struct token_block *b = NULL, *fresh;
    time_t now;
    size_t i;

    if (profile_team_token(cred->profile)) {
        int signed_one = 0;

        if (cache_note_team_cred(cache, cred) != 0) {
            errbuf_set(err, errlen, "out of memory");
            return NULL;
        }
        b = team_get(cache, cred, &signed_one, err, errlen);
        return b != NULL ? &b->pub : NULL;
    }
    if (scope == NULL) {
        scope = (const char *const *)cred->scope;
        nscope = cred->nscope;
    }
    for (i = 0; i < nscope; i++) {
        if (scope[i] == NULL) {
            errbuf_set(err, errlen, "credentials.%s: scope entry %zu is missing",
                      cred->name != NULL ? cred->name : "?", i);
            return NULL;
        }
    }
    pthread_mutex_lock(&cache->lock);
    e = cache_find(cache, cred, scope, nscope);
    if (e == NULL)
        e = cache_add(cache, cred, scope, nscope);
    if (e == NULL) {
        errbuf_set(err, errlen, "out of memory");
        goto out;
    }
    if (profile_exchanged(cred->profile)) {
        /* Access tokens come from the exchanger (token_cache_install); a request never signs
         * or exchanges on its own. A token inside its margin still serves: its successor is
         * being fetched. */
        now = cache->now();
        b = e->cur;
        if (b == NULL || now >= b->pub.exp - TOKEN_EXPIRY_GUARD) {
            errbuf_set(err, errlen, "credentials.%s: no access token yet",
                      cred->name != NULL ? cred->name : "?");
            b = NULL;
        }
        goto out;
    }
    for (;;) {
        now = cache->now();
        b = e->cur;
        /* Outside the margin: the common case. Inside the margin but still good while someone
         * else is already signing its successor: no reason to wait for them. */
        if (b != NULL && (now < b->pub.exp - cache_margin(cache, &b->pub) ||
                          (e->minting && now < b->pub.exp - TOKEN_EXPIRY_GUARD)))
            goto out;
        if (!e->minting)
            break;
        pthread_cond_wait(&cache->minted, &cache->lock);
    }
    e->minting = 1;
    pthread_mutex_unlock(&cache->lock);
    fresh = cache_mint(e, now, err, errlen);
    pthread_mutex_lock(&cache->lock);
    e->minting = 0;
    if (fresh != NULL)
        entry_install(cache, e, fresh);
    else if (cache->on_fail != NULL)
        cache->on_fail(cache->on_fail_arg, e->cred);
    pthread_cond_broadcast(&cache->minted);
    /* When signing failed, a current token that is still good is better than an error. */
    b = e->cur;
    now = cache->now();
    if (b == NULL || now >= b->pub.exp - TOKEN_EXPIRY_GUARD) {
        if (fresh != NULL)
            errbuf_set(err, errlen,
                      "credentials.%s: a new token expires within %d seconds; the token "
                      "lifetime is too short for the clock skew",
                      cred->name != NULL ? cred->name : "?", TOKEN_EXPIRY_GUARD);
        b = NULL;
    }
out:
    if (b != NULL)
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&cache->lock);
    return b != NULL ? &b->pub : NULL;
}

int token_cache_refresh(token_cache *cache, char *err, size_t errlen)
{
    struct cache_entry *e;
    struct token_block *fresh;
    int count = 0, failed = 0;
    time_t now;

    pthread_mutex_lock(&cache->lock);
    /* New entries are only ever pushed at the head, so following next pointers stays valid
     * across the unlocked signatures below. */
    for (e = cache->entries; e != NULL; e = e->next) {
        now = cache->now();
        if (profile_team_token(e->cred->profile)) {
            int signed_one = 0;

            /* The team store decides; its lock is never taken inside the cache's. */
            pthread_mutex_unlock(&cache->lock);
            fresh = team_get(cache, e->cred, &signed_one, err, errlen);
            pthread_mutex_lock(&cache->lock);
            if (fresh == NULL)
                failed = 1;
            count += signed_one;
            block_put(fresh);
            continue;
        }
        if (e->minting || profile_exchanged(e->cred->profile))
            continue;
        if (e->cur != NULL && now < e->cur->pub.exp - cache_margin(cache, &e->cur->pub))
            continue;
        e->minting = 1;
        pthread_mutex_unlock(&cache->lock);
        fresh = cache_mint(e, now, err, errlen);
        pthread_mutex_lock(&cache->lock);
        e->minting = 0;
        if (fresh != NULL) {
            entry_install(cache, e, fresh);
            count++;
        } else {
            if (cache->on_fail != NULL)
                cache->on_fail(cache->on_fail_arg, e->cred);
            failed = 1;
        }
        pthread_cond_broadcast(&cache->minted);
    }
    pthread_mutex_unlock(&cache->lock);
    return failed ? -1 : count;
}

int token_cache_invalidate(token_cache *cache, const struct credential *cred,
                           const char *const *scope, size_t nscope, const struct token *tok,
                           long cooldown)
{
    struct cache_entry *e;
    struct token_block *old = NULL;
    time_t now;
    int dropped = 0;

    if (scope == NULL) {
        scope = (const char *const *)cred->scope;
        nscope = cred->nscope;
    }
    pthread_mutex_lock(&cache->lock);
    e = cache_find(cache, cred, scope, nscope);
    /* Only the token Apple refused: many requests may report the same 401, and the first one
     * has already caused a new token. */
    if (e == NULL || e->cur == NULL || &e->cur->pub != tok)
        goto out;
    now = cache->now();
    /* A revoked key or a wrong issuer makes every token fail: re-signing on each 401 would only
     * turn an outage into a signing storm. */
    if (e->dropped_for_401 && now - e->last_401_drop < cooldown)
        goto out;
    old = e->cur;
    e->cur = NULL;
    e->dropped_for_401 = 1;
    e->last_401_drop = now;
    dropped = 1;
out:
    pthread_mutex_unlock(&cache->lock);
    block_put(old);
    return dropped;
}

int token_cache_team_refused(token_cache *cache, const struct credential *cred,
                             const struct token *tok)
{
    token_teams *teams = cache->teams;
    struct team_entry *e;
    struct token_block *old = NULL;

    if (!profile_team_token(cred->profile))
        return 0;
    pthread_mutex_lock(&teams->lock);
    e = teams_find(teams, cred->team_id, 0);
    /* Many pushes report the same refusal; the first one decides. */
    if (e != NULL && e->cur != NULL && &e->cur->pub == tok &&
        teams->now() - e->cur->minted >= APNS_TOKEN_MIN_AGE) {
        old = e->cur;
        e->cur = NULL;
    }
    pthread_mutex_unlock(&teams->lock);
    block_put(old);
    return old != NULL;
}

unsigned long token_cache_team_too_many(token_cache *cache, const struct credential *cred)
{
    token_teams *teams = cache->teams;
    struct team_entry *e;
    unsigned long n = 0;

    if (!profile_team_token(cred->profile))
        return 0;
    pthread_mutex_lock(&teams->lock);
    e = teams_find(teams, cred->team_id, 1);
    if (e != NULL)
        n = ++e->too_many;
    pthread_mutex_unlock(&teams->lock);
    return n;
}

/* Reads one counter of a team under the store's lock. */
static unsigned long teams_count(token_teams *teams, const char *team_id, int too_many)
{
    struct team_entry *e;
    unsigned long n = 0;

    pthread_mutex_lock(&teams->lock);
    e = teams_find(teams, team_id, 0);
    if (e != NULL)
        n = too_many ? e->too_many : e->mints;
    pthread_mutex_unlock(&teams->lock);
    return n;
}

unsigned long token_teams_mints(token_teams *teams, const char *team_id)
{
    return teams_count(teams, team_id, 0);
}

unsigned long token_teams_too_many(token_teams *teams, const char *team_id)
{
    return teams_count(teams, team_id, 1);
}

void token_cache_on_mint(token_cache *cache, void (*fn)(void *arg, const struct credential *cred),
                         void *arg)
{
    pthread_mutex_lock(&cache->lock);
    cache->on_mint = fn;
    cache->on_mint_arg = arg;
    pthread_mutex_unlock(&cache->lock);
}

void token_cache_on_mint_failure(token_cache *cache,
                                 void (*fn)(void *arg, const struct credential *cred), void *arg)
{
    pthread_mutex_lock(&cache->lock);
    cache->on_fail = fn;
    cache->on_fail_arg = arg;
    pthread_mutex_unlock(&cache->lock);
}

unsigned long token_cache_mints(token_cache *cache, const struct credential *cred)
{
    struct cache_entry *e;
    unsigned long n = 0;

    /* A team token is signed for the team, whichever of its credentials asked. */
    if (profile_team_token(cred->profile))
        return token_teams_mints(cache->teams, cred->team_id);
    pthread_mutex_lock(&cache->lock);
    for (e = cache->entries; e != NULL; e = e->next)
        if (e->cred == cred)
            n += e->mints;
    pthread_mutex_unlock(&cache->lock);
    return n;
}

time_t token_cache_expiry(token_cache *cache, const struct credential *cred)
{
    struct cache_entry *e;
    time_t nearest = 0;

    if (profile_team_token(cred->profile)) {
        struct team_entry *t;

        pthread_mutex_lock(&cache->teams->lock);
        t = teams_find(cache->teams, cred->team_id, 0);
        if (t != NULL && t->cur != NULL)
            nearest = t->cur->pub.exp;
        pthread_mutex_unlock(&cache->teams->lock);
        return nearest;
    }

    pthread_mutex_lock(&cache->lock);
    for (e = cache->entries; e != NULL; e = e->next)
        if (e->cred == cred && e->cur != NULL && (nearest == 0 || e->cur->pub.exp < nearest))
            nearest = e->cur->pub.exp;
    pthread_mutex_unlock(&cache->lock);
    return nearest;
}

/* Called with the lock held: the entry of an exchanged credential (its own scope is the key). */
static struct cache_entry *cache_exchanged_entry(token_cache *cache, const struct credential *cred)
{
    const char *const *scope = (const char *const *)cred->scope;
    struct cache_entry *e = cache_find(cache, cred, scope, cred->nscope);

    return e != NULL ? e : cache_add(cache, cred, scope, cred->nscope);
}

int token_cache_install(token_cache *cache, const struct credential *cred, const char *bearer,
                        size_t len, long expires_in)
{
    struct cache_entry *e;
    struct token_block *b;
    time_t now = cache->now();

    b = block_new(bearer, len, now, now + expires_in, now);
    if (b == NULL)
        return -1;
    pthread_mutex_lock(&cache->lock);
    e = cache_exchanged_entry(cache, cred);
    if (e != NULL) {
        entry_install(cache, e, b);
        b = NULL;
    }
    pthread_mutex_unlock(&cache->lock);
    if (b != NULL) {
        block_put(b);
        return -1;
    }
    return 0;
}

int token_cache_due(token_cache *cache, const struct credential *cred, time_t *exp_out)
{
    struct cache_entry *e;
    int due = 1;
    time_t now = cache->now();

    pthread_mutex_lock(&cache->lock);
    e = cache_exchanged_entry(cache, cred);
    if (exp_out != NULL)
        *exp_out = e != NULL && e->cur != NULL ? e->cur->pub.exp : 0;
    if (e != NULL && e->cur != NULL && now < e->cur->pub.exp - cache_margin(cache, &e->cur->pub))
        due = 0;
    pthread_mutex_unlock(&cache->lock);
    return due;
}

int token_cache_adopt(token_cache *cache, const struct credential *cred, token_cache *from,
                      const struct credential *from_cred)
{
    struct cache_entry *e;
    struct token_block *b = NULL;
    time_t now = from->now();

    pthread_mutex_lock(&from->lock);
    e = cache_find(from, from_cred, (const char *const *)from_cred->scope, from_cred->nscope);
    if (e != NULL && e->cur != NULL && now < e->cur->pub.exp - TOKEN_EXPIRY_GUARD) {
        b = e->cur;
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&from->lock);
    if (b == NULL)
        return 0;
    pthread_mutex_lock(&cache->lock);
    e = cache_exchanged_entry(cache, cred);
    if (e != NULL && e->cur == NULL) {
        /* Taken over, not obtained: no mint is counted. */
        b->pub.generation = ++e->generation;
        e->cur = b;
        b = NULL;
    }
    pthread_mutex_unlock(&cache->lock);
    block_put(b);
    return b == NULL;
}
