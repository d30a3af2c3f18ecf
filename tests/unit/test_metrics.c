/*
 * test_metrics.c - counters, histograms, label bounds and the Prometheus
 * text rendering of metrics.c.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "unit.h"

static const struct metrics_gauges no_gauges = {0, 0, 0, false};

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
        "# HELP idemproxy_start_time_seconds Start time of the process since the Unix epoch, "
        "in seconds.\n"
        "# TYPE idemproxy_start_time_seconds gauge\n"
        "idemproxy_start_time_seconds %s\n",
        start_line);
    ck_assert_str_eq(t, want);
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
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(metrics_suite)
