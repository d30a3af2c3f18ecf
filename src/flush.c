/*
 * flush.c - write-first output for one event loop.
 *
 * Callbacks of one loop turn add bytes to output buffers; each addition
 * queues its connection's job (once) and activates one event; that event
 * runs after the callbacks already active in this turn, so a response made
 * of a head, a body and a chunk terminator still leaves in one writev:
 *
 *   add to output --evbuffer cb--> job queued --end of turn--> writev
 *                                                   |  all taken: write callback
 *                                                   +- some left: EV_WRITE enabled,
 *                                                      libevent writes the rest
 *
 * nginx and HAProxy work this way; libevent's bufferevents instead wait for
 * epoll to report writability before every write, which costs an epoll_ctl
 * to register and another to unregister, around nearly every message.
 *
 * An attached bufferevent keeps EV_WRITE disabled while its output is empty.
 * When a write leaves bytes behind, EV_WRITE is enabled and libevent's own
 * write path takes over (its callbacks, its error reporting); the next flush
 * that finds the output empty disables EV_WRITE again, which costs nothing
 * then because libevent removed the event when the buffer emptied.
 * A write error is not handled here: EV_WRITE is enabled and libevent's
 * next write reports it through the event callback as before.
 */
#include "flush.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>

#include "util.h"

struct flusher {
    struct event *turn_end;
    struct flush_job *head, *tail;
};

struct flush_link {
    struct flush_job job; /* first: the job is the link */
    struct flusher *flusher;
    struct bufferevent *bev;
    struct evbuffer_cb_entry *watch;
};

static void on_turn_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct flusher *f = arg;
    /* Jobs queued while this runs (a write callback answering at once) run too. */
    struct flush_job *job;
    while ((job = f->head) != NULL) {
        flush_cancel(f, job);
        job->run(job); /* may free the job's owner: not touched after */
    }
}

struct flusher *flusher_new(struct event_base *base)
{
    struct flusher *f = xcalloc(1, sizeof(*f));
    f->turn_end = event_new(base, -1, 0, on_turn_end, f);
    return f;
}

void flusher_free(struct flusher *f)
{
    if (f == NULL)
        return;
    while (f->head)
        flush_cancel(f, f->head);
    event_free(f->turn_end);
    free(f);
}

void flush_schedule(struct flusher *f, struct flush_job *job)
{
    if (job->queued)
        return;
    job->queued = true;
    job->next = NULL;
    job->prev = f->tail;
    if (f->tail)
        f->tail->next = job;
    else
        f->head = job;
    f->tail = job;
    if (job->prev == NULL)
        event_active(f->turn_end, EV_WRITE, 0);
}

void flush_cancel(struct flusher *f, struct flush_job *job)
{
    if (!job->queued)
        return;
    if (job->prev)
        job->prev->next = job->next;
    else
        f->head = job->next;
    if (job->next)
        job->next->prev = job->prev;
    else
        f->tail = job->prev;
    job->next = job->prev = NULL;
    job->queued = false;
}

/* ---- bufferevents ------------------------------------------------------- */

static void flush_bufferevent(struct flush_job *job)
{
    struct flush_link *link = (struct flush_link *)job;
    struct bufferevent *bev = link->bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    size_t before = evbuffer_get_length(out);
    if (before == 0) {
        /* libevent wrote the rest and removed its event: nothing to undo. */
        if (bufferevent_get_enabled(bev) & EV_WRITE)
            bufferevent_disable(bev, EV_WRITE);
        return;
    }
    /* The output's front is frozen so that only the bufferevent drains it:
     * thawed for this write, as libevent's own write callback does. */
    evbuffer_unfreeze(out, 1);
    int n = evbuffer_write(out, bufferevent_getfd(bev));
    int write_errno = errno;
    evbuffer_freeze(out, 1);
    size_t left = evbuffer_get_length(out);
    if (left > 0 || (n < 0 && write_errno != EAGAIN && write_errno != EINTR)) {
        bufferevent_enable(bev, EV_WRITE); /* the kernel is full, or an error to report */
        if (n <= 0)
            return;
    } else if (bufferevent_get_enabled(bev) & EV_WRITE) {
        bufferevent_disable(bev, EV_WRITE);
    }
    size_t low = 0;
    bufferevent_getwatermark(bev, EV_WRITE, &low, NULL);
    bufferevent_data_cb write_cb = NULL;
    void *arg = NULL;
    bufferevent_getcb(bev, NULL, &write_cb, NULL, &arg);
    if (left <= low && write_cb)
        write_cb(bev, arg); /* may free the bufferevent and detach link */
}

static void on_output_changed(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    (void)out;
    struct flush_link *link = arg;
    if (info->n_added > 0)
        flush_schedule(link->flusher, &link->job);
}

struct flush_link *flush_attach(struct flusher *f, struct bufferevent *bev)
{
    if (f == NULL)
        return NULL;
    struct flush_link *link = xcalloc(1, sizeof(*link));
    link->job.run = flush_bufferevent;
    link->flusher = f;
    link->bev = bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    link->watch = evbuffer_add_cb(out, on_output_changed, link);
    if (evbuffer_get_length(out) > 0)
        flush_schedule(f, &link->job);
    else
        bufferevent_disable(bev, EV_WRITE);
    return link;
}

void flush_detach(struct flush_link *link)
{
    if (link == NULL)
        return;
    flush_cancel(link->flusher, &link->job);
    struct evbuffer *out = bufferevent_get_output(link->bev);
    evbuffer_remove_cb_entry(out, link->watch);
    /* Bytes left are libevent's to write now; its next writer enables EV_WRITE. */
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(link->bev, EV_WRITE);
    free(link);
}
