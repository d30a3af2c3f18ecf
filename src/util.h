/*
 * util.h - the few helpers every module shares: the return-code vocabulary,
 * allocation that aborts on exhaustion, and a monotonic clock.
 *
 * Return codes: fallible functions return IDEM_OK (0) or IDEM_ERR (-1) and are
 * marked MUST_CHECK. Helpers that fail put a short phrase in a caller buffer
 * and never log; the caller decides the level and the context.
 */
#ifndef IDEM_UTIL_H
#define IDEM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <strings.h>

#define IDEM_OK 0
#define IDEM_ERR (-1)

#define MUST_CHECK __attribute__((warn_unused_result))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation failure is not a condition a proxy can serve through: abort. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* The strings up to a NULL, concatenated into one allocation (keys, values
 * built per request, where snprintf's format parsing would cost more). */
char *xstrjoin(const char *first, ...) __attribute__((sentinel));

/* Milliseconds on CLOCK_MONOTONIC: for durations, never for wall time. */
uint64_t now_monotonic_ms(void);

/* Case-insensitive comparison of a counted string with a C string. Inline,
 * so that strlen of a literal folds away on the header paths. */
static inline int strn_case_equal(const char *s, size_t len, const char *cstr)
{
    return __builtin_strlen(cstr) == len && strncasecmp(s, cstr, len) == 0;
}

/* A field value without the blanks (SP, HTAB) around it: returns where it
 * starts, its length in *out_len. */
static inline const char *trim_ows(const char *s, size_t len, size_t *out_len)
{
    while (len > 0 && (s[0] == ' ' || s[0] == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    *out_len = len;
    return s;
}

/* The value of a hex digit (either case), or -1. */
static inline int hex_digit_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decimal (base 10) or lower-case hex (base 16) digits of v, without NUL,
 * at the end of out; returns where they start. Cheaper than snprintf on
 * the request path. */
#define UINT64_DIGITS 20
char *format_u64(uint64_t v, int base, char out[UINT64_DIGITS]);

/* Copies src into dst (cap bytes, cap > 0), cut to fit, NUL-terminated. */
void copy_cstr(char *dst, size_t cap, const char *src);

/* Lower-case hex of n bytes into out (2n+1 bytes). */
void hex_encode(const unsigned char *in, size_t n, char *out);

/* 2n hex digits (either case) into n bytes; IDEM_ERR on any other byte. */
int hex_decode(const char *hex, size_t n, unsigned char *out) MUST_CHECK;

/*
 * Reads up to size bytes of a secret's file (a key, a token, webhook
 * secrets) into buf, refusing one that is not a regular file or that its
 * group or others may access. Returns NULL with *len set, or a phrase
 * written into msg naming the path.
 */
/* n bytes from OpenSSL's DRBG, through a per-thread pool (cheap for the
 * tokens and salts of the request path). IDEM_ERR when OpenSSL has none. */
int random_bytes(unsigned char *out, size_t n) MUST_CHECK;

const char *read_private_file(const char *path, char *buf, size_t size, size_t *len, char *msg,
                              size_t msglen);

#endif
