/*
 * problem.c - RFC 9457 problem documents.
 *
 * One table maps each code to its status, title and default detail. The
 * `type` is "<error_doc_url>#<code>" when the operator documents errors, and
 * "about:blank" otherwise (RFC 9457 §4.2.1: the title is then the status
 * phrase's meaning, which ours are).
 */
#include "problem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct problem_kind {
    const char *code;
    int status;
    const char *title;
    const char *detail;
};

static const struct problem_kind kinds[] = {
    [PROBLEM_MISSING_KEY] = {"missing-key", 400, "Idempotency key missing",
                             "This endpoint requires an idempotency key."},
    [PROBLEM_INVALID_KEY] = {"invalid-key", 400, "Invalid idempotency key",
                             "The idempotency key must be 1 to 255 visible ASCII characters, "
                             "sent once."},
    [PROBLEM_CONFLICT] = {"conflict", 409, "Request in progress",
                          "A request with this idempotency key is still being processed; "
                          "retry later."},
    [PROBLEM_OUTCOME_UNKNOWN] = {"outcome-unknown", 409, "Outcome unknown",
                                 "A request with this idempotency key may or may not have "
                                 "been executed (it failed after it was sent, or the proxy "
                                 "handling it stopped); it is not executed again with this "
                                 "key until its outcome has been checked or the key "
                                 "expires."},
    [PROBLEM_ALREADY_COMPLETED] = {"already-completed", 409, "Request already completed",
                                   "already completed"},
    [PROBLEM_FINGERPRINT_MISMATCH] = {"fingerprint-mismatch", 422,
                                      "Idempotency key reused with a different request",
                                      "This idempotency key was used with a different "
                                      "request (method, path, query, body or headers)."},
    [PROBLEM_PAYLOAD_TOO_LARGE] = {"payload-too-large", 413, "Request body too large",
                                   "The request body exceeds max_request_body."},
    [PROBLEM_STORE_UNAVAILABLE] = {"store-unavailable", 503, "Idempotency store unavailable",
                                   "The idempotency store cannot be reached; the request was "
                                   "not executed. Retry later."},
    [PROBLEM_TOKEN_INVALID] = {"token-invalid", 400, "Invalid idempotency token",
                               "The idempotency token is unknown or expired."},
    [PROBLEM_BAD_REQUEST] = {"bad-request", 400, "Bad request", "The request is malformed."},
    [PROBLEM_URI_TOO_LONG] = {"bad-request", 414, "URI too long",
                              "The request line exceeds max_header_size."},
    [PROBLEM_HEADER_TOO_LARGE] = {"bad-request", 431, "Request header fields too large",
                                  "The request header exceeds max_header_size."},
    [PROBLEM_REQUEST_TIMEOUT] = {"bad-request", 408, "Request timeout",
                                 "The request was not received in time."},
    [PROBLEM_METHOD_NOT_ALLOWED] = {"bad-request", 405, "Method not allowed",
                                    "The token endpoint accepts POST only."},
    [PROBLEM_UPSTREAM_UNAVAILABLE] = {"upstream-unavailable", 502, "Upstream unavailable",
                                      "The upstream server could not be reached or failed."},
    [PROBLEM_UPSTREAM_TIMEOUT] = {"upstream-timeout", 504, "Upstream timeout",
                                  "The upstream server did not answer in time."},
    [PROBLEM_UNSUPPORTED_ENCODING] = {"unsupported-encoding", 415, "Content encoding not accepted",
                                      "This endpoint reads its idempotency key from the body, "
                                      "which must be sent without a Content-Encoding."},
    [PROBLEM_OVERLOADED] = {"overloaded", 503, "Too many requests in memory",
                            "The proxy holds as many request bodies as max_buffered_bodies "
                            "allows; the request was not executed. Retry later."},
    [PROBLEM_QUOTA_EXCEEDED] = {"quota-exceeded", 429, "Too many idempotency keys",
                                "This client has used as many new idempotency keys as "
                                "max_keys_per_scope allows in the retention window; the request "
                                "was not executed."},
    [PROBLEM_NOT_IMPLEMENTED] = {"bad-request", 501, "Transfer coding not implemented",
                                 "Only the chunked transfer coding is accepted."},
    [PROBLEM_VERSION_NOT_SUPPORTED] = {"bad-request", 505, "HTTP version not supported",
                                       "Only HTTP/1.0 and HTTP/1.1 are accepted."},
    [PROBLEM_SIGNATURE_INVALID] = {"signature-invalid", 401, "Webhook signature invalid",
                                   "The request's signature is missing, does not match, or "
                                   "its timestamp is too old or too new; it was not executed."},
    [PROBLEM_UNAUTHORIZED] = {"unauthorized", 401, "Unauthorized",
                              "The keys admin API needs the bearer token of admin_token_file."},
    [PROBLEM_NOT_FOUND] = {"not-found", 404, "No such key",
                           "No idempotency key of that name in that scope."},
};

int problem_status(enum problem_code code)
{
    return kinds[code].status;
}

const char *problem_code_name(enum problem_code code)
{
    return kinds[code].code;
}

/* Appends "name": "escaped value" to buf. */
static size_t put_string(char *buf, size_t cap, size_t at, const char *name, const char *value)
{
    char esc[1024];
    log_json_escape(value, strlen(value), esc, sizeof(esc));
    int n = snprintf(buf + at, at < cap ? cap - at : 0, "%s\"%s\":\"%s\"", at > 1 ? "," : "", name,
                     esc);
    return at + (n > 0 ? (size_t)n : 0);
}

static const char *const placeholders[] = {"status", "code", "title", "detail", "key"};

/* The placeholder at s ("{name}"): its index, -1 for a name that is none of
 * ours, -2 when s starts no placeholder at all. *n is its length. */
static int placeholder_at(const char *s, size_t *n)
{
    size_t i = 1;
    while (s[i] >= 'a' && s[i] <= 'z')
        i++;
    if (i == 1 || s[i] != '}')
        return -2;
    *n = i + 1;
    for (size_t p = 0; p < ARRAY_LEN(placeholders); p++)
        if (strlen(placeholders[p]) == i - 1 && strncmp(s + 1, placeholders[p], i - 1) == 0)
            return (int)p;
    return -1;
}

const char *problem_template_check(const char *text, char *msg, size_t size)
{
    for (const char *s = strchr(text, '{'); s != NULL; s = strchr(s + 1, '{')) {
        size_t n;
        if (placeholder_at(s, &n) == -1) {
            snprintf(msg, size,
                     "unknown placeholder %.*s (known: {status} {code} {title} {detail} {key})",
                     (int)n, s);
            return msg;
        }
    }
    return NULL;
}

/* The template with each placeholder replaced by its value, JSON-escaped. */
static char *render_template(const struct problem *p, const struct problem_kind *k, size_t *len)
{
    char status[8];
    snprintf(status, sizeof(status), "%d", k->status);
    const char *values[] = {status, k->code, k->title, p->detail ? p->detail : k->detail,
                            p->key ? p->key : ""};
    /* First pass: the room the escaped values need (6 bytes per byte at worst). */
    size_t cap = strlen(p->body_template) + 1;
    for (const char *s = strchr(p->body_template, '{'); s; s = strchr(s + 1, '{')) {
        size_t n;
        int which = placeholder_at(s, &n);
        if (which >= 0)
            cap += 6 * strlen(values[which]);
    }
    char *buf = xmalloc(cap);
    size_t at = 0;
    for (const char *s = p->body_template; *s;) {
        size_t n;
        int which = *s == '{' ? placeholder_at(s, &n) : -2;
        if (which < 0) {
            buf[at++] = *s++;
            continue;
        }
        at += log_json_escape(values[which], strlen(values[which]), buf + at, cap - at);
        s += n;
    }
    buf[at] = '\0';
    *len = at;
    return buf;
}

static char *render_document(const struct problem *p, const struct problem_kind *k,
                             const char *doc_url, size_t *len)
{
    char type[512];
    if (doc_url)
        snprintf(type, sizeof(type), "%s#%s", doc_url, k->code);
    else
        snprintf(type, sizeof(type), "about:blank");
    size_t cap = 4096;
    char *buf = xmalloc(cap);
    size_t at = (size_t)snprintf(buf, cap, "{");
    at = put_string(buf, cap, at, "type", type);
    at = put_string(buf, cap, at, "title", k->title);
    at += (size_t)snprintf(buf + at, cap - at, ",\"status\":%d", k->status);
    at = put_string(buf, cap, at, "detail", p->detail ? p->detail : k->detail);
    at = put_string(buf, cap, at, "code", k->code);
    if (p->key)
        at = put_string(buf, cap, at, "idempotency_key", p->key);
    at += (size_t)snprintf(buf + at, cap - at, "}\n");
    *len = at < cap ? at : cap - 1;
    return buf;
}

char *problem_render(const struct problem *p, const char *doc_url, struct header_list *h,
                     size_t *len)
{
    const struct problem_kind *k = &kinds[p->code];
    const char *type = p->body_template == NULL  ? "application/problem+json"
                       : p->content_type != NULL ? p->content_type
                                                 : "application/json";
    headers_add_cstr(h, "Content-Type", type);
    headers_add_cstr(h, "Cache-Control", "no-store");
    if (doc_url) {
        char link[600];
        snprintf(link, sizeof(link), "<%s>; rel=\"describedby\"", doc_url);
        headers_add_cstr(h, "Link", link);
    }
    return p->body_template ? render_template(p, k, len) : render_document(p, k, doc_url, len);
}
