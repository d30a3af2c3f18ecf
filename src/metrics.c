/*
 * metrics.c - the counters behind /metrics (SPEC §4.5) and their rendering in
 * the Prometheus text exposition format 0.0.4.
 *
 * Callers count events as they happen, on whichever worker thread serves
 * them; admin.c renders a sum of every thread's counts per scrape:
 *
 *   proxy.c  access log line --> metrics_request()          requests series,
 *                                                            request histogram
 *            upstream answered -> metrics_upstream_latency() upstream histogram
 *   store.c  command replied --> metrics_redis_latency()    redis histogram
 *            command failed ---> metrics_redis_error()      redis error counter
 *   admin.c  GET /metrics -----> metrics_render(gauges read from the runtime)
 *
 * Threads. Every counting thread owns a struct thread_state, reached through
 * a thread-local pointer; no other thread writes it, so counting takes no
 * lock and contends for no cache line. The registry keeps every state handed
 * out, retired ones included, for render to sum:
 *
 *   registry[0] --> state (worker 0)   named series, folded series,
 *   registry[1] --> state (worker 1)   histograms, redis error count
 *   registry[2] --> state (retired)    still summed; the next thread to
 *   ...                                start takes it over and adds to it
 *   overflow_state                     shared by threads that found all
 *                                      METRICS_MAX_THREADS slots running
 *
 * Reads from another thread are well defined without a lock:
 * - counters, buckets and sums change only by relaxed atomic adds and are
 *   read by relaxed atomic loads (so the overflow state's several writers
 *   are safe too);
 * - a thread appends a series to its fixed table by filling in the entry,
 *   then storing the new length with release; render loads the length with
 *   acquire and reads only the entries below it, which never move or change
 *   again (their counts aside) and whose route copies live until
 *   metrics_reset();
 * - a registry slot is claimed by an atomic add on nclaimed and its state
 *   published by a release store; render loads slots with acquire and skips
 *   one not yet published;
 * - metrics_thread_exit() sets `retired` with release; a starting thread
 *   takes a retired state over by an acquire compare-exchange, so the old
 *   owner's writes happen before the new owner's.
 * metrics_init() and metrics_reset() are the exceptions: they run while no
 * other thread counts.
 *
 * Label cardinality is bounded, so a scrape stays small whatever clients send:
 * routes come from the configuration, outcomes from the fixed vocabulary
 * below (anything else counts as "other"), statuses collapse to their class.
 * In each thread, the first METRICS_MAX_SERIES distinct (route, outcome,
 * class) triples keep their route; later ones are folded into route="other",
 * of which there are at most ARRAY_LEN(outcomes) * 5, kept as a fixed array.
 * Render merges equal label sets across threads into one line. Route labels
 * are copied: a reload may free the configuration that named them.
 *
 * Histograms keep integer observations in the unit they arrive in (ms or us)
 * and per-bucket counts; rendering makes the buckets cumulative, takes the
 * count from the +Inf bucket (so the two always agree) and writes the sum as
 * an exact decimal number of seconds.
 */
#include "metrics.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define NCLASSES 5 /* 1xx .. 5xx */
#define HIST_MAX_BOUNDS 16
#define CACHE_LINE 64

/* The access log's idem values, then "error" (no outcome) and "other", last. */
static const char *const outcomes[] = {
    "miss",     "replay", "inflight",    "unknown",
    "mismatch", "nokey",  "invalid",     "too_large",
    "bypass",   "reject", "store_error", "token_invalid",
    "token",    "quota",  "overloaded",  "signature_invalid",
    "error",    "other",
};
#define OUTCOME_OTHER ((int)ARRAY_LEN(outcomes) - 1)
#define OUTCOME_ERROR ((int)ARRAY_LEN(outcomes) - 2)

#define MAX_FOLDED (ARRAY_LEN(outcomes) * NCLASSES)

static const char *const class_names[NCLASSES] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

struct series {
    char *route; /* owned copy */
    int outcome; /* index into outcomes[] */
    int cls;     /* index into class_names[] */
    uint64_t count;
};

enum hist { HIST_REQUEST, HIST_UPSTREAM, HIST_REDIS, NHIST };

/* What a histogram is; its counts live in each thread's state. */
struct histogram_def {
    const char *name;
    const char *help;
    const uint64_t *bounds; /* upper bounds, ascending, in the observation unit */
    const char *const *les; /* the same bounds as le="" values, in seconds */
    size_t nbounds;
    int digits; /* decimal digits of the unit: 3 for ms, 6 for us */
};

struct histogram {
    uint64_t buckets[HIST_MAX_BOUNDS + 1]; /* not cumulative; [nbounds] is +Inf */
    uint64_t sum;
};

static const uint64_t upstream_bounds_ms[] = {5,   10,   25,   50,   100,   250,
                                              500, 1000, 2500, 5000, 10000, 30000};
static const char *const upstream_les[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                           "0.5",   "1",    "2.5",   "5",    "10",  "30"};
static const uint64_t redis_bounds_us[] = {100,   250,   500,   1000,   2500,   5000,
                                           10000, 25000, 50000, 100000, 250000, 1000000};
static const char *const redis_les[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                                        "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "1"};

_Static_assert(ARRAY_LEN(upstream_bounds_ms) == ARRAY_LEN(upstream_les), "upstream buckets");
_Static_assert(ARRAY_LEN(redis_bounds_us) == ARRAY_LEN(redis_les), "redis buckets");
_Static_assert(ARRAY_LEN(upstream_les) <= HIST_MAX_BOUNDS, "upstream buckets fit");
_Static_assert(ARRAY_LEN(redis_les) <= HIST_MAX_BOUNDS, "redis buckets fit");

#define HISTOGRAM(n, h, b, l, d)                                                                   \
    {                                                                                              \
        .name = (n), .help = (h), .bounds = (b), .les = (l), .nbounds = ARRAY_LEN(b),              \
        .digits = (d)                                                                              \
    }

static const struct histogram_def histograms[NHIST] = {
    [HIST_REQUEST] = HISTOGRAM("idemproxy_request_duration_seconds",
                               "Time from a request's arrival to the end of its answer.",
                               upstream_bounds_ms, upstream_les, 3),
    [HIST_UPSTREAM] = HISTOGRAM("idemproxy_upstream_duration_seconds",
                                "Time from forwarding a request to the upstream's complete answer.",
                                upstream_bounds_ms, upstream_les, 3),
    [HIST_REDIS] =
        HISTOGRAM("idemproxy_redis_duration_seconds",
                  "Time from sending a Redis command to its reply.", redis_bounds_us, redis_les, 6),
};

/*
 * One thread's counts. Aligned to a cache line so that two threads' states
 * never share one.
 */
struct thread_state {
    _Alignas(CACHE_LINE) struct histogram hist[NHIST];
    uint64_t redis_errors;
    uint64_t redis_failovers;
    uint64_t redis_redirections[2]; /* moved, ask */
    uint64_t redis_shortfalls[2];   /* claims, completions */
    uint64_t lease_losses;
    uint64_t folded[MAX_FOLDED]; /* route="other", by outcome * NCLASSES + class */
    size_t nnamed;               /* named[0..nnamed) are published */
    bool retired;                /* metrics_thread_exit() was called; nobody counts here */
    bool shared;                 /* the overflow state: many writers, named[] unused */
    struct series named[METRICS_MAX_SERIES];
};

static struct thread_state *registry[METRICS_MAX_THREADS];
static size_t nclaimed; /* slots claimed so far; may pass METRICS_MAX_THREADS */
static struct thread_state overflow_state = {.shared = true};
static _Thread_local struct thread_state *tls_state;
static struct timespec start_time;

/* ---- thread states ------------------------------------------------------ */

static void counter_add(uint64_t *c, uint64_t n)
{
    __atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

static uint64_t counter_load(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/* The number of registry slots that may hold a state. */
static size_t registry_len(void)
{
    size_t n = __atomic_load_n(&nclaimed, __ATOMIC_RELAXED);
    return n < METRICS_MAX_THREADS ? n : METRICS_MAX_THREADS;
}

/* A zeroed state; aborts when memory is exhausted, as xmalloc does. */
static struct thread_state *state_new(void)
{
    struct thread_state *st = aligned_alloc(CACHE_LINE, sizeof(*st));
    if (st == NULL) {
        fprintf(stderr, "idemproxy: out of memory allocating %zu bytes\n", sizeof(*st));
        abort();
    }
    memset(st, 0, sizeof(*st));
    return st;
}

/*
 * A state for the calling thread: a retired one taken over, else a new one in
 * a free registry slot, else the shared overflow state. Never NULL.
 */
static struct thread_state *state_attach(void)
{
    size_t n = registry_len();
    for (size_t i = 0; i < n; i++) {
        struct thread_state *st = __atomic_load_n(&registry[i], __ATOMIC_ACQUIRE);
        bool retired = true;
        if (st != NULL && __atomic_load_n(&st->retired, __ATOMIC_RELAXED) &&
            __atomic_compare_exchange_n(&st->retired, &retired, false, false, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return st;
    }

    size_t slot = __atomic_fetch_add(&nclaimed, 1, __ATOMIC_RELAXED);
    if (slot >= METRICS_MAX_THREADS)
        return &overflow_state;
    struct thread_state *st = state_new();
    __atomic_store_n(&registry[slot], st, __ATOMIC_RELEASE);
    return st;
}

/* The calling thread's state, attached on first use. */
static struct thread_state *state_self(void)
{
    if (tls_state == NULL)
        tls_state = state_attach();
    return tls_state;
}

void metrics_thread_init(void)
{
    state_self();
}

void metrics_thread_exit(void)
{
    struct thread_state *st = tls_state;
    tls_state = NULL;
    if (st != NULL && !st->shared)
        __atomic_store_n(&st->retired, true, __ATOMIC_RELEASE);
}

void metrics_reset(void)
{
    size_t n = registry_len();
    for (size_t i = 0; i < n; i++) {
        struct thread_state *st = registry[i];
        if (st == NULL)
            continue;
        for (size_t j = 0; j < st->nnamed; j++) {
            free(st->named[j].route);
            st->named[j].route = NULL;
        }
        free(st);
        registry[i] = NULL;
    }
    nclaimed = 0;
    memset(&overflow_state, 0, sizeof(overflow_state));
    overflow_state.shared = true;
    tls_state = NULL;
}

void metrics_init(void)
{
    metrics_reset();
    clock_gettime(CLOCK_REALTIME, &start_time);
}

/* ---- counting ----------------------------------------------------------- */

static void histogram_observe(struct histogram *h, const struct histogram_def *d, uint64_t v)
{
    size_t i = 0;
    while (i < d->nbounds && v > d->bounds[i])
        i++;
    counter_add(&h->buckets[i], 1);
    counter_add(&h->sum, v);
}

static int outcome_index(const char *outcome)
{
    if (outcome == NULL)
        return OUTCOME_ERROR;
    for (size_t i = 0; i < ARRAY_LEN(outcomes); i++)
        if (strcmp(outcome, outcomes[i]) == 0)
            return (int)i;
    return OUTCOME_OTHER;
}

static int status_class(int status)
{
    if (status < 100 || status > 599)
        return NCLASSES - 1;
    return status / 100 - 1;
}

/*
 * The named series for the triple in st, which the calling thread owns,
 * appended and published if there is room; NULL when the table is full.
 */
static struct series *series_find(struct thread_state *st, const char *route, int outcome, int cls)
{
    size_t n = __atomic_load_n(&st->nnamed, __ATOMIC_RELAXED); /* only we store it */
    for (size_t i = 0; i < n; i++) {
        struct series *s = &st->named[i];
        if (s->outcome == outcome && s->cls == cls && strcmp(s->route, route) == 0)
            return s;
    }
    if (n == METRICS_MAX_SERIES)
        return NULL;
    struct series *s = &st->named[n];
    s->route = xstrdup(route);
    s->outcome = outcome;
    s->cls = cls;
    s->count = 0;
    __atomic_store_n(&st->nnamed, n + 1, __ATOMIC_RELEASE);
    return s;
}

void metrics_request(const char *route, const char *outcome, int status, uint64_t total_ms)
{
    struct thread_state *st = state_self();
    int o = outcome_index(outcome);
    int cls = status_class(status);
    if (route == NULL)
        route = "default";

    struct series *s = st->shared ? NULL : series_find(st, route, o, cls);
    if (s != NULL)
        counter_add(&s->count, 1);
    else
        counter_add(&st->folded[o * NCLASSES + cls], 1);
    histogram_observe(&st->hist[HIST_REQUEST], &histograms[HIST_REQUEST], total_ms);
}

void metrics_upstream_latency(uint64_t ms)
{
    histogram_observe(&state_self()->hist[HIST_UPSTREAM], &histograms[HIST_UPSTREAM], ms);
}

void metrics_redis_latency(uint64_t us)
{
    histogram_observe(&state_self()->hist[HIST_REDIS], &histograms[HIST_REDIS], us);
}

void metrics_redis_error(void)
{
    counter_add(&state_self()->redis_errors, 1);
}

void metrics_redis_failover(void)
{
    counter_add(&state_self()->redis_failovers, 1);
}

void metrics_redis_redirection(bool ask)
{
    counter_add(&state_self()->redis_redirections[ask ? 1 : 0], 1);
}

void metrics_lease_lost(void)
{
    counter_add(&state_self()->lease_losses, 1);
}

void metrics_redis_shortfall(bool completion)
{
    counter_add(&state_self()->redis_shortfalls[completion ? 1 : 0], 1);
}

/* ---- merging ------------------------------------------------------------ */

/*
 * A render's snapshot of the registry: the states to sum, each with the
 * length of its named table as loaded once, so that sizing and reading agree.
 */
struct snapshot {
    struct thread_state *states[METRICS_MAX_THREADS + 1];
    size_t nnamed[METRICS_MAX_THREADS + 1];
    size_t n;
};

static void snapshot_take(struct snapshot *sn)
{
    size_t n = registry_len();
    sn->n = 0;
    for (size_t i = 0; i <= n; i++) {
        struct thread_state *st =
            i < n ? __atomic_load_n(&registry[i], __ATOMIC_ACQUIRE) : &overflow_state;
        if (st == NULL) /* claimed, not yet published: it has counted nothing */
            continue;
        sn->states[sn->n] = st;
        sn->nnamed[sn->n] = __atomic_load_n(&st->nnamed, __ATOMIC_ACQUIRE);
        sn->n++;
    }
}

/* One line of idemproxy_requests_total; route borrows a state's copy. */
struct row {
    const char *route;
    int outcome;
    int cls;
    uint64_t count;
};

/*
 * Rows in order of first appearance, with an open-addressing index over
 * them (slot = row index + 1, 0 = empty) to merge equal label sets.
 */
struct merge {
    struct row *rows;
    size_t nrows;
    size_t *slots;
    size_t mask;
};

static void merge_init(struct merge *mg, size_t max_rows)
{
    size_t cap = 16;
    while (cap < 2 * max_rows)
        cap *= 2;
    mg->rows = xcalloc(max_rows, sizeof(*mg->rows));
    mg->nrows = 0;
    mg->slots = xcalloc(cap, sizeof(*mg->slots));
    mg->mask = cap - 1;
}

static void merge_free(struct merge *mg)
{
    free(mg->slots);
    mg->slots = NULL;
    free(mg->rows);
    mg->rows = NULL;
}

/* FNV-1a over the route, then the outcome and class. */
static size_t row_hash(const char *route, int outcome, int cls)
{
    uint64_t h = 14695981039346656037u;
    for (const unsigned char *p = (const unsigned char *)route; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211u;
    h = (h ^ (uint64_t)(outcome * NCLASSES + cls)) * 1099511628211u;
    return (size_t)(h ^ (h >> 32));
}

/* Adds count to the row with these labels; the caller sized mg for every call. */
static void merge_add(struct merge *mg, const char *route, int outcome, int cls, uint64_t count)
{
    size_t i = row_hash(route, outcome, cls) & mg->mask;
    for (; mg->slots[i] != 0; i = (i + 1) & mg->mask) {
        struct row *r = &mg->rows[mg->slots[i] - 1];
        if (r->outcome == outcome && r->cls == cls && strcmp(r->route, route) == 0) {
            r->count += count;
            return;
        }
    }
    mg->rows[mg->nrows] = (struct row){route, outcome, cls, count};
    mg->slots[i] = ++mg->nrows;
}

/*
 * Every thread's series merged by label set: the named ones first, in order of
 * first appearance, then the folded ones (route="other", merged with any
 * route literally named "other"). The caller frees with merge_free().
 */
static void merge_series(struct merge *mg, const struct snapshot *sn)
{
    size_t max_rows = MAX_FOLDED;
    for (size_t i = 0; i < sn->n; i++)
        max_rows += sn->nnamed[i];
    merge_init(mg, max_rows);

    for (size_t i = 0; i < sn->n; i++) {
        const struct thread_state *st = sn->states[i];
        for (size_t j = 0; j < sn->nnamed[i]; j++) {
            const struct series *s = &st->named[j];
            merge_add(mg, s->route, s->outcome, s->cls, counter_load(&s->count));
        }
    }
    for (size_t f = 0; f < MAX_FOLDED; f++) {
        uint64_t count = 0;
        for (size_t i = 0; i < sn->n; i++)
            count += counter_load(&sn->states[i]->folded[f]);
        if (count > 0)
            merge_add(mg, "other", (int)(f / NCLASSES), (int)(f % NCLASSES), count);
    }
}

/* ---- rendering ---------------------------------------------------------- */

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with backslash, double quote and newline escaped. */
static void label_value(struct evbuffer *out, const char *v)
{
    while (*v != '\0') {
        size_t run = strcspn(v, "\\\"\n");
        evbuffer_add(out, v, run);
        v += run;
        if (*v == '\0')
            break;
        evbuffer_add(out, *v == '\\' ? "\\\\" : *v == '"' ? "\\\"" : "\\n", 2);
        v++;
    }
}

static void render_row(struct evbuffer *out, const struct row *r)
{
    evbuffer_add_printf(out, "idemproxy_requests_total{route=\"");
    label_value(out, r->route);
    evbuffer_add_printf(out, "\",outcome=\"%s\",code=\"%s\"} %" PRIu64 "\n", outcomes[r->outcome],
                        class_names[r->cls], r->count);
}

/* v units of 10^-digits seconds, written exactly: 1234 ms -> "1.234". */
static void add_seconds(struct evbuffer *out, uint64_t v, int digits)
{
    uint64_t div = 1;
    for (int i = 0; i < digits; i++)
        div *= 10;
    evbuffer_add_printf(out, "%" PRIu64 ".%0*" PRIu64, v / div, digits, v % div);
}

static void render_histogram(struct evbuffer *out, const struct snapshot *sn, enum hist which)
{
    const struct histogram_def *d = &histograms[which];
    uint64_t cumulative = 0;
    uint64_t sum = 0;

    family(out, d->name, "histogram", d->help);
    for (size_t b = 0; b <= d->nbounds; b++) {
        for (size_t i = 0; i < sn->n; i++)
            cumulative += counter_load(&sn->states[i]->hist[which].buckets[b]);
        evbuffer_add_printf(out, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", d->name,
                            b < d->nbounds ? d->les[b] : "+Inf", cumulative);
    }
    for (size_t i = 0; i < sn->n; i++)
        sum += counter_load(&sn->states[i]->hist[which].sum);
    evbuffer_add_printf(out, "%s_sum ", d->name);
    add_seconds(out, sum, d->digits);
    evbuffer_add_printf(out, "\n%s_count %" PRIu64 "\n", d->name, cumulative);
}

static void gauge(struct evbuffer *out, const char *name, const char *help, long long v)
{
    family(out, name, "gauge", help);
    evbuffer_add_printf(out, "%s %lld\n", name, v);
}

void metrics_render(struct evbuffer *out, const struct metrics_gauges *g)
{
    struct snapshot sn;
    struct merge mg;
    uint64_t redis_errors = 0, failovers = 0, shortfalls[2] = {0, 0}, lease_losses = 0;
    uint64_t redirections[2] = {0, 0};

    snapshot_take(&sn);
    merge_series(&mg, &sn);

    family(out, "idemproxy_requests_total", "counter",
           "Requests answered, by route, idempotency outcome and status class.");
    for (size_t i = 0; i < mg.nrows; i++)
        render_row(out, &mg.rows[i]);

    render_histogram(out, &sn, HIST_REQUEST);
    render_histogram(out, &sn, HIST_UPSTREAM);
    render_histogram(out, &sn, HIST_REDIS);

    for (size_t i = 0; i < sn.n; i++) {
        redis_errors += counter_load(&sn.states[i]->redis_errors);
        failovers += counter_load(&sn.states[i]->redis_failovers);
        shortfalls[0] += counter_load(&sn.states[i]->redis_shortfalls[0]);
        shortfalls[1] += counter_load(&sn.states[i]->redis_shortfalls[1]);
        lease_losses += counter_load(&sn.states[i]->lease_losses);
        redirections[0] += counter_load(&sn.states[i]->redis_redirections[0]);
        redirections[1] += counter_load(&sn.states[i]->redis_redirections[1]);
    }
    family(out, "idemproxy_redis_errors_total", "counter",
           "Redis commands that failed: error reply, timeout or lost connection.");
    evbuffer_add_printf(out, "idemproxy_redis_errors_total %" PRIu64 "\n", redis_errors);
    family(out, "idemproxy_redis_failovers_total", "counter",
           "Times the sentinels named another primary (redis_sentinel).");
    evbuffer_add_printf(out, "idemproxy_redis_failovers_total %" PRIu64 "\n", failovers);
    family(out, "idemproxy_redis_redirections_total", "counter",
           "Commands a Redis Cluster sent elsewhere (redis_cluster): -MOVED (the slot has "
           "another primary) or -ASK (the slot is being migrated).");
    evbuffer_add_printf(out, "idemproxy_redis_redirections_total{kind=\"moved\"} %" PRIu64 "\n",
                        redirections[0]);
    evbuffer_add_printf(out, "idemproxy_redis_redirections_total{kind=\"ask\"} %" PRIu64 "\n",
                        redirections[1]);
    family(out, "idemproxy_redis_replica_shortfalls_total", "counter",
           "Writes that fewer than redis_min_replicas replicas confirmed within its timeout: "
           "a claim is then given back and answered 503; a completion is kept.");
    evbuffer_add_printf(out, "idemproxy_redis_replica_shortfalls_total{op=\"claim\"} %" PRIu64 "\n",
                        shortfalls[0]);
    evbuffer_add_printf(out,
                        "idemproxy_redis_replica_shortfalls_total{op=\"complete\"} %" PRIu64 "\n",
                        shortfalls[1]);
    family(out, "idemproxy_lease_losses_total", "counter",
           "Renewals, completions and releases that found the key no longer theirs (freed by an "
           "operator or unknown_ttl, and claimed again): the request may have run twice.");
    evbuffer_add_printf(out, "idemproxy_lease_losses_total %" PRIu64 "\n", lease_losses);

    gauge(out, "idemproxy_inflight_requests", "Requests in flight.", g->inflight);
    gauge(out, "idemproxy_parked_requests", "Duplicates waiting for a key in flight.", g->parked);
    gauge(out, "idemproxy_open_connections", "Open client connections.", g->connections);
    gauge(out, "idemproxy_redis_up", "1 while Redis is connected and authenticated, else 0.",
          g->redis_up ? 1 : 0);
    gauge(out, "idemproxy_redis_may_evict_keys",
          "1 when Redis' maxmemory-policy may evict keys (the promise needs noeviction), 0 when "
          "not, -1 before the first connection.",
          g->redis_may_evict);
    gauge(out, "idemproxy_redis_may_lose_keys",
          "1 when Redis has neither AOF nor a snapshot (a restart forgets every key), 0 when it "
          "has, -1 before the first connection.",
          g->redis_may_lose);
    gauge(out, "idemproxy_redis_refusing_writes",
          "1 while Redis has lately refused writes for lack of memory (OOM), else 0.",
          g->redis_oom ? 1 : 0);

    family(out, "idemproxy_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch, in seconds.");
    evbuffer_add_printf(out, "idemproxy_start_time_seconds %lld.%03ld\n",
                        (long long)start_time.tv_sec, start_time.tv_nsec / 1000000);

    merge_free(&mg);
}
