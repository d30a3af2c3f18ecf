/*
 * http.c - llhttp glue: collects heads into http_message, hands body pieces
 * and message ends to the owner, and maps malformed messages onto the
 * answers SPEC §5 and §13 give (400, 414, 431, 501, 505; 502 on the
 * upstream side, which upstream.c decides).
 *
 * A proxy that reads a head differently from the server behind it is a
 * smuggling vector, so a head is read one way only, in three layers:
 *
 *   bytes --scan_byte()--> llhttp (strict mode) --check_framing()--> owner
 *
 * 1. scan_byte() walks every head byte before llhttp sees it, for requests
 *    and responses alike: each line ends in CRLF (no bare CR, no bare LF);
 *    the request line is exactly `token SP target SP HTTP/D.D` with no
 *    whitespace or control byte in the target; field names are non-empty
 *    tokens followed directly by ':'; no obs-fold; no control byte in a
 *    value. llhttp 8.1 lets several of these through even in strict mode
 *    (a line without a version, an empty field name, obs-fold).
 * 2. llhttp, compiled with LLHTTP_STRICT_MODE=1 (the Makefile sets it; the
 *    Debian header defaults to 0), and no lenient flag ever set: it refuses
 *    differing Content-Length fields, bad chunk sizes and extensions, and a
 *    bare CR inside chunked framing.
 * 3. check_framing() on the complete head: a version other than HTTP/1.x,
 *    Content-Length beside any Transfer-Encoding field (even an empty one),
 *    Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1), a coding list
 *    that does not end in exactly one chunked (§6.3: 400), and codings other
 *    than chunked (§6.1: 501, we decode none).
 *
 * docs/design.md lists every rule with its RFC section.
 *
 * Every message end pauses llhttp for a moment (on_message_complete), so the
 * scanner starts afresh on the next head in the same buffer; so does the
 * last chunk, whose trailer fields are scanned like header fields. The owner
 * sees a pause only when it asked for one.
 *
 * Ownership: the parser allocates an http_message at message begin and gives
 * it to the owner in on_head. Callbacks must not free the parser; an owner
 * that wants to close defers it until http_parser_feed returns.
 */
#include "http.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void http_message_free(struct http_message *msg)
{
    if (msg == NULL)
        return;
    free(msg->url);
    headers_clear(&msg->headers);
    free(msg);
}

static struct http_parser *parser_of(llhttp_t *l)
{
    return (struct http_parser *)l->data;
}

static int fail(struct http_parser *p, enum http_error error)
{
    p->error = error;
    return HPE_USER;
}

/* As fail(), with our own reason for the log instead of llhttp's. */
static int fail_why(struct http_parser *p, enum http_error error, const char *why)
{
    p->error_reason = why;
    return fail(p, error);
}

/* Counts head bytes; the request line and the header block share the limit. */
static int count_head(struct http_parser *p, size_t len, enum http_error error)
{
    p->head_bytes += len;
    return p->head_bytes > p->max_head_bytes ? fail(p, error) : 0;
}

/* ---- the head scanner --------------------------------------------------- */

/* RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
 * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static const uint64_t tchar_bits[4] = {
    /* 0x00-0x3f: ! # $ % & ' * + - . and the digits */
    (1ull << '!') | (1ull << '#') | (1ull << '$') | (1ull << '%') | (1ull << '&') | (1ull << '\'') |
        (1ull << '*') | (1ull << '+') | (1ull << '-') | (1ull << '.') | (0x3ffull << '0'),
    /* 0x40-0x7f: the letters, ^ _ ` | ~ */
    (0x3ffffffull << ('A' - 64)) | (0x3ffffffull << ('a' - 64)) | (1ull << ('^' - 64)) |
        (1ull << ('_' - 64)) | (1ull << ('`' - 64)) | (1ull << ('|' - 64)) | (1ull << ('~' - 64)),
    0,
    0,
};

/* A table: this runs for every byte of every method and field name. */
static bool is_tchar(unsigned char c)
{
    return (tchar_bits[c >> 6] >> (c & 63)) & 1;
}

/* field-content and reason-phrase bytes: HTAB, SP, VCHAR, obs-text. */
static bool is_text_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static void scan_reset(struct http_parser *p)
{
    memset(&p->scan, 0, sizeof(p->scan));
    p->scan.state = SCAN_START;
}

static const char *expect_cr(struct http_parser *p, unsigned char c, enum head_scan_state next,
                             const char *why)
{
    if (c != '\r')
        return why;
    p->scan.state = SCAN_LF;
    p->scan.after_lf = next;
    return NULL;
}

/* One byte of "HTTP/" DIGIT "." DIGIT, then the byte that ends it. */
static const char *scan_version(struct http_parser *p, unsigned char c)
{
    static const char shape[] = "HTTP/0.0";
    unsigned at = p->scan.version_at++;
    if (at < sizeof(shape) - 1) {
        bool ok = shape[at] == '0' ? (c >= '0' && c <= '9') : c == (unsigned char)shape[at];
        return ok ? NULL : "malformed HTTP version";
    }
    if (p->llhttp.type == HTTP_REQUEST)
        return expect_cr(p, c, SCAN_LINE_BEGIN, "malformed HTTP version");
    if (c != ' ')
        return "malformed HTTP version";
    p->scan.state = SCAN_STATUS_REST;
    return NULL;
}

/*
 * Advances the scanner by one head byte. Returns NULL, or why the head is
 * refused. SCAN_DONE once the empty line that ends the head has passed.
 */
static const char *scan_byte(struct http_parser *p, unsigned char c)
{
    if (c == '\n' && p->scan.state != SCAN_LF)
        return "bare LF in the head";
    switch (p->scan.state) {
    case SCAN_START:
        if (p->llhttp.type == HTTP_RESPONSE) {
            p->scan.state = SCAN_VERSION;
            return scan_version(p, c);
        }
        if (c == '\r') /* RFC 9112 §2.2: empty lines before a request line */
            return expect_cr(p, c, SCAN_START, NULL);
        if (!is_tchar(c))
            return "malformed method";
        p->scan.state = SCAN_METHOD;
        return NULL;
    case SCAN_METHOD:
        if (c == ' ')
            p->scan.state = SCAN_TARGET;
        return c == ' ' || is_tchar(c) ? NULL : "malformed method";
    case SCAN_TARGET:
        if (c > 0x20 && c < 0x7f) {
            p->scan.target_len++;
            return NULL;
        }
        if (c == ' ' && p->scan.target_len > 0) {
            p->scan.state = SCAN_VERSION;
            return NULL;
        }
        if (c == '\r')
            return "request line without an HTTP version";
        return "whitespace or control byte in the request-target";
    case SCAN_VERSION: return scan_version(p, c);
    case SCAN_STATUS_REST:
        if (c == '\r')
            return expect_cr(p, c, SCAN_LINE_BEGIN, NULL);
        return is_text_byte(c) ? NULL : "control byte in the status line";
    case SCAN_LINE_BEGIN:
        if (c == '\r')
            return expect_cr(p, c, SCAN_DONE, NULL);
        if (c == ' ' || c == '\t')
            return "obs-fold (a field line starting with a blank)";
        if (c == ':')
            return "empty field name";
        p->scan.state = SCAN_NAME;
        return is_tchar(c) ? NULL : "invalid byte in a field name";
    case SCAN_NAME:
        if (c == ':') {
            p->scan.state = SCAN_VALUE;
            return NULL;
        }
        /* "Name : value": one server would see "Name", another "Name ". */
        if (c == ' ' || c == '\t')
            return "whitespace between a field name and its colon";
        return is_tchar(c) ? NULL : "invalid byte in a field name";
    case SCAN_VALUE:
        if (c == '\r')
            return expect_cr(p, c, SCAN_LINE_BEGIN, NULL);
        return is_text_byte(c) ? NULL : "control byte in a field value";
    case SCAN_LF:
        if (c != '\n')
            return "bare CR in the head";
        p->scan.state = p->scan.after_lf;
        return NULL;
    case SCAN_DONE: break;
    }
    return NULL;
}

/* Scans the head bytes among data (it may stop anywhere in a head, or run
 * past its end into the body, which is left to llhttp). */
/*
 * Past data[i], the bytes that scan_byte() would take in state without a
 * word or a change: runs of field value, name and request-target bytes are
 * most of a head, so they go by in a tight loop. Every other byte, and the
 * one that ends a run, is scan_byte()'s.
 */
static size_t scan_run(struct http_parser *p, const unsigned char *data, size_t i, size_t len)
{
    size_t start = i;
    switch (p->scan.state) {
    case SCAN_VALUE:
    case SCAN_STATUS_REST:
        while (i < len && is_text_byte(data[i]))
            i++;
        break;
    case SCAN_NAME:
        while (i < len && is_tchar(data[i]))
            i++;
        break;
    case SCAN_TARGET:
        while (i < len && data[i] > 0x20 && data[i] < 0x7f)
            i++;
        p->scan.target_len += i - start;
        break;
    default: break;
    }
    return i;
}

static const char *scan_head(struct http_parser *p, const char *data, size_t len)
{
    const unsigned char *bytes = (const unsigned char *)data;
    for (size_t i = 0; i < len && p->scan.state != SCAN_DONE; i++) {
        i = scan_run(p, bytes, i, len);
        if (i == len)
            break;
        const char *why = scan_byte(p, bytes[i]);
        if (why != NULL)
            return why;
    }
    return NULL;
}

static int on_message_begin(llhttp_t *l)
{
    struct http_parser *p = parser_of(l);
    http_message_free(p->msg);
    p->msg = xcalloc(1, sizeof(*p->msg));
    headers_init(&p->msg->headers);
    p->head_bytes = 0;
    p->field_open = false;
    p->in_message = true;
    return 0;
}

static int on_url(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = parser_of(l);
    struct http_message *m = p->msg;
    m->url = xrealloc(m->url, m->url_len + len + 1);
    memcpy(m->url + m->url_len, at, len);
    m->url_len += len;
    m->url[m->url_len] = '\0';
    return count_head(p, len, HTTP_ERROR_URI_TOO_LONG);
}

/*
 * Fields after a chunked body are trailers: the head already went to the
 * owner (p->msg is NULL), and trailers are dropped (SPEC §5), but their
 * bytes still count against max_header_size.
 */
static int on_header_field(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = parser_of(l);
    if (p->msg == NULL)
        return count_head(p, len + 4, HTTP_ERROR_HEADER_TOO_LARGE);
    if (p->field_open) {
        headers_append_name(&p->msg->headers, at, len);
    } else {
        /* Many tiny fields cost far more than their bytes: cap their number. */
        if (p->msg->headers.count >= HTTP_MAX_FIELDS)
            return fail(p, HTTP_ERROR_HEADER_TOO_LARGE);
        headers_add(&p->msg->headers, at, len, "", 0);
        p->field_open = true;
        p->dropping_field = false;
    }
    /* 4 = ": " and CRLF, so many empty fields still count against the limit. */
    return count_head(p, len + 4, HTTP_ERROR_HEADER_TOO_LARGE);
}

static int on_header_field_complete(llhttp_t *l)
{
    struct http_parser *p = parser_of(l);
    p->field_open = false;
    struct header_list *h = p->msg ? &p->msg->headers : NULL;
    if (h == NULL || p->keep_underscores || l->type != HTTP_REQUEST)
        return 0;
    const struct header *f = &h->items[h->count - 1];
    if (memchr(f->name, '_', f->name_len) != NULL) {
        headers_drop_last(h);
        p->msg->dropped_fields++;
        p->dropping_field = true;
    }
    return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = parser_of(l);
    if (p->msg != NULL && !p->dropping_field)
        headers_append_value(&p->msg->headers, at, len);
    return count_head(p, len, HTTP_ERROR_HEADER_TOO_LARGE);
}

static int verdict_to_llhttp(struct http_parser *p, enum http_verdict v)
{
    switch (v) {
    case PARSE_CONTINUE: return 0;
    case PARSE_SKIP_BODY: return 1;
    case PARSE_PAUSE: p->owner_paused = true; return HPE_PAUSED;
    case PARSE_ABORT: break;
    }
    p->aborted = true;
    return -1;
}

/*
 * Transfer-Encoding, read as RFC 9112 §6 asks a recipient that must not
 * guess: returns 0, or fails the parse. Runs on every head, after llhttp's
 * own checks, which miss an empty Transfer-Encoding beside Content-Length
 * and any Transfer-Encoding in HTTP/1.0.
 */
static int check_framing(struct http_parser *p, const struct http_message *m)
{
    bool request = p->llhttp.type == HTTP_REQUEST;
    if (m->major != 1)
        return request ? fail_why(p, HTTP_ERROR_VERSION, "HTTP version other than 1.x")
                       : fail_why(p, HTTP_ERROR_BAD_REQUEST, "HTTP version other than 1.x");
    int te_fields = 0, chunked = 0, others = 0;
    bool length = false, chunked_last = false;
    for (int i = 0; i < m->headers.count; i++) {
        const struct header *f = &m->headers.items[i];
        if (strn_case_equal(f->name, f->name_len, "Content-Length"))
            length = true;
        if (!strn_case_equal(f->name, f->name_len, "Transfer-Encoding"))
            continue;
        te_fields++;
        for (const char *v = f->value, *end = v + f->value_len; v < end;) {
            const char *comma = memchr(v, ',', (size_t)(end - v));
            size_t n;
            const char *coding = trim_ows(v, comma ? (size_t)(comma - v) : (size_t)(end - v), &n);
            v = comma ? comma + 1 : end;
            if (n == 0)
                continue; /* an empty list element (RFC 9110 §5.6.1) */
            chunked_last = strn_case_equal(coding, n, "chunked");
            chunked += chunked_last;
            others += !chunked_last;
        }
    }
    /* Upstreams that read it as a signed 64-bit number would see another length. */
    if (m->has_content_length && m->content_length > INT64_MAX)
        return fail_why(p, HTTP_ERROR_BAD_REQUEST, "Content-Length beyond 2^63-1");
    if (te_fields == 0)
        return 0;
    if (length)
        return fail_why(p, HTTP_ERROR_BAD_REQUEST, "Content-Length with Transfer-Encoding");
    if (m->minor == 0)
        return fail_why(p, HTTP_ERROR_BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 message");
    if (!chunked_last || chunked > 1)
        return fail_why(p, HTTP_ERROR_BAD_REQUEST,
                        "Transfer-Encoding that does not end in one chunked");
    if (others > 0)
        return request
                   ? fail_why(p, HTTP_ERROR_NOT_IMPLEMENTED, "a transfer coding other than chunked")
                   : fail_why(p, HTTP_ERROR_BAD_REQUEST, "a transfer coding other than chunked");
    return 0;
}

static int on_headers_complete(llhttp_t *l)
{
    struct http_parser *p = parser_of(l);
    struct http_message *m = p->msg;
    m->method = l->method;
    m->status = l->status_code;
    m->major = l->http_major;
    m->minor = l->http_minor;
    m->keep_alive = llhttp_should_keep_alive(l);
    m->chunked = (l->flags & F_CHUNKED) != 0;
    m->has_content_length = (l->flags & F_CONTENT_LENGTH) != 0;
    m->content_length = m->has_content_length ? l->content_length : 0;
    m->upgrade = l->upgrade;
    int err = check_framing(p, m);
    if (err != 0)
        return err;
    if (l->type == HTTP_REQUEST) {
        /* CONNECT is refused. An Upgrade offer is parsed as an ordinary
         * request (m->upgrade says it was made): proxy.c passes a WebSocket
         * offer on, or declines it by not forwarding its hop-by-hop fields.
         * Bytes after it stay unparsed in the input, for a tunnel. */
        if (l->method == HTTP_CONNECT)
            return fail_why(p, HTTP_ERROR_BAD_REQUEST, "CONNECT is not proxied");
        l->upgrade = 0;
    }
    p->msg = NULL;
    return verdict_to_llhttp(p, p->cb->on_head(p->owner, m));
}

static int on_body(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = parser_of(l);
    return verdict_to_llhttp(p, p->cb->on_body(p->owner, at, len));
}

/*
 * The last chunk: trailer fields follow, and are scanned like a head's. The
 * pause lets http_parser_feed scan them before llhttp reads on.
 */
static int on_chunk_header(llhttp_t *l)
{
    struct http_parser *p = parser_of(l);
    if (l->content_length != 0)
        return 0;
    p->scan.state = SCAN_LINE_BEGIN;
    return HPE_PAUSED;
}

/* Always pauses: the owner's pause, or ours, after which http_parser_feed
 * scans the next head afresh and goes on. */
static int on_message_complete(llhttp_t *l)
{
    struct http_parser *p = parser_of(l);
    p->in_message = false;
    scan_reset(p);
    int r = verdict_to_llhttp(p, p->cb->on_complete(p->owner));
    return r == 0 ? HPE_PAUSED : r;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

void http_parser_init(struct http_parser *p, enum llhttp_type type, size_t max_head_bytes,
                      const struct http_parser_callbacks *cb, void *owner)
{
    memset(p, 0, sizeof(*p));
    llhttp_init(&p->llhttp, type, &settings);
    p->llhttp.data = p;
    p->cb = cb;
    p->owner = owner;
    p->max_head_bytes = max_head_bytes;
    scan_reset(p);
}

void http_parser_keep_underscores(struct http_parser *p, bool keep)
{
    p->keep_underscores = keep;
}

void http_parser_reset(struct http_parser *p)
{
    http_message_free(p->msg);
    p->msg = NULL;
    llhttp_reset(&p->llhttp);
    p->in_message = false;
    p->error = HTTP_ERROR_NONE;
    p->error_reason = NULL;
    p->aborted = false;
    p->owner_paused = false;
    scan_reset(p);
}

static enum http_feed_result classify_error(struct http_parser *p, llhttp_errno_t err)
{
    if (p->aborted)
        return HTTP_FEED_ABORTED;
    if (p->error == HTTP_ERROR_NONE)
        p->error = HTTP_ERROR_BAD_REQUEST;
    if (p->error_reason == NULL)
        p->error_reason = llhttp_get_error_reason(&p->llhttp);
    if (p->error_reason == NULL)
        p->error_reason = llhttp_errno_name(err);
    return HTTP_FEED_ERROR;
}

enum http_feed_result http_parser_feed(struct http_parser *p, struct evbuffer *input)
{
    while (evbuffer_get_length(input) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(input, -1, NULL, &v, 1) < 1)
            break;
        const char *base = v.iov_base;
        const char *why = scan_head(p, base, v.iov_len);
        if (why != NULL) {
            p->error = HTTP_ERROR_BAD_REQUEST;
            p->error_reason = why;
            return HTTP_FEED_ERROR;
        }
        llhttp_errno_t err = llhttp_execute(&p->llhttp, base, v.iov_len);
        if (err == HPE_OK) {
            evbuffer_drain(input, v.iov_len);
            continue;
        }
        const char *pos = llhttp_get_error_pos(&p->llhttp);
        size_t consumed = pos != NULL && pos >= base ? (size_t)(pos - base) : 0;
        if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE)
            return classify_error(p, err);
        evbuffer_drain(input, consumed);
        if (p->owner_paused || err == HPE_PAUSED_UPGRADE)
            return HTTP_FEED_PAUSED;
        /* Our pause (a message end, trailers): scan on from here. */
        llhttp_resume(&p->llhttp);
    }
    return HTTP_FEED_OK;
}

void http_parser_resume(struct http_parser *p)
{
    scan_reset(p); /* requests pause after each message: the next head starts here */
    p->owner_paused = false;
    if (llhttp_get_errno(&p->llhttp) == HPE_PAUSED_UPGRADE)
        llhttp_resume_after_upgrade(&p->llhttp);
    else
        llhttp_resume(&p->llhttp);
}

enum http_feed_result http_parser_finish(struct http_parser *p)
{
    /* Between messages (our pause after the last one's end has llhttp still
     * "after message complete"): a close here cuts nothing. */
    if (!p->in_message)
        return HTTP_FEED_OK;
    llhttp_errno_t err = llhttp_finish(&p->llhttp);
    if (err == HPE_OK || err == HPE_PAUSED)
        return HTTP_FEED_OK;
    return classify_error(p, err);
}

bool http_parser_in_message(const struct http_parser *p)
{
    return p->in_message;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

void http_head_begin(struct http_head_writer *w, struct evbuffer *out)
{
    w->out = out;
    w->len = 0;
    w->sent = 0;
}

static void head_spill(struct http_head_writer *w)
{
    evbuffer_add(w->out, w->text, w->len);
    w->sent += w->len;
    w->len = 0;
}

void http_head_add(struct http_head_writer *w, const char *s, size_t n)
{
    if (w->len + n > sizeof(w->text))
        head_spill(w);
    if (n > sizeof(w->text)) {
        evbuffer_add(w->out, s, n);
        w->sent += n;
        return;
    }
    memcpy(w->text + w->len, s, n);
    w->len += n;
}

void http_head_add_cstr(struct http_head_writer *w, const char *s)
{
    http_head_add(w, s, strlen(s));
}

void http_head_add_uint(struct http_head_writer *w, unsigned long long v, int base)
{
    char digits[UINT64_DIGITS];
    char *p = format_u64(v, base, digits);
    http_head_add(w, p, (size_t)(digits + sizeof(digits) - p));
}

void http_head_add_field(struct http_head_writer *w, const char *name, size_t name_len,
                         const char *value, size_t value_len)
{
    size_t n = name_len + 2 + value_len + 2;
    if (n > sizeof(w->text) - w->len) { /* the rare long field: piece by piece */
        http_head_add(w, name, name_len);
        http_head_add(w, ": ", 2);
        http_head_add(w, value, value_len);
        http_head_add(w, "\r\n", 2);
        return;
    }
    /* one check and two copies: every field of every forwarded head comes here */
    char *t = w->text + w->len;
    memcpy(t, name, name_len);
    t += name_len;
    *t++ = ':';
    *t++ = ' ';
    memcpy(t, value, value_len);
    t += value_len;
    *t++ = '\r';
    *t++ = '\n';
    w->len += n;
}

void http_head_add_status_line(struct http_head_writer *w, int status)
{
    HTTP_HEAD_ADD_LITERAL(w, "HTTP/1.1 ");
    http_head_add_uint(w, (unsigned long long)status, 10);
    http_head_add(w, " ", 1);
    http_head_add_cstr(w, http_reason(status));
    http_head_add(w, "\r\n", 2);
}

size_t http_head_end(struct http_head_writer *w)
{
    head_spill(w);
    return w->sent;
}

bool http_response_has_no_body(int request_method, int status)
{
    return request_method == HTTP_HEAD || (status >= 100 && status < 200) || status == 204 ||
           status == 304;
}

void http_date_now(char *out, size_t cap)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}
