/*
 * test_policy.c - coverage, key parsing and extraction from every kind of
 * key source, scope hashing, fingerprints and record keys (policy.c),
 * against hand-built policies. The parsers themselves are tested in
 * test_keysource.c; here it is which source decides and how its value is judged.
 */
#include <string.h>

#include "llhttp.h"
#include "policy.h"
#include "unit.h"
#include "util.h"

/* ---- helpers ---- */

static void policy_zero(struct policy *p)
{
    memset(p, 0, sizeof(*p));
}

static void view_init(struct request_view *v, const char *method_name, int method, const char *path,
                      const struct header_list *h)
{
    memset(v, 0, sizeof(*v));
    v->method = method;
    v->method_name = method_name;
    v->path = path;
    v->path_len = strlen(path);
    v->headers = h;
}

static bool is_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* ---- policy_covers ---- */

START_TEST(test_covers_methods)
{
    struct policy p;
    policy_zero(&p);
    p.methods = (1ull << HTTP_POST) | (1ull << HTTP_PUT);
    ck_assert(policy_covers(&p, HTTP_POST));
    ck_assert(policy_covers(&p, HTTP_PUT));
    ck_assert(!policy_covers(&p, HTTP_GET));
    ck_assert(!policy_covers(&p, HTTP_DELETE));
    ck_assert(!policy_covers(&p, -1));
    ck_assert(!policy_covers(&p, 64));
}
END_TEST

START_TEST(test_covers_bypass)
{
    struct policy p;
    policy_zero(&p);
    p.methods = ~0ull;
    ck_assert(policy_covers(&p, HTTP_PATCH));
    p.bypass = true;
    ck_assert(!policy_covers(&p, HTTP_POST));
    ck_assert(!policy_covers(&p, HTTP_GET));
}
END_TEST

/* ---- policy_parse_key_value ---- */

struct key_case {
    const char *in;
    size_t len; /* 0: strlen(in) */
    enum key_result want;
    const char *key; /* when KEY_FOUND */
};

static const struct key_case key_cases[] = {
    {"abc", 0, KEY_FOUND, "abc"},
    {"\"abc\"", 0, KEY_FOUND, "abc"},
    {"8e03978e-40d5-43e8-bc93-6894a57f9324", 0, KEY_FOUND, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
    {"!~#$%&'*+.^_`|", 0, KEY_FOUND, "!~#$%&'*+.^_`|"},
    {"  abc\t", 0, KEY_FOUND, "abc"},
    {" \t\"abc\" \t", 0, KEY_FOUND, "abc"},
    {"\"a\\\"b\"", 0, KEY_FOUND, "a\"b"},
    {"\"a\\\\b\"", 0, KEY_FOUND, "a\\b"},
    {"\"\\\\\"", 0, KEY_FOUND, "\\"},
    {"\"a b\"", 0, KEY_FOUND, "a b"},
    {"\" x \"", 0, KEY_FOUND, " x "},
    {"\" \"", 0, KEY_FOUND, " "},
    {"x", 0, KEY_FOUND, "x"},
    /* empty */
    {"", 0, KEY_INVALID, NULL},
    {" \t ", 0, KEY_INVALID, NULL},
    {"\"\"", 0, KEY_INVALID, NULL},
    {"  \"\"  ", 0, KEY_INVALID, NULL},
    /* bare: visible ASCII only */
    {"a b", 0, KEY_INVALID, NULL},
    {"a\tb", 0, KEY_INVALID, NULL},
    {"ab\x01", 0, KEY_INVALID, NULL},
    {"ab\x7f", 0, KEY_INVALID, NULL},
    {"a\rb", 0, KEY_INVALID, NULL},
    {"caf\xc3\xa9", 0, KEY_INVALID, NULL},
    {"\xff", 0, KEY_INVALID, NULL},
    {"ab\0cd", 5, KEY_INVALID, NULL},
    /* sf-string: malformed */
    {"\"abc", 0, KEY_INVALID, NULL},
    {"\"", 0, KEY_INVALID, NULL},
    {"\"abc\\\"", 0, KEY_INVALID, NULL},
    {"\"abc\\", 0, KEY_INVALID, NULL},
    {"\"a\\nb\"", 0, KEY_INVALID, NULL},
    {"\"a\\tb\"", 0, KEY_INVALID, NULL},
    {"\"a\\'b\"", 0, KEY_INVALID, NULL},
    {"\"abc\"x", 0, KEY_INVALID, NULL},
    {"\"abc\";p=1", 0, KEY_INVALID, NULL},
    {"\"abc\" \"def\"", 0, KEY_INVALID, NULL},
    {"\"abc\"\"", 0, KEY_INVALID, NULL},
    {"\"a\tb\"", 0, KEY_INVALID, NULL},
    {"\"a\x01\"", 0, KEY_INVALID, NULL},
    {"\"a\x7f\"", 0, KEY_INVALID, NULL},
    {"\"caf\xc3\xa9\"", 0, KEY_INVALID, NULL},
    {"\"a\0b\"", 5, KEY_INVALID, NULL},
};

START_TEST(test_parse_key_table)
{
    const struct key_case *kc = &key_cases[_i];
    size_t len = kc->len ? kc->len : strlen(kc->in);
    char *key = NULL;
    enum key_result r = policy_parse_key_value(kc->in, len, &key);
    ck_assert_msg(r == kc->want, "case %d (%s): got %d want %d", _i, kc->in, (int)r, (int)kc->want);
    if (kc->want == KEY_FOUND)
        ck_assert_str_eq(key, kc->key);
    else
        ck_assert_ptr_null(key);
    free(key);
}
END_TEST

START_TEST(test_parse_key_quoted_equals_bare)
{
    char *a = NULL, *b = NULL;
    ck_assert_int_eq(policy_parse_key_value("abc", 3, &a), KEY_FOUND);
    ck_assert_int_eq(policy_parse_key_value("\"abc\"", 5, &b), KEY_FOUND);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_parse_key_length_limits)
{
    char buf[POLICY_MAX_KEY_LEN + 8];
    char *key = NULL;

    /* bare: 255 is fine, 256 is too long */
    memset(buf, 'k', sizeof(buf));
    ck_assert_int_eq(policy_parse_key_value(buf, 255, &key), KEY_FOUND);
    ck_assert_uint_eq(strlen(key), 255);
    free(key);
    key = NULL;
    ck_assert_int_eq(policy_parse_key_value(buf, 256, &key), KEY_INVALID);
    ck_assert_ptr_null(key);

    /* sf-string: the limit counts the content, not the quotes */
    buf[0] = '"';
    buf[256] = '"';
    ck_assert_int_eq(policy_parse_key_value(buf, 257, &key), KEY_FOUND);
    ck_assert_uint_eq(strlen(key), 255);
    free(key);
    key = NULL;
    buf[256] = 'k';
    buf[257] = '"';
    ck_assert_int_eq(policy_parse_key_value(buf, 258, &key), KEY_INVALID);

    /* ...and counts it after unescaping: 254 chars + \\ is 255 */
    memset(buf, 'k', sizeof(buf));
    buf[0] = '"';
    buf[255] = '\\';
    buf[256] = '\\';
    buf[257] = '"';
    ck_assert_int_eq(policy_parse_key_value(buf, 258, &key), KEY_FOUND);
    ck_assert_uint_eq(strlen(key), 255);
    ck_assert_int_eq(key[254], '\\');
    free(key);
}
END_TEST

/* ---- policy_extract_key ---- */

static void policy_add_key(struct policy *p, enum key_source_kind kind, const char *name)
{
    p->keys[p->nkeys].kind = kind;
    p->keys[p->nkeys].name = (char *)name;
    p->nkeys++;
}

START_TEST(test_extract_found)
{
    struct policy p;
    policy_zero(&p);
    policy_add_key(&p, KEY_SOURCE_HEADER, "Idempotency-Key");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Content-Type", "application/json");
    headers_add_cstr(&h, "idempotency-key", " \"8e03-ab\" ");
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);

    char *key = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_FOUND);
    ck_assert_str_eq(key, "8e03-ab");
    free(key);
    headers_clear(&h);
}
END_TEST

START_TEST(test_extract_absent)
{
    struct policy p;
    policy_zero(&p);
    policy_add_key(&p, KEY_SOURCE_HEADER, "Idempotency-Key");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Idempotency-Keys", "abc");
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);

    char *key = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_ABSENT);
    ck_assert_ptr_null(key);

    /* no sources at all */
    p.nkeys = 0;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_ABSENT);
    headers_clear(&h);
}
END_TEST

START_TEST(test_extract_repeated_invalid)
{
    struct policy p;
    policy_zero(&p);
    policy_add_key(&p, KEY_SOURCE_HEADER, "Idempotency-Key");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Idempotency-Key", "abc");
    headers_add_cstr(&h, "IDEMPOTENCY-KEY", "abc");
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);

    char *key = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_INVALID);
    ck_assert_ptr_null(key);
    headers_clear(&h);
}
END_TEST

START_TEST(test_extract_invalid_value)
{
    struct policy p;
    policy_zero(&p);
    policy_add_key(&p, KEY_SOURCE_HEADER, "Idempotency-Key");
    policy_add_key(&p, KEY_SOURCE_HEADER, "X-Request-Id");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Idempotency-Key", "\"\"");
    headers_add_cstr(&h, "X-Request-Id", "fallback");
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);

    /* a present but bad key is an error, not a reason to try the next source */
    char *key = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_INVALID);
    ck_assert_ptr_null(key);
    headers_clear(&h);
}
END_TEST

START_TEST(test_extract_source_order)
{
    struct policy p;
    policy_zero(&p);
    policy_add_key(&p, KEY_SOURCE_QUERY, "key");
    policy_add_key(&p, KEY_SOURCE_HEADER, "X-A");
    policy_add_key(&p, KEY_SOURCE_HEADER, "X-B");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "X-B", "from-b");
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);
    v.query = "other=1";
    v.query_len = strlen(v.query);

    char *key = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_FOUND);
    ck_assert_str_eq(key, "from-b");
    free(key);
    key = NULL;

    /* both present: the first source in the list wins, whatever the header order */
    headers_add_cstr(&h, "X-A", "from-a");
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_FOUND);
    ck_assert_str_eq(key, "from-a");
    free(key);
    key = NULL;

    /* the query comes first in the list */
    v.query = "key=from-query";
    v.query_len = strlen(v.query);
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_FOUND);
    ck_assert_str_eq(key, "from-query");
    free(key);
    headers_clear(&h);
}
END_TEST

/* ---- key sources beyond headers ---- */

/*
 * A policy whose key sources are written as in the config ("header:X json:/id
 * token"). Names are copied; policy_free_keys releases them.
 */
static void policy_set_keys(struct policy *p, const char *sources)
{
    policy_zero(p);
    char *copy = xstrdup(sources);
    char *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save)) {
        struct key_source *k = &p->keys[p->nkeys++];
        char *colon = strchr(t, ':');
        k->name = colon != NULL ? xstrdup(colon + 1) : NULL;
        if (strcmp(t, "token") == 0)
            k->kind = KEY_SOURCE_TOKEN;
        else if (strncmp(t, "header:", 7) == 0)
            k->kind = KEY_SOURCE_HEADER;
        else if (strncmp(t, "query:", 6) == 0)
            k->kind = KEY_SOURCE_QUERY;
        else if (strncmp(t, "form:", 5) == 0)
            k->kind = KEY_SOURCE_FORM;
        else if (strncmp(t, "json:", 5) == 0)
            k->kind = KEY_SOURCE_JSON;
        else
            ck_abort_msg("bad source %s", t);
    }
    free(copy);
}

static void policy_free_keys(struct policy *p)
{
    for (int i = 0; i < p->nkeys; i++) {
        free(p->keys[i].name);
        p->keys[i].name = NULL;
    }
    p->nkeys = 0;
}

#define FORM_CT "application/x-www-form-urlencoded"
#define JSON_CT "application/json"

struct source_case {
    const char *sources;
    const char *query;        /* NULL: none */
    const char *content_type; /* NULL: no Content-Type */
    const char *body;         /* NULL: none */
    const char *hname;        /* one more header, NULL: none */
    const char *hvalue;
    enum key_result want;
    const char *key;           /* when KEY_FOUND */
    enum key_source_kind kind; /* of the deciding source; NONE when absent */
};

static const struct source_case source_cases[] = {
    /* query: */
    {"query:key", "key=abc", NULL, NULL, NULL, NULL, KEY_FOUND, "abc", KEY_SOURCE_QUERY},
    {"query:key", "a=1&key=abc&b=2", NULL, NULL, NULL, NULL, KEY_FOUND, "abc", KEY_SOURCE_QUERY},
    {"query:key", "key=a%2Db%7e", NULL, NULL, NULL, NULL, KEY_FOUND, "a-b~", KEY_SOURCE_QUERY},
    {"query:key", "k%65y=abc", NULL, NULL, NULL, NULL, KEY_FOUND, "abc", KEY_SOURCE_QUERY},
    {"query:key", "key=\"abc\"", NULL, NULL, NULL, NULL, KEY_FOUND, "\"abc\"", KEY_SOURCE_QUERY},
    {"query:key", "key=a%2Bb", NULL, NULL, NULL, NULL, KEY_FOUND, "a+b", KEY_SOURCE_QUERY},
    {"query:key", "key=abc", JSON_CT, "{}", NULL, NULL, KEY_FOUND, "abc", KEY_SOURCE_QUERY},
    {"query:key", "key=a+b", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=a%20b", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=a&key=b", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=a&key=a", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=%zz", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=%4", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=%00abc", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=%7F", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "key=caf%C3%A9", NULL, NULL, NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key", "other=1", NULL, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"query:key", "Key=abc", NULL, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"query:key", "", NULL, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"query:key", NULL, NULL, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"query:key", NULL, FORM_CT, "key=abc", NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    /* form: */
    {"form:notify_id", NULL, FORM_CT, "notify_id=n1&x=2", NULL, NULL, KEY_FOUND, "n1",
     KEY_SOURCE_FORM},
    {"form:notify_id", NULL, NULL, "notify_id=n1", NULL, NULL, KEY_FOUND, "n1", KEY_SOURCE_FORM},
    {"form:notify_id", NULL, FORM_CT "; charset=utf-8", "notify_id=n1", NULL, NULL, KEY_FOUND, "n1",
     KEY_SOURCE_FORM},
    {"form:notify_id", NULL, " Application/X-WWW-Form-Urlencoded ", "notify_id=n1", NULL, NULL,
     KEY_FOUND, "n1", KEY_SOURCE_FORM},
    {"form:notify_id", NULL, FORM_CT, "notify_id=2024%3A1", NULL, NULL, KEY_FOUND, "2024:1",
     KEY_SOURCE_FORM},
    {"form:notify_id", NULL, JSON_CT, "notify_id=n1", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"form:notify_id", NULL, "multipart/form-data; boundary=x", "notify_id=n1", NULL, NULL,
     KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"form:notify_id", NULL, "", "notify_id=n1", NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"form:notify_id", NULL, FORM_CT, "notify_id=%zz", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"form:notify_id", NULL, FORM_CT, "notify_id=ab%", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"form:notify_id", NULL, FORM_CT, "notify_id=a&notify_id=b", NULL, NULL, KEY_INVALID, NULL,
     KEY_SOURCE_FORM},
    {"form:notify_id", NULL, FORM_CT, "notify_id=", NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_FORM},
    {"form:notify_id", NULL, FORM_CT, "notify_id=a+b", NULL, NULL, KEY_INVALID, NULL,
     KEY_SOURCE_FORM},
    {"form:notify_id", NULL, FORM_CT, "", NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"form:notify_id", NULL, FORM_CT, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"form:notify_id", "notify_id=q", FORM_CT, "x=1", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    /* json: */
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"o-1\"}", NULL, NULL, KEY_FOUND, "o-1",
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":12345}", NULL, NULL, KEY_FOUND, "12345",
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":-1.5e3}", NULL, NULL, KEY_FOUND, "-1.5e3",
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, NULL, "{\"order_no\":\"o-1\"}", NULL, NULL, KEY_FOUND, "o-1",
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, "application/json; charset=utf-8", "{\"order_no\":\"o-1\"}", NULL,
     NULL, KEY_FOUND, "o-1", KEY_SOURCE_JSON},
    {"json:/order_no", NULL, "application/vnd.api+json", "{\"order_no\":\"o-1\"}", NULL, NULL,
     KEY_FOUND, "o-1", KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"\\u0041b\\u0063\"}", NULL, NULL, KEY_FOUND,
     "Abc", KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"a\\\"b\"}", NULL, NULL, KEY_FOUND, "a\"b",
     KEY_SOURCE_JSON},
    {"json:/a/0/b", NULL, JSON_CT, "{\"a\":[{\"b\":\"deep\"}]}", NULL, NULL, KEY_FOUND, "deep",
     KEY_SOURCE_JSON},
    {"json:/a~1b", NULL, JSON_CT, "{\"a/b\":\"s\"}", NULL, NULL, KEY_FOUND, "s", KEY_SOURCE_JSON},
    {"json:/order_no", NULL, "text/plain", "{\"order_no\":\"o-1\"}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, FORM_CT, "{\"order_no\":\"o-1\"}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"o-1\",}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"o-1\"} {}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "", NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":true}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":null}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":{}}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":[\"o-1\"]}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"other\":\"o-1\"}", NULL, NULL, KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
    {"json:/order_no", "order_no=q", JSON_CT, "{}", NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"\"}", NULL, NULL, KEY_INVALID, NULL,
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"a b\"}", NULL, NULL, KEY_INVALID, NULL,
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"a\\nb\"}", NULL, NULL, KEY_INVALID, NULL,
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"caf\\u00e9\"}", NULL, NULL, KEY_INVALID,
     NULL, KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"a\\u0000\"}", NULL, NULL, KEY_INVALID, NULL,
     KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"o-1\",\"order_no\":\"o-2\"}", NULL, NULL,
     KEY_INVALID, NULL, KEY_SOURCE_JSON},
    {"json:/order_no", NULL, JSON_CT, "{\"order_no\":\"o-1\",\"order_no\":\"o-1\"}", NULL, NULL,
     KEY_INVALID, NULL, KEY_SOURCE_JSON},
    /* token */
    {"token", NULL, NULL, NULL, "Idempotency-Token", "tok123", KEY_FOUND, "tok123",
     KEY_SOURCE_TOKEN},
    {"token", NULL, NULL, NULL, "idempotency-token", " \"tok123\" ", KEY_FOUND, "tok123",
     KEY_SOURCE_TOKEN},
    {"token", NULL, NULL, NULL, "Idempotency-Token", "\"\"", KEY_INVALID, NULL, KEY_SOURCE_TOKEN},
    {"token", NULL, NULL, NULL, "Idempotency-Token", "a b", KEY_INVALID, NULL, KEY_SOURCE_TOKEN},
    {"token", NULL, NULL, NULL, "Idempotency-Key", "k", KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"token", "token=t", NULL, NULL, NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    /* order: the first present source wins; a present but bad key stops the search */
    {"header:X json:/id", NULL, JSON_CT, "{\"id\":\"j\"}", "X", "hx", KEY_FOUND, "hx",
     KEY_SOURCE_HEADER},
    {"header:X json:/id", NULL, JSON_CT, "{\"id\":\"j\"}", NULL, NULL, KEY_FOUND, "j",
     KEY_SOURCE_JSON},
    {"header:X json:/id", NULL, JSON_CT, "{\"id\":\"j\"}", "X", "", KEY_INVALID, NULL,
     KEY_SOURCE_HEADER},
    {"json:/id header:X", NULL, JSON_CT, "{\"id\":\"j\"}", "X", "hx", KEY_FOUND, "j",
     KEY_SOURCE_JSON},
    {"json:/id header:X", NULL, JSON_CT, "{\"id\":\"j\"", "X", "hx", KEY_FOUND, "hx",
     KEY_SOURCE_HEADER},
    {"json:/id header:X", NULL, JSON_CT, "{\"id\":true}", "X", "hx", KEY_FOUND, "hx",
     KEY_SOURCE_HEADER},
    {"json:/id header:X", NULL, "text/plain", "{\"id\":\"j\"}", "X", "hx", KEY_FOUND, "hx",
     KEY_SOURCE_HEADER},
    {"json:/id header:X", NULL, JSON_CT, "{\"id\":\"\"}", "X", "hx", KEY_INVALID, NULL,
     KEY_SOURCE_JSON},
    {"json:/id header:X", NULL, JSON_CT, "{\"id\":1,\"id\":2}", "X", "hx", KEY_INVALID, NULL,
     KEY_SOURCE_JSON},
    {"json:/id header:X", NULL, JSON_CT, "{}", NULL, NULL, KEY_ABSENT, NULL, KEY_SOURCE_NONE},
    {"query:key header:X", "key=q", NULL, NULL, "X", "hx", KEY_FOUND, "q", KEY_SOURCE_QUERY},
    {"query:key header:X", "key=%zz", NULL, NULL, "X", "hx", KEY_INVALID, NULL, KEY_SOURCE_QUERY},
    {"query:key header:X", "nokey=q", NULL, NULL, "X", "hx", KEY_FOUND, "hx", KEY_SOURCE_HEADER},
    {"form:k query:k", "k=q", FORM_CT, "k=f", NULL, NULL, KEY_FOUND, "f", KEY_SOURCE_FORM},
    {"form:k query:k", "k=q", JSON_CT, "k=f", NULL, NULL, KEY_FOUND, "q", KEY_SOURCE_QUERY},
    {"form:k query:k", "k=q", FORM_CT, "k=%zz", NULL, NULL, KEY_FOUND, "q", KEY_SOURCE_QUERY},
    {"form:k query:k", "k=q", FORM_CT, "k=f&k=g", NULL, NULL, KEY_INVALID, NULL, KEY_SOURCE_FORM},
    {"token header:Idempotency-Token", NULL, NULL, NULL, "Idempotency-Token", "t1", KEY_FOUND, "t1",
     KEY_SOURCE_TOKEN},
    {"header:Idempotency-Token token", NULL, NULL, NULL, "Idempotency-Token", "t1", KEY_FOUND, "t1",
     KEY_SOURCE_HEADER},
    {"query:a form:b json:/c token header:D", "c=1", FORM_CT, "a=1", "E", "1", KEY_ABSENT, NULL,
     KEY_SOURCE_NONE},
};

/* Runs one case's request through policy_extract_key_from. */
static enum key_result run_source_case(const struct source_case *c, const char *token_header,
                                       char **key, enum key_source_kind *kind)
{
    struct policy p;
    policy_set_keys(&p, c->sources);
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Host", "example.com");
    if (c->content_type != NULL)
        headers_add_cstr(&h, "Content-Type", c->content_type);
    if (c->hname != NULL)
        headers_add_cstr(&h, c->hname, c->hvalue);
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);
    v.token_header = token_header;

    /* exact-size copies, so a read past the end is caught */
    char *query = NULL, *body = NULL;
    if (c->query != NULL) {
        v.query_len = strlen(c->query);
        query = xmalloc(v.query_len + 1);
        memcpy(query, c->query, v.query_len);
        v.query = query;
    }
    if (c->body != NULL) {
        v.body_len = strlen(c->body);
        body = xmalloc(v.body_len + 1);
        memcpy(body, c->body, v.body_len);
        v.body = body;
    }
    enum key_result r = policy_extract_key_from(&p, &v, key, kind);
    free(body);
    free(query);
    headers_clear(&h);
    policy_free_keys(&p);
    return r;
}

START_TEST(test_extract_sources)
{
    const struct source_case *c = &source_cases[_i];
    char *key = NULL;
    enum key_source_kind kind = (enum key_source_kind)99;
    enum key_result r = run_source_case(c, "Idempotency-Token", &key, &kind);
    ck_assert_msg(r == c->want, "case %d (%s): got %d want %d", _i, c->sources, (int)r,
                  (int)c->want);
    ck_assert_msg(kind == c->kind, "case %d (%s): kind %d want %d", _i, c->sources, (int)kind,
                  (int)c->kind);
    if (c->want == KEY_FOUND)
        ck_assert_str_eq(key, c->key);
    else
        ck_assert_ptr_null(key);
    free(key);
}
END_TEST

START_TEST(test_extract_wrapper_agrees)
{
    /* policy_extract_key gives the same answer as policy_extract_key_from */
    const struct source_case *c = &source_cases[_i];
    struct policy p;
    policy_set_keys(&p, c->sources);
    struct header_list h;
    headers_init(&h);
    if (c->content_type != NULL)
        headers_add_cstr(&h, "Content-Type", c->content_type);
    if (c->hname != NULL)
        headers_add_cstr(&h, c->hname, c->hvalue);
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/orders", &h);
    v.token_header = "Idempotency-Token";
    v.query = c->query;
    v.query_len = c->query != NULL ? strlen(c->query) : 0;
    v.body = c->body;
    v.body_len = c->body != NULL ? strlen(c->body) : 0;

    char *a = NULL, *b = NULL;
    enum key_result ra = policy_extract_key(&p, &v, &a);
    enum key_result rb = policy_extract_key_from(&p, &v, &b, NULL);
    ck_assert_int_eq(ra, rb);
    ck_assert_int_eq(ra, c->want);
    if (ra == KEY_FOUND)
        ck_assert_str_eq(a, b);
    free(a);
    free(b);
    headers_clear(&h);
    policy_free_keys(&p);
}
END_TEST

START_TEST(test_extract_token_header_unset)
{
    /* without a configured token header the token source yields nothing */
    const struct source_case c = {"token header:X",    NULL, NULL,       NULL,
                                  "Idempotency-Token", "t1", KEY_ABSENT, NULL,
                                  KEY_SOURCE_NONE};
    char *key = NULL;
    enum key_source_kind kind = KEY_SOURCE_HEADER;
    ck_assert_int_eq(run_source_case(&c, NULL, &key, &kind), KEY_ABSENT);
    ck_assert_int_eq(kind, KEY_SOURCE_NONE);
    ck_assert_ptr_null(key);

    /* another name is read instead */
    const struct source_case d = {
        "token", NULL, NULL, NULL, "X-Form-Token", "t2", KEY_FOUND, NULL, KEY_SOURCE_TOKEN};
    ck_assert_int_eq(run_source_case(&d, "X-Form-Token", &key, &kind), KEY_FOUND);
    ck_assert_int_eq(kind, KEY_SOURCE_TOKEN);
    ck_assert_str_eq(key, "t2");
    free(key);
}
END_TEST

START_TEST(test_extract_token_repeated)
{
    struct policy p;
    policy_set_keys(&p, "token");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Idempotency-Token", "t1");
    headers_add_cstr(&h, "idempotency-token", "t2");
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/", &h);
    v.token_header = "Idempotency-Token";
    char *key = NULL;
    enum key_source_kind kind = KEY_SOURCE_NONE;
    ck_assert_int_eq(policy_extract_key_from(&p, &v, &key, &kind), KEY_INVALID);
    ck_assert_int_eq(kind, KEY_SOURCE_TOKEN);
    ck_assert_ptr_null(key);
    headers_clear(&h);
    policy_free_keys(&p);
}
END_TEST

START_TEST(test_extract_repeated_content_type)
{
    /* two Content-Type fields: the body's type is unknown, so body sources are absent */
    struct policy p;
    policy_set_keys(&p, "form:k json:/k");
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Content-Type", FORM_CT);
    headers_add_cstr(&h, "Content-Type", FORM_CT);
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/", &h);
    v.body = "k=1";
    v.body_len = 3;
    char *key = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_ABSENT);

    headers_clear(&h);
    headers_add_cstr(&h, "Content-Type", JSON_CT);
    headers_add_cstr(&h, "content-type", JSON_CT);
    v.body = "{\"k\":\"1\"}";
    v.body_len = strlen(v.body);
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_ABSENT);

    /* no header list at all: no Content-Type */
    v.headers = NULL;
    ck_assert_int_eq(policy_extract_key(&p, &v, &key), KEY_FOUND);
    ck_assert_str_eq(key, "1");
    free(key);
    headers_clear(&h);
    policy_free_keys(&p);
}
END_TEST

/* A body "<prefix><n times c><suffix>" and a query "key=<n times c>". */
static char *repeat_between(const char *prefix, size_t n, char c, const char *suffix)
{
    size_t lp = strlen(prefix), ls = strlen(suffix);
    char *s = xmalloc(lp + n + ls + 1);
    memcpy(s, prefix, lp);
    memset(s + lp, c, n);
    memcpy(s + lp + n, suffix, ls + 1);
    return s;
}

START_TEST(test_extract_length_limits)
{
    static const struct {
        const char *sources, *prefix, *suffix;
        bool in_body;
    } forms[] = {
        {"query:key", "key=", "", false},
        {"form:key", "key=", "&x=1", true},
        {"json:/key", "{\"key\":\"", "\"}", true},
        {"json:/key", "{\"key\":", "}", true}, /* a number of that many digits */
    };
    for (size_t i = 0; i < ARRAY_LEN(forms); i++) {
        struct policy p;
        policy_set_keys(&p, forms[i].sources);
        for (size_t n = POLICY_MAX_KEY_LEN - 1; n <= POLICY_MAX_KEY_LEN + 2; n++) {
            char *text = repeat_between(forms[i].prefix, n, '7', forms[i].suffix);
            struct request_view v;
            view_init(&v, "POST", HTTP_POST, "/", NULL);
            if (forms[i].in_body) {
                v.body = text;
                v.body_len = strlen(text);
            } else {
                v.query = text;
                v.query_len = strlen(text);
            }
            char *key = NULL;
            enum key_result r = policy_extract_key(&p, &v, &key);
            if (n <= POLICY_MAX_KEY_LEN) {
                ck_assert_msg(r == KEY_FOUND, "%s length %zu", forms[i].sources, n);
                ck_assert_uint_eq(strlen(key), n);
            } else {
                ck_assert_msg(r == KEY_INVALID, "%s length %zu", forms[i].sources, n);
                ck_assert_ptr_null(key);
            }
            free(key);
            free(text);
        }
        policy_free_keys(&p);
    }
}
END_TEST

START_TEST(test_key_needs_body)
{
    static const struct {
        const char *sources;
        bool body;
    } cases[] = {
        {"header:Idempotency-Key", false}, {"query:k", false},       {"token", false},
        {"header:X query:k token", false}, {"form:k", true},         {"json:/k", true},
        {"header:X json:/id", true},       {"query:k form:k", true},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct policy p;
        policy_set_keys(&p, cases[i].sources);
        ck_assert_msg(policy_key_needs_body(&p) == cases[i].body, "%s", cases[i].sources);
        policy_free_keys(&p);
    }
    struct policy none;
    policy_zero(&none);
    ck_assert(!policy_key_needs_body(&none));
}
END_TEST

/* ---- policy_scope ---- */

static void scope_of(const struct policy *p, const char *auth1, const char *auth2,
                     char out[POLICY_SCOPE_HASH_LEN + 1])
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Host", "example.com");
    if (auth1 != NULL)
        headers_add_cstr(&h, "Authorization", auth1);
    if (auth2 != NULL)
        headers_add_cstr(&h, "authorization", auth2);
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/", &h);
    policy_scope(p, &v, out);
    headers_clear(&h);
}

START_TEST(test_scope_hash)
{
    struct policy p;
    policy_zero(&p);
    p.scopes[0] = (struct key_source){KEY_SOURCE_HEADER, "Authorization"};
    p.nscopes = 1;
    char a[POLICY_SCOPE_HASH_LEN + 1], b[POLICY_SCOPE_HASH_LEN + 1];
    char c[POLICY_SCOPE_HASH_LEN + 1], d[POLICY_SCOPE_HASH_LEN + 1];

    scope_of(&p, "Bearer alice", NULL, a);
    scope_of(&p, "Bearer alice", NULL, b);
    scope_of(&p, "Bearer bob", NULL, c);
    ck_assert(is_lower_hex(a, POLICY_SCOPE_HASH_LEN));
    ck_assert_str_eq(a, b);
    ck_assert_str_ne(a, c);

    /* the first 16 bytes of SHA-256("abc"), a FIPS 180-2 test vector */
    scope_of(&p, "abc", NULL, d);
    ck_assert_str_eq(d, "ba7816bf8f01cfea414140de5dae2223");

    /* repeated fields hash as their comma-joined value */
    scope_of(&p, "a", "b", c);
    scope_of(&p, "a,b", NULL, d);
    ck_assert_str_eq(c, d);

    /* present but empty is a scope of its own, not the anonymous one */
    scope_of(&p, "", NULL, c);
    ck_assert_str_ne(c, "-");

    /* blanks around a value are not part of it */
    scope_of(&p, "Bearer alice  ", NULL, c);
    ck_assert_str_eq(c, a);
}
END_TEST

/* scope header:Authorization header:Stripe-Account: a platform key acting
 * for two accounts is two tenants; either header alone is a third and fourth. */
START_TEST(test_scope_several_sources)
{
    struct policy p;
    policy_zero(&p);
    p.scopes[0] = (struct key_source){KEY_SOURCE_HEADER, "Authorization"};
    p.scopes[1] = (struct key_source){KEY_SOURCE_HEADER, "Stripe-Account"};
    p.nscopes = 2;
    char seen[6][POLICY_SCOPE_HASH_LEN + 1];
    const char *pairs[6][2] = {{"Bearer sk_platform", "acct_A"}, {"Bearer sk_platform", "acct_B"},
                               {"Bearer sk_platform", NULL},     {NULL, "acct_A"},
                               {"Bearer sk_platformacct_A", ""}, {"Bearer sk_platform ", "acct_A"}};
    for (int i = 0; i < 6; i++) {
        struct header_list h;
        headers_init(&h);
        if (pairs[i][0])
            headers_add_cstr(&h, "Authorization", pairs[i][0]);
        if (pairs[i][1])
            headers_add_cstr(&h, "Stripe-Account", pairs[i][1]);
        struct request_view v;
        view_init(&v, "POST", HTTP_POST, "/", &h);
        policy_scope(&p, &v, seen[i]);
        headers_clear(&h);
    }
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            ck_assert_msg(strcmp(seen[i], seen[j]) != 0, "%d and %d share a scope", i, j);
    ck_assert_str_eq(seen[5], seen[0]); /* trimmed */
    /* neither present: the anonymous scope */
    struct header_list none;
    headers_init(&none);
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/", &none);
    char anon[POLICY_SCOPE_HASH_LEN + 1];
    policy_scope(&p, &v, anon);
    ck_assert_str_eq(anon, "-");
}
END_TEST

START_TEST(test_scope_anonymous)
{
    struct policy p;
    policy_zero(&p);
    p.scopes[0] = (struct key_source){KEY_SOURCE_HEADER, "Authorization"};
    p.nscopes = 1;
    char out[POLICY_SCOPE_HASH_LEN + 1];

    scope_of(&p, NULL, NULL, out);
    ck_assert_str_eq(out, "-");

    p.nscopes = 0;
    scope_of(&p, "Bearer alice", NULL, out);
    ck_assert_str_eq(out, "-");
}
END_TEST

/* ---- policy_fingerprint ---- */

/* A request whose every part the tests below can vary. */
struct fp_req {
    const char *method;
    const char *path;
    const char *query; /* NULL: none */
    const char *body;
    const char *tenant; /* X-Tenant value, NULL: absent */
};

static void fp_of(const struct policy *p, const struct fp_req *r,
                  char out[POLICY_FINGERPRINT_LEN + 1])
{
    struct header_list h;
    headers_init(&h);
    headers_add_cstr(&h, "Content-Type", "application/json");
    if (r->tenant != NULL)
        headers_add_cstr(&h, "X-Tenant", r->tenant);
    struct request_view v;
    view_init(&v, r->method, HTTP_POST, r->path, &h);
    if (r->query != NULL) {
        v.query = r->query;
        v.query_len = strlen(r->query);
    }
    v.body = r->body;
    v.body_len = strlen(r->body);
    policy_fingerprint(p, &v, out);
    headers_clear(&h);
}

static const struct fp_req fp_base = {"POST", "/orders", "a=1", "{\"n\":1}", "t1"};

static const struct {
    unsigned part;
    struct fp_req changed;
} fp_changes[] = {
    {FP_METHOD, {"PUT", "/orders", "a=1", "{\"n\":1}", "t1"}},
    {FP_PATH, {"POST", "/orders/2", "a=1", "{\"n\":1}", "t1"}},
    {FP_QUERY, {"POST", "/orders", "a=2", "{\"n\":1}", "t1"}},
    {FP_QUERY, {"POST", "/orders", NULL, "{\"n\":1}", "t1"}},
    {FP_BODY, {"POST", "/orders", "a=1", "{\"n\":2}", "t1"}},
    {FP_BODY, {"POST", "/orders", "a=1", "", "t1"}},
};

START_TEST(test_fingerprint_part_selected)
{
    struct policy p;
    policy_zero(&p);
    p.fingerprint = fp_changes[_i].part;
    char a[POLICY_FINGERPRINT_LEN + 1], b[POLICY_FINGERPRINT_LEN + 1];
    fp_of(&p, &fp_base, a);
    fp_of(&p, &fp_changes[_i].changed, b);
    ck_assert(is_lower_hex(a, POLICY_FINGERPRINT_LEN));
    ck_assert_str_ne(a, b);

    /* also with every part selected */
    p.fingerprint = FP_METHOD | FP_PATH | FP_QUERY | FP_BODY;
    fp_of(&p, &fp_base, a);
    fp_of(&p, &fp_changes[_i].changed, b);
    ck_assert_str_ne(a, b);
}
END_TEST

START_TEST(test_fingerprint_part_not_selected)
{
    struct policy p;
    policy_zero(&p);
    p.fingerprint = (FP_METHOD | FP_PATH | FP_QUERY | FP_BODY) & ~fp_changes[_i].part;
    char a[POLICY_FINGERPRINT_LEN + 1], b[POLICY_FINGERPRINT_LEN + 1];
    fp_of(&p, &fp_base, a);
    fp_of(&p, &fp_changes[_i].changed, b);
    ck_assert_str_eq(a, b);
}
END_TEST

START_TEST(test_fingerprint_header)
{
    struct policy p;
    policy_zero(&p);
    p.fingerprint = FP_METHOD | FP_PATH | FP_BODY;
    char base[POLICY_FINGERPRINT_LEN + 1], other[POLICY_FINGERPRINT_LEN + 1];
    char absent[POLICY_FINGERPRINT_LEN + 1], empty[POLICY_FINGERPRINT_LEN + 1];
    struct fp_req r = fp_base;

    /* not listed: the header does not matter */
    fp_of(&p, &r, base);
    r.tenant = "t2";
    fp_of(&p, &r, other);
    ck_assert_str_eq(base, other);

    /* listed: it does, and absent differs from empty */
    p.fp_headers[p.nfp_headers++] = "x-tenant";
    r.tenant = "t1";
    fp_of(&p, &r, base);
    r.tenant = "t2";
    fp_of(&p, &r, other);
    ck_assert_str_ne(base, other);
    r.tenant = NULL;
    fp_of(&p, &r, absent);
    r.tenant = "";
    fp_of(&p, &r, empty);
    ck_assert_str_ne(absent, empty);
    ck_assert_str_ne(absent, base);
    ck_assert_str_ne(empty, base);

    /* listing a header changes the fingerprint even when it is absent */
    p.nfp_headers = 0;
    r.tenant = NULL;
    fp_of(&p, &r, other);
    ck_assert_str_ne(absent, other);
}
END_TEST

START_TEST(test_fingerprint_boundaries)
{
    struct policy p;
    policy_zero(&p);
    p.fingerprint = FP_METHOD | FP_PATH | FP_QUERY | FP_BODY;
    char a[POLICY_FINGERPRINT_LEN + 1], b[POLICY_FINGERPRINT_LEN + 1];

    struct fp_req r1 = {"POST", "/a", NULL, "", NULL};
    struct fp_req r2 = {"POS", "T/a", NULL, "", NULL};
    fp_of(&p, &r1, a);
    fp_of(&p, &r2, b);
    ck_assert_str_ne(a, b);

    struct fp_req r3 = {"POST", "/ab", "c", "", NULL};
    struct fp_req r4 = {"POST", "/a", "bc", "", NULL};
    fp_of(&p, &r3, a);
    fp_of(&p, &r4, b);
    ck_assert_str_ne(a, b);

    struct fp_req r5 = {"POST", "/a", "b", "c", NULL};
    struct fp_req r6 = {"POST", "/a", "bc", "", NULL};
    fp_of(&p, &r5, a);
    fp_of(&p, &r6, b);
    ck_assert_str_ne(a, b);

    /* a value holding the next part's tag byte cannot pose as that part */
    struct fp_req r9 = {"POST", "/a",
                        "q\x08"
                        "b",
                        "c", NULL};
    struct fp_req r10 = {"POST", "/a", "q",
                         "b\x08"
                         "c",
                         NULL};
    fp_of(&p, &r9, a);
    fp_of(&p, &r10, b);
    ck_assert_str_ne(a, b);

    /* no query and an empty query are the same request */
    struct fp_req r7 = {"POST", "/a", NULL, "x", NULL};
    struct fp_req r8 = {"POST", "/a", "", "x", NULL};
    fp_of(&p, &r7, a);
    fp_of(&p, &r8, b);
    ck_assert_str_eq(a, b);
}
END_TEST

START_TEST(test_fingerprint_binary_body)
{
    struct policy p;
    policy_zero(&p);
    p.fingerprint = FP_BODY;
    struct request_view v;
    view_init(&v, "POST", HTTP_POST, "/", NULL);
    char a[POLICY_FINGERPRINT_LEN + 1], b[POLICY_FINGERPRINT_LEN + 1];

    /* bytes after a NUL count */
    v.body = "ab\0c";
    v.body_len = 4;
    policy_fingerprint(&p, &v, a);
    v.body = "ab\0d";
    policy_fingerprint(&p, &v, b);
    ck_assert_str_ne(a, b);
}
END_TEST

/* ---- policy_record_key ---- */

START_TEST(test_record_key)
{
    char *k = policy_record_key("idem:", "-", NULL, "abc", false);
    ck_assert_str_eq(k, "idem:-:abc");
    free(k);
    k = policy_record_key("p/", "ba7816bf8f01cfea414140de5dae2223", NULL, "a:b c", false);
    ck_assert_str_eq(k, "p/ba7816bf8f01cfea414140de5dae2223:a:b c");
    free(k);
    k = policy_record_key("", "-", NULL, "k", false);
    ck_assert_str_eq(k, "-:k");
    free(k);
    /* key_namespace route: the route's hash between scope and key */
    k = policy_record_key("idem:", "-", "/webhooks/stripe", "evt_1", false);
    char *g = policy_record_key("idem:", "-", "", "evt_1", false);
    ck_assert_int_eq((int)strlen(k), (int)strlen("idem:-:r0123456789abcdef:evt_1"));
    ck_assert_int_eq(strncmp(k, "idem:-:r", 8), 0);
    ck_assert_str_ne(k, g);
    ck_assert_str_eq(k + strlen(k) - 6, ":evt_1");
    free(k);
    free(g);
}
END_TEST

/* redis_cluster: a hash tag around scope and key, shared by the token key */
START_TEST(test_record_key_tagged)
{
    char *k = policy_record_key("idem:", "-", NULL, "abc", true);
    ck_assert_str_eq(k, "idem:{-:abc}");
    free(k);
    k = policy_record_key("idem:", "ab12", "/webhooks", "tok", true);
    ck_assert_int_eq(strncmp(k, "idem:r", 6), 0);
    ck_assert_str_eq(k + strlen("idem:r0123456789abcdef:"), "{ab12:tok}");
    free(k);
    k = policy_token_key("idem:", "ab12", "tok", true);
    ck_assert_str_eq(k, "idem:token:{ab12:tok}");
    free(k);
    k = policy_token_key("idem:", "ab12", "tok", false);
    ck_assert_str_eq(k, "idem:token:ab12:tok");
    free(k);
}
END_TEST

static Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");

    TCase *tc = tcase_create("covers");
    tcase_add_test(tc, test_covers_methods);
    tcase_add_test(tc, test_covers_bypass);
    suite_add_tcase(s, tc);

    tc = tcase_create("key");
    tcase_add_loop_test(tc, test_parse_key_table, 0, (int)ARRAY_LEN(key_cases));
    tcase_add_test(tc, test_parse_key_quoted_equals_bare);
    tcase_add_test(tc, test_parse_key_length_limits);
    tcase_add_test(tc, test_extract_found);
    tcase_add_test(tc, test_extract_absent);
    tcase_add_test(tc, test_extract_repeated_invalid);
    tcase_add_test(tc, test_extract_invalid_value);
    tcase_add_test(tc, test_extract_source_order);
    suite_add_tcase(s, tc);

    tc = tcase_create("key_sources");
    tcase_add_loop_test(tc, test_extract_sources, 0, (int)ARRAY_LEN(source_cases));
    tcase_add_loop_test(tc, test_extract_wrapper_agrees, 0, (int)ARRAY_LEN(source_cases));
    tcase_add_test(tc, test_extract_token_header_unset);
    tcase_add_test(tc, test_extract_token_repeated);
    tcase_add_test(tc, test_extract_repeated_content_type);
    tcase_add_test(tc, test_extract_length_limits);
    tcase_add_test(tc, test_key_needs_body);
    suite_add_tcase(s, tc);

    tc = tcase_create("scope");
    tcase_add_test(tc, test_scope_hash);
    tcase_add_test(tc, test_scope_anonymous);
    tcase_add_test(tc, test_scope_several_sources);
    suite_add_tcase(s, tc);

    tc = tcase_create("fingerprint");
    tcase_add_loop_test(tc, test_fingerprint_part_selected, 0, (int)ARRAY_LEN(fp_changes));
    tcase_add_loop_test(tc, test_fingerprint_part_not_selected, 0, (int)ARRAY_LEN(fp_changes));
    tcase_add_test(tc, test_fingerprint_header);
    tcase_add_test(tc, test_fingerprint_boundaries);
    tcase_add_test(tc, test_fingerprint_binary_body);
    suite_add_tcase(s, tc);

    tc = tcase_create("record_key");
    tcase_add_test(tc, test_record_key);
    tcase_add_test(tc, test_record_key_tagged);
    suite_add_tcase(s, tc);

    return s;
}

UNIT_MAIN(policy_suite)
