/*
 * forward.h - the request head idemproxy sends upstream, composed from the
 * client's parsed head. Pure: writes bytes to an evbuffer, nothing else, so
 * the fuzzer (tests/fuzz/fuzz_forward.c) can check that what is forwarded
 * reads, under a strict parser, as the request idemproxy judged.
 */
#ifndef IDEM_FORWARD_H
#define IDEM_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "http.h"

struct evbuffer;

/* How the forwarded body is framed: framing is always ours. */
enum forward_framing {
    FORWARD_NO_BODY, /* neither Content-Length nor Transfer-Encoding */
    FORWARD_LENGTH,  /* Content-Length: length */
    FORWARD_CHUNKED, /* Transfer-Encoding: chunked, re-chunked by the caller */
};

struct forward_head {
    const struct http_message *req;
    const char *peer;          /* the client's address: appended to X-Forwarded-For */
    const char *upstream_host; /* Host to send when the client sent none, or always with
                                  replace_host (upstream_host on) */
    bool replace_host;
    bool client_tls;   /* X-Forwarded-Proto: https */
    bool trusted_peer; /* the peer is in trusted_proxies: its forwarding fields count */
    bool websocket;    /* a WebSocket offer passed on: Connection: upgrade */
    bool pass_expect;  /* a streamed body: the upstream answers Expect: 100-continue */
    enum forward_framing framing;
    uint64_t length; /* FORWARD_LENGTH */
};

/*
 * Writes "METHOD target HTTP/1.1", the client's end-to-end fields in order,
 * then Host, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Via and
 * the framing field, and the empty line. Hop-by-hop fields (SPEC §5) and the
 * client's framing fields are not forwarded.
 *
 * Forwarding fields (SPEC §13): from a trusted peer, Forwarded, X-Real-IP,
 * X-Forwarded-* and the override fields (X-Original-URL, X-Rewrite-URL,
 * X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override) pass as they came, every
 * X-Forwarded-For field joined in order with the peer appended, and its X-Forwarded-Proto/-Host
 * kept. From any other peer they are dropped and ours written: X-Forwarded-For the peer,
 * X-Forwarded-Proto ours, X-Forwarded-Host the Host. Via: every field joined, ours appended.
 */
void forward_request_head(const struct forward_head *f, struct evbuffer *out);

#endif
