/* fuzz_redis_reply: bytes from a Redis server (hiredis' reader, as the proxy's connection
 * reads them) into the shared-state reply parsers: whatever Redis (or something answering in
 * its place) sends, a parser either takes a reply or refuses it, and never reads past it. The
 * figures a parser takes are merged into a credential's live entry as the proxy merges them
 * (live_shared_merge), and read back: times stay times (no overflow on the way). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "proxy/live.h"
#include "proxy/shared.h"

static struct live *fz_live; /* process lifetime */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_live = live_new();
    if (fz_live == NULL)
        __builtin_trap();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;
    if (r == NULL || shared_reader_limit(r) < 0) { /* as the proxy's connections read */
        redisReaderFree(r);
        return 0;
    }
    if (redisReaderFeed(r, (const char *)data, size) == REDIS_OK) {
        /* Every complete reply in the input, as a connection would take them one by one. */
        while (redisReaderGetReply(r, &reply) == REDIS_OK && reply != NULL) {
            int allowed;
            double wait;
            struct live_quota q;
            if (shared_parse_rate(reply, &allowed, &wait) == 0 &&
                ((allowed != 0 && allowed != 1) || wait < 0))
                __builtin_trap(); /* invariant broken: a decision outside its range */
            if (shared_parse_figures(reply, &q) == 0) {
                struct live_cred *e = live_cred_get(fz_live, "fuzz");
                struct live_quota back;
                if (q.limit < -1 || q.remaining < -1)
                    __builtin_trap();
                if (e == NULL)
                    __builtin_trap();
                live_shared_merge(e, &q);
                live_cred_read(e, &back);
                if (!isfinite(back.updated) || !isfinite(back.blocked_until) ||
                    back.updated < 0 || back.blocked_until < 0)
                    __builtin_trap(); /* invariant broken: a time read back out of range */
                live_cred_put(e); /* the last reference: the next reply starts afresh */
            }
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    redisReaderFree(r);
    return 0;
}
