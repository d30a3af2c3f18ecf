/*
 * store.c - the Redis connections of a store and the operations that go out
 * on them; what each operation says (values, scripts) is store_keys.c's.
 *
 * An operation (struct store_op) is one state change of a key: usually one
 * command, sometimes a few in turn (op_next_step: a script Redis has not
 * cached, a claim that takes its slow path), answered once at the end.
 * Scripts run by EVALSHA; a NOSCRIPT answer (a restarted or flushed Redis)
 * re-sends that command once as EVAL, which also caches the script again.
 *
 * Connections: two redis_conns ("links"; TCP, unix or TLS). `cmd` runs the operations;
 * `sub` holds one PSUBSCRIBE on "<key_prefix>*" for waiting duplicates: a
 * claim that will wait marks the key, and complete, release and
 * mark_unknown PUBLISH on the key's name only when it is marked, so keys
 * nobody waits for cost no messages. A link is ready once its AUTH, SELECT
 * and PING have answered; operations started while it connects wait in
 * st->pending and go out then (never before: a refused SELECT would run them
 * in database 0). When a link is down, operations fail on the next loop turn
 * (never inside the call that started them) and a timer reconnects with
 * backoff from 50 ms to 1 s; a connect that has not finished within
 * redis_timeout is given up. Each operation has its own redis_timeout timer:
 * when it fires the operation fails and the connection it went out on is torn
 * down, since a Redis that does not answer in time cannot be trusted to
 * answer the commands queued behind.
 *
 *   link: DOWN --connect--> CONNECTING --AUTH/SELECT/PING ok--> READY
 *          ^                  |  set-up refused, deadline,       |
 *          +------------------+  disconnect        <-------------+
 *
 * A store is one Redis target and is reference-counted (store.h): after a
 * reload that changes the target, the exchanges that began on it keep it
 * alive until they end.
 *
 * Ownership: an op (struct store_op) is allocated per command and freed after
 * hiredis has called its reply callback (hiredis calls every pending callback,
 * with a NULL reply, when the context is freed), so op memory is never
 * released while hiredis may still point at it. The caller's callback runs at
 * most once, guarded by op->answered.
 */
#include "store.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
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
#include "store_keys.h"
#include "store_sentinel.h"
#include "tls.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000

enum link_state { LINK_DOWN, LINK_CONNECTING, LINK_READY };

/*
 * One connection with its own reconnect timer and backoff. The
 * store has two: `cmd` runs the scripts; `sub` holds one PSUBSCRIBE on
 * "<key_prefix>*" and wakes parked duplicates (SPEC §4.4).
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
    bool aof_enabled;  /* INFO persistence said so (cmd link, at each connection) */
    void (*on_ready)(struct link *l);
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

static void bytes_add(struct bytes *b, const void *data, size_t n)
{
    if (b->cap - b->len < n) {
        b->cap = b->cap * 2 > b->len + n ? b->cap * 2 : b->len + n + 256;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

/* "<prefix><decimal>\r\n": an array or bulk string header. */
static void bytes_add_header(struct bytes *b, char prefix, uint64_t v)
{
    char digits[UINT64_DIGITS];
    char *p = format_u64(v, 10, digits);
    bytes_add(b, &prefix, 1);
    bytes_add(b, p, (size_t)(digits + sizeof(digits) - p));
    bytes_add(b, "\r\n", 2);
}

static void bytes_add_bulk(struct bytes *b, const char *data, size_t n)
{
    bytes_add_header(b, '$', n);
    bytes_add(b, data, n);
    bytes_add(b, "\r\n", 2);
}

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
    store_claim_cb on_claim;
    store_update_cb on_update;
    void *arg;
    struct event *timer;
    uint64_t started_us;
    char *claim_owner; /* claims: what an orphan release needs */
    char *claim_token_key;
    bool answered;
    bool resent_as_eval;
    int replies_due;      /* commands sent whose callbacks have not run: freed at 0 */
    bool confirm_pending; /* claimed: answered once the WAIT after it says enough replicas */
    bool applied;         /* an owner-checked change was made */
    bool queued;          /* on st->pending: waits for the link to be ready */
    struct store_op *next_queued;
    const struct redis_conn *sent_on; /* the connection its command went out on */
    int nargs;                        /* bulk strings in args */
    struct bytes args;                /* RESP after the verb and the script: numkeys, keys, ARGV */
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
    int attempts;
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
    /* redis_min_replicas: a claim lately reached too few replicas; until
     * then claims fail at once instead of each waiting WAIT's timeout (which
     * would hold up every command behind it), and /readyz says 503. */
    bool replicas_short;
    struct event *replicas_timer;
    struct wait_batch *wait_batch; /* writes that wait for the next WAIT */
    struct wait_batch *wait_sent;  /* the one WAIT in flight, or NULL */
    struct flush_job wait_job;
    struct link cmd;
    struct link sub;
    /* Operations started while cmd is connecting: sent, in order, once its
     * AUTH, SELECT and PING have answered (never before: a refused SELECT
     * would run them in database 0), failed if it goes down instead. */
    struct store_op *pending, **pending_tail;
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
};

/* ---- answering ---------------------------------------------------------- */

static void orphan_add(struct store *st, const struct store_op *op);

static void op_answer_error(struct store_op *op, const char *error)
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
    else
        op->on_update(op->arg, false, error);
}

static void op_free(struct store_op *op)
{
    free(op->claim_owner);
    free(op->claim_token_key);
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

/* SCRIPT_LEGACY's answer: {state, fingerprint, pttl, record}. */
static int read_legacy_claim(const redisReply *r, struct claim_result *res)
{
    memset(res, 0, sizeof(*res));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[2]->type != REDIS_REPLY_INTEGER || r->element[3]->type != REDIS_REPLY_STRING ||
        keys_read_legacy_state(r->element[0]->str, &res->state) != IDEM_OK)
        return IDEM_ERR;
    res->fingerprint = r->element[1]->str;
    res->fingerprint_len = r->element[1]->len;
    res->pttl_ms = r->element[2]->integer;
    if (res->state == KEY_STATE_DONE) {
        res->record = r->element[3]->str;
        res->record_len = r->element[3]->len;
    }
    return IDEM_OK;
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
 * that found no hash any more, natively again. At most four sends.
 */
static bool op_next_step(struct store_op *op, const redisReply *r)
{
    if (op->answered || ++op->steps >= 4)
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
        op->native = false; /* SCRIPT_CLAIM, whose arguments are ready */
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

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* When Redis last refused a write for lack of memory (ms, monotonic), any
 * worker; 0: never. Read by /readyz and /metrics through store_refusing_writes. */
static _Atomic uint64_t last_oom_ms;

/* How long one OOM answer keeps /readyz at 503: long enough for a load
 * balancer's probe to see it, short enough to recover once Redis has room. */
#define OOM_SIGNAL_MS 10000

/* Redis is full (maxmemory with noeviction): every claim fails until it has
 * room. One warn line per OOM_SIGNAL_MS, not one per request. */
static void note_oom(const char *reply)
{
    uint64_t now = now_monotonic_ms();
    uint64_t last = atomic_exchange(&last_oom_ms, now);
    if (last == 0 || now - last >= OOM_SIGNAL_MS)
        log_warn("redis: refusing writes (%s); requests that need a claim get 503 and /readyz "
                 "says 503 until it has room: raise maxmemory, or lower ttl or "
                 "max_cached_body",
                 reply);
}

bool store_refusing_writes(void)
{
    uint64_t last = atomic_load(&last_oom_ms);
    return last != 0 && now_monotonic_ms() - last < OOM_SIGNAL_MS;
}

static void link_drop(struct link *l, const char *why);

/* How long claims fail at once after one reached too few replicas. */
#define REPLICAS_SHORT_MS 1000

static void publish_ready(struct store *st);

static void arm_replicas_probe(struct store *st)
{
    struct timeval tv = {REPLICAS_SHORT_MS / 1000, (REPLICAS_SHORT_MS % 1000) * 1000};
    evtimer_add(st->replicas_timer, &tv);
}

/* A claim reached too few replicas: claims fail at once (and /readyz says
 * 503) until a probe's WAIT says enough replicas have the connection's
 * writes again. Said once per outage. */
static void replicas_short(struct store *st)
{
    if (st->replicas_short)
        return;
    log_warn("redis: fewer replicas than redis_min_replicas (%d) confirm claims: claims get 503 "
             "and /readyz says 503 until they do (checked every %d ms)",
             st->min_replicas, REPLICAS_SHORT_MS);
    st->replicas_short = true;
    publish_ready(st);
    arm_replicas_probe(st);
}

static void replicas_back(struct store *st)
{
    if (!st->replicas_short)
        return;
    log_warn("redis: claims reach redis_min_replicas (%d) replicas again", st->min_replicas);
    st->replicas_short = false;
    evtimer_del(st->replicas_timer);
    publish_ready(st);
}

static void on_replicas_probe(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    struct store *st = privdata;
    const redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer >= st->min_replicas)
        replicas_back(st);
    else if (st->replicas_short)
        arm_replicas_probe(st);
}

/* Replicas short: do they have this connection's writes now? */
static void on_replicas_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store *st = arg;
    if (st->cmd.state != LINK_READY || st->wait_sent != NULL ||
        redis_conn_command(st->cmd.ac, on_replicas_probe, st, "WAIT %d %llu", st->min_replicas,
                           (unsigned long long)st->min_replicas_timeout_ms) != IDEM_OK)
        arm_replicas_probe(st);
}

/* Frees op once it has been answered and no reply is due (hiredis keeps
 * its pointer until then). */
static void op_maybe_free(struct store_op *op)
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
            replicas_back(st);
            op->answered = true;
            op->on_claim(op->arg, &res, NULL);
        } else if (!counted) {
            /* the connection went (a failover): no verdict on the replicas,
             * and no shortfall counted; the claim is not acted on */
            op->confirm_pending = true;
            op_answer_error(op, r == NULL ? "connection to Redis lost" : r->str);
            orphans_release_soon(st);
        } else {
            if (!st->replicas_short)
                log_warn("redis: %s: the claim reached %lld of the %d replicas "
                         "redis_min_replicas wants within %llu ms; giving it back",
                         op->rkey, replicas, st->min_replicas,
                         (unsigned long long)st->min_replicas_timeout_ms);
            metrics_redis_shortfall(false);
            struct claim_result res = {.state = KEY_STATE_REPLICAS_SHORT, .pttl_ms = -1};
            op->answered = true;
            orphan_add(st, op); /* given back (owner-checked) at once */
            orphans_release_soon(st);
            replicas_short(st);
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
    struct store *st;
    int n, cap;
    struct store_op **ops;
};

/*
 * Redis runs a connection's commands in order, and a blocked WAIT holds up
 * the ones behind it: two WAITs in flight would make the second's claims
 * wait for both timeouts. So one WAIT is in flight per store (it covers
 * every write sent before it); what is written meanwhile waits in the open
 * batch, sent when that WAIT answers.
 */
static void on_wait_reply(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)ac;
    struct wait_batch *b = privdata;
    struct store *st = b->st;
    if (st->wait_sent == b) {
        st->wait_sent = NULL;
        if (st->wait_batch != NULL)
            flush_schedule(st->flusher, &st->wait_job);
    }
    for (int i = 0; i < b->n; i++) {
        struct store_op *op = b->ops[i];
        op->replies_due--;
        op_wait_result(op, reply);
        op_maybe_free(op);
    }
    free(b->ops);
    free(b);
}

/* The end of the turn (or the previous WAIT answered): the open batch's
 * WAIT goes out after its writes. */
static void send_wait_batch(struct flush_job *job)
{
    struct store *st = (struct store *)((char *)job - offsetof(struct store, wait_job));
    struct wait_batch *b = st->wait_batch;
    if (b == NULL || st->wait_sent != NULL)
        return; /* sent when the WAIT in flight answers */
    st->wait_batch = NULL;
    if (st->cmd.ac == NULL || st->cmd.state != LINK_READY ||
        redis_conn_command(st->cmd.ac, on_wait_reply, b, "WAIT %d %llu", st->min_replicas,
                           (unsigned long long)st->min_replicas_timeout_ms) != IDEM_OK) {
        on_wait_reply(NULL, NULL, b); /* their writes went with that connection */
        return;
    }
    st->wait_sent = b;
}

/* op's write, just sent, waits for the turn's WAIT. */
static void op_join_wait(struct store_op *op)
{
    struct store *st = op->st;
    struct wait_batch *b = st->wait_batch;
    if (b == NULL) {
        b = st->wait_batch = xcalloc(1, sizeof(*b));
        b->st = st;
        flush_schedule(st->flusher, &st->wait_job);
    }
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->ops = xrealloc(b->ops, (size_t)b->cap * sizeof(*b->ops));
    }
    b->ops[b->n++] = op;
    op->replies_due++;
}

/* A failover under way: this server takes no writes (a demoted primary, a
 * replica loading its data, a primary that lost its replicas' quorum). */
static bool not_the_primary(const char *error)
{
    return strncmp(error, "READONLY", 8) == 0 || strncmp(error, "LOADING", 7) == 0 ||
           strncmp(error, "MASTERDOWN", 10) == 0;
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
    if (op_next_step(op, r)) {
        op_send(op);
        op_maybe_free(op); /* a resend that could not go out has failed it */
        return;
    }
    if (r->type != REDIS_REPLY_ERROR && !op->answered)
        metrics_redis_latency(now_us() - op->started_us);
    if (r->type == REDIS_REPLY_ERROR) {
        if (not_the_primary(r->str) && op->sent_on == op->st->cmd.ac)
            link_drop(&op->st->cmd, r->str); /* and, with sentinels, asks them again */
        if (strncmp(r->str, "OOM", 3) == 0)
            note_oom(r->str);
        else if (!not_the_primary(r->str))
            log_error("redis: %s failed: %s", op->native ? "claim" : keys_script_name(op->script),
                      r->str);
        free(op->claim_owner); /* it did not run: nothing to clean up */
        op->claim_owner = NULL;
        op_answer_error(op, r->str);
    } else if (!op->answered && op->on_claim) {
        answer_claim(op, r);
    } else if (!op->answered) {
        op->answered = true;
        op->applied = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        op->on_update(op->arg, op->applied, NULL);
    }
    op_maybe_free(op);
}

/* ---- connection --------------------------------------------------------- */

static void fail_pending(struct store *st);

static void publish_ready(struct store *st)
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

/* What the Redis of the last connection said of itself: -1 not known yet,
 * else 0 or 1. Every worker connects to the same Redis. */
static _Atomic int redis_may_evict = -1;
static _Atomic int redis_may_lose = -1;

void store_redis_risks(int *may_evict, int *may_lose)
{
    *may_evict = atomic_load(&redis_may_evict);
    *may_lose = atomic_load(&redis_may_lose);
}

/* The value of "name:" in an INFO reply, copied into out; false if absent. */
static bool info_field(const redisReply *r, const char *name, char *out, size_t cap)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return false;
    size_t n = strlen(name);
    for (const char *line = r->str; line != NULL && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > n && strncmp(line, name, n) == 0 && line[n] == ':') {
            size_t v = len - n - 1;
            while (v > 0 && (line[n + v] == '\r'))
                v--;
            snprintf(out, cap, "%.*s", (int)v, line + n + 1);
            return true;
        }
        line = end ? end + 1 : NULL;
    }
    return false;
}

/*
 * The promise lives in Redis: a key it evicts or forgets (a restart without
 * persistence) is a request that can run again. Said at every connection.
 */
static void on_memory_info(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct link *l = link_of(ac);
    char policy[64];
    if (l == NULL || !info_field(reply, "maxmemory_policy", policy, sizeof(policy)))
        return;
    bool evicts = strcmp(policy, "noeviction") != 0;
    if (evicts && atomic_exchange(&redis_may_evict, 1) != 1)
        log_warn("%s %s: maxmemory-policy is %s: when Redis is full it deletes keys, leases "
                 "and stored answers included, and a retry of a deleted key executes again; "
                 "set maxmemory-policy noeviction",
                 l->role, link_where(l), policy);
    if (!evicts)
        atomic_store(&redis_may_evict, 0);
}

/* INFO persistence: with AOF on, a restart keeps what was acknowledged. */
static void on_persistence_info(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct link *l = link_of(ac);
    char aof[8];
    if (l != NULL && info_field(reply, "aof_enabled", aof, sizeof(aof)))
        l->aof_enabled = strcmp(aof, "1") == 0;
}

/* CONFIG GET save (after INFO persistence): snapshots, or none. Managed
 * Redis often refuses CONFIG: then only AOF can be known. */
static void on_save_config(struct redis_conn *ac, void *reply, void *privdata)
{
    (void)privdata;
    struct link *l = link_of(ac);
    const redisReply *r = reply;
    if (l == NULL || r == NULL)
        return;
    bool known = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                 r->element[1]->type == REDIS_REPLY_STRING;
    bool snapshots = known && r->element[1]->len > 0;
    if (l->aof_enabled || snapshots) {
        atomic_store(&redis_may_lose, 0);
    } else if (!known) {
        log_info("%s %s: appendonly is off and CONFIG GET save is refused: whether a restart "
                 "keeps the keys is not known here",
                 l->role, link_where(l));
    } else if (atomic_exchange(&redis_may_lose, 1) != 1) {
        log_warn("%s %s: neither appendonly nor snapshots (save \"\"): a Redis restart forgets "
                 "every key, and retries of requests it had seen execute again; set appendonly "
                 "yes",
                 l->role, link_where(l));
    }
}

/* Asks Redis what it would do with our keys when full or restarted; the
 * answers are logged (warn when the promise is at risk) and published. */
static void check_redis_settings(struct link *l)
{
    redis_conn_command(l->ac, on_memory_info, NULL, "INFO memory");
    redis_conn_command(l->ac, on_persistence_info, NULL, "INFO persistence");
    redis_conn_command(l->ac, on_save_config, NULL, "CONFIG GET save");
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

static void send_pending(struct store *st);

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

static void link_drop(struct link *l, const char *why)
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

/* ---- operations --------------------------------------------------------- */

static void on_op_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_op *op = arg;
    struct store *st = op->st;
    if (op->answered)
        return;       /* waiting for its batch's WAIT only: WAIT has its own timeout */
    if (op->queued) { /* never sent: the connection is not to blame */
        op->queued = false;
        struct store_op **pp = &st->pending;
        while (*pp != op)
            pp = &(*pp)->next_queued;
        *pp = op->next_queued;
        if (st->pending_tail == &op->next_queued)
            st->pending_tail = pp;
        free(op->claim_owner); /* never sent: nothing to clean up */
        op->claim_owner = NULL;
        op_answer_error(op, "timed out waiting for the connection to Redis");
        op_free(op);
        return;
    }
    op_answer_error(op, "timed out");
    /* Only the connection it went out on is to blame: after a reload that
     * is a retired one, which ends by itself. */
    if (op->sent_on != NULL && op->sent_on == st->cmd.ac)
        link_drop(&st->cmd, "a command timed out (redis_timeout)");
}

static void on_op_unreachable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_op *op = arg;
    free(op->claim_owner); /* never sent: nothing to clean up */
    op->claim_owner = NULL;
    if (op->on_claim != NULL && op->st->replicas_short && !op->answered) {
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

static void op_send(struct store_op *op)
{
    struct store *st = op->st;
    if (st->cmd.ac == NULL || st->cmd.state != LINK_READY) {
        op_fail_later(op); /* a resend after the link went down */
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
        bytes_add_header(cmd, '*', legacy ? 5 : (uint64_t)op->nargs + 2);
        bytes_add_bulk(cmd, verb, strlen(verb));
        bytes_add_bulk(cmd, body, strlen(body));
        if (legacy) {
            bytes_add_bulk(cmd, "1", 1);
            bytes_add_bulk(cmd, op->rkey, strlen(op->rkey));
            bytes_add_bulk(cmd, op->claim_will_wait ? "1" : "0", 1);
        } else {
            bytes_add(cmd, op->args.p, op->args.len);
        }
    }
    if (redis_conn_send(st->cmd.ac, on_reply, op, cmd->p, cmd->len) != IDEM_OK) {
        op_fail_later(op);
        return;
    }
    op->replies_due++;
    op->sent_on = st->cmd.ac;
    /* redis_min_replicas: WAIT at the end of this turn, in the same round trip */
    if (st->min_replicas > 0 && (op->on_claim != NULL || op->script == SCRIPT_COMPLETE))
        op_join_wait(op);
}

/* The cmd link is ready: what waited for it goes out, in order. */
static void send_pending(struct store *st)
{
    while (st->pending && st->cmd.state == LINK_READY) {
        struct store_op *op = st->pending;
        st->pending = op->next_queued;
        op->queued = false;
        op_send(op);
    }
    if (st->pending == NULL)
        st->pending_tail = &st->pending;
}

/* The cmd link went down: what waited for it fails (next loop turn). */
static void fail_pending(struct store *st)
{
    while (st->pending) {
        struct store_op *op = st->pending;
        st->pending = op->next_queued;
        op->queued = false;
        op_fail_later(op);
    }
    st->pending_tail = &st->pending;
}

static void op_start(struct store *st, struct store_op *op)
{
    if (st->cmd.ac == NULL || st->cmd.state == LINK_DOWN ||
        (op->on_claim != NULL && st->replicas_short)) {
        op_fail_later(op);
        return;
    }
    evtimer_assign(op->timer, st->base, on_op_timeout, op);
    op->started_us = now_us();
    struct timeval tv = {(time_t)(st->timeout_ms / 1000),
                         (suseconds_t)(st->timeout_ms % 1000) * 1000};
    evtimer_add(op->timer, &tv);
    if (st->cmd.state == LINK_CONNECTING) {
        op->queued = true;
        op->next_queued = NULL;
        *st->pending_tail = op;
        st->pending_tail = &op->next_queued;
        return;
    }
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
    op_arg(op, "1", 1); /* numkeys */
    op_arg(op, rkey, strlen(rkey));
    return op;
}

/* One more key (before any argument): the script sees KEYS[2], KEYS[3]... */
static void op_extra_key(struct store_op *op, const char *key)
{
    op->args.p[4]++; /* numkeys, the first bulk string: "$1\r\nN\r\n", N < 9 */
    op_arg(op, key, strlen(key));
}

static void op_arg_u64(struct store_op *op, uint64_t v)
{
    char digits[UINT64_DIGITS];
    char *p = format_u64(v, 10, digits);
    op_arg(op, p, (size_t)(digits + sizeof(digits) - p));
}

/*
 * Natively unless a token or a quota must be checked in the same atomic
 * step: then through the claim script at once. The script's arguments are
 * built either way, for the slow path (op_next_step).
 */
void store_claim(struct store *st, const struct claim_request *req, store_claim_cb cb, void *arg)
{
    struct store_op *op = op_new(st, SCRIPT_CLAIM, req->rkey);
    op->on_claim = cb;
    op->arg = arg;
    op->claim_value = keys_inflight_value(req->owner, req->fingerprint, req->unknown_ttl_ms);
    op->claim_px = req->lock_ttl_ms + req->unknown_ttl_ms;
    op->claim_will_wait = req->will_wait;
    op->native = op->native_first = req->token_key == NULL && req->quota_key == NULL;
    if (req->token_key)
        op_extra_key(op, req->token_key);
    if (req->quota_key)
        op_extra_key(op, req->quota_key);
    op_arg(op, op->claim_value, strlen(op->claim_value));
    op_arg_u64(op, op->claim_px);
    op_arg(op, req->will_wait ? "1" : "0", 1);
    op_arg_u64(op, req->quota_key ? req->max_keys : 0);
    op_arg_u64(op, req->quota_window_ms);
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
    /* the done value, "d:" fingerprint ":" record, written as one bulk string */
    char *prefix = xmalloc(keys_done_prefix_cap(fingerprint));
    size_t n = keys_done_prefix(fingerprint, prefix);
    bytes_add_header(&op->args, '$', n + record_len);
    bytes_add(&op->args, prefix, n);
    bytes_add(&op->args, record, record_len);
    bytes_add(&op->args, "\r\n", 2);
    op->nargs++;
    free(prefix);
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

static void on_orphan_released(void *arg, bool applied, const char *error)
{
    (void)arg;
    (void)error;
    if (applied)
        log_info("redis: released a claim whose reply was lost (the key is free again)");
}

/* Orphans are released on the next loop turn when the link is up, else
 * when it is up again. */
static void orphans_release_soon(struct store *st)
{
    struct timeval zero = {0, 0};
    if (st->cmd.state == LINK_READY)
        evtimer_add(st->orphan_timer, &zero);
}

/* Sends a release for every orphan; drops those tried ORPHAN_ATTEMPTS times. */
static void on_orphan_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store *st = arg;
    if (st->cmd.state != LINK_READY)
        return; /* the next ready link re-arms us */
    struct orphan **pp = &st->orphans;
    while (*pp) {
        struct orphan *o = *pp;
        store_release(st, o->rkey, o->owner, o->token_key, st->token_ttl_ms, on_orphan_released,
                      NULL);
        if (++o->attempts >= ORPHAN_ATTEMPTS) {
            *pp = o->next;
            st->norphans--;
            orphan_free(o);
        } else {
            pp = &o->next;
        }
    }
    /* Again later: the lost claim may still sit in Redis' input behind us. */
    if (st->orphans) {
        struct timeval tv = {1, 0};
        evtimer_add(st->orphan_timer, &tv);
    }
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
        atomic_store(&redis_may_evict, -1);
        atomic_store(&redis_may_lose, -1);
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

/*
 * Tokens come from OpenSSL's DRBG a few hundred bytes at a time: one
 * RAND_bytes call costs as much as the rest of a claim's bookkeeping, mostly
 * in its locking and fork check. Per thread, so no lock; the bytes handed out
 * are erased from the pool.
 */
#define RANDOM_POOL 512
static _Thread_local unsigned char random_pool[RANDOM_POOL];
static _Thread_local size_t random_left;

int store_random_token(char out[33])
{
    unsigned char raw[16];
    if (random_left < sizeof(raw)) {
        if (RAND_bytes(random_pool, sizeof(random_pool)) != 1)
            return IDEM_ERR;
        random_left = sizeof(random_pool);
    }
    random_left -= sizeof(raw);
    memcpy(raw, random_pool + random_left, sizeof(raw));
    OPENSSL_cleanse(random_pool + random_left, sizeof(raw));
    hex_encode(raw, sizeof(raw), out);
    return IDEM_OK;
}
