/*
 * record.c - the stored response, as bytes in Redis and back (record.h holds
 * the wire format). Pure: no I/O, no logging.
 *
 *   status, flags, headers, body --record_encode--> "IDR1..." (malloc'd)
 *   "IDR1..." --record_decode--> struct record (owned copies; record_free)
 *
 * The decoder trusts nothing: Redis content may be truncated, from another
 * version or simply not ours. Every read goes through one cursor that checks
 * the bytes left before touching them, counts are checked against the bytes
 * left before anything is allocated for them, and the encoding must end
 * exactly where the buffer does.
 */
#include "record.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RECORD_MAGIC "IDR1"
#define RECORD_MAGIC_LEN 4
#define RECORD_FLAG_OMITTED 0x01u
/* The smallest encoded header field: two empty u32-prefixed strings. */
#define RECORD_MIN_FIELD 8u

/* ---- encoding ---- */

static unsigned char *put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return p + 2;
}

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

static unsigned char *put_bytes(unsigned char *p, const void *data, size_t len)
{
    p = put_u32(p, (uint32_t)len);
    if (len > 0)
        memcpy(p, data, len);
    return p + len;
}

/*
 * Adds n to *total unless a field over 4 GiB or the sum would not fit;
 * returns false then.
 */
static bool add_len(size_t *total, size_t n)
{
    if (n > UINT32_MAX || n > SIZE_MAX - 4 - *total)
        return false;
    *total += 4 + n;
    return true;
}

/*
 * Returns NULL (and leaves *out_len alone) only when the record cannot be
 * expressed in version 1: a status outside 0..65535, or a count or length
 * beyond 32 bits. Limits such as max_cached_body keep real records far below.
 */
static bool stored(const struct header *h)
{
    return !strn_case_equal(h->name, h->name_len, "Date") &&
           !strn_case_equal(h->name, h->name_len, "Content-Length");
}

char *record_encode(int status, bool body_omitted, const struct header_list *headers,
                    const char *body, size_t body_len, size_t *out_len)
{
    if (status < 0 || status > UINT16_MAX || headers->count < 0)
        return NULL;

    size_t total = RECORD_MAGIC_LEN + 2 + 1 + 4;
    uint32_t count = 0;
    for (int i = 0; i < headers->count; i++) {
        if (!stored(&headers->items[i]))
            continue;
        if (!add_len(&total, headers->items[i].name_len) ||
            !add_len(&total, headers->items[i].value_len))
            return NULL;
        count++;
    }
    if (!add_len(&total, body_len))
        return NULL;

    unsigned char *buf = xmalloc(total);
    unsigned char *p = buf;
    memcpy(p, RECORD_MAGIC, RECORD_MAGIC_LEN);
    p += RECORD_MAGIC_LEN;
    p = put_u16(p, (uint16_t)status);
    *p++ = body_omitted ? RECORD_FLAG_OMITTED : 0;
    p = put_u32(p, count);
    for (int i = 0; i < headers->count; i++) {
        const struct header *h = &headers->items[i];
        if (!stored(h))
            continue;
        p = put_bytes(p, h->name, h->name_len);
        p = put_bytes(p, h->value, h->value_len);
    }
    p = put_bytes(p, body, body_len);

    *out_len = total;
    return (char *)buf;
}

/* ---- decoding ---- */

struct cursor {
    const unsigned char *p;
    size_t left;
};

static bool get_u8(struct cursor *c, uint8_t *v)
{
    if (c->left < 1)
        return false;
    *v = c->p[0];
    c->p += 1;
    c->left -= 1;
    return true;
}

static bool get_u16(struct cursor *c, uint16_t *v)
{
    if (c->left < 2)
        return false;
    *v = (uint16_t)((unsigned)c->p[0] << 8 | c->p[1]);
    c->p += 2;
    c->left -= 2;
    return true;
}

static bool get_u32(struct cursor *c, uint32_t *v)
{
    if (c->left < 4)
        return false;
    *v = (uint32_t)c->p[0] << 24 | (uint32_t)c->p[1] << 16 | (uint32_t)c->p[2] << 8 |
         (uint32_t)c->p[3];
    c->p += 4;
    c->left -= 4;
    return true;
}

/* A u32-prefixed byte string; *data points into the buffer being decoded. */
static bool get_bytes(struct cursor *c, const char **data, size_t *len)
{
    uint32_t n;
    if (!get_u32(c, &n) || n > c->left)
        return false;
    *data = (const char *)c->p;
    *len = n;
    c->p += n;
    c->left -= n;
    return true;
}

int record_decode(const char *buf, size_t len, struct record *rec)
{
    struct cursor c = {(const unsigned char *)buf, len};
    uint16_t status;
    uint8_t flags;
    uint32_t nheaders;
    const char *body;
    size_t body_len;

    rec->status = 0;
    rec->body_omitted = false;
    headers_init(&rec->headers);
    rec->body = NULL;
    rec->body_len = 0;

    if (len < RECORD_MAGIC_LEN || memcmp(buf, RECORD_MAGIC, RECORD_MAGIC_LEN) != 0)
        goto fail;
    c.p += RECORD_MAGIC_LEN;
    c.left -= RECORD_MAGIC_LEN;
    if (!get_u16(&c, &status) || !get_u8(&c, &flags) || !get_u32(&c, &nheaders))
        goto fail;
    if ((flags & ~RECORD_FLAG_OMITTED) != 0)
        goto fail; /* a flag this version does not know */
    /* Each field needs at least 8 bytes, so a count that cannot fit is
     * refused before it can drive any allocation. */
    if (nheaders > c.left / RECORD_MIN_FIELD || nheaders > INT32_MAX)
        goto fail;

    for (uint32_t i = 0; i < nheaders; i++) {
        const char *name, *value;
        size_t name_len, value_len;
        if (!get_bytes(&c, &name, &name_len) || !get_bytes(&c, &value, &value_len))
            goto fail;
        headers_add(&rec->headers, name, name_len, value, value_len);
    }
    if (!get_bytes(&c, &body, &body_len) || c.left != 0)
        goto fail;

    if (body_len > 0)
        rec->body = xstrndup(body, body_len); /* NUL-terminated for convenience */
    rec->body_len = body_len;
    rec->status = status;
    rec->body_omitted = (flags & RECORD_FLAG_OMITTED) != 0;
    return IDEM_OK;

fail:
    record_free(rec);
    return IDEM_ERR;
}

void record_free(struct record *rec)
{
    headers_clear(&rec->headers);
    free(rec->body);
    rec->body = NULL;
    rec->body_len = 0;
}
