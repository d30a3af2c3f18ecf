/*
 * metrics.c - the counters behind /metrics (SPEC §4.5) and their rendering in
 * the Prometheus text exposition format 0.0.4.
 *
 * Callers count events as they happen; admin.c renders a snapshot per scrape:
 *
 *   proxy.c  access log line --> metrics_request()          requests table,
 *                                                            request histogram
 *            upstream answered -> metrics_upstream_latency() upstream histogram
 *   store.c  command replied --> metrics_redis_latency()    redis histogram
 *            command failed ---> metrics_redis_error()      redis error counter
 *   admin.c  GET /metrics -----> metrics_render(gauges read from the runtime)
 *
 * Everything is process-wide and unlocked: one event loop makes every call.
 *
 * Label cardinality is bounded, so a scrape stays small whatever clients send:
 * routes come from the configuration, outcomes from the fixed vocabulary
 * below (anything else counts as "other"), statuses collapse to their class.
 * The first METRICS_MAX_SERIES distinct (route, outcome, class) triples keep
 * their route; later ones are folded into route="other", of which there can
 * be at most ARRAY_LEN(outcomes) * 5. Route labels are copied: a reload may
 * free the configuration that named them.
 *
 * Histograms keep integer observations in the unit they arrive in (ms or us)
 * and per-bucket counts; rendering makes the buckets cumulative and writes
 * the sum as an exact decimal number of seconds.
 */
#include "metrics.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define NCLASSES 5 /* 1xx .. 5xx */
#define HIST_MAX_BOUNDS 16

/* The access log's idem values, then "error" (no outcome) and "other", last. */
static const char *const outcomes[] = {
    "miss",   "replay", "inflight",    "unknown",       "mismatch", "nokey", "invalid", "too_large",
    "bypass", "reject", "store_error", "token_invalid", "token",    "error", "other",
};
#define OUTCOME_OTHER ((int)ARRAY_LEN(outcomes) - 1)
#define OUTCOME_ERROR ((int)ARRAY_LEN(outcomes) - 2)

#define MAX_FOLDED (ARRAY_LEN(outcomes) * NCLASSES)

static const char *const class_names[NCLASSES] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

struct series {
    char *route; /* owned copy; NULL in a folded series (route="other") */
    int outcome; /* index into outcomes[] */
    int cls;     /* index into class_names[] */
    uint64_t count;
};

struct histogram {
    const char *name;
    const char *help;
    const uint64_t *bounds; /* upper bounds, ascending, in the observation unit */
    const char *const *les; /* the same bounds as le="" values, in seconds */
    size_t nbounds;
    int digits;                            /* decimal digits of the unit: 3 for ms, 6 for us */
    uint64_t buckets[HIST_MAX_BOUNDS + 1]; /* not cumulative; the last is +Inf */
    uint64_t sum;
    uint64_t count;
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

static struct {
    struct series named[METRICS_MAX_SERIES];
    size_t nnamed;
    struct series folded[MAX_FOLDED];
    size_t nfolded;
    struct histogram request;
    struct histogram upstream;
    struct histogram redis;
    uint64_t redis_errors;
    struct timespec start;
} m = {
    .request = HISTOGRAM("idemproxy_request_duration_seconds",
                         "Time from a request's arrival to the end of its answer.",
                         upstream_bounds_ms, upstream_les, 3),
    .upstream = HISTOGRAM("idemproxy_upstream_duration_seconds",
                          "Time from forwarding a request to the upstream's complete answer.",
                          upstream_bounds_ms, upstream_les, 3),
    .redis =
        HISTOGRAM("idemproxy_redis_duration_seconds",
                  "Time from sending a Redis command to its reply.", redis_bounds_us, redis_les, 6),
};

/* ---- counting ----------------------------------------------------------- */

static void histogram_clear(struct histogram *h)
{
    memset(h->buckets, 0, sizeof(h->buckets));
    h->sum = 0;
    h->count = 0;
}

static void histogram_observe(struct histogram *h, uint64_t v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    h->buckets[i]++;
    h->sum += v;
    h->count++;
}

void metrics_reset(void)
{
    for (size_t i = 0; i < m.nnamed; i++) {
        free(m.named[i].route);
        m.named[i].route = NULL;
    }
    m.nnamed = 0;
    m.nfolded = 0;
    histogram_clear(&m.request);
    histogram_clear(&m.upstream);
    histogram_clear(&m.redis);
    m.redis_errors = 0;
}

void metrics_init(void)
{
    metrics_reset();
    clock_gettime(CLOCK_REALTIME, &m.start);
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

/* The series for the triple, created if there is room; NULL when there is none. */
static struct series *series_find(struct series *table, size_t *n, size_t cap, const char *route,
                                  int outcome, int cls)
{
    for (size_t i = 0; i < *n; i++) {
        struct series *s = &table[i];
        if (s->outcome == outcome && s->cls == cls &&
            (route == NULL ? s->route == NULL : strcmp(s->route, route) == 0))
            return s;
    }
    if (*n == cap)
        return NULL;
    struct series *s = &table[(*n)++];
    s->route = route != NULL ? xstrdup(route) : NULL;
    s->outcome = outcome;
    s->cls = cls;
    s->count = 0;
    return s;
}

void metrics_request(const char *route, const char *outcome, int status, uint64_t total_ms)
{
    int o = outcome_index(outcome);
    int cls = status_class(status);
    if (route == NULL)
        route = "default";

    struct series *s = series_find(m.named, &m.nnamed, ARRAY_LEN(m.named), route, o, cls);
    if (s == NULL) /* never NULL: every (outcome, class) pair has its slot */
        s = series_find(m.folded, &m.nfolded, ARRAY_LEN(m.folded), NULL, o, cls);
    s->count++;
    histogram_observe(&m.request, total_ms);
}

void metrics_upstream_latency(uint64_t ms)
{
    histogram_observe(&m.upstream, ms);
}

void metrics_redis_latency(uint64_t us)
{
    histogram_observe(&m.redis, us);
}

void metrics_redis_error(void)
{
    m.redis_errors++;
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

static void render_series(struct evbuffer *out, const struct series *s)
{
    evbuffer_add_printf(out, "idemproxy_requests_total{route=\"");
    label_value(out, s->route != NULL ? s->route : "other");
    evbuffer_add_printf(out, "\",outcome=\"%s\",code=\"%s\"} %" PRIu64 "\n", outcomes[s->outcome],
                        class_names[s->cls], s->count);
}

/* v units of 10^-digits seconds, written exactly: 1234 ms -> "1.234". */
static void add_seconds(struct evbuffer *out, uint64_t v, int digits)
{
    uint64_t div = 1;
    for (int i = 0; i < digits; i++)
        div *= 10;
    evbuffer_add_printf(out, "%" PRIu64 ".%0*" PRIu64, v / div, digits, v % div);
}

static void render_histogram(struct evbuffer *out, const struct histogram *h)
{
    uint64_t cumulative = 0;

    family(out, h->name, "histogram", h->help);
    for (size_t i = 0; i <= h->nbounds; i++) {
        cumulative += h->buckets[i];
        evbuffer_add_printf(out, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", h->name,
                            i < h->nbounds ? h->les[i] : "+Inf", cumulative);
    }
    evbuffer_add_printf(out, "%s_sum ", h->name);
    add_seconds(out, h->sum, h->digits);
    evbuffer_add_printf(out, "\n%s_count %" PRIu64 "\n", h->name, h->count);
}

static void gauge(struct evbuffer *out, const char *name, const char *help, long long v)
{
    family(out, name, "gauge", help);
    evbuffer_add_printf(out, "%s %lld\n", name, v);
}

void metrics_render(struct evbuffer *out, const struct metrics_gauges *g)
{
    family(out, "idemproxy_requests_total", "counter",
           "Requests answered, by route, idempotency outcome and status class.");
    for (size_t i = 0; i < m.nnamed; i++)
        render_series(out, &m.named[i]);
    for (size_t i = 0; i < m.nfolded; i++)
        render_series(out, &m.folded[i]);

    render_histogram(out, &m.request);
    render_histogram(out, &m.upstream);
    render_histogram(out, &m.redis);

    family(out, "idemproxy_redis_errors_total", "counter",
           "Redis commands that failed: error reply, timeout or lost connection.");
    evbuffer_add_printf(out, "idemproxy_redis_errors_total %" PRIu64 "\n", m.redis_errors);

    gauge(out, "idemproxy_inflight_requests", "Requests in flight.", g->inflight);
    gauge(out, "idemproxy_parked_requests", "Duplicates waiting for a key in flight.", g->parked);
    gauge(out, "idemproxy_open_connections", "Open client connections.", g->connections);
    gauge(out, "idemproxy_redis_up", "1 while Redis is connected and authenticated, else 0.",
          g->redis_up ? 1 : 0);

    family(out, "idemproxy_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch, in seconds.");
    evbuffer_add_printf(out, "idemproxy_start_time_seconds %lld.%03ld\n", (long long)m.start.tv_sec,
                        m.start.tv_nsec / 1000000);
}
