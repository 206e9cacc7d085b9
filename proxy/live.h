/* live: the figures that change with every request and outlive configurations: per credential,
 * Apple's quota (X-Rate-Limit), its Retry-After and the tokens signed; per client, its rate
 * bucket. Kept by name, so a reload keeps what it knew about every name that survives.
 *
 * The server creates one table for the process. A runtime resolves each of its credentials and
 * clients to an entry when it is built (live_cred_get, live_client_get) and releases them when
 * it is freed; an entry lives while a runtime holds it, so a name that a reload drops is
 * forgotten once the last exchange on the old configuration ends, and a name that survives
 * keeps its entry because the old runtime still holds it while the new one is built.
 *
 * Everything a request does with the table goes through the five operations below, on entries
 * named by credential and client name and with the limits passed in from the current
 * configuration; none of them touches a runtime. Locks: the table's mutex guards the name lists
 * and the reference counts (runtime build and free only, never a request); a client's rate
 * decision takes that client's own mutex for a few arithmetic operations; every other figure is
 * a relaxed atomic. */
#ifndef AAP_PROXY_LIVE_H
#define AAP_PROXY_LIVE_H

#include <stddef.h>
#include "auth/token_cache.h"

struct live;        /* the table */
struct live_cred;   /* one credential's figures */
struct live_client; /* one client's rate bucket */

/* NULL when out of memory. live_free: after every entry has been released (live_free(NULL) is
 * a no-op). */
struct live *live_new(void);
void live_free(struct live *l);

/* The process's team tokens (APNs): shared by every runtime's token cache, so that APNs'
 * 20-minute rule holds across workers, credentials of one team and reloads. */
token_teams *live_teams(struct live *l);

/* The entry for a name, created (empty: nothing known from Apple, a full bucket) when no
 * runtime holds one. Each call takes a reference, released with the matching _put (a NULL
 * entry is ignored). NULL when out of memory. */
struct live_cred *live_cred_get(struct live *l, const char *name);
void live_cred_put(struct live_cred *e);
struct live_client *live_client_get(struct live *l, const char *name);
void live_client_put(struct live_client *e);

/* Take rate: one request from the client's token bucket, which refills at `rate` per second up
 * to `burst` (the current configuration's values: a changed limit applies from the next request
 * without refilling the bucket; a new entry starts full). Returns 1 when allowed, else 0 with
 * *wait set to the seconds until a request would be. */
int live_rate_take(struct live_client *e, double rate, double burst, double now, double *wait);

/* Note quota: Apple's "X-Rate-Limit: user-hour-lim:N;user-hour-rem:M;", received at now. */
void live_quota_note(struct live_cred *e, long limit, long remaining, double now);

/* Block until: Apple answered 429 with Retry-After; no request with the credential goes out
 * before `until` (Unix time). */
void live_block_until(struct live_cred *e, double until);

/* One more token signed with the credential (called by the token cache as it installs one). */
void live_count_mint(struct live_cred *e);

/* One signature with the credential that failed (the token cache's failure hook), and one
 * token of it dropped because Apple answered 401 to it (so the next request signs again). */
void live_count_mint_failure(struct live_cred *e);
void live_count_remint_401(struct live_cred *e);

/* Read: a credential's figures as last known. */
struct live_quota {
    long limit, remaining; /* -1 until Apple has said */
    double updated;        /* when Apple last said (Unix time; 0: never) */
    double blocked_until;  /* Apple's Retry-After (Unix time; 0: none) */
    unsigned long mints;   /* tokens signed since the process started, across reloads */
    long mints_shared;     /* with shared state: tokens signed by every replica (-1: unknown) */
    unsigned long mint_failures; /* signatures that failed, likewise */
    unsigned long remints_401;   /* tokens dropped after Apple's 401, likewise */
};
void live_cred_read(const struct live_cred *e, struct live_quota *q);

/* ---- shared state (proxy/shared.h) ---- */

/* Another reference to an entry already held (released with live_cred_put): for a reply that
 * may outlive the runtime that asked. */
struct live_cred *live_cred_hold(struct live_cred *e);

/* Takes in what the replicas know together (remote, as read from Redis): a quota reading newer
 * than this table's replaces it, a later Retry-After extends the block, and remote->mints
 * becomes mints_shared. */
void live_shared_merge(struct live_cred *e, const struct live_quota *remote);

/* The tokens signed here since the last call (to be added to the shared count), and the
 * undoing of a call whose count could not be sent. */
unsigned long live_mints_unshared(struct live_cred *e);
void live_mints_unshare(struct live_cred *e, unsigned long n);

#endif
