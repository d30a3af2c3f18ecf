/*
 * sockread.h - first-hand reads for a bufferevent on a plain socket.
 *
 * libevent's socket bufferevent asks the kernel how much is readable
 * (ioctl FIONREAD) before every read: one more system call per read, ~9%
 * of the proxy's CPU on a GET passthrough where system calls are dear (a
 * virtual machine). Attached, a reader owns the socket's readability:
 * it reads straight into the bufferevent's input (readv, up to 16 KB or the
 * read high-water mark) and calls the bufferevent's read and event callbacks
 * as libevent would (BEV_EVENT_EOF or BEV_EVENT_ERROR with BEV_EVENT_READING,
 * errno as the read left it; BEV_EVENT_TIMEOUT after a read timeout). The
 * bufferevent's own EV_READ must stay off while attached. Reading pauses at
 * the high-water mark and resumes once the input is drained below it, as a
 * bufferevent does.
 *
 * The counterpart of flush.h (write-first output). Not thread-safe; one
 * loop.
 */
#ifndef IDEM_SOCKREAD_H
#define IDEM_SOCKREAD_H

#include <stdbool.h>
#include <stddef.h>

struct bufferevent;
struct sock_reader;
struct timeval;

/* Reads bev's socket (plain, connected) from now on; cb/event/arg are what
 * bufferevent_setcb was given. Not reading until sock_reader_set(r, true). */
struct sock_reader *sock_reader_attach(struct bufferevent *bev, size_t high_water,
                                       void (*on_read)(struct bufferevent *, void *),
                                       void (*on_event)(struct bufferevent *, short, void *),
                                       void *arg);

/* Like bufferevent_enable/disable(bev, EV_READ). */
void sock_reader_set(struct sock_reader *r, bool reading);

/* Like bufferevent_setcb for the read side (the write side stays bev's). */
void sock_reader_setcb(struct sock_reader *r, void (*on_read)(struct bufferevent *, void *),
                       void (*on_event)(struct bufferevent *, short, void *), void *arg);

/* Like bufferevent_set_timeouts' read timeout: nothing read for this long
 * while reading is on gives on_event(TIMEOUT | READING). NULL: none. */
void sock_reader_set_timeout(struct sock_reader *r, const struct timeval *tv);

/* Stops reading and lets go of bev (its input keeps what was read). NULL is a no-op. */
void sock_reader_detach(struct sock_reader *r);

#endif
