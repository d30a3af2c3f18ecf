/*
 * keysource.c - finds a key's raw value in a query string, a urlencoded form
 * body or a JSON body. policy.c picks the source and judges the value; this
 * file only parses.
 *
 *   query / form text --keysource_param--> one "name=value" pair, decoded
 *   JSON body + pointer --keysource_json--> one string or number, decoded
 *
 * The JSON scanner is a recursive descent over the whole text, so a body is
 * accepted only when all of it is valid, and it walks the pointer while it
 * validates: every value is scanned with the offset of the pointer segment
 * still to match (or NO_PATH when the value is off the path). Reaching the
 * end of the pointer marks the target; its bytes are decoded only after the
 * whole text has been validated. Member names on the path are compared with
 * the segment byte by byte as they are decoded, so nothing is allocated but
 * the value returned, and the recursion is bounded by the depth limit.
 *
 *   value(seg) --'{'--> member "name": seg matches? --> value(next seg)
 *              |                        otherwise   --> value(NO_PATH)
 *              |-'['--> element i: i == index(seg)? --> value(next seg)
 *              '-scalar: seg at the pointer's end? --> the target
 *
 * Every read goes through the scanner's position and length; a truncated
 * text fails where it ends.
 */
#include "keysource.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- urlencoded text ---- */

/*
 * Decodes the byte of urlencoded text at s[*i] (*i < len) and advances past
 * it. Returns the byte, or -1 for a malformed escape.
 */
static int url_next(const char *s, size_t len, size_t *i)
{
    unsigned char c = (unsigned char)s[*i];
    if (c == '+') {
        (*i)++;
        return ' ';
    }
    if (c != '%') {
        (*i)++;
        return c;
    }
    if (len - *i < 3)
        return -1;
    int hi = hex_digit_value((unsigned char)s[*i + 1]);
    int lo = hex_digit_value((unsigned char)s[*i + 2]);
    if (hi < 0 || lo < 0)
        return -1;
    *i += 3;
    return hi * 16 + lo;
}

bool keysource_percent_decode(const char *s, size_t len, char *out, size_t *out_len)
{
    size_t i = 0, n = 0;
    while (i < len) {
        int b = url_next(s, len, &i);
        if (b < 0)
            return false;
        out[n++] = (char)b;
    }
    *out_len = n;
    return true;
}

/* Whether encoded text decodes to exactly the C string name. */
static bool url_name_equal(const char *s, size_t len, const char *name)
{
    size_t i = 0, j = 0;
    while (i < len) {
        int b = url_next(s, len, &i);
        if (b < 0 || name[j] == '\0' || (unsigned char)name[j] != b)
            return false;
        j++;
    }
    return name[j] == '\0';
}

enum ks_result keysource_param(const char *text, size_t len, const char *name, char **value_out,
                               size_t *len_out)
{
    const char *value = NULL;
    size_t value_len = 0;
    int seen = 0;

    size_t start = 0;
    while (start < len) {
        const char *pair = text + start;
        const char *amp = memchr(pair, '&', len - start);
        size_t pair_len = amp != NULL ? (size_t)(amp - pair) : len - start;
        start += pair_len + 1;
        if (pair_len == 0)
            continue;
        const char *eq = memchr(pair, '=', pair_len);
        size_t name_len = eq != NULL ? (size_t)(eq - pair) : pair_len;
        if (!url_name_equal(pair, name_len, name))
            continue;
        if (++seen > 1)
            return KS_DUPLICATE;
        value = eq != NULL ? eq + 1 : pair + pair_len;
        value_len = pair_len - name_len - (eq != NULL ? 1 : 0);
    }
    if (seen == 0)
        return KS_ABSENT;

    char *out = xmalloc(value_len + 1);
    size_t out_len = 0;
    if (!keysource_percent_decode(value, value_len, out, &out_len)) {
        free(out);
        out = NULL;
        return KS_MALFORMED;
    }
    out[out_len] = '\0';
    *value_out = out;
    *len_out = out_len;
    return KS_FOUND;
}

/* ---- media types ---- */

/* The media type of a Content-Type value: before any ';', blanks trimmed. */
static const char *media_type(const char *value, size_t len, size_t *type_len)
{
    const char *semi = memchr(value, ';', len);
    if (semi != NULL)
        len = (size_t)(semi - value);
    return trim_ows(value, len, type_len);
}

bool keysource_media_type_is(const char *value, size_t len, const char *type)
{
    size_t n;
    const char *t = media_type(value, len, &n);
    return strn_case_equal(t, n, type);
}

bool keysource_media_type_is_json(const char *value, size_t len)
{
    static const char suffix[] = "+json";
    const size_t suffix_len = sizeof(suffix) - 1;
    size_t n;
    const char *t = media_type(value, len, &n);
    if (strn_case_equal(t, n, "application/json"))
        return true;
    /* type "/" subtype, the subtype longer than the suffix: "application/ld+json" */
    const char *slash = memchr(t, '/', n);
    if (slash == NULL || slash == t)
        return false;
    size_t sub_len = n - (size_t)(slash + 1 - t);
    return sub_len > suffix_len && strn_case_equal(t + n - suffix_len, suffix_len, suffix);
}

/* ---- JSON pointers ---- */

#define NO_PATH SIZE_MAX

bool keysource_json_pointer_valid(const char *pointer)
{
    if (pointer[0] != '\0' && pointer[0] != '/')
        return false;
    for (const char *p = pointer; *p != '\0'; p++)
        if (*p == '~' && p[1] != '0' && p[1] != '1')
            return false;
    return true;
}

/* Offset of the end of the segment that starts with the '/' at seg. */
static size_t segment_end(const char *ptr, size_t ptr_len, size_t seg)
{
    const char *slash = memchr(ptr + seg + 1, '/', ptr_len - seg - 1);
    return slash != NULL ? (size_t)(slash - ptr) : ptr_len;
}

/* Reads a segment's decoded bytes one at a time ("~0" -> '~', "~1" -> '/'). */
struct seg_reader {
    const char *p;
    size_t pos, end;
};

/* The next decoded byte, or -1 at the segment's end. */
static int seg_next(struct seg_reader *r)
{
    if (r->pos >= r->end)
        return -1;
    unsigned char c = (unsigned char)r->p[r->pos++];
    if (c != '~')
        return c;
    /* the pointer was validated: a '~' is followed by '0' or '1' */
    return r->p[r->pos++] == '0' ? '~' : '/';
}

/*
 * The array index a segment names: decimal digits, no leading zero but "0"
 * itself. Returns false for "-", for anything else that is no index, and for
 * an index too large to exist.
 */
static bool segment_index(const char *ptr, size_t seg, size_t end, size_t *index)
{
    size_t first = seg + 1, n = end - first;
    if (n == 0 || (n > 1 && ptr[first] == '0'))
        return false;
    size_t v = 0;
    for (size_t i = first; i < end; i++) {
        if (ptr[i] < '0' || ptr[i] > '9')
            return false;
        unsigned d = (unsigned)(ptr[i] - '0');
        if (v > (SIZE_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *index = v;
    return true;
}

/* ---- JSON scanner ---- */

struct json_scan {
    const unsigned char *s;
    size_t len;
    size_t pos;
    const char *ptr; /* the pointer, "" when only validating */
    size_t ptr_len;
    bool found;          /* the value at the pointer was reached */
    bool duplicate;      /* a member on the path occurs twice */
    bool target_string;  /* the target is a string (else a number, or unusable) */
    bool target_usable;  /* the target is a string or a number */
    size_t target_start; /* a string's opening quote, or a number's first byte */
    size_t target_end;   /* one past the target */
};

/* Where decoded string bytes go: compared with a segment, copied out, or both ignored. */
struct string_sink {
    struct seg_reader *cmp; /* NULL: no comparison */
    bool equal;             /* every byte so far matched */
    char *out;              /* NULL: not copied */
    size_t out_len;
};

static void sink_put(struct string_sink *k, unsigned char c)
{
    if (k->cmp != NULL && k->equal && seg_next(k->cmp) != c)
        k->equal = false;
    if (k->out != NULL)
        k->out[k->out_len++] = (char)c;
}

static void sink_put_utf8(struct string_sink *k, uint32_t cp)
{
    if (cp < 0x80) {
        sink_put(k, (unsigned char)cp);
    } else if (cp < 0x800) {
        sink_put(k, (unsigned char)(0xc0 | (cp >> 6)));
        sink_put(k, (unsigned char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        sink_put(k, (unsigned char)(0xe0 | (cp >> 12)));
        sink_put(k, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
        sink_put(k, (unsigned char)(0x80 | (cp & 0x3f)));
    } else {
        sink_put(k, (unsigned char)(0xf0 | (cp >> 18)));
        sink_put(k, (unsigned char)(0x80 | ((cp >> 12) & 0x3f)));
        sink_put(k, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
        sink_put(k, (unsigned char)(0x80 | (cp & 0x3f)));
    }
}

static void skip_ws(struct json_scan *js)
{
    while (js->pos < js->len) {
        unsigned char c = js->s[js->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        js->pos++;
    }
}

/* Reads the four hex digits of a \u escape at pos (just after the 'u'). */
static bool read_hex4(struct json_scan *js, uint32_t *out)
{
    if (js->len - js->pos < 4)
        return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit_value(js->s[js->pos + (size_t)i]);
        if (d < 0)
            return false;
        v = v * 16 + (uint32_t)d;
    }
    js->pos += 4;
    *out = v;
    return true;
}

/* A \u escape after the backslash and 'u': one code point, or a surrogate pair. */
static bool scan_unicode_escape(struct json_scan *js, struct string_sink *k)
{
    uint32_t cp;
    if (!read_hex4(js, &cp))
        return false;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return false; /* a low surrogate alone */
    if (cp >= 0xd800 && cp <= 0xdbff) {
        uint32_t lo;
        if (js->len - js->pos < 2 || js->s[js->pos] != '\\' || js->s[js->pos + 1] != 'u')
            return false; /* a high surrogate alone */
        js->pos += 2;
        if (!read_hex4(js, &lo) || lo < 0xdc00 || lo > 0xdfff)
            return false;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    sink_put_utf8(k, cp);
    return true;
}

/*
 * Length of the well-formed UTF-8 sequence (RFC 3629 §4) that starts with the
 * non-ASCII byte at pos, or 0 when it is ill-formed or truncated.
 */
static size_t utf8_sequence(const struct json_scan *js)
{
    const unsigned char *p = js->s + js->pos;
    size_t avail = js->len - js->pos;
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* no overlong forms */
        else if (c == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (avail < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

/* A string from its opening quote at pos; leaves pos after the closing quote. */
static bool scan_string(struct json_scan *js, struct string_sink *k)
{
    js->pos++; /* the opening quote */
    while (js->pos < js->len) {
        unsigned char c = js->s[js->pos];
        if (c == '"') {
            js->pos++;
            return true;
        }
        if (c < 0x20)
            return false; /* control characters must be escaped */
        if (c >= 0x80) {
            size_t n = utf8_sequence(js);
            if (n == 0)
                return false;
            for (size_t i = 0; i < n; i++)
                sink_put(k, js->s[js->pos + i]);
            js->pos += n;
            continue;
        }
        if (c != '\\') {
            sink_put(k, c);
            js->pos++;
            continue;
        }
        if (js->len - js->pos < 2)
            return false;
        unsigned char e = js->s[js->pos + 1];
        js->pos += 2;
        switch (e) {
        case '"': sink_put(k, '"'); break;
        case '\\': sink_put(k, '\\'); break;
        case '/': sink_put(k, '/'); break;
        case 'b': sink_put(k, '\b'); break;
        case 'f': sink_put(k, '\f'); break;
        case 'n': sink_put(k, '\n'); break;
        case 'r': sink_put(k, '\r'); break;
        case 't': sink_put(k, '\t'); break;
        case 'u':
            if (!scan_unicode_escape(js, k))
                return false;
            break;
        default: return false;
        }
    }
    return false; /* unterminated */
}

static bool is_digit_at(const struct json_scan *js)
{
    return js->pos < js->len && js->s[js->pos] >= '0' && js->s[js->pos] <= '9';
}

static void skip_digits(struct json_scan *js)
{
    while (is_digit_at(js))
        js->pos++;
}

/* -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static bool scan_number(struct json_scan *js)
{
    if (js->s[js->pos] == '-')
        js->pos++;
    if (!is_digit_at(js))
        return false;
    if (js->s[js->pos] == '0')
        js->pos++; /* a following digit is left for the caller to reject */
    else
        skip_digits(js);
    if (js->pos < js->len && js->s[js->pos] == '.') {
        js->pos++;
        if (!is_digit_at(js))
            return false;
        skip_digits(js);
    }
    if (js->pos < js->len && (js->s[js->pos] == 'e' || js->s[js->pos] == 'E')) {
        js->pos++;
        if (js->pos < js->len && (js->s[js->pos] == '+' || js->s[js->pos] == '-'))
            js->pos++;
        if (!is_digit_at(js))
            return false;
        skip_digits(js);
    }
    return true;
}

static bool scan_literal(struct json_scan *js, const char *word)
{
    size_t n = strlen(word);
    if (js->len - js->pos < n || memcmp(js->s + js->pos, word, n) != 0)
        return false;
    js->pos += n;
    return true;
}

static bool scan_value(struct json_scan *js, int depth, size_t seg);

/*
 * An object from its '{' at pos. On the path, each member name is compared
 * with the segment at seg; a matching member's value continues the path.
 */
static bool scan_object(struct json_scan *js, int depth, size_t seg)
{
    bool on_path = seg != NO_PATH && seg < js->ptr_len;
    size_t next = on_path ? segment_end(js->ptr, js->ptr_len, seg) : NO_PATH;
    bool matched = false;

    js->pos++; /* '{' */
    skip_ws(js);
    if (js->pos < js->len && js->s[js->pos] == '}') {
        js->pos++;
        return true;
    }
    for (;;) {
        if (js->pos >= js->len || js->s[js->pos] != '"')
            return false;
        struct seg_reader r = {js->ptr, on_path ? seg + 1 : 0, on_path ? next : 0};
        struct string_sink k = {on_path ? &r : NULL, true, NULL, 0};
        if (!scan_string(js, &k))
            return false;
        bool match = on_path && k.equal && seg_next(&r) < 0;
        if (match && matched)
            js->duplicate = true;
        matched = matched || match;

        skip_ws(js);
        if (js->pos >= js->len || js->s[js->pos] != ':')
            return false;
        js->pos++;
        if (!scan_value(js, depth, match ? next : NO_PATH))
            return false;
        skip_ws(js);
        if (js->pos >= js->len)
            return false;
        if (js->s[js->pos] == '}') {
            js->pos++;
            return true;
        }
        if (js->s[js->pos] != ',')
            return false;
        js->pos++;
        skip_ws(js);
    }
}

/* An array from its '[' at pos. On the path, the element the segment indexes continues it. */
static bool scan_array(struct json_scan *js, int depth, size_t seg)
{
    size_t next = NO_PATH, want = 0;
    if (seg != NO_PATH && seg < js->ptr_len) {
        size_t end = segment_end(js->ptr, js->ptr_len, seg);
        if (segment_index(js->ptr, seg, end, &want))
            next = end;
    }

    js->pos++; /* '[' */
    skip_ws(js);
    if (js->pos < js->len && js->s[js->pos] == ']') {
        js->pos++;
        return true;
    }
    for (size_t i = 0;; i++) {
        if (!scan_value(js, depth, next != NO_PATH && i == want ? next : NO_PATH))
            return false;
        skip_ws(js);
        if (js->pos >= js->len)
            return false;
        if (js->s[js->pos] == ']') {
            js->pos++;
            return true;
        }
        if (js->s[js->pos] != ',')
            return false;
        js->pos++;
    }
}

/*
 * One value, after optional whitespace. depth counts the containers around
 * it; seg is the offset of the pointer's next segment ('/'), ptr_len when the
 * value is the target, NO_PATH when it is off the path.
 */
static bool scan_value(struct json_scan *js, int depth, size_t seg)
{
    skip_ws(js);
    if (js->pos >= js->len)
        return false;
    size_t start = js->pos;
    bool ok, usable = false, string = false;
    switch (js->s[js->pos]) {
    case '{':
    case '[':
        if (depth >= KEYSOURCE_JSON_MAX_DEPTH)
            return false;
        if (js->s[js->pos] == '{')
            ok = scan_object(js, depth + 1, seg);
        else
            ok = scan_array(js, depth + 1, seg);
        break;
    case '"': {
        struct string_sink k = {NULL, true, NULL, 0};
        ok = scan_string(js, &k);
        usable = string = true;
        break;
    }
    case 't': ok = scan_literal(js, "true"); break;
    case 'f': ok = scan_literal(js, "false"); break;
    case 'n': ok = scan_literal(js, "null"); break;
    default:
        ok = scan_number(js);
        usable = true;
        break;
    }
    if (ok && seg == js->ptr_len) {
        js->found = true;
        js->target_usable = usable;
        js->target_string = string;
        js->target_start = start;
        js->target_end = js->pos;
    }
    return ok;
}

/* Scans all of doc, following pointer (already validated) when it is not NULL. */
static bool json_scan_all(struct json_scan *js, const char *doc, size_t len, const char *pointer)
{
    memset(js, 0, sizeof(*js));
    js->s = (const unsigned char *)doc;
    js->len = len;
    js->ptr = pointer != NULL ? pointer : "";
    js->ptr_len = pointer != NULL ? strlen(pointer) : 0;
    if (!scan_value(js, 0, pointer != NULL ? 0 : NO_PATH))
        return false;
    skip_ws(js);
    return js->pos == js->len;
}

bool keysource_json_valid(const char *doc, size_t len)
{
    struct json_scan js;
    return json_scan_all(&js, doc, len, NULL);
}

enum ks_result keysource_json(const char *doc, size_t len, const char *pointer, char **value_out,
                              size_t *len_out)
{
    bool pointer_ok = keysource_json_pointer_valid(pointer);
    struct json_scan js;
    if (!json_scan_all(&js, doc, len, pointer_ok ? pointer : NULL))
        return KS_MALFORMED;
    if (js.duplicate)
        return KS_DUPLICATE;
    if (!pointer_ok || !js.found || !js.target_usable)
        return KS_ABSENT;

    /* A string decodes to no more bytes than its escaped form; the quotes make room for the NUL. */
    size_t raw_len = js.target_end - js.target_start;
    char *out = xmalloc(raw_len + 1);
    size_t out_len;
    if (js.target_string) {
        struct string_sink k = {NULL, true, out, 0};
        js.pos = js.target_start;
        (void)scan_string(&js, &k); /* validated above */
        out_len = k.out_len;
    } else {
        memcpy(out, doc + js.target_start, raw_len);
        out_len = raw_len;
    }
    out[out_len] = '\0';
    *value_out = out;
    *len_out = out_len;
    return KS_FOUND;
}
