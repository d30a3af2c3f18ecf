/*
 * test_json_canon.c - the canonical JSON form behind `fingerprint ... json`
 * (json_canon.c): what a retrying client may change (member order, spacing,
 * escapes, number spelling) changes nothing; any value changes it.
 */
#include <string.h>

#include "json_canon.h"
#include "unit.h"

static char *canon(const char *doc)
{
    char *out = NULL;
    size_t n;
    if (!json_canonical(doc, strlen(doc), &out, &n))
        return NULL;
    ck_assert_uint_eq(strlen(out), n);
    return out;
}

static void assert_canon(const char *doc, const char *want)
{
    char *got = canon(doc);
    ck_assert_msg(got != NULL, "not canonicalised: %s", doc);
    ck_assert_msg(strcmp(got, want) == 0, "%s -> %s, want %s", doc, got, want);
    /* idempotent */
    char *again = canon(got);
    ck_assert_str_eq(again, got);
    free(again);
    free(got);
}

START_TEST(test_forms)
{
    assert_canon(" { \"b\" : 1 , \"a\" : [ true , false , null ] } ",
                 "{\"a\":[true,false,null],\"b\":1}");
    assert_canon("{\"a\":{\"z\":1,\"y\":{\"x\":2,\"w\":3}}}",
                 "{\"a\":{\"y\":{\"w\":3,\"x\":2},\"z\":1}}");
    assert_canon("\"\\u0041\\/\\u00e9\\ud83d\\ude00\"", "\"A/\xc3\xa9\xf0\x9f\x98\x80\"");
    assert_canon("\"tab\\there\\u0001\\\"\\\\\"", "\"tab\\there\\u0001\\\"\\\\\"");
    assert_canon(
        "[1, 1.0, 10e-1, 0.1e1, 100, 1e2, 1.50, -0, 0.000, -0.5, 123456789012345678901234567890]",
        "[1,1,1,1,1e2,1e2,15e-1,0,0,-5e-1,12345678901234567890123456789e1]");
    assert_canon("{}", "{}");
    assert_canon("[]", "[]");
    assert_canon("{\"\":1,\"a\":2,\"\xc3\xa9\":3,\"B\":4}",
                 "{\"\":1,\"B\":4,\"a\":2,\"\xc3\xa9\":3}");
}
END_TEST

START_TEST(test_same_object_in_two_orders_is_one_form)
{
    char *a =
        canon("{\"amount\": 1000, \"currency\": \"usd\", \"meta\": {\"x\": 1, \"y\": [1,2]}}");
    char *b = canon("{\"meta\":{\"y\":[1,2],\"x\":1},\"currency\":\"usd\",\"amount\":1e3}");
    ck_assert_str_eq(a, b);
    /* any value, any array order, any name: another form */
    const char *others[] = {
        "{\"amount\": 1001, \"currency\": \"usd\", \"meta\": {\"x\": 1, \"y\": [1,2]}}",
        "{\"amount\": 1000, \"currency\": \"usd\", \"meta\": {\"x\": 1, \"y\": [2,1]}}",
        "{\"amount\": 1000, \"currency\": \"USD\", \"meta\": {\"x\": 1, \"y\": [1,2]}}",
        "{\"amount\": \"1000\", \"currency\": \"usd\", \"meta\": {\"x\": 1, \"y\": [1,2]}}",
        "{\"amount\": 1000, \"currency\": \"usd\", \"meta\": {\"x\": 1, \"y\": [1,2]}, \"z\": "
        "null}",
    };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        char *o = canon(others[i]);
        ck_assert_msg(o != NULL && strcmp(o, a) != 0, "%s", others[i]);
        free(o);
    }
    free(a);
    free(b);
}
END_TEST

START_TEST(test_not_json_or_ambiguous_is_refused)
{
    const char *bad[] = {"",
                         "{",
                         "{\"a\":1,\"a\":2}",
                         "{\"a\":{\"b\":1,\"b\":1}}",
                         "[1,]",
                         "\xef\xbb\xbf{}",
                         "{} {}",
                         "{'a':1}",
                         "1e99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(canon(bad[i]) == NULL, "canonicalised: %s", bad[i]);
}
END_TEST

static Suite *json_canon_suite(void)
{
    Suite *s = suite_create("json_canon");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_forms);
    tcase_add_test(tc, test_same_object_in_two_orders_is_one_form);
    tcase_add_test(tc, test_not_json_or_ambiguous_is_refused);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(json_canon_suite)
