/*
 * runtime.h - what one event loop runs with: its base, the configuration in
 * force, the Redis store, the upstream pool and the listeners. main.c owns it;
 * server.c and proxy.c read it. Reload replaces cfg and pool; requests in
 * flight keep references to the ones they started with.
 */
#ifndef IDEM_RUNTIME_H
#define IDEM_RUNTIME_H

#include <stdbool.h>

struct event_base;
struct config;
struct store;
struct upstream_pool;
struct server;

struct runtime {
    struct event_base *base;
    struct config *cfg;
    struct store *store;
    struct upstream_pool *pool;
    struct server *server;
    bool draining;                       /* SIGTERM: finish what is in flight, accept nothing new */
    int exchanges;                       /* requests in flight */
    int parked;                          /* of those, duplicates waiting for a key in flight */
    int clients;                         /* open client connections */
    void (*on_idle)(struct runtime *rt); /* called when draining and nothing is left */
};

#endif
