/*
 * store.c - a store: one Redis target (fixed, or the primary the sentinels
 * name: store_sentinel.c), its two connections and its life. The operations
 * that go out on them are store_ops.c's; what they say is store_keys.c's.
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

void publish_ready(struct store *st)
{
    if (st->ready_flag != NULL)
        *st->ready_flag = st->cmd.state == LINK_READY && !st->replicas_short;
}

static void link_set_state(struct link *l, enum link_state state)
{
    l->state = state;
    if (l == &l->st->cmd)
        publish_ready(l->st);
    if (l == &l->st->cmd && state == LINK_DOWN)
        fail_pending(l->st);
}

static void link_schedule_reconnect(struct link *l)
{
    link_set_state(l, LINK_DOWN);
    l->ac = NULL;
    if (l->st->sentinel != NULL) /* it may have moved */
        sentinel_rediscover(l->st->sentinel);
    struct timeval tv = {(time_t)(l->backoff_ms / 1000),
                         (suseconds_t)(l->backoff_ms % 1000) * 1000};
    evtimer_add(l->reconnect_timer, &tv);
    l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
}

static const char *link_where(const struct link *l)
{
    return l->st->unix_path ? l->st->unix_path : l->st->where;
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
    if (l == &l->st->cmd) {
        check_redis_settings(l);
        send_pending(l->st);
        if (l->st->orphans) {
            struct timeval zero = {0, 0};
            evtimer_add(l->st->orphan_timer, &zero);
        }
    }
    if (l->on_ready)
        l->on_ready(l);
}

static void link_connect(struct link *l)
{
    struct store *st = l->st;
    if (st->host == NULL && st->unix_path == NULL) {
        link_set_state(l, LINK_DOWN); /* on_primary connects it */
        return;
    }
    /* TLS checks the name as configured (a managed service's host name),
     * not the address it resolved to */
    struct redis_endpoint ep = {.ip = st->ip,
                                .name = st->host,
                                .port = st->port,
                                .unix_path = st->unix_path,
                                .tls = st->tls_on ? st->tls : NULL};
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

void link_drop(struct link *l, const char *why)
{
    if (l->ac == NULL)
        return;
    link_report_down(l, why);
    link_close(l);
    link_schedule_reconnect(l);
}

static void link_init(struct store *st, struct link *l, const char *role,
                      void (*on_ready)(struct link *l))
{
    l->st = st;
    l->role = role;
    l->backoff_ms = BACKOFF_MIN_MS;
    l->reconnect_timer = evtimer_new(st->base, on_reconnect_timer, l);
    l->on_ready = on_ready;
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
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "pmessage") != 0)
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
    /* Completions published while we were away are lost: let every parked
     * request look again. */
    for (struct store_watch *w = st->watches; w; w = w->next)
        w->wake_pending = true;
    run_pending_wakes(st);
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
    if (cfg->sentinel_master != NULL) { /* the sentinels will say */
        free(st->host);
        free(st->ip);
        free(st->port);
        free(st->unix_path);
        st->host = st->ip = st->port = st->unix_path = NULL;
        st->master = xstrdup(cfg->sentinel_master);
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
    st->replicas_timer = evtimer_new(base, on_replicas_timer, st);
    st->wait_job.run = send_wait_batch;
    st->pending_tail = &st->pending;
    link_init(st, &st->cmd, "redis", NULL);
    link_init(st, &st->sub, "redis pubsub", on_sub_ready);
    if (cfg->sentinel_master != NULL)
        st->sentinel =
            sentinel_new(base, flusher, cfg, st->tls_on ? st->tls : NULL, on_primary, st);
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
        st->min_replicas_timeout_ms != cfg->redis_min_replicas_timeout_ms)
        return true;
    if (st->sentinel == NULL &&
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
    if (st->cmd.state == LINK_READY) { /* said again at every reload */
        store_health_forget();
        check_redis_settings(&st->cmd);
    }
}

void store_publish_readiness(struct store *st, _Atomic bool *flag)
{
    st->ready_flag = flag;
    publish_ready(st);
}

static void store_free(struct store *st)
{
    /* Queued operations never went out: answered now, as hiredis answers
     * the sent ones below. */
    while (st->pending) {
        struct store_op *op = st->pending;
        st->pending = op->next_queued;
        evtimer_del(op->timer);
        op_answer_error(op, "the store is shutting down");
        op_free(op);
    }
    struct link *links[] = {&st->cmd, &st->sub};
    for (size_t i = 0; i < ARRAY_LEN(links); i++) {
        link_close(links[i]);
        event_free(links[i]->reconnect_timer);
    }
    while (st->watches)
        store_unwatch(st, st->watches);
    event_free(st->orphan_timer);
    event_free(st->replicas_timer);
    flush_cancel(st->flusher, &st->wait_job);
    if (st->wait_batch != NULL) {
        struct wait_batch *b = st->wait_batch;
        st->wait_batch = NULL;
        on_wait_reply(NULL, NULL, b);
    }
    event_free(st->free_event);
    while (st->orphans) {
        struct orphan *o = st->orphans;
        st->orphans = o->next;
        orphan_free(o);
    }
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
