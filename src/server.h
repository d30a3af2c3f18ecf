/*
 * server.h - listeners and client connections.
 *
 * server.c accepts connections, parses requests (http.c) and hands each one
 * to proxy.c as it arrives. proxy.c answers through the client_* calls
 * below. A client serves one request at a time; pipelined requests wait in
 * its input buffer until the current response has ended.
 */
#ifndef IDEM_SERVER_H
#define IDEM_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "headers.h"
#include "problem.h"
#include "runtime.h"

struct server;
struct client;
struct bufferevent;
struct upstream_slot;

struct server *server_new(struct runtime *rt);
/*
 * Binds and listens on every `listen` address, once for the process (an
 * address another process holds is an error, never silently shared). Fills
 * fds[CONFIG_MAX_LISTEN]; on failure closes what it opened.
 */
int server_bind(const struct config *cfg, int fds[], int *nfds, char *err,
                size_t errlen) MUST_CHECK;
void server_unbind(const int fds[], int nfds);
/*
 * At a reload: fills fds for cfg's listen lines, keeping the socket of every
 * address old already had (old_fds is parallel to old->listens) and binding
 * the others. On failure closes only what it bound. The caller then closes
 * the old sockets that fds no longer holds.
 */
int server_rebind(const struct config *old, const int old_fds[], const struct config *cfg,
                  int fds[], char *err, size_t errlen) MUST_CHECK;

/*
 * Listeners on duplicates of the bound sockets fds (parallel to
 * cfg->listens, whose `tls` flags say how to serve each): every worker takes
 * from the same accept queues. Prepared, they accept nothing; commit swaps
 * them in for the whole old set (at start, and at every reload), discard
 * lets them go. prepare returns NULL with a phrase in err.
 */
struct server_listeners;
struct server_listeners *server_listeners_prepare(struct server *srv, const struct config *cfg,
                                                  const int fds[], char *err, size_t errlen);
void server_listeners_commit(struct server *srv, struct server_listeners *next);
void server_listeners_discard(struct server_listeners *next);
/* Stops accepting and closes idle keep-alive connections (SIGTERM). */
void server_drain(struct server *srv);
/* Closes every connection and listener. */
void server_free(struct server *srv);

/* ---- answering, for proxy.c ---------------------------------------------- */

/*
 * Starts the response. headers are written as given (end-to-end fields
 * only), except a Content-Length among them unless no_body: the framing of
 * a body is written here. content_length < 0 means unknown: chunked for
 * HTTP/1.1 clients, close-delimited for HTTP/1.0.
 */
void client_respond_head(struct client *c, int status, const struct header_list *headers,
                         int64_t content_length, bool no_body);
void client_respond_body(struct client *c, const char *data, size_t len);
/* Ends the response; returns the bytes it took on the wire. The client is
 * then no longer the exchange's. */
uint64_t client_respond_end(struct client *c);

/* A complete problem response; extra may add fields (Retry-After ...). */
uint64_t client_respond_problem(struct client *c, const struct problem *p,
                                const struct header_list *extra);

/*
 * Answers 101 with headers (the upstream's end-to-end fields plus Upgrade and
 * Connection) and turns the connection into a tunnel to upstream, whose
 * bufferevent and pool slot it takes. The client is then gone (freed, or as soon as its
 * parser returns). Returns the bytes of the head.
 */
uint64_t client_switch_protocols(struct client *c, const struct header_list *headers,
                                 struct bufferevent *upstream, struct upstream_slot *slot);

/* Tells the client to send its body (Expect: 100-continue), once. */
void client_continue(struct client *c);

/* Gives up on the current response (the upstream broke mid-body): the
 * connection closes, as only a close tells the client the body is cut. */
void client_abort(struct client *c);

/* Output above the high-water mark: the producer should pause. */
bool client_congested(const struct client *c);
/* Stops or restarts reading the request body (upstream back-pressure). */
void client_set_reading(struct client *c, bool reading);

const char *client_peer(const struct client *c);
/* Whether the client has closed its sending side (EOF seen): gone, or only
 * half-closed and still reading; TCP cannot tell which. */
bool client_peer_closed(const struct client *c);
/* Did the client come in over TLS? (X-Forwarded-Proto) */
bool client_tls(const struct client *c);

#endif
