/*
 * policy.c - the pure per-request decisions of SPEC §4.1: coverage, the
 * idempotency key, the tenant scope, the fingerprint and the record's Redis
 * key. No I/O, no logging; every answer is a function of the policy and the
 * parsed request.
 *
 *   request_view --> policy_covers ------> bypass / covered
 *                |-> policy_extract_key -> KEY_FOUND / KEY_ABSENT / KEY_INVALID
 *                |     header: / token: here; query: / form: / json: parsed by
 *                |     keysource.c, the value judged here
 *                |-> policy_scope -------> "-" or 32 hex chars
 *                '-> policy_fingerprint -> 64 hex chars
 *   prefix + scope + key -> policy_record_key -> "<prefix><scope>:<key>"
 *
 * Hashing uses OpenSSL's EVP interface. SHA-256 through EVP fails only when
 * OpenSSL cannot allocate, which we treat as xmalloc treats it: abort.
 */
#include "policy.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>
#include <openssl/evp.h>

#include "json_canon.h"
#include "keysource.h"
#include "util.h"

/* Tag bytes of the fingerprint's parts beyond enum fingerprint_part. */
enum {
    FP_TAG_HEADER_NAME = 0x10,
    FP_TAG_HEADER_VALUE = 0x11,
    FP_TAG_HEADER_ABSENT = 0x12,
};

bool policy_covers(const struct policy *p, int method)
{
    if (p->bypass || method < 0 || method > 63)
        return false;
    /* HEAD runs the GET handler in most frameworks: covering GET covers it. */
    if (method == HTTP_HEAD && (p->methods & (1ull << HTTP_GET)))
        return true;
    return (p->methods & (1ull << method)) != 0;
}

/*
 * Parses the body of an sf-string (after the opening quote) into out, which
 * has room for len bytes. Returns the content length, or -1 when the string
 * is malformed: a byte outside 0x20..0x7e, an escape other than \" or \\, no
 * closing quote, or anything after it.
 */
static long parse_sf_string(const char *s, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') {
            if (i + 1 >= len || (s[i + 1] != '"' && s[i + 1] != '\\'))
                return -1;
            out[n++] = s[++i];
        } else if (c == '"') {
            return i + 1 == len ? (long)n : -1;
        } else if (c < 0x20 || c > 0x7e) {
            return -1;
        } else {
            out[n++] = (char)c;
        }
    }
    return -1; /* unterminated */
}

enum key_result policy_parse_key_value(const char *value, size_t len, char **key_out)
{
    value = trim_ows(value, len, &len);

    char *key = xmalloc(len + 1);
    size_t key_len;
    if (len > 0 && value[0] == '"') {
        long n = parse_sf_string(value + 1, len - 1, key);
        if (n < 0)
            goto invalid;
        key_len = (size_t)n;
    } else {
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)value[i];
            if (c < 0x21 || c > 0x7e)
                goto invalid;
        }
        memcpy(key, value, len);
        key_len = len;
    }
    if (key_len == 0 || key_len > POLICY_MAX_KEY_LEN)
        goto invalid;
    key[key_len] = '\0';
    *key_out = key;
    return KEY_FOUND;

invalid:
    free(key);
    key = NULL;
    return KEY_INVALID;
}

/*
 * Judges a value taken from a query, form or JSON source: 1..255 bytes of
 * visible ASCII. Takes ownership of value (len bytes and a NUL): handed on in
 * *key_out when acceptable, freed when not.
 */
static enum key_result accept_key(char *value, size_t len, char **key_out)
{
    bool ok = len > 0 && len <= POLICY_MAX_KEY_LEN;
    for (size_t i = 0; ok && i < len; i++)
        ok = (unsigned char)value[i] >= 0x21 && (unsigned char)value[i] <= 0x7e;
    if (!ok) {
        free(value);
        value = NULL;
        return KEY_INVALID;
    }
    *key_out = value;
    return KEY_FOUND;
}

/* header:NAME and token: one field, parsed as a key header value. */
static enum key_result key_from_header(const struct request_view *req, const char *name,
                                       char **key_out)
{
    if (req->headers == NULL || name == NULL)
        return KEY_ABSENT;
    int n = headers_count(req->headers, name);
    if (n == 0)
        return KEY_ABSENT;
    if (n > 1)
        return KEY_INVALID; /* "the key header repeated" */
    const struct header *h = headers_find(req->headers, name);
    return policy_parse_key_value(h->value, h->value_len, key_out);
}

/*
 * Whether the body may be read as the source kind says: true without a
 * Content-Type, false with several, else when the media type fits.
 */
static bool body_type_fits(const struct request_view *req, enum key_source_kind kind)
{
    if (req->headers == NULL)
        return true;
    int n = headers_count(req->headers, "Content-Type");
    if (n == 0)
        return true;
    if (n > 1)
        return false;
    const struct header *h = headers_find(req->headers, "Content-Type");
    if (kind == KEY_SOURCE_JSON)
        return keysource_media_type_is_json(h->value, h->value_len);
    return keysource_media_type_is(h->value, h->value_len, "application/x-www-form-urlencoded");
}

/*
 * query:NAME and form:NAME. A malformed escape in the value is the client's
 * error in a query (KEY_INVALID) but makes a form body no key (KEY_ABSENT).
 */
static enum key_result key_from_param(const char *text, size_t len, const char *name,
                                      enum key_result on_malformed, char **key_out)
{
    if (text == NULL)
        return KEY_ABSENT;
    char *value = NULL;
    size_t value_len = 0;
    switch (keysource_param(text, len, name, &value, &value_len)) {
    case KS_FOUND: return accept_key(value, value_len, key_out);
    case KS_DUPLICATE: return KEY_INVALID;
    case KS_MALFORMED: return on_malformed;
    case KS_ABSENT: break;
    }
    return KEY_ABSENT;
}

/* json:/pointer. */
static enum key_result key_from_json(const struct request_view *req, const char *pointer,
                                     char **key_out)
{
    if (req->body == NULL || !body_type_fits(req, KEY_SOURCE_JSON))
        return KEY_ABSENT;
    char *value = NULL;
    size_t value_len = 0;
    switch (keysource_json(req->body, req->body_len, pointer, &value, &value_len)) {
    case KS_FOUND: return accept_key(value, value_len, key_out);
    case KS_DUPLICATE: return KEY_INVALID; /* ambiguous: which member is the key? */
    case KS_MALFORMED:
    case KS_ABSENT: break;
    }
    return KEY_ABSENT;
}

/* One source's verdict. */
static enum key_result key_from_source(const struct key_source *src, const struct request_view *req,
                                       char **key_out)
{
    switch (src->kind) {
    case KEY_SOURCE_HEADER: return key_from_header(req, src->name, key_out);
    case KEY_SOURCE_QUERY:
        return key_from_param(req->query, req->query_len, src->name, KEY_INVALID, key_out);
    case KEY_SOURCE_FORM:
        if (!body_type_fits(req, KEY_SOURCE_FORM))
            return KEY_ABSENT;
        return key_from_param(req->body, req->body_len, src->name, KEY_ABSENT, key_out);
    case KEY_SOURCE_JSON: return key_from_json(req, src->name, key_out);
    case KEY_SOURCE_TOKEN: return key_from_header(req, req->token_header, key_out);
    case KEY_SOURCE_NONE: break;
    }
    return KEY_ABSENT;
}

enum key_result policy_extract_key_from(const struct policy *p, const struct request_view *req,
                                        char **key_out, enum key_source_kind *kind_out)
{
    for (int i = 0; i < p->nkeys; i++) {
        const struct key_source *src = &p->keys[i];
        if (src->kind != KEY_SOURCE_TOKEN && src->name == NULL)
            continue;
        enum key_result r = key_from_source(src, req, key_out);
        if (r != KEY_ABSENT) {
            if (kind_out != NULL)
                *kind_out = src->kind;
            return r;
        }
    }
    if (kind_out != NULL)
        *kind_out = KEY_SOURCE_NONE;
    return KEY_ABSENT;
}

enum key_result policy_extract_key(const struct policy *p, const struct request_view *req,
                                   char **key_out)
{
    return policy_extract_key_from(p, req, key_out, NULL);
}

bool policy_key_needs_body(const struct policy *p)
{
    for (int i = 0; i < p->nkeys; i++)
        if (p->keys[i].kind == KEY_SOURCE_FORM || p->keys[i].kind == KEY_SOURCE_JSON)
            return true;
    return false;
}

/* Fetched once: EVP_sha256() would look the algorithm up again on every
 * init (OpenSSL 3), which costs more than hashing a small request. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
/* One context per thread, reset by each digest: a new one per request cost
 * three allocations. Freed when its thread ends. */
static pthread_key_t sha256_ctx_key;
static _Thread_local EVP_MD_CTX *sha256_ctx;

static void sha256_ctx_free(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (pthread_key_create(&sha256_ctx_key, sha256_ctx_free) != 0)
        abort();
}

/* The thread's context, begun: digests do not nest (each ends before the next). */
static EVP_MD_CTX *sha256_begin(void)
{
    pthread_once(&sha256_once, sha256_fetch);
    if (sha256_ctx == NULL) {
        sha256_ctx = EVP_MD_CTX_new();
        if (sha256_ctx == NULL || pthread_setspecific(sha256_ctx_key, sha256_ctx) != 0)
            abort();
    }
    if (sha256_md == NULL || EVP_DigestInit_ex(sha256_ctx, sha256_md, NULL) != 1)
        abort();
    return sha256_ctx;
}

static void sha256_update(EVP_MD_CTX *ctx, const void *data, size_t len)
{
    if (len > 0 && EVP_DigestUpdate(ctx, data, len) != 1)
        abort();
}

/* Finishes the digest into out (32 bytes). */
static void sha256_end(EVP_MD_CTX *ctx, unsigned char out[32])
{
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != 32)
        abort();
}

/*
 * Feeds every field called name into ctx, values joined with ",", as if they
 * had been folded into one line. Returns how many fields there were.
 */
static int update_joined_header(EVP_MD_CTX *ctx, const struct header_list *headers,
                                const char *name)
{
    int seen = 0;
    for (int i = 0; headers != NULL && i < headers->count; i++) {
        const struct header *h = &headers->items[i];
        if (!strn_case_equal(h->name, h->name_len, name))
            continue;
        if (seen++ > 0)
            sha256_update(ctx, ",", 1);
        /* Blanks around a value are not part of it (RFC 9110 §5.5): a
         * trailing space must not make a new tenant. */
        size_t n;
        const char *v = trim_ows(h->value, h->value_len, &n);
        sha256_update(ctx, v, n);
    }
    return seen;
}

/* Length of the joined value of every field called name (0 when absent). */
static size_t joined_header_len(const struct header_list *headers, const char *name, int *count)
{
    size_t len = 0;
    *count = 0;
    for (int i = 0; headers != NULL && i < headers->count; i++) {
        const struct header *h = &headers->items[i];
        if (!strn_case_equal(h->name, h->name_len, name))
            continue;
        size_t n;
        (void)trim_ows(h->value, h->value_len, &n); /* as update_joined_header hashes it */
        len += n + (*count > 0 ? 1 : 0);
        (*count)++;
    }
    return len;
}

/*
 * One source hashes its joined value alone (as before several were
 * possible, so that keys keep their names). Several hash each source's value
 * behind a tag saying whether it was present and its index, so that no two
 * combinations (A present, B absent; A absent, B present; values that run
 * into each other) share a scope.
 */
void policy_scope(const struct policy *p, const struct request_view *req,
                  char out[POLICY_SCOPE_HASH_LEN + 1])
{
    int present = 0;
    for (int i = 0; i < p->nscopes; i++) {
        int count = 0;
        (void)joined_header_len(req->headers, p->scopes[i].name, &count);
        present += count > 0;
    }
    if (present == 0) {
        memcpy(out, "-", 2);
        return;
    }
    unsigned char digest[32];
    EVP_MD_CTX *ctx = sha256_begin();
    if (p->nscopes == 1) {
        (void)update_joined_header(ctx, req->headers, p->scopes[0].name);
    } else {
        for (int i = 0; i < p->nscopes; i++) {
            int count = 0;
            size_t len = joined_header_len(req->headers, p->scopes[i].name, &count);
            unsigned char tag[10] = {(unsigned char)i, count > 0};
            for (int b = 0; b < 8; b++)
                tag[2 + b] = (unsigned char)((uint64_t)len >> (56 - 8 * b));
            sha256_update(ctx, tag, sizeof(tag));
            (void)update_joined_header(ctx, req->headers, p->scopes[i].name);
        }
    }
    sha256_end(ctx, digest);
    hex_encode(digest, POLICY_SCOPE_HASH_LEN / 2, out);
}

/* Writes the head of a fingerprint part: its tag byte and 8-byte big-endian length. */
static void fp_head(EVP_MD_CTX *ctx, unsigned char tag, size_t len)
{
    unsigned char head[9];
    head[0] = tag;
    for (int i = 0; i < 8; i++)
        head[1 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    sha256_update(ctx, head, sizeof(head));
}

/* Writes one whole fingerprint part: head, then the bytes. */
static void fp_part(EVP_MD_CTX *ctx, unsigned char tag, const void *data, size_t len)
{
    fp_head(ctx, tag, len);
    sha256_update(ctx, data, len);
}

void policy_fingerprint(const struct policy *p, const struct request_view *req,
                        char out[POLICY_FINGERPRINT_LEN + 1])
{
    EVP_MD_CTX *ctx = sha256_begin();

    if (p->fingerprint & FP_METHOD) {
        const char *m = req->method_name != NULL ? req->method_name : "";
        fp_part(ctx, FP_METHOD, m, strlen(m));
    }
    if (p->fingerprint & FP_PATH)
        fp_part(ctx, FP_PATH, req->path, req->path_len);
    if (p->fingerprint & FP_QUERY)
        fp_part(ctx, FP_QUERY, req->query, req->query != NULL ? req->query_len : 0);
    for (int i = 0; i < p->nfp_headers; i++) {
        const char *name = p->fp_headers[i];
        int count;
        size_t len = joined_header_len(req->headers, name, &count);
        fp_part(ctx, FP_TAG_HEADER_NAME, name, strlen(name));
        if (count == 0) {
            fp_head(ctx, FP_TAG_HEADER_ABSENT, 0);
        } else {
            /* The length is known up front, so the joined value streams in. */
            fp_head(ctx, FP_TAG_HEADER_VALUE, len);
            (void)update_joined_header(ctx, req->headers, name);
        }
    }
    if (p->fingerprint & FP_BODY)
        fp_part(ctx, FP_BODY, req->body, req->body_len);
    if (p->fingerprint & FP_JSON) {
        /* A client that re-serialises the same object on retry sends the
         * same request; a body that is not JSON is its bytes. */
        char *canon;
        size_t n;
        if (req->body_len > 0 && json_canonical(req->body, req->body_len, &canon, &n)) {
            fp_part(ctx, FP_JSON, canon, n);
            free(canon);
        } else {
            fp_part(ctx, FP_BODY, req->body, req->body_len);
        }
    }

    unsigned char digest[32];
    sha256_end(ctx, digest);
    hex_encode(digest, sizeof(digest), out);
}

/* prefix before [{] scope ":" mid key [}]: the key names' one shape. Malloc'd. */
static char *join_key(const char *prefix, const char *before, const char *scope, const char *mid,
                      const char *key, bool tagged)
{
    return xstrjoin(prefix, before, tagged ? "{" : "", scope, ":", mid, key, tagged ? "}" : "",
                    (char *)NULL);
}

char *policy_record_key(const char *prefix, const char *scope, const char *ns, const char *key,
                        bool tagged)
{
    /* "r" + 16 hex + ":" */
    char nspart[19] = "";
    if (ns != NULL) {
        unsigned char digest[32];
        EVP_MD_CTX *ctx = sha256_begin();
        sha256_update(ctx, ns, strlen(ns));
        sha256_end(ctx, digest);
        nspart[0] = 'r';
        hex_encode(digest, 8, nspart + 1);
        nspart[17] = ':';
        nspart[18] = '\0';
    }
    /* tagged, the namespace stays out of the tag: a token key has none */
    return tagged ? join_key(prefix, nspart, scope, "", key, true)
                  : join_key(prefix, "", scope, nspart, key, false);
}

char *policy_token_key(const char *prefix, const char *scope, const char *token, bool tagged)
{
    return join_key(prefix, "token:", scope, "", token, tagged);
}
