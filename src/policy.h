/*
 * policy.h - the pure decisions about one request: is it covered, what is
 * its idempotency key, which tenant scope does it belong to, what is its
 * fingerprint, and under which Redis key does its record live.
 *
 * No I/O and no libevent: the proxy hands in what it parsed and gets answers.
 */
#ifndef IDEM_POLICY_H
#define IDEM_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "headers.h"

#define POLICY_MAX_KEY_LEN 255
#define POLICY_SCOPE_HASH_LEN 32  /* hex chars */
#define POLICY_FINGERPRINT_LEN 64 /* hex chars of SHA-256 */

/* The parts of a request the policy looks at. path excludes the query. */
struct request_view {
    int method; /* llhttp_method_t */
    const char *method_name;
    const char *path;
    size_t path_len;
    const char *query; /* after '?', NULL when none */
    size_t query_len;
    const struct header_list *headers;
    const char *body; /* may be NULL when body_len is 0 */
    size_t body_len;
    const char *token_header; /* the configured token_header name; NULL: none */
};

enum key_result {
    KEY_FOUND,   /* *key_out set (malloc'd, NUL-terminated) */
    KEY_ABSENT,  /* no source yielded a key */
    KEY_INVALID, /* a key was present but is not acceptable (SPEC §4.1) */
};

/* Whether the policy covers this method (bypass routes cover nothing). */
bool policy_covers(const struct policy *p, int method);

/*
 * Extracts the idempotency key from the policy's key sources (SPEC §3), tried
 * in order; the first source where a key is present decides, and a present
 * but unacceptable key is KEY_INVALID, not a reason to try the next source.
 * A key is acceptable when it is 1..POLICY_MAX_KEY_LEN bytes of visible ASCII
 * (header and token values as policy_parse_key_value says).
 *
 *   header:NAME  the field NAME; repeated: KEY_INVALID.
 *   query:NAME   the parameter NAME of req->query, percent-decoded ('+' is a
 *                space); repeated, or a malformed escape in its value: KEY_INVALID.
 *   form:NAME    the same in req->body. Absent when Content-Type is present
 *                and not application/x-www-form-urlencoded, and when the
 *                value's escapes are malformed (a body not valid for its
 *                source is no key); repeated: KEY_INVALID.
 *   json:/ptr    the string (decoded) or number (as written) at the RFC 6901
 *                pointer in req->body. Absent when Content-Type is present and
 *                neither application/json nor "+json", when the body is not one
 *                valid JSON text, or when the value is of another type. An
 *                object on the path holding the named member twice: KEY_INVALID.
 *   token        the field named req->token_header (absent when NULL), parsed
 *                like a key header. The proxy checks the token in the store.
 *
 * More than one Content-Type field makes the body sources absent. The body
 * sources read req->body as it is: the caller buffers the body first when
 * policy_key_needs_body says so.
 *
 * KEY_FOUND sets *key_out (malloc'd, NUL-terminated; caller frees); nothing
 * else touches it. When kind_out is not NULL it is set to the kind of the
 * source that decided (KEY_FOUND, KEY_INVALID), or KEY_SOURCE_NONE (KEY_ABSENT).
 */
enum key_result policy_extract_key_from(const struct policy *p, const struct request_view *req,
                                        char **key_out, enum key_source_kind *kind_out);

/* policy_extract_key_from without the kind. */
enum key_result policy_extract_key(const struct policy *p, const struct request_view *req,
                                   char **key_out);

/* Whether a key source reads the body (form: or json:), so the body must be buffered first. */
bool policy_key_needs_body(const struct policy *p);

/*
 * Parses one Idempotency-Key field value: an RFC 8941 sf-string ("...", with
 * \" and \\ escapes) or a bare token. The key must be 1..255 bytes of visible
 * ASCII (0x21..0x7e; inside an sf-string the space 0x20 is also allowed, as
 * RFC 8941 allows it). Returns KEY_FOUND with *key_out malloc'd, or KEY_INVALID.
 */
enum key_result policy_parse_key_value(const char *value, size_t len, char **key_out);

/*
 * Hashes the tenant scope value (e.g. the Authorization header) into
 * POLICY_SCOPE_HASH_LEN hex chars + NUL. A request without the scope value,
 * or a policy with scope none, gets the fixed anonymous scope "-" (written
 * with its NUL into out).
 */
void policy_scope(const struct policy *p, const struct request_view *req,
                  char out[POLICY_SCOPE_HASH_LEN + 1]);

/*
 * SHA-256 over the parts the policy names (method, path, query, body,
 * header:NAME), each length-prefixed so parts cannot run into each other.
 * Writes 64 hex chars + NUL.
 */
void policy_fingerprint(const struct policy *p, const struct request_view *req,
                        char out[POLICY_FINGERPRINT_LEN + 1]);

/*
 * "<prefix><scope>:<key>": the Redis key of a record. Malloc'd. With a
 * namespace (key_namespace route: the matched route's prefix, or "" for the
 * global policy), "<prefix><scope>:r<16 hex of SHA-256(namespace)>:<key>",
 * so that one route's keys never meet another's.
 *
 * tagged (redis_cluster): "<prefix>[r<16 hex>:]{<scope>:<key>}", whose hash
 * tag is the one policy_token_key gives the token that claims it, so that
 * the claim script's two keys are in one slot.
 */
char *policy_record_key(const char *prefix, const char *scope, const char *ns, const char *key,
                        bool tagged);
/* "<prefix>token:<scope>:<token>" (tagged: "<prefix>token:{<scope>:<token>}"):
 * where an unused one-time token waits (SPEC §4.3). Malloc'd. */
char *policy_token_key(const char *prefix, const char *scope, const char *token, bool tagged);

#endif
