/*
 * headers.h - an ordered list of HTTP header fields that owns its strings,
 * and the header rules of RFC 9110 §7.6.1 (hop-by-hop fields).
 *
 * Used for parsed requests and responses, for stored records and for the
 * heads idemproxy writes. Pure: no I/O.
 */
#ifndef IDEM_HEADERS_H
#define IDEM_HEADERS_H

#include <stdbool.h>
#include <stddef.h>

struct header {
    char *name;
    size_t name_len;
    char *value;
    size_t value_len;
};

struct header_text; /* the blocks that hold a list's names and values */

struct header_list {
    struct header *items;
    int count;
    int cap;
    int connection_fields; /* how many are named Connection: 0 spares their scan */
    struct header_text *text;
};

void headers_init(struct header_list *h);
void headers_clear(struct header_list *h); /* frees every field, keeps h usable */

/* Appends a copy of name and value. */
void headers_add(struct header_list *h, const char *name, size_t name_len, const char *value,
                 size_t value_len);
void headers_add_cstr(struct header_list *h, const char *name, const char *value);

/* Removes the last field (its text stays with the list until headers_clear). */
void headers_drop_last(struct header_list *h);

/* Appends bytes to the value of the last field (llhttp delivers values in pieces). */
void headers_append_value(struct header_list *h, const char *more, size_t len);
/* Appends bytes to the name of the last field. */
void headers_append_name(struct header_list *h, const char *more, size_t len);

/* First field called name (case-insensitive), or NULL. */
const struct header *headers_find(const struct header_list *h, const char *name);
/* How many fields are called name. */
int headers_count(const struct header_list *h, const char *name);

/* Whether `value` (a comma-separated list) contains token, case-insensitive. */
bool headers_list_has_token(const char *value, size_t len, const char *token);

/*
 * Whether a field must not cross the proxy: the fixed hop-by-hop set of SPEC §5
 * (Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*)
 * or a name listed in any Connection field of `all`.
 */
bool headers_is_hop_by_hop(const struct header_list *all, const struct header *field);

/* Removes the hop-by-hop fields, in place. */
void headers_remove_hop_by_hop(struct header_list *h);

/* Copies every end-to-end field of src into dst. */
void headers_copy_end_to_end(struct header_list *dst, const struct header_list *src);

#endif
