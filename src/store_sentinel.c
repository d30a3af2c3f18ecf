/*
 * store_sentinel.c - finds the primary of a Redis Sentinel set-up and
 * follows its failovers (SPEC §8). One per store, so per worker loop.
 *
 *   ask:    sentinel[i] --connect, AUTH?, SENTINEL get-master-addr-by-name M--> ip, port
 *           an error, nil or no answer within redis_timeout: sentinel[i+1]; after a
 *           whole round without an answer, the next round after a backoff (250 ms
 *           doubling to 2 s)
 *   watch:  one link to a sentinel SUBSCRIBEd to +switch-master; a message for M
 *           names the new primary. When the link drops, the next sentinel is
 *           watched and the primary asked for again: a switch may have been missed.
 *
 * Either way the answer goes to the store (sentinel_primary_fn), which checks
 * with ROLE that the address really is the primary before it sends anything
 * there; a primary that says otherwise, READONLY, LOADING or MASTERDOWN makes
 * the store call sentinel_rediscover().
 *
 * Connections (redis_conn, TLS with redis_tls) carry the sentinel in their
 * data pointer; one let go on purpose has it cleared first, so its
 * remaining callbacks (pending replies are answered NULL) do nothing.
 */
#include "store_sentinel.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "redis_conn.h"

#define ASK_BACKOFF_MIN_MS 250
#define ASK_BACKOFF_MAX_MS 2000

struct sentinel {
    struct event_base *base;
    struct flusher *flusher;
    struct tls *tls; /* redis_tls: sentinels speak TLS too; else NULL */
    char *master;
    int n;
    char **ips, **ports;
    char **names; /* as configured: what TLS checks */
    char *user, *password;
    uint64_t timeout_ms;
    sentinel_primary_fn on_primary;
    void *arg;

    struct redis_conn *ask; /* the sentinel being asked, or NULL */
    int ask_next;           /* the sentinel to ask next */
    int ask_failures;       /* in a row, this round */
    uint64_t backoff_ms;
    struct event *ask_timer; /* the answer's deadline, or the next attempt */
    bool asking;             /* an attempt runs or is scheduled */
    uint64_t answered_at_ms; /* monotonic: the last answer */
    bool ask_failed_logged;  /* said once until a sentinel answers */

    struct redis_conn *watch; /* SUBSCRIBEd to +switch-master, or NULL */
    int watch_next;
    bool watch_lost_logged; /* said once per outage */
    uint64_t watch_backoff_ms;
    struct event *watch_timer; /* reconnects the watch */
};

/* host:port's first address, numeric, into *out (replacing it). */
static int resolve_numeric(const char *what, const char *host, const char *port, char **out,
                           char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    char ip[NI_MAXHOST];
    if (rc == 0)
        rc = getnameinfo(res->ai_addr, res->ai_addrlen, ip, sizeof(ip), NULL, 0, NI_NUMERICHOST);
    if (res != NULL)
        freeaddrinfo(res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve %s: %s", what, host, gai_strerror(rc));
        return IDEM_ERR;
    }
    free(*out);
    *out = xstrdup(ip);
    return IDEM_OK;
}

int store_resolve(struct config *cfg, char *err, size_t errlen)
{
    if (cfg->redis_host != NULL && cfg->sentinel_master == NULL && cfg->ncluster_seeds == 0 &&
        resolve_numeric("redis", cfg->redis_host, cfg->redis_port, &cfg->redis_ip, err, errlen) !=
            IDEM_OK)
        return IDEM_ERR;
    for (int i = 0; i < cfg->nsentinels; i++) {
        struct redis_addr *a = &cfg->sentinels[i];
        if (resolve_numeric("redis_sentinel", a->host, a->port, &a->ip, err, errlen) != IDEM_OK)
            return IDEM_ERR;
    }
    for (int i = 0; i < cfg->ncluster_seeds; i++) {
        struct redis_addr *a = &cfg->cluster_seeds[i];
        if (resolve_numeric("redis_cluster", a->host, a->port, &a->ip, err, errlen) != IDEM_OK)
            return IDEM_ERR;
    }
    return IDEM_OK;
}

static void ignore_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    (void)reply;
    (void)privdata;
}

static void auth(const struct sentinel *s, struct redis_conn *ac)
{
    if (s->password && s->user)
        redis_conn_command(ac, ignore_reply, NULL, "AUTH %s %s", s->user, s->password);
    else if (s->password)
        redis_conn_command(ac, ignore_reply, NULL, "AUTH %s", s->password);
}

/* A connection's data is its sentinel; cleared when we let it go. */
static struct sentinel *owner_of(const struct redis_conn *ac)
{
    return redis_conn_data(ac);
}

static struct redis_conn *connect_to(struct sentinel *s, int i, redis_event_fn on_ended)
{
    struct redis_endpoint ep = {
        .ip = s->ips[i], .name = s->names[i], .port = s->ports[i], .tls = s->tls};
    char why[256];
    struct redis_conn *ac =
        redis_conn_new(s->base, s->flusher, &ep, NULL, on_ended, s, why, sizeof(why));
    if (ac == NULL)
        log_warn("redis sentinel %s:%s: %s", s->ips[i], s->ports[i], why);
    return ac;
}

/* Closed now (or when the current callback returns); its remaining
 * callbacks find no sentinel. */
static void let_go(struct redis_conn *ac)
{
    redis_conn_set_data(ac, NULL);
    redis_conn_close(ac);
}

/* ---- asking ------------------------------------------------------------- */

static void ask_schedule(struct sentinel *s, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->ask_timer, &tv);
}

/* This attempt failed: the next sentinel now, or the next round later. */
static void ask_failed(struct sentinel *s, const char *why)
{
    int i = (s->ask_next + s->n - 1) % s->n;
    if (!s->ask_failed_logged)
        log_warn("redis sentinel %s:%s: no primary for %s from it: %s; asking the others",
                 s->ips[i], s->ports[i], s->master, why);
    else
        log_debug("redis sentinel %s:%s: no primary for %s from it: %s", s->ips[i], s->ports[i],
                  s->master, why);
    s->ask_failed_logged = true;
    if (s->ask != NULL) {
        struct redis_conn *ac = s->ask;
        s->ask = NULL;
        let_go(ac);
    }
    if (++s->ask_failures < s->n) {
        ask_schedule(s, 0);
        return;
    }
    s->ask_failures = 0;
    ask_schedule(s, s->backoff_ms);
    s->backoff_ms = s->backoff_ms * 2 > ASK_BACKOFF_MAX_MS ? ASK_BACKOFF_MAX_MS : s->backoff_ms * 2;
}

static void on_master_addr(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct sentinel *s = owner_of(ac);
    const redisReply *r = reply;
    if (s == NULL || s->ask != ac)
        return;
    if (r == NULL) {
        ask_failed(s, "connection lost");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        ask_failed(s, r->str);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        ask_failed(s, "it does not know the master name");
        return;
    }
    char ip[256], port[16];
    snprintf(ip, sizeof(ip), "%s", r->element[0]->str);
    snprintf(port, sizeof(port), "%s", r->element[1]->str);
    evtimer_del(s->ask_timer);
    s->ask = NULL;
    s->asking = false;
    s->answered_at_ms = now_monotonic_ms();
    s->ask_failed_logged = false;
    s->ask_failures = 0;
    s->backoff_ms = ASK_BACKOFF_MIN_MS;
    let_go(ac);
    s->on_primary(s->arg, ip, port);
}

static void on_ask_ended(struct redis_conn *ac, const char *why)
{
    struct sentinel *s = owner_of(ac);
    redis_conn_set_data(ac, NULL); /* it frees itself after this */
    if (s == NULL || s->ask != ac)
        return;
    s->ask = NULL;
    ask_failed(s, why);
}

static void ask_start(struct sentinel *s)
{
    int i = s->ask_next;
    s->ask_next = (i + 1) % s->n;
    struct redis_conn *ac = connect_to(s, i, on_ask_ended);
    if (ac == NULL) {
        ask_failed(s, "cannot connect");
        return;
    }
    s->ask = ac;
    auth(s, ac);
    redis_conn_command(ac, on_master_addr, NULL, "SENTINEL get-master-addr-by-name %s", s->master);
    ask_schedule(s, s->timeout_ms); /* the deadline */
}

static void on_ask_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sentinel *s = arg;
    if (s->ask != NULL) {
        ask_failed(s, "no answer within redis_timeout");
        return;
    }
    ask_start(s);
}

/* At most one round of asking per ASK_BACKOFF_MIN_MS: a primary that is
 * down, and not yet replaced, fails every reconnect, and each failure asks. */
void sentinel_rediscover(struct sentinel *s)
{
    if (s->asking)
        return;
    s->asking = true;
    s->ask_failures = 0;
    uint64_t since = now_monotonic_ms() - s->answered_at_ms;
    ask_schedule(s, since >= ASK_BACKOFF_MIN_MS ? 0 : ASK_BACKOFF_MIN_MS - since);
}

/* ---- watching ----------------------------------------------------------- */

static void watch_schedule(struct sentinel *s, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->watch_timer, &tv);
}

static void watch_lost(struct sentinel *s, const char *why)
{
    int i = (s->watch_next + s->n - 1) % s->n;
    if (!s->watch_lost_logged)
        log_warn("redis sentinel %s:%s: watch for +switch-master lost (%s); watching another and "
                 "asking for the primary again",
                 s->ips[i], s->ports[i], why);
    else
        log_debug("redis sentinel %s:%s: cannot watch +switch-master: %s", s->ips[i], s->ports[i],
                  why);
    s->watch_lost_logged = true;
    s->watch = NULL;
    watch_schedule(s, s->watch_backoff_ms);
    s->watch_backoff_ms =
        s->watch_backoff_ms * 2 > ASK_BACKOFF_MAX_MS ? ASK_BACKOFF_MAX_MS : s->watch_backoff_ms * 2;
    sentinel_rediscover(s);
}

/* SUBSCRIBE's confirmation: the watch is up. */
static void watch_up(struct sentinel *s)
{
    int i = (s->watch_next + s->n - 1) % s->n;
    if (s->watch_lost_logged)
        log_warn("redis sentinel %s:%s: watching +switch-master again", s->ips[i], s->ports[i]);
    s->watch_lost_logged = false;
    s->watch_backoff_ms = ASK_BACKOFF_MIN_MS;
}

/* "+switch-master" payload: "MASTER OLD-IP OLD-PORT NEW-IP NEW-PORT". */
static void on_switch(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct sentinel *s = owner_of(ac);
    const redisReply *r = reply;
    if (s == NULL || s->watch != ac || r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) { /* SUBSCRIBE refused (sentinel ACLs) */
        let_go(ac);
        watch_lost(s, r->str);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        watch_up(s);
        return;
    }
    if (strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[256], old_ip[256], old_port[16], ip[256], port[16];
    if (sscanf(r->element[2]->str, "%255s %255s %15s %255s %15s", name, old_ip, old_port, ip,
               port) != 5 ||
        strcmp(name, s->master) != 0)
        return;
    s->on_primary(s->arg, ip, port);
}

static void on_watch_ended(struct redis_conn *ac, const char *why)
{
    struct sentinel *s = owner_of(ac);
    redis_conn_set_data(ac, NULL); /* it frees itself after this */
    if (s == NULL || s->watch != ac)
        return;
    watch_lost(s, why);
}

static void on_watch_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sentinel *s = arg;
    int i = s->watch_next;
    s->watch_next = (i + 1) % s->n;
    struct redis_conn *ac = connect_to(s, i, on_watch_ended);
    if (ac == NULL) {
        watch_schedule(s, ASK_BACKOFF_MAX_MS);
        return;
    }
    s->watch = ac;
    auth(s, ac);
    redis_conn_subscribe(ac, on_switch, NULL, "SUBSCRIBE +switch-master");
}

/* ---- lifecycle ---------------------------------------------------------- */

struct sentinel *sentinel_new(struct event_base *base, struct flusher *flusher,
                              const struct config *cfg, struct tls *tls,
                              sentinel_primary_fn on_primary, void *arg)
{
    struct sentinel *s = xcalloc(1, sizeof(*s));
    s->base = base;
    s->flusher = flusher;
    s->tls = tls;
    s->master = xstrdup(cfg->sentinel_master);
    s->n = cfg->nsentinels;
    s->ips = xcalloc((size_t)s->n, sizeof(*s->ips));
    s->ports = xcalloc((size_t)s->n, sizeof(*s->ports));
    s->names = xcalloc((size_t)s->n, sizeof(*s->names));
    for (int i = 0; i < s->n; i++) {
        const struct redis_addr *a = &cfg->sentinels[i];
        s->ips[i] = xstrdup(a->ip ? a->ip : a->host);
        s->ports[i] = xstrdup(a->port);
        s->names[i] = xstrdup(a->host);
    }
    s->user = cfg->sentinel_user ? xstrdup(cfg->sentinel_user) : NULL;
    s->password = cfg->sentinel_password ? xstrdup(cfg->sentinel_password) : NULL;
    s->timeout_ms = cfg->redis_timeout_ms;
    s->on_primary = on_primary;
    s->arg = arg;
    s->backoff_ms = ASK_BACKOFF_MIN_MS;
    s->watch_backoff_ms = ASK_BACKOFF_MIN_MS;
    s->ask_timer = evtimer_new(base, on_ask_timer, s);
    s->watch_timer = evtimer_new(base, on_watch_timer, s);
    sentinel_rediscover(s);
    watch_schedule(s, 0);
    return s;
}

static bool str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

bool sentinel_differs(const struct sentinel *s, const struct config *cfg)
{
    if (cfg->sentinel_master == NULL || strcmp(s->master, cfg->sentinel_master) != 0 ||
        s->n != cfg->nsentinels || str_differs(s->user, cfg->sentinel_user) ||
        str_differs(s->password, cfg->sentinel_password))
        return true;
    for (int i = 0; i < s->n; i++) {
        const struct redis_addr *a = &cfg->sentinels[i];
        if (str_differs(s->ips[i], a->ip ? a->ip : a->host) || strcmp(s->ports[i], a->port) != 0)
            return true;
    }
    return false;
}

void sentinel_free(struct sentinel *s)
{
    if (s == NULL)
        return;
    struct redis_conn *conns[] = {s->ask, s->watch};
    for (size_t i = 0; i < ARRAY_LEN(conns); i++)
        if (conns[i] != NULL)
            let_go(conns[i]);
    event_free(s->ask_timer);
    event_free(s->watch_timer);
    for (int i = 0; i < s->n; i++) {
        free(s->ips[i]);
        free(s->ports[i]);
        free(s->names[i]);
    }
    free(s->ips);
    free(s->ports);
    free(s->names);
    free(s->master);
    free(s->user);
    if (s->password != NULL)
        explicit_bzero(s->password, strlen(s->password));
    free(s->password);
    free(s);
}
