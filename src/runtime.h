/*
 * runtime.h - what one event loop (one worker thread) runs with: its base,
 * its own parsed configuration, its Redis store, its upstream pool and its
 * listeners. worker.c owns it; server.c and proxy.c read it. Nothing in it is
 * shared with another worker; only the counters are read by the main thread
 * (for /metrics), so they are atomics. Reload replaces cfg, tls, pool and listeners; requests
 * in flight keep references to the ones they started with.
 */
#ifndef IDEM_RUNTIME_H
#define IDEM_RUNTIME_H

#include <stdbool.h>

struct event_base;
struct config;
struct store;
struct upstream_pool;
struct server;
struct tls;
struct flusher;

struct runtime {
    struct event_base *base;
    struct flusher *flusher; /* write-first output of this loop's sockets */
    struct config *cfg;
    struct tls *tls; /* the contexts main built from the same file as cfg */
    struct store *store;
    struct upstream_pool *pool;
    struct server *server;
    bool draining;                       /* SIGTERM: finish what is in flight, accept nothing new */
    _Atomic int exchanges;               /* requests in flight */
    _Atomic int parked;                  /* of those, duplicates waiting for a key in flight */
    _Atomic int clients;                 /* open client connections */
    void (*on_idle)(struct runtime *rt); /* called when draining and nothing is left */
};

#endif
