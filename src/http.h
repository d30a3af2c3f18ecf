/*
 * http.h - HTTP/1.1 message parsing on top of llhttp, with no sockets.
 *
 * An http_parser turns bytes into http_message heads plus body callbacks.
 * The owner feeds it from an evbuffer with http_parser_feed(); the parser
 * drains exactly the bytes it consumed, so a pause (between pipelined
 * requests) leaves the next request's bytes in the buffer.
 *
 *   bytes --feed--> llhttp --> head collected --on_head--> owner
 *                              body pieces   --on_body--> owner
 *                              end           --on_complete--> owner (may pause)
 */
#ifndef IDEM_HTTP_H
#define IDEM_HTTP_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "headers.h"
#include "util.h"

struct evbuffer;

/* Header fields a message may have (431 beyond), whatever max_header_size. */
#define HTTP_MAX_FIELDS 100

/* One request or response head. Owned by whoever took it from the parser. */
struct http_message {
    int method; /* llhttp_method_t; requests */
    int status; /* responses */
    char *url;  /* requests: the target as received */
    size_t url_len;
    int major, minor;
    struct header_list headers;
    bool keep_alive;
    bool chunked;
    bool has_content_length;
    uint64_t content_length;
    bool upgrade;
    int dropped_fields; /* fields with '_' in their name, left out (requests) */
};

void http_message_free(struct http_message *msg);

/* What an owner's callback returns. */
enum http_verdict {
    PARSE_CONTINUE = 0,
    PARSE_SKIP_BODY = 1, /* on_head only: the message has no body (response to HEAD) */
    PARSE_PAUSE = 2,     /* on_complete only: stop after this message */
    PARSE_ABORT = 3,     /* stop parsing; http_parser_feed returns HTTP_FEED_ABORTED */
};

struct http_parser_callbacks {
    /* The head is complete; msg now belongs to the owner (free with http_message_free). */
    enum http_verdict (*on_head)(void *owner, struct http_message *msg);
    enum http_verdict (*on_body)(void *owner, const char *data, size_t len);
    enum http_verdict (*on_complete)(void *owner);
};

enum http_error {
    HTTP_ERROR_NONE = 0,
    HTTP_ERROR_BAD_REQUEST,      /* malformed or ambiguous message: 400 */
    HTTP_ERROR_URI_TOO_LONG,     /* request line over max_header_size: 414 */
    HTTP_ERROR_HEADER_TOO_LARGE, /* header block over max_header_size: 431 */
    HTTP_ERROR_NOT_IMPLEMENTED,  /* a transfer coding other than chunked: 501 */
    HTTP_ERROR_VERSION           /* a well-formed version other than HTTP/1.x: 505 */
};

/* Where the head scanner is (http.c, scan_byte): one state per part of a line. */
enum head_scan_state {
    SCAN_START,       /* before the start line (a request may have empty lines there) */
    SCAN_METHOD,      /* request line: method token */
    SCAN_TARGET,      /* request line: request-target */
    SCAN_VERSION,     /* "HTTP/" DIGIT "." DIGIT, position in version_at */
    SCAN_STATUS_REST, /* status line after the version: SP status SP reason */
    SCAN_LINE_BEGIN,  /* first byte of a field line, or CR of the empty line */
    SCAN_NAME,        /* field name token */
    SCAN_VALUE,       /* field value */
    SCAN_LF,          /* a CR was seen: only LF may follow */
    SCAN_DONE,        /* the head has ended: llhttp alone reads the body */
};

struct http_parser {
    llhttp_t llhttp;
    const struct http_parser_callbacks *cb;
    void *owner;
    struct http_message *msg; /* head being collected, NULL after on_head took it */
    size_t head_bytes;
    size_t max_head_bytes;
    bool field_open;       /* a header name is being collected */
    bool dropping_field;   /* the current field is left out (a '_' in its name) */
    bool keep_underscores; /* requests: keep fields with '_' in their name */
    /* The head's bytes, checked before llhttp sees them (scan_byte). Reset
     * at every message end, so every head of a connection is scanned. */
    struct {
        enum head_scan_state state;
        enum head_scan_state after_lf; /* where SCAN_LF goes on LF */
        unsigned version_at;           /* bytes of the version seen */
        size_t target_len;
    } scan;
    bool owner_paused; /* the owner asked for the pause now in effect */
    bool aborted;
    bool in_message;
    enum http_error error;
    const char *error_reason; /* llhttp's reason, for logs */
};

void http_parser_init(struct http_parser *p, enum llhttp_type type, size_t max_head_bytes,
                      const struct http_parser_callbacks *cb, void *owner);
void http_parser_reset(struct http_parser *p); /* frees any partial message */

/* Requests: keep fields whose name has '_' (underscores_in_headers on). By
 * default they are left out of the head and counted in dropped_fields:
 * upstreams that fold '_' into '-' (CGI, PHP, Rails, Flask) would read
 * Content_Length as Content-Length, framing we never saw. */
void http_parser_keep_underscores(struct http_parser *p, bool keep);

enum http_feed_result {
    HTTP_FEED_OK,      /* all input consumed */
    HTTP_FEED_PAUSED,  /* on_complete paused; unconsumed input stays in the buffer */
    HTTP_FEED_ABORTED, /* a callback aborted */
    HTTP_FEED_ERROR,   /* malformed input: see p->error */
};

/* Parses and drains input. Callbacks may run; see enum http_verdict. */
enum http_feed_result http_parser_feed(struct http_parser *p, struct evbuffer *input);

/* Resumes after HTTP_FEED_PAUSED. */
void http_parser_resume(struct http_parser *p);

/* Tells the parser the peer closed: completes a close-delimited body.
 * Returns HTTP_FEED_OK, or HTTP_FEED_ERROR when a message was cut short. */
enum http_feed_result http_parser_finish(struct http_parser *p);

/* Whether a message is currently being parsed (bytes seen since the last end). */
bool http_parser_in_message(const struct http_parser *p);

/*
 * A message head composed in memory and handed to an evbuffer in one piece:
 * one copy and one buffer callback (see flush.c) instead of one per field.
 * Heads longer than the array go out in several pieces, in order.
 */
struct http_head_writer {
    struct evbuffer *out;
    size_t len;  /* bytes in text */
    size_t sent; /* bytes already handed to out */
    char text[2048];
};

void http_head_begin(struct http_head_writer *w, struct evbuffer *out);
void http_head_add(struct http_head_writer *w, const char *s, size_t n);
void http_head_add_cstr(struct http_head_writer *w, const char *s);
/* An unsigned number in decimal or (base 16) lower-case hex. */
void http_head_add_uint(struct http_head_writer *w, unsigned long long v, int base);
/* "Name: value\r\n" */
void http_head_add_field(struct http_head_writer *w, const char *name, size_t name_len,
                         const char *value, size_t value_len);
/* "HTTP/1.1 NNN Reason\r\n" */
void http_head_add_status_line(struct http_head_writer *w, int status);
/* Hands what is left to out; returns the bytes written since begin. */
size_t http_head_end(struct http_head_writer *w);

#define HTTP_HEAD_ADD_LITERAL(w, s) http_head_add((w), (s), sizeof(s) - 1)

/* The standard reason phrase for a status, "Unknown" for others. */
const char *http_reason(int status);

/* Whether a response with this status to this method carries no body. */
bool http_response_has_no_body(int request_method, int status);

/* "Sun, 06 Nov 1994 08:49:37 GMT" for now, into out (at least 30 bytes). */
void http_date_now(char *out, size_t cap);

#endif
