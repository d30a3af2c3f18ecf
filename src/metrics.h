/*
 * metrics.h - the counters behind /metrics (SPEC §4.5) and their rendering in
 * the Prometheus text exposition format, version 0.0.4.
 *
 * Counting is pure bookkeeping: no I/O, no locks. The process runs one event
 * loop and every call comes from it. State is process-wide; metrics_init()
 * starts it once at start-up, metrics_reset() clears it (tests, exit).
 */
#ifndef IDEM_METRICS_H
#define IDEM_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct evbuffer;

/*
 * At most this many (route, outcome, status class) series of
 * idemproxy_requests_total keep their own route label; the counts of further
 * distinct series go to route="other". Outcomes come from a fixed vocabulary
 * (see metrics.c; anything outside it is counted as outcome="other"), so the
 * folded series are bounded too.
 */
#define METRICS_MAX_SERIES 256

/* Point-in-time values read from the runtime at each scrape. */
struct metrics_gauges {
    int inflight;    /* requests in flight */
    int parked;      /* duplicates waiting for a key in flight */
    int connections; /* open client connections */
    bool redis_up;   /* the store is connected and authenticated */
};

/* Clears everything and records the start time (idemproxy_start_time_seconds). */
void metrics_init(void);

/* Clears every counter, histogram and series; frees the copied route labels. */
void metrics_reset(void);

/*
 * One request answered (or abandoned), counted once, where the access log line
 * is written. route: the matched route's prefix, or "default" (NULL counts as
 * "default"); copied, so it may be freed afterwards. outcome: the access log's
 * idem value (NULL counts as "error"). status: collapsed to its class, "1xx"
 * to "5xx"; a value outside 100..599 counts as "5xx".
 */
void metrics_request(const char *route, const char *outcome, int status, uint64_t total_ms);

/* The upstream answered after ms milliseconds (idemproxy_upstream_duration_seconds). */
void metrics_upstream_latency(uint64_t ms);

/* A Redis command completed after us microseconds (idemproxy_redis_duration_seconds). */
void metrics_redis_latency(uint64_t us);

/* A Redis command failed: error reply, timeout or lost connection. */
void metrics_redis_error(void);

/*
 * Appends the whole exposition to out: every family with its # HELP and
 * # TYPE lines, counters and histograms as counted so far, then the gauges
 * in g. Label values are escaped as the format requires.
 */
void metrics_render(struct evbuffer *out, const struct metrics_gauges *g);

#endif
