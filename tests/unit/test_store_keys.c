/*
 * test_store_keys.c - the key values of store_keys.c: what each state reads
 * as, the lease read from the expiry left (an in-flight key whose lease ran
 * out is unknown), and values that are not ours refused.
 */
#include <stdlib.h>
#include <string.h>

#include "store_keys.h"
#include "unit.h"

#define OWNER "0123456789abcdef0123456789abcdef"
#define FP "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

START_TEST(test_inflight_lease_alive)
{
    char *v = keys_inflight_value(OWNER, FP, 86400000);
    ck_assert_str_eq(v, "i0:" OWNER ":" FP ":86400000");
    struct claim_result r;
    /* 60 s lease, 10 s of it gone: 50 s left, then a day of unknown */
    ck_assert_int_eq(keys_read_value(v, strlen(v), 86400000 + 50000, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_INFLIGHT);
    ck_assert_int_eq(r.pttl_ms, 50000);
    ck_assert_uint_eq(r.fingerprint_len, strlen(FP));
    ck_assert(memcmp(r.fingerprint, FP, strlen(FP)) == 0);
    free(v);
}
END_TEST

START_TEST(test_inflight_lease_run_out_is_unknown)
{
    char *v = keys_inflight_value(OWNER, FP, 5000);
    struct claim_result r;
    ck_assert_int_eq(keys_read_value(v, strlen(v), 5000, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_UNKNOWN);
    ck_assert_int_eq(r.pttl_ms, 5000);
    ck_assert_int_eq(keys_read_value(v, strlen(v), 1, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_UNKNOWN);
    ck_assert_int_eq(keys_read_value(v, strlen(v), 5001, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_INFLIGHT);
    ck_assert_int_eq(r.pttl_ms, 1);
    /* the expiry not asked (native claim): in flight */
    ck_assert_int_eq(keys_read_value(v, strlen(v), -1, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_INFLIGHT);
    free(v);
}
END_TEST

START_TEST(test_waited_inflight)
{
    const char *v = "i1:" OWNER ":" FP ":1000";
    struct claim_result r;
    ck_assert_int_eq(keys_read_value(v, strlen(v), 3000, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_INFLIGHT);
    ck_assert_int_eq(r.pttl_ms, 2000);
}
END_TEST

START_TEST(test_unknown)
{
    char *v = keys_unknown_value(FP);
    ck_assert_str_eq(v, "u:" FP);
    struct claim_result r;
    ck_assert_int_eq(keys_read_value(v, strlen(v), 1234, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_UNKNOWN);
    ck_assert_int_eq(r.pttl_ms, 1234);
    ck_assert_uint_eq(r.fingerprint_len, strlen(FP));
    free(v);
}
END_TEST

START_TEST(test_done_keeps_record_bytes)
{
    char prefix[128];
    ck_assert_uint_le(keys_done_prefix_len(FP), sizeof(prefix));
    size_t n = keys_done_prefix(FP, prefix);
    ck_assert_uint_eq(n, keys_done_prefix_len(FP));
    ck_assert(memcmp(prefix, "d:" FP ":", n) == 0 && n == strlen("d:" FP ":"));
    char v[256];
    memcpy(v, prefix, n);
    memcpy(v + n, "R\0:x", 4); /* a record may hold ':' and NUL */
    struct claim_result r;
    ck_assert_int_eq(keys_read_value(v, n + 4, -1, &r), IDEM_OK);
    ck_assert_int_eq(r.state, KEY_STATE_DONE);
    ck_assert_uint_eq(r.record_len, 4);
    ck_assert(memcmp(r.record, "R\0:x", 4) == 0);
    ck_assert_uint_eq(r.fingerprint_len, strlen(FP));
}
END_TEST

START_TEST(test_foreign_values_refused)
{
    static const char *const bad[] = {
        "",
        "x",
        "1",
        "hello",
        "i0:short:" FP ":1",
        "i0:" OWNER ":" FP,
        "i0:" OWNER ":" FP ":",
        "i0:" OWNER ":" FP ":12a",
        "i0:" OWNER ":" FP ":99999999999999999999999",
        "u:" FP ":extra",
        "d:" FP,
        "q:" FP,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct claim_result r;
        ck_assert_msg(keys_read_value(bad[i], strlen(bad[i]), 100, &r) == IDEM_ERR, "accepted %s",
                      bad[i]);
    }
}
END_TEST

START_TEST(test_legacy_states)
{
    enum key_state s;
    ck_assert_int_eq(keys_read_legacy_state("inflight", &s), IDEM_OK);
    ck_assert_int_eq(s, KEY_STATE_INFLIGHT);
    ck_assert_int_eq(keys_read_legacy_state("done", &s), IDEM_OK);
    ck_assert_int_eq(s, KEY_STATE_DONE);
    ck_assert_int_eq(keys_read_legacy_state("unknown", &s), IDEM_OK);
    ck_assert_int_eq(s, KEY_STATE_UNKNOWN);
    ck_assert_int_eq(keys_read_legacy_state("", &s), IDEM_ERR);
}
END_TEST

static Suite *store_keys_suite(void)
{
    Suite *s = suite_create("store_keys");
    TCase *tc = tcase_create("values");
    tcase_add_test(tc, test_inflight_lease_alive);
    tcase_add_test(tc, test_inflight_lease_run_out_is_unknown);
    tcase_add_test(tc, test_waited_inflight);
    tcase_add_test(tc, test_unknown);
    tcase_add_test(tc, test_done_keeps_record_bytes);
    tcase_add_test(tc, test_foreign_values_refused);
    tcase_add_test(tc, test_legacy_states);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(store_keys_suite)
