/*
 * json_canon.c - the canonical form of a JSON text (see json_canon.h).
 *
 *   doc --keysource_json_valid--> valid? --canon_value (recursive)--> out
 *     object: each member canonicalised into its own buffer, sorted by name,
 *             joined; a repeated name fails the whole text
 *
 * The text is validated first (UTF-8, escapes, depth, one value), so the
 * walk below only has to tell the value types apart.
 */
#include "json_canon.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keysource.h"
#include "util.h"

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->cap - b->len < n + 1) {
        b->cap = (b->len + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void put_char(struct buf *b, char c)
{
    put(b, &c, 1);
}

struct reader {
    const char *s;
    size_t len, at;
};

static void skip_ws(struct reader *r)
{
    while (r->at < r->len && (r->s[r->at] == ' ' || r->s[r->at] == '\t' || r->s[r->at] == '\n' ||
                              r->s[r->at] == '\r'))
        r->at++;
}

static unsigned hex4(const char *s)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) /* validated: four hex digits */
        v = v * 16 + (unsigned)hex_digit_value((unsigned char)s[i]);
    return v;
}

static void put_utf8(struct buf *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    put(b, u, n);
}

/* A string's content, escapes decoded, into b (the reader is at its '"'). */
static void decode_string(struct reader *r, struct buf *b)
{
    r->at++; /* the opening quote */
    while (r->s[r->at] != '"') {
        char c = r->s[r->at];
        if (c != '\\') {
            put_char(b, c);
            r->at++;
            continue;
        }
        char e = r->s[r->at + 1];
        r->at += 2;
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *k = strchr(from, e);
        if (e != 'u') {
            put_char(b, to[k - from]);
            continue;
        }
        uint32_t cp = hex4(r->s + r->at);
        r->at += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* validated: a low surrogate follows */
            uint32_t lo = hex4(r->s + r->at + 2);
            r->at += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        put_utf8(b, cp);
    }
    r->at++; /* the closing quote */
}

/* content (n bytes, decoded) as a canonical JSON string into b. */
static void put_string(struct buf *b, const char *content, size_t n)
{
    put_char(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)content[i];
        const char *short_form = c == '"'    ? "\\\""
                                 : c == '\\' ? "\\\\"
                                 : c == '\b' ? "\\b"
                                 : c == '\f' ? "\\f"
                                 : c == '\n' ? "\\n"
                                 : c == '\r' ? "\\r"
                                 : c == '\t' ? "\\t"
                                             : NULL;
        if (short_form) {
            put(b, short_form, 2);
        } else if (c < 0x20) {
            char u[8];
            snprintf(u, sizeof(u), "\\u%04x", c);
            put(b, u, 6);
        } else {
            put_char(b, (char)c);
        }
    }
    put_char(b, '"');
}

/*
 * A number by its exact decimal value: significant digits (no leading or
 * trailing zeros) and a power of ten. False when the exponent does not fit
 * (1e99999999999999999999): such a text is compared by its bytes instead.
 */
static bool put_number(struct reader *r, struct buf *b)
{
    const char *s = r->s;
    bool negative = s[r->at] == '-';
    r->at += negative;
    char digits[64];
    size_t nd = 0;
    int64_t exp = 0;
    bool overflow = false;
    /* integer and fraction digits: value = digits x 10^exp */
    for (bool fraction = false; r->at < r->len; r->at++) {
        char c = s[r->at];
        if (c == '.') {
            fraction = true;
            continue;
        }
        if (c < '0' || c > '9')
            break;
        if (nd == 0 && c == '0') { /* a leading zero */
            exp -= fraction;
            continue;
        }
        if (nd < sizeof(digits)) {
            digits[nd++] = c;
            exp -= fraction;
        } else {
            overflow = overflow || c != '0'; /* a digit that cannot be kept */
            exp += !fraction;
        }
    }
    if (r->at < r->len && (s[r->at] == 'e' || s[r->at] == 'E')) {
        r->at++;
        bool eneg = s[r->at] == '-';
        r->at += s[r->at] == '-' || s[r->at] == '+';
        int64_t e = 0;
        for (; r->at < r->len && s[r->at] >= '0' && s[r->at] <= '9'; r->at++) {
            if (e > INT64_MAX / 20)
                overflow = true;
            else
                e = e * 10 + (s[r->at] - '0');
        }
        exp += eneg ? -e : e;
    }
    if (overflow)
        return false;
    while (nd > 0 && digits[nd - 1] == '0') { /* trailing zeros into the exponent */
        nd--;
        exp++;
    }
    if (nd == 0) {
        put_char(b, '0'); /* -0 is 0 */
        return true;
    }
    if (negative)
        put_char(b, '-');
    put(b, digits, nd);
    if (exp != 0) {
        char e[32];
        int n = snprintf(e, sizeof(e), "e%lld", (long long)exp);
        put(b, e, (size_t)n);
    }
    return true;
}

struct member {
    struct buf name; /* decoded */
    struct buf text; /* "name":value, canonical */
};

static int by_name(const void *a, const void *b)
{
    const struct member *x = a, *y = b;
    size_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
    int c = n > 0 ? memcmp(x->name.p, y->name.p, n) : 0;
    return c != 0 ? c : (x->name.len > y->name.len) - (x->name.len < y->name.len);
}

static bool canon_value(struct reader *r, struct buf *b);

static bool canon_object(struct reader *r, struct buf *b)
{
    struct member *m = NULL;
    size_t n = 0, cap = 0;
    bool ok = true;
    r->at++; /* '{' */
    skip_ws(r);
    while (ok && r->s[r->at] != '}') {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            m = xrealloc(m, cap * sizeof(*m));
        }
        memset(&m[n], 0, sizeof(m[n]));
        decode_string(r, &m[n].name);
        put_string(&m[n].text, m[n].name.p ? m[n].name.p : "", m[n].name.len);
        put_char(&m[n].text, ':');
        skip_ws(r);
        r->at++; /* ':' */
        skip_ws(r);
        ok = canon_value(r, &m[n].text);
        n++;
        skip_ws(r);
        if (r->s[r->at] == ',') {
            r->at++;
            skip_ws(r);
        }
    }
    r->at++; /* '}' */
    if (ok && n > 1) {
        qsort(m, n, sizeof(*m), by_name);
        for (size_t i = 1; i < n && ok; i++)
            ok = by_name(&m[i - 1], &m[i]) != 0; /* a repeated name: not JSON for us */
    }
    put_char(b, '{');
    for (size_t i = 0; i < n; i++) {
        if (ok) {
            if (i > 0)
                put_char(b, ',');
            put(b, m[i].text.p, m[i].text.len);
        }
        free(m[i].name.p);
        free(m[i].text.p);
    }
    put_char(b, '}');
    free(m);
    return ok;
}

static bool canon_array(struct reader *r, struct buf *b)
{
    bool ok = true;
    r->at++; /* '[' */
    put_char(b, '[');
    skip_ws(r);
    for (bool first = true; ok && r->s[r->at] != ']'; first = false) {
        if (!first)
            put_char(b, ',');
        ok = canon_value(r, b);
        skip_ws(r);
        if (r->s[r->at] == ',') {
            r->at++;
            skip_ws(r);
        }
    }
    r->at++; /* ']' */
    put_char(b, ']');
    return ok;
}

static bool canon_value(struct reader *r, struct buf *b)
{
    char c = r->s[r->at];
    if (c == '{')
        return canon_object(r, b);
    if (c == '[')
        return canon_array(r, b);
    if (c == '"') {
        struct buf s = {0};
        decode_string(r, &s);
        put_string(b, s.p ? s.p : "", s.len);
        free(s.p);
        return true;
    }
    if (c == 't' || c == 'f' || c == 'n') {
        size_t n = c == 'f' ? 5 : 4;
        put(b, r->s + r->at, n);
        r->at += n;
        return true;
    }
    return put_number(r, b);
}

bool json_canonical(const char *doc, size_t len, char **out, size_t *out_len)
{
    if (!keysource_json_valid(doc, len))
        return false;
    struct reader r = {doc, len, 0};
    struct buf b = {0};
    skip_ws(&r);
    if (!canon_value(&r, &b)) {
        free(b.p);
        return false;
    }
    if (b.p == NULL)
        put(&b, "", 0);
    *out = b.p;
    *out_len = b.len;
    return true;
}
