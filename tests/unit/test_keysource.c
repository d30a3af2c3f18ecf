/*
 * test_keysource.c - the parsers behind the query:, form: and json: key
 * sources (keysource.c): percent-decoding, parameter lookup, the JSON
 * grammar, RFC 6901 pointers, the depth limit and the media-type tests.
 *
 * Every input is copied into a buffer of exactly its length, without a NUL,
 * so that AddressSanitizer catches any read past the end.
 */
#include <string.h>

#include "keysource.h"
#include "unit.h"

/* A byte string given as a literal, embedded NULs included. */
struct bytes {
    const char *p;
    size_t n;
};
#define B(lit)                                                                                     \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

/* A heap copy of exactly n bytes (one spare byte for n == 0, never read). */
static char *exact(const char *p, size_t n)
{
    char *c = xmalloc(n > 0 ? n : 1);
    memcpy(c, p, n);
    return c;
}

static void assert_bytes(const char *got, size_t got_len, struct bytes want, int i)
{
    ck_assert_msg(got_len == want.n && memcmp(got, want.p, want.n) == 0,
                  "case %d: got \"%.*s\" (%zu bytes), want \"%.*s\" (%zu bytes)", i, (int)got_len,
                  got, got_len, (int)want.n, want.p, want.n);
    ck_assert_int_eq(got[got_len], '\0');
}

/* ---- keysource_percent_decode ---- */

static const struct {
    struct bytes in;
    bool ok;
    struct bytes out;
} decode_cases[] = {
    {B(""), true, B("")},
    {B("abc"), true, B("abc")},
    {B("a+b"), true, B("a b")},
    {B("+"), true, B(" ")},
    {B("%41"), true, B("A")},
    {B("%4a%4A"), true, B("JJ")},
    {B("%7e%7E"), true, B("~~")},
    {B("100%25"), true, B("100%")},
    {B("+%2B+"), true, B(" + ")},
    {B("%00"), true, B("\0")},
    {B("%ff%C3%a9"), true, B("\xff\xc3\xa9")},
    {B("a%20b%20"), true, B("a b ")},
    {B("%2541"), true, B("%41")}, /* decoded once only */
    {B("\x80\x01"), true, B("\x80\x01")},
    {B("%"), false, B("")},
    {B("%4"), false, B("")},
    {B("a%"), false, B("")},
    {B("a%4"), false, B("")},
    {B("%zz"), false, B("")},
    {B("%4g"), false, B("")},
    {B("%g4"), false, B("")},
    {B("%%"), false, B("")},
    {B("%%41"), false, B("")},
    {B("% 41"), false, B("")},
    {B("%+1"), false, B("")},
    {B("%-1"), false, B("")},
    {B("ok%41%"), false, B("")},
};

START_TEST(test_percent_decode)
{
    struct bytes in = decode_cases[_i].in;
    char *s = exact(in.p, in.n);
    char *out = xmalloc(in.n + 1);
    size_t n = 0;
    bool ok = keysource_percent_decode(s, in.n, out, &n);
    ck_assert_msg(ok == decode_cases[_i].ok, "case %d (%s)", _i, in.p);
    if (ok) {
        out[n] = '\0';
        assert_bytes(out, n, decode_cases[_i].out, _i);
    }
    free(out);
    free(s);
}
END_TEST

/* ---- keysource_param ---- */

static const struct {
    struct bytes text;
    const char *name;
    enum ks_result want;
    struct bytes value;
} param_cases[] = {
    {B("key=abc"), "key", KS_FOUND, B("abc")},
    {B("a=1&key=abc&b=2"), "key", KS_FOUND, B("abc")},
    {B("a=1&b=2&key=abc"), "key", KS_FOUND, B("abc")},
    {B("&&key=abc&&"), "key", KS_FOUND, B("abc")},
    {B("key=a&"), "key", KS_FOUND, B("a")},
    {B("&key=a"), "key", KS_FOUND, B("a")},
    /* present but empty */
    {B("key="), "key", KS_FOUND, B("")},
    {B("key"), "key", KS_FOUND, B("")},
    {B("key&a=1"), "key", KS_FOUND, B("")},
    {B("a=1&key"), "key", KS_FOUND, B("")},
    /* absent */
    {B(""), "key", KS_ABSENT, B("")},
    {B("&"), "key", KS_ABSENT, B("")},
    {B("=abc"), "key", KS_ABSENT, B("")},
    {B("Key=abc"), "key", KS_ABSENT, B("")},
    {B("KEY=abc"), "key", KS_ABSENT, B("")},
    {B("key=abc"), "ke", KS_ABSENT, B("")},
    {B("key=abc"), "keyx", KS_ABSENT, B("")},
    {B("keyx=abc&xkey=1"), "key", KS_ABSENT, B("")},
    {B("a=key"), "key", KS_ABSENT, B("")},
    {B(" key=abc"), "key", KS_ABSENT, B("")},
    {B("key =abc"), "key", KS_ABSENT, B("")},
    {B("k%00ey=1"), "k", KS_ABSENT, B("")},
    /* only '&' separates */
    {B("a=1;key=2"), "key", KS_ABSENT, B("")},
    {B("key=a;b=c"), "key", KS_FOUND, B("a;b=c")},
    {B("key=a=b"), "key", KS_FOUND, B("a=b")},
    {B("key=a#frag"), "key", KS_FOUND, B("a#frag")},
    {B("key=a?b"), "key", KS_FOUND, B("a?b")},
    /* value decoding */
    {B("key=a%20b"), "key", KS_FOUND, B("a b")},
    {B("key=a+b"), "key", KS_FOUND, B("a b")},
    {B("key=a%2Bb"), "key", KS_FOUND, B("a+b")},
    {B("key=%41%62c"), "key", KS_FOUND, B("Abc")},
    {B("key=%26%3D"), "key", KS_FOUND, B("&=")},
    {B("key=%00"), "key", KS_FOUND, B("\0")},
    {B("key=%C3%A9"), "key", KS_FOUND, B("\xc3\xa9")},
    {B("key=\xc3\xa9"), "key", KS_FOUND, B("\xc3\xa9")},
    {B("key=a\0b"), "key", KS_FOUND, B("a\0b")},
    /* name decoding */
    {B("k%65y=abc"), "key", KS_FOUND, B("abc")},
    {B("%6B%65%79=abc"), "key", KS_FOUND, B("abc")},
    {B("k+y=abc"), "k y", KS_FOUND, B("abc")},
    {B("k%20y=abc"), "k y", KS_FOUND, B("abc")},
    {B("key%3D=x"), "key=", KS_FOUND, B("x")},
    {B("a%26b=x"), "a&b", KS_FOUND, B("x")},
    {B("k%C3%A9y=x"), "k\xc3\xa9y", KS_FOUND, B("x")},
    {B("order.id=7"), "order.id", KS_FOUND, B("7")},
    {B("a[b]=7"), "a[b]", KS_FOUND, B("7")},
    /* a malformed name matches nothing; malformed pairs elsewhere do not matter */
    {B("ke%zzy=abc&key=ok"), "key", KS_FOUND, B("ok")},
    {B("key%=abc"), "key", KS_ABSENT, B("")},
    {B("key%=abc"), "key%", KS_ABSENT, B("")},
    {B("key=ok&x=%zz"), "key", KS_FOUND, B("ok")},
    {B("x=%&key=ok"), "key", KS_FOUND, B("ok")},
    /* duplicates, however spelled */
    {B("key=a&key=b"), "key", KS_DUPLICATE, B("")},
    {B("key=a&key=a"), "key", KS_DUPLICATE, B("")},
    {B("key=a&key"), "key", KS_DUPLICATE, B("")},
    {B("key&key"), "key", KS_DUPLICATE, B("")},
    {B("key=a&k%65y=b"), "key", KS_DUPLICATE, B("")},
    {B("key=%zz&key=b"), "key", KS_DUPLICATE, B("")},
    {B("k+y=1&k%20y=2"), "k y", KS_DUPLICATE, B("")},
    /* malformed escapes in the value found */
    {B("key=%zz"), "key", KS_MALFORMED, B("")},
    {B("key=%4"), "key", KS_MALFORMED, B("")},
    {B("key=%"), "key", KS_MALFORMED, B("")},
    {B("key=abc%"), "key", KS_MALFORMED, B("")},
    {B("key=%%41"), "key", KS_MALFORMED, B("")},
    {B("key=%g0"), "key", KS_MALFORMED, B("")},
    {B("key=%4&a=1"), "key", KS_MALFORMED, B("")},
    {B("a=1&key=ab%2"), "key", KS_MALFORMED, B("")},
};

START_TEST(test_param)
{
    struct bytes text = param_cases[_i].text;
    char *s = exact(text.p, text.n);
    char *value = NULL;
    size_t len = 12345;
    enum ks_result r = keysource_param(s, text.n, param_cases[_i].name, &value, &len);
    ck_assert_msg(r == param_cases[_i].want, "case %d (%.*s): got %d want %d", _i, (int)text.n,
                  text.p, (int)r, (int)param_cases[_i].want);
    if (r == KS_FOUND) {
        assert_bytes(value, len, param_cases[_i].value, _i);
    } else {
        ck_assert_ptr_null(value);
        ck_assert_uint_eq(len, 12345);
    }
    free(value);
    free(s);
}
END_TEST

START_TEST(test_param_null_text)
{
    char *value = NULL;
    size_t len = 0;
    ck_assert_int_eq(keysource_param(NULL, 0, "key", &value, &len), KS_ABSENT);
    ck_assert_ptr_null(value);
}
END_TEST

START_TEST(test_param_long_value)
{
    /* a long value with escapes spanning the whole of it */
    size_t n = 3 * 1000;
    char *text = xmalloc(4 + n);
    memcpy(text, "key=", 4);
    for (size_t i = 0; i < 1000; i++)
        memcpy(text + 4 + 3 * i, "%7A", 3);
    char *value = NULL;
    size_t len = 0;
    ck_assert_int_eq(keysource_param(text, 4 + n, "key", &value, &len), KS_FOUND);
    ck_assert_uint_eq(len, 1000);
    for (size_t i = 0; i < len; i++)
        ck_assert_int_eq(value[i], 'z');
    free(value);
    /* cut inside the last escape */
    value = NULL;
    ck_assert_int_eq(keysource_param(text, 4 + n - 1, "key", &value, &len), KS_MALFORMED);
    ck_assert_int_eq(keysource_param(text, 4 + n - 2, "key", &value, &len), KS_MALFORMED);
    ck_assert_ptr_null(value);
    free(text);
}
END_TEST

/* ---- JSON grammar ---- */

static const struct {
    struct bytes doc;
    bool valid;
} json_cases[] = {
    /* numbers */
    {B("0"), true},
    {B("-0"), true},
    {B("1"), true},
    {B("-1"), true},
    {B("12.5"), true},
    {B("0.5"), true},
    {B("-0.0e0"), true},
    {B("1e5"), true},
    {B("1E5"), true},
    {B("1e+5"), true},
    {B("1E-05"), true},
    {B("123456789012345678901234567890"), true},
    {B("1.5e308"), true},
    {B("1e99999"), true},
    {B("01"), false},
    {B("00"), false},
    {B("-01"), false},
    {B("-"), false},
    {B("+1"), false},
    {B("--1"), false},
    {B(".5"), false},
    {B("1."), false},
    {B("1.e5"), false},
    {B("1e"), false},
    {B("1e+"), false},
    {B("1e-"), false},
    {B("1E+-1"), false},
    {B("1.5.5"), false},
    {B("0x10"), false},
    {B("1_000"), false},
    {B("NaN"), false},
    {B("Infinity"), false},
    {B("-Infinity"), false},
    {B("1 2"), false},
    {B("-a"), false},
    /* literals */
    {B("true"), true},
    {B("false"), true},
    {B("null"), true},
    {B("tru"), false},
    {B("t"), false},
    {B("True"), false},
    {B("NULL"), false},
    {B("nul"), false},
    {B("nulll"), false},
    {B("falsey"), false},
    {B("true false"), false},
    {B("undefined"), false},
    /* strings */
    {B("\"\""), true},
    {B("\"x\""), true},
    {B("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\""), true},
    {B("\"\\u0041\""), true},
    {B("\"\\u00e9\\u00E9\""), true},
    {B("\"\\u0000\""), true},
    {B("\"\\uD83D\\uDE00\""), true},
    {B("\"\\udbff\\udfff\""), true},
    {B("\"\\uFFFF\""), true},
    {B("\"caf\xc3\xa9\""), true},
    {B("\"\xe2\x82\xac\""), true},
    {B("\"\xf0\x9f\x98\x80\""), true},
    {B("\"\xf4\x8f\xbf\xbf\""), true},
    {B("\"\xed\x9f\xbf\""), true},
    {B("\"\xee\x80\x80\""), true},
    {B("\"\x7f\""), true},
    {B("\"a b ~ /\""), true},
    {B("\"abc"), false},
    {B("\""), false},
    {B("\"\\\""), false},
    {B("\"\\"), false},
    {B("\"\\x\""), false},
    {B("\"\\a\""), false},
    {B("\"\\'\""), false},
    {B("\"\\U0041\""), false},
    {B("\"\\u\""), false},
    {B("\"\\u12\""), false},
    {B("\"\\u123\""), false},
    {B("\"\\u12G4\""), false},
    {B("\"\\u 123\""), false},
    {B("\"\\uD800\""), false},
    {B("\"\\uDBFF\""), false},
    {B("\"\\uDC00\""), false},
    {B("\"\\uDFFF\""), false},
    {B("\"\\uDE00\\uD83D\""), false},
    {B("\"\\uD800\\u0041\""), false},
    {B("\"\\uD800\\uD800\""), false},
    {B("\"\\uD800x\""), false},
    {B("\"\\uD800\\\""), false},
    {B("\"\\uD800\\n\""), false},
    {B("\"\\uD800\\uDC0\""), false},
    {B("\"\\uD800"), false},
    {B("\"a\tb\""), false},
    {B("\"a\nb\""), false},
    {B("\"a\rb\""), false},
    {B("\"\x01\""), false},
    {B("\"\x1f\""), false},
    {B("\"a\0b\""), false},
    {B("'a'"), false},
    /* UTF-8 */
    {B("\"\xc3\""), false},
    {B("\"\xc3"), false},
    {B("\"\xe2\x82\""), false},
    {B("\"\xf0\x9f\x98\""), false},
    {B("\"\xc0\x80\""), false},
    {B("\"\xc1\xbf\""), false},
    {B("\"\xe0\x80\x80\""), false},
    {B("\"\xe0\x9f\xbf\""), false},
    {B("\"\xf0\x80\x80\x80\""), false},
    {B("\"\xf0\x8f\xbf\xbf\""), false},
    {B("\"\xed\xa0\x80\""), false},
    {B("\"\xed\xbf\xbf\""), false},
    {B("\"\xf4\x90\x80\x80\""), false},
    {B("\"\xf5\x80\x80\x80\""), false},
    {B("\"\xff\""), false},
    {B("\"\xfe\""), false},
    {B("\"\x80\""), false},
    {B("\"\xbf\""), false},
    {B("\"\xc3\xa9\xa9\""), false},
    {B("\"\xc3\x41\""), false},
    {B("\"\xe2\x28\xa1\""), false},
    {B("\xc3\xa9"), false},
    {B("\xef\xbb\xbf{}"), false}, /* no byte-order mark */
    /* containers */
    {B("{}"), true},
    {B("[]"), true},
    {B("{ }"), true},
    {B("[ ]"), true},
    {B("{\"a\":1}"), true},
    {B("{\"\":0}"), true},
    {B("{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}"), true},
    {B("[1,\"2\",[3],{\"4\":4},true,false,null,-5.5e-5]"), true},
    {B(" \t\r\n{ \"a\" : [ 1 , { } ] } \n"), true},
    {B("[[[[[]]]]]"), true},
    {B("{\"a\":1,\"a\":2}"), true}, /* duplicates are valid JSON */
    {B("{"), false},
    {B("}"), false},
    {B("["), false},
    {B("]"), false},
    {B("[1"), false},
    {B("[1,"), false},
    {B("{\"a\""), false},
    {B("{\"a\":"), false},
    {B("{\"a\":1"), false},
    {B("{\"a\":1,"), false},
    {B("{\"a\"}"), false},
    {B("{\"a\":}"), false},
    {B("{\"a\":1,}"), false},
    {B("[1,]"), false},
    {B("[,1]"), false},
    {B("[1,,2]"), false},
    {B("{,}"), false},
    {B("[,]"), false},
    {B("{a:1}"), false},
    {B("{'a':1}"), false},
    {B("{1:2}"), false},
    {B("{null:2}"), false},
    {B("{\"a\" 1}"), false},
    {B("{\"a\"::1}"), false},
    {B("{\"a\":1 \"b\":2}"), false},
    {B("{\"a\":1;\"b\":2}"), false},
    {B("[1 2]"), false},
    {B("{\"a\":1}}"), false},
    {B("[1]]"), false},
    {B("[}"), false},
    {B("{]"), false},
    {B("[1}"), false},
    {B("{\"a\":1]"), false},
    /* one text, nothing after it */
    {B(""), false},
    {B(" "), false},
    {B(" \n\t\r "), false},
    {B("{}x"), false},
    {B("{} {}"), false},
    {B("{},{}"), false},
    {B("1,"), false},
    {B("{}\0"), false},
    {B("\0"), false},
    {B("\0{}"), false},
    {B("{}\f"), false},
    {B("\v1"), false},
    {B("\xc2\xa0"
       "1"),
     false},
    {B("/* c */ 1"), false},
    {B("1 // c"), false},
};

START_TEST(test_json_grammar)
{
    struct bytes doc = json_cases[_i].doc;
    char *s = exact(doc.p, doc.n);
    ck_assert_msg(keysource_json_valid(s, doc.n) == json_cases[_i].valid, "case %d (%.*s)", _i,
                  (int)doc.n, doc.p);

    /* keysource_json agrees: malformed exactly when invalid */
    char *value = NULL;
    size_t len = 0;
    enum ks_result r = keysource_json(s, doc.n, "", &value, &len);
    ck_assert_msg((r == KS_MALFORMED) == !json_cases[_i].valid, "case %d: %d", _i, (int)r);
    free(value);

    /* every proper prefix of a valid text that is a container or string is invalid */
    if (json_cases[_i].valid && doc.n > 0 &&
        (doc.p[0] == '{' || doc.p[0] == '[' || doc.p[0] == '"'))
        for (size_t n = 0; n < doc.n; n++)
            ck_assert_msg(!keysource_json_valid(s, n), "case %d: prefix %zu", _i, n);
    free(s);
}
END_TEST

/* ---- JSON pointers ---- */

static const struct {
    struct bytes doc;
    const char *pointer;
    enum ks_result want;
    struct bytes value;
} ptr_cases[] = {
    /* strings and numbers */
    {B("{\"id\":\"abc\"}"), "/id", KS_FOUND, B("abc")},
    {B("{\"id\":12345}"), "/id", KS_FOUND, B("12345")},
    {B("{\"id\":1.5e3}"), "/id", KS_FOUND, B("1.5e3")},
    {B("{\"id\":-0.5E-2}"), "/id", KS_FOUND, B("-0.5E-2")},
    {B("{\"id\":0}"), "/id", KS_FOUND, B("0")},
    {B("{\"id\":-0}"), "/id", KS_FOUND, B("-0")},
    {B("{\"id\":123456789012345678901234567890}"), "/id", KS_FOUND,
     B("123456789012345678901234567890")},
    {B("{\"n\": 12 }"), "/n", KS_FOUND, B("12")},
    {B("{\"n\":12\n,\"m\":3}"), "/n", KS_FOUND, B("12")},
    {B("[7]"), "/0", KS_FOUND, B("7")},
    {B(" { \"id\" : \"abc\" } "), "/id", KS_FOUND, B("abc")},
    {B("{\"id\":\"\"}"), "/id", KS_FOUND, B("")},
    {B("{\"id\":\"a b\"}"), "/id", KS_FOUND, B("a b")},
    /* other types */
    {B("{\"id\":true}"), "/id", KS_ABSENT, B("")},
    {B("{\"id\":false}"), "/id", KS_ABSENT, B("")},
    {B("{\"id\":null}"), "/id", KS_ABSENT, B("")},
    {B("{\"id\":{}}"), "/id", KS_ABSENT, B("")},
    {B("{\"id\":[]}"), "/id", KS_ABSENT, B("")},
    {B("{\"id\":{\"a\":\"b\"}}"), "/id", KS_ABSENT, B("")},
    {B("{\"id\":[\"b\"]}"), "/id", KS_ABSENT, B("")},
    /* the whole text */
    {B("\"root\""), "", KS_FOUND, B("root")},
    {B(" 42 "), "", KS_FOUND, B("42")},
    {B("{}"), "", KS_ABSENT, B("")},
    {B("null"), "", KS_ABSENT, B("")},
    /* nesting */
    {B("{\"a\":{\"b\":{\"c\":\"deep\"}}}"), "/a/b/c", KS_FOUND, B("deep")},
    {B("{\"x\":1,\"a\":{\"y\":[],\"b\":{\"z\":{},\"c\":\"deep\"}}}"), "/a/b/c", KS_FOUND,
     B("deep")},
    {B("{\"a\":{\"b\":1}}"), "/a/c", KS_ABSENT, B("")},
    {B("{\"a\":{\"b\":1}}"), "/a/b/c", KS_ABSENT, B("")},
    {B("{\"a\":{\"b\":\"s\"}}"), "/a/b/0", KS_ABSENT, B("")},
    {B("{\"a\":{\"b\":1}}"), "/x/y", KS_ABSENT, B("")},
    {B("{\"a\":{\"b\":1}}"), "/a", KS_ABSENT, B("")},
    {B("{\"b\":{\"a\":\"inner\"},\"a\":\"outer\"}"), "/a", KS_FOUND, B("outer")},
    {B("{\"b\":{\"a\":\"inner\"},\"a\":\"outer\"}"), "/b/a", KS_FOUND, B("inner")},
    {B("[[\"a\",\"b\"],[\"c\",{\"d\":\"e\"}]]"), "/1/1/d", KS_FOUND, B("e")},
    {B("[[\"a\",\"b\"],[\"c\",{\"d\":\"e\"}]]"), "/0/1", KS_FOUND, B("b")},
    {B("[[\"a\",\"b\"],[\"c\",{\"d\":\"e\"}]]"), "/1/0", KS_FOUND, B("c")},
    /* array indices */
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/0", KS_FOUND, B("x")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/2", KS_FOUND, B("z")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/3", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/-", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/01", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/00", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/-1", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/+1", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/1x", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/ 1", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/99999999999999999999999", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/18446744073709551615", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/18446744073709551616", KS_ABSENT, B("")},
    {B("{\"a\":[\"x\",\"y\",\"z\"]}"), "/a/x", KS_ABSENT, B("")},
    {B("[\"x\"]"), "/0/0", KS_ABSENT, B("")},
    {B("[]"), "/0", KS_ABSENT, B("")},
    {B("[1,[2,[3,[4]]]]"), "/1/1/1/0", KS_FOUND, B("4")},
    /* member names that look like indices are names */
    {B("{\"0\":\"zero\"}"), "/0", KS_FOUND, B("zero")},
    {B("{\"01\":\"x\"}"), "/01", KS_FOUND, B("x")},
    {B("{\"-\":\"dash\"}"), "/-", KS_FOUND, B("dash")},
    /* pointer escapes */
    {B("{\"a/b\":\"slash\"}"), "/a~1b", KS_FOUND, B("slash")},
    {B("{\"a/b\":\"slash\"}"), "/a/b", KS_ABSENT, B("")},
    {B("{\"a\":{\"b\":\"nested\"},\"a/b\":\"slash\"}"), "/a/b", KS_FOUND, B("nested")},
    {B("{\"a\":{\"b\":\"nested\"},\"a/b\":\"slash\"}"), "/a~1b", KS_FOUND, B("slash")},
    {B("{\"m~n\":\"tilde\"}"), "/m~0n", KS_FOUND, B("tilde")},
    {B("{\"m~n\":\"tilde\"}"), "/m~n", KS_ABSENT, B("")}, /* an invalid pointer */
    {B("{\"~1\":\"lit\"}"), "/~01", KS_FOUND, B("lit")},
    {B("{\"/\":\"lit\"}"), "/~01", KS_ABSENT, B("")},
    {B("{\"~/\":\"both\"}"), "/~0~1", KS_FOUND, B("both")},
    {B("{\"~\":{\"/\":\"x\"}}"), "/~0/~1", KS_FOUND, B("x")},
    {B("{\"a\":\"x\"}"), "/a~2", KS_ABSENT, B("")},
    {B("{\"a\":\"x\"}"), "/a~", KS_ABSENT, B("")},
    {B("{\"a\":\"x\"}"), "a", KS_ABSENT, B("")},
    {B("{\"a\":\"x\"}"), "#/a", KS_ABSENT, B("")},
    /* empty names */
    {B("{\"\":\"empty\"}"), "/", KS_FOUND, B("empty")},
    {B("{\"\":{\"\":\"e2\"}}"), "//", KS_FOUND, B("e2")},
    {B("{\"a\":{\"\":\"e3\"}}"), "/a/", KS_FOUND, B("e3")},
    {B("{\"a\":\"x\"}"), "/", KS_ABSENT, B("")},
    /* member names compare after their escapes are decoded */
    {B("{\"a\\\"b\":\"q\"}"), "/a\"b", KS_FOUND, B("q")},
    {B("{\"a\\\\b\":\"q\"}"), "/a\\b", KS_FOUND, B("q")},
    {B("{\"\\u0061\":\"u\"}"), "/a", KS_FOUND, B("u")},
    {B("{\"\\u00e9\":\"e\"}"), "/\xc3\xa9", KS_FOUND, B("e")},
    {B("{\"\xc3\xa9\":\"e\"}"), "/\xc3\xa9", KS_FOUND, B("e")},
    {B("{\"\\u20AC\":\"euro\"}"), "/\xe2\x82\xac", KS_FOUND, B("euro")},
    {B("{\"\\uD83D\\uDE00\":\"smile\"}"), "/\xf0\x9f\x98\x80", KS_FOUND, B("smile")},
    {B("{\"a\\/b\":\"s\"}"), "/a~1b", KS_FOUND, B("s")},
    {B("{\"a\\nb\":\"nl\"}"), "/a\nb", KS_FOUND, B("nl")},
    {B("{\"a\\tb\":\"tab\"}"), "/a\tb", KS_FOUND, B("tab")},
    {B("{\"a\\u0000b\":\"nul\"}"), "/a", KS_ABSENT, B("")},
    {B("{\"ab\":\"x\"}"), "/a", KS_ABSENT, B("")},
    {B("{\"a\":\"x\"}"), "/ab", KS_ABSENT, B("")},
    {B("{\"A\":\"x\"}"), "/a", KS_ABSENT, B("")},
    {B("{\"\\u0041\":\"x\"}"), "/a", KS_ABSENT, B("")},
    /* string values are decoded */
    {B("{\"k\":\"a\\u0041\\n\"}"), "/k", KS_FOUND, B("aA\n")},
    {B("{\"k\":\"\\uD83D\\uDE00\"}"), "/k", KS_FOUND, B("\xf0\x9f\x98\x80")},
    {B("{\"k\":\"\\u0000\"}"), "/k", KS_FOUND, B("\0")},
    {B("{\"k\":\"x\\\\y\\/z\\\"w\"}"), "/k", KS_FOUND, B("x\\y/z\"w")},
    {B("{\"k\":\"\\b\\f\\n\\r\\t\"}"), "/k", KS_FOUND, B("\b\f\n\r\t")},
    {B("{\"k\":\"caf\xc3\xa9\"}"), "/k", KS_FOUND, B("caf\xc3\xa9")},
    {B("{\"k\":\"\\u00e9\\u07FF\\u0800\\uFFFF\"}"), "/k", KS_FOUND,
     B("\xc3\xa9\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf")},
    {B("{\"k\":\"\\uDBFF\\uDFFF\\uD800\\uDC00\"}"), "/k", KS_FOUND,
     B("\xf4\x8f\xbf\xbf\xf0\x90\x80\x80")},
    /* duplicates on the path are ambiguous; elsewhere they do not matter */
    {B("{\"id\":\"a\",\"id\":\"b\"}"), "/id", KS_DUPLICATE, B("")},
    {B("{\"id\":\"a\",\"id\":\"a\"}"), "/id", KS_DUPLICATE, B("")},
    {B("{\"id\":\"a\",\"x\":1,\"id\":true}"), "/id", KS_DUPLICATE, B("")},
    {B("{\"id\":\"a\",\"i\\u0064\":\"b\"}"), "/id", KS_DUPLICATE, B("")},
    {B("{\"x\":1,\"x\":2,\"id\":\"a\"}"), "/id", KS_FOUND, B("a")},
    {B("{\"a\":{\"b\":1},\"a\":{\"c\":2}}"), "/a/c", KS_DUPLICATE, B("")},
    {B("{\"a\":{\"b\":1,\"b\":2},\"c\":\"x\"}"), "/c", KS_FOUND, B("x")},
    {B("{\"a\":[{\"id\":1,\"id\":2}]}"), "/a/0/id", KS_DUPLICATE, B("")},
    {B("{\"a\":[{\"id\":1,\"id\":2},{\"id\":3}]}"), "/a/1/id", KS_FOUND, B("3")},
    {B("{\"\":1,\"\":2}"), "/", KS_DUPLICATE, B("")},
    /* a valid target in an invalid text is no target */
    {B("{\"id\":\"a\",}"), "/id", KS_MALFORMED, B("")},
    {B("{\"id\":\"a\"} x"), "/id", KS_MALFORMED, B("")},
    {B("{\"id\":\"a\""), "/id", KS_MALFORMED, B("")},
    {B("{\"id\":\"a\",\"x\":[1,2}"), "/id", KS_MALFORMED, B("")},
    {B("{\"id\":\"a\",\"x\":\"\\uD800\"}"), "/id", KS_MALFORMED, B("")},
    {B("{\"id\":\"a\",\"id\":\"b\",}"), "/id", KS_MALFORMED, B("")},
    {B("{\"id\":\"a\"}"), "~", KS_ABSENT, B("")},
    {B("{\"id\":\"a\""), "~", KS_MALFORMED, B("")},
    {B(""), "/id", KS_MALFORMED, B("")},
    {B("id=abc"), "/id", KS_MALFORMED, B("")},
};

START_TEST(test_json_pointer)
{
    struct bytes doc = ptr_cases[_i].doc;
    char *s = exact(doc.p, doc.n);
    char *value = NULL;
    size_t len = 12345;
    enum ks_result r = keysource_json(s, doc.n, ptr_cases[_i].pointer, &value, &len);
    ck_assert_msg(r == ptr_cases[_i].want, "case %d (%.*s at %s): got %d want %d", _i, (int)doc.n,
                  doc.p, ptr_cases[_i].pointer, (int)r, (int)ptr_cases[_i].want);
    if (r == KS_FOUND) {
        assert_bytes(value, len, ptr_cases[_i].value, _i);
    } else {
        ck_assert_ptr_null(value);
        ck_assert_uint_eq(len, 12345);
    }
    free(value);
    free(s);
}
END_TEST

START_TEST(test_json_long_string)
{
    /* a value far above the key limit is still found: judging it is policy's job */
    size_t n = 10000;
    char *doc = xmalloc(n + 16);
    size_t len = 0;
    memcpy(doc, "{\"k\":\"", 6);
    len = 6;
    for (size_t i = 0; i < n; i++)
        doc[len++] = (char)('a' + i % 26);
    memcpy(doc + len, "\"}", 2);
    len += 2;
    char *value = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(keysource_json(doc, len, "/k", &value, &vlen), KS_FOUND);
    ck_assert_uint_eq(vlen, n);
    ck_assert_int_eq(value[n - 1], 'a' + (n - 1) % 26);
    free(value);
    free(doc);
}
END_TEST

/* ---- depth limit ---- */

/* depth nested arrays around "x": [[["x"]]]. */
static char *nested_arrays(int depth, size_t *len)
{
    char *s = xmalloc((size_t)depth * 2 + 3);
    size_t n = 0;
    for (int i = 0; i < depth; i++)
        s[n++] = '[';
    memcpy(s + n, "\"x\"", 3);
    n += 3;
    for (int i = 0; i < depth; i++)
        s[n++] = ']';
    *len = n;
    return s;
}

/* depth nested objects {"a":{"a":...1}}, and the pointer /a/a/... to the 1. */
static char *nested_objects(int depth, size_t *len, char **pointer)
{
    char *s = xmalloc((size_t)depth * 6 + 1);
    char *p = xmalloc((size_t)depth * 2 + 1);
    size_t n = 0;
    for (int i = 0; i < depth; i++) {
        memcpy(s + n, "{\"a\":", 5);
        n += 5;
        memcpy(p + 2 * i, "/a", 2);
    }
    p[2 * depth] = '\0';
    s[n++] = '1';
    for (int i = 0; i < depth; i++)
        s[n++] = '}';
    *len = n;
    *pointer = p;
    return s;
}

START_TEST(test_json_depth_arrays)
{
    size_t len;
    char *value = NULL;
    size_t vlen;
    char ptr[2 * KEYSOURCE_JSON_MAX_DEPTH + 1];
    for (int i = 0; i < KEYSOURCE_JSON_MAX_DEPTH; i++)
        memcpy(ptr + 2 * i, "/0", 2);
    ptr[2 * KEYSOURCE_JSON_MAX_DEPTH] = '\0';

    char *s = nested_arrays(KEYSOURCE_JSON_MAX_DEPTH, &len);
    ck_assert(keysource_json_valid(s, len));
    ck_assert_int_eq(keysource_json(s, len, ptr, &value, &vlen), KS_FOUND);
    ck_assert_str_eq(value, "x");
    free(value);
    value = NULL;
    free(s);

    s = nested_arrays(KEYSOURCE_JSON_MAX_DEPTH + 1, &len);
    ck_assert(!keysource_json_valid(s, len));
    ck_assert_int_eq(keysource_json(s, len, ptr, &value, &vlen), KS_MALFORMED);
    free(s);
}
END_TEST

START_TEST(test_json_depth_objects)
{
    size_t len;
    char *ptr;
    char *value = NULL;
    size_t vlen;

    char *s = nested_objects(KEYSOURCE_JSON_MAX_DEPTH, &len, &ptr);
    ck_assert(keysource_json_valid(s, len));
    ck_assert_int_eq(keysource_json(s, len, ptr, &value, &vlen), KS_FOUND);
    ck_assert_str_eq(value, "1");
    free(value);
    value = NULL;
    free(ptr);
    free(s);

    s = nested_objects(KEYSOURCE_JSON_MAX_DEPTH + 1, &len, &ptr);
    ck_assert(!keysource_json_valid(s, len));
    ck_assert_int_eq(keysource_json(s, len, ptr, &value, &vlen), KS_MALFORMED);
    ck_assert_ptr_null(value);
    free(ptr);
    free(s);
}
END_TEST

START_TEST(test_json_depth_huge)
{
    /* far beyond the limit: rejected without deep recursion, balanced or not */
    size_t len;
    char *s = nested_arrays(100000, &len);
    ck_assert(!keysource_json_valid(s, len));
    ck_assert(!keysource_json_valid(s, len / 2));
    free(s);

    size_t n = 200000;
    char *opens = xmalloc(n);
    memset(opens, '[', n);
    ck_assert(!keysource_json_valid(opens, n));
    free(opens);
}
END_TEST

START_TEST(test_json_depth_siblings)
{
    /* depth counts nesting, not how many containers there are */
    size_t n = 1000;
    char *s = xmalloc(n * 3 + 2);
    size_t len = 0;
    s[len++] = '[';
    for (size_t i = 0; i < n; i++) {
        s[len++] = '[';
        s[len++] = ']';
        s[len++] = ',';
    }
    s[len - 1] = ']';
    ck_assert(keysource_json_valid(s, len));
    free(s);
}
END_TEST

/* ---- pointer syntax and media types ---- */

static const struct {
    const char *pointer;
    bool valid;
} pointer_cases[] = {
    {"", true},       {"/", true},    {"/a", true},    {"/a/b/0", true},
    {"//", true},     {"/a~0", true}, {"/a~1b", true}, {"/~0~1", true},
    {"a", false},     {"~0", false},  {"/a~", false},  {"/a~2", false},
    {"/a~~0", false}, {"#/a", false}, {" /a", false},  {"/~a/b", false},
};

START_TEST(test_pointer_valid)
{
    ck_assert_msg(keysource_json_pointer_valid(pointer_cases[_i].pointer) ==
                      pointer_cases[_i].valid,
                  "case %d (%s)", _i, pointer_cases[_i].pointer);
}
END_TEST

static const struct {
    const char *value;
    bool json;
    bool form;
} media_cases[] = {
    {"application/json", true, false},
    {"Application/JSON", true, false},
    {"application/json; charset=utf-8", true, false},
    {" application/json ;x", true, false},
    {"\tapplication/json\t", true, false},
    {"application/problem+json", true, false},
    {"application/vnd.api+JSON;v=1", true, false},
    {"application/merge-patch+json", true, false},
    {"text/x+json", true, false},
    {"application/x-www-form-urlencoded", false, true},
    {"APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8", false, true},
    {"\tapplication/x-www-form-urlencoded\t", false, true},
    {"application/x-www-form-urlencoded;", false, true},
    {"text/json", false, false},
    {"application/jsonx", false, false},
    {"application/json-seq", false, false},
    {"application/json+xml", false, false},
    {"application/ json", false, false},
    {"+json", false, false},
    {"/+json", false, false},
    {"application/+json", false, false},
    {"/x+json", false, false},
    {"x+json", false, false},
    {"", false, false},
    {";application/json", false, false},
    {"multipart/form-data; boundary=x", false, false},
    {"application/x-www-form-urlencodedx", false, false},
    {"text/plain", false, false},
};

START_TEST(test_media_types)
{
    const char *v = media_cases[_i].value;
    char *s = exact(v, strlen(v));
    ck_assert_msg(keysource_media_type_is_json(s, strlen(v)) == media_cases[_i].json,
                  "case %d (%s)", _i, v);
    ck_assert_msg(keysource_media_type_is(s, strlen(v), "application/x-www-form-urlencoded") ==
                      media_cases[_i].form,
                  "case %d (%s)", _i, v);
    free(s);
}
END_TEST

static Suite *keysource_suite(void)
{
    Suite *s = suite_create("keysource");

    TCase *tc = tcase_create("params");
    tcase_add_loop_test(tc, test_percent_decode, 0, (int)ARRAY_LEN(decode_cases));
    tcase_add_loop_test(tc, test_param, 0, (int)ARRAY_LEN(param_cases));
    tcase_add_test(tc, test_param_null_text);
    tcase_add_test(tc, test_param_long_value);
    suite_add_tcase(s, tc);

    tc = tcase_create("json");
    tcase_add_loop_test(tc, test_json_grammar, 0, (int)ARRAY_LEN(json_cases));
    tcase_add_loop_test(tc, test_json_pointer, 0, (int)ARRAY_LEN(ptr_cases));
    tcase_add_test(tc, test_json_long_string);
    tcase_add_test(tc, test_json_depth_arrays);
    tcase_add_test(tc, test_json_depth_objects);
    tcase_add_test(tc, test_json_depth_huge);
    tcase_add_test(tc, test_json_depth_siblings);
    suite_add_tcase(s, tc);

    tc = tcase_create("syntax");
    tcase_add_loop_test(tc, test_pointer_valid, 0, (int)ARRAY_LEN(pointer_cases));
    tcase_add_loop_test(tc, test_media_types, 0, (int)ARRAY_LEN(media_cases));
    suite_add_tcase(s, tc);

    return s;
}

UNIT_MAIN(keysource_suite)
