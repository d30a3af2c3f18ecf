/*
 * json_canon.h - one canonical form of a JSON text, for `fingerprint ...
 * json` (SPEC §4.6): a client that re-serialises the same object on retry
 * (other member order, other spacing, other escapes) sends the same request.
 *
 * Pure: no I/O. The model is RFC 8785 (JCS), with one difference said here
 * plainly: numbers are compared by their exact decimal value, not by their
 * nearest binary double ("1.0", "1", "10e-1" are one number; so are
 * "0.1000000000000000000001" and nothing else).
 */
#ifndef IDEM_JSON_CANON_H
#define IDEM_JSON_CANON_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The canonical form of doc (len bytes), malloc'd into *out (*out_len bytes,
 * NUL-terminated): objects' members sorted by their names' UTF-8 bytes, no
 * insignificant whitespace, strings with only the escapes they need (\" \\
 * \b \f \n \r \t, \u00XX for other control characters, everything else as
 * UTF-8), numbers as their exact decimal value (digits without leading or
 * trailing zeros and a power of ten: "15e-1", "1e2", "0", "-7"). Returns
 * false, setting nothing, when doc is not one valid JSON text (keysource.h's
 * rules) or an object holds a member name twice.
 */
bool json_canonical(const char *doc, size_t len, char **out, size_t *out_len);

#endif
