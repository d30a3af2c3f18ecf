/*
 * store_ops.c - the store's operations: one state change of a key each
 * (store.h's store_claim, store_complete, ...), what it sends on a command
 * link (formatted once, RESP; with a cluster, the link of its key's slot's
 * primary: op_route), how its replies are read and when it goes out again
 * in another form (op_next_step) or elsewhere (op_redirect: -MOVED, -ASK),
 * its timeouts, the WAIT batches of redis_min_replicas (one per link), and
 * the claims left behind (orphans). store.c owns the links these go out on.
 *
 *   store_claim() --op_new/op_start--> [pending while connecting] --op_send-->
 *       on_reply --op_next_step?--> op_send again (NOSCRIPT, slow path, legacy)
 *                --answer_claim---> [WAIT batch: confirm] --> caller's callback
 *   timeout / link lost --> op_answer_error (a claim: its owner becomes an orphan)
 */
#include "store_private.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "redis_conn.h"
#include "store_cluster.h"
#include "store_health.h"

/* Room for n more bytes at b->p + b->len. */
static char *bytes_reserve(struct bytes *b, size_t n)
{
    if (b->cap - b->len < n) {
        b->cap = b->cap * 2 > b->len + n ? b->cap * 2 : b->len + n + 256;
        b->p = xrealloc(b->p, b->cap);
    }
    return b->p + b->len;
}

static void bytes_add(struct bytes *b, const void *data, size_t n)
{
    memcpy(bytes_reserve(b, n), data, n);
    b->len += n;
}

/* "<prefix><decimal>\r\n", an array or bulk string header, at w; past it. */
static char *put_header(char *w, char prefix, uint64_t v)
{
    char digits[UINT64_DIGITS];
    char *d = format_u64(v, 10, digits);
    size_t n = (size_t)(digits + sizeof(digits) - d);
    *w++ = prefix;
    memcpy(w, d, n);
    w += n;
    *w++ = '\r';
    *w++ = '\n';
    return w;
}

/* The longest header: prefix, digits, CRLF. */
#define RESP_HEADER_MAX (1 + UINT64_DIGITS + 2)

static void bytes_add_header(struct bytes *b, char prefix, uint64_t v)
{
    char *w = bytes_reserve(b, RESP_HEADER_MAX);
    b->len = (size_t)(put_header(w, prefix, v) - b->p);
}

/* One bulk string: a command's RESP is composed with one reservation and
 * one copy per argument (this runs ~20 times per keyed request). */
static void bytes_add_bulk(struct bytes *b, const char *data, size_t n)
{
    char *w = put_header(bytes_reserve(b, RESP_HEADER_MAX + n + 2), '$', n);
    memcpy(w, data, n);
    w += n;
    *w++ = '\r';
    *w++ = '\n';
    b->len = (size_t)(w - b->p);
}

/* ---- answering ---------------------------------------------------------- */

static void orphan_add(struct store *st, const struct store_op *op);

void op_answer_error(struct store_op *op, const char *error)
{
    if (op->answered)
        return;
    op->answered = true;
    metrics_redis_error();
    if (op->claim_owner)
        orphan_add(op->st, op);
    if (op->confirm_pending) {
        /* Claimed, and the replicas' verdict lost (timeout, connection):
         * a claim a failover could lose is never acted on, not even under
         * on_store_error pass. Given back as an orphan. */
        struct claim_result res = {.state = KEY_STATE_REPLICAS_SHORT, .pttl_ms = -1};
        op->confirm_pending = false;
        op->on_claim(op->arg, &res, NULL);
    } else if (op->on_claim)
        op->on_claim(op->arg, NULL, error);
    else if (op->on_admin)
        op->on_admin(op->arg, NULL, error);
    else
        op->on_update(op->arg, false, error);
}

void op_free(struct store_op *op)
{
    free(op->claim_owner);
    free(op->claim_token_key);
    free(op->claim_quota_key);
    free(op->claim_value);
    free(op->rkey);
    if (event_initialized(op->timer)) /* in op's own allocation (op_new) */
        evtimer_del(op->timer);
    free(op->args.p);
    free(op);
}

/* The native claim's answer: nil (claimed) or the key's value. */
static int read_native_claim(const redisReply *r, struct claim_result *res)
{
    if (r->type == REDIS_REPLY_NIL) {
        memset(res, 0, sizeof(*res));
        res->state = KEY_STATE_CLAIMED;
        res->pttl_ms = -1;
        return IDEM_OK;
    }
    if (r->type != REDIS_REPLY_STRING)
        return IDEM_ERR;
    return keys_read_value(r->str, r->len, -1, res);
}

/* SCRIPT_CLAIM's answer: {'claimed'}, {'invalid'}, {'quota', '', pttl} or
 * {value, pttl}. */
static int read_script_claim(const redisReply *r, struct claim_result *res)
{
    memset(res, 0, sizeof(*res));
    res->pttl_ms = -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return IDEM_ERR;
    const redisReply *first = r->element[0];
    if (r->elements == 1 && strcmp(first->str, "claimed") == 0) {
        res->state = KEY_STATE_CLAIMED;
        return IDEM_OK;
    }
    if (r->elements == 1 && strcmp(first->str, "invalid") == 0) {
        res->state = KEY_STATE_TOKEN_INVALID;
        return IDEM_OK;
    }
    if (r->elements == 3 && strcmp(first->str, "quota") == 0 &&
        r->element[2]->type == REDIS_REPLY_INTEGER) {
        res->state = KEY_STATE_QUOTA;
        res->pttl_ms = r->element[2]->integer;
        return IDEM_OK;
    }
    if (r->elements == 2 && r->element[1]->type == REDIS_REPLY_INTEGER)
        return keys_read_value(first->str, first->len, r->element[1]->integer, res);
    return IDEM_ERR;
}

/* The fields of a hash-layout key (s, f, r) and its PTTL, as a claim reads them. */
static int read_legacy_fields(const redisReply *state, const redisReply *fingerprint,
                              int64_t pttl_ms, const redisReply *record, struct claim_result *res)
{
    memset(res, 0, sizeof(*res));
    if (state->type != REDIS_REPLY_STRING || fingerprint->type != REDIS_REPLY_STRING ||
        record->type != REDIS_REPLY_STRING ||
        keys_read_legacy_state(state->str, &res->state) != IDEM_OK)
        return IDEM_ERR;
    res->fingerprint = fingerprint->str;
    res->fingerprint_len = fingerprint->len;
    res->pttl_ms = pttl_ms;
    if (res->state == KEY_STATE_DONE) {
        res->record = record->str;
        res->record_len = record->len;
    }
    return IDEM_OK;
}

/* SCRIPT_LEGACY's answer: {state, fingerprint, pttl, record}. */
static int read_legacy_claim(const redisReply *r, struct claim_result *res)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[2]->type != REDIS_REPLY_INTEGER)
        return IDEM_ERR;
    return read_legacy_fields(r->element[0], r->element[1], r->element[2]->integer, r->element[3],
                              res);
}

/*
 * SCRIPT_ADMIN's answer (store_keys.h). A value that is not one of ours
 * (another program's key under our prefix) is found, not ours: reported,
 * not an error, so that it can still be deleted.
 */
static int read_admin(const redisReply *r, struct key_admin_result *res)
{
    memset(res, 0, sizeof(*res));
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return IDEM_ERR;
    if (r->elements == 1)
        return strcmp(r->element[0]->str, "none") == 0 ? IDEM_OK : IDEM_ERR;
    if (r->elements < 3 || r->element[1]->type != REDIS_REPLY_INTEGER ||
        r->element[2]->type != REDIS_REPLY_INTEGER)
        return IDEM_ERR;
    res->found = true;
    res->redis_type = r->element[0]->str;
    res->expiry_ms = r->element[1]->integer;
    res->deleted = r->element[2]->integer == 1;
    const redisReply *const *f = (const redisReply *const *)r->element + 3;
    if (r->elements == 4 && f[0]->type == REDIS_REPLY_STRING) {
        res->ours = keys_read_value(f[0]->str, f[0]->len, res->expiry_ms, &res->key) == IDEM_OK;
    } else if (r->elements == 6) {
        res->legacy = true;
        res->ours = read_legacy_fields(f[0], f[1], res->expiry_ms, f[2], &res->key) == IDEM_OK;
    }
    return IDEM_OK;
}

static void answer_admin(struct store_op *op, const redisReply *r)
{
    struct key_admin_result res;
    if (read_admin(r, &res) != IDEM_OK) {
        op_answer_error(op, "unexpected reply to the admin script");
        return;
    }
    op->answered = true;
    op->on_admin(op->arg, &res, NULL);
}

static void answer_claim(struct store_op *op, const redisReply *r)
{
    struct claim_result res;
    int rc = op->native                   ? read_native_claim(r, &res)
             : op->script == SCRIPT_CLAIM ? read_script_claim(r, &res)
                                          : read_legacy_claim(r, &res);
    if (rc != IDEM_OK) {
        log_error("redis: %s: unexpected answer to a claim (not a key of this idemproxy?)",
                  op->rkey);
        op_answer_error(op, "unexpected reply to claim");
        return;
    }
    if (res.state == KEY_STATE_CLAIMED && op->st->min_replicas > 0) {
        op->confirm_pending = true; /* the WAIT sent after it decides */
        return;
    }
    op->answered = true;
    op->on_claim(op->arg, &res, NULL);
}

/*
 * Whether the reply asks for the operation to go out again in another form,
 * which op is switched to: a script Redis has not cached (NOSCRIPT) as EVAL;
 * a native claim that found a key in flight or unknown, through the claim
 * script (which reads the lease left and marks a waiting duplicate); a key
 * of the hash layout (WRONGTYPE), through the legacy read; a legacy read
 * that found no hash any more, natively again. With a cluster, -MOVED and
 * -ASK send it again too (op_redirect). At most OP_STEPS_MAX sends.
 */
static bool op_next_step(struct store_op *op, const redisReply *r)
{
    if (op->answered || ++op->steps >= OP_STEPS_MAX)
        return false;
    bool is_error = r->type == REDIS_REPLY_ERROR;
    if (is_error && !op->native && !op->resent_as_eval && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        log_debug("redis: script %s not cached, sending it again", keys_script_name(op->script));
        op->resent_as_eval = true;
        return true;
    }
    if (op->on_claim == NULL)
        return false;
    if (is_error && op->script != SCRIPT_LEGACY && strstr(r->str, "WRONGTYPE") != NULL) {
        op->native = false;
        op->script = SCRIPT_LEGACY; /* op_send builds its arguments: the claim's stay */
        op->resent_as_eval = false;
        return true;
    }
    if (op->native && r->type == REDIS_REPLY_STRING && r->len > 0 && r->str[0] != 'd') {
        op->native = false; /* SCRIPT_CLAIM: op_send builds its arguments */
        return true;
    }
    if (op->script == SCRIPT_LEGACY && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "retry") == 0) {
        /* as at the start: a token or quota claim goes through the script */
        op->script = SCRIPT_CLAIM;
        op->native = op->native_first;
        op->resent_as_eval = false;
        return true;
    }
    return false;
}

static void op_send(struct store_op *op);
static void claim_script_args(struct store_op *op);
static void queue_remove(struct store_op *op);

/* -MOVED / -ASK (redis_cluster): op goes again where the reply says; a
 * MOVED slot changes the map at once and has the whole map asked again. */
static bool op_redirect(struct store_op *op, const redisReply *r)
{
    struct store *st = op->st;
    unsigned slot;
    char host[256], port[16];
    if (st->cluster == NULL || r->type != REDIS_REPLY_ERROR || op->answered)
        return false;
    enum cluster_redirect kind =
        cluster_parse_redirect(r->str, &slot, host, sizeof(host), port, sizeof(port));
    if (kind == CLUSTER_REDIRECT_NONE || ++op->steps >= OP_STEPS_MAX)
        return false; /* too many: answered as the error it is */
    metrics_redis_redirection(kind == CLUSTER_REDIRECT_ASK);
    const char *ip = host;
    if (ip[0] == '\0' && op->link != NULL && op->link->node >= 0) /* the node that answered */
        ip = st->cluster->nodes[op->link->node].ip;
    int node = cluster_numeric_address(ip) ? cluster_map_node(st->cluster, ip, port, NULL)
                                           : cluster_map_find(st->cluster, ip, port);
    if (node < 0) { /* a host name the map has not given an address yet: ask it */
        cluster_refresh(st);
        return false; /* answered as the error it is */
    }
    log_debug("redis cluster: %s: %s", op->rkey, r->str);
    if (kind == CLUSTER_REDIRECT_MOVED) {
        cluster_map_set_owner(st->cluster, slot, node);
        op->ask_to = NULL;
        cluster_refresh(st);
    } else {
        op->ask_to = node_link(st, node);
    }
    op_send(op);
    return true;
}

uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* How long claims fail at once after one reached too few replicas. */
#define REPLICAS_SHORT_MS 1000

static void arm_replicas_probe(struct link *l)
{
    struct timeval tv = {REPLICAS_SHORT_MS / 1000, (REPLICAS_SHORT_MS % 1000) * 1000};
    evtimer_add(l->replicas_timer, &tv);
}

/* A claim on link l reached too few replicas: claims routed to l fail at
 * once (and /readyz says 503) until a probe's WAIT on l says enough
 * replicas have its writes again. Said once per outage of each link. */
static void replicas_short(struct link *l)
{
    struct store *st = l->st;
    if (l->replicas_short)
        return;
    log_warn("redis %s: fewer replicas than redis_min_replicas (%d) confirm claims: claims %sget "
             "503 and /readyz says 503 until they do (checked every %d ms)",
             l->where, st->min_replicas, st->cluster != NULL ? "of this primary's slots " : "",
             REPLICAS_SHORT_MS);
    l->replicas_short = true;
    publish_ready(st);
    arm_replicas_probe(l);
}

static void replicas_back(struct link *l)
{
    if (!l->replicas_short)
        return;
    log_warn("redis %s: claims reach redis_min_replicas (%d) replicas again", l->where,
             l->st->min_replicas);
    l->replicas_short = false;
    evtimer_del(l->replicas_timer);
    publish_ready(l->st);
}

static void on_replicas_probe(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    struct link *l = privdata;
    const redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer >= l->st->min_replicas)
        replicas_back(l);
    else if (l->replicas_short)
        arm_replicas_probe(l);
}

/* Replicas short: do they have this link's writes now? A link that is
 * down is probed once it is back (a failover may have replaced its node). */
void on_replicas_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct link *l = arg;
    if (l->state != LINK_READY || l->wait_sent != NULL ||
        redis_conn_command(l->ac, on_replicas_probe, l, "WAIT %d %llu", l->st->min_replicas,
                           (unsigned long long)l->st->min_replicas_timeout_ms) != IDEM_OK)
        arm_replicas_probe(l);
}

/* Frees op once it has been answered and no reply is due (hiredis keeps
 * its pointer until then). */
void op_maybe_free(struct store_op *op)
{
    if (op->replies_due == 0 && op->answered)
        op_free(op);
}

static void orphans_release_soon(struct store *st);

/*
 * WAIT's answer, after a claim or a completion (redis_min_replicas): a
 * claim that fewer replicas have is one a failover could lose, so it is
 * given back (owner-checked) and the caller answers 503; a completion is
 * kept (the upstream has executed), the shortfall logged and counted.
 */
static void op_wait_result(struct store_op *op, const redisReply *r)
{
    struct store *st = op->st;
    bool counted = r != NULL && r->type == REDIS_REPLY_INTEGER;
    long long replicas = counted ? r->integer : -1;
    bool enough = counted && replicas >= st->min_replicas;
    if (op->confirm_pending && !op->answered) {
        op->confirm_pending = false;
        if (enough) {
            struct claim_result res = {.state = KEY_STATE_CLAIMED, .pttl_ms = -1};
            replicas_back(op->link);
            op->answered = true;
            op->on_claim(op->arg, &res, NULL);
        } else if (!counted) {
            /* the connection went (a failover): no verdict on the replicas,
             * and no shortfall counted; the claim is not acted on */
            op->confirm_pending = true;
            op_answer_error(op, r == NULL ? "connection to Redis lost" : r->str);
            orphans_release_soon(st);
        } else {
            if (!op->link->replicas_short)
                log_warn("redis: %s: the claim reached %lld of the %d replicas "
                         "redis_min_replicas wants within %llu ms; giving it back",
                         op->rkey, replicas, st->min_replicas,
                         (unsigned long long)st->min_replicas_timeout_ms);
            metrics_redis_shortfall(false);
            struct claim_result res = {.state = KEY_STATE_REPLICAS_SHORT, .pttl_ms = -1};
            op->answered = true;
            orphan_add(st, op); /* given back (owner-checked) at once */
            orphans_release_soon(st);
            replicas_short(op->link);
            op->on_claim(op->arg, &res, NULL);
        }
    } else if (op->script == SCRIPT_COMPLETE && op->applied && counted && !enough) {
        log_warn("redis: %s: the stored response reached %lld of the %d replicas "
                 "redis_min_replicas wants within %llu ms; a failover now could lose it",
                 op->rkey, replicas, st->min_replicas,
                 (unsigned long long)st->min_replicas_timeout_ms);
        metrics_redis_shortfall(true);
    }
}

/*
 * One WAIT covers every write its connection sent before it, so the claims
 * and completions sent in one turn of the loop share one WAIT, sent at the
 * end of that turn (WAIT holds up the commands behind it on the connection:
 * one per request would make every request wait for the ones before).
 */
struct wait_batch {
    struct link *link;
    int n, cap;
    struct store_op **ops;
};

/*
 * Redis runs a connection's commands in order, and a blocked WAIT holds up
 * the ones behind it: two WAITs in flight would make the second's claims
 * wait for both timeouts. So one WAIT is in flight per link (it covers
 * every write sent on it before; with a cluster, each primary's writes are
 * WAITed on that primary); what is written meanwhile waits in the link's
 * open batch, sent when that WAIT answers.
 */
void on_wait_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    struct wait_batch *b = privdata;
    struct link *l = b->link;
    if (l->wait_sent == b) {
        l->wait_sent = NULL;
        if (l->wait_batch != NULL)
            flush_schedule(l->st->flusher, &l->wait_job);
    }
    for (int i = 0; i < b->n; i++) {
        struct store_op *op = b->ops[i];
        op->replies_due--;
        /* Only the WAIT after its latest write speaks for it: a claim
         * redirected (MOVED, ASK) after joining one node's batch is decided
         * by the replicas of the node that took it. */
        if (op->wait_for == b) {
            op->wait_for = NULL;
            op_wait_result(op, reply);
        }
        op_maybe_free(op);
    }
    free(b->ops);
    free(b);
}

/* The end of the turn (or the previous WAIT answered): the open batch's
 * WAIT goes out after its writes. */
void send_wait_batch(struct flush_job *job)
{
    struct link *l = (struct link *)((char *)job - offsetof(struct link, wait_job));
    struct store *st = l->st;
    struct wait_batch *b = l->wait_batch;
    if (b == NULL || l->wait_sent != NULL)
        return; /* sent when the WAIT in flight answers */
    l->wait_batch = NULL;
    if (l->ac == NULL || l->state != LINK_READY ||
        redis_conn_command(l->ac, on_wait_reply, b, "WAIT %d %llu", st->min_replicas,
                           (unsigned long long)st->min_replicas_timeout_ms) != IDEM_OK) {
        on_wait_reply(NULL, NULL, b); /* their writes went with that connection */
        return;
    }
    l->wait_sent = b;
}

/* op's write, just sent on op->link, waits for that link's WAIT this turn. */
static void op_join_wait(struct store_op *op)
{
    struct link *l = op->link;
    struct wait_batch *b = l->wait_batch;
    if (b == NULL) {
        b = l->wait_batch = xcalloc(1, sizeof(*b));
        b->link = l;
        flush_schedule(l->st->flusher, &l->wait_job);
    }
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->ops = xrealloc(b->ops, (size_t)b->cap * sizeof(*b->ops));
    }
    b->ops[b->n++] = op;
    op->replies_due++;
    op->wait_for = b;
}

/* A failover under way: this server takes no writes (a demoted primary, a
 * replica loading its data, a primary that lost its replicas' quorum). */
static bool not_the_primary(const char *error)
{
    return strncmp(error, "READONLY", 8) == 0 || strncmp(error, "LOADING", 7) == 0 ||
           strncmp(error, "MASTERDOWN", 10) == 0;
}

/* A cluster that cannot serve the slot now (no quorum, a slot without a
 * primary, a resharding under way): the map is asked again. */
static bool cluster_busy(const char *error)
{
    return strncmp(error, "CLUSTERDOWN", 11) == 0 || strncmp(error, "TRYAGAIN", 8) == 0;
}

static void on_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    struct store_op *op = privdata;
    redisReply *r = reply;
    op->replies_due--;
    if (r == NULL) {
        op_answer_error(op, "connection to Redis lost");
        op_maybe_free(op);
        return;
    }
    if (op_redirect(op, r)) {
        op_maybe_free(op); /* a resend that could not go out has failed it */
        return;
    }
    if (op_next_step(op, r)) {
        op_send(op);
        op_maybe_free(op); /* a resend that could not go out has failed it */
        return;
    }
    if (r->type != REDIS_REPLY_ERROR && !op->answered)
        metrics_redis_latency(now_us() - op->started_us);
    if (r->type == REDIS_REPLY_ERROR) {
        /* and, with sentinels or a cluster, asks where the primary is again */
        if (not_the_primary(r->str) && op->link != NULL && op->sent_on == op->link->ac)
            link_drop(op->link, r->str);
        if (cluster_busy(r->str))
            cluster_refresh(op->st);
        if (strncmp(r->str, "OOM", 3) == 0)
            store_health_note_oom(r->str);
        else if (cluster_busy(r->str))
            log_warn("redis cluster: %s: %s", op->rkey, r->str);
        else if (!not_the_primary(r->str))
            log_error("redis: %s failed: %s", op->native ? "claim" : keys_script_name(op->script),
                      r->str);
        free(op->claim_owner); /* it did not run: nothing to clean up */
        op->claim_owner = NULL;
        op_answer_error(op, r->str);
    } else if (!op->answered && op->on_claim) {
        answer_claim(op, r);
    } else if (!op->answered && op->on_admin) {
        answer_admin(op, r);
    } else if (!op->answered) {
        op->answered = true;
        op->applied = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        op->on_update(op->arg, op->applied, NULL);
    }
    op_maybe_free(op);
}

/* ---- operations --------------------------------------------------------- */

static void on_op_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_op *op = arg;
    if (op->answered)
        return;      /* waiting for its batch's WAIT only: WAIT has its own timeout */
    if (op->queue) { /* not sent (this time): the connection is not to blame */
        queue_remove(op);
        free(op->claim_owner); /* a redirected claim did not run either: nothing to clean up */
        op->claim_owner = NULL;
        op_answer_error(op, "timed out waiting for the connection to Redis");
        op_maybe_free(op); /* a WAIT after an earlier send may still be due */
        return;
    }
    op_answer_error(op, "timed out");
    /* Only the connection it went out on is to blame: after a reload that
     * is a retired one, which ends by itself. */
    if (op->link != NULL && op->sent_on != NULL && op->sent_on == op->link->ac)
        link_drop(op->link, "a command timed out (redis_timeout)");
}

static void on_op_unreachable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_op *op = arg;
    free(op->claim_owner); /* never sent: nothing to clean up */
    op->claim_owner = NULL;
    if (op->refused_short && !op->answered) {
        struct claim_result res = {.state = KEY_STATE_REPLICAS_SHORT, .pttl_ms = -1};
        op->answered = true;
        op->on_claim(op->arg, &res, NULL);
    } else {
        op_answer_error(op, "Redis is unreachable");
    }
    op_maybe_free(op); /* a resend's: the replies to what went before may be due */
}

/* Fails op on the next loop turn: a caller never sees its callback run
 * inside the call that started the operation. */
static void op_fail_later(struct store_op *op)
{
    if (event_initialized(op->timer))
        evtimer_del(op->timer);
    evtimer_assign(op->timer, op->st->base, on_op_unreachable, op);
    struct timeval zero = {0, 0};
    evtimer_add(op->timer, &zero);
}

/* ---- queues ------------------------------------------------------------ */

void queue_init(struct op_queue *q)
{
    q->head = NULL;
    q->tail = &q->head;
}

static void queue_push(struct op_queue *q, struct store_op *op)
{
    op->queue = q;
    op->next_queued = NULL;
    *q->tail = op;
    q->tail = &op->next_queued;
}

static void queue_remove(struct store_op *op)
{
    struct op_queue *q = op->queue;
    struct store_op **pp = &q->head;
    while (*pp != op)
        pp = &(*pp)->next_queued;
    *pp = op->next_queued;
    if (q->tail == &op->next_queued)
        q->tail = pp;
    op->queue = NULL;
}

/* Takes q's operations out, in order, for the caller to walk: sending one
 * may queue it again (in q or elsewhere). */
static struct store_op *queue_take(struct op_queue *q)
{
    struct store_op *list = q->head;
    queue_init(q);
    for (struct store_op *op = list; op != NULL; op = op->next_queued)
        op->queue = NULL;
    return list;
}

/* Empties q, passing each operation to fn in order. */
static void queue_drain(struct op_queue *q, void (*fn)(struct store_op *op))
{
    struct store_op *op = queue_take(q);
    while (op != NULL) {
        struct store_op *next = op->next_queued;
        fn(op);
        op = next;
    }
}

void queue_send(struct op_queue *q)
{
    queue_drain(q, op_send);
}

void queue_fail(struct op_queue *q)
{
    queue_drain(q, op_fail_later);
}

/* ---- sending ------------------------------------------------------------ */

/* Where op goes now: after -ASK the node named, this once; with a cluster
 * its slot's primary (NULL: none known); else the one command link. */
static struct link *op_route(const struct store_op *op)
{
    struct store *st = op->st;
    if (op->ask_to != NULL)
        return op->ask_to;
    if (st->cluster == NULL)
        return &st->cmd;
    int node = st->cluster->owner[op->slot];
    return node >= 0 ? node_link(st, node) : NULL;
}

static void on_asking_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    (void)reply; /* refused: the command after it says so */
    (void)privdata;
}

/*
 * Sends op where it goes now. While that link connects (with a cluster,
 * the first use of a node connects it) op waits for it; before a cluster's
 * first map, for the map. A link that is down, or a slot without a primary,
 * fails op on the next loop turn (a cluster asks for the map again).
 */
static void op_send(struct store_op *op)
{
    struct store *st = op->st;
    struct link *l = op_route(op);
    if (l == NULL && !st->cluster->loaded) {
        queue_push(&st->unrouted, op);
        return;
    }
    if (l != NULL && st->cluster != NULL)
        link_use(l);
    if (l != NULL && l->state == LINK_CONNECTING) {
        op->link = l;
        queue_push(&l->pending, op);
        return;
    }
    if (l == NULL || l->ac == NULL || l->state != LINK_READY) {
        cluster_refresh(st);
        op_fail_later(op); /* a resend after the link went down */
        return;
    }
    if (op->on_claim != NULL && l->replicas_short) {
        op->refused_short = true; /* 503 even under on_store_error pass */
        op_fail_later(op);
        return;
    }
    /* Formatted here, once, into a buffer the store reuses: hiredis copies it. */
    struct bytes *cmd = &st->command;
    cmd->len = 0;
    if (op->native) {
        /* SET key value NX PX ms GET: claims an absent key, returns a present one */
        char digits[UINT64_DIGITS];
        char *px = format_u64(op->claim_px, 10, digits);
        bytes_add_header(cmd, '*', 7);
        bytes_add_bulk(cmd, "SET", 3);
        bytes_add_bulk(cmd, op->rkey, strlen(op->rkey));
        bytes_add_bulk(cmd, op->claim_value, strlen(op->claim_value));
        bytes_add_bulk(cmd, "NX", 2);
        bytes_add_bulk(cmd, "PX", 2);
        bytes_add_bulk(cmd, px, (size_t)(digits + sizeof(digits) - px));
        bytes_add_bulk(cmd, "GET", 3);
    } else {
        const char *verb = op->resent_as_eval ? "EVAL" : "EVALSHA";
        const char *body =
            op->resent_as_eval ? keys_script_source(op->script) : st->sha[op->script];
        bool legacy = op->script == SCRIPT_LEGACY; /* its own arguments: the key, will wait */
        if (op->script == SCRIPT_CLAIM && !op->claim_args_ready)
            claim_script_args(op);
        char digits[UINT64_DIGITS];
        char *numkeys = format_u64(legacy ? 1 : (uint64_t)op->nkeys, 10, digits);
        bytes_add_header(cmd, '*', legacy ? 5 : (uint64_t)op->nargs + 4);
        bytes_add_bulk(cmd, verb, strlen(verb));
        bytes_add_bulk(cmd, body, strlen(body));
        bytes_add_bulk(cmd, numkeys, (size_t)(digits + sizeof(digits) - numkeys));
        bytes_add_bulk(cmd, op->rkey, strlen(op->rkey));
        if (legacy)
            bytes_add_bulk(cmd, op->claim_will_wait ? "1" : "0", 1);
        else
            bytes_add(cmd, op->args.p, op->args.len);
    }
    /* the target takes the slot it is importing for one command */
    if (op->ask_to != NULL &&
        redis_conn_command(l->ac, on_asking_reply, NULL, "ASKING") != IDEM_OK) {
        op->ask_to = NULL;
        op_fail_later(op);
        return;
    }
    op->ask_to = NULL;
    if (redis_conn_send(l->ac, on_reply, op, cmd->p, cmd->len) != IDEM_OK) {
        op_fail_later(op);
        return;
    }
    op->replies_due++;
    op->link = l;
    op->sent_on = l->ac;
    /* redis_min_replicas: WAIT at the end of this turn, in the same round trip */
    if (st->min_replicas > 0 && (op->on_claim != NULL || op->script == SCRIPT_COMPLETE))
        op_join_wait(op);
}

static void op_start(struct store *st, struct store_op *op)
{
    if (st->cluster != NULL)
        op->slot = cluster_key_slot(op->rkey, strlen(op->rkey));
    evtimer_assign(op->timer, st->base, on_op_timeout, op);
    op->started_us = now_us();
    struct timeval tv = {(time_t)(st->timeout_ms / 1000),
                         (suseconds_t)(st->timeout_ms % 1000) * 1000};
    evtimer_add(op->timer, &tv);
    op_send(op);
}

static void op_arg(struct store_op *op, const char *data, size_t len)
{
    bytes_add_bulk(&op->args, data, len);
    op->nargs++;
}

static struct store_op *op_new(struct store *st, enum script_id script, const char *rkey)
{
    /* One allocation for the op and its timer. */
    struct store_op *op = xcalloc(1, sizeof(*op) + event_get_struct_event_size());
    op->timer = (struct event *)(op + 1);
    op->st = st;
    op->script = script;
    op->rkey = xstrdup(rkey);
    op->nkeys = 1;
    return op;
}

/* One more key (before any argument): the script sees KEYS[2], KEYS[3]... */
static void op_extra_key(struct store_op *op, const char *key)
{
    op->nkeys++;
    op_arg(op, key, strlen(key));
}

static void op_arg_u64(struct store_op *op, uint64_t v)
{
    char digits[UINT64_DIGITS];
    char *p = format_u64(v, 10, digits);
    op_arg(op, p, (size_t)(digits + sizeof(digits) - p));
}

/* The claim script's keys and arguments, after numkeys and the key: built
 * only when a claim goes through the script (a token, a quota, a key found
 * in flight), so the native claim of a new key composes one command. */
static void claim_script_args(struct store_op *op)
{
    if (op->claim_token_key)
        op_extra_key(op, op->claim_token_key);
    if (op->claim_quota_key)
        op_extra_key(op, op->claim_quota_key);
    op_arg(op, op->claim_value, strlen(op->claim_value));
    op_arg_u64(op, op->claim_px);
    op_arg(op, op->claim_will_wait ? "1" : "0", 1);
    op_arg_u64(op, op->claim_quota_key ? op->claim_max_keys : 0);
    op_arg_u64(op, op->claim_quota_window_ms);
    op->claim_args_ready = true;
}

/* Natively unless a token or a quota must be checked in the same atomic
 * step: then through the claim script at once. */
void store_claim(struct store *st, const struct claim_request *req, store_claim_cb cb, void *arg)
{
    struct store_op *op = op_new(st, SCRIPT_CLAIM, req->rkey);
    op->on_claim = cb;
    op->arg = arg;
    op->claim_value = keys_inflight_value(req->owner, req->fingerprint, req->unknown_ttl_ms);
    op->claim_px = req->lock_ttl_ms + req->unknown_ttl_ms;
    op->claim_will_wait = req->will_wait;
    op->native = op->native_first = req->token_key == NULL && req->quota_key == NULL;
    op->claim_quota_key = req->quota_key ? xstrdup(req->quota_key) : NULL;
    op->claim_max_keys = req->max_keys;
    op->claim_quota_window_ms = req->quota_window_ms;
    op->claim_owner = xstrdup(req->owner);
    op->claim_token_key = req->token_key ? xstrdup(req->token_key) : NULL;
    op_start(st, op);
}

void store_new_token(struct store *st, const char *token_key, uint64_t ttl_ms, store_update_cb cb,
                     void *arg)
{
    struct store_op *op = op_new(st, SCRIPT_TOKEN, token_key);
    op->on_update = cb;
    op->arg = arg;
    op_arg_u64(op, ttl_ms);
    op_start(st, op);
}

/* An owner-checked script: argv is the owner token, then the extra args. */
static struct store_op *owner_op(struct store *st, enum script_id script, const char *rkey,
                                 const char *owner, store_update_cb cb, void *arg)
{
    struct store_op *op = op_new(st, script, rkey);
    op->on_update = cb;
    op->arg = arg;
    op_arg(op, owner, strlen(owner));
    return op;
}

void store_complete(struct store *st, const char *rkey, const char *owner, const char *fingerprint,
                    const char *record, size_t record_len, uint64_t ttl_ms, store_update_cb cb,
                    void *arg)
{
    struct store_op *op = owner_op(st, SCRIPT_COMPLETE, rkey, owner, cb, arg);
    /* the done value, "d:" fingerprint ":" record, written as one bulk
     * string straight into args, which is sized for it and the ttl once */
    size_t n = keys_done_prefix_len(fingerprint);
    char *w =
        bytes_reserve(&op->args, 2 * RESP_HEADER_MAX + n + record_len + 2 + UINT64_DIGITS + 2);
    w = put_header(w, '$', n + record_len);
    w += keys_done_prefix(fingerprint, w);
    memcpy(w, record, record_len);
    w += record_len;
    *w++ = '\r';
    *w++ = '\n';
    op->args.len = (size_t)(w - op->args.p);
    op->nargs++;
    op_arg_u64(op, ttl_ms);
    op_start(st, op);
}

void store_release(struct store *st, const char *rkey, const char *owner, const char *token_key,
                   uint64_t token_ttl_ms, store_update_cb cb, void *arg)
{
    struct store_op *op = op_new(st, SCRIPT_RELEASE, rkey);
    op->on_update = cb;
    op->arg = arg;
    if (token_key)
        op_extra_key(op, token_key);
    op_arg(op, owner, strlen(owner));
    op_arg_u64(op, token_ttl_ms);
    op_start(st, op);
}

void store_admin(struct store *st, const char *rkey, enum keys_admin_action action,
                 store_admin_cb cb, void *arg)
{
    struct store_op *op = op_new(st, SCRIPT_ADMIN, rkey);
    op->on_admin = cb;
    op->arg = arg;
    const char *what = keys_admin_action_arg(action);
    op_arg(op, what, strlen(what));
    op_start(st, op);
}

void store_renew(struct store *st, const char *rkey, const char *owner, uint64_t lock_ttl_ms,
                 uint64_t unknown_ttl_ms, store_update_cb cb, void *arg)
{
    struct store_op *op = owner_op(st, SCRIPT_RENEW, rkey, owner, cb, arg);
    op_arg_u64(op, lock_ttl_ms + unknown_ttl_ms);
    op_start(st, op);
}

void store_mark_unknown(struct store *st, const char *rkey, const char *owner,
                        const char *fingerprint, uint64_t unknown_ms, store_update_cb cb, void *arg)
{
    struct store_op *op = owner_op(st, SCRIPT_UNKNOWN, rkey, owner, cb, arg);
    char *value = keys_unknown_value(fingerprint);
    op_arg(op, value, strlen(value));
    free(value);
    op_arg_u64(op, unknown_ms);
    op_start(st, op);
}

/* ---- claims left behind ------------------------------------------------- */

static void orphan_add(struct store *st, const struct store_op *op)
{
    if (st->norphans >= ORPHAN_MAX) {
        log_warn("redis: too many unanswered claims to clean up; %s, if it was claimed, reads "
                 "as in flight, then unknown until unknown_ttl passes",
                 op->rkey);
        return;
    }
    struct orphan *o = xcalloc(1, sizeof(*o));
    o->rkey = xstrdup(op->rkey);
    o->owner = xstrdup(op->claim_owner);
    o->token_key = op->claim_token_key ? xstrdup(op->claim_token_key) : NULL;
    o->st = st;
    o->next = st->orphans;
    st->orphans = o;
    st->norphans++;
}

static void orphan_free(struct orphan *o)
{
    free(o->rkey);
    free(o->owner);
    free(o->token_key);
    free(o);
}

static void orphan_unlink(struct orphan *o)
{
    struct store *st = o->st;
    for (struct orphan **pp = &st->orphans; *pp; pp = &(*pp)->next) {
        if (*pp == o) {
            *pp = o->next;
            st->norphans--;
            orphan_free(o);
            return;
        }
    }
}

/* A release that got no answer (a timeout, a link down, a node frozen with
 * the claim in its input) is no try: the claim may land whenever that node
 * reads again, so only answers count. */
static void on_orphan_released(void *arg, bool applied, const char *error)
{
    struct orphan *o = arg;
    o->releasing = false;
    if (o->st == NULL) { /* its store has gone meanwhile (orphans_free) */
        orphan_free(o);
        return;
    }
    if (error != NULL)
        return;
    if (applied)
        log_info("redis: released a claim whose reply was lost (the key is free again)");
    o->last_answer_us = now_us();
    if (applied || ++o->answers >= ORPHAN_ATTEMPTS)
        orphan_unlink(o);
}

/* The store is going: orphans go with it, except those a release is on
 * its way for (a release failed on a later loop turn may be answered after
 * the store is freed): they are let go, and their answer frees them. */
void orphans_free(struct store *st)
{
    while (st->orphans) {
        struct orphan *o = st->orphans;
        st->orphans = o->next;
        if (o->releasing)
            o->st = NULL;
        else
            orphan_free(o);
    }
    st->norphans = 0;
}

/* Orphans are released on the next loop turn when the store can send, else
 * when a link is up again. */
static void orphans_release_soon(struct store *st)
{
    struct timeval zero = {0, 0};
    if (store_can_send(st))
        evtimer_add(st->orphan_timer, &zero);
}

/* Sends a release for every orphan that has none on its way. An orphan
 * goes when a release frees its claim, or after ORPHAN_ATTEMPTS answers
 * that it is not there, at least a second apart (the lost claim may still
 * sit in Redis' input behind the first), however often the timer runs. */
void on_orphan_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store *st = arg;
    if (!store_can_send(st))
        return; /* the next ready link re-arms us */
    uint64_t now = now_us();
    for (struct orphan *o = st->orphans; o; o = o->next) {
        if (o->releasing || (o->answers > 0 && now - o->last_answer_us < 1000000))
            continue;
        o->releasing = true; /* until its answer, which may come after the store's end */
        store_release(st, o->rkey, o->owner, o->token_key, st->token_ttl_ms, on_orphan_released, o);
    }
    /* Again later: the lost claim may still sit in Redis' input behind us. */
    if (st->orphans) {
        struct timeval tv = {1, 0};
        evtimer_add(st->orphan_timer, &tv);
    }
}
