/*
 * headers.c - header list storage and the hop-by-hop rules.
 *
 * A header_list grows by doubling; each field's name and value are
 * NUL-terminated copies, so callers may use them as C strings. The copies
 * live in blocks of text the list owns (one allocation for a typical head,
 * instead of two per field), freed together by headers_clear(). Lookups are linear:
 * requests carry few fields (bounded by max_header_size), and a linear scan of
 * a short array beats any index for that size. The list counts its
 * Connection fields, so the hop-by-hop test scans for the names they list
 * only when there are any: filtering a message stays linear.
 */
#include "headers.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

struct header_text {
    struct header_text *prev;
    size_t used, cap;
    char bytes[];
};

/* Text for a typical head (names and values of a dozen fields) in one block,
 * kept under 1000 bytes with its header: glibc serves that size from its
 * small bins, where a larger one would consolidate its fast bins first. */
#define TEXT_BLOCK (1000 - sizeof(struct header_text))

void headers_init(struct header_list *h)
{
    h->items = NULL;
    h->count = 0;
    h->cap = 0;
    h->connection_fields = 0;
    h->text = NULL;
}

void headers_clear(struct header_list *h)
{
    while (h->text) {
        struct header_text *t = h->text;
        h->text = t->prev;
        free(t);
    }
    free(h->items);
    headers_init(h);
}

/* Room for n bytes at the end of the newest block; a new block has room
 * for at least `room` bytes. */
static char *text_reserve(struct header_list *h, size_t n, size_t room)
{
    struct header_text *t = h->text;
    if (t == NULL || t->cap - t->used < n) {
        size_t cap = room > TEXT_BLOCK ? room : TEXT_BLOCK;
        t = xmalloc(sizeof(*t) + cap);
        t->prev = h->text;
        t->used = 0;
        t->cap = cap;
        h->text = t;
    }
    char *p = t->bytes + t->used;
    t->used += n;
    return p;
}

static char *text_copy(struct header_list *h, const char *s, size_t n)
{
    char *p = text_reserve(h, n + 1, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/*
 * Appends to a string of this list's text: in place when it is the last
 * thing in the newest block and there is room, else as a new copy in a block
 * with room for as much again, so that a value arriving a byte at a time
 * costs memory in proportion to its length, not to its square.
 */
static void text_extend(struct header_list *h, char **s, size_t *len, const char *more, size_t n)
{
    struct header_text *t = h->text;
    if (t && *s + *len + 1 == t->bytes + t->used && t->cap - t->used >= n) {
        t->used += n;
    } else {
        size_t need = *len + n + 1;
        char *p = text_reserve(h, need, 2 * need);
        memcpy(p, *s, *len);
        *s = p;
    }
    memcpy(*s + *len, more, n);
    *len += n;
    (*s)[*len] = '\0';
}

void headers_add(struct header_list *h, const char *name, size_t name_len, const char *value,
                 size_t value_len)
{
    if (h->count == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 16;
        h->items = xrealloc(h->items, (size_t)h->cap * sizeof(*h->items));
    }
    struct header *f = &h->items[h->count++];
    f->name = text_copy(h, name, name_len);
    f->name_len = name_len;
    f->value = text_copy(h, value, value_len);
    f->value_len = value_len;
    if (strn_case_equal(name, name_len, "Connection"))
        h->connection_fields++;
}

void headers_add_cstr(struct header_list *h, const char *name, const char *value)
{
    headers_add(h, name, strlen(name), value, strlen(value));
}

void headers_drop_last(struct header_list *h)
{
    const struct header *f = &h->items[--h->count];
    if (strn_case_equal(f->name, f->name_len, "Connection"))
        h->connection_fields--;
}

void headers_append_value(struct header_list *h, const char *more, size_t len)
{
    struct header *f = &h->items[h->count - 1];
    text_extend(h, &f->value, &f->value_len, more, len);
}

void headers_append_name(struct header_list *h, const char *more, size_t len)
{
    struct header *f = &h->items[h->count - 1];
    bool was_connection = strn_case_equal(f->name, f->name_len, "Connection");
    text_extend(h, &f->name, &f->name_len, more, len);
    h->connection_fields += strn_case_equal(f->name, f->name_len, "Connection") - was_connection;
}

const struct header *headers_find(const struct header_list *h, const char *name)
{
    for (int i = 0; i < h->count; i++)
        if (strn_case_equal(h->items[i].name, h->items[i].name_len, name))
            return &h->items[i];
    return NULL;
}

int headers_count(const struct header_list *h, const char *name)
{
    int n = 0;
    for (int i = 0; i < h->count; i++)
        if (strn_case_equal(h->items[i].name, h->items[i].name_len, name))
            n++;
    return n;
}

bool headers_list_has_token(const char *value, size_t len, const char *token)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end > start && strn_case_equal(value + start, end - start, token))
            return true;
    }
    return false;
}

static const char *const hop_by_hop[] = {
    "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
};

bool headers_is_hop_by_hop(const struct header_list *all, const struct header *field)
{
    for (size_t i = 0; i < ARRAY_LEN(hop_by_hop); i++)
        if (strn_case_equal(field->name, field->name_len, hop_by_hop[i]))
            return true;
    if (field->name_len >= 6 && strncasecmp(field->name, "Proxy-", 6) == 0)
        return true;
    /* Linear per message in the common case: only Connection fields name more. */
    for (int i = 0; all->connection_fields > 0 && i < all->count; i++) {
        const struct header *c = &all->items[i];
        if (strn_case_equal(c->name, c->name_len, "Connection") &&
            headers_list_has_token(c->value, c->value_len, field->name))
            return true;
    }
    return false;
}

void headers_remove_hop_by_hop(struct header_list *h)
{
    /* Judged on the whole list first: a Connection field names the others. */
    bool on_stack[128];
    bool *drop = h->count <= 128 ? on_stack : xmalloc((size_t)h->count * sizeof(*drop));
    bool any = false;
    for (int i = 0; i < h->count; i++)
        any |= drop[i] = headers_is_hop_by_hop(h, &h->items[i]);
    int kept = 0;
    for (int i = 0; any && i < h->count; i++)
        if (!drop[i])
            h->items[kept++] = h->items[i];
    if (any) {
        h->count = kept;
        h->connection_fields = 0;
    }
    if (drop != on_stack)
        free(drop);
}

void headers_copy_end_to_end(struct header_list *dst, const struct header_list *src)
{
    for (int i = 0; i < src->count; i++) {
        const struct header *f = &src->items[i];
        if (!headers_is_hop_by_hop(src, f))
            headers_add(dst, f->name, f->name_len, f->value, f->value_len);
    }
}
