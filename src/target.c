/*
 * target.c - the request-target rule of SPEC §13 (see target.h).
 *
 *   url --form?--> origin / absolute (authority split off) / asterisk
 *       --path--> segments: escapes decoded or refused, dot-segments and
 *                 empty segments removed, UTF-8 checked --> "/a/b" + "?query"
 *
 * The output is never longer than the input plus one byte (a "/" for an
 * absolute-form target without a path), so it is built in one allocation.
 */
#include "target.h"

#include <llhttp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "util.h"

/* RFC 3986 §2.3 */
static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/*
 * UTF-8 over the bytes that escapes decode to (RFC 3629 §4, which excludes
 * overlong forms and surrogates): `need` continuation bytes still expected,
 * and the range the next one must fall in.
 */
struct utf8 {
    int need;
    unsigned char lo, hi;
};

static bool utf8_step(struct utf8 *u, unsigned char b)
{
    if (u->need > 0) {
        if (b < u->lo || b > u->hi)
            return false;
        u->need--;
        u->lo = 0x80;
        u->hi = 0xBF;
        return true;
    }
    u->lo = 0x80;
    u->hi = 0xBF;
    if (b < 0x80)
        return true;
    if (b >= 0xC2 && b <= 0xDF)
        u->need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        u->need = 2;
        u->lo = b == 0xE0 ? 0xA0 : 0x80;
        u->hi = b == 0xED ? 0x9F : 0xBF;
    } else if (b >= 0xF0 && b <= 0xF4) {
        u->need = 3;
        u->lo = b == 0xF0 ? 0x90 : 0x80;
        u->hi = b == 0xF4 ? 0x8F : 0xBF;
    } else {
        return false;
    }
    return true;
}

static const char upper_hex[] = "0123456789ABCDEF";

/*
 * Copies one segment (in[0..n), no '/') into out, escapes normalised.
 * Returns the bytes written, or -1 with *why set.
 */
static long copy_segment(const char *in, size_t n, char *out, struct utf8 *u, const char **why)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\\') {
            *why = "backslash in the path";
            return -1;
        }
        /* Java servers (Tomcat, Jetty, Spring) cut ";parameters" off every
         * segment before routing: /orders;x/charge is their /orders/charge. */
        if (c == ';') {
            *why = "path parameter (';') in the path";
            return -1;
        }
        if (c != '%') {
            if (u->need > 0) {
                *why = "percent-encoded bytes in the path that are not UTF-8";
                return -1;
            }
            out[o++] = (char)c;
            continue;
        }
        int hi = i + 2 < n ? hex_digit_value((unsigned char)in[i + 1]) : -1;
        int lo = hi >= 0 ? hex_digit_value((unsigned char)in[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            *why = "malformed percent-escape in the path";
            return -1;
        }
        i += 2;
        unsigned char b = (unsigned char)(hi << 4 | lo);
        if (b == '/' || b == '\\' || b == 0) {
            *why = "encoded slash, backslash or NUL in the path";
            return -1;
        }
        if (!utf8_step(u, b)) {
            *why = "percent-encoded bytes in the path that are not UTF-8";
            return -1;
        }
        if (is_unreserved(b)) {
            out[o++] = (char)b;
        } else {
            out[o++] = '%';
            out[o++] = upper_hex[b >> 4];
            out[o++] = upper_hex[b & 15];
        }
    }
    if (u->need > 0) { /* a character may not span a '/' */
        *why = "percent-encoded bytes in the path that are not UTF-8";
        return -1;
    }
    return (long)o;
}

/* 1 for a "." segment, 2 for "..", else 0. */
static int dot_segment(const char *s, size_t n)
{
    return (n == 1 && s[0] == '.') ? 1 : (n == 2 && s[0] == '.' && s[1] == '.') ? 2 : 0;
}

/*
 * Writes the normalised form of path (starting with '/') to out; returns
 * its length, or -1 with *why set. out has room for len bytes.
 */
static long normalise_path(const char *path, size_t len, char *out, const char **why)
{
    /* Where each kept segment starts in out, for "..": at most one per input byte. */
    size_t stack_cap = len / 2 + 1, depth = 0;
    size_t *starts = xmalloc(stack_cap * sizeof(*starts));
    struct utf8 u = {0, 0x80, 0xBF};
    size_t o = 1;
    out[0] = '/';
    long result = -1;
    for (size_t i = 1; i <= len;) {
        const char *seg = path + i;
        const char *slash = memchr(seg, '/', len - i);
        size_t n = slash ? (size_t)(slash - seg) : len - i;
        bool last = slash == NULL;
        i += n + 1;
        long w = copy_segment(seg, n, out + o, &u, why);
        if (w < 0)
            goto out;
        int dots = dot_segment(out + o, (size_t)w);
        if (w == 0 || dots == 1)
            continue; /* "//" merged, "." removed */
        if (dots == 2) {
            if (depth == 0) {
                *why = "dot-segment above the root of the path";
                goto out;
            }
            o = starts[--depth];
            continue;
        }
        starts[depth++] = o;
        o += (size_t)w;
        if (!last)
            out[o++] = '/';
    }
    result = (long)o;
out:
    free(starts);
    return result;
}

const char *target_read(const char *url, size_t len, int method, struct target *t)
{
    memset(t, 0, sizeof(*t));
    if (memchr(url, '#', len) != NULL)
        return "fragment in the request-target";
    const char *rest = url;
    size_t rest_len = len;
    if (len == 1 && url[0] == '*') {
        if (method != HTTP_OPTIONS)
            return "asterisk-form target with a method other than OPTIONS";
        t->url = xstrndup("*", 1);
        t->url_len = t->path_len = 1;
        return NULL;
    }
    if (url[0] != '/') {
        size_t scheme = len >= 7 && strncasecmp(url, "http://", 7) == 0    ? 7
                        : len >= 8 && strncasecmp(url, "https://", 8) == 0 ? 8
                                                                           : 0;
        if (scheme == 0)
            return "request-target is neither origin-form nor absolute-form";
        const char *a = url + scheme;
        size_t n = 0;
        while (scheme + n < len && a[n] != '/' && a[n] != '?')
            n++;
        if (n == 0 || memchr(a, '@', n) != NULL)
            return "empty authority or userinfo in an absolute-form target";
        t->authority = a;
        t->authority_len = n;
        rest = a + n;
        rest_len = len - scheme - n;
    }
    const char *q = memchr(rest, '?', rest_len);
    size_t path_len = q ? (size_t)(q - rest) : rest_len;
    size_t query_len = rest_len - path_len;
    char *out = xmalloc(path_len + query_len + 2);
    const char *why = NULL;
    long n = path_len == 0 ? (out[0] = '/', 1) : normalise_path(rest, path_len, out, &why);
    if (n < 0) {
        free(out);
        return why;
    }
    memcpy(out + n, rest + path_len, query_len);
    out[(size_t)n + query_len] = '\0';
    t->url = out;
    t->path_len = (size_t)n;
    t->url_len = (size_t)n + query_len;
    return NULL;
}

bool target_is_normal(const char *path, size_t len)
{
    if (len == 0 || path[0] != '/')
        return false;
    for (size_t i = 1; i <= len;) {
        const char *seg = path + i;
        const char *slash = memchr(seg, '/', len - i);
        size_t n = slash ? (size_t)(slash - seg) : len - i;
        if ((n == 0 && slash != NULL) || dot_segment(seg, n) != 0 || memchr(seg, ';', n))
            return false;
        for (size_t k = 0; k < n; k++) {
            if (seg[k] != '%')
                continue;
            int hi = k + 2 < n ? hex_digit_value((unsigned char)seg[k + 1]) : -1;
            int lo = hi >= 0 ? hex_digit_value((unsigned char)seg[k + 2]) : -1;
            if (hi < 0 || lo < 0 || is_unreserved((unsigned char)(hi << 4 | lo)))
                return false;
        }
        i += n + 1;
    }
    return true;
}

const char *target_rewrite_request(struct http_message *req)
{
    struct target t;
    const char *why = target_read(req->url, req->url_len, req->method, &t);
    if (why != NULL)
        return why;
    if (t.authority != NULL) {
        const struct header *host = headers_find(&req->headers, "Host");
        if (host == NULL) {
            headers_add(&req->headers, "Host", 4, t.authority, t.authority_len);
        } else if (host->value_len != t.authority_len ||
                   strncasecmp(host->value, t.authority, t.authority_len) != 0) {
            free(t.url);
            return "Host disagrees with the authority of an absolute-form target";
        }
    }
    free(req->url);
    req->url = t.url;
    req->url_len = t.url_len;
    return NULL;
}

bool target_host_valid(const char *v, size_t len)
{
    size_t i = 0;
    if (len > 0 && v[0] == '[') { /* IP-literal: hex, ':', '.', and IPvFuture's sub-delims */
        for (i = 1; i < len && v[i] != ']'; i++)
            if (!is_unreserved((unsigned char)v[i]) && v[i] != ':' && !strchr("!$&'()*+,;=", v[i]))
                return false;
        if (i == len || i == 1)
            return false;
        i++;
    } else {
        for (; i < len && v[i] != ':'; i++) {
            unsigned char c = (unsigned char)v[i];
            if (c == '%') {
                if (i + 2 >= len || hex_digit_value((unsigned char)v[i + 1]) < 0 ||
                    hex_digit_value((unsigned char)v[i + 2]) < 0)
                    return false;
                i += 2;
            } else if (!is_unreserved(c) && (c == 0 || !strchr("!$&'()*+,;=", c))) {
                return false;
            }
        }
    }
    if (i == len)
        return true;
    if (v[i] != ':')
        return false;
    for (i++; i < len; i++) /* port: digits, possibly none */
        if (v[i] < '0' || v[i] > '9')
            return false;
    return true;
}
