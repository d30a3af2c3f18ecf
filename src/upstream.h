/*
 * upstream.h - the servers behind idemproxy: round-robin selection, a
 * keep-alive pool per server, and one response parser per connection.
 *
 * A caller (an exchange, proxy.c) acquires a connection, writes its request
 * into upstream_conn_output(), calls upstream_conn_expect_response() and then
 * hears about the response through struct upstream_events. After on_complete
 * or on_error the connection is no longer the caller's: it went back to the
 * pool or was closed. A caller that gives up early calls upstream_conn_abort().
 * Callbacks never run re-entrantly from the call that caused them.
 */
#ifndef IDEM_UPSTREAM_H
#define IDEM_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "http.h"

struct event_base;
struct evbuffer;
struct bufferevent;
struct upstream_pool;
struct tls;
struct flusher;
struct upstream_conn;
struct upstream_slot;

struct upstream_events {
    /* The final response head; resp belongs to the owner. */
    enum http_verdict (*on_head)(void *owner, struct http_message *resp);
    enum http_verdict (*on_body)(void *owner, const char *data, size_t len);
    /* The response is complete; the connection is gone from the owner. */
    void (*on_complete)(void *owner);
    /* The connection failed; it is gone from the owner. delivered is false
     * when the request is known not to have reached the upstream's
     * application (its TLS handshake refused us), true when it may have. */
    void (*on_error)(void *owner, const char *why, bool delivered);
    /* The request bytes written so far have been sent (for back-pressure). */
    void (*on_drained)(void *owner);
    /* The upstream switched protocols (101): resp and the connection's
     * bufferevent (bytes after the head still in its input) are the owner's;
     * the pool has forgotten the connection but not its slot among the
     * server's upstream_max_conns, which the owner gives back with
     * upstream_slot_release() once the socket is closed. */
    void (*on_upgrade)(void *owner, struct http_message *resp, struct bufferevent *bev,
                       struct upstream_slot *slot);
    /* An interim 100 Continue arrived (other 1xx heads are dropped). */
    void (*on_continue)(void *owner);
};

/* conn is NULL when no server could be reached; why says what happened. */
typedef void (*upstream_ready_cb)(void *owner, struct upstream_conn *conn, const char *why);

/* Resolves every upstream URL of cfg into it (blocking getaddrinfo: the main
 * thread does it once per start, -t and reload, before any worker sees cfg).
 * Returns IDEM_ERR with a phrase in err when a name does not resolve. */
int upstream_resolve(struct config *cfg, char *err, size_t errlen) MUST_CHECK;

/* A pool for cfg's upstreams, at the addresses upstream_resolve found.
 * tls (referenced) makes the connections to https upstreams. flusher (the
 * loop's, may be NULL) writes to plain connections first-hand. */
struct upstream_pool *upstream_pool_new(struct event_base *base, struct flusher *flusher,
                                        const struct config *cfg, struct tls *tls);
/* The owner lets go: idle connections close; the pool lives on while
 * connections in use or other references remain. */
void upstream_pool_free(struct upstream_pool *pool);
/* References for requests that will acquire from this pool later. */
void upstream_pool_ref(struct upstream_pool *pool);
void upstream_pool_unref(struct upstream_pool *pool);

/*
 * Finds a connection: an idle pooled one, or a new one to the next server in
 * round-robin order that is not marked down. Returns a handle at once; ready
 * runs later with it (or with NULL after every server failed, and the handle
 * is then gone). The owner may upstream_conn_abort() the handle before ready.
 */
struct upstream_conn *upstream_acquire(struct upstream_pool *pool,
                                       const struct upstream_events *events, void *owner,
                                       upstream_ready_cb ready);

struct evbuffer *upstream_conn_output(struct upstream_conn *conn);
/* Starts reading the response to a request of this method (HEAD has no body). */
void upstream_conn_expect_response(struct upstream_conn *conn, int request_method);
/* The whole request has been written: the connection may be reused after
 * the response. Without it, the connection is closed after the response. */
void upstream_conn_request_done(struct upstream_conn *conn);
/* Stops or restarts reading the response (back-pressure from a slow client). */
void upstream_conn_set_reading(struct upstream_conn *conn, bool reading);
/* Closes the connection now; no callback follows. */
void upstream_conn_abort(struct upstream_conn *conn);
/* Gives back the slot of a connection that left the pool (on_upgrade). */
void upstream_slot_release(struct upstream_slot *slot);

/* "host:port" of the server. */
const char *upstream_conn_name(const struct upstream_conn *conn);
/* Whether the connection is TLS (https://): its end is proven by close_notify. */
bool upstream_conn_tls(const struct upstream_conn *conn);

#endif
