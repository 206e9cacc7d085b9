/* token_cache: the thread-safe cache of minted tokens, one entry per credential and scope. */
#ifndef AAP_AUTH_TOKEN_CACHE_H
#define AAP_AUTH_TOKEN_CACHE_H

#include <stddef.h>
#include <time.h>
#include "auth/profile.h"

/* An immutable, reference-counted token. The proxy writes `line` (the whole header line
 * "Authorization: Bearer <jwt>\r\n", built once per mint) into every request that uses it. */
struct token {
    const char *jwt;   /* points into line */
    size_t jwt_len;
    const char *line;  /* "Authorization: Bearer <jwt>\r\n" */
    size_t line_len;
    time_t iat, exp;
    unsigned long generation; /* increases with every mint of the same entry */
};

typedef struct token_cache token_cache;

/* The tokens that belong to a team rather than to one credential (profile_team_token: APNs),
 * one per team ID, with APNs' schedule kept here rather than in any one cache: a team's token
 * is replaced once it is APNS_TOKEN_REFRESH_AGE old and never sooner than APNS_TOKEN_MIN_AGE
 * after the last one, whichever credential, worker or configuration asks. The process keeps
 * one store across reloads (every runtime's cache shares it); a cache that is given none keeps
 * its own. Thread-safe. */
typedef struct token_teams token_teams;
token_teams *token_teams_new(time_t (*clock)(void));
/* Frees the store and its tokens (tokens still referenced stay valid until token_put). */
void token_teams_free(token_teams *teams);

/* refresh_margin: a token is replaced once now >= exp - refresh_margin (and never served once
 * now >= exp - expiry_guard, with expiry_guard = 5 s so a token does not expire in flight).
 * clock may be NULL (time(NULL)); tests pass their own. */
token_cache *token_cache_new(long refresh_margin, time_t (*clock)(void));
/* Makes the cache take team tokens from `teams` (borrowed: it must outlive the cache) instead of
 * its own store. Call before the cache hands out a token. */
void token_cache_share_teams(token_cache *cache, token_teams *teams);
/* Frees the cache and its tokens (tokens still referenced stay valid until token_put). */
void token_cache_free(token_cache *cache);

/* Returns a referenced token for (cred, scope) (scope NULL: the credential's own scope),
 * minting synchronously when the entry is missing, expired or inside the refresh margin.
 * Concurrent callers for the same entry mint once: the others wait for that mint or, when
 * the current token is still valid, get it without waiting. Release with token_put.
 * Returns NULL with err set when minting fails. */
struct token *token_cache_get(token_cache *cache, const struct credential *cred,
                              const char *const *scope, size_t nscope, char *err, size_t errlen);
void token_put(struct token *tok);

/* Re-mints every entry inside its refresh margin (called from a timer so that requests never
 * wait for a signature). Returns the number of entries re-minted, or -1 if one failed (the
 * failing entry keeps its still-valid token). */
int token_cache_refresh(token_cache *cache, char *err, size_t errlen);

/* Called when Apple answered 401 to `tok`: if tok is still the entry's current token and the
 * entry was not already re-minted for a 401 within the last `cooldown` seconds, drops it so the
 * next get mints afresh and returns 1; otherwise 0 (a revoked key must not cause a signing storm). */
int token_cache_invalidate(token_cache *cache, const struct credential *cred,
                           const char *const *scope, size_t nscope, const struct token *tok,
                           long cooldown);

/* Called when APNs answered 403 ExpiredProviderToken or InvalidProviderToken to `tok` (a team
 * token of cred): if tok is still the team's token and is at least APNS_TOKEN_MIN_AGE old, drops
 * it so that the next get mints afresh, and returns 1 (the push may be retried once); otherwise
 * 0: the 20-minute rule wins, the token stays and the push gets APNs' answer. */
int token_cache_team_refused(token_cache *cache, const struct credential *cred,
                             const struct token *tok);
/* Called when APNs answered 429 TooManyProviderTokenUpdates: counted for the team, and the
 * current token is kept (a new one would only make it worse). Returns the team's count. */
unsigned long token_cache_team_too_many(token_cache *cache, const struct credential *cred);
/* Counts for a team (0 for an unknown one): tokens signed, 429 TooManyProviderTokenUpdates. */
unsigned long token_teams_mints(token_teams *teams, const char *team_id);
unsigned long token_teams_too_many(token_teams *teams, const char *team_id);

/* Calls fn(arg, cred) for every token installed from now on, with the cache's lock held (fn
 * must only count): the proxy keeps its mint counts outside the cache, which a reload replaces. */
void token_cache_on_mint(token_cache *cache, void (*fn)(void *arg, const struct credential *cred),
                         void *arg);

/* Exchanged credentials (profile_exchanged: maps, apple-business). The cache never signs for
 * them: token_cache_get returns their access token while it is valid, else NULL ("no access
 * token yet"), and token_cache_refresh skips them. Their entry is keyed by the credential's
 * own scope. */

/* Makes `bearer` (len bytes, Apple's access token) the credential's current token, valid for
 * expires_in seconds from now. Returns 0, or -1 when out of memory. Thread-safe. */
int token_cache_install(token_cache *cache, const struct credential *cred, const char *bearer,
                        size_t len, long expires_in);
/* 1 when the credential needs an exchange: no token, or inside its refresh margin (the same
 * margin as signed tokens: token_refresh_margin, at most a third of the token's life). *exp_out
 * gets the current token's expiry (0: none). */
int token_cache_due(token_cache *cache, const struct credential *cred, time_t *exp_out);
/* A reload: the access token of from_cred in `from`, while valid, becomes cred's in cache (when
 * cred has none yet), so a new configuration does not wait for an exchange. Returns 1 when a
 * token was taken over. */
int token_cache_adopt(token_cache *cache, const struct credential *cred, token_cache *from,
                      const struct credential *from_cred);
/* The same for every signature that fails (the proxy counts failed mints per credential). */
void token_cache_on_mint_failure(token_cache *cache,
                                 void (*fn)(void *arg, const struct credential *cred), void *arg);

/* Counts for metrics: total mints so far, and the nearest expiry of the entries for cred. */
unsigned long token_cache_mints(token_cache *cache, const struct credential *cred);
time_t token_cache_expiry(token_cache *cache, const struct credential *cred);

#endif
