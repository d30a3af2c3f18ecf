/*
 * log.c - the error log (levelled text lines) and the access log (one JSON
 * object per request, SPEC §4.5).
 *
 * Every line is built whole in a stack buffer and handed to one write(), so
 * lines written by the event-loop threads of one process never interleave
 * (O_APPEND makes each write land at the end of the file). Nothing here
 * allocates on the write path; over-long text is cut and marked "...".
 *
 * Each log is a target: what the configuration named and the descriptor
 * writers use.
 *
 *     configure / reopen (main thread)          writers (any thread)
 *     --------------------------------          --------------------
 *     open(path) -> new fd                      fd = atomic load of wfd
 *     dup3(new fd, owned fd)  --------------->  write(fd, line)
 *     close(new fd)
 *
 * Once a target owns a descriptor, its number never changes and is never
 * closed while the process runs: a new file, or stderr, is dup3()ed onto it.
 * A writer that loaded the number a moment before therefore writes to the old
 * or the new file, never to a descriptor that was closed and handed out again
 * (to a client socket, say). Only log_close(), at exit, closes it.
 *
 * Before log_configure() the error log is stderr at level info and the access
 * log is stderr too.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096           /* an error line, newline included */
#define ACCESS_LINE_MAX (24 * 1024) /* an access line, newline included */
#define TS_LEN 24                   /* "2026-11-26T07:37:19.123Z" */

/* Largest escaped output of each access-log string field, quotes excluded. */
#define FIELD_PATH 20480 /* a 16 KiB plain path is logged whole */
#define FIELD_KEY 2048   /* POLICY_MAX_KEY_LEN bytes escaped fit */
#define FIELD_CLIENT 128
#define FIELD_METHOD 64
#define FIELD_IDEM 64
#define FIELD_SCOPE 128
#define FIELD_UPSTREAM 512
#define FIELD_ROUTE 512
#define FIELD_FIXED 512 /* key names, punctuation, timestamp and numbers */

_Static_assert(FIELD_PATH + FIELD_KEY + FIELD_CLIENT + FIELD_METHOD + FIELD_IDEM + FIELD_SCOPE +
                       FIELD_UPSTREAM + FIELD_ROUTE + FIELD_FIXED <=
                   ACCESS_LINE_MAX,
               "access log fields must fit one line buffer");

enum target_kind { TARGET_STDERR, TARGET_OFF, TARGET_FILE };

struct log_target {
    const char *directive; /* "error_log" or "access_log", for messages */
    enum target_kind kind;
    char *path;     /* TARGET_FILE only */
    int fd;         /* owned descriptor, -1 until a file was first opened */
    atomic_int wfd; /* what writers use: STDERR_FILENO, fd, or -1 when off */
};

static struct log_target error_target = {"error_log", TARGET_STDERR, NULL, -1, STDERR_FILENO};
static struct log_target access_target = {"access_log", TARGET_STDERR, NULL, -1, STDERR_FILENO};
static atomic_int current_level = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/*
 * Writes the whole buffer; retried only on EINTR or a short write (which a
 * pipe or a full disk can give). Errors are dropped: there is nowhere left to
 * report a failing log.
 */
static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* "2026-11-26T07:37:19.123Z" into out (at least TS_LEN + 1 bytes). */
static void format_timestamp(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03dZ", (int)(ts.tv_nsec / 1000000));
}

bool log_enabled(enum log_level level)
{
    return (int)level <= atomic_load_explicit(&current_level, memory_order_relaxed);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    va_list ap;

    if (!log_enabled(level))
        return;
    int fd = atomic_load_explicit(&error_target.wfd, memory_order_relaxed);
    if (fd < 0)
        return;
    int saved_errno = errno; /* callers may log between a failing call and its errno check */

    const char *name = (unsigned)level < ARRAY_LEN(level_names) ? level_names[level] : "?";
    char ts[TS_LEN + 8];
    format_timestamp(ts, sizeof(ts));
    int n = snprintf(line, sizeof(line), "%s %s ", ts, name);
    size_t prefix = (size_t)n;
    size_t room = sizeof(line) - prefix - 1; /* keep one byte for the newline */

    va_start(ap, fmt);
    int m = vsnprintf(line + prefix, room + 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;

    size_t len = (size_t)m;
    if (len > room) {
        len = room;
        memcpy(line + prefix + len - 3, "...", 3);
    }
    /*
     * Messages quote what peers sent (paths, header values): a control byte
     * must not start a forged line or drive a terminal.
     */
    for (size_t i = prefix; i < prefix + len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            line[i] = '?';
    }
    line[prefix + len] = '\n';
    write_all(fd, line, prefix + len + 1);
    errno = saved_errno;
}

/* ---- configuration ------------------------------------------------------ */

static enum target_kind kind_of(const char *value, enum target_kind if_null)
{
    if (value == NULL)
        return if_null;
    if (strcmp(value, "stderr") == 0)
        return TARGET_STDERR;
    if (strcmp(value, "off") == 0)
        return TARGET_OFF;
    return TARGET_FILE;
}

static int open_log_file(const char *path)
{
    int fd;
    do
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/* dup3() that retries EINTR (Linux may report EBUSY too; that is a failure). */
static int redirect(int from, int to)
{
    int r;
    do
        r = dup3(from, to, O_CLOEXEC);
    while (r < 0 && errno == EINTR);
    return r;
}

/*
 * Points the target at newfd: a file just opened (consumed), stderr
 * (STDERR_FILENO) or nowhere (-1). A file opened before is released by
 * dup3()ing the new destination over the owned descriptor, whose number stays.
 */
static void target_install(struct log_target *t, int newfd)
{
    bool is_file = newfd >= 0 && newfd != STDERR_FILENO;

    if (t->fd >= 0 && redirect(is_file ? newfd : STDERR_FILENO, t->fd) < 0) {
        /* The number cannot be reused: move writers off it, then close it. */
        int old = t->fd;
        t->fd = -1;
        atomic_store_explicit(&t->wfd, newfd, memory_order_relaxed);
        close(old);
    }
    if (is_file) {
        if (t->fd < 0)
            t->fd = newfd;
        else
            close(newfd);
    }
    atomic_store_explicit(&t->wfd, is_file ? t->fd : newfd, memory_order_relaxed);
}

int log_configure(const struct config *cfg, char *err, size_t errlen)
{
    const char *error_value = cfg->error_log;
    const char *access_value = cfg->access_log;
    enum target_kind error_kind = kind_of(error_value, TARGET_STDERR);
    enum target_kind access_kind = kind_of(access_value, TARGET_OFF);
    int error_fd = error_kind == TARGET_STDERR ? STDERR_FILENO : -1;
    int access_fd = access_kind == TARGET_STDERR ? STDERR_FILENO : -1;

    /* Open everything first, so a failure leaves both logs as they were. */
    if (error_kind == TARGET_FILE) {
        error_fd = open_log_file(error_value);
        if (error_fd < 0) {
            snprintf(err, errlen, "error_log: cannot open %s: %s", error_value, strerror(errno));
            goto fail;
        }
    }
    if (access_kind == TARGET_FILE) {
        access_fd = open_log_file(access_value);
        if (access_fd < 0) {
            snprintf(err, errlen, "access_log: cannot open %s: %s", access_value, strerror(errno));
            goto fail;
        }
    }

    target_install(&error_target, error_fd);
    free(error_target.path);
    error_target.path = error_kind == TARGET_FILE ? xstrdup(error_value) : NULL;
    error_target.kind = error_kind;

    target_install(&access_target, access_fd);
    free(access_target.path);
    access_target.path = access_kind == TARGET_FILE ? xstrdup(access_value) : NULL;
    access_target.kind = access_kind;

    atomic_store_explicit(&current_level, (int)cfg->log_level, memory_order_relaxed);
    return IDEM_OK;

fail:
    if (error_kind == TARGET_FILE && error_fd >= 0)
        close(error_fd);
    return IDEM_ERR;
}

static void target_reopen(struct log_target *t)
{
    if (t->kind != TARGET_FILE)
        return;
    int fd = open_log_file(t->path);
    if (fd < 0) {
        log_error("%s: cannot reopen %s: %s; still writing to the old file", t->directive, t->path,
                  strerror(errno));
        return;
    }
    target_install(t, fd);
}

void log_reopen(void)
{
    target_reopen(&error_target);
    target_reopen(&access_target);
}

static void target_close(struct log_target *t, int fallback)
{
    atomic_store_explicit(&t->wfd, fallback, memory_order_relaxed);
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    free(t->path);
    t->path = NULL;
    t->kind = fallback < 0 ? TARGET_OFF : TARGET_STDERR;
}

void log_close(void)
{
    target_close(&access_target, -1);
    target_close(&error_target, STDERR_FILENO);
}

/* ---- access log ---------------------------------------------------------- */

/*
 * The escape proper. Writes only whole escapes, so a cut output is still a
 * valid JSON string body. *written gets the bytes written (NUL excluded).
 */
static size_t json_escape(const char *s, size_t len, char *out, size_t cap, size_t *written)
{
    static const char hex[] = "0123456789abcdef";
    size_t need = 0;
    size_t w = 0;
    bool full = cap == 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t n;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            n = 6;
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (!full && w + n < cap) {
            memcpy(out + w, esc, n);
            w += n;
        } else {
            full = true;
        }
        need += n;
    }
    if (cap > 0)
        out[w] = '\0';
    *written = w;
    return need;
}

size_t log_json_escape(const char *s, size_t len, char *out, size_t cap)
{
    size_t written;
    return json_escape(s, len, out, cap, &written);
}

/*
 * A line under construction. The field limits above, checked against the
 * buffer size at compile time, are what keep every append in bounds.
 */
struct line {
    char buf[ACCESS_LINE_MAX];
    size_t len;
};

static void line_raw(struct line *l, const char *s)
{
    size_t n = strlen(s);
    if (n > sizeof(l->buf) - l->len)
        n = sizeof(l->buf) - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void line_printf(struct line *l, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void line_printf(struct line *l, const char *fmt, ...)
{
    va_list ap;
    size_t room = sizeof(l->buf) - l->len;

    if (room == 0)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < room ? (size_t)n : room - 1;
}

/* `"name":"escaped"` or `"name":null`; the value is cut to max bytes, ending "...". */
static void line_string(struct line *l, const char *name, const char *s, size_t len, size_t max)
{
    size_t written;

    line_printf(l, "\"%s\":", name);
    if (s == NULL) {
        line_raw(l, "null");
        return;
    }
    line_raw(l, "\"");
    size_t need = json_escape(s, len, l->buf + l->len, max + 1, &written);
    if (need > max) {
        json_escape(s, len, l->buf + l->len, max - 3 + 1, &written);
        memcpy(l->buf + l->len + written, "...", 3);
        written += 3;
    }
    l->len += written;
    line_raw(l, "\"");
}

static void line_cstring(struct line *l, const char *name, const char *s, size_t max)
{
    line_string(l, name, s, s == NULL ? 0 : strlen(s), max);
}

void log_access(const struct access_entry *e)
{
    int fd = atomic_load_explicit(&access_target.wfd, memory_order_relaxed);
    if (fd < 0)
        return;

    struct line l;
    char ts[TS_LEN + 8];

    l.len = 0;
    format_timestamp(ts, sizeof(ts));
    line_printf(&l, "{\"ts\":\"%s\",", ts);
    line_cstring(&l, "client", e->client, FIELD_CLIENT);
    line_raw(&l, ",");
    line_cstring(&l, "method", e->method, FIELD_METHOD);
    line_raw(&l, ",");
    line_string(&l, "path", e->path, e->path_len, FIELD_PATH);
    line_raw(&l, ",");
    line_cstring(&l, "route", e->route, FIELD_ROUTE);
    line_printf(&l, ",\"status\":%d,", e->status);
    line_cstring(&l, "idem", e->idem, FIELD_IDEM);
    line_raw(&l, ",");
    line_cstring(&l, "key", e->key, FIELD_KEY);
    line_raw(&l, ",");
    line_cstring(&l, "scope", e->scope, FIELD_SCOPE);
    line_raw(&l, ",");
    line_cstring(&l, "upstream", e->upstream, FIELD_UPSTREAM);
    if (e->upstream_ms < 0)
        line_raw(&l, ",\"upstream_ms\":null");
    else
        line_printf(&l, ",\"upstream_ms\":%" PRId64, e->upstream_ms);
    line_printf(&l, ",\"ms\":%" PRIu64 ",\"bytes\":%" PRIu64, e->ms, e->bytes);
    line_raw(&l, e->client_gone ? ",\"client_gone\":true}\n" : "}\n");
    write_all(fd, l.buf, l.len);
}
