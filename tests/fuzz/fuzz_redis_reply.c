/* fuzz_redis_reply: bytes from a Redis server (hiredis' reader, as the proxy's connection
 * reads them) into the shared-state reply parsers: whatever Redis (or something answering in
 * its place) sends, a parser either takes a reply or refuses it, and never reads past it. */
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "proxy/shared.h"

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
            if (shared_parse_figures(reply, &q) == 0 && (q.limit < -1 || q.remaining < -1))
                __builtin_trap();
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    redisReaderFree(r);
    return 0;
}
