/*
 * seal.c - stored records sealed at rest (SPEC §10); the format and why it
 * is so are in seal.h.
 *
 *   key file --seal_key_load()--> struct seal_key (id, 32 bytes)
 *   record --seal_record(keys, name)--> "IDS1" id salt ciphertext tag
 *   stored --seal_open(keys, name)--> record, or why not (unknown key id,
 *                                     tampered, not sealed)
 *
 * Only OpenSSL: AES-256-GCM through EVP, HMAC-SHA256 for the per-record
 * key, its DRBG for the salt (random_bytes), CRYPTO_memcmp where bytes are
 * compared.
 */
#include "seal.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#define MAGIC "IDS1"
#define MAGIC_LEN 4
#define SALT_LEN 16
#define TAG_LEN 16
#define HEAD_LEN (MAGIC_LEN + SEAL_KEY_ID_LEN + SALT_LEN)
#define KEY_FILE_MAX 128 /* more than 64 hex digits and a CRLF: not a key file */

/* Fetched once: OpenSSL 3 looks an algorithm up by name at every implicit
 * use (EVP_aes_256_gcm(), HMAC()), which cost more than sealing a small
 * record. */
static EVP_CIPHER *aes_gcm;
static EVP_MD *sha256;
static pthread_once_t fetched = PTHREAD_ONCE_INIT;

static void fetch_algorithms(void)
{
    aes_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const char LABEL_KEY_ID[] = "idemproxy record key id";
static const char LABEL_RECORD_KEY[] = "idemproxy record key v1";
static const char LABEL_FINGERPRINT_KEY[] = "idemproxy fingerprint key v1";

static bool hmac_sha256(const uint8_t key[SEAL_KEY_LEN], const void *msg, size_t len,
                        uint8_t out[SEAL_KEY_LEN])
{
    unsigned int n = 0;
    pthread_once(&fetched, fetch_algorithms);
    return sha256 != NULL && HMAC(sha256, key, SEAL_KEY_LEN, msg, len, out, &n) != NULL &&
           n == SEAL_KEY_LEN;
}

/* ---- key files ---------------------------------------------------------- */

static void key_id_of(const uint8_t key[SEAL_KEY_LEN], uint8_t id[SEAL_KEY_ID_LEN])
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    uint8_t msg[sizeof(LABEL_KEY_ID) - 1 + SEAL_KEY_LEN];
    memcpy(msg, LABEL_KEY_ID, sizeof(LABEL_KEY_ID) - 1);
    memcpy(msg + sizeof(LABEL_KEY_ID) - 1, key, SEAL_KEY_LEN);
    SHA256(msg, sizeof(msg), digest);
    memcpy(id, digest, SEAL_KEY_ID_LEN);
    OPENSSL_cleanse(msg, sizeof(msg));
}

const char *seal_key_load(const char *path, struct seal_key *out, char *msg, size_t msglen)
{
    char buf[KEY_FILE_MAX + 1];
    size_t n = 0;
    const char *err = read_private_file(path, buf, sizeof(buf), &n, msg, msglen);
    bool ok = false;
    if (err != NULL)
        return err;
    if (n == SEAL_KEY_LEN) {
        /* 32 random bytes are all printable once in 10^14: this is a
         * passphrase or 32 hex digits (16 bytes), not a key. */
        bool printable = true;
        for (size_t i = 0; i < n; i++)
            printable = printable && buf[i] >= 0x20 && buf[i] < 0x7f;
        memcpy(out->key, buf, SEAL_KEY_LEN);
        ok = !printable;
    } else {
        size_t digits = n;
        if (digits > 0 && buf[digits - 1] == '\n')
            digits--;
        if (digits > 0 && buf[digits - 1] == '\r')
            digits--;
        ok = digits == 2 * SEAL_KEY_LEN && hex_decode(buf, SEAL_KEY_LEN, out->key) == IDEM_OK;
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    if (!ok) {
        snprintf(msg, msglen,
                 "\"%s\" must hold a 32-byte key: 32 bytes, or 64 hex digits "
                 "(e.g. from `openssl rand -hex 32`)",
                 path);
        return msg;
    }
    static const uint8_t zero[SEAL_KEY_LEN];
    if (CRYPTO_memcmp(out->key, zero, SEAL_KEY_LEN) == 0) {
        snprintf(msg, msglen, "\"%s\" holds an all-zero key, not a random one", path);
        return msg;
    }
    key_id_of(out->key, out->id);
    if (!hmac_sha256(out->key, LABEL_FINGERPRINT_KEY, sizeof(LABEL_FINGERPRINT_KEY) - 1,
                     out->fingerprint_key)) {
        snprintf(msg, msglen, "\"%s\": OpenSSL cannot compute HMAC-SHA256", path);
        return msg;
    }
    return NULL;
}

void seal_fingerprint(const struct seal_key *k, const char *fp, char out[2 * SEAL_KEY_LEN + 1])
{
    uint8_t mac[SEAL_KEY_LEN] = {0};
    if (!hmac_sha256(k->fingerprint_key, fp, 2 * SEAL_KEY_LEN, mac))
        memset(mac, 0, sizeof(mac)); /* matches nothing a request makes */
    hex_encode(mac, sizeof(mac), out);
}

void seal_keys_clear(struct seal_keys *keys)
{
    OPENSSL_cleanse(keys->keys, sizeof(keys->keys));
    keys->n = 0;
}

/* ---- sealing ------------------------------------------------------------ */

/* The record's own key: HMAC-SHA256(key, label || salt). */
static bool record_key(const uint8_t key[SEAL_KEY_LEN], const uint8_t *salt,
                       uint8_t out[SEAL_KEY_LEN])
{
    uint8_t msg[sizeof(LABEL_RECORD_KEY) - 1 + SALT_LEN];
    memcpy(msg, LABEL_RECORD_KEY, sizeof(LABEL_RECORD_KEY) - 1);
    memcpy(msg + sizeof(LABEL_RECORD_KEY) - 1, salt, SALT_LEN);
    return hmac_sha256(key, msg, sizeof(msg), out);
}

/* What a record is bound to besides its key: where it is stored and the
 * request it answers. */
struct binding {
    const char *name; /* the Redis key name */
    const char *fp;   /* the fingerprint stored beside it */
    size_t fp_len;
};

/*
 * One AES-256-GCM pass: seals (tag written) or opens (tag checked). The
 * associated data is the head (magic, key id, salt), the length of the Redis
 * key name, the name and the fingerprint. The nonce is constant: every
 * record key seals exactly one record.
 */
static bool gcm(bool sealing, const uint8_t key[SEAL_KEY_LEN], const uint8_t *head,
                const struct binding *b, const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag)
{
    static const uint8_t nonce[12];
    uint8_t final_block[16];
    size_t name_len = strlen(b->name);
    uint8_t name_len_be[4] = {(uint8_t)(name_len >> 24), (uint8_t)(name_len >> 16),
                              (uint8_t)(name_len >> 8), (uint8_t)name_len};
    int n = 0;
    if (len > INT_MAX || name_len > INT_MAX || b->fp_len > INT_MAX)
        return false;
    pthread_once(&fetched, fetch_algorithms);
    EVP_CIPHER_CTX *ctx = aes_gcm != NULL ? EVP_CIPHER_CTX_new() : NULL;
    bool ok = ctx != NULL &&
              EVP_CipherInit_ex(ctx, aes_gcm, NULL, key, nonce, sealing ? 1 : 0) == 1 &&
              EVP_CipherUpdate(ctx, NULL, &n, head, HEAD_LEN) == 1 &&
              EVP_CipherUpdate(ctx, NULL, &n, name_len_be, sizeof(name_len_be)) == 1 &&
              EVP_CipherUpdate(ctx, NULL, &n, (const uint8_t *)b->name, (int)name_len) == 1 &&
              (b->fp_len == 0 ||
               EVP_CipherUpdate(ctx, NULL, &n, (const uint8_t *)b->fp, (int)b->fp_len) == 1) &&
              (len == 0 || EVP_CipherUpdate(ctx, out, &n, in, (int)len) == 1);
    if (ok && !sealing)
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(ctx, final_block, &n) == 1;
    if (ok && sealing)
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

char *seal_record(const struct seal_keys *keys, const char *name, const char *fp, size_t fp_len,
                  const char *plain, size_t plain_len, size_t *out_len)
{
    const struct binding b = {name, fp, fp_len};
    const struct seal_key *k = &keys->keys[0];
    size_t len = HEAD_LEN + plain_len + TAG_LEN;
    uint8_t *out = xmalloc(len);
    uint8_t rkey[SEAL_KEY_LEN];
    memcpy(out, MAGIC, MAGIC_LEN);
    memcpy(out + MAGIC_LEN, k->id, SEAL_KEY_ID_LEN);
    bool ok = random_bytes(out + MAGIC_LEN + SEAL_KEY_ID_LEN, SALT_LEN) == IDEM_OK &&
              record_key(k->key, out + MAGIC_LEN + SEAL_KEY_ID_LEN, rkey) &&
              gcm(true, rkey, out, &b, (const uint8_t *)plain, plain_len, out + HEAD_LEN,
                  out + HEAD_LEN + plain_len);
    OPENSSL_cleanse(rkey, sizeof(rkey));
    if (!ok) {
        free(out);
        return NULL;
    }
    *out_len = len;
    return (char *)out;
}

bool seal_is_sealed(const char *buf, size_t len)
{
    return len >= MAGIC_LEN && memcmp(buf, MAGIC, MAGIC_LEN) == 0;
}

static const struct seal_key *find_key(const struct seal_keys *keys, const uint8_t *id)
{
    for (int i = 0; i < keys->n; i++)
        if (memcmp(keys->keys[i].id, id, SEAL_KEY_ID_LEN) == 0)
            return &keys->keys[i];
    return NULL;
}

bool seal_key_missing(const struct seal_keys *keys, const char *buf, size_t len)
{
    return seal_is_sealed(buf, len) && len >= HEAD_LEN &&
           find_key(keys, (const uint8_t *)buf + MAGIC_LEN) == NULL;
}

enum seal_result seal_open(const struct seal_keys *keys, const char *name, const char *fp,
                           size_t fp_len, const char *sealed, size_t len, char **plain,
                           size_t *plain_len, uint8_t key_id[SEAL_KEY_ID_LEN])
{
    const struct binding b = {name, fp, fp_len};
    const uint8_t *in = (const uint8_t *)sealed;
    if (!seal_is_sealed(sealed, len))
        return SEAL_NOT_SEALED;
    if (len < HEAD_LEN + TAG_LEN)
        return SEAL_TAMPERED;
    if (key_id != NULL)
        memcpy(key_id, in + MAGIC_LEN, SEAL_KEY_ID_LEN);
    const struct seal_key *k = find_key(keys, in + MAGIC_LEN);
    if (k == NULL)
        return SEAL_UNKNOWN_KEY;
    size_t n = len - HEAD_LEN - TAG_LEN;
    uint8_t *out = xmalloc(n + 1); /* + 1: never a zero-byte malloc */
    uint8_t tag[TAG_LEN];
    uint8_t rkey[SEAL_KEY_LEN];
    memcpy(tag, in + HEAD_LEN + n, TAG_LEN);
    bool ok = record_key(k->key, in + MAGIC_LEN + SEAL_KEY_ID_LEN, rkey) &&
              gcm(false, rkey, in, &b, in + HEAD_LEN, n, out, tag);
    OPENSSL_cleanse(rkey, sizeof(rkey));
    if (!ok) {
        OPENSSL_cleanse(out, n);
        free(out);
        return SEAL_TAMPERED;
    }
    *plain = (char *)out;
    *plain_len = n;
    return SEAL_OPENED;
}
