/*
 * tunnel.h - bytes both ways between a client and an upstream connection
 * once the upstream has switched protocols (101, WebSocket). No parsing: the
 * tunnel only copies, with back-pressure each way, and closes both sides
 * when either ends, when neither side sent anything for idle_ms, or when
 * the worker drains.
 */
#ifndef IDEM_TUNNEL_H
#define IDEM_TUNNEL_H

#include <stdint.h>

struct bufferevent;
struct tunnel;
struct upstream_slot;

/*
 * Takes both bufferevents (bytes already in their input buffers are relayed
 * first) and the upstream connection's pool slot, and links the tunnel into
 * *list, from which it removes itself when it ends; the slot is given back
 * and on_end(arg) runs then, after both connections were freed.
 */
struct tunnel *tunnel_new(struct bufferevent *client, struct bufferevent *upstream,
                          struct upstream_slot *slot, uint64_t idle_ms, const char *peer,
                          struct tunnel **list, void (*on_end)(void *arg), void *arg);

/* Ends a tunnel now (drain, shutdown). */
void tunnel_close(struct tunnel *t);

#endif
