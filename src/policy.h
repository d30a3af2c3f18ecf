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
    const char *body;
    size_t body_len;
};

enum key_result {
    KEY_FOUND,   /* *key_out set (malloc'd, NUL-terminated) */
    KEY_ABSENT,  /* no source yielded a key */
    KEY_INVALID, /* a key was present but is not acceptable (SPEC §4.1) */
};

/* Whether the policy covers this method (bypass routes cover nothing). */
bool policy_covers(const struct policy *p, int method);

/*
 * Extracts the idempotency key from the policy's key sources, tried in order.
 * Supports header sources; other kinds are handled by later issues and count
 * as absent here.
 */
enum key_result policy_extract_key(const struct policy *p, const struct request_view *req,
                                   char **key_out);

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

/* "<prefix><scope>:<key>": the Redis key of a record. Malloc'd. */
char *policy_record_key(const char *prefix, const char *scope, const char *key);

#endif
