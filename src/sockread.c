/*
 * sockread.c - first-hand reads for a bufferevent on a plain socket (see
 * sockread.h for why).
 *
 *   readable --readv into bev's input--> bytes: on_read (paused first when
 *                                              the input reached high water)
 *                                      0:     on_event(EOF | READING)
 *                                      error: on_event(ERROR | READING)
 *   input drained below high water --> reading again, if wanted
 *   nothing read for the read timeout --> on_event(TIMEOUT | READING)
 *
 * A callback may free the connection (and detach the reader): nothing here
 * touches the reader after calling one.
 */
#include "sockread.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <sys/uio.h>

#include "util.h"

#define READ_MAX (16 * 1024) /* what a bufferevent reads at most at once */

struct sock_reader {
    struct event *ev;
    struct bufferevent *bev;
    struct evbuffer *in;
    struct evbuffer_cb_entry *drained;
    size_t high_water;
    bool wanted; /* sock_reader_set(true) */
    bool timed;  /* timeout holds a read timeout */
    struct timeval timeout;
    bool suspended; /* input at the high-water mark */
    void (*on_read)(struct bufferevent *, void *);
    void (*on_event)(struct bufferevent *, short, void *);
    void *arg;
};

static void update(struct sock_reader *r)
{
    if (r->wanted && !r->suspended)
        event_add(r->ev, r->timed ? &r->timeout : NULL);
    else
        event_del(r->ev);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct sock_reader *r = arg;
    if (what & EV_TIMEOUT) {
        r->wanted = false;
        update(r);
        r->on_event(r->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, r->arg);
        return;
    }
    size_t room = READ_MAX;
    size_t held = evbuffer_get_length(r->in);
    if (r->high_water > 0 && r->high_water - held < room)
        room = r->high_water - held; /* > 0: reading is paused at the mark */
    struct evbuffer_iovec vec[2];
    /* A socket bufferevent keeps its input's end frozen but while it reads
     * (bufferevent_readcb): so do we. */
    evbuffer_unfreeze(r->in, 0);
    int nvec = evbuffer_reserve_space(r->in, (ev_ssize_t)room, vec, 2);
    if (nvec <= 0) {
        evbuffer_freeze(r->in, 0);
        return;
    }
    struct iovec iov[2];
    size_t want = room;
    for (int i = 0; i < nvec; i++) {
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = vec[i].iov_len < want ? vec[i].iov_len : want;
        want -= iov[i].iov_len;
    }
    ssize_t n = readv(fd, iov, nvec);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        evbuffer_commit_space(r->in, vec, 0);
        evbuffer_freeze(r->in, 0);
        return;
    }
    if (n <= 0) {
        int saved = errno;
        evbuffer_commit_space(r->in, vec, 0);
        evbuffer_freeze(r->in, 0);
        r->wanted = false;
        update(r);
        errno = saved;
        r->on_event(r->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), r->arg);
        return;
    }
    size_t left = (size_t)n;
    for (int i = 0; i < nvec; i++) {
        vec[i].iov_len = left < iov[i].iov_len ? left : iov[i].iov_len;
        left -= vec[i].iov_len;
    }
    evbuffer_commit_space(r->in, vec, nvec);
    evbuffer_freeze(r->in, 0);
    if (r->high_water > 0 && evbuffer_get_length(r->in) >= r->high_water) {
        r->suspended = true;
        update(r);
    }
    r->on_read(r->bev, r->arg);
}

static void on_input_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct sock_reader *r = arg;
    if (info->n_deleted > 0 && r->suspended && evbuffer_get_length(buf) < r->high_water) {
        r->suspended = false;
        update(r);
    }
}

struct sock_reader *sock_reader_attach(struct bufferevent *bev, size_t high_water,
                                       void (*on_read)(struct bufferevent *, void *),
                                       void (*on_event)(struct bufferevent *, short, void *),
                                       void *arg)
{
    struct sock_reader *r = xcalloc(1, sizeof(*r));
    r->bev = bev;
    r->in = bufferevent_get_input(bev);
    r->high_water = high_water;
    r->on_read = on_read;
    r->on_event = on_event;
    r->arg = arg;
    r->ev = event_new(bufferevent_get_base(bev), bufferevent_getfd(bev), EV_READ | EV_PERSIST,
                      on_readable, r);
    r->drained = evbuffer_add_cb(r->in, on_input_changed, r);
    return r;
}

void sock_reader_set(struct sock_reader *r, bool reading)
{
    r->wanted = reading;
    update(r);
}

void sock_reader_setcb(struct sock_reader *r, void (*on_read)(struct bufferevent *, void *),
                       void (*on_event)(struct bufferevent *, short, void *), void *arg)
{
    r->on_read = on_read;
    r->on_event = on_event;
    r->arg = arg;
}

void sock_reader_set_timeout(struct sock_reader *r, const struct timeval *tv)
{
    r->timed = tv != NULL;
    if (tv != NULL)
        r->timeout = *tv;
    if (r->wanted && !r->suspended)
        update(r);
}

void sock_reader_detach(struct sock_reader *r)
{
    if (r == NULL)
        return;
    evbuffer_remove_cb_entry(r->in, r->drained);
    event_free(r->ev);
    free(r);
}
