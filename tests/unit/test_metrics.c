/*
 * test_metrics.c - counters, histograms, label bounds and the Prometheus
 * text rendering of metrics.c, counted from one thread and from several
 * (per-thread states summed and merged by render).
 */
#include <event2/buffer.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "unit.h"

static const struct metrics_gauges no_gauges = {0, 0, 0, false, false, 0, 0};

/* The exposition as a NUL-terminated string (caller frees). */
static char *render(const struct metrics_gauges *g)
{
    struct evbuffer *b = evbuffer_new();
    ck_assert_ptr_nonnull(b);
    metrics_render(b, g);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

/* Lines of text starting with prefix. */
static int count_prefixed(const char *text, const char *prefix)
{
    int n = 0;
    size_t len = strlen(prefix);
    for (const char *p = text; *p != '\0';) {
        if (strncmp(p, prefix, len) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return n;
}

/* True when text holds `line` as a whole line. */
static bool has_line(const char *text, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = strstr(text, line); p != NULL; p = strstr(p + 1, line))
        if ((p == text || p[-1] == '\n') && p[len] == '\n')
            return true;
    return false;
}

#define ASSERT_LINE(text, line)                                                                    \
    ck_assert_msg(has_line((text), (line)), "missing: %s\n%s", (line), (text))

START_TEST(requests_by_route_outcome_class)
{
    metrics_reset();
    metrics_request("default", "miss", 201, 3);
    metrics_request("default", "miss", 200, 3);
    metrics_request("default", "replay", 201, 1);
    metrics_request("/pay", "miss", 404, 1);
    metrics_request(NULL, NULL, 502, 1);             /* no route, no outcome */
    metrics_request("default", "store_error", 0, 1); /* nothing sent */
    metrics_request("default", "miss", 101, 1);
    metrics_request("default", "miss", 399, 1);
    metrics_request("default", "made_up", 200, 1);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"default\",outcome=\"miss\",code=\"2xx\"} 2");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"default\",outcome=\"replay\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/pay\",outcome=\"miss\",code=\"4xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"default\",outcome=\"error\",code=\"5xx\"} 1");
    ASSERT_LINE(
        t, "idemproxy_requests_total{route=\"default\",outcome=\"store_error\",code=\"5xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"default\",outcome=\"miss\",code=\"1xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"default\",outcome=\"miss\",code=\"3xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"default\",outcome=\"other\",code=\"2xx\"} 1");
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), 8);
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_count 9");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_sum 0.013");
    free(t);
}
END_TEST

START_TEST(route_label_is_copied)
{
    char route[16];
    metrics_reset();
    snprintf(route, sizeof(route), "/orders");
    metrics_request(route, "miss", 201, 1);
    snprintf(route, sizeof(route), "/changed");

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/orders\",outcome=\"miss\",code=\"2xx\"} 1");
    ck_assert_ptr_null(strstr(t, "/changed"));
    free(t);
}
END_TEST

START_TEST(histogram_buckets_are_cumulative)
{
    metrics_reset();
    /* upstream, in ms: bounds are inclusive (le) */
    metrics_upstream_latency(0);
    metrics_upstream_latency(5);
    metrics_upstream_latency(6);
    metrics_upstream_latency(1000);
    metrics_upstream_latency(30000);
    metrics_upstream_latency(30001);
    /* redis, in us */
    metrics_redis_latency(100);
    metrics_redis_latency(101);
    metrics_redis_latency(1000000);
    metrics_redis_latency(2000000);

    char *t = render(&no_gauges);
    const char *up = "idemproxy_upstream_duration_seconds_bucket{le=\"";
    const char *want_up[][2] = {{"0.005", "2"}, {"0.01", "3"}, {"0.025", "3"}, {"0.05", "3"},
                                {"0.1", "3"},   {"0.25", "3"}, {"0.5", "3"},   {"1", "4"},
                                {"2.5", "4"},   {"5", "4"},    {"10", "4"},    {"30", "5"},
                                {"+Inf", "6"}};
    for (size_t i = 0; i < sizeof(want_up) / sizeof(want_up[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "%s%s\"} %s", up, want_up[i][0], want_up[i][1]);
        ASSERT_LINE(t, line);
    }
    ck_assert_int_eq(count_prefixed(t, up), 13);
    ASSERT_LINE(t, "idemproxy_upstream_duration_seconds_sum 61.012");
    ASSERT_LINE(t, "idemproxy_upstream_duration_seconds_count 6");

    const char *rd = "idemproxy_redis_duration_seconds_bucket{le=\"";
    const char *want_rd[][2] = {{"0.0001", "1"}, {"0.00025", "2"}, {"0.0005", "2"}, {"0.001", "2"},
                                {"0.0025", "2"}, {"0.005", "2"},   {"0.01", "2"},   {"0.025", "2"},
                                {"0.05", "2"},   {"0.1", "2"},     {"0.25", "2"},   {"1", "3"},
                                {"+Inf", "4"}};
    for (size_t i = 0; i < sizeof(want_rd) / sizeof(want_rd[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "%s%s\"} %s", rd, want_rd[i][0], want_rd[i][1]);
        ASSERT_LINE(t, line);
    }
    ck_assert_int_eq(count_prefixed(t, rd), 13);
    ASSERT_LINE(t, "idemproxy_redis_duration_seconds_sum 3.000201");
    ASSERT_LINE(t, "idemproxy_redis_duration_seconds_count 4");
    free(t);
}
END_TEST

START_TEST(redis_errors_and_gauges)
{
    metrics_reset();
    metrics_redis_error();
    metrics_redis_error();
    struct metrics_gauges g = {.inflight = 7, .parked = 3, .connections = 12, .redis_up = true};
    char *t = render(&g);
    ASSERT_LINE(t, "idemproxy_redis_errors_total 2");
    ASSERT_LINE(t, "idemproxy_inflight_requests 7");
    ASSERT_LINE(t, "idemproxy_parked_requests 3");
    ASSERT_LINE(t, "idemproxy_open_connections 12");
    ASSERT_LINE(t, "idemproxy_redis_up 1");
    free(t);

    t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_redis_up 0");
    free(t);
}
END_TEST

START_TEST(label_values_escaped)
{
    metrics_reset();
    metrics_request("/a\\b\"c\nd", "miss", 200, 1);
    metrics_request("\\", "miss", 200, 1);
    char *t = render(&no_gauges);
    ASSERT_LINE(
        t, "idemproxy_requests_total{route=\"/a\\\\b\\\"c\\nd\",outcome=\"miss\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"\\\\\",outcome=\"miss\",code=\"2xx\"} 1");
    free(t);
}
END_TEST

START_TEST(series_cap_folds_into_other)
{
    char route[32];
    metrics_reset();
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(route, sizeof(route), "/r%d", i);
        metrics_request(route, "miss", 200, 1);
    }
    /* Full: new triples go to route="other"; known ones keep counting. */
    metrics_request("/r0", "miss", 201, 1);
    metrics_request("/new1", "miss", 200, 1);
    metrics_request("/new2", "miss", 204, 1);
    metrics_request("/r0", "replay", 200, 1);
    metrics_request("/r1", "miss", 500, 1);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/r0\",outcome=\"miss\",code=\"2xx\"} 2");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/r255\",outcome=\"miss\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"miss\",code=\"2xx\"} 2");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"replay\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"miss\",code=\"5xx\"} 1");
    ck_assert_ptr_null(strstr(t, "/new"));
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), METRICS_MAX_SERIES + 3);
    free(t);

    /* However many distinct routes arrive, the folded series stay bounded. */
    for (int i = 0; i < 5000; i++) {
        snprintf(route, sizeof(route), "/flood%d", i);
        metrics_request(route, i % 2 ? "miss" : "bogus", 100 + (i % 5) * 100, 1);
    }
    t = render(&no_gauges);
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{route=\"other\""), 3 + 2 * 5 - 2);
    ck_assert_ptr_null(strstr(t, "/flood"));
    free(t);

    metrics_reset();
    t = render(&no_gauges);
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), 0);
    free(t);
}
END_TEST

START_TEST(render_exact_text)
{
    metrics_init();
    metrics_request("default", "miss", 201, 12);
    metrics_upstream_latency(7);
    metrics_redis_latency(300);
    metrics_redis_error();
    struct metrics_gauges g = {.inflight = 1, .parked = 0, .connections = 2, .redis_up = true};
    char *t = render(&g);

    /* The start time varies: check it, then compare the rest exactly. */
    const char *st = "\nidemproxy_start_time_seconds ";
    char *p = strstr(t, st);
    ck_assert_ptr_nonnull(p);
    long long sec;
    int ms;
    ck_assert_int_eq(sscanf(p + strlen(st), "%lld.%3d", &sec, &ms), 2);
    long long now = (long long)time(NULL);
    ck_assert(sec <= now && sec >= now - 60);
    char start_line[64];
    snprintf(start_line, sizeof(start_line), "%lld.%03d", sec, ms);
    ck_assert_str_eq(p + strlen(st) + strlen(start_line), "\n");

    char want[8192];
    snprintf(
        want, sizeof(want),
        "# HELP idemproxy_requests_total Requests answered, by route, idempotency outcome and "
        "status class.\n"
        "# TYPE idemproxy_requests_total counter\n"
        "idemproxy_requests_total{route=\"default\",outcome=\"miss\",code=\"2xx\"} 1\n"
        "# HELP idemproxy_request_duration_seconds Time from a request's arrival to the end of "
        "its answer.\n"
        "# TYPE idemproxy_request_duration_seconds histogram\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.005\"} 0\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.01\"} 0\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.025\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.05\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.1\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.25\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"0.5\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"1\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"2.5\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"5\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"10\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"30\"} 1\n"
        "idemproxy_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"
        "idemproxy_request_duration_seconds_sum 0.012\n"
        "idemproxy_request_duration_seconds_count 1\n"
        "# HELP idemproxy_upstream_duration_seconds Time from forwarding a request to the "
        "upstream's complete answer.\n"
        "# TYPE idemproxy_upstream_duration_seconds histogram\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.005\"} 0\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.01\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.025\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.05\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.1\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.25\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"0.5\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"1\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"2.5\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"5\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"10\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"30\"} 1\n"
        "idemproxy_upstream_duration_seconds_bucket{le=\"+Inf\"} 1\n"
        "idemproxy_upstream_duration_seconds_sum 0.007\n"
        "idemproxy_upstream_duration_seconds_count 1\n"
        "# HELP idemproxy_redis_duration_seconds Time from sending a Redis command to its "
        "reply.\n"
        "# TYPE idemproxy_redis_duration_seconds histogram\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.0001\"} 0\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.00025\"} 0\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.0005\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.001\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.0025\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.005\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.01\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.025\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.05\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.1\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"0.25\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"1\"} 1\n"
        "idemproxy_redis_duration_seconds_bucket{le=\"+Inf\"} 1\n"
        "idemproxy_redis_duration_seconds_sum 0.000300\n"
        "idemproxy_redis_duration_seconds_count 1\n"
        "# HELP idemproxy_redis_errors_total Redis commands that failed: error reply, timeout "
        "or lost connection.\n"
        "# TYPE idemproxy_redis_errors_total counter\n"
        "idemproxy_redis_errors_total 1\n"
        "# HELP idemproxy_redis_failovers_total Times the sentinels named another primary "
        "(redis_sentinel).\n"
        "# TYPE idemproxy_redis_failovers_total counter\n"
        "idemproxy_redis_failovers_total 0\n"
        "# HELP idemproxy_redis_redirections_total Commands a Redis Cluster sent elsewhere "
        "(redis_cluster): -MOVED (the slot has another primary) or -ASK (the slot is being "
        "migrated).\n"
        "# TYPE idemproxy_redis_redirections_total counter\n"
        "idemproxy_redis_redirections_total{kind=\"moved\"} 0\n"
        "idemproxy_redis_redirections_total{kind=\"ask\"} 0\n"
        "# HELP idemproxy_redis_replica_shortfalls_total Writes that fewer than "
        "redis_min_replicas replicas confirmed within its timeout: a claim is then given back "
        "and answered 503; a completion is kept.\n"
        "# TYPE idemproxy_redis_replica_shortfalls_total counter\n"
        "idemproxy_redis_replica_shortfalls_total{op=\"claim\"} 0\n"
        "idemproxy_redis_replica_shortfalls_total{op=\"complete\"} 0\n"
        "# HELP idemproxy_lease_losses_total Renewals, completions and releases that found the "
        "key no longer theirs (freed by an operator or unknown_ttl, and claimed again): the "
        "request may have run twice.\n"
        "# TYPE idemproxy_lease_losses_total counter\n"
        "idemproxy_lease_losses_total 0\n"
        "# HELP idemproxy_inflight_requests Requests in flight.\n"
        "# TYPE idemproxy_inflight_requests gauge\n"
        "idemproxy_inflight_requests 1\n"
        "# HELP idemproxy_parked_requests Duplicates waiting for a key in flight.\n"
        "# TYPE idemproxy_parked_requests gauge\n"
        "idemproxy_parked_requests 0\n"
        "# HELP idemproxy_open_connections Open client connections.\n"
        "# TYPE idemproxy_open_connections gauge\n"
        "idemproxy_open_connections 2\n"
        "# HELP idemproxy_redis_up 1 while Redis is connected and authenticated, else 0.\n"
        "# TYPE idemproxy_redis_up gauge\n"
        "idemproxy_redis_up 1\n"
        "# HELP idemproxy_redis_may_evict_keys 1 when Redis' maxmemory-policy may evict keys (the "
        "promise needs noeviction), 0 when not, -1 before the first connection.\n"
        "# TYPE idemproxy_redis_may_evict_keys gauge\n"
        "idemproxy_redis_may_evict_keys 0\n"
        "# HELP idemproxy_redis_may_lose_keys 1 when Redis has neither AOF nor a snapshot (a "
        "restart forgets every key), 0 when it has, -1 before the first connection.\n"
        "# TYPE idemproxy_redis_may_lose_keys gauge\n"
        "idemproxy_redis_may_lose_keys 0\n"
        "# HELP idemproxy_redis_refusing_writes 1 while Redis has lately refused writes for lack "
        "of memory (OOM), else 0.\n"
        "# TYPE idemproxy_redis_refusing_writes gauge\n"
        "idemproxy_redis_refusing_writes 0\n"
        "# HELP idemproxy_start_time_seconds Start time of the process since the Unix epoch, "
        "in seconds.\n"
        "# TYPE idemproxy_start_time_seconds gauge\n"
        "idemproxy_start_time_seconds %s\n",
        start_line);
    ck_assert_str_eq(t, want);
    free(t);
}
END_TEST

/* ---- several threads ---------------------------------------------------- */

/*
 * A counting thread: takes a state, counts n requests for (route, outcome,
 * 200) with one observation in each histogram and one Redis error each, then
 * meets `counted` and `release` (when set) before it retires (when `retire`).
 */
struct job {
    const char *route;
    const char *outcome;
    int n;
    pthread_barrier_t *counted;
    pthread_barrier_t *release;
    bool retire;
    pthread_t thread;
};

static void *job_run(void *arg)
{
    struct job *j = arg;
    metrics_thread_init();
    for (int i = 0; i < j->n; i++) {
        metrics_request(j->route, j->outcome, 200, 12);
        metrics_upstream_latency(7);
        metrics_redis_latency(300);
        metrics_redis_error();
    }
    if (j->counted != NULL)
        pthread_barrier_wait(j->counted);
    if (j->release != NULL)
        pthread_barrier_wait(j->release);
    if (j->retire)
        metrics_thread_exit();
    return NULL;
}

static void job_start(struct job *j)
{
    ck_assert_int_eq(pthread_create(&j->thread, NULL, job_run, j), 0);
}

static void job_join(struct job *j)
{
    ck_assert_int_eq(pthread_join(j->thread, NULL), 0);
}

/* Runs two jobs side by side: both hold a state until both have counted. */
static void run_pair(struct job *a, struct job *b)
{
    pthread_barrier_t counted;
    ck_assert_int_eq(pthread_barrier_init(&counted, NULL, 2), 0);
    a->counted = b->counted = &counted;
    job_start(a);
    job_start(b);
    job_join(a);
    job_join(b);
    pthread_barrier_destroy(&counted);
}

START_TEST(two_threads_are_summed)
{
    metrics_reset();
    struct job a = {.route = "/a", .outcome = "miss", .n = 1000, .retire = true};
    struct job b = {.route = "/b", .outcome = "miss", .n = 500, .retire = true};
    run_pair(&a, &b);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/a\",outcome=\"miss\",code=\"2xx\"} 1000");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/b\",outcome=\"miss\",code=\"2xx\"} 500");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_count 1500");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_sum 18.000");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_bucket{le=\"0.01\"} 0");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_bucket{le=\"0.025\"} 1500");
    ASSERT_LINE(t, "idemproxy_upstream_duration_seconds_count 1500");
    ASSERT_LINE(t, "idemproxy_upstream_duration_seconds_sum 10.500");
    ASSERT_LINE(t, "idemproxy_redis_duration_seconds_count 1500");
    ASSERT_LINE(t, "idemproxy_redis_duration_seconds_sum 0.450000");
    ASSERT_LINE(t, "idemproxy_redis_errors_total 1500");
    free(t);
}
END_TEST

START_TEST(exited_thread_still_counts)
{
    metrics_reset();
    struct job a = {.route = "/gone", .outcome = "replay", .n = 3, .retire = true};
    job_start(&a);
    job_join(&a);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/gone\",outcome=\"replay\",code=\"2xx\"} 3");
    ASSERT_LINE(t, "idemproxy_redis_errors_total 3");
    free(t);

    /* A later thread (which may take the retired state over) adds to it. */
    struct job b = {.route = "/gone", .outcome = "replay", .n = 2, .retire = true};
    job_start(&b);
    job_join(&b);
    /* So does a thread that never called metrics_thread_init(), like this one. */
    metrics_request("/here", "miss", 201, 1);

    t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/gone\",outcome=\"replay\",code=\"2xx\"} 5");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/here\",outcome=\"miss\",code=\"2xx\"} 1");
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), 2);
    ASSERT_LINE(t, "idemproxy_redis_errors_total 5");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_count 6");
    free(t);
}
END_TEST

START_TEST(series_in_one_thread_only)
{
    metrics_reset();
    struct job a = {.route = "/only-a", .outcome = "miss", .n = 4, .retire = true};
    struct job b = {.route = "/both", .outcome = "miss", .n = 1, .retire = false};
    run_pair(&a, &b);
    metrics_request("/both", "miss", 200, 1);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/only-a\",outcome=\"miss\",code=\"2xx\"} 4");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/both\",outcome=\"miss\",code=\"2xx\"} 2");
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), 2);
    free(t);
}
END_TEST

START_TEST(same_series_merged_across_threads)
{
    metrics_reset();
    metrics_request("/m", "miss", 200, 1);
    struct job a = {.route = "/m", .outcome = "miss", .n = 10, .retire = true};
    struct job b = {.route = "/m", .outcome = "miss", .n = 20, .retire = true};
    run_pair(&a, &b);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/m\",outcome=\"miss\",code=\"2xx\"} 31");
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), 1);
    free(t);
}
END_TEST

/* Fills this thread's series table with /f0 ... and folds two more. */
static void *fill_and_fold(void *arg)
{
    (void)arg;
    char route[32];
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(route, sizeof(route), "/f%d", i);
        metrics_request(route, "miss", 200, 1);
    }
    metrics_request("/late", "miss", 200, 1);
    metrics_request("/late", "bogus", 500, 1);
    metrics_thread_exit();
    return NULL;
}

START_TEST(series_cap_is_per_thread)
{
    metrics_reset();
    metrics_request("/late", "miss", 200, 1); /* this thread has room for it */
    metrics_request("other", "other", 599, 1);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, fill_and_fold, NULL), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/late\",outcome=\"miss\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/f255\",outcome=\"miss\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"miss\",code=\"2xx\"} 1");
    /* A route named "other" and the folded series share one line. */
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"other\",code=\"5xx\"} 2");
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), METRICS_MAX_SERIES + 3);
    free(t);
}
END_TEST

/* Counts while the test renders: the sums only grow and end exact. */
START_TEST(render_while_counting)
{
    enum { NJOBS = 4, PER_JOB = 20000 };
    metrics_reset();
    struct job jobs[NJOBS];
    for (int i = 0; i < NJOBS; i++) {
        jobs[i] = (struct job){.route = i % 2 ? "/odd" : "/even", .outcome = "miss", .n = PER_JOB};
        jobs[i].retire = true;
        job_start(&jobs[i]);
    }
    for (int i = 0; i < 50; i++) {
        char *t = render(&no_gauges);
        const char *c = strstr(t, "\nidemproxy_request_duration_seconds_count ");
        ck_assert_ptr_nonnull(c);
        ck_assert_int_le(atol(c + strlen("\nidemproxy_request_duration_seconds_count ")),
                         NJOBS * PER_JOB);
        free(t);
    }
    for (int i = 0; i < NJOBS; i++)
        job_join(&jobs[i]);

    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/even\",outcome=\"miss\",code=\"2xx\"} 40000");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/odd\",outcome=\"miss\",code=\"2xx\"} 40000");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_count 80000");
    ASSERT_LINE(t, "idemproxy_redis_errors_total 80000");
    free(t);
}
END_TEST

/* Threads that come and go reuse retired states: no slot runs out. */
START_TEST(threads_come_and_go)
{
    metrics_reset();
    for (int i = 0; i < 3 * METRICS_MAX_THREADS; i++) {
        struct job j = {.route = "/churn", .outcome = "miss", .n = 1, .retire = true};
        job_start(&j);
        job_join(&j);
    }
    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/churn\",outcome=\"miss\",code=\"2xx\"} 192");
    ck_assert_int_eq(count_prefixed(t, "idemproxy_requests_total{"), 1);
    free(t);
}
END_TEST

/* With every slot held by a running thread, another thread still counts. */
START_TEST(registry_full_uses_overflow)
{
    metrics_reset();
    pthread_barrier_t counted, release;
    ck_assert_int_eq(pthread_barrier_init(&counted, NULL, METRICS_MAX_THREADS + 1), 0);
    ck_assert_int_eq(pthread_barrier_init(&release, NULL, METRICS_MAX_THREADS + 1), 0);
    struct job jobs[METRICS_MAX_THREADS];
    for (int i = 0; i < METRICS_MAX_THREADS; i++) {
        jobs[i] = (struct job){.route = "/w", .outcome = "miss", .n = 1, .retire = true};
        jobs[i].counted = &counted;
        jobs[i].release = &release;
        job_start(&jobs[i]);
    }
    pthread_barrier_wait(&counted);

    metrics_request("/main", "miss", 200, 1); /* overflow: counted, route folded */
    metrics_redis_error();
    char *t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/w\",outcome=\"miss\",code=\"2xx\"} 64");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"miss\",code=\"2xx\"} 1");
    ck_assert_ptr_null(strstr(t, "/main"));
    ASSERT_LINE(t, "idemproxy_redis_errors_total 65");
    free(t);

    pthread_barrier_wait(&release);
    for (int i = 0; i < METRICS_MAX_THREADS; i++)
        job_join(&jobs[i]);
    pthread_barrier_destroy(&counted);
    pthread_barrier_destroy(&release);

    /* Slots retired: this thread, starting over, gets one of its own. */
    metrics_thread_exit();
    metrics_request("/main", "miss", 200, 1);
    t = render(&no_gauges);
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"/main\",outcome=\"miss\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_requests_total{route=\"other\",outcome=\"miss\",code=\"2xx\"} 1");
    ASSERT_LINE(t, "idemproxy_request_duration_seconds_count 66");
    free(t);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");

    tcase_add_test(tc, requests_by_route_outcome_class);
    tcase_add_test(tc, route_label_is_copied);
    tcase_add_test(tc, histogram_buckets_are_cumulative);
    tcase_add_test(tc, redis_errors_and_gauges);
    tcase_add_test(tc, label_values_escaped);
    tcase_add_test(tc, series_cap_folds_into_other);
    tcase_add_test(tc, render_exact_text);
    tcase_add_test(tc, two_threads_are_summed);
    tcase_add_test(tc, exited_thread_still_counts);
    tcase_add_test(tc, series_in_one_thread_only);
    tcase_add_test(tc, same_series_merged_across_threads);
    tcase_add_test(tc, series_cap_is_per_thread);
    tcase_add_test(tc, render_while_counting);
    tcase_add_test(tc, threads_come_and_go);
    tcase_add_test(tc, registry_full_uses_overflow);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(metrics_suite)
