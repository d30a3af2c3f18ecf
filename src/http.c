/*
 * http.c - llhttp glue: collects heads into http_message, hands body pieces
 * and message ends to the owner, and maps llhttp's errors onto the answers
 * SPEC §5 gives (400, 414, 431).
 *
 * llhttp is strict by default, and we keep it so: it rejects Content-Length
 * together with Transfer-Encoding, differing Content-Length fields, bad chunk
 * sizes, a request Transfer-Encoding that does not end in chunked, and bytes
 * not allowed in header names or values. No lenient flag is ever set. Where
 * llhttp 8 is lenient anyway (a bare LF ending the request line, obs-fold
 * continuation lines, "Name : value"), scan_head() rejects the request before llhttp sees
 * it: a proxy that reads a head differently from the server behind it is a
 * smuggling vector, so only one reading is allowed.
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

/* Counts head bytes; the request line and the header block share the limit. */
static int count_head(struct http_parser *p, size_t len, enum http_error error)
{
    p->head_bytes += len;
    return p->head_bytes > p->max_head_bytes ? fail(p, error) : 0;
}

static void scan_reset(struct http_parser *p)
{
    memset(&p->scan, 0, sizeof(p->scan));
    p->scan.line_start = true;
}

/*
 * Follows a request head's lines through data (which may stop anywhere in
 * it, or run past its end into the body). Returns NULL, or why the head is
 * refused: every line ends in CRLF, no line after the request line starts
 * with a blank (obs-fold, RFC 9112 §5.2), and no field name is followed by
 * a blank before its colon (§5.1). Empty lines before the request line are
 * skipped, as llhttp does.
 */
static const char *scan_head(struct http_parser *p, const char *data, size_t len)
{
    for (size_t i = 0; i < len && !p->scan.done; i++) {
        char c = data[i];
        if (c == '\n') {
            if (!p->scan.after_cr)
                return "bare LF in the request head";
            if (p->scan.line_len == 0 && p->scan.seen_line)
                p->scan.done = true; /* the empty line: the head ends */
            p->scan.seen_line = p->scan.seen_line || p->scan.line_len > 0;
            p->scan.line_len = 0;
            p->scan.line_start = true;
            p->scan.after_cr = false;
            continue;
        }
        p->scan.after_cr = c == '\r';
        if (c == '\r')
            continue;
        bool blank = c == ' ' || c == '\t';
        if (p->scan.line_start && p->scan.seen_line && blank)
            return "obs-fold (a header line starting with a blank) in the request head";
        /* "Name : value": one server would see "Name", another "Name ". */
        if (p->scan.in_name && blank)
            return "whitespace between a header field name and its colon";
        if (p->scan.line_start)
            p->scan.in_name = p->scan.seen_line && c != ':';
        else if (c == ':')
            p->scan.in_name = false;
        p->scan.line_start = false;
        p->scan.line_len++;
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
    }
    /* 4 = ": " and CRLF, so many empty fields still count against the limit. */
    return count_head(p, len + 4, HTTP_ERROR_HEADER_TOO_LARGE);
}

static int on_header_field_complete(llhttp_t *l)
{
    parser_of(l)->field_open = false;
    return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len)
{
    struct http_parser *p = parser_of(l);
    if (p->msg == NULL)
        return count_head(p, len, HTTP_ERROR_HEADER_TOO_LARGE);
    headers_append_value(&p->msg->headers, at, len);
    return count_head(p, len, HTTP_ERROR_HEADER_TOO_LARGE);
}

static int verdict_to_llhttp(struct http_parser *p, enum http_verdict v)
{
    switch (v) {
    case PARSE_CONTINUE: return 0;
    case PARSE_SKIP_BODY: return 1;
    case PARSE_PAUSE: return HPE_PAUSED;
    case PARSE_ABORT: break;
    }
    p->aborted = true;
    return -1;
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
    if (l->type == HTTP_REQUEST) {
        /* CONNECT is refused. An Upgrade offer is parsed as an ordinary
         * request (m->upgrade says it was made): proxy.c passes a WebSocket
         * offer on, or declines it by not forwarding its hop-by-hop fields.
         * Bytes after it stay unparsed in the input, for a tunnel. */
        if (l->method == HTTP_CONNECT)
            return fail(p, HTTP_ERROR_BAD_REQUEST);
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

static int on_message_complete(llhttp_t *l)
{
    struct http_parser *p = parser_of(l);
    p->in_message = false;
    return verdict_to_llhttp(p, p->cb->on_complete(p->owner));
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
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

void http_parser_reset(struct http_parser *p)
{
    http_message_free(p->msg);
    p->msg = NULL;
    llhttp_reset(&p->llhttp);
    p->in_message = false;
    p->error = HTTP_ERROR_NONE;
    p->aborted = false;
    scan_reset(p);
}

static enum http_feed_result classify_error(struct http_parser *p, llhttp_errno_t err)
{
    if (p->aborted)
        return HTTP_FEED_ABORTED;
    if (p->error == HTTP_ERROR_NONE)
        p->error = HTTP_ERROR_BAD_REQUEST;
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
        if (p->llhttp.type == HTTP_REQUEST && !p->scan.done) {
            const char *why = scan_head(p, base, v.iov_len);
            if (why != NULL) {
                p->error = HTTP_ERROR_BAD_REQUEST;
                p->error_reason = why;
                return HTTP_FEED_ERROR;
            }
        }
        llhttp_errno_t err = llhttp_execute(&p->llhttp, base, v.iov_len);
        if (err == HPE_OK) {
            evbuffer_drain(input, v.iov_len);
            continue;
        }
        const char *pos = llhttp_get_error_pos(&p->llhttp);
        size_t consumed = pos != NULL && pos >= base ? (size_t)(pos - base) : 0;
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            evbuffer_drain(input, consumed);
            return HTTP_FEED_PAUSED;
        }
        return classify_error(p, err);
    }
    return HTTP_FEED_OK;
}

void http_parser_resume(struct http_parser *p)
{
    scan_reset(p); /* requests pause after each message: the next head starts here */
    if (llhttp_get_errno(&p->llhttp) == HPE_PAUSED_UPGRADE)
        llhttp_resume_after_upgrade(&p->llhttp);
    else
        llhttp_resume(&p->llhttp);
}

enum http_feed_result http_parser_finish(struct http_parser *p)
{
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
    http_head_add(w, name, name_len);
    http_head_add(w, ": ", 2);
    http_head_add(w, value, value_len);
    http_head_add(w, "\r\n", 2);
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
