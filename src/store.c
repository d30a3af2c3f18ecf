/*
 * store.c - a store: one Redis target (fixed, the primary the sentinels
 * name: store_sentinel.c, or a Redis Cluster: store_cluster.c), its
 * connections and its life. The operations that go out on them are
 * store_ops.c's; what they say is store_keys.c's.
 *
 * With a cluster, `cmd` is replaced by one command link per node of the slot
 * map (node_links, made when first needed, connected on first use and for
 * every primary once a map is read); the map comes from CLUSTER SLOTS on any
 * ready node link, asked at start, after -MOVED, -CLUSTERDOWN or a node link's
 * failure (cluster_refresh: one in flight, one per 100 ms). `sub` subscribes on
 * one primary of the map (the next after a failure; any seed before a map):
 * the cluster bus carries every PUBLISH to every member node.
 *
 * Connections: two redis_conns ("links"; TCP, unix or TLS). `cmd` runs the
 * operations; `sub` holds one PSUBSCRIBE on "<key_prefix>*" for waiting
 * duplicates: a claim that will wait marks the key, and complete, release
 * and mark_unknown PUBLISH on the key's name only when it is marked, so keys
 * nobody waits for cost no messages. A link is ready once its AUTH, SELECT,
 * ROLE (with sentinels) and PING have answered; operations started while it
 * connects wait in st->pending and go out then (never before: a refused
 * SELECT would run them in database 0). When a link is down, operations fail
 * on the next loop turn (never inside the call that started them) and a
 * timer reconnects with backoff from 50 ms to 1 s; a connect that has not
 * finished within redis_timeout is given up. A command that times out tears
 * its connection down (store_ops.c), since a Redis that does not answer in
 * time cannot be trusted with the commands queued behind.
 *
 *   link: DOWN --connect--> CONNECTING --AUTH/SELECT/ROLE/PING ok--> READY
 *          ^                  |  set-up refused, deadline,            |
 *          +------------------+  disconnect, READONLY     <-----------+
 *
 * A store is reference-counted (store.h): after a reload that changes the
 * target, the exchanges that began on it keep it alive until they end.
 * A link's connection carries the link in its data pointer until the link
 * lets it go or it ends; the replies answered NULL after that find no link.
 */
#include "store_private.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flush.h"
#include "log.h"
#include "metrics.h"
#include "redis_conn.h"
#include "store_health.h"
#include "store_keys.h"
#include "store_sentinel.h"
#include "tls.h"

/* ---- connection --------------------------------------------------------- */

static bool link_serves(const struct link *l)
{
    return l->state == LINK_READY && !l->replicas_short;
}

/* A cluster can serve when every slot has a primary whose link is ready
 * (and, with redis_min_replicas, whose replicas confirm claims). */
static bool cluster_ready(const struct store *st)
{
    if (!cluster_map_covered(st->cluster))
        return false;
    for (int i = 0; i < st->cluster->nnodes; i++)
        if (st->cluster->nodes[i].owned > 0 &&
            (i >= st->nnode_links || !link_serves(st->node_links[i])))
            return false;
    return true;
}

void publish_ready(struct store *st)
{
    if (st->ready_flag != NULL)
        *st->ready_flag = st->cluster != NULL ? cluster_ready(st) : link_serves(&st->cmd);
}

bool store_can_send(const struct store *st)
{
    return st->cluster != NULL ? st->cluster->loaded : st->cmd.state == LINK_READY;
}

struct link *store_ready_link(struct store *st)
{
    if (st->cluster == NULL)
        return st->cmd.state == LINK_READY ? &st->cmd : NULL;
    struct link *any = NULL;
    for (int k = 0; k < st->nnode_links; k++) {
        int i = (st->map_from + k) % st->nnode_links;
        struct link *l = st->node_links[i];
        if (l->state == LINK_READY && st->cluster->nodes[i].owned > 0)
            return l;
        if (l->state == LINK_READY && any == NULL)
            any = l;
    }
    return any;
}

static void link_set_state(struct link *l, enum link_state state)
{
    l->state = state;
    if (l->cmd)
        publish_ready(l->st);
    if (l->cmd && state == LINK_DOWN)
        queue_fail(&l->pending);
}

/*
 * A cluster node that owns no slot (a primary replaced, a node removed) is
 * not reconnected in the background once a map is loaded and a link is
 * ready to ask it again: the next operation routed to it does, and an idle
 * one is forgotten. Otherwise (seeds before the first map, a whole cluster
 * down) every node is: cluster_refresh dials each one not waiting for its
 * backoff, and without one a refused connect would be dialled again at
 * once, on every loop turn. Slots without a primary are no reason: a node
 * that left would be dialled, and kept, for good.
 */
static bool link_needed(const struct link *l)
{
    struct store *st = l->st;
    return l->node < 0 || st->cluster->nodes[l->node].owned > 0 || !st->cluster->loaded ||
           store_ready_link(st) == NULL;
}

static void link_schedule_reconnect(struct link *l)
{
    struct store *st = l->st;
    link_set_state(l, LINK_DOWN);
    l->ac = NULL;
    if (st->sentinel != NULL) /* it may have moved */
        sentinel_rediscover(st->sentinel);
    /* The timer first: the refresh below may try every node, this one too,
     * and must find its reconnect already scheduled. */
    if (link_needed(l)) {
        struct timeval tv = {(time_t)(l->backoff_ms / 1000),
                             (suseconds_t)(l->backoff_ms % 1000) * 1000};
        evtimer_add(l->reconnect_timer, &tv);
        l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
    } else {
        /* the connect deadline may still be armed: firing on a down link it
         * would connect again, once per redis_timeout, for good */
        evtimer_del(l->reconnect_timer);
    }
    if (st->cluster != NULL) { /* slots may have moved; the sub link tries another node */
        if (!l->cmd)
            st->sub_node++;
        cluster_refresh(st);
    }
}

static const char *link_where(const struct link *l)
{
    return l->where;
}

/* The first failure of a run is an error; repeats until recovery are debug. */
static void link_report_down(struct link *l, const char *why)
{
    if (!l->down_logged)
        log_error("%s %s: %s: store unavailable, retrying with backoff", l->role, link_where(l),
                  why);
    else
        log_debug("%s %s: %s", l->role, link_where(l), why);
    l->down_logged = true;
}

/* The link whose current connection ac is, or NULL (retired, or dropped). */
static struct link *link_of(const struct redis_conn *ac)
{
    struct link *l = redis_conn_data(ac);
    return l != NULL && l->ac == ac ? l : NULL;
}

/* The connection failed or was closed by the server: its pending replies
 * come next, with NULL, and find no link. */
static void on_conn_ended(struct redis_conn *ac, const char *why)
{
    struct link *l = link_of(ac);
    redis_conn_set_data(ac, NULL);
    if (l == NULL)
        return;
    link_report_down(l, why);
    link_schedule_reconnect(l);
}

/* What Redis would do with our keys when full or restarted (store_health.c). */
static void check_redis_settings(struct link *l)
{
    char who[400];
    snprintf(who, sizeof(who), "%s %s", l->role, link_where(l));
    store_health_check(l->ac, who);
}

/*
 * AUTH or SELECT refused: the link is down at once (operations started from
 * now on fail on the next loop turn, queued ones too, and none was sent on
 * this connection), and the connection is closed once the setup's replies
 * are in. It backs off like a refused connection.
 */
static void setup_failed(struct link *l, const char *why)
{
    l->setup_failed = true;
    link_drop(l, why); /* backs off like a refused connection */
}

static void setup_refused(struct link *l, const char *reply)
{
    char why[256];
    snprintf(why, sizeof(why),
             "setup refused (check redis_user, redis_password_file, redis_db): %s", reply);
    setup_failed(l, why);
}

static void on_setup_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct link *l = link_of(ac);
    redisReply *r = reply;
    if (l != NULL && r != NULL && r->type == REDIS_REPLY_ERROR && !l->setup_failed)
        setup_refused(l, r->str);
}

/* ROLE (sentinel set-ups): anything but "master" is not where writes go. */
static void on_role_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct link *l = link_of(ac);
    const redisReply *r = reply;
    if (l == NULL || r == NULL || l->setup_failed || r->type == REDIS_REPLY_ERROR)
        return; /* an error reply: on_link_ready's PING says it too */
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0)
        return;
    char why[128];
    snprintf(why, sizeof(why), "not the primary (ROLE says %s); asking the sentinels again",
             r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                     r->element[0]->type == REDIS_REPLY_STRING
                 ? r->element[0]->str
                 : "something else");
    setup_failed(l, why);
}

/*
 * The setup's last command answered: authenticated and in the right db.
 * Only now is the link ready and its backoff reset, so a refused AUTH backs
 * off like a refused connection.
 */
static void on_link_ready(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct link *l = link_of(ac);
    redisReply *r = reply;
    if (l == NULL || r == NULL || l->setup_failed)
        return;
    if (r->type == REDIS_REPLY_ERROR) { /* NOAUTH (no password given), LOADING, ... */
        setup_refused(l, r->str);
        return;
    }
    evtimer_del(l->reconnect_timer); /* the connect deadline */
    link_set_state(l, LINK_READY);
    l->backoff_ms = BACKOFF_MIN_MS;
    if (l->down_logged)
        log_warn("%s %s: connected again", l->role, link_where(l));
    else
        log_info("%s %s: connected", l->role, link_where(l));
    l->down_logged = false;
    if (l->cmd) {
        struct store *st = l->st;
        check_redis_settings(l);
        queue_send(&l->pending);
        if (st->orphans && store_can_send(st)) {
            struct timeval zero = {0, 0};
            evtimer_add(st->orphan_timer, &zero);
        }
        if (st->cluster != NULL && (!st->cluster->loaded || st->refresh_again)) {
            st->refresh_again = false;
            cluster_refresh(st);
        }
    }
    if (l->on_ready)
        l->on_ready(l);
}

/*
 * The node the sub link goes to: the first in use from sub_node on that
 * serves slots of the map, else the first in use (seeds always are). A
 * node that serves none may be no member of the cluster (a plain Redis
 * given as a seed, a node that has joined none), and the cluster's
 * PUBLISH would never reach it: waiting duplicates would wait in vain.
 */
static int sub_link_node(const struct store *st)
{
    const struct cluster_map *m = st->cluster;
    int any = -1;
    for (int k = 0; k < m->nnodes; k++) {
        int i = (st->sub_node + k) % m->nnodes;
        if (!cluster_map_in_use(m, i))
            continue;
        if (m->nodes[i].owned > 0)
            return i;
        if (any < 0)
            any = i;
    }
    return any;
}

/*
 * Where l connects: the store's target, or with a cluster its node (the sub
 * link: the node it tries). TLS checks the name as configured (a managed
 * service's host name, a seed's), not the address it resolved to; a node
 * learned from the cluster has only its address (or redis_tls_server_name).
 */
static void link_endpoint(struct link *l, struct redis_endpoint *ep)
{
    struct store *st = l->st;
    struct tls *tls = st->tls_on ? st->tls : NULL;
    if (st->cluster != NULL) {
        int i = l->node;
        if (i < 0) /* the sub link */
            i = st->sub_node = sub_link_node(st);
        const struct cluster_node *n = &st->cluster->nodes[i];
        *ep = (struct redis_endpoint){
            .ip = n->ip, .name = n->name ? n->name : n->hostname, .port = n->port, .tls = tls};
        snprintf(l->where, sizeof(l->where), "%s:%s", n->ip, n->port);
        return;
    }
    *ep = (struct redis_endpoint){
        .ip = st->ip, .name = st->host, .port = st->port, .unix_path = st->unix_path, .tls = tls};
    snprintf(l->where, sizeof(l->where), "%s", st->unix_path ? st->unix_path : st->where);
}

static void link_connect(struct link *l)
{
    struct store *st = l->st;
    if (st->cluster == NULL && st->host == NULL && st->unix_path == NULL) {
        link_set_state(l, LINK_DOWN); /* on_primary connects it */
        return;
    }
    struct redis_endpoint ep;
    link_endpoint(l, &ep);
    char why[256];
    struct redis_conn *ac =
        redis_conn_new(st->base, st->flusher, &ep, NULL, on_conn_ended, l, why, sizeof(why));
    if (ac == NULL) {
        link_report_down(l, why);
        link_schedule_reconnect(l);
        return;
    }
    l->ac = ac;
    l->setup_failed = false;
    link_set_state(l, LINK_CONNECTING);
    /* Queued before any operation, so every script runs authenticated in the right db. */
    if (st->password && st->user)
        redis_conn_command(ac, on_setup_reply, NULL, "AUTH %s %s", st->user, st->password);
    else if (st->password)
        redis_conn_command(ac, on_setup_reply, NULL, "AUTH %s", st->password);
    if (st->db != 0)
        redis_conn_command(ac, on_setup_reply, NULL, "SELECT %d", st->db);
    if (st->sentinel != NULL) /* the address the sentinels gave must be the primary's */
        redis_conn_command(ac, on_role_reply, NULL, "ROLE");
    redis_conn_command(ac, on_link_ready, NULL, "PING");
    struct timeval tv = {(time_t)(st->timeout_ms / 1000),
                         (suseconds_t)(st->timeout_ms % 1000) * 1000};
    evtimer_add(l->reconnect_timer, &tv); /* the connect deadline */
}

/* While down: time to connect again. While connecting: the connection and
 * its setup did not finish within redis_timeout (a host that drops SYNs
 * would otherwise hold the link for the kernel's two minutes). */
static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct link *l = arg;
    if (l->state == LINK_CONNECTING)
        link_drop(l, "not connected and set up within redis_timeout");
    else
        link_connect(l);
}

/* Lets the connection go now: its pending callbacks are answered NULL
 * (after the current callback, if inside one of its own). */
static void link_close(struct link *l)
{
    struct redis_conn *ac = l->ac;
    evtimer_del(l->reconnect_timer);
    if (ac == NULL)
        return;
    redis_conn_set_data(ac, NULL);
    l->ac = NULL;
    link_set_state(l, LINK_DOWN);
    redis_conn_close(ac);
}

/*
 * The link lets its connection go and schedules its reconnect before the
 * connection is closed: closing answers its pending callbacks NULL (at once
 * when called from a timer), and one that asks for the map must find this
 * link down with its backoff armed, not dial it again at once (and have
 * that new connection overwritten here).
 */
void link_drop(struct link *l, const char *why)
{
    struct redis_conn *ac = l->ac;
    if (ac == NULL)
        return;
    link_report_down(l, why);
    redis_conn_set_data(ac, NULL);
    evtimer_del(l->reconnect_timer); /* the connect deadline */
    link_schedule_reconnect(l);
    redis_conn_close(ac);
}

static void link_init(struct store *st, struct link *l, const char *role, bool cmd,
                      void (*on_ready)(struct link *l))
{
    l->st = st;
    l->role = role;
    l->cmd = cmd;
    l->node = -1;
    l->backoff_ms = BACKOFF_MIN_MS;
    l->reconnect_timer = evtimer_new(st->base, on_reconnect_timer, l);
    l->replicas_timer = evtimer_new(st->base, on_replicas_timer, l);
    l->on_ready = on_ready;
    queue_init(&l->pending);
    l->wait_job.run = send_wait_batch;
}

void link_use(struct link *l)
{
    if (l->state == LINK_DOWN && l->ac == NULL && !evtimer_pending(l->reconnect_timer, NULL))
        link_connect(l);
}

/* ---- cluster: the slot map ---------------------------------------------- */

/* At most one CLUSTER SLOTS per this many ms: a burst of MOVED replies, or
 * a node that fails every reconnect, asks once. */
#define REFRESH_MIN_MS 100

struct link *node_link(struct store *st, int node)
{
    while (st->nnode_links <= node) {
        struct link *l = xcalloc(1, sizeof(*l));
        link_init(st, l, "redis", true, NULL);
        l->node = st->nnode_links;
        st->node_links =
            xrealloc(st->node_links, (size_t)(st->nnode_links + 1) * sizeof(*st->node_links));
        st->node_links[st->nnode_links++] = l;
    }
    return st->node_links[node];
}

/* One line per map that moves slots: which primary gave slots to which. */
static void say_moves(const struct store *st, const int16_t *before)
{
    const struct cluster_map *m = st->cluster;
    int moved = 0, example = -1;
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        if (before[i] != m->owner[i]) {
            moved++;
            example = example < 0 ? i : example;
        }
    if (moved == 0)
        return;
    const struct cluster_node *from = before[example] >= 0 ? &m->nodes[before[example]] : NULL;
    const struct cluster_node *to = m->owner[example] >= 0 ? &m->nodes[m->owner[example]] : NULL;
    log_warn("redis cluster: %d slots changed primary (slot %d: %s%s%s -> %s%s%s)", moved, example,
             from ? from->ip : "none", from ? ":" : "", from ? from->port : "",
             to ? to->ip : "none", to ? ":" : "", to ? to->port : "");
}

/*
 * After a new map: nodes that own no slot any more, are no seed and whose
 * link is idle (no connection, no reconnect due, nothing queued or waiting
 * on it) are forgotten, so that their places serve the next new nodes. A
 * node still connected (a primary turned replica) is kept: it costs one
 * connection, and only as many as the cluster has nodes.
 */
static void forget_idle_nodes(struct store *st)
{
    for (int i = st->nseeds; i < st->cluster->nnodes; i++) {
        if (!cluster_map_in_use(st->cluster, i) || st->cluster->nodes[i].owned > 0)
            continue;
        struct link *l = i < st->nnode_links ? st->node_links[i] : NULL;
        if (l != NULL &&
            (l->ac != NULL || l->state != LINK_DOWN || evtimer_pending(l->reconnect_timer, NULL) ||
             l->pending.head != NULL || l->wait_batch != NULL || l->wait_sent != NULL ||
             evtimer_pending(l->replicas_timer, NULL) || st->refresh_link == l))
            continue;
        if (st->sub.ac != NULL && st->sub_node == i) /* sub_follow_map moves it first */
            continue;
        log_debug("redis cluster: %s:%s owns no slot and is idle: forgotten",
                  st->cluster->nodes[i].ip, st->cluster->nodes[i].port);
        cluster_map_forget(st->cluster, i);
        if (l != NULL) { /* the next node here starts afresh */
            l->backoff_ms = BACKOFF_MIN_MS;
            l->down_logged = false;
            l->replicas_short = false;
        }
    }
}

/* After a new map: the sub link leaves a node that serves no slot for one
 * that does (see sub_link_node); watches look again once it is back. */
static void sub_follow_map(struct store *st)
{
    const struct cluster_map *m = st->cluster;
    if (st->sub.ac == NULL || m->nodes[st->sub_node].owned > 0 ||
        m->nodes[sub_link_node(st)].owned == 0)
        return;
    log_info("%s %s: serves no slot of the map: moving to a primary", st->sub.role,
             link_where(&st->sub));
    link_close(&st->sub);
    st->sub.backoff_ms = BACKOFF_MIN_MS; /* a new place: its failures are news */
    st->sub.down_logged = false;
    link_connect(&st->sub);
}

/* A CLUSTER SLOTS answer: the map is replaced, the primaries connected,
 * and what waited for a map goes out. */
static void on_cluster_slots(struct redis_conn *ac, void *reply, void *privdata)
{
    struct store *st = privdata;
    struct link *l = link_of(ac);
    st->refresh_inflight = false;
    st->refresh_link = NULL;
    if (st->closing)
        return;
    evtimer_del(st->refresh_deadline);
    char err[256] = "connection lost";
    int16_t *before = xmalloc(sizeof(st->cluster->owner));
    memcpy(before, st->cluster->owner, sizeof(st->cluster->owner));
    bool first = !st->cluster->loaded;
    if (l != NULL && reply != NULL &&
        cluster_map_load(st->cluster, reply, st->cluster->nodes[l->node].ip, err, sizeof(err)) ==
            IDEM_OK) {
        st->map_error_said = false;
        if (first)
            log_info("redis cluster: slot map from %s: %s", l->where,
                     cluster_map_covered(st->cluster) ? "every slot has a primary"
                                                      : "some slots have no primary");
        else
            say_moves(st, before);
        for (int i = 0; i < st->cluster->nnodes; i++)
            if (st->cluster->nodes[i].owned > 0)
                link_use(node_link(st, i));
        forget_idle_nodes(st);
        sub_follow_map(st);
        publish_ready(st);
        queue_send(&st->unrouted);
    } else {
        /* once per outage: asked again every 100 ms meanwhile */
        if (!st->map_error_said)
            log_warn("redis cluster: no slot map from %s: %s", l != NULL ? l->where : "a node",
                     err);
        else
            log_debug("redis cluster: no slot map from %s: %s", l != NULL ? l->where : "a node",
                      err);
        st->map_error_said = true;
        st->refresh_again = true;
        if (l != NULL) /* a seed that is no cluster node would be asked for good */
            st->map_from = l->node + 1;
    }
    free(before);
    if (st->refresh_again) {
        st->refresh_again = false;
        cluster_refresh(st);
    }
}

static void on_refresh_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cluster_refresh(arg);
}

void cluster_refresh(struct store *st)
{
    if (st->cluster == NULL || st->closing)
        return;
    if (st->refresh_inflight) { /* it may have left before what made us ask */
        st->refresh_again = true;
        return;
    }
    uint64_t since = now_monotonic_ms() - st->refreshed_at_ms;
    if (since < REFRESH_MIN_MS) {
        if (!evtimer_pending(st->refresh_timer, NULL)) {
            struct timeval tv = {0, (suseconds_t)(REFRESH_MIN_MS - since) * 1000};
            evtimer_add(st->refresh_timer, &tv);
        }
        return;
    }
    struct link *l = store_ready_link(st);
    if (l == NULL) { /* the first node link to be ready asks (on_link_ready) */
        st->refresh_again = true;
        if (st->connecting_nodes) /* a connect that failed at once brought us back here */
            return;
        st->connecting_nodes = true;
        for (int i = 0; i < st->cluster->nnodes; i++)
            if (cluster_map_in_use(st->cluster, i))
                link_use(node_link(st, i));
        st->connecting_nodes = false;
        return;
    }
    if (redis_conn_command(l->ac, on_cluster_slots, st, "CLUSTER SLOTS") != IDEM_OK)
        return; /* the link is ending: its end asks again */
    st->refresh_inflight = true;
    st->refreshed_at_ms = now_monotonic_ms();
    /* No operation waits on this command to time it out: without a deadline
     * a node that stops answering would keep the map as it is for good. */
    st->refresh_link = l;
    struct timeval tv = {(time_t)(st->timeout_ms / 1000),
                         (suseconds_t)(st->timeout_ms % 1000) * 1000};
    evtimer_add(st->refresh_deadline, &tv);
}

static void on_refresh_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store *st = arg;
    struct link *l = st->refresh_link;
    if (!st->refresh_inflight || l == NULL || l->ac == NULL)
        return;
    st->map_from = l->node + 1; /* its answer comes to no link: not asked first again */
    link_drop(l, "CLUSTER SLOTS timed out (redis_timeout)");
}

/* ---- waiting duplicates ------------------------------------------------- */

/* Runs every watch marked pending; a callback may add or remove watches. */
static void run_pending_wakes(struct store *st)
{
    for (;;) {
        struct store_watch *w = st->watches;
        while (w && !w->wake_pending)
            w = w->next;
        if (w == NULL)
            return;
        w->wake_pending = false;
        w->cb(w->arg);
    }
}

static void on_pmessage(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    struct store *st = privdata;
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && st->sub.ac == ac) {
        /* PSUBSCRIBE refused (an ACL without &channels): no wake-ups */
        char why[256];
        snprintf(why, sizeof(why), "PSUBSCRIBE refused: %s", r->str);
        link_drop(&st->sub, why);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "psubscribe") == 0) {
        /* Subscribed from here on: completions published while we were
         * away (or before the node had the subscription) are lost, so every
         * parked request looks again. */
        if (st->sub.ac == ac) {
            for (struct store_watch *w = st->watches; w; w = w->next)
                w->wake_pending = true;
            run_pending_wakes(st);
        }
        return;
    }
    if (r->elements != 4 || strcmp(r->element[0]->str, "pmessage") != 0)
        return;
    const redisReply *channel = r->element[2];
    for (struct store_watch *w = st->watches; w; w = w->next)
        if (strlen(w->rkey) == channel->len && memcmp(w->rkey, channel->str, channel->len) == 0)
            w->wake_pending = true;
    run_pending_wakes(st);
}

static void on_sub_ready(struct link *l)
{
    struct store *st = l->st;
    redis_conn_subscribe(l->ac, on_pmessage, st, "PSUBSCRIBE %s", st->pattern);
}

struct store_watch *store_watch(struct store *st, const char *rkey, store_wake_cb cb, void *arg)
{
    struct store_watch *w = xcalloc(1, sizeof(*w));
    w->rkey = xstrdup(rkey);
    w->cb = cb;
    w->arg = arg;
    w->next = st->watches;
    if (st->watches)
        st->watches->prev = w;
    st->watches = w;
    return w;
}

void store_unwatch(struct store *st, struct store_watch *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        st->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    free(w->rkey);
    free(w);
}

/* ---- lifecycle ---------------------------------------------------------- */

static void sha1_hex(const char *text, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL);
    hex_encode(md, n, out);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void take_settings(struct store *st, const struct config *cfg)
{
    free(st->host);
    free(st->port);
    free(st->unix_path);
    free(st->user);
    free(st->password);
    free(st->pattern);
    free(st->ip);
    st->host = dup_or_null(cfg->redis_host);
    st->ip = dup_or_null(cfg->redis_ip ? cfg->redis_ip : cfg->redis_host);
    st->port = dup_or_null(cfg->redis_port);
    st->unix_path = dup_or_null(cfg->redis_unix);
    st->user = dup_or_null(cfg->redis_user);
    st->password = dup_or_null(cfg->redis_password);
    size_t n = strlen(cfg->key_prefix);
    st->pattern = xmalloc(n + 2);
    memcpy(st->pattern, cfg->key_prefix, n);
    memcpy(st->pattern + n, "*", 2);
    st->db = cfg->redis_db;
    st->timeout_ms = cfg->redis_timeout_ms;
    st->min_replicas = cfg->redis_min_replicas;
    st->min_replicas_timeout_ms = cfg->redis_min_replicas_timeout_ms;
    if (cfg->sentinel_master != NULL ||
        cfg->ncluster_seeds > 0) { /* the sentinels or the cluster will say */
        free(st->host);
        free(st->ip);
        free(st->port);
        free(st->unix_path);
        st->host = st->ip = st->port = st->unix_path = NULL;
        st->master = dup_or_null(cfg->sentinel_master);
    }
    st->token_ttl_ms = cfg->token_ttl_ms;
    st->tls_on = cfg->redis_tls;
    snprintf(st->where, sizeof(st->where), "%s:%s", st->host ? st->host : "",
             st->port ? st->port : "");
}

static bool str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static void store_free(struct store *st);

/* The last primary address said in the log, process-wide: a failover is
 * logged and counted once, not once per worker. */
static pthread_mutex_t primary_lock = PTHREAD_MUTEX_INITIALIZER;
static char primary_said[300];

static void say_primary(const struct store *st, const char *where)
{
    pthread_mutex_lock(&primary_lock);
    if (strcmp(primary_said, where) != 0) {
        if (primary_said[0] != '\0') {
            log_warn("redis: primary %s moved %s -> %s", st->master, primary_said, where);
            metrics_redis_failover();
        } else {
            log_info("redis: primary %s is at %s", st->master, where);
        }
        snprintf(primary_said, sizeof(primary_said), "%s", where);
    }
    pthread_mutex_unlock(&primary_lock);
}

/*
 * The sentinels said where the primary is. A new address: both links go
 * there now (what was sent to the old one fails, and owners send their
 * completions again). The same address: links that are down keep their
 * backoff (the primary may be down, not yet replaced).
 */
static void on_primary(void *arg, const char *ip, const char *port)
{
    struct store *st = arg;
    char where[300];
    snprintf(where, sizeof(where), "%s:%s", ip, port);
    say_primary(st, where);
    bool moved = st->host == NULL || strcmp(where, st->where) != 0;
    if (moved) {
        free(st->host);
        free(st->ip);
        free(st->port);
        st->host = xstrdup(ip);
        st->ip = xstrdup(ip);
        st->port = xstrdup(port);
        snprintf(st->where, sizeof(st->where), "%s", where);
    }
    if (!moved)
        return;
    struct link *links[] = {&st->cmd, &st->sub};
    for (size_t i = 0; i < ARRAY_LEN(links); i++) {
        struct link *l = links[i];
        link_close(l);
        l->backoff_ms = BACKOFF_MIN_MS;
        link_connect(l);
    }
}

/* redis_cluster: the seeds are the map's first nodes; each is connected, the
 * first to answer gives the slot map, and the sub link goes to the first. */
static void cluster_start(struct store *st, const struct config *cfg)
{
    st->cluster = xmalloc(sizeof(*st->cluster));
    cluster_map_init(st->cluster);
    st->refresh_timer = evtimer_new(st->base, on_refresh_timer, st);
    st->refresh_deadline = evtimer_new(st->base, on_refresh_deadline, st);
    for (int i = 0; i < cfg->ncluster_seeds; i++) {
        const struct redis_addr *a = &cfg->cluster_seeds[i];
        cluster_map_node(st->cluster, a->ip ? a->ip : a->host, a->port, a->host);
    }
    st->nseeds = st->cluster->nnodes;
    for (int i = 0; i < st->nseeds; i++) /* a seed that failed at once had the rest dialled */
        link_use(node_link(st, i));
    link_connect(&st->sub);
}

/* Whether cfg names other seeds than st's cluster (or is not a cluster). */
static bool cluster_differs(const struct store *st, const struct config *cfg)
{
    if ((st->cluster != NULL) != (cfg->ncluster_seeds > 0))
        return true;
    if (st->cluster == NULL)
        return false;
    int n = 0;
    for (int i = 0; i < cfg->ncluster_seeds; i++) {
        const struct redis_addr *a = &cfg->cluster_seeds[i];
        const char *ip = a->ip ? a->ip : a->host;
        int j = 0;
        while (j < st->nseeds && (strcmp(st->cluster->nodes[j].ip, ip) != 0 ||
                                  strcmp(st->cluster->nodes[j].port, a->port) != 0 ||
                                  str_differs(st->cluster->nodes[j].name, a->host)))
            j++;
        if (j == st->nseeds)
            return true;
        n++;
    }
    return n < st->nseeds;
}

/* Stores of this thread whose last reference went, not yet freed. */
static _Thread_local struct store *released_stores;

static void unlink_released(struct store *st)
{
    struct store **pp = &released_stores;
    while (*pp && *pp != st)
        pp = &(*pp)->next_released;
    if (*pp)
        *pp = st->next_released;
}

static void on_free_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    unlink_released(arg);
    store_free(arg);
}

struct store *store_ref(struct store *st)
{
    st->refs++;
    return st;
}

void store_unref(struct store *st)
{
    if (st == NULL || --st->refs > 0)
        return;
    st->ready_flag = NULL;
    st->next_released = released_stores;
    released_stores = st;
    event_active(st->free_event, EV_TIMEOUT, 0);
}

void store_free_released(void)
{
    while (released_stores) {
        struct store *st = released_stores;
        released_stores = st->next_released;
        store_free(st);
    }
}

struct store *store_new(struct event_base *base, struct flusher *flusher, const struct config *cfg,
                        struct tls *tls)
{
    struct store *st = xcalloc(1, sizeof(*st));
    st->base = base;
    st->flusher = flusher;
    st->tls = tls != NULL ? tls_ref(tls) : NULL;
    for (int i = 0; i < SCRIPT_COUNT; i++)
        sha1_hex(keys_script_source((enum script_id)i), st->sha[i]);
    take_settings(st, cfg);
    st->refs = 1;
    st->free_event = event_new(base, -1, 0, on_free_event, st);
    st->orphan_timer = evtimer_new(base, on_orphan_timer, st);
    queue_init(&st->unrouted);
    link_init(st, &st->cmd, "redis", true, NULL);
    link_init(st, &st->sub, "redis pubsub", false, on_sub_ready);
    if (cfg->sentinel_master != NULL)
        st->sentinel =
            sentinel_new(base, flusher, cfg, st->tls_on ? st->tls : NULL, on_primary, st);
    if (cfg->ncluster_seeds > 0) {
        cluster_start(st, cfg);
        return st;
    }
    link_connect(&st->cmd);
    link_connect(&st->sub);
    return st;
}

bool store_target_differs(const struct store *st, const struct config *cfg)
{
    /* With TLS, every reload reconnects: its files may have been rotated. */
    if (st->tls_on || cfg->redis_tls || (st->sentinel != NULL) != (cfg->sentinel_master != NULL) ||
        (st->sentinel != NULL && sentinel_differs(st->sentinel, cfg)) ||
        st->min_replicas != cfg->redis_min_replicas ||
        st->min_replicas_timeout_ms != cfg->redis_min_replicas_timeout_ms ||
        cluster_differs(st, cfg))
        return true;
    if (st->sentinel == NULL && st->cluster == NULL &&
        (str_differs(st->host, cfg->redis_host) || str_differs(st->port, cfg->redis_port) ||
         str_differs(st->unix_path, cfg->redis_unix)))
        return true;
    return str_differs(st->user, cfg->redis_user) ||
           str_differs(st->password, cfg->redis_password) || st->db != cfg->redis_db ||
           strncmp(st->pattern, cfg->key_prefix, strlen(st->pattern) - 1) != 0 ||
           strlen(st->pattern) - 1 != strlen(cfg->key_prefix);
}

void store_reconfigure(struct store *st, const struct config *cfg)
{
    st->timeout_ms = cfg->redis_timeout_ms;
    st->token_ttl_ms = cfg->token_ttl_ms;
    struct link *l = store_ready_link(st);
    if (l != NULL) { /* said again at every reload */
        store_health_forget();
        check_redis_settings(l);
    }
}

void store_publish_readiness(struct store *st, _Atomic bool *flag)
{
    st->ready_flag = flag;
    publish_ready(st);
}

/* Its queued operations never went out: answered now, as hiredis answers
 * the sent ones when the links close. */
static void answer_queued(struct op_queue *q)
{
    while (q->head) {
        struct store_op *op = q->head;
        q->head = op->next_queued;
        op->queue = NULL;
        evtimer_del(op->timer);
        op_answer_error(op, "the store is shutting down");
        op_maybe_free(op); /* a redirected op may still be in a sent WAIT batch */
    }
    q->tail = &q->head;
}

/* After its connection closed: the writes that waited for its next WAIT
 * are answered, and its timer freed. */
static void link_free_rest(struct link *l)
{
    flush_cancel(l->st->flusher, &l->wait_job);
    if (l->wait_batch != NULL) {
        struct wait_batch *b = l->wait_batch;
        l->wait_batch = NULL;
        on_wait_reply(NULL, NULL, b);
    }
    event_free(l->reconnect_timer);
    event_free(l->replicas_timer);
}

static void store_free(struct store *st)
{
    st->closing = true;
    answer_queued(&st->unrouted);
    answer_queued(&st->cmd.pending);
    for (int i = 0; i < st->nnode_links; i++)
        answer_queued(&st->node_links[i]->pending);
    struct link *links[] = {&st->cmd, &st->sub};
    for (size_t i = 0; i < ARRAY_LEN(links); i++)
        link_close(links[i]);
    for (int i = 0; i < st->nnode_links; i++)
        link_close(st->node_links[i]);
    for (size_t i = 0; i < ARRAY_LEN(links); i++)
        link_free_rest(links[i]);
    for (int i = 0; i < st->nnode_links; i++) {
        link_free_rest(st->node_links[i]);
        free(st->node_links[i]);
    }
    free(st->node_links);
    if (st->cluster != NULL) {
        event_free(st->refresh_timer);
        event_free(st->refresh_deadline);
        cluster_map_free(st->cluster);
        free(st->cluster);
    }
    while (st->watches)
        store_unwatch(st, st->watches);
    event_free(st->orphan_timer);
    event_free(st->free_event);
    orphans_free(st);
    free(st->host);
    free(st->ip);
    free(st->port);
    free(st->unix_path);
    free(st->user);
    free(st->password);
    free(st->pattern);
    free(st->master);
    free(st->command.p);
    sentinel_free(st->sentinel); /* before the TLS context its connections use */
    tls_unref(st->tls);
    free(st);
}

int store_random_token(char out[33])
{
    unsigned char raw[16];
    if (random_bytes(raw, sizeof(raw)) != IDEM_OK)
        return IDEM_ERR;
    hex_encode(raw, sizeof(raw), out);
    return IDEM_OK;
}
