/*
 * store.h - the Redis side of idempotency (SPEC §4.2, §4.6): one atomic
 * Redis operation per state change of a key (store_keys.h says which), over
 * one persistent hiredis connection per event loop that reconnects by itself
 * with backoff.
 *
 * Every operation's callback runs exactly once, never synchronously from the
 * call that started it: with the reply, or with an error when Redis is
 * unreachable, the connection drops, or redis_timeout passes. Reply data
 * handed to a callback lives only during that callback.
 */
#ifndef IDEM_STORE_H
#define IDEM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "util.h"

struct event_base;
struct flusher;
struct store;

/* What claim found. CLAIMED means this caller now owns the lease. */
enum key_state {
    KEY_STATE_CLAIMED,
    KEY_STATE_INFLIGHT,
    KEY_STATE_DONE,
    KEY_STATE_UNKNOWN,
    KEY_STATE_TOKEN_INVALID, /* a token claim found neither the token nor its key */
    KEY_STATE_QUOTA,         /* absent, but the scope has max_keys_per_scope new keys */
    /* claimed, but fewer replicas than redis_min_replicas confirmed it: given
     * back. Not a store error: Redis answers, and the request must not go
     * out unprotected even with on_store_error pass (SPEC §8). */
    KEY_STATE_REPLICAS_SHORT,
};

struct claim_result {
    enum key_state state;
    const char *fingerprint; /* the first request's; NULL when CLAIMED */
    size_t fingerprint_len;
    int64_t pttl_ms;    /* lease or retention left; -1 when unknown */
    const char *record; /* DONE: the encoded record (record.h) */
    size_t record_len;
};

/* error is NULL on success, else a phrase for the log (result is then NULL). */
typedef void (*store_claim_cb)(void *arg, const struct claim_result *result, const char *error);
/* applied: the owner token matched and the change was made. */
typedef void (*store_update_cb)(void *arg, bool applied, const char *error);

/*
 * A store is one Redis target (address, credentials, database, key prefix)
 * with its connections. Reference-counted: the worker holds the current one,
 * and every exchange holds the one it began with, so that after a reload
 * that changes the target its renewals, completion and waiting duplicates
 * still reach the Redis where its key lives. The last store_unref frees it
 * on the next loop turn (never inside its own callbacks).
 */
struct tls;
/* tls: the process's contexts (its Redis one is used with redis_tls on). */
struct store *store_new(struct event_base *base, struct flusher *flusher, const struct config *cfg,
                        struct tls *tls);
struct store *store_ref(struct store *st);
void store_unref(struct store *st);
/* At a worker's end, after its loop: frees the stores whose last reference
 * went while no loop turn was left to free them. */
void store_free_released(void);

/* Whether cfg names another Redis target (address, credentials, database,
 * key prefix) than st: a reload then needs a new store. */
bool store_target_differs(const struct store *st, const struct config *cfg);
/* Takes the settings that need no new connection (timeouts). */
void store_reconfigure(struct store *st, const struct config *cfg);

/* Keeps *flag true while the store is connected and authenticated, for other
 * threads to read; the flag must outlive the store. NULL: stop. */
void store_publish_readiness(struct store *st, _Atomic bool *flag);

/* Whether Redis refused a write for lack of memory (an OOM error reply) in
 * the last 10 s, on any worker's connection. Any thread may ask. */
bool store_refusing_writes(void);

/* What Redis said of itself at the last connection (INFO): whether its
 * maxmemory-policy may evict keys, whether a restart would lose them
 * (neither AOF nor a snapshot). -1 until known. Any thread may ask. */
void store_redis_risks(int *may_evict, int *may_lose);

struct claim_request {
    const char *rkey;
    const char *fingerprint;
    const char *owner;
    uint64_t lock_ttl_ms;
    /* How long the key stays unknown after its lease ran out unfinished. */
    uint64_t unknown_ttl_ms;
    /* The caller parks if the key is in flight: the key is marked so that its
     * next state change is published for store_watch(). */
    bool will_wait;
    /* One-time token (SPEC §4.3): an absent key is claimed only by consuming
     * this token key in the same script; NULL for ordinary keys. */
    const char *token_key;
    /* max_keys_per_scope: the scope's counter of new keys (NULL: no quota);
     * at most max_keys new keys per quota_window_ms, counted from the first. */
    const char *quota_key;
    uint64_t max_keys;
    uint64_t quota_window_ms;
};

/* absent -> in flight (owner, fingerprint, lease); present -> its state. An
 * in-flight key whose lease ran out reads as unknown. */
void store_claim(struct store *st, const struct claim_request *req, store_claim_cb cb, void *arg);

/* Stores a one-time token key for ttl_ms (SPEC §4.3). */
void store_new_token(struct store *st, const char *token_key, uint64_t ttl_ms, store_update_cb cb,
                     void *arg);
/* in flight (owned, lease alive or run out) -> done with record, kept ttl_ms. */
void store_complete(struct store *st, const char *rkey, const char *owner, const char *fingerprint,
                    const char *record, size_t record_len, uint64_t ttl_ms, store_update_cb cb,
                    void *arg);
/* in flight (owned) -> absent; a consumed token_key (or NULL) is restored for
 * token_ttl_ms, so the client may retry with the same token. */
void store_release(struct store *st, const char *rkey, const char *owner, const char *token_key,
                   uint64_t token_ttl_ms, store_update_cb cb, void *arg);
/* in flight (owned) -> lease alive for lock_ttl_ms again (then unknown for
 * unknown_ttl_ms, as at the claim). */
void store_renew(struct store *st, const char *rkey, const char *owner, uint64_t lock_ttl_ms,
                 uint64_t unknown_ttl_ms, store_update_cb cb, void *arg);
/* in flight (owned) -> unknown for unknown_ms: the outcome cannot be known. */
void store_mark_unknown(struct store *st, const char *rkey, const char *owner,
                        const char *fingerprint, uint64_t unknown_ms, store_update_cb cb,
                        void *arg);

/* What the keys admin API found under a name (SPEC §9). */
struct key_admin_result {
    bool found;             /* false: absent (nothing else is set) */
    bool ours;              /* a value of this idemproxy's; false: `key` is not set */
    bool legacy;            /* of the hash layout of earlier versions */
    bool deleted;           /* the key is gone now (release or delete) */
    int64_t expiry_ms;      /* PTTL: left until Redis drops it; -1 no expiry */
    const char *redis_type; /* "string", "hash", ... as TYPE said */
    /* state (INFLIGHT, UNKNOWN, DONE), fingerprint, record; pttl_ms is the
     * lease left when in flight, else expiry_ms */
    struct claim_result key;
};
/* error is NULL on success, else a phrase (result is then NULL). */
typedef void (*store_admin_cb)(void *arg, const struct key_admin_result *result, const char *error);

/*
 * One atomic look at rkey (SCRIPT_ADMIN), and with KEYS_ADMIN_RELEASE its
 * deletion if it is in flight or unknown, with KEYS_ADMIN_DELETE its
 * deletion whatever it holds. The result says what was there before.
 */
enum keys_admin_action { KEYS_ADMIN_SHOW, KEYS_ADMIN_RELEASE, KEYS_ADMIN_DELETE };
void store_admin(struct store *st, const char *rkey, enum keys_admin_action action,
                 store_admin_cb cb, void *arg);

/*
 * Waiting duplicates (SPEC §4.4): cb runs (never re-entrantly from this
 * call) each time a state change of rkey is announced on Redis pub/sub, from
 * any idemproxy instance, and once after the pub/sub connection comes back.
 * A wake is a hint: the caller claims again to learn the state.
 */
typedef void (*store_wake_cb)(void *arg);
struct store_watch;
struct store_watch *store_watch(struct store *st, const char *rkey, store_wake_cb cb, void *arg);
void store_unwatch(struct store *st, struct store_watch *w);

/* 128 random bits as 32 hex chars + NUL, for owner tokens. */
int store_random_token(char out[33]) MUST_CHECK;

#endif
