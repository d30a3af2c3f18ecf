/*
 * log.h - the error log (levelled text lines) and the access log (one JSON
 * object per request, SPEC §4.5).
 *
 * The log_* macros test the level before evaluating their arguments, so a
 * filtered debug line costs one comparison. Lines about a connection should
 * carry its peer and what it was doing.
 */
#ifndef IDEM_LOG_H
#define IDEM_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "util.h"

/*
 * Opens error_log and access_log as cfg names them ("stderr", "off", or a
 * path opened for append) and sets the level. Before the first call, errors
 * go to stderr at level info. On failure writes a phrase to err and keeps
 * whatever was open before.
 */
int log_configure(const struct config *cfg, char *err, size_t errlen) MUST_CHECK;

/* Reopens file logs under the same paths (SIGUSR1, after logrotate). */
void log_reopen(void);

/* Closes files opened by log_configure (at exit, so sanitizers see no leak). */
void log_close(void);

bool log_enabled(enum log_level level);

/* "2026-11-26T07:37:19.123Z warn message\n" to the error log. */
void log_write(enum log_level level, const char *fmt, ...) PRINTF_LIKE(2, 3);

#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)
#define log_at(level, ...)                                                                         \
    do {                                                                                           \
        if (log_enabled(level))                                                                    \
            log_write(level, __VA_ARGS__);                                                         \
    } while (0)

/* One request, as the access log records it. NULL strings are written as null. */
struct access_entry {
    const char *client; /* peer address */
    const char *method;
    const char *path; /* request target as received, not NUL-terminated */
    size_t path_len;
    const char *route; /* the matched route's prefix, NULL for the global policy */
    int status;
    const char *idem;     /* miss replay inflight mismatch nokey bypass reject store_error ... */
    const char *key;      /* idempotency key, NULL when none */
    const char *scope;    /* hashed scope, NULL when none */
    const char *upstream; /* "host:port" that served it, NULL when none */
    int64_t upstream_ms;  /* -1 when the upstream was not asked */
    uint64_t ms;          /* total time in idemproxy */
    uint64_t bytes;       /* bytes of response sent to the client */
    bool client_gone;     /* the client had left before its answer: written as
                             "client_gone":true, absent otherwise */
};

void log_access(const struct access_entry *entry);

/*
 * Writes s (len bytes) as a JSON string body, without the quotes, escaping
 * quote, backslash, control and non-ASCII bytes (\u00XX). Returns the number
 * of bytes that the full escape needs; writes at most cap-1 bytes and a NUL.
 */
size_t log_json_escape(const char *s, size_t len, char *out, size_t cap);

#endif
