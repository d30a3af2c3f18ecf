/*
 * test_target.c - the request-target rule (target.c): forms, normalisation,
 * and the aliases upstreams read differently, which are refused.
 */
#include <llhttp.h>
#include <string.h>

#include "target.h"
#include "unit.h"

/* Reads url as a POST target; returns the normalised url, or "400" when refused. */
static const char *read_as(const char *url, int method, char *buf, size_t cap)
{
    struct target t;
    const char *why = target_read(url, strlen(url), method, &t);
    if (why != NULL) {
        ck_assert_ptr_null(t.url);
        return "400";
    }
    ck_assert_uint_eq(strlen(t.url), t.url_len);
    ck_assert_uint_le(t.url_len + 1, cap);
    memcpy(buf, t.url, t.url_len + 1);
    free(t.url);
    return buf;
}

static const char *norm(const char *url)
{
    static char buf[512];
    return read_as(url, HTTP_POST, buf, sizeof(buf));
}

START_TEST(test_normal_paths_unchanged)
{
    const char *same[] = {"/",      "/payments",      "/payments/", "/a/b?x=1&y=%2F",
                          "/a%20b", "/%C3%A9t%C3%A9", "/a%3Bb",     "/...",
                          "/.a/b."};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
        ck_assert_str_eq(norm(same[i]), same[i]);
}
END_TEST

START_TEST(test_aliases_of_payments_become_payments)
{
    const char *aliases[] = {"//payments",
                             "/./payments",
                             "/%2e/payments",
                             "/%70ayments",
                             "/public/../payments",
                             "/public/%2e%2e/payments",
                             "/public/%2E%2E/payments",
                             "///payments",
                             "/a/./../payments",
                             "/PAYMENTS/../payments"};
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        ck_assert_msg(strcmp(norm(aliases[i]), "/payments") == 0, "%s -> %s", aliases[i],
                      norm(aliases[i]));
    ck_assert_str_eq(norm("/payments/./"), "/payments/");
    ck_assert_str_eq(norm("/payments/x/.."), "/payments/");
    ck_assert_str_eq(norm("/a//b/"), "/a/b/");
    ck_assert_str_eq(norm("/%7euser/%41"), "/~user/A");
    ck_assert_str_eq(norm("/%c3%a9"), "/%C3%A9");
    ck_assert_str_eq(norm("/a/..?q=/../x"), "/?q=/../x"); /* the query is not a path */
}
END_TEST

START_TEST(test_ambiguous_forms_are_refused)
{
    const char *refused[] = {"/%2Fpayments",
                             "/public/..%2Fpayments",
                             "/a%5Cb",
                             "/a\\b",
                             "/a%00b",
                             "/..",
                             "/a/../..",
                             "/public/%2e%2e/%2e%2e/x",
                             "/%",
                             "/%4",
                             "/%zz",
                             "/%C0%AE",
                             "/%C0%AF",
                             "/%E0%80%AE",
                             "/%C3",
                             "/%C3/%A9",
                             "/%ED%A0%80",
                             "/%FF",
                             "/..;/payments",
                             "/public/..;x/payments",
                             "/.;/payments",
                             "/a#frag",
                             "/orders;x/charge",
                             "/a;b",
                             "/x;",
                             "payments",
                             "*",
                             "http:/x",
                             "http://@x/",
                             "http://u@x/payments",
                             "http:///payments",
                             "ftp://x/payments",
                             "x.test:443"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        ck_assert_msg(strcmp(norm(refused[i]), "400") == 0, "%s -> %s", refused[i],
                      norm(refused[i]));
}
END_TEST

START_TEST(test_absolute_form_becomes_origin_form)
{
    struct target t;
    const char *url = "HTTP://Example.test:8080/public/../payments?a=1";
    ck_assert_ptr_null(target_read(url, strlen(url), HTTP_POST, &t));
    ck_assert_str_eq(t.url, "/payments?a=1");
    ck_assert_uint_eq(t.path_len, 9);
    ck_assert_uint_eq(t.authority_len, strlen("Example.test:8080"));
    ck_assert_int_eq(strncmp(t.authority, "Example.test:8080", t.authority_len), 0);
    free(t.url);
    ck_assert_str_eq(norm("https://x.test"), "/");
    ck_assert_str_eq(norm("http://x.test?q"), "/?q");
    /* origin-form has no authority */
    ck_assert_ptr_null(target_read("/a", 2, HTTP_GET, &t));
    ck_assert_ptr_null(t.authority);
    free(t.url);
}
END_TEST

START_TEST(test_asterisk_form_for_options_only)
{
    char buf[8];
    ck_assert_str_eq(read_as("*", HTTP_OPTIONS, buf, sizeof(buf)), "*");
    ck_assert_str_eq(read_as("*", HTTP_GET, buf, sizeof(buf)), "400");
}
END_TEST

START_TEST(test_normalising_twice_changes_nothing)
{
    const char *inputs[] = {"/a//b/./c/../%64", "/%7e/%2e%2e/x", "/x/", "/"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        char once[256];
        strcpy(once, norm(inputs[i]));
        ck_assert(target_is_normal(once, strlen(once)));
        ck_assert_str_eq(norm(once), once);
    }
    ck_assert(!target_is_normal("//a", 3));
    ck_assert(!target_is_normal("/a/../b", 7));
    ck_assert(!target_is_normal("/%41", 4));
}
END_TEST

START_TEST(test_host_values)
{
    const char *good[] = {"",           "api.example", "api.example:8443",      "127.0.0.1:80",
                          "[::1]:8080", "[::1]",       "xn--bcher-kva.example", "a%41b",
                          "h:"};
    const char *bad[] = {"a/payments?", "a/payments#", "a b", "a@b", "a\\b", "[::1",
                         "a:80x",       "a:80:90",     "a%4", "[]",  "a?b",  "a\"b"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(target_host_valid(good[i], strlen(good[i])), "refused: %s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!target_host_valid(bad[i], strlen(bad[i])), "accepted: %s", bad[i]);
}
END_TEST

static Suite *target_suite(void)
{
    Suite *s = suite_create("target");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_normal_paths_unchanged);
    tcase_add_test(tc, test_aliases_of_payments_become_payments);
    tcase_add_test(tc, test_ambiguous_forms_are_refused);
    tcase_add_test(tc, test_absolute_form_becomes_origin_form);
    tcase_add_test(tc, test_asterisk_form_for_options_only);
    tcase_add_test(tc, test_normalising_twice_changes_nothing);
    tcase_add_test(tc, test_host_values);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(target_suite)
