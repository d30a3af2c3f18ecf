/*
 * store_health.c - what Redis says of itself that puts the promise at risk,
 * asked at every connection and reload, and writes it refuses for lack of
 * memory. The promise lives in Redis: a key it evicts or forgets (a
 * restart without persistence) is a request that can run again.
 *
 *   connection ready --INFO memory--------> maxmemory-policy evicts?  -> redis_may_evict
 *                    --INFO persistence---> aof_enabled               \
 *                    --CONFIG GET save----> snapshots?                 -> redis_may_lose
 *   an OOM reply to any command -----------------------------------> last_oom_ms (10 s)
 *
 * Results are process-wide atomics: -1 not known yet, else 0 or 1; warn
 * lines only when a value turns to 1.
 */
#include "store_health.h"

#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redis_conn.h"
#include "store.h"

/* When Redis last refused a write for lack of memory (ms, monotonic), any
 * worker; 0: never. Read by /readyz and /metrics through store_refusing_writes. */
static _Atomic uint64_t last_oom_ms;

/* How long one OOM answer keeps /readyz at 503: long enough for a load
 * balancer's probe to see it, short enough to recover once Redis has room. */
#define OOM_SIGNAL_MS 10000

static _Atomic int redis_may_evict = -1;
static _Atomic int redis_may_lose = -1;

/* Redis is full (maxmemory with noeviction): every claim fails until it has
 * room. One warn line per OOM_SIGNAL_MS, not one per request. */
void store_health_note_oom(const char *reply)
{
    uint64_t now = now_monotonic_ms();
    uint64_t last = atomic_exchange(&last_oom_ms, now);
    if (last == 0 || now - last >= OOM_SIGNAL_MS)
        log_warn("redis: refusing writes (%s); requests that need a claim get 503 and /readyz "
                 "says 503 until it has room: raise maxmemory, or lower ttl or "
                 "max_cached_body",
                 reply);
}

bool store_refusing_writes(void)
{
    uint64_t last = atomic_load(&last_oom_ms);
    return last != 0 && now_monotonic_ms() - last < OOM_SIGNAL_MS;
}

void store_redis_risks(int *may_evict, int *may_lose)
{
    *may_evict = atomic_load(&redis_may_evict);
    *may_lose = atomic_load(&redis_may_lose);
}

void store_health_forget(void)
{
    atomic_store(&redis_may_evict, -1);
    atomic_store(&redis_may_lose, -1);
}

/* One check's state, across its three replies; freed by the last. */
struct check {
    char who[400];
    bool aof_enabled;
};

/* The value of "name:" in an INFO reply, copied into out; false if absent. */
static bool info_field(const redisReply *r, const char *name, char *out, size_t cap)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return false;
    size_t n = strlen(name);
    for (const char *line = r->str; line != NULL && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > n && strncmp(line, name, n) == 0 && line[n] == ':') {
            size_t v = len - n - 1;
            while (v > 0 && (line[n + v] == '\r'))
                v--;
            snprintf(out, cap, "%.*s", (int)v, line + n + 1);
            return true;
        }
        line = end ? end + 1 : NULL;
    }
    return false;
}

static void on_memory_info(struct redis_conn *c, void *reply, void *privdata)
{
    (void)c;
    const struct check *ck = privdata;
    char policy[64];
    if (!info_field(reply, "maxmemory_policy", policy, sizeof(policy)))
        return;
    bool evicts = strcmp(policy, "noeviction") != 0;
    if (evicts && atomic_exchange(&redis_may_evict, 1) != 1)
        log_warn("%s: maxmemory-policy is %s: when Redis is full it deletes keys, leases and "
                 "stored answers included, and a retry of a deleted key executes again; set "
                 "maxmemory-policy noeviction",
                 ck->who, policy);
    if (!evicts)
        atomic_store(&redis_may_evict, 0);
}

/* INFO persistence: with AOF on, a restart keeps what was acknowledged. */
static void on_persistence_info(struct redis_conn *c, void *reply, void *privdata)
{
    (void)c;
    struct check *ck = privdata;
    char aof[8];
    if (info_field(reply, "aof_enabled", aof, sizeof(aof)))
        ck->aof_enabled = strcmp(aof, "1") == 0;
}

/* CONFIG GET save (the last of a check): snapshots, or none. Managed Redis
 * often refuses CONFIG: then only AOF can be known. */
static void on_save_config(struct redis_conn *c, void *reply, void *privdata)
{
    (void)c;
    struct check *ck = privdata;
    const redisReply *r = reply;
    if (r != NULL) {
        bool known = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                     r->element[1]->type == REDIS_REPLY_STRING;
        bool snapshots = known && r->element[1]->len > 0;
        if (ck->aof_enabled || snapshots)
            atomic_store(&redis_may_lose, 0);
        else if (!known)
            log_info("%s: appendonly is off and CONFIG GET save is refused: whether a restart "
                     "keeps the keys is not known here",
                     ck->who);
        else if (atomic_exchange(&redis_may_lose, 1) != 1)
            log_warn("%s: neither appendonly nor snapshots (save \"\"): a Redis restart forgets "
                     "every key, and retries of requests it had seen execute again; set "
                     "appendonly yes",
                     ck->who);
    }
    free(ck);
}

void store_health_check(struct redis_conn *c, const char *who)
{
    struct check *ck = xcalloc(1, sizeof(*ck));
    snprintf(ck->who, sizeof(ck->who), "%s", who);
    /* Each callback runs once, in order (NULL if the connection ends first),
     * and the last frees ck. A connection that is ending takes none of the
     * three; one that took the first takes the others. */
    if (redis_conn_command(c, on_memory_info, ck, "INFO memory") != IDEM_OK) {
        free(ck);
        return;
    }
    redis_conn_command(c, on_persistence_info, ck, "INFO persistence");
    redis_conn_command(c, on_save_config, ck, "CONFIG GET save");
}
