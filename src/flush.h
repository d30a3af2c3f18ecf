/*
 * flush.h - write-first output for one event loop.
 *
 * A libevent bufferevent registers for writability on every write and
 * unregisters once its buffer is empty: two epoll_ctl calls per response,
 * two more per forwarded request. Here the writes queued during one turn of
 * the loop are written straight to their sockets at the end of that turn,
 * and only what the kernel does not take waits for writability.
 *
 * One flusher per event loop (per worker); not thread-safe.
 */
#ifndef IDEM_FLUSH_H
#define IDEM_FLUSH_H

#include <stdbool.h>

struct event_base;
struct bufferevent;
struct flusher;

struct flusher *flusher_new(struct event_base *base);
void flusher_free(struct flusher *f);

/*
 * Work to run once at the end of the current turn of the loop. The job is
 * the caller's memory; it must be cancelled before it is freed.
 */
struct flush_job {
    struct flush_job *next, *prev;
    void (*run)(struct flush_job *job);
    bool queued;
};

void flush_schedule(struct flusher *f, struct flush_job *job);
void flush_cancel(struct flusher *f, struct flush_job *job);

/*
 * Write-first for a bufferevent on a plain (non-TLS) connected socket:
 * while attached its EV_WRITE belongs to the flusher, enabled only while
 * bytes are left that the kernel did not take. Its write callback runs as
 * libevent would run it: after a write that leaves the output at or below
 * the write low watermark. Returns NULL (and changes nothing) when f is NULL.
 * Detach before the bufferevent is freed or handed to code that writes it
 * another way: bytes still in its output are then left to libevent, and a
 * new owner enables EV_WRITE as for any bufferevent. flush_detach(NULL) does
 * nothing.
 */
struct flush_link;
struct flush_link *flush_attach(struct flusher *f, struct bufferevent *bev);
void flush_detach(struct flush_link *link);

#endif
