/*
 * redis_conn.c - a Redis connection over a libevent bufferevent: plain TCP
 * or a unix socket (written first-hand at the end of each loop turn, as
 * flush.c does for clients), or TLS (an OpenSSL bufferevent).
 *
 *   command --format (hiredis)--> output ----------> server
 *   server  --> input --redisReader--> reply --> first pending callback
 *                                            (or, with none pending, the
 *                                             subscription's callback)
 *
 *   CONNECTING --connected (TLS: handshake done)--> CONNECTED
 *        |                                              |
 *        +---- error, EOF ----> ended: on_ended, then every pending
 *                               callback with NULL, then freed
 *   redis_conn_close(): pending callbacks with NULL, freed; no on_ended.
 *
 * Callbacks may close the connection or queue commands; a connection
 * closed inside one of its callbacks is freed when that callback returns
 * (depth counts the callbacks running).
 */
#include "redis_conn.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "flush.h"
#include "tls.h"

struct pending {
    redis_reply_fn fn;
    void *privdata;
    struct pending *next;
};

struct redis_conn {
    struct bufferevent *bev;
    struct flusher *flusher;
    struct flush_link *flush; /* plain sockets, once connected */
    bool tls;
    redisReader *reader;
    struct pending *head, **tail;
    redis_reply_fn push_fn; /* a subscription's */
    void *push_privdata;
    redis_event_fn on_connected, on_ended;
    void *data;
    struct event *early; /* a connect that failed at once, reported on the next turn */
    char early_why[256];
    int depth;    /* callbacks of ours running */
    bool closing; /* redis_conn_close() */
    bool ended;   /* failed or closed by the server */
};

static void conn_free(struct redis_conn *c)
{
    flush_detach(c->flush);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    if (c->early != NULL)
        event_free(c->early);
    redisReaderFree(c->reader);
    free(c);
}

/* Every pending callback gets NULL; they may not add more (closing/ended
 * refuses new commands). */
static void fail_pending(struct redis_conn *c)
{
    while (c->head != NULL) {
        struct pending *p = c->head;
        c->head = p->next;
        if (c->head == NULL)
            c->tail = &c->head;
        if (p->fn == c->push_fn && p->privdata == c->push_privdata)
            c->push_fn = NULL; /* a subscription never confirmed: told once, here */
        p->fn(c, NULL, p->privdata);
        free(p);
    }
}

/* Frees c once no callback of ours runs and it has ended or been closed. */
static void settle(struct redis_conn *c)
{
    if (c->depth > 0 || !(c->closing || c->ended))
        return;
    c->depth++;
    fail_pending(c);
    if (c->push_fn != NULL) {
        redis_reply_fn fn = c->push_fn;
        c->push_fn = NULL;
        fn(c, NULL, c->push_privdata);
    }
    c->depth--;
    conn_free(c);
}

static void end(struct redis_conn *c, const char *why)
{
    if (c->ended || c->closing)
        return;
    c->ended = true;
    c->depth++;
    if (c->on_ended != NULL)
        c->on_ended(c, why);
    c->depth--;
    settle(c);
}

static void dispatch(struct redis_conn *c, void *reply)
{
    if (c->head != NULL) {
        struct pending *p = c->head;
        c->head = p->next;
        if (c->head == NULL)
            c->tail = &c->head;
        p->fn(c, reply, p->privdata);
        free(p);
    } else if (c->push_fn != NULL) {
        c->push_fn(c, reply, c->push_privdata);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct redis_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    c->depth++;
    while (evbuffer_get_length(in) > 0 && !c->closing && !c->ended) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (redisReaderFeed(c->reader, v.iov_base, v.iov_len) != REDIS_OK)
            break;
        evbuffer_drain(in, v.iov_len);
        void *reply = NULL;
        while (!c->closing && !c->ended) {
            if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
                end(c, "protocol error in a Redis reply (is this a Redis server?)");
                break; /* freed by the settle() below, once depth is 0 */
            }
            if (reply == NULL)
                break;
            dispatch(c, reply);
            freeReplyObject(reply);
        }
    }
    c->depth--;
    settle(c);
}

static void describe_error(struct redis_conn *c, short what, char *why, size_t len)
{
    if (what & BEV_EVENT_EOF) {
        snprintf(why, len, "Server closed the connection");
    } else if (c->tls) {
        tls_error_reason(c->bev, why, len);
    } else {
        int err = EVUTIL_SOCKET_ERROR();
        snprintf(why, len, "%s",
                 err != 0 ? evutil_socket_error_to_string(err) : "connection error");
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct redis_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (!c->tls)
            c->flush = flush_attach(c->flusher, c->bev);
        c->depth++;
        if (c->on_connected != NULL)
            c->on_connected(c, NULL);
        c->depth--;
        settle(c);
        return;
    }
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
        char why[256];
        describe_error(c, what, why, sizeof(why));
        snprintf(c->early_why, sizeof(c->early_why), "%s", why); /* for redis_conn_new */
        end(c, why);
    }
}

static void on_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis_conn *c = arg;
    end(c, c->early_why);
}

/* The address of ep: numeric (no lookup), or a unix socket path. */
static int endpoint_address(const struct redis_endpoint *ep, struct sockaddr_storage *ss,
                            socklen_t *len, char *why, size_t whylen)
{
    if (ep->unix_path != NULL) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        if (strlen(ep->unix_path) >= sizeof(un->sun_path)) {
            snprintf(why, whylen, "unix socket path too long");
            return IDEM_ERR;
        }
        memset(un, 0, sizeof(*un));
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, ep->unix_path, strlen(ep->unix_path) + 1);
        *len = sizeof(*un);
        return IDEM_OK;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(ep->ip, ep->port, &hints, &res);
    if (rc != 0) {
        snprintf(why, whylen, "not a numeric address: %s", gai_strerror(rc));
        return IDEM_ERR;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return IDEM_OK;
}

struct redis_conn *redis_conn_new(struct event_base *base, struct flusher *flusher,
                                  const struct redis_endpoint *ep, redis_event_fn on_connected,
                                  redis_event_fn on_ended, void *data, char *why, size_t whylen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    if (endpoint_address(ep, &ss, &sslen, why, whylen) != IDEM_OK)
        return NULL;
    struct redis_conn *c = xcalloc(1, sizeof(*c));
    c->flusher = flusher;
    c->tls = ep->tls != NULL;
    c->bev = c->tls ? tls_redis_bufferevent(ep->tls, base, ep->name ? ep->name : ep->ip)
                    : bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->reader = redisReaderCreate();
    c->early = evtimer_new(base, on_early, c);
    if (c->bev == NULL || c->reader == NULL || c->early == NULL) {
        snprintf(why, whylen, "cannot allocate a connection");
        conn_free(c);
        return NULL;
    }
    c->tail = &c->head;
    c->on_connected = on_connected;
    c->on_ended = on_ended;
    c->data = data;
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    /* While connecting, an immediate failure would run on_event inside
     * bufferevent_socket_connect(): it is caught here and reported on the
     * next loop turn, never inside this call. */
    redis_event_fn ended = c->on_ended;
    c->on_ended = NULL;
    c->depth++;
    int rc = bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)sslen);
    c->depth--;
    c->on_ended = ended;
    if (rc != 0 || c->ended) {
        if (!c->ended)
            snprintf(c->early_why, sizeof(c->early_why), "%s",
                     errno != 0 ? strerror(errno) : "cannot connect");
        c->ended = false;
        struct timeval zero = {0, 0};
        evtimer_add(c->early, &zero);
        return c;
    }
    bufferevent_enable(c->bev, EV_READ);
    return c;
}

void *redis_conn_data(const struct redis_conn *c)
{
    return c->data;
}

void redis_conn_set_data(struct redis_conn *c, void *data)
{
    c->data = data;
}

int redis_conn_send(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *cmd,
                    size_t len)
{
    if (c->closing || c->ended || event_pending(c->early, EV_TIMEOUT, NULL) ||
        bufferevent_write(c->bev, cmd, len) != 0)
        return IDEM_ERR;
    struct pending *p = xmalloc(sizeof(*p));
    p->fn = fn;
    p->privdata = privdata;
    p->next = NULL;
    *c->tail = p;
    c->tail = &p->next;
    return IDEM_OK;
}

static int vcommand(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *fmt,
                    va_list ap)
{
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    if (len < 0)
        return IDEM_ERR;
    int rc = redis_conn_send(c, fn, privdata, cmd, (size_t)len);
    free(cmd);
    return rc;
}

int redis_conn_command(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *fmt,
                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vcommand(c, fn, privdata, fmt, ap);
    va_end(ap);
    return rc;
}

int redis_conn_subscribe(struct redis_conn *c, redis_reply_fn fn, void *privdata, const char *fmt,
                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vcommand(c, fn, privdata, fmt, ap);
    va_end(ap);
    if (rc == IDEM_OK) {
        c->push_fn = fn;
        c->push_privdata = privdata;
    }
    return rc;
}

void redis_conn_close(struct redis_conn *c)
{
    if (c == NULL || c->closing)
        return;
    c->closing = true;
    settle(c);
}
