/*
 * redis_events.c - hiredis async context on a libevent loop, write-first.
 *
 * hiredis asks its adapter to add and delete a read and a write interest;
 * this adapter keeps them cheap:
 *
 *   read   one persistent event, added once, deleted only when hiredis says
 *          so (disconnect): a reply costs no epoll_ctl.
 *   write  a command queued while connected schedules a flush job; at the end
 *          of the loop's turn redisAsyncHandleWrite() writes every command
 *          queued in that turn with one write(). Only when the kernel does
 *          not take it all (hiredis asks for writability again from inside
 *          that call) is a real write event added; hiredis deletes it once
 *          its buffer is empty. Before the connection is up the write event
 *          is real, since that is how hiredis learns that connect finished.
 *
 * Ownership: hiredis owns the context and calls cleanup when it frees it,
 * which can happen inside redisAsyncHandleWrite() (a write error); the
 * events are then freed after that call returns.
 */
#include "redis_events.h"

#include <event2/event.h>
#include <hiredis/async.h>
#include <stdbool.h>
#include <stdlib.h>

#include "flush.h"
#include "util.h"

struct redis_events {
    struct flush_job job; /* first: the job is the events */
    redisAsyncContext *ac;
    struct event *read, *write;
    struct flusher *flusher;
    bool reading, writing;
    bool in_flush; /* redisAsyncHandleWrite() runs from the flush job */
    bool freed;    /* cleanup ran during it */
};

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis_events *e = arg;
    redisAsyncHandleRead(e->ac);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis_events *e = arg;
    redisAsyncHandleWrite(e->ac);
}

static void flush_commands(struct flush_job *job)
{
    struct redis_events *e = (struct redis_events *)job;
    e->in_flush = true;
    redisAsyncHandleWrite(e->ac);
    if (e->freed)
        free(e);
    else
        e->in_flush = false;
}

static void add_read(void *arg)
{
    struct redis_events *e = arg;
    if (!e->reading)
        event_add(e->read, NULL);
    e->reading = true;
}

static void del_read(void *arg)
{
    struct redis_events *e = arg;
    if (e->reading)
        event_del(e->read);
    e->reading = false;
}

static void add_write(void *arg)
{
    struct redis_events *e = arg;
    if (e->writing)
        return;
    if (e->flusher && !e->in_flush && (e->ac->c.flags & REDIS_CONNECTED)) {
        flush_schedule(e->flusher, &e->job);
        return;
    }
    event_add(e->write, NULL);
    e->writing = true;
}

static void del_write(void *arg)
{
    struct redis_events *e = arg;
    if (e->flusher)
        flush_cancel(e->flusher, &e->job);
    if (e->writing)
        event_del(e->write);
    e->writing = false;
}

static void cleanup(void *arg)
{
    struct redis_events *e = arg;
    del_write(e);
    event_free(e->read);
    event_free(e->write);
    if (e->in_flush)
        e->freed = true;
    else
        free(e);
}

int redis_events_attach(redisAsyncContext *ac, struct event_base *base, struct flusher *flusher)
{
    if (ac->ev.data != NULL)
        return -1;
    struct redis_events *e = xcalloc(1, sizeof(*e));
    e->ac = ac;
    e->flusher = flusher;
    e->job.run = flush_commands;
    e->read = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, on_readable, e);
    e->write = event_new(base, ac->c.fd, EV_WRITE | EV_PERSIST, on_writable, e);
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    /* As hiredis's adapter: writability is how a connect in progress ends. */
    add_read(e);
    add_write(e);
    return 0;
}
