/*
 * proxy_upstream.c - an exchange's way to the upstream and back (see
 * exchange.h): an upstream connection is taken from the pool, the request
 * head (forward.c) and body go out, and the response comes back through the
 * upstream_events callbacks:
 *
 *   forward --> upstream_acquire --> on_upstream_ready: head + body out
 *     on_up_head --> covered: buffer (max_cached_body), or stream past it
 *                    pass-through: stream to the client
 *     on_up_body / on_up_drained --> back-pressure both ways
 *     on_up_complete --> release_on? release : close-delimited? unknown : store
 *     on_up_error / on_upstream_timeout --> 502/504; a covered key released
 *                    (nothing sent) or marked unknown (it may have run)
 *     on_up_upgrade --> a WebSocket tunnel (server.c takes both sockets)
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "exchange.h"
#include "forward.h"
#include "latency.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "record.h"
#include "server.h"
#include "store.h"
#include "upstream.h"

static const struct upstream_events upstream_events;

/* The request head for the upstream: forward.c, told what this exchange is. */
static void write_request_head(struct exchange *ex, struct evbuffer *out)
{
    struct forward_head f = {
        .req = ex->req,
        .peer = ex->peer,
        .upstream_host = ex->upstream_name,
        .replace_host = ex->cfg->upstream_host,
        .client_tls = ex->client_tls,
        .trusted_peer = config_trusts_peer(ex->cfg, ex->peer),
        .websocket = ex->tunnel,
        .pass_expect = proxy_streams_request(ex),
        .framing = FORWARD_NO_BODY,
    };
    if (ex->idempotent) {
        f.framing = FORWARD_LENGTH;
        f.length = evbuffer_get_length(ex->body);
    } else if (ex->req->chunked) {
        f.framing = FORWARD_CHUNKED;
    } else if (ex->req->has_content_length) {
        f.framing = FORWARD_LENGTH;
        f.length = ex->req->content_length;
    }
    forward_request_head(&f, out);
}

/* Writes a piece of a streamed request body, re-framed for the upstream. */
void write_body_piece(struct exchange *ex, struct evbuffer *out, const char *data, size_t len)
{
    if (len == 0)
        return;
    if (!ex->idempotent && ex->req->chunked)
        evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    if (!ex->idempotent && ex->req->chunked)
        evbuffer_add(out, "\r\n", 2);
}

static void arm_upstream_timer(struct exchange *ex)
{
    uint64_t ms = ex->cfg->upstream_timeout_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(ex->timer, &tv);
}

/* The whole request is in the upstream's output buffer. */
void request_sent(struct exchange *ex)
{
    struct evbuffer *out = upstream_conn_output(ex->up);
    if (!ex->idempotent && ex->req->chunked)
        evbuffer_add(out, "0\r\n\r\n", 5);
    /* After a WebSocket offer that was declined, the upstream's side of the
     * connection may no longer speak HTTP: it is not reused. */
    if (!ex->tunnel)
        upstream_conn_request_done(ex->up);
    ex_set_state(ex, EX_WAITING);
    arm_upstream_timer(ex);
}

static void on_upstream_ready(void *arg, struct upstream_conn *conn, const char *why)
{
    struct exchange *ex = arg;
    if (conn == NULL) {
        ex->up = NULL;
        log_warn("request %s key=%s: no upstream reachable: %s", ex->peer, ex->key ? ex->key : "-",
                 why);
        if (ex->owns_key)
            release_then(ex, false, PROBLEM_UPSTREAM_UNAVAILABLE);
        else
            answer_problem(ex, PROBLEM_UPSTREAM_UNAVAILABLE, NULL);
        ex_maybe_free(ex);
        return;
    }
    copy_cstr(ex->upstream_name, sizeof(ex->upstream_name), upstream_conn_name(conn));
    ex->upstream_tls = upstream_conn_tls(conn);
    ex->t_upstream = now_monotonic_ms();
    struct evbuffer *out = upstream_conn_output(conn);
    write_request_head(ex, out);
    if (ex->idempotent) {
        evbuffer_add_buffer_reference(out, ex->body);
    } else if (ex->body) {
        size_t n = evbuffer_get_length(ex->body);
        write_body_piece(ex, out, (const char *)evbuffer_pullup(ex->body, -1), n);
        evbuffer_drain(ex->body, n);
    }
    ex->head_sent = true;
    upstream_conn_expect_response(conn, ex->req->method);
    if (ex->client && !ex->request_complete)
        client_set_reading(ex->client, true);
    if (ex->request_complete)
        request_sent(ex);
}

/*
 * A WebSocket offer is passed on only when nothing is claimed for it: a
 * tunnel's outcome cannot be stored or replayed. Other offers (h2c, ...) and
 * offers on covered requests are declined: served as plain HTTP.
 */
static bool passes_upgrade(const struct exchange *ex)
{
    const struct header *u = ex->req->upgrade ? headers_find(&ex->req->headers, "Upgrade") : NULL;
    return u != NULL && !ex->idempotent && ex->req->minor >= 1 &&
           headers_list_has_token(u->value, u->value_len, "websocket") &&
           headers_find(&ex->req->headers, "Sec-WebSocket-Key") != NULL;
}

/*
 * Did the upstream really accept the WebSocket handshake (RFC 6455 §4.2.2)?
 * A bare 101, from a backend that can be made to echo a status, would
 * otherwise hand the client a raw pipe to the upstream, past idemproxy.
 */
static bool websocket_accepted(const struct exchange *ex, const struct http_message *resp)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const struct header *key = headers_find(&ex->req->headers, "Sec-WebSocket-Key");
    const struct header *accept = headers_find(&resp->headers, "Sec-WebSocket-Accept");
    unsigned char digest[SHA_DIGEST_LENGTH];
    unsigned char expected[4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1];
    char input[128 + sizeof(guid)];

    if (key == NULL || accept == NULL)
        return false;
    /* Field values as received may carry blanks around them (RFC 9110 §5.5). */
    size_t key_len, accept_len;
    const char *k = trim_ows(key->value, key->value_len, &key_len);
    const char *a = trim_ows(accept->value, accept->value_len, &accept_len);
    /* The key is 16 random bytes in base64 (24 characters); allow slack. */
    if (key_len > 128)
        return false;
    memcpy(input, k, key_len);
    memcpy(input + key_len, guid, sizeof(guid) - 1);
    if (EVP_Digest(input, key_len + sizeof(guid) - 1, digest, NULL, EVP_sha1(), NULL) != 1)
        return false;
    int n = EVP_EncodeBlock(expected, digest, sizeof(digest));
    return (size_t)n == accept_len && memcmp(expected, a, (size_t)n) == 0;
}

void forward(struct exchange *ex)
{
    ex->tunnel = passes_upgrade(ex);
    ex_set_state(ex, EX_CONNECTING);
    ex->up = upstream_acquire(ex->pool, &upstream_events, ex, on_upstream_ready);
}

static enum http_verdict on_up_head(void *arg, struct http_message *resp)
{
    struct exchange *ex = arg;
    arm_upstream_timer(ex); /* upstream_timeout is for silence, not for a long body */
    ex->resp = resp;
    /* Once, for the client's head and the record alike (a 101 never comes here). */
    headers_remove_hop_by_hop(&resp->headers);
    ex->resp_body = evbuffer_new();
    if (ex->idempotent) {
        /* A body known to be too large is streamed from the start. */
        if (resp->has_content_length && resp->content_length > ex->policy->max_cached_body &&
            !response_has_no_body(ex, resp->status)) {
            ex->streaming = true;
            if (ex->client)
                start_client_response(ex, (int64_t)resp->content_length);
        }
        return PARSE_CONTINUE;
    }
    ex->streaming = true;
    if (ex->client)
        start_client_response(ex, resp->has_content_length ? (int64_t)resp->content_length : -1);
    return PARSE_CONTINUE;
}

static void stream_to_client(struct exchange *ex, const char *data, size_t len)
{
    if (ex->client == NULL)
        return;
    client_respond_body(ex->client, data, len);
    if (!ex->paused && client_congested(ex->client) && ex->up) {
        /* A slow reader slows the upstream; its silence is then ours, so
         * upstream_timeout waits until reading starts again. */
        ex->paused = true;
        upstream_conn_set_reading(ex->up, false);
        evtimer_del(ex->timer);
    }
}

void resume_upstream(struct exchange *ex)
{
    if (ex->paused && ex->up) {
        ex->paused = false;
        upstream_conn_set_reading(ex->up, true);
        arm_upstream_timer(ex);
    }
}

/* Writes the first n bytes of ex->resp_body to the client and drops them. */
static void flush_held(struct exchange *ex, size_t n)
{
    if (n == 0)
        return;
    stream_to_client(ex, (const char *)evbuffer_pullup(ex->resp_body, (ev_ssize_t)n), n);
    evbuffer_drain(ex->resp_body, n);
}

/*
 * Idempotent responses too large to keep are streamed, but the latest piece
 * is held back until the record is stored: a client that has the whole
 * response and retries at once must find the key done, not in flight.
 */
static enum http_verdict on_up_body(void *arg, const char *data, size_t len)
{
    struct exchange *ex = arg;
    ex->resp_body_len += len;
    if (!ex->paused)
        arm_upstream_timer(ex);
    if (!ex->idempotent) {
        stream_to_client(ex, data, len);
        return PARSE_CONTINUE;
    }
    if (ex->streaming) {
        flush_held(ex, evbuffer_get_length(ex->resp_body));
        evbuffer_add(ex->resp_body, data, len);
        return PARSE_CONTINUE;
    }
    evbuffer_add(ex->resp_body, data, len);
    if (ex->resp_body_len > ex->policy->max_cached_body) {
        ex->streaming = true;
        if (ex->client)
            start_client_response(
                ex, ex->resp->has_content_length ? (int64_t)ex->resp->content_length : -1);
        flush_held(ex, evbuffer_get_length(ex->resp_body) - len);
    }
    return PARSE_CONTINUE;
}

static void on_up_complete(void *arg)
{
    struct exchange *ex = arg;
    ex->up = NULL;
    ex->upstream_ms = (int64_t)(now_monotonic_ms() - ex->t_upstream);
    metrics_upstream_latency((uint64_t)ex->upstream_ms);
    latency_record(ex->cfg, ex->route_index, (uint64_t)ex->upstream_ms);
    evtimer_del(ex->timer);
    evtimer_del(ex->renew);
    int status = ex->resp->status;
    if (!ex->idempotent) {
        answer_buffered(ex); /* streamed already: ends the response */
        ex_maybe_free(ex);
        return;
    }
    /* A response already streamed to the client is never released (SPEC §4.1). */
    if (!ex->streaming && status < CONFIG_MAX_STATUS && ex->policy->release_on[status]) {
        log_info("request %s key=%s: upstream answered %d (release_on); key released", ex->peer,
                 ex->key, status);
        release_then(ex, true, PROBLEM_UPSTREAM_UNAVAILABLE);
        return;
    }
    /* A body ended by the connection's close (no Content-Length, not
     * chunked) cannot be told from one cut short by a dying upstream,
     * except over TLS, where close_notify proves the end: relayed as it came,
     * but never stored to be replayed as whole. */
    bool close_delimited =
        !ex->resp->chunked && !ex->resp->has_content_length && !response_has_no_body(ex, status);
    if (close_delimited && !ex->upstream_tls) {
        log_warn("request %s key=%s: upstream %s ended its answer by closing the connection, "
                 "which a cut answer does too; the key is marked unknown, not stored",
                 ex->peer, ex->key, ex->upstream_name);
        ex->then_relay = true;
        mark_unknown_then(ex, PROBLEM_UPSTREAM_UNAVAILABLE);
        return;
    }
    store_response(ex);
}

static void on_up_error(void *arg, const char *why, bool delivered)
{
    struct exchange *ex = arg;
    ex->up = NULL;
    evtimer_del(ex->timer);
    ex->upstream_ms = (int64_t)(now_monotonic_ms() - ex->t_upstream);
    /* Before the head went out it is a failed reuse or connect. */
    bool sent = ex->head_sent && delivered;
    log_warn("request %s key=%s: upstream %s failed %s: %s", ex->peer, ex->key ? ex->key : "-",
             ex->upstream_name,
             sent ? "after the request was sent" : "before the request reached it", why);
    if (ex->owns_key && !sent)
        release_then(ex, false, PROBLEM_UPSTREAM_UNAVAILABLE);
    else if (ex->owns_key)
        mark_unknown_then(ex, PROBLEM_UPSTREAM_UNAVAILABLE);
    else if (ex->streaming)
        ex_finish(ex); /* the client connection closes with the exchange */
    else
        answer_problem(ex, PROBLEM_UPSTREAM_UNAVAILABLE, NULL);
    ex_maybe_free(ex);
}

/* The upstream's 100 Continue to a streamed request: the client may send. */
static void on_up_continue(void *arg)
{
    struct exchange *ex = arg;
    if (ex->client && !ex->request_complete)
        client_continue(ex->client);
}

static void on_up_drained(void *arg)
{
    struct exchange *ex = arg;
    if (ex->client && !ex->request_complete)
        client_set_reading(ex->client, true);
}

/* 101: the upstream accepted the WebSocket offer; the client gets a tunnel. */
static void on_up_upgrade(void *arg, struct http_message *resp, struct bufferevent *bev,
                          struct upstream_slot *slot)
{
    struct exchange *ex = arg;
    const char *refused = !ex->tunnel                     ? "switched protocols (101) unasked"
                          : !websocket_accepted(ex, resp) ? "answered 101 without a valid "
                                                            "Sec-WebSocket-Accept"
                          : ex->rt->draining              ? "switched protocols while draining"
                                                          : NULL;
    if (refused != NULL) {
        http_message_free(resp);
        bufferevent_free(bev);
        upstream_slot_release(slot);
        on_up_error(ex, refused, true);
        return;
    }
    ex->up = NULL;
    ex->resp = resp;
    ex->status = 101;
    ex->upstream_ms = (int64_t)(now_monotonic_ms() - ex->t_upstream);
    evtimer_del(ex->timer);
    if (ex->client) {
        struct header_list h;
        headers_init(&h);
        headers_copy_end_to_end(&h, &resp->headers);
        headers_add_cstr(&h, "Connection", "upgrade");
        headers_add_cstr(&h, "Upgrade", "websocket");
        ex->bytes = client_switch_protocols(ex->client, &h, bev, slot);
        ex->client = NULL;
        headers_clear(&h);
    } else {
        bufferevent_free(bev);
        upstream_slot_release(slot);
    }
    ex_finish(ex);
    ex_maybe_free(ex);
}

static const struct upstream_events upstream_events = {
    .on_head = on_up_head,
    .on_body = on_up_body,
    .on_complete = on_up_complete,
    .on_error = on_up_error,
    .on_drained = on_up_drained,
    .on_upgrade = on_up_upgrade,
    .on_continue = on_up_continue,
};

void on_upstream_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct exchange *ex = arg;
    log_warn("request %s key=%s: upstream %s did not answer within upstream_timeout", ex->peer,
             ex->key ? ex->key : "-", ex->upstream_name);
    if (ex->up) {
        upstream_conn_abort(ex->up);
        ex->up = NULL;
    }
    ex->upstream_ms = (int64_t)(now_monotonic_ms() - ex->t_upstream);
    if (ex->owns_key)
        mark_unknown_then(ex, PROBLEM_UPSTREAM_TIMEOUT);
    else if (ex->streaming)
        ex_finish(ex);
    else
        answer_problem(ex, PROBLEM_UPSTREAM_TIMEOUT, NULL);
    ex_maybe_free(ex);
}
