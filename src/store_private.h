/*
 * store_private.h - what store.c (the store's links and life) and
 * store_ops.c (its operations: sending, replies, WAIT batches, orphans)
 * share. Not an interface: store.h is.
 */
#ifndef IDEM_STORE_PRIVATE_H
#define IDEM_STORE_PRIVATE_H

#include <event2/event.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flush.h"
#include "store.h"
#include "store_cluster.h"
#include "store_keys.h"

struct redis_conn;

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
/* Sends of one operation at most: its forms (NOSCRIPT, slow path, legacy
 * read) and, with a cluster, redirections. */
#define OP_STEPS_MAX 8

enum link_state { LINK_DOWN, LINK_CONNECTING, LINK_READY };

/* Operations waiting in order (for a link to be ready, or for a slot map). */
struct op_queue {
    struct store_op *head, **tail;
};

/*
 * One connection with its own reconnect timer and backoff. The store has
 * `cmd`, which runs the operations (with redis_cluster: one such link per
 * primary, in node_links, and `cmd` unused), and `sub`, which holds one
 * PSUBSCRIBE on "<key_prefix>*" and wakes parked duplicates (SPEC §4.4).
 */
struct link {
    struct store *st;
    const char *role;
    /* The current connection. Its data is this link until it is let go
     * (link_close) or ends (on_conn_ended): then NULL, so that the replies
     * answered NULL afterwards find no link. */
    struct redis_conn *ac;
    enum link_state state;
    struct event *reconnect_timer;
    uint64_t backoff_ms;
    bool down_logged;
    bool setup_failed; /* this connection's AUTH or SELECT was refused */
    bool cmd;          /* runs operations (not the pub/sub link) */
    int node;          /* redis_cluster: its node in st->cluster; else -1 */
    char where[300];   /* "host:port" or the unix path, for messages */
    void (*on_ready)(struct link *l);
    /* Operations started while it connects: sent, in order, once its AUTH,
     * SELECT and PING have answered (never before: a refused SELECT would
     * run them in database 0), failed if it goes down instead. */
    struct op_queue pending;
    struct wait_batch *wait_batch; /* writes sent on it that wait for its next WAIT */
    struct wait_batch *wait_sent;  /* its one WAIT in flight, or NULL */
    struct flush_job wait_job;
    /* redis_min_replicas: a claim on it lately reached too few replicas;
     * until a probe's WAIT says they have its writes again, claims routed
     * here fail at once instead of each waiting WAIT's timeout (which would
     * hold up every command behind it). With a cluster this is one shard:
     * the others go on claiming. */
    bool replicas_short;
    struct event *replicas_timer;
};

struct store_watch {
    char *rkey;
    store_wake_cb cb;
    void *arg;
    bool wake_pending;
    struct store_watch *prev, *next;
};

/* A growable byte string: RESP being composed. */
struct bytes {
    char *p;
    size_t len, cap;
};

struct store_op {
    struct store *st;
    enum script_id script;
    /* A claim's first step is the native SET NX GET (script unused then);
     * its slow path and legacy reads are scripts (op_next_step). */
    bool native;
    bool native_first; /* how it started (a retry after a legacy read starts again) */
    int steps;         /* sends so far: a bound on redirections */
    char *claim_value; /* native claims: the in-flight value */
    uint64_t claim_px; /* and its expiry */
    bool claim_will_wait;
    char *claim_quota_key;          /* max_keys_per_scope: the scope's counter, or NULL */
    uint64_t claim_max_keys;        /* and its limit */
    uint64_t claim_quota_window_ms; /* and its window */
    bool claim_args_ready;          /* the claim script's arguments are in args */
    store_claim_cb on_claim;
    store_update_cb on_update;
    store_admin_cb on_admin;
    void *arg;
    struct event *timer;
    uint64_t started_us;
    char *claim_owner; /* claims: what an orphan release needs */
    char *claim_token_key;
    bool answered;
    bool resent_as_eval;
    int replies_due;             /* commands sent whose callbacks have not run: freed at 0 */
    bool confirm_pending;        /* claimed: answered once the WAIT after it says enough replicas */
    bool refused_short;          /* a claim not sent: its primary's replicas are short */
    struct wait_batch *wait_for; /* the batch of its latest write: only its WAIT decides */
    bool applied;                /* an owner-checked change was made */
    struct op_queue *queue;      /* the queue it waits in, or NULL */
    struct store_op *next_queued;
    struct link *link;                /* the link it waits for or went out on, or NULL */
    const struct redis_conn *sent_on; /* the connection its command went out on */
    unsigned slot;                    /* redis_cluster: its key's slot */
    struct link *ask_to;              /* -ASK: the next send goes there, after ASKING */
    int nkeys;                        /* KEYS: rkey, then those at the start of args */
    int nargs;                        /* bulk strings in args */
    struct bytes args;                /* RESP after numkeys and KEYS[1]: more keys, then ARGV */
    char *rkey;                       /* KEYS[1] */
};

/*
 * A claim whose reply never came (timeout, connection lost) may still run
 * in Redis later, leaving a lease that nobody owns and that would block the
 * key for lock_ttl and then unknown_ttl. Its owner token is kept here and released (owner-checked,
 * so harmless if it never ran) a few times once Redis answers again.
 */
struct orphan {
    char *rkey;
    char *owner;
    char *token_key;
    struct store *st;
    int answers;             /* releases Redis answered "not there" */
    uint64_t last_answer_us; /* when the latest of them came */
    bool releasing;          /* a release is on its way: its answer frees or counts */
    struct orphan *next;
};

#define ORPHAN_MAX 4096
#define ORPHAN_ATTEMPTS 3

struct store {
    int refs;
    struct event *free_event;    /* the last reference went: freed on the next turn */
    struct store *next_released; /* released_stores */
    struct event_base *base;
    struct flusher *flusher; /* the loop's: commands written first-hand */
    struct orphan *orphans;
    int norphans;
    struct event *orphan_timer;
    uint64_t token_ttl_ms;
    _Atomic bool *ready_flag; /* mirrors readiness for other threads; may be NULL */
    struct link cmd;
    struct link sub;
    struct bytes command; /* op_send's buffer, reused */
    struct store_watch *watches;

    /* The primary: fixed (redis), or where the sentinels say it is
     * (redis_sentinel: NULL until they have said). */
    char *host, *port, *unix_path, *user, *password, *pattern;
    char *ip;        /* host's numeric address (store_resolve): connected to */
    char where[300]; /* "host:port", for messages */
    struct tls *tls; /* redis_tls: to Redis and the sentinels */
    bool tls_on;
    struct sentinel *sentinel; /* redis_sentinel: where the primary is; else NULL */
    char *master;              /* its master name */
    int min_replicas;          /* redis_min_replicas */
    uint64_t min_replicas_timeout_ms;
    int db;
    uint64_t timeout_ms;

    char sha[SCRIPT_COUNT][41];

    /* redis_cluster (store_cluster.h); NULL otherwise. The first nseeds
     * nodes of the map are the configured seeds. */
    struct cluster_map *cluster;
    int nseeds;
    struct link **node_links; /* node i's link, made when first needed */
    int nnode_links;
    struct op_queue unrouted; /* operations waiting for the first slot map */
    struct event *refresh_timer;
    struct event *refresh_deadline; /* redis_timeout after a CLUSTER SLOTS went out */
    struct link *refresh_link;      /* the link it went out on */
    bool refresh_inflight;          /* a CLUSTER SLOTS is out */
    bool refresh_again;             /* and the map changed since it went */
    bool connecting_nodes; /* cluster_refresh is trying every node: not again from within */
    bool map_error_said;   /* "no slot map" said since the last map read */
    int map_from;          /* the node asked first (the one after the last to give none) */
    uint64_t refreshed_at_ms;
    int sub_node; /* the node the sub link is on (from where it looks after a failure) */
    bool closing; /* store_free runs: replies answered NULL change nothing */
};

/* store.c */
void link_drop(struct link *l, const char *why);
/* store.c */
void publish_ready(struct store *st);
/* store.c: a ready command link (with a cluster, one whose node owns slots
 * if any is ready), or NULL */
struct link *store_ready_link(struct store *st);
/* store.c: whether operations can be routed now (the link is ready, or a
 * cluster's slot map is loaded) */
bool store_can_send(const struct store *st);
/* store.c: node's link (redis_cluster), made on first use, not connected */
struct link *node_link(struct store *st, int node);
/* store.c: connects l if it is down and not waiting to reconnect */
void link_use(struct link *l);
/* store.c: asks for the slot map again (at most one CLUSTER SLOTS in flight,
 * at most one per REFRESH_MIN_MS) */
void cluster_refresh(struct store *st);
/* store_ops.c */
void queue_init(struct op_queue *q);
/* store_ops.c: every operation in q goes out (or is routed) again */
void queue_send(struct op_queue *q);
/* store_ops.c: every operation in q fails (next loop turn) */
void queue_fail(struct op_queue *q);
/* store_ops.c */
void op_answer_error(struct store_op *op, const char *error);
/* store_ops.c */
void op_free(struct store_op *op);
/* op_free once answered and no reply is due. */
void op_maybe_free(struct store_op *op);
/* store_ops.c */
void orphans_free(struct store *st);
/* store_ops.c */
void on_orphan_timer(evutil_socket_t fd, short what, void *arg);
/* store_ops.c */
void on_replicas_timer(evutil_socket_t fd, short what, void *arg);
/* store_ops.c */
void send_wait_batch(struct flush_job *job);
/* store_ops.c */
void on_wait_reply(struct redis_conn *ac, void *reply, void *privdata);
/* store_ops.c */
uint64_t now_us(void);

#endif
