/*
 * redis_events.h - runs a hiredis async context on a libevent loop, writing
 * its commands first-hand at the end of the loop's turn (see flush.h).
 *
 * It replaces hiredis's own libevent adapter, which registers for
 * writability around every command and re-arms a one-shot read event after
 * every reply: four epoll_ctl calls per round trip where none are needed.
 */
#ifndef IDEM_REDIS_EVENTS_H
#define IDEM_REDIS_EVENTS_H

struct event_base;
struct flusher;
struct redisAsyncContext;

/* As redisLibeventAttach(): 0 on success, -1 when ac already has events.
 * flusher may be NULL (commands then wait for writability, as hiredis's). */
int redis_events_attach(struct redisAsyncContext *ac, struct event_base *base,
                        struct flusher *flusher);

#endif
