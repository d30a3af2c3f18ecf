/*
 * util.c - allocation wrappers, the monotonic clock, small string helpers,
 * the read of a secret's file and random bytes. No state but a per-thread
 * pool of random bytes; nothing here logs.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

static void out_of_memory(size_t n)
{
    fprintf(stderr, "idemproxy: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        out_of_memory(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        out_of_memory(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xstrjoin(const char *first, ...)
{
    va_list ap;
    size_t n = 0;
    va_start(ap, first);
    for (const char *s = first; s != NULL; s = va_arg(ap, const char *))
        n += strlen(s);
    va_end(ap);
    char *out = xmalloc(n + 1), *w = out;
    va_start(ap, first);
    for (const char *s = first; s != NULL; s = va_arg(ap, const char *)) {
        size_t len = strlen(s);
        memcpy(w, s, len);
        w += len;
    }
    va_end(ap);
    *w = '\0';
    return out;
}

uint64_t now_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

int hex_decode(const char *hex, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit_value((unsigned char)hex[2 * i]);
        int lo = hex_digit_value((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return IDEM_ERR;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return IDEM_OK;
}

const char *read_private_file(const char *path, char *buf, size_t size, size_t *len, char *msg,
                              size_t msglen)
{
    struct stat st;
    /* O_NONBLOCK: a FIFO must not hang the load (it fails S_ISREG below) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(msg, msglen, "cannot read \"%s\": %s", path, strerror(errno));
        return msg;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        snprintf(msg, msglen, "\"%s\" is not a regular file", path);
    else if (st.st_mode & (S_IRWXG | S_IRWXO))
        snprintf(msg, msglen, "\"%s\" may be read by others (mode %03o): chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
    else {
        ssize_t n = read(fd, buf, size);
        if (n >= 0) {
            close(fd);
            *len = (size_t)n;
            return NULL;
        }
        snprintf(msg, msglen, "cannot read \"%s\": %s", path, strerror(errno));
    }
    close(fd);
    return msg;
}

char *format_u64(uint64_t v, int base, char out[UINT64_DIGITS])
{
    char *p = out + UINT64_DIGITS;
    do {
        *--p = "0123456789abcdef"[v % (unsigned)base];
        v /= (unsigned)base;
    } while (v > 0);
    return p;
}

void copy_cstr(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/*
 * OpenSSL's DRBG a few hundred bytes at a time: one RAND_bytes call costs
 * about 2 us, mostly in its locking and fork check, as much as the rest of a
 * claim's bookkeeping. Per thread, so no lock; the bytes handed out are
 * erased from the pool.
 */
#define RANDOM_POOL 512
static _Thread_local unsigned char random_pool[RANDOM_POOL];
static _Thread_local size_t random_left;

int random_bytes(unsigned char *out, size_t n)
{
    if (n > RANDOM_POOL / 4)
        return RAND_bytes(out, (int)n) == 1 ? IDEM_OK : IDEM_ERR;
    if (random_left < n) {
        if (RAND_bytes(random_pool, sizeof(random_pool)) != 1)
            return IDEM_ERR;
        random_left = sizeof(random_pool);
    }
    random_left -= n;
    memcpy(out, random_pool + random_left, n);
    OPENSSL_cleanse(random_pool + random_left, n);
    return IDEM_OK;
}
