/*
 * seal.h - stored records sealed at rest (SPEC §10).
 *
 * With record_encryption_key_file given, the record part of a done key (the
 * status, headers and body a replay sends back, record.h) is stored sealed:
 * AES-256-GCM, the Redis key name and the request fingerprint as associated
 * data, so a record neither reads in Redis, its snapshots and replicas, nor
 * opens under another key's name or beside another request's fingerprint,
 * nor opens at all once a byte of it changed. States and fingerprints stay
 * outside the seal (store_keys.h), for the admin API; the fingerprint is
 * then an HMAC under a key derived from the record key, so that a stored
 * one confirms no guess of a request's body to whoever reads Redis.
 *
 * Sealed format (version 1):
 *   "IDS1"  key id (4)  salt (16)  ciphertext  tag (16)
 * The key id is the first 4 bytes of SHA-256 over a label and the key, so a
 * reload that puts a new key first still opens records of the old ones, and
 * a record of a key no longer configured is told apart from a forged one.
 * Each record is sealed under its own key, HMAC-SHA256(key, label || salt),
 * so GCM's nonce (then a constant) is never used twice under one key, and
 * the 2^32 limit on random nonces per key does not apply.
 *
 * Thread-safe: keys are read-only once loaded; every call has its own
 * OpenSSL contexts.
 */
#ifndef IDEM_SEAL_H
#define IDEM_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define SEAL_KEY_LEN 32
#define SEAL_KEY_ID_LEN 4
#define SEAL_MAX_KEYS 8

struct seal_key {
    uint8_t id[SEAL_KEY_ID_LEN];
    uint8_t key[SEAL_KEY_LEN];
    uint8_t fingerprint_key[SEAL_KEY_LEN]; /* derived from key */
};

/* The first seals; every one opens. */
struct seal_keys {
    struct seal_key keys[SEAL_MAX_KEYS];
    int n;
};

/* Reads a key file: 32 bytes, raw or as 64 hex digits (a final newline
 * allowed), and private to its owner (no group or other permission bits).
 * Returns NULL, or a phrase written into msg. */
const char *seal_key_load(const char *path, struct seal_key *out, char *msg, size_t msglen);

/* Zeroes every key. */
void seal_keys_clear(struct seal_keys *keys);

/* The fingerprint stored for a request whose own is fp (64 hex digits):
 * hex of HMAC-SHA256 under k's fingerprint key, 64 digits and a NUL. */
void seal_fingerprint(const struct seal_key *k, const char *fp, char out[2 * SEAL_KEY_LEN + 1]);

/* Seals plain for the Redis key name and the stored fingerprint (fp, fp_len)
 * under keys->keys[0]. Returns a malloc'd buffer of *out_len bytes, or NULL
 * when OpenSSL fails (no randomness). */
char *seal_record(const struct seal_keys *keys, const char *name, const char *fp, size_t fp_len,
                  const char *plain, size_t plain_len, size_t *out_len);

/* True when buf is in the sealed format (it may still fail to open). */
bool seal_is_sealed(const char *buf, size_t len);

/* True when buf is sealed under a key id that no key of keys has. */
bool seal_key_missing(const struct seal_keys *keys, const char *buf, size_t len);

enum seal_result {
    SEAL_OPENED,
    SEAL_NOT_SEALED,  /* plaintext where a sealed record was expected */
    SEAL_UNKNOWN_KEY, /* sealed under a key id no file gives */
    SEAL_TAMPERED,    /* fails authentication: changed, moved or truncated */
};

/* Opens a sealed record stored under the Redis key name beside the
 * fingerprint (fp, fp_len). On SEAL_OPENED,
 * *plain is a malloc'd buffer of *plain_len bytes; key_id (may be NULL)
 * receives the record's key id when it has one. */
enum seal_result seal_open(const struct seal_keys *keys, const char *name, const char *fp,
                           size_t fp_len, const char *sealed, size_t len, char **plain,
                           size_t *plain_len, uint8_t key_id[SEAL_KEY_ID_LEN]) MUST_CHECK;

#endif
