/*
 * latency.c - per-thread, per-route windows of upstream latency (see
 * latency.h).
 *
 *   latency_record(route, ms) --> windows[route].buckets[current][log2 bucket]++
 *   every 30 s the older window is cleared and becomes the current one
 *   latency_p90(route) ------> walk both windows' buckets to 90 %
 *
 * The windows belong to the configuration they were made for: a reload
 * changes the routes and their indexes, so the first call under another
 * configuration starts afresh.
 */
#include "latency.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "util.h"

#define NBUCKETS 16 /* < 8 ms, < 16 ms, ... < 262 s, and more */
#define FIRST_BOUND_MS 8
#define WINDOW_MS (30 * 1000)

struct window_pair {
    uint64_t started_ms; /* when `current` began */
    int current;
    uint32_t buckets[2][NBUCKETS];
};

static _Thread_local struct window_pair *windows;
static _Thread_local int nwindows;
static _Thread_local const struct config *windows_cfg;

static struct window_pair *pair_for(const struct config *cfg, int route)
{
    if (windows_cfg != cfg) {
        free(windows);
        nwindows = cfg->nroutes + 1;
        windows = xcalloc((size_t)nwindows, sizeof(*windows));
        windows_cfg = cfg;
    }
    if (route < 0 || route >= nwindows)
        return NULL;
    struct window_pair *w = &windows[route];
    uint64_t now = now_monotonic_ms();
    if (w->started_ms == 0) {
        w->started_ms = now;
    } else if (now - w->started_ms >= 2 * WINDOW_MS) {
        memset(w->buckets, 0, sizeof(w->buckets)); /* both too old */
        w->started_ms = now;
    } else if (now - w->started_ms >= WINDOW_MS) {
        w->current ^= 1;
        memset(w->buckets[w->current], 0, sizeof(w->buckets[0]));
        w->started_ms = now;
    }
    return w;
}

static uint64_t bucket_bound(int b)
{
    return (uint64_t)FIRST_BOUND_MS << b;
}

void latency_record(const struct config *cfg, int route, uint64_t ms)
{
    struct window_pair *w = pair_for(cfg, route);
    if (w == NULL)
        return;
    int b = 0;
    while (b < NBUCKETS - 1 && ms >= bucket_bound(b))
        b++;
    w->buckets[w->current][b]++;
}

int64_t latency_p90(const struct config *cfg, int route)
{
    struct window_pair *w = pair_for(cfg, route);
    if (w == NULL)
        return -1;
    uint64_t total = 0;
    for (int b = 0; b < NBUCKETS; b++)
        total += (uint64_t)w->buckets[0][b] + w->buckets[1][b];
    if (total == 0)
        return -1;
    uint64_t want = (total * 9 + 9) / 10, seen = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        seen += (uint64_t)w->buckets[0][b] + w->buckets[1][b];
        if (seen >= want)
            return (int64_t)bucket_bound(b);
    }
    return (int64_t)bucket_bound(NBUCKETS - 1);
}

int64_t latency_retry_after(const struct config *cfg, int route, uint64_t lock_ttl_ms,
                            int64_t lease_left_ms)
{
    int64_t lease_s = lease_left_ms > 0 ? (lease_left_ms + 999) / 1000 : 1;
    int64_t p90 = latency_p90(cfg, route);
    if (p90 < 0)
        return lease_s < 1 ? 1 : lease_s;
    int64_t ran = lease_left_ms > 0 && (int64_t)lock_ttl_ms > lease_left_ms
                      ? (int64_t)lock_ttl_ms - lease_left_ms
                      : 0;
    int64_t s = (p90 - ran + 999) / 1000;
    if (s > lease_s)
        s = lease_s;
    return s < 1 ? 1 : s;
}

void latency_thread_exit(void)
{
    free(windows);
    windows = NULL;
    nwindows = 0;
    windows_cfg = NULL;
}
