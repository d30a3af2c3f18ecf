/*
 * server.c - listeners and client connections.
 *
 * A client connection is a small state machine; every transition goes
 * through client_set_state(), which also arms the one timer that guards the
 * state:
 *
 *   IDLE --first byte--> HEAD --head parsed--> BODY --request complete--> WAIT
 *    ^                    (client_header_timeout) (client_body_timeout)   |
 *    |                                                                     |
 *    +------------- response ended, keep-alive ----------------------------+
 *                   response ended, close  --> CLOSING (flush, then free)
 *
 * IDLE is guarded by idle_timeout (closed silently); HEAD and BODY by their
 * timeouts (408, then closed); WAIT by nothing here: the exchange owns the
 * upstream timeout.
 *
 * While a request is being served the parser is paused, so pipelined
 * requests stay in the input buffer (bounded by a read watermark) and are
 * parsed only after the response ends, which keeps answers in order.
 *
 * Freeing: a client is freed only from its own bufferevent callbacks or a
 * deferred event, never from inside the parser or a proxy callback; code that
 * wants it closed sets `want_close` while `in_parser` is true.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flush.h"
#include "http.h"
#include "log.h"
#include "proxy.h"
#include "sockread.h"
#include "target.h"
#include "tls.h"
#include "tunnel.h"

#define CLIENT_READ_HIGH_WATER (256 * 1024)
#define CLIENT_WRITE_HIGH_WATER (256 * 1024)

enum client_state { CLIENT_IDLE, CLIENT_HEAD, CLIENT_BODY, CLIENT_WAIT, CLIENT_CLOSING };

static const char *const client_state_name[] = {"idle", "head", "body", "wait", "closing"};

enum framing { FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE };

struct client {
    struct server *srv;
    struct bufferevent *bev;
    struct flush_link *flush;   /* plain sockets: bev written first-hand */
    struct sock_reader *reader; /* and read first-hand */
    struct event *timer;
    struct event *resume; /* deferred: parse what is buffered after a response */
    enum client_state state;
    struct http_parser parser;
    struct exchange *ex;
    char peer[64];
    bool tls;        /* came in on a tls listener */
    bool handshaken; /* TLS: the handshake finished (plain: from the start) */
    unsigned peer_port;
    int minor;        /* HTTP/1.minor of the current request */
    bool keep_alive;  /* the current request allows another after it */
    bool close_after; /* close once the current response is out */
    bool in_parser;
    bool want_close;
    bool peer_closed;     /* EOF seen: answer what is in flight, then close */
    bool responding;      /* a response head went out for the current request */
    bool wants_continue;  /* the current request has Expect: 100-continue and a body */
    bool continued;       /* 100 Continue went out for it */
    bool head_request;    /* the current request is HEAD: answers carry no body */
    bool resume_on_drain; /* parse the next request once the output has drained */
    enum framing framing;
    uint64_t response_bytes;
    struct client *prev, *next;
};

/*
 * A connection accepted when another worker had just taken the last slot
 * (each worker pauses only when it sees the limit): kept, unread, and served
 * as soon as a slot frees, rather than dropped.
 */
struct held_conn {
    int fd;
    bool tls;
    struct sockaddr_storage addr;
};

/* One listening socket of this worker; the accept callback's argument. */
struct listener {
    struct server *srv;
    struct evconnlistener *l;
    bool tls;
};

struct server {
    struct runtime *rt;
    struct listener listeners[CONFIG_MAX_LISTEN];
    int nlisteners;
    struct client *clients;
    struct tunnel *tunnels;                   /* upgraded connections, counted as clients */
    bool paused;                              /* max_connections reached: listeners disabled */
    struct event *unpause;                    /* while paused: looks again every ACCEPT_RETRY_MS */
    struct held_conn held[CONFIG_MAX_LISTEN]; /* accepted past the limit, not yet served */
    int nheld;
};

static void client_free(struct client *c);
static bool client_process(struct client *c);

/* Client connections of the whole process, every worker: max_connections. */
static _Atomic int process_clients;

/* A paused worker looks this often whether another worker freed a slot. */
#define ACCEPT_RETRY_MS 100

/* ---- state -------------------------------------------------------------- */

static void arm_timer(struct client *c, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void client_set_state(struct client *c, enum client_state next)
{
    const struct config *cfg = c->srv->rt->cfg;
    log_debug("client %s: %s -> %s", c->peer, client_state_name[c->state], client_state_name[next]);
    c->state = next;
    evtimer_del(c->timer);
    switch (next) {
    case CLIENT_IDLE:
        /* Reading may have been paused for a slow upstream during the last body. */
        client_set_reading(c, true);
        arm_timer(c, cfg->idle_timeout_ms);
        break;
    case CLIENT_HEAD: arm_timer(c, cfg->client_header_timeout_ms); break;
    case CLIENT_BODY: arm_timer(c, cfg->client_body_timeout_ms); break;
    case CLIENT_WAIT: break;
    case CLIENT_CLOSING:
        /* A peer that never reads must not hold the connection forever. */
        arm_timer(c, cfg->client_send_timeout_ms);
        break;
    }
}

/* Frees now, or as soon as the parser has returned. */
static void client_close(struct client *c)
{
    if (c->in_parser) {
        c->want_close = true;
        return;
    }
    client_free(c);
}

/* Closes once everything written has been sent. */
static void client_close_after_flush(struct client *c)
{
    client_set_state(c, CLIENT_CLOSING);
    client_set_reading(c, false);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        client_close(c);
}

/* ---- writing responses -------------------------------------------------- */

/* The status line and the given fields; the caller ends the head. A
 * Content-Length among them is written only when framing leaves it alone:
 * the framing of a body is ours (write_head). */
static void write_status_and_fields(struct http_head_writer *w, int status,
                                    const struct header_list *headers, enum framing framing)
{
    http_head_add_status_line(w, status);
    for (int i = 0; i < headers->count; i++) {
        const struct header *h = &headers->items[i];
        if (framing != FRAME_NONE && strn_case_equal(h->name, h->name_len, "Content-Length"))
            continue;
        http_head_add_field(w, h->name, h->name_len, h->value, h->value_len);
    }
}

/* The head of a response framed as c->framing says (content_length for FRAME_LENGTH). */
static void write_head(struct client *c, int status, const struct header_list *headers,
                       int64_t content_length)
{
    struct http_head_writer w;
    http_head_begin(&w, bufferevent_get_output(c->bev));
    write_status_and_fields(&w, status, headers, c->framing);
    if (c->framing == FRAME_LENGTH) {
        HTTP_HEAD_ADD_LITERAL(&w, "Content-Length: ");
        http_head_add_uint(&w, (unsigned long long)content_length, 10);
        HTTP_HEAD_ADD_LITERAL(&w, "\r\n");
    } else if (c->framing == FRAME_CHUNKED) {
        HTTP_HEAD_ADD_LITERAL(&w, "Transfer-Encoding: chunked\r\n");
    }
    if (c->close_after)
        HTTP_HEAD_ADD_LITERAL(&w, "Connection: close\r\n");
    else if (c->minor == 0)
        HTTP_HEAD_ADD_LITERAL(&w, "Connection: keep-alive\r\n");
    HTTP_HEAD_ADD_LITERAL(&w, "\r\n");
    c->response_bytes += http_head_end(&w);
}

void client_respond_head(struct client *c, int status, const struct header_list *headers,
                         int64_t content_length, bool no_body)
{
    /* A request not read to its end leaves bytes we cannot parse past: close.
     * A client that half-closed after pipelining more requests gets their
     * answers first (on_client_resume closes once none is left). */
    bool more_requests = evbuffer_get_length(bufferevent_get_input(c->bev)) > 0;
    if (c->state == CLIENT_HEAD || c->state == CLIENT_BODY || !c->keep_alive ||
        (c->peer_closed && !more_requests) || c->srv->rt->draining)
        c->close_after = true;
    if (no_body) {
        c->framing = FRAME_NONE;
    } else if (content_length >= 0) {
        c->framing = FRAME_LENGTH;
    } else if (c->minor >= 1) {
        c->framing = FRAME_CHUNKED;
    } else {
        c->framing = FRAME_CLOSE;
        c->close_after = true;
    }
    c->responding = true;
    write_head(c, status, headers, content_length);
}

void client_respond_body(struct client *c, const char *data, size_t len)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (len == 0 || c->framing == FRAME_NONE)
        return;
    if (c->framing == FRAME_CHUNKED) {
        evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
        c->response_bytes += len + 4 + 16;
    } else {
        evbuffer_add(out, data, len);
        c->response_bytes += len;
    }
}

uint64_t client_respond_end(struct client *c)
{
    if (c->framing == FRAME_CHUNKED) {
        evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
        c->response_bytes += 5;
    }
    uint64_t bytes = c->response_bytes;
    c->response_bytes = 0;
    c->responding = false;
    c->head_request = false;
    c->ex = NULL;
    if (c->close_after || c->srv->rt->draining) {
        client_close_after_flush(c);
        return bytes;
    }
    client_set_state(c, CLIENT_IDLE);
    /*
     * The next pipelined request is parsed from the resume event, never from
     * here: this may run inside the parser's own callback (an answer given
     * at once), where llhttp has not yet returned its pause. A client that
     * does not read its answers gets no more of them until it does.
     */
    if (client_congested(c))
        c->resume_on_drain = true;
    else
        event_active(c->resume, EV_TIMEOUT, 0);
    return bytes;
}

uint64_t client_respond_problem(struct client *c, const struct problem *p,
                                const struct header_list *extra)
{
    struct header_list h;
    headers_init(&h);
    char date[64];
    http_date_now(date, sizeof(date));
    headers_add_cstr(&h, "Date", date);
    if (extra)
        for (int i = 0; i < extra->count; i++)
            headers_add(&h, extra->items[i].name, extra->items[i].name_len, extra->items[i].value,
                        extra->items[i].value_len);
    size_t len;
    char *body = problem_render(p, c->srv->rt->cfg->error_doc_url, &h, &len);
    if (c->head_request) {
        char cl[32];
        snprintf(cl, sizeof(cl), "%zu", len);
        headers_add_cstr(&h, "Content-Length", cl);
    }
    client_respond_head(c, problem_status(p->code), &h, (int64_t)len, c->head_request);
    client_respond_body(c, body, len);
    free(body);
    headers_clear(&h);
    return client_respond_end(c);
}

static void maybe_unpause(struct server *srv);

static void on_tunnel_end(void *arg)
{
    struct server *srv = arg;
    srv->rt->clients--;
    process_clients--;
    maybe_unpause(srv);
    if (srv->rt->draining && srv->rt->on_idle)
        srv->rt->on_idle(srv->rt);
}

uint64_t client_switch_protocols(struct client *c, const struct header_list *headers,
                                 struct bufferevent *upstream, struct upstream_slot *slot)
{
    struct server *srv = c->srv;
    struct http_head_writer w;
    http_head_begin(&w, bufferevent_get_output(c->bev));
    write_status_and_fields(&w, 101, headers, FRAME_NONE);
    HTTP_HEAD_ADD_LITERAL(&w, "\r\n");
    uint64_t bytes = http_head_end(&w);

    /* The connection stays counted (max_connections, drain) as a tunnel. */
    srv->rt->clients++;
    process_clients++;
    flush_detach(c->flush); /* the tunnel reads and writes with libevent */
    c->flush = NULL;
    sock_reader_detach(c->reader);
    c->reader = NULL;
    tunnel_new(c->bev, upstream, slot, srv->rt->cfg->idle_timeout_ms, c->peer, &srv->tunnels,
               on_tunnel_end, srv);
    c->bev = NULL;
    c->ex = NULL;
    client_close(c);
    return bytes;
}

void client_continue(struct client *c)
{
    if (!c->wants_continue || c->continued || c->responding || c->state != CLIENT_BODY)
        return;
    c->continued = true;
    evbuffer_add_printf(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
}

void client_abort(struct client *c)
{
    c->ex = NULL;
    log_info("client %s: response aborted; closing the connection", c->peer);
    client_close(c);
}

bool client_congested(const struct client *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev)) > CLIENT_WRITE_HIGH_WATER;
}

void client_set_reading(struct client *c, bool reading)
{
    if (c->reader != NULL)
        sock_reader_set(c->reader, reading);
    else if (reading)
        bufferevent_enable(c->bev, EV_READ);
    else
        bufferevent_disable(c->bev, EV_READ);
}

const char *client_peer(const struct client *c)
{
    return c->peer;
}

bool client_peer_closed(const struct client *c)
{
    return c->peer_closed;
}

bool client_tls(const struct client *c)
{
    return c->tls;
}

/* ---- errors found by the server itself ---------------------------------- */

static void log_protocol_error(struct client *c, int status, const char *why)
{
    struct access_entry e = {
        .client = c->peer,
        .method = NULL,
        .path = NULL,
        .status = status,
        .upstream_ms = -1,
    };
    log_info("client %s: %s", c->peer, why);
    log_access(&e);
}

/* Answers with a problem (if nothing was sent yet) and closes. */
static void client_fail(struct client *c, enum problem_code code, const char *why)
{
    if (c->ex) {
        struct exchange *ex = c->ex;
        c->ex = NULL;
        proxy_client_gone(ex);
    }
    if (c->responding) {
        log_info("client %s: %s; closing mid-response", c->peer, why);
        client_close(c);
        return;
    }
    /* No route was matched: the global error format. */
    const struct policy *g = &c->srv->rt->cfg->global;
    struct problem p = {
        .code = code,
        .body_template = g->error_body,
        .content_type = g->error_content_type,
    };
    c->close_after = true;
    log_protocol_error(c, problem_status(code), why);
    (void)client_respond_problem(c, &p, NULL);
}

/* ---- parsing ------------------------------------------------------------ */

/*
 * Request heads http.c lets through that a proxy must not forward (RFC 9112
 * §3.2): an HTTP/1.1 request without exactly one Host, or a Host that is not
 * host[:port] (an upstream that builds its URL from Host and the target
 * would route "Host: a/payments?" to /payments). Returns the reason, or NULL
 * when the head is acceptable.
 */
static const char *unacceptable_head(const struct http_message *req)
{
    int hosts = headers_count(&req->headers, "Host");
    if (hosts > 1 || (hosts == 0 && req->minor >= 1))
        return hosts > 1 ? "more than one Host field" : "no Host field in an HTTP/1.1 request";
    const struct header *host = headers_find(&req->headers, "Host");
    size_t n;
    const char *v = host ? trim_ows(host->value, host->value_len, &n) : NULL;
    if (host && !target_host_valid(v, n))
        return "a Host that is no host[:port]";
    return NULL;
}

static enum http_verdict on_req_head(void *arg, struct http_message *req)
{
    struct client *c = arg;
    c->minor = req->minor;
    c->keep_alive = req->keep_alive;
    c->head_request = req->method == HTTP_HEAD;
    client_set_state(c, CLIENT_BODY);
    const char *why = unacceptable_head(req);
    if (why == NULL)
        why = target_rewrite_request(req);
    if (why != NULL) {
        http_message_free(req);
        client_fail(c, PROBLEM_BAD_REQUEST, why);
        return PARSE_ABORT;
    }
    if (req->dropped_fields > 0)
        log_debug(
            "client %s: %d field(s) with '_' in the name dropped (underscores_in_headers off)",
            c->peer, req->dropped_fields);
    bool expects_body = req->chunked || req->content_length > 0;
    const struct header *expect = headers_find(&req->headers, "Expect");
    bool wants_continue =
        expect && strn_case_equal(expect->value, expect->value_len, "100-continue");
    c->wants_continue = wants_continue && expects_body && c->minor >= 1;
    c->continued = false;
    c->ex = proxy_begin(c->srv->rt, c, req);
    if (c->ex == NULL)
        return PARSE_ABORT; /* answered already; the connection closes */
    /* A body we buffer, we ask for; a streamed one, the upstream asks for. */
    if (!proxy_streams_request(c->ex))
        client_continue(c);
    return PARSE_CONTINUE;
}

static enum http_verdict on_req_body(void *arg, const char *data, size_t len)
{
    struct client *c = arg;
    if (c->ex == NULL)
        return PARSE_ABORT; /* answered before the body ended: the connection closes */
    arm_timer(c, c->srv->rt->cfg->client_body_timeout_ms);
    if (!proxy_request_body(c->ex, data, len))
        return PARSE_ABORT;
    return PARSE_CONTINUE;
}

static enum http_verdict on_req_complete(void *arg)
{
    struct client *c = arg;
    if (c->ex == NULL)
        return PARSE_ABORT; /* answered before the body ended: the connection closes */
    client_set_state(c, CLIENT_WAIT);
    proxy_request_complete(c->ex);
    return PARSE_PAUSE;
}

static const struct http_parser_callbacks request_callbacks = {
    .on_head = on_req_head,
    .on_body = on_req_body,
    .on_complete = on_req_complete,
};

static enum problem_code problem_for(enum http_error e)
{
    switch (e) {
    case HTTP_ERROR_URI_TOO_LONG: return PROBLEM_URI_TOO_LONG;
    case HTTP_ERROR_HEADER_TOO_LARGE: return PROBLEM_HEADER_TOO_LARGE;
    case HTTP_ERROR_NOT_IMPLEMENTED: return PROBLEM_NOT_IMPLEMENTED;
    case HTTP_ERROR_VERSION: return PROBLEM_VERSION_NOT_SUPPORTED;
    default: return PROBLEM_BAD_REQUEST;
    }
}

/*
 * Parses what is buffered, as far as the state allows. Returns false when
 * the client was freed. Everything that may close the client runs with
 * in_parser set, so the free happens here, last.
 */
static bool client_process(struct client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (c->state == CLIENT_WAIT || c->state == CLIENT_CLOSING)
        return true;
    if (c->state == CLIENT_IDLE) {
        /* Answers not yet read by the client: the next request waits. */
        if (evbuffer_get_length(in) == 0 || c->resume_on_drain)
            return true;
        if (c->srv->rt->draining) {
            client_free(c);
            return false;
        }
        /* The parser stayed paused after the last message; outside its
         * callbacks (here) it is safe to let it go on. */
        http_parser_resume(&c->parser);
        http_parser_keep_underscores(&c->parser, c->srv->rt->cfg->underscores_in_headers);
        client_set_state(c, CLIENT_HEAD);
    }
    c->in_parser = true;
    enum http_feed_result r = http_parser_feed(&c->parser, in);
    if (r == HTTP_FEED_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "malformed request: %s",
                 c->parser.error_reason ? c->parser.error_reason : "parse error");
        client_fail(c, problem_for(c->parser.error), why);
    }
    c->in_parser = false;
    if (c->want_close) {
        client_free(c);
        return false;
    }
    return true;
}

static void on_client_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    (void)client_process(arg);
}

static void on_client_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct client *c = arg;
    if (c->state != CLIENT_IDLE)
        return;
    if (!client_process(c) || !c->peer_closed)
        return;
    /* A peer that half-closed is done once nothing complete is left: a
     * request it cut short can never end. */
    if (c->state == CLIENT_HEAD || c->state == CLIENT_BODY) {
        log_info("client %s: closed the connection mid-request", c->peer);
        client_close_after_flush(c);
    } else if (c->state == CLIENT_IDLE && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        client_close_after_flush(c);
    }
}

static void on_client_write(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    if (c->state == CLIENT_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            client_free(c);
        return;
    }
    if (c->resume_on_drain) {
        c->resume_on_drain = false;
        event_active(c->resume, EV_TIMEOUT, 0);
    }
    if (c->ex)
        proxy_client_drained(c->ex);
}

/*
 * With the port: a handshake has no request to tell one attempt from
 * another. A connection that never sent a byte (a load balancer's TCP check,
 * a port scan) is not a failed handshake worth an info line.
 */
static void log_handshake_failure(const struct client *c, const char *why)
{
    bool v6 = strchr(c->peer, ':') != NULL;
    log_at(tls_handshake_begun(c->bev) ? LOG_INFO : LOG_DEBUG,
           "client %s%s%s:%u: TLS handshake failed: %s", v6 ? "[" : "", c->peer, v6 ? "]" : "",
           c->peer_port, why);
}

static void on_client_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct client *c = arg;
    if (what == BEV_EVENT_CONNECTED) { /* a TLS handshake finished */
        c->handshaken = true;
        if (c->state == CLIENT_IDLE) /* from the handshake's limit to keep-alive's */
            arm_timer(c, c->srv->rt->cfg->idle_timeout_ms);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
        c->peer_closed = true;
        if (c->state == CLIENT_WAIT) {
            /* Half-close: the client may still read the answer. */
            log_debug("client %s: closed its side while waiting", c->peer);
            return;
        }
        if (c->state == CLIENT_IDLE && evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
            return; /* pipelined requests wait for their turn (on_client_resume) */
        if (c->state == CLIENT_HEAD || c->state == CLIENT_BODY)
            log_info("client %s: closed the connection mid-request", c->peer);
        if (!c->handshaken)
            log_handshake_failure(c, "closed by the client");
    } else if (what & BEV_EVENT_TIMEOUT) {
        log_info("client %s: read nothing of its answer for client_send_timeout; closing", c->peer);
    } else if (what & BEV_EVENT_ERROR) {
        char why[200];
        bool tls_failed = tls_error_reason(c->bev, why, sizeof(why)) != TLS_FAILURE_SOCKET;
        if (!c->handshaken)
            log_handshake_failure(c, why);
        else
            log_debug("client %s: %s%s", c->peer, tls_failed ? "TLS: " : "", why);
    }
    client_free(c);
}

static void on_client_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct client *c = arg;
    switch (c->state) {
    case CLIENT_HEAD:
        client_fail(c, PROBLEM_REQUEST_TIMEOUT, "request head not received in time");
        break;
    case CLIENT_BODY:
        client_fail(c, PROBLEM_REQUEST_TIMEOUT, "request body not received in time");
        break;
    case CLIENT_IDLE:
        if (!c->handshaken)
            log_handshake_failure(c, "not finished within client_header_timeout");
        client_free(c);
        break;
    case CLIENT_CLOSING:
    case CLIENT_WAIT: client_free(c); break;
    }
}

/* ---- connections -------------------------------------------------------- */

static void client_free(struct client *c)
{
    struct server *srv = c->srv;
    if (c->ex) {
        struct exchange *ex = c->ex;
        c->ex = NULL;
        proxy_client_gone(ex);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    http_parser_reset(&c->parser);
    event_free(c->timer);
    event_free(c->resume);
    flush_detach(c->flush);
    sock_reader_detach(c->reader);
    if (c->bev) /* NULL once a tunnel took it */
        bufferevent_free(c->bev);
    free(c);
    srv->rt->clients--;
    process_clients--;
    maybe_unpause(srv);
    if (srv->rt->draining && srv->rt->on_idle)
        srv->rt->on_idle(srv->rt);
}

/* The address (X-Forwarded-For, logs) and the port of a peer. */
static void format_peer(const struct sockaddr *sa, char *out, size_t cap, unsigned *port)
{
    char host[INET6_ADDRSTRLEN] = "?";
    *port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        *port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        *port = ntohs(in6->sin6_port);
    }
    snprintf(out, cap, "%s", host);
}

/*
 * max_connections: rather than accept and drop, stop accepting. Connections
 * beyond the limit wait in the kernel's accept queue (the listen backlog)
 * until one closes; those already open are untouched.
 */
static void set_accepting(struct server *srv, bool on)
{
    for (int i = 0; i < srv->nlisteners; i++) {
        if (on)
            evconnlistener_enable(srv->listeners[i].l);
        else
            evconnlistener_disable(srv->listeners[i].l);
    }
}

static void arm_unpause(struct server *srv)
{
    struct timeval tv = {0, ACCEPT_RETRY_MS * 1000};
    evtimer_add(srv->unpause, &tv);
}

static void pause_accepting(struct server *srv)
{
    if (srv->paused || srv->rt->draining)
        return;
    srv->paused = true;
    set_accepting(srv, false);
    arm_unpause(srv);
    log_warn("max_connections (%d) reached: not accepting until a connection closes",
             srv->rt->cfg->max_connections);
}

static bool take_slot(struct server *srv);
static void admit(struct server *srv, int fd, const struct sockaddr *sa, bool tls);

/* A slot may be free (a connection of this worker closed, or the timer):
 * held connections first, then the listeners again. */
static void maybe_unpause(struct server *srv)
{
    if (!srv->paused || srv->rt->draining)
        return;
    while (srv->nheld > 0 && take_slot(srv)) {
        struct held_conn h = srv->held[--srv->nheld];
        admit(srv, h.fd, (const struct sockaddr *)&h.addr, h.tls);
    }
    if (srv->nheld > 0 || process_clients >= srv->rt->cfg->max_connections) {
        arm_unpause(srv);
        return;
    }
    srv->paused = false;
    evtimer_del(srv->unpause);
    set_accepting(srv, true);
    log_info("accepting connections again");
}

static void on_unpause(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    maybe_unpause(arg);
}

/* Takes a slot of max_connections; pauses accepting when it was the last. */
static bool take_slot(struct server *srv)
{
    int open = atomic_fetch_add(&process_clients, 1) + 1;
    if (open > srv->rt->cfg->max_connections) {
        process_clients--;
        return false;
    }
    if (open == srv->rt->cfg->max_connections)
        pause_accepting(srv);
    return true;
}

/* Serves an accepted connection that holds a slot. */
static void admit(struct server *srv, int fd, const struct sockaddr *sa, bool tls)
{
    struct runtime *rt = srv->rt;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* A plain socket's bufferevent calls back only from its own events, where
     * freeing it is safe, so its callbacks run at once; OpenSSL's can call
     * back from inside a write, so those wait for a turn of the loop. */
    struct bufferevent *bev = tls_accept_bufferevent(
        rt->tls, rt->base, fd, tls, BEV_OPT_CLOSE_ON_FREE | (tls ? BEV_OPT_DEFER_CALLBACKS : 0));
    if (bev == NULL) {
        process_clients--;
        evutil_closesocket(fd);
        return;
    }
    struct client *c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->tls = tls;
    c->handshaken = !c->tls;
    format_peer(sa, c->peer, sizeof(c->peer), &c->peer_port);
    c->bev = bev;
    c->timer = evtimer_new(rt->base, on_client_timer, c);
    c->resume = event_new(rt->base, -1, 0, on_client_resume, c);
    c->minor = 1;
    http_parser_init(&c->parser, HTTP_REQUEST, rt->cfg->max_header_size, &request_callbacks, c);
    http_parser_keep_underscores(&c->parser, rt->cfg->underscores_in_headers);
    bufferevent_setcb(c->bev, on_client_read, on_client_write, on_client_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, CLIENT_READ_HIGH_WATER);
    bufferevent_setwatermark(c->bev, EV_WRITE, CLIENT_WRITE_HIGH_WATER / 2, 0);
    /* Armed only while output waits for the socket: a client that reads
     * nothing for this long is closed (an exchange it leaves runs on). */
    uint64_t send_ms = rt->cfg->client_send_timeout_ms;
    struct timeval send_tv = {(time_t)(send_ms / 1000), (suseconds_t)(send_ms % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, NULL, &send_tv);
    if (!c->tls) {
        c->flush = flush_attach(rt->flusher, c->bev);
        c->reader =
            sock_reader_attach(c->bev, CLIENT_READ_HIGH_WATER, on_client_read, on_client_event, c);
    }
    /* Attached, EV_WRITE is the flusher's (enabled only while bytes wait)
     * and EV_READ the reader's. */
    if (c->reader == NULL)
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = srv->clients;
    if (srv->clients)
        srv->clients->prev = c;
    srv->clients = c;
    rt->clients++;
    c->state = CLIENT_IDLE;
    client_set_state(c, CLIENT_IDLE);
    if (c->tls) /* the handshake gets what a request head gets */
        arm_timer(c, rt->cfg->client_header_timeout_ms);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    (void)l;
    struct listener *listener = arg;
    struct server *srv = listener->srv;
    if (srv->rt->draining) {
        evutil_closesocket(fd);
        return;
    }
    if (take_slot(srv)) {
        admit(srv, fd, sa, listener->tls);
        return;
    }
    /* Past the limit: this worker pauses too; the connection waits its turn. */
    pause_accepting(srv);
    if (srv->nheld == CONFIG_MAX_LISTEN || (size_t)socklen > sizeof(struct sockaddr_storage)) {
        evutil_closesocket(fd);
        return;
    }
    struct held_conn *h = &srv->held[srv->nheld++];
    h->fd = fd;
    h->tls = listener->tls;
    memcpy(&h->addr, sa, (size_t)socklen);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    int err = EVUTIL_SOCKET_ERROR();
    log_error("accept failed: %s", evutil_socket_error_to_string(err));
}

struct server *server_new(struct runtime *rt)
{
    struct server *srv = xcalloc(1, sizeof(*srv));
    srv->rt = rt;
    srv->unpause = evtimer_new(rt->base, on_unpause, srv);
    return srv;
}

static int bind_one(const struct listen_addr *la, int *fd_out, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(la->host, la->port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s:%s: %s", la->host, la->port, gai_strerror(rc));
        return IDEM_ERR;
    }
    int one = 1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* Only when asked: another process may then take this port's traffic. */
        if (la->reuseport)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (res->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "listen %s:%s: %s", la->host, la->port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return IDEM_ERR;
    }
    freeaddrinfo(res);
    *fd_out = fd;
    return IDEM_OK;
}

static void log_listening(const struct listen_addr *la)
{
    bool v6 = strchr(la->host, ':') != NULL;
    log_info("listening on %s%s%s:%s%s", v6 ? "[" : "", la->host, v6 ? "]" : "", la->port,
             la->tls ? " (tls)" : "");
}

int server_bind(const struct config *cfg, int fds[], int *nfds, char *err, size_t errlen)
{
    *nfds = 0;
    for (int i = 0; i < cfg->nlistens; i++) {
        if (bind_one(&cfg->listens[i], &fds[i], err, errlen) != IDEM_OK) {
            server_unbind(fds, i);
            return IDEM_ERR;
        }
        log_listening(&cfg->listens[i]);
    }
    *nfds = cfg->nlistens;
    return IDEM_OK;
}

int server_rebind(const struct config *old, const int old_fds[], const struct config *cfg,
                  int fds[], char *err, size_t errlen)
{
    bool bound[CONFIG_MAX_LISTEN] = {false};
    for (int i = 0; i < cfg->nlistens; i++) {
        fds[i] = -1;
        for (int j = 0; j < old->nlistens && fds[i] < 0; j++)
            if (listen_addr_same(&cfg->listens[i], &old->listens[j]))
                fds[i] = old_fds[j];
        if (fds[i] >= 0)
            continue;
        if (bind_one(&cfg->listens[i], &fds[i], err, errlen) != IDEM_OK) {
            for (int k = 0; k < i; k++)
                if (bound[k])
                    close(fds[k]);
            return IDEM_ERR;
        }
        bound[i] = true;
        log_listening(&cfg->listens[i]);
    }
    return IDEM_OK;
}

void server_unbind(const int fds[], int nfds)
{
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
}

static void close_listeners(struct listener *listeners, int n)
{
    for (int i = 0; i < n; i++) {
        evconnlistener_free(listeners[i].l);
        listeners[i].l = NULL;
    }
}

/* Listeners built for a configuration, not yet accepting (server_listeners_prepare). */
struct server_listeners {
    struct listener l[CONFIG_MAX_LISTEN];
    int n;
};

/*
 * The new set is complete before the old one goes, so a failure changes
 * nothing. The kernel's accept queues belong to the sockets main.c holds,
 * not to these listeners: swapping them loses no connection.
 */
struct server_listeners *server_listeners_prepare(struct server *srv, const struct config *cfg,
                                                  const int fds[], char *err, size_t errlen)
{
    struct server_listeners *next = xcalloc(1, sizeof(*next));
    for (int i = 0; i < cfg->nlistens; i++) {
        int fd = fds[i] < 0 ? -1 : fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
        next->l[i].srv = srv;
        next->l[i].tls = cfg->listens[i].tls;
        /* Backlog 0: already listening (main.c's listen(), 1024); -1 would
         * make libevent listen() again with its own 128. The callback's
         * argument is the slot the listener will have in srv. */
        next->l[i].l = fd < 0 ? NULL
                              : evconnlistener_new(srv->rt->base, on_accept, &srv->listeners[i],
                                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_DISABLED, 0, fd);
        if (next->l[i].l == NULL) {
            snprintf(err, errlen, "cannot listen on socket %d: %s", fds[i], strerror(errno));
            if (fd >= 0)
                close(fd);
            server_listeners_discard(next);
            return NULL;
        }
        next->n = i + 1;
        evconnlistener_set_error_cb(next->l[i].l, on_accept_error);
    }
    return next;
}

void server_listeners_commit(struct server *srv, struct server_listeners *next)
{
    close_listeners(srv->listeners, srv->nlisteners);
    memcpy(srv->listeners, next->l, (size_t)next->n * sizeof(next->l[0]));
    srv->nlisteners = next->n;
    free(next);
    if (!srv->paused)
        set_accepting(srv, true);
}

void server_listeners_discard(struct server_listeners *next)
{
    if (next == NULL)
        return;
    close_listeners(next->l, next->n);
    free(next);
}

void server_drain(struct server *srv)
{
    close_listeners(srv->listeners, srv->nlisteners);
    srv->nlisteners = 0;
    evtimer_del(srv->unpause);
    while (srv->nheld > 0)
        evutil_closesocket(srv->held[--srv->nheld].fd);
    /* A tunnel has no end of its own to wait for: close them now. */
    int ntunnels = 0;
    while (srv->tunnels) {
        tunnel_close(srv->tunnels);
        ntunnels++;
    }
    if (ntunnels > 0)
        log_info("closed %d WebSocket tunnel(s) to drain", ntunnels);
    struct client *c = srv->clients;
    while (c) {
        struct client *next = c->next;
        /* The end of its last response may still be on its way out. */
        if (c->state == CLIENT_IDLE)
            client_close_after_flush(c);
        c = next;
    }
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    server_drain(srv);
    while (srv->clients)
        client_free(srv->clients);
    event_free(srv->unpause);
    free(srv);
}
