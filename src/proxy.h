/*
 * proxy.h - one request's life (an "exchange"): the policy decision, the
 * idempotency protocol with the store, the upstream exchange and the answer.
 * server.c drives it with the request as it is parsed.
 */
#ifndef IDEM_PROXY_H
#define IDEM_PROXY_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"
#include "runtime.h"

struct client;
struct exchange;

/*
 * A request head arrived on c; req becomes the exchange's. Returns the
 * exchange serving it, or NULL when the request was answered at once
 * (an invalid key, a body declared too large).
 */
struct exchange *proxy_begin(struct runtime *rt, struct client *c, struct http_message *req);

/* A piece of the request body. false: the exchange answered (413); stop reading. */
bool proxy_request_body(struct exchange *ex, const char *data, size_t len);

/* Is the request body streamed to the upstream as it arrives (not buffered
 * first)? Then Expect: 100-continue is the upstream's to answer. */
bool proxy_streams_request(const struct exchange *ex);

/* The request is complete. */
void proxy_request_complete(struct exchange *ex);

/*
 * The client went away. A request still being received is abandoned; one
 * already complete runs to the end and its response is stored.
 */
void proxy_client_gone(struct exchange *ex);

/* The client's output drained below the low-water mark. */
void proxy_client_drained(struct exchange *ex);

#endif
