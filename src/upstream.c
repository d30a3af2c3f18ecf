/*
 * upstream.c - server selection, connection pooling and response parsing.
 *
 * Each configured URL is a server with its resolved address, a stack of idle
 * keep-alive connections and a "down until" time set when it refuses us.
 * A connection moves through:
 *
 *   CONNECTING --connected--> ACTIVE (owned by one exchange)
 *        |                      |  response complete, keep-alive
 *        | refused/timeout      v
 *        +--> next server     IDLE (in its server's pool) --reused--> ACTIVE
 *        +--> ready(NULL)       |  peer closed / idle timeout
 *                               v
 *                             closed
 *
 * An idle connection keeps reading so that a close by the upstream is noticed
 * at once and the connection is dropped before anyone tries to reuse it.
 *
 * upstream_max_conns: a server with that many sockets open puts further
 * acquires in a FIFO (QUEUED), each waiting at most upstream_connect_timeout.
 * A finished keep-alive connection goes straight to the longest waiter; a
 * closed one lets the longest waiter connect.
 *
 * The pool is reference-counted by its live connections, so a reload can
 * build a new pool while requests still finish on the old one.
 *
 * Re-entrancy: owner callbacks run from bufferevent callbacks or from a
 * zero-delay timer, never from the owner's own call; the response parser
 * pauses at message end so the connection is released only after llhttp has
 * returned.
 */
#include "upstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "flush.h"
#include "log.h"
#include "sockread.h"
#include "tls.h"

#define OUTPUT_HIGH_WATER (256 * 1024)

enum conn_state { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE, CONN_QUEUED };

struct server {
    struct upstream_pool *pool;
    char *name; /* host:port */
    char *host; /* for TLS: SNI and the name the certificate must carry */
    bool tls;   /* https:// */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t down_until_ms;
    struct upstream_conn *idle; /* stack through idle_next */
    int nidle;
    int open;                      /* sockets to this server: connecting, active or idle */
    struct upstream_conn *waiters; /* FIFO through idle_next: waiting for open < max_conns */
};

struct upstream_pool {
    struct event_base *base;
    struct flusher *flusher;
    struct tls *tls;
    struct server *servers;
    int nservers;
    int next;     /* round robin */
    int refs;     /* 1 for the owner + 1 per live connection */
    bool retired; /* the owner let go (a reload): no connection is kept idle */
    int keepalive;
    int max_conns;
    uint64_t connect_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t fail_timeout_ms;
    size_t max_head;
};

struct upstream_conn {
    struct upstream_pool *pool;
    struct server *server;
    struct bufferevent *bev;
    struct flush_link *flush;   /* bev's write-first link (plain sockets), moves with bev */
    struct sock_reader *reader; /* and its first-hand reader, likewise */
    enum conn_state state;
    struct upstream_conn *idle_next;
    struct event *timer;    /* connect timeout, or the deferred ready of a pooled conn */
    int tries;              /* servers attempted for this acquire */
    char early_failure[96]; /* a connect that failed at once, reported by the timer */

    const struct upstream_events *events;
    void *owner;
    upstream_ready_cb ready;

    struct http_parser parser;
    int request_method;
    bool interim;                  /* the head being parsed is a 1xx */
    struct http_message *switched; /* a 101 head: the connection leaves the pool */
    bool got_bytes;                /* any response byte arrived */
    bool complete;                 /* the response ended (parser paused there) */
    bool request_done;             /* the owner wrote the whole request */
};

static void conn_free(struct upstream_conn *c);
static void try_connect(struct upstream_conn *c);
static void drop_socket(struct upstream_conn *c);
static void on_idle_read(struct bufferevent *bev, void *arg);
static void on_idle_event(struct bufferevent *bev, short what, void *arg);
static void on_pooled_ready(evutil_socket_t fd, short what, void *arg);
static void hand_over(struct upstream_conn *c);
static void admit_waiter(struct server *s);

/* ---- response parsing --------------------------------------------------- */

static enum http_verdict on_resp_head(void *arg, struct http_message *resp)
{
    struct upstream_conn *c = arg;
    if (resp->status == 101) {
        c->switched = resp; /* handed over once llhttp has returned (feed) */
        return PARSE_PAUSE;
    }
    if (resp->status >= 100 && resp->status < 200) {
        c->interim = true;
        if (resp->status == 100)
            c->events->on_continue(c->owner);
        http_message_free(resp);
        return PARSE_CONTINUE;
    }
    c->interim = false;
    bool no_body = c->request_method == HTTP_HEAD;
    enum http_verdict v = c->events->on_head(c->owner, resp);
    if (v == PARSE_CONTINUE && no_body)
        return PARSE_SKIP_BODY;
    return v;
}

static enum http_verdict on_resp_body(void *arg, const char *data, size_t len)
{
    struct upstream_conn *c = arg;
    return c->events->on_body(c->owner, data, len);
}

static enum http_verdict on_resp_complete(void *arg)
{
    struct upstream_conn *c = arg;
    if (c->interim) {
        c->interim = false;
        return PARSE_CONTINUE;
    }
    c->complete = true;
    return PARSE_PAUSE;
}

static const struct http_parser_callbacks response_callbacks = {
    .on_head = on_resp_head,
    .on_body = on_resp_body,
    .on_complete = on_resp_complete,
};

/* ---- pool --------------------------------------------------------------- */

static void idle_remove(struct upstream_conn *c)
{
    struct upstream_conn **pp = &c->server->idle;
    while (*pp && *pp != c)
        pp = &(*pp)->idle_next;
    if (*pp) {
        *pp = c->idle_next;
        c->server->nidle--;
    }
}

/*
 * A pooled connection went bad. If an owner already reserved it (its ready
 * callback is pending), nothing was written yet: connect afresh for it.
 */
static void idle_conn_lost(struct upstream_conn *c, const char *why)
{
    log_debug("upstream %s: pooled connection %s", c->server->name, why);
    if (c->owner == NULL) {
        idle_remove(c);
        conn_free(c);
        return;
    }
    drop_socket(c);
    evtimer_del(c->timer);
    c->tries = 0;
    try_connect(c);
}

/* The socket's callbacks: the bufferevent's, and the reader's for what it
 * reads on a plain socket (sockread.h). */
static void set_read_callbacks(struct upstream_conn *c, bufferevent_data_cb on_read,
                               bufferevent_data_cb on_write, bufferevent_event_cb on_event)
{
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    if (c->reader != NULL)
        sock_reader_setcb(c->reader, on_read, on_event, c);
}

static void on_idle_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    idle_conn_lost(arg, (what & BEV_EVENT_TIMEOUT) ? "idle timeout" : "closed by the server");
}

static void on_idle_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    /* An idle connection has nothing to say: bytes here mean it is unusable. */
    idle_conn_lost(arg, "sent unexpected bytes");
}

/* The response is complete: keep the connection when both sides allow it. */
static void conn_release(struct upstream_conn *c, bool keep_alive)
{
    struct bufferevent *bev = c->bev;
    struct upstream_pool *pool = c->pool;
    c->events = NULL;
    c->owner = NULL;
    /* A request not written to its end (the upstream answered early) would
     * make the next request the tail of its body: never reuse that. */
    if (!keep_alive || pool->retired || !c->request_done ||
        evbuffer_get_length(bufferevent_get_output(bev)) > 0 ||
        evbuffer_get_length(bufferevent_get_input(bev)) > 0 ||
        (c->server->nidle >= pool->keepalive && c->server->waiters == NULL)) {
        conn_free(c);
        return;
    }
    http_parser_reset(&c->parser);
    if (c->server->waiters) {
        hand_over(c);
        return;
    }
    c->state = CONN_IDLE;
    c->complete = false;
    c->got_bytes = false;
    c->request_done = false;
    c->idle_next = c->server->idle;
    c->server->idle = c;
    c->server->nidle++;
    struct timeval tv = {(time_t)(pool->idle_timeout_ms / 1000),
                         (suseconds_t)(pool->idle_timeout_ms % 1000) * 1000};
    set_read_callbacks(c, on_idle_read, NULL, on_idle_event);
    if (c->reader != NULL) {
        sock_reader_set_timeout(c->reader, &tv);
        sock_reader_set(c->reader, true);
    } else {
        bufferevent_set_timeouts(bev, &tv, NULL);
        bufferevent_enable(bev, EV_READ);
    }
}

/* ---- active connection -------------------------------------------------- */

static void fail_active(struct upstream_conn *c, const char *why, bool delivered)
{
    const struct upstream_events *ev = c->events;
    void *owner = c->owner;
    conn_free(c);
    ev->on_error(owner, why, delivered);
}

static void finish_response(struct upstream_conn *c)
{
    const struct upstream_events *ev = c->events;
    void *owner = c->owner;
    bool keep_alive = llhttp_should_keep_alive(&c->parser.llhttp);
    conn_release(c, keep_alive);
    ev->on_complete(owner);
}

/* The connection speaks another protocol now: its socket is the owner's. */
/* A server's connection slot held outside the pool (a tunnel's socket). */
struct upstream_slot {
    struct upstream_pool *pool; /* referenced */
    struct server *server;
};

/* The connection speaks another protocol now: its socket and its slot are
 * the owner's. */
static void hand_over_switched(struct upstream_conn *c)
{
    const struct upstream_events *ev = c->events;
    void *owner = c->owner;
    struct http_message *resp = c->switched;
    struct bufferevent *bev = c->bev;
    struct upstream_slot *slot = xmalloc(sizeof(*slot));
    slot->pool = c->pool;
    slot->server = c->server;
    c->pool->refs++;
    c->switched = NULL;
    c->bev = NULL; /* the socket, and its count in server->open, move to the owner */
    flush_detach(c->flush);
    c->flush = NULL;
    sock_reader_detach(c->reader); /* the tunnel reads with libevent */
    c->reader = NULL;
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    conn_free(c);
    ev->on_upgrade(owner, resp, bev, slot);
}

void upstream_slot_release(struct upstream_slot *slot)
{
    if (slot == NULL)
        return;
    slot->server->open--;
    admit_waiter(slot->server);
    upstream_pool_unref(slot->pool);
    free(slot);
}

/* Parses what arrived. Returns false when the connection is gone. */
static bool feed(struct upstream_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (evbuffer_get_length(in) > 0)
        c->got_bytes = true;
    enum http_feed_result r = http_parser_feed(&c->parser, in);
    if (r == HTTP_FEED_PAUSED && c->switched != NULL) {
        hand_over_switched(c);
        return false;
    }
    switch (r) {
    case HTTP_FEED_OK: return true;
    case HTTP_FEED_PAUSED: finish_response(c); return false;
    case HTTP_FEED_ABORTED: conn_free(c); return false;
    case HTTP_FEED_ERROR: break;
    }
    log_warn("upstream %s: malformed response: %s", c->server->name,
             c->parser.error_reason ? c->parser.error_reason : "parse error");
    fail_active(c, "malformed response", true);
    return false;
}

static void on_active_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    (void)feed(arg);
}

static void on_active_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct upstream_conn *c = arg;
    if (c->events && c->events->on_drained)
        c->events->on_drained(c->owner);
}

/*
 * Did the upstream refuse our TLS session before reading the request? TLS
 * 1.3 finishes the handshake on the server's side after the client's first
 * flight, so the refusal (an alert: "certificate required", "unknown ca")
 * comes after our request went out: as the error of this event, or, when
 * our write met the server's close first, still unread. Either way its
 * application never saw the request.
 */
static bool refused_session(struct upstream_conn *c, enum tls_failure f, char *reason, size_t len)
{
    if (!c->server->tls || c->got_bytes || evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        return false;
    if (f != TLS_FAILURE_REFUSED && !tls_read_refusal(c->bev, reason, len))
        return false;
    log_warn("upstream %s: refused our TLS session: %s", c->server->name, reason);
    return true;
}

static void on_active_event(struct bufferevent *bev, short what, void *arg)
{
    struct upstream_conn *c = arg;
    char reason[200];
    char why[240];
    enum tls_failure f = tls_error_reason(bev, reason, sizeof(reason));
    if (refused_session(c, f, reason, sizeof(reason))) {
        snprintf(why, sizeof(why), "TLS session refused: %s", reason);
        fail_active(c, why, false);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        /* A close-delimited body ends here; anything else was cut short. */
        if (!feed(c))
            return;
        /* Over TLS this is reached only after close_notify: a cut session is
         * an error event (tls.c holds upstreams to it), so a body ended by
         * the connection is whole here (RFC 9112 §9.8). */
        if (http_parser_finish(&c->parser) == HTTP_FEED_OK && c->complete) {
            finish_response(c);
            return;
        }
        fail_active(c,
                    c->got_bytes ? "connection closed mid-response"
                                 : "connection closed before any response",
                    true);
        return;
    }
    snprintf(why, sizeof(why), "%s%s", f == TLS_FAILURE_SOCKET ? "" : "TLS: ", reason);
    fail_active(c, why, true);
}

static void activate(struct upstream_conn *c)
{
    c->state = CONN_ACTIVE;
    http_parser_init(&c->parser, HTTP_RESPONSE, c->pool->max_head, &response_callbacks, c);
    set_read_callbacks(c, on_active_read, on_active_write, on_active_event);
    if (c->reader != NULL)
        sock_reader_set_timeout(c->reader, NULL);
    else
        bufferevent_set_timeouts(c->bev, NULL, NULL);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUTPUT_HIGH_WATER / 2, 0);
}

/* ---- connecting --------------------------------------------------------- */

static struct server *pick_server(struct upstream_pool *pool)
{
    uint64_t now = now_monotonic_ms();
    for (int i = 0; i < pool->nservers; i++) {
        struct server *s = &pool->servers[(pool->next + i) % pool->nservers];
        if (s->down_until_ms <= now) {
            pool->next = (int)((s - pool->servers) + 1) % pool->nservers;
            return s;
        }
    }
    /* Every server is marked down: try the next anyway, so recovery is seen. */
    struct server *s = &pool->servers[pool->next];
    pool->next = (pool->next + 1) % pool->nservers;
    return s;
}

static void connect_failed(struct upstream_conn *c, const char *reason)
{
    struct upstream_pool *pool = c->pool;
    char why[256]; /* reason may live in c (early_failure), freed below */
    snprintf(why, sizeof(why), "%s", reason);
    /* Once per outage, not once per request that finds the server down. */
    uint64_t now = now_monotonic_ms();
    if (c->server->down_until_ms <= now)
        log_warn("upstream %s: %s; skipping it for %llums", c->server->name, why,
                 (unsigned long long)pool->fail_timeout_ms);
    else
        log_debug("upstream %s: %s", c->server->name, why);
    c->server->down_until_ms = now + pool->fail_timeout_ms;
    drop_socket(c);
    evtimer_del(c->timer);
    if (c->tries < pool->nservers) {
        try_connect(c);
        return;
    }
    upstream_ready_cb ready = c->ready;
    void *owner = c->owner;
    conn_free(c);
    ready(owner, NULL, why);
}

static void on_connect_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct upstream_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        evtimer_del(c->timer);
        if (c->server->down_until_ms != 0) {
            /* The pair of the "skipping it" line; round robin takes it back now. */
            log_info("upstream %s: reachable again", c->server->name);
            c->server->down_until_ms = 0;
        }
        if (!c->server->tls) {
            c->flush = flush_attach(c->pool->flusher, bev);
            c->reader = sock_reader_attach(bev, 0, on_active_read, on_active_event, c);
        }
        activate(c);
        c->ready(c->owner, c, NULL);
        return;
    }
    char reason[200];
    char why[240];
    bool tls_failed =
        tls_error_reason(bev, reason, sizeof(reason)) || (c->server->tls && (what & BEV_EVENT_EOF));
    snprintf(why, sizeof(why), "%s failed: %s", tls_failed ? "TLS handshake" : "connect", reason);
    connect_failed(c, why);
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct upstream_conn *c = arg;
    connect_failed(c, c->early_failure[0] != '\0' ? c->early_failure
                                                  : "connect timed out (upstream_connect_timeout)");
}

static void on_queue_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct upstream_conn *c = arg;
    upstream_ready_cb ready = c->ready;
    void *owner = c->owner;
    log_warn("upstream %s: upstream_max_conns (%d) busy for upstream_connect_timeout",
             c->server->name, c->pool->max_conns);
    conn_free(c);
    ready(owner, NULL, "upstream_max_conns reached");
}

/* Waits for a connection slot of server s, at most upstream_connect_timeout. */
static void enqueue(struct upstream_conn *c, struct server *s)
{
    struct upstream_pool *pool = c->pool;
    c->server = s;
    c->state = CONN_QUEUED;
    c->idle_next = NULL;
    struct upstream_conn **pp = &s->waiters;
    while (*pp)
        pp = &(*pp)->idle_next;
    *pp = c;
    struct timeval tv = {(time_t)(pool->connect_timeout_ms / 1000),
                         (suseconds_t)(pool->connect_timeout_ms % 1000) * 1000};
    evtimer_assign(c->timer, pool->base, on_queue_timeout, c);
    evtimer_add(c->timer, &tv);
}

static void dequeue(struct upstream_conn *c)
{
    struct upstream_conn **pp = &c->server->waiters;
    while (*pp && *pp != c)
        pp = &(*pp)->idle_next;
    if (*pp)
        *pp = c->idle_next;
    c->idle_next = NULL;
}

static void start_connect(struct upstream_conn *c, struct server *s);

/* A slot of s freed up: the longest waiter connects. */
static void admit_waiter(struct server *s)
{
    struct upstream_conn *w = s->waiters;
    if (w == NULL || s->open >= s->pool->max_conns)
        return;
    dequeue(w);
    evtimer_del(w->timer);
    start_connect(w, s);
}

/*
 * A finished connection goes straight to the longest waiter instead of the
 * idle pool. Until its ready runs it keeps the idle callbacks, so a close in
 * between is handled as for any reserved pooled connection.
 */
static void hand_over(struct upstream_conn *c)
{
    struct server *s = c->server;
    struct upstream_conn *w = s->waiters;
    dequeue(w);
    evtimer_del(w->timer);
    w->bev = c->bev;
    w->flush = c->flush;
    w->reader = c->reader;
    w->server = s;
    w->state = CONN_IDLE;
    c->bev = NULL; /* the socket and its count move to w */
    c->flush = NULL;
    c->reader = NULL;
    set_read_callbacks(w, on_idle_read, NULL, on_idle_event);
    if (w->reader != NULL)
        sock_reader_set(w->reader, true);
    else
        bufferevent_enable(w->bev, EV_READ);
    conn_free(c);
    evtimer_assign(w->timer, w->pool->base, on_pooled_ready, w);
    struct timeval zero = {0, 0};
    evtimer_add(w->timer, &zero);
}

/* Frees the socket, if any, and lets a waiter have its slot. */
static void drop_socket(struct upstream_conn *c)
{
    if (c->bev == NULL)
        return;
    flush_detach(c->flush);
    c->flush = NULL;
    sock_reader_detach(c->reader);
    c->reader = NULL;
    bufferevent_free(c->bev);
    c->bev = NULL;
    c->server->open--;
    admit_waiter(c->server);
}

static void try_connect(struct upstream_conn *c)
{
    struct upstream_pool *pool = c->pool;
    c->tries++;
    struct server *s = pick_server(pool);
    if (s->open >= pool->max_conns) {
        enqueue(c, s);
        return;
    }
    start_connect(c, s);
}

static void start_connect(struct upstream_conn *c, struct server *s)
{
    struct upstream_pool *pool = c->pool;
    c->server = s;
    s->open++;
    c->state = CONN_CONNECTING;
    c->early_failure[0] = '\0';
    c->bev = tls_upstream_bufferevent(pool->tls, pool->base, s->host, s->tls);
    struct timeval tv = {(time_t)(pool->connect_timeout_ms / 1000),
                         (suseconds_t)(pool->connect_timeout_ms % 1000) * 1000};
    evtimer_assign(c->timer, pool->base, on_connect_timeout, c);
    if (c->bev == NULL) {
        s->open--; /* no socket to count: the slot goes to the next waiter */
        admit_waiter(s);
        snprintf(c->early_failure, sizeof(c->early_failure), "cannot set up a connection");
    } else {
        bufferevent_setcb(c->bev, NULL, NULL, on_connect_event, c);
        if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&c->server->addr,
                                       (int)c->server->addrlen) < 0)
            snprintf(c->early_failure, sizeof(c->early_failure), "connect failed: %s",
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    }
    if (c->early_failure[0] != '\0') {
        /* Reported on the next turn: callbacks never run from the caller's call. */
        struct timeval zero = {0, 0};
        tv = zero;
    }
    evtimer_add(c->timer, &tv);
}

static void on_pooled_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct upstream_conn *c = arg;
    activate(c);
    c->ready(c->owner, c, NULL);
}

struct upstream_conn *upstream_acquire(struct upstream_pool *pool,
                                       const struct upstream_events *events, void *owner,
                                       upstream_ready_cb ready)
{
    /* Prefer a warm connection to the server round robin would pick next. */
    struct server *s = &pool->servers[pool->next];
    struct upstream_conn *c = NULL;
    if (s->idle && s->down_until_ms <= now_monotonic_ms()) {
        c = s->idle;
        idle_remove(c);
        pool->next = (pool->next + 1) % pool->nservers;
    }
    if (c == NULL) {
        c = xcalloc(1, sizeof(*c));
        c->pool = pool;
        c->timer = xcalloc(1, event_get_struct_event_size());
        pool->refs++;
    }
    c->events = events;
    c->owner = owner;
    c->ready = ready;
    if (c->bev != NULL) {
        /* Still on the idle callbacks until ready: a close in between makes
         * idle_conn_lost connect afresh, as nothing has been written. */
        evtimer_assign(c->timer, pool->base, on_pooled_ready, c);
        struct timeval zero = {0, 0};
        evtimer_add(c->timer, &zero);
    } else {
        try_connect(c);
    }
    return c;
}

/* ---- connection API ----------------------------------------------------- */

struct evbuffer *upstream_conn_output(struct upstream_conn *c)
{
    return bufferevent_get_output(c->bev);
}

void upstream_conn_expect_response(struct upstream_conn *c, int request_method)
{
    c->request_method = request_method;
    /* Attached, EV_WRITE is the flusher's (enabled only while bytes wait)
     * and EV_READ the reader's. */
    if (c->reader != NULL)
        sock_reader_set(c->reader, true);
    else
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

void upstream_conn_request_done(struct upstream_conn *c)
{
    c->request_done = true;
}

void upstream_conn_set_reading(struct upstream_conn *c, bool reading)
{
    if (c->reader != NULL)
        sock_reader_set(c->reader, reading);
    else if (reading)
        bufferevent_enable(c->bev, EV_READ);
    else
        bufferevent_disable(c->bev, EV_READ);
}

void upstream_conn_abort(struct upstream_conn *c)
{
    conn_free(c);
}

const char *upstream_conn_name(const struct upstream_conn *c)
{
    return c->server ? c->server->name : "-";
}

bool upstream_conn_tls(const struct upstream_conn *c)
{
    return c->server != NULL && c->server->tls;
}

static void conn_free(struct upstream_conn *c)
{
    struct upstream_pool *pool = c->pool;
    if (c->state == CONN_ACTIVE)
        http_parser_reset(&c->parser);
    http_message_free(c->switched);
    if (c->state == CONN_QUEUED)
        dequeue(c);
    else
        drop_socket(c);
    if (c->timer) {
        if (event_initialized(c->timer))
            evtimer_del(c->timer);
        free(c->timer);
    }
    free(c);
    upstream_pool_unref(pool);
}

/* ---- pool lifecycle ----------------------------------------------------- */

int upstream_resolve(struct config *cfg, char *err, size_t errlen)
{
    for (int i = 0; i < cfg->nupstreams; i++) {
        struct upstream_url *u = &cfg->upstreams[i];
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        int rc = getaddrinfo(u->host, u->port, &hints, &res);
        if (rc != 0) {
            snprintf(err, errlen, "upstream %s: cannot resolve %s: %s", u->url, u->host,
                     gai_strerror(rc));
            return IDEM_ERR;
        }
        memcpy(&u->addr, res->ai_addr, res->ai_addrlen);
        u->addrlen = res->ai_addrlen;
        freeaddrinfo(res);
    }
    return IDEM_OK;
}

struct upstream_pool *upstream_pool_new(struct event_base *base, struct flusher *flusher,
                                        const struct config *cfg, struct tls *tls)
{
    struct upstream_pool *pool = xcalloc(1, sizeof(*pool));
    pool->base = base;
    pool->flusher = flusher;
    pool->tls = tls != NULL ? tls_ref(tls) : NULL;
    pool->refs = 1;
    pool->keepalive = cfg->upstream_keepalive;
    pool->max_conns = cfg->upstream_max_conns > 0 ? cfg->upstream_max_conns : 1;
    pool->connect_timeout_ms = cfg->upstream_connect_timeout_ms;
    pool->idle_timeout_ms = cfg->idle_timeout_ms;
    pool->fail_timeout_ms = cfg->upstream_fail_timeout_ms;
    pool->max_head = cfg->max_header_size;
    pool->nservers = cfg->nupstreams;
    pool->servers = xcalloc((size_t)cfg->nupstreams, sizeof(*pool->servers));
    for (int i = 0; i < cfg->nupstreams; i++) {
        struct server *s = &pool->servers[i];
        s->pool = pool;
        s->name = xstrdup(cfg->upstreams[i].host_header);
        s->host = xstrdup(cfg->upstreams[i].host);
        s->tls = cfg->upstreams[i].tls;
        memcpy(&s->addr, &cfg->upstreams[i].addr, sizeof(s->addr));
        s->addrlen = cfg->upstreams[i].addrlen;
    }
    return pool;
}

void upstream_pool_ref(struct upstream_pool *pool)
{
    pool->refs++;
}

void upstream_pool_unref(struct upstream_pool *pool)
{
    if (--pool->refs > 0)
        return;
    for (int i = 0; i < pool->nservers; i++) {
        free(pool->servers[i].name);
        free(pool->servers[i].host);
    }
    free(pool->servers);
    tls_unref(pool->tls);
    free(pool);
}

void upstream_pool_free(struct upstream_pool *pool)
{
    if (pool == NULL)
        return;
    pool->retired = true;
    pool->refs++; /* hold it while the idle connections go */
    for (int i = 0; i < pool->nservers; i++) {
        struct server *s = &pool->servers[i];
        while (s->idle) {
            struct upstream_conn *c = s->idle;
            idle_remove(c);
            conn_free(c);
        }
    }
    pool->refs--;
    upstream_pool_unref(pool);
}
