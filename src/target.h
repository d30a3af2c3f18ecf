/*
 * target.h - one reading of a request-target (SPEC §13): the path that
 * routes match is the path the upstream will act on.
 *
 * Pure: no I/O. server.c rewrites every request's target with it before any
 * policy looks at the request, and the rewritten target is what goes
 * upstream, so idemproxy and the upstream read the same path.
 */
#ifndef IDEM_TARGET_H
#define IDEM_TARGET_H

#include <stdbool.h>
#include <stddef.h>

struct target {
    char *url; /* origin-form: normalised path, then "?query" as received (malloc'd) */
    size_t url_len;
    size_t path_len;       /* bytes of url before the '?' */
    const char *authority; /* absolute-form: the authority, pointing into the input; else NULL */
    size_t authority_len;
};

/*
 * Reads the request-target url (len bytes, as http.c accepted it: visible
 * ASCII only) of a request with the given llhttp method:
 *
 *   origin-form    /path?query
 *   absolute-form  http://authority/path?query (https too; the scheme's case
 *                  is free): becomes origin-form, the authority is returned
 *   asterisk-form  * (OPTIONS only)
 *
 * The path is normalised as RFC 3986 §6.2.2 and nginx's merge_slashes do:
 * percent-escapes of unreserved characters decoded, other escapes written
 * with upper-case hex, repeated slashes merged, "." and ".." segments removed.
 * Refused, as forms upstreams read differently: %2F, %5C, %00 and '\', a
 * malformed escape, escapes that decode to bytes that are not UTF-8 (overlong
 * forms included), ".." above the root, ';' (path parameters, which Java
 * servers strip before routing: "/..;/x", "/orders;x/charge"), '#', userinfo
 * in the authority, any other form.
 *
 * Returns NULL with *t filled (free t->url), or the reason for a 400.
 */
const char *target_read(const char *url, size_t len, int method, struct target *t);

struct http_message;

/*
 * Applies target_read to a parsed request: its url becomes the normalised
 * origin-form target (what routes match and what goes upstream). For an
 * absolute-form target, a Host field must name the same authority (ASCII
 * case aside), and one is added when the request had none (HTTP/1.0).
 * Returns NULL, or the reason for a 400 (the request is then unchanged).
 */
const char *target_rewrite_request(struct http_message *req);

/*
 * Whether a Host field value (blanks around it already trimmed) is
 * `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name
 * of unreserved characters, percent-escapes and sub-delims, an IPv4 address,
 * or an IP literal in brackets, then digits after a ':'. An empty value is
 * accepted (RFC 9112 §3.2). Anything else, "a/payments?" for one, is a Host
 * that an upstream building its URL from Host and target would route on.
 */
bool target_host_valid(const char *value, size_t len);

/*
 * Normalising twice changes nothing; the result never holds "//", a "." or
 * ".." segment, or an escape of an unreserved character. Exposed for the
 * fuzz target (tests/fuzz/fuzz_target.c).
 */
bool target_is_normal(const char *path, size_t len);

#endif
