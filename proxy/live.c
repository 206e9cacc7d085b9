/* live: per-credential and per-client figures that outlive configurations, kept by name. */
#include "proxy/live.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* What both kinds of entry share: a place in the table's list for their kind, and a name. The
 * list and the reference count are only touched under the table's lock. */
struct live_entry {
    struct live_entry *next;
    struct live *table;
    size_t refs;
    char *name;
};

struct live_cred {
    struct live_entry e;     /* first: the table lists entries by this */
    long limit, remaining;   /* atomic */
    long long updated_ms, blocked_until_ms; /* atomic */
    unsigned long mints;     /* atomic */
    unsigned long mints_sent;  /* atomic: the part of mints already added to the shared count */
    long mints_shared;       /* atomic: the shared count as last read (-1: never) */
    unsigned long mint_failures, remints_401; /* atomic */
};

struct live_client {
    struct live_entry e;
    pthread_mutex_t lock;    /* the bucket: taken by every request of the client */
    double tokens;
    double last;             /* when tokens was last brought up to date; < 0: never used */
};

struct live {
    pthread_mutex_t lock;
    struct live_entry *creds, *clients;
    token_teams *teams; /* owned */
};

struct live *live_new(void)
{
    struct live *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->teams = token_teams_new(NULL);
    if (l->teams == NULL) {
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

token_teams *live_teams(struct live *l)
{
    return l->teams;
}

void live_free(struct live *l)
{
    if (l == NULL)
        return;
    /* Every runtime releases its entries when it is freed: one left here means a runtime
     * outlived the process's table. */
    assert(l->creds == NULL && l->clients == NULL);
    token_teams_free(l->teams);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* Finds the entry named `name` in *list, or creates one of `size` bytes (zeroed, then set up by
 * init), and takes a reference. NULL when out of memory. */
static struct live_entry *entry_get(struct live *l, struct live_entry **list, const char *name,
                                    size_t size, void (*init)(struct live_entry *))
{
    struct live_entry *e;
    pthread_mutex_lock(&l->lock);
    for (e = *list; e != NULL; e = e->next)
        if (strcmp(e->name, name) == 0)
            goto out;
    e = calloc(1, size);
    if (e == NULL)
        goto out;
    e->name = strdup(name);
    if (e->name == NULL) {
        free(e);
        e = NULL;
        goto out;
    }
    e->table = l;
    init(e);
    e->next = *list;
    *list = e;
out:
    if (e != NULL)
        e->refs++;
    pthread_mutex_unlock(&l->lock);
    return e;
}

/* Drops a reference; at the last one the entry leaves *list and 1 is returned: the caller
 * frees it (no other thread can reach it any more). */
static int entry_put(struct live_entry **list, struct live_entry *e)
{
    struct live *l = e->table;
    struct live_entry **p;
    pthread_mutex_lock(&l->lock);
    if (--e->refs > 0) {
        pthread_mutex_unlock(&l->lock);
        return 0;
    }
    for (p = list; *p != e; p = &(*p)->next)
        ;
    *p = e->next;
    pthread_mutex_unlock(&l->lock);
    free(e->name);
    return 1;
}

static void cred_init(struct live_entry *e)
{
    struct live_cred *c = (struct live_cred *)e;
    c->limit = c->remaining = -1;
    c->mints_shared = -1;
}

struct live_cred *live_cred_get(struct live *l, const char *name)
{
    return (struct live_cred *)entry_get(l, &l->creds, name, sizeof(struct live_cred), cred_init);
}

void live_cred_put(struct live_cred *c)
{
    if (c != NULL && entry_put(&c->e.table->creds, &c->e))
        free(c);
}

static void client_init(struct live_entry *e)
{
    struct live_client *c = (struct live_client *)e;
    c->last = -1;
    pthread_mutex_init(&c->lock, NULL);
}

struct live_client *live_client_get(struct live *l, const char *name)
{
    return (struct live_client *)entry_get(l, &l->clients, name, sizeof(struct live_client),
                                           client_init);
}

void live_client_put(struct live_client *c)
{
    if (c != NULL && entry_put(&c->e.table->clients, &c->e)) {
        pthread_mutex_destroy(&c->lock);
        free(c);
    }
}

int live_rate_take(struct live_client *e, double rate, double burst, double now, double *wait)
{
    double missing = 0;
    pthread_mutex_lock(&e->lock);
    if (e->last < 0)
        e->tokens = burst;
    else if (now > e->last)
        e->tokens += (now - e->last) * rate;
    /* Capped on every take, not only on refills: a burst lowered by a reload applies at once. */
    if (e->tokens > burst)
        e->tokens = burst;
    if (now > e->last)
        e->last = now;
    if (e->tokens >= 1)
        e->tokens -= 1;
    else
        missing = 1 - e->tokens;
    pthread_mutex_unlock(&e->lock);
    *wait = missing > 0 ? missing / rate : 0;
    return missing <= 0;
}

static long long to_ms(double t)
{
    return (long long)(t * 1000);
}

void live_quota_note(struct live_cred *e, long limit, long remaining, double now)
{
    __atomic_store_n(&e->updated_ms, to_ms(now), __ATOMIC_RELAXED);
    __atomic_store_n(&e->limit, limit, __ATOMIC_RELAXED);
    __atomic_store_n(&e->remaining, remaining, __ATOMIC_RELAXED);
}

void live_block_until(struct live_cred *e, double until)
{
    __atomic_store_n(&e->blocked_until_ms, to_ms(until), __ATOMIC_RELAXED);
}

void live_count_mint(struct live_cred *e)
{
    __atomic_add_fetch(&e->mints, 1, __ATOMIC_RELAXED);
}

void live_count_mint_failure(struct live_cred *e)
{
    __atomic_add_fetch(&e->mint_failures, 1, __ATOMIC_RELAXED);
}

void live_count_remint_401(struct live_cred *e)
{
    __atomic_add_fetch(&e->remints_401, 1, __ATOMIC_RELAXED);
}

void live_cred_read(const struct live_cred *e, struct live_quota *q)
{
    q->limit = __atomic_load_n(&e->limit, __ATOMIC_RELAXED);
    q->remaining = __atomic_load_n(&e->remaining, __ATOMIC_RELAXED);
    q->updated = (double)__atomic_load_n(&e->updated_ms, __ATOMIC_RELAXED) / 1000.0;
    q->blocked_until = (double)__atomic_load_n(&e->blocked_until_ms, __ATOMIC_RELAXED) / 1000.0;
    q->mints = __atomic_load_n(&e->mints, __ATOMIC_RELAXED);
    q->mint_failures = __atomic_load_n(&e->mint_failures, __ATOMIC_RELAXED);
    q->remints_401 = __atomic_load_n(&e->remints_401, __ATOMIC_RELAXED);
    q->mints_shared = __atomic_load_n(&e->mints_shared, __ATOMIC_RELAXED);
}

struct live_cred *live_cred_hold(struct live_cred *e)
{
    pthread_mutex_lock(&e->e.table->lock);
    e->e.refs++;
    pthread_mutex_unlock(&e->e.table->lock);
    return e;
}

void live_shared_merge(struct live_cred *e, const struct live_quota *remote)
{
    long long updated = to_ms(remote->updated), blocked = to_ms(remote->blocked_until);
    if (remote->remaining >= 0 && updated > __atomic_load_n(&e->updated_ms, __ATOMIC_RELAXED)) {
        __atomic_store_n(&e->limit, remote->limit, __ATOMIC_RELAXED);
        __atomic_store_n(&e->remaining, remote->remaining, __ATOMIC_RELAXED);
        __atomic_store_n(&e->updated_ms, updated, __ATOMIC_RELAXED);
    }
    if (blocked > __atomic_load_n(&e->blocked_until_ms, __ATOMIC_RELAXED))
        __atomic_store_n(&e->blocked_until_ms, blocked, __ATOMIC_RELAXED);
    __atomic_store_n(&e->mints_shared, (long)remote->mints, __ATOMIC_RELAXED);
}

unsigned long live_mints_unshared(struct live_cred *e)
{
    unsigned long now = __atomic_load_n(&e->mints, __ATOMIC_RELAXED);
    return now - __atomic_exchange_n(&e->mints_sent, now, __ATOMIC_RELAXED);
}

void live_mints_unshare(struct live_cred *e, unsigned long n)
{
    __atomic_sub_fetch(&e->mints_sent, n, __ATOMIC_RELAXED);
}
