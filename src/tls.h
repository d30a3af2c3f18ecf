/*
 * tls.h - TLS on both sides (SPEC §7): the OpenSSL contexts a configuration
 * asks for, built once by the main thread and shared by every worker.
 *
 * tls_new() reads and checks every file the configuration names (listener
 * certificate and key, upstream CA, client certificate and key), so `-t`,
 * start and reload fail with FILE:LINE before anything is served; a reload
 * whose files are bad keeps the running contexts. A struct tls is immutable
 * and reference counted: connections hold their own reference to the
 * OpenSSL context through their SSL object, so a reload never cuts one.
 */
#ifndef IDEM_TLS_H
#define IDEM_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "util.h"

struct tls;
struct bufferevent;
struct event_base;

/*
 * Builds the contexts cfg needs (none is fine: the result then serves plain
 * TCP only). Returns NULL after reporting every problem through on_error as
 * "FILE:LINE: directive: message".
 */
struct tls *tls_new(const struct config *cfg, config_error_fn on_error, void *arg) MUST_CHECK;

/*
 * The listener certificate in words, for the log at start and reload:
 * "subject CN=..., serial 1A2B, valid until Nov 26 10:39:00 2027 GMT";
 * *days_left is what remains of it. False when no listener uses TLS.
 */
bool tls_describe_certificate(const struct tls *tls, char *buf, size_t len, int *days_left);

struct tls *tls_ref(struct tls *tls);
void tls_unref(struct tls *tls); /* NULL is fine */

/*
 * A bufferevent for an accepted client socket: TLS when the listener is,
 * plain otherwise. Owns fd (closed on free).
 */
struct bufferevent *tls_accept_bufferevent(struct tls *tls, struct event_base *base, int fd,
                                           bool listener_tls, int options);

/* A not yet connected bufferevent for an upstream (connect it with
 * bufferevent_socket_connect()); for https, TLS with SNI and a check that the
 * certificate names host (or upstream_tls_server_name). NULL on failure. */
struct bufferevent *tls_upstream_bufferevent(struct tls *tls, struct event_base *base,
                                             const char *host, bool https);

/* A not yet connected bufferevent for Redis or a sentinel at host (an
 * address, or redis_tls_server_name): TLS, verified against redis_tls_ca.
 * NULL on failure (also when redis_tls is off). */
struct bufferevent *tls_redis_bufferevent(struct tls *tls, struct event_base *base,
                                          const char *host);
/* What kind of failure tls_error_reason() found. */
enum tls_failure {
    TLS_FAILURE_SOCKET,  /* not TLS: a socket error or a plain close */
    TLS_FAILURE_TLS,     /* OpenSSL reported it */
    TLS_FAILURE_REFUSED, /* the peer refused the handshake with an alert (our
                          * certificate, its policy): it never took our data */
};

/*
 * Why the last operation on bev failed, into buf for a log line: the OpenSSL
 * reason (with the certificate verification result), or the socket error.
 * Empties this thread's error queue.
 */
enum tls_failure tls_error_reason(struct bufferevent *bev, char *buf, size_t len);

/*
 * For a connection that failed (its bufferevent is about to be freed): reads
 * what the peer sent before it closed and returns true, with the reason in
 * buf, when that was an alert refusing the handshake. Nothing else is read.
 */
bool tls_read_refusal(struct bufferevent *bev, char *buf, size_t len);

/* Has the peer sent any byte of a handshake? (Plain TCP: true.) */
bool tls_handshake_begun(struct bufferevent *bev);

#endif
