/*
 * fuzz_keysource.c - libFuzzer target for the key-source parsers
 * (keysource.c) and the dispatcher that uses them (policy.c).
 *
 * The input is used three ways:
 *   - as a JSON body, resolved through a fixed set of pointers, and through
 *     the pointer given by its first line when it has one ("/a/0\n{...}");
 *   - as a query string / form body, looked up for a fixed set of names;
 *   - as both at once, through policy_extract_key_from with every kind of source.
 * Invariants are checked and broken ones trap: validation and lookup agree,
 * a value found is NUL-terminated and no longer than its input, a key found
 * is acceptable. The canonical JSON form (json_canon.c, `fingerprint json`)
 * is itself valid JSON, canonicalises to itself, and keeps what the
 * pointers find (a string or a number with the same value); an object whose
 * members are listed in reverse canonicalises the same. Everything returned
 * is freed, so leaks show up too.
 *
 * Build (from the repository root):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -I/usr/share/include/llhttp \
 *     tests/fuzz/fuzz_keysource.c src/keysource.c src/policy.c src/headers.c src/util.c \
 *     $(pkg-config --cflags --libs openssl) -o fuzz_keysource
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json_canon.h"
#include "keysource.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static const char *const pointers[] = {
    "", "/", "//", "/id", "/a", "/a/0", "/a/b/c", "/0", "/0/0", "/1/id", "/~0~1", "/a~1b", "/-",
};

static const char *const names[] = {"key", "id", "a", "k y", "a&b", "="};

static void fuzz_json(const char *doc, size_t len, const char *pointer, bool valid)
{
    char *value = NULL;
    size_t vlen = 0;
    enum ks_result r = keysource_json(doc, len, pointer, &value, &vlen);
    CHECK((r == KS_MALFORMED) == !valid);
    if (r == KS_FOUND) {
        CHECK(value != NULL && vlen <= len && value[vlen] == '\0');
    } else {
        CHECK(value == NULL);
    }
    free(value);
}

static void fuzz_param(const char *text, size_t len, const char *name)
{
    char *value = NULL;
    size_t vlen = 0;
    enum ks_result r = keysource_param(text, len, name, &value, &vlen);
    if (r == KS_FOUND) {
        CHECK(value != NULL && vlen <= len && value[vlen] == '\0');
    } else {
        CHECK(value == NULL);
    }
    free(value);
}

static void fuzz_policy(const char *text, size_t len, const char *pointer)
{
    static const char *const content_types[] = {
        NULL,
        "application/json",
        "application/x-www-form-urlencoded",
    };
    struct policy p;
    memset(&p, 0, sizeof(p));
    p.keys[p.nkeys++] = (struct key_source){KEY_SOURCE_QUERY, (char *)"key"};
    p.keys[p.nkeys++] = (struct key_source){KEY_SOURCE_FORM, (char *)"id"};
    p.keys[p.nkeys++] = (struct key_source){KEY_SOURCE_JSON, (char *)pointer};
    p.keys[p.nkeys++] = (struct key_source){KEY_SOURCE_TOKEN, NULL};
    p.keys[p.nkeys++] = (struct key_source){KEY_SOURCE_HEADER, (char *)"Idempotency-Key"};

    for (size_t i = 0; i < sizeof(content_types) / sizeof(content_types[0]); i++) {
        struct header_list h;
        headers_init(&h);
        if (content_types[i] != NULL)
            headers_add_cstr(&h, "Content-Type", content_types[i]);
        /* the input also as header values, for the header and token sources */
        headers_add(&h, "Idempotency-Token", 17, text, len);
        headers_add(&h, "Idempotency-Key", 15, text, len);

        struct request_view v;
        memset(&v, 0, sizeof(v));
        v.method_name = "POST";
        v.path = "/";
        v.path_len = 1;
        v.query = text;
        v.query_len = len;
        v.body = text;
        v.body_len = len;
        v.headers = &h;
        v.token_header = "Idempotency-Token";

        char *key = NULL;
        enum key_source_kind kind = KEY_SOURCE_NONE;
        enum key_result r = policy_extract_key_from(&p, &v, &key, &kind);
        if (r == KEY_FOUND) {
            size_t n = strlen(key);
            CHECK(n >= 1 && n <= POLICY_MAX_KEY_LEN);
            CHECK(kind != KEY_SOURCE_NONE);
        } else {
            CHECK(key == NULL);
            CHECK((r == KEY_ABSENT) == (kind == KEY_SOURCE_NONE));
        }
        free(key);
        headers_clear(&h);
    }
}

/* The canonical form: valid, a fixed point, and invalid input has none. */
static void fuzz_canonical(const char *doc, size_t len, bool valid)
{
    char *canon;
    size_t n;
    if (!json_canonical(doc, len, &canon, &n))
        return;
    CHECK(valid);
    CHECK(canon[n] == '\0' && keysource_json_valid(canon, n));
    char *again;
    size_t m;
    CHECK(json_canonical(canon, n, &again, &m));
    CHECK(m == n && memcmp(again, canon, n) == 0);
    free(again);
    /* the same members in reverse order: one form (top-level objects whose
     * members are plain "name":value pairs split at top-level commas) */
    if (n > 2 && canon[0] == '{') {
        size_t cuts[64], ncuts = 0;
        int depth = 0;
        bool in_string = false;
        for (size_t i = 1; i + 1 < n && ncuts < 64; i++) {
            char c = canon[i];
            if (in_string) {
                if (c == '\\')
                    i++;
                else if (c == '"')
                    in_string = false;
            } else if (c == '"') {
                in_string = true;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                depth--;
            } else if (c == ',' && depth == 0) {
                cuts[ncuts++] = i;
            }
        }
        if (ncuts > 0 && ncuts < 64) {
            char *rev = malloc(n + 1);
            CHECK(rev != NULL);
            size_t at = 0, end = n - 1;
            rev[at++] = '{';
            for (size_t k = ncuts + 1; k-- > 0;) {
                size_t start = k == 0 ? 1 : cuts[k - 1] + 1;
                size_t stop = k == ncuts ? end : cuts[k];
                if (at > 1)
                    rev[at++] = ',';
                memcpy(rev + at, canon + start, stop - start);
                at += stop - start;
            }
            rev[at++] = '}';
            char *back;
            size_t b;
            CHECK(json_canonical(rev, at, &back, &b));
            CHECK(b == n && memcmp(back, canon, n) == 0);
            free(back);
            free(rev);
        }
    }
    free(canon);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    bool valid = keysource_json_valid(text, size);
    fuzz_canonical(text, size, valid);

    for (size_t i = 0; i < sizeof(pointers) / sizeof(pointers[0]); i++)
        fuzz_json(text, size, pointers[i], valid);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        fuzz_param(text, size, names[i]);

    /* "pointer\nbody": the fuzzer picks the pointer too */
    const char *nl = memchr(text, '\n', size < 256 ? size : 256);
    char *pointer = NULL;
    if (nl != NULL && memchr(text, '\0', (size_t)(nl - text)) == NULL) {
        size_t plen = (size_t)(nl - text);
        pointer = malloc(plen + 1);
        CHECK(pointer != NULL);
        memcpy(pointer, text, plen);
        pointer[plen] = '\0';
        const char *rest = nl + 1;
        size_t rest_len = size - plen - 1;
        fuzz_json(rest, rest_len, pointer, keysource_json_valid(rest, rest_len));
        fuzz_param(rest, rest_len, pointer);
    }

    char *decoded = malloc(size + 1);
    CHECK(decoded != NULL);
    size_t dlen = 0;
    if (keysource_percent_decode(text, size, decoded, &dlen))
        CHECK(dlen <= size);
    free(decoded);

    (void)keysource_media_type_is_json(text, size);
    (void)keysource_media_type_is(text, size, "application/x-www-form-urlencoded");

    fuzz_policy(text, size, pointer != NULL ? pointer : "/id");
    free(pointer);
    return 0;
}
