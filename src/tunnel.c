/*
 * tunnel.c - the relay behind an upgraded (101) connection.
 *
 *   client bev  --read--> evbuffer_add_buffer --> upstream bev output
 *   upstream bev --read--> evbuffer_add_buffer --> client bev output
 *
 * Moving whole evbuffers copies no bytes. When one side's output holds more
 * than TUNNEL_HIGH_WATER, the other side stops reading until it drained to
 * half of that: a slow reader slows the writer, and memory per tunnel stays
 * bounded. When a side half-closes (EOF), what it sent is flushed to the
 * other side, whose sending half is then shut down in turn, and the other
 * direction goes on until it ends too: a TCP half-close crosses the tunnel.
 * On an error, or when either side is TLS (libevent gives no half-close for
 * it), what was sent is flushed and both close.
 */
#include "tunnel.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "log.h"
#include "upstream.h"
#include "util.h"

#define TUNNEL_HIGH_WATER (256 * 1024)

enum { CLIENT, UPSTREAM };

struct tunnel {
    struct bufferevent *side[2];
    struct upstream_slot *slot; /* the upstream socket's place in upstream_max_conns */
    struct event *idle;
    uint64_t idle_ms;
    bool ending;       /* flushing what was sent, then both close */
    bool sent_eof[2];  /* side i half-closed: it sends nothing more */
    uint64_t bytes[2]; /* relayed from side i */
    uint64_t started_ms;
    char peer[64];
    struct tunnel **list;
    struct tunnel *prev, *next;
    void (*on_end)(void *arg);
    void *arg;
};

static void tunnel_free(struct tunnel *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        *t->list = t->next;
    if (t->next)
        t->next->prev = t->prev;
    log_info("tunnel %s: closed after %llu ms, %llu bytes from the client, %llu from the upstream",
             t->peer, (unsigned long long)(now_monotonic_ms() - t->started_ms),
             (unsigned long long)t->bytes[CLIENT], (unsigned long long)t->bytes[UPSTREAM]);
    bufferevent_free(t->side[CLIENT]);
    bufferevent_free(t->side[UPSTREAM]);
    upstream_slot_release(t->slot);
    event_free(t->idle);
    void (*on_end)(void *arg) = t->on_end;
    void *arg = t->arg;
    free(t);
    on_end(arg);
}

void tunnel_close(struct tunnel *t)
{
    tunnel_free(t);
}

static int index_of(const struct tunnel *t, const struct bufferevent *bev)
{
    return bev == t->side[CLIENT] ? CLIENT : UPSTREAM;
}

static void touch(struct tunnel *t)
{
    struct timeval tv = {(time_t)(t->idle_ms / 1000), (suseconds_t)(t->idle_ms % 1000) * 1000};
    evtimer_add(t->idle, &tv);
}

static bool outputs_empty(const struct tunnel *t)
{
    return evbuffer_get_length(bufferevent_get_output(t->side[CLIENT])) == 0 &&
           evbuffer_get_length(bufferevent_get_output(t->side[UPSTREAM])) == 0;
}

/* Moves what side i received to the other side's output. */
static void relay(struct tunnel *t, int i)
{
    struct evbuffer *in = bufferevent_get_input(t->side[i]);
    struct evbuffer *out = bufferevent_get_output(t->side[!i]);
    if (evbuffer_get_length(in) == 0)
        return;
    t->bytes[i] += evbuffer_get_length(in);
    evbuffer_add_buffer(out, in);
    touch(t);
    if (evbuffer_get_length(out) > TUNNEL_HIGH_WATER)
        bufferevent_disable(t->side[i], EV_READ);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    relay(t, index_of(t, bev));
}

/* Side i's peer gets no more bytes: once its output is written, half-close it. */
static void shut_write_when_drained(struct tunnel *t, int i)
{
    if (evbuffer_get_length(bufferevent_get_output(t->side[i])) > 0) {
        bufferevent_setwatermark(t->side[i], EV_WRITE, 0, 0); /* on_write when empty */
        return;
    }
    shutdown(bufferevent_getfd(t->side[i]), SHUT_WR);
}

/* Output of side i drained to the low-water mark (or to empty). */
static void on_write(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    int i = index_of(t, bev);
    if (t->ending) {
        if (outputs_empty(t))
            tunnel_free(t);
        return;
    }
    if (t->sent_eof[!i])
        shut_write_when_drained(t, i);
    else
        bufferevent_enable(t->side[!i], EV_READ);
}

/*
 * Side i ended: what it sent goes on to the other side, then both close.
 * After an error, side i gets nothing more (what was queued for it is
 * dropped); after both sides half-closed, both outputs are flushed.
 */
static void end(struct tunnel *t, int i, bool failed)
{
    relay(t, i);
    if (failed) {
        struct evbuffer *out = bufferevent_get_output(t->side[i]);
        evbuffer_drain(out, evbuffer_get_length(out));
        bufferevent_disable(t->side[i], EV_READ | EV_WRITE);
    }
    if (t->ending || outputs_empty(t)) {
        tunnel_free(t);
        return;
    }
    t->ending = true;
    for (int k = CLIENT; k <= UPSTREAM; k++) {
        bufferevent_disable(t->side[k], EV_READ);
        bufferevent_setwatermark(t->side[k], EV_WRITE, 0, 0);
    }
}

static bool is_tls(const struct tunnel *t)
{
    return bufferevent_openssl_get_ssl(t->side[CLIENT]) != NULL ||
           bufferevent_openssl_get_ssl(t->side[UPSTREAM]) != NULL;
}

/* Side i half-closed: the other side's peer hears it once it has what i sent. */
static void half_close(struct tunnel *t, int i)
{
    relay(t, i);
    t->sent_eof[i] = true;
    bufferevent_disable(t->side[i], EV_READ);
    if (t->sent_eof[!i]) { /* both directions are done */
        end(t, i, false);
        return;
    }
    shut_write_when_drained(t, !i);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct tunnel *t = arg;
    int i = index_of(t, bev);
    if (what & BEV_EVENT_CONNECTED)
        return;
    log_debug("tunnel %s: %s %s", t->peer, i == CLIENT ? "client" : "upstream",
              (what & BEV_EVENT_EOF) ? "closed" : "failed");
    bool failed = (what & BEV_EVENT_ERROR) != 0;
    if (!failed && !is_tls(t))
        half_close(t, i);
    else
        end(t, i, failed);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct tunnel *t = arg;
    log_info("tunnel %s: nothing sent either way for idle_timeout; closing", t->peer);
    tunnel_free(t);
}

struct tunnel *tunnel_new(struct bufferevent *client, struct bufferevent *upstream,
                          struct upstream_slot *slot, uint64_t idle_ms, const char *peer,
                          struct tunnel **list, void (*on_end)(void *arg), void *arg)
{
    struct tunnel *t = xcalloc(1, sizeof(*t));
    t->side[CLIENT] = client;
    t->side[UPSTREAM] = upstream;
    t->slot = slot;
    t->idle_ms = idle_ms;
    t->started_ms = now_monotonic_ms();
    snprintf(t->peer, sizeof(t->peer), "%s", peer);
    t->on_end = on_end;
    t->arg = arg;
    t->list = list;
    t->next = *list;
    if (*list)
        (*list)->prev = t;
    *list = t;
    t->idle = evtimer_new(bufferevent_get_base(client), on_idle, t);
    for (int i = CLIENT; i <= UPSTREAM; i++) {
        bufferevent_setcb(t->side[i], on_read, on_write, on_event, t);
        bufferevent_set_timeouts(t->side[i], NULL, NULL);
        bufferevent_setwatermark(t->side[i], EV_READ, 0, 0);
        bufferevent_setwatermark(t->side[i], EV_WRITE, TUNNEL_HIGH_WATER / 2, 0);
        bufferevent_enable(t->side[i], EV_READ | EV_WRITE);
    }
    touch(t);
    /* Bytes that came with the head (a client's first frame, or the
     * upstream's right after its 101) are already buffered. */
    relay(t, CLIENT);
    relay(t, UPSTREAM);
    return t;
}
