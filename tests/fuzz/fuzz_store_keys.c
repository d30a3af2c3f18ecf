/*
 * fuzz_store_keys.c - libFuzzer target for the key values of store_keys.c:
 * what a claim reads back from Redis. Anyone who can write to Redis can put
 * any bytes there, so reading must never go out of bounds, and what it
 * reads must be consistent. Broken invariants trap:
 *   - a value that reads has its fingerprint (and record, when done)
 *     inside the input;
 *   - in flight: the lease left is the expiry less unknown_ms, and a key
 *     whose expiry is at most unknown_ms reads as unknown, never in flight;
 *   - an in-flight value made from the input's owner and fingerprint reads
 *     back with that fingerprint.
 *
 * The first 8 input bytes are the expiry (PTTL, signed); the rest is the
 * value. Build and run: make fuzz (corpus tests/fuzz/store_keys/).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_store_keys.c:%d: CHECK(%s) failed\n", __LINE__, #cond);          \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static bool inside(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && p + n <= base + len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    int64_t pttl;
    memcpy(&pttl, data, sizeof(pttl));
    pttl = pttl < -1 ? -1 : pttl % (INT64_C(1) << 50);
    size_t len = size - 8;
    char *v = malloc(len + 1); /* exactly the value: ASan sees any overread */
    memcpy(v, data + 8, len);
    struct claim_result r;
    if (keys_read_value(v, len, pttl, &r) == IDEM_OK) {
        CHECK(inside(r.fingerprint, r.fingerprint_len, v, len));
        CHECK(memchr(r.fingerprint, ':', r.fingerprint_len) == NULL);
        if (r.state == KEY_STATE_DONE)
            CHECK(inside(r.record, r.record_len, v, len));
        if (r.state == KEY_STATE_INFLIGHT && pttl >= 0)
            CHECK(r.pttl_ms > 0);
        CHECK(r.state == KEY_STATE_INFLIGHT || r.state == KEY_STATE_UNKNOWN ||
              r.state == KEY_STATE_DONE);
    }
    /* made from the input: an owner of 32 bytes and a fingerprint, no ':' or NUL */
    if (len >= 33) {
        char owner[33], fp[64];
        size_t fplen = len - 32 < sizeof(fp) - 1 ? len - 32 : sizeof(fp) - 1;
        for (int i = 0; i < 32; i++)
            owner[i] = (char)('a' + (v[i] & 15));
        owner[32] = '\0';
        for (size_t i = 0; i < fplen; i++)
            fp[i] = (char)('0' + (v[32 + i] & 31));
        fp[fplen] = '\0';
        for (size_t i = 0; i < fplen; i++)
            if (fp[i] == ':')
                fp[i] = '_';
        uint64_t unknown_ms = (uint64_t)(pttl < 0 ? 0 : pttl) / 2;
        char *made = keys_inflight_value(owner, fp, unknown_ms);
        struct claim_result m;
        CHECK(keys_read_value(made, strlen(made), pttl, &m) == IDEM_OK);
        CHECK(m.fingerprint_len == fplen && memcmp(m.fingerprint, fp, fplen) == 0);
        CHECK(m.state == (pttl < 0 || (uint64_t)pttl > unknown_ms ? KEY_STATE_INFLIGHT
                                                                  : KEY_STATE_UNKNOWN));
        free(made);
    }
    free(v);
    return 0;
}
