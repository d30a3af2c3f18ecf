/*
 * problem.h - the answers idemproxy gives in its own name: RFC 9457
 * application/problem+json bodies with a stable machine-readable `code`
 * (SPEC §4.1). Pure: builds headers and a body, sends nothing.
 */
#ifndef IDEM_PROBLEM_H
#define IDEM_PROBLEM_H

#include <stddef.h>

#include "headers.h"

enum problem_code {
    PROBLEM_MISSING_KEY,
    PROBLEM_INVALID_KEY,
    PROBLEM_CONFLICT,
    PROBLEM_OUTCOME_UNKNOWN,
    PROBLEM_ALREADY_COMPLETED,
    PROBLEM_FINGERPRINT_MISMATCH,
    PROBLEM_PAYLOAD_TOO_LARGE,
    PROBLEM_STORE_UNAVAILABLE,
    PROBLEM_TOKEN_INVALID,
    PROBLEM_BAD_REQUEST,
    PROBLEM_URI_TOO_LONG,
    PROBLEM_HEADER_TOO_LARGE,
    PROBLEM_REQUEST_TIMEOUT,
    PROBLEM_METHOD_NOT_ALLOWED,
    PROBLEM_UPSTREAM_UNAVAILABLE,
    PROBLEM_UPSTREAM_TIMEOUT,
    PROBLEM_NOT_IMPLEMENTED,
    PROBLEM_OVERLOADED,
    PROBLEM_QUOTA_EXCEEDED,
    PROBLEM_UNSUPPORTED_ENCODING,
    PROBLEM_VERSION_NOT_SUPPORTED,
    PROBLEM_SIGNATURE_INVALID,
    PROBLEM_UNAUTHORIZED, /* the keys admin API (SPEC §9) */
    PROBLEM_NOT_FOUND,
};

struct problem {
    enum problem_code code;
    const char *detail; /* NULL: the code's default sentence */
    const char *key;    /* idempotency key to echo, or NULL */
    /* error_body (SPEC §4.6): the API's own error format, or NULL for a
     * problem document; error_content_type its type (NULL: application/json). */
    const char *body_template;
    const char *content_type;
};

/* Most bytes an error_body template may have. */
#define PROBLEM_TEMPLATE_MAX (16 * 1024)

/*
 * Checks an error_body template: every "{name}" whose name is a run of
 * lower-case letters must be one of {status} {code} {title} {detail} {key}
 * (JSON's own braces, as in {"error": {}}, are not placeholders). Returns
 * NULL, or a phrase naming the first unknown placeholder (in msg).
 */
const char *problem_template_check(const char *text, char *msg, size_t size);

int problem_status(enum problem_code code);
const char *problem_code_name(enum problem_code code);

/*
 * Appends Content-Type, Cache-Control and, with doc_url, a Link header to h,
 * and returns the malloc'd body (*len bytes): the problem document, or the
 * template with each placeholder replaced by its value, JSON-escaped
 * ({status} as digits; {key} empty when there is none).
 */
char *problem_render(const struct problem *p, const char *doc_url, struct header_list *h,
                     size_t *len);

#endif
