/*
 * fuzz_request.c - libFuzzer target for the HTTP/1.1 parser glue (http.c)
 * and the header rules (headers.c), driven the way server.c and upstream.c
 * drive them.
 *
 * The first input byte is a control byte, the rest is the wire:
 *
 *   bit 0..3  piece size: the wire arrives in pieces of (n * 7 + 1) bytes,
 *             n = 15 meaning all at once, so heads, chunk sizes and CRLFs
 *             are cut everywhere over the runs
 *   bit 4     pause after each message (as server.c does between pipelined
 *             requests) and resume, or run straight on
 *   bit 5     parse as a response (upstream.c) instead of a request
 *   bit 6     responses: treat the message as the answer to HEAD (skip body)
 *   bit 7     request heads: max head size 256 bytes instead of 16k
 *
 *   input --pieces--> evbuffer --http_parser_feed--> on_head / on_body /
 *     on_complete; PAUSED -> http_parser_resume + feed again; ERROR or
 *     ABORTED -> stop, as a connection would close; EOF -> http_parser_finish
 *
 * Every head is run through the hop-by-hop rules and freed in on_head; the
 * parser is reset at the end, so partial messages are freed too and leaks
 * show up. Broken invariants trap:
 *   - a head's header names and values are NUL-terminated at their length;
 *   - headers_copy_end_to_end keeps exactly the fields headers_is_hop_by_hop
 *     does not flag, in order, and none of the fixed hop-by-hop names,
 *     Proxy-* or names listed in a Connection field survive;
 *   - body bytes never exceed a declared Content-Length; a Content-Length
 *     message with a body that completes delivered exactly that many bytes;
 *   - an error leaves a reason and one of the error kinds.
 *
 * Build and run: make fuzz (corpus tests/fuzz/request/).
 */
#include <event2/buffer.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "headers.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

struct run {
    bool response;
    bool skip_body;
    bool pause;
    bool in_body;    /* between on_head and on_complete */
    bool has_length; /* the current message declared Content-Length */
    uint64_t length; /* ...of this many bytes */
    bool chunked;
    bool exact;          /* the body must be exactly `length` bytes */
    uint64_t body_bytes; /* delivered for the current message */
    unsigned messages;
};

static const char *const fixed_hop[] = {
    "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
};

static void check_field(const struct header *h)
{
    CHECK(h->name != NULL && h->value != NULL);
    CHECK(h->name[h->name_len] == '\0' && h->value[h->value_len] == '\0');
}

static void check_head_rules(const struct http_message *msg)
{
    const struct header_list *all = &msg->headers;
    int connection_fields = 0;
    for (int i = 0; i < all->count; i++) {
        check_field(&all->items[i]);
        if (all->items[i].name_len == 10 && strncasecmp(all->items[i].name, "Connection", 10) == 0)
            connection_fields++;
    }
    CHECK(all->connection_fields == connection_fields);

    struct header_list kept;
    headers_init(&kept);
    headers_copy_end_to_end(&kept, all);
    int k = 0;
    for (int i = 0; i < all->count; i++) {
        const struct header *f = &all->items[i];
        if (headers_is_hop_by_hop(all, f))
            continue;
        /* kept in order, byte for byte */
        CHECK(k < kept.count);
        CHECK(kept.items[k].name_len == f->name_len && kept.items[k].value_len == f->value_len);
        CHECK(memcmp(kept.items[k].name, f->name, f->name_len) == 0);
        CHECK(memcmp(kept.items[k].value, f->value, f->value_len) == 0);
        k++;
    }
    CHECK(k == kept.count);
    for (int i = 0; i < kept.count; i++) {
        const struct header *f = &kept.items[i];
        check_field(f);
        for (size_t j = 0; j < sizeof(fixed_hop) / sizeof(fixed_hop[0]); j++)
            CHECK(!(f->name_len == strlen(fixed_hop[j]) &&
                    strncasecmp(f->name, fixed_hop[j], f->name_len) == 0));
        CHECK(!(f->name_len >= 6 && strncasecmp(f->name, "Proxy-", 6) == 0));
        /* a name listed in a Connection field of the original does not survive */
        for (int c = 0; c < all->count; c++) {
            const struct header *conn = &all->items[c];
            if (conn->name_len == 10 && strncasecmp(conn->name, "Connection", 10) == 0)
                CHECK(!headers_list_has_token(conn->value, conn->value_len, f->name));
        }
    }
    /* the lookups agree with each other */
    const char *probe[] = {"Host", "Content-Length", "Connection", "Idempotency-Key"};
    for (size_t i = 0; i < sizeof(probe) / sizeof(probe[0]); i++) {
        int n = headers_count(all, probe[i]);
        CHECK((n > 0) == (headers_find(all, probe[i]) != NULL));
    }
    headers_clear(&kept);
}

static enum http_verdict on_head(void *owner, struct http_message *msg)
{
    struct run *r = owner;
    CHECK(msg != NULL);
    CHECK(!r->in_body);
    if (!r->response) {
        CHECK(msg->url != NULL && msg->url[msg->url_len] == '\0');
        /* strict mode: never both framings */
        CHECK(!(msg->chunked && msg->has_content_length));
    }
    check_head_rules(msg);
    r->in_body = true;
    r->has_length = msg->has_content_length;
    r->length = msg->content_length;
    r->chunked = msg->chunked;
    r->body_bytes = 0;
    /* responses: 1xx, 204, 304 and answers to HEAD have no body whatever they declare */
    r->exact = r->has_length && !r->chunked &&
               (!r->response ||
                (!r->skip_body && msg->status >= 200 && msg->status != 204 && msg->status != 304));
    http_message_free(msg);
    return r->response && r->skip_body ? PARSE_SKIP_BODY : PARSE_CONTINUE;
}

static enum http_verdict on_body(void *owner, const char *data, size_t len)
{
    struct run *r = owner;
    CHECK(r->in_body);
    CHECK(data != NULL || len == 0);
    r->body_bytes += len;
    if (r->has_length && !r->chunked)
        CHECK(r->body_bytes <= r->length);
    return PARSE_CONTINUE;
}

static enum http_verdict on_complete(void *owner)
{
    struct run *r = owner;
    CHECK(r->in_body);
    if (r->exact)
        CHECK(r->body_bytes == r->length);
    r->in_body = false;
    r->messages++;
    return r->pause ? PARSE_PAUSE : PARSE_CONTINUE;
}

static const struct http_parser_callbacks callbacks = {
    .on_head = on_head,
    .on_body = on_body,
    .on_complete = on_complete,
};

static void check_error(const struct http_parser *p)
{
    CHECK(p->error == HTTP_ERROR_BAD_REQUEST || p->error == HTTP_ERROR_URI_TOO_LONG ||
          p->error == HTTP_ERROR_HEADER_TOO_LARGE || p->error == HTTP_ERROR_NOT_IMPLEMENTED ||
          p->error == HTTP_ERROR_VERSION);
    CHECK(p->error_reason != NULL);
}

/* Feeds what is buffered, resuming after pauses. Returns false to stop. */
static bool drain(struct http_parser *p, struct evbuffer *in, size_t bound)
{
    for (size_t guard = 0; guard < bound; guard++) {
        size_t before = evbuffer_get_length(in);
        enum http_feed_result fr = http_parser_feed(p, in);
        switch (fr) {
        case HTTP_FEED_OK: CHECK(evbuffer_get_length(in) == 0); return true;
        case HTTP_FEED_PAUSED:
            CHECK(evbuffer_get_length(in) <= before);
            http_parser_resume(p);
            continue;
        case HTTP_FEED_ABORTED: return false;
        case HTTP_FEED_ERROR: check_error(p); return false;
        }
    }
    __builtin_trap(); /* more pauses than bytes: a message of no bytes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    const char *wire = (const char *)data + 1;
    size_t len = size - 1;
    size_t piece = (ctl & 0x0f) == 0x0f ? (len > 0 ? len : 1) : (size_t)(ctl & 0x0f) * 7 + 1;

    struct run r;
    memset(&r, 0, sizeof(r));
    r.pause = (ctl & 0x10) != 0;
    r.response = (ctl & 0x20) != 0;
    r.skip_body = (ctl & 0x40) != 0;
    size_t max_head = (!r.response && (ctl & 0x80)) ? 256 : 16 * 1024;

    struct http_parser p;
    http_parser_init(&p, r.response ? HTTP_RESPONSE : HTTP_REQUEST, max_head, &callbacks, &r);
    struct evbuffer *in = evbuffer_new();
    CHECK(in != NULL);

    bool going = true;
    for (size_t at = 0; going && at < len; at += piece) {
        size_t n = len - at < piece ? len - at : piece;
        CHECK(evbuffer_add(in, wire + at, n) == 0);
        going = drain(&p, in, len + 2);
    }
    if (going) {
        /* the peer closed: a close-delimited response ends; anything else cut short errs */
        enum http_feed_result fr = http_parser_finish(&p);
        if (fr == HTTP_FEED_ERROR)
            check_error(&p);
        (void)http_parser_in_message(&p);
    }

    http_parser_reset(&p);
    evbuffer_free(in);
    return 0;
}
