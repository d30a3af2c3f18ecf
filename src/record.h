/*
 * record.h - the stored response: encoding and decoding, versioned.
 *
 * A record is what a replay sends back: the status, the end-to-end headers
 * and the body, or only status and headers when the body was larger than
 * max_cached_body ("omitted"). Pure: no I/O.
 *
 * Wire format, version 1 (all integers big-endian):
 *   "IDR1"  u16 status  u8 flags(bit0 = body omitted)  u32 nheaders
 *   nheaders x { u32 name_len, name, u32 value_len, value }
 *   u32 body_len, body
 */
#ifndef IDEM_RECORD_H
#define IDEM_RECORD_H

#include <stdbool.h>
#include <stddef.h>

#include "headers.h"
#include "util.h"

struct record {
    int status;
    bool body_omitted;
    struct header_list headers; /* owned */
    char *body;                 /* owned, may be NULL when body_len is 0 */
    size_t body_len;
};

/* Encodes into a malloc'd buffer of *out_len bytes. The fields are taken as
 * given (end-to-end ones, the caller's job) except Date and Content-Length,
 * never stored: a replay gets a fresh Date and its own framing. */
char *record_encode(int status, bool body_omitted, const struct header_list *headers,
                    const char *body, size_t body_len, size_t *out_len);

/* Decodes buf; on success fills *rec (free with record_free). IDEM_ERR on any
 * truncation, unknown version or trailing bytes. */
int record_decode(const char *buf, size_t len, struct record *rec) MUST_CHECK;

void record_free(struct record *rec);

#endif
