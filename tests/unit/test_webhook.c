/*
 * test_webhook.c - webhook signature checks (webhook.c) against the examples
 * the providers publish (GitHub's "Validating webhook deliveries", the
 * Standard Webhooks test vector), and Stripe and Shopify signatures computed
 * independently (Python's hmac), then every way a signature can be wrong.
 */
#include <string.h>

#include "unit.h"
#include "webhook.h"

/* The Standard Webhooks reference libraries' test vector. */
#define STD_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define STD_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define STD_TS 1614265330
#define STD_BODY "{\"test\": 2432232314}"
#define STD_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

/* GitHub's documented example. */
#define GH_SECRET "It's a Secret to Everybody"
#define GH_BODY "Hello, World!"
#define GH_SIG "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

/* HMAC-SHA256("whsec_test_secret", "1492774577." body), by Python. */
#define STRIPE_SECRET "whsec_test_secret"
#define STRIPE_TS 1492774577
#define STRIPE_BODY "{\"id\":\"evt_test\"}"
#define STRIPE_V1 "22f7d74836ddad3284a2b80853dd2fe731655c1bfddcff3c3666a500cf3abd80"

/* base64(HMAC-SHA256("hush", body)), by Python. */
#define SHOPIFY_SECRET "hush"
#define SHOPIFY_BODY "{\"id\":1}"
#define SHOPIFY_SIG "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY="

static struct webhook_verifier *verifier(enum webhook_scheme scheme, const char *secret)
{
    char msg[128];
    struct webhook_verifier *v = webhook_verifier_new(scheme, WEBHOOK_DEFAULT_TOLERANCE_MS);
    ck_assert_ptr_null(webhook_add_secret(v, secret, strlen(secret), msg, sizeof(msg)));
    return v;
}

static enum webhook_result check(const struct webhook_verifier *v, const char *const *fields,
                                 const char *body, int64_t now)
{
    struct header_list h;
    headers_init(&h);
    for (int i = 0; fields[i] != NULL; i += 2)
        headers_add_cstr(&h, fields[i], fields[i + 1]);
    enum webhook_result r = webhook_verify(v, &h, body, strlen(body), now);
    headers_clear(&h);
    return r;
}

START_TEST(test_standard_published_vector)
{
    struct webhook_verifier *v = verifier(WEBHOOK_STANDARD, STD_SECRET);
    const char *ok[] = {
        "webhook-id", STD_ID, "webhook-timestamp", "1614265330", "webhook-signature",
        STD_SIG,      NULL};
    ck_assert_int_eq(check(v, ok, STD_BODY, STD_TS), WEBHOOK_VALID);
    ck_assert_int_eq(check(v, ok, STD_BODY, STD_TS + 299), WEBHOOK_VALID);
    ck_assert_int_eq(check(v, ok, STD_BODY, STD_TS + 301), WEBHOOK_STALE);
    ck_assert_int_eq(check(v, ok, STD_BODY, STD_TS - 301), WEBHOOK_STALE);
    ck_assert_int_eq(check(v, ok, "{\"test\": 2432232315}", STD_TS), WEBHOOK_MISMATCH);
    /* several signatures, one of another version: any v1 may match */
    const char *several[] = {"webhook-id",
                             STD_ID,
                             "webhook-timestamp",
                             "1614265330",
                             "webhook-signature",
                             "v1a,AAAA v1,Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyMTI= " STD_SIG,
                             NULL};
    ck_assert_int_eq(check(v, several, STD_BODY, STD_TS), WEBHOOK_VALID);
    const char *other_id[] = {"webhook-id", "msg_other",         "webhook-timestamp",
                              "1614265330", "webhook-signature", STD_SIG,
                              NULL};
    ck_assert_int_eq(check(v, other_id, STD_BODY, STD_TS), WEBHOOK_MISMATCH);
    const char *no_ts[] = {"webhook-id", STD_ID, "webhook-signature", STD_SIG, NULL};
    ck_assert_int_eq(check(v, no_ts, STD_BODY, STD_TS), WEBHOOK_MISSING);
    const char *bad_ts[] = {
        "webhook-id", STD_ID, "webhook-timestamp", "16142653x0", "webhook-signature",
        STD_SIG,      NULL};
    ck_assert_int_eq(check(v, bad_ts, STD_BODY, STD_TS), WEBHOOK_MALFORMED);
    webhook_verifier_free(v);
}
END_TEST

START_TEST(test_github_published_example)
{
    struct webhook_verifier *v = verifier(WEBHOOK_GITHUB, GH_SECRET);
    const char *ok[] = {"X-Hub-Signature-256", GH_SIG, NULL};
    ck_assert_int_eq(check(v, ok, GH_BODY, 0), WEBHOOK_VALID);
    ck_assert_int_eq(check(v, ok, "Hello, World?", 0), WEBHOOK_MISMATCH);
    const char *sha1[] = {"X-Hub-Signature", "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59", NULL};
    ck_assert_int_eq(check(v, sha1, GH_BODY, 0), WEBHOOK_MISSING);
    const char *twice[] = {"X-Hub-Signature-256", GH_SIG, "X-Hub-Signature-256", GH_SIG, NULL};
    ck_assert_int_eq(check(v, twice, GH_BODY, 0), WEBHOOK_MISSING);
    const char *short_hex[] = {"X-Hub-Signature-256", "sha256=757107ea", NULL};
    ck_assert_int_eq(check(v, short_hex, GH_BODY, 0), WEBHOOK_MALFORMED);
    webhook_verifier_free(v);
}
END_TEST

START_TEST(test_stripe)
{
    struct webhook_verifier *v = verifier(WEBHOOK_STRIPE, STRIPE_SECRET);
    const char *ok[] = {"Stripe-Signature", "t=1492774577,v1=" STRIPE_V1 ",v0=6ffbb59b", NULL};
    ck_assert_int_eq(check(v, ok, STRIPE_BODY, STRIPE_TS), WEBHOOK_VALID);
    ck_assert_int_eq(check(v, ok, STRIPE_BODY, STRIPE_TS + 400), WEBHOOK_STALE);
    /* the signature may be any of several v1 */
    const char *second[] = {"Stripe-Signature",
                            "t=1492774577, v1=" STRIPE_V1 "00"
                            ",v1=" STRIPE_V1,
                            NULL};
    ck_assert_int_eq(check(v, second, STRIPE_BODY, STRIPE_TS), WEBHOOK_MALFORMED);
    const char *rotated[] = {
        "Stripe-Signature",
        "t=1492774577,v1=00f7d74836ddad3284a2b80853dd2fe731655c1bfddcff3c3666a500cf3abd80,"
        "v1=" STRIPE_V1,
        NULL};
    ck_assert_int_eq(check(v, rotated, STRIPE_BODY, STRIPE_TS), WEBHOOK_VALID);
    const char *other_t[] = {"Stripe-Signature", "t=1492774578,v1=" STRIPE_V1, NULL};
    ck_assert_int_eq(check(v, other_t, STRIPE_BODY, STRIPE_TS), WEBHOOK_MISMATCH);
    const char *no_t[] = {"Stripe-Signature", "v1=" STRIPE_V1, NULL};
    ck_assert_int_eq(check(v, no_t, STRIPE_BODY, STRIPE_TS), WEBHOOK_MALFORMED);
    const char *no_v1[] = {"Stripe-Signature", "t=1492774577,v0=" STRIPE_V1, NULL};
    ck_assert_int_eq(check(v, no_v1, STRIPE_BODY, STRIPE_TS), WEBHOOK_MISSING);
    const char *none[] = {NULL};
    ck_assert_int_eq(check(v, none, STRIPE_BODY, STRIPE_TS), WEBHOOK_MISSING);
    webhook_verifier_free(v);

    /* rotation: a second secret, either one verifies */
    char msg[128];
    v = verifier(WEBHOOK_STRIPE, "whsec_new");
    ck_assert_int_eq(check(v, ok, STRIPE_BODY, STRIPE_TS), WEBHOOK_MISMATCH);
    ck_assert_ptr_null(webhook_add_secret(v, STRIPE_SECRET, strlen(STRIPE_SECRET), msg, 128));
    ck_assert_int_eq(check(v, ok, STRIPE_BODY, STRIPE_TS), WEBHOOK_VALID);
    webhook_verifier_free(v);
}
END_TEST

START_TEST(test_shopify)
{
    struct webhook_verifier *v = verifier(WEBHOOK_SHOPIFY, SHOPIFY_SECRET);
    const char *ok[] = {"X-Shopify-Hmac-Sha256", SHOPIFY_SIG, NULL};
    ck_assert_int_eq(check(v, ok, SHOPIFY_BODY, 0), WEBHOOK_VALID);
    ck_assert_int_eq(check(v, ok, "{\"id\":2}", 0), WEBHOOK_MISMATCH);
    const char *not_b64[] = {"X-Shopify-Hmac-Sha256",
                             "VnKUjZsLuN5i*WjnEntcBVCF9kMN43LglzCE1/GSeY=", NULL};
    ck_assert_int_eq(check(v, not_b64, SHOPIFY_BODY, 0), WEBHOOK_MALFORMED);
    webhook_verifier_free(v);
}
END_TEST

START_TEST(test_secrets)
{
    char msg[128];
    struct webhook_verifier *v = webhook_verifier_new(WEBHOOK_STANDARD, 300000);
    ck_assert_ptr_nonnull(webhook_add_secret(v, "MfKQ9r8G", 8, msg, sizeof(msg)));
    ck_assert_ptr_nonnull(webhook_add_secret(v, "whsec_!!", 8, msg, sizeof(msg)));
    ck_assert_ptr_null(webhook_add_secret(v, STD_SECRET, strlen(STD_SECRET), msg, sizeof(msg)));
    webhook_verifier_free(v);
    enum webhook_scheme s;
    ck_assert(webhook_scheme_parse("shopify", &s) && s == WEBHOOK_SHOPIFY);
    ck_assert(!webhook_scheme_parse("paypal", &s));
}
END_TEST

static Suite *webhook_suite(void)
{
    Suite *s = suite_create("webhook");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_standard_published_vector);
    tcase_add_test(tc, test_github_published_example);
    tcase_add_test(tc, test_stripe);
    tcase_add_test(tc, test_shopify);
    tcase_add_test(tc, test_secrets);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(webhook_suite)
