/*
 * store_keys.c - the key protocol: the Lua scripts and the values that make
 * up the life of an idempotency key in Redis. Pure: store.c does the I/O.
 *
 * A key is one Redis string (store_keys.h has its three values). What Redis
 * pays per request is the fleet's capacity (SPEC §8.1), so the common path is
 * native: a claim is `SET key inflight NX PX lease GET`, which claims an
 * absent key and returns a present one in the same command, so a replay
 * costs one native command. Scripts remain only where an owner must be
 * compared (complete, release, renew, mark unknown) and on the claim's slow
 * path (a one-time token, a quota, a duplicate that will wait, a key found
 * in flight whose lease must be read).
 *
 *             claim (SET NX)            complete (owner)
 *   absent -----------------> inflight ------------------> done --(ttl)--> absent
 *     ^                        | |  |  renew (owner): expiry back to lock_ttl + unknown_ttl
 *     |         release(owner) | |  +--(lock_ttl passes)--> lapsed --(unknown_ttl)--> absent
 *     +------------------------+ |                           (reads as unknown; the owner
 *     |                          | mark_unknown (owner)       may still complete it)
 *     +--(unknown_ttl)-- unknown <-+
 *
 * The lease needs no clock but Redis': an in-flight value expires after
 * lock_ttl + unknown_ttl, and while more than unknown_ttl of that is left
 * (PTTL), the lease is alive. After that, until the key expires, it is
 * *unknown*: its owner died or lost Redis mid-request, and the request may
 * well have executed. So a lease that runs out never frees a key silently
 * (SPEC §4.6), and an owner that is merely slow to reach Redis still
 * completes: its value is still there, with its token.
 *
 * The hash layout of earlier versions (fields s, f, o, r, w) is read, never
 * written: a claim that meets a hash (WRONGTYPE) reads it with
 * SCRIPT_LEGACY, so replays and conflicts keep working through an upgrade.
 */
#include "store_keys.h"

#include <stdlib.h>
#include <string.h>

/* Lua checks an owner as the 32 bytes at offset 4 of an "i" value. */
#define OWNER_CHECK                                                                                \
    "local v = redis.call('GET', KEYS[1])\n"                                                       \
    "if not v or string.byte(v, 1) ~= 105 or string.sub(v, 4, 35) ~= ARGV[1] then return 0 end\n"
/* Publishes the change when a duplicate waits (W is '1'). */
#define PUBLISH_IF_WAITED(what)                                                                    \
    "if string.byte(v, 2) == 49 then redis.call('PUBLISH', KEYS[1], '" what "') end\n"

static const char *const script_source[SCRIPT_COUNT] = {
    /* KEYS: the key, [a token key], [the quota key, last]. ARGV: the
     * in-flight value, its expiry, will wait (1/0), quota max (0: none),
     * quota window. Returns {'claimed'}, {'invalid'}, {'quota', '', pttl}
     * or {value, pttl}. */
    [SCRIPT_CLAIM] =
        "local v = redis.call('GET', KEYS[1])\n"
        "if not v then\n"
        "  local quota = tonumber(ARGV[4])\n"
        "  local qk = quota > 0 and KEYS[#KEYS] or nil\n"
        "  if qk and tonumber(redis.call('GET', qk) or '0') >= quota then\n"
        "    return {'quota', '', redis.call('PTTL', qk)}\n"
        "  end\n"
        "  local tk = KEYS[2] ~= qk and KEYS[2] or nil\n"
        "  if tk and redis.call('DEL', tk) == 0 then return {'invalid'} end\n"
        "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
        "  if qk and redis.call('INCR', qk) == 1 then redis.call('PEXPIRE', qk, ARGV[5]) end\n"
        "  return {'claimed'}\n"
        "end\n"
        "local t = redis.call('PTTL', KEYS[1])\n"
        "if ARGV[3] == '1' and string.sub(v, 1, 2) == 'i0' then\n"
        "  redis.call('SET', KEYS[1], 'i1' .. string.sub(v, 3), 'KEEPTTL')\n"
        "end\n"
        "return {v, t}\n",
    /* ARGV: will wait. Returns {'retry'} when the key is no hash (any
     * more), else {state, fingerprint, pttl, record}. */
    [SCRIPT_LEGACY] = "if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return {'retry'} end\n"
                      "local v = redis.call('HMGET', KEYS[1], 's', 'f', 'r')\n"
                      "if v[1] == 'inflight' and ARGV[1] == '1' then\n"
                      "  redis.call('HSET', KEYS[1], 'w', '1')\n"
                      "end\n"
                      "return {v[1] or '', v[2] or '', redis.call('PTTL', KEYS[1]), v[3] or ''}\n",
    /* ARGV: owner, the done value, ttl. */
    [SCRIPT_COMPLETE] = OWNER_CHECK
    "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n" PUBLISH_IF_WAITED("done") "return 1\n",
    /* ARGV: owner, token ttl. A released one-time token (KEYS[2]) is given
     * back for another try. */
    [SCRIPT_RELEASE] = OWNER_CHECK
    "redis.call('DEL', KEYS[1])\n"
    "if KEYS[2] then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end\n" PUBLISH_IF_WAITED(
        "released") "return 1\n",
    /* ARGV: owner, lock_ttl + unknown_ttl. */
    [SCRIPT_RENEW] = OWNER_CHECK "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                 "return 1\n",
    /* ARGV: owner, the unknown value, how long. */
    [SCRIPT_UNKNOWN] =
        OWNER_CHECK "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n" PUBLISH_IF_WAITED(
            "unknown") "return 1\n",
    [SCRIPT_TOKEN] = "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) return 1\n",
    /* ARGV: show, release or delete. One script, so that what is reported is
     * what was deleted: a release frees only a key that is in flight or
     * unknown at that instant (never one that became done meanwhile), and
     * wakes the duplicates parked on it, which claim it again. */
    [SCRIPT_ADMIN] = "local t = redis.call('TYPE', KEYS[1]).ok\n"
                     "if t == 'none' then return {'none'} end\n"
                     "local pttl = redis.call('PTTL', KEYS[1])\n"
                     "local out, free, waited\n"
                     "if t == 'string' then\n"
                     "  local v = redis.call('GET', KEYS[1])\n"
                     "  local c = string.byte(v, 1)\n"
                     "  free = c == 105 or c == 117\n"
                     "  waited = c == 105 and string.byte(v, 2) == 49\n"
                     "  out = {t, pttl, 0, v}\n"
                     "elseif t == 'hash' then\n"
                     "  local h = redis.call('HMGET', KEYS[1], 's', 'f', 'r', 'w')\n"
                     "  free = h[1] == 'inflight' or h[1] == 'unknown'\n"
                     "  waited = h[1] == 'inflight' and h[4] == '1'\n"
                     "  out = {t, pttl, 0, h[1] or '', h[2] or '', h[3] or ''}\n"
                     "else\n"
                     "  out = {t, pttl, 0}\n"
                     "end\n"
                     "if ARGV[1] == 'delete' or (ARGV[1] == 'release' and free) then\n"
                     "  redis.call('DEL', KEYS[1])\n"
                     "  if waited then redis.call('PUBLISH', KEYS[1], 'released') end\n"
                     "  out[3] = 1\n"
                     "end\n"
                     "return out\n",
};

static const char *const script_name[SCRIPT_COUNT] = {
    "claim", "legacy read", "complete", "release", "renew", "unknown", "token", "admin",
};

static const char *const admin_action_arg[] = {
    [KEYS_ADMIN_SHOW] = "show",
    [KEYS_ADMIN_RELEASE] = "release",
    [KEYS_ADMIN_DELETE] = "delete",
};

const char *keys_admin_action_arg(enum keys_admin_action action)
{
    return admin_action_arg[action];
}

const char *keys_script_source(enum script_id id)
{
    return script_source[id];
}

const char *keys_script_name(enum script_id id)
{
    return script_name[id];
}

char *keys_inflight_value(const char *owner, const char *fingerprint, uint64_t unknown_ms)
{
    char digits[UINT64_DIGITS + 1];
    digits[UINT64_DIGITS] = '\0';
    return xstrjoin("i0:", owner, ":", fingerprint, ":", format_u64(unknown_ms, 10, digits),
                    (char *)NULL);
}

size_t keys_done_prefix_len(const char *fingerprint)
{
    return 2 + strlen(fingerprint) + 1;
}

size_t keys_done_prefix(const char *fingerprint, char *out)
{
    size_t f = strlen(fingerprint);
    memcpy(out, "d:", 2);
    memcpy(out + 2, fingerprint, f);
    out[2 + f] = ':';
    return 3 + f;
}

char *keys_unknown_value(const char *fingerprint)
{
    return xstrjoin("u:", fingerprint, (char *)NULL);
}

/* The field of v[at..len) up to the next ':' (or the end); its length. */
static size_t field_len(const char *v, size_t at, size_t len)
{
    const char *colon = memchr(v + at, ':', len - at);
    return colon ? (size_t)(colon - (v + at)) : len - at;
}

static int read_inflight(const char *v, size_t len, int64_t pttl_ms, struct claim_result *out)
{
    size_t fp_at = 3 + KEYS_OWNER_LEN + 1;
    if (len < fp_at || v[2] != ':' || v[fp_at - 1] != ':')
        return IDEM_ERR;
    size_t fp_len = field_len(v, fp_at, len);
    size_t ms_at = fp_at + fp_len + 1;
    if (ms_at >= len)
        return IDEM_ERR;
    uint64_t unknown_ms = 0;
    for (size_t i = ms_at; i < len; i++) {
        if (v[i] < '0' || v[i] > '9' || unknown_ms > UINT64_MAX / 10 - 9)
            return IDEM_ERR;
        unknown_ms = unknown_ms * 10 + (uint64_t)(v[i] - '0');
    }
    out->fingerprint = v + fp_at;
    out->fingerprint_len = fp_len;
    if (pttl_ms < 0 || (uint64_t)pttl_ms > unknown_ms) {
        out->state = KEY_STATE_INFLIGHT;
        out->pttl_ms = pttl_ms < 0 ? -1 : pttl_ms - (int64_t)unknown_ms;
    } else {
        out->state = KEY_STATE_UNKNOWN; /* the lease ran out without its owner */
        out->pttl_ms = pttl_ms;
    }
    return IDEM_OK;
}

int keys_read_value(const char *v, size_t len, int64_t pttl_ms, struct claim_result *out)
{
    memset(out, 0, sizeof(*out));
    out->pttl_ms = pttl_ms;
    if (len < 2)
        return IDEM_ERR;
    if (v[0] == 'i')
        return read_inflight(v, len, pttl_ms, out);
    if (v[1] != ':')
        return IDEM_ERR;
    size_t fp_len = field_len(v, 2, len);
    out->fingerprint = v + 2;
    out->fingerprint_len = fp_len;
    if (v[0] == 'u' && 2 + fp_len == len) {
        out->state = KEY_STATE_UNKNOWN;
        return IDEM_OK;
    }
    if (v[0] == 'd' && 2 + fp_len < len) {
        out->state = KEY_STATE_DONE;
        out->record = v + 2 + fp_len + 1;
        out->record_len = len - (2 + fp_len + 1);
        return IDEM_OK;
    }
    return IDEM_ERR;
}

int keys_read_legacy_state(const char *state, enum key_state *out)
{
    if (strcmp(state, "inflight") == 0)
        *out = KEY_STATE_INFLIGHT;
    else if (strcmp(state, "done") == 0)
        *out = KEY_STATE_DONE;
    else if (strcmp(state, "unknown") == 0)
        *out = KEY_STATE_UNKNOWN;
    else
        return IDEM_ERR;
    return IDEM_OK;
}
