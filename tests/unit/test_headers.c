/*
 * test_headers.c - the owned header list and the hop-by-hop rules (headers.c).
 */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "headers.h"
#include "unit.h"
#include "util.h"

START_TEST(test_add_find_count)
{
    struct header_list h;
    headers_init(&h);
    ck_assert_ptr_null(headers_find(&h, "Host"));
    ck_assert_int_eq(headers_count(&h, "Host"), 0);

    headers_add_cstr(&h, "Host", "example.com");
    headers_add(&h, "Set-Cookie: junk", 10, "a=1; more", 3);
    headers_add_cstr(&h, "set-cookie", "b=2");
    headers_add_cstr(&h, "X-Empty", "");

    const struct header *f = headers_find(&h, "HOST");
    ck_assert_ptr_nonnull(f);
    ck_assert_str_eq(f->name, "Host");
    ck_assert_str_eq(f->value, "example.com");
    ck_assert_uint_eq(f->value_len, 11);

    /* counted copies are NUL-terminated at their length */
    f = headers_find(&h, "SET-COOKIE");
    ck_assert_str_eq(f->name, "Set-Cookie");
    ck_assert_uint_eq(f->name_len, 10);
    ck_assert_str_eq(f->value, "a=1");
    ck_assert_int_eq(headers_count(&h, "Set-Cookie"), 2);

    f = headers_find(&h, "x-empty");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->value_len, 0);
    ck_assert_str_eq(f->value, "");

    /* no prefix matches */
    ck_assert_ptr_null(headers_find(&h, "Hos"));
    ck_assert_ptr_null(headers_find(&h, "Host2"));
    headers_clear(&h);
    ck_assert_int_eq(h.count, 0);
}
END_TEST

START_TEST(test_grows)
{
    struct header_list h;
    headers_init(&h);
    char name[16];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "X-H%d", i);
        headers_add_cstr(&h, name, name);
    }
    ck_assert_int_eq(h.count, 100);
    ck_assert_str_eq(headers_find(&h, "x-h0")->value, "X-H0");
    ck_assert_str_eq(headers_find(&h, "x-h99")->value, "X-H99");
    headers_clear(&h);

    /* usable again after clear */
    headers_add_cstr(&h, "A", "1");
    ck_assert_int_eq(h.count, 1);
    headers_clear(&h);
}
END_TEST

START_TEST(test_remove_hop_by_hop)
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "A", "1");
    headers_add_cstr(&h, "Connection", "x-gone, keep-alive");
    headers_add_cstr(&h, "B", "3");
    headers_add_cstr(&h, "x-gone", "4");
    headers_add_cstr(&h, "Keep-Alive", "timeout=5");
    headers_add_cstr(&h, "C", "5");

    /* Judged on the whole list: x-gone comes after the Connection field naming it. */
    headers_remove_hop_by_hop(&h);
    ck_assert_int_eq(h.count, 3);
    ck_assert_int_eq(headers_count(&h, "X-Gone"), 0);
    ck_assert_int_eq(h.connection_fields, 0);
    /* order of the rest is kept */
    ck_assert_str_eq(h.items[0].name, "A");
    ck_assert_str_eq(h.items[1].name, "B");
    ck_assert_str_eq(h.items[2].name, "C");

    headers_remove_hop_by_hop(&h);
    ck_assert_int_eq(h.count, 3);
    headers_clear(&h);
}
END_TEST

START_TEST(test_append)
{
    struct header_list h;
    headers_init(&h);
    headers_add(&h, "Content-", 8, "", 0);
    headers_append_name(&h, "Type", 4);
    headers_append_value(&h, "text/", 5);
    headers_append_value(&h, "plainXXX", 5);
    headers_append_value(&h, "", 0);

    const struct header *f = headers_find(&h, "content-type");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->name_len, 12);
    ck_assert_str_eq(f->name, "Content-Type");
    ck_assert_uint_eq(f->value_len, 10);
    ck_assert_str_eq(f->value, "text/plain");

    /* appends go to the last field only */
    headers_add_cstr(&h, "X", "1");
    headers_append_value(&h, "2", 1);
    ck_assert_str_eq(headers_find(&h, "Content-Type")->value, "text/plain");
    ck_assert_str_eq(headers_find(&h, "X")->value, "12");
    headers_clear(&h);
}
END_TEST

/*
 * A field that arrives a byte per read (a slow or hostile client, llhttp
 * calling back once per read) keeps its text in memory proportional to its
 * length: each extension used to copy the whole value into a new block.
 */
START_TEST(test_append_byte_by_byte_stays_linear)
{
    enum { LEN = 16384 };
    static char want[LEN + 1];
    struct header_list h;
    headers_init(&h);
    size_t before = mallinfo2().uordblks;
    headers_add(&h, "X-", 2, "", 0);
    for (int i = 0; i < 30; i++)
        headers_append_name(&h, "n", 1);
    headers_append_value(&h, "", 0);
    for (int i = 0; i < LEN; i++) {
        want[i] = (char)('a' + i % 26);
        headers_append_value(&h, &want[i], 1);
    }
    size_t grown = mallinfo2().uordblks - before;
    const struct header *f = &h.items[0];
    ck_assert_uint_eq(f->name_len, 32);
    ck_assert_uint_eq(f->value_len, LEN);
    ck_assert_int_eq(memcmp(f->value, want, LEN), 0);
    ck_assert_int_eq(f->value[LEN], '\0');
    /* A few times the text at most (the quadratic version: over 100 MB). */
    ck_assert_msg(grown < 8 * LEN, "%zu bytes held for a %d-byte value", grown, LEN);
    headers_clear(&h);
}
END_TEST

static bool has(const char *list, const char *token)
{
    return headers_list_has_token(list, strlen(list), token);
}

START_TEST(test_list_has_token)
{
    ck_assert(has("close", "close"));
    ck_assert(has("Close", "close"));
    ck_assert(has("keep-alive, close", "CLOSE"));
    ck_assert(has("  close  ", "close"));
    ck_assert(has("\tclose\t,", "close"));
    ck_assert(has(",,close,,", "close"));
    ck_assert(has("a ,b , c", "b"));
    ck_assert(has("a,b,c", "c"));
    ck_assert(has("upgrade, X-Foo", "x-foo"));

    ck_assert(!has("", "close"));
    ck_assert(!has(" , ,", "close"));
    ck_assert(!has("closed", "close"));
    ck_assert(!has("xclose", "close"));
    ck_assert(!has("keep-alive", "close"));
    ck_assert(!has("clo se", "close"));

    /* only len bytes count */
    ck_assert(!headers_list_has_token("a, close", 5, "close"));
    ck_assert(headers_list_has_token("a, close", 8, "close"));
}
END_TEST

START_TEST(test_hop_by_hop_fixed)
{
    static const char *const hop[] = {
        "Connection",
        "keep-alive",
        "TE",
        "Trailer",
        "transfer-encoding",
        "UPGRADE",
        "Proxy-Authorization",
        "proxy-authenticate",
        "Proxy-Connection",
    };
    static const char *const end_to_end[] = {
        "Content-Type", "Content-Length", "Host",         "Trailers",      "TEX",
        "Proxy",        "Proxyx-A",       "X-Connection", "Authorization",
    };
    struct header_list all;
    headers_init(&all);
    struct header_list one;
    headers_init(&one);

    for (size_t i = 0; i < ARRAY_LEN(hop); i++)
        headers_add_cstr(&one, hop[i], "v");
    for (size_t i = 0; i < ARRAY_LEN(end_to_end); i++)
        headers_add_cstr(&one, end_to_end[i], "v");
    for (size_t i = 0; i < ARRAY_LEN(hop); i++)
        ck_assert_msg(headers_is_hop_by_hop(&all, &one.items[i]), "%s", hop[i]);
    for (size_t i = 0; i < ARRAY_LEN(end_to_end); i++)
        ck_assert_msg(!headers_is_hop_by_hop(&all, &one.items[ARRAY_LEN(hop) + i]), "%s",
                      end_to_end[i]);
    headers_clear(&one);
}
END_TEST

START_TEST(test_hop_by_hop_connection_names)
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Connection", "keep-alive, X-Secret");
    headers_add_cstr(&h, "connection", "x-other");
    headers_add_cstr(&h, "X-Secret", "1");
    headers_add_cstr(&h, "X-Other", "2");
    headers_add_cstr(&h, "X-Public", "3");

    ck_assert(headers_is_hop_by_hop(&h, headers_find(&h, "X-Secret")));
    ck_assert(headers_is_hop_by_hop(&h, headers_find(&h, "X-Other")));
    ck_assert(!headers_is_hop_by_hop(&h, headers_find(&h, "X-Public")));
    headers_clear(&h);
}
END_TEST

START_TEST(test_copy_end_to_end)
{
    struct header_list src, dst;
    headers_init(&src);
    headers_init(&dst);
    headers_add_cstr(&dst, "Existing", "kept");
    headers_add_cstr(&src, "Content-Type", "text/plain");
    headers_add_cstr(&src, "Connection", "close, X-Hop");
    headers_add_cstr(&src, "Transfer-Encoding", "chunked");
    headers_add_cstr(&src, "X-Hop", "1");
    headers_add_cstr(&src, "Proxy-Authenticate", "Basic");
    headers_add_cstr(&src, "Keep-Alive", "timeout=5");
    headers_add_cstr(&src, "Set-Cookie", "a=1");
    headers_add_cstr(&src, "Set-Cookie", "b=2");

    headers_copy_end_to_end(&dst, &src);
    ck_assert_int_eq(dst.count, 4);
    ck_assert_str_eq(dst.items[0].name, "Existing");
    ck_assert_str_eq(dst.items[1].name, "Content-Type");
    ck_assert_str_eq(dst.items[2].value, "a=1");
    ck_assert_str_eq(dst.items[3].value, "b=2");
    /* src is untouched */
    ck_assert_int_eq(src.count, 8);
    headers_clear(&src);
    headers_clear(&dst);
}
END_TEST

static Suite *headers_suite(void)
{
    Suite *s = suite_create("headers");

    TCase *tc = tcase_create("list");
    tcase_add_test(tc, test_add_find_count);
    tcase_add_test(tc, test_grows);
    tcase_add_test(tc, test_remove_hop_by_hop);
    tcase_add_test(tc, test_append);
    tcase_add_test(tc, test_append_byte_by_byte_stays_linear);
    suite_add_tcase(s, tc);

    tc = tcase_create("rules");
    tcase_add_test(tc, test_list_has_token);
    tcase_add_test(tc, test_hop_by_hop_fixed);
    tcase_add_test(tc, test_hop_by_hop_connection_names);
    tcase_add_test(tc, test_copy_end_to_end);
    suite_add_tcase(s, tc);

    return s;
}

UNIT_MAIN(headers_suite)
