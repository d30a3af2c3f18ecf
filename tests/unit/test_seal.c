/*
 * test_seal.c - records sealed at rest (seal.c): what opens, what never
 * does (a flipped byte, another key name, a key no file gives), rotation,
 * and the key files accepted and refused.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "seal.h"
#include "unit.h"

static const char PLAIN[] = "IDR1 status 201 card 4242 marker-7d3f";
static const char FP[] = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

static struct seal_key key_of(uint8_t byte)
{
    char path[] = "/tmp/idem-seal-XXXXXX";
    int fd = mkstemp(path);
    uint8_t raw[SEAL_KEY_LEN];
    memset(raw, byte, sizeof(raw));
    raw[0] = 1;
    ck_assert_int_eq(write(fd, raw, sizeof(raw)), (ssize_t)sizeof(raw));
    close(fd);
    struct seal_key k;
    char msg[256];
    ck_assert_ptr_null(seal_key_load(path, &k, msg, sizeof(msg)));
    unlink(path);
    return k;
}

static enum seal_result open_beside(const struct seal_keys *keys, const char *name, const char *fp,
                                    const char *buf, size_t len)
{
    char *plain = NULL;
    size_t plain_len = 0;
    enum seal_result r = seal_open(keys, name, fp, strlen(fp), buf, len, &plain, &plain_len, NULL);
    if (r == SEAL_OPENED) {
        ck_assert_uint_eq(plain_len, strlen(PLAIN));
        ck_assert(memcmp(plain, PLAIN, plain_len) == 0);
        free(plain);
    }
    return r;
}

static enum seal_result open_with(const struct seal_keys *keys, const char *name, const char *buf,
                                  size_t len)
{
    return open_beside(keys, name, FP, buf, len);
}

static char *seal(const struct seal_keys *keys, const char *name, size_t *len)
{
    return seal_record(keys, name, FP, strlen(FP), PLAIN, strlen(PLAIN), len);
}

START_TEST(test_roundtrip_and_tampering)
{
    struct seal_keys keys = {.keys = {key_of(0xaa)}, .n = 1};
    size_t len;
    char *sealed = seal(&keys, "idem:s:k1", &len);
    ck_assert_ptr_nonnull(sealed);
    ck_assert(seal_is_sealed(sealed, len));
    ck_assert_ptr_null(memmem(sealed, len, "marker-7d3f", 11));
    ck_assert_int_eq(open_with(&keys, "idem:s:k1", sealed, len), SEAL_OPENED);
    /* the Redis key name is associated data: a record moved elsewhere fails */
    ck_assert_int_eq(open_with(&keys, "idem:s:k2", sealed, len), SEAL_TAMPERED);
    /* and so is the fingerprint beside it: swapping it for another request's fails */
    char other_fp[] = "1f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    ck_assert_int_eq(open_beside(&keys, "idem:s:k1", other_fp, sealed, len), SEAL_TAMPERED);
    /* the name's length is bound too: "ab" + "c..." is not "abc" + "..." */
    char shifted[sizeof(FP) + 1] = "1";
    strcat(shifted, FP);
    ck_assert_int_eq(open_beside(&keys, "idem:s:k", shifted, sealed, len), SEAL_TAMPERED);
    for (size_t i = 8; i < len; i++) { /* every byte after the key id */
        sealed[i] ^= 0x01;
        ck_assert_int_eq(open_with(&keys, "idem:s:k1", sealed, len), SEAL_TAMPERED);
        sealed[i] ^= 0x01;
    }
    ck_assert_int_eq(open_with(&keys, "idem:s:k1", sealed, len - 1), SEAL_TAMPERED);
    ck_assert_int_eq(open_with(&keys, "idem:s:k1", sealed, 10), SEAL_TAMPERED);
    ck_assert_int_eq(open_with(&keys, "idem:s:k1", PLAIN, strlen(PLAIN)), SEAL_NOT_SEALED);
    /* two seals of one record differ (fresh salt) */
    size_t len2;
    char *again = seal(&keys, "idem:s:k1", &len2);
    ck_assert(len2 == len && memcmp(again, sealed, len) != 0);
    free(again);
    free(sealed);
}
END_TEST

START_TEST(test_rotation_and_unknown_keys)
{
    struct seal_key a = key_of(0xaa), b = key_of(0xbb);
    struct seal_keys only_a = {.keys = {a}, .n = 1};
    struct seal_keys b_then_a = {.keys = {b, a}, .n = 2};
    struct seal_keys only_b = {.keys = {b}, .n = 1};
    struct seal_keys none = {.n = 0};
    size_t len;
    char *old = seal(&only_a, "n", &len);
    ck_assert_int_eq(open_with(&b_then_a, "n", old, len), SEAL_OPENED);
    ck_assert_int_eq(open_with(&only_b, "n", old, len), SEAL_UNKNOWN_KEY);
    ck_assert_int_eq(open_with(&none, "n", old, len), SEAL_UNKNOWN_KEY);
    /* a forged key id that happens to name a configured key still fails */
    memcpy(old + 4, b.id, SEAL_KEY_ID_LEN);
    ck_assert_int_eq(open_with(&b_then_a, "n", old, len), SEAL_TAMPERED);
    free(old);
    char *fresh = seal(&b_then_a, "n", &len);
    ck_assert(memcmp(fresh + 4, b.id, SEAL_KEY_ID_LEN) == 0); /* the first seals */
    ck_assert_int_eq(open_with(&only_b, "n", fresh, len), SEAL_OPENED);
    free(fresh);
}
END_TEST

static const char *load(const char *content, size_t len, mode_t mode)
{
    static char msg[256];
    char path[] = "/tmp/idem-seal-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_eq(write(fd, content, len), (ssize_t)len);
    close(fd);
    chmod(path, mode);
    struct seal_key k;
    const char *err = seal_key_load(path, &k, msg, sizeof(msg));
    unlink(path);
    return err;
}

START_TEST(test_key_files)
{
    const char hex[] = "8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";
    char raw[32];
    memset(raw, 7, sizeof(raw));
    ck_assert_ptr_null(load(raw, 32, 0600));
    ck_assert_ptr_null(load(raw, 32, 0400));
    ck_assert_ptr_null(load(hex, 64, 0600));
    ck_assert_ptr_null(
        load("8F1C2D3E4F5A6B7C8D9E0F1A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D5E\n", 65, 0600));
    ck_assert_ptr_nonnull(strstr(load(raw, 32, 0640), "chmod 600"));
    ck_assert_ptr_nonnull(strstr(load(raw, 32, 0604), "chmod 600"));
    ck_assert_ptr_nonnull(strstr(load(raw, 31, 0600), "32-byte key"));
    ck_assert_ptr_nonnull(strstr(load(hex, 63, 0600), "32-byte key"));
    ck_assert_ptr_nonnull(
        strstr(load("zz1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e", 64, 0600),
               "32-byte key"));
    ck_assert_ptr_nonnull(
        strstr(load("correct horse battery staple 123", 32, 0600), "32-byte key"));
    ck_assert_ptr_nonnull(
        strstr(load("8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e", 32, 0600), "32-byte key"));
    char zero[32] = {0};
    ck_assert_ptr_nonnull(strstr(load(zero, 32, 0600), "all-zero"));
    struct seal_key k;
    char msg[256];
    ck_assert_ptr_nonnull(
        strstr(seal_key_load("/nonexistent/key", &k, msg, sizeof(msg)), "cannot read"));
}
END_TEST

START_TEST(test_keyed_fingerprints)
{
    struct seal_key a = key_of(0xaa), b = key_of(0xbb);
    char fa[65], fa2[65], fb[65];
    seal_fingerprint(&a, FP, fa);
    seal_fingerprint(&a, FP, fa2);
    seal_fingerprint(&b, FP, fb);
    ck_assert_uint_eq(strlen(fa), 64);
    ck_assert_str_eq(fa, fa2);          /* deterministic: a repeat compares equal */
    ck_assert_str_ne(fa, fb);           /* per key */
    ck_assert(memcmp(fa, FP, 64) != 0); /* not the request's own */
    ck_assert(memcmp(a.fingerprint_key, a.key, SEAL_KEY_LEN) != 0);
}
END_TEST

static Suite *seal_suite(void)
{
    Suite *s = suite_create("seal");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_roundtrip_and_tampering);
    tcase_add_test(tc, test_rotation_and_unknown_keys);
    tcase_add_test(tc, test_key_files);
    tcase_add_test(tc, test_keyed_fingerprints);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(seal_suite)
