/*
 * webhook.c - webhook signatures checked before the claim (SPEC §11); the
 * schemes are listed in webhook.h.
 *
 *   secret file --webhook_load_secrets()--> verifier (scheme, secrets,
 *                                           tolerance), one per route
 *   request head + body --webhook_verify()--> valid, or why not
 *
 * Each scheme is one function that finds its fields, parses them into the
 * signed prefix (what precedes the body in the MAC) and the candidate MACs,
 * and hands both to match(), which tries every secret against every
 * candidate in constant time. Pure but for OpenSSL and the secret file.
 */
#include "webhook.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define MAC_LEN 32
#define MAX_CANDIDATES 8 /* signatures in one field: more is malformed */
#define MAX_PREFIX 512   /* "ID.TIMESTAMP." at most */
#define SECRET_FILE_MAX 4096
#define SECRET_MAX 256

static const char *const scheme_names[] = {
    [WEBHOOK_STRIPE] = "stripe",
    [WEBHOOK_GITHUB] = "github",
    [WEBHOOK_STANDARD] = "standard",
    [WEBHOOK_SHOPIFY] = "shopify",
};

bool webhook_scheme_parse(const char *name, enum webhook_scheme *out)
{
    for (size_t i = 0; i < ARRAY_LEN(scheme_names); i++)
        if (strcmp(name, scheme_names[i]) == 0) {
            *out = (enum webhook_scheme)i;
            return true;
        }
    return false;
}

const char *webhook_scheme_name(enum webhook_scheme scheme)
{
    return scheme_names[scheme];
}

bool webhook_scheme_has_timestamp(enum webhook_scheme scheme)
{
    return scheme == WEBHOOK_STRIPE || scheme == WEBHOOK_STANDARD;
}

/* ---- encodings ---------------------------------------------------------- */

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64, padded or not, into at most cap bytes; -1 if malformed. */
static long base64_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    while (len > 0 && s[len - 1] == '=')
        len--;
    for (size_t i = 0; i < len; i++) {
        int v = base64_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap)
                return -1;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return len % 4 == 1 ? -1 : (long)n;
}

/* ---- secrets ------------------------------------------------------------ */

struct webhook_verifier *webhook_verifier_new(enum webhook_scheme scheme, uint64_t tolerance_ms)
{
    struct webhook_verifier *v = xcalloc(1, sizeof(*v));
    v->scheme = scheme;
    v->tolerance_s = (int64_t)(tolerance_ms / 1000);
    return v;
}

const char *webhook_add_secret(struct webhook_verifier *v, const char *text, size_t len, char *msg,
                               size_t msglen)
{
    static const char whsec[] = "whsec_";
    uint8_t bytes[SECRET_MAX];
    long n = (long)len;
    if (v->nsecrets == WEBHOOK_MAX_SECRETS) {
        snprintf(msg, msglen, "at most %d secrets", WEBHOOK_MAX_SECRETS);
        return msg;
    }
    if (len == 0 || len > SECRET_MAX) {
        snprintf(msg, msglen, "a secret must be 1 to %d bytes", SECRET_MAX);
        return msg;
    }
    if (v->scheme == WEBHOOK_STANDARD) {
        /* The key is what follows "whsec_", in base64. */
        if (len <= sizeof(whsec) - 1 || memcmp(text, whsec, sizeof(whsec) - 1) != 0 ||
            (n = base64_decode(text + sizeof(whsec) - 1, len - (sizeof(whsec) - 1), bytes,
                               sizeof(bytes))) <= 0) {
            snprintf(msg, msglen, "a standard webhook secret is \"whsec_\" and base64");
            return msg;
        }
    } else {
        memcpy(bytes, text, len);
    }
    struct webhook_secret *s = &v->secrets[v->nsecrets++];
    s->bytes = xmalloc((size_t)n);
    s->len = (size_t)n;
    memcpy(s->bytes, bytes, (size_t)n);
    OPENSSL_cleanse(bytes, sizeof(bytes));
    return NULL;
}

const char *webhook_load_secrets(struct webhook_verifier *v, const char *path, char *msg,
                                 size_t msglen)
{
    char buf[SECRET_FILE_MAX + 1];
    size_t n = 0;
    const char *err = read_private_file(path, buf, sizeof(buf), &n, msg, msglen);
    if (err == NULL && n > SECRET_FILE_MAX) {
        snprintf(msg, msglen, "\"%s\" is larger than %d bytes", path, SECRET_FILE_MAX);
        err = msg;
    }
    for (size_t at = 0; err == NULL && at < n;) {
        const char *line = buf + at;
        const char *nl = memchr(line, '\n', n - at);
        size_t len = nl ? (size_t)(nl - line) : n - at;
        at += len + 1;
        line = trim_ows(line, len, &len);
        if (len > 0 && line[len - 1] == '\r')
            line = trim_ows(line, len - 1, &len);
        if (len == 0)
            continue;
        char why[128];
        if (webhook_add_secret(v, line, len, why, sizeof(why)) != NULL) {
            snprintf(msg, msglen, "\"%s\": %s", path, why);
            err = msg;
        }
    }
    if (err == NULL && v->nsecrets == 0) {
        snprintf(msg, msglen, "\"%s\" holds no secret", path);
        err = msg;
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    if (err == NULL) {
        free(v->secret_file);
        v->secret_file = xstrdup(path);
    }
    return err;
}

void webhook_verifier_free(struct webhook_verifier *v)
{
    if (v == NULL)
        return;
    for (int i = 0; i < v->nsecrets; i++) {
        OPENSSL_cleanse(v->secrets[i].bytes, v->secrets[i].len);
        free(v->secrets[i].bytes);
    }
    free(v->secret_file);
    free(v);
}

/* ---- checking ----------------------------------------------------------- */

/* What a scheme's fields said: the bytes signed before the body, and the
 * MACs offered. */
struct offer {
    char prefix[MAX_PREFIX];
    size_t prefix_len;
    uint8_t macs[MAX_CANDIDATES][MAC_LEN];
    int nmacs;
    int64_t timestamp; /* -1: the scheme signs none */
};

/* Fetched once: OpenSSL 3 looks an algorithm up by name at every fetch. */
static EVP_MAC *hmac;
static pthread_once_t hmac_fetched = PTHREAD_ONCE_INIT;

static void fetch_hmac(void)
{
    hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

static bool hmac_sha256(const struct webhook_secret *secret, const struct offer *o,
                        const char *body, size_t body_len, uint8_t out[MAC_LEN])
{
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    pthread_once(&hmac_fetched, fetch_hmac);
    EVP_MAC_CTX *ctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
    size_t n = 0;
    bool ok = ctx != NULL && EVP_MAC_init(ctx, secret->bytes, secret->len, params) == 1 &&
              EVP_MAC_update(ctx, (const uint8_t *)o->prefix, o->prefix_len) == 1 &&
              EVP_MAC_update(ctx, (const uint8_t *)body, body_len) == 1 &&
              EVP_MAC_final(ctx, out, &n, MAC_LEN) == 1 && n == MAC_LEN;
    EVP_MAC_CTX_free(ctx);
    return ok;
}

/* Every secret against every offered MAC; no early exit on a match, so the
 * time taken says nothing of which one matched. */
static bool match(const struct webhook_verifier *v, const struct offer *o, const char *body,
                  size_t body_len)
{
    bool found = false;
    for (int s = 0; s < v->nsecrets; s++) {
        uint8_t mac[MAC_LEN];
        if (!hmac_sha256(&v->secrets[s], o, body, body_len, mac))
            continue;
        for (int i = 0; i < o->nmacs; i++)
            found |= CRYPTO_memcmp(mac, o->macs[i], MAC_LEN) == 0;
    }
    return found;
}

/* The one field called name; NULL when absent or repeated (which of two
 * signatures would the application check?). */
static const struct header *single_field(const struct header_list *h, const char *name)
{
    return headers_count(h, name) == 1 ? headers_find(h, name) : NULL;
}

static bool parse_timestamp(const char *s, size_t len, int64_t *out)
{
    int64_t t = 0;
    if (len == 0 || len > 12)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        t = t * 10 + (s[i] - '0');
    }
    *out = t;
    return true;
}

static bool add_hex_mac(struct offer *o, const char *hex, size_t len)
{
    if (o->nmacs == MAX_CANDIDATES || len != 2 * MAC_LEN)
        return false;
    if (hex_decode(hex, MAC_LEN, o->macs[o->nmacs]) != IDEM_OK)
        return false;
    o->nmacs++;
    return true;
}

static bool add_base64_mac(struct offer *o, const char *b64, size_t len)
{
    uint8_t buf[MAC_LEN + 3];
    if (o->nmacs == MAX_CANDIDATES || base64_decode(b64, len, buf, sizeof(buf)) != MAC_LEN)
        return false;
    memcpy(o->macs[o->nmacs++], buf, MAC_LEN);
    return true;
}

/* Appends len bytes and a '.' to the signed prefix. */
static bool add_prefix_part(struct offer *o, const char *s, size_t len)
{
    if (o->prefix_len + len + 1 > sizeof(o->prefix))
        return false;
    memcpy(o->prefix + o->prefix_len, s, len);
    o->prefix_len += len;
    o->prefix[o->prefix_len++] = '.';
    return true;
}

/* Stripe-Signature: comma-separated k=v; one t, any number of v1 (v0 and
 * unknown schemes ignored, as Stripe's libraries do). */
static enum webhook_result offer_stripe(const struct header_list *h, struct offer *o)
{
    const struct header *f = single_field(h, "Stripe-Signature");
    const char *t = NULL;
    size_t t_len = 0;
    if (f == NULL)
        return WEBHOOK_MISSING;
    for (size_t at = 0; at <= f->value_len;) {
        const char *item = f->value + at;
        const char *comma = memchr(item, ',', f->value_len - at);
        size_t len = comma ? (size_t)(comma - item) : f->value_len - at;
        at += len + 1;
        item = trim_ows(item, len, &len);
        const char *eq = memchr(item, '=', len);
        if (eq == NULL)
            return WEBHOOK_MALFORMED;
        size_t klen = (size_t)(eq - item), vlen = len - klen - 1;
        if (klen == 1 && item[0] == 't') {
            if (t != NULL)
                return WEBHOOK_MALFORMED;
            t = eq + 1;
            t_len = vlen;
        } else if (klen == 2 && memcmp(item, "v1", 2) == 0 && !add_hex_mac(o, eq + 1, vlen)) {
            return WEBHOOK_MALFORMED;
        }
    }
    if (t == NULL || o->nmacs == 0)
        return t == NULL ? WEBHOOK_MALFORMED : WEBHOOK_MISSING;
    if (!parse_timestamp(t, t_len, &o->timestamp) || !add_prefix_part(o, t, t_len))
        return WEBHOOK_MALFORMED;
    return WEBHOOK_VALID;
}

/* X-Hub-Signature-256: sha256=HEX */
static enum webhook_result offer_github(const struct header_list *h, struct offer *o)
{
    const struct header *f = single_field(h, "X-Hub-Signature-256");
    size_t len;
    if (f == NULL)
        return WEBHOOK_MISSING;
    const char *v = trim_ows(f->value, f->value_len, &len);
    if (len < 7 || memcmp(v, "sha256=", 7) != 0 || !add_hex_mac(o, v + 7, len - 7))
        return WEBHOOK_MALFORMED;
    return WEBHOOK_VALID;
}

/* webhook-id, webhook-timestamp, webhook-signature: space-separated
 * "VERSION,SIGNATURE"; only v1 (HMAC-SHA256) is ours, others are skipped. */
static enum webhook_result offer_standard(const struct header_list *h, struct offer *o)
{
    const struct header *id = single_field(h, "webhook-id");
    const struct header *ts = single_field(h, "webhook-timestamp");
    const struct header *sig = single_field(h, "webhook-signature");
    size_t id_len, ts_len;
    if (id == NULL || ts == NULL || sig == NULL)
        return WEBHOOK_MISSING;
    const char *idv = trim_ows(id->value, id->value_len, &id_len);
    const char *tsv = trim_ows(ts->value, ts->value_len, &ts_len);
    if (id_len == 0 || !parse_timestamp(tsv, ts_len, &o->timestamp) ||
        !add_prefix_part(o, idv, id_len) || !add_prefix_part(o, tsv, ts_len))
        return WEBHOOK_MALFORMED;
    for (size_t at = 0; at < sig->value_len;) {
        const char *item = sig->value + at;
        const char *sp = memchr(item, ' ', sig->value_len - at);
        size_t len = sp ? (size_t)(sp - item) : sig->value_len - at;
        at += len + 1;
        if (len == 0)
            continue;
        if (len > 3 && memcmp(item, "v1,", 3) == 0) {
            if (!add_base64_mac(o, item + 3, len - 3))
                return WEBHOOK_MALFORMED;
        } else if (memchr(item, ',', len) == NULL) {
            return WEBHOOK_MALFORMED;
        }
    }
    return o->nmacs > 0 ? WEBHOOK_VALID : WEBHOOK_MISSING;
}

/* X-Shopify-Hmac-Sha256: BASE64 */
static enum webhook_result offer_shopify(const struct header_list *h, struct offer *o)
{
    const struct header *f = single_field(h, "X-Shopify-Hmac-Sha256");
    size_t len;
    if (f == NULL)
        return WEBHOOK_MISSING;
    const char *v = trim_ows(f->value, f->value_len, &len);
    return add_base64_mac(o, v, len) ? WEBHOOK_VALID : WEBHOOK_MALFORMED;
}

enum webhook_result webhook_verify(const struct webhook_verifier *v, const struct header_list *h,
                                   const char *body, size_t body_len, int64_t now_s)
{
    static enum webhook_result (*const offer_of[])(const struct header_list *, struct offer *) = {
        [WEBHOOK_STRIPE] = offer_stripe,
        [WEBHOOK_GITHUB] = offer_github,
        [WEBHOOK_STANDARD] = offer_standard,
        [WEBHOOK_SHOPIFY] = offer_shopify,
    };
    struct offer o;
    o.prefix_len = 0;
    o.nmacs = 0;
    o.timestamp = -1;
    enum webhook_result r = offer_of[v->scheme](h, &o);
    if (r != WEBHOOK_VALID)
        return r;
    if (o.timestamp >= 0 &&
        (o.timestamp > now_s + v->tolerance_s || o.timestamp < now_s - v->tolerance_s))
        return WEBHOOK_STALE;
    return match(v, &o, body, body_len) ? WEBHOOK_VALID : WEBHOOK_MISMATCH;
}

const char *webhook_result_phrase(enum webhook_result r)
{
    switch (r) {
    case WEBHOOK_VALID: return "valid";
    case WEBHOOK_MISSING: return "missing";
    case WEBHOOK_MALFORMED: return "malformed";
    case WEBHOOK_STALE: return "timestamp outside the tolerance";
    case WEBHOOK_MISMATCH: return "does not match";
    }
    return "?";
}
