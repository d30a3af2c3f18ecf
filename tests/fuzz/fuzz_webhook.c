/*
 * fuzz_webhook.c - libFuzzer target for the webhook signature parsers
 * (webhook.c): Stripe-Signature, X-Hub-Signature-256, the Standard Webhooks
 * fields and X-Shopify-Hmac-Sha256.
 *
 * The input is header fields, one "Name: value" per line, then an empty line
 * and the body. It is checked under every scheme with fixed secrets (the
 * seeds in tests/fuzz/webhook/ carry valid signatures for them). Invariants:
 * the result is one of the enum's; checking twice gives the same result; a
 * body that verifies no longer does with one more byte (the signature covers
 * every byte). Everything is freed, so leaks show up too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

#define NOW 1614265330
#define TOLERANCE_MS (100ull * 365 * 24 * 3600 * 1000) /* the seeds' timestamps pass */

static const char *const secrets[] = {
    [WEBHOOK_STRIPE] = "whsec_test_secret",
    [WEBHOOK_GITHUB] = "It's a Secret to Everybody",
    [WEBHOOK_STANDARD] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    [WEBHOOK_SHOPIFY] = "hush",
};

/* Fields up to the first empty line; returns where the body starts. */
static size_t parse_fields(const char *in, size_t len, struct header_list *h)
{
    size_t at = 0;
    while (at < len) {
        const char *line = in + at;
        const char *nl = memchr(line, '\n', len - at);
        size_t n = nl ? (size_t)(nl - line) : len - at;
        at += n + (nl != NULL);
        if (n == 0)
            break;
        const char *colon = memchr(line, ':', n);
        if (colon == NULL)
            continue;
        size_t name_len = (size_t)(colon - line);
        size_t value_len;
        const char *value = trim_ows(colon + 1, n - name_len - 1, &value_len);
        headers_add(h, line, name_len, value, value_len);
    }
    return at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct header_list h;
    headers_init(&h);
    size_t body_at = parse_fields((const char *)data, size, &h);
    size_t body_len = size - body_at;
    char *body = malloc(body_len + 1);
    memcpy(body, data + body_at, body_len);
    body[body_len] = 'x';
    for (int s = WEBHOOK_STRIPE; s <= WEBHOOK_SHOPIFY; s++) {
        char msg[128];
        struct webhook_verifier *v = webhook_verifier_new((enum webhook_scheme)s, TOLERANCE_MS);
        CHECK(webhook_add_secret(v, secrets[s], strlen(secrets[s]), msg, sizeof(msg)) == NULL);
        enum webhook_result r = webhook_verify(v, &h, body, body_len, NOW);
        CHECK(r >= WEBHOOK_VALID && r <= WEBHOOK_MISMATCH);
        CHECK(webhook_verify(v, &h, body, body_len, NOW) == r);
        if (r == WEBHOOK_VALID)
            CHECK(webhook_verify(v, &h, body, body_len + 1, NOW) == WEBHOOK_MISMATCH);
        webhook_verifier_free(v);
    }
    free(body);
    headers_clear(&h);
    return 0;
}
