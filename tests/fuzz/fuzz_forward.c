/*
 * fuzz_forward.c - libFuzzer target for what idemproxy forwards: a request
 * head accepted by http.c, re-serialised by forward.c with its body framed as
 * proxy.c frames it, must read under a strict reference parser as the very
 * request idemproxy judged. Crashes are not the point; smuggling is.
 *
 * The first input byte is a control byte, the rest is the client's wire:
 *
 *   bit 0  the request is covered (its body buffered, sent with Content-Length)
 *   bit 1  the client came over TLS          bit 2  upstream_host on
 *   bit 3  underscores_in_headers on         bit 4  a streamed body's Expect passes
 *   bit 5  the peer is a trusted proxy (its forwarding fields pass)
 *
 *   wire --http_parser (strict)--> head + body --forward_request_head + framing-->
 *     output --raw llhttp, strict mode, no glue--> method, target, fields, body
 *            --http_parser again-----------------> accepted, one message
 *
 * Broken invariants trap:
 *   - the output is exactly one request: llhttp reads one message and every
 *     byte, with no error, and our own parser accepts it as it stands;
 *   - method and target are the client's, byte for byte;
 *   - the framing is the one idemproxy chose, and the body arrives unchanged;
 *   - the client's end-to-end fields come first, in order, byte for byte; no
 *     hop-by-hop field, no client framing field, no name with '_' (unless
 *     kept) survives; there is exactly one Host and one X-Forwarded-For.
 *
 * Build and run: make fuzz (corpus tests/fuzz/forward/).
 */
#include <event2/buffer.h>
#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "forward.h"
#include "headers.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Names the broken line before trapping: a finding reads without a debugger. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_forward.c:%d: CHECK(%s) failed\n", __LINE__, #cond);             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define MAX_BODY (64 * 1024)

/* ---- the client's side: our parser, as server.c drives it ---------------- */

struct taken {
    struct http_message *head;
    struct evbuffer *body;
    bool complete;
};

static enum http_verdict take_head(void *owner, struct http_message *msg)
{
    struct taken *t = owner;
    t->head = msg;
    return PARSE_CONTINUE;
}

static enum http_verdict take_body(void *owner, const char *at, size_t len)
{
    struct taken *t = owner;
    if (evbuffer_get_length(t->body) + len > MAX_BODY)
        return PARSE_ABORT;
    evbuffer_add(t->body, at, len);
    return PARSE_CONTINUE;
}

static enum http_verdict take_complete(void *owner)
{
    struct taken *t = owner;
    t->complete = true;
    return PARSE_PAUSE;
}

static const struct http_parser_callbacks take = {take_head, take_body, take_complete};

/* ---- the upstream's side: llhttp alone, strict ---------------------------- */

struct reading {
    char url[20000];
    size_t url_len;
    struct header_list fields;
    bool in_name;
    struct evbuffer *body;
    int messages;
    bool chunked;
    bool has_length;
    uint64_t length;
    int method;
};

static struct reading *reading_of(llhttp_t *l)
{
    return l->data;
}

static int ref_url(llhttp_t *l, const char *at, size_t n)
{
    struct reading *r = reading_of(l);
    CHECK(r->url_len + n <= sizeof(r->url));
    memcpy(r->url + r->url_len, at, n);
    r->url_len += n;
    return 0;
}

static int ref_field(llhttp_t *l, const char *at, size_t n)
{
    struct reading *r = reading_of(l);
    if (r->in_name)
        headers_append_name(&r->fields, at, n);
    else
        headers_add(&r->fields, at, n, "", 0);
    r->in_name = true;
    return 0;
}

static int ref_value(llhttp_t *l, const char *at, size_t n)
{
    struct reading *r = reading_of(l);
    r->in_name = false;
    headers_append_value(&r->fields, at, n);
    return 0;
}

static int ref_field_complete(llhttp_t *l)
{
    reading_of(l)->in_name = false;
    return 0;
}

static int ref_headers_complete(llhttp_t *l)
{
    struct reading *r = reading_of(l);
    r->chunked = (l->flags & F_CHUNKED) != 0;
    r->has_length = (l->flags & F_CONTENT_LENGTH) != 0;
    r->length = l->content_length;
    r->method = l->method;
    CHECK(l->http_major == 1 && l->http_minor == 1);
    return 0;
}

static int ref_body(llhttp_t *l, const char *at, size_t n)
{
    evbuffer_add(reading_of(l)->body, at, n);
    return 0;
}

static int ref_complete(llhttp_t *l)
{
    reading_of(l)->messages++;
    return 0;
}

/* ---- checks --------------------------------------------------------------- */

static bool same_bytes(const char *a, size_t an, const char *b, size_t bn)
{
    return an == bn && memcmp(a, b, an) == 0;
}

static bool named(const struct header *h, const char *name)
{
    return strn_case_equal(h->name, h->name_len, name);
}

/* Client fields forward.c writes itself (or drops), whatever their position. */
static bool rewritten(const struct header *h, const struct forward_head *f)
{
    bool forwarding = (h->name_len > 12 && strncasecmp(h->name, "X-Forwarded-", 12) == 0) ||
                      named(h, "Forwarded") || named(h, "X-Real-IP") ||
                      named(h, "X-Original-URL") || named(h, "X-Rewrite-URL") ||
                      named(h, "X-HTTP-Method-Override") || named(h, "X-HTTP-Method") ||
                      named(h, "X-Method-Override");
    return named(h, "Host") || named(h, "X-Forwarded-For") || named(h, "Via") ||
           named(h, "Content-Length") || (named(h, "Expect") && !f->pass_expect) ||
           (forwarding && !f->trusted_peer);
}

static void check_fields(const struct header_list *in, const struct header_list *out,
                         const struct forward_head *f, bool keep_underscores)
{
    int k = 0;
    for (int i = 0; i < in->count; i++) {
        const struct header *h = &in->items[i];
        if (headers_is_hop_by_hop(in, h) || rewritten(h, f))
            continue;
        CHECK(k < out->count);
        CHECK(same_bytes(h->name, h->name_len, out->items[k].name, out->items[k].name_len));
        CHECK(same_bytes(h->value, h->value_len, out->items[k].value, out->items[k].value_len));
        k++;
    }
    int hosts = 0, xff = 0, lengths = 0, codings = 0;
    for (int i = 0; i < out->count; i++) {
        const struct header *h = &out->items[i];
        hosts += named(h, "Host");
        xff += named(h, "X-Forwarded-For");
        lengths += named(h, "Content-Length");
        codings += named(h, "Transfer-Encoding");
        CHECK(keep_underscores || memchr(h->name, '_', h->name_len) == NULL);
        if (i >= k)
            continue; /* ours: the websocket offer's Connection/Upgrade are hop-by-hop */
        CHECK(!headers_is_hop_by_hop(out, h));
    }
    CHECK(hosts == 1 && xff == 1);
    CHECK(lengths == (f->framing == FORWARD_LENGTH));
    CHECK(codings == (f->framing == FORWARD_CHUNKED));
}

/* Our own parser must take the output as it stands: one message, no error. */
static void check_reparse(struct evbuffer *wire, const struct http_message *req)
{
    struct taken t = {.body = evbuffer_new()};
    struct http_parser p;
    http_parser_init(&p, HTTP_REQUEST, 1 << 20, &take, &t);
    http_parser_keep_underscores(&p, true);
    enum http_feed_result fr = http_parser_feed(&p, wire);
    CHECK(fr == HTTP_FEED_PAUSED && t.complete && evbuffer_get_length(wire) == 0);
    CHECK(t.head->method == req->method);
    CHECK(same_bytes(t.head->url, t.head->url_len, req->url, req->url_len));
    http_message_free(t.head);
    http_parser_reset(&p);
    evbuffer_free(t.body);
}

static void check_forwarded(const struct http_message *req, struct evbuffer *body, uint8_t ctl)
{
    struct forward_head f = {
        .req = req,
        .peer = "192.0.2.1",
        .upstream_host = "upstream.test:8080",
        .replace_host = (ctl & 4) != 0,
        .client_tls = (ctl & 2) != 0,
        .trusted_peer = (ctl & 32) != 0,
        .pass_expect = (ctl & 16) != 0 && !(ctl & 1),
    };
    size_t body_len = evbuffer_get_length(body);
    if (ctl & 1) {
        f.framing = FORWARD_LENGTH;
        f.length = body_len;
    } else if (req->chunked) {
        f.framing = FORWARD_CHUNKED;
    } else if (req->has_content_length) {
        f.framing = FORWARD_LENGTH;
        f.length = req->content_length;
        CHECK(f.length == body_len);
    } else {
        CHECK(body_len == 0);
    }
    struct evbuffer *out = evbuffer_new();
    forward_request_head(&f, out);
    /* the body as proxy.c frames it */
    if (f.framing == FORWARD_CHUNKED && body_len > 0)
        evbuffer_add_printf(out, "%zx\r\n", body_len);
    evbuffer_add_buffer(out, body);
    if (f.framing == FORWARD_CHUNKED)
        evbuffer_add_printf(out, "%s0\r\n\r\n", body_len > 0 ? "\r\n" : "");

    size_t out_len = evbuffer_get_length(out);
    const char *bytes = (const char *)evbuffer_pullup(out, -1);
    struct reading *r = calloc(1, sizeof(*r));
    CHECK(r != NULL);
    headers_init(&r->fields);
    r->body = evbuffer_new();
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_url = ref_url;
    s.on_header_field = ref_field;
    s.on_header_field_complete = ref_field_complete;
    s.on_header_value = ref_value;
    s.on_headers_complete = ref_headers_complete;
    s.on_body = ref_body;
    s.on_message_complete = ref_complete;
    llhttp_t l;
    llhttp_init(&l, HTTP_REQUEST, &s);
    l.data = r;
    CHECK(llhttp_execute(&l, bytes, out_len) == HPE_OK);
    CHECK(r->messages == 1); /* exactly one request, every byte of it */
    CHECK(r->method == req->method);
    CHECK(same_bytes(r->url, r->url_len, req->url, req->url_len));
    CHECK(r->chunked == (f.framing == FORWARD_CHUNKED));
    CHECK(r->has_length == (f.framing == FORWARD_LENGTH));
    if (r->has_length)
        CHECK(r->length == f.length);
    CHECK(evbuffer_get_length(r->body) == body_len);
    check_fields(&req->headers, &r->fields, &f, (ctl & 8) != 0);
    /* Ours are added to the client's fields: near HTTP_MAX_FIELDS, our own
     * field cap (a limit, not a reading) would refuse the output. */
    if (r->fields.count <= HTTP_MAX_FIELDS)
        check_reparse(out, req);

    headers_clear(&r->fields);
    evbuffer_free(r->body);
    free(r);
    evbuffer_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    struct taken t = {.body = evbuffer_new()};
    struct http_parser p;
    http_parser_init(&p, HTTP_REQUEST, 16 * 1024, &take, &t);
    http_parser_keep_underscores(&p, (ctl & 8) != 0);
    struct evbuffer *in = evbuffer_new();
    evbuffer_add(in, data + 1, size - 1);
    enum http_feed_result fr = http_parser_feed(&p, in);
    if (fr == HTTP_FEED_PAUSED && t.complete) {
        /* a copy of the body: check_forwarded moves it into the output */
        struct evbuffer *body = evbuffer_new();
        evbuffer_add_buffer(body, t.body);
        check_forwarded(t.head, body, ctl);
        evbuffer_free(body);
    }
    http_message_free(t.head);
    http_parser_reset(&p);
    evbuffer_free(in);
    evbuffer_free(t.body);
    return 0;
}
