/*
 * test_record.c - the stored-response wire format (record.c): round trips,
 * the exact version-1 bytes, and a decoder that refuses every malformed input.
 */
#include <stdint.h>
#include <string.h>

#include "record.h"
#include "unit.h"

/* Encodes a small but complete record: two headers, a body with a NUL. */
static char *sample_encoding(size_t *len)
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Content-Type", "application/json");
    headers_add_cstr(&h, "X-Empty", "");
    char *buf = record_encode(201, false, &h, "{\"id\":\0 7}", 10, len);
    headers_clear(&h);
    return buf;
}

START_TEST(test_roundtrip)
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Content-Type", "application/json");
    headers_add_cstr(&h, "Set-Cookie", "a=1");
    headers_add_cstr(&h, "set-cookie", "b=2");
    headers_add_cstr(&h, "X-Empty", "");
    headers_add(&h, "X-Bin", 5, "\x00\xff\r\n\x80", 5);
    const char body[] = "\x00\x01\x02\xfe\xff binary \x00";
    size_t body_len = sizeof(body) - 1;

    size_t len = 0;
    char *buf = record_encode(201, false, &h, body, body_len, &len);
    ck_assert_ptr_nonnull(buf);

    struct record rec;
    ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_OK);
    ck_assert_int_eq(rec.status, 201);
    ck_assert(!rec.body_omitted);
    ck_assert_int_eq(rec.headers.count, h.count);
    for (int i = 0; i < h.count; i++) {
        const struct header *a = &h.items[i], *b = &rec.headers.items[i];
        ck_assert_uint_eq(a->name_len, b->name_len);
        ck_assert_uint_eq(a->value_len, b->value_len);
        ck_assert_mem_eq(a->name, b->name, a->name_len);
        ck_assert_mem_eq(a->value, b->value, a->value_len);
    }
    ck_assert_uint_eq(rec.body_len, body_len);
    ck_assert_mem_eq(rec.body, body, body_len);

    record_free(&rec);
    free(buf);
    headers_clear(&h);
}
END_TEST

START_TEST(test_roundtrip_empty_omitted)
{
    struct header_list h;
    headers_init(&h);

    size_t len = 0;
    char *buf = record_encode(204, false, &h, NULL, 0, &len);
    ck_assert_ptr_nonnull(buf);
    struct record rec;
    ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_OK);
    ck_assert_int_eq(rec.status, 204);
    ck_assert(!rec.body_omitted);
    ck_assert_int_eq(rec.headers.count, 0);
    ck_assert_uint_eq(rec.body_len, 0);
    record_free(&rec);
    free(buf);

    /* omitted: status and headers only; Date and Content-Length are never stored */
    headers_add_cstr(&h, "Content-Length", "5000000");
    headers_add_cstr(&h, "date", "Thu, 26 Nov 2026 13:00:00 GMT");
    headers_add_cstr(&h, "ETag", "\"v1\"");
    buf = record_encode(200, true, &h, NULL, 0, &len);
    ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_OK);
    ck_assert_int_eq(rec.status, 200);
    ck_assert(rec.body_omitted);
    ck_assert_int_eq(rec.headers.count, 1);
    ck_assert_str_eq(rec.headers.items[0].name, "ETag");
    ck_assert_str_eq(rec.headers.items[0].value, "\"v1\"");
    ck_assert_uint_eq(rec.body_len, 0);
    record_free(&rec);
    free(buf);
    headers_clear(&h);
}
END_TEST

START_TEST(test_wire_bytes)
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "A", "bc");
    size_t len = 0;
    char *buf = record_encode(0x1f4, true, &h, "xy", 2, &len);
    static const unsigned char want[] = {
        'I', 'D', 'R', '1', 0x01, 0xf4, 0x01, 0, 0, 0,   1,   /* head */
        0,   0,   0,   1,   'A',  0,    0,    0, 2, 'b', 'c', /* header */
        0,   0,   0,   2,   'x',  'y',                        /* body */
    };
    ck_assert_uint_eq(len, sizeof(want));
    ck_assert_mem_eq(buf, want, sizeof(want));
    free(buf);
    headers_clear(&h);
}
END_TEST

START_TEST(test_encode_unrepresentable)
{
    struct header_list h;
    headers_init(&h);
    size_t len = 0;
    ck_assert_ptr_null(record_encode(-1, false, &h, NULL, 0, &len));
    ck_assert_ptr_null(record_encode(65536, false, &h, NULL, 0, &len));
}
END_TEST

START_TEST(test_truncated_prefixes)
{
    size_t len = 0;
    char *buf = sample_encoding(&len);
    struct record rec;
    ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_OK);
    record_free(&rec);

    /* every proper prefix, copied so ASan sees any read past its end */
    for (size_t n = 0; n < len; n++) {
        char *prefix = malloc(n ? n : 1);
        memcpy(prefix, buf, n);
        ck_assert_msg(record_decode(prefix, n, &rec) == IDEM_ERR, "prefix of %zu bytes decoded", n);
        /* a failed decode leaves nothing to free, and freeing again is safe */
        ck_assert_int_eq(rec.headers.count, 0);
        ck_assert_ptr_null(rec.body);
        record_free(&rec);
        free(prefix);
    }
    free(buf);
}
END_TEST

START_TEST(test_trailing_byte)
{
    size_t len = 0;
    char *buf = sample_encoding(&len);
    char *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    struct record rec;
    ck_assert_int_eq(record_decode(longer, len + 1, &rec), IDEM_ERR);
    free(longer);
    free(buf);
}
END_TEST

START_TEST(test_bad_magic)
{
    size_t len = 0;
    char *buf = sample_encoding(&len);
    struct record rec;
    for (size_t i = 0; i < 4; i++) {
        buf[i] ^= 0x20;
        ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_ERR);
        buf[i] ^= 0x20;
    }
    buf[3] = '2'; /* another version */
    ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_ERR);
    free(buf);
}
END_TEST

START_TEST(test_unknown_flag)
{
    size_t len = 0;
    char *buf = sample_encoding(&len);
    struct record rec;
    buf[6] = 0x02;
    ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_ERR);
    free(buf);
}
END_TEST

static void put_u32_at(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* Offsets into sample_encoding(): nheaders, first name_len, first value_len, body_len. */
START_TEST(test_huge_lengths)
{
    static const uint32_t huge[] = {0xffffffffu, 0x80000000u, 0x7fffffffu, 0x10000u};
    size_t len = 0;
    char *orig = sample_encoding(&len);
    /* head 11, "Content-Type" 4+12, "application/json" 4+16, "X-Empty" 4+7, "" 4, body */
    const size_t offsets[] = {7, 11, 27, 47, 58, 62};
    struct record rec;

    for (size_t i = 0; i < ARRAY_LEN(offsets); i++) {
        for (size_t j = 0; j < ARRAY_LEN(huge); j++) {
            char *buf = malloc(len);
            memcpy(buf, orig, len);
            put_u32_at(buf + offsets[i], huge[j]);
            ck_assert_msg(record_decode(buf, len, &rec) == IDEM_ERR,
                          "length 0x%x at offset %zu decoded", (unsigned)huge[j], offsets[i]);
            free(buf);
        }
    }

    /* a length only one more than it should be is also caught */
    for (size_t i = 1; i < ARRAY_LEN(offsets); i++) {
        char *buf = malloc(len);
        memcpy(buf, orig, len);
        uint32_t v = (uint32_t)(unsigned char)buf[offsets[i] + 3];
        buf[offsets[i] + 3] = (char)(v + 1);
        ck_assert_int_eq(record_decode(buf, len, &rec), IDEM_ERR);
        free(buf);
    }
    free(orig);
}
END_TEST

START_TEST(test_sample_offsets)
{
    /* keeps the offsets used by test_huge_lengths honest */
    size_t len = 0;
    char *buf = sample_encoding(&len);
    ck_assert_uint_eq(len, 76);
    ck_assert_mem_eq(buf + 11,
                     "\0\0\0\x0c"
                     "Content-Type",
                     16);
    ck_assert_mem_eq(buf + 27,
                     "\0\0\0\x10"
                     "application/json",
                     20);
    ck_assert_mem_eq(buf + 47,
                     "\0\0\0\x07"
                     "X-Empty",
                     11);
    ck_assert_mem_eq(buf + 58, "\0\0\0\0", 4);
    ck_assert_mem_eq(buf + 62, "\0\0\0\x0a", 4);
    free(buf);
}
END_TEST

static Suite *record_suite(void)
{
    Suite *s = suite_create("record");

    TCase *tc = tcase_create("encode");
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_roundtrip_empty_omitted);
    tcase_add_test(tc, test_wire_bytes);
    tcase_add_test(tc, test_encode_unrepresentable);
    suite_add_tcase(s, tc);

    tc = tcase_create("decode");
    tcase_add_test(tc, test_truncated_prefixes);
    tcase_add_test(tc, test_trailing_byte);
    tcase_add_test(tc, test_bad_magic);
    tcase_add_test(tc, test_unknown_flag);
    tcase_add_test(tc, test_sample_offsets);
    tcase_add_test(tc, test_huge_lengths);
    suite_add_tcase(s, tc);

    return s;
}

UNIT_MAIN(record_suite)
