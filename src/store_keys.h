/*
 * store_keys.h - the key protocol: what each state change of a key says to
 * Redis, and how Redis' answers read (SPEC §4.2, §4.6, §8.1). No I/O:
 * store.c sends what is described here and hands the replies back.
 */
#ifndef IDEM_STORE_KEYS_H
#define IDEM_STORE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "util.h"

/* The Lua scripts; each state change that must compare an owner is one. */
enum script_id {
    SCRIPT_CLAIM,  /* the claim's slow path: tokens, quotas, waiting, a key in flight */
    SCRIPT_LEGACY, /* reads a key of the hash layout (before 0.3) */
    SCRIPT_COMPLETE,
    SCRIPT_RELEASE,
    SCRIPT_RENEW,
    SCRIPT_UNKNOWN,
    SCRIPT_TOKEN,
    SCRIPT_ADMIN, /* the keys admin API (SPEC §9): show, release or delete any key */
    SCRIPT_COUNT
};

const char *keys_script_source(enum script_id id);
const char *keys_script_name(enum script_id id);

/* Owner tokens are this long; key values place them at a fixed offset. */
#define KEYS_OWNER_LEN 32

/*
 * Values (a key is one Redis string; ':' never occurs in owners or
 * fingerprints, so the fields split on it):
 *   in flight  "i" W ":" owner ":" fingerprint ":" unknown_ms
 *   unknown    "u:" fingerprint
 *   done       "d:" fingerprint ":" record
 * W is '1' once a duplicate waits for the key (its next change is
 * published), else '0'. The in-flight value's expiry is lock_ttl +
 * unknown_ms, so its lease is alive while more than unknown_ms is left.
 */

/* The in-flight value, NUL-terminated; the caller frees it. */
char *keys_inflight_value(const char *owner, const char *fingerprint, uint64_t unknown_ms);

/* The prefix of a done value ("d:" fingerprint ":"), the record follows:
 * keys_done_prefix_len(fingerprint) bytes into out, not NUL-terminated. */
size_t keys_done_prefix(const char *fingerprint, char *out);
size_t keys_done_prefix_len(const char *fingerprint);

/* The unknown value; the caller frees it. */
char *keys_unknown_value(const char *fingerprint);

/*
 * What a key's value says, given pttl_ms (its expiry left; -1 if not
 * asked). The result points into value. IDEM_ERR: not a value of ours.
 * An in-flight value whose lease has run out (pttl_ms at most its
 * unknown_ms) reads as unknown: its owner died or lost Redis.
 */
int keys_read_value(const char *value, size_t len, int64_t pttl_ms,
                    struct claim_result *out) MUST_CHECK;

/*
 * SCRIPT_ADMIN's ARGV[1] for what the operator asked (store.h). Its answer
 * is {'none'} (absent), {'string', pttl, deleted, value}, {'hash', pttl,
 * deleted, s, f, r} (the hash layout's state, fingerprint and record) or
 * {type, pttl, deleted} for anything else under the name.
 */
const char *keys_admin_action_arg(enum keys_admin_action action);

/* A hash-layout state name ("inflight", "done", "unknown"). IDEM_ERR: other. */
int keys_read_legacy_state(const char *state, enum key_state *out) MUST_CHECK;

#endif
