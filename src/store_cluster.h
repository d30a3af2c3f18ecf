/*
 * store_cluster.h - where a key lives in a Redis Cluster (SPEC §8,
 * `redis_cluster`): its hash slot, the slot map read from CLUSTER SLOTS, and
 * what a -MOVED or -ASK redirection says. The topology half of a cluster
 * store, without I/O: store.c keeps a connection per node and asks this
 * module which node a key's slot is on.
 */
#ifndef IDEM_STORE_CLUSTER_H
#define IDEM_STORE_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define CLUSTER_SLOTS 16384

/* The slot of a key: CRC16 (XMODEM) of its hash tag (the bytes between the
 * first '{' and the first '}' after it, when not empty), else of all of it. */
unsigned cluster_key_slot(const char *key, size_t len);

/* A node as the map knows it. */
struct cluster_node {
    char *ip; /* numeric, as CLUSTER SLOTS or a redirection said, or a seed's resolved address */
    char *port;
    char *name;     /* a seed's configured host (what TLS checks); NULL: a learned node */
    char *hostname; /* the name the cluster gives it (cluster-preferred-endpoint-type
                       hostname): what redirections say, and what TLS checks when
                       there is no name; NULL: none */
    int owned;      /* slots it owns in the map */
};

/*
 * The slot map: the primary that owns each slot, as an index into nodes
 * (store.c keeps its connections in a parallel array). A node that owns
 * nothing may be forgotten (its ip NULL): its index is then taken by the
 * next new node, so a cluster whose nodes come and go at new addresses
 * does not grow the table for as long as the process runs.
 */
struct cluster_map {
    struct cluster_node *nodes;
    int nnodes, cap;
    int16_t owner[CLUSTER_SLOTS]; /* -1: nobody */
    bool loaded;                  /* a CLUSTER SLOTS answer was read */
};

void cluster_map_init(struct cluster_map *m);
void cluster_map_free(struct cluster_map *m);

/* Whether s is an IPv4 or IPv6 address rather than a host name. */
bool cluster_numeric_address(const char *s);

/* At most this many nodes at a time (slot owners are int16_t). */
#define CLUSTER_NODES_MAX 4096

/* The index of ip:port, added (with name, may be NULL) when new, in a
 * forgotten node's place if there is one; -1 when the table is full. */
int cluster_map_node(struct cluster_map *m, const char *ip, const char *port, const char *name);

/* Frees node's entry for reuse; it must own no slot. */
void cluster_map_forget(struct cluster_map *m, int node);

/* Whether node is an entry in use (not forgotten). */
bool cluster_map_in_use(const struct cluster_map *m, int node);

/* The index of the node whose address, name or host name is host, on
 * port; -1: none. */
int cluster_map_find(const struct cluster_map *m, const char *host, const char *port);

/* slot now belongs to node (a -MOVED said so). */
void cluster_map_set_owner(struct cluster_map *m, unsigned slot, int node);

/*
 * Replaces the whole map with a CLUSTER SLOTS answer (a redisReply): an
 * array of {first slot, last slot, {ip, port, ...} of the primary, replicas
 * ...}. An empty ip means the node asked (asked_ip). IDEM_ERR (the map
 * untouched, err says why): not such an answer.
 */
int cluster_map_load(struct cluster_map *m, const void *reply, const char *asked_ip, char *err,
                     size_t errlen) MUST_CHECK;

/* Whether every slot has an owner. */
bool cluster_map_covered(const struct cluster_map *m);

enum cluster_redirect { CLUSTER_REDIRECT_NONE, CLUSTER_REDIRECT_MOVED, CLUSTER_REDIRECT_ASK };

/*
 * An error reply "MOVED slot host:port" or "ASK slot host:port": the kind,
 * and the slot, host and port into the caller's buffers (host is "" when
 * the server announced none: the node that answered). NONE: another error.
 */
enum cluster_redirect cluster_parse_redirect(const char *error, unsigned *slot, char *host,
                                             size_t hostlen, char *port, size_t portlen);

#endif
