/*
 * metrics.h - the counters behind /metrics (SPEC §4.5) and their rendering in
 * the Prometheus text exposition format, version 0.0.4.
 *
 * Counting is pure bookkeeping: no I/O, no locks. Each thread that counts
 * (every worker, and any other thread that happens to) gets its own state,
 * reached through a thread-local pointer, so counting touches no memory
 * another thread writes. metrics_render(), from any thread, sums the states
 * of every thread that ever counted, retired ones included.
 *
 *   worker thread:  metrics_thread_init()  once, at its start
 *                   metrics_request() ...  counting, lock-free
 *                   metrics_thread_exit()  once, at its end
 *   main thread:    metrics_init()         before any worker starts
 *                   metrics_render()       per scrape, concurrently with counting
 *                   metrics_reset()        at exit, once every worker has been joined
 */
#ifndef IDEM_METRICS_H
#define IDEM_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct evbuffer;

/*
 * At most this many (route, outcome, status class) series of
 * idemproxy_requests_total keep their own route label in each thread; the
 * counts of further distinct series go to route="other". Outcomes come from a
 * fixed vocabulary (see metrics.c; anything outside it is counted as
 * outcome="other"), so the folded series are bounded too. A scrape merges the
 * series of all threads, so it shows at most METRICS_MAX_THREADS times this
 * many named series (in practice the configured routes, once each).
 */
#define METRICS_MAX_SERIES 256

/*
 * At most this many threads have a state of their own at once. A thread that
 * starts while every slot is held by a running thread shares one overflow
 * state: its counts are kept, but its requests are counted under
 * route="other". A retired state (metrics_thread_exit) is taken over, counts
 * and all, by the next thread that starts, so slots are not used up by
 * threads that come and go.
 */
#define METRICS_MAX_THREADS 64

/* Point-in-time values read from the runtime at each scrape. */
struct metrics_gauges {
    int inflight;    /* requests in flight */
    int parked;      /* duplicates waiting for a key in flight */
    int connections; /* open client connections */
    bool redis_up;   /* the store is connected and authenticated */
    bool redis_oom;  /* Redis refused a write for lack of memory, lately (store_refusing_writes) */
    int redis_may_evict; /* store_redis_risks: -1 unknown, 0, 1 */
    int redis_may_lose;
};

/*
 * Clears everything (as metrics_reset) and records the start time
 * (idemproxy_start_time_seconds). Call it before any other thread counts.
 */
void metrics_init(void);

/*
 * Frees every thread's state and the copied route labels, and forgets the
 * calling thread's state. Only when no other thread that has counted is still
 * running (at exit, in tests): those threads' state pointers would dangle.
 */
void metrics_reset(void);

/*
 * Gives the calling thread its own state; a worker calls it once as it starts.
 * Optional: the first count from a thread without a state does the same.
 * Calling it again before metrics_thread_exit() does nothing.
 */
void metrics_thread_init(void);

/*
 * The calling thread will count no more: its state is retired. Its counts stay
 * in every later render (the memory is kept until metrics_reset()), and a
 * thread that starts later may take the state over and add to it. A thread
 * that counts again afterwards gets a state anew. Does nothing in a thread
 * without a state.
 */
void metrics_thread_exit(void);

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
/* The sentinels named another primary (once per process and failover). */
void metrics_redis_failover(void);
/* A Redis Cluster redirected a command: -ASK (true) or -MOVED. */
void metrics_redis_redirection(bool ask);
/* A renewal, completion or release found the key no longer its owner's. */
void metrics_lease_lost(void);
/* redis_min_replicas not reached for a claim (false) or a completion. */
void metrics_redis_shortfall(bool completion);

/*
 * Appends the whole exposition to out: every family with its # HELP and
 * # TYPE lines, counters and histograms as counted so far by all threads
 * (series with the same labels merged into one line), then the gauges in g.
 * Label values are escaped as the format requires. Safe from any thread while
 * others count; each value is a recent count, not one instant's snapshot
 * (a histogram's _count always equals its +Inf bucket).
 */
void metrics_render(struct evbuffer *out, const struct metrics_gauges *g);

#endif
