/*
 * latency.h - recent upstream latency per route, per worker thread: the
 * Retry-After hint of a 409 `conflict` (SPEC §4.6) is "when the first
 * attempt is likely done", not the whole lease.
 *
 * Each worker keeps, per route, two 30-second windows of a log-scale
 * histogram (buckets of 8 ms doubling up to ~4 min): recording is a few adds
 * on thread-local memory, no lock, no allocation after the first request of
 * a configuration. The p90 over the last 30 to 60 seconds is read from both
 * windows.
 */
#ifndef IDEM_LATENCY_H
#define IDEM_LATENCY_H

#include <stdint.h>

struct config;

/* route: index into cfg->routes, or cfg->nroutes for the global policy. */
void latency_record(const struct config *cfg, int route, uint64_t ms);

/* The 90th percentile of the route's recent upstream latencies, in ms
 * (the upper bound of its bucket); -1 when it has none. */
int64_t latency_p90(const struct config *cfg, int route);

/*
 * Retry-After (seconds) for a duplicate of a request in flight: the
 * route's p90 less the time the first attempt has run (at least the time
 * since its lease was last renewed: lock_ttl - lease_left), at least 1 s,
 * at most the lease left. Without any latency yet: the lease left.
 */
int64_t latency_retry_after(const struct config *cfg, int route, uint64_t lock_ttl_ms,
                            int64_t lease_left_ms);

/* Frees the calling thread's windows (at a worker's end). */
void latency_thread_exit(void);

#endif
