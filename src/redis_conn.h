/*
 * redis_conn.h - one connection to a Redis server or a sentinel, on a
 * libevent loop: TCP, a unix socket, or TLS (SPEC §8). The transport of the
 * store: RESP is hiredis's (redisReader, command formatting), the bytes are
 * ours, so TLS, timeouts and reconnects have one place whatever the
 * topology.
 *
 * Replies are matched to commands in order. Every reply callback runs
 * exactly once: with the reply (valid only during the callback), or with
 * NULL when the connection ends first. A subscription's callback also gets
 * every message pushed afterwards.
 */
#ifndef IDEM_REDIS_CONN_H
#define IDEM_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

struct event_base;
struct flusher;
struct redis_conn;
struct tls;

/* reply is a redisReply *, or NULL: the connection ended before it came. */
typedef void (*redis_reply_fn)(struct redis_conn *c, void *reply, void *privdata);
/* Once connected (why NULL; for TLS, handshake done), then once when the
 * connection fails or ends (why says how), unless it was closed by
 * redis_conn_close(). Pending replies get NULL after the end. */
typedef void (*redis_event_fn)(struct redis_conn *c, const char *why);

struct redis_endpoint {
    const char *ip;   /* numeric; NULL with unix_path */
    const char *name; /* TLS: SNI and what the certificate must name; NULL: ip */
    const char *port;
    const char *unix_path;
    struct tls *tls; /* TLS (its redis context) when not NULL */
};

/* Starts connecting; NULL (with why) when not even that can start. */
struct redis_conn *redis_conn_new(struct event_base *base, struct flusher *flusher,
                                  const struct redis_endpoint *ep, redis_event_fn on_connected,
                                  redis_event_fn on_ended, void *data, char *why, size_t whylen);

void *redis_conn_data(const struct redis_conn *c);
void redis_conn_set_data(struct redis_conn *c, void *data);

/* Queues a command (printf-like, as hiredis formats: %s %b %d %llu). While
 * connecting, commands wait and go out in order once connected. IDEM_ERR
 * only when the connection has ended or is closing (its end is reported
 * anyway), so callers that learn of the end that way may ignore it. */
int redis_conn_command(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *fmt,
                       ...);
/* The same, already in RESP (copied). */
int redis_conn_send(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *cmd,
                    size_t len) MUST_CHECK;
/* A (P)SUBSCRIBE: fn gets its confirmation and every message after it. */
int redis_conn_subscribe(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *fmt,
                         ...);

/* Ends the connection now (after the current callback, if inside one):
 * pending replies get NULL, no on_ended. */
void redis_conn_close(struct redis_conn *c);

#endif
