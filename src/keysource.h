/*
 * keysource.h - the parsers behind the query:, form: and json: key sources
 * (SPEC §3): parameter lookup in application/x-www-form-urlencoded text, an
 * RFC 6901 pointer lookup in one RFC 8259 JSON text, and the media-type tests
 * that gate the body sources.
 *
 * Pure: no I/O, no logging. Inputs are counted byte strings that need not be
 * NUL-terminated and may hold any byte; nothing is read outside them. The only
 * allocation is the value handed back. Whether a value is an acceptable key is
 * not decided here (policy.c does that).
 */
#ifndef IDEM_KEYSOURCE_H
#define IDEM_KEYSOURCE_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* Containers nested deeper than this make a JSON text invalid. */
#define KEYSOURCE_JSON_MAX_DEPTH 64

enum ks_result {
    KS_ABSENT,    /* no such parameter or value, or a JSON value that is not a string or number */
    KS_FOUND,     /* *value_out set: malloc'd, *len_out bytes plus a NUL; may hold NUL bytes */
    KS_DUPLICATE, /* the parameter, or a member on the pointer's path, occurs more than once */
    KS_MALFORMED, /* params: bad percent-escape in the value found; json: not one valid text */
};

/*
 * Percent-decodes len bytes of urlencoded text into out, which has room for
 * len bytes: "%XX" (either case) becomes that byte, "+" a space, every other
 * byte itself. Returns false on a malformed escape ("%zz", "%4" at the end);
 * out then holds garbage. *out_len is the decoded length (<= len).
 */
bool keysource_percent_decode(const char *s, size_t len, char *out, size_t *out_len) MUST_CHECK;

/*
 * Looks up the parameter called name in application/x-www-form-urlencoded
 * text (a query string without its '?', or a form body): "&"-separated
 * "name=value" pairs; a pair without "=" has an empty value; empty pairs are
 * skipped. Names match after percent-decoding, exactly and case-sensitively;
 * a name with a malformed escape matches nothing.
 *
 * KS_FOUND: *value_out is the percent-decoded value (caller frees).
 * KS_ABSENT: no pair has that name. KS_DUPLICATE: more than one has.
 * KS_MALFORMED: the one value found holds a malformed escape.
 * Only KS_FOUND sets *value_out and *len_out.
 */
enum ks_result keysource_param(const char *text, size_t len, const char *name, char **value_out,
                               size_t *len_out) MUST_CHECK;

/*
 * Resolves an RFC 6901 pointer ("" is the whole text; "/a/0" is member "a",
 * then element 0; "~0" and "~1" in a segment stand for "~" and "/") in doc,
 * which must be exactly one JSON text (RFC 8259: UTF-8, whitespace around one
 * value, no trailing bytes, no byte-order mark, \u escapes that encode Unicode
 * scalar values, containers nested at most KEYSOURCE_JSON_MAX_DEPTH deep).
 * Member names compare after their escapes are decoded; array indices are
 * decimal without leading zeros ("-" names no element).
 *
 * KS_FOUND: the target is a string (*value_out is its decoded content) or a
 * number (*value_out is its text as written). KS_ABSENT: nothing is at the
 * pointer, the value there is an object, array, true, false or null, or the
 * pointer itself is malformed. KS_DUPLICATE: an object on the path holds the
 * member the pointer names more than once, so the target is ambiguous
 * (duplicates of other names are not looked for). KS_MALFORMED: doc is not
 * one valid JSON text. Only KS_FOUND sets *value_out and *len_out.
 *
 * Recursion is bounded by the depth limit; nothing is allocated but the value.
 */
enum ks_result keysource_json(const char *doc, size_t len, const char *pointer, char **value_out,
                              size_t *len_out) MUST_CHECK;

/* Whether doc is exactly one valid JSON text, as keysource_json requires. */
bool keysource_json_valid(const char *doc, size_t len);

/* Whether a pointer is "" or a sequence of "/segment" with "~" only in "~0" and "~1". */
bool keysource_json_pointer_valid(const char *pointer);

/*
 * Whether a Content-Type field value's media type (before any ";", blanks
 * trimmed) is type, compared case-insensitively.
 */
bool keysource_media_type_is(const char *value, size_t len, const char *type);

/* Whether a Content-Type field value names JSON: application/json or a "+json" subtype. */
bool keysource_media_type_is_json(const char *value, size_t len);

#endif
