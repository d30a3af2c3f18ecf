/*
 * fuzz_target.c - libFuzzer target for the request-target rule (target.c).
 *
 * The first input byte picks the method (OPTIONS when odd, else POST); the
 * rest is a request-target. Broken invariants trap:
 *   - a target that is read has a normal path (target_is_normal): no "//",
 *     no "." or ".." segment, no escape of an unreserved character;
 *   - reading it again gives it back unchanged (normalising is idempotent),
 *     and it is origin-form (or "*" for OPTIONS);
 *   - the query is the input's, byte for byte;
 *   - nothing that decodes to '/', '\' or NUL survives in the path.
 *
 * Build and run: make fuzz (corpus tests/fuzz/target/).
 */
#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_target.c:%d: CHECK(%s) failed\n", __LINE__, #cond);              \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int method = (data[0] & 1) ? HTTP_OPTIONS : HTTP_POST;
    /* as http.c hands it over: NUL-terminated, visible ASCII (anything else is refused earlier) */
    size_t len = size - 1;
    char *url = malloc(len + 1);
    CHECK(url != NULL);
    memcpy(url, data + 1, len);
    url[len] = '\0';
    for (size_t i = 0; i < len; i++)
        if (url[i] <= 0x20 || url[i] >= 0x7f) {
            free(url);
            return 0;
        }
    struct target t;
    const char *why = target_read(url, len, method, &t);
    if (why != NULL) {
        CHECK(t.url == NULL);
        free(url);
        return 0;
    }
    CHECK(t.url != NULL && t.url[t.url_len] == '\0' && t.path_len <= t.url_len);
    if (t.url_len == 1 && t.url[0] == '*') {
        CHECK(method == HTTP_OPTIONS);
    } else {
        CHECK(target_is_normal(t.url, t.path_len));
        for (size_t i = 0; i + 2 < t.path_len; i++)
            if (t.url[i] == '%')
                CHECK(strncasecmp(t.url + i, "%2F", 3) != 0 &&
                      strncasecmp(t.url + i, "%5C", 3) != 0 && strncmp(t.url + i, "%00", 3) != 0);
        CHECK(memchr(t.url, '\\', t.path_len) == NULL);
        /* the query is the input's */
        const char *q = memchr(url, '?', len);
        size_t qlen = q ? len - (size_t)(q - url) : 0;
        CHECK(t.url_len - t.path_len == qlen);
        CHECK(qlen == 0 || memcmp(t.url + t.path_len, q, qlen) == 0);
        /* idempotent */
        struct target again;
        CHECK(target_read(t.url, t.url_len, method, &again) == NULL);
        CHECK(again.url_len == t.url_len && memcmp(again.url, t.url, t.url_len) == 0);
        CHECK(again.authority == NULL);
        free(again.url);
    }
    free(t.url);
    free(url);
    return 0;
}
